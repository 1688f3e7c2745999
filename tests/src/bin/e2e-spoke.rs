//! The `spoke` binary, built inside the test package so the end-to-end tests can run (and
//! SIGKILL) real spoke processes (`CARGO_BIN_EXE_e2e-spoke`). Same entry point as
//! `spoke/src/main.rs`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    spoke::cli::main(spoke::cli::Cli::parse())
}
