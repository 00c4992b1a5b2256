//! TEST-ONLY support for the TWAMP tests: an in-memory recording
//! `SessionTable`, a daemon running on a thread with that table, and a
//! blocking TWAMP-Control client around `protocol::client::Client`.
//!
//! Every wait is bounded by [`WAIT`] and wakes on an event (socket data, a
//! condition variable the table signals), never on a sleep.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ricochet_control::app::{Daemon, DaemonOptions, Timing};
use ricochet_control::cli::Cli;
use ricochet_control::config::{Config, ModeName};
use ricochet_control::event_loop::StopHandle;
use ricochet_control::keys::StaticKeys;
use ricochet_control::ports::PortRange;
use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{Client, ClientConfig, ClientError, ClientEvent, ClientRandom};
use ricochet_protocol::control::{RequestTwSessionRepr, SetUpResponseRepr, Sid, TypeP};
use ricochet_protocol::crypto::{SessionKeys, SharedSecret};
use ricochet_protocol::modes::Modes;
use ricochet_protocol::time::NtpTimestamp;
use ricochet_reflector::session_table::{
    ListenerSpec, SessionActivity, SessionSpec, SessionTable, TableError,
};

/// Bound on every wait.
pub const WAIT: Duration = Duration::from_secs(10);
/// The identity every test key file defines, and its secret (hex).
pub const IDENTITY: &str = "lab";
pub const SECRET_HEX: &str = "7477616d702d6c61622d736563726574";
/// A second identity, restricted by some tests.
pub const RESTRICTED: &str = "probe";
pub const RESTRICTED_HEX: &str = "70726f62652d736563726574";
/// Test ports handed out by default.
pub const FIRST_PORT: u16 = 30000;

// ---------------------------------------------------------------------------
// The recording data plane.

/// What the recording table saw of one session.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub spec: SessionSpec,
    pub started: bool,
    /// The grace of `stop`, if stopped.
    pub stopped: Option<Duration>,
    pub removed: bool,
}

/// Every call, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add(Sid),
    Start(Sid),
    Stop(Sid, Duration),
    Remove(Sid),
}

/// The table's contents and the test's script.
#[derive(Debug, Default)]
pub struct Record {
    pub sessions: BTreeMap<Sid, Recorded>,
    pub ops: Vec<Op>,
    /// What `activity().idle` answers per session (absent = no packet yet).
    pub idle: HashMap<Sid, Duration>,
    /// Refuse the next `add` with this error.
    pub fail_next_add: Option<TableError>,
}

impl Record {
    /// Sessions present (added, not removed).
    pub fn live(&self) -> impl Iterator<Item = &Recorded> {
        self.sessions.values().filter(|r| !r.removed)
    }
}

/// A handle on the recording shared by the table and the test.
#[derive(Clone, Default)]
pub struct Recording(Arc<(Mutex<Record>, Condvar)>);

impl Recording {
    pub fn table(&self) -> Box<dyn SessionTable> {
        Box::new(RecordingTable(self.clone()))
    }

    pub fn lock(&self) -> MutexGuard<'_, Record> {
        self.0 .0.lock().expect("recording lock")
    }

    /// Wait (bounded) until `f` returns `Some`, re-checking on every change.
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut(&Record) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut guard = self.lock();
        loop {
            if let Some(t) = f(&guard) {
                return t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}: {guard:#?}");
            guard = self.0 .1.wait_timeout(guard, left).expect("condvar").0;
        }
    }

    pub fn session(&self, sid: &Sid) -> Recorded {
        self.lock()
            .sessions
            .get(sid)
            .cloned()
            .unwrap_or_else(|| panic!("session {sid} not in the data plane"))
    }

    fn change(
        &self,
        f: impl FnOnce(&mut Record) -> Result<(), TableError>,
    ) -> Result<(), TableError> {
        let r = f(&mut self.lock());
        self.0 .1.notify_all();
        r
    }
}

struct RecordingTable(Recording);

impl SessionTable for RecordingTable {
    fn add(&mut self, spec: SessionSpec) -> Result<(), TableError> {
        self.0.change(|r| {
            if let Some(e) = r.fail_next_add.take() {
                return Err(e);
            }
            let sid = spec.sid;
            if r.sessions.get(&sid).is_some_and(|s| !s.removed) {
                return Err(TableError::Exists(sid));
            }
            r.ops.push(Op::Add(sid));
            r.sessions.insert(
                sid,
                Recorded {
                    spec,
                    started: false,
                    stopped: None,
                    removed: false,
                },
            );
            Ok(())
        })
    }

    fn start(&mut self, sid: &Sid) -> Result<(), TableError> {
        self.0.change(|r| {
            let s = live(r, sid)?;
            s.started = true;
            r.ops.push(Op::Start(*sid));
            Ok(())
        })
    }

