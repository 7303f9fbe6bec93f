//! A real, throwaway PostgreSQL server for integration tests.
//!
//! [`start`] runs `initdb` into a fresh directory under `/tmp`, starts
//! `postgres` listening on one `127.0.0.x` address (from
//! [`next_loopback`](crate::next_loopback)) and a free TCP port plus a unix
//! socket in that directory, and creates a login role `homeport` (with a
//! random password) owning a database `homeport`. Dropping the
//! [`PgCluster`] stops the server (`pg_ctl stop -m immediate`, falling back to
//! killing the postmaster) and removes the directory.
//!
//! A watchdog process also stops the server and removes the directory when
//! the test process goes away without dropping the cluster (a cluster kept in
//! a `static`, a panic with `panic = "abort"`, a kill), so no server outlives
//! the tests.
//!
//! When running as root (`initdb` and `postgres` refuse to), the server
//! binaries run as the `postgres` OS user through `runuser` (or `su`).
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use homeport_test_support::postgres;
//!
//! if !postgres::available() {
//!     return Ok(());
//! }
//! let pg = postgres::start()?;
//! pg.create_database("my_test")?;
//! assert_eq!(pg.psql("my_test", "select 1")?.trim(), "1");
//! let _config = pg.yaml_database("my_test");
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Name of the login role [`start`] creates.
const USER: &str = "homeport";
/// Name of the database [`start`] creates (owned by [`USER`]).
const DBNAME: &str = "homeport";
/// Seconds `pg_ctl -w` waits for the server to start or stop.
const PG_CTL_TIMEOUT: &str = "30";
/// How many times [`start`] tries another address/port when the chosen one
/// turned out to be taken.
const BIND_ATTEMPTS: usize = 4;

/// Where the PostgreSQL programs are.
#[derive(Debug)]
struct Bins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
}

/// How the server programs are run.
#[derive(Debug, Clone)]
enum RunAs {
    /// As the current user (not root).
    Me,
    /// As root: `runuser -u postgres -- program args...`.
    Runuser(PathBuf),
    /// As root without runuser: `su postgres -s /bin/sh -c 'program args...'`.
    Su(PathBuf),
}

/// The OS user the server runs as when we are root.
#[derive(Debug, Clone)]
struct Identity {
    run_as: RunAs,
    /// `(uid, gid)` to chown the cluster directory to, when root.
    owner: Option<(u32, u32)>,
}

