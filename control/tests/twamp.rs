//! The daemon speaking TWAMP-Control on loopback: real TCP, the protocol
//! crate's `Client` as the peer, the in-memory recording `SessionTable` as
//! the data plane. Every wait is on a socket or on the table's condition
//! variable, bounded by `support::WAIT`; no sleep synchronises anything.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use ricochet_control::config::ModeName;
use ricochet_control::event_loop::ACCEPT_BUDGET;
use ricochet_control::policy::accept as accept_code;
use ricochet_protocol::accept::Accept;
use ricochet_protocol::control::{
    greeting, ServerGreetingRepr, ServerStartRepr, SetUpResponseRepr, Sid, TypeP,
};
use ricochet_protocol::crypto::test_keys::derive_test_keys;
use ricochet_protocol::modes::{Modes, SecurityMode};
use ricochet_reflector::session_table::TableError;
use support::*;

const AUTH: Modes = Modes::AUTHENTICATED;
const ENC: Modes = Modes::ENCRYPTED;
const MIXED: Modes = Modes::MIXED;
const OPEN: Modes = Modes::UNAUTHENTICATED;
const ISC: Modes = Modes::INDIVIDUAL_SESSION_CONTROL;

fn isc_modes() -> Vec<ModeName> {
    vec![
        ModeName::Unauthenticated,
        ModeName::Encrypted,
        ModeName::IndividualSessionControl,
    ]
}

/// Seconds of an NTP timestamp.
fn ntp_secs(t: ricochet_protocol::time::NtpTimestamp) -> u64 {
    t.to_bits() >> 32
}

/// The Timeout as the daemon reads it (NTP fractions truncate).
fn grace_ms(ms: u64) -> Duration {
    Duration::from_nanos(
        ricochet_protocol::time::NtpTimestamp::from_interval_ns(ms * 1_000_000).interval_ns(),
    )
}

fn with_timeout(
    mut r: ricochet_protocol::control::RequestTwSessionRepr,
    ms: u64,
) -> ricochet_protocol::control::RequestTwSessionRepr {
    r.timeout = ricochet_protocol::time::NtpTimestamp::from_interval_ns(ms * 1_000_000);
    r
}