    fn stop(&mut self, sid: &Sid, grace: Duration) -> Result<(), TableError> {
        self.0.change(|r| {
            let s = live(r, sid)?;
            s.stopped = Some(grace);
            r.ops.push(Op::Stop(*sid, grace));
            Ok(())
        })
    }

    fn remove(&mut self, sid: &Sid) -> Result<(), TableError> {
        self.0.change(|r| {
            let s = live(r, sid)?;
            s.removed = true;
            r.ops.push(Op::Remove(*sid));
            Ok(())
        })
    }

    fn activity(&self, sid: &Sid) -> Option<SessionActivity> {
        let r = self.0.lock();
        r.sessions.get(sid).filter(|s| !s.removed)?;
        Some(SessionActivity {
            reflected: 0,
            dropped: 0,
            idle: r.idle.get(sid).copied(),
        })
    }

    fn sessions(&self) -> Vec<Sid> {
        self.0.lock().live().map(|s| s.spec.sid).collect()
    }

    fn add_listener(&mut self, _spec: ListenerSpec) -> Result<(), TableError> {
        Err(TableError::DataPlane(
            "no listeners in the recording table".into(),
        ))
    }

    fn remove_listener(&mut self, local: SocketAddr) -> Result<(), TableError> {
        Err(TableError::Address(local, "no listeners".into()))
    }
}

fn live<'r>(r: &'r mut Record, sid: &Sid) -> Result<&'r mut Recorded, TableError> {
    r.sessions
        .get_mut(sid)
        .filter(|s| !s.removed)
        .ok_or(TableError::NoSuchSession(*sid))
}

// ---------------------------------------------------------------------------
// Files and configuration.

/// A private directory removed at the end of the test.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("ricochet-ctlint-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// Write `text` to `name` with permission bits `mode`.
    pub fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The standard key file: both identities.
pub fn key_file_text() -> String {
    format!("# test identities\n{IDENTITY}\t{SECRET_HEX}\n{RESTRICTED}\t{RESTRICTED_HEX}\n")
}

pub fn secret_of(hex_text: &str) -> SharedSecret {
    SharedSecret::new(hex::decode(hex_text).expect("hex"))
}

/// Loopback on both families, every port chosen by the kernel.
pub fn loopback_listeners() -> Vec<SocketAddr> {
    vec![
        (Ipv4Addr::LOCALHOST, 0).into(),
        (Ipv6Addr::LOCALHOST, 0).into(),
    ]
}

/// A configuration offering `modes`, with a 0600 key file in `dir`,
/// generous limits, metrics on an ephemeral loopback port and the cheapest
/// PBKDF2 count.
pub fn config(dir: &TempDir, modes: &[ModeName]) -> Config {
    let mut c = Config {
        listen: loopback_listeners(),
        test_ports: PortRange::new(FIRST_PORT, FIRST_PORT + 299).expect("range"),
        log_level: "warn".into(),
        ..Config::default()
    };
    c.security.modes = modes.iter().copied().collect();
    c.security.pbkdf2_count = 1024;
    c.security.key_file = Some(dir.file("twamp.pfs", &key_file_text(), 0o600));
    c.metrics.listen = (Ipv4Addr::LOCALHOST, 0).into();
    c.policy.max_connections = 1000;
    c.policy.max_connections_per_client = 1000;
    c.policy.max_sessions = 1000;
    c.policy.max_sessions_per_client = 100;
    c
}

/// Short timers: the sweep runs every 20 ms; SERVWAIT, REFWAIT and the
/// stall timer are long unless a test shortens them.
pub fn timing() -> Timing {
    Timing {
        servwait: Duration::from_secs(60),
        refwait: Duration::from_secs(60),
        stall: Duration::from_secs(60),
        sweep_interval: Duration::from_millis(20),
    }
}

pub const ALL_SECURITY: [ModeName; 4] = [
    ModeName::Unauthenticated,
    ModeName::Authenticated,
    ModeName::Encrypted,
    ModeName::Mixed,
];

// ---------------------------------------------------------------------------
// The daemon on a thread.

