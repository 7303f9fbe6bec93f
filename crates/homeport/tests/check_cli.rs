//! `homeport check` as a user runs it, against the lab's domains: exit
//! codes, the three renderings, the signed probe and the notary option.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use homeport_lab::Lab;

struct Info {
    dns: String,
    ca: String,
    _dir: tempfile::TempDir,
}

fn lab() -> &'static Info {
    static LAB: OnceLock<Info> = OnceLock::new();
    LAB.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let lab = Lab::start().await.unwrap();
                // An extra domain whose proxy mangles Authorization: every
                // signed request is refused with 401.
                let key = homeport_core::signing::SigningKey::generate("a_auth").unwrap();
                let doc = homeport_core::keys::ServerKeysBuilder::new(
                    &homeport_core::ServerName::parse("auth.lab").unwrap(),
                    homeport_federation::keys::now_ms() + 86_400_000,
                )
                .verify_key(&key)
                .sign(&[&key])
                .unwrap();
                let handler = homeport_test_support::Handler::routes()
                    .route("/_matrix/key/v2/server", homeport_test_support::Scripted::json(doc))
                    .route(
                        "/_matrix/federation/v1/version",
                        homeport_test_support::Scripted::json(serde_json::json!({"server": {"name": "x", "version": "1"}})),
                    )
                    .fallback(homeport_test_support::Scripted::json(serde_json::json!({"errcode": "M_UNAUTHORIZED", "error": "Invalid signature"})).with_status(401));
                let srv = homeport_test_support::HttpsServer::start_on_any_loopback(
                    homeport_lab::DEF_PORT,
                    homeport_test_support::TlsSetup::Cert(lab.ca.issue(&["auth.lab"]).unwrap()),
                    handler,
                )
                .unwrap();
                let std::net::IpAddr::V4(ip) = srv.addr().ip() else { panic!("v4") };
                lab.dns.zone().update(|z| z.a("auth.lab", ip)).unwrap();
                let _srv = srv;
                // An extra domain whose key server never answers in time.
                let slow = homeport_test_support::HttpsServer::start_on_any_loopback(
                    homeport_lab::DEF_PORT,
                    homeport_test_support::TlsSetup::Cert(lab.ca.issue(&["slow.lab"]).unwrap()),
                    homeport_test_support::Handler::routes().route(
                        "/_matrix/key/v2/server",
                        homeport_test_support::Scripted::delay(
                            Duration::from_secs(120),
                            homeport_test_support::Scripted::not_found(),
                        ),
                    ),
                )
                .unwrap();
                let std::net::IpAddr::V4(ip) = slow.addr().ip() else { panic!("v4") };
                lab.dns.zone().update(|z| z.a("slow.lab", ip)).unwrap();
                let dir = tempfile::tempdir().unwrap();
                let ca = dir.path().join("ca.crt");
                std::fs::copy(&lab.ca_file, &ca).unwrap();
                tx.send((lab.dns.addr().to_string(), ca.display().to_string(), dir)).unwrap();
                let _keep = lab;
                let _keep_srv = _srv;
                let _keep_slow = slow;
                std::future::pending::<()>().await;
            });
        });
        let (dns, ca, dir) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        Info { dns, ca, _dir: dir }
    })
}

fn check(args: &[&str]) -> Output {
    check_within(args, "20s")
}

fn check_within(args: &[&str], timeout: &str) -> Output {
    let l = lab();
    Command::new(env!("CARGO_BIN_EXE_homeport"))
        .arg("check")
        .args(args)
        .args([
            "--dns",
            &l.dns,
            "--ca-file",
            &l.ca,
            "--no-system-roots",
            "--timeout",
            timeout,
        ])
        .args([
            "--well-known-port",
            &homeport_lab::WK_PORT.to_string(),
            "--default-port",
            &homeport_lab::DEF_PORT.to_string(),
        ])
        .output()
        .unwrap()
}

