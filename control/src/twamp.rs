//! TWAMP-Control in the daemon: one sans-IO [`Server`] state machine per
//! connection ([`TwampHandler`]), the [`ServerContext`] that answers its
//! questions from the policy, the port allocator, the key sources and the
//! data plane, and the life cycle of every test session.
//!
//! # Session life cycle
//!
//! | Event | Data plane (`SessionTable`) | Port and policy counts |
//! |---|---|---|
//! | Request-TW-Session admitted | `add` (packets dropped until started) | taken |
//! | Start-Sessions / Start-N-Sessions | `start` | — |
//! | Stop-Sessions / Stop-N-Sessions, connection closed | started: `stop(grace)`; never started: `remove` | released when the session is gone |
//! | no test packet for REFWAIT (RFC 5357 §3.1) | `remove` | released |
//! | `add` fails | — | released at once; Accept 2 (5 for an address the data plane cannot use) |
//!
//! The grace of a stop is the request's Timeout (RFC 5357 §3.5, §3.8),
//! capped at REFWAIT: the Timeout is the client's to choose, and without a
//! cap a client could hold ports and session counts for as long as it
//! likes after stopping. Stopped sessions are released by the periodic
//! sweep ([`sweep`]) once their grace has passed, whether or not their
//! connection still exists.
//!
//! REFWAIT: at every sweep a started session is ended when the data plane
//! reports it idle (no test packet) for REFWAIT, or when it never saw a
//! packet REFWAIT after it started; the connection's state machine then
//! forgets it ([`Server::forget_session`]) so SERVWAIT resumes once no
//! session is left in progress (RFC 5357 §3.1, RFC 5938 §4.2).

use std::collections::HashMap;
use std::net::{IpAddr, UdpSocket};

use crate::ports::PortAllocator;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ricochet_protocol::accept::Accept;
use ricochet_protocol::control::{greeting, Command, ServerGreetingRepr, Sid};
use ricochet_protocol::crypto::{CryptoError, SharedSecret, TokenKeyDerivation};
use ricochet_protocol::modes::{Modes, Selection};
use ricochet_protocol::server::{
    AcceptedSession, KeyId, Server, ServerConfig, ServerContext, ServerError, ServerEvent,
    ServerRandom, SessionGrant, SessionRequest, SetupRefusal,
};
use ricochet_protocol::time::NtpTimestamp;
use ricochet_reflector::session_table::{SessionActivity, SessionSpec, SessionTable, TableError};

use crate::esp_link::{EspLink, EspOp, SessionEnds};
use crate::metrics::EspSaEvent;

use crate::config::RateLimit;
use crate::event_loop::{Action, Activity, CloseReason, ConnInfo, ConnectionHandler, Context};
use crate::keys::{KeySource, Keys};
use crate::metrics::{
    self, AcceptMessage, DropReason, Metrics, RejectReason, SessionEnd, SetupFailure, TableOp,
};
use crate::policy::{ClientKey, RefusalReason};

/// Settings of the session life cycle (replaced on reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// REFWAIT: a started session without test packets for this long ends.
    pub refwait: Duration,
    /// Per-session reflection ceiling handed to the data plane.
    pub rate_limit: RateLimit,
}

/// The daemon state every connection shares (owned by the event loop).
pub struct DaemonState {
    table: Box<dyn SessionTable>,
    keys: Keys,
    settings: SessionSettings,
    sessions: HashMap<Sid, Session>,
    /// Sessions an earlier run left in a data plane that outlives us.
    adopted: HashMap<Sid, Adopted>,
    /// CHILD_SAs of the in-process IKEv2 responder and the sessions they
    /// carry in the ESP data plane.
    esp: EspLink,
}

/// A session found in the data plane at start: its control connection died
/// with the previous process, so it is reflected until REFWAIT passes
/// without a test packet (RFC 5357 §3.1), then removed.
#[derive(Debug, Clone, Copy)]
struct Adopted {
    /// Its reflector port, held in the allocator (None: outside our range).
    port: Option<u16>,
    /// When this process adopted it.
    since: Instant,
}

/// What the daemon knows of one session.
#[derive(Debug, Clone, Copy)]
struct Session {
    conn: u64,
    client: ClientKey,
    port: u16,
    /// The connection's Mode bits (for the per-mode metrics).
    modes: u32,
    /// The stop grace: the request's Timeout, at most REFWAIT.
    grace: Duration,
    phase: Phase,
    /// Data-plane counters already added to the metrics.
    reported: SessionActivity,
    /// Its test addresses once installed (for binding CHILD_SAs).
    ends: Option<SessionEnds>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Port and policy count taken; not in the data plane yet.
    Allocated,
    /// In the data plane, not started.
    Installed,
    /// Reflecting since this instant.
    Started(Instant),
    /// Stopped: reflecting until `until`, then removed.
    Stopping { until: Instant, end: SessionEnd },
}

impl DaemonState {
    /// State around the data plane `table` and the key sources `keys`.
    pub fn new(table: Box<dyn SessionTable>, keys: Keys, settings: SessionSettings) -> Self {
        DaemonState {
            table,
            keys,
            settings,
            sessions: HashMap::new(),
            adopted: HashMap::new(),
            esp: EspLink::default(),
        }
    }

    /// The key sources (to replace them on reload or add the IKEv2 source).
    pub fn keys_mut(&mut self) -> &mut Keys {
        &mut self.keys
    }

    /// Replace the session settings (reload); sessions already accepted
    /// keep their grace.
    pub fn set_settings(&mut self, settings: SessionSettings) {
        self.settings = settings;
    }

    /// The data plane.
    pub fn table(&self) -> &dyn SessionTable {
        self.table.as_ref()
    }

    /// Sessions held (allocated, installed, started or in their stop grace).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Remove every session the data plane holds: at start, none of them has
    /// a control connection any more. A data plane that outlives us keeps
    /// them instead: they are adopted ([`DaemonState::adopt_sessions`]).
    pub fn remove_stale_sessions(&mut self, metrics: &Metrics) -> usize {
        if self.table.outlives_process() {
            return 0;
        }
        let stale = self.table.sessions();
        for sid in &stale {
            if let Err(e) = self.table.remove(sid) {
                metrics.data_plane_error(TableOp::Remove);
                tracing::warn!(%sid, error = %e, "cannot remove a stale data-plane session");
            }
        }
        stale.len()
    }

