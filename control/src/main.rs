//! `ricochet-control`: the TWAMP-Control server.
use std::process::ExitCode;

use clap::Parser;
use ricochet_control::cli::Cli;

fn main() -> ExitCode {
    ricochet_control::app::main(Cli::parse())
}
