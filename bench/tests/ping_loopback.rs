//! ricochet-ping against an in-test TWAMP server (protocol `Server` + a
//! `reflect_twamp` reflector) over loopback: every mode, IPv4 and IPv6,
//! several sessions, RFC 5938/6038/7750/8186, and the accounting of loss,
//! duplicates, bad HMACs and bogus sequence numbers against what the test
//! reflector was told to do.

mod support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use ricochet_bench::ping::cli::Args;
use ricochet_bench::ping::{run, PingConfig, PingError, RunReport};
use ricochet_protocol::accept::Accept;
use ricochet_protocol::modes::Modes;
use ricochet_protocol::server::ServerEvent;
use ricochet_protocol::time::TimeFormat;
use support::{all_modes, ipv6_available, key_file, Behaviour, TestServer, IDENTITY};

fn config(server: &TestServer, extra: &[&str]) -> PingConfig {
    let addr = server.addr.to_string();
    let mut argv = vec!["ricochet-ping"];
    // Defaults of these tests, unless `extra` sets them.
    for (flag, value) in [("-c", "20"), ("-i", "1ms"), ("--timeout", "300ms")] {
        if !extra.contains(&flag) {
            argv.extend([flag, value]);
        }
    }
    argv.extend(["--connect-timeout", "3s"]);
    argv.extend_from_slice(extra);
    argv.push(&addr);
    let args = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    args.to_config().unwrap().0
}

fn server(ip: &str, behaviour: Behaviour) -> TestServer {
    TestServer::start(ip.parse::<IpAddr>().unwrap(), behaviour)
}

fn offering(modes: Modes) -> Behaviour {
    Behaviour {
        modes,
        ..Behaviour::default()
    }
}

/// Every reply's timestamps are in causal order on one host clock (same
/// clock for sender and reflector): T1 ≤ T2 ≤ T3 ≤ T4, a small round trip.
fn check_timestamps(r: &RunReport) {
    for s in &r.sessions {
        for p in &s.outcome.packets {
            // 2 ns of slack for NTP fraction rounding.
            assert!(p.t1_ns <= p.t2_ns + 2, "{p:?}");
            assert!(p.t2_ns <= p.t3_ns + 2, "{p:?}");
            assert!(p.t3_ns <= p.t4_ns + 2, "{p:?}");
            assert!(p.rtt_ns >= 0 && p.rtt_ns < 1_000_000_000, "{p:?}");
            assert_eq!(p.sender_ttl, 255);
        }
    }
}

#[test]
fn every_mode_over_ipv4_and_ipv6() {
    let kf = key_file();
    let kf = kf.to_str().unwrap();
    let mut ips = vec!["127.0.0.1"];
    if ipv6_available() {
        ips.push("::1");
    } else {
        eprintln!("::1 unavailable: IPv6 part skipped");
    }
    for ip in ips {
        let srv = server(ip, offering(Modes::SECURITY));
        // (mode, name, default padding, packet length both ways) — twping's
        // defaults and perfSONAR's wire sizes (perfsonar-interop.md §3).
        let cases = [
            ("open", "unauthenticated", 27, 41),
            ("auth", "authenticated", 64, 112),
            ("enc", "encrypted", 64, 112),
            ("mixed", "mixed", 27, 41),
        ];
        for (mode, name, pad, len) in cases {
            let c = config(&srv, &["-A", mode, "-u", IDENTITY, "-k", kf, "-v"]);
            let r = run(&c).unwrap_or_else(|e| panic!("{ip} {mode}: {e}"));
            assert_eq!(r.mode, name);
            let s = &r.sessions[0];
            let m = &s.outcome.summary;
            assert_eq!(
                (m.sent, m.received, m.lost, m.duplicates, m.reordered),
                (20, 20, 0, 0, 0),
                "{ip} {mode}"
            );
            assert_eq!((m.lost_forward, m.lost_backward), (Some(0), Some(0)));
            assert_eq!(
                (s.padding_length, s.packet_len, s.reply_len),
                (pad, len, len)
            );
            assert_eq!(s.outcome.anomalies, Default::default(), "{ip} {mode}");
            // The reflector numbers its own packets from 0 (RFC 5357 §4.2.1).
            let rseqs: HashSet<u32> = s.outcome.packets.iter().map(|p| p.reflector_seq).collect();
            assert_eq!(rseqs, (0..20).collect());
            let seqs: HashSet<u32> = s.outcome.packets.iter().map(|p| p.sender_seq).collect();
            assert_eq!(seqs, (0..20).collect());
            assert!(s.outcome.lost.is_empty());
            assert!(m.rtt.count == 20 && m.rtt.min_ns > 0);
            assert_eq!(
                s.outcome.reflector_error_estimate.map(|e| e & 0x4000),
                Some(0)
            );
            assert_eq!(s.reflector.ip(), srv.addr.ip());
            check_timestamps(&r);
        }
        assert!(
            srv.wait_for(|l| l.stopped.len() == 4),
            "every session stopped"
        );
        srv.log(|l| {
            assert_eq!(l.accepted.len(), 4);
            let pads: Vec<u32> = l.accepted.iter().map(|a| a.padding_length).collect();
            assert_eq!(pads, vec![27, 64, 64, 27]);
            let keyed: Vec<bool> = l.accepted.iter().map(|a| a.keyed).collect();
            assert_eq!(keyed, vec![false, true, true, false]);
            for a in &l.accepted {
                assert_eq!(a.sender.ip(), srv.addr.ip(), "Sender Address = ours");
                // 300 ms as an NTP interval, within the 2^-32 s resolution.
                assert!(a.timeout.interval_ns().abs_diff(300_000_000) <= 1);
                assert_eq!(a.dscp, 0);
            }
            assert_eq!(l.started.len(), 4);
            assert_eq!(l.stopped, l.started);
            assert_eq!(l.bad_sender_packets, 0);
            assert_eq!(l.sender_lens, [41usize, 112].into_iter().collect());
        });
    }
}

