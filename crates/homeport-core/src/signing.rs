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
///
/// A weak key (a point of small order) is refused with
/// [`SigningError::WeakPublicKey`]: no signature by it would pass
/// [`verify_strict`] anyway, so it is reported where it is read instead.
pub fn verifying_key_from_base64(text: &str) -> Result<VerifyingKey, SigningError> {
    let bytes =
        base64::decode_array::<32>(text).map_err(|source| SigningError::PublicKey { source })?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::PublicKeyPoint)?;
    if is_weak_key(&key) {
        return Err(SigningError::WeakPublicKey);
    }
    Ok(key)
}

/// The canonical encodings of the eight points of small order (the torsion
/// subgroup E\[8\]): the identity, the point of order 2, the two of order 4
/// and the four of order 8 ("Taming the many EdDSAs", Chalkias et al. 2020).
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = {
    const fn hex(s: &[u8; 64]) -> [u8; 32] {
        const fn nibble(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                _ => c - b'a' + 10,
            }
        }
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            out[i] = (nibble(s[2 * i]) << 4) | nibble(s[2 * i + 1]);
            i += 1;
        }
        out
    }
    [
        // order 1 (identity, y = 1)
        hex(b"0100000000000000000000000000000000000000000000000000000000000000"),
        // order 2 (y = -1)
        hex(b"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        // order 4 (y = 0, both signs of x)
        hex(b"0000000000000000000000000000000000000000000000000000000000000000"),
        hex(b"0000000000000000000000000000000000000000000000000000000000000080"),
        // order 8
        hex(b"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        hex(b"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
        hex(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        hex(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    ]
};

/// The other byte strings that ed25519-dalek decodes to a point of small
/// order: it reduces y modulo p (so y + p is accepted when it fits in 255
/// bits, i.e. for y = 0 and y = 1) and accepts the sign bit set on x = 0.
const NON_CANONICAL_SMALL_ORDER_ENCODINGS: [[u8; 32]; 6] = {
    let mut identity_neg = SMALL_ORDER_ENCODINGS[0];
    identity_neg[31] |= 0x80;
    let mut order2_neg = SMALL_ORDER_ENCODINGS[1];
    order2_neg[31] |= 0x80;
    // y = p + 1 (the identity) and y = p (the order-4 points), both signs.
    let mut p_plus_1 = [0xffu8; 32];
    p_plus_1[0] = 0xee;
    p_plus_1[31] = 0x7f;
    let mut p_plus_1_neg = p_plus_1;
    p_plus_1_neg[31] |= 0x80;
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let mut p_neg = p;
    p_neg[31] |= 0x80;
    [identity_neg, order2_neg, p_plus_1, p_plus_1_neg, p, p_neg]
};

/// `key.is_weak()` without the point arithmetic (about 0.6 µs): a
/// `VerifyingKey` always holds the bytes it was decoded from (or the
/// canonical compression of the point it was made from), and exactly 14
/// byte strings decode to the 8 points of small order.
fn is_weak_key(key: &VerifyingKey) -> bool {
    let bytes = key.as_bytes();
    SMALL_ORDER_ENCODINGS.contains(bytes) || NON_CANONICAL_SMALL_ORDER_ENCODINGS.contains(bytes)
}

/// Strict Ed25519 verification: accepts exactly the signatures that
/// ed25519-dalek's [`VerifyingKey::verify_strict`] accepts, without its
/// decompression of R (a field square root, about 5 µs).
///
/// `verify_strict` is: S canonical (`S < ℓ`), R decodes to a point, neither
/// R nor A is of small order, and the recomputed `[S]B − [k]A` compresses to
/// exactly the bytes of R. The plain `verify` does the S check and the byte
/// comparison; the recomputed point is compressed canonically, so a
/// signature passing it has a canonical R that decodes. What remains is the
/// small-order test on R, which for a canonical encoding is membership in
/// the eight encodings of E\[8\], and the test on A, done here too (so that
/// any `VerifyingKey` is handled, not only those from
/// [`verifying_key_from_base64`]) by comparing its bytes with the 14
/// encodings of small-order points.
pub fn verify_strict(
    key: &VerifyingKey,
    message: &[u8],
    signature: &ed25519_dalek::Signature,
) -> Result<(), ed25519_dalek::SignatureError> {
    use ed25519_dalek::Verifier as _;
    if SMALL_ORDER_ENCODINGS.contains(signature.r_bytes()) || is_weak_key(key) {
        return Err(ed25519_dalek::SignatureError::new());
    }
    key.verify(message, signature)
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
    /// A point of small order, which would accept forged signatures.
    #[error(
        "public key is a point of small order (a weak Ed25519 key, under which signatures can be forged)"
    )]
    WeakPublicKey,
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
    let mut out = Vec::with_capacity(1024);
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
    verify_strict(key, bytes, &sig).map_err(|_| VerifyError::Invalid {
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

    /// Small-order (weak) public keys, canonical and non-canonical
    /// encodings, are refused where a key is read.
    #[test]
    fn weak_public_keys_are_refused() {
        let mut weak: Vec<[u8; 32]> = SMALL_ORDER_ENCODINGS.to_vec();
        weak.extend(NON_CANONICAL_SMALL_ORDER_ENCODINGS);
        for bytes in weak {
            let text = base64::encode(bytes);
            assert!(
                matches!(
                    verifying_key_from_base64(&text),
                    Err(SigningError::WeakPublicKey)
                ),
                "{text}"
            );
            let key = VerifyingKey::from_bytes(&bytes).unwrap();
            assert!(key.is_weak(), "{text}");
            assert!(is_weak_key(&key), "{text}");
        }
        assert_eq!(
            SigningError::WeakPublicKey.to_string(),
            "public key is a point of small order (a weak Ed25519 key, under which signatures can be forged)"
        );
        assert!(verifying_key_from_base64(SPEC_PUBLIC).is_ok());
    }

    /// The table is exactly the canonical encodings of E[8].
    #[test]
    fn small_order_encodings_are_the_eight_torsion_points() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut want: Vec<[u8; 32]> = EIGHT_TORSION.iter().map(|p| p.compress().0).collect();
        let mut have = SMALL_ORDER_ENCODINGS.to_vec();
        want.sort();
        have.sort();
        assert_eq!(have, want);
    }

    /// Every byte string ed25519-dalek decodes to a small-order point is in
    /// the two tables: for each point of E[8], y and y + p (when it fits in
    /// 255 bits, the only other representative of y) with either sign bit.
    #[test]
    fn weak_key_table_is_complete() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        // p = 2^255 - 19, little-endian.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut found: Vec<[u8; 32]> = Vec::new();
        for point in EIGHT_TORSION {
            let canonical = point.compress().0;
            let mut y = canonical;
            y[31] &= 0x7f;
            let mut reps = vec![y];
            // y + p < 2^255 only when y < 19.
            if y[1..].iter().all(|&b| b == 0) && y[0] < 19 {
                let mut sum = [0u8; 32];
                let mut carry = 0u16;
                for i in 0..32 {
                    let v = u16::from(y[i]) + u16::from(p[i]) + carry;
                    sum[i] = v as u8;
                    carry = v >> 8;
                }
                assert_eq!(carry, 0);
                assert_eq!(sum[31] & 0x80, 0);
                reps.push(sum);
            }
            for rep in reps {
                for sign in [0u8, 0x80] {
                    let mut enc = rep;
                    enc[31] |= sign;
                    if let Ok(k) = VerifyingKey::from_bytes(&enc)
                        && k.is_weak()
                        && !found.contains(&enc)
                    {
                        found.push(enc);
                    }
                }
            }
        }
        let mut table: Vec<[u8; 32]> = SMALL_ORDER_ENCODINGS.to_vec();
        table.extend(NON_CANONICAL_SMALL_ORDER_ENCODINGS);
        found.sort();
        table.sort();
        assert_eq!(found, table);
        // And it agrees with is_weak on ordinary keys and on byte strings
        // near the table's entries.
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let mut bytes: [u8; 32] = rng.r#gen();
            if rng.r#gen::<bool>() {
                bytes = table[rng.gen_range(0..table.len())];
                bytes[rng.gen_range(0..32)] ^= 1 << rng.gen_range(0..8);
            }
            if let Ok(k) = VerifyingKey::from_bytes(&bytes) {
                assert_eq!(is_weak_key(&k), k.is_weak(), "{bytes:?}");
            }
        }
        for _ in 0..50 {
            let k = SigningKey::generate("x").unwrap().verifying_key();
            assert!(!is_weak_key(&k) && !k.is_weak());
        }
    }

    mod strict {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        use curve25519_dalek::edwards::EdwardsPoint;
        use curve25519_dalek::scalar::Scalar;
        use ed25519_dalek::{Signature, Signer as _, Verifier as _, VerifyingKey};
        use rand::{Rng as _, SeedableRng as _};
        use sha2::{Digest as _, Sha512};

        /// ℓ, little-endian.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];

        struct Case {
            what: String,
            key: VerifyingKey,
            msg: Vec<u8>,
            sig: Signature,
        }

        fn challenge(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> Scalar {
            let h: [u8; 64] = Sha512::new()
                .chain_update(r)
                .chain_update(a)
                .chain_update(m)
                .finalize()
                .into();
            Scalar::from_bytes_mod_order_wide(&h)
        }

        fn random_scalar(rng: &mut rand::rngs::StdRng) -> Scalar {
            let mut wide = [0u8; 64];
            rng.fill(&mut wide[..]);
            Scalar::from_bytes_mod_order_wide(&wide)
        }

        /// S + ℓ: the same point equation, a non-canonical S.
        fn plus_l(s: &[u8; 32]) -> [u8; 32] {
            let mut out = [0u8; 32];
            let mut carry = 0u16;
            for i in 0..32 {
                let v = u16::from(s[i]) + u16::from(L[i]) + carry;
                out[i] = v as u8;
                carry = v >> 8;
            }
            out
        }

        /// Crafted signatures: A = [a]B + T and R = [r]B + Q for every
        /// torsion T, Q (a = 0: A of small order; r = 0: R of small order),
        /// with S = r + k·a, searching messages until the cofactorless
        /// equation [S]B − [k]A = R holds (it does iff Q = −[k]T). Each also
        /// with S + ℓ, and with R swapped for a non-canonical encoding.
        fn crafted_cases() -> &'static [Case] {
            static CASES: std::sync::OnceLock<Vec<Case>> = std::sync::OnceLock::new();
            CASES.get_or_init(build_cases)
        }

        fn build_cases() -> Vec<Case> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
            let mut cases = Vec::new();
            for (ti, t) in EIGHT_TORSION.iter().enumerate() {
                for a_zero in [false, true] {
                    let a = if a_zero {
                        Scalar::ZERO
                    } else {
                        random_scalar(&mut rng)
                    };
                    let big_a: EdwardsPoint = EdwardsPoint::mul_base(&a) + t;
                    // [k]T depends only on k mod 8 (T's order divides 8).
                    let mut multiples = [EdwardsPoint::default(); 8];
                    for j in 1..8 {
                        multiples[j] = multiples[j - 1] + t;
                    }
                    let a_bytes = big_a.compress().0;
                    let key = VerifyingKey::from(big_a);
                    for (qi, q) in EIGHT_TORSION.iter().enumerate() {
                        for r_zero in [false, true] {
                            let r = if r_zero {
                                Scalar::ZERO
                            } else {
                                random_scalar(&mut rng)
                            };
                            let big_r: EdwardsPoint = EdwardsPoint::mul_base(&r) + q;
                            let r_bytes = big_r.compress().0;
                            let mut found = None;
                            let mut last = Vec::new();
                            for attempt in 0..64 {
                                let msg = format!("message {attempt}").into_bytes();
                                let k = challenge(&r_bytes, &a_bytes, &msg);
                                let k_mod_8 = usize::from(k.as_bytes()[0] & 7);
                                if -multiples[k_mod_8] == *q {
                                    found = Some((msg, k));
                                    break;
                                }
                                last = msg;
                            }
                            let what = format!(
                                "A = {}B + T{ti}, R = {}B + T{qi}",
                                if a_zero { "0" } else { "a" },
                                if r_zero { "0" } else { "r" },
                            );
                            // Where the equation cannot hold (Q outside the
                            // group T generates) keep only the prime-order
                            // keys' cases: in debug builds every verification
                            // costs milliseconds.
                            let (msg, k, holds) = match found {
                                Some((m, k)) => (m, k, true),
                                None if ti == 0 => {
                                    let k = challenge(&r_bytes, &a_bytes, &last);
                                    (last, k, false)
                                }
                                None => continue,
                            };
                            let s = (r + k * a).to_bytes();
                            let sig = Signature::from_components(r_bytes, s);
                            cases.push(Case {
                                what: format!("{what} (equation holds: {holds})"),
                                key,
                                msg: msg.clone(),
                                sig,
                            });
                            cases.push(Case {
                                what: format!("{what}, S + l"),
                                key,
                                msg: msg.clone(),
                                sig: Signature::from_components(r_bytes, plus_l(&s)),
                            });
                            // Non-canonical R: the sign bit set on an x = 0
                            // point (identity, order 2), or y + p for y < 19.
                            let mut alt = r_bytes;
                            if r_zero && (qi == 0 || qi == 4) {
                                alt[31] |= 0x80;
                            } else if r_zero && (r_bytes[1..31].iter().all(|&x| x == 0)) {
                                // y = 0 (order 4): y + p = p
                                let sign = alt[31] & 0x80;
                                alt = [0xff; 32];
                                alt[0] = 0xed;
                                alt[31] = 0x7f | sign;
                            } else {
                                continue;
                            }
                            cases.push(Case {
                                what: format!("{what}, non-canonical R"),
                                key,
                                msg,
                                sig: Signature::from_components(alt, s),
                            });
                        }
                    }
                }
            }
            // Every encoding of a small-order key, canonical or not, with
            // R = [r]B and S = r (which plain verify accepts under the
            // identity's four encodings).
            let mut weak: Vec<[u8; 32]> = super::super::SMALL_ORDER_ENCODINGS.to_vec();
            weak.extend(super::super::NON_CANONICAL_SMALL_ORDER_ENCODINGS);
            for (i, bytes) in weak.iter().enumerate() {
                let key = VerifyingKey::from_bytes(bytes).unwrap();
                let r = random_scalar(&mut rng);
                let sig = Signature::from_components(
                    EdwardsPoint::mul_base(&r).compress().0,
                    r.to_bytes(),
                );
                cases.push(Case {
                    what: format!("weak key encoding {i}"),
                    key,
                    msg: b"any message".to_vec(),
                    sig,
                });
            }
            // Ordinary signatures by random keys, and the same ones over a
            // different message.
            for i in 0..16u8 {
                let sk = ed25519_dalek::SigningKey::from_bytes(&rng.r#gen());
                let msg = vec![i; usize::from(i) * 7];
                let sig = sk.sign(&msg);
                cases.push(Case {
                    what: format!("random key {i}"),
                    key: sk.verifying_key(),
                    msg: msg.clone(),
                    sig,
                });
                let mut other = msg;
                other.push(1);
                cases.push(Case {
                    what: format!("random key {i}, wrong message"),
                    key: sk.verifying_key(),
                    msg: other,
                    sig,
                });
                let mut s = *sig.s_bytes();
                s = plus_l(&s);
                cases.push(Case {
                    what: format!("random key {i}, S + l"),
                    key: sk.verifying_key(),
                    msg: vec![i; usize::from(i) * 7],
                    sig: Signature::from_components(*sig.r_bytes(), s),
                });
            }
            cases
        }

        /// The fast path gives the verdict of `verify_strict` on every
        /// crafted input, and the inputs do exercise the difference between
        /// strict and plain verification.
        #[test]
        fn fast_strict_matches_verify_strict() {
            let cases = crafted_cases();
            let (mut strict_ok, mut plain_only_small_r, mut plain_only_weak_a) = (0, 0, 0);
            let mut torsion_accepted = 0;
            for c in cases {
                let want = c.key.verify_strict(&c.msg, &c.sig).is_ok();
                let have = super::super::verify_strict(&c.key, &c.msg, &c.sig).is_ok();
                assert_eq!(have, want, "{}", c.what);
                let plain = c.key.verify(&c.msg, &c.sig).is_ok();
                assert!(plain || !want, "{}", c.what);
                if want {
                    strict_ok += 1;
                    if !c.key.to_edwards().is_torsion_free() {
                        torsion_accepted += 1;
                    }
                } else if plain {
                    if c.key.is_weak() {
                        plain_only_weak_a += 1;
                    } else {
                        plain_only_small_r += 1;
                    }
                }
            }
            // Random keys are accepted, and so are mixed-order keys.
            assert!(strict_ok >= 16, "{strict_ok}");
            assert!(torsion_accepted > 0, "{torsion_accepted}");
            // Signatures plain `verify` takes and strict refuses: a
            // small-order R under a non-weak key, and weak keys.
            assert!(plain_only_small_r > 0, "{plain_only_small_r}");
            assert!(plain_only_weak_a > 0, "{plain_only_weak_a}");
        }

        /// Signatures through the public API: a small-order R or a weak key
        /// is `Invalid`, even when the cofactorless equation holds.
        #[test]
        fn verify_json_refuses_small_order_r_and_weak_keys() {
            use super::super::{KeyId, VerifyError, signed_bytes, verify_json};
            let b = ED25519_BASEPOINT_POINT;
            let id = KeyId::parse("ed25519:x").unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            // Weak key (the identity): [S]B = R for any S, whatever the
            // message.
            let identity = VerifyingKey::from(EdwardsPoint::default());
            let r = random_scalar(&mut rng);
            let mut doc = serde_json::json!({"a": 1});
            let sig = Signature::from_components((r * b).compress().0, r.to_bytes());
            let bytes = signed_bytes(doc.as_object().unwrap()).unwrap();
            assert!(identity.verify(&bytes, &sig).is_ok());
            doc["signatures"] =
                serde_json::json!({"srv": {"ed25519:x": crate::base64::encode(sig.to_bytes())}});
            assert!(matches!(
                verify_json(&doc, "srv", &id, &identity),
                Err(VerifyError::Invalid { .. })
            ));
            // Small-order R (order 8) under a mixed-order key that plain
            // verify accepts.
            let found = crafted_cases().iter().find(|c| {
                c.what.contains("R = 0B")
                    && !c.key.is_weak()
                    && c.key.verify(&c.msg, &c.sig).is_ok()
            });
            let c = found.expect("a small-order R accepted by plain verify");
            assert!(c.key.verify_strict(&c.msg, &c.sig).is_err());
            assert!(super::super::verify_strict(&c.key, &c.msg, &c.sig).is_err());
        }
    }
}
