//! What a running agent knows, shared by the session loop, the forwarders, the local API and
//! the console: its endpoints (which can be added and removed while it runs), their
//! figures, the inspector and the session's details.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use crate::Status;
use crate::config::{AgentConfig, EndpointConfig};
use crate::inspect::Inspector;
use crate::metrics::Metrics;

/// An endpoint of the running agent.
pub struct LiveEndpoint {
    /// Id used on the wire (Bind's `Id`), unique in this agent.
    pub id: String,
    /// The endpoint's name (from the config file, the API, or `command_line`).
    pub name: String,
    /// Its configuration.
    pub config: EndpointConfig,
    /// Traffic figures.
    pub metrics: Metrics,
    /// When it was added.
    pub created: SystemTime,
    url: Mutex<String>,
}

impl LiveEndpoint {
    /// The public URL, empty until the edge bound it.
    pub fn url(&self) -> String {
        self.url.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_url(&self, url: &str) {
        *self.url.lock().unwrap_or_else(|e| e.into_inner()) = url.to_owned();
    }

    /// True when requests are captured for the inspector.
    pub fn inspected(&self, shared: &Shared) -> bool {
        shared.inspector.is_some() && self.config.inspect && self.config.proto.is_http()
    }
}

/// Details the edge gave at Auth.
#[derive(Clone, Debug, Default)]
pub struct SessionInfo {
    /// Account name.
    pub account: String,
    /// Region or node.
    pub region: String,
    /// Last heartbeat round trip.
    pub latency: Option<Duration>,
}

/// A change asked of the session loop (from the local API).
pub(crate) enum Control {
    /// Bind a new endpoint; replies with it once bound.
    Add(Arc<LiveEndpoint>, oneshot::Sender<Result<(), String>>),
    /// Release an endpoint.
    Remove(Arc<LiveEndpoint>, oneshot::Sender<Result<(), String>>),
}

/// State shared by the agent's tasks.
pub struct Shared {
    /// The configuration the agent started with.
    pub config: AgentConfig,
    /// Endpoints in the order they were added.
    endpoints: RwLock<Vec<Arc<LiveEndpoint>>>,
    /// The request inspector; `None` when inspection is off (`inspect_db_size: -1`).
    pub inspector: Option<Arc<Inspector>>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) control: mpsc::Sender<Control>,
    session: Mutex<SessionInfo>,
    next_id: AtomicU64,
    /// Endpoints the edge refused and `keep_going` dropped: (name, the edge's reason).
    refused: Mutex<Vec<(String, String)>>,
}

impl Shared {
    pub(crate) fn new(
        config: AgentConfig,
        status: watch::Sender<Status>,
        control: mpsc::Sender<Control>,
    ) -> Arc<Shared> {
        // Captures nobody can see are not kept: no web address, no inspector.
        let inspector = match config.inspect_db_size {
            _ if config.web_addr.is_none() => None,
            n if n < 0 => None,
            0 => Some(Arc::new(Inspector::new(crate::inspect::DEFAULT_DB_SIZE))),
            n => Some(Arc::new(Inspector::new(usize::try_from(n).unwrap_or(usize::MAX)))),
        };
        let shared = Arc::new(Shared {
            endpoints: RwLock::default(),
            inspector,
            status,
            control,
            session: Mutex::default(),
            next_id: AtomicU64::new(0),
            refused: Mutex::default(),
            config,
        });
        for (i, ep) in shared.config.endpoints.iter().enumerate() {
            let mut ep = ep.clone();
            if ep.name.is_empty() {
                ep.name = if i == 0 { "command_line".into() } else { format!("command_line_{i}") };
            }
            let live = shared.new_endpoint(ep);
            shared.write().push(live);
        }
        shared
    }

    /// A new endpoint with a fresh wire id (not yet added).
    pub(crate) fn new_endpoint(&self, config: EndpointConfig) -> Arc<LiveEndpoint> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(LiveEndpoint {
            id: format!("ep{n}"),
            name: config.name.clone(),
            config,
            metrics: Metrics::default(),
            created: SystemTime::now(),
            url: Mutex::default(),
        })
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> Vec<Arc<LiveEndpoint>> {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The endpoint with this name.
    pub fn endpoint(&self, name: &str) -> Option<Arc<LiveEndpoint>> {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).iter().find(|e| e.name == name).cloned()
    }

    /// The endpoint with this wire id (the proxy path: a short linear scan, endpoints are few).
    pub(crate) fn endpoint_by_id(&self, id: &str) -> Option<Arc<LiveEndpoint>> {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).iter().find(|e| e.id == id).cloned()
    }

    pub(crate) fn add(&self, ep: Arc<LiveEndpoint>) {
        self.write().push(ep);
    }

    pub(crate) fn remove(&self, id: &str) {
        self.write().retain(|e| e.id != id);
    }

    /// Drops an endpoint the edge refused, keeping why (`keep_going`).
    pub(crate) fn refuse(&self, ep: &LiveEndpoint, why: &str) {
        self.remove(&ep.id);
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).push((ep.name.clone(), why.to_owned()));
    }

    /// The endpoints the edge refused and the agent dropped to keep the others up:
    /// (name, the edge's reason).
    pub fn refused(&self) -> Vec<(String, String)> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The agent's status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Details the edge gave.
    pub fn session(&self) -> SessionInfo {
        self.session.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_session(&self, f: impl FnOnce(&mut SessionInfo)) {
        f(&mut self.session.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Publishes `Online` with the current URLs.
    pub(crate) fn publish_online(&self, session_id: &str) {
        let urls = self.endpoints().iter().map(|e| e.url()).collect();
        self.status.send_replace(Status::Online { session_id: session_id.to_owned(), urls });
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<LiveEndpoint>>> {
        self.endpoints.write().unwrap_or_else(|e| e.into_inner())
    }
}
