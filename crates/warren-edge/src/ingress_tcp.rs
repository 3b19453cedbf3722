//! tcp endpoints: one listener per endpoint on the port its Bind chose (`session/bind.rs`);
//! each visitor connection becomes one proxy stream, copied both ways with half-close passed through.
//! tls endpoints ride the same copy: the shared TLS port hands over the connection with its
//! ClientHello ([`pass_tls`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use warren_mux::splice::ReadReady;

use crate::Shared;
use crate::registry::{Endpoint, EndpointKey, Proto};

/// Copy buffer per direction; large enough that one visitor can fill the link.
pub(crate) const COPY_BUF: usize = 64 * 1024;

/// Serves a bound tcp endpoint's listener (the Bind chose the port): every visitor
/// connection becomes a proxy stream to the endpoint on that port (a pool's members in
/// turn). The task ends when its handle is aborted, as the port's last endpoint is released.
pub(crate) fn serve(shared: Arc<Shared>, listener: TcpListener, port: u16) -> tokio::task::AbortHandle {
    tokio::spawn(accept_loop(shared, listener, port)).abort_handle()
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, port: u16) {
    let key = crate::registry::EndpointKey::Port(port);
    loop {
        let (mut tcp, peer, permit) =
            crate::conn_limit::accept(&listener, &shared.listeners.visitor_limit, "tcp endpoint").await;
        let Some(ep) = shared.sessions.registry.lookup(&key) else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(remote) = crate::client_addr::resolve(&shared, &mut tcp, peer).await else { return };
            // Refused visitors are closed before a proxy stream is opened.
            if crate::ip_rules::visitor_allowed(&shared, &ep.session.account_id, remote.ip(), &ep.url).await
                && let Some(ep) = connect_target(&shared, ep, remote, tcp.local_addr().ok(), None)
            {
                let local = tcp.local_addr().unwrap_or(remote);
                let sink = closed_sink(&shared, &ep).await;
                let _ = tcp.set_nodelay(true);
                proxy(tcp, remote, local, &ep, sink).await;
            }
            drop(permit);
        });
    }
}

/// How many endpoints one connection may pass through with `forward-internal`.
const MAX_FORWARDS: usize = 4;

/// Runs the endpoint's `on_tcp_connect` rules and says which endpoint serves the connection:
/// this one, an internal endpoint of the same account that `forward-internal` named (whose
/// own rules then run), or none (the connection is closed).
fn connect_target(
    shared: &Shared,
    mut ep: Arc<Endpoint>,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    tls: Option<warren_policy::TlsInfo>,
) -> Option<Arc<Endpoint>> {
    let local = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    for _ in 0..=MAX_FORWARDS {
        if ep.policy.is_empty() {
            return Some(ep);
        }
        let conn = crate::policy::conn(remote, local, tls.clone());
        let (now, mono) = crate::policy::now();
        let (verdict, logs) = ep.policy.on_tcp_connect(&conn, &ep.info, now, mono);
        crate::policy::write_logs(&ep.url, logs);
        shared.metrics.verdict(&verdict);
        match verdict {
            warren_policy::Verdict::Continue => return Some(ep),
            warren_policy::Verdict::ForwardInternal(f) => {
                let proto = if f.scheme == "tls" { Proto::Tls } else { Proto::Tcp };
                let name = crate::registry::internal_host(&f.host, &ep.session.account_id);
                match shared.sessions.registry.lookup(&EndpointKey::Host(proto, name)) {
                    Some(target) => ep = target,
                    None if f.continue_on_error => return Some(ep),
                    None => {
                        tracing::debug!(url = %ep.url, %remote, target = %f.host, "forward-internal: no such internal endpoint online; connection closed");
                        return None;
                    }
                }
            }
            _ => {
                tracing::debug!(url = %ep.url, %remote, "connection closed by the traffic policy");
                return None;
            }
        }
    }
    tracing::warn!(url = %ep.url, %remote, "forward-internal went through {MAX_FORWARDS} endpoints; the policies loop");
    None
}

