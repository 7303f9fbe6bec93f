//! `homeport serve`'s notary against the lab: it fetches through the same
//! checking client as the tester (the lab's port overrides apply, and the
//! deny list holds on the addresses it dials).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};

use homeport_lab::Lab;
use homeport_server::config;
use homeport_server::serve;
use homeport_test_support::next_loopback;
use serde_json::{Value, json};

async fn query(addr: SocketAddr, server: &str) -> Value {
    let client = reqwest_like(addr, &json!({"server_keys": {server: {}}}).to_string()).await;
    serde_json::from_str(&client).unwrap()
}

/// POST /_matrix/key/v2/query over plain HTTP/1.1; the response body.
async fn reqwest_like(addr: SocketAddr, body: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /_matrix/key/v2/query HTTP/1.1\r\nHost: notary.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn config(
    dir: &std::path::Path,
    lab: &Lab,
    listen: SocketAddr,
    allow_loopback: bool,
) -> config::Config {
    let key = homeport_core::signing::SigningKey::generate("n_1").unwrap();
    std::fs::write(
        dir.join("n.signing.key"),
        homeport_core::signing::format_key_file(&[key]),
    )
    .unwrap();
    let ca = lab.ca.write_pem(dir).unwrap();
    let text = format!(
        "server_name: notary.test
signing_key_path: n.signing.key
listeners:
  - port: {port}
    bind_addresses: ['{ip}']
    tls: false
    resources: [{{names: [federation]}}]
notary: {{enabled: true}}
dns: {{nameservers: ['{dns}'], lab_well_known_port: {wk}, lab_default_port: {def}}}
federation_custom_ca_list: ['{ca}']
{whitelist}database: {{name: sqlite3, args: {{database: ':memory:'}}}}
",
        port = listen.port(),
        ip = listen.ip(),
        dns = lab.dns.addr(),
        wk = homeport_lab::WK_PORT,
        def = homeport_lab::DEF_PORT,
        ca = ca.display(),
        whitelist = if allow_loopback {
            "ip_range_whitelist: ['127.0.0.0/8']\n"
        } else {
            ""
        },
    );
    let p = dir.join("homeport.yaml");
    std::fs::write(&p, text).unwrap();
    config::load(&p).unwrap()
}

fn listen_addr() -> SocketAddr {
    let ip = IpAddr::V4(next_loopback());
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddr::new(ip, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notary_uses_the_lab_ports_and_the_deny_list() {
    let lab = Lab::start().await.unwrap();
    // Allowed: a .well-known-delegated lab name (needs the lab's ports).
    let dir = tempfile::tempdir().unwrap();
    let addr = listen_addr();
    let running = serve::start(&config(dir.path(), &lab, addr, true))
        .await
        .unwrap();
    let v = query(addr, "wk-srv.lab").await;
    let entries = v["server_keys"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!(entries[0]["server_name"], "wk-srv.lab");
    assert!(entries[0]["signatures"]["notary.test"].is_object());
    running.shutdown().await;

    // The default deny list (127.0.0.0/8 included): nothing is fetched.
    let dir = tempfile::tempdir().unwrap();
    let addr = listen_addr();
    let running = serve::start(&config(dir.path(), &lab, addr, false))
        .await
        .unwrap();
    let v = query(addr, "wk-srv.lab").await;
    assert_eq!(v["server_keys"], json!([]), "{v}");
    assert_eq!(running.metrics.notary_counts().2, 1, "counted as an error");
    running.shutdown().await;
}
