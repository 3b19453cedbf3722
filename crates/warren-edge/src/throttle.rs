//! Failed credentials per client address: an address that presents too many wrong API keys
//! or authtokens within a window is refused until the window ends, so secrets cannot be
//! guessed at line rate. Successful attempts are not counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; expired entries are dropped first, then the oldest.
const MAX_ADDRESSES: usize = 100_000;

pub(crate) struct FailureThrottle {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureThrottle {
    /// At most `max` failures per `window` per address.
    pub(crate) fn new(max: u32, window: Duration) -> FailureThrottle {
        FailureThrottle { max, window, failures: Mutex::default() }
    }

    /// `Some(seconds to wait)` when `ip` has used up its failures.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = failures.get(&ip)?;
        let elapsed = now.saturating_duration_since(*start);
        (elapsed < self.window && *n >= self.max).then(|| (self.window - elapsed).as_secs().max(1))
    }

    /// Counts one failure from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !failures.contains_key(&ip) && failures.len() >= MAX_ADDRESSES {
            let window = self.window;
            failures.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if failures.len() >= MAX_ADDRESSES
                && let Some(oldest) = failures.iter().min_by_key(|(_, (start, _))| *start).map(|(ip, _)| *ip)
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let t = FailureThrottle::new(3, Duration::from_secs(60));
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.blocked(a, t0), None);
            t.failed(a, t0);
        }
        assert_eq!(t.blocked(a, t0 + Duration::from_secs(10)), Some(50));
        assert_eq!(t.blocked(b, t0), None, "another address is not affected");
        assert_eq!(t.blocked(a, t0 + Duration::from_secs(60)), None, "a new window");
    }
}
