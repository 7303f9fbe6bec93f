//! What a peer sees when homeport's federation client connects, for each
//! discovery step: TCP address, SNI (absent for IPs), Host header, X-Matrix
//! header; and which certificates are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use homeport_core::signing::SigningKey;
use homeport_core::xmatrix::{RequestToSign, XMatrix};
use homeport_federation::{FederationError, Signer};
use homeport_resolve::Step;
use homeport_test_support::{Handler, IssueOpts, Recorded, Scripted, TestCa, Zone, self_signed};

const VERSION: &str = "/_matrix/federation/v1/version";

fn signer() -> (Signer, SigningKey) {
    let key = SigningKey::generate("a_test").unwrap();
    (
        Signer {
            origin: name("origin.test"),
            keys: vec![key.clone()],
        },
        key,
    )
}

fn wk_for(m_server: Option<&'static str>) -> Handler {
    Handler::new(move |r: &Recorded| {
        let host = r.host.clone().unwrap_or_default();
        match m_server {
            Some(m)
                if host.starts_with("example.test") && r.path() == "/.well-known/matrix/server" =>
            {
                Scripted::json(serde_json::json!({ "m.server": m }))
            }
            _ => Scripted::not_found(),
        }
    })
}

/// Send a signed GET to `server` and return what the peer recorded.
fn signed_get(
    net: &Net,
    server: &str,
    peer: &homeport_test_support::HttpsServer,
) -> (Recorded, SigningKey) {
    let (s, key) = signer();
    let client = net.client(Some(s));
    let resp = rt()
        .block_on(client.get(&name(server), VERSION))
        .unwrap_or_else(|e| panic!("{server}: {e}"));
    assert_eq!(resp.status, 200);
    let reqs = only(peer.requests(), VERSION);
    assert_eq!(reqs.len(), 1, "{server}");
    (reqs[0].clone(), key)
}

fn check_xmatrix(rec: &Recorded, key: &SigningKey, destination: &str) {
    let auth = rec.header("authorization").unwrap();
    let x = XMatrix::parse(auth).unwrap();
    assert_eq!(x.origin.as_str(), "origin.test");
    assert_eq!(
        x.destination.as_ref().unwrap().as_str(),
        destination,
        "destination is the undelegated name"
    );
    let dest = name(destination);
    let origin = name("origin.test");
    x.verify(
        &RequestToSign {
            method: "GET",
            uri: VERSION,
            origin: &origin,
            destination: &dest,
            content: None,
        },
        &key.verifying_key(),
    )
    .unwrap();
}

#[test]
fn step1_ip_literal_no_sni_host_verbatim() {
    let net = Net::new(wk_for(None));
    let ip = homeport_test_support::next_loopback();
    let p = homeport_test_support::HttpsServer::start(
        (std::net::IpAddr::V4(ip), 0).into(),
        net.ca.issue(&[&ip.to_string()]).unwrap(),
        key_server(serde_json::json!({})),
    )
    .unwrap();
    let server = format!("{}", p.addr());
    let (rec, key) = signed_get(&net, &server, &p);
    assert_eq!(rec.sni, None, "no SNI for an IP literal");
    assert_eq!(rec.host.as_deref(), Some(server.as_str()));
    assert_eq!(rec.local, p.addr());
    check_xmatrix(&rec, &key, &server);
}

#[test]
fn step2_explicit_port_sni_is_hostname_host_has_port() {
    let net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.zone(Zone::new().a("hs.test", ip_of(&p)));
    let server = format!("hs.test:{}", p.addr().port());
    let (rec, key) = signed_get(&net, &server, &p);
    assert_eq!(rec.sni.as_deref(), Some("hs.test"));
    assert_eq!(rec.host.as_deref(), Some(server.as_str()));
    check_xmatrix(&rec, &key, &server);
}

#[test]
fn step3_2_delegated_port_is_the_host_header_and_the_signature_uses_the_original_name() {
    let mut net = Net::new(wk_for(Some("hs.test:PORT")));
    let p = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    let port = p.addr().port();
    // The .well-known handler above cannot know the port; serve it here.
    net.wk.set_handler(Handler::routes().route(
        "/.well-known/matrix/server",
        Scripted::json(serde_json::json!({ "m.server": format!("hs.test:{port}") })),
    ));
    net.zone(
        Zone::new()
            .a("example.test", net.wk_ip)
            .a("hs.test", ip_of(&p)),
    );
    net.resolver_cfg.timeout = Duration::from_secs(10);
    let (rec, key) = signed_get(&net, "example.test", &p);
    assert_eq!(rec.sni.as_deref(), Some("hs.test"));
    assert_eq!(
        rec.host.as_deref(),
        Some(format!("hs.test:{port}").as_str())
    );
    check_xmatrix(&rec, &key, "example.test");
}

