//! The PostgreSQL backend, for several instances sharing one database:
//! a deadpool of tokio-postgres connections (`cp_max`, with `cp_min` opened
//! at start), statements prepared once per connection, every write one
//! transaction.
//!
//! When the database goes away (restart, failover, network), pooled
//! connections that closed are dropped when next taken, and new ones are
//! tried with exponential back-off (250 ms doubling to 10 s, jittered):
//! between attempts every call fails at once with
//! [`StoreError::Unavailable`] (the HTTP layer answers 503) instead of
//! queueing behind a dead server. Calls are idempotent, so one that fails
//! because its connection closed under it is retried once on a fresh one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::pg_tls::PgTls;
use super::schema::{self, Dialect};
use super::{
    ImportCounts, KvEntry, Snapshot, Store, StoreError, StoreLock, StoreStats, StoredKeys,
    parse_json, to_i64, to_json_text, to_u64,
};
use crate::config::{ChannelBinding, PostgresArgs};

/// How long one TCP connect and one wait for a free connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole new connection may take: TCP connect (each address),
/// TLS handshake and login.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const STATEMENT_TIMEOUT_MS: u32 = 10_000;
/// The most one call may wait for the database's answer: the server's own
/// statement timeout plus a margin. Past it the database has gone silent
/// (a network partition, a frozen host: no answer, no error, no reset),
/// which TCP alone would take many minutes to notice.
const CALL_TIMEOUT: Duration = Duration::from_millis(STATEMENT_TIMEOUT_MS as u64 + 2_000);
/// The same for calls of many statements (export, import, purge), each of
/// which has the statement timeout of its own.
const BULK_TIMEOUT: Duration = Duration::from_secs(600);
/// The same for a few statements that may wait on each other or on
/// another instance (the purge, a migration under its lock).
const SLOW_TIMEOUT: Duration = Duration::from_secs(60);
/// Sent data unacknowledged this long closes a connection (TCP_USER_TIMEOUT):
/// later than [`CALL_TIMEOUT`], so a call that times out is reported as
/// such rather than as a closed connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The advisory lock taken while migrating (any constant; "hpmg").
const MIGRATION_LOCK: i64 = 0x6870_6d67;

const UPSERT_KEYS: &str = "INSERT INTO server_keys (server_name, json, fetched_at, valid_until_ts) VALUES ($1, $2, $3, $4)
     ON CONFLICT (server_name) DO UPDATE SET json = excluded.json, fetched_at = excluded.fetched_at,
         valid_until_ts = excluded.valid_until_ts
     WHERE excluded.valid_until_ts >= server_keys.valid_until_ts OR excluded.fetched_at > server_keys.fetched_at";

const UPSERT_KV: &str = "INSERT INTO kv (namespace, key, value, expires) VALUES ($1, $2, $3, $4)
     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires = excluded.expires";

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    where_: String,
    health: Arc<Mutex<Health>>,
    /// Whether the schema is known to be current (false when started
    /// while the database was unreachable).
    migrated: Arc<AtomicBool>,
    /// Calls answered, failed, unavailable (`/metrics`).
    calls: Arc<[AtomicU64; 3]>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("at", &self.where_)
            .finish_non_exhaustive()
    }
}

fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O error or a timeout on the socket.
        None => e.as_db_error().is_none(),
        Some(c) => {
            c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION
        }
    }
}

/// A connection refused on the settings rather than the network: TLS (see
/// [`tls_refused`]), or tokio-postgres's own refusals (`channel_binding:
/// require` without TLS to bind to, a server asking for a password there
/// is none of), which carry no SQLSTATE.
fn settings_refused(e: &tokio_postgres::Error) -> bool {
    let s = e.to_string();
    tls_refused(e)
        || s.starts_with("authentication error")
        || s.starts_with("invalid configuration")
        || s.starts_with("invalid connection string")
}

