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
struct Headers<'a>(&'a HeaderMap);

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
        let body_length = self
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
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
                end_ts: rfc3339(SystemTime::now()),
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
                        raw: format!("{scheme}://{host}{pq}"),
                    },
                    headers: Headers(&self.headers),
                    user_agent: user_agent.unwrap_or_default(),
                    body_length,
                    version: format!("{:?}", self.version),
                },
                response: Res { status_code: status, headers: Headers(res_headers), body_length: bytes },
                response_time_ms: ms,
            },
            tls: self.tls.as_ref().map(|t| Tls { version: &t.0, cipher_suite: &t.1 }),
        };
        let object = serde_json::to_string(&object).expect("events serialize");
        sink.send_raw(&self.account_id, super::HTTP_REQUEST_COMPLETE, object);
    }
}

/// `http_request_complete.v0`'s object, serialized straight to text.
#[derive(serde::Serialize)]
struct HttpEvent<'a> {
    conn: Conn<'a>,
    endpoint: EndpointRef<'a>,
    tunnel_session: Id<'a>,
    http: Http<'a>,
    tls: Option<Tls<'a>>,
}

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

#[derive(serde::Serialize)]
struct EndpointRef<'a> {
    id: &'a str,
    url: &'a str,
    proto: &'a str,
}

#[derive(serde::Serialize)]
struct Id<'a> {
    id: &'a str,
}

#[derive(serde::Serialize)]
struct Http<'a> {
    request: Req<'a>,
    response: Res<'a>,
    response_time_ms: u64,
}

#[derive(serde::Serialize)]
struct Req<'a> {
    method: &'a str,
    url: Url<'a>,
    headers: Headers<'a>,
    user_agent: std::borrow::Cow<'a, str>,
    body_length: u64,
    version: String,
}

#[derive(serde::Serialize)]
struct Url<'a> {
    scheme: &'a str,
    host: &'a str,
    path: &'a str,
    query: &'a str,
    raw: String,
}

#[derive(serde::Serialize)]
struct Res<'a> {
    status_code: u16,
    headers: Headers<'a>,
    body_length: u64,
}

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
