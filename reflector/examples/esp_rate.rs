//! Hand measurement (issue 7): the zero-loss reflection rate of the AF_XDP
//! path with ESP (ESP-in-UDP, AES-GCM-128, transport mode, unauthenticated
//! TWAMP inside) next to the plain AF_XDP path (authenticated TWAMP, the
//! poller's HMAC/AES work, no ESP), in the testkit lab.
//!
//! ```sh
//! cargo build --release -p ricochet-reflector --bins --examples
//! sudo target/release/examples/esp_rate --secs 1 --max-pps 400000
//! ```
//!
//! Starts `ricochet-reflector --path afxdp` in the reflector namespace,
//! programs one session of each kind through its pins, then for each target
//! a bounded binary search: a trial sends `rate × secs` precomputed probes
//! paced from one UDP socket in the sender namespace and counts the
//! replies; zero loss = every probe answered. Prints one line per trial and
//! the result. The generator's own ceiling (send rate reached) is printed
//! too: a result at that ceiling means the generator, not the reflector,
//! was the limit. Every namespace, process and pin is removed at the end.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::{
    EspCipher, EspKeys, PacketRole, SessionKeys, TestKeys, TestProtection,
};
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::bpf::{
    ifindex, AttachMode, BpfSessionTable, LoadOptions, XdpProgram, PINNED_MAPS,
};
use ricochet_reflector::session_table::{
    EspInner, EspLifetime, EspMode, EspSaSpec, SessionSpec, SessionTable,
};
use ricochet_testkit::lab::{workspace_bin, Lab, Side, REFLECTOR_V4, SENDER_V4};

fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: an open namespace descriptor; setns affects this thread only.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

