//! The comparison: sets up the sender side once (generator and counter on
//! the sender's veth), then for every target (started and stopped in turn,
//! each a separate set of trials) and every packet size builds the test
//! frame, warms the path up (ARP, caches; results discarded) and runs the
//! RFC 2544 search.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libbpf_rs::Link;

use crate::report::{Measured, Progress, Status, TargetResult, TrialPoint};
use crate::search::{search, Outcome, SearchConfig};

use super::bpf::Sender;
use super::frame::{self, Flow, ReplyKind};
use super::netns;
use super::target::{Endpoint, LabEnv, Target};
use super::trial::{LiveConfig, LiveTrial};

/// A packet size of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// The smallest symmetric test packet of the target's mode.
    Min,
    /// IP packet length in octets (raised to the mode's minimum).
    Ip(usize),
}

impl Size {
    /// Parses `min` or a number of octets.
    pub fn parse(s: &str) -> Option<Size> {
        if s.eq_ignore_ascii_case("min") {
            Some(Size::Min)
        } else {
            s.parse().ok().map(Size::Ip)
        }
    }

    /// How the report names it.
    pub fn label(self) -> String {
        match self {
            Size::Min => "min".into(),
            Size::Ip(n) => n.to_string(),
        }
    }
}

/// Settings of a comparison.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sizes: Vec<Size>,
    pub search: SearchConfig,
    pub live: LiveConfig,
    /// Warm-up before each search: this long at `warmup_pps`.
    pub warmup: Duration,
    pub warmup_pps: f64,
}

/// The sender side: programs loaded, counter attached.
pub struct SenderSide {
    sender: Arc<Sender>,
    _counter: Link,
    ifindex: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    netns: PathBuf,
}

impl SenderSide {
    /// Loads generator and counter, attaches the counter to the sender's
    /// veth and (with a generator core) pins its NAPI thread there at
    /// real-time priority.
    pub fn new(env: &LabEnv, gen_core: Option<usize>) -> Result<SenderSide, String> {
        let ns = netns::path_of(&env.sender_ns);
        let iface = env.sender_iface.clone();
        let (sender, link, ifindex, src_mac) = netns::run_in(&ns, move || {
            let s = Sender::load().map_err(|e| e.to_string())?;
            let idx = netns::ifindex(&iface).map_err(|e| e.to_string())?;
            let link = s.attach_counter(idx).map_err(|e| e.to_string())?;
            let mac = netns::mac_address(&iface).map_err(|e| e.to_string())?;
            Ok::<_, String>((s, link, idx, mac))
        })
        .map_err(|e| e.to_string())??;
        let riface = env.reflector_iface.clone();
        let dst_mac = netns::run_in(&env.reflector_netns(), move || netns::mac_address(&riface))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if let Some(core) = gen_core {
            // The counter shares the generator's CPU and must win it: the
            // generator spins between sends, the counter's NAPI thread
            // preempts it (SCHED_FIFO) whenever replies arrive.
            if let Err(e) = netns::thread_napi(
                &env.sender_ns,
                &env.sender_iface,
                core,
                Some(netns::prio::COUNTER_NAPI),
            ) {
                eprintln!("ricochet-bench: counter NAPI not pinned: {e}");
            }
        }
        Ok(SenderSide {
            sender: Arc::new(sender),
            _counter: link,
            ifindex,
            src_mac,
            dst_mac,
            netns: ns,
        })
    }

    /// The loaded programs.
    pub fn sender(&self) -> &Arc<Sender> {
        &self.sender
    }
}

fn skipped(t: &dyn Target, env: &LabEnv, size: Size, status: Status, note: String) -> TargetResult {
    let ip_len = match size {
        Size::Ip(n) => n,
        Size::Min => frame::min_ip_len(env.mode, env.reflector_addr.is_ipv6()),
    };
    TargetResult {
        target: t.name().into(),
        description: t.describe(),
        ceiling: t.ceiling().map(Into::into),
        mode: env.mode.name().into(),
        size: size.label(),
        ip_len,
        frame_len: ip_len + frame::ETH_LEN,
        status,
        note: Some(note),
        measured: None,
    }
}

