//! A conformance checker for observed STAMP / TWAMP-Light traffic: given
//! the packets of a peer (payload plus the IP facts a capture shows), lists
//! every way they disagree with RFC 8762, RFC 8972 (errata 8199, 8339) and,
//! for TWAMP Light, RFC 5357 — as `stamp.md` and `twamp-test.md` digest
//! them.
//!
//! Used against the golden captures of other implementations (their
//! deviations must be *detected*, never copied) and against Ricochet's own
//! replies (which must produce no finding). Not on any hot path: it
//! allocates its findings.

use core::net::{IpAddr, SocketAddr};

use super::packet::{ReflectorPacket, SenderPacket, StampLayout};
use super::reflect::ReflectorMode;
use super::tlv::{length_valid, tlv_type, TlvIter};
use super::tlvs::{
    parse_location_subs, ClassOfService, FollowUpTelemetry, LocationSub, TimestampInfo,
};
use crate::crypto::StampHmac;
use crate::time::{ErrorEstimate, PtpTimestamp, TaiOffset, TimeFormat};

/// Which protocol the traffic claims to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// STAMP (RFC 8762/8972): 44/112-octet base packets, TLVs after them.
    Stamp,
    /// TWAMP Light (RFC 5357 App. I): 14-octet sender, 41-octet reflector
    /// header, the rest is padding; TTL 255 SHOULD.
    TwampLight,
}

/// One packet as captured.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// UDP payload.
    pub payload: &'a [u8],
    /// IPv4 TTL / IPv6 Hop Limit.
    pub ttl: u8,
    /// IPv4 TOS / IPv6 Traffic Class.
    pub tos: u8,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Capture time, UTC nanoseconds since 1970, if known (used to tell
    /// which time scale a PTP timestamp counts in).
    pub capture_utc_ns: Option<u64>,
}

/// What the checker assumes about the session.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// Protocol.
    pub profile: Profile,
    /// Unauthenticated or authenticated base packets (STAMP).
    pub layout: StampLayout,
    /// The reflector's configured mode, if known.
    pub reflector_mode: Option<ReflectorMode>,
    /// TAI − UTC at capture time (37 s since 2017).
    pub tai_offset: TaiOffset,
    /// The HMAC key, to check base-packet and HMAC-TLV HMACs.
    pub hmac: Option<&'a StampHmac>,
}

/// A timestamp field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampField {
    /// The Session-Sender's Timestamp (T1).
    SenderTimestamp,
    /// The reflector's Timestamp (T3).
    ReflectorT3,
    /// The reflector's Receive Timestamp (T2).
    ReflectorT2,
}

