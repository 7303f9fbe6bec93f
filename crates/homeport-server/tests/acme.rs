//! ACME against a real ACME server: Debian's `pebble` (installed by
//! `.ci/run`), one per test on its own 127.0.0.x, with its certificate
//! made by a throwaway CA, `PEBBLE_VA_NOSLEEP=1`, the default 5 % badNonce
//! rejection, and `-dnsserver` pointing at an in-process DNS server whose
//! A records send pebble's validation to homeport on the same address.
//! Never the system resolver. Every test is bounded in time and stops the
//! pebble it started (by PID, on drop).
//!
//! Without `pebble` on PATH the tests say so on stderr and pass (CI has it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use homeport_core::signing::{self, SigningKey};
use homeport_server::acme::{self, AcmeTuning, FailureKind};
use homeport_server::config;
use homeport_server::serve::{self, Running, StartOptions};
use homeport_test_support::pebble::{Pebble, available as pebble_available, https_get};
use homeport_test_support::{DnsServer, IssueOpts, RecordType, TestCa, Zone, next_loopback};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName as TlsName};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DOMAIN: &str = "hs1.acme.test";
/// Upper bound on any one test.
const TEST_BUDGET: Duration = Duration::from_secs(120);

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tuning() -> AcmeTuning {
    AcmeTuning {
        request_timeout: Duration::from_secs(5),
        validation_timeout: Duration::from_secs(20),
        order_timeout: Duration::from_secs(40),
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(2),
        lock_retry: Duration::from_millis(300),
        request_poll: Duration::from_millis(200),
        shared_poll: Duration::from_millis(300),
    }
}

