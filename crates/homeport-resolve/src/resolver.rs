//! The resolver: the steps of "Resolving server names", with caches and a
//! trace of what was asked, what came back and which rule decided.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeport_core::{Host, ServerName};
use rand::SeedableRng as _;
use serde::Serialize;

use crate::cache::{Cached, SingleFlight, TtlCache};
use crate::clock::{Clock, SystemClock};
use crate::dns::{Addrs, Dns, DnsConfig, DnsFailure, DnsSetupError, NoRecords, SrvAnswer};
use crate::filter::AddressFilter;
use crate::srv::{self, SrvRecord};
use crate::step::Step;
use crate::tls::{self, TlsSetupError, TrustConfig};
use crate::wellknown::{Outcome, WellKnown, WellKnownFailure, WellKnownPolicy, WellKnownReport};

/// The default federation port.
pub const DEFAULT_PORT: u16 = 8448;

/// Resolver settings.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// DNS.
    pub dns: DnsConfig,
    /// `.well-known` fetching and caching.
    pub well_known: WellKnownPolicy,
    /// CAs trusted for `.well-known` fetches.
    pub trust: TrustConfig,
    /// Addresses refused (off by default; on where homeport resolves on
    /// behalf of others).
    pub filter: AddressFilter,
    /// Bound on one whole resolution.
    pub timeout: Duration,
    /// Completed resolutions kept (entries).
    pub max_cached_resolutions: usize,
    /// The port of steps 1, 3.1, 3.5 and 6 when none is given: 8448 as the
    /// spec says. Only the lab and tests change it, to run without root.
    pub default_port: u16,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            dns: DnsConfig::default(),
            well_known: WellKnownPolicy::default(),
            trust: TrustConfig::system(),
            filter: AddressFilter::allow_all(),
            timeout: Duration::from_secs(30),
            max_cached_resolutions: 10_000,
            default_port: DEFAULT_PORT,
        }
    }
}

/// Setting up the resolver failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// DNS.
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    /// TLS trust store.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Why a server name could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// A DNS lookup failed (SERVFAIL, REFUSED, timeout) with nothing cached.
    /// homeport does not silently fall back to port 8448.
    #[error("{0}; not falling back to port 8448, because a failed lookup is not an absent record")]
    Dns(DnsFailure),
    /// The SRV record says the service is unavailable (target ".").
    #[error("{name} has target \".\": the service is declared unavailable there")]
    SrvUnavailable {
        /// The SRV name.
        name: String,
    },
    /// No A or AAAA records for the host(s) to connect to.
    #[error("{hosts} has no A or AAAA records")]
    NoAddresses {
        /// The host(s).
        hosts: String,
    },
    /// Every address is in a denied range.
    #[error("every address is in a denied range: {detail}")]
    Denied {
        /// Which addresses and ranges.
        detail: String,
    },
    /// The whole resolution took too long.
    #[error("resolution did not finish within {0:?}")]
    Timeout(Duration),
}

impl ResolveError {
    /// True when trying again later could succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, ResolveError::Dns(_) | ResolveError::Timeout(_))
    }
}

/// One host to connect to, with its addresses in the order to try them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Hostname or IP (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// IPv6 before IPv4.
    pub addrs: Vec<IpAddr>,
    /// The canonical name when `host` is a CNAME (an SRV target that is a
    /// CNAME breaks RFC 2782).
    #[serde(skip)]
    pub cname: Option<String>,
}

impl Target {
    /// Socket addresses in order.
    pub fn socket_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs.iter().map(|ip| SocketAddr::new(*ip, self.port))
    }
}

/// Where to connect and what to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The exact Host header value.
    pub host_header: String,
    /// The name the certificate must be valid for.
    pub tls_name: Host,
    /// Targets in the order a client tries them.
    pub targets: Vec<Target>,
}

impl Destination {
    /// The SNI to send: the TLS name unless it is an IP.
    pub fn sni(&self) -> Option<&str> {
        self.tls_name.dns().map(|d| d.as_str())
    }

    /// The TLS name as text (IPv6 without brackets).
    pub fn tls_name_text(&self) -> String {
        match &self.tls_name {
            Host::Ipv4(a) => a.to_string(),
            Host::Ipv6(a) => a.to_string(),
            Host::Dns(d) => d.as_str().to_owned(),
        }
    }
}

