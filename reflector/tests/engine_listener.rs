//! The stateless listener engine on buffers, fed with the requests of real
//! STAMP and TWAMP Light senders (stamp-suite 0.8.0 and twampy captures):
//! field offsets from RFC 8762 §4.3 / RFC 5357 §4.2.1 (stamp.md §2,
//! twamp-test.md §3.1), the RFC 8972 TLV flags, HMAC-SHA-256 on the base
//! packet and the HMAC TLV, and the no-amplification rule.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use ricochet_protocol::crypto::StampHmac;
use ricochet_reflector::clock::{ClockSource, ClockState, LeapState, Stamp};
use ricochet_reflector::engine::{DropReason, ListenerEngine, RxMeta};
use ricochet_reflector::session_table::ListenerKind;
use ricochet_testkit::{decoded_json, unhex};
use zeroize::Zeroizing;

const PEER: &str = "stamp-suite-0.8.0";
const GOLDEN_KEY: &[u8; 32] = b"stamp-golden-hmac-key-0123456789";
const WRONG_KEY: &[u8; 32] = b"wrong-golden-hmac-key-0123456789";

const U: u8 = 0x80;
const M: u8 = 0x40;
const I: u8 = 0x20;

fn clock() -> ClockState {
    ClockState {
        tai_offset_s: 0,
        synchronized: false,
        est_error_ns: 0,
        max_error_ns: 0,
        source: ClockSource::Unsynchronized,
        leap: LeapState::None,
        phc_present: false,
    }
}

/// (request payload, its IP TTL, the peer's reply payload) of a capture.
fn exchanges(file: &str) -> Vec<(Vec<u8>, u8, Option<Vec<u8>>)> {
    let json = decoded_json(PEER, &format!("{file}.decoded.json"));
    let packets = json["packets"].as_array().expect("packets");
    let mut out: Vec<(Vec<u8>, u8, Option<Vec<u8>>)> = Vec::new();
    for p in packets {
        let payload = unhex(p["payload_hex"].as_str().unwrap());
        match p["direction"].as_str().unwrap() {
            "sender->reflector" => {
                let ttl = p["ip_ttl"].as_u64().unwrap() as u8;
                out.push((payload, ttl, None));
            }
            _ => {
                let last = out.last_mut().expect("a reply follows its request");
                last.2 = Some(payload);
            }
        }
    }
    assert!(!out.is_empty(), "{file}: no requests");
    out
}

fn open_listener() -> ListenerEngine {
    ListenerEngine::new(&ListenerKind::Unauthenticated, 0, 0)
}

fn auth_listener(key: &[u8; 32]) -> ListenerEngine {
    ListenerEngine::new(
        &ListenerKind::StampAuthenticated {
            key: Zeroizing::new(*key),
        },
        0,
        0,
    )
}

fn reflect(l: &mut ListenerEngine, rx: &[u8], ttl: u8) -> Result<Vec<u8>, DropReason> {
    let mut out = [0u8; 2048];
    let before = Stamp::now();
    let n = l.reflect(rx, RxMeta { ttl, tos: 0 }, before, &clock(), &mut out)?;
    Ok(out[..n].to_vec())
}

/// Checks the unauthenticated STAMP reflector fields of `reply` against the
/// request (stamp.md §2.3): sequence copied (stateless), SSID copied, the
/// sender's sequence, timestamp and estimate copied, TTL, MBZ zero.
fn check_open_stamp(req: &[u8], ttl: u8, reply: &[u8]) {
    assert_eq!(reply.len(), req.len(), "symmetric size");
    assert_eq!(&reply[0..4], &req[0..4], "Sequence Number copied");
    assert_eq!(&reply[14..16], &req[14..16], "SSID copied");
    assert_eq!(&reply[24..28], &req[0..4]);
    assert_eq!(&reply[28..36], &req[4..12]);
    assert_eq!(&reply[36..38], &req[12..14]);
    assert_eq!(&reply[38..40], &[0, 0], "MBZ");
    assert_eq!(reply[40], ttl);
    assert_eq!(&reply[41..44], &[0, 0, 0], "MBZ");
    // T2 ≤ T3, both NTP, S = 0 on this clock, Multiplier ≥ 1.
    let ntp = |at: usize| u64::from_be_bytes(reply[at..at + 8].try_into().unwrap());
    assert!(ntp(16) <= ntp(4));
    assert_eq!(reply[12] & 0xc0, 0);
    assert_ne!(reply[13], 0);
}

