//! A TCP relay that can go silent: what a database or peer behind a
//! network partition looks like (connections stay open, nothing answers,
//! nothing is reset).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards every connection on [`addr`](Self::addr) to a target, until
/// [`freeze`](Self::freeze): from then on it accepts connections but
/// forwards nothing either way; what arrives waits in the kernel's buffers
/// (which still acknowledge it, so TCP's own timeouts never fire), and
/// goes out after [`thaw`](Self::thaw). Runs on the caller's tokio runtime;
/// dropping it closes the listener and every relayed connection.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `bind` (port 0 for any) and relays to `target`.
    pub async fn start(bind: SocketAddr, target: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (frozen, rx) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let rx = rx.clone();
                conns.spawn(async move {
                    thawed(rx.clone()).await;
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                });
            }
        });
        Ok(Relay {
            addr,
            frozen,
            accepted,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding (existing and new connections alike).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again, held bytes first.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // relayed connection.
        self.task.abort();
    }
}

async fn thawed(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|frozen| !frozen).await;
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, rx: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        thawed(rx.clone()).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes read just before a freeze wait for the thaw too.
        thawed(rx.clone()).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn relays_then_holds_then_delivers() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), target)
            .await
            .unwrap();
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        let mut b = [0u8; 5];
        c.write_all(b"hello").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");

        relay.freeze();
        c.write_all(b"again").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await;
        assert!(silent.is_err(), "a frozen relay answered: {silent:?}");
        // New connections are accepted and get nothing either.
        let mut d = TcpStream::connect(relay.addr()).await.unwrap();
        d.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), d.read(&mut one))
                .await
                .is_err()
        );
        assert_eq!(relay.accepted(), 2);

        relay.thaw();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"again");
        d.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"x");
    }
}
