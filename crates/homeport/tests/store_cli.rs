//! `homeport store migrate` (SQLite to a real PostgreSQL started by the
//! test) and `homeport store check`: what is copied, idempotence, dry runs,
//! and the errors for a missing file, the same store twice and an
//! unreachable database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use homeport_server::config::PostgresArgs;
use homeport_server::store::{NEVER, PgStore, SqliteStore, Store, StoredKeys};
use homeport_test_support::postgres::{self, PgCluster};
use serde_json::json;

fn homeport(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn config(dir: &Path, name: &str, database: &str) -> String {
    let key = homeport_core::signing::SigningKey::generate("a_1").unwrap();
    std::fs::write(
        dir.join("k.signing.key"),
        homeport_core::signing::format_key_file(&[key]),
    )
    .unwrap();
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "server_name: example.test\nsigning_key_path: k.signing.key\nlisteners:\n  - port: 8448\n    bind_addresses: ['127.0.0.1']\n    tls: false\n    resources: [{{names: [federation]}}]\n{database}"
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn args(pg: &PgCluster, db: &str) -> PostgresArgs {
    PostgresArgs::new(
        pg.user(),
        Some(pg.password()),
        db,
        &pg.host().to_string(),
        pg.port(),
        (1, 2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sqlite_to_postgres() {
    if !postgres::available() {
        return;
    }
    let pg = postgres::start().unwrap();
    pg.create_database("target").unwrap();
    pg.create_database("dry").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("homeport.db");
    {
        let s = SqliteStore::open(&sqlite).unwrap();
        for i in 0..30u64 {
            s.put_server_keys(&StoredKeys {
                server_name: format!("s{i}.test"),
                json: json!({"server_name": format!("s{i}.test"), "i": i}),
                fetched_at: 1000 + i,
                valid_until_ts: 2_000_000_000_000 + i,
            })
            .await
            .unwrap();
        }
        s.kv_put("tester", "a.test", &json!({"full": {"ok": true}}), NEVER)
            .await
            .unwrap();
        s.kv_put("acme", "state", &json!({"names": ["example.test"]}), NEVER)
            .await
            .unwrap();
        s.kv_put("tester", "expired.test", &json!({}), 1)
            .await
            .unwrap();
    }
    let from = format!("sqlite:{}", sqlite.display());
    let to = config(dir.path(), "pg.yaml", &pg.yaml_database("target"));

    // A dry run writes nothing.
    let dry = config(dir.path(), "dry.yaml", &pg.yaml_database("dry"));
    let o = homeport(&[
        "store",
        "migrate",
        "--from",
        &from,
        "--to",
        &dry,
        "--dry-run",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("30 key responses, 2 cached values (acme 1, tester 1)"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing written"), "{out}");
    assert_eq!(
        pg.psql("dry", "SELECT count(*) FROM server_keys")
            .unwrap()
            .trim(),
        "0"
    );

    let o = homeport(&["store", "migrate", "--from", &from, "--to", &to]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("wrote 30 key responses, 2 cached values"),
        "{out}"
    );
    let pgs = PgStore::connect(&args(&pg, "target")).await.unwrap();
    let row = pgs.server_keys("s7.test").await.unwrap().unwrap();
    assert_eq!(row.json["i"], 7);
    assert_eq!(
        (row.fetched_at, row.valid_until_ts),
        (1007, 2_000_000_000_007)
    );
    assert_eq!(
        pgs.kv_get("acme", "state", 0).await.unwrap(),
        Some(json!({"names": ["example.test"]}))
    );
    assert_eq!(pgs.kv_get("tester", "expired.test", 0).await.unwrap(), None);

    // A row in the target that is newer is kept; running it again is
    // harmless.
    pgs.put_server_keys(&StoredKeys {
        server_name: "s3.test".into(),
        json: json!({"newer": true}),
        fetched_at: 9_999,
        valid_until_ts: 3_000_000_000_000,
    })
    .await
    .unwrap();
    let o = homeport(&["store", "migrate", "--from", &from, "--to", &to]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("wrote 29 key responses (1 kept"), "{out}");
    assert_eq!(
        pgs.server_keys("s3.test").await.unwrap().unwrap().json["newer"],
        true
    );
    assert_eq!(
        pg.psql("target", "SELECT count(*) FROM server_keys")
            .unwrap()
            .trim(),
        "30"
    );

    // store check on the target.
    let o = homeport(&["store", "check", "--config", &to]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.starts_with("psycopg2 postgresql://homeport@"), "{out}");
    assert!(
        out.contains("OK (schema 2, shared by instances): 30 key responses"),
        "{out}"
    );

    // Errors: a missing file (2), the same store twice (2), an unreachable
    // database (1), each saying what and where.
    let o = homeport(&[
        "store",
        "migrate",
        "--from",
        "sqlite:/nonexistent/h.db",
        "--to",
        &to,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o)
            .1
            .contains("--from: no SQLite file at /nonexistent/h.db"),
        "{:?}",
        text(&o)
    );
    let o = homeport(&["store", "migrate", "--from", &from, "--to", &from]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("the same store"), "{:?}", text(&o));
    let mut down = args(&pg, "target");
    down.port = 1;
    let bad = config(
        dir.path(),
        "down.yaml",
        &format!(
            "database:\n  name: psycopg2\n  args: {{user: homeport, password: x, dbname: target, host: '{}', port: 1}}\n",
            down.host
        ),
    );
    let o = homeport(&["store", "migrate", "--from", &from, "--to", &bad]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let err = text(&o).1;
    assert!(
        err.contains(&format!("postgresql://homeport@{}:1/target", down.host)),
        "{err}"
    );
    // And serve --check-config says the same without starting.
    let o = homeport(&["serve", "--check-config", "--config", &bad]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains(":1/target"), "{:?}", text(&o));
}
