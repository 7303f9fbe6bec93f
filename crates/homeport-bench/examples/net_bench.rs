//! Discovery and federation-client benchmarks against the in-process peers
//! of homeport-test-support (authoritative DNS, HTTPS servers, a test CA),
//! all on loopback. Prints markdown tables; nothing here asserts a time.
//!
//! ```sh
//! cargo run --release -p homeport-bench --example net_bench            # every section
//! cargo run --release -p homeport-bench --example net_bench -- cached cold cold1 memory hosts rtt keys
//! ```
//!
//! Sections:
//! - `cached`: `Resolver::resolve` for names already resolved (median per
//!   lookup, allocations per lookup), resolvematrix's cache hit beside it;
//! - `cold`: 1,000 distinct names at concurrency 100, fresh resolvers,
//!   homeport and resolvematrix 1.4 on the same DNS and `.well-known`
//!   servers (names/s, and CPU per name split between the benchmark's
//!   threads and the servers'); `NET_BENCH_HOMEPORT_ONLY=1` runs only
//!   homeport's part (for a profiler);
//! - `cold1`: the same mix one name at a time (latency of one discovery);
//! - `memory`: heap growth per cached destination;
//! - `hosts`: the Host header and TLS name each library sends, as the peer
//!   saw them, per discovery step;
//! - `rtt`: signed GET round trips to an in-process HTTPS peer with pooled
//!   connections, homeport's `FederationClient` against reqwest 0.13;
//! - `keys`: `homeport_federation::keys::check_response` on key documents.
//!
//! Memory and allocation counts come from the counting global allocator
//! below. It counts per thread, and only threads of the benchmark's own
//! runtime (and the main thread) are tracked, so the in-process servers'
//! allocations (each runs on its own thread and records every request) are
//! left out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeport_core::ServerName;
use homeport_core::signing::SigningKey;
use homeport_core::xmatrix::RequestToSign;
use homeport_federation::keys::{Via, check_response};
use homeport_federation::{ClientConfig, FederationClient, Signer, TlsPolicy};
use homeport_resolve::{Resolver, ResolverConfig, TrustConfig};
use homeport_test_support::{
    DnsServer, Handler, HttpsServer, Recorded, Scripted, TestCa, Zone, next_loopback,
};
use resolvematrix::resolution::ResolvedDestination;
use resolvematrix::server::MatrixResolver;

// ---------------------------------------------------------------------------
// Counting allocator

struct Counting;

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Bytes allocated minus bytes freed on tracked threads.
static TRACKED_LIVE: AtomicI64 = AtomicI64::new(0);
/// Allocations on tracked threads.
static TRACKED_ALLOCS: AtomicU64 = AtomicU64::new(0);

fn note_alloc(size: usize) {
    let _ = TRACKED.try_with(|t| {
        if t.get() {
            TRACKED_LIVE.fetch_add(size as i64, Ordering::Relaxed);
            TRACKED_ALLOCS.fetch_add(1, Ordering::Relaxed);
            let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
        }
    });
}

fn note_free(size: usize) {
    let _ = TRACKED.try_with(|t| {
        if t.get() {
            TRACKED_LIVE.fetch_sub(size as i64, Ordering::Relaxed);
        }
    });
}

// `GlobalAlloc` is an unsafe trait; this impl only counts and forwards to
// `System` (the bench crate does not take the workspace lints).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn track_this_thread() {
    TRACKED.with(|t| t.set(true));
}

fn thread_allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}

fn live_bytes() -> i64 {
    TRACKED_LIVE.load(Ordering::SeqCst)
}

/// CPU seconds used so far by this process's threads, split into the
/// benchmark's own (main thread and its runtime's workers) and the
/// in-process servers' (threads named `https-…` and `dns-…`), from
/// `/proc/self/task/*/stat`. Threads that have exited are not counted, so
/// take both readings while the same threads live.
fn cpu_split() -> (f64, f64) {
    let tick = 100.0; // CLK_TCK on Linux
    let (mut ours, mut servers) = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    for e in dir.flatten() {
        let path = e.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the ")" that closes the command name: state is the
        // 1st, utime the 12th, stime the 13th.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        if comm.starts_with("https-") || comm.starts_with("dns-") {
            servers += t / tick;
        } else {
            ours += t / tick;
        }
    }
    (ours, servers)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(track_this_thread)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The lab: DNS, one HTTPS server for `.well-known` and federation requests
// for every `*.bench.test` name, and (for step 3.5/6) one on port 8448.

const WK: &str = "/.well-known/matrix/server";
const VERSION: &str = "/_matrix/federation/v1/version";
/// The SRV port the cold-resolution names publish (nothing listens there:
/// resolution never connects to the target).
const SRV_PORT: u16 = 8009;

struct Lab {
    ca: TestCa,
    dns: DnsServer,
    /// `.well-known` (by Host) and the federation endpoint, `*.bench.test`.
    web: HttpsServer,
    web_ip: Ipv4Addr,
    well_knowns: Arc<Mutex<HashMap<String, Scripted>>>,
}

fn host_of(req: &Recorded) -> String {
    let h = req.host.clone().unwrap_or_default();
    let h = match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
        _ => h,
    };
    h.to_ascii_lowercase()
}

fn web_handler(well_knowns: Arc<Mutex<HashMap<String, Scripted>>>) -> Handler {
    let version = Scripted::json(serde_json::json!({
        "server": {"name": "bench peer", "version": "1"}
    }));
    Handler::new(move |req: &Recorded| match req.path() {
        WK => well_knowns
            .lock()
            .unwrap()
            .get(&host_of(req))
            .cloned()
            .unwrap_or_else(Scripted::not_found),
        VERSION => version.clone(),
        _ => Scripted::not_found(),
    })
}

impl Lab {
    fn new(zone: Zone, well_knowns: HashMap<String, Scripted>) -> Lab {
        let ca = TestCa::new("homeport bench CA").unwrap();
        let web_ip = next_loopback();
        let well_knowns = Arc::new(Mutex::new(well_knowns));
        let web = HttpsServer::start(
            (IpAddr::V4(web_ip), 0).into(),
            ca.issue(&["*.bench.test", "bench.test"]).unwrap(),
            web_handler(well_knowns.clone()),
        )
        .unwrap();
        let dns = DnsServer::start(IpAddr::V4(next_loopback()), zone).unwrap();
        Lab {
            ca,
            dns,
            web,
            web_ip,
            well_knowns,
        }
    }

