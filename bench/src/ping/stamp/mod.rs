//! `ricochet-ping --stamp`: a STAMP Session-Sender (RFC 8762) with the
//! RFC 8972 TLVs, the RFC 9503 / RFC 9534 TLVs and the RFC 8972 SSID. There
//! is no control protocol: the session (address, port, mode, SSID, key) is
//! configured on both ends out of band.
//!
//! * [`tlvs`] — `--tlv` specs, the request's TLV area, reading replies;
//! * [`report`] — text, JSON and raw output.
//!
//! What the sender checks in every reply, before using it: the source is the
//! reflector; the datagram holds the 44/112-octet base (nothing is read
//! beyond what arrived); the base HMAC-SHA-256 (authenticated mode); the
//! SSID; the Session-Sender Sequence Number is one we sent; the Error
//! Estimate; the HMAC TLV over the reflector's Sequence Number and the
//! reflected TLVs when we sent one. Each failure is counted by reason.
//!
//! Follow-Up Telemetry (RFC 8972 §4.7) is paired with the reply it speaks
//! of through the reflector's Sequence Number: (Follow-Up Timestamp − the T3
//! that reply carried) is the reflector's own account of how late its
//! in-packet T3 was, the quantity issue 8 asks the lab to measure.

pub mod report;
pub mod tlvs;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use ricochet_protocol::crypto::StampHmac;
use ricochet_protocol::stamp::{
    ReflectorPacket, ReflectorRepr, SenderPacket, SenderRepr, StampLayout,
};
use ricochet_protocol::time::{ErrorEstimate, NtpTimestamp, PtpTimestamp, TaiOffset, TimeFormat};
use ricochet_protocol::twamp_test::decode_timestamp;
use ricochet_reflector::clock::{now_tai_ns, now_utc_ns, Stamp, UNSYNCHRONIZED_ERROR_NS};
use ricochet_reflector::socket::{
    tos_from_dscp, BatchConfig, BatchSocket, RxBatch, RxError, RxTimestamping, SocketOptions,
    TxBatch, TxMeta, MAX_DATAGRAM,
};
use serde::Serialize;
use zeroize::Zeroizing;

use super::cli::{parse_target, resolve, Args, Family};
use super::session::StampSources;
use super::{ClockReport, PingError};
use crate::pace::{wait_until, Pacer, Schedule, SPIN_THRESHOLD};
use crate::stats::{Collector, Distribution, Reply, SignedHistogram, Summary};
use tlvs::{ReplyTlvs, TlvSpec};

/// The IANA port of STAMP (RFC 8762 §4.1), shared with TWAMP-Control.
pub const DEFAULT_PORT: u16 = 862;

const SEND_BATCH: usize = 32;
const RECV_BATCH: usize = 64;
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(100);
const START_LEAD: Duration = Duration::from_millis(5);
/// Histogram range of the Follow-Up difference: ±60 s.
const RANGE_NS: u64 = 60_000_000_000;

/// Base packet sizes (RFC 8762 §4.2).
fn base_len(layout: StampLayout) -> usize {
    layout.base_len()
}

/// STAMP options of `ricochet-ping` (flattened into [`Args`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StampArgs {
    /// Send STAMP (RFC 8762/8972) to a session-reflector at HOST[:PORT]
    /// (default 862) instead of running TWAMP-Control: no set-up, the
    /// session is configured on both ends.
    #[arg(long, conflicts_with_all = ["modes", "key_id", "key_file", "sessions", "isc",
        "reflect_octets", "symmetrical", "dscp_ecn", "padding", "ikev2_key_file", "ike"])]
    pub stamp: bool,

    /// STAMP mode: open (44-octet base packets) or auth (112 octets,
    /// HMAC-SHA-256). Default: auth when --stamp-key-file is given.
    #[arg(long, requires = "stamp", value_enum)]
    pub stamp_mode: Option<StampModeArg>,

    /// File with the STAMP HMAC-SHA-256 key in hex (as configured on the
    /// reflector; whitespace ignored; chmod 600). Used for authenticated
    /// mode and for the HMAC TLV.
    #[arg(long, requires = "stamp", value_name = "FILE")]
    pub stamp_key_file: Option<PathBuf>,

    /// Session-Sender Identifier (RFC 8972 §3), 1-65535; replies with
    /// another SSID are not used.
    #[arg(long, requires = "stamp", value_parser = clap::value_parser!(u16).range(1..))]
    pub ssid: Option<u16>,

    /// A TLV to send in every packet (repeat for several, in order):
    /// extra-padding=N, location, timestamp-info, cos=DSCP1[:ECN],
    /// direct-measurement, access-report[=ID:RC], follow-up, hmac,
    /// destination-node=ADDR, return-path=PART[+PART] (no-reply, same-link,
    /// cc:N, addr:IP, labels:L/L, srv6:SID/SID), micro-session=ID,
    /// raw=TYPE[:HEX]. The ECN of cos= marks our own packets.
    #[arg(long = "tlv", requires = "stamp", value_name = "TLV", value_parser = tlvs::parse_tlv)]
    pub tlvs: Vec<TlvSpec>,

    /// How the reflector numbers its replies: auto (stateful once its
    /// Sequence Numbers differ from ours or it fills Follow-Up Telemetry),
    /// stateful (loss split into forward and backward), stateless.
    #[arg(long, requires = "stamp", value_enum, default_value = "auto")]
    pub reflector_mode: ReflectorModeArg,
}

/// `--stamp-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StampModeArg {
    /// Unauthenticated (RFC 8762 §4.2.1).
    #[value(alias = "unauthenticated")]
    Open,
    /// Authenticated, HMAC-SHA-256 (RFC 8762 §4.2.2).
    #[value(alias = "authenticated")]
    Auth,
}

/// `--reflector-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReflectorModeArg {
    #[default]
    Auto,
    Stateful,
    Stateless,
}

