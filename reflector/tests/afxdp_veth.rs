//! AF_XDP pollers end to end over a veth pair (the testkit lab: two network
//! namespaces, 198.18.0.0/15 and 2001:2::/48 only, deleted on drop even when
//! a test fails).
//!
//! The reflector namespace runs the XDP program (native mode) with secured
//! sessions whose keys are in the `keys` map, and one poller bound to queue
//! 0 in copy mode. A UDP socket in the sender namespace sends TWAMP/STAMP
//! test packets built and protected with the protocol crate, and checks the
//! replies with the same keys.
//!
//! Needs root, iproute2, nsenter and ethtool (scripts/setup.sh installs
//! them). `RICOCHET_SKIP_BPF_TESTS=1` skips.

mod xdp_util;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ricochet_protocol::crypto::test_keys::derive_test_keys;
use ricochet_protocol::crypto::{PacketRole, SessionKeys, StampHmac, TestKeys, TestProtection};
use ricochet_protocol::stamp::{ReflectorPacket as StampReply, StampLayout};
use ricochet_protocol::time::NtpTimestamp;
use ricochet_protocol::twamp_test::{
    ReflectorLayout, ReflectorPacket, SenderPacket, SenderRepr, TestLayout,
};
use ricochet_reflector::afxdp::{
    BindMode, DropReason, Poller, PollerConfig, PollerMode, PollerShared, StatsSnapshot,
    TxTimestamping, WaitMode,
};
use ricochet_reflector::bpf::{
    ifindex, AttachMode, Counter, EntryConfig, EntryFlags, KeyMaterial, KeysReader, ListenerKey,
    Mode, SessionKey, SlotKeys, MAX_SLOTS,
};
use ricochet_reflector::clock::{now_utc_ns, ClockCell, ClockState};
use ricochet_testkit::lab::{Lab, Side};
use xdp_util::{load, skip};

const REFLECTOR_PORT: u16 = 862;

/// Runs `f` on a thread that entered network namespace `ns` (setns affects
/// only the calling thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).expect("open netns");
    // SAFETY: `file` is an open network-namespace descriptor that stays
    // open for the call; setns only affects this thread.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// The lab with complete UDP checksums from the sender (a veth otherwise
/// hands over CHECKSUM_PARTIAL packets the XDP program cannot verify) and
/// an XDP program on the sender's end too (veth delivers reliably to a
/// peer whose NAPI runs).
struct Rig {
    lab: Lab,
    sender_ns: String,
    reflector_ns: String,
    reflector_if: String,
}

