//! Monitoring: `monitor: {servers: [...], interval: 10m, webhook: URL}`
//! checks each server periodically, exports Prometheus gauges per server
//! (federation ok, certificate expiry, key validity, check duration), logs
//! each change of verdict, and POSTs a JSON notice to the webhook on change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homeport_core::ServerName;
use homeport_federation::FederationClient;
use homeport_federation::check::{self, CheckOptions, Report};
use homeport_federation::keys::now_ms;
use serde_json::json;

use crate::metrics::Metrics;

/// The most one monitored check may take; a server that does not answer
/// within it is reported as broken (check_timed_out) with what was learnt,
/// and the round goes on to the next server.
pub const CHECK_LIMIT: Duration = Duration::from_secs(60);

/// What one round found for one server.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The verdict.
    pub ok: bool,
    /// Seconds until the earliest certificate expiry seen (negative: expired).
    pub cert_expiry_seconds: Option<i64>,
    /// Seconds the keys stay valid.
    pub key_valid_seconds: Option<i64>,
    /// How long the check took.
    pub duration: Duration,
    /// The first error finding, for notices.
    pub first_error: Option<String>,
}

/// Summarise a report.
pub fn sample(r: &Report, duration: Duration) -> Sample {
    let now_s = i64::try_from(now_ms() / 1000).unwrap_or(0);
    let cert = r
        .addresses
        .iter()
        .filter_map(|a| a.certificate.as_ref())
        .filter_map(|c| c.chain.first())
        .map(|c| c.not_after - now_s)
        .min();
    let key = r
        .addresses
        .iter()
        .filter_map(|a| a.keys.as_ref())
        .filter_map(|k| k.valid_until_ts)
        .map(|v| i64::try_from(v / 1000).unwrap_or(i64::MAX) - now_s)
        .min();
    Sample {
        ok: r.ok,
        cert_expiry_seconds: cert,
        key_valid_seconds: key,
        duration,
        first_error: r
            .findings
            .iter()
            .find(|f| f.severity == check::Severity::Error)
            .map(|f| format!("{}: {}", f.id, f.evidence)),
    }
}

/// Export a sample.
pub fn export(metrics: &Metrics, name: &str, s: &Sample) {
    metrics.gauge("homeport_federation_ok", name, if s.ok { 1.0 } else { 0.0 });
    if let Some(c) = s.cert_expiry_seconds {
        metrics.gauge(
            "homeport_monitor_certificate_expiry_seconds",
            name,
            c as f64,
        );
    }
    if let Some(k) = s.key_valid_seconds {
        metrics.gauge("homeport_key_valid_seconds", name, k as f64);
    }
    metrics.gauge(
        "homeport_check_duration_seconds",
        name,
        s.duration.as_secs_f64(),
    );
}

/// Where change notices go.
pub trait Notify: Send + Sync {
    /// Deliver one notice (best effort).
    fn notify(
        &self,
        notice: serde_json::Value,
    ) -> futures_util::future::BoxFuture<'_, Result<(), String>>;
}

/// POSTs notices as JSON to an `http://` URL through the federation client's
/// resolver (so `dns.nameservers` applies), bounded in time.
pub struct Webhook {
    url: String,
    timeout: Duration,
}

impl Webhook {
    /// A webhook to `url` (`http://host[:port]/path`; put TLS in front with
    /// a local relay if needed).
    pub fn new(url: &str) -> Result<Self, String> {
        if !url.starts_with("http://") {
            return Err(format!(
                "monitor.webhook {url:?}: only http:// URLs are supported (use a local relay for https)"
            ));
        }
        Ok(Webhook {
            url: url.to_owned(),
            timeout: Duration::from_secs(10),
        })
    }
}

impl Notify for Webhook {
    fn notify(
        &self,
        notice: serde_json::Value,
    ) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            use http_body_util::Full;
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(hyper_util::client::legacy::connect::HttpConnector::new());
            let req = http::Request::post(&self.url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(bytes::Bytes::from(notice.to_string())))
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(self.timeout, client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => Ok(()),
                Ok(Ok(r)) => Err(format!("webhook answered HTTP {}", r.status())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("webhook timed out".into()),
            }
        })
    }
}

/// The monitor loop state.
pub struct Monitor {
    client: FederationClient,
    servers: Vec<ServerName>,
    interval: Duration,
    metrics: Arc<Metrics>,
    notify: Option<Arc<dyn Notify>>,
    last: HashMap<String, bool>,
}

impl Monitor {
    /// Monitor `servers` every `interval`.
    pub fn new(
        client: FederationClient,
        servers: Vec<ServerName>,
        interval: Duration,
        metrics: Arc<Metrics>,
        notify: Option<Arc<dyn Notify>>,
    ) -> Self {
        Monitor {
            client,
            servers,
            interval,
            metrics,
            notify,
            last: HashMap::new(),
        }
    }

    /// One round: check every server, export, log and notify changes.
    /// Returns the changes seen (server, new verdict).
    pub async fn round(&mut self) -> Vec<(String, bool)> {
        let mut changes = Vec::new();
        for name in self.servers.clone() {
            let start = Instant::now();
            let opts = CheckOptions {
                time_limit: Some(CHECK_LIMIT),
                ..CheckOptions::default()
            };
            let report = check::check(&self.client, &name, &opts).await;
            let s = sample(&report, start.elapsed());
            export(&self.metrics, name.as_str(), &s);
            let prev = self.last.insert(name.as_str().to_owned(), s.ok);
            if prev != Some(s.ok) {
                if s.ok {
                    tracing::info!(server = %name, "federation OK");
                } else {
                    tracing::warn!(server = %name, problem = s.first_error.as_deref().unwrap_or("-"), "federation BROKEN");
                }
                if prev.is_some() {
                    changes.push((name.as_str().to_owned(), s.ok));
                    if let Some(n) = &self.notify {
                        let notice = json!({
                            "server_name": name.as_str(),
                            "federation_ok": s.ok,
                            "previous": prev,
                            "first_error": s.first_error,
                            "at": now_ms(),
                        });
                        if let Err(e) = n.notify(notice).await {
                            tracing::warn!(server = %name, error = %e, "webhook failed");
                        }
                    }
                }
            }
        }
        changes
    }

    /// Run forever.
    pub async fn run(mut self) {
        loop {
            self.round().await;
            tokio::time::sleep(self.interval).await;
        }
    }
}
