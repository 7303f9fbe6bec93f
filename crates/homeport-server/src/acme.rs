//! Automatic certificates over ACME v2 (RFC 8555), with instant-acme on
//! ring.
//!
//! [`AcmeManager`] keeps the certificate in `tls_certificate_path` /
//! `tls_private_key_path` valid:
//! - at start an existing valid certificate is served at once; when it is
//!   within `reprovision_threshold` of expiry (or misses a configured name)
//!   it is renewed in the background;
//! - with no usable certificate the [`ReloadableCert`] starts *pending*: the
//!   sockets are bound (so a port conflict is reported at start and
//!   tls-alpn-01 can be answered before any certificate exists), the
//!   challenge responder answers, and ordinary TLS handshakes are refused
//!   until the first certificate is swapped in;
//! - http-01 is answered at `/.well-known/acme-challenge/{token}` by a plain
//!   responder on `acme.port`/`acme.bind_addresses` and by every plain
//!   listener; tls-alpn-01 on the TLS listeners themselves ([`AcmeResolver`]:
//!   a ClientHello whose only ALPN protocol is `acme-tls/1` gets the
//!   challenge certificate, every other handshake the served one);
//! - the issued chain and key are checked in memory, then written with
//!   temp file + rename (key mode 0600) and hot-swapped;
//! - a failure (directory unreachable, `badNonce` after the client's own
//!   retries, `rateLimited`, an invalid order or failed challenge, a
//!   timeout) keeps the current certificate and files, is logged with the
//!   ACME problem document, counted in `homeport_acme_orders_total{result}`,
//!   persisted in the state file, and retried with exponential back-off and
//!   jitter (at least the server's `Retry-After`);
//! - an exclusive `flock` on `<tls_certificate_path>.acme.lock` is held for
//!   the whole order, so two instances sharing the files never both order:
//!   the one that finds the lock taken waits and then adopts the files the
//!   other wrote.
//!
//! Files next to `account_key_file` (say `acme_account.key`):
//! `acme_account.key.state.json` (last attempt, last error, next renewal:
//! what `homeport acme status` prints), `acme_account.key.serving` (shared
//! lock held by every running `homeport serve`), `acme_account.key.renew`
//! (a request from `homeport acme renew` to the running server).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, Key, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::certs::{self, LoadedCert, ReloadableCert};
use crate::config::{Challenge, Config};
use crate::listen::{self, Listener};
use crate::metrics::Metrics;
use crate::store::{NEVER, Store};
use homeport_federation::keys::now_ms;

/// The ALPN protocol of tls-alpn-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Challenges
// ---------------------------------------------------------------------------

/// The challenge answers being presented right now.
#[derive(Default)]
pub struct Challenges {
    /// http-01: token -> key authorization.
    http: Mutex<HashMap<String, String>>,
    /// tls-alpn-01: lower-cased name -> challenge certificate.
    tls: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// tls-alpn-01 answers synced from the shared store: name -> digest.
    synced: Mutex<HashMap<String, Vec<u8>>>,
    /// The store shared with other instances: http-01 tokens another
    /// instance provisioned are answered from it.
    shared: std::sync::OnceLock<Arc<dyn Store>>,
}

/// Store namespaces of the shared ACME state.
const NS_ACME: &str = "acme";
const NS_HTTP01: &str = "acme-http-01";
const NS_TLSALPN01: &str = "acme-tls-alpn-01";
/// How long a provisioned challenge stays in the shared store at most.
const CHALLENGE_TTL_MS: u64 = 15 * 60 * 1000;

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.http.lock().map(|m| m.len()).unwrap_or(0);
        let t = self.tls.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Challenges")
            .field("http", &h)
            .field("tls", &t)
            .finish()
    }
}

impl Challenges {
    /// The key authorization for an http-01 token, when one is presented.
    pub fn http_key_authorization(&self, token: &str) -> Option<String> {
        self.http.lock().ok()?.get(token).cloned()
    }

    /// Answer challenges other instances provision in `store` too.
    pub fn share(&self, store: Arc<dyn Store>) {
        let _ = self.shared.set(store);
    }

    /// An http-01 answer from this instance, or from the shared store.
    async fn http_answer(&self, token: &str) -> Option<String> {
        if let Some(ka) = self.http_key_authorization(token) {
            return Some(ka);
        }
        let store = self.shared.get()?;
        let v = store.kv_get(NS_HTTP01, token, now_ms()).await.ok()??;
        v.as_str().map(str::to_owned)
    }

    /// Make the tls-alpn-01 answers in the shared store for `names` the
    /// ones presented here (besides this instance's own).
    async fn sync_tls(&self, names: &[String]) {
        let Some(store) = self.shared.get() else {
            return;
        };
        let now = now_ms();
        let mut found: HashMap<String, Vec<u8>> = HashMap::new();
        for n in names {
            let n = n.to_ascii_lowercase();
            if let Ok(Some(v)) = store.kv_get(NS_TLSALPN01, &n, now).await
                && let Some(d) = v
                    .as_str()
                    .and_then(|b| homeport_core::base64::decode(b).ok())
            {
                found.insert(n, d);
            }
        }
        let Ok(mut synced) = self.synced.lock() else {
            return;
        };
        if *synced == found {
            return;
        }
        let Ok(mut tls) = self.tls.lock() else {
            return;
        };
        for n in synced.keys() {
            if !found.contains_key(n) {
                tls.remove(n);
            }
        }
        for (n, d) in &found {
            if synced.get(n) != Some(d)
                && let Ok(c) = tls_alpn_cert(n, d)
            {
                tls.insert(n.clone(), Arc::new(c));
            }
        }
        *synced = found;
    }

    /// The tls-alpn-01 certificate for `name`, when one is presented.
    pub fn tls_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls
            .lock()
            .ok()?
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    fn add_http(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http.lock() {
            m.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    fn add_tls(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let cert = tls_alpn_cert(name, digest)?;
        if let Ok(mut m) = self.tls.lock() {
            m.insert(name.to_ascii_lowercase(), Arc::new(cert));
        }
        Ok(())
    }

    fn remove(&self, tokens: &[String], names: &[String]) {
        if let Ok(mut m) = self.http.lock() {
            for t in tokens {
                m.remove(t);
            }
        }
        if let Ok(mut m) = self.tls.lock() {
            for n in names {
                m.remove(&n.to_ascii_lowercase());
            }
        }
    }
}

/// A self-signed certificate for `name` carrying the critical
/// acmeIdentifier extension with `digest` (RFC 8737 section 3).
fn tls_alpn_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| format!("tls-alpn-01 certificate for {name}: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// Undoes the provisioning of one order's challenges when dropped.
struct Provisioned {
    challenges: Arc<Challenges>,
    tokens: Vec<String>,
    names: Vec<String>,
    shared: Option<Arc<dyn Store>>,
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        self.challenges.remove(&self.tokens, &self.names);
        // Shared answers: deleted now (they also expire).
        if let Some(st) = self.shared.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let tokens = std::mem::take(&mut self.tokens);
            let names = std::mem::take(&mut self.names);
            rt.spawn(async move {
                for t in tokens {
                    let _ = st.kv_delete(NS_HTTP01, &t).await;
                }
                for n in names {
                    let _ = st.kv_delete(NS_TLSALPN01, &n.to_ascii_lowercase()).await;
                }
            });
        }
    }
}

/// The certificate resolver of a TLS listener when tls-alpn-01 is used: a
/// ClientHello offering only `acme-tls/1` gets the challenge certificate
/// for its SNI (or nothing), every other handshake the served certificate.
#[derive(Debug)]
pub struct AcmeResolver {
    cert: Arc<ReloadableCert>,
    challenges: Arc<Challenges>,
}

impl AcmeResolver {
    /// Serve `cert`, and answer the challenges in `challenges`.
    pub fn new(cert: Arc<ReloadableCert>, challenges: Arc<Challenges>) -> Self {
        AcmeResolver { cert, challenges }
    }
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let only_acme = hello.alpn().is_some_and(|mut protocols| {
            let first = protocols.next();
            first == Some(ACME_TLS_ALPN) && protocols.next().is_none()
        });
        if only_acme {
            return hello
                .server_name()
                .and_then(|n| self.challenges.tls_cert(n));
        }
        self.cert.resolve(hello)
    }
}

