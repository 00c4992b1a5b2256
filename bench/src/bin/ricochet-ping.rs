//! `ricochet-ping`: TWAMP control-client and session-sender (RFC 5357) in
//! every mode. See `ricochet-ping --help` and bench/README.md.
use clap::Parser;
use ricochet_bench::ping::{self, cli::Args, report};

fn main() {
    let args = Args::parse();
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
    let r = match ping::run(&config) {
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
