//! The single-threaded mio event loop serving TWAMP-Control connections.
//!
//! The loop owns the sockets, the timers and the shared admission state
//! ([`Policy`], [`PortAllocator`], [`Metrics`]); the protocol itself lives
//! behind [`ConnectionHandler`] (one per connection, made by a
//! [`HandlerFactory`]), so the sans-IO server state machine plugs in without
//! the loop knowing any message format.
//!
//! What the loop enforces, whatever the handler does:
//!
//! * **Admission at accept**: [`Policy::admit_connection`] (prefix lists,
//!   global and per-client connection limits). A refused connection is
//!   closed before any octet is sent and counted by reason.
//! * **SERVWAIT** (RFC 5357 §3.1): a connection whose handler reports
//!   [`Activity::Idle`] and completes no message for `servwait` is closed.
//!   Monitoring is suspended while the handler reports [`Activity::Testing`]
//!   and resumes, from that moment, when it stops testing.
//! * **Stall**: a message that started ([`Activity::Partial`]) but does not
//!   complete within `stall` closes the connection (RFC 4656 §3.1 allows
//!   dropping incomplete messages; counted as a `timeout` rejection). Output
//!   that makes no progress for `stall` closes it too.
//! * **Fairness**: one turn reads at most 64 KiB from a connection and
//!   accepts at most [`ACCEPT_BUDGET`] connections per listener; the rest
//!   waits for the next turn, so a flood cannot starve the others, the
//!   timers, a stop or a reload.
//! * **Backpressure**: at most `max_output` octets may wait for a peer that
//!   does not read; beyond that the connection is closed at once.
//! * **REFWAIT sweep**: every `sweep_interval` the factory gets
//!   [`HandlerFactory::sweep`] (for state that outlives connections, such as
//!   stopped sessions in their Timeout), then the handlers of testing
//!   connections get [`ConnectionHandler::on_timer`], where they end sessions
//!   that saw no test packet for REFWAIT (RFC 5357 §3.1, RFC 5938 §4.2); the
//!   data plane knows the packet times, the handler asks it.
//! * **Stop and reload**: SIGTERM/SIGINT (or [`StopHandle::stop`]) stops
//!   accepting, closes every connection (flushing what was written, within
//!   `shutdown_grace`) and returns from [`Server::run`]. SIGHUP (or
//!   [`StopHandle::reload`]) calls [`HandlerFactory::reload`]; existing
//!   connections keep going.
//!
//! Timers are a `BinaryHeap` of deadlines whose earliest entry bounds the
//! poll timeout; each connection keeps at most one live entry (later entries
//! are superseded lazily).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::config::Config;
use crate::metrics::{ConnRefusal, Metrics, RejectReason, ReloadResult};
use crate::policy::{ClientKey, Policy, Rules};
use crate::ports::PortAllocator;

/// Most listeners one server may have.
pub const MAX_LISTENERS: usize = 64;
const WAKER: Token = Token(MAX_LISTENERS);
const SIGNALS: Token = Token(MAX_LISTENERS + 1);
const CONN_BASE: usize = MAX_LISTENERS + 2;
/// Octets read from a socket per `read` call.
const READ_CHUNK: usize = 4096;
/// Octets read from one connection before the others get a turn.
const READ_BUDGET: usize = 64 * 1024;
/// Connections accepted from one listener per loop turn: a connection flood
/// must not starve established connections, timers, stop or reload.
pub const ACCEPT_BUDGET: usize = 64;

const FLAG_STOP: u8 = 1;
const FLAG_RELOAD: u8 = 2;

/// Timing and buffer limits of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopSettings {
    /// SERVWAIT: idle connections are closed after this long.
    pub servwait: Duration,
    /// A started message (or pending output) must progress within this.
    pub stall: Duration,
    /// Cadence of the REFWAIT sweep over testing connections.
    pub sweep_interval: Duration,
    /// Octets allowed to wait for a peer that does not read.
    pub max_output: usize,
    /// Time a closing connection gets to deliver its last output.
    pub close_linger: Duration,
    /// Time all connections get to deliver their last output on stop.
    pub shutdown_grace: Duration,
    /// Pause before accepting again after `accept(2)` ran out of resources.
    pub accept_backoff: Duration,
    /// Set IPV6_V6ONLY on IPv6 listeners.
    pub v6only: bool,
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            servwait: Duration::from_secs(900),
            stall: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(10),
            max_output: 64 * 1024,
            close_linger: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(2),
            accept_backoff: Duration::from_millis(100),
            v6only: true,
        }
    }
}

