//! ESP-protected TWAMP end to end with strongSwan as the peer: charon with
//! the kernel-libipsec plugin (this kernel has no ESP) in the sender
//! namespace, Ricochet's IKEv2 endpoint (`ricochet-ike-peer`, the sans-IO
//! `ike` crate on real sockets) negotiating a CHILD_SA with it for the test
//! addresses only, and `ricochet-reflector --path afxdp` serving that
//! CHILD_SA from its pinned maps. The test plays the control plane: it
//! reads the CHILD_SA keys the IKE endpoint derived and installs them with
//! `BpfSessionTable::add_esp_sa`. A UDP socket in the sender namespace
//! sends TWAMP test packets into charon's TUN device; charon encrypts them
//! (tunnel mode, ESP-in-UDP 4500, AES-GCM-16-128, its own random IVs), the
//! pollers decrypt, reflect and encrypt, and charon decrypts the replies:
//! every probe comes back intact, and the SA's counters say so.
//!
//! Needs root, iproute2, nsenter, ethtool and the strongSwan packages
//! `scripts/setup.sh` installs; the workspace binaries `ricochet-reflector`
//! and `ricochet-ike-peer` (`cargo build --workspace`; `make test` builds
//! them). `RICOCHET_SKIP_BPF_TESTS=1` skips.

mod xdp_util;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::EspKeys;
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::bpf::{ifindex, AttachMode, BpfSessionTable, PINNED_MAPS};
use ricochet_reflector::session_table::{
    EspInner, EspLifetime, EspMode, EspSaSpec, SessionSpec, SessionTable,
};
use ricochet_testkit::charon::{self, text, Charon, Config};
use ricochet_testkit::lab::{workspace_bin, Lab, Side, REFLECTOR_V4};
use xdp_util::{load, skip};

const PSK: &str = "lab-only-psk-0123456789abcdef";
const INNER_S: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const INNER_R: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);

fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: an open namespace descriptor; setns affects this thread only.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A temporary directory, removed on drop.
struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A spawned process killed (by PID) on drop, with its stdout lines.
struct Proc {
    child: Child,
    lines: Option<Receiver<String>>,
    seen: Vec<String>,
}

impl Proc {
    fn new(mut child: Child) -> Proc {
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for an output line starting with `prefix`.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let rx = self.lines.as_ref().expect("stdout captured");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("no `{prefix}` line; saw {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pins and registry of the daemon, removed on drop.
struct Pins(PathBuf, PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        for m in PINNED_MAPS {
            let _ = std::fs::remove_file(self.0.join(m));
        }
        let _ = std::fs::remove_dir(&self.0);
        let _ = std::fs::remove_file(&self.1);
    }
}

fn field<'l>(line: &'l str, key: &str) -> &'l str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// charon with kernel-libipsec in the sender namespace (private /run, its
/// own strongswan.conf and vici socket), configured as the CHILD_SA's
/// responder for 198.19.0.1/32 <-> 198.19.0.2/32 with AES-GCM-16-128.
fn start_charon<'a>(lab: &'a Lab, dir: &Path) -> Charon<'a> {
    let swanctl = format!(
        "connections {{\n  c {{\n    version = 2\n    local_addrs = 198.18.0.1\n    remote_addrs = 198.18.0.2\n    proposals = aes128gcm16-prfsha256-x25519\n    rekey_time = 0\n    dpd_delay = 0\n    mobike = no\n    local {{\n      auth = psk\n      id = s.ike.test\n    }}\n    remote {{\n      auth = psk\n      id = r.ike.test\n    }}\n    children {{\n      t {{\n        local_ts = {INNER_S}/32\n        remote_ts = {INNER_R}/32\n        esp_proposals = aes128gcm16\n        rekey_time = 0\n      }}\n    }}\n  }}\n}}\nsecrets {{\n  ike-1 {{\n    id-1 = s.ike.test\n    id-2 = r.ike.test\n    secret = \"{PSK}\"\n  }}\n}}\n"
    );
    Charon::start(
        lab,
        dir,
        &Config {
            libipsec_inner: Some(&format!("{INNER_S}/32")),
            log_levels: &[],
            swanctl: &swanctl,
        },
    )
}

