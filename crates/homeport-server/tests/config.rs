#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `homeport serve` configuration: defaults, Synapse compatibility,
//! durations, the exact error for each kind of bad config, and `init`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use homeport_core::ServerName;
use homeport_server::config::{
    self, Challenge, ChannelBinding, Database, HostHeaderPolicy, ListenerKind, LogFormat,
    ResourceName, SslMode, parse,
};
use homeport_server::init::{InitError, init};

const SMALLEST: &str = "\
server_name: example.org
signing_key_path: example.org.signing.key
tls_certificate_path: cert.pem
tls_private_key_path: key.pem
listeners:
  - port: 8448
    tls: true
    resources:
      - names: [federation]
";

/// A valid config with `extra` appended at the top level.
fn with(extra: &str) -> String {
    format!("{SMALLEST}{extra}")
}

fn src() -> &'static Path {
    Path::new("/etc/homeport/homeport.yaml")
}

fn ok(text: &str) -> config::Config {
    match parse(text, src()) {
        Ok(c) => c,
        Err(e) => panic!("config should parse: {e}\n{text}"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn smallest_config_parses_with_documented_defaults() {
    let c = ok(SMALLEST);
    assert_eq!(c.source, src());
    assert_eq!(c.server_name, ServerName::parse("example.org").unwrap());
    assert_eq!(
        c.signing_key_path,
        Path::new("/etc/homeport/example.org.signing.key")
    );
    assert!(c.old_signing_keys.is_empty());
    assert_eq!(c.key_refresh_interval, secs(86_400));
    assert_eq!(
        c.tls_certificate_path.as_deref(),
        Some(Path::new("/etc/homeport/cert.pem"))
    );
    assert_eq!(
        c.tls_private_key_path.as_deref(),
        Some(Path::new("/etc/homeport/key.pem"))
    );

    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.port, 8448);
    assert_eq!(
        l.bind_addresses,
        vec!["::".parse::<IpAddr>().unwrap(), "0.0.0.0".parse().unwrap()]
    );
    assert_eq!(l.kind, ListenerKind::Http);
    assert!(l.tls);
    assert!(!l.x_forwarded);
    assert_eq!(l.resources.len(), 1);
    assert_eq!(l.resources[0].names, vec![ResourceName::Federation]);
    assert!(!l.resources[0].compress);
    assert!(l.serves(&ResourceName::Federation));

    assert!(c.federation_verify_certificates);
    assert_eq!(c.federation_custom_ca_list, None);
    assert!(c.federation_certificate_verification_whitelist.is_empty());
    let deny: Vec<String> = c.ip_range_blacklist.iter().map(|n| n.to_string()).collect();
    assert_eq!(deny, homeport_resolve::filter::DEFAULT_DENY);
    assert!(c.ip_range_whitelist.is_empty());
    assert!(c.trusted_key_servers.is_empty());
    let proxies: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(proxies, ["127.0.0.0/8", "::1/128"]);
    assert!(c.dns.nameservers.is_empty());

    assert_eq!(c.well_known.server, None);
    assert_eq!(c.well_known.client, None);
    assert_eq!(c.well_known.support, None);
    assert_eq!(c.well_known.cache_control, "max-age=86400");
    assert!(c.proxy.is_none());
    assert!(!c.has_backend());

    assert!(!c.notary.enabled);
    assert_eq!(c.notary.max_servers_per_request, 100);
    assert_eq!(c.notary.cache_for, None);
    assert!(!c.tester.enabled);
    assert_eq!(c.tester.cache_ttl, secs(300));
    assert_eq!(c.tester.deadline, secs(30));
    assert!(c.monitor.servers.is_empty());
    assert_eq!(c.monitor.interval, secs(600));
    assert_eq!(c.monitor.webhook, None);

    let a = &c.acme;
    assert!(!a.enabled);
    assert_eq!(a.url, "https://acme-v02.api.letsencrypt.org/directory");
    assert_eq!(a.url, config::LETS_ENCRYPT_DIRECTORY);
    assert_eq!(a.directory_ca_file, None);
    assert_eq!(a.domain.as_ref().map(|d| d.as_str()), Some("example.org"));
    assert!(a.domains.is_empty());
    assert!(a.contact.is_empty());
    assert_eq!(
        a.account_key_file,
        Path::new("/etc/homeport/acme_account.key")
    );
    assert_eq!(a.reprovision_threshold, secs(30 * 86_400));
    assert_eq!(a.check_interval, secs(86_400));
    assert_eq!(a.challenge, Challenge::Http01);
    assert_eq!(a.port, 80);
    assert_eq!(a.bind_addresses, l.bind_addresses);

    match &c.database {
        Database::Sqlite(args) => {
            assert_eq!(args.database, Path::new("/etc/homeport/homeport.db"));
        }
        other => panic!("default database is sqlite, got {other:?}"),
    }
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn synapse_listener_block_pastes_unchanged() {
    let c = ok("\
server_name: example.org
signing_key_path: /data/example.org.signing.key
tls_certificate_path: /data/example.org.tls.crt
tls_private_key_path: /data/example.org.tls.key
listeners:
  - port: 8448
    tls: true
    type: http
    x_forwarded: false
    bind_addresses: ['::', '0.0.0.0']
    resources:
      - names: [federation]
        compress: false
  - port: 8008
    tls: false
    bind_addresses: ['::1', '127.0.0.1']
    type: http
    x_forwarded: true
    resources:
      - names: [client, federation]
        compress: false
  - port: 9000
    type: metrics
    bind_addresses: ['127.0.0.1']
");
    assert_eq!(c.listeners.len(), 3);
    assert!(c.listeners[0].tls);
    assert_eq!(
        c.listeners[0].resources[0].names,
        [ResourceName::Federation]
    );
    assert!(c.listeners[1].x_forwarded);
    assert_eq!(
        c.listeners[1].resources[0].names,
        [ResourceName::Client, ResourceName::Federation]
    );
    // `type: metrics` means `resources: [{names: [metrics]}]`.
    assert_eq!(c.listeners[2].kind, ListenerKind::Metrics);
    assert_eq!(c.listeners[2].resources[0].names, [ResourceName::Metrics]);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn synapse_only_resources_load_with_a_warning() {
    let c = ok("\
server_name: example.org
signing_key_path: k
listeners:
  - port: 8008
    resources:
      - names: [client, webclient, media]
        compress: true
");
    assert_eq!(
        c.listeners[0].resources[0].names,
        [
            ResourceName::Client,
            ResourceName::Other("webclient".into()),
            ResourceName::Other("media".into())
        ]
    );
    let w = c.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        w[0],
        "listeners[0].resources[0].names[1]: `webclient` is a Synapse resource that homeport \
         does not serve; it is ignored"
    );
}

#[test]
fn durations_read_as_synapse_reads_them() {
    let c = ok(&with(
        "\
key_refresh_interval: 1d
tester:
  cache_ttl: \"5m\"
  deadline: 86400000
monitor:
  interval: '90000'
notary:
  cache_for: 2h
proxy:
  backend: http://127.0.0.1:8008
  timeout: 1500ms
acme:
  reprovision_threshold: 30
  check_interval: 1w
",
    ));
    assert_eq!(c.key_refresh_interval, secs(86_400));
    assert_eq!(c.tester.cache_ttl, secs(300));
    assert_eq!(c.tester.deadline, secs(86_400));
    assert_eq!(c.monitor.interval, secs(90));
    assert_eq!(c.notary.cache_for, Some(secs(7200)));
    assert_eq!(
        c.proxy.as_ref().unwrap().timeout,
        Duration::from_millis(1500)
    );
    // A bare integer is days here, as in Synapse 0.99.
    assert_eq!(c.acme.reprovision_threshold, secs(30 * 86_400));
    assert_eq!(c.acme.check_interval, secs(7 * 86_400));

    for (text, want) in [
        ("\"30\"", 30 * 86_400),
        ("720h", 30 * 86_400),
        ("7d", 7 * 86_400),
    ] {
        let c = ok(&with(&format!("acme:\n  reprovision_threshold: {text}\n")));
        assert_eq!(c.acme.reprovision_threshold, secs(want), "{text}");
    }
}

#[test]
fn every_section_parses() {
    let c = ok(&with(
        "\
old_signing_keys:
  \"ed25519:a_old\": {key: \"XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI\", expired_ts: 1700000000000}
federation_verify_certificates: false
federation_custom_ca_list: [ca/one.pem, /abs/two.pem]
federation_certificate_verification_whitelist: ['*.example.net', lan.test]
ip_range_blacklist: ['10.0.0.0/8', 192.168.1.7]
ip_range_whitelist: ['10.1.0.0/16']
trusted_key_servers:
  - server_name: matrix.org
    verify_keys:
      \"ed25519:auto\": \"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\"
  - server_name: notary.example.net
    accept_keys_insecurely: true
trusted_proxies: ['10.0.0.0/8']
dns:
  nameservers: ['127.0.0.53:53', '[2001:db8::53]:5353', 192.0.2.1]
well_known:
  server: matrix.example.org:443
  client: {\"m.homeserver\": {\"base_url\": \"https://matrix.example.org\"}}
  support: {contacts: [{matrix_id: \"@admin:example.org\", role: m.role.admin}]}
  cache_control: max-age=3600, public
proxy:
  backend: https://[::1]:8448/
  host_header: backend
  synapse_admin: true
notary:
  enabled: true
  max_servers_per_request: 10
tester:
  enabled: true
monitor:
  servers: [example.org, 'matrix.example.net:8448']
  webhook: https://hooks.example.org/x
acme:
  enabled: true
  url: https://127.0.0.1:14000/dir
  directory_ca_file: pebble.minica.pem
  domain: matrix.example.org
  domains: [example.org, other.example.org, MATRIX.example.org]
  contact: ['mailto:admin@example.org']
  account_key_file: /var/lib/homeport/acme.key
  challenge: tls-alpn-01
  port: 5002
  bind_addresses: ['127.0.0.1']
database:
  name: psycopg2
  args:
    user: homeport
    password: s3cret
    dbname: homeport
    host: db.internal
    cp_max: 20
    sslmode: verify-full
    sslrootcert: tls/db-ca.pem
    sslcert: /etc/homeport/db-client.crt
    sslkey: tls/db-client.key
    channel_binding: require
log:
  format: json
  level: homeport_server=debug,info
",
    ));
    let old = &c.old_signing_keys;
    assert_eq!(old.len(), 1);
    let (id, key) = old.iter().next().unwrap();
    assert_eq!(id.as_str(), "ed25519:a_old");
    assert_eq!(key.expired_ts, 1_700_000_000_000);
    assert_eq!(
        key.key_base64(),
        "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
    );
    assert!(!c.federation_verify_certificates);
    assert_eq!(
        c.federation_custom_ca_list,
        Some(vec![
            PathBuf::from("/etc/homeport/ca/one.pem"),
            PathBuf::from("/abs/two.pem")
        ])
    );
    assert_eq!(
        c.federation_certificate_verification_whitelist,
        ["*.example.net", "lan.test"]
    );
    let deny: Vec<String> = c.ip_range_blacklist.iter().map(|n| n.to_string()).collect();
    assert_eq!(deny, ["10.0.0.0/8", "192.168.1.7/32"]);
    assert_eq!(c.trusted_key_servers.len(), 2);
    assert_eq!(
        c.trusted_key_servers[0].verify_keys.as_ref().unwrap().len(),
        1
    );
    assert!(c.trusted_key_servers[1].verify_keys.is_none());
    assert_eq!(
        c.dns.nameservers,
        [
            "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:5353".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap()
        ]
    );
    assert_eq!(
        c.well_known.client.as_ref().unwrap()["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );
    assert_eq!(
        c.well_known.support.as_ref().unwrap()["contacts"][0]["role"],
        "m.role.admin"
    );
    assert_eq!(c.well_known.cache_control, "max-age=3600, public");
    let p = c.proxy.as_ref().unwrap();
    assert_eq!(p.backend, "https://[::1]:8448");
    assert_eq!(p.host_header, HostHeaderPolicy::Backend);
    assert!(p.synapse_admin);
    assert_eq!(p.timeout, secs(60));
    assert_eq!(c.monitor.servers.len(), 2);
    assert_eq!(c.acme.challenge, Challenge::TlsAlpn01);
    assert_eq!(
        c.acme.directory_ca_file.as_deref(),
        Some(Path::new("/etc/homeport/pebble.minica.pem"))
    );
    let names: Vec<&str> = c.acme.names().iter().map(|d| d.as_str()).collect();
    assert_eq!(
        names,
        ["matrix.example.org", "example.org", "other.example.org"]
    );
    match &c.database {
        Database::Postgres(pg) => {
            assert_eq!(pg.user, "homeport");
            assert_eq!(pg.host, "db.internal");
            assert_eq!(pg.port, 5432);
            assert_eq!((pg.cp_min, pg.cp_max), (5, 20));
            assert_eq!(pg.ssl_mode(), SslMode::VerifyFull);
            // Relative to the config file, like every other path.
            assert_eq!(
                pg.sslrootcert.as_deref(),
                Some(Path::new("/etc/homeport/tls/db-ca.pem"))
            );
            assert_eq!(
                pg.sslcert.as_deref(),
                Some(Path::new("/etc/homeport/db-client.crt"))
            );
            assert_eq!(
                pg.sslkey.as_deref(),
                Some(Path::new("/etc/homeport/tls/db-client.key"))
            );
            assert_eq!(pg.channel_binding, ChannelBinding::Require);
            assert!(!format!("{pg:?}").contains("s3cret"));
        }
        other => panic!("expected postgres, got {other:?}"),
    }
    assert_eq!(c.log.format, LogFormat::Json);
    // federation_verify_certificates: false, the :443 in well_known.server,
    // no TLS listener on 443 for tls-alpn-01.
    assert_eq!(c.warnings().len(), 3, "{:#?}", c.warnings());
}

#[test]
fn a_database_over_the_network_without_verify_full_warns() {
    let base = "server_name: example.org\nsigning_key_path: k\nlisteners:\n  - port: 8448\n    resources: [{names: [federation]}]\ndatabase:\n  name: psycopg2\n  args:\n    user: u\n    dbname: d\n";
    let warnings = |args: &str| {
        parse(&format!("{base}{args}"), Path::new("/etc/homeport/h.yaml"))
            .unwrap()
            .warnings()
            .into_iter()
            .filter(|w| w.starts_with("database.args.sslmode"))
            .collect::<Vec<_>>()
    };
    let w = warnings("    host: db.internal\n");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("is prefer and the database at db.internal is not on this machine")
            && w[0].contains("encrypted only if the server offers TLS")
            && w[0].contains("set sslmode: verify-full"),
        "{w:?}"
    );
    let w = warnings("    host: 10.0.0.5\n    sslmode: disable\n");
    assert!(w[0].contains("not encrypted"), "{w:?}");
    let w = warnings("    host: 10.0.0.5\n    sslmode: verify-ca\n    sslrootcert: ca.pem\n");
    assert!(w[0].contains("name is not checked"), "{w:?}");
    // On this machine, over a socket, or verified: nothing to say.
    for quiet in [
        "    host: localhost\n",
        "    host: 127.0.0.1\n",
        "    host: '::1'\n",
        "    host: /var/run/postgresql\n",
        "    host: db.internal\n    sslmode: verify-full\n    sslrootcert: system\n",
    ] {
        assert_eq!(warnings(quiet), Vec::<String>::new(), "{quiet}");
    }
}

#[test]
fn well_known_server_port_warns_about_the_host_header() {
    let c = ok(&with("well_known:\n  server: matrix.example.org:8448\n"));
    let w = c.warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("`Host: matrix.example.org:8448`"), "{}", w[0]);
    assert!(
        w[0].contains("matches only `matrix.example.org`"),
        "{}",
        w[0]
    );
    assert!(
        w[0].contains("docs/delegation.md, section \"A port in m.server\""),
        "{}",
        w[0]
    );
    assert!(
        ok(&with("well_known:\n  server: matrix.example.org\n"))
            .warnings()
            .is_empty()
    );
}

#[test]
fn tls_paths_may_be_omitted_without_tls_listeners_or_with_acme() {
    let plain = "\
server_name: example.org
signing_key_path: k
listeners:
  - port: 8008
    x_forwarded: true
    resources:
      - names: [client, federation]
";
    let c = ok(plain);
    assert_eq!(c.tls_certificate_path, None);

    let acme = "\
server_name: example.org:8448
signing_key_path: k
acme:
  enabled: true
  contact: ['mailto:ops@example.org']
listeners:
  - port: 8448
    tls: true
    resources:
      - names: [federation]
";
    let c = ok(acme);
    assert_eq!(c.acme.domain.as_ref().unwrap().as_str(), "example.org");
    assert_eq!(
        c.tls_certificate_path.as_deref(),
        Some(Path::new("/etc/homeport/example.org.tls.crt"))
    );
    assert_eq!(
        c.tls_private_key_path.as_deref(),
        Some(Path::new("/etc/homeport/example.org.tls.key"))
    );
}

#[test]
fn relative_paths_follow_the_config_file() {
    let c = parse(SMALLEST, Path::new("conf/homeport.yaml")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.signing_key_path, cwd.join("conf/example.org.signing.key"));
    assert_eq!(c.source, Path::new("conf/homeport.yaml"));
    let c = ok(&with(
        "database:\n  name: sqlite3\n  args:\n    database: ':memory:'\n",
    ));
    assert!(matches!(&c.database, Database::Sqlite(a) if a.database == Path::new(":memory:")));
    let c = ok(&with("database:\n  name: sqlite3\n"));
    assert!(
        matches!(&c.database, Database::Sqlite(a) if a.database == Path::new("/etc/homeport/homeport.db"))
    );
}

/// Each bad config and the exact message it produces.
#[test]
fn bad_configs_name_file_line_and_key() {
    let listener = "listeners:\n  - port: 8448\n    resources:\n      - names: [federation]\n";
    let head = "server_name: example.org\nsigning_key_path: k\n";
    let cases: Vec<(String, &str)> = vec![
        // Unknown top-level key.
        (
            with("bogus: 1\n"),
            "unknown key `bogus` (the keys homeport reads are listed in docs/configuration.md) \
             (at h.yaml:10:1, key bogus)",
        ),
        // A Synapse key that homeport does not read.
        (
            with("report_stats: false\n"),
            "unknown key `report_stats`: a Synapse setting that homeport does not use; copy \
             only the keys listed in docs/configuration.md (at h.yaml:10:1, key report_stats)",
        ),
        // Unknown key in a listener, with a suggestion.
        (
            format!("{head}listeners:\n  - port: 8448\n    bind_adresses: ['::']\n"),
            "unknown key `bind_adresses` (did you mean `bind_addresses`?) \
             (at h.yaml:5:5, key listeners[0].bind_adresses)",
        ),
        // Unknown key deeper down, without a close match.
        (
            format!(
                "{head}listeners:\n  - port: 8448\n    resources:\n      - names: [client]\n        gzip: true\n"
            ),
            "unknown key `gzip`; the keys allowed here are `names`, `compress` \
             (at h.yaml:7:9, key listeners[0].resources[0].gzip)",
        ),
        // Bad port.
        (
            format!(
                "{head}listeners:\n  - port: 70000\n    resources:\n      - names: [federation]\n"
            ),
            "port 70000 is out of range (0-65535) (at h.yaml:4:11, key listeners[0].port)",
        ),
        // Bad resource name.
        (
            format!(
                "{head}listeners:\n  - port: 8448\n    resources:\n      - names: [client, federaton]\n"
            ),
            "unknown resource \"federaton\": homeport serves `federation`, `keys`, `client`, \
             `tester` and `metrics` (and accepts, without serving them, Synapse's `media`, \
             `openid`, `replication`, `health`, `static`, `consent`, `webclient`) \
             (at h.yaml:6:25, key listeners[0].resources[0].names[1])",
        ),
        // Bad listener type.
        (
            format!("{head}listeners:\n  - port: 8448\n    type: manhole\n"),
            "unknown value `manhole`, expected `http` or `metrics` \
             (at h.yaml:5:11, key listeners[0].type)",
        ),
        // Bad duration.
        (
            with("key_refresh_interval: 10 parsecs\n"),
            "duration \"10 parsecs\" has unknown unit \"parsecs\" (use ms, s, m, h, d, w or y) \
             (at h.yaml:10:23, key key_refresh_interval)",
        ),
        (
            with("tester:\n  deadline: 1.5\n"),
            "invalid type: floating point `1.5`, expected a duration (e.g. 30s, 10m, 1d; a \
             bare number is milliseconds) (at h.yaml:11:13, key tester.deadline)",
        ),
        (
            with("tester:\n  deadline: 0s\n"),
            "must be longer than zero (at h.yaml:11:3, key tester.deadline)",
        ),
        // Bad server name, with its reason.
        (
            format!("server_name: ex_ample.org\nsigning_key_path: k\n{listener}"),
            "invalid server name \"ex_ample.org\": invalid character '_' in hostname at \
             position 2 (at h.yaml:1:14, key server_name)",
        ),
        (
            with("well_known:\n  server: 'matrix.example.org:99999'\n"),
            "invalid server name \"matrix.example.org:99999\": port 99999 is out of range \
             (1-65535) (at h.yaml:11:11, key well_known.server)",
        ),
        // Bad IP range.
        (
            with("ip_range_blacklist: ['10.0.0.0/8', '10.0.0.0/33']\n"),
            "\"10.0.0.0/33\" is not an IP range (expected e.g. 10.0.0.0/8 or fc00::/7) \
             (at h.yaml:10:36, key ip_range_blacklist[1])",
        ),
        // Bad bind address.
        (
            format!(
                "{head}listeners:\n  - port: 8448\n    bind_addresses: [localhost]\n    resources:\n      - names: [federation]\n"
            ),
            "\"localhost\" is not an IP address (write e.g. '::', '0.0.0.0' or '127.0.0.1') \
             (at h.yaml:5:22, key listeners[0].bind_addresses[0])",
        ),
        // ACME v1, as old Synapse configs have it.
        (
            with("acme:\n  enabled: true\n  url: https://acme-v01.api.letsencrypt.org/directory\n"),
            "\"https://acme-v01.api.letsencrypt.org/directory\" is an ACME v1 directory, and \
             ACME v1 is gone: Let's Encrypt turned it off in 2021. homeport speaks ACME v2 \
             (RFC 8555): use https://acme-v02.api.letsencrypt.org/directory (staging: \
             https://acme-staging-v02.api.letsencrypt.org/directory) (at h.yaml:12:8, key acme.url)",
        ),
        (
            with("acme:\n  url: https://acme-staging.api.letsencrypt.org/directory\n"),
            "\"https://acme-staging.api.letsencrypt.org/directory\" is an ACME v1 directory, and \
             ACME v1 is gone: Let's Encrypt turned it off in 2021. homeport speaks ACME v2 \
             (RFC 8555): use https://acme-v02.api.letsencrypt.org/directory (staging: \
             https://acme-staging-v02.api.letsencrypt.org/directory) (at h.yaml:11:8, key acme.url)",
        ),
        // A TLS listener without certificates and without ACME.
        (
            format!(
                "{head}listeners:\n  - port: 8448\n    tls: true\n    resources:\n      - names: [federation]\n"
            ),
            "the listener on port 8448 has tls: true but tls_certificate_path and \
             tls_private_key_path are not set; set both, or enable acme to obtain a \
             certificate (at h.yaml:5:5, key listeners[0].tls)",
        ),
        (
            format!("{head}tls_certificate_path: c.pem\n{listener}"),
            "tls_certificate_path is set but tls_private_key_path is not; set both \
             (at h.yaml:3:1, key tls_certificate_path)",
        ),
        // Bad proxy backend URL.
        (
            with("proxy:\n  backend: localhost:8008\n"),
            "\"localhost:8008\" is not a valid backend URL: it must start with http:// or \
             https:// (at h.yaml:11:12, key proxy.backend)",
        ),
        (
            with("proxy:\n  backend: http://localhost:8008/synapse\n"),
            "\"http://localhost:8008/synapse\" is not a valid backend URL: it must be \
             scheme://host:port without a path (requests keep their own path), e.g. \
             http://127.0.0.1:8008 (at h.yaml:11:12, key proxy.backend)",
        ),
        (
            with("proxy:\n  host_header: backend\n"),
            "missing key `backend` (at h.yaml:11:3, key proxy.backend)",
        ),
        // Bad contact.
        (
            with("acme:\n  contact: [admin@example.org]\n"),
            "contact \"admin@example.org\" must be a mailto: URL: write \
             \"mailto:admin@example.org\" (at h.yaml:11:13, key acme.contact[0])",
        ),
        (
            with("acme:\n  contact: ['mailto:a@example.org,b@example.org']\n"),
            "contact \"mailto:a@example.org,b@example.org\" is not a mailto: URL with one \
             e-mail address, e.g. \"mailto:admin@example.org\" (at h.yaml:11:13, key acme.contact[0])",
        ),
        // Database with an unknown name, and unknown args.
        (
            with("database:\n  name: mysql\n"),
            "unknown value `mysql`, expected `sqlite3` or `psycopg2` \
             (at h.yaml:11:9, key database.name)",
        ),
        (
            with(
                "database:\n  name: psycopg2\n  args:\n    user: u\n    dbname: d\n    sslcrl: x.pem\n",
            ),
            "unknown key `sslcrl` (did you mean `sslcert`?) (at h.yaml:15:5, key database.args.sslcrl)",
        ),
        (
            with(
                "database:\n  name: psycopg2\n  args:\n    user: u\n    dbname: d\n    sslmode: verify\n",
            ),
            "unknown value `verify`, expected one of `disable`, `allow`, `prefer`, `require`, \
             `verify-ca`, `verify-full` (at h.yaml:15:14, key database.args.sslmode)",
        ),
        (
            with(
                "database:\n  name: psycopg2\n  args:\n    user: u\n    dbname: d\n    sslmode: verify-full\n",
            ),
            "sslmode verify-full needs sslrootcert: the CA file (PEM) that signed the server's \
             certificate, or `system` (at h.yaml:15:5, key database.args.sslmode)",
        ),
        (
            with(
                "database:\n  name: psycopg2\n  args:\n    user: u\n    dbname: d\n    sslmode: require\n    sslrootcert: system\n",
            ),
            "sslrootcert: system needs sslmode verify-full (the system's roots vouch for names, \
             so any weaker mode would accept a certificate anyone can get), not require \
             (at h.yaml:16:5, key database.args.sslrootcert)",
        ),
        (
            with(
                "database:\n  name: psycopg2\n  args:\n    user: u\n    dbname: d\n    sslcert: c.pem\n",
            ),
            "sslcert needs sslkey (its private key, PEM) (at h.yaml:15:5, key database.args.sslcert)",
        ),
        (
            with(
                "database:\n  name: psycopg2\n  args:\n    user: u\n    dbname: d\n    host: /run/postgresql\n    channel_binding: require\n",
            ),
            "channel_binding: require needs TLS to bind to, and a Unix socket (host is a path) \
             never uses TLS (at h.yaml:16:5, key database.args.channel_binding)",
        ),
        (
            with("database:\n  args:\n    user: u\n    dbnam: d\n  name: psycopg2\n"),
            "unknown key `dbnam` (did you mean `dbname`?) (at h.yaml:13:5, key database.args.dbnam)",
        ),
        // Structure.
        (
            format!("server_name: example.org\n{listener}"),
            "missing key `signing_key_path` (at h.yaml:1:1, key signing_key_path)",
        ),
        (
            format!("{head}listeners: []\n"),
            "at least one listener is needed, e.g. `- port: 8448` with `tls: true` and \
             `resources: [{names: [federation]}]` (at h.yaml:3:1, key listeners)",
        ),
        (
            format!("{head}server_name: example.com\n{listener}"),
            "key `server_name` appears twice (at h.yaml:3:1, key server_name)",
        ),
        (
            format!(
                "{head}listeners:\n  - port: 8448\n    resources:\n      - names: [federation]\n  - port: 8448\n    bind_addresses: ['0.0.0.0']\n    resources:\n      - names: [client]\n"
            ),
            "port 8448 on 0.0.0.0 is already used by listeners[0] (at h.yaml:7:5, key listeners[1].port)",
        ),
        (
            format!("server_name: example.org\nsigning_key_path:\n{listener}"),
            "no value given (expected a file path) (at h.yaml:2:18, key signing_key_path)",
        ),
        (
            format!("{head}listeners:\n\t- port: 1\n"),
            "found character that cannot start any token, while scanning for the next token \
             (a tab: YAML indents with spaces only) (at h.yaml:4:1, key listeners)",
        ),
        (
            String::new(),
            "the config file is empty; the smallest config sets server_name, signing_key_path, tls_certificate_path, tls_private_key_path and one listener (at h.yaml)",
        ),
        (
            "- server_name: example.org\n".to_owned(),
            "the config must be a YAML mapping (server_name: ..., listeners: ...), found \
             sequence (at h.yaml:1:1)",
        ),
        // Keys.
        (
            with("old_signing_keys:\n  'rsa:x': {key: abc, expired_ts: 1}\n"),
            "key id \"rsa:x\": only ed25519 keys are supported (at h.yaml:11:3, key old_signing_keys.rsa:x)",
        ),
        (
            with("old_signing_keys:\n  'ed25519:x': {key: abc, expired_ts: 1}\n"),
            "invalid public key: decodes to 2 bytes, expected 32 \
             (at h.yaml:11:22, key old_signing_keys.ed25519:x.key)",
        ),
        (
            with("acme:\n  domain: '*.example.org'\n"),
            "\"*.example.org\" is a wildcard name, which needs the dns-01 challenge; homeport \
             does http-01 and tls-alpn-01, so list the names one by one \
             (at h.yaml:11:11, key acme.domain)",
        ),
        (
            format!(
                "server_name: 192.0.2.1\nsigning_key_path: k\nacme:\n  enabled: true\n{listener}"
            ),
            "acme.domain defaults to the host of server_name, but 192.0.2.1 is an IP address; \
             set acme.domain to the DNS name the certificate is for (at h.yaml:4:3, key acme.enabled)",
        ),
        (
            with("federation_custom_ca_list: []\n"),
            "an empty list would trust no certificate at all; remove the key to use the \
             system store (at h.yaml:10:1, key federation_custom_ca_list)",
        ),
        (
            with("well_known:\n  client: [a]\n"),
            "invalid type: sequence, expected a map (at h.yaml:11:11, key well_known.client)",
        ),
    ];
    let mut failures = Vec::new();
    for (text, want) in &cases {
        match parse(text, Path::new("h.yaml")) {
            Ok(_) => failures.push(format!("accepted:\n{text}")),
            Err(e) => {
                let got = e.to_string();
                if got != *want {
                    failures.push(format!("config:\n{text}\nwant: {want}\ngot:  {got}\n"));
                }
                assert_eq!(e.file, Path::new("h.yaml"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_fields_are_separate() {
    let e = parse(
        "server_name: example.org\nsigning_key_path: k\nlisteners:\n  - port: 8448\n    resources:\n      - names: [federation, nope]\n",
        Path::new("/x/h.yaml"),
    )
    .unwrap_err();
    assert_eq!(e.file, Path::new("/x/h.yaml"));
    assert_eq!(e.line, Some(6));
    assert_eq!(e.column, Some(29));
    assert_eq!(e.key, "listeners[0].resources[0].names[1]");
    assert!(
        e.message.starts_with("unknown resource \"nope\""),
        "{}",
        e.message
    );
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homeport.yaml");
    std::fs::write(&path, SMALLEST).unwrap();
    let c = config::load(&path).unwrap();
    assert_eq!(
        c.signing_key_path,
        dir.path().join("example.org.signing.key")
    );

    let missing = dir.path().join("nope.yaml");
    let e = config::load(&missing).unwrap_err();
    assert_eq!(e.file, missing);
    assert_eq!(e.line, None);
    assert!(e.message.starts_with("cannot read "), "{e}");
    assert!(std::error::Error::source(&e).is_some());

    let big = dir.path().join("big.yaml");
    let mut text = SMALLEST.to_owned();
    text.push_str(&"#".repeat(config::MAX_CONFIG_BYTES as usize));
    std::fs::write(&big, text).unwrap();
    let e = config::load(&big).unwrap_err();
    assert!(e.message.contains("is larger than 1048576 bytes"), "{e}");
}

#[test]
fn signing_keys_reads_the_synapse_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homeport.yaml");
    std::fs::write(&path, SMALLEST).unwrap();
    let c = config::load(&path).unwrap();
    let e = c.signing_keys().unwrap_err();
    assert_eq!(e.key, "signing_key_path");
    std::fs::write(
        dir.path().join("example.org.signing.key"),
        "ed25519 a_abcd YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
    )
    .unwrap();
    let keys = c.signing_keys().unwrap();
    assert_eq!(keys[0].id().as_str(), "ed25519:a_abcd");
}

#[test]
fn init_writes_a_config_that_loads_and_a_synapse_key() {
    let dir = tempfile::tempdir().unwrap();
    let name = ServerName::parse("example.org").unwrap();
    let report = init(dir.path(), &name).unwrap();
    assert_eq!(report.config, dir.path().join("homeport.yaml"));
    assert_eq!(
        report.signing_key,
        dir.path().join("example.org.signing.key")
    );
    assert_eq!(
        report.written(),
        [report.signing_key.as_path(), report.config.as_path()]
    );
    assert!(report.key_id.as_str().starts_with("ed25519:a_"));

    let c = config::load(&report.config).unwrap();
    assert_eq!(c.server_name, name);
    assert_eq!(c.signing_key_path, report.signing_key);
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].port, 8448);
    assert!(c.listeners[0].tls);
    assert_eq!(
        c.listeners[0].resources[0].names,
        [ResourceName::Federation]
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());

    let text = std::fs::read_to_string(&report.signing_key).unwrap();
    let keys = homeport_core::signing::parse_key_file(&text).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id(), &report.key_id);
    assert_eq!(c.signing_keys().unwrap()[0].id(), &report.key_id);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&report.signing_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Every section is present in the written file.
    let yaml = std::fs::read_to_string(&report.config).unwrap();
    for section in [
        "server_name:",
        "signing_key_path:",
        "old_signing_keys:",
        "key_refresh_interval:",
        "tls_certificate_path:",
        "tls_private_key_path:",
        "listeners:",
        "federation_verify_certificates:",
        "federation_custom_ca_list:",
        "federation_certificate_verification_whitelist:",
        "ip_range_blacklist:",
        "ip_range_whitelist:",
        "trusted_key_servers:",
        "trusted_proxies:",
        "dns:",
        "well_known:",
        "proxy:",
        "notary:",
        "tester:",
        "monitor:",
        "acme:",
        "database:",
        "log:",
    ] {
        assert!(yaml.contains(section), "{section} missing");
    }
}

#[test]
fn init_works_for_names_with_ports_and_ip_literals() {
    for n in ["example.org:8448", "[::1]:8448", "192.0.2.1"] {
        let dir = tempfile::tempdir().unwrap();
        let name = ServerName::parse(n).unwrap();
        let report = init(dir.path(), &name).unwrap();
        let c = config::load(&report.config).unwrap();
        assert_eq!(c.server_name.as_str(), n);
        assert_eq!(
            report.signing_key,
            dir.path().join(format!("{n}.signing.key"))
        );
    }
}

#[test]
fn init_refuses_to_overwrite_and_writes_nothing() {
    let name = ServerName::parse("example.org").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("homeport.yaml");
    std::fs::write(&config_path, "mine\n").unwrap();
    match init(dir.path(), &name) {
        Err(InitError::Exists(p)) => assert_eq!(p, config_path),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), "mine\n");
    assert!(!dir.path().join("example.org.signing.key").exists());

    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("example.org.signing.key");
    std::fs::write(
        &key_path,
        "ed25519 a_keep YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n",
    )
    .unwrap();
    let err = init(dir.path(), &name).unwrap_err();
    assert!(
        matches!(&err, InitError::Exists(p) if *p == key_path),
        "{err:?}"
    );
    assert!(err.to_string().contains("never overwrites"), "{err}");
    assert!(!dir.path().join("homeport.yaml").exists());
    assert!(
        std::fs::read_to_string(&key_path)
            .unwrap()
            .contains("a_keep")
    );
}

#[test]
fn key_refresh_interval_over_seven_days_warns() {
    let c = ok(&with("key_refresh_interval: 30d\n"));
    assert_eq!(
        c.warnings(),
        [
            "key_refresh_interval is 30d: servers treat a key document as valid for at most 7 \
          days (room versions 5 and later), so anything longer only delays key rotation"
        ]
    );
    assert!(
        ok(&with("key_refresh_interval: 7d\n"))
            .warnings()
            .is_empty()
    );
}

#[test]
fn trusted_key_server_without_verify_keys_warns() {
    let c = ok(&with(
        "trusted_key_servers:\n  - server_name: notary.example.net\n    verify_keys: null\n",
    ));
    assert!(c.trusted_key_servers[0].verify_keys.is_none());
    assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    let e = parse(
        &with(
            "federation_verify_certificates: false\ntrusted_key_servers:\n  - server_name: notary.example.net\n",
        ),
        Path::new("h.yaml"),
    )
    .unwrap_err();
    assert_eq!(e.key, "trusted_key_servers[0]");
    assert_eq!(e.line, Some(12));
}

#[test]
fn dns_and_address_filter_come_from_the_config() {
    let c = ok(&with(
        "dns:\n  nameservers: ['127.0.0.53:5353']\nip_range_whitelist: ['127.0.0.2']\n",
    ));
    assert_eq!(
        c.dns_config().nameservers,
        ["127.0.0.53:5353".parse::<SocketAddr>().unwrap()]
    );
    let f = c.address_filter();
    assert!(!f.permits("127.0.0.1".parse().unwrap()));
    assert!(f.permits("127.0.0.2".parse().unwrap()));
    assert!(!f.permits("::ffff:10.0.0.1".parse().unwrap()));
    assert!(f.permits("203.0.114.1".parse().unwrap()));
}
