//! A fixed-window limit of requests per client address per minute, shared
//! by the notary and the tester. Bounded: past 10 000 clients, windows that
//! have ended are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Requests per client per minute.
#[derive(Debug)]
pub struct PerClient {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl PerClient {
    /// At most `per_minute` requests per client per minute.
    pub fn new(per_minute: u32) -> Self {
        PerClient {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Count one request from `client`: `Err(seconds to wait)` (at least 1)
    /// when over the limit.
    pub fn admit(&self, client: IpAddr) -> Result<(), u64> {
        let mut m = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if m.len() > 10_000 {
            m.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let e = m.entry(client).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > self.per_minute {
            return Err(WINDOW
                .as_secs()
                .saturating_sub(now.duration_since(e.0).as_secs())
                .max(1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_client() {
        let l = PerClient::new(2);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(l.admit(a).is_ok() && l.admit(a).is_ok());
        let wait = l.admit(a).unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(l.admit(b).is_ok());
    }
}
