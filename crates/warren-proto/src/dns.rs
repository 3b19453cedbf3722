//! DNS messages without I/O: a query for one name and type, and the records of that type in
//! its answer. The edge asks for TXT records (proof of control of a custom domain); the agent
//! for A and AAAA records (`dns_resolver_ips`). Each driver sends one UDP datagram and waits.

use std::net::IpAddr;

/// IPv4 address records.
pub const TYPE_A: u16 = 1;
/// Text records.
pub const TYPE_TXT: u16 = 16;
/// IPv6 address records.
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// A standard query (recursion desired) for the records of type `qtype` of `name`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
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
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// The data of every record of type `qtype` in an answer to query `id` (CNAMEs on the way are
/// skipped). A name that does not exist has none; a failure of the resolver is an error.
pub fn answers(msg: &[u8], id: u16, qtype: u16) -> Result<Vec<&[u8]>, String> {
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
    let (questions, records) = (count(4), count(6));
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at).ok_or_else(bad)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..records {
        at = skip_name(msg, at).ok_or_else(bad)?;
        let head = msg.get(at..at + 10).ok_or_else(bad)?;
        let ty = u16::from_be_bytes([head[0], head[1]]);
        let len = u16::from_be_bytes([head[8], head[9]]) as usize;
        let data = msg.get(at + 10..at + 10 + len).ok_or_else(bad)?;
        at += 10 + len;
        if ty == qtype {
            out.push(data);
        }
    }
    Ok(out)
}

/// The TXT strings in an answer to query `id`. Each record's strings are joined, as DNS
/// splits long values into 255-byte pieces.
pub fn parse_txt(msg: &[u8], id: u16) -> Result<Vec<String>, String> {
    let bad = || "malformed DNS answer".to_string();
    let mut out = Vec::new();
    for data in answers(msg, id, TYPE_TXT)? {
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

/// The addresses in an answer to an A or AAAA query `id`.
pub fn parse_addrs(msg: &[u8], id: u16, qtype: u16) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for data in answers(msg, id, qtype)? {
        match (qtype, data.len()) {
            (TYPE_A, 4) => out.push(IpAddr::from(<[u8; 4]>::try_from(data).expect("4 bytes"))),
            (TYPE_AAAA, 16) => out.push(IpAddr::from(<[u8; 16]>::try_from(data).expect("16 bytes"))),
            _ => return Err("malformed DNS answer".into()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a resolver sends it: the question, a CNAME, then a TXT record of two
    /// strings, names compressed.
    fn answer(id: u16, rcode: u16) -> Vec<u8> {
        let mut m = query(id, "_warren-challenge.shop.example.com", TYPE_TXT).unwrap();
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
        let q = query(0x1234, "a.example.com.", TYPE_TXT).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x01a\x07example\x03com\x00\x00\x10\x00\x01");
        assert_eq!(parse_txt(&answer(7, 0), 7).unwrap(), vec!["abc-xyz".to_owned()]);
        assert_eq!(parse_txt(&answer(7, 3), 7).unwrap(), Vec::<String>::new(), "NXDOMAIN: no records");
        assert!(parse_txt(&answer(7, 2), 7).unwrap_err().contains("error code 2"));
        assert!(parse_txt(&answer(7, 0), 8).is_err(), "another query's answer");
        assert!(query(1, "a..b", TYPE_A).is_err());
    }

    #[test]
    fn address_answers_parse_and_odd_lengths_are_refused() {
        let mut m = query(9, "connect.example.com", TYPE_A).unwrap();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 2;
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        let addrs = parse_addrs(&m, 9, TYPE_A).unwrap();
        assert_eq!(addrs, ["127.0.0.1".parse::<IpAddr>().unwrap(), "10.1.2.3".parse().unwrap()]);
        assert!(parse_addrs(&m, 9, TYPE_AAAA).unwrap().is_empty(), "no AAAA records in it");
        let last = m.len() - 1;
        m[last - 4] = 3; // an A record of 3 bytes
        assert!(parse_addrs(&m[..last], 9, TYPE_A).is_err());
    }

    #[test]
    fn truncated_or_garbage_answers_are_errors_not_panics() {
        let a = answer(7, 0);
        for cut in 0..a.len() {
            let _ = parse_txt(&a[..cut], 7);
            let _ = parse_addrs(&a[..cut], 7, TYPE_A);
        }
        let mut garbage = a.clone();
        for i in 12..garbage.len() {
            garbage[i] = garbage[i].wrapping_mul(31).wrapping_add(7);
            let _ = parse_txt(&garbage, 7);
            let _ = parse_addrs(&garbage, 7, TYPE_AAAA);
        }
    }
}
