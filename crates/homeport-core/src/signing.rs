//! Ed25519 keys, key ids, Synapse signing-key files and signed JSON.
//!
//! ```
//! use homeport_core::signing::{SigningKey, sign_json, verify_json};
//! let key = SigningKey::from_seed_base64("1", "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
//! let mut doc = serde_json::json!({"one": 1, "two": "Two"});
//! sign_json(&mut doc, "domain", &key).unwrap();
//! verify_json(&doc, "domain", key.id(), &key.verifying_key()).unwrap();
//! ```

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, VerifyingKey};
use rand::Rng as _;
use serde_json::{Map, Value};

use crate::base64::{self, Base64Error};
use crate::canonical_json::{self, CanonicalJsonError, Mode};

/// A key id, `algorithm:version` (`ed25519:a_AbCd`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId {
    text: Box<str>,
    colon: usize,
}

/// Why a key id is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyIdError {
    /// No `:` separating algorithm and version.
    #[error("key id {0:?} has no ':' between algorithm and version (expected e.g. ed25519:a_AbCd)")]
    NoColon(String),
    /// Empty algorithm or version.
    #[error("key id {0:?} has an empty algorithm or version")]
    Empty(String),
    /// A character not allowed in a key id.
    #[error("key id {id:?} has invalid character {ch:?} at position {pos}")]
    InvalidChar {
        /// The id.
        id: String,
        /// The character.
        ch: char,
        /// Where.
        pos: usize,
    },
}

impl KeyId {
    /// Parse `algorithm:version`. The algorithm is `[a-z0-9_]`; the version
    /// is printable ASCII without spaces, quotes, commas or backslashes (the
    /// spec asks for `[a-zA-Z0-9_]`; peers in the wild use a little more).
    pub fn parse(s: &str) -> Result<Self, KeyIdError> {
        let colon = s.find(':').ok_or_else(|| KeyIdError::NoColon(s.into()))?;
        if colon == 0 || colon + 1 == s.len() {
            return Err(KeyIdError::Empty(s.into()));
        }
        for (pos, ch) in s.char_indices() {
            let ok = if pos < colon {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'
            } else if pos == colon {
                true
            } else {
                ch.is_ascii_graphic() && !matches!(ch, '"' | ',' | '\\')
            };
            if !ok {
                return Err(KeyIdError::InvalidChar {
                    id: s.into(),
                    ch,
                    pos,
                });
            }
        }
        Ok(KeyId {
            text: s.into(),
            colon,
        })
    }

    /// `ed25519:<version>`, validating the version.
    pub fn ed25519(version: &str) -> Result<Self, KeyIdError> {
        Self::parse(&format!("ed25519:{version}"))
    }

