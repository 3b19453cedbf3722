//! DNS messages without I/O: a query for one name and type, and the records of that type in
//! its answer. The edge asks for TXT records (proof of control of a custom domain); the agent
//! for A and AAAA records (`dns_resolver_ips`). Each driver sends one UDP datagram and waits.
//!
//! Also RFC 2136 dynamic updates of one TXT record (the edge's DNS-01 answers for wildcard
//! certificates), signed with TSIG (RFC 8945): the MAC itself is computed by the caller, so
//! this crate holds no cryptography.

use std::net::IpAddr;

/// IPv4 address records.
pub const TYPE_A: u16 = 1;
/// Text records.
pub const TYPE_TXT: u16 = 16;
/// IPv6 address records.
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const TYPE_SOA: u16 = 6;
const TYPE_TSIG: u16 = 250;
const OPCODE_UPDATE: u16 = 5;

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

/// `name` in wire form, lowercase (TSIG's canonical form), at most 255 bytes.
fn wire_name(name: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a DNS name"));
        }
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    if out.len() > 255 {
        return Err(format!("{name:?} is longer than a DNS name may be"));
    }
    Ok(out)
}

/// An RFC 2136 update of zone `zone` that adds (`add`) or deletes the TXT record `name` with
/// the single string `value` (at most 255 bytes), TTL `ttl`. Unsigned: see [`tsig_sign`].
pub fn txt_update(
    id: u16,
    zone: &str,
    name: &str,
    value: &str,
    ttl: u32,
    add: bool,
) -> Result<Vec<u8>, String> {
    if value.len() > 255 {
        return Err("a TXT string is at most 255 bytes".into());
    }
    let mut m = Vec::with_capacity(64 + zone.len() + name.len() + value.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(OPCODE_UPDATE << 11).to_be_bytes());
    // One zone, no prerequisites, one update, no additional records (yet).
    m.extend_from_slice(&[0, 1, 0, 0, 0, 1, 0, 0]);
    m.extend_from_slice(&wire_name(zone)?);
    m.extend_from_slice(&TYPE_SOA.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m.extend_from_slice(&wire_name(name)?);
    m.extend_from_slice(&TYPE_TXT.to_be_bytes());
    // RFC 2136 §2.5.1 adds with the zone's class; §2.5.4 deletes one record with class NONE
    // and TTL 0.
    m.extend_from_slice(&(if add { CLASS_IN } else { CLASS_NONE }).to_be_bytes());
    m.extend_from_slice(&(if add { ttl } else { 0 }).to_be_bytes());
    m.extend_from_slice(&(value.len() as u16 + 1).to_be_bytes());
    m.push(value.len() as u8);
    m.extend_from_slice(value.as_bytes());
    Ok(m)
}

/// A TSIG key's name and algorithm (`hmac-sha256.`, `hmac-sha512.`).
#[derive(Clone, Copy, Debug)]
pub struct Tsig<'a> {
    /// The key's name, as the server knows it.
    pub key_name: &'a str,
    /// The algorithm's name.
    pub algorithm: &'a str,
    /// Seconds since the Unix epoch, as the signer's clock says.
    pub time_signed: u64,
    /// Clock difference the server may allow, in seconds (RFC 8945 recommends 300).
    pub fudge: u16,
}

