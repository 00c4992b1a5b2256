//! `ricochet-reflector`: the data plane.
use clap::Parser;

/// Ricochet data plane: XDP fast path, AF_XDP pollers, socket reflector.
///
/// Examples:
///   ricochet-reflector --path xdp --iface eth0
///   ricochet-reflector --path socket
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("ricochet-reflector: the data plane is not built yet (see issues 3 and 4)");
    std::process::exit(2);
}
