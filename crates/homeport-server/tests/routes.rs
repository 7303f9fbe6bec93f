//! Every route of the HTTP surface, driven through the Router without a
//! socket where a socket adds nothing; the notary against real in-process
//! origins; the proxy against a real in-process backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use homeport_core::ServerName;
use homeport_core::keys::{ServerKeysBuilder, check_server_keys};
use homeport_core::signing::{self, SigningKey};
use homeport_federation::keys::now_ms;
use homeport_federation::{ClientConfig, FederationClient, KeyFetcher, MemoryKeyStore, TlsPolicy};
use homeport_resolve::{AddressFilter, Resolver, ResolverConfig, TrustConfig};
use homeport_server::keyserver::{KeyServer, OldKey};
use homeport_server::metrics::Metrics;
use homeport_server::notary::{Notary, NotaryLimits};
use homeport_server::proxy::{HostPolicy, Proxy};
use homeport_server::routes::{self, AppState, ConnMeta, Resources, WellKnownDocs};
use homeport_server::store::{SqliteStore, Store, StoredKeys};
use homeport_test_support::{
    DnsServer, Handler, HttpsServer, Recorded, Scripted, TestCa, TlsSetup, Zone, next_loopback,
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const DAY: u64 = 86_400_000;

fn name(s: &str) -> ServerName {
    ServerName::parse(s).unwrap()
}

struct Fixture {
    key: SigningKey,
    state: Arc<AppState>,
}

fn state_with(
    notary: Option<Arc<Notary>>,
    proxy: Option<Proxy>,
    well_known: WellKnownDocs,
) -> Fixture {
    let key = SigningKey::generate("a_self").unwrap();
    let old = SigningKey::generate("a_old").unwrap();
    let ks = KeyServer::new(
        name("hs.test"),
        vec![key.clone()],
        vec![OldKey {
            id: old.id().clone(),
            key: old.public_key_base64(),
            expired_ts: 5,
        }],
        Duration::from_secs(86_400),
    );
    let state = Arc::new(AppState {
        keys: Arc::new(ks),
        cert: None,
        well_known,
        notary,
        proxy,
        synapse_admin: false,
        metrics: Arc::new(Metrics::default()),
    });
    Fixture { key, state }
}

fn fed() -> Resources {
    Resources {
        federation: true,
        metrics: true,
        ..Resources::default()
    }
}

async fn call(
    router: &axum::Router,
    req: http::Request<Body>,
) -> (http::StatusCode, http::HeaderMap, Vec<u8>) {
    let mut req = req;
    req.extensions_mut().insert(ConnMeta {
        client: "127.0.0.1:1".parse().unwrap(),
        sni: None,
        tls: true,
    });
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn well_known_documents_with_cors_and_cache_control() {
    let f = state_with(
        None,
        None,
        WellKnownDocs {
            server: Some(json!({"m.server": "fed.hs.test:443"})),
            client: Some(json!({"m.homeserver": {"base_url": "https://hs.test"}})),
            support: None,
            cache_control: "max-age=3600".into(),
        },
    );
    let r = routes::router(f.state.clone(), fed());
    let (s, h, b) = call(&r, get("/.well-known/matrix/server")).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap(),
        json!({"m.server": "fed.hs.test:443"})
    );
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["cache-control"], "max-age=3600");
    assert_eq!(h["content-type"], "application/json");
    let (s, _, _) = call(&r, get("/.well-known/matrix/client")).await;
    assert_eq!(s, 200);
    let (s, h, b) = call(&r, get("/.well-known/matrix/support")).await;
    assert_eq!(s, 404);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );
}

#[tokio::test]
async fn key_document_and_legacy_path_verify() {
    let f = state_with(None, None, WellKnownDocs::default());
    let r = routes::router(f.state.clone(), fed());
    for path in [
        "/_matrix/key/v2/server",
        "/_matrix/key/v2/server/ed25519:a_self",
    ] {
        let (s, _, b) = call(&r, get(path)).await;
        assert_eq!(s, 200, "{path}");
        let doc: Value = serde_json::from_slice(&b).unwrap();
        let rep = check_server_keys(&doc, &name("hs.test"), now_ms());
        assert!(rep.ok(), "{path}: {:?}", rep.problems);
        assert_eq!(rep.verified_keys()[0].1, f.key.verifying_key());
        assert_eq!(doc["old_verify_keys"]["ed25519:a_old"]["expired_ts"], 5);
        let until = doc["valid_until_ts"].as_u64().unwrap();
        assert!(until > now_ms() + DAY - 60_000 && until <= now_ms() + DAY);
        // Served canonical.
        assert_eq!(
            b,
            homeport_core::canonical_json::to_canonical_vec(
                &doc,
                homeport_core::canonical_json::Mode::Strict
            )
            .unwrap()
        );
    }
}

