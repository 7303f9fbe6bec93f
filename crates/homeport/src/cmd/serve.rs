//! `homeport serve` and `homeport init`.

use std::path::Path;
use std::process::ExitCode;

use homeport_server::config::{self, LogFormat};
use homeport_server::serve;

use super::net;
use crate::error::{CliError, CliResult};

pub fn init(server_name: &str, dir: &Path) -> CliResult<ExitCode> {
    let name = net::server_name(server_name, "--server-name")?;
    match homeport_server::init::init(dir, &name) {
        Ok(r) => {
            println!(
                "wrote {} and {} ({})",
                r.config.display(),
                r.signing_key.display(),
                r.key_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ homeport_server::init::InitError::Exists(_)) => {
            Err(CliError::invalid(e, dir.display().to_string()))
        }
        Err(e) => Err(CliError::failed(e, dir.display().to_string())),
    }
}

pub fn run(path: &Path, check_only: bool) -> CliResult<ExitCode> {
    let cfg = config::load(path).map_err(|e| CliError::invalid(e, None))?;
    if check_only {
        // The signing key and certificate must be usable too.
        cfg.signing_keys().map_err(|e| CliError::invalid(e, None))?;
        if let (Some(c), Some(k)) = (&cfg.tls_certificate_path, &cfg.tls_private_key_path)
            && cfg.listeners.iter().any(|l| l.tls)
            && !cfg.acme.enabled
        {
            homeport_server::certs::ReloadableCert::load(c, k)
                .map_err(|e| CliError::invalid(e, None))?;
        }
        // The store must be reachable (and homeport's own), without
        // changing it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}"), None))?;
        let line = rt
            .block_on(homeport_server::store::probe(&cfg.database))
            .map_err(|e| CliError::failed(e, "database".to_owned()))?;
        for w in cfg.warnings() {
            eprintln!("warning: {w}");
        }
        // stdout stays exactly `config OK` (scripts match it).
        eprintln!("{line}");
        println!("config OK");
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(&cfg.log.format, &cfg.log.level);
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}"), None))?;
    rt.block_on(async {
        let running = serve::start(&cfg)
            .await
            .map_err(|e| CliError::failed(e, path.display().to_string()))?;
        for a in &running.addrs {
            tracing::info!(%a, "listening");
        }
        signals(&running).await;
        tracing::info!("shutting down: draining in-flight requests");
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn init_logging(format: &LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

#[cfg(unix)]
async fn signals(running: &serve::Running) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let r = running.reload();
                tracing::info!(certificate = ?r.certificate, signing_keys = ?r.signing_keys, "SIGHUP: reloaded");
            }
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

#[cfg(not(unix))]
async fn signals(_running: &serve::Running) {
    let _ = tokio::signal::ctrl_c().await;
}
