//! A small TWAMP server for ricochet-ping's loopback tests: the protocol
//! crate's sans-IO `Server` behind a TCP listener, with a test
//! `ServerContext` that binds one std `UdpSocket` per session and reflects
//! with `reflect_twamp` and the test-packet crypto in a thread.
//!
//! The reflector can drop chosen packets on the way in (forward loss) or out
//! (backward loss), duplicate them, corrupt their HMAC, answer with a sender
//! sequence number never sent, and mangle the RFC 6038 reflected octets,
//! so the client's accounting can be checked against known truth.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ricochet_protocol::accept::Accept;
use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::{PacketRole, SharedSecret, TestKeys, TestProtection};
use ricochet_protocol::keyfile::KeyFile;
use ricochet_protocol::modes::{Modes, Selection};
use ricochet_protocol::server::{
    AcceptedSession, KeyId, Server, ServerConfig, ServerContext, ServerEvent, ServerRandom,
    SessionGrant, SessionRequest,
};
use ricochet_protocol::time::{ErrorEstimate, NtpTimestamp};
use ricochet_protocol::twamp_test::{
    reflect_twamp, set_t3, ReflectParams, RxMeta, SessionFormat, TestSecurity,
};
use ricochet_reflector::clock::{now_tai_ns, now_utc_ns, ClockState};

/// The identity and secret every test uses.
pub const IDENTITY: &str = "alice";
pub const SECRET_HEX: &str = "7477616d702d676f6c64656e2d736563726574";

/// What the test reflector does wrong on purpose.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Modes offered in the greeting.
    pub modes: Modes,
    /// Sender sequence numbers never reflected (forward loss).
    pub drop_forward: HashSet<u32>,
    /// Sender sequence numbers reflected (counted) but not sent (backward loss).
    pub drop_backward: HashSet<u32>,
    /// Sender sequence numbers reflected twice, as a duplicated probe would be.
    pub duplicate: HashSet<u32>,
    /// Sender sequence numbers whose reflection gets a broken HMAC.
    pub corrupt_hmac: HashSet<u32>,
    /// After this sender sequence number, also send a reflection naming a
    /// sender sequence number never sent.
    pub bogus_after: Option<u32>,
    /// Flip the first reflected RFC 6038 octet.
    pub mangle_reflected: bool,
    /// Refuse every Request-TW-Session with this Accept.
    pub refuse_sessions: Option<Accept>,
    /// RFC 6038 Server octets to hand out.
    pub server_octets: [u8; 2],
    /// Answer the first Request-TW-Session with Accept 0 but Port 0.
    pub first_port_zero: bool,
    /// What the reflector pretends it received as TOS (RFC 7750 S-DSCP-ECN);
    /// `None`: the requested DSCP with ECN 0b01.
    pub fake_tos: Option<u8>,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<ServerEvent>,
    pub requests: Vec<SessionRequest>,
    pub accepted: Vec<AcceptedInfo>,
    pub started: Vec<Sid>,
    pub stopped: Vec<Sid>,
    /// Sender packets received per SID (including dropped ones).
    pub received: HashMap<Sid, u64>,
    /// Sender packets that failed the HMAC check at the reflector.
    pub bad_sender_packets: u64,
    /// Lengths of the sender packets seen.
    pub sender_lens: HashSet<usize>,
    /// The RFC 6038 region to be reflected of the first sender packet.
    pub first_reflect_region: Option<Vec<u8>>,
}

/// The parts of an AcceptedSession the tests check.
#[derive(Debug, Clone)]
pub struct AcceptedInfo {
    pub sid: Sid,
    pub sender: SocketAddr,
    pub reflector: SocketAddr,
    pub format: SessionFormat,
    pub dscp: u8,
    pub padding_length: u32,
    pub timeout: NtpTimestamp,
    pub keyed: bool,
}

/// A running test server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    for x in &mut b {
        *x = rand::random();
    }
    b
}

