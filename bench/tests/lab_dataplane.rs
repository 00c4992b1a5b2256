//! The kernel-bypass data plane in the namespace lab, with the real
//! binaries: `ricochet-reflector` (XDP program + AF_XDP pollers) on the
//! reflector's veth, a second instance with `--no-pollers` on the sender's
//! veth (XDP_TX frames reach a veth peer only when it has an XDP program
//! too), `ricochet-control` with `data_plane = "bpf"` and `ricochet-ping`.
//!
//! * a control-plane restart in the middle of running sessions loses no
//!   packet, and the restarted control adopts and later expires them
//!   (REFWAIT);
//! * every mode over IPv6;
//! * the host's own traffic (ICMP, ICMPv6, TCP) is untouched and counted as
//!   passed;
//! * the XDP counters and the poller statistics equal what was sent.
//!
//! Needs root (network namespaces, BPF); CI runs as root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use ricochet_reflector::bpf::{Counter, Counters, Maps};
use ricochet_testkit::lab::{self, workspace_bin, Lab, Side};
use serde_json::Value;

const SECRET_HEX: &str = "6c61622d7365637265742d666f722d746573747321";

/// A daemon started by a test: SIGTERMed by [`Proc::terminate`], SIGKILLed
/// on drop if still running. Output goes to files (a pipe nobody reads
/// would block a chatty daemon).
struct Proc {
    child: Child,
    what: String,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(lab: &Lab, side: Side, bin: &Path, args: &[&str], logs: &Path, what: &str) -> Proc {
        let out = logs.join(format!("{what}.out"));
        let err = logs.join(format!("{what}.err"));
        let child = lab
            .command(side, bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("nsenter runs");
        Proc {
            child,
            what: what.to_owned(),
            out,
            err,
        }
    }

    /// `nsenter` (without `--fork`) execs the program: the child's PID is
    /// the daemon's own.
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn terminate(&mut self) -> ExitStatus {
        if self.running() {
            // SAFETY: kill(2) with the PID of our own unreaped child (it
            // cannot have been reused) and a plain signal number.
            let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            assert_eq!(rc, 0, "SIGTERM {}", self.what);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM:\n{}",
                self.what,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20)); // polling an exit, bounded
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits (bounded) until the daemon's stderr contains `line`.
    fn wait_for(&mut self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.stderr().contains(line) {
            if !self.running() {
                panic!("{} exited early:\n{}", self.what, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{} never said {line:?}:\n{}",
                self.what,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20)); // polling a log file, bounded
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A pin directory, removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lab with both XDP instances. Fields drop in order: daemons first,
/// then their pins, the files, the namespaces.
struct Rig {
    xdp: Option<Proc>,
    _pass: Proc,
    pins: Pins,
    _pins_s: Pins,
    dir: tempfile::TempDir,
    lab: Lab,
}

fn write_private(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts `ricochet-reflector` on a side's veth and waits until it has
/// attached and started its pollers.
fn start_reflector(
    lab: &Lab,
    side: Side,
    pins: &Path,
    logs: &Path,
    what: &str,
    extra: &[&str],
) -> Proc {
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
    let mut p = Proc::spawn(
        lab,
        side,
        &workspace_bin("ricochet-reflector"),
        &args,
        logs,
        what,
    );
    p.wait_for("ricochet-reflector: attached to");
    p
}

fn rig(tag: &str, reflector_args: &[&str]) -> Rig {
    let lab = Lab::up(tag);
    let dir = tempfile::tempdir().unwrap();
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        lab.netns(Side::Reflector)
    )));
    let pins_s = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        lab.netns(Side::Sender)
    )));
    let pass = start_reflector(
        &lab,
        Side::Sender,
        &pins_s.0,
        dir.path(),
        "pass",
        &["--no-pollers"],
    );
    let xdp = start_reflector(
        &lab,
        Side::Reflector,
        &pins.0,
        dir.path(),
        "xdp",
        reflector_args,
    );
    write_private(
        &dir.path().join("keys.pfs"),
        &format!("lab\t{SECRET_HEX}\n"),
    );
    Rig {
        xdp: Some(xdp),
        _pass: pass,
        pins,
        _pins_s: pins_s,
        dir,
        lab,
    }
}

impl Rig {
    fn maps(&self) -> Maps {
        Maps::open_pinned(&self.pins.0).expect("pinned maps")
    }

