//! `homeport store migrate|check`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use homeport_federation::keys::now_ms;
use homeport_server::config;
use homeport_server::store::{self, Snapshot, Store};

use crate::error::{CliError, CliResult};

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}"), None))
}

/// `sqlite:PATH` or a config file, opened (a bad config is exit 2, a store
/// that fails is exit 1).
async fn open(spec: &str, flag: &str) -> CliResult<Arc<dyn Store>> {
    let Some(path) = spec.strip_prefix("sqlite:") else {
        let cfg = config::load(Path::new(spec)).map_err(|e| CliError::invalid(e, None))?;
        return store::open(&cfg.database)
            .await
            .map_err(|e| CliError::failed(e, spec.to_owned()));
    };
    // An existing file only: a typo must not create an empty store.
    if !Path::new(path).is_file() {
        return Err(CliError::invalid(
            format!("{flag}: no SQLite file at {path}"),
            None,
        ));
    }
    let s = store::SqliteStore::open(Path::new(path))
        .map_err(|e| CliError::failed(e, spec.to_owned()))?;
    Ok(Arc::new(s))
}

fn summary(s: &Snapshot) -> String {
    let mut by_ns: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &s.kv {
        *by_ns.entry(e.namespace.as_str()).or_default() += 1;
    }
    let ns: Vec<String> = by_ns.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "{} key responses, {} cached values{}",
        s.server_keys.len(),
        s.kv.len(),
        if ns.is_empty() {
            String::new()
        } else {
            format!(" ({})", ns.join(", "))
        }
    )
}

pub fn migrate(from: &str, to: &str, dry_run: bool) -> CliResult<ExitCode> {
    runtime()?.block_on(async {
        let src = open(from, "--from").await?;
        let dst = open(to, "--to").await?;
        if src.location() == dst.location() {
            return Err(CliError::invalid(
                format!("--from and --to are the same store ({})", src.location()),
                None,
            ));
        }
        let snap = src
            .export(now_ms())
            .await
            .map_err(|e| CliError::failed(e, src.location()))?;
        println!(
            "from {} {} (schema {}): {}",
            src.backend(),
            src.location(),
            src.version().await.unwrap_or(0),
            summary(&snap)
        );
        if dry_run {
            println!(
                "dry run: nothing written to {} {}",
                dst.backend(),
                dst.location()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let c = dst
            .import(&snap)
            .await
            .map_err(|e| CliError::failed(format!("nothing was written: {e}"), dst.location()))?;
        let kept = snap.server_keys.len() - c.server_keys.min(snap.server_keys.len());
        println!(
            "to {} {}: wrote {} key responses{}, {} cached values",
            dst.backend(),
            dst.location(),
            c.server_keys,
            if kept > 0 {
                format!(" ({kept} kept: the target's were valid for longer)")
            } else {
                String::new()
            },
            c.kv
        );
        Ok(ExitCode::SUCCESS)
    })
}

pub fn check(path: &Path) -> CliResult<ExitCode> {
    let cfg = config::load(path).map_err(|e| CliError::invalid(e, None))?;
    runtime()?.block_on(async {
        let s = store::open(&cfg.database)
            .await
            .map_err(|e| CliError::failed(e, path.display().to_string()))?;
        s.integrity_check()
            .await
            .map_err(|e| CliError::failed(e, s.location()))?;
        let snap = s
            .export(now_ms())
            .await
            .map_err(|e| CliError::failed(e, s.location()))?;
        println!(
            "{} {} OK (schema {}, {}shared by instances): {}",
            s.backend(),
            s.location(),
            s.version().await.unwrap_or(0),
            if s.shared() { "" } else { "not " },
            summary(&snap)
        );
        Ok(ExitCode::SUCCESS)
    })
}
