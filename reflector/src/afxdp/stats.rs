//! Poller statistics and the per-slot tables the pollers share.
//!
//! Every counter has one writer (its poller thread), which updates it with a
//! plain load + store (no locked instruction on the packet path); readers
//! take [`PollerStats::snapshot`] from any thread.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::bpf::MAX_SLOTS;

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (only the owning poller calls this).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value (gauges, last values).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a received frame was recycled instead of answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// No valid `rc_xdp_meta` in front of the frame.
    BadMetadata = 0,
    /// Ethernet/IP/UDP headers unusable, or disagreeing with the metadata.
    Malformed,
    /// The metadata names a slot with no keys (or out of range).
    UnknownSlot,
    /// The keys map holds another generation than the metadata.
    StaleGeneration,
    /// The keys map could not be read or holds unusable values.
    BadKeys,
    /// The packet does not come from the session's sender.
    WrongSource,
    /// Shorter than the mode's sender packet.
    TooShort,
    /// HMAC verification failed (RFC 4656 §4.2: discarded silently).
    BadHmac,
    /// The reply would not fit the frame (or the reply cap).
    NoRoom,
    /// The TX ring was full.
    TxRingFull,
    /// Refused by the session engine (not started, expired, rate limited:
    /// states the XDP program normally filters first).
    Refused,
    /// A STAMP request asked for no reply (RFC 9503 §4.1.1 Return Path
    /// Control Code 0): processed and counted, not answered.
    NoReplyRequested,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 12;
    /// All reasons in index order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::BadMetadata,
        DropReason::Malformed,
        DropReason::UnknownSlot,
        DropReason::StaleGeneration,
        DropReason::BadKeys,
        DropReason::WrongSource,
        DropReason::TooShort,
        DropReason::BadHmac,
        DropReason::NoRoom,
        DropReason::TxRingFull,
        DropReason::Refused,
        DropReason::NoReplyRequested,
    ];

    /// A stable name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::BadMetadata => "bad_metadata",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSlot => "unknown_slot",
            DropReason::StaleGeneration => "stale_generation",
            DropReason::BadKeys => "bad_keys",
            DropReason::WrongSource => "wrong_source",
            DropReason::TooShort => "too_short",
            DropReason::BadHmac => "bad_hmac",
            DropReason::NoRoom => "no_room",
            DropReason::TxRingFull => "tx_ring_full",
            DropReason::Refused => "refused",
            DropReason::NoReplyRequested => "no_reply_requested",
        }
    }
}

/// Sub-buckets per power of two in [`Histogram`] (≈ 12 % resolution).
const SUB: u32 = 8;
const SUB_BITS: u32 = 3;
const BUCKETS: usize = ((64 - SUB_BITS + 1) * SUB) as usize;

/// A log-linear histogram of nanosecond values (8 sub-buckets per power of
/// two), single writer.
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[Counter]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| Counter::default()).collect(),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < u64::from(SUB) {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) & u64::from(SUB - 1);
    ((exp - SUB_BITS + 1) * SUB) as usize + sub as usize
}

/// The largest value of bucket `b`.
fn bucket_max(b: usize) -> u64 {
    let b = b as u32;
    if b < SUB {
        return u64::from(b);
    }
    let exp = b / SUB + SUB_BITS - 1;
    let sub = u64::from(b % SUB);
    let low = (1u64 << exp) | (sub << (exp - SUB_BITS));
    low + ((1u64 << (exp - SUB_BITS)) - 1)
}

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn record(&self, v: u64) {
        self.counts[bucket_of(v)].add(1);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(Counter::get).sum()
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket
    /// holding it (never below the true value, at most 12.5 % above).
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.counts.iter().map(Counter::get).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_max(b));
            }
        }
        None
    }

    /// p50, p90, p99, p99.9 and the count.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50_ns: self.quantile(0.5),
            p90_ns: self.quantile(0.9),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
        }
    }
}

/// Percentiles of a [`Histogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median (bucket upper bound), ns.
    pub p50_ns: Option<u64>,
    /// 90th percentile, ns.
    pub p90_ns: Option<u64>,
    /// 99th percentile, ns.
    pub p99_ns: Option<u64>,
    /// 99.9th percentile, ns.
    pub p999_ns: Option<u64>,
}

/// What the kernel did with the TX timestamps requested through AF_XDP TX
/// metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxTimestamping {
    /// Not requested (TX metadata disabled by configuration).
    Disabled,
    /// TX metadata refused by the kernel: no timestamps (the reason).
    Unsupported(String),
    /// Requested; no completion has come back yet.
    Pending,
    /// Requested, but completions carry no timestamp (e.g. copy mode, or a
    /// driver without TX timestamp support): only the user-space
    /// completion time is measured.
    NotDelivered,
    /// The kernel delivers TX timestamps.
    Delivered,
}

