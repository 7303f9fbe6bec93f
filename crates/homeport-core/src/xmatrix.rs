//! The `Authorization: X-Matrix ...` request signature.
//!
//! The signed object is `{"method", "uri", "origin", "destination",
//! "content"?}` where `uri` is the exact request target as sent (path and
//! `?query`), `content` is present only with a JSON body, and origin and
//! destination are the undelegated server names.
//!
//! Sending form: `X-Matrix origin="domain",destination="remote.example",key="ed25519:1",sig="..."`.
//! Parsing is lenient as peers are: parameter names in any case and order,
//! quoted or bare values, backslash escapes in quoted values, unknown
//! parameters ignored, `signature` accepted for `sig`, and a bare
//! `origin=example.org:8448` (Synapse 0.99).
//!
//! ```
//! use homeport_core::xmatrix::{RequestToSign, XMatrix};
//! use homeport_core::{signing::SigningKey, ServerName};
//! let key = SigningKey::from_seed_base64("1", "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
//! let origin = ServerName::parse("domain").unwrap();
//! let dest = ServerName::parse("remote.example").unwrap();
//! let req = RequestToSign { method: "GET", uri: "/_matrix/federation/v1/version", origin: &origin, destination: &dest, content: None };
//! let header = req.sign(&key).unwrap().to_header_value();
//! assert!(header.starts_with("X-Matrix origin=\"domain\",destination=\"remote.example\",key=\"ed25519:1\",sig=\"wR1E4UZ3"));
//! let parsed = XMatrix::parse(&header).unwrap();
//! parsed.verify(&req, &key.verifying_key()).unwrap();
//! ```

use ed25519_dalek::VerifyingKey;
use serde_json::{Map, Value};

use crate::base64;
use crate::canonical_json::{self, CanonicalJsonError, Mode};
use crate::server_name::{ServerName, ServerNameError};
use crate::signing::{KeyId, KeyIdError, SigningKey};

/// A parsed X-Matrix authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XMatrix {
    /// The sending server.
    pub origin: ServerName,
    /// The receiving server, when the header names it.
    pub destination: Option<ServerName>,
    /// The signing key.
    pub key: KeyId,
    /// The signature as sent (base64; decoded when verified).
    pub sig: String,
}

/// Why an Authorization header is not a usable X-Matrix signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XMatrixError {
    /// Another scheme (or none).
    #[error("the Authorization header does not use the X-Matrix scheme")]
    NotXMatrix,
    /// Syntax error.
    #[error("malformed X-Matrix header: {0}")]
    Malformed(String),
    /// A required parameter is missing.
    #[error("X-Matrix header has no {0} parameter")]
    Missing(&'static str),
    /// origin is not a server name.
    #[error("X-Matrix origin is not a valid server name: {0}")]
    Origin(#[source] ServerNameError),
    /// destination is not a server name.
    #[error("X-Matrix destination is not a valid server name: {0}")]
    Destination(#[source] ServerNameError),
    /// key is not a key id.
    #[error("X-Matrix key: {0}")]
    Key(#[source] KeyIdError),
    /// The request has no canonical form (a float in the body).
    #[error("request body: {0}")]
    Canonical(#[from] CanonicalJsonError),
    /// The header names another destination than the receiver.
    #[error("X-Matrix destination {header} is not this server ({receiver})")]
    DestinationMismatch {
        /// The header's destination.
        header: String,
        /// The receiver's name.
        receiver: String,
    },
    /// The signature is not 64 bytes of base64.
    #[error("X-Matrix sig is malformed: {0}")]
    BadSignatureEncoding(String),
    /// The signature does not verify.
    #[error("X-Matrix signature by {origin} with {key} does not verify")]
    BadSignature {
        /// Origin.
        origin: String,
        /// Key id.
        key: String,
    },
}

impl XMatrixError {
    /// The HTTP status a receiver answers with: 400 for a malformed header,
    /// 401 for everything about identity and signatures.
    pub fn http_status(&self) -> u16 {
        match self {
            XMatrixError::Malformed(_)
            | XMatrixError::Missing(_)
            | XMatrixError::Origin(_)
            | XMatrixError::Destination(_)
            | XMatrixError::Key(_)
            | XMatrixError::Canonical(_)
            | XMatrixError::BadSignatureEncoding(_) => 400,
            XMatrixError::NotXMatrix
            | XMatrixError::DestinationMismatch { .. }
            | XMatrixError::BadSignature { .. } => 401,
        }
    }
}

/// A request to be signed or checked.
#[derive(Clone, Copy, Debug)]
pub struct RequestToSign<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// The exact request target: path plus `?query`, as sent.
    pub uri: &'a str,
    /// The sending server (undelegated).
    pub origin: &'a ServerName,
    /// The receiving server (undelegated).
    pub destination: &'a ServerName,
    /// The JSON body, if one is sent.
    pub content: Option<&'a Value>,
}

impl RequestToSign<'_> {
    /// The signed object as JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("method".into(), Value::String(self.method.to_owned()));
        m.insert("uri".into(), Value::String(self.uri.to_owned()));
        m.insert(
            "origin".into(),
            Value::String(self.origin.as_str().to_owned()),
        );
        m.insert(
            "destination".into(),
            Value::String(self.destination.as_str().to_owned()),
        );
        if let Some(c) = self.content {
            m.insert("content".into(), c.clone());
        }
        Value::Object(m)
    }

    /// The canonical bytes the signature covers.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalJsonError> {
        canonical_json::to_canonical_vec(&self.to_json(), Mode::Lenient)
    }

    /// Sign with `key`.
    pub fn sign(&self, key: &SigningKey) -> Result<XMatrix, CanonicalJsonError> {
        let bytes = self.signed_bytes()?;
        Ok(XMatrix {
            origin: self.origin.clone(),
            destination: Some(self.destination.clone()),
            key: key.id().clone(),
            sig: base64::encode(key.sign(&bytes)),
        })
    }
}

