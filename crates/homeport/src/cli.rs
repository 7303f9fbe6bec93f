//! Command-line definitions (clap derive). Keep in step with the CLI
//! section of DESIGN.md: users script against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Matrix federation discovery, trust and keys, explained.
///
/// homeport finds a Matrix server exactly as federating servers do
/// (.well-known, SRV, port 8448), checks its TLS certificate and signing
/// keys, and tells you what to fix.
#[derive(Debug, Parser)]
#[command(name = "homeport", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command that reaches out to the network.
#[derive(Debug, Clone, Args)]
pub struct NetOpts {
    /// Ask this nameserver (IP:PORT) instead of the system's; repeatable.
    #[arg(long = "dns", value_name = "IP:PORT")]
    pub dns: Vec<SocketAddr>,
    /// Trust this PEM CA file in addition to the system store; repeatable.
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_file: Vec<PathBuf>,
    /// Trust only the --ca-file certificates, not the system store.
    #[arg(long)]
    pub no_system_roots: bool,
    /// Bound on the whole command (500ms, 10s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Lab only: fetch .well-known on this port instead of 443.
    #[arg(long, value_name = "PORT", hide = true)]
    pub well_known_port: Option<u16>,
    /// Lab only: use this port instead of 8448 where the spec says 8448.
    #[arg(long, value_name = "PORT", hide = true)]
    pub default_port: Option<u16>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    homeport_core::duration::parse_with_unit(s).map_err(|e| e.to_string())
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    Human,
    /// The JSON contract.
    Json,
    /// matrix-federation-tester's /api/report schema (check only).
    FederationTester,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve a server name exactly as federating servers do.
    ///
    /// Follows the Server-Server API's steps: IP literal (1), explicit port
    /// (2), `.well-known/matrix/server` (3.1-3.5), `_matrix-fed._tcp` then
    /// `_matrix._tcp` SRV (4, 5), port 8448 (6). Prints the trace (what was
    /// asked, what came back, which rule decided) and the result: the
    /// addresses to connect to, the Host header, the certificate name and
    /// the SNI. Exit status 0 resolved, 1 not resolvable, 2 invalid name.
    #[command(
        after_help = "Examples:\n  homeport resolve matrix.org\n  homeport resolve example.org --json\n  homeport resolve example.test --dns 127.0.0.53:53 --ca-file test-ca.crt"
    )]
    Resolve {
        /// The server name (`example.org`, `example.org:8448`, `[::1]`).
        name: String,
        /// Print the JSON object (same as --format json).
        #[arg(long)]
        json: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        #[command(flatten)]
        net: NetOpts,
    },

    /// Run the federation front: TLS with live reload, .well-known
    /// delegation, the key server, the notary and the proxy to the
    /// homeserver.
    ///
    /// Reads FILE (default ./homeport.yaml; see docs/configuration.md).
    /// SIGHUP reloads the certificate and the signing key file (a bad file
    /// keeps the current one and logs why); the certificate is also reloaded
    /// when its files change. SIGTERM drains in-flight requests and exits 0.
    /// With --check-config, validates the configuration, connects to the
    /// store without changing it (PostgreSQL: reachable, credentials, not a
    /// homeserver's database, schema version), prints `config OK` (the store
    /// line and warnings on stderr) and exits; a bad config exits 2 with the
    /// file, line and key, an unreachable store exits 1.
    #[command(
        after_help = "Examples:\n  homeport init --server-name example.org && homeport serve --check-config\n  homeport serve --config /etc/homeport/homeport.yaml\n  kill -HUP $(pidof homeport)   # reload certificates and keys"
    )]
    Serve {
        /// The configuration file.
        #[arg(
            long,
            short = 'c',
            value_name = "FILE",
            default_value = "homeport.yaml"
        )]
        config: PathBuf,
        /// Validate the configuration and exit.
        #[arg(long)]
        check_config: bool,
    },

    /// Automatic certificates (ACME v2): show their state, or renew now.
    ///
    /// Reads the `acme:` section of FILE (default ./homeport.yaml; see
    /// docs/acme.md). `status` prints the certificate's names and expiry,
    /// when renewal is due, the last attempt and the last error (kept in
    /// `<account_key_file>.state.json` by `homeport serve`, or in the
    /// database when FILE names PostgreSQL). `renew` orders a certificate
    /// now if one is due, or even if not with --force; when `homeport
    /// serve` runs with the same config on this machine (or, with
    /// PostgreSQL, any instance sharing the database), the request is handed
    /// to it (it holds the challenge ports) and the command waits for the
    /// result, otherwise the order runs in this process. Exit status: status 0 when a valid certificate is on disk
    /// and the last attempt did not fail, else 1; renew 0 when renewed or
    /// not due, 1 when the order failed; 2 for a bad config or acme not
    /// enabled.
    #[command(
        after_help = "Examples:\n  homeport acme status --config /etc/homeport/homeport.yaml\n  homeport acme renew --force"
    )]
    Acme {
        #[command(subcommand)]
        action: AcmeAction,
    },

    /// homeport's store: move it from SQLite to PostgreSQL, check it.
    ///
    /// `migrate` copies every fetched key response and every cached value
    /// (tester reports, ACME account, certificate and state) from a SQLite
    /// file into the database a config names, in one transaction: all or
    /// nothing. Rows already in the target that are valid for longer are
    /// kept; running it twice is harmless. Stop the instance that writes the
    /// SQLite file first (or accept that what it writes afterwards stays
    /// behind). `check` opens the store a config names (migrating its schema
    /// if needed), runs its integrity check and prints what it holds. See
    /// docs/scaling.md. Exit status: 0 done, 1 the store failed, 2 bad
    /// arguments or config.
    #[command(
        after_help = "Examples:\n  homeport store migrate --from sqlite:/var/lib/homeport/homeport.db --to /etc/homeport/homeport.yaml\n  homeport store check --config /etc/homeport/homeport.yaml"
    )]
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },

    /// Write a commented homeport.yaml and a new signing key.
    ///
    /// Writes DIR/homeport.yaml and DIR/NAME.signing.key (Synapse format,
    /// mode 0600). Never overwrites: if either exists, nothing is written and
    /// the exit status is 2. To front an existing Synapse, point
    /// signing_key_path at Synapse's own key file instead.
    #[command(
        after_help = "Example:\n  homeport init --server-name example.org --dir /etc/homeport"
    )]
    Init {
        /// The server name to configure.
        #[arg(long, value_name = "NAME")]
        server_name: String,
        /// Where to write (created if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },

    /// Run the offline lab: every discovery step and every common mistake,
    /// each served on 127.0.0.x and checked.
    ///
    /// Starts an in-process DNS server and homeport-served domains signed by
    /// a throwaway CA: one per discovery step (1, 2, 3.1-3.5, 4, 5, 6) and
    /// one per common mistake (a port in m.server behind a proxy that only
    /// matches the bare name, a certificate for the SRV target, a
    /// self-signed certificate, an expired key, keys for another server, a
    /// .well-known redirect loop, an oversized .well-known, IPv4/IPv6 split
    /// brain, only the deprecated _matrix._tcp record, an SRV record to a
    /// CNAME). Runs `check` on each and prints scenario, what is wrong,
    /// homeport's verdict and the first fix. Exit 0 only when every verdict
    /// matches the scenario's known truth. No root needed: the lab serves
    /// .well-known on port 18443 and uses 18448 where the spec says 8448.
    #[command(
        after_help = "Examples:\n  homeport lab\n  homeport lab --json\n  homeport lab --serve   # keep it running for other tools; prints dns=IP:PORT ca=PATH and the names"
    )]
    Lab {
        /// Print `[{"scenario", "expected", "found", "ok"}]`.
        #[arg(long)]
        json: bool,
        /// Keep the lab running until SIGTERM (prints dns=, ca= and the names).
        #[arg(long)]
        serve: bool,
        /// Bound on each check.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },

    /// Test a server's federation: what every peer will do, and what to fix.
    ///
    /// Resolves the name as federating servers do (with the trace), then for
    /// every address of every target, IPv4 and IPv6 separately: TCP connect,
    /// TLS version, cipher and ALPN, the certificate chain as sent and
    /// checked against the TLS name (and which name it is valid for when it
    /// is not), the key server, the version endpoint, and the explicit-port
    /// Host probe that catches reverse proxies rejecting `Host: name:port`.
    /// Also fetches .well-known from every address of the name (split
    /// brain), /.well-known/matrix/client (and its base_url) and
    /// /.well-known/matrix/support. Each finding says the rule and the fix.
    /// When --timeout runs out, the report has what was learnt until then,
    /// the finding check_timed_out and what was still pending. Exit 0 when
    /// no finding is an error, 1 otherwise, 2 for invalid input.
    #[command(
        after_help = "Examples:\n  homeport check example.org\n  homeport check example.org --json\n  homeport check example.org --format federation-tester\n  homeport check example.org --signing-key me.signing.key --origin me.example --notary matrix.org\n\nFinding ids are documented in docs/report.md."
    )]
    Check {
        /// The server name.
        name: String,
        /// Print JSON (same as --format json).
        #[arg(long)]
        json: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Make an authenticated probe signed with this key file...
        #[arg(long, value_name = "FILE", requires = "origin")]
        signing_key: Option<PathBuf>,
        /// ...as this server name.
        #[arg(long, value_name = "NAME", requires = "signing_key")]
        origin: Option<String>,
        /// Cross-check the keys with this notary.
        #[arg(long, value_name = "NAME")]
        notary: Option<String>,
        /// A closed federation on a private network: do not report private
        /// addresses (no `address_not_public` finding).
        #[arg(long)]
        private: bool,
        #[command(flatten)]
        net: NetOpts,
    },

    /// Fetch a server's signing keys and check them.
    ///
    /// Fetches `/_matrix/key/v2/server` (discovering the server as
    /// federating servers do) and checks that `server_name` matches, that at
    /// least one self-signature by a key in the response's own `verify_keys`
    /// verifies, and that `valid_until_ts` is in the future. Shows each key's
    /// effective validity: min(valid_until_ts, fetch time + 7 days). With
    /// --notary, asks that notary instead (`POST /_matrix/key/v2/query`) and
    /// also checks the notary's signature, with the notary's own keys fetched
    /// and checked directly first. Exit 0 when at least one key passes every
    /// check, 1 otherwise, 2 for invalid input.
    #[command(
        after_help = "Examples:\n  homeport keys matrix.org\n  homeport keys example.org --notary matrix.org --json"
    )]
    Keys {
        /// The server whose keys to fetch.
        name: String,
        /// Ask this notary (key server) instead of the server itself.
        #[arg(long, value_name = "NOTARY")]
        notary: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        net: NetOpts,
    },

    /// Send a signed federation request and print the response.
    ///
    /// Discovers NAME, connects with the right SNI and Host header, signs the
    /// request with X-Matrix (origin ORIGIN, destination NAME, one header per
    /// key in FILE) and prints status, headers and body. Exit 0 for a 2xx
    /// response, 1 for any other response or a transport failure, 2 for bad
    /// input.
    #[command(
        after_help = "Examples:\n  homeport request matrix.org /_matrix/federation/v1/version --signing-key my.signing.key --origin example.org\n  homeport request example.org /_matrix/federation/v1/query/profile?user_id=@a:example.org --signing-key k --origin me.example"
    )]
    Request {
        /// The destination server name.
        name: String,
        /// Path and query, exactly as sent (`/_matrix/federation/v1/version`).
        path: String,
        /// HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// JSON body.
        #[arg(long, value_name = "JSON")]
        data: Option<String>,
        /// Synapse-format signing key file of the origin.
        #[arg(long, value_name = "FILE")]
        signing_key: PathBuf,
        /// Our server name (X-Matrix origin).
        #[arg(long, value_name = "NAME")]
        origin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        net: NetOpts,
    },

    /// Generate an Ed25519 signing key in Synapse's file format.
    ///
    /// Writes one line, `ed25519 <version> <seed>`, to FILE (never
    /// overwriting an existing file) or to stdout. The key id and public key
    /// are printed on stderr.
    #[command(
        after_help = "Examples:\n  homeport keygen -o example.org.signing.key\n  homeport keygen --version a_1234 > key"
    )]
    Keygen {
        /// Key version (the part after `ed25519:`); default `a_` plus four
        /// random alphanumerics, as Synapse makes.
        #[arg(long, value_name = "V")]
        version: Option<String>,
        /// Write to FILE instead of stdout; refuses to overwrite.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },

    /// Print a JSON document as Matrix canonical JSON (plus one newline).
    ///
    /// Keys are sorted by code point, whitespace removed, only `"`, `\` and
    /// control characters escaped. By default integral floats (`-0`, `1e10`,
    /// `2.0`) are written as integers, as in the spec's example; `--strict`
    /// rejects every float, as room versions 6 and later require. A fraction
    /// or an integer outside ±(2^53−1) is rejected in both modes, and so are
    /// duplicate keys.
    #[command(
        after_help = "Examples:\n  echo '{\"b\":1,\"a\":-0}' | homeport canonical-json\n  homeport canonical-json --strict event.json"
    )]
    CanonicalJson {
        /// Reject all floats, including -0 and 1e10.
        #[arg(long)]
        strict: bool,
        /// Input file; `-` or nothing reads stdin.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },

    /// Sign a JSON object as a server and print it as canonical JSON.
    ///
    /// The signature covers the canonical form without `signatures` and
    /// `unsigned`; it is merged into any existing `signatures`.
    #[command(
        after_help = "Example:\n  homeport sign-json --key example.org.signing.key --server-name example.org doc.json"
    )]
    SignJson {
        /// A Synapse-format signing key file (`ed25519 <version> <seed>` lines).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The signing server's name (the entity under `signatures`).
        #[arg(long, value_name = "NAME")]
        server_name: String,
        /// Which key of the file to use (`ed25519:a_AbCd`); default the first.
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// Input file; `-` or nothing reads stdin.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },

    /// Verify a server's signature on a JSON object.
    ///
    /// Exit status 0 when the signature by KEY-ID verifies with PUBLIC-KEY
    /// (nothing is printed), 1 when it is missing or invalid, 2 for bad input.
    #[command(
        after_help = "Example:\n  homeport verify-json --server-name example.org --key-id ed25519:a_AbCd --public-key XGX0... signed.json"
    )]
    VerifyJson {
        /// The signing server's name.
        #[arg(long, value_name = "NAME")]
        server_name: String,
        /// The key id (`ed25519:<version>`).
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// The public key, base64 (padded or not).
        #[arg(long, value_name = "B64")]
        public_key: String,
        /// Input file; `-` or nothing reads stdin.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },
}

