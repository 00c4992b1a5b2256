//! Rust mirror of `bench/ebpf/bench.h`: the configuration and statistics the
//! benchmark's BPF programs share with user space, and the histogram bucket
//! arithmetic.
//!
//! Every `#[repr(C)]` type has the layout of the C struct of the same name;
//! the tests check each size against the value size of its map in the
//! compiled object. Values are encoded field by field at `offset_of!`
//! positions (host byte order, as the programs read them), so no `unsafe`
//! transmutes are needed.

use std::mem::{offset_of, size_of};

/// The compiled object (`build.rs`).
pub const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench.bpf.o"));

/// `BENCH_NONE`: an absent offset.
pub const NONE: u16 = 0xffff;
/// `BENCH_FRAME_MAX`: largest generated frame (Ethernet header onwards).
pub const FRAME_MAX: usize = 1536;
/// `BENCH_POOL_MAX`: largest pre-protected prefix copied per frame.
pub const POOL_MAX: usize = 112;
/// `BENCH_SLOTS`: pool entries and send-time slots (sequence numbers modulo).
pub const SLOTS: usize = 65536;
/// `BENCH_HIST_SUB_BITS`: log2 of the buckets per power of two.
pub const HIST_SUB_BITS: u32 = 5;
/// `BENCH_HIST_MAX_EXP`: values of 2^(this+1) ns and more share the last bucket.
pub const HIST_MAX_EXP: u32 = 40;
/// `BENCH_HIST_BUCKETS`.
pub const HIST_BUCKETS: usize = ((HIST_MAX_EXP - HIST_SUB_BITS + 2) << HIST_SUB_BITS) as usize;
/// `hist` key of the round-trip histogram (T4 − T1 on the sender clock).
pub const HIST_RTT: u32 = 0;
/// `hist` key of the residence histogram (T3 − T2 on the reflector clock).
pub const HIST_RESIDENCE: u32 = 1;
/// `BENCH_M_RTT`.
pub const M_RTT: u8 = 1;
/// `BENCH_M_RESIDENCE`.
pub const M_RESIDENCE: u8 = 2;
/// `BENCH_M_SEQ`.
pub const M_SEQ: u8 = 4;

/// The histogram bucket of `v` nanoseconds (the same arithmetic as
/// `bucket_of` in bench.bpf.c): exact below 2^(SUB_BITS+1), then
/// 2^SUB_BITS buckets per power of two.
pub fn bucket_of(v: u64) -> usize {
    if v < (2 << HIST_SUB_BITS) {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    if e > HIST_MAX_EXP {
        return HIST_BUCKETS - 1;
    }
    let shift = e - HIST_SUB_BITS;
    ((shift << HIST_SUB_BITS) as usize) + (v >> shift) as usize
}

/// The values `[lo, hi)` that fall into bucket `b` (the last bucket also
/// holds everything larger).
pub fn bucket_range(b: usize) -> (u64, u64) {
    let b = b.min(HIST_BUCKETS - 1) as u64;
    if b < (2 << HIST_SUB_BITS) {
        return (b, b + 1);
    }
    let q = b >> HIST_SUB_BITS; // shift + 1
    let m = b & ((1 << HIST_SUB_BITS) - 1);
    let shift = q - 1;
    let lo = ((1u64 << HIST_SUB_BITS) + m) << shift;
    (lo, lo + (1u64 << shift))
}

fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    buf[at..at + v.len()].copy_from_slice(v);
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(b)
}

/// `struct bench_gen_cfg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenCfg {
    /// Octets of the template sent per frame.
    pub frame_len: u16,
    /// Offset of the UDP header in the frame.
    pub l4_off: u16,
    /// Payload offset of the sender sequence number, or [`NONE`].
    pub seq_off: u16,
    /// Payload offset of T1, or [`NONE`].
    pub t1_off: u16,
    /// Octets copied from the pool entry to payload offset 0 (0: no pool).
    pub pool_len: u16,
    /// T1 in PTPv2 truncated format (else NTP).
    pub t1_ptp: u8,
    pub pad: u8,
    /// Generator CPUs: seq = n · slots + cpu mod slots.
    pub slots: u32,
    /// TAI − UTC in seconds, for NTP timestamps.
    pub tai_offset: i32,
    /// Frames a late generator may send back to back.
    pub max_burst: u32,
    /// Changed per trial: restarts the send schedule.
    pub epoch: u32,
    /// Nanoseconds between frames × 2^16 (0: as fast as possible).
    pub interval_fp: u64,
    /// CLOCK_MONOTONIC nanoseconds after which nothing is sent (0: never).
    pub stop_ns: u64,
}

