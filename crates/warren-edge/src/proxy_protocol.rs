//! PROXY protocol v1 and v2 (HAProxy's spec): a load balancer in front of the edge tells it
//! the visitor's real address in a header before the first byte of the connection. The edge
//! reads it only from peers in `trusted_proxies`, and only when `proxy_protocol` is on; from
//! them the header is required, so a misconfigured balancer fails loudly instead of making
//! every visitor look like the balancer.
//!
//! Parsing is sans-IO ([`parse_v1`], [`v2_body_len`], [`parse_v2`]); [`read_header`] reads
//! exactly the header's bytes from the socket, so nothing after it is consumed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts a v2 header.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 header, CRLF included (the spec's limit).
pub(crate) const V1_MAX: usize = 107;

/// Longest v2 address block (addresses plus TLVs) accepted. The spec allows 64 KiB; real
/// balancers send well under this, and a bound keeps a bad peer from holding memory.
pub(crate) const V2_MAX_BODY: usize = 2048;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The connection does not start with a PROXY header.
    #[error("no PROXY protocol header from a trusted proxy")]
    Missing,
    /// The header is malformed; the text says how.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The socket failed or closed while reading the header.
    #[error("reading the PROXY protocol header: {0}")]
    Io(String),
}

/// Parses a v1 line (`PROXY TCP4 src dst sport dport\r\n`). `None` means the balancer sent
/// `UNKNOWN` (its own health checks): use the socket's address.
pub(crate) fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let line = line.strip_suffix(b"\r\n").ok_or(ProxyError::Malformed("v1 line does not end in CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 line is not ASCII"))?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyError::Missing);
    }
    let family = parts.next().ok_or(ProxyError::Malformed("v1 line has no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let (src, _dst, sport, _dport) =
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(s), Some(d), Some(sp), Some(dp), None) => (s, d, sp, dp),
            _ => return Err(ProxyError::Malformed("v1 line needs source, destination and two ports")),
        };
    let ip: IpAddr = match family {
        "TCP4" => src.parse::<Ipv4Addr>().map(IpAddr::V4),
        "TCP6" => src.parse::<Ipv6Addr>().map(IpAddr::V6),
        _ => return Err(ProxyError::Malformed("v1 protocol must be TCP4, TCP6 or UNKNOWN")),
    }
    .map_err(|_| ProxyError::Malformed("v1 source address does not match its protocol"))?;
    let port = sport
        .parse::<u16>()
        .ok()
        .filter(|_| !sport.starts_with('0') || sport == "0")
        .ok_or(ProxyError::Malformed("v1 source port is not a number from 0 to 65535"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// From the 16-byte v2 preamble, the length of the block that follows.
pub(crate) fn v2_body_len(head: &[u8; 16]) -> Result<usize, ProxyError> {
    if head[..12] != V2_SIGNATURE {
        return Err(ProxyError::Missing);
    }
    if head[12] >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version nibble is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > V2_MAX_BODY {
        return Err(ProxyError::Malformed("v2 address block is longer than 2048 bytes"));
    }
    Ok(len)
}

/// Parses a v2 header from its preamble and block. `None` for LOCAL connections (the
/// balancer's own) and for families other than TCP over IPv4 or IPv6.
pub(crate) fn parse_v2(head: &[u8; 16], body: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let len = v2_body_len(head)?;
    if body.len() != len {
        return Err(ProxyError::Malformed("v2 address block has the wrong length"));
    }
    match head[12] & 0x0f {
        0 => return Ok(None),
        1 => {}
        _ => return Err(ProxyError::Malformed("v2 command is neither LOCAL nor PROXY")),
    }
    match head[13] {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let b = body.get(..12).ok_or(ProxyError::Malformed("v2 IPv4 block is too short"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]]))))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let b = body.get(..36).ok_or(ProxyError::Malformed("v2 IPv6 block is too short"))?;
            let src: [u8; 16] = b[..16].try_into().expect("16 bytes");
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), u16::from_be_bytes([b[32], b[33]]))))
        }
        // UNSPEC, UDP, UNIX: no usable client address.
        _ => Ok(None),
    }
}

