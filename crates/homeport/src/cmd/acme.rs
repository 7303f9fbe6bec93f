//! `homeport acme status` and `homeport acme renew`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use homeport_server::acme::{self, AcmeSettings, AcmeTuning};
use homeport_server::config::{self, Config};

use crate::error::{CliError, CliResult};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-12-04 16:01:49 UTC (in 3d 4h)` / `(5m 2s ago)`.
fn when(t: u64) -> String {
    let at = homeport_core::time::format_utc_ms(t.saturating_mul(1000));
    let n = now();
    if t.abs_diff(n) < 2 {
        format!("{at} (just now)")
    } else if t > n {
        format!(
            "{at} (in {})",
            homeport_core::time::format_span_ms((t - n) * 1000)
        )
    } else {
        format!(
            "{at} ({} ago)",
            homeport_core::time::format_span_ms((n - t) * 1000)
        )
    }
}

fn load(path: &Path) -> CliResult<(Config, AcmeSettings)> {
    let cfg = config::load(path).map_err(|e| CliError::invalid(e, None))?;
    if !cfg.acme.enabled {
        return Err(CliError::invalid(
            "acme.enabled is not true in this config: there is no ACME certificate to show or renew",
            path.display().to_string(),
        ));
    }
    let settings = AcmeSettings::from_config(&cfg)
        .map_err(|e| CliError::invalid(e, path.display().to_string()))?;
    Ok((cfg, settings))
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}"), None))
}

pub fn status(path: &Path, json: bool) -> CliResult<ExitCode> {
    let (cfg, _) = load(path)?;
    let mut s = acme::status(&cfg).map_err(|e| CliError::invalid(e, path.display().to_string()))?;
    // Instances sharing a PostgreSQL store keep the state there.
    let rt = runtime()?;
    let shared = rt
        .block_on(acme::shared_store(&cfg))
        .map_err(|e| CliError::failed(e, "database".to_owned()))?;
    if let Some(st) = &shared {
        s.state = rt.block_on(acme::read_state_shared(st.as_ref()));
        s.serve_running = rt.block_on(acme::shared_serving(st.as_ref()));
    }
    let healthy = s.certificate.is_some()
        && s.state
            .last_error
            .as_ref()
            .is_none_or(|e| e.failure.is_none());
    let code = if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if json {
        println!("{}", status_json(&s, shared.is_some(), healthy));
        return Ok(code);
    }
    print_status(&s);
    Ok(code)
}

/// The `acme status --json` object (documented in the command's help and
/// docs/acme.md: keep it stable).
fn status_json(s: &acme::AcmeStatus, in_database: bool, ok: bool) -> serde_json::Value {
    let st = &s.state;
    let c = s.certificate.as_ref();
    serde_json::json!({
        "names": s.names,
        "directory": s.directory,
        "certificate": {
            "path": s.cert_path,
            "names": c.map(|c| &c.names),
            "issuer": c.map(|c| &c.issuer),
            "not_before": c.map(|c| c.not_before),
            "not_after": c.map(|c| c.not_after),
            "error": s.certificate_error,
        },
        "next_renewal": s.next_renewal,
        "due": c.is_none() || s.next_renewal <= now(),
        "last_attempt": st.last_attempt,
        "last_success": st.last_success,
        "last_error": st.last_error.as_ref().and_then(|e| e.failure.as_ref().map(|f| serde_json::json!({
            "at": e.at,
            "kind": f.kind.label(),
            "message": f.message,
            "problem": f.problem,
        }))),
        "consecutive_failures": st.consecutive_failures,
        "next_retry": st.next_retry,
        "account": {
            "url": st.account_url,
            "key_file": s.account_key_file,
            "key_exists": s.account_key_exists,
        },
        "serve_running": s.serve_running,
        "state_in": if in_database { "database" } else { "file" },
        "ok": ok,
    })
}

fn print_status(s: &acme::AcmeStatus) {
    println!("names:         {}", s.names.join(", "));
    println!("directory:     {}", s.directory);
    println!("certificate:   {}", s.cert_path.display());
    match (&s.certificate, &s.certificate_error) {
        (Some(c), _) => {
            println!("  names:       {}", c.names.join(", "));
            println!("  issuer:      {}", c.issuer);
            println!("  valid from:  {}", when(c.not_before));
            println!("  expires:     {}", when(c.not_after));
            if s.next_renewal <= now() {
                println!("next renewal:  now (due)");
            } else {
                println!("next renewal:  {}", when(s.next_renewal));
            }
        }
        (None, e) => {
            println!(
                "  none usable: {}",
                e.as_deref().unwrap_or("no certificate")
            );
            println!("next renewal:  now (no certificate)");
        }
    }
    let st = &s.state;
    println!(
        "last attempt:  {}",
        st.last_attempt.map_or_else(|| "never".into(), when)
    );
    println!(
        "last success:  {}",
        st.last_success.map_or_else(|| "never".into(), when)
    );
    match st
        .last_error
        .as_ref()
        .and_then(|e| e.failure.as_ref().map(|f| (e.at, f)))
    {
        None => println!("last error:    none"),
        Some((at, f)) => {
            println!("last error:    {} [{}]", when(at), f.kind.label());
            println!("  {}", f.message);
            if let Some(p) = &f.problem {
                println!("  problem:     {p}");
            }
            if st.consecutive_failures > 1 {
                println!("  failures in a row: {}", st.consecutive_failures);
            }
            if let Some(r) = st.next_retry {
                println!("next retry:    {}", when(r));
            }
        }
    }
    println!(
        "account:       {} (key {}{})",
        st.account_url.as_deref().unwrap_or("not registered yet"),
        s.account_key_file.display(),
        if s.account_key_exists {
            ""
        } else {
            ", created at the first order"
        }
    );
    println!(
        "server:        {}",
        if s.serve_running {
            "homeport serve is running with this config"
        } else {
            "no homeport serve running with this config"
        }
    );
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn renew_shared(
    store: &dyn homeport_server::store::Store,
    force: bool,
    timeout: Duration,
) -> CliResult<Option<ExitCode>> {
    if !acme::shared_serving(store).await {
        return Ok(None);
    }
    let id = acme::request_renewal_shared(store, force)
        .await
        .map_err(|e| CliError::failed(e, "database".to_owned()))?;
    eprintln!(
        "instances sharing the database are running: asked them to renew; waiting for the result"
    );
    let deadline = Instant::now() + timeout;
    loop {
        let st = acme::read_state_shared(store).await;
        if let Some(h) = st.handled_request.filter(|h| h.id == id) {
            return handled(h).map(Some);
        }
        if Instant::now() >= deadline {
            acme::withdraw_request_shared(store).await;
            return Err(CliError::failed(
                format!(
                    "no instance reported a result within {}; see their logs and `homeport acme status`",
                    homeport_core::duration::format(timeout)
                ),
                "--timeout".to_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A running server's answer to our renew request, as the command's outcome.
fn handled(h: acme::HandledRequest) -> CliResult<ExitCode> {
    if h.ok {
        println!("{}", h.message);
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::failed(
            format!("renewal failed: {}", h.message),
            None,
        ))
    }
}

pub fn renew(path: &Path, force: bool, timeout: Duration) -> CliResult<ExitCode> {
    let (cfg, settings) = load(path)?;
    let rt = runtime()?;
    {
        let handed = rt.block_on(async {
            match acme::shared_store(&cfg)
                .await
                .map_err(|e| CliError::failed(e, "database".to_owned()))?
            {
                Some(st) => renew_shared(st.as_ref(), force, timeout).await,
                None => Ok(None),
            }
        })?;
        if let Some(code) = handed {
            return Ok(code);
        }
    }
    if acme::serve_running(&settings) {
        // The running server holds the challenge ports: hand it the request.
        let id = acme::request_renewal(&settings, force).map_err(|e| {
            CliError::failed(
                format!("cannot write the renew request: {e}"),
                settings.request_path().display().to_string(),
            )
        })?;
        eprintln!("homeport serve is running: asked it to renew; waiting for the result");
        let deadline = Instant::now() + timeout;
        loop {
            let st = acme::read_state(&settings);
            if let Some(h) = st.handled_request.filter(|h| h.id == id) {
                return handled(h);
            }
            if Instant::now() >= deadline {
                let _ = std::fs::remove_file(settings.request_path());
                return Err(CliError::failed(
                    format!(
                        "the running server did not report a result within {}; see its log and `homeport acme status`",
                        homeport_core::duration::format(timeout)
                    ),
                    "--timeout".to_owned(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    init_logging(&cfg.log.level);
    let tuning = AcmeTuning {
        order_timeout: timeout,
        ..AcmeTuning::default()
    };
    let r = rt.block_on(async {
        tokio::time::timeout(
            timeout + Duration::from_secs(5),
            acme::renew_standalone(&cfg, force, tuning),
        )
        .await
    });
    match r {
        Ok(Ok(outcome)) => {
            println!("{}", acme::describe_renewal(&outcome));
            Ok(match outcome {
                acme::Renewal::Busy => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            })
        }
        Ok(Err(e)) => {
            let problem = e
                .problem
                .as_ref()
                .map(|p| format!(" (ACME problem: {p})"))
                .unwrap_or_default();
            Err(CliError::failed(
                format!(
                    "renewal failed [{}]: {}{problem}",
                    e.kind.label(),
                    e.message
                ),
                None,
            ))
        }
        Err(_) => Err(CliError::failed(
            format!(
                "the order did not finish within {}",
                homeport_core::duration::format(timeout)
            ),
            "--timeout".to_owned(),
        )),
    }
}
