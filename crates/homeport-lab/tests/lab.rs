//! The lab's scenarios are the check's integration tests: each asserts the
//! exact findings, the federation-tester rendering is checked field by
//! field, and the human rendering has snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use homeport_federation::check::Report;
use homeport_lab::{Lab, Outcome};
use serde_json::Value;

struct Ran {
    results: BTreeMap<String, (Outcome, Report)>,
}

/// The lab runs once for all tests in this file (on its own runtime, which
/// keeps serving while the tests read the results).
fn ran() -> &'static Ran {
    static RAN: OnceLock<Ran> = OnceLock::new();
    RAN.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let lab = Lab::start().await.unwrap();
                let results = lab.run(Duration::from_secs(30)).await.unwrap();
                tx.send(results).unwrap();
                // Keep the lab alive for the life of the test process.
                std::future::pending::<()>().await;
            });
        });
        let results = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        Ran {
            results: results
                .into_iter()
                .map(|(o, r)| (o.scenario.id.to_owned(), (o, r)))
                .collect(),
        }
    })
}

fn ids(r: &Report) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = r.findings.iter().map(|f| f.id).collect();
    v.sort_unstable();
    v
}

#[test]
fn every_scenario_matches_its_known_truth_with_exact_findings() {
    let expected: &[(&str, &str, bool, &[&str])] = &[
        ("step1-ip-literal", "1", true, &[]),
        ("step2-explicit-port", "2", true, &[]),
        ("step3.1-delegated-ip", "3.1", true, &[]),
        (
            "step3.2-delegated-port",
            "3.2",
            true,
            &["wellknown_explicit_port"],
        ),
        ("step3.3-delegated-srv", "3.3", true, &[]),
        (
            "step3.4-delegated-legacy-srv",
            "3.4",
            true,
            &["srv_legacy_only"],
        ),
        ("step3.5-delegated-default", "3.5", true, &[]),
        ("step4-srv", "4", true, &["wellknown_unreachable"]),
        (
            "step5-legacy-srv-only",
            "5",
            true,
            &["srv_legacy_only", "wellknown_unreachable"],
        ),
        ("step6-default-port", "6", true, &["wellknown_unreachable"]),
        (
            "mistake-port-behind-picky-proxy",
            "3.2",
            false,
            &[
                "host_port_rejected_by_proxy",
                "key_fetch_failed",
                "version_unreachable",
                "wellknown_explicit_port",
            ],
        ),
        (
            "mistake-cert-for-srv-target",
            "4",
            false,
            &["cert_valid_only_for_srv_target", "wellknown_unreachable"],
        ),
        (
            "mistake-self-signed",
            "6",
            false,
            &["cert_self_signed", "wellknown_unreachable"],
        ),
        (
            "mistake-expired-key",
            "6",
            false,
            &["key_expired", "wellknown_unreachable"],
        ),
        (
            "mistake-keys-wrong-server",
            "6",
            false,
            &["key_server_name_mismatch", "wellknown_unreachable"],
        ),
        (
            "mistake-redirect-loop",
            "6",
            false,
            &["connect_failed", "wellknown_redirect_loop"],
        ),
        (
            "mistake-oversized-well-known",
            "6",
            false,
            &["connect_failed", "wellknown_too_large"],
        ),
        (
            "mistake-split-brain",
            "3.5",
            false,
            &["dns_no_address", "wellknown_split_brain"],
        ),
        (
            "mistake-srv-to-cname",
            "4",
            true,
            &["srv_target_cname", "wellknown_unreachable"],
        ),
        (
            "mistake-cert-expires-soon",
            "6",
            true,
            &["cert_expires_soon", "wellknown_unreachable"],
        ),
        (
            "step3.5-redirected-well-known",
            "3.5",
            true,
            &["wellknown_redirected"],
        ),
        (
            "mistake-well-known-cache-week",
            "3.5",
            true,
            &["wellknown_cache_long"],
        ),
        (
            "step3.2-port-beside-srv",
            "3.2",
            true,
            &["srv_ignored_due_to_port", "wellknown_explicit_port"],
        ),
        (
            "mistake-client-discovery",
            "3.5",
            true,
            &["client_base_url_unreachable", "support_wellknown_invalid"],
        ),
    ];
    let ran = ran();
    for (id, step, ok, findings) in expected {
        let Some((o, r)) = ran.results.get(*id) else {
            if *id == "mistake-split-brain" {
                eprintln!("split brain skipped: no IPv6 loopback");
                continue;
            }
            panic!("scenario {id} did not run");
        };
        assert!(o.matches, "{id}: {:?}", o.mismatch);
        assert_eq!(r.resolution.step.as_str(), *step, "{id}");
        assert_eq!(r.ok, *ok, "{id}");
        assert_eq!(ids(r), *findings, "{id}: exact findings");
    }
    assert!(ran.results.len() >= expected.len() - 1);
}

