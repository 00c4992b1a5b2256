//! Prometheus metrics of the control daemon and a minimal `/metrics` HTTP
//! endpoint.
//!
//! Every family is prefixed `ricochet_control_`. Label values come from
//! closed enums, so no client input can create new series.
//!
//! | Family | Type | Labels |
//! |---|---|---|
//! | `connections` | gauge | — current control connections |
//! | `connections_accepted_total` | counter | — |
//! | `connections_refused_total` | counter | `reason` (policy, or `accept_error`) |
//! | `connections_closed_total` | counter | `reason` |
//! | `sessions` | gauge | `mode` (security mode) |
//! | `sessions_started_total` | counter | `mode` |
//! | `session_features` | gauge | `feature` (Modes feature bits of the connection) |
//! | `session_features_started_total` | counter | `feature` |
//! | `accept_values_total` | counter | `message`, `code` (every Accept value sent) |
//! | `session_refusals_total` | counter | `reason` (policy reason behind a non-zero Accept) |
//! | `setup_refusals_total` | counter | `reason`: mode, policy, unknown_key, bad_token (Server-Start refusals) |
//! | `sessions_ended_total` | counter | `reason`: stopped, refwait, connection_closed, never_started |
//! | `data_plane_errors_total` | counter | `operation`: add, start, stop, remove |
//! | `reloads_total` | counter | `result`: ok, failed |
//! | `messages_rejected_total` | counter | `reason`: malformed, hmac, timeout, unexpected |
//! | `hmac_failures_total` | counter | `plane`: control, test |
//! | `packets_reflected_total` | counter | `mode` (fed from the data plane) |
//! | `packets_dropped_total` | counter | `reason` (fed from the data plane) |
//! | `ike_sas` | gauge | — IKE SAs of the in-process IKEv2 responder |
//! | `ike_sa_events_total` | counter | `event`: established, rekeyed, deleted, failed |
//! | `ike_dropped_total` | counter | `reason`: malformed, unknown_sa, decrypt_failed, bad_message_id, half_open_refused |
//! | `esp_sa_events_total` | counter | `event`: installed, removed, failed, refused (CHILD_SAs in the ESP data plane) |
//!
//! The HTTP endpoint runs on its own thread (never blocks the control loop),
//! serves one request per connection, bounds the request to
//! [`MAX_REQUEST_OCTETS`] and each read/write to [`IO_TIMEOUT`].

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::ModeName;
use crate::event_loop::CloseReason;
use crate::policy::RefusalReason;

/// Largest HTTP request head accepted by the endpoint.
pub const MAX_REQUEST_OCTETS: usize = 8192;
/// Read and write timeout of one scrape connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Content type of the exposition (the encoder writes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

macro_rules! label_value {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.label())
            }
        }
    )*};
}

/// A TWAMP-Control message that carries an Accept value (server → client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcceptMessage {
    /// Server-Start (RFC 4656 §3.1).
    ServerStart,
    /// Accept-Session (RFC 5357 §3.5).
    AcceptSession,
    /// Start-Ack (RFC 5357 §3.7).
    StartAck,
    /// Start-N-Ack (RFC 5938 §3.3).
    StartNAck,
    /// Stop-N-Ack (RFC 5938 §3.5).
    StopNAck,
}

impl AcceptMessage {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            AcceptMessage::ServerStart => "server_start",
            AcceptMessage::AcceptSession => "accept_session",
            AcceptMessage::StartAck => "start_ack",
            AcceptMessage::StartNAck => "start_n_ack",
            AcceptMessage::StopNAck => "stop_n_ack",
        }
    }
}

/// Why an incoming control message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// It did not parse (bad length, MBZ-critical field, unknown command…).
    Malformed,
    /// Its HMAC did not verify (the connection is dropped, RFC 4656 §3.4).
    Hmac,
    /// It did not complete in time (stall timer).
    Timeout,
    /// A valid message not allowed in the current state.
    Unexpected,
}

impl RejectReason {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Hmac => "hmac",
            RejectReason::Timeout => "timeout",
            RejectReason::Unexpected => "unexpected",
        }
    }
}

/// Where an HMAC failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plane {
    /// TWAMP-Control message.
    Control,
    /// TWAMP-Test packet (reported by the data plane).
    Test,
}

impl Plane {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Plane::Control => "control",
            Plane::Test => "test",
        }
    }
}