/// The http-01 route, to merge into a plain listener's router.
pub fn challenge_router(challenges: Arc<Challenges>) -> Router {
    Router::new().route(
        "/.well-known/acme-challenge/{token}",
        axum::routing::get(http_challenge).with_state(challenges),
    )
}

/// The plain responder of `acme.port`: the http-01 route, 404 elsewhere.
pub fn responder_router(challenges: Arc<Challenges>) -> Router {
    challenge_router(challenges).fallback(|| async {
        let mut r = Response::new(Body::from(
            r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#,
        ));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    })
}

async fn http_challenge(
    State(ch): State<Arc<Challenges>>,
    UrlPath(token): UrlPath<String>,
) -> Response<Body> {
    let mut r = match ch.http_answer(&token).await {
        Some(ka) => {
            tracing::debug!(%token, "answered an http-01 validation");
            Response::new(Body::from(ka))
        }
        None => {
            let mut r = Response::new(Body::from("no such ACME challenge token\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// Timing knobs. The defaults suit a public CA; tests shorten them.
#[derive(Clone, Debug)]
pub struct AcmeTuning {
    /// Bound on one HTTP request to the ACME server (body included).
    pub request_timeout: Duration,
    /// Bound on waiting for the CA to validate the challenges.
    pub validation_timeout: Duration,
    /// Bound on a whole order, account to certificate.
    pub order_timeout: Duration,
    /// First retry delay after a failure; doubles with each failure.
    pub backoff_base: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Delay before looking again when another instance holds the lock.
    pub lock_retry: Duration,
    /// With a shared store (PostgreSQL): how often each instance looks
    /// for a certificate or tls-alpn-01 answer another instance stored.
    pub shared_poll: Duration,
    /// How often a running server looks for a `homeport acme renew` request.
    pub request_poll: Duration,
}

impl Default for AcmeTuning {
    fn default() -> Self {
        AcmeTuning {
            request_timeout: Duration::from_secs(30),
            validation_timeout: Duration::from_secs(180),
            order_timeout: Duration::from_secs(600),
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(6 * 3600),
            lock_retry: Duration::from_secs(60),
            shared_poll: Duration::from_secs(5),
            request_poll: Duration::from_secs(2),
        }
    }
}

/// What ACME needs from the config.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    /// The directory URL.
    pub directory: String,
    /// Extra CA trusted for the directory.
    pub directory_ca_file: Option<PathBuf>,
    /// The certificate's names, `domain` first.
    pub names: Vec<String>,
    /// `mailto:` contacts.
    pub contact: Vec<String>,
    /// The account key (PKCS#8 PEM, P-256).
    pub account_key_file: PathBuf,
    /// Renew when this close to expiry.
    pub threshold: Duration,
    /// Look at expiry at least this often.
    pub check_interval: Duration,
    /// The challenge type.
    pub challenge: Challenge,
    /// Where the chain goes.
    pub cert_path: PathBuf,
    /// Where the key goes.
    pub key_path: PathBuf,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl AcmeSettings {
    /// From a validated config with `acme.enabled`.
    pub fn from_config(cfg: &Config) -> Result<Self, AcmeFailure> {
        let a = &cfg.acme;
        if !a.enabled {
            return Err(AcmeFailure::local("acme.enabled is false in the config"));
        }
        let (Some(cert_path), Some(key_path)) =
            (&cfg.tls_certificate_path, &cfg.tls_private_key_path)
        else {
            return Err(AcmeFailure::local(
                "tls_certificate_path and tls_private_key_path are not set",
            ));
        };
        let names: Vec<String> = a.names().iter().map(|n| n.as_str().to_owned()).collect();
        if names.is_empty() {
            return Err(AcmeFailure::local("acme.domain is not set"));
        }
        Ok(AcmeSettings {
            directory: a.url.clone(),
            directory_ca_file: a.directory_ca_file.clone(),
            names,
            contact: a.contact.clone(),
            account_key_file: a.account_key_file.clone(),
            threshold: a.reprovision_threshold,
            check_interval: a.check_interval,
            challenge: a.challenge,
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
        })
    }

    /// `<account_key_file>.state.json`.
    pub fn state_path(&self) -> PathBuf {
        sibling(&self.account_key_file, ".state.json")
    }

    /// `<tls_certificate_path>.acme.lock`: held for the whole order.
    pub fn lock_path(&self) -> PathBuf {
        sibling(&self.cert_path, ".acme.lock")
    }

    /// `<account_key_file>.serving`: share-locked by running servers.
    pub fn serving_path(&self) -> PathBuf {
        sibling(&self.account_key_file, ".serving")
    }

    /// `<account_key_file>.renew`: a renewal request for the running server.
    pub fn request_path(&self) -> PathBuf {
        sibling(&self.account_key_file, ".renew")
    }
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

/// Why an order failed; the `kind` is the `result` label of
/// `homeport_acme_orders_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The ACME server could not be reached (connection refused, reset,
    /// TLS failure talking to the directory).
    Unreachable,
    /// `badNonce` even after the client's retries.
    BadNonce,
    /// `rateLimited` (retried no sooner than Retry-After).
    RateLimited,
    /// The order became invalid: a challenge failed, a name was refused.
    Invalid,
    /// A request or the whole order took too long.
    Timeout,
    /// Something on this machine: the account key, writing the files.
    Local,
    /// Any other error, including other ACME problem documents.
    Error,
}

impl FailureKind {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::BadNonce => "bad_nonce",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Invalid => "invalid",
            FailureKind::Timeout => "timeout",
            FailureKind::Local => "local",
            FailureKind::Error => "error",
        }
    }
}

/// A failed attempt: what, why, and the ACME problem document if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AcmeFailure {
    /// The class.
    pub kind: FailureKind,
    /// For people.
    pub message: String,
    /// The problem document(s) the server sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Value>,
    /// The server's Retry-After, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl AcmeFailure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        AcmeFailure {
            kind,
            message: message.into(),
            problem: None,
            retry_after: None,
        }
    }

    fn local(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Local, message)
    }
}

fn problem_json(p: &Problem) -> Value {
    let mut v = json!({});
    if let Some(t) = &p.r#type {
        v["type"] = json!(t);
    }
    if let Some(d) = &p.detail {
        v["detail"] = json!(d);
    }
    if let Some(s) = p.status {
        v["status"] = json!(s);
    }
    if !p.subproblems.is_empty() {
        v["subproblems"] = Value::Array(
            p.subproblems
                .iter()
                .map(|s| {
                    json!({
                        "identifier": s.identifier,
                        "type": s.r#type,
                        "detail": s.detail,
                    })
                })
                .collect(),
        );
    }
    v
}

fn problem_type(p: &Problem) -> &str {
    p.r#type
        .as_deref()
        .map(|t| t.trim_start_matches("urn:ietf:params:acme:error:"))
        .unwrap_or("")
}

/// Marker for a request that took longer than `request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the ACME server did not answer within {0:?}")]
struct RequestTimedOut(Duration);

