//! ESP-protected TWAMP through the real daemon, end to end in the lab
//! (testkit namespaces, 198.18.0.0/15 only, deleted on drop even when a
//! test fails): `ricochet-reflector --path afxdp` in the reflector
//! namespace, the test as the control plane through the daemon's pins
//! (`BpfSessionTable::add_esp_sa`, as ricochet-control will do it for an
//! IKEv2 CHILD_SA), and an ESP-in-UDP (RFC 3948) Session-Sender built here
//! from the protocol crate's ESP cipher in the sender namespace.
//!
//! Checked: every probe is reflected, decrypts with the SA's outbound keys
//! under its outbound SPI with sequence numbers 1, 2, 3, … and carries a
//! correct inner TWAMP reply (reflector sequence numbers without a gap, the
//! sender's fields echoed, Sender TTL as received, inner UDP checksum);
//! a replayed and a tampered packet are never reflected and are counted
//! (replay drops, ICV failures) while the genuine packet behind the
//! tampered one still passes; a rekey in the middle of the stream (new SA
//! added; replies stay on the old outbound SPI until a packet authenticates
//! on the new SA, then all switch to its outbound SPI; old SA still
//! accepted, then removed) loses nothing; the daemon reports the IPsec cost (T2 → opened,
//! T3 → sealed) on exit.
//!
//! Needs root, iproute2, nsenter and ethtool. `RICOCHET_SKIP_BPF_TESTS=1`
//! skips.

mod xdp_util;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::{EspCipher, EspKeys, ReplayWindow};
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::bpf::{
    ifindex, AttachMode, BpfSessionTable, Counter, EspState, PINNED_MAPS,
};
use ricochet_reflector::session_table::{
    EspInner, EspLifetime, EspMode, EspSaSpec, SessionSpec, SessionTable,
};
use ricochet_testkit::lab::{Lab, Side, REFLECTOR_V4, SENDER_V4};
use xdp_util::{load, skip, udp_checksum};

const TEST_PORT: u16 = 862;
const SENDER_PORT: u16 = 40000;
const NATT: u16 = 4500;

fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).expect("open netns");
    // SAFETY: `file` is an open network-namespace descriptor that stays
    // open for the call; setns only affects this thread.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The daemon, its pins and registry; stopped and removed on drop.
struct Daemon {
    child: Option<Child>,
    pins: PathBuf,
    registry: PathBuf,
    stderr: Option<mpsc::Receiver<String>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in PINNED_MAPS {
            let _ = std::fs::remove_file(self.pins.join(m));
        }
        let _ = std::fs::remove_dir(&self.pins);
        let _ = std::fs::remove_file(&self.registry);
    }
}