#[test]
fn the_root_cause_is_the_first_finding() {
    let ran = ran();
    let first = |id: &str| ran.results[id].1.findings[0].id;
    assert_eq!(
        first("mistake-port-behind-picky-proxy"),
        "host_port_rejected_by_proxy"
    );
    assert_eq!(
        first("mistake-cert-for-srv-target"),
        "cert_valid_only_for_srv_target"
    );
    assert_eq!(first("mistake-redirect-loop"), "wellknown_redirect_loop");
    let proxy = &ran.results["mistake-port-behind-picky-proxy"].1.findings[0];
    for proxy_name in ["haproxy", "nginx", "Caddy", "Apache"] {
        assert!(
            proxy.fix.contains(proxy_name),
            "the fix names {proxy_name}: {}",
            proxy.fix
        );
    }
    assert!(proxy.doc.starts_with("docs/report.md#"));
}

#[test]
fn findings_carry_rule_evidence_fix_and_a_documented_id() {
    let report_md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/report.md"))
            .unwrap();
    for (id, (_, r)) in &ran().results {
        for f in &r.findings {
            assert!(
                !f.rule.is_empty() && !f.evidence.is_empty() && !f.fix.is_empty(),
                "{id}: {f:?}"
            );
            assert!(
                report_md.contains(&format!("### {}", f.id))
                    || report_md.contains(&format!("## {}", f.id))
                    || report_md.contains(&format!("`{}`", f.id)),
                "{} is not documented in docs/report.md",
                f.id
            );
        }
    }
}

fn ft(id: &str) -> Value {
    ran().results[id].1.to_federation_tester()
}

#[test]
fn federation_tester_rendering_has_the_schema_fields() {
    for (id, (_, r)) in &ran().results {
        let v = r.to_federation_tester();
        for k in [
            "WellKnownResult",
            "DNSResult",
            "ConnectionReports",
            "ConnectionErrors",
            "Version",
            "FederationOK",
        ] {
            assert!(v.get(k).is_some(), "{id}: {k}");
        }
        assert!(
            v["WellKnownResult"]["m.server"].is_string(),
            "{id}: m.server always present"
        );
        assert!(
            v["WellKnownResult"]["CacheExpiresAt"].is_u64()
                || v["WellKnownResult"].get("CacheExpiresAt").is_none()
                    && r.resolution.well_known.is_none(),
            "{id}"
        );
        for k in [
            "SRVSkipped",
            "SRVCName",
            "SRVRecords",
            "SRVError",
            "Hosts",
            "Addrs",
        ] {
            assert!(v["DNSResult"].get(k).is_some(), "{id}: DNSResult.{k}");
        }
        for (addr, rep) in v["ConnectionReports"].as_object().unwrap() {
            for k in [
                "Certificates",
                "Cipher",
                "Checks",
                "Errors",
                "Ed25519VerifyKeys",
                "Info",
                "Keys",
            ] {
                assert!(rep.get(k).is_some(), "{id} {addr}: {k}");
            }
            assert_eq!(rep["Info"], serde_json::json!({}));
            assert!(rep["Errors"].is_array());
            for k in [
                "AllChecksOK",
                "MatchingServerName",
                "FutureValidUntilTS",
                "HasEd25519Key",
                "AllEd25519ChecksOK",
                "Ed25519Checks",
                "ValidCertificates",
            ] {
                assert!(rep["Checks"].get(k).is_some(), "{id} {addr}: Checks.{k}");
            }
            let c = &rep["Certificates"][0];
            for k in [
                "SubjectCommonName",
                "IssuerCommonName",
                "SHA256Fingerprint",
                "DNSNames",
            ] {
                assert!(c.get(k).is_some(), "{id}: Certificates[0].{k}");
            }
        }
        for (_, e) in v["ConnectionErrors"].as_object().unwrap() {
            assert!(e["Message"].is_string());
        }
    }
}

