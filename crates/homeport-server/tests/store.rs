//! The store test-suite: the same cases against SQLite and a real
//! PostgreSQL (started by the test, on loopback), plus what only
//! PostgreSQL has to survive (a database restart mid-run, two instances
//! migrating at once, a lock holder's session dying).
//!
//! Without PostgreSQL's server binaries the PostgreSQL half says so on
//! stderr and passes (CI installs Debian's `postgresql`; with `CI=true` a
//! missing one is a failure).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homeport_server::config::PostgresArgs;
use homeport_server::store::{
    KvEntry, NEVER, PgStore, Snapshot, SqliteStore, Store, StoreError, StoredKeys, schema,
};
use homeport_test_support::postgres::{self, PgCluster};
use serde_json::json;

/// Opens handles to one database: each call is another "instance".
type Opener = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>> + Send + Sync>;

type Case = fn(Opener) -> Pin<Box<dyn Future<Output = ()> + Send>>;

fn keys(name: &str, v: u64, fetched: u64, until: u64) -> StoredKeys {
    StoredKeys {
        server_name: name.into(),
        json: json!({ "v": v, "server_name": name }),
        fetched_at: fetched,
        valid_until_ts: until,
    }
}

async fn keeps_the_longer_valid_response(open: Opener) {
    let s = open().await;
    s.put_server_keys(&keys("a.test", 1, 10, 100))
        .await
        .unwrap();
    s.put_server_keys(&keys("a.test", 2, 20, 200))
        .await
        .unwrap();
    assert_eq!(s.server_keys("a.test").await.unwrap().unwrap().json["v"], 2);
    // Older and shorter-lived: kept out.
    s.put_server_keys(&keys("a.test", 3, 5, 150)).await.unwrap();
    assert_eq!(s.server_keys("a.test").await.unwrap().unwrap().json["v"], 2);
    // Newer but shorter-lived (the origin rotated keys): replaces.
    s.put_server_keys(&keys("a.test", 4, 30, 150))
        .await
        .unwrap();
    let got = s.server_keys("a.test").await.unwrap().unwrap();
    assert_eq!(got.json["v"], 4);
    assert_eq!((got.fetched_at, got.valid_until_ts), (30, 150));
    assert!(s.server_keys("b.test").await.unwrap().is_none());
    // Another instance sees the same row.
    let other = open().await;
    assert_eq!(other.server_keys("a.test").await.unwrap().unwrap(), got);
}

async fn kv_expires_and_replaces(open: Opener) {
    let s = open().await;
    s.kv_put("report", "x", &json!({"ok": true}), 100)
        .await
        .unwrap();
    assert_eq!(
        s.kv_get("report", "x", 99).await.unwrap(),
        Some(json!({"ok": true}))
    );
    assert_eq!(s.kv_get("report", "x", 100).await.unwrap(), None);
    assert_eq!(s.kv_get("other", "x", 0).await.unwrap(), None);
    s.kv_put("report", "x", &json!([1, "two"]), NEVER)
        .await
        .unwrap();
    assert_eq!(
        s.kv_get("report", "x", 1 << 60).await.unwrap(),
        Some(json!([1, "two"]))
    );
    s.kv_delete("report", "x").await.unwrap();
    assert_eq!(s.kv_get("report", "x", 0).await.unwrap(), None);
}

