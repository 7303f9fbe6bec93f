//! The notary: `/_matrix/key/v2/query` (POST and GET). Cache hits come
//! from the store; misses are fetched through the federation client (with
//! the address deny list on) and verified before they are stored; the
//! origin's signature is kept and the notary's added; when the origin is
//! down the last stored response is served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeport_core::ServerName;
use homeport_core::signing::{self, SigningKey};
use homeport_federation::KeyFetcher;
use homeport_federation::keys::now_ms;
use serde_json::{Value, json};

use crate::keyserver::KeyServer;
use crate::metrics::{Metrics, NotaryResult};
use crate::store::{Store, StoredKeys};

/// Notary limits.
#[derive(Clone, Debug)]
pub struct NotaryLimits {
    /// Servers in one query at most.
    pub max_servers_per_request: usize,
    /// Requests per client IP per minute.
    pub per_client_per_minute: u32,
}

impl Default for NotaryLimits {
    fn default() -> Self {
        NotaryLimits {
            max_servers_per_request: 100,
            per_client_per_minute: 600,
        }
    }
}

/// A refused notary request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotaryError {
    /// The body is not what the spec describes.
    #[error("{0}")]
    BadRequest(String),
    /// Too many servers in one request.
    #[error("at most {0} servers per request")]
    TooMany(usize),
    /// The client asked too often.
    #[error("too many requests")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store (the database) cannot be reached right now.
    #[error("the notary's key store is unavailable: {0}")]
    Unavailable(String),
}

/// A countersigned answer, valid while the stored response is the one it
/// was signed from (its `fetched_at`) and our keys are unchanged.
struct Countersigned {
    fetched_at: u64,
    valid_until_ts: u64,
    key_ids: Vec<String>,
    answer: Value,
    /// When the store last said this is the stored response.
    checked: Instant,
}

/// How long a store read stands for: a cache hit within this time of the
/// last read is answered without asking the store again (with PostgreSQL,
/// a round trip per hit otherwise); another instance's refetch is seen
/// within this time.
const STORE_RECHECK: Duration = Duration::from_secs(1);

/// The notary.
pub struct Notary {
    own: Arc<KeyServer>,
    fetcher: KeyFetcher,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limits: NotaryLimits,
    limiter: crate::ratelimit::PerClient,
    /// Countersigned answers by origin (Ed25519 signatures are
    /// deterministic: the bytes equal a fresh signature's).
    signed: Mutex<HashMap<String, Countersigned>>,
}

impl std::fmt::Debug for Notary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notary").finish_non_exhaustive()
    }
}

/// One server's criteria: key ids (empty = all) and the minimum validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Criteria {
    /// The server.
    pub server: String,
    /// Key ids asked for.
    pub key_ids: Vec<String>,
    /// The answer must be valid at least until then (ms).
    pub minimum_valid_until_ts: u64,
}

/// Parse a POST body `{"server_keys": {server: {key_id: {"minimum_valid_until_ts": N}}}}`.
pub fn parse_query(body: &Value, now: u64) -> Result<Vec<Criteria>, NotaryError> {
    let bad = |m: &str| NotaryError::BadRequest(m.to_owned());
    let sk = body
        .get("server_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the body must be an object with a \"server_keys\" object"))?;
    let mut out = Vec::new();
    for (server, ids) in sk {
        let ids = ids.as_object().ok_or_else(|| {
            bad(&format!(
                "server_keys.{server} must be an object of key ids"
            ))
        })?;
        let mut key_ids = Vec::new();
        let mut min = 0;
        for (id, c) in ids {
            key_ids.push(id.clone());
            let m = match c.get("minimum_valid_until_ts") {
                None | Some(Value::Null) => now,
                Some(v) => v.as_u64().ok_or_else(|| {
                    bad(&format!(
                        "server_keys.{server}.{id}.minimum_valid_until_ts must be an integer"
                    ))
                })?,
            };
            min = min.max(m);
        }
        out.push(Criteria {
            server: server.clone(),
            key_ids,
            minimum_valid_until_ts: if ids.is_empty() { now } else { min },
        });
    }
    Ok(out)
}