pub struct TestDaemon {
    /// Control listeners: IPv4 first, then IPv6 (as configured).
    pub addrs: Vec<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub stop: StopHandle,
    pub recording: Recording,
    done: Receiver<std::io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestDaemon {
    pub fn start(config: Config, timing: Timing) -> TestDaemon {
        Self::start_with(cli(), config, Some(timing))
    }

    /// Start with the command line `cli` (whose `--config` file is re-read
    /// on reload).
    pub fn start_with(cli: Cli, config: Config, timing: Option<Timing>) -> TestDaemon {
        Self::try_start(cli, config, timing).expect("daemon starts")
    }

    pub fn try_start(
        cli: Cli,
        config: Config,
        timing: Option<Timing>,
    ) -> Result<TestDaemon, String> {
        let recording = Recording::default();
        let table = recording.table();
        let (ready_tx, ready) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let started = StaticKeys::load(&config, cli.config.as_deref()).and_then(|keys| {
                Daemon::start(DaemonOptions {
                    cli,
                    config,
                    keys,
                    table,
                    log: None,
                    timing,
                })
            });
            match started {
                Ok(daemon) => {
                    let _ = ready_tx.send(Ok((
                        daemon.control_addrs(),
                        daemon.metrics_addr(),
                        daemon.stop_handle(),
                    )));
                    let _ = done_tx.send(daemon.run());
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let (addrs, metrics_addr, stop) = ready.recv_timeout(WAIT).expect("daemon thread")?;
        Ok(TestDaemon {
            addrs,
            metrics_addr: metrics_addr.expect("metrics enabled in tests"),
            stop,
            recording,
            done,
            thread: Some(thread),
        })
    }

    pub fn v4(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Everything the loop did before this call is finished once this
    /// returns: a Set-Up-Response is handled in a later loop turn than the
    /// accept of its connection, so a completed unauthenticated set-up
    /// proves every earlier turn (reloads, sweeps, closes) ran.
    pub fn barrier(&self) {
        let mut c = TwampConn::connect(self.v4(), Peer::open());
        c.setup().expect("barrier set-up");
    }

    /// GET /metrics (after a [`TestDaemon::barrier`] when counts must be
    /// settled).
    pub fn scrape(&self) -> String {
        let mut s = TcpStream::connect_timeout(&self.metrics_addr, WAIT).expect("metrics");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        out
    }

    /// The value of one sample line of the exposition (0 when absent).
    pub fn metric(&self, sample: &str) -> u64 {
        metric_value(&self.scrape(), sample)
    }

    pub fn stop_and_wait(&mut self) -> std::io::Result<()> {
        self.stop.stop();
        let r = self.done.recv_timeout(WAIT).expect("daemon stops in time");
        if let Some(t) = self.thread.take() {
            t.join().expect("daemon thread");
        }
        r
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
            let _ = self.done.recv_timeout(WAIT);
        }
    }
}

/// The value of `sample` (a full `name{labels}` prefix) in an exposition.
pub fn metric_value(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0, |v| {
            v.trim().parse().unwrap_or_else(|_| panic!("{sample}: {v}"))
        })
}

/// A command line without a file and without overrides.
pub fn cli() -> Cli {
    <Cli as clap::Parser>::parse_from(["ricochet-control"])
}

/// A command line reading `path` (re-read on reload).
pub fn cli_with_config(path: &Path) -> Cli {
    <Cli as clap::Parser>::parse_from([
        "ricochet-control",
        "--config",
        path.to_str().expect("utf-8 path"),
    ])
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

// ---------------------------------------------------------------------------
// The blocking client.

/// Who a test client is.
#[derive(Clone)]
pub struct Peer {
    pub allowed: Modes,
    pub wanted: Modes,
    pub identity: Option<&'static str>,
    pub secret: Option<SharedSecret>,
}

impl Peer {
    /// Unauthenticated only.
    pub fn open() -> Peer {
        Peer {
            allowed: Modes::UNAUTHENTICATED,
            wanted: Modes::NONE,
            identity: None,
            secret: None,
        }
    }

    /// The `lab` identity allowing the security mode(s) `allowed`.
    pub fn lab(allowed: Modes) -> Peer {
        Peer {
            allowed,
            wanted: Modes::NONE,
            identity: Some(IDENTITY),
            secret: Some(secret_of(SECRET_HEX)),
        }
    }

    pub fn wanting(mut self, features: Modes) -> Peer {
        self.wanted = features;
        self
    }
}

/// How a connection ended for the client.
#[derive(Debug)]
pub enum End {
    /// The server closed (EOF or reset).
    Closed,
    /// The client state machine failed.
    Client(ClientError),
}

/// One TWAMP-Control connection driven by `protocol::client::Client`.
pub struct TwampConn {
    pub stream: TcpStream,
    pub client: Client,
    /// The connection's AES/HMAC session keys (the client draws them).
    pub keys: SessionKeys,
}

impl TwampConn {
    pub fn connect(addr: SocketAddr, peer: Peer) -> TwampConn {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_write_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let mut octets = [0u8; 64];
        getrandom::fill(&mut octets).expect("random");
        let keys = SessionKeys::from_bytes(octets[..48].try_into().expect("48"));
        let config = ClientConfig {
            allowed: peer.allowed,
            wanted: peer.wanted,
            key_id: peer
                .identity
                .map(|i| SetUpResponseRepr::key_id_from_name(i.as_bytes()).expect("identity")),
            secret: peer.secret,
            max_count: 32768,
            max_sessions: 1000,
        };
        let random = ClientRandom {
            session_keys: keys.clone(),
            client_iv: octets[48..].try_into().expect("16"),
        };
        TwampConn {
            stream,
            client: Client::new(config, random),
            keys,
        }
    }

    /// Write what the client has queued.
    pub fn flush(&mut self) {
        let out = self.client.pending_output().to_vec();
        self.stream.write_all(&out).expect("write");
        self.client.consume_output(out.len());
    }

    /// The next client event, reading as needed (bounded by [`WAIT`]).
    pub fn next(&mut self) -> Result<ClientEvent, End> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(ev) = self.client.poll_event() {
                return Ok(ev);
            }
            self.flush();
            let mut buf = [0u8; 4096];
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(End::Closed),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => panic!("read: {e}"),
            };
            assert!(Instant::now() < deadline, "no client event within {WAIT:?}");
            if let Err(e) = self.client.receive(&buf[..n]) {
                // Events queued before the error come first.
                if let Some(ev) = self.client.poll_event() {
                    return Ok(ev);
                }
                return Err(End::Client(e));
            }
        }
    }

