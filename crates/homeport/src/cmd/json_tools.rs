//! `homeport canonical-json`, `sign-json` and `verify-json`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use homeport_core::ServerName;
use homeport_core::canonical_json::{self, Mode};
use homeport_core::signing::{self, KeyId};
use serde_json::Value;

use super::input;
use crate::error::{CliError, CliResult};

fn parse_input(path: Option<PathBuf>, mode: Mode) -> CliResult<Value> {
    let inp = input::read(path.as_deref())?;
    canonical_json::parse(&inp.text, mode)
        .map_err(|e| CliError::invalid(&e.message, format!("{}:{}:{}", inp.name, e.line, e.column)))
}

fn print_canonical(v: &Value, mode: Mode) -> CliResult<ExitCode> {
    let mut out =
        canonical_json::to_canonical_vec(v, mode).map_err(|e| CliError::invalid(e, None))?;
    out.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::failed(format!("cannot write output: {e}"), None))?;
    Ok(ExitCode::SUCCESS)
}

pub fn canonical(strict: bool, path: Option<PathBuf>) -> CliResult<ExitCode> {
    let mode = if strict { Mode::Strict } else { Mode::Lenient };
    let v = parse_input(path, mode)?;
    print_canonical(&v, mode)
}

fn server_name_arg(s: &str) -> CliResult<ServerName> {
    ServerName::parse(s).map_err(|e| {
        CliError::invalid(
            format!("invalid server name {s:?}: {e}"),
            "--server-name".to_owned(),
        )
    })
}

pub fn sign(
    key_file: &Path,
    server_name: &str,
    key_id: Option<&str>,
    path: Option<PathBuf>,
) -> CliResult<ExitCode> {
    let name = server_name_arg(server_name)?;
    let kf = input::read_file(key_file)?;
    let keys = signing::parse_key_file(&kf.text).map_err(|e| match e {
        signing::SigningError::KeyFile { line, message } => {
            CliError::invalid(message, format!("{}:{line}", kf.name))
        }
        other => CliError::invalid(other, kf.name.clone()),
    })?;
    let key = match key_id {
        None => keys.first(),
        Some(id) => {
            let id = KeyId::parse(id).map_err(|e| CliError::invalid(e, "--key-id".to_owned()))?;
            keys.iter().find(|k| k.id() == &id)
        }
    };
    let Some(key) = key else {
        let have: Vec<String> = keys.iter().map(|k| k.id().to_string()).collect();
        return Err(CliError::invalid(
            format!(
                "the key file has no key {} (it has {})",
                key_id.unwrap_or("?"),
                have.join(", ")
            ),
            "--key-id".to_owned(),
        ));
    };
    let mut v = parse_input(path, Mode::Lenient)?;
    signing::sign_json(&mut v, name.as_str(), key).map_err(|e| CliError::invalid(e, None))?;
    print_canonical(&v, Mode::Lenient)
}

pub fn verify(
    server_name: &str,
    key_id: &str,
    public_key: &str,
    path: Option<PathBuf>,
) -> CliResult<ExitCode> {
    let name = server_name_arg(server_name)?;
    let id = KeyId::parse(key_id).map_err(|e| CliError::invalid(e, "--key-id".to_owned()))?;
    let pk = signing::verifying_key_from_base64(public_key)
        .map_err(|e| CliError::invalid(e, "--public-key".to_owned()))?;
    let v = parse_input(path, Mode::Lenient)?;
    match signing::verify_json(&v, name.as_str(), &id, &pk) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(signing::VerifyError::NotAnObject(kind)) => Err(CliError::invalid(
            format!("the input is {kind}, not a signed JSON object"),
            None,
        )),
        Err(e @ signing::VerifyError::Canonical(_)) => Err(CliError::invalid(e, None)),
        Err(e) => Err(CliError::failed(e, None)),
    }
}
