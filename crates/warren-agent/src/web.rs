//! The inspector page and the local API (`web_addr`, 127.0.0.1:4040 by default), in ngrok's
//! shapes: `/api/status`, `/api/tunnels`, `/api/endpoints`, `/api/requests/http`.
//!
//! It has no authentication, as ngrok's, so it guards what a web page in the user's browser
//! could otherwise do to it: a `Host` that is not loopback, the listen address or in
//! `web_allow_hosts` is refused (DNS rebinding), and a request that changes something must be
//! JSON and, when it carries an `Origin`, come from this page (cross-site requests).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::inspect::{CapturedBody, Exchange};
use crate::metrics::{Histogram, Meter, Metrics};
use crate::state::{Control, LiveEndpoint, Shared};
use crate::{Status, config_file};

/// The inspector page: one file, no external resources.
const PAGE: &str = include_str!("inspect.html");

/// The most of a body the API returns as text for display (the page notes the rest).
const BODY_PREVIEW: usize = 256 * 1024;

/// The router, separate from serving so tests call it directly.
pub fn app(shared: Arc<Shared>, local: SocketAddr) -> Router {
    let guard = Arc::new(Guard { local, allow: shared.config.web_allow_hosts.clone() });
    Router::new()
        .route("/", get(page))
        .route("/inspect/http", get(page))
        .route("/api", get(index))
        .route("/api/status", get(status))
        .route("/api/tunnels", get(tunnels).post(create_tunnel))
        .route("/api/tunnels/{name}", get(tunnel).delete(delete_endpoint))
        .route("/api/endpoints", get(endpoints).post(create_endpoint))
        .route("/api/endpoints/{name}", get(endpoint).delete(delete_endpoint))
        .route("/api/requests/http", get(requests).delete(clear_requests).post(replay))
        .route("/api/requests/http/{id}", get(request))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page or API path") })
        .layer(middleware::from_fn_with_state(guard, check_request))
        .with_state(shared)
}

/// Binds `addr` (or, when allowed, one of the nine ports after it) and serves until the
/// task is aborted. Binding is synchronous so the agent knows the address when it starts.
pub(crate) fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    fallback: bool,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tries = if fallback { 10 } else { 1 };
    let mut last = None;
    for i in 0..tries {
        let a = SocketAddr::new(addr.ip(), addr.port().saturating_add(i));
        match std::net::TcpListener::bind(a) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(l)?;
                let local = l.local_addr()?;
                let app = app(shared, local);
                let task = tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::warn!(error = %e, "the inspector stopped");
                    }
                });
                return Ok((local, task));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to listen on")))
}

struct Guard {
    local: SocketAddr,
    allow: Vec<String>,
}

impl Guard {
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>()
            && (ip.is_loopback() || ip == self.local.ip())
        {
            return true;
        }
        self.allow.iter().any(|rule| allow_rule_matches(rule, &name))
    }
}

/// The host without a port (and without IPv6 brackets).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(h, p)| if p.parse::<u16>().is_ok() { h } else { host })
}

/// One `web_allow_hosts` entry: a name, `.suffix`, an IP, or a CIDR.
fn allow_rule_matches(rule: &str, name: &str) -> bool {
    let rule = rule.trim().to_ascii_lowercase();
    if let Some(suffix) = rule.strip_prefix('.') {
        return name == suffix || name.ends_with(&format!(".{suffix}"));
    }
    if let Some((net, bits)) = rule.split_once('/') {
        let (Ok(net), Ok(bits), Ok(ip)) =
            (net.parse::<IpAddr>(), bits.parse::<u32>(), name.parse::<IpAddr>())
        else {
            return false;
        };
        return match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) if bits <= 32 => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) if bits <= 128 => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        };
    }
    rule == name
}

async fn check_request(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !guard.host_allowed(host) {
        tracing::info!(host, "inspector request refused: Host not allowed");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not allowed. The inspector answers localhost and its own address; add trusted names to agent.web_allow_hosts."
            ),
        )
        .into_response();
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
            if !same {
                return ApiError::new(StatusCode::FORBIDDEN, "cross-site requests are refused")
                    .into_response();
            }
        }
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if *req.method() == Method::POST && !json {
            return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
                .into_response();
        }
    }
    let mut resp = next.run(req).await;
    // The page may not be framed by another site (clickjacking the replay button).
    resp.headers_mut().insert("x-frame-options", HeaderValue::from_static("DENY"));
    resp.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

