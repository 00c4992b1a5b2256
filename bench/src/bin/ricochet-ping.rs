//! `ricochet-ping`: TWAMP/STAMP control-client and session-sender.
use clap::Parser;

/// TWAMP control-client and session-sender in every mode (twping's job).
///
/// Examples:
///   ricochet-ping 198.18.0.2
///   ricochet-ping --mode encrypted --key-id alice --key-file keys.pfs 198.18.0.2:862
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("ricochet-ping: the client is not built yet (see issue 3)");
    std::process::exit(2);
}
