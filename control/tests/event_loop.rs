//! The control event loop on loopback, driven by the test-only block
//! protocol of `common`. Every wait is on a socket or channel event with a
//! bounded timeout; no sleep is used for synchronisation.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use ricochet_control::event_loop::CloseReason;
use ricochet_control::policy::accept;

#[test]
fn serves_200_concurrent_connections() {
    let h = Harness::start(Options::default());
    // Open all 200 before any is served further, so they are concurrent.
    let mut clients: Vec<TcpStream> = (0..200).map(|_| connect(h.addr)).collect();
    for c in &mut clients {
        let mut g = [0u8; 64];
        c.read_exact(&mut g).expect("greeting");
        assert_eq!(g, GREETING);
    }
    assert_eq!(h.metrics.open_connections(), 200);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = block(b'x');
        b[1..9].copy_from_slice(&(i as u64).to_be_bytes());
        // Split the block over two writes: the loop must reassemble.
        c.write_all(&b[..5]).expect("write");
        c.write_all(&b[5..]).expect("write");
        let mut echo = [0u8; BLOCK];
        c.read_exact(&mut echo).expect("echo");
        assert_eq!(echo, b, "connection {i} got another connection's data");
    }
    drop(clients);
    for _ in 0..200 {
        assert_eq!(h.next_close().1, CloseReason::PeerClosed);
    }
    let _barrier = h.barrier();
    let text = h.metrics.encode();
    assert!(
        text.contains("ricochet_control_connections_accepted_total 201"),
        "{text}"
    );
    assert!(
        text.contains("ricochet_control_connections_closed_total{reason=\"peer_closed\"} 200"),
        "{text}"
    );
    assert_eq!(h.metrics.open_connections(), 1, "only the barrier is open");
}

