//! The configuration of `homeport serve`: one YAML file, read once, strict.
//!
//! Where Synapse's `homeserver.yaml` has the concept, the key has Synapse's
//! name and shape, so values can be copied across (a Synapse listener block
//! pastes unchanged). Every other key is homeport's own. Unknown keys and
//! bad values are errors that name the file, line, column and the dotted
//! key path ([`ConfigError`]); `docs/configuration.md` documents every key.
//!
//! Durations are read as Synapse reads them: an integer or a string without
//! a unit is milliseconds, otherwise a number with `ms`, `s`, `m`, `h`, `d`,
//! `w` or `y`. The one exception is [`AcmeSection::reprovision_threshold`],
//! where a bare integer is a number of days, as in Synapse 0.99.
//!
//! Relative paths are resolved against the directory of the config file;
//! after [`parse`] or [`load`], every path in a [`Config`] is absolute when
//! the config file's path could be made absolute.
//!
//! ```
//! use std::path::Path;
//! let text = "\
//! server_name: example.org
//! signing_key_path: example.org.signing.key
//! tls_certificate_path: /etc/homeport/fullchain.pem
//! tls_private_key_path: /etc/homeport/privkey.pem
//! listeners:
//!   - port: 8448
//!     tls: true
//!     resources:
//!       - names: [federation]
//! ";
//! let cfg = homeport_server::config::parse(text, Path::new("/etc/homeport/homeport.yaml")).unwrap();
//! assert_eq!(cfg.server_name.as_str(), "example.org");
//! assert_eq!(cfg.signing_key_path, Path::new("/etc/homeport/example.org.signing.key"));
//! assert_eq!(cfg.key_refresh_interval, std::time::Duration::from_secs(86_400));
//!
//! let err = homeport_server::config::parse("server_name: example.org\nlisten: []\n", Path::new("h.yaml")).unwrap_err();
//! assert_eq!(err.key, "listen");
//! assert_eq!(err.line, Some(2));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use homeport_core::signing::{self, KeyId, SigningKey};
use homeport_core::{DnsName, Host, ServerName};
use homeport_resolve::filter::{DEFAULT_DENY, parse_range};
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The largest config file [`load`] reads.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// The largest signing-key file [`Config::signing_keys`] reads.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Let's Encrypt's production ACME v2 directory: the default `acme.url`.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging ACME v2 directory (untrusted certificates, high
/// rate limits: for trying a setup out).
pub const LETS_ENCRYPT_STAGING_DIRECTORY: &str =
    "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Synapse's resource names that homeport accepts in a pasted listener block
/// but does not serve ([`ResourceName::Other`]).
pub const SYNAPSE_ONLY_RESOURCES: &[&str] = &[
    "media",
    "openid",
    "replication",
    "health",
    "static",
    "consent",
    "webclient",
];

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A config that cannot be used: where and why.
///
/// Displayed as `<message> (at <file>:<line>:<column>, key <key>)`; the
/// position is left out when it is not known, the key when the error is
/// about the whole file.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file (as given to [`load`] or [`parse`]).
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The dotted key path, e.g. `listeners[0].resources[0].names[1]`;
    /// empty when the error is about the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// The underlying error (I/O, key file), when there is one.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at {}", self.message, self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if !self.key.is_empty() {
            write!(f, ", key {}", self.key)?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl ConfigError {
    fn whole_file(file: &Path, message: String) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            key: String::new(),
            message,
            source: None,
        }
    }

    /// An error about `key`, located in `text` when the key is found there
    /// (else at the nearest enclosing key that is).
    fn at(text: &str, file: &Path, key: &KeyPath, message: String) -> Self {
        let pos = locate_nearest(text, key, 0);
        ConfigError {
            file: file.to_owned(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            key: key.to_string(),
            message,
            source: None,
        }
    }
}

// ---------------------------------------------------------------------------
// The config
// ---------------------------------------------------------------------------

/// The whole `homeport serve` configuration. Build it with [`parse`] or
/// [`load`], which validate it; a value deserialised any other way has not
/// been checked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file this config came from (not a YAML key).
    #[serde(skip)]
    pub source: PathBuf,
    /// Synapse's `server_name`: the name this server federates as, in the
    /// key documents it signs and in `/.well-known` delegation. Required.
    #[serde(deserialize_with = "one::<_, ServerNameS>")]
    pub server_name: ServerName,
    /// Synapse's `signing_key_path`: a Synapse-format signing-key file
    /// (`ed25519 <version> <seed>` per line); every key in it signs. With
    /// `proxy.backend` set this must be the homeserver's own key file (read
    /// as is, never written). Required.
    #[serde(deserialize_with = "one::<_, PathS>")]
    pub signing_key_path: PathBuf,
    /// Synapse's `old_signing_keys`: keys no longer used for signing but
    /// still published in `old_verify_keys`, in Synapse's shape
    /// `{"ed25519:id": {key: <base64 public key>, expired_ts: <ms>}}`.
    /// Default: none.
    #[serde(default, deserialize_with = "key_map")]
    pub old_signing_keys: BTreeMap<KeyId, OldSigningKey>,
    /// Synapse's `key_refresh_interval`: the key document's `valid_until_ts`
    /// is now plus this. Default `1d` (Synapse's default).
    #[serde(
        default = "defaults::key_refresh_interval",
        deserialize_with = "one::<_, DurationS>"
    )]
    pub key_refresh_interval: Duration,
    /// Synapse's `tls_certificate_path`: PEM chain, leaf first. Required
    /// when a listener has `tls: true`, unless ACME is enabled (then it
    /// defaults to `<acme.domain>.tls.crt` next to the config, and ACME
    /// writes the issued chain here).
    #[serde(default, deserialize_with = "opt::<_, PathS>")]
    pub tls_certificate_path: Option<PathBuf>,
    /// Synapse's `tls_private_key_path`: the PEM private key of the
    /// certificate. Same rules as `tls_certificate_path` (ACME default
    /// `<acme.domain>.tls.key`).
    #[serde(default, deserialize_with = "opt::<_, PathS>")]
    pub tls_private_key_path: Option<PathBuf>,
    /// Synapse's `listeners`. At least one. Required.
    pub listeners: Vec<Listener>,
    /// Synapse's `federation_verify_certificates`: verify the certificates
    /// of the servers homeport reaches out to (notary, tester, monitor).
    /// Default `true`.
    #[serde(default = "defaults::yes")]
    pub federation_verify_certificates: bool,
    /// Synapse's `federation_custom_ca_list`: PEM files whose CAs replace
    /// the system store for outbound federation (as in Synapse). Default:
    /// absent (the system store). An empty list is an error.
    #[serde(default, deserialize_with = "opt_many::<_, PathS>")]
    pub federation_custom_ca_list: Option<Vec<PathBuf>>,
    /// Synapse's `federation_certificate_verification_whitelist`: server
    /// names (globs with `*`, `?`) whose certificates are not verified.
    /// Default `[]`.
    #[serde(default, deserialize_with = "many::<_, PatternS>")]
    pub federation_certificate_verification_whitelist: Vec<String>,
    /// Synapse's `ip_range_blacklist`: addresses the notary, tester and
    /// monitor never dial. Default: Synapse's list
    /// ([`homeport_resolve::filter::DEFAULT_DENY`]).
    #[serde(
        default = "defaults::ip_range_blacklist",
        deserialize_with = "many::<_, RangeS>"
    )]
    pub ip_range_blacklist: Vec<IpNet>,
    /// Synapse's `ip_range_whitelist`: exceptions to the blacklist.
    /// Default `[]`.
    #[serde(default, deserialize_with = "many::<_, RangeS>")]
    pub ip_range_whitelist: Vec<IpNet>,
    /// Synapse's `trusted_key_servers` (notaries homeport's key fetches
    /// may ask), in Synapse's shape. Default `[]` (Synapse's default is
    /// matrix.org; homeport asks origins directly unless told otherwise).
    #[serde(default)]
    pub trusted_key_servers: Vec<TrustedKeyServer>,
    /// homeport's: peers whose `X-Forwarded-For` is believed on listeners
    /// with `x_forwarded: true`. Default `["127.0.0.0/8", "::1/128"]`.
    #[serde(
        default = "defaults::trusted_proxies",
        deserialize_with = "many::<_, RangeS>"
    )]
    pub trusted_proxies: Vec<IpNet>,
    /// homeport's: DNS for outbound lookups.
    #[serde(default)]
    pub dns: DnsSection,
    /// homeport's: the `/.well-known/matrix/*` documents.
    #[serde(default)]
    pub well_known: WellKnownSection,
    /// homeport's: the homeserver homeport fronts. Absent: homeport is not
    /// in front of a homeserver.
    #[serde(default)]
    pub proxy: Option<ProxySection>,
    /// homeport's: the key notary (`/_matrix/key/v2/query`).
    #[serde(default)]
    pub notary: NotarySection,
    /// homeport's: the federation tester API and page.
    #[serde(default)]
    pub tester: TesterSection,
    /// homeport's: periodic checks of a list of servers.
    #[serde(default)]
    pub monitor: MonitorSection,
    /// Synapse 0.99's `acme`, on ACME v2: automatic certificates.
    #[serde(default)]
    pub acme: AcmeSection,
    /// homeport's own store, in Synapse's `database` shape (never the
    /// homeserver's database). Default: SQLite `homeport.db` next to the
    /// config.
    #[serde(default)]
    pub database: Database,
    /// homeport's: logging.
    #[serde(default)]
    pub log: LogSection,
}

