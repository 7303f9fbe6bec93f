//! Server key documents (`GET /_matrix/key/v2/server`): a typed view, a
//! builder that signs, and a checker that verifies the self-signature against
//! the document's own `verify_keys` and reports every failure precisely.
//!
//! The checker works on the raw JSON value, because the signature covers
//! every field, known or not.
//!
//! ```
//! use homeport_core::keys::{ServerKeysBuilder, check_server_keys};
//! use homeport_core::signing::SigningKey;
//! use homeport_core::ServerName;
//! let key = SigningKey::generate("a_test").unwrap();
//! let name = ServerName::parse("example.org").unwrap();
//! let doc = ServerKeysBuilder::new(&name, 2_000_000_000_000).verify_key(&key).sign(&[&key]).unwrap();
//! let report = check_server_keys(&doc, &name, 1_900_000_000_000);
//! assert!(report.ok(), "{:?}", report.problems);
//! ```

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::base64;
use crate::server_name::ServerName;
use crate::signing::{self, KeyId, SigningError, SigningKey, VerifyError};

/// Seven days in milliseconds: the spec's cap on how long a fetched key is
/// trusted for (room versions 5 and later).
pub const SEVEN_DAYS_MS: u64 = 7 * 24 * 3600 * 1000;
/// Origins should not publish responses that expire within an hour.
pub const ONE_HOUR_MS: u64 = 3600 * 1000;

/// A current verify key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyKeyJson {
    /// Unpadded base64 public key.
    pub key: String,
}

/// An old verify key, valid for events signed before `expired_ts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldVerifyKeyJson {
    /// Unpadded base64 public key.
    pub key: String,
    /// When the key stopped being used (ms since the epoch).
    pub expired_ts: u64,
}

/// A legacy TLS fingerprint entry (Synapse 0.99 era).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFingerprint {
    /// Unpadded base64 SHA-256 of the DER leaf certificate.
    pub sha256: String,
}

/// Typed view of a server key response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerKeys {
    /// The server that published the keys.
    pub server_name: String,
    /// Current keys.
    #[serde(default)]
    pub verify_keys: BTreeMap<String, VerifyKeyJson>,
    /// Retired keys.
    #[serde(default)]
    pub old_verify_keys: BTreeMap<String, OldVerifyKeyJson>,
    /// Until when the response may be used (ms since the epoch).
    pub valid_until_ts: u64,
    /// Signatures: entity → key id → signature.
    #[serde(default)]
    pub signatures: BTreeMap<String, BTreeMap<String, String>>,
    /// Legacy TLS fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprints: Option<Vec<TlsFingerprint>>,
}

/// Builds and signs a key response.
#[derive(Debug, Clone)]
pub struct ServerKeysBuilder {
    server_name: String,
    valid_until_ts: u64,
    verify_keys: BTreeMap<String, VerifyKeyJson>,
    old_verify_keys: BTreeMap<String, OldVerifyKeyJson>,
    tls_fingerprints: Option<Vec<TlsFingerprint>>,
}

impl ServerKeysBuilder {
    /// A response for `server_name` valid until `valid_until_ts` (ms).
    pub fn new(server_name: &ServerName, valid_until_ts: u64) -> Self {
        ServerKeysBuilder {
            server_name: server_name.as_str().to_owned(),
            valid_until_ts,
            verify_keys: BTreeMap::new(),
            old_verify_keys: BTreeMap::new(),
            tls_fingerprints: None,
        }
    }

    /// Publish a current key.
    pub fn verify_key(mut self, key: &SigningKey) -> Self {
        self.verify_keys.insert(
            key.id().as_str().to_owned(),
            VerifyKeyJson {
                key: key.public_key_base64(),
            },
        );
        self
    }

    /// Publish a retired key.
    pub fn old_verify_key(mut self, id: &KeyId, public_key_base64: &str, expired_ts: u64) -> Self {
        self.old_verify_keys.insert(
            id.as_str().to_owned(),
            OldVerifyKeyJson {
                key: public_key_base64.to_owned(),
                expired_ts,
            },
        );
        self
    }

    /// Add a legacy `tls_fingerprints` entry for a DER certificate.
    pub fn tls_certificate(mut self, der: &[u8]) -> Self {
        let fp = TlsFingerprint {
            sha256: base64::encode(sha2::Sha256::digest(der)),
        };
        self.tls_fingerprints.get_or_insert_with(Vec::new).push(fp);
        self
    }

