//! Who the client really is. From the socket, unless the peer is a trusted load balancer:
//! then from its PROXY protocol header (every listener, when `proxy_protocol` is on) or, for
//! HTTP, from `X-Forwarded-For`. Untrusted peers cannot claim another address either way.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use tokio::net::TcpStream;

use crate::Shared;

/// The client address of a new connection: reads the PROXY header when the peer is a
/// trusted proxy and `proxy_protocol` is on. `None`: the header was required and bad (the
/// caller closes the connection).
pub(crate) async fn resolve(shared: &Shared, tcp: &mut TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
    let config = &shared.config;
    if !config.proxy_protocol || !config.is_trusted_proxy(peer.ip()) {
        return Some(peer);
    }
    let read = crate::proxy_protocol::read_header(tcp);
    match tokio::time::timeout(config.limits.handshake_timeout, read).await {
        Ok(Ok(Some(client))) => Some(client),
        Ok(Ok(None)) => Some(peer),
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "closing a connection from a trusted proxy");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "no PROXY protocol header in time from a trusted proxy; closing");
            None
        }
    }
}

/// The client IP of an HTTP request from `peer`: for a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries to its left are
/// whatever the client wrote, so they are never believed).
pub(crate) fn forwarded_ip(shared: &Shared, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let config = &shared.config;
    if !config.is_trusted_proxy(peer) {
        return peer;
    }
    let mut hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    while let Some(hop) = hops.pop() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if config.is_trusted_proxy(ip) => continue,
            Ok(ip) => return ip,
            // Garbage from the trusted chain: stop believing it.
            Err(_) => return peer,
        }
    }
    peer
}
