//! ESP-protected TWAMP with every part real: strongSwan's charon
//! (kernel-libipsec, this kernel has no ESP) in the sender namespace
//! negotiates an IKE SA and a CHILD_SA with `ricochet-control`'s in-process
//! IKEv2 responder; the control daemon (`data_plane = "bpf"`) binds the
//! CHILD_SA to the TWAMP session `ricochet-ping` starts and installs it in
//! the pinned maps of `ricochet-reflector --path afxdp`. The test packets
//! are routed (policy rule on the UDP test ports only) into charon's TUN
//! device, travel as ESP-in-UDP, are decrypted, reflected and encrypted by
//! the AF_XDP pollers, and come back through charon: every packet is
//! reflected, charon's CHILD_SA counters show each went over ESP both ways,
//! and the control daemon counts the CHILD_SA installed and, after the
//! session, removed.
//!
//! TWAMP-Control (TCP 862) and IKE stay outside the tunnel: the responder
//! narrows CHILD_SA selectors to UDP to the test ports.
//!
//! charon gets its own mount namespace with a private /run and its own
//! strongswan.conf and vici socket; it and every daemon are killed by PID
//! when the test ends (also on failure). Needs root and the strongSwan
//! packages `scripts/setup.sh` installs.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use ricochet_testkit::lab::{self, workspace_bin, Lab, Side};
use serde_json::Value;

