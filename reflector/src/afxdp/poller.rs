//! One poller thread per queue: the AF_XDP side of the secured path
//! (ARCHITECTURE.md, "The way a packet travels").
//!
//! Each batch: completion ring → TX statistics → frames back to the fill
//! ring; RX ring → per frame: metadata (slot, generation, T2), headers,
//! key cache, verify/decrypt, reply built in the same frame, T3, protect,
//! headers and checksums → TX ring (TX timestamp requested through the TX
//! metadata) → one `sendto` per batch when the kernel needs it. Frames that
//! must not be answered go straight back to the fill ring, counted by
//! [`DropReason`]. No allocation, lock or system call per packet; the
//! `keys` map is read only when a generation changes.
//!
//! Waiting: [`WaitMode::NeedWakeup`] sleeps in `poll(2)` when idle;
//! [`WaitMode::BusyPoll`] never sleeps (with [`XskConfig::busy_poll`] set,
//! its `recvfrom` calls run the driver's NAPI on this core).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ricochet_protocol::twamp_test::RxMeta;

use super::cache::KeyCache;
use super::esp::{self, EspCache, EspCtx};
use super::frame;
use super::secured::t2_stamp;
use super::socket::{TxMetadataSupport, XskConfig, XskSocket};
use super::stats::{DropReason, PollerStats, StatsSnapshot, TxStampTable, TxTimestamping};
use super::umem::Frame;
use super::XskError;
use crate::bpf::{EspKeysReader, EspStateShared, KeysReader, Maps, Origin, XdpMeta};
use crate::clock::{now_tai_ns, ClockCell, ClockState, StampSource};
use crate::engine::same_endpoint;
use crate::stamp_engine::PacketAddrs;
use std::net::SocketAddr;

/// Copy-mode `sendto` calls per step at most (a 2048-entry ring is 64
/// kernel TX batches; more frames than that are never outstanding at once
/// in one step).
const MAX_TX_KICKS: usize = 64;

/// What the poller does with each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollerMode {
    /// The secured reflector: metadata, keys, verify, reflect, protect.
    Reflect,
    /// Bare echo (the benchmark's "c0" ceiling): swap MACs, addresses and
    /// ports and send back; no TWAMP/STAMP work, no metadata needed.
    Echo,
}

/// How the poller waits when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Sleep in `poll(2)` until packets arrive (need_wakeup; low CPU).
    NeedWakeup,
    /// Never sleep: spin on the rings (one core at 100 %, lowest latency).
    BusyPoll,
}

/// Configuration of one poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerConfig {
    /// The socket (interface, queue, mode, sizes).
    pub xsk: XskConfig,
    /// Core to pin the thread to (`core_affinity`), if any.
    pub core: Option<usize>,
    /// Waiting strategy.
    pub wait: WaitMode,
    /// Secured reflection or bare echo.
    pub mode: PollerMode,
    /// Frames taken from a ring per batch.
    pub batch: usize,
}

impl PollerConfig {
    /// A reflecting poller on `ifindex`/`queue` with default socket
    /// settings, need_wakeup, batches of 64, not pinned.
    pub fn new(ifindex: u32, queue: u32) -> PollerConfig {
        PollerConfig {
            xsk: XskConfig::new(ifindex, queue),
            core: None,
            wait: WaitMode::NeedWakeup,
            mode: PollerMode::Reflect,
            batch: 64,
        }
    }
}

/// State shared by every poller of a process.
#[derive(Debug, Clone)]
pub struct PollerShared {
    /// The host clock state, refreshed by housekeeping (Error Estimate, TAI
    /// offset).
    pub clock: Arc<ClockCell>,
    /// Last TX timestamp per slot (for Follow-Up Telemetry).
    pub tx_stamps: Arc<TxStampTable>,
}

impl PollerShared {
    /// Fresh tables around a clock cell.
    pub fn new(clock: Arc<ClockCell>) -> PollerShared {
        PollerShared {
            clock,
            tx_stamps: Arc::new(TxStampTable::default()),
        }
    }
}

/// Parses a core list such as `2,4-6` (the `--cores` option: one core per
/// queue, in queue order) into core indices.
pub fn parse_core_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad core number {s:?} in {list:?}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a >= 4096 {
                    return Err(format!("bad core range {part:?}"));
                }
                cores.extend(a..=b);
            }
            None => cores.push(num(part)?),
        }
    }
    if cores.is_empty() {
        return Err(format!("empty core list {list:?}"));
    }
    Ok(cores)
}

