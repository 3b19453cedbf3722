//! tcp endpoints: one listener per endpoint on a port from the configured range; each visitor
//! connection becomes one proxy stream, copied both ways with half-close passed through.
//! tls endpoints ride the same copy: the shared TLS port hands over the connection with its
//! ClientHello ([`pass_tls`]).

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use warren_proto::{self as proto, error_codes as codes};

use crate::Shared;
use crate::registry::{AgentSession, Endpoint, EndpointKey, Proto};
use crate::session::refused;

/// Copy buffer per direction; large enough that one visitor can fill the link.
pub(crate) const COPY_BUF: usize = 64 * 1024;

/// Random ports tried before giving up (the range may be nearly full).
const RANDOM_TRIES: usize = 64;

/// Binds a tcp endpoint on `wanted` or a random free port of the range. Returns the URL.
pub(crate) async fn bind(
    shared: &Arc<Shared>,
    session: &Arc<AgentSession>,
    client_id: &str,
    wanted: Option<u16>,
    policy: crate::policy::ForBind,
    proxy_proto: u8,
) -> Result<String, String> {
    let range = shared.config.tcp_ports.clone();
    let unavailable = |msg: String| proto::error_text(&msg, codes::TCP_ADDR_UNAVAILABLE);
    let listener = match wanted {
        Some(p) if !range.contains(&p) => {
            return Err(unavailable(format!(
                "port {p} is outside this edge's tcp range {}-{}",
                range.start(),
                range.end()
            )));
        }
        Some(p) => {
            match shared.store.port_reservation(p).await {
                Ok(Some(r)) if r.account_id != session.account_id => {
                    return Err(proto::error_text(
                        &format!("tcp://{}:{p} is reserved by another account", shared.config.tcp_host),
                        codes::RESERVED_ELSEWHERE,
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(store_failed(e)),
            }
            if shared.registry.is_taken(&EndpointKey::Port(p)) {
                return Err(refused(
                    crate::registry::BindRefused::InUse,
                    &format!("tcp://{}:{p}", shared.config.tcp_host),
                ));
            }
            TcpListener::bind(SocketAddr::new(shared.config.tcp_bind_ip, p))
                .await
                .map_err(|e| unavailable(format!("port {p} is not available: {e}")))?
        }
        None => {
            let mut found = None;
            for _ in 0..RANDOM_TRIES {
                let p = rand::rng().random_range(range.clone());
                if shared.registry.is_taken(&EndpointKey::Port(p)) {
                    continue;
                }
                // Reserved ports are only ever bound by name, by their owner.
                if shared.store.port_reservation(p).await.map_err(store_failed)?.is_some() {
                    continue;
                }
                if let Ok(l) = TcpListener::bind(SocketAddr::new(shared.config.tcp_bind_ip, p)).await {
                    found = Some(l);
                    break;
                }
            }
            found.ok_or_else(|| unavailable("no free port left in this edge's tcp range".into()))?
        }
    };
    let port = listener.local_addr().map_err(|e| unavailable(e.to_string()))?.port();
    let url = format!("tcp://{}:{port}", shared.config.tcp_host);
    let id = warren_store::generate_id("ep");
    let ep = Endpoint {
        info: crate::policy::endpoint_info(&id, &url, "tcp"),
        id,
        session: session.clone(),
        client_id: client_id.to_owned(),
        proto: Proto::Tcp,
        url: url.clone(),
        key: EndpointKey::Port(port),
        tls: None,
        policy: policy.chain,
        ip_policies: policy.ip_policies,
        proxy_proto,
    };
    let ep = shared
        .registry
        .bind(ep, shared.config.limits.max_endpoints_per_session)
        .map_err(|r| refused(r, &url))?;
    crate::session::record_endpoint(shared, &ep).await?;
    let task = tokio::spawn(accept_loop(shared.clone(), listener, ep));
    shared.registry.add_listener(&session.id, client_id, task.abort_handle());
    tracing::info!(session = %session.id, %url, "endpoint bound");
    Ok(url)
}

fn store_failed(e: warren_store::StoreError) -> String {
    tracing::error!(error = %e, "store failed while checking reserved addresses");
    proto::error_text("the edge could not check reserved addresses; try again", codes::TCP_ADDR_UNAVAILABLE)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, ep: Arc<Endpoint>) {
    loop {
        let (mut tcp, peer, permit) =
            crate::conn_limit::accept(&listener, &shared.visitor_limit, "tcp endpoint").await;
        let (shared, ep) = (shared.clone(), ep.clone());
        tokio::spawn(async move {
            let Some(remote) = crate::client_addr::resolve(&shared, &mut tcp, peer).await else { return };
            // Refused visitors are closed before a proxy stream is opened.
            if crate::ip_rules::visitor_allowed(&shared, &ep.session.account_id, remote.ip(), &ep.url).await
                && connect_allowed(&ep, remote, tcp.local_addr().ok(), None)
            {
                let local = tcp.local_addr().unwrap_or(remote);
                proxy(tcp, remote, local, &ep).await;
            }
            drop(permit);
        });
    }
}

/// Runs the endpoint's `on_tcp_connect` rules; false closes the connection.
fn connect_allowed(
    ep: &Endpoint,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    tls: Option<warren_policy::TlsInfo>,
) -> bool {
    if ep.policy.is_empty() {
        return true;
    }
    let local = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let conn = crate::policy::conn(remote, local, tls);
    let (now, mono) = crate::policy::now();
    let (verdict, logs) = ep.policy.on_tcp_connect(&conn, &ep.info, now, mono);
    crate::policy::write_logs(&ep.url, logs);
    match verdict {
        warren_policy::Verdict::Continue => true,
        _ => {
            tracing::debug!(url = %ep.url, %remote, "connection closed by the traffic policy");
            false
        }
    }
}

async fn proxy(mut tcp: TcpStream, remote: SocketAddr, local: SocketAddr, ep: &Endpoint) {
    use tokio::io::AsyncWriteExt;
    let _ = tcp.set_nodelay(true);
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
    if let Err(e) = warren_mux::splice::splice(&mut tcp, &mut stream).await {
        tracing::debug!(url = %ep.url, %remote, error = %e, "tcp visitor connection ended with an error");
    }
}

/// Passes a TLS connection through to a tls endpoint's agent, ClientHello first; the edge
/// never decrypts it.
pub(crate) async fn pass_tls(
    shared: &Arc<Shared>,
    ep: &Arc<Endpoint>,
    hello: Vec<u8>,
    sni: &str,
    mut tcp: TcpStream,
    remote: SocketAddr,
) {
    use tokio::io::AsyncWriteExt;
    if !crate::ip_rules::visitor_allowed(shared, &ep.session.account_id, remote.ip(), &ep.url).await {
        return;
    }
    let tls = warren_policy::TlsInfo { sni: sni.to_owned(), ..Default::default() };
    if !connect_allowed(ep, remote, tcp.local_addr().ok(), Some(tls)) {
        return;
    }
    let local = tcp.local_addr().unwrap_or(remote);
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
    if let Err(e) = warren_mux::splice::splice(&mut tcp, &mut stream).await {
        tracing::debug!(url = %ep.url, %remote, error = %e, "tls visitor connection ended with an error");
    }
}