/// The outcome of one SRV query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SrvOutcome {
    /// Records found.
    Found,
    /// The name does not exist.
    Nxdomain,
    /// The name exists without SRV records.
    Nodata,
    /// A single record with target ".".
    Unavailable,
    /// The lookup failed.
    Error,
}

/// One SRV name queried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvReport {
    /// The queried name.
    pub name: String,
    /// What came back.
    pub outcome: SrvOutcome,
    /// Records in the order a client tries them.
    pub records: Vec<SrvRecord>,
    /// The failure, when `outcome` is error (or when a stale answer was used).
    pub error: Option<String>,
    /// True when the answer is an expired cached one, used because DNS failed.
    pub stale: bool,
}

/// What happened at one point of the resolution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// The phase: `name`, `well-known`, `srv`, `dns`, `filter`, `decide`.
    pub phase: &'static str,
    /// What was asked, what came back, which rule decided.
    pub message: String,
}

/// The full result of resolving a server name.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The name as given.
    pub server_name: ServerName,
    /// The step that decided, or that failed.
    pub step: Step,
    /// The `.well-known` lookup, when one ran.
    pub well_known: Option<Arc<WellKnownReport>>,
    /// Every SRV name queried, in order.
    pub srv: Vec<SrvReport>,
    /// Where to connect, or why not.
    pub outcome: Result<Destination, ResolveError>,
    /// The trace.
    pub trace: Vec<TraceEvent>,
    /// True when this whole resolution came from the cache.
    pub from_cache: bool,
}

impl Resolution {
    /// The destination, when resolved.
    pub fn destination(&self) -> Option<&Destination> {
        self.outcome.as_ref().ok()
    }
}

pub(crate) struct Shared {
    pub(crate) dns: Dns,
    pub(crate) well_known: WellKnown,
    filter: AddressFilter,
    timeout: Duration,
    pub(crate) default_port: u16,
    clock: Arc<dyn Clock>,
    results: TtlCache<Box<str>, Arc<Resolution>>,
    flight: SingleFlight<Box<str>, Arc<Resolution>>,
    rng: Mutex<rand::rngs::StdRng>,
}

/// The resolver. Cheap to clone; clones share caches.
#[derive(Clone)]
pub struct Resolver {
    pub(crate) inner: Arc<Shared>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

struct Progress {
    step: Step,
    well_known: Option<Arc<WellKnownReport>>,
    srv: Vec<SrvReport>,
    trace: Vec<TraceEvent>,
    /// Earliest expiry of anything this resolution used.
    valid_for: Duration,
}

impl Progress {
    fn note(&mut self, phase: &'static str, message: impl Into<String>) {
        self.trace.push(TraceEvent {
            phase,
            message: message.into(),
        });
    }
}

impl Resolver {
    /// A resolver with real clocks.
    pub fn new(cfg: ResolverConfig) -> Result<Self, SetupError> {
        Self::with_clock(cfg, Arc::new(SystemClock))
    }

    /// A resolver with an injected clock (for cache tests).
    pub fn with_clock(cfg: ResolverConfig, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        let tls = tls::client_config(&cfg.trust)?;
        let dns = Dns::new(cfg.dns, clock.clone())?;
        Ok(Resolver {
            inner: Arc::new(Shared {
                dns,
                well_known: WellKnown::new(cfg.well_known, tls, clock.clone()),
                filter: cfg.filter,
                timeout: cfg.timeout,
                default_port: cfg.default_port,
                results: TtlCache::new(cfg.max_cached_resolutions),
                flight: SingleFlight::new(),
                clock,
                rng: Mutex::new(rand::rngs::StdRng::from_entropy()),
            }),
        })
    }

    /// The address filter in force.
    pub fn filter(&self) -> &AddressFilter {
        &self.inner.filter
    }

