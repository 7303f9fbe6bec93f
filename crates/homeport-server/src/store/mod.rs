//! homeport's own store (never the homeserver's database): fetched server
//! key responses for the notary, a key-value space for cached reports and
//! ACME state, leases that several instances share, and exclusive locks.
//!
//! Two backends with the same [`Store`] trait and one schema definition
//! ([`schema`]): SQLite (default; WAL, `synchronous=FULL`) for one instance,
//! PostgreSQL (pooled, reconnecting with back-off) for several instances
//! sharing one database. Every write is one transaction, so a `kill -9` of
//! homeport or a database restart leaves either the old or the new row,
//! never half of one.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Database;

mod pg_tls;
pub mod postgres;
pub mod schema;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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

impl StoreError {
    /// Whether the failure is temporary (the database is down or
    /// restarting): the request that needed the store is refused with 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
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

/// One key-value entry.
#[derive(Clone, Debug, PartialEq)]
pub struct KvEntry {
    /// Its namespace (`tester`, `acme`, ...).
    pub namespace: String,
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// When it expires (ms; [`NEVER`] for entries that do not).
    pub expires: u64,
}

/// Everything worth moving between stores (`homeport store migrate`):
/// leases are not (they expire within seconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every stored key response.
    pub server_keys: Vec<StoredKeys>,
    /// Every key-value entry not expired.
    pub kv: Vec<KvEntry>,
}

/// What an import wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Key responses written (an existing one that is valid for longer is
    /// kept).
    pub server_keys: usize,
    /// Key-value entries written.
    pub kv: usize,
}

/// The expiry of entries that do not expire.
pub const NEVER: u64 = i64::MAX as u64;

/// An exclusive lock held in (or beside) the store; released on drop, and
/// by the database or the kernel when the process dies.
pub struct StoreLock {
    _inner: Box<dyn Send + Sync>,
}

impl StoreLock {
    pub(crate) fn new(inner: impl Send + Sync + 'static) -> Self {
        StoreLock {
            _inner: Box::new(inner),
        }
    }
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}

/// A pooled store's connections and calls since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Connections open (idle and in use).
    pub connections: usize,
    /// Of those, idle.
    pub idle: usize,
    /// The pool's bound (`cp_max`).
    pub max: usize,
    /// Callers waiting for a connection right now.
    pub waiting: usize,
    /// Calls answered.
    pub calls_ok: u64,
    /// Calls that failed with an error from the database (a query error).
    pub calls_failed: u64,
    /// Calls that failed because the database was unreachable (503s).
    pub calls_unavailable: u64,
}

/// What the notary, the tester and ACME need from a store.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `sqlite3` or `psycopg2`, as in the config.
    fn backend(&self) -> &'static str;
    /// Where the store is, for messages (a path, or `host:port/dbname`).
    fn location(&self) -> String;
    /// Whether several instances can share this store (PostgreSQL).
    fn shared(&self) -> bool {
        false
    }
    /// The connection pool and call counts, for `/metrics` (PostgreSQL;
    /// `None` for SQLite, which has no pool).
    fn stats(&self) -> Option<StoreStats> {
        None
    }
    /// The latest stored response for `server`.
    async fn server_keys(&self, server: &str) -> Result<Option<StoredKeys>, StoreError>;
    /// Store a response; replaces the stored one unless that one is valid
    /// for longer and was fetched later.
    async fn put_server_keys(&self, keys: &StoredKeys) -> Result<(), StoreError>;
    /// A cached value (`namespace`, `key`), if not expired at `now` (ms).
    async fn kv_get(
        &self,
        namespace: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<Value>, StoreError>;
    /// Cache a value until `expires` (ms), replacing any.
    async fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
        expires: u64,
    ) -> Result<(), StoreError>;
    /// Store a value unless one (not expired at `now`) is there; returns
    /// the value stored afterwards (the given one, or the one that won).
    async fn kv_insert_new(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
        expires: u64,
        now: u64,
    ) -> Result<Value, StoreError>;
    /// Remove and return a value (not expired at `now`), atomically: of
    /// several instances taking one entry, one gets it.
    async fn kv_take(
        &self,
        namespace: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<Value>, StoreError>;
    /// Remove a value.
    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
    /// Take the lease `name` for `holder` until `until` (ms) if it is free,
    /// expired at `now`, or already `holder`'s. Returns whether `holder`
    /// holds it now. Several instances racing for one lease: one wins.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError>;
    /// Give a lease back early (only `holder`'s).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
    /// Take the exclusive lock `name` if nobody holds it (`None`: another
    /// instance does). PostgreSQL: a session advisory lock on a connection
    /// of its own; SQLite: `flock` beside the database file.
    async fn try_lock(&self, name: &str) -> Result<Option<StoreLock>, StoreError>;
    /// Delete expired key-value entries and leases; returns how many.
    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError>;
    /// Everything worth moving to another store.
    async fn export(&self, now: u64) -> Result<Snapshot, StoreError>;
    /// Write a snapshot in one transaction (all or nothing), with the same
    /// rules as the single writes.
    async fn import(&self, snapshot: &Snapshot) -> Result<ImportCounts, StoreError>;
    /// The schema version.
    async fn version(&self) -> Result<i64, StoreError>;
    /// A round trip to the database (`--check-config`, health).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Check the store's integrity (SQLite: `PRAGMA integrity_check`;
    /// PostgreSQL: the expected tables are there).
    async fn integrity_check(&self) -> Result<(), StoreError>;
}

