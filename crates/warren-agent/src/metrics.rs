//! Per-endpoint traffic figures for the local API and the status console, in ngrok's shape:
//! counts, 1/5/15-minute rates and duration percentiles for connections and HTTP requests.
//!
//! Recording is lock-free (atomics) because it sits on every connection and request. Rates
//! are exponentially weighted moving averages advanced by [`Metrics::tick`], which the agent
//! calls every [`TICK`], so their arithmetic is tested without waiting.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often [`Metrics::tick`] is expected to be called.
pub const TICK: Duration = Duration::from_secs(5);

/// Connection and HTTP figures of one endpoint.
#[derive(Default)]
pub struct Metrics {
    /// Proxy connections (every visitor connection, any protocol).
    pub conns: Meter,
    /// Connections open now.
    pub open: AtomicU64,
    /// How long connections stayed open.
    pub conn_durations: Histogram,
    /// HTTP requests (inspected http endpoints only).
    pub http: Meter,
    /// Time from request to the end of the response.
    pub http_durations: Histogram,
}

impl Metrics {
    /// Advances every rate by one [`TICK`].
    pub fn tick(&self) {
        self.conns.tick();
        self.http.tick();
    }

    /// A connection opened; the guard records its duration and closes it when dropped.
    pub fn conn_opened(&self) -> ConnGuard<'_> {
        self.conns.mark();
        self.open.fetch_add(1, Ordering::Relaxed);
        ConnGuard { metrics: self, start: std::time::Instant::now() }
    }
}

/// Closes a connection in [`Metrics`] when dropped.
pub struct ConnGuard<'a> {
    metrics: &'a Metrics,
    start: std::time::Instant,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.conn_durations.record(self.start.elapsed());
    }
}

/// A count with 1, 5 and 15-minute rates (events per second).
#[derive(Default)]
pub struct Meter {
    count: AtomicU64,
    uncounted: AtomicU64,
    rates: Mutex<Rates>,
}

#[derive(Default, Clone, Copy)]
struct Rates {
    started: bool,
    m1: f64,
    m5: f64,
    m15: f64,
}

impl Meter {
    /// Records one event.
    pub fn mark(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.uncounted.fetch_add(1, Ordering::Relaxed);
    }

    /// Events so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// `(rate1, rate5, rate15)` in events per second.
    pub fn rates(&self) -> (f64, f64, f64) {
        let r = *self.rates.lock().unwrap_or_else(|e| e.into_inner());
        (r.m1, r.m5, r.m15)
    }

    fn tick(&self) {
        let n = self.uncounted.swap(0, Ordering::Relaxed) as f64;
        let instant = n / TICK.as_secs_f64();
        let mut r = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if !r.started {
            // The first interval seeds the averages, as go-metrics (and so ngrok) does.
            *r = Rates { started: true, m1: instant, m5: instant, m15: instant };
            return;
        }
        let step = |rate: &mut f64, minutes: f64| {
            let alpha = 1.0 - (-TICK.as_secs_f64() / 60.0 / minutes).exp();
            *rate += alpha * (instant - *rate);
        };
        step(&mut r.m1, 1.0);
        step(&mut r.m5, 5.0);
        step(&mut r.m15, 15.0);
    }
}

/// Durations in log-linear buckets: 8 per power of two of microseconds, so a percentile is
/// within 9 % of the truth, from 1 µs to over an hour, in a fixed 4 KiB.
pub struct Histogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
}

const SUB: usize = 8;
const BUCKETS: usize = 64 * SUB;

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))) }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0.0..=1.0), or `None` with no samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_mid(i)));
            }
        }
        None
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // us >= 8 so exp >= 3
    let sub = ((us >> (exp - 3)) & (SUB as u64 - 1)) as usize;
    ((exp - 2) * SUB + sub).min(BUCKETS - 1)
}

/// The middle of bucket `i`, in microseconds.
fn bucket_mid(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = i / SUB + 2;
    let sub = (i % SUB) as u64;
    let low = (SUB as u64 + sub) << (exp - 3);
    let width = 1u64 << (exp - 3);
    low + width / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let near = |q: f64, want_ms: f64| {
            let got = h.quantile(q).unwrap().as_secs_f64() * 1000.0;
            assert!((got - want_ms).abs() / want_ms < 0.09, "q{q}: {got} ms, want about {want_ms}");
        };
        near(0.5, 50.0);
        near(0.9, 90.0);
        near(0.99, 99.0);
    }

    #[test]
    fn buckets_cover_small_and_huge_durations() {
        for us in [0u64, 1, 7, 8, 9, 1000, 1 << 40, u64::MAX] {
            let b = bucket_of(us);
            assert!(b < BUCKETS);
            if (8..1 << 40).contains(&us) {
                let mid = bucket_mid(b);
                assert!(mid.abs_diff(us) as f64 / us as f64 <= 0.0625, "{us} -> {mid}");
            }
        }
    }

    #[test]
    fn rates_follow_the_event_rate() {
        let m = Meter::default();
        // 10 events per second for 10 minutes.
        for _ in 0..120 {
            for _ in 0..50 {
                m.mark();
            }
            m.tick();
        }
        let (r1, r5, r15) = m.rates();
        assert!((r1 - 10.0).abs() < 0.01, "{r1}");
        assert!((r5 - 10.0).abs() < 0.01 && (r15 - 10.0).abs() < 0.01);
        // Then silence for a minute: the 1-minute rate falls to about 1/e, the others less.
        for _ in 0..12 {
            m.tick();
        }
        let (r1, r5, r15) = m.rates();
        assert!((r1 - 10.0 / std::f64::consts::E).abs() < 0.1, "{r1}");
        assert!(r1 < r5 && r5 < r15);
        assert_eq!(m.count(), 6000);
    }

    #[test]
    fn a_connection_guard_closes_and_times_the_connection() {
        let m = Metrics::default();
        {
            let _g = m.conn_opened();
            assert_eq!(m.open.load(Ordering::Relaxed), 1);
        }
        assert_eq!(m.open.load(Ordering::Relaxed), 0);
        assert_eq!(m.conns.count(), 1);
        assert!(m.conn_durations.quantile(0.5).is_some());
    }
}
