//! `homeport check`: one report, three renderings.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use homeport_core::signing;
use homeport_federation::Signer;
use homeport_federation::check::{self, CheckOptions, Report, Severity};

use super::{input, net, resolve};
use crate::cli::{Format, NetOpts};
use crate::error::{CliError, CliResult};

pub struct Args<'a> {
    pub name: &'a str,
    pub format: Format,
    pub signing_key: Option<&'a Path>,
    pub origin: Option<&'a str>,
    pub notary: Option<&'a str>,
    pub net: &'a NetOpts,
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
    let opts = CheckOptions { signer, notary };
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
        Format::Human => human(&report, std::io::stdout().is_terminal()),
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

struct Paint(bool);

impl Paint {
    fn sev(&self, s: Severity) -> String {
        let (code, word) = match s {
            Severity::Error => ("31;1", "ERROR"),
            Severity::Warning => ("33;1", "WARN "),
            Severity::Info => ("36", "INFO "),
        };
        if self.0 {
            format!("\x1b[{code}m{word}\x1b[0m")
        } else {
            word.to_owned()
        }
    }
    fn bold(&self, t: &str) -> String {
        if self.0 {
            format!("\x1b[1m{t}\x1b[0m")
        } else {
            t.to_owned()
        }
    }
}

/// The human rendering (no colour unless `colour`).
pub fn human(r: &Report, colour: bool) -> String {
    let p = Paint(colour);
    let mut s = resolve::human(&r.resolution);
    s.push('\n');
    for a in &r.addresses {
        s.push_str(&p.bold(&format!(
            "Address {} ({}, target {})",
            a.addr, a.family, a.target
        )));
        s.push('\n');
        if let Some(e) = &a.error {
            s.push_str(&format!("  failed: {e}\n"));
            continue;
        }
        if let (Some(ms), Some(t)) = (a.connect_ms, &a.tls) {
            s.push_str(&format!(
                "  connect {ms} ms; TLS {} {} ALPN {} (SNI {}) in {} ms\n",
                t.version.as_deref().unwrap_or("?"),
                t.cipher.as_deref().unwrap_or("?"),
                t.alpn.as_deref().unwrap_or("none"),
                t.sni.as_deref().unwrap_or("none"),
                t.handshake_ms
            ));
        }
        if let Some(c) = &a.certificate {
            for (i, x) in c.chain.iter().enumerate() {
                s.push_str(&format!(
                    "  cert[{i}] {} issued by {}; SANs {}; {} days left\n",
                    x.subject_cn.as_deref().unwrap_or(&x.subject),
                    x.issuer_cn.as_deref().unwrap_or(&x.issuer),
                    x.dns_names
                        .iter()
                        .chain(x.ip_addresses.iter())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    x.days_left
                ));
            }
            if c.valid {
                s.push_str(&format!("  certificate valid for {}\n", c.tls_name));
            } else {
                s.push_str(&format!(
                    "  certificate NOT valid for {}: {}\n",
                    c.tls_name,
                    c.error.as_deref().unwrap_or("?")
                ));
                if let Some(v) = &c.valid_for {
                    s.push_str(&format!(
                        "  (it is valid for {v}, the SRV target: peers never check that name)\n"
                    ));
                }
            }
        }
        if let Some(k) = &a.keys {
            match &k.error {
                Some(e) => s.push_str(&format!("  keys: {e}\n")),
                None => s.push_str(&format!(
                    "  keys: server_name {}, {} key(s), {}\n",
                    k.server_name.as_deref().unwrap_or("?"),
                    k.verify_keys.len(),
                    if k.ok {
                        "all checks pass".to_owned()
                    } else {
                        k.problems.join("; ")
                    }
                )),
            }
        }
        if let Some(v) = &a.version {
            match &v.error {
                Some(e) => s.push_str(&format!("  version: {e}\n")),
                None => s.push_str(&format!(
                    "  version: {} {}\n",
                    v.name.as_deref().unwrap_or("?"),
                    v.version.as_deref().unwrap_or("?")
                )),
            }
        }
        if let Some(h) = &a.host_probe {
            s.push_str(&format!(
                "  Host probe: {} -> {}, {} -> {}{}\n",
                h.prescribed,
                h.prescribed_status
                    .map_or("no answer".to_owned(), |x| x.to_string()),
                h.alternative,
                h.alternative_status
                    .map_or("no answer".to_owned(), |x| x.to_string()),
                if h.differs {
                    " (different answers)"
                } else {
                    ""
                }
            ));
        }
    }
    if !r.well_known_by_addr.is_empty() {
        s.push_str(&p.bold(".well-known/matrix/server on every address of the name"));
        s.push('\n');
        for w in &r.well_known_by_addr {
            let what = match (&w.m_server, w.status, &w.error) {
                (Some(m), _, _) => format!("m.server {m}"),
                (None, Some(st), _) => format!("HTTP {st}"),
                (None, None, Some(e)) => e.clone(),
                _ => "?".to_owned(),
            };
            s.push_str(&format!("  {} -> {what}\n", w.addr));
        }
    }
    s.push('\n');
    if r.findings.is_empty() {
        s.push_str("No findings.\n");
    }
    for f in &r.findings {
        s.push_str(&format!("{} {}: {}\n", p.sev(f.severity), f.id, f.evidence));
        s.push_str(&format!(
            "      rule: {}\n      fix:  {}\n      see:  {}\n",
            f.rule, f.fix, f.doc
        ));
    }
    s.push('\n');
    s.push_str(&p.bold(&r.verdict()));
    s.push('\n');
    s
}
