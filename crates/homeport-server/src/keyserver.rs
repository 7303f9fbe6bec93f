//! `/_matrix/key/v2/server`: the signed key document, rebuilt lazily —
//! signed with every configured key, with `old_verify_keys`,
//! `valid_until_ts = now + key_refresh_interval`, and the legacy
//! `tls_fingerprints` of the certificate being served.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use homeport_core::ServerName;
use homeport_core::keys::ServerKeysBuilder;
use homeport_core::signing::{KeyId, SigningKey};
use serde_json::Value;

/// A retired key published in `old_verify_keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldKey {
    /// Its id.
    pub id: KeyId,
    /// Public key, base64.
    pub key: String,
    /// When it stopped being used (ms).
    pub expired_ts: u64,
}

struct Cached {
    doc: Arc<Value>,
    canonical: Arc<Vec<u8>>,
    built_at: u64,
    valid_until: u64,
    fingerprint: Option<[u8; 32]>,
}

/// The key server's state.
pub struct KeyServer {
    server_name: ServerName,
    keys: RwLock<Vec<SigningKey>>,
    old_keys: RwLock<Vec<OldKey>>,
    refresh: Duration,
    cache: RwLock<Option<Cached>>,
}

impl std::fmt::Debug for KeyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServer")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl KeyServer {
    /// Serve `keys` (all sign) and `old_keys` for `server_name`.
    pub fn new(
        server_name: ServerName,
        keys: Vec<SigningKey>,
        old_keys: Vec<OldKey>,
        refresh: Duration,
    ) -> Self {
        KeyServer {
            server_name,
            keys: RwLock::new(keys),
            old_keys: RwLock::new(old_keys),
            refresh,
            cache: RwLock::new(None),
        }
    }

    /// The server name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// The signing keys.
    pub fn keys(&self) -> Vec<SigningKey> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// Replace the keys (SIGHUP re-reads the key file).
    pub fn set_keys(&self, keys: Vec<SigningKey>, old_keys: Vec<OldKey>) {
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
        if let Ok(mut o) = self.old_keys.write() {
            *o = old_keys;
        }
        if let Ok(mut c) = self.cache.write() {
            *c = None;
        }
    }

    /// The signed document at `now` (ms) for a served certificate with
    /// SHA-256 `fingerprint`. Rebuilt when a quarter of its validity has
    /// passed, so `valid_until_ts` never gets close to now, or when the
    /// certificate changes.
    pub fn document(
        &self,
        now: u64,
        cert_der: Option<&[u8]>,
    ) -> Result<(Arc<Value>, Arc<Vec<u8>>), String> {
        let fp: Option<[u8; 32]> = cert_der.map(|d| {
            use sha2::Digest as _;
            sha2::Sha256::digest(d).into()
        });
        let refresh_ms = u64::try_from(self.refresh.as_millis()).unwrap_or(u64::MAX);
        if let Ok(c) = self.cache.read()
            && let Some(c) = c.as_ref()
        {
            let fresh = now < c.built_at.saturating_add(refresh_ms / 4) && now < c.valid_until;
            if fresh && c.fingerprint == fp {
                return Ok((c.doc.clone(), c.canonical.clone()));
            }
        }
        let keys = self.keys();
        if keys.is_empty() {
            return Err("no signing key is configured".into());
        }
        let valid_until = now.saturating_add(refresh_ms);
        let mut b = ServerKeysBuilder::new(&self.server_name, valid_until);
        for k in &keys {
            b = b.verify_key(k);
        }
        for o in self.old_keys.read().map(|o| o.clone()).unwrap_or_default() {
            b = b.old_verify_key(&o.id, &o.key, o.expired_ts);
        }
        if let Some(der) = cert_der {
            b = b.tls_certificate(der);
        }
        let refs: Vec<&SigningKey> = keys.iter().collect();
        let doc = b.sign(&refs).map_err(|e| e.to_string())?;
        let canonical = homeport_core::canonical_json::to_canonical_vec(
            &doc,
            homeport_core::canonical_json::Mode::Strict,
        )
        .map_err(|e| e.to_string())?;
        let doc = Arc::new(doc);
        let canonical = Arc::new(canonical);
        if let Ok(mut c) = self.cache.write() {
            *c = Some(Cached {
                doc: doc.clone(),
                canonical: canonical.clone(),
                built_at: now,
                valid_until,
                fingerprint: fp,
            });
        }
        Ok((doc, canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_signed_cached_and_rebuilt() {
        let k = SigningKey::generate("a_1").unwrap();
        let name = ServerName::parse("example.org").unwrap();
        let ks = KeyServer::new(
            name.clone(),
            vec![k.clone()],
            vec![],
            Duration::from_secs(86_400),
        );
        let (d1, _) = ks.document(1_000_000, Some(b"cert")).unwrap();
        let r = homeport_core::keys::check_server_keys(&d1, &name, 1_000_001);
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(d1["valid_until_ts"], 1_000_000 + 86_400_000u64);
        assert!(d1["tls_fingerprints"][0]["sha256"].is_string());
        let (d2, _) = ks.document(1_000_500, Some(b"cert")).unwrap();
        assert!(Arc::ptr_eq(&d1, &d2), "cached");
        let (d3, _) = ks.document(1_000_500, Some(b"other cert")).unwrap();
        assert!(!Arc::ptr_eq(&d1, &d3), "rebuilt for a new certificate");
        let (d4, _) = ks
            .document(1_000_500 + 86_400_000 / 4 + 1, Some(b"other cert"))
            .unwrap();
        assert!(d4["valid_until_ts"].as_u64().unwrap() > d3["valid_until_ts"].as_u64().unwrap());
    }
}
