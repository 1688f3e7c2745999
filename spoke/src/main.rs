//! The `spoke` binary: parses flags and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    spoke::cli::main(spoke::cli::Cli::parse())
}
