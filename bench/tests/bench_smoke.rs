//! Smoke run of the benchmark in a real lab: the ceiling and the bare
//! socket echo each get a short search (two trials of 0.7 s) and the test
//! checks that packets were generated, reflected and counted, with no
//! timing assertion (the machine is shared). Also checks that a target that
//! cannot run here (no external command) is reported as skipped, not failed.
//! Ricochet's own paths: `bench_smoke_ricochet.rs`.
//!
//! Needs root (CI runs as root); `RICOCHET_SKIP_BPF_TESTS=1` skips.

use std::time::Duration;

use ricochet_bench::gen::frame::ProbeMode;
use ricochet_bench::gen::netns;
use ricochet_bench::gen::run::{self, SenderSide, Settings, Size};
use ricochet_bench::gen::target::{self, External, LabEnv, Target};
use ricochet_bench::gen::trial::LiveConfig;
use ricochet_bench::gen::twampd::Twampd;
use ricochet_bench::report::{Progress, Status};
use ricochet_bench::search::SearchConfig;
use ricochet_testkit::lab::{Lab, Side};

fn skip() -> bool {
    if std::env::var_os("RICOCHET_SKIP_BPF_TESTS").is_some() {
        eprintln!("RICOCHET_SKIP_BPF_TESTS set: skipping lab test");
        return true;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "lab tests need root (RICOCHET_SKIP_BPF_TESTS=1 skips)"
    );
    false
}

#[test]
fn ceiling_and_socket_echo_reflect_and_are_counted() {
    if skip() {
        return;
    }
    let lab = Lab::up("bs");
    let name = lab.name().to_owned();
    let cpus = netns::online_cpus();
    let (gen_core, refl_core) = if cpus >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let env = LabEnv {
        sender_ns: lab.netns(Side::Sender),
        reflector_ns: lab.netns(Side::Reflector),
        sender_iface: lab.iface(Side::Sender),
        reflector_iface: lab.iface(Side::Reflector),
        sender_addr: Lab::addr(Side::Sender, false),
        reflector_addr: Lab::addr(Side::Reflector, false),
        reflector_core: refl_core,
        port: 862,
        sender_port: 40000,
        mode: ProbeMode::Twamp,
    };
    let side = SenderSide::new(&env, gen_core).expect("sender side in the lab");
    let external = External {
        command: None,
        port: 862,
        mode: ProbeMode::Twamp,
        startup: Duration::from_millis(10),
    };
    let mut targets: Vec<Box<dyn Target>> = ["ceiling", "socket-echo", "external", "twampd"]
        .iter()
        .map(|n| target::by_name(n, &external).unwrap())
        .collect();
    let settings = Settings {
        sizes: vec![Size::Min],
        search: SearchConfig {
            max_pps: 20_000.0,
            min_pps: 1_000.0,
            trial: Duration::from_millis(700),
            max_trials: 2,
            max_confirms: 1,
            ..SearchConfig::default()
        },
        live: LiveConfig {
            gen_core,
            drain: Duration::from_millis(50),
            ..LiveConfig::default()
        },
        warmup: Duration::from_millis(200),
        warmup_pps: 5_000.0,
    };
    let results = run::run(&env, &side, &mut targets, &settings, &Progress::hidden());
    assert_eq!(results.len(), 4, "{name}: one result per target and size");
    for r in &results[..2] {
        assert_eq!(r.status, Status::Measured, "{}: {:?}", r.target, r.note);
        let m = r.measured.as_ref().unwrap();
        assert!(!m.trials.is_empty());
        let sent: u64 = m.trials.iter().map(|t| t.sent).sum();
        let received: u64 = m.trials.iter().map(|t| t.received).sum();
        assert!(sent > 0, "{}: the generator sent", r.target);
        assert!(received > 0, "{}: replies were counted", r.target);
        assert!(
            received <= sent,
            "{}: no phantom replies ({received} > {sent})",
            r.target
        );
        assert_eq!(r.ip_len, 69, "min TWAMP over IPv4");
    }
    // The ceiling's replies are echoes: RTT measured from the send table.
    let ceiling = results[0].measured.as_ref().unwrap();
    assert!(ceiling.trials.iter().any(|t| t.received > 0));
    assert_eq!(results[2].status, Status::Skipped);
    assert!(results[2].note.as_deref().unwrap().contains("--external"));
    // perfSONAR twampd (RICOCHET_TWAMPD or PATH): a session negotiated over
    // TWAMP-Control, its reflections counted with T2/T3 filled in; skipped
    // (with the reason) where it is not installed.
    let tw = &results[3];
    if Twampd::locate(None).path.is_some() {
        assert_eq!(tw.status, Status::Measured, "twampd: {:?}", tw.note);
        let m = tw.measured.as_ref().unwrap();
        let received: u64 = m.trials.iter().map(|t| t.received).sum();
        assert!(received > 0, "twampd reflected");
        assert!(m.reflector_seq_top > 0 && m.zero_timestamps == 0);
    } else {
        assert_eq!(tw.status, Status::Skipped);
        assert!(tw.note.as_deref().unwrap().contains("twampd"));
        eprintln!("twampd not installed: its smoke run was skipped");
    }
    drop(side);
    drop(lab);
}
