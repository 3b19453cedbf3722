//! Traffic events, with ngrok's field names: `http_request_complete.v0` when a response's
//! body has been sent (or the visitor went away), `tcp_connection_closed.v0` when a tcp or
//! tls endpoint's connection closes. Built only for accounts that subscribe to them.

use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::traffic_out::Takes;
use crate::registry::Endpoint;

/// A traffic event leaving the request path: its whole envelope, written once as JSON text
/// where the request was served (no copy of the request is kept to write it later), shared
/// as it is by every destination that takes it whole.
pub(crate) struct TrafficEvent {
    pub(super) event_type: &'static str,
    /// `{"event_id":…,"event_type":…,"event_timestamp":…,"account_id":…,"object":{…}}`
    pub(super) text: Bytes,
    /// Where the event id, its timestamp, the account id and the object are in `text` (ids
    /// and timestamps never need escaping, so the text is the value).
    pub(super) id: Range<usize>,
    pub(super) timestamp: Range<usize>,
    pub(super) account: Range<usize>,
    pub(super) object: Range<usize>,
}

impl TrafficEvent {
    /// One of the ranges above, as text.
    pub(super) fn part(&self, r: &Range<usize>) -> &str {
        std::str::from_utf8(&self.text[r.clone()]).unwrap_or_default()
    }
}

/// Where one request's or connection's traffic event goes: the routes of its account (each
/// destination that takes the type), and what every account's events share.
#[derive(Clone)]
pub(crate) struct TrafficSink {
    pub(super) routes: Arc<[super::traffic_out::Route]>,
    pub(super) common: Arc<super::SinkCommon>,
}

/// Text buffers of events that were sent, kept for the next events: a fresh 2 KiB buffer per
/// event, freed on another thread, cost about a tenth of an event in profiles (too large for
/// the allocator's per-thread cache). At most [`KEPT_BUFFERS`] are kept, each at most
/// [`KEPT_CAPACITY`] bytes; the rest are freed.
#[derive(Clone, Default)]
pub(crate) struct TextBuffers(Arc<Mutex<Vec<Vec<u8>>>>);

/// Buffers kept at most (a burst's worth: about 2 MiB).
const KEPT_BUFFERS: usize = 1024;
/// The largest buffer kept (an event with large headers is not worth keeping room for).
const KEPT_CAPACITY: usize = 8 * 1024;

impl TextBuffers {
    /// An empty buffer with room for `capacity` bytes, kept or new.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Keeps the events' texts that nobody else holds any more (this was the last destination
    /// to send them), as many as there is room for: one short lock for a batch (the request
    /// path takes from it).
    pub(super) fn give(&self, texts: impl ExactSizeIterator<Item = Bytes>) {
        let mut buffers = Vec::with_capacity(texts.len());
        for text in texts {
            let Ok(mut text) = text.try_into_mut() else { continue };
            text.clear();
            let buffer = Vec::from(text);
            if (EVENT_CAPACITY..=KEPT_CAPACITY).contains(&buffer.capacity()) {
                buffers.push(buffer);
            }
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = KEPT_BUFFERS.saturating_sub(kept.len());
        kept.extend(buffers.into_iter().take(room));
    }
}

impl TrafficSink {
    /// Offers `ev`'s text to the queue of each destination that takes it whole, and `ev` to the
    /// dispatcher when some destination filters it or selects fields. A full queue drops it
    /// there (counted); the visitor never waits.
    fn send(&self, ev: TrafficEvent) {
        let mut filtered = false;
        for route in self.routes.iter() {
            match route.takes(ev.event_type) {
                Takes::Whole => {
                    if !route.offer(ev.text.clone()) {
                        self.common.dropped.inc();
                    }
                }
                Takes::Filtered => filtered = true,
                Takes::Nothing => {}
            }
        }
        if filtered && self.common.filtered.try_send((ev, self.routes.clone())).is_err() {
            self.common.dropped.inc();
        }
    }

    fn buffer(&self) -> Vec<u8> {
        self.common.buffers.take(EVENT_CAPACITY)
    }
}

/// An event's text while it is written: the envelope's head first, with the timestamp's
/// place kept and filled when the event ends.
struct EventText {
    j: JsonOut,
    id: Range<usize>,
    timestamp: Range<usize>,
    account: Range<usize>,
    object_start: usize,
}

impl EventText {
    /// Starts `{"event_id":…,…,"object":` for an event of `account_id` (our own id: base-62,
    /// nothing to escape).
    fn begin(buffer: Vec<u8>, event_type: &'static str, account_id: &str, at: SystemTime) -> EventText {
        let mut j = JsonOut(buffer);
        j.raw("{\"event_id\":\"");
        let id_start = j.0.len();
        warren_store::write_id_at("ev", unix_secs(at), &mut j.0);
        let id = id_start..j.0.len();
        j.raw("\",\"event_type\":\"");
        j.raw(event_type);
        j.raw("\",\"event_timestamp\":");
        let timestamp = j.time(at);
        j.raw(",\"account_id\":\"");
        let account_start = j.0.len();
        j.escaped(account_id.as_bytes());
        let account = account_start..j.0.len();
        j.raw("\",\"object\":");
        let object_start = j.0.len();
        EventText { j, id, timestamp, account, object_start }
    }

