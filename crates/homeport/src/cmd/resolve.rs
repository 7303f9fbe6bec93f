//! `homeport resolve`.

use std::io::Write as _;
use std::process::ExitCode;

use homeport_core::ServerName;
use homeport_resolve::Resolver;

use super::net;
use crate::cli::NetOpts;
use crate::error::{CliError, CliResult};

pub fn run(name: &str, json: bool, opts: &NetOpts) -> CliResult<ExitCode> {
    let server = ServerName::parse(name).map_err(|e| {
        CliError::invalid(
            format!("invalid server name {name:?}: {e}"),
            "NAME".to_owned(),
        )
    })?;
    let cfg = net::resolver_config(opts)?;
    let rt = net::runtime()?;
    let resolution = rt.block_on(async {
        let resolver = Resolver::new(cfg).map_err(|e| CliError::invalid(e, None))?;
        Ok::<_, CliError>(resolver.resolve(&server).await)
    })?;
    let mut out = std::io::stdout().lock();
    let text = if json {
        let mut s = serde_json::to_string_pretty(&resolution.to_json()).unwrap_or_default();
        s.push('\n');
        s
    } else {
        resolution.render_human()
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::failed(format!("cannot write output: {e}"), None))?;
    Ok(if resolution.outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