/// A TLS handshake that failed on the settings rather than the network:
/// the certificate was refused, or `require` met a server without TLS.
/// Waiting does not fix that, so `serve` does not start on it.
fn tls_refused(e: &tokio_postgres::Error) -> bool {
    if !e.to_string().starts_with("error performing TLS handshake") {
        return false;
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        if inner.downcast_ref::<rustls::Error>().is_some()
            || inner.to_string() == "server does not support TLS"
        {
            return true;
        }
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::InvalidInput
                || io
                    .get_ref()
                    .is_some_and(|r| r.downcast_ref::<rustls::Error>().is_some()))
        {
            return true;
        }
        src = inner.source();
    }
    false
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// What one call failed with: a connection problem (retry once, mark
/// down) or a real error.
enum Fail {
    Conn(String),
    Other(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_connection_error(&e) {
            Fail::Conn(describe(&e))
        } else {
            Fail::Other(StoreError::Query(describe(&e)))
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Other(e)
    }
}

fn pg_config(args: &PostgresArgs) -> Result<(tokio_postgres::Config, PgTls), String> {
    let (ssl_mode, tls) = super::pg_tls::setup(args)?;
    let mut c = tokio_postgres::Config::new();
    c.ssl_mode(ssl_mode)
        .channel_binding(match args.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
    c.user(&args.user).dbname(&args.dbname).port(args.port);
    if let Some(p) = &args.password {
        c.password(p);
    }
    if args.host.starts_with('/') {
        c.host_path(&args.host);
    } else {
        c.host(&args.host);
    }
    c.connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        // Sent data unacknowledged this long closes the connection.
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        // Which instance a session belongs to, in pg_stat_activity.
        .application_name(format!("homeport/{}", std::process::id()))
        .options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    Ok((c, tls))
}

impl PgStore {
    /// Connect (opening `cp_min` connections), check that the database is
    /// homeport's own, and migrate it. A database that cannot be reached
    /// here is an error (`homeport store`, checks).
    pub async fn connect(args: &PostgresArgs) -> Result<Self, StoreError> {
        let store = Self::build(args)?;
        store.open_initial(args.cp_min).await.map_err(|(_, e)| e)?;
        Ok(store)
    }

    /// As [`PgStore::connect`], except that a database that cannot be
    /// *reached* (down, restarting, network) is not an error: the store
    /// starts unavailable (503s) and migrates on its first connection, so
    /// `serve` comes up and serves what does not need the store. Wrong
    /// credentials, a missing database or a homeserver's database are
    /// still errors.
    pub async fn connect_serving(args: &PostgresArgs) -> Result<Self, StoreError> {
        let store = Self::build(args)?;
        match store.open_initial(args.cp_min).await {
            Ok(()) => {}
            Err((true, e)) => {
                tracing::warn!(database = %store.where_, error = %e, "store: database unreachable at start; serving without it until it is back");
                store.mark_down(&e.to_string());
            }
            Err((false, e)) => return Err(e),
        }
        Ok(store)
    }

    fn build(args: &PostgresArgs) -> Result<Self, StoreError> {
        let where_ = args.location();
        let (config, tls) = pg_config(args).map_err(|reason| StoreError::Open {
            path: where_.clone(),
            reason,
        })?;
        let mgr = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(args.cp_max.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(OPEN_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Open {
                path: where_.clone(),
                reason: e.to_string(),
            })?;
        Ok(PgStore {
            pool,
            where_,
            health: Arc::new(Mutex::new(Health::default())),
            migrated: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(Default::default()),
        })
    }

    /// Count one call's outcome for [`Store::stats`].
    fn count<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        let i = match &r {
            Ok(_) => 0,
            Err(e) if e.is_unavailable() => 2,
            Err(_) => 1,
        };
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Open `cp_min` connections and migrate on the first. The error says
    /// whether it was the database being unreachable (true) or something
    /// waiting would not fix.
    async fn open_initial(&self, cp_min: usize) -> Result<(), (bool, StoreError)> {
        let open_err = |reason: String| StoreError::Open {
            path: self.where_.clone(),
            reason,
        };
        let mut conns = Vec::new();
        for _ in 0..cp_min.max(1) {
            match self.pool.get().await {
                Ok(c) => conns.push(c),
                Err(e) => return Err((pool_unreachable(&e), open_err(pool_error(&e)))),
            }
        }
        if let Some(first) = conns.first_mut() {
            match migrate_bounded(first).await {
                Ok(()) => self.migrated.store(true, Ordering::SeqCst),
                Err(Fail::Conn(m)) => {
                    // Not back into the pool: they may be stuck.
                    for c in conns {
                        drop(Object::take(c));
                    }
                    return Err((true, open_err(m)));
                }
                Err(Fail::Other(StoreError::Query(m))) => return Err((false, open_err(m))),
                Err(Fail::Other(e)) => return Err((false, e)),
            }
        }
        Ok(())
    }

    /// Connect once without changing anything (`serve --check-config`):
    /// reachable, credentials, homeport's own database; returns the schema
    /// version found (0: empty, migrated at start) and the TLS version the
    /// session runs over (`None`: not encrypted).
    pub async fn probe(args: &PostgresArgs) -> Result<(i64, Option<String>), StoreError> {
        let where_ = args.location();
        let err = |reason: String| StoreError::Open {
            path: where_.clone(),
            reason,
        };
        let (config, tls) = pg_config(args).map_err(err)?;
        // connect_timeout bounds the TCP connect only; the TLS handshake
        // and the login are bounded here.
        let (client, conn) = tokio::time::timeout(OPEN_TIMEOUT, config.connect(tls))
            .await
            .map_err(|_| {
                err(format!(
                    "no connection within {}s (TCP connect, TLS handshake and login)",
                    OPEN_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| err(describe(&e)))?;
        let task = tokio::spawn(conn);
        let r = async {
            let tls: Option<String> = client
                .query_opt(
                    "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                    &[],
                )
                .await?
                .map(|r| r.get(0));
            if table_exists(&client, "homeport_schema_version").await? {
                let v: i64 = client
                    .query_one("SELECT version FROM homeport_schema_version", &[])
                    .await?
                    .get(0);
                return Ok(Ok((v, tls)));
            }
            Ok::<_, tokio_postgres::Error>(match homeserver_table(&client).await? {
                Some(t) => Err(schema::homeserver_database(t)),
                None => Ok((0, tls)),
            })
        };
        let r = tokio::time::timeout(CALL_TIMEOUT, r).await;
        drop(client);
        task.abort();
        let Ok(r) = r else {
            return Err(err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())));
        };
        match r {
            Ok(Ok((v, _))) if v > schema::latest() => Err(err(schema::too_new(v))),
            Ok(Ok(found)) => Ok(found),
            Ok(Err(m)) => Err(err(m)),
            Err(e) => Err(err(describe(&e))),
        }
    }

    fn unavailable(&self, why: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "the database at {} is unreachable: {why}",
            self.where_
        ))
    }

    fn mark_down(&self, why: &str) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.failures = h.failures.saturating_add(1);
        let exp = h.failures.saturating_sub(1).min(10);
        let d = BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_MAX);
        let d = d / 2 + (d / 2).mul_f64(rand::random::<f64>());
        if h.failures == 1 {
            tracing::warn!(database = %self.where_, error = why, "store: database unreachable; retrying with back-off");
        }
        h.retry_at = Some(Instant::now() + d);
        why.clone_into(&mut h.last_error);
    }