/// The leaf homeport serves at `addr` for SNI `DOMAIN`, verified against
/// `roots`.
async fn served_leaf(addr: SocketAddr, roots: &RootCertStore) -> Result<Vec<u8>, String> {
    let cfg = homeport_test_support::client_config_with(roots.clone(), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(cfg).connect(TlsName::try_from(DOMAIN).unwrap(), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?;
    Ok(certs[0].as_ref().to_vec())
}

/// Wait until `addr` serves a certificate `roots` trust, other than `not`.
async fn wait_served(
    addr: SocketAddr,
    roots: &RootCertStore,
    not: Option<&[u8]>,
    within: Duration,
    why: &dyn Fn() -> String,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        match served_leaf(addr, roots).await {
            Ok(l) if Some(l.as_slice()) != not => return l,
            _ if Instant::now() > deadline => {
                panic!("no new certificate within {within:?}\n{}", why())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The new certificate (not `not`) that `first` serves within `within`,
/// once `second` serves the same one too (within 10 s more).
async fn wait_served_by_both(
    first: SocketAddr,
    second: SocketAddr,
    roots: &RootCertStore,
    not: Option<&[u8]>,
    within: Duration,
    why: &dyn Fn() -> String,
) -> Vec<u8> {
    let leaf = wait_served(first, roots, not, within, why).await;
    let other = wait_served(second, roots, not, Duration::from_secs(10), why).await;
    assert_eq!(leaf, other, "both instances serve the one certificate");
    leaf
}

async fn wait_for(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> bool,
    why: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            why()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leaf_names(der: &[u8]) -> Vec<String> {
    homeport_server::certs::leaf_facts(&CertificateDer::from(der.to_vec()))
        .unwrap()
        .2
}

fn sha(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

struct Site {
    dir: tempfile::TempDir,
    ip: Ipv4Addr,
    tls_port: u16,
    /// The http-01 responder's port (acme.port).
    http_port: u16,
    /// A plain listener of the config.
    plain_port: u16,
    /// acme.port is the plain listener's: no separate responder.
    plain_is_responder: bool,
}

impl Site {
    fn new() -> Site {
        let ip = next_loopback();
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("a_1").unwrap();
        std::fs::write(
            dir.path().join("hs.signing.key"),
            signing::format_key_file(&[key]),
        )
        .unwrap();
        Site {
            ip,
            tls_port: free_port(ip),
            http_port: free_port(ip),
            plain_port: free_port(ip),
            plain_is_responder: false,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn acme_port(&self) -> u16 {
        if self.plain_is_responder {
            self.plain_port
        } else {
            self.http_port
        }
    }

    fn plain_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.plain_port)
    }

    fn tls_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.tls_port)
    }

    fn config(&self, pebble: &Pebble, challenge: &str, threshold: &str) -> config::Config {
        self.config_for(
            &pebble.directory(),
            &pebble.wfe_ca_file,
            challenge,
            threshold,
        )
    }

    fn config_for(
        &self,
        directory: &str,
        ca_file: &Path,
        challenge: &str,
        threshold: &str,
    ) -> config::Config {
        self.config_db(
            directory,
            ca_file,
            challenge,
            threshold,
            "database: {name: sqlite3, args: {database: ':memory:'}}\n",
        )
    }

    fn config_db(
        &self,
        directory: &str,
        ca_file: &Path,
        challenge: &str,
        threshold: &str,
        database: &str,
    ) -> config::Config {
        let text = format!(
            r#"server_name: {DOMAIN}
signing_key_path: ./hs.signing.key
tls_certificate_path: ./tls.crt
tls_private_key_path: ./tls.key
listeners:
  - port: {tls}
    bind_addresses: ['{ip}']
    type: http
    tls: true
    resources: [{{names: [federation, metrics]}}]
  - port: {plain}
    bind_addresses: ['{ip}']
    type: http
    resources: [{{names: [client]}}]
acme:
  enabled: true
  url: {url}
  directory_ca_file: {ca}
  contact: ['mailto:admin@acme.test']
  account_key_file: ./acme_account.key
  reprovision_threshold: {threshold}
  challenge: {challenge}
  port: {http}
  bind_addresses: ['{ip}']
{database}"#,
            tls = self.tls_port,
            ip = self.ip,
            url = directory,
            ca = ca_file.display(),
            http = self.acme_port(),
            plain = self.plain_port,
        );
        let path = self.path("homeport.yaml");
        std::fs::write(&path, text).unwrap();
        config::load(&path).unwrap()
    }

    async fn start(&self, cfg: &config::Config) -> Running {
        serve::start_with(cfg, StartOptions { acme: tuning() })
            .await
            .unwrap()
    }

    fn state(&self) -> acme::AcmeState {
        serde_json::from_slice(
            &std::fs::read(self.path("acme_account.key.state.json")).unwrap_or_default(),
        )
        .unwrap_or_default()
    }
}

fn dns_for(ip: Ipv4Addr, target: Ipv4Addr) -> DnsServer {
    DnsServer::start(IpAddr::V4(ip), Zone::new().a(DOMAIN, target)).unwrap()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn orders(r: &Running, result: &str) -> u64 {
    r.metrics.acme_orders(result)
}

macro_rules! bounded {
    ($body:expr) => {
        tokio::time::timeout(TEST_BUDGET, $body)
            .await
            .expect("the test ran over its time budget")
    };
}

/// http-01, starting with no certificate and pebble not up yet: the
/// responder answers and TLS handshakes are refused while pending, the
/// first orders fail as unreachable, and as soon as pebble is up the
/// certificate is issued, written (key 0600) and served without restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_first_issuance() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let site = Site::new();
        let dns = dns_for(site.ip, site.ip);
        let mut pebble = Pebble::start(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.http_port,
            site.tls_port,
            None,
        );
        pebble.stop();
        let cfg = site.config(&pebble, "http-01", "30d");
        let running = site.start(&cfg).await;
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();

        // Pending: no certificate on the wire, the responder is up.
        let cert = running.cert.clone().unwrap();
        assert!(cert.is_pending());
        assert!(
            served_leaf(site.tls_addr(), &RootCertStore::empty())
                .await
                .is_err()
        );
        let resp = reqwest_plain(
            running.acme_responder_addrs[0],
            "/.well-known/acme-challenge/nope",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        // Plain listeners of the config answer the challenge path too.
        let resp = reqwest_plain(site.plain_addr(), "/.well-known/acme-challenge/nope").await;
        assert!(resp.contains("no such ACME challenge token"), "{resp}");
        wait_for(
            "an unreachable failure",
            Duration::from_secs(20),
            || orders(&running, "unreachable") > 0 && site.state().last_error.is_some(),
            &why,
        )
        .await;
        let st = site.state();
        let err = st.last_error.unwrap().failure.unwrap();
        assert_eq!(err.kind, FailureKind::Unreachable);
        assert!(!site.path("tls.crt").exists() && !site.path("tls.key").exists());

        pebble.run();
        let roots = pebble.root().await;
        let leaf = wait_served(site.tls_addr(), &roots, None, Duration::from_secs(40), &why).await;
        assert_eq!(leaf_names(&leaf), vec![DOMAIN.to_owned()]);
        assert!(!cert.is_pending());
        // On disk: the same certificate; key and account key 0600.
        let on_disk = homeport_server::certs::load_pair(
            &site.path("tls.crt"),
            &site.path("tls.key"),
            std::time::SystemTime::now(),
        )
        .unwrap();
        assert_eq!(on_disk.leaf_sha256, sha(&leaf));
        assert!(
            on_disk.chain.len() >= 2,
            "the chain includes pebble's intermediate"
        );
        assert_eq!(mode(&site.path("tls.key")), 0o600);
        assert_eq!(mode(&site.path("acme_account.key")), 0o600);
        assert_eq!(orders(&running, "ok"), 1);
        let st = site.state();
        assert!(
            st.last_success.is_some() && st.last_error.is_none(),
            "{st:?}"
        );
        assert!(st.account_url.is_some());
        assert_eq!(st.names, vec![DOMAIN.to_owned()]);
        assert!(st.next_renewal.unwrap() > st.last_success.unwrap());
        // pebble asked our DNS, never the system's.
        assert!(dns.query_count(DOMAIN, RecordType::A) > 0);
        let metrics = running.metrics.render();
        assert!(
            metrics.contains("homeport_acme_orders_total{result=\"ok\"} 1"),
            "{metrics}"
        );
        eprintln!(
            "badNonce rejections retried during this test: {}",
            running.metrics.acme_bad_nonces()
        );
        running.shutdown().await;
    });
}

async fn reqwest_plain(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// tls-alpn-01 answered on the TLS listener itself; afterwards ordinary
/// handshakes get the issued certificate and an `acme-tls/1`-only
/// handshake with no challenge pending is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_first_issuance() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let site = Site::new();
        let dns = dns_for(site.ip, site.ip);
        let pebble = Pebble::start(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.http_port,
            site.tls_port,
            None,
        );
        let cfg = site.config(&pebble, "tls-alpn-01", "30d");
        let running = site.start(&cfg).await;
        assert!(
            running.acme_responder_addrs.is_empty(),
            "no http-01 responder"
        );
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        let roots = pebble.root().await;
        let leaf = wait_served(site.tls_addr(), &roots, None, Duration::from_secs(40), &why).await;
        assert_eq!(leaf_names(&leaf), vec![DOMAIN.to_owned()]);
        assert_eq!(orders(&running, "ok"), 1);
        assert_eq!(mode(&site.path("tls.key")), 0o600);
        // A normal request over the listener works.
        let cfgc =
            homeport_test_support::client_config_with(roots.clone(), &[b"http/1.1"]).unwrap();
        let body = https_get(site.tls_addr(), DOMAIN, "/_matrix/key/v2/server", cfgc).await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        // acme-tls/1 alone, nothing pending: refused.
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        c.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(site.tls_addr())
            .await
            .unwrap();
        let r = tokio_rustls::TlsConnector::from(Arc::new(c))
            .connect(TlsName::try_from(DOMAIN).unwrap(), tcp)
            .await;
        assert!(
            r.is_err(),
            "acme-tls/1 handshake without a challenge must fail"
        );
        running.shutdown().await;
    });
}

/// A short certificate lifetime and a threshold longer than it: homeport
/// renews (at a third of the lifetime left, not continuously) and the
/// listener serves the new certificate without restart while a client
/// keeps connecting, none of whose handshakes fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_without_restart_under_load() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let site = Site::new();
        let dns = dns_for(site.ip, site.ip);
        let pebble = Pebble::start(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.http_port,
            site.tls_port,
            Some(15),
        );
        let cfg = site.config(&pebble, "http-01", "1h");
        let running = site.start(&cfg).await;
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        let roots = pebble.root().await;
        let first = wait_served(site.tls_addr(), &roots, None, Duration::from_secs(40), &why).await;
        let issued_at = Instant::now();

        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let client = {
            let (stop, ok, failed, roots, addr) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                roots.clone(),
                site.tls_addr(),
            );
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match served_leaf(addr, &roots).await {
                        Ok(l) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            if !seen.contains(&l) {
                                seen.push(l);
                            }
                        }
                        Err(e) => {
                            eprintln!("handshake failed: {e}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            })
        };
        let second = wait_served(
            site.tls_addr(),
            &roots,
            Some(&first),
            Duration::from_secs(40),
            &why,
        )
        .await;
        let after = issued_at.elapsed();
        // Renewed at about 2/3 of the 15 s lifetime, not at once.
        assert!(
            after >= Duration::from_secs(5),
            "renewed after {after:?}: too early"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let seen = client.await.unwrap();
        assert_eq!(
            failed.load(Ordering::SeqCst),
            0,
            "a handshake failed during renewal"
        );
        assert!(ok.load(Ordering::SeqCst) > 20);
        assert!(
            seen.contains(&first) && seen.contains(&second),
            "the client saw both certificates"
        );
        assert!(orders(&running, "ok") >= 2);
        let on_disk = homeport_server::certs::load_pair(
            &site.path("tls.crt"),
            &site.path("tls.key"),
            std::time::SystemTime::now(),
        )
        .unwrap();
        assert_eq!(on_disk.leaf_sha256, sha(&second));
        running.shutdown().await;
    });
}

/// The account key is created once and reused: a restarted server (and a
/// forced renewal) talks to pebble as the same account. Here acme.port is
/// a plain listener's port, so that listener answers http-01 (no separate
/// responder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_key_reused_after_restart() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let mut site = Site::new();
        site.plain_is_responder = true;
        let dns = dns_for(site.ip, site.ip);
        let pebble = Pebble::start(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.plain_port,
            site.tls_port,
            None,
        );
        let cfg = site.config(&pebble, "http-01", "30d");
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        let roots = pebble.root().await;

        let running = site.start(&cfg).await;
        assert!(running.acme_responder_addrs.is_empty());
        let first = wait_served(site.tls_addr(), &roots, None, Duration::from_secs(40), &why).await;
        let key1 = std::fs::read(site.path("acme_account.key")).unwrap();
        let account1 = site.state().account_url.unwrap();
        running.shutdown().await;

        // Restart: the valid certificate is served at once, nothing ordered.
        let running = site.start(&cfg).await;
        assert_eq!(served_leaf(site.tls_addr(), &roots).await.unwrap(), first);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(orders(&running, "ok"), 0, "not due: no order");
        // Forced renewal with the same account.
        let r = running
            .acme
            .as_ref()
            .unwrap()
            .renew_now(true)
            .await
            .unwrap();
        assert!(matches!(r, acme::Renewal::Renewed { .. }), "{r:?}");
        let second = served_leaf(site.tls_addr(), &roots).await.unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read(site.path("acme_account.key")).unwrap(), key1);
        assert_eq!(site.state().account_url.unwrap(), account1);
        running.shutdown().await;
    });
}

