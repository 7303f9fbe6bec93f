//! Scripted HTTP/1.1 and HTTP/2 servers, over TLS (tokio-rustls) or plain
//! TCP, that record every request and TLS handshake.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::LazyConfigAcceptor;

use crate::background::{Background, runtime};
use crate::certs::TestCert;
use crate::net::next_loopback;

/// Largest request body the server reads (and records); larger bodies get 413.
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;
/// How long [`Body::Abort`] waits after sending its bytes before aborting.
const ABORT_AFTER: Duration = Duration::from_millis(100);
/// Bound on the whole TLS handshake, ClientHello included.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Scripted responses

/// The body of a [`Scripted`] response.
#[derive(Clone, Debug, Default)]
pub enum Body {
    /// No body (`Content-Length: 0`).
    #[default]
    Empty,
    /// These bytes, with a `Content-Length`.
    Bytes(Bytes),
    /// This value serialised as JSON; adds `Content-Type: application/json`
    /// unless the response sets a content type.
    Json(serde_json::Value),
    /// Slowloris: headers at once, then `count` chunks, each sent after
    /// waiting `every` (so the body takes `count × every`). No
    /// `Content-Length` unless the response sets one.
    Slow {
        /// Bytes sent per chunk.
        chunk: Bytes,
        /// Wait before each chunk.
        every: Duration,
        /// Number of chunks.
        count: usize,
    },
    /// A body that never ends: `chunk` repeated as fast as the client reads
    /// (16 KiB of `x` when `chunk` is empty). The client must cap it.
    Endless {
        /// Bytes sent per chunk.
        chunk: Bytes,
    },
    /// Sends the headers and `sent`, then about 100 ms later aborts the
    /// connection mid-body (HTTP/1: the connection is closed without a final
    /// chunk; HTTP/2: the stream is reset). Set a `Content-Length` header to
    /// make the truncation obvious.
    Abort {
        /// Bytes sent before the abort.
        sent: Bytes,
    },
}

/// A scripted response (or misbehaviour) that a [`Handler`] returns.
#[derive(Clone, Debug)]
pub struct Scripted {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
    delay: Option<Duration>,
    close: bool,
    /// Set when a builder method got an invalid status or header; the
    /// server then answers 500 with this text instead.
    error: Option<String>,
}

impl Default for Scripted {
    fn default() -> Self {
        Self::ok()
    }
}

impl Scripted {
    /// A response with this status and no body.
    pub fn new(status: u16) -> Self {
        Self {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Body::Empty,
            delay: None,
            close: false,
            error: None,
        }
        .with_status(status)
    }

    /// 200, empty body.
    pub fn ok() -> Self {
        Self::new(200)
    }

    /// 404, empty body.
    pub fn not_found() -> Self {
        Self::new(404)
    }

    /// 200 with a JSON body.
    pub fn json(value: serde_json::Value) -> Self {
        Self::ok().with_body(Body::Json(value))
    }

    /// `status` with these bytes as the body.
    pub fn bytes(status: u16, body: impl Into<Bytes>) -> Self {
        Self::new(status).with_body(Body::Bytes(body.into()))
    }

    /// `status` with a UTF-8 text body (no content type set).
    pub fn text(status: u16, body: &str) -> Self {
        Self::bytes(status, Bytes::copy_from_slice(body.as_bytes()))
    }

    /// A redirect: `status` (301, 302, 303, 307, 308, or anything) with a
    /// `Location` header, sent verbatim.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self::new(status).header(LOCATION.as_str(), location)
    }

    /// Drops the connection without sending a response (HTTP/2: the whole
    /// connection, not just the stream). Combine with
    /// [`Scripted::delayed`] to hang up after a while.
    pub fn close() -> Self {
        let mut s = Self::ok();
        s.close = true;
        s
    }

    /// `inner`, sent after waiting `delay` (before the status line and
    /// headers).
    pub fn delay(delay: Duration, inner: Scripted) -> Self {
        inner.delayed(delay)
    }

    /// Waits `delay` before sending the headers (or before closing, for
    /// [`Scripted::close`]).
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Replaces the status.
    pub fn with_status(mut self, status: u16) -> Self {
        match StatusCode::from_u16(status) {
            Ok(code) => self.status = code,
            Err(e) => self.error = Some(format!("invalid status {status}: {e}")),
        }
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// Appends a header (repeat the call for repeated headers).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            _ => self.error = Some(format!("invalid header {name:?}: {value:?}")),
        }
        self
    }

    /// The status this response will have.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers this response will have (before defaults such as
    /// `Content-Type` for JSON).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