/// One entry of `old_signing_keys`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OldSigningKey {
    /// `key`: the public key (base64 in the file). Required.
    #[serde(deserialize_with = "one::<_, PublicKeyS>")]
    pub key: VerifyingKey,
    /// `expired_ts`: when the key stopped being used, milliseconds since
    /// the Unix epoch. Required.
    pub expired_ts: u64,
}

impl OldSigningKey {
    /// The public key in unpadded base64, as key documents carry it.
    pub fn key_base64(&self) -> String {
        homeport_core::base64::encode(self.key.as_bytes())
    }
}

/// One entry of `trusted_key_servers` (Synapse's shape).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyServer {
    /// `server_name`: the notary. Required.
    #[serde(deserialize_with = "one::<_, ServerNameS>")]
    pub server_name: ServerName,
    /// `verify_keys`: `{"ed25519:id": <base64 public key>}`, the keys the
    /// notary's answers must be signed with. Default: absent (its keys are
    /// fetched over TLS and trusted on first use, which Synapse allows with
    /// a warning; homeport warns too).
    #[serde(default, deserialize_with = "opt_verify_keys")]
    pub verify_keys: Option<BTreeMap<KeyId, VerifyingKey>>,
    /// `accept_keys_insecurely` (Synapse's): silence the warning for a
    /// server without `verify_keys`. Default `false`.
    #[serde(default)]
    pub accept_keys_insecurely: bool,
}

/// A listener (Synapse's block, pasted unchanged).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `port`. Required; 0 asks the OS for a free port (tests).
    #[serde(deserialize_with = "one::<_, PortS>")]
    pub port: u16,
    /// `bind_addresses`. Default `['::', '0.0.0.0']` (Synapse's; `::` is
    /// opened IPv6-only, so the pair binds both families). An empty list
    /// means the default, as in Synapse.
    #[serde(
        default = "defaults::bind_addresses",
        deserialize_with = "many::<_, IpS>"
    )]
    pub bind_addresses: Vec<IpAddr>,
    /// Synapse's `type`: `http` (default) or `metrics` (which means
    /// `resources: [{names: [metrics]}]`).
    #[serde(rename = "type", default)]
    pub kind: ListenerKind,
    /// `tls`: terminate TLS with the configured certificate. Default
    /// `false`.
    #[serde(default)]
    pub tls: bool,
    /// `x_forwarded`: take the client address from `X-Forwarded-For` when
    /// the peer is in `trusted_proxies`. Default `false`.
    #[serde(default)]
    pub x_forwarded: bool,
    /// `resources`: what the listener serves. Required for `type: http`.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

impl Listener {
    /// True when any resource of this listener has `name`.
    pub fn serves(&self, name: &ResourceName) -> bool {
        self.resources.iter().any(|r| r.names.contains(name))
    }
}

/// Synapse's listener `type`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// `http`: the resources listed.
    #[default]
    Http,
    /// `metrics`: Prometheus `/metrics` only.
    Metrics,
}

/// One entry of a listener's `resources`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// `names`. Required.
    pub names: Vec<ResourceName>,
    /// `compress`: gzip responses. Default `false`.
    #[serde(default)]
    pub compress: bool,
}

/// A resource name and the routes it serves (see `docs/configuration.md`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ResourceName {
    /// `federation`: `/_matrix/federation/*`, `/_matrix/key/v2/*`,
    /// `/.well-known/matrix/*`, and with `proxy.backend` every other
    /// `/_matrix/*` path.
    Federation,
    /// `keys`: `/_matrix/key/v2/*`.
    Keys,
    /// `client`: `/.well-known/matrix/*`, and with `proxy.backend`
    /// `/_matrix/client/*` and `/_matrix/media/*`.
    Client,
    /// `tester`: `/` and `/api/*` (needs `tester.enabled`).
    Tester,
    /// `metrics`: `/metrics`.
    Metrics,
    /// A Synapse resource homeport accepts so that a pasted Synapse block
    /// loads, but does not serve (one of [`SYNAPSE_ONLY_RESOURCES`]);
    /// [`Config::warnings`] names each one.
    Other(String),
}

impl ResourceName {
    /// The name as written in the config.
    pub fn as_str(&self) -> &str {
        match self {
            ResourceName::Federation => "federation",
            ResourceName::Keys => "keys",
            ResourceName::Client => "client",
            ResourceName::Tester => "tester",
            ResourceName::Metrics => "metrics",
            ResourceName::Other(s) => s,
        }
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResourceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one::<_, ResourceNameS>(d)
    }
}

/// `dns:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// `nameservers`: `IP:PORT` (a bare IP means port 53) asked instead of
    /// the system resolver. Default `[]`: the system resolver.
    #[serde(deserialize_with = "many::<_, NameserverS>")]
    pub nameservers: Vec<SocketAddr>,
    /// `lab_well_known_port`: lab only. Fetch `.well-known` on this port
    /// instead of 443 when homeport resolves on behalf of others (notary,
    /// tester, monitor), to test against `homeport lab --serve` without
    /// root. Default: absent (443, as the spec says).
    pub lab_well_known_port: Option<u16>,
    /// `lab_default_port`: lab only. Use this port where the spec says 8448.
    /// Default: absent (8448).
    pub lab_default_port: Option<u16>,
}

/// `well_known:`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WellKnownSection {
    /// `server`: the `m.server` of `/.well-known/matrix/server`
    /// (`host[:port]`). Default: absent, and that route answers 404.
    #[serde(deserialize_with = "opt::<_, ServerNameS>")]
    pub server: Option<ServerName>,
    /// `client`: the `/.well-known/matrix/client` object, served verbatim.
    /// Default: absent (404).
    pub client: Option<serde_json::Map<String, serde_json::Value>>,
    /// `support`: the `/.well-known/matrix/support` object (MSC1929),
    /// served verbatim. Default: absent (404).
    pub support: Option<serde_json::Map<String, serde_json::Value>>,
    /// `cache_control`: the `Cache-Control` header of the three documents.
    /// Default `max-age=86400`.
    #[serde(deserialize_with = "one::<_, HeaderValueS>")]
    pub cache_control: String,
}

impl Default for WellKnownSection {
    fn default() -> Self {
        WellKnownSection {
            server: None,
            client: None,
            support: None,
            cache_control: "max-age=86400".to_owned(),
        }
    }
}

/// `proxy:`: homeport in front of a homeserver.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// `backend`: `http://host:port` or `https://host:port` of the
    /// homeserver (no path; a trailing `/` is dropped). Required.
    #[serde(deserialize_with = "one::<_, BackendS>")]
    pub backend: String,
    /// `host_header`: `preserve` (default: the client's Host) or `backend`
    /// (the backend's `host:port`).
    #[serde(default)]
    pub host_header: HostHeaderPolicy,
    /// `synapse_admin`: also proxy `/_synapse/*`. Default `false`.
    #[serde(default)]
    pub synapse_admin: bool,
    /// `timeout`: for the backend's response headers. Default `60s`.
    #[serde(
        default = "defaults::proxy_timeout",
        deserialize_with = "one::<_, DurationS>"
    )]
    pub timeout: Duration,
}

/// `proxy.host_header`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HostHeaderPolicy {
    /// Forward the client's `Host` unchanged.
    #[default]
    Preserve,
    /// Send the backend's `host:port`.
    Backend,
}

/// `notary:`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NotarySection {
    /// `enabled`: answer `/_matrix/key/v2/query`. Default `false` (with a
    /// backend, the query is then proxied).
    pub enabled: bool,
    /// `max_servers_per_request`: the most server names one query may ask
    /// for (larger ones get 400). Default `100`; at least 1.
    pub max_servers_per_request: usize,
    /// `cache_for`: the longest a fetched key response is answered from the
    /// store before it is fetched again. Default: absent, meaning until the
    /// response's own `valid_until_ts`.
    #[serde(deserialize_with = "opt::<_, DurationS>")]
    pub cache_for: Option<Duration>,
}

impl Default for NotarySection {
    fn default() -> Self {
        NotarySection {
            enabled: false,
            max_servers_per_request: 100,
            cache_for: None,
        }
    }
}

/// `tester:`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TesterSection {
    /// `enabled`: serve the tester on listeners with the `tester`
    /// resource. Default `false`.
    pub enabled: bool,
    /// `cache_ttl`: how long a report is reused. Default `5m`.
    #[serde(deserialize_with = "one::<_, DurationS>")]
    pub cache_ttl: Duration,
    /// `deadline`: the most one check may take. Default `30s`.
    #[serde(deserialize_with = "one::<_, DurationS>")]
    pub deadline: Duration,
}

impl Default for TesterSection {
    fn default() -> Self {
        TesterSection {
            enabled: false,
            cache_ttl: Duration::from_secs(300),
            deadline: Duration::from_secs(30),
        }
    }
}