fn classify(step: &str, e: instant_acme::Error, retry_after: Option<u64>) -> AcmeFailure {
    use instant_acme::Error as E;
    match e {
        E::Api(p) => {
            let t = problem_type(&p);
            let kind = match t {
                "badNonce" => FailureKind::BadNonce,
                "rateLimited" => FailureKind::RateLimited,
                "connection" | "dns" | "incorrectResponse" | "tls" | "unauthorized" | "caa"
                | "rejectedIdentifier" => FailureKind::Invalid,
                _ => FailureKind::Error,
            };
            let detail = p.detail.clone().unwrap_or_default();
            AcmeFailure {
                kind,
                message: format!(
                    "{step}: the ACME server answered {}: {detail}",
                    p.r#type.as_deref().unwrap_or("a problem")
                ),
                problem: Some(problem_json(&p)),
                retry_after: if kind == FailureKind::RateLimited {
                    retry_after
                } else {
                    None
                },
            }
        }
        E::Timeout(_) => AcmeFailure::new(
            FailureKind::Timeout,
            format!("{step}: the ACME server did not finish in time"),
        ),
        E::Other(inner) => {
            let kind = if inner.downcast_ref::<RequestTimedOut>().is_some() {
                FailureKind::Timeout
            } else {
                FailureKind::Unreachable
            };
            AcmeFailure::new(kind, format!("{step}: {}", error_chain(inner.as_ref())))
        }
        E::Hyper(h) => AcmeFailure::new(FailureKind::Unreachable, format!("{step}: {h}")),
        other => AcmeFailure::new(FailureKind::Error, format!("{step}: {other}")),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

// ---------------------------------------------------------------------------
// HTTP client: trust, timeouts, badNonce and Retry-After bookkeeping
// ---------------------------------------------------------------------------

type Hyper = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    BodyWrapper<Bytes>,
>;

#[derive(Clone)]
struct AcmeHttp {
    inner: Hyper,
    metrics: Arc<Metrics>,
    retry_after: Arc<Mutex<Option<u64>>>,
    timeout: Duration,
}

impl AcmeHttp {
    fn new(
        settings: &AcmeSettings,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Result<Self, AcmeFailure> {
        let trust = homeport_resolve::TrustConfig {
            system_roots: true,
            ca_files: settings.directory_ca_file.iter().cloned().collect(),
            ca_certs: Vec::new(),
        };
        let roots = homeport_resolve::tls::root_store(&trust)
            .map_err(|e| AcmeFailure::local(format!("acme.directory_ca_file: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeFailure::local(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(AcmeHttp {
            inner,
            metrics,
            retry_after: Arc::new(Mutex::new(None)),
            timeout,
        })
    }

    fn take_retry_after(&self) -> Option<u64> {
        self.retry_after.lock().ok().and_then(|mut r| r.take())
    }
}

fn parse_retry_after(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let me = self.clone();
        Box::pin(async move {
            let t = me.timeout;
            let timed_out = || instant_acme::Error::Other(Box::new(RequestTimedOut(t)));
            let work = async {
                let rsp = me
                    .inner
                    .request(req)
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (parts, body) = rsp.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?
                    .to_bytes();
                Ok::<_, instant_acme::Error>((parts, bytes))
            };
            let (parts, bytes) = tokio::time::timeout(t, work)
                .await
                .map_err(|_| timed_out())??;
            if !parts.status.is_success() {
                if let Some(ra) = parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
                    && let Ok(mut slot) = me.retry_after.lock()
                {
                    *slot = Some(ra);
                }
                if parts.status == StatusCode::BAD_REQUEST
                    && let Ok(p) = serde_json::from_slice::<Problem>(&bytes)
                    && problem_type(&p) == "badNonce"
                {
                    me.metrics.acme_bad_nonce();
                    tracing::debug!("ACME server rejected a nonce (badNonce); retrying");
                }
            }
            Ok(BytesResponse {
                parts,
                body: Box::new(bytes),
            })
        })
    }
}

// ---------------------------------------------------------------------------
// Files: atomic writes, the account key, the lock, the state
// ---------------------------------------------------------------------------

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    dir.join(format!(
        ".{name}.tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Write `data` to a new temp file next to `path` (synced, `mode`), and
/// return its name; the caller renames it into place.
fn write_temp(path: &Path, data: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = temp_name(path);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    match write() {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

/// Replace `path` with `data` atomically (temp file + rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = write_temp(path, data, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path);
    Ok(())
}

/// Load the account key, creating it (mode 0600, never overwriting) when
/// Parse an account key PEM (PKCS#8 ECDSA P-256); `what` names it in errors.
fn parse_account_pem(pem: &[u8], what: &str) -> Result<PrivatePkcs8KeyDer<'static>, AcmeFailure> {
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| AcmeFailure::local(format!("account key {what}: no PEM private key: {e}")))?;
    let PrivateKeyDer::Pkcs8(der) = key else {
        return Err(AcmeFailure::local(format!(
            "account key {what}: not a PKCS#8 key (homeport writes ECDSA P-256 in PKCS#8 PEM)"
        )));
    };
    Key::from_pkcs8_der(der.clone_key()).map_err(|e| {
        AcmeFailure::local(format!("account key {what}: not an ECDSA P-256 key: {e}"))
    })?;
    Ok(der)
}

/// A new account key, as PEM.
fn generate_account_pem() -> Result<String, AcmeFailure> {
    let (_, der) = Key::generate_pkcs8()
        .map_err(|e| AcmeFailure::local(format!("generating the account key: {e}")))?;
    Ok(rcgen::KeyPair::try_from(der.secret_pkcs8_der())
        .map_err(|e| AcmeFailure::local(format!("encoding the account key: {e}")))?
        .serialize_pem())
}

/// Load the account key file, or create it (0600) when missing; two
/// processes creating it at once end up with the same key.
pub fn load_or_create_account_key(
    path: &Path,
) -> Result<(PrivatePkcs8KeyDer<'static>, bool), AcmeFailure> {
    let p = path.display();
    match std::fs::read(path) {
        Ok(pem) => Ok((parse_account_pem(&pem, &p.to_string())?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pem = generate_account_pem()?;
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = write_temp(path, pem.as_bytes(), 0o600)
                .map_err(|e| AcmeFailure::local(format!("writing account key {p}: {e}")))?;
            // A hard link never replaces an existing file: if another
            // process created the key meanwhile, use theirs.
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    sync_dir(path);
                    tracing::info!(path = %p, "created the ACME account key");
                    Ok((parse_account_pem(pem.as_bytes(), &p.to_string())?, true))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_account_key(path)
                }
                Err(e) => Err(AcmeFailure::local(format!("writing account key {p}: {e}"))),
            }
        }
        Err(e) => Err(AcmeFailure::local(format!("account key {p}: {e}"))),
    }
}

/// An exclusive lock on the order lock file, released on drop.
#[derive(Debug)]
pub struct OrderLock {
    _file: File,
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn try_flock(file: &File, exclusive: bool) -> std::io::Result<bool> {
    use rustix::fs::FlockOperation as F;
    let op = if exclusive {
        F::NonBlockingLockExclusive
    } else {
        F::NonBlockingLockShared
    };
    match rustix::fs::flock(file, op) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Take the order lock if nobody holds it (`None`: another instance is
/// ordering right now).
pub fn try_order_lock(path: &Path) -> std::io::Result<Option<OrderLock>> {
    let f = open_lock_file(path)?;
    Ok(try_flock(&f, true)?.then_some(OrderLock { _file: f }))
}

/// Held by a running `homeport serve` (shared lock on
/// [`AcmeSettings::serving_path`]).
#[derive(Debug)]
pub struct ServingMarker {
    _file: File,
}

impl ServingMarker {
    /// Mark this process as serving.
    pub fn take(settings: &AcmeSettings) -> std::io::Result<ServingMarker> {
        let f = open_lock_file(&settings.serving_path())?;
        // A shared lock only fails against an exclusive one, which is held
        // for an instant by `serve_running`; try again briefly.
        for _ in 0..50 {
            if try_flock(&f, false)? {
                return Ok(ServingMarker { _file: f });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(std::io::Error::other("cannot take the serving lock"))
    }
}

/// True when a `homeport serve` with these settings runs on this machine.
pub fn serve_running(settings: &AcmeSettings) -> bool {
    let Ok(f) = open_lock_file(&settings.serving_path()) else {
        return false;
    };
    !try_flock(&f, true).unwrap_or(true)
}

/// The last failure, as persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateError {
    /// When (unix seconds).
    pub at: u64,
    /// The failure.
    #[serde(flatten)]
    pub failure: Option<AcmeFailure>,
}

/// The outcome of a `homeport acme renew` request handled by the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandledRequest {
    /// The request's id.
    pub id: u64,
    /// Success.
    pub ok: bool,
    /// What happened.
    pub message: String,
}

/// `<account_key_file>.state.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeState {
    /// The directory used.
    #[serde(default)]
    pub directory: Option<String>,
    /// The account URL.
    #[serde(default)]
    pub account_url: Option<String>,
    /// Names of the served certificate.
    #[serde(default)]
    pub names: Vec<String>,
    /// Its notAfter (unix seconds).
    #[serde(default)]
    pub not_after: Option<u64>,
    /// When it is due for renewal (unix seconds).
    #[serde(default)]
    pub next_renewal: Option<u64>,
    /// When the next retry after a failure is planned (unix seconds).
    #[serde(default)]
    pub next_retry: Option<u64>,
    /// Last order attempt (unix seconds).
    #[serde(default)]
    pub last_attempt: Option<u64>,
    /// Last successful order (unix seconds).
    #[serde(default)]
    pub last_success: Option<u64>,
    /// The last failure (cleared by a success).
    #[serde(default)]
    pub last_error: Option<StateError>,
    /// Failures since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The last renew request handled by a running server.
    #[serde(default)]
    pub handled_request: Option<HandledRequest>,
}

/// Read the state file (empty when missing or unreadable).
pub fn read_state(settings: &AcmeSettings) -> AcmeState {
    std::fs::read(settings.state_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_state(settings: &AcmeSettings, st: &AcmeState) {
    let path = settings.state_path();
    let text = match serde_json::to_vec_pretty(st) {
        Ok(t) => t,
        Err(_) => return,
    };
    if let Err(e) = write_atomic(&path, &text, 0o644) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the ACME state file");
    }
}

/// A renewal request for the running server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewRequest {
    /// Matches [`HandledRequest::id`].
    pub id: u64,
    /// Order even when not due.
    pub force: bool,
}

/// Ask the running server to renew; returns the request's id.
pub fn request_renewal(settings: &AcmeSettings, force: bool) -> std::io::Result<u64> {
    let id = rand::random::<u64>() >> 12;
    let text = serde_json::to_vec(&RenewRequest { id, force }).map_err(std::io::Error::other)?;
    write_atomic(&settings.request_path(), &text, 0o600)?;
    Ok(id)
}

fn take_request(settings: &AcmeSettings) -> Option<RenewRequest> {
    let path = settings.request_path();
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    serde_json::from_slice(&bytes).ok()
}

// ---------------------------------------------------------------------------
// When to renew
// ---------------------------------------------------------------------------

/// When `cert` is due for renewal (unix seconds; 0 = now): `threshold`
/// before notAfter, or, when the CA's lifetime is not longer than the
/// threshold (short-lived certificates), with a third of the lifetime
/// left, so a short lifetime does not mean renewing without pause. A
/// certificate missing one of `names` is due now.
pub fn due_at(cert: &LoadedCert, names: &[String], threshold: Duration) -> u64 {
    let Some(leaf) = cert.chain.first() else {
        return 0;
    };
    let covered = names
        .iter()
        .all(|n| cert.names.iter().any(|c| c.eq_ignore_ascii_case(n)));
    if !covered {
        return 0;
    }
    let not_before = certs::leaf_facts(leaf).map(|f| f.0).unwrap_or(0);
    let lifetime = cert.not_after.saturating_sub(not_before);
    let mut before = threshold.as_secs();
    if before >= lifetime {
        before = lifetime / 3;
    }
    cert.not_after.saturating_sub(before)
}

fn backoff(failures: u32, tuning: &AcmeTuning, retry_after: Option<u64>) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let d = tuning
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(tuning.backoff_max);
    // Equal jitter: half fixed, half random.
    let half = d / 2;
    let jitter = half.mul_f64(rand::random::<f64>());
    let d = half + jitter;
    match retry_after {
        Some(s) => d.max(Duration::from_secs(s)),
        None => d,
    }
}

// ---------------------------------------------------------------------------
// The manager
// ---------------------------------------------------------------------------

/// What one attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// A new certificate was issued, written and is being served.
    Renewed {
        /// Its notAfter (unix seconds).
        not_after: u64,
    },
    /// Newer files (another instance, an admin) were picked up instead.
    Adopted {
        /// Their notAfter.
        not_after: u64,
    },
    /// Nothing to do until `due_at` (unix seconds).
    NotDue {
        /// When renewal is due.
        due_at: u64,
    },
    /// Another instance holds the lock.
    Busy,
}

/// Keeps the served certificate valid; see the module docs.
pub struct AcmeManager {
    settings: AcmeSettings,
    tuning: AcmeTuning,
    cert: Arc<ReloadableCert>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
    wake: Notify,
    force_next: AtomicBool,
    shared: std::sync::OnceLock<Arc<dyn Store>>,
}

impl std::fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("names", &self.settings.names)
            .field("directory", &self.settings.directory)
            .finish_non_exhaustive()
    }
}

impl AcmeManager {
    /// A manager for `cert` (loaded, or pending).
    pub fn new(
        settings: AcmeSettings,
        tuning: AcmeTuning,
        cert: Arc<ReloadableCert>,
        challenges: Arc<Challenges>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(AcmeManager {
            settings,
            tuning,
            cert,
            challenges,
            metrics,
            wake: Notify::new(),
            force_next: AtomicBool::new(false),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &AcmeSettings {
        &self.settings
    }

    /// The certificate kept valid.
    pub fn cert(&self) -> &Arc<ReloadableCert> {
        &self.cert
    }

    /// The challenge answers presented.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// When the served certificate is due (unix seconds; 0 = now).
    pub fn due_at(&self) -> u64 {
        if self.cert.is_pending() {
            return 0;
        }
        due_at(
            &self.cert.current(),
            &self.settings.names,
            self.settings.threshold,
        )
    }

    /// The persisted state.
    pub async fn state(&self) -> AcmeState {
        self.load_state().await
    }

    /// Share the account, the certificate, the order lock, the challenges
    /// and the state with every instance using `store` (PostgreSQL).
    pub fn share(&self, store: Arc<dyn Store>) {
        self.challenges.share(store.clone());
        let _ = self.shared.set(store);
    }

    fn shared(&self) -> Option<&Arc<dyn Store>> {
        self.shared.get()
    }

    async fn load_state(&self) -> AcmeState {
        match self.shared() {
            Some(st) => read_state_shared(st.as_ref()).await,
            None => read_state(&self.settings),
        }
    }

    async fn save_state(&self, state: &AcmeState) {
        match self.shared() {
            Some(st) => {
                let v = serde_json::to_value(state).unwrap_or_default();
                if let Err(e) = st.kv_put(NS_ACME, "state", &v, NEVER).await {
                    tracing::warn!(error = %e, "cannot write the ACME state to the store");
                }
            }
            None => write_state(&self.settings, state),
        }
    }

    async fn take_request(&self) -> Option<RenewRequest> {
        match self.shared() {
            Some(st) => st
                .kv_take(NS_ACME, "request", now_ms())
                .await
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_value(v).ok()),
            None => take_request(&self.settings),
        }
    }

    /// The account key: from the shared store, else the file (imported
    /// into the store), else a new one; of instances creating one at once,
    /// all use the first stored.
    async fn account_key(&self) -> Result<(PrivatePkcs8KeyDer<'static>, bool), AcmeFailure> {
        let Some(st) = self.shared() else {
            return load_or_create_account_key(&self.settings.account_key_file);
        };
        let unavailable = |e: crate::store::StoreError| {
            AcmeFailure::local(format!("the ACME account in the store: {e}"))
        };
        if let Some(v) = st
            .kv_get(NS_ACME, "account_key", 0)
            .await
            .map_err(unavailable)?
            && let Some(pem) = v.get("pem").and_then(Value::as_str)
        {
            return Ok((
                parse_account_pem(pem.as_bytes(), "(the store's acme/account_key)")?,
                false,
            ));
        }
        let (pem, from_file) = match std::fs::read(&self.settings.account_key_file) {
            Ok(pem) => (String::from_utf8_lossy(&pem).into_owned(), true),
            Err(_) => (generate_account_pem()?, false),
        };
        let won = st
            .kv_insert_new(NS_ACME, "account_key", &json!({"pem": pem}), NEVER, 0)
            .await
            .map_err(unavailable)?;
        let won_pem = won.get("pem").and_then(Value::as_str).unwrap_or_default();
        let der = parse_account_pem(won_pem.as_bytes(), "(the store's acme/account_key)")?;
        let created = won_pem == pem && !from_file;
        if won_pem == pem {
            tracing::info!(
                imported = from_file,
                "ACME: account key stored for every instance"
            );
        }
        Ok((der, created))
    }

    /// Bring this instance and the shared store in line: serve the
    /// store's certificate when it is newer than the served one (written
    /// to the files too, so a restart without the database still has it);
    /// publish the served one when the store has none or an older one.
    /// Returns whether a certificate was adopted.
    pub async fn sync_shared(&self) -> bool {
        let Some(st) = self.shared() else {
            return false;
        };
        let stored = match st.kv_get(NS_ACME, "certificate", 0).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "ACME: store unavailable; serving the current certificate");
                return false;
            }
        };
        let served = (!self.cert.is_pending()).then(|| self.cert.current());
        let stored_pair = stored.as_ref().and_then(|v| {
            let chain = v.get("chain_pem")?.as_str()?;
            let key = v.get("key_pem")?.as_str()?;
            Some((chain.to_owned(), key.to_owned()))
        });
        if let Some((chain, key)) = &stored_pair {
            match certs::load_pem(
                chain.as_bytes(),
                key.as_bytes(),
                "(the store's certificate)",
                "(the store's key)",
                SystemTime::now(),
            ) {
                Ok(c)
                    if !self
                        .settings
                        .names
                        .iter()
                        .all(|n| c.names.iter().any(|x| x.eq_ignore_ascii_case(n))) =>
                {
                    // Instances configured with other names share a
                    // database: keep ours, and leave theirs alone.
                    tracing::warn!(
                        stored = ?c.names,
                        configured = ?self.settings.names,
                        "ACME: the store's certificate does not cover this instance's names; not using it (give every instance the same acme names)"
                    );
                    return false;
                }
                Ok(c) => {
                    let newer = match &served {
                        None => true,
                        Some(cur) => {
                            c.leaf_sha256 != cur.leaf_sha256 && c.not_after >= cur.not_after
                        }
                    };
                    if newer {
                        if let Err(e) = self.write_pair(chain, key) {
                            tracing::warn!(error = %e.message, "ACME: cannot write the shared certificate to the files; serving it anyway");
                        }
                        let not_after = c.not_after;
                        self.cert.swap(c);
                        self.cert.refresh_stamp();
                        self.metrics.cert_expiry("tls", self.cert.expires_in());
                        self.metrics.reload(true);
                        tracing::info!(
                            not_after = %homeport_core::time::format_utc_ms(not_after * 1000),
                            "ACME: serving the certificate another instance obtained"
                        );
                        return true;
                    }
                    if served.as_ref().is_some_and(|cur| {
                        cur.leaf_sha256 == c.leaf_sha256 || cur.not_after <= c.not_after
                    }) {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: the store's certificate is unusable; replacing it with the served one");
                }
            }
        }
        // The store has none, an unusable one or an older one: publish ours.
        if served.is_some()
            && let (Ok(chain), Ok(key)) = (
                std::fs::read_to_string(&self.settings.cert_path),
                std::fs::read_to_string(&self.settings.key_path),
            )
            && let Ok(c) =
                certs::load_pem(chain.as_bytes(), key.as_bytes(), "", "", SystemTime::now())
            && served
                .as_ref()
                .is_some_and(|cur| cur.leaf_sha256 == c.leaf_sha256)
        {
            self.publish(&chain, &key, c.not_after).await;
        }
        false
    }

    async fn publish(&self, chain_pem: &str, key_pem: &str, not_after: u64) {
        let Some(st) = self.shared() else { return };
        let v = json!({
            "chain_pem": chain_pem,
            "key_pem": key_pem,
            "not_after": not_after,
            "names": self.settings.names,
            "by": crate::store::instance_id(),
            "at": now_unix(),
        });
        match st.kv_put(NS_ACME, "certificate", &v, NEVER).await {
            Ok(()) => tracing::info!("ACME: certificate stored for every instance"),
            Err(e) => {
                tracing::warn!(error = %e, "ACME: cannot store the certificate; other instances will pick it up once the store is back")
            }
        }
    }

    /// Every instance says it is running (`homeport acme renew` hands its
    /// request over when one is).
    async fn heartbeat(&self) {
        if let Some(st) = self.shared() {
            let now = now_ms();
            let _ = st
                .kv_put(
                    NS_ACME,
                    "serving",
                    &json!({"instance": crate::store::instance_id(), "at": now}),
                    now + 60_000,
                )
                .await;
        }
    }

    /// Make the background loop order now (even when not due with `force`).
    pub fn trigger(&self, force: bool) {
        if force {
            self.force_next.store(true, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }

    /// Run the background loop until `stop` turns true.
    pub fn spawn(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.clone().run() => {}
                _ = me.clone().sync_loop() => {}
                _ = async { while !*stop.borrow() { if stop.changed().await.is_err() { break; } } } => {}
            }
        })
    }

    /// With a shared store: pick up certificates and tls-alpn-01 answers
    /// other instances put there (every `shared_poll`), say this instance
    /// runs.
    async fn sync_loop(self: Arc<Self>) {
        if self.shared().is_none() {
            return std::future::pending().await;
        }
        let mut beat = Instant::now() - Duration::from_secs(3600);
        loop {
            if self.sync_shared().await {
                self.metrics.acme_next_renewal(self.due_at());
            }
            self.challenges.sync_tls(&self.settings.names).await;
            if beat.elapsed() >= Duration::from_secs(20) {
                self.heartbeat().await;
                beat = Instant::now();
            }
            tokio::time::sleep(self.tuning.shared_poll).await;
        }
    }

    async fn run(self: Arc<Self>) {
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        self.metrics.acme_next_renewal(self.due_at());
        loop {
            // Wait until due, a retry, a trigger or a renew request.
            let mut request: Option<RenewRequest> = None;
            let force = loop {
                let until = match retry_at {
                    Some(t) => t.saturating_duration_since(Instant::now()),
                    None => Duration::from_secs(self.due_at().saturating_sub(now_unix()))
                        .min(self.settings.check_interval),
                };
                if until.is_zero() {
                    break false;
                }
                let slice = until.min(self.tuning.request_poll);
                tokio::select! {
                    _ = tokio::time::sleep(slice) => {}
                    _ = self.wake.notified() => {}
                }
                if self.force_next.swap(false, Ordering::SeqCst) {
                    break true;
                }
                if let Some(r) = self.take_request().await {
                    let f = r.force;
                    request = Some(r);
                    break f;
                }
                if retry_at.is_none() && self.due_at() > now_unix() {
                    // A trigger without force, or the check interval: go
                    // through renew_now only when due.
                    continue;
                }
            };
            let outcome = self.renew_now(force).await;
            match &outcome {
                Ok(Renewal::Busy) => {
                    retry_at = Some(Instant::now() + self.tuning.lock_retry);
                }
                Ok(_) => {
                    failures = 0;
                    retry_at = (self.due_at() <= now_unix())
                        .then(|| Instant::now() + self.tuning.backoff_base);
                }
                Err(f) => {
                    failures += 1;
                    let d = backoff(failures, &self.tuning, f.retry_after);
                    retry_at = Some(Instant::now() + d);
                    let mut st = self.load_state().await;
                    st.next_retry = Some(now_unix() + d.as_secs());
                    self.save_state(&st).await;
                    tracing::warn!(
                        retry_in = %homeport_core::duration::format(d),
                        failures,
                        "ACME: still serving the current certificate; will retry"
                    );
                }
            }
            if let Some(r) = request {
                let mut st = self.load_state().await;
                st.handled_request = Some(HandledRequest {
                    id: r.id,
                    ok: outcome.is_ok(),
                    message: match &outcome {
                        Ok(o) => describe(o),
                        Err(e) => e.message.clone(),
                    },
                });
                self.save_state(&st).await;
            }
            self.metrics.acme_next_renewal(self.due_at());
        }
    }

    /// One attempt now: take the lock, adopt newer files, and order when
    /// due (or `force`). Records the outcome in the state file and metrics.
    pub async fn renew_now(&self, force: bool) -> Result<Renewal, AcmeFailure> {
        let started = now_unix();
        let mut ordered = false;
        let result = self.attempt(force, &mut ordered).await;
        let mut st = self.load_state().await;
        st.directory = Some(self.settings.directory.clone());
        match &result {
            Ok(Renewal::Renewed { not_after }) => {
                self.metrics.acme_order("ok");
                st.last_attempt = Some(started);
                st.last_success = Some(now_unix());
                st.last_error = None;
                st.consecutive_failures = 0;
                st.next_retry = None;
                tracing::info!(
                    names = ?self.settings.names,
                    not_after = %homeport_core::time::format_utc_ms(not_after * 1000),
                    "ACME: certificate issued, written and served"
                );
            }
            Ok(Renewal::Adopted { .. }) => {
                st.last_error = None;
                st.next_retry = None;
                st.consecutive_failures = 0;
            }
            Ok(Renewal::NotDue { .. }) | Ok(Renewal::Busy) => {}
            Err(f) => {
                self.metrics.acme_order(f.kind.label());
                if ordered {
                    st.last_attempt = Some(started);
                }
                st.last_error = Some(StateError {
                    at: now_unix(),
                    failure: Some(f.clone()),
                });
                st.consecutive_failures += 1;
                let problem = f
                    .problem
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_else(|| "-".into());
                tracing::error!(
                    kind = f.kind.label(),
                    problem = %problem,
                    error = %f.message,
                    "ACME: order failed; the current certificate and files are kept"
                );
            }
        }
        if !self.cert.is_pending() {
            let cur = self.cert.current();
            st.names = cur.names.clone();
            st.not_after = Some(cur.not_after);
        } else {
            st.names.clear();
            st.not_after = None;
        }
        st.next_renewal = Some(self.due_at());
        self.save_state(&st).await;
        result
    }

    async fn attempt(&self, force: bool, ordered: &mut bool) -> Result<Renewal, AcmeFailure> {
        let s = &self.settings;
        let lock: Option<Box<dyn Send + Sync>> = match self.shared() {
            Some(st) => st
                .try_lock("acme-order")
                .await
                .map_err(|e| AcmeFailure::local(format!("the order lock in the store: {e}")))?
                .map(|l| Box::new(l) as Box<dyn Send + Sync>),
            None => try_order_lock(&s.lock_path())
                .map_err(|e| {
                    AcmeFailure::local(format!("lock file {}: {e}", s.lock_path().display()))
                })?
                .map(|l| Box::new(l) as Box<dyn Send + Sync>),
        };
        let Some(_lock) = lock else {
            tracing::info!(
                lock = %s.lock_path().display(),
                "ACME: another instance is ordering; will pick up its certificate"
            );
            return Ok(Renewal::Busy);
        };
        // A certificate newer than what is served (another instance
        // renewed, or an admin replaced the files): serve that first.
        let mut adopted = self.sync_shared().await;
        if let Ok(on_disk) = certs::load_pair(&s.cert_path, &s.key_path, SystemTime::now())
            && (self.cert.is_pending() || on_disk.leaf_sha256 != self.cert.current().leaf_sha256)
        {
            tracing::info!(path = %s.cert_path.display(), "ACME: serving the certificate found on disk");
            self.cert.swap(on_disk);
            self.cert.refresh_stamp();
            adopted = true;
        }
        let due = self.due_at();
        if !force && due > now_unix() {
            return Ok(if adopted {
                Renewal::Adopted {
                    not_after: self.cert.current().not_after,
                }
            } else {
                Renewal::NotDue { due_at: due }
            });
        }
        *ordered = true;
        let (chain_pem, key_pem) =
            match tokio::time::timeout(self.tuning.order_timeout, self.order()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(AcmeFailure::new(
                        FailureKind::Timeout,
                        format!(
                            "the order did not complete within {}",
                            homeport_core::duration::format(self.tuning.order_timeout)
                        ),
                    ));
                }
            };
        self.install(&chain_pem, &key_pem).await
    }

    /// Check the issued pair in memory, write it atomically, serve it.
    async fn install(&self, chain_pem: &str, key_pem: &str) -> Result<Renewal, AcmeFailure> {
        let s = &self.settings;
        let issued = certs::load_pem(
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            "(issued certificate)",
            "(issued key)",
            SystemTime::now(),
        )
        .map_err(|e| {
            AcmeFailure::new(
                FailureKind::Error,
                format!("the CA issued an unusable certificate: {e}"),
            )
        })?;
        if let Some(missing) = s
            .names
            .iter()
            .find(|n| !issued.names.iter().any(|c| c.eq_ignore_ascii_case(n)))
        {
            return Err(AcmeFailure::new(
                FailureKind::Error,
                format!("the CA issued a certificate without {missing}"),
            ));
        }
        self.write_pair(chain_pem, key_pem)?;
        let not_after = issued.not_after;
        self.cert.swap(issued);
        self.cert.refresh_stamp();
        self.metrics.cert_expiry("tls", self.cert.expires_in());
        self.metrics.reload(true);
        self.publish(chain_pem, key_pem, not_after).await;
        Ok(Renewal::Renewed { not_after })
    }

    /// Write a chain and key atomically to the configured files.
    fn write_pair(&self, chain_pem: &str, key_pem: &str) -> Result<(), AcmeFailure> {
        let s = &self.settings;
        let _writing = self.cert.writing();
        let local = |what: &Path, e: std::io::Error| {
            AcmeFailure::local(format!("writing {}: {e}", what.display()))
        };
        let key_tmp = write_temp(&s.key_path, key_pem.as_bytes(), 0o600)
            .map_err(|e| local(&s.key_path, e))?;
        let cert_tmp = match write_temp(&s.cert_path, chain_pem.as_bytes(), 0o644) {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&key_tmp);
                return Err(local(&s.cert_path, e));
            }
        };
        if let Err(e) = std::fs::rename(&key_tmp, &s.key_path) {
            let _ = std::fs::remove_file(&key_tmp);
            let _ = std::fs::remove_file(&cert_tmp);
            return Err(local(&s.key_path, e));
        }
        if let Err(e) = std::fs::rename(&cert_tmp, &s.cert_path) {
            let _ = std::fs::remove_file(&cert_tmp);
            return Err(local(&s.cert_path, e));
        }
        sync_dir(&s.cert_path);
        sync_dir(&s.key_path);
        Ok(())
    }

    /// One order, account to PEM chain and key. Nothing is written here
    /// except a missing account key.
    async fn order(&self) -> Result<(String, String), AcmeFailure> {
        self.order_inner().await.map_err(|mut f| {
            if f.kind == FailureKind::Unreachable {
                f.message = format!(
                    "cannot reach the ACME server {}: {}",
                    self.settings.directory, f.message
                );
            }
            f
        })
    }

    async fn order_inner(&self) -> Result<(String, String), AcmeFailure> {
        let s = &self.settings;
        let http = AcmeHttp::new(s, self.metrics.clone(), self.tuning.request_timeout)?;
        let ra = |h: &AcmeHttp| h.take_retry_after();
        let (der, created) = self.account_key().await?;
        let key = Key::from_pkcs8_der(der.clone_key())
            .map_err(|e| AcmeFailure::local(format!("account key: {e}")))?;
        let (account, _) = Account::builder_with_http(Box::new(http.clone()))
            .create_from_key((key, PrivateKeyDer::Pkcs8(der)), s.directory.clone())
            .await
            .map_err(|e| classify(&format!("account at {}", s.directory), e, ra(&http)))?;
        if created {
            tracing::info!(account = %account.id(), "ACME: account registered");
        }
        if !s.contact.is_empty() {
            let contacts: Vec<&str> = s.contact.iter().map(String::as_str).collect();
            account
                .update_contacts(&contacts)
                .await
                .map_err(|e| classify("setting the account contacts", e, ra(&http)))?;
        }
        let mut st = self.load_state().await;
        if st.account_url.as_deref() != Some(account.id()) {
            st.account_url = Some(account.id().to_owned());
            self.save_state(&st).await;
        }

        let identifiers: Vec<Identifier> =
            s.names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| classify("new order", e, ra(&http)))?;
        let kind = match s.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut provisioned = Provisioned {
            challenges: self.challenges.clone(),
            tokens: Vec::new(),
            names: Vec::new(),
            shared: self.shared().cloned(),
        };
        {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(|e| classify("fetching an authorization", e, ra(&http)))?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(AcmeFailure::new(
                            FailureKind::Invalid,
                            format!("the authorization for {} is {other:?}", a.identifier()),
                        ));
                    }
                }
                let name = a.identifier().to_string();
                let Some(mut ch) = a.challenge(kind.clone()) else {
                    return Err(AcmeFailure::new(
                        FailureKind::Invalid,
                        format!("the ACME server offers no {kind:?} challenge for {name}"),
                    ));
                };
                let ka = ch.key_authorization();
                let until = now_ms() + CHALLENGE_TTL_MS;
                match s.challenge {
                    Challenge::Http01 => {
                        self.challenges.add_http(&ch.token, ka.as_str());
                        provisioned.tokens.push(ch.token.clone());
                        if let Some(st) = self.shared() {
                            // Whichever instance the CA reaches answers.
                            st.kv_put(NS_HTTP01, &ch.token, &json!(ka.as_str()), until)
                                .await
                                .map_err(|e| {
                                    AcmeFailure::local(format!("sharing the http-01 answer: {e}"))
                                })?;
                        }
                    }
                    Challenge::TlsAlpn01 => {
                        self.challenges
                            .add_tls(&name, ka.digest().as_ref())
                            .map_err(AcmeFailure::local)?;
                        provisioned.names.push(name.clone());
                        if let Some(st) = self.shared() {
                            let digest = homeport_core::base64::encode(ka.digest().as_ref());
                            st.kv_put(
                                NS_TLSALPN01,
                                &name.to_ascii_lowercase(),
                                &json!(digest),
                                until,
                            )
                            .await
                            .map_err(|e| {
                                AcmeFailure::local(format!("sharing the tls-alpn-01 answer: {e}"))
                            })?;
                            // The TLS handshake cannot wait for the
                            // database: every instance loads the answer
                            // on its next sync.
                            tokio::time::sleep(
                                self.tuning.shared_poll + Duration::from_millis(500),
                            )
                            .await;
                        }
                    }
                }
                ch.set_ready().await.map_err(|e| {
                    classify(&format!("starting validation of {name}"), e, ra(&http))
                })?;
            }
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.tuning.validation_timeout);
        match order.poll_ready(&policy).await {
            Ok(OrderStatus::Ready) => {}
            Ok(other) => {
                let summary = format!("the order is {other:?}");
                return Err(self
                    .validation_failure(&mut order, summary, None, &http)
                    .await);
            }
            // The order's own error (a failed challenge), as opposed to a
            // transient problem answering the poll itself.
            Err(instant_acme::Error::Api(p))
                if !matches!(
                    problem_type(&p),
                    "badNonce" | "rateLimited" | "serverInternal" | "malformed"
                ) =>
            {
                let summary = format!(
                    "the order failed: {}",
                    p.detail.as_deref().unwrap_or("no detail")
                );
                return Err(self
                    .validation_failure(&mut order, summary, Some(p), &http)
                    .await);
            }
            Err(e) => return Err(classify("waiting for validation", e, ra(&http))),
        }
        drop(provisioned);
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| classify("finalizing the order", e, ra(&http)))?;
        let chain = order
            .poll_certificate(&policy)
            .await
            .map_err(|e| classify("downloading the certificate", e, ra(&http)))?;
        Ok((chain, key_pem))
    }

    /// The challenge errors behind an invalid order, as one failure.
    async fn validation_failure(
        &self,
        order: &mut instant_acme::Order,
        summary: String,
        order_problem: Option<Problem>,
        http: &AcmeHttp,
    ) -> AcmeFailure {
        let mut problems = Vec::new();
        let mut details = Vec::new();
        if let Some(p) = &order_problem {
            problems.push(json!({"order": problem_json(p)}));
        }
        let mut authzs = order.authorizations();
        while let Some(Ok(mut a)) = authzs.next().await {
            let _ = a.refresh().await;
            let name = a.identifier().to_string();
            for c in &a.challenges {
                if let Some(p) = &c.error {
                    let kind = match &c.r#type {
                        ChallengeType::Http01 => "http-01".to_owned(),
                        ChallengeType::TlsAlpn01 => "tls-alpn-01".to_owned(),
                        other => format!("{other:?}"),
                    };
                    details.push(format!(
                        "{name} with {kind}: {} [{}]",
                        p.detail.as_deref().unwrap_or("no detail"),
                        p.r#type.as_deref().unwrap_or("-")
                    ));
                    problems.push(json!({"identifier": name, "challenge": problem_json(p)}));
                }
            }
        }
        let _ = http.take_retry_after();
        let message = if details.is_empty() {
            format!("validation failed: {summary}")
        } else {
            format!(
                "validation failed: the ACME server could not validate {}",
                details.join("; ")
            )
        };
        AcmeFailure {
            kind: FailureKind::Invalid,
            message,
            problem: Some(Value::Array(problems)),
            retry_after: None,
        }
    }
}

