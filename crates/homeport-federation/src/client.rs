//! The federation client: resolve (through the cache), connect, send with
//! the Host header discovery prescribes, sign with X-Matrix, read a capped
//! body. Connections are pooled per destination.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeport_core::ServerName;
use homeport_core::canonical_json::{self, Mode};
use homeport_core::signing::SigningKey;
use homeport_core::xmatrix::RequestToSign;
use homeport_resolve::{Destination, Resolution, ResolveError, Resolver};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::connect::{self, Attempt, ConnInfo, ConnectOptions};
use crate::tls::TlsPolicy;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Certificate policy.
    pub tls: TlsPolicy,
    /// Connect timing.
    pub connect: ConnectOptions,
    /// Bound on one request (connect, send, read).
    pub request_timeout: Duration,
    /// Responses larger than this are refused.
    pub max_response_bytes: usize,
    /// Idle connections kept per destination.
    pub max_idle_per_destination: usize,
    /// Idle connections older than this are dropped.
    pub idle_timeout: Duration,
    /// User-Agent.
    pub user_agent: String,
}

impl ClientConfig {
    /// Defaults around a TLS policy.
    pub fn new(tls: TlsPolicy) -> Self {
        ClientConfig {
            tls,
            connect: ConnectOptions::default(),
            request_timeout: Duration::from_secs(60),
            max_response_bytes: 16 * 1024 * 1024,
            max_idle_per_destination: 64,
            idle_timeout: Duration::from_secs(90),
            user_agent: concat!("homeport/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// The signing identity of outgoing requests.
#[derive(Clone, Debug)]
pub struct Signer {
    /// Our server name (the X-Matrix origin).
    pub origin: ServerName,
    /// Keys; one Authorization header per key.
    pub keys: Vec<SigningKey>,
}

/// Why a request failed, by phase.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// Discovery failed.
    #[error("resolving {name}: {source}")]
    Resolve {
        /// The server name.
        name: String,
        /// Why.
        #[source]
        source: ResolveError,
    },
    /// No target could be connected to (TCP or TLS).
    #[error("cannot connect to {name}: {}", attempts.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Connect {
        /// The server name.
        name: String,
        /// Every attempt.
        attempts: Vec<Attempt>,
    },
    /// HTTP-level failure.
    #[error("HTTP exchange with {name} failed: {reason}")]
    Http {
        /// The server name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The response body exceeded the cap.
    #[error("response from {name} is larger than {limit} bytes")]
    TooLarge {
        /// The server name.
        name: String,
        /// The cap.
        limit: usize,
    },
    /// The request took too long.
    #[error("request to {name} did not finish within {timeout:?}")]
    Timeout {
        /// The server name.
        name: String,
        /// The bound.
        timeout: Duration,
    },
    /// The request body has no canonical form or the path is invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl FederationError {
    /// The phase for reports: resolve, connect, tls, http, timeout.
    pub fn phase(&self) -> &'static str {
        match self {
            FederationError::Resolve { .. } => "resolve",
            FederationError::Connect { attempts, .. } => {
                if attempts.iter().any(|a| a.phase == "tls") {
                    "tls"
                } else {
                    "connect"
                }
            }
            FederationError::Http { .. } | FederationError::TooLarge { .. } => "http",
            FederationError::Timeout { .. } => "timeout",
            FederationError::InvalidRequest(_) => "request",
        }
    }

    /// Whether trying again later could help.
    pub fn is_temporary(&self) -> bool {
        !matches!(self, FederationError::InvalidRequest(_))
    }
}

/// A response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (capped).
    pub body: Bytes,
    /// The connection it came over.
    pub conn: ConnInfo,
    /// The Host header (or :authority) sent.
    pub host_sent: String,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// The HTTP side of one connection (HTTP/2 when ALPN chose it).
pub(crate) enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Sends `req` once the connection can take it. An HTTP/1 connection is
    /// ready for its next request only after its connection task has
    /// finished the previous response, which can be a moment after the
    /// caller has read that response's body; hyper refuses a request sent
    /// before then ("connection was not ready") without sending it.
    pub(crate) async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// The HTTP handshake on an established TLS connection; the connection
/// task runs in the background.
pub(crate) async fn http_handshake(
    conn: connect::Connection,
) -> Result<(Sender, ConnInfo), hyper::Error> {
    let info = conn.info.clone();
    let io = TokioIo::new(conn.stream);
    let sender = if info.alpn.as_deref() == Some("h2") {
        let (s, c) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = c.await;
        });
        Sender::H2(s)
    } else {
        let (s, c) = http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = c.await;
        });
        Sender::H1(s)
    };
    Ok((sender, info))
}

struct Pooled {
    sender: Sender,
    info: ConnInfo,
    idle_since: Instant,
}

