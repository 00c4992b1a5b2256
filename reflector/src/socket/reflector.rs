//! The socket reflector loop: one mio `Poll` over every session and listener
//! socket, batched receive → per-packet handler → batched send.
//!
//! The loop knows nothing of TWAMP: a [`Reflect`] handler builds each reply
//! (and takes T3 itself, as late as it can, RFC 5357 §4.2). Sockets come and
//! go while it runs, through a [`ReflectorHandle`] (a command channel plus a
//! mio `Waker`) that a control plane's session table can hold from another
//! thread: bind a [`BatchSocket`] there (so port allocation and bind errors
//! stay synchronous), then hand it over with [`ReflectorHandle::add`].

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use thiserror::Error;

use super::batch::{BatchConfig, RxBatch, RxError, RxPacket, TxBatch, TxError, TxMeta};
use super::udp::BatchSocket;
use crate::clock::Stamp;
use std::net::IpAddr;

/// The caller's name for a socket (a session slot, a listener id…), handed
/// back to the handler with every packet.
pub type SocketKey = u64;

/// Builds replies.
pub trait Reflect {
    /// Called before the packets of one received batch of socket `key` go
    /// to [`Reflect::reflect`], and [`Reflect::end_batch`] after their
    /// replies were sent: a handler with shared state can take it once per
    /// batch instead of once per packet.
    fn begin_batch(&mut self, key: SocketKey) {
        let _ = key;
    }

    /// The end of the batch [`Reflect::begin_batch`] opened.
    fn end_batch(&mut self) {}