impl LoopSettings {
    /// Settings of a configuration. The REFWAIT sweep runs every tenth of
    /// REFWAIT, between 1 and 10 s, so a silent session ends at most that
    /// much after REFWAIT.
    pub fn from_config(config: &Config) -> LoopSettings {
        LoopSettings {
            servwait: config.timers.servwait(),
            stall: config.timers.stall(),
            sweep_interval: Duration::from_secs((config.timers.refwait / 10).clamp(1, 10)),
            v6only: config.v6only,
            ..LoopSettings::default()
        }
    }
}

/// Who a connection is.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique for the life of the process.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address the client connected to (the Receiver address for
    /// all-zero Request-TW-Session addresses, RFC 5357 §3.5).
    pub local: SocketAddr,
    /// The client's key for per-client limits.
    pub client: ClientKey,
}

/// What handlers may use while handling an event.
#[derive(Debug)]
pub struct Context<'a, S> {
    /// Admission policy (session limits, identity modes).
    pub policy: &'a mut Policy,
    /// Reflector port allocator.
    pub ports: &'a mut PortAllocator,
    /// Metrics to count into.
    pub metrics: &'a Metrics,
    /// The application's shared state (e.g. the data plane's
    /// `SessionTable` and the key store), owned by the loop.
    pub state: &'a mut S,
    /// The time of the event.
    pub now: Instant,
}

/// What a handler wants done after an event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Action {
    /// Octets to send (appended to the connection's output).
    pub write: Vec<u8>,
    /// Close the connection once `write` (and earlier output) is delivered.
    pub close: bool,
}

impl Action {
    /// Nothing to do.
    pub fn none() -> Action {
        Action::default()
    }

    /// Send `bytes`.
    pub fn write(bytes: impl Into<Vec<u8>>) -> Action {
        Action {
            write: bytes.into(),
            close: false,
        }
    }

    /// Send `bytes`, then close.
    pub fn write_and_close(bytes: impl Into<Vec<u8>>) -> Action {
        Action {
            write: bytes.into(),
            close: true,
        }
    }

    /// Close without sending more.
    pub fn close() -> Action {
        Action {
            write: Vec::new(),
            close: true,
        }
    }
}

/// Where a connection stands, for the loop's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Between messages, no test running: SERVWAIT applies.
    Idle,
    /// Part of a message received: the stall timer applies. Report it
    /// whenever a message is incomplete, also while testing: a message must
    /// complete within `stall` of its first octet.
    Partial,
    /// Sessions started: SERVWAIT suspended, REFWAIT sweep applies.
    Testing,
}

/// Why a connection closed (the `reason` label of the close metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed its side.
    PeerClosed,
    /// The handler asked to close.
    Handler,
    /// Idle for SERVWAIT.
    ServWait,
    /// A message did not complete within the stall timeout.
    Stalled,
    /// Output made no progress within the stall timeout.
    WriteStalled,
    /// The peer let more than `max_output` octets pile up.
    OutputOverflow,
    /// A socket error.
    IoError,
    /// The server is stopping.
    Shutdown,
}