    fn port(&self) -> u16 {
        self.web.addr().port()
    }

    fn resolver_config(&self) -> ResolverConfig {
        let mut cfg = ResolverConfig::default();
        cfg.dns.nameservers = vec![self.dns.addr()];
        cfg.dns.timeout = Duration::from_secs(2);
        cfg.dns.attempts = 2;
        cfg.trust = TrustConfig::only(vec![self.ca.cert_der()]);
        cfg.well_known.port = self.port();
        cfg.well_known.timeout = Duration::from_secs(10);
        cfg.timeout = Duration::from_secs(20);
        cfg
    }

    fn homeport(&self) -> Resolver {
        Resolver::new(self.resolver_config()).unwrap()
    }

    /// A hickory resolver asking only the lab's DNS server (for
    /// resolvematrix, which takes one).
    fn hickory(&self) -> hickory_resolver::TokioResolver {
        use hickory_resolver::config::{
            ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig as HConfig,
        };
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let sa = self.dns.addr();
        let mut udp = ConnectionConfig::udp();
        udp.port = sa.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = sa.port();
        let ns = NameServerConfig::new(sa.ip(), true, vec![udp, tcp]);
        let mut b = hickory_resolver::TokioResolver::builder_with_config(
            HConfig::from_parts(None, vec![], vec![ns]),
            TokioRuntimeProvider::default(),
        );
        let opts = b.options_mut();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        b.build().unwrap()
    }

    fn ca_cert(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_der(self.ca.cert_der().as_ref()).unwrap()
    }

    /// resolvematrix with its DNS on the lab and an HTTP client (for
    /// `.well-known`) that resolves through the lab's DNS, connects to the
    /// lab's HTTPS port (port 443 in the URL is replaced by the resolver's
    /// port, which reqwest keeps when the URL has none) and trusts only the
    /// test CA.
    fn resolvematrix(&self) -> Arc<MatrixResolver> {
        self.resolvematrix_with(reqwest::Client::builder())
    }

    fn resolvematrix_with(&self, builder: reqwest::ClientBuilder) -> Arc<MatrixResolver> {
        let hickory = Arc::new(self.hickory());
        let http = builder
            .dns_resolver(Arc::new(LabDns {
                resolver: hickory.clone(),
                port: self.port(),
            }))
            .tls_certs_only([self.ca_cert()])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Arc::new(
            MatrixResolver::builder()
                .http_client(http)
                .dns_resolver(hickory)
                .build()
                .unwrap(),
        )
    }
}

/// reqwest DNS through the lab's DNS server, answering with the lab's port.
struct LabDns {
    resolver: Arc<hickory_resolver::TokioResolver>,
    port: u16,
}