fn describe(r: &Renewal) -> String {
    match r {
        Renewal::Renewed { not_after } => format!(
            "renewed: the new certificate expires {}",
            homeport_core::time::format_utc_ms(not_after * 1000)
        ),
        Renewal::Adopted { not_after } => format!(
            "picked up the certificate on disk (expires {})",
            homeport_core::time::format_utc_ms(not_after * 1000)
        ),
        Renewal::NotDue { due_at } => format!(
            "not due: renewal is planned for {} (use --force to renew now)",
            homeport_core::time::format_utc_ms(due_at * 1000)
        ),
        Renewal::Busy => "another instance is ordering right now".into(),
    }
}

/// A one-line description of an outcome.
pub fn describe_renewal(r: &Renewal) -> String {
    describe(r)
}

// ---------------------------------------------------------------------------
// serve's wiring, and the standalone order of `homeport acme renew`
// ---------------------------------------------------------------------------

/// The served certificate for an ACME config: the files when they hold a
/// valid pair, else pending.
pub fn initial_cert(settings: &AcmeSettings) -> Result<ReloadableCert, certs::CertError> {
    match ReloadableCert::load(&settings.cert_path, &settings.key_path) {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no usable certificate yet; ACME will obtain one (TLS handshakes are refused until then)"
            );
            ReloadableCert::pending(&settings.cert_path, &settings.key_path)
        }
    }
}