#[test]
fn stamp_suite_open_requests_reflected_in_place() {
    let mut l = open_listener();
    let ex = exchanges("stamp-open-ntp-stateless");
    for (req, ttl, theirs) in &ex {
        let reply = reflect(&mut l, req, *ttl).unwrap();
        check_open_stamp(req, *ttl, &reply);
        assert_eq!(reply.len(), theirs.as_ref().unwrap().len());
    }
    assert_eq!(l.counters().reflected, ex.len() as u64);
}

#[test]
fn stamp_suite_tlvs_flags() {
    // Extra Padding recognised (U cleared), experimental 240–242 unknown
    // here (U = 1), values untouched, length unchanged.
    let mut l = open_listener();
    for (req, ttl, _) in exchanges("stamp-open-tlvs-extra-padding") {
        let reply = reflect(&mut l, &req, ttl).unwrap();
        check_open_stamp(&req, ttl, &reply);
        for (at, flags) in [(44, 0), (80, U), (86, U), (94, U)] {
            assert_eq!(reply[at], flags, "flags of the TLV at {at}");
            assert_eq!(reply[at + 1..], req[at + 1..], "rest unchanged");
        }
    }
    // Unauthenticated with an HMAC TLV: no key here, so HMAC is unknown
    // (U = 1); CoS and Timestamp Information are filled (U = 0).
    for (req, ttl, _) in exchanges("stamp-open-tlvs-hmac-tlv") {
        let reply = reflect(&mut l, &req, ttl).unwrap();
        check_open_stamp(&req, ttl, &reply);
        assert_eq!(reply[44..48], [0, 4, 0, 4], "CoS processed");
        // DSCP1 10 kept, DSCP2/ECN = the received TOS 0, RP 0
        // (RFC 8972 §4.4: 001010 000000 00 00).
        assert_eq!(reply[48..52], [0x28, 0, 0, 0]);
        assert_eq!(l.reply_dscp(), Some(10), "the reply uses DSCP1");
        assert_eq!(
            reply[52..56],
            [0, 3, 0, 4],
            "Timestamp Information processed"
        );
        // Unsynchronized clock: free-running (5); T2 and T3 both user-space
        // clock readings: control plane (3). Never the sender's 01 02.
        assert_eq!(reply[56..60], [5, 3, 5, 3]);
        assert_eq!(reply[60], U, "HMAC TLV without a key: unknown");
        assert_eq!(&reply[61..80], &req[61..80]);
    }
}

#[test]
fn stateless_follow_up_telemetry_is_zeroed() {
    // RFC 8972 §4.7: a stateless reflector zeroes the Sequence Number and
    // Follow-Up Timestamp (stamp-suite 0.8.0 fills them: README D6).
    let mut l = open_listener();
    for (mut req, ttl, _) in exchanges("stamp-open-stateless-fut") {
        req[48..60].fill(0xaa);
        let reply = reflect(&mut l, &req, ttl).unwrap();
        check_open_stamp(&req, ttl, &reply);
        assert_eq!(reply[44], 0, "FUT recognised: U cleared");
        assert!(reply[48..60].iter().all(|&b| b == 0));
        assert_eq!(&reply[60..64], &req[60..64]);
    }
}

#[test]
fn twamp_light_request_gets_a_41_octet_reply() {
    // A 41-octet TWAMP Light probe (twampy, 27 padding octets): reflected as
    // TWAMP Light, 41 → 41 (stamp-suite answers 44: we never amplify).
    let mut l = open_listener();
    for (req, ttl, theirs) in exchanges("stamp-xcheck-twampy-sender-to-stamp-suite-reflector") {
        assert_eq!(req.len(), 41);
        assert_eq!(theirs.unwrap().len(), 44);
        let reply = reflect(&mut l, &req, ttl).unwrap();
        assert_eq!(reply.len(), 41);
        assert_eq!(&reply[0..4], &req[0..4]);
        assert_eq!(&reply[14..16], &[0, 0], "MBZ");
        assert_eq!(&reply[24..38], &req[0..14]);
        assert_eq!(reply[40], ttl);
    }
}

