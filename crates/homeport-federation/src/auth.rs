//! Verifying incoming X-Matrix request signatures (for the server side).

use homeport_core::ServerName;
use homeport_core::signing::KeyId;
use homeport_core::xmatrix::{RequestToSign, XMatrix, XMatrixError};
use http::HeaderMap;
use serde_json::Value;

use crate::keys::{KeyError, KeyFetcher, now_ms};

/// Why a request is not authenticated. Each maps to a status and errcode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No X-Matrix Authorization header.
    #[error("missing X-Matrix Authorization header")]
    Missing,
    /// A malformed header or body.
    #[error("{0}")]
    Malformed(String),
    /// Headers from different origins.
    #[error("Authorization headers name different origins ({0} and {1})")]
    MixedOrigins(String, String),
    /// The header's destination is not this server.
    #[error("{0}")]
    WrongDestination(XMatrixError),
    /// The key is unknown or expired.
    #[error("unknown or expired key {key} of {origin}")]
    UnknownKey {
        /// The origin.
        origin: String,
        /// The key id.
        key: String,
    },
    /// The origin's keys could not be fetched.
    #[error("cannot fetch the keys of {origin}: {source}")]
    KeyFetch {
        /// The origin.
        origin: String,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// The signature does not verify.
    #[error("{0}")]
    BadSignature(XMatrixError),
}

impl AuthError {
    /// HTTP status: 400 for malformed input, else 401.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Malformed(_) | AuthError::MixedOrigins(..) => 400,
            _ => 401,
        }
    }

    /// The Matrix errcode.
    pub fn errcode(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) | AuthError::MixedOrigins(..) => "M_BAD_JSON",
            _ => "M_UNAUTHORIZED",
        }
    }
}

/// A request as received.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// Method.
    pub method: &'a str,
    /// The exact request target (path and query).
    pub uri: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The body, when there is one.
    pub body: Option<&'a [u8]>,
}

/// Parse the X-Matrix headers of `req` (without checking signatures).
pub fn parse_headers(req: &Incoming<'_>) -> Result<Vec<XMatrix>, AuthError> {
    let mut out = Vec::new();
    for v in req.headers.get_all(http::header::AUTHORIZATION) {
        let Ok(text) = v.to_str() else {
            return Err(AuthError::Malformed(
                "Authorization header is not ASCII".into(),
            ));
        };
        match XMatrix::parse(text) {
            Ok(x) => out.push(x),
            Err(XMatrixError::NotXMatrix) => continue,
            Err(e) => return Err(AuthError::Malformed(e.to_string())),
        }
    }
    if out.is_empty() {
        return Err(AuthError::Missing);
    }
    if let Some(first) = out.first()
        && let Some(other) = out.iter().find(|x| x.origin != first.origin)
    {
        return Err(AuthError::MixedOrigins(
            first.origin.to_string(),
            other.origin.to_string(),
        ));
    }
    Ok(out)
}

/// Authenticate `req` received by `receiver`: parse the headers, find each
/// key (store, else fetch from the origin) and verify. Succeeds when at
/// least one signature by a current key verifies and none by a known key
/// fails. Returns the origin.
pub async fn authenticate(
    req: &Incoming<'_>,
    receiver: &ServerName,
    fetcher: &KeyFetcher,
) -> Result<ServerName, AuthError> {
    let headers = parse_headers(req)?;
    let content: Option<Value> = match req.body {
        Some(b) if !b.is_empty() => Some(
            serde_json::from_slice(b)
                .map_err(|e| AuthError::Malformed(format!("request body is not JSON: {e}")))?,
        ),
        _ => None,
    };
    let origin = headers[0].origin.clone();
    let mut verified = false;
    let mut unknown = None;
    for x in &headers {
        let to_sign = RequestToSign {
            method: req.method,
            uri: req.uri,
            origin: &x.origin,
            destination: receiver,
            content: content.as_ref(),
        };
        if let Some(d) = &x.destination
            && d != receiver
        {
            return Err(AuthError::WrongDestination(
                XMatrixError::DestinationMismatch {
                    header: d.to_string(),
                    receiver: receiver.to_string(),
                },
            ));
        }
        let key = lookup(fetcher, &x.origin, &x.key).await?;
        let Some(key) = key else {
            unknown.get_or_insert_with(|| x.key.clone());
            continue;
        };
        x.verify(&to_sign, &key).map_err(|e| match e {
            XMatrixError::BadSignatureEncoding(_) => AuthError::Malformed(e.to_string()),
            other => AuthError::BadSignature(other),
        })?;
        verified = true;
    }
    if verified {
        Ok(origin)
    } else {
        Err(AuthError::UnknownKey {
            origin: origin.to_string(),
            key: unknown.map(|k| k.to_string()).unwrap_or_default(),
        })
    }
}

async fn lookup(
    fetcher: &KeyFetcher,
    origin: &ServerName,
    id: &KeyId,
) -> Result<Option<ed25519_dalek::VerifyingKey>, AuthError> {
    let now = now_ms();
    if let Some(k) = fetcher.store().get(origin.as_str(), id.as_str())
        && k.valid_for_requests(now)
    {
        return Ok(Some(k.key));
    }
    match fetcher.request_key(origin, id).await {
        Ok(k) => Ok(k.filter(|k| k.valid_for_requests(now)).map(|k| k.key)),
        Err(source) => Err(AuthError::KeyFetch {
            origin: origin.to_string(),
            source,
        }),
    }
}
