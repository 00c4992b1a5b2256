//! STAMP harnesses: Session-Sender and Session-Reflector base packets in
//! both layouts (RFC 8762 §4.2, §4.3, RFC 8972 §3), [`reflect_stamp`], and
//! the RFC 8972 §4 TLV framing: [`TlvIter`], the [`Tlv`] view and
//! [`TlvRepr`], [`TlvWriter`] and [`process_tlvs_in_place`].
//!
//! The TLV checks compare against [`model_pass`], a direct transcription of
//! the RFC 8972 §4 reflector rules written independently of the crate's
//! implementation (it shares only the registry length table,
//! [`length_valid`]).

use core::ops::Range;

use ricochet_protocol::error::WireError;
use ricochet_protocol::stamp::packet::field;
use ricochet_protocol::stamp::tlv::{length_valid, FLAG_I, FLAG_M, FLAG_U};
use ricochet_protocol::stamp::{
    process_tlvs_in_place, reflect_stamp, set_t3, FramingOnly, ReflectorMode, ReflectorPacket,
    ReflectorRepr, SenderPacket, SenderRepr, StampFormat, StampLayout, Tlv, TlvEntry, TlvError,
    TlvHandler, TlvIter, TlvRepr, TlvSummary, TlvVerdict, TlvWriter,
};
use ricochet_protocol::time::{ErrorEstimate, TimeFormat};
use ricochet_protocol::twamp_test::{ReflectError, ReflectParams, RxMeta};

use crate::{assert_canary, bit, canary_buffer, error_estimate, exercise_timestamp, Input};

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn all_zero(packet: &[u8], ranges: &[Range<usize>]) -> bool {
    ranges
        .iter()
        .all(|r| packet[r.clone()].iter().all(|&b| b == 0))
}

fn zeroed(packet: &[u8], ranges: &[Range<usize>]) -> Vec<u8> {
    let mut v = packet.to_vec();
    for r in ranges {
        v[r.clone()].fill(0);
    }
    v
}

fn layout_of(auth: bool) -> StampLayout {
    if auth {
        StampLayout::Authenticated
    } else {
        StampLayout::Unauthenticated
    }
}

// ---------------------------------------------------------------------------
// Base packets.

/// Encodes the [`sender`] / [`reflector`] configuration (bit 0:
/// authenticated; then a TAI−UTC offset) in front of `packet`.
pub fn packet_input(layout: StampLayout, packet: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::from(layout == StampLayout::Authenticated)];
    v.extend_from_slice(&37i32.to_be_bytes());
    v.extend_from_slice(packet);
    v
}

/// Checks a refused `new_checked`: only below the base length, as Truncated.
fn assert_truncated(pkt: &[u8], base: usize, e: WireError) {
    assert!(pkt.len() < base, "{} octets rejected: {e}", pkt.len());
    assert!(
        matches!(e, WireError::Truncated { need, have, .. } if need == base && have == pkt.len()),
        "wrong error {e:?}"
    );
}

/// STAMP Session-Sender base packet (RFC 8762 §4.2.1, §4.2.2; SSID RFC 8972
/// §3): length check, accessors at the RFC offsets, `emit` over a copy.
pub fn sender(data: &[u8]) {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let offset = input.u32() as i32;
    let pkt = input.rest();
    let layout = layout_of(bit(cfg, 0));
    let (base, ts, ee, ssid, mbz, hmac): (usize, usize, usize, usize, &[Range<usize>], _) =
        match layout {
            StampLayout::Unauthenticated => {
                use field::sender as f;
                let base = f::BASE_LEN;
                (base, 4, 12, 14, &[f::MBZ], None)
            }
            StampLayout::Authenticated => {
                use field::auth_sender as f;
                (
                    f::BASE_LEN,
                    16,
                    24,
                    26,
                    &[f::MBZ_1, f::MBZ_2],
                    Some(f::HMAC),
                )
            }
        };
    let view = match SenderPacket::new_checked(pkt, layout) {
        Ok(v) => v,
        Err(e) => return assert_truncated(pkt, base, e),
    };
    let repr = SenderRepr::parse(&view).expect("a checked view parses");
    assert_eq!(repr.sequence_number, be32(pkt, 0));
    assert_eq!(repr.timestamp[..], pkt[ts..ts + 8]);
    assert_eq!(repr.error_estimate, be16(pkt, ee));
    assert_eq!(repr.ssid, be16(pkt, ssid));
    assert_eq!(repr.tlv_len, pkt.len() - base);
    assert_eq!(view.tlvs(), &pkt[base..]);
    assert_eq!(view.hmac(), hmac.clone().map(|r| &pkt[r]));
    assert_eq!(view.mbz_is_zero(), all_zero(pkt, mbz));
    assert_eq!(
        view.error_estimate().is_ok(),
        repr.error_estimate & 0xff != 0
    );
    assert_eq!(view.timestamp_decoded().to_bytes(), repr.timestamp);
    exercise_timestamp(repr.timestamp, repr.error_estimate, offset);

    let zero: Vec<_> = mbz.iter().cloned().chain(hmac).collect();
    let mut copy = pkt.to_vec();
    repr.emit(&mut SenderPacket::new_unchecked(&mut copy[..], layout))
        .expect("emit into the packet it was parsed from");
    assert_eq!(
        copy,
        zeroed(pkt, &zero),
        "emit changed more than MBZ and HMAC"
    );
    assert_eq!(
        SenderRepr::parse(&SenderPacket::new_unchecked(&copy[..], layout)),
        Ok(repr)
    );
    let mut short = pkt[..pkt.len() - 1].to_vec();
    let before = short.clone();
    assert!(repr
        .emit(&mut SenderPacket::new_unchecked(&mut short[..], layout))
        .is_err());
    assert_eq!(short, before, "a refused emit wrote octets");
}