/// One disagreement with the RFCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// STAMP sender packet shorter than the base packet (RFC 8762 §4.2).
    SenderShorterThanBase {
        /// Its length.
        len: usize,
        /// The base length.
        base: usize,
    },
    /// MBZ octets of a sender packet are not zero.
    SenderMbzNotZero,
    /// A sender filled the information fields of a Timestamp Information
    /// TLV (RFC 8972 §4.3: MUST be zero).
    SenderFilledTimestampInfo,
    /// TWAMP test packet not sent with TTL 255 (RFC 5357 §4.1.2, SHOULD).
    TtlNot255 {
        /// The TTL seen.
        ttl: u8,
    },
    /// A PTP timestamp (Z = 1) that counts UTC seconds instead of TAI
    /// seconds since the PTP epoch (IEEE 1588; RFC 8762 §4.2.1).
    PtpTimestampCountsUtc(TimestampField),
    /// A registered TLV with a Length invalid for its type.
    TlvBadLength {
        /// Type.
        tlv_type: u8,
        /// Length.
        length: u16,
    },
    /// The TLV chain does not frame (a Length past the end, a truncated
    /// header) and the reflector did not flag it M.
    TlvChainBroken,
    /// An HMAC TLV followed by a TLV other than Extra Padding (RFC 8972 §4.8).
    HmacTlvMisplaced,
    /// The base-packet HMAC does not verify.
    BadHmac,
    /// The HMAC TLV does not verify.
    BadTlvHmac,
    /// Reflector packet shorter than its header (41 TWAMP, 44/112 STAMP).
    ReflectorHeaderTooShort {
        /// Its length.
        len: usize,
        /// The header length.
        min: usize,
    },
    /// MBZ octets of a reflector packet are not zero.
    ReflectorMbzNotZero,
    /// T3 is bit-identical to T2 (one clock reading used for both).
    T3EqualsT2,
    /// Location sub-TLVs not in the RFC 8972 §4.2 format (4-octet header,
    /// IANA types, Length 8 or 16).
    LocationSubTlvFormat,
    /// Reply length ≠ max(request, header) (RFC 8762 §4.3 symmetric size;
    /// RFC 5357 §4.2.1).
    ReplySizeNotSymmetric {
        /// Request length.
        request: usize,
        /// Reply length.
        reply: usize,
    },
    /// The Session-Sender TTL field does not carry the request's IP TTL.
    SenderTtlMismatch {
        /// The field.
        field: u8,
        /// The TTL on the wire.
        wire: u8,
    },
    /// Sequence Number, Timestamp, Error Estimate or SSID not copied.
    FieldNotCopied,
    /// Stateless reflector whose Sequence Number is not the sender's.
    StatelessSequenceNotCopied,
    /// CoS reply: DSCP2 / ECN are not the DSCP / ECN the request arrived
    /// with (RFC 8972 §4.4, EID 8199).
    CosNotReflected,
    /// CoS reply: the reply's IP DSCP is neither DSCP1 (RP = 0) nor the
    /// received DSCP (RP = 1).
    CosDscpNotApplied,
    /// The Location TLV's Length in the reply differs from the request's.
    LocationLengthChanged {
        /// Request Length.
        from: u16,
        /// Reply Length.
        to: u16,
    },
    /// The Location ports are not the request's.
    LocationPortsWrong,
    /// A Location address is not the request's address.
    LocationAddressWrong,
    /// A Location address is the request's address with its octets reversed.
    LocationAddressByteOrder,
    /// A stateless reflector filled Follow-Up Telemetry (RFC 8972 §4.7:
    /// MUST zero Sequence Number and Timestamp).
    StatelessFollowUpFilled,
}

impl Violation {
    /// A stable short name.
    pub fn kind(&self) -> &'static str {
        use Violation as V;
        match self {
            V::SenderShorterThanBase { .. } => "sender_shorter_than_base",
            V::SenderMbzNotZero => "sender_mbz_not_zero",
            V::SenderFilledTimestampInfo => "sender_filled_timestamp_info",
            V::TtlNot255 { .. } => "ttl_not_255",
            V::PtpTimestampCountsUtc(TimestampField::SenderTimestamp) => "ptp_utc_sender_timestamp",
            V::PtpTimestampCountsUtc(TimestampField::ReflectorT3) => "ptp_utc_t3",
            V::PtpTimestampCountsUtc(TimestampField::ReflectorT2) => "ptp_utc_t2",
            V::TlvBadLength { .. } => "tlv_bad_length",
            V::TlvChainBroken => "tlv_chain_broken",
            V::HmacTlvMisplaced => "hmac_tlv_misplaced",
            V::BadHmac => "bad_hmac",
            V::BadTlvHmac => "bad_tlv_hmac",
            V::ReflectorHeaderTooShort { .. } => "reflector_header_too_short",
            V::ReflectorMbzNotZero => "reflector_mbz_not_zero",
            V::T3EqualsT2 => "t3_equals_t2",
            V::LocationSubTlvFormat => "location_sub_tlv_format",
            V::ReplySizeNotSymmetric { .. } => "reply_size_not_symmetric",
            V::SenderTtlMismatch { .. } => "sender_ttl_mismatch",
            V::FieldNotCopied => "field_not_copied",
            V::StatelessSequenceNotCopied => "stateless_sequence_not_copied",
            V::CosNotReflected => "cos_not_reflected",
            V::CosDscpNotApplied => "cos_dscp_not_applied",
            V::LocationLengthChanged { .. } => "location_length_changed",
            V::LocationPortsWrong => "location_ports_wrong",
            V::LocationAddressWrong => "location_address_wrong",
            V::LocationAddressByteOrder => "location_address_byte_order",
            V::StatelessFollowUpFilled => "stateless_follow_up_filled",
        }
    }
}

const TWAMP_SENDER_MIN: usize = 14;
const TWAMP_REFLECTOR_HEADER: usize = 41;

fn header_len(exp: &Expectations<'_>) -> usize {
    match exp.profile {
        Profile::Stamp => exp.layout.base_len(),
        Profile::TwampLight => TWAMP_REFLECTOR_HEADER,
    }
}

