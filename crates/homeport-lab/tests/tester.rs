//! The tester service's API against the lab's domains: every status code,
//! the compatible schema, the cache, rate limits, shared checks and the
//! deny list.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use homeport_lab::Lab;
use homeport_server::metrics::Metrics;
use homeport_server::routes::ConnMeta;
use homeport_server::store::SqliteStore;
use homeport_server::tester::{Tester, TesterLimits};
use homeport_test_support::{HttpsServer, Scripted, TlsSetup};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

struct Env {
    rt: tokio::runtime::Runtime,
    lab: Lab,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let lab = rt.block_on(Lab::start()).unwrap();
        Env { rt, lab }
    })
}

/// A domain of the test's own (so parallel tests cannot change its request
/// counts), with a key server and a version endpoint.
fn counted_domain(name: &str) -> HttpsServer {
    own_domain(
        name,
        homeport_test_support::Handler::routes()
            .route("/_matrix/key/v2/server", Scripted::json(key_doc(name)))
            .route(
                "/_matrix/federation/v1/version",
                Scripted::json(serde_json::json!({"server": {"name": "c", "version": "1"}})),
            )
            .fallback(Scripted::delay(
                Duration::from_millis(200),
                Scripted::not_found(),
            )),
    )
}

/// `name` served by `handler` on a loopback address of its own, on the
/// lab's default port with a certificate from the lab's CA; the lab's DNS
/// points `name` at it.
fn own_domain(name: &str, handler: impl Into<homeport_test_support::Handler>) -> HttpsServer {
    let e = env();
    let server = HttpsServer::start_on_any_loopback(
        homeport_lab::DEF_PORT,
        TlsSetup::Cert(e.lab.ca.issue(&[name]).unwrap()),
        handler,
    )
    .unwrap();
    let std::net::IpAddr::V4(ip) = server.addr().ip() else {
        panic!()
    };
    let n = name.to_owned();
    e.lab.dns.zone().update(move |z| z.a(&n, ip)).unwrap();
    server
}

/// A key document for `name`, valid for a day, signed with a new key.
fn key_doc(name: &str) -> Value {
    let key = homeport_core::signing::SigningKey::generate("a_c").unwrap();
    homeport_core::keys::ServerKeysBuilder::new(
        &homeport_core::ServerName::parse(name).unwrap(),
        homeport_federation::keys::now_ms() + 86_400_000,
    )
    .verify_key(&key)
    .sign(&[&key])
    .unwrap()
}

fn tester(limits: TesterLimits, allow_loopback: bool) -> Arc<Tester> {
    tester_with(
        limits,
        allow_loopback,
        Arc::new(SqliteStore::memory().unwrap()),
    )
}

fn tester_with(
    limits: TesterLimits,
    allow_loopback: bool,
    store: Arc<dyn homeport_server::store::Store>,
) -> Arc<Tester> {
    let e = env();
    let mut client_cfg_lab = e.lab.client(Duration::from_secs(20)).unwrap();
    if !allow_loopback {
        // Rebuild with the default deny list in both the resolver and the
        // connector.
        let mut rc = homeport_resolve::ResolverConfig::default();
        rc.dns.nameservers = vec![e.lab.dns.addr()];
        rc.trust = homeport_resolve::TrustConfig::only(vec![e.lab.ca.cert_der()]);
        rc.well_known.port = homeport_lab::WK_PORT;
        rc.default_port = homeport_lab::DEF_PORT;
        rc.filter = homeport_resolve::AddressFilter::default_deny();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(e.lab.ca.cert_der()).unwrap();
        let mut cc =
            homeport_federation::ClientConfig::new(homeport_federation::TlsPolicy::new(roots));
        cc.connect.filter = homeport_resolve::AddressFilter::default_deny();
        let resolver =
            e.rt.block_on(async { homeport_resolve::Resolver::new(rc) })
                .unwrap();
        client_cfg_lab = homeport_federation::FederationClient::new(resolver, cc, None);
    }
    Arc::new(Tester::new(
        client_cfg_lab,
        store,
        Arc::new(Metrics::default()),
        limits,
    ))
}

