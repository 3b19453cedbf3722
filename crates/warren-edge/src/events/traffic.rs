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
use warren_store::events::NewEvent;

use crate::registry::Endpoint;

/// Where traffic events go: the bounded queue, and the count of those it had no room for.
#[derive(Clone)]
pub(crate) struct TrafficSink {
    pub(super) tx: mpsc::Sender<NewEvent>,
    pub(super) dropped: prometheus_client::metrics::counter::Counter,
}

impl TrafficSink {
    fn send(&self, account_id: &str, event_type: &str, object: &Value) {
        let ev = NewEvent::rendered(account_id, event_type, object, true);
        if self.tx.try_send(ev).is_err() {
            self.dropped.inc();
        }
    }
}

/// What is known of a request before it is proxied.
pub(crate) struct PendingRequest {
    sink: TrafficSink,
    account_id: String,
    object: Value,
    started: Instant,
}

/// Headers as ngrok's events show them: lowercase names, each with its list of values.
fn headers(h: &HeaderMap) -> Value {
    let mut m = serde_json::Map::new();
    for (name, value) in h {
        let list = m.entry(name.as_str().to_owned()).or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()));
        }
    }
    Value::Object(m)
}

fn rfc3339(t: SystemTime) -> String {
    warren_store::rfc3339(t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

impl PendingRequest {
    /// Captures the request as the visitor sent it.
    pub(crate) fn new<B>(
        sink: TrafficSink,
        ep: &Endpoint,
        req: &Request<B>,
        (scheme, host): (&str, &str),
        (client, local, tls): (SocketAddr, SocketAddr, Option<&warren_policy::TlsInfo>),
    ) -> PendingRequest {
        let uri = req.uri();
        let body_length = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        let object = json!({
            "conn": {
                "client_ip": client.ip().to_string(),
                "client_port": client.port(),
                "server_ip": local.ip().to_string(),
                "server_port": local.port(),
                "server_name": tls.map(|t| t.sni.as_str()).unwrap_or(host),
                "start_ts": rfc3339(SystemTime::now()),
            },
            "endpoint": {"id": ep.id, "url": ep.url, "proto": scheme},
            "tunnel_session": {"id": ep.session.id},
            "http": {
                "request": {
                    "method": req.method().as_str(),
                    "url": {
                        "scheme": scheme,
                        "host": host,
                        "path": path,
                        "query": query,
                        "raw": format!("{scheme}://{host}{}", uri.path_and_query().map_or("/", |p| p.as_str())),
                    },
                    "headers": headers(req.headers()),
                    "user_agent": req.headers().get(http::header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default(),
                    "body_length": body_length,
                    "version": format!("{:?}", req.version()),
                },
            },
            "tls": tls.map(|t| json!({"version": t.version, "cipher_suite": t.cipher_suite})),
        });
        PendingRequest { sink, account_id: ep.session.account_id.clone(), object, started: Instant::now() }
    }

    /// Sends the event when `resp`'s body is done (or dropped).
    pub(crate) fn complete<B>(mut self, resp: Response<B>) -> Response<Counted<B>> {
        let (parts, body) = resp.into_parts();
        self.object["http"]["response"] = json!({
            "status_code": parts.status.as_u16(),
            "headers": headers(&parts.headers),
        });
        Response::from_parts(parts, Counted { inner: body, bytes: 0, pending: Some(self) })
    }

    /// The request ended without a response from the edge (the policy closed the
    /// connection).
    pub(crate) fn closed(mut self) {
        self.object["http"]["response"] = json!({"status_code": 0, "headers": {}, "body_length": 0});
        self.finish(0);
    }

    fn finish(mut self, bytes: u64) {
        let ms = self.started.elapsed().as_millis() as u64;
        if let Some(r) = self.object["http"]["response"].as_object_mut() {
            r.insert("body_length".into(), bytes.into());
        }
        self.object["http"]["response_time_ms"] = ms.into();
        self.object["conn"]["end_ts"] = rfc3339(SystemTime::now()).into();
        self.sink.send(&self.account_id, super::HTTP_REQUEST_COMPLETE, &self.object);
    }
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
