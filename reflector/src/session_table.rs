//! The one interface through which the control plane programs a data plane.
//!
//! `ricochet-control` admits TWAMP-Control sessions and hands each to a
//! [`SessionTable`]; the data plane behind it reflects the session's test
//! packets. Implementations: the socket reflector (portable path, in-process)
//! and the pinned BPF maps (XDP and AF_XDP paths, shared between processes).
//! The control plane never talks to a data-plane thread directly.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::{EspKeys, SessionKeys};
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::SessionFormat;
use thiserror::Error;

/// Everything the data plane needs to reflect one TWAMP session.
#[derive(Clone)]
pub struct SessionSpec {
    pub sid: Sid,
    /// The Session-Sender: test packets must come from here; reflections go here.
    pub sender: SocketAddr,
    /// Our address and the UDP port the session was given.
    pub reflector: SocketAddr,
    pub security: SecurityMode,
    /// The negotiated test format (layout, RFC 6038/7750/8186 options).
    pub format: SessionFormat,
    /// DSCP for reflected packets (Type-P, RFC 5357 §3.5).
    pub dscp: u8,
    /// Per-SID test keys (authenticated and encrypted modes).
    pub test_keys: Option<SessionKeys>,
    /// Reflections per second this session may cause at most (the declared
    /// rate is not in TWAMP-Control; this is the operator's ceiling), and the
    /// burst above it. `0` means no limit.
    pub rate_limit_pps: u32,
    pub rate_burst: u32,
}

impl std::fmt::Debug for SessionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSpec")
            .field("sid", &self.sid)
            .field("sender", &self.sender)
            .field("reflector", &self.reflector)
            .field("security", &self.security)
            .field("format", &self.format)
            .field("dscp", &self.dscp)
            .field("test_keys", &self.test_keys.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// What a stateless listener reflects (no TWAMP-Control; RFC 5357 App. I,
/// RFC 8762).
#[derive(Clone)]
pub enum ListenerKind {
    /// Unauthenticated TWAMP-Light / STAMP: the sender's sequence number is
    /// copied; the reply is never longer than the request.
    Unauthenticated,
    /// Authenticated STAMP with an HMAC-SHA-256 key configured out of band.
    StampAuthenticated { key: zeroize::Zeroizing<[u8; 32]> },
}

/// A stateless reflector port.
#[derive(Clone)]
pub struct ListenerSpec {
    /// Address to listen on (unspecified = every address) and port.
    pub local: SocketAddr,
    pub kind: ListenerKind,
    /// DSCP for replies; `None` copies the received DSCP (RFC 7750 §2.2 leaves it open).
    pub dscp: Option<u8>,
    pub rate_limit_pps: u32,
    pub rate_burst: u32,
}

/// A provisioned stateful STAMP session (RFC 8762 §4.3 stateful mode; STAMP
/// has no control protocol: sessions come from configuration). Keyed by
/// the SSID (RFC 8972 §3) and the 4-tuple: the sender's address and port,
/// and our address and port.
#[derive(Clone)]
pub struct StampSessionSpec {
    /// The Session-Sender: packets must come from here; replies go here.
    pub sender: SocketAddr,
    /// Address (unspecified = any) and UDP port we reflect on.
    pub local: SocketAddr,
    /// The session's SSID; packets carrying another are discarded.
    pub ssid: u16,
    /// HMAC-SHA-256 key: authenticated mode (112-octet base packets);
    /// `None`: unauthenticated.
    pub key: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// T2/T3 format: NTP (default) or PTP (TAI seconds since the PTP epoch).
    pub timestamp_format: ricochet_protocol::time::TimeFormat,
    /// DSCP for replies without a Class of Service TLV; `None` copies the
    /// received DSCP.
    pub dscp: Option<u8>,
    /// Which DSCPs a Class of Service TLV may ask for.
    pub cos_policy: crate::stamp_engine::CosPolicy,
    /// RFC 9534 Reflector Micro-session ID (member link); `None`: the TLV
    /// is returned with U = 1.
    pub micro_session_id: Option<u16>,
    pub rate_limit_pps: u32,
    pub rate_burst: u32,
}

impl StampSessionSpec {
    /// The key the table knows the session by.
    pub fn id(&self) -> StampSessionId {
        StampSessionId {
            local_port: self.local.port(),
            sender: self.sender,
            ssid: self.ssid,
        }
    }
}

impl std::fmt::Debug for StampSessionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampSessionSpec")
            .field("sender", &self.sender)
            .field("local", &self.local)
            .field("ssid", &self.ssid)
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .field("timestamp_format", &self.timestamp_format)
            .field("dscp", &self.dscp)
            .field("micro_session_id", &self.micro_session_id)
            .finish_non_exhaustive()
    }
}