    /// Take over every session the data plane holds at start, if it
    /// outlives us (the pinned BPF maps; otherwise nothing is adopted): each
    /// keeps being reflected, its port stays taken, and [`sweep`] removes it
    /// once it has seen no test packet for REFWAIT. Returns how many were
    /// adopted.
    pub fn adopt_sessions(&mut self, ports: &mut PortAllocator, now: Instant) -> usize {
        if !self.table.outlives_process() {
            return 0;
        }
        for sid in self.table.sessions() {
            let port = self
                .table
                .reflector_addr(&sid)
                .map(|a| a.port())
                .filter(|p| ports.range().contains(*p))
                .and_then(|p| match ports.allocate(p) {
                    Some(got) if got == p => Some(p),
                    Some(other) => {
                        // Two sessions on one port: keep the first, the
                        // data plane tells them apart by sender.
                        ports.release(other);
                        None
                    }
                    None => None,
                });
            tracing::info!(%sid, ?port, "adopted a data-plane session of an earlier run");
            self.adopted.insert(sid, Adopted { port, since: now });
        }
        self.adopted.len()
    }

    /// Sessions adopted at start and not expired yet.
    pub fn adopted_count(&self) -> usize {
        self.adopted.len()
    }

    /// Whether adopted session `sid` is over: gone from the data plane, or
    /// no test packet for REFWAIT (counted from adoption if none came).
    fn adopted_expired(&self, sid: &Sid, a: &Adopted, now: Instant) -> bool {
        let refwait = self.settings.refwait;
        match self.table.activity(sid) {
            None => true,
            Some(act) => match act.idle {
                Some(idle) => idle >= refwait,
                None => now.saturating_duration_since(a.since) >= refwait,
            },
        }
    }

    /// Whether the started session `sid` has seen no test packet for REFWAIT.
    fn refwait_expired(&self, sid: &Sid, now: Instant) -> bool {
        let Some(Phase::Started(since)) = self.sessions.get(sid).map(|s| s.phase) else {
            return false;
        };
        let refwait = self.settings.refwait;
        match self.table.activity(sid) {
            Some(activity) => match activity.idle {
                Some(idle) => idle >= refwait,
                None => now.saturating_duration_since(since) >= refwait,
            },
            // The data plane lost it: nothing is reflected any more.
            None => true,
        }
    }
}

/// The current time as an NTP timestamp (RFC 5905 era 0, as NTP and TWAMP
/// use it until 2036).
pub fn ntp_now() -> NtpTimestamp {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    NtpTimestamp::from_utc_ns(ns)
}

/// A Server Greeting offering no mode (RFC 4656 §3.1: Modes 0 means the
/// server is not willing to communicate), Count as configured.
pub fn go_away_greeting(count: u32) -> [u8; greeting::LEN] {
    ServerGreetingRepr {
        unused: [0; 12],
        modes: Modes::NONE,
        challenge: [0; 16],
        salt: [0; 16],
        count,
    }
    .to_bytes()
}

/// The Accept value answering a data-plane refusal of a new session.
///
/// An address the data plane cannot use (typically its port is taken by
/// another program) is a temporary limitation (5): a later request gets
/// another port. Everything else is our own failure (2, internal error).
pub fn table_accept(error: &TableError) -> Accept {
    match error {
        TableError::Address(..) => Accept::TemporaryResourceLimitation,
        TableError::Exists(_)
        | TableError::NoSuchSession(_)
        | TableError::DataPlane(_)
        | TableError::Unsupported(_)
        | TableError::EspSa { .. } => Accept::InternalError,
    }
}

/// Whether `ip` can be a reflector address of ours: the control
/// connection's own local address, or any address a socket can be bound to
/// here (which is how the kernel defines "local").
fn is_our_address(ip: IpAddr, control_local: IpAddr) -> bool {
    if ip == control_local.to_canonical() {
        return true;
    }
    !ip.is_unspecified() && !ip.is_multicast() && UdpSocket::bind((ip, 0)).is_ok()
}

fn sid_for(reflector: IpAddr) -> Result<Sid, getrandom::Error> {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random)?;
    Ok(Sid::compose(reflector, ntp_now(), random))
}

/// Release what session `sid` holds (entry, port, policy count, gauges).
fn release(ctx: &mut Context<'_, DaemonState>, sid: &Sid, end: SessionEnd) {
    unbind_esp(ctx, sid);
    let Some(s) = ctx.state.sessions.remove(sid) else {
        return;
    };
    if !ctx.ports.release(s.port) {
        tracing::error!(%sid, port = s.port, "released a port that was not allocated");
    }
    ctx.policy.release_session(s.client);
    if s.phase != Phase::Allocated {
        ctx.metrics.session_finished(s.modes, end);
    }
    tracing::debug!(%sid, port = s.port, reason = end.label(), "session released");
}

/// Remove `sid` from the data plane now and release it.
fn end_now(ctx: &mut Context<'_, DaemonState>, sid: &Sid, end: SessionEnd) {
    report_session_activity(ctx, sid);
    let in_table = ctx
        .state
        .sessions
        .get(sid)
        .is_some_and(|s| s.phase != Phase::Allocated);
    if in_table {
        // Its ESP SAs first: they refer to the session's slot.
        unbind_esp(ctx, sid);
        match ctx.state.table.remove(sid) {
            Ok(()) | Err(TableError::NoSuchSession(_)) => {}
            Err(e) => {
                ctx.metrics.data_plane_error(TableOp::Remove);
                tracing::warn!(%sid, error = %e, "data plane cannot remove a session");
            }
        }
    }
    release(ctx, sid, end);
}

/// Removes the ESP SAs bound to `sid` (its CHILD_SAs stay for a later
/// session).
fn unbind_esp(ctx: &mut Context<'_, DaemonState>, sid: &Sid) {
    let ops = ctx.state.esp.session_removed(sid);
    apply_esp_ops(ctx, ops);
}

