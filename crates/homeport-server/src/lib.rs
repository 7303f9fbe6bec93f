//! homeport-server: `homeport serve`.

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
pub mod routes;
pub mod serve;
pub mod services;
pub mod store;
pub mod tester;
