//! http and https ingress. TLS is terminated here for https (ALPN h2 and http/1.1);
//! HTTP/1.1 requests without a body are read by the connection's own loop (`serve_h1`), the
//! rest by hyper's server; requests are routed by host to an endpoint and sent as HTTP/1.1 over proxy
//! streams. Each visitor connection keeps its own small pool of proxy streams, so keep-alive
//! visitors reuse one stream (and one upstream connection on the agent's side), and HTTP/2
//! visitors get one stream per concurrent request. Bodies stream in both directions; upgrades
//! (WebSocket) are spliced once both sides agree.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2::SendRequest as H2Sender;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use warren_proto::error_codes as codes;

use crate::Shared;
use crate::cluster::RemoteRoute;
use crate::deadline::Deadline;
use crate::endpoint_tls::{CERT_HEADER_PREFIX, ClientCert};
use crate::ingress_tcp::COPY_BUF;
use crate::proxy_h1::{BoxError, H1Body, Home, Kept};
use crate::registry::{Endpoint, EndpointKey, Proto};
use crate::serve_h1::VisitorBody;

/// Which ingress a visitor came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// How many endpoints one request may pass through with `forward-internal`.
const MAX_FORWARDS: u8 = 4;

/// How many times a request was forwarded to an internal endpoint so far.
#[derive(Clone, Copy)]
struct ForwardDepth(u8);

/// Streams kept per visitor connection for reuse (of each kind).
const POOL_PER_CONNECTION: usize = 32;

/// A stream a visitor connection keeps for its next request: a proxy stream to an agent's
/// endpoint (`T` is the `Arc<Endpoint>`) or a relay stream to the node holding the endpoint
/// (the `Arc<RemoteRoute>`). Either is let go when idle (see [`drive_pooled`]).
struct Pooled<T> {
    to: T,
    sender: SendRequest<VisitorBody>,
    /// Consecutive checks by its connection's task that found it idle (see [`idle_release`]).
    idle_checks: u8,
    /// Names it to its connection's task.
    token: Arc<()>,
}

/// The streams of one kind a visitor connection keeps.
type Pool<T> = Arc<Mutex<Vec<Pooled<T>>>>;

// Named once: a `&str` name is parsed and validated again on every use.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The name a visitor's `host` is served under, among endpoints of `protos`: `host` itself
/// when an endpoint (here, on another node, or a cloud endpoint) has it, else the most specific wildcard name one has
/// (`*.b.example.com` before `*.example.com`), else `host`. An exact name always wins over a
/// wildcard, as with ngrok.
pub(crate) fn route_name<'a>(shared: &Shared, host: &'a str, protos: &[Proto]) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    let cluster = shared.sessions.cluster.as_ref().map(|c| &c.routes);
    if !shared.sessions.registry.has_wildcards() && !cluster.is_some_and(|r| r.has_wildcards()) {
        return Cow::Borrowed(host);
    }
    let held = |name: &str| {
        shared.sessions.registry.has_host_in(name, protos)
            || cluster.is_some_and(|r| r.has_host_in(name, protos))
    };
    if held(host) || shared.sessions.cloud.has_host_in(host, protos) {
        return Cow::Borrowed(host);
    }
    crate::registry::wildcards_for(host).find(|w| held(w)).map_or(Cow::Borrowed(host), Cow::Owned)
}

/// What the shared TLS port serves by name.
const TLS_PROTOS: [Proto; 2] = [Proto::Tls, Proto::Https];

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, scheme: Scheme) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let what = match scheme {
            Scheme::Http => "http ingress",
            Scheme::Https => "https ingress",
        };
        let (mut tcp, peer, permit) = tokio::select! {
            _ = &mut stop => return,
            c = crate::conn_limit::accept(&listener, &shared.listeners.visitor_limit, what) => c,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Some(remote) = crate::client_addr::resolve(&shared, &mut tcp, peer).await else { return };
            match scheme {
                Scheme::Http => {
                    let local = tcp.local_addr().unwrap_or(remote);
                    let limits = &shared.config.limits;
                    let io = Deadline::new(tcp, limits.first_byte_timeout, limits.idle_timeout);
                    serve(shared, io, remote, local, scheme, None, false).await
                }
                Scheme::Https => front(shared, tcp, remote, permit).await,
            }
        });
    }
}

/// The shared TLS port: the ClientHello's SNI picks the path before anything is terminated.
/// A connect hostname is an agent session, a `tls://` endpoint's name is passed through, a
/// name another node of the cluster holds is relayed there whole, and everything else is
/// https terminated here.
async fn front(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    remote: SocketAddr,
    visitor_permit: crate::conn_limit::ConnPermit,
) {
    let limit = shared.config.limits.handshake_timeout;
    // Boxed: reading the hello holds a record's buffer (5 KiB), and the connection's task is
    // sized for its largest state.
    let hello = match tokio::time::timeout(limit, Box::pin(crate::tls_front::read_hello(&mut tcp))).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            // An old or odd client learns why (a protocol_version alert for TLS 1.0/1.1).
            if let crate::tls_front::HelloError::NotTls(_, alert) = &e
                && !alert.is_empty()
            {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(limit, tcp.write_all(alert)).await;
            }
            return tracing::debug!(%remote, error = %e, "no usable ClientHello");
        }
        Err(_) => return tracing::debug!(%remote, "ClientHello timed out"),
    };
    let name = hello.server_name.clone().unwrap_or_default();
    if hello.alpn.iter().any(|p| p == b"acme-tls/1") {
        // An ACME server validating TLS-ALPN-01: answer with the challenge certificate, or
        // with nothing for a name not being validated.
        let Some(cfg) = shared.listeners.challenges.tls_alpn01(&shared, &name).await else { return };
        let io = crate::tls_front::Rewind::new(hello.buffered, tcp);
        let _ = tokio::time::timeout(limit, Box::pin(tokio_rustls::TlsAcceptor::from(cfg).accept(io))).await;
        return;
    }
    if shared.config.connect_hostnames.contains(&name) {
        // An agent session: it counts against the session limit, not only the visitor limit.
        let Ok(_session_permit) = shared.sessions.limit.try_acquire(remote.ip()) else {
            return tracing::warn!(%remote, "session limit (in all or for this address) reached; closing");
        };
        // Not a visitor: a shutdown does not wait for it to drain (it is told last).
        drop(visitor_permit);
        let io = crate::tls_front::Rewind::new(hello.buffered, tcp);
        // Boxed, as each other path of `front`: the task is sized for its largest state.
        return Box::pin(crate::session::serve_agent(shared, io, remote)).await;
    }
    let local = tcp.local_addr().unwrap_or(remote);
    let route_name = route_name(&shared, &name, &TLS_PROTOS);
    if let Some(ep) = shared.sessions.registry.lookup(&EndpointKey::Host(Proto::Tls, route_name.to_string()))
    {
        return Box::pin(crate::ingress_tcp::pass_tls(
            &shared,
            &ep,
            hello.buffered,
            &name,
            tcp,
            remote,
            local,
        ))
        .await;
    }
    if shared.sessions.registry.lookup(&EndpointKey::Host(Proto::Https, route_name.to_string())).is_none()
        && let Some(cluster) = &shared.sessions.cluster
        && let Some(route) = cluster
            .routes
            .lookup(&EndpointKey::Host(Proto::Tls, route_name.to_string()))
            .or_else(|| cluster.routes.lookup(&EndpointKey::Host(Proto::Https, route_name.to_string())))
    {
        // Another node holds it: the connection goes there whole (its TLS settings, its
        // certificate checks), ClientHello first.
        use tokio::io::AsyncWriteExt;
        let key = if cluster.routes.lookup(&EndpointKey::Host(Proto::Tls, route_name.to_string())).is_some() {
            EndpointKey::Host(Proto::Tls, route_name.to_string())
        } else {
            EndpointKey::Host(Proto::Https, route_name.to_string())
        };
        let header = |r: &RemoteRoute| crate::cluster::RelayOpen::Tls {
            endpoint_id: r.endpoint_id.clone(),
            sni: name.clone(),
            client: remote,
            local,
        };
        let mut s = match Box::pin(cluster.open_any(&key, route, header)).await {
            Ok((s, _)) => s,
            Err(e) => {
                shared.metrics.relay_failures.inc();
                return tracing::debug!(%remote, sni = %name, error = %e, "could not relay a TLS visitor");
            }
        };
        if s.write_all(&hello.buffered).await.is_ok() {
            drop(hello);
            let _ = Box::pin(warren_mux::splice::splice(&mut tcp, &mut s)).await;
        }
        return;
    }
    let io = crate::tls_front::Rewind::new(hello.buffered, tcp);
    terminate(shared, io, remote, local, name, false).await
}