/// `monitor:`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    /// `servers`: server names checked every `interval`. Default `[]`
    /// (no monitoring).
    #[serde(deserialize_with = "many::<_, ServerNameS>")]
    pub servers: Vec<ServerName>,
    /// `interval`: time between two checks of a server. Default `10m`.
    #[serde(deserialize_with = "one::<_, DurationS>")]
    pub interval: Duration,
    /// `webhook`: an `http(s)://` URL that receives a JSON POST when a
    /// server's federation status changes. Default: absent.
    #[serde(deserialize_with = "opt::<_, WebhookS>")]
    pub webhook: Option<String>,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            servers: Vec::new(),
            interval: Duration::from_secs(600),
            webhook: None,
        }
    }
}

/// `acme:`: automatic certificates over ACME v2 (RFC 8555).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSection {
    /// `enabled`. Default `false`.
    pub enabled: bool,
    /// `url`: the ACME v2 directory. Default Let's Encrypt production
    /// ([`LETS_ENCRYPT_DIRECTORY`]); an ACME v1 URL is refused.
    #[serde(deserialize_with = "one::<_, AcmeUrlS>")]
    pub url: String,
    /// `directory_ca_file`: PEM CA trusted for the directory itself (a
    /// private CA, pebble), in addition to the system store. Default:
    /// absent.
    #[serde(deserialize_with = "opt::<_, PathS>")]
    pub directory_ca_file: Option<PathBuf>,
    /// `domain`: the certificate's first name. Default: the host of
    /// `server_name` (filled in by [`parse`] whenever that host is a DNS
    /// name, so it is always `Some` when `enabled`).
    #[serde(deserialize_with = "opt::<_, DomainS>")]
    pub domain: Option<DnsName>,
    /// `domains`: further names on the same certificate. Default `[]`.
    #[serde(deserialize_with = "many::<_, DomainS>")]
    pub domains: Vec<DnsName>,
    /// `contact`: `mailto:` URLs for the account. Default `[]`.
    #[serde(deserialize_with = "many::<_, MailtoS>")]
    pub contact: Vec<String>,
    /// `account_key_file`: the ACME account key, created when missing.
    /// Default `acme_account.key` next to the config.
    #[serde(deserialize_with = "one::<_, PathS>")]
    pub account_key_file: PathBuf,
    /// `reprovision_threshold`: renew when the certificate expires within
    /// this. Default `30d`; a bare integer is days (Synapse 0.99).
    #[serde(deserialize_with = "one::<_, DaysS>")]
    pub reprovision_threshold: Duration,
    /// `check_interval`: how often expiry is checked. Default `24h`.
    #[serde(deserialize_with = "one::<_, DurationS>")]
    pub check_interval: Duration,
    /// `challenge`: `http-01` (default) or `tls-alpn-01`.
    pub challenge: Challenge,
    /// `port`: of the http-01 responder. Default `80`.
    #[serde(deserialize_with = "one::<_, PortS>")]
    pub port: u16,
    /// `bind_addresses`: of the http-01 responder. Default
    /// `['::', '0.0.0.0']`.
    #[serde(deserialize_with = "many::<_, IpS>")]
    pub bind_addresses: Vec<IpAddr>,
}

impl Default for AcmeSection {
    fn default() -> Self {
        AcmeSection {
            enabled: false,
            url: LETS_ENCRYPT_DIRECTORY.to_owned(),
            directory_ca_file: None,
            domain: None,
            domains: Vec::new(),
            contact: Vec::new(),
            account_key_file: PathBuf::from("acme_account.key"),
            reprovision_threshold: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(86_400),
            challenge: Challenge::Http01,
            port: 80,
            bind_addresses: defaults::bind_addresses(),
        }
    }
}

impl AcmeSection {
    /// Every name the certificate carries: `domain` first, then `domains`
    /// (duplicates removed).
    pub fn names(&self) -> Vec<&DnsName> {
        let mut out: Vec<&DnsName> = Vec::new();
        for d in self.domain.iter().chain(self.domains.iter()) {
            if !out
                .iter()
                .any(|o| o.as_str().eq_ignore_ascii_case(d.as_str()))
            {
                out.push(d);
            }
        }
        out
    }
}

/// `acme.challenge`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Challenge {
    /// `http-01`: a plain-HTTP responder on `acme.port`.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// `tls-alpn-01`: answered on the TLS listener (ALPN `acme-tls/1`).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// `database:` — homeport's own store, in Synapse's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// `{name: sqlite3, args: {database: PATH}}`.
    Sqlite(SqliteArgs),
    /// `{name: psycopg2, args: {user, password, dbname, host, port, cp_min, cp_max}}`.
    Postgres(PostgresArgs),
}

impl Default for Database {
    fn default() -> Self {
        Database::Sqlite(SqliteArgs::default())
    }
}

/// `database.args` for `sqlite3`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteArgs {
    /// `database`: the file (`:memory:` for a throw-away store). Default
    /// `homeport.db` next to the config.
    #[serde(deserialize_with = "one::<_, PathS>")]
    pub database: PathBuf,
}

impl Default for SqliteArgs {
    fn default() -> Self {
        SqliteArgs {
            database: PathBuf::from("homeport.db"),
        }
    }
}

/// `database.args` for `psycopg2` (PostgreSQL).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresArgs {
    /// `user`. Required.
    pub user: String,
    /// `password`. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// `dbname`. Required.
    pub dbname: String,
    /// `host`: a host name, an address, or a Unix socket directory.
    /// Default `localhost`.
    #[serde(default = "defaults::pg_host")]
    pub host: String,
    /// `port`. Default `5432`.
    #[serde(default = "defaults::pg_port", deserialize_with = "one::<_, PortS>")]
    pub port: u16,
    /// `cp_min`: connections kept open. Default `5`.
    #[serde(default = "defaults::cp_min")]
    pub cp_min: usize,
    /// `cp_max`: most connections open. Default `10`; at least `cp_min`
    /// and at least 1.
    #[serde(default = "defaults::cp_max")]
    pub cp_max: usize,
    /// `sslmode`, as in libpq: `disable`, `allow`, `prefer`, `require`,
    /// `verify-ca` or `verify-full`. Default: absent, meaning `prefer`
    /// (`verify-full` when `sslrootcert` is `system`); see
    /// [`PostgresArgs::ssl_mode`]. Not used on a Unix socket.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// `sslrootcert`: the CA certificates (PEM) the server's certificate
    /// must chain to, or `system` for the system's trusted roots. With
    /// `require` it makes the mode check the chain, as in libpq.
    #[serde(default, deserialize_with = "opt::<_, PathS>")]
    pub sslrootcert: Option<PathBuf>,
    /// `sslcert`: a client certificate chain (PEM) for `cert`/`clientcert`
    /// authentication; needs `sslkey`.
    #[serde(default, deserialize_with = "opt::<_, PathS>")]
    pub sslcert: Option<PathBuf>,
    /// `sslkey`: the private key (PEM) of `sslcert`.
    #[serde(default, deserialize_with = "opt::<_, PathS>")]
    pub sslkey: Option<PathBuf>,
    /// `channel_binding`, as in libpq: `disable`, `prefer` (default) or
    /// `require` (SCRAM-SHA-256-PLUS over TLS, or no connection).
    #[serde(default)]
    pub channel_binding: ChannelBinding,
}

/// `database.args.sslmode` (libpq's names).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// libpq tries without TLS first; homeport asks for TLS first, as
    /// with `prefer` (the server decides either way; neither checks the
    /// certificate).
    Allow,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS or no connection; the certificate is checked against
    /// `sslrootcert` when one is given (as `verify-ca`), else not at all.
    Require,
    /// TLS, with a certificate that chains to `sslrootcert` (any name).
    VerifyCa,
    /// TLS, with a certificate that chains to `sslrootcert` and names
    /// `host`.
    VerifyFull,
}

impl SslMode {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// `database.args.channel_binding` (libpq's names).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// Never bind SCRAM to the TLS channel.
    Disable,
    /// Bind when the server offers SCRAM-SHA-256-PLUS over TLS.
    #[default]
    Prefer,
    /// Refuse to authenticate without channel binding.
    Require,
}

impl PostgresArgs {
    /// `user` (with `password`) at `host:port`, database `dbname`, with a
    /// pool of `cp_min`..=`cp_max` connections.
    pub fn new(
        user: &str,
        password: Option<&str>,
        dbname: &str,
        host: &str,
        port: u16,
        (cp_min, cp_max): (usize, usize),
    ) -> Self {
        PostgresArgs {
            user: user.to_owned(),
            password: password.map(str::to_owned),
            dbname: dbname.to_owned(),
            host: host.to_owned(),
            port,
            cp_min,
            cp_max,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: ChannelBinding::Prefer,
        }
    }

    /// The `sslmode` in effect: the configured one, else `verify-full`
    /// with `sslrootcert: system` and `prefer` otherwise (libpq's rules).
    pub fn ssl_mode(&self) -> SslMode {
        self.sslmode.unwrap_or(if self.root_is_system() {
            SslMode::VerifyFull
        } else {
            SslMode::Prefer
        })
    }

    /// Whether `sslrootcert` is the word `system` (the system's roots).
    pub fn root_is_system(&self) -> bool {
        self.sslrootcert.as_deref() == Some(Path::new("system"))
    }