impl CloseReason {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Handler => "handler",
            CloseReason::ServWait => "servwait",
            CloseReason::Stalled => "stalled",
            CloseReason::WriteStalled => "write_stalled",
            CloseReason::OutputOverflow => "output_overflow",
            CloseReason::IoError => "io_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The per-connection protocol: bytes in, bytes out, plus timers.
///
/// Callbacks never block. After each callback the loop reads
/// [`ConnectionHandler::activity`] and [`ConnectionHandler::deadline`] to set
/// its timers.
pub trait ConnectionHandler {
    /// State shared by every connection, handed to each callback in
    /// [`Context::state`] (single-threaded: no locking, no `RefCell`).
    type State;
    /// The connection was admitted; return e.g. the Server Greeting.
    fn on_open(&mut self, ctx: &mut Context<'_, Self::State>) -> Action;
    /// Octets arrived (any split: a message may span calls, a call may hold
    /// several messages).
    fn on_bytes(&mut self, ctx: &mut Context<'_, Self::State>, data: &[u8]) -> Action;
    /// The handler's own [`deadline`](ConnectionHandler::deadline) passed, or
    /// the REFWAIT sweep visits a testing connection.
    fn on_timer(&mut self, ctx: &mut Context<'_, Self::State>) -> Action {
        let _ = ctx;
        Action::none()
    }
    /// The connection is closing (called exactly once): release sessions,
    /// ports and data-plane entries here. Output is no longer possible.
    fn on_close(&mut self, ctx: &mut Context<'_, Self::State>, reason: CloseReason);
    /// Where the connection stands (drives SERVWAIT and the stall timer).
    fn activity(&self) -> Activity;
    /// When the handler next wants [`on_timer`](ConnectionHandler::on_timer)
    /// (e.g. the end of a Stop-Sessions Timeout); `None` = no wish.
    fn deadline(&self) -> Option<Instant> {
        None
    }
}

/// A companion protocol served by the same loop on its own sockets (the
/// IKEv2 responder on UDP 500/4500): it registers its sources with tokens
/// the loop hands out, gets their readiness events and a timer, and shares
/// the loop's state (single-threaded: no locking). Callbacks never block;
/// readiness is edge-triggered, so `on_ready` drains its socket (within a
/// budget, returning `true` to be called again next turn).
pub trait Service<S> {
    /// Register every source with a token from `token` (call it once per
    /// source; at most [`MAX_SERVICE_TOKENS`] per loop).
    fn register(
        &mut self,
        registry: &Registry,
        token: &mut dyn FnMut() -> io::Result<Token>,
    ) -> io::Result<()>;
    /// A source registered with `token` is ready. `true`: work may be left
    /// (call again next turn).
    fn on_ready(&mut self, token: Token, ctx: &mut Context<'_, S>) -> bool;
    /// When [`Service::on_timer`] must run next.
    fn deadline(&self) -> Option<Instant>;
    /// The deadline passed.
    fn on_timer(&mut self, ctx: &mut Context<'_, S>);
    /// The loop is stopping.
    fn on_stop(&mut self, ctx: &mut Context<'_, S>) {
        let _ = ctx;
    }
}

/// Tokens available to services (counted down from `usize::MAX`, far above
/// any connection token).
pub const MAX_SERVICE_TOKENS: usize = 256;
const SERVICE_TOP: usize = usize::MAX;

/// Changes a reload brings.
#[derive(Debug, Default)]
pub struct Reload {
    /// New admission rules.
    pub rules: Option<Rules>,
    /// New loop settings (listeners are not re-bound: a changed address
    /// needs a restart).
    pub settings: Option<LoopSettings>,
}

/// Makes a handler for each admitted connection.
pub trait HandlerFactory {
    /// The handler type.
    type Handler: ConnectionHandler;
    /// A handler for a newly admitted connection.
    fn create(&mut self, info: &ConnInfo) -> Self::Handler;
    /// Re-read configuration and key material (SIGHUP), updating `state`
    /// as needed. An error keeps the running configuration; the message is
    /// logged.
    fn reload(&mut self, state: &mut StateOf<Self>) -> Result<Reload, String> {
        let _ = state;
        Ok(Reload::default())
    }
    /// Periodic work on the shared state, every `sweep_interval`, before the
    /// testing connections' [`ConnectionHandler::on_timer`].
    fn sweep(&mut self, ctx: &mut Context<'_, StateOf<Self>>) {
        let _ = ctx;
    }
}

/// The shared state type of a factory's handlers.
pub type StateOf<F> = <<F as HandlerFactory>::Handler as ConnectionHandler>::State;

/// Thread-safe handle to stop or reload a running [`Server`].
#[derive(Debug, Clone)]
pub struct StopHandle {
    flags: Arc<AtomicU8>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Ask the server to stop gracefully (as SIGTERM).
    pub fn stop(&self) {
        self.raise(FLAG_STOP);
    }

    /// Ask the server to reload (as SIGHUP).
    pub fn reload(&self) {
        self.raise(FLAG_RELOAD);
    }

    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake the control loop");
        }
    }
}

/// Bind a non-blocking TCP listener on `addr`; IPv6 sockets get
/// IPV6_V6ONLY = `v6only`. Errors name the address and say what to check.
pub fn bind_listener(addr: SocketAddr, v6only: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let explain = |e: io::Error| {
        let hint = match e.kind() {
            ErrorKind::AddrInUse => {
                "; another process (another TWAMP server?) holds it, or v6only = false makes [::] cover IPv4 too"
            }
            ErrorKind::PermissionDenied => {
                "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
            }
            ErrorKind::AddrNotAvailable => "; the address is not configured on this host",
            _ => "",
        };
        io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(explain)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6only).map_err(explain)?;
    }
    socket.set_reuse_address(true).map_err(explain)?;
    socket.bind(&addr.into()).map_err(explain)?;
    socket.listen(1024).map_err(explain)?;
    socket.set_nonblocking(true).map_err(explain)?;
    Ok(socket.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Delivering the last output, then waiting for the peer's FIN.
    Closing {
        reason: CloseReason,
        until: Instant,
        write_shut: bool,
    },
    /// Ready to be removed.
    Done(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Linger,
    ServWait,
    Stalled,
    WriteStalled,
    Handler,
}

struct Shared<S> {
    policy: Policy,
    ports: PortAllocator,
    metrics: Arc<Metrics>,
    settings: LoopSettings,
    state: S,
}

impl<S> Shared<S> {
    fn ctx(&mut self, now: Instant) -> Context<'_, S> {
        Context {
            policy: &mut self.policy,
            ports: &mut self.ports,
            metrics: &self.metrics,
            state: &mut self.state,
            now,
        }
    }
}

struct Conn<H> {
    info: ConnInfo,
    stream: TcpStream,
    handler: H,
    out: Vec<u8>,
    out_pos: usize,
    writable_interest: bool,
    phase: Phase,
    activity: Activity,
    idle_since: Instant,
    partial_since: Option<Instant>,
    write_blocked_since: Option<Instant>,
    handler_fired_at: Option<Instant>,
    scheduled: Option<Instant>,
}

impl<H: ConnectionHandler> Conn<H> {
    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Run a handler callback and update the activity timers.
    fn call(
        &mut self,
        shared: &mut Shared<H::State>,
        now: Instant,
        bytes: bool,
        f: impl FnOnce(&mut H, &mut Context<'_, H::State>) -> Action,
    ) -> Action {
        let action = f(&mut self.handler, &mut shared.ctx(now));
        let before = self.activity;
        let after = self.handler.activity();
        if after == Activity::Partial {
            self.partial_since.get_or_insert(now);
        } else {
            self.partial_since = None;
            if bytes || before == Activity::Testing {
                // A message completed, or testing ended: SERVWAIT (re)starts.
                self.idle_since = now;
            }
        }
        self.activity = after;
        action
    }

    /// Apply a handler's action.
    fn apply(&mut self, shared: &mut Shared<H::State>, now: Instant, action: Action) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        if !action.write.is_empty() {
            if self.pending() + action.write.len() > shared.settings.max_output {
                self.close(shared, now, CloseReason::OutputOverflow);
                return;
            }
            if self.out_pos > 0 {
                self.out.drain(..self.out_pos);
                self.out_pos = 0;
            }
            self.out.extend_from_slice(&action.write);
            self.flush(shared, now);
        }
        if action.close && matches!(self.phase, Phase::Open) {
            self.close(shared, now, CloseReason::Handler);
        }
    }

    /// Write as much pending output as the socket takes.
    fn flush(&mut self, shared: &mut Shared<H::State>, now: Instant) {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    self.hard_close(shared, now, CloseReason::IoError);
                    return;
                }
                Ok(n) => {
                    self.out_pos += n;
                    self.write_blocked_since = Some(now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(conn = self.info.id, error = %e, "write failed");
                    self.hard_close(shared, now, CloseReason::IoError);
                    return;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            self.write_blocked_since = None;
            if let Phase::Closing {
                reason,
                until,
                write_shut: false,
            } = self.phase
            {
                // All delivered: send our FIN and wait (bounded) for theirs,
                // so unread input cannot turn the close into a reset that
                // destroys the last message in flight.
                let _ = self.stream.shutdown(Shutdown::Write);
                self.phase = Phase::Closing {
                    reason,
                    until,
                    write_shut: true,
                };
            }
        } else if self.write_blocked_since.is_none() {
            self.write_blocked_since = Some(now);
        }
    }

    /// Start closing: the handler is told once; output already queued gets
    /// `close_linger` to be delivered when `reason` allows it.
    fn close(&mut self, shared: &mut Shared<H::State>, now: Instant, reason: CloseReason) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        self.handler.on_close(&mut shared.ctx(now), reason);
        let linger = match reason {
            CloseReason::Handler => shared.settings.close_linger,
            CloseReason::Shutdown => shared.settings.shutdown_grace,
            _ => {
                self.phase = Phase::Done(reason);
                return;
            }
        };
        self.phase = Phase::Closing {
            reason,
            until: now + linger,
            write_shut: false,
        };
        self.flush(shared, now);
    }

    /// Close at once, dropping queued output.
    fn hard_close(&mut self, shared: &mut Shared<H::State>, now: Instant, reason: CloseReason) {
        match self.phase {
            Phase::Open => {
                self.handler.on_close(&mut shared.ctx(now), reason);
                self.phase = Phase::Done(reason);
            }
            Phase::Closing { reason: r, .. } => self.phase = Phase::Done(r),
            Phase::Done(_) => {}
        }
    }

    /// Read until the socket is drained or the budget is spent. Returns
    /// true when data may remain (the caller must come back: readiness is
    /// edge-triggered).
    fn on_readable(&mut self, shared: &mut Shared<H::State>, now: Instant) -> bool {
        let mut buf = [0u8; READ_CHUNK];
        let mut budget = READ_BUDGET;
        loop {
            if matches!(self.phase, Phase::Done(_)) {
                return false;
            }
            if budget == 0 {
                return true;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    match self.phase {
                        Phase::Open => self.close(shared, now, CloseReason::PeerClosed),
                        Phase::Closing { reason, .. } => self.phase = Phase::Done(reason),
                        Phase::Done(_) => {}
                    }
                    return false;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    if !matches!(self.phase, Phase::Open) {
                        continue; // closing: discard what the peer still sends
                    }
                    let data = &buf[..n];
                    let action = self.call(shared, now, true, |h, ctx| h.on_bytes(ctx, data));
                    self.apply(shared, now, action);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(conn = self.info.id, error = %e, "read failed");
                    self.hard_close(shared, now, CloseReason::IoError);
                    return false;
                }
            }
        }
    }

    /// The earliest timer of this connection, if any.
    fn deadline(&self, settings: &LoopSettings) -> Option<(Instant, TimerKind)> {
        match self.phase {
            Phase::Done(_) => return None,
            Phase::Closing { until, .. } => return Some((until, TimerKind::Linger)),
            Phase::Open => {}
        }
        let mut best: Option<(Instant, TimerKind)> = None;
        let mut consider = |t: Instant, k: TimerKind| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, k));
            }
        };
        match self.activity {
            Activity::Idle => consider(self.idle_since + settings.servwait, TimerKind::ServWait),
            Activity::Partial => {
                if let Some(since) = self.partial_since {
                    consider(since + settings.stall, TimerKind::Stalled);
                }
            }
            Activity::Testing => {}
        }
        if let Some(since) = self.write_blocked_since {
            if self.pending() > 0 {
                consider(since + settings.stall, TimerKind::WriteStalled);
            }
        }
        if let Some(d) = self.handler.deadline() {
            // A deadline at or before the last firing was consumed already.
            if self.handler_fired_at.is_none_or(|f| d > f) {
                consider(d, TimerKind::Handler);
            }
        }
        best
    }

    fn on_deadline(&mut self, shared: &mut Shared<H::State>, now: Instant) {
        let Some((due, kind)) = self.deadline(&shared.settings) else {
            return;
        };
        if due > now {
            return;
        }
        match kind {
            TimerKind::Linger => {
                if let Phase::Closing { reason, .. } = self.phase {
                    self.phase = Phase::Done(reason);
                }
            }
            TimerKind::ServWait => self.close(shared, now, CloseReason::ServWait),
            TimerKind::Stalled => {
                shared.metrics.message_rejected(RejectReason::Timeout);
                self.close(shared, now, CloseReason::Stalled);
            }
            TimerKind::WriteStalled => self.close(shared, now, CloseReason::WriteStalled),
            TimerKind::Handler => {
                self.handler_fired_at = Some(now);
                self.timer(shared, now);
            }
        }
    }

    fn timer(&mut self, shared: &mut Shared<H::State>, now: Instant) {
        let action = self.call(shared, now, false, |h, ctx| h.on_timer(ctx));
        self.apply(shared, now, action);
    }
}