    /// Resolve `name`, from the cache when a complete earlier resolution is
    /// still valid; concurrent calls for one name share one resolution.
    pub async fn resolve(&self, name: &ServerName) -> Arc<Resolution> {
        let s = &self.inner;
        if let Cached::Fresh(r) = s.results.get(name.as_str(), s.clock.now()) {
            return r;
        }
        let key: Box<str> = name.as_str().into();
        s.flight
            .run(key, || async {
                let (r, valid_for) = self.resolve_uncached(name).await;
                let r = Arc::new(r);
                if r.outcome.is_ok() && !valid_for.is_zero() {
                    let mut cached = (*r).clone();
                    cached.from_cache = true;
                    // The cached copy keeps only the decision, not the whole
                    // trace: the explanation belongs to the fresh resolution
                    // (`homeport resolve`, the check), and cached entries
                    // are what the memory bound is about.
                    let decision = cached.trace.pop();
                    cached.trace = decision.into_iter().collect();
                    cached.trace.shrink_to_fit();
                    cached.srv.shrink_to_fit();
                    let now = s.clock.now();
                    s.results.insert(
                        name.as_str().into(),
                        Arc::new(cached),
                        now + valid_for,
                        now + valid_for,
                    );
                }
                r
            })
            .await
    }

    /// Resolve without consulting the resolution cache (component caches
    /// still apply). Returns the resolution and how long it stays valid.
    pub async fn resolve_uncached(&self, name: &ServerName) -> (Resolution, Duration) {
        self.resolve_uncached_within(name, self.inner.timeout).await
    }

    /// As [`Resolver::resolve_uncached`], bounded by `limit` when that is
    /// shorter than the configured bound: a caller with its own deadline
    /// (the check) gets the resolution as far as it went, with its trace,
    /// and [`ResolveError::Timeout`].
    pub async fn resolve_uncached_within(
        &self,
        name: &ServerName,
        limit: Duration,
    ) -> (Resolution, Duration) {
        let mut p = Progress {
            step: Step::IpLiteral,
            well_known: None,
            srv: Vec::new(),
            trace: Vec::new(),
            valid_for: Duration::MAX,
        };
        let timeout = self.inner.timeout.min(limit);
        let result = {
            let fut = self.run_steps(name, &mut p);
            tokio::time::timeout(timeout, fut).await
        };
        let outcome = match result {
            Ok(r) => r,
            Err(_) => {
                p.note("decide", format!("gave up after {timeout:?}"));
                Err(ResolveError::Timeout(timeout))
            }
        };
        match &outcome {
            Ok(d) => p.note(
                "decide",
                format!(
                    "step {}: connect to {}; Host: {}; certificate name {}; SNI {}",
                    p.step,
                    describe_targets(&d.targets),
                    d.host_header,
                    d.tls_name_text(),
                    d.sni().unwrap_or("(none: IP literal)")
                ),
            ),
            Err(e) => p.note("decide", format!("step {} failed: {e}", p.step)),
        }
        let valid_for = if p.valid_for == Duration::MAX {
            Duration::ZERO
        } else {
            p.valid_for
        };
        (
            Resolution {
                server_name: name.clone(),
                step: p.step,
                well_known: p.well_known,
                srv: p.srv,
                outcome,
                trace: p.trace,
                from_cache: false,
            },
            valid_for,
        )
    }

    async fn run_steps(
        &self,
        name: &ServerName,
        p: &mut Progress,
    ) -> Result<Destination, ResolveError> {
        // Step 1: IP literal.
        if let Some(ip) = name.host().ip() {
            p.step = Step::IpLiteral;
            let port = name.port().unwrap_or(self.inner.default_port);
            p.note(
                "name",
                format!("{name} is an IP literal: {}", Step::IpLiteral.rule()),
            );
            let addrs = self.filtered(vec![ip], p)?;
            return Ok(Destination {
                host_header: name.as_str().to_owned(),
                tls_name: name.host().clone(),
                targets: vec![Target {
                    host: ip.to_string(),
                    port,
                    addrs,
                    cname: None,
                }],
            });
        }
        let host = name.host_str();
        // Step 2: explicit port.
        if let Some(port) = name.port() {
            p.step = Step::ExplicitPort;
            p.note(
                "name",
                format!("{name} has an explicit port: {}", Step::ExplicitPort.rule()),
            );
            let target = self.addresses(host, port, p).await?;
            return Ok(Destination {
                host_header: name.as_str().to_owned(),
                tls_name: name.host().clone(),
                targets: vec![target],
            });
        }
        // Step 3: .well-known.
        p.step = Step::WellKnown;
        let lower = host.to_ascii_lowercase();
        let wk_port = self.inner.well_known.policy().port;
        if wk_port == 443 {
            p.note(
                "well-known",
                format!("GET https://{lower}/.well-known/matrix/server"),
            );
        } else {
            p.note("well-known", format!("GET https://{lower}:{wk_port}/.well-known/matrix/server (port overridden; the spec says 443)"));
        }
        let wk = self
            .inner
            .well_known
            .lookup(&lower, &self.inner.dns, &self.inner.filter)
            .await;
        describe_well_known(&wk, p);
        if wk.from_cache || wk.result.is_ok() {
            p.valid_for = p.valid_for.min(
                Duration::from_secs(wk.cache_seconds.max(1))
                    .mul_f64(1.0 - self.inner.well_known.policy().grace_fraction),
            );
        } else {
            p.valid_for = Duration::ZERO;
        }
        let delegated = wk.result.clone();
        p.well_known = Some(wk);
        match delegated {
            Ok(d) => self.delegated(&d, p).await,
            Err(_) => {
                self.srv_steps(name, host, [Step::Srv, Step::LegacySrv, Step::Default], p)
                    .await
            }
        }
    }