#[test]
fn short_requests_are_never_amplified() {
    let mut l = open_listener();
    assert_eq!(reflect(&mut l, &[0u8; 13], 64), Err(DropReason::TooShort));
    for len in [14, 27, 40] {
        assert_eq!(
            reflect(&mut l, &vec![0u8; len], 64),
            Err(DropReason::TooLong)
        );
    }
    for len in [41, 42, 43, 44, 45, 300] {
        assert_eq!(reflect(&mut l, &vec![0u8; len], 64).unwrap().len(), len);
    }
    let c = l.counters();
    assert_eq!(c.dropped.get(DropReason::TooShort), 1);
    assert_eq!(c.dropped.get(DropReason::TooLong), 3);
    assert_eq!(c.reflected, 6);
}

/// Checks an authenticated STAMP reply (stamp.md §2.4) and its HMAC.
fn check_auth_stamp(req: &[u8], ttl: u8, reply: &[u8], key: &[u8]) {
    assert_eq!(reply.len(), req.len());
    let h = StampHmac::new(key);
    h.verify_packet(reply).expect("reply HMAC over octets 0-95");
    assert_eq!(&reply[0..4], &req[0..4]);
    assert!(reply[4..16].iter().all(|&b| b == 0));
    assert_eq!(&reply[26..28], &req[26..28], "SSID");
    assert_eq!(&reply[48..52], &req[0..4]);
    assert_eq!(&reply[64..72], &req[16..24]);
    assert_eq!(&reply[72..74], &req[24..26]);
    assert_eq!(reply[80], ttl);
    assert!(reply[81..96].iter().all(|&b| b == 0));
}

#[test]
fn stamp_suite_authenticated_requests() {
    let mut l = auth_listener(GOLDEN_KEY);
    for (req, ttl, _) in exchanges("stamp-auth-ntp") {
        let reply = reflect(&mut l, &req, ttl).unwrap();
        check_auth_stamp(&req, ttl, &reply, GOLDEN_KEY);
    }
    // The same requests to a listener with another key: all dropped.
    let mut wrong = auth_listener(WRONG_KEY);
    let ex = exchanges("stamp-auth-wrongkey-dropped");
    for (req, ttl, theirs) in &ex {
        assert!(theirs.is_none());
        assert_eq!(reflect(&mut wrong, req, *ttl), Err(DropReason::BadHmac));
    }
    assert_eq!(
        wrong.counters().dropped.get(DropReason::BadHmac),
        ex.len() as u64
    );
    // Unauthenticated-sized requests never reach the HMAC check.
    assert_eq!(reflect(&mut l, &[0u8; 111], 64), Err(DropReason::TooShort));
}

#[test]
fn authenticated_hmac_tlv_is_verified_and_recomputed() {
    let h = StampHmac::new(GOLDEN_KEY);
    let mut l = auth_listener(GOLDEN_KEY);
    let mut n = 0u32;
    for (req, ttl, _) in exchanges("stamp-auth-tlvs") {
        let reply = reflect(&mut l, &req, ttl).unwrap();
        check_auth_stamp(&req, ttl, &reply, GOLDEN_KEY);
        // CoS, Timestamp Information, Direct Measurement processed
        // (U = 0); HMAC at 144 recognised, no I anywhere.
        for at in [112, 120, 128] {
            assert_eq!(reply[at], 0, "TLV at {at}");
        }
        assert_eq!(reply[116..120], [0x28, 0, 0, 0], "CoS: DSCP1 10, DSCP2 0");
        assert_eq!(reply[124..128], [5, 3, 5, 3], "Timestamp Information");
        // Direct Measurement: S_TxC copied, R_RxC / R_TxC = this listener's
        // in-profile packets and replies, this one included.
        n += 1;
        assert_eq!(reply[132..136], req[132..136]);
        assert_eq!(reply[136..140], n.to_be_bytes());
        assert_eq!(reply[140..144], n.to_be_bytes());
        assert_eq!(reply[144], 0);
        // The fresh HMAC covers the reply's Sequence Number and the TLVs
        // as reflected (flags included), RFC 8972 §4.8.
        h.verify(&[&reply[0..4], &reply[112..144]], &reply[148..164])
            .expect("reply HMAC TLV");
    }
}

