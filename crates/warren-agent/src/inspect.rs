//! The request inspector's store: HTTP exchanges captured on inspected endpoints, newest
//! last, bounded in bytes (`inspect_db_size`) by dropping the oldest.
//!
//! An exchange is added when its request head arrives and filled in while the bodies stream
//! ([`Tee`]): the proxy never waits for a body to be captured, and a body larger than
//! [`BODY_CAP`] is kept only in part, marked truncated, with its full size.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};

use crate::state::LiveEndpoint;

/// ngrok's default `inspect_db_size` (when it is 0): 50 MB.
pub const DEFAULT_DB_SIZE: usize = 50 * 1024 * 1024;

/// The most of one body that is kept.
pub const BODY_CAP: usize = 1024 * 1024;

/// What an exchange costs in the store besides its headers and bodies.
const ENTRY_OVERHEAD: usize = 512;

/// The captured exchanges of every inspected endpoint.
pub struct Inspector {
    limit: usize,
    body_cap: usize,
    inner: Mutex<Store>,
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Store {
    entries: VecDeque<Arc<Exchange>>,
    bytes: usize,
    seq: u64,
}

/// One request and its response.
pub struct Exchange {
    /// `airt_...`, as ngrok names them.
    pub id: String,
    /// Position in capture order.
    pub seq: u64,
    /// The endpoint's name.
    pub endpoint: String,
    /// The endpoint's public URL when captured.
    pub endpoint_url: String,
    /// The visitor's address (from the edge's proxy header).
    pub client_addr: String,
    /// When the request arrived.
    pub started: SystemTime,
    /// The exchange this one replays.
    pub replay_of: Option<String>,
    began: Instant,
    /// Dropped from the store: bytes it still captures are not counted there any more.
    evicted: std::sync::atomic::AtomicBool,
    data: Mutex<ExchangeData>,
}

/// The parts of an exchange that fill in over time.
#[derive(Clone)]
pub struct ExchangeData {
    /// Request method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// Request HTTP version.
    pub version: Version,
    /// Request headers.
    pub req_headers: HeaderMap,
    /// Request body.
    pub req_body: CapturedBody,
    /// Response head, once it arrived.
    pub response: Option<(StatusCode, Version, HeaderMap)>,
    /// Response body.
    pub res_body: CapturedBody,
    /// Time to the end of the response body.
    pub duration: Option<Duration>,
    /// Why the exchange failed, if it did.
    pub error: Option<String>,
}

/// A body as far as it was kept.
#[derive(Clone, Default)]
pub struct CapturedBody {
    /// The kept bytes (at most the body cap).
    pub bytes: Vec<u8>,
    /// Every byte seen, kept or not.
    pub size: u64,
    /// More than `bytes` went through.
    pub truncated: bool,
    /// The body ended (or failed); nothing more will be added.
    pub complete: bool,
}

impl Inspector {
    /// A store holding about `limit` bytes of exchanges.
    pub fn new(limit: usize) -> Inspector {
        let limit = limit.max(64 * 1024);
        Inspector {
            limit,
            body_cap: BODY_CAP.min(limit / 4),
            inner: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Adds an exchange for a request that just arrived.
    pub fn begin(
        &self,
        ep: &LiveEndpoint,
        client_addr: &str,
        req: &http::Request<impl Sized>,
        replay_of: Option<String>,
    ) -> Arc<Exchange> {
        let mut store = self.lock();
        store.seq += 1;
        let ex = Arc::new(Exchange {
            id: new_id(),
            seq: store.seq,
            endpoint: ep.name.clone(),
            endpoint_url: ep.url(),
            client_addr: client_addr.to_owned(),
            started: SystemTime::now(),
            replay_of,
            began: Instant::now(),
            evicted: std::sync::atomic::AtomicBool::new(false),
            data: Mutex::new(ExchangeData {
                method: req.method().clone(),
                uri: req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.to_string()),
                version: req.version(),
                req_headers: req.headers().clone(),
                req_body: CapturedBody::default(),
                response: None,
                res_body: CapturedBody::default(),
                duration: None,
                error: None,
            }),
        });
        store.bytes += ENTRY_OVERHEAD + headers_size(req.headers());
        store.entries.push_back(ex.clone());
        self.evict(&mut store);
        let seq = store.seq;
        drop(store);
        self.changed.send_replace(seq);
        ex
    }

    /// Exchanges, newest first, optionally of one endpoint.
    pub fn list(&self, endpoint: Option<&str>, limit: usize) -> Vec<Arc<Exchange>> {
        let store = self.lock();
        store
            .entries
            .iter()
            .rev()
            .filter(|e| endpoint.is_none_or(|n| e.endpoint == n))
            .take(limit)
            .cloned()
            .collect()
    }

    /// One exchange by id.
    pub fn get(&self, id: &str) -> Option<Arc<Exchange>> {
        self.lock().entries.iter().find(|e| e.id == id).cloned()
    }

    /// Forgets every exchange.
    pub fn clear(&self) {
        let mut store = self.lock();
        for e in store.entries.drain(..) {
            e.evicted.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        store.bytes = 0;
        let seq = store.seq;
        drop(store);
        self.changed.send_replace(seq);
    }

    /// Bytes held now (approximately: headers, kept bodies and a fixed overhead per entry).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Changes whenever an exchange is added or completed (the sequence number).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evict(&self, store: &mut Store) {
        while store.bytes > self.limit && store.entries.len() > 1 {
            if let Some(old) = store.entries.pop_front() {
                old.evicted.store(true, std::sync::atomic::Ordering::Relaxed);
                store.bytes = store.bytes.saturating_sub(old.size());
            }
        }
    }

    /// Accounts for bytes `ex` kept after it was added (under the store's lock, so an
    /// exchange being dropped from the store is never counted again).
    fn grew(&self, ex: &Exchange, n: usize) {
        let mut store = self.lock();
        if !ex.evicted.load(std::sync::atomic::Ordering::Relaxed) {
            store.bytes += n;
        }
        self.evict(&mut store);
        let seq = store.seq;
        drop(store);
        self.changed.send_replace(seq);
    }
}

impl Exchange {
    /// A copy of what is known so far.
    pub fn data(&self) -> ExchangeData {
        self.lock().clone()
    }

