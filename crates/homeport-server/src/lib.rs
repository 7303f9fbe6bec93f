//! homeport-server: `homeport serve` — the federation front. Config
//! ([`config`]), listeners with IPV6_V6ONLY and graceful shutdown
//! ([`listen`]), the reloadable certificate ([`certs`]) and ACME ([`acme`]),
//! the HTTP surface as a `Router` ([`routes`]): `.well-known`, the key server
//! ([`keyserver`]), the notary ([`notary`]), the proxy ([`proxy`]), the tester
//! ([`tester`]); the store ([`store`]), metrics and monitoring.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = homeport_server::config::load(std::path::Path::new("homeport.yaml"))?;
//! let running = homeport_server::serve::start(&cfg).await?;
//! println!("listening on {:?}", running.addrs);
//! let report = running.reload(); // what SIGHUP does
//! println!("{:?}", report.certificate);
//! running.shutdown().await;
//! # Ok(()) }
//! ```

pub mod acme;
pub mod certs;
pub mod config;
pub mod init;
pub mod keyserver;
pub mod listen;
pub mod metrics;
pub mod monitor;
pub mod notary;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod serve;
pub mod services;
pub mod store;
pub mod tester;