/// Why the data plane dropped a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short or otherwise not a test packet of the session's mode.
    Malformed,
    /// HMAC verification failed.
    Authentication,
    /// No session matches the packet's addresses and ports.
    UnknownSession,
    /// The session exists but is not started yet.
    NotStarted,
    /// The session was stopped and its Timeout has passed.
    Stopped,
    /// Over the session's reflection rate limit (anti-amplification).
    RateLimited,
    /// Anything else (resource shortage, TX failure).
    Other,
}

impl DropReason {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Authentication => "authentication",
            DropReason::UnknownSession => "unknown_session",
            DropReason::NotStarted => "not_started",
            DropReason::Stopped => "stopped",
            DropReason::RateLimited => "rate_limited",
            DropReason::Other => "other",
        }
    }
}

/// Why a Set-Up-Response was refused (Server-Start with Accept ≠ 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetupFailure {
    /// The Mode is invalid or was not offered (Accept 3).
    Mode,
    /// The identity may not use the Mode (policy, Accept 3).
    Policy,
    /// No secret for the KeyID (Accept 1, or 6 for an unknown IKEv2 SA).
    UnknownKey,
    /// The token did not decrypt to the challenge: wrong secret (Accept 1).
    BadToken,
}

impl SetupFailure {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            SetupFailure::Mode => "mode",
            SetupFailure::Policy => "policy",
            SetupFailure::UnknownKey => "unknown_key",
            SetupFailure::BadToken => "bad_token",
        }
    }
}

/// How a test session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionEnd {
    /// Stop-Sessions / Stop-N-Sessions, after its Timeout.
    Stopped,
    /// No test packet for REFWAIT (RFC 5357 §3.1).
    Refwait,
    /// The control connection closed while the session was started (it was
    /// given its Timeout).
    ConnectionClosed,
    /// Ended without ever being started (stop, or connection closed).
    NeverStarted,
}

impl SessionEnd {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::Stopped => "stopped",
            SessionEnd::Refwait => "refwait",
            SessionEnd::ConnectionClosed => "connection_closed",
            SessionEnd::NeverStarted => "never_started",
        }
    }
}

/// A data-plane (`SessionTable`) operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableOp {
    /// `add`: install a session.
    Add,
    /// `start`.
    Start,
    /// `stop` with a grace period.
    Stop,
    /// `remove`.
    Remove,
}

impl TableOp {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            TableOp::Add => "add",
            TableOp::Start => "start",
            TableOp::Stop => "stop",
            TableOp::Remove => "remove",
        }
    }
}

/// Outcome of a reload (SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// The new configuration and keys are in force.
    Ok,
    /// The reload was refused; the running configuration and keys stay.
    Failed,
}

impl ReloadResult {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Failed => "failed",
        }
    }
}

/// What happened to an IKE SA of the in-process responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IkeEvent {
    /// IKE_AUTH completed.
    Established,
    /// Replaced by a rekeyed SA.
    Rekeyed,
    /// Deleted (by the peer, by us, or after the peer went silent).
    Deleted,
    /// An exchange to set one up failed (authentication, proposal, timeout).
    Failed,
}

impl IkeEvent {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            IkeEvent::Established => "established",
            IkeEvent::Rekeyed => "rekeyed",
            IkeEvent::Deleted => "deleted",
            IkeEvent::Failed => "failed",
        }
    }
}

/// What happened to a CHILD_SA on its way into the ESP data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspSaEvent {
    /// Bound to a started session and installed (`add_esp_sa`).
    Installed,
    /// Removed from the data plane (Delete, rekey, session end).
    Removed,
    /// The data plane refused an add or a remove.
    Failed,
    /// Not kept: over a bound or a transform the data plane lacks.
    Refused,
}

impl EspSaEvent {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            EspSaEvent::Installed => "installed",
            EspSaEvent::Removed => "removed",
            EspSaEvent::Failed => "failed",
            EspSaEvent::Refused => "refused",
        }
    }
}

/// Why the IKE responder dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IkeDrop {
    Malformed,
    UnknownSa,
    DecryptFailed,
    BadMessageId,
    HalfOpenRefused,
}

impl IkeDrop {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            IkeDrop::Malformed => "malformed",
            IkeDrop::UnknownSa => "unknown_sa",
            IkeDrop::DecryptFailed => "decrypt_failed",
            IkeDrop::BadMessageId => "bad_message_id",
            IkeDrop::HalfOpenRefused => "half_open_refused",
        }
    }
}

/// Why a TCP connection was refused before any message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnRefusal {
    /// Refused by policy.
    Policy(RefusalReason),
    /// `accept(2)` failed (descriptor exhaustion, …).
    AcceptError,
}

