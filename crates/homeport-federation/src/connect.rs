//! Connecting to a resolved destination: targets in order, Happy Eyeballs
//! across each target's addresses, then TLS with SNI and certificate name
//! from discovery's TLS name — never from the connect address or the SRV
//! target.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use homeport_core::Host;
use homeport_resolve::Destination;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::{self, CertCapture, TlsPolicy};

/// Connection timing settings.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Bound on one TCP connect attempt.
    pub connect_timeout: Duration,
    /// Bound on one TLS handshake.
    pub handshake_timeout: Duration,
    /// Happy Eyeballs: start the next address after this long.
    pub stagger: Duration,
    /// Addresses never dialled (checked on the socket address itself, after
    /// unwrapping IPv4-mapped, IPv4-compatible and NAT64 forms; no second
    /// resolution happens). Open by default; the notary and the tester
    /// service set the deny list.
    pub filter: homeport_resolve::AddressFilter,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            stagger: Duration::from_millis(250),
            filter: homeport_resolve::AddressFilter::allow_all(),
        }
    }
}

/// What a connection is and how it came about.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The address dialled.
    pub peer: SocketAddr,
    /// The target host it belongs to (SRV target or hostname).
    pub target_host: String,
    /// The TLS name used (SNI unless an IP).
    pub tls_name: String,
    /// SNI sent, if any.
    pub sni: Option<String>,
    /// `TLSv1_3` etc.
    pub tls_version: Option<String>,
    /// The cipher suite.
    pub cipher: Option<String>,
    /// Negotiated ALPN.
    pub alpn: Option<String>,
    /// The chain as sent and the verification verdict.
    pub certificates: CertCapture,
    /// TCP connect time.
    pub connect_time: Duration,
    /// TLS handshake time.
    pub handshake_time: Duration,
}

/// One failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Where.
    pub addr: SocketAddr,
    /// `connect` or `tls`.
    pub phase: &'static str,
    /// What happened.
    pub error: String,
    /// The connect failed on this machine before anything was sent: it has
    /// no route for the address's family (see [`connect_error_is_no_route`]).
    pub no_route: bool,
}

/// An `EHOSTUNREACH` this quick came from this machine's routing table, not
/// from a neighbour or router that was tried.
const LOCAL_UNREACHABLE: Duration = Duration::from_millis(5);

/// True when a failed TCP connect never left this machine because it has
/// no route for the address (`ENETUNREACH`; `EADDRNOTAVAIL`, no source
/// address of that family; an `EHOSTUNREACH` returned at once rather than
/// after neighbour discovery or an ICMP answer). `elapsed` is how long the
/// connect took. Such an address was not tested: it says nothing about the
/// server.
pub fn connect_error_is_no_route(e: &std::io::Error, elapsed: Duration) -> bool {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NetworkUnreachable | K::AddrNotAvailable => true,
        K::HostUnreachable => elapsed < LOCAL_UNREACHABLE,
        _ => false,
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.phase, self.addr, self.error)
    }
}

/// An established TLS connection.
pub struct Connection {
    /// The stream.
    pub stream: TlsStream<TcpStream>,
    /// About it.
    pub info: ConnInfo,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Connect to `dest`: each target in order; within a target, Happy
/// Eyeballs over its addresses; a TLS failure moves on to the next target.
pub async fn connect_destination(
    dest: &Destination,
    policy: &TlsPolicy,
    opts: &ConnectOptions,
) -> Result<Connection, Vec<Attempt>> {
    let mut attempts = Vec::new();
    for target in &dest.targets {
        let mut addrs = Vec::new();
        for a in interleave(target.socket_addrs().collect()) {
            match opts.filter.denied_by(a.ip()) {
                None => addrs.push(a),
                Some(range) => attempts.push(Attempt {
                    addr: a,
                    phase: "filter",
                    error: format!("{} is in the denied range {range}", a.ip()),
                    no_route: false,
                }),
            }
        }
        if addrs.is_empty() {
            continue;
        }
        match happy_eyeballs(&addrs, opts).await {
            Ok((tcp, addr, took)) => {
                match handshake(tcp, addr, &target.host, &dest.tls_name, policy, true, opts).await {
                    Ok(mut c) => {
                        c.info.connect_time = took;
                        return Ok(c);
                    }
                    Err(a) => attempts.push(a),
                }
            }
            Err(mut errs) => attempts.append(&mut errs),
        }
    }
    Err(attempts)
}

/// Connect to one address (the tester probes every address separately).
/// With `enforce` false a certificate failure is recorded in the returned
/// info instead of failing the handshake.
pub async fn connect_addr(
    addr: SocketAddr,
    target_host: &str,
    tls_name: &Host,
    policy: &TlsPolicy,
    enforce: bool,
    opts: &ConnectOptions,
) -> Result<Connection, Attempt> {
    if let Some(range) = opts.filter.denied_by(addr.ip()) {
        return Err(Attempt {
            addr,
            phase: "filter",
            error: format!("{} is in the denied range {range}", addr.ip()),
            no_route: false,
        });
    }
    let start = Instant::now();
    let tcp = match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Attempt {
                addr,
                phase: "connect",
                no_route: connect_error_is_no_route(&e, start.elapsed()),
                error: e.to_string(),
            });
        }
        Err(_) => {
            return Err(Attempt {
                addr,
                phase: "connect",
                error: format!("no answer within {:?}", opts.connect_timeout),
                no_route: false,
            });
        }
    };
    let took = start.elapsed();
    let mut c = handshake(tcp, addr, target_host, tls_name, policy, enforce, opts).await?;
    c.info.connect_time = took;
    Ok(c)
}