/// A running poller thread; stopped (and joined) on [`Poller::stop`] or
/// drop. Closing its socket removes it from the `xsks` map.
pub struct Poller {
    stop: Arc<AtomicBool>,
    stats: Arc<PollerStats>,
    thread: Option<JoinHandle<Result<(), XskError>>>,
    queue: u32,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("queue", &self.queue)
            .finish()
    }
}

impl Poller {
    /// Opens the socket of `cfg.xsk` (in the calling thread's network
    /// namespace), registers it in the `xsks` map for its queue and starts
    /// the thread.
    pub fn spawn(
        cfg: PollerConfig,
        maps: &Maps,
        shared: &PollerShared,
    ) -> Result<Poller, XskError> {
        if cfg.batch == 0 || cfg.batch > cfg.xsk.ring_size as usize {
            return Err(XskError::Config(format!(
                "batch {} (must be 1..={})",
                cfg.batch, cfg.xsk.ring_size
            )));
        }
        let sock = XskSocket::open(&cfg.xsk)?;
        let (keys, esp) = match cfg.mode {
            PollerMode::Reflect => (
                Some(maps.keys_reader()?),
                Some((maps.esp_keys_reader()?, maps.esp_state_shared()?)),
            ),
            PollerMode::Echo => (None, None),
        };
        maps.set_xsk(cfg.xsk.queue, std::os::fd::AsFd::as_fd(&sock))?;
        let stats = Arc::new(PollerStats::default());
        stats.zero_copy.set(u64::from(sock.zero_copy()));
        let ts = match sock.tx_metadata() {
            TxMetadataSupport::Enabled => TxTimestamping::Pending,
            TxMetadataSupport::Disabled => TxTimestamping::Disabled,
            TxMetadataSupport::Unsupported(why) => TxTimestamping::Unsupported(why.clone()),
        };
        stats.set_tx_timestamping(&ts);
        tracing::info!(
            ifindex = cfg.xsk.ifindex,
            queue = cfg.xsk.queue,
            zero_copy = sock.zero_copy(),
            tx_metadata = ?sock.tx_metadata(),
            mode = ?cfg.mode,
            wait = ?cfg.wait,
            "AF_XDP poller starting"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let queue = cfg.xsk.queue;
        let worker = Worker::new(
            sock,
            keys,
            esp,
            &cfg,
            Arc::clone(&stats),
            Arc::clone(&stop),
            shared,
        );
        let thread = std::thread::Builder::new()
            .name(format!("ricochet-xsk-q{queue}"))
            .spawn(move || worker.run())
            .map_err(|source| XskError::Io {
                what: "spawn poller thread".into(),
                source,
            })?;
        Ok(Poller {
            stop,
            stats,
            thread: Some(thread),
            queue,
        })
    }

    /// The queue served.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The live statistics (for an exporter).
    pub fn stats_handle(&self) -> Arc<PollerStats> {
        Arc::clone(&self.stats)
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Whether the thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread, waits for it and returns the final statistics
    /// (or the error that ended it).
    pub fn stop(mut self) -> Result<StatsSnapshot, XskError> {
        self.join()?;
        Ok(self.stats.snapshot())
    }

    fn join(&mut self) -> Result<(), XskError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| XskError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            tracing::warn!(queue = self.queue, error = %e, "AF_XDP poller ended with an error");
        }
    }
}

/// A transmitted frame's bookkeeping until its completion.
#[derive(Debug, Clone, Copy, Default)]
struct Inflight {
    active: bool,
    /// T3 (or the batch time in echo mode), TAI ns.
    t3_ns: u64,
    /// The slot, or `u32::MAX` (echo).
    slot: u32,
    /// Reflector sequence number sent.
    seq: u32,
}

struct Worker {
    sock: XskSocket,
    cache: Option<KeyCache<KeysReader>>,
    /// ESP SAs and the shared per-SA counters (reflect mode).
    esp: Option<(EspCache<EspKeysReader>, EspStateShared)>,
    stats: Arc<PollerStats>,
    stop: Arc<AtomicBool>,
    shared: PollerShared,
    core: Option<usize>,
    wait: WaitMode,
    mode: PollerMode,
    batch: usize,
    /// Per frame index.
    inflight: Vec<Inflight>,
    rx: Vec<Frame>,
    tx: Vec<Frame>,
    recycle: Vec<Frame>,
    done: Vec<Frame>,
    scratch: Vec<u8>,
    /// `XDP_TX_METADATA` when TX metadata is on.
    tx_options: u32,
    md_len: usize,
    ts_state: TxTimestamping,
}