/// A TLS connection another node relayed here (its SNI names an endpoint of this node):
/// passed through or terminated as if it had reached this node's TLS port, but never handed
/// to an agent session or relayed again.
pub(crate) async fn front_relayed(
    shared: Arc<Shared>,
    mut s: warren_mux::Stream,
    client: SocketAddr,
    local: SocketAddr,
    sni: &str,
    endpoint_id: &str,
) {
    let limit = shared.config.limits.handshake_timeout;
    let hello = match tokio::time::timeout(limit, Box::pin(crate::tls_front::read_hello(&mut s))).await {
        Ok(Ok(h)) => h,
        _ => return tracing::debug!(%client, "relayed visitor: no usable ClientHello"),
    };
    let name = hello.server_name.clone().unwrap_or_default();
    if name != sni {
        // The header named one endpoint and the hello another: serve neither.
        return tracing::warn!(%client, header = %sni, hello = %name, "refused a relayed TLS visitor whose ClientHello names another endpoint");
    }
    if let Some(ep) = shared
        .sessions
        .registry
        .lookup(&EndpointKey::Host(Proto::Tls, route_name(&shared, &name, &TLS_PROTOS).into_owned()))
        .filter(|e| e.id == endpoint_id)
    {
        return crate::ingress_tcp::pass_tls(&shared, &ep, hello.buffered, &name, s, client, local).await;
    }
    let io = crate::tls_front::Rewind::new(hello.buffered, s);
    terminate(shared, io, client, local, name, true).await
}

/// Terminates TLS with the SNI's endpoint's own settings (or the edge's default) and serves
/// the https connection.
async fn terminate<IO>(
    shared: Arc<Shared>,
    io: IO,
    remote: SocketAddr,
    local: SocketAddr,
    name: String,
    relayed: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = shared.config.limits.handshake_timeout;
    // An endpoint with its own TLS settings (versions, mutual TLS) gets its own config. The
    // connection remembers which config it was made with: requests on it reach only endpoints
    // with that same config (see `handle`).
    let endpoint_tls = shared
        .sessions
        .registry
        .lookup(&EndpointKey::Host(Proto::Https, route_name(&shared, &name, &TLS_PROTOS).into_owned()))
        .and_then(|e| e.tls.clone());
    let acceptor = match &endpoint_tls {
        Some(cfg) => tokio_rustls::TlsAcceptor::from(cfg.clone()),
        None => shared.listeners.https_tls.clone(),
    };
    // The handshake is boxed (its state is large, and the connection's task is sized for its
    // largest state, which should be serving), and its result taken apart before serving (a
    // value matched on keeps its place in the task for as long as its match lasts).
    let tls_io = match tokio::time::timeout(limit, Box::pin(acceptor.accept(io))).await {
        // Boxed at once: a TLS stream is 1.2 KiB, and each async layer that holds the
        // connection by value keeps a place of its own for it in the connection's task.
        Ok(Ok(t)) => Box::new(t),
        Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "visitor TLS handshake failed"),
        Err(_) => return tracing::debug!(%remote, "visitor TLS handshake timed out"),
    };
    let c = tls_io.get_ref().1;
    let cert = c.peer_certificates().and_then(|c| c.first()).and_then(ClientCert::parse);
    let info = warren_policy::TlsInfo {
        version: match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2".into(),
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3".into(),
            other => other.map(|v| format!("{v:?}")).unwrap_or_default(),
        },
        cipher_suite: c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default(),
        sni: c.server_name().unwrap_or_default().to_owned(),
        client: cert.as_ref().map(|cc| warren_policy::ClientCertInfo {
            subject: cc.subject.clone(),
            issuer: cc.issuer.clone(),
            san: cc.san.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            serial_number: cc.serial.clone(),
        }),
    };
    let tls = HttpsConn { config: endpoint_tls, client_cert: cert, info };
    let limits = &shared.config.limits;
    let io = Deadline::new(tls_io, limits.first_byte_timeout, limits.idle_timeout);
    serve(shared, io, remote, local, Scheme::Https, Some(tls), relayed).await
}

/// HTTP/1.1 requests another node relayed here for one of this node's plain-http
/// endpoints, served as if the visitor had reached this node's http listener.
pub(crate) async fn serve_relayed(
    shared: Arc<Shared>,
    s: warren_mux::Stream,
    client: SocketAddr,
    local: SocketAddr,
    _ep: Arc<Endpoint>,
) {
    let limits = &shared.config.limits;
    let io = Deadline::new(s, limits.first_byte_timeout, limits.idle_timeout);
    serve(shared, io, client, local, Scheme::Http, None, true).await
}

/// What an https visitor connection was accepted with.
struct HttpsConn {
    /// The endpoint TLS config the handshake used; `None` is the edge's default.
    config: Option<Arc<rustls::ServerConfig>>,
    /// The client certificate, checked as `config` asks (mutual TLS endpoints).
    client_cert: Option<ClientCert>,
    /// The connection as policy expressions see it (`conn.tls`).
    info: warren_policy::TlsInfo,
}

/// One visitor connection.
struct Visitor {
    remote: SocketAddr,
    /// `remote`'s address as a header value, formatted once per connection rather than per
    /// request (it is the usual `X-Forwarded-For`).
    remote_ip: HeaderValue,
    /// The edge's address the visitor reached.
    local: SocketAddr,
    scheme: Scheme,
    /// `None` for plain http.
    tls: Option<HttpsConn>,
    /// Another node relayed this connection: its requests are served here or not at all.
    relayed: bool,
    pool: Pool<Arc<Endpoint>>,
    /// Proxy streams kept for requests without a body, which this task writes and reads
    /// itself (see `proxy_h1`).
    kept: Arc<Kept<Arc<Endpoint>>>,
    /// How long a pooled proxy stream may stay idle (`limits.proxy_stream_idle`).
    proxy_idle: std::time::Duration,
    /// HTTP/2 connections to endpoints whose upstream speaks it, one per endpoint, shared by
    /// the connection's concurrent requests.
    h2_pool: Mutex<Vec<(Arc<Endpoint>, H2Sender<VisitorBody>)>>,
    /// Relay streams to other nodes (plain http to endpoints they hold), by route.
    relay_pool: Pool<Arc<RemoteRoute>>,
    /// Relay streams kept for requests without a body (see `proxy_h1`).
    relay_kept: Arc<Kept<Arc<RemoteRoute>>>,
    /// Whether a request has arrived on the connection (see [`FIRST_REQUEST_GRACE`]).
    asked: std::sync::atomic::AtomicBool,
    /// What traffic events say of the connection, written for its first request.
    event_conn: std::sync::OnceLock<crate::events::ConnText>,
}

