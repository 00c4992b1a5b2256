//! Per-packet records of a test session and their summary: round-trip time,
//! reflector residence, one-way delays with error bounds, IPDV (RFC 3393),
//! loss, duplicates and reordering (RFC 4737 style).
//!
//! Times are nanoseconds on the UTC time scale (the caller converts PTP
//! timestamps with the TAI offset). T1 = sender transmit, T2 = reflector
//! receive, T3 = reflector transmit, T4 = sender receive.

use hdrhistogram::Histogram;
use serde::Serialize;

/// One reflected packet as the sender saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// Sender sequence number echoed by the reflector.
    pub sender_seq: u32,
    /// The reflector's own sequence number.
    pub reflector_seq: u32,
    pub t1_ns: u64,
    pub t2_ns: u64,
    pub t3_ns: u64,
    pub t4_ns: u64,
    /// Error bound of the sender's clock (T1, T4), nanoseconds.
    pub sender_error_ns: u64,
    /// Error bound of the reflector's clock (T2, T3), nanoseconds.
    pub reflector_error_ns: u64,
    /// Whether the reflector's clock said it was synchronized (S bit).
    pub reflector_synchronized: bool,
    /// The TTL the reflector saw on our packet.
    pub sender_ttl: u8,
    /// TTL / hop limit of the reply as received.
    pub reply_ttl: Option<u8>,
}

impl Reply {
    /// Round trip without the reflector's residence: (T4 − T1) − (T3 − T2).
    pub fn rtt_ns(&self) -> i64 {
        (self.t4_ns as i64 - self.t1_ns as i64) - self.residence_ns()
    }
    /// Reflector residence time T3 − T2.
    pub fn residence_ns(&self) -> i64 {
        self.t3_ns as i64 - self.t2_ns as i64
    }
    /// Forward one-way delay T2 − T1 (meaningful only with synchronized clocks).
    pub fn forward_ns(&self) -> i64 {
        self.t2_ns as i64 - self.t1_ns as i64
    }
    /// Backward one-way delay T4 − T3.
    pub fn backward_ns(&self) -> i64 {
        self.t4_ns as i64 - self.t3_ns as i64
    }
    /// Error bound of a one-way delay: both clocks' errors added.
    pub fn one_way_error_ns(&self) -> u64 {
        self.sender_error_ns.saturating_add(self.reflector_error_ns)
    }
}

/// Percentile summary of one quantity, nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Distribution {
    pub count: u64,
    pub min_ns: i64,
    pub p50_ns: i64,
    pub p99_ns: i64,
    pub p999_ns: i64,
    pub max_ns: i64,
    pub mean_ns: f64,
}

/// An HDR histogram of signed nanosecond values: one histogram for the
/// negative magnitudes (one-way delays of unsynchronized clocks can be
/// negative) and one for the rest, both at 3 significant digits.
pub struct SignedHistogram {
    neg: Histogram<u64>,
    pos: Histogram<u64>,
}

impl SignedHistogram {
    /// Magnitudes up to `max_ns`; larger ones are clamped.
    pub fn new(max_ns: u64) -> Self {
        let h = || {
            Histogram::new_with_bounds(1, max_ns.max(2), 3)
                .expect("static histogram bounds are valid")
        };
        SignedHistogram { neg: h(), pos: h() }
    }

    pub fn record(&mut self, v: i64) {
        if v < 0 {
            self.neg.saturating_record(v.unsigned_abs());
        } else {
            // 0 is below the histogram's lowest discernible value; 1 ns stands for it.
            self.pos.saturating_record(v.max(0) as u64);
        }
    }

    pub fn len(&self) -> u64 {
        self.neg.len() + self.pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at quantile `q` of the combined distribution.
    pub fn quantile(&self, q: f64) -> i64 {
        let n = self.len();
        let nn = self.neg.len();
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil().max(1.0) as u64; // 1-based
        if rank <= nn {
            // Negatives ascend from the largest magnitude.
            let qq = 1.0 - (rank - 1) as f64 / nn as f64;
            -(self.neg.value_at_quantile(qq) as i64)
        } else {
            let qq = (rank - nn) as f64 / self.pos.len() as f64;
            self.pos.value_at_quantile(qq) as i64
        }
    }

    pub fn summary(&self) -> Distribution {
        if self.is_empty() {
            return Distribution::default();
        }
        let min = if self.neg.is_empty() {
            self.pos.min() as i64
        } else {
            -(self.neg.max() as i64)
        };
        let max = if self.pos.is_empty() {
            -(self.neg.min() as i64)
        } else {
            self.pos.max() as i64
        };
        let sum = self.pos.mean() * self.pos.len() as f64 - self.neg.mean() * self.neg.len() as f64;
        Distribution {
            count: self.len(),
            min_ns: min,
            p50_ns: self.quantile(0.5),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
            max_ns: max,
            mean_ns: sum / self.len() as f64,
        }
    }
}

/// Summary of one session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub sent: u64,
    pub received: u64,
    /// Sent packets with no reply at all.
    pub lost: u64,
    pub loss_ratio: f64,
    /// Of the lost, those the reflector's sequence numbers show it never
    /// saw (forward) and those it reflected but we never got (backward).
    /// Only meaningful with a stateful reflector; `None` otherwise.
    pub lost_forward: Option<u64>,
    pub lost_backward: Option<u64>,
    pub duplicates: u64,
    /// Replies that arrived after a reply with a higher sender sequence number.
    pub reordered: u64,
    pub rtt: Distribution,
    pub residence: Distribution,
    pub forward: Distribution,
    pub backward: Distribution,
    /// |IPDV| of the round trip between consecutive sender sequence numbers (RFC 3393).
    pub ipdv: Distribution,
    /// Largest one-way error bound seen.
    pub one_way_error_ns: u64,
    pub reflector_synchronized: bool,
}

