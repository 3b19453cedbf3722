//! Delivery. Every node leases destinations (one node delivers for a destination at a time;
//! a node that dies loses its leases within [`LEASE`]) and runs one task per destination it
//! holds. A task reads the destination's account's outbox behind the cursor, keeps the
//! events its subscriptions' sources take (type, CEL filter), renders each (the API's
//! representation of the resource, fields selected), sends the batch, and only then moves
//! the cursor: at-least-once. A failure is retried with capped exponential backoff and shown
//! on the destination; an event the destination refuses (4xx) [`MAX_REFUSALS`] times on its
//! own is parked, so the events behind it flow. Unreachable destinations are retried
//! forever: nothing is dropped for being late.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use warren_store::{EventDestination, EventSource, StoredEvent};

use super::Target;
use crate::Shared;
use crate::metrics::label;

/// How long a lease lasts; renewed every [`RENEW`].
const LEASE: i64 = 30;
const RENEW: Duration = Duration::from_secs(5);
/// Events sent in one batch at most (webhook, OTLP, NATS).
const MAX_BATCH: usize = 100;
/// Events appended to a file in one write and one sync at most.
const MAX_FILE_BATCH: usize = 500;
/// Refusals of one event, alone, before it is parked.
const MAX_REFUSALS: i64 = 5;
/// Backoff between failed tries: from 1 s, doubling, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Between tries of an event the destination refused (it answered, so it is up).
const REFUSAL_DELAY: Duration = Duration::from_secs(1);
/// Time for one webhook call.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a destination with nothing new looks again (sooner when woken).
const POLL: Duration = Duration::from_millis(500);