/// One STAMP run, fully resolved.
#[derive(Clone)]
pub struct StampConfig {
    pub target: SocketAddr,
    pub count: u32,
    pub schedule: Schedule,
    /// DSCP and ECN of our test packets.
    pub dscp: u8,
    pub ecn: u8,
    /// T1 in PTPv2 format.
    pub ptp: bool,
    pub timeout: Duration,
    /// Local UDP port (0: any).
    pub sender_port: u16,
    pub layout: StampLayout,
    pub key: Option<Zeroizing<Vec<u8>>>,
    /// 0: no SSID.
    pub ssid: u16,
    pub tlvs: Vec<TlvSpec>,
    pub zero_padding: bool,
    pub reflector_mode: ReflectorModeArg,
    pub record_packets: bool,
}

impl std::fmt::Debug for StampConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampConfig")
            .field("target", &self.target)
            .field("count", &self.count)
            .field("layout", &self.layout)
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .field("ssid", &self.ssid)
            .field("tlvs", &self.tlvs)
            .finish_non_exhaustive()
    }
}

/// Reads a hex key file: whitespace ignored, at least 16 octets. Returns a
/// warning when group or others can read it.
pub fn load_stamp_key(path: &Path) -> Result<(Zeroizing<Vec<u8>>, Option<String>), PingError> {
    let err = |why: String| PingError::KeyFile {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let warning = {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "key file {} has mode {:03o}: group or others can read the key (chmod 600 it)",
                path.display(),
                mode & 0o777
            )
        })
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    let digits: Zeroizing<Vec<u8>> =
        Zeroizing::new(text.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
    if digits.len() % 2 != 0 || !digits.iter().all(u8::is_ascii_hexdigit) {
        // Never echo the content: it is a secret.
        return Err(err(
            "not a hex key (expected hex digits only, e.g. 64 for 32 octets)".into(),
        ));
    }
    let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    let key: Zeroizing<Vec<u8>> = Zeroizing::new(
        digits
            .chunks(2)
            .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
            .collect(),
    );
    if key.len() < 16 {
        return Err(err(format!(
            "the key has {} octets; use at least 16 (32 recommended)",
            key.len()
        )));
    }
    Ok((key, warning))
}

/// The STAMP configuration of parsed arguments (resolves the target, loads
/// the key). Warnings are returned for the caller to print.
pub fn stamp_config(a: &Args) -> Result<(StampConfig, Vec<String>), PingError> {
    let target = parse_target(&a.target).map_err(PingError::Usage)?;
    let family = match (a.ipv4, a.ipv6) {
        (true, _) => Family::V4,
        (_, true) => Family::V6,
        _ => Family::Any,
    };
    let server = resolve(&target, family)?;
    let s = &a.stamp;
    let mut warnings = Vec::new();
    let key = match &s.stamp_key_file {
        Some(p) => {
            let (k, w) = load_stamp_key(p)?;
            warnings.extend(w);
            Some(k)
        }
        None => None,
    };
    let layout = match (s.stamp_mode, &key) {
        (Some(StampModeArg::Auth), None) => {
            return Err(PingError::Usage(
                "--stamp-mode auth needs --stamp-key-file".into(),
            ))
        }
        (Some(StampModeArg::Auth), Some(_)) | (None, Some(_)) => StampLayout::Authenticated,
        _ => StampLayout::Unauthenticated,
    };
    if s.tlvs.contains(&TlvSpec::Hmac) && key.is_none() {
        return Err(PingError::Usage(
            "--tlv hmac needs the key: give --stamp-key-file".into(),
        ));
    }
    if s.tlvs
        .iter()
        .any(|t| matches!(t, TlvSpec::DestinationNode(_)))
        && s.ssid.is_none()
    {
        return Err(PingError::Usage(
            "--tlv destination-node needs --ssid (RFC 9503 §3)".into(),
        ));
    }
    if s.tlvs.iter().filter(|t| **t == TlvSpec::FollowUp).count() > 1 {
        return Err(PingError::Usage("--tlv follow-up given twice".into()));
    }
    let ecn = s
        .tlvs
        .iter()
        .find_map(|t| match t {
            TlvSpec::Cos { ecn, .. } => Some(*ecn),
            _ => None,
        })
        .unwrap_or(0);
    let schedule = if a.exponential {
        Schedule::Exponential {
            mean: a.interval,
            seed: a.seed.unwrap_or_else(rand::random),
        }
    } else {
        Schedule::Fixed(a.interval)
    };
    Ok((
        StampConfig {
            target: server,
            count: a.count,
            schedule,
            dscp: a.dscp,
            ecn,
            ptp: a.ptp,
            timeout: a.timeout,
            sender_port: a.sender_port,
            layout,
            key,
            ssid: s.ssid.unwrap_or(0),
            tlvs: s.tlvs.clone(),
            zero_padding: a.zero_padding,
            reflector_mode: s.reflector_mode,
            record_packets: a.verbose > 0 || a.raw,
        },
        warnings,
    ))
}

/// Why a STAMP reply (or datagram) was not used, or only partly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StampAnomalies {
    /// Packets `sendmmsg` did not take (counted as sent and lost).
    pub send_errors: u64,
    /// Authenticated replies whose HMAC (octets 0–95) did not verify: dropped.
    pub bad_hmac: u64,
    /// Replies shorter than the base packet or cut by the buffer: dropped.
    pub truncated: u64,
    /// Replies with another SSID than ours (RFC 8972 §3): dropped.
    pub wrong_ssid: u64,
    /// Replies naming a Session-Sender Sequence Number never sent: dropped.
    pub unknown_sequence: u64,
    /// Datagrams from an address other than the reflector's: dropped.
    pub foreign: u64,
    /// Invalid Error Estimate (Multiplier 0): used, error taken as unknown.
    pub invalid_error_estimate: u64,
    /// Replies not as long as the request (RFC 8762 §4.3 symmetric size):
    /// used, TLVs read from what arrived.
    pub length_mismatch: u64,
    /// The reply's HMAC TLV is missing or does not verify: its TLVs discarded.
    pub bad_tlv_hmac: u64,
    /// The reflector set I (its check of our HMAC TLV failed): TLVs discarded.
    pub tlv_integrity_flagged: u64,
    /// The reflector flagged a TLV M (malformed): TLVs after it ignored.
    pub tlv_malformed_flagged: u64,
    /// The reply's TLV framing is broken and not flagged: TLVs after it ignored.
    pub tlv_framing_error: u64,
    /// A TLV the reflector understood came back with a value invalid for
    /// its type (bad sub-TLVs, reserved values): that value not used.
    pub tlv_value_error: u64,
    /// `recvmmsg` failures.
    pub receive_errors: u64,
}

