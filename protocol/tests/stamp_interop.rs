//! Every stamp-suite 0.8.0 and twampy 1.3.2 capture
//! (../shared/interop/{stamp-suite-0.8.0,twampy-1.3.2}) read through the
//! library:
//!
//! 1. every packet parses: base packet views, and every TLV of every STAMP
//!    packet through the typed decoder (`StampTlv::parse`) or, where a peer
//!    deviates, into a typed error;
//! 2. the conformance checker `stamp::validate` reports, per file, exactly
//!    the disagreements the independent decoder lists in its
//!    `summary.disagreements_with_spec` (same kind, same packet count) —
//!    the deviations each README lists (D1–D7, T1–T5) are detected, never
//!    accepted;
//! 3. the typed TLV values agree with the decoder's field-by-field reading.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ricochet_protocol::crypto::StampHmac;
use ricochet_protocol::stamp::tlv::TlvIter;
use ricochet_protocol::stamp::validate::{
    validate_pair, validate_reflector, validate_sender, Expectations, Observed, Profile,
};
use ricochet_protocol::stamp::{ReflectorMode, StampLayout, StampTlv, TlvValueError};
use ricochet_protocol::time::TaiOffset;
use ricochet_testkit::{decoded_json, interop_file, read_pcap, unhex, UdpDatagram};

const SUITE: &str = "stamp-suite-0.8.0";
const TWAMPY: &str = "twampy-1.3.2";
const KEY: &str = "7374616d702d676f6c64656e2d686d61632d6b65792d30313233343536373839";
/// TAI − UTC in 2026 (IERS Bulletin C: 37 s since 2017-01-01).
const TAI_UTC_2026: TaiOffset = TaiOffset(37);

struct Case {
    peer: &'static str,
    file: &'static str,
    profile: Profile,
    layout: StampLayout,
    mode: Option<ReflectorMode>,
    reflector_port: u16,
}

fn cases() -> Vec<Case> {
    use ReflectorMode::{Stateful, Stateless};
    use StampLayout::{Authenticated as A, Unauthenticated as U};
    let s = |file, layout, mode| Case {
        peer: SUITE,
        file,
        profile: Profile::Stamp,
        layout,
        mode: Some(mode),
        reflector_port: 862,
    };
    let t = |file| Case {
        peer: TWAMPY,
        file,
        profile: Profile::TwampLight,
        layout: U,
        mode: None,
        reflector_port: 20001,
    };
    vec![
        s("stamp-open-ntp-stateless", U, Stateless),
        s("stamp-open-stateful", U, Stateful),
        s("stamp-auth-ntp", A, Stateless),
        s("stamp-auth-wrongkey-dropped", A, Stateless),
        s("stamp-open-ptp", U, Stateless),
        s("stamp-open-sender-ntp-reflector-ptp", U, Stateless),
        s("stamp-open-tlvs-rfc8972", U, Stateless),
        s("stamp-open-tlvs-extra-padding", U, Stateless),
        s("stamp-open-tlvs-hmac-tlv", U, Stateless),
        s("stamp-auth-tlvs", A, Stateless),
        s("stamp-open-stateless-fut", U, Stateless),
        s("stamp-open-stateful-fut", U, Stateful),
        s("stamp-open-v6-location", U, Stateless),
        s("stamp-open-tlvs-rfc9503-rfc9534", U, Stateless),
        s(
            "stamp-xcheck-twampy-sender-to-stamp-suite-reflector",
            U,
            Stateless,
        ),
        t("twamp-light-v4-default"),
        t("twamp-light-v4-pad64-dscpEF-sender-only"),
        t("twamp-light-v4-pad64-tos184-both"),
        t("twamp-light-v6-default"),
        t("twamp-light-v6-pad64-dscpEF-both"),
        t("twamp-light-xcheck-stamp-suite-sender-to-twampy-reflector"),
    ]
}

