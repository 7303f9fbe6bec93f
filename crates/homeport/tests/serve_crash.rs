//! Crash safety of `homeport serve`'s notary store: `kill -9` during a
//! burst of notary writes, restart on the same config, and check that the
//! SQLite store passes its integrity check, that every answer a client got
//! before the kill is in the store (the notary stores before answering),
//! and that the restarted notary serves the same, verifiable answers from
//! the store without asking the origins again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeport_core::ServerName;
use homeport_core::keys::{ServerKeysBuilder, check_server_keys};
use homeport_core::signing::{self, SigningKey};
use homeport_server::store::{SqliteStore, Store};
use homeport_test_support::{
    DnsServer, Handler, HttpsServer, Recorded, Scripted, TestCa, Zone, next_loopback,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Origins the notary is asked about.
const ORIGINS: usize = 200;
/// Rounds that end with a `kill -9`; a final round then ends with SIGTERM.
const CRASH_ROUNDS: usize = 3;
/// Acknowledged answers per crash round before the kill.
const ACKS_BEFORE_KILL: usize = 35;
/// Concurrent client connections during a burst.
const CONCURRENCY: usize = 24;
const NOTARY: &str = "notary.test";
const DAY: u64 = 86_400_000;

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- the serve process ----

/// A running `homeport serve`; killed (SIGKILL) when dropped, so a failing
/// assertion never leaves it behind.
struct Serve {
    child: Option<Child>,
    log: PathBuf,
}

impl Serve {
    fn spawn(config: &Path, log: &Path) -> Serve {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_homeport"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Serve {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `addr` accepts connections; panic (with serve's log) if
    /// the process exits or 20 s pass.
    async fn wait_listening(&mut self, addr: SocketAddr) {
        let start = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "homeport serve exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "homeport serve did not start listening on {addr}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `kill -9` and reap.
    fn sigkill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), None, "killed by a signal, not exited");
    }

    /// SIGTERM, then the exit code (bounded by 20 s).
    async fn sigterm(&mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not exit after SIGTERM:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---- a minimal HTTP/1.1 client (plain TCP) ----

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn dechunk(mut body: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Parse a complete response; a truncated one (the server died while
/// sending it) is an error.
fn parse_response(buf: &[u8]) -> io::Result<(u16, Value)> {
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete response head"))?;
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head not UTF-8"))?;
    let rest = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| bad("content-length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err(bad(format!("truncated body: {} of {n}", rest.len())));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    let v = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    Ok((status, v))
}

async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> io::Result<(u16, Value)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {NOTARY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        parse_response(&buf)
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

/// Ask the notary about one server; the single entry answered, if any.
async fn notary_query(addr: SocketAddr, server: &str) -> io::Result<Option<Value>> {
    let body = json!({"server_keys": {server: {}}}).to_string();
    let (status, v) = http_json(addr, "POST", "/_matrix/key/v2/query", &body).await?;
    if status != 200 {
        return Err(bad(format!("status {status}: {v}")));
    }
    let entries = v["server_keys"]
        .as_array()
        .ok_or_else(|| bad(format!("no server_keys array: {v}")))?;
    match entries.as_slice() {
        [] => Ok(None),
        [e] => Ok(Some(e.clone())),
        _ => Err(bad(format!("{} entries for one server", entries.len()))),
    }
}

// ---- origins ----

struct Origins {
    dns: DnsServer,
    server: HttpsServer,
    /// Server name (`oN.test:PORT`) -> the key document it serves.
    docs: Arc<BTreeMap<String, Value>>,
    ca_file: PathBuf,
}

fn origins(dir: &Path) -> Origins {
    let ca = TestCa::new("serve crash CA").unwrap();
    let hosts: Vec<String> = (0..ORIGINS).map(|n| format!("o{n}.test")).collect();
    let sans: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let ip = next_loopback();
    let server = HttpsServer::start(
        (IpAddr::V4(ip), 0).into(),
        ca.issue(&sans).unwrap(),
        Scripted::not_found(),
    )
    .unwrap();
    let port = server.addr().port();
    let valid_until = now_ms() + 7 * DAY;
    let mut docs = BTreeMap::new();
    for h in &hosts {
        let name = format!("{h}:{port}");
        let key = SigningKey::generate(&format!("k_{h}").replace('.', "_")).unwrap();
        let doc = ServerKeysBuilder::new(&ServerName::parse(&name).unwrap(), valid_until)
            .verify_key(&key)
            .sign(&[&key])
            .unwrap();
        docs.insert(name, doc);
    }
    let docs = Arc::new(docs);
    let by_host: HashMap<String, Value> = docs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    server.set_handler(Handler::new(move |r: &Recorded| {
        let doc = r
            .host
            .as_deref()
            .and_then(|h| by_host.get(&h.to_ascii_lowercase()));
        match doc {
            Some(d) if r.path() == "/_matrix/key/v2/server" => Scripted::json(d.clone()),
            _ => Scripted::not_found(),
        }
    }));
    let zone = hosts.iter().fold(Zone::new(), |z, h| z.a(h, ip));
    let dns = DnsServer::start(IpAddr::V4(next_loopback()), zone).unwrap();
    let ca_file = ca.write_pem(dir).unwrap();
    Origins {
        dns,
        server,
        docs,
        ca_file,
    }
}

/// How many key requests the origin got, per Host.
fn origin_hits(o: &Origins) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in o.server.requests() {
        if let Some(h) = r.host {
            *m.entry(h.to_ascii_lowercase()).or_insert(0) += 1;
        }
    }
    m
}

// ---- checks ----

fn without_notary_signature(entry: &Value) -> Value {
    let mut e = entry.clone();
    if let Some(sigs) = e.get_mut("signatures").and_then(Value::as_object_mut) {
        sigs.remove(NOTARY);
    }
    e
}

/// An answer is the origin's document, self-signed, countersigned by the
/// notary.
fn check_answer(entry: &Value, name: &str, o: &Origins, notary_key: &SigningKey) {
    let rep = check_server_keys(entry, &ServerName::parse(name).unwrap(), now_ms());
    assert!(rep.ok(), "{name}: {:?}", rep.problems);
    signing::verify_json(entry, NOTARY, notary_key.id(), &notary_key.verifying_key())
        .unwrap_or_else(|e| panic!("{name}: notary signature: {e}"));
    assert_eq!(
        &without_notary_signature(entry),
        &o.docs[name],
        "{name}: the origin-signed part is the origin's document"
    );
}

/// Open the store the way serve does; integrity check; every acknowledged
/// origin is present; every present row is the origin's exact document.
/// Returns how many origins are stored.
async fn check_store(db: &Path, o: &Origins, acked: &BTreeMap<String, Value>) -> usize {
    let store = SqliteStore::open(db).unwrap_or_else(|e| panic!("store does not open: {e}"));
    store
        .integrity_check()
        .await
        .unwrap_or_else(|e| panic!("integrity check after kill -9: {e}"));
    let mut stored = 0;
    for (name, doc) in o.docs.iter() {
        let row = store
            .server_keys(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: reading the store: {e}"));
        match row {
            Some(row) => {
                stored += 1;
                assert_eq!(&row.json, doc, "{name}: stored JSON");
                assert_eq!(
                    Some(row.valid_until_ts),
                    doc["valid_until_ts"].as_u64(),
                    "{name}: stored valid_until_ts"
                );
                assert!(row.fetched_at > 0 && row.fetched_at <= now_ms());
            }
            None => assert!(
                !acked.contains_key(name),
                "{name}: the notary answered before the kill but the store lost the entry"
            ),
        }
    }
    stored
}

// ---- bursts ----

#[derive(Default)]
struct Burst {
    /// Names answered (with an entry) during the burst, with the answer.
    answered: Mutex<Vec<(String, Value)>>,
    acks: AtomicUsize,
    sent: AtomicUsize,
    killed: AtomicBool,
    /// Failures that happened before the kill (a bug, not the crash).
    early_errors: Mutex<Vec<String>>,
    late_errors: AtomicUsize,
}

/// Fire notary queries for `names` from `CONCURRENCY` connections at a
/// time until the list is done or the server dies.
fn start_burst(
    addr: SocketAddr,
    names: Vec<String>,
    burst: Arc<Burst>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    (0..CONCURRENCY)
        .map(|_| {
            let (names, next, burst) = (names.clone(), next.clone(), burst.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(name) = names.get(i) else { return };
                    burst.sent.fetch_add(1, Ordering::SeqCst);
                    match notary_query(addr, name).await {
                        Ok(Some(entry)) => {
                            burst.answered.lock().unwrap().push((name.clone(), entry));
                            burst.acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(None) if !burst.killed.load(Ordering::SeqCst) => {
                            burst
                                .early_errors
                                .lock()
                                .unwrap()
                                .push(format!("{name}: empty answer"));
                        }
                        Err(e) if !burst.killed.load(Ordering::SeqCst) => {
                            burst
                                .early_errors
                                .lock()
                                .unwrap()
                                .push(format!("{name}: {e}"));
                        }
                        _ => {
                            burst.late_errors.fetch_add(1, Ordering::SeqCst);
                            // The server is gone: stop this connection.
                            return;
                        }
                    }
                }
            })
        })
        .collect()
}

fn write_config(dir: &Path, o: &Origins, dns: SocketAddr, listen: SocketAddr) -> PathBuf {
    let cfg = format!(
        "server_name: {NOTARY}
signing_key_path: notary.signing.key
listeners:
  - port: {port}
    bind_addresses: ['{ip}']
    tls: false
    resources: [{{names: [federation]}}]
notary:
  enabled: true
dns:
  nameservers: ['{dns}']
ip_range_whitelist: ['127.0.0.0/8']
federation_custom_ca_list: ['{ca}']
database:
  name: sqlite3
  args:
    database: '{db}'
log:
  level: warn
",
        port = listen.port(),
        ip = listen.ip(),
        ca = o.ca_file.display(),
        db = dir.join("homeport.db").display(),
    );
    let p = dir.join("homeport.yaml");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_notary_writes_then_restart_keeps_every_answered_entry() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("the crash scenario took longer than 240 s");
}

async fn scenario() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let o = origins(dir.path());
    let notary_key = SigningKey::generate("notary_1").unwrap();
    std::fs::write(
        dir.path().join("notary.signing.key"),
        signing::format_key_file(std::slice::from_ref(&notary_key)),
    )
    .unwrap();
    let ip = IpAddr::V4(next_loopback());
    let addr = SocketAddr::new(ip, free_port(ip));
    let config = write_config(dir.path(), &o, o.dns.addr(), addr);
    let db = dir.path().join("homeport.db");
    let log = dir.path().join("serve.log");

    let check = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "config OK\n",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Every answer any client received, across all rounds.
    let mut acked: BTreeMap<String, Value> = BTreeMap::new();
    let all: Vec<String> = o.docs.keys().cloned().collect();

    for round in 0..=CRASH_ROUNDS {
        let mut serve = Serve::spawn(&config, &log);
        serve.wait_listening(addr).await;

        // After a crash: the store opens, passes the integrity check and
        // holds every acknowledged answer.
        let stored = check_store(&db, &o, &acked).await;
        // The restarted notary answers them from the store, identically,
        // without asking the origins again.
        let hits_before = origin_hits(&o);
        let names: Vec<String> = acked.keys().cloned().collect();
        let mut tasks = Vec::new();
        for chunk in names.chunks(names.len().div_ceil(8).max(1)) {
            let chunk = chunk.to_vec();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for n in chunk {
                    let e = notary_query(addr, &n).await;
                    out.push((n, e));
                }
                out
            }));
        }
        for t in tasks {
            for (n, e) in t.await.unwrap() {
                let e = e
                    .unwrap_or_else(|err| panic!("round {round}: {n} after restart: {err}"))
                    .unwrap_or_else(|| panic!("round {round}: {n}: empty answer after restart"));
                check_answer(&e, &n, &o, &notary_key);
                assert_eq!(&e, &acked[&n], "{n}: same answer before the kill and after");
            }
        }
        let hits_after = origin_hits(&o);
        for n in &names {
            let h = n.to_ascii_lowercase();
            assert_eq!(
                hits_before.get(&h),
                hits_after.get(&h),
                "round {round}: {n} was refetched from the origin instead of answered from the store"
            );
        }
        eprintln!(
            "round {round}: restart ok at {:.2?}; {stored} stored, {} acknowledged, re-served from the store",
            t0.elapsed(),
            acked.len()
        );

        if round == CRASH_ROUNDS {
            // Final round: every origin is answered (the rest fetched now),
            // then a clean shutdown, and the store is complete and intact.
            let pending: Vec<String> = all
                .iter()
                .filter(|n| !acked.contains_key(*n))
                .cloned()
                .collect();
            let burst = Arc::new(Burst::default());
            for t in start_burst(addr, pending, burst.clone()) {
                t.await.unwrap();
            }
            let early = burst.early_errors.lock().unwrap().clone();
            assert!(
                early.is_empty(),
                "final round: {early:?}\n{}",
                serve.log_text()
            );
            for (n, e) in burst.answered.lock().unwrap().iter() {
                check_answer(e, n, &o, &notary_key);
                acked.insert(n.clone(), e.clone());
            }
            assert_eq!(acked.len(), ORIGINS);
            assert_eq!(serve.sigterm().await, Some(0), "{}", serve.log_text());
            assert_eq!(check_store(&db, &o, &acked).await, ORIGINS);
            break;
        }

        // A burst of notary misses (each one a store write), killed with
        // SIGKILL once some answers are back.
        let pending: Vec<String> = all
            .iter()
            .filter(|n| !acked.contains_key(*n))
            .cloned()
            .collect();
        let burst = Arc::new(Burst::default());
        let workers = start_burst(addr, pending.clone(), burst.clone());
        let start = Instant::now();
        while burst.acks.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "round {round}: only {} answers in 60 s; errors {:?}\n{}",
                burst.acks.load(Ordering::SeqCst),
                burst.early_errors.lock().unwrap(),
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        burst.killed.store(true, Ordering::SeqCst);
        let (acks_at_kill, sent_at_kill) = (
            burst.acks.load(Ordering::SeqCst),
            burst.sent.load(Ordering::SeqCst),
        );
        serve.sigkill();
        for w in workers {
            w.await.unwrap();
        }
        let early = burst.early_errors.lock().unwrap().clone();
        assert!(
            early.is_empty(),
            "round {round}: failures before the kill: {early:?}\n{}",
            serve.log_text()
        );
        let answered = burst.answered.lock().unwrap().clone();
        assert!(
            answered.len() < pending.len(),
            "round {round}: the burst finished before the kill, so nothing was interrupted"
        );
        for (n, e) in &answered {
            check_answer(e, n, &o, &notary_key);
            assert!(acked.insert(n.clone(), e.clone()).is_none(), "{n} twice");
        }
        let fetched = origin_hits(&o).len();
        eprintln!(
            "round {round}: killed at {:.2?} with {acks_at_kill} answered of {sent_at_kill} sent \
             ({} answered in all, {} cut off); origins fetched so far: {}",
            t0.elapsed(),
            answered.len(),
            burst.late_errors.load(Ordering::SeqCst),
            fetched
        );
        drop(serve);
    }
    eprintln!("done in {:.2?}", t0.elapsed());
}