/// Keeps an XDP program (no entries: it passes everything) on the sender's
/// veth end so that its NAPI runs and veth delivers every frame.
struct PeerXdp {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerXdp {
    fn attach(ns: String, iface: String) -> PeerXdp {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let p = load();
            let att = p
                .attach(ifindex(&iface).unwrap(), AttachMode::Native)
                .expect("attach peer XDP");
            ready_tx.send(()).unwrap();
            let _ = stop_rx.recv();
            drop(att);
            drop(p);
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("peer XDP attached");
        PeerXdp {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for PeerXdp {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One direction's keys of a test SA pair.
fn gcm(seed: u8) -> EspKeys {
    let keymat: Vec<u8> = (0..20u8).map(|i| i.wrapping_mul(31) ^ seed).collect();
    EspKeys::gcm_from_keymat(&keymat).unwrap()
}

/// The Session-Sender's side of one SA pair.
struct PeerSa {
    /// SPI the reflector chose (we send with it) and our sending cipher.
    spi_out: u32,
    tx: EspCipher,
    seq: u64,
    /// SPI we chose (the reflector's replies) and our receiving cipher.
    spi_in: u32,
    rx: EspCipher,
    window: ReplayWindow,
}

impl PeerSa {
    fn new(spi_out: u32, spi_in: u32, out: &EspKeys, inn: &EspKeys) -> PeerSa {
        PeerSa {
            spi_out,
            tx: EspCipher::new(out).unwrap(),
            seq: 0,
            spi_in,
            rx: EspCipher::new(inn).unwrap(),
            window: ReplayWindow::new(64, false),
        }
    }

    /// A transport-mode ESP packet holding the UDP datagram 40000 → 862
    /// with a 41-octet unauthenticated TWAMP sender packet.
    fn probe(&mut self, twamp_seq: u32) -> Vec<u8> {
        let mut twamp = vec![0u8; 41];
        twamp[..4].copy_from_slice(&twamp_seq.to_be_bytes());
        twamp[4..12].copy_from_slice(&[0xe8, 0xa1, 0xb2, 0xc6, 0, 0, 0, 1]);
        twamp[12..14].copy_from_slice(&0x8001u16.to_be_bytes());
        let mut udp = SENDER_PORT.to_be_bytes().to_vec();
        udp.extend_from_slice(&TEST_PORT.to_be_bytes());
        udp.extend_from_slice(&((8 + twamp.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&twamp);
        let c = udp_checksum(&SENDER_V4.octets(), &REFLECTOR_V4.octets(), &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        self.seq += 1;
        let po = self.tx.payload_offset();
        let mut buf = vec![0u8; self.tx.sealed_len(udp.len())];
        buf[po..po + udp.len()].copy_from_slice(&udp);
        let n = self
            .tx
            .seal(self.spi_out, self.seq, false, 17, udp.len(), &mut buf)
            .unwrap();
        buf.truncate(n);
        buf
    }

    /// Opens a reply of this SA and returns the inner TWAMP payload.
    fn open(&mut self, pkt: &mut [u8]) -> Vec<u8> {
        assert_eq!(&pkt[..4], &self.spi_in.to_be_bytes(), "reply SPI");
        let seq = self
            .window
            .check(u32::from_be_bytes(pkt[4..8].try_into().unwrap()))
            .expect("fresh reply sequence number");
        let o = self.rx.open(pkt, None).expect("reply ICV");
        self.window.accept(o.seq).unwrap();
        assert_eq!(o.seq, seq);
        assert_eq!(o.next_header, 17, "transport mode: UDP");
        let udp = &pkt[o.payload.clone()];
        assert_eq!(&udp[0..2], &TEST_PORT.to_be_bytes(), "inner source port");
        assert_eq!(&udp[2..4], &SENDER_PORT.to_be_bytes(), "inner dest port");
        assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
        let mut z = udp.to_vec();
        z[6..8].fill(0);
        let want = udp_checksum(&REFLECTOR_V4.octets(), &SENDER_V4.octets(), &z);
        assert_eq!(&udp[6..8], &want.to_be_bytes(), "inner UDP checksum");
        udp[8..].to_vec()
    }
}

/// Waits for a reply on `sock`; `None` after `wait`.
fn recv(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(from, SocketAddr::from((REFLECTOR_V4, NATT)));
            Some(buf[..n].to_vec())
        }
        Err(_) => None,
    }
}

fn sa_spec(sid: Sid, spi_in: u32, spi_out: u32, inn: &EspKeys, out: &EspKeys) -> EspSaSpec {
    EspSaSpec {
        inbound_spi: spi_in,
        outbound_spi: spi_out,
        inbound_keys: inn.clone(),
        outbound_keys: out.clone(),
        esn: false,
        replay_window: 128,
        lifetime: EspLifetime::default(),
        mode: EspMode::Transport,
        udp_encap: true,
        local: IpAddr::V4(REFLECTOR_V4),
        inner: EspInner::Session(sid),
    }
}

#[test]
fn esp_in_udp_session_reflects_refuses_replays_and_survives_a_rekey() {
    if skip() {
        return;
    }
    let (lab, _peer, mut d) = rig("es", "udp");
    let sender_ns = lab.netns(Side::Sender);

    // The control plane: an unauthenticated TWAMP session carried in ESP.
    let mut table = BpfSessionTable::open(&d.pins, &d.registry).expect("open pins");
    let sid = Sid([0x5e; 16]);
    table
        .add(SessionSpec {
            sid,
            sender: SocketAddr::from((SENDER_V4, SENDER_PORT)),
            reflector: SocketAddr::from((REFLECTOR_V4, TEST_PORT)),
            security: SecurityMode::Unauthenticated,
            format: SessionFormat::new(TestSecurity::Unauthenticated),
            dscp: 0,
            test_keys: None,
            rate_limit_pps: 0,
            rate_burst: 0,
        })
        .unwrap();
    table.start(&sid).unwrap();
    // SA 1: the peer sends with SPI 0x1001 (our inbound), we reply with 0x2001.
    let (k1_in, k1_out) = (gcm(1), gcm(2));
    table
        .add_esp_sa(sa_spec(sid, 0x1001, 0x2001, &k1_in, &k1_out))
        .unwrap();

    let sock = in_netns(&sender_ns, || {
        UdpSocket::bind(SocketAddr::from((SENDER_V4, NATT))).expect("bind 4500")
    });
    let mut sa1 = PeerSa::new(0x1001, 0x2001, &k1_in, &k1_out);
    let mut next_refl = 0u32;
    let mut twamp_seq = 0u32;

    // 1. every probe reflected, reply ESP sequence numbers 1, 2, 3, ...
    for _ in 0..40 {
        let p = sa1.probe(twamp_seq);
        step_raw(&sock, &p, &mut sa1, twamp_seq, next_refl);
        next_refl += 1;
        twamp_seq += 1;
    }
    assert_eq!(sa1.window.top(), 40, "replies numbered 1..=40");

    // 2. a replayed packet: never reflected, counted
    let replayed = {
        sa1.seq = 9;
        sa1.probe(9_000) // ESP sequence number 10 again
    };
    sa1.seq = 40;
    sock.send_to(&replayed, (REFLECTOR_V4, NATT)).unwrap();
    assert!(
        recv(&sock, Duration::from_millis(400)).is_none(),
        "replay reflected"
    );
    // 3. a tampered packet: never reflected, counted; the genuine one behind
    //    it (same sequence number) still passes: the window moved only after
    //    a good ICV
    let genuine = sa1.probe(twamp_seq);
    sa1.seq -= 1;
    let mut tampered = genuine.clone();
    let at = tampered.len() - 20;
    tampered[at] ^= 0x01;
    sock.send_to(&tampered, (REFLECTOR_V4, NATT)).unwrap();
    assert!(
        recv(&sock, Duration::from_millis(400)).is_none(),
        "tampered reflected"
    );
    step_raw(&sock, &genuine, &mut sa1, twamp_seq, next_refl);
    next_refl += 1;
    twamp_seq += 1;
    sa1.seq += 1;
    let a1 = table.esp_sa_activity(0x1001).unwrap();
    assert_eq!(
        a1.redirected, 43,
        "every packet of SPI 0x1001 reached a poller"
    );
    assert_eq!(a1.replay_drops, 1, "{a1:?}");
    assert_eq!(a1.icv_failures, 1, "{a1:?}");
    assert_eq!(a1.rx_packets, 41);
    assert_eq!(a1.tx_packets, 41);
    assert_eq!(a1.tx_seq, 41);
    assert_eq!(a1.rekey_needed & EspState::REKEY_EXPIRED, 0);

    // 4. rekey mid-stream: SA 2 added; both inbound SPIs accepted. The
    //    peer may not have SA 2 yet (RFC 7296 §2.8): replies stay on SA 1's
    //    outbound SPI and counter until a packet authenticates on SA 2
    let (k2_in, k2_out) = (gcm(3), gcm(4));
    table
        .add_esp_sa(sa_spec(sid, 0x1002, 0x2002, &k2_in, &k2_out))
        .unwrap();
    let mut sa2 = PeerSa::new(0x1002, 0x2002, &k2_in, &k2_out);
    for _ in 0..5 {
        let p = sa1.probe(twamp_seq);
        step_raw(&sock, &p, &mut sa1, twamp_seq, next_refl);
        next_refl += 1;
        twamp_seq += 1;
    }
    // a forged packet on SA 2 authenticates nothing: still SA 1's half
    let mut forged = sa2.probe(twamp_seq);
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    sa2.seq -= 1;
    sock.send_to(&forged, (REFLECTOR_V4, NATT)).unwrap();
    assert!(
        recv(&sock, Duration::from_millis(400)).is_none(),
        "forged SA 2 packet reflected"
    );
    let p = sa1.probe(twamp_seq);
    step_raw(&sock, &p, &mut sa1, twamp_seq, next_refl);
    next_refl += 1;
    twamp_seq += 1;
    assert_eq!(
        sa1.window.top(),
        47,
        "SA 1's replies 42..=47 on SA 1's half"
    );
    // the first authenticated SA 2 packet switches every reply to SA 2
    for i in 0..20 {
        let p = if i % 2 == 0 {
            sa2.probe(twamp_seq)
        } else {
            sa1.probe(twamp_seq)
        };
        step_raw(&sock, &p, &mut sa2, twamp_seq, next_refl);
        next_refl += 1;
        twamp_seq += 1;
    }
    // the old SA goes; the new one carries on, nothing lost
    table.remove_esp_sa(0x1001).unwrap();
    for _ in 0..20 {
        let p = sa2.probe(twamp_seq);
        step_raw(&sock, &p, &mut sa2, twamp_seq, next_refl);
        next_refl += 1;
        twamp_seq += 1;
    }
    assert_eq!(sa2.window.top(), 40, "SA 2 replies numbered from 1");
    // a packet on the removed SPI is the stack's now (no reflection)
    let stale = sa1.probe(twamp_seq);
    sock.send_to(&stale, (REFLECTOR_V4, NATT)).unwrap();
    assert!(
        recv(&sock, Duration::from_millis(400)).is_none(),
        "removed SA reflected"
    );
    assert!(table.esp_sa_activity(0x1001).is_none());
    let a2 = table.esp_sa_activity(0x1002).unwrap();
    assert_eq!((a2.rx_packets, a2.tx_packets), (30, 40), "{a2:?}");
    assert_eq!((a2.replay_drops, a2.icv_failures), (0, 1), "the forgery");
    assert_eq!(next_refl, 87, "87 probes, 87 reflections");
    let c = table.maps().counters().unwrap();
    // SA 1: 43, 6 before the switch, then 10; SA 2: the forgery, 10 + 20
    assert_eq!(c.get(Counter::EspRedirected), 43 + 6 + 10 + 1 + 30, "{c:?}");
    assert_eq!(c.get(Counter::EspUnknownSpi), 1, "the removed SPI");

    // 5. the daemon reports the IPsec cost of every packet on exit
    let mut child = d.child.take().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let st = child.wait().unwrap();
    assert!(st.success(), "daemon exit {st}");
    let lines: Vec<String> = d.stderr.take().unwrap().iter().collect();
    let stats = lines
        .iter()
        .find(|l| l.starts_with("poller queue 0:"))
        .unwrap_or_else(|| panic!("no poller statistics in {lines:?}"));
    for h in ["esp_t2_to_open", "esp_t3_to_sealed"] {
        let at = stats
            .find(h)
            .unwrap_or_else(|| panic!("{h} missing: {stats}"));
        let count: u64 = stats[at..]
            .split("count: ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(count >= 81, "{h}: {count} in {stats}");
    }
    drop(table);
}

/// The lab, the sender-side XDP program and the daemon (`--path afxdp`)
/// with its pins, ready for the control plane.
fn rig(tag: &str, pin_tag: &str) -> (Lab, PeerXdp, Daemon) {
    let lab = Lab::up(tag);
    let sender_ns = lab.netns(Side::Sender);
    let out = lab.run(
        Side::Sender,
        "ethtool",
        &["-K", &lab.iface(Side::Sender), "tx", "off"],
    );
    assert!(out.status.success(), "ethtool tx off");
    let out = lab.run(Side::Sender, "ping", &["-c1", "-W3", "198.18.0.2"]);
    assert!(out.status.success(), "ARP resolved");
    let peer = PeerXdp::attach(sender_ns, lab.iface(Side::Sender));
    let pid = std::process::id();
    let mut d = Daemon {
        child: None,
        pins: PathBuf::from(format!("/sys/fs/bpf/ricochet-esp-{pin_tag}-{pid}")),
        registry: std::env::temp_dir().join(format!("ricochet-esp-{pin_tag}-{pid}.sessions")),
        stderr: None,
    };
    let pins = d.pins.to_str().unwrap().to_owned();
    let mut child = lab.spawn(
        Side::Reflector,
        env!("CARGO_BIN_EXE_ricochet-reflector"),
        &[
            "--path",
            "afxdp",
            "--iface",
            &lab.iface(Side::Reflector),
            "--pin-dir",
            &pins,
        ],
    );
    let (line_tx, line_rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    d.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = line_rx
            .recv_timeout(left)
            .expect("daemon did not report its pollers");
        if line.contains("1 poller(s)") {
            break;
        }
    }
    d.stderr = Some(line_rx);
    (lab, peer, d)
}

#[test]
fn raw_esp_tunnel_mode_with_aes_cbc_hmac_sha256() {
    if skip() {
        return;
    }
    let (lab, _peer, d) = rig("et", "raw");
    let inner_s = std::net::Ipv4Addr::new(198, 19, 0, 1);
    let inner_r = std::net::Ipv4Addr::new(198, 19, 0, 2);
    let mut table = BpfSessionTable::open(&d.pins, &d.registry).expect("open pins");
    let sid = Sid([0x7a; 16]);
    table
        .add(SessionSpec {
            sid,
            sender: SocketAddr::from((inner_s, SENDER_PORT)),
            reflector: SocketAddr::from((inner_r, TEST_PORT)),
            security: SecurityMode::Unauthenticated,
            format: SessionFormat::new(TestSecurity::Unauthenticated),
            dscp: 0,
            test_keys: None,
            rate_limit_pps: 0,
            rate_burst: 0,
        })
        .unwrap();
    table.start(&sid).unwrap();
    let k_in = EspKeys::AesCbcHmacSha256 {
        enc_key: vec![0x41; 16],
        auth_key: vec![0x42; 32],
    };
    let k_out = EspKeys::AesCbcHmacSha256 {
        enc_key: vec![0x43; 16],
        auth_key: vec![0x44; 32],
    };
    table
        .add_esp_sa(EspSaSpec {
            mode: EspMode::Tunnel,
            udp_encap: false,
            ..sa_spec(sid, 0x3001, 0x4001, &k_in, &k_out)
        })
        .unwrap();
    let tx = EspCipher::new(&k_in).unwrap();
    let rx = EspCipher::new(&k_out).unwrap();
    let sock = in_netns(&lab.netns(Side::Sender), || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(50)),
        )
        .expect("raw ESP socket");
        s.bind(&SocketAddr::from((SENDER_V4, 0)).into()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    let to: socket2::SockAddr = SocketAddr::from((REFLECTOR_V4, 0)).into();
    for i in 0..20u32 {
        // inner IPv4 (TTL 20) + UDP 40000 -> 862 + 41-octet TWAMP probe
        let mut twamp = vec![0u8; 41];
        twamp[..4].copy_from_slice(&i.to_be_bytes());
        twamp[12..14].copy_from_slice(&0x8001u16.to_be_bytes());
        let mut udp = SENDER_PORT.to_be_bytes().to_vec();
        udp.extend_from_slice(&TEST_PORT.to_be_bytes());
        udp.extend_from_slice(&((8 + twamp.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&twamp);
        let c = udp_checksum(&inner_s.octets(), &inner_r.octets(), &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 20, 17, 0, 0]);
        ip.extend_from_slice(&inner_s.octets());
        ip.extend_from_slice(&inner_r.octets());
        let c = xdp_util::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&udp);
        let po = tx.payload_offset();
        let mut esp = vec![0u8; tx.sealed_len(ip.len())];
        esp[po..po + ip.len()].copy_from_slice(&ip);
        let n = tx
            .seal(0x3001, u64::from(i) + 1, false, 4, ip.len(), &mut esp)
            .unwrap();
        sock.send_to(&esp[..n], &to).unwrap();
        // the reply: outer IPv4 from the reflector, protocol 50
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let got = loop {
            let (m, _) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("probe {i} not reflected: {e}"));
            // SAFETY: recv_from initialised the first m octets.
            let b: Vec<u8> = buf[..m]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            if b[12..16] == REFLECTOR_V4.octets() {
                break b;
            }
        };
        assert_eq!(got[9], 50, "raw ESP reply");
        let mut esp = got[20..].to_vec();
        assert_eq!(&esp[..4], &0x4001u32.to_be_bytes());
        assert_eq!(&esp[4..8], &(i + 1).to_be_bytes(), "own sequence numbers");
        let o = rx.open(&mut esp, None).expect("reply opens");
        assert_eq!(o.next_header, 4, "tunnel: inner IPv4");
        let p = &esp[o.payload];
        assert_eq!(
            xdp_util::checksum(&p[..20]),
            0,
            "inner IPv4 header checksum"
        );
        assert_eq!(&p[12..16], &inner_r.octets());
        assert_eq!(&p[16..20], &inner_s.octets());
        assert_eq!(p[8], 255, "inner TTL 255");
        let u = &p[20..];
        let mut z = u.to_vec();
        z[6..8].fill(0);
        assert_eq!(
            &u[6..8],
            &udp_checksum(&inner_r.octets(), &inner_s.octets(), &z).to_be_bytes()
        );
        let t = &u[8..];
        assert_eq!(&t[..4], &i.to_be_bytes(), "reflector sequence number");
        assert_eq!(&t[24..28], &i.to_be_bytes(), "Sender Sequence Number");
        assert_eq!(t[40], 20, "Sender TTL: the inner TTL in tunnel mode");
    }
    let a = table.esp_sa_activity(0x3001).unwrap();
    assert_eq!((a.rx_packets, a.tx_packets, a.icv_failures), (20, 20, 0));
    drop(table);
}

/// Sends an already built `probe`, expects its reply on `reply`'s SA.
fn step_raw(sock: &UdpSocket, probe: &[u8], reply: &mut PeerSa, twamp_seq: u32, want: u32) {
    sock.send_to(probe, (REFLECTOR_V4, NATT)).unwrap();
    let mut r = recv(sock, Duration::from_secs(2))
        .unwrap_or_else(|| panic!("probe {twamp_seq} not reflected"));
    let t = reply.open(&mut r);
    assert_eq!(t.len(), 41, "reflector packet as long as the probe");
    assert_eq!(
        &t[24..28],
        &twamp_seq.to_be_bytes(),
        "Sender Sequence Number"
    );
    assert_eq!(
        &t[28..36],
        &[0xe8, 0xa1, 0xb2, 0xc6, 0, 0, 0, 1],
        "T1 echoed"
    );
    assert_eq!(t[40], 64, "Sender TTL: the received (outer) TTL");
    let t2 = u64::from_be_bytes(t[16..24].try_into().unwrap());
    let t3 = u64::from_be_bytes(t[4..12].try_into().unwrap());
    assert!(t2 != 0 && t2 <= t3, "T2 {t2:x} <= T3 {t3:x}");
    assert_eq!(
        u32::from_be_bytes(t[..4].try_into().unwrap()),
        want,
        "reflector sequence numbers without a gap"
    );
}
