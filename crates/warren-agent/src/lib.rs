//! The warren agent: dials the edge over TLS, authenticates, binds endpoints and forwards each
//! proxy stream to its upstream. It reconnects with capped exponential backoff and re-binds
//! its endpoints, presenting its previous session id so the edge hands them over at once.
//!
//! # Layout
//! - [`config`]: [`AgentConfig`], endpoints and upstreams, parsed from CLI-style arguments.
//! - `connect`: TLS to the edge, Auth, Bind.
//! - `forward`: proxy streams to upstreams (raw copy, or HTTP when inspected or with a Host
//!   rewrite), and replays.
//! - `state`: what the running agent shares: endpoints (added and removed at run time),
//!   their figures, the session's details.
//! - [`inspect`]: the bounded store of captured HTTP exchanges.
//! - [`metrics`]: connection and request counts, rates and percentiles.
//! - [`web`]: the inspector page and the local API on `web_addr`.
//! - `tls`: rustls client configs for the edge and for upstreams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub mod config;
pub mod config_file;
mod connect;
pub mod console;
pub mod dns;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod locate;
pub mod metrics;
mod state;
mod tls;
mod tunnels;
pub mod web;

pub use config::{AgentConfig, ConnectCas, EndpointConfig, EndpointProto, Upstream, UpstreamScheme};
pub use state::{LiveEndpoint, SessionInfo, Shared};
pub use tls::agent_termination;

/// Why the agent stopped for good (failures worth retrying are retried, not returned).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The edge refused the authtoken.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The edge refused an endpoint on the first connect.
    #[error("endpoint refused: {0}")]
    Bind(String),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The edge told the agent to stop.
    #[error("stopped by the edge")]
    StoppedByEdge,
}

/// What the agent is doing, for the CLI and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Dialing the edge for the first time.
    Connecting,
    /// Authenticated with every endpoint bound; URLs in configuration order.
    Online {
        /// The session id the edge gave.
        session_id: String,
        /// Public URLs.
        urls: Vec<String>,
    },
    /// The session was lost; retrying after `delay`.
    Reconnecting {
        /// Why the last attempt failed.
        error: String,
        /// When the next attempt starts.
        delay: Duration,
    },
    /// Stopped, with the fatal error if any.
    Stopped(Option<AgentError>),
}

/// A running agent.
pub struct Agent {
    status: watch::Receiver<Status>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
    shared: Arc<Shared>,
    web: Result<Option<SocketAddr>, String>,
    background: Vec<JoinHandle<()>>,
    /// `ha`'s second session, which serves the same endpoints (pooled) from its own.
    companion: Option<Box<Agent>>,
}

