//! TWAMP-Test harnesses: Session-Sender and Session-Reflector packet views
//! and `Repr`s in every layout (RFC 5357 §4.1.2, §4.2.1, RFC 7750 §3), and
//! the reflection builders [`reflect_twamp`] / [`reflect_twamp_light`]
//! (RFC 5357 §4.2.1 and Appendix I, RFC 6038, RFC 8186).
//!
//! Expected values are computed here from the RFC layouts (the `field`
//! offset constants) and the length rule `max(received, reflector header +
//! reflected octets present)`, not by calling the code under test again.

use core::ops::Range;

use ricochet_protocol::error::WireError;
use ricochet_protocol::time::{ErrorEstimate, TimeFormat};
use ricochet_protocol::twamp_test::packet::field;
use ricochet_protocol::twamp_test::{
    reflect_twamp, reflect_twamp_light, set_t3, AuthSymmetricalMbz, ReflectError, ReflectOctets,
    ReflectParams, ReflectorLayout, ReflectorPacket, ReflectorRepr, RxMeta, SenderPacket,
    SenderRepr, SessionFormat, TestLayout, TestSecurity, UnauthSymmetricalMbz,
};

use crate::{assert_canary, bit, canary_buffer, error_estimate, exercise_timestamp, Input};

/// Copies `packet` with `ranges` zeroed: what an `emit` over a copy of a
/// packet must produce (MBZ and HMAC zeroed, everything else kept).
fn zeroed(packet: &[u8], ranges: &[Range<usize>]) -> Vec<u8> {
    let mut v = packet.to_vec();
    for r in ranges {
        v[r.clone()].fill(0);
    }
    v
}

/// Whether every octet of `ranges` is zero.
fn all_zero(packet: &[u8], ranges: &[Range<usize>]) -> bool {
    ranges
        .iter()
        .all(|r| packet[r.clone()].iter().all(|&b| b == 0))
}

/// Reads a big-endian u16 at `at`.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u32 at `at`.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

// ---------------------------------------------------------------------------
// Packet views.

/// Configuration octets of [`sender`]: layout selector (bit 0:
/// authenticated/encrypted) and a TAI−UTC offset for timestamp decoding.
pub const SENDER_CONFIG_LEN: usize = 5;

/// Encodes the [`sender`] configuration in front of `packet`.
pub fn sender_input(layout: TestLayout, packet: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::from(layout == TestLayout::Authenticated)];
    v.extend_from_slice(&37i32.to_be_bytes());
    v.extend_from_slice(packet);
    v
}

/// Session-Sender packet view and `Repr` (RFC 5357 §4.1.2): the length check,
/// every accessor, and `emit` over a copy giving the same packet with MBZ and
/// HMAC zeroed, which parses back to the same `Repr`.
pub fn sender(data: &[u8]) {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let offset = input.u32() as i32;
    let pkt = input.rest();
    let (layout, header, mbz, hmac): (_, usize, &[Range<usize>], _) = if bit(cfg, 0) {
        use field::auth_sender as f;
        (
            TestLayout::Authenticated,
            f::HEADER_LEN,
            &[f::MBZ_1, f::MBZ_2],
            Some(f::HMAC),
        )
    } else {
        (
            TestLayout::Unauthenticated,
            field::sender::HEADER_LEN,
            &[],
            None,
        )
    };
    let view = match SenderPacket::new_checked(pkt, layout) {
        Ok(v) => v,
        Err(e) => {
            assert!(pkt.len() < header, "{} octets rejected: {e}", pkt.len());
            assert!(
                matches!(e, WireError::Truncated { need, have, .. } if need == header && have == pkt.len()),
                "wrong error {e:?}"
            );
            return;
        }
    };
    assert!(pkt.len() >= header, "{} octets accepted", pkt.len());
    let repr = SenderRepr::parse(&view).expect("a checked view parses");
    assert_eq!(repr.padding_len, pkt.len() - header);
    assert_eq!(view.padding(), &pkt[header..]);
    assert_eq!(view.hmac(), hmac.clone().map(|r| &pkt[r]));
    assert_eq!(
        view.error_estimate().is_ok(),
        repr.error_estimate & 0xff != 0,
        "Error Estimate is valid iff its Multiplier is not 0"
    );
    assert_eq!(view.mbz_is_zero(), all_zero(pkt, mbz));
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
    let again = SenderRepr::parse(&SenderPacket::new_unchecked(&copy[..], layout));
    assert_eq!(again, Ok(repr));

    // One octet short: refused, nothing written.
    let mut short = pkt[..pkt.len() - 1].to_vec();
    let before = short.clone();
    assert!(repr
        .emit(&mut SenderPacket::new_unchecked(&mut short[..], layout))
        .is_err());
    assert_eq!(short, before, "a refused emit wrote octets");
}