/// At shutdown, how long a connection that has not sent its first request yet may still send
/// it: the client opened it to send one, and closing it at once would fail that request
/// (a kept-alive connection that is idle after a request closes at once, as HTTP allows).
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    remote: SocketAddr,
    local: SocketAddr,
    scheme: Scheme,
    tls: Option<HttpsConn>,
    relayed: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote_ip =
        HeaderValue::from_str(&remote.ip().to_string()).expect("an IP address is a valid header value");
    let visitor = Arc::new(Visitor {
        remote,
        remote_ip,
        local,
        scheme,
        tls,
        relayed,
        pool: Pool::default(),
        kept: Kept::new(shared.config.limits.proxy_stream_idle, POOL_PER_CONNECTION),
        proxy_idle: shared.config.limits.proxy_stream_idle,
        h2_pool: Mutex::new(Vec::new()),
        relay_pool: Pool::default(),
        relay_kept: Kept::new(shared.config.limits.proxy_stream_idle, POOL_PER_CONNECTION),
        asked: std::sync::atomic::AtomicBool::new(false),
        event_conn: std::sync::OnceLock::new(),
    });
    // HTTP/1.1 requests without a body are served by the connection's own loop; the first
    // request it does not serve (or HTTP/2) hands the connection to hyper's server.
    let io = {
        let limits = crate::serve_h1::Limits {
            header_read_timeout: shared.config.limits.header_read_timeout,
            first_request_grace: FIRST_REQUEST_GRACE,
        };
        let (s, v): (&Shared, &Visitor) = (&shared, &visitor);
        let ended = crate::serve_h1::serve(io, &limits, &shared.shutdown, move |req| {
            v.asked.store(true, std::sync::atomic::Ordering::Relaxed);
            handle(s, v, req)
        })
        .await;
        match ended {
            crate::serve_h1::Ended::Closed => return,
            crate::serve_h1::Ended::Handoff(io, read) => crate::tls_front::Rewind::new(read, io),
        }
    };
    // Boxed: the task is sized for its largest state, and only connections hyper serves
    // need hyper's (an idle connection of the loop above holds none of it).
    Box::pin(serve_hyper(shared, visitor, io)).await
}

/// Serves a visitor connection with hyper's server (HTTP/2, and HTTP/1.1 from the first
/// request `serve_h1` does not serve).
async fn serve_hyper<IO>(shared: Arc<Shared>, visitor: Arc<Visitor>, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = visitor.remote;
    let svc = {
        let (shared, visitor) = (shared.clone(), visitor.clone());
        service_fn(move |req: Request<Incoming>| {
            visitor.asked.store(true, std::sync::atomic::Ordering::Relaxed);
            let (shared, visitor) = (shared.clone(), visitor.clone());
            // An error from the service makes hyper close the connection without an answer
            // (the close-connection action).
            async move { handle(&shared, &visitor, req.map(VisitorBody::Hyper)).await }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.limits.header_read_timeout)
        .max_buf_size(256 * 1024);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // At shutdown a connection finishes the request it is serving, then closes (HTTP/2:
    // GOAWAY); an idle keep-alive connection closes at once, a new one once its first
    // request came or its grace ended.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = crate::shutting_down(shared.shutdown.clone()) => {
            let grace = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
            let mut ended = None;
            while !visitor.asked.load(std::sync::atomic::Ordering::Relaxed) && tokio::time::Instant::now() < grace {
                tokio::select! {
                    r = conn.as_mut() => {
                        ended = Some(r);
                        break;
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                }
            }
            match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "visitor connection ended with an error");
    }
}

/// The traffic policy closed the connection.
#[derive(Debug)]
struct ClosedByPolicy;

impl std::fmt::Display for ClosedByPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by the traffic policy")
    }
}

impl std::error::Error for ClosedByPolicy {}

async fn handle(
    shared: &Shared,
    visitor: &Visitor,
    req: Request<VisitorBody>,
) -> Result<Response<Body>, ClosedByPolicy> {
    if let Some(token) = req.uri().path().strip_prefix("/.well-known/acme-challenge/")
        && let Some(key_auth) = shared.listeners.challenges.http01(shared, token).await
    {
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(key_auth)).map_err(|never| match never {}).boxed())
            .expect("valid challenge response"));
    }
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        // RFC 9112 §3.2: two Host lines make the target ambiguous, and routing by one while
        // the upstream reads the other is how host confusion starts.
        return Ok(page(
            StatusCode::BAD_REQUEST,
            "The request has more than one Host header, so it cannot be routed.",
            "",
        ));
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(header::HOST).map(|h| h.as_bytes()));
    if authority.is_some_and(|a| a.contains(&b'@')) {
        // RFC 9110 §7.2: no user information in Host. `victim@secure` would be routed by one
        // part and read by the upstream as another.
        return Ok(page(
            StatusCode::BAD_REQUEST,
            "The request's Host has user information ('@'), which HTTP does not allow.",
            "",
        ));
    }
    let Some(host) = request_host(&req) else {
        return Ok(page(
            StatusCode::BAD_REQUEST,
            "The request has no Host header, so it cannot be routed.",
            "",
        ));
    };
    let proto = match visitor.scheme {
        Scheme::Http => Proto::Http,
        Scheme::Https => Proto::Https,
    };
    // What the endpoint maps hold: the host, or the wildcard name that serves it.
    // A plain-http visitor may be sent to an https-only endpoint of the name.
    let protos: &[Proto] = if proto == Proto::Http { &[Proto::Http, Proto::Https] } else { &[Proto::Https] };
    let name = route_name(shared, &host, protos);
    if let Some(mut ep) = shared.sessions.registry.lookup(&EndpointKey::Host(proto, name.to_string())) {
        let conn_tls = visitor.tls.as_ref().and_then(|t| t.config.as_ref());
        if !same_tls(conn_tls, ep.tls.as_ref())
            && let Some(member) = shared
                .sessions
                .registry
                .members(&EndpointKey::Host(proto, name.to_string()))
                .into_iter()
                .find(|m| same_tls(conn_tls, m.tls.as_ref()))
        {
            // A pool whose members have TLS settings of their own: the connection stays with
            // the member whose settings its handshake used.
            ep = member;
        }
        if !same_tls(conn_tls, ep.tls.as_ref()) {
            // The handshake was made for another endpoint's TLS settings (another SNI, or
            // a reused HTTP/2 connection): this endpoint's versions and client certificates
            // were never checked. Clients retry on a connection of its own (RFC 9110 §15.5.20).
            return Ok(page(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "{host} has its own TLS settings; connect with its name as the TLS server name (SNI)."
                ),
                codes::MISDIRECTED,
            ));
        }
        return serve_at(shared, visitor, Serving::Agent(ep), host, req).await;
    }
    if let Some(cluster) = shared.sessions.cluster.as_ref().filter(|_| !visitor.relayed) {
        if let Some(route) = cluster.routes.lookup(&EndpointKey::Host(proto, name.to_string())) {
            if visitor.scheme == Scheme::Https {
                // The TLS handshake was made here, for another name; the endpoint's own
                // node must make it (its certificate checks, its TLS versions).
                return Ok(page(
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!(
                        "{host} is served by another node; connect with its name as the TLS server name (SNI)."
                    ),
                    codes::MISDIRECTED,
                ));
            }
            let key = EndpointKey::Host(proto, name.to_string());
            return Ok(relay_request(shared, cluster, visitor, &key, route, &host, req).await);
        }
        if visitor.scheme == Scheme::Http
            && shared.sessions.registry.lookup(&EndpointKey::Host(Proto::Https, name.to_string())).is_none()
            && cluster.routes.lookup(&EndpointKey::Host(Proto::Https, name.to_string())).is_some()
        {
            return Ok(https_redirect(shared, &host, &req));
        }
    }
    if let Some(c) = shared.sessions.cloud.lookup(&EndpointKey::Host(proto, host.clone())) {
        return serve_at(shared, visitor, Serving::Cloud(c), host, req).await;
    }
    let https_url = || {
        shared
            .sessions
            .registry
            .lookup(&EndpointKey::Host(Proto::Https, name.to_string()))
            .map(|ep| ep.url.clone())
            .or_else(|| {
                shared
                    .sessions
                    .cloud
                    .lookup(&EndpointKey::Host(Proto::Https, host.clone()))
                    .map(|c| c.url.clone())
            })
    };
    if visitor.scheme == Scheme::Http
        && let Some(url) = https_url()
    {
        // https-only endpoint: send plain-http visitors to the same path over https.
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("{url}{pq}");
        return Ok(Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, location)
            .body(empty())
            .expect("valid redirect"));
    }
    Ok(page(
        StatusCode::NOT_FOUND,
        &format!(
            "No endpoint is online at {host}. Start an agent for it, for example: warren http 8080 --url {}://{host}",
            match visitor.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            }
        ),
        codes::ENDPOINT_NOT_FOUND,
    ))
}