fn ptp_check(
    raw: [u8; 8],
    err: u16,
    capture: Option<u64>,
    offset: TaiOffset,
    field: TimestampField,
    out: &mut Vec<Violation>,
) {
    let (Some(cap), Ok(ee)) = (capture, ErrorEstimate::from_bits(err)) else {
        return;
    };
    if ee.format() != TimeFormat::Ptp {
        return;
    }
    let as_counted = PtpTimestamp::from_bytes(raw).to_tai_ns();
    let off_ns = i128::from(offset.0) * 1_000_000_000;
    let as_utc_if_tai = i128::from(as_counted) - off_ns;
    let near = |x: i128| (x - i128::from(cap)).abs() < 1_000_000_000;
    if offset.0 != 0 && !near(as_utc_if_tai) && near(i128::from(as_counted)) {
        out.push(Violation::PtpTimestampCountsUtc(field));
    }
}

/// The TLV area checks common to both directions; returns nothing.
fn check_tlvs(area: &[u8], sender: bool, out: &mut Vec<Violation>) {
    let mut hmac_seen = false;
    let mut misplaced = false;
    for t in TlvIter::framing_only(area) {
        let Ok(t) = t else {
            out.push(Violation::TlvChainBroken);
            break;
        };
        if t.malformed() {
            // Flagged by a reflector: the rest is copied unchanged.
            break;
        }
        let ty = t.tlv_type();
        if !length_valid(ty, t.length()) {
            out.push(Violation::TlvBadLength {
                tlv_type: ty,
                length: t.length(),
            });
            continue;
        }
        match ty {
            tlv_type::HMAC => hmac_seen = true,
            tlv_type::EXTRA_PADDING => {}
            _ => misplaced |= hmac_seen,
        }
        if sender && ty == tlv_type::TIMESTAMP_INFORMATION {
            if let Ok(ti) = TimestampInfo::new_checked(t.value()) {
                if !ti.info_is_zero() {
                    out.push(Violation::SenderFilledTimestampInfo);
                }
            }
        }
        if !sender && ty == tlv_type::LOCATION && !t.unrecognized() {
            let mut subs = [LocationSub::SourceMacRequest; 8];
            if parse_location_subs(t.value(), &mut subs).is_err() {
                out.push(Violation::LocationSubTlvFormat);
            }
        }
    }
    if misplaced {
        out.push(Violation::HmacTlvMisplaced);
    }
}

fn check_tlv_hmac(hmac: &StampHmac, seq: &[u8], area: &[u8], out: &mut Vec<Violation>) {
    let mut it = TlvIter::framing_only(area);
    loop {
        let pos = it.position();
        let Some(Ok(t)) = it.next() else { break };
        if t.tlv_type() == tlv_type::HMAC && t.length() == 16 {
            if hmac.verify(&[seq, &area[..pos]], t.value()).is_err() {
                out.push(Violation::BadTlvHmac);
            }
            break;
        }
    }
}

/// Checks a Session-Sender packet.
pub fn validate_sender(p: &Observed<'_>, exp: &Expectations<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    if exp.profile == Profile::TwampLight && p.ttl != 255 {
        out.push(Violation::TtlNot255 { ttl: p.ttl });
    }
    let min = match exp.profile {
        Profile::Stamp => exp.layout.base_len(),
        Profile::TwampLight => TWAMP_SENDER_MIN,
    };
    if p.payload.len() < min {
        if exp.profile == Profile::Stamp {
            out.push(Violation::SenderShorterThanBase {
                len: p.payload.len(),
                base: min,
            });
        }
        return out;
    }
    // TWAMP Light has one sender layout: the unauthenticated one.
    let layout = match exp.profile {
        Profile::Stamp => exp.layout,
        Profile::TwampLight => StampLayout::Unauthenticated,
    };
    let s = SenderPacket::new_unchecked(p.payload, layout);
    ptp_check(
        s.timestamp(),
        s.error_estimate_raw(),
        p.capture_utc_ns,
        exp.tai_offset,
        TimestampField::SenderTimestamp,
        &mut out,
    );
    if exp.profile == Profile::Stamp {
        if !s.mbz_is_zero() {
            out.push(Violation::SenderMbzNotZero);
        }
        let area = &p.payload[exp.layout.base_len()..];
        check_tlvs(area, true, &mut out);
        if let Some(h) = exp.hmac {
            if exp.layout == StampLayout::Authenticated && h.verify_packet(p.payload).is_err() {
                out.push(Violation::BadHmac);
            }
            check_tlv_hmac(h, &p.payload[..4], area, &mut out);
        }
    }
    out
}

