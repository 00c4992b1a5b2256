//! `ricochet-ping`: TWAMP control-client and session-sender (RFC 5357) in
//! every mode. See `ricochet-ping --help` and bench/README.md.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use ricochet_bench::ping::{self, cli::Args, report};
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() {
    let args = Args::parse();
    if args.stamp.stamp {
        stamp_main(&args);
    }
    let (config, warnings) = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ricochet-ping: {e}");
            std::process::exit(2);
        }
    };
    for w in warnings {
        eprintln!("ricochet-ping: warning: {w}");
    }
    // Ctrl-C: stop sending and report; a second Ctrl-C exits at once.
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupt.clone());
        let _ = signal_hook::flag::register(sig, interrupt.clone());
    }
    let r = match ping::run_until(&config, &interrupt) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ricochet-ping: {e}");
            std::process::exit(2);
        }
    };
    for w in &r.warnings {
        eprintln!("ricochet-ping: warning: {w}");
    }
    let out = if args.json {
        report::json(&r)
    } else if args.raw {
        report::raw(&r)
    } else {
        report::text(&r, args.verbose > 0)
    };
    print!("{out}");
    std::process::exit(r.exit_status());
}

/// `--stamp`: a STAMP session-sender (RFC 8762/8972), no TWAMP-Control.
fn stamp_main(args: &Args) -> ! {
    use ping::stamp;
    let (config, warnings) = match stamp::stamp_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ricochet-ping: {e}");
            std::process::exit(2);
        }
    };
    for w in warnings {
        eprintln!("ricochet-ping: warning: {w}");
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupt.clone());
        let _ = signal_hook::flag::register(sig, interrupt.clone());
    }
    let r = match stamp::run_stamp(&config, &interrupt) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ricochet-ping: {e}");
            std::process::exit(2);
        }
    };
    for w in &r.warnings {
        eprintln!("ricochet-ping: warning: {w}");
    }
    let out = if args.json {
        stamp::report::json(&r)
    } else if args.raw {
        stamp::report::raw(&r)
    } else {
        stamp::report::text(&r, args.verbose > 0)
    };
    print!("{out}");
    std::process::exit(r.exit_status());
}
