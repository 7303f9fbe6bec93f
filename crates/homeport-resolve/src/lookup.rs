//! Raw lookups for tools that look further than discovery itself (the
//! tester fetches `.well-known` from every address, checks SRV records that
//! delegation made irrelevant, and so on). They share the resolver's caches.

use crate::dns::{Addrs, DnsFailure, SrvAnswer};
use crate::resolver::Resolver;

impl Resolver {
    /// AAAA and A of `host`.
    pub async fn lookup_addrs(&self, host: &str) -> Result<Addrs, DnsFailure> {
        self.inner.dns.addrs(host).await.map(|a| a.value)
    }

    /// SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`).
    pub async fn lookup_srv(&self, name: &str) -> Result<SrvAnswer, DnsFailure> {
        self.inner.dns.srv(name).await.map(|a| a.value)
    }

    /// The port `.well-known` is fetched on (443 unless overridden).
    pub fn well_known_port(&self) -> u16 {
        self.inner.well_known.policy().port
    }

    /// The port used when none is given (8448 unless overridden).
    pub fn default_port(&self) -> u16 {
        self.inner.default_port
    }

    /// The `.well-known` TLS client configuration (the resolver's trust).
    pub fn well_known_tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        self.inner.well_known.tls()
    }
}
