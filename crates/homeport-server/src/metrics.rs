//! Prometheus metrics with the names DESIGN.md lists, rendered in the text
//! exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges of one `serve` process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (resource, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Certificate reloads by result.
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Notary requests by result.
    notary_hit: AtomicU64,
    notary_miss: AtomicU64,
    notary_error: AtomicU64,
    /// Seconds until each listener's certificate expires.
    cert_expiry: Mutex<BTreeMap<String, i64>>,
    /// Free-form gauges (monitoring: federation_ok, key_valid_seconds...).
    gauges: Mutex<BTreeMap<(String, String), f64>>,
    /// ACME orders by result (`ok`, `unreachable`, `bad_nonce`,
    /// `rate_limited`, `invalid`, `timeout`, `error`).
    acme_orders: Mutex<BTreeMap<String, u64>>,
    /// ACME requests the server refused with `badNonce` (each was retried).
    acme_bad_nonce: AtomicU64,
    /// When the next ACME renewal is due (unix seconds; 0 = unknown).
    acme_next_renewal: AtomicU64,
    /// The store's backend and whether its last health probe answered.
    store_up: Mutex<Option<(String, bool)>>,
    /// The store whose pool and call counts are rendered.
    store: std::sync::OnceLock<std::sync::Arc<dyn crate::store::Store>>,
}

/// A notary outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotaryResult {
    /// Served from the store.
    Hit,
    /// Fetched from the origin.
    Miss,
    /// Could not answer.
    Error,
}