    fn counters(&self) -> Counters {
        self.maps().counters().expect("counters")
    }

    fn registry(&self) -> PathBuf {
        self.dir.path().join("sessions")
    }

    /// Starts ricochet-control on the pinned maps and waits (bounded) until
    /// it accepts TWAMP-Control connections from the sender's side.
    fn start_control(&self, what: &str, refwait_s: u64) -> Proc {
        let cfg = self.dir.path().join(format!("{what}.toml"));
        write_private(
            &cfg,
            &format!(
                r#"listen = ["[::]:862", "0.0.0.0:862"]
v6only = true
test_ports = "18760-18999"
log_level = "info"
data_plane = "bpf"

[bpf]
pin_dir = "{}"
registry = "{}"

[timers]
refwait = {refwait_s}

[security]
modes = ["unauthenticated", "authenticated", "encrypted", "mixed"]
key_file = "{}"

[metrics]
enabled = false
"#,
                self.pins.0.display(),
                self.registry().display(),
                self.dir.path().join("keys.pfs").display()
            ),
        );
        let mut p = Proc::spawn(
            &self.lab,
            Side::Reflector,
            &workspace_bin("ricochet-control"),
            &["--config", cfg.to_str().unwrap()],
            self.dir.path(),
            what,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = self.lab.in_netns(Side::Sender, || {
                TcpStream::connect_timeout(
                    &SocketAddr::from((lab::REFLECTOR_V4, 862)),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
            if up {
                return p;
            }
            assert!(p.running(), "{what} exited:\n{}", p.stderr());
            assert!(
                Instant::now() < deadline,
                "{what} never listened:\n{}",
                p.stderr()
            );
            std::thread::sleep(Duration::from_millis(50)); // polling a port, bounded
        }
    }

    /// `ricochet-ping` in the sender's namespace with the lab key, JSON out.
    fn ping(&self, args: &[&str]) -> Command {
        let mut c = self
            .lab
            .command(Side::Sender, workspace_bin("ricochet-ping"));
        c.args(["-u", "lab", "-k"])
            .arg(self.dir.path().join("keys.pfs"))
            .args(["--json", "--timeout", "1s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

/// The one session of a ping run, checked to have every packet reflected
/// exactly once.
fn all_reflected(what: &str, out: &Output, count: u64) -> Value {
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: no JSON ({e}), exit {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let s = json["sessions"].as_array().expect("sessions");
    assert_eq!(s.len(), 1, "{what}");
    let sum = &s[0]["summary"];
    assert_eq!(sum["sent"].as_u64(), Some(count), "{what}: {sum}");
    assert_eq!(sum["received"].as_u64(), Some(count), "{what}: {sum}");
    assert_eq!(sum["duplicates"].as_u64(), Some(0), "{what}: {sum}");
    s[0].clone()
}

/// An unauthenticated TWAMP sender packet (RFC 5357 §4.1.2): sequence
/// number, timestamp, Error Estimate (multiplier 1), 27 octets of padding:
/// 41 octets, the size of the reflector's reply.
fn open_sender_packet(seq: u32) -> [u8; 41] {
    let mut p = [0u8; 41];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&3_900_000_000u32.to_be_bytes());
    p[12..14].copy_from_slice(&1u16.to_be_bytes());
    p
}

/// Sends unauthenticated test packets from `sender` to `reflector` in the
/// sender's namespace; the number of replies that echo our sequence number
/// (RFC 5357 §4.2.1: Sender Sequence Number at octet 24).
fn probe(lab: &Lab, sender: SocketAddr, reflector: SocketAddr, packets: u32) -> u32 {
    let sock = lab.in_netns(Side::Sender, move || {
        UdpSocket::bind(sender).expect("bind probe")
    });
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut answered = 0;
    for seq in 0..packets {
        let seq = 0x5eed_0000 + seq;
        sock.send_to(&open_sender_packet(seq), reflector).unwrap();
        let mut buf = [0u8; 2048];
        // Bounded by the read timeout; stale replies are skipped.
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == reflector && n >= 28 && buf[24..28] == seq.to_be_bytes() {
                answered += 1;
                break;
            }
        }
    }
    answered
}

fn addr(v: &Value) -> SocketAddr {
    v.as_str()
        .expect("address string")
        .parse()
        .expect("socket address")
}

/// Polls `cond` every 50 ms for at most `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50)); // polling, bounded
    }
}

/// Issue 4: "Restart ricochet-control during a running session: zero loss,
/// session still reflected, expired later by the rule." One session on the
/// XDP path and one on the AF_XDP path run while the control daemon is
/// SIGTERMed and started again; every packet of both comes back. The new
/// daemon adopts both from the pinned registry, keeps reflecting them while
/// packets come, and removes them REFWAIT after the last one: then they are
/// no longer reflected.
#[test]
fn control_restart_mid_stream_loses_nothing_and_adopted_sessions_expire() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    const REFWAIT_S: u64 = 4;
    // Ten seconds of packets: the restart must fit inside, also on a
    // loaded machine.
    const COUNT: u64 = 10_000;
    let rig = rig("dr", &[]);
    let mut control = rig.start_control("control1", REFWAIT_S);
    let n = COUNT.to_string();
    let args = |mode| vec!["-c", n.as_str(), "-i", "1ms", "-A", mode, "198.18.0.2"];
    let open = rig.ping(&args("open")).spawn().unwrap();
    let enc = rig.ping(&args("enc")).spawn().unwrap();
    let before = rig.counters();
    // Both sessions started and packets flowing through both paths.
    eventually(Duration::from_secs(15), "both sessions reflecting", || {
        let c = rig.counters().since(&before);
        c.get(Counter::Reflected) >= 200 && c.get(Counter::Redirected) >= 200
    });
    assert_eq!(rig.maps().session_keys().unwrap().len(), 2);

    let status = control.terminate();
    assert!(
        status.success(),
        "control1 exit {status}:\n{}",
        control.stderr()
    );
    // The old control left its sessions in place.
    assert_eq!(
        rig.maps().session_keys().unwrap().len(),
        2,
        "sessions removed at shutdown"
    );
    let mid = rig.counters().since(&before);
    let mut control2 = rig.start_control("control2", REFWAIT_S);
    let (mut open, mut enc) = (open, enc);
    assert!(
        matches!(open.try_wait(), Ok(None)) && matches!(enc.try_wait(), Ok(None)),
        "the restart must happen while the sessions run (make COUNT larger)"
    );
    let open = all_reflected("open", &open.wait_with_output().unwrap(), COUNT);
    let _enc = all_reflected("enc", &enc.wait_with_output().unwrap(), COUNT);
    // Packets really went through both paths while no control ran.
    let end = rig.counters().since(&before);
    assert!(end.get(Counter::Reflected) > mid.get(Counter::Reflected));
    assert!(end.get(Counter::Redirected) > mid.get(Counter::Redirected));
    assert!(
        control2.stderr().contains("adopted data-plane sessions"),
        "{}",
        control2.stderr()
    );

    // Adopted and still reflected right after the run ...
    let (sender, reflector) = (addr(&open["sender"]), addr(&open["reflector"]));
    assert_eq!(
        probe(&rig.lab, sender, reflector, 3),
        3,
        "adopted session not reflected"
    );
    // ... removed REFWAIT after its last packet (with the sweep cadence) ...
    let last = Instant::now();
    // The control plane deletes each map entry and then rewrites the
    // registry: wait for both, or the check can land between the two writes.
    eventually(
        Duration::from_secs(REFWAIT_S + 10),
        "adopted sessions removed",
        || {
            rig.maps().session_keys().unwrap().is_empty()
                && std::fs::read_to_string(rig.registry()).is_ok_and(|r| r.trim().is_empty())
        },
    );
    assert!(
        last.elapsed() >= Duration::from_secs(REFWAIT_S - 1),
        "removed before REFWAIT: {:?}",
        last.elapsed()
    );
    let registry = std::fs::read_to_string(rig.registry()).unwrap();
    assert!(registry.trim().is_empty(), "registry keeps {registry}");
    // ... and then no longer reflected: the program sees the probes and
    // passes them as matching no session.
    let c0 = rig.counters();
    assert_eq!(
        probe(&rig.lab, sender, reflector, 3),
        0,
        "expired session still reflected"
    );
    let c = rig.counters().since(&c0);
    assert!(
        c.get(Counter::PassNoMatch) >= 3,
        "probes never reached XDP: {c:?}"
    );
    assert_eq!(c.get(Counter::Reflected), 0);
    assert!(control2.running(), "{}", control2.stderr());
}

/// Every security mode over IPv6, through the XDP program (open, mixed)
/// and the AF_XDP pollers (authenticated, encrypted); the XDP counters
/// move by exactly what was sent on each path.
#[test]
fn every_mode_over_ipv6_through_xdp_and_af_xdp() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let rig = rig("d6", &[]);
    let _control = rig.start_control("control", 30);
    for (mode, path) in [
        ("open", Counter::Reflected),
        ("mixed", Counter::Reflected),
        ("auth", Counter::Redirected),
        ("enc", Counter::Redirected),
    ] {
        let before = rig.counters();
        let out = rig
            .ping(&["-c", "50", "-i", "1ms", "-A", mode, "[2001:2::2]"])
            .output()
            .unwrap();
        let s = all_reflected(&format!("{mode} over IPv6"), &out, 50);
        assert!(addr(&s["reflector"]).is_ipv6());
        let c = rig.counters().since(&before);
        assert_eq!(c.get(path), 50, "{mode}: {c:?}");
        let other = if path == Counter::Reflected {
            Counter::Redirected
        } else {
            Counter::Reflected
        };
        assert_eq!(c.get(other), 0, "{mode}: {c:?}");
    }
}

fn sum_passed(c: &Counters) -> u64 {
    [
        Counter::PassNotUdp,
        Counter::PassNoMatch,
        Counter::PassMalformed,
        Counter::PassNotUnicast,
        Counter::RedirectNoXsk,
    ]
    .iter()
    .map(|k| c.get(*k))
    .sum()
}

/// Frames a side's veth received (`ip -s`; /sys under `nsenter --net`
/// still shows the host's interfaces).
fn rx_packets(lab: &Lab, side: Side) -> u64 {
    let out = lab.run(
        side,
        "ip",
        &["-j", "-s", "link", "show", "dev", &lab.iface(side)],
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    j[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packets in {j}"))
}

/// With the program attached, the host's own traffic through the same
/// interface works (ICMP echo over IPv4 and IPv6, a TCP exchange), nothing
/// of it is reflected or dropped, and every frame the interface received is
/// counted as passed.
#[test]
fn host_traffic_passes_untouched_and_is_counted() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let rig = rig("dh", &[]);
    let before = rig.counters();
    let rx0 = rx_packets(&rig.lab, Side::Reflector);
    for (ping, host) in [("-4", "198.18.0.2"), ("-6", "2001:2::2")] {
        let out = rig.lab.run(
            Side::Sender,
            "ping",
            &[ping, "-c", "3", "-i", "0.2", "-W", "2", host],
        );
        assert!(
            out.status.success(),
            "ping {host}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // TCP: 256 KiB echoed through a listener in the reflector's namespace.
    let listener = rig.lab.in_netns(Side::Reflector, || {
        TcpListener::bind((lab::REFLECTOR_V4, 0)).expect("bind")
    });
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("echo");
    });
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let echoed = rig.lab.in_netns(Side::Sender, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((lab::REFLECTOR_V4, port)),
            Duration::from_secs(5),
        )
        .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&sent).expect("write");
        let mut back = vec![0u8; sent.len()];
        s.read_exact(&mut back).expect("read echo");
        back
    });
    server.join().unwrap();
    assert!(echoed == data, "TCP data changed on the way");

