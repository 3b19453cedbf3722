//! `rate-limit`'s sliding window: the count of the current fixed window plus the previous
//! window's count weighted by how much of it still overlaps, per bucket key. Time comes in
//! as an `Instant` from the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most; a new key beyond this replaces the least recently used bucket. No
/// key is ever let through unlimited, and no request scans the buckets.
const MAX_BUCKETS: usize = 100_000;

/// Windows per bucket key.
pub(crate) struct SlidingWindow {
    capacity: u64,
    window: Duration,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_key: HashMap<String, (Bucket, u64)>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, String>,
    next_use: u64,
    max: usize,
}

#[derive(Clone, Copy)]
struct Bucket {
    start: Instant,
    current: u64,
    previous: u64,
}

impl Buckets {
    /// The bucket for `key`, marked as just used; a new one (evicting the least recently
    /// used when full) if there was none.
    fn touch(&mut self, key: &str, now: Instant) -> &mut Bucket {
        let seq = self.next_use;
        self.next_use += 1;
        if let Some((_, used)) = self.by_key.get_mut(key) {
            self.by_use.remove(used);
            *used = seq;
        } else {
            if self.by_key.len() >= self.max
                && let Some((_, oldest)) = self.by_use.pop_first()
            {
                self.by_key.remove(&oldest);
            }
            self.by_key.insert(key.to_owned(), (Bucket { start: now, current: 0, previous: 0 }, seq));
        }
        self.by_use.insert(seq, key.to_owned());
        &mut self.by_key.get_mut(key).expect("just inserted").0
    }
}

impl SlidingWindow {
    pub(crate) fn new(capacity: u64, window: Duration) -> SlidingWindow {
        SlidingWindow::with_max(capacity, window, MAX_BUCKETS)
    }

    fn with_max(capacity: u64, window: Duration, max: usize) -> SlidingWindow {
        SlidingWindow { capacity, window, buckets: Mutex::new(Buckets { max, ..Buckets::default() }) }
    }

    /// Counts one request for `key`; `Err` holds how long until one would be allowed.
    pub(crate) fn hit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.touch(key, now);
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

    /// A flood of new keys (before: past 100,000 buckets every request was let through)
    /// replaces the least recently used buckets; a key in use keeps its count.
    #[test]
    fn many_keys_evict_the_least_recently_used_and_never_open_the_limit() {
        let w = SlidingWindow::with_max(1, Duration::from_secs(60), 3);
        let t0 = Instant::now();
        assert!(w.hit("victim-limited", t0).is_ok());
        for i in 0..1000 {
            // The limited key keeps being refused while other keys come and go.
            assert!(w.hit("victim-limited", t0).is_err(), "round {i}");
            assert!(w.hit(&format!("flood-{i}"), t0).is_ok());
        }
        let b = w.buckets.lock().unwrap();
        assert_eq!((b.by_key.len(), b.by_use.len()), (3, 3));
    }
}