/// Leases destinations and keeps one delivery task per held lease.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.clone();
    let mut tasks: HashMap<String, Arc<AtomicBool>> = HashMap::new();
    loop {
        let now = warren_store::unix_now();
        match shared.store.lease_event_destinations(&shared.node_id, now, now + LEASE).await {
            Ok(held) => {
                let ids: HashSet<String> = held.iter().map(|d| d.id.clone()).collect();
                tasks.retain(|id, alive| {
                    let keep = ids.contains(id) && alive.load(Ordering::Relaxed);
                    if !keep {
                        alive.store(false, Ordering::Relaxed);
                    }
                    keep
                });
                for d in held {
                    if !tasks.contains_key(&d.id) {
                        let alive = Arc::new(AtomicBool::new(true));
                        tasks.insert(d.id.clone(), alive.clone());
                        tokio::spawn(deliver(shared.clone(), d, alive));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "store failed while leasing event destinations"),
        }
        // A new destination (a wake-up) is leased at once, not at the next renewal.
        let wake = shared.accounts.events.wake.notified();
        tokio::select! {
            _ = tokio::time::sleep(RENEW) => {}
            _ = wake => {}
            _ = stop.changed() => {
                for alive in tasks.values() {
                    alive.store(false, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

/// One event as it leaves: its envelope as JSON text (a traffic event's is shared by every
/// destination that takes it whole).
pub(super) struct Outgoing {
    /// The envelope (`event_id`, `event_type`, `event_timestamp`, `account_id`, `object`, ...).
    pub(super) text: bytes::Bytes,
}

/// What OTLP shows of an event beside its text, read back from the text (OTLP alone needs
/// it, so no other destination pays for it).
#[derive(serde::Deserialize, Default)]
struct Head<'a> {
    #[serde(borrow, default)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    account_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    event_timestamp: std::borrow::Cow<'a, str>,
}

impl Outgoing {
    fn from_envelope(env: &Value) -> Outgoing {
        Outgoing { text: env.to_string().into() }
    }

    fn head(&self) -> Head<'_> {
        serde_json::from_slice(&self.text).unwrap_or_default()
    }
}

/// Why a send failed.
pub(super) enum SendError {
    /// The destination refused the content (HTTP 4xx other than 408 and 429).
    Refused(String),
    /// It could not be reached, or failed (5xx, 408, 429, timeouts, I/O).
    Unavailable(String),
}

impl SendError {
    pub(super) fn text(&self) -> &str {
        match self {
            SendError::Refused(s) | SendError::Unavailable(s) => s,
        }
    }
}

/// One destination's delivery loop, while this node holds its lease.
async fn deliver(shared: Arc<Shared>, d: EventDestination, alive: Arc<AtomicBool>) {
    let (id, account) = (d.id.clone(), d.account_id.clone());
    let mut backoff = Duration::from_secs(1);
    let mut alone = false;
    let mut filters: HashMap<String, Option<Arc<warren_policy::EventFilter>>> = HashMap::new();
    while alive.load(Ordering::Relaxed) {
        let d = match shared.store.get_event_destination(&account, &id).await {
            Ok(d) => d,
            Err(warren_store::StoreError::NotFound(_)) => break,
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::warn!(destination = %id, error = %e, "store failed while reading an event destination");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(target) = Target::from_stored(&d.target) else {
            tracing::error!(destination = %id, "event destination has an unreadable target; not delivering");
            break;
        };
        let sources = shared.store.destination_sources(&id).await.unwrap_or_default();
        let events = match shared.store.events_after(&account, d.cursor, MAX_FILE_BATCH as u32).await {
            Ok(e) => e,
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::warn!(destination = %id, error = %e, "store failed while reading the event outbox");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let lag = events.first().map_or(0, |e| {
            let written = time_of(&e.created_at);
            warren_store::unix_now().saturating_sub(written).max(0)
        });
        shared.metrics.event_lag_seconds.get_or_create(&label("destination", &id)).set(lag);
        if events.is_empty() {
            let wake = shared.accounts.events.wake.notified();
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        // A file takes a large batch in one write and one sync; remote destinations a
        // request's worth.
        let limit = match (&target, alone) {
            (_, true) => 1,
            (Target::File { .. }, false) => MAX_FILE_BATCH,
            _ => MAX_BATCH,
        };
        let mut batch: Vec<(&StoredEvent, Value)> = Vec::new();
        let mut upto = d.cursor;
        for ev in &events {
            if batch.len() == limit {
                break;
            }
            upto = ev.seq;
            if let Some(env) = take(&shared, &sources, &mut filters, ev) {
                batch.push((ev, env));
            }
        }
        if batch.is_empty() {
            let _ = shared.store.event_destination_advanced(&id, &shared.node_id, upto, 0).await;
            continue;
        }
        let envelopes: Vec<Outgoing> = batch.iter().map(|(_, e)| Outgoing::from_envelope(e)).collect();
        match send(&shared, &d, &target, &envelopes, true).await {
            Ok(()) => {
                let n = batch.len() as i64;
                shared.metrics.events_delivered.get_or_create(&label("destination", &id)).inc_by(n as u64);
                if let Err(e) = shared.store.event_destination_advanced(&id, &shared.node_id, upto, n).await {
                    shared.metrics.store_errors.inc();
                    tracing::warn!(destination = %id, error = %e, "store failed while recording a delivery; it will be sent again");
                }
                backoff = Duration::from_secs(1);
                alone = false;
            }
            Err(err) => {
                shared.metrics.event_failures.get_or_create(&label("destination", &id)).inc();
                let attempts = shared.store.event_destination_failed(&id, err.text()).await.unwrap_or(0);
                tracing::info!(destination = %id, attempts, error = %err.text(), "event delivery failed; retrying");
                if let SendError::Refused(why) = &err {
                    if alone && attempts >= MAX_REFUSALS {
                        let (ev, _) = &batch[0];
                        tracing::warn!(destination = %id, event = %ev.id, "event refused {attempts} times; parked");
                        shared.metrics.events_parked.get_or_create(&label("destination", &id)).inc();
                        let _ = shared.store.park_event(&id, &shared.node_id, ev, why, attempts).await;
                        alone = false;
                        continue;
                    }
                    // Find the event it refuses: one at a time until one goes through. The
                    // destination is up, so no need to back off far.
                    alone = true;
                    tokio::time::sleep(REFUSAL_DELAY).await;
                    continue;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The envelope of `ev` if some source takes it.
fn take(
    shared: &Shared,
    sources: &[EventSource],
    filters: &mut HashMap<String, Option<Arc<warren_policy::EventFilter>>>,
    ev: &StoredEvent,
) -> Option<Value> {
    let matching: Vec<&EventSource> = sources.iter().filter(|s| s.kind == ev.event_type).collect();
    if matching.is_empty() {
        return None;
    }
    let object = if ev.object_kind == "rendered" {
        serde_json::from_str(&ev.object).ok()?
    } else {
        crate::api::render_object(shared, &ev.object_kind, &ev.object)?
    };
    // Several subscriptions may take the type: the first whose filter passes decides the
    // fields (the union would be surprising both ways).
    let source = matching.into_iter().find(|s| {
        if s.filter.is_empty() {
            return true;
        }
        let f = filters
            .entry(s.filter.clone())
            .or_insert_with(|| warren_policy::EventFilter::compile(&s.filter).ok().map(Arc::new));
        f.as_ref().is_some_and(|f| f.matches(&object))
    })?;
    let mut object = if source.fields.is_empty() { object } else { select(&object, &source.fields) };
    if let Some(base) = &shared.config.api_public_url {
        crate::api::absolutize(&mut object, base.trim_end_matches('/'));
    }
    let mut env = json!({
        "event_id": ev.id,
        "event_type": ev.event_type,
        "event_timestamp": ev.created_at,
        "account_id": ev.account_id,
        "object": object,
    });
    if ev.object_kind != "rendered" || ev.event_type.starts_with("agent_session_") {
        env["principal"] = serde_json::from_str(&ev.principal).unwrap_or(Value::Null);
    }
    Some(env)
}

/// Unix seconds of an RFC 3339 UTC time as the store writes them (`2026-12-03T08:04:18Z`).
fn time_of(t: &str) -> i64 {
    let n = |a: usize, b: usize| t.get(a..b).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

/// Only the dotted `fields` of `object` (missing ones are left out).
pub(super) fn select(object: &Value, fields: &[String]) -> Value {
    let mut out = json!({});
    for f in fields {
        let mut src = object;
        let parts: Vec<&str> = f.split('.').collect();
        let mut found = true;
        for p in &parts {
            match src.get(p) {
                Some(v) => src = v,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let mut dst = &mut out;
        for p in &parts[..parts.len() - 1] {
            dst = dst
                .as_object_mut()
                .expect("built as objects")
                .entry(p.to_string())
                .or_insert_with(|| json!({}));
            if !dst.is_object() {
                break;
            }
        }
        if let Some(o) = dst.as_object_mut() {
            o.insert(parts[parts.len() - 1].to_owned(), src.clone());
        }
    }
    out
}

/// Sends a batch to its destination. `durable`: a file is synced before this returns (the
/// outbox's cursor moves only after); traffic events, which never wait in the outbox, leave
/// that to the file system.
pub(super) async fn send(
    shared: &Shared,
    d: &EventDestination,
    target: &Target,
    batch: &[Outgoing],
    durable: bool,
) -> Result<(), SendError> {
    match target {
        Target::Webhook { url, .. } => {
            let opened = d
                .secret_sealed
                .as_deref()
                .and_then(|s| shared.master_key.open(super::SECRET_LABEL, s).ok())
                .and_then(|s| String::from_utf8(s).ok())
                .ok_or_else(|| {
                    SendError::Unavailable(
                        "the webhook's secret cannot be opened with this edge's master key".into(),
                    )
                })?;
            // The receiver's own headers, kept sealed with the secret: never logged.
            let (secret, extra) = super::target::webhook_secret(&opened);
            let body = json_array(batch);
            let t = warren_store::unix_now();
            let signature = sign(secret.as_bytes(), t, &body);
            let mut headers = vec![
                (http::HeaderName::from_static("warren-signature"), format!("t={t},v1={signature}")),
                (http::HeaderName::from_static("warren-event-count"), batch.len().to_string()),
            ];
            for (name, value) in extra {
                if let Ok(n) = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                    headers.push((n, value));
                }
            }
            let post = crate::idp::Post { body: body.into(), content_type: "application/json", headers };
            let reach = crate::idp::Reach {
                loopback: shared.config.events.allow_loopback,
                private: shared.config.events.allow_private_networks,
            };
            let answer =
                tokio::time::timeout(WEBHOOK_TIMEOUT, crate::idp::call(url, Some(post), 4096, reach))
                    .await
                    .map_err(|_| {
                        SendError::Unavailable(format!(
                            "{url} did not answer within {} s",
                            WEBHOOK_TIMEOUT.as_secs()
                        ))
                    })?
                    .map_err(SendError::Unavailable)?;
            match answer.0 {
                200..=299 => Ok(()),
                s @ (408 | 429) => Err(SendError::Unavailable(format!("{url} answered {s}"))),
                s @ 400..=499 => Err(SendError::Refused(format!("{url} answered {s}"))),
                s => Err(SendError::Unavailable(format!("{url} answered {s}"))),
            }
        }
        Target::Otlp { url, .. } => {
            let body = serde_json::to_vec(&otlp_logs(batch)).expect("JSON");
            // The collector's headers, kept sealed: opened for each batch, never logged.
            let mut headers = Vec::new();
            if let Some(sealed) = d.secret_sealed.as_deref() {
                let opened = shared.master_key.open(super::SECRET_LABEL, sealed).map_err(|_| {
                    SendError::Unavailable(
                        "the OTLP headers cannot be opened with this edge's master key".into(),
                    )
                })?;
                let map: serde_json::Map<String, Value> = serde_json::from_slice(&opened)
                    .map_err(|_| SendError::Unavailable("the stored OTLP headers are unreadable".into()))?;
                for (name, value) in map {
                    if let (Ok(n), Some(v)) = (http::HeaderName::from_bytes(name.as_bytes()), value.as_str())
                    {
                        headers.push((n, v.to_owned()));
                    }
                }
            }
            let post = crate::idp::Post { body: body.into(), content_type: "application/json", headers };
            let reach = crate::idp::Reach {
                loopback: shared.config.events.allow_loopback,
                private: shared.config.events.allow_private_networks,
            };
            let answer =
                tokio::time::timeout(WEBHOOK_TIMEOUT, crate::idp::call(url, Some(post), 64 * 1024, reach))
                    .await
                    .map_err(|_| {
                        SendError::Unavailable(format!(
                            "{url} did not answer within {} s",
                            WEBHOOK_TIMEOUT.as_secs()
                        ))
                    })?
                    .map_err(SendError::Unavailable)?;
            match answer.0 {
                200..=299 => Ok(()),
                s @ (408 | 429) => Err(SendError::Unavailable(format!("{url} answered {s}"))),
                s @ 400..=499 => Err(SendError::Refused(format!("{url} answered {s}"))),
                s => Err(SendError::Unavailable(format!("{url} answered {s}"))),
            }
        }
        Target::Nats { url, subject, jetstream, tls_ca, .. } => {
            let token = match d.secret_sealed.as_deref() {
                Some(s) => Some(shared.master_key.open(super::SECRET_LABEL, s).map_err(|_| {
                    SendError::Unavailable(
                        "the NATS token cannot be opened with this edge's master key".into(),
                    )
                })?),
                None => None,
            };
            let token = token.map(|t| String::from_utf8_lossy(&t).into_owned());
            let messages: Vec<bytes::Bytes> = batch.iter().map(|e| e.text.clone()).collect();
            let reach = crate::idp::Reach {
                loopback: shared.config.events.allow_loopback,
                private: shared.config.events.allow_private_networks,
            };
            let to = super::nats::Publish {
                url,
                subject,
                token: token.as_deref(),
                jetstream: *jetstream,
                tls_ca: tls_ca.as_deref(),
            };
            super::nats::publish(&to, &messages, reach).await.map_err(|f| {
                if f.refused { SendError::Refused(f.why) } else { SendError::Unavailable(f.why) }
            })
        }
        Target::File { name, max_bytes, max_files } => {
            let dir =
                shared.config.events.dir.clone().unwrap_or_else(|| shared.config.data_dir.join("events"));
            let (name, max_bytes, max_files) = (name.clone(), *max_bytes, *max_files);
            let mut lines = Vec::with_capacity(batch.iter().map(|e| e.text.len() + 1).sum());
            for e in batch {
                lines.extend_from_slice(&e.text);
                lines.push(b'\n');
            }
            let shown = name.clone();
            tokio::task::spawn_blocking(move || append(&dir, &name, &lines, max_bytes, max_files, durable))
                .await
                .map_err(|e| SendError::Unavailable(e.to_string()))?
                .map_err(|e| SendError::Unavailable(format!("writing {shown}: {e}")))
        }
    }
}

/// The batch's envelopes as one JSON array, without parsing them again.
fn json_array(batch: &[Outgoing]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + batch.iter().map(|e| e.text.len() + 1).sum::<usize>());
    body.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.text);
    }
    body.push(b']');
    body
}

/// A batch as an OTLP `ExportLogsServiceRequest` in OTLP/HTTP's JSON encoding: one log record
/// per event, the envelope as its body (a JSON string), the event's type, id and account as
/// attributes, and its time.
fn otlp_logs(batch: &[Outgoing]) -> Value {
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let records: Vec<Value> = batch
        .iter()
        .map(|env| {
            let head = env.head();
            let nanos = time_of(&head.event_timestamp).max(0) as u128 * 1_000_000_000;
            json!({
                "timeUnixNano": nanos.to_string(),
                "observedTimeUnixNano": nanos.to_string(),
                "severityNumber": 9,
                "severityText": "INFO",
                "body": {"stringValue": String::from_utf8_lossy(&env.text)},
                "attributes": [
                    attr("event.name", &head.event_type),
                    attr("event.id", &head.event_id),
                    attr("warren.account_id", &head.account_id),
                ],
            })
        })
        .collect();
    json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "warren"}}]},
        "scopeLogs": [{"scope": {"name": "warren.events", "version": env!("CARGO_PKG_VERSION")}, "logRecords": records}],
    }]})
}

/// HMAC-SHA256 of `"<t>.<body>"` under `secret`, in lowercase hex.
pub(crate) fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends `lines` (each ending in a newline) to `dir/name`, rotating it (`name.1`,
/// `name.2`, ...) before a line that would take it past `max_bytes`, and, when `durable`,
/// syncs before returning.
fn append(
    dir: &std::path::Path,
    name: &str,
    lines: &[u8],
    max_bytes: u64,
    max_files: u32,
    durable: bool,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(&path);
    let mut size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut f = open()?;
    if size + lines.len() as u64 <= max_bytes {
        // The usual batch: it all fits, one write, no need to find where its lines end.
        f.write_all(lines)?;
        return if durable { f.sync_data() } else { Ok(()) };
    }
    // One write per run of lines that fits before the next rotation, not one per line.
    let mut run = 0..0;
    for line in lines.split_inclusive(|b| *b == b'\n') {
        if size > 0 && size + line.len() as u64 > max_bytes {
            f.write_all(&lines[run.clone()])?;
            run = run.end..run.end;
            f.sync_data()?;
            let _ = std::fs::remove_file(dir.join(format!("{name}.{max_files}")));
            for i in (1..max_files).rev() {
                let from = dir.join(format!("{name}.{i}"));
                if from.exists() {
                    std::fs::rename(&from, dir.join(format!("{name}.{}", i + 1)))?;
                }
            }
            std::fs::rename(&path, dir.join(format!("{name}.1")))?;
            f = open()?;
            size = 0;
        }
        run.end += line.len();
        size += line.len() as u64;
    }
    f.write_all(&lines[run])?;
    if durable { f.sync_data() } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_times_read_back_as_unix_seconds() {
        assert_eq!(time_of(&warren_store::rfc3339(1_700_000_000)), 1_700_000_000);
        assert_eq!(time_of("1970-01-01T00:00:00Z"), 0);
        assert_eq!(time_of("2024-02-29T12:00:00Z"), 1_709_208_000);
    }

    #[test]
    fn fields_select_dotted_paths_and_skip_missing_ones() {
        let o = json!({"conn": {"client_ip": "1.2.3.4", "server_port": 443}, "http": {"response": {"status_code": 200}}});
        let fields = ["conn.client_ip", "http.response.status_code", "nope.x"].map(String::from);
        assert_eq!(
            select(&o, &fields),
            json!({"conn": {"client_ip": "1.2.3.4"}, "http": {"response": {"status_code": 200}}})
        );
    }

    #[test]
    fn files_rotate_past_their_size_and_keep_max_files() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..8 {
            append(dir.path(), "e.jsonl", format!("{{\"n\":{i}}}\n").as_bytes(), 10, 2, true).unwrap();
        }
        // Several lines in one batch rotate between lines.
        append(dir.path(), "e.jsonl", b"{\"n\":8}\n{\"n\":9}\n", 10, 2, true).unwrap();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
        assert_eq!(read("e.jsonl"), "{\"n\":9}\n");
        assert_eq!(read("e.jsonl.1"), "{\"n\":8}\n");
        assert_eq!(read("e.jsonl.2"), "{\"n\":7}\n");
        assert!(!dir.path().join("e.jsonl.3").exists());
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // printf '1700000000.[]' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign(b"whsec_test", 1_700_000_000, b"[]"),
            "fb017425d6de061bb16bed88b001a6b5e9d14818e174cf67988a449825c5583f"
        );
    }
}
