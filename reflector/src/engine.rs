//! The per-packet reflection engine shared by every user-space data path
//! (the socket reflector now, the AF_XDP pollers later).
//!
//! Two kinds of state, one per socket / map entry:
//!
//! * [`SessionEngine`]: a TWAMP test session admitted by TWAMP-Control
//!   (RFC 5357 §4.2). Own sequence counter from 0, the session's negotiated
//!   [`SessionFormat`], per-SID test keys (authenticated and encrypted modes,
//!   RFC 4656 §4.1.2) built into key schedules once, the Type-P DSCP, a token
//!   bucket, per-reason drop counters, the time of the last reflected packet
//!   (REFWAIT), and the life cycle installed → started → stopping until a
//!   deadline (Start-Sessions / Stop-Sessions with its Timeout).
//! * [`ListenerEngine`]: a stateless reflector port (TWAMP Light, RFC 5357
//!   Appendix I; STAMP, RFC 8762) — sequence number copied, reply never
//!   longer than the request, optionally STAMP authenticated with
//!   HMAC-SHA-256 (RFC 8762 §4.1.1, §4.2.1).
//!
//! Per-packet order of operations (`twamp-test.md` §1, §5; the module
//! documentation of [`ricochet_protocol::twamp_test`]):
//!
//! 1. state: installed (not started) → drop [`DropReason::NotStarted`];
//!    stopping and past the deadline → drop [`DropReason::Expired`];
//! 2. rate limit: an empty bucket drops [`DropReason::RateLimited`] before
//!    any cryptography is spent; the token is only taken by a packet that is
//!    actually reflected, so forged packets cannot starve the session;
//! 3. length ≥ the sender header of the mode, else [`DropReason::TooShort`];
//! 4. authenticated / encrypted: the 48-octet sender header is copied and
//!    unprotected (role Sender: AES-CBC IV 0 of 16 or 32 octets, then the
//!    HMAC-SHA1-128 checked in constant time); a bad HMAC drops
//!    [`DropReason::BadHmac`] — never reflected;
//! 5. [`reflect_twamp`] builds the plaintext reply (T2 and the Error Estimate
//!    in the session's timestamp format, from the host clock state);
//! 6. T3 as late as possible, then protection:
//!    * unauthenticated / mixed: T3;
//!    * authenticated: protect (HMAC over block 0, ECB of block 0), **then**
//!      T3 — T3 (octets 16–23) is clear and outside the HMAC;
//!    * encrypted: T3 **first** (it is encrypted and authenticated), then
//!      protect (HMAC over octets 0–95, AES-CBC IV 0 over 0–95).
//!
//! Nothing here allocates or panics per packet; the crypto state is cloned
//! from precomputed schedules. Times come from the caller (a monotonic
//! `Instant` for the life cycle and the bucket, a [`Stamp`] for T2) except T3,
//! which is read from the engine's [`T3Source`] at the last moment.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ricochet_protocol::crypto::{PacketRole, SessionKeys, StampHmac, TestKeys, TestProtection};
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::stamp::StampLayout;
use ricochet_protocol::time::TimeFormat;
use ricochet_protocol::twamp_test::{
    reflect_twamp, reflect_twamp_light, set_t3, ReflectError, ReflectParams, ReflectorPacket,
    SenderPacket, SessionFormat, TestLayout, TestSecurity,
};
use thiserror::Error;

pub use ricochet_protocol::twamp_test::RxMeta;

use crate::clock::{ClockState, Stamp};
use crate::session_table::{
    DropBreakdown, ListenerKind, ListenerSpec, SessionActivity, SessionSpec,
};
use crate::stamp_engine::{
    build_stamp_reply, listener_env, stateless_format, PacketAddrs, StampJob,
};

/// The largest reply a session may build (a UDP payload); the output buffer
/// is the practical limit.
const MAX_REPLY: usize = 65_535;

/// Octets of the authenticated/encrypted sender header that are decrypted
/// and checked (RFC 4656 §4.1.2: the HMAC ends at octet 48).
const AUTH_SENDER_HEADER: usize = 48;