    /// Writes the reply to `rx`, received on socket `key`, into `tx` and
    /// returns its length, or `None` to drop the packet (counted as
    /// declined). The reply goes back to `rx.src` from `rx.dst`.
    fn reflect(&mut self, key: SocketKey, rx: &RxPacket<'_>, tx: &mut [u8]) -> Option<usize>;

    /// The transmit timestamp of a reply sent on socket `key` (only for
    /// sockets with transmit timestamps on): its UDP payload as sent, its
    /// destination address and the stamp.
    fn tx_stamp(&mut self, _key: SocketKey, _payload: &[u8], _dst: IpAddr, _stamp: Stamp) {}

    /// Whether the reply to `rx` must wait for the replies already built in
    /// this batch to be sent and their transmit stamps read: a stateful
    /// STAMP session's Follow-Up Telemetry (RFC 8972 §4.7) reports the
    /// transmit stamp of the session's previous reply, which does not
    /// exist before that reply is sent. Asked only on sockets with
    /// transmit stamps; a deferred packet is reflected in a later pass over
    /// the batch, after the earlier pass's `sendmmsg` and an error-queue
    /// read (at most [`MAX_PASSES`] passes per batch: the extra syscalls
    /// are per batch, never per packet; the last pass defers nothing).
    fn defer(&mut self, _key: SocketKey, _rx: &RxPacket<'_>) -> bool {
        false
    }

    /// A further pass over the batch's deferred packets begins (the
    /// earlier pass's replies are sent, their stamps read).
    fn begin_second_pass(&mut self) {}

    /// The TOS / Traffic Class the reply just built must carry, if it asked
    /// for one (a STAMP Class of Service TLV, RFC 8972 §4.4); read once
    /// after each successful [`Reflect::reflect`].
    fn reply_tos(&mut self) -> Option<u8> {
        None
    }
}

impl<F> Reflect for F
where
    F: FnMut(SocketKey, &RxPacket<'_>, &mut [u8]) -> Option<usize>,
{
    fn reflect(&mut self, key: SocketKey, rx: &RxPacket<'_>, tx: &mut [u8]) -> Option<usize> {
        self(key, rx, tx)
    }
}

/// Room for one packet looped back on an error queue (headers included).
const ERRQ_BUF: usize = 2048;
/// Transmit timestamps read per socket visit.
const ERRQ_BUDGET: usize = 64;
/// Passes over one received batch at most ([`Reflect::defer`]): each
/// further pass costs one `sendmmsg` and one error-queue read.
const MAX_PASSES: usize = 4;

/// The TOS / Traffic Class of a socket's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyTos {
    /// The socket's own setting: the session's negotiated DSCP (RFC 5357
    /// §3.5, `twamp-test.md` §5 rule 6).
    #[default]
    Socket,
    /// The received DSCP with ECN Not-ECT: for listener ports where no DSCP
    /// was negotiated (TWAMP Light, stateless STAMP; RFC 7750 §3 leaves the
    /// choice to the implementation).
    CopyReceivedDscp,
}

macro_rules! stats {
    ($($(#[$doc:meta])* $f:ident),* $(,)?) => {
        /// Packet counters, for the loop as a whole or for one socket.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Stats {
            $($(#[$doc])* pub $f: u64,)*
        }

        impl Stats {
            fn add(&mut self, o: &Stats) {
                $(self.$f += o.$f;)*
            }
        }

        /// The loop's counters, shared with every handle (relaxed atomics,
        /// updated once per batch).
        #[derive(Debug, Default)]
        struct Counters {
            $($f: AtomicU64,)*
        }

        impl Counters {
            fn add(&self, o: &Stats) {
                $(if o.$f != 0 {
                    self.$f.fetch_add(o.$f, Ordering::Relaxed);
                })*
            }

            fn snapshot(&self) -> Stats {
                Stats { $($f: self.$f.load(Ordering::Relaxed),)* }
            }
        }
    };
}

stats! {
    /// Datagrams taken from the sockets (whatever became of them).
    received,
    /// Replies the kernel accepted.
    reflected,
    /// Dropped: the handler declined (or returned an over-long reply).
    declined,
    /// Dropped: longer than the receive buffer (`MSG_TRUNC`).
    truncated,
    /// Dropped: the source address was not IP.
    bad_address,
    /// Dropped: the reply could not be sent.
    send_errors,
    /// `recvmmsg` failures other than "nothing to read".
    recv_errors,
    /// Dropped by the kernel before we saw them: socket buffer overflow
    /// (`SO_RXQ_OVFL`).
    kernel_dropped,
    /// Datagrams whose control data the kernel cut (`MSG_CTRUNC`).
    control_truncated,
    /// `recvmmsg` calls that returned datagrams.
    rx_syscalls,
    /// `sendmmsg` calls.
    tx_syscalls,
    /// Deferrals of a packet to a later pass over its batch
    /// ([`Reflect::defer`]).
    deferred,
}

impl Stats {
    /// Every datagram dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.declined + self.truncated + self.bad_address + self.send_errors
    }
}

/// The loop has ended: commands cannot be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the socket reflector loop has ended")]
pub struct LoopGone;

enum Command {
    Add {
        key: SocketKey,
        socket: BatchSocket,
        reply_tos: ReplyTos,
        done: Sender<io::Result<()>>,
    },
    Remove {
        key: SocketKey,
        done: Sender<Option<Stats>>,
    },
    Stats {
        key: SocketKey,
        done: Sender<Option<Stats>>,
    },
    Shutdown,
}

/// Drives a running [`SocketReflector`] from any thread. Cheap to clone.
#[derive(Clone)]
pub struct ReflectorHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ReflectorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflectorHandle").finish_non_exhaustive()
    }
}

impl ReflectorHandle {
    fn send(&self, c: Command) -> Result<(), LoopGone> {
        self.commands.send(c).map_err(|_| LoopGone)?;
        self.waker.wake().map_err(|_| LoopGone)
    }

    /// Hands `socket` to the loop under `key`. The receiver yields the
    /// registration's outcome (`AlreadyExists` if `key` is taken).
    pub fn add(
        &self,
        key: SocketKey,
        socket: BatchSocket,
        reply_tos: ReplyTos,
    ) -> Result<Receiver<io::Result<()>>, LoopGone> {
        let (done, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Add {
            key,
            socket,
            reply_tos,
            done,
        })?;
        Ok(rx)
    }

