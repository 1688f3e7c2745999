//! The `tunnel` binary: parses flags and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tunnel::cli::main(tunnel::cli::Cli::parse())
}