/// The longest Stop-Sessions grace period honoured (the Timeout is a 64-bit
/// NTP interval; anything longer is cut to a year, REFWAIT ends such a
/// session anyway).
pub const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where T3 comes from: read as late as possible before transmit (RFC 5357
/// §4.2.1). [`Stamp::now`] (user-space `CLOCK_TAI`) by default; replaceable
/// for deterministic tests or a path with its own clock.
pub type T3Source = fn() -> Stamp;

/// Why a received test packet was not reflected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum DropReason {
    /// The session is installed but Start-Sessions has not arrived
    /// (RFC 5357 §3.7: packets are reflected only once started).
    #[error("session not started")]
    NotStarted,
    /// The session was stopped and its Stop-Sessions Timeout has passed
    /// (RFC 5357 §3.8).
    #[error("session stopped and its grace period is over")]
    Expired,
    /// The session's or listener's token bucket is empty.
    #[error("rate limit exceeded")]
    RateLimited,
    /// The source address or port is not the session's sender (RFC 5357
    /// §4.2; perfSONAR drops these too).
    #[error("source is not the session's sender")]
    WrongSource,
    /// Shorter than the sender header of the mode (14 or 48 octets; 112 for
    /// authenticated STAMP).
    #[error("packet shorter than the sender header")]
    TooShort,
    /// The reply would be longer than allowed: for a stateless listener,
    /// longer than the request (no amplification).
    #[error("reply would be longer than allowed")]
    TooLong,
    /// The output buffer cannot hold the reply.
    #[error("output buffer too small for the reply")]
    BufferTooSmall,
    /// The HMAC of an authenticated or encrypted packet did not verify
    /// (RFC 4656 §4.2, RFC 8762 §4.4: discard silently).
    #[error("HMAC verification failed")]
    BadHmac,
    /// A STAMP request whose Return Path TLV carries Control Code "No
    /// Reply Requested" (RFC 9503 §4.1.1, least significant bit 0): the
    /// packet was received and processed, no reply is sent by design.
    #[error("no reply requested (RFC 9503 Return Path Control Code 0)")]
    NoReplyRequested,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 9;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::NotStarted,
        DropReason::Expired,
        DropReason::RateLimited,
        DropReason::WrongSource,
        DropReason::TooShort,
        DropReason::TooLong,
        DropReason::BufferTooSmall,
        DropReason::BadHmac,
        DropReason::NoReplyRequested,
    ];

    const fn index(self) -> usize {
        match self {
            DropReason::NotStarted => 0,
            DropReason::Expired => 1,
            DropReason::RateLimited => 2,
            DropReason::WrongSource => 3,
            DropReason::TooShort => 4,
            DropReason::TooLong => 5,
            DropReason::BufferTooSmall => 6,
            DropReason::BadHmac => 7,
            DropReason::NoReplyRequested => 8,
        }
    }

    /// A short name for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NotStarted => "not_started",
            DropReason::Expired => "expired",
            DropReason::RateLimited => "rate_limited",
            DropReason::WrongSource => "wrong_source",
            DropReason::TooShort => "too_short",
            DropReason::TooLong => "too_long",
            DropReason::BufferTooSmall => "buffer_too_small",
            DropReason::BadHmac => "bad_hmac",
            DropReason::NoReplyRequested => "no_reply_requested",
        }
    }
}

impl From<ReflectError> for DropReason {
    fn from(e: ReflectError) -> Self {
        match e {
            ReflectError::TooShort { .. } => DropReason::TooShort,
            ReflectError::TooLong { .. } => DropReason::TooLong,
            ReflectError::BufferTooSmall { .. } => DropReason::BufferTooSmall,
        }
    }
}

/// Dropped packets per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::COUNT]);

impl DropCounts {
    /// Packets dropped for `reason`.
    pub const fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// Packets dropped for any reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn count(&mut self, reason: DropReason) {
        let c = &mut self.0[reason.index()];
        *c = c.saturating_add(1);
    }
}

/// Counters of one session or listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Replies built.
    pub reflected: u64,
    /// Packets dropped, per reason.
    pub dropped: DropCounts,
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// A token bucket: `rate` tokens per second, at most `burst` stored, one
/// token per reflected packet. Integer arithmetic in 10⁻⁹ tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens per second; 0 = unlimited.
    rate: u64,
    /// Capacity in 10⁻⁹ tokens.
    capacity: u64,
    /// Current level in 10⁻⁹ tokens.
    level: u64,
    /// When `level` was last brought up to date (`None`: full, never used).
    updated: Option<Instant>,
}