/// Measures one started target at one size.
fn measure(
    env: &LabEnv,
    side: &SenderSide,
    t: &dyn Target,
    ep: &Endpoint,
    size: Size,
    settings: &Settings,
    progress: &Progress,
) -> Result<TargetResult, String> {
    let v6 = ep.addr.is_ipv6();
    let min = frame::session_min_ip_len(&ep.session, v6);
    let (ip_len, note) = match size {
        Size::Min => (min, None),
        Size::Ip(n) if n < min => (
            min,
            Some(format!("{n} octets raised to the mode's minimum {min}")),
        ),
        Size::Ip(n) => (n, None),
    };
    let flow = Flow {
        src_mac: side.src_mac,
        dst_mac: side.dst_mac,
        src: SocketAddr::new(env.sender_addr, env.sender_port),
        dst: ep.addr,
    };
    let g = frame::build(&flow, &ep.session, ip_len).map_err(|e| e.to_string())?;
    side.sender
        .configure_generator(&g)
        .map_err(|e| e.to_string())?;
    side.sender
        .configure_counter(&frame::counter_config(&flow, &ep.session, ep.reply))
        .map_err(|e| e.to_string())?;
    let mut trial = LiveTrial::new(
        side.sender.clone(),
        side.netns.clone(),
        side.ifindex,
        g.frame.clone(),
        g.gen,
        settings.live.clone(),
    );
    // Warm-up: resolves neighbours, fills caches; not reported.
    {
        use crate::search::Trial as _;
        trial
            .run(settings.warmup_pps, settings.warmup)
            .map_err(|e| e.to_string())?;
    }
    let name = t.name().to_owned();
    let label = size.label();
    let mut n = 0;
    let r = search(&mut trial, &settings.search, |s| {
        n += 1;
        progress.message(format!(
            "{name} {label}: trial {n} at {:.3} Mpps, loss {:.4} %",
            s.outcome.offered_pps() / 1e6,
            s.outcome.loss_ratio() * 100.0
        ));
    })
    .map_err(|e| e.to_string())?;
    let frame_len = g.frame.len();
    let trials = r
        .steps
        .iter()
        .map(|s| TrialPoint {
            phase: s.phase,
            requested_pps: s.requested_pps,
            offered_pps: s.outcome.offered_pps(),
            received_pps: s.outcome.received as f64 / s.outcome.elapsed.as_secs_f64().max(1e-9),
            sent: s.outcome.sent,
            received: s.outcome.received,
            loss_ratio: s.outcome.loss_ratio(),
            passed: s.passed,
        })
        .collect();
    let best = r.best_step();
    let pps = r.throughput_pps();
    let mut note = note;
    let reflector_seq_top = r
        .steps
        .iter()
        .map(|s| s.outcome.reflector_seq_top)
        .max()
        .unwrap_or(0);
    let zero_timestamps: u64 = r.steps.iter().map(|s| s.outcome.zero_timestamps).sum();
    if zero_timestamps > 0 {
        note = Some(
            note.map_or(String::new(), |n| n + "; ")
                + &format!("{zero_timestamps} replies with a zero T2 or T3"),
        );
    }
    if ep.reply == ReplyKind::Reflector && best.is_some_and(|b| b.outcome.rtt.count() == 0) {
        note = Some(
            note.map_or(String::new(), |n| n + "; ")
                + "latency not readable in this mode's replies",
        );
    }
    Ok(TargetResult {
        target: t.name().into(),
        description: t.describe(),
        ceiling: t.ceiling().map(Into::into),
        mode: ep.session.mode.name().into(),
        size: size.label(),
        ip_len,
        frame_len,
        status: Status::Measured,
        note,
        measured: Some(Measured {
            throughput_pps: pps,
            throughput_gbps: crate::report::wire_gbps(pps, frame_len),
            share_of_ceiling: None,
            loss_ratio: best.map_or(1.0, |b| b.outcome.loss_ratio()),
            confirmed: r.confirmed,
            generator_limited: r.generator_limited,
            rtt: best.and_then(|b| b.outcome.rtt.summary()),
            residence: best.and_then(|b| b.outcome.residence.summary()),
            rtt_cdf: best.map_or(Vec::new(), |b| b.outcome.rtt.cdf()),
            trials,
            reflector_seq_top,
            zero_timestamps,
        }),
    })
}

/// Set (by the binary's SIGINT/SIGTERM handler) to end the run early:
/// trials not yet started are refused, targets not yet started are
/// reported as skipped, and everything started is torn down as usual.
pub static INTERRUPTED: std::sync::LazyLock<Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));

fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs every target at every size. Targets that cannot start are reported
/// as skipped (not wired, unavailable) or failed, once per size.
pub fn run(
    env: &LabEnv,
    side: &SenderSide,
    targets: &mut [Box<dyn Target>],
    settings: &Settings,
    progress: &Progress,
) -> Vec<TargetResult> {
    let mut out = Vec::new();
    for t in targets.iter_mut() {
        if interrupted() {
            for &size in &settings.sizes {
                out.push(skipped(
                    t.as_ref(),
                    env,
                    size,
                    Status::Skipped,
                    "interrupted".into(),
                ));
                progress.inc();
            }
            continue;
        }
        progress.message(format!("starting {}", t.name()));
        let running = match t.start(env) {
            Ok(r) => r,
            Err(e) => {
                let status = if e.is_skip() {
                    Status::Skipped
                } else {
                    Status::Failed
                };
                for &size in &settings.sizes {
                    out.push(skipped(t.as_ref(), env, size, status, e.to_string()));
                    progress.inc();
                }
                continue;
            }
        };
        let ep = running.endpoint();
        let v6 = ep.addr.is_ipv6();
        let min = frame::session_min_ip_len(&ep.session, v6);
        let mut done: Vec<usize> = Vec::new();
        for &size in &settings.sizes {
            // Sizes below the mode's minimum are raised to it: measure that
            // length once.
            let ip_len = match size {
                Size::Min => min,
                Size::Ip(n) => n.max(min),
            };
            if done.contains(&ip_len) {
                let mut r = skipped(
                    t.as_ref(),
                    env,
                    size,
                    Status::Skipped,
                    format!("the mode's minimum is {min} octets: measured in the row above"),
                );
                r.mode = ep.session.mode.name().into();
                r.ip_len = ip_len;
                r.frame_len = ip_len + frame::ETH_LEN;
                out.push(r);
                progress.inc();
                continue;
            }
            done.push(ip_len);
            if interrupted() {
                out.push(skipped(
                    t.as_ref(),
                    env,
                    size,
                    Status::Skipped,
                    "interrupted".into(),
                ));
                progress.inc();
                continue;
            }
            let r = measure(env, side, t.as_ref(), &ep, size, settings, progress)
                .unwrap_or_else(|e| skipped(t.as_ref(), env, size, Status::Failed, e));
            if let Some(m) = &r.measured {
                progress.println(format!(
                    "{} {}: {:.3} Mpps ({:.2} Gbit/s)",
                    r.target,
                    r.size,
                    m.throughput_pps / 1e6,
                    m.throughput_gbps
                ));
            }
            out.push(r);
            progress.inc();
        }
        if let Err(e) = running.stop() {
            progress.println(format!("{}: teardown: {e}", t.name()));
        }
    }
    out
}