    // Every frame the veth received went through the program and was
    // passed. Late frames (the last TCP ACKs, neighbour discovery) may
    // land between the two readings: read until they agree (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (c, rx) = loop {
        let c = rig.counters().since(&before);
        let rx = rx_packets(&rig.lab, Side::Reflector) - rx0;
        if sum_passed(&c) == rx || Instant::now() > deadline {
            break (c, rx);
        }
        std::thread::sleep(Duration::from_millis(100)); // polling counters, bounded
    };
    assert_eq!(c.get(Counter::Reflected), 0, "{c:?}");
    assert_eq!(c.get(Counter::Redirected), 0, "{c:?}");
    assert_eq!(c.get(Counter::DropBadLength), 0, "{c:?}");
    assert_eq!(c.get(Counter::DropRateLimited), 0, "{c:?}");
    assert_eq!(c.get(Counter::Error), 0, "{c:?}");
    // 3 + 3 echo requests, neighbour discovery and the TCP segments: all
    // non-UDP.
    assert!(c.get(Counter::PassNotUdp) >= 6 + 20, "{c:?}");
    assert_eq!(
        sum_passed(&c),
        rx,
        "every received frame is counted as passed: {c:?}"
    );
}

/// After a run the XDP counters and the AF_XDP poller statistics (printed
/// by the reflector on SIGTERM) equal what ricochet-ping sent and got back.
#[test]
fn xdp_counters_and_poller_stats_match_what_was_sent() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let mut rig = rig("dc", &[]);
    let control = rig.start_control("control", 30);
    let before = rig.counters();
    let open = rig
        .ping(&["-c", "300", "-i", "1ms", "-A", "open", "198.18.0.2"])
        .output()
        .unwrap();
    all_reflected("open", &open, 300);
    let enc = rig
        .ping(&["-c", "200", "-i", "1ms", "-A", "enc", "198.18.0.2"])
        .output()
        .unwrap();
    all_reflected("enc", &enc, 200);
    let c = rig.counters().since(&before);
    assert_eq!(c.get(Counter::Reflected), 300, "{c:?}");
    assert_eq!(c.get(Counter::Redirected), 200, "{c:?}");
    assert_eq!(c.get(Counter::RedirectNoXsk), 0, "{c:?}");
    drop(control);

    let mut xdp = rig.xdp.take().unwrap();
    let status = xdp.terminate();
    assert!(
        status.success(),
        "reflector exit {status}:\n{}",
        xdp.stderr()
    );
    let out = xdp.stdout();
    let value = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
    };
    assert_eq!(value("poller_q0_rx_packets"), 200, "{out}");
    assert_eq!(value("poller_q0_tx_packets"), 200, "{out}");
    assert_eq!(value("poller_q0_tx_completed"), 200, "{out}");
    assert_eq!(value("poller_q0_dropped"), 0, "{out}");
    // The exit report is the same counter map the test read.
    let total = rig.counters();
    assert_eq!(value("reflected"), total.get(Counter::Reflected), "{out}");
    assert_eq!(value("redirected"), total.get(Counter::Redirected), "{out}");
}