impl TokenBucket {
    /// A bucket of `rate_pps` tokens per second holding at most
    /// `max(burst, 1)`, initially full. `rate_pps == 0` never limits.
    pub fn new(rate_pps: u32, burst: u32) -> TokenBucket {
        let capacity = u64::from(burst.max(1)) * NS_PER_SEC;
        TokenBucket {
            rate: u64::from(rate_pps),
            capacity,
            level: capacity,
            updated: None,
        }
    }

    /// Whether the bucket never limits.
    pub const fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Refills up to `now` and tells whether a whole token is available.
    pub fn ready(&mut self, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        if let Some(then) = self.updated {
            let elapsed =
                u64::try_from(now.saturating_duration_since(then).as_nanos()).unwrap_or(u64::MAX);
            self.level = self
                .level
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.capacity);
        }
        self.updated = Some(now);
        self.level >= NS_PER_SEC
    }

    /// Takes one token (after [`Self::ready`] said there is one).
    pub fn take(&mut self) {
        if !self.is_unlimited() {
            self.level = self.level.saturating_sub(NS_PER_SEC);
        }
    }
}

/// Where a session is in its life (RFC 5357 §3.7, §3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Accepted by Request-TW-Session; packets are dropped.
    Installed,
    /// Start-Sessions received: reflecting.
    Started,
    /// Stop-Sessions received: packets arriving before `deadline` are still
    /// reflected, later ones dropped; the session is then removed.
    Stopping {
        /// End of the grace period (the Stop-Sessions Timeout).
        deadline: Instant,
    },
}

/// Why a session cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// Authenticated or encrypted test packets need the per-SID test keys.
    #[error("{0:?} test packets need test keys, none were given")]
    MissingKeys(TestSecurity),
    /// The security mode and the test format disagree.
    #[error("security mode {mode} uses {expected:?} test packets, the format says {format:?}")]
    SecurityMismatch {
        /// The session's security mode.
        mode: SecurityMode,
        /// The test security that mode implies.
        expected: TestSecurity,
        /// The test security of the format.
        format: TestSecurity,
    },
    /// A DSCP is 6 bits.
    #[error("DSCP {0} is out of range 0..=63")]
    BadDscp(u8),
}

/// Checks that `dscp` fits 6 bits.
pub fn check_dscp(dscp: u8) -> Result<u8, EngineError> {
    if dscp <= 0x3f {
        Ok(dscp)
    } else {
        Err(EngineError::BadDscp(dscp))
    }
}

/// The sender-side protection of a session and its key schedules.
#[derive(Clone)]
struct Protection {
    mode: TestProtection,
    keys: TestKeys,
}

/// The reflection state of one TWAMP test session (RFC 5357 §4.2).
#[derive(Clone)]
pub struct SessionEngine {
    format: SessionFormat,
    /// Boxed: the key schedules are large and only secured sessions have them.
    protection: Option<Box<Protection>>,
    sender: Option<SocketAddr>,
    seq: u32,
    dscp: u8,
    bucket: TokenBucket,
    counters: EngineCounters,
    last_reflected: Option<Instant>,
    state: RunState,
    t3: T3Source,
}

