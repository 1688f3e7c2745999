//! The `hub` binary: parses flags and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = hub::cli::Cli::parse();
    hub::cli::main(cli)
}