    fn mark_up(&self) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if h.failures > 0 {
            tracing::info!(database = %self.where_, after = h.failures, "store: database reachable again");
        }
        *h = Health::default();
    }

    /// A pooled connection, or Unavailable while backing off.
    async fn conn(&self) -> Result<Object, StoreError> {
        {
            let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = h.retry_at {
                let left = at.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    return Err(self.unavailable(&format!(
                        "{} (next attempt in {} ms)",
                        h.last_error,
                        left.as_millis()
                    )));
                }
            }
        }
        let mut c = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                let why = pool_error(&e);
                self.mark_down(&why);
                return Err(self.unavailable(&why));
            }
        };
        if !self.migrated.load(Ordering::SeqCst) {
            // Started while the database was unreachable: its first
            // connection creates or migrates the schema.
            match migrate_bounded(&mut c).await {
                Ok(()) => {
                    self.migrated.store(true, Ordering::SeqCst);
                    tracing::info!(database = %self.where_, "store: database reachable; schema ready");
                }
                Err(Fail::Conn(why)) => {
                    drop(Object::take(c));
                    self.mark_down(&why);
                    return Err(self.unavailable(&why));
                }
                Err(Fail::Other(e)) => {
                    tracing::error!(database = %self.where_, error = %e, "store: cannot use this database");
                    return Err(e);
                }
            }
        }
        Ok(c)
    }

    /// Run `f` on a connection; retried once on a fresh connection when the
    /// first one turns out closed.
    async fn run<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, StoreError>
    where
        F: Fn(Object) -> Fut,
        Fut: std::future::Future<Output = (Option<Object>, Result<T, Fail>)>,
    {
        let r = self.run_uncounted(limit, f).await;
        self.count(r)
    }

    async fn run_uncounted<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, StoreError>
    where
        F: Fn(Object) -> Fut,
        Fut: std::future::Future<Output = (Option<Object>, Result<T, Fail>)>,
    {
        let mut last = String::new();
        for _ in 0..2 {
            let c = self.conn().await?;
            let Ok((c, r)) = tokio::time::timeout(limit, f(c)).await else {
                // The call's connection was closed with it (`Lent`). A
                // silent database leaves the idle ones stuck too: drop
                // them, mark it down, and do not wait again.
                self.pool.retain(|_, _| false);
                last = format!("no answer within {}s", limit.as_secs());
                break;
            };
            match r {
                Ok(v) => {
                    self.mark_up();
                    return Ok(v);
                }
                Err(Fail::Other(e)) => return Err(e),
                Err(Fail::Conn(why)) => {
                    // This connection is done for; do not return it.
                    if let Some(c) = c {
                        drop(Object::take(c));
                    }
                    last = why;
                }
            }
        }
        self.mark_down(&last);
        Err(self.unavailable(&last))
    }
}

