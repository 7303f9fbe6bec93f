//! Wiring a [`Config`] into a running server: keys, certificate, store,
//! notary, proxy, listeners; reload on request (SIGHUP) and when the
//! certificate files change; graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use homeport_core::signing::{self, SigningKey};
use homeport_federation::{KeyFetcher, MemoryKeyStore, TlsPolicy};
use homeport_resolve::{ResolverConfig, TrustConfig};
use tokio::sync::watch;

use crate::acme::{self, AcmeManager, AcmeResolver, AcmeSettings, AcmeTuning, Challenges};
use crate::certs::{CertError, ReloadOutcome, ReloadableCert};
use crate::config::{Config, HostHeaderPolicy, ListenerKind, ResourceName};
use crate::keyserver::{KeyServer, OldKey};
use crate::listen::{self, Listener};
use crate::metrics::Metrics;
use crate::notary::{Notary, NotaryLimits};
use crate::proxy::{HostPolicy, Proxy};
use crate::routes::{self, AppState, Resources, WellKnownDocs};
use crate::store::Store;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The signing key file.
    #[error("signing key {path}: {reason}")]
    SigningKey {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The certificate.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Anything else in the setup.
    #[error("{0}")]
    Setup(String),
}

/// What a reload did.
#[derive(Debug)]
pub struct ReloadReport {
    /// The certificate (None: no TLS listener).
    pub certificate: Option<Result<ReloadOutcome, CertError>>,
    /// The signing keys.
    pub signing_keys: Result<usize, String>,
}

/// Knobs of [`start_with`] that are not config keys.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// ACME timing (tests shorten it).
    pub acme: AcmeTuning,
}

/// A running server.
pub struct Running {
    /// Bound addresses.
    pub addrs: Vec<SocketAddr>,
    /// The http-01 responder's bound addresses (part of `addrs` too).
    pub acme_responder_addrs: Vec<SocketAddr>,
    /// The served certificate.
    pub cert: Option<Arc<ReloadableCert>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The ACME manager, when `acme.enabled`.
    pub acme: Option<Arc<AcmeManager>>,
    acme_task: Option<tokio::task::JoinHandle<()>>,
    _serving: Option<acme::ServingMarker>,
    keys: Arc<KeyServer>,
    key_path: PathBuf,
    old: Vec<OldKey>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    monitor: Option<tokio::task::JoinHandle<()>>,
    purge: Option<tokio::task::JoinHandle<()>>,
    /// The store.
    pub store: Arc<dyn Store>,
}

/// Probe the store every 10 s (`homeport_store_up`); delete expired cache
/// entries and leases every ten minutes.
fn spawn_purge(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    metrics.watch_store(store.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            metrics.store_up(store.backend(), store.ping().await.is_ok());
            if n.is_multiple_of(60) {
                match store
                    .purge_expired(homeport_federation::keys::now_ms())
                    .await
                {
                    Ok(0) => {}
                    Ok(rows) => tracing::debug!(rows, "store: expired entries deleted"),
                    Err(e) => tracing::debug!(error = %e, "store: purge skipped"),
                }
            }
            n += 1;
        }
    })
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Read a Synapse-format signing key file.
pub fn read_signing_keys(path: &std::path::Path) -> Result<Vec<SigningKey>, ServeError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ServeError::SigningKey {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    signing::parse_key_file(&text).map_err(|e| ServeError::SigningKey {
        path: p,
        reason: e.to_string(),
    })
}

fn resources(names: &[ResourceName], kind: ListenerKind) -> Resources {
    let mut r = Resources::default();
    if kind == ListenerKind::Metrics {
        r.metrics = true;
    }
    for n in names {
        match n {
            ResourceName::Federation => r.federation = true,
            ResourceName::Keys => r.keys = true,
            ResourceName::Client => r.client = true,
            ResourceName::Tester => r.tester = true,
            ResourceName::Metrics => r.metrics = true,
            // Synapse-only resources (media, openid, ...) are accepted in a
            // pasted listener block and not served.
            ResourceName::Other(_) => {}
        }
    }
    r
}

/// The resolver and TLS policy homeport uses for outbound requests made on
/// behalf of others (notary, tester): the deny list applies.
pub fn outbound(cfg: &Config) -> Result<(ResolverConfig, TlsPolicy), ServeError> {
    let mut rc = ResolverConfig {
        dns: cfg.dns_config(),
        filter: cfg.address_filter(),
        ..ResolverConfig::default()
    };
    let trust = match &cfg.federation_custom_ca_list {
        Some(files) => TrustConfig {
            system_roots: false,
            ca_files: files.clone(),
            ca_certs: Vec::new(),
        },
        None => TrustConfig::system(),
    };
    rc.trust = trust.clone();
    let roots =
        homeport_resolve::tls::root_store(&trust).map_err(|e| ServeError::Setup(e.to_string()))?;
    let mut tls = TlsPolicy::new(roots);
    tls.verify_certificates = cfg.federation_verify_certificates;
    tls.verification_whitelist = cfg.federation_certificate_verification_whitelist.clone();
    Ok((rc, tls))
}