/// True when the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`)
/// can be found, on `PATH` or in the highest `/usr/lib/postgresql/*/bin`.
///
/// When they are missing this prints a `SKIPPED: ...` line to stderr and
/// returns false, so a test can `return` early; but with `CI=true` it panics
/// instead, since `.ci/run` installs Debian's `postgresql` and a missing
/// server there is a failure, not a skip.
pub fn available() -> bool {
    let found = bins().is_some();
    if !found {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but the PostgreSQL server binaries (initdb, pg_ctl, postgres) were not \
             found on PATH or in /usr/lib/postgresql/*/bin: .ci/run should have installed \
             Debian's postgresql"
        );
        eprintln!(
            "SKIPPED: PostgreSQL server binaries not found; install Debian's postgresql \
             (apt-get install postgresql)"
        );
    }
    found
}

/// Creates and starts a fresh cluster; see the [module docs](self).
///
/// Returns only once the server accepts connections (`pg_ctl -w`), with the
/// role `homeport` and the database `homeport` created. Errors carry the
/// failing command's output and the tail of the server log.
pub fn start() -> io::Result<PgCluster> {
    PgCluster::start()
}

/// A running throwaway PostgreSQL server and the directory holding its data
/// directory, unix socket directory and log. Dropping it stops the server
/// and removes the directory.
///
/// The server listens on [`host`](Self::host)`:`[`port`](Self::port) (a
/// `127.0.0.x` address) with scram-sha-256 password authentication, and on a
/// unix socket in [`socket_dir`](Self::socket_dir) where any role may log in
/// without a password (`trust`). It runs with `fsync=on`, so committed data
/// survives [`stop_immediate`](Self::stop_immediate).
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    host: Ipv4Addr,
    port: u16,
    password: String,
    bins: &'static Bins,
    who: Identity,
    /// Stops the server and removes `root` once its stdin closes without a
    /// `done` line (that is, when this process is gone).
    watchdog: Option<Child>,
}

impl PgCluster {
    fn start() -> io::Result<Self> {
        let bins = bins().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in \
                 /usr/lib/postgresql/*/bin; install Debian's postgresql",
            )
        })?;
        let who = identity()?;
        let root = make_root_dir()?;
        let mut cluster = PgCluster {
            data: root.join("data"),
            sock: root.join("sock"),
            log: root.join("postgres.log"),
            root,
            host: Ipv4Addr::LOCALHOST,
            port: 0,
            password: random_alnum(24),
            bins,
            who,
            watchdog: None,
        };
        // From here on, dropping `cluster` (on any error) cleans up.
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        cluster.setup()?;
        Ok(cluster)
    }

    fn setup(&mut self) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o755).create(&self.sock)?;
        if let Some((uid, gid)) = self.who.owner {
            std::os::unix::fs::chown(&self.root, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&self.sock, Some(uid), Some(gid))?;
        }

        let mut initdb = self.server_cmd(&self.bins.initdb);
        initdb
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ])
            .stdin(Stdio::null());
        run(&mut initdb, "initdb", None)?;
        self.append_include()?;

        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS {
            self.host = pick_host();
            self.port = free_port(self.host)?;
            self.write_settings()?;
            let log_len = fs::metadata(&self.log).map_or(0, |m| m.len());
            match self.start_again() {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    let fresh = read_from(&self.log, log_len);
                    let taken = fresh.contains("could not bind")
                        || fresh.contains("Address already in use");
                    last_err = Some(e);
                    if !taken {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }

        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {USER} LOGIN PASSWORD '{}'",
                self.password // alphanumeric: nothing to escape
            ),
        )?;
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {DBNAME} OWNER {USER} TEMPLATE template0 ENCODING 'UTF8' \
                 LC_COLLATE 'C' LC_CTYPE 'C'"
            ),
        )?;
        Ok(())
    }

    /// Makes `postgresql.conf` include `homeport.conf`, which
    /// [`write_settings`](Self::write_settings) (re)writes.
    fn append_include(&self) -> io::Result<()> {
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        conf.write_all(
            b"\n# homeport-test-support\ninclude 'homeport.conf'\n\
              include_if_exists 'homeport-tls.conf'\n",
        )
    }

    fn write_settings(&self) -> io::Result<()> {
        let settings = format!(
            "listen_addresses = '{host}'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             max_connections = 100\n\
             shared_buffers = 16MB\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            host = self.host,
            port = self.port,
            sock = self.sock.display(),
        );
        let path = self.data.join("homeport.conf");
        fs::write(&path, settings)?;
        if let Some((uid, gid)) = self.who.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// The loopback address the server listens on (in `127.0.0.0/8`).
    pub fn host(&self) -> IpAddr {
        IpAddr::V4(self.host)
    }

    /// The TCP port the server listens on (also the unix socket's port
    /// number, `.s.PGSQL.<port>`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login role created for homeport: `homeport`.
    pub fn user(&self) -> &str {
        USER
    }

    /// The password of [`user`](Self::user) (random, alphanumeric).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The database created by [`start`], owned by [`user`](Self::user):
    /// `homeport`.
    pub fn dbname(&self) -> &str {
        DBNAME
    }

    /// The directory holding the server's unix socket (`-h` for `psql`).
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log (stderr of `postgres`, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server log's current contents (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A homeport config snippet pointing `database` at `dbname` on this
    /// server over TCP, as [`user`](Self::user) with its password:
    ///
    /// ```text
    /// database:
    ///   name: psycopg2
    ///   args:
    ///     user: homeport
    ///     password: <password>
    ///     dbname: <dbname>
    ///     host: 127.0.0.x
    ///     port: <port>
    ///     cp_min: 1
    ///     cp_max: 8
    /// ```
    pub fn yaml_database(&self, dbname: &str) -> String {
        format!(
            "database:\n  name: psycopg2\n  args:\n    user: {USER}\n    password: {pw}\n    \
             dbname: {dbname}\n    host: {host}\n    port: {port}\n    cp_min: 1\n    \
             cp_max: 8\n",
            pw = self.password,
            host = self.host,
            port = self.port,
        )
    }

    /// Creates a fresh, empty database `name` (UTF8, C collation) owned by
    /// [`user`](Self::user), so each test can use its own database on a
    /// shared cluster. `name` must match `[a-z0-9_]+` (at most 63 bytes).
    pub fn create_database(&self, name: &str) -> io::Result<()> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("database name {name:?} does not match [a-z0-9_]{{1,63}}"),
            ));
        }
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE \"{name}\" OWNER {USER} TEMPLATE template0 ENCODING 'UTF8' \
                 LC_COLLATE 'C' LC_CTYPE 'C'"
            ),
        )
        .map(drop)
    }

    /// Runs `sql` in database `db` as the superuser `postgres` over the unix
    /// socket (`psql -X -At -v ON_ERROR_STOP=1`) and returns its stdout:
    /// unaligned, tuples only, one row a line, columns separated by `|`.
    ///
    /// Several `;`-separated statements run in one implicit transaction
    /// (so no `CREATE DATABASE` among them).
    pub fn psql(&self, db: &str, sql: &str) -> io::Result<String> {
        let mut cmd = Command::new(&self.bins.psql);
        clean_env(&mut cmd);
        cmd.current_dir(&self.root)
            .env("PGCONNECT_TIMEOUT", "10")
            .arg("-X")
            .arg("-q")
            .arg("-At")
            .args(["-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.sock)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .stdin(Stdio::null());
        run(
            &mut cmd,
            &format!("psql -d {db} -c {sql:?}"),
            Some(&self.log),
        )
    }

    /// Stops the server like a crash would: `pg_ctl stop -m immediate` (no
    /// shutdown checkpoint; the next start runs crash recovery). Errors if
    /// the server was not running.
    pub fn stop_immediate(&self) -> io::Result<()> {
        let mut cmd = self.pg_ctl(&["stop", "-m", "immediate"]);
        run(&mut cmd, "pg_ctl stop -m immediate", Some(&self.log)).map(drop)
    }

    /// Runs `f`, a call that waits on `pg_ctl` ([`stop_immediate`](Self::stop_immediate),
    /// [`start_again`](Self::start_again), [`enable_tls`](Self::enable_tls), ...),
    /// on tokio's blocking pool, so an async test's runtime keeps serving
    /// meanwhile.
    pub async fn blocking(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&PgCluster) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let pg = self.clone();
        tokio::task::spawn_blocking(move || f(&pg))
            .await
            .map_err(io::Error::other)?
    }

    /// Starts the server again on the same data directory, address and port,
    /// returning once it accepts connections (after any crash recovery).
    pub fn start_again(&self) -> io::Result<()> {
        let mut cmd = self.pg_ctl(&["start"]);
        cmd.arg("-l")
            .arg(&self.log)
            .arg("-p")
            .arg(&self.bins.postgres);
        run(&mut cmd, "pg_ctl start", Some(&self.log)).map(drop)
    }

    /// Turns TLS on and makes TCP connections use it: the server presents
    /// `cert_chain_pem` (leaf first) with `key_pem`, and `pg_hba.conf` then
    /// accepts TCP logins only over TLS (`hostssl`, scram-sha-256; a plain
    /// TCP login is rejected). With `client_ca_pem`, a login also needs a
    /// client certificate signed by that CA whose common name is the role
    /// (`clientcert=verify-full`). Unix-socket logins stay `trust`.
    /// Restarts the server (like [`restart`](Self::restart)) so the next
    /// connection sees the new settings.
    pub fn enable_tls(
        &self,
        cert_chain_pem: &str,
        key_pem: &str,
        client_ca_pem: Option<&str>,
    ) -> io::Result<()> {
        // The key must belong to the server's user and be private to it.
        self.write_owned("homeport-server.crt", cert_chain_pem, 0o644)?;
        self.write_owned("homeport-server.key", key_pem, 0o600)?;
        let mut settings = String::from(
            "ssl = on\n\
             ssl_cert_file = 'homeport-server.crt'\n\
             ssl_key_file = 'homeport-server.key'\n",
        );
        let mut auth = "scram-sha-256".to_owned();
        if let Some(ca) = client_ca_pem {
            self.write_owned("homeport-client-ca.crt", ca, 0o644)?;
            settings.push_str("ssl_ca_file = 'homeport-client-ca.crt'\n");
            auth.push_str(" clientcert=verify-full");
        }
        self.write_owned("homeport-tls.conf", &settings, 0o644)?;
        self.write_owned(
            "pg_hba.conf",
            &format!(
                "local all all trust\n\
                 hostssl all all 127.0.0.0/8 {auth}\n\
                 hostssl all all ::1/128 {auth}\n\
                 hostnossl all all 127.0.0.0/8 reject\n\
                 hostnossl all all ::1/128 reject\n"
            ),
            0o600,
        )?;
        self.restart()
    }

    /// Writes `name` in the data directory, owned by the server's user.
    fn write_owned(&self, name: &str, contents: &str, mode: u32) -> io::Result<()> {
        let path = self.data.join(name);
        fs::write(&path, contents)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = self.who.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// [`stop_immediate`](Self::stop_immediate) then
    /// [`start_again`](Self::start_again).
    pub fn restart(&self) -> io::Result<()> {
        self.stop_immediate()?;
        self.start_again()
    }

    /// `pg_ctl -D <data> -w -t 30 -s <args>` as the server's OS user.
    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = self.server_cmd(&self.bins.pg_ctl);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", PG_CTL_TIMEOUT, "-s"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// A command running `program` as the server's OS user, in the cluster
    /// directory, without the caller's `PG*` environment.
    fn server_cmd(&self, program: &Path) -> Command {
        let mut cmd = as_user(&self.who.run_as, program);
        clean_env(&mut cmd);
        cmd.current_dir(&self.root);
        cmd
    }

    fn spawn_watchdog(&self) -> io::Result<Child> {
        // $1: the cluster directory, $2: the data directory, $3...: pg_ctl
        // (possibly behind runuser/su).
        const SCRIPT: &str = r#"
dir=$1; data=$2; shift 2
read -r line
[ "$line" = done ] && exit 0
"$@" -D "$data" -w -t 10 -s stop -m immediate
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
case "$pid" in ''|*[!0-9]*) ;; *) kill -KILL "$pid" ;; esac
rm -rf -- "$dir"
"#;
        let pg_ctl = as_user(&self.who.run_as, &self.bins.pg_ctl);
        let mut cmd = Command::new("/bin/sh");
        clean_env(&mut cmd);
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("homeport-pg-watchdog")
            .arg(&self.root)
            .arg(&self.data)
            .arg(pg_ctl.get_program())
            .args(pg_ctl.get_args())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: a Ctrl-C kills the tests,
            // not the watchdog that cleans up after them.
            .process_group(0);
        cmd.spawn()
    }

    /// The postmaster's PID from `postmaster.pid`, if that process still
    /// looks like a postgres.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (alive(pid) && String::from_utf8_lossy(&cmdline).contains("postgres")).then_some(pid)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let pid = self.postmaster_pid();
        if pid.is_some() {
            let mut stop = self.pg_ctl(&["stop", "-m", "immediate"]);
            let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        // `pg_ctl -w` returns once postmaster.pid is gone, which can be a
        // moment before the postmaster is: wait for it, kill it if need be.
        if let Some(pid) = pid
            && !wait_gone(pid, Duration::from_secs(10))
        {
            let _ = Command::new("/bin/sh")
                .args(["-c", "kill -KILL \"$1\"", "sh", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            wait_gone(pid, Duration::from_secs(10));
        }
        let _ = fs::remove_dir_all(&self.root);
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Some(mut stdin) = watchdog.stdin.take() {
                let _ = stdin.write_all(b"done\n");
            }
            let _ = watchdog.wait();
        }
    }
}