    async fn delegated(
        &self,
        d: &ServerName,
        p: &mut Progress,
    ) -> Result<Destination, ResolveError> {
        if let Some(ip) = d.host().ip() {
            p.step = Step::DelegatedIp;
            p.note(
                "decide",
                format!(
                    "m.server {d} is an IP literal: {}",
                    Step::DelegatedIp.rule()
                ),
            );
            let addrs = self.filtered(vec![ip], p)?;
            return Ok(Destination {
                host_header: d.as_str().to_owned(),
                tls_name: d.host().clone(),
                targets: vec![Target {
                    host: ip.to_string(),
                    port: d.port().unwrap_or(self.inner.default_port),
                    addrs,
                    cname: None,
                }],
            });
        }
        if let Some(port) = d.port() {
            p.step = Step::DelegatedPort;
            p.note(
                "decide",
                format!(
                    "m.server {d} has an explicit port: {} (every federating server will send Host: {d})",
                    Step::DelegatedPort.rule()
                ),
            );
            let target = self.addresses(d.host_str(), port, p).await?;
            return Ok(Destination {
                host_header: d.as_str().to_owned(),
                tls_name: d.host().clone(),
                targets: vec![target],
            });
        }
        p.note("decide", format!("m.server {d} has no port: look up SRV records for it (no second .well-known lookup)"));
        self.srv_steps(
            d,
            d.host_str(),
            [
                Step::DelegatedSrv,
                Step::DelegatedLegacySrv,
                Step::DelegatedDefault,
            ],
            p,
        )
        .await
    }

    /// The SRV part shared by steps 3.3–3.5 and 4–6: `name` gives Host and
    /// TLS name, `host` is looked up.
    async fn srv_steps(
        &self,
        name: &ServerName,
        host: &str,
        steps: [Step; 3],
        p: &mut Progress,
    ) -> Result<Destination, ResolveError> {
        let [srv_step, legacy_step, default_step] = steps;
        let lower = host.to_ascii_lowercase();
        let dest = |targets: Vec<Target>| Destination {
            host_header: name.host_str().to_owned(),
            tls_name: name.host().clone(),
            targets,
        };
        for (step, prefix) in [
            (srv_step, "_matrix-fed._tcp."),
            (legacy_step, "_matrix._tcp."),
        ] {
            p.step = step;
            let qname = format!("{prefix}{lower}");
            match self.srv_lookup(&qname, p).await? {
                Some(records) => {
                    if step == legacy_step {
                        p.note("srv", format!("{qname} is the deprecated service name; _matrix-fed._tcp is preferred"));
                    }
                    p.note("decide", format!("step {step}: {}", step.rule()));
                    let targets = self.srv_targets(&records, &qname, p).await?;
                    return Ok(dest(targets));
                }
                None => continue,
            }
        }
        p.step = default_step;
        p.note(
            "decide",
            format!(
                "no SRV records: step {default_step}: {}",
                default_step.rule()
            ),
        );
        let target = self.addresses(host, self.inner.default_port, p).await?;
        Ok(dest(vec![target]))
    }