/// Configuration octets of [`reflector`]: layout selector (bit 0:
/// authenticated, bit 1: RFC 7750) and a TAI−UTC offset.
pub const REFLECTOR_CONFIG_LEN: usize = 5;

/// Encodes the [`reflector`] configuration in front of `packet`.
pub fn reflector_input(layout: ReflectorLayout, packet: &[u8]) -> Vec<u8> {
    let cfg = u8::from(layout.test == TestLayout::Authenticated) | (u8::from(layout.dscp_ecn) << 1);
    let mut v = vec![cfg];
    v.extend_from_slice(&37i32.to_be_bytes());
    v.extend_from_slice(packet);
    v
}

/// Session-Reflector packet view and `Repr` (RFC 5357 §4.2.1, RFC 7750 §3)
/// in the four layouts (41, 44, 112, 112 octets).
pub fn reflector(data: &[u8]) {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let offset = input.u32() as i32;
    let pkt = input.rest();
    let layout = ReflectorLayout {
        test: if bit(cfg, 0) {
            TestLayout::Authenticated
        } else {
            TestLayout::Unauthenticated
        },
        dscp_ecn: bit(cfg, 1),
    };
    let (header, seq_at, ttl_at, dscp_at, mbz, hmac): (usize, _, _, _, Vec<Range<usize>>, _) =
        match (layout.test, layout.dscp_ecn) {
            (TestLayout::Unauthenticated, false) => {
                use field::reflector as f;
                (
                    f::HEADER_LEN,
                    f::SENDER_SEQ.start,
                    f::SENDER_TTL,
                    None,
                    vec![f::MBZ_1, f::MBZ_2],
                    None,
                )
            }
            (TestLayout::Unauthenticated, true) => {
                use field::reflector as f;
                (
                    f::HEADER_LEN_DSCP_ECN,
                    f::SENDER_SEQ.start,
                    f::SENDER_TTL,
                    Some(f::S_DSCP_ECN),
                    vec![f::MBZ_1, f::MBZ_2, f::MBZ_3],
                    None,
                )
            }
            (TestLayout::Authenticated, dscp) => {
                use field::auth_reflector as f;
                let last = if dscp { f::MBZ_6_DSCP_ECN } else { f::MBZ_6 };
                (
                    f::HEADER_LEN,
                    f::SENDER_SEQ.start,
                    f::SENDER_TTL,
                    dscp.then_some(f::S_DSCP_ECN),
                    vec![f::MBZ_1, f::MBZ_2, f::MBZ_3, f::MBZ_4, f::MBZ_5, last],
                    Some(f::HMAC),
                )
            }
        };
    let view = match ReflectorPacket::new_checked(pkt, layout) {
        Ok(v) => v,
        Err(e) => {
            assert!(pkt.len() < header, "{} octets rejected: {e}", pkt.len());
            assert!(
                matches!(e, WireError::Truncated { need, have, .. } if need == header && have == pkt.len()),
                "wrong error {e:?}"
            );
            return;
        }
    };
    assert!(pkt.len() >= header, "{} octets accepted", pkt.len());
    let repr = ReflectorRepr::parse(&view).expect("a checked view parses");
    assert_eq!(repr.padding_len, pkt.len() - header);
    assert_eq!(view.padding(), &pkt[header..]);
    assert_eq!(repr.sender_sequence_number, be32(pkt, seq_at));
    assert_eq!(repr.sender_ttl, pkt[ttl_at]);
    assert_eq!(repr.s_dscp_ecn, dscp_at.map(|at| pkt[at]));
    assert_eq!(view.hmac(), hmac.clone().map(|r| &pkt[r]));
    assert_eq!(view.mbz_is_zero(), all_zero(pkt, &mbz));
    assert_eq!(
        view.error_estimate().is_ok(),
        repr.error_estimate & 0xff != 0
    );
    assert_eq!(
        view.sender_error_estimate().is_ok(),
        repr.sender_error_estimate & 0xff != 0
    );
    exercise_timestamp(repr.timestamp, repr.error_estimate, offset);
    exercise_timestamp(repr.receive_timestamp, repr.error_estimate, offset);
    exercise_timestamp(repr.sender_timestamp, repr.sender_error_estimate, offset);
    assert_eq!(view.timestamp_decoded().to_bytes(), repr.timestamp);
    assert_eq!(
        view.receive_timestamp_decoded().to_bytes(),
        repr.receive_timestamp
    );
    assert_eq!(
        view.sender_timestamp_decoded().to_bytes(),
        repr.sender_timestamp
    );

    let zero: Vec<_> = mbz.into_iter().chain(hmac).collect();
    let mut copy = pkt.to_vec();
    repr.emit(&mut ReflectorPacket::new_unchecked(&mut copy[..], layout))
        .expect("emit into the packet it was parsed from");
    assert_eq!(
        copy,
        zeroed(pkt, &zero),
        "emit changed more than MBZ and HMAC"
    );
    let again = ReflectorRepr::parse(&ReflectorPacket::new_unchecked(&copy[..], layout));
    assert_eq!(again, Ok(repr));

    // The view's layout must agree with the repr's S-DSCP-ECN.
    let other = ReflectorLayout {
        dscp_ecn: !layout.dscp_ecn,
        ..layout
    };
    let mut big = vec![0u8; pkt.len() + 3];
    assert!(matches!(
        repr.emit(&mut ReflectorPacket::new_unchecked(&mut big[..], other)),
        Err(WireError::BadField { .. })
    ));
    assert!(big.iter().all(|&b| b == 0), "a refused emit wrote octets");

    // One octet short: refused, nothing written.
    let mut short = pkt[..pkt.len() - 1].to_vec();
    let before = short.clone();
    assert!(repr
        .emit(&mut ReflectorPacket::new_unchecked(&mut short[..], layout))
        .is_err());
    assert_eq!(short, before, "a refused emit wrote octets");
}

