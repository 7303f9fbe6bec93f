//! The federation check: what every federating server will do when it tries
//! to reach a server name, probed address by address (IPv4 and IPv6
//! separately), and what to fix. One [`Report`] value; the binary renders
//! it as text, JSON or the matrix-federation-tester schema.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use homeport_core::keys;
use homeport_core::{Host, ServerName};
use homeport_resolve::dns::SrvAnswer;
use homeport_resolve::{Destination, Resolution, Step, WellKnownFailure};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::client::{FederationClient, Sender, Signer, http_handshake};
use crate::connect::{self, ConnInfo};
use crate::keys::{KeyFetcher, MemoryKeyStore, now_ms};
use crate::tls::CertProblem;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information.
    Info,
    /// Works, but fragile or against a SHOULD.
    Warning,
    /// Federation fails (for some or all peers).
    Error,
}

/// One problem, with the rule, the evidence and the fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id (docs/report.md).
    pub id: &'static str,
    /// Severity.
    pub severity: Severity,
    /// The rule (spec section, RFC).
    pub rule: String,
    /// What was sent and received.
    pub evidence: String,
    /// What to change.
    pub fix: String,
    /// Where the guide explains it.
    pub doc: String,
}

/// One certificate of a chain, as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// Subject (RFC 4514).
    pub subject: String,
    /// Subject common name.
    pub subject_cn: Option<String>,
    /// Issuer (RFC 4514).
    pub issuer: String,
    /// Issuer common name.
    pub issuer_cn: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<String>,
    /// notBefore (unix seconds).
    pub not_before: i64,
    /// notAfter (unix seconds).
    pub not_after: i64,
    /// Days left (negative when expired).
    pub days_left: i64,
    /// SHA-256 of the DER, unpadded base64.
    pub sha256: String,
}

/// The certificate as checked against the TLS name.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateReport {
    /// The chain as sent, leaf first.
    pub chain: Vec<CertSummary>,
    /// The name it must be valid for.
    pub tls_name: String,
    /// Valid for it (against the trusted roots).
    pub valid: bool,
    /// Why not.
    pub error: Option<String>,
    /// When invalid for the TLS name: another name it is valid for (the SRV
    /// target, typically).
    pub valid_for: Option<String>,
    /// The kind of failure, when not valid.
    #[serde(skip)]
    pub problem: Option<CertProblem>,
}

/// The key server as seen on one address.
#[derive(Clone, Debug, Serialize)]
pub struct KeysReport {
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: Option<String>,
    /// `server_name` in the document.
    pub server_name: Option<String>,
    /// Each key id and its signature status.
    pub verify_keys: Vec<(String, String)>,
    /// `valid_until_ts`.
    pub valid_until_ts: Option<u64>,
    /// Every check passed.
    pub ok: bool,
    /// Failed checks.
    pub problems: Vec<String>,
    /// The body is in canonical form.
    pub canonical: bool,
    /// The raw document.
    #[serde(skip)]
    pub raw: Option<Value>,
    /// Where the body first differs from its canonical JSON, when it does
    /// (the evidence of `key_not_canonical`).
    #[serde(skip)]
    pub canonical_diff: Option<String>,
    /// An error before the document could be read.
    pub error: Option<String>,
}

/// `/_matrix/federation/v1/version` on one address.
#[derive(Clone, Debug, Serialize)]
pub struct VersionReport {
    /// `server.name`.
    pub name: Option<String>,
    /// `server.version`.
    pub version: Option<String>,
    /// Failure.
    pub error: Option<String>,
}

/// The explicit-port Host probe on one address.
#[derive(Clone, Debug, Serialize)]
pub struct HostProbe {
    /// The Host the spec prescribes.
    pub prescribed: String,
    /// The other form tried.
    pub alternative: String,
    /// Status with the prescribed Host.
    pub prescribed_status: Option<u16>,
    /// Status with the alternative.
    pub alternative_status: Option<u16>,
    /// JSON with the prescribed Host.
    pub prescribed_json: bool,
    /// JSON with the alternative.
    pub alternative_json: bool,
    /// The answers differ.
    pub differs: bool,
    /// Why there was no answer with the prescribed Host (on the first
    /// connection and on a new one), or null.
    pub prescribed_error: Option<String>,
    /// Why there was no answer with the alternative, or null.
    pub alternative_error: Option<String>,
}

/// TLS facts of one connection.
#[derive(Clone, Debug, Serialize)]
pub struct TlsReport {
    /// `TLSv1_3`.
    pub version: Option<String>,
    /// Cipher suite.
    pub cipher: Option<String>,
    /// ALPN.
    pub alpn: Option<String>,
    /// SNI sent.
    pub sni: Option<String>,
    /// Handshake time (ms).
    pub handshake_ms: u64,
}

/// Everything about one address.
#[derive(Clone, Debug, Serialize)]
pub struct AddressReport {
    /// `ip:port`.
    pub addr: SocketAddr,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// The target (SRV target or host) it belongs to.
    pub target: String,
    /// TCP connect time (ms), when connected.
    pub connect_ms: Option<u64>,
    /// TLS, when the handshake completed.
    pub tls: Option<TlsReport>,
    /// The certificate.
    pub certificate: Option<CertificateReport>,
    /// The key server.
    pub keys: Option<KeysReport>,
    /// The version endpoint.
    pub version: Option<VersionReport>,
    /// The Host probe.
    pub host_probe: Option<HostProbe>,
    /// Connect or TLS failure.
    pub error: Option<String>,
    /// The connect failed because this machine has no route for the
    /// address: it was not tested.
    #[serde(skip)]
    pub no_route: bool,
    /// The check's time ran out before this address was probed fully.
    #[serde(skip)]
    pub unfinished: bool,
}

/// `.well-known/matrix/server` as one address of the server name serves it.
#[derive(Clone, Debug, Serialize)]
pub struct WellKnownAddr {
    /// The address.
    pub addr: SocketAddr,
    /// Status.
    pub status: Option<u16>,
    /// m.server, when valid.
    pub m_server: Option<String>,
    /// Error.
    pub error: Option<String>,
    /// Not tested: this machine has no route for the address.
    #[serde(skip)]
    pub no_route: bool,
}

/// The check of one server name.
#[derive(Clone, Debug)]
pub struct Report {
    /// The name.
    pub server_name: ServerName,
    /// No error finding.
    pub ok: bool,
    /// Discovery.
    pub resolution: Arc<Resolution>,
    /// Per address.
    pub addresses: Vec<AddressReport>,
    /// .well-known per address of the server name.
    pub well_known_by_addr: Vec<WellKnownAddr>,
    /// Client .well-known summary.
    pub client_well_known: Option<Value>,
    /// Support .well-known summary.
    pub support_well_known: Option<Value>,
    /// Findings.
    pub findings: Vec<Finding>,
    /// What the check's time limit cut short (empty when it finished).
    pub pending: Vec<String>,
    /// Time taken.
    pub duration: Duration,
}

/// Check settings.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Make an authenticated probe with this identity.
    pub signer: Option<Signer>,
    /// Cross-check keys with this notary.
    pub notary: Option<ServerName>,
    /// A closed federation on a private network: addresses in private and
    /// special-purpose ranges are intended, so `address_not_public` is not
    /// reported (`homeport check --private`; the lab). Addresses the
    /// client's address filter allows explicitly (`ip_range_whitelist`) are
    /// never reported either.
    pub private: bool,
    /// Bound on the whole check. When it runs out, the report holds what was
    /// learnt until then, the finding `check_timed_out` and the phases still
    /// `pending`. `None`: no overall bound (every network step keeps its own).
    pub time_limit: Option<Duration>,
}

/// Within one severity, root causes come before their consequences (a key
/// fetch that fails because the proxy rejected the Host header).
fn rank(id: &str) -> u8 {
    match id {
        "host_port_rejected_by_proxy"
        | "wellknown_split_brain"
        | "wellknown_redirect_loop"
        | "wellknown_too_large"
        | "wellknown_invalid" => 0,
        id if id.starts_with("cert_") || id.starts_with("srv_") => 1,
        id if id.starts_with("key_") && id != "key_fetch_failed" => 2,
        "key_fetch_failed" | "version_unreachable" => 4,
        "connect_failed" | "dns_no_address" | "dns_error" | "tls_failed" => 5,
        _ => 3,
    }
}

fn doc(anchor: &str) -> String {
    format!("docs/report.md#{anchor}")
}

fn finding(
    id: &'static str,
    severity: Severity,
    rule: &str,
    evidence: String,
    fix: &str,
) -> Finding {
    Finding {
        id,
        severity,
        rule: rule.to_owned(),
        evidence,
        fix: fix.to_owned(),
        doc: doc(id),
    }
}

const S_DISCOVERY: &str = "Server-Server API, Resolving server names";
const S_TLS: &str = "Server-Server API, TLS (MSC1711): the certificate must be valid for the server name, or the delegated name";
const S_KEYS: &str = "Server-Server API, Publishing Keys";

/// How long one SRV lookup made only for a finding may take.
const SRV_LOOKUP_BOUND: Duration = Duration::from_secs(5);
/// How long `GET <base_url>/_matrix/client/versions` may take in all.
const BASE_URL_BOUND: Duration = Duration::from_secs(15);
/// The most lifetime a `.well-known` response may ask for before peers cap
/// it (48 hours), and the least before `wellknown_cache_short` (1 hour).
const WK_CACHE_MAX_SECS: u64 = 48 * 3600;
const WK_CACHE_SHORT_SECS: u64 = 3600;
/// A certificate with fewer days left than this is about to expire.
const CERT_SOON_DAYS: i64 = 14;

/// One address being probed: its report so far and the step under way
/// (`None` once finished).
struct AddrSlot {
    report: AddressReport,
    step: Option<&'static str>,
}

/// What the check has learnt so far. Every phase writes its result here as
/// it finishes, so that a check cut short by its time limit still reports
/// what it learnt.
#[derive(Default)]
struct Partial {
    srv_lookups: Option<Vec<Finding>>,
    addresses: Vec<AddrSlot>,
    well_known: Option<(Vec<WellKnownAddr>, Vec<Finding>)>,
    /// The client document (once fetched), and whether the `base_url`
    /// check after it finished too.
    client: Option<(Option<Value>, Vec<Finding>, bool)>,
    support: Option<(Option<Value>, Vec<Finding>)>,
    auth: Option<Vec<Finding>>,
    notary: Option<Vec<Finding>>,
}

fn lock(m: &Mutex<Partial>) -> std::sync::MutexGuard<'_, Partial> {
    // Every writer leaves the state whole, so a poisoned lock is still
    // usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where `probe_address` records its progress.
#[derive(Clone, Copy)]
struct Slot<'a> {
    state: &'a Mutex<Partial>,
    index: usize,
}

impl Slot<'_> {
    fn save(&self, rep: &AddressReport, next: Option<&'static str>) {
        if let Some(s) = lock(self.state).addresses.get_mut(self.index) {
            s.report = rep.clone();
            s.step = next;
        }
    }
}