/// Statistics of one poller.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Frames received from the RX ring.
    pub rx_packets: Counter,
    /// Frames queued for transmission.
    pub tx_packets: Counter,
    /// Frames whose transmission completed.
    pub tx_completed: Counter,
    /// Recycled frames, by reason.
    pub drops: [Counter; DropReason::COUNT],
    /// `sendto` kicks for the TX ring.
    pub tx_kicks: Counter,
    /// `recvfrom`/`poll` wakeups for the fill ring or busy polling.
    pub rx_kicks: Counter,
    /// Wakeup system calls that failed with a non-transient error.
    pub kick_errors: Counter,
    /// Completions carrying a TX timestamp.
    pub tx_ts_delivered: Counter,
    /// Completions of frames whose timestamp was requested but not given.
    pub tx_ts_missing: Counter,
    /// The last TX timestamp (ns, as the kernel gave it).
    pub last_tx_ts_ns: Counter,
    /// T3 → TX timestamp of the last completion, ns (two's complement:
    /// negative when the two clocks disagree).
    pub last_t3_to_tx_ns: Counter,
    /// T3 → TX timestamp (when delivered), ns.
    pub t3_to_tx: Histogram,
    /// T3 → completion seen by the poller, ns (always measured).
    pub t3_to_completion: Histogram,
    /// Kernel counters (`XDP_STATISTICS`), refreshed about once a second.
    pub kernel_rx_dropped: Counter,
    /// `XDP_STATISTICS.rx_ring_full`.
    pub kernel_rx_ring_full: Counter,
    /// `XDP_STATISTICS.rx_fill_ring_empty_descs`.
    pub kernel_fill_empty: Counter,
    /// `XDP_STATISTICS.tx_invalid_descs` + `rx_invalid_descs`.
    pub kernel_invalid_descs: Counter,
    /// 1 when bound zero-copy.
    pub zero_copy: Counter,
    /// The core the thread is pinned to + 1 (0: not pinned).
    pub pinned_core: Counter,
    /// Frames whose T2 came from the NIC (`rc_xdp_meta.ts_source`).
    pub t2_nic: Counter,
    /// Frames whose T2 came from the kernel TAI clock at XDP entry.
    pub t2_kernel_tai: Counter,
    /// 0 disabled, 1 unsupported, 2 pending, 3 not delivered, 4 delivered.
    tx_ts_state: Counter,
    /// Why TX metadata is unsupported (set once at start).
    tx_ts_reason: std::sync::OnceLock<String>,
}

impl PollerStats {
    /// Counts a drop.
    #[inline]
    pub fn count_drop(&self, r: DropReason) {
        self.drops[r as usize].add(1);
    }

    pub(crate) fn set_tx_timestamping(&self, t: &TxTimestamping) {
        let v = match t {
            TxTimestamping::Disabled => 0,
            TxTimestamping::Unsupported(why) => {
                let _ = self.tx_ts_reason.set(why.clone());
                1
            }
            TxTimestamping::Pending => 2,
            TxTimestamping::NotDelivered => 3,
            TxTimestamping::Delivered => 4,
        };
        self.tx_ts_state.set(v);
    }

    /// The TX timestamping state.
    pub fn tx_timestamping(&self) -> TxTimestamping {
        match self.tx_ts_state.get() {
            0 => TxTimestamping::Disabled,
            1 => TxTimestamping::Unsupported(self.tx_ts_reason.get().cloned().unwrap_or_default()),
            2 => TxTimestamping::Pending,
            3 => TxTimestamping::NotDelivered,
            _ => TxTimestamping::Delivered,
        }
    }

    /// A copy of every value.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut drops = [0u64; DropReason::COUNT];
        for (d, c) in drops.iter_mut().zip(&self.drops) {
            *d = c.get();
        }
        StatsSnapshot {
            rx_packets: self.rx_packets.get(),
            tx_packets: self.tx_packets.get(),
            tx_completed: self.tx_completed.get(),
            drops,
            tx_kicks: self.tx_kicks.get(),
            rx_kicks: self.rx_kicks.get(),
            kick_errors: self.kick_errors.get(),
            tx_timestamping: self.tx_timestamping(),
            tx_ts_delivered: self.tx_ts_delivered.get(),
            tx_ts_missing: self.tx_ts_missing.get(),
            last_tx_ts_ns: match self.last_tx_ts_ns.get() {
                0 => None,
                v => Some(v),
            },
            last_t3_to_tx_ns: (self.tx_ts_delivered.get() > 0)
                .then(|| self.last_t3_to_tx_ns.get() as i64),
            t3_to_tx: self.t3_to_tx.summary(),
            t3_to_completion: self.t3_to_completion.summary(),
            kernel_rx_dropped: self.kernel_rx_dropped.get(),
            kernel_rx_ring_full: self.kernel_rx_ring_full.get(),
            kernel_fill_empty: self.kernel_fill_empty.get(),
            kernel_invalid_descs: self.kernel_invalid_descs.get(),
            zero_copy: self.zero_copy.get() == 1,
            pinned_core: self.pinned_core.get().checked_sub(1).map(|c| c as usize),
            t2_nic: self.t2_nic.get(),
            t2_kernel_tai: self.t2_kernel_tai.get(),
        }
    }
}

