//! A real ACME server for tests: Debian's `pebble`, on its own 127.0.0.x,
//! with its HTTPS certificate made by a throwaway CA, `PEBBLE_VA_NOSLEEP=1`
//! and `-dnsserver` pointing at the test's in-process DNS server (never the
//! system resolver). Stopped (by PID) on drop.
//!
//! Test infrastructure: a set-up that fails is a test failure, so this
//! module panics instead of returning errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName as TlsName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::TestCa;

/// Whether `pebble` is on PATH. Missing under `CI=true` is a failure (CI
/// installs it); elsewhere the caller skips and says so.
pub fn available() -> bool {
    let found = Command::new("pebble")
        .arg("-help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        // CI installs pebble (.ci/run): a missing one there is a failure,
        // not a skip.
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but `pebble` is not on PATH: .ci/run should have installed it"
        );
        eprintln!(
            "SKIPPED: `pebble` is not on PATH; install Debian's pebble (`apt-get install pebble`, \
             as .ci/run does) to run the ACME tests"
        );
    }
    found
}

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pebble process on `ip`.
pub struct Pebble {
    env: Vec<(&'static str, &'static str)>,
    child: Option<Child>,
    ip: Ipv4Addr,
    port: u16,
    mgmt: u16,
    config: PathBuf,
    /// Where pebble logs (stdout and stderr).
    pub log: PathBuf,
    dns: SocketAddr,
    wfe_ca: TestCa,
    /// The PEM CA of pebble's own HTTPS (for `acme.directory_ca_file`).
    pub wfe_ca_file: PathBuf,
}

impl Pebble {
    /// Start pebble on `ip`: validation of http-01 on `http_port` and
    /// tls-alpn-01 on `tls_port` of the address `dns` gives for the name;
    /// `validity`: certificate lifetime in seconds.
    pub fn start(
        dir: &Path,
        ip: Ipv4Addr,
        dns: SocketAddr,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
    ) -> Pebble {
        Self::start_env(dir, ip, dns, http_port, tls_port, validity, &[])
    }

    /// [`Pebble::start`] with extra environment (`PEBBLE_WFE_NONCEREJECT`, ...).
    #[allow(clippy::too_many_arguments)]
    pub fn start_env(
        dir: &Path,
        ip: Ipv4Addr,
        dns: SocketAddr,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
        env: &[(&'static str, &'static str)],
    ) -> Pebble {
        let wfe_ca = TestCa::new("pebble WFE test CA").unwrap();
        let wfe = wfe_ca.issue(&[&ip.to_string(), "localhost"]).unwrap();
        std::fs::write(dir.join("wfe.crt"), wfe.chain_pem()).unwrap();
        std::fs::write(dir.join("wfe.key"), wfe.key_pem()).unwrap();
        let wfe_ca_file = dir.join("pebble-wfe-ca.pem");
        std::fs::write(&wfe_ca_file, wfe_ca.cert_pem()).unwrap();
        let port = free_port(ip);
        let mgmt = free_port(ip);
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": format!("{ip}:{port}"),
            "managementListenAddress": format!("{ip}:{mgmt}"),
            "certificate": dir.join("wfe.crt"),
            "privateKey": dir.join("wfe.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let config = dir.join("pebble.json");
        std::fs::write(&config, cfg.to_string()).unwrap();
        let mut p = Pebble {
            env: env.to_vec(),
            child: None,
            ip,
            port,
            mgmt,
            config,
            log: dir.join("pebble.log"),
            dns,
            wfe_ca,
            wfe_ca_file,
        };
        p.run();
        p
    }

    /// (Re)start the process and wait until it listens.
    pub fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(self.dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .envs(self.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect((self.ip, self.port)).is_err()
            || std::net::TcpStream::connect((self.ip, self.mgmt)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://{}:{}/dir", self.ip, self.port)
    }

    /// Pebble's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The issuing root (new at every start), fetched trusting the WFE CA.
    pub async fn root(&self) -> RootCertStore {
        let body = https_get(
            SocketAddr::new(IpAddr::V4(self.ip), self.mgmt),
            &self.ip.to_string(),
            "/roots/0",
            crate::client_config(&self.wfe_ca).unwrap(),
        )
        .await;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(body.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        assert!(!roots.is_empty(), "no root in {body}");
        roots
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET path` over TLS to `addr` (SNI and Host `host`); the whole response.
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = TlsName::try_from(host.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}
