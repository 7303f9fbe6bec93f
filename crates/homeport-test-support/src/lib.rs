//! Real in-process peers for homeport's tests: an authoritative DNS server,
//! scripted HTTP(S) servers and an rcgen certificate authority, all bound to
//! loopback addresses (`127.0.0.x` or `::1`).
//!
//! Every server runs on its own background thread with its own Tokio
//! runtime, so it keeps answering while the test blocks (for example on a
//! `std::process::Command` running the CLI) and whatever the test's runtime
//! flavour is. Dropping a server (or calling `stop`) shuts it down and closes
//! its sockets.
//!
//! ```
//! use homeport_test_support::{
//!     DnsServer, Handler, HttpsServer, Scripted, TestCa, Zone, next_loopback,
//! };
//! use std::net::IpAddr;
//!
//! # fn main() -> std::io::Result<()> {
//! let ip = next_loopback();
//! let ca = TestCa::new("homeport test CA")?;
//! let cert = ca.issue(&["matrix.example.org"])?;
//! let https = HttpsServer::start(
//!     (IpAddr::V4(ip), 0).into(),
//!     cert,
//!     Handler::routes().route(
//!         "/.well-known/matrix/server",
//!         Scripted::json(serde_json::json!({"m.server": "fed.example.org:443"})),
//!     ),
//! )?;
//! let dns = DnsServer::start(
//!     IpAddr::V4(ip),
//!     Zone::new()
//!         .a("matrix.example.org", ip)
//!         .srv("_matrix-fed._tcp.example.org", 10, 5, https.addr().port(), "matrix.example.org"),
//! )?;
//! assert_eq!(dns.addr().ip(), IpAddr::V4(ip));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod background;
mod certs;
mod dns;
mod http;
mod net;
pub mod pebble;
pub mod postgres;
mod relay;

pub use certs::{
    IssueOpts, TestCa, TestCert, client_config, client_config_with, client_roots, self_signed,
};
pub use dns::{DnsServer, Failure, LoggedQuery, Protocol, Zone, ZoneHandle};
pub use http::{Body, Handler, Handshake, HttpsServer, Recorded, Routes, Scripted, TlsSetup};
pub use net::{loopback, next_loopback};
pub use relay::Relay;

/// Re-exported so tests can name record types and build arbitrary records
/// ([`Zone::record`]) without depending on hickory-proto themselves.
pub use hickory_proto::rr::{RData, RecordType};
