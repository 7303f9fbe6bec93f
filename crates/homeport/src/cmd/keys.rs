//! `homeport keys`.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use homeport_core::ServerName;
use homeport_core::time::format_utc_ms;
use homeport_federation::keys::{FetchedKeys, KeyError, now_ms};
use homeport_federation::{KeyFetcher, MemoryKeyStore};
use serde_json::{Value, json};

use super::net;
use crate::cli::NetOpts;
use crate::error::{CliError, CliResult};

/// What the command found, rendered as text or JSON.
struct Outcome {
    server: ServerName,
    notary: Option<ServerName>,
    result: Result<Arc<FetchedKeys>, KeyError>,
    notary_keys: Option<Result<Arc<FetchedKeys>, KeyError>>,
}

pub fn run(
    name: &str,
    notary: Option<&str>,
    json_out: bool,
    opts: &NetOpts,
) -> CliResult<ExitCode> {
    let server = net::server_name(name, "NAME")?;
    let notary = notary
        .map(|n| net::server_name(n, "--notary"))
        .transpose()?;
    let client = net::federation_client(opts, None)?;
    let rt = net::runtime()?;
    let outcome = rt.block_on(async {
        let fetcher = KeyFetcher::new(client, Arc::new(MemoryKeyStore::default()));
        match &notary {
            None => Outcome {
                server: server.clone(),
                notary: None,
                result: fetcher.fetch_direct(&server).await,
                notary_keys: None,
            },
            Some(n) => {
                let nk = fetcher.fetch_direct(n).await;
                let result = match &nk {
                    Err(e) => Err(e.clone()),
                    Ok(nk) => via_notary(&fetcher, n, nk, &server).await,
                };
                Outcome {
                    server: server.clone(),
                    notary: Some(n.clone()),
                    result,
                    notary_keys: Some(nk),
                }
            }
        }
    });
    let ok = outcome.result.as_ref().is_ok_and(|f| !f.keys.is_empty());
    let text = if json_out {
        let mut s = serde_json::to_string_pretty(&to_json(&outcome, ok)).unwrap_or_default();
        s.push('\n');
        s
    } else {
        human(&outcome, ok)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::failed(format!("cannot write output: {e}"), None))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Ask the notary for all keys; when it has nothing cached (Synapse answers
/// an empty key map from its cache only), ask again naming the key ids the
/// origin publishes, so the notary fetches them.
async fn via_notary(
    fetcher: &KeyFetcher,
    notary: &ServerName,
    notary_keys: &FetchedKeys,
    server: &ServerName,
) -> Result<Arc<FetchedKeys>, KeyError> {
    let nk: Vec<_> = notary_keys
        .keys
        .iter()
        .map(|k| (k.key_id.clone(), k.key))
        .collect();
    let now = now_ms();
    let first = fetcher
        .query_notary(notary, &nk, &[(server.clone(), Vec::new())], now)
        .await?;
    let entry = first.into_iter().next();
    match entry.map(|e| e.result) {
        Some(Ok(f)) => Ok(Arc::new(f)),
        Some(Err(KeyError::NotaryMissing { .. })) | None => {
            let ids: Vec<_> = match fetcher.fetch_direct(server).await {
                Ok(direct) => direct.keys.iter().map(|k| k.key_id.clone()).collect(),
                Err(_) => Vec::new(),
            };
            if ids.is_empty() {
                return Err(KeyError::NotaryMissing {
                    notary: notary.to_string(),
                    server: server.to_string(),
                });
            }
            let again = fetcher
                .query_notary(notary, &nk, &[(server.clone(), ids)], now)
                .await?;
            match again.into_iter().next().map(|e| e.result) {
                Some(r) => r.map(Arc::new),
                None => Err(KeyError::NotaryMissing {
                    notary: notary.to_string(),
                    server: server.to_string(),
                }),
            }
        }
        Some(Err(e)) => Err(e),
    }
}

fn to_json(o: &Outcome, ok: bool) -> Value {
    let (keys, problems, valid_until) = match &o.result {
        Ok(f) => (
            f.keys
                .iter()
                .map(|k| {
                    json!({"key_id": k.key_id.as_str(), "key": homeport_core::base64::encode(k.key.as_bytes()),
                           "valid_until_ts": k.valid_until_ts, "published_valid_until_ts": k.published_valid_until_ts,
                           "old": false, "ok": true})
                })
                .chain(f.old_keys.iter().map(|k| {
                    json!({"key_id": k.key_id.as_str(), "key": homeport_core::base64::encode(k.key.as_bytes()),
                           "valid_until_ts": k.valid_until_ts, "expired_ts": k.expired_ts, "old": true, "ok": false})
                }))
                .collect::<Vec<_>>(),
            f.report.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            f.report.valid_until_ts,
        ),
        Err(e) => (Vec::new(), vec![e.to_string()], None),
    };
    json!({
        "server_name": o.server.as_str(),
        "ok": ok,
        "via": if o.notary.is_some() { "notary" } else { "direct" },
        "notary": o.notary.as_ref().map(ServerName::as_str),
        "valid_until_ts": valid_until,
        "keys": keys,
        "problems": problems,
        "notary_keys_ok": o.notary_keys.as_ref().map(|r| r.is_ok()),
    })
}

fn human(o: &Outcome, ok: bool) -> String {
    let now = now_ms();
    let mut s = match &o.notary {
        None => format!("Keys of {} (fetched directly)\n", o.server),
        Some(n) => format!("Keys of {} (through notary {n})\n", o.server),
    };
    if let Some(Err(e)) = &o.notary_keys {
        s.push_str(&format!("  notary's own keys: FAILED: {e}\n"));
    }
    match &o.result {
        Ok(f) => {
            for k in &f.keys {
                s.push_str(&format!(
                    "  {}  {}\n      valid until {} (published {}; trusted at most 7 days after fetch)\n",
                    k.key_id,
                    homeport_core::base64::encode(k.key.as_bytes()),
                    format_utc_ms(k.valid_until_ts),
                    format_utc_ms(k.published_valid_until_ts)
                ));
            }
            for k in &f.old_keys {
                s.push_str(&format!(
                    "  old {}  expired {} (valid for events signed before then only)\n",
                    k.key_id,
                    format_utc_ms(k.valid_until_ts)
                ));
            }
            let r = &f.report;
            s.push_str("Checks:\n");
            s.push_str(&format!("  ok   server_name is {}\n", o.server));
            s.push_str("  ok   signed by the server with a key in its own verify_keys\n");
            if let Some(v) = r.valid_until_ts {
                s.push_str(&format!(
                    "  ok   valid_until_ts {} is in the future\n",
                    format_utc_ms(v)
                ));
                if r.expires_within_an_hour(now) {
                    s.push_str("  warn the response expires within an hour: servers should publish keys valid for longer\n");
                }
            }
            if let (Some(n), Some(id)) = (&o.notary, &f.notary_key) {
                s.push_str(&format!("  ok   signed by the notary {n} with {id}\n"));
            }
            for p in r.problems.iter().filter(|p| !p.is_fatal()) {
                s.push_str(&format!("  note {p}\n"));
            }
        }
        Err(KeyError::Checks { problems, .. }) => {
            s.push_str("Checks failed:\n");
            for p in problems {
                s.push_str(&format!("  FAIL {p}\n"));
            }
        }
        Err(e) => s.push_str(&format!("  FAILED: {e}\n")),
    }
    s.push_str(if ok {
        "Result: OK\n"
    } else {
        "Result: no trustworthy key\n"
    });
    s
}