/// Checks a Session-Reflector packet on its own.
pub fn validate_reflector(p: &Observed<'_>, exp: &Expectations<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    if exp.profile == Profile::TwampLight && p.ttl != 255 {
        out.push(Violation::TtlNot255 { ttl: p.ttl });
    }
    let min = header_len(exp);
    let len = p.payload.len();
    if len < min {
        out.push(Violation::ReflectorHeaderTooShort { len, min });
    }
    // T3 and T2 (and the Error Estimate) lie in the first 24 octets of the
    // unauthenticated layout, 40 of the authenticated one.
    let layout = match exp.profile {
        Profile::Stamp => exp.layout,
        Profile::TwampLight => StampLayout::Unauthenticated,
    };
    let stamps_end = match layout {
        StampLayout::Unauthenticated => 24,
        StampLayout::Authenticated => 40,
    };
    if len < stamps_end {
        return out;
    }
    let r = ReflectorPacket::new_unchecked(p.payload, layout);
    let (t3, t2) = (r.timestamp(), r.receive_timestamp());
    if t3 == t2 && t3 != [0; 8] {
        out.push(Violation::T3EqualsT2);
    }
    let ee = r.error_estimate_raw();
    let (cap, off) = (p.capture_utc_ns, exp.tai_offset);
    ptp_check(t3, ee, cap, off, TimestampField::ReflectorT3, &mut out);
    ptp_check(t2, ee, cap, off, TimestampField::ReflectorT2, &mut out);
    match exp.profile {
        Profile::TwampLight => {
            if len >= TWAMP_REFLECTOR_HEADER && p.payload[38..40] != [0, 0] {
                out.push(Violation::ReflectorMbzNotZero);
            }
        }
        Profile::Stamp => {
            if len < min {
                return out;
            }
            if !r.mbz_is_zero() {
                out.push(Violation::ReflectorMbzNotZero);
            }
            let area = &p.payload[min..];
            check_tlvs(area, false, &mut out);
            if let Some(h) = exp.hmac {
                if layout == StampLayout::Authenticated && h.verify_packet(p.payload).is_err() {
                    out.push(Violation::BadHmac);
                }
                check_tlv_hmac(h, &p.payload[..4], area, &mut out);
            }
        }
    }
    out
}

/// The first TLV of `ty` in `area` (framing only): (offset, flags, value).
fn find_tlv(area: &[u8], ty: u8) -> Option<(usize, u8, &[u8])> {
    let mut it = TlvIter::framing_only(area);
    loop {
        let pos = it.position();
        let t = it.next()?.ok()?;
        if t.tlv_type() == ty {
            let flags = t.flags();
            let b = t.into_inner();
            return Some((pos, flags, &b[4..]));
        }
    }
}

