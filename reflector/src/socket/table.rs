//! [`SocketSessionTable`]: the [`SessionTable`] of the socket data path.
//!
//! Every TWAMP session gets its own [`BatchSocket`], bound on the session's
//! reflector address and port with the session's DSCP (Type-P, RFC 5357
//! §3.5) and TTL 255; every stateless listener gets one too. The sockets are
//! served by one [`SocketReflector`] loop on its own thread, whose single
//! [`Reflect`] handler looks the socket's key up in a registry shared with
//! the table, checks the source against the session's sender and runs the
//! [`crate::engine`] for the packet.
//!
//! * The control plane's thread binds sockets (so port conflicts are
//!   reported synchronously as [`TableError::Address`]) and hands them to the
//!   loop through its [`ReflectorHandle`]; `remove` returns once the loop has
//!   closed the socket, so the port is free again.
//! * The loop thread does the housekeeping between polls (no thread or timer
//!   per session): every [`TableConfig::housekeeping`] it removes sessions
//!   whose Stop-Sessions grace period is over (and closes their sockets), and
//!   every [`TableConfig::clock_refresh`] it re-reads the host clock state
//!   ([`ClockState::read`]) into a [`ClockCell`] and the handler's copy, from
//!   which every reply's Error Estimate and TAI offset come.
//!
//! The registry is one mutex, taken once per received batch by the loop
//! ([`Reflect::begin_batch`] to [`Reflect::end_batch`]: the packets of a
//! batch share one lock, no per-packet lock) and briefly by control
//! operations; it is never held while waiting for the loop.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::{ArcMutexGuard, Mutex, MutexGuard, RawMutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ricochet_protocol::control::Sid;

use super::batch::RxPacket;
use super::reflector::{
    LoopGone, Reflect, ReflectorConfig, ReflectorHandle, ReplyTos, SocketKey, SocketReflector,
    Stats,
};
use super::udp::{tos_from_dscp, BatchSocket, SocketOptions};
use crate::clock::{ClockCell, ClockSource, ClockState, LeapState, Stamp};
use crate::engine::{same_endpoint, EngineCounters, ListenerEngine, RxMeta, SessionEngine};
use crate::session_table::{
    ListenerSpec, SessionActivity, SessionSpec, SessionTable, StampSessionId, StampSessionSpec,
    TableError,
};
use crate::stamp_engine::{PacketAddrs, StampSessionEngine};

/// Settings of a [`SocketSessionTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// Batch and event sizes of the loop.
    pub reflector: ReflectorConfig,
    /// Options of every socket (timestamping, buffer size, TTL 255,
    /// dual-stack); the TOS is set per session or listener.
    pub socket: SocketOptions,
    /// Period of the sweep that removes stopped sessions after their grace.
    pub housekeeping: Duration,
    /// Period of the clock-state refresh.
    pub clock_refresh: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            reflector: ReflectorConfig::default(),
            socket: SocketOptions::default(),
            housekeeping: Duration::from_millis(100),
            clock_refresh: Duration::from_secs(1),
        }
    }
}

/// The clock state assumed if the kernel cannot be asked: unsynchronized,
/// no TAI offset, the largest error ([`ClockState::error_ns`] makes it 16 s).
const UNKNOWN_CLOCK: ClockState = ClockState {
    tai_offset_s: 0,
    synchronized: false,
    est_error_ns: 0,
    max_error_ns: 0,
    source: ClockSource::Unsynchronized,
    leap: LeapState::None,
    phc_present: false,
};

fn read_clock() -> ClockState {
    ClockState::read().unwrap_or(UNKNOWN_CLOCK)
}

enum Entry {
    Session {
        sid: Sid,
        local: SocketAddr,
        engine: SessionEngine,
    },
    Listener {
        /// The address the spec asked for (port 0 = any).
        requested: SocketAddr,
        local: SocketAddr,
        engine: ListenerEngine,
    },
    /// The stateful STAMP sessions on one port (RFC 8972 §3: told apart by
    /// SSID and sender).
    Stamp {
        local: SocketAddr,
        sessions: Vec<StampSessionEngine>,
        /// Packets that matched no session, discarded.
        unmatched: u64,
    },
}

