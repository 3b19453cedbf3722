//! Relay streams between nodes. A node that takes a visitor for an endpoint another node
//! holds opens a stream on its link to that node, says what the stream carries
//! ([`RelayOpen`]), waits for the holder's [`Ack`], then the visitor's bytes follow. The
//! holder serves the stream as if the visitor had reached it directly, with the visitor's
//! address from the header, so IP restrictions, traffic policies, metrics and events all
//! run where the endpoint is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_mux::Stream;

use crate::Shared;
use crate::registry::{EndpointKey, Proto};

/// Longest header accepted; a real one is under 300 bytes.
const MAX_HEADER: usize = 4096;

/// How long the opening node waits for the header to be read and acknowledged.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a relay stream carries; the first thing on it (a big-endian `u32` length, then JSON).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RelayOpen {
    /// A visitor's connection to the shared TLS port whose SNI names an https or tls
    /// endpoint of the holder; the ClientHello and everything after it follow, untouched.
    Tls {
        /// The endpoint the opener's view says holds `sni` (its fencing token).
        endpoint_id: String,
        /// The ClientHello's server name.
        sni: String,
        /// The visitor, as the opener resolved it (after trusted proxies).
        client: SocketAddr,
        /// The opener's address the visitor reached.
        local: SocketAddr,
    },
    /// HTTP/1.1 requests for one plain-http endpoint (the opener parsed them from a visitor
    /// and sends them on, hop-by-hop headers removed).
    Http {
        /// The endpoint the opener's view says holds `host`.
        endpoint_id: String,
        /// The endpoint's host name.
        host: String,
        /// The visitor.
        client: SocketAddr,
        /// The opener's address the visitor reached.
        local: SocketAddr,
    },
    /// A visitor's connection to a tcp endpoint's port; its bytes follow.
    Tcp {
        /// The endpoint the opener's view says holds `port`.
        endpoint_id: String,
        /// The tcp endpoint's port.
        port: u16,
        /// The visitor.
        client: SocketAddr,
        /// The opener's address the visitor reached.
        local: SocketAddr,
    },
}

/// The holder's one-byte answer to a [`RelayOpen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Ack {
    /// It holds that endpoint: the visitor's bytes may follow.
    Accepted = 0,
    /// It does not hold that endpoint (any more), or holds it under another id: the opener's
    /// view is stale.
    NotHere = 1,
    /// It is at its visitor connection limit.
    Busy = 2,
}

impl Ack {
    fn from_u8(b: u8) -> Option<Ack> {
        match b {
            0 => Some(Ack::Accepted),
            1 => Some(Ack::NotHere),
            2 => Some(Ack::Busy),
            _ => None,
        }
    }
}

impl RelayOpen {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a relay header serializes");
        let mut out = Vec::with_capacity(4 + json.len());
        out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Reads a header from the start of `s`.
    pub(crate) async fn read(s: &mut Stream) -> std::io::Result<RelayOpen> {
        let len = s.read_u32().await? as usize;
        if len > MAX_HEADER {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "relay header too long"));
        }
        let mut buf = vec![0; len];
        s.read_exact(&mut buf).await?;
        serde_json::from_slice(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    fn client(&self) -> SocketAddr {
        match self {
            RelayOpen::Tls { client, .. }
            | RelayOpen::Http { client, .. }
            | RelayOpen::Tcp { client, .. } => *client,
        }
    }

    fn endpoint_id(&self) -> &str {
        match self {
            RelayOpen::Tls { endpoint_id, .. }
            | RelayOpen::Http { endpoint_id, .. }
            | RelayOpen::Tcp { endpoint_id, .. } => endpoint_id,
        }
    }
}

/// Why a relay stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("the link to node {0} failed: {1}")]
    Link(String, std::io::Error),
    #[error("node {0} does not hold that endpoint")]
    NotHere(String),
    #[error("node {0} is at its connection limit")]
    Busy(String),
    #[error("node {0} did not answer in time")]
    Timeout(String),
}

