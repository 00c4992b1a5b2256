//! TEST-ONLY support: a toy block protocol to drive the event loop, and a
//! harness running a [`Server`] on a thread. Nothing here is TWAMP.
//!
//! The toy protocol: on open the server sends a 64-octet greeting of `G`.
//! The client sends 16-octet blocks; the first octet selects:
//!
//! * `T` / `I`: enter / leave the testing state (echoed);
//! * `D`: ask for a handler deadline 200 ms later; when it fires the server
//!   sends a block of `d` (the `D` block is echoed first);
//! * `B`: the server answers with 1 MiB of `b` (amplification, to fill
//!   buffers quickly);
//! * `Q`: the server answers with 60 000 octets of `q` (under the default 64 KiB output bound) and closes;
//! * `C`: reply `c`, 7 zero, then the shared connection counter (8 octets);
//! * `P`: admit a session through the policy and allocate the port in
//!   octets 1–2 (big-endian); reply `p`, Accept code, port (2 octets), 12 zero;
//! * anything else: echoed.
//!
//! While testing, every REFWAIT sweep makes the server send a block of `S`.
#![allow(dead_code)]

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ricochet_control::event_loop::{
    Action, Activity, CloseReason, ConnInfo, ConnectionHandler, Context, HandlerFactory,
    LoopSettings, Reload, Server, StopHandle,
};
use ricochet_control::metrics::Metrics;
use ricochet_control::policy::{accept, ClientKey, Policy, Rules};
use ricochet_control::ports::{PortAllocator, PortRange};

pub const BLOCK: usize = 16;
pub const GREETING: [u8; 64] = [b'G'; 64];
pub const AMPLIFY: usize = 1 << 20;
pub const FINAL_LEN: usize = 60_000;
/// Bound on every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct BlockHandler {
    info: ConnInfo,
    buf: Vec<u8>,
    testing: bool,
    deadline: Option<Instant>,
    sessions: Vec<(ClientKey, u16)>,
    closes: Sender<(u64, CloseReason)>,
}

impl ConnectionHandler for BlockHandler {
    /// Connections opened so far (shows the loop-owned state reaches
    /// every handler).
    type State = u64;

    fn on_open(&mut self, ctx: &mut Context<'_, u64>) -> Action {
        *ctx.state += 1;
        Action::write(GREETING.to_vec())
    }

    fn on_bytes(&mut self, ctx: &mut Context<'_, u64>, data: &[u8]) -> Action {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut close = false;
        while self.buf.len() >= BLOCK && !close {
            let block: Vec<u8> = self.buf.drain(..BLOCK).collect();
            match block[0] {
                b'T' => {
                    self.testing = true;
                    out.extend_from_slice(&block);
                }
                b'I' => {
                    self.testing = false;
                    out.extend_from_slice(&block);
                }
                b'D' => {
                    self.deadline = Some(ctx.now + Duration::from_millis(200));
                    out.extend_from_slice(&block);
                }
                b'B' => out.resize(out.len() + AMPLIFY, b'b'),
                b'Q' => {
                    out.resize(out.len() + FINAL_LEN, b'q');
                    close = true;
                }
                b'C' => {
                    let mut reply = [0u8; BLOCK];
                    reply[0] = b'c';
                    reply[8..].copy_from_slice(&ctx.state.to_be_bytes());
                    out.extend_from_slice(&reply);
                }
                b'P' => {
                    let requested = u16::from_be_bytes([block[1], block[2]]);
                    let (code, port) = self.open_session(ctx, requested);
                    let mut reply = [0u8; BLOCK];
                    reply[0] = b'p';
                    reply[1] = code;
                    reply[2..4].copy_from_slice(&port.to_be_bytes());
                    out.extend_from_slice(&reply);
                }
                _ => out.extend_from_slice(&block),
            }
        }
        Action { write: out, close }
    }

    fn on_timer(&mut self, ctx: &mut Context<'_, u64>) -> Action {
        if let Some(d) = self.deadline {
            if ctx.now >= d {
                self.deadline = None;
                return Action::write(vec![b'd'; BLOCK]);
            }
        }
        if self.testing {
            return Action::write(vec![b'S'; BLOCK]);
        }
        Action::none()
    }

    fn on_close(&mut self, ctx: &mut Context<'_, u64>, reason: CloseReason) {
        for (key, port) in self.sessions.drain(..) {
            ctx.policy.release_session(key);
            ctx.ports.release(port);
        }
        let _ = self.closes.send((self.info.id, reason));
    }