#[test]
fn most_secure_mode_with_a_key_else_open() {
    let kf = key_file();
    let srv = server("127.0.0.1", offering(Modes::SECURITY));
    let r = run(&config(&srv, &["-u", IDENTITY, "-k", kf.to_str().unwrap()])).unwrap();
    assert_eq!(r.mode, "encrypted");
    let r = run(&config(&srv, &[])).unwrap();
    assert_eq!(r.mode, "unauthenticated");
    // RFC 8186 §2.2: PTPv2 is echoed only when offered; not here.
    assert!(!r.selected_modes.contains("PTP"), "{}", r.selected_modes);
}

#[test]
fn loss_by_direction_and_duplicates_are_counted() {
    let srv = server(
        "127.0.0.1",
        Behaviour {
            modes: Modes::SECURITY,
            drop_forward: [3, 7].into_iter().collect(),
            drop_backward: [5].into_iter().collect(),
            duplicate: [10].into_iter().collect(),
            ..Behaviour::default()
        },
    );
    let r = run(&config(&srv, &["--raw"])).unwrap();
    let s = &r.sessions[0].outcome;
    let m = &s.summary;
    assert_eq!((m.sent, m.received, m.lost), (20, 17, 3));
    assert_eq!(
        m.lost_forward,
        Some(2),
        "3 and 7 never reached the reflector"
    );
    assert_eq!(m.lost_backward, Some(1), "5 was reflected but dropped");
    assert_eq!(m.duplicates, 1);
    assert!((m.loss_ratio - 0.15).abs() < 1e-12);
    let mut lost = s.lost.clone();
    lost.sort();
    assert_eq!(lost, vec![3, 5, 7]);
    let dups: Vec<u32> = s
        .packets
        .iter()
        .filter(|p| p.duplicate)
        .map(|p| p.sender_seq)
        .collect();
    assert_eq!(dups, vec![10]);
    assert_eq!(r.exit_status(), 0);
}

#[test]
fn bad_hmac_and_unknown_sequence_numbers_are_not_used() {
    let kf = key_file();
    let srv = server(
        "127.0.0.1",
        Behaviour {
            modes: Modes::SECURITY,
            corrupt_hmac: [4].into_iter().collect(),
            bogus_after: Some(2),
            ..Behaviour::default()
        },
    );
    for mode in ["auth", "enc"] {
        let c = config(
            &srv,
            &["-A", mode, "-u", IDENTITY, "-k", kf.to_str().unwrap(), "-v"],
        );
        let r = run(&c).unwrap();
        let s = &r.sessions[0].outcome;
        assert_eq!(s.anomalies.bad_hmac, 1, "{mode}");
        assert_eq!(s.anomalies.unknown_sequence, 1, "{mode}");
        assert_eq!((s.summary.received, s.lost.as_slice()), (19, &[4u32][..]));
        assert!(s.packets.iter().all(|p| p.sender_seq < 20));
    }
    // Unauthenticated: no HMAC to break, the bogus number still refused.
    let r = run(&config(&srv, &["-A", "open"])).unwrap();
    let s = &r.sessions[0].outcome;
    assert_eq!((s.anomalies.bad_hmac, s.anomalies.unknown_sequence), (0, 1));
    assert_eq!(s.summary.received, 20);
}