/// The API's one error shape, ngrok's: `{error_code, status_code, msg}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError { status, msg: msg.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error_code": format!("ERR_WARREN_AGENT_{}", self.status.as_u16()),
            "status_code": self.status.as_u16(),
            "msg": self.msg,
            "details": {},
        });
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

async fn page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(PAGE),
    )
}

async fn index() -> ApiResult {
    ok(json!({
        "status": "/api/status",
        "endpoints": "/api/endpoints",
        "tunnels": "/api/tunnels",
        "requests": "/api/requests/http",
    }))
}

async fn status(State(shared): State<Arc<Shared>>) -> ApiResult {
    let (state, session_id, error) = match shared.status() {
        Status::Connecting => ("connecting", None, None),
        Status::Online { session_id, .. } => ("online", Some(session_id), None),
        Status::Reconnecting { error, .. } => ("reconnecting", None, Some(error)),
        Status::Stopped(e) => ("stopped", None, e.map(|e| e.to_string())),
    };
    let session = shared.session();
    let inspect = shared.inspector.as_ref().map(
        |i| json!({ "db_size": i.limit(), "bytes": i.bytes(), "requests": i.list(None, usize::MAX).len() }),
    );
    ok(json!({
        "status": state,
        "error": error,
        "session": {
            "id": session_id,
            "account": session.account,
            "region": session.region,
            "latency_ns": session.latency.map(|d| d.as_nanos() as u64),
        },
        "connect_url": shared.config.connect_url,
        "version": env!("CARGO_PKG_VERSION"),
        "inspect": inspect,
        "endpoints": shared.endpoints().iter().map(|e| endpoint_json(e, &shared)).collect::<Vec<_>>(),
    }))
}

fn meter_json(m: &Meter, h: &Histogram, gauge: Option<u64>) -> Value {
    let (r1, r5, r15) = m.rates();
    let ns = |q: f64| h.quantile(q).map_or(0, |d| d.as_nanos() as u64);
    let mut v = json!({
        "count": m.count(),
        "rate1": r1, "rate5": r5, "rate15": r15,
        "p50": ns(0.5), "p90": ns(0.9), "p95": ns(0.95), "p99": ns(0.99),
    });
    if let Some(g) = gauge {
        v["gauge"] = json!(g);
    }
    v
}

fn metrics_json(m: &Metrics) -> Value {
    json!({
        "conns": meter_json(&m.conns, &m.conn_durations, Some(m.open.load(std::sync::atomic::Ordering::Relaxed))),
        "http": meter_json(&m.http, &m.http_durations, None),
    })
}

fn endpoint_json(e: &LiveEndpoint, shared: &Shared) -> Value {
    json!({
        "name": e.name,
        "uri": format!("/api/endpoints/{}", e.name),
        "id": e.id,
        "url": e.url(),
        "proto": e.config.proto.as_str(),
        "upstream": { "url": e.config.upstream.to_string(), "protocol": "http1" },
        "inspect": e.inspected(shared),
        "metrics": metrics_json(&e.metrics),
    })
}

fn tunnel_json(e: &LiveEndpoint, shared: &Shared) -> Value {
    json!({
        "name": e.name,
        "ID": e.id,
        "uri": format!("/api/tunnels/{}", e.name),
        "public_url": e.url(),
        "proto": e.config.proto.as_str(),
        "config": { "addr": e.config.upstream.to_string(), "inspect": e.inspected(shared) },
        "metrics": metrics_json(&e.metrics),
    })
}

async fn tunnels(State(shared): State<Arc<Shared>>) -> ApiResult {
    let list: Vec<Value> = shared.endpoints().iter().map(|e| tunnel_json(e, &shared)).collect();
    ok(json!({ "tunnels": list, "uri": "/api/tunnels" }))
}

