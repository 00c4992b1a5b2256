//! The `ricochet-reflector` binary end to end: started in a veth namespace
//! pair (198.18.0.0/15), programmed from this test through
//! [`BpfSessionTable`] on its pins (the test acts as the control plane), it
//! reflects a TWAMP probe sent from the peer namespace and detaches on
//! SIGTERM.
//!
//! Needs root (CI runs as root).

mod xdp_util;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ricochet_protocol::control::Sid;
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::bpf::{ifindex, AttachMode, BpfSessionTable, PINNED_MAPS};
use ricochet_reflector::session_table::{SessionSpec, SessionTable};
use xdp_util::*;

const T1: [u8; 8] = [0xe9, 0x1b, 0x2c, 0x3d, 0x40, 0x00, 0x00, 0x00];

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip(8)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn has_xdp(ns: &str, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .expect("run ip(8)");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// Namespaces, the daemon process and its pins, all cleaned up on drop
/// (also when an assertion fails).
struct Lab {
    ns: Vec<String>,
    child: Option<Child>,
    pins: PathBuf,
    registry: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for m in PINNED_MAPS {
            let _ = std::fs::remove_file(self.pins.join(m));
        }
        let _ = std::fs::remove_dir(&self.pins);
        let _ = std::fs::remove_file(&self.registry);
    }
}

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

#[test]
fn daemon_reflects_a_session_programmed_through_its_pins_and_detaches_on_sigterm() {
    if skip() {
        return;
    }
    let pid = std::process::id();
    let mut lab = Lab {
        ns: vec![format!("rcdmr{pid}"), format!("rcdms{pid}")],
        child: None,
        pins: PathBuf::from(format!("/sys/fs/bpf/ricochet-daemon-test-{pid}")),
        registry: std::env::temp_dir().join(format!("ricochet-daemon-test-{pid}.sessions")),
    };
    let (r, s) = (lab.ns[0].clone(), lab.ns[1].clone());
    for n in &lab.ns {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
        ip(&["netns", "add", n]);
    }
    ip(&[
        "-n", &r, "link", "add", "rcd0", "type", "veth", "peer", "name", "rcd1", "netns", &s,
    ]);
    ip(&["-n", &r, "addr", "add", "198.18.2.1/30", "dev", "rcd0"]);
    ip(&["-n", &s, "addr", "add", "198.18.2.2/30", "dev", "rcd1"]);
    ip(&["-n", &r, "link", "set", "rcd0", "up"]);
    ip(&["-n", &s, "link", "set", "rcd1", "up"]);
    let out = Command::new("ip")
        .args(["netns", "exec", &s, "ethtool", "-K", "rcd1", "tx", "off"])
        .output()
        .expect("run ethtool");
    assert!(out.status.success(), "ethtool tx off");

    // Not `ip netns exec`: it remounts /sys, hiding bpffs from the daemon.
    let netns = File::open(format!("/run/netns/{r}")).expect("open netns");
    let netns_fd = netns.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ricochet-reflector"));
    // SAFETY: setns(2) is a single async-signal-safe system call on a
    // descriptor that `netns` keeps open until after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    lab.child = Some(
        cmd.args(["--iface", "rcd0", "--pin-dir"])
            .arg(&lab.pins)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ricochet-reflector"),
    );
    drop(netns);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(has_xdp(&r, "rcd0") && lab.pins.join("keys").exists()) {
        if let Some(st) = lab.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("ricochet-reflector exited early: {st}");
        }
        assert!(Instant::now() < deadline, "daemon did not attach");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The control plane: a session through the pinned maps.
    let mut table = BpfSessionTable::open(&lab.pins, &lab.registry).expect("open pins");
    let sid = Sid([0x42; 16]);
    table
        .add(SessionSpec {
            sid,
            sender: SocketAddr::new("198.18.2.2".parse().unwrap(), PORT_PEER),
            reflector: SocketAddr::new("198.18.2.1".parse().unwrap(), PORT_US),
            security: SecurityMode::Unauthenticated,
            format: SessionFormat::new(TestSecurity::Unauthenticated),
            dscp: 0,
            test_keys: None,
            rate_limit_pps: 1000,
            rate_burst: 100,
        })
        .unwrap();
    table.start(&sid).unwrap();

    let reply = in_netns(&s, move || {
        // veth delivers XDP_TX frames only to a peer whose NAPI runs: an XDP
        // program (without entries, it passes everything) guarantees that.
        let peer = load();
        let _att = peer
            .attach(ifindex("rcd1").unwrap(), AttachMode::Native)
            .unwrap();
        let sock = UdpSocket::bind(("198.18.2.2", PORT_PEER)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let probe = twamp_sender(9, T1, 0x0001, &[]);
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            sock.send_to(&probe, ("198.18.2.1", PORT_US)).unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                return Some((buf[..n].to_vec(), from));
            }
        }
        None
    });
    let (payload, from) = reply.expect("no reflection from the daemon");
    assert_eq!(
        from,
        SocketAddr::new("198.18.2.1".parse().unwrap(), PORT_US)
    );
    assert_eq!(payload.len(), 41);
    assert_eq!(
        &payload[24..28],
        &9u32.to_be_bytes(),
        "Sender Sequence Number"
    );
    assert_eq!(&payload[28..36], &T1, "Sender Timestamp");
    assert!(table.activity(&sid).unwrap().reflected >= 1);

    // The daemon keeps the clock map fresh (every second).
    let c = table.maps().clock().unwrap();
    assert!(c.updated_ns > 0, "clock map written");

    let child = lab.child.take().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "daemon exit: {}", out.status);
    let counters = String::from_utf8_lossy(&out.stdout);
    assert!(
        counters.lines().any(|l| l.starts_with("reflected ")
            && l["reflected ".len()..].trim().parse::<u64>().unwrap_or(0) >= 1),
        "counters printed on exit: {counters}"
    );
    assert!(!has_xdp(&r, "rcd0"), "detached on SIGTERM");
    drop(table);
}

#[test]
fn fails_with_a_clear_message_and_nonzero_exit() {
    for (args, want) in [
        (&["--iface", "rc-no-such-if0"][..], "no network interface"),
        (&["--path", "socket"][..], "inside ricochet-control"),
        (&["--path", "xdp"][..], "--iface is required"),
        (
            &["--iface", "lo", "--queues", "0"][..],
            "--queues must be at least 1",
        ),
        (&["--iface", "lo", "--cores", "x"][..], "--cores"),
        (
            &["--iface", "lo", "--generic", "--hw-rx-timestamps"][..],
            "needs native XDP",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ricochet-reflector"))
            .args(args)
            .output()
            .expect("run ricochet-reflector");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_ricochet-reflector"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--iface",
        "--path",
        "--pin-dir",
        "--queues",
        "--cores",
        "--busy-poll",
        "--generic",
        "--keep-attached",
        "--hw-rx-timestamps",
        "Examples:",
    ] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
}
