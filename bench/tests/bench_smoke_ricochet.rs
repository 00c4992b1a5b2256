//! Smoke run of Ricochet's own paths in a real lab: the XDP path (the
//! `ricochet-reflector` binary with a session and a STAMP listener programmed
//! through `BpfSessionTable`), the AF_XDP path authenticated and encrypted,
//! the bare AF_XDP echo, the socket path (`SocketSessionTable`) and the
//! AF_XDP path with TWAMP inside ESP-in-UDP (`add_esp_sa`), each a
//! short search (two trials of 0.5 s at a low rate). Checks that packets
//! were generated, reflected and counted, and what the replies carried (the
//! reflector's own sequence numbers, nonzero T2/T3 where readable); never a
//! timing. Afterwards the daemon's program is detached and its pins gone.
//!
//! Needs root and the `ricochet-reflector` binary next to the test's target
//! directory (`cargo build --workspace`; `make test` builds it).
//! `RICOCHET_SKIP_BPF_TESTS=1` skips.

use std::process::Command;
use std::time::Duration;

use ricochet_bench::gen::frame::ProbeMode;
use ricochet_bench::gen::netns;
use ricochet_bench::gen::ricochet::reflector_bin;
use ricochet_bench::gen::run::{self, SenderSide, Settings, Size};
use ricochet_bench::gen::target::{self, External, LabEnv, Target};
use ricochet_bench::gen::trial::LiveConfig;
use ricochet_bench::report::{Measured, Progress, Status, TargetResult};
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

fn settings(gen_core: Option<usize>) -> Settings {
    Settings {
        sizes: vec![Size::Min],
        search: SearchConfig {
            max_pps: 10_000.0,
            min_pps: 1_000.0,
            trial: Duration::from_millis(500),
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
    }
}

/// Measured, sent and received something, no phantom replies; returns the
/// measurement and the replies counted.
fn reflected<'a>(r: &'a TargetResult, lab: &str) -> (&'a Measured, u64) {
    assert_eq!(
        r.status,
        Status::Measured,
        "{lab} {}: {:?}",
        r.target,
        r.note
    );
    let m = r.measured.as_ref().unwrap();
    let sent: u64 = m.trials.iter().map(|t| t.sent).sum();
    let received: u64 = m.trials.iter().map(|t| t.received).sum();
    assert!(sent > 0, "{}: the generator sent", r.target);
    assert!(received > 0, "{}: replies were counted", r.target);
    assert!(
        received <= sent,
        "{}: no phantom replies ({received} > {sent})",
        r.target
    );
    (m, received)
}

fn has_xdp(ns: &str, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .expect("run ip(8)");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

fn our_pins() -> Vec<String> {
    let prefix = format!("ricochet-bench-{}-", std::process::id());
    std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ricochet_paths_reflect_real_sessions_and_are_counted() {
    if skip() {
        return;
    }
    reflector_bin().expect("ricochet-reflector is built (cargo build --workspace)");
    let lab = Lab::up("br");
    let name = lab.name().to_owned();
    let (gen_core, refl_core) = if netns::online_cpus() >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let mut env = LabEnv {
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
    let names = [
        "xdp",
        "afxdp-echo",
        "afxdp-auth",
        "afxdp-enc",
        "socket",
        "afxdp-esp",
    ];
    let mut targets: Vec<Box<dyn Target>> = names
        .iter()
        .map(|n| target::by_name(n, &external).unwrap())
        .collect();
    let s = settings(gen_core);
    let results = run::run(&env, &side, &mut targets, &s, &Progress::hidden());
    assert_eq!(results.len(), names.len(), "{name}: one result per target");

    // (b) XDP, unauthenticated TWAMP session: the reflector numbers every
    // reflection from 0 (RFC 5357 §4.2.1), so its highest number + 1 is at
    // least the replies we counted; T2 and T3 filled in, residence read.
    let (m, received) = reflected(&results[0], &name);
    assert_eq!(results[0].ip_len, 69, "min TWAMP over IPv4");
    assert!(
        m.reflector_seq_top >= received,
        "xdp: reflector sequence numbers up to {} for {received} replies",
        m.reflector_seq_top
    );
    assert_eq!(m.zero_timestamps, 0, "xdp: T2 and T3 never zero");
    assert!(m.residence.as_ref().is_some_and(|d| d.count > 0));
    assert!(m.rtt.as_ref().is_some_and(|d| d.count > 0));

    // (c0) the echo returns the sender packet: RTT from the send table.
    let (m, _) = reflected(&results[1], &name);
    assert_eq!(results[1].ip_len, 140, "min authenticated TWAMP");
    assert!(m.rtt.as_ref().is_some_and(|d| d.count > 0));
    assert_eq!(m.reflector_seq_top, 0, "an echo has no reflector number");

    // (c) authenticated: the replies verified nothing here, but T2/T3 are
    // in clear (RFC 4656 §4.2.1) and were filled in; encrypted: counted.
    let (m, _) = reflected(&results[2], &name);
    assert_eq!(results[2].ip_len, 140);
    assert!(m.residence.as_ref().is_some_and(|d| d.count > 0));
    assert_eq!(m.zero_timestamps, 0);
    let (_, _) = reflected(&results[3], &name);
    assert_eq!(results[3].ip_len, 140);

    // (d) the socket path: the engine numbers its reflections too.
    let (m, received) = reflected(&results[4], &name);
    assert!(m.reflector_seq_top >= received);
    assert_eq!(m.zero_timestamps, 0);
    assert!(m.residence.as_ref().is_some_and(|d| d.count > 0));

    // (c') ESP: the generator's ESP-in-UDP packets (AES-GCM, sealed with
    // the SA's inbound keys) were decrypted, reflected, sealed again and
    // sent back from port 4500; the counter takes only UDP 4500 -> the
    // generator's port, and can read nothing inside.
    let (m, _) = reflected(&results[5], &name);
    assert_eq!(
        results[5].ip_len,
        20 + 8 + 8 + 8 + 8 + 41 + 1 + 2 + 16,
        "min ESP-in-UDP: SPI/SN, IV, inner UDP, TWAMP, padding, trailer, ICV"
    );
    assert_eq!(results[5].mode, "twamp");
    assert!(m.rtt.is_none() && m.residence.is_none(), "ciphertext only");
    assert!(
        results[5]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("latency not readable")),
        "{:?}",
        results[5].note
    );

    // STAMP: the XDP path's listener and the socket path's (stateless: the
    // reflector's number is the sender's, RFC 8762 §4.3).
    env.mode = ProbeMode::Stamp;
    let mut targets: Vec<Box<dyn Target>> = ["xdp", "socket"]
        .iter()
        .map(|n| target::by_name(n, &external).unwrap())
        .collect();
    let results = run::run(&env, &side, &mut targets, &s, &Progress::hidden());
    for r in &results {
        let (m, _) = reflected(r, &name);
        assert_eq!(r.mode, "stamp");
        assert_eq!(r.ip_len, 20 + 8 + 44, "{}: min STAMP", r.target);
        assert!(m.reflector_seq_top > 0, "{}", r.target);
        assert_eq!(m.zero_timestamps, 0, "{}", r.target);
        assert!(m.residence.as_ref().is_some_and(|d| d.count > 0));
    }

    // Teardown: the daemons detached, every pin directory removed.
    assert!(
        !has_xdp(&env.reflector_ns, &env.reflector_iface),
        "reflector veth left with an XDP program"
    );
    assert_eq!(our_pins(), Vec::<String>::new(), "pins left behind");
    drop(side);
    drop(lab);
}
