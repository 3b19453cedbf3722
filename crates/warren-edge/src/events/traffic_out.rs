//! Traffic events leave from the node that saw them, straight from memory. They never enter
//! the outbox: writing every request to the database, reading it back, parsing and
//! re-rendering it cost visitors half their throughput, and traffic events may be dropped
//! anyway (audit events, which may not, keep the outbox and its cursors).
//!
//! One dispatcher takes events from the request path's queue, finds the destinations of the
//! event's account whose subscriptions take its type (cached, like the request path's view of
//! what an account subscribes to), renders the envelope once per distinct (filter, fields)
//! choice, and offers it to each destination's own bounded queue. One task per destination
//! sends batches; a slow or dead destination fills only its own queue, whose overflow is
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
        let epoch = shared.events.routes_epoch();
        for ev in batch.drain(..) {
            let fresh = routes
                .get(&ev.account_id)
                .filter(|(at, e, _)| *e == epoch && at.elapsed() < SUBSCRIBED_TTL)
                .map(|(_, _, r)| r.clone());
            let account_routes = match fresh {
                Some(r) => r,
                None => {
                    let r = Arc::new(load_routes(&shared, &ev.account_id, &mut senders).await);
                    if routes.len() > 10_000 {
                        routes.clear();
                    }
                    routes.insert(ev.account_id.clone(), (Instant::now(), epoch, r.clone()));
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

/// Renders `ev` for each route that takes it and offers it to the route's sender.
fn dispatch(
    shared: &Shared,
    ev: &TrafficEvent,
    routes: &[Route],
    filters: &mut HashMap<String, Option<Arc<warren_policy::EventFilter>>>,
) {
    let mut parsed: Option<Option<Value>> = None;
    let id = warren_store::generate_id("ev");
    let timestamp =
        warren_store::rfc3339(ev.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    for route in routes {
        let matching = route.sources.iter().filter(|s| s.kind == ev.event_type);
        // As for the outbox's events: the first source whose filter passes decides the fields.
        let mut chosen = None;
        for s in matching {
            if s.filter.is_empty() {
                chosen = Some(s);
                break;
            }
            let object = parsed.get_or_insert_with(|| serde_json::from_str(&ev.object).ok());
            let Some(object) = object.as_ref() else { break };
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
            // The common case: the object as the request path wrote it, inside its envelope,
            // with no parsing (built per route: one copy, as a shared copy would cost too).
            envelope_text(&id, ev.event_type, &timestamp, &ev.account_id, &ev.object)
        } else {
            let object = parsed.get_or_insert_with(|| serde_json::from_str(&ev.object).ok());
            let Some(object) = object.as_ref() else { continue };
            let selected = super::deliver::select(object, &source.fields);
            json!({
                "event_id": id,
                "event_type": ev.event_type,
                "event_timestamp": timestamp,
                "account_id": ev.account_id,
                "object": selected,
            })
            .to_string()
        };
        let out = Outgoing {
            text,
            event_id: id.clone(),
            event_type: ev.event_type.to_owned(),
            account_id: ev.account_id.clone(),
            timestamp: timestamp.clone(),
        };
        if route.tx.try_send(out).is_err() {
            // This destination's queue is full (it is slow or down): only it loses events.
            shared.metrics.traffic_events_dropped.inc();
            tracing::trace!(destination = %route.destination_id, "traffic event dropped");
        }
    }
}

/// The envelope around an object that is already JSON text.
fn envelope_text(id: &str, event_type: &str, timestamp: &str, account_id: &str, object: &str) -> String {
    // Strings quoted straight into the text (no string per field).
    let mut out = Vec::with_capacity(object.len() + 160);
    let q = |out: &mut Vec<u8>, key: &[u8], s: &str| {
        out.extend_from_slice(key);
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    };
    q(&mut out, b"{\"event_id\":", id);
    q(&mut out, b",\"event_type\":", event_type);
    q(&mut out, b",\"event_timestamp\":", timestamp);
    q(&mut out, b",\"account_id\":", account_id);
    out.extend_from_slice(b",\"object\":");
    out.extend_from_slice(object.as_bytes());
    out.push(b'}');
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
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
                    batch.clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_around_a_rendered_object_is_the_json_the_outbox_path_makes() {
        let object = r#"{"conn":{"client_ip":"1.2.3.4"},"q":"a\"b"}"#;
        let text =
            envelope_text("ev_1", "http_request_complete.v0", "2026-12-03T08:04:18Z", "acc\"x", object);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!({
                "event_id": "ev_1",
                "event_type": "http_request_complete.v0",
                "event_timestamp": "2026-12-03T08:04:18Z",
                "account_id": "acc\"x",
                "object": {"conn": {"client_ip": "1.2.3.4"}, "q": "a\"b"},
            })
        );
    }
}