/// A copy of [`PollerStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames queued for transmission.
    pub tx_packets: u64,
    /// Transmissions completed.
    pub tx_completed: u64,
    /// Drops indexed by [`DropReason`].
    pub drops: [u64; DropReason::COUNT],
    /// TX kicks.
    pub tx_kicks: u64,
    /// RX/fill kicks.
    pub rx_kicks: u64,
    /// Failed kicks.
    pub kick_errors: u64,
    /// TX timestamping state.
    pub tx_timestamping: TxTimestamping,
    /// Completions with a TX timestamp.
    pub tx_ts_delivered: u64,
    /// Completions without one although requested.
    pub tx_ts_missing: u64,
    /// Last TX timestamp, ns.
    pub last_tx_ts_ns: Option<u64>,
    /// Last T3 → TX timestamp, ns.
    pub last_t3_to_tx_ns: Option<i64>,
    /// T3 → TX timestamp percentiles.
    pub t3_to_tx: LatencySummary,
    /// T3 → completion percentiles.
    pub t3_to_completion: LatencySummary,
    /// Kernel: dropped.
    pub kernel_rx_dropped: u64,
    /// Kernel: RX ring full.
    pub kernel_rx_ring_full: u64,
    /// Kernel: fill ring empty.
    pub kernel_fill_empty: u64,
    /// Kernel: invalid descriptors.
    pub kernel_invalid_descs: u64,
    /// Bound zero-copy.
    pub zero_copy: bool,
    /// Pinned core.
    pub pinned_core: Option<usize>,
    /// Frames stamped (T2) by the NIC.
    pub t2_nic: u64,
    /// Frames stamped (T2) by the kernel TAI clock.
    pub t2_kernel_tai: u64,
}

impl StatsSnapshot {
    /// One drop counter.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Total drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// The last transmission of a slot: the reflector sequence number and its
/// TX timestamp (for RFC 8972 §4.7 Follow-Up Telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastTx {
    /// Reflector Sequence Number of the packet.
    pub seq: u32,
    /// Its TX timestamp, ns, as the kernel reported it.
    pub tx_ns: u64,
}

#[derive(Debug, Default)]
struct TxCell {
    version: AtomicU32,
    seq: AtomicU32,
    tx_ns: AtomicU64,
}

/// The last TX timestamp per slot, shared by the pollers (each entry is a
/// small sequence lock: readers retry a torn read).
#[derive(Debug)]
pub struct TxStampTable {
    cells: Box<[TxCell]>,
}

impl Default for TxStampTable {
    fn default() -> Self {
        TxStampTable {
            cells: (0..MAX_SLOTS).map(|_| TxCell::default()).collect(),
        }
    }
}

impl TxStampTable {
    /// Records the transmission of reflector sequence `seq` of `slot` at
    /// `tx_ns`.
    pub fn record(&self, slot: u32, seq: u32, tx_ns: u64) {
        let Some(c) = self.cells.get(slot as usize) else {
            return;
        };
        c.version.fetch_add(1, Ordering::Acquire);
        c.seq.store(seq, Ordering::Relaxed);
        c.tx_ns.store(tx_ns, Ordering::Relaxed);
        c.version.fetch_add(1, Ordering::Release);
    }

    /// The last transmission of `slot` with a TX timestamp, if any.
    pub fn last(&self, slot: u32) -> Option<LastTx> {
        let c = self.cells.get(slot as usize)?;
        loop {
            let v = c.version.load(Ordering::Acquire);
            if v & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let seq = c.seq.load(Ordering::Relaxed);
            let tx_ns = c.tx_ns.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if c.version.load(Ordering::Relaxed) == v {
                return (v != 0).then_some(LastTx { seq, tx_ns });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_bound_values_within_an_eighth() {
        for v in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            123_456,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket_of(v);
            let hi = bucket_max(b);
            assert!(hi >= v, "{v} -> bucket {b} max {hi}");
            if v >= 8 {
                assert!(hi - v <= v / 8, "{v}: bound {hi} too loose");
            }
            if b > 0 {
                assert!(bucket_max(b - 1) < v, "{v} belongs to an earlier bucket");
            }
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((500_000..=562_500).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((990_000..=1_114_000).contains(&p99), "{p99}");
        assert_eq!(h.summary().count, 1000);
    }

    #[test]
    fn tx_stamps_per_slot() {
        let t = TxStampTable::default();
        assert_eq!(t.last(3), None);
        t.record(3, 9, 1234);
        assert_eq!(
            t.last(3),
            Some(LastTx {
                seq: 9,
                tx_ns: 1234
            })
        );
        assert_eq!(t.last(4), None);
        assert_eq!(t.last(MAX_SLOTS), None);
    }
}
