//! homeport's own store (never the homeserver's database): fetched server
//! key responses for the notary, and a small key-value space for cached
//! reports. SQLite in WAL mode by default; every write is one transaction,
//! so a `kill -9` leaves either the old or the new row, never half of one.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Why the store failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open the store at {path}: {reason}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("store: {0}")]
    Query(String),
    /// The store is unavailable right now (the caller answers 503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Query(e.to_string())
    }
}

/// A stored key response.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredKeys {
    /// The origin.
    pub server_name: String,
    /// The response as the origin signed it (notary signatures are added
    /// when serving).
    pub json: Value,
    /// When it was fetched (ms).
    pub fetched_at: u64,
    /// Its `valid_until_ts`.
    pub valid_until_ts: u64,
}

/// What the notary and caches need from a store.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The latest stored response for `server`.
    fn server_keys(&self, server: &str) -> Result<Option<StoredKeys>, StoreError>;
    /// Store a response; replaces the stored one unless that one is valid
    /// for longer.
    fn put_server_keys(&self, keys: &StoredKeys) -> Result<(), StoreError>;
    /// A cached value (`namespace`, `key`), if not expired at `now` (ms).
    fn kv_get(&self, namespace: &str, key: &str, now: u64) -> Result<Option<Value>, StoreError>;
    /// Cache a value until `expires` (ms).
    fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
        expires: u64,
    ) -> Result<(), StoreError>;
    /// Check the store's integrity (SQLite: `PRAGMA integrity_check`).
    fn integrity_check(&self) -> Result<(), StoreError>;
}

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &["CREATE TABLE server_keys (
        server_name TEXT PRIMARY KEY,
        json TEXT NOT NULL,
        fetched_at INTEGER NOT NULL,
        valid_until_ts INTEGER NOT NULL
    );
    CREATE TABLE kv (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
    );"];

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
    path: String,
}

impl SqliteStore {
    /// Open (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: p.clone(),
            reason: e.to_string(),
        };
        let conn = rusqlite::Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: p,
        };
        store.migrate()?;
        Ok(store)
    }

    /// An in-memory database (tests).
    pub fn memory() -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open_in_memory().map_err(|e| StoreError::Open {
            path: ":memory:".into(),
            reason: e.to_string(),
        })?;
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: ":memory:".into(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let tx = conn.transaction().map_err(open_err)?;
        for (i, m) in MIGRATIONS.iter().enumerate() {
            let v = i64::try_from(i + 1).unwrap_or(i64::MAX);
            if v > version {
                tx.execute_batch(m).map_err(open_err)?;
                tx.pragma_update(None, "user_version", v)
                    .map_err(open_err)?;
            }
        }
        tx.commit().map_err(open_err)?;
        Ok(())
    }

    /// The schema version.
    pub fn version(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn server_keys(&self, server: &str) -> Result<Option<StoredKeys>, StoreError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT json, fetched_at, valid_until_ts FROM server_keys WHERE server_name = ?1",
        )?;
        let mut rows = st.query([server])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let text: String = row.get(0)?;
        let fetched: i64 = row.get(1)?;
        let until: i64 = row.get(2)?;
        let json = serde_json::from_str(&text)
            .map_err(|e| StoreError::Query(format!("stored JSON for {server}: {e}")))?;
        Ok(Some(StoredKeys {
            server_name: server.to_owned(),
            json,
            fetched_at: u64::try_from(fetched).unwrap_or(0),
            valid_until_ts: u64::try_from(until).unwrap_or(0),
        }))
    }

    fn put_server_keys(&self, keys: &StoredKeys) -> Result<(), StoreError> {
        let text =
            serde_json::to_string(&keys.json).map_err(|e| StoreError::Query(e.to_string()))?;
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO server_keys (server_name, json, fetched_at, valid_until_ts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(server_name) DO UPDATE SET json = excluded.json, fetched_at = excluded.fetched_at,
                 valid_until_ts = excluded.valid_until_ts
             WHERE excluded.valid_until_ts >= server_keys.valid_until_ts OR excluded.fetched_at > server_keys.fetched_at",
            rusqlite::params![keys.server_name, text, to_i64(keys.fetched_at), to_i64(keys.valid_until_ts)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn kv_get(&self, namespace: &str, key: &str, now: u64) -> Result<Option<Value>, StoreError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2 AND expires > ?3",
        )?;
        let mut rows = st.query(rusqlite::params![namespace, key, to_i64(now)])?;
        match rows.next()? {
            None => Ok(None),
            Some(r) => {
                let text: String = r.get(0)?;
                Ok(serde_json::from_str(&text).ok())
            }
        }
    }

    fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
        expires: u64,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(value).map_err(|e| StoreError::Query(e.to_string()))?;
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO kv (namespace, key, value, expires) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
            rusqlite::params![namespace, key, text, to_i64(expires)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn integrity_check(&self) -> Result<(), StoreError> {
        let conn = self.lock();
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

    #[test]
    fn keeps_the_longer_valid_response() {
        let s = SqliteStore::memory().unwrap();
        let a = StoredKeys {
            server_name: "a".into(),
            json: serde_json::json!({"v": 1}),
            fetched_at: 10,
            valid_until_ts: 100,
        };
        s.put_server_keys(&a).unwrap();
        let b = StoredKeys {
            valid_until_ts: 200,
            fetched_at: 20,
            json: serde_json::json!({"v": 2}),
            ..a.clone()
        };
        s.put_server_keys(&b).unwrap();
        assert_eq!(s.server_keys("a").unwrap().unwrap().json["v"], 2);
        // A shorter-lived but newer response also replaces (the origin
        // rotated keys); an older, shorter one does not.
        let c = StoredKeys {
            valid_until_ts: 150,
            fetched_at: 5,
            json: serde_json::json!({"v": 3}),
            ..a.clone()
        };
        s.put_server_keys(&c).unwrap();
        assert_eq!(s.server_keys("a").unwrap().unwrap().json["v"], 2);
        assert!(s.server_keys("b").unwrap().is_none());
        assert_eq!(s.version().unwrap(), 1);
        s.integrity_check().unwrap();
    }

    #[test]
    fn kv_expires() {
        let s = SqliteStore::memory().unwrap();
        s.kv_put("report", "x", &serde_json::json!({"ok": true}), 100)
            .unwrap();
        assert_eq!(
            s.kv_get("report", "x", 99).unwrap(),
            Some(serde_json::json!({"ok": true}))
        );
        assert_eq!(s.kv_get("report", "x", 100).unwrap(), None);
    }

    #[test]
    fn reopening_keeps_data_and_migrations_are_idempotent() {
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
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert!(s.server_keys("a").unwrap().is_some());
        assert_eq!(s.version().unwrap(), 1);
    }
}