    /// Ends the object and the envelope, stamped with the time written at `end_ts`.
    fn end(mut self, event_type: &'static str, end_ts: &Range<usize>) -> TrafficEvent {
        let object = self.object_start..self.j.0.len();
        self.j.0.push(b'}');
        self.j.restamp_from(&self.timestamp, end_ts);
        TrafficEvent {
            event_type,
            text: Bytes::from(self.j.0),
            id: self.id,
            timestamp: self.timestamp,
            account: self.account,
            object,
        }
    }
}

/// What the dashboard's live view keeps of a request, taken before it is proxied.
struct RecentParts {
    recent: crate::recent::RecentRequests,
    account_id: String,
    entry: crate::recent::Recent,
}

/// A request being served whose account subscribes to its event (or whose dashboard
/// watches): the event's text is written as the request goes, from the request and the
/// response themselves, never from copies of them.
pub(crate) struct PendingRequest {
    /// Where the event goes, with its text so far, if the account subscribes to it.
    event: Option<(TrafficSink, EventText)>,
    /// The dashboard's live view, if someone watches it.
    recent: Option<RecentParts>,
    /// Where `conn.end_ts`'s text is, filled when the request ends.
    end_ts: Range<usize>,
    start: SystemTime,
    /// Whether the response's part of the text is written.
    responded: bool,
    started: Instant,
}

/// JSON text written piece by piece. Every piece is on the request path of a subscribed
/// account, so each is written without formatting machinery (profiles showed each).
struct JsonOut(Vec<u8>);

impl JsonOut {
    #[inline]
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A time as quoted RFC 3339 text; where its text is (for [`Self::restamp`]).
    fn time(&mut self, at: SystemTime) -> Range<usize> {
        self.0.push(b'"');
        let start = self.0.len();
        match rfc3339_cached(unix_secs(at)) {
            Some(text) => self.0.extend_from_slice(&text),
            None => self.0.extend_from_slice(warren_proto::rfc3339(unix_secs(at)).as_bytes()),
        }
        let range = start..self.0.len();
        self.0.push(b'"');
        range
    }

    /// Writes `at` over the time written at `range` (times of years 0 to 9999, all the same
    /// length; another is left as it was).
    fn restamp(&mut self, range: Range<usize>, at: SystemTime) {
        if let Some(text) = rfc3339_cached(unix_secs(at))
            && range.len() == text.len()
        {
            self.0[range].copy_from_slice(&text);
        }
    }

    #[inline]
    fn num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.0.extend_from_slice(&digits[i..]);
    }

