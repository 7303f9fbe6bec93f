//! Peers for federation-client tests: a DNS server, HTTPS peers with
//! scripted handlers (including a real signed key server), a test CA, and
//! a client that trusts only that CA and asks only that DNS server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use homeport_core::ServerName;
use homeport_core::keys::ServerKeysBuilder;
use homeport_core::signing::SigningKey;
use homeport_federation::{
    ClientConfig, FederationClient, KeyFetcher, MemoryKeyStore, Signer, TlsPolicy,
};
use homeport_resolve::{Resolver, ResolverConfig, TrustConfig};
use homeport_test_support::{
    DnsServer, Handler, HttpsServer, Recorded, Routes, Scripted, TestCa, TestCert, Zone,
    next_loopback,
};
use serde_json::Value;

pub fn name(s: &str) -> ServerName {
    ServerName::parse(s).unwrap()
}

pub fn now_ms() -> u64 {
    homeport_federation::keys::now_ms()
}

pub const DAY: u64 = 86_400_000;

/// A signed key document for `server` with `key`, valid for `valid_for` ms.
pub fn key_doc(server: &str, key: &SigningKey, valid_for: u64) -> Value {
    ServerKeysBuilder::new(&name(server), now_ms() + valid_for)
        .verify_key(key)
        .sign(&[key])
        .unwrap()
}

pub struct Net {
    pub ca: TestCa,
    pub dns: DnsServer,
    pub wk: HttpsServer,
    pub wk_ip: Ipv4Addr,
    pub resolver_cfg: ResolverConfig,
    pub tls: TlsPolicy,
}

impl Net {
    /// A DNS server (zone given later) and a .well-known server on its own
    /// address answering per Host from `wk_handler`.
    pub fn new(wk_handler: Handler) -> Net {
        let ca = TestCa::new("federation test CA").unwrap();
        let wk_ip = next_loopback();
        let wk = HttpsServer::start(
            (IpAddr::V4(wk_ip), 0).into(),
            ca.issue(&[
                "example.test",
                "hs.test",
                "other.test",
                "notary.test",
                "origin.test",
            ])
            .unwrap(),
            wk_handler,
        )
        .unwrap();
        let dns = DnsServer::start(IpAddr::V4(next_loopback()), Zone::new()).unwrap();
        let mut resolver_cfg = ResolverConfig::default();
        resolver_cfg.dns.nameservers = vec![dns.addr()];
        resolver_cfg.dns.timeout = Duration::from_millis(500);
        resolver_cfg.dns.attempts = 1;
        resolver_cfg.trust = TrustConfig::only(vec![ca.cert_der()]);
        resolver_cfg.well_known.port = wk.addr().port();
        resolver_cfg.well_known.timeout = Duration::from_secs(3);
        resolver_cfg.timeout = Duration::from_secs(10);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let tls = TlsPolicy::new(roots);
        Net {
            ca,
            dns,
            wk,
            wk_ip,
            resolver_cfg,
            tls,
        }
    }

    pub fn zone(&self, z: Zone) {
        self.dns.zone().replace(z).unwrap();
    }

    pub fn client(&self, signer: Option<Signer>) -> FederationClient {
        self.client_with(self.tls.clone(), signer)
    }

    pub fn client_with(&self, tls: TlsPolicy, signer: Option<Signer>) -> FederationClient {
        let resolver = Resolver::new(self.resolver_cfg.clone()).unwrap();
        let mut cfg = ClientConfig::new(tls);
        cfg.request_timeout = Duration::from_secs(10);
        cfg.connect.connect_timeout = Duration::from_secs(2);
        FederationClient::new(resolver, cfg, signer)
    }

    pub fn fetcher(&self) -> KeyFetcher {
        KeyFetcher::new(self.client(None), Arc::new(MemoryKeyStore::default()))
    }
}

/// An HTTPS peer answering `handler` with `cert`.
pub fn peer(cert: TestCert, handler: impl Into<Handler>) -> HttpsServer {
    HttpsServer::start((IpAddr::V4(next_loopback()), 0).into(), cert, handler).unwrap()
}

/// A handler for a key server: `/_matrix/key/v2/server` returns `doc`,
/// `/_matrix/federation/v1/version` a version, anything else 404.
pub fn key_server(doc: Value) -> Handler {
    with_version(Handler::routes().route("/_matrix/key/v2/server", Scripted::json(doc)))
}

/// `routes` plus `/_matrix/federation/v1/version` answering a version.
pub fn with_version(routes: Routes) -> Handler {
    routes
        .route(
            "/_matrix/federation/v1/version",
            Scripted::json(serde_json::json!({"server": {"name": "peer", "version": "1"}})),
        )
        .into()
}

pub fn ip_of(s: &HttpsServer) -> Ipv4Addr {
    match s.addr().ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("v4 expected"),
    }
}

pub fn only(reqs: Vec<Recorded>, path: &str) -> Vec<Recorded> {
    reqs.into_iter().filter(|r| r.path() == path).collect()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn sa(s: &HttpsServer) -> SocketAddr {
    s.addr()
}