/// Collects replies of one session (no allocation per reply beyond the
/// bitmap of sequence numbers sized by `sent`).
pub struct Collector {
    sent: u64,
    seen: Vec<u8>,
    max_seq: Option<u32>,
    max_reflector_seq: Option<u32>,
    /// Reflector sequence numbers received (sized 2 × planned: forward-leg
    /// duplicates get their own numbers); beyond it direction is unknown.
    reflector_seen: Vec<u8>,
    reflector_unique: u64,
    reflector_overflow: bool,
    received: u64,
    duplicates: u64,
    reordered: u64,
    rtt: SignedHistogram,
    residence: SignedHistogram,
    forward: SignedHistogram,
    backward: SignedHistogram,
    ipdv: SignedHistogram,
    /// RTT of each sender sequence number, for IPDV between neighbours.
    rtt_by_seq: Vec<i64>,
    one_way_error_ns: u64,
    synchronized: bool,
    stateful: bool,
}

const NO_RTT: i64 = i64::MIN;
/// Histogram range: ±60 s.
const RANGE_NS: u64 = 60_000_000_000;

impl Collector {
    /// `planned` is the number of packets the session will send (sizes the
    /// per-sequence state); `stateful` says the reflector numbers its own packets.
    pub fn new(planned: u64, stateful: bool) -> Self {
        let n = planned.min(1 << 28) as usize;
        Collector {
            sent: 0,
            seen: vec![0; n],
            max_seq: None,
            max_reflector_seq: None,
            reflector_seen: vec![0; n.saturating_mul(2)],
            reflector_unique: 0,
            reflector_overflow: false,
            received: 0,
            duplicates: 0,
            reordered: 0,
            rtt: SignedHistogram::new(RANGE_NS),
            residence: SignedHistogram::new(RANGE_NS),
            forward: SignedHistogram::new(RANGE_NS),
            backward: SignedHistogram::new(RANGE_NS),
            ipdv: SignedHistogram::new(RANGE_NS),
            rtt_by_seq: vec![NO_RTT; n],
            one_way_error_ns: 0,
            synchronized: true,
            stateful,
        }
    }

    /// Counts one sent packet.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// Packets sent so far.
    pub fn sent_count(&self) -> u64 {
        self.sent
    }

    /// Distinct sender sequence numbers answered so far (duplicates not
    /// counted).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Records a reply. Returns false (and counts nothing) for a sender
    /// sequence number that was never sent.
    pub fn reply(&mut self, r: &Reply) -> bool {
        let seq = r.sender_seq as usize;
        if u64::from(r.sender_seq) >= self.sent || seq >= self.seen.len() {
            return false;
        }
        match self.reflector_seen.get_mut(r.reflector_seq as usize) {
            Some(b) if *b == 0 => {
                *b = 1;
                self.reflector_unique += 1;
            }
            Some(_) => {}
            None => self.reflector_overflow = true,
        }
        self.max_reflector_seq = Some(
            self.max_reflector_seq
                .map_or(r.reflector_seq, |m| m.max(r.reflector_seq)),
        );
        if self.seen[seq] != 0 {
            self.duplicates += 1;
            return true;
        }
        self.seen[seq] = 1;
        self.received += 1;
        match self.max_seq {
            Some(m) if r.sender_seq < m => self.reordered += 1,
            _ => self.max_seq = Some(r.sender_seq),
        }
        let rtt = r.rtt_ns();
        self.rtt.record(rtt);
        self.residence.record(r.residence_ns());
        self.forward.record(r.forward_ns());
        self.backward.record(r.backward_ns());
        self.rtt_by_seq[seq] = rtt;
        // RFC 3393 IPDV between this packet and its neighbours, whichever
        // arrived second records the pair (each pair once).
        if seq > 0 && self.rtt_by_seq[seq - 1] != NO_RTT {
            self.ipdv.record((rtt - self.rtt_by_seq[seq - 1]).abs());
        }
        if seq + 1 < self.rtt_by_seq.len() && self.rtt_by_seq[seq + 1] != NO_RTT {
            self.ipdv.record((self.rtt_by_seq[seq + 1] - rtt).abs());
        }
        self.one_way_error_ns = self.one_way_error_ns.max(r.one_way_error_ns());
        self.synchronized &= r.reflector_synchronized;
        true
    }