#[test]
fn step3_3_srv_target_and_port_never_reach_sni_or_host() {
    let net = Net::new(wk_for(Some("hs.test")));
    let p = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.zone(
        Zone::new()
            .a("example.test", net.wk_ip)
            .srv(
                "_matrix-fed._tcp.hs.test",
                10,
                5,
                p.addr().port(),
                "target.other.test",
            )
            .a("target.other.test", ip_of(&p)),
    );
    let (rec, key) = signed_get(&net, "example.test", &p);
    assert_eq!(rec.sni.as_deref(), Some("hs.test"));
    assert_eq!(rec.host.as_deref(), Some("hs.test"), "no SRV port in Host");
    assert_eq!(rec.local, p.addr());
    check_xmatrix(&rec, &key, "example.test");
}

#[test]
fn step4_srv_without_delegation_uses_the_server_name() {
    let net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["example.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.zone(
        Zone::new()
            .a("example.test", net.wk_ip)
            .srv(
                "_matrix-fed._tcp.example.test",
                10,
                5,
                p.addr().port(),
                "target.other.test",
            )
            .a("target.other.test", ip_of(&p)),
    );
    let (rec, key) = signed_get(&net, "example.test", &p);
    assert_eq!(rec.sni.as_deref(), Some("example.test"));
    assert_eq!(rec.host.as_deref(), Some("example.test"));
    check_xmatrix(&rec, &key, "example.test");
}

#[test]
fn step6_default_port_uses_the_server_name() {
    let mut net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["example.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.resolver_cfg.default_port = p.addr().port();
    net.zone(Zone::new().a("example.test", ip_of(&p)));
    // .well-known goes to the wk server's port on the peer's address: refused.
    let (rec, _) = signed_get(&net, "example.test", &p);
    assert_eq!(rec.sni.as_deref(), Some("example.test"));
    assert_eq!(rec.host.as_deref(), Some("example.test"));
}

#[test]
fn http2_sends_the_host_as_authority_and_connections_are_pooled() {
    let net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.zone(Zone::new().a("hs.test", ip_of(&p)));
    let server = name(&format!("hs.test:{}", p.addr().port()));
    let client = net.client(None);
    let rt = rt();
    for _ in 0..3 {
        let r = rt.block_on(client.get(&server, VERSION)).unwrap();
        assert_eq!(r.conn.alpn.as_deref(), Some("h2"));
    }
    let reqs = only(p.requests(), VERSION);
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.version == http::Version::HTTP_2));
    assert!(
        reqs.iter()
            .all(|r| r.host.as_deref() == Some(server.as_str()))
    );
    assert_eq!(p.handshakes().len(), 1, "one pooled connection");
}

#[test]
fn srv_fallback_to_the_next_target_on_connect_failure() {
    let net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["example.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.zone(
        Zone::new()
            .a("example.test", net.wk_ip)
            .srv("_matrix-fed._tcp.example.test", 10, 0, 1, "dead.other.test")
            .srv(
                "_matrix-fed._tcp.example.test",
                20,
                0,
                p.addr().port(),
                "live.other.test",
            )
            .a("dead.other.test", homeport_test_support::next_loopback())
            .a("live.other.test", ip_of(&p)),
    );
    let (rec, _) = signed_get(&net, "example.test", &p);
    assert_eq!(rec.host.as_deref(), Some("example.test"));
}

/// Each of these certificates must be refused for `hs.test`.
fn bad_certs(ca: &TestCa) -> Vec<(&'static str, homeport_test_support::TestCert)> {
    let other_ca = TestCa::new("untrusted CA").unwrap();
    vec![
        (
            "valid only for the SRV target",
            ca.issue(&["target.other.test"]).unwrap(),
        ),
        (
            "expired",
            ca.issue_with(&["hs.test"], IssueOpts::expired()).unwrap(),
        ),
        ("self-signed", self_signed(&["hs.test"]).unwrap()),
        ("wrong name", ca.issue(&["noths.test"]).unwrap()),
        ("untrusted CA", other_ca.issue(&["hs.test"]).unwrap()),
        (
            "CN only, no SAN",
            ca.issue_with(&[], IssueOpts::valid().common_name("hs.test"))
                .unwrap(),
        ),
    ]
}

