//! The store on its own: SQLite, and PostgreSQL over plain TCP, over TLS
//! (`prefer`, SCRAM bound to the channel) and over TLS with `verify-full`,
//! against one throwaway PostgreSQL cluster on loopback. Prints a markdown
//! table; nothing here asserts a time.
//!
//! ```sh
//! cargo run --release -p homeport-bench --example store_bench
//! ```
//!
//! Per row: opening the store with a pool of 10 (connect, TLS, login,
//! migration check), one `server_keys` read and one `put_server_keys`
//! write one at a time (p50/p99 of 2,000 each, after 200 warm-up calls),
//! and reads from 16 concurrent tasks for 3 s (calls/s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homeport_server::config::{PostgresArgs, SslMode};
use homeport_server::store::{PgStore, SqliteStore, Store, StoredKeys};
use homeport_test_support::TestCa;
use homeport_test_support::postgres;
use serde_json::json;

const CALLS: usize = 2_000;
const WARMUP: usize = 200;
const TASKS: usize = 16;
const LOAD: Duration = Duration::from_secs(3);

fn keys(name: &str, v: u64) -> StoredKeys {
    // About the size of a real key response with one key and a notary
    // countersignature.
    StoredKeys {
        server_name: name.into(),
        json: json!({
            "server_name": name,
            "valid_until_ts": 1_900_000_000_000u64 + v,
            "verify_keys": {"ed25519:a_1": {"key": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"}},
            "old_verify_keys": {},
            "signatures": {name: {"ed25519:a_1": "x".repeat(86)}, "notary.test": {"ed25519:n": "y".repeat(86)}},
        }),
        fetched_at: 1_700_000_000_000 + v,
        valid_until_ts: 1_900_000_000_000 + v,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

struct Row {
    name: String,
    open: Duration,
    read: (Duration, Duration),
    write: (Duration, Duration),
    rate: f64,
}

async fn timed<F, Fut>(n: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..WARMUP {
        f(i).await;
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(WARMUP + i).await;
        v.push(t.elapsed());
    }
    v.sort();
    (pct(&v, 0.5), pct(&v, 0.99))
}

async fn measure(name: &str, open: Duration, s: Arc<dyn Store>) -> Row {
    for i in 0..100 {
        s.put_server_keys(&keys(&format!("s{i}.test"), 1))
            .await
            .unwrap();
    }
    let st = s.clone();
    let read = timed(CALLS, move |i| {
        let st = st.clone();
        async move {
            let got = st.server_keys(&format!("s{}.test", i % 100)).await.unwrap();
            assert!(got.is_some());
        }
    })
    .await;
    let st = s.clone();
    let write = timed(CALLS, move |i| {
        let st = st.clone();
        async move {
            st.put_server_keys(&keys(&format!("w{}.test", i % 500), i as u64 + 2))
                .await
                .unwrap();
        }
    })
    .await;
    let stop = Instant::now() + LOAD;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let st = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                st.server_keys(&format!("s{}.test", (n as usize + t) % 100))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    Row {
        name: name.to_owned(),
        open,
        read,
        write,
        rate: total as f64 / LOAD.as_secs_f64(),
    }
}

async fn pg_row(name: &str, args: &PostgresArgs) -> Row {
    let t = Instant::now();
    let s = PgStore::connect(args).await.unwrap();
    let open = t.elapsed();
    measure(name, open, Arc::new(s)).await
}

fn main() {
    if !postgres::available() {
        eprintln!("store_bench: needs PostgreSQL's server binaries (Debian's postgresql)");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pg = postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();

    let db = dir.path().join("bench.db");
    rows.push(rt.block_on(async {
        let t = Instant::now();
        let s = SqliteStore::open(&db).unwrap();
        let open = t.elapsed();
        measure("SQLite (WAL, synchronous=FULL)", open, Arc::new(s)).await
    }));

    let args = |db: &str| {
        PostgresArgs::new(
            pg.user(),
            Some(pg.password()),
            db,
            &pg.host().to_string(),
            pg.port(),
            (10, 10),
        )
    };
    pg.create_database("plain").unwrap();
    rows.push(rt.block_on(pg_row("PostgreSQL, plain TCP", &args("plain"))));

    let ca = TestCa::new("bench db ca").unwrap();
    let cert = ca.issue(&[&pg.host().to_string()]).unwrap();
    pg.enable_tls(&cert.chain_pem(), &cert.key_pem(), None)
        .unwrap();
    let ca_file = ca.write_pem(dir.path()).unwrap();
    pg.create_database("tls").unwrap();
    rows.push(rt.block_on(pg_row(
        "PostgreSQL, TLS (prefer; SCRAM-SHA-256-PLUS)",
        &args("tls"),
    )));
    let mut full = args("tls");
    full.sslmode = Some(SslMode::VerifyFull);
    full.sslrootcert = Some(ca_file);
    rows.push(rt.block_on(pg_row("PostgreSQL, TLS verify-full", &full)));

    let mut out = String::from(
        "| store | open (pool of 10) | read p50 | read p99 | write p50 | write p99 | reads/s, 16 tasks |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        writeln!(
            out,
            "| {} | {:.1} ms | {} | {} | {} | {} | {:.0} |",
            r.name,
            r.open.as_secs_f64() * 1e3,
            us(r.read.0),
            us(r.read.1),
            us(r.write.0),
            us(r.write.1),
            r.rate
        )
        .unwrap();
    }
    print!("{out}");
}
