//! Turning the network options into library configuration.

use homeport_resolve::{ResolverConfig, TrustConfig};

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