impl TestServer {
    /// Listens on `ip`, port 0.
    pub fn start(ip: IpAddr, behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind control listener");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let behaviour = Arc::new(behaviour);
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, peer)) => {
                            let (log, stop, b) = (log.clone(), stop.clone(), behaviour.clone());
                            conns.push(std::thread::spawn(move || {
                                serve(s, peer, addr, b, log, stop)
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        TestServer {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Reads the log.
    pub fn log<R>(&self, f: impl FnOnce(&Log) -> R) -> R {
        f(&self.log.lock().unwrap())
    }

    /// Waits (up to 3 s) until `cond` holds of the log: the client may
    /// return before the server has processed its last message.
    pub fn wait_for(&self, cond: impl Fn(&Log) -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if self.log(&cond) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// Writes the test key file (mode 0600) and returns its path.
pub fn key_file() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "ricochet-ping-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("keys.pfs");
    std::fs::write(&p, format!("# test keys\n{IDENTITY}\t{SECRET_HEX}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

struct Reflector {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

struct Pending {
    socket: UdpSocket,
    info: Option<AcceptedInfo>,
    keys: Option<TestKeys>,
}

struct Ctx {
    keys: KeyFile,
    behaviour: Arc<Behaviour>,
    log: Arc<Mutex<Log>>,
    pending: HashMap<Sid, Pending>,
    running: Vec<(Sid, Reflector)>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for (_, r) in self.running.drain(..) {
            r.stop.store(true, Ordering::SeqCst);
            let _ = r.thread.join();
        }
    }
}

impl ServerContext for Ctx {
    fn shared_secret(&mut self, key_id: &KeyId, _: &Selection) -> Result<SharedSecret, Accept> {
        self.keys.lookup(key_id).cloned().ok_or(Accept::Failure)
    }

    fn admit_mode(&mut self, _: Option<&[u8]>, _: &Selection) -> Result<(), Accept> {
        Ok(())
    }

    fn allocate_session(&mut self, request: &SessionRequest) -> Result<SessionGrant, Accept> {
        self.log.lock().unwrap().requests.push(request.clone());
        if let Some(a) = self.behaviour.refuse_sessions {
            return Err(a);
        }
        let socket = UdpSocket::bind(SocketAddr::new(request.reflector.ip(), 0))
            .map_err(|_| Accept::TemporaryResourceLimitation)?;
        let mut port = socket.local_addr().unwrap().port();
        if self.behaviour.first_port_zero && self.pending.is_empty() && self.running.is_empty() {
            port = 0;
        }
        let sid = Sid::compose(
            request.reflector.ip(),
            NtpTimestamp::from_utc_ns(now_utc_ns()),
            random(),
        );
        self.pending.insert(
            sid,
            Pending {
                socket,
                info: None,
                keys: None,
            },
        );
        Ok(SessionGrant {
            port,
            sid,
            server_octets: self.behaviour.server_octets,
        })
    }

    fn install_session(&mut self, s: AcceptedSession) -> Result<(), Accept> {
        let p = self.pending.get_mut(&s.sid).ok_or(Accept::InternalError)?;
        let info = AcceptedInfo {
            sid: s.sid,
            sender: s.sender,
            reflector: s.reflector,
            format: s.format,
            dscp: s.dscp,
            padding_length: s.padding_length,
            timeout: s.timeout,
            keyed: s.test_keys.is_some(),
        };
        p.keys = s.test_keys.as_ref().map(TestKeys::new);
        p.info = Some(info.clone());
        self.log.lock().unwrap().accepted.push(info);
        Ok(())
    }

    fn start_session(&mut self, sid: Sid) -> Accept {
        let Some(p) = self.pending.remove(&sid) else {
            return Accept::Failure;
        };
        let Some(info) = p.info else {
            return Accept::Failure;
        };
        self.log.lock().unwrap().started.push(sid);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, b, log) = (stop.clone(), self.behaviour.clone(), self.log.clone());
            std::thread::spawn(move || reflect(p.socket, info, p.keys, b, log, stop))
        };
        self.running.push((sid, Reflector { stop, thread }));
        Accept::Ok
    }

    fn stop_session(&mut self, sid: Sid, _timeout: NtpTimestamp) {
        self.log.lock().unwrap().stopped.push(sid);
        if let Some(i) = self.running.iter().position(|(s, _)| *s == sid) {
            let (_, r) = self.running.remove(i);
            r.stop.store(true, Ordering::SeqCst);
            let _ = r.thread.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    behaviour: Arc<Behaviour>,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let config = ServerConfig {
        modes: behaviour.modes,
        count: 1024,
        start_time: NtpTimestamp::from_utc_ns(now_utc_ns()),
        max_sessions: 16,
        greeting_unused: [0; 12],
        test_format: SessionFormat::default(),
    };
    let rnd = ServerRandom {
        challenge: random(),
        salt: random(),
        server_iv: random(),
    };
    let mut server = Server::new(config, rnd, peer, local);
    let mut ctx = Ctx {
        keys: KeyFile::parse(&format!("{IDENTITY}\t{SECRET_HEX}\n")).unwrap(),
        behaviour,
        log: log.clone(),
        pending: HashMap::new(),
        running: Vec::new(),
    };
    let mut buf = [0u8; 4096];
    loop {
        // Log first, answer second: a client that got its answer finds the
        // event logged.
        while let Some(e) = server.poll_event() {
            log.lock().unwrap().events.push(e);
        }
        let out = server.pending_output().to_vec();
        if !out.is_empty() {
            if s.write_all(&out).is_err() {
                break;
            }
            server.consume_output(out.len());
        }
        if server.wants_close() || stop.load(Ordering::SeqCst) {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = server.receive(&buf[..n], &mut ctx);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    while let Some(e) = server.poll_event() {
        log.lock().unwrap().events.push(e);
    }
}

fn reflect(
    socket: UdpSocket,
    info: AcceptedInfo,
    keys: Option<TestKeys>,
    b: Arc<Behaviour>,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
) {
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let fmt = info.format;
    let offset = ClockState::read()
        .map(|c| c.tai_offset())
        .unwrap_or_default();
    let mode = match fmt.security {
        TestSecurity::Unauthenticated => None,
        TestSecurity::Authenticated => Some(TestProtection::Authenticated),
        TestSecurity::Encrypted => Some(TestProtection::Encrypted),
    };
    let ee = ErrorEstimate::from_error_ns(false, fmt.timestamp_format, 1_000_000);
    let tos = b.fake_tos.unwrap_or((info.dscp << 2) | 1);
    let mut rx = vec![0u8; 65536];
    let mut out = vec![0u8; 65536];
    let mut rseq = 0u32;
    let mut received = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let (n, src) = match socket.recv_from(&mut rx) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let t2 = fmt.encode_timestamp(now_tai_ns(), offset);
        if src != info.sender {
            continue;
        }
        received += 1;
        log.lock().unwrap().sender_lens.insert(n);
        let pkt = &mut rx[..n];
        if let (Some(k), Some(m)) = (&keys, mode) {
            if k.unprotect(PacketRole::Sender, m, pkt).is_err() {
                log.lock().unwrap().bad_sender_packets += 1;
                continue;
            }
        }
        if n < 4 {
            continue;
        }
        if fmt.reflect_len() > 0 {
            let at = fmt.sender_padding_offset();
            let mut l = log.lock().unwrap();
            if l.first_reflect_region.is_none() {
                l.first_reflect_region = pkt.get(at..at + fmt.reflect_len()).map(<[u8]>::to_vec);
            }
        }
        let seq = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
        if b.drop_forward.contains(&seq) {
            continue;
        }
        let copies = if b.duplicate.contains(&seq) { 2 } else { 1 };
        let mut bogus = pkt.to_vec();
        bogus[..4].copy_from_slice(&1_000_000u32.to_be_bytes());
        let mut jobs: Vec<(Vec<u8>, u32)> = vec![(pkt.to_vec(), seq); copies];
        if b.bogus_after == Some(seq) {
            jobs.push((bogus, 1_000_000));
        }
        for (input, s) in jobs {
            let params = ReflectParams {
                seq: rseq,
                t2,
                error_estimate: ee,
                max_len: 65535,
            };
            let meta = RxMeta { ttl: 255, tos };
            let len = match reflect_twamp(&fmt, &input, &meta, &params, &mut out) {
                Ok(l) => l,
                Err(_) => continue,
            };
            rseq += 1;
            if b.drop_backward.contains(&s) {
                continue;
            }
            if b.mangle_reflected && fmt.reflect_len() > 0 {
                out[fmt.reflector_header_len()] ^= 0xff;
            }
            let t3 = fmt.encode_timestamp(now_tai_ns(), offset);
            let reply = &mut out[..len];
            match (&keys, mode) {
                (Some(k), Some(TestProtection::Encrypted)) => {
                    set_t3(reply, &fmt, t3).unwrap();
                    k.protect(PacketRole::Reflector, TestProtection::Encrypted, reply)
                        .unwrap();
                }
                (Some(k), Some(TestProtection::Authenticated)) => {
                    k.protect(PacketRole::Reflector, TestProtection::Authenticated, reply)
                        .unwrap();
                    set_t3(reply, &fmt, t3).unwrap();
                }
                _ => set_t3(reply, &fmt, t3).unwrap(),
            }
            if b.corrupt_hmac.contains(&s) && mode.is_some() {
                reply[96] ^= 1;
            }
            let _ = socket.send_to(reply, src);
        }
    }
    log.lock().unwrap().received.insert(info.sid, received);
}

/// True if ::1 can be bound (IPv6 loopback present).
pub fn ipv6_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// The Modes a test server offers when every feature is wanted.
pub fn all_modes() -> Modes {
    Modes::SECURITY
        | Modes::INDIVIDUAL_SESSION_CONTROL
        | Modes::REFLECT_OCTETS
        | Modes::SYMMETRICAL_SIZE
        | Modes::DSCP_ECN
        | Modes::PTP_TIMESTAMPS
}
