//! TWAMP sessions through `SocketSessionTable` on loopback (127.0.0.1 and
//! ::1): sender packets built and protected here in every security mode,
//! replies received with their IP TTL and TOS, opened with the same keys and
//! checked field by field at the RFC 5357 offsets (twamp-test.md §3).

mod socket_table_support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ricochet_protocol::crypto::TestProtection;
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::time::TimeFormat;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::clock::{now_tai_ns, now_utc_ns, ClockState};
use ricochet_reflector::engine::DropReason;
use ricochet_reflector::session_table::{SessionTable, TableError};
use socket_table_support::*;

/// Field offsets of the reflector packet: unauthenticated (RFC 5357
/// §4.2.1) and authenticated/encrypted (its figure, 112 octets).
struct Offsets {
    seq: usize,
    t3: usize,
    ee: usize,
    t2: usize,
    sender_seq: usize,
    sender_ts: usize,
    sender_ee: usize,
    ttl: usize,
    header: usize,
}

const UNAUTH: Offsets = Offsets {
    seq: 0,
    t3: 4,
    ee: 12,
    t2: 16,
    sender_seq: 24,
    sender_ts: 28,
    sender_ee: 36,
    ttl: 40,
    header: 41,
};

const AUTH: Offsets = Offsets {
    seq: 0,
    t3: 16,
    ee: 24,
    t2: 32,
    sender_seq: 48,
    sender_ts: 64,
    sender_ee: 72,
    ttl: 80,
    header: 112,
};

const SEND_TTL: u8 = 77;
const DSCP: u8 = 46;

fn protection_of(security: SecurityMode) -> Option<TestProtection> {
    match security.test_security() {
        TestSecurity::Unauthenticated => None,
        TestSecurity::Authenticated => Some(TestProtection::Authenticated),
        TestSecurity::Encrypted => Some(TestProtection::Encrypted),
    }
}

/// Wall-clock nanoseconds of a reply timestamp in `format`, on the scale of
/// the matching clock (NTP: UTC; PTP: TAI).
fn stamp_ns(b: &[u8], format: TimeFormat) -> u64 {
    match format {
        TimeFormat::Ntp => ntp_ns(b),
        TimeFormat::Ptp => u64::from(be32(b, 0)) * NS + u64::from(be32(b, 4)),
    }
}

fn now_ns(format: TimeFormat) -> u64 {
    match format {
        TimeFormat::Ntp => now_utc_ns(),
        TimeFormat::Ptp => now_tai_ns(),
    }
}

