//! STAMP reflection shared by the stateless listener
//! ([`crate::engine::ListenerEngine`]) and the stateful session
//! ([`StampSessionEngine`]): one builder, [`build_stamp_reply`], and the
//! reflector's TLV semantics, [`StampTlvs`] (RFC 8972 §4, RFC 9503 §3–§4,
//! RFC 9534 §3).
//!
//! Per reply, in order:
//! 1. authenticated: HMAC-SHA-256 over octets 0–95 verified (drop on
//!    failure), and the HMAC TLV checked (position rule: last, only Extra
//!    Padding after it; mandatory when any other TLV is present);
//! 2. [`stamp::reflect_stamp`]: base packet, TLV area copied in place;
//! 3. the TLVs: a failed HMAC TLV sets I on every TLV and nothing else is
//!    touched; otherwise each TLV is processed by [`StampTlvs`]: unknown →
//!    U = 1, malformed → M = 1 and stop, known → filled:
//!    * Location: ports and addresses of the received packet (same Length);
//!    * Timestamp Information: sync source from the host clock state, the
//!      T2 method from the receive stamp's provenance, the T3 method from
//!      the T3 stamp actually taken (patched after T3 is read);
//!    * Class of Service: DSCP2/ECN ← received; DSCP1 used for the reply if
//!      the policy permits (RP = 0), else the received DSCP (RP = 1);
//!    * Direct Measurement: the session's in-profile receive and transmit
//!      counters (this packet and this reply included);
//!    * Access Report: echoed (an unknown ID: U = 1, not acted on);
//!    * Follow-Up Telemetry: stateless → zero; stateful → the previous
//!      reply's Sequence Number, its transmit stamp as the data plane
//!      recorded it ([`StampSessionEngine::record_tx`]) and the method of
//!      that stamp; without a recorded stamp the Timestamp is zero and the
//!      mode 0 ("no stamp"), and the case is counted;
//!    * Destination Node Address: ours (the received destination) → U = 0,
//!      else U = 1;
//!    * Return Path: only "reply on the same link" (Control Code 1) or a
//!      Return Address equal to the packet's source can be honoured; else
//!      U = 1;
//!    * Micro-session ID: the configured member-link ID, else U = 1;
//! 4. T3 read as late as possible, the Timestamp Information Out method
//!    patched, a fresh HMAC TLV over the reply's Sequence Number and TLVs,
//!    T3 written, the base HMAC sealed.

use core::net::SocketAddr;
use std::time::Instant;

use ricochet_protocol::crypto::StampHmac;
use ricochet_protocol::stamp::tlv::{tlv_type, FLAG_I};
use ricochet_protocol::stamp::tlvs::{
    fill_location, reflect_class_of_service, seal_hmac_tlv, verify_hmac_tlv, AccessReport,
    ClassOfService, CosDecision, DirectMeasurement, FollowUpRepr, FollowUpTelemetry,
    LocationContext, MicroSessionId, ReturnPathRepr, SyncSource, TimestampInfo, TimestampInfoRepr,
    TimestampMethod,
};
use ricochet_protocol::stamp::{
    self, process_tlvs_in_place, ReflectorMode, StampFormat, StampLayout, TlvEntry, TlvHandler,
    TlvIter, TlvVerdict,
};
use ricochet_protocol::time::TimeFormat;
use ricochet_protocol::twamp_test::{ReflectParams, RxMeta};

use crate::clock::{ClockSource, ClockState, Stamp, StampSource};
use crate::engine::{
    check_dscp, same_endpoint, DropReason, EngineCounters, EngineError, T3Source, TokenBucket,
};
use crate::session_table::{SessionActivity, StampSessionSpec};

const SEQ_LEN: usize = 4;
const TLV_HEADER_LEN: usize = 4;

