//! The SQLite backend: one file in WAL mode with `synchronous=FULL`. Reads
//! run on a connection of their own (WAL readers do not wait for the
//! writer); writes run on the writer connection in tokio's blocking pool,
//! so an fsync never stalls a runtime thread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use super::schema::{self, Dialect};
use super::{
    ImportCounts, KvEntry, Snapshot, Store, StoreError, StoreLock, StoredKeys, parse_json, to_i64,
    to_json_text, to_u64,
};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Query(e.to_string())
    }
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: Arc<Mutex<Connection>>,
    read: Arc<Mutex<Connection>>,
    path: String,
    /// The database file (`None`: in memory).
    file: Option<PathBuf>,
}

const UPSERT_KEYS: &str = "INSERT INTO server_keys (server_name, json, fetched_at, valid_until_ts) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT(server_name) DO UPDATE SET json = excluded.json, fetched_at = excluded.fetched_at,
         valid_until_ts = excluded.valid_until_ts
     WHERE excluded.valid_until_ts >= server_keys.valid_until_ts OR excluded.fetched_at > server_keys.fetched_at";

const UPSERT_KV: &str = "INSERT INTO kv (namespace, key, value, expires) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, expires = excluded.expires";

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// In-memory stores' locks (no file to `flock`).
fn memory_locks() -> &'static Mutex<HashSet<String>> {
    static LOCKS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LOCKS.get_or_init(|| Mutex::new(HashSet::new()))
}

struct MemoryLock(String);

impl Drop for MemoryLock {
    fn drop(&mut self) {
        if let Ok(mut m) = memory_locks().lock() {
            m.remove(&self.0);
        }
    }
}

impl SqliteStore {
    /// Open (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: p.clone(),
            reason: e.to_string(),
        };
        let mut write = Connection::open(path).map_err(open_err)?;
        configure(&write).map_err(open_err)?;
        migrate(&mut write, &p)?;
        // The reader opens after the migration: it sees the current schema.
        let read = Connection::open(path).map_err(open_err)?;
        configure(&read).map_err(open_err)?;
        Ok(SqliteStore {
            write: Arc::new(Mutex::new(write)),
            read: Arc::new(Mutex::new(read)),
            path: p.clone(),
            file: Some(path.to_owned()),
        })
    }

    /// Open an existing file read-only, without migrating (checks).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: p.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version > schema::latest() {
            return Err(StoreError::Open {
                path: p,
                reason: schema::too_new(version),
            });
        }
        let conn = Arc::new(Mutex::new(conn));
        Ok(SqliteStore {
            write: conn.clone(),
            read: conn,
            path: p,
            file: Some(path.to_owned()),
        })
    }

    /// An in-memory database (tests, `database: :memory:`).
    pub fn memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|e| StoreError::Open {
            path: ":memory:".into(),
            reason: e.to_string(),
        })?;
        let mut conn = conn;
        migrate(&mut conn, ":memory:")?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(SqliteStore {
            write: conn.clone(),
            read: conn,
            path: ":memory:".into(),
            file: None,
        })
    }

    /// Run `f` on the writer connection in the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.write.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
            .await
            .map_err(|e| StoreError::Query(format!("store task: {e}")))?
    }

    fn read_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.read)
    }
}

fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    if version > schema::latest() {
        return Err(StoreError::Open {
            path: path.to_owned(),
            reason: schema::too_new(version),
        });
    }
    if version == 0 {
        for t in schema::HOMESERVER_TABLES {
            let found: Option<String> = tx
                .query_row(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [t],
                    |r| r.get(0),
                )
                .optional()
                .map_err(open_err)?;
            if found.is_some() {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    reason: schema::homeserver_database(t),
                });
            }
        }
    }
    for i in 0..schema::MIGRATIONS.len() {
        let v = i64::try_from(i + 1).unwrap_or(i64::MAX);
        if v > version {
            for s in schema::statements(i, Dialect::Sqlite) {
                tx.execute_batch(&s).map_err(open_err)?;
            }
            tx.pragma_update(None, "user_version", v)
                .map_err(open_err)?;
        }
    }
    tx.commit().map_err(open_err)?;
    Ok(())
}