/// pebble dies while validating: the old certificate stays served and on
/// disk, the failure is recorded, and the retry succeeds once pebble is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_stopped_mid_order_keeps_old_certificate() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let site = Site::new();
        // DNS that never answers for the domain: validation hangs, so the
        // order is certainly in flight when pebble is stopped.
        let dns = DnsServer::start(IpAddr::V4(site.ip), Zone::new().timeout(DOMAIN)).unwrap();
        let mut pebble = Pebble::start(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.http_port,
            site.tls_port,
            None,
        );
        let old_ca = TestCa::new("old CA").unwrap();
        let old = old_ca
            .issue_with(
                &[DOMAIN],
                IssueOpts::valid_around_now(
                    Duration::from_secs(29 * 86_400),
                    Duration::from_secs(86_400),
                ),
            )
            .unwrap();
        std::fs::write(site.path("tls.crt"), old.chain_pem()).unwrap();
        std::fs::write(site.path("tls.key"), old.key_pem()).unwrap();
        let cfg = site.config(&pebble, "http-01", "30d");
        let running = site.start(&cfg).await;
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        let old_roots = homeport_test_support::client_roots(&old_ca);
        assert_eq!(
            served_leaf(site.tls_addr(), &old_roots).await.unwrap(),
            old.leaf().as_ref()
        );

        wait_for(
            "pebble to start validating",
            Duration::from_secs(20),
            || dns.queries().iter().any(|q| q.name == DOMAIN),
            &why,
        )
        .await;
        pebble.stop();
        wait_for(
            "the failure to be recorded",
            Duration::from_secs(30),
            || site.state().last_error.is_some(),
            &|| format!("{:?}", site.state()),
        )
        .await;
        let failures: u64 = ["unreachable", "timeout", "error", "invalid"]
            .iter()
            .map(|r| orders(&running, r))
            .sum();
        assert!(failures >= 1);
        assert_eq!(
            served_leaf(site.tls_addr(), &old_roots).await.unwrap(),
            old.leaf().as_ref()
        );
        assert_eq!(
            std::fs::read_to_string(site.path("tls.crt")).unwrap(),
            old.chain_pem()
        );
        assert_eq!(
            std::fs::read_to_string(site.path("tls.key")).unwrap(),
            old.key_pem()
        );
        let leftovers: Vec<_> = std::fs::read_dir(site.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        eprintln!("recorded: {:?}", site.state().last_error);

        // DNS fixed, pebble back: the retry (with back-off) succeeds.
        dns.zone().replace(Zone::new().a(DOMAIN, site.ip)).unwrap();
        pebble.run();
        let roots = pebble.root().await;
        let leaf = wait_served(site.tls_addr(), &roots, None, Duration::from_secs(40), &why).await;
        assert_eq!(leaf_names(&leaf), vec![DOMAIN.to_owned()]);
        let st = site.state();
        assert!(
            st.last_error.is_none() && st.consecutive_failures == 0,
            "{st:?}"
        );
        assert_eq!(orders(&running, "ok"), 1);
        running.shutdown().await;
    });
}

