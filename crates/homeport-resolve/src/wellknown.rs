//! Fetching `/.well-known/matrix/server`: redirects with loop detection,
//! a capped body, a bounded time, and Synapse's caching policy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeport_core::ServerName;
use homeport_core::well_known::{ServerWellKnown, WellKnownError};
use http_body_util::Empty;
use hyper::StatusCode;
use rand::Rng as _;
use rustls::pki_types::ServerName as TlsServerName;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::cache::{Cached, SingleFlight, TtlCache};
use crate::cache_control::{self, CachePeriod};
use crate::clock::Clock;
use crate::dns::Dns;
use crate::filter::AddressFilter;

/// The largest body homeport accepts is one byte under this (as Synapse).
pub const MAX_BODY: usize = 51_200;

/// Per-address TCP connect bound (the whole fetch has its own bound).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `.well-known` fetching and caching policy. Defaults are Synapse's,
/// except failure back-off (see the fields).
#[derive(Clone, Debug)]
pub struct WellKnownPolicy {
    /// Cache period without usable headers (before jitter).
    pub default_ttl: Duration,
    /// Jitter applied to default and failure periods (0.1 = ±10 %).
    pub jitter: f64,
    /// Lower clamp on header-derived periods.
    pub min_ttl: Duration,
    /// Upper clamp on header-derived periods.
    pub max_ttl: Duration,
    /// Fraction of the TTL at the end of which a refetch happens.
    pub grace_fraction: f64,
    /// First failure is cached this long (Synapse: 1 h flat).
    pub failure_ttl_initial: Duration,
    /// Failure caching doubles per consecutive failure up to this.
    pub failure_ttl_max: Duration,
    /// Failure period while the name had a valid result recently.
    pub failure_ttl_had_valid: Duration,
    /// How long "had a valid result" is remembered after a success expires.
    pub remember_valid: Duration,
    /// A previous valid result is served on temporary failure for at most
    /// this long past its expiry.
    pub stale_for: Duration,
    /// Attempts when the name had a valid result (temporary failures only).
    pub retry_attempts: u32,
    /// Pause between those attempts.
    pub retry_delay: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Bound on one whole fetch (all redirects and retries).
    pub timeout: Duration,
    /// Cache bound (entries).
    pub max_entries: usize,
    /// User-Agent sent.
    pub user_agent: String,
    /// Port the first request goes to: 443 as the spec says. Only the lab
    /// and tests change it, to run without root.
    pub port: u16,
}

impl Default for WellKnownPolicy {
    fn default() -> Self {
        WellKnownPolicy {
            default_ttl: Duration::from_secs(24 * 3600),
            jitter: 0.1,
            min_ttl: Duration::from_secs(5 * 60),
            max_ttl: Duration::from_secs(48 * 3600),
            grace_fraction: 0.2,
            failure_ttl_initial: Duration::from_secs(10 * 60),
            failure_ttl_max: Duration::from_secs(3600),
            failure_ttl_had_valid: Duration::from_secs(2 * 60),
            remember_valid: Duration::from_secs(2 * 3600),
            stale_for: Duration::from_secs(24 * 3600),
            retry_attempts: 3,
            retry_delay: Duration::from_millis(500),
            max_redirects: 20,
            timeout: Duration::from_secs(10),
            max_entries: 10_000,
            user_agent: concat!("homeport/", env!("CARGO_PKG_VERSION")).to_owned(),
            port: 443,
        }
    }
}

/// How a fetch ended, as the JSON contract names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200 with a valid `m.server`.
    Delegated,
    /// A final status other than 200, below 500.
    NotFound,
    /// 200 but unusable.
    Invalid,
    /// 5xx, transport, TLS, timeout, too large, redirect loop.
    Error,
}

