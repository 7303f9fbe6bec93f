//! `homeport resolve`.

use std::io::Write as _;
use std::process::ExitCode;

use homeport_core::ServerName;
use homeport_resolve::{Resolution, Resolver};

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
        human(&resolution)
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

/// The human rendering: the trace, then the result.
pub fn human(r: &Resolution) -> String {
    let mut s = format!("Resolving {}\n", r.server_name);
    for ev in &r.trace {
        if ev.phase == "decide" && std::ptr::eq(ev, r.trace.last().unwrap_or(ev)) {
            continue;
        }
        s.push_str(&format!("  {:<10} {}\n", ev.phase, ev.message));
    }
    match &r.outcome {
        Ok(d) => {
            s.push_str(&format!(
                "\nResolved by step {}: {}\n",
                r.step,
                r.step.rule()
            ));
            for (i, t) in d.targets.iter().enumerate() {
                let addrs: Vec<String> = t.socket_addrs().map(|a| a.to_string()).collect();
                s.push_str(&format!(
                    "  target {}    {} port {} -> {}\n",
                    i + 1,
                    t.host,
                    t.port,
                    addrs.join(", ")
                ));
            }
            s.push_str(&format!("  Host header {}\n", d.host_header));
            s.push_str(&format!(
                "  TLS name    {} (the certificate must be valid for it)\n",
                d.tls_name_text()
            ));
            s.push_str(&format!(
                "  SNI         {}\n",
                d.sni().unwrap_or("none (IP literal)")
            ));
        }
        Err(e) => {
            s.push_str(&format!("\nNot resolvable: step {} failed: {e}\n", r.step));
        }
    }
    s
}
