//! STAMP end to end in the namespace lab: the real `ricochet-ping --stamp`
//! in the sender namespace against each of Ricochet's data paths in the
//! reflector namespace, with TLVs on each:
//!
//! * XDP: `ricochet-reflector` attached to the veth, an unauthenticated
//!   STAMP listener programmed through its pinned maps (what
//!   `ricochet-control` does with `data_plane = "bpf"`);
//! * AF_XDP: the same daemon's pollers, an authenticated STAMP listener
//!   (HMAC-SHA-256; the XDP program hands these to the AF_XDP socket);
//! * socket: `ricochet-control` (socket data plane) with two stateful STAMP
//!   sessions from its `[[stamp.session]]` configuration, unauthenticated
//!   and authenticated; and a stateless listener of the reflector crate's
//!   `SocketSessionTable` inside the reflector namespace (the control plane
//!   has no listener configuration).
//!
//! For each path the test collects (Follow-Up T3 − in-packet T3), the
//! reflector's own account of how late the T3 it wrote into the packet was,
//! and prints the distribution (p50/p99/min/max). Run it alone with
//! `make stamp-followup` (release build, output shown).
//!
//! Needs root (network namespaces, XDP, bpffs); CI runs as root.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ricochet_protocol::time::TimeFormat;
use ricochet_reflector::bpf::BpfSessionTable;
use ricochet_reflector::session_table::{
    ListenerKind, ListenerSpec, SessionTable, StampSessionSpec,
};
use ricochet_reflector::socket::{SocketSessionTable, TableConfig};
use ricochet_reflector::stamp_engine::CosPolicy;
use ricochet_testkit::lab::{self, workspace_bin, Lab, Side};
use serde_json::Value;
use zeroize::Zeroizing;

