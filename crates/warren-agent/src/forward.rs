//! Forwarding one proxy stream to the endpoint's upstream.
//!
//! By default bytes are copied both ways without parsing (the edge already parsed HTTP), with
//! half-close passed through. Only a `Host` rewrite needs HTTP parsing here; then hyper serves
//! the stream and a hyper client talks to the upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_mux::Stream;
use warren_mux::splice::ReadReady;
use warren_proto::{ProxyHeader, error_codes as codes};

use crate::config::{EndpointConfig, EndpointProto, UpstreamScheme};
use crate::inspect::{Exchange, Inspector, Side, Tee, Track};
use crate::state::{LiveEndpoint, Shared};

/// Copy buffer per direction.
const COPY_BUF: usize = 64 * 1024;

trait Io: ReadReady + AsyncWrite + Unpin + Send {}
impl<T: ReadReady + AsyncWrite + Unpin + Send> Io for T {}

/// An upstream that cannot say when it is readable without reading (TLS): the copy loop
/// gives it a buffer at once.
struct Eager<T>(T);

impl<T: AsyncRead + Unpin> ReadReady for Eager<T> {
    fn poll_read_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Eager<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Eager<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

pub(crate) async fn forward(
    mut stream: Stream,
    header: &ProxyHeader,
    live: &Arc<LiveEndpoint>,
    shared: &Arc<Shared>,
) {
    let _conn = live.metrics.conn_opened();
    let ep = &live.config;
    let upstream = match dial(ep).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(upstream = %ep.upstream, error = %e, "upstream unreachable");
            if live.inspected(shared) {
                // The inspector and the console show the failed request, with why.
                unreachable_http(stream, live, shared, header.client_addr.clone(), e).await;
                return;
            }
            if ep.proto.is_http() {
                let _ = stream.write_all(bad_gateway(ep, &e).as_bytes()).await;
                let _ = stream.shutdown().await;
                // Let the edge read the response before the stream goes away.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
            }
            return;
        }
    };
    tracing::debug!(visitor = %header.client_addr, upstream = %ep.upstream, "proxying");
    // HTTP/2 to the upstream: the edge's HTTP/2 goes through as it is (the inspector does
    // not capture these requests; docs/ENDPOINTS.md).
    if ep.proto.is_http() && !ep.upstream_http2 && (ep.host_header.is_some() || live.inspected(shared)) {
        proxy_http(stream, upstream, live.clone(), shared, header.client_addr.clone()).await;
        return;
    }
    match ep.proto {
        EndpointProto::Tls if ep.tls_termination.is_some() => {
            let cfg = ep.tls_termination.clone().expect("checked");
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
            match tokio::time::timeout(std::time::Duration::from_secs(10), accept).await {
                Ok(Ok(mut tls)) => {
                    let mut upstream = upstream;
                    if let Err(e) =
                        tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut upstream, COPY_BUF, COPY_BUF)
                            .await
                    {
                        tracing::debug!(error = %e, "tls stream ended with an error");
                    }
                }
                Ok(Err(e)) => {
                    tracing::info!(visitor = %header.client_addr, error = %e, "visitor TLS handshake failed")
                }
                Err(_) => tracing::info!(visitor = %header.client_addr, "visitor TLS handshake timed out"),
            }
        }
        _ => {
            let mut upstream = upstream;
            if let Err(e) = warren_mux::splice::splice(&mut stream, &mut upstream).await {
                tracing::debug!(error = %e, "proxy stream ended with an error");
            }
        }
    }
}

async fn dial(ep: &EndpointConfig) -> Result<Box<dyn Io>, String> {
    let u = &ep.upstream;
    let tcp = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("cannot connect to {u}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if u.scheme != UpstreamScheme::Https {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(u.host.clone())
        .map_err(|_| format!("invalid upstream host {}", u.host))?;
    let tls = tokio_rustls::TlsConnector::from(crate::tls::upstream_config(
        ep.verify_upstream_tls(),
        ep.upstream_http2,
    ))
    .connect(name, tcp)
    .await
    .map_err(|e| format!("TLS to {u} failed: {e}"))?;
    Ok(Box::new(Eager(tls)))
}

/// Answers the requests of a proxy stream whose upstream could not be reached with 502,
/// capturing each for the inspector with the error. The stream closes after the first answer
/// (`Connection: close`), so the next request dials the upstream again.
async fn unreachable_http(
    stream: Stream,
    live: &Arc<LiveEndpoint>,
    shared: &Arc<Shared>,
    client: String,
    error: String,
) {
    let inspector = shared.inspector.clone();
    let client: Arc<str> =
        client.parse::<std::net::SocketAddr>().map_or(client, |a| a.ip().to_string()).into();
    let live = live.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let track = begin(&live, inspector.clone(), &client, &req, None);
        let ep = &live.config;
        let body = format!(
            "The endpoint is online but the agent could not reach its upstream {}.\n{error}\nMake sure the service is running and listening there.\n\n{}\n",
            ep.upstream,
            codes::UPSTREAM_UNREACHABLE
        );
        let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert("warren-error-code", HeaderValue::from_static(codes::UPSTREAM_UNREACHABLE));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let (Some(ex), Some(ins)) = (&track.exchange, &track.inspector) {
            ex.respond(ins, r.status(), r.version(), r.headers());
            ex.fail(format!("the upstream {} could not be reached: {error}", ep.upstream));
        }
        std::future::ready(Ok::<_, Infallible>(r.map(|b| Tee::new(b, track, Side::Response).boxed())))
    });
    if let Err(e) =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
    {
        tracing::debug!(error = %e, "proxy stream ended with an error");
    }
}