fn covers(doc: &Value, ids: &[String]) -> bool {
    ids.iter().all(|id| {
        doc.get("verify_keys").and_then(|v| v.get(id)).is_some()
            || doc.get("old_verify_keys").and_then(|v| v.get(id)).is_some()
    })
}

impl Notary {
    /// A notary answering for `own`, fetching with `fetcher`.
    pub fn new(
        own: Arc<KeyServer>,
        fetcher: KeyFetcher,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limits: NotaryLimits,
    ) -> Self {
        Notary {
            own,
            fetcher,
            store,
            metrics,
            limiter: crate::ratelimit::PerClient::new(limits.per_client_per_minute),
            limits,
            signed: Mutex::new(HashMap::new()),
        }
    }

    /// Count a request from `client`; refuse when over the limit.
    pub fn admit(&self, client: IpAddr) -> Result<(), NotaryError> {
        self.limiter
            .admit(client)
            .map_err(|retry_after| NotaryError::RateLimited { retry_after })
    }

    /// Answer a query: `{"server_keys": [...]}`.
    pub async fn answer(
        &self,
        criteria: Vec<Criteria>,
        own_cert: Option<&[u8]>,
    ) -> Result<Value, NotaryError> {
        if criteria.len() > self.limits.max_servers_per_request {
            return Err(NotaryError::TooMany(self.limits.max_servers_per_request));
        }
        let futs = criteria.into_iter().map(|c| self.one(c, own_cert));
        let results = futures_util::future::join_all(futs).await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.extend(r?);
        }
        Ok(json!({ "server_keys": out }))
    }

    async fn one(
        &self,
        c: Criteria,
        own_cert: Option<&[u8]>,
    ) -> Result<Option<Value>, NotaryError> {
        let now = now_ms();
        if c.server == self.own.server_name().as_str() {
            return Ok(self
                .own
                .document(now, own_cert)
                .ok()
                .map(|(d, _)| (*d).clone()));
        }
        if let Some(answer) = self.recent_hit(&c, now) {
            self.metrics.notary(NotaryResult::Hit);
            return Ok(Some(answer));
        }
        let stored = match self.store.server_keys(&c.server).await {
            Ok(s) => s,
            Err(e) if e.is_unavailable() => {
                self.metrics.notary(NotaryResult::Error);
                return Err(NotaryError::Unavailable(e.to_string()));
            }
            Err(e) => {
                // A row that cannot be read is refetched (and replaced).
                tracing::warn!(server = %c.server, error = %e, "stored keys unreadable; refetching");
                None
            }
        };
        Ok(self.one_with(c, stored, now).await)
    }

    async fn one_with(&self, c: Criteria, stored: Option<StoredKeys>, now: u64) -> Option<Value> {
        if let Some(s) = &stored {
            let half_life = s.fetched_at + s.valid_until_ts.saturating_sub(s.fetched_at) / 2;
            if now < half_life
                && s.valid_until_ts >= c.minimum_valid_until_ts
                && covers(&s.json, &c.key_ids)
            {
                self.metrics.notary(NotaryResult::Hit);
                return self.countersign_cached(&c.server, s);
            }
        }
        let Ok(name) = ServerName::parse(&c.server) else {
            self.metrics.notary(NotaryResult::Error);
            return None;
        };
        match self.fetcher.fetch_direct(&name).await {
            Ok(f) => {
                let entry = StoredKeys {
                    server_name: c.server.clone(),
                    json: f.raw.clone(),
                    fetched_at: f.fetched_at,
                    valid_until_ts: f.report.valid_until_ts.unwrap_or(0),
                };
                if let Err(e) = self.store.put_server_keys(&entry).await {
                    tracing::warn!(server = %c.server, error = %e, "cannot store fetched keys");
                }
                self.metrics.notary(NotaryResult::Miss);
                self.countersign_cached(&c.server, &entry)
            }
            Err(e) => {
                tracing::info!(server = %c.server, error = %e, "origin keys unavailable");
                match stored {
                    // Stale is better than nothing: old event signatures
                    // still need the keys.
                    Some(s) => {
                        self.metrics.notary(NotaryResult::Hit);
                        self.countersign_cached(&c.server, &s)
                    }
                    None => {
                        self.metrics.notary(NotaryResult::Error);
                        None
                    }
                }
            }
        }
    }

    /// A hit answered from the countersigned cache, when the store was
    /// read for this origin less than [`STORE_RECHECK`] ago and the entry
    /// meets the criteria.
    fn recent_hit(&self, c: &Criteria, now: u64) -> Option<Value> {
        let ids = self.own_key_ids();
        let m = self.signed.lock().ok()?;
        let e = m.get(&c.server)?;
        let half_life = e.fetched_at + e.valid_until_ts.saturating_sub(e.fetched_at) / 2;
        (e.checked.elapsed() < STORE_RECHECK
            && e.key_ids == ids
            && now < half_life
            && e.valid_until_ts >= c.minimum_valid_until_ts
            && covers(&e.answer, &c.key_ids))
        .then(|| e.answer.clone())
    }

    fn countersign_cached(&self, server: &str, stored: &StoredKeys) -> Option<Value> {
        let ids = self.own_key_ids();
        if let Ok(mut m) = self.signed.lock()
            && let Some(e) = m.get_mut(server)
            && e.fetched_at == stored.fetched_at
            && e.key_ids == ids
        {
            e.checked = Instant::now();
            return Some(e.answer.clone());
        }
        let v = self.countersign(stored.json.clone())?;
        if let Ok(mut m) = self.signed.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(
                server.to_owned(),
                Countersigned {
                    fetched_at: stored.fetched_at,
                    valid_until_ts: stored.valid_until_ts,
                    key_ids: ids,
                    answer: v.clone(),
                    checked: Instant::now(),
                },
            );
        }
        Some(v)
    }

    /// Our key ids (what a cached countersignature was made with).
    fn own_key_ids(&self) -> Vec<String> {
        self.own.keys().iter().map(|k| k.id().to_string()).collect()
    }

    fn countersign(&self, mut doc: Value) -> Option<Value> {
        let keys: Vec<SigningKey> = self.own.keys();
        for k in &keys {
            if signing::sign_json(&mut doc, self.own.server_name().as_str(), k).is_err() {
                return None;
            }
        }
        Some(doc)
    }
}

