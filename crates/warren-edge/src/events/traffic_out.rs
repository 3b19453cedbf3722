//! Traffic events leave from the node that saw them, straight from memory. They never enter
//! the outbox: writing every request to the database, reading it back, parsing and
//! re-rendering it cost visitors half their throughput, and traffic events may be dropped
//! anyway (audit events, which may not, keep the outbox and its cursors).
//!
//! Routing happens where the event is made: the request path holds its account's [`Route`]s
//! (cached with its subscriptions, see `Events::traffic_sink`) and offers each destination
//! that takes the event whole its text as the request path wrote it (shared, not copied), to
//! that destination's own bounded queue. Only an event some source filters (CEL) or selects
//! fields of goes through the dispatcher here, which evaluates and re-renders it off the
//! request path. One task per destination sends batches; a slow or dead destination fills
//! only its own queue, whose overflow is dropped and counted, and shows its error on the
//! resource. Every node delivers what it saw, so a file destination gets one file per node,
//! in that node's events directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use warren_store::{EventDestination, EventSource};

use super::deliver::{Outgoing, SendError, send};
use super::traffic::TrafficEvent;
use super::{SUBSCRIBED_TTL, Target};
use crate::Shared;
use crate::metrics::label;

/// Events handed to one destination's sender at most at once (a file takes them in one write).
const MAX_BATCH: usize = 500;
/// How often a destination's delivered count reaches the store (not per batch).
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// Backoff between failed sends: from 1 s, doubling, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After a part-full batch, the dispatcher and the senders let events gather this long
/// before the next: a few hundred wake-ups a second under load instead of one per event.
const GATHER: Duration = Duration::from_millis(5);

/// A destination of one account that takes traffic events, as the request path routes to it.
pub(super) struct Route {
    destination_id: String,
    sources: Vec<EventSource>,
    /// What this destination takes of `http_request_complete.v0` and of
    /// `tcp_connection_closed.v0`, decided once when the route is read.
    http: Takes,
    tcp: Takes,
    tx: mpsc::Sender<Outgoing>,
}

/// What a destination takes of events of one type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Takes {
    /// No source of it takes the type.
    Nothing,
    /// Its first source of the type has no filter and selects no fields: the text as it is.
    Whole,
    /// A filter to evaluate or fields to select: the dispatcher's work, off the request path.
    Filtered,
}

impl Route {
    fn new(destination_id: String, sources: Vec<EventSource>, tx: mpsc::Sender<Outgoing>) -> Route {
        let takes = |event_type: &str| {
            // As for the outbox's events: the first source whose filter passes decides the
            // fields, so only a first source without a filter decides alone.
            match sources.iter().find(|s| s.kind == event_type) {
                None => Takes::Nothing,
                Some(s) if s.filter.is_empty() && s.fields.is_empty() => Takes::Whole,
                Some(_) => Takes::Filtered,
            }
        };
        let (http, tcp) = (takes(super::HTTP_REQUEST_COMPLETE), takes(super::TCP_CONNECTION_CLOSED));
        Route { destination_id, sources, http, tcp, tx }
    }

    pub(super) fn takes(&self, event_type: &str) -> Takes {
        if event_type == super::HTTP_REQUEST_COMPLETE {
            self.http
        } else if event_type == super::TCP_CONNECTION_CLOSED {
            self.tcp
        } else {
            Takes::Nothing
        }
    }

    /// Offers `text` to this destination's queue; false when it is full (the destination is
    /// slow or down: only it loses the event).
    pub(super) fn offer(&self, text: bytes::Bytes) -> bool {
        let offered = self.tx.try_send(Outgoing { text }).is_ok();
        if !offered {
            tracing::trace!(destination = %self.destination_id, "traffic event dropped");
        }
        offered
    }

