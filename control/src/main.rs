//! `ricochet-control`: the TWAMP-Control server.
use clap::Parser;

/// TWAMP-Control server (RFC 5357, RFC 4656 security modes, TWAMP extensions).
///
/// Examples:
///   ricochet-control --config /etc/ricochet/control.toml
///   ricochet-control --check-config --config /etc/ricochet/control.toml
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("ricochet-control: the control server is not built yet (see issue 3)");
    std::process::exit(2);
}