#[test]
fn a_healthy_server_exits_0_with_an_ok_verdict() {
    let o = check(&["wk-srv.lab"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("Resolved by step 3.3"), "{text}");
    assert!(
        text.trim_end().ends_with("warning(s))") && text.contains("OK: wk-srv.lab federates"),
        "{text}"
    );
}

#[test]
fn a_broken_server_exits_1_and_json_names_the_finding() {
    let o = check(&["picky.lab", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["server_name"], "picky.lab");
    assert_eq!(v["resolution"]["step"], "3.2");
    assert_eq!(v["findings"][0]["id"], "host_port_rejected_by_proxy");
    for k in ["id", "severity", "rule", "evidence", "fix", "doc"] {
        assert!(v["findings"][0].get(k).is_some(), "{k}");
    }
    let a = &v["addresses"][0];
    for k in [
        "addr",
        "family",
        "tls",
        "certificate",
        "keys",
        "version",
        "host_probe",
    ] {
        assert!(a.get(k).is_some(), "addresses[0].{k}");
    }
}

#[test]
fn federation_tester_format() {
    let o = check(&["srv-cert.lab", "--format", "federation-tester"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["FederationOK"], false);
    assert_eq!(v["DNSResult"]["SRVCName"], "_matrix-fed._tcp.srv-cert.lab.");
}

#[test]
fn invalid_name_is_exit_2() {
    let o = check(&["bad name"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid server name"));
}

#[test]
fn signed_probe_and_notary_options_run() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(
        &key,
        homeport_core::signing::format_key_file(&[homeport_core::signing::SigningKey::generate(
            "a_1",
        )
        .unwrap()]),
    )
    .unwrap();
    let o = check(&[
        "plain.lab",
        "--json",
        "--signing-key",
        key.to_str().unwrap(),
        "--origin",
        "probe.example",
        "--notary",
        "plain.lab",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    // The lab's homeport servers do not implement /query/profile: the probe
    // is answered (404), not refused with 401.
    assert!(!ids.contains(&"auth_rejected"), "{ids:?}");
    // The lab's homeport has no notary enabled, so the cross-check reports
    // that it could not vouch.
    assert!(ids.contains(&"key_notary_failed"), "{ids:?}");
    let o = check(&[
        "auth.lab",
        "--json",
        "--signing-key",
        key.to_str().unwrap(),
        "--origin",
        "probe.example",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["findings"][0]["id"], "auth_rejected", "{v:#}");
    let o = check(&["auth.lab", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "without --signing-key there is no signed probe"
    );
    let o = check(&["plain.lab", "--signing-key", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "--signing-key requires --origin");
}

fn finding_ids(v: &serde_json::Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn loopback_addresses_are_reported_as_not_public_unless_private() {
    let o = check(&["wk-srv.lab", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "a warning does not fail the check"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "address_not_public")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(f["severity"], "warning");
    assert!(
        f["evidence"].as_str().unwrap().contains("127.0.0.0/8"),
        "{f}"
    );

    let o = check(&["wk-srv.lab", "--json", "--private"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        !finding_ids(&v).iter().any(|i| i == "address_not_public"),
        "{v:#}"
    );
    // The report's new fields.
    assert!(v["pending"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(v.get("support_well_known").is_some());
    assert_eq!(v["addresses"][0]["keys"]["verify_keys"][0][1], "valid");
    assert!(v["addresses"][0]["certificate"]["chain"][0]["not_before"].is_i64());
}

#[test]
fn the_timeout_ends_the_check_with_a_partial_report_and_exit_1() {
    let o = check_within(&["slow.lab", "--json", "--private"], "5s");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("error:"),
        "a report, not an error: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["findings"][0]["id"], "check_timed_out", "{v:#}");
    let pending: Vec<&str> = v["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        pending
            .iter()
            .any(|p| p.starts_with("address ") && p.ends_with(": keys")),
        "{pending:?}"
    );
    // What was learnt before the time ran out: discovery, TLS, the
    // certificate.
    assert_eq!(v["resolution"]["step"], "6");
    let a = &v["addresses"][0];
    assert_eq!(a["certificate"]["valid"], true, "{a}");
    assert!(a["error"].as_str().unwrap().starts_with("timeout: "), "{a}");

    // The human rendering says what was pending, too.
    let o = check_within(&["slow.lab", "--private"], "5s");
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("check_timed_out"), "{text}");
    assert!(
        text.contains("Not finished when the time limit ran out"),
        "{text}"
    );
}