async fn kv_insert_new_keeps_the_first(open: Opener) {
    let (a, b) = (open().await, open().await);
    let first = a
        .kv_insert_new("acme", "account", &json!("A"), NEVER, 0)
        .await
        .unwrap();
    assert_eq!(first, json!("A"));
    let second = b
        .kv_insert_new("acme", "account", &json!("B"), NEVER, 0)
        .await
        .unwrap();
    assert_eq!(second, json!("A"), "the value already there wins");
    // An expired value is replaced.
    a.kv_put("n", "k", &json!(1), 10).await.unwrap();
    assert_eq!(
        b.kv_insert_new("n", "k", &json!(2), 100, 10).await.unwrap(),
        json!(2)
    );
    // Racing inserts agree on one winner.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = open().await;
        tasks.push(tokio::spawn(async move {
            s.kv_insert_new("race", "k", &json!(i), NEVER, 0)
                .await
                .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

async fn kv_take_gives_an_entry_to_one_taker(open: Opener) {
    let s = open().await;
    s.kv_put("acme", "request", &json!({"id": 7}), NEVER)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = open().await;
        tasks.push(tokio::spawn(async move {
            s.kv_take("acme", "request", 0).await.unwrap()
        }));
    }
    let mut got = 0;
    for t in tasks {
        if let Some(v) = t.await.unwrap() {
            assert_eq!(v, json!({"id": 7}));
            got += 1;
        }
    }
    assert_eq!(got, 1);
    s.kv_put("acme", "old", &json!(1), 5).await.unwrap();
    assert_eq!(s.kv_take("acme", "old", 5).await.unwrap(), None, "expired");
    assert_eq!(s.kv_get("acme", "old", 0).await.unwrap(), None, "and gone");
}

async fn leases_are_exclusive_until_they_expire(open: Opener) {
    let (a, b) = (open().await, open().await);
    assert!(a.try_lease("tester:x", "A", 1000, 2000).await.unwrap());
    assert!(!b.try_lease("tester:x", "B", 1500, 2500).await.unwrap());
    assert!(
        a.try_lease("tester:x", "A", 1600, 2600).await.unwrap(),
        "the holder renews"
    );
    assert!(!b.try_lease("tester:x", "B", 2599, 3000).await.unwrap());
    assert!(
        b.try_lease("tester:x", "B", 2600, 3000).await.unwrap(),
        "expired: taken over"
    );
    a.release_lease("tester:x", "A").await.unwrap();
    assert!(
        !a.try_lease("tester:x", "A", 2700, 3000).await.unwrap(),
        "not A's to release"
    );
    b.release_lease("tester:x", "B").await.unwrap();
    assert!(a.try_lease("tester:x", "A", 2700, 3000).await.unwrap());
    // Eight instances race for one lease: one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = open().await;
        tasks.push(tokio::spawn(async move {
            s.try_lease("race", &format!("i{i}"), 0, 10_000)
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
}

async fn locks_are_exclusive_across_instances(open: Opener) {
    let (a, b) = (open().await, open().await);
    let held = a.try_lock("acme-order").await.unwrap();
    assert!(held.is_some());
    assert!(
        b.try_lock("acme-order").await.unwrap().is_none(),
        "another instance"
    );
    assert!(
        a.try_lock("acme-order").await.unwrap().is_none(),
        "the same instance too"
    );
    assert!(b.try_lock("something-else").await.unwrap().is_some());
    drop(held);
    let mut again = None;
    for _ in 0..50 {
        again = b.try_lock("acme-order").await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "released on drop");
}

async fn purge_deletes_only_expired_entries(open: Opener) {
    let s = open().await;
    s.kv_put("t", "old", &json!(1), 100).await.unwrap();
    s.kv_put("t", "new", &json!(2), 300).await.unwrap();
    s.try_lease("l-old", "A", 0, 100).await.unwrap();
    s.try_lease("l-new", "A", 0, 300).await.unwrap();
    assert_eq!(s.purge_expired(200).await.unwrap(), 2);
    assert_eq!(s.kv_get("t", "new", 200).await.unwrap(), Some(json!(2)));
    assert!(!s.try_lease("l-new", "B", 200, 400).await.unwrap());
    assert!(s.try_lease("l-old", "B", 200, 400).await.unwrap());
}

async fn export_import_round_trip(open: Opener) {
    let s = open().await;
    for i in 0..20u64 {
        s.put_server_keys(&keys(&format!("s{i:02}.test"), i, i, 1000 + i))
            .await
            .unwrap();
    }
    s.kv_put("tester", "a", &json!({"full": {"ok": true}}), NEVER)
        .await
        .unwrap();
    s.kv_put("tester", "gone", &json!(0), 1).await.unwrap();
    let snap = s.export(10).await.unwrap();
    assert_eq!(snap.server_keys.len(), 20);
    assert_eq!(snap.kv.len(), 1, "expired entries are not exported");
    // Into a fresh store, then again (idempotent), then read back.
    let fresh = SqliteStore::memory().unwrap();
    let c = fresh.import(&snap).await.unwrap();
    assert_eq!((c.server_keys, c.kv), (20, 1));
    fresh.import(&snap).await.unwrap();
    assert_eq!(fresh.export(10).await.unwrap(), snap);
    // Back into the store under test, over older rows: the newer ones stay.
    s.put_server_keys(&keys("s00.test", 99, 500, 5000))
        .await
        .unwrap();
    s.import(&snap).await.unwrap();
    assert_eq!(
        s.server_keys("s00.test").await.unwrap().unwrap().json["v"],
        99
    );
    let snap2 = Snapshot {
        server_keys: vec![],
        kv: vec![KvEntry {
            namespace: "acme".into(),
            key: "certificate".into(),
            value: json!({"chain_pem": "x"}),
            expires: NEVER,
        }],
    };
    s.import(&snap2).await.unwrap();
    assert_eq!(
        s.kv_get("acme", "certificate", 0).await.unwrap(),
        Some(json!({"chain_pem": "x"}))
    );
}

async fn concurrent_writers_lose_nothing(open: Opener) {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = open().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                s.put_server_keys(&keys(&format!("w{w}-{i}.test"), i, 1, 2))
                    .await
                    .unwrap();
                s.kv_put("c", &format!("{w}-{i}"), &json!(i), NEVER)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = open().await;
    let snap = s.export(0).await.unwrap();
    assert_eq!(snap.server_keys.len(), 100);
    assert_eq!(snap.kv.len(), 100);
    assert_eq!(s.version().await.unwrap(), schema::latest());
    s.ping().await.unwrap();
    s.integrity_check().await.unwrap();
}

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("keeps_the_longer_valid_response", |o| {
            Box::pin(keeps_the_longer_valid_response(o))
        }),
        ("kv_expires_and_replaces", |o| {
            Box::pin(kv_expires_and_replaces(o))
        }),
        ("kv_insert_new_keeps_the_first", |o| {
            Box::pin(kv_insert_new_keeps_the_first(o))
        }),
        ("kv_take_gives_an_entry_to_one_taker", |o| {
            Box::pin(kv_take_gives_an_entry_to_one_taker(o))
        }),
        ("leases_are_exclusive_until_they_expire", |o| {
            Box::pin(leases_are_exclusive_until_they_expire(o))
        }),
        ("locks_are_exclusive_across_instances", |o| {
            Box::pin(locks_are_exclusive_across_instances(o))
        }),
        ("purge_deletes_only_expired_entries", |o| {
            Box::pin(purge_deletes_only_expired_entries(o))
        }),
        ("export_import_round_trip", |o| {
            Box::pin(export_import_round_trip(o))
        }),
        ("concurrent_writers_lose_nothing", |o| {
            Box::pin(concurrent_writers_lose_nothing(o))
        }),
    ]
}

async fn run_case(backend: &str, name: &str, case: Case, open: Opener) {
    eprintln!("{backend}: {name}");
    let t = tokio::spawn(case(open));
    if let Err(e) = t.await {
        panic!("{backend}: case {name} failed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, case)) in cases().into_iter().enumerate() {
        let path: PathBuf = dir.path().join(format!("case{i}.db"));
        let open: Opener = Arc::new(move || {
            let p = path.clone();
            Box::pin(async move { Arc::new(SqliteStore::open(&p).unwrap()) as Arc<dyn Store> })
        });
        run_case("sqlite", name, case, open).await;
    }
}

fn pg_args(pg: &PgCluster, db: &str) -> PostgresArgs {
    PostgresArgs::new(
        pg.user(),
        Some(pg.password()),
        db,
        &pg.host().to_string(),
        pg.port(),
        (1, 8),
    )
}

fn start_pg() -> Option<Arc<PgCluster>> {
    if !postgres::available() {
        return None;
    }
    Some(Arc::new(postgres::start().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_postgres() {
    let Some(pg) = start_pg() else { return };
    for (i, (name, case)) in cases().into_iter().enumerate() {
        let db = format!("case{i}");
        pg.create_database(&db).unwrap();
        let args = pg_args(&pg, &db);
        let open: Opener = Arc::new(move || {
            let a = args.clone();
            Box::pin(async move { Arc::new(PgStore::connect(&a).await.unwrap()) as Arc<dyn Store> })
        });
        run_case("postgres", name, case, open).await;
    }
    // The schema is what the one definition renders.
    let cols = pg
        .psql(
            "case0",
            "SELECT table_name || '.' || column_name || ':' || data_type FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY 1",
        )
        .unwrap();
    assert!(cols.contains("kv.expires:bigint"), "{cols}");
    assert!(cols.contains("server_keys.json:text"), "{cols}");
    assert!(cols.contains("leases.holder:text"), "{cols}");
    assert_eq!(
        pg.psql("case0", "SELECT version FROM homeport_schema_version")
            .unwrap()
            .trim(),
        schema::latest().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_recovers_without_reopening() {
    let Some(pg) = start_pg() else { return };
    pg.create_database("restart").unwrap();
    let s = PgStore::connect(&pg_args(&pg, "restart")).await.unwrap();
    s.put_server_keys(&keys("before.test", 1, 1, 2))
        .await
        .unwrap();
    // Connections in the pool, then the database goes away.
    pg.blocking(|c| c.stop_immediate()).await.unwrap();
    let started = Instant::now();
    let e = s.server_keys("before.test").await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    // While backing off, calls fail at once rather than queueing.
    let t = Instant::now();
    let e = s.kv_put("n", "k", &json!(1), NEVER).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    eprintln!("down detected in {:?}", started.elapsed());
    pg.blocking(|c| c.start_again()).await.unwrap();
    // Back without reopening the store: within the back-off bound (10 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        match s.server_keys("before.test").await {
            Ok(r) => break r,
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    };
    assert_eq!(row.unwrap().json["v"], 1, "the committed row survived");
    s.put_server_keys(&keys("after.test", 2, 1, 2))
        .await
        .unwrap();
    assert!(s.server_keys("after.test").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_migrate_at_once_and_refuse_a_homeserver_database() {
    let Some(pg) = start_pg() else { return };
    pg.create_database("race").unwrap();
    let a = pg_args(&pg, "race");
    let b = a.clone();
    let (x, y) = tokio::join!(PgStore::connect(&a), PgStore::connect(&b));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.version().await.unwrap(), schema::latest());
    assert_eq!(y.version().await.unwrap(), schema::latest());
    assert_eq!(
        pg.psql("race", "SELECT count(*) FROM homeport_schema_version")
            .unwrap()
            .trim(),
        "1"
    );
    // A database a homeserver uses is refused, and left untouched.
    pg.create_database("synapse").unwrap();
    pg.psql(
        "synapse",
        "CREATE TABLE events (event_id TEXT); GRANT ALL ON events TO homeport;",
    )
    .unwrap();
    let e = PgStore::connect(&pg_args(&pg, "synapse"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("homeserver's database"), "{e}");
    assert!(e.contains("postgresql://homeport@"), "says where: {e}");
    assert_eq!(
        pg.psql(
            "synapse",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'kv'"
        )
        .unwrap()
        .trim(),
        "0"
    );
    // A wrong password is a clear error at start.
    let mut bad = pg_args(&pg, "race");
    bad.password = Some("wrong".into());
    let e = PgStore::connect(&bad).await.unwrap_err().to_string();
    assert!(e.contains("password authentication failed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_is_released_when_the_holder_session_dies() {
    let Some(pg) = start_pg() else { return };
    pg.create_database("locks").unwrap();
    let a = PgStore::connect(&pg_args(&pg, "locks")).await.unwrap();
    let b = PgStore::connect(&pg_args(&pg, "locks")).await.unwrap();
    let held = a.try_lock("acme-order").await.unwrap().unwrap();
    assert!(b.try_lock("acme-order").await.unwrap().is_none());
    // The holder's backend dies (as when its process is killed): the
    // database releases the session lock.
    let killed = pg
        .psql(
            "locks",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        )
        .unwrap();
    assert_eq!(killed.trim(), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if b.try_lock("acme-order").await.unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "lock never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

/// `serve`'s store starts while the database is down (503s until it is
/// back, the schema created on the first connection); a database that
/// refuses us (a wrong password) is still an error at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serving_store_starts_while_the_database_is_down() {
    let Some(pg) = start_pg() else { return };
    pg.create_database("late").unwrap();
    pg.blocking(|c| c.stop_immediate()).await.unwrap();
    assert!(
        PgStore::connect(&pg_args(&pg, "late")).await.is_err(),
        "strict open fails"
    );
    let s = PgStore::connect_serving(&pg_args(&pg, "late"))
        .await
        .unwrap();
    let e = s.server_keys("x.test").await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    pg.blocking(|c| c.start_again()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match s.put_server_keys(&keys("x.test", 1, 1, 2)).await {
            Ok(()) => break,
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("never came up: {e}"),
        }
    }
    assert_eq!(
        s.version().await.unwrap(),
        schema::latest(),
        "migrated on its first connection"
    );
    assert!(s.server_keys("x.test").await.unwrap().is_some());
    let mut bad = pg_args(&pg, "late");
    bad.password = Some("wrong".into());
    let e = PgStore::connect_serving(&bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
}

/// `sslmode` and friends against a real server with TLS: what connects,
/// what is refused, and why. pg_hba rejects plain TCP logins once TLS is
/// on, so a connection that works is a TLS one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_modes_certificates_and_channel_binding() {
    use homeport_server::config::{ChannelBinding, SslMode};
    use homeport_test_support::TestCa;

    let Some(pg) = start_pg() else { return };
    pg.create_database("tls").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("db ca").unwrap();
    let ca_file = ca.write_pem(dir.path()).unwrap();
    let other_ca_dir = dir.path().join("other");
    std::fs::create_dir(&other_ca_dir).unwrap();
    let other_ca_file = TestCa::new("someone else")
        .unwrap()
        .write_pem(&other_ca_dir)
        .unwrap();
    let with = |mode: Option<SslMode>, root: Option<&PathBuf>| {
        let mut a = pg_args(&pg, "tls");
        a.sslmode = mode;
        a.sslrootcert = root.cloned();
        a
    };
    let refused = async |a: PostgresArgs, want: &str| {
        let e = PgStore::connect(&a).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{:?}: {msg}", a.sslmode);
        assert!(msg.contains(&a.location()), "{msg}");
        msg
    };
    let works = async |a: PostgresArgs| {
        let s = PgStore::connect(&a)
            .await
            .unwrap_or_else(|e| panic!("{:?} {:?}: {e}", a.sslmode, a.channel_binding));
        s.kv_put("tls", "k", &json!(1), NEVER).await.unwrap();
    };

    // A server without TLS: prefer falls back to plain (and --check-config
    // says so), require refuses.
    works(with(None, None)).await;
    let line = homeport_server::store::probe(&homeport_server::config::Database::Postgres(with(
        None, None,
    )))
    .await
    .unwrap();
    assert!(
        line.contains(
            " reachable without TLS, sslmode prefer: the server offers none (schema version"
        ),
        "{line}"
    );
    refused(
        with(Some(SslMode::Require), None),
        "server does not support TLS",
    )
    .await;
    // Channel binding required, and no TLS to bind to.
    let mut bound = with(None, None);
    bound.channel_binding = ChannelBinding::Require;
    refused(bound.clone(), "channel binding").await;
    // Not "unreachable": serve does not start on it.
    let e = PgStore::connect_serving(&bound).await.unwrap_err();
    assert!(e.to_string().contains("channel binding"), "{e}");
    // ... and `serve` does not start on that either (waiting cannot fix it).
    let e = PgStore::connect_serving(&with(Some(SslMode::Require), None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("server does not support TLS"), "{e}");

    // TLS on, with a certificate that names db.test but not the address.
    let named = ca.issue(&["db.test"]).unwrap();
    let (chain, key) = (named.chain_pem(), named.key_pem());
    pg.blocking(move |c| c.enable_tls(&chain, &key, None))
        .await
        .unwrap();
    refused(with(Some(SslMode::Disable), None), "no encryption").await;
    works(with(None, None)).await; // prefer: TLS, certificate unchecked
    works(with(Some(SslMode::Allow), None)).await;
    works(with(Some(SslMode::Require), None)).await;
    works(with(Some(SslMode::VerifyCa), Some(&ca_file))).await;
    refused(
        with(Some(SslMode::VerifyCa), Some(&other_ca_file)),
        "UnknownIssuer",
    )
    .await;
    // require, prefer (the default) and allow with a root check the chain,
    // as verify-ca (and as libpq).
    for mode in [Some(SslMode::Require), None, Some(SslMode::Allow)] {
        works(with(mode, Some(&ca_file))).await;
        refused(with(mode, Some(&other_ca_file)), "UnknownIssuer").await;
    }
    let msg = refused(
        with(Some(SslMode::VerifyFull), Some(&ca_file)),
        "not valid for name",
    )
    .await;
    assert!(msg.contains(&pg.host().to_string()), "{msg}");
    let e = PgStore::connect_serving(&with(Some(SslMode::VerifyFull), Some(&ca_file)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not valid for name"), "{e}");
    // SCRAM bound to the TLS channel (SCRAM-SHA-256-PLUS): the server
    // checks our tls-server-end-point hash of its certificate.
    let mut bound = with(None, None);
    bound.channel_binding = ChannelBinding::Require;
    works(bound).await;
    let missing = dir.path().join("missing.pem");
    refused(
        with(Some(SslMode::VerifyFull), Some(&missing)),
        "missing.pem",
    )
    .await;

    // A certificate for the address, and client certificates required.
    let client_ca = TestCa::new("client ca").unwrap();
    let for_ip = ca.issue(&[&pg.host().to_string()]).unwrap();
    let (chain, key, cca) = (for_ip.chain_pem(), for_ip.key_pem(), client_ca.cert_pem());
    pg.blocking(move |c| c.enable_tls(&chain, &key, Some(&cca)))
        .await
        .unwrap();
    refused(
        with(Some(SslMode::VerifyFull), Some(&ca_file)),
        "certificate",
    )
    .await;
    let client = client_ca
        .issue_with(
            &["homeport.client"],
            homeport_test_support::IssueOpts::valid().common_name(pg.user()),
        )
        .unwrap();
    let (cert_file, key_file) = client.write_pem(dir.path(), "client").unwrap();
    let mut full = with(Some(SslMode::VerifyFull), Some(&ca_file));
    full.sslcert = Some(cert_file.clone());
    full.sslkey = Some(key_file.clone());
    full.channel_binding = ChannelBinding::Require;
    works(full.clone()).await;
    // The wrong key for the certificate is named before connecting.
    let stray = dir.path().join("stray.key");
    std::fs::write(&stray, named.key_pem()).unwrap();
    full.sslkey = Some(stray);
    refused(full, "is not the key of sslcert").await;
    // --check-config's probe goes through the same TLS.
    let mut probe = with(Some(SslMode::VerifyFull), Some(&ca_file));
    probe.sslcert = Some(cert_file);
    probe.sslkey = Some(key_file);
    let (version, tls) = PgStore::probe(&probe).await.unwrap();
    assert_eq!(version, schema::latest());
    assert!(
        tls.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "{tls:?}"
    );
    let line =
        homeport_server::store::probe(&homeport_server::config::Database::Postgres(probe.clone()))
            .await
            .unwrap();
    assert!(line.contains(" reachable over TLSv1."), "{line}");
    assert!(line.contains("sslmode verify-full"), "{line}");
    probe.sslrootcert = Some(other_ca_file);
    let e = PgStore::probe(&probe).await.unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // An RSASSA-PSS certificate (SHA-384 in its parameters): the server
    // hashes it with SHA-384 for channel binding, and so must we.
    pg.blocking(|c| {
        c.enable_tls(
            include_str!("data/rsa-pss-sha384.crt"),
            include_str!("data/rsa-pss-sha384.key"),
            None,
        )
    })
    .await
    .unwrap();
    let mut pss = with(Some(SslMode::Require), None);
    pss.channel_binding = ChannelBinding::Require;
    works(pss).await;
}

/// A database that goes silent (a partition: connections stay open, no
/// answer, no reset) makes calls fail as unavailable instead of hanging
/// until TCP gives up, many minutes later; `--check-config`'s probe gives
/// up too, and the store recovers by itself once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_silent_database_fails_calls_instead_of_hanging() {
    use homeport_test_support::{Relay, next_loopback};
    // Far above the store's own bounds (12 s a call, 10 s to open a connection),
    // far below what TCP would take.
    const HANG: Duration = Duration::from_secs(60);

    let Some(pg) = start_pg() else { return };
    pg.create_database("silent").unwrap();
    let relay = Relay::start((next_loopback(), 0).into(), (pg.host(), pg.port()).into())
        .await
        .unwrap();
    let mut args = pg_args(&pg, "silent");
    args.host = relay.addr().ip().to_string();
    args.port = relay.addr().port();
    let s = PgStore::connect(&args).await.unwrap();
    s.kv_put("n", "k", &json!(1), NEVER).await.unwrap();

    relay.freeze();
    let e = tokio::time::timeout(HANG, s.kv_get("n", "k", 0))
        .await
        .expect("a call on a silent database must give up")
        .unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    assert!(e.to_string().contains("no answer within"), "{e}");
    // Marked down: the next call fails without waiting again.
    let e = tokio::time::timeout(HANG, s.server_keys("a.test"))
        .await
        .expect("marked down: fails at once")
        .unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    let e = tokio::time::timeout(HANG, PgStore::probe(&args))
        .await
        .expect("the probe must give up")
        .unwrap_err();
    assert!(e.to_string().contains("no connection within 10s"), "{e}");

    relay.thaw();
    let deadline = Instant::now() + HANG;
    loop {
        match s.kv_get("n", "k", 0).await {
            Ok(v) => {
                assert_eq!(v, Some(json!(1)));
                break;
            }
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("not recovered: {e}"),
        }
    }
}

/// `host` a socket directory: no TLS whatever `sslmode` says (as libpq),
/// and --check-config says it went over the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_a_unix_socket() {
    use homeport_server::config::SslMode;
    let Some(pg) = start_pg() else { return };
    pg.create_database("socket").unwrap();
    let mut args = pg_args(&pg, "socket");
    args.host = pg.socket_dir().display().to_string();
    for mode in [None, Some(SslMode::Disable), Some(SslMode::Require)] {
        args.sslmode = mode;
        let s = PgStore::connect(&args)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        s.kv_put("n", "k", &json!(1), NEVER).await.unwrap();
    }
    let line = homeport_server::store::probe(&homeport_server::config::Database::Postgres(args))
        .await
        .unwrap();
    assert!(line.contains(" reachable over the Unix socket ("), "{line}");
}
