//! Fetching server keys and trusting them only after checking signatures:
//! directly from `/_matrix/key/v2/server`, or through a notary
//! (`/_matrix/key/v2/query`), where both the origin's and the notary's
//! signatures must verify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use homeport_core::ServerName;
use homeport_core::keys::{self, KeyCheckReport, KeyProblem};
use homeport_core::signing::{self, KeyId, VerifyError};
use homeport_resolve::cache::SingleFlight;
use serde::Serialize;
use serde_json::Value;

use crate::client::{FederationClient, FederationError, Response};

/// Responses larger than this are refused for key requests.
pub const MAX_KEY_RESPONSE: usize = 1024 * 1024;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How keys were obtained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "via", content = "notary")]
pub enum Via {
    /// From the server itself.
    Direct,
    /// Through this notary.
    Notary(String),
}

/// A key whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedKey {
    /// The server.
    pub server_name: String,
    /// The key id.
    pub key_id: KeyId,
    /// The key.
    pub key: VerifyingKey,
    /// Until when it may be used: `min(valid_until_ts, fetched + 7 days)`
    /// for current keys, `expired_ts` for old ones.
    pub valid_until_ts: u64,
    /// What the response said.
    pub published_valid_until_ts: u64,
    /// For old keys: when they stopped being used. Old keys are valid for
    /// events signed before this, never for requests.
    pub expired_ts: Option<u64>,
    /// When it was fetched.
    pub fetched_at: u64,
    /// How.
    pub via: Via,
}

impl VerifiedKey {
    /// Usable for request signatures at `now` (current keys only).
    pub fn valid_for_requests(&self, now: u64) -> bool {
        self.expired_ts.is_none() && self.valid_until_ts > now
    }
}

/// Why keys could not be trusted.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The request failed.
    #[error(transparent)]
    Request(#[from] FederationError),
    /// A status other than 200.
    #[error("{what} answered HTTP {status}: {body}")]
    Status {
        /// What was asked.
        what: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The body is not JSON.
    #[error("{what} did not answer JSON: {reason}")]
    NotJson {
        /// What was asked.
        what: String,
        /// Why.
        reason: String,
    },
    /// The response failed its checks.
    #[error("keys of {server} failed their checks: {}", problems.iter().filter(|p| p.is_fatal()).map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Checks {
        /// The server.
        server: String,
        /// Every problem.
        problems: Vec<KeyProblem>,
    },
    /// The notary did not sign the response with a key we trust.
    #[error("the notary {notary}'s signature on the keys of {server}: {reason}")]
    NotarySignature {
        /// The notary.
        notary: String,
        /// The server whose keys it served.
        server: String,
        /// Why.
        reason: String,
    },
    /// The notary returned nothing for this server.
    #[error("the notary {notary} returned no keys for {server}")]
    NotaryMissing {
        /// The notary.
        notary: String,
        /// The server.
        server: String,
    },
    /// The notary's response is not of the expected shape.
    #[error("the notary {notary} answered a malformed response: {reason}")]
    NotaryMalformed {
        /// The notary.
        notary: String,
        /// Why.
        reason: String,
    },
}

/// A checked key response.
#[derive(Clone, Debug)]
pub struct FetchedKeys {
    /// The server.
    pub server_name: String,
    /// The response as received.
    pub raw: Value,
    /// The checker's findings.
    pub report: KeyCheckReport,
    /// Current keys that verified.
    pub keys: Vec<VerifiedKey>,
    /// Old keys (trusted because the response's self-signature verified).
    pub old_keys: Vec<VerifiedKey>,
    /// How.
    pub via: Via,
    /// When.
    pub fetched_at: u64,
    /// For notary responses: the notary key that verified.
    pub notary_key: Option<KeyId>,
}

/// A store of verified keys.
pub trait KeyStore: Send + Sync {
    /// One key.
    fn get(&self, server: &str, key_id: &str) -> Option<VerifiedKey>;
    /// Every key of a server.
    fn all(&self, server: &str) -> Vec<VerifiedKey>;
    /// Store keys; an entry with a later validity replaces an earlier one.
    fn put(&self, keys: &[VerifiedKey]);
}

/// An in-memory [`KeyStore`].
#[derive(Default, Debug)]
pub struct MemoryKeyStore {
    map: Mutex<HashMap<(String, String), VerifiedKey>>,
}