fn exercise_mode(security: SecurityMode, peer_addr: &str, reflector: &str, format: TimeFormat) {
    let what = format!("{security} {reflector} {format:?}");
    let mut table = table();
    let mut peer = Peer::bind(peer_addr, SEND_TTL, 0);
    let sformat = SessionFormat {
        timestamp_format: format,
        ..SessionFormat::new(security.test_security())
    };
    let spec = session_spec(peer.addr(), reflector, security, sformat, DSCP);
    let (sid, k) = (spec.sid, spec.test_keys.clone().unwrap());
    table.add(spec).unwrap();
    table.start(&sid).unwrap();
    let mut to = table.local_addr(&sid).unwrap();
    if to.ip().is_unspecified() {
        // A wildcard session socket: send to the peer's own loopback address.
        to.set_ip(peer.addr().ip());
    }
    let protection = protection_of(security);
    let (off, pads) = match protection {
        None => (UNAUTH, [0usize, 27, 200, 3, 0]),
        Some(_) => (AUTH, [0, 64, 200, 10, 0]),
    };
    let clock = ClockState::read().unwrap();
    for (i, pad) in pads.into_iter().enumerate() {
        let sender_seq = 1000 + 7 * i as u32;
        let pkt = sender_packet(protection, &k, sender_seq, pad);
        let plain = sender_plaintext(protection, &k, &pkt);
        let before = now_ns(format);
        peer.send(to, &pkt);
        let mut r = peer.recv();
        let after = now_ns(format);
        assert_eq!(
            r.src, to,
            "{what}: reply from the session's address and port"
        );
        assert_eq!(r.ttl, Some(255), "{what}: reply TTL 255");
        assert_eq!(r.tos, Some(DSCP << 2), "{what}: Type-P DSCP, Not-ECT");
        assert_eq!(
            r.payload.len(),
            pkt.len().max(off.header),
            "{what}: {} → max(received, {})",
            pkt.len(),
            off.header
        );
        if let Some(mode) = protection {
            open_reply(mode, &k, &mut r.payload);
        }
        let p = &r.payload;
        assert_eq!(be32(p, off.seq), i as u32, "{what}: own counter from 0");
        assert_eq!(be32(p, off.sender_seq), sender_seq);
        let (ts_at, ee_at) = match protection {
            None => (4, 12),
            Some(_) => (16, 24),
        };
        assert_eq!(
            &p[off.sender_ts..off.sender_ts + 8],
            &plain[ts_at..ts_at + 8]
        );
        assert_eq!(
            &p[off.sender_ee..off.sender_ee + 2],
            &plain[ee_at..ee_at + 2]
        );
        assert_eq!(p[off.ttl], SEND_TTL, "{what}: Sender TTL as sent");
        // Error Estimate: S from the host clock, Z from the format,
        // Multiplier never 0.
        let ee = be16(p, off.ee);
        assert_eq!(ee & 0x8000 != 0, clock.synchronized, "{what}: S bit");
        assert_eq!(ee & 0x4000 != 0, format == TimeFormat::Ptp, "{what}: Z bit");
        assert_ne!(ee & 0xff, 0, "{what}: Multiplier");
        let (t2, t3) = (
            stamp_ns(&p[off.t2..off.t2 + 8], format),
            stamp_ns(&p[off.t3..off.t3 + 8], format),
        );
        assert!(
            before.saturating_sub(1_000) <= t2 && t2 <= t3 && t3 <= after + 1_000,
            "{what}: {before} ≤ T2 {t2} ≤ T3 {t3} ≤ {after}"
        );
    }
    let c = table.counters(&sid).unwrap();
    assert_eq!((c.reflected, c.dropped.total()), (pads.len() as u64, 0));
    let a = table.activity(&sid).unwrap();
    assert_eq!(a.reflected, pads.len() as u64);
    assert!(a.idle.unwrap() < PATIENCE);
    table.shutdown().unwrap();
}

#[test]
fn every_security_mode_over_ipv4() {
    for security in SecurityMode::ALL {
        exercise_mode(security, "127.0.0.1:0", "127.0.0.1:0", TimeFormat::Ntp);
    }
}

#[test]
fn every_security_mode_over_ipv6() {
    for security in SecurityMode::ALL {
        exercise_mode(security, "[::1]:0", "[::1]:0", TimeFormat::Ntp);
    }
}

#[test]
fn ptp_timestamps_when_the_format_says_so() {
    // RFC 8186: Z = 1 and TAI seconds (compared with CLOCK_TAI above).
    exercise_mode(
        SecurityMode::Unauthenticated,
        "127.0.0.1:0",
        "127.0.0.1:0",
        TimeFormat::Ptp,
    );
    exercise_mode(
        SecurityMode::Encrypted,
        "[::1]:0",
        "[::1]:0",
        TimeFormat::Ptp,
    );
}

#[test]
fn dual_stack_session_socket_serves_an_ipv4_sender() {
    exercise_mode(
        SecurityMode::Authenticated,
        "127.0.0.1:0",
        "[::]:0",
        TimeFormat::Ntp,
    );
}

#[test]
fn unwanted_packets_are_not_reflected_and_are_counted() {
    let mut table = table();
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let mut stranger = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let spec = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Authenticated,
        SessionFormat::new(TestSecurity::Authenticated),
        0,
    );
    let (sid, k) = (spec.sid, spec.test_keys.clone().unwrap());
    table.add(spec).unwrap();
    let to = table.local_addr(&sid).unwrap();
    let good = |seq| sender_packet(Some(TestProtection::Authenticated), &k, seq, 64);

    // Before Start-Sessions.
    peer.send(to, &good(0));
    peer.expect_silence("before start");
    eventually("NotStarted counted", || {
        table
            .counters(&sid)
            .unwrap()
            .dropped
            .get(DropReason::NotStarted)
            == 1
    });
    table.start(&sid).unwrap();

    // From another port of the same host.
    stranger.send(to, &good(1));
    stranger.expect_silence("wrong source");
    peer.expect_silence("wrong source (nothing to the sender either)");
    // A bad HMAC, and a packet protected with other keys.
    let mut bad = good(2);
    bad[5] ^= 0x80;
    peer.send(to, &bad);
    let forged = sender_packet(Some(TestProtection::Authenticated), &keys(99), 3, 64);
    peer.send(to, &forged);
    // Too short for the authenticated layout.
    peer.send(to, &good(4)[..47]);
    peer.expect_silence("bad HMAC / too short");

    let c = table.counters(&sid).unwrap();
    assert_eq!(c.dropped.get(DropReason::WrongSource), 1);
    assert_eq!(c.dropped.get(DropReason::BadHmac), 2);
    assert_eq!(c.dropped.get(DropReason::TooShort), 1);
    assert_eq!(c.reflected, 0);
    assert_eq!(table.activity(&sid).unwrap().idle, None);

    // The first good packet still gets reflector sequence 0.
    peer.send(to, &good(5));
    let mut r = peer.recv();
    open_reply(TestProtection::Authenticated, &k, &mut r.payload);
    assert_eq!((be32(&r.payload, 0), be32(&r.payload, 48)), (0, 5));
    let a = table.activity(&sid).unwrap();
    assert_eq!((a.reflected, a.dropped), (1, 5));
}

