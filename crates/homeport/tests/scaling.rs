//! Two `homeport serve` processes sharing one PostgreSQL database behind an
//! nginx upstream, all on 127.0.0.x and started by the test:
//! - a notary entry fetched through instance A is served by B from the
//!   store, without B asking the origin;
//! - `kill -9` of A under a steady request load through nginx loses no
//!   stored entry and, with nginx retrying on the other upstream, no
//!   request;
//! - PostgreSQL restarted mid-run: B answers 503 (with Retry-After) while
//!   the database is down and recovers by itself, without a restart;
//! - with a real ACME server (pebble): one order for two processes; `kill -9`
//!   of the process holding the order lock frees it; the survivor orders on
//!   `homeport acme renew`; the killed one, restarted, serves that
//!   certificate without ordering.
//!
//! Needs PostgreSQL's server binaries, nginx and pebble (`.ci/run`
//! installs Debian's `postgresql`, `nginx-light` and `pebble`); without
//! them the tests say so and pass, except under `CI=true`, where that is a
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use homeport_core::signing::{self, SigningKey};
use homeport_server::config::PostgresArgs;
use homeport_server::store::{PgStore, Store};
use homeport_test_support::next_loopback;
use homeport_test_support::pebble::Pebble;
use homeport_test_support::postgres::{self, PgCluster};
use serde_json::{Value, json};

const ORIGINS: usize = 120;
/// Answers through nginx before A is killed, and in all.
const ACKS_BEFORE_KILL: usize = 40;
const ACKS_IN_ALL: usize = 160;
const WORKERS: usize = 6;

fn nginx_bin() -> Option<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    None
}

fn prerequisites() -> Option<PathBuf> {
    if !postgres::available() {
        return None;
    }
    match nginx_bin() {
        Some(n) => Some(n),
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but nginx is missing: .ci/run should have installed nginx-light"
            );
            eprintln!("SKIPPED: nginx not found; install Debian's nginx-light");
            None
        }
    }
}