impl KeyStore for MemoryKeyStore {
    fn get(&self, server: &str, key_id: &str) -> Option<VerifiedKey> {
        self.map
            .lock()
            .ok()?
            .get(&(server.to_owned(), key_id.to_owned()))
            .cloned()
    }
    fn all(&self, server: &str) -> Vec<VerifiedKey> {
        self.map
            .lock()
            .map(|m| {
                m.values()
                    .filter(|k| k.server_name == server)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
    fn put(&self, keys: &[VerifiedKey]) {
        if let Ok(mut m) = self.map.lock() {
            for k in keys {
                let slot = (k.server_name.clone(), k.key_id.as_str().to_owned());
                match m.get(&slot) {
                    Some(old)
                        if old.valid_until_ts >= k.valid_until_ts
                            && old.expired_ts.is_none() == k.expired_ts.is_none() => {}
                    _ => {
                        m.insert(slot, k.clone());
                    }
                }
            }
        }
    }
}

/// Check one key response for `server` (fetched at `now`), as a direct
/// fetch or a notary entry, and collect the keys it makes trusted.
pub fn check_response(
    raw: Value,
    server: &ServerName,
    now: u64,
    via: Via,
) -> Result<FetchedKeys, KeyError> {
    let report = keys::check_server_keys(&raw, server, now);
    if !report.ok() {
        return Err(KeyError::Checks {
            server: server.as_str().to_owned(),
            problems: report.problems.clone(),
        });
    }
    let published = report.valid_until_ts.unwrap_or(0);
    let effective = report.effective_valid_until(now).unwrap_or(0);
    let keys = report
        .verified_keys()
        .iter()
        .map(|(id, key)| VerifiedKey {
            server_name: server.as_str().to_owned(),
            key_id: id.clone(),
            key: *key,
            valid_until_ts: effective,
            published_valid_until_ts: published,
            expired_ts: None,
            fetched_at: now,
            via: via.clone(),
        })
        .collect();
    let old_keys = report
        .old_verify_keys
        .iter()
        .filter_map(|o| {
            let id = KeyId::parse(&o.key_id).ok()?;
            let key = signing::verifying_key_from_base64(o.key.as_deref()?).ok()?;
            let expired = o.expired_ts?;
            Some(VerifiedKey {
                server_name: server.as_str().to_owned(),
                key_id: id,
                key,
                valid_until_ts: expired,
                published_valid_until_ts: published,
                expired_ts: Some(expired),
                fetched_at: now,
                via: via.clone(),
            })
        })
        .collect();
    Ok(FetchedKeys {
        server_name: server.as_str().to_owned(),
        raw,
        report,
        keys,
        old_keys,
        via,
        fetched_at: now,
        notary_key: None,
    })
}

fn json_of(resp: &Response, what: &str) -> Result<Value, KeyError> {
    if resp.status != http::StatusCode::OK {
        let snippet: String = String::from_utf8_lossy(&resp.body)
            .chars()
            .take(200)
            .collect();
        return Err(KeyError::Status {
            what: what.to_owned(),
            status: resp.status.as_u16(),
            body: snippet,
        });
    }
    resp.json().map_err(|e| KeyError::NotJson {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// Fetches, verifies and stores keys; concurrent fetches for one origin
/// share one request.
pub struct KeyFetcher {
    client: FederationClient,
    store: Arc<dyn KeyStore>,
    flight: SingleFlight<String, Result<Arc<FetchedKeys>, KeyError>>,
}

impl std::fmt::Debug for KeyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFetcher").finish_non_exhaustive()
    }
}

/// A notary entry's check.
#[derive(Clone, Debug)]
pub struct NotaryEntry {
    /// The server the entry is for.
    pub server_name: String,
    /// The result.
    pub result: Result<FetchedKeys, KeyError>,
}

impl KeyFetcher {
    /// A fetcher over `client` storing into `store`.
    pub fn new(client: FederationClient, store: Arc<dyn KeyStore>) -> Self {
        KeyFetcher {
            client,
            store,
            flight: SingleFlight::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The client.
    pub fn client(&self) -> &FederationClient {
        &self.client
    }

    /// `GET /_matrix/key/v2/server` from `server` and check it.
    pub async fn fetch_direct(&self, server: &ServerName) -> Result<Arc<FetchedKeys>, KeyError> {
        let key = server.to_lowercase();
        self.flight
            .run(key, || async {
                let resp = self.client.get(server, "/_matrix/key/v2/server").await?;
                let raw = json_of(&resp, &format!("{server}'s key server"))?;
                let fetched = check_response(raw, server, now_ms(), Via::Direct)?;
                self.store.put(&fetched.keys);
                self.store.put(&fetched.old_keys);
                Ok(Arc::new(fetched))
            })
            .await
    }

    /// Ask `notary` (whose own keys are `notary_keys`) for the keys of
    /// several servers in one `POST /_matrix/key/v2/query`. Each entry is
    /// checked for the origin's self-signature and the notary's signature;
    /// when the notary returns several entries for one server, the one with
    /// the latest validity is kept.
    pub async fn query_notary(
        &self,
        notary: &ServerName,
        notary_keys: &[(KeyId, VerifyingKey)],
        servers: &[(ServerName, Vec<KeyId>)],
        minimum_valid_until_ts: u64,
    ) -> Result<Vec<NotaryEntry>, KeyError> {
        let mut q = serde_json::Map::new();
        for (s, ids) in servers {
            let mut per = serde_json::Map::new();
            for id in ids {
                per.insert(
                    id.as_str().to_owned(),
                    serde_json::json!({ "minimum_valid_until_ts": minimum_valid_until_ts }),
                );
            }
            q.insert(s.as_str().to_owned(), Value::Object(per));
        }
        let body = serde_json::json!({ "server_keys": q });
        let resp = self
            .client
            .post(notary, "/_matrix/key/v2/query", &body)
            .await?;
        let raw = json_of(&resp, &format!("notary {notary}"))?;
        self.notary_entries(notary, notary_keys, raw, servers.iter().map(|(s, _)| s))
    }

    /// `GET /_matrix/key/v2/query/{server}?minimum_valid_until_ts=N`.
    pub async fn query_notary_get(
        &self,
        notary: &ServerName,
        notary_keys: &[(KeyId, VerifyingKey)],
        server: &ServerName,
        minimum_valid_until_ts: u64,
    ) -> Result<Vec<NotaryEntry>, KeyError> {
        let path = format!(
            "/_matrix/key/v2/query/{}?minimum_valid_until_ts={minimum_valid_until_ts}",
            percent_encode_path_segment(server.as_str())
        );
        let resp = self.client.get(notary, &path).await?;
        let raw = json_of(&resp, &format!("notary {notary}"))?;
        self.notary_entries(notary, notary_keys, raw, std::iter::once(server))
    }

    fn notary_entries<'a>(
        &self,
        notary: &ServerName,
        notary_keys: &[(KeyId, VerifyingKey)],
        raw: Value,
        asked: impl Iterator<Item = &'a ServerName>,
    ) -> Result<Vec<NotaryEntry>, KeyError> {
        let malformed = |reason: &str| KeyError::NotaryMalformed {
            notary: notary.as_str().to_owned(),
            reason: reason.to_owned(),
        };
        let Some(list) = raw.get("server_keys").and_then(Value::as_array) else {
            return Err(malformed("no \"server_keys\" array"));
        };
        let now = now_ms();
        // Latest validity per server.
        let mut best: HashMap<String, Value> = HashMap::new();
        for entry in list {
            let Some(name) = entry.get("server_name").and_then(Value::as_str) else {
                continue;
            };
            let until = entry
                .get("valid_until_ts")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let keep = best
                .get(name)
                .and_then(|v| v.get("valid_until_ts"))
                .and_then(Value::as_u64)
                .is_none_or(|old| until > old);
            if keep {
                best.insert(name.to_owned(), entry.clone());
            }
        }
        let mut out = Vec::new();
        for server in asked {
            let result = match best.remove(server.as_str()) {
                None => Err(KeyError::NotaryMissing {
                    notary: notary.as_str().to_owned(),
                    server: server.as_str().to_owned(),
                }),
                Some(entry) => self.check_notary_entry(notary, notary_keys, server, entry, now),
            };
            out.push(NotaryEntry {
                server_name: server.as_str().to_owned(),
                result,
            });
        }
        Ok(out)
    }

    fn check_notary_entry(
        &self,
        notary: &ServerName,
        notary_keys: &[(KeyId, VerifyingKey)],
        server: &ServerName,
        entry: Value,
        now: u64,
    ) -> Result<FetchedKeys, KeyError> {
        let notary_sig = signing::verify_json_any(
            &entry,
            notary.as_str(),
            notary_keys.iter().map(|(i, k)| (i, k)),
        );
        let notary_key = match notary_sig {
            Ok(id) => id,
            Err(e) => {
                let reason = match e {
                    VerifyError::NoSignaturesFrom { .. } => {
                        "the response is not signed by the notary".to_owned()
                    }
                    VerifyError::MissingSignature { .. } => format!(
                        "not signed with a known notary key (known: {})",
                        notary_keys
                            .iter()
                            .map(|(i, _)| i.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    other => other.to_string(),
                };
                return Err(KeyError::NotarySignature {
                    notary: notary.as_str().to_owned(),
                    server: server.as_str().to_owned(),
                    reason,
                });
            }
        };
        let mut fetched =
            check_response(entry, server, now, Via::Notary(notary.as_str().to_owned()))?;
        fetched.notary_key = Some(notary_key);
        self.store.put(&fetched.keys);
        self.store.put(&fetched.old_keys);
        Ok(fetched)
    }

    /// A key valid for request signatures: from the store, else fetched
    /// directly.
    pub async fn request_key(
        &self,
        server: &ServerName,
        key_id: &KeyId,
    ) -> Result<Option<VerifiedKey>, KeyError> {
        let now = now_ms();
        if let Some(k) = self.store.get(server.as_str(), key_id.as_str())
            && k.valid_for_requests(now)
        {
            return Ok(Some(k));
        }
        let fetched = self.fetch_direct(server).await?;
        Ok(fetched.keys.iter().find(|k| &k.key_id == key_id).cloned())
    }
}

/// Percent-encode one path segment (RFC 3986 unreserved kept; `:` and `[]`
/// encoded so IPv6 names survive).
pub fn percent_encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