fn push_quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

impl XMatrix {
    /// The header value in the canonical sending form.
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(200);
        out.push_str("X-Matrix origin=");
        push_quoted(&mut out, self.origin.as_str());
        if let Some(d) = &self.destination {
            out.push_str(",destination=");
            push_quoted(&mut out, d.as_str());
        }
        out.push_str(",key=");
        push_quoted(&mut out, self.key.as_str());
        out.push_str(",sig=");
        push_quoted(&mut out, &self.sig);
        out
    }

    /// Parse an Authorization header value.
    pub fn parse(header: &str) -> Result<Self, XMatrixError> {
        let header = header.trim_start();
        let (scheme, rest) = match header.find(|c: char| c.is_ascii_whitespace()) {
            Some(i) => (&header[..i], &header[i..]),
            None => (header, ""),
        };
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return Err(XMatrixError::NotXMatrix);
        }
        let mut origin = None;
        let mut destination = None;
        let mut key = None;
        let mut sig = None;
        for (name, value) in Params::new(rest) {
            let (name, value) = (name?, value);
            let value = value?;
            match name.to_ascii_lowercase().as_str() {
                "origin" => origin = Some(value),
                "destination" => destination = Some(value),
                "key" => key = Some(value),
                "sig" | "signature" => sig = Some(value),
                _ => {}
            }
        }
        let origin = origin.ok_or(XMatrixError::Missing("origin"))?;
        let origin = ServerName::parse(&origin).map_err(XMatrixError::Origin)?;
        let destination = destination
            .map(|d| ServerName::parse(&d).map_err(XMatrixError::Destination))
            .transpose()?;
        let key = key.ok_or(XMatrixError::Missing("key"))?;
        let key = KeyId::parse(&key).map_err(XMatrixError::Key)?;
        let sig = sig.ok_or(XMatrixError::Missing("sig"))?;
        Ok(XMatrix {
            origin,
            destination,
            key,
            sig,
        })
    }

    /// Check this signature over `req` with `key`. `req.destination` is the
    /// receiver's own name: a header naming another destination is refused.
    pub fn verify(&self, req: &RequestToSign<'_>, key: &VerifyingKey) -> Result<(), XMatrixError> {
        if let Some(d) = &self.destination
            && d != req.destination
        {
            return Err(XMatrixError::DestinationMismatch {
                header: d.as_str().to_owned(),
                receiver: req.destination.as_str().to_owned(),
            });
        }
        let raw = base64::decode_array::<64>(&self.sig)
            .map_err(|e| XMatrixError::BadSignatureEncoding(e.to_string()))?;
        let bytes = RequestToSign {
            origin: &self.origin,
            ..*req
        }
        .signed_bytes()?;
        crate::signing::verify_strict(key, &bytes, &ed25519_dalek::Signature::from_bytes(&raw))
            .map_err(|_| XMatrixError::BadSignature {
                origin: self.origin.as_str().to_owned(),
                key: self.key.as_str().to_owned(),
            })
    }
}