/// Signs `msg` (a complete message without a TSIG record) with TSIG, RFC 8945 §4.3: `mac`
/// computes the keyed hash of what it is given. Returns the message with the TSIG record
/// appended and the additional count raised, and the MAC (to check the answer's).
pub fn tsig_sign(
    msg: &[u8],
    t: &Tsig<'_>,
    mac: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    if msg.len() < 12 {
        return Err("not a DNS message".into());
    }
    let key = wire_name(t.key_name)?;
    let alg = wire_name(t.algorithm)?;
    let time = t.time_signed.to_be_bytes();
    // The TSIG variables: key name, class, TTL, algorithm, time signed (48 bits), fudge,
    // error, other data length.
    let mut vars = Vec::with_capacity(key.len() + alg.len() + 20);
    vars.extend_from_slice(&key);
    vars.extend_from_slice(&CLASS_ANY.to_be_bytes());
    vars.extend_from_slice(&0u32.to_be_bytes());
    vars.extend_from_slice(&alg);
    vars.extend_from_slice(&time[2..8]);
    vars.extend_from_slice(&t.fudge.to_be_bytes());
    vars.extend_from_slice(&[0, 0, 0, 0]);
    let mut signed = msg.to_vec();
    signed.extend_from_slice(&vars);
    let digest = mac(&signed);
    let mut out = msg.to_vec();
    let arcount = u16::from_be_bytes([out[10], out[11]]).checked_add(1).ok_or("too many records")?;
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
    let mut rdata = Vec::with_capacity(alg.len() + 16 + digest.len());
    rdata.extend_from_slice(&alg);
    rdata.extend_from_slice(&time[2..8]);
    rdata.extend_from_slice(&t.fudge.to_be_bytes());
    rdata.extend_from_slice(&(digest.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&digest);
    rdata.extend_from_slice(&msg[0..2]);
    rdata.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&key);
    out.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    out.extend_from_slice(&CLASS_ANY.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok((out, digest))
}

/// The MAC an answer's TSIG record must carry (RFC 8945 §5.3): `mac` applied to the request's
/// MAC (with its length), the answer without its TSIG record, and the record's variables.
/// Returns what to compare with the answer's own MAC, and that MAC, when the answer is signed
/// with `key_name`; the time checks are the caller's (`now`, the record's time and fudge).
pub fn tsig_answer_mac(
    answer: &[u8],
    request_mac: &[u8],
    key_name: &str,
    now: u64,
    mac: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let bad = || "malformed DNS answer".to_string();
    if answer.len() < 12 {
        return Err(bad());
    }
    let count = |at: usize| u16::from_be_bytes([answer[at], answer[at + 1]]) as usize;
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if ar == 0 {
        return Err("the answer is not signed (no TSIG record): the server did not take the key".into());
    }
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(answer, at).ok_or_else(bad)? + 4;
    }
    for _ in 0..an + ns + ar - 1 {
        at = skip_name(answer, at).ok_or_else(bad)?;
        let len =
            u16::from_be_bytes([*answer.get(at + 8).ok_or_else(bad)?, *answer.get(at + 9).ok_or_else(bad)?]);
        at += 10 + len as usize;
    }
    // The last record: the TSIG, its owner the key's name (never compressed).
    let tsig_at = at;
    let owner = wire_name(key_name)?;
    let name_end = skip_name(answer, at).ok_or_else(bad)?;
    let seen = answer.get(at..name_end).ok_or_else(bad)?;
    if !seen.eq_ignore_ascii_case(&owner) {
        return Err("the answer is signed with another key".into());
    }
    at = name_end;
    let head = answer.get(at..at + 10).ok_or_else(bad)?;
    if u16::from_be_bytes([head[0], head[1]]) != TYPE_TSIG {
        return Err("the answer's last record is not its TSIG".into());
    }
    let rdata =
        answer.get(at + 10..at + 10 + u16::from_be_bytes([head[8], head[9]]) as usize).ok_or_else(bad)?;
    let alg_end = skip_name(rdata, 0).ok_or_else(bad)?;
    let alg = &rdata[..alg_end];
    let fixed = rdata.get(alg_end..alg_end + 10).ok_or_else(bad)?;
    let time = u64::from_be_bytes([0, 0, fixed[0], fixed[1], fixed[2], fixed[3], fixed[4], fixed[5]]);
    let fudge = u16::from_be_bytes([fixed[6], fixed[7]]);
    let mac_len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
    let their_mac = rdata.get(alg_end + 10..alg_end + 10 + mac_len).ok_or_else(bad)?.to_vec();
    let rest = rdata.get(alg_end + 10 + mac_len..).ok_or_else(bad)?;
    if rest.len() < 6 {
        return Err(bad());
    }
    let error = u16::from_be_bytes([rest[2], rest[3]]);
    let other_len = u16::from_be_bytes([rest[4], rest[5]]) as usize;
    let other = rest.get(6..6 + other_len).ok_or_else(bad)?;
    if error != 0 {
        return Err(format!(
            "the server refused the signature (TSIG error {error}: {})",
            match error {
                16 => "BADSIG, the secret differs",
                17 => "BADKEY, the server does not know the key",
                18 => "BADTIME, the clocks differ by more than the fudge",
                _ => "see RFC 8945",
            }
        ));
    }
    if now.abs_diff(time) > u64::from(fudge) {
        return Err("the answer's signature is from another time (BADTIME)".into());
    }
    // Signed: the request's MAC, the answer as it was before its TSIG (id as sent, one
    // additional record fewer), then the variables.
    let mut signed = Vec::with_capacity(2 + request_mac.len() + answer.len());
    signed.extend_from_slice(&(request_mac.len() as u16).to_be_bytes());
    signed.extend_from_slice(request_mac);
    let mut msg = answer[..tsig_at].to_vec();
    msg[0..2].copy_from_slice(&rest[0..2]);
    msg[10..12].copy_from_slice(&((ar - 1) as u16).to_be_bytes());
    signed.extend_from_slice(&msg);
    signed.extend_from_slice(&owner);
    signed.extend_from_slice(&CLASS_ANY.to_be_bytes());
    signed.extend_from_slice(&0u32.to_be_bytes());
    signed.extend_from_slice(&alg.to_ascii_lowercase());
    signed.extend_from_slice(&fixed[0..8]);
    signed.extend_from_slice(&rest[2..6]);
    signed.extend_from_slice(other);
    Ok((mac(&signed), their_mac))
}