// ---------------------------------------------------------------------------
// Handlers

/// Decides the response to each request. Cheap to clone.
#[derive(Clone)]
pub struct Handler(Arc<dyn Fn(&Recorded) -> Scripted + Send + Sync>);

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler(..)")
    }
}

impl Handler {
    /// A handler from a closure.
    pub fn new(f: impl Fn(&Recorded) -> Scripted + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The same response to every request.
    pub fn fixed(response: Scripted) -> Self {
        Self::new(move |_| response.clone())
    }

    /// The n-th request gets `responses[n]`; once they run out the last one
    /// repeats (404 when `responses` is empty).
    pub fn sequence(responses: Vec<Scripted>) -> Self {
        let next = AtomicUsize::new(0);
        Self::new(move |_| {
            let n = next.fetch_add(1, Ordering::SeqCst);
            responses
                .get(n)
                .or_else(|| responses.last())
                .cloned()
                .unwrap_or_else(Scripted::not_found)
        })
    }

    /// A routing table builder (exact path, optionally exact Host); see
    /// [`Routes`].
    pub fn routes() -> Routes {
        Routes::default()
    }

    /// Runs the handler.
    pub fn call(&self, request: &Recorded) -> Scripted {
        (self.0)(request)
    }
}

impl From<Routes> for Handler {
    fn from(routes: Routes) -> Self {
        Self::new(move |r| routes.respond(r))
    }
}

impl From<Scripted> for Handler {
    fn from(response: Scripted) -> Self {
        Self::fixed(response)
    }
}

#[derive(Clone, Debug)]
struct Route {
    host: Option<String>,
    path: String,
    response: Scripted,
}

/// Maps exact request paths (and optionally exact Host values) to
/// responses; anything else gets the fallback (404 by default).
///
/// A route's path is compared with the request path without its query,
/// unless the route's path itself contains `?`, in which case it is compared
/// with the whole request target. No normalisation happens (`//x`, `/a/../b`
/// and `%2F` are matched literally). Host comparison is ASCII
/// case-insensitive and exact, port included: a route for `example.org`
/// does not match `Host: example.org:443`. Host-specific routes win over
/// host-agnostic ones; otherwise the first matching route wins.
#[derive(Clone, Debug)]
pub struct Routes {
    routes: Vec<Route>,
    fallback: Scripted,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            fallback: Scripted::not_found(),
        }
    }
}

impl Routes {
    /// Any method, any Host, this exact path.
    pub fn route(mut self, path: &str, response: Scripted) -> Self {
        self.routes.push(Route {
            host: None,
            path: path.to_owned(),
            response,
        });
        self
    }

    /// Any method, this exact Host value (port included if the client sends
    /// one), this exact path.
    pub fn route_host(mut self, host: &str, path: &str, response: Scripted) -> Self {
        self.routes.push(Route {
            host: Some(host.to_owned()),
            path: path.to_owned(),
            response,
        });
        self
    }

    /// The response when no route matches (default 404).
    pub fn fallback(mut self, response: Scripted) -> Self {
        self.fallback = response;
        self
    }

    fn respond(&self, request: &Recorded) -> Scripted {
        let path_matches = |route: &Route| {
            if route.path.contains('?') {
                route.path == request.uri
            } else {
                route.path == request.path()
            }
        };
        let host_route = self.routes.iter().find(|route| {
            route.host.as_deref().is_some_and(|h| {
                request
                    .host
                    .as_deref()
                    .is_some_and(|rh| rh.eq_ignore_ascii_case(h))
            }) && path_matches(route)
        });
        host_route
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|route| route.host.is_none() && path_matches(route))
            })
            .map_or_else(|| self.fallback.clone(), |route| route.response.clone())
    }
}

// ---------------------------------------------------------------------------
// Records

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The client's address.
    pub peer: SocketAddr,
    /// The server address the client connected to.
    pub local: SocketAddr,
    /// SNI the client sent (`None` for no SNI, and for plaintext servers).
    pub sni: Option<String>,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
    /// HTTP version of the request.
    pub version: Version,
    /// Request method.
    pub method: Method,
    /// The request target as received, path and query (`/a?b`), not
    /// normalised. For an absolute-form HTTP/1 target see `full_uri`.
    pub uri: String,
    /// The URI as hyper parsed it (HTTP/2: built from `:scheme`,
    /// `:authority` and `:path`).
    pub full_uri: http::Uri,
    /// The `Host` header, or for HTTP/2 without one, the `:authority`.
    pub host: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// The request body (up to 16 MiB).
    pub body: Bytes,
}

