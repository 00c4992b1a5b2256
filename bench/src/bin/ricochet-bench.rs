//! `ricochet-bench`: zero-loss reflection rate and latency benchmark.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

use ricochet_bench::gen::frame::ProbeMode;
use ricochet_bench::gen::netns;
use ricochet_bench::gen::run::{self, SenderSide, Settings, Size};
use ricochet_bench::gen::target::{self, External, LabEnv, TARGET_NAMES};
use ricochet_bench::gen::trial::LiveConfig;
use ricochet_bench::gen::twampd::Twampd;
use ricochet_bench::report::{Meta, Progress, Report};
use ricochet_bench::search::SearchConfig;
use ricochet_testkit::lab::{Lab, Side};

/// Finds the zero-loss reflection rate and latency of each reflector path
/// in the namespace lab (RFC 2544-style binary search with a confirming
/// trial), driven by a BPF live-frames generator on the sender veth whose
/// replies are counted and timed by an XDP program there (no socket stack).
///
/// Targets: ceiling (minimal XDP swap + XDP_TX), xdp, afxdp-auth, afxdp-enc,
/// afxdp-esp (TWAMP inside ESP-in-UDP, AES-GCM-128; counted, latency not
/// readable), afxdp-echo, socket, socket-echo (bare recvmmsg/sendmmsg), twampd (perfSONAR,
/// a session negotiated over TWAMP-Control; --twampd PATH), external (any
/// TWAMP Light/STAMP reflector, --external CMD). Targets that cannot run here
/// are listed as skipped with the reason. The xdp and afxdp targets run the
/// ricochet-reflector binary built next to this one.
///
/// Sizes are IP packet lengths in octets; `min` is the smallest symmetric
/// test packet of the mode (69 octets for TWAMP over IPv4). Needs root.
///
/// Examples:
///   ricochet-bench                                   # the standard comparison
///   ricochet-bench --targets ceiling,socket-echo --sizes min,1500 --trial-secs 1
///   ricochet-bench --targets afxdp-auth,afxdp-esp --sizes min,512 --trial-secs 1
///   ricochet-bench --loss 0.1% --out /tmp/bench
///   ricochet-bench --targets external --external 'twamp-light-reflector -p 862'
///   ricochet-bench --targets xdp,twampd --twampd /opt/owamp/bin/twampd --sizes min
///   ricochet-bench --lab rcl --mode stamp            # an existing scripts/lab.sh lab
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// Targets to measure, comma-separated, or `all`.
    #[arg(long, default_value = "all")]
    targets: String,
    /// Packet sizes (IP length in octets, or `min`), comma-separated.
    #[arg(long, default_value = "min,112,512,1500")]
    sizes: String,
    /// Length of each trial in seconds.
    #[arg(long, default_value_t = 2.0)]
    trial_secs: f64,
    /// Acceptable loss per trial: a ratio (0.001) or a percentage (0.1%).
    #[arg(long, default_value = "0")]
    loss: String,
    /// Search resolution: stop when the bounds are this fraction apart.
    #[arg(long, default_value_t = 0.02)]
    resolution: f64,
    /// Highest rate tried, Mpps.
    #[arg(long, default_value_t = 10.0)]
    max_mpps: f64,
    /// Trials per search at most (confirmations included).
    #[arg(long, default_value_t = 20)]
    max_trials: usize,
    /// Report directory [default: bench/results/<timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// perfSONAR twampd binary for the `twampd` target [default:
    /// $RICOCHET_TWAMPD, else twampd on PATH; skipped when absent].
    #[arg(long, value_name = "PATH")]
    twampd: Option<PathBuf>,
    /// External reflector command, run with `sh -c` in the reflector namespace.
    #[arg(long)]
    external: Option<String>,
    /// UDP port of the external reflector.
    #[arg(long, default_value_t = 862)]
    external_port: u16,
    /// Test mode of the external reflector: twamp (Light) or stamp.
    #[arg(long, default_value = "twamp")]
    external_mode: String,
    /// Test mode of the ceiling and echo targets: twamp, twamp-auth,
    /// twamp-enc, stamp, stamp-auth.
    #[arg(long, default_value = "twamp")]
    mode: String,
    /// UDP port the targets listen on (Ricochet's XDP path also has a
    /// STAMP listener on PORT + 1).
    #[arg(long, default_value_t = 862)]
    port: u16,
    /// The generator's UDP source port (the sessions' Sender Port).
    #[arg(long, default_value_t = 40000)]
    sender_port: u16,
    /// CPU of the generator (and of the counter's NAPI thread).
    #[arg(long, default_value_t = 0)]
    gen_core: usize,
    /// CPU of the reflector (its threads and NAPI thread).
    #[arg(long, default_value_t = 1)]
    reflector_core: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Use this existing lab (`LAB=NAME scripts/lab.sh up`) instead of a
    /// private one that is deleted afterwards.
    #[arg(long)]
    lab: Option<String>,
    /// IPv6 (2001:2::/48) instead of IPv4 (198.18.0.0/15).
    #[arg(long)]
    ipv6: bool,
    /// Largest generator burst (frames per test run).
    #[arg(long, default_value_t = 64)]
    max_burst: u32,
}

fn parse_loss(s: &str) -> Option<f64> {
    let v = if let Some(p) = s.strip_suffix('%') {
        p.trim().parse::<f64>().ok()? / 100.0
    } else {
        s.trim().parse::<f64>().ok()?
    };
    (0.0..=1.0).contains(&v).then_some(v)
}