fn blank_address(addr: SocketAddr, target: &str) -> AddressReport {
    AddressReport {
        addr,
        family: if addr.is_ipv6() { "ipv6" } else { "ipv4" },
        target: target.to_owned(),
        connect_ms: None,
        tls: None,
        certificate: None,
        keys: None,
        version: None,
        host_probe: None,
        error: None,
        no_route: false,
        unfinished: false,
    }
}

/// Run the check.
pub async fn check(client: &FederationClient, name: &ServerName, opts: &CheckOptions) -> Report {
    let start = Instant::now();
    let deadline = opts
        .time_limit
        .and_then(|l| tokio::time::Instant::now().checked_add(l));
    let limit = opts.time_limit.unwrap_or(Duration::MAX);
    let (resolution, _) = client.resolver().resolve_uncached_within(name, limit).await;
    // The resolution gave up because the check's own time ran out (rather
    // than at the resolver's bound): nothing after it can run.
    let cut_in_resolution = matches!(
        resolution.outcome,
        Err(homeport_resolve::ResolveError::Timeout(_))
    ) && deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
    let resolution = Arc::new(resolution);
    let mut partial = Partial::default();
    if let Ok(dest) = &resolution.outcome {
        for t in &dest.targets {
            for addr in t.socket_addrs() {
                partial.addresses.push(AddrSlot {
                    report: blank_address(addr, &t.host),
                    step: Some("connect"),
                });
            }
        }
    }
    let state = Mutex::new(partial);
    let timed_out = if cut_in_resolution {
        true
    } else {
        let work = run(client, name, opts, &resolution, &state);
        match deadline {
            Some(d) => tokio::time::timeout_at(d, work).await.is_err(),
            None => {
                work.await;
                false
            }
        }
    };
    let partial = state
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assemble(
        client,
        name,
        opts,
        resolution,
        partial,
        timed_out,
        cut_in_resolution,
        start.elapsed(),
    )
}

/// Every phase after discovery, concurrently; each records its result in
/// `state` when it finishes.
async fn run(
    client: &FederationClient,
    name: &ServerName,
    opts: &CheckOptions,
    resolution: &Resolution,
    state: &Mutex<Partial>,
) {
    let srv = async {
        let mut f = Vec::new();
        srv_lookup_findings(client, resolution, &mut f).await;
        lock(state).srv_lookups = Some(f);
    };
    let addresses = async {
        let mut reports = Vec::new();
        if let Ok(dest) = &resolution.outcome {
            let mut probes = Vec::new();
            let mut index = 0;
            for t in &dest.targets {
                for addr in t.socket_addrs() {
                    let slot = Slot { state, index };
                    index += 1;
                    probes.push(probe_address(
                        client,
                        dest,
                        name,
                        t.host.clone(),
                        addr,
                        slot,
                    ));
                }
            }
            reports = futures_util::future::join_all(probes).await;
        }
        if let Some(n) = &opts.notary {
            let mut f = Vec::new();
            notary_cross_check(client, n, name, &reports, &mut f).await;
            lock(state).notary = Some(f);
        }
    };
    let by_name = !(name.is_ip_literal() || name.port().is_some());
    let well_known = async {
        if by_name {
            let mut f = Vec::new();
            let got = well_known_everywhere(client, name, &mut f).await;
            lock(state).well_known = Some((got, f));
        }
    };
    let client_doc = async {
        if by_name {
            client_well_known(client, name, state).await;
        }
    };
    let support = async {
        if by_name {
            let mut f = Vec::new();
            let v = support_well_known(client, name, &mut f).await;
            lock(state).support = Some((v, f));
        }
    };
    let auth = async {
        if let Some(signer) = &opts.signer {
            let mut f = Vec::new();
            auth_probe(client, signer, name, resolution, &mut f).await;
            lock(state).auth = Some(f);
        }
    };
    tokio::join!(srv, addresses, well_known, client_doc, support, auth);
}

/// The report from what `partial` holds; `timed_out` when the time limit
/// ended the check (`cut_in_resolution`: during discovery).
#[allow(clippy::too_many_arguments)]
fn assemble(
    client: &FederationClient,
    name: &ServerName,
    opts: &CheckOptions,
    resolution: Arc<Resolution>,
    partial: Partial,
    timed_out: bool,
    cut_in_resolution: bool,
    duration: Duration,
) -> Report {
    let by_name = !(name.is_ip_literal() || name.port().is_some());
    let mut pending = Vec::new();
    if cut_in_resolution {
        pending.push("resolution".to_owned());
    }
    let mut findings = Vec::new();
    discovery_findings(&resolution, cut_in_resolution, &mut findings);
    match partial.srv_lookups {
        Some(mut f) => findings.append(&mut f),
        None => pending.push("srv_lookups".to_owned()),
    }
    let mut addresses = Vec::with_capacity(partial.addresses.len());
    for slot in partial.addresses {
        let mut a = slot.report;
        if let Some(step) = slot.step {
            a.unfinished = true;
            a.error = Some(format!(
                "timeout: the check's time ran out during {step} (what was learnt before is kept)"
            ));
            pending.push(format!("address {}: {step}", a.addr));
        }
        addresses.push(a);
    }
    address_findings(&addresses, &mut findings);
    let (well_known_by_addr, mut wk_findings) = match partial.well_known {
        Some(w) => w,
        None => {
            if by_name {
                pending.push("well_known_by_address".to_owned());
            }
            (Vec::new(), Vec::new())
        }
    };
    untested_findings(&addresses, &well_known_by_addr, &mut findings);
    if !opts.private {
        public_findings(client, &resolution, &well_known_by_addr, &mut findings);
    }
    findings.append(&mut wk_findings);
    let client_well_known = match partial.client {
        Some((v, mut f, finished)) => {
            if !finished {
                pending.push("client_base_url".to_owned());
            }
            findings.append(&mut f);
            v
        }
        None => {
            if by_name {
                pending.push("client_well_known".to_owned());
            }
            None
        }
    };
    let support_well_known = match partial.support {
        Some((v, mut f)) => {
            findings.append(&mut f);
            v
        }
        None => {
            if by_name {
                pending.push("support_well_known".to_owned());
            }
            None
        }
    };
    match partial.auth {
        Some(mut f) => findings.append(&mut f),
        None if opts.signer.is_some() => pending.push("auth_probe".to_owned()),
        None => {}
    }
    match partial.notary {
        Some(mut f) => findings.append(&mut f),
        None if opts.notary.is_some() => pending.push("notary".to_owned()),
        None => {}
    }
    if timed_out {
        let limit = opts
            .time_limit
            .map(homeport_core::duration::format)
            .unwrap_or_default();
        findings.push(finding(
            "check_timed_out",
            Severity::Error,
            "homeport check: --timeout bounds the whole check",
            format!(
                "the check's time limit ({limit}) ran out before these finished: {}",
                if pending.is_empty() {
                    "(nothing recorded)".to_owned()
                } else {
                    pending.join(", ")
                }
            ),
            "Find the slow part in the report (often a .well-known host that never answers, or a filtered port that drops packets instead of refusing them); retry with a longer --timeout if the network is simply slow",
        ));
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(rank(a.id).cmp(&rank(b.id)))
    });
    findings.dedup_by(|a, b| a.id == b.id && a.evidence == b.evidence);
    let ok = !findings.iter().any(|f| f.severity == Severity::Error);
    Report {
        server_name: name.clone(),
        ok,
        resolution,
        addresses,
        well_known_by_addr,
        client_well_known,
        support_well_known,
        findings,
        pending,
        duration,
    }
}

/// The lifetime the `.well-known` response asks for, before peers clamp it
/// (seconds; `no-store` is 0), or `None` when its headers name none.
fn requested_lifetime(wk: &homeport_resolve::WellKnownReport, now: SystemTime) -> Option<u64> {
    use homeport_resolve::cache_control::{CachePeriod, cache_period};
    let cc: Vec<&str> = wk.cache_control.iter().map(String::as_str).collect();
    match cache_period(&cc, wk.expires.as_deref(), now) {
        CachePeriod::NoStore => Some(0),
        CachePeriod::For(d) => Some(d.as_secs()),
        CachePeriod::Unspecified => None,
    }
}

fn cache_headers_text(wk: &homeport_resolve::WellKnownReport) -> String {
    let mut parts = Vec::new();
    if !wk.cache_control.is_empty() {
        parts.push(format!("Cache-Control: {}", wk.cache_control.join(", ")));
    }
    if let Some(e) = &wk.expires {
        parts.push(format!("Expires: {e}"));
    }
    if parts.is_empty() {
        "no Cache-Control or Expires".to_owned()
    } else {
        parts.join("; ")
    }
}