/// One reply as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StampRecord {
    pub sender_seq: u32,
    pub reflector_seq: u32,
    /// T1..T4, UTC nanoseconds since 1970 (PTP values converted with the
    /// host's TAI offset).
    pub t1_ns: u64,
    pub t2_ns: u64,
    /// T3 as carried in this reply.
    pub t3_ns: u64,
    pub t4_ns: u64,
    pub rtt_ns: i64,
    pub sender_ttl: u8,
    pub reply_ttl: Option<u8>,
    pub reply_tos: Option<u8>,
    pub reply_len: usize,
    pub duplicate: bool,
    /// T3 of this reply as reported by a later reply's Follow-Up Telemetry.
    pub followup_t3_ns: Option<u64>,
    /// `followup_t3_ns − t3_ns`.
    pub followup_minus_t3_ns: Option<i64>,
    /// Timestamp Information: Sync Src In, Timestamp In, Sync Src Out,
    /// Timestamp Out.
    pub timestamp_info: Option<[u8; 4]>,
    /// TLV types returned with U = 1.
    pub unrecognized_tlvs: Vec<u8>,
}

/// Per TLV type sent: how the reflector returned it.
#[derive(Debug, Clone, Serialize)]
pub struct TlvTypeReport {
    pub tlv_type: u8,
    pub name: &'static str,
    /// Replies with U = 0 (the reflector understood it).
    pub recognized: u64,
    /// Replies with U = 1.
    pub unrecognized: u64,
}

/// A Timestamp Information combination and how often it came back.
#[derive(Debug, Clone, Serialize)]
pub struct TimestampInfoReport {
    pub sync_in: u8,
    pub method_in: u8,
    pub sync_out: u8,
    pub method_out: u8,
    /// In words: "T2 NTP / software local, T3 NTP / hardware assist".
    pub meaning: String,
    pub replies: u64,
}

/// Follow-Up Telemetry (RFC 8972 §4.7) results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowUpReport {
    /// Replies carrying a recognised Follow-Up Telemetry TLV.
    pub replies: u64,
    /// Of those, zero Sequence Number and Timestamp (a stateless reflector,
    /// or the first packet of a session).
    pub zeroed: u64,
    /// Of those, a Sequence Number but a zero Timestamp: the reflector has
    /// no transmit stamp of its previous reply (e.g. a socket path on a
    /// device without `SO_TIMESTAMPING` transmit stamps).
    pub unstamped: u64,
    /// Follow-Ups paired with the reply they describe.
    pub paired: u64,
    /// Follow-Ups whose reply never arrived.
    pub unpaired: u64,
    /// Follow-Ups not naming the reflector's previous Sequence Number
    /// (this reply's − 1).
    pub not_previous: u64,
    /// Timestamp Mode values (RFC 8972 §4.7: the Timestamping Method), counts.
    pub modes: Vec<(u8, &'static str, u64)>,
    /// Follow-Up Timestamp − in-packet T3 of the same reflected packet.
    pub followup_minus_t3: Distribution,
}

/// Class of Service (RFC 8972 §4.4) results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CosReport {
    pub dscp1_requested: u8,
    pub dscp_sent: u8,
    pub ecn_sent: u8,
    pub replies: u64,
    /// RP = 1: the reflector would not use DSCP1.
    pub rp_set: u64,
    /// RP = 0 but the reply did not arrive with DSCP1.
    pub dscp1_not_applied: u64,
    /// DSCP2 (as received by the reflector) differs from what we sent.
    pub forward_dscp_changed: u64,
    /// ECN as received by the reflector differs from what we sent.
    pub forward_ecn_changed: u64,
    /// Last DSCP2 / ECN reported.
    pub last_dscp2: Option<u8>,
    pub last_ecn: Option<u8>,
}

/// Direct Measurement (RFC 8972 §4.5): the last reply's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectReport {
    pub replies: u64,
    /// S_TxC not echoed as sent.
    pub s_txc_mismatch: u64,
    pub last_s_txc: u32,
    pub last_r_rxc: u32,
    pub last_r_txc: u32,
}

/// Everything a STAMP run produced.
#[derive(Debug, Clone, Serialize)]
pub struct StampReport {
    pub target: SocketAddr,
    pub sender: SocketAddr,
    /// "unauthenticated" or "authenticated".
    pub mode: &'static str,
    pub ssid: u16,
    pub packet_len: usize,
    /// The TLVs of every request, in order.
    pub tlvs: Vec<&'static str>,
    pub dscp: u8,
    pub ecn: u8,
    pub clock: ClockReport,
    pub rx_timestamping: &'static str,
    /// "stateful", "stateless", or "stateless (indistinguishable)".
    pub reflector_mode: &'static str,
    pub summary: Summary,
    pub anomalies: StampAnomalies,
    pub t4_sources: StampSources,
    pub reflector_error_estimate: Option<u16>,
    pub reflector_synchronized_replies: u64,
    /// Replies whose T2/T3 were PTPv2 (Z = 1).
    pub reflector_ptp_replies: u64,
    pub tlv_types: Vec<TlvTypeReport>,
    pub timestamp_info: Vec<TimestampInfoReport>,
    pub follow_up: Option<FollowUpReport>,
    pub cos: Option<CosReport>,
    pub direct_measurement: Option<DirectReport>,
    /// Access Report echoed (ID, Return Code) and echoes that differ.
    pub access_report: Option<(u8, u8)>,
    pub access_report_mismatch: u64,
    /// Micro-session IDs (ours echoed, the reflector's).
    pub micro_session: Option<(u16, u16)>,
    pub micro_session_mismatch: u64,
    pub location: Option<tlvs::LocationInfo>,
    /// Location ports that are not our packet's.
    pub location_mismatch: u64,
    pub backward_tos: Vec<(u8, u64)>,
    pub send_duration_ns: u64,
    pub achieved_pps: f64,
    pub max_send_lateness_ns: u64,
    pub packets: Vec<StampRecord>,
    pub lost: Vec<u32>,
    pub warnings: Vec<String>,
    pub interrupted: bool,
}