/// (The failure is counted just before the state file is written: the
/// tests wait for both.)
///
/// The challenge cannot succeed (the name points where nothing listens):
/// a clear error naming the domain and pebble's problem, counted as
/// `invalid`, and no certificate file is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_challenge_touches_no_files() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let site = Site::new();
        let nowhere = next_loopback();
        let dns = dns_for(site.ip, nowhere);
        let pebble = Pebble::start(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.http_port,
            site.tls_port,
            None,
        );
        let cfg = site.config(&pebble, "http-01", "30d");
        let running = site.start(&cfg).await;
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        wait_for(
            "an invalid order",
            Duration::from_secs(40),
            || orders(&running, "invalid") > 0 && site.state().last_error.is_some(),
            &why,
        )
        .await;
        let st = site.state();
        let err = st.last_error.unwrap().failure.unwrap();
        eprintln!(
            "error: {}\nproblem: {}",
            err.message,
            err.problem.clone().unwrap_or_default()
        );
        assert_eq!(err.kind, FailureKind::Invalid);
        assert!(err.message.contains(DOMAIN), "{}", err.message);
        let problem = err.problem.unwrap().to_string();
        assert!(problem.contains("urn:ietf:params:acme:error:"), "{problem}");
        assert!(!site.path("tls.crt").exists());
        assert!(!site.path("tls.key").exists());
        assert!(running.cert.as_ref().unwrap().is_pending());
        running.shutdown().await;
    });
}