    /// An address as text: IPv4 written octet by octet.
    fn ip(&mut self, ip: std::net::IpAddr) {
        match ip {
            std::net::IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                self.0.push(b'"');
                self.octet(a);
                self.0.push(b'.');
                self.octet(b);
                self.0.push(b'.');
                self.octet(c);
                self.0.push(b'.');
                self.octet(d);
                self.0.push(b'"');
            }
            v6 => self.display(v6),
        }
    }

    /// `{"conn":{"client_ip":…,"client_port":…,"server_ip":…,"server_port":…`: the object
    /// and `conn` opened, for the rest of `conn`.
    fn conn_addresses(&mut self, client: SocketAddr, local: SocketAddr) {
        self.raw("{\"conn\":{\"client_ip\":");
        self.ip(client.ip());
        self.raw(",\"client_port\":");
        self.num(u64::from(client.port()));
        self.raw(",\"server_ip\":");
        self.ip(local.ip());
        self.raw(",\"server_port\":");
        self.num(u64::from(local.port()));
    }

    /// `},"endpoint":{…},"tunnel_session":{"id":…}`: `conn` closed, then what served it.
    fn endpoint(&mut self, text: &EndpointText, proto: &str) {
        self.0.extend_from_slice(&text.head);
        self.str(proto);
        self.0.extend_from_slice(&text.tail);
    }

    #[inline]
    fn octet(&mut self, o: u8) {
        if o >= 100 {
            self.0.push(b'0' + o / 100);
        }
        if o >= 10 {
            self.0.push(b'0' + o / 10 % 10);
        }
        self.0.push(b'0' + o % 10);
    }

    fn display(&mut self, v: impl std::fmt::Display) {
        use std::io::Write;
        self.0.push(b'"');
        let _ = write!(self.0, "{v}");
        self.0.push(b'"');
    }

    #[inline]
    fn str(&mut self, s: &str) {
        self.0.push(b'"');
        self.escaped(s.as_bytes());
        self.0.push(b'"');
    }

    /// A header value as text: as it is when it is UTF-8, else with U+FFFD for what is not
    /// (as `String::from_utf8_lossy`).
    fn lossy(&mut self, b: &[u8]) {
        if clean(b, true) {
            // The usual value: printable ASCII, copied whole.
            self.0.push(b'"');
            self.0.extend_from_slice(b);
            self.0.push(b'"');
            return;
        }
        match std::str::from_utf8(b) {
            Ok(s) => self.str(s),
            Err(_) => self.str(&String::from_utf8_lossy(b)),
        }
    }

    /// Appends `b` (UTF-8) escaped for a JSON string.
    #[inline]
    fn escaped(&mut self, b: &[u8]) {
        if clean(b, false) {
            self.0.extend_from_slice(b);
        } else {
            self.escaped_slow(b);
        }
    }

    /// [`Self::escaped`] for text with something to escape: runs that need none copied whole.
    #[cold]
    fn escaped_slow(&mut self, b: &[u8]) {
        let mut from = 0;
        for (i, &c) in b.iter().enumerate() {
            let esc: &[u8] = match c {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                c if c < 0x20 => {
                    self.0.extend_from_slice(&b[from..i]);
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.0.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(c >> 4)],
                        HEX[usize::from(c & 15)],
                    ]);
                    from = i + 1;
                    continue;
                }
                _ => continue,
            };
            self.0.extend_from_slice(&b[from..i]);
            self.0.extend_from_slice(esc);
            from = i + 1;
        }
        self.0.extend_from_slice(&b[from..]);
    }

    /// Headers as ngrok's events show them: lowercase names, each with its list of values.
    /// One pass: `HeaderMap::iter` yields a name's values one after another. Each value is
    /// cut to [`MAX_EVENT_STRING`] bytes, and headers after the first
    /// [`MAX_EVENT_HEADERS`] bytes of text are left out (`cut`). On the way it finds the
    /// user agent and the content length, so the request's part needs no lookup of them.
    fn headers<'h>(&mut self, h: &'h HeaderMap) -> HeaderFacts<'h> {
        let start = self.0.len();
        self.0.push(b'{');
        let mut last: Option<&http::HeaderName> = None;
        let mut facts = HeaderFacts::default();
        let mut cut = false;
        for (name, value) in h {
            let same = last.is_some_and(|l| std::ptr::eq(l, name));
            if !same {
                if name == http::header::USER_AGENT {
                    facts.user_agent = Some(value);
                } else if name == http::header::CONTENT_LENGTH {
                    facts.content_length = Some(value);
                }
            }
            let v = capped_bytes(value.as_bytes());
            cut |= v.len() < value.len();
            // What this value adds before escaping (and its name, when it starts one): header
            // names may be as long as a request's headers, so they count too.
            let adds = v.len() + if same { 3 } else { name.as_str().len() + 8 };
            if self.0.len() - start + adds > MAX_EVENT_HEADERS {
                cut = true;
                break;
            }
            // The same entry's values: the same name, at the same place.
            if same {
                self.0.push(b',');
            } else {
                if last.is_some() {
                    self.0.extend_from_slice(b"],");
                }
                // A header name is a token: nothing in it needs escaping.
                self.0.push(b'"');
                self.raw(name.as_str());
                self.0.extend_from_slice(b"\":[");
                last = Some(name);
            }
            self.lossy(v);
        }
        if last.is_some() {
            self.0.push(b']');
        }
        self.0.push(b'}');
        facts.cut = cut;
        facts
    }

    /// A time already written at `from`, written again (quoted); where its text is.
    fn copy_time(&mut self, from: &Range<usize>) -> Range<usize> {
        self.0.push(b'"');
        let start = self.0.len();
        self.0.extend_from_within(from.clone());
        let range = start..self.0.len();
        self.0.push(b'"');
        range
    }

    /// A time written at `from` copied over the one at `to` (the same length: both are
    /// this edge's times).
    fn restamp_from(&mut self, to: &Range<usize>, from: &Range<usize>) {
        if to.len() == from.len() {
            self.0.copy_within(from.clone(), to.start);
        }
    }

    /// `s` quoted, escaped unless the caller found it clean.
    #[inline]
    fn str_known(&mut self, s: &str, clean: bool) {
        self.0.push(b'"');
        if clean {
            self.0.extend_from_slice(s.as_bytes());
        } else {
            self.escaped_slow(s.as_bytes());
        }
        self.0.push(b'"');
    }
}

/// What [`JsonOut::headers`] found besides writing them: whether some were left out or cut,
/// and the first user agent and content length (when within the part written; see
/// [`PendingRequest::new`]).
#[derive(Default)]
struct HeaderFacts<'h> {
    cut: bool,
    user_agent: Option<&'h http::HeaderValue>,
    content_length: Option<&'h http::HeaderValue>,
}

/// The most of one string an event carries (a header value, the user agent, the host, the
/// path, the query), in bytes of the request, cut at a character boundary (escaping may
/// make the text longer): a request's headers may take 256 KiB, and a queued event should
/// not.
const MAX_EVENT_STRING: usize = 1024;
/// The most text one header map of an event takes (before escaping); headers past it are left
/// out (the map's `headers_truncated` then says so, as it does when a value was cut).
const MAX_EVENT_HEADERS: usize = 4096;

/// `b` cut to [`MAX_EVENT_STRING`] bytes: at a character boundary when it is UTF-8 (bytes
/// that are not are shown as U+FFFD anyway).
fn capped_bytes(b: &[u8]) -> &[u8] {
    if b.len() <= MAX_EVENT_STRING {
        return b;
    }
    match std::str::from_utf8(b) {
        Ok(s) => capped(s).as_bytes(),
        Err(_) => &b[..MAX_EVENT_STRING],
    }
}