    /// A route to `tx` taking every traffic event, whole or, with `filter`, filtered (for
    /// tests).
    #[cfg(test)]
    pub(super) fn for_tests(tx: mpsc::Sender<Outgoing>, filter: &str) -> Route {
        let source =
            |kind: &str| EventSource { kind: kind.into(), filter: filter.into(), fields: Vec::new() };
        let sources = vec![source(super::HTTP_REQUEST_COMPLETE), source(super::TCP_CONNECTION_CLOSED)];
        Route::new("ed_test".into(), sources, tx)
    }
}

/// An event some of its routes filter or select fields of, for the dispatcher.
pub(super) type Filtered = (TrafficEvent, Arc<[Route]>);

/// A running sender for one destination.
pub(super) struct Sender {
    tx: mpsc::Sender<Outgoing>,
    alive: Arc<AtomicBool>,
    /// The destination's target and sealed secret as last read; a change starts a new sender.
    target: (String, Option<Vec<u8>>),
}

/// The routes of an account's destinations as `found` in the store, starting a sender for
/// each destination that has none running (or whose target changed). `senders` is the
/// node's; `shared` absent (the event tasks are not running) starts none.
pub(super) fn routes(
    shared: Option<&Arc<Shared>>,
    found: Vec<(EventDestination, Vec<EventSource>)>,
    senders: &mut HashMap<String, Sender>,
    queue: usize,
) -> Vec<Route> {
    let mut out = Vec::with_capacity(found.len());
    for (d, sources) in found {
        if !sources.iter().any(|s| super::types::is_traffic(&s.kind)) {
            continue;
        }
        let current = (d.target.clone(), d.secret_sealed.clone());
        let stale =
            senders.get(&d.id).is_none_or(|s| s.target != current || !s.alive.load(Ordering::Relaxed));
        if stale {
            if let Some(old) = senders.remove(&d.id) {
                old.alive.store(false, Ordering::Relaxed);
            }
            let Some(shared) = shared else { continue };
            let Some(target) = Target::from_stored(&d.target) else {
                tracing::error!(destination = %d.id, "event destination has an unreadable target; not delivering");
                continue;
            };
            let (tx, rx) = mpsc::channel(queue.max(1));
            let alive = Arc::new(AtomicBool::new(true));
            senders.insert(d.id.clone(), Sender { tx, alive: alive.clone(), target: current });
            tokio::spawn(deliver(shared.clone(), d.clone(), target, rx, alive));
        }
        let tx = senders[&d.id].tx.clone();
        out.push(Route::new(d.id, sources, tx));
    }
    out
}

/// Stops the senders no cached route uses any more (deleted destinations, quiet accounts).
pub(super) fn stop_unused(senders: &mut HashMap<String, Sender>) {
    senders.retain(|_, s| {
        let used = s.tx.strong_count() > 1 && s.alive.load(Ordering::Relaxed);
        if !used {
            s.alive.store(false, Ordering::Relaxed);
        }
        used
    });
}

/// Evaluates and renders the events some route filters or selects fields of, until the queue
/// closes; every [`SUBSCRIBED_TTL`] also lets go of what quiet accounts held.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Filtered>) {
    let mut filters: HashMap<String, Option<Arc<warren_policy::EventFilter>>> = HashMap::new();
    let mut batch = Vec::with_capacity(256);
    let mut tidy = tokio::time::interval(SUBSCRIBED_TTL);
    tidy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                let full = n == 256;
                for (ev, routes) in batch.drain(..) {
                    dispatch(&shared, &ev, &routes, &mut filters);
                }
                if !full {
                    tokio::time::sleep(GATHER).await;
                }
            }
            _ = tidy.tick() => {
                shared.accounts.events.tidy();
                if filters.len() > 10_000 {
                    filters.clear();
                }
            }
        }
    }
}