/// Start serving `cfg`.
pub async fn start(cfg: &Config) -> Result<Running, ServeError> {
    start_with(cfg, StartOptions::default()).await
}

/// Start serving `cfg` with `opts`.
///
/// With `acme.enabled`, every socket is bound here, before any certificate
/// exists: a port conflict fails the start, the http-01 responder and (for
/// tls-alpn-01) the TLS listener answer challenges at once, and while the
/// certificate is pending ordinary TLS handshakes are refused until ACME
/// swaps the first certificate in (no restart, no placeholder certificate
/// on the wire).
pub async fn start_with(cfg: &Config, opts: StartOptions) -> Result<Running, ServeError> {
    let keys = read_signing_keys(&cfg.signing_key_path)?;
    let old: Vec<OldKey> = cfg
        .old_signing_keys
        .iter()
        .map(|(id, o)| OldKey {
            id: id.clone(),
            key: o.key_base64(),
            expired_ts: o.expired_ts,
        })
        .collect();
    let keyserver = Arc::new(KeyServer::new(
        cfg.server_name.clone(),
        keys,
        old.clone(),
        cfg.key_refresh_interval,
    ));
    let any_tls = cfg.listeners.iter().any(|l| l.tls);
    let acme_settings = if cfg.acme.enabled {
        Some(AcmeSettings::from_config(cfg).map_err(|e| ServeError::Setup(e.to_string()))?)
    } else {
        None
    };
    let challenges = Arc::new(Challenges::default());
    let acme_cert = match &acme_settings {
        Some(s) => Some(Arc::new(acme::initial_cert(s)?)),
        None => None,
    };
    let cert = if let Some(c) = &acme_cert {
        any_tls.then(|| c.clone())
    } else if any_tls {
        match (&cfg.tls_certificate_path, &cfg.tls_private_key_path) {
            (Some(c), Some(k)) => Some(Arc::new(ReloadableCert::load(c, k)?)),
            _ => {
                return Err(ServeError::Setup(
                    "a tls listener needs tls_certificate_path and tls_private_key_path".into(),
                ));
            }
        }
    } else {
        None
    };
    let store: Arc<dyn Store> = crate::store::open_serving(&cfg.database).await?;
    tracing::info!(backend = store.backend(), at = %store.location(), "store open");
    let metrics = Arc::new(Metrics::default());
    let notary = if cfg.notary.enabled {
        // Fetches on behalf of others: the deny list on every address
        // dialled, as for the tester and the monitor.
        let client = crate::services::checking_client(cfg, Duration::from_secs(20))?;
        let fetcher = KeyFetcher::new(client, Arc::new(MemoryKeyStore::default()));
        let limits = NotaryLimits {
            max_servers_per_request: cfg.notary.max_servers_per_request,
            ..NotaryLimits::default()
        };
        Some(Arc::new(Notary::new(
            keyserver.clone(),
            fetcher,
            store.clone(),
            metrics.clone(),
            limits,
        )))
    } else {
        None
    };
    let proxy = match &cfg.proxy {
        None => None,
        Some(p) => {
            let host = match p.host_header {
                HostHeaderPolicy::Preserve => HostPolicy::Preserve,
                HostHeaderPolicy::Backend => HostPolicy::Backend,
            };
            Some(
                Proxy::new(&p.backend, host, p.timeout)
                    .map_err(|e| ServeError::Setup(e.to_string()))?,
            )
        }
    };
    let well_known = WellKnownDocs {
        server: cfg
            .well_known
            .server
            .as_ref()
            .map(|s| serde_json::json!({ "m.server": s.as_str() })),
        client: cfg.well_known.client.clone().map(serde_json::Value::Object),
        support: cfg
            .well_known
            .support
            .clone()
            .map(serde_json::Value::Object),
        cache_control: cfg.well_known.cache_control.clone(),
    };
    let state = Arc::new(AppState {
        keys: keyserver.clone(),
        cert: cert.clone(),
        well_known,
        notary,
        proxy,
        synapse_admin: cfg.proxy.as_ref().is_some_and(|p| p.synapse_admin),
        metrics: metrics.clone(),
    });
    let tls_alpn = cfg.acme.enabled && cfg.acme.challenge == crate::config::Challenge::TlsAlpn01;
    let tls_cfg = match &cert {
        Some(c) if tls_alpn => Some(
            crate::certs::server_config_alpn(
                Arc::new(AcmeResolver::new(c.clone(), challenges.clone())),
                &[acme::ACME_TLS_ALPN],
            )
            .map_err(|e| ServeError::Setup(e.to_string()))?,
        ),
        Some(c) => Some(
            crate::certs::server_config(c.clone()).map_err(|e| ServeError::Setup(e.to_string()))?,
        ),
        None => None,
    };
    let http01 = cfg.acme.enabled && cfg.acme.challenge == crate::config::Challenge::Http01;
    let tester = crate::services::tester_router(cfg, store.clone(), metrics.clone())?;
    let monitor = crate::services::monitor_task(cfg, metrics.clone())?;
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for l in &cfg.listeners {
        let res = resources(
            &l.resources
                .iter()
                .flat_map(|r| r.names.iter().cloned())
                .collect::<Vec<_>>(),
            l.kind,
        );
        let extra = if res.tester { tester.clone() } else { None };
        let mut router = routes::router_with(state.clone(), res, extra);
        if http01 && !l.tls {
            // Every plain listener answers http-01 too (a port-80 listener
            // of the config is the responder).
            router = router.merge(acme::challenge_router(challenges.clone()));
        }
        for ip in &l.bind_addresses {
            let addr = SocketAddr::new(*ip, l.port);
            let socket = listen::bind(addr).map_err(|e| ServeError::Bind {
                addr,
                reason: e.to_string(),
            })?;
            let bound = socket.local_addr().unwrap_or(addr);
            addrs.push(bound);
            listeners.push(Listener {
                name: bound.to_string(),
                socket,
                tls: if l.tls { tls_cfg.clone() } else { None },
                router: router.clone(),
                x_forwarded: l.x_forwarded,
                trusted_proxies: cfg.trusted_proxies.clone(),
            });
        }
    }
    let mut acme_responder_addrs = Vec::new();
    if cfg.acme.enabled {
        for addr in acme::responder_addrs(cfg) {
            let socket = listen::bind(addr).map_err(|e| ServeError::Bind {
                addr,
                reason: format!("{e} (the acme http-01 responder: acme.port, acme.bind_addresses)"),
            })?;
            let bound = socket.local_addr().unwrap_or(addr);
            addrs.push(bound);
            acme_responder_addrs.push(bound);
            listeners.push(Listener {
                name: format!("acme {bound}"),
                socket,
                tls: None,
                router: acme::responder_router(challenges.clone()),
                x_forwarded: false,
                trusted_proxies: Vec::new(),
            });
        }
    }
    // The ACME manager, and with a shared store the certificate other
    // instances obtained, before the listeners serve: a restarted instance
    // never serves its older files while the database has a newer one.
    let mut serving = None;
    let acme_manager = match (acme_settings, &acme_cert) {
        (Some(s), Some(c)) => {
            serving = match acme::ServingMarker::take(&s) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, path = %s.serving_path().display(), "cannot mark this server as running; `homeport acme renew` will not find it");
                    None
                }
            };
            let m = AcmeManager::new(
                s,
                opts.acme.clone(),
                c.clone(),
                challenges.clone(),
                metrics.clone(),
            );
            if store.shared() {
                // Every instance serves the certificate in the database,
                // orders under its lock and answers every challenge.
                m.share(store.clone());
                m.sync_shared().await;
            }
            Some(m)
        }
        _ => None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(listen::serve(
        listeners,
        stop_rx.clone(),
        Duration::from_secs(10),
    ));
    let acme_task = acme_manager.as_ref().map(|m| m.spawn(stop_rx));
    let watcher = cert.as_ref().map(|c| {
        let m = metrics.clone();
        c.watch(Duration::from_secs(5), move |r| {
            m.reload(r.is_ok());
            log_reload(r);
        })
    });
    if let Some(c) = &cert {
        metrics.cert_expiry("tls", c.expires_in());
    }
    let purge = Some(spawn_purge(store.clone(), metrics.clone()));
    Ok(Running {
        store,
        purge,
        addrs,
        acme_responder_addrs,
        cert,
        metrics,
        acme: acme_manager,
        acme_task,
        _serving: serving,
        keys: keyserver,
        key_path: cfg.signing_key_path.clone(),
        old,
        stop,
        task,
        watcher,
        monitor,
    })
}