#[test]
fn every_security_mode_serves_several_sessions_over_ipv4_and_ipv6() {
    let dir = TempDir::new("modes");
    let d = TestDaemon::start(config(&dir, &ALL_SECURITY), timing());
    assert_eq!(d.addrs.len(), 2);
    let mut requested = FIRST_PORT;
    for &addr in &d.addrs {
        for mode in [OPEN, AUTH, ENC, MIXED] {
            let peer = if mode == OPEN {
                Peer::open()
            } else {
                Peer::lab(mode)
            };
            let mut conn = TwampConn::connect(addr, peer);
            conn.setup().expect("set-up accepted");
            let selection = conn.client.selection().expect("selection");
            assert_eq!(selection.security.bit(), mode, "{addr}");
            let client_ip = conn.stream.local_addr().expect("local").ip();
            let before = ntp_secs(ricochet_control::twamp::ntp_now());
            let mut sids = Vec::new();
            let mut ports = Vec::new();
            for i in 0..3u16 {
                let sender_port = 40000 + i;
                // The last request asks for port 0, never in the range.
                let want = if i == 2 { 0 } else { requested };
                let mut req = request(addr.ip(), sender_port, want);
                if i == 1 {
                    req.type_p = TypeP::from_dscp(46).expect("EF");
                }
                let (port, sid) = conn.request(&req).expect("accepted");
                if want != 0 {
                    assert_eq!(port, want, "a free requested port is honoured");
                }
                // Ports below this one may be taken (by port-0 requests too).
                requested = requested.max(port + 1);
                assert!(
                    (FIRST_PORT..FIRST_PORT + 300).contains(&port),
                    "{port} outside test_ports"
                );
                assert!(!ports.contains(&port), "port {port} given twice");
                ports.push(port);

                // The data plane got the session before its Accept-Session.
                let spec = d.recording.session(&sid).spec;
                assert_eq!(spec.sender, SocketAddr::new(client_ip, sender_port));
                assert_eq!(spec.reflector, SocketAddr::new(addr.ip(), port));
                assert_eq!(spec.security, selection.security);
                assert_eq!(spec.format.security, selection.security.test_security());
                assert_eq!(spec.dscp, if i == 1 { 46 } else { 0 });
                assert_eq!((spec.rate_limit_pps, spec.rate_burst), (100_000, 1000));
                match (selection.security, &spec.test_keys) {
                    (SecurityMode::Authenticated | SecurityMode::Encrypted, Some(k)) => {
                        // RFC 4656 §4.1.2: the client derives the same keys.
                        let expected = derive_test_keys(&conn.keys, &sid.0);
                        assert_eq!(k.aes, expected.aes, "test AES key");
                        assert_eq!(k.hmac, expected.hmac, "test HMAC key");
                    }
                    (SecurityMode::Unauthenticated | SecurityMode::Mixed, None) => {}
                    (s, k) => panic!("{s}: test keys {:?}", k.is_some()),
                }
                // RFC 4656 §3.5: reflector address (last 4 octets for IPv6),
                // creation time, random.
                let last4 = match addr.ip() {
                    IpAddr::V4(a) => a.octets(),
                    IpAddr::V6(a) => a.octets()[12..].try_into().expect("4"),
                };
                assert_eq!(sid.address_part(), last4);
                let t = ntp_secs(sid.timestamp_part());
                let after = ntp_secs(ricochet_control::twamp::ntp_now());
                assert!((before..=after).contains(&t), "SID time {t}");
                sids.push(sid);
            }
            assert_eq!(conn.start(3), Accept::Ok);
            for sid in &sids {
                assert!(d.recording.session(sid).started, "started before Start-Ack");
            }
            conn.stop();
            // Stop-Sessions has no answer: wait for the data plane.
            d.recording.wait("Stop-Sessions", |r| {
                sids.iter()
                    .all(|s| r.sessions[s].stopped == Some(grace_ms(2000)))
                    .then_some(())
            });
        }
    }
    d.barrier();
    let text = d.scrape();
    for mode in ["unauthenticated", "authenticated", "encrypted", "mixed"] {
        assert_eq!(
            metric_value(
                &text,
                &format!("ricochet_control_sessions_started_total{{mode=\"{mode}\"}}")
            ),
            6,
            "{mode}\n{text}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"server_start\",code=\"0\"}"
        ),
        9,
        "8 connections and the barrier"
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"accept_session\",code=\"0\"}"
        ),
        24
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"start_ack\",code=\"0\"}"
        ),
        8
    );
}

#[test]
fn individual_session_control_starts_and_stops_sessions_one_by_one() {
    let dir = TempDir::new("isc");
    let d = TestDaemon::start(config(&dir, &isc_modes()), timing());
    let mut conn = TwampConn::connect(d.v4(), Peer::lab(ENC).wanting(ISC));
    conn.setup().expect("set-up");
    assert!(conn.client.selection().expect("sel").has(ISC));
    let ip = d.v4().ip();
    let (_, a) = conn.request(&request(ip, 41000, 0)).expect("a");
    let (_, b) = conn.request(&request(ip, 41001, 0)).expect("b");

    assert_eq!(conn.n_command(true, &[a]), vec![(Accept::Ok, vec![a])]);
    assert!(d.recording.session(&a).started);
    assert!(!d.recording.session(&b).started);
    // RFC 5938: starting a started session again is fine.
    assert_eq!(
        conn.n_command(true, &[a, b]),
        vec![(Accept::Ok, vec![a, b])]
    );
    assert_eq!(conn.n_command(false, &[b]), vec![(Accept::Ok, vec![b])]);
    d.recording.wait("b stopped", |r| {
        (r.sessions[&b].stopped == Some(grace_ms(2000))).then_some(())
    });

    // Requests are still allowed while sessions run (ISC mode).
    let (_, c) = conn.request(&request(ip, 41002, 0)).expect("c");
    let unknown = Sid([7; 16]);
    let acks = conn.n_command(false, &[c, unknown]);
    assert_eq!(
        acks,
        vec![(Accept::Ok, vec![c]), (Accept::Failure, vec![unknown])],
        "Stop-N-Ack grouped by Accept (RFC 5938 §3.5)"
    );
    // c never started: removed at once, without a grace.
    let r = d.recording.session(&c);
    assert!(r.removed && r.stopped.is_none(), "{r:?}");
    assert!(!d.recording.session(&a).removed, "a still runs");

    d.barrier();
    let text = d.scrape();
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"start_n_ack\",code=\"0\"}"
        ),
        2
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"stop_n_ack\",code=\"1\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_sessions_ended_total{reason=\"never_started\"}"
        ),
        1
    );
}