/// Whether process `pid` is running (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
    })
}

/// Waits up to `limit` for process `pid` to exit; true if it did.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The PostgreSQL programs, found once per process.
fn bins() -> Option<&'static Bins> {
    static BINS: OnceLock<Option<Bins>> = OnceLock::new();
    BINS.get_or_init(find_bins).as_ref()
}

fn find_bins() -> Option<Bins> {
    let on_path = (|| {
        Some((
            find_on_path("initdb")?,
            find_on_path("pg_ctl")?,
            find_on_path("postgres")?,
        ))
    })();
    let (initdb, pg_ctl, postgres) = on_path.or_else(|| {
        let dir = debian_bin_dir()?;
        Some((dir.join("initdb"), dir.join("pg_ctl"), dir.join("postgres")))
    })?;
    // psql next to initdb (following /usr/local/bin-style symlinks) is of
    // the same version; else whatever is on PATH (Debian's wrapper).
    let beside = fs::canonicalize(&initdb)
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("psql")))
        .filter(|p| is_executable(p));
    let psql = beside
        .or_else(|| find_on_path("psql"))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/psql"));
    Some(Bins {
        initdb,
        pg_ctl,
        postgres,
        psql,
    })
}

/// The highest-versioned `/usr/lib/postgresql/<version>/bin` holding all
/// three server programs.
fn debian_bin_dir() -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let name = entry.file_name();
        let Some(version) = name
            .to_str()
            .and_then(|v| v.split('.').map(|p| p.parse::<u32>().ok()).collect())
        else {
            continue;
        };
        let dir = entry.path().join("bin");
        let complete = ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| is_executable(&dir.join(b)));
        if complete && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, dir));
        }
    }
    best.map(|(_, dir)| dir)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_absolute() && is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Who runs the server programs: us, or (when we are root) `postgres`.
