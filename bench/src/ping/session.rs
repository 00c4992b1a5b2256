//! The Session-Sender of one TWAMP-Test session (RFC 5357 §4.1): builds
//! paced test packets in the negotiated format, sends them in batches,
//! receives and checks the reflections and feeds a [`Collector`].
//!
//! * T1 is read from the system clock right before the packet is queued for
//!   `sendmmsg` (one packet per call when on schedule; when the schedule is
//!   behind, every packet already due goes in one batch).
//! * T4 is the kernel's (or the NIC's) receive stamp of the reflection
//!   (`SO_TIMESTAMPING` through [`BatchSocket`]), so the time the reply sat
//!   in the socket buffer while we were sending does not count.
//! * Replies are unprotected with the session's test keys (authenticated and
//!   encrypted modes); a bad HMAC is counted and the reply is not used
//!   (RFC 4656 §4.2). A Sender Sequence Number that was never sent is
//!   counted and ignored (`twping` aborts on it; we report it).
//! * T2/T3 are decoded by the Z bit of the reflector's Error Estimate
//!   (RFC 8186 §2.3) and converted to UTC with the host's TAI offset.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::{CryptoError, PacketRole, TestKeys, TestProtection};
use ricochet_protocol::time::{ErrorEstimate, NtpTimestamp, PtpTimestamp, TaiOffset, TimeFormat};
use ricochet_protocol::twamp_test::{
    decode_timestamp, ReflectorPacket, ReflectorRepr, SenderPacket, SenderRepr, SessionFormat,
};
use ricochet_protocol::WireError;
use ricochet_reflector::clock::{
    now_tai_ns, now_utc_ns, ClockState, StampSource, UNSYNCHRONIZED_ERROR_NS,
};
use ricochet_reflector::socket::{BatchConfig, BatchSocket, RxBatch, RxError, TxBatch, TxMeta};
use serde::Serialize;
use thiserror::Error;

use crate::pace::{wait_until, Pacer, Schedule, SPIN_THRESHOLD};
use crate::stats::{Collector, Reply, Summary};

/// Most packets queued for one `sendmmsg` when the schedule is behind.
pub const SEND_BATCH: usize = 32;
/// Replies read per `recvmmsg`.
pub const RECV_BATCH: usize = 64;
/// Below this wait, the sender spins/sleeps with [`wait_until`] instead of
/// polling the socket.
const POLL_MIN: Duration = Duration::from_millis(1);
/// Longest single wait, so that an interruption is seen promptly.
const POLL_MAX: Duration = Duration::from_millis(100);

/// Everything one session-sender needs.
#[derive(Debug)]
pub struct SessionSpec {
    /// 0-based session number (for output).
    pub index: usize,
    /// The SID the server assigned.
    pub sid: Sid,
    /// The reflector's address and the port of Accept-Session.
    pub reflector: SocketAddr,
    /// The negotiated test format.
    pub format: SessionFormat,
    /// Packets to send.
    pub count: u32,
    /// When to send them.
    pub schedule: Schedule,
    /// How long to wait for replies after the last packet.
    pub timeout: Duration,
    /// Keep one [`PacketRecord`] per reply (for `-v`, `--raw`, JSON detail).
    pub record_packets: bool,
}

/// How the sender fills its test packets (RFC 5357 §4.1.2: padding SHOULD be
/// pseudo-random, MUST be configurable to zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingFill {
    Zero,
    Random(u64),
}

/// Why a reflection was not used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// Too short for the session's reflector header (41/44/112 octets).
    #[error("malformed reflection: {0}")]
    Malformed(#[from] WireError),
    /// The HMAC did not verify with the session's test keys.
    #[error("reflection failed its HMAC check")]
    BadHmac,
}

impl From<CryptoError> for ReplyError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Wire(w) => ReplyError::Malformed(w),
            _ => ReplyError::BadHmac,
        }
    }
}

/// Sender packets of one session: a template with the padding, plus the
/// per-packet header, timestamp and protection.
pub struct SenderPackets {
    format: SessionFormat,
    template: Vec<u8>,
    protection: Option<(TestKeys, TestProtection)>,
}

