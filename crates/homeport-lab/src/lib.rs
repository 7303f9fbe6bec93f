//! `homeport lab`: on 127.0.0.x, an authoritative DNS server and a set of
//! domains — one for each discovery step and one for each common mistake —
//! signed by a throwaway CA and served by homeport's own server stack (or,
//! for the misbehaviours, by scripted servers that misbehave on purpose).
//! Each is checked with `homeport check`, and the verdict compared with the
//! scenario's known truth.
//!
//! No root is needed: the lab's resolver fetches `.well-known` on
//! [`Lab::well_known_port`] instead of 443 and uses [`Lab::default_port`]
//! where the spec says 8448 (`--well-known-port` / `--default-port` on the
//! command line, hidden options that exist only for the lab).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use homeport_core::ServerName;
use homeport_core::keys::ServerKeysBuilder;
use homeport_core::signing::SigningKey;
use homeport_federation::check::{self, CheckOptions, Report};
use homeport_federation::keys::now_ms;
use homeport_federation::{ClientConfig, FederationClient, TlsPolicy};
use homeport_resolve::{Resolver, ResolverConfig, TrustConfig};
use homeport_server::certs::ReloadableCert;
use homeport_server::keyserver::KeyServer;
use homeport_server::listen::{self, Listener};
use homeport_server::metrics::Metrics;
use homeport_server::routes::{self, AppState, Resources, WellKnownDocs};
use homeport_test_support::{
    DnsServer, Handler, HttpsServer, IssueOpts, Recorded, Scripted, TestCa, TestCert, TlsSetup,
    Zone, next_loopback, self_signed,
};
use serde::Serialize;
use serde_json::{Value, json};

/// `.well-known` port of the lab (instead of 443).
pub const WK_PORT: u16 = 18443;
/// The lab's stand-in for 8448.
pub const DEF_PORT: u16 = 18448;

/// Why the lab could not start.
#[derive(Debug, thiserror::Error)]
#[error("lab: {0}")]
pub struct LabError(pub String);

fn e<E: std::fmt::Display>(x: E) -> LabError {
    LabError(x.to_string())
}

/// One scenario and its known truth.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Short id.
    pub id: &'static str,
    /// The server name to check.
    pub server_name: String,
    /// What is set up (and, for mistakes, what is wrong).
    pub what: &'static str,
    /// Whether federation should be judged OK.
    pub expect_ok: bool,
    /// Finding ids that must be reported.
    pub expect_findings: Vec<&'static str>,
    /// The discovery step expected.
    pub expect_step: &'static str,
}

/// A scenario's result.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The scenario.
    pub scenario: Scenario,
    /// The verdict matches the known truth.
    pub matches: bool,
    /// homeport's verdict.
    pub found_ok: bool,
    /// The step found.
    pub found_step: String,
    /// Finding ids found.
    pub found_findings: Vec<String>,
    /// The first fix (of the most severe finding).
    pub first_fix: Option<String>,
    /// Why it does not match, when it does not.
    pub mismatch: Option<String>,
}

/// The running lab.
pub struct Lab {
    /// DNS.
    pub dns: DnsServer,
    /// The CA.
    pub ca: Arc<TestCa>,
    /// The CA certificate file.
    pub ca_file: PathBuf,
    /// The scenarios.
    pub scenarios: Vec<Scenario>,
    _dir: tempfile::TempDir,
    _scripted: Vec<HttpsServer>,
    stops: Vec<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("dns", &self.dns.addr())
            .finish_non_exhaustive()
    }
}

fn key_doc(name: &str, key: &SigningKey, valid_for_ms: i64) -> Result<Value, LabError> {
    let until = if valid_for_ms >= 0 {
        now_ms() + valid_for_ms.unsigned_abs()
    } else {
        now_ms() - valid_for_ms.unsigned_abs()
    };
    let sn = ServerName::parse(name).map_err(e)?;
    ServerKeysBuilder::new(&sn, until)
        .verify_key(key)
        .sign(&[key])
        .map_err(e)
}

