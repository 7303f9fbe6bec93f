//! `homeport init`: a commented `homeport.yaml` and a new Synapse-format
//! signing key, never overwriting anything.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let name = homeport_core::ServerName::parse("example.org").unwrap();
//! let report = homeport_server::init::init(dir.path(), &name).unwrap();
//! let cfg = homeport_server::config::load(&report.config).unwrap();
//! assert_eq!(cfg.signing_keys().unwrap()[0].id(), &report.key_id);
//! // A second run refuses to touch the files.
//! assert!(homeport_server::init::init(dir.path(), &name).is_err());
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use homeport_core::ServerName;
use homeport_core::signing::{self, KeyId, KeyIdError, SigningKey};

/// The config file name `init` writes.
pub const CONFIG_FILE: &str = "homeport.yaml";

/// What `init` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitReport {
    /// `DIR/homeport.yaml`.
    pub config: PathBuf,
    /// `DIR/<server_name>.signing.key` (mode 0600).
    pub signing_key: PathBuf,
    /// The id of the new key (`ed25519:a_XXXX`).
    pub key_id: KeyId,
}

impl InitReport {
    /// Every file written, in the order written.
    pub fn written(&self) -> [&Path; 2] {
        [&self.signing_key, &self.config]
    }
}

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// A file `init` would write is already there (nothing was written).
    #[error("{} already exists; homeport init never overwrites a file", .0.display())]
    Exists(PathBuf),
    /// Creating the directory or a file failed (nothing is left behind).
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The random key version was not a valid key id (cannot happen with
    /// `random_key_version`, kept typed all the same).
    #[error("cannot make a signing key: {0}")]
    Key(#[from] KeyIdError),
}

/// Write `dir/homeport.yaml` and `dir/<server_name>.signing.key` (a new
/// random Ed25519 key, Synapse's format, mode 0600). `dir` is created when
/// missing. If either file exists, fails with [`InitError::Exists`] and
/// writes nothing.
pub fn init(dir: &Path, server_name: &ServerName) -> Result<InitReport, InitError> {
    let config = dir.join(CONFIG_FILE);
    let key_name = format!("{server_name}.signing.key");
    let signing_key = dir.join(&key_name);
    for p in [&config, &signing_key] {
        // symlink_metadata: a dangling symlink counts as existing too.
        if p.symlink_metadata().is_ok() {
            return Err(InitError::Exists(p.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let key = SigningKey::generate(&signing::random_key_version())?;
    let key_id = key.id().clone();
    write_new(
        &signing_key,
        signing::format_key_file(&[key]).as_bytes(),
        0o600,
    )?;
    let text = config_text(server_name, &key_name);
    if let Err(e) = write_new(&config, text.as_bytes(), 0o644) {
        // Leave nothing behind: the key is ours, written a moment ago.
        let _ = std::fs::remove_file(&signing_key);
        return Err(e);
    }
    Ok(InitReport {
        config,
        signing_key,
        key_id,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InitError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file: File = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(path.to_owned())
        } else {
            InitError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let result = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(source) = result {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(InitError::Io {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

/// A YAML double-quoted scalar.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The commented config `init` writes: every section, values that
/// [`crate::config::parse`] accepts.
pub fn config_text(server_name: &ServerName, key_file: &str) -> String {
    let name = quoted(server_name.as_str());
    let key = quoted(key_file);
    let crt = quoted(&format!("{server_name}.tls.crt"));
    let tls_key = quoted(&format!("{server_name}.tls.key"));
    format!(
        r#"# homeport.yaml: the configuration of `homeport serve`, written by `homeport init`.
# Every key, its type and default: docs/configuration.md. Keys that Synapse's
# homeserver.yaml also has keep Synapse's names and shapes, so values can be
# copied across. Relative paths are relative to this file's directory.
# Durations: 500ms, 30s, 10m, 24h, 1d, 1w, 1y; a bare number is milliseconds.
# Check it with: homeport serve --config homeport.yaml --check-config

# The name this server federates as (the part after ':' in @user:NAME).
server_name: {name}

# The signing key (Synapse's format: "ed25519 <version> <seed>" per line).
# With proxy.backend set, point this at the homeserver's own key file
# (Synapse's *.signing.key): homeport reads it, never writes it.
signing_key_path: {key}

# Keys that used to sign, still published as old_verify_keys:
old_signing_keys: {{}}
#  "ed25519:a_old": {{key: "<base64 public key>", expired_ts: 1700000000000}}

# Other servers may cache the key document this long.
key_refresh_interval: 1d

# The certificate of `tls: true` listeners (PEM, full chain, leaf first) and
# its key, reloaded on SIGHUP and when the files change. With acme.enabled,
# the issued certificate is written here.
tls_certificate_path: {crt}
tls_private_key_path: {tls_key}

listeners:
  # Federation over TLS: what other servers connect to.
  - port: 8448
    tls: true
    type: http
    x_forwarded: false
    bind_addresses: ['::', '0.0.0.0']
    resources:
      - names: [federation]
        compress: false
  # Plain HTTP behind a TLS reverse proxy (nginx, Caddy, ...):
  # - port: 8008
  #   tls: false
  #   x_forwarded: true
  #   bind_addresses: ['::1', '127.0.0.1']
  #   resources:
  #     - names: [client, federation]
  #       compress: false
  # Prometheus metrics:
  # - port: 9000
  #   type: metrics
  #   bind_addresses: ['127.0.0.1']

# Outbound federation (notary, tester, monitor).
federation_verify_certificates: true
# PEM files whose CAs replace the system store:
# federation_custom_ca_list: ["private-ca.pem"]
federation_certificate_verification_whitelist: []
# Never dialled; the default is Synapse's list (loopback, private, link-local, ...):
# ip_range_blacklist: ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", ...]
ip_range_whitelist: []
# Notaries for key fetches, in Synapse's shape:
trusted_key_servers: []
#  - server_name: "matrix.org"
#    verify_keys:
#      "ed25519:auto": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"
# Peers whose X-Forwarded-For is believed on x_forwarded listeners.
trusted_proxies: ["127.0.0.0/8", "::1/128"]

dns:
  # IP:PORT nameservers to use instead of the system resolver:
  nameservers: []

well_known:
  # /.well-known/matrix/server (absent: 404). Set it when federation is
  # served by another host; leave the port out unless you must:
  # server: "matrix.example.org"
  # /.well-known/matrix/client and /support, served verbatim:
  # client: {{"m.homeserver": {{"base_url": "https://matrix.example.org"}}}}
  # support: {{"contacts": [{{"matrix_id": "@admin:example.org", "role": "m.role.admin"}}]}}
  cache_control: "max-age=86400"

# In front of a homeserver: uncomment (the section's presence turns proxying on).
# proxy:
#   backend: "http://127.0.0.1:8008"
#   host_header: preserve      # or: backend
#   synapse_admin: false       # true: also proxy /_synapse/*
#   timeout: 60s

notary:
  enabled: false
  max_servers_per_request: 100
  # cache_for: 1h              # default: until the answer's valid_until_ts

tester:
  enabled: false
  cache_ttl: 5m
  deadline: 30s

monitor:
  servers: []
  interval: 10m
  # webhook: "https://hooks.example.org/homeport"

acme:
  enabled: false
  url: "https://acme-v02.api.letsencrypt.org/directory"
  # staging: "https://acme-staging-v02.api.letsencrypt.org/directory"
  # directory_ca_file: "pebble.minica.pem"
  # domain: "matrix.example.org"   # default: the host of server_name
  domains: []
  contact: []                      # e.g. ["mailto:admin@example.org"]
  account_key_file: "acme_account.key"
  reprovision_threshold: 30d
  check_interval: 24h
  challenge: http-01               # or: tls-alpn-01
  port: 80                         # of the http-01 responder
  bind_addresses: ['::', '0.0.0.0']

# homeport's own store (never the homeserver's database).
database:
  name: sqlite3
  args:
    database: "homeport.db"
  # PostgreSQL, shared by several instances (docs/scaling.md; move an
  # existing store with `homeport store migrate --from sqlite:homeport.db --to THIS_FILE`):
  # name: psycopg2
  # args: {{user: homeport, password: "...", dbname: homeport, host: localhost, port: 5432, cp_min: 5, cp_max: 10}}
  # On another host, add TLS checked against the database's CA:
  #   sslmode: verify-full, sslrootcert: /etc/homeport/db-ca.pem

log:
  format: text                     # or: json
  level: info
"#
    )
}