#[test]
fn several_sessions_with_and_without_individual_session_control() {
    let kf = key_file();
    let srv = server("127.0.0.1", offering(all_modes()));
    for isc in [false, true] {
        let mut extra = vec!["--sessions", "3", "-A", "enc", "-u", IDENTITY];
        extra.extend(["-k", kf.to_str().unwrap()]);
        if isc {
            extra.push("--isc");
        }
        let r = run(&config(&srv, &extra)).unwrap();
        assert_eq!(r.sessions.len(), 3);
        assert_eq!(r.format.individual_session_control, isc);
        let sids: HashSet<&str> = r.sessions.iter().map(|s| s.sid.as_str()).collect();
        let ports: HashSet<u16> = r.sessions.iter().map(|s| s.sender.port()).collect();
        assert_eq!((sids.len(), ports.len()), (3, 3));
        for s in &r.sessions {
            assert_eq!(s.outcome.summary.received, 20, "isc={isc}");
            assert_eq!(s.outcome.anomalies.bad_hmac, 0);
        }
    }
    assert!(
        srv.wait_for(|l| l.stopped.len() == 6),
        "every session stopped"
    );
    srv.log(|l| {
        assert_eq!(l.started.len(), 6);
        assert_eq!(l.stopped.len(), 6);
        let n_acks = l
            .events
            .iter()
            .filter(|e| matches!(e, ServerEvent::NAck { .. }))
            .count();
        assert_eq!(n_acks, 2, "one Start-N-Ack and one Stop-N-Ack");
        assert!(l.events.contains(&ServerEvent::Started { sessions: 3 }));
        assert!(l.events.contains(&ServerEvent::Stopped { sessions: 3 }));
    });
}

#[test]
fn rfc6038_7750_8186_features_in_open_and_encrypted_modes() {
    let kf = key_file();
    let srv = server(
        "127.0.0.1",
        Behaviour {
            modes: all_modes(),
            server_octets: [0xab, 0xcd],
            ..Behaviour::default()
        },
    );
    // (mode, expected padding, expected packet length): equal sizes both ways.
    for (mode, pad, len) in [("enc", 72, 120), ("open", 38, 52)] {
        let c = config(
            &srv,
            &[
                "-A",
                mode,
                "-u",
                IDENTITY,
                "-k",
                kf.to_str().unwrap(),
                "--reflect-octets",
                "8",
                "--symmetrical",
                "--dscp-ecn",
                "--ptp",
                "-D",
                "AF41",
                "-v",
            ],
        );
        let r = run(&c).unwrap_or_else(|e| panic!("{mode}: {e}"));
        for f in [
            "REFLECT_OCTETS",
            "SYMMETRICAL_SIZE",
            "DSCP_ECN",
            "PTP_TIMESTAMPS",
        ] {
            assert!(r.selected_modes.contains(f), "{mode}: {}", r.selected_modes);
        }
        assert_eq!(r.format.reflector_timestamps, "PTPv2");
        assert_eq!(r.clock.t1_format, "PTPv2");
        let s = &r.sessions[0];
        assert_eq!(
            (s.padding_length, s.packet_len, s.reply_len),
            (pad, len, len),
            "{mode}"
        );
        let o = &s.outcome;
        assert_eq!(o.summary.received, 20);
        assert_eq!(o.anomalies, Default::default(), "{mode}");
        // S-DSCP-ECN: the test reflector reports AF41 (34) with ECN 01.
        assert_eq!(o.forward_dscp_ecn, vec![((34 << 2) | 1, 20)], "{mode}");
        assert!(o
            .packets
            .iter()
            .all(|p| p.forward_dscp_ecn == Some((34 << 2) | 1)));
        // The Z bit of the reflector's Error Estimate says PTPv2.
        assert_eq!(o.reflector_error_estimate.map(|e| e & 0x4000), Some(0x4000));
        check_timestamps(&r);
    }
    srv.log(|l| {
        for a in &l.accepted {
            assert_eq!(a.dscp, 34);
            assert_eq!(a.format.reflect_octets.map(|r| r.length), Some(8));
            assert!(a.format.symmetrical_size && a.format.dscp_ecn_monitoring);
            assert_eq!(a.format.timestamp_format, TimeFormat::Ptp);
        }
        // RFC 6038 §4.2: the Server octets lead the region to be reflected.
        let region = l.first_reflect_region.clone().unwrap();
        assert_eq!(&region[..2], &[0xab, 0xcd]);
        assert_eq!(region.len(), 8);
    });
}

#[test]
fn mangled_reflected_octets_are_detected() {
    let srv = server(
        "127.0.0.1",
        Behaviour {
            modes: all_modes(),
            mangle_reflected: true,
            ..Behaviour::default()
        },
    );
    let r = run(&config(&srv, &["--reflect-octets", "4"])).unwrap();
    assert_eq!(r.sessions[0].outcome.anomalies.reflect_octets_mismatch, 20);
}