/// While another instance holds the order lock, nothing is ordered; once
/// it is released, this instance orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_held_elsewhere_means_no_order() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let site = Site::new();
        let dns = dns_for(site.ip, site.ip);
        let pebble = Pebble::start(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.http_port,
            site.tls_port,
            None,
        );
        let cfg = site.config(&pebble, "http-01", "30d");
        let lock = acme::try_order_lock(&site.path("tls.crt.acme.lock"))
            .unwrap()
            .unwrap();
        let running = site.start(&cfg).await;
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(orders(&running, "ok"), 0);
        assert!(site.state().last_attempt.is_none());
        assert!(!site.path("tls.crt").exists());
        drop(lock);
        let roots = pebble.root().await;
        wait_served(site.tls_addr(), &roots, None, Duration::from_secs(40), &why).await;
        assert_eq!(orders(&running, "ok"), 1);

        // A renew request (what `homeport acme renew --force` sends) is
        // handled by the running server.
        let settings = running.acme.as_ref().unwrap().settings().clone();
        assert!(acme::serve_running(&settings));
        let id = acme::request_renewal(&settings, true).unwrap();
        wait_for(
            "the renew request to be handled",
            Duration::from_secs(40),
            || {
                site.state()
                    .handled_request
                    .is_some_and(|h| h.id == id && h.ok)
            },
            &why,
        )
        .await;
        assert_eq!(orders(&running, "ok"), 2);
        running.shutdown().await;
        assert!(!acme::serve_running(&settings));
    });
}