impl std::fmt::Debug for SessionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEngine")
            .field("format", &self.format)
            .field("protected", &self.protection.as_ref().map(|p| p.mode))
            .field("sender", &self.sender)
            .field("seq", &self.seq)
            .field("dscp", &self.dscp)
            .field("state", &self.state)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl SessionEngine {
    /// A session in `format`, installed (not started). `keys` are the raw
    /// per-SID test keys (RFC 4656 §4.1.2), required for authenticated and
    /// encrypted formats and ignored otherwise (mixed mode has control keys
    /// but unauthenticated test packets, RFC 5618).
    pub fn new(
        format: SessionFormat,
        keys: Option<&SessionKeys>,
        dscp: u8,
        rate_pps: u32,
        burst: u32,
    ) -> Result<SessionEngine, EngineError> {
        let mode = match format.security {
            TestSecurity::Unauthenticated => None,
            TestSecurity::Authenticated => Some(TestProtection::Authenticated),
            TestSecurity::Encrypted => Some(TestProtection::Encrypted),
        };
        let protection = match (mode, keys) {
            (None, _) => None,
            (Some(_), None) => return Err(EngineError::MissingKeys(format.security)),
            (Some(mode), Some(k)) => Some(Box::new(Protection {
                mode,
                keys: TestKeys::new(k),
            })),
        };
        Ok(SessionEngine {
            format,
            protection,
            sender: None,
            seq: 0,
            dscp: check_dscp(dscp)?,
            bucket: TokenBucket::new(rate_pps, burst),
            counters: EngineCounters::default(),
            last_reflected: None,
            state: RunState::Installed,
            t3: Stamp::now,
        })
    }

    /// The engine of a session handed over by the control plane: checks that
    /// the security mode and the format agree (mixed ⇒ unauthenticated test
    /// packets), builds the key schedules and remembers the sender.
    pub fn from_spec(spec: &SessionSpec) -> Result<SessionEngine, EngineError> {
        let expected = spec.security.test_security();
        if expected != spec.format.security {
            return Err(EngineError::SecurityMismatch {
                mode: spec.security,
                expected,
                format: spec.format.security,
            });
        }
        let mut e = SessionEngine::new(
            spec.format,
            spec.test_keys.as_ref(),
            spec.dscp,
            spec.rate_limit_pps,
            spec.rate_burst,
        )?;
        e.sender = Some(spec.sender);
        Ok(e)
    }

    /// Replaces the T3 clock (tests, or a path with its own time source).
    pub fn set_t3_source(&mut self, source: T3Source) {
        self.t3 = source;
    }

    /// Start-Sessions: reflect from now on. A stopping session stays stopping.
    pub fn start(&mut self) {
        if self.state == RunState::Installed {
            self.state = RunState::Started;
        }
    }

    /// Stop-Sessions: keep reflecting until `now + grace` (at most
    /// [`MAX_GRACE`]). A second stop can only shorten the grace period.
    pub fn stop(&mut self, now: Instant, grace: Duration) {
        // Instant arithmetic cannot overflow within a year.
        let deadline = now.checked_add(grace.min(MAX_GRACE)).unwrap_or(now);
        self.state = match self.state {
            RunState::Stopping { deadline: d } if d <= deadline => {
                RunState::Stopping { deadline: d }
            }
            _ => RunState::Stopping { deadline },
        };
    }

    /// The life-cycle state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Stopped and past its grace period: the session can be removed.
    pub fn is_expired(&self, now: Instant) -> bool {
        matches!(self.state, RunState::Stopping { deadline } if now >= deadline)
    }

    /// The negotiated format.
    pub fn format(&self) -> &SessionFormat {
        &self.format
    }

    /// The Type-P DSCP of replies (RFC 5357 §3.5).
    pub fn dscp(&self) -> u8 {
        self.dscp
    }

    /// The Session-Sender, if known (set by [`Self::from_spec`]).
    pub fn sender(&self) -> Option<SocketAddr> {
        self.sender
    }

    /// The Sequence Number the next reply will carry.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// The counters.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// When the last packet was reflected. Dropped packets (forged, early,
    /// late, rate-limited) do not count, so they cannot keep a session alive.
    pub fn last_reflected(&self) -> Option<Instant> {
        self.last_reflected
    }

    /// Counters and idle time for the control plane (REFWAIT, RFC 5357 §3.8).
    pub fn activity(&self, now: Instant) -> SessionActivity {
        let d = &self.counters.dropped;
        SessionActivity {
            reflected: self.counters.reflected,
            dropped: d.total(),
            drops: DropBreakdown {
                authentication: d.get(DropReason::BadHmac),
                not_started: d.get(DropReason::NotStarted),
                expired: d.get(DropReason::Expired),
                rate_limited: d.get(DropReason::RateLimited),
                wrong_source: d.get(DropReason::WrongSource),
                malformed: d.get(DropReason::TooShort)
                    + d.get(DropReason::TooLong)
                    + d.get(DropReason::BufferTooSmall),
                no_reply: d.get(DropReason::NoReplyRequested),
            },
            idle: self
                .last_reflected
                .map(|t| now.saturating_duration_since(t)),
        }
    }

    /// Counts a packet dropped before it reached the engine.
    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.dropped.count(reason);
    }

    /// Checks a packet's source against the session's sender (address and
    /// port; IPv4-mapped IPv6 equals IPv4). A mismatch is counted.
    pub fn check_source(&mut self, src: SocketAddr) -> Result<(), DropReason> {
        match self.sender {
            Some(s) if !same_endpoint(s, src) => {
                self.count_drop(DropReason::WrongSource);
                Err(DropReason::WrongSource)
            }
            _ => Ok(()),
        }
    }

    /// Reflects one test packet: `rx` is the UDP payload as received, `meta`
    /// its IP TTL and TOS, `t2` its receive stamp; the reply is written to
    /// `out[..n]`. Uses the monotonic clock for the life cycle and the rate
    /// limit; see [`Self::reflect_at`].
    pub fn reflect(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        t2: Stamp,
        clock: &ClockState,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        self.reflect_at(rx, meta, t2, clock, Instant::now(), out)
    }

    /// [`Self::reflect`] at monotonic time `now`. Every outcome is counted.
    pub fn reflect_at(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        t2: Stamp,
        clock: &ClockState,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        match self.build(rx, meta, t2, clock, now, out) {
            Ok(n) => {
                self.seq = self.seq.wrapping_add(1);
                self.bucket.take();
                self.counters.reflected = self.counters.reflected.saturating_add(1);
                self.last_reflected = Some(now);
                Ok(n)
            }
            Err(reason) => {
                self.count_drop(reason);
                Err(reason)
            }
        }
    }

    fn build(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        t2: Stamp,
        clock: &ClockState,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        match self.state {
            RunState::Installed => return Err(DropReason::NotStarted),
            RunState::Stopping { deadline } if now >= deadline => return Err(DropReason::Expired),
            _ => {}
        }
        if !self.bucket.ready(now) {
            return Err(DropReason::RateLimited);
        }
        let fmt = &self.format;
        if rx.len() < fmt.sender_header_len() {
            return Err(DropReason::TooShort);
        }
        // Decrypt a copy of the sender header: the padding after it is clear
        // (RFC 4656 §4.1.2) and is taken from `rx` by the builder.
        let mut head = [0u8; AUTH_SENDER_HEADER];
        if let Some(p) = &self.protection {
            head.copy_from_slice(rx.get(..AUTH_SENDER_HEADER).ok_or(DropReason::TooShort)?);
            p.keys
                .unprotect(PacketRole::Sender, p.mode, &mut head)
                .map_err(|_| DropReason::BadHmac)?;
        }
        let tf = fmt.timestamp_format;
        let offset = clock.tai_offset();
        let params = ReflectParams {
            seq: self.seq,
            t2: t2.to_timestamp(offset, tf).to_bytes(),
            error_estimate: clock.error_estimate(tf),
            max_len: MAX_REPLY,
        };
        let n = reflect_twamp(fmt, rx, &meta, &params, out)?;
        let reply = &mut out[..n];
        let Some(p) = &self.protection else {
            set_t3(reply, fmt, (self.t3)().to_timestamp(offset, tf).to_bytes())?;
            return Ok(n);
        };
        // The builder copied the sender fields from the protected octets:
        // replace them with the decrypted ones.
        let plain = SenderPacket::new_unchecked(&head[..], TestLayout::Authenticated);
        let mut view = ReflectorPacket::new_unchecked(&mut *reply, fmt.reflector_layout());
        view.set_sender_sequence_number(plain.sequence_number());
        view.set_sender_timestamp(plain.timestamp());
        view.set_sender_error_estimate_raw(plain.error_estimate_raw());
        // Protection cannot fail: the reply is at least the 112-octet header.
        let protect = |reply: &mut [u8]| {
            p.keys
                .protect(PacketRole::Reflector, p.mode, reply)
                .map_err(|_| DropReason::BufferTooSmall)
        };
        match p.mode {
            TestProtection::Authenticated => {
                protect(reply)?;
                set_t3(reply, fmt, (self.t3)().to_timestamp(offset, tf).to_bytes())?;
            }
            TestProtection::Encrypted => {
                set_t3(reply, fmt, (self.t3)().to_timestamp(offset, tf).to_bytes())?;
                protect(reply)?;
            }
        }
        Ok(n)
    }
}

