//! homeport-server: `homeport serve`.

pub mod config;