impl Worker {
    fn new(
        sock: XskSocket,
        keys: Option<KeysReader>,
        esp: Option<(EspKeysReader, EspStateShared)>,
        cfg: &PollerConfig,
        stats: Arc<PollerStats>,
        stop: Arc<AtomicBool>,
        shared: &PollerShared,
    ) -> Worker {
        let frames = sock.umem().frame_count() as usize;
        let fs = sock.umem().frame_size() as usize;
        let md = matches!(sock.tx_metadata(), TxMetadataSupport::Enabled);
        let ts_state = stats.tx_timestamping();
        Worker {
            cache: keys.map(KeyCache::new),
            esp: esp.map(|(r, s)| (EspCache::new(r), s)),
            stats,
            stop,
            shared: shared.clone(),
            core: cfg.core,
            wait: cfg.wait,
            mode: cfg.mode,
            batch: cfg.batch,
            inflight: vec![Inflight::default(); frames],
            rx: Vec::with_capacity(cfg.batch),
            tx: Vec::with_capacity(cfg.batch),
            recycle: Vec::with_capacity(cfg.batch),
            done: Vec::with_capacity(frames),
            scratch: vec![0; fs],
            tx_options: if md { libc::XDP_TX_METADATA } else { 0 },
            md_len: if md {
                super::socket::TX_METADATA_LEN as usize
            } else {
                0
            },
            ts_state,
            sock,
        }
    }

