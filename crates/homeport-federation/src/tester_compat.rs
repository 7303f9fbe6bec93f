//! The matrix-federation-tester `/api/report` schema, field for field, so
//! dashboards and monitoring plugins that parse it keep working. The values
//! come from homeport's own (more complete) report: `_matrix-fed._tcp` is
//! looked up, every address is probed, and `.well-known` is skipped for IP
//! literals and explicit ports.

use serde_json::{Map, Value, json};

use crate::check::Report;
use crate::keys::now_ms;
use homeport_resolve::{Step, WellKnownFailure};

fn go_tls_version(v: Option<&str>) -> String {
    match v {
        Some("TLSv1_3") => "TLS 1.3".into(),
        Some("TLSv1_2") => "TLS 1.2".into(),
        Some(o) => o.to_owned(),
        None => "UNKNOWN".into(),
    }
}

fn go_cipher(c: Option<&str>) -> String {
    match c {
        Some(c) => c
            .strip_prefix("TLS13_")
            .map(|r| format!("TLS_{r}"))
            .unwrap_or_else(|| c.to_owned()),
        None => "UNKNOWN".into(),
    }
}

fn fqdn(h: &str) -> String {
    if h.ends_with('.') {
        h.to_owned()
    } else {
        format!("{h}.")
    }
}

fn join_host_port(addr: &std::net::SocketAddr) -> String {
    addr.to_string()
}

