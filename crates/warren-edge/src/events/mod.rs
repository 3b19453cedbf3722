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
//! - this file: [`Events`], the traffic event queue (bounded; full means dropped and
//!   counted, never a slower visitor), and the tasks.
//!
//! Nothing here runs on a visitor's request path but [`Events::traffic`], which only looks a
//! cached set up and offers the event to a bounded queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
pub(crate) use traffic::{PendingRequest, Served, TrafficSink, tcp_closed};
pub(crate) use types::{EVENT_TYPES, HTTP_REQUEST_COMPLETE, TCP_CONNECTION_CLOSED, unknown_field};

/// The label a webhook's signing secret is sealed under.
pub(crate) const SECRET_LABEL: &str = "event destination secret";

/// How long a node trusts its cached view of which event types an account subscribes to
/// (changes made on this node apply at once; on other nodes within this).
const SUBSCRIBED_TTL: Duration = Duration::from_secs(5);

/// The event machinery an edge node shares.
pub(crate) struct Events {
    wake: Notify,
    sink: TrafficSink,
    traffic_rx: Mutex<Option<mpsc::Receiver<traffic::TrafficEvent>>>,
    subscribed: Mutex<HashMap<String, Subscribed>>,
    /// Moves on every change of subscriptions or destinations made on this node, so the
    /// traffic event senders read their routes again at once.
    routes_epoch: AtomicU64,
}

/// When an account's subscribed event types were read, and what they were.
type Subscribed = (Instant, Arc<Vec<String>>);

impl Events {
    /// `dropped` counts traffic events there was no room for.
    pub(crate) fn new(
        limits: &crate::config::Limits,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Events {
        let (traffic_tx, rx) = mpsc::channel(limits.max_queued_traffic_events.max(1));
        Events {
            wake: Notify::new(),
            sink: TrafficSink { tx: traffic_tx, dropped, buffers: Default::default() },
            traffic_rx: Mutex::new(Some(rx)),
            subscribed: Mutex::default(),
            routes_epoch: AtomicU64::new(0),
        }
    }

    fn routes_epoch(&self) -> u64 {
        self.routes_epoch.load(Ordering::Acquire)
    }

    /// New events may be in the outbox: deliver now rather than at the next poll.
    pub(crate) fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// An account's subscriptions changed on this node.
    pub(crate) fn subscriptions_changed(&self, account_id: &str) {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner()).remove(account_id);
        self.routes_epoch.fetch_add(1, Ordering::AcqRel);
        self.wake();
    }

    /// Whether some subscription of `account_id` takes events of `event_type` (cached).
    pub(crate) async fn wants(
        &self,
        store: &warren_store::Store,
        account_id: &str,
        event_type: &str,
    ) -> bool {
        let cached = {
            let map = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
            map.get(account_id).filter(|(at, _)| at.elapsed() < SUBSCRIBED_TTL).map(|(_, t)| t.clone())
        };
        let types = match cached {
            Some(t) => t,
            None => {
                let t = Arc::new(store.subscribed_types(account_id).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "store failed while reading event subscriptions");
                    Vec::new()
                }));
                let mut map = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
                if map.len() > 100_000 {
                    map.clear();
                }
                map.insert(account_id.to_owned(), (Instant::now(), t.clone()));
                t
            }
        };
        types.iter().any(|t| t == event_type)
    }

    /// Where traffic events of `account_id` of `event_type` go, if it subscribes to them.
    pub(crate) async fn traffic_sink(
        &self,
        store: &warren_store::Store,
        account_id: &str,
        event_type: &str,
    ) -> Option<TrafficSink> {
        self.wants(store, account_id, event_type).await.then(|| self.sink.clone())
    }
}

/// Runs event delivery and the traffic event senders until the edge shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let rx = shared.accounts.events.traffic_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
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