/// The http-01 responder sockets: `acme.port` on each `acme.bind_addresses`
/// except those a plain listener of the config already has (it answers
/// the challenge itself).
pub fn responder_addrs(cfg: &Config) -> Vec<SocketAddr> {
    if cfg.acme.challenge != Challenge::Http01 {
        return Vec::new();
    }
    cfg.acme
        .bind_addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, cfg.acme.port))
        .filter(|a| {
            !cfg.listeners.iter().any(|l| {
                !l.tls && l.port == a.port() && a.port() != 0 && l.bind_addresses.contains(&a.ip())
            })
        })
        .collect()
}

/// The store shared by instances, when the config names one (PostgreSQL);
/// `None` for SQLite (the files and `flock` are shared instead).
pub async fn shared_store(cfg: &Config) -> Result<Option<Arc<dyn Store>>, AcmeFailure> {
    if !matches!(cfg.database, crate::config::Database::Postgres(_)) {
        return Ok(None);
    }
    crate::store::open(&cfg.database)
        .await
        .map(Some)
        .map_err(|e| AcmeFailure::local(e.to_string()))
}

/// Whether an instance sharing `store` runs (it says so every 20 s).
pub async fn shared_serving(store: &dyn Store) -> bool {
    matches!(
        store.kv_get(NS_ACME, "serving", now_ms()).await,
        Ok(Some(_))
    )
}