    /// The unsigned document.
    pub fn build(self) -> Value {
        let keys = ServerKeys {
            server_name: self.server_name,
            verify_keys: self.verify_keys,
            old_verify_keys: self.old_verify_keys,
            valid_until_ts: self.valid_until_ts,
            signatures: BTreeMap::new(),
            tls_fingerprints: self.tls_fingerprints,
        };
        let mut v = serde_json::to_value(keys).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("signatures");
        }
        v
    }

    /// Build and sign with each key (as the server itself).
    pub fn sign(self, keys: &[&SigningKey]) -> Result<Value, SigningError> {
        let name = self.server_name.clone();
        let mut v = self.build();
        for k in keys {
            signing::sign_json(&mut v, &name, k)?;
        }
        Ok(v)
    }
}

/// The state of one entity's signature by one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum SignatureStatus {
    /// Present and valid.
    Valid,
    /// No signature by this key.
    Missing,
    /// Present but does not verify.
    Invalid,
    /// Present but not a 64-byte base64 string.
    Malformed(String),
    /// The key itself is unusable (bad base64, not a point).
    BadKey(String),
    /// Not an algorithm homeport can verify.
    UnsupportedAlgorithm,
}

impl SignatureStatus {
    /// The status as one snake_case word (`valid`, `missing`, `invalid`,
    /// `malformed`, `bad_key`, `unsupported_algorithm`), without the reason:
    /// the checker reports the reason of `malformed` and `bad_key` as a
    /// [`KeyProblem`] too.
    pub fn as_str(&self) -> &'static str {
        match self {
            SignatureStatus::Valid => "valid",
            SignatureStatus::Missing => "missing",
            SignatureStatus::Invalid => "invalid",
            SignatureStatus::Malformed(_) => "malformed",
            SignatureStatus::BadKey(_) => "bad_key",
            SignatureStatus::UnsupportedAlgorithm => "unsupported_algorithm",
        }
    }
}

/// One entry of `verify_keys` and what was found about it.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyKeyCheck {
    /// The key id as written.
    pub key_id: String,
    /// The public key as written (base64), when it is a string.
    pub key: Option<String>,
    /// The self-signature by this key.
    pub signature: SignatureStatus,
}

/// One entry of `old_verify_keys`.
#[derive(Clone, Debug, Serialize)]
pub struct OldKeyCheck {
    /// The key id.
    pub key_id: String,
    /// The public key.
    pub key: Option<String>,
    /// When it expired.
    pub expired_ts: Option<u64>,
}

/// A failed check, each naming what and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "problem")]
#[non_exhaustive]
pub enum KeyProblem {
    /// The document is not a JSON object.
    #[error("the key response is not a JSON object")]
    NotAnObject,
    /// `server_name` is missing or not a string.
    #[error("\"server_name\" is missing or not a string")]
    ServerNameMissing,
    /// `server_name` is another server.
    #[error("\"server_name\" is {found:?}, but the keys were fetched for {expected:?}")]
    ServerNameMismatch {
        /// The name asked for.
        expected: String,
        /// The name in the document.
        found: String,
    },
    /// `valid_until_ts` is missing or not an integer.
    #[error("\"valid_until_ts\" is missing or not an integer")]
    ValidUntilMissing,
    /// `valid_until_ts` is in the past.
    #[error("the response expired: valid_until_ts {valid_until_ts} is before now ({now})")]
    Expired {
        /// The document's value.
        valid_until_ts: u64,
        /// The time of the check.
        now: u64,
    },
    /// `verify_keys` is missing, not an object, or empty.
    #[error("\"verify_keys\" is missing, empty or not an object")]
    NoVerifyKeys,
    /// A `verify_keys` entry that cannot be used.
    #[error("verify key {key_id}: {reason}")]
    BadVerifyKey {
        /// The key id.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// No valid signature by the server with one of its own `verify_keys`.
    #[error(
        "no valid self-signature: the response is not signed by {server_name} with any key in its verify_keys"
    )]
    NoSelfSignature {
        /// The server.
        server_name: String,
    },
    /// A signature by one of its own keys that does not verify.
    #[error("the signature by {key_id} does not verify against the key published under that id")]
    SignatureInvalid {
        /// The key id.
        key_id: String,
    },
    /// A malformed signature by one of its own keys.
    #[error("the signature by {key_id} is malformed: {reason}")]
    SignatureMalformed {
        /// The key id.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// Signed by a key that is not in `verify_keys` (only informational:
    /// such a signature cannot be checked).
    #[error(
        "signed with {key_id}, which is not in verify_keys, so that signature cannot be checked"
    )]
    SignatureByUnknownKey {
        /// The key id.
        key_id: String,
    },
    /// The document has no canonical form (a float, a huge integer).
    #[error("the response has no canonical JSON form: {reason}")]
    NotCanonical {
        /// Why.
        reason: String,
    },
}