/// What serves a request: an agent's endpoint, or a cloud endpoint (its policy answers).
enum Serving {
    Agent(Arc<Endpoint>),
    Cloud(Arc<crate::cloud::CloudEndpoint>),
}

impl Serving {
    fn account_id(&self) -> &str {
        match self {
            Serving::Agent(e) => &e.session.account_id,
            Serving::Cloud(c) => &c.account_id,
        }
    }

    fn url(&self) -> &str {
        match self {
            Serving::Agent(e) => &e.url,
            Serving::Cloud(c) => &c.url,
        }
    }

    fn policy(&self) -> &warren_policy::Chain {
        match self {
            Serving::Agent(e) => &e.policy,
            Serving::Cloud(c) => &c.policy,
        }
    }

    fn info(&self) -> &warren_policy::EndpointInfo {
        match self {
            Serving::Agent(e) => &e.info,
            Serving::Cloud(c) => &c.info,
        }
    }

    fn metrics(&self) -> &crate::metrics::EndpointMetrics {
        match self {
            Serving::Agent(e) => &e.metrics,
            Serving::Cloud(c) => &c.metrics,
        }
    }

    fn served(&self) -> crate::events::Served<'_> {
        match self {
            Serving::Agent(e) => {
                crate::events::Served { account_id: &e.session.account_id, url: &e.url, text: &e.event_text }
            }
            Serving::Cloud(c) => {
                crate::events::Served { account_id: &c.account_id, url: &c.url, text: &c.event_text }
            }
        }
    }
}

/// Serves a request at this node's endpoint `ep` for `host`: the visitor IP restrictions,
/// then the policies and the agent (or the cloud endpoint's policy alone), with the
/// request's metrics and traffic event.
async fn serve_at(
    shared: &Shared,
    visitor: &Visitor,
    ep: Serving,
    host: String,
    req: Request<VisitorBody>,
) -> Result<Response<Body>, ClosedByPolicy> {
    let ip = crate::client_addr::forwarded_ip(shared, visitor.remote.ip(), req.headers());
    if !crate::ip_rules::visitor_allowed(shared, ep.account_id(), ip, ep.url()).await {
        return Ok(page(
            StatusCode::FORBIDDEN,
            &format!("Requests from {ip} to {host} are not allowed by this endpoint's IP restrictions."),
            codes::IP_RESTRICTED,
        ));
    }
    let sink = shared
        .accounts
        .events
        .traffic_sink(&shared.store, ep.account_id(), crate::events::HTTP_REQUEST_COMPLETE)
        .await;
    let started = std::time::Instant::now();
    let recent = shared.listeners.recent.watching().then(|| shared.listeners.recent.clone());
    if sink.is_none() && recent.is_none() {
        let r = proxy(shared, visitor, &ep, &host, ip, req).await;
        if let Ok(resp) = &r {
            ep.metrics().request(resp.status().as_u16(), started.elapsed());
        }
        return r;
    }
    let scheme = match visitor.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let client = SocketAddr::new(ip, visitor.remote.port());
    let tls = visitor.tls.as_ref().map(|t| &t.info);
    let pending = crate::events::PendingRequest::new(
        (sink, recent),
        ep.served(),
        &req,
        (scheme, &host),
        (client, visitor.local, tls),
        // The connection's addresses and TLS, written for its first request, unless this one
        // names another client (a trusted proxy's X-Forwarded-For).
        (ip == visitor.remote.ip()).then_some(&visitor.event_conn),
    );
    match proxy(shared, visitor, &ep, &host, ip, req).await {
        Ok(resp) => {
            ep.metrics().request(resp.status().as_u16(), started.elapsed());
            Ok(pending.complete(resp).map(|b| b.boxed()))
        }
        Err(closed) => {
            pending.closed();
            Err(closed)
        }
    }
}