impl Rig {
    fn up(tag: &str) -> Rig {
        let lab = Lab::up(tag);
        let out = lab.run(
            Side::Sender,
            "ethtool",
            &["-K", &lab.iface(Side::Sender), "tx", "off"],
        );
        assert!(
            out.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Resolve ARP and ND both ways first: a probe queued behind an
        // unresolved neighbour arrives late and makes retries look like
        // duplicates.
        for (v6, flag) in [(false, "-4"), (true, "-6")] {
            let to = Lab::addr(Side::Reflector, v6).to_string();
            let out = lab.run(Side::Sender, "ping", &[flag, "-c1", "-W3", &to]);
            assert!(
                out.status.success(),
                "ping {to}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Rig {
            sender_ns: lab.netns(Side::Sender),
            reflector_ns: lab.netns(Side::Reflector),
            reflector_if: lab.iface(Side::Reflector),
            lab,
        }
    }

    /// Keeps an (empty) XDP program attached to the sender's veth end
    /// until dropped (attached and detached from inside its namespace).
    fn peer_xdp(&self) -> PeerXdp {
        let ns = self.sender_ns.clone();
        let iface = self.lab.iface(Side::Sender);
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

    /// Runs `f` in the reflector namespace with the sender namespace's name
    /// and the reflector interface.
    fn in_reflector<T: Send + 'static>(
        &self,
        f: impl FnOnce(String, String) -> T + Send + 'static,
    ) -> T {
        let (s, i) = (self.sender_ns.clone(), self.reflector_if.clone());
        in_netns(&self.reflector_ns, move || f(s, i))
    }
}

struct PeerXdp {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PeerXdp {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket in the sender namespace.
fn sender_socket(sender_ns: &str, v6: bool, port: u16) -> UdpSocket {
    let addr = SocketAddr::new(Lab::addr(Side::Sender, v6), port);
    in_netns(sender_ns, move || {
        let s = UdpSocket::bind(addr).expect("bind sender socket");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    })
}

fn reflector(v6: bool) -> SocketAddr {
    SocketAddr::new(Lab::addr(Side::Reflector, v6), REFLECTOR_PORT)
}

fn sender_addr(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(Lab::addr(Side::Sender, v6), port)
}

/// A session entry redirected to AF_XDP.
fn secured_entry(slot: u32, generation: u32) -> EntryConfig {
    let mut cfg = EntryConfig::new(Mode::Secured, 0);
    cfg.slot = slot;
    cfg.generation = generation;
    cfg
}

fn test_keys(seed: u8) -> SessionKeys {
    let session = SessionKeys {
        aes: [seed; 16],
        hmac: [seed ^ 0x5a; 32],
    };
    derive_test_keys(&session, &[seed.wrapping_add(1); 16])
}

fn slot_keys(generation: u32, keys: KeyMaterial, sender: SocketAddr) -> SlotKeys {
    SlotKeys {
        generation,
        instance: 1,
        keys,
        flags: EntryFlags::empty(),
        dscp: 0,
        reflect_octets: 0,
        sender_mbz: 0,
        sender: Some(sender),
    }
}

/// A protected TWAMP Session-Sender packet (48 octets + `padding`).
fn twamp_probe(
    keys: &TestKeys,
    mode: TestProtection,
    seq: u32,
    t1: [u8; 8],
    padding: usize,
) -> Vec<u8> {
    let repr = SenderRepr {
        sequence_number: seq,
        timestamp: t1,
        error_estimate: 0x8001,
        padding_len: padding,
    };
    let mut buf = vec![0xa5; repr.buffer_len(TestLayout::Authenticated)];
    let mut pkt = SenderPacket::new_checked(&mut buf[..], TestLayout::Authenticated).unwrap();
    repr.emit(&mut pkt).unwrap();
    keys.protect(PacketRole::Sender, mode, &mut buf).unwrap();
    buf
}

/// An authenticated STAMP Session-Sender packet (RFC 8762 §4.1.1).
fn stamp_probe(hmac: &StampHmac, seq: u32, ssid: u16) -> Vec<u8> {
    let mut b = vec![0u8; 112];
    b[0..4].copy_from_slice(&seq.to_be_bytes());
    b[16..24].copy_from_slice(&t1_now());
    b[24..26].copy_from_slice(&0x8001u16.to_be_bytes());
    b[26..28].copy_from_slice(&ssid.to_be_bytes());
    hmac.seal_packet(&mut b).unwrap();
    b
}

fn t1_now() -> [u8; 8] {
    NtpTimestamp::from_utc_ns(now_utc_ns()).to_bytes()
}

fn ntp_ns(b: [u8; 8]) -> u64 {
    NtpTimestamp::from_bytes(b).to_utc_ns()
}

/// Sends `probe` and waits for one reply (retried a few times; the rig
/// resolved ARP/ND beforehand, so a retry means a lost packet).
fn exchange(sock: &UdpSocket, to: SocketAddr, probe: &[u8]) -> Option<(Vec<u8>, u64, u64)> {
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        let sent = now_utc_ns();
        sock.send_to(probe, to).unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from, to, "reply from the reflector address and port");
            return Some((buf[..n].to_vec(), sent, now_utc_ns()));
        }
    }
    None
}

/// Sends `probe` a few times and checks that nothing comes back.
fn assert_silent(sock: &UdpSocket, to: SocketAddr, probe: &[u8]) {
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        sock.send_to(probe, to).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            panic!("unexpected reply of {n} octets");
        }
    }
}

