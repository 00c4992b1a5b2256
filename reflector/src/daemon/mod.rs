//! The `ricochet-reflector` daemon: loads and attaches the XDP program,
//! pins its maps for the control plane, keeps the clock map fresh, runs the
//! AF_XDP pollers and detaches cleanly on SIGTERM/SIGINT.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ricochet_protocol::time::TimeFormat;

use crate::afxdp::{
    parse_core_list, DropReason, Poller, PollerConfig, PollerShared, StatsSnapshot, WaitMode,
};
use crate::bpf::{self, AttachMode, LoadOptions, Maps, XdpProgram, DEFAULT_PIN_DIR};
use crate::clock::{ClockCell, ClockState};

/// Which data path to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataPath {
    /// XDP reflects unauthenticated TWAMP/STAMP; secured sessions go to
    /// AF_XDP pollers (one per queue).
    Xdp,
    /// As `xdp`, and the pollers are always started (also for benchmarking
    /// the AF_XDP path).
    Afxdp,
    /// The portable socket reflector: it runs inside `ricochet-control`
    /// (its session table is in-process), not in this daemon.
    Socket,
}

/// Ricochet data plane: loads the XDP program on an interface, pins its
/// maps for ricochet-control and runs the AF_XDP pollers.
///
/// Examples:
///   ricochet-reflector --iface eth0
///   ricochet-reflector --iface eth0 --queues 4 --cores 2-5 --busy-poll
///   ricochet-reflector --iface veth0 --generic --pin-dir /sys/fs/bpf/lab
///   ricochet-reflector --iface eth0 --hw-rx-timestamps --keep-attached
///
/// SIGTERM or SIGINT detaches the program (unless --keep-attached) and
/// prints the XDP counters and the pollers' (`name value` lines). The maps
/// stay pinned, so sessions survive a restart; a program left attached by
/// an earlier instance on the same pins is replaced without a gap.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
pub struct Cli {
    /// Interface to attach to.
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Data path.
    #[arg(long, value_enum, default_value_t = DataPath::Xdp)]
    pub path: DataPath,
    /// Directory (on bpffs) where the maps are pinned.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Receive queues served by AF_XDP pollers (0..N-1).
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Cores to pin the pollers to, one per queue in order (e.g. `2,4-6`).
    #[arg(long)]
    pub cores: Option<String>,
    /// Pollers spin instead of sleeping (one full core each, lowest latency).
    #[arg(long)]
    pub busy_poll: bool,
    /// Attach in generic (skb) mode: SLOW, for testing only.
    #[arg(long)]
    pub generic: bool,
    /// Leave the program attached on exit: XDP sessions keep being
    /// reflected while no reflector runs, and the next instance on the same
    /// --pin-dir replaces the program atomically.
    #[arg(long)]
    pub keep_attached: bool,
    /// Do not start AF_XDP pollers under `--path xdp` (no secured sessions).
    #[arg(long)]
    pub no_pollers: bool,
    /// Take T2 from the NIC's receive timestamp: loads the program bound to
    /// the device (BPF_F_XDP_DEV_BOUND_ONLY) so it may call
    /// bpf_xdp_metadata_rx_timestamp; packets the driver gives no stamp for
    /// fall back to the kernel TAI clock. Native mode only. The pollers
    /// count which source each T2 came from (printed on exit).
    #[arg(long)]
    pub hw_rx_timestamps: bool,
}

/// The clock map value from the host clock state: TAI offset and the NTP
/// Error Estimate (the program sets Z for PTP sessions itself).
pub fn clock_map_value(st: &ClockState, nic_rx: bool) -> bpf::ClockState {
    bpf::ClockState {
        tai_offset: st.tai_offset_s,
        error_estimate: st.error_estimate(TimeFormat::Ntp).to_bits(),
        flags: if nic_rx { bpf::ClockState::NIC_RX } else { 0 },
        updated_ns: crate::clock::now_tai_ns(),
    }
}

fn refresh_clock(maps: &Maps, cell: &ClockCell, nic_rx: bool) {
    match ClockState::read() {
        Ok(st) => {
            cell.store(&st);
            if let Err(e) = maps.write_clock(&clock_map_value(&st, nic_rx)) {
                tracing::warn!(error = %e, "writing the clock map failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading the clock state failed"),
    }
}

/// Blocks SIGTERM and SIGINT in this thread (and threads spawned after)
/// so that [`wait_signal`] can take them synchronously.
fn block_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it,
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!(
                "block signals: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        Ok(set)
    }
}

/// Waits up to `timeout` for a blocked signal of `set`; its number if one came.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(1),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos().min(999_999_999) as i32),
    };
    // SAFETY: `set` and `ts` are valid for the call; the info pointer may be null.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Runs the daemon until SIGTERM/SIGINT.