async fn proxy(
    shared: &Shared,
    visitor: &Visitor,
    serving: &Serving,
    host: &str,
    client_ip: std::net::IpAddr,
    req: Request<VisitorBody>,
) -> Result<Response<Body>, ClosedByPolicy> {
    let Onward { mut parts, body, visitor_upgrade, original_host, visitor_version, te_trailers } =
        onward(req);
    // The policy sees the visitor's request (its version, its headers), before warren adds
    // the forwarding headers.
    let scheme = match visitor.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let policy = serving.policy();
    let conn = (!policy.is_empty()).then(|| {
        let client = SocketAddr::new(client_ip, visitor.remote.port());
        crate::policy::conn(client, visitor.local, visitor.tls.as_ref().map(|t| t.info.clone()))
    });
    // verify-webhook reads the body: only then is it buffered (bounded), never otherwise.
    let mut buffered = None;
    let mut body = Some(body);
    if let Some(limit) = conn.as_ref().and_then(|_| policy.body_limit()) {
        // Boxed, as rare (see the test `the_request_future_stays_small`).
        match Box::pin(read_limited(body.take().expect("not taken yet"), limit)).await {
            Ok(b) => buffered = Some(b),
            Err(status) => {
                let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    format!(
                        "This endpoint verifies webhook signatures and takes bodies of at most {limit} bytes."
                    )
                } else {
                    "The request body did not arrive in time.".to_owned()
                };
                return Ok(page(status, &msg, ""));
            }
        }
    }
    if let Some(conn) = &conn {
        let (now, mono) = crate::policy::now();
        parts.version = visitor_version;
        let (verdict, logs) = policy.on_http_request_with_body(
            conn,
            serving.info(),
            scheme,
            &mut parts,
            buffered.as_deref(),
            now,
            mono,
        );
        parts.version = Version::HTTP_11;
        crate::policy::write_logs(serving.url(), logs);
        shared.metrics.verdict(&verdict);
        match verdict {
            warren_policy::Verdict::Continue => {}
            warren_policy::Verdict::Respond(r) => {
                return Ok(r.map(|b| Full::new(b).map_err(|never| match never {}).boxed()));
            }
            warren_policy::Verdict::Close => return Err(ClosedByPolicy),
            warren_policy::Verdict::ForwardInternal(f) => {
                let proto = if f.scheme == "https" { Proto::Https } else { Proto::Http };
                let name = crate::registry::internal_host(&f.host, serving.account_id());
                let depth = parts.extensions.get::<ForwardDepth>().map_or(0, |d| d.0);
                match shared.sessions.registry.lookup(&EndpointKey::Host(proto, name)) {
                    Some(_) if depth >= MAX_FORWARDS => {
                        return Ok(page(
                            StatusCode::LOOP_DETECTED,
                            &format!(
                                "forward-internal went through {MAX_FORWARDS} endpoints; the policies loop."
                            ),
                            "",
                        ));
                    }
                    Some(_) if buffered.is_some() => {
                        return Ok(page(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "forward-internal cannot follow verify-webhook on one request.",
                            "",
                        ));
                    }
                    Some(target) => {
                        // The internal endpoint takes the request as the visitor sent it and
                        // runs its own policy; its answer is the answer.
                        parts.extensions.insert(ForwardDepth(depth + 1));
                        parts.version = visitor_version;
                        let body = body.take().expect("the body is still streaming");
                        let req = Request::from_parts(parts, body);
                        let target = Serving::Agent(target);
                        return Box::pin(proxy(shared, visitor, &target, &f.host, client_ip, req)).await;
                    }
                    None if f.continue_on_error => {}
                    None => {
                        return Ok(page(
                            StatusCode::BAD_GATEWAY,
                            &format!(
                                "No internal endpoint {}://{} is online in this account.",
                                f.scheme, f.host
                            ),
                            codes::ENDPOINT_NOT_FOUND,
                        ));
                    }
                }
            }
            warren_policy::Verdict::Exchange(exchange) => {
                // Boxed, as rare (see the test `the_request_future_stays_small`).
                let answer = Box::pin(shared.listeners.idp.exchange(&exchange)).await;
                if let Err(e) = &answer {
                    tracing::warn!(url = %serving.url(), error = %e, "openid-connect: the code exchange failed");
                }
                let answer = answer.as_ref().map(|(status, body)| (*status, &body[..])).map_err(Clone::clone);
                let r = exchange.finish(answer, std::time::SystemTime::now());
                return Ok(r.map(|b| Full::new(b).map_err(|never| match never {}).boxed()));
            }
        }
    }
    let ep = match serving {
        Serving::Agent(ep) => ep,
        Serving::Cloud(c) => {
            // Nothing in the policy answered, and there is no agent to ask (ngrok refuses
            // such a policy where it can tell at create; a rule's condition can still miss).
            return Ok(page(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "The traffic policy of cloud endpoint {} ended without answering this request (it needs a terminating action: custom-response, deny, redirect or forward-internal).",
                    c.id
                ),
                codes::CLOUD_POLICY_NON_TERMINATING,
            ));
        }
    };
    let policy = &ep.policy;
    // Response rules read the request as it was sent on.
    let sent = (conn.is_some() && policy.has_response_rules()).then(|| {
        let mut r = Request::new(());
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = visitor_version;
        *r.headers_mut() = parts.headers.clone();
        r.into_parts().0
    });
    if ep.upstream_h2 && visitor_upgrade.is_some() {
        return Ok(page(
            StatusCode::NOT_IMPLEMENTED,
            &format!("{host} speaks HTTP/2 to its upstream, which carries no protocol upgrade (WebSocket)."),
            "",
        ));
    }
    add_forwarded(&mut parts.headers, visitor, original_host.as_ref());
    if ep.upstream_h2 && te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // Circuit breakers the request passed hear how it went, whatever the answer.
    let tickets = parts.extensions.remove::<warren_policy::CircuitTickets>();
    let resp = match (buffered, body) {
        // Boxed, as rare (see the test `the_request_future_stays_small`).
        (Some(bytes), _) => {
            Box::pin(send_buffered(visitor, ep, Request::from_parts(parts, Full::new(bytes))))
                .await
                .map(|r| r.map(Upstream::Hyper))
        }
        (None, Some(body)) => send_streaming(visitor, ep, Request::from_parts(parts, body)).await,
        (None, None) => unreachable!("the body is either buffered or still streaming"),
    };
    if let Some(t) = tickets {
        let status = resp.as_ref().map_or(StatusCode::BAD_GATEWAY.as_u16(), |r| r.status().as_u16());
        t.finish(status, crate::policy::now().1);
    }
    let mut resp = match resp {
        Ok(r) => r,
        Err(Unreachable::Session) => {
            return Ok(page(
                StatusCode::BAD_GATEWAY,
                &format!("The agent session serving {host} could not be reached."),
                codes::SESSION_GONE,
            ));
        }
        Err(Unreachable::Request) => {
            return Ok(page(
                StatusCode::BAD_GATEWAY,
                &format!("The agent serving {host} ended the request without a response."),
                codes::SESSION_GONE,
            ));
        }
        Err(Unreachable::Invalid) => {
            return Ok(page(
                StatusCode::BAD_GATEWAY,
                &format!("The upstream serving {host} sent a response that is not valid HTTP/1.1."),
                codes::SESSION_GONE,
            ));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(visitor_upgrade) = visitor_upgrade {
            splice_upgrades(visitor_upgrade, &mut resp);
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
        if visitor.scheme == Scheme::Https {
            add_hsts(shared, host, resp.headers_mut());
        }
    }
    if let (Some(conn), Some(sent)) = (&conn, &sent) {
        let (mut res_parts, body) = resp.into_parts();
        let (now, mono) = crate::policy::now();
        let (verdict, logs) =
            ep.policy.on_http_response(conn, &ep.info, scheme, sent, &mut res_parts, now, mono);
        crate::policy::write_logs(&ep.url, logs);
        shared.metrics.verdict(&verdict);
        return match verdict {
            warren_policy::Verdict::Continue => {
                let compress = res_parts.extensions.remove::<warren_policy::CompressResponse>();
                let res = Response::from_parts(res_parts, body);
                Ok(match compress {
                    Some(c) => crate::compress::apply(
                        res,
                        &c.0,
                        &sent.method,
                        &sent.headers,
                        &shared.listeners.compressions,
                    )
                    .map(|b| b.boxed()),
                    None => res.map(|b| b.boxed()),
                })
            }
            // The upstream's body is dropped unread; the agent's stream is reset with it.
            warren_policy::Verdict::Respond(r) => {
                Ok(r.map(|b| Full::new(b).map_err(|never| match never {}).boxed()))
            }
            // openid-connect and forward-internal run on requests only.
            warren_policy::Verdict::Close
            | warren_policy::Verdict::Exchange(_)
            | warren_policy::Verdict::ForwardInternal(_) => Err(ClosedByPolicy),
        };
    }
    Ok(resp.map(|b| b.boxed()))
}

/// Sends a plain-http request on to the node holding its endpoint, over a relay stream kept
/// for this visitor connection; that node runs the endpoint's policies and adds the
/// forwarding headers, so the request leaves here as the visitor sent it (hop-by-hop headers
/// aside).
async fn relay_request(
    shared: &Shared,
    cluster: &crate::cluster::Cluster,
    visitor: &Visitor,
    key: &EndpointKey,
    route: Arc<RemoteRoute>,
    host: &str,
    req: Request<VisitorBody>,
) -> Response<Body> {
    let Onward { parts, body, visitor_upgrade, .. } = onward(req);
    if without_body(&parts, &body) {
        return relay_kept(shared, cluster, visitor, key, route, host, parts).await;
    }
    let (route, mut sender, token) = match take_relay_sender(cluster, visitor, key, route, host).await {
        Ok(s) => s,
        Err(e) => return relay_failed(shared, host, &*e),
    };
    let resp = sender.send_request(Request::from_parts(parts, body)).await;
    {
        let mut pool = visitor.relay_pool.lock().expect("pool poisoned");
        if pool.len() < POOL_PER_CONNECTION && !sender.is_closed() {
            pool.push(Pooled { to: route.clone(), sender, idle_checks: 0, token });
        }
    }
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => return relay_no_response(host, &route.node_id, &e),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(visitor_upgrade) = visitor_upgrade
    {
        splice_upgrades(visitor_upgrade, &mut resp);
    }
    resp.map(|b| b.map_err(Into::into).boxed())
}

/// [`relay_request`] for a request without a body: over a kept relay stream, by this task
/// (see `proxy_h1`).
async fn relay_kept(
    shared: &Shared,
    cluster: &crate::cluster::Cluster,
    visitor: &Visitor,
    key: &EndpointKey,
    route: Arc<RemoteRoute>,
    host: &str,
    parts: http::request::Parts,
) -> Response<Body> {
    // The same endpoint id (the fencing token): one bound again opens a new stream, checked
    // by its holder.
    let kept =
        visitor.relay_kept.take(|to| to.endpoint_id == route.endpoint_id && to.node_id == route.node_id);
    let (stream, route) = match kept {
        Some((to, s)) => (s, to),
        None => match open_relay(cluster, visitor, key, route, host).await {
            Ok(s) => s,
            Err(e) => return relay_failed(shared, host, &e),
        },
    };
    let node = route.node_id.clone();
    match crate::proxy_h1::send(stream, &parts, Home { pool: visitor.relay_kept.clone(), to: route }).await {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => relay_no_response(host, &node, &e),
    }
}

/// A new relay stream for `host` to `route`'s node (or to the next holder of `key` if that
/// node refuses), with the route it goes to.
async fn open_relay(
    cluster: &crate::cluster::Cluster,
    visitor: &Visitor,
    key: &EndpointKey,
    route: Arc<RemoteRoute>,
    host: &str,
) -> Result<(warren_mux::Stream, Arc<RemoteRoute>), crate::cluster::RelayError> {
    let header = |r: &RemoteRoute| crate::cluster::RelayOpen::Http {
        endpoint_id: r.endpoint_id.clone(),
        host: host.to_owned(),
        client: visitor.remote,
        local: visitor.local,
    };
    cluster.open_any(key, route, header).await
}

/// The visitor's answer when a relayed request got no response from `node`.
fn relay_no_response(host: &str, node: &str, e: &dyn std::fmt::Display) -> Response<Body> {
    tracing::debug!(%host, %node, error = %e, "relayed request failed");
    page(
        StatusCode::BAD_GATEWAY,
        &format!("The edge node serving {host} ended the request without a response."),
        codes::SESSION_GONE,
    )
}

/// The visitor's answer when no relay stream could be opened.
fn relay_failed(shared: &Shared, host: &str, e: &dyn std::fmt::Display) -> Response<Body> {
    shared.metrics.relay_failures.inc();
    tracing::debug!(%host, error = %e, "could not relay a request");
    page(
        StatusCode::BAD_GATEWAY,
        &format!("The edge node serving {host} could not be reached; try again."),
        codes::SESSION_GONE,
    )
}

/// A request with no body to send, no upgrade and no tunnel: one `proxy_h1` carries.
fn without_body(parts: &http::request::Parts, body: &VisitorBody) -> bool {
    body.is_end_stream()
        && parts.method != http::Method::CONNECT
        && !parts.headers.contains_key(header::UPGRADE)
        && !parts.headers.contains_key(header::TRANSFER_ENCODING)
}

/// A visitor's request made ready to send on (to an agent, or to the node holding the
/// endpoint).
struct Onward {
    parts: http::request::Parts,
    body: VisitorBody,
    /// The visitor's side of an upgrade (WebSocket) it asked for.
    visitor_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// What the request was routed by.
    original_host: Option<HeaderValue>,
    visitor_version: Version,
    /// The visitor sent `TE: trailers` (gRPC does): hop-by-hop, but an HTTP/2 upstream is
    /// told again, as HTTP/2 allows.
    te_trailers: bool,
}

/// Hop-by-hop headers removed (`Upgrade` kept when one is asked for), the Host the request
/// was routed by, a path-only target, HTTP/1.1.
fn onward(mut req: Request<VisitorBody>) -> Onward {
    let upgrade = is_upgrade(req.headers()) && req.version() <= Version::HTTP_11;
    let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The request-target's authority, when there is one, is what the request was routed by,
    // so the upstream gets it as Host; a Host header beside it is ignored (RFC 9112 §3.2.2).
    let original_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    let te_trailers =
        parts.headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
        });
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(h) = &original_host {
        parts.headers.insert(header::HOST, h.clone());
    }
    parts.uri = parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let visitor_version = std::mem::replace(&mut parts.version, Version::HTTP_11);
    Onward { parts, body, visitor_upgrade, original_host, visitor_version, te_trailers }
}