impl StampReport {
    /// 0 when replies came back, 1 otherwise.
    pub fn exit_status(&self) -> i32 {
        i32::from(self.summary.received == 0)
    }
}

/// The request builder of one session.
struct Requests {
    layout: StampLayout,
    ssid: u16,
    area: tlvs::TlvLayout,
    hmac: Option<StampHmac>,
}

impl Requests {
    fn len(&self) -> usize {
        base_len(self.layout) + self.area.template.len()
    }

    /// Builds request `seq` into `out`; T1 is read by `t1` as late as the
    /// mode allows (before the base HMAC, which covers it).
    fn build(
        &self,
        seq: u32,
        ee: u16,
        out: &mut [u8],
        t1: impl FnOnce() -> [u8; 8],
    ) -> Option<usize> {
        let n = self.len();
        let buf = out.get_mut(..n)?;
        let base = base_len(self.layout);
        buf[base..].copy_from_slice(&self.area.template);
        let repr = SenderRepr {
            sequence_number: seq,
            timestamp: [0; 8],
            error_estimate: ee,
            ssid: self.ssid,
            tlv_len: n - base,
        };
        repr.emit(&mut SenderPacket::new_unchecked(&mut buf[..], self.layout))
            .ok()?;
        let (head, area) = buf.split_at_mut(base);
        if let Some(at) = self.area.s_txc_at {
            area[at..at + 4].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
        }
        if let (Some(at), Some(h)) = (self.area.hmac_at, &self.hmac) {
            let tag = h.compute(&[&head[..4], &area[..at]]);
            area[at + tlvs::HEADER_LEN..at + tlvs::HEADER_LEN + 16].copy_from_slice(&tag);
        }
        SenderPacket::new_unchecked(&mut head[..], self.layout).set_timestamp(t1());
        if self.layout == StampLayout::Authenticated {
            self.hmac.as_ref()?.seal_packet(head).ok()?;
        }
        Some(n)
    }
}

#[derive(Clone, Copy)]
struct Clock {
    format: TimeFormat,
    offset: TaiOffset,
    ee: u16,
    error_ns: u64,
}

impl Clock {
    fn now(&self) -> (u64, [u8; 8]) {
        match self.format {
            TimeFormat::Ntp => {
                let utc = now_utc_ns();
                (utc, NtpTimestamp::from_utc_ns(utc).to_bytes())
            }
            TimeFormat::Ptp => {
                let tai = now_tai_ns();
                (
                    self.offset.tai_to_utc_ns(tai),
                    PtpTimestamp::from_tai_ns(tai).to_bytes(),
                )
            }
        }
    }
}

struct Receiver<'a> {
    cfg: &'a StampConfig,
    req: &'a Requests,
    clock: Clock,
    local: SocketAddr,
    collector: Collector,
    t1: Vec<u64>,
    seen: Vec<bool>,
    scratch: Vec<u8>,
    a: StampAnomalies,
    t4_sources: StampSources,
    reflector_ee: Option<u16>,
    reflector_sync: u64,
    reflector_ptp: u64,
    backward: Box<[u64; 256]>,
    records: Vec<StampRecord>,
    max_rtt_ns: i64,
    stateful_seen: bool,
    tlv_ok: Box<[u64; 256]>,
    tlv_u: Box<[u64; 256]>,
    ts_info: HashMap<[u8; 4], u64>,
    fu: FollowUpReport,
    fu_modes: Box<[u64; 256]>,
    fu_hist: SignedHistogram,
    /// Reflector Sequence Number → (T3 carried, record index), awaiting a Follow-Up.
    fu_pending: HashMap<u32, (u64, Option<usize>)>,
    /// Reflector Sequence Number → Follow-Up T3, awaiting its reply.
    fu_early: HashMap<u32, u64>,
    cos: Option<CosReport>,
    direct: Option<DirectReport>,
    access: Option<(u8, u8)>,
    access_mismatch: u64,
    micro: Option<(u16, u16)>,
    micro_mismatch: u64,
    location: Option<tlvs::LocationInfo>,
    location_mismatch: u64,
}