    /// Removes and closes socket `key`. The receiver yields its final
    /// counters, or `None` if there was no such socket.
    pub fn remove(&self, key: SocketKey) -> Result<Receiver<Option<Stats>>, LoopGone> {
        let (done, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Remove { key, done })?;
        Ok(rx)
    }

    /// Asks for socket `key`'s counters.
    pub fn socket_stats(&self, key: SocketKey) -> Result<Receiver<Option<Stats>>, LoopGone> {
        let (done, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Stats { key, done })?;
        Ok(rx)
    }

    /// Asks the loop to return from [`SocketReflector::run`].
    pub fn shutdown(&self) -> Result<(), LoopGone> {
        self.send(Command::Shutdown)
    }

    /// The loop's counters (all sockets, including removed ones).
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

/// Sizes of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflectorConfig {
    /// Receive and send batch sizes (one pair for all sockets).
    pub batch: BatchConfig,
    /// Readiness events taken per `epoll_wait`.
    pub events: usize,
    /// Batches taken from one socket before turning to the others; a socket
    /// with more waiting is revisited on the next round.
    pub budget: usize,
}

impl Default for ReflectorConfig {
    fn default() -> Self {
        ReflectorConfig {
            batch: BatchConfig::default(),
            events: 1024,
            budget: 4,
        }
    }
}

struct Entry {
    key: SocketKey,
    socket: BatchSocket,
    reply_tos: ReplyTos,
    stats: Stats,
    /// Last `SO_RXQ_OVFL` value seen (cumulative per socket).
    last_ovfl: u32,
}

const WAKER: Token = Token(usize::MAX);

/// The socket reflector loop. Build it, take a [`ReflectorHandle`], then
/// [`run`](Self::run) it on its own thread (it is `Send`).
pub struct SocketReflector {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    commands_tx: Sender<Command>,
    commands: Receiver<Command>,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    keys: HashMap<SocketKey, usize>,
    rx: RxBatch,
    tx: TxBatch,
    ready: Vec<usize>,
    again: Vec<usize>,
    counters: Arc<Counters>,
    budget: usize,
    shut_down: bool,
    /// Scratch for transmit timestamps read from error queues.
    errq: Box<[u8]>,
    errq_control: Box<[u8]>,
    /// Indices (in `rx`) of the packets deferred to the second pass.
    deferred: Vec<usize>,
}

impl std::fmt::Debug for SocketReflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketReflector")
            .field("sockets", &self.keys.len())
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl SocketReflector {
    /// Creates the poller, the waker and the batch buffers.
    pub fn new(cfg: &ReflectorConfig) -> io::Result<SocketReflector> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands_tx, commands) = crossbeam_channel::unbounded();
        let events = cfg.events.max(1);
        let rx = RxBatch::new(&cfg.batch);
        let deferred = Vec::with_capacity(rx.capacity());
        Ok(SocketReflector {
            poll,
            events: Events::with_capacity(events),
            waker,
            commands_tx,
            commands,
            slots: Vec::new(),
            free: Vec::new(),
            keys: HashMap::new(),
            rx,
            tx: TxBatch::new(&cfg.batch),
            ready: Vec::with_capacity(events),
            again: Vec::new(),
            counters: Arc::new(Counters::default()),
            budget: cfg.budget.max(1),
            errq: vec![0u8; ERRQ_BUF].into_boxed_slice(),
            errq_control: vec![0u8; 512].into_boxed_slice(),
            deferred,
            shut_down: false,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> ReflectorHandle {
        ReflectorHandle {
            commands: self.commands_tx.clone(),
            waker: Arc::clone(&self.waker),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Registers `socket` under `key` (from the loop's own thread).
    pub fn add_socket(
        &mut self,
        key: SocketKey,
        mut socket: BatchSocket,
        reply_tos: ReplyTos,
    ) -> io::Result<()> {
        if self.keys.contains_key(&key) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("socket key {key} already registered"),
            ));
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(idx), Interest::READABLE)
        {
            self.free.push(idx);
            return Err(e);
        }
        // Datagrams queued before registration still raise an event: epoll
        // checks readiness when the descriptor is added.
        self.slots[idx] = Some(Entry {
            key,
            socket,
            reply_tos,
            stats: Stats::default(),
            last_ovfl: 0,
        });
        self.keys.insert(key, idx);
        Ok(())
    }

    /// Deregisters and closes socket `key`; returns its counters.
    pub fn remove_socket(&mut self, key: SocketKey) -> Option<Stats> {
        let idx = self.keys.remove(&key)?;
        let mut entry = self.slots.get_mut(idx)?.take()?;
        // Closing the descriptor removes it from epoll anyway.
        let _ = self.poll.registry().deregister(&mut entry.socket);
        self.again.retain(|&i| i != idx);
        self.free.push(idx);
        Some(entry.stats)
    }

    /// Counters of socket `key`.
    pub fn socket_stats(&self, key: SocketKey) -> Option<Stats> {
        let idx = *self.keys.get(&key)?;
        self.slots.get(idx)?.as_ref().map(|e| e.stats)
    }

    /// Sockets registered.
    pub fn socket_count(&self) -> usize {
        self.keys.len()
    }

    /// The loop's counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Waits up to `timeout` (`None`: until something happens) and serves
    /// every ready socket and pending command. Returns `false` once a
    /// shutdown was asked for.
    pub fn poll_once<R: Reflect + ?Sized>(
        &mut self,
        handler: &mut R,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        let timeout = if self.again.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(!self.shut_down),
            Err(e) => return Err(e),
        }
        self.ready.clear();
        let mut woken = false;
        for ev in self.events.iter() {
            if ev.token() == WAKER {
                woken = true;
            } else {
                self.ready.push(ev.token().0);
            }
        }
        self.ready.append(&mut self.again);
        for k in 0..self.ready.len() {
            let idx = self.ready[k];
            self.service(idx, handler);
        }
        if woken {
            self.run_commands();
        }
        Ok(!self.shut_down)
    }

    /// Serves sockets until [`ReflectorHandle::shutdown`].
    pub fn run<R: Reflect + ?Sized>(&mut self, handler: &mut R) -> io::Result<()> {
        while self.poll_once(handler, None)? {}
        Ok(())
    }

    fn run_commands(&mut self) {
        while let Ok(c) = self.commands.try_recv() {
            // A requester that stopped waiting is not an error.
            match c {
                Command::Add {
                    key,
                    socket,
                    reply_tos,
                    done,
                } => {
                    let _ = done.send(self.add_socket(key, socket, reply_tos));
                }
                Command::Remove { key, done } => {
                    let _ = done.send(self.remove_socket(key));
                }
                Command::Stats { key, done } => {
                    let _ = done.send(self.socket_stats(key));
                }
                Command::Shutdown => self.shut_down = true,
            }
        }
    }

    /// Drains up to `budget` batches from socket `idx`.
    fn service<R: Reflect + ?Sized>(&mut self, idx: usize, handler: &mut R) {
        let SocketReflector {
            slots,
            rx,
            tx,
            again,
            counters,
            budget,
            errq,
            errq_control,
            deferred,
            ..
        } = self;
        let Some(Some(entry)) = slots.get_mut(idx) else {
            return;
        };
        let stamping = entry.socket.tx_stamping();
        let mut s = Stats::default();
        let mut drained = false;
        let mut ovfl = None;
        for _ in 0..*budget {
            let n = match entry.socket.recv_batch(rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(_) => {
                    s.recv_errors += 1;
                    drained = true;
                    break;
                }
            };
            s.rx_syscalls += 1;
            if stamping {
                // Before this batch's replies are built (every batch, also
                // the later ones of this visit): their Follow-Up Telemetry
                // reports the transmit stamp of the previous reply.
                let key = entry.key;
                entry.socket.read_tx_stamps(
                    errq,
                    errq_control,
                    ERRQ_BUDGET,
                    &mut |payload, dst, stamp| handler.tx_stamp(key, payload, dst, stamp),
                );
            }
            handler.begin_batch(entry.key);
            for (i, pkt) in rx.iter().enumerate() {
                s.received += 1;
                let pkt = match pkt {
                    Ok(p) => p,
                    Err(RxError::Truncated { .. }) => {
                        s.truncated += 1;
                        continue;
                    }
                    Err(RxError::BadAddress { .. }) => {
                        s.bad_address += 1;
                        continue;
                    }
                };
                if pkt.control_truncated {
                    s.control_truncated += 1;
                }
                if pkt.rxq_dropped.is_some() {
                    ovfl = pkt.rxq_dropped;
                }
                if stamping && handler.defer(entry.key, &pkt) {
                    deferred.push(i);
                    continue;
                }
                reply_one(entry, tx, handler, &mut s, &pkt);
            }
            if !tx.is_empty() {
                let r = entry.socket.send_batch(tx);
                s.reflected += r.sent as u64;
                s.send_errors += r.failed as u64;
                s.tx_syscalls += r.syscalls as u64;
            }
            let mut passes = 1;
            while !deferred.is_empty() {
                // Another pass: the previous pass's replies are out; their
                // transmit stamps (software stamps are queued before
                // sendmmsg returns) feed the deferred replies' Follow-Up.
                // At most MAX_PASSES per batch: syscalls stay per batch;
                // a longer burst of one session gets unstamped Follow-Ups
                // (counted by the session).
                passes += 1;
                s.deferred += deferred.len() as u64;
                let key = entry.key;
                entry.socket.read_tx_stamps(
                    errq,
                    errq_control,
                    ERRQ_BUDGET,
                    &mut |payload, dst, stamp| handler.tx_stamp(key, payload, dst, stamp),
                );
                handler.begin_second_pass();
                let last = passes >= MAX_PASSES;
                let mut keep = 0;
                for j in 0..deferred.len() {
                    let i = deferred[j];
                    let Some(Ok(pkt)) = rx.get(i) else {
                        continue;
                    };
                    if !last && handler.defer(key, &pkt) {
                        deferred[keep] = i;
                        keep += 1;
                        continue;
                    }
                    reply_one(entry, tx, handler, &mut s, &pkt);
                }
                deferred.truncate(keep);
                if !tx.is_empty() {
                    let r = entry.socket.send_batch(tx);
                    s.reflected += r.sent as u64;
                    s.send_errors += r.failed as u64;
                    s.tx_syscalls += r.syscalls as u64;
                }
            }
            handler.end_batch();
            if n < rx.capacity() {
                // A short batch: the queue was empty when the kernel looked;
                // any later datagram raises a new edge.
                drained = true;
                break;
            }
        }
        if !drained {
            again.push(idx);
        }
        if let Some(v) = ovfl {
            s.kernel_dropped += u64::from(v.wrapping_sub(entry.last_ovfl));
            entry.last_ovfl = v;
        }
        entry.stats.add(&s);
        counters.add(&s);
    }
}

/// Builds the reply to `pkt` into the send batch (flushing a full batch
/// first), counting a declined packet.
fn reply_one<R: Reflect + ?Sized>(
    entry: &mut Entry,
    tx: &mut TxBatch,
    handler: &mut R,
    s: &mut Stats,
    pkt: &RxPacket<'_>,
) {
    let mut meta = TxMeta::reply_to(pkt);
    if entry.reply_tos == ReplyTos::CopyReceivedDscp {
        meta.tos = Some(pkt.tos.unwrap_or(0) & 0xfc);
    }
    let key = entry.key;
    let mut fill = |buf: &mut [u8]| handler.reflect(key, pkt, buf);
    let mut pushed = tx.push(meta, &mut fill);
    if pushed == Err(TxError::Full) {
        // Only if the send batch is smaller than the receive one.
        let r = entry.socket.send_batch(tx);
        s.reflected += r.sent as u64;
        s.send_errors += r.failed as u64;
        s.tx_syscalls += r.syscalls as u64;
        pushed = tx.push(meta, &mut fill);
    }
    match pushed {
        Ok(true) => {
            if let Some(t) = handler.reply_tos() {
                tx.set_last_tos(t);
            }
        }
        Ok(false) | Err(_) => s.declined += 1,
    }
}
