//! The `ricochet-ping` binary: help, usage errors, exit statuses, and the
//! JSON and raw outputs parsed back.

mod support;

use std::net::IpAddr;
use std::process::{Command, Output};

use ricochet_protocol::modes::Modes;
use support::{Behaviour, TestServer};

fn ping(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ricochet-ping"))
        .args(args)
        .output()
        .expect("run ricochet-ping")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn server(b: Behaviour) -> TestServer {
    TestServer::start("127.0.0.1".parse::<IpAddr>().unwrap(), b)
}

const FAST: [&str; 6] = ["-c", "5", "-i", "1ms", "--timeout", "200ms"];

#[test]
fn help_and_version() {
    let o = ping(&["--help"]);
    assert!(o.status.success());
    let h = stdout(&o);
    for needle in [
        "Examples:",
        "HOST[:PORT]",
        "--exponential",
        "--key-file",
        "--reflect-octets",
        "--raw",
        "Exit status",
    ] {
        assert!(h.contains(needle), "--help lacks {needle}");
    }
    let o = ping(&["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("ricochet-ping "));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec![],
        vec!["-c", "0", "h"],
        vec!["-i", "soon", "h"],
        vec!["-D", "AF99", "h"],
        vec!["[::1"],
        vec!["-A", "enc", "127.0.0.1"],
    ] {
        let o = ping(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty());
    }
    // The key-missing error says what to do.
    let o = ping(&["-A", "enc", "127.0.0.1"]);
    assert!(
        stderr(&o).contains("-u IDENTITY -k KEYFILE"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn connection_refused_exits_2_with_a_clear_message() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = ping(&[&format!("127.0.0.1:{port}")]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("cannot connect") && e.contains("refused"), "{e}");
}

#[test]
fn json_report_parses_and_matches_the_run() {
    let srv = server(Behaviour {
        modes: Modes::SECURITY,
        drop_forward: [2].into_iter().collect(),
        ..Behaviour::default()
    });
    let addr = srv.addr.to_string();
    let mut args = FAST.to_vec();
    args.extend(["--json", "-D", "EF", &addr]);
    let o = ping(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(v["mode"], "unauthenticated");
    assert_eq!(v["dscp"], 46);
    let s = &v["sessions"][0];
    assert_eq!(s["summary"]["sent"], 5);
    assert_eq!(s["summary"]["received"], 4);
    assert_eq!(s["summary"]["lost_forward"], 1);
    assert_eq!(s["summary"]["lost_backward"], 0);
    assert_eq!(s["packet_len"], 41);
    assert_eq!(
        s["reflector"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );
    assert!(s["summary"]["rtt"]["p50_ns"].as_i64().unwrap() > 0);
    assert!(s["anomalies"]["bad_hmac"].as_u64() == Some(0));
    assert!(v["clock"]["t1_source"]
        .as_str()
        .unwrap()
        .contains("CLOCK_REALTIME"));
}

#[test]
fn raw_lines_carry_all_four_timestamps() {
    let srv = server(Behaviour {
        modes: Modes::SECURITY,
        drop_backward: [1].into_iter().collect(),
        ..Behaviour::default()
    });
    let addr = srv.addr.to_string();
    let mut args = FAST.to_vec();
    args.extend(["--raw", &addr]);
    let o = ping(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("# session sender_seq"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert_eq!(r.len(), 11, "{r:?}");
        assert_eq!(r[0], "1");
    }
    let ok: Vec<&Vec<&str>> = rows.iter().filter(|r| r[10] == "ok").collect();
    assert_eq!(ok.len(), 4);
    for r in ok {
        let t: Vec<u64> = r[3..7].iter().map(|x| x.parse().unwrap()).collect();
        assert!(
            t[0] <= t[1] + 2 && t[1] <= t[2] + 2 && t[2] <= t[3] + 2,
            "{r:?}"
        );
        let rtt: i64 = r[7].parse().unwrap();
        let expect = (t[3] - t[0]) as i64 - (t[2] - t[1]) as i64;
        assert_eq!(rtt, expect);
    }
    let lost: Vec<&Vec<&str>> = rows.iter().filter(|r| r[10] == "lost").collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0][1], "1");
}

#[test]
fn text_summary_and_exit_1_when_nothing_comes_back() {
    let srv = server(Behaviour {
        modes: Modes::SECURITY,
        ..Behaviour::default()
    });
    let addr = srv.addr.to_string();
    let mut args = FAST.to_vec();
    args.extend(["-v", &addr]);
    let o = ping(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "5 sent, 5 received, 0 lost",
        "round trip",
        "residence T3-T2",
        "forward T2-T1",
        "one-way error",
        "reflector clock",
        "session 1 seq=4",
    ] {
        assert!(out.contains(needle), "summary lacks {needle}:\n{out}");
    }
    let silent = server(Behaviour {
        modes: Modes::SECURITY,
        drop_forward: (0..5).collect(),
        ..Behaviour::default()
    });
    let addr = silent.addr.to_string();
    let mut args = FAST.to_vec();
    args.push(&addr);
    let o = ping(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("5 sent, 0 received, 5 lost"));
}

#[test]
fn open_key_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let kf = support::key_file();
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let srv = server(Behaviour {
        modes: Modes::SECURITY,
        ..Behaviour::default()
    });
    let addr = srv.addr.to_string();
    let mut args = FAST.to_vec();
    args.extend(["-u", support::IDENTITY, "-k", kf.to_str().unwrap(), &addr]);
    let o = ping(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    assert!(stdout(&o).contains("mode encrypted"));
}

#[test]
fn ctrl_c_stops_sending_and_still_reports() {
    let srv = server(Behaviour {
        modes: Modes::SECURITY,
        ..Behaviour::default()
    });
    let addr = srv.addr.to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_ricochet-ping"))
        .args(["-c", "1000", "-i", "10ms", "--json", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the set-up to finish and sending to be under way.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["interrupted"], true);
    let sent = v["sessions"][0]["summary"]["sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < 1000, "{sent}");
    assert_eq!(v["sessions"][0]["summary"]["received"].as_u64(), Some(sent));
}