    /// The whole id.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The algorithm part (`ed25519`).
    pub fn algorithm(&self) -> &str {
        &self.text[..self.colon]
    }
    /// The version part.
    pub fn version(&self) -> &str {
        &self.text[self.colon + 1..]
    }
    /// True for `ed25519:` ids.
    pub fn is_ed25519(&self) -> bool {
        self.algorithm() == "ed25519"
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for KeyId {
    type Err = KeyIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A random key version: `a_` plus four alphanumerics, as Synapse makes.
pub fn random_key_version() -> String {
    let mut rng = rand::thread_rng();
    let tail: String = (0..4)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect();
    format!("a_{tail}")
}

/// An Ed25519 signing key with its key id.
#[derive(Clone)]
pub struct SigningKey {
    id: KeyId,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("public", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key with the given version.
    pub fn generate(version: &str) -> Result<Self, KeyIdError> {
        let seed: [u8; 32] = rand::random();
        Ok(Self::from_seed(KeyId::ed25519(version)?, seed))
    }

    /// From a 32-byte seed.
    pub fn from_seed(id: KeyId, seed: [u8; 32]) -> Self {
        SigningKey {
            id,
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// From a version and a base64 seed (padded or not).
    pub fn from_seed_base64(version: &str, seed: &str) -> Result<Self, SigningError> {
        let id = KeyId::ed25519(version)?;
        let seed =
            base64::decode_array::<32>(seed).map_err(|source| SigningError::Seed { source })?;
        Ok(Self::from_seed(id, seed))
    }

    /// The key id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
    /// The public key, unpadded base64.
    pub fn public_key_base64(&self) -> String {
        base64::encode(self.key.verifying_key().as_bytes())
    }
    /// The seed, unpadded base64 (what Synapse's key file holds).
    pub fn seed_base64(&self) -> String {
        base64::encode(self.key.to_bytes())
    }
    /// Sign raw bytes.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

/// Parse a public key from unpadded (or padded) base64.
pub fn verifying_key_from_base64(text: &str) -> Result<VerifyingKey, SigningError> {
    let bytes =
        base64::decode_array::<32>(text).map_err(|source| SigningError::PublicKey { source })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::PublicKeyPoint)
}

/// Errors from keys, key files and signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// A bad key id.
    #[error(transparent)]
    KeyId(#[from] KeyIdError),
    /// The seed is not 32 bytes of base64.
    #[error("signing key seed: {source}")]
    Seed {
        /// Why.
        #[source]
        source: Base64Error,
    },
    /// A public key that is not 32 bytes of base64.
    #[error("public key: {source}")]
    PublicKey {
        /// Why.
        #[source]
        source: Base64Error,
    },
    /// 32 bytes that are not a curve point.
    #[error("public key is not a valid Ed25519 point")]
    PublicKeyPoint,
    /// A line of a key file.
    #[error("line {line}: {message}")]
    KeyFile {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The key file holds no key.
    #[error("the key file holds no key")]
    EmptyKeyFile,
    /// Signing needs an object.
    #[error("only a JSON object can be signed, got {0}")]
    NotAnObject(&'static str),
    /// `signatures` exists but is not an object of objects.
    #[error("existing \"signatures\" is not an object of objects")]
    BadSignatures,
    /// The value has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
}

/// Read a Synapse signing-key file: one key per line,
/// `ed25519 <version> <unpadded base64 seed>`. Blank lines are skipped.
pub fn parse_key_file(text: &str) -> Result<Vec<SigningKey>, SigningError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let parts: Vec<&str> = trimmed.split_whitespace().collect();
        let [alg, version, seed] = parts.as_slice() else {
            return Err(SigningError::KeyFile {
                line: line_no,
                message: format!(
                    "expected 3 fields \"ed25519 <version> <seed>\", found {}",
                    parts.len()
                ),
            });
        };
        if *alg != "ed25519" {
            return Err(SigningError::KeyFile {
                line: line_no,
                message: format!("unsupported algorithm {alg:?} (only ed25519)"),
            });
        }
        let key =
            SigningKey::from_seed_base64(version, seed).map_err(|e| SigningError::KeyFile {
                line: line_no,
                message: e.to_string(),
            })?;
        if keys.iter().any(|k: &SigningKey| k.id == key.id) {
            return Err(SigningError::KeyFile {
                line: line_no,
                message: format!("key {} appears twice", key.id),
            });
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(SigningError::EmptyKeyFile);
    }
    Ok(keys)
}

/// Write keys in Synapse's file format (one line each, `\n`-terminated).
pub fn format_key_file(keys: &[SigningKey]) -> String {
    let mut out = String::new();
    for k in keys {
        out.push_str(k.id.algorithm());
        out.push(' ');
        out.push_str(k.id.version());
        out.push(' ');
        out.push_str(&k.seed_base64());
        out.push('\n');
    }
    out
}

/// The bytes a signature over `object` covers: its canonical JSON without
/// `signatures` and `unsigned`.
pub fn signed_bytes(object: &Map<String, Value>) -> Result<Vec<u8>, CanonicalJsonError> {
    let mut out = Vec::with_capacity(512);
    canonical_json::write_canonical_object_without(
        &mut out,
        object,
        &["signatures", "unsigned"],
        Mode::Lenient,
    )?;
    Ok(out)
}

/// Sign `value` (an object) as `entity` with `key`, merging into any existing
/// `signatures` and leaving `unsigned` out of the signed bytes.
pub fn sign_json(value: &mut Value, entity: &str, key: &SigningKey) -> Result<(), SigningError> {
    let Value::Object(obj) = value else {
        return Err(SigningError::NotAnObject(json_kind(value)));
    };
    let bytes = signed_bytes(obj)?;
    let sig = base64::encode(key.sign(&bytes));
    let sigs = obj
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(sigs) = sigs else {
        return Err(SigningError::BadSignatures);
    };
    let per_entity = sigs
        .entry(entity.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(per_entity) = per_entity else {
        return Err(SigningError::BadSignatures);
    };
    per_entity.insert(key.id.as_str().to_owned(), Value::String(sig));
    Ok(())
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why a signature check failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The value is not an object.
    #[error("the signed value is {0}, not an object")]
    NotAnObject(&'static str),
    /// No `signatures[entity]` at all.
    #[error("no signatures from {entity}")]
    NoSignaturesFrom {
        /// The entity.
        entity: String,
    },
    /// No signature by this key.
    #[error("no signature from {entity} with key {key_id}")]
    MissingSignature {
        /// The entity.
        entity: String,
        /// The key id.
        key_id: String,
    },
    /// A signature that is not a string of 64 base64 bytes.
    #[error("signature from {entity} with key {key_id} is malformed: {reason}")]
    Malformed {
        /// The entity.
        entity: String,
        /// The key id.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// A well-formed signature that does not verify.
    #[error("signature from {entity} with key {key_id} does not verify")]
    Invalid {
        /// The entity.
        entity: String,
        /// The key id.
        key_id: String,
    },
    /// The value has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
}

/// Verify one entity's signature by one key.
pub fn verify_json(
    value: &Value,
    entity: &str,
    key_id: &KeyId,
    key: &VerifyingKey,
) -> Result<(), VerifyError> {
    let obj = value
        .as_object()
        .ok_or_else(|| VerifyError::NotAnObject(json_kind(value)))?;
    let bytes = signed_bytes(obj)?;
    verify_object_bytes(obj, &bytes, entity, key_id, key)
}

/// The signature string `signatures[entity][key_id]`, if present.
pub fn signature_of<'a>(
    obj: &'a Map<String, Value>,
    entity: &str,
    key_id: &str,
) -> Option<&'a Value> {
    obj.get("signatures")?.get(entity)?.get(key_id)
}

/// Verify against already computed signed bytes (so several keys or
/// entities can be checked with one canonicalisation).
pub fn verify_object_bytes(
    obj: &Map<String, Value>,
    bytes: &[u8],
    entity: &str,
    key_id: &KeyId,
    key: &VerifyingKey,
) -> Result<(), VerifyError> {
    let Some(per_entity) = obj.get("signatures").and_then(|s| s.get(entity)) else {
        return Err(VerifyError::NoSignaturesFrom {
            entity: entity.into(),
        });
    };
    let Some(sig) = per_entity.get(key_id.as_str()) else {
        return Err(VerifyError::MissingSignature {
            entity: entity.into(),
            key_id: key_id.as_str().into(),
        });
    };
    verify_signature_value(sig, bytes, entity, key_id, key)
}

/// Check one signature value (a base64 string) over `bytes`.
pub fn verify_signature_value(
    sig: &Value,
    bytes: &[u8],
    entity: &str,
    key_id: &KeyId,
    key: &VerifyingKey,
) -> Result<(), VerifyError> {
    let malformed = |reason: String| VerifyError::Malformed {
        entity: entity.into(),
        key_id: key_id.as_str().into(),
        reason,
    };
    let Value::String(sig) = sig else {
        return Err(malformed(format!("it is {}, not a string", json_kind(sig))));
    };
    let raw = base64::decode_array::<64>(sig).map_err(|e| malformed(e.to_string()))?;
    let sig = ed25519_dalek::Signature::from_bytes(&raw);
    key.verify_strict(bytes, &sig)
        .map_err(|_| VerifyError::Invalid {
            entity: entity.into(),
            key_id: key_id.as_str().into(),
        })
}

/// Verify with the "any valid key" policy: succeeds with the id of the first
/// key (in `keys` order) whose signature is present and valid. When none
/// verifies, the error is the most telling one seen (an invalid signature
/// over a missing one).
pub fn verify_json_any<'k>(
    value: &Value,
    entity: &str,
    keys: impl IntoIterator<Item = (&'k KeyId, &'k VerifyingKey)>,
) -> Result<KeyId, VerifyError> {
    let obj = value
        .as_object()
        .ok_or_else(|| VerifyError::NotAnObject(json_kind(value)))?;
    let bytes = signed_bytes(obj)?;
    let mut worst = VerifyError::NoSignaturesFrom {
        entity: entity.into(),
    };
    for (id, key) in keys {
        match verify_object_bytes(obj, &bytes, entity, id, key) {
            Ok(()) => return Ok(id.clone()),
            Err(e) => {
                let rank = |e: &VerifyError| match e {
                    VerifyError::Invalid { .. } | VerifyError::Malformed { .. } => 2,
                    VerifyError::MissingSignature { .. } => 1,
                    _ => 0,
                };
                if rank(&e) > rank(&worst) {
                    worst = e;
                }
            }
        }
    }
    Err(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
    pub(crate) const SPEC_PUBLIC: &str = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI";

    fn spec_key() -> SigningKey {
        SigningKey::from_seed_base64("1", SPEC_SEED).unwrap()
    }

    #[test]
    fn spec_key_public_half() {
        assert_eq!(spec_key().public_key_base64(), SPEC_PUBLIC);
        assert_eq!(spec_key().id().as_str(), "ed25519:1");
    }

    #[test]
    fn spec_vector_empty_object() {
        let mut v = serde_json::json!({});
        sign_json(&mut v, "domain", &spec_key()).unwrap();
        assert_eq!(
            canonical_json::to_canonical_string(&v, Mode::Strict).unwrap(),
            r#"{"signatures":{"domain":{"ed25519:1":"K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}}"#
        );
    }

    #[test]
    fn spec_vector_one_two() {
        let mut v = serde_json::json!({"one": 1, "two": "Two"});
        sign_json(&mut v, "domain", &spec_key()).unwrap();
        assert_eq!(
            canonical_json::to_canonical_string(&v, Mode::Strict).unwrap(),
            r#"{"one":1,"signatures":{"domain":{"ed25519:1":"KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}},"two":"Two"}"#
        );
        let pk = verifying_key_from_base64(SPEC_PUBLIC).unwrap();
        verify_json(&v, "domain", &KeyId::parse("ed25519:1").unwrap(), &pk).unwrap();
    }

    #[test]
    fn unsigned_is_not_signed_and_is_kept() {
        let mut a = serde_json::json!({"one": 1, "two": "Two", "unsigned": {"age": 5}});
        sign_json(&mut a, "domain", &spec_key()).unwrap();
        assert_eq!(a["unsigned"]["age"], 5);
        assert_eq!(
            a["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        // Changing unsigned keeps the signature valid.
        a["unsigned"]["age"] = 6.into();
        verify_json(&a, "domain", spec_key().id(), &spec_key().verifying_key()).unwrap();
    }

    #[test]
    fn signatures_merge() {
        let other = SigningKey::generate("b").unwrap();
        let mut v = serde_json::json!({"x": 1, "signatures": {"elsewhere": {"ed25519:z": "abc"}}});
        sign_json(&mut v, "domain", &spec_key()).unwrap();
        sign_json(&mut v, "domain", &other).unwrap();
        assert_eq!(v["signatures"]["elsewhere"]["ed25519:z"], "abc");
        verify_json(&v, "domain", spec_key().id(), &spec_key().verifying_key()).unwrap();
        verify_json(&v, "domain", other.id(), &other.verifying_key()).unwrap();
    }

    #[test]
    fn verify_failures_are_precise() {
        let key = spec_key();
        let pk = key.verifying_key();
        let mut v = serde_json::json!({"a": 1});
        sign_json(&mut v, "domain", &key).unwrap();
        let id = key.id().clone();
        assert_eq!(
            verify_json(&v, "other", &id, &pk),
            Err(VerifyError::NoSignaturesFrom {
                entity: "other".into()
            })
        );
        let id2 = KeyId::parse("ed25519:2").unwrap();
        assert!(matches!(
            verify_json(&v, "domain", &id2, &pk),
            Err(VerifyError::MissingSignature { .. })
        ));
        let mut tampered = v.clone();
        tampered["a"] = 2.into();
        assert!(matches!(
            verify_json(&tampered, "domain", &id, &pk),
            Err(VerifyError::Invalid { .. })
        ));
        let mut bad_b64 = v.clone();
        bad_b64["signatures"]["domain"]["ed25519:1"] = "!!!".into();
        assert!(matches!(
            verify_json(&bad_b64, "domain", &id, &pk),
            Err(VerifyError::Malformed { .. })
        ));
        let mut short = v.clone();
        short["signatures"]["domain"]["ed25519:1"] = "AAAA".into();
        assert!(matches!(
            verify_json(&short, "domain", &id, &pk),
            Err(VerifyError::Malformed { .. })
        ));
        let mut not_str = v.clone();
        not_str["signatures"]["domain"]["ed25519:1"] = 5.into();
        assert!(matches!(
            verify_json(&not_str, "domain", &id, &pk),
            Err(VerifyError::Malformed { .. })
        ));
        assert!(matches!(
            verify_json(&serde_json::json!([1]), "domain", &id, &pk),
            Err(VerifyError::NotAnObject(_))
        ));
        // Padded signatures are accepted on input.
        let mut padded = v.clone();
        let s = padded["signatures"]["domain"]["ed25519:1"]
            .as_str()
            .unwrap()
            .to_owned()
            + "==";
        padded["signatures"]["domain"]["ed25519:1"] = s.into();
        verify_json(&padded, "domain", &id, &pk).unwrap();
    }

    #[test]
    fn any_valid_key_policy() {
        let a = SigningKey::generate("a").unwrap();
        let b = SigningKey::generate("b").unwrap();
        let mut v = serde_json::json!({"x": 1});
        sign_json(&mut v, "srv", &b).unwrap();
        let (ia, ib) = (a.id().clone(), b.id().clone());
        let (pa, pb) = (a.verifying_key(), b.verifying_key());
        assert_eq!(
            verify_json_any(&v, "srv", [(&ia, &pa), (&ib, &pb)]).unwrap(),
            ib
        );
        assert!(matches!(
            verify_json_any(&v, "srv", [(&ia, &pa)]),
            Err(VerifyError::MissingSignature { .. })
        ));
        // A signature under b's id but checked with a's key: invalid wins.
        assert!(matches!(
            verify_json_any(&v, "srv", [(&ib, &pa)]),
            Err(VerifyError::Invalid { .. })
        ));
    }

    #[test]
    fn key_file_round_trip_several_keys() {
        let text = format!("ed25519 1 {SPEC_SEED}\n\ned25519 a_AbCd {SPEC_SEED}=\n");
        let keys = parse_key_file(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].id().as_str(), "ed25519:1");
        assert_eq!(keys[1].id().as_str(), "ed25519:a_AbCd");
        assert_eq!(keys[1].public_key_base64(), SPEC_PUBLIC);
        // Written back unpadded (with canonical trailing bits), and read
        // back to the same keys.
        let seed = keys[0].seed_base64();
        assert_eq!(seed.len(), 43);
        let written = format_key_file(&keys);
        assert_eq!(
            written,
            format!("ed25519 1 {seed}\ned25519 a_AbCd {seed}\n")
        );
        let again = parse_key_file(&written).unwrap();
        assert_eq!(again[1].public_key_base64(), SPEC_PUBLIC);
    }

    #[test]
    fn key_file_errors_name_the_line() {
        let e = parse_key_file("ed25519 1\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "line 1: expected 3 fields \"ed25519 <version> <seed>\", found 2"
        );
        let e = parse_key_file(&format!("ed25519 1 {SPEC_SEED}\nrsa 2 AAAA\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "line 2: unsupported algorithm \"rsa\" (only ed25519)");
        let e = parse_key_file("ed25519 1 AAAA\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "line 1: signing key seed: decodes to 3 bytes, expected 32"
        );
        let e = parse_key_file(&format!("ed25519 1 {SPEC_SEED}\ned25519 1 {SPEC_SEED}"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "line 2: key ed25519:1 appears twice");
        assert!(matches!(
            parse_key_file("\n\n"),
            Err(SigningError::EmptyKeyFile)
        ));
        let e = parse_key_file(&format!("ed25519 a\"b {SPEC_SEED}"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 1: key id"), "{e}");
    }

    #[test]
    fn key_ids() {
        let id = KeyId::parse("ed25519:a_AbCd").unwrap();
        assert_eq!((id.algorithm(), id.version()), ("ed25519", "a_AbCd"));
        assert!(id.is_ed25519());
        assert!(matches!(
            KeyId::parse("ed25519"),
            Err(KeyIdError::NoColon(_))
        ));
        assert!(matches!(
            KeyId::parse("ed25519:"),
            Err(KeyIdError::Empty(_))
        ));
        assert!(matches!(KeyId::parse(":x"), Err(KeyIdError::Empty(_))));
        assert!(matches!(
            KeyId::parse("ed25519:a b"),
            Err(KeyIdError::InvalidChar {
                ch: ' ',
                pos: 9,
                ..
            })
        ));
        assert!(matches!(
            KeyId::parse("ED25519:a"),
            Err(KeyIdError::InvalidChar {
                ch: 'E',
                pos: 0,
                ..
            })
        ));
    }

    #[test]
    fn random_versions_look_like_synapse() {
        let v = random_key_version();
        assert_eq!(v.len(), 6);
        assert!(v.starts_with("a_"));
        assert!(v[2..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn public_key_parsing() {
        assert!(verifying_key_from_base64(SPEC_PUBLIC).is_ok());
        assert!(matches!(
            verifying_key_from_base64("AAAA"),
            Err(SigningError::PublicKey { .. })
        ));
    }
}