    /// `Ok(Some(records))` ordered, `Ok(None)` when the name has no records.
    async fn srv_lookup(
        &self,
        qname: &str,
        p: &mut Progress,
    ) -> Result<Option<Vec<SrvRecord>>, ResolveError> {
        p.note("srv", format!("SRV {qname}?"));
        let answer = match self.inner.dns.srv(qname).await {
            Ok(a) => a,
            Err(e) => {
                p.note("srv", format!("{e}, and nothing cached"));
                p.srv.push(SrvReport {
                    name: qname.to_owned(),
                    outcome: SrvOutcome::Error,
                    records: Vec::new(),
                    error: Some(e.to_string()),
                    stale: false,
                });
                p.valid_for = Duration::ZERO;
                return Err(ResolveError::Dns(e));
            }
        };
        let stale = answer.stale.is_some();
        if let Some(e) = &answer.stale {
            p.note("srv", format!("{e}; using the expired cached answer"));
            p.valid_for = Duration::ZERO;
        }
        match answer.value {
            SrvAnswer::None(kind) => {
                let (outcome, text) = match kind {
                    NoRecords::NxDomain => (SrvOutcome::Nxdomain, "NXDOMAIN"),
                    NoRecords::NoData => (SrvOutcome::Nodata, "no SRV records (NODATA)"),
                };
                p.note("srv", format!("{qname}: {text}"));
                p.srv.push(SrvReport {
                    name: qname.to_owned(),
                    outcome,
                    records: Vec::new(),
                    error: None,
                    stale,
                });
                Ok(None)
            }
            SrvAnswer::Found { records, received } => {
                let max = self.inner.dns.config().srv_max_records;
                let ordered = {
                    let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
                    srv::order(records, &mut *rng, max)
                };
                if ordered.len() == 1 && ordered[0].is_unavailable() {
                    p.note(
                        "srv",
                        format!("{qname}: single record with target \".\": service not available"),
                    );
                    p.srv.push(SrvReport {
                        name: qname.to_owned(),
                        outcome: SrvOutcome::Unavailable,
                        records: ordered,
                        error: None,
                        stale,
                    });
                    return Err(ResolveError::SrvUnavailable {
                        name: qname.to_owned(),
                    });
                }
                let shown: Vec<String> = ordered
                    .iter()
                    .take(5)
                    .map(|r| format!("{} {} {} {}", r.priority, r.weight, r.port, r.target))
                    .collect();
                let more = if ordered.len() > 5 {
                    format!(" and {} more", ordered.len() - 5)
                } else {
                    String::new()
                };
                let capped = if received > ordered.len() {
                    format!(" (kept {} of {received} records)", ordered.len())
                } else {
                    String::new()
                };
                p.note(
                    "srv",
                    format!("{qname}: {}{more}{capped}", shown.join(", ")),
                );
                p.srv.push(SrvReport {
                    name: qname.to_owned(),
                    outcome: SrvOutcome::Found,
                    records: ordered.clone(),
                    error: None,
                    stale,
                });
                Ok(Some(
                    ordered
                        .into_iter()
                        .filter(|r| !r.is_unavailable())
                        .collect(),
                ))
            }
        }
    }

    async fn srv_targets(
        &self,
        records: &[SrvRecord],
        qname: &str,
        p: &mut Progress,
    ) -> Result<Vec<Target>, ResolveError> {
        // Resolve each distinct target once, concurrently.
        let mut distinct: Vec<&str> = Vec::new();
        for r in records {
            if !distinct.iter().any(|t| t.eq_ignore_ascii_case(&r.target)) {
                distinct.push(&r.target);
            }
        }
        let lookups =
            futures_util::future::join_all(distinct.iter().map(|t| self.inner.dns.addrs(t))).await;
        let mut by_target: HashMap<String, Result<Addrs, DnsFailure>> = HashMap::new();
        for (t, res) in distinct.iter().zip(lookups) {
            by_target.insert(t.to_ascii_lowercase(), res.map(|a| a.value));
        }
        let mut targets = Vec::new();
        let mut first_err = None;
        let mut denied_all = Vec::new();
        for r in records {
            match by_target.get(&r.target.to_ascii_lowercase()) {
                Some(Ok(a)) if !a.all().is_empty() => {
                    if let Some(c) = &a.cname {
                        p.note("dns", format!("SRV target {} is a CNAME for {c} (RFC 2782 forbids this; followed anyway)", r.target));
                    }
                    let all = a.all();
                    let mut ok = Vec::new();
                    for ip in all {
                        match self.inner.filter.denied_by(ip) {
                            None => ok.push(ip),
                            Some(range) => {
                                p.note(
                                    "filter",
                                    format!("{ip} ({}) is in denied range {range}", r.target),
                                );
                                denied_all.push(format!("{ip} in {range}"));
                            }
                        }
                    }
                    if ok.is_empty() {
                        continue;
                    }
                    p.note("dns", format!("{} -> {}", r.target, join_ips(&ok)));
                    targets.push(Target {
                        host: r.target.clone(),
                        port: r.port,
                        addrs: ok,
                        cname: a.cname.clone(),
                    });
                }
                Some(Ok(_)) => p.note(
                    "dns",
                    format!("SRV target {} has no A or AAAA records; skipped", r.target),
                ),
                Some(Err(e)) => {
                    p.note("dns", format!("SRV target {}: {e}; skipped", r.target));
                    first_err.get_or_insert_with(|| e.clone());
                }
                None => {}
            }
        }
        if targets.is_empty() {
            if !denied_all.is_empty() {
                return Err(ResolveError::Denied {
                    detail: denied_all.join(", "),
                });
            }
            if let Some(e) = first_err {
                return Err(ResolveError::Dns(e));
            }
            let names: Vec<&str> = records.iter().map(|r| r.target.as_str()).collect();
            p.note("dns", format!("no target of {qname} has an address"));
            return Err(ResolveError::NoAddresses {
                hosts: names.join(", "),
            });
        }
        Ok(targets)
    }