/// The RFC 8972 §4.3 Synchronization Source of the host clock, from the
/// kernel's NTP state: unsynchronized → free-running; disciplined by the
/// kernel PLL/FLL (ntpd) → NTP; PPS-disciplined → GNSS (a PPS signal comes
/// from a GNSS receiver in practice); steered from user space → PTP when a
/// PTP hardware clock is present (phc2sys), NTP otherwise (chrony,
/// timesyncd). The last two are inferences: the kernel does not say which
/// daemon steers it.
pub fn sync_source(clock: &ClockState) -> SyncSource {
    if !clock.synchronized {
        return SyncSource::FreeRunning;
    }
    match clock.source {
        ClockSource::Unsynchronized => SyncSource::FreeRunning,
        ClockSource::KernelDiscipline => SyncSource::Ntp,
        ClockSource::Pps => SyncSource::Gnss,
        ClockSource::External if clock.phc_present => SyncSource::Ptp,
        ClockSource::External => SyncSource::Ntp,
    }
}

/// The RFC 8972 §4.3 Timestamping Method of a stamp: the NIC → hardware
/// assist; the kernel's software stamp → software local; a user-space
/// clock reading → control plane (the stamp was taken by software above
/// the forwarding path, the farthest from the wire).
pub fn timestamp_method(source: StampSource) -> TimestampMethod {
    match source {
        StampSource::NicHardware => TimestampMethod::HardwareAssist,
        StampSource::KernelSoftware => TimestampMethod::SoftwareLocal,
        StampSource::UserSpace => TimestampMethod::ControlPlane,
    }
}

/// Which DSCPs a Class of Service TLV may ask for (RFC 8972 §4.4 "local
/// policy"): bit n set = DSCP n permitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CosPolicy(pub u64);

impl CosPolicy {
    /// Every DSCP permitted.
    pub const ALLOW_ALL: CosPolicy = CosPolicy(u64::MAX);
    /// None permitted: the reply keeps the received DSCP, RP = 1.
    pub const DENY_ALL: CosPolicy = CosPolicy(0);

    /// Whether `dscp` may be used.
    pub fn permits(self, dscp: u8) -> bool {
        dscp < 64 && self.0 & (1 << dscp) != 0
    }
}

impl Default for CosPolicy {
    fn default() -> Self {
        CosPolicy::ALLOW_ALL
    }
}

/// Addresses of a received packet, as far as the path knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketAddrs {
    /// The sender.
    pub src: SocketAddr,
    /// The address and port it was sent to (our address), if known.
    pub dst: Option<SocketAddr>,
    /// The source MAC of the frame, if the path sees it.
    pub src_mac: Option<[u8; 6]>,
}

/// Everything the TLV handler needs about this packet and its session.
#[derive(Debug, Clone, Copy)]
pub struct TlvEnv {
    /// Host clock sync source.
    pub sync: SyncSource,
    /// How T2 was taken.
    pub t2_method: TimestampMethod,
    /// Expected T3 method (patched with the real one after T3 is read).
    pub t3_method: TimestampMethod,
    /// Received TOS / Traffic Class.
    pub rx_tos: u8,
    /// Received addresses.
    pub addrs: Option<PacketAddrs>,
    /// Direct Measurement: (R_RxC, R_TxC) including this packet and reply.
    pub counters: (u32, u32),
    /// Follow-Up Telemetry value (zero for a stateless reflector).
    pub follow_up: FollowUpRepr,
    /// The reflector holds an HMAC key (HMAC TLV recognised).
    pub hmac: bool,
    /// Class of Service policy.
    pub cos: CosPolicy,
    /// RFC 9534 reflector member-link ID.
    pub micro_session_id: Option<u16>,
}

/// What the handler did that the caller must act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlvOutcome {
    /// A Class of Service TLV was processed: the reply's DSCP.
    pub cos: Option<CosDecision>,
    /// Offset (in the TLV area) of the Timestamp Information value.
    pub ts_info_at: Option<usize>,
    /// A Follow-Up Telemetry TLV was filled.
    pub follow_up_filled: bool,
    /// The Return Path TLV asked for no reply (RFC 9503 §4.1.1, Control
    /// Code 0): the packet is processed and counted, nothing is sent.
    pub no_reply: bool,
}

/// The reflector's per-type TLV semantics (module docs).
#[derive(Debug)]
pub struct StampTlvs<'a> {
    env: &'a TlvEnv,
    /// Outcome, read after the pass.
    pub out: TlvOutcome,
    return_path_seen: bool,
}

