//! Traffic events leave from the node that saw them, straight from memory. They never enter
//! the outbox: writing every request to the database, reading it back, parsing and
//! re-rendering it cost visitors half their throughput, and traffic events may be dropped
//! anyway (audit events, which may not, keep the outbox and its cursors).
//!
//! One dispatcher takes events from the request path's queue, finds the destinations of the
//! event's account whose subscriptions take its type (cached, like the request path's view of
//! what an account subscribes to), and offers each destination's own bounded queue the
//! event's text as the request path wrote it (shared, not copied), or re-rendered for a
//! source that selects fields. One task per destination sends batches; a slow or dead destination fills only its own queue, whose overflow is
//! dropped and counted, and shows its error on the resource. Every node delivers what it
//! saw, so a file destination gets one file per node, in that node's events directory.

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

/// A destination of one account, as the dispatcher routes to it.
struct Route {
    destination_id: String,
    sources: Vec<EventSource>,
    tx: mpsc::Sender<Outgoing>,
}

/// A running sender for one destination.
struct Sender {
    tx: mpsc::Sender<Outgoing>,
    alive: Arc<AtomicBool>,
    /// The destination's target and sealed secret as last read; a change starts a new sender.
    target: (String, Option<Vec<u8>>),
}

/// Takes traffic events from `rx` and sends each to the destinations that take it, until the
/// queue closes.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<TrafficEvent>) {
    let mut routes: HashMap<String, (Instant, u64, Arc<Vec<Route>>)> = HashMap::new();
    let mut senders: HashMap<String, Sender> = HashMap::new();
    let mut filters: HashMap<String, Option<Arc<warren_policy::EventFilter>>> = HashMap::new();
    let mut batch = Vec::with_capacity(256);
    let mut tidied = Instant::now();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let full = batch.len() == 256;
        let epoch = shared.accounts.events.routes_epoch();
        // One clock read per batch, not per event: routes are kept for seconds.
        let now = Instant::now();
        for ev in batch.drain(..) {
            let account_id = ev.part(&ev.account);
            let fresh = routes
                .get(account_id)
                .filter(|(at, e, _)| *e == epoch && now.saturating_duration_since(*at) < SUBSCRIBED_TTL)
                .map(|(_, _, r)| r.clone());
            let account_routes = match fresh {
                Some(r) => r,
                None => {
                    let r = Arc::new(load_routes(&shared, account_id, &mut senders).await);
                    if routes.len() > 10_000 {
                        routes.clear();
                    }
                    routes.insert(account_id.to_owned(), (Instant::now(), epoch, r.clone()));
                    r
                }
            };
            dispatch(&shared, &ev, &account_routes, &mut filters);
        }
        // Routes not read again for a while go, then the senders no route uses any more
        // (deleted destinations, quiet accounts) stop.
        if tidied.elapsed() >= SUBSCRIBED_TTL {
            tidied = Instant::now();
            routes.retain(|_, (at, _, _)| at.elapsed() < 12 * SUBSCRIBED_TTL);
            senders.retain(|_, s| {
                let used = s.tx.strong_count() > 1 && s.alive.load(Ordering::Relaxed);
                if !used {
                    s.alive.store(false, Ordering::Relaxed);
                }
                used
            });
        }
        if !full {
            tokio::time::sleep(GATHER).await;
        }
    }
}

/// Reads an account's destinations and their sources, starting a sender for each new one.
async fn load_routes(
    shared: &Arc<Shared>,
    account_id: &str,
    senders: &mut HashMap<String, Sender>,
) -> Vec<Route> {
    let found = match shared.store.event_routes(account_id).await {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::warn!(error = %e, "store failed while reading event destinations for traffic events");
            return Vec::new();
        }
    };
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
            let Some(target) = Target::from_stored(&d.target) else {
                tracing::error!(destination = %d.id, "event destination has an unreadable target; not delivering");
                continue;
            };
            let (tx, rx) = mpsc::channel(shared.config.limits.max_traffic_events_per_destination.max(1));
            let alive = Arc::new(AtomicBool::new(true));
            senders.insert(d.id.clone(), Sender { tx, alive: alive.clone(), target: current });
            tokio::spawn(deliver(shared.clone(), d.clone(), target, rx, alive));
        }
        let tx = senders[&d.id].tx.clone();
        out.push(Route { destination_id: d.id, sources, tx });
    }
    out
}

/// Offers `ev` to each route that takes it: its text as it is (shared, not copied) where the
/// source takes the whole object, re-rendered where it selects fields.
fn dispatch(
    shared: &Shared,
    ev: &TrafficEvent,
    routes: &[Route],
    filters: &mut HashMap<String, Option<Arc<warren_policy::EventFilter>>>,
) {
    let mut parsed: Option<Option<Value>> = None;
    let object = || serde_json::from_slice::<Value>(&ev.text[ev.object.clone()]).ok();
    for route in routes {
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
        if route.tx.try_send(Outgoing { text }).is_err() {
            // This destination's queue is full (it is slow or down): only it loses events.
            shared.metrics.traffic_events_dropped.inc();
            tracing::trace!(destination = %route.destination_id, "traffic event dropped");
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
    let buffers = shared.accounts.events.sink.buffers.clone();
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
                    for sent in batch.drain(..) {
                        buffers.give(sent.text);
                    }
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
