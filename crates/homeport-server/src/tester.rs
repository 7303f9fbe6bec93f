//! The tester as a service: `/api/report` and `/api/federation-ok` as
//! matrix-federation-tester answers them, `/api/v1/check` with homeport's
//! full report, and the page at `/`. Safe to expose: a result cache, a
//! deadline per report, rate limits (per client IP, and one fresh check per
//! target at a time and per interval), concurrent requests for one target
//! sharing the running check, and the address deny list enforced on every
//! socket address dialled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use homeport_core::ServerName;
use homeport_federation::FederationClient;
use homeport_federation::check::{self, CheckOptions};
use homeport_federation::keys::now_ms;
use homeport_federation::tester_compat;
use homeport_resolve::cache::SingleFlight;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::store::Store;

/// Tester limits.
#[derive(Clone, Debug)]
pub struct TesterLimits {
    /// How long a report is served from the cache.
    pub cache_ttl: Duration,
    /// Bound on one report.
    pub deadline: Duration,
    /// Reports per client IP per minute.
    pub per_client_per_minute: u32,
    /// At most one fresh check per target in this interval.
    pub per_target_interval: Duration,
}

impl Default for TesterLimits {
    fn default() -> Self {
        TesterLimits {
            cache_ttl: Duration::from_secs(300),
            deadline: Duration::from_secs(30),
            per_client_per_minute: 10,
            per_target_interval: Duration::from_secs(30),
        }
    }
}

/// Both renderings of one report.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// homeport's report (`/api/v1/check`).
    pub full: Value,
    /// The federation-tester schema (`/api/report`).
    pub compat: Value,
    /// The verdict.
    pub ok: bool,
}

/// The tester service.
pub struct Tester {
    client: FederationClient,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limits: TesterLimits,
    flight: SingleFlight<String, Result<Arc<Rendered>, String>>,
    clients: crate::ratelimit::PerClient,
    targets: Mutex<HashMap<String, Instant>>,
    /// This instance's lease holder id.
    instance: String,
}

/// Who runs a fresh check.
enum Claim {
    /// This instance, now.
    Mine,
    /// Nobody: this instance checked moments ago (seconds to wait).
    Recent(u64),
    /// Another instance holds the target's lease (seconds to wait).
    Elsewhere(u64),
}

impl std::fmt::Debug for Tester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tester").finish_non_exhaustive()
    }
}

const PAGE: &str = include_str!("tester_page.html");
/// How long past its deadline a check may run before the request gives up
/// on it (504): the check stops itself at the deadline, so this only
/// catches a step that does not.
const HARD_MARGIN: Duration = Duration::from_secs(5);

fn cors(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Origin, X-Requested-With, Content-Type, Accept, Authorization"),
    );
    r
}

fn json_resp(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    cors(r)
}

fn error(status: StatusCode, errcode: &str, msg: &str) -> Response<Body> {
    json_resp(status, &json!({"errcode": errcode, "error": msg}))
}

fn text(status: StatusCode, t: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(t));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    cors(r)
}

fn too_many(retry_after: u64) -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "M_LIMIT_EXCEEDED",
        "too many requests; try again later",
    );
    if let Ok(v) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