/// Why a fetch did not delegate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WellKnownFailure {
    /// Non-200 below 500.
    #[error("HTTP {0}: no .well-known delegation")]
    Status(u16),
    /// 5xx.
    #[error("HTTP {0} (server error)")]
    ServerError(u16),
    /// 200 but the document is unusable.
    #[error("invalid document: {0}")]
    Invalid(WellKnownError),
    /// A body of 51 200 bytes or more.
    #[error("the body is {0} bytes or more; at most 51199 are accepted")]
    TooLarge(usize),
    /// A URL seen before.
    #[error("redirect loop: {0} was already visited")]
    RedirectLoop(String),
    /// More than the allowed redirects.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// A 3xx without usable Location.
    #[error("redirect without a usable Location header: {0}")]
    BadRedirect(String),
    /// A redirect to something other than https.
    #[error("redirect to a non-https URL {0}: .well-known must be fetched over https")]
    NotHttps(String),
    /// The host did not resolve.
    #[error("DNS: {0}")]
    Dns(String),
    /// Every address was refused by the address filter.
    #[error("every address of {host} is in a denied range ({detail})")]
    Denied {
        /// The host.
        host: String,
        /// Which address and range.
        detail: String,
    },
    /// TCP connect failed on every address.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// TLS failed (certificate, handshake).
    #[error("TLS: {0}")]
    Tls(String),
    /// HTTP protocol failure.
    #[error("HTTP: {0}")]
    Http(String),
    /// The whole fetch took too long.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl WellKnownFailure {
    /// The JSON outcome for this failure.
    pub fn outcome(&self) -> Outcome {
        match self {
            WellKnownFailure::Status(_) => Outcome::NotFound,
            WellKnownFailure::Invalid(_) => Outcome::Invalid,
            _ => Outcome::Error,
        }
    }

    /// Temporary failures may be retried and let a previous result be
    /// served; permanent ones (a definite "no delegation") may not.
    pub fn is_temporary(&self) -> bool {
        self.outcome() == Outcome::Error
    }

    fn retryable(&self) -> bool {
        self.is_temporary() && !matches!(self, WellKnownFailure::TooLarge(_))
    }
}

/// Everything learnt from one fetch (after redirects).
#[derive(Clone, Debug)]
pub struct WellKnownReport {
    /// The first URL.
    pub url: String,
    /// Final status.
    pub status: Option<u16>,
    /// Location URLs followed, in order.
    pub redirects: Vec<String>,
    /// The delegation, or why not.
    pub result: Result<ServerName, WellKnownFailure>,
    /// TTL applied (after clamp and jitter).
    pub cache_seconds: u64,
    /// The final response's Content-Type.
    pub content_type: Option<String>,
    /// The final response's Cache-Control values.
    pub cache_control: Vec<String>,
    /// The final response's Expires.
    pub expires: Option<String>,
    /// The address the final response came from.
    pub peer: Option<SocketAddr>,
    /// Body size of the final response.
    pub body_len: Option<usize>,
    /// True when this report was served from the cache.
    pub from_cache: bool,
    /// True when a previous result was served because this fetch failed
    /// temporarily (the failure is in `stale_because`).
    pub stale_because: Option<WellKnownFailure>,
    /// Attempts made.
    pub attempts: u32,
}