/// Render `r` in the tester's schema.
pub fn render(r: &Report) -> Value {
    let res = &r.resolution;
    let mut federation_ok = true;
    let mut error: Option<String> = None;

    // WellKnownResult.
    let wk = match &res.well_known {
        None => json!({"m.server": ""}),
        Some(w) => {
            let mut o = Map::new();
            o.insert(
                "m.server".into(),
                Value::from(w.result.as_ref().map(|s| s.to_string()).unwrap_or_default()),
            );
            if let Err(e) = &w.result {
                let text = match e {
                    WellKnownFailure::Status(_) => "No .well-known found".to_owned(),
                    WellKnownFailure::Invalid(inner) => {
                        if matches!(
                            inner,
                            homeport_core::well_known::WellKnownError::InvalidServerName { .. }
                        ) {
                            error = Some(format!("invalid server name in .well-known: {inner}"));
                            federation_ok = false;
                        }
                        inner.to_string()
                    }
                    other => other.to_string(),
                };
                o.insert("result".into(), Value::from(text));
            }
            let has_headers = !w.cache_control.is_empty() || w.expires.is_some();
            let expires_at = if has_headers && w.result.is_ok() {
                now_ms() / 1000 + w.cache_seconds
            } else {
                0
            };
            o.insert("CacheExpiresAt".into(), Value::from(expires_at));
            Value::Object(o)
        }
    };

    // DNSResult.
    let srv_skipped = r.server_name.port().is_some()
        || matches!(
            res.step,
            Step::DelegatedPort | Step::DelegatedIp | Step::IpLiteral | Step::ExplicitPort
        );
    let decided = res
        .srv
        .iter()
        .rev()
        .find(|s| !s.records.is_empty())
        .or_else(|| res.srv.last());
    let (cname, records, srv_error) = match decided {
        None => (String::new(), Value::Null, Value::Null),
        Some(s) => {
            let recs: Vec<Value> = s
                .records
                .iter()
                .map(|x| json!({"Target": fqdn(&x.target), "Port": x.port, "Priority": x.priority, "Weight": x.weight}))
                .collect();
            let err = match (&s.error, s.outcome) {
                (Some(e), _) => json!({"Message": e}),
                (None, homeport_resolve::SrvOutcome::Nxdomain) => {
                    json!({"Message": format!("lookup {} : no such host", s.name)})
                }
                _ => Value::Null,
            };
            let cn = if s.records.is_empty() {
                String::new()
            } else {
                fqdn(&s.name)
            };
            (
                cn,
                if recs.is_empty() {
                    Value::Null
                } else {
                    Value::Array(recs)
                },
                err,
            )
        }
    };
    let mut hosts = Map::new();
    let mut addrs = Vec::new();
    if let Ok(d) = &res.outcome {
        for t in &d.targets {
            let key = if decided.is_some_and(|s| !s.records.is_empty()) {
                fqdn(&t.host)
            } else {
                t.host.clone()
            };
            let mut h = Map::new();
            h.insert(
                "CName".into(),
                Value::from(fqdn(t.cname.as_deref().unwrap_or(&t.host))),
            );
            h.insert(
                "Addrs".into(),
                Value::from(t.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()),
            );
            h.insert(
                "Error".into(),
                if t.cname.is_some() && decided.is_some_and(|s| !s.records.is_empty()) {
                    json!({"Message": format!("SRV record target {} is a CNAME record, which is forbidden (as per RFC2782)", t.host)})
                } else {
                    Value::Null
                },
            );
            hosts.insert(key, Value::Object(h));
            for sa in t.socket_addrs() {
                addrs.push(Value::from(join_host_port(&sa)));
            }
        }
    }
    if addrs.is_empty() {
        federation_ok = false;
    }
    let dns = json!({
        "SRVSkipped": srv_skipped,
        "SRVCName": cname,
        "SRVRecords": records,
        "SRVError": srv_error,
        "Hosts": hosts,
        "Addrs": if addrs.is_empty() { Value::Null } else { Value::Array(addrs) },
    });

    // Connection reports and errors.
    let mut reports = Map::new();
    let mut errors = Map::new();
    for a in &r.addresses {
        let key = join_host_port(&a.addr);
        let keys_ok = a
            .keys
            .as_ref()
            .is_some_and(|k| k.status == 200 && k.raw.is_some());
        if a.error.is_some() || !keys_ok {
            let msg = a
                .error
                .clone()
                .or_else(|| a.keys.as_ref().and_then(|k| k.error.clone()))
                .unwrap_or_else(|| "no key response".into());
            errors.insert(key, json!({"Message": msg}));
            federation_ok = false;
            continue;
        }
        let cert = a.certificate.as_ref();
        let certs: Vec<Value> = cert
            .map(|c| {
                c.chain
                    .iter()
                    .map(|x| {
                        json!({"SubjectCommonName": x.subject_cn.clone().unwrap_or_default(),
                               "IssuerCommonName": x.issuer_cn.clone().unwrap_or_default(),
                               "SHA256Fingerprint": x.sha256, "DNSNames": x.dns_names})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let valid_certs = cert.is_some_and(|c| c.valid);
        let k = a.keys.as_ref();
        let raw = k.and_then(|k| k.raw.clone()).unwrap_or(Value::Null);
        let report = homeport_core::keys::check_server_keys(&raw, &r.server_name, now_ms());
        let matching_name = report.server_name.as_deref() == Some(r.server_name.as_str());
        let future = report.valid_until_ts.is_some_and(|v| v > now_ms());
        let mut ed = Map::new();
        let mut verify_keys = Map::new();
        let mut all_ed = true;
        for v in &report.verify_keys {
            if !v.key_id.starts_with("ed25519:") {
                continue;
            }
            let valid_key = v
                .key
                .as_deref()
                .is_some_and(|kb| homeport_core::signing::verifying_key_from_base64(kb).is_ok());
            let sig_ok = v.signature == homeport_core::keys::SignatureStatus::Valid;
            all_ed &= valid_key && sig_ok;
            ed.insert(
                v.key_id.clone(),
                json!({"ValidEd25519": valid_key, "MatchingSignature": sig_ok}),
            );
            if sig_ok {
                verify_keys.insert(
                    v.key_id.clone(),
                    Value::from(v.key.clone().unwrap_or_default()),
                );
            }
        }
        let has_ed = !ed.is_empty();
        let key_checks_ok = matching_name && future && has_ed && all_ed;
        let all_ok = key_checks_ok && valid_certs;
        if !all_ok {
            federation_ok = false;
        }
        let mut errs = Vec::new();
        if let Some(e) = cert.and_then(|c| c.error.clone()) {
            errs.push(json!({"Message": format!("x509: {e}")}));
        }
        let tls = a.tls.as_ref();
        reports.insert(
            key,
            json!({
                "Certificates": certs,
                "Cipher": {"Version": go_tls_version(tls.and_then(|t| t.version.as_deref())),
                           "CipherSuite": go_cipher(tls.and_then(|t| t.cipher.as_deref()))},
                "Checks": {
                    "AllChecksOK": all_ok,
                    "MatchingServerName": matching_name,
                    "FutureValidUntilTS": future,
                    "HasEd25519Key": has_ed,
                    "AllEd25519ChecksOK": if has_ed { Value::from(all_ed) } else { Value::Null },
                    "Ed25519Checks": ed,
                    "ValidCertificates": valid_certs,
                },
                "Errors": errs,
                "Ed25519VerifyKeys": if key_checks_ok { Value::Object(verify_keys) } else { Value::Null },
                "Info": {},
                "Keys": raw,
            }),
        );
    }

    // Version: from the first address that answered.
    let version = r
        .addresses
        .iter()
        .filter_map(|a| a.version.as_ref())
        .find(|v| v.error.is_none())
        .map(|v| json!({"name": v.name, "version": v.version}))
        .unwrap_or_else(|| {
            let e = r
                .addresses
                .iter()
                .filter_map(|a| {
                    a.version
                        .as_ref()
                        .and_then(|v| v.error.clone())
                        .or_else(|| a.error.clone())
                })
                .next()
                .unwrap_or_else(|| "no address to ask".into());
            json!({"error": e})
        });
    if version.get("error").is_some() {
        federation_ok = false;
    }

    let mut out = Map::new();
    if let Some(e) = error {
        out.insert("Error".into(), Value::from(e));
    }
    out.insert("WellKnownResult".into(), wk);
    out.insert("DNSResult".into(), dns);
    out.insert("ConnectionReports".into(), Value::Object(reports));
    out.insert("ConnectionErrors".into(), Value::Object(errors));
    out.insert("Version".into(), version);
    out.insert("FederationOK".into(), Value::from(federation_ok));
    Value::Object(out)
}

/// The report for an invalid server name, as the tester answers it.
pub fn invalid_name(name: &str) -> Value {
    json!({
        "Error": format!("Invalid server name '{name}'"),
        "WellKnownResult": {"m.server": "", "CacheExpiresAt": 0},
        "DNSResult": {"SRVSkipped": false, "SRVCName": "", "SRVRecords": null, "SRVError": null, "Hosts": {}, "Addrs": null},
        "ConnectionReports": {},
        "ConnectionErrors": {},
        "Version": {},
        "FederationOK": false,
    })
}