fn log_reload(r: &Result<ReloadOutcome, CertError>) {
    match r {
        Ok(ReloadOutcome::Swapped { sha256 }) => {
            tracing::info!(sha256 = %sha256, "certificate reloaded")
        }
        Ok(ReloadOutcome::Unchanged) => tracing::info!("certificate unchanged"),
        Err(e) => {
            tracing::error!(error = %e, "certificate reload refused; still serving the previous certificate")
        }
    }
}

impl Running {
    /// Reload the certificate and the signing key file (SIGHUP).
    pub fn reload(&self) -> ReloadReport {
        let certificate = self.cert.as_ref().map(|c| {
            let r = c.reload();
            self.metrics.reload(r.is_ok());
            log_reload(&r);
            r
        });
        let signing_keys = match read_signing_keys(&self.key_path) {
            Ok(k) => {
                let n = k.len();
                self.keys.set_keys(k, self.old.clone());
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "signing key reload refused; keeping the current keys");
                Err(e.to_string())
            }
        };
        ReloadReport {
            certificate,
            signing_keys,
        }
    }

    /// Stop accepting, drain in-flight requests, return.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(w) = self.watcher {
            w.abort();
        }
        if let Some(m) = self.monitor {
            m.abort();
        }
        if let Some(p) = self.purge {
            p.abort();
        }
        if let Some(t) = self.acme_task {
            t.abort();
        }
        let _ = self.task.await;
    }
}