/// The TWAMP-Control server loop.
pub struct Server<F: HandlerFactory> {
    poll: Poll,
    listeners: Vec<(TcpListener, SocketAddr)>,
    conns: Slab<Conn<F::Handler>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    shared: Shared<StateOf<F>>,
    factory: F,
    flags: Arc<AtomicU8>,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    next_id: u64,
    accept_paused_until: Option<Instant>,
    next_sweep: Instant,
    stopping_until: Option<Instant>,
    /// Connections (key, id) that spent their read budget with data left.
    ready: Vec<(usize, u64)>,
    /// Listeners that spent their accept budget with connections left.
    accept_ready: Vec<usize>,
    /// Companion protocols, and which service each service token belongs to.
    services: Vec<Box<dyn Service<StateOf<F>>>>,
    service_tokens: Vec<(Token, usize)>,
    /// Service tokens that spent their budget with work left.
    service_ready: Vec<Token>,
}

impl<F: HandlerFactory> Server<F> {
    /// Bind every address of `listen` and prepare the loop.
    pub fn bind(
        listen: &[SocketAddr],
        settings: LoopSettings,
        policy: Policy,
        ports: PortAllocator,
        metrics: Arc<Metrics>,
        state: StateOf<F>,
        factory: F,
    ) -> io::Result<Server<F>> {
        if listen.is_empty() || listen.len() > MAX_LISTENERS {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("give 1 to {MAX_LISTENERS} listen addresses"),
            ));
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::with_capacity(listen.len());
        for (i, addr) in listen.iter().enumerate() {
            let std_listener = bind_listener(*addr, settings.v6only)?;
            let mut listener = TcpListener::from_std(std_listener);
            let local = listener.local_addr()?;
            poll.registry()
                .register(&mut listener, Token(i), Interest::READABLE)?;
            listeners.push((listener, local));
        }
        let now = Instant::now();
        Ok(Server {
            poll,
            listeners,
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            next_sweep: now + settings.sweep_interval,
            shared: Shared {
                policy,
                ports,
                metrics,
                settings,
                state,
            },
            factory,
            flags: Arc::new(AtomicU8::new(0)),
            waker,
            signals: None,
            next_id: 1,
            accept_paused_until: None,
            stopping_until: None,
            ready: Vec::new(),
            accept_ready: Vec::new(),
            services: Vec::new(),
            service_tokens: Vec::new(),
            service_ready: Vec::new(),
        })
    }

    /// Serve `service` from this loop (before [`Server::run`]).
    pub fn add_service(&mut self, mut service: Box<dyn Service<StateOf<F>>>) -> io::Result<()> {
        let index = self.services.len();
        let mut taken = Vec::new();
        let used = self.service_tokens.len();
        let mut next = || {
            let n = used + taken.len();
            if n >= MAX_SERVICE_TOKENS {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("services may register at most {MAX_SERVICE_TOKENS} sources"),
                ));
            }
            let t = Token(SERVICE_TOP - n);
            taken.push(t);
            Ok(t)
        };
        service.register(self.poll.registry(), &mut next)?;
        self.service_tokens
            .extend(taken.into_iter().map(|t| (t, index)));
        self.services.push(service);
        Ok(())
    }

    fn service_of(&self, token: Token) -> Option<usize> {
        self.service_tokens
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, i)| *i)
    }

    fn service_event(&mut self, token: Token, now: Instant) {
        let Some(i) = self.service_of(token) else {
            return;
        };
        let more = self.services[i].on_ready(token, &mut self.shared.ctx(now));
        if more && !self.service_ready.contains(&token) {
            self.service_ready.push(token);
        }
    }

    /// Handle SIGTERM and SIGINT (graceful stop) and SIGHUP (reload) in
    /// this loop. Signals are process-wide: call this in the daemon only.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The bound listener addresses (real ports when 0 was asked).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, a)| *a).collect()
    }

    /// A handle to stop or reload the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flags: self.flags.clone(),
            waker: self.waker.clone(),
        }
    }

    /// The application state (for inspection).
    pub fn state(&self) -> &StateOf<F> {
        &self.shared.state
    }

    /// The admission policy (for inspection).
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// Run until stopped. Returns after a graceful stop; an `Err` only for a
    /// failure of the poller itself.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        for addr in self.local_addrs() {
            tracing::info!(%addr, "TWAMP-Control listening");
        }
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for (key, id) in std::mem::take(&mut self.ready) {
                if self.conns.get(key).is_some_and(|c| c.info.id == id) {
                    self.conn_event(key, now, true, false);
                }
            }
            for index in std::mem::take(&mut self.accept_ready) {
                self.accept(index, now);
            }
            for token in std::mem::take(&mut self.service_ready) {
                self.service_event(token, now);
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t > SERVICE_TOP - MAX_SERVICE_TOKENS => {
                        self.service_event(Token(t), now)
                    }
                    SIGNALS => self.take_signals(),
                    Token(i) if i < self.listeners.len() => self.accept(i, now),
                    Token(t) if t >= CONN_BASE => self.conn_event(
                        t - CONN_BASE,
                        now,
                        event.is_readable(),
                        event.is_writable(),
                    ),
                    _ => {}
                }
            }
            let flags = self.flags.swap(0, Ordering::SeqCst);
            if flags & FLAG_RELOAD != 0 {
                self.reload(now);
            }
            if flags & FLAG_STOP != 0 && self.stopping_until.is_none() {
                self.begin_stop(now);
            }
            self.run_timers(now);
            if let Some(until) = self.stopping_until {
                if self.conns.is_empty() || now >= until {
                    self.finish_stop(now);
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() || !self.accept_ready.is_empty() || !self.service_ready.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut next = self.next_sweep;
        for service in &self.services {
            if let Some(t) = service.deadline() {
                next = next.min(t);
            }
        }
        if let Some(Reverse((t, _, _))) = self.timers.peek() {
            next = next.min(*t);
        }
        if let Some(t) = self.accept_paused_until {
            next = next.min(t);
        }
        if let Some(t) = self.stopping_until {
            next = next.min(t);
        }
        // Round up to whole milliseconds so a sub-millisecond remainder does
        // not make the poller spin with a zero timeout.
        let wait = next.saturating_duration_since(now);
        Some(wait + Duration::from_micros(999))
    }

    fn take_signals(&mut self) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        for signal in signals.pending() {
            match signal {
                SIGTERM | SIGINT => {
                    tracing::info!(signal, "stop requested");
                    self.flags.fetch_or(FLAG_STOP, Ordering::SeqCst);
                }
                SIGHUP => {
                    tracing::info!("reload requested (SIGHUP)");
                    self.flags.fetch_or(FLAG_RELOAD, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        if self.stopping_until.is_some() {
            return;
        }
        if let Some(until) = self.accept_paused_until {
            if now < until {
                return;
            }
            self.accept_paused_until = None;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some((listener, _)) = self.listeners.get(index) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::debug!(error = %e, "connection aborted before accept");
                    continue;
                }
                Err(e) => {
                    // Out of descriptors or memory: the connection stays in
                    // the backlog; try again after a pause.
                    tracing::warn!(error = %e, "accept failed; pausing new connections");
                    self.shared
                        .metrics
                        .connection_refused(ConnRefusal::AcceptError);
                    self.accept_paused_until = Some(now + self.shared.settings.accept_backoff);
                    return;
                }
            }
        }
        // Budget spent with connections possibly left: come back next turn
        // (readiness is edge-triggered, no new event would arrive).
        if !self.accept_ready.contains(&index) {
            self.accept_ready.push(index);
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let client = match self.shared.policy.admit_connection(peer.ip()) {
            Ok(client) => client,
            Err(reason) => {
                tracing::debug!(%peer, %reason, "connection refused");
                self.shared
                    .metrics
                    .connection_refused(ConnRefusal::Policy(reason));
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "accepted socket has no local address");
                self.shared.policy.release_connection(client);
                self.shared
                    .metrics
                    .connection_refused(ConnRefusal::AcceptError);
                return;
            }
        };
        // Control messages are small and answer-driven: send at once.
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, Token(CONN_BASE + key), Interest::READABLE)
        {
            tracing::warn!(%peer, error = %e, "cannot register connection");
            self.shared.policy.release_connection(client);
            self.shared
                .metrics
                .connection_refused(ConnRefusal::AcceptError);
            return;
        }
        let info = ConnInfo {
            id: self.next_id,
            peer: canonical(peer),
            local: canonical(local),
            client,
        };
        self.next_id += 1;
        tracing::debug!(conn = info.id, %peer, %local, "connection accepted");
        self.shared.metrics.connection_opened();
        let handler = self.factory.create(&info);
        let conn = entry.insert(Conn {
            info,
            stream,
            handler,
            out: Vec::new(),
            out_pos: 0,
            writable_interest: false,
            phase: Phase::Open,
            activity: Activity::Idle,
            idle_since: now,
            partial_since: None,
            write_blocked_since: None,
            handler_fired_at: None,
            scheduled: None,
        });
        let action = conn.call(&mut self.shared, now, false, |h, ctx| h.on_open(ctx));
        conn.apply(&mut self.shared, now, action);
        self.settle(key, now);
    }

    fn conn_event(&mut self, key: usize, now: Instant, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if writable && conn.pending() > 0 {
            conn.flush(&mut self.shared, now);
        }
        if readable && conn.on_readable(&mut self.shared, now) {
            self.ready.push((key, conn.info.id));
        }
        self.settle(key, now);
    }

    /// After any event on `key`: finalize a finished connection, or update
    /// its poll interest and timer.
    fn settle(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Phase::Done(reason) = conn.phase {
            self.finalize(key, reason);
            return;
        }
        let want_writable = conn.pending() > 0;
        if want_writable != conn.writable_interest {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(&mut conn.stream, Token(CONN_BASE + key), interest)
            {
                tracing::warn!(conn = conn.info.id, error = %e, "cannot reregister");
                conn.hard_close(&mut self.shared, now, CloseReason::IoError);
                self.settle(key, now);
                return;
            }
            conn.writable_interest = want_writable;
        }
        if let Some((due, _)) = conn.deadline(&self.shared.settings) {
            if conn.scheduled.is_none_or(|s| due < s) {
                conn.scheduled = Some(due);
                self.timers.push(Reverse((due, key, conn.info.id)));
            }
        }
    }

    /// Entries of closed connections stay in the heap until due; under
    /// connection churn rebuild it from the live connections so its size
    /// stays proportional to them.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * self.conns.len() + 64 {
            return;
        }
        let settings = &self.shared.settings;
        self.timers = self
            .conns
            .iter_mut()
            .filter_map(|(key, conn)| {
                conn.scheduled = conn.deadline(settings).map(|(due, _)| due);
                conn.scheduled.map(|due| Reverse((due, key, conn.info.id)))
            })
            .collect();
    }

    fn finalize(&mut self, key: usize, reason: CloseReason) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        deregister(self.poll.registry(), &mut conn.stream);
        self.compact_timers();
        self.shared.policy.release_connection(conn.info.client);
        self.shared.metrics.connection_closed(reason);
        tracing::debug!(conn = conn.info.id, peer = %conn.info.peer, reason = reason.label(), "connection closed");
    }

    fn run_timers(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if self.services[i].deadline().is_some_and(|t| t <= now) {
                self.services[i].on_timer(&mut self.shared.ctx(now));
            }
        }
        if let Some(until) = self.accept_paused_until {
            if now >= until {
                for i in 0..self.listeners.len() {
                    self.accept(i, now);
                }
            }
        }
        while let Some(Reverse((due, key, id))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.info.id != id || conn.scheduled != Some(due) {
                continue; // superseded entry
            }
            conn.scheduled = None;
            conn.on_deadline(&mut self.shared, now);
            self.settle(key, now);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + self.shared.settings.sweep_interval;
            self.factory.sweep(&mut self.shared.ctx(now));
            let testing: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.activity == Activity::Testing && c.phase == Phase::Open)
                .map(|(k, _)| k)
                .collect();
            for key in testing {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.timer(&mut self.shared, now);
                }
                self.settle(key, now);
            }
        }
    }

    fn reload(&mut self, now: Instant) {
        match self.factory.reload(&mut self.shared.state) {
            Ok(reload) => {
                if let Some(rules) = reload.rules {
                    self.shared.policy.set_rules(rules);
                }
                if let Some(settings) = reload.settings {
                    if settings.v6only != self.shared.settings.v6only {
                        tracing::warn!(
                            "v6only changes need a restart; keeping the bound listeners"
                        );
                    }
                    self.next_sweep = now + settings.sweep_interval;
                    self.shared.settings = settings;
                    // Timers may have become shorter: reschedule everyone.
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.scheduled = None;
                        }
                        self.settle(key, now);
                    }
                }
                self.shared.metrics.reloaded(ReloadResult::Ok);
                tracing::info!("configuration reloaded");
            }
            Err(message) => {
                self.shared.metrics.reloaded(ReloadResult::Failed);
                tracing::error!(%message, "reload failed; keeping the running configuration");
            }
        }
    }

    fn begin_stop(&mut self, now: Instant) {
        tracing::info!(
            connections = self.conns.len(),
            "stopping: no new connections, closing the open ones"
        );
        for (mut listener, _) in self.listeners.drain(..) {
            deregister(self.poll.registry(), &mut listener);
        }
        self.stopping_until = Some(now + self.shared.settings.shutdown_grace);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.close(&mut self.shared, now, CloseReason::Shutdown);
            }
            self.settle(key, now);
        }
    }

    fn finish_stop(&mut self, now: Instant) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.hard_close(&mut self.shared, now, CloseReason::Shutdown);
            }
            self.settle(key, now);
        }
        for service in &mut self.services {
            service.on_stop(&mut self.shared.ctx(now));
        }
        tracing::info!("stopped");
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
/// dual-stack socket reports for IPv4 peers) turned into plain IPv4; other
/// addresses (and IPv6 scope ids) unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn deregister(registry: &Registry, source: &mut impl mio::event::Source) {
    if let Err(e) = registry.deregister(source) {
        tracing::debug!(error = %e, "deregister failed");
    }
}