/// How a stateful STAMP session is named: our port, the sender, the SSID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StampSessionId {
    pub local_port: u16,
    pub sender: SocketAddr,
    pub ssid: u16,
}

impl std::fmt::Display for StampSessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "STAMP port {} from {} SSID {}",
            self.local_port, self.sender, self.ssid
        )
    }
}

/// Test packets of one session dropped, by reason (totals since it was added).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropBreakdown {
    /// HMAC verification failed (authenticated and encrypted modes).
    pub authentication: u64,
    /// Arrived before Start-Sessions.
    pub not_started: u64,
    /// Arrived after Stop-Sessions plus the Timeout.
    pub expired: u64,
    /// Over the session's reflection rate limit.
    pub rate_limited: u64,
    /// On the session's port but not from its sender.
    pub wrong_source: u64,
    /// Too short or too long for the session's format.
    pub malformed: u64,
    /// STAMP requests that asked for no reply (RFC 9503 §4.1.1 Return
    /// Path Control Code 0): received and processed, deliberately not
    /// answered.
    pub no_reply: u64,
}

/// Counters and liveness of one session, for REFWAIT and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionActivity {
    pub reflected: u64,
    /// Dropped: bad HMAC, wrong source, too short, rate limited, not started.
    pub dropped: u64,
    /// `dropped` by reason.
    pub drops: DropBreakdown,
    /// Time since the last test packet of this session, if any arrived.
    pub idle: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TableError {
    #[error("session {0} already exists")]
    Exists(Sid),
    #[error("no session {0}")]
    NoSuchSession(Sid),
    #[error("reflector address {0} is not usable: {1}")]
    Address(SocketAddr, String),
    #[error("the data plane refused: {0}")]
    DataPlane(String),
    /// The data plane cannot do this at all (e.g. ESP on the socket path:
    /// this host's kernel has no ESP).
    #[error("not supported by this data plane: {0}")]
    Unsupported(String),
    /// An ESP SA that is invalid or conflicts with an installed one.
    #[error("ESP SA {spi:08x}: {why}")]
    EspSa { spi: u32, why: String },
}

/// ESP mode of an SA (RFC 4301 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspMode {
    /// The payload is the test packet's UDP datagram; the outer IP header
    /// is the real one (TTL and DSCP as sent).
    Transport,
    /// The payload is the whole inner IP packet (for TWAMP the inner TTL
    /// and DSCP are what is reported, esp.md §1 rule 6).
    Tunnel,
}

/// The test traffic an ESP SA carries (its traffic selectors are that
/// session's endpoints: the TWAMP/STAMP test ports only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspInner {
    /// A TWAMP session added (and started) through [`SessionTable::add`].
    Session(Sid),
    /// A STAMP / TWAMP-Light listener added through
    /// [`SessionTable::add_listener`] (any sender port).
    Listener(SocketAddr),
}

/// Hard lifetimes of an SA (RFC 4301 §4.4.2.1); 0 / `None` = none. The
/// data plane raises "rekey needed" at 90 % of any of them and stops using
/// the SA when one is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EspLifetime {
    pub packets: u64,
    pub bytes: u64,
    pub time: Option<Duration>,
}

/// One CHILD_SA pair as the data plane needs it: the inbound SA (our SPI,
/// the peer's keys for what it sends) and the outbound SA (the peer's SPI,
/// our sending keys), e.g. from an IKEv2 `ChildSaInstalled` event.
#[derive(Clone)]
pub struct EspSaSpec {
    /// The SPI we chose (the peer sends with it). 1..=255 are reserved.
    pub inbound_spi: u32,
    /// The SPI the peer chose (our replies carry it).
    pub outbound_spi: u32,
    /// Keys of the inbound SA (the peer's sending keys).
    pub inbound_keys: EspKeys,
    /// Keys of the outbound SA (same transform).
    pub outbound_keys: EspKeys,
    /// Extended (64-bit) Sequence Numbers negotiated.
    pub esn: bool,
    /// Anti-replay window in packets: 0 (off, receiver's choice) or
    /// 64..=4096.
    pub replay_window: u32,
    pub lifetime: EspLifetime,
    pub mode: EspMode,
    /// ESP in UDP port 4500 (RFC 3948); else raw IP protocol 50.
    pub udp_encap: bool,
    /// Our outer address (the inbound SA's destination).
    pub local: IpAddr,
    /// The test traffic it carries.
    pub inner: EspInner,
}

