//! DNS-01 answers published with RFC 2136 dynamic updates: the TXT record
//! `_acme-challenge.<domain>` is added before the challenge is declared ready and deleted
//! after, by updates signed with TSIG and sent over TCP to the zone's primary server (the
//! messages are built without I/O by `warren_proto::dns`); an answer counts only when its own
//! TSIG verifies.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_proto::dns;

use crate::config::{Dns01Config, TsigAlgorithm};

/// Time for one update, connection included.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer read.
const MAX_ANSWER: usize = 4096;
/// TTL of the published record: short, it lives for one validation.
const TTL: u32 = 60;
/// How long the published record is looked for on the server before the challenge is
/// declared ready anyway.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// The record name that answers DNS-01 for `domain` (a wildcard's parent).
pub(crate) fn record_name(domain: &str) -> String {
    format!("_acme-challenge.{}", domain.strip_prefix("*.").unwrap_or(domain))
}

/// Adds (`add`) or deletes the TXT record `name` = `value` in the configured zone.
pub(crate) async fn update(cfg: &Dns01Config, domain: &str, value: &str, add: bool) -> Result<(), String> {
    let name = record_name(domain);
    let zone = cfg.zone.clone().unwrap_or_else(|| domain.trim_start_matches("*.").to_owned());
    let id: u16 = rand::random();
    let msg = dns::txt_update(id, &zone, &name, value, TTL, add)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let tsig =
        dns::Tsig { key_name: &cfg.key_name, algorithm: cfg.algorithm.name(), time_signed: now, fudge: 300 };
    let (signed, request_mac) = dns::tsig_sign(&msg, &tsig, |bytes| mac(cfg, bytes))?;
    let answer = tokio::time::timeout(UPDATE_TIMEOUT, exchange(cfg, &signed))
        .await
        .map_err(|_| format!("{} did not answer the update within {UPDATE_TIMEOUT:?}", cfg.server))??;
    let failed = |e: String| format!("updating {name} in zone {zone} at {}: {e}", cfg.server);
    // The answer is believed only when the server signed it with the key (RFC 8945 §5.3):
    // otherwise anyone on the path could say the record was published.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match dns::tsig_answer_mac(&answer, &request_mac, &cfg.key_name, now, |bytes| mac(cfg, bytes)) {
        Ok((want, got)) if bool::from(subtle::ConstantTimeEq::ct_eq(want.as_slice(), got.as_slice())) => {
            dns::update_result(&answer, id).map_err(failed)
        }
        Ok(_) => Err(failed("the answer's signature does not match the key".into())),
        // Unsigned or refused: the server's own reason first, when it gave one.
        Err(e) => Err(failed(dns::update_result(&answer, id).err().unwrap_or(e))),
    }
}

/// Waits until the server answers `name` with `value` (the update is served), within
/// [`VISIBLE_WITHIN`].
pub(crate) async fn wait_visible(cfg: &Dns01Config, domain: &str, value: &str) -> Result<(), String> {
    let name = record_name(domain);
    let deadline = tokio::time::Instant::now() + VISIBLE_WITHIN;
    loop {
        match crate::dns::txt(cfg.server, &name).await {
            Ok(values) if values.iter().any(|v| v == value) => return Ok(()),
            Ok(_) | Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("{name} did not show the new TXT record within {VISIBLE_WITHIN:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn mac(cfg: &Dns01Config, bytes: &[u8]) -> Vec<u8> {
    match cfg.algorithm {
        TsigAlgorithm::HmacSha256 => {
            let mut m =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(&cfg.secret.0).expect("HMAC takes any key length");
            m.update(bytes);
            m.finalize().into_bytes().to_vec()
        }
        TsigAlgorithm::HmacSha512 => {
            let mut m =
                hmac::Hmac::<sha2::Sha512>::new_from_slice(&cfg.secret.0).expect("HMAC takes any key length");
            m.update(bytes);
            m.finalize().into_bytes().to_vec()
        }
    }
}

/// One message over TCP (two-byte length prefix, RFC 1035 §4.2.2) and its answer.
async fn exchange(cfg: &Dns01Config, msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut tcp = tokio::net::TcpStream::connect(cfg.server)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.server))?;
    let len = u16::try_from(msg.len()).map_err(|_| "the update is too long")?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
    let n = tcp.read_u16().await.map_err(|e| format!("reading the answer: {e}"))? as usize;
    if n > MAX_ANSWER {
        return Err(format!("an answer of {n} bytes is more than an update's answer can be"));
    }
    let mut answer = vec![0; n];
    tcp.read_exact(&mut answer).await.map_err(|e| format!("reading the answer: {e}"))?;
    Ok(answer)
}
