//! Latency distributions from the counter's log-linear histograms
//! (bucket arithmetic in [`super::abi`]): percentiles, summary and CDF.

use crate::stats::Distribution;

use super::abi::{bucket_range, HIST_BUCKETS};

/// Bucket counts of one quantity (nanoseconds), e.g. one trial's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    /// Count per bucket; [`HIST_BUCKETS`] entries.
    pub buckets: Vec<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: vec![0; HIST_BUCKETS],
        }
    }
}

/// The value a bucket stands for: its midpoint (exact buckets: the value).
fn representative(b: usize) -> u64 {
    let (lo, hi) = bucket_range(b);
    lo + (hi - lo - 1) / 2
}

impl Latency {
    /// Wraps bucket counts (shorter vectors are padded, longer cut).
    pub fn from_buckets(mut buckets: Vec<u64>) -> Latency {
        buckets.resize(HIST_BUCKETS, 0);
        Latency { buckets }
    }

    /// Records `n` values of `v` ns (synthetic data and tests).
    pub fn record_n(&mut self, v: u64, n: u64) {
        self.buckets[super::abi::bucket_of(v)] += n;
    }

    /// Bucket-wise `self − earlier` (counters only grow).
    pub fn since(&self, earlier: &Latency) -> Latency {
        Latency {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The value at quantile `q` (0..=1): the representative of the bucket
    /// holding the sample of rank ⌈q·n⌉ (nearest-rank definition).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(representative(b));
            }
        }
        None
    }

    /// Percentile summary (the `stats` crate type); `None` without samples.
    pub fn summary(&self) -> Option<Distribution> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let first = self.buckets.iter().position(|&c| c > 0)?;
        let last = self.buckets.iter().rposition(|&c| c > 0)?;
        let sum: f64 = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(b, &c)| representative(b) as f64 * c as f64)
            .sum();
        let q = |x| self.quantile(x).map_or(0, |v| v as i64);
        Some(Distribution {
            count: n,
            min_ns: bucket_range(first).0 as i64,
            p50_ns: q(0.5),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            max_ns: (bucket_range(last).1 - 1) as i64,
            mean_ns: sum / n as f64,
        })
    }

    /// The empirical CDF: (upper edge of each non-empty bucket in ns,
    /// fraction of samples at or below it).
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let n = self.count();
        if n == 0 {
            return Vec::new();
        }
        let mut seen = 0;
        let mut out = Vec::new();
        for (b, &c) in self.buckets.iter().enumerate() {
            if c > 0 {
                seen += c;
                out.push((bucket_range(b).1 as f64, seen as f64 / n as f64));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1000 samples: 1..=1000 µs, one each.
        let mut l = Latency::default();
        for us in 1..=1000u64 {
            l.record_n(us * 1000, 1);
        }
        let s = l.summary().unwrap();
        assert_eq!(s.count, 1000);
        let near = |got: i64, want: f64| (got as f64 - want).abs() <= want / 32.0;
        assert!(near(s.p50_ns, 500_000.0), "p50 {}", s.p50_ns);
        assert!(near(s.p99_ns, 990_000.0), "p99 {}", s.p99_ns);
        assert!(near(s.p999_ns, 999_000.0), "p99.9 {}", s.p999_ns);
        assert!(near(s.min_ns, 1_000.0) && near(s.max_ns, 1_000_000.0));
        assert!(
            (s.mean_ns - 500_500.0).abs() < 500_500.0 / 32.0,
            "mean {}",
            s.mean_ns
        );
    }

    #[test]
    fn exact_below_64_ns_and_empty_is_none() {
        let mut l = Latency::default();
        assert!(l.summary().is_none());
        assert!(l.quantile(0.5).is_none());
        assert!(l.cdf().is_empty());
        l.record_n(10, 3);
        l.record_n(20, 1);
        assert_eq!(l.quantile(0.5), Some(10));
        assert_eq!(l.quantile(0.75), Some(10));
        assert_eq!(l.quantile(0.76), Some(20));
        assert_eq!(l.quantile(1.0), Some(20));
        assert_eq!(l.cdf(), vec![(11.0, 0.75), (21.0, 1.0)]);
    }

    #[test]
    fn trial_share_is_the_difference() {
        let mut a = Latency::default();
        a.record_n(5_000, 10);
        let mut b = a.clone();
        b.record_n(7_000, 4);
        b.record_n(5_000, 1);
        let d = b.since(&a);
        assert_eq!(d.count(), 5);
        assert_eq!(Latency::from_buckets(vec![1, 2]).count(), 3);
    }

    proptest::proptest! {
        #[test]
        fn quantiles_are_monotone_and_within_range(vals in proptest::collection::vec(0u64..10_000_000_000, 1..200)) {
            let mut l = Latency::default();
            for v in &vals {
                l.record_n(*v, 1);
            }
            let s = l.summary().unwrap();
            proptest::prop_assert!(s.min_ns <= s.p50_ns && s.p50_ns <= s.p99_ns);
            proptest::prop_assert!(s.p99_ns <= s.p999_ns && s.p999_ns <= s.max_ns);
            let lo = *vals.iter().min().unwrap() as f64;
            let hi = *vals.iter().max().unwrap() as f64;
            proptest::prop_assert!(s.min_ns as f64 >= lo - lo / 31.0 - 1.0);
            proptest::prop_assert!(s.max_ns as f64 <= hi + hi / 31.0 + 1.0);
            let cdf = l.cdf();
            proptest::prop_assert!(cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
            proptest::prop_assert_eq!(cdf.last().unwrap().1, 1.0);
        }
    }
}