#[test]
fn a_port_held_by_another_program_is_skipped_not_refused() {
    // perfSONAR interop found this: twampd moves on to the next port when
    // the one it picked is busy (RFC 5357 §3.5 allows another port with
    // Accept 0); refusing with Accept 5 broke twping's -P and our own
    // --sender-port when the port was taken outside the daemon.
    let dir = TempDir::new("busyport");
    let d = TestDaemon::start(config(&dir, &ALL_SECURITY), timing());
    let addr = d.v4();
    let busy = FIRST_PORT + 17;
    let _holder = std::net::UdpSocket::bind((addr.ip(), busy)).expect("hold a port of the range");
    let mut conn = TwampConn::connect(addr, Peer::open());
    conn.setup().expect("set-up");
    let (port, _) = conn
        .request(&request(addr.ip(), 40100, busy))
        .expect("accepted with another port, not refused");
    assert_ne!(port, busy);
    assert!((FIRST_PORT..FIRST_PORT + 300).contains(&port));
}

#[test]
fn a_wrong_secret_is_refused_with_accept_1() {
    let dir = TempDir::new("wrong-secret");
    let d = TestDaemon::start(config(&dir, &ALL_SECURITY), timing());
    let mut peer = Peer::lab(AUTH);
    peer.secret = Some(secret_of("00112233"));
    let mut conn = TwampConn::connect(d.v4(), peer);
    assert_eq!(conn.setup(), Err(Accept::Failure));
    assert!(conn.read_to_close().is_empty(), "closed after Server-Start");

    let mut unknown = Peer::lab(ENC);
    unknown.identity = Some("nobody");
    let mut conn = TwampConn::connect(d.addrs[1], unknown);
    assert_eq!(conn.setup(), Err(Accept::Failure), "unknown identity");

    d.barrier();
    let text = d.scrape();
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_setup_refusals_total{reason=\"bad_token\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_setup_refusals_total{reason=\"unknown_key\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"server_start\",code=\"1\"}"
        ),
        2
    );
}

#[test]
fn a_mode_not_offered_is_refused_with_accept_3() {
    let dir = TempDir::new("not-offered");
    let d = TestDaemon::start(
        config(&dir, &[ModeName::Unauthenticated, ModeName::Authenticated]),
        timing(),
    );
    // The protocol client never picks an unoffered mode: write it by hand.
    let mut s = TcpStream::connect_timeout(&d.v4(), WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut g = [0u8; greeting::LEN];
    s.read_exact(&mut g).expect("greeting");
    let g = ServerGreetingRepr::from_bytes(&g).expect("greeting parses");
    assert_eq!(g.modes, OPEN | AUTH);
    assert_eq!(g.count, 1024);
    let setup = SetUpResponseRepr {
        mode: ENC,
        key_id: SetUpResponseRepr::key_id_from_name(IDENTITY.as_bytes()).expect("id"),
        token: [0; 64],
        client_iv: [0; 16],
    };
    s.write_all(&setup.to_bytes()).expect("setup");
    let mut start = [0u8; 48];
    s.read_exact(&mut start).expect("Server-Start");
    let start = ServerStartRepr::from_bytes(&start).expect("parses");
    assert_eq!(start.accept, Accept::NotSupported);
    assert!(read_to_close(&mut s).is_empty());
}

#[test]
fn an_identity_not_allowed_a_mode_is_refused_with_accept_3() {
    let dir = TempDir::new("identity-mode");
    let mut c = config(&dir, &ALL_SECURITY);
    c.identities.insert(
        RESTRICTED.to_owned(),
        ricochet_control::config::Identity {
            modes: [ModeName::Authenticated].into_iter().collect(),
        },
    );
    let d = TestDaemon::start(c, timing());
    let restricted = |allowed| Peer {
        allowed,
        wanted: Modes::NONE,
        identity: Some(RESTRICTED),
        secret: Some(secret_of(RESTRICTED_HEX)),
    };
    let mut conn = TwampConn::connect(d.v4(), restricted(ENC));
    assert_eq!(conn.setup(), Err(Accept::NotSupported));
    let mut conn = TwampConn::connect(d.v4(), restricted(AUTH));
    conn.setup().expect("its allowed mode works");
    // Another identity is not restricted.
    let mut conn = TwampConn::connect(d.v4(), Peer::lab(ENC));
    conn.setup().expect("lab may use encrypted");
    d.barrier();
    let text = d.scrape();
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_session_refusals_total{reason=\"mode_not_permitted\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_setup_refusals_total{reason=\"policy\"}"
        ),
        1
    );
}