impl KeyProblem {
    /// True for problems that make the response unusable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, KeyProblem::SignatureByUnknownKey { .. })
    }
}

/// What the checker found.
#[derive(Clone, Debug, Serialize)]
pub struct KeyCheckReport {
    /// `server_name` as found.
    pub server_name: Option<String>,
    /// `valid_until_ts` as found.
    pub valid_until_ts: Option<u64>,
    /// Each current key.
    pub verify_keys: Vec<VerifyKeyCheck>,
    /// Each old key.
    pub old_verify_keys: Vec<OldKeyCheck>,
    /// Every failure, in the order found.
    pub problems: Vec<KeyProblem>,
    #[serde(skip)]
    verified: Vec<(KeyId, VerifyingKey)>,
}

impl KeyCheckReport {
    /// No fatal problem: the server name matches, `valid_until_ts` is in the
    /// future, at least one self-signature verifies, and none is invalid.
    pub fn ok(&self) -> bool {
        !self.problems.iter().any(KeyProblem::is_fatal)
    }

    /// The keys whose self-signature verified.
    pub fn verified_keys(&self) -> &[(KeyId, VerifyingKey)] {
        &self.verified
    }

    /// The validity a fetcher should store: `min(valid_until_ts, fetched +
    /// 7 days)`.
    pub fn effective_valid_until(&self, fetched_ms: u64) -> Option<u64> {
        self.valid_until_ts
            .map(|v| v.min(fetched_ms.saturating_add(SEVEN_DAYS_MS)))
    }

    /// True when the response expires within an hour of `now`.
    pub fn expires_within_an_hour(&self, now_ms: u64) -> bool {
        self.valid_until_ts
            .is_some_and(|v| v > now_ms && v - now_ms < ONE_HOUR_MS)
    }

    /// True when `valid_until_ts` is more than 7 days after `now`.
    pub fn validity_over_seven_days(&self, now_ms: u64) -> bool {
        self.valid_until_ts
            .is_some_and(|v| v > now_ms.saturating_add(SEVEN_DAYS_MS))
    }
}

/// Check a key response fetched for `expected` at time `now_ms`.
pub fn check_server_keys(doc: &Value, expected: &ServerName, now_ms: u64) -> KeyCheckReport {
    let mut report = KeyCheckReport {
        server_name: None,
        valid_until_ts: None,
        verify_keys: Vec::new(),
        old_verify_keys: Vec::new(),
        problems: Vec::new(),
        verified: Vec::new(),
    };
    let Some(obj) = doc.as_object() else {
        report.problems.push(KeyProblem::NotAnObject);
        return report;
    };
    match obj.get("server_name").and_then(Value::as_str) {
        None => report.problems.push(KeyProblem::ServerNameMissing),
        Some(found) => {
            report.server_name = Some(found.to_owned());
            if found != expected.as_str() {
                report.problems.push(KeyProblem::ServerNameMismatch {
                    expected: expected.as_str().to_owned(),
                    found: found.to_owned(),
                });
            }
        }
    }
    match obj.get("valid_until_ts").and_then(Value::as_u64) {
        None => report.problems.push(KeyProblem::ValidUntilMissing),
        Some(v) => {
            report.valid_until_ts = Some(v);
            if v <= now_ms {
                report.problems.push(KeyProblem::Expired {
                    valid_until_ts: v,
                    now: now_ms,
                });
            }
        }
    }
    if let Some(Value::Object(old)) = obj.get("old_verify_keys") {
        for (id, entry) in old {
            report.old_verify_keys.push(OldKeyCheck {
                key_id: id.clone(),
                key: entry.get("key").and_then(Value::as_str).map(str::to_owned),
                expired_ts: entry.get("expired_ts").and_then(Value::as_u64),
            });
        }
    }
    let bytes = match signing::signed_bytes(obj) {
        Ok(b) => Some(b),
        Err(e) => {
            report.problems.push(KeyProblem::NotCanonical {
                reason: e.to_string(),
            });
            None
        }
    };
    // Sign with the name as written in the document when it is there, so a
    // mismatch is reported once, not again as "no self-signature".
    let entity = report
        .server_name
        .clone()
        .unwrap_or_else(|| expected.as_str().to_owned());
    let verify_keys = match obj.get("verify_keys") {
        Some(Value::Object(m)) if !m.is_empty() => Some(m),
        _ => {
            report.problems.push(KeyProblem::NoVerifyKeys);
            None
        }
    };
    let signed_ids: Vec<String> = obj
        .get("signatures")
        .and_then(|s| s.get(&entity))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut any_valid = false;
    if let Some(vk) = verify_keys {
        for (id_text, entry) in vk {
            let key_text = entry.get("key").and_then(Value::as_str);
            let status = check_one_key(
                obj,
                bytes.as_deref(),
                &entity,
                id_text,
                key_text,
                &mut report,
            );
            if status == SignatureStatus::Valid {
                any_valid = true;
            }
            report.verify_keys.push(VerifyKeyCheck {
                key_id: id_text.clone(),
                key: key_text.map(str::to_owned),
                signature: status,
            });
        }
    }
    for id in &signed_ids {
        if !verify_keys.is_some_and(|vk| vk.contains_key(id)) {
            report
                .problems
                .push(KeyProblem::SignatureByUnknownKey { key_id: id.clone() });
        }
    }
    if !any_valid && bytes.is_some() {
        report.problems.push(KeyProblem::NoSelfSignature {
            server_name: entity,
        });
    }
    report
}