impl<'a> StampTlvs<'a> {
    /// A handler for one packet.
    pub fn new(env: &'a TlvEnv) -> Self {
        StampTlvs {
            env,
            out: TlvOutcome::default(),
            return_path_seen: false,
        }
    }
}

impl TlvHandler for StampTlvs<'_> {
    fn recognises(&self, t: u8) -> bool {
        (tlv_type::EXTRA_PADDING..=tlv_type::MICRO_SESSION_ID).contains(&t)
            && (t != tlv_type::HMAC || self.env.hmac)
    }

    fn process(&mut self, entry: &TlvEntry, value: &mut [u8]) -> TlvVerdict {
        let env = self.env;
        match entry.tlv_type {
            tlv_type::EXTRA_PADDING | tlv_type::HMAC => TlvVerdict::Processed,
            tlv_type::LOCATION => {
                let Some(a) = env.addrs else {
                    return TlvVerdict::Unrecognized;
                };
                let Some(dst) = a.dst else {
                    return TlvVerdict::Unrecognized;
                };
                let ctx = LocationContext {
                    source: a.src,
                    destination: dst,
                    source_mac: a.src_mac,
                };
                match fill_location(value, &ctx) {
                    Ok(()) => TlvVerdict::Processed,
                    Err(_) => TlvVerdict::Malformed,
                }
            }
            tlv_type::TIMESTAMP_INFORMATION => {
                let Ok(mut v) = TimestampInfo::new_checked(value) else {
                    return TlvVerdict::Malformed;
                };
                TimestampInfoRepr {
                    sync_in: env.sync,
                    method_in: env.t2_method,
                    sync_out: env.sync,
                    method_out: env.t3_method,
                }
                .emit(&mut v);
                self.out.ts_info_at = Some(entry.offset + TLV_HEADER_LEN);
                TlvVerdict::Processed
            }
            tlv_type::CLASS_OF_SERVICE => {
                let Ok(mut v) = ClassOfService::new_checked(value) else {
                    return TlvVerdict::Malformed;
                };
                let policy = env.cos;
                self.out.cos = Some(reflect_class_of_service(&mut v, env.rx_tos, |d| {
                    policy.permits(d)
                }));
                TlvVerdict::Processed
            }
            tlv_type::DIRECT_MEASUREMENT => {
                let Ok(mut v) = DirectMeasurement::new_checked(value) else {
                    return TlvVerdict::Malformed;
                };
                v.set_reflector_counters(env.counters.0, env.counters.1);
                TlvVerdict::Processed
            }
            tlv_type::ACCESS_REPORT => match AccessReport::new_checked(&*value) {
                Ok(v) if v.id_valid() => TlvVerdict::Processed,
                Ok(_) => TlvVerdict::Unrecognized,
                Err(_) => TlvVerdict::Malformed,
            },
            tlv_type::FOLLOW_UP_TELEMETRY => {
                let Ok(mut v) = FollowUpTelemetry::new_checked(value) else {
                    return TlvVerdict::Malformed;
                };
                env.follow_up.emit(&mut v);
                self.out.follow_up_filled = true;
                TlvVerdict::Processed
            }
            tlv_type::DESTINATION_NODE_ADDRESS => {
                let ours = env.addrs.and_then(|a| a.dst).map(|d| d.ip().to_canonical());
                match ricochet_protocol::stamp::tlvs::destination_node_address(value) {
                    Ok(ip) if Some(ip.to_canonical()) == ours => TlvVerdict::Processed,
                    Ok(_) => TlvVerdict::Unrecognized,
                    Err(_) => TlvVerdict::Malformed,
                }
            }
            tlv_type::RETURN_PATH => {
                // RFC 9503 §4: only the first Return Path TLV is processed.
                if self.return_path_seen {
                    return TlvVerdict::Unrecognized;
                }
                self.return_path_seen = true;
                let src = env.addrs.map(|a| a.src.ip().to_canonical());
                match ReturnPathRepr::parse(value) {
                    // RFC 9503 §4.1.1: Control Code flags with the Reply
                    // Request bit (the least significant) clear = "No Reply
                    // Requested" (one-way measurement): understood, and the
                    // caller sends nothing (stamp.md §5). Other flag bits
                    // are MBZ: a value with any of them set is not ours to
                    // interpret (U = 1, reply sent as for code 1 unknown).
                    Ok(r) if r.control_code == Some(0) => {
                        self.out.no_reply = true;
                        TlvVerdict::Processed
                    }
                    Ok(r) => {
                        let same_link = r.control_code == Some(1);
                        let to_source = r.control_code.is_none()
                            && r.sr_mpls_labels == 0
                            && r.srv6_segments == 0
                            && r.unknown_sub_tlvs == 0
                            && r.return_address.map(|a| a.to_canonical()) == src
                            && src.is_some();
                        if same_link || to_source {
                            TlvVerdict::Processed
                        } else {
                            TlvVerdict::Unrecognized
                        }
                    }
                    Err(_) => TlvVerdict::Malformed,
                }
            }
            tlv_type::MICRO_SESSION_ID => {
                match (MicroSessionId::new_checked(value), env.micro_session_id) {
                    (Ok(mut v), Some(id)) => {
                        v.set_reflector_id(id);
                        TlvVerdict::Processed
                    }
                    (Ok(_), None) => TlvVerdict::Unrecognized,
                    (Err(_), _) => TlvVerdict::Malformed,
                }
            }
            _ => TlvVerdict::Unrecognized,
        }
    }
}

