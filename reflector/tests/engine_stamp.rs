//! Stateful STAMP sessions and the reflector's TLV processing on buffers:
//! reply octets against the RFC 8762 / RFC 8972 / RFC 9503 / RFC 9534
//! layouts as `stamp.md` tabulates them, the session's own Sequence
//! Number, SSID matching, HMAC TLV position, Follow-Up Telemetry equal to
//! the transmit stamp recorded for the previous reply, NTP vs PTP, and
//! every reply run through the protocol crate's conformance checker.

use std::net::SocketAddr;
use std::time::Instant;

use ricochet_protocol::crypto::StampHmac;
use ricochet_protocol::stamp::validate::{
    validate_pair, validate_reflector, Expectations, Observed, Profile,
};
use ricochet_protocol::stamp::{ReflectorMode, StampLayout};
use ricochet_protocol::time::{NtpTimestamp, PtpTimestamp, TaiOffset, TimeFormat};
use ricochet_reflector::clock::{
    ClockSource, ClockState, LeapState, Stamp, StampSource, TimeScale,
};
use ricochet_reflector::engine::{DropReason, RxMeta};
use ricochet_reflector::session_table::StampSessionSpec;
use ricochet_reflector::stamp_engine::{CosPolicy, PacketAddrs, StampSessionEngine};
use zeroize::Zeroizing;

const U: u8 = 0x80;
const M: u8 = 0x40;
const I: u8 = 0x20;
const NS: u64 = 1_000_000_000;
/// 2026-11-27 05:10:39 TAI, nanoseconds since 1970 (TAI).
const T2_TAI: u64 = 1_795_756_276 * NS + 250_000_000;
const T3_TAI: u64 = T2_TAI + 40_000;

fn sender() -> SocketAddr {
    "198.18.0.1:40000".parse().unwrap()
}
fn local() -> SocketAddr {
    "198.18.0.2:862".parse().unwrap()
}

fn clock_unsync() -> ClockState {
    ClockState {
        tai_offset_s: 37,
        synchronized: false,
        est_error_ns: 0,
        max_error_ns: 0,
        source: ClockSource::Unsynchronized,
        leap: LeapState::None,
        phc_present: false,
    }
}

fn clock_ptp() -> ClockState {
    ClockState {
        synchronized: true,
        est_error_ns: 100,
        max_error_ns: 1000,
        source: ClockSource::External,
        phc_present: true,
        ..clock_unsync()
    }
}

fn fixed_t3() -> Stamp {
    Stamp {
        ns: T3_TAI,
        scale: TimeScale::Tai,
        source: StampSource::UserSpace,
    }
}

fn t2(source: StampSource) -> Stamp {
    Stamp {
        ns: T2_TAI,
        scale: TimeScale::Tai,
        source,
    }
}