impl Receiver<'_> {
    fn drain(&mut self, socket: &BatchSocket, rx: &mut RxBatch) {
        loop {
            match socket.recv_batch(rx) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.a.receive_errors += 1;
                    return;
                }
            }
            for item in rx.iter() {
                match item {
                    Err(RxError::Truncated { .. }) | Err(RxError::BadAddress { .. }) => {
                        self.a.truncated += 1
                    }
                    Ok(p) => {
                        if !same_endpoint(p.src, self.cfg.target) {
                            self.a.foreign += 1;
                            continue;
                        }
                        let n = p.payload.len();
                        self.scratch[..n].copy_from_slice(p.payload);
                        self.one(n, p.rx_stamp, p.ttl, p.tos);
                    }
                }
            }
        }
    }

    fn one(&mut self, n: usize, t4: Stamp, ttl: Option<u8>, tos: Option<u8>) {
        let layout = self.req.layout;
        let pkt = &self.scratch[..n];
        let Ok(view) = ReflectorPacket::new_checked(pkt, layout) else {
            self.a.truncated += 1;
            return;
        };
        if layout == StampLayout::Authenticated {
            let ok = self
                .req
                .hmac
                .as_ref()
                .is_some_and(|h| h.verify_packet(pkt).is_ok());
            if !ok {
                self.a.bad_hmac += 1;
                return;
            }
        }
        let Ok(repr) = ReflectorRepr::parse(&view) else {
            self.a.truncated += 1;
            return;
        };
        if repr.ssid != self.req.ssid {
            self.a.wrong_ssid += 1;
            return;
        }
        let seq = repr.sender_sequence_number;
        let Some(&t1_ns) = self.t1.get(seq as usize) else {
            self.a.unknown_sequence += 1;
            return;
        };
        if n != self.req.len() {
            self.a.length_mismatch += 1;
        }
        let offset = self.clock.offset;
        let (reflector_error_ns, synchronized) = match ErrorEstimate::from_bits(repr.error_estimate)
        {
            Ok(e) => {
                self.reflector_ee = Some(repr.error_estimate);
                self.reflector_sync += u64::from(e.synchronized());
                self.reflector_ptp += u64::from(e.format() == TimeFormat::Ptp);
                (e.error_ns().ceil() as u64, e.synchronized())
            }
            Err(_) => {
                self.a.invalid_error_estimate += 1;
                (UNSYNCHRONIZED_ERROR_NS, false)
            }
        };
        let reply = Reply {
            sender_seq: seq,
            reflector_seq: repr.sequence_number,
            t1_ns,
            t2_ns: decode_timestamp(repr.receive_timestamp, repr.error_estimate).to_utc_ns(offset),
            t3_ns: decode_timestamp(repr.timestamp, repr.error_estimate).to_utc_ns(offset),
            t4_ns: t4.utc_ns(offset),
            sender_error_ns: self.clock.error_ns,
            reflector_error_ns,
            reflector_synchronized: synchronized,
            sender_ttl: repr.sender_ttl,
            reply_ttl: ttl,
        };
        if !self.collector.reply(&reply) {
            self.a.unknown_sequence += 1;
            return;
        }
        self.t4_sources.count(t4.source);
        if let Some(v) = tos {
            self.backward[usize::from(v)] += 1;
        }
        self.max_rtt_ns = self.max_rtt_ns.max(reply.rtt_ns());
        if repr.sequence_number != seq {
            self.stateful_seen = true;
        }
        let duplicate = std::mem::replace(&mut self.seen[seq as usize], true);

        // TLVs: the reply's HMAC TLV first (RFC 8972 §4.8), then the rest.
        let base = base_len(layout);
        let area = &self.scratch[base..n];
        let mut t = tlvs::read_reply(area);
        if self.req.area.hmac_at.is_some() {
            let good = match (t.hmac_at, &self.req.hmac) {
                (Some(at), Some(h)) => area
                    .get(at + tlvs::HEADER_LEN..at + tlvs::HEADER_LEN + 16)
                    .is_some_and(|tag| h.verify(&[&self.scratch[..4], &area[..at]], tag).is_ok()),
                _ => false,
            };
            if !good && !t.integrity_failed {
                self.a.bad_tlv_hmac += 1;
                t = ReplyTlvs::default();
            }
        }
        if t.integrity_failed {
            self.a.tlv_integrity_flagged += 1;
        }
        if t.malformed.is_some() {
            self.a.tlv_malformed_flagged += 1;
        }
        if t.framing_error.is_some() {
            self.a.tlv_framing_error += 1;
        }
        if !t.value_errors.is_empty() {
            self.a.tlv_value_error += 1;
        }
        for &ty in &t.recognized {
            self.tlv_ok[usize::from(ty)] += 1;
        }
        for &ty in &t.unrecognized {
            self.tlv_u[usize::from(ty)] += 1;
        }
        if let Some(ti) = t.timestamp_info {
            *self.ts_info.entry(ti).or_default() += 1;
        }
        self.tlv_values(&t, seq, tos);

        let idx = self.cfg.record_packets.then(|| {
            self.records.push(StampRecord {
                sender_seq: seq,
                reflector_seq: repr.sequence_number,
                t1_ns,
                t2_ns: reply.t2_ns,
                t3_ns: reply.t3_ns,
                t4_ns: reply.t4_ns,
                rtt_ns: reply.rtt_ns(),
                sender_ttl: repr.sender_ttl,
                reply_ttl: ttl,
                reply_tos: tos,
                reply_len: n,
                duplicate,
                followup_t3_ns: None,
                followup_minus_t3_ns: None,
                timestamp_info: t.timestamp_info,
                unrecognized_tlvs: t.unrecognized.clone(),
            });
            self.records.len() - 1
        });
        if self.req.area.types.contains(&tlvs::FOLLOW_UP) && !duplicate {
            // This reply's own T3, waiting for (or matching) a Follow-Up.
            match self.fu_early.remove(&repr.sequence_number) {
                Some(fu_ns) => self.pair(reply.t3_ns, fu_ns, idx),
                None => {
                    self.fu_pending
                        .insert(repr.sequence_number, (reply.t3_ns, idx));
                }
            }
        }
        if let Some((fseq, ts, mode)) = t.follow_up {
            self.fu.replies += 1;
            if fseq != 0 || ts != [0; 8] {
                // RFC 8972 §4.7: only a stateful reflector fills it.
                self.stateful_seen = true;
                if fseq.wrapping_add(1) != repr.sequence_number {
                    self.fu.not_previous += 1;
                }
            }
            if ts == [0; 8] {
                // Zero Timestamp: stateless (Sequence Number zero too), the
                // first packet, or a path without transmit stamps.
                if fseq == 0 {
                    self.fu.zeroed += 1;
                } else {
                    self.fu.unstamped += 1;
                }
            } else {
                self.fu_modes[usize::from(mode)] += 1;
                let fu_ns = decode_timestamp(ts, repr.error_estimate).to_utc_ns(offset);
                match self.fu_pending.remove(&fseq) {
                    Some((t3, i)) => self.pair(t3, fu_ns, i),
                    None => {
                        self.fu_early.insert(fseq, fu_ns);
                    }
                }
            }
        }
    }

    fn pair(&mut self, t3_ns: u64, fu_ns: u64, idx: Option<usize>) {
        let d = fu_ns as i64 - t3_ns as i64;
        self.fu.paired += 1;
        self.fu_hist.record(d);
        if let Some(r) = idx.and_then(|i| self.records.get_mut(i)) {
            r.followup_t3_ns = Some(fu_ns);
            r.followup_minus_t3_ns = Some(d);
        }
    }

    fn tlv_values(&mut self, t: &ReplyTlvs, seq: u32, tos: Option<u8>) {
        for spec in &self.cfg.tlvs {
            match spec {
                TlvSpec::Cos { dscp1, .. } => {
                    if let Some((_, dscp2, ecn, rp)) = t.cos {
                        let c = self.cos.get_or_insert_with(CosReport::default);
                        c.dscp1_requested = *dscp1;
                        c.dscp_sent = self.cfg.dscp;
                        c.ecn_sent = self.cfg.ecn;
                        c.replies += 1;
                        if rp != 0 {
                            c.rp_set += 1;
                        } else if tos.is_some_and(|v| v >> 2 != *dscp1) {
                            c.dscp1_not_applied += 1;
                        }
                        c.forward_dscp_changed += u64::from(dscp2 != self.cfg.dscp);
                        c.forward_ecn_changed += u64::from(ecn != self.cfg.ecn);
                        c.last_dscp2 = Some(dscp2);
                        c.last_ecn = Some(ecn);
                    }
                }
                TlvSpec::DirectMeasurement => {
                    if let Some((s, r, x)) = t.direct {
                        let d = self.direct.get_or_insert_with(DirectReport::default);
                        d.replies += 1;
                        d.s_txc_mismatch += u64::from(s != seq.wrapping_add(1));
                        (d.last_s_txc, d.last_r_rxc, d.last_r_txc) = (s, r, x);
                    }
                }
                TlvSpec::AccessReport { id, return_code } => {
                    if let Some(v) = t.access {
                        self.access = Some(v);
                        self.access_mismatch += u64::from(v != (*id, *return_code));
                    }
                }
                TlvSpec::MicroSession(id) => {
                    if let Some(v) = t.micro_session {
                        self.micro = Some(v);
                        self.micro_mismatch += u64::from(v.0 != *id);
                    }
                }
                TlvSpec::Location => {
                    if let Some(l) = &t.location {
                        let ok =
                            l.dst_port == self.cfg.target.port() && l.src_port == self.local.port();
                        self.location_mismatch += u64::from(!ok);
                        self.location = Some(l.clone());
                    }
                }
                _ => {}
            }
        }
    }
}