/// The outcome of checking the HMAC TLV of an authenticated request.
pub(crate) enum TlvIntegrity {
    /// No TLV needing protection, or an HMAC TLV that verified (at this
    /// offset of the TLV area).
    Verified { hmac_at: Option<usize> },
    /// The HMAC TLV failed, is misplaced, or is missing although other TLVs
    /// than Extra Padding are present (stamp.md §4, type 8).
    Failed,
}

/// Checks the HMAC TLV of a request's TLV area (position rule, coverage:
/// RFC 8972 §4.8, [`verify_hmac_tlv`]).
pub(crate) fn tlv_integrity(
    hmac: &StampHmac,
    seq: &[u8],
    area: &[u8],
    required: bool,
) -> TlvIntegrity {
    match verify_hmac_tlv(hmac, seq, area, required) {
        Ok(hmac_at) => TlvIntegrity::Verified { hmac_at },
        Err(_) => TlvIntegrity::Failed,
    }
}

/// Sets I = 1 on every TLV of a reply area (RFC 8972 §4.8: the HMAC TLV
/// failed; no further processing).
pub(crate) fn flag_integrity_failure(area: &mut [u8]) {
    let mut pos = 0;
    while let Some(Ok(tlv)) = TlvIter::new(area.get(pos..).unwrap_or(&[])).next() {
        let total = tlv.total_len();
        area[pos] |= FLAG_I;
        pos += total;
    }
}

/// One STAMP reply to build.
pub(crate) struct StampJob<'a> {
    pub fmt: StampFormat,
    /// The reply's Sequence Number (stateful) — ignored when stateless.
    pub seq: u32,
    pub hmac: Option<&'a StampHmac>,
    pub env: TlvEnv,
    pub t3: T3Source,
    /// The largest reply allowed.
    pub max_len: usize,
    /// The caller already verified the base packet's HMAC (authenticated
    /// layout): not done twice.
    pub verified: bool,
}

/// What [`build_stamp_reply`] produced.
pub(crate) struct Built {
    pub len: usize,
    pub out: TlvOutcome,
    pub t3: Stamp,
}