fn call(t: &Arc<Tester>, method: &str, uri: &str, ip: &str) -> (u16, http::HeaderMap, Vec<u8>) {
    let router = homeport_server::tester::router(t.clone());
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(ConnMeta {
        client: format!("{ip}:1").parse().unwrap(),
        sni: None,
        tls: true,
    });
    env().rt.block_on(async move {
        let r = router.oneshot(req).await.unwrap();
        let s = r.status().as_u16();
        let h = r.headers().clone();
        (
            s,
            h,
            r.into_body().collect().await.unwrap().to_bytes().to_vec(),
        )
    })
}

/// Six concurrent GETs of `uri`, from six client addresses, spread over
/// `testers` in turn; their statuses.
fn concurrent_statuses(testers: &[Arc<Tester>], uri: &str) -> Vec<u16> {
    env().rt.block_on(async {
        let mut hs = Vec::new();
        for i in 0..6 {
            let router = homeport_server::tester::router(testers[i % testers.len()].clone());
            let mut req = http::Request::get(uri).body(Body::empty()).unwrap();
            req.extensions_mut().insert(ConnMeta {
                client: format!("203.0.113.{i}:1").parse().unwrap(),
                sni: None,
                tls: true,
            });
            hs.push(tokio::spawn(async move {
                router.oneshot(req).await.unwrap().status().as_u16()
            }));
        }
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    })
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn open() -> TesterLimits {
    TesterLimits {
        per_client_per_minute: 1000,
        per_target_interval: Duration::ZERO,
        ..TesterLimits::default()
    }
}

#[test]
fn missing_and_invalid_names() {
    let t = tester(open(), true);
    for uri in [
        "/api/report",
        "/api/report?server_name=",
        "/api/federation-ok",
        "/api/v1/check?server_name=",
    ] {
        let (s, h, b) = call(&t, "GET", uri, "198.51.100.1");
        assert_eq!(s, 400, "{uri}");
        assert_eq!(json(&b)["errcode"], "M_MISSING_PARAM");
        assert_eq!(h["access-control-allow-origin"], "*");
    }
    let (s, _, b) = call(
        &t,
        "GET",
        "/api/report?server_name=bad%20name",
        "198.51.100.1",
    );
    assert_eq!(s, 200);
    let v = json(&b);
    assert_eq!(v["Error"], "Invalid server name 'bad name'");
    assert_eq!(v["FederationOK"], false);
    let (s, h, b) = call(
        &t,
        "GET",
        "/api/federation-ok?server_name=bad%20name",
        "198.51.100.1",
    );
    assert_eq!((s, b.as_slice()), (200, &b"BAD"[..]));
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let (s, _, b) = call(
        &t,
        "GET",
        "/api/v1/check?server_name=bad%20name",
        "198.51.100.1",
    );
    assert_eq!(s, 400);
    assert_eq!(json(&b)["errcode"], "M_INVALID_PARAM");
}

#[test]
fn options_and_other_methods() {
    let t = tester(open(), true);
    let (s, h, _) = call(
        &t,
        "OPTIONS",
        "/api/report?server_name=x.lab",
        "198.51.100.2",
    );
    assert_eq!(s, 204);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    let (s, _, b) = call(&t, "POST", "/api/report?server_name=x.lab", "198.51.100.2");
    assert_eq!(s, 405);
    assert!(json(&b)["errcode"].is_string());
    let (s, _, _) = call(
        &t,
        "GET",
        "/api/debug/pprof?server_name=x.lab",
        "198.51.100.2",
    );
    assert_eq!(s, 404, "no debug endpoints");
}

#[test]
fn report_federation_ok_and_full_check() {
    let t = tester(open(), true);
    let (s, _, b) = call(
        &t,
        "GET",
        "/api/report?server_name=wk-srv.lab",
        "198.51.100.3",
    );
    assert_eq!(s, 200);
    let v = json(&b);
    assert_eq!(v["FederationOK"], true);
    assert_eq!(
        v["DNSResult"]["SRVCName"],
        "_matrix-fed._tcp.hs.wk-srv.lab."
    );
    let (_, _, b) = call(
        &t,
        "GET",
        "/api/federation-ok?server_name=wk-srv.lab",
        "198.51.100.3",
    );
    assert_eq!(b, b"GOOD");
    let (_, _, b) = call(
        &t,
        "GET",
        "/api/federation-ok?server_name=picky.lab",
        "198.51.100.3",
    );
    assert_eq!(b, b"BAD");
    let (s, _, b) = call(
        &t,
        "GET",
        "/api/v1/check?server_name=picky.lab",
        "198.51.100.3",
    );
    assert_eq!(s, 200);
    let v = json(&b);
    assert_eq!(v["findings"][0]["id"], "host_port_rejected_by_proxy");
    assert!(v["trace"].is_array());
}

#[test]
fn results_are_cached_and_no_cache_bypasses() {
    let counted = counted_domain("cache.lab");
    let t = tester(open(), true);
    let count = || {
        counted
            .requests()
            .iter()
            .filter(|r| r.path() == "/_matrix/key/v2/server")
            .count()
    };
    let before = count();
    call(
        &t,
        "GET",
        "/api/report?server_name=cache.lab",
        "198.51.100.4",
    );
    let after_first = count();
    assert!(after_first > before);
    call(
        &t,
        "GET",
        "/api/report?server_name=cache.lab",
        "198.51.100.4",
    );
    call(
        &t,
        "GET",
        "/api/v1/check?server_name=cache.lab",
        "198.51.100.4",
    );
    assert_eq!(count(), after_first, "served from the cache");
    call(
        &t,
        "GET",
        "/api/report?server_name=cache.lab&no_cache=1",
        "198.51.100.4",
    );
    assert!(count() > after_first, "no_cache=1 runs a fresh check");
}

#[test]
fn per_client_rate_limit_gives_429_with_retry_after() {
    let t = tester(
        TesterLimits {
            per_target_interval: Duration::ZERO,
            ..TesterLimits::default()
        },
        true,
    );
    for i in 0..10 {
        let (s, _, _) = call(
            &t,
            "GET",
            "/api/federation-ok?server_name=plain.lab",
            "198.51.100.5",
        );
        assert_eq!(s, 200, "request {i}");
    }
    let (s, h, b) = call(
        &t,
        "GET",
        "/api/federation-ok?server_name=plain.lab",
        "198.51.100.5",
    );
    assert_eq!(s, 429);
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(json(&b)["errcode"], "M_LIMIT_EXCEEDED");
    // Another client is not affected.
    assert_eq!(
        call(
            &t,
            "GET",
            "/api/federation-ok?server_name=plain.lab",
            "198.51.100.6"
        )
        .0,
        200
    );
}

#[test]
fn one_fresh_check_per_target_per_interval() {
    let t = tester(
        TesterLimits {
            per_client_per_minute: 1000,
            ..TesterLimits::default()
        },
        true,
    );
    assert_eq!(
        call(
            &t,
            "GET",
            "/api/report?server_name=wk-port.lab&no_cache=1",
            "198.51.100.7"
        )
        .0,
        200
    );
    let (s, h, _) = call(
        &t,
        "GET",
        "/api/report?server_name=wk-port.lab&no_cache=1",
        "198.51.100.8",
    );
    assert_eq!(s, 429);
    assert!(h.get("retry-after").is_some());
    // The cached answer is still served without no_cache.
    assert_eq!(
        call(
            &t,
            "GET",
            "/api/report?server_name=wk-port.lab",
            "198.51.100.8"
        )
        .0,
        200
    );
}

#[test]
fn concurrent_requests_for_one_target_share_the_running_check() {
    let counted = counted_domain("shared.lab");
    let t = tester(open(), true);
    let before = counted
        .requests()
        .iter()
        .filter(|r| r.path() == "/_matrix/federation/v1/version")
        .count();
    let statuses = concurrent_statuses(
        std::slice::from_ref(&t),
        "/api/report?server_name=shared.lab&no_cache=1",
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let after = counted
        .requests()
        .iter()
        .filter(|r| r.path() == "/_matrix/federation/v1/version")
        .count();
    assert_eq!(after - before, 1, "one check for six requests");
}

#[test]
fn the_deny_list_keeps_the_tester_off_the_hosts_network() {
    // A server of its own, so other tests' traffic cannot change its count.
    let own = own_domain("denied.lab", Scripted::ok());
    let t = tester(open(), false);
    let (s, _, b) = call(
        &t,
        "GET",
        "/api/v1/check?server_name=denied.lab",
        "198.51.100.9",
    );
    assert_eq!(s, 200);
    let v = json(&b);
    assert_eq!(v["ok"], false);
    assert!(
        v["resolution"]["error"]
            .as_str()
            .unwrap()
            .contains("denied"),
        "{}",
        v["resolution"]
    );
    // IP literals, including IPv4-mapped IPv6, are refused too.
    for lit in [
        "127.0.0.1",
        "%5B%3A%3Affff%3A127.0.0.1%5D",
        "10.0.0.1%3A8448",
    ] {
        let (_, _, b) = call(
            &t,
            "GET",
            &format!("/api/v1/check?server_name={lit}"),
            "198.51.100.9",
        );
        assert!(
            json(&b)["resolution"]["error"]
                .as_str()
                .unwrap_or("")
                .contains("denied"),
            "{lit}"
        );
    }
    assert_eq!(own.request_count(), 0, "nothing on loopback was dialled");
    assert!(own.handshakes().is_empty(), "not even a TLS handshake");
}

#[test]
fn the_page_is_served_with_a_labelled_form() {
    let t = tester(open(), true);
    let (s, h, b) = call(&t, "GET", "/", "198.51.100.10");
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = String::from_utf8(b).unwrap();
    assert!(html.contains("<label for=\"name\">Server name</label>"));
    assert!(html.contains("/api/v1/check?server_name="));
}

/// Two tester instances sharing one PostgreSQL store (two `serve`
/// processes behind a load balancer): requests for one target spread over
/// both run one check; the report is cached for both; a fresh check within
/// the interval is refused on the instance that did not run it too.
#[test]
fn two_instances_sharing_postgres_run_one_check_per_target() {
    if !homeport_test_support::postgres::available() {
        return;
    }
    let pg = homeport_test_support::postgres::start().unwrap();
    pg.create_database("tester_shared").unwrap();
    let args = homeport_server::config::PostgresArgs::new(
        pg.user(),
        Some(pg.password()),
        "tester_shared",
        &pg.host().to_string(),
        pg.port(),
        (1, 4),
    );
    let store =
        |a: &homeport_server::config::PostgresArgs| -> Arc<dyn homeport_server::store::Store> {
            Arc::new(
                env()
                    .rt
                    .block_on(homeport_server::store::PgStore::connect(a))
                    .unwrap(),
            )
        };
    let limits = TesterLimits {
        per_client_per_minute: 1000,
        ..TesterLimits::default()
    };
    let a = tester_with(limits.clone(), true, store(&args));
    let b = tester_with(limits, true, store(&args));
    let counted = counted_domain("pgshared.lab");
    let checks = || {
        counted
            .requests()
            .iter()
            .filter(|r| r.path() == "/_matrix/federation/v1/version")
            .count()
    };
    let statuses = concurrent_statuses(
        &[a.clone(), b.clone()],
        "/api/report?server_name=pgshared.lab",
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(checks(), 1, "one check for six requests on two instances");
    // Cached for both.
    assert_eq!(
        call(
            &b,
            "GET",
            "/api/report?server_name=pgshared.lab",
            "198.51.100.9"
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &a,
            "GET",
            "/api/report?server_name=pgshared.lab",
            "198.51.100.9"
        )
        .0,
        200
    );
    assert_eq!(checks(), 1);
    // A fresh check right after is refused on both instances.
    for t in [&a, &b] {
        let (s, h, _) = call(
            t,
            "GET",
            "/api/report?server_name=pgshared.lab&no_cache=1",
            "198.51.100.10",
        );
        assert_eq!(s, 429);
        assert!(h.get("retry-after").is_some());
    }
    assert_eq!(checks(), 1);
    let leases = pg
        .psql(
            "tester_shared",
            "SELECT count(*) FROM leases WHERE name = 'tester:pgshared.lab'",
        )
        .unwrap();
    assert_eq!(leases.trim(), "1");
}

/// A server that closes a kept-alive connection (here: drops the first
/// request that carries the port in Host) is not a proxy rejecting that
/// Host form: the probe asks again on a new connection. One that drops the
/// request every time is still reported.
#[test]
fn a_dropped_connection_is_asked_again_not_reported_as_a_host_rejection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let probe = |name: &'static str, drops: usize| {
        let doc = key_doc(name);
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let server = own_domain(
            name,
            homeport_test_support::Handler::new(move |r: &homeport_test_support::Recorded| {
                let with_port = r.host.as_deref().is_some_and(|h| h.contains(':'));
                if with_port && d.load(Ordering::SeqCst) < drops {
                    d.fetch_add(1, Ordering::SeqCst);
                    return Scripted::close();
                }
                match r.path() {
                    "/_matrix/key/v2/server" => Scripted::json(doc.clone()),
                    "/_matrix/federation/v1/version" => {
                        Scripted::json(serde_json::json!({"server": {"name": "d", "version": "1"}}))
                    }
                    _ => Scripted::not_found(),
                }
            }),
        );
        let t = tester(open(), true);
        let (s, _, b) = call(
            &t,
            "GET",
            &format!("/api/v1/check?server_name={name}"),
            "198.51.100.20",
        );
        assert_eq!(s, 200);
        let v = json(&b);
        let ids: Vec<String> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect();
        let host_probe = v["addresses"][0]["host_probe"].to_string();
        (ids, dropped.load(Ordering::SeqCst), server, host_probe)
    };
    let (ids, dropped, _s, hp) = probe("dropsonce.lab", 1);
    assert_eq!(
        dropped, 1,
        "the first Host-with-port request was dropped: {hp}"
    );
    assert!(
        !ids.iter().any(|i| i == "host_port_rejected_by_proxy"),
        "{ids:?} {hp}"
    );
    let (ids, dropped, _s, hp) = probe("dropsalways.lab", usize::MAX);
    assert_eq!(
        dropped, 2,
        "dropped on the first and the new connection, asked no more: {hp}"
    );
    assert!(
        ids.iter().any(|i| i == "host_port_rejected_by_proxy"),
        "{ids:?} {hp}"
    );
    // The report says why there was no answer, on both connections.
    let hp: serde_json::Value = serde_json::from_str(&hp).unwrap();
    let why = hp["alternative_error"].as_str().unwrap_or_default();
    assert!(why.contains("; on a new connection: "), "{hp}");
    assert!(hp["prescribed_error"].is_null(), "{hp}");
}

/// A server slower than the tester's deadline: the API still answers 200
/// with the report so far (check_timed_out, what was pending), not a 504,
/// and the compatible schema says federation is not OK.
#[test]
fn a_check_past_the_deadline_answers_with_the_report_so_far() {
    let name = "slowtester.lab";
    let server = own_domain(
        name,
        homeport_test_support::Handler::routes().fallback(Scripted::delay(
            Duration::from_secs(120),
            Scripted::not_found(),
        )),
    );
    // Seconds of headroom for connect and TLS on loopback on a busy machine.
    let t = tester(
        TesterLimits {
            deadline: Duration::from_secs(5),
            ..open()
        },
        true,
    );
    let (s, _, b) = call(
        &t,
        "GET",
        &format!("/api/v1/check?server_name={name}"),
        "198.51.100.21",
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let v = json(&b);
    assert_eq!(v["ok"], false, "{v}");
    let ids: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert!(ids.contains(&"check_timed_out"), "{ids:?}");
    let pending: Vec<&str> = v["pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        pending
            .iter()
            .any(|p| p.starts_with(&format!("address {}:", server.addr()))),
        "{pending:?}"
    );
    // What was learnt before the deadline is kept: the TLS handshake.
    assert!(v["addresses"][0]["tls"].is_object(), "{v}");
    // The same report, cached, in the compatible schema.
    let (s, _, b) = call(
        &t,
        "GET",
        &format!("/api/report?server_name={name}"),
        "198.51.100.21",
    );
    assert_eq!(s, 200);
    assert_eq!(json(&b)["FederationOK"], false);
}