    async fn addresses(
        &self,
        host: &str,
        port: u16,
        p: &mut Progress,
    ) -> Result<Target, ResolveError> {
        p.note("dns", format!("AAAA/A {host}?"));
        let a = match self.inner.dns.addrs(host).await {
            Ok(a) => a,
            Err(e) => {
                p.note("dns", format!("{e}"));
                p.valid_for = Duration::ZERO;
                return Err(ResolveError::Dns(e));
            }
        };
        if let Some(e) = &a.stale {
            p.note("dns", format!("{e}; using the expired cached answer"));
            p.valid_for = Duration::ZERO;
        }
        if let Some(e) = &a.value.partial_error {
            p.note("dns", format!("{e} (the other family answered)"));
        }
        let all = a.value.all();
        if all.is_empty() {
            let kind = self.inner.dns.addr_negative_kind(host).await;
            let what = match kind {
                Some(NoRecords::NxDomain) => "NXDOMAIN",
                _ => "no A or AAAA records",
            };
            p.note("dns", format!("{host}: {what}"));
            return Err(ResolveError::NoAddresses {
                hosts: host.to_owned(),
            });
        }
        if let Some(c) = &a.value.cname {
            p.note("dns", format!("{host} is a CNAME for {c}"));
        }
        let addrs = self.filtered(all, p)?;
        p.note("dns", format!("{host} -> {}", join_ips(&addrs)));
        Ok(Target {
            host: host.to_owned(),
            port,
            addrs,
            cname: a.value.cname.clone(),
        })
    }

    fn filtered(&self, addrs: Vec<IpAddr>, p: &mut Progress) -> Result<Vec<IpAddr>, ResolveError> {
        if self.inner.filter.is_open() {
            return Ok(addrs);
        }
        let mut ok = Vec::new();
        let mut denied = Vec::new();
        for ip in addrs {
            match self.inner.filter.denied_by(ip) {
                None => ok.push(ip),
                Some(range) => {
                    p.note("filter", format!("{ip} is in denied range {range}"));
                    denied.push(format!("{ip} in {range}"));
                }
            }
        }
        if ok.is_empty() {
            return Err(ResolveError::Denied {
                detail: denied.join(", "),
            });
        }
        Ok(ok)
    }

    /// Entries in the resolution cache (for memory accounting).
    pub fn cached_resolutions(&self) -> usize {
        self.inner.results.len()
    }

    /// Drop a name's cached resolution (its component caches stay).
    pub fn forget(&self, name: &ServerName) {
        self.inner.results.remove(name.as_str());
    }