/// Applies what [`EspLink`] decided to the data plane; logs (SPIs and
/// sessions, never keys) and counts.
pub fn apply_esp_ops(ctx: &mut Context<'_, DaemonState>, ops: Vec<EspOp>) {
    for op in ops {
        match op {
            EspOp::Add { sid, spec } => {
                let spi = spec.inbound_spi;
                let out = spec.outbound_spi;
                let transform = spec.inbound_keys.name();
                match ctx.state.table.add_esp_sa(spec) {
                    Ok(()) => {
                        ctx.metrics.esp_sa_event(EspSaEvent::Installed);
                        tracing::info!(%sid, inbound_spi = %format_args!("{spi:08x}"), outbound_spi = %format_args!("{out:08x}"), transform, "CHILD_SA installed in the ESP data plane");
                    }
                    Err(e) => {
                        ctx.state.esp.add_failed(spi);
                        ctx.metrics.esp_sa_event(EspSaEvent::Failed);
                        tracing::warn!(%sid, inbound_spi = %format_args!("{spi:08x}"), error = %e, "data plane refused a CHILD_SA; the session's ESP packets are not reflected");
                    }
                }
            }
            EspOp::Remove { sid, inbound_spi } => {
                match ctx.state.table.remove_esp_sa(inbound_spi) {
                    Ok(()) => {
                        ctx.metrics.esp_sa_event(EspSaEvent::Removed);
                        tracing::info!(%sid, inbound_spi = %format_args!("{inbound_spi:08x}"), "CHILD_SA removed from the ESP data plane");
                    }
                    Err(e) => {
                        ctx.metrics.esp_sa_event(EspSaEvent::Failed);
                        tracing::warn!(%sid, inbound_spi = %format_args!("{inbound_spi:08x}"), error = %e, "data plane cannot remove a CHILD_SA");
                    }
                }
            }
        }
    }
}

impl DaemonState {
    /// The CHILD_SA bindings (for the IKEv2 responder).
    pub fn esp_link(&mut self) -> &mut EspLink {
        &mut self.esp
    }
}

/// Stop `sid`: a started session keeps reflecting for its grace, then the
/// sweep removes it (counted as `end`); one never started ends at once.
fn stop(ctx: &mut Context<'_, DaemonState>, sid: &Sid, end: SessionEnd) {
    let Some(s) = ctx.state.sessions.get(sid).copied() else {
        return;
    };
    if !matches!(s.phase, Phase::Started(_)) {
        end_now(ctx, sid, SessionEnd::NeverStarted);
        return;
    }
    // The data plane forgets the session by itself after its grace, so take
    // its counters now; the sweep adds what arrives during the grace.
    report_session_activity(ctx, sid);
    match ctx.state.table.stop(sid, s.grace) {
        Ok(()) => {
            let until = ctx.now + s.grace;
            if let Some(entry) = ctx.state.sessions.get_mut(sid) {
                entry.phase = Phase::Stopping { until, end };
            }
            tracing::debug!(%sid, grace = ?s.grace, "session stopping");
        }
        Err(TableError::NoSuchSession(_)) => release(ctx, sid, end),
        Err(e) => {
            ctx.metrics.data_plane_error(TableOp::Stop);
            tracing::warn!(%sid, error = %e, "data plane cannot stop a session; removing it");
            end_now(ctx, sid, end);
        }
    }
}

/// The periodic sweep over sessions without a connection to look after
/// them: stopped sessions whose grace has passed are removed and released.
pub fn sweep(ctx: &mut Context<'_, DaemonState>) {
    report_activity(ctx);
    sweep_adopted(ctx);
    let now = ctx.now;
    let due: Vec<(Sid, SessionEnd)> = ctx
        .state
        .sessions
        .iter()
        .filter_map(|(sid, s)| match s.phase {
            Phase::Stopping { until, end } if until <= now => Some((*sid, end)),
            _ => None,
        })
        .collect();
    for (sid, end) in due {
        // The data plane removes a stopped session itself after its grace;
        // make sure of it before the port is handed out again.
        end_now(ctx, &sid, end);
    }
}

/// Removes adopted sessions that saw no test packet for REFWAIT (or that
/// the data plane dropped by itself) and releases their ports.
fn sweep_adopted(ctx: &mut Context<'_, DaemonState>) {
    let now = ctx.now;
    let due: Vec<Sid> = ctx
        .state
        .adopted
        .iter()
        .filter(|(sid, a)| ctx.state.adopted_expired(sid, a, now))
        .map(|(sid, _)| *sid)
        .collect();
    for sid in due {
        match ctx.state.table.remove(&sid) {
            Ok(()) | Err(TableError::NoSuchSession(_)) => {}
            Err(e) => {
                ctx.metrics.data_plane_error(TableOp::Remove);
                tracing::warn!(%sid, error = %e, "data plane cannot remove an adopted session");
                continue;
            }
        }
        if let Some(a) = ctx.state.adopted.remove(&sid) {
            if let Some(p) = a.port {
                ctx.ports.release(p);
            }
        }
        tracing::info!(%sid, "adopted session ended: no test packet for REFWAIT");
    }
}

/// Adds what the data plane reflected and dropped since the last report to
/// the metrics (packets by security mode, drops by reason, test-plane HMAC
/// failures).
fn report_activity(ctx: &mut Context<'_, DaemonState>) {
    let sids: Vec<Sid> = ctx.state.sessions.keys().copied().collect();
    for sid in sids {
        report_session_activity(ctx, &sid);
    }
}