#[test]
fn a_denied_prefix_is_closed_before_the_greeting() {
    let dir = TempDir::new("deny");
    let mut c = config(&dir, &ALL_SECURITY);
    c.policy.deny = vec!["::1/128".parse().expect("prefix")];
    let d = TestDaemon::start(c, timing());
    let mut s = TcpStream::connect_timeout(&d.addrs[1], WAIT).expect("connect");
    assert!(
        read_to_close(&mut s).is_empty(),
        "no octet before the close"
    );
    // IPv4 loopback is not denied.
    TwampConn::connect(d.v4(), Peer::open())
        .setup()
        .expect("127.0.0.1 served");
    assert_eq!(
        d.metric("ricochet_control_connections_refused_total{reason=\"prefix_denied\"}"),
        1
    );
}

#[test]
fn exhausted_ports_answer_accept_5_and_the_connection_continues() {
    let dir = TempDir::new("ports");
    let mut c = config(&dir, &ALL_SECURITY);
    c.test_ports =
        ricochet_control::ports::PortRange::new(FIRST_PORT, FIRST_PORT + 1).expect("range");
    let d = TestDaemon::start(c, timing());
    let mut conn = TwampConn::connect(d.v4(), Peer::lab(MIXED));
    conn.setup().expect("set-up");
    let ip = d.v4().ip();
    let (p1, _) = conn
        .request(&request(ip, 42000, FIRST_PORT + 1))
        .expect("1");
    let (p2, _) = conn
        .request(&request(ip, 42001, FIRST_PORT + 1))
        .expect("2");
    assert_eq!(p1, FIRST_PORT + 1);
    assert_eq!(p2, FIRST_PORT, "a taken port is replaced by a free one");
    assert_eq!(
        conn.request(&request(ip, 42002, 0)),
        Err(Accept::TemporaryResourceLimitation)
    );
    // The connection goes on: the two sessions start.
    assert_eq!(conn.start(2), Accept::Ok);
    assert_eq!(d.recording.lock().live().filter(|r| r.started).count(), 2);
    d.barrier();
    let text = d.scrape();
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_session_refusals_total{reason=\"ports_exhausted\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"accept_session\",code=\"5\"}"
        ),
        1
    );
}

#[test]
fn refused_requests_keep_the_connection_and_release_what_they_took() {
    let dir = TempDir::new("refusals");
    let mut c = config(&dir, &ALL_SECURITY);
    c.policy.max_sessions_per_client = 2;
    let d = TestDaemon::start(c, timing());
    let mut conn = TwampConn::connect(d.v4(), Peer::open());
    conn.setup().expect("set-up");
    let ip = d.v4().ip();

    // A reflector address that is not ours (TEST-NET-1): Accept 3.
    let mut foreign = request(ip, 43000, 0);
    foreign.receiver_address = "192.0.2.1".parse().expect("ip");
    assert_eq!(conn.request(&foreign), Err(Accept::NotSupported));

    // The data plane refuses: Accept 2, and the port is free again.
    d.recording.lock().fail_next_add = Some(TableError::DataPlane("map full".into()));
    assert_eq!(
        conn.request(&request(ip, 43001, FIRST_PORT + 7)),
        Err(Accept::InternalError)
    );
    let (port, _) = conn
        .request(&request(ip, 43002, FIRST_PORT + 7))
        .expect("ok");
    assert_eq!(
        port,
        FIRST_PORT + 7,
        "the refused session's port was released"
    );

    // Per-client session limit (2): Accept 5.
    conn.request(&request(ip, 43003, 0)).expect("second");
    assert_eq!(
        conn.request(&request(ip, 43004, 0)),
        Err(Accept::from(accept_code::TEMPORARY_RESOURCE_LIMITATION))
    );
    assert_eq!(conn.start(2), Accept::Ok, "the connection continues");
    d.barrier();
    assert_eq!(
        d.metric("ricochet_control_data_plane_errors_total{operation=\"add\"}"),
        1
    );
}