impl Recorded {
    /// The path part of [`Recorded::uri`] (before any `?`).
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// The query part of [`Recorded::uri`] (after the first `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }

    /// The first value of header `name`, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, if it parses.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// One TLS handshake attempt that got as far as a ClientHello (or sent
/// something that is not TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The client's address.
    pub peer: SocketAddr,
    /// SNI from the ClientHello (`None`: the client sent none, e.g. because
    /// it connected to an IP literal).
    pub sni: Option<String>,
    /// ALPN protocols the client offered.
    pub offered_alpn: Vec<Vec<u8>>,
    /// Whether the handshake completed.
    pub ok: bool,
    /// Why it failed, when it did (e.g. the client rejected the
    /// certificate, no certificate for that SNI, not TLS at all).
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------
// TLS setup

/// How an [`HttpsServer`] speaks TLS.
#[derive(Clone, Debug)]
pub enum TlsSetup {
    /// Plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge).
    Plain,
    /// One certificate for every SNI (and for no SNI); ALPN h2, http/1.1.
    Cert(TestCert),
    /// A certificate per SNI name (ASCII case-insensitive; `*.example.org`
    /// matches exactly one left-most label), and the one to use for no SNI
    /// or an unknown name. With no default such handshakes are aborted.
    PerSni {
        /// (SNI name or wildcard, certificate).
        certs: Vec<(String, TestCert)>,
        /// Certificate for no SNI or an unlisted name.
        default: Option<TestCert>,
    },
    /// A ready rustls config (for custom versions, ALPN, client auth...).
    Config(Arc<ServerConfig>),
}

impl TlsSetup {
    /// [`TlsSetup::PerSni`] from borrowed names.
    pub fn per_sni(certs: Vec<(&str, TestCert)>, default: Option<TestCert>) -> Self {
        Self::PerSni {
            certs: certs.into_iter().map(|(n, c)| (n.to_owned(), c)).collect(),
            default,
        }
    }
}

impl From<TestCert> for TlsSetup {
    fn from(cert: TestCert) -> Self {
        Self::Cert(cert)
    }
}

impl From<Arc<ServerConfig>> for TlsSetup {
    fn from(config: Arc<ServerConfig>) -> Self {
        Self::Config(config)
    }
}

enum Tls {
    Plain,
    Fixed(Arc<ServerConfig>),
    PerSni {
        names: Vec<(String, Arc<ServerConfig>)>,
        default: Option<Arc<ServerConfig>>,
    },
}

fn sni_matches(pattern: &str, sni: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let sni = sni.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix));
    }
    pattern.eq_ignore_ascii_case(sni)
}

impl Tls {
    fn build(setup: TlsSetup) -> io::Result<Self> {
        Ok(match setup {
            TlsSetup::Plain => Tls::Plain,
            TlsSetup::Cert(cert) => Tls::Fixed(cert.server_config()?),
            TlsSetup::Config(config) => Tls::Fixed(config),
            TlsSetup::PerSni { certs, default } => Tls::PerSni {
                names: certs
                    .into_iter()
                    .map(|(name, cert)| Ok((name, cert.server_config()?)))
                    .collect::<io::Result<_>>()?,
                default: default.map(|c| c.server_config()).transpose()?,
            },
        })
    }

    fn select(&self, sni: Option<&str>) -> Option<Arc<ServerConfig>> {
        match self {
            Tls::Plain => None,
            Tls::Fixed(config) => Some(config.clone()),
            Tls::PerSni { names, default } => sni
                .and_then(|sni| {
                    names
                        .iter()
                        .find(|(pattern, _)| sni_matches(pattern, sni))
                        .map(|(_, c)| c.clone())
                })
                .or_else(|| default.clone()),
        }
    }
}

// ---------------------------------------------------------------------------
// Server

struct State {
    tls: Tls,
    handler: RwLock<Handler>,
    requests: Mutex<Vec<Recorded>>,
    handshakes: Mutex<Vec<Handshake>>,
}