#[test]
fn rate_limit_caps_reflections() {
    let mut table = table();
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let mut spec = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Unauthenticated,
        SessionFormat::default(),
        0,
    );
    spec.rate_limit_pps = 1;
    spec.rate_burst = 3;
    let sid = spec.sid;
    table.add(spec).unwrap();
    table.start(&sid).unwrap();
    let to = table.local_addr(&sid).unwrap();
    let t0 = Instant::now();
    for seq in 0..10 {
        peer.send(to, &sender_packet(None, &keys(0), seq, 27));
    }
    let mut got = Vec::new();
    while let Some(r) = peer.recv_within(QUIET) {
        got.push(be32(&r.payload, 0));
    }
    // The burst, plus one per second elapsed at most.
    let slack = t0.elapsed().as_secs() as usize;
    assert!(
        (3..=3 + slack).contains(&got.len()),
        "{} replies",
        got.len()
    );
    assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>());
    let c = table.counters(&sid).unwrap();
    assert_eq!(
        c.dropped.get(DropReason::RateLimited),
        10 - got.len() as u64
    );
}

#[test]
fn stop_keeps_reflecting_during_the_grace_then_frees_the_port() {
    let mut table = table();
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let spec = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Mixed,
        SessionFormat::default(),
        0,
    );
    let sid = spec.sid;
    table.add(spec).unwrap();
    table.start(&sid).unwrap();
    let to = table.local_addr(&sid).unwrap();
    table.stop(&sid, Duration::from_millis(400)).unwrap();
    peer.send(to, &sender_packet(None, &keys(0), 0, 0));
    assert_eq!(be32(&peer.recv().payload, 0), 0, "within the grace period");
    std::thread::sleep(Duration::from_millis(450));
    peer.send(to, &sender_packet(None, &keys(0), 1, 0));
    peer.expect_silence("after the grace period");
    eventually("the sweep removes the session", || {
        table.sessions().is_empty()
    });
    assert!(table.activity(&sid).is_none());
    assert_eq!(table.remove(&sid), Err(TableError::NoSuchSession(sid)));
    eventually("the port is free again", || UdpSocket::bind(to).is_ok());
}

#[test]
fn remove_frees_the_port_at_once() {
    let mut table = table();
    let peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let spec = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Unauthenticated,
        SessionFormat::default(),
        0,
    );
    let sid = spec.sid;
    table.add(spec.clone()).unwrap();
    let local = table.local_addr(&sid).unwrap();
    // Taken while the session exists.
    assert!(UdpSocket::bind(local).is_err());
    table.remove(&sid).unwrap();
    let holder = UdpSocket::bind(local).expect("port free after remove");
    assert_eq!(table.remove(&sid), Err(TableError::NoSuchSession(sid)));
    // Re-adding on a port someone else holds is an address error.
    let again = ricochet_reflector::session_table::SessionSpec {
        reflector: local,
        ..spec
    };
    assert!(matches!(table.add(again), Err(TableError::Address(a, _)) if a == local));
    assert!(table.sessions().is_empty());
    drop(holder);
}

