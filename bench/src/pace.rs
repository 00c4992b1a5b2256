//! Send pacing: fixed or exponential (Poisson) intervals, scheduled against
//! absolute deadlines so that no error accumulates, and a wait that sleeps
//! for the bulk of an interval and spins for the last stretch, so rates of
//! 100 kpps and more hold without a 1 ms sleep floor.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How intervals between packets are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Every `interval`.
    Fixed(Duration),
    /// Exponentially distributed with mean `mean` (RFC 2330 Poisson sampling).
    Exponential { mean: Duration, seed: u64 },
}

/// Absolute send deadlines, one per packet.
pub struct Pacer {
    start: Instant,
    /// Offset of the next deadline from `start`, nanoseconds.
    next_ns: u128,
    schedule: Schedule,
    rng: SmallRng,
}

impl Pacer {
    pub fn new(start: Instant, schedule: Schedule) -> Self {
        let seed = match schedule {
            Schedule::Exponential { seed, .. } => seed,
            Schedule::Fixed(_) => 0,
        };
        Pacer {
            start,
            next_ns: 0,
            schedule,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The deadline of the next packet; advances the schedule.
    pub fn next_deadline(&mut self) -> Instant {
        let at = self.start + Duration::from_nanos(self.next_ns.min(u128::from(u64::MAX)) as u64);
        let step = match self.schedule {
            Schedule::Fixed(d) => d.as_nanos(),
            Schedule::Exponential { mean, .. } => {
                // Inverse transform: -mean · ln(U), U in (0, 1].
                let u: f64 = 1.0 - self.rng.random::<f64>();
                (-(mean.as_nanos() as f64) * u.ln()) as u128
            }
        };
        self.next_ns += step;
        at
    }
}

/// Below this, waiting spins instead of sleeping (a sleep overshoots by tens
/// of microseconds on a loaded host).
pub const SPIN_THRESHOLD: Duration = Duration::from_micros(200);

/// Waits until `deadline`: sleeps while more than [`SPIN_THRESHOLD`] remains,
/// then spins. Returns how late it woke (zero or more).
pub fn wait_until(deadline: Instant) -> Duration {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return now - deadline;
        }
        let left = deadline - now;
        if left > SPIN_THRESHOLD {
            std::thread::sleep(left - SPIN_THRESHOLD);
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_deadlines_do_not_drift() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, Schedule::Fixed(Duration::from_nanos(10_000)));
        let d: Vec<_> = (0..1001).map(|_| p.next_deadline()).collect();
        assert_eq!(d[0], t0);
        assert_eq!(d[1000] - t0, Duration::from_millis(10));
    }

    #[test]
    fn exponential_mean_matches_and_is_reproducible() {
        let t0 = Instant::now();
        let sched = Schedule::Exponential {
            mean: Duration::from_micros(100),
            seed: 7,
        };
        let mut p = Pacer::new(t0, sched);
        let n = 20_000;
        let mut last = p.next_deadline();
        let mut short = 0;
        for _ in 0..n {
            let d = p.next_deadline();
            if d - last < Duration::from_micros(100) {
                short += 1;
            }
            last = d;
        }
        let mean = (last - t0).as_nanos() as f64 / n as f64;
        assert!((mean - 100_000.0).abs() < 3_000.0, "mean {mean}");
        // P(X < mean) = 1 - 1/e ≈ 0.632 for an exponential distribution.
        let frac = short as f64 / n as f64;
        assert!((frac - 0.632).abs() < 0.02, "fraction below mean {frac}");
        let mut q = Pacer::new(t0, sched);
        let mut r = Pacer::new(t0, sched);
        for _ in 0..10 {
            assert_eq!(q.next_deadline(), r.next_deadline());
        }
    }

    #[test]
    fn wait_until_never_returns_early() {
        let deadline = Instant::now() + Duration::from_micros(300);
        let _ = wait_until(deadline);
        assert!(Instant::now() >= deadline);
    }
}