/// Whether a pool error means "the database cannot be reached" (as
/// opposed to refusing us).
fn pool_unreachable(e: &PoolError) -> bool {
    match e {
        PoolError::Backend(pg) => is_connection_error(pg) && !settings_refused(pg),
        PoolError::Timeout(_) => true,
        _ => false,
    }
}

fn pool_error(e: &PoolError) -> String {
    match e {
        PoolError::Backend(pg) => describe(pg),
        other => other.to_string(),
    }
}

/// [`migrate`] within [`SLOW_TIMEOUT`].
async fn migrate_bounded(c: &mut Object) -> Result<(), Fail> {
    tokio::time::timeout(SLOW_TIMEOUT, migrate(c))
        .await
        .unwrap_or_else(|_| {
            Err(Fail::Conn(format!(
                "no answer within {}s while migrating the schema",
                SLOW_TIMEOUT.as_secs()
            )))
        })
}

async fn migrate(c: &mut Object) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    // Two instances starting at once: the second waits here, then finds the
    // schema current.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS homeport_schema_version (version BIGINT NOT NULL)",
    )
    .await?;
    let version: i64 = tx
        .query_opt("SELECT version FROM homeport_schema_version", &[])
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0);
    if version > schema::latest() {
        return Err(Fail::Other(StoreError::Query(schema::too_new(version))));
    }
    if version == 0 {
        if let Some(t) = homeserver_table(&*tx).await? {
            return Err(Fail::Other(StoreError::Query(schema::homeserver_database(
                t,
            ))));
        }
        tx.execute(
            "INSERT INTO homeport_schema_version (version) VALUES (0)",
            &[],
        )
        .await?;
    }
    for i in 0..schema::MIGRATIONS.len() {
        let v = i64::try_from(i + 1).unwrap_or(i64::MAX);
        if v > version {
            for s in schema::statements(i, Dialect::Postgres) {
                tx.batch_execute(&s).await?;
            }
            tx.execute("UPDATE homeport_schema_version SET version = $1", &[&v])
                .await?;
            tracing::info!(version = v, "store: migrated the PostgreSQL schema");
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Whether the table `public.{name}` exists.
async fn table_exists(
    c: &impl tokio_postgres::GenericClient,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT to_regclass($1) IS NOT NULL",
        &[&format!("public.{name}")],
    )
    .await?
    .get(0))
}

