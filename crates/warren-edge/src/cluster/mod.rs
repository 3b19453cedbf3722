//! Clustering: every node serves every endpoint. Nodes on one PostgreSQL database see which
//! node holds each endpoint (a view reloaded whenever the endpoints table changes, see
//! [`routes`]); a visitor that reaches a node for an endpoint another node holds is carried
//! there over a relay link (mutual TLS under the cluster CA, [`ca`], then warren-mux streams,
//! one link per peer, reused; [`relay`]). Nodes never talk to each other for anything but
//! visitor bytes: the database stays the one shared truth.

pub(crate) mod ca;
pub(crate) mod relay;
pub(crate) mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use warren_mux::{Mux, Role};

use crate::Shared;
pub(crate) use relay::{RelayError, RelayOpen};
pub(crate) use routes::RemoteRoute;

/// How long dialling a peer may take (TCP and TLS).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Holders tried for one visitor before it is refused.
pub(crate) const OPEN_ATTEMPTS: usize = 3;

/// After a failed dial, visitors for that peer fail at once for this long instead of each
/// waiting for a dial of its own.
const REDIAL_AFTER: Duration = Duration::from_secs(1);

/// This node's part in the cluster.
pub(crate) struct Cluster {
    tls: ca::NodeTls,
    /// Where this node takes links (what other nodes dial).
    pub(crate) relay_addr: String,
    /// Who holds what, on other nodes.
    pub(crate) routes: routes::RouteView,
    /// Links this node opened, by peer node id; each dialled at most once at a time.
    links: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Link>>>>,
    /// Links other nodes opened to this one, closed at shutdown.
    accepted: Mutex<Vec<Mux>>,
}

