//! Events: audit events (written by the store with every change, see
//! `warren_store::events`), agent session events, and traffic events (built here, by the
//! ingress), delivered to the destinations of the subscriptions that take them.
//!
//! - `types.rs`: every event type.
//! - `target.rs`: a destination's target (webhook, nats, file), checked once; `nats.rs` the
//!   NATS publisher.
//! - `deliver.rs`: one task per destination this node holds the lease of, reading the outbox
//!   behind the destination's cursor: filter, render, send, then move the cursor.
//! - `traffic_out.rs`: traffic events, sent by the node that saw them from memory, never
//!   through the outbox.
//! - this file: [`Events`], each account's cached traffic event routes, and the tasks.
//!
//! Nothing here runs on a visitor's request path but [`Events::traffic_sink`], which looks the
//! account's routes up (cached), and `TrafficSink::send`, which offers the event to bounded
//! queues (full means dropped and counted, never a slower visitor).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::Shared;

mod deliver;
pub(crate) mod nats;
mod target;
mod traffic;
mod traffic_out;
mod types;

pub(crate) use target::Target;
use traffic::TextBuffers;
pub(crate) use traffic::{ConnText, EndpointText, PendingRequest, Served, TrafficSink, tcp_closed};
pub(crate) use types::{EVENT_TYPES, HTTP_REQUEST_COMPLETE, TCP_CONNECTION_CLOSED, unknown_field};

/// The label a webhook's signing secret is sealed under.
pub(crate) const SECRET_LABEL: &str = "event destination secret";

/// How long a node trusts its cached view of an account's event routes (changes made on this
/// node apply at once; on other nodes within this).
const SUBSCRIBED_TTL: Duration = Duration::from_secs(5);

/// The event machinery an edge node shares.
pub(crate) struct Events {
    wake: Notify,
    common: Arc<SinkCommon>,
    filtered_rx: Mutex<Option<mpsc::Receiver<traffic_out::Filtered>>>,
    /// Each account's destinations that take traffic events, as last read, and when.
    routes: Mutex<HashMap<String, CachedRoutes>>,
    /// The running sender of every destination some cached route uses.
    senders: Mutex<HashMap<String, traffic_out::Sender>>,
    /// Moves on every change of subscriptions or destinations made on this node, so routes
    /// read before a change are not cached after it.
    routes_epoch: AtomicU64,
    /// The edge, to start senders with (set when the event tasks start).
    edge: OnceLock<Weak<Shared>>,
    /// Each destination's queue (`max_traffic_events_per_destination`).
    queue: usize,
}

/// When an account's routes were read, and what they were.
type CachedRoutes = (Instant, Arc<[traffic_out::Route]>);

/// What every account's traffic events share: the dispatcher's queue (events a source
/// filters or selects fields of), the count of events there was no room for, and the text
/// buffers of events already sent.
pub(crate) struct SinkCommon {
    filtered: mpsc::Sender<traffic_out::Filtered>,
    dropped: prometheus_client::metrics::counter::Counter,
    buffers: TextBuffers,
}

impl Events {
    /// `dropped` counts traffic events there was no room for.
    pub(crate) fn new(
        limits: &crate::config::Limits,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Events {
        let (filtered, rx) = mpsc::channel(limits.max_queued_traffic_events.max(1));
        Events {
            wake: Notify::new(),
            common: Arc::new(SinkCommon { filtered, dropped, buffers: TextBuffers::default() }),
            filtered_rx: Mutex::new(Some(rx)),
            routes: Mutex::default(),
            senders: Mutex::default(),
            routes_epoch: AtomicU64::new(0),
            edge: OnceLock::new(),
            queue: limits.max_traffic_events_per_destination,
        }
    }

    /// New events may be in the outbox: deliver now rather than at the next poll.
    pub(crate) fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// An account's subscriptions or destinations changed on this node.
    pub(crate) fn subscriptions_changed(&self, account_id: &str) {
        self.routes_epoch.fetch_add(1, Ordering::AcqRel);
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(account_id);
        self.wake();
    }

    /// Where traffic events of `account_id` of `event_type` go, if some destination of it
    /// takes them (its routes cached for [`SUBSCRIBED_TTL`]).
    pub(crate) async fn traffic_sink(
        &self,
        store: &warren_store::Store,
        account_id: &str,
        event_type: &str,
    ) -> Option<TrafficSink> {
        let cached = {
            let map = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            map.get(account_id).filter(|(at, _)| at.elapsed() < SUBSCRIBED_TTL).map(|(_, r)| r.clone())
        };
        let routes = match cached {
            Some(r) => r,
            None => self.load_routes(store, account_id).await,
        };
        routes
            .iter()
            .any(|r| r.takes(event_type) != traffic_out::Takes::Nothing)
            .then(|| TrafficSink { routes, common: self.common.clone() })
    }

    /// Reads an account's routes from the store and caches them, unless a change on this node
    /// came in between.
    async fn load_routes(&self, store: &warren_store::Store, account_id: &str) -> Arc<[traffic_out::Route]> {
        let epoch = self.routes_epoch.load(Ordering::Acquire);
        let edge = self.edge.get().and_then(Weak::upgrade);
        let found = store.event_routes(account_id).await.unwrap_or_else(|e| {
            if let Some(edge) = &edge {
                edge.metrics.store_errors.inc();
            }
            tracing::warn!(error = %e, "store failed while reading event destinations for traffic events");
            Vec::new()
        });
        let routes: Arc<[traffic_out::Route]> = {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            traffic_out::routes(edge.as_ref(), found, &mut senders, self.queue).into()
        };
        let mut map = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        // Not cached when a change came in between, nor before the event tasks run (no sender
        // could start: the routes would leave destinations out for a whole TTL).
        if self.routes_epoch.load(Ordering::Acquire) == epoch && edge.is_some() {
            if map.len() > 100_000 {
                map.clear();
            }
            map.insert(account_id.to_owned(), (Instant::now(), routes.clone()));
        }
        routes
    }

    /// Lets go of routes not read for a while, then stops the senders no route uses.
    fn tidy(&self) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (at, _)| at.elapsed() < 12 * SUBSCRIBED_TTL);
        traffic_out::stop_unused(&mut self.senders.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn buffers(&self) -> TextBuffers {
        self.common.buffers.clone()
    }
}

/// Runs event delivery and the traffic event senders until the edge shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let events = &shared.accounts.events;
    let _ = events.edge.set(Arc::downgrade(&shared));
    let rx = events.filtered_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rx) = rx {
        tokio::spawn(traffic_out::run(shared.clone(), rx));
    }
    tokio::spawn(prune(shared.clone()));
    deliver::run(shared).await;
}

/// Removes events every destination has handled, a day after they were written.
async fn prune(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.clone();
    loop {
        let before = warren_store::rfc3339(warren_store::unix_now().saturating_sub(86_400) as u64);
        if let Err(e) = shared.store.prune_events(&before).await {
            shared.metrics.store_errors.inc();
            tracing::warn!(error = %e, "store failed while pruning delivered events");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
    }
}