    /// Records the response head.
    pub fn respond(&self, inspector: &Inspector, status: StatusCode, version: Version, headers: &HeaderMap) {
        self.lock().response = Some((status, version, headers.clone()));
        inspector.grew(self, headers_size(headers));
    }

    /// Records a failure (the upstream did not answer, the visitor went away).
    pub fn fail(&self, error: impl Into<String>) {
        let mut d = self.lock();
        d.error.get_or_insert_with(|| error.into());
        d.duration.get_or_insert_with(|| self.began.elapsed());
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }

    fn size(&self) -> usize {
        let d = self.lock();
        ENTRY_OVERHEAD
            + headers_size(&d.req_headers)
            + d.response.as_ref().map_or(0, |(_, _, h)| headers_size(h))
            + d.req_body.bytes.len()
            + d.res_body.bytes.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ExchangeData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn headers_size(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let tail: String = (0..27).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("airt_{tail}")
}

/// Which body a [`Tee`] captures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
    Response,
}

/// What a request is measured and captured into.
pub(crate) struct Track {
    pub(crate) endpoint: Arc<LiveEndpoint>,
    pub(crate) inspector: Option<Arc<Inspector>>,
    pub(crate) exchange: Option<Arc<Exchange>>,
    pub(crate) start: Instant,
}

/// A body passed through unchanged while its first bytes are kept in the exchange. At the
/// end of the response body the request's duration is recorded.
pub(crate) struct Tee<B> {
    inner: B,
    track: Arc<Track>,
    side: Side,
    done: bool,
}

impl<B> Tee<B> {
    pub(crate) fn new(inner: B, track: Arc<Track>, side: Side) -> Tee<B> {
        Tee { inner, track, side, done: false }
    }

    fn keep(&self, chunk: &[u8]) {
        let (Some(ex), Some(ins)) = (&self.track.exchange, &self.track.inspector) else { return };
        let kept = {
            let mut d = ex.lock();
            let body = match self.side {
                Side::Request => &mut d.req_body,
                Side::Response => &mut d.res_body,
            };
            body.size += chunk.len() as u64;
            let room = ins.body_cap.saturating_sub(body.bytes.len());
            let n = room.min(chunk.len());
            body.bytes.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                body.truncated = true;
            }
            n
        };
        if kept > 0 {
            ins.grew(ex, kept);
        }
    }

    fn end(&mut self, error: Option<String>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if self.side == Side::Response {
            self.track.endpoint.metrics.http_durations.record(self.track.start.elapsed());
        }
        let Some(ex) = &self.track.exchange else { return };
        {
            let mut d = ex.lock();
            let body = match self.side {
                Side::Request => &mut d.req_body,
                Side::Response => &mut d.res_body,
            };
            body.complete = true;
            if let Some(e) = error {
                d.error.get_or_insert(e);
            }
            if self.side == Side::Response {
                d.duration.get_or_insert_with(|| ex.began.elapsed());
            }
        }
        if let Some(ins) = &self.track.inspector {
            ins.grew(ex, 0);
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.keep(d);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("body failed: {e}");
                self.end(Some(msg));
            }
            Poll::Ready(None) => self.end(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        if !self.done {
            // hyper drops a body it has read to its known length without polling past the
            // end; only a body cut short is an error.
            let error = match &self.track.exchange {
                Some(ex) => {
                    let d = ex.lock();
                    let (body, headers) = match self.side {
                        Side::Request => (&d.req_body, Some(&d.req_headers)),
                        Side::Response => (&d.res_body, d.response.as_ref().map(|r| &r.2)),
                    };
                    let expected = headers
                        .and_then(|h| h.get(http::header::CONTENT_LENGTH))
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    match expected {
                        Some(n) if body.size >= n => None,
                        None if body.size == 0 => None,
                        _ => Some("the connection closed before the body ended".to_owned()),
                    }
                }
                None => None,
            };
            self.end(error);
        }
    }
}