/// The findings that follow from the resolution itself (no network).
/// `cut`: the check's time limit ended the resolution, which is reported as
/// `check_timed_out` rather than as a resolution failure.
fn discovery_findings(r: &Resolution, cut: bool, out: &mut Vec<Finding>) {
    if let Some(wk) = &r.well_known {
        match &wk.result {
            Err(WellKnownFailure::RedirectLoop(url)) => out.push(finding(
                "wellknown_redirect_loop",
                Severity::Error,
                "Server-Server API: 30x redirects should be followed, but redirection loops avoided",
                format!("redirects {:?} came back to {url}", wk.redirects),
                "Make /.well-known/matrix/server answer 200 with the JSON directly, or redirect once to a URL that does",
            )),
            Err(WellKnownFailure::TooManyRedirects(n)) => out.push(finding(
                "wellknown_redirect_loop",
                Severity::Error,
                "Server-Server API: redirects are followed a bounded number of times",
                format!("more than {n} redirects: {:?}", wk.redirects),
                "Serve /.well-known/matrix/server without a redirect chain",
            )),
            Err(WellKnownFailure::TooLarge(_)) => out.push(finding(
                "wellknown_too_large",
                Severity::Error,
                "Synapse rejects a .well-known body of 51200 bytes or more",
                format!("{} answered a body of 51200 bytes or more", wk.url),
                "Serve only {\"m.server\": \"host[:port]\"} (a few dozen bytes)",
            )),
            Err(WellKnownFailure::Invalid(e)) => out.push(finding(
                "wellknown_invalid",
                Severity::Error,
                "Server-Server API: the body must be a JSON object with a string m.server that is a server name",
                format!("{}: {e}", wk.url),
                "Serve exactly {\"m.server\": \"matrix.example.org\"} (or host:port) with status 200",
            )),
            Err(WellKnownFailure::Status(s)) => out.push(finding(
                "wellknown_not_found",
                Severity::Info,
                S_DISCOVERY,
                format!("{} answered HTTP {s}: no delegation, so steps 4-6 apply", wk.url),
                "Nothing to fix if the server name itself serves federation; otherwise publish /.well-known/matrix/server",
            )),
            Err(e @ (WellKnownFailure::Dns(_) | WellKnownFailure::Connect(_))) => out.push(finding(
                "wellknown_unreachable",
                Severity::Info,
                S_DISCOVERY,
                format!("{}: {e}: no delegation, so steps 4-6 apply (peers count this as a temporary failure and retry later)", wk.url),
                "Nothing to fix if the server name itself serves federation (SRV or port 8448); to delegate, serve /.well-known/matrix/server on port 443",
            )),
            Err(e) => out.push(finding(
                "wellknown_unreachable",
                Severity::Warning,
                S_DISCOVERY,
                format!("{}: {e} (a temporary failure: peers fall back to steps 4-6, and retry later)", wk.url),
                "Make https://<server name>/.well-known/matrix/server reachable with a valid certificate, or answer 404 quickly if you do not delegate",
            )),
            Ok(d) => {
                if d.port().is_some() && !d.is_ip_literal() {
                    out.push(finding(
                        "wellknown_explicit_port",
                        Severity::Info,
                        S_DISCOVERY,
                        format!("m.server is {d}: every federating server will send Host: {d}"),
                        "Make sure the reverse proxy on that port accepts Host with the port (see the Host probe), or drop the port and use SRV or 8448",
                    ));
                }
                if !wk.from_cache {
                    let asked = requested_lifetime(wk, SystemTime::now());
                    if let Some(secs) = asked.filter(|s| *s < WK_CACHE_SHORT_SECS) {
                        out.push(finding(
                            "wellknown_cache_short",
                            Severity::Info,
                            "Server-Server API: responses should be cached, 24 hours by default",
                            format!(
                                "the response asks to be cached for {secs}s ({}); peers keep it for {}s",
                                cache_headers_text(wk),
                                wk.cache_seconds
                            ),
                            "Send Cache-Control: max-age=86400 unless you are about to change the delegation",
                        ));
                    }
                    if let Some(secs) = asked.filter(|s| *s > WK_CACHE_MAX_SECS) {
                        out.push(finding(
                            "wellknown_cache_long",
                            Severity::Warning,
                            "Server-Server API: a .well-known response is cached for at most 48 hours",
                            format!(
                                "the response asks to be cached for {secs}s ({}, {}); peers cap it at 48 hours and keep it for {}s",
                                homeport_core::time::format_span_ms(secs.saturating_mul(1000)),
                                cache_headers_text(wk),
                                wk.cache_seconds
                            ),
                            "Send Cache-Control: max-age=86400 (or less): a lifetime peers cut anyway only makes a change of delegation slow to reach them",
                        ));
                    }
                }
                if let Some(ct) = &wk.content_type
                    && !ct.to_ascii_lowercase().starts_with("application/json") {
                        out.push(finding(
                            "wellknown_content_type",
                            Severity::Warning,
                            "Clients (and some servers) expect application/json",
                            format!("Content-Type: {ct}"),
                            "Serve /.well-known/matrix/server with Content-Type: application/json",
                        ));
                    }
            }
        }
        let loop_reported = matches!(
            wk.result,
            Err(WellKnownFailure::RedirectLoop(_) | WellKnownFailure::TooManyRedirects(_))
        );
        if !wk.redirects.is_empty() && !loop_reported {
            out.push(finding(
                "wellknown_redirected",
                Severity::Info,
                "Server-Server API: 30x redirects of the .well-known URL are followed (over https only)",
                format!(
                    "{} -> {} ({} redirect(s) before the final answer)",
                    wk.url,
                    wk.redirects.join(" -> "),
                    wk.redirects.len()
                ),
                "Nothing required; answering 200 at /.well-known/matrix/server directly removes hops that can break",
            ));
        }
    }
    if matches!(r.step, Step::DelegatedLegacySrv | Step::LegacySrv) && r.outcome.is_ok() {
        let legacy = r
            .srv
            .iter()
            .find(|s| s.name.starts_with("_matrix._tcp."))
            .map(|s| s.name.clone())
            .unwrap_or_default();
        out.push(finding(
            "srv_legacy_only",
            Severity::Warning,
            "Server-Server API v1.8: _matrix._tcp is deprecated in favour of _matrix-fed._tcp",
            format!("{legacy} is used because _matrix-fed._tcp has no record"),
            &format!(
                "Add the same record as {}",
                legacy.replacen("_matrix._tcp.", "_matrix-fed._tcp.", 1)
            ),
        ));
    }
    if let Ok(d) = &r.outcome {
        for t in &d.targets {
            if let Some(c) = &t.cname
                && matches!(
                    r.step,
                    Step::DelegatedSrv | Step::DelegatedLegacySrv | Step::Srv | Step::LegacySrv
                )
            {
                out.push(finding(
                    "srv_target_cname",
                    Severity::Warning,
                    "RFC 2782: the target of an SRV record must not be an alias (CNAME)",
                    format!("SRV target {} is a CNAME for {c}", t.host),
                    &format!("Point the SRV record at {c} directly"),
                ));
            }
        }
    }
    if let Err(e) = &r.outcome {
        if cut {
            return;
        }
        let (id, fix) = match e {
            homeport_resolve::ResolveError::SrvUnavailable { .. } => (
                "srv_unavailable",
                "Remove the SRV record with target \".\" if the server should federate",
            ),
            homeport_resolve::ResolveError::Dns(_) => (
                "dns_error",
                "Fix the DNS server: SERVFAIL, REFUSED or timeouts make discovery fail (peers must not assume port 8448)",
            ),
            homeport_resolve::ResolveError::NoAddresses { .. } => (
                "dns_no_address",
                "Add A and/or AAAA records for the host federating servers connect to",
            ),
            _ => ("resolution_failed", "See the trace"),
        };
        out.push(finding(
            id,
            Severity::Error,
            S_DISCOVERY,
            format!("step {}: {e}", r.step),
            fix,
        ));
    }
}

/// SRV records, bounded in time, for findings only.
async fn srv_records(client: &FederationClient, qname: &str) -> Option<Vec<String>> {
    match tokio::time::timeout(SRV_LOOKUP_BOUND, client.resolver().lookup_srv(qname)).await {
        Ok(Ok(SrvAnswer::Found { records, .. })) => Some(
            records
                .iter()
                .map(|r| format!("{} {} {} {}", r.priority, r.weight, r.port, r.target))
                .collect(),
        ),
        _ => None,
    }
}

/// The first of `_matrix-fed._tcp.host` and `_matrix._tcp.host` that has
/// SRV records: its name and records.
async fn first_srv(client: &FederationClient, host: &str) -> Option<(String, Vec<String>)> {
    for prefix in ["_matrix-fed._tcp.", "_matrix._tcp."] {
        let q = format!("{prefix}{host}");
        if let Some(records) = srv_records(client, &q).await {
            return Some((q, records));
        }
    }
    None
}

/// The findings about SRV records that delegation made irrelevant: they
/// need DNS lookups discovery itself did not make (with the check's own
/// resolver).
async fn srv_lookup_findings(client: &FederationClient, r: &Resolution, out: &mut Vec<Finding>) {
    let Some(wk) = &r.well_known else {
        return;
    };
    let Ok(d) = &wk.result else {
        return;
    };
    // SRV records of the server name itself (either form) are ignored now.
    let host = r.server_name.host_str().to_ascii_lowercase();
    if let Some((q, records)) = first_srv(client, &host).await {
        out.push(finding(
            "srv_ignored_due_to_wellknown",
            Severity::Info,
            "Server-Server API: SRV records are looked up only for the delegated name",
            format!(
                "{q} ({}) exists, but .well-known delegates to {d}, so it is never used",
                records.join(", ")
            ),
            "Remove the record, or put the SRV record on the delegated name instead",
        ));
    }
    // m.server with a port (step 3.2): the delegated name's SRV records are
    // never looked up either.
    if d.port().is_some() && !d.is_ip_literal() {
        let host = d.host_str().to_ascii_lowercase();
        if let Some((q, records)) = first_srv(client, &host).await {
            out.push(finding(
                "srv_ignored_due_to_port",
                Severity::Info,
                "Server-Server API, Resolving server names, step 3.2: when m.server has a port, no SRV lookup is made",
                format!(
                    "m.server is {d}, with a port, so {q} ({}) is never looked up",
                    records.join(", ")
                ),
                "Nothing required. Removing the port from m.server puts the SRV record in charge (and takes the port out of the Host header)",
            ));
        }
    }
}

fn summarize(der: &[u8]) -> Option<CertSummary> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let na = c.validity().not_after.timestamp();
    let nb = c.validity().not_before.timestamp();
    let now = i64::try_from(now_ms() / 1000).unwrap_or(0);
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ip_addresses.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ip_addresses.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let cn = |n: &x509_parser::x509::X509Name<'_>| {
        n.iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
    };
    Some(CertSummary {
        subject: c.subject().to_string(),
        subject_cn: cn(c.subject()),
        issuer: c.issuer().to_string(),
        issuer_cn: cn(c.issuer()),
        dns_names,
        ip_addresses,
        not_before: nb,
        not_after: na,
        days_left: (na - now).div_euclid(86_400),
        sha256: homeport_core::base64::encode(sha2::Sha256::digest(der)),
    })
}