/// Everything the loop's handler and the table share.
#[derive(Default)]
struct Registry {
    entries: HashMap<SocketKey, Entry>,
    sessions: HashMap<Sid, SocketKey>,
    /// By bound address.
    listeners: HashMap<SocketAddr, SocketKey>,
    /// Stateful STAMP ports, by port.
    stamp_ports: HashMap<u16, SocketKey>,
    next_key: SocketKey,
}

impl Registry {
    fn insert(&mut self, entry: Entry) -> SocketKey {
        let key = self.next_key;
        self.next_key += 1;
        match &entry {
            Entry::Session { sid, .. } => self.sessions.insert(*sid, key),
            Entry::Listener { local, .. } => self.listeners.insert(*local, key),
            Entry::Stamp { local, .. } => self.stamp_ports.insert(local.port(), key),
        };
        self.entries.insert(key, entry);
        key
    }

    fn remove(&mut self, key: SocketKey) -> Option<Entry> {
        let entry = self.entries.remove(&key)?;
        match &entry {
            Entry::Session { sid, .. } => self.sessions.remove(sid),
            Entry::Listener { local, .. } => self.listeners.remove(local),
            Entry::Stamp { local, .. } => self.stamp_ports.remove(&local.port()),
        };
        Some(entry)
    }

    fn session(&self, sid: &Sid) -> Option<&SessionEngine> {
        match self.entries.get(self.sessions.get(sid)?)? {
            Entry::Session { engine, .. } => Some(engine),
            _ => None,
        }
    }

    fn session_mut(&mut self, sid: &Sid) -> Option<&mut SessionEngine> {
        match self.entries.get_mut(self.sessions.get(sid)?)? {
            Entry::Session { engine, .. } => Some(engine),
            _ => None,
        }
    }

    fn stamp_session(&self, id: &StampSessionId) -> Option<&StampSessionEngine> {
        match self.entries.get(self.stamp_ports.get(&id.local_port)?)? {
            Entry::Stamp { sessions, .. } => sessions
                .iter()
                .find(|e| e.ssid() == id.ssid && same_endpoint(e.sender(), id.sender)),
            _ => None,
        }
    }

    /// The listener bound on `local`, or asked for with exactly `local`.
    fn listener_key(&self, local: SocketAddr) -> Option<SocketKey> {
        if let Some(k) = self.listeners.get(&local) {
            return Some(*k);
        }
        self.entries.iter().find_map(|(k, e)| match e {
            Entry::Listener { requested, .. } if *requested == local => Some(*k),
            _ => None,
        })
    }
}

struct Shared {
    registry: Arc<Mutex<Registry>>,
    clock: ClockCell,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock()
    }
}

/// The loop's per-packet handler.
struct TableHandler {
    shared: Arc<Shared>,
    /// The registry, held from `begin_batch` to `end_batch`.
    batch: Option<ArcMutexGuard<RawMutex, Registry>>,
    clock: ClockState,
    /// The TOS the last reply asked for (Class of Service TLV).
    reply_tos: Option<u8>,
    /// Number of the current pass over a received batch (first or second,
    /// `Reflect::defer`), from 1: a stateful STAMP session answered in this
    /// pass (its engine carries the number) has its next packet wait for
    /// the second pass, so that its Follow-Up Telemetry carries this
    /// reply's transmit stamp.
    pass: u64,
}

impl Reflect for TableHandler {
    fn reply_tos(&mut self) -> Option<u8> {
        self.reply_tos.take()
    }