/// Builds a STAMP reply (module docs, steps 1–4). The request must hold a
/// whole base packet.
pub(crate) fn build_stamp_reply(
    job: &StampJob<'_>,
    rx: &[u8],
    meta: RxMeta,
    t2: Stamp,
    clock: &ClockState,
    out: &mut [u8],
) -> Result<Built, DropReason> {
    let fmt = &job.fmt;
    let base = fmt.base_len();
    if rx.len() < base {
        return Err(DropReason::TooShort);
    }
    // An all-zero remainder after the base packet is padding, not a chain
    // of TLVs: Type 0 is Reserved in the STAMP TLV registry (RFC 8972
    // §5.1, stamp.md §4 table), so no RFC 8972 sender emits it, while a
    // TWAMP Light sender (RFC 5357 Appendix I, which an unauthenticated
    // STAMP reflector serves, RFC 8762 §4.6) and an RFC 8762 sender
    // without extensions pad with zeros (stamp.md §2.1: "a TWAMP Light
    // reflector sees them as padding"). RFC 8972 §4's "longer than the
    // base ⇒ TLVs" rule, read literally, would set U on every 4 octets
    // and M on a short tail, corrupting the sender's padding; it is
    // returned unchanged instead (symmetric size, RFC 8762 §4.3).
    let padding_only = rx.len() > base && rx[base..].iter().all(|&b| b == 0);
    let integrity = match job.hmac {
        Some(h) => {
            if fmt.layout == StampLayout::Authenticated && !job.verified {
                h.verify_packet(rx).map_err(|_| DropReason::BadHmac)?;
            }
            if padding_only {
                TlvIntegrity::Verified { hmac_at: None }
            } else {
                tlv_integrity(
                    h,
                    &rx[..SEQ_LEN],
                    &rx[base..],
                    fmt.layout == StampLayout::Authenticated,
                )
            }
        }
        None => TlvIntegrity::Verified { hmac_at: None },
    };
    let offset = clock.tai_offset();
    let tf = fmt.timestamp_format;
    let params = ReflectParams {
        seq: job.seq,
        t2: t2.to_timestamp(offset, tf).to_bytes(),
        error_estimate: clock.error_estimate(tf),
        max_len: job.max_len,
    };
    let n = stamp::reflect_stamp(fmt, rx, &meta, &params, out)?;
    let (head, tlvs) = out[..n].split_at_mut(base);
    let mut handler = StampTlvs::new(&job.env);
    let hmac_at = match integrity {
        TlvIntegrity::Failed => {
            flag_integrity_failure(tlvs);
            None
        }
        TlvIntegrity::Verified { hmac_at } => {
            if !padding_only {
                process_tlvs_in_place(tlvs, &mut handler);
            }
            hmac_at
        }
    };
    let outcome = handler.out;
    if outcome.no_reply {
        return Err(DropReason::NoReplyRequested);
    }
    // T3 as late as possible; what follows only covers TLVs and the base.
    let t3 = (job.t3)();
    if let Some(at) = outcome.ts_info_at {
        if let Some(m) = tlvs.get_mut(at + 3) {
            *m = timestamp_method(t3.source).to_u8();
        }
    }
    if let (Some(h), Some(at)) = (job.hmac, hmac_at) {
        // A fresh HMAC over the reply's Sequence Number and the TLVs as
        // reflected (stamp.md §4, type 8). The TLV is there: the reply has
        // the request's length.
        let _ = seal_hmac_tlv(h, &head[..SEQ_LEN], tlvs, at);
    }
    stamp::set_t3(head, fmt, t3.to_timestamp(offset, tf).to_bytes())?;
    if fmt.layout == StampLayout::Authenticated {
        if let Some(h) = job.hmac {
            h.seal_packet(head)
                .map_err(|_| DropReason::BufferTooSmall)?;
        }
    }
    Ok(Built {
        len: n,
        out: outcome,
        t3,
    })
}

/// The previous reflected packet of a stateful session, for Follow-Up
/// Telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousReply {
    /// Its Sequence Number.
    pub seq: u32,
    /// The in-packet T3 (a user-space reading before transmit).
    pub t3: Stamp,
    /// Its transmit stamp, once the data plane recorded one.
    pub tx: Option<Stamp>,
}

/// Counters specific to a stateful STAMP session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StampCounters {
    /// Follow-Up Telemetry filled with a transmit stamp.
    pub follow_up_stamped: u64,
    /// Follow-Up Telemetry filled without one (the path delivered no
    /// transmit stamp for the previous reply: Timestamp zero, mode 0).
    pub follow_up_unstamped: u64,
    /// Transmit stamps recorded for a reply that was no longer the last.
    pub tx_stamps_late: u64,
    /// Packets on the session's port that matched no session (SSID or
    /// source), discarded (RFC 8972 §3).
    pub unmatched: u64,
}