async fn tunnel(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> ApiResult {
    let e = find(&shared, &name)?;
    ok(tunnel_json(&e, &shared))
}

async fn endpoints(State(shared): State<Arc<Shared>>) -> ApiResult {
    let list: Vec<Value> = shared.endpoints().iter().map(|e| endpoint_json(e, &shared)).collect();
    ok(json!({ "endpoints": list, "uri": "/api/endpoints" }))
}

async fn endpoint(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> ApiResult {
    let e = find(&shared, &name)?;
    ok(endpoint_json(&e, &shared))
}

fn find(shared: &Shared, name: &str) -> Result<Arc<LiveEndpoint>, ApiError> {
    shared
        .endpoint(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no endpoint named {name:?}")))
}

/// How long the API waits for the session to bind or release an endpoint.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

async fn create_endpoint(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let live = start(&shared, &body, config_file::endpoint_from_json).await?;
    Ok((StatusCode::CREATED, axum::Json(endpoint_json(&live, &shared))).into_response())
}

/// `POST /api/tunnels` as ngrok's agent takes it (`{"name", "proto", "addr", ...}`); the
/// answer is the tunnel, with its public URL.
async fn create_tunnel(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let live = start(&shared, &body, config_file::tunnel_from_json).await?;
    Ok((StatusCode::CREATED, axum::Json(tunnel_json(&live, &shared))).into_response())
}

/// Parses a body into an endpoint and binds it in the running session.
async fn start(
    shared: &Shared,
    body: &[u8],
    parse: fn(Value) -> Result<crate::config::EndpointConfig, String>,
) -> Result<Arc<LiveEndpoint>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))?;
    let config = parse(value).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    if shared.endpoint(&config.name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("an endpoint named {:?} is running", config.name),
        ));
    }
    let live = shared.new_endpoint(config);
    control(shared, |tx| Control::Add(live.clone(), tx)).await?;
    Ok(live)
}