/// A GET query's criteria.
pub fn get_criteria(
    server: &str,
    key_id: Option<&str>,
    min: Option<u64>,
    now: u64,
) -> Vec<Criteria> {
    vec![Criteria {
        server: server.to_owned(),
        key_ids: key_id.map(|k| vec![k.to_owned()]).unwrap_or_default(),
        minimum_valid_until_ts: min.unwrap_or(now),
    }]
}

/// Parse a query string's `minimum_valid_until_ts`.
pub fn query_min(q: Option<&str>) -> Result<Option<u64>, NotaryError> {
    let Some(q) = q else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("minimum_valid_until_ts=") {
            return v.parse().map(Some).map_err(|_| {
                NotaryError::BadRequest("minimum_valid_until_ts must be an integer".into())
            });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries() {
        let c = parse_query(&json!({"server_keys": {"a.test": {"ed25519:x": {"minimum_valid_until_ts": 5}}, "b.test": {}}}), 100).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0],
            Criteria {
                server: "a.test".into(),
                key_ids: vec!["ed25519:x".into()],
                minimum_valid_until_ts: 5
            }
        );
        assert_eq!(c[1].minimum_valid_until_ts, 100);
        assert!(parse_query(&json!({"nope": 1}), 0).is_err());
        assert!(parse_query(&json!({"server_keys": {"a": 1}}), 0).is_err());
        assert!(
            parse_query(
                &json!({"server_keys": {"a": {"k": {"minimum_valid_until_ts": "x"}}}}),
                0
            )
            .is_err()
        );
        assert_eq!(
            query_min(Some("minimum_valid_until_ts=42")).unwrap(),
            Some(42)
        );
        assert!(query_min(Some("minimum_valid_until_ts=x")).is_err());
    }
}