/// The decoder's wording → (scope, validator kind). Every disagreement the
/// decoder lists must map to exactly one entry.
fn decoder_kind(what: &str) -> (&'static str, &'static str) {
    let scope = if what.starts_with("sender packet") {
        "sender"
    } else if what.starts_with("reflector packet") {
        "reflector"
    } else {
        assert!(what.starts_with("pair"), "unknown scope: {what}");
        "pair"
    };
    let table: &[(&str, &str)] = &[
        ("Access Report TLV Length 2", "tlv_bad_length"),
        (
            "Timestamp Information TLV sent with non-zero",
            "sender_filled_timestamp_info",
        ),
        ("MBZ octets", "reflector_mbz_not_zero"),
        ("(MBZ after", "reflector_mbz_not_zero"),
        (
            "sub-TLVs are not in the RFC 8972",
            "location_sub_tlv_format",
        ),
        ("reflected payload", "reply_size_not_symmetric"),
        ("CoS TLV read per RFC 8972 layout", "cos_not_reflected"),
        ("Location TLV Length changed", "location_length_changed"),
        ("octets reversed", "location_address_byte_order"),
        (
            "Timestamp PTPv2 seconds track UTC",
            "ptp_utc_sender_timestamp",
        ),
        ("Timestamp (T3) PTPv2 seconds track UTC", "ptp_utc_t3"),
        ("Receive Timestamp (T2) PTPv2", "ptp_utc_t2"),
        (
            "stateless reflector filled Follow-Up",
            "stateless_follow_up_filled",
        ),
        ("shorter than the 44-octet base", "sender_shorter_than_base"),
        ("TTL/Hop Limit 64", "ttl_not_255"),
        ("shorter than the 41-octet", "reflector_header_too_short"),
        ("bit-identical", "t3_equals_t2"),
        ("Sender TTL field 0", "sender_ttl_mismatch"),
    ];
    let hits: Vec<&str> = table
        .iter()
        .filter(|(needle, _)| {
            // "Timestamp PTPv2" must not swallow the T3/T2 lines.
            what.contains(needle)
                && !(*needle == "Timestamp PTPv2 seconds track UTC"
                    && (what.contains("(T3)") || what.contains("(T2)")))
        })
        .map(|(_, k)| *k)
        .collect();
    assert_eq!(hits.len(), 1, "decoder line {what:?} maps to {hits:?}");
    (scope, hits[0])
}

fn observed(d: &UdpDatagram) -> Observed<'_> {
    Observed {
        payload: &d.payload,
        ttl: d.ttl,
        tos: d.tos,
        src: d.src,
        dst: d.dst,
        capture_utc_ns: Some(d.ts_ns),
    }
}

/// The reply answering `req`: same copied Session-Sender Sequence Number and
/// Timestamp.
fn answers(case: &Case, req: &[u8], reply: &[u8]) -> bool {
    let (s, r) = match case.layout {
        StampLayout::Unauthenticated => ((0..12), (24..36)),
        StampLayout::Authenticated => ((0..4), (48..52)),
    };
    let ts_ok = match case.layout {
        StampLayout::Unauthenticated => true,
        StampLayout::Authenticated => req.get(16..24) == reply.get(64..72),
    };
    req.get(s) == reply.get(r) && ts_ok
}

/// Parses every TLV of a STAMP packet with the typed decoder; returns the
/// typed errors (the peer's deviations) with their TLV types.
fn parse_all_tlvs(area: &[u8]) -> Vec<(u8, TlvValueError)> {
    let mut errs = Vec::new();
    for t in TlvIter::framing_only(area) {
        let t = t.expect("the TLV chains of these captures frame");
        if let Err(e) = StampTlv::parse(t.tlv_type(), t.value()) {
            errs.push((t.tlv_type(), e));
        }
    }
    errs
}