/// STAMP Session-Reflector base packet (RFC 8762 §4.3.1, §4.3.2; SSID RFC
/// 8972 §3).
pub fn reflector(data: &[u8]) {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let offset = input.u32() as i32;
    let pkt = input.rest();
    let layout = layout_of(bit(cfg, 0));
    // (base, T3, EE, SSID, T2, sender seq, sender T1, sender EE, TTL)
    let (base, at, mbz, hmac): (usize, [usize; 8], Vec<Range<usize>>, _) = match layout {
        StampLayout::Unauthenticated => {
            use field::reflector as f;
            (
                f::BASE_LEN,
                [4, 12, 14, 16, 24, 28, 36, 40],
                vec![f::MBZ_1, f::MBZ_2],
                None,
            )
        }
        StampLayout::Authenticated => {
            use field::auth_reflector as f;
            (
                f::BASE_LEN,
                [16, 24, 26, 32, 48, 64, 72, 80],
                vec![f::MBZ_1, f::MBZ_2, f::MBZ_3, f::MBZ_4, f::MBZ_5, f::MBZ_6],
                Some(f::HMAC),
            )
        }
    };
    let view = match ReflectorPacket::new_checked(pkt, layout) {
        Ok(v) => v,
        Err(e) => return assert_truncated(pkt, base, e),
    };
    let r = ReflectorRepr::parse(&view).expect("a checked view parses");
    let [t3, ee, ssid, t2, sseq, sts, see, ttl] = at;
    assert_eq!(r.sequence_number, be32(pkt, 0));
    assert_eq!(r.timestamp[..], pkt[t3..t3 + 8]);
    assert_eq!(r.error_estimate, be16(pkt, ee));
    assert_eq!(r.ssid, be16(pkt, ssid));
    assert_eq!(r.receive_timestamp[..], pkt[t2..t2 + 8]);
    assert_eq!(r.sender_sequence_number, be32(pkt, sseq));
    assert_eq!(r.sender_timestamp[..], pkt[sts..sts + 8]);
    assert_eq!(r.sender_error_estimate, be16(pkt, see));
    assert_eq!(r.sender_ttl, pkt[ttl]);
    assert_eq!(r.tlv_len, pkt.len() - base);
    assert_eq!(view.tlvs(), &pkt[base..]);
    assert_eq!(view.hmac(), hmac.clone().map(|r| &pkt[r]));
    assert_eq!(view.mbz_is_zero(), all_zero(pkt, &mbz));
    assert_eq!(view.error_estimate().is_ok(), r.error_estimate & 0xff != 0);
    assert_eq!(view.timestamp_decoded().to_bytes(), r.timestamp);
    assert_eq!(
        view.receive_timestamp_decoded().to_bytes(),
        r.receive_timestamp
    );
    assert_eq!(
        view.sender_timestamp_decoded().to_bytes(),
        r.sender_timestamp
    );
    exercise_timestamp(r.timestamp, r.error_estimate, offset);
    exercise_timestamp(r.sender_timestamp, r.sender_error_estimate, offset);

    let zero: Vec<_> = mbz.into_iter().chain(hmac).collect();
    let mut copy = pkt.to_vec();
    r.emit(&mut ReflectorPacket::new_unchecked(&mut copy[..], layout))
        .expect("emit into the packet it was parsed from");
    assert_eq!(
        copy,
        zeroed(pkt, &zero),
        "emit changed more than MBZ and HMAC"
    );
    assert_eq!(
        ReflectorRepr::parse(&ReflectorPacket::new_unchecked(&copy[..], layout)),
        Ok(r)
    );
    let mut short = pkt[..pkt.len() - 1].to_vec();
    let before = short.clone();
    assert!(r
        .emit(&mut ReflectorPacket::new_unchecked(&mut short[..], layout))
        .is_err());
    assert_eq!(short, before, "a refused emit wrote octets");
}