/// Accept errors about one connection (not about our resources).
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(71) // EPROTO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_config() {
        let c = Config::parse("v6only = false\n[timers]\nservwait = 30\nrefwait = 50\nstall = 7")
            .expect("parses");
        let s = LoopSettings::from_config(&c);
        assert_eq!(s.servwait, Duration::from_secs(30));
        assert_eq!(s.stall, Duration::from_secs(7));
        assert_eq!(s.sweep_interval, Duration::from_secs(5));
        assert!(!s.v6only);
        let d = LoopSettings::from_config(&Config::default());
        assert_eq!(d.sweep_interval, Duration::from_secs(10));
    }

    #[test]
    fn v6only_lets_both_wildcards_share_a_port() {
        let v6 = bind_listener("[::]:0".parse().expect("addr"), true);
        let Ok(v6) = v6 else {
            return; // no IPv6 on this host
        };
        let port = v6.local_addr().expect("addr").port();
        let v4 = bind_listener(SocketAddr::from(([0, 0, 0, 0], port)), true);
        assert!(
            v4.is_ok(),
            "IPv4 wildcard must bind beside a v6only wildcard: {v4:?}"
        );
    }

    #[test]
    fn canonical_unmaps_ipv4_mapped_addresses() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:862".parse().expect("addr");
        assert_eq!(
            canonical(mapped),
            "192.0.2.1:862".parse::<SocketAddr>().expect("addr")
        );
        let v6: SocketAddr = "[fe80::1%2]:862".parse().expect("addr");
        assert_eq!(canonical(v6), v6, "scope id kept");
        let v4: SocketAddr = "198.51.100.1:1".parse().expect("addr");
        assert_eq!(canonical(v4), v4);
    }

    #[test]
    fn bind_errors_name_the_address() {
        let first = bind_listener("127.0.0.1:0".parse().expect("addr"), true).expect("bind");
        let addr = first.local_addr().expect("addr");
        let err = bind_listener(addr, true).expect_err("in use");
        let msg = err.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("another process"),
            "{msg}"
        );
    }
}
