//! `homeport serve` with the tester enabled, checking the domains of a
//! `homeport lab --serve` (the setup the browser test uses).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: tester.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[test]
fn serve_tester_checks_the_lab() {
    let bin = env!("CARGO_BIN_EXE_homeport");
    let mut lab = Command::new(bin)
        .args(["lab", "--serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lab.stdout.take().unwrap();
    let _lab = Kill(lab);
    let mut lines = BufReader::new(out).lines();
    let first = lines.next().unwrap().unwrap();
    let dns = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("dns="))
        .unwrap()
        .to_owned();
    let ca = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ca="))
        .unwrap()
        .to_owned();
    let ports = lines.next().unwrap().unwrap();
    let wk: u16 = ports
        .split_whitespace()
        .find_map(|w| w.strip_prefix("well_known_port="))
        .unwrap()
        .parse()
        .unwrap();
    let def: u16 = ports
        .split_whitespace()
        .find_map(|w| w.strip_prefix("default_port="))
        .unwrap()
        .parse()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k"),
        homeport_core::signing::format_key_file(&[homeport_core::signing::SigningKey::generate(
            "a_1",
        )
        .unwrap()]),
    )
    .unwrap();
    let ip = IpAddr::V4(homeport_test_support::next_loopback());
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "server_name: tester.test\nsigning_key_path: k\ntester: {{enabled: true}}\ndns: {{nameservers: ['{dns}'], lab_well_known_port: {wk}, lab_default_port: {def}}}\nfederation_custom_ca_list: ['{ca}']\nip_range_whitelist: ['127.0.0.0/8', '::1/128']\nlisteners:\n  - port: {port}\n    bind_addresses: ['{ip}']\n    resources: [{{names: [tester, metrics]}}]\n"
    );
    std::fs::write(dir.path().join("homeport.yaml"), cfg).unwrap();
    let serve = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("homeport.yaml"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Kill(serve);
    let addr = SocketAddr::new(ip, port);
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        get(addr, "/api/federation-ok?server_name=wk-srv.lab"),
        (200, "GOOD".to_owned())
    );
    assert_eq!(
        get(addr, "/api/federation-ok?server_name=picky.lab"),
        (200, "BAD".to_owned())
    );
    let (s, body) = get(addr, "/api/v1/check?server_name=srv-cert.lab");
    assert_eq!(s, 200);
    assert!(body.contains("cert_valid_only_for_srv_target"), "{body}");
    // The lab's addresses are in ip_range_whitelist: private on purpose, so
    // not reported as address_not_public.
    let (s, body) = get(addr, "/api/v1/check?server_name=wk-srv.lab");
    assert_eq!(s, 200);
    assert!(body.contains("\"findings\""), "{body}");
    assert!(!body.contains("address_not_public"), "{body}");
    let (s, page) = get(addr, "/");
    assert_eq!(s, 200);
    assert!(page.contains("homeport federation tester"));
    let (_, metrics) = get(addr, "/metrics");
    assert!(
        metrics.contains("homeport_federation_ok{server_name=\"wk-srv.lab\"} 1"),
        "{metrics}"
    );
}