impl WellKnownReport {
    /// The JSON outcome.
    pub fn outcome(&self) -> Outcome {
        match &self.result {
            Ok(_) => Outcome::Delegated,
            Err(e) => e.outcome(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    report: Arc<WellKnownReport>,
    fetched: Instant,
    ttl: Duration,
    consecutive_failures: u32,
    last_valid: Option<(Arc<WellKnownReport>, Instant)>,
}

impl Entry {
    /// Replace the report `old` (wherever this entry holds it) by `hit`,
    /// the same report marked as served from the cache.
    fn share(&mut self, old: &Arc<WellKnownReport>, hit: &Arc<WellKnownReport>) {
        if Arc::ptr_eq(&self.report, old) {
            self.report = hit.clone();
        }
        if let Some((valid, _)) = &mut self.last_valid
            && Arc::ptr_eq(valid, old)
        {
            *valid = hit.clone();
        }
    }
}

/// The `.well-known` resolver with its cache.
pub(crate) struct WellKnown {
    policy: WellKnownPolicy,
    tls: Arc<rustls::ClientConfig>,
    cache: TtlCache<Box<str>, Entry>,
    flight: SingleFlight<Box<str>, Arc<WellKnownReport>>,
    clock: Arc<dyn Clock>,
}

impl WellKnown {
    pub(crate) fn new(
        policy: WellKnownPolicy,
        tls: Arc<rustls::ClientConfig>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        WellKnown {
            cache: TtlCache::new(policy.max_entries),
            flight: SingleFlight::new(),
            policy,
            tls,
            clock,
        }
    }

    pub(crate) fn policy(&self) -> &WellKnownPolicy {
        &self.policy
    }

    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The delegation for `host` (lower-cased), from the cache or a fetch.
    pub(crate) async fn lookup(
        &self,
        host: &str,
        dns: &Dns,
        filter: &AddressFilter,
    ) -> Arc<WellKnownReport> {
        let key: Box<str> = host.to_ascii_lowercase().into();
        let now = self.clock.now();
        let prev = match self.cache.get(&key, now) {
            Cached::Fresh(e) => {
                let refresh_at = e.fetched + e.ttl.mul_f64(1.0 - self.policy.grace_fraction);
                if now < refresh_at {
                    if e.report.from_cache {
                        return e.report;
                    }
                    let mut r = (*e.report).clone();
                    r.from_cache = true;
                    let hit = Arc::new(r);
                    // The entry keeps the cached form from now on (nothing
                    // it is used for depends on `from_cache`), so the hits
                    // and the entry share one report instead of a copy each.
                    self.cache
                        .modify(&key, |stored| stored.share(&e.report, &hit));
                    return hit;
                }
                Some(e)
            }
            Cached::Stale(e) => Some(e),
            Cached::Miss => None,
        };
        self.flight
            .run(key.clone(), || {
                self.fetch_and_store(key.clone(), prev, dns, filter)
            })
            .await
    }

    async fn fetch_and_store(
        &self,
        key: Box<str>,
        prev: Option<Entry>,
        dns: &Dns,
        filter: &AddressFilter,
    ) -> Arc<WellKnownReport> {
        let now = self.clock.now();
        let had_valid = prev
            .as_ref()
            .and_then(|p| p.last_valid.as_ref())
            .is_some_and(|(_, until)| now < *until);
        let attempts = if had_valid {
            self.policy.retry_attempts.max(1)
        } else {
            1
        };
        let mut report = fetch(&key, dns, filter, &self.tls, &self.policy, &*self.clock).await;
        let mut made = 1;
        while made < attempts
            && report
                .result
                .as_ref()
                .is_err_and(WellKnownFailure::retryable)
        {
            tokio::time::sleep(self.policy.retry_delay).await;
            report = fetch(&key, dns, filter, &self.tls, &self.policy, &*self.clock).await;
            made += 1;
        }
        report.attempts = made;
        let now = self.clock.now();
        match &report.result {
            Ok(_) => {
                let ttl = self.success_ttl(&report);
                report.cache_seconds = ttl.as_secs();
                let report = Arc::new(report);
                let entry = Entry {
                    report: report.clone(),
                    fetched: now,
                    ttl,
                    consecutive_failures: 0,
                    last_valid: Some((report.clone(), now + ttl + self.policy.remember_valid)),
                };
                self.cache.insert(
                    key,
                    entry,
                    now + ttl,
                    now + ttl + self.policy.stale_for.max(self.policy.remember_valid),
                );
                report
            }
            Err(e) => {
                let e = e.clone();
                // A previous valid result survives a temporary failure.
                let last_valid = prev.as_ref().and_then(|p| p.last_valid.clone());
                if e.is_temporary()
                    && let Some((valid, _)) = last_valid.as_ref().filter(|(v, _)| {
                        prev.as_ref()
                            .is_some_and(|p| now < p.fetched + p.ttl + self.policy.stale_for)
                            && v.result.is_ok()
                    })
                {
                    let mut served = (**valid).clone();
                    served.from_cache = true;
                    served.stale_because = Some(e.clone());
                    served.attempts = made;
                    return Arc::new(served);
                }
                let failures = prev.as_ref().map_or(0, |p| {
                    if p.report.result.is_err() {
                        p.consecutive_failures
                    } else {
                        0
                    }
                }) + 1;
                let ttl = if had_valid {
                    self.jittered(self.policy.failure_ttl_had_valid)
                } else {
                    let base = self
                        .policy
                        .failure_ttl_initial
                        .saturating_mul(1u32 << (failures - 1).min(16));
                    self.jittered(base.min(self.policy.failure_ttl_max))
                };
                report.cache_seconds = ttl.as_secs();
                let report = Arc::new(report);
                // Kept past its TTL so that the next failure knows how many
                // came before it (the back-off), and a valid result can
                // still be served stale.
                let keep_failure = now + ttl + self.policy.failure_ttl_max;
                let keep = last_valid
                    .as_ref()
                    .map_or(keep_failure, |(_, until)| (*until).max(keep_failure));
                let entry = Entry {
                    report: report.clone(),
                    fetched: now,
                    ttl,
                    consecutive_failures: failures,
                    last_valid: last_valid.filter(|_| e.is_temporary()),
                };
                self.cache.insert(key, entry, now + ttl, keep);
                report
            }
        }
    }

    fn jittered(&self, d: Duration) -> Duration {
        let j = self.policy.jitter.clamp(0.0, 0.9);
        if j == 0.0 {
            return d;
        }
        let f = rand::thread_rng().gen_range((1.0 - j)..=(1.0 + j));
        d.mul_f64(f)
    }

    fn success_ttl(&self, r: &WellKnownReport) -> Duration {
        let cc: Vec<&str> = r.cache_control.iter().map(String::as_str).collect();
        match cache_control::cache_period(&cc, r.expires.as_deref(), self.clock.wall()) {
            CachePeriod::Unspecified => self.jittered(self.policy.default_ttl),
            CachePeriod::NoStore => self.policy.min_ttl,
            CachePeriod::For(d) => d.clamp(self.policy.min_ttl, self.policy.max_ttl),
        }
    }
}

struct Hop {
    status: u16,
    location: Option<String>,
    content_type: Option<String>,
    cache_control: Vec<String>,
    expires: Option<String>,
    peer: SocketAddr,
    body: Result<Bytes, WellKnownFailure>,
}

/// One fetch of `https://<host>/.well-known/matrix/server`, following
/// redirects, bounded by `policy.timeout`.
async fn fetch(
    host: &str,
    dns: &Dns,
    filter: &AddressFilter,
    tls: &Arc<rustls::ClientConfig>,
    policy: &WellKnownPolicy,
    _clock: &dyn Clock,
) -> WellKnownReport {
    let first = if policy.port == 443 {
        format!("https://{host}/.well-known/matrix/server")
    } else {
        format!("https://{host}:{}/.well-known/matrix/server", policy.port)
    };
    let mut report = WellKnownReport {
        url: first.clone(),
        status: None,
        redirects: Vec::new(),
        result: Err(WellKnownFailure::Timeout(policy.timeout)),
        cache_seconds: 0,
        content_type: None,
        cache_control: Vec::new(),
        expires: None,
        peer: None,
        body_len: None,
        from_cache: false,
        stale_because: None,
        attempts: 1,
    };
    let work = async {
        let mut url = match url::Url::parse(&first) {
            Ok(u) => u,
            Err(e) => return Err(WellKnownFailure::BadRedirect(e.to_string())),
        };
        let mut seen = vec![url.as_str().to_owned()];
        loop {
            let hop = get_once(&url, dns, filter, tls, policy).await?;
            report.status = Some(hop.status);
            report.peer = Some(hop.peer);
            let code = hop.status;
            if matches!(code, 301 | 302 | 303 | 307 | 308) {
                let loc = hop.location.ok_or_else(|| {
                    WellKnownFailure::BadRedirect(format!("HTTP {code} without Location"))
                })?;
                let next = url
                    .join(&loc)
                    .map_err(|e| WellKnownFailure::BadRedirect(format!("{loc:?}: {e}")))?;
                report.redirects.push(next.as_str().to_owned());
                if next.scheme() != "https" {
                    return Err(WellKnownFailure::NotHttps(next.to_string()));
                }
                if seen.iter().any(|s| s == next.as_str()) {
                    return Err(WellKnownFailure::RedirectLoop(next.to_string()));
                }
                if report.redirects.len() > policy.max_redirects {
                    return Err(WellKnownFailure::TooManyRedirects(policy.max_redirects));
                }
                seen.push(next.as_str().to_owned());
                url = next;
                continue;
            }
            report.content_type = hop.content_type;
            report.cache_control = hop.cache_control;
            report.expires = hop.expires;
            let body = hop.body?;
            report.body_len = Some(body.len());
            if code >= 500 {
                return Err(WellKnownFailure::ServerError(code));
            }
            if code != 200 {
                return Err(WellKnownFailure::Status(code));
            }
            return ServerWellKnown::parse(&body)
                .map(|wk| wk.server)
                .map_err(WellKnownFailure::Invalid);
        }
    };
    let result = match tokio::time::timeout(policy.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(WellKnownFailure::Timeout(policy.timeout)),
    };
    report.result = result;
    // The report may stay in the cache for a day: no spare capacity.
    report.redirects.shrink_to_fit();
    report.cache_control.shrink_to_fit();
    report
}

async fn get_once(
    url: &url::Url,
    dns: &Dns,
    filter: &AddressFilter,
    tls: &Arc<rustls::ClientConfig>,
    policy: &WellKnownPolicy,
) -> Result<Hop, WellKnownFailure> {
    let host = url
        .host()
        .ok_or_else(|| WellKnownFailure::BadRedirect(format!("{url} has no host")))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let (tls_name, addrs, host_text): (TlsServerName<'static>, Vec<IpAddr>, String) = match host {
        url::Host::Ipv4(a) => (
            TlsServerName::IpAddress(IpAddr::V4(a).into()),
            vec![IpAddr::V4(a)],
            a.to_string(),
        ),
        url::Host::Ipv6(a) => (
            TlsServerName::IpAddress(IpAddr::V6(a).into()),
            vec![IpAddr::V6(a)],
            format!("[{a}]"),
        ),
        url::Host::Domain(d) => {
            let name = TlsServerName::try_from(d.to_owned()).map_err(|e| {
                WellKnownFailure::Tls(format!("{d:?} is not a valid TLS name: {e}"))
            })?;
            let a = dns
                .addrs(d)
                .await
                .map_err(|e| WellKnownFailure::Dns(e.to_string()))?;
            let all = a.value.all();
            if all.is_empty() {
                return Err(WellKnownFailure::Dns(format!(
                    "{d} has no A or AAAA records"
                )));
            }
            (name, all, d.to_owned())
        }
    };
    let mut permitted = Vec::new();
    let mut denied = Vec::new();
    for ip in addrs {
        match filter.denied_by(ip) {
            None => permitted.push(ip),
            Some(range) => denied.push(format!("{ip} in {range}")),
        }
    }
    if permitted.is_empty() {
        return Err(WellKnownFailure::Denied {
            host: host_text,
            detail: denied.join(", "),
        });
    }
    let mut last_err = String::new();
    let mut stream = None;
    for ip in permitted {
        let sa = SocketAddr::new(ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => {
                stream = Some((s, sa));
                break;
            }
            Ok(Err(e)) => last_err = format!("{sa}: {e}"),
            Err(_) => last_err = format!("{sa}: no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    let Some((tcp, peer)) = stream else {
        return Err(WellKnownFailure::Connect(last_err));
    };
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let tls_stream = connector
        .connect(tls_name, tcp)
        .await
        .map_err(|e| WellKnownFailure::Tls(format!("{peer}: {e}")))?;
    let io = hyper_util::rt::TokioIo::new(tls_stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| WellKnownFailure::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = if port == 443 {
        host_text.clone()
    } else {
        format!("{host_text}:{port}")
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, policy.user_agent.as_str())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| WellKnownFailure::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| WellKnownFailure::Http(e.to_string()))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = |n: http::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = text(http::header::LOCATION);
    let content_type = text(http::header::CONTENT_TYPE);
    let expires = headers
        .get_all(http::header::EXPIRES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .next_back()
        .map(str::to_owned);
    let cache_control = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let body = if status.is_redirection() {
        Ok(Bytes::new())
    } else {
        read_capped(resp.into_body(), status, &headers).await
    };
    driver.abort();
    Ok(Hop {
        status: status.as_u16(),
        location,
        content_type,
        cache_control,
        expires,
        peer,
        body,
    })
}

async fn read_capped(
    body: hyper::body::Incoming,
    _status: StatusCode,
    headers: &http::HeaderMap,
) -> Result<Bytes, WellKnownFailure> {
    // Synapse refuses a body of MAX_BODY bytes or more: at most one less.
    crate::body::read_capped(body, headers, MAX_BODY - 1)
        .await
        .map_err(|e| match e {
            crate::body::BodyError::TooLarge(_) => WellKnownFailure::TooLarge(MAX_BODY),
            other => WellKnownFailure::Http(other.to_string()),
        })
}