#[derive(Clone)]
struct ConnInfo {
    peer: SocketAddr,
    local: SocketAddr,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// A scripted HTTP(S) server on one address. Stops when dropped.
///
/// ```
/// # use homeport_test_support::*;
/// # fn main() -> std::io::Result<()> {
/// let ca = TestCa::new("test CA")?;
/// let server = HttpsServer::start(
///     (next_loopback(), 0).into(),
///     ca.issue(&["example.test"])?,
///     Handler::routes()
///         .route("/.well-known/matrix/server", Scripted::json(serde_json::json!({"m.server": "x.test"})))
///         .route("/old", Scripted::redirect(301, "https://example.test/new")),
/// )?;
/// assert!(server.requests().is_empty());
/// # Ok(())
/// # }
/// ```
pub struct HttpsServer {
    addr: SocketAddr,
    state: Arc<State>,
    background: Background,
}

impl fmt::Debug for HttpsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpsServer {
    /// Starts a server bound to `bind` (port 0 = ephemeral). Returns once
    /// the listener is bound.
    pub fn start(
        bind: SocketAddr,
        tls: impl Into<TlsSetup>,
        handler: impl Into<Handler>,
    ) -> io::Result<HttpsServer> {
        let listener = std::net::TcpListener::bind(bind)?;
        Self::serve(listener, Tls::build(tls.into())?, handler.into())
    }

    /// Starts a server on `port` of the first [`next_loopback`] address
    /// where that port is free (trying up to 240 addresses): for fixed ports
    /// such as 8448 that discovery connects to.
    pub fn start_on_any_loopback(
        port: u16,
        tls: impl Into<TlsSetup>,
        handler: impl Into<Handler>,
    ) -> io::Result<HttpsServer> {
        let tls = Tls::build(tls.into())?;
        let mut last = None;
        for _ in 0..240 {
            match std::net::TcpListener::bind((next_loopback(), port)) {
                Ok(listener) => return Self::serve(listener, tls, handler.into()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free loopback address")))
    }

    fn serve(listener: std::net::TcpListener, tls: Tls, handler: Handler) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = runtime()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let state = Arc::new(State {
            tls,
            handler: RwLock::new(handler),
            requests: Mutex::new(Vec::new()),
            handshakes: Mutex::new(Vec::new()),
        });
        let background = Background::spawn(
            format!("https-{addr}"),
            runtime,
            accept_loop(listener, state.clone()),
        )?;
        Ok(Self {
            addr,
            state,
            background,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An `https://` (or `http://` for [`TlsSetup::Plain`]) URL for `path`
    /// on this server's address.
    pub fn url(&self, path: &str) -> String {
        let scheme = match self.state.tls {
            Tls::Plain => "http",
            _ => "https",
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Every request received so far, in arrival order. A request is
    /// recorded before its response is sent.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// How many requests arrived so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// Every finished TLS handshake attempt so far (successful or not) that
    /// got as far as a ClientHello, or sent bytes that are not TLS.
    /// Connections closed before sending anything are not recorded. A failed
    /// handshake may be recorded slightly after the client saw the failure:
    /// use [`HttpsServer::wait_for_handshakes`].
    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.state.handshakes).clone()
    }

    /// Waits until at least `n` handshakes are recorded or `timeout`
    /// passes, then returns them all.
    pub async fn wait_for_handshakes(&self, n: usize, timeout: Duration) -> Vec<Handshake> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let all = self.handshakes();
            if all.len() >= n || tokio::time::Instant::now() >= deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until at least `n` requests are recorded or `timeout` passes,
    /// then returns them all.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let all = self.requests();
            if all.len() >= n || tokio::time::Instant::now() >= deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Replaces the handler for requests arriving from now on.
    pub fn set_handler(&self, handler: impl Into<Handler>) {
        *self
            .state
            .handler
            .write()
            .unwrap_or_else(PoisonError::into_inner) = handler.into();
    }

    /// Forgets recorded requests and handshakes.
    pub fn clear(&self) {
        lock(&self.state.requests).clear();
        lock(&self.state.handshakes).clear();
    }

    /// Stops the server and waits until its sockets are closed.
    pub fn stop(mut self) {
        self.background.stop();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(connection(stream, peer, state.clone()));
            }
            Err(e) => {
                tracing::debug!("https accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    if let Tls::Plain = state.tls {
        let info = ConnInfo {
            peer,
            local,
            sni: None,
            alpn: None,
        };
        serve_http(stream, info, state).await;
        return;
    }

    let record = |sni: Option<String>, offered_alpn: Vec<Vec<u8>>, error: Option<String>| {
        lock(&state.handshakes).push(Handshake {
            peer,
            sni,
            offered_alpn,
            ok: error.is_none(),
            error,
        });
    };
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match tokio::time::timeout_at(deadline, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
        Ok(Err(e)) => {
            record(None, Vec::new(), Some(format!("before ClientHello: {e}")));
            return;
        }
        Err(_) => {
            record(None, Vec::new(), Some("no ClientHello in time".to_owned()));
            return;
        }
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let offered: Vec<Vec<u8>> = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let Some(config) = state.tls.select(sni.as_deref()) else {
        record(sni, offered, Some("no certificate for this SNI".to_owned()));
        return;
    };
    let tls = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            record(sni, offered, Some(e.to_string()));
            return;
        }
        Err(_) => {
            record(sni, offered, Some("handshake timed out".to_owned()));
            return;
        }
    };
    record(sni.clone(), offered, None);
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let info = ConnInfo {
        peer,
        local,
        sni,
        alpn,
    };
    serve_http(tls, info, state).await;
}

async fn serve_http<I>(io: I, info: ConnInfo, state: Arc<State>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let close = Arc::new(Notify::new());
    let service = {
        let close = close.clone();
        service_fn(move |request| respond(request, info.clone(), state.clone(), close.clone()))
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!("https connection: {e}");
            }
        }
        () = close.notified() => {}
    }
}

type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

async fn respond(
    request: Request<Incoming>,
    info: ConnInfo,
    state: Arc<State>,
    close: Arc<Notify>,
) -> Result<Response<ResponseBody>, io::Error> {
    let (parts, body) = request.into_parts();
    let (body, too_large) = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => (collected.to_bytes(), false),
        Err(_) => (Bytes::new(), true),
    };
    let host = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()));
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned());
    let recorded = Recorded {
        peer: info.peer,
        local: info.local,
        sni: info.sni,
        alpn: info.alpn,
        version: parts.version,
        method: parts.method,
        uri,
        full_uri: parts.uri,
        host,
        headers: parts.headers,
        body,
    };
    lock(&state.requests).push(recorded.clone());
    if too_large {
        let mut response = Response::new(full(Bytes::from_static(b"request body too large")));
        *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        return Ok(response);
    }

