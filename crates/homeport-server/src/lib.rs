//! homeport-server: `homeport serve`.

pub mod certs;
pub mod config;
pub mod init;
pub mod keyserver;
pub mod listen;
pub mod metrics;
pub mod notary;
pub mod proxy;
pub mod routes;
pub mod serve;
pub mod store;
pub mod tester;
pub mod monitor;