/// Iterator over `name=value` pairs separated by commas.
struct Params<'a> {
    rest: &'a str,
}

impl<'a> Params<'a> {
    fn new(s: &'a str) -> Self {
        Params { rest: s }
    }
}

type Param = (Result<String, XMatrixError>, Result<String, XMatrixError>);

impl Iterator for Params<'_> {
    type Item = Param;
    fn next(&mut self) -> Option<Param> {
        let s = self
            .rest
            .trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if s.is_empty() {
            return None;
        }
        let Some(eq) = s.find('=') else {
            self.rest = "";
            return Some((
                Err(XMatrixError::Malformed(format!(
                    "parameter {s:?} has no '='"
                ))),
                Ok(String::new()),
            ));
        };
        let name = s[..eq].trim();
        if name.is_empty() || name.contains(',') || name.contains('"') {
            self.rest = "";
            return Some((
                Err(XMatrixError::Malformed(format!(
                    "bad parameter name {name:?}"
                ))),
                Ok(String::new()),
            ));
        }
        let after = s[eq + 1..].trim_start_matches(|c: char| c.is_ascii_whitespace());
        let (value, rest) = if let Some(q) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e)) => out.push(e),
                        None => break,
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            match end {
                None => {
                    self.rest = "";
                    return Some((
                        Ok(name.to_owned()),
                        Err(XMatrixError::Malformed(format!(
                            "unterminated quoted value for {name}"
                        ))),
                    ));
                }
                Some(end) => {
                    let tail = q[end..].trim_start_matches(|c: char| c.is_ascii_whitespace());
                    if !(tail.is_empty() || tail.starts_with(',')) {
                        self.rest = "";
                        return Some((
                            Ok(name.to_owned()),
                            Err(XMatrixError::Malformed(format!(
                                "unexpected text after the quoted value of {name}"
                            ))),
                        ));
                    }
                    (Ok(out), tail)
                }
            }
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (Ok(after[..end].trim_end().to_owned()), &after[end..])
        };
        self.rest = rest;
        Some((Ok(name.to_owned()), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    fn key() -> SigningKey {
        SigningKey::from_seed_base64("1", SPEC_SEED).unwrap()
    }
    fn sn(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn spec_vector_get_version() {
        let (o, d) = (sn("domain"), sn("remote.example"));
        let req = RequestToSign {
            method: "GET",
            uri: "/_matrix/federation/v1/version",
            origin: &o,
            destination: &d,
            content: None,
        };
        assert_eq!(
            req.signed_bytes().unwrap(),
            br#"{"destination":"remote.example","method":"GET","origin":"domain","uri":"/_matrix/federation/v1/version"}"#
        );
        let x = req.sign(&key()).unwrap();
        assert_eq!(
            x.sig,
            "wR1E4UZ3G3F2knf0x+RNgxQ2N/hCiZ/ZdOktAey0wSvTWc/nHH8YPJaOvRhipwX46AZPntLZhHd0DFjZ7H7iDQ"
        );
        assert_eq!(
            x.to_header_value(),
            "X-Matrix origin=\"domain\",destination=\"remote.example\",key=\"ed25519:1\",sig=\"wR1E4UZ3G3F2knf0x+RNgxQ2N/hCiZ/ZdOktAey0wSvTWc/nHH8YPJaOvRhipwX46AZPntLZhHd0DFjZ7H7iDQ\""
        );
        XMatrix::parse(&x.to_header_value())
            .unwrap()
            .verify(&req, &key().verifying_key())
            .unwrap();
    }

    #[test]
    fn spec_vector_post_query() {
        let (o, d) = (sn("domain"), sn("notary.example"));
        let body = serde_json::json!({"server_keys":{"remote.example":{}}});
        let req = RequestToSign {
            method: "POST",
            uri: "/_matrix/key/v2/query",
            origin: &o,
            destination: &d,
            content: Some(&body),
        };
        assert_eq!(
            req.sign(&key()).unwrap().sig,
            "ZgkPIIxGqZp834VjRaXjQJsdCXzmyiGbQiKze81SPycY50dLvk3YjHTDtPxGp0J87QVNXSErjr9HKlNOuJRpAQ"
        );
    }

    #[test]
    fn synapse_parse_cases() {
        for h in [
            r#"X-Matrix origin=foo,key="ed25519:1",sig="sig",destination="bar""#,
            r#"X-Matrix  ORIGIN=foo,KEY="ed25\519:1",SIG="sig",destination="bar""#,
            r#"X-Matrix origin=foo,key="ed25519:1",sig="sig",destination="bar",extra_field=ignored"#,
        ] {
            let x = XMatrix::parse(h).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert_eq!(x.origin.as_str(), "foo");
            assert_eq!(x.key.as_str(), "ed25519:1");
            assert_eq!(x.sig, "sig");
            assert_eq!(x.destination.unwrap().as_str(), "bar");
        }
    }

    #[test]
    fn lenient_forms() {
        let x =
            XMatrix::parse("x-matrix origin=example.org:8448,key=ed25519:a,signature=abc").unwrap();
        assert_eq!(x.origin.port(), Some(8448));
        assert_eq!(x.sig, "abc");
        assert!(x.destination.is_none());
        let x =
            XMatrix::parse("X-Matrix key = \"ed25519:a\" , origin=\"o\" ,sig=\"a\\\"b\"").unwrap();
        assert_eq!(x.sig, "a\"b");
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(XMatrix::parse("Bearer abc"), Err(XMatrixError::NotXMatrix));
        assert_eq!(XMatrix::parse(""), Err(XMatrixError::NotXMatrix));
        assert_eq!(
            XMatrix::parse("X-Matrix key=\"ed25519:1\",sig=\"x\""),
            Err(XMatrixError::Missing("origin"))
        );
        assert_eq!(
            XMatrix::parse("X-Matrix origin=o,sig=x"),
            Err(XMatrixError::Missing("key"))
        );
        assert_eq!(
            XMatrix::parse("X-Matrix origin=o,key=ed25519:1"),
            Err(XMatrixError::Missing("sig"))
        );
        assert!(matches!(
            XMatrix::parse("X-Matrix origin=\"o,key=ed25519:1"),
            Err(XMatrixError::Malformed(_))
        ));
        assert!(matches!(
            XMatrix::parse("X-Matrix origin=\"o\"x,key=ed25519:1,sig=s"),
            Err(XMatrixError::Malformed(_))
        ));
        assert!(matches!(
            XMatrix::parse("X-Matrix origin"),
            Err(XMatrixError::Malformed(_))
        ));
        assert!(matches!(
            XMatrix::parse("X-Matrix origin=bad name,key=ed25519:1,sig=s"),
            Err(XMatrixError::Origin(_))
        ));
        assert!(matches!(
            XMatrix::parse("X-Matrix origin=o,key=nocolon,sig=s"),
            Err(XMatrixError::Key(_))
        ));
        assert_eq!(
            XMatrix::parse("X-Matrix origin=o,key=nocolon,sig=s")
                .unwrap_err()
                .http_status(),
            400
        );
    }

    #[test]
    fn verify_failures() {
        let (o, d) = (sn("domain"), sn("remote.example"));
        let req = RequestToSign {
            method: "GET",
            uri: "/_matrix/federation/v1/version",
            origin: &o,
            destination: &d,
            content: None,
        };
        let x = req.sign(&key()).unwrap();
        let pk = key().verifying_key();
        let other_dest = sn("someone.else");
        let e = x
            .verify(
                &RequestToSign {
                    destination: &other_dest,
                    ..req
                },
                &pk,
            )
            .unwrap_err();
        assert!(matches!(e, XMatrixError::DestinationMismatch { .. }));
        assert_eq!(e.http_status(), 401);
        let e = x
            .verify(
                &RequestToSign {
                    uri: "/_matrix/federation/v1/version?x=1",
                    ..req
                },
                &pk,
            )
            .unwrap_err();
        assert!(matches!(e, XMatrixError::BadSignature { .. }));
        assert_eq!(e.http_status(), 401);
        // No destination in the header: the receiver's own name is used.
        let mut no_dest = x.clone();
        no_dest.destination = None;
        no_dest.verify(&req, &pk).unwrap();
        let mut bad = x.clone();
        bad.sig = "sig".into();
        assert!(matches!(
            bad.verify(&req, &pk),
            Err(XMatrixError::BadSignatureEncoding(_))
        ));
        // The origin in the header is the one verified.
        let mut other_origin = x;
        other_origin.origin = sn("evil.example");
        assert!(matches!(
            other_origin.verify(&req, &pk),
            Err(XMatrixError::BadSignature { .. })
        ));
    }
}