impl std::fmt::Debug for SenderPackets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderPackets")
            .field("format", &self.format)
            .field("len", &self.template.len())
            .field("protected", &self.protection.as_ref().map(|p| p.1))
            .finish()
    }
}

/// The protection of a session's test packets, from its format.
pub fn protection_of(format: &SessionFormat) -> Option<TestProtection> {
    use ricochet_protocol::twamp_test::TestSecurity;
    match format.security {
        TestSecurity::Unauthenticated => None,
        TestSecurity::Authenticated => Some(TestProtection::Authenticated),
        TestSecurity::Encrypted => Some(TestProtection::Encrypted),
    }
}

/// The Padding Length that makes the reflection as long as the request
/// (RFC 5357 §4.2.1 truncation, RFC 6038 §4.2, RFC 7750 §3): reflector
/// header + octets to reflect − sender header, and at least the Symmetrical
/// Size MBZ plus the octets to reflect.
pub fn default_padding(format: &SessionFormat) -> usize {
    let equal = (format.reflector_header_len() + format.reflect_len())
        .saturating_sub(format.sender_header_len());
    equal.max(format.sender_mbz_len() + format.reflect_len())
}

/// Why a Padding Length cannot work with the negotiated format.
pub fn check_padding(format: &SessionFormat, padding: usize) -> Result<(), String> {
    let need = format.sender_mbz_len() + format.reflect_len();
    if padding < need {
        return Err(format!(
            "padding of {padding} octets is too short: the negotiated format needs at least \
             {need} ({} Symmetrical Size MBZ + {} to reflect, RFC 6038 §4.2)",
            format.sender_mbz_len(),
            format.reflect_len()
        ));
    }
    let len = format.sender_header_len() + padding;
    if len > ricochet_reflector::socket::MAX_DATAGRAM - 28 {
        return Err(format!(
            "a {len}-octet test packet does not fit a UDP datagram"
        ));
    }
    Ok(())
}

impl SenderPackets {
    /// Prepares the packets of a session: `padding` octets after the header,
    /// the Symmetrical Size MBZ zero, the RFC 6038 Server Octets first in the
    /// region to be reflected (RFC 6038 §4.2), the rest per `fill`.
    pub fn new(
        format: SessionFormat,
        padding: usize,
        fill: PaddingFill,
        server_octets: [u8; 2],
        keys: Option<TestKeys>,
    ) -> Result<SenderPackets, String> {
        check_padding(&format, padding)?;
        let header = format.sender_header_len();
        let mut template = vec![0u8; header + padding];
        if let PaddingFill::Random(seed) = fill {
            SmallRng::seed_from_u64(seed).fill_bytes(&mut template[header..]);
        }
        template[header..format.sender_padding_offset()].fill(0);
        let reflect =
            format.sender_padding_offset()..format.sender_padding_offset() + format.reflect_len();
        if format.reflect_len() >= 2 && server_octets != [0, 0] {
            template[reflect.start..reflect.start + 2].copy_from_slice(&server_octets);
        }
        let protection = match (protection_of(&format), keys) {
            (Some(p), Some(k)) => Some((k, p)),
            (None, _) => None,
            (Some(_), None) => return Err("the session is protected but has no test keys".into()),
        };
        Ok(SenderPackets {
            format,
            template,
            protection,
        })
    }

    /// Length of every sender packet.
    pub fn len(&self) -> usize {
        self.template.len()
    }

    /// Always false: a packet has at least its header.
    pub fn is_empty(&self) -> bool {
        self.template.is_empty()
    }

    /// The session format.
    pub fn format(&self) -> &SessionFormat {
        &self.format
    }

    /// The octets the reflector must return at the start of its padding
    /// (RFC 6038 Reflect Octets; empty without it).
    pub fn to_be_reflected(&self) -> &[u8] {
        let at = self.format.sender_padding_offset();
        &self.template[at..at + self.format.reflect_len()]
    }