/// A packet socket on one interface (AF_PACKET, SOCK_RAW): whole Ethernet
/// frames out and in, with the VLAN tag the kernel moved to metadata
/// (`PACKET_AUXDATA`) put back in place.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    /// Opens and binds it (call inside the namespace of `iface`).
    fn open(iface: &str) -> PacketSocket {
        use std::os::fd::FromRawFd;
        let ifindex = ricochet_reflector::bpf::ifindex(iface).expect("ifindex");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let sock = PacketSocket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(ifindex).unwrap();
        // SAFETY: `sll` is a valid sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                fd,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind packet socket: {}",
            std::io::Error::last_os_error()
        );
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "PACKET_AUXDATA: {}", std::io::Error::last_os_error());
        sock
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame received (not sent) on the interface within
    /// `timeout`, with its VLAN tag in the frame.
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            // SAFETY: zeroed sockaddr_ll and aligned cmsg space are valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut cmsg = [0u64; 16];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain data.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = std::ptr::addr_of_mut!(sll).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cmsg);
            // SAFETY: every pointer in `msg` refers to live buffers of the
            // lengths given.
            let n = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, 0) };
            if n <= 0 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n as usize);
            // SAFETY: walking the control messages the kernel wrote into
            // `cmsg`, within msg_controllen, with the libc macros.
            let tag = unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                let mut tag = None;
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    {
                        let aux: libc::tpacket_auxdata =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                            let tpid = if aux.tp_vlan_tpid == 0 {
                                0x8100
                            } else {
                                aux.tp_vlan_tpid
                            };
                            tag = Some((tpid, aux.tp_vlan_tci));
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
                tag
            };
            if let Some((tpid, tci)) = tag {
                if buf.len() >= 14 {
                    let mut t = tpid.to_be_bytes().to_vec();
                    t.extend_from_slice(&tci.to_be_bytes());
                    buf.splice(12..12, t);
                }
            }
            return Some(buf);
        }
    }
}

