//! `homeport keygen`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use homeport_core::signing::{self, SigningKey};

use crate::error::{CliError, CliResult};

pub fn run(version: Option<String>, output: Option<PathBuf>) -> CliResult<ExitCode> {
    let version = version.unwrap_or_else(signing::random_key_version);
    let key =
        SigningKey::generate(&version).map_err(|e| CliError::invalid(e, "--version".to_owned()))?;
    let text = signing::format_key_file(std::slice::from_ref(&key));
    match output {
        None => {
            print!("{text}");
        }
        Some(path) => {
            let at = path.display().to_string();
            write_new_private(&path, text.as_bytes()).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    CliError::invalid("refusing to overwrite an existing file", at.clone())
                } else {
                    CliError::invalid(format!("cannot write key file: {e}"), at.clone())
                }
            })?;
            eprintln!(
                "wrote {} (public key {}) to {at}",
                key.id(),
                key.public_key_base64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Create `path` (failing if it exists) with mode 0600 and write `bytes`.
pub fn write_new_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