    /// Builds packet `seq` into `out` (at least [`Self::len`] octets) and
    /// returns its length. `t1` is called as late as the mode allows: after
    /// protection in authenticated mode (T1 lies outside the authenticated
    /// block, RFC 4656 §4.1.2), before it in encrypted mode.
    pub fn build(
        &self,
        seq: u32,
        error_estimate: u16,
        out: &mut [u8],
        t1: impl FnOnce() -> [u8; 8],
    ) -> Result<usize, CryptoError> {
        let len = self.template.len();
        let have = out.len();
        let buf = out.get_mut(..len).ok_or(WireError::Truncated {
            what: "sender packet buffer",
            need: len,
            have,
        })?;
        buf.copy_from_slice(&self.template);
        let layout = self.format.layout();
        let repr = SenderRepr {
            sequence_number: seq,
            timestamp: [0; 8],
            error_estimate,
            padding_len: len - layout.sender_header_len(),
        };
        let mut p = SenderPacket::new_unchecked(&mut buf[..], layout);
        repr.emit(&mut p)?;
        match &self.protection {
            None => p.set_timestamp(t1()),
            Some((keys, TestProtection::Authenticated)) => {
                keys.protect(PacketRole::Sender, TestProtection::Authenticated, buf)?;
                SenderPacket::new_unchecked(&mut buf[..], layout).set_timestamp(t1());
            }
            Some((keys, TestProtection::Encrypted)) => {
                p.set_timestamp(t1());
                keys.protect(PacketRole::Sender, TestProtection::Encrypted, buf)?;
            }
        }
        Ok(len)
    }

    /// Checks and decodes a reflection in place (decrypting it in
    /// authenticated and encrypted modes). Returns the fields and whether the
    /// Reflect Octets came back intact (`None` without Reflect Octets).
    pub fn open_reply(&self, pkt: &mut [u8]) -> Result<(ReflectorRepr, Option<bool>), ReplyError> {
        if let Some((keys, mode)) = &self.protection {
            keys.unprotect(PacketRole::Reflector, *mode, pkt)?;
        }
        let view = ReflectorPacket::new_checked(&pkt[..], self.format.reflector_layout())?;
        let repr = ReflectorRepr::parse(&view)?;
        let expect = self.to_be_reflected();
        let reflected =
            (!expect.is_empty()).then(|| view.padding().get(..expect.len()) == Some(expect));
        Ok((repr, reflected))
    }
}

/// Where T4 stamps came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StampSources {
    pub nic_hardware: u64,
    pub kernel_software: u64,
    pub user_space: u64,
}

impl StampSources {
    pub(crate) fn count(&mut self, s: StampSource) {
        match s {
            StampSource::NicHardware => self.nic_hardware += 1,
            StampSource::KernelSoftware => self.kernel_software += 1,
            StampSource::UserSpace => self.user_space += 1,
        }
    }

    /// The source most replies were stamped by, in words.
    pub fn describe(&self) -> &'static str {
        let m = self
            .nic_hardware
            .max(self.kernel_software)
            .max(self.user_space);
        if m == 0 {
            "none (no replies)"
        } else if m == self.nic_hardware {
            "NIC hardware receive stamp"
        } else if m == self.kernel_software {
            "kernel software receive stamp"
        } else {
            "user space after recvmmsg"
        }
    }
}

/// Replies and packets that were not used, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Anomalies {
    /// Packets `sendmmsg` did not take (counted as sent and lost).
    pub send_errors: u64,
    /// Reflections that failed the HMAC check.
    pub bad_hmac: u64,
    /// Reflections too short or cut by the receive buffer.
    pub malformed: u64,
    /// Reflections naming a Sender Sequence Number never sent.
    pub unknown_sequence: u64,
    /// Datagrams from an address other than the reflector's.
    pub foreign: u64,
    /// Reflections with an invalid Error Estimate (Multiplier 0).
    pub invalid_error_estimate: u64,
    /// Reflections whose RFC 6038 reflected octets differ from ours.
    pub reflect_octets_mismatch: u64,
    /// `recvmmsg` failures.
    pub receive_errors: u64,
}