fn mac(lab: &Lab, side: Side) -> [u8; 6] {
    let out = lab.run(side, "ip", &["-j", "link", "show", "dev", &lab.iface(side)]);
    let j: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    let text = j[0]["address"].as_str().expect("address");
    let mut m = [0u8; 6];
    for (o, h) in m.iter_mut().zip(text.split(':')) {
        *o = u8::from_str_radix(h, 16).unwrap();
    }
    m
}

const VLAN: u16 = 100;

/// One tagged test frame from `src` to `dst` (IPv4 TTL / IPv6 hop limit 64).
fn tagged_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .single_vlan(etherparse::VlanId::try_new(VLAN).unwrap());
    let b = match (src.ip(), dst.ip()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    }
    .udp(src.port(), dst.port());
    let mut f = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut f, payload).unwrap();
    f
}

/// Checks a reply frame: tagged with [`VLAN`], from `dst` back to `src`,
/// UDP (and IPv4 header) checksums right by etherparse's independent
/// computation. Returns the UDP payload.
fn check_tagged_reply(f: &[u8], src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    if f.len() < 18 || f[12..14] != [0x81, 0x00] {
        return None;
    }
    let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        return None;
    };
    let payload = u.payload().to_vec();
    let (from, to, sum) = match p.net? {
        etherparse::NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            (
                SocketAddr::new(
                    std::net::IpAddr::from(ip.header().source()),
                    u.source_port(),
                ),
                SocketAddr::new(
                    std::net::IpAddr::from(ip.header().destination()),
                    u.destination_port(),
                ),
                u.to_header()
                    .calc_checksum_ipv4_raw(
                        ip.header().source(),
                        ip.header().destination(),
                        &payload,
                    )
                    .unwrap(),
            )
        }
        etherparse::NetSlice::Ipv6(ip) => (
            SocketAddr::new(
                std::net::IpAddr::from(ip.header().source()),
                u.source_port(),
            ),
            SocketAddr::new(
                std::net::IpAddr::from(ip.header().destination()),
                u.destination_port(),
            ),
            u.to_header()
                .calc_checksum_ipv6_raw(ip.header().source(), ip.header().destination(), &payload)
                .unwrap(),
        ),
    };
    if (from, to) != (dst, src) {
        return None;
    }
    assert_eq!(
        u16::from_be_bytes([f[14], f[15]]) & 0x0fff,
        VLAN,
        "VLAN id kept"
    );
    assert_eq!(u.checksum(), sum, "UDP checksum of the reply");
    Some(payload)
}