fn wait_for(poller: &Poller, what: &str, cond: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = poller.stats();
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: stats {s:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn shared() -> PollerShared {
    PollerShared::new(Arc::new(ClockCell::new(
        &ClockState::read().expect("adjtimex"),
    )))
}

/// Authenticated and encrypted TWAMP (IPv4 and IPv6) and authenticated
/// STAMP are reflected with sequence numbers 0, 1, 2…, sender fields
/// copied and T2 ≤ T3; bad HMAC, unknown slot, stale generation and a
/// wrong source are recycled and counted; TX timestamps are reported as
/// the kernel delivers them.
#[test]
fn poller_reflects_secured_sessions_and_counts_drops() {
    if skip() {
        return;
    }
    let rig = Rig::up("ax");
    let _peer = rig.peer_xdp();
    rig.in_reflector(|sender_ns, iface| {
        // one sender socket per session: a session is a 5-tuple
        let sock = |v6, port| sender_socket(&sender_ns, v6, port);
        let auth_sock = sock(false, 40001);
        let enc_sock = sock(false, 40002);
        let stamp_sock = sock(false, 40003);
        let v6_sock = sock(true, 40004);
        let unknown_sock = sock(false, 40005);
        let stale_sock = sock(false, 40006);
        let wrong_src_sock = sock(false, 40007);

        let auth_raw = test_keys(1);
        let enc_raw = test_keys(2);
        let v6_raw = test_keys(3);
        let stamp_key = [0x42u8; 32];

        let prog = load();
        let m = prog.maps();
        let add = |slot: u32, gen: u32, v6: bool, port: u16, keys: Option<SlotKeys>| {
            if let Some(k) = keys {
                m.write_keys(slot, &k).unwrap();
            }
            let key = SessionKey::new(reflector(v6), sender_addr(v6, port)).unwrap();
            m.insert_session(&key, &secured_entry(slot, gen)).unwrap();
        };
        let s4 = |p| sender_addr(false, p);
        let twamp_auth = |k: &SessionKeys| KeyMaterial::TwampAuthenticated(k.clone());
        let twamp_enc = |k: &SessionKeys| KeyMaterial::TwampEncrypted(k.clone());
        add(
            1,
            1,
            false,
            40001,
            Some(slot_keys(1, twamp_auth(&auth_raw), s4(40001))),
        );
        add(
            2,
            1,
            false,
            40002,
            Some(slot_keys(1, twamp_enc(&enc_raw), s4(40002))),
        );
        // authenticated STAMP: a stateless listener on our address (no
        // source check: any sender with the key)
        let stamp = KeyMaterial::StampAuthenticated(zeroize::Zeroizing::new(stamp_key));
        let mut stamp_keys = slot_keys(1, stamp, s4(40003));
        stamp_keys.sender = None;
        m.write_keys(3, &stamp_keys).unwrap();
        m.insert_listener(&ListenerKey::exact(reflector(false)), &secured_entry(3, 1))
            .unwrap();
        let v6_sender = sender_addr(true, 40004);
        add(
            4,
            1,
            true,
            40004,
            Some(slot_keys(1, twamp_enc(&v6_raw), v6_sender)),
        );
        // slot 7: an entry whose keys were never written (unknown slot)
        add(7, 1, false, 40005, None);
        // slot 8: entry at generation 5, keys already at 6 (stale)
        add(
            8,
            5,
            false,
            40006,
            Some(slot_keys(6, twamp_auth(&auth_raw), s4(40006))),
        );
        // slot 9: keys name another sender port
        add(
            9,
            1,
            false,
            40007,
            Some(slot_keys(1, twamp_auth(&auth_raw), s4(49999))),
        );

        let idx = ifindex(&iface).unwrap();
        let _att = prog
            .attach(idx, AttachMode::Native)
            .expect("native XDP on veth");
        let shared = shared();
        let poller = Poller::spawn(PollerConfig::new(idx, 0), m, &shared).expect("poller");

        // --- authenticated TWAMP, IPv4: 48 + 64 octets, 112 back ----------
        let keys = TestKeys::new(&auth_raw);
        for i in 0..3u32 {
            let t1 = t1_now();
            let probe = twamp_probe(&keys, TestProtection::Authenticated, 100 + i, t1, 64);
            let (mut reply, sent, got) =
                exchange(&auth_sock, reflector(false), &probe).expect("authenticated reply");
            assert_eq!(reply.len(), 112, "max(received 112, 112)");
            keys.unprotect(
                PacketRole::Reflector,
                TestProtection::Authenticated,
                &mut reply,
            )
            .expect("reply verifies with the session's keys");
            let r =
                ReflectorPacket::new_checked(&reply[..], ReflectorLayout::AUTHENTICATED).unwrap();
            assert_eq!(r.sequence_number(), i, "reflector's own counter from 0");
            assert_eq!(r.sender_sequence_number(), 100 + i);
            assert_eq!(r.sender_timestamp(), t1);
            assert_eq!(r.sender_error_estimate_raw(), 0x8001);
            assert_eq!(r.sender_ttl(), 64, "Linux default TTL copied");
            let (t2, t3) = (ntp_ns(r.receive_timestamp()), ntp_ns(r.timestamp()));
            assert!(t2 <= t3, "T2 {t2} <= T3 {t3}");
            assert!(
                t2 + 2_000_000 >= sent && t3 <= got + 2_000_000,
                "T2/T3 within the exchange: sent {sent} T2 {t2} T3 {t3} received {got}"
            );
            assert_ne!(r.error_estimate_raw() & 0xff, 0, "Multiplier never 0");
            assert!(r.mbz_is_zero());
        }

        // --- encrypted TWAMP, IPv4: a 48-octet probe grows to 112 ---------
        let keys = TestKeys::new(&enc_raw);
        for i in 0..3u32 {
            let t1 = t1_now();
            let probe = twamp_probe(&keys, TestProtection::Encrypted, 7 + i, t1, 0);
            let (mut reply, _, _) =
                exchange(&enc_sock, reflector(false), &probe).expect("encrypted reply");
            assert_eq!(reply.len(), 112, "48 -> 112 (RFC 5357 §4.2.1)");
            keys.unprotect(PacketRole::Reflector, TestProtection::Encrypted, &mut reply)
                .expect("decrypts and verifies");
            let r =
                ReflectorPacket::new_checked(&reply[..], ReflectorLayout::AUTHENTICATED).unwrap();
            assert_eq!(r.sequence_number(), i);
            assert_eq!(r.sender_sequence_number(), 7 + i);
            assert_eq!(r.sender_timestamp(), t1);
            assert!(ntp_ns(r.receive_timestamp()) <= ntp_ns(r.timestamp()));
        }

        // --- encrypted TWAMP over IPv6 -------------------------------------
        let keys = TestKeys::new(&v6_raw);
        for i in 0..2u32 {
            let probe = twamp_probe(&keys, TestProtection::Encrypted, i, t1_now(), 200);
            let (mut reply, _, _) =
                exchange(&v6_sock, reflector(true), &probe).expect("IPv6 reply");
            assert_eq!(reply.len(), 248, "equal size: 48 + 200 received");
            keys.unprotect(PacketRole::Reflector, TestProtection::Encrypted, &mut reply)
                .unwrap();
            let r =
                ReflectorPacket::new_checked(&reply[..], ReflectorLayout::AUTHENTICATED).unwrap();
            assert_eq!((r.sequence_number(), r.sender_sequence_number()), (i, i));
            assert_eq!(r.sender_ttl(), 64, "IPv6 Hop Limit copied");
            assert_eq!(r.padding(), &[0xa5; 136][..], "sender padding reused");
        }

        // --- authenticated STAMP (stateless listener) ----------------------
        let hmac = StampHmac::new(&stamp_key);
        for i in 0..2u32 {
            let probe = stamp_probe(&hmac, 50 + i, 0xbeef);
            let (reply, _, _) =
                exchange(&stamp_sock, reflector(false), &probe).expect("STAMP reply");
            assert_eq!(reply.len(), 112);
            hmac.verify_packet(&reply)
                .expect("reply HMAC-SHA-256 verifies");
            let r = StampReply::new_checked(&reply[..], StampLayout::Authenticated).unwrap();
            assert_eq!(r.sequence_number(), 50 + i, "stateless: sequence copied");
            assert_eq!(r.sender_sequence_number(), 50 + i);
            assert_eq!(r.ssid(), 0xbeef, "SSID copied (RFC 8972 §3)");
        }

        // --- drops -----------------------------------------------------------
        let keys = TestKeys::new(&auth_raw);
        let mut bad = twamp_probe(&keys, TestProtection::Authenticated, 9, t1_now(), 0);
        bad[33] ^= 0x01; // inside the HMAC
        assert_silent(&auth_sock, reflector(false), &bad);
        let good = twamp_probe(&keys, TestProtection::Authenticated, 9, t1_now(), 0);
        assert_silent(&unknown_sock, reflector(false), &good);
        assert_silent(&stale_sock, reflector(false), &good);
        assert_silent(&wrong_src_sock, reflector(false), &good);
        wait_for(&poller, "drops counted", |s| {
            s.dropped(DropReason::BadHmac) >= 3
                && s.dropped(DropReason::UnknownSlot) >= 3
                && s.dropped(DropReason::StaleGeneration) >= 3
                && s.dropped(DropReason::WrongSource) >= 3
        });
        // a dropped packet consumed no sequence number
        let (mut reply, _, _) = exchange(&auth_sock, reflector(false), &good).unwrap();
        keys.unprotect(
            PacketRole::Reflector,
            TestProtection::Authenticated,
            &mut reply,
        )
        .unwrap();
        let r = ReflectorPacket::new_checked(&reply[..], ReflectorLayout::AUTHENTICATED).unwrap();
        assert_eq!(r.sequence_number(), 3);

        // --- TX timestamps ---------------------------------------------------
        let s = wait_for(&poller, "completions", |s| s.tx_completed == s.tx_packets);
        eprintln!(
            "TX metadata on veth, copy mode: {:?}; delivered {} missing {} last {:?} \
             T3->TX {:?}; T3->completion p50 {:?} p99 {:?} (n={})",
            s.tx_timestamping,
            s.tx_ts_delivered,
            s.tx_ts_missing,
            s.last_tx_ts_ns,
            s.last_t3_to_tx_ns,
            s.t3_to_completion.p50_ns,
            s.t3_to_completion.p99_ns,
            s.t3_to_completion.count
        );
        assert_eq!(
            s.t3_to_completion.count, s.tx_completed,
            "every completion measured"
        );
        match &s.tx_timestamping {
            TxTimestamping::Delivered => {
                assert!(s.last_tx_ts_ns.is_some());
                let last = shared.tx_stamps.last(1).expect("slot 1 has a TX stamp");
                assert!(last.tx_ns > 0);
            }
            TxTimestamping::NotDelivered => {
                // requested on every frame, none came back: reported as
                // such, nothing invented
                assert_eq!(s.tx_ts_delivered, 0);
                assert_eq!(s.tx_ts_missing, s.tx_completed);
                assert_eq!((s.last_tx_ts_ns, s.last_t3_to_tx_ns), (None, None));
                assert_eq!(shared.tx_stamps.last(1), None);
            }
            TxTimestamping::Unsupported(why) => {
                assert!(!why.is_empty());
                assert_eq!((s.tx_ts_delivered, s.tx_ts_missing), (0, 0));
            }
            other => panic!("TX timestamping state after completions: {other:?}"),
        }
        assert_eq!(s.dropped(DropReason::TxRingFull), 0);
        assert_eq!(s.dropped(DropReason::Malformed), 0);
        assert_eq!(s.dropped(DropReason::BadMetadata), 0);

        let redirected = m.counters().unwrap().get(Counter::Redirected);
        let fin = poller.stop().expect("poller stops cleanly");
        assert_eq!(fin.tx_packets, 3 + 3 + 2 + 2 + 1);
        assert!(fin.rx_packets >= fin.tx_packets + 12);
        assert!(redirected >= fin.rx_packets);
    });
}

/// The bare echo mode sends every frame back with addresses and ports
/// swapped and the payload untouched.
/// A stateful STAMP session on the AF_XDP path: own Sequence Number from
/// 0, the SSID checked, and Follow-Up Telemetry carrying exactly the
/// transmit-completion stamp the poller recorded for the previous reply
/// (copy mode: the kernel's CLOCK_TAI reading when it freed the frame,
/// mode 2) — or, if the kernel delivers none, Timestamp 0 and mode 0.
/// Prints the distribution of (Follow-Up T3 − in-packet T3).
#[test]
fn stateful_stamp_session_follow_up_from_tx_completions() {
    use ricochet_protocol::time::{TaiOffset, TimeFormat};
    use ricochet_reflector::clock::{Stamp, StampSource, TimeScale};
    if skip() {
        return;
    }
    let rig = Rig::up("axst");
    let _peer = rig.peer_xdp();
    rig.in_reflector(|sender_ns, iface| {
        let sock = sender_socket(&sender_ns, false, 40011);
        let prog = load();
        let m = prog.maps();
        let sender = sender_addr(false, 40011);
        let keys = slot_keys(
            1,
            KeyMaterial::StampSession {
                ssid: 7,
                key: None,
                cos_allowed_dscp: u64::MAX,
                micro_session_id: None,
            },
            sender,
        );
        m.write_keys(1, &keys).unwrap();
        let key = SessionKey::new(reflector(false), sender).unwrap();
        m.insert_session(&key, &secured_entry(1, 1)).unwrap();
        let idx = ifindex(&iface).unwrap();
        let _att = prog
            .attach(idx, AttachMode::Native)
            .expect("native XDP on veth");
        let shared = shared();
        let clock = shared.clock.load();
        let poller = Poller::spawn(PollerConfig::new(idx, 0), m, &shared).expect("poller");

        let probe = |seq: u32, ssid: u16| {
            let mut b = vec![0u8; 44 + 20];
            b[0..4].copy_from_slice(&seq.to_be_bytes());
            b[4..12].copy_from_slice(&t1_now());
            b[12..14].copy_from_slice(&0x0001u16.to_be_bytes());
            b[14..16].copy_from_slice(&ssid.to_be_bytes());
            b[44..48].copy_from_slice(&[0x80, 7, 0, 16]);
            b
        };
        let offset = TaiOffset(clock.tai_offset_s);
        let mut diffs = Vec::new();
        // (seq, in-packet T3 UTC ns, its completion as the poller recorded it)
        let mut previous: Option<(u32, u64, Option<u64>)> = None;
        let n = 20u32;
        for i in 0..n {
            let (reply, _, _) =
                exchange(&sock, reflector(false), &probe(1000 + i, 7)).expect("STAMP reply");
            assert_eq!(reply.len(), 64, "symmetric");
            let r = StampReply::new_checked(&reply[..], StampLayout::Unauthenticated).unwrap();
            assert_eq!(r.sequence_number(), i, "own counter from 0");
            assert_eq!(r.sender_sequence_number(), 1000 + i);
            assert_eq!(r.ssid(), 7);
            assert_eq!(reply[44], 0, "Follow-Up recognised");
            let fu = &reply[48..64];
            match previous {
                None => assert!(fu.iter().all(|&b| b == 0), "first reply: nothing before it"),
                Some((pseq, pt3, ptx)) => {
                    assert_eq!(&fu[0..4], &pseq.to_be_bytes(), "previous reply's seq");
                    match ptx {
                        Some(tx_ns) => {
                            let want = Stamp {
                                ns: tx_ns,
                                scale: TimeScale::Tai,
                                source: StampSource::KernelSoftware,
                            }
                            .to_timestamp(offset, TimeFormat::Ntp)
                            .to_bytes();
                            assert_eq!(&fu[4..12], &want, "the recorded completion stamp");
                            assert_eq!(fu[12], 2, "copy mode: software local");
                            let fu_ns = ntp_ns(fu[4..12].try_into().unwrap());
                            diffs.push(fu_ns as i64 - pt3 as i64);
                        }
                        None => {
                            assert!(
                                fu[4..13].iter().all(|&b| b == 0),
                                "no stamp: zero, mode 0; table {:?}, Follow-Up {fu:02x?}",
                                shared.tx_stamps.last(1)
                            );
                        }
                    }
                }
            }
            // Let the completion of this reply arrive before the next probe.
            wait_for(&poller, "completion", |s| s.tx_completed == s.tx_packets);
            let tx = shared
                .tx_stamps
                .last(1)
                .filter(|l| l.seq == i)
                .map(|l| l.tx_ns);
            previous = Some((i, ntp_ns(r.timestamp()), tx));
        }
        // Another SSID is not this session.
        assert_silent(&sock, reflector(false), &probe(1, 8));
        let s = poller.stop().unwrap();
        diffs.sort_unstable();
        eprintln!(
            "AF_XDP copy mode, veth: TX timestamps {:?}; Follow-Up T3 - in-packet T3 over {} \
             replies: min {:?} p50 {:?} max {:?} ns",
            s.tx_timestamping,
            diffs.len(),
            diffs.first(),
            diffs.get(diffs.len() / 2),
            diffs.last()
        );
        match &s.tx_timestamping {
            TxTimestamping::Delivered => {
                assert_eq!(diffs.len() as u32, n - 1, "every Follow-Up stamped");
                assert!(
                    diffs.iter().all(|d| *d > 0),
                    "a completion comes after the in-packet T3: {diffs:?}"
                );
            }
            _ => assert!(diffs.is_empty()),
        }
    });
}

/// Direct Measurement on the AF_XDP path (RFC 8972 §4.5): R_RxC counts
/// every packet of the session that arrived — those the XDP token bucket
/// refused (handed to the poller marked refused, `XSK_REFUSED`) and a
/// Return Path "No Reply Requested" one (RFC 9503 §4.1.1, not answered) —
/// and R_TxC only the replies sent.
#[test]
fn direct_measurement_counts_refused_and_no_reply_packets() {
    if skip() {
        return;
    }
    let rig = Rig::up("axdm");
    let _peer = rig.peer_xdp();
    rig.in_reflector(|sender_ns, iface| {
        let sock = sender_socket(&sender_ns, false, 40031);
        let prog = load();
        let m = prog.maps();
        let sender = sender_addr(false, 40031);
        let keys = slot_keys(
            1,
            KeyMaterial::StampSession {
                ssid: 9,
                key: None,
                cos_allowed_dscp: u64::MAX,
                micro_session_id: None,
            },
            sender,
        );
        m.write_keys(2, &keys).unwrap();
        let key = SessionKey::new(reflector(false), sender).unwrap();
        // One packet per second, burst 2 (the XDP bucket counts packets
        // handed to the poller, the no-reply one included).
        let mut cfg = secured_entry(2, 1);
        cfg.rate_pps = 1;
        cfg.burst = 2;
        cfg.flags = EntryFlags::XSK_REFUSED;
        m.insert_session(&key, &cfg).unwrap();
        let idx = ifindex(&iface).unwrap();
        let _att = prog
            .attach(idx, AttachMode::Native)
            .expect("native XDP on veth");
        let shared = shared();
        let poller = Poller::spawn(PollerConfig::new(idx, 0), m, &shared).expect("poller");

        let probe = |seq: u32, no_reply: bool| {
            let mut b = vec![0u8; 44];
            b[0..4].copy_from_slice(&seq.to_be_bytes());
            b[4..12].copy_from_slice(&t1_now());
            b[12..14].copy_from_slice(&0x0001u16.to_be_bytes());
            b[14..16].copy_from_slice(&9u16.to_be_bytes());
            // Direct Measurement, S_TxC = seq + 1.
            b.extend_from_slice(&[0x80, 5, 0, 12]);
            b.extend_from_slice(&(seq + 1).to_be_bytes());
            b.extend_from_slice(&[0; 8]);
            if no_reply {
                b.extend_from_slice(&[0x80, 10, 0, 8, 0, 1, 0, 4, 0, 0, 0, 0]);
            }
            b
        };
        let to = reflector(false);
        let mut buf = [0u8; 2048];
        let mut sent = 0u32;
        let mut send = |no_reply: bool| {
            sock.send_to(&probe(sent, no_reply), to).unwrap();
            sent += 1;
            sock.recv_from(&mut buf)
                .ok()
                .map(|(n, _)| buf[..n].to_vec())
        };
        // No reply requested: the poller sees it and answers nothing.
        assert!(send(true).is_none(), "no reply requested");
        wait_for(&poller, "no-reply counted", |s| {
            s.dropped(DropReason::NoReplyRequested) == 1
        });
        let r = send(false).expect("first reply");
        assert_eq!(&r[0..4], &0u32.to_be_bytes(), "first reply numbered 0");
        assert_eq!(&r[48..60], &[0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1]);
        // Right after: refused by the bucket, counted by the poller.
        assert!(send(false).is_none(), "refused by the token bucket");
        wait_for(&poller, "refused packet counted", |s| {
            s.dropped(DropReason::Refused) >= 1
        });
        // Probe until the bucket lets one through (bounded: 5 s).
        let deadline = Instant::now() + Duration::from_secs(5);
        let r = loop {
            if let Some(r) = send(false) {
                break r;
            }
            assert!(Instant::now() < deadline, "no second reply");
        };
        let rxc = u32::from_be_bytes(r[52..56].try_into().unwrap());
        let txc = u32::from_be_bytes(r[56..60].try_into().unwrap());
        assert_eq!(&r[48..52], &sent.to_be_bytes(), "S_TxC copied");
        assert_eq!(rxc, sent, "every probe received counted");
        assert_eq!(txc, 2, "two replies");
        let s = poller.stop().unwrap();
        eprintln!(
            "AF_XDP Direct Measurement: {sent} probes, R_RxC {rxc}, R_TxC {txc}, \
             refused {}, no reply {}",
            s.dropped(DropReason::Refused),
            s.dropped(DropReason::NoReplyRequested)
        );
        assert_eq!(s.dropped(DropReason::NoReplyRequested), 1);
    });
}

/// An unauthenticated STAMP listener installed by `BpfSessionTable`: a
/// plain 44-octet probe is reflected by the XDP program, a TLV-bearing one
/// goes to the poller, which processes its TLVs (RFC 8972 §4): unknown type
/// U = 1, Class of Service DSCP2/ECN from the received packet and DSCP1 on
/// the reply, Timestamp Information filled.
#[test]
fn listener_tlvs_are_processed_by_the_poller() {
    use ricochet_reflector::bpf::BpfSessionTable;
    use ricochet_reflector::session_table::{ListenerKind, ListenerSpec, SessionTable};
    if skip() {
        return;
    }
    let rig = Rig::up("axtl");
    let _peer = rig.peer_xdp();
    rig.in_reflector(|sender_ns, iface| {
        let sock = sender_socket(&sender_ns, false, 40021);
        let prog = load();
        let registry = std::env::temp_dir().join(format!("axtl-{}.sessions", std::process::id()));
        let mut table = BpfSessionTable::open(prog.pin_dir(), &registry).unwrap();
        table
            .add_listener(ListenerSpec {
                local: reflector(false),
                kind: ListenerKind::Unauthenticated,
                dscp: None,
                rate_limit_pps: 0,
                rate_burst: 0,
            })
            .unwrap();
        let m = prog.maps();
        let idx = ifindex(&iface).unwrap();
        let _att = prog
            .attach(idx, AttachMode::Native)
            .expect("native XDP on veth");
        let shared = shared();
        let poller = Poller::spawn(PollerConfig::new(idx, 0), m, &shared).expect("poller");
        let m = prog.maps();
        let base = |seq: u32| {
            let mut b = vec![0u8; 44];
            b[0..4].copy_from_slice(&seq.to_be_bytes());
            b[4..12].copy_from_slice(&t1_now());
            b[12..14].copy_from_slice(&[0, 1]);
            b
        };
        // Plain: the XDP program answers.
        let before = m.counters().unwrap().get(Counter::Reflected);
        let (reply, _, _) = exchange(&sock, reflector(false), &base(1)).expect("plain reply");
        assert_eq!(reply.len(), 44);
        assert_eq!(m.counters().unwrap().get(Counter::Reflected), before + 1);
        // TLVs: the poller answers.
        let mut probe = base(2);
        probe.extend_from_slice(&[0x80, 4, 0, 4, 46 << 2, 0, 0, 0]); // CoS
        probe.extend_from_slice(&[0x80, 3, 0, 4, 0, 0, 0, 0]); // Timestamp Information
        probe.extend_from_slice(&[0x80, 200, 0, 4, 1, 2, 3, 4]); // unknown
        let (reply, _, _) = exchange(&sock, reflector(false), &probe).expect("TLV reply");
        assert_eq!(reply.len(), probe.len());
        assert_eq!(&reply[0..4], &2u32.to_be_bytes(), "stateless: copied");
        assert_eq!(
            &reply[44..52],
            &[0, 4, 0, 4, 46 << 2, 0, 0, 0],
            "CoS, received DSCP 0"
        );
        assert_eq!(&reply[52..56], &[0, 3, 0, 4]);
        // T2 from the kernel's TAI clock at XDP entry (software, 2), T3 a
        // user-space reading (3).
        assert_eq!(reply[57], 2);
        assert_eq!(reply[59], 3);
        assert_ne!(reply[56], 0, "a sync source");
        assert_eq!(&reply[60..68], &[0x80, 200, 0, 4, 1, 2, 3, 4], "unknown: U");
        let s = wait_for(&poller, "poller reply", |s| s.tx_packets >= 1);
        assert_eq!(s.tx_packets, 1, "only the TLV probe went to the poller");
        poller.stop().unwrap();
        let _ = std::fs::remove_file(&registry);
    });
}

#[test]
fn echo_mode_echoes() {
    if skip() {
        return;
    }
    let rig = Rig::up("ae");
    let _peer = rig.peer_xdp();
    rig.in_reflector(|sender_ns, iface| {
        let sock = sender_socket(&sender_ns, false, 41000);
        let prog = load();
        let key = SessionKey::new(reflector(false), sender_addr(false, 41000)).unwrap();
        prog.maps()
            .insert_session(&key, &secured_entry(1, 1))
            .unwrap();
        let idx = ifindex(&iface).unwrap();
        let _att = prog.attach(idx, AttachMode::Native).unwrap();
        let mut cfg = PollerConfig::new(idx, 0);
        cfg.mode = PollerMode::Echo;
        // veth has no AF_XDP zero-copy: asking for it is an error, not a
        // silent copy-mode socket
        let mut zc = cfg.clone();
        zc.xsk.bind = BindMode::ZeroCopy;
        let err = Poller::spawn(zc, prog.maps(), &shared()).expect_err("zero-copy on veth");
        assert!(err.to_string().contains("ZeroCopy"), "{err}");
        let poller = Poller::spawn(cfg, prog.maps(), &shared()).unwrap();
        assert!(!poller.stats().zero_copy);
        for len in [1usize, 14, 333, 1400] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let (reply, _, _) = exchange(&sock, reflector(false), &payload).expect("echo");
            assert_eq!(reply, payload);
        }
        let s = poller.stop().unwrap();
        assert!(s.tx_packets >= 4 && s.dropped_total() == 0, "{s:#?}");
    });
}

/// Throughput with a bounded count (run with `--ignored --nocapture`):
/// `RICOCHET_AFXDP_PACKETS` probes (default 20000) from one sender socket,
/// at most `RICOCHET_AFXDP_WINDOW` (default 64) in flight, for the echo
/// and the authenticated path; the poller busy-polls pinned to core 1.
#[test]
#[ignore = "measurement, not a check: run explicitly"]
fn throughput_echo_and_authenticated() {
    if skip() {
        return;
    }
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let count = env("RICOCHET_AFXDP_PACKETS", 20_000);
    let window = env("RICOCHET_AFXDP_WINDOW", 64);
    for mode in [PollerMode::Echo, PollerMode::Reflect] {
        let rig = Rig::up("at");
        let _peer = rig.peer_xdp();
        rig.in_reflector(move |sender_ns, iface| {
            let sock = sender_socket(&sender_ns, false, 42000);
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let raw = test_keys(9);
            let prog = load();
            let m = prog.maps();
            let sender = sender_addr(false, 42000);
            let k = slot_keys(1, KeyMaterial::TwampAuthenticated(raw.clone()), sender);
            m.write_keys(1, &k).unwrap();
            let key = SessionKey::new(reflector(false), sender).unwrap();
            m.insert_session(&key, &secured_entry(1, 1)).unwrap();
            let idx = ifindex(&iface).unwrap();
            let _att = prog.attach(idx, AttachMode::Native).unwrap();
            let mut cfg = PollerConfig::new(idx, 0);
            cfg.mode = mode;
            cfg.core = Some(1);
            cfg.wait = WaitMode::BusyPoll;
            let poller = Poller::spawn(cfg, m, &shared()).unwrap();
            let keys = TestKeys::new(&raw);
            let probes: Vec<Vec<u8>> = (0..256u32)
                .map(|i| twamp_probe(&keys, TestProtection::Authenticated, i, t1_now(), 64))
                .collect();
            let _ = exchange(&sock, reflector(false), &probes[0]); // ARP
            let mut buf = [0u8; 2048];
            let (mut sent, mut got, mut lost) = (0u32, 0u32, 0u32);
            let start = Instant::now();
            while got + lost < count {
                while sent < count && sent - got - lost < window {
                    sock.send_to(&probes[(sent % 256) as usize], reflector(false))
                        .unwrap();
                    sent += 1;
                }
                match sock.recv_from(&mut buf) {
                    Ok(_) => got += 1,
                    Err(_) => lost += sent - got - lost,
                }
            }
            let el = start.elapsed();
            let s = poller.stop().unwrap();
            eprintln!(
                "{mode:?}: {got}/{count} replies in {el:?} = {:.0} replies/s (window {window}); \
                 lost {lost}; poller rx {} tx {} drops {:?}; T3->completion p50 {:?} \
                 p99 {:?}; TX timestamps {:?}",
                f64::from(got) / el.as_secs_f64(),
                s.rx_packets,
                s.tx_packets,
                s.drops,
                s.t3_to_completion.p50_ns,
                s.t3_to_completion.p99_ns,
                s.tx_timestamping
            );
        });
    }
}

/// The `keys` map through the kernel: written, read back from the pins by
/// a poller's reader, cleared; slots out of range are refused.
#[test]
fn keys_map_round_trip_through_the_pins() {
    if skip() {
        return;
    }
    let prog = load();
    let m = prog.maps();
    let sender = sender_addr(true, 40000);
    let k = SlotKeys {
        flags: EntryFlags::PTP | EntryFlags::SET_DSCP,
        dscp: 46,
        ..slot_keys(7, KeyMaterial::TwampEncrypted(test_keys(5)), sender)
    };
    m.write_keys(12, &k).unwrap();
    let reader = KeysReader::open_pinned(prog.pin_dir()).expect("keys map is pinned");
    let back = reader.read(12).unwrap().expect("slot 12 written");
    assert_eq!(back.to_bytes(), k.to_bytes());
    assert!(reader.read(13).unwrap().is_none(), "unused slot");
    m.clear_keys(12).unwrap();
    assert!(m.read_keys(12).unwrap().is_none(), "cleared");
    assert!(m.write_keys(MAX_SLOTS, &k).is_err());
    assert!(m.read_keys(MAX_SLOTS - 1).unwrap().is_none());
}