impl GenCfg {
    /// The schedule's interval for `rate_pps` (ns × 2^16).
    pub fn interval_for(rate_pps: f64) -> u64 {
        if rate_pps <= 0.0 {
            return u64::MAX;
        }
        (1e9 / rate_pps * 65536.0).round().max(1.0) as u64
    }

    /// The map value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<Self>()];
        put(
            &mut b,
            offset_of!(Self, frame_len),
            &self.frame_len.to_ne_bytes(),
        );
        put(&mut b, offset_of!(Self, l4_off), &self.l4_off.to_ne_bytes());
        put(
            &mut b,
            offset_of!(Self, seq_off),
            &self.seq_off.to_ne_bytes(),
        );
        put(&mut b, offset_of!(Self, t1_off), &self.t1_off.to_ne_bytes());
        put(
            &mut b,
            offset_of!(Self, pool_len),
            &self.pool_len.to_ne_bytes(),
        );
        b[offset_of!(Self, t1_ptp)] = self.t1_ptp;
        put(&mut b, offset_of!(Self, slots), &self.slots.to_ne_bytes());
        put(
            &mut b,
            offset_of!(Self, tai_offset),
            &self.tai_offset.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(Self, max_burst),
            &self.max_burst.to_ne_bytes(),
        );
        put(&mut b, offset_of!(Self, epoch), &self.epoch.to_ne_bytes());
        put(
            &mut b,
            offset_of!(Self, interval_fp),
            &self.interval_fp.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(Self, stop_ns),
            &self.stop_ns.to_ne_bytes(),
        );
        b
    }
}

/// `struct bench_gen_stats`, summed over CPUs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Frames built and returned with XDP_TX.
    pub frames: u64,
    /// Their octets from the Ethernet header on.
    pub bytes: u64,
    /// Frame counter of the CPU (summed: frames attempted).
    pub next: u64,
    /// Frames aborted for a bad configuration.
    pub errors: u64,
    /// Iterations dropped by the rate schedule.
    pub idle: u64,
    /// Per CPU: next send time (ns × 2^16); meaningless summed.
    pub next_fp: u64,
    /// Per CPU: the configuration epoch of `next_fp`.
    pub epoch: u64,
}

impl GenStats {
    /// Decodes one CPU's value.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= size_of::<Self>()).then(|| GenStats {
            frames: get_u64(b, offset_of!(Self, frames)),
            bytes: get_u64(b, offset_of!(Self, bytes)),
            next: get_u64(b, offset_of!(Self, next)),
            errors: get_u64(b, offset_of!(Self, errors)),
            idle: get_u64(b, offset_of!(Self, idle)),
            next_fp: get_u64(b, offset_of!(Self, next_fp)),
            epoch: get_u64(b, offset_of!(Self, epoch)),
        })
    }

    /// Field-wise sum (per-CPU values).
    pub fn add(&mut self, o: &Self) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.next += o.next;
        self.errors += o.errors;
        self.idle += o.idle;
        self.next_fp = self.next_fp.max(o.next_fp);
        self.epoch = self.epoch.max(o.epoch);
    }
}