#[test]
fn bad_certificates_are_rejected_unless_an_escape_is_configured() {
    let net = Net::new(wk_for(Some("hs.test")));
    for (what, cert) in bad_certs(&net.ca) {
        let p = peer(cert, key_server(serde_json::json!({})));
        net.zone(
            Zone::new()
                .a("example.test", net.wk_ip)
                .srv(
                    "_matrix-fed._tcp.hs.test",
                    10,
                    5,
                    p.addr().port(),
                    "target.other.test",
                )
                .a("target.other.test", ip_of(&p)),
        );
        let rt = rt();
        let err = rt
            .block_on(net.client(None).get(&name("example.test"), VERSION))
            .unwrap_err();
        assert_eq!(err.phase(), "tls", "{what}: {err}");
        assert!(matches!(err, FederationError::Connect { .. }), "{what}");
        assert_eq!(
            p.request_count(),
            0,
            "{what}: nothing sent over a bad certificate"
        );

        // federation_verify_certificates: false
        let mut open = net.tls.clone();
        open.verify_certificates = false;
        let r = rt.block_on(
            net.client_with(open, None)
                .get(&name("example.test"), VERSION),
        );
        assert!(r.is_ok(), "{what} with verification off: {r:?}");
        // federation_certificate_verification_whitelist
        let mut listed = net.tls.clone();
        listed.verification_whitelist = vec!["*.test".into()];
        let r = rt.block_on(
            net.client_with(listed, None)
                .get(&name("example.test"), VERSION),
        );
        assert!(r.is_ok(), "{what} whitelisted: {r:?}");
        // SNI is still sent with verification off.
        assert!(
            p.handshakes()
                .iter()
                .all(|h| h.sni.as_deref() == Some("hs.test"))
        );
    }
}

#[test]
fn certificate_error_says_which_names_the_certificate_is_valid_for() {
    let net = Net::new(wk_for(Some("hs.test")));
    let p = peer(
        net.ca.issue(&["target.other.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.zone(
        Zone::new()
            .a("example.test", net.wk_ip)
            .srv(
                "_matrix-fed._tcp.hs.test",
                10,
                5,
                p.addr().port(),
                "target.other.test",
            )
            .a("target.other.test", ip_of(&p)),
    );
    let err = rt()
        .block_on(net.client(None).get(&name("example.test"), VERSION))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("target.other.test"), "{text}");
    assert!(text.contains("hs.test"), "{text}");
}

#[test]
fn response_bodies_are_capped() {
    let net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        Scripted::new(200).with_body(homeport_test_support::Body::Endless {
            chunk: bytes::Bytes::new(),
        }),
    );
    net.zone(Zone::new().a("hs.test", ip_of(&p)));
    let mut client_cfg_net = net;
    client_cfg_net.resolver_cfg.timeout = Duration::from_secs(5);
    let resolver = homeport_resolve::Resolver::new(client_cfg_net.resolver_cfg.clone()).unwrap();
    let mut cfg = homeport_federation::ClientConfig::new(client_cfg_net.tls.clone());
    cfg.max_response_bytes = 100_000;
    let client = homeport_federation::FederationClient::new(resolver, cfg, None);
    let err = rt()
        .block_on(client.get(&name(&format!("hs.test:{}", p.addr().port())), VERSION))
        .unwrap_err();
    assert!(
        matches!(err, FederationError::TooLarge { limit: 100_000, .. }),
        "{err}"
    );
}

#[test]
fn a_peer_that_never_answers_is_bounded_by_the_request_timeout() {
    let net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        Scripted::delay(Duration::from_secs(60), Scripted::ok()),
    );
    net.zone(Zone::new().a("hs.test", ip_of(&p)));
    let resolver = homeport_resolve::Resolver::new(net.resolver_cfg.clone()).unwrap();
    let mut cfg = homeport_federation::ClientConfig::new(net.tls.clone());
    cfg.request_timeout = Duration::from_millis(700);
    let client = homeport_federation::FederationClient::new(resolver, cfg, None);
    let start = std::time::Instant::now();
    let err = rt()
        .block_on(client.get(&name(&format!("hs.test:{}", p.addr().port())), VERSION))
        .unwrap_err();
    assert!(matches!(err, FederationError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn resolution_failure_is_reported_in_the_resolve_phase() {
    let net = Net::new(wk_for(None));
    net.zone(Zone::new().srv("_matrix-fed._tcp.gone.test", 0, 0, 0, "."));
    let err = rt()
        .block_on(net.client(None).get(&name("gone.test"), VERSION))
        .unwrap_err();
    assert_eq!(err.phase(), "resolve");
    let _ = Step::Srv;
}

#[test]
fn concurrent_requests_share_one_http2_connection() {
    let net = Net::new(wk_for(None));
    let p = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        key_server(serde_json::json!({})),
    );
    net.zone(Zone::new().a("hs.test", ip_of(&p)));
    let server = name(&format!("hs.test:{}", p.addr().port()));
    let client = net.client(None);
    let rt = rt();
    // Warm: one connection in the pool.
    rt.block_on(client.get(&server, VERSION)).unwrap();
    rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..32 {
            let c = client.clone();
            let s = server.clone();
            hs.push(tokio::spawn(async move {
                c.get(&s, VERSION).await.map(|r| r.status.as_u16())
            }));
        }
        for h in hs {
            assert_eq!(h.await.unwrap().unwrap(), 200);
        }
    });
    assert_eq!(
        p.handshakes().len(),
        1,
        "32 concurrent requests multiplexed on the pooled h2 connection"
    );
}
