//! Turning the network options into library configuration.

use homeport_federation::{ClientConfig, FederationClient, Signer, TlsPolicy};
use homeport_resolve::{Resolver, ResolverConfig, TrustConfig};

use crate::cli::NetOpts;
use crate::error::{CliError, CliResult};

/// The resolver configuration for `net`.
pub fn resolver_config(net: &NetOpts) -> CliResult<ResolverConfig> {
    if net.no_system_roots && net.ca_file.is_empty() {
        return Err(CliError::invalid(
            "--no-system-roots needs at least one --ca-file",
            "--no-system-roots".to_owned(),
        ));
    }
    let mut cfg = ResolverConfig::default();
    cfg.dns.nameservers = net.dns.clone();
    cfg.trust = TrustConfig {
        system_roots: !net.no_system_roots,
        ca_files: net.ca_file.clone(),
        ca_certs: Vec::new(),
    };
    cfg.timeout = net.timeout;
    if let Some(p) = net.well_known_port {
        cfg.well_known.port = p;
    }
    if let Some(p) = net.default_port {
        cfg.default_port = p;
    }
    cfg.well_known.timeout = net.timeout.min(cfg.well_known.timeout);
    Ok(cfg)
}

/// A current-thread runtime for one command.
pub fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}"), None))
}

/// A federation client for `net` (system roots plus --ca-file, or only
/// --ca-file with --no-system-roots), optionally signing.
pub fn federation_client(net: &NetOpts, signer: Option<Signer>) -> CliResult<FederationClient> {
    let cfg = resolver_config(net)?;
    let roots = homeport_resolve::tls::root_store(&cfg.trust)
        .map_err(|e| CliError::invalid(e, "--ca-file".to_owned()))?;
    let resolver = Resolver::new(cfg).map_err(|e| CliError::invalid(e, None))?;
    let mut tls = TlsPolicy::new(roots);
    // Speak what federating servers speak: HTTP/1.1 (Synapse offers no
    // ALPN), so that answers match what peers get.
    tls.alpn = vec![b"http/1.1".to_vec()];
    let mut client_cfg = ClientConfig::new(tls);
    client_cfg.request_timeout = net.timeout;
    client_cfg.connect.connect_timeout = net.timeout.min(client_cfg.connect.connect_timeout);
    Ok(FederationClient::new(resolver, client_cfg, signer))
}

/// Parse a server-name argument.
pub fn server_name(s: &str, at: &str) -> CliResult<homeport_core::ServerName> {
    homeport_core::ServerName::parse(s)
        .map_err(|e| CliError::invalid(format!("invalid server name {s:?}: {e}"), at.to_owned()))
}