/// One reflection as received (for `-v`, `--raw` and JSON detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PacketRecord {
    pub sender_seq: u32,
    pub reflector_seq: u32,
    /// T1..T4, UTC nanoseconds since the Unix epoch.
    pub t1_ns: u64,
    pub t2_ns: u64,
    pub t3_ns: u64,
    pub t4_ns: u64,
    /// Round trip without the reflector's residence time.
    pub rtt_ns: i64,
    pub sender_ttl: u8,
    pub reply_ttl: Option<u8>,
    /// RFC 7750 S-DSCP-ECN: how our packet arrived at the reflector.
    pub forward_dscp_ecn: Option<u8>,
    /// TOS / Traffic Class of the reflection as received.
    pub backward_tos: Option<u8>,
    /// A second (or later) reflection of the same sender packet.
    pub duplicate: bool,
}

/// What a session-sender measured.
#[derive(Debug, Clone, Serialize)]
pub struct SessionOutcome {
    pub summary: Summary,
    pub anomalies: Anomalies,
    pub t4_sources: StampSources,
    /// The last valid Error Estimate of the reflector (raw bits).
    pub reflector_error_estimate: Option<u16>,
    /// How many valid reflector estimates had the S bit set.
    pub reflector_synchronized_replies: u64,
    /// Counts of RFC 7750 S-DSCP-ECN values (the octet, count).
    pub forward_dscp_ecn: Vec<(u8, u64)>,
    /// Counts of the reflections' TOS / Traffic Class octets.
    pub backward_tos: Vec<(u8, u64)>,
    /// From the first to the last packet sent.
    pub send_duration_ns: u64,
    /// Packets per second actually achieved.
    pub achieved_pps: f64,
    /// Largest lateness of a send against its schedule.
    pub max_send_lateness_ns: u64,
    /// Per-reply records (only when asked for), in arrival order.
    pub packets: Vec<PacketRecord>,
    /// Sender sequence numbers without a reply (only when records are kept).
    pub lost: Vec<u32>,
}

/// The sender's clock as it stamps T1 and reads T4.
#[derive(Debug, Clone, Copy)]
pub struct SenderClock {
    /// Format of T1 (NTP, or PTPv2 with `--ptp`).
    pub t1_format: TimeFormat,
    /// TAI − UTC, from the kernel.
    pub tai_offset: TaiOffset,
    /// Our Error Estimate (raw) in `t1_format`.
    pub error_estimate: u16,
    /// Our error bound, nanoseconds.
    pub error_ns: u64,
}

impl SenderClock {
    /// From the host clock state.
    pub fn new(state: &ClockState, t1_format: TimeFormat) -> SenderClock {
        SenderClock {
            t1_format,
            tai_offset: state.tai_offset(),
            error_estimate: state.error_estimate(t1_format).to_bits(),
            error_ns: state.error_ns(),
        }
    }

    /// Now, as (UTC ns, T1 field).
    fn now(&self) -> (u64, [u8; 8]) {
        match self.t1_format {
            TimeFormat::Ntp => {
                let utc = now_utc_ns();
                (utc, NtpTimestamp::from_utc_ns(utc).to_bytes())
            }
            TimeFormat::Ptp => {
                let tai = now_tai_ns();
                (
                    self.tai_offset.tai_to_utc_ns(tai),
                    PtpTimestamp::from_tai_ns(tai).to_bytes(),
                )
            }
        }
    }
}

