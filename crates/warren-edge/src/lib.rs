//! The warren edge: accepts agent sessions, binds their endpoints and proxies visitors to them.
//!
//! # Layout
//! - [`config`]: [`EdgeConfig`], parsed and validated once.
//! - `admin`: the one change path: every change to an account (store write with its audit
//!   event, then the caches and sessions it reaches, on every node).
//! - [`bootstrap`]: the embedded default (data directory, local CA, first authtoken and key).
//! - [`tls`]: certificates and rustls configs.
//! - `endpoint_tls`: per-endpoint TLS versions and mutual TLS at the edge.
//! - `tls_front`: the shared TLS port's ClientHello reader (routing by SNI before termination).
//! - `registry`: which session holds which endpoint.
//! - `session`: one agent session: Auth, Bind, Unbind, heartbeats.
//! - `ingress_http`, `ingress_tcp`: listeners for visitors.
//! - `ip_rules`: the cached IP restrictions every listener checks.
//! - `acme`: automatic certificates for reserved custom domains.
//! - [`sealed`]: the master key that seals private keys at rest.
//! - `node`: this node's heartbeat in the shared store, and commands from other nodes.
//! - `cluster`: relaying visitors to the node that holds their endpoint.
//! - `client_addr`, `proxy_protocol`: the client's real address behind trusted load balancers.
//!
//! [`Edge::start`] binds every listener and returns their addresses (tests use port 0);
//! [`run`] starts an edge and serves until `shutdown` resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

mod acme;
mod admin;
pub mod api;
mod bind_options;
pub mod bootstrap;
mod client_addr;
mod cloud;
mod cluster;
mod compress;
pub mod config;
mod conn_limit;
mod dashboard;
mod deadline;
mod dns;
mod dns01;
mod endpoint_tls;
mod events;
#[doc(hidden)]
pub mod fuzzing;
mod idp;
mod ingress_http;
mod ingress_tcp;
mod ip_rules;
mod metrics;
mod node;
mod policy;
mod proxy_h1;
mod proxy_protocol;
mod recent;
mod registry;
mod rules;
pub mod sealed;
mod serve_h1;
mod session;
mod throttle;
pub mod tls;
mod tls_front;

pub use config::{EdgeConfig, Hsts, Limits};
pub use warren_store::{Cidr, Store};

