//! This node's view of which other node holds which endpoint. The store moves a generation
//! on every change to the endpoints table (a trigger, so cascaded deletes count too); the
//! view reloads when it moved, checked at once when PostgreSQL announces a change (`LISTEN`),
//! when a relay found the view stale, and every [`POLL`] in case an announcement was lost. For every tcp endpoint another node holds, this node listens on the same port (on
//! its own `tcp_bind_ip`) and relays each connection.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::{Cluster, RelayOpen};
use crate::Shared;
use crate::registry::{EndpointKey, Proto};

/// How often the generation is checked without an announcement.
const POLL: Duration = Duration::from_secs(1);

/// An endpoint another node holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RemoteRoute {
    /// Its id: the fencing token the holder checks.
    pub(crate) endpoint_id: String,
    pub(crate) node_id: String,
    pub(crate) relay_addr: String,
}

#[derive(Default)]
struct Snapshot {
    generation: Option<i64>,
    /// Some key is a wildcard name.
    wildcards: bool,
    /// Several for a pool whose members are on other nodes.
    routes: HashMap<EndpointKey, Vec<Arc<RemoteRoute>>>,
}

/// Who holds what on other nodes.
#[derive(Default)]
pub(crate) struct RouteView {
    now: RwLock<Arc<Snapshot>>,
    wake: Notify,
    /// Spreads visitors across a pool's members on other nodes.
    turn: std::sync::atomic::AtomicUsize,
}

impl RouteView {
    /// An endpoint serving `key` on another node (one of a pool's members in turn), if
    /// another node holds it (and relays).
    pub(crate) fn lookup(&self, key: &EndpointKey) -> Option<Arc<RemoteRoute>> {
        let snap = self.now.read().expect("routes poisoned").clone();
        let members = snap.routes.get(key)?;
        match members.len() {
            0 => None,
            1 => Some(members[0].clone()),
            n => Some(members[self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n].clone()),
        }
    }

    /// Whether another node holds an endpoint named `host` in one of `protos`.
    pub(crate) fn has_host_in(&self, host: &str, protos: &[Proto]) -> bool {
        let snap = self.now.read().expect("routes poisoned").clone();
        protos.iter().any(|p| snap.routes.contains_key(&EndpointKey::Host(*p, host.to_owned())))
    }

    /// Whether another node holds an endpoint with a wildcard name.
    pub(crate) fn has_wildcards(&self) -> bool {
        self.now.read().expect("routes poisoned").wildcards
    }

    /// A relay found the view stale: reload now.
    pub(crate) fn stale(&self) {
        self.wake.notify_one();
    }
}

/// Parses a store route key (`https://host`, `http://host`, `tls://host`, `tcp://host:port`).
pub(crate) fn parse_route_key(key: &str) -> Option<EndpointKey> {
    let (scheme, rest) = key.split_once("://")?;
    match scheme {
        "http" => Some(EndpointKey::Host(Proto::Http, rest.to_owned())),
        "https" => Some(EndpointKey::Host(Proto::Https, rest.to_owned())),
        "tls" => Some(EndpointKey::Host(Proto::Tls, rest.to_owned())),
        "tcp" => rest.rsplit_once(':')?.1.parse().ok().map(EndpointKey::Port),
        _ => None,
    }
}

/// The tcp ports this node listens on for endpoints other nodes hold.
pub(crate) type RelayListeners = HashMap<u16, tokio::task::AbortHandle>;

/// Loads the view once (the edge awaits it before it listens, so a node that just started
/// relays its first visitors instead of answering 404).
pub(crate) async fn load(shared: &Arc<Shared>, cluster: &Arc<Cluster>) -> RelayListeners {
    let mut listeners = RelayListeners::new();
    if let Err(e) = refresh(shared, cluster, &mut listeners).await {
        tracing::warn!(error = %e, "could not read the cluster's routes at start; retrying");
    }
    listeners
}

/// Keeps the view current and the relaying tcp listeners in step with it, until shutdown.
pub(crate) async fn run(shared: Arc<Shared>, cluster: Arc<Cluster>, mut listeners: RelayListeners) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    let announcements = tokio::spawn(listen(shared.clone(), cluster.clone()));
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
            _ = cluster.routes.wake.notified() => {}
        }
        if let Err(e) = refresh(&shared, &cluster, &mut listeners).await {
            shared.metrics.store_errors.inc();
            tracing::warn!(error = %e, "could not read the cluster's routes; keeping the last view");
        }
    }
    announcements.abort();
    for (_, l) in listeners {
        l.abort();
    }
}