    fn tx_stamp(&mut self, key: SocketKey, payload: &[u8], dst: IpAddr, stamp: Stamp) {
        // Called outside a batch; lock unless one is open.
        let mut own;
        let reg: &mut Registry = match self.batch.as_deref_mut() {
            Some(r) => r,
            None => {
                own = self.shared.lock();
                &mut own
            }
        };
        if let Some(Entry::Stamp { sessions, .. }) = reg.entries.get_mut(&key) {
            // The reply names its session: sent to the sender, with its SSID
            // and our Sequence Number.
            if let Some(e) = sessions.iter_mut().find(|e| {
                e.sender().ip().to_canonical() == dst.to_canonical() && e.reply_matches(payload)
            }) {
                if let Some(seq) = payload.get(..4) {
                    e.record_tx(u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]]), stamp);
                }
            }
        }
    }

    fn reflect(&mut self, key: SocketKey, rx: &RxPacket<'_>, tx: &mut [u8]) -> Option<usize> {
        let now = Instant::now();
        self.reply_tos = None;
        let addrs = Some(PacketAddrs {
            src: rx.src,
            dst: rx.dst,
            src_mac: None,
        });
        // RFC 5357 §4.2.1: 255 only if the TTL cannot be read.
        let meta = RxMeta {
            ttl: rx.ttl.unwrap_or(255),
            tos: rx.tos.unwrap_or(0),
        };
        // Outside a batch (a caller that does not open one) lock here.
        let mut own;
        let reg: &mut Registry = match self.batch.as_deref_mut() {
            Some(r) => r,
            None => {
                own = self.shared.lock();
                &mut own
            }
        };
        // A socket without entry is being removed: drop.
        match reg.entries.get_mut(&key)? {
            Entry::Session { engine, .. } => {
                engine.check_source(rx.src).ok()?;
                engine
                    .reflect_at(rx.payload, meta, rx.rx_stamp, &self.clock, now, tx)
                    .ok()
            }
            Entry::Listener { engine, .. } => {
                let n = engine
                    .reflect_from(rx.payload, meta, addrs, rx.rx_stamp, &self.clock, now, tx)
                    .ok()?;
                self.reply_tos = engine.reply_dscp().map(|d| tos_from_dscp(d, 0));
                Some(n)
            }
            Entry::Stamp {
                sessions,
                unmatched,
                ..
            } => {
                let Some(engine) = sessions.iter_mut().find(|e| e.matches(rx.src, rx.payload))
                else {
                    // RFC 8972 §3: discard packets of no provisioned session.
                    *unmatched = unmatched.saturating_add(1);
                    return None;
                };
                // Follow-Up Telemetry: the transmit stamps of earlier
                // replies came in through `tx_stamp` (SO_TIMESTAMPING on the
                // error queue); a device that delivers none leaves Timestamp
                // 0 and mode 0, counted by the engine.
                let n = engine
                    .reflect_at(rx.payload, meta, addrs, rx.rx_stamp, &self.clock, now, tx)
                    .ok()?;
                self.reply_tos = engine.reply_dscp().map(|d| tos_from_dscp(d, 0));
                engine.set_pass_mark(self.pass);
                Some(n)
            }
        }
    }

    fn defer(&mut self, key: SocketKey, rx: &RxPacket<'_>) -> bool {
        let Some(reg) = self.batch.as_deref() else {
            return false;
        };
        match reg.entries.get(&key) {
            Some(Entry::Stamp { sessions, .. }) => sessions
                .iter()
                .find(|e| e.matches(rx.src, rx.payload))
                .is_some_and(|e| e.pass_mark() == self.pass),
            _ => false,
        }
    }

    fn begin_second_pass(&mut self) {
        self.pass += 1;
    }

    fn begin_batch(&mut self, _key: SocketKey) {
        self.pass += 1;
        self.batch = Some(Mutex::lock_arc(&self.shared.registry));
    }

    fn end_batch(&mut self) {
        self.batch = None;
    }
}

/// The loop of a [`SocketSessionTable`] made with [`SocketSessionTable::new`]:
/// run it on a thread of your choice. Until it runs, table operations that
/// need the loop (add, remove) block.
pub struct TableDriver {
    reflector: SocketReflector,
    handler: TableHandler,
    housekeeping: Duration,
    clock_refresh: Duration,
    next_sweep: Instant,
    next_clock: Instant,
    expired: Vec<SocketKey>,
}

impl std::fmt::Debug for TableDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableDriver")
            .field("reflector", &self.reflector)
            .finish_non_exhaustive()
    }
}

impl TableDriver {
    /// Serves sockets and housekeeping until the table shuts the loop down.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            let more = self
                .reflector
                .poll_once(&mut self.handler, Some(self.housekeeping))?;
            self.housekeep(Instant::now());
            if !more {
                return Ok(());
            }
        }
    }

    fn housekeep(&mut self, now: Instant) {
        if now >= self.next_clock {
            let state = read_clock();
            self.handler.shared.clock.store(&state);
            self.handler.clock = state;
            self.next_clock = now + self.clock_refresh;
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + self.housekeeping;
        {
            let mut reg = self.handler.shared.lock();
            self.expired
                .extend(reg.entries.iter().filter_map(|(k, e)| match e {
                    Entry::Session { engine, .. } if engine.is_expired(now) => Some(*k),
                    _ => None,
                }));
            for key in &self.expired {
                if let Some(Entry::Session { sid, local, engine }) = reg.remove(*key) {
                    let c = engine.counters();
                    tracing::debug!(
                        %sid, %local, reflected = c.reflected, dropped = c.dropped.total(),
                        "test session ended after its Stop-Sessions grace period"
                    );
                }
            }
        }
        for key in self.expired.drain(..) {
            self.reflector.remove_socket(key);
        }
    }
}