#[tokio::test]
async fn version_unknown_paths_and_metrics() {
    let f = state_with(None, None, WellKnownDocs::default());
    let r = routes::router(f.state.clone(), fed());
    let (s, _, b) = call(&r, get("/_matrix/federation/v1/version")).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["server"]["name"],
        "homeport"
    );
    let (s, _, b) = call(&r, get("/_matrix/federation/v1/query/profile")).await;
    assert_eq!(s, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap(),
        json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
    );
    let (s, _, _) = call(&r, get("/anything")).await;
    assert_eq!(s, 404);
    let (s, _, b) = call(&r, get("/metrics")).await;
    assert_eq!(s, 200);
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains("homeport_http_requests_total{route=\"version\",status=\"200\"} 1"),
        "{text}"
    );
    // A listener without the metrics resource does not serve it.
    let r2 = routes::router(
        f.state.clone(),
        Resources {
            keys: true,
            ..Resources::default()
        },
    );
    assert_eq!(call(&r2, get("/metrics")).await.0, 404);
    assert_eq!(
        call(&r2, get("/_matrix/federation/v1/version")).await.0,
        404
    );
    assert_eq!(call(&r2, get("/_matrix/key/v2/server")).await.0, 200);
}

// ---- notary ----

struct Origins {
    _dns: DnsServer,
    origin: HttpsServer,
    origin_name: String,
    origin_key: SigningKey,
    fetcher_cfg: (ResolverConfig, TlsPolicy),
}

fn origins() -> Origins {
    let ca = TestCa::new("notary test CA").unwrap();
    let ip = next_loopback();
    let origin = HttpsServer::start(
        (IpAddr::V4(ip), 0).into(),
        TlsSetup::Cert(ca.issue(&["origin.test"]).unwrap()),
        Scripted::not_found(),
    )
    .unwrap();
    let origin_name = format!("origin.test:{}", origin.addr().port());
    let origin_key = SigningKey::generate("a_origin").unwrap();
    let doc = ServerKeysBuilder::new(&name(&origin_name), now_ms() + DAY)
        .verify_key(&origin_key)
        .sign(&[&origin_key])
        .unwrap();
    origin.set_handler(Handler::routes().route("/_matrix/key/v2/server", Scripted::json(doc)));
    let dns = DnsServer::start(
        IpAddr::V4(next_loopback()),
        Zone::new().a("origin.test", ip),
    )
    .unwrap();
    let mut rc = ResolverConfig::default();
    rc.dns.nameservers = vec![dns.addr()];
    rc.dns.timeout = Duration::from_millis(500);
    rc.trust = TrustConfig::only(vec![ca.cert_der()]);
    rc.timeout = Duration::from_secs(5);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    Origins {
        _dns: dns,
        origin,
        origin_name,
        origin_key,
        fetcher_cfg: (rc, TlsPolicy::new(roots)),
    }
}

fn notary_state(o: &Origins, store: Arc<dyn Store>, filter: AddressFilter) -> Fixture {
    let (mut rc, tls) = o.fetcher_cfg.clone();
    rc.filter = filter;
    let client = FederationClient::new(Resolver::new(rc).unwrap(), ClientConfig::new(tls), None);
    let fetcher = KeyFetcher::new(client, Arc::new(MemoryKeyStore::default()));
    let f = state_with(None, None, WellKnownDocs::default());
    let notary = Notary::new(
        f.state.keys.clone(),
        fetcher,
        store,
        f.state.metrics.clone(),
        NotaryLimits::default(),
    );
    let state = Arc::new(AppState {
        keys: f.state.keys.clone(),
        cert: None,
        well_known: WellKnownDocs::default(),
        notary: Some(Arc::new(notary)),
        proxy: None,
        synapse_admin: false,
        metrics: f.state.metrics.clone(),
    });
    Fixture { key: f.key, state }
}