/// Same address (IPv4-mapped folded) and port.
pub fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn histogram(h: &[u64; 256]) -> Vec<(u8, u64)> {
    (0u8..=255)
        .zip(h.iter().copied())
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// The source address the kernel would use towards `target` (no packet is
/// sent: a connected UDP socket only selects a route).
fn route_source(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(any)?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

/// Runs one STAMP session: `count` packets paced by the schedule, then up
/// to `timeout` for the last replies; Ctrl-C (`interrupt`) stops early.
pub fn run_stamp(c: &StampConfig, interrupt: &AtomicBool) -> Result<StampReport, PingError> {
    let mut warnings = Vec::new();
    let state = super::clock_state();
    let format = if c.ptp {
        TimeFormat::Ptp
    } else {
        TimeFormat::Ntp
    };
    if c.ptp && state.tai_offset_s == 0 {
        warnings.push(
            "the kernel's TAI offset is 0 (no time daemon set it): PTPv2 timestamps are read \
             as if TAI were UTC"
                .into(),
        );
    }
    let clock = Clock {
        format,
        offset: state.tai_offset(),
        ee: state.error_estimate(format).to_bits(),
        error_ns: state.error_ns(),
    };
    let hmac = c.key.as_ref().map(|k| StampHmac::new(k));
    let force_hmac = c.layout == StampLayout::Authenticated
        && c.tlvs
            .iter()
            .any(|t| !matches!(t, TlvSpec::ExtraPadding(_)))
        && !c.tlvs.contains(&TlvSpec::Hmac);
    if force_hmac {
        warnings.push(
            "authenticated mode: an HMAC TLV is added, as RFC 8972 §4.8 requires with TLVs other \
             than Extra Padding"
                .into(),
        );
    }
    let seed = (!c.zero_padding).then(rand::random::<u64>);
    let area = tlvs::layout(&c.tlvs, force_hmac, seed).map_err(PingError::Usage)?;
    if area.hmac_at.is_some() && hmac.is_none() {
        return Err(PingError::Usage(
            "the HMAC TLV needs --stamp-key-file".into(),
        ));
    }
    let req = Requests {
        layout: c.layout,
        ssid: c.ssid,
        area,
        hmac,
    };
    if req.len() > MAX_DATAGRAM - 48 {
        return Err(PingError::Usage(format!(
            "a {}-octet STAMP packet does not fit a UDP datagram",
            req.len()
        )));
    }
    let ip = route_source(c.target).map_err(|source| PingError::Socket {
        what: format!("find a route to {}", c.target),
        source,
    })?;
    let bind = SocketAddr::new(ip, c.sender_port);
    let socket = BatchSocket::bind(
        bind,
        &SocketOptions {
            tos: tos_from_dscp(c.dscp, c.ecn),
            ttl: 255,
            timestamping: RxTimestamping::Auto,
            dual_stack: false,
            reuse_port: false,
            recv_buffer: Some(4 << 20),
        },
    )
    .map_err(|source| PingError::Socket {
        what: format!("bind a test socket to {bind}"),
        source,
    })?;
    let local = socket.local_addr();
    let count = c.count as usize;
    let cfg = BatchConfig {
        batch: RECV_BATCH,
        buf_len: (req.len() + 64).max(2048),
        ..BatchConfig::default()
    };
    let mut rx = RxBatch::new(&cfg);
    let mut tx = TxBatch::new(&BatchConfig {
        batch: SEND_BATCH,
        buf_len: req.len(),
        ..cfg
    });
    let sock_err = |what: &str| {
        let what = what.to_owned();
        move |source| PingError::Socket { what, source }
    };
    let mut poll = Poll::new().map_err(sock_err("create a poller"))?;
    let fd = socket.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
        .map_err(sock_err("register the test socket"))?;
    let mut events = Events::with_capacity(4);
    let mut r = Receiver {
        cfg: c,
        req: &req,
        clock,
        local,
        collector: Collector::new(u64::from(c.count), true),
        t1: Vec::with_capacity(count),
        seen: vec![false; count],
        scratch: vec![0; cfg.buf_len],
        a: StampAnomalies::default(),
        t4_sources: StampSources::default(),
        reflector_ee: None,
        reflector_sync: 0,
        reflector_ptp: 0,
        backward: Box::new([0; 256]),
        records: Vec::new(),
        max_rtt_ns: 0,
        stateful_seen: false,
        tlv_ok: Box::new([0; 256]),
        tlv_u: Box::new([0; 256]),
        ts_info: HashMap::new(),
        fu: FollowUpReport::default(),
        fu_modes: Box::new([0; 256]),
        fu_hist: SignedHistogram::new(RANGE_NS),
        fu_pending: HashMap::new(),
        fu_early: HashMap::new(),
        cos: None,
        direct: None,
        access: None,
        access_mismatch: 0,
        micro: None,
        micro_mismatch: 0,
        location: None,
        location_mismatch: 0,
    };
    let meta = TxMeta::to(c.target);
    let start = Instant::now() + START_LEAD;
    let mut pacer = Pacer::new(start, c.schedule);
    let mut next = pacer.next_deadline();
    let mut first_send = None;
    let mut last_send = start;
    let mut max_late = Duration::ZERO;
    let mut seq = 0u32;
    while (seq as usize) < count && !interrupt.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next <= now {
            max_late = max_late.max(now - next);
            while (seq as usize) < count && next <= now && !tx.is_full() {
                let mut t1_ns = 0;
                let pushed = tx.push(meta, |buf| {
                    req.build(seq, clock.ee, buf, || {
                        let (ns, raw) = clock.now();
                        t1_ns = ns;
                        raw
                    })
                });
                if !matches!(pushed, Ok(true)) {
                    r.a.send_errors += 1;
                }
                r.t1.push(t1_ns);
                r.collector.sent();
                seq += 1;
                next = pacer.next_deadline();
            }
            let report = socket.send_batch(&mut tx);
            r.a.send_errors += report.failed as u64;
            last_send = Instant::now();
            first_send.get_or_insert(now);
            r.drain(&socket, &mut rx);
            continue;
        }
        r.drain(&socket, &mut rx);
        let left = next.saturating_duration_since(Instant::now());
        if left > POLL_MIN {
            poll_for(&mut poll, &mut events, left - SPIN_THRESHOLD)
                .map_err(sock_err("wait for replies"))?;
        } else {
            wait_until(next);
        }
    }
    let end = last_send + c.timeout;
    let mut settled: Option<Instant> = None;
    loop {
        r.drain(&socket, &mut rx);
        let now = Instant::now();
        if r.collector.received() == r.collector.sent_count() || interrupt.load(Ordering::Relaxed) {
            settled.get_or_insert(now);
        }
        let until = match settled {
            Some(at) => end.min(
                at + Duration::from_nanos(2 * r.max_rtt_ns.max(0) as u64)
                    .max(Duration::from_millis(10)),
            ),
            None => end,
        };
        if now >= until {
            break;
        }
        poll_for(&mut poll, &mut events, until - now).map_err(sock_err("wait for replies"))?;
    }

    let stateful = match c.reflector_mode {
        ReflectorModeArg::Stateful => true,
        ReflectorModeArg::Stateless => false,
        ReflectorModeArg::Auto => r.stateful_seen,
    };
    let mut summary = r.collector.summary();
    if !stateful {
        summary.lost_forward = None;
        summary.lost_backward = None;
    }
    let reflector_mode = match (c.reflector_mode, stateful) {
        (_, true) => "stateful",
        (ReflectorModeArg::Stateless, false) => "stateless",
        _ => "stateless (or stateful without loss: its numbers equal ours)",
    };
    let lost = if c.record_packets {
        (0..seq).filter(|&s| !r.seen[s as usize]).collect()
    } else {
        Vec::new()
    };
    let send_duration =
        first_send.map_or(Duration::ZERO, |f| last_send.saturating_duration_since(f));
    let achieved_pps = if summary.sent > 1 && !send_duration.is_zero() {
        (summary.sent - 1) as f64 / send_duration.as_secs_f64()
    } else {
        0.0
    };
    let mut sent_types: Vec<u8> = Vec::new();
    for &t in &req.area.types {
        if !sent_types.contains(&t) {
            sent_types.push(t);
        }
    }
    let tlv_types = sent_types
        .iter()
        .map(|&t| TlvTypeReport {
            tlv_type: t,
            name: tlvs::type_name(t),
            recognized: r.tlv_ok[usize::from(t)],
            unrecognized: r.tlv_u[usize::from(t)],
        })
        .collect();
    let mut timestamp_info: Vec<TimestampInfoReport> = r
        .ts_info
        .iter()
        .map(|(k, &n)| TimestampInfoReport {
            sync_in: k[0],
            method_in: k[1],
            sync_out: k[2],
            method_out: k[3],
            meaning: format!(
                "T2 {} / {}, T3 {} / {}",
                tlvs::sync_source_name(k[0]),
                tlvs::method_name(k[1]),
                tlvs::sync_source_name(k[2]),
                tlvs::method_name(k[3])
            ),
            replies: n,
        })
        .collect();
    timestamp_info.sort_by_key(|t| std::cmp::Reverse(t.replies));
    let follow_up = req.area.types.contains(&tlvs::FOLLOW_UP).then(|| {
        let mut f = r.fu.clone();
        let stamped = f.replies - f.zeroed - f.unstamped;
        f.unpaired = stamped - f.paired.min(stamped);
        f.modes = histogram(&r.fu_modes)
            .into_iter()
            .map(|(m, n)| (m, tlvs::method_name(m), n))
            .collect();
        f.followup_minus_t3 = r.fu_hist.summary();
        f
    });
    Ok(StampReport {
        target: c.target,
        sender: local,
        mode: match c.layout {
            StampLayout::Unauthenticated => "unauthenticated",
            StampLayout::Authenticated => "authenticated",
        },
        ssid: c.ssid,
        packet_len: req.len(),
        tlvs: req.area.types.iter().map(|&t| tlvs::type_name(t)).collect(),
        dscp: c.dscp,
        ecn: c.ecn,
        clock: ClockReport {
            synchronized: state.synchronized,
            error_ns: state.error_ns(),
            source: super::source_name(state.source),
            tai_offset_s: state.tai_offset_s,
            leap_pending: state.leap != ricochet_reflector::clock::LeapState::None,
            t1_format: if c.ptp { "PTPv2" } else { "NTP" },
            t1_source: if c.ptp {
                "user space, CLOCK_TAI, read just before sendmmsg"
            } else {
                "user space, CLOCK_REALTIME, read just before sendmmsg"
            },
        },
        rx_timestamping: super::timestamping_name(socket.timestamping()),
        reflector_mode,
        summary,
        anomalies: r.a,
        t4_sources: r.t4_sources,
        reflector_error_estimate: r.reflector_ee,
        reflector_synchronized_replies: r.reflector_sync,
        reflector_ptp_replies: r.reflector_ptp,
        tlv_types,
        timestamp_info,
        follow_up,
        cos: r.cos,
        direct_measurement: r.direct,
        access_report: r.access,
        access_report_mismatch: r.access_mismatch,
        micro_session: r.micro,
        micro_session_mismatch: r.micro_mismatch,
        location: r.location,
        location_mismatch: r.location_mismatch,
        backward_tos: histogram(&r.backward),
        send_duration_ns: send_duration.as_nanos() as u64,
        achieved_pps,
        max_send_lateness_ns: max_late.as_nanos() as u64,
        packets: r.records,
        lost,
        warnings,
        interrupted: interrupt.load(Ordering::Relaxed),
    })
}

fn poll_for(poll: &mut Poll, events: &mut Events, d: Duration) -> io::Result<()> {
    match poll.poll(events, Some(d.min(POLL_MAX))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(layout: StampLayout, specs: &[&str], key: Option<&[u8]>) -> Requests {
        let specs: Vec<TlvSpec> = specs.iter().map(|s| tlvs::parse_tlv(s).unwrap()).collect();
        Requests {
            layout,
            ssid: 0x1234,
            area: tlvs::layout(&specs, false, None).unwrap(),
            hmac: key.map(StampHmac::new),
        }
    }

    /// The authenticated request against stamp.md §2.2 and the golden key of
    /// the stamp-suite captures: HMAC over 0–95 at 96, SSID at 26, T1 at 16,
    /// HMAC TLV over Sequence Number ‖ preceding TLVs, S_TxC = seq + 1.
    #[test]
    fn authenticated_request_layout_and_hmacs() {
        let key = b"stamp-golden-hmac-key-0123456789";
        let r = requests(
            StampLayout::Authenticated,
            &["direct-measurement", "hmac"],
            Some(key),
        );
        let mut out = vec![0u8; 512];
        let n = r.build(7, 0x0001, &mut out, || [9; 8]).unwrap();
        let p = &out[..n];
        assert_eq!(n, 112 + 16 + 20);
        assert_eq!(&p[0..4], &[0, 0, 0, 7]);
        assert!(p[4..16].iter().all(|&b| b == 0));
        assert_eq!(&p[16..24], &[9; 8]);
        assert_eq!(&p[24..26], &[0, 1]);
        assert_eq!(&p[26..28], &[0x12, 0x34]);
        assert!(p[28..96].iter().all(|&b| b == 0));
        let h = StampHmac::new(key);
        assert!(h.verify(&[&p[..96]], &p[96..112]).is_ok());
        // Direct Measurement: S_TxC = 8 packets sent.
        assert_eq!(&p[112..120], &[0x80, 5, 0, 12, 0, 0, 0, 8]);
        assert!(h.verify(&[&p[0..4], &p[112..128]], &p[132..148]).is_ok());
    }

    #[test]
    fn key_files() {
        let d = std::env::temp_dir().join(format!("ricochet-stamp-key-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let w = |name: &str, text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let good = w(
            "good",
            "7374616d702d676f6c64656e2d686d61\n632d6b65792d30313233343536373839\n",
            0o600,
        );
        let (k, warn) = load_stamp_key(&good).unwrap();
        assert_eq!(&k[..], b"stamp-golden-hmac-key-0123456789");
        assert!(warn.is_none());
        let open = w("open", "00112233445566778899aabbccddeeff", 0o644);
        assert!(load_stamp_key(&open).unwrap().1.unwrap().contains("644"));
        let e = load_stamp_key(&w("bad", "secretsecret-not-hex", 0o600)).unwrap_err();
        assert!(!e.to_string().contains("secretsecret"), "{e}");
        assert!(load_stamp_key(&w("short", "0011", 0o600)).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }
}