/// Where the connection's `tcp_connection_closed.v0` goes, if the account takes them.
async fn closed_sink(shared: &Shared, ep: &Endpoint) -> Option<crate::events::TrafficSink> {
    shared
        .accounts
        .events
        .traffic_sink(&shared.store, &ep.session.account_id, crate::events::TCP_CONNECTION_CLOSED)
        .await
}

/// Splices the visitor and the agent's stream; tells the sink, if any, when it ends.
async fn splice_and_tell<V, S>(
    tcp: &mut V,
    stream: &mut S,
    remote: SocketAddr,
    local: SocketAddr,
    ep: &Endpoint,
    sink: Option<crate::events::TrafficSink>,
) where
    V: ReadReady + AsyncWrite + Unpin,
    S: ReadReady + AsyncWrite + Unpin,
{
    let start = std::time::SystemTime::now();
    let copied = warren_mux::splice::splice(tcp, stream).await;
    if let Err(e) = &copied {
        tracing::debug!(url = %ep.url, %remote, error = %e, "visitor connection ended with an error");
    }
    let (bytes_in, bytes_out) = copied.unwrap_or((0, 0));
    ep.metrics.connection(bytes_in, bytes_out);
    if let Some(sink) = sink {
        crate::events::tcp_closed(&sink, ep, remote, local, start, bytes_in, bytes_out);
    }
}

async fn proxy<V: ReadReady + AsyncWrite + Unpin>(
    mut tcp: V,
    remote: SocketAddr,
    local: SocketAddr,
    ep: &Endpoint,
    sink: Option<crate::events::TrafficSink>,
) {
    use tokio::io::AsyncWriteExt;
    let mut stream = match ep.open_proxy_stream(remote).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(url = %ep.url, error = %e, "could not open proxy stream");
            return;
        }
    };
    if ep.proxy_proto != 0
        && stream.write_all(&crate::proxy_protocol::encode(ep.proxy_proto, remote, local)).await.is_err()
    {
        return;
    }
    splice_and_tell(&mut tcp, &mut stream, remote, local, ep, sink).await;
}

/// Passes a TLS connection through to a tls endpoint's agent, ClientHello first; the edge
/// never decrypts it.
pub(crate) async fn pass_tls<V: ReadReady + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    ep: &Arc<Endpoint>,
    hello: Vec<u8>,
    sni: &str,
    mut tcp: V,
    remote: SocketAddr,
    local: SocketAddr,
) {
    use tokio::io::AsyncWriteExt;
    if !crate::ip_rules::visitor_allowed(shared, &ep.session.account_id, remote.ip(), &ep.url).await {
        return;
    }
    let tls = warren_policy::TlsInfo { sni: sni.to_owned(), ..Default::default() };
    let Some(ep) = connect_target(shared, ep.clone(), remote, Some(local), Some(tls)) else { return };
    let ep = &ep;
    let mut stream = match ep.open_proxy_stream(remote).await {
        Ok(s) => s,
        Err(e) => return tracing::debug!(url = %ep.url, error = %e, "could not open proxy stream"),
    };
    // The PROXY header, when asked for, comes before the TLS bytes it describes.
    if ep.proxy_proto != 0
        && stream.write_all(&crate::proxy_protocol::encode(ep.proxy_proto, remote, local)).await.is_err()
    {
        return;
    }
    if stream.write_all(&hello).await.is_err() {
        return;
    }
    drop(hello);
    let sink = closed_sink(shared, ep).await;
    splice_and_tell(&mut tcp, &mut stream, remote, local, ep, sink).await;
}

/// A visitor connection another node relayed here for one of this node's tcp endpoints:
/// checked and proxied as if it had reached the endpoint's own listener.
pub(crate) async fn serve_relayed(
    shared: Arc<Shared>,
    s: warren_mux::Stream,
    client: SocketAddr,
    local: SocketAddr,
    ep: Arc<Endpoint>,
) {
    if crate::ip_rules::visitor_allowed(&shared, &ep.session.account_id, client.ip(), &ep.url).await
        && let Some(ep) = connect_target(&shared, ep, client, Some(local), None)
    {
        let sink = closed_sink(&shared, &ep).await;
        proxy(s, client, local, &ep, sink).await;
    }
}