    /// Whether the connection is over a Unix socket (`host` is a path),
    /// where TLS is never used.
    pub fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `postgresql://user@host:port/dbname` (never the password), for
    /// messages and logs.
    pub fn location(&self) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl fmt::Debug for PostgresArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresArgs")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("cp_min", &self.cp_min)
            .field("cp_max", &self.cp_max)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

/// `log:`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `format`: `text` (default) or `json`.
    pub format: LogFormat,
    /// `level`: a filter directive (`info`, `debug`,
    /// `homeport_server=debug,info`). Default `info`.
    #[serde(deserialize_with = "one::<_, LogLevelS>")]
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// `log.format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

mod defaults {
    use super::*;

    pub fn yes() -> bool {
        true
    }
    pub fn key_refresh_interval() -> Duration {
        Duration::from_secs(86_400)
    }
    pub fn ip_range_blacklist() -> Vec<IpNet> {
        DEFAULT_DENY
            .iter()
            .filter_map(|s| parse_range(s).ok())
            .collect()
    }
    pub fn trusted_proxies() -> Vec<IpNet> {
        ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|s| parse_range(s).ok())
            .collect()
    }
    pub fn bind_addresses() -> Vec<IpAddr> {
        vec![
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ]
    }
    pub fn proxy_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn pg_host() -> String {
        "localhost".to_owned()
    }
    pub fn pg_port() -> u16 {
        5432
    }
    pub fn cp_min() -> usize {
        5
    }
    pub fn cp_max() -> usize {
        10
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Read and validate the config file at `path` (at most
/// [`MAX_CONFIG_BYTES`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_capped(path, MAX_CONFIG_BYTES).map_err(|(message, source)| ConfigError {
        source,
        ..ConfigError::whole_file(path, message)
    })?;
    parse(&text, path)
}

type ReadFailure = (String, Option<Box<dyn std::error::Error + Send + Sync>>);

fn read_capped(path: &Path, cap: u64) -> Result<String, ReadFailure> {
    let file = std::fs::File::open(path).map_err(|e| {
        (
            format!("cannot read {}: {e}", path.display()),
            Some(e.into()),
        )
    })?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| {
        (
            format!("cannot read {}: {e}", path.display()),
            Some(e.into()),
        )
    })?;
    if bytes.len() as u64 > cap {
        return Err((
            format!("{} is larger than {} bytes", path.display(), cap),
            None,
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        (
            format!("{} is not UTF-8 text", path.display()),
            Some(e.into()),
        )
    })
}

/// Parse and validate config `text`; `source` is the file it came from,
/// used in errors and to resolve relative paths.
pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
    let de = serde_norway::Deserializer::from_str(text);
    let cfg: Config = match serde_path_to_error::deserialize(de) {
        Ok(cfg) => cfg,
        Err(e) => return Err(de_error(e, text, source)),
    };
    finish(cfg, text, source)
}

impl Config {
    /// Things that work but are probably not what the admin wants, one
    /// sentence each (`serve` logs them at start, `--check-config` prints
    /// them).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(server) = &self.well_known.server
            && let Some(port) = server.port()
        {
            let host = server.host_str();
            out.push(format!(
                "well_known.server \"{server}\" has an explicit port: every federating server \
                 will then connect to port {port} and send `Host: {server}` (with the port), \
                 and a reverse proxy that matches only `{host}` (nginx server_name, a Caddy \
                 site address, a Traefik Host rule) rejects those requests; leave the port \
                 out when the target listens on 8448 (or set an SRV record), or make the \
                 proxy accept `{server}`. See docs/delegation.md, section \"A port in m.server\""
            ));
        }
        if self.key_refresh_interval > Duration::from_secs(7 * 86_400) {
            out.push(format!(
                "key_refresh_interval is {}: servers treat a key document as valid for at \
                 most 7 days (room versions 5 and later), so anything longer only delays \
                 key rotation",
                homeport_core::duration::format(self.key_refresh_interval)
            ));
        }
        for (i, ks) in self.trusted_key_servers.iter().enumerate() {
            if ks.verify_keys.is_none() && !ks.accept_keys_insecurely {
                out.push(format!(
                    "trusted_key_servers[{i}] ({}) has no verify_keys: its signing keys are \
                     trusted as fetched over TLS; add verify_keys, or set \
                     accept_keys_insecurely: true to silence this",
                    ks.server_name
                ));
            }
        }
        if !self.federation_verify_certificates {
            out.push(
                "federation_verify_certificates is false: outbound federation accepts any \
                 certificate"
                    .to_owned(),
            );
        }
        for (i, l) in self.listeners.iter().enumerate() {
            for (j, r) in l.resources.iter().enumerate() {
                for (k, n) in r.names.iter().enumerate() {
                    match n {
                        ResourceName::Other(name) => out.push(format!(
                            "listeners[{i}].resources[{j}].names[{k}]: `{name}` is a Synapse \
                             resource that homeport does not serve; it is ignored{}",
                            if self.proxy.is_some() && matches!(name.as_str(), "media") {
                                " (`client` already proxies /_matrix/media/*)"
                            } else {
                                ""
                            }
                        )),
                        ResourceName::Tester if !self.tester.enabled => out.push(format!(
                            "listeners[{i}].resources[{j}].names[{k}]: the tester resource is \
                             listed but tester.enabled is false, so / and /api/* answer 404"
                        )),
                        _ => {}
                    }
                }
            }
        }
        if let Database::Postgres(pg) = &self.database
            && !pg.is_socket()
            && !is_local_host(&pg.host)
        {
            let how = match pg.ssl_mode() {
                SslMode::VerifyFull => None,
                SslMode::VerifyCa => Some("encrypted, but the certificate's name is not checked"),
                SslMode::Require if pg.sslrootcert.is_some() => {
                    Some("encrypted, but the certificate's name is not checked")
                }
                SslMode::Require => Some("encrypted, but the server's certificate is not checked"),
                SslMode::Prefer | SslMode::Allow => Some(
                    "encrypted only if the server offers TLS, and its certificate is not checked",
                ),
                SslMode::Disable => Some("not encrypted"),
            };
            if let Some(how) = how {
                out.push(format!(
                    "database.args.sslmode is {} and the database at {} is not on this machine: \
                     the connection is {how}, and it carries the notary's cache and, with ACME, \
                     the certificate's private key; set sslmode: verify-full with sslrootcert \
                     (docs/configuration.md, `database`)",
                    pg.ssl_mode().as_str(),
                    pg.host
                ));
            }
        }
        if self.acme.enabled && !self.listeners.iter().any(|l| l.tls) {
            out.push(
                "acme is enabled but no listener has tls: true: certificates are written to \
                 tls_certificate_path and tls_private_key_path but not served"
                    .to_owned(),
            );
        }
        if self.acme.enabled
            && self.acme.challenge == Challenge::TlsAlpn01
            && !self.listeners.iter().any(|l| l.tls && l.port == 443)
        {
            out.push(
                "acme.challenge is tls-alpn-01 but no TLS listener is on port 443, where the \
                 ACME server connects; that works only when port 443 is forwarded to one"
                    .to_owned(),
            );
        }
        out
    }

    /// Read and parse the signing keys at `signing_key_path` (Synapse's
    /// format, at most [`MAX_KEY_FILE_BYTES`]).
    pub fn signing_keys(&self) -> Result<Vec<SigningKey>, ConfigError> {
        let path = &self.signing_key_path;
        let fail = |message: String, source| ConfigError {
            file: self.source.clone(),
            line: None,
            column: None,
            key: "signing_key_path".to_owned(),
            message,
            source,
        };
        let text = read_capped(path, MAX_KEY_FILE_BYTES).map_err(|(m, s)| fail(m, s))?;
        signing::parse_key_file(&text).map_err(|e| {
            fail(
                format!("signing key file {}: {e}", path.display()),
                Some(Box::new(e)),
            )
        })
    }

    /// True when homeport is in front of a homeserver (`proxy.backend`).
    pub fn has_backend(&self) -> bool {
        self.proxy.is_some()
    }

    /// The resolver's DNS settings: `dns.nameservers`, other values at
    /// their defaults.
    pub fn dns_config(&self) -> homeport_resolve::DnsConfig {
        homeport_resolve::DnsConfig {
            nameservers: self.dns.nameservers.clone(),
            ..homeport_resolve::DnsConfig::default()
        }
    }

    /// `ip_range_blacklist` with `ip_range_whitelist` as its exceptions.
    pub fn address_filter(&self) -> homeport_resolve::AddressFilter {
        homeport_resolve::AddressFilter {
            deny: self.ip_range_blacklist.clone(),
            allow: self.ip_range_whitelist.clone(),
        }
    }
}