struct Cleanup {
    child: Option<Child>,
    pins: PathBuf,
    peer_pins: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        for d in [&self.pins, &self.peer_pins] {
            for m in PINNED_MAPS {
                let _ = std::fs::remove_file(d.join(m));
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Sends `probes` paced at `rate` from `sock` to `to` while another thread
/// counts replies; returns (sent, received, achieved send rate).
fn trial(sock: &UdpSocket, to: SocketAddr, probes: &[Vec<u8>], rate: u64) -> (u64, u64, f64) {
    let rx = sock.try_clone().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (g, d) = (Arc::clone(&got), Arc::clone(&done));
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut quiet_since: Option<Instant> = None;
        loop {
            match rx.recv_from(&mut buf) {
                Ok(_) => {
                    g.fetch_add(1, Ordering::Relaxed);
                    quiet_since = None;
                }
                Err(_) => {
                    if d.load(Ordering::Relaxed) {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_millis(300) {
                            break;
                        }
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let ns_per = 1e9 / rate as f64;
    for (i, p) in probes.iter().enumerate() {
        let due = start + Duration::from_nanos((i as f64 * ns_per) as u64);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let _ = sock.send_to(p, to);
    }
    let took = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    (
        probes.len() as u64,
        got.load(Ordering::Relaxed),
        probes.len() as f64 / took,
    )
}

fn arg(name: &str, default: u64) -> u64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "esp_rate: zero-loss rate of ESP vs plain AF_XDP reflection in the lab\n\n\
             usage: esp_rate [--secs N] [--max-pps N] [--steps N]\n\
             example: sudo target/release/examples/esp_rate --secs 1 --max-pps 400000"
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("esp_rate: needs root (namespaces, XDP); run it with sudo");
        std::process::exit(2);
    }
    let secs = arg("--secs", 1).clamp(1, 10);
    let max_pps = arg("--max-pps", 400_000).clamp(1000, 5_000_000);
    let steps = arg("--steps", 9).clamp(1, 20);

    eprintln!("esp_rate: lab up");
    let lab = Lab::up("er");
    let s_ns = lab.netns(Side::Sender);
    let r_if = lab.iface(Side::Reflector);
    assert!(lab
        .run(
            Side::Sender,
            "ethtool",
            &["-K", &lab.iface(Side::Sender), "tx", "off"]
        )
        .status
        .success());
    assert!(lab
        .run(Side::Sender, "ping", &["-c1", "-W3", "198.18.0.2"])
        .status
        .success());
    let pid = std::process::id();
    let mut clean = Cleanup {
        child: None,
        pins: PathBuf::from(format!("/sys/fs/bpf/ricochet-esprate-{pid}")),
        peer_pins: PathBuf::from(format!("/sys/fs/bpf/ricochet-esprate-peer-{pid}")),
    };
    // an XDP program on the sender's end so that veth runs its NAPI
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (peer_ns, peer_if, peer_pins) = (
        s_ns.clone(),
        lab.iface(Side::Sender),
        clean.peer_pins.clone(),
    );
    let peer = std::thread::spawn(move || {
        enter(&peer_ns);
        let p = XdpProgram::load(&LoadOptions {
            pin_dir: peer_pins,
            bind_ifindex: None,
        })
        .expect("load peer XDP");
        let att = p
            .attach(ifindex(&peer_if).unwrap(), AttachMode::Native)
            .unwrap();
        ready_tx.send(()).unwrap();
        let _ = stop_rx.recv();
        drop(att);
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    eprintln!("esp_rate: peer XDP attached, starting the daemon");

    let pins = clean.pins.to_str().unwrap().to_owned();
    let bin = workspace_bin("ricochet-reflector");
    let mut child = lab.spawn(
        Side::Reflector,
        &bin,
        &["--path", "afxdp", "--iface", &r_if, "--pin-dir", &pins],
    );
    let err = child.stderr.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = line_tx.send(l);
        }
    });
    clean.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = line_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("daemon did not start");
        if l.contains("poller(s)") {
            break;
        }
    }
    eprintln!("esp_rate: daemon up, programming sessions");
    let registry = std::env::temp_dir().join(format!("ricochet-esprate-{pid}.sessions"));
    let mut table = BpfSessionTable::open(&clean.pins, &registry).unwrap();
    let session = |sid: u8, port: u16, security, keys: Option<SessionKeys>| SessionSpec {
        sid: Sid([sid; 16]),
        sender: SocketAddr::from((SENDER_V4, port)),
        reflector: SocketAddr::from((REFLECTOR_V4, 862)),
        security,
        format: SessionFormat::new(if keys.is_some() {
            TestSecurity::Authenticated
        } else {
            TestSecurity::Unauthenticated
        }),
        dscp: 0,
        test_keys: keys,
        rate_limit_pps: 0,
        rate_burst: 0,
    };
    let tk = SessionKeys {
        aes: [0x11; 16],
        hmac: [0x22; 32],
    };
    table
        .add(session(1, 40000, SecurityMode::Unauthenticated, None))
        .unwrap();
    table.start(&Sid([1; 16])).unwrap();
    table
        .add(session(
            2,
            40001,
            SecurityMode::Authenticated,
            Some(tk.clone()),
        ))
        .unwrap();
    table.start(&Sid([2; 16])).unwrap();
    let k_in = EspKeys::gcm_from_keymat(&[0x31; 20]).unwrap();
    let k_out = EspKeys::gcm_from_keymat(&[0x32; 20]).unwrap();
    table
        .add_esp_sa(EspSaSpec {
            inbound_spi: 0x1001,
            outbound_spi: 0x2001,
            inbound_keys: k_in.clone(),
            outbound_keys: k_out,
            esn: false,
            replay_window: 4096,
            lifetime: EspLifetime::default(),
            mode: EspMode::Transport,
            udp_encap: true,
            local: IpAddr::V4(REFLECTOR_V4),
            inner: EspInner::Session(Sid([1; 16])),
        })
        .unwrap();

    let (res_tx, res_rx) = mpsc::channel();
    let s_ns2 = s_ns.clone();
    std::thread::spawn(move || {
        enter(&s_ns2);
        let esp_sock = UdpSocket::bind(SocketAddr::from((SENDER_V4, 4500))).unwrap();
        let plain_sock = UdpSocket::bind(SocketAddr::from((SENDER_V4, 40001))).unwrap();
        for s in [&esp_sock, &plain_sock] {
            let fd = s.as_raw_fd();
            let size: libc::c_int = 8 << 20;
            // SAFETY: setsockopt with a valid int option value.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    4,
                );
            }
        }
        let cipher = EspCipher::new(&k_in).unwrap();
        let keys = TestKeys::new(&tk);
        let mut esp_seq = 0u64;
        let mut esp_probes = |n: u64| -> Vec<Vec<u8>> {
            (0..n)
                .map(|i| {
                    let mut udp = 40000u16.to_be_bytes().to_vec();
                    udp.extend_from_slice(&862u16.to_be_bytes());
                    udp.extend_from_slice(&(8u16 + 41).to_be_bytes());
                    udp.extend_from_slice(&[0, 0]);
                    let mut t = vec![0u8; 41];
                    t[..4].copy_from_slice(&(i as u32).to_be_bytes());
                    t[12..14].copy_from_slice(&0x8001u16.to_be_bytes());
                    udp.extend_from_slice(&t);
                    esp_seq += 1;
                    let po = cipher.payload_offset();
                    let mut b = vec![0u8; cipher.sealed_len(udp.len())];
                    b[po..po + udp.len()].copy_from_slice(&udp);
                    let n = cipher
                        .seal(0x1001, esp_seq, false, 17, udp.len(), &mut b)
                        .unwrap();
                    b.truncate(n);
                    b
                })
                .collect()
        };
        let plain_probes = |n: u64| -> Vec<Vec<u8>> {
            (0..n)
                .map(|i| {
                    let mut b = vec![0u8; 112];
                    b[..4].copy_from_slice(&(i as u32).to_be_bytes());
                    b[12..14].copy_from_slice(&0x8001u16.to_be_bytes());
                    keys.protect(PacketRole::Sender, TestProtection::Authenticated, &mut b)
                        .unwrap();
                    b
                })
                .collect()
        };
        for target in ["plain-afxdp", "esp-afxdp"] {
            let (mut lo, mut hi) = (0u64, max_pps);
            let mut ceiling = 0f64;
            for _ in 0..steps {
                let rate = if lo == 0 { hi / 8 } else { (lo + hi) / 2 };
                let n = rate * secs;
                let (sock, to, probes) = if target == "esp-afxdp" {
                    (
                        &esp_sock,
                        SocketAddr::from((REFLECTOR_V4, 4500)),
                        esp_probes(n),
                    )
                } else {
                    (
                        &plain_sock,
                        SocketAddr::from((REFLECTOR_V4, 862)),
                        plain_probes(n),
                    )
                };
                let (sent, got, achieved) = trial(sock, to, &probes, rate);
                ceiling = ceiling.max(achieved);
                let ok = got == sent;
                println!(
                    "{target}: rate {rate} pps, sent {sent}, replies {got}, loss {:.4} %, generator reached {:.0} pps",
                    100.0 * (sent - got.min(sent)) as f64 / sent as f64,
                    achieved
                );
                if ok && achieved >= rate as f64 * 0.98 {
                    lo = rate;
                } else {
                    hi = rate;
                }
                if hi - lo < max_pps / 200 {
                    break;
                }
            }
            res_tx.send((target, lo, ceiling)).unwrap();
        }
    });
    for _ in 0..2 {
        let (target, pps, ceiling) = res_rx.recv().unwrap();
        let _ = writeln!(
            std::io::stdout(),
            "RESULT {target}: zero-loss {pps} pps ({}-s trials; generator ceiling {ceiling:.0} pps)",
            secs
        );
    }
    if let Some(a) = table.esp_sa_activity(0x1001) {
        println!("esp SA counters: {a:?}");
    }
    drop(table);
    let _ = std::fs::remove_file(&registry);
    drop(stop_tx);
    let _ = peer.join();
    // the daemon's own statistics (IPsec cost on each side of T2/T3)
    let mut child = clean.child.take().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    for l in line_rx.try_iter() {
        if l.starts_with("poller queue") {
            println!("{l}");
        }
    }
}