/// The first homeserver table this database has, if any.
async fn homeserver_table(
    c: &impl tokio_postgres::GenericClient,
) -> Result<Option<&'static str>, tokio_postgres::Error> {
    for t in schema::HOMESERVER_TABLES {
        if table_exists(c, t).await? {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// A stable advisory lock key for `name`.
fn lock_key(name: &str) -> i64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(format!("homeport:{name}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// A session advisory lock: the connection is kept out of the pool while
/// held and closed on release, which releases the lock (as the database
/// does when the process dies).
struct AdvisoryLock(Option<Object>);

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            drop(Object::take(o));
        }
    }
}

async fn put_keys(tx: &deadpool_postgres::Transaction<'_>, keys: &StoredKeys) -> Result<u64, Fail> {
    let text = to_json_text(&keys.json)?;
    let st = tx.prepare_cached(UPSERT_KEYS).await?;
    let p: [&(dyn ToSql + Sync); 4] = [
        &keys.server_name,
        &text,
        &to_i64(keys.fetched_at),
        &to_i64(keys.valid_until_ts),
    ];
    Ok(tx.execute(&st, &p).await?)
}

/// Run `$f(&mut conn, args...)` through [`PgStore::run`].
macro_rules! call {
    ($store:expr, $f:ident($($arg:expr),*)) => {
        call!($store, CALL_TIMEOUT, $f($($arg),*))
    };
    ($store:expr, $limit:expr, $f:ident($($arg:expr),*)) => {
        $store
            .run($limit, |c| async move {
                let mut lent = Lent(Some(c));
                let r = match lent.0.as_mut() {
                    Some(c) => $f(c, $($arg),*).await,
                    None => Err(Fail::Conn("no connection".to_owned())),
                };
                (lent.release(), r)
            })
            .await
    };
}

/// A pooled connection lent to one call. When the call's future is
/// dropped before it finishes (it timed out), the connection is closed
/// rather than put back in the pool, where the next caller would get a
/// connection still waiting for an answer.
struct Lent(Option<Object>);

impl Lent {
    /// The call finished: hand the connection back.
    fn release(mut self) -> Option<Object> {
        self.0.take()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(Object::take(c));
        }
    }
}

async fn q_server_keys(c: &mut Object, server: &str) -> Result<Option<StoredKeys>, Fail> {
    let st = c
        .prepare_cached(
            "SELECT json, fetched_at, valid_until_ts FROM server_keys WHERE server_name = $1",
        )
        .await?;
    let Some(row) = c.query_opt(&st, &[&server]).await? else {
        return Ok(None);
    };
    let text: String = row.get(0);
    Ok(Some(StoredKeys {
        server_name: server.to_owned(),
        json: parse_json(&text, server)?,
        fetched_at: to_u64(row.get(1)),
        valid_until_ts: to_u64(row.get(2)),
    }))
}

async fn q_put_server_keys(c: &mut Object, keys: &StoredKeys) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    put_keys(&tx, keys).await?;
    tx.commit().await?;
    Ok(())
}

async fn q_kv_get(c: &mut Object, ns: &str, key: &str, now: i64) -> Result<Option<Value>, Fail> {
    let st = c
        .prepare_cached("SELECT value FROM kv WHERE namespace = $1 AND key = $2 AND expires > $3")
        .await?;
    match c.query_opt(&st, &[&ns, &key, &now]).await? {
        None => Ok(None),
        Some(r) => {
            let t: String = r.get(0);
            Ok(Some(parse_json(&t, &format!("{ns}/{key}"))?))
        }
    }
}

async fn q_kv_put(
    c: &mut Object,
    ns: &str,
    key: &str,
    text: &str,
    expires: i64,
) -> Result<(), Fail> {
    let st = c.prepare_cached(UPSERT_KV).await?;
    c.execute(&st, &[&ns, &key, &text, &expires]).await?;
    Ok(())
}

async fn q_kv_insert_new(
    c: &mut Object,
    ns: &str,
    key: &str,
    text: &str,
    expires: i64,
    now: i64,
) -> Result<Value, Fail> {
    let tx = c.transaction().await?;
    tx.execute(
        "INSERT INTO kv (namespace, key, value, expires) VALUES ($1, $2, $3, $4)
         ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires = excluded.expires
         WHERE kv.expires <= $5",
        &[&ns, &key, &text, &expires, &now],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT value FROM kv WHERE namespace = $1 AND key = $2",
            &[&ns, &key],
        )
        .await?;
    tx.commit().await?;
    let t: String = row.get(0);
    Ok(parse_json(&t, &format!("{ns}/{key}"))?)
}