/// Offers `ev` to each of `routes` that filters it or selects fields: re-rendered where the
/// source selects fields (the routes that take it whole had it from the request path).
fn dispatch(
    shared: &Shared,
    ev: &TrafficEvent,
    routes: &[Route],
    filters: &mut HashMap<String, Option<Arc<warren_policy::EventFilter>>>,
) {
    let mut parsed: Option<Option<Value>> = None;
    let object = || serde_json::from_slice::<Value>(&ev.text[ev.object.clone()]).ok();
    for route in routes.iter().filter(|r| r.takes(ev.event_type) == Takes::Filtered) {
        let matching = route.sources.iter().filter(|s| s.kind == ev.event_type);
        // As for the outbox's events: the first source whose filter passes decides the fields.
        let mut chosen = None;
        for s in matching {
            if s.filter.is_empty() {
                chosen = Some(s);
                break;
            }
            let Some(object) = parsed.get_or_insert_with(object).as_ref() else { break };
            let f = filters
                .entry(s.filter.clone())
                .or_insert_with(|| warren_policy::EventFilter::compile(&s.filter).ok().map(Arc::new));
            if f.as_ref().is_some_and(|f| f.matches(object)) {
                chosen = Some(s);
                break;
            }
        }
        let Some(source) = chosen else { continue };
        let text = if source.fields.is_empty() {
            ev.text.clone()
        } else {
            let Some(object) = parsed.get_or_insert_with(object).as_ref() else { continue };
            let selected = super::deliver::select(object, &source.fields);
            json!({
                "event_id": ev.part(&ev.id),
                "event_type": ev.event_type,
                "event_timestamp": ev.part(&ev.timestamp),
                "account_id": ev.part(&ev.account),
                "object": selected,
            })
            .to_string()
            .into()
        };
        if !route.offer(text) {
            shared.metrics.traffic_events_dropped.inc();
        }
    }
}
/// Sends one destination's traffic events in batches while it is routed to.
async fn deliver(
    shared: Arc<Shared>,
    d: EventDestination,
    target: Target,
    mut rx: mpsc::Receiver<Outgoing>,
    alive: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut backoff = Duration::from_secs(1);
    let (mut counted, mut since) = (0i64, Instant::now());
    let limit = if matches!(target, Target::File { .. }) { MAX_BATCH } else { 100 };
    let buffers = shared.accounts.events.buffers();
    let mut closed = false;
    loop {
        if batch.is_empty() && !closed {
            tokio::select! {
                n = rx.recv_many(&mut batch, limit) => closed = n == 0,
                _ = tokio::time::sleep(COUNT_EVERY), if counted > 0 => {}
            }
        }
        let stopping = closed || !alive.load(Ordering::Relaxed) && rx.is_empty();
        if !batch.is_empty() {
            match send(&shared, &d, &target, &batch, false).await {
                Ok(()) => {
                    let n = batch.len();
                    shared
                        .metrics
                        .events_delivered
                        .get_or_create(&label("destination", &d.id))
                        .inc_by(n as u64);
                    counted += n as i64;
                    buffers.give(batch.drain(..).map(|sent| sent.text));
                    backoff = Duration::from_secs(1);
                    if n < limit && !stopping {
                        tokio::time::sleep(GATHER).await;
                    }
                }
                Err(err) => {
                    shared.metrics.event_failures.get_or_create(&label("destination", &d.id)).inc();
                    let why = format!("traffic events: {}", err.text());
                    tracing::info!(destination = %d.id, error = %why, "traffic event delivery failed; retrying");
                    if shared.store.traffic_events_failed(&d.id, &why).await.is_err() {
                        shared.metrics.store_errors.inc();
                    }
                    if matches!(err, SendError::Refused(_)) || stopping {
                        // Refused: the destination answered and will not take these. Stopping:
                        // nobody is left to retry them.
                        shared.metrics.traffic_events_dropped.inc_by(batch.len() as u64);
                        batch.clear();
                    }
                    if !stopping {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        if counted > 0 && (since.elapsed() >= COUNT_EVERY || stopping) {
            if shared.store.traffic_events_delivered(&d.id, counted).await.is_err() {
                shared.metrics.store_errors.inc();
            }
            (counted, since) = (0, Instant::now());
        }
        if stopping && batch.is_empty() {
            return;
        }
    }
}