/// The socket data path's [`SessionTable`] (see the module documentation).
pub struct SocketSessionTable {
    handle: ReflectorHandle,
    shared: Arc<Shared>,
    socket: SocketOptions,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for SocketSessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reg = self.shared.lock();
        f.debug_struct("SocketSessionTable")
            .field("sessions", &reg.sessions.len())
            .field("listeners", &reg.listeners.len())
            .finish_non_exhaustive()
    }
}

fn loop_gone(_: LoopGone) -> TableError {
    TableError::DataPlane(LoopGone.to_string())
}

impl SocketSessionTable {
    /// Creates the table and the loop that serves it, without starting the
    /// loop: run [`TableDriver::run`] on a thread.
    pub fn new(cfg: &TableConfig) -> io::Result<(SocketSessionTable, TableDriver)> {
        let reflector = SocketReflector::new(&cfg.reflector)?;
        let clock = read_clock();
        let shared = Arc::new(Shared {
            registry: Arc::new(Mutex::new(Registry::default())),
            clock: ClockCell::new(&clock),
        });
        let now = Instant::now();
        let table = SocketSessionTable {
            handle: reflector.handle(),
            shared: Arc::clone(&shared),
            socket: cfg.socket.clone(),
            thread: None,
        };
        let driver = TableDriver {
            reflector,
            handler: TableHandler {
                shared,
                batch: None,
                clock,
                reply_tos: None,
                pass: 1,
            },
            housekeeping: cfg.housekeeping.max(Duration::from_millis(1)),
            clock_refresh: cfg.clock_refresh,
            next_sweep: now,
            next_clock: now + cfg.clock_refresh,
            expired: Vec::new(),
        };
        Ok((table, driver))
    }

    /// Creates the table and runs its loop on a new thread
    /// (`ricochet-sockets`); [`Self::shutdown`] or dropping the table ends it.
    pub fn spawn(cfg: &TableConfig) -> io::Result<SocketSessionTable> {
        let (mut table, driver) = SocketSessionTable::new(cfg)?;
        let thread = std::thread::Builder::new()
            .name("ricochet-sockets".into())
            .spawn(move || driver.run())?;
        table.thread = Some(thread);
        Ok(table)
    }