impl reqwest::dns::Resolve for LabDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let r = self.resolver.clone();
        let port = self.port;
        Box::pin(async move {
            let lookup = r
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: Vec<SocketAddr> =
                lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn wk_json(m_server: &str) -> Scripted {
    Scripted::json(serde_json::json!({ "m.server": m_server }))
}

fn name(s: &str) -> ServerName {
    ServerName::parse(s).unwrap()
}

// ---------------------------------------------------------------------------
// Timing helpers

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_ns(ns: f64) -> String {
    homeport_bench::fmt_ns(ns)
}

// ---------------------------------------------------------------------------
// Cold-resolution names: four setups, in turn.
//
// 0: `.well-known` -> `fN.bench.test:8448` (step 3.2), A fN
// 1: `.well-known` -> `fN.bench.test` (3.3), SRV `_matrix-fed._tcp.fN` -> tN:8009, A tN
// 2: `.well-known` 404, SRV `_matrix-fed._tcp.sN` -> tN:8009 (step 4), A tN
// 3: `.well-known` 404, no SRV (step 6), A sN
//
// Every sN has an A record (the `.well-known` request connects to it).

fn cold_names(
    prefix: &str,
    n: usize,
    ip: Ipv4Addr,
    mut zone: Zone,
    wk: &mut HashMap<String, Scripted>,
) -> (Vec<String>, Zone) {
    let mut names = Vec::new();
    for i in 0..n {
        let s = format!("{prefix}{i}.bench.test");
        let f = format!("{prefix}f{i}.bench.test");
        let t = format!("{prefix}t{i}.bench.test");
        zone = zone.a(&s, ip);
        match i % 4 {
            0 => {
                wk.insert(s.clone(), wk_json(&format!("{f}:8448")));
                zone = zone.a(&f, ip);
            }
            1 => {
                wk.insert(s.clone(), wk_json(&f));
                zone = zone
                    .srv(&format!("_matrix-fed._tcp.{f}"), 10, 5, SRV_PORT, &t)
                    .a(&t, ip);
            }
            2 => {
                zone = zone
                    .srv(&format!("_matrix-fed._tcp.{s}"), 10, 5, SRV_PORT, &t)
                    .a(&t, ip);
            }
            _ => {}
        }
        names.push(s);
    }
    (names, zone)
}

/// What homeport must find for cold name `i` of `prefix`.
fn expected(prefix: &str, i: usize) -> (&'static str, String, String, u16) {
    let s = format!("{prefix}{i}.bench.test");
    let f = format!("{prefix}f{i}.bench.test");
    let t = format!("{prefix}t{i}.bench.test");
    match i % 4 {
        0 => ("3.2", format!("{f}:8448"), f, 8448),
        1 => ("3.3", f, t, SRV_PORT),
        2 => ("4", s, t, SRV_PORT),
        _ => ("6", s.clone(), s, 8448),
    }
}

/// The lab and, per prefix, its names with the zone and `.well-known`
/// documents that serve them. [`ColdLab::install`] puts one prefix's zone in
/// place, so the in-process DNS server (which scans its zone per query)
/// answers every run from a zone of the same size.
struct ColdLab {
    lab: Lab,
    /// Prefix -> its names.
    sets: BTreeMap<String, Vec<String>>,
}

impl ColdLab {
    fn install(&self, prefixes: &[&str]) {
        let mut zone = Zone::new().ttl(3600);
        let mut wk = HashMap::new();
        for p in prefixes {
            let n = self.sets[*p].len();
            zone = cold_names(p, n, self.lab.web_ip, zone, &mut wk).1;
        }
        self.lab.dns.zone().replace(zone).unwrap();
        *self.lab.well_knowns.lock().unwrap() = wk;
        self.lab.dns.clear_queries();
        self.lab.web.clear();
    }

    fn names(&self, prefix: &str) -> &[String] {
        &self.sets[prefix]
    }
}

fn build_cold_lab(sets: &[(&str, usize)]) -> ColdLab {
    let lab = Lab::new(Zone::new(), HashMap::new());
    let ip = lab.web_ip;
    let mut all = BTreeMap::new();
    for (prefix, n) in sets {
        let (names, _) = cold_names(prefix, *n, ip, Zone::new(), &mut HashMap::new());
        all.insert((*prefix).to_owned(), names);
    }
    ColdLab { lab, sets: all }
}

/// DNS queries and `.well-known` TLS handshakes per name since the last
/// `install`.
fn peer_work(cl: &ColdLab, n: usize) -> String {
    let q = cl.lab.dns.queries();
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for lq in &q {
        *by_type.entry(format!("{:?}", lq.rtype)).or_insert(0) += 1;
    }
    let types = by_type
        .iter()
        .map(|(t, c)| format!("{t} {:.2}", *c as f64 / n as f64))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{:.2} DNS queries per name ({types}), {:.2} `.well-known` TLS handshakes per name",
        q.len() as f64 / n as f64,
        cl.lab.web.handshakes().len() as f64 / n as f64
    )
}

async fn homeport_cold(
    resolver: &Resolver,
    names: &[String],
    concurrency: usize,
) -> (Duration, usize, BTreeMap<String, usize>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(names.len());
    for n in names {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let r = resolver.clone();
        let n = name(n);
        tasks.push(tokio::spawn(async move {
            let res = r.resolve(&n).await;
            drop(permit);
            res
        }));
    }
    let mut failures = 0;
    let mut steps = BTreeMap::new();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let took = start.elapsed();
    for r in &results {
        *steps.entry(r.step.as_str().to_owned()).or_insert(0) += 1;
        if r.outcome.is_err() {
            failures += 1;
        }
    }
    (took, failures, steps)
}

fn check_homeport_cold(
    prefix: &str,
    resolver: &Resolver,
    rt: &tokio::runtime::Runtime,
    n: usize,
) -> usize {
    // Every answer (now cached) is the expected one.
    let mut wrong = 0;
    for i in 0..n {
        let (step, host, target, port) = expected(prefix, i);
        let r = rt.block_on(resolver.resolve(&name(&format!("{prefix}{i}.bench.test"))));
        let ok = r.step.as_str() == step
            && r.destination().is_some_and(|d| {
                d.host_header == host && d.targets[0].host == target && d.targets[0].port == port
            });
        if !ok {
            if wrong < 3 {
                eprintln!(
                    "unexpected homeport answer for {prefix}{i}: {:?} {:?}",
                    r.step, r.outcome
                );
            }
            wrong += 1;
        }
    }
    wrong
}

/// resolvematrix: `resolve_server`, plus (`with_addrs`) the A/AAAA lookup of
/// the host it returns, which its reqwest resolver does before a request
/// (homeport's resolution includes it).
async fn resolvematrix_cold(
    rm: &Arc<MatrixResolver>,
    hickory: &Arc<hickory_resolver::TokioResolver>,
    names: &[String],
    concurrency: usize,
    with_addrs: bool,
) -> (Duration, usize, BTreeMap<String, usize>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(names.len());
    for n in names {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let rm = rm.clone();
        let h = hickory.clone();
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let res = rm.resolve_server(&n).await;
            if with_addrs
                && let Ok(r) = &res
                && let ResolvedDestination::Named(host, _) = &r.destination
            {
                let _ = h.lookup_ip(host.as_str()).await;
            }
            drop(permit);
            res
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let took = start.elapsed();
    let mut failures = 0;
    let mut steps = BTreeMap::new();
    for r in &results {
        match r {
            Ok(r) => {
                let step = format!("{}", r.resolution_step);
                let step = step.split(' ').next().unwrap_or("").to_owned();
                *steps.entry(step).or_insert(0) += 1;
            }
            Err(_) => failures += 1,
        }
    }
    (took, failures, steps)
}

fn steps_text(steps: &BTreeMap<String, usize>) -> String {
    steps
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Sections

fn section_cached_and_cold(
    out: &mut String,
    rt: &tokio::runtime::Runtime,
    do_cached: bool,
    do_cold: bool,
) {
    const N: usize = 1000;
    const RUNS: usize = 3;
    let mut sets: Vec<(String, usize)> = Vec::new();
    for run in 0..RUNS {
        sets.push((format!("h{run}-"), N));
        sets.push((format!("r{run}-"), N));
        sets.push((format!("a{run}-"), N));
    }
    let set_refs: Vec<(&str, usize)> = sets.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let cl = build_cold_lab(&set_refs);
    let lab = &cl.lab;
    let _guard = rt.enter();

    // Cold runs: a fresh resolver each time, names never seen before, in
    // the order homeport, resolvematrix, resolvematrix + addresses, so that
    // load on the shared machine spreads over all three.
    let mut h_rates = Vec::new();
    let mut r_rates = Vec::new();
    let mut a_rates = Vec::new();
    let (mut h_cpu, mut r_cpu, mut a_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut notes = Vec::new();
    let mut last_homeport = None;
    for run in 0..RUNS {
        let hp = format!("h{run}-");
        cl.install(&[&hp]);
        let resolver = lab.homeport();
        let c0 = cpu_split();
        let (took, fail, steps) = rt.block_on(homeport_cold(&resolver, cl.names(&hp), 100));
        let c1 = cpu_split();
        h_cpu.push((
            (c1.0 - c0.0) * 1e6 / N as f64,
            (c1.1 - c0.1) * 1e6 / N as f64,
        ));
        let work = peer_work(&cl, N);
        let wrong = check_homeport_cold(&hp, &resolver, rt, N);
        h_rates.push(N as f64 / took.as_secs_f64());
        notes.push(format!(
            "homeport run {run}: {:.0} ms, {fail} failed, {wrong} unexpected; steps {}; {work}",
            took.as_secs_f64() * 1e3,
            steps_text(&steps)
        ));
        last_homeport = Some((resolver, hp));

        if std::env::var_os("NET_BENCH_HOMEPORT_ONLY").is_some() {
            continue;
        }
        let rp = format!("r{run}-");
        cl.install(&[&rp]);
        let rm = lab.resolvematrix();
        let h = Arc::new(lab.hickory());
        let c0 = cpu_split();
        let (took, fail, steps) =
            rt.block_on(resolvematrix_cold(&rm, &h, cl.names(&rp), 100, false));
        let c1 = cpu_split();
        r_cpu.push((
            (c1.0 - c0.0) * 1e6 / N as f64,
            (c1.1 - c0.1) * 1e6 / N as f64,
        ));
        r_rates.push(N as f64 / took.as_secs_f64());
        notes.push(format!(
            "resolvematrix run {run} (resolve_server only): {:.0} ms, {fail} failed; steps {}; {}",
            took.as_secs_f64() * 1e3,
            steps_text(&steps),
            peer_work(&cl, N)
        ));

        let ap = format!("a{run}-");
        cl.install(&[&ap]);
        let rm = lab.resolvematrix();
        let h = Arc::new(lab.hickory());
        let c0 = cpu_split();
        let (took, fail, steps) =
            rt.block_on(resolvematrix_cold(&rm, &h, cl.names(&ap), 100, true));
        let c1 = cpu_split();
        a_cpu.push((
            (c1.0 - c0.0) * 1e6 / N as f64,
            (c1.1 - c0.1) * 1e6 / N as f64,
        ));
        a_rates.push(N as f64 / took.as_secs_f64());
        notes.push(format!(
            "resolvematrix run {run} (+ address lookup): {:.0} ms, {fail} failed; steps {}; {}",
            took.as_secs_f64() * 1e3,
            steps_text(&steps),
            peer_work(&cl, N)
        ));
    }
    if do_cold && !r_rates.is_empty() {
        let hm = median(&mut h_rates.clone());
        let rmed = median(&mut r_rates.clone());
        let am = median(&mut a_rates.clone());
        let _ = writeln!(
            out,
            "### Cold resolution: 1,000 distinct names, concurrency 100\n\n\
             | resolver | names/s (median of {RUNS} runs) | runs | homeport / it (names/s) | client CPU per name (median) | in-process servers' CPU per name (median) |\n|---|---:|---|---:|---:|---:|"
        );
        let runs = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cpu = |v: &[(f64, f64)]| {
            let mut a: Vec<f64> = v.iter().map(|c| c.0).collect();
            let mut b: Vec<f64> = v.iter().map(|c| c.1).collect();
            (median(&mut a), median(&mut b))
        };
        let (hc, hs) = cpu(&h_cpu);
        let (ac, as_) = cpu(&a_cpu);
        let (rc, rs) = cpu(&r_cpu);
        let _ = writeln!(
            out,
            "| homeport `Resolver::resolve` | {hm:.0} | {} | 1.00x | {hc:.0} µs | {hs:.0} µs |",
            runs(&h_rates)
        );
        let _ = writeln!(
            out,
            "| resolvematrix 1.4 `resolve_server` + A/AAAA of its host (same work) | {am:.0} | {} | {:.2}x | {ac:.0} µs | {as_:.0} µs |",
            runs(&a_rates),
            hm / am
        );
        let _ = writeln!(
            out,
            "| resolvematrix 1.4 `resolve_server` only (no address lookup) | {rmed:.0} | {} | {:.2}x | {rc:.0} µs | {rs:.0} µs |",
            runs(&r_rates),
            hm / rmed
        );
        out.push('\n');
        for n in &notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }

    if do_cached {
        let (resolver, hp) = last_homeport.unwrap();
        track_this_thread();
        let one = name(&format!("{hp}1.bench.test"));
        let all: Vec<ServerName> = (0..N)
            .map(|i| name(&format!("{hp}{i}.bench.test")))
            .collect();
        let rm = lab.resolvematrix();
        let h = Arc::new(lab.hickory());
        let rp = format!("r{}-", RUNS - 1);
        cl.install(&[&hp, &rp]);
        let rm_names: Vec<String> = cl.names(&rp).to_vec();
        // Fill resolvematrix's cache with these names.
        rt.block_on(resolvematrix_cold(&rm, &h, &rm_names, 100, false));
        let rm_one = rm_names[1].clone();

        let (t_one, a_one) = rt.block_on(async {
            time_per_op(|i| {
                let _ = i;
                let r = &resolver;
                let n = &one;
                async move {
                    std::hint::black_box(r.resolve(n).await);
                }
            })
            .await
        });
        let (t_all, a_all) = rt.block_on(async {
            time_per_op(|i| {
                let r = &resolver;
                let n = &all[i % all.len()];
                async move {
                    std::hint::black_box(r.resolve(n).await);
                }
            })
            .await
        });
        let (t_rm, a_rm) = rt.block_on(async {
            time_per_op(|i| {
                let _ = i;
                let r = &rm;
                let n = rm_one.as_str();
                async move {
                    std::hint::black_box(r.resolve_server(n).await.unwrap());
                }
            })
            .await
        });
        let (t_rm_all, a_rm_all) = rt.block_on(async {
            time_per_op(|i| {
                let r = &rm;
                let n = rm_names[i % rm_names.len()].as_str();
                async move {
                    std::hint::black_box(r.resolve_server(n).await.unwrap());
                }
            })
            .await
        });
        let _ = writeln!(
            out,
            "### Cached resolution\n\n\
             | lookup | median per lookup | allocations per lookup |\n|---|---:|---:|\n\
             | homeport `Resolver::resolve`, one name again and again | {} | {a_one:.2} |\n\
             | homeport `Resolver::resolve`, 1,000 cached names in turn | {} | {a_all:.2} |\n\
             | resolvematrix `resolve_server` cache hit, one name | {} | {a_rm:.2} |\n\
             | resolvematrix `resolve_server` cache hit, 1,000 names in turn | {} | {a_rm_all:.2} |\n",
            fmt_ns(t_one),
            fmt_ns(t_all),
            fmt_ns(t_rm),
            fmt_ns(t_rm_all),
        );
    }
}

/// Median ns per call of `f` (200 batches of 2,000 calls, after 2,000
/// warm-up calls) and allocations per call on this thread.
async fn time_per_op<F, Fut>(mut f: F) -> (f64, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const BATCH: usize = 2000;
    let mut i = 0;
    for _ in 0..BATCH {
        f(i).await;
        i += 1;
    }
    let mut per = Vec::new();
    let allocs_before = thread_allocs();
    let mut calls = 0u64;
    for _ in 0..200 {
        let t = Instant::now();
        for _ in 0..BATCH {
            f(i).await;
            i += 1;
        }
        per.push(t.elapsed().as_secs_f64() * 1e9 / BATCH as f64);
        calls += BATCH as u64;
    }
    let allocs = (thread_allocs() - allocs_before) as f64 / calls as f64;
    (median(&mut per), allocs)
}

/// Cold resolution one name at a time: the latency of one discovery.
fn section_cold_sequential(out: &mut String, rt: &tokio::runtime::Runtime) {
    const N: usize = 200;
    let cl = build_cold_lab(&[("q-", N), ("qr-", N)]);
    let _guard = rt.enter();
    cl.install(&["q-"]);
    let resolver = cl.lab.homeport();
    let (took, fail, _) = rt.block_on(homeport_cold(&resolver, cl.names("q-"), 1));
    let h_ms = took.as_secs_f64() * 1e3 / N as f64;
    let h_work = peer_work(&cl, N);
    cl.install(&["qr-"]);
    let rm = cl.lab.resolvematrix();
    let h = Arc::new(cl.lab.hickory());
    let (rtook, rfail, _) = rt.block_on(resolvematrix_cold(&rm, &h, cl.names("qr-"), 1, true));
    let r_ms = rtook.as_secs_f64() * 1e3 / N as f64;
    let _ = writeln!(
        out,
        "### Cold resolution, one name at a time ({N} names, same mix)\n\n\
         | resolver | mean latency per name | failed | peer work |\n|---|---:|---:|---|\n\
         | homeport | {h_ms:.2} ms | {fail} | {h_work} |\n\
         | resolvematrix 1.4 + A/AAAA of its host | {r_ms:.2} ms | {rfail} | {} |\n",
        peer_work(&cl, N)
    );
}

/// Heap bytes a cached `Resolution` holds (strings and vectors it owns;
/// the `.well-known` report is shared with that cache and left out).
fn resolution_heap(r: &homeport_resolve::Resolution) -> (usize, usize) {
    let trace: usize = r.trace.capacity() * std::mem::size_of::<homeport_resolve::TraceEvent>()
        + r.trace.iter().map(|e| e.message.capacity()).sum::<usize>();
    let mut rest = r.srv.capacity() * std::mem::size_of::<homeport_resolve::SrvReport>()
        + r.srv
            .iter()
            .map(|s| {
                s.name.capacity()
                    + s.error.as_ref().map_or(0, String::capacity)
                    + s.records.capacity() * std::mem::size_of::<homeport_resolve::srv::SrvRecord>()
                    + s.records.iter().map(|x| x.target.capacity()).sum::<usize>()
            })
            .sum::<usize>();
    if let Ok(d) = &r.outcome {
        rest += d.host_header.capacity()
            + d.targets.capacity() * std::mem::size_of::<homeport_resolve::Target>()
            + d.targets
                .iter()
                .map(|t| {
                    t.host.capacity()
                        + t.addrs.capacity() * 17
                        + t.cname.as_ref().map_or(0, String::capacity)
                })
                .sum::<usize>();
    }
    (trace, rest)
}

fn section_memory(out: &mut String, rt: &tokio::runtime::Runtime) {
    const N: usize = 1000;
    const WARM: usize = 200;
    let sets = ["mw-", "m-", "rw-", "rm-", "pw-", "pm-"];
    let cl = build_cold_lab(&[
        ("mw-", WARM),
        ("m-", N),
        ("rw-", WARM),
        ("rm-", N),
        ("pw-", WARM),
        ("pm-", N),
    ]);
    cl.install(&sets);
    let lab = &cl.lab;
    let names: BTreeMap<&str, &[String]> = sets.iter().map(|p| (*p, cl.names(p))).collect();
    let _guard = rt.enter();
    track_this_thread();
    let settle = || std::thread::sleep(Duration::from_millis(300));

    // homeport. A resolution whose `.well-known` lookup failed (404) is
    // cached only from the second resolve on (the first one had a fresh
    // failure, not a cached one), so every name is resolved twice: the
    // steady state of a server that talks to these destinations.
    let resolver = lab.homeport();
    rt.block_on(homeport_cold(&resolver, names["mw-"], 100));
    rt.block_on(homeport_cold(&resolver, names["mw-"], 100));
    settle();
    let before = live_bytes();
    let (_, fail, _) = rt.block_on(homeport_cold(&resolver, names["m-"], 100));
    let after_first = live_bytes();
    let cached_after_first = resolver.cached_resolutions();
    rt.block_on(homeport_cold(&resolver, names["m-"], 100));
    settle();
    let after = live_bytes();
    let cached = resolver.cached_resolutions();
    let (mut trace_b, mut rest_b) = (0usize, 0usize);
    for n in names["m-"] {
        let r = rt.block_on(resolver.resolve(&name(n)));
        let (t, rest) = resolution_heap(&r);
        trace_b += t;
        rest_b += rest;
    }
    for n in names["m-"] {
        resolver.forget(&name(n));
    }
    settle();
    let after_forget = live_bytes();
    let per = (after - before) as f64 / N as f64;
    let per_first = (after_first - before) as f64 / N as f64;
    let per_components = (after_forget - before) as f64 / N as f64;

    // resolvematrix, as built for the cold runs, and with its `.well-known`
    // client keeping no idle connections.
    let mut rm_rows = String::new();
    for (label, warm, set, pool) in [
        (
            "resolvematrix 1.4, default `.well-known` client (idle connections pooled 90 s)",
            "rw-",
            "rm-",
            None,
        ),
        (
            "resolvematrix 1.4, `.well-known` client with `pool_max_idle_per_host(0)`",
            "pw-",
            "pm-",
            Some(0usize),
        ),
    ] {
        let mut b = reqwest::Client::builder();
        if let Some(n) = pool {
            b = b.pool_max_idle_per_host(n);
        }
        let rm = lab.resolvematrix_with(b);
        let h = Arc::new(lab.hickory());
        rt.block_on(resolvematrix_cold(&rm, &h, names[warm], 100, false));
        settle();
        let rbefore = live_bytes();
        let (_, rfail, _) = rt.block_on(resolvematrix_cold(&rm, &h, names[set], 100, false));
        settle();
        let rafter = live_bytes();
        let _ = writeln!(
            rm_rows,
            "| {label} ({rfail} failed) | {:.0} |",
            (rafter - rbefore) as f64 / N as f64
        );
        drop(rm);
    }
    let _ = writeln!(
        out,
        "### Memory per cached destination\n\n\
         Heap growth on the benchmark's threads after resolving {N} new names (after {WARM} warm-up names), divided by {N}. \
         The names are the cold-resolution mix (steps 3.2, 3.3, 4 and 6 in equal parts).\n\n\
         | | bytes per destination |\n|---|---:|\n\
         | homeport after one resolve of each name ({fail} failed; {} of {N} in the resolution cache: the 404 `.well-known` half is not yet) | {per_first:.0} |\n\
         | homeport after a second resolve ({} resolutions cached): resolution cache + DNS and `.well-known` caches | {per:.0} |\n\
         | of which the resolution cache entries (difference after `forget`) | {:.0} |\n\
         | of which, inside those entries, the trace (strings and vector, counted from the `Resolution`s) | {:.0} |\n\
         | of which, inside those entries, targets, Host header, SRV reports | {:.0} |\n\
         | of which DNS and `.well-known` caches (left after `forget`) | {per_components:.0} |\n\
         {rm_rows}",
        cached_after_first - WARM,
        cached - WARM,
        per - per_components,
        trace_b as f64 / N as f64,
        rest_b as f64 / N as f64,
    );
    drop(resolver);
}

/// Host header and TLS name per discovery step, as the peer saw them.
fn section_hosts(out: &mut String, rt: &tokio::runtime::Runtime) {
    let _guard = rt.enter();
    // A second HTTPS server on port 8448 for steps 3.5 and 6.
    let ca_probe = Lab::new(Zone::new(), HashMap::new());
    let lab = ca_probe;
    let p = lab.port();
    let ip = lab.web_ip;
    let on_8448 = HttpsServer::start_on_any_loopback(
        8448,
        lab.ca.issue(&["*.bench.test"]).unwrap(),
        web_handler(lab.well_knowns.clone()),
    )
    .unwrap();
    let ip8448 = match on_8448.addr().ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("v4"),
    };
    let explicit = format!("explicit.bench.test:{p}");
    let zone = Zone::new()
        .a("explicit.bench.test", ip)
        .a("wkport.bench.test", ip)
        .a("wksrv.bench.test", ip)
        .a("wknosrv.bench.test", ip)
        .a("srv.bench.test", ip)
        .a("legacy.bench.test", ip)
        .a("t.bench.test", ip)
        .a("d.bench.test", ip)
        .a("d2.bench.test", ip8448)
        .a("plain.bench.test", ip8448)
        .srv("_matrix-fed._tcp.d.bench.test", 10, 5, p, "t.bench.test")
        .srv("_matrix-fed._tcp.srv.bench.test", 10, 5, p, "t.bench.test")
        .srv("_matrix._tcp.legacy.bench.test", 10, 5, p, "t.bench.test");
    lab.dns.zone().replace(zone).unwrap();
    {
        let mut wk = lab.well_knowns.lock().unwrap();
        wk.insert(
            "wkport.bench.test".into(),
            wk_json(&format!("t.bench.test:{p}")),
        );
        wk.insert("wksrv.bench.test".into(), wk_json("d.bench.test"));
        wk.insert("wknosrv.bench.test".into(), wk_json("d2.bench.test"));
    }
    let cases: Vec<(&str, String, &str)> = vec![
        ("2", explicit.clone(), "explicit port"),
        ("3.2", "wkport.bench.test".into(), ".well-known with a port"),
        (
            "3.3",
            "wksrv.bench.test".into(),
            ".well-known without a port, then SRV `_matrix-fed` with a port",
        ),
        (
            "3.5",
            "wknosrv.bench.test".into(),
            ".well-known without a port, no SRV (port 8448)",
        ),
        (
            "4",
            "srv.bench.test".into(),
            "no .well-known, SRV `_matrix-fed` with a port",
        ),
        (
            "5",
            "legacy.bench.test".into(),
            "no .well-known, legacy SRV `_matrix` with a port",
        ),
        (
            "6",
            "plain.bench.test".into(),
            "no .well-known, no SRV (port 8448)",
        ),
    ];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(lab.ca.cert_der()).unwrap();
    let mut resolver_cfg = lab.resolver_config();
    resolver_cfg.default_port = 8448;
    let client = FederationClient::new(
        Resolver::new(resolver_cfg).unwrap(),
        ClientConfig::new(TlsPolicy::new(roots)),
        None,
    );
    let rm = lab.resolvematrix();
    let rm_client = rm
        .create_client_with_builder(
            reqwest::Client::builder()
                .tls_certs_only([lab.ca_cert()])
                .timeout(Duration::from_secs(10)),
        )
        .unwrap();
    let seen = |before_web: usize, before_8448: usize| -> String {
        let mut reqs: Vec<Recorded> = lab.web.requests().split_off(before_web);
        reqs.extend(on_8448.requests().split_off(before_8448));
        reqs.into_iter()
            .filter(|r| r.path() == VERSION)
            .map(|r| {
                format!(
                    "Host `{}`, SNI `{}`, port {}",
                    r.host.clone().unwrap_or_default(),
                    r.sni.clone().unwrap_or_else(|| "(none)".into()),
                    r.local.port()
                )
            })
            .next()
            .unwrap_or_else(|| "(no request arrived)".into())
    };
    let _ = writeln!(
        out,
        "### Host header and TLS name by discovery step (what the peer received)\n\n\
         `.well-known` is served on the lab's HTTPS port ({p}) for both libraries; SRV records point at that port; \
         steps 3.5 and 6 connect to a second server on port 8448.\n\n\
         | step | setup | spec: Host / TLS name | homeport sent | resolvematrix 1.4 sent |\n|---|---|---|---|---|"
    );
    for (step, server, what) in &cases {
        let (bw, b8) = (lab.web.request_count(), on_8448.request_count());
        let sn = name(server);
        let h = rt.block_on(client.get(&sn, VERSION));
        let h_text = match &h {
            Ok(_) => seen(bw, b8),
            Err(e) => format!("error: {e}"),
        };
        let (bw, b8) = (lab.web.request_count(), on_8448.request_count());
        let r_text = rt.block_on(async {
            match rm.resolve_server(server).await {
                Ok(res) => {
                    let url = format!("{}{VERSION}", res.base_url());
                    match rm_client.get(&url).send().await {
                        Ok(resp) => {
                            let _ = resp.bytes().await;
                            format!(
                                "{} (step {})",
                                seen(bw, b8),
                                res.resolution_step
                                    .to_string()
                                    .split(' ')
                                    .next()
                                    .unwrap_or("")
                            )
                        }
                        Err(e) => format!("request to {url} failed: {e}"),
                    }
                }
                Err(e) => format!("resolution failed: {e}"),
            }
        });
        let spec = match *step {
            "2" => format!("`{explicit}` / `explicit.bench.test`"),
            "3.2" => format!("`t.bench.test:{p}` / `t.bench.test`"),
            "3.3" => "`d.bench.test` / `d.bench.test`".to_owned(),
            "3.5" => "`d2.bench.test` / `d2.bench.test`".to_owned(),
            "4" => "`srv.bench.test` / `srv.bench.test`".to_owned(),
            "5" => "`legacy.bench.test` / `legacy.bench.test`".to_owned(),
            _ => "`plain.bench.test` / `plain.bench.test`".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {step} | `{server}`: {what} | {spec} | {h_text} | {r_text} |"
        );
    }
    out.push('\n');
}

/// Signed GET round trips: homeport's client against reqwest.
fn section_rtt(out: &mut String, rt: &tokio::runtime::Runtime) {
    let _guard = rt.enter();
    let lab = Lab::new(Zone::new(), HashMap::new());
    let p = lab.port();
    lab.dns
        .zone()
        .replace(Zone::new().a("peer.bench.test", lab.web_ip))
        .unwrap();
    let dest = name(&format!("peer.bench.test:{p}"));
    let origin = name("origin.bench.test");
    let key = SigningKey::from_seed(
        homeport_core::signing::KeyId::ed25519("a_bnch").unwrap(),
        [9u8; 32],
    );
    let signer = Signer {
        origin: origin.clone(),
        keys: vec![key.clone()],
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(lab.ca.cert_der()).unwrap();
    let url = format!("https://peer.bench.test:{p}{VERSION}");
    let host = format!("peer.bench.test:{p}");
    const SECS: f64 = 3.0;

    let mut table = String::from(
        "| client | HTTP | concurrency | requests/s | p50 | p99 | TLS handshakes during the run |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for http1_only in [false, true] {
        let http = if http1_only { "HTTP/1.1" } else { "h2 (ALPN)" };
        for conc in [1usize, 64] {
            // homeport
            let mut policy = TlsPolicy::new(roots.clone());
            if http1_only {
                policy.alpn = vec![b"http/1.1".to_vec()];
            }
            let mut cfg = ClientConfig::new(policy);
            cfg.request_timeout = Duration::from_secs(10);
            let client = FederationClient::new(lab.homeport(), cfg, Some(signer.clone()));
            let hp = {
                let client = client.clone();
                let dest = dest.clone();
                move || {
                    let client = client.clone();
                    let dest = dest.clone();
                    async move {
                        let r = client.get(&dest, VERSION).await.unwrap();
                        assert_eq!(r.status, 200);
                        std::hint::black_box(r.body.len());
                    }
                }
            };
            let (rate, p50, p99, hs) = rt.block_on(run_load(&lab.web, conc, SECS, hp));
            let _ = writeln!(
                table,
                "| homeport `FederationClient::get` (resolve from cache, sign X-Matrix, pooled) | {http} | {conc} | {rate:.0} | {} | {} | {hs} |",
                fmt_ns(p50 as f64),
                fmt_ns(p99 as f64)
            );
            check_host(&lab.web, &host);
            drop(client);

            // reqwest, same signed request
            let mut b = reqwest::Client::builder()
                .resolve("peer.bench.test", lab.web.addr())
                .tls_certs_only([lab.ca_cert()])
                .timeout(Duration::from_secs(10));
            if http1_only {
                b = b.http1_only();
            }
            let rq = b.build().unwrap();
            let rq_fn = {
                let rq = rq.clone();
                let url = url.clone();
                let host = host.clone();
                let key = key.clone();
                let origin = origin.clone();
                let dest = dest.clone();
                move || {
                    let rq = rq.clone();
                    let url = url.clone();
                    let host = host.clone();
                    let key = key.clone();
                    let origin = origin.clone();
                    let dest = dest.clone();
                    async move {
                        let x = RequestToSign {
                            method: "GET",
                            uri: VERSION,
                            origin: &origin,
                            destination: &dest,
                            content: None,
                        }
                        .sign(&key)
                        .unwrap();
                        let resp = rq
                            .get(&url)
                            .header(http::header::HOST, host.as_str())
                            .header(http::header::AUTHORIZATION, x.to_header_value())
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(resp.status(), 200);
                        std::hint::black_box(resp.bytes().await.unwrap().len());
                    }
                }
            };
            let (rate, p50, p99, hs) = rt.block_on(run_load(&lab.web, conc, SECS, rq_fn));
            let _ = writeln!(
                table,
                "| reqwest 0.13 (`.resolve()` pinned address, explicit Host, same X-Matrix signing) | {http} | {conc} | {rate:.0} | {} | {} | {hs} |",
                fmt_ns(p50 as f64),
                fmt_ns(p99 as f64)
            );
            check_host(&lab.web, &host);
        }
    }
    let _ = writeln!(
        out,
        "### Signed GET round trips (`GET {VERSION}`, in-process HTTPS peer, pooled connections)\n\n\
         Each configuration runs {SECS:.0} s after a warm-up; latency is per request as the caller sees it.\n\n{table}"
    );
}

fn check_host(web: &HttpsServer, host: &str) {
    let reqs = web.requests();
    let bad = reqs
        .iter()
        .filter(|r| r.path() == VERSION && r.host.as_deref() != Some(host))
        .count();
    let signed = reqs
        .iter()
        .filter(|r| {
            r.path() == VERSION
                && r.header("authorization")
                    .is_some_and(|a| a.starts_with("X-Matrix "))
        })
        .count();
    let total = reqs.iter().filter(|r| r.path() == VERSION).count();
    assert_eq!(bad, 0, "requests with another Host than {host}");
    assert_eq!(signed, total, "unsigned requests");
    web.clear();
}

/// Runs `conc` workers calling `f` for `secs` seconds (after 1 s of
/// warm-up); returns requests/s, p50 and p99 (ns) and the TLS handshakes
/// the server saw during the measured part.
async fn run_load<F, Fut>(web: &HttpsServer, conc: usize, secs: f64, f: F) -> (f64, u64, u64, usize)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let phase = |dur: Duration, record: bool| {
        let f = f.clone();
        async move {
            let deadline = Instant::now() + dur;
            let mut tasks = Vec::new();
            for _ in 0..conc {
                let f = f.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        f().await;
                        if record {
                            lat.push(t.elapsed().as_nanos() as u64);
                        }
                    }
                    lat
                }));
            }
            let start = Instant::now();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            (all, start.elapsed())
        }
    };
    phase(Duration::from_secs(1), false).await;
    web.clear();
    let hs_before = web.handshakes().len();
    let (mut lat, took) = phase(Duration::from_secs_f64(secs), true).await;
    let hs = web.handshakes().len() - hs_before;
    lat.sort_unstable();
    let rate = lat.len() as f64 / took.as_secs_f64();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99), hs)
}