/// Verify `chain` for `name` against the client's roots.
fn chain_valid_for(
    client: &FederationClient,
    chain: &[rustls::pki_types::CertificateDer<'static>],
    name: &str,
) -> bool {
    let Ok(host) = ServerName::parse(name) else {
        return false;
    };
    let Ok(sn) = crate::tls::tls_server_name(host.host()) else {
        return false;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(v) = rustls::client::WebPkiServerVerifier::builder_with_provider(
        client.config().tls.roots.clone(),
        provider,
    )
    .build() else {
        return false;
    };
    let Some((leaf, rest)) = chain.split_first() else {
        return false;
    };
    use rustls::client::danger::ServerCertVerifier as _;
    v.verify_server_cert(leaf, rest, &sn, &[], rustls::pki_types::UnixTime::now())
        .is_ok()
}

struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn exchange(
    s: &mut Sender,
    method: Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Result<Exchange, String> {
    let mut b = match s {
        Sender::H1(_) => http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host),
        Sender::H2(_) => http::Request::builder()
            .method(method)
            .uri(format!("https://{host}{path}"))
            .version(http::Version::HTTP_2),
    };
    if let Some(h) = b.headers_mut() {
        for (k, v) in headers {
            h.append(k, v.clone());
        }
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("homeport-check/", env!("CARGO_PKG_VERSION"))),
        );
    }
    let req = b
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = s.send(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = homeport_resolve::body::read_capped(resp.into_body(), &headers, 1024 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Exchange {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .map_err(|_| "no answer within 15s".to_owned())?
}

async fn open(conn: connect::Connection) -> Result<(Sender, ConnInfo), String> {
    http_handshake(conn).await.map_err(|e| e.to_string())
}

fn is_json(e: &Exchange) -> bool {
    serde_json::from_slice::<Value>(&e.body).is_ok()
}

/// What it takes to open another connection to the address probed.
struct Redial<'a> {
    client: &'a FederationClient,
    dest: &'a Destination,
    target: &'a str,
    addr: SocketAddr,
}

impl Redial<'_> {
    /// `GET /_matrix/key/v2/server` with `Host: host` on `sender`, or, when
    /// that connection fails, once more on a new connection (which then
    /// replaces `sender`).
    async fn keys_with_host(&self, sender: &mut Sender, host: &str) -> Result<Exchange, String> {
        let none = HeaderMap::new();
        let path = "/_matrix/key/v2/server";
        let first = match exchange(sender, Method::GET, path, host, &none, None).await {
            Ok(x) => return Ok(x),
            Err(e) => e,
        };
        let cfg = self.client.config();
        let again = |e: String| format!("{first}; on a new connection: {e}");
        let conn = connect::connect_addr(
            self.addr,
            self.target,
            &self.dest.tls_name,
            &peer_like(&cfg.tls),
            false,
            &cfg.connect,
        )
        .await
        .map_err(|a| again(format!("{}: {}", a.phase, a.error)))?;
        let (mut fresh, _) = open(conn).await.map_err(|e| again(format!("http: {e}")))?;
        let r = exchange(&mut fresh, Method::GET, path, host, &none, None)
            .await
            .map_err(again);
        *sender = fresh;
        r
    }
}

/// One Host probe answer for the human report: the status, or why none.
fn answer_text(status: Option<u16>, error: Option<&str>) -> String {
    match (status, error) {
        (Some(x), _) => x.to_string(),
        (None, Some(e)) => format!("no answer ({e})"),
        (None, None) => "no answer".to_owned(),
    }
}

async fn probe_address(
    client: &FederationClient,
    dest: &Destination,
    name: &ServerName,
    target: String,
    addr: SocketAddr,
    slot: Slot<'_>,
) -> AddressReport {
    let rep = probe_address_steps(client, dest, name, target, addr, slot).await;
    slot.save(&rep, None);
    rep
}

/// The probes of one address in order, each step's result saved in `slot`
/// before the next starts.
async fn probe_address_steps(
    client: &FederationClient,
    dest: &Destination,
    name: &ServerName,
    target: String,
    addr: SocketAddr,
    slot: Slot<'_>,
) -> AddressReport {
    let mut rep = blank_address(addr, &target);
    let cfg = client.config();
    let conn = match connect::connect_addr(
        addr,
        &target,
        &dest.tls_name,
        &peer_like(&cfg.tls),
        false,
        &cfg.connect,
    )
    .await
    {
        Ok(c) => c,
        Err(a) => {
            rep.error = Some(format!("{}: {}", a.phase, a.error));
            rep.no_route = a.no_route;
            return rep;
        }
    };
    let info = conn.info.clone();
    rep.connect_ms = Some(u64::try_from(info.connect_time.as_millis()).unwrap_or(u64::MAX));
    rep.tls = Some(TlsReport {
        version: info.tls_version.clone(),
        cipher: info.cipher.clone(),
        alpn: info.alpn.clone(),
        sni: info.sni.clone(),
        handshake_ms: u64::try_from(info.handshake_time.as_millis()).unwrap_or(u64::MAX),
    });
    let chain = info.certificates.chain.clone();
    let verdict = info.certificates.verdict.clone();
    let tls_name = dest.tls_name_text();
    let valid = verdict.as_ref().is_none_or(Result::is_ok);
    let valid_for = if valid {
        None
    } else if target != tls_name && chain_valid_for(client, &chain, &target) {
        Some(target.clone())
    } else {
        None
    };
    rep.certificate = Some(CertificateReport {
        chain: chain.iter().filter_map(|c| summarize(c.as_ref())).collect(),
        tls_name: tls_name.clone(),
        valid,
        error: verdict.and_then(Result::err),
        valid_for,
        problem: if valid {
            None
        } else {
            info.certificates.problem
        },
    });
    slot.save(&rep, Some("http"));
    let (mut sender, _) = match open(conn).await {
        Ok(s) => s,
        Err(e) => {
            rep.error = Some(format!("http: {e}"));
            return rep;
        }
    };
    let host = dest.host_header.clone();
    let none = HeaderMap::new();
    slot.save(&rep, Some("keys"));
    // Keys.
    rep.keys = Some(
        match exchange(
            &mut sender,
            Method::GET,
            "/_matrix/key/v2/server",
            &host,
            &none,
            None,
        )
        .await
        {
            Err(e) => KeysReport {
                status: 0,
                content_type: None,
                server_name: None,
                verify_keys: Vec::new(),
                valid_until_ts: None,
                ok: false,
                problems: Vec::new(),
                canonical: false,
                raw: None,
                canonical_diff: None,
                error: Some(e),
            },
            Ok(x) => keys_report(&x, name),
        },
    );
    slot.save(&rep, Some("version"));
    // Version.
    rep.version = Some(
        match exchange(
            &mut sender,
            Method::GET,
            "/_matrix/federation/v1/version",
            &host,
            &none,
            None,
        )
        .await
        {
            Err(e) => VersionReport {
                name: None,
                version: None,
                error: Some(e),
            },
            Ok(x) if x.status == StatusCode::OK => {
                let v: Value = serde_json::from_slice(&x.body).unwrap_or(Value::Null);
                VersionReport {
                    name: v["server"]["name"].as_str().map(str::to_owned),
                    version: v["server"]["version"].as_str().map(str::to_owned),
                    error: if v.is_null() {
                        Some("the body is not JSON".into())
                    } else {
                        None
                    },
                }
            }
            Ok(x) => VersionReport {
                name: None,
                version: None,
                error: Some(format!("HTTP {}", x.status.as_u16())),
            },
        },
    );
    slot.save(&rep, Some("host_probe"));
    // Host probe: the other form of the Host header.
    let alternative = match host.rsplit_once(':') {
        Some((h, p)) if !host.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) => {
            h.to_owned()
        }
        _ => format!("{host}:{}", addr.port()),
    };
    // A request whose connection failed is asked again on a new one: a
    // server may close a kept-alive connection at any time, and that is not
    // a verdict on the Host header. A proxy that drops the request itself
    // (nginx's `return 444`) fails the second time too.
    let again = Redial {
        client,
        dest,
        target: &target,
        addr,
    };
    let prescribed = again.keys_with_host(&mut sender, &host).await;
    let alt = again.keys_with_host(&mut sender, &alternative).await;
    let ps = prescribed.as_ref().ok().map(|x| x.status.as_u16());
    let als = alt.as_ref().ok().map(|x| x.status.as_u16());
    let pj = prescribed.as_ref().is_ok_and(is_json);
    let aj = alt.as_ref().is_ok_and(is_json);
    rep.host_probe = Some(HostProbe {
        prescribed: host,
        alternative,
        prescribed_status: ps,
        alternative_status: als,
        prescribed_json: pj,
        alternative_json: aj,
        differs: ps != als || pj != aj,
        prescribed_error: prescribed.err(),
        alternative_error: alt.err(),
    });
    rep
}

fn keys_report(x: &Exchange, name: &ServerName) -> KeysReport {
    let ct = x
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut k = KeysReport {
        status: x.status.as_u16(),
        content_type: ct,
        server_name: None,
        verify_keys: Vec::new(),
        valid_until_ts: None,
        ok: false,
        problems: Vec::new(),
        canonical: false,
        raw: None,
        canonical_diff: None,
        error: None,
    };
    if x.status != StatusCode::OK {
        k.error = Some(format!("HTTP {}", x.status.as_u16()));
        return k;
    }
    let raw: Value = match serde_json::from_slice(&x.body) {
        Ok(v) => v,
        Err(e) => {
            k.error = Some(format!("the body is not JSON: {e}"));
            return k;
        }
    };
    let r = keys::check_server_keys(&raw, name, now_ms());
    k.server_name = r.server_name.clone();
    k.valid_until_ts = r.valid_until_ts;
    k.verify_keys = r
        .verify_keys
        .iter()
        .map(|v| (v.key_id.clone(), v.signature.as_str().to_owned()))
        .collect();
    k.ok = r.ok();
    k.problems = r.problems.iter().map(ToString::to_string).collect();
    // A document without a canonical form is a key problem already
    // (`key_invalid`); only one that has one can differ from it.
    if let Ok(c) = homeport_core::canonical_json::to_canonical_vec(
        &raw,
        homeport_core::canonical_json::Mode::Lenient,
    ) {
        k.canonical = c == x.body.as_ref();
        k.canonical_diff = first_difference(&x.body, &c);
    }
    k.raw = Some(raw);
    k
}

/// Where `received` first differs from `canonical`, with a short excerpt of
/// each from a little before that byte; `None` when they are equal.
fn first_difference(received: &[u8], canonical: &[u8]) -> Option<String> {
    let at = received
        .iter()
        .zip(canonical)
        .position(|(a, b)| a != b)
        .or_else(|| {
            (received.len() != canonical.len()).then(|| received.len().min(canonical.len()))
        })?;
    let excerpt = |b: &[u8]| {
        let from = at.saturating_sub(12);
        let to = (at + 20).min(b.len());
        let text = String::from_utf8_lossy(b.get(from..to).unwrap_or_default()).into_owned();
        format!(
            "{}{text:?}{}",
            if from > 0 { "…" } else { "" },
            if to < b.len() { "…" } else { "" }
        )
    };
    Some(format!(
        "the body differs from its canonical JSON at byte {at}: received {}, canonical {}",
        if at >= received.len() {
            "(end of body)".to_owned()
        } else {
            excerpt(received)
        },
        if at >= canonical.len() {
            "(end)".to_owned()
        } else {
            excerpt(canonical)
        }
    ))
}

/// The TLS policy with ALPN `http/1.1` only: federating servers (Synapse
/// offers no ALPN at all) speak HTTP/1.1, and some proxies treat HTTP/2
/// differently (HAProxy drops a default `:443` from `:authority` before its
/// ACLs run), so the probes must speak what peers speak.
fn peer_like(tls: &crate::tls::TlsPolicy) -> crate::tls::TlsPolicy {
    let mut t = tls.clone();
    t.alpn = vec![b"http/1.1".to_vec()];
    t
}

fn proxy_fix(host: &str) -> String {
    format!(
        "Make the proxy match the host with any port: haproxy `acl matrix req.hdr(host),host_only -i {host}` (not `hdr(host) -i {host}`, an exact match); nginx `server_name {host};` matches already (it ignores the port); Caddy matches the site name `{host}` with any port; Apache `ServerName {host}` matches with any port (check RewriteCond rules on HTTP_HOST). Or drop the port from m.server and use an SRV record or port 8448 (docs/delegation.md#a-port-in-mserver)"
    )
}

fn status_text(s: Option<u16>) -> String {
    s.map_or_else(|| "no answer".to_owned(), |x| format!("HTTP {x}"))
}

/// An IPv6 address this machine could not try (no IPv6 route): it says
/// nothing about the server.
fn untested(a: &AddressReport) -> bool {
    a.family == "ipv6" && a.no_route
}