fn version() -> Scripted {
    Scripted::json(
        json!({"server": {"name": "homeport-lab", "version": env!("CARGO_PKG_VERSION")}}),
    )
}

struct Builder {
    zone: Zone,
    ca: Arc<TestCa>,
    dir: PathBuf,
    scripted: Vec<HttpsServer>,
    stops: Vec<tokio::sync::watch::Sender<bool>>,
    scenarios: Vec<Scenario>,
}

impl Builder {
    /// A homeport server (real routes, real listener, real certificate
    /// loading) for `server_name` on a fresh loopback address and `port`.
    fn homeport(
        &mut self,
        server_name: &str,
        cert: &TestCert,
        port: u16,
        well_known: Option<Value>,
    ) -> Result<SocketAddr, LabError> {
        let (name, cert) = (server_name.to_owned(), cert.clone());
        self.homeport_with(port, well_known, move |_| Ok((name.clone(), cert.clone())))
    }

    /// As [`Builder::homeport`], with the name and certificate made for the
    /// address the server ends up on (IP-literal scenarios).
    fn homeport_with(
        &mut self,
        port: u16,
        well_known: Option<Value>,
        make: impl Fn(SocketAddr) -> Result<(String, TestCert), LabError>,
    ) -> Result<SocketAddr, LabError> {
        let mut last = None;
        for _ in 0..240 {
            let addr = SocketAddr::new(IpAddr::V4(next_loopback()), port);
            match listen::bind(addr) {
                Ok(socket) => {
                    let (server_name, cert) = make(addr)?;
                    let stem = format!("{}-{port}", server_name.replace([':', '[', ']'], "_"));
                    let (cp, kp) = cert.write_pem(&self.dir, &stem).map_err(e)?;
                    let rc = Arc::new(ReloadableCert::load(&cp, &kp).map_err(e)?);
                    let keys = KeyServer::new(
                        ServerName::parse(&server_name).map_err(e)?,
                        vec![SigningKey::generate("a_lab").map_err(e)?],
                        vec![],
                        Duration::from_secs(86_400),
                    );
                    let state = Arc::new(AppState {
                        keys: Arc::new(keys),
                        cert: Some(rc.clone()),
                        well_known: WellKnownDocs {
                            server: well_known.clone(),
                            client: None,
                            support: None,
                            cache_control: "max-age=86400".into(),
                        },
                        notary: None,
                        proxy: None,
                        synapse_admin: false,
                        metrics: Arc::new(Metrics::default()),
                    });
                    let router = routes::router(
                        state,
                        Resources {
                            federation: true,
                            ..Resources::default()
                        },
                    );
                    let bound = socket.local_addr().map_err(e)?;
                    let tls = homeport_server::certs::server_config(rc.clone()).map_err(e)?;
                    let (tx, rx) = tokio::sync::watch::channel(false);
                    tokio::spawn(listen::serve(
                        vec![Listener {
                            name: bound.to_string(),
                            socket,
                            tls: Some(tls),
                            router: router.clone(),
                            x_forwarded: false,
                            trusted_proxies: vec![],
                        }],
                        rx,
                        Duration::from_secs(1),
                    ));
                    self.stops.push(tx);
                    return Ok(bound);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(LabError(format!(
            "no free loopback address for port {port}: {last:?}"
        )))
    }

    /// A scripted server on a fresh loopback address and `port`.
    fn scripted(
        &mut self,
        tls: TlsSetup,
        port: u16,
        handler: Handler,
    ) -> Result<SocketAddr, LabError> {
        let s = HttpsServer::start_on_any_loopback(port, tls, handler).map_err(e)?;
        let a = s.addr();
        self.scripted.push(s);
        Ok(a)
    }

    fn a(&mut self, name: &str, addr: SocketAddr) {
        if let IpAddr::V4(v4) = addr.ip() {
            self.zone = std::mem::take(&mut self.zone).a(name, v4);
        }
    }

    fn add(
        &mut self,
        id: &'static str,
        server_name: String,
        what: &'static str,
        expect_ok: bool,
        expect_findings: Vec<&'static str>,
        expect_step: &'static str,
    ) {
        self.scenarios.push(Scenario {
            id,
            server_name,
            what,
            expect_ok,
            expect_findings,
            expect_step,
        });
    }
}

fn wk_only(m_server: &str) -> Handler {
    Handler::routes()
        .route(
            "/.well-known/matrix/server",
            Scripted::json(json!({ "m.server": m_server })),
        )
        .into()
}

impl Lab {
    /// Start every scenario (call inside a Tokio runtime).
    pub async fn start() -> Result<Lab, LabError> {
        let dir = tempfile::tempdir().map_err(e)?;
        let ca = TestCa::new("homeport lab CA (throwaway)").map_err(e)?;
        let ca_file = ca.write_pem(dir.path()).map_err(e)?;
        let mut b = Builder {
            zone: Zone::new().ttl(60),
            ca: Arc::new(ca),
            dir: dir.path().to_owned(),
            scripted: Vec::new(),
            stops: Vec::new(),
            scenarios: Vec::new(),
        };

        // 1: an IP literal with a port (the certificate has the IP).
        {
            let ca = b.ca.clone();
            let addr = b.homeport_with(DEF_PORT, None, move |a| {
                Ok((a.to_string(), ca.issue(&[&a.ip().to_string()]).map_err(e)?))
            })?;
            b.add(
                "step1-ip-literal",
                addr.to_string(),
                "the server name is an IP literal with a port",
                true,
                vec![],
                "1",
            );
        }
        // 2: hostname with explicit port.
        {
            let port = 18500;
            let cert = b.ca.issue(&["explicit.lab"]).map_err(e)?;
            let addr = b.homeport(&format!("explicit.lab:{port}"), &cert, port, None)?;
            b.a("explicit.lab", addr);
            b.add(
                "step2-explicit-port",
                format!("explicit.lab:{port}"),
                "hostname with an explicit port",
                true,
                vec![],
                "2",
            );
        }
        // 3.1: .well-known delegates to an IP literal.
        {
            let ca = b.ca.clone();
            let target = b.homeport_with(DEF_PORT, None, move |a| {
                Ok((
                    "wk-ip.lab".to_owned(),
                    ca.issue(&[&a.ip().to_string()]).map_err(e)?,
                ))
            })?;
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["wk-ip.lab"]).map_err(e)?),
                WK_PORT,
                wk_only(&target.to_string()),
            )?;
            b.a("wk-ip.lab", wk);
            b.add(
                "step3.1-delegated-ip",
                "wk-ip.lab".into(),
                ".well-known delegates to an IP literal with a port",
                true,
                vec![],
                "3.1",
            );
        }
        // 3.2: delegated host with a port (a proxy that accepts the port).
        {
            let port = 18501;
            let cert = b.ca.issue(&["hs.wk-port.lab"]).map_err(e)?;
            let target = b.homeport("wk-port.lab", &cert, port, None)?;
            b.a("hs.wk-port.lab", target);
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["wk-port.lab"]).map_err(e)?),
                WK_PORT,
                wk_only(&format!("hs.wk-port.lab:{port}")),
            )?;
            b.a("wk-port.lab", wk);
            b.add(
                "step3.2-delegated-port",
                "wk-port.lab".into(),
                ".well-known delegates to host:port",
                true,
                vec!["wellknown_explicit_port"],
                "3.2",
            );
        }
        // 3.3: delegated host with _matrix-fed SRV.
        {
            let cert = b.ca.issue(&["hs.wk-srv.lab"]).map_err(e)?;
            let target = b.homeport("wk-srv.lab", &cert, 18502, None)?;
            b.a("t.wk-srv.lab", target);
            b.zone = std::mem::take(&mut b.zone).srv(
                "_matrix-fed._tcp.hs.wk-srv.lab",
                10,
                5,
                target.port(),
                "t.wk-srv.lab",
            );
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["wk-srv.lab"]).map_err(e)?),
                WK_PORT,
                wk_only("hs.wk-srv.lab"),
            )?;
            b.a("wk-srv.lab", wk);
            b.add(
                "step3.3-delegated-srv",
                "wk-srv.lab".into(),
                ".well-known delegates, _matrix-fed._tcp SRV on the delegated name",
                true,
                vec![],
                "3.3",
            );
        }
        // 3.4: delegated host with only the deprecated _matrix SRV.
        {
            let cert = b.ca.issue(&["hs.wk-legacy.lab"]).map_err(e)?;
            let target = b.homeport("wk-legacy.lab", &cert, 18503, None)?;
            b.a("t.wk-legacy.lab", target);
            b.zone = std::mem::take(&mut b.zone).srv(
                "_matrix._tcp.hs.wk-legacy.lab",
                10,
                5,
                target.port(),
                "t.wk-legacy.lab",
            );
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["wk-legacy.lab"]).map_err(e)?),
                WK_PORT,
                wk_only("hs.wk-legacy.lab"),
            )?;
            b.a("wk-legacy.lab", wk);
            b.add(
                "step3.4-delegated-legacy-srv",
                "wk-legacy.lab".into(),
                ".well-known delegates, only _matrix._tcp on the delegated name",
                true,
                vec!["srv_legacy_only"],
                "3.4",
            );
        }
        // 3.5: delegated host on the default port.
        {
            let cert = b.ca.issue(&["hs.wk-default.lab"]).map_err(e)?;
            let target = b.homeport("wk-default.lab", &cert, DEF_PORT, None)?;
            b.a("hs.wk-default.lab", target);
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["wk-default.lab"]).map_err(e)?),
                WK_PORT,
                wk_only("hs.wk-default.lab"),
            )?;
            b.a("wk-default.lab", wk);
            b.add(
                "step3.5-delegated-default",
                "wk-default.lab".into(),
                ".well-known delegates to a host without port or SRV",
                true,
                vec![],
                "3.5",
            );
        }
        // 4: SRV on the server name.
        {
            let cert = b.ca.issue(&["srv.lab"]).map_err(e)?;
            let target = b.homeport("srv.lab", &cert, 18504, None)?;
            b.a("t.srv.lab", target);
            b.zone = std::mem::take(&mut b.zone).srv(
                "_matrix-fed._tcp.srv.lab",
                10,
                5,
                target.port(),
                "t.srv.lab",
            );
            b.add(
                "step4-srv",
                "srv.lab".into(),
                "no .well-known, _matrix-fed._tcp SRV on the name",
                true,
                vec![],
                "4",
            );
        }
        // 5: only the deprecated _matrix SRV.
        {
            let cert = b.ca.issue(&["legacy.lab"]).map_err(e)?;
            let target = b.homeport("legacy.lab", &cert, 18505, None)?;
            b.a("t.legacy.lab", target);
            b.zone = std::mem::take(&mut b.zone).srv(
                "_matrix._tcp.legacy.lab",
                10,
                5,
                target.port(),
                "t.legacy.lab",
            );
            b.add(
                "step5-legacy-srv-only",
                "legacy.lab".into(),
                "mistake: only the deprecated _matrix._tcp SRV record",
                true,
                vec!["srv_legacy_only"],
                "5",
            );
        }
        // 6: the name itself on the default port, serving its own .well-known 404.
        {
            let cert = b.ca.issue(&["plain.lab"]).map_err(e)?;
            let target = b.homeport("plain.lab", &cert, DEF_PORT, None)?;
            b.a("plain.lab", target);
            b.add(
                "step6-default-port",
                "plain.lab".into(),
                "no delegation, no SRV: the name on the default port",
                true,
                vec![],
                "6",
            );
        }
        // Mistake: explicit port in m.server behind a proxy that matches the bare Host only.
        {
            let port = 18506;
            let key = SigningKey::generate("a_lab").map_err(e)?;
            let doc = key_doc("picky.lab", &key, 86_400_000)?;
            let handler = Handler::new(move |r: &Recorded| {
                if r.host.as_deref() != Some("hs.picky.lab") {
                    return Scripted::text(404, "<html><body>404 Not Found</body></html>")
                        .header("content-type", "text/html");
                }
                match r.path() {
                    "/_matrix/key/v2/server" => Scripted::json(doc.clone()),
                    "/_matrix/federation/v1/version" => version(),
                    _ => Scripted::not_found(),
                }
            });
            let proxy = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["hs.picky.lab"]).map_err(e)?),
                port,
                handler,
            )?;
            b.a("hs.picky.lab", proxy);
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["picky.lab"]).map_err(e)?),
                WK_PORT,
                wk_only(&format!("hs.picky.lab:{port}")),
            )?;
            b.a("picky.lab", wk);
            b.add(
                "mistake-port-behind-picky-proxy",
                "picky.lab".into(),
                "mistake: m.server has a port; the reverse proxy only matches Host without it",
                false,
                vec!["host_port_rejected_by_proxy"],
                "3.2",
            );
        }
        // Mistake: certificate for the SRV target only.
        {
            let cert = b.ca.issue(&["t.srv-cert.lab"]).map_err(e)?;
            let target = b.homeport("srv-cert.lab", &cert, 18507, None)?;
            b.a("t.srv-cert.lab", target);
            b.zone = std::mem::take(&mut b.zone).srv(
                "_matrix-fed._tcp.srv-cert.lab",
                10,
                5,
                target.port(),
                "t.srv-cert.lab",
            );
            b.add(
                "mistake-cert-for-srv-target",
                "srv-cert.lab".into(),
                "mistake: the certificate names the SRV target, not the server name",
                false,
                vec!["cert_valid_only_for_srv_target"],
                "4",
            );
        }
        // Mistake: self-signed certificate.
        {
            let cert = self_signed(&["self-signed.lab"]).map_err(e)?;
            let target = b.homeport("self-signed.lab", &cert, DEF_PORT, None)?;
            b.a("self-signed.lab", target);
            b.add(
                "mistake-self-signed",
                "self-signed.lab".into(),
                "mistake: a self-signed certificate",
                false,
                vec!["cert_self_signed"],
                "6",
            );
        }
        // Mistake: expired key response.
        {
            let key = SigningKey::generate("a_lab").map_err(e)?;
            let doc = key_doc("expired-key.lab", &key, -3_600_000)?;
            let h = Handler::routes()
                .route("/_matrix/key/v2/server", Scripted::json(doc))
                .route("/_matrix/federation/v1/version", version());
            let t = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["expired-key.lab"]).map_err(e)?),
                DEF_PORT,
                h.into(),
            )?;
            b.a("expired-key.lab", t);
            b.add(
                "mistake-expired-key",
                "expired-key.lab".into(),
                "mistake: the key response expired an hour ago",
                false,
                vec!["key_expired"],
                "6",
            );
        }
        // Mistake: keys for another server name.
        {
            let key = SigningKey::generate("a_lab").map_err(e)?;
            let doc = key_doc("someone-else.lab", &key, 86_400_000)?;
            let h = Handler::routes()
                .route("/_matrix/key/v2/server", Scripted::json(doc))
                .route("/_matrix/federation/v1/version", version());
            let t = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["wrong-keys.lab"]).map_err(e)?),
                DEF_PORT,
                h.into(),
            )?;
            b.a("wrong-keys.lab", t);
            b.add(
                "mistake-keys-wrong-server",
                "wrong-keys.lab".into(),
                "mistake: the key server answers for another server name",
                false,
                vec!["key_server_name_mismatch"],
                "6",
            );
        }
        // Mistake: .well-known redirect loop.
        {
            let h = Handler::routes()
                .route(
                    "/.well-known/matrix/server",
                    Scripted::redirect(302, "/.well-known/matrix/server2"),
                )
                .route(
                    "/.well-known/matrix/server2",
                    Scripted::redirect(302, "/.well-known/matrix/server"),
                );
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["loop.lab"]).map_err(e)?),
                WK_PORT,
                h.into(),
            )?;
            b.a("loop.lab", wk);
            b.add(
                "mistake-redirect-loop",
                "loop.lab".into(),
                "mistake: /.well-known/matrix/server redirects in a loop",
                false,
                vec!["wellknown_redirect_loop"],
                "6",
            );
        }
        // Mistake: oversized .well-known.
        {
            let mut body = br#"{"m.server": "hs.big.lab:443", "padding": ""#.to_vec();
            body.resize(60_000, b'x');
            body.extend_from_slice(b"\"}");
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["big.lab"]).map_err(e)?),
                WK_PORT,
                Handler::routes()
                    .route(
                        "/.well-known/matrix/server",
                        Scripted::bytes(200, Bytes::from(body)),
                    )
                    .into(),
            )?;
            b.a("big.lab", wk);
            b.add(
                "mistake-oversized-well-known",
                "big.lab".into(),
                "mistake: a 60 KB .well-known (the limit is 51199 bytes)",
                false,
                vec!["wellknown_too_large"],
                "6",
            );
        }
        // Mistake: split brain between IPv4 and IPv6.
        {
            let cert = b.ca.issue(&["split.lab"]).map_err(e)?;
            let good = b.homeport(
                "hs.split.lab",
                &b.ca.issue(&["hs.split.lab"]).map_err(e)?,
                DEF_PORT,
                None,
            )?;
            b.a("hs.split.lab", good);
            let v4 = b.scripted(
                TlsSetup::Cert(cert.clone()),
                WK_PORT,
                wk_only("hs.split.lab"),
            )?;
            b.a("split.lab", v4);
            match HttpsServer::start(
                SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), WK_PORT),
                TlsSetup::Cert(cert),
                wk_only("old.split.lab"),
            ) {
                Ok(v6) => {
                    b.zone = std::mem::take(&mut b.zone)
                        .aaaa("split.lab", std::net::Ipv6Addr::LOCALHOST);
                    b.scripted.push(v6);
                    b.add(
                        "mistake-split-brain",
                        "split.lab".into(),
                        "mistake: IPv4 and IPv6 addresses serve different .well-known",
                        false,
                        vec!["wellknown_split_brain"],
                        "3.5",
                    );
                }
                Err(_) => { /* no IPv6 loopback here: scenario skipped */ }
            }
        }
        // Mistake: SRV target that is a CNAME.
        {
            let cert = b.ca.issue(&["cname.lab"]).map_err(e)?;
            let target = b.homeport("cname.lab", &cert, 18508, None)?;
            b.a("real.cname.lab", target);
            b.zone = std::mem::take(&mut b.zone)
                .srv(
                    "_matrix-fed._tcp.cname.lab",
                    10,
                    5,
                    target.port(),
                    "alias.cname.lab",
                )
                .cname("alias.cname.lab", "real.cname.lab");
            b.add(
                "mistake-srv-to-cname",
                "cname.lab".into(),
                "mistake: the SRV record points at a CNAME (RFC 2782 forbids it)",
                true,
                vec!["srv_target_cname"],
                "4",
            );
        }
        // Mistake: a certificate 5 days from expiry (renewal is failing).
        {
            let cert =
                b.ca.issue_with(
                    &["soon.lab"],
                    IssueOpts::valid_around_now(
                        Duration::from_secs(60 * 86_400),
                        Duration::from_secs(5 * 86_400 + 3600),
                    ),
                )
                .map_err(e)?;
            let target = b.homeport("soon.lab", &cert, DEF_PORT, None)?;
            b.a("soon.lab", target);
            b.add(
                "mistake-cert-expires-soon",
                "soon.lab".into(),
                "mistake: the certificate expires in 5 days (renewal is failing)",
                true,
                vec!["cert_expires_soon"],
                "6",
            );
        }
        // 3.5 through a redirect: .well-known answers 302, then the document.
        {
            let cert = b.ca.issue(&["hs.redirect.lab"]).map_err(e)?;
            let target = b.homeport("redirect.lab", &cert, DEF_PORT, None)?;
            b.a("hs.redirect.lab", target);
            let h = Handler::routes()
                .route(
                    "/.well-known/matrix/server",
                    Scripted::redirect(302, "/.well-known/matrix/server.json"),
                )
                .route(
                    "/.well-known/matrix/server.json",
                    Scripted::json(json!({"m.server": "hs.redirect.lab"})),
                );
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["redirect.lab"]).map_err(e)?),
                WK_PORT,
                h.into(),
            )?;
            b.a("redirect.lab", wk);
            b.add(
                "step3.5-redirected-well-known",
                "redirect.lab".into(),
                ".well-known answers with a redirect to the document",
                true,
                vec!["wellknown_redirected"],
                "3.5",
            );
        }
        // Mistake: .well-known asks to be cached for a week.
        {
            let cert = b.ca.issue(&["hs.cache-long.lab"]).map_err(e)?;
            let target = b.homeport("cache-long.lab", &cert, DEF_PORT, None)?;
            b.a("hs.cache-long.lab", target);
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["cache-long.lab"]).map_err(e)?),
                WK_PORT,
                Handler::routes()
                    .route(
                        "/.well-known/matrix/server",
                        Scripted::json(json!({"m.server": "hs.cache-long.lab"}))
                            .header("cache-control", "max-age=604800"),
                    )
                    .into(),
            )?;
            b.a("cache-long.lab", wk);
            b.add(
                "mistake-well-known-cache-week",
                "cache-long.lab".into(),
                "mistake: .well-known asks to be cached for a week (peers cap it at 48 hours)",
                true,
                vec!["wellknown_cache_long"],
                "3.5",
            );
        }
        // 3.2 with an SRV record beside it that the port makes irrelevant.
        {
            let port = 18509;
            let cert = b.ca.issue(&["hs.srv-port.lab"]).map_err(e)?;
            let target = b.homeport("srv-port.lab", &cert, port, None)?;
            b.a("hs.srv-port.lab", target);
            b.zone = std::mem::take(&mut b.zone).srv(
                "_matrix-fed._tcp.hs.srv-port.lab",
                10,
                5,
                DEF_PORT,
                "hs.srv-port.lab",
            );
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["srv-port.lab"]).map_err(e)?),
                WK_PORT,
                wk_only(&format!("hs.srv-port.lab:{port}")),
            )?;
            b.a("srv-port.lab", wk);
            b.add(
                "step3.2-port-beside-srv",
                "srv-port.lab".into(),
                "m.server has a port, and an SRV record for the delegated name is never used",
                true,
                vec!["wellknown_explicit_port", "srv_ignored_due_to_port"],
                "3.2",
            );
        }
        // Mistakes in client discovery: base_url names the federation-only
        // listener, and the support document's contact has no role.
        {
            let cert = b.ca.issue(&["hs.client.lab"]).map_err(e)?;
            let target = b.homeport("client.lab", &cert, DEF_PORT, None)?;
            b.a("hs.client.lab", target);
            let h = Handler::routes()
                .route(
                    "/.well-known/matrix/server",
                    Scripted::json(json!({"m.server": "hs.client.lab"})),
                )
                .route(
                    "/.well-known/matrix/client",
                    Scripted::json(json!({"m.homeserver": {
                        "base_url": format!("https://hs.client.lab:{DEF_PORT}")
                    }}))
                    .header("access-control-allow-origin", "*"),
                )
                .route(
                    "/.well-known/matrix/support",
                    Scripted::json(json!({"contacts": [
                        {"email_address": "admin@client.lab"}
                    ]})),
                );
            let wk = b.scripted(
                TlsSetup::Cert(b.ca.issue(&["client.lab"]).map_err(e)?),
                WK_PORT,
                h.into(),
            )?;
            b.a("client.lab", wk);
            b.add(
                "mistake-client-discovery",
                "client.lab".into(),
                "mistake: base_url points at the federation listener (no /_matrix/client), and the support contact has no role",
                true,
                vec!["client_base_url_unreachable", "support_wellknown_invalid"],
                "3.5",
            );
        }

        let dns = DnsServer::start(IpAddr::V4(next_loopback()), std::mem::take(&mut b.zone))
            .map_err(e)?;
        Ok(Lab {
            dns,
            ca: b.ca,
            ca_file,
            scenarios: b.scenarios,
            _dir: dir,
            _scripted: b.scripted,
            stops: b.stops,
        })
    }

    /// The port `.well-known` is served on in the lab.
    pub fn well_known_port(&self) -> u16 {
        WK_PORT
    }

    /// The lab's stand-in for 8448.
    pub fn default_port(&self) -> u16 {
        DEF_PORT
    }

    /// A federation client configured for the lab (its DNS, its CA, its ports).
    pub fn client(&self, timeout: Duration) -> Result<FederationClient, LabError> {
        let mut rc = ResolverConfig::default();
        rc.dns.nameservers = vec![self.dns.addr()];
        rc.dns.timeout = Duration::from_secs(2);
        rc.trust = TrustConfig::only(vec![self.ca.cert_der()]);
        rc.well_known.port = WK_PORT;
        rc.well_known.timeout = Duration::from_secs(5);
        rc.default_port = DEF_PORT;
        rc.timeout = timeout;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert_der()).map_err(e)?;
        let mut cc = ClientConfig::new(TlsPolicy::new(roots));
        cc.request_timeout = timeout;
        cc.connect.connect_timeout = Duration::from_secs(3);
        Ok(FederationClient::new(
            Resolver::new(rc).map_err(e)?,
            cc,
            None,
        ))
    }

    /// The check's options in the lab: every address is on 127.0.0.x, a
    /// private network by design (so no `address_not_public`), and each
    /// check is bounded by `timeout`.
    pub fn check_options(timeout: Duration) -> CheckOptions {
        CheckOptions {
            private: true,
            time_limit: Some(timeout),
            ..CheckOptions::default()
        }
    }

    /// Check every scenario and compare with its truth.
    pub async fn run(&self, timeout: Duration) -> Result<Vec<(Outcome, Report)>, LabError> {
        let client = self.client(timeout)?;
        let opts = Self::check_options(timeout);
        let mut futs = Vec::new();
        for s in &self.scenarios {
            let client = client.clone();
            let s = s.clone();
            let opts = opts.clone();
            futs.push(async move {
                let name = ServerName::parse(&s.server_name).map_err(e)?;
                let report = check::check(&client, &name, &opts).await;
                Ok::<_, LabError>((judge(&s, &report), report))
            });
        }
        futures_util::future::join_all(futs)
            .await
            .into_iter()
            .collect()
    }

    /// Stop the homeport-served listeners.
    pub fn stop(&self) {
        for s in &self.stops {
            let _ = s.send(true);
        }
    }
}

/// Compare a report with a scenario's truth.
pub fn judge(s: &Scenario, r: &Report) -> Outcome {
    let ids: Vec<String> = r.findings.iter().map(|f| f.id.to_owned()).collect();
    let mut why = Vec::new();
    if r.ok != s.expect_ok {
        why.push(format!(
            "expected {}, homeport says {}",
            if s.expect_ok { "OK" } else { "broken" },
            if r.ok { "OK" } else { "broken" }
        ));
    }
    for want in &s.expect_findings {
        if !ids.iter().any(|i| i == want) {
            why.push(format!("missing finding {want}"));
        }
    }
    if r.resolution.step.as_str() != s.expect_step {
        why.push(format!(
            "expected step {}, found {}",
            s.expect_step, r.resolution.step
        ));
    }
    let first_fix = r
        .findings
        .iter()
        .find(|f| f.severity >= check::Severity::Warning)
        .map(|f| f.fix.clone());
    Outcome {
        scenario: s.clone(),
        matches: why.is_empty(),
        found_ok: r.ok,
        found_step: r.resolution.step.as_str().to_owned(),
        found_findings: ids,
        first_fix,
        mismatch: if why.is_empty() {
            None
        } else {
            Some(why.join("; "))
        },
    }
}
