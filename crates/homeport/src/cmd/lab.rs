//! `homeport lab`.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use homeport_lab::Lab;
use serde_json::json;

use crate::error::{CliError, CliResult};

pub fn run(json_out: bool, serve: bool, timeout: Duration) -> CliResult<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}"), None))?;
    rt.block_on(async {
        let lab = Lab::start().await.map_err(|e| CliError::failed(e, None))?;
        if serve {
            let mut out = format!("dns={} ca={}\n", lab.dns.addr(), lab.ca_file.display());
            out.push_str(&format!("well_known_port={} default_port={}\n", lab.well_known_port(), lab.default_port()));
            for s in &lab.scenarios {
                out.push_str(&format!("{}\n", s.server_name));
            }
            print!("{out}");
            let _ = std::io::stdout().flush();
            wait_for_term().await;
            lab.stop();
            return Ok(ExitCode::SUCCESS);
        }
        let results = lab.run(timeout).await.map_err(|e| CliError::failed(e, None))?;
        lab.stop();
        let all = results.iter().all(|(o, _)| o.matches);
        let text = if json_out {
            let v: Vec<_> = results
                .iter()
                .map(|(o, _)| {
                    json!({
                        "scenario": o.scenario.id,
                        "server_name": o.scenario.server_name,
                        "expected": {"ok": o.scenario.expect_ok, "step": o.scenario.expect_step, "findings": o.scenario.expect_findings},
                        "found": {"ok": o.found_ok, "step": o.found_step, "findings": o.found_findings},
                        "ok": o.matches,
                    })
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
            s.push('\n');
            s
        } else {
            table(&results)
        };
        print!("{text}");
        let _ = std::io::stdout().flush();
        Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

fn table(results: &[(homeport_lab::Outcome, homeport_federation::check::Report)]) -> String {
    let mut s = String::from(
        "homeport lab: every discovery step and every common mistake, served on 127.0.0.x and checked\n\n",
    );
    for (o, _) in results {
        let verdict = if o.found_ok { "OK" } else { "BROKEN" };
        let mark = if o.matches { "matches" } else { "MISMATCH" };
        s.push_str(&format!(
            "{:<34} step {:<4} {:<7} {}\n",
            o.scenario.id, o.found_step, verdict, mark
        ));
        s.push_str(&format!(
            "    {}: {}\n",
            o.scenario.server_name, o.scenario.what
        ));
        let shown: Vec<&String> = o
            .found_findings
            .iter()
            .filter(|f| !f.starts_with("wellknown_not_found"))
            .collect();
        if !shown.is_empty() {
            s.push_str(&format!(
                "    findings: {}\n",
                shown
                    .iter()
                    .map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(f) = &o.first_fix {
            s.push_str(&format!("    first fix: {f}\n"));
        }
        if let Some(m) = &o.mismatch {
            s.push_str(&format!("    MISMATCH: {m}\n"));
        }
    }
    let passed = results.iter().filter(|(o, _)| o.matches).count();
    s.push_str(&format!(
        "\n{} passed, {} failed\n",
        passed,
        results.len() - passed
    ));
    s
}

async fn wait_for_term() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