fn address_findings(addrs: &[AddressReport], out: &mut Vec<Finding>) {
    let now = now_ms();
    let now_s = i64::try_from(now / 1000).unwrap_or(i64::MAX);
    // Addresses that were tried to the end: neither cut short by the time
    // limit nor untestable from here.
    let tried = |a: &&AddressReport| !a.unfinished && !untested(a);
    let works = |family: &str| {
        addrs
            .iter()
            .filter(tried)
            .any(|a| a.family == family && a.error.is_none())
    };
    let all_fail = |family: &str| {
        let mut of_family = addrs.iter().filter(tried).filter(|a| a.family == family);
        let mut any = false;
        let all = of_family.all(|a| {
            any = true;
            a.error.is_some()
        });
        any && all
    };
    let (v4_ok, v6_ok) = (works("ipv4"), works("ipv6"));
    let any_ok = v4_ok || v6_ok;
    let first_working = |family: &str| {
        addrs
            .iter()
            .filter(tried)
            .find(|a| a.family == family && a.error.is_none())
            .map(|a| a.addr.to_string())
            .unwrap_or_default()
    };
    for a in addrs {
        let at = format!("{} ({})", a.addr, a.target);
        if let Some(e) = &a.error
            && tried(&a)
        {
            let (id, sev, evidence) = if e.starts_with("tls") {
                ("tls_failed", Severity::Error, format!("{at}: {e}"))
            } else if a.family == "ipv6" && all_fail("ipv6") && v4_ok {
                (
                    "ipv6_unreachable",
                    Severity::Warning,
                    format!(
                        "{at}: {e}; no IPv6 address works, IPv4 does ({})",
                        first_working("ipv4")
                    ),
                )
            } else if a.family == "ipv4" && all_fail("ipv4") && v6_ok {
                (
                    "ipv4_unreachable",
                    Severity::Error,
                    format!(
                        "{at}: {e}; no IPv4 address works, IPv6 does ({})",
                        first_working("ipv6")
                    ),
                )
            } else {
                (
                    "connect_failed",
                    if any_ok {
                        Severity::Warning
                    } else {
                        Severity::Error
                    },
                    format!("{at}: {e}"),
                )
            };
            let fix = match id {
                "ipv6_unreachable" => {
                    "Make the listener accept IPv6 (bind_addresses: ['::', '0.0.0.0'], nginx listen [::]:8448), open the IPv6 firewall, or remove the AAAA record"
                }
                "ipv4_unreachable" => {
                    "Make the address reachable over IPv4 (port forwarding, firewall, listener), or correct the A record: servers without IPv6 cannot reach you"
                }
                _ => "Make the address reachable on that port, or remove its DNS record",
            };
            out.push(finding(id, sev, S_DISCOVERY, evidence, fix));
            continue;
        }
        if let Some(c) = &a.certificate
            && !c.valid
        {
            let err = c.error.clone().unwrap_or_default();
            let leaf = c.chain.first();
            let self_signed = leaf.is_some_and(|l| l.subject == l.issuer)
                && c.problem == Some(CertProblem::UnknownIssuer);
            let (id, fix, detail) = if c.valid_for.is_some() {
                (
                    "cert_valid_only_for_srv_target",
                    format!(
                        "Get a certificate for {} (the server name or the delegated name), not only for the SRV target {}: since MSC1711 (Synapse 1.0) peers check the name they looked up, never the SRV target",
                        c.tls_name, a.target
                    ),
                    String::new(),
                )
            } else if c.problem == Some(CertProblem::Expired) {
                (
                    "cert_expired",
                    "Renew the certificate (homeport serve with acme: renews automatically) and reload".to_owned(),
                    c.chain
                        .iter()
                        .find(|x| x.not_after < now_s)
                        .map(|x| {
                            format!(
                                "; {} expired on {} ({} days ago)",
                                x.subject_cn.as_deref().unwrap_or(&x.subject),
                                homeport_core::time::format_utc_ms(
                                    u64::try_from(x.not_after).unwrap_or(0).saturating_mul(1000)
                                ),
                                -x.days_left
                            )
                        })
                        .unwrap_or_default(),
                )
            } else if c.problem == Some(CertProblem::NotValidYet) {
                (
                    "cert_not_yet_valid",
                    "Check the clocks: of the machine that issued the certificate and of this one (time synchronisation); re-issue the certificate if it was made with a wrong clock".to_owned(),
                    c.chain
                        .iter()
                        .find(|x| x.not_before > now_s)
                        .map(|x| {
                            format!(
                                "; {} is valid from {} (not_before {}), {} after this machine's clock ({})",
                                x.subject_cn.as_deref().unwrap_or(&x.subject),
                                homeport_core::time::format_utc_ms(
                                    u64::try_from(x.not_before).unwrap_or(0).saturating_mul(1000)
                                ),
                                x.not_before,
                                homeport_core::time::format_span_ms(
                                    u64::try_from(x.not_before - now_s)
                                        .unwrap_or(0)
                                        .saturating_mul(1000)
                                ),
                                homeport_core::time::format_utc_ms(now)
                            )
                        })
                        .unwrap_or_default(),
                )
            } else if self_signed {
                ("cert_self_signed", "Use a certificate from a public CA (e.g. Let's Encrypt); self-signed certificates are refused since Synapse 1.0".to_owned(), String::new())
            } else if c.problem == Some(CertProblem::UnknownIssuer) && c.chain.len() == 1 {
                ("cert_chain_incomplete", "Serve the full chain (leaf followed by the intermediates), e.g. fullchain.pem rather than cert.pem".to_owned(), String::new())
            } else if c.problem == Some(CertProblem::NotValidForName) {
                (
                    "cert_name_mismatch",
                    format!(
                        "Get a certificate whose subjectAltName includes {}",
                        c.tls_name
                    ),
                    String::new(),
                )
            } else {
                (
                    "cert_untrusted",
                    "Use a certificate from a CA that federating servers trust".to_owned(),
                    String::new(),
                )
            };
            out.push(finding(
                id,
                Severity::Error,
                S_TLS,
                format!(
                    "{at}: {err}{detail}; chain as sent: {}",
                    c.chain
                        .iter()
                        .map(|x| x.dns_names.join(","))
                        .collect::<Vec<_>>()
                        .join(" <- ")
                ),
                &fix,
            ));
        } else if let Some(c) = &a.certificate
            && let Some(leaf) = c.chain.first()
            && (0..CERT_SOON_DAYS).contains(&leaf.days_left)
        {
            out.push(finding(
                "cert_expires_soon",
                Severity::Warning,
                S_TLS,
                format!(
                    "{at}: the certificate for {} expires on {} (not_after {}), in {} day(s)",
                    c.tls_name,
                    homeport_core::time::format_utc_ms(
                        u64::try_from(leaf.not_after).unwrap_or(0).saturating_mul(1000)
                    ),
                    leaf.not_after,
                    leaf.days_left
                ),
                "ACME clients renew about 30 days ahead, so renewal is failing or the new certificate was not loaded: look at `homeport acme status` (or your ACME client's log) and make the server reload the certificate",
            ));
        }
        if let Some(k) = &a.keys {
            if let Some(e) = &k.error {
                out.push(finding("key_fetch_failed", Severity::Error, S_KEYS, format!("{at}: GET /_matrix/key/v2/server: {e}"), "Serve /_matrix/key/v2/server on the federation listener (the homeserver does; check the reverse proxy routes /_matrix/key/)"));
            } else if k.raw.is_some() {
                for p in &k.problems {
                    let (id, fix) = if p.contains("fetched for") {
                        (
                            "key_server_name_mismatch",
                            "The key server answers for another server: check server_name in the homeserver config and which backend the proxy routes to",
                        )
                    } else if p.contains("expired") {
                        (
                            "key_expired",
                            "The homeserver must publish keys with valid_until_ts in the future; check its clock and key_refresh_interval",
                        )
                    } else if p.contains("signature") || p.contains("signed") {
                        (
                            "key_signature_invalid",
                            "The document must be signed by one of its own verify_keys; something rewrote it, or the key file does not match",
                        )
                    } else {
                        ("key_invalid", "Serve a valid key document")
                    };
                    if p.contains("cannot be checked") {
                        continue;
                    }
                    out.push(finding(
                        id,
                        Severity::Error,
                        S_KEYS,
                        format!("{at}: {p}"),
                        fix,
                    ));
                }
                if let Some(v) = k.valid_until_ts {
                    if v > now && v - now < keys::ONE_HOUR_MS {
                        out.push(finding("key_expires_within_hour", Severity::Warning, S_KEYS, format!("{at}: valid_until_ts is in {} minutes", (v - now) / 60_000), "Publish keys valid for longer (Synapse: key_refresh_interval, default 1d)"));
                    }
                    if v > now + keys::SEVEN_DAYS_MS {
                        out.push(finding("key_validity_over_7_days", Severity::Info, "Server-Server API: servers trust a fetched key for at most 7 days (room v5+)", format!("{at}: valid_until_ts is {} days ahead", (v - now) / 86_400_000), "Nothing breaks; peers clamp to 7 days. Lower key_refresh_interval to make that explicit"));
                    }
                }
                if let Some(diff) = &k.canonical_diff {
                    out.push(finding(
                        "key_not_canonical",
                        Severity::Info,
                        "Matrix appendices, Signing JSON: signed JSON is checked over its canonical form",
                        format!("{at}: {diff}"),
                        "Nothing breaks: verifiers re-encode before checking. Something re-serialised the body on the way (a proxy or a framework); worth knowing if key_signature_invalid also appears",
                    ));
                }
                if let Some(ct) = &k.content_type
                    && !ct.to_ascii_lowercase().starts_with("application/json")
                {
                    out.push(finding(
                        "key_content_type",
                        Severity::Warning,
                        S_KEYS,
                        format!(
                            "{at}: GET /_matrix/key/v2/server answered with Content-Type: {ct}"
                        ),
                        "Serve application/json",
                    ));
                }
            }
        }
        if let Some(v) = &a.version
            && let Some(e) = &v.error
        {
            out.push(finding(
                "version_unreachable",
                Severity::Error,
                "Server-Server API, GET /_matrix/federation/v1/version",
                format!("{at}: {e}"),
                "Route /_matrix/federation/ to the homeserver",
            ));
        }
        if let Some(h) = &a.host_probe {
            let p_ok = h.prescribed_status == Some(200) && h.prescribed_json;
            let a_ok = h.alternative_status == Some(200) && h.alternative_json;
            if h.differs
                && !p_ok
                && a_ok
                && h.prescribed.contains(':')
                && !h.prescribed.ends_with(']')
            {
                out.push(finding(
                    "host_port_rejected_by_proxy",
                    Severity::Error,
                    "Server-Server API: the Host header carries the port written in the server name or m.server",
                    format!(
                        "{at}: with Host: {} the answer is {}{}, with Host: {} it is {} JSON. Federating servers send the first form, so a reverse proxy whose virtual host only matches the bare name (an exact-match Host ACL) is rejecting them",
                        h.prescribed,
                        status_text(h.prescribed_status),
                        if h.prescribed_json { " JSON" } else { " (not JSON)" },
                        h.alternative,
                        status_text(h.alternative_status)
                    ),
                    &proxy_fix(&h.alternative),
                ));
            } else if h.differs && p_ok && !a_ok {
                // Only the prescribed form works: fine today, fragile when
                // the delegation changes which form peers send.
                let prescribed_has_port =
                    h.prescribed.contains(':') && !h.prescribed.ends_with(']');
                out.push(finding(
                    "host_port_rejected_by_proxy",
                    Severity::Warning,
                    "Server-Server API: Host carries a port only when the name or m.server has one",
                    format!("{at}: Host: {} works, Host: {} does not", h.prescribed, h.alternative),
                    if prescribed_has_port {
                        "Fine today; if you ever drop the port from m.server (or move to SRV or 8448), make the proxy accept Host without the port first"
                    } else {
                        "Fine today; if you ever add a port to m.server, make the proxy accept Host with the port first"
                    },
                ));
            }
        }
    }
}

