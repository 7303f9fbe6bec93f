//! homeport-federation: a Matrix federation client that keeps the three
//! values common HTTP clients conflate — the address connected to, the TLS
//! name (SNI and certificate check), and the Host header — exactly as
//! discovery prescribes; signs requests with X-Matrix; and trusts server
//! keys only after checking their signatures (directly or through a
//! notary, whose signature is checked too).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use homeport_federation::{ClientConfig, FederationClient, KeyFetcher, MemoryKeyStore, TlsPolicy};
//! use homeport_resolve::{Resolver, ResolverConfig};
//! let resolver = Resolver::new(ResolverConfig::default())?;
//! let roots = homeport_resolve::tls::root_store(&homeport_resolve::TrustConfig::system())?;
//! let client = FederationClient::new(resolver, ClientConfig::new(TlsPolicy::new(roots)), None);
//! let fetcher = KeyFetcher::new(client, Arc::new(MemoryKeyStore::default()));
//! let keys = fetcher.fetch_direct(&homeport_core::ServerName::parse("matrix.org")?).await?;
//! for k in &keys.keys {
//!     println!("{} valid until {}", k.key_id, k.valid_until_ts);
//! }
//! # Ok(()) }
//! ```

pub mod auth;
pub mod check;
pub mod client;
pub mod connect;
pub mod keys;
pub mod tester_compat;
pub mod tls;

pub use client::{ClientConfig, FederationClient, FederationError, Response, Signer};
pub use connect::{Attempt, ConnInfo, ConnectOptions};
pub use keys::{FetchedKeys, KeyError, KeyFetcher, KeyStore, MemoryKeyStore, VerifiedKey, Via};
pub use tls::TlsPolicy;