/// `YYYYmmdd-HHMMSS` in local time.
fn timestamp(secs: u64) -> String {
    let t = secs as libc::time_t;
    // SAFETY: tm is plain old data; localtime_r writes only into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to `t` and `tm` for the call.
    unsafe { libc::localtime_r(&t, &mut tm) };
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ricochet-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, XDP, BPF test runs)".into());
    }
    let loss = parse_loss(&cli.loss)
        .ok_or_else(|| format!("--loss {}: not a ratio or percentage", cli.loss))?;
    let mode =
        ProbeMode::parse(&cli.mode).ok_or_else(|| format!("--mode {}: unknown", cli.mode))?;
    let external_mode = match cli.external_mode.as_str() {
        "twamp" => ProbeMode::Twamp,
        "stamp" => ProbeMode::Stamp,
        m => return Err(format!("--external-mode {m}: twamp or stamp")),
    };
    let sizes: Vec<Size> = cli
        .sizes
        .split(',')
        .map(|s| Size::parse(s.trim()).ok_or_else(|| format!("--sizes: {s}?")))
        .collect::<Result<_, _>>()?;
    let names: Vec<&str> = if cli.targets == "all" {
        TARGET_NAMES.to_vec()
    } else {
        cli.targets.split(',').map(str::trim).collect()
    };
    let external = External {
        command: cli.external.clone(),
        port: cli.external_port,
        mode: external_mode,
        startup: Duration::from_secs(1),
    };
    let mut targets = names
        .iter()
        .map(|n| {
            if *n == "twampd" {
                let t: Box<dyn target::Target> = Box::new(Twampd::locate(cli.twampd.clone()));
                return Ok(t);
            }
            target::by_name(n, &external)
                .ok_or_else(|| format!("unknown target {n} (known: {})", TARGET_NAMES.join(", ")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(cli.trial_secs > 0.0 && cli.trial_secs <= 600.0) {
        return Err("--trial-secs must be in (0, 600]".into());
    }

    let cpus = netns::online_cpus();
    let mut notes = Vec::new();
    let (gen_core, reflector_core) = if cli.no_pin {
        (None, None)
    } else {
        if cli.gen_core >= cpus || cli.reflector_core >= cpus {
            return Err(format!(
                "only {cpus} CPUs: use --gen-core/--reflector-core below {cpus} or --no-pin"
            ));
        }
        if cli.gen_core == cli.reflector_core {
            notes.push("generator and reflector share a CPU".into());
        }
        (Some(cli.gen_core), Some(cli.reflector_core))
    };
    if cpus < 3 {
        notes.push(format!(
            "queue/core sweep skipped: {cpus} CPUs (needs one generator CPU and at least two reflector CPUs)"
        ));
    }

    // The lab: an existing one, or a private one deleted on exit.
    let own_lab;
    let (lab_name, env) = {
        let name = match &cli.lab {
            Some(n) => n.clone(),
            None => {
                own_lab = Lab::up("bench");
                own_lab.name().to_owned()
            }
        };
        let env = LabEnv {
            sender_ns: format!("{name}-s"),
            reflector_ns: format!("{name}-r"),
            sender_iface: format!("{name}s"),
            reflector_iface: format!("{name}r"),
            sender_addr: Lab::addr(Side::Sender, cli.ipv6),
            reflector_addr: Lab::addr(Side::Reflector, cli.ipv6),
            reflector_core,
            port: cli.port,
            sender_port: cli.sender_port,
            mode,
        };
        (name, env)
    };
    if !netns::path_of(&env.sender_ns).exists() {
        return Err(format!(
            "lab {lab_name} is not up (LAB={lab_name} scripts/lab.sh up)"
        ));
    }

    let search = SearchConfig {
        max_pps: cli.max_mpps * 1e6,
        loss_threshold: loss,
        resolution: cli.resolution,
        trial: Duration::from_secs_f64(cli.trial_secs),
        max_trials: cli.max_trials,
        ..SearchConfig::default()
    };
    let live = LiveConfig {
        gen_core,
        max_burst: cli.max_burst,
        ..LiveConfig::default()
    };
    let settings = Settings {
        sizes,
        search: search.clone(),
        live: live.clone(),
        warmup: Duration::from_millis(300),
        warmup_pps: 10_000.0,
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("results")
            .join(timestamp(started))
    });

    // Ctrl-C / SIGTERM: finish the trial under way, skip the rest, tear
    // down (daemons, XDP programs, the private lab) and write the report;
    // a second Ctrl-C exits at once.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = std::sync::Arc::clone(&run::INTERRUPTED);
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
            .and_then(|_| signal_hook::flag::register(sig, flag))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let side = SenderSide::new(&env, gen_core)?;
    let progress = Progress::new((targets.len() * settings.sizes.len()) as u64);
    let results = run::run(&env, &side, &mut targets, &settings, &progress);
    progress.finish();

    let mut report = Report {
        meta: Meta {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started_unix: started,
            kernel: kernel(),
            cpus,
            lab: lab_name,
            gen_core,
            reflector_core,
            mode: mode.name().into(),
            ipv6: cli.ipv6,
            search,
            generator: live,
            notes,
        },
        results,
        goals: Vec::new(),
    };
    report.fill_shares();
    report.fill_goals();
    let (files, warnings) = report
        .write(&out)
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("{}", report.table());
    println!("{}", report.goals_table());
    for n in &report.meta.notes {
        println!("note: {n}");
    }
    for w in &warnings {
        eprintln!("ricochet-bench: plot skipped: {w}");
    }
    println!("report: {}", out.display());
    for f in files {
        println!("  {}", f.display());
    }
    let failed = report
        .results
        .iter()
        .any(|r| r.status == ricochet_bench::report::Status::Failed);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
