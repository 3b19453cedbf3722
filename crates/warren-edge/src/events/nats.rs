//! Publishing events to a NATS subject: the client side of NATS's text protocol, as much as
//! delivery needs (INFO, CONNECT, PUB, SUB, MSG/HMSG, PING/PONG, -ERR). One connection per
//! batch, one message per event. With `jetstream`, every message must be acknowledged by the
//! stream that takes the subject (at-least-once); otherwise a PING answered by PONG after the
//! PUBs says the server has them (core NATS: subscribers online at that moment get them).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest a protocol line from the server may be.
const MAX_LINE: usize = 64 * 1024;
/// Time for a whole batch.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a publish failed: `refused` when the server turned the content down (too large), so
/// the event is one to park.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) refused: bool,
    pub(super) why: String,
}

fn unavailable(why: impl Into<String>) -> Failed {
    Failed { refused: false, why: why.into() }
}

/// `nats://host[:port]` → (host, port).
pub(crate) fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("nats://").ok_or_else(|| format!("{url}: a NATS URL starts with nats://"))?;
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        return Err(format!("{url}: put credentials in `token`, not in the URL (it is shown by the API)"));
    }
    if rest.contains('/') || rest.contains('?') {
        return Err(format!("{url}: a NATS URL is nats://host[:port]"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.to_owned(), p.parse::<u16>().map_err(|_| format!("{url}: bad port"))?)
        }
        _ => (rest.to_owned(), 4222),
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// A subject to publish to: dot-separated tokens, no wildcards or spaces.
pub(crate) fn check_subject(subject: &str) -> Result<(), String> {
    let ok = !subject.is_empty()
        && subject.len() <= 256
        && subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">")
        && subject.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(format!("subject {subject:?}: dot-separated tokens, no wildcards, no spaces"))
    }
}

/// Publishes each of `messages` to `subject`.
pub(super) async fn publish(
    url: &str,
    subject: &str,
    token: Option<&str>,
    jetstream: bool,
    messages: &[Vec<u8>],
    reach: crate::idp::Reach,
) -> Result<(), Failed> {
    tokio::time::timeout(TIMEOUT, publish_inner(url, subject, token, jetstream, messages, reach))
        .await
        .map_err(|_| unavailable(format!("{url} did not confirm within {} s", TIMEOUT.as_secs())))?
}

async fn publish_inner(
    url: &str,
    subject: &str,
    token: Option<&str>,
    jetstream: bool,
    messages: &[Vec<u8>],
    reach: crate::idp::Reach,
) -> Result<(), Failed> {
    let (host, port) = host_port(url).map_err(unavailable)?;
    let tcp = crate::idp::connect_checked(url, &host, port, reach).await.map_err(unavailable)?;
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let info = read_line(&mut r).await?;
    let info: serde_json::Value = info
        .strip_prefix("INFO ")
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| unavailable(format!("{url} is not a NATS server")))?;
    let max_payload = info["max_payload"].as_u64().unwrap_or(1024 * 1024) as usize;
    let mut connect = serde_json::json!({
        "verbose": false, "pedantic": false, "name": "warren-events", "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"), "protocol": 1, "headers": true, "no_responders": true,
    });
    if let Some(t) = token {
        connect["auth_token"] = t.into();
    }
    let inbox = format!("_INBOX.warren.{}", warren_store::generate_id("x"));
    let mut out = format!("CONNECT {connect}\r\n").into_bytes();
    if jetstream {
        out.extend_from_slice(format!("SUB {inbox}.* 1\r\n").as_bytes());
    }
    for (i, m) in messages.iter().enumerate() {
        if m.len() > max_payload {
            return Err(Failed {
                refused: true,
                why: format!(
                    "an event of {} bytes is larger than the server's max_payload {max_payload}",
                    m.len()
                ),
            });
        }
        let head = if jetstream {
            format!("PUB {subject} {inbox}.{i} {}\r\n", m.len())
        } else {
            format!("PUB {subject} {}\r\n", m.len())
        };
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(m);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"PING\r\n");
    w.write_all(&out).await.map_err(|e| unavailable(format!("{url}: {e}")))?;
    let (mut pong, mut acks) = (false, 0usize);
    while !pong || (jetstream && acks < messages.len()) {
        let line = read_line(&mut r).await?;
        let mut words = line.split_ascii_whitespace();
        match words.next().unwrap_or_default() {
            "PONG" => pong = true,
            "PING" => w.write_all(b"PONG\r\n").await.map_err(|e| unavailable(e.to_string()))?,
            "+OK" | "INFO" => {}
            "-ERR" => {
                return Err(unavailable(format!(
                    "{url}: {}",
                    line.trim_start_matches("-ERR ").trim_matches('\'')
                )));
            }
            kind @ ("MSG" | "HMSG") => {
                let sizes: Vec<usize> =
                    line.split_ascii_whitespace().filter_map(|w| w.parse().ok()).collect();
                let total = *sizes.last().ok_or_else(|| unavailable(format!("{url}: bad {kind} line")))?;
                let header_len = if kind == "HMSG" {
                    sizes.get(sizes.len().wrapping_sub(2)).copied().unwrap_or(0)
                } else {
                    0
                };
                if total > max_payload + 4096 {
                    return Err(unavailable(format!("{url}: an answer of {total} bytes")));
                }
                let mut body = vec![0u8; total + 2];
                r.read_exact(&mut body).await.map_err(|e| unavailable(format!("{url}: {e}")))?;
                let (headers, payload) = body[..total].split_at(header_len.min(total));
                if String::from_utf8_lossy(headers).starts_with("NATS/1.0 503") {
                    return Err(unavailable(format!("no JetStream stream takes subject {subject} on {url}")));
                }
                let ack: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
                if let Some(e) = ack.get("error") {
                    return Err(unavailable(format!("{url}: JetStream refused the event: {e}")));
                }
                acks += 1;
            }
            _ => return Err(unavailable(format!("{url}: unexpected {line:?}"))),
        }
    }
    Ok(())
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<String, Failed> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(unavailable("the NATS server closed the connection"));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_subjects_are_checked() {
        assert_eq!(host_port("nats://127.0.0.1:4222").unwrap(), ("127.0.0.1".into(), 4222));
        assert_eq!(host_port("nats://nats.internal").unwrap(), ("nats.internal".into(), 4222));
        assert_eq!(host_port("nats://[::1]:4223").unwrap(), ("::1".into(), 4223));
        assert!(host_port("nats://u:p@host").unwrap_err().contains("token"));
        assert!(host_port("http://host").is_err());
        assert!(check_subject("warren.events").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }
}