async fn q_kv_take(c: &mut Object, ns: &str, key: &str, now: u64) -> Result<Option<Value>, Fail> {
    let row = c
        .query_opt(
            "DELETE FROM kv WHERE namespace = $1 AND key = $2 RETURNING value, expires",
            &[&ns, &key],
        )
        .await?;
    match row {
        Some(r) if to_u64(r.get(1)) > now => {
            let t: String = r.get(0);
            Ok(Some(parse_json(&t, &format!("{ns}/{key}"))?))
        }
        _ => Ok(None),
    }
}

async fn q_kv_delete(c: &mut Object, ns: &str, key: &str) -> Result<(), Fail> {
    c.execute(
        "DELETE FROM kv WHERE namespace = $1 AND key = $2",
        &[&ns, &key],
    )
    .await?;
    Ok(())
}

async fn q_try_lease(
    c: &mut Object,
    name: &str,
    holder: &str,
    now: i64,
    until: i64,
) -> Result<bool, Fail> {
    let st = c
        .prepare_cached(
            "INSERT INTO leases (name, holder, expires) VALUES ($1, $2, $4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
             WHERE leases.expires <= $3 OR leases.holder = excluded.holder
             RETURNING holder",
        )
        .await?;
    Ok(c.query_opt(&st, &[&name, &holder, &now, &until])
        .await?
        .is_some())
}

async fn q_release_lease(c: &mut Object, name: &str, holder: &str) -> Result<(), Fail> {
    c.execute(
        "DELETE FROM leases WHERE name = $1 AND holder = $2",
        &[&name, &holder],
    )
    .await?;
    Ok(())
}

async fn q_purge(c: &mut Object, now: i64) -> Result<u64, Fail> {
    let tx = c.transaction().await?;
    let a = tx
        .execute("DELETE FROM kv WHERE expires <= $1", &[&now])
        .await?;
    let b = tx
        .execute("DELETE FROM leases WHERE expires <= $1", &[&now])
        .await?;
    tx.commit().await?;
    Ok(a + b)
}

async fn q_export(c: &mut Object, now: i64) -> Result<Snapshot, Fail> {
    let mut snap = Snapshot::default();
    for r in c
        .query(
            "SELECT server_name, json, fetched_at, valid_until_ts FROM server_keys ORDER BY server_name",
            &[],
        )
        .await?
    {
        let name: String = r.get(0);
        let text: String = r.get(1);
        snap.server_keys.push(StoredKeys {
            json: parse_json(&text, &name)?,
            server_name: name,
            fetched_at: to_u64(r.get(2)),
            valid_until_ts: to_u64(r.get(3)),
        });
    }
    for r in c
        .query(
            "SELECT namespace, key, value, expires FROM kv WHERE expires > $1 ORDER BY namespace, key",
            &[&now],
        )
        .await?
    {
        let namespace: String = r.get(0);
        let key: String = r.get(1);
        let text: String = r.get(2);
        snap.kv.push(KvEntry {
            value: parse_json(&text, &format!("{namespace}/{key}"))?,
            namespace,
            key,
            expires: to_u64(r.get(3)),
        });
    }
    Ok(snap)
}

async fn q_import(c: &mut Object, snapshot: &Snapshot) -> Result<ImportCounts, Fail> {
    let tx = c.transaction().await?;
    let mut counts = ImportCounts::default();
    for k in &snapshot.server_keys {
        counts.server_keys += usize::try_from(put_keys(&tx, k).await?).unwrap_or(0);
    }
    let st = tx.prepare_cached(UPSERT_KV).await?;
    for e in &snapshot.kv {
        let text = to_json_text(&e.value)?;
        let n = tx
            .execute(&st, &[&e.namespace, &e.key, &text, &to_i64(e.expires)])
            .await?;
        counts.kv += usize::try_from(n).unwrap_or(0);
    }
    tx.commit().await?;
    Ok(counts)
}

async fn q_version(c: &mut Object) -> Result<i64, Fail> {
    Ok(
        c.query_one("SELECT version FROM homeport_schema_version", &[])
            .await?
            .get(0),
    )
}

async fn q_ping(c: &mut Object) -> Result<(), Fail> {
    c.query_one("SELECT 1", &[]).await?;
    Ok(())
}