/// Hand a renewal request to the instances sharing `store` (one of them
/// takes it); returns its id.
pub async fn request_renewal_shared(store: &dyn Store, force: bool) -> Result<u64, AcmeFailure> {
    let id = rand::random::<u64>() >> 12;
    let v = serde_json::to_value(RenewRequest { id, force })
        .map_err(|e| AcmeFailure::local(e.to_string()))?;
    store
        .kv_put(NS_ACME, "request", &v, now_ms() + 10 * 60_000)
        .await
        .map_err(|e| AcmeFailure::local(e.to_string()))?;
    Ok(id)
}

/// Withdraw a request nobody took.
pub async fn withdraw_request_shared(store: &dyn Store) {
    let _ = store.kv_delete(NS_ACME, "request").await;
}

/// The ACME state kept in `store`.
pub async fn read_state_shared(store: &dyn Store) -> AcmeState {
    store
        .kv_get(NS_ACME, "state", 0)
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// Order once in this process (`homeport acme renew` with no server
/// running): bind the challenge responder (http-01) or the TLS listeners
/// (tls-alpn-01), order, write, stop.
pub async fn renew_standalone(
    cfg: &Config,
    force: bool,
    tuning: AcmeTuning,
) -> Result<Renewal, AcmeFailure> {
    let settings = AcmeSettings::from_config(cfg)?;
    let cert = Arc::new(initial_cert(&settings).map_err(|e| AcmeFailure::local(e.to_string()))?);
    let challenges = Arc::new(Challenges::default());
    let metrics = Arc::new(Metrics::default());
    let mut listeners = Vec::new();
    let mut bind = |addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>| {
        let socket = listen::bind(addr)
            .map_err(|e| AcmeFailure::local(format!("cannot listen on {addr}: {e}")))?;
        listeners.push(Listener {
            name: addr.to_string(),
            socket,
            tls,
            router: responder_router(challenges.clone()),
            x_forwarded: false,
            trusted_proxies: Vec::new(),
        });
        Ok::<_, AcmeFailure>(())
    };
    match settings.challenge {
        Challenge::Http01 => {
            for ip in &cfg.acme.bind_addresses {
                bind(SocketAddr::new(*ip, cfg.acme.port), None)?;
            }
        }
        Challenge::TlsAlpn01 => {
            let resolver = Arc::new(AcmeResolver::new(cert.clone(), challenges.clone()));
            let tls = certs::server_config_alpn(resolver, &[ACME_TLS_ALPN])
                .map_err(|e| AcmeFailure::local(e.to_string()))?;
            for l in cfg.listeners.iter().filter(|l| l.tls) {
                for ip in &l.bind_addresses {
                    bind(SocketAddr::new(*ip, l.port), Some(tls.clone()))?;
                }
            }
        }
    }
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(listen::serve(listeners, stop_rx, Duration::from_secs(2)));
    let manager = AcmeManager::new(settings, tuning, cert, challenges, metrics);
    if let Some(st) = shared_store(cfg).await? {
        manager.share(st);
        manager.sync_shared().await;
    }
    let r = manager.renew_now(force).await;
    let _ = stop.send(true);
    let _ = task.await;
    r
}

/// What `homeport acme status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct AcmeStatus {
    /// The configured names.
    pub names: Vec<String>,
    /// The directory.
    pub directory: String,
    /// The certificate file.
    pub cert_path: PathBuf,
    /// The account key file.
    pub account_key_file: PathBuf,
    /// Whether the account key exists.
    pub account_key_exists: bool,
    /// The certificate on disk, if it loads.
    pub certificate: Option<CertSummary>,
    /// Why it does not load.
    pub certificate_error: Option<String>,
    /// When renewal is due (unix seconds; 0 = now).
    pub next_renewal: u64,
    /// Whether a `homeport serve` runs with this config.
    pub serve_running: bool,
    /// The persisted state.
    pub state: AcmeState,
}

