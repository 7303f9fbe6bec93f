//! The HTTPS peer and certificates, checked with a real client:
//! tokio-rustls plus hyper, trusting the test CA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeport_test_support::{
    Body, Handler, HttpsServer, IssueOpts, Recorded, Scripted, TestCa, TlsSetup, client_config,
    client_config_with, client_roots, next_loopback, self_signed,
};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(10);

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// One HTTP/1.1 GET over a fresh TLS connection.
async fn get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    host: &str,
    target: &str,
) -> Result<Reply, String> {
    timeout(WAIT, async {
        let tls = tls_connect(addr, config, name)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send_h1(TokioIo::new(tls), host, target).await
    })
    .await
    .map_err(|_| "timed out".to_owned())?
}

async fn send_h1<I>(io: I, host: &str, target: &str) -> Result<Reply, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let request = Request::get(target)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, 1 << 20)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn dns_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

fn bind() -> SocketAddr {
    (IpAddr::V4(next_loopback()), 0).into()
}

#[tokio::test]
async fn sni_is_recorded_for_names_and_absent_for_ip_literals() {
    let ca = TestCa::new("test CA").unwrap();
    let ip = next_loopback();
    let cert = ca.issue(&["matrix.test", &ip.to_string()]).unwrap();
    let server = HttpsServer::start((ip, 0).into(), cert, Scripted::text(200, "hi")).unwrap();
    let config = client_config(&ca).unwrap();

    let reply = get(
        server.addr(),
        config.clone(),
        dns_name("matrix.test"),
        "matrix.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "hi");
    let reply = get(
        server.addr(),
        config,
        ServerName::IpAddress(IpAddr::V4(ip).into()),
        &ip.to_string(),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);

    let handshakes = server.wait_for_handshakes(2, WAIT).await;
    assert_eq!(handshakes.len(), 2);
    assert_eq!(handshakes[0].sni.as_deref(), Some("matrix.test"));
    assert!(handshakes[0].ok);
    assert_eq!(handshakes[1].sni, None);
    assert!(handshakes[1].ok);
    assert_eq!(handshakes[0].offered_alpn, vec![b"http/1.1".to_vec()]);

    let requests = server.requests();
    assert_eq!(requests[0].sni.as_deref(), Some("matrix.test"));
    assert_eq!(requests[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(requests[1].sni, None);
    assert_eq!(requests[1].local, server.addr());
    // The kernel picks the source address (usually 127.0.0.1).
    assert!(requests[1].peer.ip().is_loopback());
}

#[tokio::test]
async fn host_header_and_exact_target_are_recorded() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["example.test"]).unwrap(),
        Handler::routes().route(
            "/_matrix/key/v2/server",
            Scripted::json(serde_json::json!({"ok": true})),
        ),
    )
    .unwrap();
    let config = client_config(&ca).unwrap();
    let reply = get(
        server.addr(),
        config.clone(),
        dns_name("example.test"),
        "example.test:8448",
        "/_matrix/key/v2/server",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap(),
        serde_json::json!({"ok": true})
    );
    let reply = get(
        server.addr(),
        config,
        dns_name("example.test"),
        "example.test",
        "/a/../b//c?x=%2F&y",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let requests: Vec<Recorded> = server.requests();
    assert_eq!(requests[0].host.as_deref(), Some("example.test:8448"));
    assert_eq!(requests[0].method, http::Method::GET);
    assert_eq!(requests[0].version, Version::HTTP_11);
    assert_eq!(requests[1].host.as_deref(), Some("example.test"));
    assert_eq!(requests[1].uri, "/a/../b//c?x=%2F&y");
    assert_eq!(requests[1].path(), "/a/../b//c");
    assert_eq!(requests[1].query(), Some("x=%2F&y"));
}

#[tokio::test]
async fn routes_can_depend_on_the_host_header() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["example.test"]).unwrap(),
        Handler::routes()
            .route_host("example.test", "/v", Scripted::text(200, "vhost"))
            .route("/v", Scripted::text(421, "misdirected"))
            .fallback(Scripted::text(418, "fallback")),
    )
    .unwrap();
    let config = client_config(&ca).unwrap();
    let name = dns_name("example.test");
    let r = get(
        server.addr(),
        config.clone(),
        name.clone(),
        "EXAMPLE.test",
        "/v",
    )
    .await
    .unwrap();
    assert_eq!(r.body, "vhost");
    let r = get(
        server.addr(),
        config.clone(),
        name.clone(),
        "example.test:443",
        "/v",
    )
    .await
    .unwrap();
    assert_eq!(r.status.as_u16(), 421);
    let r = get(server.addr(), config, name, "example.test", "/other")
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 418);
}