/// The federation client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct FederationClient {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Resolver,
    cfg: ClientConfig,
    signer: Option<Signer>,
    pool: Mutex<HashMap<String, Vec<Pooled>>>,
}

impl std::fmt::Debug for FederationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationClient").finish_non_exhaustive()
    }
}

fn pool_key(d: &Destination) -> String {
    let first = d
        .targets
        .first()
        .map(|t| format!("{}:{}", t.host, t.port))
        .unwrap_or_default();
    format!("{}|{}|{first}", d.tls_name_text(), d.host_header)
}

impl FederationClient {
    /// A client resolving with `resolver`, signing when `signer` is given.
    pub fn new(resolver: Resolver, cfg: ClientConfig, signer: Option<Signer>) -> Self {
        FederationClient {
            inner: Arc::new(Inner {
                resolver,
                cfg,
                signer,
                pool: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The resolver.
    pub fn resolver(&self) -> &Resolver {
        &self.inner.resolver
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The signing identity, if any.
    pub fn signer(&self) -> Option<&Signer> {
        self.inner.signer.as_ref()
    }

    /// GET `path` (with query) from `server`.
    pub async fn get(&self, server: &ServerName, path: &str) -> Result<Response, FederationError> {
        self.request(Method::GET, server, path, None).await
    }

    /// POST JSON.
    pub async fn post(
        &self,
        server: &ServerName,
        path: &str,
        body: &Value,
    ) -> Result<Response, FederationError> {
        self.request(Method::POST, server, path, Some(body)).await
    }

    /// PUT JSON.
    pub async fn put(
        &self,
        server: &ServerName,
        path: &str,
        body: &Value,
    ) -> Result<Response, FederationError> {
        self.request(Method::PUT, server, path, Some(body)).await
    }

    /// Resolve `server` (through the cache) and send one request.
    pub async fn request(
        &self,
        method: Method,
        server: &ServerName,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, FederationError> {
        let timeout = self.inner.cfg.request_timeout;
        let name = server.as_str().to_owned();
        let fut = async {
            let resolution = self.inner.resolver.resolve(server).await;
            self.request_resolved(&resolution, method, path, body).await
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(FederationError::Timeout { name, timeout }))
    }

    /// Send one request to an already resolved server.
    pub async fn request_resolved(
        &self,
        resolution: &Resolution,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, FederationError> {
        let server = &resolution.server_name;
        let name = server.as_str().to_owned();
        let dest = resolution
            .outcome
            .as_ref()
            .map_err(|e| FederationError::Resolve {
                name: name.clone(),
                source: e.clone(),
            })?;
        if !path.starts_with('/') {
            return Err(FederationError::InvalidRequest(format!(
                "path {path:?} must start with '/'"
            )));
        }
        let body_bytes = match body {
            Some(v) => Some(Bytes::from(
                canonical_json::to_canonical_vec(v, Mode::Lenient)
                    .map_err(|e| FederationError::InvalidRequest(e.to_string()))?,
            )),
            None => None,
        };
        let mut headers = HeaderMap::new();
        if let Some(signer) = &self.inner.signer {
            for key in &signer.keys {
                let req = RequestToSign {
                    method: method.as_str(),
                    uri: path,
                    origin: &signer.origin,
                    destination: server,
                    content: body,
                };
                let x = req
                    .sign(key)
                    .map_err(|e| FederationError::InvalidRequest(e.to_string()))?;
                let v = HeaderValue::from_str(&x.to_header_value())
                    .map_err(|e| FederationError::InvalidRequest(e.to_string()))?;
                headers.append(http::header::AUTHORIZATION, v);
            }
        }
        self.send(dest, &name, method, path, headers, body_bytes)
            .await
    }

    /// Send with explicit headers (the tester's Host probe uses
    /// `host_override`).
    pub async fn send_raw(
        &self,
        dest: &Destination,
        name: &str,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, FederationError> {
        self.send(dest, name, method, path, headers, body).await
    }

    async fn send(
        &self,
        dest: &Destination,
        name: &str,
        method: Method,
        path: &str,
        mut headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, FederationError> {
        let key = pool_key(dest);
        let host_sent = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| dest.host_header.clone());
        headers.remove(http::header::HOST);
        let ua = HeaderValue::from_str(&self.inner.cfg.user_agent)
            .unwrap_or(HeaderValue::from_static("homeport"));
        headers.entry(http::header::USER_AGENT).or_insert(ua);
        if body.is_some() {
            headers
                .entry(http::header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/json"));
        }
        // One retry on a fresh connection when a pooled one turns out dead.
        for fresh in [false, true] {
            let (mut sender, info) = match if fresh { None } else { self.take_idle(&key) } {
                Some(p) => (p.sender, p.info),
                None => self.open(dest, name).await?,
            };
            let req = build_request(&sender, &method, path, &host_sent, &headers, body.clone())
                .map_err(FederationError::InvalidRequest)?;
            let sent = sender.send(req).await;
            let resp = match sent {
                Ok(r) => r,
                Err(e)
                    if !fresh
                        && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(FederationError::Http {
                        name: name.to_owned(),
                        reason: e.to_string(),
                    });
                }
            };
            let status = resp.status();
            let resp_headers = resp.headers().clone();
            let body = read_capped(
                resp.into_body(),
                &resp_headers,
                self.inner.cfg.max_response_bytes,
            )
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => FederationError::TooLarge {
                    name: name.to_owned(),
                    limit: self.inner.cfg.max_response_bytes,
                },
                ReadError::Http(reason) => FederationError::Http {
                    name: name.to_owned(),
                    reason,
                },
            })?;
            self.put_idle(
                key.clone(),
                Pooled {
                    sender,
                    info: info.clone(),
                    idle_since: Instant::now(),
                },
            );
            return Ok(Response {
                status,
                headers: resp_headers,
                body,
                conn: info,
                host_sent,
            });
        }
        Err(FederationError::Http {
            name: name.to_owned(),
            reason: "connection closed".into(),
        })
    }

    async fn open(
        &self,
        dest: &Destination,
        name: &str,
    ) -> Result<(Sender, ConnInfo), FederationError> {
        let conn = connect::connect_destination(dest, &self.inner.cfg.tls, &self.inner.cfg.connect)
            .await
            .map_err(|attempts| FederationError::Connect {
                name: name.to_owned(),
                attempts,
            })?;
        http_handshake(conn)
            .await
            .map_err(|e| FederationError::Http {
                name: name.to_owned(),
                reason: e.to_string(),
            })
    }

    fn take_idle(&self, key: &str) -> Option<Pooled> {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let list = pool.get_mut(key)?;
        let idle_timeout = self.inner.cfg.idle_timeout;
        // An HTTP/2 connection is shared: hand out a clone of its sender and
        // leave it in the pool, so concurrent requests multiplex on it.
        list.retain(|p| match &p.sender {
            Sender::H2(s) => !s.is_closed(),
            Sender::H1(_) => true,
        });
        if let Some(p) = list
            .iter()
            .find(|p| matches!(&p.sender, Sender::H2(s) if s.is_ready()))
            && let Sender::H2(s) = &p.sender
        {
            return Some(Pooled {
                sender: Sender::H2(s.clone()),
                info: p.info.clone(),
                idle_since: p.idle_since,
            });
        }
        while let Some(p) = list.pop() {
            let alive = match &p.sender {
                Sender::H1(s) => !s.is_closed() && s.is_ready(),
                Sender::H2(s) => !s.is_closed() && s.is_ready(),
            };
            if alive && p.idle_since.elapsed() < idle_timeout {
                return Some(p);
            }
        }
        None
    }

    fn put_idle(&self, key: String, p: Pooled) {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let list = pool.entry(key).or_default();
        if matches!(p.sender, Sender::H2(_))
            && list
                .iter()
                .any(|q| matches!(&q.sender, Sender::H2(s) if !s.is_closed()))
        {
            // Already shared from the pool.
            return;
        }
        if list.len() < self.inner.cfg.max_idle_per_destination {
            list.push(p);
        }
    }

    /// Idle connections pooled now (all destinations).
    pub fn idle_connections(&self) -> usize {
        self.inner
            .pool
            .lock()
            .map(|p| p.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

fn build_request(
    sender: &Sender,
    method: &Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Result<http::Request<Full<Bytes>>, String> {
    let mut b = match sender {
        // HTTP/1.1: origin-form target and an explicit Host header.
        Sender::H1(_) => http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, host),
        // HTTP/2: :authority carries the Host value.
        Sender::H2(_) => http::Request::builder()
            .method(method.clone())
            .uri(format!("https://{host}{path}"))
            .version(http::Version::HTTP_2),
    };
    if let Some(h) = b.headers_mut() {
        for (k, v) in headers {
            h.append(k, v.clone());
        }
    }
    b.body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())
}

enum ReadError {
    TooLarge,
    Http(String),
}

async fn read_capped(
    body: hyper::body::Incoming,
    headers: &HeaderMap,
    cap: usize,
) -> Result<Bytes, ReadError> {
    homeport_resolve::body::read_capped(body, headers, cap)
        .await
        .map_err(|e| match e {
            homeport_resolve::body::BodyError::TooLarge(_) => ReadError::TooLarge,
            other => ReadError::Http(other.to_string()),
        })
}