#[test]
fn every_capture_parses_and_its_deviations_are_detected() {
    let hmac = StampHmac::new(&unhex(KEY));
    for case in cases() {
        let cap = read_pcap(&interop_file(case.peer, &format!("{}.pcap", case.file)));
        let json = decoded_json(case.peer, &format!("{}.decoded.json", case.file));
        let exp = Expectations {
            profile: case.profile,
            layout: case.layout,
            reflector_mode: case.mode,
            tai_offset: TAI_UTC_2026,
            hmac: Some(&hmac),
        };
        let mut found: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let (mut n_req, mut n_rep) = (0, 0);
        let reqs: Vec<&UdpDatagram> = cap
            .udp
            .iter()
            .filter(|d| d.dst.port() == case.reflector_port)
            .collect();
        for d in &cap.udp {
            let o = observed(d);
            let is_req = d.dst.port() == case.reflector_port;
            let (scope, v) = if is_req {
                n_req += 1;
                ("sender", validate_sender(&o, &exp))
            } else {
                n_rep += 1;
                ("reflector", validate_reflector(&o, &exp))
            };
            for x in v {
                *found.entry((scope, x.kind())).or_default() += 1;
            }
            let base = case.layout.base_len();
            if case.profile == Profile::Stamp && d.payload.len() > base {
                let errs = parse_all_tlvs(&d.payload[base..]);
                // The only typed errors are the Access Report Length 2 (D3).
                for (ty, e) in &errs {
                    assert_eq!(*ty, 6, "{}: {e}", case.file);
                }
            }
            if !is_req {
                let req = reqs
                    .iter()
                    .find(|q| answers(&case, &q.payload, &d.payload))
                    .unwrap_or_else(|| panic!("{}: a reply without its request", case.file));
                for x in validate_pair(&observed(req), &o, &exp) {
                    *found.entry(("pair", x.kind())).or_default() += 1;
                }
            }
        }
        let s = &json["summary"];
        assert_eq!(
            n_req,
            s["packets_sender_to_reflector"].as_u64().unwrap(),
            "{}",
            case.file
        );
        assert_eq!(
            n_rep,
            s["packets_reflector_to_sender"].as_u64().unwrap(),
            "{}",
            case.file
        );
        let mut expected: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for dis in s["disagreements_with_spec"].as_array().unwrap() {
            let what = dis["what"].as_str().unwrap();
            let key = decoder_kind(what);
            *expected.entry(key).or_default() += dis["packets"].as_u64().unwrap();
        }
        assert_eq!(found, expected, "{}", case.file);
    }
}