/// `s` cut to [`MAX_EVENT_STRING`] bytes at a character boundary.
fn capped(s: &str) -> &str {
    if s.len() <= MAX_EVENT_STRING {
        return s;
    }
    let mut end = MAX_EVENT_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether no byte of `b` needs escaping in a JSON string (and, with `ascii`, every byte is
/// ASCII): eight bytes at a time, the last eight read again where the length is not a
/// multiple of eight (a byte checked twice changes nothing), shorter strings as two
/// overlapping halves; no copy, no loop over bytes but for the shortest.
#[inline]
fn clean(b: &[u8], ascii: bool) -> bool {
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let high = if ascii { HIGHS } else { 0 };
    let bad = |w: u64| needs_escape(w) || w & high != 0;
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("eight bytes"));
    let half = |c: &[u8]| u64::from(u32::from_le_bytes(c.try_into().expect("four bytes")));
    let n = b.len();
    if n >= 8 {
        let mut chunks = b.chunks_exact(8);
        if chunks.any(|c| bad(word(c))) {
            return false;
        }
        return chunks.remainder().is_empty() || !bad(word(&b[n - 8..]));
    }
    if n >= 4 {
        return !bad(half(&b[..4]) | half(&b[n - 4..]) << 32);
    }
    // Three bytes or fewer: padded with a byte that needs nothing.
    let mut w = u64::from_le_bytes([b'a'; 8]);
    for (i, &c) in b.iter().enumerate() {
        w = w & !(0xff << (8 * i)) | u64::from(c) << (8 * i);
    }
    !bad(w)
}

/// [`warren_proto::rfc3339_bytes`], remembered for the last second each thread wrote (a
/// busy endpoint writes thousands of events a second).
fn rfc3339_cached(secs: u64) -> Option<[u8; 20]> {
    thread_local!(static LAST: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) });
    LAST.with(|last| {
        let (at, text) = last.get();
        if at == secs {
            return Some(text);
        }
        let text = warren_proto::rfc3339_bytes(secs).ok()?;
        last.set((secs, text));
        Some(text)
    })
}

/// Whether any of the eight bytes in `w` is below 0x20, `"` or `\\` (each test is exact for
/// "any byte": a borrow can only flag bytes above one that really matches).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    (below_space | zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// The version as `{:?}` shows it, without formatting.
fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What served a request, as its event names it.
pub(crate) struct Served<'a> {
    pub(crate) account_id: &'a str,
    pub(crate) url: &'a str,
    pub(crate) text: &'a EndpointText,
}

/// What an event says of the endpoint that served it, written once per endpoint (its id, URL
/// and agent session never change) rather than escaped again for every request.
pub(crate) struct EndpointText {
    /// `},"endpoint":{"id":…,"url":…,"proto":`
    head: Box<[u8]>,
    /// `},"tunnel_session":{"id":…}`
    tail: Box<[u8]>,
}

impl EndpointText {
    /// `session_id` is empty for a cloud endpoint.
    pub(crate) fn new(id: &str, url: &str, session_id: &str) -> EndpointText {
        let mut j = JsonOut(Vec::new());
        j.raw("},\"endpoint\":{\"id\":");
        j.str(id);
        j.raw(",\"url\":");
        j.str(url);
        j.raw(",\"proto\":");
        let head = std::mem::take(&mut j.0).into_boxed_slice();
        j.raw("},\"tunnel_session\":{\"id\":");
        j.str(session_id);
        j.raw("}");
        EndpointText { head, tail: j.0.into_boxed_slice() }
    }
}

/// What an event says of a visitor connection's addresses and TLS, written once per
/// connection for all its requests (kept by the connection; see [`PendingRequest::new`]).
pub(crate) struct ConnText {
    /// `{"conn":{"client_ip":…,"client_port":…,"server_ip":…,"server_port":…`
    addresses: Box<[u8]>,
    /// `,"tls":{…}` or `,"tls":null`
    tls: Box<[u8]>,
}

impl ConnText {
    fn new(client: SocketAddr, local: SocketAddr, tls: Option<&warren_policy::TlsInfo>) -> ConnText {
        let mut j = JsonOut(Vec::new());
        j.conn_addresses(client, local);
        let addresses = std::mem::take(&mut j.0).into_boxed_slice();
        j.raw(",\"tls\":");
        match tls {
            Some(t) => {
                j.raw("{\"version\":");
                j.str(&t.version);
                j.raw(",\"cipher_suite\":");
                j.str(&t.cipher_suite);
                j.raw("}");
            }
            None => j.raw("null"),
        }
        ConnText { addresses, tls: j.0.into_boxed_slice() }
    }
}

/// Room for a usual event's text: one allocation, no growing.
const EVENT_CAPACITY: usize = 2048;

