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
                let dir = tempfile::tempdir().unwrap();
                let ca = dir.path().join("ca.crt");
                std::fs::copy(&lab.ca_file, &ca).unwrap();
                tx.send((lab.dns.addr().to_string(), ca.display().to_string(), dir)).unwrap();
                let _keep = lab;
                let _keep_srv = _srv;
                std::future::pending::<()>().await;
            });
        });
        let (dns, ca, dir) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        Info { dns, ca, _dir: dir }
    })
}

fn check(args: &[&str]) -> Output {
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
            "20s",
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