fn identity() -> io::Result<Identity> {
    let euid = fs::metadata("/proc/self").map(|m| m.uid()).or_else(|_| {
        let out = Command::new("id").arg("-u").output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .map_err(io::Error::other)
    })?;
    if euid != 0 {
        return Ok(Identity {
            run_as: RunAs::Me,
            owner: None,
        });
    }
    let owner = postgres_user().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "running as root, and initdb/postgres refuse to: they would run as the `postgres` OS \
             user, which does not exist (Debian's postgresql package creates it)",
        )
    })?;
    let run_as = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .or_else(|| find_on_path("runuser"))
        .map(RunAs::Runuser)
        .or_else(|| {
            ["/bin/su", "/usr/bin/su"]
                .iter()
                .map(PathBuf::from)
                .find(|p| is_executable(p))
                .map(RunAs::Su)
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "running as root but neither runuser nor su was found to run postgres as the \
                 `postgres` user",
            )
        })?;
    Ok(Identity {
        run_as,
        owner: Some(owner),
    })
}

/// `(uid, gid)` of the `postgres` OS user, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == "postgres").then_some(())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// A command running `program` as `run_as`; arguments added to it go to
/// `program`.
fn as_user(run_as: &RunAs, program: &Path) -> Command {
    match run_as {
        RunAs::Me => Command::new(program),
        RunAs::Runuser(runuser) => {
            let mut cmd = Command::new(runuser);
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        }
        RunAs::Su(su) => {
            // su runs one shell command line; arguments added later with
            // `Command::arg` land in "$@" of `exec program "$@"`. The `--`
            // keeps su (which permutes options) from taking `-D` and such.
            let mut cmd = Command::new(su);
            cmd.args(["-s", "/bin/sh", "-c"])
                .arg(format!("exec {} \"$@\"", sh_quote(program.as_os_str())))
                .args(["--", "postgres", "sh"]);
            cmd
        }
    }
}

