//! Monitoring against the lab: gauges per server, verdict changes logged
//! and sent to the webhook.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use homeport_core::ServerName;
use homeport_lab::Lab;
use homeport_server::metrics::Metrics;
use homeport_server::monitor::{Monitor, Notify, Webhook};
use homeport_test_support::{HttpsServer, Scripted, TlsSetup, next_loopback};

#[test]
fn gauges_and_a_webhook_notice_on_change() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lab = Lab::start().await.unwrap();
        let key = homeport_core::signing::SigningKey::generate("a_m").unwrap();
        let doc = homeport_core::keys::ServerKeysBuilder::new(
            &ServerName::parse("mon.lab").unwrap(),
            homeport_federation::keys::now_ms() + 86_400_000,
        )
        .verify_key(&key)
        .sign(&[&key])
        .unwrap();
        let mon = HttpsServer::start_on_any_loopback(
            homeport_lab::DEF_PORT,
            TlsSetup::Cert(lab.ca.issue(&["mon.lab"]).unwrap()),
            homeport_test_support::Handler::routes()
                .route("/_matrix/key/v2/server", Scripted::json(doc))
                .route(
                    "/_matrix/federation/v1/version",
                    Scripted::json(serde_json::json!({"server": {"name": "m", "version": "1"}})),
                ),
        )
        .unwrap();
        let IpAddr::V4(ip) = mon.addr().ip() else {
            panic!()
        };
        lab.dns.zone().update(|z| z.a("mon.lab", ip)).unwrap();
        let hook = HttpsServer::start(
            SocketAddr::new(IpAddr::V4(next_loopback()), 0),
            TlsSetup::Plain,
            Scripted::ok(),
        )
        .unwrap();
        let notify: Arc<dyn Notify> =
            Arc::new(Webhook::new(&format!("http://{}/hook", hook.addr())).unwrap());
        let metrics = Arc::new(Metrics::default());
        let servers = vec![
            ServerName::parse("mon.lab").unwrap(),
            ServerName::parse("picky.lab").unwrap(),
        ];
        let mut m = Monitor::new(
            lab.client(Duration::from_secs(20)).unwrap(),
            servers,
            Duration::from_secs(600),
            metrics.clone(),
            Some(notify),
        );
        assert!(
            m.round().await.is_empty(),
            "the first round records, it does not report changes"
        );
        let text = metrics.render();
        assert!(
            text.contains("homeport_federation_ok{server_name=\"mon.lab\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("homeport_federation_ok{server_name=\"picky.lab\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("homeport_key_valid_seconds{server_name=\"mon.lab\"}"),
            "{text}"
        );
        assert!(
            text.contains("homeport_monitor_certificate_expiry_seconds{server_name=\"mon.lab\"}"),
            "{text}"
        );
        assert!(
            text.contains("homeport_check_duration_seconds{server_name=\"mon.lab\"}"),
            "{text}"
        );
        // Break mon.lab: its key server starts answering 404.
        mon.set_handler(Scripted::not_found());
        let changes = m.round().await;
        assert_eq!(changes, vec![("mon.lab".to_owned(), false)]);
        let reqs = hook.requests();
        assert_eq!(reqs.len(), 1);
        let n = reqs[0].json().unwrap();
        assert_eq!(n["server_name"], "mon.lab");
        assert_eq!(n["federation_ok"], false);
        assert_eq!(n["previous"], true);
        assert!(
            metrics
                .render()
                .contains("homeport_federation_ok{server_name=\"mon.lab\"} 0")
        );
        assert!(Webhook::new("https://x").is_err());
    });
}
