//! `/.well-known/matrix/server` and `/.well-known/matrix/client` documents.
//!
//! ```
//! use homeport_core::well_known::ServerWellKnown;
//! let wk = ServerWellKnown::parse(br#"{"m.server": "matrix.example.org:443"}"#).unwrap();
//! assert_eq!(wk.server.port(), Some(443));
//! ```

use serde_json::Value;

use crate::server_name::{ServerName, ServerNameError};
use crate::signing::json_kind;

/// Why a `.well-known` document gives no delegation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WellKnownError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {reason} (at line {line} column {column})")]
    NotJson {
        /// The parser's message.
        reason: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// JSON, but not an object.
    #[error("the body is {0}, not a JSON object")]
    NotObject(&'static str),
    /// The required key is absent.
    #[error("the object has no {0:?} key")]
    Missing(&'static str),
    /// The key has the wrong type.
    #[error("{key:?} is {kind}, not {expected}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What it is.
        kind: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `m.server` is an empty string (Synapse: no delegation).
    #[error("\"m.server\" is an empty string")]
    Empty,
    /// `m.server` is not a server name.
    #[error("\"m.server\" value {value:?} is not a valid server name: {source}")]
    InvalidServerName {
        /// The value.
        value: String,
        /// Why.
        #[source]
        source: ServerNameError,
    },
    /// `m.homeserver.base_url` is not an http(s) URL.
    #[error("\"m.homeserver\".\"base_url\" {0:?} is not an http:// or https:// URL")]
    BadBaseUrl(String),
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, WellKnownError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let mut reason = e.to_string();
        if let Some(i) = reason.rfind(" at line ") {
            reason.truncate(i);
        }
        WellKnownError::NotJson {
            reason,
            line: e.line(),
            column: e.column(),
        }
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(WellKnownError::NotObject(json_kind(&other))),
    }
}

/// A valid `/.well-known/matrix/server` document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerWellKnown {
    /// The delegated server name.
    pub server: ServerName,
}

impl ServerWellKnown {
    /// Parse the body. Content-Type is not looked at (the spec says to
    /// assume JSON).
    pub fn parse(body: &[u8]) -> Result<Self, WellKnownError> {
        let m = parse_object(body)?;
        let v = m
            .get("m.server")
            .ok_or(WellKnownError::Missing("m.server"))?;
        let Value::String(s) = v else {
            return Err(WellKnownError::WrongType {
                key: "m.server",
                kind: json_kind(v),
                expected: "a string",
            });
        };
        if s.is_empty() {
            return Err(WellKnownError::Empty);
        }
        let server = ServerName::parse(s).map_err(|source| WellKnownError::InvalidServerName {
            value: s.clone(),
            source,
        })?;
        Ok(ServerWellKnown { server })
    }

    /// The document for `server`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "m.server": self.server.as_str() })
    }
}

/// A valid `/.well-known/matrix/client` document.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientWellKnown {
    /// `m.homeserver.base_url`.
    pub homeserver_base_url: String,
    /// `m.identity_server.base_url`, if present and a string.
    pub identity_server_base_url: Option<String>,
    /// The whole document.
    pub raw: Value,
}

impl ClientWellKnown {
    /// Parse the body.
    pub fn parse(body: &[u8]) -> Result<Self, WellKnownError> {
        let m = parse_object(body)?;
        let hs = m
            .get("m.homeserver")
            .ok_or(WellKnownError::Missing("m.homeserver"))?;
        let Value::Object(hs) = hs else {
            return Err(WellKnownError::WrongType {
                key: "m.homeserver",
                kind: json_kind(hs),
                expected: "an object",
            });
        };
        let url = hs
            .get("base_url")
            .ok_or(WellKnownError::Missing("base_url"))?;
        let Value::String(url) = url else {
            return Err(WellKnownError::WrongType {
                key: "base_url",
                kind: json_kind(url),
                expected: "a string",
            });
        };
        let lower = url.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) {
            return Err(WellKnownError::BadBaseUrl(url.clone()));
        }
        let identity_server_base_url = m
            .get("m.identity_server")
            .and_then(|i| i.get("base_url"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(ClientWellKnown {
            homeserver_base_url: url.clone(),
            identity_server_base_url,
            raw: Value::Object(m),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_documents() {
        let wk = ServerWellKnown::parse(br#"{"m.server":"matrix.example.org"}"#).unwrap();
        assert_eq!(wk.server.as_str(), "matrix.example.org");
        let wk = ServerWellKnown::parse(br#"{"m.server":"[::1]:8448","other":1}"#).unwrap();
        assert!(wk.server.is_ip_literal());
        assert_eq!(
            ServerWellKnown::parse(br#"{"m.server":""}"#),
            Err(WellKnownError::Empty)
        );
        assert_eq!(
            ServerWellKnown::parse(br#"{"m.servers":"x"}"#),
            Err(WellKnownError::Missing("m.server"))
        );
        assert_eq!(
            ServerWellKnown::parse(br#"{"m.server":5}"#),
            Err(WellKnownError::WrongType {
                key: "m.server",
                kind: "a number",
                expected: "a string"
            })
        );
        assert_eq!(
            ServerWellKnown::parse(br#"["m.server"]"#),
            Err(WellKnownError::NotObject("an array"))
        );
        assert!(matches!(
            ServerWellKnown::parse(b"<html>"),
            Err(WellKnownError::NotJson {
                line: 1,
                column: 1,
                ..
            })
        ));
        let e = ServerWellKnown::parse(br#"{"m.server":"matrix.example.org:99999"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"m.server\" value \"matrix.example.org:99999\" is not a valid server name: port 99999 is out of range (1-65535)"
        );
    }

    #[test]
    fn client_documents() {
        let c = ClientWellKnown::parse(
            br#"{"m.homeserver":{"base_url":"https://matrix.example.org"},"m.identity_server":{"base_url":"https://id.example"}}"#,
        )
        .unwrap();
        assert_eq!(c.homeserver_base_url, "https://matrix.example.org");
        assert_eq!(
            c.identity_server_base_url.as_deref(),
            Some("https://id.example")
        );
        assert_eq!(
            ClientWellKnown::parse(br#"{}"#),
            Err(WellKnownError::Missing("m.homeserver"))
        );
        assert_eq!(
            ClientWellKnown::parse(br#"{"m.homeserver":{}}"#),
            Err(WellKnownError::Missing("base_url"))
        );
        assert_eq!(
            ClientWellKnown::parse(br#"{"m.homeserver":{"base_url":"matrix.example.org"}}"#),
            Err(WellKnownError::BadBaseUrl("matrix.example.org".into()))
        );
        assert!(matches!(
            ClientWellKnown::parse(br#"{"m.homeserver":"x"}"#),
            Err(WellKnownError::WrongType { .. })
        ));
    }
}
