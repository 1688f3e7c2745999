//! The `hub` binary, built inside the test package so the end-to-end tests can run the real
//! command line as a child process (`CARGO_BIN_EXE_e2e-hub`). Same entry point as `hub/src/main.rs`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hub::cli::main(hub::cli::Cli::parse())
}
