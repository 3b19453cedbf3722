//! Traffic events, with ngrok's field names: `http_request_complete.v0` when a response's
//! body has been sent (or the visitor went away), `tcp_connection_closed.v0` when a tcp or
//! tls endpoint's connection closes. Built only for accounts that subscribe to them.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::registry::Endpoint;

/// A traffic event leaving the request path: the object is final JSON text; the id and the
/// envelope are made off the request path (`traffic_out`).
pub(crate) struct TrafficEvent {
    pub(super) account_id: String,
    pub(super) event_type: &'static str,
    pub(super) at: SystemTime,
    pub(super) object: String,
}

/// Where traffic events go: the bounded queue, and the count of those it had no room for.
#[derive(Clone)]
pub(crate) struct TrafficSink {
    pub(super) tx: mpsc::Sender<TrafficEvent>,
    pub(super) dropped: prometheus_client::metrics::counter::Counter,
}

impl TrafficSink {
    fn send(&self, account_id: &str, event_type: &'static str, object: &Value) {
        self.send_raw(account_id, event_type, object.to_string());
    }

    /// Offers an event whose object is already JSON text.
    fn send_raw(&self, account_id: &str, event_type: &'static str, object: String) {
        let ev =
            TrafficEvent { account_id: account_id.to_owned(), event_type, at: SystemTime::now(), object };
        if self.tx.try_send(ev).is_err() {
            self.dropped.inc();
        }
    }
}

/// What is known of a request before it is proxied: its parts as they are (cheap clones of
/// shared buffers), turned into the event's JSON once, when the response ends, with no
/// intermediate `Value` tree.
pub(crate) struct PendingRequest {
    /// Where the event goes, if the account subscribes to it.
    sink: Option<TrafficSink>,
    /// The dashboard's live view, if someone watches it.
    recent: Option<crate::recent::RecentRequests>,
    account_id: String,
    endpoint: (String, String, &'static str),
    session_id: String,
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderMap,
    scheme: &'static str,
    host: String,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<(String, String, String)>,
    start: SystemTime,
    started: Instant,
    response: Option<(u16, HeaderMap)>,
}

/// Headers as ngrok's events show them: lowercase names, each with its list of values.
#[cfg(test)]
struct Headers<'a>(&'a HeaderMap);

#[cfg(test)]
impl serde::Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Values<'a>(http::header::GetAll<'a, http::HeaderValue>);
        impl serde::Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|v| String::from_utf8_lossy(v.as_bytes())))
            }
        }
        let mut m = s.serialize_map(Some(self.0.keys_len()))?;
        for name in self.0.keys() {
            m.serialize_entry(name.as_str(), &Values(self.0.get_all(name)))?;
        }
        m.end()
    }
}

/// JSON text written piece by piece.
struct JsonOut(Vec<u8>);

impl JsonOut {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

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