/// `ipv6_not_tested`: the IPv6 addresses (of targets, and of the server
/// name for `.well-known`) this machine has no route to.
fn untested_findings(addrs: &[AddressReport], wk: &[WellKnownAddr], out: &mut Vec<Finding>) {
    let mut not_tested: Vec<String> = addrs
        .iter()
        .filter(|a| untested(a))
        .map(|a| format!("{} ({})", a.addr, a.target))
        .collect();
    not_tested.extend(
        wk.iter()
            .filter(|w| w.no_route)
            .map(|w| format!("{} (.well-known)", w.addr)),
    );
    if not_tested.is_empty() {
        return;
    }
    // When no address at all could be tried, nothing about the server was
    // checked: that must not read as a pass.
    let nothing_tried = !addrs.is_empty() && addrs.iter().all(untested);
    out.push(finding(
        "ipv6_not_tested",
        if nothing_tried {
            Severity::Error
        } else {
            Severity::Info
        },
        S_DISCOVERY,
        format!(
            "this machine has no IPv6 route, so these addresses were not tested: {}{}",
            not_tested.join(", "),
            if nothing_tried {
                "; no address of the server could be tested from here"
            } else {
                ""
            }
        ),
        "Run the check from a machine with IPv6 before concluding that IPv6 works",
    ));
}

/// `address_not_public`: addresses peers connect to (the targets, and the
/// server name's for `.well-known`) in a range Synapse's default
/// `ip_range_blacklist` refuses, unless the client's own address filter
/// allows them explicitly.
fn public_findings(
    client: &FederationClient,
    r: &Resolution,
    wk: &[WellKnownAddr],
    out: &mut Vec<Finding>,
) {
    let mut special = homeport_resolve::AddressFilter::default_deny();
    special
        .allow
        .extend(client.resolver().filter().allow.iter().copied());
    special
        .allow
        .extend(client.config().connect.filter.allow.iter().copied());
    let mut seen: Vec<IpAddr> = Vec::new();
    let mut check = |ip: IpAddr, what: String, out: &mut Vec<Finding>| {
        if seen.contains(&ip) {
            return;
        }
        seen.push(ip);
        if let Some(range) = special.denied_by(ip) {
            out.push(finding(
                "address_not_public",
                Severity::Warning,
                "Server-Server API, Resolving server names; Synapse's default ip_range_blacklist",
                format!(
                    "{ip} ({what}) is in {range}, a private or special-purpose range: servers on the public federation cannot reach it, and Synapse's default ip_range_blacklist refuses it"
                ),
                "Publish public addresses in public DNS; with split-horizon DNS, check against the public view (--dns). In a closed federation on a private network, use --private",
            ));
        }
    };
    if let Ok(d) = &r.outcome {
        for t in &d.targets {
            for ip in &t.addrs {
                check(*ip, t.host.clone(), out);
            }
        }
    }
    for w in wk {
        check(
            w.addr.ip(),
            format!("{}, .well-known", r.server_name.host_str()),
            out,
        );
    }
}

