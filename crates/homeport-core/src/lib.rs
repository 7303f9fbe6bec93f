//! homeport-core: the Matrix federation protocol pieces that need no I/O.
//!
//! - [`server_name`]: `ServerName` parsed once (host kind, port, exact text);
//! - [`canonical_json`]: the spec's canonical JSON, owning key order and
//!   number rules;
//! - [`signing`]: Ed25519 keys, key ids, Synapse key files, signed JSON;
//! - [`keys`]: server key documents, their builder and checker;
//! - [`xmatrix`]: the `X-Matrix` request signature;
//! - [`well_known`]: `.well-known/matrix/server` and `/client` documents.
//!
//! ```
//! use homeport_core::{ServerName, signing::{SigningKey, sign_json, verify_json}};
//! let name = ServerName::parse("example.org:8448").unwrap();
//! assert_eq!(name.port(), Some(8448));
//! let key = SigningKey::generate("a_demo").unwrap();
//! let mut doc = serde_json::json!({"hello": "world"});
//! sign_json(&mut doc, name.as_str(), &key).unwrap();
//! assert!(verify_json(&doc, name.as_str(), key.id(), &key.verifying_key()).is_ok());
//! ```

pub mod base64;
pub mod canonical_json;
pub mod duration;
pub mod keys;
pub mod server_name;
pub mod signing;
pub mod time;
pub mod well_known;
pub mod xmatrix;

pub use server_name::{DnsName, Host, ServerName, ServerNameError};

/// Every error this crate returns, for callers that want one type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad server name.
    #[error(transparent)]
    ServerName(#[from] ServerNameError),
    /// No canonical form.
    #[error(transparent)]
    CanonicalJson(#[from] canonical_json::CanonicalJsonError),
    /// Keys, key files, signing.
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
    /// A signature check.
    #[error(transparent)]
    Verify(#[from] signing::VerifyError),
    /// An X-Matrix header.
    #[error(transparent)]
    XMatrix(#[from] xmatrix::XMatrixError),
    /// A `.well-known` document.
    #[error(transparent)]
    WellKnown(#[from] well_known::WellKnownError),
}
