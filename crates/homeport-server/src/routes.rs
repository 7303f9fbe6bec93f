//! The HTTP surface: a function that returns a `Router` for a listener's
//! resources, testable without a socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use bytes::Bytes;
use homeport_federation::keys::now_ms;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;

use crate::certs::ReloadableCert;
use crate::keyserver::KeyServer;
use crate::metrics::Metrics;
use crate::notary::{self, Notary, NotaryError};
use crate::proxy::{self, Proxy};

/// Notary request bodies larger than this are refused.
pub const MAX_QUERY_BODY: usize = 256 * 1024;

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// `federation`.
    pub federation: bool,
    /// `keys`.
    pub keys: bool,
    /// `client`.
    pub client: bool,
    /// `tester`.
    pub tester: bool,
    /// `metrics`.
    pub metrics: bool,
}

/// The `.well-known` documents served.
#[derive(Clone, Debug, Default)]
pub struct WellKnownDocs {
    /// `/.well-known/matrix/server` body (`None`: 404).
    pub server: Option<Value>,
    /// `/client`.
    pub client: Option<Value>,
    /// `/support`.
    pub support: Option<Value>,
    /// Cache-Control value.
    pub cache_control: String,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Key server.
    pub keys: Arc<KeyServer>,
    /// The served certificate (TLS listeners).
    pub cert: Option<Arc<ReloadableCert>>,
    /// Delegation documents.
    pub well_known: WellKnownDocs,
    /// The notary, when enabled.
    pub notary: Option<Arc<Notary>>,
    /// The backend, when configured.
    pub proxy: Option<Proxy>,
    /// Proxy `/_synapse/` too.
    pub synapse_admin: bool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Per-connection facts the listener attaches to each request.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    /// The peer's address (or the forwarded one, when trusted).
    pub client: SocketAddr,
    /// SNI the client sent.
    pub sni: Option<String>,
    /// Over TLS.
    pub tls: bool,
}

fn meta(req_ext: &http::Extensions) -> Option<ConnMeta> {
    req_ext.get::<ConnMeta>().cloned()
}

fn json_response(
    status: StatusCode,
    body: Bytes,
    extra: &[(&'static str, HeaderValue)],
) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in extra {
        h.insert(*k, v.clone());
    }
    r
}

fn unrecognized() -> Response<Body> {
    proxy::error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "Unrecognized request",
    )
}

/// The router for a listener serving `res`.
pub fn router(state: Arc<AppState>, res: Resources) -> Router {
    router_with(state, res, None)
}

/// As [`router`], with extra routes (the tester's) merged in before the
/// fallback.
pub fn router_with(state: Arc<AppState>, res: Resources, extra: Option<Router>) -> Router {
    let mut r: Router<Arc<AppState>> = Router::new();
    let fed = res.federation;
    if fed || res.client {
        r = r
            .route("/.well-known/matrix/server", get(wk_server))
            .route("/.well-known/matrix/client", get(wk_client))
            .route("/.well-known/matrix/support", get(wk_support));
    }
    if fed || res.keys {
        r = r
            .route("/_matrix/key/v2/server", get(key_server))
            .route("/_matrix/key/v2/server/{key_id}", get(key_server_legacy))
            .route("/_matrix/key/v2/query", any(notary_post))
            .route("/_matrix/key/v2/query/{server}", any(notary_get))
            .route(
                "/_matrix/key/v2/query/{server}/{key_id}",
                any(notary_get_key),
            );
    }
    if fed {
        r = r.route("/_matrix/federation/v1/version", get(version));
    }
    if res.metrics {
        r = r.route("/metrics", get(metrics));
    }
    let proxied = Resources { ..res };
    let r: Router = r.with_state(state.clone());
    let r = match extra {
        Some(x) => r.merge(x),
        None => r,
    };
    r.fallback(move |req: Request<Body>| fallback(state.clone(), proxied, req))
}

async fn fallback(s: Arc<AppState>, res: Resources, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path();
    let to_backend = s.proxy.is_some()
        && ((res.federation && path.starts_with("/_matrix/"))
            || (res.client
                && (path.starts_with("/_matrix/client/") || path.starts_with("/_matrix/media/")))
            || ((res.federation || res.client)
                && s.synapse_admin
                && path.starts_with("/_synapse/")));
    let resp = if to_backend {
        forward(&s, req).await
    } else {
        unrecognized()
    };
    s.metrics.request(
        if to_backend { "proxy" } else { "unrecognized" },
        resp.status().as_u16(),
    );
    resp
}

async fn forward(s: &AppState, req: Request<Body>) -> Response<Body> {
    let m = meta(req.extensions());
    match &s.proxy {
        Some(p) => {
            p.forward(
                req,
                m.as_ref().map(|m| m.client.ip()),
                m.as_ref().is_some_and(|m| m.tls),
            )
            .await
        }
        None => unrecognized(),
    }
}

fn wk(s: &AppState, doc: &Option<Value>, route: &str) -> Response<Body> {
    let resp = match doc {
        None => {
            let mut r = unrecognized();
            r.headers_mut()
                .insert("access-control-allow-origin", HeaderValue::from_static("*"));
            r
        }
        Some(v) => {
            let cc = HeaderValue::from_str(&s.well_known.cache_control)
                .unwrap_or(HeaderValue::from_static("max-age=86400"));
            json_response(
                StatusCode::OK,
                Bytes::from(v.to_string()),
                &[
                    ("access-control-allow-origin", HeaderValue::from_static("*")),
                    ("cache-control", cc),
                ],
            )
        }
    };
    s.metrics.request(route, resp.status().as_u16());
    resp
}

