//! `circuit-breaker`: the outcomes of the requests a rule let through, counted in a rolling
//! window of ten buckets. When the window holds at least `volume_threshold` requests and the
//! share of errors (5xx answers, or no answer) reaches `error_threshold`, the breaker opens:
//! requests are refused with 503 for `tripped_duration`. Then one request is let through as a
//! probe; its success closes the breaker, its failure opens it again.
//!
//! No clock is read here: the caller passes `Instant`s in, so the state machine is tested by
//! moving time by hand.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets in the rolling window (ngrok fixes it at 10 too).
pub(crate) const BUCKETS: u32 = 10;

/// A breaker's settings, checked when the policy is compiled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) error_threshold: f64,
    pub(crate) volume_threshold: u64,
    pub(crate) window: Duration,
    pub(crate) tripped: Duration,
}

/// One rule's breaker, shared by every request the rule sees.
pub(crate) struct Breaker {
    settings: Settings,
    state: Mutex<State>,
}

struct State {
    /// (requests, errors) per bucket; `head` is the bucket `head_start` begins.
    buckets: [(u64, u64); BUCKETS as usize],
    head: usize,
    head_start: Option<Instant>,
    mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Closed,
    Open {
        until: Instant,
    },
    /// The tripped time is over; `probing` while the one probe request is out.
    HalfOpen {
        probing: bool,
    },
}

/// Why a request was not let through: the breaker is open, for about this long still.
#[derive(Debug, PartialEq)]
pub(crate) struct Refused(pub(crate) Duration);

impl Breaker {
    pub(crate) fn new(settings: Settings) -> Breaker {
        Breaker {
            settings,
            state: Mutex::new(State {
                buckets: Default::default(),
                head: 0,
                head_start: None,
                mode: Mode::Closed,
            }),
        }
    }

    /// Lets a request through (and gives it the ticket its outcome is reported on), or refuses it.
    pub(crate) fn admit(self: &Arc<Breaker>, now: Instant) -> Result<CircuitTicket, Refused> {
        let mut s = self.state.lock().expect("breaker poisoned");
        let probe = match s.mode {
            Mode::Closed => false,
            Mode::Open { until } if now < until => return Err(Refused(until - now)),
            Mode::Open { .. } | Mode::HalfOpen { probing: false } => {
                s.mode = Mode::HalfOpen { probing: true };
                true
            }
            Mode::HalfOpen { probing: true } => return Err(Refused(Duration::from_secs(1))),
        };
        Ok(CircuitTicket { breaker: Some(self.clone()), probe })
    }

    fn record(&self, probe: bool, error: bool, now: Instant) {
        let mut s = self.state.lock().expect("breaker poisoned");
        if probe {
            s.mode = if error { Mode::Open { until: now + self.settings.tripped } } else { Mode::Closed };
            s.clear(now);
            return;
        }
        s.advance(now, self.settings.window / BUCKETS);
        let head = s.head;
        s.buckets[head].0 += 1;
        s.buckets[head].1 += u64::from(error);
        if s.mode != Mode::Closed {
            return;
        }
        let (requests, errors) = s.buckets.iter().fold((0, 0), |(r, e), b| (r + b.0, e + b.1));
        if requests >= self.settings.volume_threshold
            && errors as f64 >= self.settings.error_threshold * requests as f64
        {
            s.mode = Mode::Open { until: now + self.settings.tripped };
            s.clear(now);
        }
    }

    fn abandon(&self, probe: bool) {
        if probe {
            let mut s = self.state.lock().expect("breaker poisoned");
            if s.mode == (Mode::HalfOpen { probing: true }) {
                s.mode = Mode::HalfOpen { probing: false };
            }
        }
    }
}

impl State {
    /// Moves the window on to `now`, emptying the buckets that fell out of it.
    fn advance(&mut self, now: Instant, width: Duration) {
        let Some(start) = self.head_start else {
            self.head_start = Some(now);
            return;
        };
        let steps = now.saturating_duration_since(start).as_nanos() / width.as_nanos().max(1);
        if steps >= u128::from(BUCKETS) {
            self.clear(now);
            return;
        }
        for _ in 0..steps {
            self.head = (self.head + 1) % self.buckets.len();
            self.buckets[self.head] = (0, 0);
        }
        self.head_start = Some(start + width * steps as u32);
    }

    fn clear(&mut self, now: Instant) {
        self.buckets = Default::default();
        self.head = 0;
        self.head_start = Some(now);
    }
}

/// A request a circuit breaker let through: the caller reports how it went with
/// [`CircuitTickets::finish`]. Dropped unreported (the request was refused by a later rule, or
/// the visitor went away) it counts for nothing.
pub struct CircuitTicket {
    breaker: Option<Arc<Breaker>>,
    probe: bool,
}