#[test]
fn large_bursts_are_read_completely_across_turns() {
    // 1 MiB in one burst exceeds the per-turn read budget (64 KiB): the loop
    // must come back to the connection by itself (readiness is
    // edge-triggered, no new event would arrive).
    let h = Harness::start(Options {
        settings: ricochet_control::event_loop::LoopSettings {
            max_output: 4 * AMPLIFY,
            ..settings()
        },
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    let mut w = c.try_clone().expect("clone");
    let burst: Vec<u8> = (0..AMPLIFY)
        .map(|i| b'a' + (i / BLOCK % 20) as u8)
        .collect();
    let sent = burst.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut echo = vec![0u8; AMPLIFY];
    c.read_exact(&mut echo).expect("whole echo");
    assert!(echo == burst, "echo differs");
    writer.join().expect("writer").expect("write");
}

#[test]
fn client_stalling_mid_message_is_closed_after_the_stall_timeout() {
    let stall = Duration::from_millis(300);
    let h = Harness::start(Options {
        settings: ricochet_control::event_loop::LoopSettings {
            stall,
            ..settings()
        },
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    c.write_all(&[b'x'; 5]).expect("partial block");
    let (rest, elapsed) = read_to_close(&mut c);
    assert!(rest.is_empty());
    assert!(
        elapsed >= stall - Duration::from_millis(20),
        "closed too early: {elapsed:?}"
    );
    assert!(elapsed < WAIT, "not closed by the stall timer");
    assert_eq!(h.next_close().1, CloseReason::Stalled);
    let text = h.metrics.encode();
    assert!(
        text.contains("ricochet_control_messages_rejected_total{reason=\"timeout\"} 1"),
        "{text}"
    );
}

#[test]
fn complete_messages_are_not_hit_by_the_stall_timer() {
    let stall = Duration::from_millis(200);
    let h = Harness::start(Options {
        settings: ricochet_control::event_loop::LoopSettings {
            stall,
            servwait: Duration::from_millis(600),
            ..settings()
        },
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    c.write_all(&block(b'x')).expect("block");
    let mut echo = [0u8; BLOCK];
    c.read_exact(&mut echo).expect("echo");
    // Idle between messages: only SERVWAIT (600 ms) applies, not the stall.
    let (_, elapsed) = read_to_close(&mut c);
    assert!(elapsed >= Duration::from_millis(550), "{elapsed:?}");
    assert_eq!(h.next_close().1, CloseReason::ServWait);
}

#[test]
fn servwait_closes_idle_connections_but_not_testing_ones() {
    let servwait = Duration::from_millis(300);
    let h = Harness::start(Options {
        settings: ricochet_control::event_loop::LoopSettings {
            servwait,
            ..settings()
        },
        ..Options::default()
    });
    let mut idle = greeted(h.addr);
    let mut testing = greeted(h.addr);
    testing.write_all(&block(b'T')).expect("start testing");
    let mut echo = [0u8; BLOCK];
    testing.read_exact(&mut echo).expect("echo");

    let (_, elapsed) = read_to_close(&mut idle);
    assert!(
        elapsed >= servwait - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert_eq!(h.next_close().1, CloseReason::ServWait);

    // The testing connection outlived SERVWAIT and still answers.
    testing.write_all(&block(b'I')).expect("stop testing");
    testing.read_exact(&mut echo).expect("still open");
    assert_eq!(echo[0], b'I');
    // Monitoring resumes when testing ends.
    let (_, elapsed) = read_to_close(&mut testing);
    assert!(
        elapsed >= servwait - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert_eq!(h.next_close().1, CloseReason::ServWait);
}

#[test]
fn refwait_sweep_visits_testing_connections() {
    let h = Harness::start(Options {
        settings: ricochet_control::event_loop::LoopSettings {
            sweep_interval: Duration::from_millis(100),
            ..settings()
        },
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    c.write_all(&block(b'T')).expect("start testing");
    let mut b = [0u8; BLOCK];
    c.read_exact(&mut b).expect("echo");
    assert_eq!(b[0], b'T');
    c.read_exact(&mut b).expect("sweep");
    assert_eq!(b, [b'S'; BLOCK]);
}

#[test]
fn handler_deadline_fires_on_time() {
    let h = Harness::start(Options::default());
    let mut c = greeted(h.addr);
    let start = std::time::Instant::now();
    c.write_all(&block(b'D')).expect("deadline");
    let mut b = [0u8; BLOCK];
    c.read_exact(&mut b).expect("echo");
    c.read_exact(&mut b).expect("timer");
    assert_eq!(b, [b'd'; BLOCK]);
    assert!(
        start.elapsed() >= Duration::from_millis(190),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn connection_limits_refuse_and_count() {
    let h = Harness::start(Options {
        rules: ricochet_control::policy::Rules {
            max_connections: 3,
            max_connections_per_client: 2,
            ..rules()
        },
        ..Options::default()
    });
    let from = |ip: [u8; 4]| {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::from((ip, 0)).into())
            .expect("bind source");
        sock.connect_timeout(&h.addr.into(), WAIT).expect("connect");
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s
    };
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut s = from([127, 0, 0, 1]);
        let mut g = [0u8; 64];
        s.read_exact(&mut g).expect("greeting");
        kept.push(s);
    }
    // Third from the same client: closed without a greeting.
    let mut refused = from([127, 0, 0, 1]);
    assert!(read_to_close(&mut refused).0.is_empty());
    // Another client fits the global limit of 3 ...
    let mut other = from([127, 0, 0, 2]);
    let mut g = [0u8; 64];
    other.read_exact(&mut g).expect("greeting");
    // ... and a fourth connection exceeds it.
    let mut refused = from([127, 0, 0, 3]);
    assert!(read_to_close(&mut refused).0.is_empty());

    let text = h.metrics.encode();
    for needle in [
        "ricochet_control_connections_refused_total{reason=\"client_connection_limit\"} 1",
        "ricochet_control_connections_refused_total{reason=\"global_connection_limit\"} 1",
        "ricochet_control_connections_accepted_total 3",
        "ricochet_control_connections 3",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Closing one frees room for the client again.
    drop(kept.pop());
    h.next_close();
    let mut again = from([127, 0, 0, 1]);
    again.read_exact(&mut g).expect("admitted after release");
}

#[test]
fn peer_that_does_not_read_is_closed_at_the_output_bound() {
    let h = Harness::start(Options {
        settings: ricochet_control::event_loop::LoopSettings {
            max_output: AMPLIFY + 1024,
            ..settings()
        },
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    // Each B makes the server queue 1 MiB; the kernel buffers absorb a few
    // MiB, then the loop's bound trips. Never read.
    let mut reason = None;
    for _ in 0..64 {
        if c.write_all(&block(b'B')).is_err() {
            break;
        }
        if let Ok((_, r)) = h.closes.recv_timeout(Duration::from_millis(50)) {
            reason = Some(r);
            break;
        }
    }
    let reason = reason.unwrap_or_else(|| h.next_close().1);
    assert_eq!(reason, CloseReason::OutputOverflow);
    let _barrier = h.barrier();
    let text = h.metrics.encode();
    assert!(
        text.contains("ricochet_control_connections_closed_total{reason=\"output_overflow\"} 1"),
        "{text}"
    );
}

#[test]
fn output_that_makes_no_progress_is_closed_after_the_stall_timeout() {
    let h = Harness::start(Options {
        settings: ricochet_control::event_loop::LoopSettings {
            max_output: 256 * AMPLIFY,
            stall: Duration::from_millis(300),
            ..settings()
        },
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    let mut blocks = [0u8; 32 * BLOCK];
    for b in blocks.chunks_mut(BLOCK) {
        b[0] = b'B';
    }
    c.write_all(&blocks).expect("32 MiB worth of requests");
    assert_eq!(h.next_close().1, CloseReason::WriteStalled);
}

#[test]
fn handler_close_delivers_the_last_message() {
    let h = Harness::start(Options::default());
    let mut c = greeted(h.addr);
    // Q is followed by more input the handler never reads: the close must
    // still deliver all 60 000 octets (no reset).
    let mut input = block(b'Q').to_vec();
    input.extend_from_slice(&[b'x'; 4 * BLOCK]);
    c.write_all(&input).expect("write");
    let (all, _) = read_to_close(&mut c);
    assert_eq!(all.len(), FINAL_LEN);
    assert!(all.iter().all(|b| *b == b'q'));
    assert_eq!(h.next_close().1, CloseReason::Handler);
}

fn request_session(c: &mut TcpStream, port: u16) -> (u8, u16) {
    let mut b = block(b'P');
    b[1..3].copy_from_slice(&port.to_be_bytes());
    c.write_all(&b).expect("write");
    let mut r = [0u8; BLOCK];
    c.read_exact(&mut r).expect("reply");
    assert_eq!(r[0], b'p');
    (r[1], u16::from_be_bytes([r[2], r[3]]))
}

#[test]
fn handlers_admit_sessions_and_ports_through_the_context() {
    let h = Harness::start(Options {
        rules: ricochet_control::policy::Rules {
            max_sessions: 10,
            max_sessions_per_client: 2,
            ..rules()
        },
        ports: ricochet_control::ports::PortRange::new(20000, 20002).expect("range"),
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    assert_eq!(request_session(&mut c, 20001), (accept::OK, 20001));
    assert_eq!(request_session(&mut c, 20001), (accept::OK, 20002));
    assert_eq!(
        request_session(&mut c, 20001),
        (accept::TEMPORARY_RESOURCE_LIMITATION, 0),
        "per-client session limit"
    );
    drop(c);
    h.next_close();
    // Closing released sessions and ports.
    let mut c = greeted(h.addr);
    assert_eq!(request_session(&mut c, 20001), (accept::OK, 20001));
    let text = h.metrics.encode();
    assert!(
        text.contains("ricochet_control_session_refusals_total{reason=\"client_session_limit\"} 1"),
        "{text}"
    );
}

#[test]
fn loop_owned_state_reaches_every_handler() {
    let h = Harness::start(Options::default());
    let _a = greeted(h.addr);
    let _b = greeted(h.addr);
    let mut c = greeted(h.addr);
    c.write_all(&block(b'C')).expect("write");
    let mut r = [0u8; BLOCK];
    c.read_exact(&mut r).expect("reply");
    assert_eq!(r[0], b'c');
    assert_eq!(u64::from_be_bytes(r[8..].try_into().expect("8 octets")), 3);
}

#[test]
fn exhausted_ports_answer_accept_5() {
    let h = Harness::start(Options {
        ports: ricochet_control::ports::PortRange::new(20000, 20001).expect("range"),
        ..Options::default()
    });
    let mut c = greeted(h.addr);
    assert_eq!(request_session(&mut c, 0).0, accept::OK);
    assert_eq!(request_session(&mut c, 0).0, accept::OK);
    assert_eq!(
        request_session(&mut c, 0),
        (accept::TEMPORARY_RESOURCE_LIMITATION, 0)
    );
}

#[test]
fn reload_applies_new_rules_to_new_connections_only() {
    let h = Harness::start(Options {
        reload_rules: Some(ricochet_control::policy::Rules {
            max_connections: 1,
            ..rules()
        }),
        ..Options::default()
    });
    let mut a = greeted(h.addr);
    let mut b = greeted(h.addr);
    h.stop.reload();
    h.reloaded.recv_timeout(WAIT).expect("reload ran");
    // The two existing connections keep going ...
    for c in [&mut a, &mut b] {
        c.write_all(&block(b'x')).expect("write");
        let mut e = [0u8; BLOCK];
        c.read_exact(&mut e).expect("still served");
    }
    // ... a new one is refused under the new limit of 1.
    let mut c = connect(h.addr);
    assert!(read_to_close(&mut c).0.is_empty());
    // A failing reload keeps the running rules (logged, not fatal).
    h.stop.reload();
    h.reloaded.recv_timeout(WAIT).expect("second reload ran");
    let mut c = connect(h.addr);
    assert!(read_to_close(&mut c).0.is_empty());
    assert!(h.metrics.encode().contains(
        "ricochet_control_connections_refused_total{reason=\"global_connection_limit\"} 2"
    ));
}

#[test]
fn stop_closes_connections_and_returns() {
    let mut h = Harness::start(Options::default());
    let mut a = greeted(h.addr);
    let mut b = greeted(h.addr);
    b.write_all(&[b'x'; 3]).expect("partial");
    h.stop_and_wait().expect("clean stop");
    assert!(read_to_close(&mut a).0.is_empty());
    assert!(read_to_close(&mut b).0.is_empty());
    let mut reasons = vec![h.next_close().1, h.next_close().1];
    reasons.dedup();
    assert_eq!(reasons, vec![CloseReason::Shutdown]);
    // The listener is gone.
    match TcpStream::connect_timeout(&h.addr, Duration::from_secs(2)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
        Ok(mut s) => {
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            panic!("still accepting: {:?}", s.read(&mut [0u8; 1]));
        }
    }
    assert_eq!(h.metrics.open_connections(), 0);
}