/// Same IP address (IPv4-mapped IPv6 = IPv4) and port; flow label and scope
/// are ignored.
pub fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// The unauthenticated STAMP base length (RFC 8762 §4.2.1): from here on a
/// request is reflected as STAMP, with its TLVs in place.
const STAMP_UNAUTH_BASE: usize = StampLayout::Unauthenticated.base_len();

/// The reflection state of a stateless listener port (TWAMP Light, RFC 5357
/// Appendix I; STAMP, RFC 8762 §4.3 stateless mode).
///
/// Unauthenticated requests are reflected by length, the reply never longer
/// than the request (anti-amplification; [`ListenerSpec`]):
/// * 44 octets or more: STAMP ([`stamp::reflect_stamp`]): SSID copied,
///   octets after the 44-octet base (RFC 8972 TLVs, or TWAMP Light padding)
///   copied in place and run through the TLV framing pass;
/// * 41–43 octets: a TWAMP Light sender (STAMP packets are never shorter
///   than 44): [`reflect_twamp_light`], 41-octet header plus padding;
/// * shorter: dropped, [`DropReason::TooLong`] (the 41/44-octet reply would
///   be longer than the request), or [`DropReason::TooShort`] below 14.
///
/// Authenticated STAMP: requests of at least 112 octets whose HMAC-SHA-256
/// over octets 0–95 verifies; the reply is sealed the same way. An HMAC TLV
/// (RFC 8972 §4.8) is verified and recomputed over the reply.
///
/// T2 and T3 are NTP (RFC 8762 §4.2.1: the default, which every sender must
/// support).
#[derive(Clone)]
pub struct ListenerEngine {
    hmac: Option<StampHmac>,
    /// Requests received (whole, authenticated when keyed), answered or
    /// not: the listener-wide Direct Measurement R_RxC (RFC 8972 §4.5).
    received: u64,
    bucket: TokenBucket,
    counters: EngineCounters,
    last_reflected: Option<Instant>,
    last_reply_dscp: Option<u8>,
    t3: T3Source,
}

