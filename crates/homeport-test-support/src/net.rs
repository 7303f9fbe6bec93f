//! Loopback address helpers.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

/// `127.0.0.n`.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// First host byte handed out by [`next_loopback`].
const FIRST: u32 = 10;
/// How many distinct addresses [`next_loopback`] cycles through (10..=249).
const SPAN: u32 = 240;

static COUNTER: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback address `127.0.0.x` (x in 10..=249) that no other caller in
/// this process got recently, so parallel tests can each bind a fixed port
/// (8448, say) on their own address.
///
/// The sequence starts at an offset derived from the process id, which makes
/// collisions between test binaries running at the same time unlikely (but
/// not impossible: prefer ephemeral ports, or
/// [`HttpsServer::start_on_any_loopback`](crate::HttpsServer::start_on_any_loopback),
/// which retries on another address when the port is taken).
///
/// Linux routes all of `127.0.0.0/8` to the loopback interface; on macOS
/// only `127.0.0.1` exists unless aliases are added.
pub fn next_loopback() -> Ipv4Addr {
    let start = std::process::id() % SPAN;
    // Lazily seed the counter with the per-process start offset.
    let _ = COUNTER.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst) % SPAN;
    let host = u8::try_from(FIRST + n).unwrap_or(10);
    Ipv4Addr::new(127, 0, 0, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_loopback_stays_in_range_and_varies() {
        let a = next_loopback();
        let b = next_loopback();
        assert_ne!(a, b);
        for _ in 0..1000 {
            let ip = next_loopback();
            assert!(ip.is_loopback());
            assert!((10..250).contains(&ip.octets()[3]), "{ip}");
        }
    }
}