/// A certificate's facts.
#[derive(Clone, Debug, Serialize)]
pub struct CertSummary {
    /// SAN names.
    pub names: Vec<String>,
    /// Issuer DN.
    pub issuer: String,
    /// notBefore.
    pub not_before: u64,
    /// notAfter.
    pub not_after: u64,
}

/// Read everything `homeport acme status` prints.
pub fn status(cfg: &Config) -> Result<AcmeStatus, AcmeFailure> {
    let settings = AcmeSettings::from_config(cfg)?;
    let (certificate, certificate_error, next_renewal) =
        match certs::load_pair(&settings.cert_path, &settings.key_path, SystemTime::now()) {
            Ok(c) => {
                let leaf = c.chain.first();
                let issuer = leaf
                    .and_then(|d| {
                        x509_parser::parse_x509_certificate(d.as_ref())
                            .ok()
                            .map(|(_, x)| x.issuer().to_string())
                    })
                    .unwrap_or_default();
                let not_before = leaf
                    .and_then(|d| certs::leaf_facts(d).ok())
                    .map(|f| f.0)
                    .unwrap_or(0);
                let due = due_at(&c, &settings.names, settings.threshold);
                (
                    Some(CertSummary {
                        names: c.names.clone(),
                        issuer,
                        not_before,
                        not_after: c.not_after,
                    }),
                    None,
                    due,
                )
            }
            Err(e) => (None, Some(e.to_string()), 0),
        };
    Ok(AcmeStatus {
        names: settings.names.clone(),
        directory: settings.directory.clone(),
        cert_path: settings.cert_path.clone(),
        account_key_file: settings.account_key_file.clone(),
        account_key_exists: settings.account_key_file.exists(),
        certificate,
        certificate_error,
        next_renewal,
        serve_running: serve_running(&settings),
        state: read_state(&settings),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(120));
        assert_eq!(parse_retry_after(" 7 "), Some(7));
        assert_eq!(parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let t = AcmeTuning {
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(3600),
            ..AcmeTuning::default()
        };
        for (n, full) in [(1, 60), (2, 120), (3, 240), (10, 3600), (40, 3600)] {
            for _ in 0..20 {
                let d = backoff(n, &t, None).as_secs_f64();
                assert!(d >= full as f64 / 2.0 && d <= full as f64, "{n}: {d}");
            }
        }
        assert!(backoff(1, &t, Some(900)) >= Duration::from_secs(900));
    }

    #[test]
    fn classify_problem_documents() {
        let p: Problem = serde_json::from_value(json!({
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many certificates",
            "status": 429
        }))
        .unwrap();
        let f = classify("new order", instant_acme::Error::Api(p), Some(3600));
        assert_eq!(f.kind, FailureKind::RateLimited);
        assert_eq!(f.retry_after, Some(3600));
        assert!(f.message.contains("too many certificates"), "{f:?}");
        assert_eq!(
            f.problem.unwrap()["type"],
            "urn:ietf:params:acme:error:rateLimited"
        );
        let p: Problem = serde_json::from_value(json!({
            "type": "urn:ietf:params:acme:error:badNonce", "detail": "x"
        }))
        .unwrap();
        assert_eq!(
            classify("s", instant_acme::Error::Api(p), Some(5)).kind,
            FailureKind::BadNonce
        );
        let f = classify(
            "s",
            instant_acme::Error::Other(Box::new(RequestTimedOut(Duration::from_secs(1)))),
            None,
        );
        assert_eq!(f.kind, FailureKind::Timeout);
    }

    fn cert_valid(since: u64, until: u64, names: &[&str]) -> LoadedCert {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = now_unix();
        p.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now - since);
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now + until);
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        certs::load_pem(
            c.pem().as_bytes(),
            k.serialize_pem().as_bytes(),
            "c",
            "k",
            SystemTime::now(),
        )
        .unwrap()
    }

    fn time_secs(s: u64) -> std::time::Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn due_with_threshold_and_short_lifetimes() {
        let names = vec!["a.test".to_owned()];
        let day = 86_400;
        // 90-day certificate, 30-day threshold: due 30 days before expiry.
        let c = cert_valid(10 * day, 80 * day, &["a.test"]);
        assert_eq!(
            due_at(&c, &names, Duration::from_secs(30 * day)),
            c.not_after - 30 * day
        );
        // Lifetime shorter than the threshold: a third of the lifetime.
        let c = cert_valid(0, 30, &["a.test"]);
        let due = due_at(&c, &names, Duration::from_secs(3600));
        assert!(due > now_unix() && due <= c.not_after - 9, "{due}");
        // A missing name: now.
        let c = cert_valid(0, 80 * day, &["b.test"]);
        assert_eq!(due_at(&c, &names, Duration::from_secs(day)), 0);
    }

    #[test]
    fn account_key_is_created_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/acct.key");
        let (k1, created) = load_or_create_account_key(&p).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = load_or_create_account_key(&p).unwrap();
        assert!(!created);
        assert_eq!(k1.secret_pkcs8_der(), k2.secret_pkcs8_der());
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(
            load_or_create_account_key(&p).unwrap_err().kind,
            FailureKind::Local
        );
    }

    #[test]
    fn order_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = try_order_lock(&p).unwrap();
        assert!(a.is_some());
        assert!(try_order_lock(&p).unwrap().is_none());
        drop(a);
        assert!(try_order_lock(&p).unwrap().is_some());
    }

    #[test]
    fn tls_alpn_cert_has_the_critical_acme_extension() {
        let ck = tls_alpn_cert("a.test", &[7u8; 32]).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        // OCTET STRING of 32 bytes.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
    }
}