impl Drop for CircuitTicket {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.abandon(self.probe);
        }
    }
}

/// The tickets of every circuit breaker a request passed, in the request's extensions after
/// `on_http_request`. The caller takes them out before sending the request on, and reports
/// the outcome once the upstream answered (or failed to).
#[derive(Default)]
pub struct CircuitTickets(pub(crate) Vec<CircuitTicket>);

impl CircuitTickets {
    /// Reports the answer's status: 5xx (including the edge's own 502 when the upstream could
    /// not be reached) is an error.
    pub fn finish(self, status: u16, now: Instant) {
        for mut t in self.0 {
            if let Some(b) = t.breaker.take() {
                b.record(t.probe, status >= 500, now);
            }
        }
    }
}

impl Clone for CircuitTickets {
    /// Request extensions must be `Clone`; a copy holds no tickets, so an outcome is reported
    /// once, by whoever holds the original.
    fn clone(&self) -> CircuitTickets {
        CircuitTickets::default()
    }
}

impl std::fmt::Debug for CircuitTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CircuitTickets({})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: f64, volume: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(Settings {
            error_threshold: threshold,
            volume_threshold: volume,
            window: Duration::from_secs(10),
            tripped: Duration::from_secs(5),
        }))
    }

    fn outcome(b: &Arc<Breaker>, status: u16, now: Instant) -> Result<(), Refused> {
        let t = b.admit(now)?;
        CircuitTickets(vec![t]).finish(status, now);
        Ok(())
    }

    #[test]
    fn it_opens_at_the_error_share_once_the_volume_is_reached() {
        let b = breaker(0.5, 4);
        let t0 = Instant::now();
        // Three errors: below the volume, still closed.
        for _ in 0..3 {
            outcome(&b, 502, t0).unwrap();
        }
        // The fourth request reaches the volume with 4/4 errors: it opens.
        outcome(&b, 500, t0).unwrap();
        assert_eq!(outcome(&b, 200, t0 + Duration::from_secs(1)), Err(Refused(Duration::from_secs(4))));
    }

    #[test]
    fn the_share_of_errors_decides_and_old_errors_leave_the_window() {
        let t0 = Instant::now();
        // 2 errors of 4 reach a 0.5 threshold...
        let half = breaker(0.5, 4);
        for s in [500, 500, 200, 200] {
            outcome(&half, s, t0).unwrap();
        }
        assert!(half.admit(t0).is_err());
        // ...not a 0.75 one.
        let most = breaker(0.75, 4);
        for s in [500, 500, 200, 200, 200] {
            outcome(&most, s, t0).unwrap();
        }
        // Errors older than the 10 s window no longer count.
        let old = breaker(0.5, 4);
        for s in [500, 500, 500] {
            outcome(&old, s, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(11);
        for s in [200, 500, 200, 200, 200] {
            outcome(&old, s, later).unwrap();
        }
    }

    #[test]
    fn after_the_tripped_time_one_probe_decides() {
        let b = breaker(0.5, 2);
        let t0 = Instant::now();
        outcome(&b, 500, t0).unwrap();
        outcome(&b, 500, t0).unwrap();
        assert!(b.admit(t0 + Duration::from_secs(4)).is_err());
        // Tripped time over: one probe goes through, others wait for it.
        let at = t0 + Duration::from_secs(5);
        let probe = b.admit(at).unwrap();
        assert!(b.admit(at).is_err());
        // The probe fails: open again for the tripped time.
        CircuitTickets(vec![probe]).finish(503, at);
        assert!(b.admit(at + Duration::from_secs(4)).is_err());
        // The next probe succeeds: closed, and the window starts empty.
        let at = at + Duration::from_secs(5);
        let probe = b.admit(at).unwrap();
        CircuitTickets(vec![probe]).finish(200, at);
        outcome(&b, 500, at).unwrap();
        outcome(&b, 200, at).unwrap();
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let b = breaker(0.5, 1);
        let t0 = Instant::now();
        outcome(&b, 500, t0).unwrap();
        let at = t0 + Duration::from_secs(5);
        drop(b.admit(at).unwrap());
        let probe = b.admit(at).unwrap();
        CircuitTickets(vec![probe]).finish(200, at);
        outcome(&b, 200, at).unwrap();
    }

    #[test]
    fn a_cloned_extension_reports_nothing() {
        let b = breaker(0.5, 1);
        let t0 = Instant::now();
        let tickets = CircuitTickets(vec![b.admit(t0).unwrap()]);
        tickets.clone().finish(500, t0);
        drop(tickets);
        outcome(&b, 200, t0).unwrap();
    }
}