async fn delete_endpoint(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> ApiResult {
    let e = find(&shared, &name)?;
    control(&shared, |tx| Control::Remove(e, tx)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn control(
    shared: &Shared,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Control,
) -> Result<(), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not connected to the edge; try again when it is online",
        )
    };
    // The session loop takes one change at a time, and only while it is online.
    match tokio::time::timeout(CONTROL_TIMEOUT, shared.control.send(make(tx))).await {
        Ok(Ok(())) => {}
        _ => return Err(unavailable()),
    }
    match tokio::time::timeout(CONTROL_TIMEOUT, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(ApiError::new(StatusCode::BAD_GATEWAY, format!("the edge refused: {e}"))),
        _ => Err(unavailable()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    tunnel_name: Option<String>,
    endpoint_name: Option<String>,
}

async fn requests(State(shared): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> ApiResult {
    let name = q.endpoint_name.or(q.tunnel_name);
    let list = match &shared.inspector {
        Some(i) => i.list(name.as_deref(), q.limit.unwrap_or(50).min(1000)),
        None => Vec::new(),
    };
    let items: Vec<Value> = list.iter().map(|e| exchange_json(e, false)).collect();
    ok(json!({ "uri": "/api/requests/http", "requests": items }))
}

async fn request(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let e = shared
        .inspector
        .as_ref()
        .and_then(|i| i.get(&id))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no captured request {id:?}")))?;
    ok(exchange_json(&e, true))
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> ApiResult {
    if let Some(i) = &shared.inspector {
        i.clear();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/requests/http`: ngrok's `{id, tunnel_name}`, plus optional changes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    id: String,
    tunnel_name: Option<String>,
    method: Option<String>,
    path: Option<String>,
    /// Replaces every header when given: name → value or list of values.
    headers: Option<serde_json::Map<String, Value>>,
    /// Replaces the body (UTF-8 text).
    body: Option<String>,
}

async fn replay(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let r: ReplayBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid replay request: {e}")))?;
    let inspector =
        shared.inspector.as_ref().ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "inspection is off"))?;
    let original = inspector
        .get(&r.id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no captured request {:?}", r.id)))?;
    let name = r.tunnel_name.clone().unwrap_or_else(|| original.endpoint.clone());
    let live = find(&shared, &name)?;
    let d = original.data();
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let method = match &r.method {
        Some(m) => m.parse::<Method>().map_err(|_| bad(format!("invalid method {m:?}")))?,
        None => d.method.clone(),
    };
    let path = r.path.clone().unwrap_or_else(|| d.uri.clone());
    if !path.starts_with('/') {
        return Err(bad(format!("the path {path:?} must start with /")));
    }
    let body = match r.body {
        Some(b) => Bytes::from(b),
        None if d.req_body.truncated || !d.req_body.complete => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the request body was not captured in full, so it cannot be replayed as it was; send a body to replace it",
            ));
        }
        None => Bytes::from(d.req_body.bytes.clone()),
    };
    let mut headers = match &r.headers {
        None => d.req_headers.clone(),
        Some(map) => {
            let mut h = HeaderMap::new();
            for (k, v) in map {
                let name = header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| bad(format!("invalid header name {k:?}")))?;
                let values: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for v in values {
                    let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
                    let value = HeaderValue::from_str(&text)
                        .map_err(|_| bad(format!("invalid value for header {k}")))?;
                    h.append(name.clone(), value);
                }
            }
            h
        }
    };
    // The length follows the body actually sent.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().map_err(|_| bad(format!("invalid path {path:?}")))?;
    *req.headers_mut() = headers;
    let ex = crate::forward::replay(&shared, &live, req, &original.id)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e))?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&ex.id) {
        resp.headers_mut().insert("warren-replay-id", v);
    }
    Ok(resp)
}

fn exchange_json(e: &Exchange, full: bool) -> Value {
    let d = e.data();
    let started = e.started.duration_since(UNIX_EPOCH).unwrap_or_default();
    let start = format!(
        "{}.{:03}Z",
        warren_proto::rfc3339(started.as_secs()).trim_end_matches('Z'),
        started.subsec_millis()
    );
    let mut req = json!({
        "method": d.method.as_str(),
        "proto": format!("{:?}", d.version),
        "headers": headers_json(&d.req_headers),
        "uri": d.uri,
        "body": body_json(&d.req_body, &d.req_headers, full),
    });
    let res = d.response.as_ref().map(|(status, version, headers)| {
        let mut v = json!({
            "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")).trim_end().to_owned(),
            "status_code": status.as_u16(),
            "proto": format!("{version:?}"),
            "headers": headers_json(headers),
            "body": body_json(&d.res_body, headers, full),
        });
        if full {
            v["raw"] = json!(raw_response(*status, headers, &d.res_body));
        }
        v
    });
    if full {
        req["raw"] = json!(raw_request(&d));
    }
    json!({
        "uri": format!("/api/requests/http/{}", e.id),
        "id": e.id,
        "tunnel_name": e.endpoint,
        "endpoint_url": e.endpoint_url,
        "remote_addr": e.client_addr,
        "start": start,
        "duration": d.duration.map_or(0, |x| x.as_nanos() as u64),
        "replay_of": e.replay_of,
        "error": d.error,
        "request": req,
        "response": res,
    })
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in h {
        let entry = map.entry(k.as_str().to_owned()).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = entry {
            a.push(Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()));
        }
    }
    Value::Object(map)
}

fn body_json(b: &CapturedBody, headers: &HeaderMap, full: bool) -> Value {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut v = json!({
        "size": b.size,
        "captured": b.bytes.len(),
        "truncated": b.truncated,
        "complete": b.complete,
        "content_type": content_type,
    });
    if full {
        let shown = &b.bytes[..b.bytes.len().min(BODY_PREVIEW)];
        match std::str::from_utf8(shown) {
            Ok(text) => {
                v["encoding"] = json!("utf8");
                v["data"] = json!(text);
            }
            // A cut in the middle of a UTF-8 sequence is still text.
            Err(e) if e.error_len().is_none() && e.valid_up_to() + 4 > shown.len() => {
                v["encoding"] = json!("utf8");
                v["data"] = json!(String::from_utf8_lossy(&shown[..e.valid_up_to()]));
            }
            Err(_) => {
                v["encoding"] = json!("base64");
                v["data"] = json!(base64::engine::general_purpose::STANDARD.encode(shown));
            }
        }
        v["shown"] = json!(shown.len());
    }
    v
}

fn raw_head(first: String, headers: &HeaderMap, body: &CapturedBody) -> String {
    let mut raw = first.into_bytes();
    raw.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        raw.extend_from_slice(k.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(v.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&body.bytes);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn raw_request(d: &crate::inspect::ExchangeData) -> String {
    raw_head(format!("{} {} {:?}", d.method, d.uri, d.version), &d.req_headers, &d.req_body)
}

fn raw_response(status: StatusCode, headers: &HeaderMap, body: &CapturedBody) -> String {
    raw_head(format!("HTTP/1.1 {status}"), headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str]) -> Guard {
        Guard {
            local: "127.0.0.1:4040".parse().unwrap(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn only_local_and_allowed_hosts_pass_the_rebinding_guard() {
        let g = guard(&[]);
        for ok in ["localhost:4040", "127.0.0.1:4040", "[::1]:4040", "LOCALHOST", "app.localhost:4040"] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:4040", "", "127.0.0.1.evil.example", "10.0.0.1:4040"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let g = guard(&["inspect.corp.example", ".dev.example", "10.0.0.0/8", "fd00::/8", "192.0.2.7"]);
        for ok in [
            "inspect.corp.example",
            "a.dev.example:4040",
            "dev.example",
            "10.1.2.3:4040",
            "[fd00::1]:4040",
            "192.0.2.7",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["corp.example", "xdev.example", "11.0.0.1", "192.0.2.8", "[fe80::1]:4040"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
    }
}
