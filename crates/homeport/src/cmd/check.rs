//! `homeport check`: one report, three renderings.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use homeport_core::signing;
use homeport_federation::Signer;
use homeport_federation::check::{self, CheckOptions};

use super::{input, net};
use crate::cli::{Format, NetOpts};
use crate::error::{CliError, CliResult};

pub struct Args<'a> {
    pub name: &'a str,
    pub format: Format,
    pub signing_key: Option<&'a Path>,
    pub origin: Option<&'a str>,
    pub notary: Option<&'a str>,
    pub private: bool,
    pub net: &'a NetOpts,
}

/// The check's own time limit: a little under the command's `--timeout`,
/// so that the report of a check cut short is assembled and printed within
/// it.
fn time_limit(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    timeout.saturating_sub(margin)
}

pub fn run(a: &Args<'_>) -> CliResult<ExitCode> {
    let name = net::server_name(a.name, "NAME")?;
    let notary = a
        .notary
        .map(|n| net::server_name(n, "--notary"))
        .transpose()?;
    let signer = match (a.signing_key, a.origin) {
        (Some(k), Some(o)) => {
            let origin = net::server_name(o, "--origin")?;
            let kf = input::read_file(k)?;
            let keys = signing::parse_key_file(&kf.text).map_err(|e| match e {
                signing::SigningError::KeyFile { line, message } => {
                    CliError::invalid(message, format!("{}:{line}", kf.name))
                }
                other => CliError::invalid(other, kf.name.clone()),
            })?;
            Some(Signer { origin, keys })
        }
        _ => None,
    };
    let client = net::federation_client(a.net, None)?;
    let rt = net::runtime()?;
    let tty = std::io::stderr().is_terminal();
    if tty {
        eprint!("checking {name} ...\r");
    }
    let opts = CheckOptions {
        signer,
        notary,
        private: a.private,
        time_limit: Some(time_limit(a.net.timeout)),
    };
    // The check stops itself at its time limit with what it has; the outer
    // bound only guards against a step that ignores it.
    let report = rt.block_on(async {
        tokio::time::timeout(a.net.timeout, check::check(&client, &name, &opts)).await
    });
    if tty {
        eprint!("                                                  \r");
    }
    let report = report.map_err(|_| {
        CliError::failed(
            format!("the check did not finish within {:?}", a.net.timeout),
            "--timeout".to_owned(),
        )
    })?;
    let text = match a.format {
        Format::Json => pretty(&report.to_json()),
        Format::FederationTester => pretty(&report.to_federation_tester()),
        Format::Human => check::render_human(&report, std::io::stdout().is_terminal()),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::failed(format!("cannot write output: {e}"), None))?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_stops_a_little_before_the_command() {
        assert_eq!(time_limit(Duration::from_secs(30)), Duration::from_secs(29));
        assert_eq!(
            time_limit(Duration::from_secs(5)),
            Duration::from_millis(4500)
        );
        assert_eq!(
            time_limit(Duration::from_millis(500)),
            Duration::from_millis(450)
        );
        assert_eq!(time_limit(Duration::from_millis(10)), Duration::ZERO);
    }
}
