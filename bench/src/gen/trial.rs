//! One trial on the lab: offer a rate for a time with the live-frames
//! generator, then count what came back (RFC 2544 §23: a trial, then a
//! wait for stragglers before reading the counters).
//!
//! Rate control: the kernel sends each BPF_PROG_TEST_RUN call's `repeat`
//! frames back to back, so the generator issues bursts of
//! `rate × burst_window` frames (at most [`LiveConfig::max_burst`], at least
//! 1) at absolute deadlines `burst / rate` apart ([`crate::pace`]). A
//! generator that falls behind catches up with back-to-back bursts and
//! stops at the trial's end, so the offered rate it reports is what it
//! really sent (sent ÷ elapsed) and may be below the requested rate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pace::{wait_until, Pacer, Schedule};
use crate::search::{Outcome, Trial};

use super::bpf::{BpfError, Sender, MAX_BATCH};
use super::latency::Latency;
use super::netns;

/// Generator settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveConfig {
    /// CPU the generator thread is pinned to.
    pub gen_core: Option<usize>,
    /// Largest burst (frames per test run); a veth's peer ring holds 256.
    pub max_burst: u32,
    /// Time a burst covers at the offered rate.
    pub burst_window: Duration,
    /// Wait after the last frame before reading the counters.
    pub drain: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            gen_core: None,
            max_burst: 64,
            burst_window: Duration::from_micros(50),
            drain: Duration::from_millis(100),
        }
    }
}

/// What one trial measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOutcome {
    /// Rate asked for.
    pub requested_pps: f64,
    /// Frames the generator sent (its XDP_TX count).
    pub sent: u64,
    /// Replies the counter saw.
    pub received: u64,
    /// Octets of those replies (Ethernet header onwards).
    pub received_bytes: u64,
    /// Time from the first to the end of the last burst.
    pub elapsed: Duration,
    /// Round trips (T4 − T1).
    pub rtt: Latency,
    /// Reflector residence (T3 − T2).
    pub residence: Latency,
    /// Replies out of sequence order.
    pub reordered: u64,
}

impl Outcome for LiveOutcome {
    fn sent(&self) -> u64 {
        self.sent
    }
    fn received(&self) -> u64 {
        self.received
    }
    fn offered_pps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s <= 0.0 {
            0.0
        } else {
            self.sent as f64 / s
        }
    }
}

/// Why a trial failed.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// The BPF side failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The generator thread could not enter the namespace or died.
    #[error("generator thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Trials with the live-frames generator of a configured [`Sender`].
pub struct LiveTrial {
    sender: Arc<Sender>,
    netns: PathBuf,
    ifindex: u32,
    frame: Arc<Vec<u8>>,
    cfg: LiveConfig,
}

impl LiveTrial {
    /// Trials sending `frame` (the configured template) out of `ifindex`
    /// in namespace `netns`.
    pub fn new(
        sender: Arc<Sender>,
        netns: PathBuf,
        ifindex: u32,
        frame: Vec<u8>,
        cfg: LiveConfig,
    ) -> LiveTrial {
        LiveTrial {
            sender,
            netns,
            ifindex,
            frame: Arc::new(frame),
            cfg,
        }
    }

    /// Frames per burst at `rate_pps`.
    pub fn burst_at(&self, rate_pps: f64) -> u32 {
        let b = (rate_pps * self.cfg.burst_window.as_secs_f64()).round();
        (b as u32).clamp(1, self.cfg.max_burst.clamp(1, MAX_BATCH))
    }
}

/// Sends `total` frames in bursts paced for `rate_pps`, stopping at `end`.
/// Returns the elapsed time.
fn send_paced(
    sender: &Sender,
    ifindex: u32,
    frame: &[u8],
    rate_pps: f64,
    burst: u32,
    total: u64,
    duration: Duration,
) -> Result<Duration, BpfError> {
    let start = Instant::now();
    let end = start + duration;
    let interval = Duration::from_secs_f64(f64::from(burst) / rate_pps);
    let mut pacer = Pacer::new(start, Schedule::Fixed(interval));
    let mut sent = 0u64;
    while sent < total {
        let deadline = pacer.next_deadline();
        if deadline >= end {
            break;
        }
        wait_until(deadline);
        let n = (total - sent).min(u64::from(burst)) as u32;
        sender.run_live(ifindex, frame, n, n)?;
        sent += u64::from(n);
        if Instant::now() >= end {
            break;
        }
    }
    Ok(start.elapsed())
}

impl Trial for LiveTrial {
    type Outcome = LiveOutcome;
    type Error = TrialError;

    fn run(&mut self, rate_pps: f64, duration: Duration) -> Result<LiveOutcome, TrialError> {
        let g0 = self.sender.gen_stats()?;
        let c0 = self.sender.cnt_stats()?;
        let (r0, s0) = self.sender.histograms()?;
        let burst = self.burst_at(rate_pps);
        let total = (rate_pps * duration.as_secs_f64()).round().max(1.0) as u64;
        let (sender, frame, ifindex, core) = (
            self.sender.clone(),
            self.frame.clone(),
            self.ifindex,
            self.cfg.gen_core,
        );
        let netns = self.netns.clone();
        let elapsed = std::thread::spawn(move || -> Result<Duration, TrialError> {
            netns::enter(&netns)?;
            if let Some(c) = core {
                netns::pin(0, c)?;
            }
            Ok(send_paced(
                &sender, ifindex, &frame, rate_pps, burst, total, duration,
            )?)
        })
        .join()
        .map_err(|_| std::io::Error::other("generator thread panicked"))??;
        std::thread::sleep(self.cfg.drain);
        let g1 = self.sender.gen_stats()?;
        let c1 = self.sender.cnt_stats()?.since(&c0);
        let (r1, s1) = self.sender.histograms()?;
        Ok(LiveOutcome {
            requested_pps: rate_pps,
            sent: g1.frames.saturating_sub(g0.frames),
            received: c1.packets,
            received_bytes: c1.bytes,
            elapsed,
            rtt: Latency::from_buckets(r1).since(&Latency::from_buckets(r0)),
            residence: Latency::from_buckets(s1).since(&Latency::from_buckets(s0)),
            reordered: c1.reordered,
        })
    }
}