// ---------------------------------------------------------------------------
// Reflection.

/// One reflection to build: the negotiated format, the per-packet inputs and
/// the received plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflectCase<'a> {
    /// The session's negotiated test format.
    pub fmt: SessionFormat,
    /// TTL and TOS of the received packet.
    pub meta: RxMeta,
    /// The reflector's sequence number (stateful builder only).
    pub seq: u32,
    /// T2, raw.
    pub t2: [u8; 8],
    /// The reflector's Error Estimate.
    pub error_estimate: ErrorEstimate,
    /// Reply cap; 0 stands for the received length (a stateless listener's
    /// no-amplification cap).
    pub max_len: u16,
    /// Output buffer length (modulo 8192); 0 stands for exactly the reply
    /// length.
    pub out_len: u16,
    /// The received sender packet (plaintext).
    pub rx: &'a [u8],
}

/// Octets of configuration in front of the received packet.
pub const REFLECT_CONFIG_LEN: usize = 26;

impl<'a> ReflectCase<'a> {
    /// Decodes a case: flags, RFC 6038 Reflect Octets, cap, buffer, TTL,
    /// TOS, sequence number, T2, Error Estimate, then the packet.
    pub fn decode(data: &'a [u8]) -> Self {
        let mut i = Input::new(data);
        let f0 = i.u8();
        let f1 = i.u8();
        let reflect = ReflectOctets {
            length: i.u16(),
            server_octets: i.u16(),
        };
        let max_len = i.u16();
        let out_len = i.u16();
        let meta = RxMeta {
            ttl: i.u8(),
            tos: i.u8(),
        };
        let seq = i.u32();
        let t2 = i.array();
        let ee = error_estimate(i.u16());
        let fmt = SessionFormat {
            security: match f0 & 3 {
                1 => TestSecurity::Authenticated,
                2 => TestSecurity::Encrypted,
                _ => TestSecurity::Unauthenticated,
            },
            symmetrical_size: bit(f0, 2),
            dscp_ecn_monitoring: bit(f0, 3),
            timestamp_format: if bit(f0, 4) {
                TimeFormat::Ptp
            } else {
                TimeFormat::Ntp
            },
            reflect_octets: bit(f0, 5).then_some(reflect),
            unauth_symmetrical_mbz: match f0 >> 6 {
                1 => UnauthSymmetricalMbz::Octets27,
                2 => UnauthSymmetricalMbz::Octets28,
                3 => UnauthSymmetricalMbz::Octets30,
                _ => UnauthSymmetricalMbz::Recommended,
            },
            auth_symmetrical_mbz: if bit(f1, 0) {
                AuthSymmetricalMbz::Octets56
            } else {
                AuthSymmetricalMbz::Octets64
            },
        };
        ReflectCase {
            fmt,
            meta,
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
        let f = &self.fmt;
        let f0 = match f.security {
            TestSecurity::Unauthenticated => 0,
            TestSecurity::Authenticated => 1,
            TestSecurity::Encrypted => 2,
        } | u8::from(f.symmetrical_size) << 2
            | u8::from(f.dscp_ecn_monitoring) << 3
            | u8::from(f.timestamp_format == TimeFormat::Ptp) << 4
            | u8::from(f.reflect_octets.is_some()) << 5
            | match f.unauth_symmetrical_mbz {
                UnauthSymmetricalMbz::Recommended => 0,
                UnauthSymmetricalMbz::Octets27 => 1,
                UnauthSymmetricalMbz::Octets28 => 2,
                UnauthSymmetricalMbz::Octets30 => 3,
            } << 6;
        let f1 = u8::from(f.auth_symmetrical_mbz == AuthSymmetricalMbz::Octets56);
        let r = f.reflect_octets.unwrap_or_default();
        let mut v = vec![f0, f1];
        v.extend_from_slice(&r.length.to_be_bytes());
        v.extend_from_slice(&r.server_octets.to_be_bytes());
        v.extend_from_slice(&self.max_len.to_be_bytes());
        v.extend_from_slice(&self.out_len.to_be_bytes());
        v.extend_from_slice(&[self.meta.ttl, self.meta.tos]);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.t2);
        v.extend_from_slice(&self.error_estimate.to_bits().to_be_bytes());
        debug_assert_eq!(v.len(), REFLECT_CONFIG_LEN);
        v.extend_from_slice(self.rx);
        v
    }

