//! End to end in the namespace lab: the real `ricochet-control` binary with
//! its socket data plane in the reflector namespace, the real `ricochet-ping`
//! in the sender namespace, every security mode over IPv4 and IPv6, several
//! sessions per connection, and the refusals a user meets.
//!
//! Needs root (network namespaces); CI runs as root.

#[path = "support/lab_control.rs"]
mod lab_control;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use lab_control::{start_control_config, write_private, Daemon};
use ricochet_testkit::lab::{self, workspace_bin, Lab, Side};
use serde_json::Value;

const SECRET_HEX: &str = "6c61622d7365637265742d666f722d746573747321";

/// Starts ricochet-control in the reflector namespace and waits (bounded)
/// until it accepts TWAMP-Control connections.
fn start_control(lab: &Lab, dir: &Path, ports: &str) -> Daemon {
    start_control_with(lab, dir, ports, "data_plane = \"socket\"")
}

fn start_control_with(lab: &Lab, dir: &Path, ports: &str, data_plane: &str) -> Daemon {
    let keys = dir.join("keys.pfs");
    write_private(&keys, &format!("lab\t{SECRET_HEX}\n"));
    start_control_config(
        lab,
        dir,
        &format!(
            r#"listen = ["[::]:862", "0.0.0.0:862"]
v6only = true
test_ports = "{ports}"
log_level = "warn"
{data_plane}

[security]
modes = ["unauthenticated", "authenticated", "encrypted", "mixed", "individual-session-control", "dscp-ecn"]
key_file = "{}"

[metrics]
listen = "127.0.0.1:9862"
"#,
            keys.display()
        ),
    )
}

/// Scrapes the control daemon's metrics endpoint inside the reflector namespace.
fn metrics(lab: &Lab) -> String {
    let out = lab.run(
        Side::Reflector,
        "bash",
        &[
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9862; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one metric line (`name{labels} value`), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn ping(lab: &Lab, dir: &Path, args: &[&str]) -> (Output, Option<Value>) {
    let bin = workspace_bin("ricochet-ping");
    let keys = dir.join("keys.pfs");
    let mut all: Vec<&str> = vec![
        "-u",
        "lab",
        "-k",
        keys.to_str().unwrap(),
        "--json",
        "--timeout",
        "1s",
    ];
    all.extend_from_slice(args);
    let out = lab
        .command(Side::Sender, &bin)
        .args(&all)
        .output()
        .expect("ricochet-ping runs");
    let json = serde_json::from_slice(&out.stdout).ok();
    (out, json)
}

fn check_all_reflected(
    what: &str,
    out: &Output,
    json: &Option<Value>,
    count: u64,
    sessions: usize,
) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json.as_ref().unwrap_or_else(|| panic!("{what}: no JSON"));
    let s = j["sessions"].as_array().unwrap();
    assert_eq!(s.len(), sessions, "{what}");
    for sess in s {
        let sum = &sess["summary"];
        assert_eq!(sum["sent"].as_u64(), Some(count), "{what}");
        assert_eq!(sum["received"].as_u64(), Some(count), "{what}: {sum}");
        assert_eq!(sum["duplicates"].as_u64(), Some(0), "{what}");
        // The residence time is the reflector's own T3 − T2: positive, and
        // far below the round trip's bound here.
        assert!(
            sum["residence"]["min_ns"].as_i64().unwrap() >= 0,
            "{what}: {sum}"
        );
    }
}

#[test]
fn every_mode_over_ipv4_and_ipv6_through_the_real_binaries() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::up("e2");
    let dir = tempfile::tempdir().unwrap();
    let _control = start_control(&lab, dir.path(), "18760-18999");
    for host in ["198.18.0.2", "[2001:2::2]"] {
        for mode in ["open", "auth", "enc", "mixed"] {
            let what = format!("{mode} {host}");
            let (out, json) = ping(
                &lab,
                dir.path(),
                &["-c", "50", "-i", "1ms", "-A", mode, "--sessions", "2", host],
            );
            check_all_reflected(&what, &out, &json, 50, 2);
            let j = json.unwrap();
            let expect = match mode {
                "open" => "unauthenticated",
                "auth" => "authenticated",
                "enc" => "encrypted",
                _ => "mixed",
            };
            assert_eq!(j["mode"].as_str(), Some(expect), "{what}");
        }
    }
    // The control plane's metrics show what the data plane reflected, by
    // mode (fed by the periodic sweep: poll, bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&lab);
        let enc = metric(
            &m,
            "ricochet_control_packets_reflected_total{mode=\"encrypted\"}",
        );
        let open = metric(
            &m,
            "ricochet_control_packets_reflected_total{mode=\"unauthenticated\"}",
        );
        if enc >= 200.0 && open >= 200.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reflected packets never reached the metrics:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100)); // polling a scrape, bounded
    }
    // Individual session control, DSCP on the reflections, RFC 7750 report.
    let (out, json) = ping(
        &lab,
        dir.path(),
        &[
            "-c",
            "20",
            "-i",
            "1ms",
            "-A",
            "enc",
            "--isc",
            "--sessions",
            "3",
            "-D",
            "EF",
            "--dscp-ecn",
            "198.18.0.2",
        ],
    );
    check_all_reflected("isc+dscp", &out, &json, 20, 3);
    for s in json.unwrap()["sessions"].as_array().unwrap() {
        let tos = s["backward_tos"].as_array().unwrap();
        assert!(!tos.is_empty());
        assert!(
            tos.iter().all(|t| t[0].as_u64() == Some(46 << 2)),
            "reply DSCP EF: {tos:?}"
        );
        let fwd = s["forward_dscp_ecn"].as_array().unwrap();
        assert!(
            fwd.iter().all(|t| t[0].as_u64().unwrap() >> 2 == 46),
            "reported DSCP: {fwd:?}"
        );
    }
}

