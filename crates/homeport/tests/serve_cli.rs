//! `homeport init`, `homeport serve --check-config` and `homeport serve`
//! as a process: signals, reload, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use homeport_test_support::{TestCa, next_loopback};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_homeport"))
}

#[test]
fn init_writes_a_config_that_checks_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["init", "--server-name", "example.org", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(dir.path().join("homeport.yaml").exists());
    let key = std::fs::read_to_string(dir.path().join("example.org.signing.key")).unwrap();
    assert!(homeport_core::signing::parse_key_file(&key).is_ok());
    let o = bin()
        .args(["init", "--server-name", "example.org", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwrites"));
}

#[test]
fn check_config_reports_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("homeport.yaml");
    std::fs::write(&p, "server_name: example.org\nsigning_key_path: k\nlisteners:\n  - port: 8448\n    resources: [{names: [federation]}]\n    bogus: 1\n").unwrap();
    let o = bin()
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("bogus") && e.contains(":6:"), "{e}");
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn served_leaf(addr: SocketAddr, ca: &TestCa) -> Vec<u8> {
    let cfg = homeport_test_support::client_config(ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("hs.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_reloads_on_sighup_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("serve CA").unwrap();
    let first = ca.issue(&["hs.test"]).unwrap();
    let (cert, key) = first.write_pem(dir.path(), "tls").unwrap();
    std::fs::write(
        dir.path().join("hs.test.signing.key"),
        homeport_core::signing::format_key_file(&[homeport_core::signing::SigningKey::generate(
            "a_1",
        )
        .unwrap()]),
    )
    .unwrap();
    let ip = IpAddr::V4(next_loopback());
    let port = free_port(ip);
    let cfg = format!(
        "server_name: hs.test\nsigning_key_path: hs.test.signing.key\ntls_certificate_path: {}\ntls_private_key_path: {}\nwell_known:\n  server: fed.hs.test:443\nlisteners:\n  - port: {port}\n    bind_addresses: ['{ip}']\n    tls: true\n    resources: [{{names: [federation]}}]\n",
        cert.display(),
        key.display()
    );
    let p = dir.path().join("homeport.yaml");
    std::fs::write(&p, cfg).unwrap();
    let o = bin()
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "config OK\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Host"),
        "the explicit-port warning"
    );

    let mut child = bin()
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = SocketAddr::new(ip, port);
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_leaf(addr, &ca).await, first.leaf().as_ref());
    // Replace the files and send SIGHUP.
    let second = ca.issue(&["hs.test"]).unwrap();
    std::fs::write(&cert, second.chain_pem()).unwrap();
    std::fs::write(&key, second.key_pem()).unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if served_leaf(addr, &ca).await == second.leaf().as_ref() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_that_cannot_start_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k"),
        homeport_core::signing::format_key_file(&[homeport_core::signing::SigningKey::generate(
            "a_1",
        )
        .unwrap()]),
    )
    .unwrap();
    // Occupy a port, then ask serve to bind it.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let p = dir.path().join("homeport.yaml");
    std::fs::write(&p, format!("server_name: hs.test\nsigning_key_path: k\nlisteners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    resources: [{{names: [federation]}}]\n")).unwrap();
    let o = bin().arg("serve").arg("--config").arg(&p).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot listen"));
}

/// `homeport acme status`: the human text and the `--json` object read the
/// certificate files and the state `serve` keeps next to the account key;
/// the exit status says whether all is well.
#[test]
fn acme_status_reports_the_certificate_and_the_last_failure() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("status CA").unwrap();
    let cert = ca.issue(&["hs.test"]).unwrap();
    cert.write_pem(dir.path(), "tls").unwrap();
    let p = dir.path().join("homeport.yaml");
    let ip = next_loopback();
    std::fs::write(
        &p,
        format!(
            "server_name: hs.test\nsigning_key_path: hs.test.signing.key\n\
             tls_certificate_path: tls.crt\ntls_private_key_path: tls.key\n\
             listeners:\n  - port: 8448\n    bind_addresses: ['{ip}']\n    tls: true\n    resources: [{{names: [federation]}}]\n\
             acme:\n  enabled: true\n  url: https://127.0.0.1:9/dir\n  contact: ['mailto:admin@hs.test']\n  account_key_file: acme.key\n"
        ),
    )
    .unwrap();
    let status = |json: bool| {
        let mut c = bin();
        c.args(["acme", "status", "--config"]).arg(&p);
        if json {
            c.arg("--json");
        }
        let o = c.output().unwrap();
        let out = String::from_utf8(o.stdout).unwrap();
        (
            o.status.code(),
            out,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    // A valid certificate and no attempt yet: all well.
    let (code, out, err) = status(true);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["names"], serde_json::json!(["hs.test"]));
    assert_eq!(v["directory"], "https://127.0.0.1:9/dir");
    assert_eq!(v["certificate"]["names"], serde_json::json!(["hs.test"]));
    assert_eq!(v["certificate"]["error"], serde_json::Value::Null);
    assert!(
        v["certificate"]["issuer"]
            .as_str()
            .unwrap()
            .contains("status CA"),
        "{v}"
    );
    let (nb, na) = (
        v["certificate"]["not_before"].as_u64().unwrap(),
        v["certificate"]["not_after"].as_u64().unwrap(),
    );
    assert!(nb < na, "{v}");
    assert!(v["next_renewal"].as_u64().unwrap() < na, "{v}");
    assert_eq!(v["last_error"], serde_json::Value::Null);
    assert_eq!(v["last_attempt"], serde_json::Value::Null);
    assert_eq!(v["account"]["key_exists"], false);
    assert!(
        v["account"]["key_file"]
            .as_str()
            .unwrap()
            .ends_with("acme.key")
    );
    assert_eq!(v["serve_running"], false);
    assert_eq!(v["state_in"], "file");

    // The last order failed (the state as serve writes it).
    std::fs::write(
        dir.path().join("acme.key.state.json"),
        serde_json::json!({
            "last_attempt": 1_800_000_000u64,
            "consecutive_failures": 3,
            "next_retry": 1_800_000_600u64,
            "last_error": {
                "at": 1_800_000_001u64,
                "kind": "invalid",
                "message": "validation failed: connection refused",
                "problem": {"type": "urn:ietf:params:acme:error:connection"}
            }
        })
        .to_string(),
    )
    .unwrap();
    let (code, out, err) = status(true);
    assert_eq!(code, Some(1), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(
        v["last_error"],
        serde_json::json!({
            "at": 1_800_000_001u64,
            "kind": "invalid",
            "message": "validation failed: connection refused",
            "problem": {"type": "urn:ietf:params:acme:error:connection"}
        })
    );
    assert_eq!(v["consecutive_failures"], 3);
    assert_eq!(v["next_retry"], 1_800_000_600u64);
    let (code, text, _) = status(false);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("[invalid]") && text.contains("failures in a row: 3"),
        "{text}"
    );

    // No usable certificate: not ok either, and it says why.
    std::fs::remove_file(dir.path().join("acme.key.state.json")).unwrap();
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let (code, out, _) = status(true);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["certificate"]["names"], serde_json::Value::Null);
    assert!(
        v["certificate"]["error"]
            .as_str()
            .unwrap()
            .contains("tls.crt"),
        "{v}"
    );
    assert_eq!(v["due"], true);
}