#[test]
fn clear_errors_for_every_failure_before_the_test() {
    // Connection refused: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let args = Args::try_parse_from(["ricochet-ping", &format!("127.0.0.1:{port}")]).unwrap();
    let e = run(&args.to_config().unwrap().0).unwrap_err();
    assert!(matches!(e, PingError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");

    // Only protected modes offered and no key.
    let srv = server(
        "127.0.0.1",
        offering(Modes::AUTHENTICATED | Modes::ENCRYPTED),
    );
    let e = run(&config(&srv, &[])).unwrap_err();
    assert!(matches!(e, PingError::NoCommonMode { .. }), "{e}");
    assert!(e.to_string().contains("-u and -k"), "{e}");

    // Wrong secret: the server answers Accept 1 (RFC 4656 §3.1).
    let dir = std::env::temp_dir().join(format!("ricochet-ping-wrong-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong.pfs");
    std::fs::write(&wrong, format!("{IDENTITY}\t00112233\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let e = run(&config(
        &srv,
        &["-u", IDENTITY, "-k", wrong.to_str().unwrap()],
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            PingError::SetupRefused {
                accept: Accept::Failure,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("wrong secret"), "{e}");

    // Sessions refused with Accept 5.
    let srv = server(
        "127.0.0.1",
        Behaviour {
            modes: Modes::SECURITY,
            refuse_sessions: Some(Accept::TemporaryResourceLimitation),
            ..Behaviour::default()
        },
    );
    let e = run(&config(&srv, &[])).unwrap_err();
    assert!(
        matches!(
            e,
            PingError::AllSessionsRefused {
                accept: Accept::TemporaryResourceLimitation
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("temporary resource limitation"),
        "{e}"
    );

    // A feature the user asked for that the server does not offer.
    let srv = server("127.0.0.1", offering(Modes::SECURITY));
    for flag in ["--isc", "--symmetrical", "--dscp-ecn"] {
        let e = run(&config(&srv, &[flag])).unwrap_err();
        assert!(
            matches!(e, PingError::FeatureNotOffered { .. }),
            "{flag}: {e}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pacing_holds_a_high_rate() {
    let srv = server("127.0.0.1", offering(Modes::SECURITY));
    let n = 20_000u32;
    let c = config(
        &srv,
        &["-c", &n.to_string(), "-i", "10us", "--timeout", "200ms"],
    );
    let r = run(&c).unwrap();
    let o = &r.sessions[0].outcome;
    eprintln!(
        "pacing: {} packets at 10 µs intervals: {:.0} pps achieved over {:.1} ms, \
         {} replies, latest send {:.1} µs late",
        o.summary.sent,
        o.achieved_pps,
        o.send_duration_ns as f64 / 1e6,
        o.summary.received,
        o.max_send_lateness_ns as f64 / 1e3
    );
    assert_eq!(o.summary.sent, u64::from(n));
    assert_eq!(o.anomalies.send_errors, 0);
    // Loose: a fully loaded 2-core debug build still batches well past this.
    assert!(o.achieved_pps > 20_000.0, "{} pps", o.achieved_pps);
    assert!(o.summary.received > 0);
}

#[test]
fn a_fully_answered_session_does_not_wait_out_the_timeout() {
    let srv = server(
        "127.0.0.1",
        Behaviour {
            modes: Modes::SECURITY,
            duplicate: [2].into_iter().collect(),
            ..Behaviour::default()
        },
    );
    let t = std::time::Instant::now();
    let r = run(&config(&srv, &["-c", "5", "--timeout", "5s"])).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let m = &r.sessions[0].outcome.summary;
    assert_eq!(
        (m.received, m.duplicates),
        (5, 1),
        "the duplicate is still counted"
    );
    // With a packet missing the full timeout is waited for.
    let lossy = server(
        "127.0.0.1",
        Behaviour {
            modes: Modes::SECURITY,
            drop_forward: [4].into_iter().collect(),
            ..Behaviour::default()
        },
    );
    let t = std::time::Instant::now();
    run(&config(&lossy, &["-c", "5", "--timeout", "400ms"])).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400));
}

#[test]
fn a_session_accepted_with_port_zero_is_skipped_and_stop_counts_it() {
    let srv = server(
        "127.0.0.1",
        Behaviour {
            modes: Modes::SECURITY,
            first_port_zero: true,
            ..Behaviour::default()
        },
    );
    let r = run(&config(&srv, &["--sessions", "2"])).unwrap();
    assert_eq!(r.sessions.len(), 1);
    assert_eq!(r.sessions[0].session, 2);
    assert_eq!(r.sessions[0].outcome.summary.received, 20);
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.exit_status(), 1);
    // Stop-Sessions counted both sessions the server holds (RFC 5357 §3.8),
    // so the server stopped them instead of dropping the connection.
    assert!(srv.wait_for(|l| l.events.contains(&ServerEvent::Stopped { sessions: 2 })));
}
