//! How the CLI reports failures: `error: <what> (at <where>)` on stderr and
//! an exit status (2 for bad usage or invalid input, 1 for a negative
//! result).

use std::fmt;

/// A failure the CLI reports and maps to an exit status.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    what: String,
    at: Option<String>,
}

impl CliError {
    /// Invalid input or usage (exit 2).
    pub fn invalid(what: impl fmt::Display, at: impl Into<Option<String>>) -> Self {
        CliError {
            code: 2,
            what: what.to_string(),
            at: at.into(),
        }
    }

    /// A negative result (exit 1): a signature that does not verify, a name
    /// that does not resolve.
    pub fn failed(what: impl fmt::Display, at: impl Into<Option<String>>) -> Self {
        CliError {
            code: 1,
            what: what.to_string(),
            at: at.into(),
        }
    }

    /// The exit status.
    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.what)?;
        if let Some(at) = &self.at {
            write!(f, " (at {at})")?;
        }
        Ok(())
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError {
            code: 1,
            what: format!("{e:#}"),
            at: None,
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;