fn report_session_activity(ctx: &mut Context<'_, DaemonState>, sid: &Sid) {
    let Some(s) = ctx.state.sessions.get(sid) else {
        return;
    };
    if s.phase == Phase::Allocated {
        return;
    }
    let Some(now) = ctx.state.table.activity(sid) else {
        return;
    };
    let (was, mode) = (s.reported, s.modes);
    if let Some(m) = metrics::security_mode(mode) {
        ctx.metrics
            .add_reflected(m, now.reflected.saturating_sub(was.reflected));
    }
    let (d, w) = (now.drops, was.drops);
    for (reason, n) in [
        (
            DropReason::Authentication,
            d.authentication.saturating_sub(w.authentication),
        ),
        (
            DropReason::NotStarted,
            d.not_started.saturating_sub(w.not_started),
        ),
        (DropReason::Stopped, d.expired.saturating_sub(w.expired)),
        (
            DropReason::RateLimited,
            d.rate_limited.saturating_sub(w.rate_limited),
        ),
        (
            DropReason::UnknownSession,
            d.wrong_source.saturating_sub(w.wrong_source),
        ),
        (
            DropReason::Malformed,
            d.malformed.saturating_sub(w.malformed),
        ),
    ] {
        if n > 0 {
            ctx.metrics.add_dropped(reason, n);
        }
    }
    if let Some(s) = ctx.state.sessions.get_mut(sid) {
        s.reported = now;
    }
}

/// A port of the range that is free in our pool *and* can be bound on the
/// reflector address: another program may hold a port of the range. Like
/// perfSONAR's twampd, move on to the next port (RFC 5357 §3.5 lets the
/// server answer with another port) instead of refusing; `None` only when
/// every port is taken.
fn allocate_port(ports: &mut PortAllocator, reflector: IpAddr, requested: u16) -> Option<u16> {
    let mut skipped = Vec::new();
    let mut want = requested;
    let found = loop {
        let Some(p) = ports.allocate(want) else {
            break None;
        };
        match UdpSocket::bind((reflector, p)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                skipped.push(p);
                want = p.wrapping_add(1);
            }
            // Bindable (the probe closes at once), or an error the data
            // plane will report when it binds for real.
            _ => break Some(p),
        }
    };
    for p in skipped {
        ports.release(p);
    }
    found
}

/// The [`ServerContext`] of one connection: the loop's shared state plus who
/// the connection is.
struct ConnContext<'c, 'a> {
    ctx: &'c mut Context<'a, DaemonState>,
    conn: &'c ConnInfo,
}

impl ConnContext<'_, '_> {
    fn refuse(&mut self, reason: RefusalReason) -> Accept {
        self.ctx.metrics.session_refused(reason);
        tracing::info!(conn = self.conn.id, peer = %self.conn.peer, %reason, "refused by policy");
        Accept::from(reason.accept_code().unwrap_or(1))
    }
}

impl ServerContext for ConnContext<'_, '_> {
    fn shared_secret(
        &mut self,
        key_id: &KeyId,
        selection: &Selection,
    ) -> Result<SharedSecret, Accept> {
        self.ctx.state.keys.secret(key_id, selection)
    }

    fn token_key_derivation(&mut self, selection: &Selection) -> TokenKeyDerivation {
        self.ctx.state.keys.token_key_derivation(selection)
    }

    fn admit_mode(&mut self, identity: Option<&[u8]>, selection: &Selection) -> Result<(), Accept> {
        let name = identity.map(String::from_utf8_lossy);
        match self
            .ctx
            .policy
            .check_mode(name.as_deref(), selection.modes().bits())
        {
            Ok(()) => Ok(()),
            Err(reason) => Err(self.refuse(reason)),
        }
    }

    fn allocate_session(&mut self, request: &SessionRequest) -> Result<SessionGrant, Accept> {
        let reflector = request.reflector.ip();
        if !is_our_address(reflector, self.conn.local.ip()) {
            tracing::info!(
                conn = self.conn.id,
                %reflector,
                "session refused: the reflector address is not one of ours"
            );
            return Err(Accept::NotSupported);
        }
        let client = self.conn.client;
        if let Err(reason) = self.ctx.policy.admit_session(client) {
            return Err(self.refuse(reason));
        }
        let Some(port) = allocate_port(self.ctx.ports, reflector, request.reflector.port()) else {
            self.ctx.policy.release_session(client);
            return Err(self.refuse(RefusalReason::PortsExhausted));
        };
        // 32 random bits and the time make a collision all but impossible;
        // a few draws bound the work should the generator misbehave.
        let fresh = (0..8).map(|_| sid_for(reflector)).find(|r| {
            r.as_ref()
                .map_or(true, |sid| !self.ctx.state.sessions.contains_key(sid))
        });
        let sid = match fresh {
            Some(Ok(sid)) => sid,
            failed => {
                match failed {
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "the OS random generator failed; refusing the session")
                    }
                    _ => tracing::error!("no unused SID in 8 draws; refusing the session"),
                }
                self.ctx.ports.release(port);
                self.ctx.policy.release_session(client);
                return Err(Accept::InternalError);
            }
        };
        let timeout = Duration::from_nanos(request.timeout.interval_ns());
        self.ctx.state.sessions.insert(
            sid,
            Session {
                conn: self.conn.id,
                client,
                port,
                modes: (request.security.bit() | request.features).bits(),
                grace: timeout.min(self.ctx.state.settings.refwait),
                phase: Phase::Allocated,
                reported: SessionActivity::default(),
                ends: None,
            },
        );
        Ok(SessionGrant {
            port,
            sid,
            server_octets: [0; 2],
        })
    }

    fn install_session(&mut self, session: AcceptedSession) -> Result<(), Accept> {
        let sid = session.sid;
        let Some(entry) = self.ctx.state.sessions.get(&sid).copied() else {
            tracing::error!(%sid, "install of a session that was never allocated");
            return Err(Accept::InternalError);
        };
        let rate = self.ctx.state.settings.rate_limit;
        let spec = SessionSpec {
            sid,
            sender: session.sender,
            reflector: session.reflector,
            security: session.security,
            format: session.format,
            dscp: session.dscp,
            test_keys: session.test_keys,
            rate_limit_pps: rate.pps,
            rate_burst: rate.burst,
        };
        match self.ctx.state.table.add(spec) {
            Ok(()) => {
                if let Some(s) = self.ctx.state.sessions.get_mut(&sid) {
                    s.phase = Phase::Installed;
                    s.ends = Some(SessionEnds {
                        sender: session.sender,
                        reflector: session.reflector,
                        client: self.conn.peer.ip(),
                    });
                }
                self.ctx.metrics.session_started(entry.modes);
                tracing::info!(
                    conn = self.conn.id,
                    %sid,
                    sender = %session.sender,
                    reflector = %session.reflector,
                    security = %session.security,
                    "session installed"
                );
                Ok(())
            }
            Err(e) => {
                self.ctx.metrics.data_plane_error(TableOp::Add);
                tracing::warn!(conn = self.conn.id, %sid, error = %e, "data plane refused a session");
                release(self.ctx, &sid, SessionEnd::NeverStarted);
                Err(table_accept(&e))
            }
        }
    }

    fn start_session(&mut self, sid: Sid) -> Accept {
        let phase = self.ctx.state.sessions.get(&sid).map(|s| s.phase);
        match phase {
            Some(Phase::Installed) => match self.ctx.state.table.start(&sid) {
                Ok(()) => {
                    let mut ends = None;
                    if let Some(s) = self.ctx.state.sessions.get_mut(&sid) {
                        s.phase = Phase::Started(self.ctx.now);
                        ends = s.ends;
                    }
                    if let Some(ends) = ends {
                        let ops = self.ctx.state.esp.session_started(sid, ends);
                        apply_esp_ops(self.ctx, ops);
                    }
                    Accept::Ok
                }
                Err(e) => {
                    self.ctx.metrics.data_plane_error(TableOp::Start);
                    tracing::warn!(%sid, error = %e, "data plane cannot start a session");
                    Accept::InternalError
                }
            },
            Some(Phase::Started(_)) => Accept::Ok,
            _ => Accept::Failure,
        }
    }

    fn stop_session(&mut self, sid: Sid, _timeout: NtpTimestamp) {
        // The grace (the request's Timeout, capped) was fixed at allocation.
        stop(self.ctx, &sid, SessionEnd::Stopped);
    }
}