/// Once both sides have switched protocols, copies between them.
fn splice_upgrades<B>(visitor: hyper::upgrade::OnUpgrade, resp: &mut Response<B>) {
    let other = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (Ok(v), Ok(u)) = tokio::join!(visitor, other) else { return };
        let (mut v, mut u) = (TokioIo::new(v), TokioIo::new(u));
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut v, &mut u, COPY_BUF, COPY_BUF).await;
    });
}

/// A ready relay stream to `route`'s node from the visitor's pool, or a new one (to the
/// next holder of `key` if that node refuses), with the route it goes to.
async fn take_relay_sender(
    cluster: &crate::cluster::Cluster,
    visitor: &Visitor,
    key: &EndpointKey,
    route: Arc<RemoteRoute>,
    host: &str,
) -> Result<(Arc<RemoteRoute>, SendRequest<VisitorBody>, Arc<()>), Box<dyn std::error::Error + Send + Sync>> {
    {
        let mut pool = visitor.relay_pool.lock().expect("pool poisoned");
        pool.retain(|p| !p.sender.is_closed());
        // The same endpoint id (the fencing token): one bound again opens a new stream,
        // checked by its holder.
        if let Some(i) = pool.iter().position(|p| {
            p.to.endpoint_id == route.endpoint_id && p.to.node_id == route.node_id && p.sender.is_ready()
        }) {
            let p = pool.swap_remove(i);
            return Ok((p.to, p.sender, p.token));
        }
    }
    let (stream, route) = open_relay(cluster, visitor, key, route, host).await?;
    let (sender, token) = pooled_client(stream, &visitor.relay_pool, visitor.proxy_idle).await?;
    Ok((route, sender, token))
}

/// An HTTP/1 client over a new stream for `pool`, its connection driven by a task of its own
/// that lets it go when idle (see [`drive_pooled`]); the token names it in the pool.
async fn pooled_client<T: Send + 'static, S>(
    stream: S,
    pool: &Pool<T>,
    idle: std::time::Duration,
) -> hyper::Result<(SendRequest<VisitorBody>, Arc<()>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    let token = Arc::new(());
    tokio::spawn(drive_pooled(conn.with_upgrades(), Arc::downgrade(pool), token.clone(), idle));
    Ok((sender, token))
}

/// 308 to the same path over https, on this edge's https port.
fn https_redirect<B>(shared: &Shared, host: &str, req: &Request<B>) -> Response<Body> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match shared.listeners.https_port {
        443 => format!("https://{host}{pq}"),
        p => format!("https://{host}:{p}{pq}"),
    };
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, location)
        .body(empty())
        .expect("valid redirect")
}

/// Why a request did not reach the agent.
enum Unreachable {
    /// No proxy stream could be opened.
    Session,
    /// The stream ended before a response.
    Request,
    /// The response was not valid HTTP/1.1 (or broke hyper's client limits).
    Invalid,
}

impl Unreachable {
    /// Why a request sent on a proxy stream failed.
    fn of(e: &hyper::Error) -> Unreachable {
        if e.is_parse() { Unreachable::Invalid } else { Unreachable::Request }
    }

    /// Why a request sent by `proxy_h1` failed.
    fn of_io(e: &std::io::Error) -> Unreachable {
        if e.kind() == std::io::ErrorKind::InvalidData { Unreachable::Invalid } else { Unreachable::Request }
    }
}

