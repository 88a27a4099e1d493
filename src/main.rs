//! The `callbox` binary: parses the command line and hands over to `callbox::cli`.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = callbox::cli::Cli::parse();
    match callbox::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("callbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}