impl std::fmt::Debug for EspSaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspSaSpec")
            .field("inbound_spi", &format_args!("{:08x}", self.inbound_spi))
            .field("outbound_spi", &format_args!("{:08x}", self.outbound_spi))
            .field("transform", &self.inbound_keys.name())
            .field("esn", &self.esn)
            .field("replay_window", &self.replay_window)
            .field("mode", &self.mode)
            .field("udp_encap", &self.udp_encap)
            .field("local", &self.local)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Counters of one inbound SA (and of the outbound half its replies use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EspSaActivity {
    /// ESP packets of this SPI the XDP program handed to the pollers.
    pub redirected: u64,
    /// Authenticated and accepted.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Replies sealed with this SA's outbound half.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub replay_drops: u64,
    pub icv_failures: u64,
    pub seq_exhausted: u64,
    pub selector_drops: u64,
    pub expired_drops: u64,
    /// Why the SA should be rekeyed (`EspState::REKEY_*` bits; 0 = not).
    pub rekey_needed: u64,
    /// Last outbound sequence number used.
    pub tx_seq: u64,
}

/// The control plane's handle on a data plane.
pub trait SessionTable: Send {
    /// Installs a session; its packets are dropped until [`Self::start`].
    fn add(&mut self, spec: SessionSpec) -> Result<(), TableError>;
    /// Starts reflecting (Start-Sessions / Start-N-Sessions).
    fn start(&mut self, sid: &Sid) -> Result<(), TableError>;
    /// Stop-Sessions: keep reflecting what arrives within `grace` (the
    /// request's Timeout), then remove the session.
    fn stop(&mut self, sid: &Sid, grace: Duration) -> Result<(), TableError>;
    /// Removes a session now (connection lost, REFWAIT expired).
    fn remove(&mut self, sid: &Sid) -> Result<(), TableError>;
    /// Counters and idle time of a session.
    fn activity(&self, sid: &Sid) -> Option<SessionActivity>;
    /// Every session the data plane holds (reconciliation after a restart).
    fn sessions(&self) -> Vec<Sid>;
    /// Whether the sessions outlive this process (the pinned BPF maps): a
    /// control plane that stops then leaves them in place for its successor
    /// instead of stopping them. `false` for an in-process data plane.
    fn outlives_process(&self) -> bool {
        false
    }
    /// Our address and port of session `sid` (for a restarted control plane
    /// to take the ports of the sessions it adopts); `None` when unknown.
    fn reflector_addr(&self, sid: &Sid) -> Option<SocketAddr> {
        let _ = sid;
        None
    }
    /// Adds a stateless listener.
    fn add_listener(&mut self, spec: ListenerSpec) -> Result<(), TableError>;
    fn remove_listener(&mut self, local: SocketAddr) -> Result<(), TableError>;
    /// Adds a stateful STAMP session. Data planes that do not carry them
    /// refuse.
    fn add_stamp_session(&mut self, spec: StampSessionSpec) -> Result<(), TableError> {
        Err(TableError::DataPlane(format!(
            "{}: this data plane has no stateful STAMP sessions",
            spec.id()
        )))
    }
    /// Removes a stateful STAMP session.
    fn remove_stamp_session(&mut self, id: &StampSessionId) -> Result<(), TableError> {
        Err(TableError::DataPlane(format!(
            "{id}: no such STAMP session"
        )))
    }
    /// Counters and idle time of a stateful STAMP session.
    fn stamp_activity(&self, _id: &StampSessionId) -> Option<SessionActivity> {
        None
    }
    /// Installs an ESP SA pair carrying the test packets of `spec.inner`.
    /// While an older SA of the same inner session is installed both
    /// inbound SPIs are accepted; replies keep the older SA's outbound half
    /// until a packet authenticates on this SA's inbound SPI (RFC 7296
    /// §2.8: the peer has installed it), then all switch to this SA's
    /// outbound half (rekey without loss: add the new SA, then remove the
    /// old one). Removing this SA again (rollback) puts the others back.
    fn add_esp_sa(&mut self, spec: EspSaSpec) -> Result<(), TableError> {
        Err(TableError::Unsupported(format!(
            "ESP SA {:08x}: this data plane has no ESP (use the XDP/AF_XDP path)",
            spec.inbound_spi
        )))
    }
    /// Removes the SA whose inbound SPI is `inbound_spi` (Delete, expiry,
    /// the old half of a rekey).
    fn remove_esp_sa(&mut self, inbound_spi: u32) -> Result<(), TableError> {
        Err(TableError::Unsupported(format!(
            "ESP SA {inbound_spi:08x}: this data plane has no ESP"
        )))
    }
    /// Counters of an installed SA.
    fn esp_sa_activity(&self, _inbound_spi: u32) -> Option<EspSaActivity> {
        None
    }
}