/// `struct bench_cnt_cfg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CntCfg {
    /// The generator's source port (the reply's destination).
    pub local_port: u16,
    /// The reflector's port (the reply's source).
    pub remote_port: u16,
    /// Payload offset of a readable sender sequence number, or [`NONE`].
    pub seq_off: u16,
    /// Payload offset of a readable T1 (used when there is no sequence number).
    pub t1_off: u16,
    /// Payload offset of T2, or [`NONE`].
    pub t2_off: u16,
    /// Payload offset of T3, or [`NONE`].
    pub t3_off: u16,
    /// Payload offset of the Error Estimate covering T2/T3 (its Z bit).
    pub ee_off: u16,
    /// [`M_RTT`] | [`M_RESIDENCE`] | [`M_SEQ`].
    pub measure: u8,
    /// Format of T1 in the reply.
    pub t1_ptp: u8,
    /// TAI − UTC in seconds.
    pub tai_offset: i32,
    /// Payload offset of the reflector's own sequence number, or [`NONE`].
    pub rseq_off: u16,
    pub pad: u16,
}

impl CntCfg {
    /// The map value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<Self>()];
        put(
            &mut b,
            offset_of!(Self, local_port),
            &self.local_port.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(Self, remote_port),
            &self.remote_port.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(Self, seq_off),
            &self.seq_off.to_ne_bytes(),
        );
        put(&mut b, offset_of!(Self, t1_off), &self.t1_off.to_ne_bytes());
        put(&mut b, offset_of!(Self, t2_off), &self.t2_off.to_ne_bytes());
        put(&mut b, offset_of!(Self, t3_off), &self.t3_off.to_ne_bytes());
        put(&mut b, offset_of!(Self, ee_off), &self.ee_off.to_ne_bytes());
        b[offset_of!(Self, measure)] = self.measure;
        b[offset_of!(Self, t1_ptp)] = self.t1_ptp;
        put(
            &mut b,
            offset_of!(Self, tai_offset),
            &self.tai_offset.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(Self, rseq_off),
            &self.rseq_off.to_ne_bytes(),
        );
        b
    }
}

/// `struct bench_cnt_stats`, summed over CPUs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CntStats {
    /// Replies of the flow (dropped by the counter).
    pub packets: u64,
    /// Their octets from the Ethernet header on.
    pub bytes: u64,
    /// Round-trip samples recorded.
    pub rtt_samples: u64,
    /// Residence samples recorded.
    pub res_samples: u64,
    /// Replies too short for a configured field.
    pub short_pkts: u64,
    /// Replies whose sender sequence number was below the previous one.
    pub reordered: u64,
    /// Per CPU: previous sequence number | 1 << 32 (meaningless summed).
    pub last_seq: u64,
    /// Residence samples with T3 < T2.
    pub negative: u64,
    /// Frames of other flows, passed to the stack.
    pub passed: u64,
    /// Highest reflector sequence number seen + 1 (0: none read).
    pub rseq_top: u64,
    /// Replies whose T2 or T3 was all zeros.
    pub zero_ts: u64,
}

impl CntStats {
    /// Decodes one CPU's value.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= size_of::<Self>()).then(|| CntStats {
            packets: get_u64(b, offset_of!(Self, packets)),
            bytes: get_u64(b, offset_of!(Self, bytes)),
            rtt_samples: get_u64(b, offset_of!(Self, rtt_samples)),
            res_samples: get_u64(b, offset_of!(Self, res_samples)),
            short_pkts: get_u64(b, offset_of!(Self, short_pkts)),
            reordered: get_u64(b, offset_of!(Self, reordered)),
            last_seq: get_u64(b, offset_of!(Self, last_seq)),
            negative: get_u64(b, offset_of!(Self, negative)),
            passed: get_u64(b, offset_of!(Self, passed)),
            rseq_top: get_u64(b, offset_of!(Self, rseq_top)),
            zero_ts: get_u64(b, offset_of!(Self, zero_ts)),
        })
    }

    /// Field-wise sum (per-CPU values).
    pub fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.rtt_samples += o.rtt_samples;
        self.res_samples += o.res_samples;
        self.short_pkts += o.short_pkts;
        self.reordered += o.reordered;
        self.last_seq = self.last_seq.max(o.last_seq);
        self.negative += o.negative;
        self.passed += o.passed;
        self.rseq_top = self.rseq_top.max(o.rseq_top);
        self.zero_ts += o.zero_ts;
    }

    /// `self − earlier` for the monotone counters (a trial's share).
    pub fn since(&self, earlier: &Self) -> Self {
        CntStats {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            rtt_samples: self.rtt_samples.saturating_sub(earlier.rtt_samples),
            res_samples: self.res_samples.saturating_sub(earlier.res_samples),
            short_pkts: self.short_pkts.saturating_sub(earlier.short_pkts),
            reordered: self.reordered.saturating_sub(earlier.reordered),
            last_seq: self.last_seq,
            negative: self.negative.saturating_sub(earlier.negative),
            passed: self.passed.saturating_sub(earlier.passed),
            rseq_top: self.rseq_top,
            zero_ts: self.zero_ts.saturating_sub(earlier.zero_ts),
        }
    }
}