#[test]
fn broken_clients_are_closed_cleanly_while_another_is_served() {
    let dir = TempDir::new("broken");
    let mut t = timing();
    t.stall = Duration::from_millis(300);
    let d = TestDaemon::start(config(&dir, &ALL_SECURITY), t);
    let ip = d.v4().ip();
    let mut good = TwampConn::connect(d.v4(), Peer::lab(ENC));
    good.setup().expect("set-up");
    let (_, first) = good.request(&request(ip, 44000, 0)).expect("first");

    // An unknown command after the set-up.
    let mut bad = TwampConn::connect(d.v4(), Peer::open());
    bad.setup().expect("set-up");
    bad.stream.write_all(&[0xee; 16]).expect("write");
    // RFC 5357 §3.5: an Accept-Session with Accept 3, then the close (the
    // stream cannot be re-synchronised after an unknown command).
    let answer = bad.read_to_close();
    assert_eq!(answer.len(), 48, "one Accept-Session, then closed");
    assert_eq!(answer[0], 3, "Accept 3: not supported");

    // A Request-TW-Session whose HMAC does not verify.
    let mut bad = TwampConn::connect(d.addrs[1], Peer::lab(AUTH));
    bad.setup().expect("set-up");
    bad.client
        .request_session(&request(d.addrs[1].ip(), 44001, 0))
        .expect("queue");
    let mut msg = bad.client.pending_output().to_vec();
    let last = msg.len() - 1;
    msg[last] ^= 0x01;
    bad.stream.write_all(&msg).expect("write");
    assert!(bad.read_to_close().is_empty(), "closed on the bad HMAC");

    // A Set-Up-Response that stops after 100 of its 164 octets.
    let mut stalled = TcpStream::connect_timeout(&d.v4(), WAIT).expect("connect");
    let mut g = [0u8; greeting::LEN];
    stalled.set_read_timeout(Some(WAIT)).expect("timeout");
    stalled.read_exact(&mut g).expect("greeting");
    stalled.write_all(&[1u8; 100]).expect("partial");

    // A Request-TW-Session cut short by a client that then stalls.
    let mut half = TwampConn::connect(d.v4(), Peer::open());
    half.setup().expect("set-up");
    half.client
        .request_session(&request(ip, 44002, 0))
        .expect("queue");
    let msg = half.client.pending_output().to_vec();
    half.stream.write_all(&msg[..50]).expect("partial");

    // A Set-Up-Response with two security bits, and one whose client
    // leaves in the middle of it.
    let mut two = TcpStream::connect_timeout(&d.v4(), WAIT).expect("connect");
    two.set_read_timeout(Some(WAIT)).expect("timeout");
    two.read_exact(&mut g).expect("greeting");
    let mut setup = [0u8; 164];
    setup[3] = 0x03;
    two.write_all(&setup).expect("setup");
    let answer = read_to_close(&mut two);
    assert_eq!(answer.len(), 48, "only a Server-Start");
    assert_eq!(
        ServerStartRepr::from_bytes(&answer).expect("parses").accept,
        Accept::NotSupported
    );
    let mut gone = TcpStream::connect_timeout(&d.v4(), WAIT).expect("connect");
    gone.write_all(&[0u8; 20]).expect("partial");
    gone.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(read_to_close(&mut gone).len(), greeting::LEN);

    // The stalled ones are closed by the stall timer.
    assert!(read_to_close(&mut stalled).is_empty());
    assert!(half.read_to_close().is_empty());

    // Meanwhile the good client is served as if nothing happened.
    let (_, second) = good.request(&request(ip, 44003, 0)).expect("second");
    assert_eq!(good.start(2), Accept::Ok);
    for sid in [first, second] {
        assert!(d.recording.session(&sid).started);
    }
    d.barrier();
    let text = d.scrape();
    for (sample, n) in [
        (
            "ricochet_control_messages_rejected_total{reason=\"unexpected\"}",
            1,
        ),
        (
            "ricochet_control_messages_rejected_total{reason=\"hmac\"}",
            1,
        ),
        ("ricochet_control_hmac_failures_total{plane=\"control\"}", 1),
        (
            "ricochet_control_messages_rejected_total{reason=\"timeout\"}",
            2,
        ),
        (
            "ricochet_control_connections_closed_total{reason=\"stalled\"}",
            2,
        ),
        ("ricochet_control_setup_refusals_total{reason=\"mode\"}", 1),
    ] {
        assert_eq!(metric_value(&text, sample), n, "{sample}\n{text}");
    }
}