    /// Sender header (14 / 48) and reflector header (41 / 44 / 112) lengths
    /// by RFC 5357 §4.1.2, §4.2.1 and RFC 7750 §3.
    fn headers(&self) -> (usize, usize) {
        match (self.fmt.security, self.fmt.dscp_ecn_monitoring) {
            (TestSecurity::Unauthenticated, false) => (14, 41),
            (TestSecurity::Unauthenticated, true) => (14, 44),
            _ => (48, 112),
        }
    }

    /// Where the sender's padding to be reflected starts (RFC 6038 §4.2).
    fn padding_offset(&self) -> usize {
        let f = &self.fmt;
        let (sender, _) = self.headers();
        let mbz = match (f.symmetrical_size, f.security) {
            (false, _) => 0,
            (true, TestSecurity::Unauthenticated) => match f.unauth_symmetrical_mbz {
                UnauthSymmetricalMbz::Recommended if f.dscp_ecn_monitoring => 28,
                UnauthSymmetricalMbz::Recommended | UnauthSymmetricalMbz::Octets27 => 27,
                UnauthSymmetricalMbz::Octets28 => 28,
                UnauthSymmetricalMbz::Octets30 => 30,
            },
            (true, _) => match f.auth_symmetrical_mbz {
                AuthSymmetricalMbz::Octets64 => 64,
                AuthSymmetricalMbz::Octets56 => 56,
            },
        };
        sender + mbz
    }

    /// The reply length the RFCs require: the received length, grown to the
    /// reflector header plus the RFC 6038 octets to reflect that are present.
    fn expected_len(&self) -> usize {
        let (_, reflector) = self.headers();
        let present = self.rx.len().saturating_sub(self.padding_offset());
        let reflect = self
            .fmt
            .reflect_octets
            .map_or(0, |r| usize::from(r.length))
            .min(present);
        self.rx.len().max(reflector + reflect)
    }

    fn cap(&self) -> usize {
        match self.max_len {
            0 => self.rx.len(),
            n => usize::from(n),
        }
    }

    /// At most 8 KiB: a reply is never longer than the received packet plus
    /// the reflector header, and a larger buffer only slows fuzzing.
    fn buffer_len(&self) -> usize {
        match self.out_len {
            0 => self.expected_len(),
            n => usize::from(n) % 8192,
        }
    }
}