const CHARON: &str = "/usr/lib/ipsec/charon";
const PSK: &str = "lab-only-psk-ricochet-esp-link";
const TEST_PORTS: &str = "18760-18999";
const COUNT: u64 = 50;
const REKEY_COUNT: u64 = 400;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process whose output is collected at the end; killed on drop if the
/// test fails first.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_private(path: &Path, text: &str) -> PathBuf {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_owned()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ricochet-reflector` on a side's veth with its own pin directory; waits
/// (bounded) until its maps are pinned and the program attached.
fn start_reflector(lab: &Lab, side: Side, pins: &Path, extra: &[&str]) -> Killed {
    let bin = workspace_bin("ricochet-reflector");
    let iface = lab.iface(side);
    let mut args = vec![
        "--iface",
        iface.as_str(),
        "--pin-dir",
        pins.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut d = Killed(lab.spawn(side, &bin, &args));
    let deadline = Instant::now() + Duration::from_secs(30);
    let attached = || {
        let out = lab.run(side, "ip", &["-d", "link", "show", "dev", &iface]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    while !pins.join("sessions").exists() || !attached() {
        if let Some(status) = d.0.try_wait().unwrap() {
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

/// ricochet-control on the bpf data plane with the IKEv2 responder on
/// 198.18.0.2; waits (bounded) until it accepts TWAMP-Control.
fn start_control(lab: &Lab, dir: &Path, pins: &Path) -> Killed {
    let psks = write_private(&dir.join("ike.psk"), &format!("s.esp.test {PSK}\n"));
    let cfg = write_private(
        &dir.join("control.toml"),
        &format!(
            r#"listen = ["0.0.0.0:862"]
test_ports = "{TEST_PORTS}"
log_level = "info"
data_plane = "bpf"

[bpf]
pin_dir = "{}"
registry = "{}/sessions"

[security]
modes = ["unauthenticated", "authenticated", "encrypted", "mixed"]

[metrics]
listen = "127.0.0.1:9863"

[ikev2.responder]
listen = ["198.18.0.2"]
identity = "r.esp.test"
psk_file = "{}"
"#,
            pins.display(),
            dir.display(),
            psks.display()
        ),
    );
    let bin = workspace_bin("ricochet-control");
    let log = std::fs::File::create(dir.join("control.log")).unwrap();
    let mut d = Killed(
        lab.command(Side::Reflector, &bin)
            .args(["--config", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("ricochet-control starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = lab.run(
            Side::Sender,
            "bash",
            &["-c", "exec 3<>/dev/tcp/198.18.0.2/862"],
        );
        if probe.status.success() {
            return d;
        }
        if let Some(status) = d.0.try_wait().unwrap() {
            panic!(
                "ricochet-control exited with {status}: {}",
                std::fs::read_to_string(dir.join("control.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "ricochet-control never listened");
        std::thread::sleep(Duration::from_millis(50)); // polling a port, bounded
    }
}

/// charon with kernel-libipsec in the sender namespace: connection `c` to
/// 198.18.0.2 with CHILD_SA `t` for UDP from 198.18.0.1 to the test ports.
fn start_charon(lab: &Lab, dir: &Path) -> Killed {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let conf = format!(
        "charon {{\n  load_modular = no\n  load = random nonce openssl aes sha1 sha2 hmac gcm curve25519 kdf pem pkcs1 pubkey x509 kernel-libipsec kernel-netlink socket-default vici updown\n  install_virtual_ip = no\n  install_routes = no\n  retransmit_tries = 3\n  plugins {{\n    vici {{ socket = unix://{d}/charon.vici }}\n    kernel-libipsec {{ allow_peer_ts = yes }}\n  }}\n  filelog {{\n    lab {{\n      path = {d}/charon.log\n      default = 1\n      flush_line = yes\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("strongswan.conf"), conf).unwrap();
    let (first, last) = TEST_PORTS.split_once('-').unwrap();
    write_private(
        &dir.join("swanctl.conf"),
        &format!(
            "connections {{\n  c {{\n    version = 2\n    local_addrs = 198.18.0.1\n    remote_addrs = 198.18.0.2\n    proposals = aes128gcm16-prfsha256-x25519\n    rekey_time = 0\n    dpd_delay = 0\n    mobike = no\n    local {{\n      auth = psk\n      id = s.esp.test\n    }}\n    remote {{\n      auth = psk\n      id = r.esp.test\n    }}\n    children {{\n      t {{\n        mode = tunnel\n        local_ts = 198.18.0.1/32[udp]\n        remote_ts = 198.18.0.2/32[udp/{first}-{last}]\n        esp_proposals = aes128gcm16\n        rekey_time = 0\n      }}\n    }}\n  }}\n}}\nsecrets {{\n  ike-1 {{\n    id-1 = s.esp.test\n    id-2 = r.esp.test\n    secret = \"{PSK}\"\n  }}\n}}\n"
        ),
    );
    let log = std::fs::File::create(dir.join("charon.out")).unwrap();
    let mut c = Killed(
        lab.command(Side::Sender, "unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &format!("mount --bind {d}/run /run && exec {CHARON}"),
            ])
            .env("STRONGSWAN_CONF", dir.join("strongswan.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("charon starts"),
    );
    let sock = dir.join("charon.vici");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        let exited = c.0.try_wait().ok().flatten().is_some();
        assert!(
            Instant::now() < deadline && !exited,
            "charon did not open its vici socket: {}",
            std::fs::read_to_string(dir.join("charon.out")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a file, bounded
    }
    let out = swanctl(
        lab,
        dir,
        &["--load-all", "--file", &format!("{d}/swanctl.conf")],
    );
    assert!(out.status.success(), "swanctl --load-all: {}", text(&out));
    c
}

fn swanctl(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    let uri = format!("unix://{}/charon.vici", dir.display());
    lab.command(Side::Sender, "swanctl")
        .args(args)
        .args(["--uri", &uri])
        .stdin(Stdio::null())
        .output()
        .expect("swanctl runs")
}

/// Scrapes the control daemon's metrics inside the reflector namespace.
fn metric(lab: &Lab, series: &str) -> f64 {
    let out = lab.run(
        Side::Reflector,
        "bash",
        &[
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9863; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// (bytes, packets) of the CHILD_SA's `in` and `out` lines in
/// `swanctl --list-sas`.
fn child_counters(list: &str) -> ((u64, u64), (u64, u64)) {
    let find = |dir: &str| {
        list.lines()
            .map(str::trim)
            .find(|l| l.starts_with(dir))
            .and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let bytes = f.iter().position(|w| w.starts_with("bytes"))?;
                let pkts = f.iter().position(|w| w.starts_with("packets"))?;
                Some((f[bytes - 1].parse().ok()?, f[pkts - 1].parse().ok()?))
            })
            .unwrap_or_else(|| panic!("no `{dir}` line in {list}"))
    };
    (find("in "), find("out "))
}

#[test]
fn charon_child_sa_from_ricochet_controls_responder_carries_the_twamp_session() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    if std::env::var_os("RICOCHET_SKIP_BPF_TESTS").is_some() {
        eprintln!("skipped: RICOCHET_SKIP_BPF_TESTS");
        return;
    }
    assert!(
        Path::new(CHARON).exists(),
        "{CHARON} missing: run scripts/setup.sh (installs strongswan-charon)"
    );
    let lab = Lab::up("espc");
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let pins_r = Pins(PathBuf::from(format!("/sys/fs/bpf/ricochet-espc-r-{pid}")));
    let pins_s = Pins(PathBuf::from(format!("/sys/fs/bpf/ricochet-espc-s-{pid}")));
    // veth checksum offload would leave the inner UDP checksums to a NIC
    // that never computes them.
    let out = lab.run(
        Side::Sender,
        "ethtool",
        &["-K", &lab.iface(Side::Sender), "tx", "off"],
    );
    assert!(out.status.success(), "ethtool tx off: {}", text(&out));
    // Frames the pollers send on a veth are delivered only to a peer with
    // an XDP program: an instance without pollers passes everything.
    let _pass = start_reflector(
        &lab,
        Side::Sender,
        &pins_s.0,
        &["--path", "xdp", "--no-pollers"],
    );
    let _xdp = start_reflector(&lab, Side::Reflector, &pins_r.0, &["--path", "afxdp"]);
    let _control = start_control(&lab, dir.path(), &pins_r.0);
    let _charon = start_charon(&lab, dir.path());

    let out = swanctl(
        &lab,
        dir.path(),
        &["--initiate", "--child", "t", "--timeout", "15"],
    );
    assert!(
        out.status.success(),
        "charon → ricochet-control: {}\ncontrol log:\n{}",
        text(&out),
        std::fs::read_to_string(dir.path().join("control.log")).unwrap_or_default()
    );
    // Only UDP to the test ports goes into charon's TUN device
    // (kernel-libipsec routes every packet to the peer through it via
    // table 220 even with install_routes = no; that rule goes).
    for cmd in [
        vec!["rule", "del", "priority", "220"],
        vec![
            "route",
            "add",
            "198.18.0.2/32",
            "dev",
            "ipsec0",
            "src",
            "198.18.0.1",
            "table",
            "77",
        ],
        vec![
            "rule",
            "add",
            "to",
            "198.18.0.2/32",
            "ipproto",
            "udp",
            "dport",
            TEST_PORTS,
            "lookup",
            "77",
            "priority",
            "77",
        ],
    ] {
        let out = lab.run(Side::Sender, "ip", &cmd);
        assert!(out.status.success(), "ip {cmd:?}: {}", text(&out));
    }
    for knob in ["all", "ipsec0"] {
        let out = lab.run(
            Side::Sender,
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{knob}.rp_filter=0")],
        );
        assert!(out.status.success(), "rp_filter: {}", text(&out));
    }

    let diag = || {
        let mut d = String::new();
        for args in [
            vec!["rule"],
            vec!["route", "show", "table", "all"],
            vec![
                "route",
                "get",
                "198.18.0.2",
                "ipproto",
                "tcp",
                "dport",
                "862",
            ],
            vec![
                "route",
                "get",
                "198.18.0.2",
                "ipproto",
                "udp",
                "dport",
                "18800",
            ],
            vec!["-s", "link"],
        ] {
            d.push_str(&text(&lab.run(Side::Sender, "ip", &args)));
        }
        d
    };
    let out = lab
        .command(Side::Sender, workspace_bin("ricochet-ping"))
        .args(["--json", "--timeout", "2s", "-c", &COUNT.to_string()])
        .args(["-i", "2ms", "-A", "open", "198.18.0.2"])
        .output()
        .expect("ricochet-ping runs");
    let control_log =
        || std::fs::read_to_string(dir.path().join("control.log")).unwrap_or_default();
    let json: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    let list = text(&swanctl(&lab, dir.path(), &["--list-sas"]));
    assert!(
        out.status.success(),
        "{}\nSAs:\n{list}\ncontrol log:\n{}\nsender routing:\n{}",
        text(&out),
        control_log(),
        diag()
    );
    let j = json.expect("JSON report");
    let sum = &j["sessions"][0]["summary"];
    assert_eq!(sum["sent"].as_u64(), Some(COUNT), "{sum}");
    assert_eq!(
        sum["received"].as_u64(),
        Some(COUNT),
        "{sum}\nSAs:\n{list}\ncontrol log:\n{}",
        control_log()
    );
    // charon sealed every request and opened every reply (plus nothing
    // else: the selectors hold only the test traffic).
    let ((_, pkts_in), (_, pkts_out)) = child_counters(&list);
    assert_eq!((pkts_in, pkts_out), (COUNT, COUNT), "{list}");
    assert_eq!(
        metric(
            &lab,
            "ricochet_control_esp_sa_events_total{event=\"installed\"}"
        ),
        1.0,
        "{}",
        control_log()
    );
    // Nothing listens on the test ports: the pollers reflected.
    let ss = lab.run(Side::Reflector, "ss", &["-Hlun"]);
    assert!(!String::from_utf8_lossy(&ss.stdout).contains(":187"));

    // The session ends (Stop-Sessions, then its grace): its SA leaves the
    // data plane; the CHILD_SA itself stays up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &lab,
        "ricochet_control_esp_sa_events_total{event=\"removed\"}",
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the SA was never removed: {}",
            control_log()
        );
        std::thread::sleep(Duration::from_millis(100)); // polling a metric, bounded
    }

    // Rekey during a running session: the next session binds the same
    // CHILD_SA; charon rekeys it while ricochet-ping sends; the new
    // CHILD_SA joins the running session (a third install) before the
    // old one's Delete removes it, and no request is lost.
    let installed = || {
        metric(
            &lab,
            "ricochet_control_esp_sa_events_total{event=\"installed\"}",
        )
    };
    let ping = lab
        .command(Side::Sender, workspace_bin("ricochet-ping"))
        .args(["--json", "--timeout", "2s", "-c", &REKEY_COUNT.to_string()])
        .args(["-i", "5ms", "-A", "open", "198.18.0.2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ricochet-ping runs");
    let mut ping = Running(Some(ping));
    let deadline = Instant::now() + Duration::from_secs(10);
    while installed() < 2.0 {
        assert!(
            Instant::now() < deadline,
            "second session never bound: {}",
            control_log()
        );
        std::thread::sleep(Duration::from_millis(10)); // polling a metric, bounded
    }
    let out = swanctl(&lab, dir.path(), &["--rekey", "--child", "t"]);
    assert!(out.status.success(), "swanctl --rekey: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while installed() < 3.0 {
        assert!(
            Instant::now() < deadline,
            "rekeyed CHILD_SA never bound: {}",
            control_log()
        );
        std::thread::sleep(Duration::from_millis(10)); // polling a metric, bounded
    }
    let out = ping
        .0
        .take()
        .unwrap()
        .wait_with_output()
        .expect("ricochet-ping ends");
    let list = text(&swanctl(&lab, dir.path(), &["--list-sas"]));
    assert!(
        out.status.success(),
        "{}\nSAs:\n{list}\ncontrol log:\n{}",
        text(&out),
        control_log()
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let sum = &j["sessions"][0]["summary"];
    assert_eq!(sum["sent"].as_u64(), Some(REKEY_COUNT), "{sum}");
    // Every request reached the reflector and was accepted across the
    // rekey (the reflector's sequence numbers have no gap), and every
    // reply reached ricochet-ping: the data plane keeps sealing with the
    // old outbound SA until a packet authenticates on the new inbound SA
    // (charon, the rekey's initiator, installs the new SA only when it
    // processes our CREATE_CHILD_SA response; RFC 7296 §2.8).
    let why = || format!("{sum}\nSAs:\n{list}\ncontrol log:\n{}", control_log());
    assert_eq!(
        sum["lost_forward"].as_u64(),
        Some(0),
        "requests lost across the rekey: {}",
        why()
    );
    assert_eq!(
        sum["lost_backward"].as_u64(),
        Some(0),
        "replies lost across the rekey: {}",
        why()
    );
    assert_eq!(
        sum["received"].as_u64(),
        Some(REKEY_COUNT),
        "replies missing across the rekey: {}",
        why()
    );
    assert_eq!(installed(), 3.0, "{}", control_log());
}
