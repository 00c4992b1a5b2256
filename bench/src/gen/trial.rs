//! One trial on the lab: offer a rate for a time with the live-frames
//! generator, then count what came back (RFC 2544 §23: a trial, then a
//! wait for stragglers before reading the counters).
//!
//! Rate control is in the generator program itself (bench.bpf.c, "Rate
//! control"): each trial is one long BPF_PROG_TEST_RUN call in live-frames
//! mode, the program sends on an absolute schedule and drops the
//! iterations in between, stops at the trial's end, and a signal ends the
//! call. The offered rate reported is frames sent ÷ trial time, which is
//! below the requested rate when the generator cannot keep up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::search::{Outcome, Trial};

use std::os::unix::thread::JoinHandleExt;

use super::abi::GenCfg;
use super::bpf::{BpfError, Sender, MAX_BATCH};
use super::latency::Latency;
use super::netns;

/// Generator settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LiveConfig {
    /// CPU the generator thread is pinned to.
    pub gen_core: Option<usize>,
    /// Frames a late generator may send back to back to catch up (a
    /// veth's peer ring holds 256).
    pub max_burst: u32,
    /// Live-frames batch: iterations between two flushes of the transmit
    /// queue (1..=256).
    pub batch: u32,
    /// Wait after the last frame before reading the counters.
    pub drain: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            gen_core: None,
            max_burst: 32,
            batch: 32,
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
    /// Highest reflector sequence number read in any reply so far, + 1
    /// (0: none read: echoes, or the number is encrypted).
    pub reflector_seq_top: u64,
    /// Replies of this trial whose T2 or T3 was zero.
    pub zero_timestamps: u64,
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
    /// The run was interrupted (SIGINT/SIGTERM) before this trial.
    #[error("interrupted")]
    Interrupted,
}

/// Trials with the live-frames generator of a configured [`Sender`].
pub struct LiveTrial {
    sender: Arc<Sender>,
    netns: PathBuf,
    ifindex: u32,
    frame: Arc<Vec<u8>>,
    gen: GenCfg,
    epoch: u32,
    cfg: LiveConfig,
}

impl LiveTrial {
    /// Trials sending `frame` (the template configured with `gen`) out
    /// of `ifindex` in namespace `netns`.
    pub fn new(
        sender: Arc<Sender>,
        netns: PathBuf,
        ifindex: u32,
        frame: Vec<u8>,
        gen: GenCfg,
        cfg: LiveConfig,
    ) -> LiveTrial {
        LiveTrial {
            sender,
            netns,
            ifindex,
            frame: Arc::new(frame),
            gen,
            epoch: 0,
            cfg,
        }
    }
}

extern "C" fn on_wake(_: libc::c_int) {}

/// The signal that ends a generator's test run (handler installed once,
/// without SA_RESTART so that the syscall returns EINTR).
const WAKE: libc::c_int = libc::SIGUSR1;

fn install_wake_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction is plain old data; the handler does nothing
        // (async-signal-safe) and lives for the whole program.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wake as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(WAKE, &sa, std::ptr::null_mut());
        }
    });
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The generator thread's work: configure the schedule, then run live
/// frames until the stop time (a signal interrupts the run).
fn send_scheduled(
    sender: &Sender,
    ifindex: u32,
    frame: &[u8],
    mut cfg: GenCfg,
    duration: Duration,
    batch: u32,
    started: &std::sync::mpsc::Sender<u64>,
) -> Result<Duration, BpfError> {
    let start = monotonic_ns();
    let stop = start + duration.as_nanos() as u64;
    cfg.stop_ns = stop;
    sender.write_gen_cfg(&cfg)?;
    let _ = started.send(stop);
    while monotonic_ns() < stop {
        match sender.run_live(ifindex, frame, i32::MAX as u32, batch) {
            Ok(()) => {}
            Err(BpfError::TestRun { source, .. }) if source.raw_os_error() == Some(libc::EINTR) => {
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Duration::from_nanos(stop - start))
}

impl Trial for LiveTrial {
    type Outcome = LiveOutcome;
    type Error = TrialError;

    fn run(&mut self, rate_pps: f64, duration: Duration) -> Result<LiveOutcome, TrialError> {
        if super::run::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(TrialError::Interrupted);
        }
        install_wake_handler();
        let g0 = self.sender.gen_stats()?;
        let c0 = self.sender.cnt_stats()?;
        let (r0, s0) = self.sender.histograms()?;
        self.epoch = self.epoch.wrapping_add(1);
        let cfg = GenCfg {
            interval_fp: GenCfg::interval_for(rate_pps),
            max_burst: self.cfg.max_burst.max(1),
            epoch: self.epoch,
            ..self.gen
        };
        let batch = self.cfg.batch.clamp(1, MAX_BATCH);
        let (sender, frame, ifindex, core) = (
            self.sender.clone(),
            self.frame.clone(),
            self.ifindex,
            self.cfg.gen_core,
        );
        let netns = self.netns.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done2 = done.clone();
        let handle = std::thread::spawn(move || -> Result<Duration, TrialError> {
            let r = (|| {
                netns::enter(&netns)?;
                if let Some(c) = core {
                    netns::pin(0, c)?;
                    netns::set_fifo(0, netns::prio::GENERATOR)?;
                }
                Ok(send_scheduled(
                    &sender,
                    ifindex,
                    &frame,
                    cfg,
                    duration,
                    batch,
                    &started_tx,
                )?)
            })();
            done2.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        });
        // Wait for the stop time, then interrupt the run until the thread
        // has noticed (a signal that lands between two calls is repeated).
        if let Ok(stop) = started_rx.recv() {
            let left = stop.saturating_sub(monotonic_ns());
            std::thread::sleep(Duration::from_nanos(left) + Duration::from_millis(1));
        }
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: the thread is alive (not yet joined); WAKE has a no-op
            // handler installed above.
            unsafe { libc::pthread_kill(handle.as_pthread_t(), WAKE) };
            std::thread::sleep(Duration::from_millis(2));
        }
        let elapsed = handle
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
            reflector_seq_top: c1.rseq_top,
            zero_timestamps: c1.zero_ts,
        })
    }
}