/// Sends a streaming request over a pooled proxy stream.
async fn send_streaming(
    visitor: &Visitor,
    ep: &Arc<Endpoint>,
    req: Request<VisitorBody>,
) -> Result<Response<Upstream>, Unreachable> {
    if ep.upstream_h2 {
        // Boxed, as rare (see the test `the_request_future_stays_small`).
        return Box::pin(send_h2(visitor, ep, req)).await.map(|r| r.map(Upstream::Hyper));
    }
    let (parts, body) = req.into_parts();
    if without_body(&parts, &body) {
        let stream = match visitor.kept.take(|to| Arc::ptr_eq(to, ep)) {
            Some((_, s)) => s,
            None => ep.open_proxy_stream(visitor.remote).await.map_err(|e| {
                tracing::debug!(url = %ep.url, error = %e, "could not open a proxy stream");
                Unreachable::Session
            })?,
        };
        let home = Home { pool: visitor.kept.clone(), to: ep.clone() };
        return match crate::proxy_h1::send(stream, &parts, home).await {
            Ok(r) => Ok(r.map(Upstream::Kept)),
            Err(e) => {
                tracing::debug!(url = %ep.url, error = %e, "proxied request failed");
                Err(Unreachable::of_io(&e))
            }
        };
    }
    let req = Request::from_parts(parts, body);
    let (mut sender, token) = take_sender(visitor, ep).await.map_err(|e| {
        tracing::debug!(url = %ep.url, error = %e, "could not open a proxy stream");
        Unreachable::Session
    })?;
    let resp = sender.send_request(req).await;
    {
        let mut pool = visitor.pool.lock().expect("pool poisoned");
        if pool.len() < POOL_PER_CONNECTION && !sender.is_closed() {
            pool.push(Pooled { to: ep.clone(), sender, idle_checks: 0, token });
        }
    }
    resp.map(|r| r.map(Upstream::Hyper)).map_err(|e| {
        tracing::debug!(url = %ep.url, error = %e, "proxied request failed");
        Unreachable::of(&e)
    })
}

/// A response body from the agent: read by this task (`proxy_h1`), or by hyper's client.
enum Upstream {
    Kept(H1Body<Arc<Endpoint>>),
    Hyper(Incoming),
}

impl hyper::body::Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Upstream::Kept(b) => std::pin::Pin::new(b).poll_frame(cx),
            Upstream::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Kept(b) => b.is_end_stream(),
            Upstream::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Upstream::Kept(b) => b.size_hint(),
            Upstream::Hyper(b) => b.size_hint(),
        }
    }
}

/// Sends a request whose body was buffered (for `verify-webhook`) over a proxy stream of its
/// own: webhooks are rare enough not to need the pool.
async fn send_buffered(
    visitor: &Visitor,
    ep: &Arc<Endpoint>,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, Unreachable> {
    if ep.upstream_h2 {
        let mut sender = h2_handshake(visitor, ep).await?;
        return sender.send_request(as_h2(req)).await.map_err(|e| {
            tracing::debug!(url = %ep.url, error = %e, "proxied request failed");
            Unreachable::of(&e)
        });
    }
    let stream = ep.open_proxy_stream(visitor.remote).await.map_err(|e| {
        tracing::debug!(url = %ep.url, error = %e, "could not open a proxy stream");
        Unreachable::Session
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Unreachable::Session)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| {
        tracing::debug!(url = %ep.url, error = %e, "proxied request failed");
        Unreachable::of(&e)
    })
}

/// Sends a request on the visitor connection's HTTP/2 connection to `ep` (made on first
/// use): requests of one visitor connection share it, each an HTTP/2 stream.
async fn send_h2(
    visitor: &Visitor,
    ep: &Arc<Endpoint>,
    req: Request<VisitorBody>,
) -> Result<Response<Incoming>, Unreachable> {
    let pooled = {
        let mut pool = visitor.h2_pool.lock().expect("pool poisoned");
        pool.retain(|(_, s)| !s.is_closed());
        pool.iter().find(|(e, _)| Arc::ptr_eq(e, ep)).map(|(_, s)| s.clone())
    };
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let s = h2_handshake(visitor, ep).await?;
            let mut pool = visitor.h2_pool.lock().expect("pool poisoned");
            // Concurrent first requests may each have made one: the first one kept serves
            // the rest of the connection, and the pool stays bounded.
            match pool.iter().find(|(e, p)| Arc::ptr_eq(e, ep) && !p.is_closed()) {
                Some((_, kept)) => kept.clone(),
                None => {
                    if pool.len() < POOL_PER_CONNECTION {
                        pool.push((ep.clone(), s.clone()));
                    }
                    s
                }
            }
        }
    };
    sender.send_request(as_h2(req)).await.map_err(|e| {
        tracing::debug!(url = %ep.url, error = %e, "proxied request failed");
        Unreachable::of(&e)
    })
}

/// An HTTP/2 connection (prior knowledge) over a new proxy stream to `ep`.
async fn h2_handshake<B>(visitor: &Visitor, ep: &Arc<Endpoint>) -> Result<H2Sender<B>, Unreachable>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = ep.open_proxy_stream(visitor.remote).await.map_err(|e| {
        tracing::debug!(url = %ep.url, error = %e, "could not open a proxy stream");
        Unreachable::Session
    })?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            tracing::debug!(url = %ep.url, error = %e, "HTTP/2 handshake on a proxy stream failed");
            Unreachable::Session
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP/2 proxy stream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A request as HTTP/2 carries it: the Host as `:authority` (with `:scheme` http, as for
/// cleartext HTTP/2 with prior knowledge), the version 2.
fn as_h2<B>(mut req: Request<B>) -> Request<B> {
    let host = req.headers_mut().remove(header::HOST);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut uri = Uri::builder().scheme("http");
    if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
        uri = uri.authority(h);
    }
    if let Ok(u) = uri.path_and_query(pq).build() {
        *req.uri_mut() = u;
    }
    *req.version_mut() = Version::HTTP_2;
    req
}

/// Reads a body of at most `limit` bytes within the header timeout.
async fn read_limited(body: VisitorBody, limit: usize) -> Result<Bytes, StatusCode> {
    let collect = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(std::time::Duration::from_secs(30), collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// A ready proxy stream from the visitor's pool, or a new one, with the token that names it
/// to its connection's task.
async fn take_sender(
    visitor: &Visitor,
    ep: &Arc<Endpoint>,
) -> Result<(SendRequest<VisitorBody>, Arc<()>), Box<dyn std::error::Error + Send + Sync>> {
    {
        let mut pool = visitor.pool.lock().expect("pool poisoned");
        pool.retain(|p| !p.sender.is_closed());
        if let Some(i) = pool.iter().position(|p| Arc::ptr_eq(&p.to, ep) && p.sender.is_ready()) {
            let p = pool.swap_remove(i);
            return Ok((p.sender, p.token));
        }
    }
    let stream = ep.open_proxy_stream(visitor.remote).await?;
    Ok(pooled_client(stream, &visitor.pool, visitor.proxy_idle).await?)
}

/// Drives the HTTP/1 client connection of a pooled stream until it ends, or until its idle
/// checks (every half `idle`) let it go (see [`idle_release`]): dropping the connection closes
/// the stream, and with it what it held at the other end (the agent's upstream connection, or
/// the other node's relayed visitor connection).
async fn drive_pooled<T, C>(
    conn: C,
    pool: std::sync::Weak<Mutex<Vec<Pooled<T>>>>,
    mine: Arc<()>,
    idle: std::time::Duration,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut check = std::pin::pin!(tokio::time::sleep(idle / 2));
    loop {
        // The connection is polled on every wake-up (several per request); the idle check's
        // timer only registers this task once per period and is otherwise just read:
        // polling it with the connection each time (`select!`) cost a few hundred
        // instructions per proxied request. A spawned task's waker stays the same, so the
        // one registration wakes it.
        let mut registered = false;
        let ended = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(r) = conn.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(r));
            }
            if check.is_elapsed() {
                return std::task::Poll::Ready(None);
            }
            if !registered {
                registered = true;
                // Outside tokio's budget: a spent budget (a large response just streamed
                // through `conn`) would return Pending without arming the timer or keeping
                // the waker, and an idle stream would never be checked again.
                let mut arm = tokio::task::unconstrained(check.as_mut());
                if std::pin::Pin::new(&mut arm).poll(cx).is_ready() {
                    return std::task::Poll::Ready(None);
                }
            }
            std::task::Poll::Pending
        })
        .await;
        match ended {
            Some(ended) => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "pooled stream connection ended with an error");
                }
                return;
            }
            None => {
                if idle_release(&pool, &mine) {
                    // Dropping the connection closes the stream.
                    return;
                }
                check.as_mut().reset(tokio::time::Instant::now() + idle / 2);
            }
        }
    }
}

