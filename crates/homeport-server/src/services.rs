//! The services `serve` starts besides the HTTP surface of the homeserver
//! front: the tester (API and page) and the monitor. Both resolve and
//! connect on behalf of others, so both use the deny list.

use std::sync::Arc;
use std::time::Duration;

use homeport_federation::{ClientConfig, FederationClient};
use homeport_resolve::Resolver;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::monitor::{Monitor, Notify, Webhook};
use crate::serve::{ServeError, outbound};
use crate::store::Store;
use crate::tester::{Tester, TesterLimits};

/// A federation client for checks made on behalf of others: the deny list
/// in the resolver and in the connector (on the socket address dialled),
/// HTTP/1.1 as federating servers speak it, the lab-only port overrides.
pub fn checking_client(cfg: &Config, timeout: Duration) -> Result<FederationClient, ServeError> {
    let (mut rc, mut tls) = outbound(cfg)?;
    if let Some(p) = cfg.dns.lab_well_known_port {
        rc.well_known.port = p;
    }
    if let Some(p) = cfg.dns.lab_default_port {
        rc.default_port = p;
    }
    rc.timeout = timeout;
    tls.alpn = vec![b"http/1.1".to_vec()];
    let filter = rc.filter.clone();
    let resolver = Resolver::new(rc).map_err(|e| ServeError::Setup(e.to_string()))?;
    let mut cc = ClientConfig::new(tls);
    cc.connect.filter = filter;
    cc.request_timeout = timeout;
    Ok(FederationClient::new(resolver, cc, None))
}

/// The tester's routes, when `tester.enabled`.
pub fn tester_router(
    cfg: &Config,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) -> Result<Option<axum::Router>, ServeError> {
    if !cfg.tester.enabled {
        return Ok(None);
    }
    let client = checking_client(cfg, cfg.tester.deadline)?;
    let limits = TesterLimits {
        cache_ttl: cfg.tester.cache_ttl,
        deadline: cfg.tester.deadline,
        ..TesterLimits::default()
    };
    let t = Arc::new(Tester::new(client, store, metrics, limits));
    Ok(Some(crate::tester::router(t)))
}

/// The monitor task, when `monitor.servers` is not empty.
pub fn monitor_task(
    cfg: &Config,
    metrics: Arc<Metrics>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServeError> {
    if cfg.monitor.servers.is_empty() {
        return Ok(None);
    }
    let client = checking_client(cfg, crate::monitor::CHECK_LIMIT)?;
    let notify: Option<Arc<dyn Notify>> = match &cfg.monitor.webhook {
        None => None,
        Some(url) => Some(Arc::new(Webhook::new(url).map_err(ServeError::Setup)?)),
    };
    let m = Monitor::new(
        client,
        cfg.monitor.servers.clone(),
        cfg.monitor.interval,
        metrics,
        notify,
    );
    Ok(Some(tokio::spawn(m.run())))
}