impl Cluster {
    pub(crate) fn new(tls: ca::NodeTls, relay_addr: String) -> Cluster {
        Cluster {
            tls,
            relay_addr,
            routes: routes::RouteView::default(),
            links: Mutex::new(HashMap::new()),
            accepted: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.client.clone()
    }

    /// Opens a relay stream to the node holding `route`, dialling it if there is no live
    /// link; an open refused as stale makes the view reload.
    pub(crate) async fn open(
        &self,
        route: &RemoteRoute,
        open: &RelayOpen,
    ) -> Result<warren_mux::Stream, RelayError> {
        let mux = self.link(route).await?;
        let r = relay::open(&mux, &route.node_id, open).await;
        match &r {
            Err(RelayError::NotHere(_)) => self.routes.stale(),
            Err(RelayError::Link(..)) | Err(RelayError::Timeout(_)) => {
                mux.close(warren_mux::ErrorCode::None, "relay failed")
            }
            _ => {}
        }
        r
    }

    /// Like [`Cluster::open`], trying the next holder of `key` (a pool's other members, or a
    /// view reloaded since) when one refuses or cannot be reached: nothing of the visitor's
    /// has been sent until a stream is accepted. At most [`OPEN_ATTEMPTS`] holders.
    pub(crate) async fn open_any(
        &self,
        key: &crate::registry::EndpointKey,
        first: Arc<RemoteRoute>,
        header: impl Fn(&RemoteRoute) -> RelayOpen,
    ) -> Result<(warren_mux::Stream, Arc<RemoteRoute>), RelayError> {
        let mut route = first;
        let mut tried: Vec<(String, String)> = Vec::new();
        loop {
            match self.open(&route, &header(&route)).await {
                Ok(s) => return Ok((s, route)),
                Err(e) => {
                    tried.push((route.node_id.clone(), route.endpoint_id.clone()));
                    let next = (0..OPEN_ATTEMPTS).find_map(|_| {
                        self.routes
                            .lookup(key)
                            .filter(|r| !tried.iter().any(|(n, id)| *n == r.node_id && *id == r.endpoint_id))
                    });
                    match next {
                        Some(r) if tried.len() < OPEN_ATTEMPTS => route = r,
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    async fn link(&self, route: &RemoteRoute) -> Result<Mux, RelayError> {
        let slot =
            self.links.lock().expect("links poisoned").entry(route.node_id.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(m) = slot.mux.as_ref().filter(|m| !m.is_closed() && m.remote_goaway().is_none()) {
            return Ok(m.clone());
        }
        if let Some((at, why)) = &slot.failed
            && at.elapsed() < REDIAL_AFTER
        {
            return Err(RelayError::Link(route.node_id.clone(), std::io::Error::other(why.clone())));
        }
        let link_err = |e| RelayError::Link(route.node_id.clone(), e);
        let dial = async {
            let tcp = TcpStream::connect(&route.relay_addr).await?;
            let _ = tcp.set_nodelay(true);
            crate::conn_limit::keepalive(&tcp);
            let connector = tokio_rustls::TlsConnector::from(self.tls.client.clone());
            connector.connect(ca::server_name(&route.node_id), tcp).await
        };
        let tls = match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(node = %route.node_id, addr = %route.relay_addr, error = %e, "cannot dial a relay link");
                slot.failed = Some((std::time::Instant::now(), e.to_string()));
                return Err(link_err(e));
            }
            Err(_) => {
                slot.failed = Some((std::time::Instant::now(), "dial timed out".into()));
                return Err(RelayError::Timeout(route.node_id.clone()));
            }
        };
        let mux = warren_mux::start(tls, Role::Client, warren_mux::Config::default());
        tracing::info!(node = %route.node_id, addr = %route.relay_addr, "relay link up");
        *slot = Link { mux: Some(mux.clone()), failed: None };
        Ok(mux)
    }

    /// Closes every link (edge shutdown, after the drain).
    pub(crate) fn close_all(&self) {
        for m in self.accepted.lock().expect("accepted poisoned").drain(..) {
            m.close(warren_mux::ErrorCode::None, "edge node shutting down");
        }
        let links: Vec<_> = self.links.lock().expect("links poisoned").drain().map(|(_, s)| s).collect();
        for slot in links {
            if let Ok(s) = slot.try_lock()
                && let Some(m) = s.mux.as_ref()
            {
                m.close(warren_mux::ErrorCode::None, "edge node shutting down");
            }
        }
    }
}

/// A peer's link, or when dialling it last failed.
#[derive(Default)]
struct Link {
    mux: Option<Mux>,
    failed: Option<(std::time::Instant, String)>,
}

/// Takes relay links from other nodes until the edge shuts down.
pub(crate) async fn accept_loop(shared: Arc<Shared>, cluster: Arc<Cluster>, listener: TcpListener) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    let acceptor = tokio_rustls::TlsAcceptor::from(cluster.tls.server.clone());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "relay listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (shared, cluster, acceptor) = (shared.clone(), cluster.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            crate::conn_limit::keepalive(&tcp);
            let limit = shared.config.limits.handshake_timeout;
            let tls = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    return tracing::warn!(%peer, error = %e, "refused a relay link (not a cluster certificate?)");
                }
                Err(_) => return tracing::warn!(%peer, "relay link handshake timed out"),
            };
            let node = peer_node(&tls).unwrap_or_else(|| peer.to_string());
            tracing::info!(%peer, %node, "relay link accepted");
            let mux = warren_mux::start(tls, Role::Server, warren_mux::Config::default());
            {
                let mut accepted = cluster.accepted.lock().expect("accepted poisoned");
                accepted.retain(|m| !m.is_closed());
                accepted.push(mux.clone());
            }
            while let Some(s) = mux.accept().await {
                tokio::spawn(relay::serve_stream(shared.clone(), s, node.clone()));
            }
        });
    }
}

/// The peer's certificate's common name (`warren node nd_...`), for logs.
fn peer_node(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.trim_start_matches("warren node ").to_owned())
}

/// The address other nodes should dial: `advertise` when set, else what the listener bound
/// (which must then be a specific address, not 0.0.0.0).
pub(crate) fn advertised(bound: SocketAddr, advertise: Option<&str>) -> Result<String, String> {
    match advertise {
        Some(a) => Ok(a.to_owned()),
        None if bound.ip().is_unspecified() => Err(format!(
            "the cluster listener is on {bound}: set cluster_advertise (--cluster-advertise) to the address other nodes reach it at"
        )),
        None => Ok(bound.to_string()),
    }
}
