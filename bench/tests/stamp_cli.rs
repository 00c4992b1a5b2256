//! The `ricochet-ping --stamp` binary: help with examples, usage errors
//! (exit 2 with a message saying what to do), and the JSON and raw outputs
//! of a run against the reflector crate's socket listener, parsed back.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use ricochet_reflector::session_table::{ListenerKind, ListenerSpec, SessionTable};
use ricochet_reflector::socket::{SocketSessionTable, TableConfig};

fn ping(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ricochet-ping"))
        .args(args)
        .output()
        .expect("run ricochet-ping")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn help_shows_stamp_options_and_examples() {
    let o = ping(&["--help"]);
    assert!(o.status.success());
    let h = text(&o.stdout);
    for needle in [
        "--stamp",
        "--stamp-key-file",
        "--ssid",
        "--tlv <TLV>",
        "--reflector-mode",
        "STAMP examples",
        "ricochet-ping --stamp --ssid 7 --tlv follow-up",
        "extra-padding=N",
        "destination-node=ADDR",
    ] {
        assert!(h.contains(needle), "--help lacks {needle:?}");
    }
}

#[test]
fn usage_errors_exit_2_and_say_what_to_do() {
    for (args, says) in [
        (
            vec!["--stamp", "-A", "open", "127.0.0.1"],
            "cannot be used with",
        ),
        (vec!["--ssid", "7", "127.0.0.1"], "--stamp"),
        (vec!["--stamp", "--ssid", "0", "127.0.0.1"], "0"),
        (
            vec!["--stamp", "--tlv", "bogus", "127.0.0.1"],
            "unknown TLV",
        ),
        (
            vec!["--stamp", "--tlv", "hmac", "127.0.0.1"],
            "--stamp-key-file",
        ),
        (
            vec!["--stamp", "--stamp-mode", "auth", "127.0.0.1"],
            "--stamp-key-file",
        ),
        (
            vec![
                "--stamp",
                "--tlv",
                "destination-node=127.0.0.1",
                "127.0.0.1",
            ],
            "--ssid",
        ),
        (
            vec!["--stamp", "--stamp-key-file", "/nonexistent/k", "127.0.0.1"],
            "/nonexistent/k",
        ),
    ] {
        let o = ping(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = text(&o.stderr);
        assert!(e.contains(says), "{args:?}: {e}");
    }
}

fn listener() -> (SocketSessionTable, SocketAddr) {
    let mut t = SocketSessionTable::spawn(&TableConfig {
        housekeeping: Duration::from_millis(20),
        ..TableConfig::default()
    })
    .unwrap();
    t.add_listener(ListenerSpec {
        local: "127.0.0.1:0".parse().unwrap(),
        kind: ListenerKind::Unauthenticated,
        dscp: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    })
    .unwrap();
    let a = t.listeners()[0];
    (t, a)
}

#[test]
fn json_and_raw_outputs_parse_back() {
    let (_t, addr) = listener();
    let a = addr.to_string();
    let base = [
        "--stamp",
        "-c",
        "5",
        "-i",
        "1ms",
        "--timeout",
        "300ms",
        "--ssid",
        "3",
    ];
    let mut args = base.to_vec();
    args.extend(["--tlv", "extra-padding=4", "--json", &a]);
    let o = ping(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["sent"], 5);
    assert_eq!(v["summary"]["received"], 5);
    assert_eq!(v["ssid"], 3);
    assert_eq!(v["packet_len"], 44 + 8);
    assert_eq!(v["tlvs"][0], "extra-padding");
    assert_eq!(v["mode"], "unauthenticated");

    let mut args = base.to_vec();
    args.extend(["--raw", &a]);
    let o = ping(&args);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    let mut lines = out.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("# sender_seq reflector_seq"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), 5);
    for r in rows {
        assert_eq!(r.len(), 17);
        assert_eq!(r[16], "ok");
        assert_eq!(r[0], r[1], "stateless: reflector sequence = ours");
        let t: Vec<u64> = r[2..6].iter().map(|x| x.parse().unwrap()).collect();
        assert!(t[0] <= t[3] + 2);
    }

    // Nobody listening: no replies, exit 1, the report still printed.
    let (t2, dead) = listener();
    drop(t2);
    let d = dead.to_string();
    let o = ping(&["--stamp", "-c", "2", "-i", "1ms", "--timeout", "100ms", &d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("2 sent, 0 received"));
}
