//! Listeners: sockets as Synapse binds them (a socket on `::` is opened
//! IPV6_V6ONLY, so `['::', '0.0.0.0']` binds both families), TLS with the
//! reloadable certificate or plain HTTP, HTTP/1.1 and HTTP/2, a request log
//! line with SNI and Host, trusted X-Forwarded-For, and graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service as _;

use crate::routes::ConnMeta;

/// One bound listener and what it serves.
pub struct Listener {
    /// Name for logs and metrics (`[::]:8448`).
    pub name: String,
    /// The socket.
    pub socket: TcpListener,
    /// TLS, or plain when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The routes.
    pub router: Router,
    /// Honour X-Forwarded-For from `trusted_proxies`.
    pub x_forwarded: bool,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Bind `addr` as Synapse does: IPv6 sockets are IPV6_V6ONLY, so `::` and
/// `0.0.0.0` on the same port can both be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// The client address for a request: the peer, or the last untrusted hop
/// of X-Forwarded-For when the peer is a trusted proxy.
pub fn client_addr(
    peer: SocketAddr,
    xff: Option<&str>,
    x_forwarded: bool,
    trusted: &[IpNet],
) -> SocketAddr {
    if !x_forwarded || !trusted.iter().any(|n| n.contains(&peer.ip())) {
        return peer;
    }
    let Some(xff) = xff else { return peer };
    for hop in xff.rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|n| n.contains(&ip)) => continue,
            Ok(ip) => return SocketAddr::new(ip, 0),
            Err(_) => return peer,
        }
    }
    peer
}

/// Serve every listener until `shutdown` turns true, then stop accepting
/// and wait up to `drain` for in-flight requests.
pub async fn serve(listeners: Vec<Listener>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = Vec::new();
    for l in listeners {
        let mut stop = shutdown.clone();
        let graceful = graceful.clone();
        tasks.push(tokio::spawn(async move {
            let l = Arc::new(l);
            loop {
                tokio::select! {
                    accepted = l.socket.accept() => match accepted {
                        Ok((tcp, peer)) => {
                            let l = l.clone();
                            let watcher = graceful.watcher();
                            tokio::spawn(async move { handle(l, tcp, peer, watcher).await });
                        }
                        Err(e) => {
                            tracing::warn!(listener = %l.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running after {drain:?}; closing them");
    }
}

async fn handle(
    l: Arc<Listener>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = tcp.set_nodelay(true);
    match &l.tls {
        None => {
            serve_conn(l.clone(), TokioIo::new(tcp), peer, None, false, watcher).await;
        }
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(mut tls)) => {
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    if tls.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                        // A tls-alpn-01 validation (RFC 8737 section 3): the
                        // handshake was the answer; no data follows.
                        tracing::debug!(listener = %l.name, %peer, sni = sni.as_deref().unwrap_or("-"), "answered a tls-alpn-01 validation");
                        use tokio::io::AsyncWriteExt as _;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    serve_conn(l.clone(), TokioIo::new(tls), peer, sni, true, watcher).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(listener = %l.name, %peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(listener = %l.name, %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_conn<I>(
    l: Arc<Listener>,
    io: TokioIo<I>,
    peer: SocketAddr,
    sni: Option<String>,
    tls: bool,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let l2 = l.clone();
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let l = l2.clone();
        let sni = sni.clone();
        async move {
            let start = Instant::now();
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let client = client_addr(peer, xff.as_deref(), l.x_forwarded, &l.trusted_proxies);
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
            let method = req.method().clone();
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            req.extensions_mut().insert(ConnMeta {
                client,
                sni: sni.clone(),
                tls,
            });
            let mut router = l.router.clone();
            let resp = router.call(req.map(Body::new)).await;
            let resp = match resp {
                Ok(r) => r,
                Err(never) => match never {},
            };
            tracing::info!(
                target: "homeport::access",
                listener = %l.name,
                client = %client.ip(),
                sni = sni.as_deref().unwrap_or("-"),
                host = host.as_deref().unwrap_or("-"),
                method = %method,
                path = %target,
                status = resp.status().as_u16(),
                ms = start.elapsed().as_millis() as u64,
                "request"
            );
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(listener = %l.name, %peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(
            client_addr(proxy, Some("198.51.100.7"), true, &trusted)
                .ip()
                .to_string(),
            "198.51.100.7"
        );
        assert_eq!(
            client_addr(proxy, Some("198.51.100.7, 127.0.0.2"), true, &trusted)
                .ip()
                .to_string(),
            "198.51.100.7"
        );
        assert_eq!(
            client_addr(stranger, Some("198.51.100.7"), true, &trusted),
            stranger
        );
        assert_eq!(
            client_addr(proxy, Some("198.51.100.7"), false, &trusted),
            proxy
        );
        assert_eq!(client_addr(proxy, Some("garbage"), true, &trusted), proxy);
    }

    #[tokio::test]
    async fn v6only_lets_both_families_bind_one_port() {
        let v4 = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = bind(SocketAddr::new("::1".parse().unwrap(), port));
        assert!(v6.is_ok(), "{v6:?}");
    }
}