    /// The clock the caches use.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    #[doc(hidden)]
    pub fn now(&self) -> Instant {
        self.inner.clock.now()
    }
}

fn describe_well_known(wk: &WellKnownReport, p: &mut Progress) {
    let origin = if wk.from_cache { " (cached)" } else { "" };
    for r in &wk.redirects {
        p.note("well-known", format!("redirected to {r}"));
    }
    match &wk.result {
        Ok(d) => p.note(
            "well-known",
            format!(
                "HTTP {} m.server = {d}{origin}; cached for {}s",
                wk.status.unwrap_or(200),
                wk.cache_seconds
            ),
        ),
        Err(e) => {
            let kind = match e.outcome() {
                Outcome::NotFound => "no delegation",
                Outcome::Invalid => "invalid, ignored",
                _ => "failed (temporary)",
            };
            p.note(
                "well-known",
                format!("{e}: {kind}{origin}; go on without delegation (steps 4-6)"),
            );
        }
    }
    if let Some(e) = &wk.stale_because {
        p.note(
            "well-known",
            format!("refetch failed ({e}); serving the previous valid result"),
        );
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_targets(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| {
            let addrs: Vec<String> = t.socket_addrs().map(|s| s.to_string()).collect();
            if t.addrs.len() == 1 && t.host == t.addrs[0].to_string() {
                addrs.join(", ")
            } else {
                format!("{} ({})", t.host, addrs.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(" then ")
}

/// Serialised forms matching the JSON contract.
impl Serialize for SrvReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("outcome", &self.outcome)?;
        m.serialize_entry("records", &self.records)?;
        m.serialize_entry("error", &self.error)?;
        m.end()
    }
}

/// The `well_known` object of the JSON contract.
pub fn well_known_json(wk: &WellKnownReport) -> serde_json::Value {
    serde_json::json!({
        "url": wk.url,
        "outcome": wk.outcome(),
        "status": wk.status,
        "m.server": wk.result.as_ref().ok().map(ServerName::as_str),
        "redirects": wk.redirects,
        "cache_seconds": wk.cache_seconds,
        "error": wk.result.as_ref().err().map(WellKnownFailure::to_string),
    })
}

impl Resolution {
    /// The `homeport resolve --json` object, exactly as DESIGN.md specifies.
    pub fn to_json(&self) -> serde_json::Value {
        let (host_header, tls_name, sni, targets, error) = match &self.outcome {
            Ok(d) => (
                serde_json::Value::from(d.host_header.clone()),
                serde_json::Value::from(d.tls_name_text()),
                d.sni()
                    .map_or(serde_json::Value::Null, serde_json::Value::from),
                serde_json::to_value(&d.targets).unwrap_or_default(),
                serde_json::Value::Null,
            ),
            Err(e) => (
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::Value::Array(Vec::new()),
                serde_json::Value::from(e.to_string()),
            ),
        };
        serde_json::json!({
            "server_name": self.server_name.as_str(),
            "step": self.step.as_str(),
            "well_known": self.well_known.as_deref().map(well_known_json),
            "srv": self.srv,
            "host_header": host_header,
            "tls_name": tls_name,
            "sni": sni,
            "targets": targets,
            "error": error,
        })
    }
}

impl Resolution {
    /// The human rendering: the trace (what was asked, what came back,
    /// which rule decided), then the result.
    pub fn render_human(&self) -> String {
        let r = self;
        let mut s = format!("Resolving {}\n", r.server_name);
        // The last trace line is the decision, which the result repeats.
        let shown = match r.trace.last() {
            Some(last) if last.phase == "decide" => &r.trace[..r.trace.len() - 1],
            _ => &r.trace[..],
        };
        for ev in shown {
            s.push_str(&format!("  {:<10} {}\n", ev.phase, ev.message));
        }
        match &r.outcome {
            Ok(d) => {
                s.push_str(&format!(
                    "\nResolved by step {}: {}\n",
                    r.step,
                    r.step.rule()
                ));
                for (i, t) in d.targets.iter().enumerate() {
                    let addrs: Vec<String> = t.socket_addrs().map(|a| a.to_string()).collect();
                    s.push_str(&format!(
                        "  target {}    {} port {} -> {}\n",
                        i + 1,
                        t.host,
                        t.port,
                        addrs.join(", ")
                    ));
                }
                s.push_str(&format!("  Host header {}\n", d.host_header));
                s.push_str(&format!(
                    "  TLS name    {} (the certificate must be valid for it)\n",
                    d.tls_name_text()
                ));
                s.push_str(&format!(
                    "  SNI         {}\n",
                    d.sni().unwrap_or("none (IP literal)")
                ));
            }
            Err(e) => {
                s.push_str(&format!("\nNot resolvable: step {} failed: {e}\n", r.step));
            }
        }
        s
    }
}