fn spec(ssid: u16, key: Option<&[u8]>, tf: TimeFormat) -> StampSessionSpec {
    StampSessionSpec {
        sender: sender(),
        local: local(),
        ssid,
        key: key.map(|k| Zeroizing::new(k.to_vec())),
        timestamp_format: tf,
        dscp: None,
        cos_policy: CosPolicy::ALLOW_ALL,
        micro_session_id: Some(9),
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

fn engine(s: &StampSessionSpec) -> StampSessionEngine {
    let mut e = StampSessionEngine::from_spec(s).unwrap();
    e.set_t3_source(fixed_t3);
    e
}

fn addrs() -> Option<PacketAddrs> {
    Some(PacketAddrs {
        src: sender(),
        dst: Some(local()),
        src_mac: None,
    })
}

/// An unauthenticated sender packet: seq, SSID, TLV area.
fn request(seq: u32, ssid: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 44];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[4..12].copy_from_slice(&NtpTimestamp::from_utc_ns(T2_TAI - 37 * NS - 5000).to_bytes());
    p[12..14].copy_from_slice(&[0x00, 0x01]);
    p[14..16].copy_from_slice(&ssid.to_be_bytes());
    p.extend_from_slice(tlvs);
    p
}

fn tlv(flags: u8, ty: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, ty];
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn reflect(
    e: &mut StampSessionEngine,
    rx: &[u8],
    tos: u8,
    clock: &ClockState,
    t2src: StampSource,
) -> Result<Vec<u8>, DropReason> {
    let mut out = vec![0u8; 2048];
    let n = e.reflect_at(
        rx,
        RxMeta { ttl: 61, tos },
        addrs(),
        t2(t2src),
        clock,
        Instant::now(),
        &mut out,
    )?;
    out.truncate(n);
    Ok(out)
}

fn no_findings(req: &[u8], rep: &[u8], tos_in: u8, tos_out: u8, layout: StampLayout) {
    let exp = Expectations {
        profile: Profile::Stamp,
        layout,
        reflector_mode: Some(ReflectorMode::Stateful),
        tai_offset: TaiOffset(37),
        hmac: None,
    };
    let q = Observed {
        payload: req,
        ttl: 61,
        tos: tos_in,
        src: sender(),
        dst: local(),
        capture_utc_ns: None,
    };
    let r = Observed {
        payload: rep,
        ttl: 64,
        tos: tos_out,
        src: local(),
        dst: sender(),
        capture_utc_ns: None,
    };
    assert_eq!(validate_reflector(&r, &exp), vec![], "reply findings");
    assert_eq!(validate_pair(&q, &r, &exp), vec![], "pair findings");
}

#[test]
fn stateful_sequence_counts_from_zero_and_ssid_selects_the_session() {
    let mut e = engine(&spec(7, None, TimeFormat::Ntp));
    for (i, sseq) in [100u32, 101, 250].into_iter().enumerate() {
        let req = request(sseq, 7, &[]);
        assert!(e.matches(sender(), &req));
        let rep = reflect(
            &mut e,
            &req,
            0,
            &clock_unsync(),
            StampSource::KernelSoftware,
        )
        .unwrap();
        assert_eq!(rep.len(), 44);
        assert_eq!(rep[0..4], (i as u32).to_be_bytes(), "own counter from 0");
        assert_eq!(rep[24..28], sseq.to_be_bytes(), "sender's copied");
        assert_eq!(rep[14..16], [0, 7], "SSID copied");
        assert_eq!(rep[40], 61, "Session-Sender TTL");
        no_findings(&req, &rep, 0, 0, StampLayout::Unauthenticated);
    }
    assert_eq!(e.next_seq(), 3);
    // Another SSID, or another sender port, is not this session.
    assert!(!e.matches(sender(), &request(1, 8, &[])));
    assert!(!e.matches("198.18.0.1:40001".parse().unwrap(), &request(1, 7, &[])));
    assert!(!e.matches(sender(), &[0u8; 10]));
}

#[test]
fn every_tlv_filled_at_its_rfc_offsets() {
    let mut e = engine(&spec(0x1234, None, TimeFormat::Ntp));
    let mut loc = vec![0, 0, 0, 0];
    loc.extend(tlv(U, 4, &[0; 16])); // Destination IP Address request
    loc.extend(tlv(U, 7, &[0; 16])); // Source IP Address request
    let mut area = Vec::new();
    area.extend(tlv(U, 2, &loc)); // 44: Location, Length 44
    area.extend(tlv(U, 3, &[0, 0, 0, 0])); // 92: Timestamp Information
    area.extend(tlv(U, 4, &[46 << 2, 0, 0, 0])); // 100: CoS, DSCP1 46
    area.extend(tlv(U, 5, &[0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0])); // 108: DM
    area.extend(tlv(U, 6, &[0x10, 1, 0, 0])); // 124: Access Report
    area.extend(tlv(U, 9, &[198, 18, 0, 2])); // 132: Destination Node Address
    area.extend(tlv(U, 10, &tlv(0, 1, &[0, 0, 0, 1]))); // 140: Return Path CC 1
    area.extend(tlv(U, 11, &[0, 5, 0, 0])); // 152: Micro-session ID
    area.extend(tlv(U, 200, &[1, 2, 3, 4])); // 160: unknown
    area.extend(tlv(U, 1, &[0; 12])); // 168: Extra Padding
    let req = request(3, 0x1234, &area);
    // Received with AF21 (18) and ECT(1): TOS 0x49.
    let rep = reflect(&mut e, &req, 0x49, &clock_ptp(), StampSource::NicHardware).unwrap();
    assert_eq!(rep.len(), req.len(), "never longer than the request");

    // Location (RFC 8972 §4.2): ports of the received packet, the request
    // sub-TLVs replaced by Destination IPv4 (5) and Source IPv4 (8), same
    // Length.
    assert_eq!(rep[44..48], [0, 2, 0, 44]);
    assert_eq!(rep[48..52], [0x03, 0x5e, 0x9c, 0x40]);
    assert_eq!(rep[52..60], [0, 5, 0, 16, 198, 18, 0, 2]);
    assert!(rep[60..72].iter().all(|&b| b == 0));
    assert_eq!(rep[72..80], [0, 8, 0, 16, 198, 18, 0, 1]);
    assert!(rep[80..92].iter().all(|&b| b == 0));
    // Timestamp Information (§4.3): PTP-synchronized host (2); T2 from the
    // NIC (1, HW assist), T3 a user-space reading (3, control plane).
    assert_eq!(rep[92..100], [0, 3, 0, 4, 2, 1, 2, 3]);
    // CoS (§4.4): DSCP1 46 kept, DSCP2 18, ECN 1, RP 0:
    // 101110 010010 01 00 → octets 101110|01 and 0010|01|00.
    assert_eq!(rep[100..108], [0, 4, 0, 4, 0b1011_1001, 0b0010_0100, 0, 0]);
    assert_eq!(e.reply_dscp(), Some(46), "the reply goes out with DSCP1");
    // Direct Measurement (§4.5): S_TxC copied, R_RxC = R_TxC = 1.
    assert_eq!(
        rep[108..124],
        [0, 5, 0, 12, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 1]
    );
    // Access Report (§4.6): echoed, U cleared.
    assert_eq!(rep[124..132], [0, 6, 0, 4, 0x10, 1, 0, 0]);
    // Destination Node Address (RFC 9503 §3): ours → U = 0.
    assert_eq!(rep[132..140], [0, 9, 0, 4, 198, 18, 0, 2]);
    // Return Path (RFC 9503 §4): reply on the same link → U = 0.
    assert_eq!(rep[140], 0);
    assert_eq!(rep[141..152], req[141..152]);
    // Micro-session ID (RFC 9534): sender's kept, ours (9) filled.
    assert_eq!(rep[152..160], [0, 11, 0, 4, 0, 5, 0, 9]);
    // Unknown: U = 1, the rest as received.
    assert_eq!(rep[160], U);
    assert_eq!(rep[161..168], req[161..168]);
    // Extra Padding: U cleared, padding unchanged.
    assert_eq!(rep[168], 0);
    assert_eq!(rep[169..], req[169..]);
    no_findings(&req, &rep, 0x49, 46 << 2, StampLayout::Unauthenticated);
}

#[test]
fn cos_refused_by_policy_keeps_the_received_dscp() {
    let mut s = spec(1, None, TimeFormat::Ntp);
    s.cos_policy = CosPolicy(1 << 10); // only AF11 (10) permitted
    let mut e = engine(&s);
    let req = request(0, 1, &tlv(U, 4, &[46 << 2, 0, 0, 0]));
    let rep = reflect(&mut e, &req, 0xb8, &clock_unsync(), StampSource::UserSpace).unwrap();
    // DSCP1 46, DSCP2 46, ECN 0, RP 1.
    assert_eq!(rep[48..52], [0b1011_1010, 0b1110_0001, 0, 0]);
    assert_eq!(e.reply_dscp(), Some(46), "the received DSCP, not DSCP1");
    let req = request(1, 1, &tlv(U, 4, &[10 << 2, 0, 0, 0]));
    let _ = reflect(&mut e, &req, 0xb8, &clock_unsync(), StampSource::UserSpace).unwrap();
    assert_eq!(e.reply_dscp(), Some(10), "permitted: DSCP1");
}

#[test]
fn unusable_rfc9503_tlvs_and_unknown_access_id_get_u() {
    let mut e = engine(&StampSessionSpec {
        micro_session_id: None,
        ..spec(2, None, TimeFormat::Ntp)
    });
    let mut area = Vec::new();
    area.extend(tlv(U, 9, &[198, 18, 0, 99])); // 44: not our address
    area.extend(tlv(U, 10, &tlv(0, 2, &[198, 18, 0, 77]))); // 52: return elsewhere
    area.extend(tlv(U, 11, &[0, 5, 0, 0])); // 64: no member link
    area.extend(tlv(U, 6, &[0x30, 1, 0, 0])); // 72: ID 3
    let req = request(0, 2, &area);
    let rep = reflect(&mut e, &req, 0, &clock_unsync(), StampSource::UserSpace).unwrap();
    for at in [44, 52, 64, 72] {
        assert_eq!(rep[at], U, "TLV at {at}");
    }
    assert_eq!(rep[44..], req[44..], "values untouched");
}

#[test]
fn malformed_chain_gets_m_and_the_rest_is_copied() {
    let mut e = engine(&spec(3, None, TimeFormat::Ntp));
    let mut area = tlv(U, 4, &[0, 0, 0, 0]); // 44: CoS fine
    area.extend(tlv(U, 7, &[0; 12])); // 52: Follow-Up with Length 12 (EID 8339)
    area.extend(tlv(U, 5, &[0; 12])); // 68: DM, not processed
    let req = request(0, 3, &area);
    let rep = reflect(&mut e, &req, 0, &clock_unsync(), StampSource::UserSpace).unwrap();
    assert_eq!(rep[44], 0);
    assert_eq!(rep[52], U | M);
    assert_eq!(rep[53..], req[53..], "after M: copied as received");
    assert_eq!(rep.len(), req.len());
}

#[test]
fn follow_up_carries_the_recorded_transmit_stamp_of_the_previous_reply() {
    let mut e = engine(&spec(7, None, TimeFormat::Ntp));
    let fut = tlv(U, 7, &[0; 16]);
    let clock = clock_unsync();
    // First reply: nothing before it: all zero.
    let rep = reflect(
        &mut e,
        &request(0, 7, &fut),
        0,
        &clock,
        StampSource::KernelSoftware,
    )
    .unwrap();
    assert_eq!(rep[44..48], [0, 7, 0, 16]);
    assert!(rep[48..64].iter().all(|&b| b == 0));
    // The data plane records the transmit-completion stamp of reply 0.
    let tx0 = Stamp {
        ns: T3_TAI + 12_345,
        scale: TimeScale::Tai,
        source: StampSource::NicHardware,
    };
    e.record_tx(0, tx0);
    let rep = reflect(
        &mut e,
        &request(1, 7, &fut),
        0,
        &clock,
        StampSource::KernelSoftware,
    )
    .unwrap();
    assert_eq!(rep[0..4], [0, 0, 0, 1]);
    assert_eq!(
        rep[48..52],
        [0, 0, 0, 0],
        "previous reply's Sequence Number"
    );
    // NTP = UTC: TAI − 37 s, seconds since 1900.
    let want = NtpTimestamp::from_utc_ns(T3_TAI + 12_345 - 37 * NS).to_bytes();
    assert_eq!(rep[52..60], want, "its transmit stamp");
    assert_eq!(rep[60], 1, "hardware assist");
    assert_eq!(rep[61..64], [0, 0, 0]);
    // In-packet T3 is the user-space reading, different from the TX stamp.
    assert_ne!(rep[4..12], want);
    // No stamp recorded for reply 1 (veth/loopback socket path): Sequence
    // Number of reply 1, Timestamp zero, mode 0, and counted.
    let rep = reflect(
        &mut e,
        &request(2, 7, &fut),
        0,
        &clock,
        StampSource::KernelSoftware,
    )
    .unwrap();
    assert_eq!(rep[48..52], [0, 0, 0, 1]);
    assert!(rep[52..61].iter().all(|&b| b == 0));
    let c = e.stamp_counters();
    assert_eq!((c.follow_up_stamped, c.follow_up_unstamped), (1, 1));
    // A stamp for a reply that is no longer the last is not used.
    e.record_tx(0, tx0);
    assert_eq!(e.stamp_counters().tx_stamps_late, 1);
    assert_eq!(e.previous().unwrap().tx, None);
    // Software TX stamp: mode 2.
    e.record_tx(
        2,
        Stamp {
            source: StampSource::KernelSoftware,
            ..tx0
        },
    );
    let rep = reflect(
        &mut e,
        &request(3, 7, &fut),
        0,
        &clock,
        StampSource::KernelSoftware,
    )
    .unwrap();
    assert_eq!(rep[48..52], [0, 0, 0, 2]);
    assert_eq!(rep[60], 2);
}

#[test]
fn ptp_and_ntp_sessions_give_the_same_times_modulo_tai() {
    let mut ntp = engine(&spec(1, None, TimeFormat::Ntp));
    let mut ptp = engine(&spec(1, None, TimeFormat::Ptp));
    let clock = clock_unsync(); // TAI − UTC = 37 s
    let req = request(0, 1, &[]);
    let a = reflect(&mut ntp, &req, 0, &clock, StampSource::KernelSoftware).unwrap();
    let b = reflect(&mut ptp, &req, 0, &clock, StampSource::KernelSoftware).unwrap();
    // Z bit: 0 for NTP, 1 for PTP (Error Estimate bit 14).
    assert_eq!(a[12] & 0x40, 0);
    assert_eq!(b[12] & 0x40, 0x40);
    // PTP: seconds since 1970 TAI, nanoseconds — the TAI clock unchanged.
    let p2 = PtpTimestamp::from_bytes(b[16..24].try_into().unwrap());
    let p3 = PtpTimestamp::from_bytes(b[4..12].try_into().unwrap());
    assert_eq!(
        u32::from_be_bytes(b[16..20].try_into().unwrap()) as u64,
        T2_TAI / NS
    );
    assert_eq!(
        u32::from_be_bytes(b[20..24].try_into().unwrap()) as u64,
        T2_TAI % NS
    );
    assert_eq!(p2.to_tai_ns(), T2_TAI);
    assert_eq!(p3.to_tai_ns(), T3_TAI);
    // NTP: UTC seconds since 1900 = TAI − 37 s + 2 208 988 800.
    let n2 = NtpTimestamp::from_bytes(a[16..24].try_into().unwrap());
    let secs = u32::from_be_bytes(a[16..20].try_into().unwrap()) as u64;
    assert_eq!(secs, T2_TAI / NS - 37 + 2_208_988_800);
    // Both name the same instant within the NTP fraction's resolution.
    let diff = (n2.to_utc_ns() + 37 * NS) as i64 - p2.to_tai_ns() as i64;
    assert!(diff.abs() <= 1, "NTP vs PTP T2 differ by {diff} ns");
    let n3 = NtpTimestamp::from_bytes(a[4..12].try_into().unwrap());
    let diff3 = (n3.to_utc_ns() + 37 * NS) as i64 - p3.to_tai_ns() as i64;
    assert!(diff3.abs() <= 1);
    // The sender's own timestamp is copied as is in both.
    assert_eq!(a[28..36], req[4..12]);
    assert_eq!(b[28..36], req[4..12]);
}

const KEY: &[u8; 32] = b"stamp-golden-hmac-key-0123456789";

fn auth_request(seq: u32, ssid: u16, tlvs: &[u8], with_hmac_tlv: bool) -> Vec<u8> {
    let h = StampHmac::new(KEY);
    let mut p = vec![0u8; 112];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[16..24].copy_from_slice(&NtpTimestamp::from_utc_ns(T2_TAI - 37 * NS).to_bytes());
    p[24..26].copy_from_slice(&[0x00, 0x01]);
    p[26..28].copy_from_slice(&ssid.to_be_bytes());
    p.extend_from_slice(tlvs);
    if with_hmac_tlv {
        let tag = h.compute(&[&p[0..4], &p[112..]]);
        p.extend(tlv(U, 8, &tag));
    }
    h.seal_packet(&mut p).unwrap();
    p
}

#[test]
fn authenticated_session_hmac_tlv_position_and_fresh_tags() {
    let h = StampHmac::new(KEY);
    let mut e = engine(&spec(5, Some(KEY), TimeFormat::Ntp));
    let cos = tlv(U, 4, &[10 << 2, 0, 0, 0]);
    // Good: CoS then HMAC.
    let req = auth_request(40, 5, &cos, true);
    let rep = reflect(&mut e, &req, 0, &clock_unsync(), StampSource::UserSpace).unwrap();
    assert_eq!(rep.len(), req.len());
    assert_eq!(rep[0..4], [0, 0, 0, 0], "own counter");
    assert_eq!(rep[48..52], 40u32.to_be_bytes());
    h.verify_packet(&rep)
        .expect("base HMAC over the reply's 0-95");
    assert_eq!((rep[112], rep[120]), (0, 0), "CoS and HMAC processed");
    h.verify(&[&rep[0..4], &rep[112..120]], &rep[124..140])
        .expect("fresh HMAC TLV over our Sequence Number and the reflected TLVs");
    // Misplaced: HMAC first, then CoS → I on every TLV, values untouched.
    let mut area = Vec::new();
    let tag = h.compute(&[&1u32.to_be_bytes()[..]]);
    area.extend(tlv(U, 8, &tag));
    area.extend(cos.clone());
    let req = auth_request(1, 5, &area, false);
    let rep = reflect(&mut e, &req, 0, &clock_unsync(), StampSource::UserSpace).unwrap();
    assert_eq!(rep[112], U | I);
    assert_eq!(rep[132], U | I);
    assert_eq!(rep[113..132], req[113..132]);
    assert_eq!(rep[133..], req[133..]);
    // Missing HMAC TLV with a TLV to protect → I.
    let req = auth_request(2, 5, &cos, false);
    let rep = reflect(&mut e, &req, 0, &clock_unsync(), StampSource::UserSpace).unwrap();
    assert_eq!(rep[112], U | I);
    // Extra Padding alone needs no HMAC TLV.
    let req = auth_request(3, 5, &tlv(U, 1, &[0; 8]), false);
    let rep = reflect(&mut e, &req, 0, &clock_unsync(), StampSource::UserSpace).unwrap();
    assert_eq!(rep[112], 0);
    // A bad base HMAC is dropped, never reflected, and not counted as a reply.
    let mut bad = auth_request(4, 5, &[], false);
    bad[50] ^= 1;
    assert_eq!(
        reflect(&mut e, &bad, 0, &clock_unsync(), StampSource::UserSpace),
        Err(DropReason::BadHmac)
    );
    assert_eq!(
        e.next_seq(),
        4,
        "only reflected packets advance the counter"
    );
    no_findings(
        &auth_request(9, 5, &[], false),
        &reflect(
            &mut e,
            &auth_request(9, 5, &[], false),
            0,
            &clock_unsync(),
            StampSource::UserSpace,
        )
        .unwrap(),
        0,
        0,
        StampLayout::Authenticated,
    );
}

#[test]
fn short_or_unauthenticated_packets_are_not_reflected_by_an_authenticated_session() {
    let mut e = engine(&spec(5, Some(KEY), TimeFormat::Ntp));
    assert_eq!(
        reflect(
            &mut e,
            &request(0, 5, &[]),
            0,
            &clock_unsync(),
            StampSource::UserSpace
        ),
        Err(DropReason::TooShort)
    );
    let mut unsealed = auth_request(0, 5, &[], false);
    unsealed[96..112].fill(0);
    assert_eq!(
        reflect(
            &mut e,
            &unsealed,
            0,
            &clock_unsync(),
            StampSource::UserSpace
        ),
        Err(DropReason::BadHmac)
    );
    assert_eq!(e.counters().reflected, 0);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any request: no panic; a reply is exactly as long as the
        /// request, keeps the session's SSID and its own Sequence Number.
        #[test]
        fn arbitrary_requests_never_grow_or_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            head in proptest::collection::vec(any::<u8>(), 0..60),
            tos: u8,
            auth: bool,
        ) {
            let s = spec(7, auth.then_some(&KEY[..]), TimeFormat::Ntp);
            let mut e = engine(&s);
            let mut rx = head.clone();
            if rx.len() >= 16 {
                rx[14..16].copy_from_slice(&[0, 7]);
            }
            rx.extend_from_slice(&tail);
            let before = e.next_seq();
            match reflect(&mut e, &rx, tos, &clock_unsync(), StampSource::UserSpace) {
                Ok(rep) => {
                    prop_assert_eq!(rep.len(), rx.len());
                    prop_assert_eq!(&rep[0..4], &before.to_be_bytes());
                    prop_assert_eq!(&rep[14..16], &rx[14..16]);
                }
                Err(_) => prop_assert_eq!(e.next_seq(), before),
            }
        }
    }
}

