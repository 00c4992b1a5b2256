//! Verifier and attach tests on a real device: a veth pair in a temporary
//! network namespace (addresses from 198.18.0.0/15, RFC 2544 benchmarking),
//! deleted afterwards even when the test fails. No traffic leaves the
//! namespaces.
//!
//! Needs root and iproute2 (CI runs as root; scripts/setup.sh installs it).

mod xdp_util;

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use ricochet_reflector::bpf::{
    ifindex, AttachMode, ClockState, Counter, EntryConfig, LoadOptions, Maps, Mode, SessionKey,
    XdpProgram,
};
use xdp_util::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip(8)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip(8)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces deleted on drop (also on panic).
struct Netns(Vec<String>);

impl Netns {
    fn new(names: &[&str]) -> Netns {
        let ns = Netns(
            names
                .iter()
                .map(|n| format!("{n}{}", std::process::id()))
                .collect(),
        );
        for n in &ns.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            ip(&["netns", "add", n]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (setns
/// changes only the calling thread, so the test thread stays put).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: `file` is an open network-namespace file descriptor that
        // stays open for the call; setns only affects this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

#[test]
fn loads_with_and_without_device_binding_and_attaches_natively() {
    if skip() {
        return;
    }
    let ns = Netns::new(&["rcxdpv"]);
    let n = ns.0[0].clone();
    ip(&[
        "-n", &n, "link", "add", "rcv0", "type", "veth", "peer", "name", "rcv1",
    ]);
    ip(&["-n", &n, "addr", "add", "198.18.0.1/30", "dev", "rcv0"]);
    ip(&["-n", &n, "addr", "add", "198.18.0.2/30", "dev", "rcv1"]);
    ip(&["-n", &n, "link", "set", "rcv0", "up"]);
    ip(&["-n", &n, "link", "set", "rcv1", "up"]);

    let n2 = n.clone();
    in_netns(&n, move || {
        let idx = ifindex("rcv0").expect("rcv0 ifindex");
        assert!(ifindex("no-such-if0").is_err());

        // Device-bound: the variant with bpf_xdp_metadata_rx_timestamp.
        let dir = pin_dir();
        let bound = XdpProgram::load(&LoadOptions {
            pin_dir: dir.clone(),
            bind_ifindex: Some(idx),
        })
        .expect("device-bound program passes the verifier");
        assert_eq!(bound.bound_ifindex(), Some(idx));
        // BPF_PROG_TEST_RUN is refused for device-bound programs.
        assert!(bound.test_run(&[0u8; 64]).is_err());
        let att = bound
            .attach(idx, AttachMode::Native)
            .expect("native attach");
        assert!(!att.is_generic());
        let shown = ip_out(&["-n", &n2, "link", "show", "rcv0"]);
        assert!(shown.contains("xdp"), "ip link shows XDP: {shown}");
        // A second program is refused while one is attached.
        assert!(bound.attach(idx, AttachMode::Native).is_err());
        att.detach().expect("detach");
        let shown = ip_out(&["-n", &n2, "link", "show", "rcv0"]);
        assert!(!shown.contains("prog/xdp"), "detached: {shown}");
        bound.unpin_maps().unwrap();
        drop(bound);
        let _ = std::fs::remove_dir(&dir);

        // Not bound: loads and attaches too; the attachment is dropped.
        let p = load();
        {
            let _att = p.attach(idx, AttachMode::NativeOrGeneric).expect("attach");
        }
        let shown = ip_out(&["-n", &n2, "link", "show", "rcv0"]);
        assert!(!shown.contains("prog/xdp"), "detached on drop: {shown}");
    });
    drop(ns);
}

#[test]
fn pinned_maps_are_shared_and_survive_a_reload() {
    if skip() {
        return;
    }
    let dir = pin_dir();
    let opts = LoadOptions {
        pin_dir: dir.clone(),
        bind_ifindex: None,
    };
    let first = XdpProgram::load(&opts).unwrap();
    let key = SessionKey::new(
        SocketAddr::new(IpAddr::V4(V4_US), PORT_US),
        SocketAddr::new(IpAddr::V4(V4_PEER), PORT_PEER),
    )
    .unwrap();
    first
        .maps()
        .insert_session(&key, &EntryConfig::new(Mode::Twamp, 100))
        .unwrap();
    // duplicate insert is refused
    assert!(first
        .maps()
        .insert_session(&key, &EntryConfig::new(Mode::Twamp, 100))
        .is_err());
    // the control plane's view: the pins
    let cp = Maps::open_pinned(&dir).unwrap();
    assert_eq!(cp.session_keys().unwrap(), vec![key]);
    cp.write_clock(&ClockState {
        tai_offset: 37,
        error_estimate: 0x8001,
        flags: 0,
        updated_ns: 1,
    })
    .unwrap();
    // a restarted data plane reuses the pinned maps
    drop(first);
    let second = XdpProgram::load(&opts).unwrap();
    assert!(second.maps().session(&key).unwrap().is_some());
    assert_eq!(second.maps().clock().unwrap().tai_offset, 37);
    second.unpin_maps().unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

/// End to end over a veth pair: a UDP socket in the sender namespace sends
/// a 14-octet TWAMP probe; the XDP program in the reflector namespace
/// answers with XDP_TX; the socket receives the 41-octet reply.
#[test]
fn reflects_real_traffic_over_veth() {
    if skip() {
        return;
    }
    let ns = Netns::new(&["rcxdpr", "rcxdps"]);
    let (r, s) = (ns.0[0].clone(), ns.0[1].clone());
    ip(&[
        "-n", &r, "link", "add", "rce0", "type", "veth", "peer", "name", "rce1", "netns", &s,
    ]);
    ip(&["-n", &r, "addr", "add", "198.18.1.1/30", "dev", "rce0"]);
    ip(&["-n", &s, "addr", "add", "198.18.1.2/30", "dev", "rce1"]);
    ip(&["-n", &r, "link", "set", "rce0", "up"]);
    ip(&["-n", &s, "link", "set", "rce1", "up"]);
    // A veth hands packets over with checksum offload pending unless TX
    // checksumming is off; a probe on a real wire is always complete.
    let out = Command::new("ip")
        .args(["netns", "exec", &s, "ethtool", "-K", "rce1", "tx", "off"])
        .output()
        .expect("run ethtool");
    assert!(
        out.status.success(),
        "ethtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let prog_ns = r.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let reflector = std::thread::spawn(move || {
        in_netns(&prog_ns, move || {
            let p = load();
            let local = SocketAddr::new("198.18.1.1".parse().unwrap(), PORT_US);
            let remote = SocketAddr::new("198.18.1.2".parse().unwrap(), PORT_PEER);
            p.maps()
                .insert_session(
                    &SessionKey::new(local, remote).unwrap(),
                    &EntryConfig::new(Mode::Twamp, 1000),
                )
                .unwrap();
            let _att = p
                .attach(ifindex("rce0").unwrap(), AttachMode::Native)
                .unwrap();
            ready_tx.send(()).unwrap();
            let _ = rx.recv_timeout(Duration::from_secs(20));
            p.maps().counters().unwrap()
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("reflector ready");

    let reply = in_netns(&s, move || {
        // veth delivers XDP_TX frames only to a peer whose NAPI runs: an XDP
        // program on it guarantees that. Ours, without entries, passes all.
        let peer = load();
        let _peer_att = peer
            .attach(ifindex("rce1").unwrap(), AttachMode::Native)
            .unwrap();
        let sock = UdpSocket::bind(("198.18.1.2", PORT_PEER)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let probe = twamp_sender(5, T1, 0x0001, &[]);
        let mut buf = [0u8; 2048];
        // ARP resolution may eat the first probe: retry a bounded number of times.
        for _ in 0..10 {
            sock.send_to(&probe, ("198.18.1.1", PORT_US)).unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                return Some((buf[..n].to_vec(), from));
            }
        }
        None
    });
    tx.send(()).unwrap();
    let counters = reflector.join().expect("reflector thread");
    let (payload, from) = reply.unwrap_or_else(|| {
        panic!(
            "no reflected packet; counters {:?}",
            counters.iter().collect::<Vec<_>>()
        )
    });
    assert_eq!(
        from,
        SocketAddr::new("198.18.1.1".parse().unwrap(), PORT_US)
    );
    assert_eq!(payload.len(), 41);
    assert_eq!(
        &payload[24..28],
        &5u32.to_be_bytes(),
        "Sender Sequence Number"
    );
    assert_eq!(&payload[28..36], &T1, "Sender Timestamp");
    assert_eq!(payload[40], 64, "Sender TTL (Linux default)");
    assert!(counters.get(Counter::Reflected) >= 1);
    drop(ns);
}