fn post_query(body: Value) -> http::Request<Body> {
    http::Request::post("/_matrix/key/v2/query")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn loopback_allowed() -> AddressFilter {
    let mut f = AddressFilter::default_deny();
    f.allow.push("127.0.0.0/8".parse().unwrap());
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notary_miss_then_hit_keeps_origin_signature_and_adds_its_own() {
    let o = origins();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory().unwrap());
    let f = notary_state(&o, store.clone(), loopback_allowed());
    let r = routes::router(f.state.clone(), fed());
    let q = json!({"server_keys": {o.origin_name.clone(): {"ed25519:a_origin": {"minimum_valid_until_ts": 0}}}});
    for round in 0..2 {
        let (s, _, b) = call(&r, post_query(q.clone())).await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        let entry = &v["server_keys"][0];
        assert!(
            check_server_keys(entry, &name(&o.origin_name), now_ms()).ok(),
            "round {round}"
        );
        signing::verify_json(entry, "hs.test", f.key.id(), &f.key.verifying_key()).unwrap();
    }
    assert_eq!(o.origin.requests().len(), 1, "second answer from the store");
    assert_eq!(f.state.metrics.notary_counts(), (1, 1, 0));
    assert!(store.server_keys(&o.origin_name).await.unwrap().is_some());
    // GET form.
    let path = format!("/_matrix/key/v2/query/{}", o.origin_name);
    let (s, _, b) = call(&r, get(&path)).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["server_keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notary_serves_stale_when_the_origin_is_down() {
    let o = origins();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory().unwrap());
    // A stored response past its half-life.
    let old = ServerKeysBuilder::new(&name(&o.origin_name), now_ms() + 1000)
        .verify_key(&o.origin_key)
        .sign(&[&o.origin_key])
        .unwrap();
    store
        .put_server_keys(&StoredKeys {
            server_name: o.origin_name.clone(),
            json: old,
            fetched_at: now_ms() - DAY,
            valid_until_ts: now_ms() + 1000,
        })
        .await
        .unwrap();
    o.origin.set_handler(Scripted::new(503));
    let f = notary_state(&o, store, loopback_allowed());
    let r = routes::router(f.state.clone(), fed());
    let (s, _, b) = call(
        &r,
        post_query(json!({"server_keys": {o.origin_name.clone(): {}}})),
    )
    .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        v["server_keys"].as_array().unwrap().len(),
        1,
        "stale entry served"
    );
    assert_eq!(o.origin.requests().len(), 1, "the origin was tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_valid_until_ts_forces_a_refetch() {
    let o = origins();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory().unwrap());
    let f = notary_state(&o, store, loopback_allowed());
    let r = routes::router(f.state.clone(), fed());
    let q = |min: u64| json!({"server_keys": {o.origin_name.clone(): {"ed25519:a_origin": {"minimum_valid_until_ts": min}}}});
    call(&r, post_query(q(0))).await;
    call(&r, post_query(q(0))).await;
    assert_eq!(o.origin.requests().len(), 1);
    call(&r, post_query(q(now_ms() + 30 * DAY))).await;
    assert_eq!(
        o.origin.requests().len(),
        2,
        "stored answer not valid long enough: refetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_blocks_loopback_origins_unless_allowed() {
    let o = origins();
    let f = notary_state(
        &o,
        Arc::new(SqliteStore::memory().unwrap()),
        AddressFilter::default_deny(),
    );
    let r = routes::router(f.state.clone(), fed());
    let (s, _, b) = call(
        &r,
        post_query(json!({"server_keys": {o.origin_name.clone(): {}}})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["server_keys"],
        json!([])
    );
    assert_eq!(o.origin.requests().len(), 0, "never dialled");
    assert_eq!(f.state.metrics.notary_counts().2, 1);
}

#[tokio::test]
async fn notary_refuses_bad_bodies_and_too_many_servers() {
    let o = origins();
    let f = notary_state(
        &o,
        Arc::new(SqliteStore::memory().unwrap()),
        AddressFilter::default_deny(),
    );
    let r = routes::router(f.state.clone(), fed());
    let (s, _, b) = call(&r, post_query(json!({"nope": 1}))).await;
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["errcode"],
        "M_BAD_JSON"
    );
    let many: serde_json::Map<String, Value> = (0..101)
        .map(|i| (format!("s{i}.test"), json!({})))
        .collect();
    let (s, _, _) = call(&r, post_query(json!({"server_keys": many}))).await;
    assert_eq!(s, 400);
    let big = "x".repeat(300_000);
    let (s, _, _) = call(&r, post_query(json!({"server_keys": {}, "pad": big}))).await;
    assert_eq!(s, 413);
    let (s, _, _) = call(
        &r,
        http::Request::put("/_matrix/key/v2/query")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 405);
}

// ---- proxy ----

fn backend() -> HttpsServer {
    HttpsServer::start(
        SocketAddr::new(IpAddr::V4(next_loopback()), 0),
        TlsSetup::Plain,
        Handler::new(|r: &Recorded| {
            Scripted::json(json!({"uri": r.uri, "host": r.host, "auth": r.header("authorization"), "len": r.body.len(),
                                  "xff": r.header("x-forwarded-for")}))
        }),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_targets_bodies_and_headers_unchanged() {
    let b = backend();
    let proxy = Proxy::new(
        &format!("http://{}", b.addr()),
        HostPolicy::Preserve,
        Duration::from_secs(5),
    )
    .unwrap();
    let f = state_with(None, Some(proxy), WellKnownDocs::default());
    let r = routes::router(
        f.state.clone(),
        Resources {
            federation: true,
            client: true,
            ..Resources::default()
        },
    );
    let body = vec![b'z'; 3 * 1024 * 1024];
    let req = http::Request::put("/_matrix/federation/v1/send/a%2Fb%25c?x=1&y=%2F&y=2")
        .header("host", "hs.test:8448")
        .header(
            "authorization",
            "X-Matrix origin=\"o\",key=\"ed25519:1\",sig=\"s\"",
        )
        .body(Body::from(body.clone()))
        .unwrap();
    let (s, _, out) = call(&r, req).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["uri"],
        "/_matrix/federation/v1/send/a%2Fb%25c?x=1&y=%2F&y=2"
    );
    assert_eq!(v["host"], "hs.test:8448");
    assert_eq!(
        v["auth"],
        "X-Matrix origin=\"o\",key=\"ed25519:1\",sig=\"s\""
    );
    assert_eq!(v["len"], body.len());
    assert_eq!(v["xff"], "127.0.0.1");
    // Client paths go through, other paths do not.
    assert_eq!(call(&r, get("/_matrix/client/versions")).await.0, 200);
    assert_eq!(
        call(&r, get("/_synapse/admin/v1/users")).await.0,
        404,
        "synapse_admin is off"
    );
    // The version endpoint is proxied when a backend exists.
    let (_, _, out) = call(&r, get("/_matrix/federation/v1/version")).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap()["uri"],
        "/_matrix/federation/v1/version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_host_policy_backend_and_backend_down() {
    let b = backend();
    let proxy = Proxy::new(
        &format!("http://{}", b.addr()),
        HostPolicy::Backend,
        Duration::from_secs(5),
    )
    .unwrap();
    let f = state_with(None, Some(proxy), WellKnownDocs::default());
    let r = routes::router(f.state.clone(), fed());
    let req = http::Request::get("/_matrix/federation/v1/query/profile")
        .header("host", "hs.test")
        .body(Body::empty())
        .unwrap();
    let (_, _, out) = call(&r, req).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap()["host"],
        b.addr().to_string()
    );
    // Notary disabled with a backend: the query is proxied.
    let (_, _, out) = call(&r, post_query(json!({"server_keys": {}}))).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap()["uri"],
        "/_matrix/key/v2/query"
    );
    drop(b);
    let dead = Proxy::new(
        "http://127.0.0.1:1",
        HostPolicy::Preserve,
        Duration::from_secs(2),
    )
    .unwrap();
    let f = state_with(None, Some(dead), WellKnownDocs::default());
    let r = routes::router(f.state.clone(), fed());
    let (s, _, out) = call(&r, get("/_matrix/federation/v1/query/profile")).await;
    assert_eq!(s, 502);
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap()["errcode"],
        "M_UNKNOWN"
    );
    assert!(Proxy::new("ftp://x", HostPolicy::Preserve, Duration::from_secs(1)).is_err());
}