fn ip_octets(ip: IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// Checks the addresses of a Location reply: RFC sub-TLVs if they parse,
/// otherwise (to name a peer's private encoding) a 1-octet type / 1-octet
/// length walk, each address compared with the request's.
fn check_location_addresses(value: &[u8], req: &Observed<'_>, out: &mut Vec<Violation>) {
    let mut subs = [LocationSub::SourceMacRequest; 8];
    if let Ok(n) = parse_location_subs(value, &mut subs) {
        for s in &subs[..n] {
            match *s {
                LocationSub::DestinationIp(a) if a != req.dst.ip().to_canonical() => {
                    out.push(Violation::LocationAddressWrong)
                }
                LocationSub::SourceIp(a) if a != req.src.ip().to_canonical() => {
                    out.push(Violation::LocationAddressWrong)
                }
                _ => {}
            }
        }
        return;
    }
    let area = value.get(4..).unwrap_or(&[]);
    let known = [ip_octets(req.src.ip()), ip_octets(req.dst.ip())];
    let mut pos = 0;
    while pos + 2 <= area.len() {
        let l = usize::from(area[pos + 1]);
        let Some(v) = area.get(pos + 2..pos + 2 + l) else {
            break;
        };
        if l == 4 || l == 16 {
            let exact = known.iter().any(|(a, n)| *n == l && &a[..l] == v);
            let reversed = known
                .iter()
                .any(|(a, n)| *n == l && a[..l].iter().rev().eq(v.iter()));
            if !exact {
                out.push(if reversed {
                    Violation::LocationAddressByteOrder
                } else {
                    Violation::LocationAddressWrong
                });
            }
        }
        pos += 2 + l;
    }
}

/// Checks a reply against the request it answers.
pub fn validate_pair(
    req: &Observed<'_>,
    reply: &Observed<'_>,
    exp: &Expectations<'_>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let min = header_len(exp);
    let (rl, pl) = (req.payload.len(), reply.payload.len());
    if pl != rl.max(min) {
        out.push(Violation::ReplySizeNotSymmetric {
            request: rl,
            reply: pl,
        });
    }
    let layout = match exp.profile {
        Profile::Stamp => exp.layout,
        Profile::TwampLight => StampLayout::Unauthenticated,
    };
    let ttl_at = match layout {
        StampLayout::Unauthenticated => 40,
        StampLayout::Authenticated => 80,
    };
    if let Some(&f) = reply.payload.get(ttl_at) {
        if f != req.ttl {
            out.push(Violation::SenderTtlMismatch {
                field: f,
                wire: req.ttl,
            });
        }
    }
    // Copied sender fields: Sequence Number, Timestamp, Error Estimate.
    let (sseq, sts, see, rseq, rts, ree) = match layout {
        StampLayout::Unauthenticated => (0..4, 4..12, 12..14, 24..28, 28..36, 36..38),
        StampLayout::Authenticated => (0..4, 16..24, 24..26, 48..52, 64..72, 72..74),
    };
    let get = |b: &'_ [u8], r: core::ops::Range<usize>| b.get(r).map(<[u8]>::to_vec);
    if rl < see.end || pl < ree.end {
        return out;
    }
    if get(req.payload, sseq.clone()) != get(reply.payload, rseq)
        || get(req.payload, sts) != get(reply.payload, rts)
        || get(req.payload, see) != get(reply.payload, ree)
    {
        out.push(Violation::FieldNotCopied);
    }
    if exp.reflector_mode == Some(ReflectorMode::Stateless)
        && get(req.payload, sseq.clone()) != get(reply.payload, sseq)
    {
        out.push(Violation::StatelessSequenceNotCopied);
    }
    if exp.profile != Profile::Stamp {
        return out;
    }
    let base = exp.layout.base_len();
    if rl < base || pl < base {
        return out;
    }
    let ssid = exp.layout.ssid_offset()..exp.layout.ssid_offset() + 2;
    if req.payload[ssid.clone()] != reply.payload[ssid] {
        out.push(Violation::FieldNotCopied);
    }
    let (qa, pa) = (&req.payload[base..], &reply.payload[base..]);
    if let Some((_, flags, v)) = find_tlv(pa, tlv_type::CLASS_OF_SERVICE) {
        if let (Ok(c), true) = (ClassOfService::new_checked(v), flags & 0x80 == 0) {
            if c.dscp2() != req.tos >> 2 || c.ecn() != req.tos & 3 {
                out.push(Violation::CosNotReflected);
            }
            let want = if c.rp() == 0 { c.dscp1() } else { req.tos >> 2 };
            if reply.tos >> 2 != want {
                out.push(Violation::CosDscpNotApplied);
            }
        }
    }
    if let (Some((_, _, qv)), Some((_, pflags, pv))) = (
        find_tlv(qa, tlv_type::LOCATION),
        find_tlv(pa, tlv_type::LOCATION),
    ) {
        if qv.len() != pv.len() {
            out.push(Violation::LocationLengthChanged {
                from: u16::try_from(qv.len()).unwrap_or(u16::MAX),
                to: u16::try_from(pv.len()).unwrap_or(u16::MAX),
            });
        }
        if pflags & 0x80 == 0 && pv.len() >= 4 {
            if pv[0..2] != req.dst.port().to_be_bytes() || pv[2..4] != req.src.port().to_be_bytes()
            {
                out.push(Violation::LocationPortsWrong);
            }
            check_location_addresses(pv, req, &mut out);
        }
    }
    if exp.reflector_mode == Some(ReflectorMode::Stateless) {
        if let Some((_, _, v)) = find_tlv(pa, tlv_type::FOLLOW_UP_TELEMETRY) {
            if let Ok(f) = FollowUpTelemetry::new_checked(v) {
                if f.sequence_number() != 0 || f.timestamp() != [0; 8] {
                    out.push(Violation::StatelessFollowUpFilled);
                }
            }
        }
    }
    out
}
