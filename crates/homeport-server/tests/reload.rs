//! Live certificate reload under load: a pool of clients keeps requesting
//! over TLS while the files are replaced and reloaded 50 times (valid, then
//! corrupt, then a key that does not match, then valid again). No request
//! fails, the served certificate is the expected one after each step, and
//! bad files are refused with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use homeport_core::ServerName;
use homeport_core::signing::SigningKey;
use homeport_server::certs::{CertError, ReloadOutcome, ReloadableCert};
use homeport_server::keyserver::KeyServer;
use homeport_server::listen::{self, Listener};
use homeport_server::metrics::Metrics;
use homeport_server::routes::{self, AppState, Resources, WellKnownDocs};
use homeport_test_support::{TestCa, TestCert, next_loopback};
use rustls::pki_types::ServerName as TlsName;
use sha2::Digest as _;

fn write(dir: &std::path::Path, cert: &TestCert) {
    // Write via temp + rename so a reader never sees half a file.
    for (name, text) in [("tls.crt", cert.chain_pem()), ("tls.key", cert.key_pem())] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn leaf_sha(c: &TestCert) -> [u8; 32] {
    sha2::Sha256::digest(c.leaf().as_ref()).into()
}

async fn served_sha(addr: SocketAddr, ca: &TestCa) -> [u8; 32] {
    let cfg = homeport_test_support::client_config(ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(TlsName::try_from("hs.test").unwrap(), tcp)
        .await
        .unwrap();
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    sha2::Sha256::digest(certs[0].as_ref()).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request() {
    let ca = TestCa::new("reload CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(&["hs.test"]).unwrap();
    write(dir.path(), &first);
    let cert = Arc::new(
        ReloadableCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap(),
    );
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        keys: Arc::new(KeyServer::new(
            ServerName::parse("hs.test").unwrap(),
            vec![SigningKey::generate("a_1").unwrap()],
            vec![],
            Duration::from_secs(86_400),
        )),
        cert: Some(cert.clone()),
        well_known: WellKnownDocs::default(),
        notary: None,
        proxy: None,
        synapse_admin: false,
        metrics: metrics.clone(),
    });
    let router = routes::router(
        state,
        Resources {
            federation: true,
            ..Resources::default()
        },
    );
    let addr = SocketAddr::new(IpAddr::V4(next_loopback()), 0);
    let socket = listen::bind(addr).unwrap();
    let addr = socket.local_addr().unwrap();
    let tls = homeport_server::certs::server_config(cert.clone()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(listen::serve(
        vec![Listener {
            name: addr.to_string(),
            socket,
            tls: Some(tls),
            router,
            x_forwarded: false,
            trusted_proxies: vec![],
        }],
        stop_rx,
        Duration::from_secs(5),
    ));

    // Client pool: 8 tasks, each with its own TLS connections, requesting
    // the key document until told to stop.
    let running = Arc::new(AtomicBool::new(true));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (running, ok, failed) = (running.clone(), ok.clone(), failed.clone());
        let cfg = homeport_test_support::client_config(&ca).unwrap();
        clients.push(tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                let res: Result<(), String> = async {
                    let tcp = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(TlsName::try_from("hs.test").unwrap(), tcp)
                        .await
                        .map_err(|e| e.to_string())?;
                    let (mut s, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                            .await
                            .map_err(|e| e.to_string())?;
                    tokio::spawn(conn);
                    // A few requests per connection: open connections keep
                    // working across swaps.
                    for _ in 0..(1 + i % 3) {
                        let req = http::Request::get("/_matrix/key/v2/server")
                            .header("host", "hs.test")
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap();
                        let r = s.send_request(req).await.map_err(|e| e.to_string())?;
                        if r.status() != 200 {
                            return Err(format!("status {}", r.status()));
                        }
                    }
                    Ok(())
                }
                .await;
                match res {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("client error: {e}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }

    let mut expected = leaf_sha(&first);
    let mut rejected = 0;
    for round in 0..50 {
        match round % 4 {
            0 | 3 => {
                let next = ca.issue(&["hs.test"]).unwrap();
                write(dir.path(), &next);
                let r = cert.reload().unwrap();
                assert!(matches!(r, ReloadOutcome::Swapped { .. }), "{r:?}");
                expected = leaf_sha(&next);
            }
            1 => {
                std::fs::write(
                    dir.path().join("tls.crt.tmp"),
                    "-----BEGIN CERTIFICATE-----\ngarbage\n",
                )
                .unwrap();
                std::fs::rename(dir.path().join("tls.crt.tmp"), dir.path().join("tls.crt"))
                    .unwrap();
                let e = cert.reload().unwrap_err();
                assert!(
                    matches!(e, CertError::Parse { .. } | CertError::NoCertificate { .. }),
                    "{e}"
                );
                rejected += 1;
            }
            _ => {
                // A valid certificate with someone else's key.
                let a = ca.issue(&["hs.test"]).unwrap();
                let b = ca.issue(&["hs.test"]).unwrap();
                std::fs::write(dir.path().join("tls.crt"), a.chain_pem()).unwrap();
                std::fs::write(dir.path().join("tls.key"), b.key_pem()).unwrap();
                let e = cert.reload().unwrap_err();
                assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
                assert!(e.to_string().contains("does not match"), "{e}");
                rejected += 1;
            }
        }
        metrics.reload(round % 4 == 0 || round % 4 == 3);
        assert_eq!(
            served_sha(addr, &ca).await,
            expected,
            "round {round}: the expected certificate is served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.store(false, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    stop_tx.send(true).unwrap();
    server.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no failed request");
    assert!(
        ok.load(Ordering::SeqCst) > 50,
        "the pool kept requesting: {}",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(rejected, 25);
}

#[test]
fn expired_and_mismatched_pairs_are_refused_at_load() {
    let ca = TestCa::new("reload CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let expired = ca
        .issue_with(&["hs.test"], homeport_test_support::IssueOpts::expired())
        .unwrap();
    write(dir.path(), &expired);
    let e =
        ReloadableCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap_err();
    assert!(matches!(e, CertError::Expired { .. }), "{e}");
    let e = ReloadableCert::load(&dir.path().join("nope.crt"), &dir.path().join("tls.key"))
        .unwrap_err();
    assert!(e.to_string().starts_with("cannot read"), "{e}");
    std::fs::write(dir.path().join("empty.crt"), "").unwrap();
    let e = ReloadableCert::load(&dir.path().join("empty.crt"), &dir.path().join("tls.key"))
        .unwrap_err();
    assert!(matches!(e, CertError::NoCertificate { .. }), "{e}");
}

#[test]
fn file_changes_are_detected() {
    let ca = TestCa::new("reload CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &ca.issue(&["hs.test"]).unwrap());
    let c = ReloadableCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    assert!(!c.files_changed());
    std::thread::sleep(Duration::from_millis(20));
    write(dir.path(), &ca.issue(&["hs.test", "other.test"]).unwrap());
    assert!(c.files_changed());
    c.reload().unwrap();
    assert!(!c.files_changed());
    assert!(c.current().names.contains(&"other.test".to_owned()));
}