/// A Return Path TLV (RFC 9503 §4) holding a Control Code sub-TLV.
fn return_path(control_code: u32) -> Vec<u8> {
    tlv(U, 10, &tlv(0, 1, &control_code.to_be_bytes()))
}

/// RFC 9503 §4.1.1 Control Code 0 ("No Reply Requested", stamp.md §5):
/// nothing is sent, the packet is counted as received and as a no-reply
/// drop, and the session's Sequence Number does not advance (it numbers
/// reflected packets, RFC 8762 §4.3.1). Control Code 1 is answered.
#[test]
fn return_path_no_reply_is_not_answered_but_counted() {
    let mut e = engine(&spec(3, None, TimeFormat::Ntp));
    let clock = clock_unsync();
    let src = StampSource::KernelSoftware;
    let rp0 = return_path(0);
    assert_eq!(
        reflect(&mut e, &request(0, 3, &rp0), 0, &clock, src),
        Err(DropReason::NoReplyRequested)
    );
    let r = reflect(&mut e, &request(1, 3, &return_path(1)), 0, &clock, src).unwrap();
    assert_eq!(&r[0..4], &0u32.to_be_bytes(), "first reply numbered 0");
    assert_eq!(r[44], 0, "Control Code 1 understood: U = 0");
    assert_eq!(e.received(), 2);
    let c = e.counters();
    assert_eq!(c.reflected, 1);
    assert_eq!(c.dropped.get(DropReason::NoReplyRequested), 1);
    assert_eq!(e.activity(Instant::now()).drops.no_reply, 1);
    // Other Control Code bits are MBZ: not ours to interpret, U = 1,
    // answered.
    let r = reflect(&mut e, &request(2, 3, &return_path(0x10)), 0, &clock, src).unwrap();
    assert_eq!(r[44] & U, U);
}