#[test]
fn table_errors() {
    let mut table = table();
    let peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let spec = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Unauthenticated,
        SessionFormat::default(),
        0,
    );
    let sid = spec.sid;
    table.add(spec.clone()).unwrap();
    assert_eq!(table.add(spec.clone()), Err(TableError::Exists(sid)));
    let unknown = sid_other();
    assert_eq!(
        table.start(&unknown),
        Err(TableError::NoSuchSession(unknown))
    );
    assert_eq!(
        table.stop(&unknown, Duration::ZERO),
        Err(TableError::NoSuchSession(unknown))
    );
    assert!(table.activity(&unknown).is_none());
    // Encrypted mode without keys, a format that contradicts the mode, an
    // out-of-range DSCP: refused before any socket is bound.
    let mut no_keys = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Encrypted,
        SessionFormat::new(TestSecurity::Encrypted),
        0,
    );
    no_keys.test_keys = None;
    let mismatch = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Authenticated,
        SessionFormat::default(),
        0,
    );
    let bad_dscp = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Unauthenticated,
        SessionFormat::default(),
        64,
    );
    for s in [no_keys, mismatch, bad_dscp] {
        assert!(matches!(table.add(s), Err(TableError::DataPlane(_))));
    }
    assert_eq!(table.sessions(), vec![sid]);
}

fn sid_other() -> ricochet_protocol::control::Sid {
    ricochet_protocol::control::Sid([0xee; 16])
}

#[test]
fn many_sessions_at_once() {
    const N: usize = 64;
    let mut table = table();
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let mut sessions = Vec::new();
    for i in 0..N {
        let security = SecurityMode::ALL[i % 4];
        let spec = session_spec(
            peer.addr(),
            "127.0.0.1:0",
            security,
            SessionFormat::new(security.test_security()),
            (i % 64) as u8,
        );
        let (sid, k) = (spec.sid, spec.test_keys.clone().unwrap());
        table.add(spec).unwrap();
        table.start(&sid).unwrap();
        sessions.push((sid, k, security, table.local_addr(&sid).unwrap()));
    }
    assert_eq!(table.sessions().len(), N);
    // Two rounds, so each session's own counter reaches 1.
    for round in 0..2u32 {
        for (i, (_, k, security, to)) in sessions.iter().enumerate() {
            let pkt = sender_packet(protection_of(*security), k, i as u32 + 1000 * round, 0);
            peer.send(*to, &pkt);
        }
        let mut seen = [false; N];
        for _ in 0..N {
            let mut r = peer.recv();
            let i = sessions
                .iter()
                .position(|s| s.3 == r.src)
                .expect("a session port");
            let (_, k, security, _) = &sessions[i];
            let off = match protection_of(*security) {
                None => UNAUTH,
                Some(m) => {
                    open_reply(m, k, &mut r.payload);
                    AUTH
                }
            };
            assert_eq!(be32(&r.payload, off.seq), round);
            assert_eq!(be32(&r.payload, off.sender_seq), i as u32 + 1000 * round);
            assert_eq!(r.tos, Some(((i % 64) as u8) << 2));
            assert!(!seen[i]);
            seen[i] = true;
        }
    }
    for (sid, ..) in &sessions {
        table.remove(sid).unwrap();
    }
    assert!(table.sessions().is_empty());
    let stats = table.loop_stats();
    assert_eq!(stats.reflected, 2 * N as u64);
    table.shutdown().unwrap();
}

#[test]
fn clock_state_is_published() {
    let table = table();
    let host = ClockState::read().unwrap();
    let published = table.clock();
    assert_eq!(published.synchronized, host.synchronized);
    assert_eq!(published.tai_offset_s, host.tai_offset_s);
}

#[test]
fn driver_on_its_own_thread_ends_when_the_table_drops() {
    use ricochet_reflector::socket::{SocketSessionTable, TableConfig};
    let (mut table, driver) = SocketSessionTable::new(&TableConfig::default()).unwrap();
    let loop_thread = std::thread::spawn(move || driver.run());
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let spec = session_spec(
        peer.addr(),
        "127.0.0.1:0",
        SecurityMode::Unauthenticated,
        SessionFormat::default(),
        0,
    );
    let sid = spec.sid;
    table.add(spec).unwrap();
    table.start(&sid).unwrap();
    let to = table.local_addr(&sid).unwrap();
    peer.send(to, &sender_packet(None, &keys(0), 9, 0));
    assert_eq!(be32(&peer.recv().payload, 24), 9);
    drop(table);
    loop_thread.join().unwrap().unwrap();
    // The loop closed every socket on its way out.
    UdpSocket::bind(to).expect("port free after the loop ended");
}
