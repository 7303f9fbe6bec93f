//! `homeport request`.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use homeport_core::canonical_json::{self, Mode};
use homeport_core::signing;
use homeport_federation::Signer;
use serde_json::{Value, json};

use super::{input, net};
use crate::cli::NetOpts;
use crate::error::{CliError, CliResult};

pub struct Args<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub data: Option<&'a str>,
    pub signing_key: &'a Path,
    pub origin: &'a str,
    pub json: bool,
    pub net: &'a NetOpts,
}

pub fn run(a: &Args<'_>) -> CliResult<ExitCode> {
    let dest = net::server_name(a.name, "NAME")?;
    let origin = net::server_name(a.origin, "--origin")?;
    let method =
        http::Method::from_bytes(a.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            CliError::invalid(
                format!("invalid method {:?}", a.method),
                "--method".to_owned(),
            )
        })?;
    if !a.path.starts_with('/') {
        return Err(CliError::invalid(
            "PATH must start with '/'",
            "PATH".to_owned(),
        ));
    }
    let body = a
        .data
        .map(|d| {
            canonical_json::parse(d, Mode::Lenient).map_err(|e| {
                CliError::invalid(&e.message, format!("--data:{}:{}", e.line, e.column))
            })
        })
        .transpose()?;
    let kf = input::read_file(a.signing_key)?;
    let keys = signing::parse_key_file(&kf.text).map_err(|e| match e {
        signing::SigningError::KeyFile { line, message } => {
            CliError::invalid(message, format!("{}:{line}", kf.name))
        }
        other => CliError::invalid(other, kf.name.clone()),
    })?;
    let client = net::federation_client(a.net, Some(Signer { origin, keys }))?;
    let rt = net::runtime()?;
    let result = rt.block_on(client.request(method, &dest, a.path, body.as_ref()));
    let mut out = std::io::stdout().lock();
    let (text, ok) = match result {
        Err(e) => {
            return Err(CliError::failed(
                format!("{} ({} phase)", e, e.phase()),
                None,
            ));
        }
        Ok(resp) => {
            let ok = resp.status.is_success();
            let body_json: Option<Value> = resp.json().ok();
            let text = if a.json {
                let headers: serde_json::Map<String, Value> = resp
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            Value::from(v.to_str().unwrap_or("<binary>")),
                        )
                    })
                    .collect();
                let j = json!({
                    "status": resp.status.as_u16(),
                    "headers": headers,
                    "body": body_json.clone().unwrap_or_else(|| Value::from(String::from_utf8_lossy(&resp.body).into_owned())),
                    "peer": resp.conn.peer.to_string(),
                    "host": resp.host_sent,
                    "sni": resp.conn.sni,
                    "tls_version": resp.conn.tls_version,
                    "alpn": resp.conn.alpn,
                });
                let mut s = serde_json::to_string_pretty(&j).unwrap_or_default();
                s.push('\n');
                s
            } else {
                let mut s = format!(
                    "{} {}\n(from {} with Host {} and SNI {})\n",
                    resp.status.as_u16(),
                    resp.status.canonical_reason().unwrap_or(""),
                    resp.conn.peer,
                    resp.host_sent,
                    resp.conn.sni.as_deref().unwrap_or("none")
                );
                for (k, v) in &resp.headers {
                    s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
                }
                s.push('\n');
                match &body_json {
                    Some(v) => s.push_str(&serde_json::to_string_pretty(v).unwrap_or_default()),
                    None => s.push_str(&String::from_utf8_lossy(&resp.body)),
                }
                s.push('\n');
                s
            };
            (text, ok)
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::failed(format!("cannot write output: {e}"), None))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