    let handler = state
        .handler
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let scripted = handler.call(&recorded);

    if let Some(delay) = scripted.delay {
        tokio::time::sleep(delay).await;
    }
    if scripted.close {
        close.notify_one();
        return Err(io::Error::other("scripted close"));
    }
    if let Some(error) = scripted.error {
        let mut response =
            Response::new(full(Bytes::from(format!("homeport-test-support: {error}"))));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(response);
    }

    let mut headers = scripted.headers;
    let body = match scripted.body {
        Body::Empty => Empty::new()
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
        Body::Bytes(bytes) => full(bytes),
        Body::Json(value) => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            full(Bytes::from(
                serde_json::to_vec(&value).map_err(io::Error::other)?,
            ))
        }
        Body::Slow {
            chunk,
            every,
            count,
        } => {
            let chunks = stream::unfold(0usize, move |sent| {
                let chunk = chunk.clone();
                async move {
                    if sent >= count {
                        return None;
                    }
                    tokio::time::sleep(every).await;
                    Some((Ok::<_, io::Error>(Frame::data(chunk)), sent + 1))
                }
            });
            StreamBody::new(chunks).boxed_unsync()
        }
        Body::Endless { chunk } => {
            let chunk = if chunk.is_empty() {
                Bytes::from(vec![b'x'; 16 * 1024])
            } else {
                chunk
            };
            let chunks =
                stream::repeat_with(move || Ok::<_, io::Error>(Frame::data(chunk.clone())));
            StreamBody::new(chunks).boxed_unsync()
        }
        Body::Abort { sent } => {
            let frames = stream::unfold(Some(sent), |state| async move {
                match state {
                    Some(sent) => Some((Ok(Frame::data(sent)), None)),
                    None => {
                        // Give hyper time to flush the headers and the
                        // partial body before the abort.
                        tokio::time::sleep(ABORT_AFTER).await;
                        Some((Err(io::Error::other("scripted abort")), None))
                    }
                }
            });
            StreamBody::new(frames).boxed_unsync()
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = scripted.status;
    *response.headers_mut() = headers;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_sni_matches_one_label() {
        assert!(sni_matches("*.example.org", "a.example.org"));
        assert!(sni_matches("*.example.org", "A.Example.ORG"));
        assert!(!sni_matches("*.example.org", "a.b.example.org"));
        assert!(!sni_matches("*.example.org", "example.org"));
        assert!(sni_matches("example.org", "EXAMPLE.org"));
    }

    #[test]
    fn invalid_header_becomes_an_error() {
        let s = Scripted::ok().header("bad header", "x");
        assert!(s.error.is_some());
        let s = Scripted::new(1000);
        assert!(s.error.is_some());
    }
}