/// A provisioned stateful STAMP session (RFC 8762 §4.3 stateful mode,
/// RFC 8972 §3 SSID): own Sequence Number from 0, keyed by SSID and the
/// sender's address and port, unauthenticated or authenticated
/// (HMAC-SHA-256), NTP or PTP timestamps.
#[derive(Clone)]
pub struct StampSessionEngine {
    fmt: StampFormat,
    ssid: u16,
    sender: SocketAddr,
    hmac: Option<StampHmac>,
    dscp: Option<u8>,
    cos: CosPolicy,
    micro_session_id: Option<u16>,
    seq: u32,
    /// Test packets received (matching, whole, authenticated when keyed),
    /// reflected or not: the Direct Measurement R_RxC.
    received: u32,
    bucket: TokenBucket,
    counters: EngineCounters,
    stamp_counters: StampCounters,
    last_reflected: Option<Instant>,
    previous: Option<PreviousReply>,
    last_reply_dscp: Option<u8>,
    t3: T3Source,
    /// The caller's mark for the pass that built the last reply (the
    /// socket path's batch passes); 0 = none.
    pass_mark: u64,
}

impl std::fmt::Debug for StampSessionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampSessionEngine")
            .field("fmt", &self.fmt)
            .field("ssid", &self.ssid)
            .field("sender", &self.sender)
            .field("authenticated", &self.hmac.is_some())
            .field("seq", &self.seq)
            .field("counters", &self.counters)
            .field("stamp_counters", &self.stamp_counters)
            .finish_non_exhaustive()
    }
}

impl StampSessionEngine {
    /// The engine of a provisioned session.
    pub fn from_spec(spec: &StampSessionSpec) -> Result<StampSessionEngine, EngineError> {
        if let Some(d) = spec.dscp {
            check_dscp(d)?;
        }
        Ok(StampSessionEngine {
            fmt: StampFormat {
                layout: if spec.key.is_some() {
                    StampLayout::Authenticated
                } else {
                    StampLayout::Unauthenticated
                },
                mode: ReflectorMode::Stateful,
                timestamp_format: spec.timestamp_format,
            },
            ssid: spec.ssid,
            sender: spec.sender,
            hmac: spec.key.as_ref().map(|k| StampHmac::new(&k[..])),
            dscp: spec.dscp,
            cos: spec.cos_policy,
            micro_session_id: spec.micro_session_id,
            seq: 0,
            received: 0,
            bucket: TokenBucket::new(spec.rate_limit_pps, spec.rate_burst),
            counters: EngineCounters::default(),
            stamp_counters: StampCounters::default(),
            last_reflected: None,
            previous: None,
            last_reply_dscp: None,
            t3: Stamp::now,
            pass_mark: 0,
        })
    }

    /// Records which of the caller's passes built the last reply (the
    /// socket path defers a packet whose session was answered in the same
    /// pass: that reply is not sent yet, so its transmit stamp cannot be
    /// the next Follow-Up).
    pub fn set_pass_mark(&mut self, mark: u64) {
        self.pass_mark = mark;
    }

    /// The mark [`Self::set_pass_mark`] recorded.
    pub fn pass_mark(&self) -> u64 {
        self.pass_mark
    }

    /// Replaces the T3 clock.
    pub fn set_t3_source(&mut self, source: T3Source) {
        self.t3 = source;
    }

    /// Whether a packet from `src` carrying SSID `ssid` belongs here
    /// (RFC 8972 §3: SSID and the 4-tuple; the local half is the port the
    /// caller received it on).
    pub fn matches(&self, src: SocketAddr, payload: &[u8]) -> bool {
        let at = self.fmt.layout.ssid_offset();
        let ssid = payload
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        same_endpoint(self.sender, src) && ssid == Some(self.ssid)
    }