/// `server_name` and `no_cache` from a query string (percent-decoded).
pub fn query_params(q: Option<&str>) -> (Option<String>, bool) {
    let mut name = None;
    let mut no_cache = false;
    for pair in q.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "server_name" => name = Some(percent_decode(v)),
            "no_cache" => no_cache = v == "1" || v == "true",
            _ => {}
        }
    }
    (name, no_cache)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Tester {
    /// A tester checking with `client` (whose connector enforces the deny
    /// list).
    pub fn new(
        client: FederationClient,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limits: TesterLimits,
    ) -> Self {
        Tester {
            client,
            store,
            metrics,
            clients: crate::ratelimit::PerClient::new(limits.per_client_per_minute),
            limits,
            flight: SingleFlight::new(),
            targets: Mutex::new(HashMap::new()),
            // One holder id per tester (a process may run several).
            instance: format!(
                "{}/{:04x}",
                crate::store::instance_id(),
                rand::random::<u16>()
            ),
        }
    }

    fn admit_client(&self, ip: IpAddr) -> Result<(), u64> {
        self.clients.admit(ip)
    }

    /// The cached report for `key`, if any.
    async fn cached(&self, key: &str) -> Option<Arc<Rendered>> {
        let v = self.store.kv_get("tester", key, now_ms()).await.ok()??;
        let (full, compat) = (v.get("full")?, v.get("compat")?);
        Some(Arc::new(Rendered {
            full: full.clone(),
            compat: compat.clone(),
            ok: full["ok"].as_bool().unwrap_or(false),
        }))
    }

    /// May this instance run a fresh check of `key` now? One fresh check
    /// per target per interval across every instance sharing the store
    /// (a lease in the store); this instance's own record when the store
    /// cannot be reached.
    async fn claim(&self, key: &str) -> Claim {
        let now = now_ms();
        let hold = self.limits.per_target_interval.max(self.limits.deadline);
        let until = now.saturating_add(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX));
        let lease = format!("tester:{key}");
        let retry = self.limits.per_target_interval.as_secs().max(1);
        match self
            .store
            .try_lease(&lease, &self.instance, now, until)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Claim::Elsewhere(retry),
            Err(e) => {
                tracing::debug!(error = %e, "tester: store unavailable; per-target limit is per instance");
            }
        }
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(last) = t.get(key) {
            let since = now.duration_since(*last);
            if since < self.limits.per_target_interval {
                return Claim::Recent((self.limits.per_target_interval - since).as_secs().max(1));
            }
        }
        t.insert(key.to_owned(), now);
        if t.len() > 10_000 {
            let iv = self.limits.per_target_interval;
            t.retain(|_, v| now.duration_since(*v) < iv);
        }
        Claim::Mine
    }

    /// The report for `name`: cached, shared with a running check (here or
    /// on another instance sharing the store), or fresh (at most one fresh
    /// check per target per interval).
    pub async fn report(
        &self,
        name: &ServerName,
        no_cache: bool,
    ) -> Result<Arc<Rendered>, (StatusCode, u64, String)> {
        let key = name.to_lowercase();
        if !no_cache && let Some(r) = self.cached(&key).await {
            return Ok(r);
        }
        let r = self
            .flight
            .run(key.clone(), || async {
                match self.claim(&key).await {
                    Claim::Mine => {}
                    Claim::Recent(secs) => return Err(format!("retry:{secs}")),
                    Claim::Elsewhere(secs) => {
                        if no_cache {
                            return Err(format!("retry:{secs}"));
                        }
                        // Another instance checks this target: its report
                        // lands in the shared cache.
                        let give_up = Instant::now() + self.limits.deadline;
                        while Instant::now() < give_up {
                            if let Some(r) = self.cached(&key).await {
                                return Ok(r);
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        return Err(format!(
                            "another instance is checking {name}; its report did not arrive within {:?}",
                            self.limits.deadline
                        ));
                    }
                }
                let start = Instant::now();
                // The check stops itself at the deadline with the report so
                // far (check_timed_out, `pending`); the outer bound only
                // guards against a step that ignores it.
                let opts = CheckOptions {
                    time_limit: Some(self.limits.deadline),
                    ..CheckOptions::default()
                };
                let report = match tokio::time::timeout(
                    self.limits.deadline + HARD_MARGIN,
                    check::check(&self.client, name, &opts),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(format!(
                            "the check of {name} did not finish within {:?}",
                            self.limits.deadline
                        ));
                    }
                };
                self.metrics.gauge(
                    "homeport_check_duration_seconds",
                    name.as_str(),
                    start.elapsed().as_secs_f64(),
                );
                let rendered = Rendered {
                    full: report.to_json(),
                    compat: report.to_federation_tester(),
                    ok: report.ok,
                };
                let ttl = u64::try_from(self.limits.cache_ttl.as_millis()).unwrap_or(u64::MAX);
                if let Err(e) = self
                    .store
                    .kv_put(
                        "tester",
                        &key,
                        &json!({"full": rendered.full, "compat": rendered.compat}),
                        now_ms().saturating_add(ttl),
                    )
                    .await
                {
                    tracing::warn!(target = %name, error = %e, "tester: cannot cache the report");
                }
                Ok(Arc::new(rendered))
            })
            .await;
        r.map_err(|e| match e.strip_prefix("retry:") {
            Some(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                secs.parse().unwrap_or(30),
                "a fresh check of this server ran moments ago".to_owned(),
            ),
            None => (StatusCode::GATEWAY_TIMEOUT, 0, e),
        })
    }

    /// Handle a request to `/` or `/api/*`.
    pub async fn handle(&self, req: Request<Body>, client: IpAddr) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if method == Method::OPTIONS {
            let mut r = cors(Response::new(Body::empty()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            return r;
        }
        if method != Method::GET && method != Method::HEAD {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "M_UNRECOGNIZED",
                "only GET is allowed",
            );
        }
        if path == "/" || path == "/index.html" {
            let mut r = Response::new(Body::from(PAGE));
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert("content-security-policy", HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"));
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            return r;
        }
        let (name, no_cache) = query_params(req.uri().query());
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "M_MISSING_PARAM",
                "the server_name parameter is missing or empty",
            );
        };
        let parsed = ServerName::parse(&name);
        match path.as_str() {
            "/api/report" | "/api/federation-ok" | "/api/v1/check" => {}
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    "M_UNRECOGNIZED",
                    "Unrecognized request",
                );
            }
        }
        let Ok(server) = parsed else {
            return match path.as_str() {
                "/api/report" => json_resp(StatusCode::OK, &tester_compat::invalid_name(&name)),
                "/api/federation-ok" => text(StatusCode::OK, "BAD"),
                _ => error(
                    StatusCode::BAD_REQUEST,
                    "M_INVALID_PARAM",
                    &format!(
                        "invalid server name {name:?}: {}",
                        parsed.err().map(|e| e.to_string()).unwrap_or_default()
                    ),
                ),
            };
        };
        if let Err(wait) = self.admit_client(client) {
            return too_many(wait);
        }
        let rendered = match self.report(&server, no_cache).await {
            Ok(r) => r,
            Err((StatusCode::TOO_MANY_REQUESTS, wait, _)) => return too_many(wait),
            Err((status, _, msg)) => return error(status, "M_UNKNOWN", &msg),
        };
        self.metrics.gauge(
            "homeport_federation_ok",
            server.as_str(),
            if rendered.ok { 1.0 } else { 0.0 },
        );
        match path.as_str() {
            "/api/report" => json_resp(StatusCode::OK, &rendered.compat),
            "/api/federation-ok" => text(
                StatusCode::OK,
                if rendered.compat["FederationOK"].as_bool().unwrap_or(false) {
                    "GOOD"
                } else {
                    "BAD"
                },
            ),
            _ => json_resp(StatusCode::OK, &rendered.full),
        }
    }
}

/// The routes of a listener with the `tester` resource: `/`, `/api/*`.
pub fn router(t: Arc<Tester>) -> axum::Router {
    use axum::routing::any;
    let h = move |req: Request<Body>| {
        let t = t.clone();
        async move {
            let ip = req
                .extensions()
                .get::<crate::routes::ConnMeta>()
                .map(|m| m.client.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let r = t.handle(req, ip).await;
            t.metrics.request("tester", r.status().as_u16());
            r
        }
    };
    axum::Router::new()
        .route("/", any(h.clone()))
        .route("/index.html", any(h.clone()))
        .route("/api/{*rest}", any(h))
}