/// 802.1Q-tagged TWAMP through the XDP program attached to the parent veth
/// (unauthenticated: XDP_TX) and through the AF_XDP poller (encrypted), over
/// IPv4 and IPv6 on the second lab subnet: every packet is reflected with
/// its tag kept, checksums right and the sender's sequence number echoed.
/// The lab kernel has no 802.1Q interfaces (`CONFIG_VLAN_8021Q` unset), so
/// the sender side is a packet socket that writes and reads tagged frames.
#[test]
fn vlan_tagged_twamp_through_xdp_and_af_xdp_keeps_the_tag() {
    use ricochet_protocol::control::Sid;
    use ricochet_protocol::crypto::{PacketRole, SessionKeys, TestKeys, TestProtection};
    use ricochet_protocol::modes::SecurityMode;
    use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
    use ricochet_reflector::bpf::BpfSessionTable;
    use ricochet_reflector::session_table::{SessionSpec, SessionTable};

    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    const N: u32 = 20;
    let rig = rig("dv", &[]);
    // The sessions a control plane would install, through the same table.
    let mut table = BpfSessionTable::open(&rig.pins.0, &rig.registry()).unwrap();
    let keys = SessionKeys {
        aes: [0x11; 16],
        hmac: [0x22; 32],
    };
    let test_keys = TestKeys::new(&keys);
    let mut cases = Vec::new();
    for (i, (v6, secure)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let i = u16::try_from(i).unwrap();
        let sender = SocketAddr::new(Lab::vlan_addr(Side::Sender, v6), 40100 + i);
        let reflector = SocketAddr::new(Lab::vlan_addr(Side::Reflector, v6), 18900 + i);
        let (security, fmt) = if secure {
            (SecurityMode::Encrypted, TestSecurity::Encrypted)
        } else {
            (SecurityMode::Unauthenticated, TestSecurity::Unauthenticated)
        };
        let sid = Sid([u8::try_from(i).unwrap() + 1; 16]);
        table
            .add(SessionSpec {
                sid,
                sender,
                reflector,
                security,
                format: SessionFormat::new(fmt),
                dscp: 0,
                test_keys: secure.then(|| keys.clone()),
                rate_limit_pps: 0,
                rate_burst: 0,
            })
            .unwrap();
        table.start(&sid).unwrap();
        cases.push((sender, reflector, secure));
    }
    let (smac, rmac) = (mac(&rig.lab, Side::Sender), mac(&rig.lab, Side::Reflector));
    let iface = rig.lab.iface(Side::Sender);
    let sock = rig
        .lab
        .in_netns(Side::Sender, move || PacketSocket::open(&iface));
    let before = rig.counters();
    for (sender, reflector, secure) in cases {
        for k in 0..N {
            let seq = 0x7a00 + k;
            let mut payload = if secure {
                // RFC 4656 §4.1.2 sender layout, padded to the 112-octet reply.
                let mut p = vec![0u8; 112];
                p[0..4].copy_from_slice(&seq.to_be_bytes());
                p[16..20].copy_from_slice(&3_900_000_000u32.to_be_bytes());
                p[24..26].copy_from_slice(&1u16.to_be_bytes());
                test_keys
                    .protect(PacketRole::Sender, TestProtection::Encrypted, &mut p)
                    .unwrap();
                p
            } else {
                open_sender_packet(seq).to_vec()
            };
            sock.send(&tagged_frame(smac, rmac, sender, reflector, &payload));
            let reply = loop {
                let f = sock.recv(Duration::from_secs(2)).unwrap_or_else(|| {
                    panic!("no reply to {seq:#x} from {reflector} (secure {secure})")
                });
                if let Some(p) = check_tagged_reply(&f, sender, reflector) {
                    break p;
                }
            };
            payload = reply;
            if secure {
                assert_eq!(payload.len(), 112);
                test_keys
                    .unprotect(
                        PacketRole::Reflector,
                        TestProtection::Encrypted,
                        &mut payload,
                    )
                    .expect("reply HMAC");
                assert_eq!(payload[48..52], seq.to_be_bytes(), "sender seq echoed");
                assert_eq!(payload[0..4], k.to_be_bytes(), "reflector's own seq");
            } else {
                assert_eq!(payload.len(), 41);
                assert_eq!(payload[24..28], seq.to_be_bytes(), "sender seq echoed");
                assert_eq!(payload[0..4], k.to_be_bytes(), "reflector's own seq");
            }
        }
    }
    let c = rig.counters().since(&before);
    assert_eq!(c.get(Counter::Reflected), u64::from(2 * N), "{c:?}");
    assert_eq!(c.get(Counter::Redirected), u64::from(2 * N), "{c:?}");
}