#[tokio::test]
async fn certificates_are_chosen_by_sni() {
    let ca = TestCa::new("test CA").unwrap();
    let setup = TlsSetup::per_sni(
        vec![
            ("one.test", ca.issue(&["one.test"]).unwrap()),
            ("*.two.test", ca.issue(&["*.two.test"]).unwrap()),
        ],
        Some(ca.issue(&["default.test"]).unwrap()),
    );
    let server = HttpsServer::start(bind(), setup, Scripted::ok()).unwrap();
    let config = client_config(&ca).unwrap();
    for name in ["one.test", "a.two.test", "default.test"] {
        get(server.addr(), config.clone(), dns_name(name), name, "/")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // An unknown SNI gets the default certificate, which does not match.
    let err = get(
        server.addr(),
        config,
        dns_name("three.test"),
        "three.test",
        "/",
    )
    .await
    .err()
    .unwrap();
    assert!(err.contains("certificate"), "{err}");

    let without_default =
        TlsSetup::per_sni(vec![("one.test", ca.issue(&["one.test"]).unwrap())], None);
    let strict = HttpsServer::start(bind(), without_default, Scripted::ok()).unwrap();
    assert!(
        get(
            strict.addr(),
            client_config(&ca).unwrap(),
            dns_name("x.test"),
            "x.test",
            "/"
        )
        .await
        .is_err()
    );
    let hs = strict.wait_for_handshakes(1, WAIT).await;
    assert_eq!(hs[0].sni.as_deref(), Some("x.test"));
    assert!(!hs[0].ok);
}

#[tokio::test]
async fn failed_handshakes_are_recorded() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        self_signed(&["selfsigned.test"]).unwrap(),
        Scripted::ok(),
    )
    .unwrap();
    let err = get(
        server.addr(),
        client_config(&ca).unwrap(),
        dns_name("selfsigned.test"),
        "selfsigned.test",
        "/",
    )
    .await
    .err()
    .unwrap();
    assert!(err.contains("certificate"), "{err}");
    let hs = server.wait_for_handshakes(1, WAIT).await;
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].sni.as_deref(), Some("selfsigned.test"));
    assert!(!hs[0].ok);
    assert!(hs[0].error.is_some());
    assert!(server.requests().is_empty());

    // Plain HTTP to a TLS port is recorded as a failed handshake too.
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let _ = timeout(WAIT, send_h1(TokioIo::new(tcp), "x", "/"))
        .await
        .unwrap();
    let hs = server.wait_for_handshakes(2, WAIT).await;
    assert_eq!(hs.len(), 2);
    assert!(!hs[1].ok);
}

