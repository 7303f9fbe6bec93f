//! One function per command: parse arguments into library types, call the
//! library, print, map the outcome to an exit status.

mod acme;
mod check;
mod input;
mod json_tools;
mod keygen;
mod keys;
mod lab;
mod net;
mod request;
mod resolve;
mod serve;
mod store;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::CliResult;

pub fn run(cli: Cli) -> CliResult<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            check_config,
        } => serve::run(&config, check_config),
        Command::Acme { action } => match action {
            crate::cli::AcmeAction::Status {
                config,
                json,
                format,
            } => acme::status(&config, json || format == crate::cli::Format::Json),
            crate::cli::AcmeAction::Renew {
                config,
                force,
                timeout,
            } => acme::renew(&config, force, timeout),
        },
        Command::Store { action } => match action {
            crate::cli::StoreAction::Migrate { from, to, dry_run } => {
                store::migrate(&from, &to, dry_run)
            }
            crate::cli::StoreAction::Check { config } => store::check(&config),
        },
        Command::Init { server_name, dir } => serve::init(&server_name, &dir),
        Command::Lab {
            json,
            serve,
            timeout,
        } => lab::run(json, serve, timeout),
        Command::Check {
            name,
            json,
            format,
            signing_key,
            origin,
            notary,
            private,
            net,
        } => check::run(&check::Args {
            name: &name,
            format: if json {
                crate::cli::Format::Json
            } else {
                format
            },
            signing_key: signing_key.as_deref(),
            origin: origin.as_deref(),
            notary: notary.as_deref(),
            private,
            net: &net,
        }),
        Command::Keys {
            name,
            notary,
            json,
            net,
        } => keys::run(&name, notary.as_deref(), json, &net),
        Command::Request {
            name,
            path,
            method,
            data,
            signing_key,
            origin,
            json,
            net,
        } => request::run(&request::Args {
            name: &name,
            path: &path,
            method: &method,
            data: data.as_deref(),
            signing_key: &signing_key,
            origin: &origin,
            json,
            net: &net,
        }),
        Command::Resolve {
            name,
            json,
            format,
            net,
        } => resolve::run(&name, json || format != crate::cli::Format::Human, &net),
        Command::Keygen { version, output } => keygen::run(version, output),
        Command::CanonicalJson { strict, input } => json_tools::canonical(strict, input),
        Command::SignJson {
            key,
            server_name,
            key_id,
            input,
        } => json_tools::sign(&key, &server_name, key_id.as_deref(), input),
        Command::VerifyJson {
            server_name,
            key_id,
            public_key,
            input,
        } => json_tools::verify(&server_name, &key_id, &public_key, input),
    }
}
