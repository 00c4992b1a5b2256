//! The session reflection engine on buffers (no sockets): byte-exact against
//! the spec's test vectors TV-5..TV-8 and the real perfSONAR session TV-15,
//! field offsets read straight from the RFC layouts (twamp-test.md §2–§3),
//! the life cycle, the rate limit and every drop reason.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::SessionKeys;
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::time::TimeFormat;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::clock::{
    ClockSource, ClockState, LeapState, Stamp, StampSource, TimeScale,
};
use ricochet_reflector::engine::{DropReason, EngineError, RunState, RxMeta, SessionEngine};
use ricochet_reflector::session_table::SessionSpec;
use ricochet_testkit::unhex;

const NTP_UNIX: u64 = 2_208_988_800;
const NS: u64 = 1_000_000_000;

/// UTC nanoseconds of an NTP timestamp whose fraction is a multiple of 2^-7 s
/// (exact in both directions).
fn ntp_to_utc_ns(secs: u32, frac: u32) -> u64 {
    (u64::from(secs) - NTP_UNIX) * NS + ((u64::from(frac) * NS) >> 32)
}

/// TV-7/8: T2 = e8a1b2c6 48000000, T3 = e8a1b2c6 50000000.
fn tv_t2() -> Stamp {
    Stamp {
        ns: ntp_to_utc_ns(0xe8a1_b2c6, 0x4800_0000),
        scale: TimeScale::Utc,
        source: StampSource::KernelSoftware,
    }
}

fn tv_t3() -> Stamp {
    Stamp {
        ns: ntp_to_utc_ns(0xe8a1_b2c6, 0x5000_0000),
        scale: TimeScale::Utc,
        source: StampSource::UserSpace,
    }
}

/// A synchronized clock with a zero error bound: Error Estimate 0x8001, the
/// value of TV-7/8. TAI offset 37 (the conversions must cancel out for NTP).
fn synced_clock() -> ClockState {
    ClockState {
        tai_offset_s: 37,
        synchronized: true,
        est_error_ns: 0,
        max_error_ns: 0,
        source: ClockSource::External,
        leap: LeapState::None,
        phc_present: false,
    }
}

fn unsynced_clock() -> ClockState {
    ClockState {
        tai_offset_s: 0,
        synchronized: false,
        est_error_ns: 250_000,
        max_error_ns: 40_000_000,
        source: ClockSource::Unsynchronized,
        leap: LeapState::None,
        phc_present: false,
    }
}

/// TV-4 test keys.
fn tv4_keys() -> SessionKeys {
    let mut k = SessionKeys {
        aes: [0; 16],
        hmac: [0; 32],
    };
    k.aes
        .copy_from_slice(&unhex("c4d70fad54262041db75729ce85c59c8"));
    k.hmac.copy_from_slice(&unhex(
        "8f59f0557f1aa0229c9a67c75c7f55b0 0807ea5aa3a6c2edd2279e48f9578607",
    ));
    k
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn started(format: SessionFormat, keys: Option<&SessionKeys>) -> SessionEngine {
    let mut e = SessionEngine::new(format, keys, 0, 0, 0).unwrap();
    e.set_t3_source(tv_t3);
    e.start();
    e
}

const META_TTL_62: RxMeta = RxMeta { ttl: 62, tos: 0 };

/// Reflects `rx` `n` times and returns the last reply.
fn reflect_n(e: &mut SessionEngine, rx: &[u8], n: usize, clock: &ClockState) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    let mut len = 0;
    for _ in 0..n {
        len = e
            .reflect(rx, META_TTL_62, tv_t2(), clock, &mut out)
            .expect("reflected");
    }
    out.truncate(len);
    out
}