    fn run(mut self) -> Result<(), XskError> {
        if let Some(core) = self.core {
            if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                self.stats.pinned_core.set(core as u64 + 1);
            } else {
                tracing::warn!(core, "could not pin AF_XDP poller to core");
            }
        }
        let mut last_kernel_stats = Instant::now();
        let mut iterations = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let busy = self.step();
            iterations = iterations.wrapping_add(1);
            if (!busy || iterations % 1024 == 0)
                && last_kernel_stats.elapsed() >= Duration::from_secs(1)
            {
                last_kernel_stats = Instant::now();
                self.kernel_stats();
            }
            if !busy {
                self.idle();
            }
        }
        // Let in-flight transmissions complete so their statistics count.
        let deadline = Instant::now() + Duration::from_millis(50);
        while self.in_flight() > 0 && Instant::now() < deadline {
            self.kick_tx();
            self.completions();
        }
        self.kernel_stats();
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        self.stats
            .tx_packets
            .get()
            .saturating_sub(self.stats.tx_completed.get())
    }

    /// One batch; returns whether anything happened.
    fn step(&mut self) -> bool {
        let mut busy = self.completions() > 0;
        let n = self.sock.recv(&mut self.rx, self.batch);
        if n > 0 {
            busy = true;
            self.stats.rx_packets.add(n as u64);
            self.process_rx();
        }
        if self.sock.tx_outstanding() > 0 {
            self.kick_tx();
        }
        if self.sock.fill_needs_wakeup() {
            self.kick_rx();
        }
        busy
    }

    fn kick_tx(&mut self) {
        // Zero-copy: only when the driver asks.
        if self.sock.zero_copy() {
            if self.sock.tx_needs_wakeup() {
                self.kick_tx_once();
            }
            return;
        }
        // Copy mode transmits only inside sendto, and each call takes at
        // most the kernel's TX batch (32 descriptors, net/xdp/xsk.c): kick
        // until the ring is drained or a kick makes no progress, else the
        // ring fills up and replies are dropped as TxRingFull (bounded:
        // one call per 32 frames of the ring at most).
        let mut left = self.sock.tx_outstanding();
        for _ in 0..MAX_TX_KICKS {
            self.kick_tx_once();
            let now = self.sock.tx_outstanding();
            if now == 0 || now >= left {
                break;
            }
            left = now;
        }
    }

    fn kick_tx_once(&mut self) {
        self.stats.tx_kicks.add(1);
        if let Err(e) = self.sock.kick_tx() {
            self.stats.kick_errors.add(1);
            tracing::debug!(error = %e, "AF_XDP TX kick failed");
        }
    }

    fn kick_rx(&mut self) {
        self.stats.rx_kicks.add(1);
        if let Err(e) = self.sock.kick_rx() {
            self.stats.kick_errors.add(1);
            tracing::debug!(error = %e, "AF_XDP RX kick failed");
        }
    }

    fn idle(&mut self) {
        match self.wait {
            WaitMode::BusyPoll => {
                // With SO_PREFER_BUSY_POLL this runs the driver's NAPI here.
                self.kick_rx();
                std::hint::spin_loop();
            }
            WaitMode::NeedWakeup => {
                let timeout = if self.in_flight() > 0 { 1 } else { 10 };
                if let Err(e) = self.sock.wait_readable(timeout) {
                    self.stats.kick_errors.add(1);
                    tracing::debug!(error = %e, "AF_XDP poll failed");
                }
            }
        }
    }

    fn kernel_stats(&mut self) {
        if let Ok(s) = self.sock.statistics() {
            self.stats.kernel_rx_dropped.set(s.rx_dropped);
            self.stats.kernel_rx_ring_full.set(s.rx_ring_full);
            self.stats.kernel_fill_empty.set(s.rx_fill_ring_empty_descs);
            self.stats
                .kernel_invalid_descs
                .set(s.rx_invalid_descs + s.tx_invalid_descs + self.sock.invalid_descs());
        }
    }

    /// Drains the completion ring: latency and TX timestamp statistics,
    /// frames back to the fill ring.
    fn completions(&mut self) -> usize {
        let n = self.sock.completed(&mut self.done, self.inflight.len());
        if n == 0 {
            return 0;
        }
        let now = now_tai_ns();
        let mut delivered = 0u64;
        let mut missing = 0u64;
        for f in &self.done {
            let idx = self.sock.umem().index_of(f);
            let Some(inf) = self.inflight.get_mut(idx) else {
                continue;
            };
            if !inf.active {
                continue;
            }
            inf.active = false;
            let inf = *inf;
            self.stats
                .t3_to_completion
                .record(now.saturating_sub(inf.t3_ns));
            if self.md_len == 0 || f.offset() < self.md_len {
                continue;
            }
            let chunk = self.sock.umem().chunk(f);
            let at = f.offset() - self.md_len + 8; // completion.tx_timestamp
            let mut b = [0u8; 8];
            b.copy_from_slice(&chunk[at..at + 8]);
            let ts = u64::from_ne_bytes(b);
            if ts == 0 {
                missing += 1;
                continue;
            }
            delivered += 1;
            let d = ts as i64 - inf.t3_ns as i64;
            self.stats.last_tx_ts_ns.set(ts);
            self.stats.last_t3_to_tx_ns.set(d as u64);
            if d >= 0 {
                self.stats.t3_to_tx.record(d as u64);
            }
            if inf.slot != u32::MAX {
                self.shared.tx_stamps.record(inf.slot, inf.seq, ts);
                // Follow-Up Telemetry of a stateful STAMP session. Zero
                // copy: the driver's stamp from the NIC (the PHC, assumed on
                // TAI like the RX stamps, rc_clock). Copy mode: the kernel
                // stamps CLOCK_TAI in software when it frees the skb after
                // transmission (xsk_destruct_skb).
                let source = if self.sock.zero_copy() {
                    StampSource::NicHardware
                } else {
                    StampSource::KernelSoftware
                };
                if let Some(slot) = self.cache.as_mut().and_then(|c| c.ready_mut(inf.slot)) {
                    slot.record_tx(inf.seq, ts, source);
                }
            }
        }
        self.stats.tx_completed.add(n as u64);
        self.stats.tx_ts_delivered.add(delivered);
        self.stats.tx_ts_missing.add(missing);
        let state = if self.stats.tx_ts_delivered.get() > 0 {
            TxTimestamping::Delivered
        } else if missing > 0 {
            TxTimestamping::NotDelivered
        } else {
            self.ts_state.clone()
        };
        if state != self.ts_state {
            tracing::info!(
                queue = self.sock.queue().1,
                state = ?state,
                "AF_XDP TX timestamps"
            );
            self.stats.set_tx_timestamping(&state);
            self.ts_state = state;
        }
        self.sock.fill(&mut self.done);
        n
    }

    fn process_rx(&mut self) {
        let clock = self.shared.clock.load();
        let now = now_tai_ns();
        let batch_start = Instant::now();
        let mut rx = std::mem::take(&mut self.rx);
        for f in rx.drain(..) {
            let r = match self.mode {
                PollerMode::Reflect => self.reflect(f, &clock, now, batch_start),
                PollerMode::Echo => self.echo(f, now),
            };
            match r {
                Ok(f) => self.tx.push(f),
                Err((f, reason)) => {
                    self.stats.count_drop(reason);
                    self.recycle.push(f);
                }
            }
        }
        self.rx = rx;
        if !self.tx.is_empty() {
            let sent = self.sock.transmit(&mut self.tx, self.tx_options);
            self.stats.tx_packets.add(sent as u64);
            for f in self.tx.drain(..) {
                self.stats.count_drop(DropReason::TxRingFull);
                if let Some(i) = self.inflight.get_mut(self.sock.umem().index_of(&f)) {
                    i.active = false;
                }
                self.recycle.push(f);
            }
        }
        if !self.recycle.is_empty() {
            self.sock.fill(&mut self.recycle);
        }
    }

    fn echo(&mut self, f: Frame, now: u64) -> Result<Frame, (Frame, DropReason)> {
        let (off, len) = (f.offset(), f.len());
        let idx = self.sock.umem().index_of(&f);
        let md_len = self.md_len;
        let chunk = self.sock.umem_mut().chunk_mut(&f);
        let pkt = &mut chunk[off..off + len];
        match frame::parse(pkt) {
            Ok(p) => frame::echo_in_place(pkt, &p),
            Err(_) => return Err((f, DropReason::Malformed)),
        }
        if request_tx_timestamp(chunk, off, md_len).is_err() {
            return Err((f, DropReason::NoRoom));
        }
        self.inflight[idx] = Inflight {
            active: true,
            t3_ns: now,
            slot: u32::MAX,
            seq: 0,
        };
        Ok(f)
    }

    fn reflect(
        &mut self,
        mut f: Frame,
        clock: &ClockState,
        now: u64,
        batch_start: Instant,
    ) -> Result<Frame, (Frame, DropReason)> {
        match self.reflect_in_frame(&f, clock, now, batch_start) {
            Ok((start, len, inf)) => {
                let fs = self.sock.umem().frame_size();
                if f.set_packet(start, len, fs).is_err() {
                    return Err((f, DropReason::NoRoom));
                }
                let idx = self.sock.umem().index_of(&f);
                self.inflight[idx] = inf;
                Ok(f)
            }
            Err(reason) => Err((f, reason)),
        }
    }

    /// Builds the reply inside the frame; returns where it starts in the
    /// chunk, its length and the in-flight record.
    fn reflect_in_frame(
        &mut self,
        f: &Frame,
        clock: &ClockState,
        now: u64,
        batch_start: Instant,
    ) -> Result<(usize, usize, Inflight), DropReason> {
        let Worker {
            sock,
            cache,
            esp,
            scratch,
            md_len,
            stats,
            ..
        } = self;
        let cache = cache.as_mut().ok_or(DropReason::BadKeys)?;
        let (off, len) = (f.offset(), f.len());
        let chunk = sock.umem_mut().chunk_mut(f);
        let meta = XdpMeta::parse(&chunk[..off]).map_err(|_| DropReason::BadMetadata)?;
        let ts_source = meta.ts_source().map_err(|_| DropReason::BadMetadata)?;
        if meta.origin == Origin::Esp as u8 {
            let (sas, counters) = esp.as_mut().ok_or(DropReason::BadKeys)?;
            let sa = sas.lookup_tx(meta.slot, meta.generation, now, &*counters)?;
            let mut cx = EspCtx {
                keys: cache,
                counters: &*counters,
                stats,
                scratch: &mut scratch[..],
                clock,
                batch: batch_start,
                now_ns: now,
                tai_now: now_tai_ns,
            };
            let room = &mut chunk[off..];
            let r = esp::reflect(
                room,
                len,
                usize::from(meta.payload_off),
                t2_stamp(meta.rx_ts_ns, ts_source),
                sa,
                &mut cx,
            )?;
            let start = off + r.start;
            request_tx_timestamp(chunk, start, *md_len).map_err(|()| DropReason::NoRoom)?;
            return Ok((
                start,
                r.len,
                Inflight {
                    active: true,
                    t3_ns: r.reflected.t3_tai_ns,
                    slot: r.inner_slot,
                    seq: r.reflected.seq,
                },
            ));
        }
        let room = &mut chunk[off..];
        let p = frame::parse(&room[..len]).map_err(|_| DropReason::Malformed)?;
        match ts_source {
            crate::bpf::TsSource::Nic => stats.t2_nic.add(1),
            crate::bpf::TsSource::KernelTai => stats.t2_kernel_tai.add(1),
        }
        if p.payload_off != usize::from(meta.payload_off) {
            return Err(DropReason::Malformed);
        }
        let slot = cache.lookup(meta.slot, meta.generation, now)?;
        if let Some(sender) = slot.sender {
            if !same_endpoint(sender, SocketAddr::new(p.src, p.sport)) {
                return Err(DropReason::WrongSource);
            }
        }
        if meta.refused() {
            // Refused by the XDP token bucket: counted by the session
            // (R_RxC), never answered.
            slot.count_refused(&room[p.payload_off..p.payload_off + p.payload_len]);
            return Err(DropReason::Refused);
        }
        // The engine reads the request and writes the reply: the request
        // is copied out of the frame the reply is built in.
        let rx = scratch.get_mut(..p.payload_len).ok_or(DropReason::NoRoom)?;
        rx.copy_from_slice(&room[p.payload_off..p.payload_off + p.payload_len]);
        let r = slot.reflect(
            rx,
            RxMeta {
                ttl: p.ttl,
                tos: p.tos,
            },
            Some(PacketAddrs {
                src: SocketAddr::new(p.src, p.sport),
                dst: Some(SocketAddr::new(p.dst, p.dport)),
                src_mac: None,
            }),
            t2_stamp(meta.rx_ts_ns, ts_source),
            clock,
            batch_start,
            &mut room[p.payload_off..],
        )?;
        let dscp = r.reply_dscp.or(slot.dscp).unwrap_or(p.tos >> 2);
        let (start, rlen) =
            frame::build_reply(room, &p, r.len, dscp).map_err(|_| DropReason::NoRoom)?;
        let start = off + start;
        request_tx_timestamp(chunk, start, *md_len).map_err(|()| DropReason::NoRoom)?;
        Ok((
            start,
            rlen,
            Inflight {
                active: true,
                t3_ns: r.t3_tai_ns,
                slot: meta.slot,
                seq: r.seq,
            },
        ))
    }
}

