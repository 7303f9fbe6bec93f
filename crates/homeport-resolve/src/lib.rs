//! homeport-resolve: Matrix server discovery exactly as the Server-Server
//! API's "Resolving server names" describes it, with Synapse's caching
//! rules and a trace of every step.
//!
//! Given a server name, [`Resolver::resolve`] returns a [`Resolution`]: the
//! step that decided (`"1"`, `"2"`, `"3.1"`–`"3.5"`, `"4"`–`"6"`), the Host
//! header to send, the name the certificate must match (and so the SNI),
//! and the targets to try in order — three separate values, which common
//! HTTP clients conflate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use homeport_resolve::{Resolver, ResolverConfig};
//! let mut cfg = ResolverConfig::default();
//! cfg.dns.nameservers = vec!["127.0.0.53:53".parse()?];
//! let resolver = Resolver::new(cfg)?;
//! let name = homeport_core::ServerName::parse("example.org")?;
//! let r = resolver.resolve(&name).await;
//! if let Some(d) = r.destination() {
//!     println!("step {}: Host {} SNI {:?}", r.step, d.host_header, d.sni());
//! }
//! # Ok(()) }
//! ```

pub mod body;
pub mod cache_control;
pub mod clock;
pub mod dns;
pub mod filter;
mod lookup;
pub mod resolver;
pub mod srv;
pub mod step;
pub mod tls;
pub mod wellknown;

pub mod cache;

pub use clock::{Clock, ManualClock, SystemClock};
pub use dns::{DnsConfig, DnsFailure};
pub use filter::AddressFilter;
pub use resolver::{
    DEFAULT_PORT, Destination, Resolution, ResolveError, Resolver, ResolverConfig, SetupError,
    SrvOutcome, SrvReport, Target, TraceEvent,
};
pub use step::Step;
pub use tls::TrustConfig;
pub use wellknown::{
    Outcome as WellKnownOutcome, WellKnownFailure, WellKnownPolicy, WellKnownReport,
};
