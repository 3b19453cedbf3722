//! Prometheus metrics (OpenMetrics text), served at `/metrics` on the API listener to the
//! addresses of `--metrics-allow` only: they describe every account of the edge, so they are
//! the operator's, not a tenant's.
//!
//! Hot paths hold handles, not names: an endpoint gets its counters and histogram once, at
//! Bind ([`Metrics::endpoint`]), and a request costs a few atomic adds. Gauges of live state
//! (sessions, endpoints, connections, certificates) are read when scraped. Series of
//! endpoints that are gone are dropped at the next scrape, so random URLs do not pile up.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Shared;

type Labels = Vec<(&'static str, String)>;

fn latency() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of the edge.
pub(crate) struct Metrics {
    registry: Registry,
    sessions: Gauge,
    endpoints: Family<Labels, Gauge>,
    visitor_connections: Gauge,
    agent_connections: Gauge,
    requests: Family<Labels, Counter>,
    request_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    connections: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    /// Verdicts of traffic policies: `continue`, `respond`, `close`, `sign_in`.
    policy_verdicts: Family<Labels, Counter>,
    verdicts: [Counter; 5],
    pub(crate) events_delivered: Family<Labels, Counter>,
    pub(crate) event_failures: Family<Labels, Counter>,
    pub(crate) events_parked: Family<Labels, Counter>,
    pub(crate) event_lag_seconds: Family<Labels, Gauge>,
    /// Traffic events dropped (queue or outbox full).
    pub(crate) traffic_events_dropped: Counter,
    certificate_expiry: Family<Labels, Gauge>,
    /// Store calls that failed where the edge had to go on without an answer.
    pub(crate) store_errors: Counter,
    /// Visitors this node could not relay to the node holding their endpoint.
    pub(crate) relay_failures: Counter,
    /// Endpoint URLs that have series, to drop those of endpoints that are gone.
    endpoint_urls: Mutex<HashSet<String>>,
}

/// One endpoint's handles, taken at Bind.
#[derive(Clone)]
pub(crate) struct EndpointMetrics {
    by_class: [Counter; 5],
    seconds: Histogram,
    connections: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// Handles registered nowhere (an endpoint made outside a Bind, in tests).
impl Default for EndpointMetrics {
    fn default() -> Self {
        EndpointMetrics {
            by_class: Default::default(),
            seconds: latency(),
            connections: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
        }
    }
}

impl EndpointMetrics {
    /// An HTTP request answered with `status` after `elapsed` (to the response head).
    pub(crate) fn request(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.seconds.observe(elapsed.as_secs_f64());
    }

    /// HTTP requests answered so far, and how many of them with a 5xx.
    pub(crate) fn request_totals(&self) -> (u64, u64) {
        (self.by_class.iter().map(Counter::get).sum(), self.by_class[4].get())
    }

    /// A tcp or tls connection that carried `bytes_in` from the visitor and `bytes_out` to it.
    pub(crate) fn connection(&self, bytes_in: u64, bytes_out: u64) {
        self.connections.inc();
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warren");
        let m = Metrics {
            sessions: Gauge::default(),
            endpoints: Family::default(),
            visitor_connections: Gauge::default(),
            agent_connections: Gauge::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            connections: Family::default(),
            bytes: Family::default(),
            policy_verdicts: Family::default(),
            verdicts: Default::default(),
            events_delivered: Family::default(),
            event_failures: Family::default(),
            events_parked: Family::default(),
            event_lag_seconds: Family::default(),
            traffic_events_dropped: Counter::default(),
            certificate_expiry: Family::default(),
            store_errors: Counter::default(),
            relay_failures: Counter::default(),
            endpoint_urls: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("agent_sessions", "Agent sessions on this node", m.sessions.clone());
        registry.register("endpoints", "Endpoints bound on this node, by protocol", m.endpoints.clone());
        registry.register(
            "visitor_connections",
            "Visitor connections open now, every ingress",
            m.visitor_connections.clone(),
        );
        registry.register(
            "agent_connections",
            "Agent connections open now, authenticated or not",
            m.agent_connections.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by endpoint and status class",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response head, by endpoint",
            m.request_seconds.clone(),
        );
        registry.register(
            "tcp_connections",
            "Visitor connections of tcp and tls endpoints, by endpoint",
            m.connections.clone(),
        );
        registry.register(
            "bytes",
            "Bytes carried for tcp and tls endpoints, by endpoint and direction",
            m.bytes.clone(),
        );
        registry.register(
            "policy_verdicts",
            "Traffic policy verdicts, by verdict",
            m.policy_verdicts.clone(),
        );
        registry.register("events_delivered", "Events delivered, by destination", m.events_delivered.clone());
        registry.register(
            "event_delivery_failures",
            "Failed event deliveries, by destination",
            m.event_failures.clone(),
        );
        registry.register(
            "events_parked",
            "Events set aside after a destination refused them, by destination",
            m.events_parked.clone(),
        );
        registry.register(
            "event_delivery_lag_seconds",
            "Age of the oldest event a destination has not taken yet (0 when it is up to date)",
            m.event_lag_seconds.clone(),
        );
        registry.register(
            "traffic_events_dropped",
            "Traffic events dropped because the queue or the outbox was full",
            m.traffic_events_dropped.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each certificate the edge serves for a domain (ACME or uploaded) expires",
            m.certificate_expiry.clone(),
        );
        registry.register("store_errors", "Store calls that failed", m.store_errors.clone());
        registry.register(
            "relay_failures",
            "Visitors that could not be relayed to the cluster node holding their endpoint",
            m.relay_failures.clone(),
        );
        let mut verdicts: [Counter; 5] = Default::default();
        for (slot, v) in
            verdicts.iter_mut().zip(["continue", "respond", "close", "sign_in", "forward_internal"])
        {
            let c = m.policy_verdicts.get_or_create(&label("verdict", v)).clone();
            *slot = c;
        }
        Metrics { registry, verdicts, ..m }
    }

    /// Counts a traffic policy's verdict.
    pub(crate) fn verdict(&self, v: &warren_policy::Verdict) {
        let i = match v {
            warren_policy::Verdict::Continue => 0,
            warren_policy::Verdict::Respond(_) => 1,
            warren_policy::Verdict::Close => 2,
            warren_policy::Verdict::Exchange(_) => 3,
            warren_policy::Verdict::ForwardInternal(_) => 4,
        };
        self.verdicts[i].inc();
    }

    /// The handles of the endpoint at `url`; its scheme is the `proto` label.
    pub(crate) fn endpoint(&self, url: &str) -> EndpointMetrics {
        let proto = url.split("://").next().unwrap_or_default();
        self.endpoint_urls.lock().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned());
        let l = |k: &'static str, v: &str| {
            vec![("endpoint", url.to_owned()), ("proto", proto.to_owned()), (k, v.to_owned())]
        };
        // One statement per handle: a family's read guard lives to the end of its statement,
        // and taking another series of the same family in that statement would deadlock.
        let mut by_class: [Counter; 5] = Default::default();
        for (slot, class) in by_class.iter_mut().zip(["1xx", "2xx", "3xx", "4xx", "5xx"]) {
            let c = self.requests.get_or_create(&l("code", class)).clone();
            *slot = c;
        }
        let seconds = self.request_seconds.get_or_create(&vec![("endpoint", url.to_owned())]).clone();
        let connections = self.connections.get_or_create(&vec![("endpoint", url.to_owned())]).clone();
        let bytes_in = self.bytes.get_or_create(&l("direction", "in")).clone();
        let bytes_out = self.bytes.get_or_create(&l("direction", "out")).clone();
        EndpointMetrics { by_class, seconds, connections, bytes_in, bytes_out }
    }

    /// The text a scrape gets, after reading the live gauges.
    pub(crate) async fn render(&self, shared: &Shared) -> String {
        self.sessions.set(shared.sessions.registry.session_count() as i64);
        let live = shared.sessions.registry.endpoint_urls();
        self.endpoints.clear();
        for (_, proto) in &live {
            self.endpoints.get_or_create(&vec![("proto", (*proto).to_owned())]).inc();
        }
        self.visitor_connections.set(shared.listeners.visitor_limit.in_use() as i64);
        self.agent_connections.set(shared.sessions.limit.in_use() as i64);
        self.forget_gone(&live);
        match shared.store.all_certificates().await {
            Ok(certs) => {
                self.certificate_expiry.clear();
                for c in certs {
                    self.certificate_expiry.get_or_create(&vec![("domain", c.domain)]).set(c.not_after);
                }
            }
            Err(e) => {
                self.store_errors.inc();
                tracing::warn!(error = %e, "store failed while reading certificates for metrics");
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Drops the series of endpoints no longer bound.
    fn forget_gone(&self, live: &[(String, &'static str)]) {
        let live: HashSet<&str> = live.iter().map(|(u, _)| u.as_str()).collect();
        let mut urls = self.endpoint_urls.lock().unwrap_or_else(|e| e.into_inner());
        urls.retain(|url| {
            if live.contains(url.as_str()) {
                return true;
            }
            let proto = url.split("://").next().unwrap_or_default().to_owned();
            for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                self.requests.remove(&vec![
                    ("endpoint", url.clone()),
                    ("proto", proto.clone()),
                    ("code", class.to_owned()),
                ]);
            }
            for dir in ["in", "out"] {
                self.bytes.remove(&vec![
                    ("endpoint", url.clone()),
                    ("proto", proto.clone()),
                    ("direction", dir.to_owned()),
                ]);
            }
            self.request_seconds.remove(&vec![("endpoint", url.clone())]);
            self.connections.remove(&vec![("endpoint", url.clone())]);
            false
        });
    }
}

/// One label.
pub(crate) fn label(k: &'static str, v: &str) -> Labels {
    vec![(k, v.to_owned())]
}
