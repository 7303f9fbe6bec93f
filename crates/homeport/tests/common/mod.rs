//! What the `homeport serve` process tests share: the process, a minimal
//! HTTP/1.1 client, key-server origins behind an in-process DNS, and the
//! checks of a notary answer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homeport_core::ServerName;
use homeport_core::keys::{ServerKeysBuilder, check_server_keys};
use homeport_core::signing::{self, SigningKey};
use homeport_test_support::{
    DnsServer, Handler, HttpsServer, Recorded, Scripted, TestCa, Zone, next_loopback,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub const NOTARY: &str = "notary.test";
pub const DAY: u64 = 86_400_000;

pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- the serve process ----

/// A running `homeport serve`; killed (SIGKILL) when dropped, so a failing
/// assertion never leaves it behind.
pub struct Serve {
    child: Option<Child>,
    log: PathBuf,
}

impl Serve {
    pub fn spawn(config: &Path, log: &Path) -> Serve {
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `addr` accepts connections; panic (with serve's log) if
    /// the process exits or 20 s pass.
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
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

    /// The process id (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` and reap.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), None, "killed by a signal, not exited");
    }

    /// SIGTERM, then the exit code (bounded by 20 s).
    pub async fn sigterm(&mut self) -> Option<i32> {
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

pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub fn dechunk(mut body: &[u8]) -> io::Result<Vec<u8>> {
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
pub fn parse_response(buf: &[u8]) -> io::Result<(u16, Value)> {
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

pub async fn http_json(
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
pub async fn notary_query(addr: SocketAddr, server: &str) -> io::Result<Option<Value>> {
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

pub struct Origins {
    pub dns: DnsServer,
    pub server: HttpsServer,
    /// Server name (`oN.test:PORT`) -> the key document it serves.
    pub docs: Arc<BTreeMap<String, Value>>,
    pub ca_file: PathBuf,
}

pub fn origins(dir: &Path, count: usize) -> Origins {
    let ca = TestCa::new("serve crash CA").unwrap();
    let hosts: Vec<String> = (0..count).map(|n| format!("o{n}.test")).collect();
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
pub fn origin_hits(o: &Origins) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in o.server.requests() {
        if let Some(h) = r.host {
            *m.entry(h.to_ascii_lowercase()).or_insert(0) += 1;
        }
    }
    m
}

// ---- checks ----

pub fn without_notary_signature(entry: &Value) -> Value {
    let mut e = entry.clone();
    if let Some(sigs) = e.get_mut("signatures").and_then(Value::as_object_mut) {
        sigs.remove(NOTARY);
    }
    e
}

/// An answer is the origin's document, self-signed, countersigned by the
/// notary.
pub fn check_answer(entry: &Value, name: &str, o: &Origins, notary_key: &SigningKey) {
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

/// A notary config (`NAME.yaml` in `dir`) listening on `listen` (plain
/// HTTP, federation + metrics), fetching from `o` (its DNS and CA), with
/// the `database:` section `database` (YAML, ending in a newline).
pub fn notary_config(
    dir: &Path,
    name: &str,
    o: &Origins,
    listen: SocketAddr,
    database: &str,
) -> PathBuf {
    let cfg = format!(
        "server_name: {NOTARY}
signing_key_path: notary.signing.key
listeners:
  - port: {port}
    bind_addresses: ['{ip}']
    tls: false
    resources: [{{names: [federation, metrics]}}]
notary:
  enabled: true
dns:
  nameservers: ['{dns}']
ip_range_whitelist: ['127.0.0.0/8']
federation_custom_ca_list: ['{ca}']
{database}log:
  level: warn
",
        port = listen.port(),
        ip = listen.ip(),
        dns = o.dns.addr(),
        ca = o.ca_file.display(),
    );
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, cfg).unwrap();
    p
}