/// Re-seals the base HMAC of a (modified) authenticated request.
fn reseal(req: &mut [u8]) {
    StampHmac::new(GOLDEN_KEY).seal_packet(req).unwrap();
}

#[test]
fn failed_missing_or_misplaced_hmac_tlv_sets_i_on_every_tlv() {
    let (req, ttl, _) = exchanges("stamp-auth-tlvs").remove(0);
    let mut l = auth_listener(GOLDEN_KEY);
    // (a) a TLV changed after the sender's HMAC TLV was computed.
    let mut tampered = req.clone();
    tampered[116] ^= 0x04;
    reseal(&mut tampered);
    // (b) the HMAC TLV cut off: other TLVs without protection.
    let mut missing = req[..144].to_vec();
    reseal(&mut missing);
    // (c) the HMAC TLV followed by a protected TLV (CoS moved last).
    let mut misplaced = req[..112].to_vec();
    misplaced.extend_from_slice(&req[120..164]);
    misplaced.extend_from_slice(&req[112..120]);
    reseal(&mut misplaced);
    for (what, rx) in [
        ("tampered", tampered),
        ("missing", missing),
        ("misplaced", misplaced),
    ] {
        let reply = reflect(&mut l, &rx, ttl).unwrap();
        check_auth_stamp(&rx, ttl, &reply, GOLDEN_KEY);
        let mut at = 112;
        while at < reply.len() {
            let end = at + 4 + usize::from(u16::from_be_bytes([reply[at + 2], reply[at + 3]]));
            assert_eq!(reply[at], rx[at] | I, "{what}: TLV at {at}");
            assert_eq!(
                &reply[at + 1..end],
                &rx[at + 1..end],
                "{what}: TLV at {at} untouched"
            );
            at = end;
        }
    }
}

#[test]
fn malformed_tlv_gets_m_and_stops_processing() {
    let (mut req, ttl, _) = exchanges("stamp-open-tlvs-extra-padding").remove(0);
    // Type 240 (at 80) claims 200 octets: overruns the packet.
    req[82..84].copy_from_slice(&200u16.to_be_bytes());
    let mut l = open_listener();
    let reply = reflect(&mut l, &req, ttl).unwrap();
    assert_eq!(reply[44], 0, "before: processed");
    assert_eq!(reply[80], U | M);
    assert_eq!(&reply[86..], &req[86..], "after: copied as received");
}

#[test]
fn listener_rate_limit() {
    let mut l = ListenerEngine::new(&ListenerKind::Unauthenticated, 10, 2);
    let t0 = Instant::now();
    let mut out = [0u8; 64];
    let rx = [0u8; 44];
    let mut at = |t| l.reflect_at(&rx, RxMeta::default(), Stamp::now(), &clock(), t, &mut out);
    assert_eq!(at(t0), Ok(44));
    assert_eq!(at(t0), Ok(44));
    assert_eq!(at(t0), Err(DropReason::RateLimited));
    assert_eq!(at(t0 + Duration::from_millis(100)), Ok(44));
}

proptest! {
    /// Random requests: no panic, never a reply longer than the request,
    /// never a reply to an authenticated request without the key.
    #[test]
    fn random_requests(
        rx in proptest::collection::vec(any::<u8>(), 0..300),
        auth in any::<bool>(),
    ) {
        let mut l = if auth { auth_listener(GOLDEN_KEY) } else { open_listener() };
        let mut out = [0u8; 512];
        match l.reflect(&rx, RxMeta::default(), Stamp::now(), &clock(), &mut out) {
            Ok(n) => {
                prop_assert!(!auth);
                prop_assert_eq!(n, rx.len());
                prop_assert_eq!(&out[..4], &rx[..4]);
            }
            Err(r) => {
                prop_assert!(auth || rx.len() < 41, "{:?}", r);
                prop_assert_eq!(l.counters().dropped.get(r), 1);
            }
        }
    }

    /// Valid authenticated requests with random TLV areas: replies verify
    /// and keep the request's length.
    #[test]
    fn authenticated_random_tlv_area(
        seq in any::<u32>(),
        tail in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut rx = vec![0u8; 112];
        rx[..4].copy_from_slice(&seq.to_be_bytes());
        rx.extend_from_slice(&tail);
        reseal(&mut rx);
        let mut l = auth_listener(GOLDEN_KEY);
        let reply = reflect(&mut l, &rx, 7).unwrap();
        check_auth_stamp(&rx, 7, &reply, GOLDEN_KEY);
    }
}