#[test]
fn two_hundred_concurrent_connections_complete_set_up() {
    let dir = TempDir::new("200");
    let d = TestDaemon::start(config(&dir, &ALL_SECURITY), timing());
    // All 200 are open before any set-up is sent, half over IPv6.
    let mut conns: Vec<TwampConn> = (0..200)
        .map(|i| TwampConn::connect(d.addrs[i % 2], Peer::open()))
        .collect();
    let mut ports = std::collections::BTreeSet::new();
    for (i, c) in conns.iter_mut().enumerate() {
        c.setup().expect("set-up");
        let ip = d.addrs[i % 2].ip();
        let (port, _) = c.request(&request(ip, 45000, 0)).expect("session");
        assert!(ports.insert(port), "port {port} handed out twice");
    }
    assert_eq!(d.recording.lock().live().count(), 200);
    d.barrier();
    let text = d.scrape();
    assert!(metric_value(&text, "ricochet_control_connections") >= 200);
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_accept_values_total{message=\"server_start\",code=\"0\"}"
        ),
        201
    );
    drop(conns);
    // Never started: each is removed as its connection goes.
    d.recording
        .wait("all removed", |r| (r.live().count() == 0).then_some(()));
}

#[test]
fn sessions_end_when_their_connection_drops() {
    let dir = TempDir::new("drop");
    let d = TestDaemon::start(config(&dir, &isc_modes()), timing());
    let ip = d.v4().ip();
    let mut conn = TwampConn::connect(d.v4(), Peer::lab(ENC).wanting(ISC));
    conn.setup().expect("set-up");
    let (pa, a) = conn
        .request(&with_timeout(request(ip, 46000, FIRST_PORT + 20), 300))
        .expect("a");
    let (pb, b) = conn
        .request(&request(ip, 46001, FIRST_PORT + 21))
        .expect("b");
    conn.n_command(true, &[a]);
    // Without Individual Session Control on a second connection.
    let mut plain = TwampConn::connect(d.v4(), Peer::open());
    plain.setup().expect("set-up");
    let (px, x) = plain
        .request(&with_timeout(request(ip, 46002, FIRST_PORT + 22), 200))
        .expect("x");
    assert_eq!(plain.start(1), Accept::Ok);
    drop(conn);
    drop(plain);

    // Started: reflect for their Timeout, then gone. Never started: gone now.
    d.recording.wait("stops", |r| {
        let sa = &r.sessions[&a];
        let sx = &r.sessions[&x];
        (sa.stopped == Some(grace_ms(300))
            && sx.stopped == Some(grace_ms(200))
            && r.sessions[&b].removed
            && r.sessions[&b].stopped.is_none())
        .then_some(())
    });
    d.recording.wait("grace over", |r| {
        (r.sessions[&a].removed && r.sessions[&x].removed).then_some(())
    });
    d.barrier();
    let text = d.scrape();
    assert_eq!(
        metric_value(&text, "ricochet_control_sessions{mode=\"encrypted\"}"),
        0
    );
    assert_eq!(
        metric_value(&text, "ricochet_control_sessions{mode=\"unauthenticated\"}"),
        0
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_sessions_ended_total{reason=\"connection_closed\"}"
        ),
        2
    );
    // Ports and policy counts are free again: the same ports are granted.
    let mut again = TwampConn::connect(d.v4(), Peer::open());
    again.setup().expect("set-up");
    for (i, p) in [pa, pb, px].into_iter().enumerate() {
        let (port, _) = again
            .request(&request(ip, 46010 + i as u16, p))
            .expect("ok");
        assert_eq!(port, p);
    }
}