/// IPv6 and IPv4 alternated, keeping each family's order (RFC 8305).
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    out
}

async fn happy_eyeballs(
    addrs: &[SocketAddr],
    opts: &ConnectOptions,
) -> Result<(TcpStream, SocketAddr, Duration), Vec<Attempt>> {
    let start = Instant::now();
    let timeout = opts.connect_timeout;
    let dial = move |addr: SocketAddr| async move {
        let began = Instant::now();
        let r = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(|e| {
                let no_route = connect_error_is_no_route(&e, began.elapsed());
                (e.to_string(), no_route)
            }),
            Err(_) => Err((format!("no answer within {timeout:?}"), false)),
        };
        (addr, r)
    };
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut errors = Vec::new();
    loop {
        if pending.is_empty() {
            if next >= addrs.len() {
                return Err(errors);
            }
            pending.push(dial(addrs[next]));
            next += 1;
        }
        let more = next < addrs.len();
        tokio::select! {
            Some((addr, res)) = pending.next() => match res {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, addr, start.elapsed()));
                }
                Err((error, no_route)) => errors.push(Attempt { addr, phase: "connect", error, no_route }),
            },
            () = tokio::time::sleep(opts.stagger), if more => {
                pending.push(dial(addrs[next]));
                next += 1;
            }
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    target_host: &str,
    tls_name: &Host,
    policy: &TlsPolicy,
    enforce: bool,
    opts: &ConnectOptions,
) -> Result<Connection, Attempt> {
    let fail = |error: String| Attempt {
        addr,
        phase: "tls",
        error,
        no_route: false,
    };
    let (cfg, seen): (Arc<rustls::ClientConfig>, Arc<Mutex<CertCapture>>) =
        tls::client_config(policy, tls_name, enforce).map_err(|e| fail(e.to_string()))?;
    let name = tls::tls_server_name(tls_name).map_err(fail)?;
    let sni = tls_name.dns().map(|d| d.as_str().to_ascii_lowercase());
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let start = Instant::now();
    let stream =
        match tokio::time::timeout(opts.handshake_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let detail = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .map(tls::describe_cert_error)
                    .unwrap_or_else(|| e.to_string());
                return Err(fail(detail));
            }
            Err(_) => {
                return Err(fail(format!(
                    "handshake did not finish within {:?}",
                    opts.handshake_timeout
                )));
            }
        };
    let handshake_time = start.elapsed();
    let (_, conn) = stream.get_ref();
    let certificates = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let info = ConnInfo {
        peer: addr,
        target_host: target_host.to_owned(),
        tls_name: match tls_name {
            Host::Dns(d) => d.as_str().to_owned(),
            Host::Ipv4(a) => a.to_string(),
            Host::Ipv6(a) => a.to_string(),
        },
        sni,
        tls_version: conn.protocol_version().map(|v| format!("{v:?}")),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite())),
        alpn: conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        certificates,
        connect_time: Duration::ZERO,
        handshake_time,
    };
    Ok(Connection { stream, info })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_errors_are_told_apart_from_failures_of_the_server() {
        use std::io::{Error, ErrorKind as K};
        let quick = Duration::ZERO;
        let after_trying = Duration::from_secs(3);
        // This machine has no route, or no address of the family: nothing
        // was sent.
        assert!(connect_error_is_no_route(
            &Error::from(K::NetworkUnreachable),
            after_trying
        ));
        assert!(connect_error_is_no_route(
            &Error::from(K::AddrNotAvailable),
            quick
        ));
        assert!(connect_error_is_no_route(
            &Error::from(K::HostUnreachable),
            quick
        ));
        // EHOSTUNREACH after neighbour discovery or from a router: tried.
        assert!(!connect_error_is_no_route(
            &Error::from(K::HostUnreachable),
            after_trying
        ));
        // The server's side: refused, reset, timed out.
        for k in [
            K::ConnectionRefused,
            K::ConnectionReset,
            K::TimedOut,
            K::Other,
        ] {
            assert!(!connect_error_is_no_route(&Error::from(k), quick), "{k:?}");
        }
        // What the OS returns, by number (Linux: ENETUNREACH 101,
        // EADDRNOTAVAIL 99, ECONNREFUSED 111).
        #[cfg(target_os = "linux")]
        {
            assert!(connect_error_is_no_route(
                &Error::from_raw_os_error(101),
                quick
            ));
            assert!(connect_error_is_no_route(
                &Error::from_raw_os_error(99),
                quick
            ));
            assert!(!connect_error_is_no_route(
                &Error::from_raw_os_error(111),
                quick
            ));
        }
    }

    #[test]
    fn interleaves_families_keeping_order() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let got = interleave(vec![
            a("[::1]:1"),
            a("[::2]:1"),
            a("[::3]:1"),
            a("1.1.1.1:1"),
            a("2.2.2.2:1"),
        ]);
        assert_eq!(
            got,
            vec![
                a("[::1]:1"),
                a("1.1.1.1:1"),
                a("[::2]:1"),
                a("2.2.2.2:1"),
                a("[::3]:1")
            ]
        );
    }
}
