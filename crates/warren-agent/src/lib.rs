//! The warren agent: dials the edge over TLS, authenticates, binds endpoints and forwards each
//! proxy stream to its upstream. It reconnects with capped exponential backoff and re-binds
//! its endpoints, presenting its previous session id so the edge hands them over at once.
//!
//! # Layout
//! - [`config`]: [`AgentConfig`], endpoints and upstreams, parsed from CLI-style arguments.
//! - `connect`: TLS to the edge, Auth, Bind.
//! - `forward`: proxy streams to upstreams (raw copy, or HTTP with a Host rewrite).
//! - `tls`: rustls client configs for the edge and for upstreams.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod config;
pub mod config_file;
mod connect;
mod forward;
mod tls;

pub use config::{AgentConfig, ConnectCas, EndpointConfig, EndpointProto, Upstream, UpstreamScheme};
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
}

impl Agent {
    /// Starts the agent in the background.
    pub fn start(config: AgentConfig) -> Agent {
        let (status_tx, status) = watch::channel(Status::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let r = connect::run(config, status_tx.clone(), stop_rx).await;
            status_tx.send_replace(Status::Stopped(r.clone().err()));
            r
        });
        Agent { status, stop, task }
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
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(Ok(()))
    }

    /// Runs until the agent stops by itself (fatal error or stopped by the edge).
    pub async fn join(self) -> Result<(), AgentError> {
        self.task.await.unwrap_or(Ok(()))
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