impl Metrics {
    /// Count one request.
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_owned(), status)).or_default() += 1;
        }
    }

    /// Count one certificate reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Certificate reloads so far (ok, failed).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Count one notary answer.
    pub fn notary(&self, r: NotaryResult) {
        match r {
            NotaryResult::Hit => &self.notary_hit,
            NotaryResult::Miss => &self.notary_miss,
            NotaryResult::Error => &self.notary_error,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Notary answers so far (hit, miss, error).
    pub fn notary_counts(&self) -> (u64, u64, u64) {
        (
            self.notary_hit.load(Ordering::Relaxed),
            self.notary_miss.load(Ordering::Relaxed),
            self.notary_error.load(Ordering::Relaxed),
        )
    }

    /// Set a listener's certificate expiry.
    pub fn cert_expiry(&self, listener: &str, seconds: i64) {
        if let Ok(mut m) = self.cert_expiry.lock() {
            m.insert(listener.to_owned(), seconds);
        }
    }

    /// Set a labelled gauge (`name{server_name="label"}`).
    pub fn gauge(&self, name: &str, label: &str, value: f64) {
        if let Ok(mut m) = self.gauges.lock() {
            m.insert((name.to_owned(), label.to_owned()), value);
        }
    }

    /// Record the store's health (`backend`: `sqlite3` or `psycopg2`).
    pub fn store_up(&self, backend: &str, up: bool) {
        if let Ok(mut m) = self.store_up.lock() {
            *m = Some((backend.to_owned(), up));
        }
    }

    /// Render `store`'s pool and call counts (PostgreSQL) with every
    /// scrape. The first store given is kept.
    pub fn watch_store(&self, store: std::sync::Arc<dyn crate::store::Store>) {
        let _ = self.store.set(store);
    }

    /// Count one ACME order attempt by result.
    pub fn acme_order(&self, result: &str) {
        if let Ok(mut m) = self.acme_orders.lock() {
            *m.entry(result.to_owned()).or_default() += 1;
        }
    }

    /// ACME order attempts with this result so far.
    pub fn acme_orders(&self, result: &str) -> u64 {
        self.acme_orders
            .lock()
            .map(|m| m.get(result).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Count one `badNonce` rejection.
    pub fn acme_bad_nonce(&self) {
        self.acme_bad_nonce.fetch_add(1, Ordering::Relaxed);
    }

    /// `badNonce` rejections so far.
    pub fn acme_bad_nonces(&self) -> u64 {
        self.acme_bad_nonce.load(Ordering::Relaxed)
    }

    /// Set when the next ACME renewal is due (unix seconds).
    pub fn acme_next_renewal(&self, unix: u64) {
        self.acme_next_renewal.store(unix, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP homeport_http_requests_total HTTP requests answered, by route and status.\n# TYPE homeport_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "homeport_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    esc(route)
                );
            }
        }
        s.push_str("# HELP homeport_certificate_expiry_seconds Seconds until the served certificate expires.\n# TYPE homeport_certificate_expiry_seconds gauge\n");
        if let Ok(m) = self.cert_expiry.lock() {
            for (l, v) in m.iter() {
                let _ = writeln!(
                    s,
                    "homeport_certificate_expiry_seconds{{listener=\"{}\"}} {v}",
                    esc(l)
                );
            }
        }
        let (ok, failed) = self.reloads();
        let _ = write!(
            s,
            "# HELP homeport_cert_reloads_total Certificate reloads, by result.\n# TYPE homeport_cert_reloads_total counter\nhomeport_cert_reloads_total{{result=\"ok\"}} {ok}\nhomeport_cert_reloads_total{{result=\"error\"}} {failed}\n"
        );
        let (h, mi, e) = self.notary_counts();
        let _ = write!(
            s,
            "# HELP homeport_notary_requests_total Notary answers, by result.\n# TYPE homeport_notary_requests_total counter\nhomeport_notary_requests_total{{result=\"hit\"}} {h}\nhomeport_notary_requests_total{{result=\"miss\"}} {mi}\nhomeport_notary_requests_total{{result=\"error\"}} {e}\n"
        );
        s.push_str("# HELP homeport_acme_orders_total ACME certificate orders, by result.\n# TYPE homeport_acme_orders_total counter\n");
        if let Ok(m) = self.acme_orders.lock() {
            for (result, n) in m.iter() {
                let _ = writeln!(
                    s,
                    "homeport_acme_orders_total{{result=\"{}\"}} {n}",
                    esc(result)
                );
            }
        }
        let _ = write!(
            s,
            "# HELP homeport_acme_bad_nonce_total ACME requests rejected with badNonce and retried.\n# TYPE homeport_acme_bad_nonce_total counter\nhomeport_acme_bad_nonce_total {}\n",
            self.acme_bad_nonces()
        );
        let next = self.acme_next_renewal.load(Ordering::Relaxed);
        if next > 0 {
            let _ = write!(
                s,
                "# HELP homeport_acme_next_renewal_timestamp_seconds When the next ACME renewal is due.\n# TYPE homeport_acme_next_renewal_timestamp_seconds gauge\nhomeport_acme_next_renewal_timestamp_seconds {next}\n"
            );
        }
        if let Ok(m) = self.store_up.lock()
            && let Some((backend, up)) = &*m
        {
            let _ = write!(
                s,
                "# HELP homeport_store_up 1 when the store answered its last health probe (every 10 s).\n# TYPE homeport_store_up gauge\nhomeport_store_up{{backend=\"{}\"}} {}\n",
                esc(backend),
                u8::from(*up)
            );
        }
        if let Some(st) = self.store.get().and_then(|st| st.stats()) {
            let _ = write!(
                s,
                "# HELP homeport_store_connections The store's pooled database connections, idle or in use.\n\
                 # TYPE homeport_store_connections gauge\n\
                 homeport_store_connections{{state=\"idle\"}} {}\n\
                 homeport_store_connections{{state=\"busy\"}} {}\n\
                 # HELP homeport_store_connections_max The pool's bound (database.args.cp_max).\n\
                 # TYPE homeport_store_connections_max gauge\n\
                 homeport_store_connections_max {}\n\
                 # HELP homeport_store_waiting Calls waiting for a free connection.\n\
                 # TYPE homeport_store_waiting gauge\n\
                 homeport_store_waiting {}\n\
                 # HELP homeport_store_calls_total Store calls by outcome (unavailable: the database could not be reached; answered 503).\n\
                 # TYPE homeport_store_calls_total counter\n\
                 homeport_store_calls_total{{result=\"ok\"}} {}\n\
                 homeport_store_calls_total{{result=\"error\"}} {}\n\
                 homeport_store_calls_total{{result=\"unavailable\"}} {}\n",
                st.idle,
                st.connections.saturating_sub(st.idle),
                st.max,
                st.waiting,
                st.calls_ok,
                st.calls_failed,
                st.calls_unavailable
            );
        }
        if let Ok(m) = self.gauges.lock() {
            let mut last = String::new();
            for ((name, label), v) in m.iter() {
                if *name != last {
                    let _ = writeln!(s, "# TYPE {name} gauge");
                    last = name.clone();
                }
                let _ = writeln!(s, "{name}{{server_name=\"{}\"}} {v}", esc(label));
            }
        }
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::default();
        m.store_up("psycopg2", false);
        m.request("keys", 200);
        m.request("keys", 200);
        m.reload(true);
        m.notary(NotaryResult::Hit);
        m.cert_expiry("0.0.0.0:8448", 3600);
        m.gauge("homeport_federation_ok", "example.org", 1.0);
        m.acme_order("ok");
        m.acme_order("rate_limited");
        m.acme_order("ok");
        m.acme_bad_nonce();
        let t = m.render();
        assert!(
            t.contains("homeport_acme_orders_total{result=\"ok\"} 2"),
            "{t}"
        );
        assert!(t.contains("homeport_acme_orders_total{result=\"rate_limited\"} 1"));
        assert!(t.contains("homeport_acme_bad_nonce_total 1"));
        assert!(
            t.contains("homeport_http_requests_total{route=\"keys\",status=\"200\"} 2"),
            "{t}"
        );
        assert!(t.contains("homeport_cert_reloads_total{result=\"ok\"} 1"));
        assert!(t.contains("homeport_notary_requests_total{result=\"hit\"} 1"));
        assert!(t.contains("homeport_certificate_expiry_seconds{listener=\"0.0.0.0:8448\"} 3600"));
        assert!(t.contains("homeport_federation_ok{server_name=\"example.org\"} 1"));
        assert!(
            t.contains("homeport_store_up{backend=\"psycopg2\"} 0"),
            "{t}"
        );
    }
}
