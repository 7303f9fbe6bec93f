//! `homeport resolve` as a user runs it, against in-process DNS and HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};

use homeport_test_support::{DnsServer, HttpsServer, Scripted, TestCa, Zone, next_loopback};

struct Lab {
    dns: DnsServer,
    _https: HttpsServer,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn lab() -> Lab {
    let ip = next_loopback();
    let ca = TestCa::new("cli test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path()).unwrap();
    // The .well-known server listens on 443 when we may bind it (CI runs as
    // root), else the test is about names that need no .well-known.
    let https = HttpsServer::start(
        (IpAddr::V4(ip), 443).into(),
        ca.issue(&["example.test"]).unwrap(),
        homeport_test_support::Handler::routes().route(
            "/.well-known/matrix/server",
            Scripted::json(serde_json::json!({"m.server": "matrix.example.test"})),
        ),
    )
    .or_else(|_| {
        HttpsServer::start(
            (IpAddr::V4(ip), 0).into(),
            ca.issue(&["example.test"]).unwrap(),
            Scripted::not_found(),
        )
    })
    .unwrap();
    let dns = DnsServer::start(
        IpAddr::V4(ip),
        Zone::new()
            .a("example.test", ip)
            .srv(
                "_matrix-fed._tcp.matrix.example.test",
                10,
                5,
                443,
                "fed.other.test",
            )
            .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 5))
            .a("plain.test", Ipv4Addr::new(127, 0, 0, 6))
            .srv("_matrix-fed._tcp.gone.test", 0, 0, 0, "."),
    )
    .unwrap();
    Lab {
        dns,
        _https: https,
        ca_file,
        _dir: dir,
    }
}

fn run(lab: &Lab, args: &[&str]) -> Output {
    let dns = lab.dns.addr().to_string();
    Command::new(env!("CARGO_BIN_EXE_homeport"))
        .arg("resolve")
        .args(args)
        .args([
            "--dns",
            &dns,
            "--ca-file",
            lab.ca_file.to_str().unwrap(),
            "--no-system-roots",
            "--timeout",
            "10s",
        ])
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn resolve_json_for_explicit_port() {
    let lab = lab();
    let o = run(&lab, &["plain.test:8448", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(j["step"], "2");
    assert_eq!(j["host_header"], "plain.test:8448");
    assert_eq!(j["sni"], "plain.test");
    assert_eq!(j["well_known"], serde_json::Value::Null);
    assert_eq!(j["srv"], serde_json::json!([]));
    assert_eq!(
        j["targets"],
        serde_json::json!([{"host": "plain.test", "port": 8448, "addrs": ["127.0.0.6"]}])
    );
}

#[test]
fn resolve_human_output_shows_trace_and_result() {
    let lab = lab();
    let o = run(&lab, &["[::1]"]);
    assert_eq!(o.status.code(), Some(0));
    let text = out(&o);
    assert!(text.contains("Resolved by step 1"), "{text}");
    assert!(text.contains("Host header [::1]"), "{text}");
    assert!(text.contains("SNI         none (IP literal)"), "{text}");
}

#[test]
fn resolve_through_well_known_and_srv_when_port_443_is_available() {
    let lab = lab();
    if lab._https.addr().port() != 443 {
        eprintln!("skipped: cannot bind port 443 here (not root)");
        return;
    }
    let o = run(&lab, &["example.test", "--format", "json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(j["step"], "3.3");
    assert_eq!(j["host_header"], "matrix.example.test");
    assert_eq!(j["targets"][0]["host"], "fed.other.test");
    assert_eq!(j["targets"][0]["port"], 443);
}

#[test]
fn unresolvable_is_exit_1_with_error_in_json() {
    let lab = lab();
    let o = run(&lab, &["gone.test", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(j["step"], "4");
    assert!(j["error"].as_str().unwrap().contains("unavailable"));
    assert_eq!(j["targets"], serde_json::json!([]));
}

#[test]
fn invalid_name_is_exit_2_with_a_precise_message() {
    let lab = lab();
    let o = run(&lab, &["example.test:99999"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("port 99999 is out of range"), "{e}");
    assert!(e.contains("(at NAME)"), "{e}");
    assert!(out(&o).is_empty());
}

#[test]
fn bad_timeout_is_exit_2() {
    let lab = lab();
    let o = run(&lab, &["plain.test:8448", "--timeout", "soon"]);
    assert_eq!(o.status.code(), Some(2));
}