#[test]
fn refwait_ends_silent_sessions_and_servwait_resumes() {
    let dir = TempDir::new("refwait");
    let mut t = timing();
    t.refwait = Duration::from_millis(300);
    t.servwait = Duration::from_secs(2);
    let d = TestDaemon::start(config(&dir, &isc_modes()), t);
    let ip = d.v4().ip();
    let mut conn = TwampConn::connect(d.v4(), Peer::lab(ENC).wanting(ISC));
    conn.setup().expect("set-up");
    let (_, a) = conn.request(&request(ip, 47000, 0)).expect("a");
    let (_, b) = conn.request(&request(ip, 47001, 0)).expect("b");
    let (_, c) = conn.request(&request(ip, 47002, 0)).expect("c");
    {
        let mut r = d.recording.lock();
        r.idle.insert(a, Duration::from_secs(10)); // silent for long
        r.idle.insert(b, Duration::ZERO); // a packet just arrived
    } // c: no packet ever
    assert_eq!(
        conn.n_command(true, &[a, b, c]),
        vec![(Accept::Ok, vec![a, b, c])]
    );
    d.recording.wait("a and c expire", |r| {
        (r.sessions[&a].removed && r.sessions[&c].removed).then_some(())
    });
    {
        let r = d.recording.lock();
        assert!(!r.sessions[&b].removed, "b saw packets");
        assert!(r.sessions[&a].stopped.is_none(), "REFWAIT removes at once");
    }
    // The connection's state machine forgot them.
    assert_eq!(
        conn.n_command(false, &[a]),
        vec![(Accept::Failure, vec![a])]
    );
    assert_eq!(conn.n_command(false, &[b]), vec![(Accept::Ok, vec![b])]);

    // Without ISC: the expired session leaves the connection ready for
    // new requests, and SERVWAIT (2 s) applies again.
    let mut plain = TwampConn::connect(d.v4(), Peer::open());
    plain.setup().expect("set-up");
    let (_, x) = plain.request(&request(ip, 47003, 0)).expect("x");
    assert_eq!(plain.start(1), Accept::Ok);
    d.recording
        .wait("x expires", |r| r.sessions[&x].removed.then_some(()));
    plain.request(&request(ip, 47004, 0)).expect("ready again");
    assert!(plain.read_to_close().is_empty(), "closed by SERVWAIT");
    // The ISC connection has been idle since its Stop-N, even longer.
    assert!(conn.read_to_close().is_empty(), "closed by SERVWAIT");

    d.barrier();
    let text = d.scrape();
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_sessions_ended_total{reason=\"refwait\"}"
        ),
        3
    );
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_connections_closed_total{reason=\"servwait\"}"
        ),
        2
    );
}