/// The typed values agree with the decoder's reading, TLV by TLV.
#[test]
fn typed_tlv_values_match_the_decoder() {
    let mut checked = 0;
    for case in cases().iter().filter(|c| c.profile == Profile::Stamp) {
        let json = decoded_json(case.peer, &format!("{}.decoded.json", case.file));
        for p in json["packets"].as_array().unwrap() {
            let payload = unhex(p["payload_hex"].as_str().unwrap());
            let base = case.layout.base_len();
            let Some(tlvs) = p["tlvs"].as_array() else {
                continue;
            };
            let area = &payload[base.min(payload.len())..];
            let ours: Vec<_> = TlvIter::framing_only(area).map(Result::unwrap).collect();
            assert_eq!(ours.len(), tlvs.len(), "{}", case.file);
            for (t, j) in ours.iter().zip(tlvs) {
                assert_eq!(u64::from(t.tlv_type()), j["type"].as_u64().unwrap());
                assert_eq!(u64::from(t.length()), j["length"].as_u64().unwrap());
                assert_eq!(u64::from(t.unrecognized()), j["U"].as_u64().unwrap());
                let Ok(v) = StampTlv::parse(t.tlv_type(), t.value()) else {
                    continue;
                };
                let n = |k: &str| j[k].as_u64().unwrap();
                match v {
                    StampTlv::ClassOfService(c) => {
                        let l = &j["rfc8972_layout"];
                        assert_eq!(u64::from(c.dscp1), l["DSCP1"].as_u64().unwrap());
                        assert_eq!(u64::from(c.dscp2), l["DSCP2"].as_u64().unwrap());
                        assert_eq!(u64::from(c.ecn), l["ECN"].as_u64().unwrap());
                        assert_eq!(u64::from(c.rp), l["RP"].as_u64().unwrap());
                    }
                    StampTlv::DirectMeasurement(d) => {
                        assert_eq!(u64::from(d.s_txc), n("S_TxC"));
                        assert_eq!(u64::from(d.r_rxc), n("R_RxC"));
                        assert_eq!(u64::from(d.r_txc), n("R_TxC"));
                    }
                    StampTlv::TimestampInformation(ti) => {
                        assert_eq!(u64::from(ti.sync_in.to_u8()), n("sync_src_in"));
                        assert_eq!(u64::from(ti.method_in.to_u8()), n("timestamp_in"));
                        assert_eq!(u64::from(ti.sync_out.to_u8()), n("sync_src_out"));
                        assert_eq!(u64::from(ti.method_out.to_u8()), n("timestamp_out"));
                    }
                    StampTlv::Location {
                        destination_port,
                        source_port,
                        ..
                    } => {
                        assert_eq!(u64::from(destination_port), n("destination_port"));
                        assert_eq!(u64::from(source_port), n("source_port"));
                    }
                    _ => {}
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "only {checked} TLVs compared");
}

/// A conforming exchange built by hand produces no finding (the checker is
/// not merely noisy).
#[test]
fn a_conforming_exchange_has_no_findings() {
    let src: SocketAddr = "198.18.0.1:50000".parse().unwrap();
    let dst: SocketAddr = "198.18.0.2:862".parse().unwrap();
    let mut req = vec![0u8; 44 + 8 + 4 + 24];
    req[0..4].copy_from_slice(&7u32.to_be_bytes());
    req[4..12].copy_from_slice(&[0xee, 0xb3, 0x8f, 0x4f, 0, 0, 0, 1]);
    req[12..14].copy_from_slice(&[0x00, 0x01]);
    req[14..16].copy_from_slice(&[0x12, 0x34]);
    req[44..52].copy_from_slice(&[0x80, 4, 0, 4, 46 << 2, 0, 0, 0]);
    req[52..56].copy_from_slice(&[0x80, 2, 0, 24]);
    req[60..64].copy_from_slice(&[0x80, 4, 0, 16]);
    let mut rep = req.clone();
    rep[0..4].copy_from_slice(&7u32.to_be_bytes());
    rep[4..12].copy_from_slice(&[0xee, 0xb3, 0x8f, 0x4f, 0, 0, 0, 9]);
    rep[16..24].copy_from_slice(&[0xee, 0xb3, 0x8f, 0x4f, 0, 0, 0, 5]);
    rep[24..38].copy_from_slice(&req[0..14]);
    rep[38..44].copy_from_slice(&[0, 0, 64, 0, 0, 0]);
    // CoS: DSCP1 46, DSCP2 0 (received 0), ECN 0, RP 0.
    rep[44] = 0;
    rep[52] = 0;
    rep[56..60].copy_from_slice(&[0x03, 0x5e, 0xc3, 0x50]);
    rep[60..64].copy_from_slice(&[0, 5, 0, 16]);
    rep[64..68].copy_from_slice(&[198, 18, 0, 2]);
    let o = |p: &'static [u8], tos, src, dst| Observed {
        payload: p,
        ttl: 64,
        tos,
        src,
        dst,
        capture_utc_ns: None,
    };
    let req: &'static [u8] = Box::leak(req.into_boxed_slice());
    let rep: &'static [u8] = Box::leak(rep.into_boxed_slice());
    let exp = Expectations {
        profile: Profile::Stamp,
        layout: StampLayout::Unauthenticated,
        reflector_mode: Some(ReflectorMode::Stateless),
        tai_offset: TAI_UTC_2026,
        hmac: None,
    };
    let q = o(req, 0, src, dst);
    let r = o(rep, 46 << 2, dst, src);
    assert_eq!(validate_sender(&q, &exp), vec![]);
    assert_eq!(validate_reflector(&r, &exp), vec![]);
    assert_eq!(validate_pair(&q, &r, &exp), vec![]);
    // One flipped octet of the Location address is caught.
    let mut bad = rep.to_vec();
    bad[67] = 3;
    let bad: &'static [u8] = Box::leak(bad.into_boxed_slice());
    let kinds: Vec<_> = validate_pair(&q, &o(bad, 46 << 2, dst, src), &exp)
        .iter()
        .map(|v| v.kind())
        .collect();
    assert_eq!(kinds, vec!["location_address_wrong"]);
}