/// Open the store the config names (creating and migrating it).
pub async fn open(db: &Database) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match db {
        Database::Sqlite(args) => {
            if args.database == Path::new(":memory:") {
                Arc::new(SqliteStore::memory()?)
            } else {
                Arc::new(SqliteStore::open(&args.database)?)
            }
        }
        Database::Postgres(args) => Arc::new(PgStore::connect(args).await?),
    })
}

/// Check the store the config names without changing it
/// (`serve --check-config`): one line saying what was found.
pub async fn probe(db: &Database) -> Result<String, StoreError> {
    match db {
        Database::Sqlite(args) => {
            let p = &args.database;
            if p == Path::new(":memory:") {
                return Ok("store: sqlite3 in memory (nothing kept across restarts)".into());
            }
            if p.exists() {
                let s = SqliteStore::open_existing(p)?;
                Ok(format!(
                    "store: sqlite3 {} (schema version {}, this homeport: {})",
                    p.display(),
                    s.version().await?,
                    schema::latest()
                ))
            } else {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !dir.is_dir() {
                    return Err(StoreError::Open {
                        path: p.display().to_string(),
                        reason: format!("the directory {} does not exist", dir.display()),
                    });
                }
                Ok(format!("store: sqlite3 {} (created at start)", p.display()))
            }
        }
        Database::Postgres(args) => {
            let (v, tls) = PgStore::probe(args).await?;
            let at = args.location();
            let mode = args.ssl_mode().as_str();
            let over = match tls {
                _ if args.is_socket() => "over the Unix socket".to_owned(),
                Some(version) => format!("over {version}, sslmode {mode}"),
                None if args.ssl_mode() == crate::config::SslMode::Disable => {
                    "without TLS (sslmode disable)".to_owned()
                }
                None => format!("without TLS, sslmode {mode}: the server offers none"),
            };
            Ok(if v == 0 {
                format!(
                    "store: psycopg2 {at} reachable {over} (empty: the schema is created at start)"
                )
            } else {
                format!(
                    "store: psycopg2 {at} reachable {over} (schema version {v}, this homeport: {})",
                    schema::latest()
                )
            })
        }
    }
}

/// Open the store for `serve`: as [`open`], except that a PostgreSQL
/// database that cannot be reached yet is not an error (the store answers
/// unavailable until it can; see [`PgStore::connect_serving`]).
pub async fn open_serving(db: &Database) -> Result<Arc<dyn Store>, StoreError> {
    match db {
        Database::Postgres(args) => Ok(Arc::new(PgStore::connect_serving(args).await?)),
        other => open(other).await,
    }
}

/// This process's id as a lease holder: host-independent and unique per
/// start (pid + random).
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}-{:08x}", std::process::id(), rand::random::<u32>()))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn parse_json(text: &str, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Query(format!("stored JSON for {what}: {e}")))
}

pub(crate) fn to_json_text(v: &Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Query(e.to_string()))
}
