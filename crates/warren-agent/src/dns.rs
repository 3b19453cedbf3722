//! `agent.dns_resolver_ips` (ngrok's key): the edge's connect host is looked up through these
//! resolvers instead of the system's. Queries are built and answers parsed without I/O
//! (`warren_proto::dns`); this sends one UDP datagram per try and waits for its answer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use warren_proto::dns;

/// Time for one try.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer read.
const MAX_ANSWER: usize = 4096;

/// The addresses of `host` (A records first, then AAAA), from the first resolver that has any.
pub(crate) async fn lookup(resolvers: &[SocketAddr], host: &str) -> Result<Vec<IpAddr>, String> {
    let mut last = String::from("no resolver answered");
    for resolver in resolvers {
        for qtype in [dns::TYPE_A, dns::TYPE_AAAA] {
            match ask(*resolver, host, qtype).await {
                Ok(addrs) if !addrs.is_empty() => return Ok(addrs),
                Ok(_) => last = format!("{resolver} has no address for {host}"),
                Err(e) => last = format!("{resolver}: {e}"),
            }
        }
    }
    Err(format!("cannot look {host} up through dns_resolver_ips: {last}"))
}

async fn ask(resolver: SocketAddr, name: &str, qtype: u16) -> Result<Vec<IpAddr>, String> {
    let bind: SocketAddr = if resolver.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(resolver).await.map_err(|e| e.to_string())?;
    let id: u16 = rand::random();
    socket.send(&dns::query(id, name, qtype)?).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_ANSWER];
    let n = tokio::time::timeout(TRY_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // A stray datagram is not the answer.
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Ok::<_, std::io::Error>(n);
            }
        }
    })
    .await
    .map_err(|_| format!("no answer within {TRY_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    dns::parse_addrs(&buf[..n], id, qtype)
}

/// A resolver as `dns_resolver_ips` names it: an IP address, with port 53 unless given.
pub fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>().map_err(|_| format!("dns_resolver_ips: {s:?} is not an IP address (or IP:port)"))
}