/// One TWAMP-Control connection: a [`Server`] state machine, or (when the
/// OS random generator failed) a refusal greeting.
pub struct TwampHandler {
    info: ConnInfo,
    server: Option<Server>,
    count: u32,
}

impl TwampHandler {
    /// A handler for the connection `info`, with challenge, salt and
    /// Server-IV drawn from the OS CSPRNG.
    pub fn new(info: &ConnInfo, config: &ServerConfig) -> TwampHandler {
        let server = match random() {
            Ok(random) => Some(Server::new(config.clone(), random, info.peer, info.local)),
            Err(e) => {
                tracing::error!(conn = info.id, error = %e, "the OS random generator failed; refusing the connection");
                None
            }
        };
        TwampHandler {
            info: info.clone(),
            server,
            count: config.count,
        }
    }
}

fn random() -> Result<ServerRandom, getrandom::Error> {
    let mut octets = zeroize::Zeroizing::new([0u8; 48]);
    getrandom::fill(&mut octets[..])?;
    let mut r = ServerRandom {
        challenge: [0; 16],
        salt: [0; 16],
        server_iv: [0; 16],
    };
    r.challenge.copy_from_slice(&octets[..16]);
    r.salt.copy_from_slice(&octets[16..32]);
    r.server_iv.copy_from_slice(&octets[32..]);
    Ok(r)
}

fn take_output(server: &mut Server) -> Vec<u8> {
    let out = server.pending_output().to_vec();
    server.consume_output(out.len());
    out
}

/// Log and count what the state machine reports.
fn report_events(server: &mut Server, info: &ConnInfo, metrics: &Metrics) {
    while let Some(event) = server.poll_event() {
        match event {
            ServerEvent::Established {
                selection,
                identity,
            } => {
                metrics.accept_sent(AcceptMessage::ServerStart, 0);
                let identity = identity.map(|i| String::from_utf8_lossy(&i).into_owned());
                tracing::info!(
                    conn = info.id,
                    peer = %info.peer,
                    mode = %selection.modes(),
                    identity = ?identity,
                    "control connection established"
                );
            }
            ServerEvent::SetupRefused { accept, reason } => {
                metrics.accept_sent(AcceptMessage::ServerStart, accept.into());
                metrics.setup_refused(match reason {
                    SetupRefusal::Mode(_) => SetupFailure::Mode,
                    SetupRefusal::Policy => SetupFailure::Policy,
                    SetupRefusal::UnknownKey => SetupFailure::UnknownKey,
                    SetupRefusal::BadToken => SetupFailure::BadToken,
                });
                tracing::info!(conn = info.id, peer = %info.peer, %accept, ?reason, "set-up refused");
            }
            ServerEvent::SessionAccepted { sid, port } => {
                metrics.accept_sent(AcceptMessage::AcceptSession, 0);
                tracing::debug!(conn = info.id, %sid, port, "Accept-Session sent");
            }
            ServerEvent::SessionRefused { accept, reason } => {
                metrics.accept_sent(AcceptMessage::AcceptSession, accept.into());
                tracing::info!(conn = info.id, peer = %info.peer, %accept, reason, "session request refused");
            }
            ServerEvent::Started { sessions } => {
                metrics.accept_sent(AcceptMessage::StartAck, 0);
                tracing::info!(conn = info.id, sessions, "sessions started");
            }
            ServerEvent::NAck {
                command,
                accept,
                sessions,
            } => {
                let message = if command == Command::StartNSessions {
                    AcceptMessage::StartNAck
                } else {
                    AcceptMessage::StopNAck
                };
                metrics.accept_sent(message, accept.into());
                tracing::info!(conn = info.id, %command, %accept, sessions, "N-acknowledgement sent");
            }
            ServerEvent::Stopped { sessions } => {
                tracing::info!(conn = info.id, sessions, "sessions stopped");
            }
        }
    }
}

