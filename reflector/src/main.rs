//! `ricochet-reflector`: the data plane daemon (see [`ricochet_reflector::daemon`]).
use clap::Parser;
use ricochet_reflector::daemon::{run, Cli};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(&cli) {
        eprintln!("ricochet-reflector: error: {e}");
        std::process::exit(1);
    }
}