/// Checks that need the whole config, and defaults that depend on other
/// keys or on the file's directory.
fn finish(mut cfg: Config, text: &str, source: &Path) -> Result<Config, ConfigError> {
    let fail = |key: KeyPath, message: String| Err(ConfigError::at(text, source, &key, message));
    cfg.source = source.to_owned();

    // Listeners.
    if cfg.listeners.is_empty() {
        return fail(
            KeyPath::default().key("listeners"),
            "at least one listener is needed, e.g. `- port: 8448` with `tls: true` and \
             `resources: [{names: [federation]}]`"
                .to_owned(),
        );
    }
    for (i, l) in cfg.listeners.iter_mut().enumerate() {
        let at = KeyPath::default().key("listeners").index(i);
        if l.bind_addresses.is_empty() {
            l.bind_addresses = defaults::bind_addresses();
        }
        match l.kind {
            ListenerKind::Metrics => {
                if l.resources
                    .iter()
                    .flat_map(|r| r.names.iter())
                    .any(|n| *n != ResourceName::Metrics)
                {
                    return fail(
                        at.key("resources"),
                        "a `type: metrics` listener serves only /metrics; remove its \
                         resources, or make it `type: http`"
                            .to_owned(),
                    );
                }
                l.resources = vec![Resource {
                    names: vec![ResourceName::Metrics],
                    compress: false,
                }];
            }
            ListenerKind::Http => {
                if l.resources.iter().all(|r| r.names.is_empty()) {
                    return fail(
                        at.key("resources"),
                        format!(
                            "the listener on port {} serves nothing: add resources, e.g. \
                             `resources: [{{names: [federation]}}]`",
                            l.port
                        ),
                    );
                }
            }
        }
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.port == 0 {
            continue;
        }
        for (j, addr) in l.bind_addresses.iter().enumerate() {
            let earlier = cfg.listeners[..i]
                .iter()
                .position(|o| o.port == l.port && o.bind_addresses.contains(addr));
            let twice = l.bind_addresses[..j].contains(addr);
            if let Some(other) = earlier {
                return fail(
                    KeyPath::default().key("listeners").index(i).key("port"),
                    format!(
                        "port {} on {addr} is already used by listeners[{other}]",
                        l.port
                    ),
                );
            }
            if twice {
                return fail(
                    KeyPath::default()
                        .key("listeners")
                        .index(i)
                        .key("bind_addresses")
                        .index(j),
                    format!("{addr} is listed twice"),
                );
            }
        }
    }

    // ACME: the default domain is the server name's host.
    if cfg.acme.domain.is_none() {
        if let Host::Dns(d) = cfg.server_name.host() {
            cfg.acme.domain = Some(d.clone());
        } else if cfg.acme.enabled {
            return fail(
                KeyPath::default().key("acme").key("enabled"),
                format!(
                    "acme.domain defaults to the host of server_name, but {} is an IP \
                     address; set acme.domain to the DNS name the certificate is for",
                    cfg.server_name
                ),
            );
        }
    }

    // TLS certificate paths.
    match (&cfg.tls_certificate_path, &cfg.tls_private_key_path) {
        (Some(_), None) => {
            return fail(
                KeyPath::default().key("tls_certificate_path"),
                "tls_certificate_path is set but tls_private_key_path is not; set both".to_owned(),
            );
        }
        (None, Some(_)) => {
            return fail(
                KeyPath::default().key("tls_private_key_path"),
                "tls_private_key_path is set but tls_certificate_path is not; set both".to_owned(),
            );
        }
        (None, None) => {
            if cfg.acme.enabled {
                let stem = cfg
                    .acme
                    .domain
                    .as_ref()
                    .map_or_else(|| cfg.server_name.to_string(), |d| d.to_string());
                cfg.tls_certificate_path = Some(PathBuf::from(format!("{stem}.tls.crt")));
                cfg.tls_private_key_path = Some(PathBuf::from(format!("{stem}.tls.key")));
            } else if let Some(i) = cfg.listeners.iter().position(|l| l.tls) {
                return fail(
                    KeyPath::default().key("listeners").index(i).key("tls"),
                    format!(
                        "the listener on port {} has tls: true but tls_certificate_path and \
                         tls_private_key_path are not set; set both, or enable acme to obtain \
                         a certificate",
                        cfg.listeners[i].port
                    ),
                );
            }
        }
        (Some(_), Some(_)) => {}
    }

    if cfg.acme.challenge == Challenge::TlsAlpn01
        && cfg.acme.enabled
        && !cfg.listeners.iter().any(|l| l.tls)
    {
        return fail(
            KeyPath::default().key("acme").key("challenge"),
            "tls-alpn-01 is answered on a TLS listener, and no listener has tls: true; add \
             one (on port 443, where the ACME server connects) or use http-01"
                .to_owned(),
        );
    }

    // Other cross-key and range checks.
    if matches!(&cfg.federation_custom_ca_list, Some(v) if v.is_empty()) {
        return fail(
            KeyPath::default().key("federation_custom_ca_list"),
            "an empty list would trust no certificate at all; remove the key to use the \
             system store"
                .to_owned(),
        );
    }
    for (i, ks) in cfg.trusted_key_servers.iter().enumerate() {
        if ks.verify_keys.is_none()
            && !ks.accept_keys_insecurely
            && !cfg.federation_verify_certificates
        {
            return fail(
                KeyPath::default().key("trusted_key_servers").index(i),
                format!(
                    "{} has no verify_keys and federation_verify_certificates is false, so \
                     nothing would authenticate its keys; add verify_keys",
                    ks.server_name
                ),
            );
        }
        if matches!(&ks.verify_keys, Some(v) if v.is_empty()) {
            return fail(
                KeyPath::default()
                    .key("trusted_key_servers")
                    .index(i)
                    .key("verify_keys"),
                "an empty verify_keys would reject every answer; list the notary's keys or \
                 remove the key"
                    .to_owned(),
            );
        }
    }
    for (section, key, d) in [
        ("", "key_refresh_interval", Some(cfg.key_refresh_interval)),
        ("proxy", "timeout", cfg.proxy.as_ref().map(|p| p.timeout)),
        ("tester", "deadline", Some(cfg.tester.deadline)),
        ("monitor", "interval", Some(cfg.monitor.interval)),
        ("acme", "check_interval", Some(cfg.acme.check_interval)),
        ("notary", "cache_for", cfg.notary.cache_for),
    ] {
        if d == Some(Duration::ZERO) {
            let path = if section.is_empty() {
                KeyPath::default().key(key)
            } else {
                KeyPath::default().key(section).key(key)
            };
            return fail(path, "must be longer than zero".to_owned());
        }
    }
    if cfg.notary.max_servers_per_request == 0 {
        return fail(
            KeyPath::default()
                .key("notary")
                .key("max_servers_per_request"),
            "must be at least 1".to_owned(),
        );
    }
    if let Database::Postgres(pg) = &cfg.database
        && (pg.cp_max == 0 || pg.cp_min > pg.cp_max)
    {
        return fail(
            KeyPath::default().key("database").key("args").key("cp_max"),
            format!(
                "cp_max ({}) must be at least 1 and at least cp_min ({})",
                pg.cp_max, pg.cp_min
            ),
        );
    }

    if let Database::Postgres(pg) = &cfg.database {
        let at = |k: &str| KeyPath::default().key("database").key("args").key(k);
        let mode = pg.ssl_mode();
        if pg.root_is_system() && mode != SslMode::VerifyFull {
            return fail(
                at("sslrootcert"),
                format!(
                    "sslrootcert: system needs sslmode verify-full (the system's roots \
                     vouch for names, so any weaker mode would accept a certificate \
                     anyone can get), not {}",
                    mode.as_str()
                ),
            );
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && pg.sslrootcert.is_none() {
            return fail(
                at("sslmode"),
                format!(
                    "sslmode {} needs sslrootcert: the CA file (PEM) that signed the \
                     server's certificate, or `system`",
                    mode.as_str()
                ),
            );
        }
        if pg.channel_binding == ChannelBinding::Require
            && (mode == SslMode::Disable || pg.is_socket())
        {
            return fail(
                at("channel_binding"),
                format!(
                    "channel_binding: require needs TLS to bind to, and {}",
                    if pg.is_socket() {
                        "a Unix socket (host is a path) never uses TLS"
                    } else {
                        "sslmode is disable"
                    }
                ),
            );
        }
        match (&pg.sslcert, &pg.sslkey) {
            (Some(_), None) => {
                return fail(
                    at("sslcert"),
                    "sslcert needs sslkey (its private key, PEM)".to_owned(),
                );
            }
            (None, Some(_)) => {
                return fail(
                    at("sslkey"),
                    "sslkey needs sslcert (the client certificate, PEM)".to_owned(),
                );
            }
            _ => {}
        }
    }

    // Relative paths are relative to the config file.
    let dir = base_dir(source);
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    resolve(&mut cfg.signing_key_path);
    if let Some(p) = cfg.tls_certificate_path.as_mut() {
        resolve(p);
    }
    if let Some(p) = cfg.tls_private_key_path.as_mut() {
        resolve(p);
    }
    for p in cfg.federation_custom_ca_list.iter_mut().flatten() {
        resolve(p);
    }
    if let Some(p) = cfg.acme.directory_ca_file.as_mut() {
        resolve(p);
    }
    resolve(&mut cfg.acme.account_key_file);
    if let Database::Sqlite(args) = &mut cfg.database
        && args.database != Path::new(":memory:")
    {
        resolve(&mut args.database);
    }
    if let Database::Postgres(pg) = &mut cfg.database {
        if !pg.root_is_system()
            && let Some(p) = pg.sslrootcert.as_mut()
        {
            resolve(p);
        }
        for p in [pg.sslcert.as_mut(), pg.sslkey.as_mut()]
            .into_iter()
            .flatten()
        {
            resolve(p);
        }
    }
    Ok(cfg)
}

/// `localhost` or a loopback address: a database on this machine.
fn is_local_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn base_dir(source: &Path) -> PathBuf {
    let abs = std::path::absolute(source).unwrap_or_else(|_| source.to_owned());
    abs.parent().map(Path::to_path_buf).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Deserialisation errors → ConfigError
// ---------------------------------------------------------------------------

fn de_error(
    e: serde_path_to_error::Error<serde_norway::Error>,
    text: &str,
    source: &Path,
) -> ConfigError {
    let mut path = KeyPath::from_tracked(e.path());
    let inner = e.inner();
    if path.is_root()
        && matches!(
            serde_norway::from_str::<serde_norway::Value>(text),
            Ok(serde_norway::Value::Null)
        )
    {
        return ConfigError::whole_file(
            source,
            "the config file is empty; the smallest config sets server_name, \
             signing_key_path, tls_certificate_path, tls_private_key_path and one listener"
                .to_owned(),
        );
    }
    let mut pos = inner.location().map(|l| (l.line(), l.column()));
    let mut message = strip_positions(&inner.to_string());
    // serde_norway prefixes its own path (the value's, or for an unknown
    // key the enclosing mapping's); the key is reported separately.
    for prefix in [path.to_string(), path.parent().to_string()] {
        if !prefix.is_empty()
            && let Some(rest) = message.strip_prefix(&format!("{prefix}: "))
        {
            message = rest.to_owned();
            break;
        }
    }
    // `database.args` given before `name` is checked late, without
    // positions (see DatabaseVisitor).
    if path.last_key() == Some("database")
        && let Some(rest) = message.strip_prefix("args: ")
    {
        message = rest.to_owned();
        path = path.key("args");
        pos = None;
    }

    if let Some(field) = backticked(&message, "missing field `") {
        path = path.key(&field);
        message = format!("missing key `{field}`");
    } else if let Some(field) = backticked(&message, "duplicate field `") {
        path = path.key(&field);
        message = format!("key `{field}` appears twice");
        pos = locate(text, &path, 1).or(pos);
    } else if let Some(field) = backticked(&message, "unknown field `") {
        message = unknown_key_message(&field, &message, path.parent().is_root());
        if path.last_key() != Some(field.as_str()) {
            path = path.key(&field);
        }
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        message = format!("unknown value `{rest}");
    } else if path.is_root() && message.starts_with("invalid type:") {
        message = format!(
            "the config must be a YAML mapping (server_name: ..., listeners: ...), found {}",
            message
                .trim_start_matches("invalid type: ")
                .split(", expected")
                .next()
                .unwrap_or("that")
        );
    }
    if pos.is_none() {
        pos = locate_nearest(text, &path, 0);
    }
    if let Some((line, col)) = pos {
        let at = text
            .lines()
            .nth(line.saturating_sub(1))
            .and_then(|l| l.chars().nth(col.saturating_sub(1)));
        if at == Some('\t') {
            message.push_str(" (a tab: YAML indents with spaces only)");
        }
    }
    ConfigError {
        file: source.to_owned(),
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
        key: path.to_string(),
        message,
        source: None,
    }
}

/// The text between `prefix` and the next backtick, when `s` starts with
/// `prefix`.
fn backticked(s: &str, prefix: &str) -> Option<String> {
    let rest = s.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_owned)
}

/// Top-level keys of Synapse's homeserver.yaml that homeport does not read,
/// for a clearer message when a whole Synapse config is pasted.
const SYNAPSE_ONLY_KEYS: &[&str] = &[
    "pid_file",
    "report_stats",
    "media_store_path",
    "public_baseurl",
    "registration_shared_secret",
    "macaroon_secret_key",
    "form_secret",
    "log_config",
    "enable_registration",
    "suppress_key_server_warning",
    "web_client_location",
    "presence",
    "admin_contact",
    "max_upload_size",
    "url_preview_enabled",
    "no_tls",
    "tls_fingerprints",
    "federation_domain_whitelist",
    "federation_ip_range_blacklist",
    "perspectives",
    "redis",
    "worker_app",
    "instance_map",
    "serve_server_wellknown",
];

/// `unknown key `x``, with a suggestion when a known key is close, else
/// the list of keys allowed there (taken from serde's message; at the top
/// level, a pointer to the reference instead of all 23 keys).
fn unknown_key_message(field: &str, serde_message: &str, top_level: bool) -> String {
    let expected: Vec<&str> = serde_message
        .split_once(", expected")
        .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let best = expected
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match best {
        Some((_, k)) => format!("unknown key `{field}` (did you mean `{k}`?)"),
        None if top_level && SYNAPSE_ONLY_KEYS.contains(&field) => format!(
            "unknown key `{field}`: a Synapse setting that homeport does not use; copy only \
             the keys listed in docs/configuration.md"
        ),
        None if top_level || expected.is_empty() => {
            format!(
                "unknown key `{field}` (the keys homeport reads are listed in docs/configuration.md)"
            )
        }
        None => format!(
            "unknown key `{field}`; the keys allowed here are {}",
            expected
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            let del = prev[j + 1] + 1;
            let ins = cur[j] + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Remove every ` at line N column M` (libyaml and serde_norway add them;
/// the position is reported separately).
fn strip_positions(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &after[digits..];
        match tail.strip_prefix(" column ") {
            Some(t) if digits > 0 => {
                let d2 = t.bytes().take_while(u8::is_ascii_digit).count();
                rest = &t[d2..];
            }
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// Key paths and locating them in the text
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path: `listeners[0].resources[0].names[1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn key(self, k: &str) -> Self {
        let mut v = self.0;
        v.push(Seg::Key(k.to_owned()));
        KeyPath(v)
    }
    fn index(self, i: usize) -> Self {
        let mut v = self.0;
        v.push(Seg::Index(i));
        KeyPath(v)
    }
    fn parent(&self) -> KeyPath {
        let mut v = self.0.clone();
        v.pop();
        KeyPath(v)
    }
    fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }
    fn from_tracked(p: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut v = Vec::new();
        for seg in p.iter() {
            match seg {
                Segment::Seq { index } => v.push(Seg::Index(*index)),
                Segment::Map { key } => v.push(Seg::Key(key.clone())),
                Segment::Enum { variant } => v.push(Seg::Key(variant.clone())),
                // A map key that failed to parse: the path stops at its map.
                Segment::Unknown => break,
            }
        }
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

const LOCATE_SENTINEL: &str = "\u{0}homeport-locate\u{0}";

/// The 1-based line and column of the key (or list item) at `path`, its
/// `occurrence`-th appearance (0 = first). Found by walking the document
/// with the same YAML parser and stopping there with an error, which
/// carries the position.
fn locate(text: &str, path: &KeyPath, occurrence: usize) -> Option<(usize, usize)> {
    if path.is_root() {
        return None;
    }
    let de = serde_norway::Deserializer::from_str(text);
    let mut seen = occurrence;
    match (Locate {
        path: &path.0,
        seen: &mut seen,
    })
    .deserialize(de)
    {
        Err(e) if e.to_string().contains(LOCATE_SENTINEL) => {
            e.location().map(|l| (l.line(), l.column()))
        }
        _ => None,
    }
}

/// [`locate`], falling back to the nearest enclosing key that exists.
fn locate_nearest(text: &str, path: &KeyPath, occurrence: usize) -> Option<(usize, usize)> {
    let mut p = path.clone();
    if let Some(pos) = locate(text, &p, occurrence) {
        return Some(pos);
    }
    while !p.is_root() {
        p = p.parent();
        if let Some(pos) = locate(text, &p, 0) {
            return Some(pos);
        }
    }
    None
}

struct Locate<'a, 'b> {
    path: &'a [Seg],
    /// Matches of the last segment still to skip.
    seen: &'b mut usize,
}

impl<'de> DeserializeSeed<'de> for Locate<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Ok(());
        };
        let Seg::Key(want) = first else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        loop {
            let seed = KeyMatch {
                want,
                stop_here: rest.is_empty(),
                seen: &mut *self.seen,
            };
            match map.next_key_seed(seed)? {
                None => return Ok(()),
                Some(true) => map.next_value_seed(Locate {
                    path: rest,
                    seen: &mut *self.seen,
                })?,
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Ok(());
        };
        let Seg::Index(want) = first else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mut i = 0;
        loop {
            let more = if i == *want {
                if rest.is_empty() {
                    seq.next_element_seed(Here)?
                } else {
                    seq.next_element_seed(Locate {
                        path: rest,
                        seen: &mut *self.seen,
                    })?
                }
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key: `Ok(true)` when it is the one wanted; an error (carrying the
/// key's position) when it is the wanted last segment.
struct KeyMatch<'a, 'b> {
    want: &'a str,
    stop_here: bool,
    seen: &'b mut usize,
}

impl<'de> DeserializeSeed<'de> for KeyMatch<'_, '_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyMatch<'_, '_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        if v != self.want {
            return Ok(false);
        }
        if !self.stop_here {
            return Ok(true);
        }
        if *self.seen == 0 {
            return Err(E::custom(LOCATE_SENTINEL));
        }
        *self.seen -= 1;
        Ok(false)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// Any value: stop with an error that carries its position.
struct Here;

impl<'de> DeserializeSeed<'de> for Here {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Here {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(LOCATE_SENTINEL))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(LOCATE_SENTINEL))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(LOCATE_SENTINEL))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(LOCATE_SENTINEL))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(LOCATE_SENTINEL))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(LOCATE_SENTINEL))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(LOCATE_SENTINEL))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(LOCATE_SENTINEL))
    }
}

// ---------------------------------------------------------------------------
// Scalars: parsed inside the visitor, so errors carry the value's position
// ---------------------------------------------------------------------------

/// A config scalar parsed from a string (and, for some, an integer).
trait Scalar {
    type Out;
    /// For "invalid type: ..., expected <this>".
    const EXPECTING: &'static str;
    fn from_str(s: &str) -> Result<Self::Out, String>;
    /// `None`: integers are not accepted.
    fn from_u64(_n: u64) -> Option<Result<Self::Out, String>> {
        None
    }
}

struct P<S: Scalar>(S::Out);

impl<'de, S: Scalar> Deserialize<'de> for P<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor::<S>(PhantomData)).map(P)
    }
}

struct ScalarVisitor<S>(PhantomData<S>);

impl<'de, S: Scalar> Visitor<'de> for ScalarVisitor<S> {
    type Value = S::Out;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(S::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<S::Out, E> {
        S::from_str(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<S::Out, E> {
        match S::from_u64(n) {
            Some(r) => r.map_err(E::custom),
            None => Err(E::invalid_type(de::Unexpected::Unsigned(n), &self)),
        }
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<S::Out, E> {
        match u64::try_from(n) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(n), &self)),
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<S::Out, E> {
        Err(E::custom(format_args!(
            "no value given (expected {})",
            S::EXPECTING
        )))
    }
}

fn one<'de, D: Deserializer<'de>, S: Scalar>(d: D) -> Result<S::Out, D::Error> {
    P::<S>::deserialize(d).map(|p| p.0)
}

fn opt<'de, D: Deserializer<'de>, S: Scalar>(d: D) -> Result<Option<S::Out>, D::Error> {
    Option::<P<S>>::deserialize(d).map(|o| o.map(|p| p.0))
}

fn many<'de, D: Deserializer<'de>, S: Scalar>(d: D) -> Result<Vec<S::Out>, D::Error> {
    Vec::<P<S>>::deserialize(d).map(|v| v.into_iter().map(|p| p.0).collect())
}

fn opt_many<'de, D: Deserializer<'de>, S: Scalar>(d: D) -> Result<Option<Vec<S::Out>>, D::Error> {
    Option::<Vec<P<S>>>::deserialize(d).map(|o| o.map(|v| v.into_iter().map(|p| p.0).collect()))
}

/// A `{key id: V}` map (Synapse's `old_signing_keys`, `verify_keys`).
struct KeyMapVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for KeyMapVisitor<V> {
    type Value = BTreeMap<KeyId, V>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of key ids (ed25519:...)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(id) = map.next_key::<P<KeyIdS>>()? {
            let v = map.next_value::<V>()?;
            let id = id.0;
            if out.contains_key(&id) {
                return Err(de::Error::custom(format_args!("key id {id} appears twice")));
            }
            out.insert(id, v);
        }
        Ok(out)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }
}

fn key_map<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
    d: D,
) -> Result<BTreeMap<KeyId, V>, D::Error> {
    d.deserialize_any(KeyMapVisitor::<V>(PhantomData))
}

/// `verify_keys`: a key map, where `null` means absent.
struct VerifyKeys(BTreeMap<KeyId, VerifyingKey>);

impl<'de> Deserialize<'de> for VerifyKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: BTreeMap<KeyId, P<PublicKeyS>> = key_map(d)?;
        Ok(VerifyKeys(m.into_iter().map(|(k, v)| (k, v.0)).collect()))
    }
}

fn opt_verify_keys<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<KeyId, VerifyingKey>>, D::Error> {
    Option::<VerifyKeys>::deserialize(d).map(|o| o.map(|v| v.0))
}

struct ServerNameS;
impl Scalar for ServerNameS {
    type Out = ServerName;
    const EXPECTING: &'static str = "a server name (host or host:port)";
    fn from_str(s: &str) -> Result<ServerName, String> {
        ServerName::parse(s).map_err(|e| format!("invalid server name {s:?}: {e}"))
    }
}

struct DomainS;
impl Scalar for DomainS {
    type Out = DnsName;
    const EXPECTING: &'static str = "a DNS name";
    fn from_str(s: &str) -> Result<DnsName, String> {
        if s.starts_with("*.") {
            return Err(format!(
                "{s:?} is a wildcard name, which needs the dns-01 challenge; homeport does \
                 http-01 and tls-alpn-01, so list the names one by one"
            ));
        }
        if s.contains(':') {
            return Err(format!(
                "{s:?} is not a DNS name: a certificate name has no port (and IP addresses \
                 are not supported)"
            ));
        }
        DnsName::parse(s).map_err(|e| format!("invalid DNS name {s:?}: {e}"))
    }
}

struct KeyIdS;
impl Scalar for KeyIdS {
    type Out = KeyId;
    const EXPECTING: &'static str = "a key id (ed25519:version)";
    fn from_str(s: &str) -> Result<KeyId, String> {
        let id = KeyId::parse(s).map_err(|e| e.to_string())?;
        if !id.is_ed25519() {
            return Err(format!("key id {s:?}: only ed25519 keys are supported"));
        }
        Ok(id)
    }
}

struct PublicKeyS;
impl Scalar for PublicKeyS {
    type Out = VerifyingKey;
    const EXPECTING: &'static str = "an Ed25519 public key in base64";
    fn from_str(s: &str) -> Result<VerifyingKey, String> {
        signing::verifying_key_from_base64(s.trim()).map_err(|e| format!("invalid {e}"))
    }
}

struct PathS;
impl Scalar for PathS {
    type Out = PathBuf;
    const EXPECTING: &'static str = "a file path";
    fn from_str(s: &str) -> Result<PathBuf, String> {
        if s.trim().is_empty() {
            return Err("empty path".to_owned());
        }
        Ok(PathBuf::from(s))
    }
}

struct PortS;
impl Scalar for PortS {
    type Out = u16;
    const EXPECTING: &'static str = "a port number (0-65535)";
    fn from_str(s: &str) -> Result<u16, String> {
        Err(format!("a port is a number, not the string {s:?}"))
    }
    fn from_u64(n: u64) -> Option<Result<u16, String>> {
        Some(u16::try_from(n).map_err(|_| format!("port {n} is out of range (0-65535)")))
    }
}

struct IpS;
impl Scalar for IpS {
    type Out = IpAddr;
    const EXPECTING: &'static str = "an IP address";
    fn from_str(s: &str) -> Result<IpAddr, String> {
        s.trim().parse().map_err(|_| {
            format!("{s:?} is not an IP address (write e.g. '::', '0.0.0.0' or '127.0.0.1')")
        })
    }
}

struct NameserverS;
impl Scalar for NameserverS {
    type Out = SocketAddr;
    const EXPECTING: &'static str = "a nameserver address (IP:PORT)";
    fn from_str(s: &str) -> Result<SocketAddr, String> {
        let t = s.trim();
        if let Ok(a) = t.parse::<SocketAddr>() {
            return Ok(a);
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, 53));
        }
        Err(format!(
            "{s:?} is not a nameserver address (write IP:PORT, e.g. 127.0.0.53:53 or \
             [2001:db8::53]:53)"
        ))
    }
}

struct RangeS;
impl Scalar for RangeS {
    type Out = IpNet;
    const EXPECTING: &'static str = "an IP range (e.g. 10.0.0.0/8)";
    fn from_str(s: &str) -> Result<IpNet, String> {
        parse_range(s).map_err(|e| e.to_string())
    }
}

struct DurationS;
impl Scalar for DurationS {
    type Out = Duration;
    const EXPECTING: &'static str = "a duration (e.g. 30s, 10m, 1d; a bare number is milliseconds)";
    fn from_str(s: &str) -> Result<Duration, String> {
        homeport_core::duration::parse_synapse(s).map_err(|e| e.to_string())
    }
    fn from_u64(n: u64) -> Option<Result<Duration, String>> {
        Some(Ok(Duration::from_millis(n)))
    }
}

struct DaysS;
impl Scalar for DaysS {
    type Out = Duration;
    const EXPECTING: &'static str = "a duration (e.g. 30d, 720h; a bare number is days)";
    fn from_str(s: &str) -> Result<Duration, String> {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            let n: u64 = t
                .parse()
                .map_err(|_| format!("duration {s:?} is too large"))?;
            return Self::from_u64(n).unwrap_or_else(|| Err(String::new()));
        }
        homeport_core::duration::parse_synapse(s).map_err(|e| e.to_string())
    }
    fn from_u64(n: u64) -> Option<Result<Duration, String>> {
        Some(
            n.checked_mul(86_400)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{n} days is too large")),
        )
    }
}

struct ResourceNameS;
impl Scalar for ResourceNameS {
    type Out = ResourceName;
    const EXPECTING: &'static str = "a resource name";
    fn from_str(s: &str) -> Result<ResourceName, String> {
        Ok(match s {
            "federation" => ResourceName::Federation,
            "keys" => ResourceName::Keys,
            "client" => ResourceName::Client,
            "tester" => ResourceName::Tester,
            "metrics" => ResourceName::Metrics,
            other if SYNAPSE_ONLY_RESOURCES.contains(&other) => {
                ResourceName::Other(other.to_owned())
            }
            other => {
                return Err(format!(
                    "unknown resource {other:?}: homeport serves `federation`, `keys`, \
                     `client`, `tester` and `metrics` (and accepts, without serving them, \
                     Synapse's {})",
                    SYNAPSE_ONLY_RESOURCES
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        })
    }
}

struct PatternS;
impl Scalar for PatternS {
    type Out = String;
    const EXPECTING: &'static str = "a server name pattern";
    fn from_str(s: &str) -> Result<String, String> {
        let ok = !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'.' | b'-' | b'*' | b'?' | b':' | b'[' | b']')
            });
        if ok {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "{s:?} is not a server name pattern (a name, `*` and `?` as wildcards, e.g. \
                 *.example.org)"
            ))
        }
    }
}

/// Checks an `http(s)://host[:port][/]` URL; returns it without a trailing
/// `/`.
fn http_url(s: &str, what: &str, https_only: bool) -> Result<String, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("{s:?} is not a valid {what}: {e}"))?;
    let scheme_ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => !https_only,
        _ => false,
    };
    if !scheme_ok {
        return Err(if https_only {
            format!("{s:?} is not a valid {what}: it must start with https://")
        } else {
            format!("{s:?} is not a valid {what}: it must start with http:// or https://")
        });
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{s:?} is not a valid {what}: it has no host"));
    };
    if authority.host().is_empty() {
        return Err(format!("{s:?} is not a valid {what}: it has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "{s:?} is not a valid {what}: credentials do not belong in the URL"
        ));
    }
    Ok(s.to_owned())
}

struct BackendS;
impl Scalar for BackendS {
    type Out = String;
    const EXPECTING: &'static str = "a backend URL (http://host:port)";
    fn from_str(s: &str) -> Result<String, String> {
        let url = http_url(s.trim(), "backend URL", false)?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{s:?} is not a valid backend URL: {e}"))?;
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        if !(path.is_empty() || path == "/") {
            return Err(format!(
                "{s:?} is not a valid backend URL: it must be scheme://host:port without a \
                 path (requests keep their own path), e.g. http://127.0.0.1:8008"
            ));
        }
        Ok(url.trim_end_matches('/').to_owned())
    }
}

struct WebhookS;
impl Scalar for WebhookS {
    type Out = String;
    const EXPECTING: &'static str = "a webhook URL";
    fn from_str(s: &str) -> Result<String, String> {
        http_url(s.trim(), "webhook URL", false)
    }
}

struct AcmeUrlS;
impl Scalar for AcmeUrlS {
    type Out = String;
    const EXPECTING: &'static str = "an ACME directory URL";
    fn from_str(s: &str) -> Result<String, String> {
        let lower = s.trim().to_ascii_lowercase();
        let host = lower
            .split("://")
            .nth(1)
            .and_then(|r| r.split(['/', ':']).next())
            .unwrap_or("");
        if lower.contains("acme-v01") || host == "acme-staging.api.letsencrypt.org" {
            return Err(format!(
                "{s:?} is an ACME v1 directory, and ACME v1 is gone: Let's Encrypt turned it \
                 off in 2021. homeport speaks ACME v2 (RFC 8555): use \
                 {LETS_ENCRYPT_DIRECTORY} (staging: {LETS_ENCRYPT_STAGING_DIRECTORY})"
            ));
        }
        http_url(s.trim(), "ACME directory URL", true)
    }
}

struct MailtoS;
impl Scalar for MailtoS {
    type Out = String;
    const EXPECTING: &'static str = "a mailto: URL";
    fn from_str(s: &str) -> Result<String, String> {
        let t = s.trim();
        let Some(addr) = t.strip_prefix("mailto:") else {
            return Err(if t.contains('@') && !t.contains(':') {
                format!("contact {s:?} must be a mailto: URL: write \"mailto:{t}\"")
            } else {
                format!("contact {s:?} must be a mailto: URL, e.g. \"mailto:admin@example.org\"")
            });
        };
        let valid = match addr.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !addr.contains([',', ' ', '?', '<', '>'])
            }
            None => false,
        };
        if valid {
            Ok(t.to_owned())
        } else {
            Err(format!(
                "contact {s:?} is not a mailto: URL with one e-mail address, e.g. \
                 \"mailto:admin@example.org\""
            ))
        }
    }
}

struct HeaderValueS;
impl Scalar for HeaderValueS {
    type Out = String;
    const EXPECTING: &'static str = "a header value";
    fn from_str(s: &str) -> Result<String, String> {
        if s.trim().is_empty() || http::HeaderValue::from_str(s).is_err() {
            return Err(format!(
                "{s:?} is not a valid Cache-Control value (e.g. max-age=86400)"
            ));
        }
        Ok(s.to_owned())
    }
}

struct LogLevelS;
impl Scalar for LogLevelS {
    type Out = String;
    const EXPECTING: &'static str = "a log level (e.g. info, debug)";
    fn from_str(s: &str) -> Result<String, String> {
        let t = s.trim();
        if t.is_empty() || t.contains(char::is_whitespace) {
            return Err(format!(
                "{s:?} is not a log level (trace, debug, info, warn, error, or directives \
                 like homeport_server=debug,info)"
            ));
        }
        Ok(t.to_owned())
    }
}

// ---------------------------------------------------------------------------
// database: Synapse's {name, args}
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum DbKey {
    Name,
    Args,
}

#[derive(Clone, Copy, Deserialize)]
enum DbName {
    #[serde(rename = "sqlite3")]
    Sqlite3,
    #[serde(rename = "psycopg2")]
    Psycopg2,
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DatabaseVisitor)
    }
}