#[test]
fn tv7_authenticated_reply_is_byte_exact() {
    let tv5 = unhex(
        "1c9177f6e27ac793aaaa79159e60e734 e8a1b2c6400000008001000000000000 \
         e1a3ae92c6e53c64742e0ec2e3b20b69",
    );
    let keys = tv4_keys();
    let mut e = started(SessionFormat::new(TestSecurity::Authenticated), Some(&keys));
    // Reflector sequence numbers count from 0: the fourth reply carries 3.
    let reply = reflect_n(&mut e, &tv5, 4, &synced_clock());
    let plain = unhex(
        "00000003000000000000000000000000 e8a1b2c6500000008001000000000000 \
         e8a1b2c6480000000000000000000000 00000007000000000000000000000000 \
         e8a1b2c6400000008001000000000000 3e000000000000000000000000000000",
    );
    let mut tv7 = unhex("18460724b60873222d8e7799d4836105");
    tv7.extend_from_slice(&plain[16..96]);
    tv7.extend_from_slice(&unhex("eda5bafa2527187809603c339106854b"));
    assert_eq!(hex(&reply), hex(&tv7));
    assert_eq!(e.next_seq(), 4);
    assert_eq!(e.counters().reflected, 4);
}

#[test]
fn tv8_encrypted_reply_is_byte_exact() {
    let tv6 = unhex(
        "1c9177f6e27ac793aaaa79159e60e734 9dabfef0f969272d1c2cd679488e70c2 \
         72c9205e8cbd91883b92b5b3f3044531",
    );
    let keys = tv4_keys();
    let mut e = started(SessionFormat::new(TestSecurity::Encrypted), Some(&keys));
    let reply = reflect_n(&mut e, &tv6, 4, &synced_clock());
    let tv8 = unhex(
        "18460724b60873222d8e7799d4836105 bcb4bbbc45eddf26cadec73d0f6e18a7 \
         d3b01d2abb7796e0ba5b2463e617574e 7026e0a9d7ec4c12dac3599300e9c14f \
         f0f96044eee30039a129dec63c6c06a6 e5032160c9d07a5728a47d04175a76fa \
         b33e09f36ee401404d5dea9aaf803770",
    );
    assert_eq!(hex(&reply), hex(&tv8));
}