impl ConnRefusal {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ConnRefusal::Policy(r) => r.label(),
            ConnRefusal::AcceptError => "accept_error",
        }
    }
}

impl ModeName {
    /// Metric label value (the configuration spelling).
    pub fn label(self) -> &'static str {
        self.as_str()
    }
}

label_value!(
    IkeEvent,
    EspSaEvent,
    IkeDrop,
    SetupFailure,
    SessionEnd,
    TableOp,
    ReloadResult,
    AcceptMessage,
    RejectReason,
    Plane,
    DropReason,
    ConnRefusal,
    ModeName,
    RefusalReason,
    CloseReason
);

macro_rules! reason_label {
    ($($name:ident($ty:ty)),*) => {$(
        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct $name {
            reason: $ty,
        }
    )*};
}

reason_label!(
    RefusedLabel(ConnRefusal),
    ClosedLabel(CloseReason),
    PolicyLabel(RefusalReason),
    RejectLabel(RejectReason),
    DropLabel(DropReason),
    SetupLabel(SetupFailure),
    EndLabel(SessionEnd)
);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: TableOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IkeEventLabel {
    event: IkeEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EspSaEventLabel {
    event: EspSaEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IkeDropLabel {
    reason: IkeDrop,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: ReloadResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModeLabel {
    mode: ModeName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FeatureLabel {
    feature: ModeName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AcceptLabel {
    message: AcceptMessage,
    code: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PlaneLabel {
    plane: Plane,
}

/// All metrics of the control daemon, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    connections_accepted: Counter,
    connections_refused: Family<RefusedLabel, Counter>,
    connections_closed: Family<ClosedLabel, Counter>,
    sessions: Family<ModeLabel, Gauge>,
    sessions_started: Family<ModeLabel, Counter>,
    session_features: Family<FeatureLabel, Gauge>,
    session_features_started: Family<FeatureLabel, Counter>,
    accept_values: Family<AcceptLabel, Counter>,
    session_refusals: Family<PolicyLabel, Counter>,
    messages_rejected: Family<RejectLabel, Counter>,
    hmac_failures: Family<PlaneLabel, Counter>,
    packets_reflected: Family<ModeLabel, Counter>,
    packets_dropped: Family<DropLabel, Counter>,
    setup_refusals: Family<SetupLabel, Counter>,
    sessions_ended: Family<EndLabel, Counter>,
    data_plane_errors: Family<OperationLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    ike_sas: Gauge,
    ike_events: Family<IkeEventLabel, Counter>,
    ike_dropped: Family<IkeDropLabel, Counter>,
    esp_sa_events: Family<EspSaEventLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered. Security modes are
    /// pre-created at zero so "sessions by security mode" always shows all four.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ricochet_control");
        let m = Metrics {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            sessions: Family::default(),
            sessions_started: Family::default(),
            session_features: Family::default(),
            session_features_started: Family::default(),
            accept_values: Family::default(),
            session_refusals: Family::default(),
            messages_rejected: Family::default(),
            hmac_failures: Family::default(),
            packets_reflected: Family::default(),
            packets_dropped: Family::default(),
            setup_refusals: Family::default(),
            sessions_ended: Family::default(),
            data_plane_errors: Family::default(),
            reloads: Family::default(),
            ike_sas: Gauge::default(),
            ike_events: Family::default(),
            ike_dropped: Family::default(),
            esp_sa_events: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "TWAMP-Control connections currently open",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "TWAMP-Control connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "TWAMP-Control connections refused at accept, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "TWAMP-Control connections closed, by reason",
            m.connections_closed.clone(),
        );
        registry.register(
            "sessions",
            "Test sessions currently held, by security mode",
            m.sessions.clone(),
        );
        registry.register(
            "sessions_started",
            "Test sessions accepted, by security mode",
            m.sessions_started.clone(),
        );
        registry.register(
            "session_features",
            "Test sessions currently held, by negotiated feature",
            m.session_features.clone(),
        );
        registry.register(
            "session_features_started",
            "Test sessions accepted, by negotiated feature",
            m.session_features_started.clone(),
        );
        registry.register(
            "accept_values",
            "Accept values sent, by message and code (RFC 4656 3.3)",
            m.accept_values.clone(),
        );
        registry.register(
            "session_refusals",
            "Requests refused by policy, by reason",
            m.session_refusals.clone(),
        );
        registry.register(
            "messages_rejected",
            "Control messages rejected, by reason",
            m.messages_rejected.clone(),
        );
        registry.register(
            "hmac_failures",
            "HMAC verification failures, by plane",
            m.hmac_failures.clone(),
        );
        registry.register(
            "packets_reflected",
            "Test packets reflected, by security mode (from the data plane)",
            m.packets_reflected.clone(),
        );
        registry.register(
            "packets_dropped",
            "Test packets dropped, by reason (from the data plane)",
            m.packets_dropped.clone(),
        );
        registry.register(
            "setup_refusals",
            "Set-Up-Responses refused (Server-Start Accept not 0), by reason",
            m.setup_refusals.clone(),
        );
        registry.register(
            "sessions_ended",
            "Test sessions ended, by reason",
            m.sessions_ended.clone(),
        );
        registry.register(
            "data_plane_errors",
            "Session-table operations the data plane refused, by operation",
            m.data_plane_errors.clone(),
        );
        registry.register(
            "reloads",
            "Configuration and key reloads (SIGHUP), by result",
            m.reloads.clone(),
        );
        registry.register(
            "ike_sas",
            "IKE SAs the in-process IKEv2 responder holds established (RFC 7717 keys)",
            m.ike_sas.clone(),
        );
        registry.register(
            "ike_sa_events",
            "IKE SA events of the in-process responder, by event",
            m.ike_events.clone(),
        );
        registry.register(
            "ike_dropped",
            "IKE datagrams the responder dropped, by reason",
            m.ike_dropped.clone(),
        );
        registry.register(
            "esp_sa_events",
            "CHILD_SAs of the in-process responder in the ESP data plane, by event",
            m.esp_sa_events.clone(),
        );
        for mode in ModeName::ALL.into_iter().filter(|m| m.is_security()) {
            let _ = m.sessions.get_or_create(&ModeLabel { mode });
            let _ = m.sessions_started.get_or_create(&ModeLabel { mode });
        }
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out.clear();
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }

    /// A connection was accepted (admitted by policy).
    pub fn connection_opened(&self) {
        self.connections.inc();
        self.connections_accepted.inc();
    }

    /// An admitted connection closed.
    pub fn connection_closed(&self, reason: CloseReason) {
        self.connections.dec();
        self.connections_closed
            .get_or_create(&ClosedLabel { reason })
            .inc();
    }

    /// A connection was refused before any message.
    pub fn connection_refused(&self, reason: ConnRefusal) {
        self.connections_refused
            .get_or_create(&RefusedLabel { reason })
            .inc();
    }

    /// Current open connections (for tests and logs).
    pub fn open_connections(&self) -> i64 {
        self.connections.get()
    }

    /// A session with the connection's Mode bits `mode` was accepted.
    pub fn session_started(&self, mode: u32) {
        for (name, is_security) in split_mode(mode) {
            if is_security {
                self.sessions.get_or_create(&ModeLabel { mode: name }).inc();
                self.sessions_started
                    .get_or_create(&ModeLabel { mode: name })
                    .inc();
            } else {
                self.session_features
                    .get_or_create(&FeatureLabel { feature: name })
                    .inc();
                self.session_features_started
                    .get_or_create(&FeatureLabel { feature: name })
                    .inc();
            }
        }
    }

    /// A session started with `mode` ended.
    pub fn session_ended(&self, mode: u32) {
        for (name, is_security) in split_mode(mode) {
            if is_security {
                self.sessions.get_or_create(&ModeLabel { mode: name }).dec();
            } else {
                self.session_features
                    .get_or_create(&FeatureLabel { feature: name })
                    .dec();
            }
        }
    }

    /// An Accept value was sent in `message`.
    pub fn accept_sent(&self, message: AcceptMessage, code: u8) {
        self.accept_values
            .get_or_create(&AcceptLabel { message, code })
            .inc();
    }

    /// A request was refused by policy (the Accept value is counted by
    /// [`Metrics::accept_sent`]).
    pub fn session_refused(&self, reason: RefusalReason) {
        self.session_refusals
            .get_or_create(&PolicyLabel { reason })
            .inc();
    }

    /// A control message was rejected. An HMAC rejection also counts as a
    /// control-plane HMAC failure.
    pub fn message_rejected(&self, reason: RejectReason) {
        self.messages_rejected
            .get_or_create(&RejectLabel { reason })
            .inc();
        if reason == RejectReason::Hmac {
            self.hmac_failures
                .get_or_create(&PlaneLabel {
                    plane: Plane::Control,
                })
                .inc();
        }
    }

    /// A Set-Up-Response was refused.
    pub fn setup_refused(&self, reason: SetupFailure) {
        self.setup_refusals
            .get_or_create(&SetupLabel { reason })
            .inc();
    }

    /// A session with Mode bits `mode` ended (also lowers the `sessions`
    /// gauges, as [`Metrics::session_ended`]).
    pub fn session_finished(&self, mode: u32, reason: SessionEnd) {
        self.session_ended(mode);
        self.sessions_ended
            .get_or_create(&EndLabel { reason })
            .inc();
    }

    /// The data plane refused an operation.
    pub fn data_plane_error(&self, operation: TableOp) {
        self.data_plane_errors
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    /// A reload finished.
    pub fn reloaded(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Add data-plane counts: `n` packets reflected in security mode `mode`
    /// (pass the delta since the last report, not the running total).
    pub fn add_reflected(&self, mode: ModeName, n: u64) {
        self.packets_reflected
            .get_or_create(&ModeLabel { mode })
            .inc_by(n);
    }

    /// An IKE SA event of the responder.
    pub fn ike_event(&self, event: IkeEvent) {
        self.ike_events
            .get_or_create(&IkeEventLabel { event })
            .inc();
    }

    /// A CHILD_SA event of the ESP data plane.
    pub fn esp_sa_event(&self, event: EspSaEvent) {
        self.esp_sa_events
            .get_or_create(&EspSaEventLabel { event })
            .inc();
    }

    /// Times `event` was counted (tests and the exit report).
    pub fn esp_sa_events(&self, event: EspSaEvent) -> u64 {
        self.esp_sa_events
            .get_or_create(&EspSaEventLabel { event })
            .get()
    }

    /// The responder's established IKE SAs.
    pub fn set_ike_sas(&self, n: usize) {
        self.ike_sas.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Add IKE drops (delta since the last report).
    pub fn add_ike_dropped(&self, reason: IkeDrop, n: u64) {
        if n > 0 {
            self.ike_dropped
                .get_or_create(&IkeDropLabel { reason })
                .inc_by(n);
        }
    }

    /// Add data-plane drops (delta since the last report). Authentication
    /// drops also count as test-plane HMAC failures.
    pub fn add_dropped(&self, reason: DropReason, n: u64) {
        self.packets_dropped
            .get_or_create(&DropLabel { reason })
            .inc_by(n);
        if reason == DropReason::Authentication {
            self.hmac_failures
                .get_or_create(&PlaneLabel { plane: Plane::Test })
                .inc_by(n);
        }
    }
}

/// The registry bits set in `mode`, each with whether it is a security bit.
/// The security mode among a connection's Mode bits.
pub fn security_mode(mode: u32) -> Option<ModeName> {
    split_mode(mode).find(|(_, sec)| *sec).map(|(m, _)| m)
}

fn split_mode(mode: u32) -> impl Iterator<Item = (ModeName, bool)> {
    ModeName::ALL
        .into_iter()
        .filter(move |m| mode & m.bit() != 0)
        .map(|m| (m, m.is_security()))
}

/// The `/metrics` HTTP endpoint, on its own thread.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Bind `addr` and serve `metrics` until [`MetricsServer::shutdown`].
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("metrics-http".to_owned())
                .spawn(move || serve(listener, &metrics, &stop))?
        };
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port when 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and join the thread.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_thread();
        }
    }
}

fn serve(listener: TcpListener, metrics: &Metrics, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => {
                if let Err(e) = handle(stream, metrics) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serve one request on `stream`.
fn handle(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = match read_head(&mut stream)? {
        Some(head) => head,
        None => {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
                false,
            )?;
            // Unread request octets would turn our close into a reset that
            // can destroy the answer in flight: half-close, then drain a
            // bounded amount before closing.
            stream.shutdown(std::net::Shutdown::Write)?;
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut sink = [0u8; 4096];
            let mut drained = 0usize;
            while drained < 16 * MAX_REQUEST_OCTETS {
                match stream.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            return Ok(());
        }
    };
    let (status, body, content_type) = route(&head, metrics);
    let head_only = head.starts_with("HEAD ");
    respond(
        &mut stream,
        status,
        content_type,
        body.as_bytes(),
        head_only,
    )
}

/// The status, body and content type answering the request `head`.
fn route(head: &str, metrics: &Metrics) -> (&'static str, String, &'static str) {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", metrics.encode(), CONTENT_TYPE),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "not found; metrics are at /metrics\n".to_owned(),
            "text/plain",
        ),
        _ => (
            "405 Method Not Allowed",
            "only GET and HEAD are served\n".to_owned(),
            "text/plain",
        ),
    }
}

/// Read the request head (up to the blank line). `None` when it exceeds
/// [`MAX_REQUEST_OCTETS`].
fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST_OCTETS {
            return Ok(None);
        }
    }
    if buf.len() > MAX_REQUEST_OCTETS {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_contains_every_family() {
        let m = Metrics::new();
        m.connection_opened();
        m.connection_refused(ConnRefusal::Policy(RefusalReason::PrefixDenied));
        m.connection_closed(CloseReason::PeerClosed);
        m.session_started(0x04 | 0x10 | 0x20); // encrypted + ISC + reflect octets
        m.accept_sent(AcceptMessage::AcceptSession, 5);
        m.accept_sent(AcceptMessage::StartNAck, 0);
        m.session_refused(RefusalReason::PortsExhausted);
        m.message_rejected(RejectReason::Hmac);
        m.add_reflected(ModeName::Encrypted, 10);
        m.add_dropped(DropReason::Authentication, 2);
        m.setup_refused(SetupFailure::BadToken);
        m.session_started(0x01);
        m.session_finished(0x01, SessionEnd::Refwait);
        m.data_plane_error(TableOp::Add);
        m.reloaded(ReloadResult::Failed);
        let text = m.encode();
        for needle in [
            "ricochet_control_connections 0",
            "ricochet_control_connections_accepted_total 1",
            "ricochet_control_connections_refused_total{reason=\"prefix_denied\"} 1",
            "ricochet_control_connections_closed_total{reason=\"peer_closed\"} 1",
            "ricochet_control_sessions{mode=\"encrypted\"} 1",
            "ricochet_control_sessions{mode=\"unauthenticated\"} 0",
            "ricochet_control_sessions{mode=\"mixed\"} 0",
            "ricochet_control_sessions_started_total{mode=\"encrypted\"} 1",
            "ricochet_control_session_features{feature=\"individual-session-control\"} 1",
            "ricochet_control_session_features_started_total{feature=\"reflect-octets\"} 1",
            "ricochet_control_accept_values_total{message=\"accept_session\",code=\"5\"} 1",
            "ricochet_control_accept_values_total{message=\"start_n_ack\",code=\"0\"} 1",
            "ricochet_control_session_refusals_total{reason=\"ports_exhausted\"} 1",
            "ricochet_control_messages_rejected_total{reason=\"hmac\"} 1",
            "ricochet_control_hmac_failures_total{plane=\"control\"} 1",
            "ricochet_control_hmac_failures_total{plane=\"test\"} 2",
            "ricochet_control_packets_reflected_total{mode=\"encrypted\"} 10",
            "ricochet_control_packets_dropped_total{reason=\"authentication\"} 2",
            "ricochet_control_setup_refusals_total{reason=\"bad_token\"} 1",
            "ricochet_control_sessions{mode=\"unauthenticated\"} 0",
            "ricochet_control_sessions_started_total{mode=\"unauthenticated\"} 1",
            "ricochet_control_sessions_ended_total{reason=\"refwait\"} 1",
            "ricochet_control_data_plane_errors_total{operation=\"add\"} 1",
            "ricochet_control_reloads_total{result=\"failed\"} 1",
            "# TYPE ricochet_control_connections gauge",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn sessions_gauge_returns_to_zero() {
        let m = Metrics::new();
        m.session_started(0x02 | 0x80);
        m.session_ended(0x02 | 0x80);
        let text = m.encode();
        assert!(text.contains("ricochet_control_sessions{mode=\"authenticated\"} 0"));
        assert!(text.contains("ricochet_control_session_features{feature=\"ikev2-derived\"} 0"));
        assert!(text.contains("ricochet_control_sessions_started_total{mode=\"authenticated\"} 1"));
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn http_endpoint_serves_metrics_and_bounds_requests() {
        let metrics = Arc::new(Metrics::new());
        metrics.connection_opened();
        let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), metrics.clone())
            .expect("start");
        let addr = server.local_addr();

        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE));
        assert!(ok.contains("ricochet_control_connections 1"), "{ok}");

        let head = get(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && !head.contains("# EOF"),
            "{head}"
        );

        let missing = get(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        let post = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");

        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(huge.len() + MAX_REQUEST_OCTETS + 10, b'a');
        let big = get(addr, &huge);
        assert!(big.starts_with("HTTP/1.1 431"), "{big}");

        server.shutdown();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
            "listener closed after shutdown"
        );
    }
}