/// Another instance refetched (the store holds a newer response): a hit
/// re-reads the store at most a second after the last read, so the newer
/// response is served within a second; within that second, hits need no
/// store read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notary_hits_see_another_instances_refetch_within_a_second() {
    let o = origins();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory().unwrap());
    let f = notary_state(&o, store.clone(), loopback_allowed());
    let r = routes::router(f.state.clone(), fed());
    let q = json!({"server_keys": {o.origin_name.clone(): {}}});
    let answer = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap()["server_keys"][0].clone();
    let (_, _, b) = call(&r, post_query(q.clone())).await;
    let first = answer(&b);
    // "Another instance" stores a newer response with an extra key.
    let extra = SigningKey::generate("b_other").unwrap();
    let newer = ServerKeysBuilder::new(&name(&o.origin_name), now_ms() + 2 * DAY)
        .verify_key(&o.origin_key)
        .verify_key(&extra)
        .sign(&[&o.origin_key, &extra])
        .unwrap();
    store
        .put_server_keys(&StoredKeys {
            server_name: o.origin_name.clone(),
            json: newer.clone(),
            fetched_at: now_ms(),
            valid_until_ts: now_ms() + 2 * DAY,
        })
        .await
        .unwrap();
    let (_, _, b) = call(&r, post_query(q.clone())).await;
    assert_eq!(answer(&b), first, "within the second: the answer it had");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, _, b) = call(&r, post_query(q.clone())).await;
    let now = answer(&b);
    assert!(now["verify_keys"]["ed25519:b_other"].is_object(), "{now}");
    assert_eq!(
        o.origin.requests().len(),
        1,
        "never refetched from the origin"
    );
    // Asking for a key the cached answer lacks goes to the store at once.
    let q2 = json!({"server_keys": {o.origin_name.clone(): {"ed25519:c_unknown": {}}}});
    call(&r, post_query(q2)).await;
    assert!(f.state.metrics.notary_counts().0 >= 2);
}