    /// An address as text: IPv4 written digit by digit (formatting showed in profiles).
    fn ip(&mut self, ip: std::net::IpAddr) {
        match ip {
            std::net::IpAddr::V4(v4) => {
                self.0.push(b'"');
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    self.num(u64::from(o));
                }
                self.0.push(b'"');
            }
            v6 => self.display(v6),
        }
    }

    fn display(&mut self, v: impl std::fmt::Display) {
        use std::io::Write;
        self.0.push(b'"');
        let _ = write!(self.0, "{v}");
        self.0.push(b'"');
    }

    fn str(&mut self, s: &str) {
        self.0.push(b'"');
        self.escaped(s.as_bytes());
        self.0.push(b'"');
    }

    /// A header value as text: as it is when it is UTF-8, else with U+FFFD for what is not
    /// (as `String::from_utf8_lossy`).
    fn lossy(&mut self, b: &[u8]) {
        match std::str::from_utf8(b) {
            Ok(s) => self.str(s),
            Err(_) => self.str(&String::from_utf8_lossy(b)),
        }
    }

    /// Appends `b` (UTF-8) escaped for a JSON string, copying runs that need no escape whole.
    fn escaped(&mut self, b: &[u8]) {
        // Eight bytes at a time while none needs escaping (the usual header value).
        let mut clean = 0;
        while let Some(chunk) = b.get(clean..clean + 8) {
            if needs_escape(u64::from_le_bytes(chunk.try_into().expect("eight bytes"))) {
                break;
            }
            clean += 8;
        }
        let mut from = 0;
        for (i, &c) in b.iter().enumerate().skip(clean) {
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
    fn headers(&mut self, h: &HeaderMap) {
        self.0.push(b'{');
        for (n, name) in h.keys().enumerate() {
            if n > 0 {
                self.0.push(b',');
            }
            self.str(name.as_str());
            self.0.extend_from_slice(b":[");
            for (i, v) in h.get_all(name).iter().enumerate() {
                if i > 0 {
                    self.0.push(b',');
                }
                self.lossy(v.as_bytes());
            }
            self.0.push(b']');
        }
        self.0.push(b'}');
    }
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
fn version_text(v: http::Version) -> String {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
    .to_owned()
}

fn rfc3339(t: SystemTime) -> String {
    warren_store::rfc3339(t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// What served a request, as its event names it.
pub(crate) struct Served<'a> {
    pub(crate) account_id: &'a str,
    /// `ep_...`
    pub(crate) id: &'a str,
    pub(crate) url: &'a str,
    /// The agent session's id; empty for a cloud endpoint.
    pub(crate) session_id: &'a str,
}

impl PendingRequest {
    /// Captures the request as the visitor sent it.
    pub(crate) fn new<B>(
        (sink, recent): (Option<TrafficSink>, Option<crate::recent::RecentRequests>),
        ep: Served<'_>,
        req: &Request<B>,
        (scheme, host): (&'static str, &str),
        (client, local, tls): (SocketAddr, SocketAddr, Option<&warren_policy::TlsInfo>),
    ) -> PendingRequest {
        PendingRequest {
            sink,
            recent,
            account_id: ep.account_id.to_owned(),
            endpoint: (ep.id.to_owned(), ep.url.to_owned(), scheme),
            session_id: ep.session_id.to_owned(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            scheme,
            host: host.to_owned(),
            client,
            local,
            tls: tls.map(|t| (t.version.clone(), t.cipher_suite.clone(), t.sni.clone())),
            start: SystemTime::now(),
            started: Instant::now(),
            response: None,
        }
    }

    /// Sends the event when `resp`'s body is done (or dropped).
    pub(crate) fn complete<B>(mut self, resp: Response<B>) -> Response<Counted<B>> {
        let (parts, body) = resp.into_parts();
        self.response = Some((parts.status.as_u16(), parts.headers.clone()));
        Response::from_parts(parts, Counted { inner: body, bytes: 0, pending: Some(self) })
    }

    /// The request ended without a response from the edge (the policy closed the
    /// connection): status 0.
    pub(crate) fn closed(self) {
        self.finish(0);
    }

    fn finish(self, bytes: u64) {
        let ms = self.started.elapsed().as_millis() as u64;
        let empty = HeaderMap::new();
        let (status, res_headers) = match &self.response {
            Some((s, h)) => (*s, h),
            None => (0, &empty),
        };
        if let Some(recent) = &self.recent {
            let user_agent =
                self.headers.get(http::header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()));
            recent.record(
                &self.account_id,
                crate::recent::Recent {
                    at: self.start,
                    endpoint_url: self.endpoint.1.clone(),
                    method: self.method.as_str().to_owned(),
                    path: self.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                    status,
                    duration_ms: ms,
                    client_ip: self.client.ip(),
                    response_bytes: bytes,
                    user_agent: user_agent.unwrap_or_default().into_owned(),
                },
            );
        }
        let Some(sink) = &self.sink else { return };
        let object = self.event_json(status, res_headers, bytes, ms, SystemTime::now());
        sink.send_raw(&self.account_id, super::HTTP_REQUEST_COMPLETE, object);
    }

    /// The request's size as its own header says (0 without one).
    fn body_length(&self) -> u64 {
        self.headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    }

    /// `http_request_complete.v0`'s object as JSON text, written field by field (serde's
    /// generic serializer cost twice as many instructions per event; a test checks the two
    /// agree).
    fn event_json(
        &self,
        status: u16,
        res_headers: &HeaderMap,
        bytes: u64,
        ms: u64,
        end: SystemTime,
    ) -> String {
        let (scheme, host) = (self.scheme, self.host.as_str());
        let pq = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut j = JsonOut(Vec::with_capacity(2048));
        j.raw("{\"conn\":{\"client_ip\":");
        j.ip(self.client.ip());
        j.raw(",\"client_port\":");
        j.num(u64::from(self.client.port()));
        j.raw(",\"server_ip\":");
        j.ip(self.local.ip());
        j.raw(",\"server_port\":");
        j.num(u64::from(self.local.port()));
        j.raw(",\"server_name\":");
        j.str(self.tls.as_ref().map_or(host, |t| t.2.as_str()));
        j.raw(",\"start_ts\":");
        j.str(&rfc3339(self.start));
        j.raw(",\"end_ts\":");
        j.str(&rfc3339(end));
        j.raw("},\"endpoint\":{\"id\":");
        j.str(&self.endpoint.0);
        j.raw(",\"url\":");
        j.str(&self.endpoint.1);
        j.raw(",\"proto\":");
        j.str(self.endpoint.2);
        j.raw("},\"tunnel_session\":{\"id\":");
        j.str(&self.session_id);
        j.raw("},\"http\":{\"request\":{\"method\":");
        j.str(self.method.as_str());
        j.raw(",\"url\":{\"scheme\":");
        j.str(scheme);
        j.raw(",\"host\":");
        j.str(host);
        j.raw(",\"path\":");
        j.str(self.uri.path());
        j.raw(",\"query\":");
        j.str(self.uri.query().unwrap_or(""));
        j.raw(",\"raw\":\"");
        for part in [scheme, "://", host, pq] {
            j.escaped(part.as_bytes());
        }
        j.raw("\"},\"headers\":");
        j.headers(&self.headers);
        j.raw(",\"user_agent\":");
        j.lossy(self.headers.get(http::header::USER_AGENT).map_or(&b""[..], |v| v.as_bytes()));
        j.raw(",\"body_length\":");
        j.num(self.body_length());
        j.raw(",\"version\":");
        j.str(&version_text(self.version));
        j.raw("},\"response\":{\"status_code\":");
        j.num(u64::from(status));
        j.raw(",\"headers\":");
        j.headers(res_headers);
        j.raw(",\"body_length\":");
        j.num(bytes);
        j.raw("},\"response_time_ms\":");
        j.num(ms);
        j.raw("},\"tls\":");
        match &self.tls {
            Some(t) => {
                j.raw("{\"version\":");
                j.str(&t.0);
                j.raw(",\"cipher_suite\":");
                j.str(&t.1);
                j.raw("}");
            }
            None => j.raw("null"),
        }
        j.raw("}");
        String::from_utf8(j.0).expect("written as UTF-8")
    }

    /// The same object through serde, as it was written before [`Self::event_json`].
    #[cfg(test)]
    fn event_json_serde(
        &self,
        status: u16,
        res_headers: &HeaderMap,
        bytes: u64,
        ms: u64,
        end: SystemTime,
    ) -> String {
        let body_length = self.body_length();
        let user_agent =
            self.headers.get(http::header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()));
        let (scheme, host) = (self.scheme, self.host.as_str());
        let pq = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let object = HttpEvent {
            conn: Conn {
                client_ip: self.client.ip(),
                client_port: self.client.port(),
                server_ip: self.local.ip(),
                server_port: self.local.port(),
                server_name: self.tls.as_ref().map_or(host, |t| t.2.as_str()),
                start_ts: rfc3339(self.start),
                end_ts: rfc3339(end),
            },
            endpoint: EndpointRef { id: &self.endpoint.0, url: &self.endpoint.1, proto: self.endpoint.2 },
            tunnel_session: Id { id: &self.session_id },
            http: Http {
                request: Req {
                    method: self.method.as_str(),
                    url: Url {
                        scheme,
                        host,
                        path: self.uri.path(),
                        query: self.uri.query().unwrap_or(""),
                        raw: {
                            let mut raw = String::with_capacity(scheme.len() + 3 + host.len() + pq.len());
                            raw.push_str(scheme);
                            raw.push_str("://");
                            raw.push_str(host);
                            raw.push_str(pq);
                            raw
                        },
                    },
                    headers: Headers(&self.headers),
                    user_agent: user_agent.unwrap_or_default(),
                    body_length,
                    version: version_text(self.version),
                },
                response: Res { status_code: status, headers: Headers(res_headers), body_length: bytes },
                response_time_ms: ms,
            },
            tls: self.tls.as_ref().map(|t| Tls { version: &t.0, cipher_suite: &t.1 }),
        };
        serde_json::to_string(&object).expect("events serialize")
    }
}

/// `http_request_complete.v0`'s object, serialized straight to text.
#[cfg(test)]
#[derive(serde::Serialize)]
struct HttpEvent<'a> {
    conn: Conn<'a>,
    endpoint: EndpointRef<'a>,
    tunnel_session: Id<'a>,
    http: Http<'a>,
    tls: Option<Tls<'a>>,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct Conn<'a> {
    client_ip: std::net::IpAddr,
    client_port: u16,
    server_ip: std::net::IpAddr,
    server_port: u16,
    server_name: &'a str,
    start_ts: String,
    end_ts: String,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct EndpointRef<'a> {
    id: &'a str,
    url: &'a str,
    proto: &'a str,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct Id<'a> {
    id: &'a str,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct Http<'a> {
    request: Req<'a>,
    response: Res<'a>,
    response_time_ms: u64,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct Req<'a> {
    method: &'a str,
    url: Url<'a>,
    headers: Headers<'a>,
    user_agent: std::borrow::Cow<'a, str>,
    body_length: u64,
    version: String,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct Url<'a> {
    scheme: &'a str,
    host: &'a str,
    path: &'a str,
    query: &'a str,
    raw: String,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct Res<'a> {
    status_code: u16,
    headers: Headers<'a>,
    body_length: u64,
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct Tls<'a> {
    version: &'a str,
    cipher_suite: &'a str,
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
    let object = json!({
        "conn": {
            "client_ip": client.ip().to_string(),
            "client_port": client.port(),
            "server_ip": local.ip().to_string(),
            "server_port": local.port(),
            "start_ts": rfc3339(start),
            "end_ts": rfc3339(SystemTime::now()),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        },
        "endpoint": {"id": ep.id, "url": ep.url, "proto": ep.url.split("://").next().unwrap_or("tcp")},
        "tunnel_session": {"id": ep.session.id},
    });
    sink.send(&ep.session.account_id, super::TCP_CONNECTION_CLOSED, &object);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(tls: Option<&warren_policy::TlsInfo>) -> PendingRequest {
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
        let served =
            Served { account_id: "acc_1", id: "ep_1", url: "https://app.example.com", session_id: "ts_1" };
        PendingRequest::new(
            (None, None),
            served,
            &req,
            ("https", "app.example.com"),
            ("192.0.2.7:40000".parse().unwrap(), "[::1]:443".parse().unwrap(), tls),
        )
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
    fn the_hand_written_event_is_the_serde_event_byte_for_byte() {
        let tls = warren_policy::TlsInfo {
            version: "1.3".into(),
            cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
            sni: "app.example.com".into(),
            client: None,
        };
        let mut res = HeaderMap::new();
        res.insert("content-type", "text/plain".parse().unwrap());
        res.append("set-cookie", "a=1".parse().unwrap());
        res.append("set-cookie", "b=\"2\"".parse().unwrap());
        let end = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_083_199);
        for p in [pending(None), pending(Some(&tls))] {
            for (status, headers) in [(200, &res), (0, &HeaderMap::new())] {
                let fast = p.event_json(status, headers, 1234, 56, end);
                let slow = p.event_json_serde(status, headers, 1234, 56, end);
                assert_eq!(fast, slow);
                let v: Value = serde_json::from_str(&fast).unwrap();
                assert_eq!(v["http"]["request"]["headers"]["x-multi"], json!(["one", "two"]));
            }
        }
    }
}
