//! TXT lookups for proving that an account controls a custom domain: the edge asks a DNS
//! resolver for `_warren-challenge.<domain>` and looks for the reservation's token.
//!
//! The query is built and the answer parsed without I/O (`warren_proto::dns`); this driver
//! sends one UDP datagram to the resolver and waits for the answer with the same id, twice at
//! most.

use std::net::SocketAddr;
use std::time::Duration;

use warren_proto::dns;

/// Time for one try.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer read (UDP without EDNS: 512; more is allowed, never more than this).
const MAX_ANSWER: usize = 4096;

/// The TXT strings of `name`, asked of `resolver`.
pub(crate) async fn txt(resolver: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    let bind: SocketAddr = if resolver.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(resolver).await.map_err(|e| e.to_string())?;
    let mut last = String::from("no answer");
    for _ in 0..2 {
        let id: u16 = rand::random();
        let q = dns::query(id, name, dns::TYPE_TXT)?;
        socket.send(&q).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; MAX_ANSWER];
        let answer = tokio::time::timeout(TRY_TIMEOUT, async {
            loop {
                let n = socket.recv(&mut buf).await?;
                // A late answer to the previous try, or a stray datagram: not ours.
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Ok::<_, std::io::Error>(n);
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(n)) => return dns::parse_txt(&buf[..n], id),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("{resolver} did not answer within {TRY_TIMEOUT:?}"),
        }
    }
    Err(last)
}

/// The resolver named in `/etc/resolv.conf` (the first `nameserver`), if any.
pub(crate) fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let addr = l.trim().strip_prefix("nameserver")?.trim();
        let ip: std::net::IpAddr = addr.split('%').next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}
