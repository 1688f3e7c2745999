//! The `linkemu` binary: the userspace WAN link emulator as a process (the terraform lab runs
//! it). See `e2e::linkemu_cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match e2e::linkemu_cli::main(e2e::linkemu_cli::Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linkemu: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