impl std::fmt::Debug for ListenerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerEngine")
            .field("authenticated", &self.hmac.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl ListenerEngine {
    /// A listener of `kind` limited to `rate_pps` (0 = unlimited).
    pub fn new(kind: &ListenerKind, rate_pps: u32, burst: u32) -> ListenerEngine {
        ListenerEngine {
            hmac: match kind {
                ListenerKind::Unauthenticated => None,
                ListenerKind::StampAuthenticated { key } => Some(StampHmac::new(&key[..])),
            },
            received: 0,
            bucket: TokenBucket::new(rate_pps, burst),
            counters: EngineCounters::default(),
            last_reflected: None,
            last_reply_dscp: None,
            t3: Stamp::now,
        }
    }

    /// The DSCP a Class of Service TLV asked for and the policy permitted
    /// (or the received DSCP when refused) for the last reply; `None` when
    /// it carried none (the path's default applies).
    pub fn reply_dscp(&self) -> Option<u8> {
        self.last_reply_dscp
    }

    /// The engine of a listener spec (checks its DSCP).
    pub fn from_spec(spec: &ListenerSpec) -> Result<ListenerEngine, EngineError> {
        if let Some(d) = spec.dscp {
            check_dscp(d)?;
        }
        Ok(ListenerEngine::new(
            &spec.kind,
            spec.rate_limit_pps,
            spec.rate_burst,
        ))
    }

    /// Replaces the T3 clock.
    pub fn set_t3_source(&mut self, source: T3Source) {
        self.t3 = source;
    }

    /// The counters.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// When the last packet was reflected.
    pub fn last_reflected(&self) -> Option<Instant> {
        self.last_reflected
    }

    /// Requests received (Direct Measurement R_RxC), answered or not.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Reflects one request (see the type's documentation) at the current
    /// monotonic time.
    pub fn reflect(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        t2: Stamp,
        clock: &ClockState,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        self.reflect_at(rx, meta, t2, clock, Instant::now(), out)
    }

    /// [`Self::reflect`] at monotonic time `now`. Every outcome is counted.
    /// The packet's addresses are unknown: a Location or Destination Node
    /// Address TLV is returned with U = 1.
    pub fn reflect_at(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        t2: Stamp,
        clock: &ClockState,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        self.reflect_from(rx, meta, None, t2, clock, now, out)
    }

    /// [`Self::reflect_at`] with the packet's addresses (Location,
    /// Destination Node Address and Return Path TLVs).
    #[allow(clippy::too_many_arguments)]
    pub fn reflect_from(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        addrs: Option<PacketAddrs>,
        t2: Stamp,
        clock: &ClockState,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        match self.build(rx, meta, addrs, t2, clock, now, out) {
            Ok(n) => {
                self.bucket.take();
                self.counters.reflected = self.counters.reflected.saturating_add(1);
                self.last_reflected = Some(now);
                Ok(n)
            }
            Err(reason) => {
                self.counters.dropped.count(reason);
                Err(reason)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        addrs: Option<PacketAddrs>,
        t2: Stamp,
        clock: &ClockState,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        self.last_reply_dscp = None;
        // R_RxC (RFC 8972 §4.5) counts every request received, reflected
        // or not (rate limit, "no reply"): a whole authenticated packet
        // whose HMAC verifies, or any unauthenticated one.
        if let Some(h) = &self.hmac {
            if rx.len() < StampLayout::Authenticated.base_len() {
                return Err(DropReason::TooShort);
            }
            h.verify_packet(rx).map_err(|_| DropReason::BadHmac)?;
        }
        self.received = self.received.wrapping_add(1);
        if !self.bucket.ready(now) {
            return Err(DropReason::RateLimited);
        }
        let layout = if self.hmac.is_some() {
            StampLayout::Authenticated
        } else {
            StampLayout::Unauthenticated
        };
        if self.hmac.is_none() && rx.len() < STAMP_UNAUTH_BASE {
            let offset = clock.tai_offset();
            let tf = TimeFormat::Ntp;
            let params = ReflectParams {
                seq: 0,
                t2: t2.to_timestamp(offset, tf).to_bytes(),
                error_estimate: clock.error_estimate(tf),
                max_len: rx.len(),
            };
            let fmt = SessionFormat::default();
            let n = reflect_twamp_light(&fmt, rx, &meta, &params, out)?;
            set_t3(
                &mut out[..n],
                &fmt,
                (self.t3)().to_timestamp(offset, tf).to_bytes(),
            )?;
            return Ok(n);
        }
        // Listener-wide Direct Measurement counters: this packet and this
        // reply included (R_RxC wraps like the 32-bit field).
        let rxc = self.received as u32;
        let txc = u32::try_from(self.counters.reflected)
            .unwrap_or(u32::MAX)
            .wrapping_add(1);
        let job = StampJob {
            fmt: stateless_format(layout),
            seq: 0,
            hmac: self.hmac.as_ref(),
            env: listener_env(clock, &meta, &t2, addrs, (rxc, txc), self.hmac.is_some()),
            t3: self.t3,
            max_len: rx.len(),
            verified: true,
        };
        let b = build_stamp_reply(&job, rx, meta, t2, clock, out)?;
        self.last_reply_dscp = b.out.cos.map(|c| c.reply_dscp);
        Ok(b.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        for _ in 0..3 {
            assert!(b.ready(t0));
            b.take();
        }
        assert!(!b.ready(t0));
        // 10 per second: one token every 100 ms.
        assert!(!b.ready(t0 + Duration::from_millis(99)));
        assert!(b.ready(t0 + Duration::from_millis(100)));
        b.take();
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        let mut n = 0;
        while b.ready(later) {
            b.take();
            n += 1;
        }
        assert_eq!(n, 3);
        // A zero burst still lets one packet through.
        let mut one = TokenBucket::new(5, 0);
        assert!(one.ready(t0));
        one.take();
        assert!(!one.ready(t0));
    }

    #[test]
    fn unlimited_bucket_never_limits() {
        let mut b = TokenBucket::new(0, 0);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(b.ready(t0));
            b.take();
        }
    }

    #[test]
    fn drop_reason_indices_are_distinct() {
        let mut c = DropCounts::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.count(*r);
            }
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(c.get(*r), i as u64 + 1, "{}", r.name());
        }
        assert_eq!(c.total(), (1..=DropReason::COUNT as u64).sum::<u64>());
    }

    #[test]
    fn stop_only_shortens_and_expires() {
        let mut e = SessionEngine::new(SessionFormat::default(), None, 0, 0, 0).unwrap();
        let t0 = Instant::now();
        assert_eq!(e.state(), RunState::Installed);
        e.start();
        assert_eq!(e.state(), RunState::Started);
        e.stop(t0, Duration::from_secs(5));
        e.stop(t0, Duration::from_secs(50));
        assert_eq!(
            e.state(),
            RunState::Stopping {
                deadline: t0 + Duration::from_secs(5)
            }
        );
        e.start();
        assert!(matches!(e.state(), RunState::Stopping { .. }));
        assert!(!e.is_expired(t0 + Duration::from_secs(4)));
        assert!(e.is_expired(t0 + Duration::from_secs(5)));
        // An absurd Timeout does not wrap around into "expired now".
        let mut long = SessionEngine::new(SessionFormat::default(), None, 0, 0, 0).unwrap();
        long.stop(t0, Duration::MAX);
        assert!(!long.is_expired(t0 + Duration::from_secs(86_400)));
        assert!(long.is_expired(t0 + MAX_GRACE));
    }
}