fn bad_gateway(ep: &EndpointConfig, err: &str) -> String {
    let body = format!(
        "The endpoint is online but the agent could not reach its upstream {}.\n{err}\nMake sure the service is running and listening there.\n\n{}\n",
        ep.upstream,
        codes::UPSTREAM_UNREACHABLE
    );
    format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nwarren-error-code: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        codes::UPSTREAM_UNREACHABLE,
        body.len()
    )
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves HTTP on the proxy stream over one upstream connection: each request is measured,
/// captured for the inspector when the endpoint is inspected, and its `Host` rewritten when
/// asked. Upgrades (WebSocket) are spliced once the upstream agrees.
async fn proxy_http(
    stream: Stream,
    upstream: Box<dyn Io>,
    live: Arc<LiveEndpoint>,
    shared: &Arc<Shared>,
    client: String,
) {
    let host = match live.config.host_header.as_deref() {
        None => None,
        Some("rewrite") => {
            let u = &live.config.upstream;
            HeaderValue::from_str(&format!("{}:{}", u.host, u.port)).ok()
        }
        Some(h) => HeaderValue::from_str(h).ok(),
    };
    let (sender, conn) =
        match hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(upstream)).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "upstream HTTP handshake failed");
                return;
            }
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let inspector = if live.inspected(shared) { shared.inspector.clone() } else { None };
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    // The inspector shows the visitor's IP, as ngrok's does.
    let client: Arc<str> =
        client.parse::<std::net::SocketAddr>().map_or(client, |a| a.ip().to_string()).into();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        if let Some(h) = &host {
            req.headers_mut().insert(header::HOST, h.clone());
        }
        let track = begin(&live, inspector.clone(), &client, &req, None);
        send(sender.clone(), req, track)
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "proxy stream HTTP ended with an error");
    }
}

/// Starts measuring (and capturing) one request.
fn begin<B>(
    live: &Arc<LiveEndpoint>,
    inspector: Option<Arc<Inspector>>,
    client: &str,
    req: &Request<B>,
    replay_of: Option<String>,
) -> Arc<Track> {
    live.metrics.http.mark();
    let exchange = inspector.as_ref().map(|i| i.begin(live, client, req, replay_of));
    Arc::new(Track { endpoint: live.clone(), inspector, exchange, start: Instant::now() })
}

/// Sends one request upstream and returns the response with its body tracked; a failure
/// becomes a 502 the visitor can read.
async fn send<B>(
    sender: Arc<tokio::sync::Mutex<SendRequest<Tee<B>>>>,
    mut req: Request<B>,
    track: Arc<Track>,
) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let visitor_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let req = req.map(|b| Tee::new(b, track.clone(), Side::Request));
    let resp = {
        let mut s = sender.lock().await;
        match s.ready().await {
            Ok(()) => s.send_request(req).await,
            Err(e) => Err(e),
        }
    };
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("the upstream {} failed: {e}", track.endpoint.config.upstream);
            if let Some(ex) = &track.exchange {
                ex.fail(msg.clone());
            }
            let body = format!("{msg}\n\n{}\n", codes::UPSTREAM_UNREACHABLE);
            let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r.headers_mut()
                .insert("warren-error-code", HeaderValue::from_static(codes::UPSTREAM_UNREACHABLE));
            return Ok(r);
        }
    };
    if let (Some(ex), Some(ins)) = (&track.exchange, &track.inspector) {
        ex.respond(ins, resp.status(), resp.version(), resp.headers());
    }
    if let Some(visitor_upgrade) = visitor_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(v), Ok(u)) = tokio::join!(visitor_upgrade, upstream_upgrade) else { return };
            let (mut v, mut u) = (TokioIo::new(v), TokioIo::new(u));
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut v, &mut u, COPY_BUF, COPY_BUF).await;
        });
    }
    Ok(resp.map(|b| Tee::new(b, track, Side::Response).boxed()))
}

fn is_upgrade(h: &http::HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Replays a captured request straight to the endpoint's upstream (the edge and its policy
/// are not involved, as in ngrok), with the changes asked for, and captures it as a new
/// exchange.
pub(crate) async fn replay(
    shared: &Arc<Shared>,
    live: &Arc<LiveEndpoint>,
    req: Request<Bytes>,
    replay_of: &str,
) -> Result<Arc<Exchange>, String> {
    let Some(inspector) = shared.inspector.clone() else {
        return Err("inspection is off (inspect_db_size: -1), so there is nothing to replay".into());
    };
    let upstream = dial(&live.config).await?;
    let (sender, conn) =
        hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(upstream))
            .await
            .map_err(|e| format!("HTTP with the upstream {} failed: {e}", live.config.upstream))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = req.map(Full::new);
    let track = begin(live, Some(inspector), "replay", &req, Some(replay_of.to_owned()));
    let exchange = track.exchange.clone().expect("inspector given");
    let resp =
        send(Arc::new(tokio::sync::Mutex::new(sender)), req, track).await.unwrap_or_else(|e| match e {});
    // Read the response to its end so the exchange is complete when the caller returns.
    let _ = resp.into_body().collect().await;
    Ok(exchange)
}