    /// Stops the loop and, if [`Self::spawn`] started it, waits for it and
    /// returns its outcome (a [`TableDriver`] run elsewhere returns from
    /// [`TableDriver::run`]). Every socket is closed. Dropping the table
    /// does the same.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_loop()
    }

    fn stop_loop(&mut self) -> io::Result<()> {
        // A loop that already ended reports why through join.
        let _ = self.handle.shutdown();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the socket loop thread panicked")))
    }

    /// The address a session's socket is bound to (the kernel's choice if
    /// the spec's port was 0).
    pub fn local_addr(&self, sid: &Sid) -> Option<SocketAddr> {
        let reg = self.shared.lock();
        match reg.entries.get(reg.sessions.get(sid)?)? {
            Entry::Session { local, .. } => Some(*local),
            _ => None,
        }
    }

    /// The bound addresses of every listener.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        self.shared.lock().listeners.keys().copied().collect()
    }

    /// A session's counters, per drop reason.
    pub fn counters(&self, sid: &Sid) -> Option<EngineCounters> {
        self.shared.lock().session(sid).map(SessionEngine::counters)
    }

    /// A listener's counters (by bound or requested address).
    pub fn listener_counters(&self, local: SocketAddr) -> Option<EngineCounters> {
        let reg = self.shared.lock();
        match reg.entries.get(&reg.listener_key(local)?)? {
            Entry::Listener { engine, .. } => Some(engine.counters()),
            _ => None,
        }
    }

    /// A stateful STAMP session's engine state, for inspection: its
    /// counters, next Sequence Number and Follow-Up store.
    pub fn stamp_session<R>(
        &self,
        id: &StampSessionId,
        f: impl FnOnce(&StampSessionEngine) -> R,
    ) -> Option<R> {
        self.shared.lock().stamp_session(id).map(f)
    }

    /// Packets on a stateful STAMP port that matched no session.
    pub fn stamp_unmatched(&self, port: u16) -> Option<u64> {
        let reg = self.shared.lock();
        match reg.entries.get(reg.stamp_ports.get(&port)?)? {
            Entry::Stamp { unmatched, .. } => Some(*unmatched),
            _ => None,
        }
    }

    /// The address a stateful STAMP port is bound to.
    pub fn stamp_local_addr(&self, port: u16) -> Option<SocketAddr> {
        let reg = self.shared.lock();
        match reg.entries.get(reg.stamp_ports.get(&port)?)? {
            Entry::Stamp { local, .. } => Some(*local),
            _ => None,
        }
    }

    /// The clock state replies are stamped with (refreshed by the loop).
    pub fn clock(&self) -> ClockState {
        self.shared.clock.load()
    }

    /// The loop's socket-level counters (all sockets, removed ones included).
    pub fn loop_stats(&self) -> Stats {
        self.handle.stats()
    }

    /// Hands `socket` to the loop under `key`; on failure the registry
    /// entry is withdrawn.
    fn register(
        &self,
        key: SocketKey,
        socket: BatchSocket,
        reply_tos: ReplyTos,
    ) -> Result<(), TableError> {
        let outcome = match self.handle.add(key, socket, reply_tos) {
            Ok(done) => match done.recv() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(TableError::DataPlane(format!(
                    "the socket loop refused the socket: {e}"
                ))),
                Err(_) => Err(loop_gone(LoopGone)),
            },
            Err(e) => Err(loop_gone(e)),
        };
        if outcome.is_err() {
            self.shared.lock().remove(key);
        }
        outcome
    }

    /// Closes socket `key` in the loop and waits until it is closed.
    fn unregister(&self, key: SocketKey) -> Result<(), TableError> {
        let done = self.handle.remove(key).map_err(loop_gone)?;
        done.recv().map_err(|_| loop_gone(LoopGone))?;
        Ok(())
    }

    fn bind(&self, addr: SocketAddr, tos: u8) -> Result<BatchSocket, TableError> {
        let opts = SocketOptions {
            tos,
            ..self.socket.clone()
        };
        BatchSocket::bind(addr, &opts).map_err(|e| TableError::Address(addr, e.to_string()))
    }
}

impl Drop for SocketSessionTable {
    fn drop(&mut self) {
        let _ = self.stop_loop();
    }
}

impl SessionTable for SocketSessionTable {
    fn add(&mut self, spec: SessionSpec) -> Result<(), TableError> {
        let sid = spec.sid;
        let engine =
            SessionEngine::from_spec(&spec).map_err(|e| TableError::DataPlane(e.to_string()))?;
        if self.shared.lock().sessions.contains_key(&sid) {
            return Err(TableError::Exists(sid));
        }
        let socket = self.bind(spec.reflector, tos_from_dscp(engine.dscp(), 0))?;
        let local = socket.local_addr();
        let key = {
            let mut reg = self.shared.lock();
            if reg.sessions.contains_key(&sid) {
                return Err(TableError::Exists(sid));
            }
            reg.insert(Entry::Session { sid, local, engine })
        };
        self.register(key, socket, ReplyTos::Socket)?;
        tracing::debug!(%sid, %local, sender = %spec.sender, security = %spec.security, "test session installed");
        Ok(())
    }

    fn start(&mut self, sid: &Sid) -> Result<(), TableError> {
        let mut reg = self.shared.lock();
        let engine = reg
            .session_mut(sid)
            .ok_or(TableError::NoSuchSession(*sid))?;
        engine.start();
        Ok(())
    }

    fn stop(&mut self, sid: &Sid, grace: Duration) -> Result<(), TableError> {
        let mut reg = self.shared.lock();
        let engine = reg
            .session_mut(sid)
            .ok_or(TableError::NoSuchSession(*sid))?;
        engine.stop(Instant::now(), grace);
        Ok(())
    }

    fn remove(&mut self, sid: &Sid) -> Result<(), TableError> {
        let key = {
            let mut reg = self.shared.lock();
            let key = *reg
                .sessions
                .get(sid)
                .ok_or(TableError::NoSuchSession(*sid))?;
            reg.remove(key);
            key
        };
        self.unregister(key)
    }