#[tokio::test]
async fn expired_not_yet_valid_and_wrong_name_certificates_are_rejected() {
    let ca = TestCa::new("test CA").unwrap();
    let config = client_config(&ca).unwrap();
    for (cert, expect) in [
        (
            ca.issue_with(&["e.test"], IssueOpts::expired()).unwrap(),
            "expired",
        ),
        (
            ca.issue_with(&["e.test"], IssueOpts::not_yet_valid())
                .unwrap(),
            "not valid yet",
        ),
        (ca.issue(&["other.test"]).unwrap(), "not valid for name"),
        (
            ca.issue_with(&[], IssueOpts::valid().common_name("e.test"))
                .unwrap(),
            "not valid for name",
        ),
    ] {
        let server = HttpsServer::start(bind(), cert, Scripted::ok()).unwrap();
        let err = get(
            server.addr(),
            config.clone(),
            dns_name("e.test"),
            "e.test",
            "/",
        )
        .await
        .err()
        .unwrap();
        assert!(err.contains(expect), "{err} (wanted {expect})");
    }
    let server = HttpsServer::start(
        bind(),
        ca.issue_with(
            &["e.test"],
            IssueOpts::valid_around_now(Duration::from_secs(60), Duration::from_secs(3600)),
        )
        .unwrap(),
        Scripted::ok(),
    )
    .unwrap();
    get(server.addr(), config, dns_name("e.test"), "e.test", "/")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_chain_needs_its_intermediate() {
    let root = TestCa::new("root").unwrap();
    let inter = root.intermediate("intermediate").unwrap();
    let leaf = inter.issue(&["chain.test", "*.chain.test"]).unwrap();
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(leaf.chain_pem().matches("BEGIN CERTIFICATE").count(), 2);
    let config = client_config(&root).unwrap();

    let full = HttpsServer::start(bind(), leaf.clone(), Scripted::ok()).unwrap();
    get(
        full.addr(),
        config.clone(),
        dns_name("x.chain.test"),
        "x.chain.test",
        "/",
    )
    .await
    .unwrap();
    let partial = HttpsServer::start(bind(), leaf.without_intermediates(), Scripted::ok()).unwrap();
    let err = get(
        partial.addr(),
        config,
        dns_name("chain.test"),
        "chain.test",
        "/",
    )
    .await
    .err()
    .unwrap();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn slow_bodies_trickle() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["slow.test"]).unwrap(),
        Scripted::ok().with_body(Body::Slow {
            chunk: Bytes::from_static(b"ab"),
            every: Duration::from_millis(150),
            count: 4,
        }),
    )
    .unwrap();
    let started = Instant::now();
    let reply = get(
        server.addr(),
        client_config(&ca).unwrap(),
        dns_name("slow.test"),
        "slow.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!(reply.body, "abababab");
    assert!(started.elapsed() >= Duration::from_millis(600));

    // A client with a short deadline gives up mid-body.
    let slower = timeout(
        Duration::from_millis(300),
        get(
            server.addr(),
            client_config(&ca).unwrap(),
            dns_name("slow.test"),
            "slow.test",
            "/",
        ),
    )
    .await;
    assert!(slower.is_err());
}

#[tokio::test]
async fn delayed_responses_wait_before_the_headers() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["delay.test"]).unwrap(),
        Scripted::delay(Duration::from_millis(300), Scripted::text(200, "late")),
    )
    .unwrap();
    let started = Instant::now();
    let reply = get(
        server.addr(),
        client_config(&ca).unwrap(),
        dns_name("delay.test"),
        "delay.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!(reply.body, "late");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The request is recorded before the delay.
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn redirects_carry_their_location() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["r.test"]).unwrap(),
        Handler::routes()
            .route(
                "/.well-known/matrix/server",
                Scripted::redirect(308, "https://r.test/next"),
            )
            .route(
                "/next",
                Scripted::redirect(302, "/.well-known/matrix/server"),
            ),
    )
    .unwrap();
    let config = client_config(&ca).unwrap();
    let reply = get(
        server.addr(),
        config.clone(),
        dns_name("r.test"),
        "r.test",
        "/.well-known/matrix/server",
    )
    .await
    .unwrap();
    assert_eq!(reply.status.as_u16(), 308);
    assert_eq!(reply.headers["location"], "https://r.test/next");
    let reply = get(server.addr(), config, dns_name("r.test"), "r.test", "/next")
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 302);
    assert_eq!(reply.headers["location"], "/.well-known/matrix/server");
}

#[tokio::test]
async fn close_drops_the_connection_without_a_response() {
    let ca = TestCa::new("test CA").unwrap();
    let server =
        HttpsServer::start(bind(), ca.issue(&["c.test"]).unwrap(), Scripted::close()).unwrap();
    let err = get(
        server.addr(),
        client_config(&ca).unwrap(),
        dns_name("c.test"),
        "c.test",
        "/",
    )
    .await
    .err()
    .unwrap();
    assert!(err.starts_with("request"), "{err}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn endless_bodies_need_a_client_cap() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["big.test"]).unwrap(),
        Scripted::ok().with_body(Body::Endless {
            chunk: Bytes::new(),
        }),
    )
    .unwrap();
    // `get` caps bodies at 1 MiB.
    let err = get(
        server.addr(),
        client_config(&ca).unwrap(),
        dns_name("big.test"),
        "big.test",
        "/",
    )
    .await
    .err()
    .unwrap();
    assert!(err.starts_with("body"), "{err}");
}