/// Sends `open` on a new stream of `mux` and waits for the holder's answer.
pub(crate) async fn open(mux: &warren_mux::Mux, node: &str, open: &RelayOpen) -> Result<Stream, RelayError> {
    let link = |e| RelayError::Link(node.to_owned(), e);
    let attempt = async {
        let mut s = mux.open().map_err(link)?;
        s.write_all(&open.encode()).await.map_err(link)?;
        let b = s.read_u8().await.map_err(link)?;
        match Ack::from_u8(b) {
            Some(Ack::Accepted) => Ok(s),
            Some(Ack::NotHere) => Err(RelayError::NotHere(node.to_owned())),
            Some(Ack::Busy) => Err(RelayError::Busy(node.to_owned())),
            None => Err(link(std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown relay answer"))),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(RelayError::Timeout(node.to_owned())))
}

/// Serves one relay stream another node opened: checks that this node holds the endpoint
/// under the id the opener named (a stale view is refused and logged), answers, and serves
/// the visitor as its listener would.
pub(crate) async fn serve_stream(shared: Arc<Shared>, mut s: Stream, peer: String) {
    let open = match tokio::time::timeout(OPEN_TIMEOUT, RelayOpen::read(&mut s)).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return tracing::warn!(%peer, error = %e, "refused a relay stream with a bad header"),
        Err(_) => return tracing::warn!(%peer, "a relay stream sent no header in time"),
    };
    let id = open.endpoint_id();
    let client = open.client();
    // The permit first, then the shutdown check: a drain that began before the check sees
    // the permit and waits for this visitor, one that begins after it is refused here.
    let Ok(permit) = shared.listeners.visitor_limit.try_acquire(client.ip()) else {
        tracing::warn!(%peer, %client, "visitor connection limit reached; refused a relayed visitor");
        return refuse(s, Ack::Busy).await;
    };
    if *shared.shutdown.borrow() {
        // Draining: new visitors go to the endpoint's other holders (a pool's members
        // elsewhere); those already here finish.
        tracing::debug!(%peer, endpoint = %id, "shutting down; refused a relay stream");
        return refuse(s, Ack::NotHere).await;
    }
    // A wildcard endpoint serves the visitor's name under its wildcard name.
    let found =
        match &open {
            RelayOpen::Tls { sni, .. } => {
                let name =
                    crate::ingress_http::route_name(&shared, sni, &[Proto::Tls, Proto::Https]).into_owned();
                shared.sessions.registry.lookup_id(&EndpointKey::Host(Proto::Tls, name.clone()), id).or_else(
                    || shared.sessions.registry.lookup_id(&EndpointKey::Host(Proto::Https, name), id),
                )
            }
            RelayOpen::Http { host, .. } => shared.sessions.registry.lookup_id(
                &EndpointKey::Host(
                    Proto::Http,
                    crate::ingress_http::route_name(&shared, host, &[Proto::Http]).into_owned(),
                ),
                id,
            ),
            RelayOpen::Tcp { port, .. } => shared.sessions.registry.lookup_id(&EndpointKey::Port(*port), id),
        };
    let Some(ep) = found else {
        tracing::warn!(%peer, endpoint = %id, "refused a relay stream for an endpoint this node does not hold");
        return refuse(s, Ack::NotHere).await;
    };
    if s.write_all(&[Ack::Accepted as u8]).await.is_err() {
        return;
    }
    match open {
        RelayOpen::Tls { sni, local, .. } => {
            crate::ingress_http::front_relayed(shared, s, client, local, &sni, &ep.id).await
        }
        RelayOpen::Http { local, .. } => {
            crate::ingress_http::serve_relayed(shared, s, client, local, ep).await
        }
        RelayOpen::Tcp { local, .. } => crate::ingress_tcp::serve_relayed(shared, s, client, local, ep).await,
    }
    drop(permit);
}

/// Answers with a refusal and finishes the stream (a FIN, so the answer is read before the
/// stream goes; dropping an unfinished stream would reset it and lose the answer).
async fn refuse(mut s: Stream, why: Ack) {
    if s.write_all(&[why as u8]).await.is_ok() {
        let _ = tokio::time::timeout(OPEN_TIMEOUT, s.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_unknown_fields_are_refused() {
        let open = RelayOpen::Tcp {
            endpoint_id: "ep_1".into(),
            port: 20_001,
            client: "203.0.113.9:5555".parse().unwrap(),
            local: "10.0.0.2:20001".parse().unwrap(),
        };
        let bytes = open.encode();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(serde_json::from_slice::<RelayOpen>(&bytes[4..]).unwrap(), open);
        let extra = br#"{"kind":"tcp","endpoint_id":"ep_1","port":1,"client":"1.2.3.4:5","local":"1.2.3.4:6","admin":true}"#;
        assert!(serde_json::from_slice::<RelayOpen>(extra).is_err());
        let unknown = br#"{"kind":"agent","endpoint_id":"ep_1"}"#;
        assert!(serde_json::from_slice::<RelayOpen>(unknown).is_err());
    }

    #[test]
    fn acks_are_a_closed_set() {
        for a in [Ack::Accepted, Ack::NotHere, Ack::Busy] {
            assert_eq!(Ack::from_u8(a as u8), Some(a));
        }
        assert_eq!(Ack::from_u8(3), None);
    }
}
