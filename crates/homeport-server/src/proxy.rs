//! The reverse proxy to the homeserver: the request target untouched (no
//! normalisation, `%2F` stays `%2F`), bodies streamed both ways, headers
//! passed through except hop-by-hop ones, Host per policy, and 502/504 with
//! a JSON errcode when the backend fails.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Which Host the backend sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPolicy {
    /// The client's Host header, unchanged.
    Preserve,
    /// The backend's own authority.
    Backend,
}

/// A configured backend.
#[derive(Clone, Debug)]
pub struct Proxy {
    scheme: String,
    authority: String,
    client: Client<HttpConnector, Body>,
    host: HostPolicy,
    timeout: Duration,
}

/// A backend URL that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("proxy.backend {0:?} is not an http:// URL with a host (e.g. http://127.0.0.1:8008)")]
pub struct BadBackend(pub String);

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

impl Proxy {
    /// A proxy to `backend` (`http://host:port`).
    pub fn new(backend: &str, host: HostPolicy, timeout: Duration) -> Result<Self, BadBackend> {
        let uri: Uri = backend
            .parse()
            .map_err(|_| BadBackend(backend.to_owned()))?;
        let scheme = uri.scheme_str().unwrap_or("").to_owned();
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| BadBackend(backend.to_owned()))?;
        if scheme != "http" {
            return Err(BadBackend(backend.to_owned()));
        }
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(conn);
        Ok(Proxy {
            scheme,
            authority,
            client,
            host,
            timeout,
        })
    }

    /// Forward `req` (whose forwarded-for address is `client_ip`).
    pub async fn forward(
        &self,
        req: Request<Body>,
        client_ip: Option<std::net::IpAddr>,
        tls: bool,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let target = format!("{}://{}{}", self.scheme, self.authority, pq);
        let Ok(uri) = target.parse::<Uri>() else {
            return error(
                StatusCode::BAD_REQUEST,
                "M_UNRECOGNIZED",
                "request target cannot be forwarded",
            );
        };
        let original_host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        for h in HOP_BY_HOP {
            parts.headers.remove(*h);
        }
        match self.host {
            HostPolicy::Preserve => {
                if let Some(h) = original_host.clone() {
                    parts.headers.insert(http::header::HOST, h);
                }
            }
            HostPolicy::Backend => {
                if let Ok(h) = HeaderValue::from_str(&self.authority) {
                    parts.headers.insert(http::header::HOST, h);
                }
            }
        }
        if let Some(ip) = client_ip {
            let prior = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let v = match prior {
                Some(p) => format!("{p}, {ip}"),
                None => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                parts.headers.insert("x-forwarded-for", v);
            }
        }
        parts.headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        if let Some(h) = original_host {
            parts.headers.insert("x-forwarded-host", h);
        }
        let out = Request::from_parts(parts, body);
        match tokio::time::timeout(self.timeout, self.client.request(out)).await {
            Ok(Ok(resp)) => {
                let (mut p, b) = resp.into_parts();
                for h in HOP_BY_HOP {
                    p.headers.remove(*h);
                }
                Response::from_parts(p, Body::new(b))
            }
            Ok(Err(e)) => {
                tracing::warn!(backend = %self.authority, error = %e, "backend request failed");
                error(
                    StatusCode::BAD_GATEWAY,
                    "M_UNKNOWN",
                    "the homeserver behind homeport did not answer",
                )
            }
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                "M_UNKNOWN",
                "the homeserver behind homeport did not answer in time",
            ),
        }
    }
}

/// A Matrix-style JSON error response.
pub fn error(status: StatusCode, errcode: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "errcode": errcode, "error": message }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
