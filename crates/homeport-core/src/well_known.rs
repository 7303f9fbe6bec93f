//! `/.well-known/matrix/server`, `/.well-known/matrix/client` and
//! `/.well-known/matrix/support` documents.
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
    /// A support document with neither a non-empty `contacts` list nor a
    /// `support_page`.
    #[error(
        "the document has neither a non-empty \"contacts\" list nor a \"support_page\" (one of them is required)"
    )]
    NoSupportInfo,
    /// One entry of a support document's `contacts` is not usable.
    #[error("contacts[{index}] {problem}")]
    BadContact {
        /// Its position in the list (0-based).
        index: usize,
        /// What is wrong with it.
        #[source]
        problem: ContactProblem,
    },
}

/// What is wrong with one contact of `/.well-known/matrix/support`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContactProblem {
    /// Not a JSON object.
    #[error("is {0}, not an object")]
    NotObject(&'static str),
    /// `role` is absent.
    #[error("has no \"role\" (it is required)")]
    MissingRole,
    /// Neither `matrix_id` nor `email_address`.
    #[error("has neither \"matrix_id\" nor \"email_address\" (one of them is required)")]
    NoAddress,
    /// A field has the wrong type.
    #[error("has {key:?} as {kind}, not {expected}")]
    WrongType {
        /// The field.
        key: &'static str,
        /// What it is.
        kind: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `matrix_id` is not a user ID.
    #[error("has \"matrix_id\" {0:?}, which is not a Matrix user ID (@localpart:server)")]
    NotUserId(String),
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

/// One contact of `/.well-known/matrix/support`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupportContact {
    /// `matrix_id`.
    pub matrix_id: Option<String>,
    /// `email_address`.
    pub email_address: Option<String>,
    /// `role`: `m.role.admin`, `m.role.security` or a namespaced identifier.
    pub role: String,
}

/// A valid `/.well-known/matrix/support` document (Client-Server API
/// v1.10, MSC1929): at least one of a non-empty `contacts` list and
/// `support_page`; every contact has a `role` and a `matrix_id` or an
/// `email_address`.
///
/// ```
/// use homeport_core::well_known::SupportWellKnown;
/// let s = SupportWellKnown::parse(
///     br#"{"contacts": [{"email_address": "admin@example.org", "role": "m.role.admin"}]}"#,
/// )
/// .unwrap();
/// assert_eq!(s.contacts[0].role, "m.role.admin");
/// assert!(SupportWellKnown::parse(br#"{"contacts": [{"matrix_id": "@a:example.org"}]}"#).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupportWellKnown {
    /// `contacts`, in order.
    pub contacts: Vec<SupportContact>,
    /// `support_page`.
    pub support_page: Option<String>,
}

impl SupportWellKnown {
    /// Parse the body against the spec's schema.
    pub fn parse(body: &[u8]) -> Result<Self, WellKnownError> {
        let m = parse_object(body)?;
        let support_page = match m.get("support_page") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(WellKnownError::WrongType {
                    key: "support_page",
                    kind: json_kind(other),
                    expected: "a string",
                });
            }
        };
        let listed = match m.get("contacts") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                return Err(WellKnownError::WrongType {
                    key: "contacts",
                    kind: json_kind(other),
                    expected: "an array",
                });
            }
        };
        let mut contacts = Vec::with_capacity(listed.len());
        for (index, c) in listed.iter().enumerate() {
            contacts
                .push(contact(c).map_err(|problem| WellKnownError::BadContact { index, problem })?);
        }
        if contacts.is_empty() && support_page.is_none() {
            return Err(WellKnownError::NoSupportInfo);
        }
        Ok(SupportWellKnown {
            contacts,
            support_page,
        })
    }
}

fn contact(c: &Value) -> Result<SupportContact, ContactProblem> {
    let Value::Object(o) = c else {
        return Err(ContactProblem::NotObject(json_kind(c)));
    };
    let text = |key: &'static str| match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ContactProblem::WrongType {
            key,
            kind: json_kind(other),
            expected: "a string",
        }),
    };
    let role = text("role")?.ok_or(ContactProblem::MissingRole)?;
    let matrix_id = text("matrix_id")?;
    let email_address = text("email_address")?;
    if let Some(id) = &matrix_id
        && !id.strip_prefix('@').is_some_and(|rest| {
            rest.split_once(':')
                .is_some_and(|(l, s)| !l.is_empty() && !s.is_empty())
        })
    {
        return Err(ContactProblem::NotUserId(id.clone()));
    }
    if matrix_id.is_none() && email_address.is_none() {
        return Err(ContactProblem::NoAddress);
    }
    Ok(SupportContact {
        matrix_id,
        email_address,
        role,
    })
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

    #[test]
    fn support_documents() {
        let ok = [
            r#"{"contacts":[{"matrix_id":"@admin:example.org","email_address":"admin@example.org","role":"m.role.admin"},{"email_address":"security@example.org","role":"m.role.security"}],"support_page":"https://example.org/support.html"}"#,
            r#"{"support_page":"https://example.org/help"}"#,
            r#"{"contacts":[],"support_page":"https://example.org/help"}"#,
            r#"{"contacts":[{"matrix_id":"@ops:elsewhere.net","role":"org.example.oncall"}]}"#,
        ];
        for body in ok {
            assert!(SupportWellKnown::parse(body.as_bytes()).is_ok(), "{body}");
        }
        let s = SupportWellKnown::parse(ok[0].as_bytes()).unwrap();
        assert_eq!(s.contacts.len(), 2);
        assert_eq!(s.contacts[1].matrix_id, None);
        assert_eq!(
            s.support_page.as_deref(),
            Some("https://example.org/support.html")
        );
        let bad: [(&str, &str); 10] = [
            (
                "{}",
                "neither a non-empty \"contacts\" list nor a \"support_page\"",
            ),
            (r#"{"contacts":[]}"#, "neither a non-empty"),
            (
                r#"{"contacts":{"role":"m.role.admin"}}"#,
                "\"contacts\" is an object, not an array",
            ),
            (
                r#"{"support_page":42}"#,
                "\"support_page\" is a number, not a string",
            ),
            (
                r#"{"contacts":[{"matrix_id":"@a:example.org"}]}"#,
                "contacts[0] has no \"role\"",
            ),
            (
                r#"{"contacts":[{"role":"m.role.admin"}]}"#,
                "contacts[0] has neither \"matrix_id\" nor \"email_address\"",
            ),
            (
                r#"{"contacts":[{"role":"m.role.admin","email_address":"a@b"},{"role":7,"email_address":"x@y"}]}"#,
                "contacts[1] has \"role\" as a number, not a string",
            ),
            (
                r#"{"contacts":[{"role":"m.role.admin","matrix_id":"admin"}]}"#,
                "not a Matrix user ID",
            ),
            (
                r#"{"contacts":["admin@example.org"]}"#,
                "contacts[0] is a string, not an object",
            ),
            ("[]", "not a JSON object"),
        ];
        for (body, want) in bad {
            let e = SupportWellKnown::parse(body.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
    }
}