/// Sizes of the map values, checked against the object by the tests.
pub const GEN_CFG_SIZE: usize = size_of::<GenCfg>();
/// `struct bench_gen_stats`.
pub const GEN_STATS_SIZE: usize = size_of::<GenStats>();
/// `struct bench_cnt_cfg`.
pub const CNT_CFG_SIZE: usize = size_of::<CntCfg>();
/// `struct bench_cnt_stats`.
pub const CNT_STATS_SIZE: usize = size_of::<CntStats>();

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::{AsRawLibbpf, ObjectBuilder};

    #[test]
    fn sizes_match_the_compiled_maps() {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .expect("open embedded object");
        let want = [
            ("gen_cfg", GEN_CFG_SIZE),
            ("gen_stats", GEN_STATS_SIZE),
            ("cnt_cfg", CNT_CFG_SIZE),
            ("cnt_stats", CNT_STATS_SIZE),
            ("hist", HIST_BUCKETS * 8),
            ("template", FRAME_MAX),
            ("pool", POOL_MAX),
            ("send_ns", 8),
        ];
        for (name, size) in want {
            let map = open
                .maps()
                .find(|m| m.name() == name)
                .unwrap_or_else(|| panic!("map {name} in object"));
            // SAFETY: the pointer comes from a live OpenMap of `open`, which
            // outlives the call; the getter only reads the map definition.
            let got = unsafe {
                libbpf_rs::libbpf_sys::bpf_map__value_size(map.as_libbpf_object().as_ptr())
            };
            assert_eq!(got as usize, size, "value size of {name}");
        }
    }

    #[test]
    fn buckets_are_exact_then_log_linear() {
        for v in 0..64 {
            assert_eq!(bucket_of(v), v as usize);
            assert_eq!(bucket_range(v as usize), (v, v + 1));
        }
        // 64 and 65 share a bucket of width 2; 1000 ns lies in [992, 1008)
        // (2^9 ≤ 1000 < 2^10: 32 buckets of 16 ns).
        assert_eq!(bucket_of(64), 64);
        assert_eq!(bucket_of(65), 64);
        assert_eq!(bucket_of(66), 65);
        let b = bucket_of(1000);
        assert_eq!(bucket_range(b), (992, 1008));
        assert_eq!(bucket_of(u64::MAX), HIST_BUCKETS - 1);
        assert_eq!(bucket_of(1 << 41), HIST_BUCKETS - 1);
        assert_eq!(bucket_of((1 << 41) - 1), HIST_BUCKETS - 1);
    }

    proptest::proptest! {
        #[test]
        fn every_value_lies_in_its_bucket(v in 0u64..(1u64 << 41)) {
            let b = bucket_of(v);
            proptest::prop_assert!(b < HIST_BUCKETS);
            let (lo, hi) = bucket_range(b);
            proptest::prop_assert!(lo <= v && v < hi, "{v} in bucket {b} = [{lo}, {hi})");
            // relative width at most 1/32
            proptest::prop_assert!((hi - lo) * 32 <= lo.max(32));
        }

        #[test]
        fn buckets_are_monotone(a in 0u64..(1u64 << 42), d in 0u64..(1u64 << 20)) {
            proptest::prop_assert!(bucket_of(a) <= bucket_of(a.saturating_add(d)));
        }
    }
}