/// Direct Measurement (RFC 8972 §4.5) on a stateful session: R_RxC counts
/// every test packet of the session received — reflected, rate limited or
/// "no reply" — and R_TxC the replies transmitted; a forged authenticated
/// packet is not one of the session's.
#[test]
fn direct_measurement_counts_every_received_packet() {
    let mut s = spec(4, Some(KEY), TimeFormat::Ntp);
    s.rate_limit_pps = 10;
    s.rate_burst = 1;
    let mut e = engine(&s);
    let clock = clock_unsync();
    let h = StampHmac::new(KEY);
    let dm = |s_txc: u32| {
        let mut v = s_txc.to_be_bytes().to_vec();
        v.extend_from_slice(&[0; 8]);
        tlv(U, 5, &v)
    };
    let mut out = vec![0u8; 2048];
    let t0 = Instant::now();
    let mut at = |e: &mut StampSessionEngine, seq: u32, extra: &[u8], t: Instant| {
        let mut area = dm(seq + 100);
        area.extend_from_slice(extra);
        let req = auth_request(seq, 4, &area, true);
        e.reflect_at(
            &req,
            RxMeta { ttl: 64, tos: 0 },
            addrs(),
            t2(StampSource::KernelSoftware),
            &clock,
            t,
            &mut out,
        )
        .map(|n| out[..n].to_vec())
    };
    let r = at(&mut e, 0, &[], t0).unwrap();
    h.verify_packet(&r).unwrap();
    assert_eq!(&r[116..128], &[0, 0, 0, 100, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(at(&mut e, 1, &[], t0), Err(DropReason::RateLimited));
    let later = t0 + std::time::Duration::from_millis(100);
    assert_eq!(
        at(&mut e, 2, &return_path(0), later),
        Err(DropReason::NoReplyRequested)
    );
    // A forgery (HMAC over other octets) is not counted.
    let mut forged = auth_request(3, 4, &dm(103), true);
    forged[100] ^= 1;
    assert_eq!(
        e.reflect_at(
            &forged,
            RxMeta::default(),
            addrs(),
            t2(StampSource::KernelSoftware),
            &clock,
            later,
            &mut vec![0u8; 2048],
        ),
        Err(DropReason::BadHmac)
    );
    let r = at(&mut e, 4, &[], later).unwrap();
    h.verify_packet(&r).unwrap();
    // S_TxC copied; received 0, 1, 2 and 4; transmitted 0 and 4.
    assert_eq!(&r[116..128], &[0, 0, 0, 104, 0, 0, 0, 4, 0, 0, 0, 2]);
    assert_eq!(&r[0..4], &1u32.to_be_bytes(), "second reply");
}