fn section_keys(out: &mut String) {
    let server = name(homeport_bench::SERVER);
    let now = homeport_bench::VALID_UNTIL_TS - 86_400_000;
    let two = homeport_bench::key_document();
    let two_text = serde_json::to_vec(&two).unwrap();
    // A Synapse-like response: one current key, signed by it.
    let key = homeport_bench::bench_key();
    let one = homeport_core::keys::ServerKeysBuilder::new(&server, homeport_bench::VALID_UNTIL_TS)
        .verify_key(&key)
        .sign(&[&key])
        .unwrap();
    let one_text = serde_json::to_vec(&one).unwrap();
    let mut rows = String::new();
    for (label, text) in [
        ("1 key, 1 signature (Synapse's shape)", &one_text),
        (
            "2 keys + 4 old keys, 2 signatures (`homeport_bench::key_document`)",
            &two_text,
        ),
    ] {
        let fetched = check_response(
            serde_json::from_slice(text).unwrap(),
            &server,
            now,
            Via::Direct,
        )
        .unwrap();
        let verified = fetched.keys.len();
        let parse_check = median_batches(|| {
            let v: serde_json::Value = serde_json::from_slice(std::hint::black_box(text)).unwrap();
            std::hint::black_box(check_response(v, &server, now, Via::Direct).unwrap());
        });
        let parsed: serde_json::Value = serde_json::from_slice(text).unwrap();
        let clone_check = median_batches(|| {
            std::hint::black_box(
                check_response(parsed.clone(), &server, now, Via::Direct).unwrap(),
            );
        });
        let clone_only = median_batches(|| {
            std::hint::black_box(parsed.clone());
        });
        let _ = writeln!(
            rows,
            "| {label}, {} bytes, {verified} keys trusted | {} | {} |",
            text.len(),
            fmt_ns(parse_check),
            fmt_ns(clone_check - clone_only),
        );
    }
    let _ = writeln!(
        out,
        "### Key verification of a fetched response\n\n\
         | response | parse + `check_response` | `check_response` on a parsed value |\n|---|---:|---:|\n{rows}"
    );
}

/// Median ns per call over 100 batches of ~2 ms.
fn median_batches(mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..20 {
        f();
    }
    let per = t.elapsed().as_secs_f64() / 20.0;
    let n = ((2e-3 / per) as usize).max(1);
    let mut v = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        v.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
    }
    median(&mut v)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    track_this_thread();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let rt = runtime();
    let mut out = String::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(out, "<!-- load average at start: {} -->\n", load.trim());
    if want("cached") || want("cold") {
        section_cached_and_cold(&mut out, &rt, want("cached"), want("cold"));
        print!("{out}");
        out.clear();
    }
    if want("cold1") {
        section_cold_sequential(&mut out, &rt);
        print!("{out}");
        out.clear();
    }
    if want("memory") {
        section_memory(&mut out, &rt);
        print!("{out}");
        out.clear();
    }
    if want("hosts") {
        section_hosts(&mut out, &rt);
        print!("{out}");
        out.clear();
    }
    if want("rtt") {
        section_rtt(&mut out, &rt);
        print!("{out}");
        out.clear();
    }
    if want("keys") {
        section_keys(&mut out);
        print!("{out}");
        out.clear();
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("<!-- load average at end: {} -->", load.trim());
}
