//! The `tunnel` binary, built inside the test package so the end-to-end tests can run the real
//! gateway as a child process (`CARGO_BIN_EXE_e2e-tunnel`). Same entry point as
//! `tunnel/src/main.rs`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tunnel::cli::main(tunnel::cli::Cli::parse())
}