/// pebble rejecting 40 % of nonces: every rejection is retried and
/// counted, an order that still fails on badNonce is retried with
/// back-off, and the certificate arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nonces_are_retried_and_counted() {
    if !pebble_available() {
        return;
    }
    bounded!(async {
        let site = Site::new();
        let dns = dns_for(site.ip, site.ip);
        let pebble = Pebble::start_env(
            site.dir.path(),
            site.ip,
            dns.addr(),
            site.http_port,
            site.tls_port,
            None,
            &[("PEBBLE_WFE_NONCEREJECT", "40")],
        );
        let cfg = site.config(&pebble, "http-01", "30d");
        let running = site.start(&cfg).await;
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        let roots = pebble.root().await;
        wait_served(site.tls_addr(), &roots, None, Duration::from_secs(60), &why).await;
        let rejected = running.metrics.acme_bad_nonces();
        eprintln!(
            "badNonce rejections: {rejected}; orders failed on badNonce: {}",
            orders(&running, "bad_nonce")
        );
        assert!(rejected > 0);
        assert!(
            running
                .metrics
                .render()
                .contains("homeport_acme_bad_nonce_total")
        );
        assert_eq!(orders(&running, "ok"), 1);
        running.shutdown().await;
    });
}

/// `rateLimited` with Retry-After (pebble has no rate limits, so a scripted
/// ACME server answers newAccount with 429): classified, persisted with
/// the problem document, and not retried before Retry-After even though
/// the back-off alone would retry within a second. No pebble needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_waits_for_retry_after() {
    use homeport_test_support::{Handler, HttpsServer, Scripted};
    bounded!(async {
        let site = Site::new();
        let ca = TestCa::new("scripted ACME CA").unwrap();
        let ca_file = ca.write_pem(site.dir.path()).unwrap();
        let cert = ca.issue(&[&site.ip.to_string()]).unwrap();
        let base = Arc::new(std::sync::Mutex::new(String::new()));
        let b = base.clone();
        let server = HttpsServer::start(
            SocketAddr::new(IpAddr::V4(site.ip), 0),
            cert,
            Handler::new(move |r| {
                let base = b.lock().unwrap().clone();
                match r.path() {
                    "/dir" => Scripted::json(serde_json::json!({
                        "newNonce": format!("{base}/nonce"),
                        "newAccount": format!("{base}/acct"),
                        "newOrder": format!("{base}/order"),
                        "revokeCert": format!("{base}/revoke"),
                        "keyChange": format!("{base}/key"),
                    })),
                    "/nonce" => Scripted::new(200).header("Replay-Nonce", "bm9uY2U"),
                    _ => Scripted::json(serde_json::json!({
                        "type": "urn:ietf:params:acme:error:rateLimited",
                        "detail": "too many new accounts from this address",
                        "status": 429
                    }))
                    .with_status(429)
                    .header("Content-Type", "application/problem+json")
                    .header("Retry-After", "120")
                    .header("Replay-Nonce", "bm9uY2Uy"),
                }
            }),
        )
        .unwrap();
        *base.lock().unwrap() = format!("https://{}", server.addr());
        let cfg = site.config_for(&server.url("/dir"), &ca_file, "http-01", "30d");
        let running = site.start(&cfg).await;
        wait_for(
            "a rate_limited failure",
            Duration::from_secs(20),
            || orders(&running, "rate_limited") > 0 && site.state().last_error.is_some(),
            &|| format!("{:?}", site.state()),
        )
        .await;
        let st = site.state();
        let err = st.last_error.clone().unwrap().failure.unwrap();
        assert_eq!(err.kind, FailureKind::RateLimited);
        assert_eq!(err.retry_after, Some(120));
        assert!(
            err.message.contains("too many new accounts"),
            "{}",
            err.message
        );
        assert_eq!(
            err.problem.unwrap()["type"],
            "urn:ietf:params:acme:error:rateLimited"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let st = site.state();
        assert!(st.next_retry.unwrap() >= now + 115, "{st:?}");
        let posts = server
            .requests()
            .iter()
            .filter(|r| r.path() == "/acct")
            .count();
        assert_eq!(posts, 1, "retried before Retry-After");
        assert_eq!(orders(&running, "rate_limited"), 1);
        assert!(!site.path("tls.crt").exists() && !site.path("tls.key").exists());
        running.shutdown().await;
    });
}