/// `homeport store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Copy a SQLite store into the store a config names.
    Migrate {
        /// The source: `sqlite:PATH` (an existing file) or a config file.
        #[arg(long, value_name = "sqlite:PATH|CONFIG")]
        from: String,
        /// The target: a config file (its `database:` section), or
        /// `sqlite:PATH` (an existing file).
        #[arg(long, value_name = "CONFIG|sqlite:PATH")]
        to: String,
        /// Print what would be copied, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Open the store, run its integrity check, print what it holds.
    Check {
        /// The configuration file.
        #[arg(
            long,
            short = 'c',
            value_name = "FILE",
            default_value = "homeport.yaml"
        )]
        config: PathBuf,
    },
}

/// `homeport acme` subcommands.
#[derive(Debug, Subcommand)]
pub enum AcmeAction {
    /// Certificate names, expiry, next renewal, last attempt and last error.
    ///
    /// With --json, one object (times in unix seconds): `names`,
    /// `directory`, `certificate` {`path`, `names`, `issuer`, `not_before`,
    /// `not_after`, `error`}, `next_renewal`, `due`, `last_attempt`,
    /// `last_success`, `last_error` {`at`, `kind`, `message`, `problem`} or
    /// null, `consecutive_failures`, `next_retry`, `account` {`url`,
    /// `key_file`, `key_exists`}, `serve_running`, `state_in` (`file` or
    /// `database`) and `ok` (the exit status's verdict).
    Status {
        /// The configuration file.
        #[arg(
            long,
            short = 'c',
            value_name = "FILE",
            default_value = "homeport.yaml"
        )]
        config: PathBuf,
        /// Print one JSON object (same as --format json).
        #[arg(long)]
        json: bool,
        /// Output format (human or json).
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
    /// Order a certificate now (if due; with --force, even if not).
    Renew {
        /// The configuration file.
        #[arg(
            long,
            short = 'c',
            value_name = "FILE",
            default_value = "homeport.yaml"
        )]
        config: PathBuf,
        /// Renew even when the certificate is not due.
        #[arg(long)]
        force: bool,
        /// Bound on the whole command (500ms, 10s, 2m).
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}