/// Why the edge could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The master key could not be loaded.
    #[error(transparent)]
    Seal(#[from] sealed::SealError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS material could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] warren_store::StoreError),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running edge. Dropping it does not stop it: call [`Edge::shutdown`].
pub struct Edge {
    /// Where agents connect.
    pub connect_addr: SocketAddr,
    /// The https ingress.
    pub https_addr: SocketAddr,
    /// The plain http ingress, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// The REST API, if enabled.
    pub api_addr: Option<SocketAddr>,
    /// Where this node takes relay links from the cluster's other nodes, if it does.
    pub cluster_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

/// State shared by every listener and session task: the node's own facts at the top, then
/// one part per line of the edge (ARCHITECTURE.md): the agent sessions and what they serve,
/// the public listeners, and the accounts' settings the admin layer keeps fresh. A part is
/// written by its own modules only; the others read it.
pub(crate) struct Shared {
    /// `nd_...`: this edge process in the shared store.
    pub(crate) node_id: String,
    pub(crate) config: EdgeConfig,
    pub(crate) store: Store,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Seals private keys before they reach the store.
    pub(crate) master_key: sealed::MasterKey,
    /// Prometheus metrics.
    pub(crate) metrics: metrics::Metrics,
    /// Whether the node's lease in the store is current (`/healthz`; see `node`).
    pub(crate) lease_held: std::sync::atomic::AtomicBool,
    /// The edge is about to shut down (`limits.shutdown_delay`): still serving, but
    /// `/healthz` fails.
    pub(crate) leaving: std::sync::atomic::AtomicBool,
    /// Agent sessions and what they serve (`session`, `registry`, `cloud`, `cluster`).
    pub(crate) sessions: Sessions,
    /// The public listeners' own state (`ingress_http`, `ingress_tcp`, `tls`, `acme`).
    pub(crate) listeners: Listeners,
    /// The accounts' settings as the request and session paths read them, kept fresh by the
    /// admin layer (`admin`) after every change.
    pub(crate) accounts: Accounts,
}

/// Agent sessions and what they serve.
pub(crate) struct Sessions {
    /// Every endpoint served on this node, by name.
    pub(crate) registry: registry::Registry,
    /// Cloud endpoints (no agent), every account's, compiled.
    pub(crate) cloud: cloud::CloudEndpoints,
    /// The connect listener's TLS.
    pub(crate) connect_tls: tokio_rustls::TlsAcceptor,
    /// Agent connections, authenticated or not (the connect listener and the connect
    /// hostnames on the shared TLS port).
    pub(crate) limit: conn_limit::ConnLimit,
    /// This node's part in a cluster (`cluster_addr` set): relaying to the other nodes.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
}

/// The public listeners' own state.
pub(crate) struct Listeners {
    /// The https default: TLS 1.2–1.3, no client certificates.
    pub(crate) https_tls: tokio_rustls::TlsAcceptor,
    /// What every TLS config serves, by SNI.
    pub(crate) certs: Arc<tls::CertStore>,
    /// Public port of the https ingress, for URLs.
    pub(crate) https_port: u16,
    /// Public port of the http ingress, for URLs and redirects.
    pub(crate) http_port: Option<u16>,
    /// Visitor connections, every ingress together.
    pub(crate) visitor_limit: conn_limit::ConnLimit,
    /// ACME challenge answers in flight.
    pub(crate) challenges: acme::Challenges,
    /// Keys for `jwt-validation`, by JWKS URL.
    pub(crate) idp: idp::IdpCache,
    /// Encoders `compress-response` may hold at once.
    pub(crate) compressions: Arc<tokio::sync::Semaphore>,
    /// The last requests of each account, while the dashboard's traffic view is watched.
    pub(crate) recent: recent::RecentRequests,
    /// The CA file agents trust the edge with (the local CA's, or the operator's chain).
    pub(crate) ca_cert_path: std::path::PathBuf,
}

/// The accounts' settings as the request and session paths read them.
pub(crate) struct Accounts {
    /// IP restrictions and policies, compiled, per account.
    pub(crate) ip_rules: ip_rules::IpRules,
    /// Event subscriptions: the traffic event queue, delivery wake-ups.
    pub(crate) events: events::Events,
    /// Wakes the certificate manager (a domain was reserved).
    pub(crate) acme_wake: tokio::sync::Notify,
    pub(crate) api_rate_limit: api::RateLimit,
    /// Wrong API keys and authtokens per client address.
    pub(crate) auth_failures: throttle::FailureThrottle,
}

impl Shared {
    /// What an edge node's listeners and tasks share, for the public ports they serve on;
    /// the sender stops them. The node is registered in the store.
    pub(crate) async fn new(
        config: EdgeConfig,
        store: Store,
        tls: &tls::TlsMaterial,
        https_port: u16,
        http_port: Option<u16>,
        relay_addr: Option<String>,
    ) -> Result<(Arc<Shared>, watch::Sender<bool>), EdgeError> {
        let certs = Arc::new(tls::CertStore::new(tls)?);
        if let Some((cert, key)) = &config.tls_files {
            let (chain, key) = tls::load_pem_files(cert, key)?;
            certs.set_default(chain, key)?;
        }
        let master_key = sealed::MasterKey::load(
            &config.master_key_file.clone().unwrap_or_else(|| config.data_dir.join("master.key")),
        )?;
        let node_id = warren_store::generate_id("nd");
        let cluster = match relay_addr {
            Some(addr) => {
                let tls = cluster::ca::node_tls(&store, &master_key, &node_id)
                    .await
                    .map_err(|e| EdgeError::Config(e.to_string()))?;
                Some(Arc::new(cluster::Cluster::new(tls, addr)))
            }
            None => None,
        };
        store.register_node(&node_id, cluster.as_ref().map_or("", |c| c.relay_addr.as_str())).await?;
        let (tx, rx) = watch::channel(false);
        let metrics = metrics::Metrics::new();
        let shared = Arc::new(Shared {
            node_id,
            sessions: Sessions {
                registry: registry::Registry::default(),
                cloud: cloud::CloudEndpoints::default(),
                connect_tls: tokio_rustls::TlsAcceptor::from(tls::server_config(certs.clone(), &[])?),
                limit: conn_limit::ConnLimit::new(
                    config.limits.max_sessions,
                    config.limits.max_agent_connections_per_ip,
                ),
                cluster,
            },
            listeners: Listeners {
                https_tls: tokio_rustls::TlsAcceptor::from(tls::server_config(
                    certs.clone(),
                    &[b"h2", b"http/1.1"],
                )?),
                certs,
                https_port,
                http_port,
                visitor_limit: conn_limit::ConnLimit::new(
                    config.limits.max_visitor_connections,
                    config.limits.max_visitor_connections_per_ip,
                ),
                challenges: acme::Challenges::default(),
                idp: idp::IdpCache::new(idp::Reach {
                    loopback: config.idp_allow_loopback_http,
                    private: config.idp_allow_private_networks,
                }),
                compressions: Arc::new(tokio::sync::Semaphore::new(config.limits.max_compressed_responses)),
                recent: recent::RecentRequests::default(),
                ca_cert_path: tls.ca_cert_path.clone(),
            },
            accounts: Accounts {
                ip_rules: ip_rules::IpRules::default(),
                events: events::Events::new(&config.limits, metrics.traffic_events_dropped.clone()),
                acme_wake: tokio::sync::Notify::new(),
                api_rate_limit: api::RateLimit::new(config.api_rate_limit.0, config.api_rate_limit.1),
                auth_failures: throttle::FailureThrottle::new(
                    config.limits.max_auth_failures_per_ip,
                    std::time::Duration::from_secs(60),
                ),
            },
            master_key,
            metrics,
            lease_held: std::sync::atomic::AtomicBool::new(true),
            leaving: std::sync::atomic::AtomicBool::new(false),
            store,
            config,
            shutdown: rx,
        });
        Ok((shared, tx))
    }

    /// Forgets a session here and in the store (idempotent; the connection is the caller's
    /// to close).
    pub(crate) async fn end_session(&self, id: &str) {
        // The store first: once a session is gone from the registry its names are free, and
        // a Bind elsewhere must not find them still recorded.
        if let Err(e) = self.store.delete_tunnel_session(id).await {
            self.metrics.store_errors.inc();
            tracing::warn!(session = %id, error = %e, "store failed while forgetting a session; the node's heartbeat will");
        }
        self.sessions.registry.remove_session(id);
    }
}

impl Edge {
    /// Binds every listener and starts serving. Listeners on port 0 get a free port.
    pub async fn start(
        mut config: EdgeConfig,
        store: Store,
        tls: tls::TlsMaterial,
    ) -> Result<Edge, EdgeError> {
        // Names compare lowercased everywhere else (SNI, Host, binds, reservations): the
        // configured ones must too, or `Connect.Corp.Example` could be bound as an endpoint.
        for name in config.connect_hostnames.iter_mut().chain(std::iter::once(&mut config.base_domain)) {
            *name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        }
        config.validate().map_err(EdgeError::Config)?;
        let connect = bind(config.connect_addr)?;
        let https = bind(config.https_addr)?;
        let http = match config.http_addr {
            Some(a) => Some(bind(a)?),
            None => None,
        };
        let connect_addr =
            connect.local_addr().map_err(|source| EdgeError::Bind { addr: config.connect_addr, source })?;
        let https_addr =
            https.local_addr().map_err(|source| EdgeError::Bind { addr: config.https_addr, source })?;
        let http_addr = match &http {
            Some(l) => {
                Some(l.local_addr().map_err(|source| EdgeError::Bind { addr: config.https_addr, source })?)
            }
            None => None,
        };
        let api = match config.api_addr {
            Some(a) => Some(bind(a)?),
            None => None,
        };
        let api_addr = match &api {
            Some(l) => {
                Some(l.local_addr().map_err(|source| EdgeError::Bind { addr: config.https_addr, source })?)
            }
            None => None,
        };
        let cluster_listener = match config.cluster_addr {
            Some(a) => Some(bind(a)?),
            None => None,
        };
        let relay_addr = match (&cluster_listener, config.cluster_addr) {
            (Some(l), Some(asked)) => {
                let bound = l.local_addr().map_err(|source| EdgeError::Bind { addr: asked, source })?;
                config.cluster_addr = Some(bound);
                Some(
                    cluster::advertised(bound, config.cluster_advertise.as_deref())
                        .map_err(EdgeError::Config)?,
                )
            }
            _ => None,
        };
        let https_port = config.public_https_port.unwrap_or(https_addr.port());
        let http_port = http_addr.map(|a| config.public_http_port.unwrap_or(a.port()));
        // What was bound, not what was asked for (port 0): checks against the edge's own
        // listeners (event webhooks) compare real ports.
        config.connect_addr = connect_addr;
        config.https_addr = https_addr;
        config.http_addr = http_addr;
        config.api_addr = api_addr;
        let (shared, tx) = Shared::new(config, store, &tls, https_port, http_port, relay_addr).await?;
        // Before any listener: a cloud endpoint answers its first visitor.
        cloud::reload(&shared, None).await;
        let mut tasks = JoinSet::new();
        if let (Some(c), Some(l)) = (shared.sessions.cluster.clone(), cluster_listener) {
            tracing::info!(relay_addr = %c.relay_addr, "relaying visitors to and from the cluster's other nodes");
            let relay_listeners = cluster::routes::load(&shared, &c).await;
            tasks.spawn(cluster::accept_loop(shared.clone(), c.clone(), l));
            tasks.spawn(cluster::routes::run(shared.clone(), c, relay_listeners));
        } else if shared.config.database_url.is_some() {
            tracing::info!(
                "no cluster_addr: this node does not relay; visitors reaching it for endpoints other nodes hold get 404"
            );
        }
        tasks.spawn(node::run(shared.clone()));
        if shared.config.database_url.is_some() {
            tasks.spawn(rules::run(shared.clone()));
        }
        tasks.spawn(idp::run(shared.clone()));
        tasks.spawn(events::run(shared.clone()));
        if let Some((cert, key)) = shared.config.tls_files.clone() {
            tasks.spawn(tls::watch_files(shared.listeners.certs.clone(), cert, key, shared.shutdown.clone()));
        }
        let mut installed = acme::Installed::new();
        acme::sync_once(&shared, &mut installed).await;
        tasks.spawn(acme::sync(shared.clone(), installed));
        if let Some(acme) = shared.config.acme.clone() {
            tasks.spawn(acme::run(shared.clone(), acme));
        }
        tasks.spawn(session::accept_loop(shared.clone(), connect));
        tasks.spawn(ingress_http::accept_loop(shared.clone(), https, ingress_http::Scheme::Https));
        if let Some(http) = http {
            tasks.spawn(ingress_http::accept_loop(shared.clone(), http, ingress_http::Scheme::Http));
        }
        if let Some(api) = api {
            tasks.spawn(api::serve(shared.clone(), api));
        }
        // Addresses printed plainly; a listener that is off is "off", not `None`.
        let shown = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(
            %connect_addr,
            %https_addr,
            http_addr = %shown(http_addr),
            api_addr = %shown(api_addr),
            "edge listening"
        );
        let cluster_addr = shared.config.cluster_addr.filter(|_| shared.sessions.cluster.is_some());
        Ok(Edge { connect_addr, https_addr, http_addr, api_addr, cluster_addr, shutdown: tx, tasks, shared })
    }

    /// Reloads what can change without dropping a connection (SIGHUP): the edge's own
    /// certificate files (`--tls-cert`/`--tls-key`; a broken pair keeps the current one) and
    /// the cached IP restrictions. Returns what was reloaded, for the log.
    pub fn reload(&self) -> Result<Vec<&'static str>, EdgeError> {
        self.shared.accounts.ip_rules.invalidate_all();
        let mut done = vec!["IP restrictions"];
        if let Some((cert, key)) = &self.shared.config.tls_files {
            let (chain, key) = tls::load_pem_files(cert, key)?;
            self.shared.listeners.certs.set_default(chain, key)?;
            done.push("edge certificate");
        }
        Ok(done)
    }

    /// Number of live agent sessions.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.registry.session_count()
    }

    /// Fails `/healthz` for `limits.shutdown_delay` while still serving, then stops
    /// accepting, lets visitors' requests in flight finish (HTTP connections close after
    /// their current request; at most `limits.drain_timeout`), then closes every agent
    /// session (GOAWAY, so agents reconnect, to another node if there is one) and waits for
    /// the listeners.
    pub async fn shutdown(mut self) {
        let delay = self.shared.config.limits.shutdown_delay;
        if !delay.is_zero() {
            // Balancers see /healthz fail and take this node out while it still serves.
            self.shared.leaving.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(?delay, "failing health checks before closing the listeners");
            tokio::time::sleep(delay).await;
        }
        let _ = self.shutdown.send(true);
        let drain = self.shared.config.limits.drain_timeout;
        let started = std::time::Instant::now();
        let busy = self.shared.listeners.visitor_limit.in_use();
        if busy > 0 {
            tracing::info!(connections = busy, timeout = ?drain, "draining visitor connections");
        }
        while self.shared.listeners.visitor_limit.in_use() > 0 && started.elapsed() < drain {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left = self.shared.listeners.visitor_limit.in_use();
        if left > 0 {
            tracing::warn!(connections = left, "drain timeout: closing the visitor connections still open");
        }
        self.shared.sessions.registry.close_all("edge shutting down");
        if let Some(c) = &self.shared.sessions.cluster {
            c.close_all();
        }
        while self.tasks.join_next().await.is_some() {}
        // Its sessions and endpoints go with it, freeing their names for other nodes.
        if let Err(e) = self.shared.store.remove_node(&self.shared.node_id).await {
            tracing::warn!(error = %e, "could not remove this node from the store; other nodes will");
        }
    }

    /// Deletes an authtoken and ends every live session that authenticated with it (their
    /// endpoints go offline at once; the agents' reconnects are refused). Returns how many
    /// sessions were ended.
    pub async fn revoke_credential(&self, account_id: &str, id: &str) -> Result<usize, EdgeError> {
        Ok(self.shared.revoke_credential(&self.shared.store, account_id, id).await?)
    }

    /// The store the edge uses.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// This node's id in the shared store.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The TLS client config this node dials other nodes with (its cluster certificate), for
    /// tests that speak the relay protocol as a node would.
    #[doc(hidden)]
    pub fn cluster_client_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.shared.sessions.cluster.as_ref().map(|c| c.client_tls())
    }

    /// The server name a node dials `node_id` with.
    #[doc(hidden)]
    pub fn cluster_server_name(node_id: &str) -> rustls::pki_types::ServerName<'static> {
        cluster::ca::server_name(node_id)
    }
}