async fn wk_server(State(s): State<Arc<AppState>>) -> Response<Body> {
    wk(&s, &s.well_known.server, "well_known_server")
}
async fn wk_client(State(s): State<Arc<AppState>>) -> Response<Body> {
    wk(&s, &s.well_known.client, "well_known_client")
}
async fn wk_support(State(s): State<Arc<AppState>>) -> Response<Body> {
    wk(&s, &s.well_known.support, "well_known_support")
}

fn own_keys(s: &AppState) -> Response<Body> {
    let cert = s.cert.as_ref().map(|c| c.current());
    let der = cert
        .as_ref()
        .and_then(|c| c.chain.first())
        .map(|d| d.as_ref().to_vec());
    let resp = match s.keys.document(now_ms(), der.as_deref()) {
        Ok((_, canonical)) => json_response(StatusCode::OK, Bytes::from((*canonical).clone()), &[]),
        Err(e) => proxy::error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", &e),
    };
    s.metrics.request("keys", resp.status().as_u16());
    resp
}

async fn key_server(State(s): State<Arc<AppState>>) -> Response<Body> {
    own_keys(&s)
}

async fn key_server_legacy(
    State(s): State<Arc<AppState>>,
    Path(_key_id): Path<String>,
) -> Response<Body> {
    // Synapse 0.99 asks for one key id and expects the whole document.
    own_keys(&s)
}

async fn version(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response<Body> {
    if s.proxy.is_some() {
        let r = forward(&s, req).await;
        s.metrics.request("version", r.status().as_u16());
        return r;
    }
    let body =
        serde_json::json!({"server": {"name": "homeport", "version": env!("CARGO_PKG_VERSION")}});
    s.metrics.request("version", 200);
    json_response(StatusCode::OK, Bytes::from(body.to_string()), &[])
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response<Body> {
    if let Some(c) = &s.cert {
        s.metrics.cert_expiry("tls", c.expires_in());
    }
    let mut r = Response::new(Body::from(s.metrics.render()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

fn notary_error(e: &NotaryError) -> Response<Body> {
    match e {
        NotaryError::BadRequest(m) => proxy::error(StatusCode::BAD_REQUEST, "M_BAD_JSON", m),
        NotaryError::TooMany(_) => {
            proxy::error(StatusCode::BAD_REQUEST, "M_LIMIT_EXCEEDED", &e.to_string())
        }
        NotaryError::RateLimited { retry_after } => {
            let mut r = proxy::error(
                StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "too many requests",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            r
        }
        NotaryError::Unavailable(_) => {
            let mut r = proxy::error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", &e.to_string());
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

/// The notary, or the backend when the notary is off and a backend exists.
async fn notary_or_proxy(
    s: &AppState,
    req: Request<Body>,
    criteria: impl FnOnce(&[u8], u64) -> Result<Vec<notary::Criteria>, NotaryError>,
) -> Response<Body> {
    let Some(n) = &s.notary else {
        return if s.proxy.is_some() {
            forward(s, req).await
        } else {
            unrecognized()
        };
    };
    let client = meta(req.extensions())
        .map(|m| m.client.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if let Err(e) = n.admit(client) {
        return notary_error(&e);
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_QUERY_BODY);
    let body = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return proxy::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "request body too large",
            );
        }
    };
    let c = match criteria(&body, now_ms()) {
        Ok(c) => c,
        Err(e) => return notary_error(&e),
    };
    let cert = s.cert.as_ref().map(|c| c.current());
    let der = cert
        .as_ref()
        .and_then(|c| c.chain.first())
        .map(|d| d.as_ref().to_vec());
    match n.answer(c, der.as_deref()).await {
        Ok(v) => json_response(StatusCode::OK, Bytes::from(v.to_string()), &[]),
        Err(e) => notary_error(&e),
    }
}

async fn notary_post(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response<Body> {
    if req.method() != Method::POST {
        return method_not_allowed();
    }
    let r = notary_or_proxy(&s, req, |body, now| {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| NotaryError::BadRequest(format!("body is not JSON: {e}")))?;
        notary::parse_query(&v, now)
    })
    .await;
    s.metrics.request("notary", r.status().as_u16());
    r
}

async fn notary_get(
    State(s): State<Arc<AppState>>,
    Path(server): Path<String>,
    req: Request<Body>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let q = req.uri().query().map(str::to_owned);
    let r = notary_or_proxy(&s, req, move |_, now| {
        let min = notary::query_min(q.as_deref())?;
        Ok(notary::get_criteria(&server, None, min, now))
    })
    .await;
    s.metrics.request("notary", r.status().as_u16());
    r
}

async fn notary_get_key(
    State(s): State<Arc<AppState>>,
    Path((server, key_id)): Path<(String, String)>,
    req: Request<Body>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let q = req.uri().query().map(str::to_owned);
    let r = notary_or_proxy(&s, req, move |_, now| {
        let min = notary::query_min(q.as_deref())?;
        Ok(notary::get_criteria(&server, Some(&key_id), min, now))
    })
    .await;
    s.metrics.request("notary", r.status().as_u16());
    r
}

fn method_not_allowed() -> Response<Body> {
    proxy::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "Method not allowed",
    )
}

/// Headers of a response, for tests.
pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl IntoResponse for NotaryError {
    fn into_response(self) -> axum::response::Response {
        notary_error(&self)
    }
}