impl Agent {
    /// Starts the agent in the background: the session, and the inspector and local API
    /// when `web_addr` is set (a web address that cannot be bound is reported by
    /// [`Agent::web_addr`], and the agent runs without it).
    pub fn start(mut config: AgentConfig) -> Agent {
        let companion = config.ha.then(|| {
            // Both sessions serve every endpoint: each joins the pool on its URL.
            for ep in &mut config.endpoints {
                ep.pooling = true;
            }
            config.ha_peer = Some(Arc::new(config::HaPeer::default()));
            let mut second = config.clone();
            second.ha = false;
            second.dial_rotation = config.dial_rotation + 1;
            // The first session's inspector and local API show the agent.
            second.web_addr = None;
            second.inspect_db_size = -1;
            Box::new(Agent::start(second))
        });
        let (status_tx, status) = watch::channel(Status::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        // One change at a time: the API waits for each answer.
        let (control_tx, control_rx) = mpsc::channel(1);
        let shared = Shared::new(config, status_tx, control_tx);
        let mut background = Vec::new();
        let web = match shared.config.web_addr {
            None => Ok(None),
            Some(addr) => match web::serve(shared.clone(), addr, shared.config.web_addr_fallback) {
                Ok((local, task)) => {
                    tracing::info!(addr = %local, "inspector and local API listening");
                    background.push(task);
                    Ok(Some(local))
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "the inspector could not listen; running without it");
                    Err(format!("cannot listen on {addr}: {e}"))
                }
            },
        };
        let ticker = shared.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(metrics::TICK);
            tick.tick().await;
            loop {
                tick.tick().await;
                for ep in ticker.endpoints() {
                    ep.metrics.tick();
                }
            }
        }));
        let run_shared = shared.clone();
        let task = tokio::spawn(async move {
            let r = connect::run(run_shared.clone(), control_rx, stop_rx).await;
            run_shared.status.send_replace(Status::Stopped(r.clone().err()));
            r
        });
        Agent { status, stop, task, shared, web, background, companion }
    }

    /// Where the inspector and local API listen: `Ok(None)` when turned off, `Err` when the
    /// address could not be bound.
    pub fn web_addr(&self) -> Result<Option<SocketAddr>, String> {
        self.web.clone()
    }

    /// What the status console shows now, with at most `requests` recent requests.
    pub fn snapshot(&self, requests: usize) -> console::Snapshot {
        let shared = &self.shared;
        let session = shared.session();
        let session_status = match shared.status() {
            Status::Connecting => "connecting".to_owned(),
            Status::Online { .. } => "online".to_owned(),
            Status::Reconnecting { error, delay } => format!("reconnecting (in {delay:.1?}: {error})"),
            Status::Stopped(None) => "stopped".to_owned(),
            Status::Stopped(Some(e)) => format!("stopped: {e}"),
        };
        let endpoints = shared.endpoints();
        let mut conns = console::ConnStats::default();
        let (mut p50, mut p90) = (None, None);
        for e in &endpoints {
            let m = &e.metrics;
            conns.total += m.conns.count();
            conns.open += m.open.load(std::sync::atomic::Ordering::Relaxed);
            let (r1, r5, _) = m.conns.rates();
            conns.rate1 += r1;
            conns.rate5 += r5;
            // Across endpoints the slowest endpoint's percentile is the honest summary.
            p50 = p50.max(m.conn_durations.quantile(0.5));
            p90 = p90.max(m.conn_durations.quantile(0.9));
        }
        conns.p50 = p50;
        conns.p90 = p90;
        let requests = shared
            .inspector
            .as_ref()
            .map(|i| i.list(None, requests))
            .unwrap_or_default()
            .iter()
            .map(|ex| {
                let d = ex.data();
                let since = ex.started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let stamp = warren_proto::rfc3339(since.as_secs());
                console::RequestLine {
                    time: format!("{}.{:03}", &stamp[11..19], since.subsec_millis()),
                    method: d.method.to_string(),
                    path: d.uri,
                    status: d.response.as_ref().map(|r| r.0.as_u16()),
                    status_text: d
                        .response
                        .as_ref()
                        .and_then(|r| r.0.canonical_reason())
                        .unwrap_or("")
                        .to_owned(),
                    duration: d.duration,
                }
            })
            .collect();
        console::Snapshot {
            session_status,
            account: session.account,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            connect_url: shared.config.connect_url.clone(),
            region: session.region,
            latency: session.latency,
            web_interface: self.web.clone().ok().flatten().map(|a| format!("http://{a}")),
            endpoints: endpoints
                .iter()
                .map(|e| console::EndpointLine { url: e.url(), upstream: e.config.upstream.to_string() })
                .chain(shared.refused().into_iter().map(|(name, why)| console::EndpointLine {
                    url: format!("{name} refused"),
                    upstream: why,
                }))
                .collect(),
            conns,
            requests,
        }
    }

    /// The agent's shared state (endpoints, figures, inspector), for the console.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A receiver of status changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until every endpoint is bound and returns the public URLs, or the fatal error.
    pub async fn wait_online(&mut self) -> Result<Vec<String>, AgentError> {
        loop {
            match &*self.status.borrow_and_update() {
                Status::Online { urls, .. } => return Ok(urls.clone()),
                Status::Stopped(Some(e)) => return Err(e.clone()),
                Status::Stopped(None) => return Err(AgentError::StoppedByEdge),
                _ => {}
            }
            if self.status.changed().await.is_err() {
                return Err(AgentError::StoppedByEdge);
            }
        }
    }

    /// Waits for the next status change that is not the current one.
    pub async fn next_status(&mut self) -> Status {
        let _ = self.status.changed().await;
        self.status.borrow_and_update().clone()
    }

    /// Stops the agent (the session is closed with GOAWAY) and waits for it.
    pub async fn stop(mut self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        // Both sessions stop at once (the companion has no companion of its own).
        let mut companion = self.companion.take();
        if let Some(c) = &companion {
            let _ = c.stop.send(true);
        }
        let r = (&mut self.task).await.unwrap_or(Ok(()));
        if let Some(c) = &mut companion {
            let _ = (&mut c.task).await;
        }
        r
    }

    /// `ha`'s second session, if this agent has one.
    pub fn companion(&mut self) -> Option<&mut Agent> {
        self.companion.as_deref_mut()
    }

    /// Runs until the agent stops by itself (fatal error or stopped by the edge).
    pub async fn join(mut self) -> Result<(), AgentError> {
        (&mut self.task).await.unwrap_or(Ok(()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}

/// True when this process runs as root. The agent needs no privileges; running it as root
/// gives every upstream it forwards to a root-owned client.
pub fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        false
    }
}