/// Wakes the view on every announcement of a change.
async fn listen(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    loop {
        let mut changes = match shared.store.listen(warren_store::Announcement::Routes).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for route changes; polling only, retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        while changes.next().await.is_ok() {
            cluster.routes.wake.notify_one();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn refresh(
    shared: &Arc<Shared>,
    cluster: &Arc<Cluster>,
    listeners: &mut HashMap<u16, tokio::task::AbortHandle>,
) -> Result<(), warren_store::StoreError> {
    let generation = shared.store.route_generation().await?;
    if cluster.routes.now.read().expect("routes poisoned").generation == Some(generation) {
        return Ok(());
    }
    let mut routes: HashMap<EndpointKey, Vec<Arc<RemoteRoute>>> = HashMap::new();
    for r in shared.store.remote_endpoints(&shared.node_id).await? {
        // A node that does not relay cannot be reached for its endpoints.
        if r.relay_addr.is_empty() {
            continue;
        }
        let Some(key) = parse_route_key(&r.route_key) else { continue };
        routes.entry(key).or_default().push(Arc::new(RemoteRoute {
            endpoint_id: r.endpoint_id,
            node_id: r.node_id,
            relay_addr: r.relay_addr,
        }));
    }
    let ports: Vec<u16> = routes
        .keys()
        .filter_map(|k| match k {
            // A port this node serves itself (a pool with a member here) has its listener.
            EndpointKey::Port(p) if !shared.sessions.registry.is_taken(k) => Some(*p),
            _ => None,
        })
        .collect();
    *cluster.routes.now.write().expect("routes poisoned") = Arc::new(Snapshot {
        generation: Some(generation),
        wildcards: routes
            .keys()
            .any(|k| matches!(k, EndpointKey::Host(_, h) if crate::registry::is_wildcard(h))),
        routes,
    });
    listeners.retain(|port, handle| {
        let keep = ports.contains(port) && !handle.is_finished();
        if !keep {
            handle.abort();
        }
        keep
    });
    for port in ports {
        if listeners.contains_key(&port) {
            continue;
        }
        let addr = std::net::SocketAddr::new(shared.config.tcp_bind_ip, port);
        match crate::conn_limit::listen(addr) {
            Ok(l) => {
                tracing::debug!(%addr, "relaying a tcp endpoint another node holds");
                let h = tokio::spawn(relay_tcp(shared.clone(), cluster.clone(), l, port)).abort_handle();
                listeners.insert(port, h);
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot listen for a tcp endpoint another node holds")
            }
        }
    }
    Ok(())
}

/// Accepts visitors on a port whose endpoint another node holds and relays each connection.
async fn relay_tcp(shared: Arc<Shared>, cluster: Arc<Cluster>, listener: TcpListener, port: u16) {
    loop {
        let (mut tcp, peer, permit) =
            crate::conn_limit::accept(&listener, &shared.listeners.visitor_limit, "relayed tcp endpoint")
                .await;
        let (shared, cluster) = (shared.clone(), cluster.clone());
        tokio::spawn(async move {
            let Some(client) = crate::client_addr::resolve(&shared, &mut tcp, peer).await else { return };
            let key = EndpointKey::Port(port);
            let Some(route) = cluster.routes.lookup(&key) else { return };
            let local = tcp.local_addr().unwrap_or(client);
            let header =
                |r: &RemoteRoute| RelayOpen::Tcp { endpoint_id: r.endpoint_id.clone(), port, client, local };
            match cluster.open_any(&key, route, header).await {
                Ok((mut s, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let _ = warren_mux::splice::splice(&mut tcp, &mut s).await;
                }
                Err(e) => {
                    shared.metrics.relay_failures.inc();
                    tracing::debug!(port, %client, error = %e, "could not relay a tcp visitor");
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_parse_for_every_scheme() {
        assert_eq!(
            parse_route_key("https://a.example.com"),
            Some(EndpointKey::Host(Proto::Https, "a.example.com".into()))
        );
        assert_eq!(
            parse_route_key("tls://a.example.com"),
            Some(EndpointKey::Host(Proto::Tls, "a.example.com".into()))
        );
        assert_eq!(parse_route_key("http://a"), Some(EndpointKey::Host(Proto::Http, "a".into())));
        assert_eq!(parse_route_key("tcp://tcp.example.com:20001"), Some(EndpointKey::Port(20001)));
        assert_eq!(parse_route_key("tcp://x:notaport"), None);
        assert_eq!(parse_route_key("ftp://x"), None);
    }
}