/// The PROXY header (`version` 1 or 2) the edge puts before a tcp or tls endpoint's bytes
/// when the agent asked for one (`ProxyProto`): the visitor `src` reached the edge at `dst`.
/// Mixed families are written as IPv6 (IPv4-mapped).
pub(crate) fn encode(version: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src_ip, dst_ip) = match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (IpAddr::V4(a), IpAddr::V4(b)),
        (a, b) => (IpAddr::V6(to_v6(a)), IpAddr::V6(to_v6(b))),
    };
    if version == 1 {
        let family = if src_ip.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!("PROXY {family} {src_ip} {dst_ip} {} {}\r\n", src.port(), dst.port()).into_bytes();
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (src_ip, dst_ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&b.octets());
        }
        (a, b) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&to_v6(a).octets());
            out.extend_from_slice(&to_v6(b).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Reads one v1 or v2 header, consuming exactly its bytes. `Ok(None)`: the header carries no
/// client address; use the socket's.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<SocketAddr>, ProxyError> {
    let io_err = |e: std::io::Error| ProxyError::Io(e.to_string());
    // 12 bytes: the v2 signature, and shorter than any v1 line.
    let mut head = [0u8; 16];
    io.read_exact(&mut head[..12]).await.map_err(io_err)?;
    if head[..12] == V2_SIGNATURE {
        io.read_exact(&mut head[12..]).await.map_err(io_err)?;
        let mut body = vec![0u8; v2_body_len(&head)?];
        io.read_exact(&mut body).await.map_err(io_err)?;
        return parse_v2(&head, &body);
    }
    if &head[..6] != b"PROXY " {
        return Err(ProxyError::Missing);
    }
    // v1 ends at CRLF; byte by byte so that nothing after it is consumed (v1 is short, and
    // only trusted balancers reach this).
    let mut line = head[..12].to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyError::Malformed("v1 line is longer than 107 bytes"));
        }
        line.push(io.read_u8().await.map_err(io_err)?);
    }
    parse_v1(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20 | cmd, fam]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut cur = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cur).await;
        let pos = cur.position() as usize;
        (r, bytes[pos..].to_vec())
    }

    #[tokio::test]
    async fn v1_headers_give_the_source_and_leave_the_rest_unread() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r, Ok(Some("192.0.2.7:56324".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (r, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::1]:1".parse().unwrap())));
        let (r, rest) = read(b"PROXY UNKNOWN\r\n\x16\x03").await;
        assert_eq!((r, rest.as_slice()), (Ok(None), b"\x16\x03".as_slice()));
    }

    #[tokio::test]
    async fn v2_headers_give_the_source_and_skip_tlvs() {
        let mut body = vec![10, 1, 2, 3, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        body.extend([0x04, 0x00, 0x02, 0xaa, 0xbb]); // a TLV after the addresses
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend(b"after");
        let (r, rest) = read(&bytes).await;
        assert_eq!(r, Ok(Some("10.1.2.3:8080".parse().unwrap())));
        assert_eq!(rest, b"after");
        let mut six = vec![0u8; 36];
        six[..16].copy_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        six[32..34].copy_from_slice(&4242u16.to_be_bytes());
        assert_eq!(read(&v2(1, 0x21, &six)).await.0, Ok(Some("[2001:db8::9]:4242".parse().unwrap())));
        assert_eq!(read(&v2(0, 0x00, &[])).await.0, Ok(None), "LOCAL: the balancer's own check");
    }

    #[tokio::test]
    async fn bad_headers_are_refused_clearly() {
        assert_eq!(
            read(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00rest").await.0,
            Err(ProxyError::Missing)
        );
        assert!(matches!(
            read(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").await.0,
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(read(b"PROXY TCP4 ::1 ::1 1 1\r\n").await.0, Err(ProxyError::Malformed(_))));
        assert!(matches!(read(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 1\r\n").await.0, Err(ProxyError::Malformed(_))));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(read(long.as_bytes()).await.0, Err(ProxyError::Malformed(_))));
        assert!(matches!(read(b"PROXY TCP4 1.2.3.4").await.0, Err(ProxyError::Io(_))), "cut short");
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(read(&huge).await.0, Err(ProxyError::Malformed(_))));
        assert!(matches!(read(&v2(1, 0x11, &[1, 2, 3])).await.0, Err(ProxyError::Malformed(_))));
        let mut v3 = v2(1, 0x11, &[0; 12]);
        v3[12] = 0x31;
        assert!(matches!(read(&v3).await.0, Err(ProxyError::Malformed(_))));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_v1(&bytes);
            let mut head = [0u8; 16];
            let n = bytes.len().min(16);
            head[..n].copy_from_slice(&bytes[..n]);
            let _ = parse_v2(&head, &bytes[n..]);
        }
    }

    #[test]
    fn headers_the_edge_writes_read_back_as_the_visitor() {
        let cases: [(&str, &str); 3] = [
            ("192.0.2.1:40000", "198.51.100.2:443"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:443"),
            ("192.0.2.1:40000", "[2001:db8::2]:443"),
        ];
        for (src, dst) in cases {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let v1 = encode(1, src, dst);
            let got = parse_v1(&v1).unwrap().unwrap();
            assert_eq!((got.ip().to_canonical(), got.port()), (src.ip(), src.port()), "v1 {src}");
            let v2 = encode(2, src, dst);
            let head: [u8; 16] = v2[..16].try_into().unwrap();
            let got = parse_v2(&head, &v2[16..]).unwrap().unwrap();
            assert_eq!((got.ip().to_canonical(), got.port()), (src.ip(), src.port()), "v2 {src}");
        }
    }
}