/// (request payload, its IP TTL) of a twampy 1.3.2 TWAMP-Light capture.
fn twampy_requests(file: &str) -> Vec<(Vec<u8>, u8)> {
    let json = decoded_json("twampy-1.3.2", &format!("{file}.decoded.json"));
    let v: Vec<(Vec<u8>, u8)> = json["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .filter(|p| p["direction"] == "sender->reflector")
        .map(|p| {
            (
                unhex(p["payload_hex"].as_str().unwrap()),
                p["ip_ttl"]
                    .as_u64()
                    .or(p["ipv6_hop_limit"].as_u64())
                    .unwrap() as u8,
            )
        })
        .collect();
    assert!(!v.is_empty(), "{file}: no requests");
    v
}

/// A TWAMP-Light sender's zero padding (twampy `--padding 64`: 14-octet
/// header + 64 zero octets = 78) is padding, not a chain of Reserved
/// (type 0) TLVs: it comes back unchanged after the 44-octet STAMP base —
/// no U flag every 4 octets, no M on the 2-octet tail (RFC 8972 §5.1 type
/// 0 Reserved; RFC 5357 Appendix I padding; stamp.md §2.1).
#[test]
fn twampy_zero_padding_comes_back_unchanged() {
    let mut l = open_listener();
    for file in [
        "twamp-light-v4-pad64-tos184-both",
        "twamp-light-v6-pad64-dscpEF-both",
    ] {
        for (req, ttl) in twampy_requests(file) {
            assert_eq!(req.len(), 78, "{file}");
            assert!(req[14..].iter().all(|&b| b == 0), "capture: zero padding");
            let reply = reflect(&mut l, &req, ttl).unwrap();
            assert_eq!(reply.len(), 78, "symmetric size");
            assert_eq!(&reply[24..38], &req[0..14], "sender fields copied");
            assert_eq!(reply[40], ttl);
            assert_eq!(&reply[44..], &req[44..], "{file}: padding unchanged");
        }
    }
    // A real TLV after the base is still processed (U cleared on Extra
    // Padding, U set on an unknown type), even when followed by zeros.
    let mut req = twampy_requests("twamp-light-v4-pad64-tos184-both")[0]
        .0
        .clone();
    req[44..48].copy_from_slice(&[0x80, 1, 0, 4]);
    req[52..56].copy_from_slice(&[0x00, 240, 0, 0]);
    let reply = reflect(&mut l, &req, 64).unwrap();
    assert_eq!(reply[44], 0, "Extra Padding recognised");
    assert_eq!(reply[52], U, "unknown type");
}

/// Direct Measurement (RFC 8972 §4.5) on a listener: R_RxC counts every
/// request received, including those the rate limit refused; R_TxC the
/// replies sent.
#[test]
fn listener_direct_measurement_counts_refused_requests() {
    let mut l = ListenerEngine::new(&ListenerKind::Unauthenticated, 10, 1);
    let t0 = Instant::now();
    let mut req = vec![0u8; 44];
    req.extend_from_slice(&[0x80, 5, 0, 12]);
    req.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut out = [0u8; 128];
    let mut at = |t| {
        l.reflect_at(&req, RxMeta::default(), Stamp::now(), &clock(), t, &mut out)
            .map(|n| out[..n].to_vec())
    };
    let r = at(t0).unwrap();
    assert_eq!(&r[48..60], &[0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(at(t0), Err(DropReason::RateLimited));
    assert_eq!(at(t0), Err(DropReason::RateLimited));
    let r = at(t0 + Duration::from_millis(100)).unwrap();
    // S_TxC copied; 4 received, 2 sent.
    assert_eq!(&r[48..60], &[0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0, 2]);
    assert_eq!(l.received(), 4);
}