fn put_keys(tx: &rusqlite::Transaction<'_>, keys: &StoredKeys) -> Result<usize, StoreError> {
    let text = to_json_text(&keys.json)?;
    Ok(tx.execute(
        UPSERT_KEYS,
        params![
            keys.server_name,
            text,
            to_i64(keys.fetched_at),
            to_i64(keys.valid_until_ts)
        ],
    )?)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite3"
    }

    fn location(&self) -> String {
        self.path.clone()
    }

    async fn server_keys(&self, server: &str) -> Result<Option<StoredKeys>, StoreError> {
        let conn = self.read_conn();
        let mut st = conn.prepare_cached(
            "SELECT json, fetched_at, valid_until_ts FROM server_keys WHERE server_name = ?1",
        )?;
        let row = st
            .query_row([server], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        let Some((text, fetched, until)) = row else {
            return Ok(None);
        };
        Ok(Some(StoredKeys {
            server_name: server.to_owned(),
            json: parse_json(&text, server)?,
            fetched_at: to_u64(fetched),
            valid_until_ts: to_u64(until),
        }))
    }

    async fn put_server_keys(&self, keys: &StoredKeys) -> Result<(), StoreError> {
        let keys = keys.clone();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            put_keys(&tx, &keys)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn kv_get(
        &self,
        namespace: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<Value>, StoreError> {
        let conn = self.read_conn();
        let mut st = conn.prepare_cached(
            "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2 AND expires > ?3",
        )?;
        let text: Option<String> = st
            .query_row(params![namespace, key, to_i64(now)], |r| r.get(0))
            .optional()?;
        text.map(|t| parse_json(&t, &format!("{namespace}/{key}")))
            .transpose()
    }

    async fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
        expires: u64,
    ) -> Result<(), StoreError> {
        let text = to_json_text(value)?;
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.write(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(UPSERT_KV, params![ns, k, text, to_i64(expires)])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn kv_insert_new(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
        expires: u64,
        now: u64,
    ) -> Result<Value, StoreError> {
        let text = to_json_text(value)?;
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO kv (namespace, key, value, expires) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, expires = excluded.expires
                 WHERE kv.expires <= ?5",
                params![ns, k, text, to_i64(expires), to_i64(now)],
            )?;
            let stored: String = tx.query_row(
                "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2",
                params![ns, k],
                |r| r.get(0),
            )?;
            tx.commit()?;
            parse_json(&stored, &format!("{ns}/{k}"))
        })
        .await
    }

    async fn kv_take(
        &self,
        namespace: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<Value>, StoreError> {
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let row: Option<(String, i64)> = tx
                .query_row(
                    "DELETE FROM kv WHERE namespace = ?1 AND key = ?2 RETURNING value, expires",
                    params![ns, k],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            tx.commit()?;
            match row {
                Some((text, exp)) if to_u64(exp) > now => {
                    parse_json(&text, &format!("{ns}/{k}")).map(Some)
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM kv WHERE namespace = ?1 AND key = ?2",
                params![ns, k],
            )?;
            Ok(())
        })
        .await
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError> {
        let (n, h) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            let changed = conn.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?1, ?2, ?4)
                 ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
                 WHERE leases.expires <= ?3 OR leases.holder = excluded.holder",
                params![n, h, to_i64(now), to_i64(until)],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (n, h) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![n, h],
            )?;
            Ok(())
        })
        .await
    }

    async fn try_lock(&self, name: &str) -> Result<Option<StoreLock>, StoreError> {
        match &self.file {
            Some(file) => {
                let mut p = file.as_os_str().to_owned();
                p.push(format!(".{name}.lock"));
                let p = PathBuf::from(p);
                crate::acme::try_order_lock(&p)
                    .map(|l| l.map(StoreLock::new))
                    .map_err(|e| StoreError::Query(format!("lock file {}: {e}", p.display())))
            }
            None => {
                let mut m = memory_locks().lock().unwrap_or_else(|e| e.into_inner());
                let key = format!("{}:{name}", Arc::as_ptr(&self.write) as usize);
                Ok(m.insert(key.clone())
                    .then(|| StoreLock::new(MemoryLock(key))))
            }
        }
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let a = tx.execute("DELETE FROM kv WHERE expires <= ?1", [to_i64(now)])?;
            let b = tx.execute("DELETE FROM leases WHERE expires <= ?1", [to_i64(now)])?;
            tx.commit()?;
            Ok(u64::try_from(a + b).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn export(&self, now: u64) -> Result<Snapshot, StoreError> {
        let conn = self.read_conn();
        let mut snap = Snapshot::default();
        let mut st = conn
            .prepare("SELECT server_name, json, fetched_at, valid_until_ts FROM server_keys ORDER BY server_name")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (name, text, fetched, until) = row?;
            snap.server_keys.push(StoredKeys {
                json: parse_json(&text, &name)?,
                server_name: name,
                fetched_at: to_u64(fetched),
                valid_until_ts: to_u64(until),
            });
        }
        let mut st = conn.prepare(
            "SELECT namespace, key, value, expires FROM kv WHERE expires > ?1 ORDER BY namespace, key",
        )?;
        let rows = st.query_map([to_i64(now)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (namespace, key, text, expires) = row?;
            snap.kv.push(KvEntry {
                value: parse_json(&text, &format!("{namespace}/{key}"))?,
                namespace,
                key,
                expires: to_u64(expires),
            });
        }
        Ok(snap)
    }

    async fn import(&self, snapshot: &Snapshot) -> Result<ImportCounts, StoreError> {
        let snap = snapshot.clone();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut counts = ImportCounts::default();
            for k in &snap.server_keys {
                counts.server_keys += put_keys(&tx, k)?;
            }
            for e in &snap.kv {
                let text = to_json_text(&e.value)?;
                counts.kv += tx.execute(
                    UPSERT_KV,
                    params![e.namespace, e.key, text, to_i64(e.expires)],
                )?;
            }
            tx.commit()?;
            Ok(counts)
        })
        .await
    }

    async fn version(&self) -> Result<i64, StoreError> {
        Ok(self
            .read_conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read_conn().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    async fn integrity_check(&self) -> Result<(), StoreError> {
        let conn = self.read_conn();
        let r: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(StoreError::Query(format!("integrity check: {r}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopening_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.db");
        {
            let s = SqliteStore::open(&p).unwrap();
            s.put_server_keys(&StoredKeys {
                server_name: "a".into(),
                json: serde_json::json!({}),
                fetched_at: 1,
                valid_until_ts: 2,
            })
            .await
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert!(s.server_keys("a").await.unwrap().is_some());
        assert_eq!(s.version().await.unwrap(), schema::latest());
    }

    #[tokio::test]
    async fn a_version_1_database_is_migrated_in_place() {
        // The layout homeport 0.1 created (version 1, no leases table).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(
                "CREATE TABLE server_keys (server_name TEXT PRIMARY KEY, json TEXT NOT NULL,
                    fetched_at INTEGER NOT NULL, valid_until_ts INTEGER NOT NULL);
                 CREATE TABLE kv (namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                    expires INTEGER NOT NULL, PRIMARY KEY (namespace, key));
                 INSERT INTO server_keys VALUES ('old.test', '{\"x\":1}', 5, 10);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.version().await.unwrap(), 2);
        assert_eq!(
            s.server_keys("old.test").await.unwrap().unwrap().json["x"],
            1
        );
        assert!(s.try_lease("l", "me", 0, 10).await.unwrap());
    }

    #[test]
    fn refuses_newer_schemas_and_homeserver_databases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.db");
        Connection::open(&p)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let e = SqliteStore::open(&p).unwrap_err().to_string();
        assert!(
            e.contains("version 99, newer than this homeport knows (2)"),
            "{e}"
        );
        let p = dir.path().join("homeserver.db");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE events (x INTEGER);")
            .unwrap();
        let e = SqliteStore::open(&p).unwrap_err().to_string();
        assert!(
            e.contains("homeserver's database (it has a table `events`)"),
            "{e}"
        );
    }
}
