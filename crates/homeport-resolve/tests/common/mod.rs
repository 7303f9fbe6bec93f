//! A small world for discovery tests: one authoritative DNS server, one
//! HTTPS server answering `.well-known` for every host of the test (routed
//! by the Host header), a throwaway CA, and a resolver that trusts only that
//! CA and asks only that DNS server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeport_core::ServerName;
use homeport_resolve::{Clock, ManualClock, Resolution, Resolver, ResolverConfig, TrustConfig};
use homeport_test_support::{
    DnsServer, Handler, HttpsServer, Recorded, Scripted, TestCa, Zone, next_loopback,
};

pub const WK: &str = "/.well-known/matrix/server";

pub struct World {
    pub ip: Ipv4Addr,
    pub ca: TestCa,
    pub dns: DnsServer,
    pub https: HttpsServer,
    pub clock: ManualClock,
    routes: Arc<Mutex<HashMap<(String, String), Scripted>>>,
    pub cfg: ResolverConfig,
}

/// The names every test certificate covers.
pub const NAMES: &[&str] = &[
    "example.test",
    "matrix.example.test",
    "fed.other.test",
    "xn--bcher-kva.test",
    "redirect.test",
    "Upper.Example.test",
];

impl World {
    pub fn new(zone: Zone) -> World {
        Self::with_names(zone, NAMES)
    }

    pub fn with_names(zone: Zone, names: &[&str]) -> World {
        let ip = next_loopback();
        let ca = TestCa::new("homeport discovery test CA").unwrap();
        let cert = ca.issue(names).unwrap();
        let routes: Arc<Mutex<HashMap<(String, String), Scripted>>> = Arc::default();
        let r2 = routes.clone();
        let handler = Handler::new(move |req: &Recorded| {
            let host = req
                .host
                .clone()
                .unwrap_or_default()
                .rsplit_once(':')
                .map(|(h, _)| h.to_owned())
                .unwrap_or_else(|| req.host.clone().unwrap_or_default())
                .to_ascii_lowercase();
            r2.lock()
                .unwrap()
                .get(&(host, req.uri.clone()))
                .cloned()
                .unwrap_or_else(Scripted::not_found)
        });
        let https = HttpsServer::start((IpAddr::V4(ip), 0).into(), cert, handler).unwrap();
        let dns = DnsServer::start(IpAddr::V4(ip), zone).unwrap();
        let clock = ManualClock::new();
        let mut cfg = ResolverConfig::default();
        cfg.dns.nameservers = vec![dns.addr()];
        cfg.dns.timeout = Duration::from_millis(500);
        cfg.dns.attempts = 1;
        cfg.trust = TrustConfig::only(vec![ca.cert_der()]);
        cfg.well_known.port = https.addr().port();
        cfg.well_known.timeout = Duration::from_secs(3);
        cfg.well_known.retry_delay = Duration::from_millis(10);
        cfg.timeout = Duration::from_secs(10);
        World {
            ip,
            ca,
            dns,
            https,
            clock,
            routes,
            cfg,
        }
    }

    /// Serve `response` at `path` for Host `host` (port ignored).
    pub fn serve(&self, host: &str, path: &str, response: Scripted) {
        self.routes
            .lock()
            .unwrap()
            .insert((host.to_ascii_lowercase(), path.to_owned()), response);
    }

    /// Serve `{"m.server": value}` as host's .well-known.
    pub fn delegate(&self, host: &str, m_server: &str) {
        self.serve(
            host,
            WK,
            Scripted::json(serde_json::json!({ "m.server": m_server })),
        );
    }

    pub fn resolver(&self) -> Resolver {
        Resolver::with_clock(
            self.cfg.clone(),
            Arc::new(self.clock.clone()) as Arc<dyn Clock>,
        )
        .unwrap()
    }

    pub fn well_known_requests(&self) -> Vec<Recorded> {
        self.https
            .requests()
            .into_iter()
            .filter(|r| r.path().starts_with("/.well-known"))
            .collect()
    }
}

pub fn name(s: &str) -> ServerName {
    ServerName::parse(s).unwrap()
}

pub fn resolve(world: &World, s: &str) -> Arc<Resolution> {
    let r = world.resolver();
    block_on(async move { r.resolve(&name(s)).await })
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// (host, port, addrs) of one target.
pub type TargetParts = (String, u16, Vec<String>);

/// (host_header, tls_name, sni, targets) of a success.
pub type DestParts = (String, String, Option<String>, Vec<TargetParts>);

/// The parts of a successful resolution, for one-line assertions.
pub fn dest(r: &Resolution) -> DestParts {
    let d = r.destination().unwrap_or_else(|| {
        panic!(
            "expected a destination, got {:?}\ntrace: {:#?}",
            r.outcome, r.trace
        )
    });
    (
        d.host_header.clone(),
        d.tls_name_text(),
        d.sni().map(str::to_owned),
        d.targets
            .iter()
            .map(|t| {
                (
                    t.host.clone(),
                    t.port,
                    t.addrs.iter().map(|a| a.to_string()).collect(),
                )
            })
            .collect(),
    )
}

pub fn srv_names(r: &Resolution) -> Vec<String> {
    r.srv.iter().map(|s| s.name.clone()).collect()
}