/// Count and log an error that ends the connection.
fn report_error(error: &ServerError, info: &ConnInfo, metrics: &Metrics) {
    let reason = match error {
        ServerError::Crypto(CryptoError::BadHmac { .. }) => Some(RejectReason::Hmac),
        ServerError::Wire(_)
        | ServerError::Crypto(_)
        | ServerError::StopCountMismatch { .. }
        | ServerError::InputOverflow { .. } => Some(RejectReason::Malformed),
        ServerError::UnexpectedCommand { .. } => Some(RejectReason::Unexpected),
        ServerError::ClientQuit | ServerError::SetupRefused(_) | ServerError::Closed => None,
    };
    if let Some(reason) = reason {
        metrics.message_rejected(reason);
    }
    tracing::info!(conn = info.id, peer = %info.peer, error = %error, "closing the control connection");
}

impl ConnectionHandler for TwampHandler {
    type State = DaemonState;

    fn on_open(&mut self, _ctx: &mut Context<'_, DaemonState>) -> Action {
        match &mut self.server {
            Some(server) => Action::write(take_output(server)),
            None => Action::write_and_close(go_away_greeting(self.count)),
        }
    }

    fn on_bytes(&mut self, ctx: &mut Context<'_, DaemonState>, data: &[u8]) -> Action {
        let Some(server) = &mut self.server else {
            return Action::close();
        };
        let result = server.receive(
            data,
            &mut ConnContext {
                ctx: &mut *ctx,
                conn: &self.info,
            },
        );
        report_events(server, &self.info, ctx.metrics);
        if let Err(e) = &result {
            report_error(e, &self.info, ctx.metrics);
        }
        let out = take_output(server);
        if result.is_err() || server.wants_close() {
            Action::write_and_close(out)
        } else {
            Action::write(out)
        }
    }

    /// The REFWAIT sweep of a testing connection.
    fn on_timer(&mut self, ctx: &mut Context<'_, DaemonState>) -> Action {
        let Some(server) = &mut self.server else {
            return Action::none();
        };
        let expired: Vec<Sid> = server
            .sids()
            .filter(|sid| ctx.state.refwait_expired(sid, ctx.now))
            .collect();
        for sid in expired {
            tracing::info!(
                conn = self.info.id,
                %sid,
                refwait = ?ctx.state.settings.refwait,
                "no test packet for REFWAIT; ending the session"
            );
            end_now(ctx, &sid, SessionEnd::Refwait);
            server.forget_session(sid);
        }
        Action::none()
    }

    /// Connection gone: started sessions get their grace, the others end now
    /// (RFC 5357 §3.8 spirit: a session ends Timeout after it is stopped).
    fn on_close(&mut self, ctx: &mut Context<'_, DaemonState>, reason: CloseReason) {
        let id = self.info.id;
        if reason == CloseReason::Shutdown && ctx.state.table.outlives_process() {
            // The data plane outlives us: its sessions keep being reflected
            // and the next run adopts them (expiring them by REFWAIT).
            // Stopping them here would cut running tests short.
            tracing::info!(
                conn = id,
                "shutdown: leaving this connection's sessions to the next run"
            );
            return;
        }
        let held: Vec<Sid> = ctx
            .state
            .sessions
            .iter()
            .filter(|(_, s)| s.conn == id && !matches!(s.phase, Phase::Stopping { .. }))
            .map(|(sid, _)| *sid)
            .collect();
        if !held.is_empty() {
            tracing::info!(
                conn = id,
                sessions = held.len(),
                reason = reason.label(),
                "control connection closed; stopping its sessions"
            );
        }
        for sid in held {
            stop(ctx, &sid, SessionEnd::ConnectionClosed);
        }
    }

    fn activity(&self) -> Activity {
        match &self.server {
            Some(s) if s.mid_message() => Activity::Partial,
            Some(s) if s.sessions_in_progress() => Activity::Testing,
            _ => Activity::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, Rules};
    use crate::ports::{PortAllocator, PortRange};
    use proptest::prelude::*;
    use ricochet_protocol::client::{Client, ClientConfig, ClientEvent, ClientRandom};
    use ricochet_protocol::control::{RequestTwSessionRepr, TypeP};
    use ricochet_protocol::crypto::SessionKeys;
    use ricochet_reflector::session_table::{ListenerSpec, SessionActivity};
    use std::net::{Ipv4Addr, SocketAddr};

    /// A data plane in memory (SID → started), shared with the test.
    #[derive(Default)]
    struct Mem {
        sessions: HashMap<Sid, bool>,
        fail_next_add: bool,
        /// Pinned-map behaviour: sessions outlive the process.
        outlives: bool,
        addrs: HashMap<Sid, SocketAddr>,
        idle: HashMap<Sid, Duration>,
    }

    #[derive(Clone, Default)]
    struct MemTable(std::sync::Arc<std::sync::Mutex<Mem>>);

    impl MemTable {
        fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
            self.0.lock().expect("lock")
        }
    }