#[tokio::test]
async fn aborted_bodies_fail_on_the_client() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["abort.test"]).unwrap(),
        Scripted::ok()
            .header("content-length", "100")
            .with_body(Body::Abort {
                sent: Bytes::from_static(b"partial"),
            }),
    )
    .unwrap();
    let err = get(
        server.addr(),
        client_config(&ca).unwrap(),
        dns_name("abort.test"),
        "abort.test",
        "/",
    )
    .await
    .err()
    .unwrap();
    assert!(err.starts_with("body"), "{err}");
}

#[tokio::test]
async fn handlers_can_be_replaced_and_sequenced() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["h.test"]).unwrap(),
        Handler::sequence(vec![
            Scripted::text(200, "first"),
            Scripted::text(503, "then"),
        ]),
    )
    .unwrap();
    let config = client_config(&ca).unwrap();
    let name = dns_name("h.test");
    let bodies = [
        get(server.addr(), config.clone(), name.clone(), "h.test", "/")
            .await
            .unwrap()
            .body,
        get(server.addr(), config.clone(), name.clone(), "h.test", "/")
            .await
            .unwrap()
            .body,
        get(server.addr(), config.clone(), name.clone(), "h.test", "/")
            .await
            .unwrap()
            .body,
    ];
    assert_eq!(bodies, ["first", "then", "then"]);
    server.set_handler(Handler::new(|r: &Recorded| Scripted::text(200, r.path())));
    let reply = get(server.addr(), config, name, "h.test", "/echo")
        .await
        .unwrap();
    assert_eq!(reply.body, "/echo");
}

#[tokio::test]
async fn http2_is_served_and_authority_becomes_host() {
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(
        bind(),
        ca.issue(&["h2.test"]).unwrap(),
        Scripted::text(200, "two"),
    )
    .unwrap();
    let config = client_config_with(client_roots(&ca), &[b"h2"]).unwrap();
    let reply = timeout(WAIT, async {
        let tls = tls_connect(server.addr(), config, dns_name("h2.test"))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::get("https://h2.test:8448/x?y")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .unwrap();
    assert_eq!(reply, "two");
    let r = &server.requests()[0];
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.host.as_deref(), Some("h2.test:8448"));
    assert_eq!(r.uri, "/x?y");
}

#[tokio::test]
async fn plain_http_servers_work_too() {
    let server = HttpsServer::start(bind(), TlsSetup::Plain, Scripted::text(200, "plain")).unwrap();
    assert!(server.url("/x").starts_with("http://"));
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let reply = timeout(WAIT, send_h1(TokioIo::new(tcp), "plain.test", "/x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.body, "plain");
    let r = &server.requests()[0];
    assert_eq!(r.sni, None);
    assert_eq!(r.host.as_deref(), Some("plain.test"));
    assert!(server.handshakes().is_empty());
}

#[tokio::test]
async fn fixed_ports_get_their_own_loopback_address() {
    let ca = TestCa::new("test CA").unwrap();
    let a =
        HttpsServer::start_on_any_loopback(8448, ca.issue(&["a.test"]).unwrap(), Scripted::ok())
            .unwrap();
    let b =
        HttpsServer::start_on_any_loopback(8448, ca.issue(&["b.test"]).unwrap(), Scripted::ok())
            .unwrap();
    assert_eq!(a.addr().port(), 8448);
    assert_eq!(b.addr().port(), 8448);
    assert_ne!(a.addr().ip(), b.addr().ip());
    let addr = a.addr();
    a.stop();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[test]
fn pem_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("files CA").unwrap();
    let ca_path = ca.write_pem(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca.cert_pem());
    let cert = ca.issue(&["files.test", "127.0.0.1", "[::1]"]).unwrap();
    let (crt, key) = cert.write_pem(dir.path(), "files.test").unwrap();
    assert!(
        std::fs::read_to_string(crt)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(
        std::fs::read_to_string(key)
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_eq!(client_roots(&ca).len(), 1);
    assert!(cert.server_config().is_ok());
}

#[tokio::test]
async fn blocking_tests_still_get_answers() {
    // The servers run on their own threads: a test that blocks its own
    // runtime thread (e.g. running the CLI) is still served.
    let ca = TestCa::new("test CA").unwrap();
    let server = HttpsServer::start(bind(), TlsSetup::Plain, Scripted::text(200, "ok")).unwrap();
    let addr = server.addr();
    let text = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .join()
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"));
    drop(ca);
}