///
/// SIGTERM and SIGINT are blocked in the calling thread (and the threads it
/// spawns) and taken with `sigtimedwait`; a process-directed signal is only
/// guaranteed to reach it if no other thread of the process leaves them
/// unblocked. Call it from `main` before any other thread exists (as the
/// binary does), not from a multi-threaded host such as a test harness:
/// there a SIGTERM sent to the process lands on another thread and its
/// default action kills the whole process. Tests run the binary instead.
pub fn run(cli: &Cli) -> Result<(), String> {
    if cli.path == DataPath::Socket {
        return Err(
            "--path socket runs inside ricochet-control (its session table is \
                    in-process); this daemon serves the xdp and afxdp paths"
                .into(),
        );
    }
    let iface = cli
        .iface
        .as_deref()
        .ok_or("--iface is required for --path xdp and afxdp")?;
    let ifindex = bpf::ifindex(iface).map_err(|e| e.to_string())?;
    if cli.queues == 0 {
        return Err("--queues must be at least 1".into());
    }
    let cores = match &cli.cores {
        None => Vec::new(),
        Some(list) => {
            let c = parse_core_list(list).map_err(|e| format!("--cores: {e}"))?;
            if c.len() < cli.queues as usize {
                return Err(format!(
                    "--cores lists {} cores for {} queues",
                    c.len(),
                    cli.queues
                ));
            }
            c
        }
    };
    if cli.hw_rx_timestamps && cli.generic {
        return Err(
            "--hw-rx-timestamps needs native XDP (a device-bound program); \
                    drop --generic"
                .into(),
        );
    }
    let nic_rx = cli.hw_rx_timestamps;
    let sigs = block_signals()?;

    let prog = XdpProgram::load(&LoadOptions {
        pin_dir: cli.pin_dir.clone(),
        bind_ifindex: nic_rx.then_some(ifindex),
    })
    .map_err(|e| e.to_string())?;
    let cell = Arc::new(ClockCell::default());
    refresh_clock(prog.maps(), &cell, nic_rx);

    let mode = if cli.generic {
        tracing::warn!("--generic: attaching in GENERIC (skb) XDP mode, for testing only");
        eprintln!(
            "WARNING: --generic: XDP runs in generic (skb) mode: slow, timestamps taken late; \
             for testing only"
        );
        AttachMode::Generic
    } else {
        AttachMode::Native
    };
    // A program an earlier instance left attached (--keep-attached) on
    // these pins is replaced atomically: no packet goes unreflected.
    let (attachment, replaced) = prog
        .attach_or_adopt(ifindex, mode)
        .map_err(|e| format!("{e} (use --generic on devices without native XDP)"))?;
    tracing::info!(iface, ifindex, pin_dir = %cli.pin_dir.display(), ?replaced, "XDP program attached");

    let mut pollers = Vec::new();
    if cli.path == DataPath::Afxdp || !cli.no_pollers {
        let shared = PollerShared::new(Arc::clone(&cell));
        for q in 0..cli.queues {
            let mut cfg = PollerConfig::new(ifindex, q);
            cfg.core = cores.get(q as usize).copied();
            if cli.busy_poll {
                cfg.wait = WaitMode::BusyPoll;
            }
            match Poller::spawn(cfg, prog.maps(), &shared) {
                Ok(p) => pollers.push(p),
                Err(e) if cli.path == DataPath::Xdp => {
                    tracing::warn!(queue = q, error = %e,
                        "AF_XDP poller failed: secured sessions on this queue are not reflected");
                    eprintln!("warning: AF_XDP poller for queue {q}: {e}");
                }
                Err(e) => {
                    stop_pollers(pollers);
                    return Err(format!("AF_XDP poller for queue {q}: {e}"));
                }
            }
        }
    }
    eprintln!(
        "ricochet-reflector: attached to {iface} ({} mode{}{}), maps pinned in {}, {} poller(s)",
        if attachment.is_generic() {
            "generic"
        } else {
            "native"
        },
        if nic_rx {
            ", device-bound: T2 from NIC RX timestamps, kernel TAI where the driver gives none"
        } else {
            ""
        },
        replaced.map_or_else(String::new, |id| format!(
            ", replacing program id {id} left attached"
        )),
        cli.pin_dir.display(),
        pollers.len()
    );

    let sig = loop {
        if let Some(s) = wait_signal(&sigs, Duration::from_secs(1)) {
            break s;
        }
        refresh_clock(prog.maps(), &cell, nic_rx);
    };
    tracing::info!(signal = sig, "shutting down");
    let poller_stats = stop_pollers(pollers);
    let mut result = Ok(());
    if cli.keep_attached {
        std::mem::forget(attachment);
        eprintln!("ricochet-reflector: leaving the program attached (--keep-attached)");
    } else if let Err(e) = attachment.detach() {
        result = Err(format!("detach: {e}"));
    }
    match prog.maps().counters() {
        Ok(c) => {
            // A closed stdout must not turn a clean exit into a panic.
            let mut out = std::io::stdout().lock();
            for (name, v) in c.iter() {
                let _ = writeln!(out, "{name} {v}");
            }
            for (q, s) in &poller_stats {
                for (name, v) in poller_lines(s) {
                    let _ = writeln!(out, "poller_q{q}_{name} {v}");
                }
            }
        }
        Err(e) => eprintln!("ricochet-reflector: reading counters: {e}"),
    }
    result
}

/// Stops the pollers; the statistics of those that stopped cleanly.
fn stop_pollers(pollers: Vec<Poller>) -> Vec<(u32, StatsSnapshot)> {
    let mut out = Vec::new();
    for p in pollers {
        let q = p.queue();
        match p.stop() {
            Ok(s) => {
                eprintln!("poller queue {q}: {s:?}");
                out.push((q, s));
            }
            Err(e) => eprintln!("poller queue {q} failed: {e}"),
        }
    }
    out
}

/// The counters of a poller as `name value` pairs (printed on exit as
/// `poller_q<Q>_<name> <value>`, next to the XDP counters).
pub fn poller_lines(s: &StatsSnapshot) -> Vec<(String, u64)> {
    let mut v = vec![
        ("rx_packets".to_owned(), s.rx_packets),
        ("tx_packets".to_owned(), s.tx_packets),
        ("tx_completed".to_owned(), s.tx_completed),
        ("dropped".to_owned(), s.dropped_total()),
        ("t2_nic".to_owned(), s.t2_nic),
        ("t2_kernel_tai".to_owned(), s.t2_kernel_tai),
    ];
    for r in DropReason::ALL {
        v.push((format!("drop_{}", r.name()), s.dropped(r)));
    }
    v
}