#[test]
fn refusals_reach_the_user_with_their_meaning() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::up("e3");
    let dir = tempfile::tempdir().unwrap();
    let _control = start_control(&lab, dir.path(), "18760-18769");
    // Wrong secret: Server-Start Accept 1.
    let wrong = dir.path().join("wrong.pfs");
    write_private(&wrong, "lab\t00112233445566778899\n");
    let bin = workspace_bin("ricochet-ping");
    let out = lab
        .command(Side::Sender, &bin)
        .args([
            "-u",
            "lab",
            "-k",
            wrong.to_str().unwrap(),
            "-A",
            "auth",
            "-c",
            "5",
            "198.18.0.2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("accept 1") || err.contains("failure"), "{err}");
    // The port range holds 10 ports: the 11th session is refused with Accept 5
    // while the others run.
    let (out, json) = ping(
        &lab,
        dir.path(),
        &[
            "-c",
            "5",
            "-i",
            "1ms",
            "-A",
            "open",
            "--sessions",
            "11",
            "198.18.0.2",
        ],
    );
    assert!(!out.status.success(), "a refused session is a failure");
    let j = json.expect("a report even with a refusal");
    let refused = j["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{j}");
    assert_eq!(refused[0]["accept"].as_u64(), Some(5));
    assert_eq!(j["sessions"].as_array().unwrap().len(), 10);
    // Stopped sessions keep their ports for their Timeout (RFC 5357 §3.8:
    // late packets are still reflected), then the ports come back: a new
    // run succeeds within a bounded number of attempts.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (out, json) = ping(
            &lab,
            dir.path(),
            &["-c", "5", "-i", "1ms", "-A", "open", "198.18.0.2"],
        );
        if out.status.success() {
            check_all_reflected("after refusal", &out, &json, 5, 1);
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Accept 5"),
            "only the port range may refuse: {err}"
        );
        assert!(Instant::now() < deadline, "ports never came back: {err}");
    }
}

/// Starts `ricochet-reflector` on a side's veth with its own pin directory.
fn start_reflector(lab: &Lab, side: Side, pins: &Path, extra: &[&str]) -> Daemon {
    let bin = workspace_bin("ricochet-reflector");
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
    let child = lab.spawn(side, &bin, &args);
    let mut d = Daemon { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    // Pinned maps exist before the program is attached: wait for both
    // (packets sent in between would go unreflected on a loaded machine).
    let attached = || {
        let out = lab.run(side, "ip", &["-d", "link", "show", "dev", &iface]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    while !pins.join("sessions").exists() || !attached() {
        if let Some(status) = d.child.try_wait().unwrap() {
            panic!("ricochet-reflector exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "ricochet-reflector never pinned its maps and attached"
        );
        std::thread::sleep(Duration::from_millis(50)); // polling bpffs, bounded
    }
    d
}

struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_mode_through_the_xdp_and_af_xdp_paths() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::up("e4");
    let dir = tempfile::tempdir().unwrap();
    let pins_r = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        lab.netns(Side::Reflector)
    )));
    let pins_s = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        lab.netns(Side::Sender)
    )));
    // XDP_TX frames on a veth are only delivered to a peer that has an XDP
    // program too: a second instance on the sender side passes everything.
    let _pass = start_reflector(&lab, Side::Sender, &pins_s.0, &["--no-pollers"]);
    let _xdp = start_reflector(&lab, Side::Reflector, &pins_r.0, &[]);
    let bpf = format!(
        "data_plane = \"bpf\"\n[bpf]\npin_dir = \"{}\"\nregistry = \"{}/sessions\"\n",
        pins_r.0.display(),
        dir.path().display()
    );
    // The [bpf] table ends where the template's [security] table starts.
    let _control = start_control_with(&lab, dir.path(), "18760-18999", &bpf);
    for mode in ["open", "mixed", "auth", "enc"] {
        let (out, json) = ping(
            &lab,
            dir.path(),
            &["-c", "50", "-i", "1ms", "-A", mode, "198.18.0.2"],
        );
        check_all_reflected(&format!("{mode} over XDP/AF_XDP"), &out, &json, 50, 1);
    }
    // The reflections really came from the XDP program and the pollers:
    // nothing listens on those UDP ports in the reflector's namespace.
    let ss = lab.run(Side::Reflector, "ss", &["-Hlun"]);
    let listening = String::from_utf8_lossy(&ss.stdout);
    assert!(
        !listening.contains(":1876"),
        "a socket serves the test ports: {listening}"
    );
}
