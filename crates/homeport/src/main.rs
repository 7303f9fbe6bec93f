//! The `homeport` command: a thin CLI over the homeport crates.

mod cli;
mod cmd;
mod error;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // One crypto backend: ring. Installed before anything builds a TLS
    // config (every config homeport builds names the provider explicitly;
    // this covers libraries that use the process default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    match cmd::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