fn check_one_key(
    obj: &Map<String, Value>,
    bytes: Option<&[u8]>,
    entity: &str,
    id_text: &str,
    key_text: Option<&str>,
    report: &mut KeyCheckReport,
) -> SignatureStatus {
    let id = match KeyId::parse(id_text) {
        Ok(id) => id,
        Err(e) => {
            report.problems.push(KeyProblem::BadVerifyKey {
                key_id: id_text.to_owned(),
                reason: e.to_string(),
            });
            return SignatureStatus::BadKey(e.to_string());
        }
    };
    if !id.is_ed25519() {
        return SignatureStatus::UnsupportedAlgorithm;
    }
    let Some(key_text) = key_text else {
        let reason = "\"key\" is missing or not a string".to_owned();
        report.problems.push(KeyProblem::BadVerifyKey {
            key_id: id_text.to_owned(),
            reason: reason.clone(),
        });
        return SignatureStatus::BadKey(reason);
    };
    let key = match signing::verifying_key_from_base64(key_text) {
        Ok(k) => k,
        Err(e) => {
            report.problems.push(KeyProblem::BadVerifyKey {
                key_id: id_text.to_owned(),
                reason: e.to_string(),
            });
            return SignatureStatus::BadKey(e.to_string());
        }
    };
    let Some(bytes) = bytes else {
        return SignatureStatus::Missing;
    };
    match signing::verify_object_bytes(obj, bytes, entity, &id, &key) {
        Ok(()) => {
            report.verified.push((id, key));
            SignatureStatus::Valid
        }
        Err(VerifyError::NoSignaturesFrom { .. } | VerifyError::MissingSignature { .. }) => {
            SignatureStatus::Missing
        }
        Err(VerifyError::Malformed { reason, .. }) => {
            report.problems.push(KeyProblem::SignatureMalformed {
                key_id: id_text.to_owned(),
                reason: reason.clone(),
            });
            SignatureStatus::Malformed(reason)
        }
        Err(_) => {
            report.problems.push(KeyProblem::SignatureInvalid {
                key_id: id_text.to_owned(),
            });
            SignatureStatus::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical_json::{self, Mode};

    const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
    const SPEC_DOC: &str = r#"{"old_verify_keys":{},"server_name":"domain","signatures":{"domain":{"ed25519:1":"ewq/uPhfAzmWSa/3PRlr5Q0W59jG75Wtb6mzxIELuVRAxYMHOeMFue6fNXijZkIwLLembQ0+gl7DIkiUGcoUBg"}},"valid_until_ts":1700000000000,"verify_keys":{"ed25519:1":{"key":"XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"}}}"#;

    fn spec_key() -> SigningKey {
        SigningKey::from_seed_base64("1", SPEC_SEED).unwrap()
    }
    fn domain() -> ServerName {
        ServerName::parse("domain").unwrap()
    }
    fn problems(doc: &Value, now: u64) -> Vec<KeyProblem> {
        check_server_keys(doc, &domain(), now).problems
    }

    #[test]
    fn spec_signed_key_document_builds_and_verifies() {
        let doc = ServerKeysBuilder::new(&domain(), 1_700_000_000_000)
            .verify_key(&spec_key())
            .sign(&[&spec_key()])
            .unwrap();
        assert_eq!(
            canonical_json::to_canonical_string(&doc, Mode::Strict).unwrap(),
            SPEC_DOC
        );
        let parsed: Value = serde_json::from_str(SPEC_DOC).unwrap();
        let report = check_server_keys(&parsed, &domain(), 1_600_000_000_000);
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.verified_keys().len(), 1);
        assert_eq!(report.verify_keys[0].signature, SignatureStatus::Valid);
        let typed: ServerKeys = serde_json::from_value(parsed).unwrap();
        assert_eq!(
            typed.verify_keys["ed25519:1"].key,
            spec_key().public_key_base64()
        );
    }

    #[test]
    fn expired_response() {
        let parsed: Value = serde_json::from_str(SPEC_DOC).unwrap();
        assert_eq!(
            problems(&parsed, 1_700_000_000_000),
            vec![KeyProblem::Expired {
                valid_until_ts: 1_700_000_000_000,
                now: 1_700_000_000_000
            }]
        );
    }

    #[test]
    fn server_name_mismatch() {
        let parsed: Value = serde_json::from_str(SPEC_DOC).unwrap();
        let other = ServerName::parse("other.example").unwrap();
        let r = check_server_keys(&parsed, &other, 0);
        assert_eq!(
            r.problems,
            vec![KeyProblem::ServerNameMismatch {
                expected: "other.example".into(),
                found: "domain".into()
            }]
        );
        assert!(!r.ok());
    }

    #[test]
    fn no_self_signature_and_unknown_key() {
        let other = SigningKey::generate("x").unwrap();
        let doc = ServerKeysBuilder::new(&domain(), 4_000_000_000_000)
            .verify_key(&spec_key())
            .sign(&[&other])
            .unwrap();
        let p = problems(&doc, 0);
        assert!(p.contains(&KeyProblem::SignatureByUnknownKey {
            key_id: "ed25519:x".into()
        }));
        assert!(p.contains(&KeyProblem::NoSelfSignature {
            server_name: "domain".into()
        }));
        let unsigned = ServerKeysBuilder::new(&domain(), 4_000_000_000_000)
            .verify_key(&spec_key())
            .build();
        assert_eq!(
            problems(&unsigned, 0),
            vec![KeyProblem::NoSelfSignature {
                server_name: "domain".into()
            }]
        );
    }

    #[test]
    fn signature_invalid_when_tampered() {
        let mut doc: Value = serde_json::from_str(SPEC_DOC).unwrap();
        doc["valid_until_ts"] = 1_800_000_000_000u64.into();
        let p = problems(&doc, 0);
        assert_eq!(
            p,
            vec![
                KeyProblem::SignatureInvalid {
                    key_id: "ed25519:1".into()
                },
                KeyProblem::NoSelfSignature {
                    server_name: "domain".into()
                }
            ]
        );
    }

    #[test]
    fn one_invalid_signature_fails_even_with_a_valid_one() {
        let k2 = SigningKey::generate("2").unwrap();
        let mut doc = ServerKeysBuilder::new(&domain(), 4_000_000_000_000)
            .verify_key(&spec_key())
            .verify_key(&k2)
            .sign(&[&spec_key(), &k2])
            .unwrap();
        doc["signatures"]["domain"]["ed25519:2"] = doc["signatures"]["domain"]["ed25519:1"].clone();
        let r = check_server_keys(&doc, &domain(), 0);
        assert_eq!(
            r.problems,
            vec![KeyProblem::SignatureInvalid {
                key_id: "ed25519:2".into()
            }]
        );
        assert!(!r.ok());
    }

    #[test]
    fn bad_base64_key_and_signature() {
        let mut doc: Value = serde_json::from_str(SPEC_DOC).unwrap();
        doc["verify_keys"]["ed25519:1"]["key"] = "not*base64".into();
        let p = problems(&doc, 0);
        assert!(
            matches!(&p[0], KeyProblem::BadVerifyKey { key_id, .. } if key_id == "ed25519:1"),
            "{p:?}"
        );
        let mut doc: Value = serde_json::from_str(SPEC_DOC).unwrap();
        doc["signatures"]["domain"]["ed25519:1"] = "@@@".into();
        let p = problems(&doc, 0);
        assert!(
            matches!(&p[0], KeyProblem::SignatureMalformed { .. }),
            "{p:?}"
        );
    }

    #[test]
    fn status_words_are_snake_case_and_reasons_are_problems() {
        let status = |doc: &Value| {
            check_server_keys(doc, &domain(), 0)
                .verify_keys
                .iter()
                .map(|v| v.signature.as_str())
                .collect::<Vec<_>>()
        };
        let doc: Value = serde_json::from_str(SPEC_DOC).unwrap();
        assert_eq!(status(&doc), ["valid"]);
        let mut bad_sig = doc.clone();
        bad_sig["signatures"]["domain"]["ed25519:1"] = "@@@".into();
        assert_eq!(status(&bad_sig), ["malformed"]);
        let mut bad_key = doc.clone();
        bad_key["verify_keys"]["ed25519:1"]["key"] = "not*base64".into();
        assert_eq!(status(&bad_key), ["bad_key"]);
        for d in [&bad_sig, &bad_key] {
            let r = check_server_keys(d, &domain(), 0);
            assert!(
                r.problems.iter().any(|p| matches!(
                    p,
                    KeyProblem::SignatureMalformed { .. } | KeyProblem::BadVerifyKey { .. }
                )),
                "the reason is a problem: {:?}",
                r.problems
            );
        }
        // A key added after signing: the document no longer verifies.
        let mut other_alg = doc.clone();
        other_alg["verify_keys"]["curve25519:1"] = serde_json::json!({"key": "x"});
        assert_eq!(status(&other_alg), ["unsupported_algorithm", "invalid"]);
        let mut unsigned = doc;
        unsigned["signatures"]["domain"]
            .as_object_mut()
            .unwrap()
            .remove("ed25519:1");
        assert_eq!(status(&unsigned), ["missing"]);
    }

    #[test]
    fn missing_fields() {
        assert_eq!(problems(&Value::Null, 0), vec![KeyProblem::NotAnObject]);
        let p = problems(&serde_json::json!({}), 0);
        assert_eq!(
            p,
            vec![
                KeyProblem::ServerNameMissing,
                KeyProblem::ValidUntilMissing,
                KeyProblem::NoVerifyKeys,
                KeyProblem::NoSelfSignature {
                    server_name: "domain".into()
                }
            ]
        );
        let p = problems(
            &serde_json::json!({"server_name": "domain", "valid_until_ts": 1.5, "verify_keys": {}}),
            0,
        );
        assert!(p.contains(&KeyProblem::ValidUntilMissing), "{p:?}");
        assert!(p.contains(&KeyProblem::NoVerifyKeys), "{p:?}");
    }

    #[test]
    fn seven_day_clamp_and_hour_warning() {
        let parsed: Value = serde_json::from_str(SPEC_DOC).unwrap();
        let r = check_server_keys(&parsed, &domain(), 0);
        let fetched = 1_600_000_000_000;
        assert_eq!(
            r.effective_valid_until(fetched),
            Some(fetched + SEVEN_DAYS_MS)
        );
        assert_eq!(
            r.effective_valid_until(1_699_999_999_000),
            Some(1_700_000_000_000)
        );
        assert!(r.validity_over_seven_days(fetched));
        assert!(!r.validity_over_seven_days(1_699_500_000_000));
        assert!(r.expires_within_an_hour(1_700_000_000_000 - 60_000));
        assert!(!r.expires_within_an_hour(1_700_000_000_000 - 2 * ONE_HOUR_MS));
    }

    #[test]
    fn tls_fingerprints_and_old_keys() {
        let id = KeyId::parse("ed25519:old").unwrap();
        let doc = ServerKeysBuilder::new(&domain(), 4_000_000_000_000)
            .verify_key(&spec_key())
            .old_verify_key(&id, &spec_key().public_key_base64(), 5)
            .tls_certificate(b"der bytes")
            .sign(&[&spec_key()])
            .unwrap();
        let typed: ServerKeys = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(typed.old_verify_keys["ed25519:old"].expired_ts, 5);
        assert_eq!(
            typed.tls_fingerprints.unwrap()[0].sha256,
            base64::encode(sha2::Sha256::digest(b"der bytes"))
        );
        let r = check_server_keys(&doc, &domain(), 0);
        assert!(r.ok());
        assert_eq!(r.old_verify_keys[0].expired_ts, Some(5));
    }
}