/// The id of the XDP program attached to a side's veth, if any.
fn xdp_prog_id(lab: &Lab, side: Side) -> Option<u64> {
    let out = lab.run(
        side,
        "ip",
        &["-j", "-d", "link", "show", "dev", &lab.iface(side)],
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    j[0]["xdp"]["prog"]["id"].as_u64()
}

/// `--keep-attached`: a reflector SIGTERMed with it leaves the program
/// attached and the maps pinned, so XDP sessions keep being reflected while
/// no reflector runs; the next instance on the same pins replaces the
/// program atomically (zero loss on the XDP path) and its pollers serve
/// secured sessions again. An instance on other pins refuses to replace a
/// program that is not its own.
#[test]
fn keep_attached_reflector_restart_loses_nothing_on_the_xdp_path() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    const COUNT: u64 = 8000;
    let mut rig = rig("dk", &["--keep-attached"]);
    let _control = rig.start_control("control", 30);
    let n = COUNT.to_string();
    let mut open = rig
        .ping(&["-c", n.as_str(), "-i", "1ms", "-A", "open", "198.18.0.2"])
        .spawn()
        .unwrap();
    let before = rig.counters();
    eventually(Duration::from_secs(15), "session reflecting", || {
        rig.counters().since(&before).get(Counter::Reflected) >= 200
    });
    let prog = xdp_prog_id(&rig.lab, Side::Reflector).expect("program attached");

    let mut old = rig.xdp.take().unwrap();
    let status = old.terminate();
    assert!(status.success(), "exit {status}:\n{}", old.stderr());
    assert!(
        old.stderr().contains("leaving the program attached"),
        "{}",
        old.stderr()
    );
    assert_eq!(
        xdp_prog_id(&rig.lab, Side::Reflector),
        Some(prog),
        "program detached"
    );
    assert_eq!(rig.maps().session_keys().unwrap().len(), 1, "session lost");
    // Still reflecting with no reflector process at all.
    let c0 = rig.counters();
    eventually(
        Duration::from_secs(5),
        "reflecting without a daemon",
        || rig.counters().since(&c0).get(Counter::Reflected) >= 50,
    );

    let mut new = start_reflector(
        &rig.lab,
        Side::Reflector,
        &rig.pins.0,
        rig.dir.path(),
        "xdp2",
        &[],
    );
    assert!(
        new.stderr()
            .contains(&format!("replacing program id {prog}")),
        "{}",
        new.stderr()
    );
    let now = xdp_prog_id(&rig.lab, Side::Reflector).expect("attached");
    assert_ne!(now, prog, "the new instance's program is attached");
    assert!(
        matches!(open.try_wait(), Ok(None)),
        "the restart must happen mid-stream (make COUNT larger)"
    );
    all_reflected(
        "open across the restart",
        &open.wait_with_output().unwrap(),
        COUNT,
    );
    // The new instance's poller serves secured sessions.
    let enc = rig
        .ping(&["-c", "100", "-i", "1ms", "-A", "enc", "198.18.0.2"])
        .output()
        .unwrap();
    all_reflected("enc after the restart", &enc, 100);

    // Without --keep-attached the new instance detaches on SIGTERM.
    let status = new.terminate();
    assert!(status.success(), "exit {status}:\n{}", new.stderr());
    assert_eq!(
        xdp_prog_id(&rig.lab, Side::Reflector),
        None,
        "still attached"
    );

    // The sender side's program belongs to other pins: not replaced.
    let pass = xdp_prog_id(&rig.lab, Side::Sender).expect("pass program");
    let foreign = Pins(PathBuf::from(format!("{}-x", rig.pins.0.display())));
    let out = rig
        .lab
        .command(Side::Sender, workspace_bin("ricochet-reflector"))
        .args(["--iface", &rig.lab.iface(Side::Sender), "--pin-dir"])
        .arg(&foreign.0)
        .args(["--no-pollers"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not use the maps pinned"), "{err}");
    assert_eq!(xdp_prog_id(&rig.lab, Side::Sender), Some(pass));
}

/// The CPUs a thread of `pid` named `comm` may run on (its
/// `Cpus_allowed_list` in /proc), for every such thread.
fn thread_cpus(pid: i32, comm: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_owned();
        out.push(cpus);
    }
    out
}

/// `--cores` pins the poller thread (and only it) to the core given, and
/// `--hw-rx-timestamps` loads the device-bound program: on veth the
/// bpf_xdp_metadata_rx_timestamp kfunc exists but yields no stamp, so every
/// T2 falls back to the kernel TAI clock, which the pollers count per
/// source; both paths still reflect with a sane residence time (a T2 of 0
/// taken from the NIC would make it decades long).
#[test]
fn pinned_pollers_and_device_bound_rx_timestamps_fall_back_to_kernel_tai() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let core = (cpus - 1).to_string();
    let mut rig = rig("dt", &["--cores", core.as_str(), "--hw-rx-timestamps"]);
    let pid = rig.xdp.as_ref().unwrap().pid();
    assert_eq!(thread_cpus(pid, "ricochet-xsk-q0"), vec![core.clone()]);
    let main_cpus = thread_cpus(pid, "ricochet-reflec");
    assert_eq!(main_cpus.len(), 1, "the main thread");
    if cpus > 1 {
        assert_ne!(main_cpus[0], core, "only the poller is pinned");
    }
    let err = rig.xdp.as_mut().unwrap().stderr();
    assert!(err.contains("device-bound"), "{err}");
    // The attached program is the device-bound variant.
    let id = xdp_prog_id(&rig.lab, Side::Reflector).expect("attached");
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    let info: Value = serde_json::from_slice(&out.stdout).expect("bpftool -j");
    assert_eq!(info["name"].as_str(), Some("ricochet_xdp_hwts"), "{info}");

    let _control = rig.start_control("control", 30);
    for (mode, n) in [("open", 100u64), ("enc", 60)] {
        let out = rig
            .ping(&["-c", &n.to_string(), "-i", "1ms", "-A", mode, "198.18.0.2"])
            .output()
            .unwrap();
        let s = all_reflected(mode, &out, n);
        let max = s["summary"]["residence"]["max_ns"].as_i64().unwrap();
        assert!(
            (0..100_000_000).contains(&max),
            "{mode}: residence {max} ns"
        );
    }
    let mut xdp = rig.xdp.take().unwrap();
    assert!(xdp.terminate().success(), "{}", xdp.stderr());
    let out = xdp.stdout();
    let value = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
    };
    assert_eq!(value("poller_q0_t2_kernel_tai"), 60, "{out}");
    assert_eq!(value("poller_q0_t2_nic"), 0, "{out}");
}