// ---------------------------------------------------------------------------
// Reflection.

/// One STAMP reflection to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflectCase<'a> {
    /// Layout, numbering and timestamp format.
    pub fmt: StampFormat,
    /// TTL (and TOS, unused by STAMP) of the received packet.
    pub ttl: u8,
    /// The reflector's sequence number (stateful mode).
    pub seq: u32,
    /// T2, raw.
    pub t2: [u8; 8],
    /// The reflector's Error Estimate.
    pub error_estimate: ErrorEstimate,
    /// Reply cap; 0 stands for the received length.
    pub max_len: u16,
    /// Output buffer length (modulo 8192); 0 stands for exactly the reply
    /// length.
    pub out_len: u16,
    /// The received packet.
    pub rx: &'a [u8],
}

/// Octets of configuration in front of the received packet.
pub const REFLECT_CONFIG_LEN: usize = 20;

impl<'a> ReflectCase<'a> {
    /// Decodes flags (authenticated, stateful, PTP), cap, buffer, TTL,
    /// sequence number, T2 and Error Estimate, then the packet.
    pub fn decode(data: &'a [u8]) -> Self {
        let mut i = Input::new(data);
        let f = i.u8();
        let max_len = i.u16();
        let out_len = i.u16();
        let ttl = i.u8();
        let seq = i.u32();
        let t2 = i.array();
        let ee = error_estimate(i.u16());
        ReflectCase {
            fmt: StampFormat {
                layout: layout_of(bit(f, 0)),
                mode: if bit(f, 1) {
                    ReflectorMode::Stateful
                } else {
                    ReflectorMode::Stateless
                },
                timestamp_format: if bit(f, 2) {
                    TimeFormat::Ptp
                } else {
                    TimeFormat::Ntp
                },
            },
            ttl,
            seq,
            t2,
            error_estimate: ee,
            max_len,
            out_len,
            rx: i.rest(),
        }
    }

    /// The input that [`ReflectCase::decode`]s to this case.
    pub fn encode(&self) -> Vec<u8> {
        let f = u8::from(self.fmt.layout == StampLayout::Authenticated)
            | u8::from(self.fmt.mode == ReflectorMode::Stateful) << 1
            | u8::from(self.fmt.timestamp_format == TimeFormat::Ptp) << 2;
        let mut v = vec![f];
        v.extend_from_slice(&self.max_len.to_be_bytes());
        v.extend_from_slice(&self.out_len.to_be_bytes());
        v.push(self.ttl);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.t2);
        v.extend_from_slice(&self.error_estimate.to_bits().to_be_bytes());
        debug_assert_eq!(v.len(), REFLECT_CONFIG_LEN);
        v.extend_from_slice(self.rx);
        v
    }

    /// Base length (RFC 8762 §4.2.1, §4.2.2) and shortest packet answered
    /// (a 14-octet TWAMP-Light-size packet unauthenticated; the whole base
    /// when the HMAC must be verified).
    fn lengths(&self) -> (usize, usize) {
        match self.fmt.layout {
            StampLayout::Unauthenticated => (44, 14),
            StampLayout::Authenticated => (112, 112),
        }
    }
}