    impl SessionTable for MemTable {
        fn add(&mut self, spec: SessionSpec) -> Result<(), TableError> {
            let mut m = self.mem();
            if std::mem::take(&mut m.fail_next_add) {
                return Err(TableError::DataPlane("full".into()));
            }
            if m.sessions.insert(spec.sid, false).is_some() {
                return Err(TableError::Exists(spec.sid));
            }
            Ok(())
        }
        fn start(&mut self, sid: &Sid) -> Result<(), TableError> {
            let mut m = self.mem();
            let s = m
                .sessions
                .get_mut(sid)
                .ok_or(TableError::NoSuchSession(*sid))?;
            *s = true;
            Ok(())
        }
        fn stop(&mut self, sid: &Sid, _: Duration) -> Result<(), TableError> {
            self.mem()
                .sessions
                .contains_key(sid)
                .then_some(())
                .ok_or(TableError::NoSuchSession(*sid))
        }
        fn remove(&mut self, sid: &Sid) -> Result<(), TableError> {
            self.mem()
                .sessions
                .remove(sid)
                .map(|_| ())
                .ok_or(TableError::NoSuchSession(*sid))
        }
        fn activity(&self, sid: &Sid) -> Option<SessionActivity> {
            let m = self.mem();
            m.sessions.get(sid).map(|_| SessionActivity {
                idle: m.idle.get(sid).copied(),
                ..SessionActivity::default()
            })
        }
        fn outlives_process(&self) -> bool {
            self.mem().outlives
        }
        fn reflector_addr(&self, sid: &Sid) -> Option<SocketAddr> {
            self.mem().addrs.get(sid).copied()
        }
        fn sessions(&self) -> Vec<Sid> {
            self.mem().sessions.keys().copied().collect()
        }
        fn add_listener(&mut self, _: ListenerSpec) -> Result<(), TableError> {
            Err(TableError::DataPlane("none".into()))
        }
        fn remove_listener(&mut self, a: SocketAddr) -> Result<(), TableError> {
            Err(TableError::Address(a, "none".into()))
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request { port: u16, timeout_ms: u64 },
        Start,
        Stop,
        StartN(Vec<usize>),
        StopN(Vec<usize>),
        Garbage(Vec<u8>),
        FailNextAdd,
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (prop_oneof![Just(0u16), 40000u16..40006], 0u64..3000)
                .prop_map(|(port, timeout_ms)| Op::Request { port, timeout_ms }),
            1 => Just(Op::Start),
            1 => Just(Op::Stop),
            2 => proptest::collection::vec(0usize..8, 1..4).prop_map(Op::StartN),
            2 => proptest::collection::vec(0usize..8, 1..4).prop_map(Op::StopN),
            1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::Garbage),
            1 => Just(Op::FailNextAdd),
            2 => (0u64..1500).prop_map(Op::Tick),
        ]
    }

    fn request(port: u16, timeout_ms: u64) -> RequestTwSessionRepr {
        RequestTwSessionRepr {
            ipvn: 4,
            conf_sender: 0,
            conf_receiver: 0,
            schedule_slots: 0,
            packets: 0,
            sender_port: 50000,
            receiver_port: port,
            sender_address: Ipv4Addr::UNSPECIFIED.into(),
            receiver_address: Ipv4Addr::UNSPECIFIED.into(),
            sid: Sid::ZERO,
            padding_length: 27,
            start_time: NtpTimestamp::default(),
            timeout: NtpTimestamp::from_interval_ns(timeout_ms * 1_000_000),
            type_p: TypeP(0),
            octets_to_reflect: [0; 2],
            padding_to_reflect: 0,
            hmac: [0; 16],
        }
    }

    struct World {
        policy: Policy,
        ports: PortAllocator,
        metrics: Metrics,
        state: DaemonState,
        now: Instant,
    }

    impl World {
        fn ctx(&mut self) -> Context<'_, DaemonState> {
            Context {
                policy: &mut self.policy,
                ports: &mut self.ports,
                metrics: &self.metrics,
                state: &mut self.state,
                now: self.now,
            }
        }
    }

    const REFWAIT: Duration = Duration::from_secs(1);

    /// Feed the handler's output to the client; false once either side is
    /// done.
    fn to_client(client: &mut Client, action: &Action) -> bool {
        client.receive(&action.write).is_ok() && !action.close
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends, in whatever pieces, with whatever the
        /// data plane refuses and however time passes: once its connection
        /// is gone and the longest grace is over, every port, policy count
        /// and data-plane session is released, and the gauges are back to 0.
        #[test]
        fn a_connection_never_leaks_sessions(
            ops in proptest::collection::vec(op(), 0..30),
            isc in any::<bool>(),
            chunk in 1usize..120,
        ) {
            let table = MemTable::default();
            let rules = Rules {
                allow: vec![],
                deny: vec![],
                max_connections: 10,
                max_connections_per_client: 10,
                max_sessions: 4,
                max_sessions_per_client: 4,
                ipv6_client_prefix: 64,
                identities: Default::default(),
            };
            let mut w = World {
                policy: Policy::new(rules),
                ports: PortAllocator::new(PortRange::new(40000, 40002).expect("range")),
                metrics: Metrics::new(),
                state: DaemonState::new(
                    Box::new(table.clone()),
                    Keys::default(),
                    SessionSettings { refwait: REFWAIT, rate_limit: RateLimit::default() },
                ),
                now: Instant::now(),
            };
            let peer: SocketAddr = (Ipv4Addr::LOCALHOST, 40999).into();
            let info = ConnInfo {
                id: 1,
                peer,
                local: (Ipv4Addr::LOCALHOST, 862).into(),
                client: w.policy.admit_connection(peer.ip()).expect("admitted"),
            };
            let config = ServerConfig {
                modes: Modes::UNAUTHENTICATED | Modes::INDIVIDUAL_SESSION_CONTROL,
                count: 1024,
                start_time: ntp_now(),
                max_sessions: 4,
                greeting_unused: [0; 12],
                test_format: Default::default(),
            };
            let mut handler = TwampHandler::new(&info, &config);
            let mut client = Client::new(
                ClientConfig {
                    allowed: Modes::UNAUTHENTICATED,
                    wanted: if isc { Modes::INDIVIDUAL_SESSION_CONTROL } else { Modes::NONE },
                    key_id: None,
                    secret: None,
                    max_count: 32768,
                    max_sessions: 16,
                },
                ClientRandom { session_keys: SessionKeys::from_bytes(&[7; 48]), client_iv: [0; 16] },
            );
            let mut open = to_client(&mut client, &handler.on_open(&mut w.ctx()));
            let mut sids: Vec<Sid> = Vec::new();
            let mut accepted = 0u32;
            for op in ops {
                if !open {
                    break;
                }
                let mut raw = Vec::new();
                match op {
                    Op::Request { port, timeout_ms } => {
                        let _ = client.request_session(&request(port, timeout_ms));
                    }
                    Op::Start => { let _ = client.start_sessions(accepted); }
                    Op::Stop => { let _ = client.stop_sessions(Accept::Ok); }
                    Op::StartN(i) | Op::StopN(i) if sids.is_empty() => { let _ = i; }
                    Op::StartN(i) => {
                        let pick: Vec<Sid> = i.iter().map(|&k| sids[k % sids.len()]).collect();
                        let _ = client.start_n(&pick);
                    }
                    Op::StopN(i) => {
                        let pick: Vec<Sid> = i.iter().map(|&k| sids[k % sids.len()]).collect();
                        let _ = client.stop_n(&pick);
                    }
                    Op::Garbage(bytes) => raw = bytes,
                    Op::FailNextAdd => table.mem().fail_next_add = true,
                    Op::Tick(ms) => {
                        w.now += Duration::from_millis(ms);
                        sweep(&mut w.ctx());
                        let action = handler.on_timer(&mut w.ctx());
                        open = to_client(&mut client, &action);
                    }
                }
                let mut input = client.pending_output().to_vec();
                client.consume_output(input.len());
                input.extend_from_slice(&raw);
                for piece in input.chunks(chunk) {
                    let action = handler.on_bytes(&mut w.ctx(), piece);
                    open = open && to_client(&mut client, &action);
                    if action.close {
                        break;
                    }
                }
                while let Some(event) = client.poll_event() {
                    if let ClientEvent::SessionAccepted { sid, .. } = event {
                        sids.push(sid);
                        accepted += 1;
                    }
                }
                // The accounting holds at every step.
                prop_assert_eq!(w.ports.in_use(), w.state.session_count());
                prop_assert_eq!(w.policy.sessions() as usize, w.state.session_count());
                prop_assert!(table.mem().sessions.len() <= w.state.session_count());
            }
            handler.on_close(&mut w.ctx(), CloseReason::PeerClosed);
            w.now += REFWAIT + Duration::from_millis(1);
            sweep(&mut w.ctx());
            prop_assert_eq!(w.state.session_count(), 0);
            prop_assert_eq!(w.ports.in_use(), 0);
            prop_assert_eq!(w.policy.sessions(), 0);
            prop_assert!(table.mem().sessions.is_empty());
            let text = w.metrics.encode();
            for mode in ["unauthenticated", "authenticated", "encrypted", "mixed"] {
                let gauge = format!("ricochet_control_sessions{{mode=\"{mode}\"}} 0");
                prop_assert!(text.contains(&gauge), "{}", text);
            }
        }
    }

    /// A restarted control plane adopts what a pinned data plane still
    /// holds: the ports stay taken, a session with test packets stays, one
    /// without any for REFWAIT is removed and its port released.
    #[test]
    fn adopted_sessions_end_by_the_refwait_rule() {
        let table = MemTable::default();
        let (a, b, outside) = (Sid([1; 16]), Sid([2; 16]), Sid([3; 16]));
        {
            let mut m = table.mem();
            m.outlives = true;
            for (sid, port) in [(a, 40000u16), (b, 40001), (outside, 50000)] {
                m.sessions.insert(sid, true);
                m.addrs.insert(sid, (Ipv4Addr::LOCALHOST, port).into());
            }
        }
        let rules = Rules {
            allow: vec![],
            deny: vec![],
            max_connections: 10,
            max_connections_per_client: 10,
            max_sessions: 4,
            max_sessions_per_client: 4,
            ipv6_client_prefix: 64,
            identities: Default::default(),
        };
        let mut w = World {
            policy: Policy::new(rules),
            ports: PortAllocator::new(PortRange::new(40000, 40002).expect("range")),
            metrics: Metrics::new(),
            state: DaemonState::new(
                Box::new(table.clone()),
                Keys::default(),
                SessionSettings {
                    refwait: REFWAIT,
                    rate_limit: RateLimit::default(),
                },
            ),
            now: Instant::now(),
        };
        let now = w.now;
        assert_eq!(w.state.adopt_sessions(&mut w.ports, now), 3);
        assert!(w.ports.is_allocated(40000) && w.ports.is_allocated(40001));
        assert_eq!(w.ports.in_use(), 2, "50000 is outside the range");
        // Half of REFWAIT: nothing ends.
        w.now += REFWAIT / 2;
        sweep(&mut w.ctx());
        assert_eq!(w.state.adopted_count(), 3);
        // `a` keeps receiving test packets; the others saw none since adoption.
        table.mem().idle.insert(a, Duration::ZERO);
        w.now += REFWAIT / 2;
        sweep(&mut w.ctx());
        assert_eq!(w.state.adopted_count(), 1);
        assert_eq!(table.sessions(), vec![a]);
        assert!(w.ports.is_allocated(40000) && !w.ports.is_allocated(40001));
        // Then `a` goes quiet for REFWAIT.
        table.mem().idle.insert(a, REFWAIT);
        sweep(&mut w.ctx());
        assert_eq!(w.state.adopted_count(), 0);
        assert!(table.sessions().is_empty());
        assert_eq!(w.ports.in_use(), 0);
    }

    #[test]
    fn go_away_greeting_layout() {
        // owamp-foundations.md §2: Modes at 12..16, Count at 48..52.
        let g = go_away_greeting(2048);
        assert_eq!(g.len(), 64);
        assert_eq!(&g[12..16], &[0, 0, 0, 0]);
        assert_eq!(&g[48..52], &[0, 0, 0x08, 0x00]);
        assert!(g[..12].iter().chain(&g[52..]).all(|b| *b == 0));
    }

    #[test]
    fn ntp_now_is_in_the_ntp_era() {
        // 2020-01-01 is 3 786 825 600 s after 1900-01-01.
        let secs = ntp_now().to_bits() >> 32;
        assert!(secs > 3_786_825_600, "{secs}");
    }

    #[test]
    fn our_addresses() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(is_our_address(lo, lo));
        assert!(is_our_address(lo, "192.0.2.1".parse().expect("ip")));
        // TEST-NET-1 is never configured on a test host.
        assert!(!is_our_address("192.0.2.200".parse().expect("ip"), lo));
        assert!(!is_our_address("0.0.0.0".parse().expect("ip"), lo));
        assert!(!is_our_address("224.0.0.1".parse().expect("ip"), lo));
    }

    #[test]
    fn table_errors_map_to_accept_values() {
        let addr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(
            table_accept(&TableError::Address(addr, "in use".into())),
            Accept::TemporaryResourceLimitation
        );
        assert_eq!(
            table_accept(&TableError::DataPlane("full".into())),
            Accept::InternalError
        );
        assert_eq!(
            table_accept(&TableError::Exists(Sid::ZERO)),
            Accept::InternalError
        );
    }
}