    fn activity(&self) -> Activity {
        if self.testing {
            Activity::Testing
        } else if self.buf.is_empty() {
            Activity::Idle
        } else {
            Activity::Partial
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

impl BlockHandler {
    fn open_session(&mut self, ctx: &mut Context<'_, u64>, requested: u16) -> (u8, u16) {
        let key = self.info.client;
        if let Err(reason) = ctx.policy.admit_session(key) {
            ctx.metrics.session_refused(reason);
            return (reason.accept_code().unwrap_or(accept::FAILURE), 0);
        }
        match ctx.ports.allocate(requested) {
            Some(port) => {
                self.sessions.push((key, port));
                (accept::OK, port)
            }
            None => {
                ctx.policy.release_session(key);
                (accept::TEMPORARY_RESOURCE_LIMITATION, 0)
            }
        }
    }
}

pub struct BlockFactory {
    closes: Sender<(u64, CloseReason)>,
    reload_rules: Option<Rules>,
    reloaded: Sender<()>,
}

impl HandlerFactory for BlockFactory {
    type Handler = BlockHandler;

    fn create(&mut self, info: &ConnInfo) -> BlockHandler {
        BlockHandler {
            info: info.clone(),
            buf: Vec::new(),
            testing: false,
            deadline: None,
            sessions: Vec::new(),
            closes: self.closes.clone(),
        }
    }

    fn reload(&mut self, _state: &mut u64) -> Result<Reload, String> {
        let rules = self.reload_rules.take();
        let _ = self.reloaded.send(());
        match rules {
            Some(rules) => Ok(Reload {
                rules: Some(rules),
                settings: None,
            }),
            None => Err("no new rules prepared".to_owned()),
        }
    }
}

pub fn rules() -> Rules {
    Rules {
        allow: vec![],
        deny: vec![],
        max_connections: 1000,
        max_connections_per_client: 1000,
        max_sessions: 100,
        max_sessions_per_client: 100,
        ipv6_client_prefix: 64,
        identities: Default::default(),
    }
}

pub fn settings() -> LoopSettings {
    LoopSettings {
        servwait: Duration::from_secs(60),
        stall: Duration::from_secs(60),
        sweep_interval: Duration::from_secs(60),
        ..LoopSettings::default()
    }
}

pub struct Harness {
    pub addr: SocketAddr,
    pub stop: StopHandle,
    pub metrics: Arc<Metrics>,
    pub closes: Receiver<(u64, CloseReason)>,
    pub reloaded: Receiver<()>,
    done: Receiver<std::io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

pub struct Options {
    pub settings: LoopSettings,
    pub rules: Rules,
    pub ports: PortRange,
    pub reload_rules: Option<Rules>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            settings: settings(),
            rules: rules(),
            ports: PortRange::new(20000, 20099).expect("range"),
            reload_rules: None,
        }
    }
}

impl Harness {
    pub fn start(options: Options) -> Harness {
        let metrics = Arc::new(Metrics::new());
        let (close_tx, closes) = mpsc::channel();
        let (reload_tx, reloaded) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let m = metrics.clone();
        let thread = std::thread::spawn(move || {
            let factory = BlockFactory {
                closes: close_tx,
                reload_rules: options.reload_rules,
                reloaded: reload_tx,
            };
            let mut server = Server::bind(
                &["127.0.0.1:0".parse().expect("addr")],
                options.settings,
                Policy::new(options.rules),
                PortAllocator::new(options.ports),
                m,
                0u64,
                factory,
            )
            .expect("bind");
            ready_tx
                .send((server.local_addrs()[0], server.stop_handle()))
                .expect("ready");
            let result = server.run();
            let _ = done_tx.send(result);
        });
        let (addr, stop) = ready.recv_timeout(WAIT).expect("server ready");
        Harness {
            addr,
            stop,
            metrics,
            closes,
            reloaded,
            done,
            thread: Some(thread),
        }
    }

    /// Stop the server and wait (bounded) for `run` to return.
    pub fn stop_and_wait(&mut self) -> std::io::Result<()> {
        self.stop.stop();
        let result = self.done.recv_timeout(WAIT).expect("server stops in time");
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        result
    }

    /// Connect and read the greeting. The loop finalizes a connection
    /// (metrics, policy) in the same turn as its `on_close`, so once a close
    /// was reported, a greeting on a new connection proves the bookkeeping
    /// of the earlier close is done.
    pub fn barrier(&self) -> TcpStream {
        greeted(self.addr)
    }

    pub fn next_close(&self) -> (u64, CloseReason) {
        self.closes.recv_timeout(WAIT).expect("a connection closes")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
            let _ = self.done.recv_timeout(WAIT);
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.set_write_timeout(Some(WAIT)).expect("write timeout");
    s
}

/// Connect and read the greeting.
pub fn greeted(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    let mut g = [0u8; 64];
    s.read_exact(&mut g).expect("greeting");
    assert_eq!(g, GREETING);
    s
}

pub fn block(kind: u8) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[0] = kind;
    b
}

/// Read until the server closes; returns the octets read and the time it
/// took. A reset counts as a close.
pub fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "expected the server to close, got {e} after {:?}",
                start.elapsed()
            ),
        }
    }
    (all, start.elapsed())
}