    /// Whether `reply` (a reply payload this session may have built)
    /// carries the session's SSID at its layout's offset.
    pub fn reply_matches(&self, reply: &[u8]) -> bool {
        let at = self.fmt.layout.ssid_offset();
        reply.len() >= self.fmt.base_len()
            && reply.get(at..at + 2) == Some(&self.ssid.to_be_bytes()[..])
    }

    /// The session's format.
    pub fn format(&self) -> &StampFormat {
        &self.fmt
    }

    /// The SSID.
    pub fn ssid(&self) -> u16 {
        self.ssid
    }

    /// The sender.
    pub fn sender(&self) -> SocketAddr {
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

    /// The STAMP-specific counters.
    pub fn stamp_counters(&self) -> StampCounters {
        self.stamp_counters
    }

    /// Counts a packet on the port that matched no session.
    pub fn count_unmatched(&mut self) {
        self.stamp_counters.unmatched = self.stamp_counters.unmatched.saturating_add(1);
    }

    /// The session's test packets received so far (Direct Measurement
    /// R_RxC, RFC 8972 §4.5), reflected or not.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// The previous reply, as Follow-Up Telemetry will report it.
    pub fn previous(&self) -> Option<PreviousReply> {
        self.previous
    }

    /// The DSCP the last reply must be sent with: a Class of Service
    /// decision, else the configured DSCP; `None` = the path's default.
    pub fn reply_dscp(&self) -> Option<u8> {
        self.last_reply_dscp
    }

    /// Records the transmit stamp of reply `seq` (AF_XDP completion
    /// metadata, `SO_TIMESTAMPING` TX). Ignored unless `seq` is the last
    /// reply (a late stamp is counted).
    pub fn record_tx(&mut self, seq: u32, tx: Stamp) {
        match &mut self.previous {
            Some(p) if p.seq == seq => p.tx = Some(tx),
            _ => {
                self.stamp_counters.tx_stamps_late =
                    self.stamp_counters.tx_stamps_late.saturating_add(1)
            }
        }
    }

    /// Activity for the control plane.
    pub fn activity(&self, now: Instant) -> SessionActivity {
        let d = &self.counters.dropped;
        SessionActivity {
            reflected: self.counters.reflected,
            dropped: d.total(),
            drops: crate::session_table::DropBreakdown {
                authentication: d.get(DropReason::BadHmac),
                rate_limited: d.get(DropReason::RateLimited),
                wrong_source: d.get(DropReason::WrongSource),
                malformed: d.get(DropReason::TooShort)
                    + d.get(DropReason::TooLong)
                    + d.get(DropReason::BufferTooSmall),
                no_reply: d.get(DropReason::NoReplyRequested),
                ..Default::default()
            },
            idle: self
                .last_reflected
                .map(|t| now.saturating_duration_since(t)),
        }
    }

    /// Counts a packet of the session that a rate limit outside the
    /// engine refused (the XDP token bucket on the BPF data plane): one of
    /// the session's packets (SSID, whole base packet, HMAC when keyed) is
    /// received (R_RxC) and dropped as rate limited; anything else is
    /// counted as unmatched. The sender was checked by the caller.
    pub fn count_refused(&mut self, rx: &[u8]) {
        let at = self.fmt.layout.ssid_offset();
        let ours = rx.len() >= self.fmt.base_len()
            && rx.get(at..at + 2) == Some(&self.ssid.to_be_bytes()[..])
            && self
                .hmac
                .as_ref()
                .is_none_or(|h| h.verify_packet(rx).is_ok());
        if ours {
            self.received = self.received.wrapping_add(1);
            self.counters.dropped.count(DropReason::RateLimited);
        } else {
            self.count_unmatched();
        }
    }

    /// Reflects one packet of this session at monotonic time `now`.
    /// The caller has matched it ([`Self::matches`]); `addrs` are its
    /// addresses (Location, Destination Node Address).
    #[allow(clippy::too_many_arguments)]
    pub fn reflect_at(
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
        // RFC 8972 §4.5: R_RxC counts the session's test packets the
        // reflector received, whether or not it then reflects them (rate
        // limit, "no reply" Return Path). A packet is one of the session's
        // once it is a whole base packet and, authenticated, its HMAC
        // verifies (a forgery is not the sender's packet).
        if rx.len() < self.fmt.base_len() {
            self.counters.dropped.count(DropReason::TooShort);
            return Err(DropReason::TooShort);
        }
        if let Some(h) = &self.hmac {
            if h.verify_packet(rx).is_err() {
                self.counters.dropped.count(DropReason::BadHmac);
                return Err(DropReason::BadHmac);
            }
        }
        self.received = self.received.wrapping_add(1);
        if !self.bucket.ready(now) {
            self.counters.dropped.count(DropReason::RateLimited);
            return Err(DropReason::RateLimited);
        }
        let tf = self.fmt.timestamp_format;
        let offset = clock.tai_offset();
        let follow_up = match self.previous {
            None => FollowUpRepr::ZERO,
            Some(p) => match p.tx {
                Some(tx) => FollowUpRepr {
                    sequence_number: p.seq,
                    timestamp: tx.to_timestamp(offset, tf).to_bytes(),
                    mode: timestamp_method(tx.source),
                },
                None => FollowUpRepr {
                    sequence_number: p.seq,
                    timestamp: [0; 8],
                    mode: TimestampMethod::Other(0),
                },
            },
        };
        let job = StampJob {
            fmt: self.fmt,
            seq: self.seq,
            hmac: self.hmac.as_ref(),
            env: TlvEnv {
                sync: sync_source(clock),
                t2_method: timestamp_method(t2.source),
                t3_method: timestamp_method(StampSource::UserSpace),
                rx_tos: meta.tos,
                addrs,
                counters: (
                    self.received,
                    u32::try_from(self.counters.reflected)
                        .unwrap_or(u32::MAX)
                        .wrapping_add(1),
                ),
                follow_up,
                hmac: self.hmac.is_some(),
                cos: self.cos,
                micro_session_id: self.micro_session_id,
            },
            t3: self.t3,
            max_len: rx.len(),
            verified: true,
        };
        match build_stamp_reply(&job, rx, meta, t2, clock, out) {
            Ok(b) => {
                if b.out.follow_up_filled {
                    match self.previous {
                        Some(PreviousReply { tx: Some(_), .. }) => {
                            self.stamp_counters.follow_up_stamped += 1
                        }
                        Some(PreviousReply { tx: None, .. }) => {
                            self.stamp_counters.follow_up_unstamped += 1
                        }
                        None => {}
                    }
                }
                self.previous = Some(PreviousReply {
                    seq: self.seq,
                    t3: b.t3,
                    tx: None,
                });
                self.seq = self.seq.wrapping_add(1);
                self.bucket.take();
                self.counters.reflected = self.counters.reflected.saturating_add(1);
                self.last_reflected = Some(now);
                self.last_reply_dscp = b.out.cos.map(|c| c.reply_dscp).or(self.dscp);
                Ok(b.len)
            }
            Err(r) => {
                self.counters.dropped.count(r);
                Err(r)
            }
        }
    }
}

/// [`TlvEnv`] of a stateless listener (Follow-Up zeroed, listener-wide
/// counters, received addresses when the path gives them).
pub(crate) fn listener_env(
    clock: &ClockState,
    meta: &RxMeta,
    t2: &Stamp,
    addrs: Option<PacketAddrs>,
    counters: (u32, u32),
    hmac: bool,
) -> TlvEnv {
    TlvEnv {
        sync: sync_source(clock),
        t2_method: timestamp_method(t2.source),
        t3_method: timestamp_method(StampSource::UserSpace),
        rx_tos: meta.tos,
        addrs,
        counters,
        follow_up: FollowUpRepr::ZERO,
        hmac,
        cos: CosPolicy::ALLOW_ALL,
        micro_session_id: None,
    }
}

/// The NTP format every listener uses (RFC 8762 §4.2.1 default).
pub(crate) fn stateless_format(layout: StampLayout) -> StampFormat {
    StampFormat {
        layout,
        mode: ReflectorMode::Stateless,
        timestamp_format: TimeFormat::Ntp,
    }
}