struct DatabaseVisitor;

impl<'de> Visitor<'de> for DatabaseVisitor {
    type Value = Database;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping {name: sqlite3 | psycopg2, args: {...}}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Database, A::Error> {
        let mut name: Option<DbName> = None;
        let mut db: Option<Database> = None;
        // `args` before `name`: kept as YAML until the name is known.
        let mut early_args: Option<serde_norway::Value> = None;
        while let Some(key) = map.next_key::<DbKey>()? {
            match key {
                DbKey::Name => {
                    if name.is_some() {
                        return Err(de::Error::duplicate_field("name"));
                    }
                    name = Some(map.next_value()?);
                }
                DbKey::Args => {
                    if db.is_some() || early_args.is_some() {
                        return Err(de::Error::duplicate_field("args"));
                    }
                    match name {
                        Some(DbName::Sqlite3) => {
                            db = Some(Database::Sqlite(
                                map.next_value::<Option<SqliteArgs>>()?.unwrap_or_default(),
                            ));
                        }
                        Some(DbName::Psycopg2) => {
                            db = Some(Database::Postgres(map.next_value()?));
                        }
                        None => early_args = Some(map.next_value()?),
                    }
                }
            }
        }
        let Some(name) = name else {
            return Err(de::Error::missing_field("name"));
        };
        if let Some(db) = db {
            return Ok(db);
        }
        let from_value = |e: serde_norway::Error| de::Error::custom(format_args!("args: {e}"));
        match (name, early_args) {
            (DbName::Sqlite3, None) => Ok(Database::Sqlite(SqliteArgs::default())),
            (DbName::Sqlite3, Some(v)) => Option::<SqliteArgs>::deserialize(v)
                .map(|a| Database::Sqlite(a.unwrap_or_default()))
                .map_err(from_value),
            (DbName::Psycopg2, None) => Err(de::Error::missing_field("args")),
            (DbName::Psycopg2, Some(v)) => PostgresArgs::deserialize(v)
                .map(Database::Postgres)
                .map_err(from_value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_positions() {
        assert_eq!(
            strip_positions("a at line 2 column 1, while b at line 1 column 14"),
            "a, while b"
        );
        assert_eq!(strip_positions("at line x"), "at line x");
        assert_eq!(strip_positions("q at line 3"), "q at line 3");
    }

    #[test]
    fn locates_nested_keys() {
        let text = "a: 1\nb:\n  - x: 1\n  - x: 2\n    y: [p, q]\n";
        let p = KeyPath::default().key("b").index(1).key("y").index(1);
        assert_eq!(locate(text, &p, 0), Some((5, 12)));
        assert_eq!(
            locate(text, &KeyPath::default().key("b").index(1).key("x"), 0),
            Some((4, 5))
        );
        assert_eq!(locate(text, &KeyPath::default().key("c"), 0), None);
        assert_eq!(
            locate_nearest(text, &KeyPath::default().key("b").index(1).key("z"), 0),
            Some((4, 5))
        );
        assert_eq!(p.to_string(), "b[1].y[1]");
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(
            unknown_key_message(
                "bind_adresses",
                "unknown field `bind_adresses`, expected one of `port`, `bind_addresses`",
                false
            ),
            "unknown key `bind_adresses` (did you mean `bind_addresses`?)"
        );
    }
}