async fn well_known_everywhere(
    client: &FederationClient,
    name: &ServerName,
    out: &mut Vec<Finding>,
) -> Vec<WellKnownAddr> {
    let host = name.host_str().to_ascii_lowercase();
    let port = client.resolver().well_known_port();
    let Ok(addrs) = client.resolver().lookup_addrs(&host).await else {
        return Vec::new();
    };
    let all = addrs.all();
    let mut res = Vec::new();
    for ip in all {
        res.push(one_well_known(
            client,
            name,
            SocketAddr::new(ip, port),
            "/.well-known/matrix/server",
        ));
    }
    let got: Vec<WellKnownAddr> = futures_util::future::join_all(res)
        .await
        .into_iter()
        .map(|(addr, r)| match r {
            Ok((status, body, _)) => {
                let m = if status == 200 {
                    homeport_core::well_known::ServerWellKnown::parse(&body)
                        .ok()
                        .map(|w| w.server.to_string())
                } else {
                    None
                };
                WellKnownAddr {
                    addr,
                    status: Some(status),
                    m_server: m,
                    error: None,
                    no_route: false,
                }
            }
            Err(e) => WellKnownAddr {
                addr,
                status: None,
                m_server: None,
                no_route: e.no_route && addr.is_ipv6(),
                error: Some(e.text),
            },
        })
        .collect();
    // An address this machine cannot reach at all gave no answer to compare.
    let answers: Vec<(Option<u16>, Option<String>)> = got
        .iter()
        .filter(|w| !w.no_route)
        .map(|w| (w.status, w.m_server.clone()))
        .collect();
    if answers.windows(2).any(|w| w[0] != w[1]) {
        let ev = got
            .iter()
            .map(|w| {
                format!(
                    "{} -> {}",
                    w.addr,
                    match (&w.m_server, w.status, &w.error) {
                        (Some(m), _, _) => format!("m.server {m}"),
                        (None, Some(s), _) => format!("HTTP {s}"),
                        (None, None, Some(e)) => e.clone(),
                        _ => "?".into(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        out.push(finding(
            "wellknown_split_brain",
            Severity::Error,
            "Every address of the server name must give the same .well-known answer: peers pick any of them",
            ev,
            "Serve the same /.well-known/matrix/server on every address (IPv4 and IPv6) of the server name, or remove the stale A/AAAA record",
        ));
    }
    got
}

/// Why a fetch got no answer.
struct FetchError {
    /// `phase: what`, as the report shows it.
    text: String,
    /// Nothing was exchanged with the address (no TCP connection): another
    /// address may do better.
    unconnected: bool,
    /// This machine has no route to the address.
    no_route: bool,
}

impl FetchError {
    fn http(text: String) -> Self {
        FetchError {
            text,
            unconnected: false,
            no_route: false,
        }
    }

    fn attempt(a: &connect::Attempt) -> Self {
        FetchError {
            text: format!("{}: {}", a.phase, a.error),
            unconnected: a.phase == "connect" || a.phase == "filter",
            no_route: a.no_route,
        }
    }
}

type WkResult = Result<(u16, Bytes, HeaderMap), FetchError>;

async fn one_well_known(
    client: &FederationClient,
    name: &ServerName,
    addr: SocketAddr,
    path: &str,
) -> (SocketAddr, WkResult) {
    let host = name.host_str().to_ascii_lowercase();
    let tls_name = match homeport_core::DnsName::parse(&host) {
        Ok(d) => Host::Dns(d),
        Err(e) => return (addr, Err(FetchError::http(e.to_string()))),
    };
    let cfg = client.config();
    let conn = match connect::connect_addr(
        addr,
        &host,
        &tls_name,
        &peer_like(&cfg.tls),
        true,
        &cfg.connect,
    )
    .await
    {
        Ok(c) => c,
        Err(a) => return (addr, Err(FetchError::attempt(&a))),
    };
    let (mut s, _) = match open(conn).await {
        Ok(s) => s,
        Err(e) => return (addr, Err(FetchError::http(e))),
    };
    let port = addr.port();
    let hosthdr = if port == 443 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    match exchange(&mut s, Method::GET, path, &hosthdr, &HeaderMap::new(), None).await {
        Ok(x) => (addr, Ok((x.status.as_u16(), x.body, x.headers))),
        Err(e) => (addr, Err(FetchError::http(e))),
    }
}

/// `path` from the server name's addresses in order (IPv6 first), moving
/// on while an address cannot be connected to, as a client does. `None`
/// when the name has no address.
async fn from_the_name(
    client: &FederationClient,
    name: &ServerName,
    path: &str,
) -> Option<WkResult> {
    let host = name.host_str().to_ascii_lowercase();
    let port = client.resolver().well_known_port();
    let addrs = client.resolver().lookup_addrs(&host).await.ok()?;
    let mut last = None;
    for ip in addrs.all() {
        let (_, r) = one_well_known(client, name, SocketAddr::new(ip, port), path).await;
        match r {
            Err(e) if e.unconnected => last = Some(Err(e)),
            r => return Some(r),
        }
    }
    last
}

async fn client_well_known(client: &FederationClient, name: &ServerName, state: &Mutex<Partial>) {
    let mut out = Vec::new();
    let Some(Ok((status, body, headers))) =
        from_the_name(client, name, "/.well-known/matrix/client").await
    else {
        lock(state).client = Some((None, out, true));
        return;
    };
    if status != 200 {
        lock(state).client = Some((Some(json!({"status": status})), out, true));
        return;
    }
    let cors = headers
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match homeport_core::well_known::ClientWellKnown::parse(&body) {
        Ok(c) => {
            if cors.as_deref() != Some("*") {
                out.push(finding(
                    "client_wellknown_cors_missing",
                    Severity::Warning,
                    "Client-Server API, Server Discovery: .well-known/matrix/client needs CORS for web clients",
                    format!("Access-Control-Allow-Origin: {}", cors.as_deref().unwrap_or("(absent)")),
                    "Add Access-Control-Allow-Origin: * to /.well-known/matrix/client",
                ));
            }
            let mut doc =
                json!({"status": status, "m.homeserver": c.homeserver_base_url, "cors": cors});
            // Saved before the base_url check, which may be cut short.
            lock(state).client = Some((Some(doc.clone()), out.clone(), false));
            let (url, answer) = client_versions(client, &c.homeserver_base_url).await;
            let (status, error) = match answer {
                Ok(s) => (Some(s), None),
                Err((s, e)) => (s, Some(e)),
            };
            if let Some(e) = &error {
                out.push(finding(
                    "client_base_url_unreachable",
                    Severity::Warning,
                    "Client-Server API, Server Discovery: clients validate base_url with GET /_matrix/client/versions",
                    format!("GET {url}: {e}"),
                    "Correct m.homeserver.base_url, or route /_matrix/client to the homeserver with a certificate valid for that host",
                ));
            }
            doc["versions"] = json!({"url": url, "status": status, "error": error});
            lock(state).client = Some((Some(doc), out, true));
        }
        Err(e) => {
            out.push(finding(
                "client_wellknown_invalid",
                Severity::Warning,
                "Client-Server API, Server Discovery",
                format!("/.well-known/matrix/client: {e}"),
                "Serve {\"m.homeserver\": {\"base_url\": \"https://matrix.example.org\"}}",
            ));
            lock(state).client = Some((
                Some(json!({"status": status, "error": e.to_string()})),
                out,
                true,
            ));
        }
    }
}

/// `GET <base_url>/_matrix/client/versions`: the URL, and the status of a
/// 200 JSON answer, or the status (if any) and why it is not one.
async fn client_versions(
    client: &FederationClient,
    base_url: &str,
) -> (String, Result<u16, (Option<u16>, String)>) {
    let url = format!("{}/_matrix/client/versions", base_url.trim_end_matches('/'));
    let answer = match tokio::time::timeout(BASE_URL_BOUND, get_url(client, &url)).await {
        Err(_) => Err((None, format!("no answer within {BASE_URL_BOUND:?}"))),
        Ok(Err(e)) => Err((None, e)),
        Ok(Ok(x)) => {
            let status = x.status.as_u16();
            let object = serde_json::from_slice::<Value>(&x.body).is_ok_and(|v| v.is_object());
            if status != 200 {
                Err((Some(status), format!("HTTP {status}")))
            } else if !object {
                Err((
                    Some(status),
                    "HTTP 200, but the body is not a JSON object".to_owned(),
                ))
            } else {
                Ok(status)
            }
        }
    };
    (url, answer)
}

/// GET an http(s) URL with the check's resolver, TLS policy (the
/// certificate must be valid for the URL's host) and address filter; the
/// body capped as every other.
async fn get_url(client: &FederationClient, url: &str) -> Result<Exchange, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("not an http:// or https:// URL".to_owned()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_owned())?;
    let host = ServerName::parse(authority.as_str())
        .map_err(|e| format!("the URL's host {:?} is not valid: {e}", authority.as_str()))?;
    let port = host.port().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let ips = match host.host().ip() {
        Some(ip) => vec![ip],
        None => client
            .resolver()
            .lookup_addrs(host.host_str())
            .await
            .map_err(|e| format!("dns: {e}"))?
            .all(),
    };
    if ips.is_empty() {
        return Err(format!("dns: {} has no A or AAAA records", host.host_str()));
    }
    let cfg = client.config();
    let mut last = String::new();
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        let sender = if https {
            match connect::connect_addr(
                addr,
                host.host_unbracketed(),
                host.host(),
                &peer_like(&cfg.tls),
                true,
                &cfg.connect,
            )
            .await
            {
                Ok(c) => open(c).await.map(|(s, _)| s),
                Err(a) => {
                    let e = FetchError::attempt(&a);
                    if e.unconnected {
                        last = format!("{addr}: {}", e.text);
                        continue;
                    }
                    return Err(format!("{addr}: {}", e.text));
                }
            }
        } else {
            match plain_http(addr, &cfg.connect).await {
                Ok(s) => Ok(s),
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            }
        };
        let mut sender = sender.map_err(|e| format!("{addr}: http: {e}"))?;
        return exchange(
            &mut sender,
            Method::GET,
            path,
            authority.as_str(),
            &HeaderMap::new(),
            None,
        )
        .await
        .map_err(|e| format!("{addr}: {e}"));
    }
    Err(last)
}

/// An HTTP/1.1 connection without TLS (a `base_url` may be `http://`),
/// under the same address filter and connect bound as every connection.
async fn plain_http(addr: SocketAddr, opts: &connect::ConnectOptions) -> Result<Sender, String> {
    if let Some(range) = opts.filter.denied_by(addr.ip()) {
        return Err(format!(
            "filter: {} is in the denied range {range}",
            addr.ip()
        ));
    }
    let tcp = match tokio::time::timeout(opts.connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => {
            return Err(format!(
                "connect: no answer within {:?}",
                opts.connect_timeout
            ));
        }
    };
    let (s, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(async move {
        let _ = c.await;
    });
    Ok(Sender::H1(s))
}

/// `/.well-known/matrix/support`, fetched as the client document is: a
/// non-200 answer is fine (no document), a 200 must follow the schema.
async fn support_well_known(
    client: &FederationClient,
    name: &ServerName,
    out: &mut Vec<Finding>,
) -> Option<Value> {
    let (status, body, _) = from_the_name(client, name, "/.well-known/matrix/support")
        .await?
        .ok()?;
    if status != 200 {
        return Some(json!({"status": status}));
    }
    match homeport_core::well_known::SupportWellKnown::parse(&body) {
        Ok(d) => Some(json!({
            "status": status,
            "contacts": d.contacts.len(),
            "support_page": d.support_page,
        })),
        Err(e) => {
            out.push(finding(
                "support_wellknown_invalid",
                Severity::Info,
                "Client-Server API, Server Discovery: GET /.well-known/matrix/support",
                format!("/.well-known/matrix/support: {e}"),
                "Serve {\"contacts\": [{\"email_address\": \"admin@example.org\", \"role\": \"m.role.admin\"}], \"support_page\": \"https://example.org/help\"} (each contact needs a role and a matrix_id or an email_address), or remove the document",
            ));
            Some(json!({"status": status, "error": e.to_string()}))
        }
    }
}

async fn auth_probe(
    client: &FederationClient,
    signer: &Signer,
    name: &ServerName,
    r: &Resolution,
    out: &mut Vec<Finding>,
) {
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=displayname",
        crate::keys::percent_encode_path_segment(&format!("@homeport-probe:{}", name.as_str()))
    );
    let signed = FederationClient::new(
        client.resolver().clone(),
        client.config().clone(),
        Some(signer.clone()),
    );
    match signed.request_resolved(r, Method::GET, &path, None).await {
        Ok(resp) if resp.status == StatusCode::UNAUTHORIZED => out.push(finding(
            "auth_rejected",
            Severity::Error,
            "Server-Server API, Request Authentication (X-Matrix)",
            format!("a signed GET {path} from {} got HTTP 401: {}", signer.origin, String::from_utf8_lossy(&resp.body).chars().take(200).collect::<String>()),
            "Something between peers and the homeserver changes the Authorization header, the request path or the Host; or the homeserver cannot fetch the origin's keys. Check the proxy passes Authorization and the path unchanged",
        )),
        Ok(_) => {}
        Err(e) => out.push(finding("auth_probe_failed", Severity::Warning, "Server-Server API, Request Authentication", format!("the signed probe failed: {e}"), "See the address findings")),
    }
}

async fn notary_cross_check(
    client: &FederationClient,
    notary: &ServerName,
    name: &ServerName,
    addrs: &[AddressReport],
    out: &mut Vec<Finding>,
) {
    let fetcher = KeyFetcher::new(client.clone(), Arc::new(MemoryKeyStore::default()));
    let nk = match fetcher.fetch_direct(notary).await {
        Ok(n) => n,
        Err(e) => {
            out.push(finding(
                "notary_unreachable",
                Severity::Warning,
                S_KEYS,
                format!("notary {notary}: {e}"),
                "Pick a reachable notary",
            ));
            return;
        }
    };
    let keys: Vec<_> = nk.keys.iter().map(|k| (k.key_id.clone(), k.key)).collect();
    // What the server publishes itself, every address together: key id and
    // public key (when it is one).
    let mut direct: Vec<(String, Option<ed25519_dalek::VerifyingKey>)> = Vec::new();
    for raw in addrs
        .iter()
        .filter_map(|a| a.keys.as_ref())
        .filter_map(|k| k.raw.as_ref())
    {
        let Some(vk) = raw.get("verify_keys").and_then(Value::as_object) else {
            continue;
        };
        for (id, entry) in vk {
            let key = entry
                .get("key")
                .and_then(Value::as_str)
                .and_then(|t| homeport_core::signing::verifying_key_from_base64(t).ok());
            if !direct.iter().any(|(d, k)| d == id && *k == key) {
                direct.push((id.clone(), key));
            }
        }
    }
    match fetcher
        .query_notary(notary, &keys, &[(name.clone(), Vec::new())], now_ms())
        .await
    {
        Ok(entries) => match entries.into_iter().next().map(|e| e.result) {
            Some(Ok(f)) => {
                let b64 =
                    |k: &ed25519_dalek::VerifyingKey| homeport_core::base64::encode(k.as_bytes());
                let via: Vec<(String, ed25519_dalek::VerifyingKey)> = f
                    .keys
                    .iter()
                    .map(|k| (k.key_id.to_string(), k.key))
                    .collect();
                // Another public key under an id the server uses: someone
                // else's key in its name, or a reused key id.
                let conflicts: Vec<String> = via
                    .iter()
                    .filter_map(|(id, key)| {
                        direct
                            .iter()
                            .find(|(d, dk)| d == id && dk.is_some_and(|dk| dk != *key))
                            .and_then(|(_, dk)| dk.as_ref())
                            .map(|dk| {
                                format!(
                                    "{id}: the notary reports {}, the server publishes {}",
                                    b64(key),
                                    b64(dk)
                                )
                            })
                    })
                    .collect();
                let via_ids: Vec<&str> = via.iter().map(|(id, _)| id.as_str()).collect();
                let direct_ids: Vec<&str> = direct.iter().map(|(id, _)| id.as_str()).collect();
                if !conflicts.is_empty() {
                    out.push(finding(
                        "key_notary_mismatch",
                        Severity::Error,
                        S_KEYS,
                        format!("notary {notary}: {}", conflicts.join("; ")),
                        "Never reuse a key id for a new key (homeport keygen picks a new version). An unexplained different key is a security matter: check DNS and TLS interception between the notary and the server",
                    ));
                } else if !direct.is_empty()
                    && (!via_ids.iter().all(|v| direct_ids.contains(v))
                        || !direct_ids.iter().all(|d| via_ids.contains(d)))
                {
                    out.push(finding("key_notary_mismatch", Severity::Warning, S_KEYS, format!("notary {notary} reports {via_ids:?}, the server itself {direct_ids:?}"), "If you rotated keys, keep the old one in old_verify_keys; notaries cache responses, so wait for the notary's cache to expire"));
                }
            }
            Some(Err(e)) => out.push(finding(
                "key_notary_failed",
                Severity::Warning,
                S_KEYS,
                format!("notary {notary}: {e}"),
                "The notary could not vouch for the keys; check it can reach the server",
            )),
            None => {}
        },
        Err(e) => out.push(finding(
            "key_notary_failed",
            Severity::Warning,
            S_KEYS,
            format!("notary {notary}: {e}"),
            "Check the notary",
        )),
    }
}

impl Report {
    /// The `homeport check --json` object.
    pub fn to_json(&self) -> Value {
        json!({
            "server_name": self.server_name.as_str(),
            "ok": self.ok,
            "resolution": self.resolution.to_json(),
            "trace": self.resolution.trace,
            "addresses": self.addresses,
            "well_known_by_address": self.well_known_by_addr,
            "client_well_known": self.client_well_known,
            "support_well_known": self.support_well_known,
            "findings": self.findings,
            "pending": self.pending,
            "duration_ms": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Findings of at least `min` severity.
    pub fn findings_at_least(&self, min: Severity) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.severity >= min)
    }

    /// Whether a finding with `id` is present.
    pub fn has(&self, id: &str) -> bool {
        self.findings.iter().any(|f| f.id == id)
    }

    /// The verdict line.
    pub fn verdict(&self) -> String {
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count();
        if self.ok {
            format!("OK: {} federates ({warnings} warning(s))", self.server_name)
        } else {
            format!(
                "BROKEN: {} does not federate correctly: {errors} error(s), {warnings} warning(s)",
                self.server_name
            )
        }
    }

    /// The matrix-federation-tester `/api/report` rendering.
    pub fn to_federation_tester(&self) -> Value {
        crate::tester_compat::render(self)
    }
}

struct Paint(bool);

impl Paint {
    fn sev(&self, s: Severity) -> String {
        let (code, word) = match s {
            Severity::Error => ("31;1", "ERROR"),
            Severity::Warning => ("33;1", "WARN "),
            Severity::Info => ("36", "INFO "),
        };
        if self.0 {
            format!("\x1b[{code}m{word}\x1b[0m")
        } else {
            word.to_owned()
        }
    }
    fn bold(&self, t: &str) -> String {
        if self.0 {
            format!("\x1b[1m{t}\x1b[0m")
        } else {
            t.to_owned()
        }
    }
}

/// The human rendering (no colour unless `colour`).
pub fn render_human(r: &Report, colour: bool) -> String {
    let p = Paint(colour);
    let mut s = r.resolution.render_human();
    s.push('\n');
    for a in &r.addresses {
        s.push_str(&p.bold(&format!(
            "Address {} ({}, target {})",
            a.addr, a.family, a.target
        )));
        s.push('\n');
        if let Some(e) = &a.error {
            s.push_str(&format!("  failed: {e}\n"));
            continue;
        }
        if let (Some(ms), Some(t)) = (a.connect_ms, &a.tls) {
            s.push_str(&format!(
                "  connect {ms} ms; TLS {} {} ALPN {} (SNI {}) in {} ms\n",
                t.version.as_deref().unwrap_or("?"),
                t.cipher.as_deref().unwrap_or("?"),
                t.alpn.as_deref().unwrap_or("none"),
                t.sni.as_deref().unwrap_or("none"),
                t.handshake_ms
            ));
        }
        if let Some(c) = &a.certificate {
            for (i, x) in c.chain.iter().enumerate() {
                s.push_str(&format!(
                    "  cert[{i}] {} issued by {}; SANs {}; {} days left\n",
                    x.subject_cn.as_deref().unwrap_or(&x.subject),
                    x.issuer_cn.as_deref().unwrap_or(&x.issuer),
                    x.dns_names
                        .iter()
                        .chain(x.ip_addresses.iter())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    x.days_left
                ));
            }
            if c.valid {
                s.push_str(&format!("  certificate valid for {}\n", c.tls_name));
            } else {
                s.push_str(&format!(
                    "  certificate NOT valid for {}: {}\n",
                    c.tls_name,
                    c.error.as_deref().unwrap_or("?")
                ));
                if let Some(v) = &c.valid_for {
                    s.push_str(&format!(
                        "  (it is valid for {v}, the SRV target: peers never check that name)\n"
                    ));
                }
            }
        }
        if let Some(k) = &a.keys {
            match &k.error {
                Some(e) => s.push_str(&format!("  keys: {e}\n")),
                None => s.push_str(&format!(
                    "  keys: server_name {}, {} key(s), {}\n",
                    k.server_name.as_deref().unwrap_or("?"),
                    k.verify_keys.len(),
                    if k.ok {
                        "all checks pass".to_owned()
                    } else {
                        k.problems.join("; ")
                    }
                )),
            }
        }
        if let Some(v) = &a.version {
            match &v.error {
                Some(e) => s.push_str(&format!("  version: {e}\n")),
                None => s.push_str(&format!(
                    "  version: {} {}\n",
                    v.name.as_deref().unwrap_or("?"),
                    v.version.as_deref().unwrap_or("?")
                )),
            }
        }
        if let Some(h) = &a.host_probe {
            s.push_str(&format!(
                "  Host probe: {} -> {}, {} -> {}{}\n",
                h.prescribed,
                answer_text(h.prescribed_status, h.prescribed_error.as_deref()),
                h.alternative,
                answer_text(h.alternative_status, h.alternative_error.as_deref()),
                if h.differs {
                    " (different answers)"
                } else {
                    ""
                }
            ));
        }
    }
    if !r.well_known_by_addr.is_empty() {
        s.push_str(&p.bold(".well-known/matrix/server on every address of the name"));
        s.push('\n');
        for w in &r.well_known_by_addr {
            let what = match (&w.m_server, w.status, &w.error) {
                (Some(m), _, _) => format!("m.server {m}"),
                (None, Some(st), _) => format!("HTTP {st}"),
                (None, None, Some(e)) => e.clone(),
                _ => "?".to_owned(),
            };
            s.push_str(&format!("  {} -> {what}\n", w.addr));
        }
    }
    if !r.pending.is_empty() {
        s.push_str(&p.bold("Not finished when the time limit ran out"));
        s.push('\n');
        for x in &r.pending {
            s.push_str(&format!("  {x}\n"));
        }
    }
    s.push('\n');
    if r.findings.is_empty() {
        s.push_str("No findings.\n");
    }
    for f in &r.findings {
        s.push_str(&format!("{} {}: {}\n", p.sev(f.severity), f.id, f.evidence));
        s.push_str(&format!(
            "      rule: {}\n      fix:  {}\n      see:  {}\n",
            f.rule, f.fix, f.doc
        ));
    }
    s.push('\n');
    s.push_str(&p.bold(&r.verdict()));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str, error: Option<&str>, no_route: bool) -> AddressReport {
        let mut r = blank_address(a.parse().unwrap(), "hs.example.org");
        r.error = error.map(str::to_owned);
        r.no_route = no_route;
        r
    }

    fn ids(addrs: &[AddressReport], wk: &[WellKnownAddr]) -> Vec<(&'static str, Severity)> {
        let mut out = Vec::new();
        address_findings(addrs, &mut out);
        untested_findings(addrs, wk, &mut out);
        out.iter().map(|f| (f.id, f.severity)).collect()
    }

    const NO_ROUTE: &str = "connect: Network is unreachable (os error 101)";
    const REFUSED: &str = "connect: Connection refused (os error 111)";

    #[test]
    fn ipv6_addresses_without_a_route_here_are_not_tested_not_unreachable() {
        // IPv4 works, the IPv6 address cannot be tried from this machine.
        let got = ids(
            &[
                addr("[2001:db8::1]:8448", Some(NO_ROUTE), true),
                addr("203.0.113.1:8448", None, false),
            ],
            &[],
        );
        assert_eq!(got, [("ipv6_not_tested", Severity::Info)]);
        // The same failure from a server that refuses is a finding about
        // the server.
        let got = ids(
            &[
                addr("[2001:db8::1]:8448", Some(REFUSED), false),
                addr("203.0.113.1:8448", None, false),
            ],
            &[],
        );
        assert_eq!(got, [("ipv6_unreachable", Severity::Warning)]);
        // An untested IPv6 address does not make a failing IPv4 one
        // ipv4_unreachable: nothing is known to work.
        let got = ids(
            &[
                addr("[2001:db8::1]:8448", Some(NO_ROUTE), true),
                addr("203.0.113.1:8448", Some(REFUSED), false),
            ],
            &[],
        );
        assert_eq!(
            got,
            [
                ("connect_failed", Severity::Error),
                ("ipv6_not_tested", Severity::Info)
            ]
        );
    }

    #[test]
    fn nothing_testable_from_here_is_not_a_pass() {
        let got = ids(&[addr("[2001:db8::1]:8448", Some(NO_ROUTE), true)], &[]);
        assert_eq!(got, [("ipv6_not_tested", Severity::Error)]);
    }

    #[test]
    fn well_known_addresses_without_a_route_are_listed_and_not_split_brain() {
        let wk = [
            WellKnownAddr {
                addr: "[2001:db8::1]:443".parse().unwrap(),
                status: None,
                m_server: None,
                error: Some(NO_ROUTE.to_owned()),
                no_route: true,
            },
            WellKnownAddr {
                addr: "203.0.113.1:443".parse().unwrap(),
                status: Some(200),
                m_server: Some("hs.example.org".to_owned()),
                error: None,
                no_route: false,
            },
        ];
        let mut out = Vec::new();
        untested_findings(&[addr("203.0.113.5:8448", None, false)], &wk, &mut out);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].evidence.contains("[2001:db8::1]:443 (.well-known)"),
            "{}",
            out[0].evidence
        );
    }

    #[test]
    fn ipv4_unreachable_mirrors_ipv6_unreachable() {
        let got = ids(
            &[
                addr("[2001:db8::1]:8448", None, false),
                addr("203.0.113.1:8448", Some(REFUSED), false),
                addr(
                    "203.0.113.2:8448",
                    Some("connect: no answer within 10s"),
                    false,
                ),
            ],
            &[],
        );
        assert_eq!(
            got,
            [
                ("ipv4_unreachable", Severity::Error),
                ("ipv4_unreachable", Severity::Error)
            ]
        );
        // One IPv4 address works: the failing one is an ordinary failure.
        let got = ids(
            &[
                addr("[2001:db8::1]:8448", None, false),
                addr("203.0.113.1:8448", Some(REFUSED), false),
                addr("203.0.113.2:8448", None, false),
            ],
            &[],
        );
        assert_eq!(got, [("connect_failed", Severity::Warning)]);
    }

    #[test]
    fn an_address_cut_short_by_the_time_limit_is_no_connection_failure() {
        let mut a = addr("203.0.113.1:8448", Some("timeout: ..."), false);
        a.unfinished = true;
        assert_eq!(ids(&[a], &[]), []);
    }

    #[test]
    fn first_difference_from_canonical_json() {
        assert_eq!(first_difference(b"{\"a\":1}", b"{\"a\":1}"), None);
        let d = first_difference(b"{\"a\": 1}", b"{\"a\":1}").unwrap();
        assert!(d.contains("at byte 5:"), "{d}");
        assert!(d.contains(r#"received "{\"a\": 1}""#), "{d}");
        let d = first_difference(b"{\"a\":1}\n", b"{\"a\":1}").unwrap();
        assert!(
            d.contains("at byte 7:") && d.contains("canonical (end)"),
            "{d}"
        );
        // Long bodies are cut around the difference.
        let long = format!("{{\"k\":\"{}\", \"z\":1}}", "x".repeat(100));
        let canon = format!("{{\"k\":\"{}\",\"z\":1}}", "x".repeat(100));
        let d = first_difference(long.as_bytes(), canon.as_bytes()).unwrap();
        assert!(d.contains("…") && d.len() < 200, "{d}");
    }
}