/// [`reflect_stamp`] on a decoded [`ReflectCase`], checked field by field
/// (RFC 8762 §4.3, RFC 8972 §3), then the RFC 8972 §4 framing pass with
/// [`FramingOnly`] on the reply's TLV area against [`model_pass`], then
/// [`set_t3`].
pub fn reflect(data: &[u8]) {
    let case = ReflectCase::decode(data);
    let fmt = &case.fmt;
    let rx = case.rx;
    let (base, min_rx) = case.lengths();
    let len = rx.len().max(base);
    let params = ReflectParams {
        seq: case.seq,
        t2: case.t2,
        error_estimate: case.error_estimate,
        max_len: match case.max_len {
            0 => rx.len(),
            n => usize::from(n),
        },
    };
    let mut out = canary_buffer(match case.out_len {
        0 => len,
        n => usize::from(n) % 8192,
    });
    let meta = RxMeta {
        ttl: case.ttl,
        tos: 0,
    };
    let result = reflect_stamp(fmt, rx, &meta, &params, &mut out);
    let expected = if rx.len() < min_rx {
        Err(ReflectError::TooShort {
            need: min_rx,
            have: rx.len(),
        })
    } else if len > params.max_len {
        Err(ReflectError::TooLong {
            len,
            max_len: params.max_len,
        })
    } else if out.len() < len {
        Err(ReflectError::BufferTooSmall {
            need: len,
            have: out.len(),
        })
    } else {
        Ok(len)
    };
    assert_eq!(result, expected, "{fmt:?}, {} octets received", rx.len());
    let Ok(n) = result else {
        return assert_canary(&out, "refused reflection");
    };
    assert!(n <= params.max_len, "reply of {n} above the cap");
    assert_canary(&out[n..], "reflection");

    let (s_ts, s_ee, s_ssid) = match fmt.layout {
        StampLayout::Unauthenticated => (4, 12, 14),
        StampLayout::Authenticated => (16, 24, 26),
    };
    let view = ReflectorPacket::new_checked(&out[..n], fmt.layout).expect("base fits");
    let r = ReflectorRepr::parse(&view).expect("reply parses");
    let sender_seq = be32(rx, 0);
    let stateful = fmt.mode == ReflectorMode::Stateful;
    assert_eq!(
        r.sequence_number,
        if stateful { case.seq } else { sender_seq }
    );
    assert_eq!(r.timestamp, [0; 8], "T3 is left zero for set_t3");
    let z = if fmt.timestamp_format == TimeFormat::Ptp {
        0x4000
    } else {
        0
    };
    assert_eq!(
        r.error_estimate,
        (case.error_estimate.to_bits() & !0x4000) | z
    );
    let ssid = if rx.len() >= s_ssid + 2 {
        be16(rx, s_ssid)
    } else {
        0
    };
    assert_eq!(r.ssid, ssid, "SSID copied (RFC 8972 §3)");
    assert_eq!(r.receive_timestamp, case.t2);
    assert_eq!(r.sender_sequence_number, sender_seq);
    assert_eq!(r.sender_timestamp[..], rx[s_ts..s_ts + 8]);
    assert_eq!(r.sender_error_estimate, be16(rx, s_ee));
    assert_eq!(r.sender_ttl, case.ttl);
    assert!(view.mbz_is_zero(), "MBZ octets in the reply");
    if let Some(h) = view.hmac() {
        assert!(h.iter().all(|&b| b == 0), "HMAC field left for the caller");
    }
    assert_eq!(view.tlvs(), rx.get(base..).unwrap_or(&[]), "TLVs copied");

    // The reflector's framing pass over the TLV area, as a data plane runs it:
    // the TLV area changes as RFC 8972 §4 says, nothing else does.
    let before = out.clone();
    let summary = process_tlvs_in_place(&mut out[base..n], &mut FramingOnly);
    let model = model_pass(
        &before[base..n],
        |t| t == 1,
        |_| (TlvVerdict::Processed, None::<Vec<u8>>),
    );
    assert_eq!(out[base..n], model.area[..], "framing pass vs RFC 8972 §4");
    assert_eq!(summary, model.summary);
    assert_eq!(out[..base], before[..base], "framing pass wrote the base");
    assert_canary(&out[n..], "framing pass");

    let t3 = case.t2.map(|b| b ^ 0x5a);
    let mut with_t3 = out[..n].to_vec();
    set_t3(&mut with_t3, fmt, t3).expect("a reply holds its base");
    let t3_at = if fmt.layout == StampLayout::Unauthenticated {
        4
    } else {
        16
    };
    assert_eq!(with_t3[t3_at..t3_at + 8], t3);
    with_t3[t3_at..t3_at + 8].fill(0);
    assert_eq!(with_t3, out[..n], "set_t3 wrote outside T3");
    let mut short = vec![0u8; base - 1];
    assert!(set_t3(&mut short, fmt, t3).is_err());
    assert!(short.iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------------------
// TLVs.

/// What the RFC 8972 §4 reflector rules make of a TLV area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPass {
    /// The area after the pass.
    pub area: Vec<u8>,
    /// Counts and where processing stopped.
    pub summary: TlvSummary,
    /// The TLVs handed to the handler, in order.
    pub calls: Vec<TlvEntry>,
}

/// The RFC 8972 §4 reflector pass, transcribed: walk the TLVs; a TLV whose
/// header does not fit, whose Length runs past the end or is invalid for a
/// registered type gets M and ends the walk; an unrecognised type gets U; a
/// recognised one is processed (`process` returns the verdict and,
/// optionally, the new value).
pub fn model_pass(
    area: &[u8],
    recognises: impl Fn(u8) -> bool,
    process: impl Fn(&[u8]) -> (TlvVerdict, Option<Vec<u8>>),
) -> ModelPass {
    let mut out = area.to_vec();
    let mut summary = TlvSummary::default();
    let mut calls = Vec::new();
    let mut pos = 0;
    while pos < area.len() {
        let left = area.len() - pos;
        let framed = left >= 4 && {
            let ty = area[pos + 1];
            let length = be16(area, pos + 2);
            usize::from(length) <= left - 4 && length_valid(ty, length)
        };
        if !framed {
            out[pos] |= FLAG_M;
            summary.malformed_at = Some(pos);
            break;
        }
        let ty = area[pos + 1];
        let end = pos + 4 + usize::from(be16(area, pos + 2));
        let verdict = if recognises(ty) {
            calls.push(TlvEntry {
                offset: pos,
                flags: area[pos],
                tlv_type: ty,
            });
            let (v, value) = process(&area[pos + 4..end]);
            if let Some(value) = value {
                out[pos + 4..end].copy_from_slice(&value);
            }
            v
        } else {
            TlvVerdict::Unrecognized
        };
        match verdict {
            TlvVerdict::Processed => {
                out[pos] &= !FLAG_U;
                summary.processed += 1;
            }
            TlvVerdict::Unrecognized => {
                out[pos] |= FLAG_U;
                summary.unrecognized += 1;
            }
            TlvVerdict::Malformed => {
                out[pos] |= FLAG_M;
                summary.malformed_at = Some(pos);
                break;
            }
        }
        pos = end;
    }
    ModelPass {
        area: out,
        summary,
        calls,
    }
}

/// The fuzz handler's verdict on a value: from its first octet (an empty
/// value is processed).
fn fuzz_verdict(value: &[u8]) -> TlvVerdict {
    match value.first().map(|b| b % 3) {
        None | Some(0) => TlvVerdict::Processed,
        Some(1) => TlvVerdict::Unrecognized,
        _ => TlvVerdict::Malformed,
    }
}

/// A handler recognising the types of a 32-octet bitmap; it inverts the
/// values it processes and records every call.
struct FuzzHandler {
    types: [u8; 32],
    calls: Vec<TlvEntry>,
}

impl FuzzHandler {
    fn recognises_type(types: &[u8; 32], t: u8) -> bool {
        types[usize::from(t / 8)] & (1 << (t % 8)) != 0
    }
}

impl TlvHandler for FuzzHandler {
    fn recognises(&self, tlv_type: u8) -> bool {
        Self::recognises_type(&self.types, tlv_type)
    }

    fn process(&mut self, entry: &TlvEntry, value: &mut [u8]) -> TlvVerdict {
        self.calls.push(*entry);
        let v = fuzz_verdict(value);
        if v == TlvVerdict::Processed {
            value.iter_mut().for_each(|b| *b = !*b);
        }
        v
    }
}

/// Octets of handler configuration in front of the TLV area of
/// [`tlv_process`].
pub const TLV_PROCESS_CONFIG_LEN: usize = 32;

/// [`process_tlvs_in_place`] with a handler recognising the types of a
/// 32-octet bitmap (the first input octets) and a verdict from each value's
/// first octet: the area after the pass, the summary and the handler calls
/// equal [`model_pass`]; the length never changes; only flag octets and the
/// values of processed TLVs change.
pub fn tlv_process(data: &[u8]) {
    let mut input = Input::new(data);
    let types: [u8; 32] = input.array();
    let area = input.rest();
    let mut handler = FuzzHandler {
        types,
        calls: Vec::new(),
    };
    let mut buf = area.to_vec();
    let summary = process_tlvs_in_place(&mut buf[..], &mut handler);
    assert_eq!(buf.len(), area.len(), "the pass changed the length");
    let model = model_pass(
        area,
        |t| FuzzHandler::recognises_type(&types, t),
        |v| match fuzz_verdict(v) {
            TlvVerdict::Processed => (TlvVerdict::Processed, Some(v.iter().map(|b| !b).collect())),
            other => (other, None),
        },
    );
    assert_eq!(buf, model.area, "pass vs RFC 8972 §4");
    assert_eq!(summary, model.summary);
    assert_eq!(handler.calls, model.calls);
    // FramingOnly agrees with the model too.
    let mut buf = area.to_vec();
    let summary = process_tlvs_in_place(&mut buf[..], &mut FramingOnly);
    let model = model_pass(area, |t| t == 1, |_| (TlvVerdict::Processed, None));
    assert_eq!(buf, model.area);
    assert_eq!(summary, model.summary);
}

/// [`TlvIter`] (registry-checked when bit 0 of the first octet is clear,
/// framing only when set) against the RFC 8972 §4 framing: contiguous TLVs,
/// each header and value in bounds, the first malformed one reported with
/// its offset and kind, nothing after it. Each TLV's [`Tlv`] view and
/// [`TlvRepr`] round trip; the view's flag setters touch only their bit.
pub fn tlv_iter(data: &[u8]) {
    let mut input = Input::new(data);
    let framing_only = bit(input.u8(), 0);
    let area = input.rest();
    let mut iter = if framing_only {
        TlvIter::framing_only(area)
    } else {
        TlvIter::new(area)
    };
    let mut pos = 0;
    loop {
        assert_eq!(iter.position(), pos);
        let item = iter.next();
        let left = area.len().saturating_sub(pos);
        if left == 0 {
            assert!(item.is_none(), "a TLV past the end");
            break;
        }
        let expected_err = if left < 4 {
            Some(TlvError::TruncatedHeader {
                offset: pos,
                have: left,
            })
        } else {
            let ty = area[pos + 1];
            let length = be16(area, pos + 2);
            if usize::from(length) > left - 4 {
                Some(TlvError::Overrun {
                    offset: pos,
                    tlv_type: ty,
                    length,
                    available: left - 4,
                })
            } else if !framing_only && !length_valid(ty, length) {
                Some(TlvError::BadLength {
                    offset: pos,
                    tlv_type: ty,
                    length,
                })
            } else {
                None
            }
        };
        match (item, expected_err) {
            (Some(Err(e)), Some(x)) => {
                assert_eq!(e, x);
                assert_eq!(e.offset(), Some(pos));
                assert!(iter.next().is_none(), "items after an error");
                assert!(iter.next().is_none(), "not fused");
                break;
            }
            (Some(Ok(tlv)), None) => {
                let length = be16(area, pos + 2);
                let total = 4 + usize::from(length);
                assert_eq!(tlv.total_len(), total);
                assert_eq!(tlv.flags(), area[pos]);
                assert_eq!(tlv.tlv_type(), area[pos + 1]);
                assert_eq!(tlv.length(), length);
                assert_eq!(tlv.value(), &area[pos + 4..pos + total]);
                check_tlv_view(&area[pos..pos + total]);
                pos += total;
            }
            (item, x) => panic!("at {pos}: got {item:?}, expected error {x:?}"),
        }
    }

    // The view on the whole area checks only the first TLV's framing.
    let first_fits = area.len() >= 4 && usize::from(be16(area, 2)) <= area.len() - 4;
    assert_eq!(Tlv::new_checked(area).is_ok(), first_fits);
}

/// A well-framed TLV's view, `TlvRepr` round trip and flag setters.
fn check_tlv_view(octets: &[u8]) {
    let tlv = Tlv::new_checked(octets).expect("well framed");
    assert_eq!(tlv.unrecognized(), octets[0] & FLAG_U != 0);
    assert_eq!(tlv.malformed(), octets[0] & FLAG_M != 0);
    assert_eq!(tlv.integrity_failed(), octets[0] & FLAG_I != 0);
    let repr = TlvRepr::parse(&tlv).expect("checked view parses");
    assert_eq!(repr.buffer_len(), octets.len());
    let mut copy = vec![0u8; octets.len()];
    copy[4..].copy_from_slice(&octets[4..]);
    repr.emit(&mut Tlv::new_unchecked(&mut copy[..]))
        .expect("room for the header");
    assert_eq!(copy, octets, "TlvRepr emit");
    let mut short = vec![0u8; octets.len() - 1];
    assert!(repr.emit(&mut Tlv::new_unchecked(&mut short[..])).is_err());
    assert!(short.iter().all(|&b| b == 0), "a refused emit wrote octets");

    for (flag, set) in [
        (FLAG_U, Tlv::set_unrecognized as fn(&mut Tlv<Vec<u8>>, bool)),
        (FLAG_M, Tlv::set_malformed),
        (FLAG_I, Tlv::set_integrity_failed),
    ] {
        for on in [false, true] {
            let mut t = Tlv::new_unchecked(octets.to_vec());
            set(&mut t, on);
            let b = t.into_inner();
            let want = if on {
                octets[0] | flag
            } else {
                octets[0] & !flag
            };
            assert_eq!(b[0], want);
            assert_eq!(b[1..], octets[1..]);
        }
    }
}

/// [`TlvWriter`]: a buffer size, then operations (flags, type, value length,
/// value octets; bit 0 of the type octet's partner selects `reserve` or
/// `push`, and an occasional over-long value): every accepted TLV is read
/// back by [`TlvIter::framing_only`] as written, a refused one writes
/// nothing and reports the right room.
pub fn tlv_writer(data: &[u8]) {
    let mut input = Input::new(data);
    let size = usize::from(input.u16() % 4096);
    let mut buf = vec![0xeeu8; size];
    let mut written: Vec<(u8, u8, Vec<u8>)> = Vec::new();
    let mut pos = 0;
    {
        let mut w = TlvWriter::new(&mut buf);
        for _ in 0..64 {
            if input.clone().rest().is_empty() {
                break;
            }
            let op = input.u8();
            let flags = input.u8();
            let ty = input.u8();
            let vlen = usize::from(input.u8());
            let value: Vec<u8> = (0..vlen).map(|_| input.u8()).collect();
            if op % 16 == 15 {
                let huge = vec![0u8; 65_536];
                assert_eq!(
                    w.push(flags, ty, &huge),
                    Err(TlvError::ValueTooLong { len: 65_536 })
                );
                assert_eq!(w.position(), pos);
                continue;
            }
            let need = 4 + vlen;
            let room = size - pos;
            let r = if bit(op, 0) {
                w.reserve(flags, ty, vlen as u16).map(|v| {
                    assert!(v.len() == vlen && v.iter().all(|&b| b == 0));
                    v.copy_from_slice(&value);
                })
            } else {
                w.push(flags, ty, &value)
            };
            if need > room {
                assert_eq!(
                    r,
                    Err(TlvError::NoSpace {
                        offset: pos,
                        need,
                        have: room
                    })
                );
            } else {
                assert_eq!(r, Ok(()));
                written.push((flags, ty, value));
                pos += need;
            }
            assert_eq!(w.position(), pos);
            assert_eq!(w.remaining(), size - pos);
        }
        assert_eq!(w.finish(), pos);
    }
    assert!(buf[pos..].iter().all(|&b| b == 0xee), "wrote past the TLVs");
    let read: Vec<_> = TlvIter::framing_only(&buf[..pos])
        .map(|t| {
            let t = t.expect("writer output is well framed");
            (t.flags(), t.tlv_type(), t.value().to_vec())
        })
        .collect();
    assert_eq!(read, written);
}

/// The typed TLV layer (RFC 8972 §4.2–§4.8, RFC 9503, RFC 9534) and the
/// conformance checker over arbitrary TLV areas: input = 1 octet of
/// configuration (bit 0: IPv6 addresses, bit 1: a source MAC is known,
/// bit 2: CoS policy permits DSCP1), 1 octet of received TOS, then the
/// area. Every TLV is decoded with [`StampTlv::parse`] (never panics), the
/// reflector's fill functions run on the value in place; invariants: the
/// area keeps its length, a Location fill writes the ports and leaves
/// every octet outside the value alone, CoS writes DSCP2/ECN from the
/// received TOS, Follow-Up and Direct Measurement round-trip their Reprs.
pub fn tlv_typed(data: &[u8]) {
    use ricochet_protocol::stamp::tlvs::{
        fill_location, parse_location_subs, reflect_class_of_service, ClassOfService, FollowUpRepr,
        FollowUpTelemetry, LocationContext, LocationSub, ReturnPathRepr, StampTlv,
    };
    use ricochet_protocol::stamp::validate::{
        validate_pair, validate_reflector, validate_sender, Expectations, Observed, Profile,
    };

    let mut input = Input::new(data);
    let cfg = input.u8();
    let tos = input.u8();
    let area_in = &data[data.len().min(2)..];
    let mut area = area_in.to_vec();
    let (src, dst): (core::net::SocketAddr, core::net::SocketAddr) = if bit(cfg, 0) {
        (
            "[2001:2::1]:40000".parse().unwrap(),
            "[2001:2::2]:862".parse().unwrap(),
        )
    } else {
        (
            "198.18.0.1:40000".parse().unwrap(),
            "198.18.0.2:862".parse().unwrap(),
        )
    };
    let ctx = LocationContext {
        source: src,
        destination: dst,
        source_mac: bit(cfg, 1).then_some([2, 0, 0, 0, 0, 1]),
    };
    let mut pos = 0;
    while let Some(Ok(t)) = TlvIter::framing_only(&area[pos..]).next() {
        let (ty, total) = (t.tlv_type(), t.total_len());
        let vstart = pos + 4;
        let vend = pos + total;
        let _ = StampTlv::parse(ty, &area[vstart..vend]);
        let _ = ReturnPathRepr::parse(&area[vstart..vend]);
        let before = area.clone();
        match ty {
            2 => {
                let r = fill_location(&mut area[vstart..vend], &ctx);
                if vend - vstart >= 4 {
                    assert_eq!(be16(&area, vstart), 862);
                    assert_eq!(be16(&area, vstart + 2), 40000);
                    let mut subs = [LocationSub::SourceMacRequest; 4];
                    if r.is_ok() {
                        assert!(parse_location_subs(&area[vstart..vend], &mut subs).is_ok());
                    }
                } else {
                    assert!(r.is_err());
                }
            }
            4 => {
                if let Ok(mut c) = ClassOfService::new_checked(&mut area[vstart..vend]) {
                    let d = reflect_class_of_service(&mut c, tos, |_| bit(cfg, 2));
                    let c = ClassOfService::new_checked(&area[vstart..vend]).unwrap();
                    assert_eq!(c.dscp2(), tos >> 2);
                    assert_eq!(c.ecn(), tos & 3);
                    assert_eq!(c.rp(), u8::from(!d.honoured));
                    assert_eq!(c.dscp1(), before[vstart] >> 2);
                }
            }
            7 => {
                if let Ok(f) = FollowUpTelemetry::new_checked(&area[vstart..vend]) {
                    let r = FollowUpRepr::parse(&f);
                    let mut b = r.to_bytes();
                    b[13..16].copy_from_slice(&area[vstart + 13..vend]);
                    assert_eq!(&b[..], &area[vstart..vend]);
                }
            }
            _ => {}
        }
        assert_eq!(&area[..vstart], &before[..vstart]);
        assert_eq!(&area[vend..], &before[vend..]);
        pos = vend;
    }
    assert_eq!(area.len(), area_in.len());
    // The checker over the area as a request and as a reply.
    let mut req = vec![0u8; 44];
    req.extend_from_slice(area_in);
    let mut rep = vec![0u8; 44];
    rep.extend_from_slice(&area);
    let exp = Expectations {
        profile: Profile::Stamp,
        layout: StampLayout::Unauthenticated,
        reflector_mode: Some(ReflectorMode::Stateless),
        tai_offset: ricochet_protocol::time::TaiOffset(37),
        hmac: None,
    };
    fn o(p: &[u8], tos: u8, s: core::net::SocketAddr, d: core::net::SocketAddr) -> Observed<'_> {
        Observed {
            payload: p,
            ttl: 64,
            tos,
            src: s,
            dst: d,
            capture_utc_ns: None,
        }
    }
    let _ = validate_sender(&o(&req, tos, src, dst), &exp);
    let _ = validate_reflector(&o(&rep, tos, dst, src), &exp);
    let _ = validate_pair(&o(&req, tos, src, dst), &o(&rep, tos, dst, src), &exp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_case_round_trips() {
        let rx = [9u8; 50];
        let case = ReflectCase {
            fmt: StampFormat {
                layout: StampLayout::Authenticated,
                mode: ReflectorMode::Stateful,
                timestamp_format: TimeFormat::Ptp,
            },
            ttl: 255,
            seq: 77,
            t2: [8; 8],
            error_estimate: error_estimate(0x0001),
            max_len: 0,
            out_len: 512,
            rx: &rx,
        };
        let bytes = case.encode();
        assert_eq!(bytes.len(), REFLECT_CONFIG_LEN + rx.len());
        assert_eq!(ReflectCase::decode(&bytes), case);
    }

    #[test]
    fn model_flags_the_rfc_8972_cases() {
        // Extra Padding (recognised), an unknown type, then a Class of
        // Service with a bad Length: processed, U, M and stop.
        let area = [
            0x80, 1, 0, 1, 0xaa, // Extra Padding, U set by the sender
            0x00, 200, 0, 0, // unknown type 200
            0x00, 4, 0, 2, 0, 0, // CoS must be 4 long
            0x00, 1, 0, 0, // never reached
        ];
        let m = model_pass(&area, |t| t == 1, |_| (TlvVerdict::Processed, None));
        assert_eq!(m.area[0], 0x00);
        assert_eq!(m.area[5], FLAG_U);
        assert_eq!(m.area[9], FLAG_M);
        assert_eq!(m.area[15..], area[15..]);
        assert_eq!(
            m.summary,
            TlvSummary {
                processed: 1,
                unrecognized: 1,
                malformed_at: Some(9)
            }
        );
        // A truncated header at the end is malformed too.
        let m = model_pass(&[0, 1, 0], |_| true, |_| (TlvVerdict::Processed, None));
        assert_eq!(m.area, [FLAG_M, 1, 0]);
    }
}