    fn activity(&self, sid: &Sid) -> Option<SessionActivity> {
        let now = Instant::now();
        self.shared.lock().session(sid).map(|e| e.activity(now))
    }

    fn sessions(&self) -> Vec<Sid> {
        self.shared.lock().sessions.keys().copied().collect()
    }

    fn add_listener(&mut self, spec: ListenerSpec) -> Result<(), TableError> {
        let engine =
            ListenerEngine::from_spec(&spec).map_err(|e| TableError::DataPlane(e.to_string()))?;
        // No negotiated DSCP: copy the received one (RFC 7750 §3 leaves the
        // choice to the implementation).
        let (tos, reply_tos) = match spec.dscp {
            Some(d) => (tos_from_dscp(d, 0), ReplyTos::Socket),
            None => (0, ReplyTos::CopyReceivedDscp),
        };
        let socket = self.bind(spec.local, tos)?;
        let local = socket.local_addr();
        let key = {
            let mut reg = self.shared.lock();
            if reg.listeners.contains_key(&local) {
                return Err(TableError::Address(
                    local,
                    "a listener is already bound there".into(),
                ));
            }
            reg.insert(Entry::Listener {
                requested: spec.local,
                local,
                engine,
            })
        };
        self.register(key, socket, reply_tos)?;
        tracing::debug!(%local, "listener installed");
        Ok(())
    }

    fn add_stamp_session(&mut self, spec: StampSessionSpec) -> Result<(), TableError> {
        let id = spec.id();
        let engine = StampSessionEngine::from_spec(&spec)
            .map_err(|e| TableError::DataPlane(e.to_string()))?;
        {
            let mut reg = self.shared.lock();
            if reg.stamp_session(&id).is_some() {
                return Err(TableError::DataPlane(format!("{id} already exists")));
            }
            if let Some(key) = reg.stamp_ports.get(&id.local_port).copied() {
                if let Some(Entry::Stamp {
                    sessions, local, ..
                }) = reg.entries.get_mut(&key)
                {
                    if local.ip() != spec.local.ip() {
                        return Err(TableError::Address(
                            spec.local,
                            format!("STAMP port {} is bound to {local}", id.local_port),
                        ));
                    }
                    sessions.push(engine);
                    tracing::debug!(%id, "STAMP session added to its port");
                    return Ok(());
                }
            }
        }
        let (tos, reply_tos) = match spec.dscp {
            Some(d) => (tos_from_dscp(d, 0), ReplyTos::Socket),
            None => (0, ReplyTos::CopyReceivedDscp),
        };
        let mut socket = self.bind(spec.local, tos)?;
        if let Err(e) = socket.enable_tx_timestamps() {
            tracing::warn!(%id, error = %e, "no transmit timestamps: Follow-Up Telemetry will carry none");
        }
        let local = socket.local_addr();
        let key = self.shared.lock().insert(Entry::Stamp {
            local,
            sessions: vec![engine],
            unmatched: 0,
        });
        self.register(key, socket, reply_tos)?;
        tracing::debug!(%id, %local, "STAMP session installed");
        Ok(())
    }

    fn remove_stamp_session(&mut self, id: &StampSessionId) -> Result<(), TableError> {
        let key = {
            let mut reg = self.shared.lock();
            let missing = || TableError::DataPlane(format!("{id}: no such STAMP session"));
            let key = *reg.stamp_ports.get(&id.local_port).ok_or_else(missing)?;
            let Some(Entry::Stamp { sessions, .. }) = reg.entries.get_mut(&key) else {
                return Err(missing());
            };
            let before = sessions.len();
            sessions.retain(|e| !(e.ssid() == id.ssid && same_endpoint(e.sender(), id.sender)));
            if sessions.len() == before {
                return Err(missing());
            }
            if !sessions.is_empty() {
                return Ok(());
            }
            reg.remove(key);
            key
        };
        self.unregister(key)
    }

    fn stamp_activity(&self, id: &StampSessionId) -> Option<SessionActivity> {
        let now = Instant::now();
        self.shared
            .lock()
            .stamp_session(id)
            .map(|e| e.activity(now))
    }

    fn remove_listener(&mut self, local: SocketAddr) -> Result<(), TableError> {
        let key = {
            let mut reg = self.shared.lock();
            let key = reg
                .listener_key(local)
                .ok_or_else(|| TableError::Address(local, "no listener there".into()))?;
            reg.remove(key);
            key
        };
        self.unregister(key)
    }
}
