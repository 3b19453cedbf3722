//! `rate-limit`'s sliding window: the count of the current fixed window plus the previous
//! window's count weighted by how much of it still overlaps, per bucket key. Time comes in
//! as an `Instant` from the caller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; beyond this, buckets idle for two windows are dropped first, then
/// the request is let through unlimited rather than letting memory grow without bound.
const MAX_BUCKETS: usize = 100_000;

/// Windows per bucket key.
pub(crate) struct SlidingWindow {
    capacity: u64,
    window: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    start: Instant,
    current: u64,
    previous: u64,
}

impl SlidingWindow {
    pub(crate) fn new(capacity: u64, window: Duration) -> SlidingWindow {
        SlidingWindow { capacity, window, buckets: Mutex::default() }
    }

    /// Counts one request for `key`; `Err` holds how long until one would be allowed.
    pub(crate) fn hit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_BUCKETS {
            let window = self.window;
            buckets.retain(|_, b| now.saturating_duration_since(b.start) < window * 2);
            if buckets.len() >= MAX_BUCKETS {
                return Ok(());
            }
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket { start: now, current: 0, previous: 0 });
        let elapsed = now.saturating_duration_since(b.start);
        if elapsed >= self.window * 2 {
            *b = Bucket { start: now, current: 0, previous: 0 };
        } else if elapsed >= self.window {
            *b = Bucket { start: b.start + self.window, current: 0, previous: b.current };
        }
        let into = now.saturating_duration_since(b.start).as_secs_f64() / self.window.as_secs_f64();
        let weighted = b.previous as f64 * (1.0 - into) + b.current as f64;
        if weighted + 1.0 > self.capacity as f64 {
            // Until enough of the previous window has slid out (or the window turns over).
            let retry = if b.previous > 0 {
                let need = (weighted + 1.0 - self.capacity as f64) / b.previous as f64;
                self.window.mul_f64(need.min(1.0))
            } else {
                self.window.saturating_sub(now.saturating_duration_since(b.start))
            };
            return Err(retry);
        }
        b.current += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_capacity_per_window_and_slides() {
        let w = SlidingWindow::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(w.hit("a", t0).is_ok());
        }
        let retry = w.hit("a", t0 + Duration::from_secs(1)).unwrap_err();
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(60));
        assert!(w.hit("b", t0).is_ok(), "buckets are separate");
        // Halfway through the next window, half of the previous three still count.
        assert!(w.hit("a", t0 + Duration::from_secs(90)).is_ok());
        assert!(w.hit("a", t0 + Duration::from_secs(90)).is_err());
        // Two windows later everything is forgotten.
        for _ in 0..3 {
            assert!(w.hit("a", t0 + Duration::from_secs(300)).is_ok());
        }
    }
}