    pub fn summary(&self) -> Summary {
        let lost = self.sent.saturating_sub(self.received);
        let (lost_forward, lost_backward) = if self.stateful && !self.reflector_overflow {
            // The reflector numbered every packet it reflected from 0, so it
            // reflected at least max+1; the numbers we never saw were lost on
            // the way back.
            let reflected = self.max_reflector_seq.map_or(0, |m| u64::from(m) + 1);
            let backward = reflected.saturating_sub(self.reflector_unique);
            (
                Some(lost.saturating_sub(backward)),
                Some(backward.min(lost)),
            )
        } else {
            (None, None)
        };
        Summary {
            sent: self.sent,
            received: self.received,
            lost,
            loss_ratio: if self.sent == 0 {
                0.0
            } else {
                lost as f64 / self.sent as f64
            },
            lost_forward,
            lost_backward,
            duplicates: self.duplicates,
            reordered: self.reordered,
            rtt: self.rtt.summary(),
            residence: self.residence.summary(),
            forward: self.forward.summary(),
            backward: self.backward.summary(),
            ipdv: self.ipdv.summary(),
            one_way_error_ns: self.one_way_error_ns,
            reflector_synchronized: self.received > 0 && self.synchronized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(seq: u32, rseq: u32, t1: u64, net_ns: u64, residence: u64) -> Reply {
        let t2 = t1 + net_ns / 2;
        let t3 = t2 + residence;
        Reply {
            sender_seq: seq,
            reflector_seq: rseq,
            t1_ns: t1,
            t2_ns: t2,
            t3_ns: t3,
            t4_ns: t3 + net_ns / 2,
            sender_error_ns: 100,
            reflector_error_ns: 50,
            reflector_synchronized: true,
            sender_ttl: 255,
            reply_ttl: Some(255),
        }
    }

    #[test]
    fn rtt_excludes_residence() {
        let r = reply(0, 0, 1_000, 10_000, 700);
        assert_eq!(r.rtt_ns(), 10_000);
        assert_eq!(r.residence_ns(), 700);
        assert_eq!(r.forward_ns() + r.backward_ns(), 10_000);
        assert_eq!(r.one_way_error_ns(), 150);
    }

    #[test]
    fn loss_duplicates_reordering_and_direction() {
        let mut c = Collector::new(10, true);
        for _ in 0..10 {
            c.sent();
        }
        // seq 3 lost forward (reflector never saw it: its numbering skips nothing,
        // it simply reflected 9 packets), seq 7 lost backward (reflected as 6, never arrived).
        let order = [0u32, 1, 2, 5, 4, 6, 8, 9];
        let rseq = |s: u32| if s < 3 { s } else { s - 1 };
        for &s in &order {
            assert!(c.reply(&reply(s, rseq(s), 1_000 * u64::from(s), 10_000, 500)));
        }
        assert!(c.reply(&reply(4, 3, 4_000, 10_000, 500))); // duplicate
        assert!(!c.reply(&reply(10, 9, 0, 1, 1))); // never sent
        let s = c.summary();
        assert_eq!((s.sent, s.received, s.lost), (10, 8, 2));
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.reordered, 1); // 4 after 5
        assert_eq!(s.lost_forward, Some(1));
        assert_eq!(s.lost_backward, Some(1));
        // HDR histograms keep 3 significant digits.
        assert!((s.rtt.p50_ns - 10_000).abs() <= 10, "{:?}", s.rtt);
        assert!((s.loss_ratio - 0.2).abs() < 1e-12);
    }

    #[test]
    fn ipdv_of_neighbours() {
        let mut c = Collector::new(4, false);
        for _ in 0..4 {
            c.sent();
        }
        // RTTs 10 µs, 12 µs, (lost), 11 µs → one neighbour pair (0,1): |2 µs|.
        c.reply(&reply(0, 0, 0, 10_000, 0));
        c.reply(&reply(1, 1, 0, 12_000, 0));
        c.reply(&reply(3, 3, 0, 11_000, 0));
        let s = c.summary();
        assert_eq!(s.ipdv.count, 1);
        assert!((s.ipdv.p50_ns - 2_000).abs() <= 2);
        assert_eq!(s.lost_forward, None);
    }

    #[test]
    fn negative_one_way_delays_are_kept() {
        let mut h = SignedHistogram::new(1_000_000);
        h.record(-5_000);
        h.record(5_000);
        let d = h.summary();
        assert!((d.min_ns + 5_000).abs() <= 5);
        assert!((d.max_ns - 5_000).abs() <= 5);
    }
}
