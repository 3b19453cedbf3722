//! TXT lookups for proving that an account controls a custom domain: the edge asks a DNS
//! resolver for `_warren-challenge.<domain>` and looks for the reservation's token.
//!
//! The query is built and the answer parsed without I/O ([`query`], [`parse_txt`]); the
//! driver ([`txt`]) sends one UDP datagram to the resolver and waits for the answer with the
//! same id, twice at most.

use std::net::SocketAddr;
use std::time::Duration;

/// Time for one try.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer read (UDP without EDNS: 512; more is allowed, never more than this).
const MAX_ANSWER: usize = 4096;
const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;

/// The TXT strings of `name`, asked of `resolver`. Each record's strings are joined, as
/// DNS splits long values into 255-byte pieces.
pub(crate) async fn txt(resolver: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    let bind: SocketAddr = if resolver.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(resolver).await.map_err(|e| e.to_string())?;
    let mut last = String::from("no answer");
    for _ in 0..2 {
        let id: u16 = rand::random();
        let q = query(id, name)?;
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
            Ok(Ok(n)) => return parse_txt(&buf[..n], id),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("{resolver} did not answer within {TRY_TIMEOUT:?}"),
        }
    }
    Err(last)
}

/// A standard query (recursion desired) for the TXT records of `name`.
pub(crate) fn query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_TXT.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// The TXT strings in an answer to query `id`. A name that does not exist is no strings;
/// a failure of the resolver is an error.
pub(crate) fn parse_txt(msg: &[u8], id: u16) -> Result<Vec<String>, String> {
    let bad = || "malformed DNS answer".to_string();
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err(bad());
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 == 0 {
        return Err(bad());
    }
    match flags & 0x000F {
        0 => {}
        3 => return Ok(Vec::new()),
        rcode => return Err(format!("the resolver answered with error code {rcode}")),
    }
    let count = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]) as usize;
    let (questions, answers) = (count(4), count(6));
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at).ok_or_else(bad)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at).ok_or_else(bad)?;
        let head = msg.get(at..at + 10).ok_or_else(bad)?;
        let ty = u16::from_be_bytes([head[0], head[1]]);
        let len = u16::from_be_bytes([head[8], head[9]]) as usize;
        let data = msg.get(at + 10..at + 10 + len).ok_or_else(bad)?;
        at += 10 + len;
        if ty != TYPE_TXT {
            // A CNAME on the way; the TXT records follow it in the same answer.
            continue;
        }
        let mut value = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = data[i] as usize;
            value.extend_from_slice(data.get(i + 1..i + 1 + n).ok_or_else(bad)?);
            i += 1 + n;
        }
        out.push(String::from_utf8_lossy(&value).into_owned());
    }
    Ok(out)
}

/// The offset after the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return (at + 2 <= msg.len()).then_some(at + 2),
            l if l & 0xC0 == 0 => at += 1 + l as usize,
            _ => return None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a resolver sends it: the question, a CNAME, then a TXT record of two
    /// strings, names compressed.
    fn answer(id: u16, rcode: u16) -> Vec<u8> {
        let mut m = query(id, "_warren-challenge.shop.example.com").unwrap();
        m[2] = 0x81;
        m[3] = 0x80 | rcode as u8;
        m[7] = 2;
        // CNAME: pointer to the question name, type 5, class 1, ttl, rdata = pointer.
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 12]);
        m.extend_from_slice(&[
            0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 9, 3, b'a', b'b', b'c', 4, b'-', b'x', b'y', b'z',
        ]);
        m
    }

    #[test]
    fn queries_are_well_formed_and_answers_parse() {
        let q = query(0x1234, "a.example.com.").unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x01a\x07example\x03com\x00\x00\x10\x00\x01");
        assert_eq!(parse_txt(&answer(7, 0), 7).unwrap(), vec!["abc-xyz".to_owned()]);
        assert_eq!(parse_txt(&answer(7, 3), 7).unwrap(), Vec::<String>::new(), "NXDOMAIN: no records");
        assert!(parse_txt(&answer(7, 2), 7).unwrap_err().contains("error code 2"));
        assert!(parse_txt(&answer(7, 0), 8).is_err(), "another query's answer");
        assert!(query(1, "a..b").is_err());
    }

    #[test]
    fn truncated_or_garbage_answers_are_errors_not_panics() {
        let a = answer(7, 0);
        for cut in 0..a.len() {
            let _ = parse_txt(&a[..cut], 7);
        }
        let mut garbage = a.clone();
        for i in 12..garbage.len() {
            garbage[i] = garbage[i].wrapping_mul(31).wrapping_add(7);
            let _ = parse_txt(&garbage, 7);
        }
    }
}