async fn q_tables(c: &mut Object) -> Result<(), Fail> {
    for t in schema::tables() {
        if !table_exists(&***c, t).await? {
            return Err(Fail::Other(StoreError::Query(format!(
                "table {t} is missing"
            ))));
        }
    }
    Ok(())
}

impl PgStore {
    /// [`Store::try_lock`], uncounted.
    async fn try_lock_uncounted(&self, name: &str) -> Result<Option<StoreLock>, StoreError> {
        let key = lock_key(name);
        let mut last = String::new();
        for _ in 0..2 {
            let c = self.conn().await?;
            let Ok(answer) = tokio::time::timeout(
                CALL_TIMEOUT,
                c.query_one("SELECT pg_try_advisory_lock($1)", &[&key]),
            )
            .await
            else {
                drop(Object::take(c));
                self.pool.retain(|_, _| false);
                last = format!("no answer within {}s", CALL_TIMEOUT.as_secs());
                break;
            };
            match answer {
                Ok(row) => {
                    self.mark_up();
                    let got: bool = row.get(0);
                    return Ok(got.then(|| StoreLock::new(AdvisoryLock(Some(c)))));
                }
                Err(e) if is_connection_error(&e) => {
                    drop(Object::take(c));
                    last = describe(&e);
                }
                Err(e) => return Err(StoreError::Query(describe(&e))),
            }
        }
        self.mark_down(&last);
        Err(self.unavailable(&last))
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "psycopg2"
    }

    fn location(&self) -> String {
        self.where_.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    fn stats(&self) -> Option<StoreStats> {
        let st = self.pool.status();
        Some(StoreStats {
            connections: st.size,
            idle: st.available,
            max: st.max_size,
            waiting: st.waiting,
            calls_ok: self.calls[0].load(Ordering::Relaxed),
            calls_failed: self.calls[1].load(Ordering::Relaxed),
            calls_unavailable: self.calls[2].load(Ordering::Relaxed),
        })
    }

    async fn server_keys(&self, server: &str) -> Result<Option<StoredKeys>, StoreError> {
        call!(self, q_server_keys(server))
    }

    async fn put_server_keys(&self, keys: &StoredKeys) -> Result<(), StoreError> {
        call!(self, q_put_server_keys(keys))
    }

    async fn kv_get(
        &self,
        namespace: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<Value>, StoreError> {
        call!(self, q_kv_get(namespace, key, to_i64(now)))
    }

    async fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
        expires: u64,
    ) -> Result<(), StoreError> {
        let text = to_json_text(value)?;
        let text = text.as_str();
        call!(self, q_kv_put(namespace, key, text, to_i64(expires)))
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
        let text = text.as_str();
        call!(
            self,
            q_kv_insert_new(namespace, key, text, to_i64(expires), to_i64(now))
        )
    }

    async fn kv_take(
        &self,
        namespace: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<Value>, StoreError> {
        call!(self, q_kv_take(namespace, key, now))
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        call!(self, q_kv_delete(namespace, key))
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError> {
        call!(self, q_try_lease(name, holder, to_i64(now), to_i64(until)))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        call!(self, q_release_lease(name, holder))
    }

    async fn try_lock(&self, name: &str) -> Result<Option<StoreLock>, StoreError> {
        let r = self.try_lock_uncounted(name).await;
        self.count(r)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        call!(self, SLOW_TIMEOUT, q_purge(to_i64(now)))
    }

    async fn export(&self, now: u64) -> Result<Snapshot, StoreError> {
        call!(self, BULK_TIMEOUT, q_export(to_i64(now)))
    }

    async fn import(&self, snapshot: &Snapshot) -> Result<ImportCounts, StoreError> {
        call!(self, BULK_TIMEOUT, q_import(snapshot))
    }

    async fn version(&self) -> Result<i64, StoreError> {
        call!(self, q_version())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        call!(self, q_ping())
    }

    async fn integrity_check(&self) -> Result<(), StoreError> {
        let v = self.version().await?;
        if v != schema::latest() {
            return Err(StoreError::Query(format!(
                "schema version {v}, expected {}",
                schema::latest()
            )));
        }
        call!(self, q_tables())
    }
}
