//! Publishing events to a NATS subject: the client side of NATS's text protocol, as much as
//! delivery needs (INFO, CONNECT, PUB, SUB, MSG/HMSG, PING/PONG, -ERR). One connection per
//! batch, one message per event. With `jetstream`, every message must be acknowledged by the
//! stream that takes the subject (at-least-once); otherwise a PING answered by PONG after the
//! PUBs says the server has them (core NATS: subscribers online at that moment get them).
//! `tls://host:port` upgrades the connection to TLS after the server's INFO, as NATS does,
//! and verifies the server against the public roots or the destination's own CA; a server
//! that requires TLS behind a `nats://` URL is refused, never spoken to in the clear.

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

/// Whether the URL asks for TLS (`tls://`).
pub(crate) fn is_tls(url: &str) -> bool {
    url.starts_with("tls://")
}

/// `nats://host[:port]` or `tls://host[:port]` → (host, port).
pub(crate) fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(|| format!("{url}: a NATS URL starts with nats:// (or tls:// for TLS)"))?;
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        return Err(format!("{url}: put credentials in `token`, not in the URL (it is shown by the API)"));
    }
    if rest.contains('/') || rest.contains('?') {
        return Err(format!("{url}: a NATS URL is nats://host[:port] or tls://host[:port]"));
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

/// Where to publish, and how.
pub(super) struct Publish<'a> {
    pub(super) url: &'a str,
    pub(super) subject: &'a str,
    pub(super) token: Option<&'a str>,
    pub(super) jetstream: bool,
    /// PEM certificates to trust for `tls://` instead of the public roots.
    pub(super) tls_ca: Option<&'a str>,
}

/// Publishes each of `messages` to the subject.
pub(super) async fn publish(
    to: &Publish<'_>,
    messages: &[bytes::Bytes],
    reach: crate::idp::Reach,
) -> Result<(), Failed> {
    tokio::time::timeout(TIMEOUT, publish_inner(to, messages, reach))
        .await
        .map_err(|_| unavailable(format!("{} did not confirm within {} s", to.url, TIMEOUT.as_secs())))?
}

/// A TLS client config trusting `ca_pem`'s certificates, or the public roots.
pub(crate) fn tls_config(ca_pem: Option<&str>) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let roots = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let c = c.map_err(|e| format!("tls_ca: {e}"))?;
                roots.add(c).map_err(|e| format!("tls_ca: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_ca: no PEM certificate in it".into());
            }
            roots
        }
        None => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}

async fn publish_inner(
    to: &Publish<'_>,
    messages: &[bytes::Bytes],
    reach: crate::idp::Reach,
) -> Result<(), Failed> {
    let url = to.url;
    let (host, port) = host_port(url).map_err(unavailable)?;
    let tcp = crate::idp::connect_checked(url, &host, port, reach).await.map_err(unavailable)?;
    let _ = tcp.set_nodelay(true);
    // NATS sends INFO in the clear, then the client starts TLS when either side wants it.
    let mut plain = BufReader::new(tcp);
    let info = read_line(&mut plain).await?;
    let info: serde_json::Value = info
        .strip_prefix("INFO ")
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| unavailable(format!("{url} is not a NATS server")))?;
    let server_wants_tls = info["tls_required"].as_bool().unwrap_or(false);
    if is_tls(url) {
        if !plain.buffer().is_empty() {
            return Err(unavailable(format!("{url}: the server sent more than INFO before TLS")));
        }
        let tcp = plain.into_inner();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| unavailable(format!("{url}: {host} is not a TLS server name")))?;
        let cfg = tls_config(to.tls_ca).map_err(unavailable)?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| unavailable(format!("{url}: TLS: {e}")))?;
        converse(tls, &info, to, messages).await
    } else if server_wants_tls {
        Err(unavailable(format!("{url}: the server requires TLS; use tls://{host}:{port}")))
    } else {
        converse(plain.into_inner(), &info, to, messages).await
    }
}

/// The protocol after INFO, on the plain or TLS connection.
async fn converse<S>(
    stream: S,
    info: &serde_json::Value,
    to: &Publish<'_>,
    messages: &[bytes::Bytes],
) -> Result<(), Failed>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (url, subject, token, jetstream) = (to.url, to.subject, to.token, to.jetstream);
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
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
        assert_eq!(host_port("tls://nats.internal:4443").unwrap(), ("nats.internal".into(), 4443));
        assert!(is_tls("tls://a") && !is_tls("nats://a"));
        assert!(tls_config(Some("not a certificate")).is_err());
        assert!(host_port("http://host").is_err());
        assert!(check_subject("warren.events").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }
}