/// Writes `struct xsk_tx_metadata` in the `md_len` octets before the packet
/// at `start` of `chunk`: flags = `XDP_TXMD_FLAGS_TIMESTAMP`, the
/// request/completion union zeroed so that a completion still reading 0
/// means "no timestamp delivered". Nothing to do when `md_len` is 0.
fn request_tx_timestamp(chunk: &mut [u8], start: usize, md_len: usize) -> Result<(), ()> {
    if md_len == 0 {
        return Ok(());
    }
    let m = start.checked_sub(md_len).ok_or(())?;
    let md = chunk.get_mut(m..m + 16).ok_or(())?;
    md[..8].copy_from_slice(&u64::from(libc::XDP_TXMD_FLAGS_TIMESTAMP).to_ne_bytes());
    md[8..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_core_list("2,4-6, 9").unwrap(), vec![2, 4, 5, 6, 9]);
        assert_eq!(parse_core_list("0").unwrap(), vec![0]);
        for bad in ["", "x", "3-1", "1-", "-2", "1,,a"] {
            assert!(parse_core_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tx_metadata_is_written_in_front_of_the_packet() {
        let mut chunk = [0xffu8; 64];
        request_tx_timestamp(&mut chunk, 32, 16).unwrap();
        assert_eq!(
            &chunk[16..24],
            &1u64.to_ne_bytes(),
            "XDP_TXMD_FLAGS_TIMESTAMP"
        );
        assert_eq!(&chunk[24..32], &[0; 8], "completion slot cleared");
        assert_eq!(chunk[15], 0xff);
        assert_eq!(chunk[32], 0xff);
        assert!(request_tx_timestamp(&mut chunk, 8, 16).is_err());
        let before = chunk;
        request_tx_timestamp(&mut chunk, 8, 0).unwrap();
        assert_eq!(chunk, before, "nothing without TX metadata");
    }
}