#[test]
fn federation_tester_values_follow_the_decisions() {
    let v = ft("step3.3-delegated-srv");
    assert_eq!(v["FederationOK"], true);
    assert_eq!(v["WellKnownResult"]["m.server"], "hs.wk-srv.lab");
    assert_eq!(v["DNSResult"]["SRVSkipped"], false);
    assert_eq!(
        v["DNSResult"]["SRVCName"],
        "_matrix-fed._tcp.hs.wk-srv.lab."
    );
    assert_eq!(v["DNSResult"]["SRVRecords"][0]["Target"], "t.wk-srv.lab.");
    assert!(v["DNSResult"]["Hosts"]["t.wk-srv.lab."]["Addrs"].is_array());
    let rep = v["ConnectionReports"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(rep["Checks"]["AllChecksOK"], true);
    assert_eq!(rep["Checks"]["ValidCertificates"], true);
    assert_eq!(rep["Cipher"]["Version"], "TLS 1.3");
    assert!(
        rep["Cipher"]["CipherSuite"]
            .as_str()
            .unwrap()
            .starts_with("TLS_")
    );
    assert_eq!(rep["Keys"]["server_name"], "wk-srv.lab");
    assert!(v["Version"]["name"].is_string());

    let v = ft("step3.2-delegated-port");
    assert_eq!(
        v["DNSResult"]["SRVSkipped"], true,
        "m.server with a port skips SRV"
    );

    let v = ft("step5-legacy-srv-only");
    assert_eq!(
        v["DNSResult"]["SRVCName"], "_matrix._tcp.legacy.lab.",
        "the lookup that decided"
    );
    assert_eq!(v["WellKnownResult"]["m.server"], "");
    assert!(v["WellKnownResult"]["result"].is_string());

    let v = ft("mistake-cert-for-srv-target");
    assert_eq!(v["FederationOK"], false);
    let rep = v["ConnectionReports"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(rep["Checks"]["ValidCertificates"], false);
    assert_eq!(rep["Checks"]["AllChecksOK"], false);
    assert!(
        rep["Errors"][0]["Message"]
            .as_str()
            .unwrap()
            .starts_with("x509: ")
    );
    assert!(
        rep["Ed25519VerifyKeys"].is_object(),
        "a certificate failure does not null the keys"
    );

    let v = ft("mistake-port-behind-picky-proxy");
    assert_eq!(v["FederationOK"], false);
    assert!(!v["ConnectionErrors"].as_object().unwrap().is_empty());

    let v = ft("mistake-keys-wrong-server");
    let rep = v["ConnectionReports"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(rep["Checks"]["MatchingServerName"], false);
    assert_eq!(rep["Ed25519VerifyKeys"], Value::Null);

    let v = ft("mistake-srv-to-cname");
    let hosts = v["DNSResult"]["Hosts"].as_object().unwrap();
    let h = hosts.values().next().unwrap();
    assert!(h["Error"]["Message"].as_str().unwrap().contains("CNAME"));

    let v = homeport_federation::tester_compat::invalid_name("bad name");
    assert_eq!(v["Error"], "Invalid server name 'bad name'");
    assert_eq!(v["FederationOK"], false);
}

/// The human rendering with addresses, ports, times and fingerprints
/// replaced, so the snapshot only changes when the wording does.
fn normalised(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut l = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() {
                let mut num = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_digit() {
                        num.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                l.push('N');
            } else {
                l.push(c);
            }
        }
        // Collapse IPv4 literals and cipher/TLS noise that digits leave.
        let l = l.replace("N.N.N.N", "IP").replace("N.N", "N");
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[test]
fn human_rendering_snapshots() {
    for id in [
        "step3.3-delegated-srv",
        "mistake-port-behind-picky-proxy",
        "mistake-cert-for-srv-target",
    ] {
        let r = &ran().results[id].1;
        let text = homeport_federation::check::render_human(r, false);
        insta::assert_snapshot!(id.replace('.', "_"), normalised(&text));
    }
}