/// Two sites sharing one PostgreSQL database and one pebble, whose
/// validation reaches site A only (the name's one address).
struct Shared {
    pg: homeport_test_support::postgres::PgCluster,
    a: Site,
    b: Site,
    _dns: DnsServer,
    pebble: Pebble,
    cfg_a: config::Config,
    cfg_b: config::Config,
}

impl Shared {
    /// `validity`: pebble's certificate lifetime in seconds.
    fn new(db_name: &str, validity: Option<u64>, challenge: &str, threshold: &str) -> Shared {
        let pg = homeport_test_support::postgres::start().unwrap();
        pg.create_database(db_name).unwrap();
        let db = pg.yaml_database(db_name);
        let (a, b) = (Site::new(), Site::new());
        let dns = dns_for(a.ip, a.ip);
        let pebble = Pebble::start(
            a.dir.path(),
            a.ip,
            dns.addr(),
            a.http_port,
            a.tls_port,
            validity,
        );
        let dir = pebble.directory();
        let cfg_a = a.config_db(&dir, &pebble.wfe_ca_file, challenge, threshold, &db);
        let cfg_b = b.config_db(&dir, &pebble.wfe_ca_file, challenge, threshold, &db);
        Shared {
            pg,
            a,
            b,
            _dns: dns,
            pebble,
            cfg_a,
            cfg_b,
        }
    }
}

