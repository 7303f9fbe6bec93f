//! Reading local input files (or stdin) with a size cap and a name for
//! error positions.

use std::io::Read as _;
use std::path::Path;

use crate::error::{CliError, CliResult};

/// Local inputs larger than this are refused (a JSON document to sign or a
/// key file is never near it).
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Text read from a file or stdin, with the name used in error positions.
pub struct Input {
    pub name: String,
    pub text: String,
}

/// Read `path` (`None` or `-` is stdin).
pub fn read(path: Option<&Path>) -> CliResult<Input> {
    let (name, bytes) = match path {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => {
            let name = p.display().to_string();
            let f = std::fs::File::open(p)
                .map_err(|e| CliError::invalid(format!("cannot read input: {e}"), name.clone()))?;
            let mut buf = Vec::new();
            f.take(MAX_INPUT_BYTES + 1)
                .read_to_end(&mut buf)
                .map_err(|e| CliError::invalid(format!("cannot read input: {e}"), name.clone()))?;
            (name, buf)
        }
    };
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::invalid(
            format!("input is larger than {MAX_INPUT_BYTES} bytes"),
            name,
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        CliError::invalid(
            format!(
                "input is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ),
            name.clone(),
        )
    })?;
    Ok(Input { name, text })
}

fn read_stdin() -> CliResult<(String, Vec<u8>)> {
    let name = "<stdin>".to_owned();
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::invalid(format!("cannot read stdin: {e}"), name.clone()))?;
    Ok((name, buf))
}

/// Read a small local file (key file, PEM) fully, capped.
pub fn read_file(path: &Path) -> CliResult<Input> {
    read(Some(path)).and_then(|i| {
        if path.as_os_str() == "-" {
            Err(CliError::invalid(
                "a file path is required here, not -",
                i.name,
            ))
        } else {
            Ok(i)
        }
    })
}