/// nginx in the foreground, killed on drop.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path, listen: SocketAddr, upstreams: &[SocketAddr]) -> Nginx {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("    server {u} max_fails=1 fail_timeout=5s;\n"))
            .collect();
        let conf = format!(
            "worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
  upstream homeport {{
{servers}  }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://homeport;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_connect_timeout 1s;
      proxy_read_timeout 20s;
      # The notary's POST is safe to repeat: retry it on the other
      # instance when one dies mid-request.
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
"
        );
        let cfg = dir.join("nginx.conf");
        std::fs::write(&cfg, conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&cfg)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            // One process: killing it on drop leaves no orphaned worker.
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Nginx {
            child: Some(child),
            dir: dir.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write_config(
    dir: &Path,
    name: &str,
    o: &Origins,
    listen: SocketAddr,
    pg: &PgCluster,
) -> PathBuf {
    notary_config(dir, name, o, listen, &pg.yaml_database("scaling"))
}

fn pg_args(pg: &PgCluster) -> PostgresArgs {
    PostgresArgs::new(
        pg.user(),
        Some(pg.password()),
        "scaling",
        &pg.host().to_string(),
        pg.port(),
        (1, 2),
    )
}

/// POST a query for `server`; (status, body).
async fn notary_status(addr: SocketAddr, server: &str) -> std::io::Result<(u16, Value)> {
    let body = json!({"server_keys": {server: {}}}).to_string();
    http_json(addr, "POST", "/_matrix/key/v2/query", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_nginx_share_the_store() {
    let Some(nginx) = prerequisites() else { return };
    tokio::time::timeout(Duration::from_secs(240), scenario(nginx))
        .await
        .expect("the two-instance scenario took longer than 240 s");
}

async fn scenario(nginx_bin: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pg = Arc::new(postgres::start().unwrap());
    pg.create_database("scaling").unwrap();
    let o = origins(dir.path(), ORIGINS);
    // Instances of one server share its signing key.
    let notary_key = SigningKey::generate("notary_1").unwrap();
    std::fs::write(
        dir.path().join("notary.signing.key"),
        signing::format_key_file(std::slice::from_ref(&notary_key)),
    )
    .unwrap();
    let addr_of = || {
        let ip = IpAddr::V4(next_loopback());
        SocketAddr::new(ip, common::free_port(ip))
    };
    let (addr_a, addr_b, addr_lb) = (addr_of(), addr_of(), addr_of());
    let cfg_a = write_config(dir.path(), "a", &o, addr_a, &pg);
    let cfg_b = write_config(dir.path(), "b", &o, addr_b, &pg);

    // --check-config reaches the database.
    let check = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["serve", "--check-config", "--config"])
        .arg(&cfg_a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "config OK\n",
        "{err}"
    );
    assert!(
        err.contains("store: psycopg2 postgresql://homeport@"),
        "{err}"
    );

    let mut a = Serve::spawn(&cfg_a, &dir.path().join("a.log"));
    let mut b = Serve::spawn(&cfg_b, &dir.path().join("b.log"));
    a.wait_listening(addr_a).await;
    b.wait_listening(addr_b).await;
    let lb = Nginx::start(
        &nginx_bin,
        &dir.path().join("nginx"),
        addr_lb,
        &[addr_a, addr_b],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr_lb).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start:\n{}",
            lb.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let names: Vec<String> = o.docs.keys().cloned().collect();

    // 1. Fetched through A, served by B from the store.
    let first = &names[0];
    let via_a = notary_query(addr_a, first).await.unwrap().unwrap();
    check_answer(&via_a, first, &o, &notary_key);
    let hits = origin_hits(&o);
    let via_b = notary_query(addr_b, first).await.unwrap().unwrap();
    check_answer(&via_b, first, &o, &notary_key);
    assert_eq!(via_a, via_b, "the same countersigned answer from both");
    assert_eq!(
        hits,
        origin_hits(&o),
        "B answered from the store, not the origin"
    );
    assert_eq!(origin_hits(&o)[&first.to_ascii_lowercase()], 1);

    // 2. Steady load through nginx (misses are store writes, repeats are
    // hits); kill -9 A in the middle.
    let acked: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (acked, failures, next, stop, names) = (
            acked.clone(),
            failures.clone(),
            next.clone(),
            stop.clone(),
            names.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // New names first, then repeats of the answered ones.
                let i = next.fetch_add(1, Ordering::SeqCst);
                let name = names[i % names.len()].clone();
                match notary_query(addr_lb, &name).await {
                    Ok(Some(e)) => {
                        acked.lock().unwrap().insert(name, e);
                    }
                    Ok(None) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{name}: empty answer")),
                    Err(e) => failures.lock().unwrap().push(format!("{name}: {e}")),
                }
            }
        }));
    }
    let wait_acks = |n: usize| {
        let acked = acked.clone();
        async move {
            let start = Instant::now();
            while acked.lock().unwrap().len() < n.min(ORIGINS - 1) {
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "only {} answers",
                    acked.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_acks(ACKS_BEFORE_KILL).await;
    a.sigkill();
    let killed_at = acked.lock().unwrap().len();
    wait_acks(ACKS_IN_ALL).await;
    // And every name at least once more after the kill.
    let until = next.load(Ordering::SeqCst) + ORIGINS;
    while next.load(Ordering::SeqCst) < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let failed = failures.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} requests failed through nginx (A killed after {killed_at} answers): {:?}\nnginx:\n{}\nB:\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        lb.log(),
        b.log_text()
    );
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} answers through nginx, A killed after {killed_at}",
        acked.len()
    );

    // Nothing answered is missing from the store, and every row is the
    // origin's document.
    let store = PgStore::connect(&pg_args(&pg)).await.unwrap();
    store.integrity_check().await.unwrap();
    for (name, entry) in &acked {
        check_answer(entry, name, &o, &notary_key);
        let row = store
            .server_keys(name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} was answered but is not in the store"));
        assert_eq!(&row.json, &o.docs[name], "{name}: stored document");
    }

    // 3. PostgreSQL restarts under B: 503 while it is down, then B
    // recovers by itself.
    pg.blocking(|c| c.stop_immediate()).await.unwrap();
    let (status, body) = notary_status(addr_b, first).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    // The health gauge says so within its 10 s probe interval.
    let up = "homeport_store_up{backend=\"psycopg2\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(addr_b, up).await != Some(0) {
        assert!(Instant::now() < deadline, "homeport_store_up stayed 1");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... and the calls that found it unreachable are counted (the 503s
    // above among them), beside the ones answered before.
    let unavailable = "homeport_store_calls_total{result=\"unavailable\"}";
    assert!(metric(addr_b, unavailable).await.unwrap() >= 1);
    assert!(
        metric(addr_b, "homeport_store_calls_total{result=\"ok\"}")
            .await
            .unwrap()
            >= 1
    );
    // The cp_max of PgCluster::yaml_database.
    assert_eq!(
        metric(addr_b, "homeport_store_connections_max").await,
        Some(8)
    );
    // An instance started while the database is down comes up (503 for
    // what needs the store) and needs no restart either.
    let addr_c = addr_of();
    let cfg_c = write_config(dir.path(), "c", &o, addr_c, &pg);
    let mut c = Serve::spawn(&cfg_c, &dir.path().join("c.log"));
    c.wait_listening(addr_c).await;
    let (status, _) = notary_status(addr_c, first).await.unwrap();
    assert_eq!(status, 503, "{}", c.log_text());
    pg.blocking(|c| c.start_again()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let recovered = loop {
        match notary_status(addr_b, first).await {
            Ok((200, v)) => break v,
            Ok((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("B did not recover: {other:?}\n{}", b.log_text()),
        }
    };
    assert_eq!(
        recovered["server_keys"][0], via_b,
        "served from the store again"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let from_c = loop {
        match notary_status(addr_c, first).await {
            Ok((200, v)) => break v,
            Ok((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("C did not come up: {other:?}\n{}", c.log_text()),
        }
    };
    assert_eq!(from_c["server_keys"][0], via_b, "C serves the shared entry");
    assert_eq!(c.sigterm().await, Some(0));
    // A miss after the restart is stored too.
    let last = names
        .iter()
        .find(|n| !acked.contains_key(*n))
        .unwrap_or(&names[ORIGINS - 1]);
    let e = notary_query(addr_b, last).await.unwrap().unwrap();
    check_answer(&e, last, &o, &notary_key);
    assert!(store.server_keys(last).await.unwrap().is_some());
    assert_eq!(
        b.sigterm().await,
        Some(0),
        "B ran through it all:\n{}",
        b.log_text()
    );
}

// ---- ACME with two processes ----

const ACME_DOMAIN: &str = "hs1.scaling.test";

/// The leaf served at `addr` for SNI `ACME_DOMAIN`, if a trusted one.
async fn served_leaf(addr: SocketAddr, roots: &rustls::RootCertStore) -> Option<Vec<u8>> {
    let cfg = homeport_test_support::client_config_with(roots.clone(), &[b"http/1.1"]).ok()?;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from(ACME_DOMAIN).ok()?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .ok()?
    .ok()?;
    Some(
        tls.get_ref()
            .1
            .peer_certificates()?
            .first()?
            .as_ref()
            .to_vec(),
    )
}

async fn wait_leaf(
    addr: SocketAddr,
    roots: &rustls::RootCertStore,
    not: Option<&[u8]>,
    why: &dyn Fn() -> String,
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = served_leaf(addr, roots).await
            && Some(l.as_slice()) != not
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: no new certificate\n{}",
            why()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /metrics` over plain HTTP; the value of the sample `series`
/// (`name{labels}`), if present.
async fn metric(addr: SocketAddr, series: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let key = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

/// `homeport_acme_orders_total{result}` (0 when absent).
async fn acme_orders(addr: SocketAddr, result: &str) -> u64 {
    metric(
        addr,
        &format!("homeport_acme_orders_total{{result=\"{result}\"}}"),
    )
    .await
    .unwrap_or(0)
}

struct AcmeSite {
    dir: PathBuf,
    ip: std::net::Ipv4Addr,
    tls: SocketAddr,
    metrics: SocketAddr,
    config: PathBuf,
}

fn acme_site(
    root: &Path,
    name: &str,
    ip: std::net::Ipv4Addr,
    http_port: u16,
    pebble: &Pebble,
    pg: &PgCluster,
) -> AcmeSite {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root.join("notary.signing.key"), dir.join("hs.signing.key")).unwrap();
    let tls = SocketAddr::new(IpAddr::V4(ip), common::free_port(IpAddr::V4(ip)));
    let metrics = SocketAddr::new(IpAddr::V4(ip), common::free_port(IpAddr::V4(ip)));
    let cfg = format!(
        "server_name: {ACME_DOMAIN}
signing_key_path: hs.signing.key
tls_certificate_path: tls.crt
tls_private_key_path: tls.key
listeners:
  - port: {tls_port}
    bind_addresses: ['{ip}']
    tls: true
    resources: [{{names: [federation]}}]
  - port: {metrics_port}
    bind_addresses: ['{ip}']
    tls: false
    resources: [{{names: [metrics]}}]
acme:
  enabled: true
  url: {url}
  directory_ca_file: {ca}
  account_key_file: acme_account.key
  reprovision_threshold: 30d
  challenge: http-01
  port: {http_port}
  bind_addresses: ['{ip}']
{db}log:
  level: info
",
        tls_port = tls.port(),
        metrics_port = metrics.port(),
        url = pebble.directory(),
        ca = pebble.wfe_ca_file.display(),
        db = pg.yaml_database("acme_procs"),
    );
    let config = dir.join("homeport.yaml");
    std::fs::write(&config, cfg).unwrap();
    AcmeSite {
        dir,
        ip,
        tls,
        metrics,
        config,
    }
}

/// A port free on every one of `ips` (pebble validates http-01 on one port
/// number, at whichever address the name has).
fn port_free_on(ips: &[std::net::Ipv4Addr]) -> u16 {
    'outer: for _ in 0..100 {
        let p = common::free_port(IpAddr::V4(ips[0]));
        for ip in &ips[1..] {
            if std::net::TcpListener::bind((*ip, p)).is_err() {
                continue 'outer;
            }
        }
        return p;
    }
    panic!("no common free port");
}

/// The `homeport/<pid>` of the session holding an advisory lock, if any.
fn lock_holder(pg: &PgCluster) -> Option<u32> {
    let out = pg
        .psql(
            "acme_procs",
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted",
        )
        .unwrap();
    out.lines()
        .find_map(|l| l.trim().strip_prefix("homeport/")?.parse().ok())
}

/// Two `homeport serve` processes on one PostgreSQL database and a real
/// ACME server (pebble): started together they make one order and serve
/// one certificate; a renewal asked for with `homeport acme renew` goes to
/// one of them; `kill -9` of that one while it holds the order lock (the
/// CA's validation is stuck) frees the lock at once; the survivor then
/// orders; the killed one, restarted, serves the survivor's certificate
/// without ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_pebble_order_once_and_survive_the_orderer_s_kill_9() {
    if !postgres::available() || !homeport_test_support::pebble::available() {
        return;
    }
    tokio::time::timeout(Duration::from_secs(240), acme_scenario())
        .await
        .expect("the ACME two-process scenario took longer than 240 s");
}

async fn acme_scenario() {
    let root = tempfile::tempdir().unwrap();
    let pg = postgres::start().unwrap();
    pg.create_database("acme_procs").unwrap();
    let key = SigningKey::generate("hs_1").unwrap();
    std::fs::write(
        root.path().join("notary.signing.key"),
        signing::format_key_file(std::slice::from_ref(&key)),
    )
    .unwrap();
    let (ip_a, ip_b, ip_hole) = (next_loopback(), next_loopback(), next_loopback());
    let http_port = port_free_on(&[ip_a, ip_b, ip_hole]);
    let dns = homeport_test_support::DnsServer::start(
        IpAddr::V4(next_loopback()),
        homeport_test_support::Zone::new().a(ACME_DOMAIN, ip_a),
    )
    .unwrap();
    let pebble_ip = next_loopback();
    let pebble = Pebble::start(root.path(), pebble_ip, dns.addr(), http_port, 1, None);
    let roots = pebble.root().await;
    let a = acme_site(root.path(), "a", ip_a, http_port, &pebble, &pg);
    let b = acme_site(root.path(), "b", ip_b, http_port, &pebble, &pg);
    let why = || pebble.log_text();
    let mut pa = Serve::spawn(&a.config, &a.dir.join("serve.log"));
    let mut pb = Serve::spawn(&b.config, &b.dir.join("serve.log"));
    pa.wait_listening(a.metrics).await;
    pb.wait_listening(b.metrics).await;

    // 1. One order for two processes, one certificate on both.
    let first = wait_leaf(a.tls, &roots, None, &why).await;
    let first_b = wait_leaf(b.tls, &roots, None, &why).await;
    assert_eq!(first, first_b, "one certificate for both");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok = acme_orders(a.metrics, "ok").await + acme_orders(b.metrics, "ok").await;
    assert_eq!(
        ok,
        1,
        "one order\nA:\n{}\nB:\n{}",
        pa.log_text(),
        pb.log_text()
    );

    // 2. The CA's validation gets stuck (the name points at a socket that
    // accepts and never answers); a forced renewal is asked for.
    let _hole = std::net::TcpListener::bind((ip_hole, http_port)).unwrap();
    dns.zone()
        .update(|z| z.remove(ACME_DOMAIN).a(ACME_DOMAIN, ip_hole))
        .unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["acme", "renew", "--force", "--timeout", "8s", "--config"])
        .arg(&a.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some(pid) = lock_holder(&pg) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "nobody took the order lock\nA:\n{}\nB:\n{}",
            pa.log_text(),
            pb.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (orderer, survivor, survivor_site, orderer_site) = if Some(holder) == pa.pid() {
        (&mut pa, &mut pb, &b, &a)
    } else {
        assert_eq!(Some(holder), pb.pid(), "the lock holder is one of the two");
        (&mut pb, &mut pa, &a, &b)
    };
    orderer.sigkill();
    // The database frees the dead session's lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock_holder(&pg).is_some() {
        assert!(
            Instant::now() < deadline,
            "the killed orderer's lock is still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = cli.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the instance that took the request died"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no instance reported a result within 8s"),
        "{err}"
    );

    // 3. The survivor orders when asked (the name now points at it).
    dns.zone()
        .update(|z| z.remove(ACME_DOMAIN).a(ACME_DOMAIN, survivor_site.ip))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["acme", "renew", "--force", "--timeout", "60s", "--config"])
        .arg(&survivor_site.config)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{stdout}{stderr}\nsurvivor:\n{}",
        survivor.log_text()
    );
    assert!(
        stderr.contains("asked them to renew"),
        "handed to the running instance: {stderr}"
    );
    assert!(stdout.starts_with("renewed"), "{stdout}");
    let second = wait_leaf(survivor_site.tls, &roots, Some(&first), &why).await;
    // `acme status` reads the shared state from the database.
    let out = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["acme", "status", "--json", "--config"])
        .arg(&survivor_site.config)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["state_in"], "database", "{v}");
    assert_eq!(v["serve_running"], true, "{v}");
    assert!(v["last_success"].as_u64().is_some(), "{v}");
    assert!(
        v["account"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{v}"
    );

    // 4. The killed instance, restarted, serves the survivor's certificate
    // at once, without ordering.
    let mut again = Serve::spawn(&orderer_site.config, &orderer_site.dir.join("serve2.log"));
    again.wait_listening(orderer_site.metrics).await;
    assert_eq!(
        served_leaf(orderer_site.tls, &roots).await.as_deref(),
        Some(second.as_slice())
    );
    assert_eq!(acme_orders(orderer_site.metrics, "ok").await, 0);
    assert_eq!(again.sigterm().await, Some(0));
    assert_eq!(survivor.sigterm().await, Some(0));
}