struct Receiver<'a> {
    spec: &'a SessionSpec,
    packets: &'a SenderPackets,
    clock: SenderClock,
    collector: Collector,
    t1: Vec<u64>,
    seen: Vec<bool>,
    scratch: Vec<u8>,
    anomalies: Anomalies,
    t4_sources: StampSources,
    reflector_ee: Option<u16>,
    reflector_sync: u64,
    forward: Box<[u64; 256]>,
    backward: Box<[u64; 256]>,
    records: Vec<PacketRecord>,
    max_rtt_ns: i64,
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
                    self.anomalies.receive_errors += 1;
                    return;
                }
            }
            for item in rx.iter() {
                match item {
                    Err(RxError::Truncated { .. }) | Err(RxError::BadAddress { .. }) => {
                        self.anomalies.malformed += 1
                    }
                    Ok(p) => {
                        if p.src.ip().to_canonical() != self.spec.reflector.ip().to_canonical()
                            || p.src.port() != self.spec.reflector.port()
                        {
                            self.anomalies.foreign += 1;
                            continue;
                        }
                        let n = p.payload.len();
                        self.scratch[..n].copy_from_slice(p.payload);
                        let t4 = p.rx_stamp;
                        let (ttl, tos) = (p.ttl, p.tos);
                        self.one(n, t4, ttl, tos);
                    }
                }
            }
        }
    }

    fn one(
        &mut self,
        n: usize,
        t4: ricochet_reflector::clock::Stamp,
        ttl: Option<u8>,
        tos: Option<u8>,
    ) {
        let (repr, reflected) = match self.packets.open_reply(&mut self.scratch[..n]) {
            Ok(r) => r,
            Err(ReplyError::BadHmac) => {
                self.anomalies.bad_hmac += 1;
                return;
            }
            Err(ReplyError::Malformed(_)) => {
                self.anomalies.malformed += 1;
                return;
            }
        };
        let seq = repr.sender_sequence_number;
        // Never trust a sequence number we did not send.
        let Some(&t1_ns) = self.t1.get(seq as usize) else {
            self.anomalies.unknown_sequence += 1;
            return;
        };
        let offset = self.clock.tai_offset;
        let (reflector_error_ns, synchronized) = match ErrorEstimate::from_bits(repr.error_estimate)
        {
            Ok(e) => {
                self.reflector_ee = Some(repr.error_estimate);
                self.reflector_sync += u64::from(e.synchronized());
                (e.error_ns().ceil() as u64, e.synchronized())
            }
            Err(_) => {
                self.anomalies.invalid_error_estimate += 1;
                (UNSYNCHRONIZED_ERROR_NS, false)
            }
        };
        if reflected == Some(false) {
            self.anomalies.reflect_octets_mismatch += 1;
        }
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
            self.anomalies.unknown_sequence += 1;
            return;
        }
        self.t4_sources.count(t4.source);
        if let Some(v) = repr.s_dscp_ecn {
            self.forward[usize::from(v)] += 1;
        }
        if let Some(v) = tos {
            self.backward[usize::from(v)] += 1;
        }
        self.max_rtt_ns = self.max_rtt_ns.max(reply.rtt_ns());
        if self.spec.record_packets {
            let s = &mut self.seen[seq as usize];
            let duplicate = *s;
            *s = true;
            self.records.push(PacketRecord {
                sender_seq: seq,
                reflector_seq: reply.reflector_seq,
                t1_ns,
                t2_ns: reply.t2_ns,
                t3_ns: reply.t3_ns,
                t4_ns: reply.t4_ns,
                rtt_ns: reply.rtt_ns(),
                sender_ttl: reply.sender_ttl,
                reply_ttl: ttl,
                forward_dscp_ecn: repr.s_dscp_ecn,
                backward_tos: tos,
                duplicate,
            });
        }
    }

    fn all_replied(&self) -> bool {
        self.collector.received() == self.collector.sent_count()
    }
}