/// `'...'`-quotes `s` for `/bin/sh`.
fn sh_quote(s: &std::ffi::OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"))
}

/// Removes the caller's `PG*` variables (`PGHOST`, `PGOPTIONS`, ...), which
/// would redirect or alter the commands.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// Runs `cmd`, returning its stdout, or an error with its output and the
/// tail of `log` when it fails.
fn run(cmd: &mut Command, what: &str, log: Option<&Path>) -> io::Result<String> {
    let out: Output = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut msg = format!(
        "{what} failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end(),
    );
    if let Some(log) = log {
        msg.push_str(&format!(
            "\n--- server log tail ({}) ---\n{}",
            log.display(),
            log_tail(log, 4096).trim_end()
        ));
    }
    Err(io::Error::other(msg))
}

/// The last `max` bytes of `path` (empty if unreadable).
fn log_tail(path: &Path, max: u64) -> String {
    let len = fs::metadata(path).map_or(0, |m| m.len());
    read_from(path, len.saturating_sub(max))
}

/// `path` from byte `offset` on (empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    if file.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = file.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A fresh `/tmp/homeport-pg-*` directory, mode 0755 so the `postgres` user
/// can reach the data and socket directories inside it.
fn make_root_dir() -> io::Result<PathBuf> {
    let mut last = None;
    for _ in 0..16 {
        let dir = PathBuf::from(format!(
            "/tmp/homeport-pg-{}-{}",
            std::process::id(),
            random_alnum(8).to_ascii_lowercase()
        ));
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {
                // The umask may have stripped bits.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("cannot create a /tmp/homeport-pg-* directory")))
}

/// A `127.0.0.x` address for the server: [`next_loopback`](crate::next_loopback),
/// or `127.0.0.1` should that ever leave `127.0.0.0/8`.
fn pick_host() -> Ipv4Addr {
    let ip = crate::next_loopback();
    if ip.octets()[0] == 127 {
        ip
    } else {
        Ipv4Addr::LOCALHOST
    }
}

/// A TCP port that was free on `ip` a moment ago.
fn free_port(ip: Ipv4Addr) -> io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// `n` random ASCII letters and digits (not for cryptography: test
/// passwords and directory names).
fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = std::collections::hash_map::RandomState::new();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (0..n)
        .map(|i| {
            let mut h = seed.build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            h.write_usize(i);
            let k = usize::try_from(h.finish() % ALPHABET.len() as u64).unwrap_or(0);
            char::from(ALPHABET.get(k).copied().unwrap_or(b'x'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpStream};

    fn connects(pg: &PgCluster) -> bool {
        TcpStream::connect_timeout(
            &SocketAddr::new(pg.host(), pg.port()),
            Duration::from_secs(5),
        )
        .is_ok()
    }

    #[test]
    fn cluster_starts_answers_and_survives_restart() {
        if !available() {
            return;
        }
        let pg = start().unwrap();
        assert!(pg.host().is_loopback(), "{}", pg.host());
        assert_eq!(pg.user(), "homeport");
        assert_eq!(pg.dbname(), "homeport");
        assert!(pg.password().len() >= 16);
        assert!(pg.password().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(pg.data_dir().join("PG_VERSION").exists());
        assert!(
            pg.socket_dir()
                .join(format!(".s.PGSQL.{}", pg.port()))
                .exists()
        );
        assert!(connects(&pg));

        pg.create_database("pg_support_basic").unwrap();
        assert_eq!(pg.psql("pg_support_basic", "select 1").unwrap().trim(), "1");
        let owner = pg
            .psql(
                "postgres",
                "select pg_get_userbyid(datdba) || '|' || pg_encoding_to_char(encoding) \
                 || '|' || datcollate from pg_database where datname = 'pg_support_basic'",
            )
            .unwrap();
        assert_eq!(owner.trim(), "homeport|UTF8|C");
        // Committed data survives a crash-like stop (fsync=on).
        pg.psql(
            "pg_support_basic",
            "create table t (x int); insert into t values (1), (2), (3)",
        )
        .unwrap();

        pg.restart().unwrap();
        assert_eq!(pg.psql("pg_support_basic", "select 1").unwrap().trim(), "1");
        assert_eq!(
            pg.psql("pg_support_basic", "select count(*) from t")
                .unwrap()
                .trim(),
            "3"
        );
        assert!(connects(&pg));

        // Only the loopback address it was given, nothing else.
        let listen = pg.psql("postgres", "show listen_addresses").unwrap();
        assert_eq!(listen.trim(), pg.host().to_string());
        assert_eq!(pg.psql("postgres", "show fsync").unwrap().trim(), "on");

        // Errors carry the server's complaint.
        let err = pg.psql("pg_support_basic", "select nope").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");

        let yaml = pg.yaml_database("pg_support_basic");
        assert!(yaml.starts_with("database:\n  name: psycopg2\n  args:\n"));
        assert!(yaml.contains(&format!("    password: {}\n", pg.password())));
        assert!(yaml.contains("    dbname: pg_support_basic\n"));
        assert!(yaml.contains(&format!("    host: {}\n", pg.host())));
        assert!(yaml.contains(&format!("    port: {}\n", pg.port())));
        assert!(yaml.ends_with("    cp_min: 1\n    cp_max: 8\n"));
    }

    #[test]
    fn stop_then_start_again_and_drop_cleans_up() {
        if !available() {
            return;
        }
        let pg = start().unwrap();
        pg.stop_immediate().unwrap();
        assert!(!connects(&pg));
        assert!(pg.stop_immediate().is_err());
        pg.start_again().unwrap();
        assert_eq!(pg.psql("homeport", "select 1").unwrap().trim(), "1");
        assert!(connects(&pg));

        let root = pg.data_dir().parent().unwrap().to_owned();
        let pid = pg.postmaster_pid().unwrap();
        drop(pg);
        assert!(!root.exists(), "{}", root.display());
        assert!(!alive(pid), "postmaster {pid} still running");
    }

    #[test]
    fn watchdog_cleans_up_when_the_process_goes_away() {
        if !available() {
            return;
        }
        let mut pg = start().unwrap();
        let pid = pg.postmaster_pid().unwrap();
        let root = pg.data_dir().parent().unwrap().to_owned();
        // What the process exiting does: the watchdog's stdin closes without
        // a "done".
        let mut watchdog = pg.watchdog.take().unwrap();
        drop(watchdog.stdin.take());
        assert!(watchdog.wait().unwrap().success());
        assert!(!alive(pid), "postmaster {pid} still running");
        assert!(!root.exists(), "{}", root.display());
        drop(pg);
    }

    #[test]
    fn password_login_over_tcp() {
        if !available() {
            return;
        }
        let pg = start().unwrap();
        let login = |password: &str| {
            let mut cmd = Command::new(&bins().unwrap().psql);
            clean_env(&mut cmd);
            cmd.env("PGPASSWORD", password)
                .args(["-X", "-At", "-w", "-h"])
                .arg(pg.host().to_string())
                .arg("-p")
                .arg(pg.port().to_string())
                .args(["-U", pg.user(), "-d", pg.dbname(), "-c"])
                .arg("select current_user, inet_server_addr()")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let ok = login(pg.password());
        assert!(ok.status.success(), "{ok:?}");
        assert_eq!(
            String::from_utf8_lossy(&ok.stdout).trim(),
            format!("homeport|{}", pg.host())
        );
        let bad = login("wrong");
        assert!(!bad.status.success());
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"),
            "{bad:?}"
        );
    }

    #[test]
    fn create_database_rejects_bad_names() {
        if !available() {
            return;
        }
        let pg = start().unwrap();
        for bad in [
            "",
            "Caps",
            "with-dash",
            "semi;colon",
            "a\"b",
            &"x".repeat(64),
        ] {
            let err = pg.create_database(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        pg.create_database("0_digits_first").unwrap();
        assert_eq!(pg.psql("0_digits_first", "select 2").unwrap().trim(), "2");
    }

    #[test]
    fn cluster_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PgCluster>();
    }
}