impl PendingRequest {
    /// Writes what the request tells of `http_request_complete.v0` (all but the response,
    /// the times and the sizes) and takes what the live view shows.
    pub(crate) fn new<B>(
        (sink, recent): (Option<TrafficSink>, Option<crate::recent::RecentRequests>),
        ep: Served<'_>,
        req: &Request<B>,
        (scheme, host): (&'static str, &str),
        (client, local, tls): (SocketAddr, SocketAddr, Option<&warren_policy::TlsInfo>),
        kept: Option<&std::sync::OnceLock<ConnText>>,
    ) -> PendingRequest {
        let start = SystemTime::now();
        let headers = req.headers();
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let user_agent = || headers.get(http::header::USER_AGENT).map_or(&b""[..], |v| v.as_bytes());
        let recent = recent.map(|recent| RecentParts {
            recent,
            account_id: ep.account_id.to_owned(),
            entry: crate::recent::Recent {
                at: start,
                endpoint_url: ep.url.to_owned(),
                method: req.method().as_str().to_owned(),
                path: pq.to_owned(),
                status: 0,
                duration_ms: 0,
                client_ip: client.ip(),
                response_bytes: 0,
                user_agent: String::from_utf8_lossy(user_agent()).into_owned(),
            },
        });
        let mut end_ts = 0..0;
        let event = sink.map(|sink| {
            let buffer = sink.buffer();
            let mut t = EventText::begin(buffer, super::HTTP_REQUEST_COMPLETE, ep.account_id, start);
            let stamp = t.timestamp.clone();
            let j = &mut t.j;
            // The connection's part as its earlier requests wrote it, when the caller keeps it.
            let fresh;
            let conn = match kept {
                Some(kept) => kept.get_or_init(|| ConnText::new(client, local, tls)),
                None => {
                    fresh = ConnText::new(client, local, tls);
                    &fresh
                }
            };
            j.0.extend_from_slice(&conn.addresses);
            j.raw(",\"server_name\":");
            j.str(capped(tls.map_or(host, |t| t.sni.as_str())));
            // The same time three times: the envelope's, the start and (until the end) the end.
            j.raw(",\"start_ts\":");
            j.copy_time(&stamp);
            j.raw(",\"end_ts\":");
            end_ts = j.copy_time(&stamp);
            j.endpoint(ep.text, scheme);
            j.0.extend_from_slice(&conn.tls);
            // A method is a token (the http crate checks) and the scheme ours: nothing to
            // escape. The host, path and query are checked once each, path and query as one.
            let (host, pq) = (capped(host), capped(pq));
            let (host_clean, pq_clean) = (clean(host.as_bytes(), false), clean(pq.as_bytes(), false));
            j.raw(",\"http\":{\"request\":{\"method\":\"");
            j.raw(req.method().as_str());
            j.raw("\",\"url\":{\"scheme\":\"");
            j.raw(scheme);
            j.raw("\",\"host\":");
            j.str_known(host, host_clean);
            j.raw(",\"path\":");
            j.str_known(capped(req.uri().path()), pq_clean);
            j.raw(",\"query\":");
            j.str_known(capped(req.uri().query().unwrap_or("")), pq_clean);
            j.raw(",\"raw\":\"");
            j.raw(scheme);
            j.raw("://");
            if host_clean {
                j.raw(host);
            } else {
                j.escaped_slow(host.as_bytes());
            }
            if pq_clean {
                j.raw(pq);
            } else {
                j.escaped_slow(pq.as_bytes());
            }
            j.raw("\"},\"headers\":");
            let facts = j.headers(headers);
            if facts.cut {
                j.raw(",\"headers_truncated\":true");
            }
            // Past the headers written, they were not seen: looked up.
            let (ua, length) = if facts.cut {
                (headers.get(http::header::USER_AGENT), headers.get(http::header::CONTENT_LENGTH))
            } else {
                (facts.user_agent, facts.content_length)
            };
            j.raw(",\"user_agent\":");
            j.lossy(capped_bytes(ua.map_or(&b""[..], |v| v.as_bytes())));
            j.raw(",\"body_length\":");
            j.num(body_length(length));
            j.raw(",\"version\":\"");
            j.raw(version_text(req.version()));
            j.raw("\"}");
            (sink, t)
        });
        PendingRequest { event, recent, end_ts, start, responded: false, started: Instant::now() }
    }

    /// Writes the response's part of the event (its status and headers) and sends the
    /// event when `resp`'s body is done (or dropped).
    pub(crate) fn complete<B>(mut self, resp: Response<B>) -> Response<Counted<B>> {
        let (parts, body) = resp.into_parts();
        self.respond(parts.status.as_u16(), &parts.headers);
        if let Some(r) = &mut self.recent {
            r.entry.status = parts.status.as_u16();
        }
        Response::from_parts(parts, Counted { inner: body, bytes: 0, pending: Some(self) })
    }

    /// The request ended without a response from the edge (the policy closed the
    /// connection): status 0.
    pub(crate) fn closed(self) {
        self.finish(0);
    }

    fn respond(&mut self, status: u16, headers: &HeaderMap) {
        self.responded = true;
        if let Some((_, t)) = &mut self.event {
            let j = &mut t.j;
            j.raw(",\"response\":{\"status_code\":");
            j.num(u64::from(status));
            j.raw(",\"headers\":");
            if j.headers(headers).cut {
                j.raw(",\"headers_truncated\":true");
            }
            j.raw(",\"body_length\":");
        }
    }

    fn finish(mut self, bytes: u64) {
        // The end as the start and the monotonic time since: one clock read, not two.
        let took = self.started.elapsed();
        let ms = took.as_millis() as u64;
        if !self.responded {
            self.respond(0, &HeaderMap::new());
        }
        if let Some(RecentParts { recent, account_id, mut entry }) = self.recent.take() {
            entry.duration_ms = ms;
            entry.response_bytes = bytes;
            recent.record(&account_id, entry);
        }
        let Some((sink, mut t)) = self.event.take() else { return };
        let end = self.start + took;
        t.j.num(bytes);
        t.j.raw("},\"response_time_ms\":");
        t.j.num(ms);
        t.j.raw("}}");
        t.j.restamp(self.end_ts.clone(), end);
        sink.send(t.end(super::HTTP_REQUEST_COMPLETE, &self.end_ts));
    }
}

/// The request's size as its own header says (0 without one).
fn body_length(content_length: Option<&http::HeaderValue>) -> u64 {
    content_length.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A response body that counts what it yields and sends the request's event when it ends.
pub(crate) struct Counted<B> {
    inner: B,
    bytes: u64,
    pending: Option<PendingRequest>,
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.finish(self.bytes);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = self.pending.take() {
                    p.finish(self.bytes);
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `tcp_connection_closed.v0` of a tcp or tls endpoint's connection.
pub(crate) fn tcp_closed(
    sink: &TrafficSink,
    ep: &Endpoint,
    client: SocketAddr,
    local: SocketAddr,
    start: SystemTime,
    bytes_in: u64,
    bytes_out: u64,
) {
    let end = SystemTime::now();
    let buffer = sink.buffer();
    let mut t = EventText::begin(buffer, super::TCP_CONNECTION_CLOSED, &ep.session.account_id, end);
    let j = &mut t.j;
    j.conn_addresses(client, local);
    j.raw(",\"start_ts\":");
    j.time(start);
    j.raw(",\"end_ts\":");
    let end_ts = j.time(end);
    j.raw(",\"bytes_in\":");
    j.num(bytes_in);
    j.raw(",\"bytes_out\":");
    j.num(bytes_out);
    j.endpoint(&ep.event_text, ep.url.split("://").next().unwrap_or("tcp"));
    j.raw("}");
    sink.send(t.end(super::TCP_CONNECTION_CLOSED, &end_ts));
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::*;

    fn served_big() -> Served<'static> {
        served("http://big.example.com", "")
    }

    fn served(url: &'static str, session_id: &str) -> Served<'static> {
        let text = Box::leak(Box::new(EndpointText::new("ep_1", url, session_id)));
        Served { account_id: "acc_1", url, text }
    }

    /// Where a test's events went: to a destination that takes them whole and, as the same
    /// event, to the dispatcher for one that filters them.
    struct Sent {
        whole: mpsc::Receiver<super::super::deliver::Outgoing>,
        filtered: mpsc::Receiver<super::super::traffic_out::Filtered>,
    }

    impl Sent {
        /// The event sent, checked to be the same text on both routes.
        fn event(&mut self) -> TrafficEvent {
            let (ev, routes) = self.filtered.try_recv().expect("the event reached the dispatcher");
            assert_eq!(routes.len(), 2);
            let whole = self.whole.try_recv().expect("the event reached the destination taking it whole");
            assert_eq!(whole.text, ev.text, "one text, shared");
            ev
        }
    }

    /// A sink for an account with one destination taking its events whole and one filtering
    /// them.
    fn sink() -> (TrafficSink, Sent) {
        let (whole_tx, whole) = mpsc::channel(1);
        let (other_tx, _) = mpsc::channel(1);
        let (filtered_tx, filtered) = mpsc::channel(1);
        let routes: Arc<[super::super::traffic_out::Route]> = vec![
            super::super::traffic_out::Route::for_tests(whole_tx, ""),
            super::super::traffic_out::Route::for_tests(other_tx, "true"),
        ]
        .into();
        let common = Arc::new(super::super::SinkCommon {
            filtered: filtered_tx,
            dropped: Default::default(),
            buffers: TextBuffers::default(),
        });
        (TrafficSink { routes, common }, Sent { whole, filtered })
    }

    /// `req` from 192.0.2.7:40000, served at `local` for an account that subscribes, and where
    /// its event goes.
    fn subscribed(
        served: Served<'_>,
        req: &Request<()>,
        scheme: &'static str,
        (local, tls): (&str, Option<&warren_policy::TlsInfo>),
        kept: Option<&std::sync::OnceLock<ConnText>>,
    ) -> (PendingRequest, Sent) {
        let (sink, sent) = sink();
        let host = served.url.split("://").nth(1).expect("a URL");
        let client = "192.0.2.7:40000".parse().unwrap();
        let pending = PendingRequest::new(
            (Some(sink), None),
            served,
            req,
            (scheme, host),
            (client, local.parse().unwrap(), tls),
            kept,
        );
        (pending, sent)
    }

    /// A request with every kind of header value an event must carry (quotes, backslashes,
    /// control bytes, bytes that are not UTF-8, a name given twice), served to the end.
    /// Checks on the way that a connection's text kept from its first request writes the
    /// same event as one written afresh.
    async fn event_of(tls: Option<&warren_policy::TlsInfo>, respond: bool) -> TrafficEvent {
        let without_times = |ev: &TrafficEvent| {
            let mut o: Value = serde_json::from_slice(&ev.text[ev.object.clone()]).unwrap();
            for t in ["start_ts", "end_ts"] {
                o["conn"].as_object_mut().unwrap().remove(t);
            }
            o["http"].as_object_mut().unwrap().remove("response_time_ms");
            o
        };
        let kept = std::sync::OnceLock::new();
        let fresh = served_once(tls, respond, None).await;
        for _ in 0..2 {
            let again = served_once(tls, respond, Some(&kept)).await;
            assert_eq!(without_times(&again), without_times(&fresh));
        }
        assert!(kept.get().is_some(), "kept for the connection's next requests");
        fresh
    }

    async fn served_once(
        tls: Option<&warren_policy::TlsInfo>,
        respond: bool,
        kept: Option<&std::sync::OnceLock<ConnText>>,
    ) -> TrafficEvent {
        let req = Request::get("https://app.example.com/a%20b?q=%22x%22&r=1")
            .header("user-agent", "curl/8 \"quoted\" \\ back")
            .header("x-long", "0123456789abcdefghij\"klm\\nopq rstuvwxyz0123456789 \u{e9}t\u{e9}")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .header("x-control", http::HeaderValue::from_bytes(b"tab\there").unwrap())
            .header("x-bytes", http::HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap())
            .header("content-length", "42")
            .body(())
            .unwrap();
        let served = served("https://app.example.com", "ts_1");
        let (pending, mut rx) = subscribed(served, &req, "https", ("[::1]:443", tls), kept);
        if respond {
            let resp = Response::builder()
                .status(201)
                .header("content-type", "text/plain")
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=\"2\"")
                .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
                .unwrap();
            let body = pending.complete(resp).into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello");
        } else {
            pending.closed();
        }
        rx.event()
    }

    #[tokio::test]
    async fn the_event_carries_the_request_and_response_as_ngrok_names_them() {
        let tls = warren_policy::TlsInfo {
            version: "1.3".into(),
            cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
            sni: "sni.example.com".into(),
            client: None,
        };
        for (tls, respond) in [(None, true), (Some(&tls), true), (None, false)] {
            let ev = event_of(tls, respond).await;
            let mut v: Value = serde_json::from_slice(&ev.text).expect("one JSON text");
            assert!(ev.text.starts_with(b"{\"event_id\":\"ev_"));
            assert_eq!(ev.part(&ev.id), v["event_id"].as_str().unwrap());
            assert_eq!(ev.part(&ev.id).len(), 29);
            assert_eq!(ev.part(&ev.account), "acc_1");
            assert_eq!(ev.part(&ev.timestamp), v["event_timestamp"].as_str().unwrap());
            let object: Value = serde_json::from_slice(&ev.text[ev.object.clone()]).unwrap();
            assert_eq!(object, v["object"]);
            // The times are the request's: the event's is its end.
            let o = &v["object"];
            assert_eq!(o["conn"]["end_ts"], v["event_timestamp"]);
            assert!(o["conn"]["start_ts"].as_str().unwrap() <= o["conn"]["end_ts"].as_str().unwrap());
            assert!(o["http"]["response_time_ms"].as_u64().unwrap() < 10_000);
            let (start, end) = (o["conn"]["start_ts"].clone(), o["conn"]["end_ts"].clone());
            let ms = o["http"]["response_time_ms"].clone();
            let response = if respond {
                json!({
                    "status_code": 201,
                    "headers": {"content-type": ["text/plain"], "set-cookie": ["a=1", "b=\"2\""]},
                    "body_length": 5,
                })
            } else {
                json!({"status_code": 0, "headers": {}, "body_length": 0})
            };
            let expected = json!({
                "event_id": v["event_id"],
                "event_type": "http_request_complete.v0",
                "event_timestamp": v["event_timestamp"],
                "account_id": "acc_1",
                "object": {
                    "conn": {
                        "client_ip": "192.0.2.7",
                        "client_port": 40000,
                        "server_ip": "::1",
                        "server_port": 443,
                        "server_name": if tls.is_some() { "sni.example.com" } else { "app.example.com" },
                        "start_ts": start,
                        "end_ts": end,
                    },
                    "endpoint": {"id": "ep_1", "url": "https://app.example.com", "proto": "https"},
                    "tunnel_session": {"id": "ts_1"},
                    "tls": tls.map(|_| json!({"version": "1.3", "cipher_suite": "TLS13_AES_128_GCM_SHA256"})),
                    "http": {
                        "request": {
                            "method": "GET",
                            "url": {
                                "scheme": "https",
                                "host": "app.example.com",
                                "path": "/a%20b",
                                "query": "q=%22x%22&r=1",
                                "raw": "https://app.example.com/a%20b?q=%22x%22&r=1",
                            },
                            "headers": {
                                "user-agent": ["curl/8 \"quoted\" \\ back"],
                                "x-long": ["0123456789abcdefghij\"klm\\nopq rstuvwxyz0123456789 \u{e9}t\u{e9}"],
                                "x-multi": ["one", "two"],
                                "x-control": ["tab\there"],
                                "x-bytes": ["caf\u{fffd} \u{fffd}"],
                                "content-length": ["42"],
                            },
                            "user_agent": "curl/8 \"quoted\" \\ back",
                            "body_length": 42,
                            "version": "HTTP/1.1",
                        },
                        "response": response,
                        "response_time_ms": ms,
                    },
                },
            });
            v["object"]["http"]["response_time_ms"] = ms.clone();
            assert_eq!(v, expected);
        }
    }

    /// A visitor may send 256 KiB of headers and a long URL; what its event keeps of them is
    /// bounded, and says where it left headers out.
    #[tokio::test]
    async fn an_event_keeps_a_bounded_part_of_large_headers_and_urls() {
        let long = "v".repeat(3000);
        let path = format!("/{}", "p".repeat(5000));
        let mut req = Request::get(format!("http://big.example.com{path}?{}", "q".repeat(5000)));
        for i in 0..300 {
            req = req.header(format!("x-h{i}"), long.as_str());
        }
        let req = req.header("user-agent", "\u{e9}".repeat(600)).body(()).unwrap();
        let (pending, mut rx) = subscribed(served_big(), &req, "http", ("192.0.2.1:80", None), None);
        let mut resp = Response::builder().status(200);
        for i in 0..300 {
            resp = resp.header(format!("x-r{i}"), long.as_str());
        }
        drop(pending.complete(resp.body(http_body_util::Empty::<Bytes>::new()).unwrap()));
        let ev = rx.event();
        assert!(ev.text.len() < 24 * 1024, "{} bytes", ev.text.len());
        let v: Value = serde_json::from_slice(&ev.text).unwrap();
        let (rq, rs) = (&v["object"]["http"]["request"], &v["object"]["http"]["response"]);
        for part in [rq, rs] {
            assert_eq!(part["headers_truncated"], json!(true));
            let kept = part["headers"].as_object().unwrap();
            assert!(!kept.is_empty() && kept.len() < 10, "{}", kept.len());
            assert!(kept.values().all(|v| v[0].as_str().unwrap().len() == MAX_EVENT_STRING));
        }
        // Cut at a character boundary: 512 two-byte characters, no U+FFFD.
        assert_eq!(rq["user_agent"].as_str().unwrap(), "\u{e9}".repeat(512));
        assert_eq!(rq["url"]["path"].as_str().unwrap().len(), MAX_EVENT_STRING);
        assert_eq!(rq["url"]["query"].as_str().unwrap().len(), MAX_EVENT_STRING);
        assert!(rq["url"]["raw"].as_str().unwrap().len() <= 2 * MAX_EVENT_STRING + 7);
        // A header name as long as the headers may be is not copied either.
        let mut req = Request::get("http://big.example.com/");
        req = req.header("a".repeat(60 * 1024), "x");
        let (pending, mut rx) =
            subscribed(served_big(), &req.body(()).unwrap(), "http", ("192.0.2.1:80", None), None);
        pending.closed();
        let ev = rx.event();
        assert!(ev.text.len() < 4 * 1024, "{} bytes", ev.text.len());
        let v: Value = serde_json::from_slice(&ev.text).unwrap();
        assert_eq!(v["object"]["http"]["request"]["headers"], json!({}));
        assert_eq!(v["object"]["http"]["request"]["headers_truncated"], json!(true));
        // Small headers are whole, with no mark.
        let ev = event_of(None, true).await;
        let v: Value = serde_json::from_slice(&ev.text).unwrap();
        assert!(v["object"]["http"]["request"].get("headers_truncated").is_none());
    }

    #[test]
    fn sent_texts_are_kept_for_the_next_events_within_bounds() {
        let buffers = TextBuffers::default();
        let mut text = buffers.take(EVENT_CAPACITY);
        text.extend_from_slice(b"{}");
        let at = text.as_ptr();
        let shared = Bytes::from(text);
        let other = shared.clone();
        buffers.give([shared].into_iter());
        assert!(buffers.0.lock().unwrap().is_empty(), "a destination still holds it");
        buffers.give([other].into_iter());
        let again = buffers.take(EVENT_CAPACITY);
        assert_eq!((again.as_ptr(), again.len()), (at, 0), "the same buffer, empty");
        buffers.give([Bytes::from(vec![0u8; KEPT_CAPACITY + 1]), Bytes::from(vec![0u8; 16])].into_iter());
        assert!(buffers.0.lock().unwrap().is_empty(), "too large or too small: freed");
        for _ in 0..KEPT_BUFFERS + 10 {
            let mut v = Vec::with_capacity(EVENT_CAPACITY);
            v.push(b'x');
            buffers.give([Bytes::from(v)].into_iter());
        }
        assert_eq!(buffers.0.lock().unwrap().len(), KEPT_BUFFERS);
    }

    #[test]
    fn times_are_written_in_place_and_rewritten_to_the_end() {
        let mut j = JsonOut(Vec::new());
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_083_199);
        let r = j.time(at);
        assert_eq!(j.0, b"\"2026-11-30T23:59:59Z\"");
        j.restamp(r.clone(), at + std::time::Duration::from_secs(1));
        assert_eq!(&j.0[r], b"2026-12-01T00:00:00Z");
    }

    #[test]
    fn strings_of_every_length_are_escaped_as_serde_escapes_them() {
        for len in 0..20 {
            for at in 0..len {
                for c in ['"', '\\', '\n', '\u{1}', '\u{7f}', '\u{e9}', 'x'] {
                    let mut text: String = "a".repeat(len);
                    text.replace_range(at..at + 1, &c.to_string());
                    let mut j = JsonOut(Vec::new());
                    j.str(&text);
                    assert_eq!(String::from_utf8(j.0).unwrap(), serde_json::to_string(&text).unwrap());
                    let mut j = JsonOut(Vec::new());
                    j.lossy(text.as_bytes());
                    assert_eq!(String::from_utf8(j.0).unwrap(), serde_json::to_string(&text).unwrap());
                }
            }
        }
    }

    #[test]
    fn eight_bytes_at_a_time_finds_every_byte_that_needs_escaping() {
        for i in 0..8 {
            for c in (0u8..0x20).chain([b'"', b'\\']) {
                let mut w = *b"abcdefgh";
                w[i] = c;
                assert!(needs_escape(u64::from_le_bytes(w)), "{c:#x} at {i}");
            }
        }
        for w in [*b"abcdefgh", *b"  !#$~\x7f\xff", *b"\xc3\xa9t\xc3\xa9 ok"] {
            assert!(!needs_escape(u64::from_le_bytes(w)), "{w:?}");
        }
    }

    #[test]
    fn strings_of_every_length_are_clean_exactly_when_no_byte_needs_escaping() {
        let reference = |b: &[u8], ascii: bool| {
            b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\' && (!ascii || c < 0x80))
        };
        for n in 0..=24 {
            let good = b"abcdefghijklmnopqrstuvwxyz"[..n].to_vec();
            for ascii in [false, true] {
                assert!(clean(&good, ascii), "{n}");
                for i in 0..n {
                    for c in [0u8, 0x1f, b'"', b'\\', 0x7f, 0x80, 0xc3, 0xff, b' '] {
                        let mut b = good.clone();
                        b[i] = c;
                        assert_eq!(
                            clean(&b, ascii),
                            reference(&b, ascii),
                            "{c:#x} at {i} of {n}, ascii {ascii}"
                        );
                    }
                }
            }
        }
    }
}