fn histogram(h: &[u64; 256]) -> Vec<(u8, u64)> {
    (0u8..=255)
        .zip(h.iter().copied())
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// Socket buffers for a session: sized for the sender packet and its
/// reflection (with room for longer replies to be detected, not cut).
pub fn batch_config(packets: &SenderPackets) -> BatchConfig {
    let reply = packets.format().reply_len(packets.len());
    BatchConfig {
        batch: RECV_BATCH,
        buf_len: (packets.len().max(reply) + 64).max(2048),
        ..BatchConfig::default()
    }
}

/// Runs one session: sends `spec.count` packets on `socket` from `start`
/// on, then waits up to `spec.timeout` for the last replies (less once every
/// packet has been answered). Once `interrupt` is set, sending stops and the
/// wait is cut short.
pub fn run_session(
    socket: &BatchSocket,
    spec: &SessionSpec,
    packets: &SenderPackets,
    clock: SenderClock,
    start: Instant,
    interrupt: &AtomicBool,
) -> io::Result<SessionOutcome> {
    let count = spec.count as usize;
    let cfg = batch_config(packets);
    let mut rx = RxBatch::new(&cfg);
    let mut tx = TxBatch::new(&BatchConfig {
        batch: SEND_BATCH,
        buf_len: packets.len(),
        ..cfg
    });
    let mut poll = Poll::new()?;
    let fd = socket.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    let mut r = Receiver {
        spec,
        packets,
        clock,
        collector: Collector::new(u64::from(spec.count), true),
        t1: Vec::with_capacity(count),
        seen: if spec.record_packets {
            vec![false; count]
        } else {
            Vec::new()
        },
        scratch: vec![0; cfg.buf_len],
        anomalies: Anomalies::default(),
        t4_sources: StampSources::default(),
        reflector_ee: None,
        reflector_sync: 0,
        forward: Box::new([0; 256]),
        backward: Box::new([0; 256]),
        records: Vec::new(),
        max_rtt_ns: 0,
    };
    let meta = TxMeta::to(spec.reflector);
    let mut pacer = Pacer::new(start, spec.schedule);
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
                    packets
                        .build(seq, clock.error_estimate, buf, || {
                            let (ns, raw) = clock.now();
                            t1_ns = ns;
                            raw
                        })
                        .ok()
                });
                match pushed {
                    Ok(true) => {}
                    // A build failure is a bug in the format set-up; it is
                    // counted rather than aborting the measurement.
                    _ => r.anomalies.send_errors += 1,
                }
                r.t1.push(t1_ns);
                r.collector.sent();
                seq += 1;
                next = pacer.next_deadline();
            }
            let report = socket.send_batch(&mut tx);
            r.anomalies.send_errors += report.failed as u64;
            last_send = Instant::now();
            first_send.get_or_insert(now);
            r.drain(socket, &mut rx);
            continue;
        }
        r.drain(socket, &mut rx);
        let left = next.saturating_duration_since(Instant::now());
        if left > POLL_MIN {
            poll_for(&mut poll, &mut events, left - SPIN_THRESHOLD)?;
        } else {
            wait_until(next);
        }
    }
    // Wait for the stragglers: the full timeout, or less once every packet
    // has been answered (a little longer than the slowest round trip, for
    // duplicates).
    let end = last_send + spec.timeout;
    let mut settled: Option<Instant> = None;
    loop {
        r.drain(socket, &mut rx);
        let now = Instant::now();
        if r.all_replied() || interrupt.load(Ordering::Relaxed) {
            settled.get_or_insert(now);
        }
        let until = match settled {
            // Linger a little after the last awaited reply (or Ctrl-C) for
            // duplicates: twice the slowest round trip, at least 10 ms.
            Some(at) => end.min(
                at + Duration::from_nanos(2 * r.max_rtt_ns.max(0) as u64)
                    .max(Duration::from_millis(10)),
            ),
            None => end,
        };
        if now >= until {
            break;
        }
        poll_for(&mut poll, &mut events, until - now)?;
    }
    let summary = r.collector.summary();
    let lost = if spec.record_packets {
        (0..spec.count).filter(|&s| !r.seen[s as usize]).collect()
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
    Ok(SessionOutcome {
        summary,
        anomalies: r.anomalies,
        t4_sources: r.t4_sources,
        reflector_error_estimate: r.reflector_ee,
        reflector_synchronized_replies: r.reflector_sync,
        forward_dscp_ecn: histogram(&r.forward),
        backward_tos: histogram(&r.backward),
        send_duration_ns: send_duration.as_nanos() as u64,
        achieved_pps,
        max_send_lateness_ns: max_late.as_nanos() as u64,
        packets: r.records,
        lost,
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
    use proptest::prelude::*;
    use ricochet_protocol::crypto::SessionKeys;
    use ricochet_protocol::twamp_test::{
        reflect_twamp, set_t3, ReflectOctets, ReflectParams, RxMeta, TestSecurity,
    };

    fn keys() -> TestKeys {
        TestKeys::new(&SessionKeys::from_bytes(&[7; 48]))
    }

    fn format(sec: u8, reflect: u16, sym: bool, dscp_ecn: bool, ptp: bool) -> SessionFormat {
        SessionFormat {
            reflect_octets: (reflect > 0).then_some(ReflectOctets {
                length: reflect,
                server_octets: 0,
            }),
            symmetrical_size: sym,
            dscp_ecn_monitoring: dscp_ecn,
            timestamp_format: if ptp {
                TimeFormat::Ptp
            } else {
                TimeFormat::Ntp
            },
            ..SessionFormat::new(match sec % 3 {
                0 => TestSecurity::Unauthenticated,
                1 => TestSecurity::Authenticated,
                _ => TestSecurity::Encrypted,
            })
        }
    }

    /// Reflects `pkt` as a conforming reflector would (the protocol crate's
    /// builder, then protection in the mode's order).
    fn reflection(fmt: &SessionFormat, pkt: &[u8], rseq: u32) -> Vec<u8> {
        let k = keys();
        let mut rx = pkt.to_vec();
        let mode = protection_of(fmt);
        if let Some(m) = mode {
            k.unprotect(PacketRole::Sender, m, &mut rx).unwrap();
        }
        let mut out = vec![0u8; 70_000];
        let params = ReflectParams {
            seq: rseq,
            t2: [1, 2, 3, 4, 5, 6, 7, 8],
            error_estimate: ErrorEstimate::from_error_ns(true, fmt.timestamp_format, 1_000),
            max_len: 70_000,
        };
        let n = reflect_twamp(fmt, &rx, &RxMeta { ttl: 61, tos: 0xb9 }, &params, &mut out).unwrap();
        out.truncate(n);
        match mode {
            Some(TestProtection::Encrypted) => {
                set_t3(&mut out, fmt, [9; 8]).unwrap();
                k.protect(PacketRole::Reflector, TestProtection::Encrypted, &mut out)
                    .unwrap();
            }
            Some(TestProtection::Authenticated) => {
                k.protect(
                    PacketRole::Reflector,
                    TestProtection::Authenticated,
                    &mut out,
                )
                .unwrap();
                set_t3(&mut out, fmt, [9; 8]).unwrap();
            }
            None => set_t3(&mut out, fmt, [9; 8]).unwrap(),
        }
        out
    }

    #[test]
    fn default_padding_gives_equal_sizes() {
        // (format, padding): RFC 5357 §4.2.1 27/64, RFC 7750 30, RFC 6038 +L.
        let cases = [
            (format(0, 0, false, false, false), 27),
            (format(1, 0, false, false, false), 64),
            (format(2, 0, false, false, false), 64),
            (format(0, 0, false, true, false), 30),
            (format(0, 8, false, false, false), 35),
            (format(0, 8, true, true, false), 38),
            (format(2, 8, true, false, false), 72),
        ];
        for (f, pad) in cases {
            assert_eq!(default_padding(&f), pad, "{f:?}");
            let len = f.sender_header_len() + pad;
            assert_eq!(f.reply_len(len), len, "{f:?}");
        }
        let sym = format(0, 4, true, false, false);
        assert!(check_padding(&sym, 30).is_err(), "27 MBZ + 4 > 30");
        assert!(check_padding(&sym, 31).is_ok());
    }

    #[test]
    fn protected_session_without_keys_is_refused() {
        let f = format(1, 0, false, false, false);
        assert!(SenderPackets::new(f, 64, PaddingFill::Zero, [0; 2], None).is_err());
    }

    #[test]
    fn server_octets_lead_the_reflected_region_and_mbz_stays_zero() {
        let f = format(0, 6, true, false, false);
        let p = SenderPackets::new(f, 40, PaddingFill::Random(3), [0xab, 0xcd], None).unwrap();
        assert_eq!(&p.to_be_reflected()[..2], &[0xab, 0xcd]);
        let mut out = vec![0u8; p.len()];
        p.build(5, 0x0001, &mut out, || [0; 8]).unwrap();
        // RFC 6038 §4.2: 27 MBZ octets after the 14-octet header.
        assert!(out[14..41].iter().all(|&b| b == 0));
        assert_eq!(&out[41..47], p.to_be_reflected());
        let z = SenderPackets::new(f, 40, PaddingFill::Zero, [0; 2], None).unwrap();
        assert!(z.to_be_reflected().iter().all(|&b| b == 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// build → conforming reflection → open_reply gives back what was
        /// sent, in every format.
        #[test]
        fn build_reflect_open_round_trip(
            sec in 0u8..3, reflect in 0u16..20, sym: bool, dscp_ecn: bool, ptp: bool,
            extra in 0usize..200, seq: u32, t1: [u8; 8], rseq: u32, seed: u64,
        ) {
            let f = format(sec, reflect, sym, dscp_ecn, ptp);
            let pad = default_padding(&f) + extra;
            let k = protection_of(&f).map(|_| keys());
            let p = SenderPackets::new(f, pad, PaddingFill::Random(seed), [0; 2], k).unwrap();
            let mut pkt = vec![0u8; p.len()];
            prop_assert_eq!(p.build(seq, 0x8001, &mut pkt, || t1).unwrap(), p.len());
            let mut reply = reflection(&f, &pkt, rseq);
            prop_assert_eq!(reply.len(), p.len(), "equal sizes");
            let (r, reflected) = p.open_reply(&mut reply).unwrap();
            prop_assert_eq!(r.sender_sequence_number, seq);
            prop_assert_eq!(r.sender_timestamp, t1);
            prop_assert_eq!(r.sender_error_estimate, 0x8001);
            prop_assert_eq!(r.sequence_number, rseq);
            prop_assert_eq!(r.receive_timestamp, [1, 2, 3, 4, 5, 6, 7, 8]);
            prop_assert_eq!(r.timestamp, [9; 8]);
            prop_assert_eq!(r.sender_ttl, 61);
            prop_assert_eq!(r.s_dscp_ecn, dscp_ecn.then_some(0xb9));
            prop_assert_eq!(r.error_estimate & 0x4000 != 0, ptp, "Z bit");
            prop_assert_eq!(reflected, (reflect > 0).then_some(true));
        }

        /// Arbitrary datagrams never panic the reply path: an error or a
        /// decoded header, nothing else.
        #[test]
        fn random_replies_never_panic(sec in 0u8..3, dscp_ecn: bool,
                                      data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let f = format(sec, 4, false, dscp_ecn, false);
            let k = protection_of(&f).map(|_| keys());
            let p = SenderPackets::new(f, default_padding(&f), PaddingFill::Zero, [0; 2], k).unwrap();
            let mut d = data.clone();
            match p.open_reply(&mut d) {
                Ok(_) => prop_assert!(data.len() >= f.reflector_header_len()),
                Err(ReplyError::Malformed(_)) => prop_assert!(data.len() < f.reflector_header_len()),
                Err(ReplyError::BadHmac) => prop_assert!(protection_of(&f).is_some()),
            }
        }

        /// A protected reflection with any one bit flipped in its covered
        /// region or HMAC is refused.
        #[test]
        fn tampered_protected_replies_are_refused(enc: bool, bit in 0usize..(112 * 8)) {
            let f = format(if enc { 2 } else { 1 }, 0, false, false, false);
            let p = SenderPackets::new(f, 64, PaddingFill::Zero, [0; 2], Some(keys())).unwrap();
            let mut pkt = vec![0u8; p.len()];
            p.build(1, 1, &mut pkt, || [3; 8]).unwrap();
            let mut reply = reflection(&f, &pkt, 0);
            let covered = if enc { 0..112 } else { 0..16 };
            let hmac = 96 * 8..112 * 8;
            prop_assume!(covered.contains(&(bit / 8)) || hmac.contains(&bit));
            reply[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(p.open_reply(&mut reply), Err(ReplyError::BadHmac));
        }
    }
}