/// One idle check of the pooled stream `mine` (every half `proxy_stream_idle`): true when it
/// has been found idle in its pool three times running (idle for at least the limit), and
/// is now out of the pool; also true when its visitor connection is gone.
fn idle_release<T>(pool: &std::sync::Weak<Mutex<Vec<Pooled<T>>>>, mine: &Arc<()>) -> bool {
    let Some(pool) = pool.upgrade() else { return true };
    let mut pool = pool.lock().expect("pool poisoned");
    let Some(i) = pool.iter().position(|p| Arc::ptr_eq(&p.token, mine)) else {
        // In use by a request (or dropped, and then its connection ends by itself).
        return false;
    };
    let p = &mut pool[i];
    // Ready: the last response has been read to its end and nothing is in flight.
    p.idle_checks = if p.sender.is_ready() { p.idle_checks + 1 } else { 0 };
    if p.idle_checks < 3 {
        return false;
    }
    pool.swap_remove(i);
    true
}

/// The host a request is for, lower-cased and without port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let parsed;
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            parsed = h.parse::<http::uri::Authority>().ok()?;
            parsed.host()
        }
    };
    let h = raw.trim_end_matches('.').to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}

/// Whether a connection accepted with TLS config `conn` may carry requests for an endpoint
/// whose config is `endpoint` (`None`: the edge's default). The same config, not an equal
/// one: a rebind makes a new one, and older connections then get 421 and reconnect.
fn same_tls(conn: Option<&Arc<rustls::ServerConfig>>, endpoint: Option<&Arc<rustls::ServerConfig>>) -> bool {
    match (conn, endpoint) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Removes connection-specific headers (RFC 9110 §7.6.1), keeping `Upgrade` and
/// `Connection: upgrade` when an upgrade is being negotiated.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the few names present finds what to remove. Removing every candidate by
    // name hashed each of them, twice per request: ~4k instructions of the edge's ~47k per
    // proxied request under callgrind.
    let mut remove: Vec<HeaderName> = Vec::new();
    for (name, value) in h.iter() {
        if *name == header::CONNECTION {
            let listed = value
                .to_str()
                .ok()
                .into_iter()
                .flat_map(|s| s.split(','))
                .map(str::trim)
                // `close` names no header, and the hop-by-hop names (`keep-alive`, `upgrade`)
                // are found by the scan itself: only other names need parsing (which copies).
                .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok());
            remove.extend(listed.filter(|n| !(keep_upgrade && n == header::UPGRADE)));
        }
        if is_hop_by_hop(name) && !(keep_upgrade && name == header::UPGRADE) {
            remove.push(name.clone());
        }
    }
    for n in remove {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ]
    .contains(n)
}

fn add_forwarded(h: &mut HeaderMap, visitor: &Visitor, host: Option<&HeaderValue>) {
    // Only the edge may describe a client certificate: visitors' copies never pass.
    let spoofed: Vec<HeaderName> =
        h.keys().filter(|k| k.as_str().starts_with(CERT_HEADER_PREFIX)).cloned().collect();
    for k in spoofed {
        h.remove(k);
    }
    // `handle` has checked that the handshake used this endpoint's own TLS config, so the
    // certificate was checked the way this endpoint asked.
    if let Some(cert) = visitor.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
        for (name, value) in cert.headers() {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
    }
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", visitor.remote.ip())).ok()
        }
        _ => Some(visitor.remote_ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(match visitor.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }),
    );
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
}

/// `Strict-Transport-Security` on an https response, as the edge's `hsts` setting says,
/// unless the upstream sent its own.
fn add_hsts(shared: &Shared, host: &str, headers: &mut HeaderMap) {
    let max_age = match shared.config.hsts {
        crate::config::Hsts::Off => return,
        crate::config::Hsts::Always { max_age } => max_age,
        crate::config::Hsts::Auto { max_age } if shared.listeners.certs.has_own(host) => max_age,
        crate::config::Hsts::Auto { .. } => return,
    };
    if !headers.contains_key(header::STRICT_TRANSPORT_SECURITY)
        && let Ok(v) = HeaderValue::from_str(&format!("max-age={max_age}"))
    {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

/// A short plain-text error page that says what happened and what to do.
fn page(status: StatusCode, msg: &str, code: &str) -> Response<Body> {
    let body = if code.is_empty() { format!("{msg}\n") } else { format!("{msg}\n\n{code}\n") };
    let mut b = Response::builder().status(status).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if !code.is_empty() {
        b = b.header("warren-error-code", code);
    }
    b.body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed()).expect("valid error page")
}

#[cfg(test)]
mod tests {

    /// hyper keeps a place for the service's future with every connection, idle or not (an
    /// idle https connection's memory is target 4 of issue #22, docs/BENCHMARKS.md): the
    /// futures of rare paths (a webhook body read and sent whole, an OpenID code exchange,
    /// an HTTP/2 upstream) are boxed so that this place stays small. It was 7.9 KiB.
    #[test]
    fn the_request_future_stays_small() {
        fn future_size<'a, A: 'a, B: 'a, C, F, Fut>(_: F) -> usize
        where
            F: FnOnce(&'a A, &'a B, C) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let size = future_size::<Shared, Visitor, Request<VisitorBody>, _, _>(handle);
        assert!(size <= 5 * 1024, "the request's future takes {size} bytes");
    }

    /// An https visitor connection's task is one allocation sized for the largest state of
    /// `front`'s future, and an idle connection holds it whole (issue #22's target 4: 16 KiB
    /// per idle connection). Reading the ClientHello (5.4 KiB), the TLS handshake, hyper's
    /// server, an agent session, a request's future and the rarer paths are boxed where they
    /// are awaited, and the TLS stream is boxed once, so that what is left is the loop of
    /// `serve_h1` (3.2 KiB; it was 16.2 KiB).
    #[test]
    fn the_connection_task_stays_small() {
        fn future_size<A, B, C, D, F: FnOnce(A, B, C, D) -> Fut, Fut>(_: F) -> usize {
            std::mem::size_of::<Fut>()
        }
        let size =
            future_size::<Arc<Shared>, TcpStream, SocketAddr, crate::conn_limit::ConnPermit, _, _>(front);
        assert!(size <= 4 * 1024, "an https connection's task takes {size} bytes");
    }
    use super::*;

    #[test]
    fn wildcards_are_tried_most_specific_first_and_never_under_a_tld() {
        let w: Vec<String> = crate::registry::wildcards_for("x.a.b.example.com").collect();
        assert_eq!(w, ["*.a.b.example.com", "*.b.example.com", "*.example.com"]);
        assert_eq!(crate::registry::wildcards_for("example.com").count(), 0);
        assert_eq!(crate::registry::wildcards_for("localhost").count(), 0);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_hop_by_hop_header_goes_and_upgrade_keeps_only_its_own() {
        let mut h = HeaderMap::new();
        for n in ["te", "trailer", "proxy-authorization", "proxy-authenticate", "proxy-connection", "upgrade"]
        {
            h.insert(n, HeaderValue::from_static("x"));
        }
        h.append(header::CONNECTION, HeaderValue::from_static("x-one"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-two"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade, x-secret"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 2);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn upgrade_headers_survive_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn host_is_taken_from_authority_or_header() {
        let r = Request::builder().uri("https://App.Localhost:8443/x").body(()).unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("app.localhost"));
        let r = Request::builder().uri("/x").header("host", "b.localhost:80").body(()).unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("b.localhost"));
        let r = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(request_host(&r), None);
    }
}