const KEY: &[u8; 32] = b"lab-stamp-hmac-key-0123456789abc";
/// Packets per path: 200, or `RICOCHET_STAMP_COUNT` (for a larger sample
/// in `make stamp-followup`).
fn count() -> u32 {
    std::env::var("RICOCHET_STAMP_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| (1..=100_000).contains(&n))
        .unwrap_or(200)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20)); // bounded exit wait
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `ricochet-reflector` on a side's veth and waits (bounded) for its pins.
fn start_reflector(lab: &Lab, side: Side, pins: &Path, extra: &[&str]) -> Daemon {
    let iface = lab.iface(side);
    let mut args = vec![
        "--iface",
        iface.as_str(),
        "--path",
        "xdp",
        "--pin-dir",
        pins.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut d = Daemon(lab.spawn(side, workspace_bin("ricochet-reflector"), &args));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pins.join("sessions").exists() {
        if let Some(status) = d.0.try_wait().unwrap() {
            panic!("ricochet-reflector exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "ricochet-reflector never pinned its maps"
        );
        std::thread::sleep(Duration::from_millis(50)); // polling bpffs, bounded
    }
    d
}

/// Starts `ricochet-control` (socket data plane) in the reflector namespace
/// with two `[[stamp.session]]` entries, and waits (bounded) until both
/// STAMP ports are bound.
fn start_control(lab: &Lab, dir: &Path, key_file: &Path) -> Daemon {
    let cfg = dir.join("control.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen = ["198.18.0.2:862"]
test_ports = "18760-18799"
log_level = "warn"
data_plane = "socket"

[metrics]
listen = "127.0.0.1:9862"

[[stamp.session]]
sender = "198.18.0.1:40862"
local_address = "198.18.0.2"
local_port = 9863
ssid = 7
timestamp_format = "ntp"
micro_session_id = 9

[[stamp.session]]
sender = "198.18.0.1:50862"
local_address = "198.18.0.2"
local_port = 9865
ssid = 4660
timestamp_format = "ntp"

[[stamp.session]]
sender = "198.18.0.1:40863"
local_address = "198.18.0.2"
local_port = 9864
ssid = 8
key_file = "{}"
timestamp_format = "ntp"
"#,
            key_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bin = workspace_bin("ricochet-control");
    let mut d = Daemon(lab.spawn(Side::Reflector, &bin, &["--config", cfg.to_str().unwrap()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ss = lab.run(Side::Reflector, "ss", &["-Hlun"]);
        let text = String::from_utf8_lossy(&ss.stdout);
        if text.contains(":9863 ") && text.contains(":9864 ") {
            return d;
        }
        if let Some(status) = d.0.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = d.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("ricochet-control exited with {status}: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "ricochet-control never bound its STAMP ports"
        );
        std::thread::sleep(Duration::from_millis(50)); // polling ss, bounded
    }
}

/// Runs `f` on a thread inside network namespace `ns` (setns affects only
/// that thread and the threads it spawns).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: `file` is an open network-namespace descriptor that stays
        // open for the call; setns only affects this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

fn listener(local: &str, kind: ListenerKind) -> ListenerSpec {
    ListenerSpec {
        local: local.parse().unwrap(),
        kind,
        dscp: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

/// One `ricochet-ping --stamp --json` run from the sender namespace.
fn ping(lab: &Lab, args: &[&str]) -> Value {
    let bin = workspace_bin("ricochet-ping");
    let mut all = vec!["--stamp", "--json", "-v", "--timeout", "1s"];
    all.extend_from_slice(args);
    let out = lab.run(Side::Sender, bin.to_str().unwrap(), &all);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{all:?}: {e}\nstdout {}\nstderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    json
}

/// What every path must do: every packet answered at its own size, nothing
/// failing a check, every TLV accounted for in every reply.
fn check_run(path: &str, j: &Value, auth: bool) {
    let s = &j["summary"];
    assert_eq!(s["sent"], count(), "{path}: {j}");
    assert_eq!(s["received"], count(), "{path}: {}", j["anomalies"]);
    assert_eq!(s["duplicates"], 0, "{path}");
    for (k, v) in j["anomalies"].as_object().unwrap() {
        assert_eq!(v, 0, "{path}: anomaly {k}");
    }
    assert_eq!(
        j["mode"],
        if auth {
            "authenticated"
        } else {
            "unauthenticated"
        }
    );
    for t in j["tlv_types"].as_array().unwrap() {
        let n = t["recognized"].as_u64().unwrap() + t["unrecognized"].as_u64().unwrap();
        assert_eq!(n, u64::from(count()), "{path}: {t}");
    }
    for p in j["packets"].as_array().unwrap() {
        let t = |k: &str| p[k].as_u64().unwrap();
        // One host clock on both sides: causal order (2 ns NTP rounding).
        assert!(t("t1_ns") <= t("t2_ns") + 2, "{path}: {p}");
        assert!(t("t2_ns") <= t("t3_ns") + 2, "{path}: {p}");
        assert!(t("t3_ns") <= t("t4_ns") + 2, "{path}: {p}");
        assert_eq!(p["reply_len"], j["packet_len"], "{path}: symmetric size");
        // The reflector saw our TTL 255 across one veth (no router).
        assert_eq!(p["sender_ttl"], 255, "{path}");
        assert_eq!(p["reply_ttl"], 255, "{path}: the reflector sends with 255");
    }
}

fn dist(d: &Value) -> String {
    if d["count"] == 0 {
        return "no Follow-Up values (the path does not fill Follow-Up Telemetry)".into();
    }
    format!(
        "n={} p50={} ns p99={} ns min={} ns max={} ns",
        d["count"], d["p50_ns"], d["p99_ns"], d["min_ns"], d["max_ns"]
    )
}

/// The lab with all three data paths serving STAMP listeners:
/// unauthenticated on the socket path (9862) and XDP (862), authenticated
/// on AF_XDP (8620). Field order is drop order: the listeners and daemons
/// go before the pins and the lab.
struct Paths {
    _control: Daemon,
    socket_table: SocketSessionTable,
    _bpf: BpfSessionTable,
    _xdp: Daemon,
    _pass: Daemon,
    _pins_r: Pins,
    _pins_s: Pins,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
    lab: Lab,
}

const SOCKET: &str = "198.18.0.2:9862";
/// Stateful STAMP sessions provisioned in `ricochet-control` (socket data
/// plane): unauthenticated (SSID 7) and authenticated (SSID 8), each from
/// its own sender port.
const SOCKET_STATEFUL: &str = "198.18.0.2:9863";
const SOCKET_STATEFUL_AUTH: &str = "198.18.0.2:9864";
/// A stateful session for stamp-suite's sender (port 50862, SSID 4660).
const SOCKET_STATEFUL_PEER: &str = "198.18.0.2:9865";
const XDP: &str = "198.18.0.2:862";
const AF_XDP: &str = "198.18.0.2:8620";
/// Stateful STAMP sessions on the AF_XDP path.
const AF_XDP_STATEFUL: &str = "198.18.0.2:8621";
const AF_XDP_STATEFUL_AUTH: &str = "198.18.0.2:8622";
/// A stateful AF_XDP session for stamp-suite's sender (port 50862, SSID 4660).
const AF_XDP_STATEFUL_PEER: &str = "198.18.0.2:8623";

fn paths(tag: &str) -> Paths {
    let lab = Lab::up(tag);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("stamp.key");
    std::fs::write(
        &key_file,
        KEY.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )
    .unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pins_r = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        lab.netns(Side::Reflector)
    )));
    let pins_s = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        lab.netns(Side::Sender)
    )));
    // XDP_TX frames on a veth reach the peer only if it runs XDP too.
    let pass = start_reflector(&lab, Side::Sender, &pins_s.0, &["--no-pollers"]);
    let xdp = start_reflector(&lab, Side::Reflector, &pins_r.0, &[]);
    let mut bpf = BpfSessionTable::open(&pins_r.0, &dir.path().join("sessions")).unwrap();
    bpf.add_listener(listener(XDP, ListenerKind::Unauthenticated))
        .unwrap();
    bpf.add_listener(listener(
        AF_XDP,
        ListenerKind::StampAuthenticated {
            key: Zeroizing::new(*KEY),
        },
    ))
    .unwrap();
    // Stateful sessions on the AF_XDP pollers (Follow-Up from the transmit
    // completions), programmed through the pins as ricochet-control's
    // `[[stamp.session]]` does with data_plane = "bpf".
    for (local, sender, ssid, key) in [
        (AF_XDP_STATEFUL, "198.18.0.1:40864", 9, None),
        (
            AF_XDP_STATEFUL_AUTH,
            "198.18.0.1:40865",
            10,
            Some(KEY.to_vec()),
        ),
        (AF_XDP_STATEFUL_PEER, "198.18.0.1:50862", 4660, None),
    ] {
        bpf.add_stamp_session(StampSessionSpec {
            sender: sender.parse().unwrap(),
            local: local.parse().unwrap(),
            ssid,
            key: key.map(Zeroizing::new),
            timestamp_format: TimeFormat::Ntp,
            dscp: None,
            cos_policy: CosPolicy::ALLOW_ALL,
            micro_session_id: None,
            rate_limit_pps: 0,
            rate_burst: 0,
        })
        .unwrap();
    }
    // The socket data plane inside the reflector namespace; the XDP program
    // passes this port (no listener or session there) to the stack.
    let socket_table = in_netns(&lab.netns(Side::Reflector), || {
        let mut t = SocketSessionTable::spawn(&TableConfig::default()).unwrap();
        t.add_listener(listener(SOCKET, ListenerKind::Unauthenticated))
            .unwrap();
        t
    });
    let control = start_control(&lab, dir.path(), &key_file);
    Paths {
        _control: control,
        socket_table,
        _bpf: bpf,
        _xdp: xdp,
        _pass: pass,
        _pins_r: pins_r,
        _pins_s: pins_s,
        key_file,
        _dir: dir,
        lab,
    }
}

#[test]
fn stamp_on_the_socket_xdp_and_af_xdp_paths_with_tlvs() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let p = paths("st");
    let lab = &p.lab;
    let count_arg = count().to_string();
    let key = p.key_file.to_str().unwrap();
    let tlvs = [
        "--tlv",
        "follow-up",
        "--tlv",
        "timestamp-info",
        "--tlv",
        "cos=AF11",
        "--tlv",
        "extra-padding=16",
    ];
    let mut table = Vec::new();
    for (path, target, auth) in [
        ("socket", SOCKET, false),
        (
            "socket, stateful session (ricochet-control)",
            SOCKET_STATEFUL,
            false,
        ),
        (
            "socket, stateful authenticated (ricochet-control)",
            SOCKET_STATEFUL_AUTH,
            true,
        ),
        ("XDP", XDP, false),
        ("AF_XDP", AF_XDP, true),
        ("AF_XDP, stateful session", AF_XDP_STATEFUL, false),
        ("AF_XDP, stateful authenticated", AF_XDP_STATEFUL_AUTH, true),
    ] {
        // (SSID, sender port) of the provisioned stateful sessions.
        let (ssid, sport) = match target {
            SOCKET_STATEFUL => ("7", Some("40862")),
            SOCKET_STATEFUL_AUTH => ("8", Some("40863")),
            AF_XDP_STATEFUL => ("9", Some("40864")),
            AF_XDP_STATEFUL_AUTH => ("10", Some("40865")),
            _ => ("7", None),
        };
        let mut args = vec!["-c", count_arg.as_str(), "-i", "1ms", "--ssid", ssid];
        args.extend_from_slice(&tlvs);
        if let Some(p) = sport {
            args.extend(["--sender-port", p]);
        }
        if auth {
            args.extend(["--stamp-key-file", key]);
        }
        args.push(target);
        let j = ping(lab, &args);
        check_run(path, &j, auth);
        let fu = &j["follow_up"];
        let n = |k: &str| fu[k].as_u64().unwrap();
        if sport.is_some() {
            assert_eq!(n("replies"), u64::from(count()), "{path}: {fu}");
            // Stateful: every Follow-Up names the previous reply; a stamp
            // where the path delivered it before the next request came.
            assert_eq!(j["reflector_mode"], "stateful", "{path}");
            if target.ends_with(":8621") || target.ends_with(":8622") {
                // AF_XDP always has transmit completions (copy mode: the
                // kernel's stamp when the frame is freed).
                assert!(n("paired") > 0, "{path}: {fu}");
            }
            assert_eq!(n("not_previous"), 0, "{path}: {fu}");
            assert_eq!(
                n("zeroed") + n("unstamped") + n("paired"),
                n("replies"),
                "{path}: {fu}"
            );
        } else if n("replies") > 0 {
            // Stateless listeners zero it (RFC 8972 §4.7); the XDP path
            // returns the TLVs unprocessed, U = 1 as sent (replies = 0).
            assert_eq!(n("zeroed"), n("replies"), "{path}: {fu}");
        }
        // A Follow-Up value is never earlier than the T3 it follows up: the
        // packet is sent after T3 is written into it.
        if fu["paired"].as_u64().unwrap() > 0 {
            assert!(
                fu["followup_minus_t3"]["min_ns"].as_i64().unwrap() >= 0,
                "{path}: {fu}"
            );
        }
        table.push(format!(
            "{path}: Follow-Up replies {} (zeroed {}, no timestamp {}, paired {}, modes {}); Follow-Up T3 - in-packet T3: {}; returned U=1: [{}]; timestamp info {}",
            fu["replies"],
            fu["zeroed"],
            fu["unstamped"],
            fu["paired"],
            fu["modes"],
            dist(&fu["followup_minus_t3"]),
            j["tlv_types"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["unrecognized"].as_u64() > Some(0))
                .map(|t| t["name"].as_str().unwrap())
                .collect::<Vec<_>>()
                .join(", "),
            j["timestamp_info"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| format!("{} ×{}", t["meaning"].as_str().unwrap(), t["replies"]))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    // The replies came from the data planes named: the XDP and AF_XDP ports
    // have no socket in the reflector namespace.
    let ss = lab.run(Side::Reflector, "ss", &["-Hlun"]);
    let listening = String::from_utf8_lossy(&ss.stdout);
    assert!(!listening.contains(":862 "), "{listening}");
    assert!(!listening.contains(":8620 "), "{listening}");
    assert!(listening.contains(":9862 "), "{listening}");
    assert!(listening.contains(":9863 "), "{listening}");
    let c = p
        .socket_table
        .listener_counters(SOCKET.parse().unwrap())
        .unwrap();
    assert_eq!(c.reflected, u64::from(count()));
    println!(
        "(Follow-Up T3 − in-packet T3) per path, {} packets at 1 ms, lab veth:",
        count()
    );
    for l in &table {
        println!("  {l}");
    }
}

/// Runs a peer program in a namespace, bounded, and returns its output.
fn peer(lab: &Lab, side: Side, argv: &[String]) -> String {
    let mut c = lab.command(side, "timeout");
    c.arg("60").args(argv);
    let out = c.output().expect("run peer");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{argv:?}: {text}");
    text
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no '{name}' in:\n{text}"))
}

/// Interop with public peers (docs/interop-stamp.md; not in `make test`):
/// stamp-suite 0.8.0's sender against every path, twampy 1.3.2's
/// TWAMP-Light sender against the unauthenticated listeners, and
/// `ricochet-ping --stamp` against stamp-suite's reflector. Needs
/// `STAMP_SUITE` (the binary) and `TWAMPY` (a command, e.g.
/// `python3 -m twampy` with PYTHONPATH set), built outside this repository.
#[test]
#[ignore = "needs the peers: STAMP_SUITE=... TWAMPY=... (docs/interop-stamp.md)"]
fn interop_with_stamp_suite_and_twampy() {
    let ss = std::env::var("STAMP_SUITE").expect("STAMP_SUITE=path of the stamp-suite binary");
    let twampy: Vec<String> = std::env::var("TWAMPY")
        .expect("TWAMPY=command running twampy")
        .split_whitespace()
        .map(String::from)
        .collect();
    let p = paths("si");
    let lab = &p.lab;
    let key_hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    // Every exchange runs and is printed; the failures are listed at the end.
    let mut failures: Vec<String> = Vec::new();

    // stamp-suite sender -> each Ricochet path.
    for (path, target, auth) in [
        ("socket", SOCKET, false),
        (
            "socket, stateful session (ricochet-control)",
            SOCKET_STATEFUL_PEER,
            false,
        ),
        ("XDP", XDP, false),
        ("AF_XDP", AF_XDP, true),
        ("AF_XDP, stateful session", AF_XDP_STATEFUL_PEER, false),
    ] {
        let (ip, port) = target.split_once(':').unwrap();
        let mut argv = s(&[
            &ss,
            "-r",
            ip,
            "-p",
            port,
            "-S",
            "198.18.0.1",
            "-o",
            "50862",
            "-c",
            "20",
            "-d",
            "10",
            "-L",
            "2",
            "-R",
            "--ssid",
            "4660",
            "--timestamp-info",
            "--follow-up-telemetry",
        ]);
        if auth {
            argv.extend(s(&["-A", "A", "--hmac-key", &key_hex]));
        }
        let out = peer(lab, Side::Sender, &argv);
        println!("== stamp-suite sender -> Ricochet {path} ({target})\n{out}");
        let got = field(&out, "Packets received:");
        if got != 20 {
            failures.push(format!("stamp-suite -> {path}: {got} of 20 replies"));
        }
    }
    // twampy TWAMP-Light sender -> the unauthenticated listeners. Its
    // 14-octet default packet would need a longer reply (never sent, no
    // amplification); 27 octets of padding make the 41-octet TWAMP packet.
    for (path, target) in [("socket", SOCKET), ("XDP", XDP)] {
        let mut argv = twampy.clone();
        argv.extend(s(&[
            "sender",
            target,
            "198.18.0.1:20000",
            "-c",
            "10",
            "-i",
            "100",
            "--padding",
            "27",
        ]));
        let out = peer(lab, Side::Sender, &argv);
        println!("== twampy sender -> Ricochet {path} ({target})\n{out}");
        match out
            .lines()
            .find(|l| l.trim_start().starts_with("Roundtrip:"))
        {
            Some(l) if l.trim_end().ends_with(" 0.0%") => {}
            Some(l) => failures.push(format!("twampy -> {path}: {}", l.trim())),
            None => failures.push(format!("twampy -> {path}: no replies at all")),
        }
    }
    // ricochet-ping --stamp -> stamp-suite reflector (stateful), with TLVs.
    let mut refl = Daemon(lab.spawn(
        Side::Reflector,
        "timeout",
        &[
            "120",
            &ss,
            "-i",
            "-S",
            "198.18.0.2",
            "-o",
            "18620",
            "--stateful-reflector",
        ],
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss_out = lab.run(Side::Reflector, "ss", &["-Hlun"]);
        if String::from_utf8_lossy(&ss_out.stdout).contains(":18620 ") {
            break;
        }
        assert!(
            refl.0.try_wait().unwrap().is_none(),
            "stamp-suite reflector exited"
        );
        assert!(
            Instant::now() < deadline,
            "stamp-suite reflector never listened"
        );
        std::thread::sleep(Duration::from_millis(50)); // polling ss, bounded
    }
    let j = ping(
        lab,
        &[
            "-c",
            "100",
            "-i",
            "1ms",
            "--ssid",
            "4660",
            "--tlv",
            "follow-up",
            "--tlv",
            "timestamp-info",
            "--tlv",
            "direct-measurement",
            "--tlv",
            "cos=AF11",
            "198.18.0.2:18620",
        ],
    );
    if j["summary"]["received"] != 100 {
        failures.push(format!(
            "ricochet-ping -> stamp-suite: {} of 100 replies",
            j["summary"]["received"]
        ));
    }
    println!(
        "== ricochet-ping --stamp -> stamp-suite reflector: follow-up {} timestamp info {}",
        j["follow_up"], j["timestamp_info"]
    );
    assert!(failures.is_empty(), "interop failures: {failures:#?}");
}