#[test]
fn twamp_in_a_charon_child_sa_is_reflected_by_the_afxdp_pollers() {
    if skip() {
        return;
    }
    charon::require();
    let ike_peer = workspace_bin("ricochet-ike-peer");
    let reflector_bin = workspace_bin("ricochet-reflector");
    let lab = Lab::up("ss");
    let pid = std::process::id();
    let tmp = Tmp(std::env::temp_dir().join(format!("ricochet-esp-ss-{pid}")));
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(tmp.0.join("run")).unwrap();
    let pins = Pins(
        PathBuf::from(format!("/sys/fs/bpf/ricochet-esp-ss-{pid}")),
        tmp.0.join("sessions"),
    );
    let s_ns = lab.netns(Side::Sender);
    let out = lab.run(
        Side::Sender,
        "ethtool",
        &["-K", &lab.iface(Side::Sender), "tx", "off"],
    );
    assert!(out.status.success(), "ethtool tx off");

    // An XDP program (no entries: passes everything) on the sender's veth
    // end, so that veth runs its NAPI and delivers what the pollers send.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (ns, iface) = (s_ns.clone(), lab.iface(Side::Sender));
    let peer_xdp = std::thread::spawn(move || {
        enter(&ns);
        let p = load();
        let att = p
            .attach(ifindex(&iface).unwrap(), AttachMode::Native)
            .expect("attach peer XDP");
        ready_tx.send(()).unwrap();
        let _ = stop_rx.recv();
        drop(att);
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();

    // The data plane.
    let mut daemon = lab.spawn(
        Side::Reflector,
        &reflector_bin,
        &[
            "--path",
            "afxdp",
            "--iface",
            &lab.iface(Side::Reflector),
            "--pin-dir",
            pins.0.to_str().unwrap(),
        ],
    );
    let err = daemon.stderr.take().unwrap();
    let (dtx, drx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = dtx.send(l);
        }
    });
    let _daemon = Proc::new(daemon);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !drx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("daemon did not start its poller")
        .contains("poller(s)")
    {}

    // The peer, and Ricochet's IKE endpoint initiating the CHILD_SA.
    let _charon = start_charon(&lab, &tmp.0);
    let psk = tmp.0.join("psk");
    std::fs::write(&psk, format!("s.ike.test {PSK}\n")).unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut ike = Proc::new(
        lab.command(Side::Reflector, &ike_peer)
            .args(["--listen", "198.18.0.2", "--id", "r.ike.test", "--psk-file"])
            .arg(&psk)
            .args(["--insecure-print-keys", "--run-ms", "30000"])
            .args(["--initiate", "198.18.0.1", "--peer-id", "s.ike.test"])
            .args(["--dh", "31", "--child", "198.19.0.2,198.19.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ricochet-ike-peer"),
    );
    ike.expect("ready");
    ike.expect("established");
    let child = ike.expect("child ");
    assert_eq!(field(&child, "udp_encap"), "true", "libipsec: ESP in UDP");
    let keys = ike.expect("childkeys");
    let spi_i = u32::from_str_radix(field(&child, "spi_i"), 16).unwrap();
    let spi_r = u32::from_str_radix(field(&child, "spi_r"), 16).unwrap();
    let sk_ei = ricochet_testkit::unhex(field(&keys, "sk_ei"));
    let sk_er = ricochet_testkit::unhex(field(&keys, "sk_er"));

    // The control plane: a TWAMP session between the tunnel's inner
    // addresses, carried by the CHILD_SA. We initiated it: charon sends
    // with our SPI (spi_i) and the responder's keys (sk_er), we reply with
    // its SPI (spi_r) and the initiator's keys (sk_ei).
    let mut table = BpfSessionTable::open(&pins.0, &pins.1).expect("open pins");
    let sid = Sid([0x55; 16]);
    table
        .add(SessionSpec {
            sid,
            sender: SocketAddr::from((INNER_S, 40000)),
            reflector: SocketAddr::from((INNER_R, 862)),
            security: SecurityMode::Unauthenticated,
            format: SessionFormat::new(TestSecurity::Unauthenticated),
            dscp: 0,
            test_keys: None,
            rate_limit_pps: 0,
            rate_burst: 0,
        })
        .unwrap();
    table.start(&sid).unwrap();
    table
        .add_esp_sa(EspSaSpec {
            inbound_spi: spi_i,
            outbound_spi: spi_r,
            inbound_keys: EspKeys::gcm_from_keymat(&sk_er).unwrap(),
            outbound_keys: EspKeys::gcm_from_keymat(&sk_ei).unwrap(),
            esn: false,
            replay_window: 64,
            lifetime: EspLifetime::default(),
            mode: EspMode::Tunnel,
            udp_encap: true,
            local: IpAddr::V4(REFLECTOR_V4),
            inner: EspInner::Session(sid),
        })
        .unwrap();

    // The sender: test packets into charon's TUN device.
    let out = lab.run(
        Side::Sender,
        "ip",
        &[
            "route",
            "add",
            &format!("{INNER_R}/32"),
            "dev",
            "ipsec0",
            "src",
            &INNER_S.to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (res_tx, res_rx) = mpsc::channel();
    std::thread::spawn(move || {
        enter(&s_ns);
        let sock = UdpSocket::bind(SocketAddr::from((INNER_S, 40000))).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut replies = Vec::new();
        let mut buf = [0u8; 2048];
        for i in 0..20u32 {
            let mut probe = vec![0u8; 41];
            probe[..4].copy_from_slice(&i.to_be_bytes());
            probe[4..12].copy_from_slice(&[0xe8, 0xa1, 0xb2, 0xc6, 0, 0, 0, 9]);
            probe[12..14].copy_from_slice(&0x8001u16.to_be_bytes());
            sock.send_to(&probe, (INNER_R, 862)).unwrap();
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => replies.push((buf[..n].to_vec(), from)),
                Err(e) => {
                    let _ = res_tx.send(Err(format!("probe {i}: {e}")));
                    return;
                }
            }
        }
        let _ = res_tx.send(Ok(replies));
    });
    let replies = match res_rx.recv_timeout(Duration::from_secs(60)).unwrap() {
        Ok(r) => r,
        Err(e) => panic!(
            "{e}; SA counters {:?}; charon log:\n{}",
            table.esp_sa_activity(spi_i),
            std::fs::read_to_string(tmp.0.join("charon.log")).unwrap_or_default()
        ),
    };
    assert_eq!(replies.len(), 20, "every probe reflected");
    for (i, (t, from)) in replies.iter().enumerate() {
        assert_eq!(*from, SocketAddr::from((INNER_R, 862)));
        assert_eq!(t.len(), 41);
        assert_eq!(
            &t[..4],
            &(i as u32).to_be_bytes(),
            "reflector sequence number"
        );
        assert_eq!(
            &t[24..28],
            &(i as u32).to_be_bytes(),
            "Sender Sequence Number"
        );
        assert_eq!(&t[28..36], &[0xe8, 0xa1, 0xb2, 0xc6, 0, 0, 0, 9], "T1");
        let t2 = u64::from_be_bytes(t[16..24].try_into().unwrap());
        let t3 = u64::from_be_bytes(t[4..12].try_into().unwrap());
        assert!(t2 != 0 && t2 <= t3);
        assert_ne!(t[40], 0, "Sender TTL: the inner packet's");
    }
    let a = table.esp_sa_activity(spi_i).unwrap();
    assert_eq!((a.rx_packets, a.tx_packets), (20, 20), "{a:?}");
    assert_eq!(
        (a.replay_drops, a.icv_failures, a.selector_drops),
        (0, 0, 0)
    );
    drop(table);
    drop(stop_tx);
    let _ = peer_xdp.join();
}
