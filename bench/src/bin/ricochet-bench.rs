//! `ricochet-bench`: zero-loss reflection rate and latency benchmark.
use clap::Parser;

/// Finds the zero-loss reflection rate and latency of each reflector path.
///
/// Examples:
///   ricochet-bench --standard
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("ricochet-bench: the benchmark is not built yet (see issue 5)");
    std::process::exit(2);
}