    pub fn event(&mut self) -> ClientEvent {
        self.next()
            .unwrap_or_else(|e| panic!("connection ended: {e:?}"))
    }

    /// Run the set-up: `Ok` when Ready, `Err(accept)` when refused.
    pub fn setup(&mut self) -> Result<(), Accept> {
        loop {
            match self.event() {
                ClientEvent::SetupSent { .. } => continue,
                ClientEvent::Ready { .. } => return Ok(()),
                ClientEvent::Refused { accept } => return Err(accept),
                other => panic!("unexpected {other:?} during set-up"),
            }
        }
    }

    /// Request a session; `Ok((port, sid))` or `Err(accept)`.
    pub fn request(&mut self, request: &RequestTwSessionRepr) -> Result<(u16, Sid), Accept> {
        let tag = self.client.request_session(request).expect("request");
        match self.event() {
            ClientEvent::SessionAccepted {
                tag: t, port, sid, ..
            } if t == tag => Ok((port, sid)),
            ClientEvent::SessionRefused { tag: t, accept } if t == tag => Err(accept),
            other => panic!("unexpected {other:?} answering a request"),
        }
    }

    /// Start-Sessions for `accepted` sessions; the Start-Ack's Accept.
    pub fn start(&mut self, accepted: u32) -> Accept {
        self.client.start_sessions(accepted).expect("start");
        match self.event() {
            ClientEvent::StartAck { accept } => accept,
            other => panic!("unexpected {other:?} answering Start-Sessions"),
        }
    }

    /// Stop-Sessions (no answer).
    pub fn stop(&mut self) {
        self.client.stop_sessions(Accept::Ok).expect("stop");
        self.flush();
    }

    /// Start-N or Stop-N: every N-Ack as (Accept, SIDs), in order.
    pub fn n_command(&mut self, start: bool, sids: &[Sid]) -> Vec<(Accept, Vec<Sid>)> {
        if start {
            self.client.start_n(sids).expect("start-n");
        } else {
            self.client.stop_n(sids).expect("stop-n");
        }
        let mut acks = Vec::new();
        let mut covered = 0;
        while covered < sids.len() {
            match self.event() {
                ClientEvent::NAck { accept, sids, .. } => {
                    covered += sids.len();
                    acks.push((accept, sids));
                }
                other => panic!("unexpected {other:?} answering an N command"),
            }
        }
        acks
    }

    /// Read until the server closes; the octets read.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        read_to_close(&mut self.stream)
    }
}

/// Read until the peer closes (EOF or reset); the octets read.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }
}

/// A Request-TW-Session with zero addresses (the control connection's, RFC
/// 5357 §3.5) of `family`, from `sender_port`, asking for `receiver_port`.
pub fn request(family: IpAddr, sender_port: u16, receiver_port: u16) -> RequestTwSessionRepr {
    let (ipvn, zero) = match family {
        IpAddr::V4(_) => (4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpAddr::V6(_) => (6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    RequestTwSessionRepr {
        ipvn,
        conf_sender: 0,
        conf_receiver: 0,
        schedule_slots: 0,
        packets: 0,
        sender_port,
        receiver_port,
        sender_address: zero,
        receiver_address: zero,
        sid: Sid::ZERO,
        padding_length: 27,
        start_time: NtpTimestamp::default(),
        timeout: NtpTimestamp::from_interval_ns(2_000_000_000),
        type_p: TypeP::from_dscp(0).expect("dscp"),
        octets_to_reflect: [0; 2],
        padding_to_reflect: 0,
        hmac: [0; 16],
    }
}