#[test]
fn reload_replaces_keys_and_a_broken_key_file_keeps_the_old_ones() {
    let dir = TempDir::new("reload");
    let key_file = dir.file("twamp.pfs", &key_file_text(), 0o600);
    let control = free_port();
    let text = |deny: &str| {
        format!(
            "listen = [\"127.0.0.1:{control}\"]\nlog_level = \"warn\"\ntest_ports = \"{FIRST_PORT}-{}\"\n\
             [security]\nmodes = [\"unauthenticated\", \"authenticated\"]\npbkdf2_count = 1024\n\
             key_file = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [policy]\nmax_connections_per_client = 1000\ndeny = [{deny}]\n",
            FIRST_PORT + 99,
            key_file.display()
        )
    };
    let config_path = dir.file("control.toml", &text(""), 0o600);
    let cli = cli_with_config(&config_path);
    let config = cli.effective_config().expect("valid file");
    let d = TestDaemon::start_with(cli, config, Some(timing()));
    let auth = |secret: &str| {
        let mut peer = Peer::lab(AUTH);
        peer.secret = Some(secret_of(secret));
        TwampConn::connect(d.v4(), peer).setup()
    };
    auth(SECRET_HEX).expect("initial key");

    // A bad line: the reload fails, the old key stays.
    std::fs::write(&key_file, format!("{IDENTITY}\tnot-hex\n")).expect("write");
    d.stop.reload();
    d.barrier();
    assert_eq!(
        d.metric("ricochet_control_reloads_total{result=\"failed\"}"),
        1
    );
    auth(SECRET_HEX).expect("old key kept");

    // A new key in a file others can read: refused the same way.
    let new_hex = "6e65772d736563726574";
    std::fs::write(&key_file, format!("{IDENTITY}\t{new_hex}\n")).expect("write");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    d.stop.reload();
    d.barrier();
    assert_eq!(
        d.metric("ricochet_control_reloads_total{result=\"failed\"}"),
        2
    );
    auth(SECRET_HEX).expect("old key kept");

    // chmod 600: the new key is in force, the old one is gone.
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    d.stop.reload();
    d.barrier();
    assert_eq!(d.metric("ricochet_control_reloads_total{result=\"ok\"}"), 1);
    auth(new_hex).expect("new key");
    assert_eq!(auth(SECRET_HEX), Err(Accept::Failure));

    // Policy reloads too: loopback denied, refused before any greeting.
    std::fs::write(&config_path, text("\"127.0.0.0/8\"")).expect("write");
    d.stop.reload();
    // The reload runs at the end of the loop turn that sees the wake-up;
    // connections accepted earlier in that turn (at most ACCEPT_BUDGET) are
    // still greeted under the old rules. The next one must be refused.
    let greeted = |d: &TestDaemon| {
        let mut s = TcpStream::connect_timeout(&d.v4(), WAIT).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut g = [0u8; greeting::LEN];
        s.read_exact(&mut g).is_ok()
    };
    assert!(
        (0..=ACCEPT_BUDGET).any(|_| !greeted(&d)),
        "loopback still served after the reload: {}",
        d.scrape()
    );
    // Refused by the new prefix rule, which the reload installed.
    let text = d.scrape();
    assert_eq!(
        metric_value(
            &text,
            "ricochet_control_connections_refused_total{reason=\"prefix_denied\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(&text, "ricochet_control_reloads_total{result=\"ok\"}"),
        2
    );
}

#[test]
fn stop_closes_connections_and_returns() {
    let dir = TempDir::new("stop");
    let mut d = TestDaemon::start(config(&dir, &ALL_SECURITY), timing());
    let mut conn = TwampConn::connect(d.v4(), Peer::open());
    conn.setup().expect("set-up");
    let (_, sid) = conn.request(&request(d.v4().ip(), 48000, 0)).expect("ok");
    d.stop_and_wait().expect("clean stop");
    assert!(conn.read_to_close().is_empty());
    assert!(
        d.recording.session(&sid).removed,
        "sessions end with the daemon's connections"
    );
    assert!(TcpStream::connect_timeout(&d.v4(), Duration::from_secs(1)).is_err());
}

#[test]
fn a_busy_control_port_is_reported_with_its_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr");
    let dir = TempDir::new("busy");
    let mut c = config(&dir, &ALL_SECURITY);
    c.listen = vec![addr];
    let e = match TestDaemon::try_start(cli(), c, Some(timing())) {
        Err(e) => e,
        Ok(_) => panic!("started on a busy port"),
    };
    assert!(
        e.contains(&addr.to_string()) && e.contains("another process"),
        "{e}"
    );
}

#[test]
fn stale_data_plane_sessions_are_removed_at_start() {
    let dir = TempDir::new("stale");
    let recording = Recording::default();
    let mut table = recording.table();
    let spec = {
        // A session some earlier run left behind.
        let d = TestDaemon::start(config(&dir, &ALL_SECURITY), timing());
        let mut conn = TwampConn::connect(d.v4(), Peer::open());
        conn.setup().expect("set-up");
        let (_, sid) = conn.request(&request(d.v4().ip(), 49000, 0)).expect("ok");
        d.recording.session(&sid).spec
    };
    let sid = spec.sid;
    table.add(spec).expect("add");
    drop(table);
    let keys =
        ricochet_control::keys::StaticKeys::load(&config(&dir, &ALL_SECURITY), None).expect("keys");
    let daemon = ricochet_control::app::Daemon::start(ricochet_control::app::DaemonOptions {
        cli: cli(),
        config: config(&dir, &ALL_SECURITY),
        keys,
        table: recording.table(),
        log: None,
        timing: Some(timing()),
    })
    .expect("start");
    assert!(recording.session(&sid).removed);
    drop(daemon);
}