/// Starts an edge and serves until `shutdown` resolves.
pub async fn run(
    config: EdgeConfig,
    store: Store,
    tls: tls::TlsMaterial,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EdgeError> {
    let edge = Edge::start(config, store, tls).await?;
    shutdown.await;
    tracing::info!("shutting down");
    edge.shutdown().await;
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    conn_limit::listen(addr).map_err(|source| EdgeError::Bind { addr, source })
}

/// Resolves when the edge is shutting down.
pub(crate) async fn shutting_down(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

#[cfg(test)]
mod parts {
    /// Every source file of the crate, as text without whitespace (calls may span lines).
    fn sources() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).expect("source directory") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let name = path.strip_prefix(root).expect("under src").to_string_lossy().into_owned();
                    let text = std::fs::read_to_string(&path).expect("readable");
                    out.push((name, text.split_whitespace().collect()));
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out
    }

    /// The methods called on `part` in `text`.
    fn calls<'a>(text: &'a str, part: &str) -> Vec<&'a str> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find(part) {
            let call = &rest[i + part.len()..];
            found.push(
                &call[..call.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(call.len())],
            );
            rest = call;
        }
        found
    }

    /// The parts of `Shared` are written where ARCHITECTURE.md says: the sessions' registry
    /// by the session and node code (and the admin layer's one rule change), the accounts'
    /// caches by the admin layer alone. Anything else only reads them.
    #[test]
    fn each_part_of_shared_is_written_by_its_own_modules() {
        let registry_writes = [
            "add_listener",
            "add_session",
            "add_session_decided_at",
            "remove_session",
            "unbind",
            "remove_all",
            "close_all",
            "rules_changed",
        ];
        let account_writes = ["invalidate", "invalidate_all", "subscriptions_changed", "notify_one"];
        let mut checked = 0;
        for (name, text) in sources() {
            if name == "lib.rs" && text.contains("fneach_part_of_shared_is_written_by_its_own_modules") {
                // The edge's own life: a session's end, shutdown, and SIGHUP's reload of the
                // cached IP rules (an operator's, not an account's, change).
                for m in calls(&text, ".sessions.registry.") {
                    checked += 1;
                    assert!(
                        !registry_writes.contains(&m) || ["remove_session", "close_all"].contains(&m),
                        "lib.rs: registry.{m}"
                    );
                }
                for m in calls(&text, ".accounts.ip_rules.") {
                    checked += 1;
                    assert!(!account_writes.contains(&m) || m == "invalidate_all", "lib.rs: ip_rules.{m}");
                }
                for part in [".accounts.events.", ".accounts.acme_wake."] {
                    for m in calls(&text, part) {
                        assert!(!account_writes.contains(&m), "lib.rs: {part}{m}");
                    }
                }
                continue;
            }
            for m in calls(&text, ".sessions.registry.") {
                checked += 1;
                let sessions = name.starts_with("session/") || name == "node.rs";
                let admin = name == "admin.rs" && m == "rules_changed";
                assert!(
                    !registry_writes.contains(&m) || sessions || admin,
                    "{name} writes the sessions' registry ({m}); only session/, node.rs and the admin layer may"
                );
            }
            for part in [".accounts.ip_rules.", ".accounts.events.", ".accounts.acme_wake."] {
                for m in calls(&text, part) {
                    checked += 1;
                    assert!(
                        !account_writes.contains(&m) || name == "admin.rs" || name == "session/tests.rs",
                        "{name} invalidates the accounts' settings ({part}{m}); only the admin layer may"
                    );
                }
            }
        }
        assert!(checked > 40, "the test found only {checked} uses: has Shared changed shape?");
    }
}