#[test]
fn tv15_first_perfsonar_reply_block_and_hmac_match() {
    // The real twampd reply to the first twping packet: block 0 (reflector
    // sequence 0) and the HMAC over it depend only on the keys.
    let mut keys = SessionKeys {
        aes: [0; 16],
        hmac: [0; 32],
    };
    keys.aes
        .copy_from_slice(&unhex("2c8c50e455ffbb00ce9820f06887066d"));
    keys.hmac.copy_from_slice(&unhex(
        "10e4ab92adceb4ce84123411152df16f442bb1604bb2b429a61b8a911fb099fd",
    ));
    let mut sender = unhex(
        "47ec1dd24ee1f77db98505ea57827f0a eeb381c954332f010001000000000000 \
         7ad3e6bc8a55cf4f5d5feb038176d994",
    );
    sender.extend_from_slice(&[0u8; 64]);
    let mut e = started(SessionFormat::new(TestSecurity::Authenticated), Some(&keys));
    let mut out = [0u8; 512];
    let n = e
        .reflect(
            &sender,
            RxMeta { ttl: 255, tos: 0 },
            tv_t2(),
            &unsynced_clock(),
            &mut out,
        )
        .unwrap();
    // 112 → 112 (perfsonar-interop.md §3).
    assert_eq!(n, 112);
    let r = &out[..n];
    assert_eq!(hex(&r[..16]), "47ec1dd24ee1f77db98505ea57827f0a");
    assert_eq!(hex(&r[96..112]), "7ad3e6bc8a55cf4f5d5feb038176d994");
    // Sender Timestamp and Error Estimate copied verbatim; Sender TTL 255.
    assert_eq!(hex(&r[64..74]), "eeb381c954332f010001");
    assert_eq!(r[80], 0xff);
    // The unsynchronized host's estimate: S = 0, Multiplier ≥ 1.
    assert_eq!(r[24] & 0x80, 0);
    assert_ne!(r[25], 0);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 14-octet unauthenticated sender packet followed by `pad` octets.
fn unauth_sender(seq: u32, pad: usize) -> Vec<u8> {
    let mut p = vec![0u8; 14 + pad];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[4..12].copy_from_slice(&0xe8a1_b2c6_4000_0000u64.to_be_bytes());
    p[12..14].copy_from_slice(&0x8001u16.to_be_bytes());
    for (i, b) in p[14..].iter_mut().enumerate() {
        *b = i as u8 ^ 0x5a;
    }
    p
}

#[test]
fn unauthenticated_fields_at_rfc_offsets() {
    let mut e = started(SessionFormat::default(), None);
    let mut out = [0u8; 2048];
    for (i, sender_seq) in [17u32, 17, 4].into_iter().enumerate() {
        let rx = unauth_sender(sender_seq, 0);
        let n = e
            .reflect(&rx, META_TTL_62, tv_t2(), &synced_clock(), &mut out)
            .unwrap();
        // 14 → 41 (RFC 5357 §4.2.1: the minimum when there is no padding).
        assert_eq!(n, 41);
        let r = &out[..n];
        // Own counter 0, 1, 2 whatever the sender's numbers (duplicates too).
        assert_eq!(be32(r, 0), i as u32);
        assert_eq!(hex(&r[4..12]), "e8a1b2c650000000", "T3");
        assert_eq!(be16(r, 12), 0x8001, "Error Estimate");
        assert_eq!(be16(r, 14), 0, "MBZ");
        assert_eq!(hex(&r[16..24]), "e8a1b2c648000000", "T2");
        assert_eq!(be32(r, 24), sender_seq);
        assert_eq!(hex(&r[28..36]), "e8a1b2c640000000");
        assert_eq!(be16(r, 36), 0x8001);
        assert_eq!(be16(r, 38), 0, "MBZ");
        assert_eq!(r[40], 62, "Sender TTL");
    }
}

#[test]
fn reply_lengths_follow_the_truncation_rule() {
    // twamp-test.md §4: max(received, 41 | 112), padding prefix kept.
    let mut open = started(SessionFormat::default(), None);
    let mut out = [0u8; 2048];
    for (rx_len, want) in [(14, 41), (40, 41), (41, 41), (42, 42), (214, 214)] {
        let rx = unauth_sender(0, rx_len - 14);
        let n = open
            .reflect(&rx, META_TTL_62, tv_t2(), &synced_clock(), &mut out)
            .unwrap();
        assert_eq!(n, want, "{rx_len}");
        // The sender padding reused from its first octet, tail truncated.
        let keep = n - 41;
        assert_eq!(
            &out[41..41 + keep.min(rx_len - 14)],
            &rx[14..14 + keep.min(rx_len - 14)]
        );
        assert!(out[41 + keep.min(rx_len - 14)..n].iter().all(|&b| b == 0));
    }
    let keys = tv4_keys();
    for security in [TestSecurity::Authenticated, TestSecurity::Encrypted] {
        let mut e = started(SessionFormat::new(security), Some(&keys));
        for (rx_len, want) in [(48, 112), (112, 112), (300, 300)] {
            let mut rx = protect_sender(security, &keys, 9, rx_len);
            rx.truncate(rx_len);
            let n = e
                .reflect(&rx, META_TTL_62, tv_t2(), &synced_clock(), &mut out)
                .unwrap();
            assert_eq!(n, want, "{security:?} {rx_len}");
        }
    }
}

/// A protected sender packet of `len` octets (≥ 48) with sequence `seq`,
/// built with the protocol crate's sender-side protection.
fn protect_sender(security: TestSecurity, keys: &SessionKeys, seq: u32, len: usize) -> Vec<u8> {
    use ricochet_protocol::crypto::{PacketRole, TestKeys, TestProtection};
    let mut p = vec![0u8; len.max(48)];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[16..24].copy_from_slice(&0xe8a1_b2c6_4000_0000u64.to_be_bytes());
    p[24..26].copy_from_slice(&0x8001u16.to_be_bytes());
    for (i, b) in p[48..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mode = match security {
        TestSecurity::Authenticated => TestProtection::Authenticated,
        TestSecurity::Encrypted => TestProtection::Encrypted,
        TestSecurity::Unauthenticated => unreachable!(),
    };
    TestKeys::new(keys)
        .protect(PacketRole::Sender, mode, &mut p)
        .unwrap();
    p
}

#[test]
fn bad_hmac_is_dropped_counted_and_does_not_consume_a_sequence_number() {
    let keys = tv4_keys();
    let mut out = [0u8; 512];
    for security in [TestSecurity::Authenticated, TestSecurity::Encrypted] {
        let mut e = started(SessionFormat::new(security), Some(&keys));
        let good = protect_sender(security, &keys, 5, 112);
        // A flipped bit in the encrypted block, in the HMAC, or (encrypted
        // mode) in the timestamp: all covered by the HMAC.
        let mut flips = vec![3usize, 40];
        if security == TestSecurity::Encrypted {
            flips.push(20);
        }
        for at in flips {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert_eq!(
                e.reflect(&bad, META_TTL_62, tv_t2(), &synced_clock(), &mut out),
                Err(DropReason::BadHmac),
                "{security:?} octet {at}"
            );
        }
        // Wrong keys.
        let mut other = tv4_keys();
        other.hmac[0] ^= 1;
        let forged = protect_sender(security, &other, 5, 112);
        assert_eq!(
            e.reflect(&forged, META_TTL_62, tv_t2(), &synced_clock(), &mut out),
            Err(DropReason::BadHmac)
        );
        let bad_count = e.counters().dropped.get(DropReason::BadHmac);
        assert!(bad_count >= 3);
        assert_eq!(e.counters().reflected, 0);
        // The next good packet still gets reflector sequence 0.
        let n = e
            .reflect(&good, META_TTL_62, tv_t2(), &synced_clock(), &mut out)
            .unwrap();
        let plain = unprotect_reply(security, &keys, &mut out[..n]);
        assert_eq!(be32(&plain, 0), 0);
        assert_eq!(be32(&plain, 48), 5, "decrypted sender sequence copied");
        assert_eq!(hex(&plain[64..72]), "e8a1b2c640000000");
        assert_eq!(be16(&plain, 72), 0x8001);
        assert_eq!(e.counters().dropped.total(), bad_count);
    }
}

#[test]
fn authenticated_mode_leaves_the_clear_timestamp_unchecked() {
    // Authenticated mode covers block 0 only (RFC 4656 §4.1.2): a changed
    // sender timestamp still verifies and is copied as received.
    let keys = tv4_keys();
    let mut e = started(SessionFormat::new(TestSecurity::Authenticated), Some(&keys));
    let mut rx = protect_sender(TestSecurity::Authenticated, &keys, 1, 112);
    rx[23] ^= 0xff;
    let mut out = [0u8; 512];
    let n = e
        .reflect(&rx, META_TTL_62, tv_t2(), &synced_clock(), &mut out)
        .unwrap();
    assert_eq!(out[71], 0xff, "{}", hex(&out[..n]));
}

fn unprotect_reply(security: TestSecurity, keys: &SessionKeys, r: &mut [u8]) -> Vec<u8> {
    use ricochet_protocol::crypto::{PacketRole, TestKeys, TestProtection};
    let mode = match security {
        TestSecurity::Authenticated => TestProtection::Authenticated,
        _ => TestProtection::Encrypted,
    };
    TestKeys::new(keys)
        .unprotect(PacketRole::Reflector, mode, r)
        .expect("reply HMAC verifies");
    r.to_vec()
}

#[test]
fn too_short_packets_are_dropped() {
    let mut out = [0u8; 512];
    let mut open = started(SessionFormat::default(), None);
    assert_eq!(
        open.reflect(&[0u8; 13], META_TTL_62, tv_t2(), &synced_clock(), &mut out),
        Err(DropReason::TooShort)
    );
    let keys = tv4_keys();
    let mut auth = started(SessionFormat::new(TestSecurity::Encrypted), Some(&keys));
    let rx = protect_sender(TestSecurity::Encrypted, &keys, 0, 48);
    assert_eq!(
        auth.reflect(&rx[..47], META_TTL_62, tv_t2(), &synced_clock(), &mut out),
        Err(DropReason::TooShort)
    );
    // An output buffer that cannot hold the 41-octet reply.
    assert_eq!(
        open.reflect(
            &[0u8; 14],
            META_TTL_62,
            tv_t2(),
            &synced_clock(),
            &mut out[..40]
        ),
        Err(DropReason::BufferTooSmall)
    );
    assert_eq!(open.counters().dropped.get(DropReason::TooShort), 1);
    assert_eq!(open.counters().dropped.get(DropReason::BufferTooSmall), 1);
    assert_eq!(auth.counters().dropped.get(DropReason::TooShort), 1);
}

#[test]
fn life_cycle_gates_reflection() {
    let mut e = SessionEngine::new(SessionFormat::default(), None, 0, 0, 0).unwrap();
    let rx = unauth_sender(0, 27);
    let mut out = [0u8; 128];
    let t0 = Instant::now();
    let clock = synced_clock();
    let mut at = |e: &mut SessionEngine, t: Instant| {
        e.reflect_at(&rx, META_TTL_62, tv_t2(), &clock, t, &mut out)
    };
    assert_eq!(at(&mut e, t0), Err(DropReason::NotStarted));
    assert_eq!(e.activity(t0).idle, None);
    e.start();
    assert_eq!(at(&mut e, t0), Ok(41));
    e.stop(t0, Duration::from_secs(2));
    assert_eq!(at(&mut e, t0 + Duration::from_millis(1999)), Ok(41));
    assert_eq!(
        at(&mut e, t0 + Duration::from_secs(2)),
        Err(DropReason::Expired)
    );
    assert!(e.is_expired(t0 + Duration::from_secs(2)));
    let c = e.counters();
    assert_eq!(c.reflected, 2);
    assert_eq!(c.dropped.get(DropReason::NotStarted), 1);
    assert_eq!(c.dropped.get(DropReason::Expired), 1);
    let a = e.activity(t0 + Duration::from_secs(5));
    assert_eq!((a.reflected, a.dropped), (2, 2));
    // Idle since the last *reflected* packet (t0 + 1999 ms).
    assert_eq!(a.idle, Some(Duration::from_millis(3001)));
}

#[test]
fn rate_limit_drops_above_the_bucket_and_refills() {
    let mut e = SessionEngine::new(SessionFormat::default(), None, 0, 100, 5).unwrap();
    e.start();
    let rx = unauth_sender(0, 0);
    let mut out = [0u8; 128];
    let t0 = Instant::now();
    let clock = synced_clock();
    let results: Vec<_> = (0..8)
        .map(|_| e.reflect_at(&rx, META_TTL_62, tv_t2(), &clock, t0, &mut out))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    assert!(results[5..]
        .iter()
        .all(|r| *r == Err(DropReason::RateLimited)));
    // 100 pps: one more after 10 ms, and sequence numbers stay gap-free.
    let t1 = t0 + Duration::from_millis(10);
    assert_eq!(
        e.reflect_at(&rx, META_TTL_62, tv_t2(), &clock, t1, &mut out),
        Ok(41)
    );
    assert_eq!(be32(&out, 0), 5);
    assert_eq!(
        e.reflect_at(&rx, META_TTL_62, tv_t2(), &clock, t1, &mut out),
        Err(DropReason::RateLimited)
    );
    assert_eq!(e.counters().dropped.get(DropReason::RateLimited), 4);
}

#[test]
fn rate_limited_session_spends_no_token_on_forgeries() {
    let keys = tv4_keys();
    let mut e = SessionEngine::new(
        SessionFormat::new(TestSecurity::Authenticated),
        Some(&keys),
        0,
        1,
        2,
    )
    .unwrap();
    e.start();
    let t0 = Instant::now();
    let good = protect_sender(TestSecurity::Authenticated, &keys, 0, 112);
    let mut bad = good.clone();
    bad[0] ^= 1;
    let mut out = [0u8; 256];
    let clock = synced_clock();
    for _ in 0..10 {
        assert_eq!(
            e.reflect_at(&bad, META_TTL_62, tv_t2(), &clock, t0, &mut out),
            Err(DropReason::BadHmac)
        );
    }
    for _ in 0..2 {
        assert_eq!(
            e.reflect_at(&good, META_TTL_62, tv_t2(), &clock, t0, &mut out),
            Ok(112)
        );
    }
    assert_eq!(
        e.reflect_at(&good, META_TTL_62, tv_t2(), &clock, t0, &mut out),
        Err(DropReason::RateLimited)
    );
}

#[test]
fn ptp_format_sets_z_and_counts_tai_seconds() {
    // RFC 8186 §2.3: PTPv2 truncated, seconds since the PTP epoch in TAI.
    let format = SessionFormat {
        timestamp_format: TimeFormat::Ptp,
        ..SessionFormat::default()
    };
    let mut e = started(format, None);
    let mut out = [0u8; 64];
    let t2 = Stamp {
        ns: 1_700_000_000 * NS + 123_456_789,
        scale: TimeScale::Utc,
        source: StampSource::KernelSoftware,
    };
    let rx = unauth_sender(0, 0);
    let n = e
        .reflect(&rx, META_TTL_62, t2, &synced_clock(), &mut out)
        .unwrap();
    let r = &out[..n];
    assert_eq!(be32(r, 16), 1_700_000_037, "TAI = UTC + 37");
    assert_eq!(be32(r, 20), 123_456_789);
    assert_eq!(be16(r, 12), 0x8000 | 0x4000 | 0x0001, "S, Z, multiplier 1");
    // T3 from the engine's source, also PTP: 1693922374.3125 UTC + 37 s.
    assert_eq!(be32(r, 4), 1_693_922_374 + 37);
    assert_eq!(be32(r, 8), 312_500_000);
    // The sender's NTP timestamp and estimate are copied untouched.
    assert_eq!(hex(&r[28..38]), "e8a1b2c6400000008001");
}

#[test]
fn error_estimate_follows_the_clock_state() {
    let mut e = started(SessionFormat::default(), None);
    let mut out = [0u8; 64];
    let rx = unauth_sender(0, 0);
    e.reflect(&rx, META_TTL_62, tv_t2(), &unsynced_clock(), &mut out)
        .unwrap();
    let ee = be16(&out, 12);
    assert_eq!(ee & 0x8000, 0, "not synchronized: S = 0");
    assert_eq!(ee & 0x4000, 0, "NTP: Z = 0");
    let (scale, mult) = (i32::from((ee >> 8) as u8 & 0x3f), f64::from(ee as u8));
    let err_s = mult * 2f64.powi(scale - 32);
    // At least the 40 ms maximum error, at most twice it.
    assert!((0.04..0.08).contains(&err_s), "{err_s}");
    let mut synced = synced_clock();
    synced.est_error_ns = 250_000;
    e.reflect(&rx, META_TTL_62, tv_t2(), &synced, &mut out)
        .unwrap();
    let ee = be16(&out, 12);
    assert_eq!(ee & 0x8000, 0x8000);
    let (scale, mult) = (i32::from((ee >> 8) as u8 & 0x3f), f64::from(ee as u8));
    assert!(mult >= 1.0);
    let err_s = mult * 2f64.powi(scale - 32);
    assert!((250e-6..500e-6).contains(&err_s), "{err_s}");
}

#[test]
fn dscp_ecn_monitoring_copies_the_received_tos() {
    // RFC 7750 §3: S-DSCP-ECN at octet 41, header 44.
    let format = SessionFormat {
        dscp_ecn_monitoring: true,
        ..SessionFormat::default()
    };
    let mut e = started(format, None);
    let mut out = [0u8; 64];
    let n = e
        .reflect(
            &unauth_sender(0, 0),
            RxMeta { ttl: 9, tos: 0xb9 },
            tv_t2(),
            &synced_clock(),
            &mut out,
        )
        .unwrap();
    assert_eq!(n, 44);
    assert_eq!((out[40], out[41]), (9, 0xb9));
}

fn spec(security: SecurityMode, format: SessionFormat, keys: Option<SessionKeys>) -> SessionSpec {
    SessionSpec {
        sid: Sid([7; 16]),
        sender: "192.0.2.1:4000".parse().unwrap(),
        reflector: "192.0.2.2:5000".parse().unwrap(),
        security,
        format,
        dscp: 46,
        test_keys: keys,
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

#[test]
fn spec_checks_mode_format_keys_and_dscp() {
    let keys = tv4_keys();
    // Mixed mode: control keys exist, test packets are unauthenticated.
    let mixed = SessionEngine::from_spec(&spec(
        SecurityMode::Mixed,
        SessionFormat::default(),
        Some(keys.clone()),
    ))
    .unwrap();
    assert_eq!(mixed.format().security, TestSecurity::Unauthenticated);
    assert_eq!(mixed.dscp(), 46);
    assert_eq!(mixed.state(), RunState::Installed);
    assert_eq!(
        SessionEngine::from_spec(&spec(
            SecurityMode::Mixed,
            SessionFormat::new(TestSecurity::Authenticated),
            Some(keys.clone()),
        ))
        .unwrap_err(),
        EngineError::SecurityMismatch {
            mode: SecurityMode::Mixed,
            expected: TestSecurity::Unauthenticated,
            format: TestSecurity::Authenticated,
        }
    );
    assert_eq!(
        SessionEngine::from_spec(&spec(
            SecurityMode::Encrypted,
            SessionFormat::new(TestSecurity::Encrypted),
            None,
        ))
        .unwrap_err(),
        EngineError::MissingKeys(TestSecurity::Encrypted)
    );
    let mut bad_dscp = spec(
        SecurityMode::Unauthenticated,
        SessionFormat::default(),
        None,
    );
    bad_dscp.dscp = 64;
    assert_eq!(
        SessionEngine::from_spec(&bad_dscp).unwrap_err(),
        EngineError::BadDscp(64)
    );
    // The key material never shows in Debug output.
    let enc = SessionEngine::from_spec(&spec(
        SecurityMode::Encrypted,
        SessionFormat::new(TestSecurity::Encrypted),
        Some(keys),
    ))
    .unwrap();
    let dbg = format!("{enc:?}");
    assert!(
        !dbg.contains("c4d70fad") && !dbg.contains("196, 215"),
        "{dbg}"
    );
}

#[test]
fn source_check_compares_address_and_port() {
    let mut e = SessionEngine::from_spec(&spec(
        SecurityMode::Unauthenticated,
        SessionFormat::default(),
        None,
    ))
    .unwrap();
    let ok: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:4000".parse().unwrap();
    assert_eq!(e.check_source(ok), Ok(()));
    assert_eq!(e.check_source(mapped), Ok(()));
    for bad in ["192.0.2.1:4001", "192.0.2.9:4000", "[2001:db8::1]:4000"] {
        assert_eq!(
            e.check_source(bad.parse().unwrap()),
            Err(DropReason::WrongSource),
            "{bad}"
        );
    }
    assert_eq!(e.counters().dropped.get(DropReason::WrongSource), 3);
}

fn any_format() -> impl Strategy<Value = SessionFormat> {
    (
        prop_oneof![
            Just(TestSecurity::Unauthenticated),
            Just(TestSecurity::Authenticated),
            Just(TestSecurity::Encrypted)
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0u16..200),
    )
        .prop_map(|(security, sym, dscp_ecn, ptp, reflect)| SessionFormat {
            security,
            symmetrical_size: sym,
            dscp_ecn_monitoring: dscp_ecn,
            timestamp_format: if ptp {
                TimeFormat::Ptp
            } else {
                TimeFormat::Ntp
            },
            reflect_octets: reflect.map(|length| ricochet_protocol::twamp_test::ReflectOctets {
                length,
                server_octets: 0,
            }),
            ..SessionFormat::new(security)
        })
}

proptest! {
    /// Any input: no panic; a reply is never shorter than the request nor the
    /// reflector header, fits the buffer, and is the only way the counter
    /// advances; random protected packets never pass the HMAC.
    #[test]
    fn random_input_never_panics(
        format in any_format(),
        rx in proptest::collection::vec(any::<u8>(), 0..400),
        out_len in 0usize..600,
    ) {
        let keys = tv4_keys();
        let mut e = started(format, Some(&keys));
        let mut out = vec![0u8; out_len];
        match e.reflect(&rx, META_TTL_62, tv_t2(), &synced_clock(), &mut out) {
            Ok(n) => {
                prop_assert_eq!(format.security, TestSecurity::Unauthenticated);
                prop_assert_eq!(n, format.reply_len(rx.len()));
                prop_assert!(n >= rx.len() && n >= format.reflector_header_len() && n <= out_len);
                prop_assert_eq!(e.next_seq(), 1);
            }
            Err(reason) => {
                prop_assert_eq!(e.next_seq(), 0);
                prop_assert_eq!(e.counters().dropped.get(reason), 1);
                if rx.len() < format.sender_header_len() {
                    prop_assert_eq!(reason, DropReason::TooShort);
                } else if format.security != TestSecurity::Unauthenticated {
                    prop_assert_eq!(reason, DropReason::BadHmac);
                }
            }
        }
    }

    /// Every well-formed protected packet round-trips: the reply verifies
    /// with the same keys and carries the sender's fields.
    #[test]
    fn protected_round_trip(
        enc in any::<bool>(),
        seq in any::<u32>(),
        len in 48usize..300,
        ttl in any::<u8>(),
    ) {
        let security = if enc { TestSecurity::Encrypted } else { TestSecurity::Authenticated };
        let keys = tv4_keys();
        let mut e = started(SessionFormat::new(security), Some(&keys));
        let rx = protect_sender(security, &keys, seq, len);
        let mut out = [0u8; 512];
        let n = e
            .reflect(&rx, RxMeta { ttl, tos: 0 }, tv_t2(), &synced_clock(), &mut out)
            .unwrap();
        prop_assert_eq!(n, len.max(112));
        let plain = unprotect_reply(security, &keys, &mut out[..n]);
        prop_assert_eq!(be32(&plain, 0), 0);
        prop_assert_eq!(be32(&plain, 48), seq);
        prop_assert_eq!(plain[80], ttl);
        prop_assert_eq!(hex(&plain[16..24]), "e8a1b2c650000000");
        prop_assert_eq!(hex(&plain[32..40]), "e8a1b2c648000000");
        // Padding reused from the sender's first padding octet, never covered.
        let keep = n - 112;
        prop_assert_eq!(&plain[112..112 + keep.min(len - 48)], &rx[48..48 + keep.min(len - 48)]);
    }
}