/// Whether the answer to update `id` reports success; otherwise what the server said.
pub fn update_result(msg: &[u8], id: u16) -> Result<(), String> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("malformed DNS answer".into());
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 == 0 || (flags >> 11) & 0xF != OPCODE_UPDATE {
        return Err("malformed DNS answer".into());
    }
    match flags & 0x000F {
        0 => Ok(()),
        5 => Err("the server refused the update (REFUSED: is the key allowed to update this zone?)".into()),
        9 => {
            Err("the server says it is not authoritative for the zone, or the key was not accepted (NOTAUTH)"
                .into())
        }
        10 => Err("the name is not in the zone (NOTZONE)".into()),
        2 => Err("the server failed (SERVFAIL)".into()),
        rcode => Err(format!("the server answered the update with error code {rcode}")),
    }
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

    /// A stand-in keyed hash for tests (FNV-1a over key and message).
    fn fake_mac(key: &[u8], b: &[u8]) -> Vec<u8> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &c in key.iter().chain(b) {
            h = (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3);
        }
        h.to_be_bytes().to_vec()
    }

    #[test]
    fn an_answers_tsig_is_checked_against_the_requests_mac() {
        let t = Tsig { key_name: "warren-key", algorithm: "hmac-sha256", time_signed: 1_000_000, fudge: 300 };
        let request =
            txt_update(0x4242, "example.test", "_acme-challenge.example.test", "v", 60, true).unwrap();
        let (_, request_mac) = tsig_sign(&request, &t, |b| fake_mac(b"k", b)).unwrap();
        // The server's answer: the header flipped to a response, signed over the request's MAC.
        let mut answer = request[..12].to_vec();
        answer[2] |= 0x80;
        answer[5] = 0; // no zone section echoed, for brevity
        answer[9] = 0;
        let mut prefix = (request_mac.len() as u16).to_be_bytes().to_vec();
        prefix.extend_from_slice(&request_mac);
        let server = Tsig { time_signed: 1_000_010, ..t };
        let sign = |key: &'static [u8]| {
            let p = prefix.clone();
            move |b: &[u8]| {
                let mut all = p.clone();
                all.extend_from_slice(b);
                fake_mac(key, &all)
            }
        };
        let (signed, _) = tsig_sign(&answer, &server, sign(b"k")).unwrap();
        let (want, got) =
            tsig_answer_mac(&signed, &request_mac, "warren-key", 1_000_020, |b| fake_mac(b"k", b)).unwrap();
        assert_eq!(want, got, "a good signature verifies");
        // Another secret, a changed byte, another key's name, a stale time: refused.
        let (bad, _) = tsig_sign(&answer, &server, sign(b"other")).unwrap();
        let (want, got) =
            tsig_answer_mac(&bad, &request_mac, "warren-key", 1_000_020, |b| fake_mac(b"k", b)).unwrap();
        assert_ne!(want, got);
        let mut tampered = signed.clone();
        tampered[3] ^= 0x01;
        let (want, got) =
            tsig_answer_mac(&tampered, &request_mac, "warren-key", 1_000_020, |b| fake_mac(b"k", b)).unwrap();
        assert_ne!(want, got);
        assert!(
            tsig_answer_mac(&signed, &request_mac, "other-key", 1_000_020, |b| fake_mac(b"k", b)).is_err()
        );
        assert!(
            tsig_answer_mac(&signed, &request_mac, "warren-key", 1_001_000, |b| fake_mac(b"k", b)).is_err()
        );
        assert!(
            tsig_answer_mac(&answer, &request_mac, "warren-key", 1_000_020, |b| fake_mac(b"k", b)).is_err(),
            "unsigned"
        );
        for cut in 0..signed.len() {
            let _ =
                tsig_answer_mac(&signed[..cut], &request_mac, "warren-key", 1_000_020, |b| fake_mac(b"k", b));
        }
    }

    #[test]
    fn a_signed_txt_update_has_the_zone_the_record_and_a_tsig_over_both() {
        let m = txt_update(0x1234, "example.test", "_acme-challenge.Example.test", "tok", 60, true).unwrap();
        // Header: id, opcode UPDATE, one zone, one update.
        assert_eq!(&m[..12], &[0x12, 0x34, 0x28, 0, 0, 1, 0, 0, 0, 1, 0, 0]);
        assert!(m.ends_with(&[0, 16, 0, 1, 0, 0, 0, 60, 0, 4, 3, b't', b'o', b'k']));
        let delete = txt_update(1, "example.test", "_acme-challenge.example.test", "tok", 60, false).unwrap();
        assert!(delete.ends_with(&[0, 16, 0, 254, 0, 0, 0, 0, 0, 4, 3, b't', b'o', b'k']));
        let t = Tsig {
            key_name: "warren-key",
            algorithm: "hmac-sha256",
            time_signed: 0x0102_0304_0506,
            fudge: 300,
        };
        let mut seen = Vec::new();
        let (signed, mac) = tsig_sign(&m, &t, |b| {
            seen = b.to_vec();
            vec![0xAB; 32]
        })
        .unwrap();
        assert_eq!(mac, vec![0xAB; 32]);
        assert!(seen.starts_with(&m), "the MAC covers the message");
        assert!(seen.ends_with(&[1, 2, 3, 4, 5, 6, 1, 44, 0, 0, 0, 0]), "then time, fudge, error, other");
        assert_eq!(&signed[10..12], &[0, 1], "one additional record: the TSIG");
        assert!(signed.starts_with(&m[..10]));
        assert!(signed.ends_with(&[0x12, 0x34, 0, 0, 0, 0]), "original id, no error, no other data");
        assert!(txt_update(1, "z", "n", &"x".repeat(256), 60, true).is_err());
        assert!(txt_update(1, "z", "a..b", "x", 60, true).is_err());
        // Answers: success, and a refusal read out.
        let mut ok = m[..12].to_vec();
        ok[2] |= 0x80;
        assert_eq!(update_result(&ok, 0x1234), Ok(()));
        ok[3] = 5;
        assert!(update_result(&ok, 0x1234).unwrap_err().contains("REFUSED"));
        assert!(update_result(&ok, 0x9999).is_err(), "another id");
    }

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