/// Runs [`reflect_twamp`] (`light == false`) or [`reflect_twamp_light`] on
/// a decoded [`ReflectCase`] and checks the reply field by field against the
/// RFC 5357 §4.2.1 rules; then [`set_t3`].
pub fn reflect(data: &[u8], light: bool) {
    let case = ReflectCase::decode(data);
    let fmt = &case.fmt;
    let rx = case.rx;
    let params = ReflectParams {
        seq: case.seq,
        t2: case.t2,
        error_estimate: case.error_estimate,
        max_len: case.cap(),
    };
    let mut out = canary_buffer(case.buffer_len());
    let result = if light {
        reflect_twamp_light(fmt, rx, &case.meta, &params, &mut out)
    } else {
        reflect_twamp(fmt, rx, &case.meta, &params, &mut out)
    };

    let (sender_header, reflector_header) = case.headers();
    let len = case.expected_len();
    let expected = if rx.len() < sender_header {
        Err(ReflectError::TooShort {
            need: sender_header,
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
    let n = match result {
        Ok(n) => n,
        Err(_) => {
            assert_canary(&out, "refused reflection");
            return;
        }
    };
    assert!(n <= params.max_len, "reply of {n} above the cap");
    assert!(n >= rx.len(), "reply shorter than the request");
    assert_canary(&out[n..], "reflection");
    let reply = &out[..n];

    // Received fields, at the RFC 5357 §4.1.2 offsets.
    let (s_seq, s_ts, s_ee) = match fmt.security {
        TestSecurity::Unauthenticated => (0, 4, 12),
        _ => (0, 16, 24),
    };
    let view = ReflectorPacket::new_checked(reply, fmt.reflector_layout()).expect("header fits");
    let r = ReflectorRepr::parse(&view).expect("reply parses");
    let sender_seq = be32(rx, s_seq);
    assert_eq!(r.sequence_number, if light { sender_seq } else { case.seq });
    assert_eq!(r.timestamp, [0; 8], "T3 is left zero for set_t3");
    let ee_expected = (case.error_estimate.to_bits() & !0x4000)
        | if fmt.timestamp_format == TimeFormat::Ptp {
            0x4000
        } else {
            0
        };
    assert_eq!(r.error_estimate, ee_expected, "Z bit follows the session");
    assert_eq!(r.receive_timestamp, case.t2);
    assert_eq!(r.sender_sequence_number, sender_seq);
    assert_eq!(r.sender_timestamp[..], rx[s_ts..s_ts + 8]);
    assert_eq!(r.sender_error_estimate, be16(rx, s_ee));
    assert_eq!(r.sender_ttl, case.meta.ttl);
    assert_eq!(
        r.s_dscp_ecn,
        fmt.dscp_ecn_monitoring.then_some(case.meta.tos)
    );
    assert!(view.mbz_is_zero(), "MBZ octets in the reply");
    if let Some(h) = view.hmac() {
        assert!(h.iter().all(|&b| b == 0), "HMAC field left for the caller");
    }
    // Padding: the sender's from the padding offset, zero-filled.
    let from = rx.get(case.padding_offset()..).unwrap_or(&[]);
    let pad = &reply[reflector_header..];
    let k = pad.len().min(from.len());
    assert_eq!(pad[..k], from[..k], "padding not copied from the sender's");
    assert!(pad[k..].iter().all(|&b| b == 0), "padding not zero-filled");

    // T3 lands at 4 or 16 and nowhere else.
    let t3 = case.t2.map(|b| b ^ 0x5a);
    let mut with_t3 = reply.to_vec();
    set_t3(&mut with_t3, fmt, t3).expect("a reply holds its header");
    let t3_at = if fmt.security == TestSecurity::Unauthenticated {
        4
    } else {
        16
    };
    assert_eq!(with_t3[t3_at..t3_at + 8], t3);
    with_t3[t3_at..t3_at + 8].fill(0);
    assert_eq!(with_t3, reply, "set_t3 wrote outside T3");
    let mut short = vec![0u8; reflector_header - 1];
    assert!(set_t3(&mut short, fmt, t3).is_err());
    assert!(short.iter().all(|&b| b == 0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_case_round_trips() {
        let rx = [7u8; 60];
        let case = ReflectCase {
            fmt: SessionFormat {
                security: TestSecurity::Encrypted,
                reflect_octets: Some(ReflectOctets {
                    length: 300,
                    server_octets: 9,
                }),
                symmetrical_size: true,
                dscp_ecn_monitoring: true,
                timestamp_format: TimeFormat::Ptp,
                unauth_symmetrical_mbz: UnauthSymmetricalMbz::Octets30,
                auth_symmetrical_mbz: AuthSymmetricalMbz::Octets56,
            },
            meta: RxMeta { ttl: 64, tos: 0xb8 },
            seq: 0x0102_0304,
            t2: [1, 2, 3, 4, 5, 6, 7, 8],
            error_estimate: error_estimate(0x8101),
            max_len: 1500,
            out_len: 0,
            rx: &rx,
        };
        let bytes = case.encode();
        assert_eq!(bytes.len(), REFLECT_CONFIG_LEN + rx.len());
        assert_eq!(ReflectCase::decode(&bytes), case);
        // The default (TWAMP Light) format encodes to all-zero flags.
        let light = ReflectCase {
            fmt: SessionFormat::default(),
            ..case.clone()
        };
        assert_eq!(ReflectCase::decode(&light.encode()), light);
    }
}