/// Two instances sharing one PostgreSQL database: started together with no
/// certificate, they produce one order and serve the same certificate; the
/// renewal both reach at the same instant is one order too, and both serve
/// the new certificate without restart. The CA's validation always reaches
/// instance A (the name's only address): when B orders (a forced renewal),
/// A answers the http-01 challenge B provisioned, from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_postgres_order_once() {
    if !pebble_available() || !homeport_test_support::postgres::available() {
        return;
    }
    bounded!(async {
        let Shared {
            pg,
            a,
            b,
            _dns,
            pebble,
            cfg_a,
            cfg_b,
        } = Shared::new("acme_shared", Some(20), "http-01", "1h");
        let (ra, rb) = tokio::join!(a.start(&cfg_a), b.start(&cfg_b));
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        let roots = pebble.root().await;
        let total = |result: &str| orders(&ra, result) + orders(&rb, result);

        let first = wait_served_by_both(
            a.tls_addr(),
            b.tls_addr(),
            &roots,
            None,
            Duration::from_secs(40),
            &why,
        )
        .await;
        assert_eq!(total("ok"), 1, "one order for two instances");
        // B's files hold it too (a restart without the database has it).
        let on_disk = homeport_server::certs::load_pair(
            &b.path("tls.crt"),
            &b.path("tls.key"),
            std::time::SystemTime::now(),
        )
        .unwrap();
        assert_eq!(on_disk.leaf_sha256, sha(&first));

        // Both reach the renewal point together (same certificate): one order.
        let second = wait_served_by_both(
            a.tls_addr(),
            b.tls_addr(),
            &roots,
            Some(&first),
            Duration::from_secs(40),
            &why,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(total("ok"), 2, "one renewal order for two instances");

        // B orders; the CA reaches A, which answers from the database.
        let b_before = orders(&rb, "ok");
        rb.acme.as_ref().unwrap().trigger(true);
        let third_b = wait_served(
            b.tls_addr(),
            &roots,
            Some(&second),
            Duration::from_secs(30),
            &why,
        )
        .await;
        assert_eq!(orders(&rb, "ok"), b_before + 1, "B ordered");
        let third = wait_served(
            a.tls_addr(),
            &roots,
            Some(&second),
            Duration::from_secs(10),
            &why,
        )
        .await;
        assert_eq!(
            third, third_b,
            "A picked B's certificate up without restart"
        );
        assert_eq!(total("invalid"), 0);
        // `homeport acme renew` from anywhere: the request goes through the
        // database to one running instance.
        let st =
            homeport_server::store::PgStore::connect(&homeport_server::config::PostgresArgs::new(
                pg.user(),
                Some(pg.password()),
                "acme_shared",
                &pg.host().to_string(),
                pg.port(),
                (1, 2),
            ))
            .await
            .unwrap();
        assert!(
            acme::shared_serving(&st).await,
            "the instances say they run"
        );
        let id = acme::request_renewal_shared(&st, true).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let handled = loop {
            if let Some(h) = acme::read_state_shared(&st)
                .await
                .handled_request
                .filter(|h| h.id == id)
            {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "nobody handled the request\n{}",
                why()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(handled.ok, "{handled:?}");
        assert!(handled.message.starts_with("renewed"), "{handled:?}");
        wait_served_by_both(
            a.tls_addr(),
            b.tls_addr(),
            &roots,
            Some(&third),
            Duration::from_secs(10),
            &why,
        )
        .await;
        assert!(total("ok") >= 4);
        // The shared state says who and what.
        let state = ra.acme.as_ref().unwrap().state().await;
        assert!(state.last_success.is_some(), "{state:?}");
        let stored = pg
            .psql("acme_shared", "SELECT count(*) FROM kv WHERE namespace = 'acme' AND key IN ('certificate', 'account_key', 'state')")
            .unwrap();
        assert_eq!(stored.trim(), "3");
        let left = pg
            .psql(
                "acme_shared",
                "SELECT count(*) FROM kv WHERE namespace LIKE 'acme-%'",
            )
            .unwrap();
        assert_eq!(
            left.trim(),
            "0",
            "challenge answers are removed after the order"
        );
        ra.shutdown().await;
        rb.shutdown().await;
    });
}

/// tls-alpn-01 with two instances on one PostgreSQL database: the CA's
/// validation reaches instance A's TLS port only, yet B can order: A
/// presents the challenge certificate for B's order, loaded from the
/// database by its sync loop (a TLS handshake cannot wait for a query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_answered_by_the_instance_that_did_not_order() {
    if !pebble_available() || !homeport_test_support::postgres::available() {
        return;
    }
    bounded!(async {
        // Every part is bound: the cluster, DNS and pebble live to the end.
        let Shared {
            pg: _pg,
            a,
            b,
            _dns,
            pebble,
            cfg_a,
            cfg_b,
        } = Shared::new("alpn_shared", None, "tls-alpn-01", "30d");
        // A first: it orders (the CA reaches it), B adopts.
        let ra = a.start(&cfg_a).await;
        let log = pebble.log.clone();
        let why = move || std::fs::read_to_string(&log).unwrap_or_default();
        let roots = pebble.root().await;
        let first = wait_served(a.tls_addr(), &roots, None, Duration::from_secs(40), &why).await;
        let rb = b.start(&cfg_b).await;
        let first_b = wait_served(b.tls_addr(), &roots, None, Duration::from_secs(10), &why).await;
        assert_eq!(first, first_b);
        assert_eq!(orders(&rb, "ok"), 0, "B adopted, did not order");
        // B orders; pebble validates at A.
        rb.acme.as_ref().unwrap().trigger(true);
        let second = wait_served(
            a.tls_addr(),
            &roots,
            Some(&first),
            Duration::from_secs(40),
            &why,
        )
        .await;
        assert_eq!(orders(&rb, "ok"), 1, "B ordered");
        assert_eq!(orders(&ra, "ok"), 1, "A only ordered the first");
        assert_eq!(orders(&ra, "invalid") + orders(&rb, "invalid"), 0);
        let second_b = wait_served(
            b.tls_addr(),
            &roots,
            Some(&first),
            Duration::from_secs(10),
            &why,
        )
        .await;
        assert_eq!(second, second_b);
        ra.shutdown().await;
        rb.shutdown().await;
    });
}
