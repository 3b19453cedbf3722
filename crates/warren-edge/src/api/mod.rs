//! The REST API, compatible with ngrok's API v2 so existing ngrok API clients work by changing
//! the base URL: `Authorization: Bearer <API key>`, `Ngrok-Version: 2`, JSON, RFC 3339
//! times, newest-first pages with `limit`, `before_id` and `next_page_uri`, and errors as
//! `{error_code, status_code, msg, details}`.
//!
//! [`app`] builds the router without serving it, so tests call it directly; [`serve`] runs
//! it on its own listener.
//!
//! - `error.rs`: [`ApiError`], the one error type, and its status codes.
//! - `auth.rs`: the API key, version header and rate limit checks; [`Principal`] and roles.
//! - `credentials.rs`, `api_keys.rs`, `users.rs`, `ip.rs`, `reserved.rs`, `sessions.rs`: one
//!   resource (or a pair) each.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Shared;

mod api_keys;
mod auth;
pub(crate) mod certificates;
mod credentials;
mod endpoints;
mod error;
mod events;
mod ip;
mod openapi;

/// The API's OpenAPI document (also served at `GET /openapi.json`), for clients such as
/// `warren api`'s help that describe the operations without a running edge.
pub fn openapi_document() -> serde_json::Value {
    openapi::document()
}
mod reserved;
mod sessions;
mod traffic_policy;
mod users;

pub use auth::RateLimit;
pub(crate) use auth::{DashboardCaller, Principal, dashboard_actor};
pub use error::ApiError;
pub(crate) use events::render_object;

/// The API's routes over the edge's shared state.
pub(crate) fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/credentials", get(credentials::list).post(credentials::create))
        .route(
            "/credentials/{id}",
            get(credentials::get).patch(credentials::update).delete(credentials::delete),
        )
        .route("/api_keys", get(api_keys::list).post(api_keys::create))
        .route("/api_keys/{id}", get(api_keys::get).patch(api_keys::update).delete(api_keys::delete))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{id}", get(users::get).patch(users::update).delete(users::delete))
        .route("/ip_policies", get(ip::list_policies).post(ip::create_policy))
        .route("/ip_policies/{id}", get(ip::get_policy).patch(ip::update_policy).delete(ip::delete_policy))
        .route("/ip_policy_rules", get(ip::list_rules).post(ip::create_rule))
        .route("/ip_policy_rules/{id}", get(ip::get_rule).patch(ip::update_rule).delete(ip::delete_rule))
        .route("/ip_restrictions", get(ip::list_restrictions).post(ip::create_restriction))
        .route(
            "/ip_restrictions/{id}",
            get(ip::get_restriction).patch(ip::update_restriction).delete(ip::delete_restriction),
        )
        .route("/reserved_domains", get(reserved::list_domains).post(reserved::create_domain))
        .route(
            "/reserved_domains/{id}",
            get(reserved::get_domain).patch(reserved::update_domain).delete(reserved::delete_domain),
        )
        .route("/reserved_domains/{id}/certificate", axum::routing::delete(reserved::detach_certificate))
        .route("/reserved_domains/{id}/verify", axum::routing::post(reserved::verify_domain))
        .route("/tls_certificates", get(certificates::list).post(certificates::create))
        .route(
            "/tls_certificates/{id}",
            get(certificates::get).patch(certificates::update).delete(certificates::delete),
        )
        .route("/reserved_addrs", get(reserved::list_addrs).post(reserved::create_addr))
        .route(
            "/reserved_addrs/{id}",
            get(reserved::get_addr).patch(reserved::update_addr).delete(reserved::delete_addr),
        )
        .route("/tunnel_sessions", get(sessions::list))
        .route("/tunnel_sessions/{id}", get(sessions::get))
        .route("/tunnel_sessions/{id}/stop", post(sessions::stop))
        .route("/tunnel_sessions/{id}/restart", post(sessions::restart))
        .route("/endpoints", get(endpoints::list).post(endpoints::create))
        .route("/endpoints/{id}", get(endpoints::get).patch(endpoints::update).delete(endpoints::delete))
        .route("/tunnels", get(endpoints::tunnels))
        .route("/event_destinations", get(events::list_destinations).post(events::create_destination))
        .route(
            "/event_destinations/{id}",
            get(events::get_destination).patch(events::update_destination).delete(events::delete_destination),
        )
        .route("/event_subscriptions", get(events::list_subscriptions).post(events::create_subscription))
        .route(
            "/event_subscriptions/{id}",
            get(events::get_subscription)
                .patch(events::update_subscription)
                .delete(events::delete_subscription),
        )
        .route("/event_subscriptions/{id}/sources", get(events::list_sources).post(events::create_source))
        .route(
            "/event_subscriptions/{id}/sources/{type}",
            get(events::get_source).patch(events::update_source).delete(events::delete_source),
        )
        .route(
            "/traffic_policy",
            get(traffic_policy::get).put(traffic_policy::put).delete(traffic_policy::delete),
        )
        .fallback(|| async { ApiError::not_found("no such API resource") })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), auth::check))
        // After the auth layer, so the document needs no key: it holds no account data.
        .route("/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        // The edge's metrics: every account's, so for the operator's scrapers only.
        .route("/metrics", get(metrics))
        // For load balancers: says nothing about any account.
        .route("/healthz", get(healthz))
        .layer(axum::middleware::map_response(error_bodies_as_json))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), absolute_uris))
        .with_state(shared)
}

/// `/metrics` in OpenMetrics text, to the addresses of `--metrics-allow` (the socket's,
/// after a trusted proxy's PROXY header; never a forwarded header).
async fn metrics(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !shared.config.metrics_allow.iter().any(|c| c.contains(peer.ip())) {
        return ApiError::forbidden(format!("metrics are not served to {}; see --metrics-allow", peer.ip()))
            .into_response();
    }
    let body = shared.metrics.render(&shared).await;
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

/// Readiness for a load balancer's health check: 200 while this node holds its lease in the
/// store and is not shutting down, 503 otherwise (a node that lost the store has ended its
/// agent sessions, and new ones would be refused; a draining node takes no new visitors).
async fn healthz(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let unavailable = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    if *shared.shutdown.borrow() || shared.leaving.load(std::sync::atomic::Ordering::Relaxed) {
        return (unavailable, "shutting down\n").into_response();
    }
    if !shared.lease_held.load(std::sync::atomic::Ordering::Relaxed) {
        return (unavailable, "cannot renew this node's lease in the store\n").into_response();
    }
    "ok\n".into_response()
}

/// Every `uri` and `next_page_uri` in an answer is absolute, as ngrok's are: API clients
/// (PyPI `ngrok-api`) follow `next_page_uri` as given. The base is `--api-public-url`, or the
/// scheme and `Host` the request came with.
async fn absolute_uris(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body_util::BodyExt;
    let base = match &shared.config.api_public_url {
        Some(u) => Some(u.trim_end_matches('/').to_owned()),
        None => request_base(&shared, &req),
    };
    let resp = next.run(req).await;
    let Some(base) = base else { return resp };
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    absolutize(&mut value, &base);
    let out = serde_json::to_vec(&value).expect("JSON re-encodes");
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(out))
}

/// `scheme://host` of the request: `https` when a trusted proxy says so, and a `Host` made
/// only of name characters (it is echoed into the answer).
fn request_base(shared: &Shared, req: &axum::extract::Request) -> Option<String> {
    let host = req.headers().get(axum::http::header::HOST)?.to_str().ok()?;
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
        return None;
    }
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let proxied_https = peer.is_some_and(|ip| shared.config.is_trusted_proxy(ip))
        && req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    Some(format!("{}://{host}", if proxied_https { "https" } else { "http" }))
}

pub(crate) fn absolutize(v: &mut serde_json::Value, base: &str) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match v {
                    serde_json::Value::String(s)
                        if (k == "uri" || k == "next_page_uri") && s.starts_with('/') =>
                    {
                        *s = format!("{base}{s}");
                    }
                    other => absolutize(other, base),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| absolutize(x, base)),
        _ => {}
    }
}

/// Refusals made by axum itself (a body over the 2 MiB limit, a method not routed) get
/// ngrok's error body like every other error, so API clients can read them.
async fn error_bodies_as_json(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = resp.status();
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let msg = match status {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than 2 MiB".to_owned(),
        axum::http::StatusCode::METHOD_NOT_ALLOWED => "this resource does not support that method".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_ascii_lowercase(),
    };
    let mut out = ApiError::from_status(status, msg).into_response();
    // Keep what the original said about methods (`Allow`) and retries.
    for h in [axum::http::header::ALLOW, axum::http::header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    out
}

/// Serves the API on `listener` until the edge shuts down. Each connection gets the client
/// address (after any PROXY header from a trusted balancer) as `ConnectInfo`.
pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    // The dashboard's routes beside the API's (outside its layers: it answers in HTML).
    let app = app(shared.clone()).merge(crate::dashboard::app(shared.clone()));
    let limits = &shared.config.limits;
    let limit =
        crate::conn_limit::ConnLimit::new(limits.max_api_connections, limits.max_api_connections_per_ip);
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let (mut tcp, peer, permit) = tokio::select! {
            _ = &mut stop => return,
            c = crate::conn_limit::accept(&listener, &limit, "API listener") => c,
        };
        let (shared, app) = (shared.clone(), app.clone());
        tokio::spawn(async move {
            let Some(remote) = crate::client_addr::resolve(&shared, &mut tcp, peer).await else { return };
            let limits = &shared.config.limits;
            let io = crate::deadline::Deadline::new(tcp, limits.first_byte_timeout, limits.idle_timeout);
            let app = app.layer(axum::Extension(axum::extract::ConnectInfo(remote)));
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.config.limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let stop = crate::shutting_down(shared.shutdown.clone());
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// `{id, uri}` of a referenced resource, as ngrok nests them.
#[derive(serde::Serialize)]
pub(crate) struct Ref {
    id: String,
    uri: String,
}

impl Ref {
    /// A reference to `/{collection}/{id}`.
    pub(crate) fn to(collection: &str, id: impl Into<String>) -> Ref {
        let id = id.into();
        Ref { uri: format!("/{collection}/{id}"), id }
    }
}

/// `?limit=&before_id=` of list calls.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    limit: Option<u32>,
    before_id: Option<String>,
}

/// Extracted straight from the query string; a malformed one is a 400 in ngrok's error body.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PageQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(q) = axum::extract::Query::<PageQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        Ok(q)
    }
}

impl PageQuery {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(100).clamp(1, 100)
    }
}

/// `next_page_uri` for a page whose last id is `last`, or null.
fn next_page_uri(path: &str, q: &PageQuery, more: bool, last: Option<&str>) -> Option<String> {
    match (more, last) {
        (true, Some(last)) => Some(format!("{path}?limit={}&before_id={last}", q.limit())),
        _ => None,
    }
}

/// Parses a JSON body, turning every failure into a 400 that says what is wrong.
fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// ngrok's API clients repeat the id in update bodies; a different one is a mistake.
fn check_body_id(body_id: Option<&str>, path_id: &str) -> Result<(), ApiError> {
    match body_id {
        Some(b) if !b.is_empty() && b != path_id => {
            Err(ApiError::bad_request(format!("the body's id {b:?} differs from the path's {path_id:?}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    /// Handlers change the account only through the admin layer (`shared.admin(&p)`), which
    /// writes as the caller (so every audit event names who acted) and reaches the caches and
    /// sessions the change affects. A handler never calls a store's writing method itself,
    /// neither the caller's (`p.store`) nor the edge's (`shared.store`), and never hands
    /// either store to a helper that could (reads of the edge's IP rules excepted). Every file
    /// of `api/` is checked: a new one fails the test until it is listed here.
    #[test]
    fn handlers_change_the_account_only_through_admin() {
        let files = [
            ("api_keys.rs", include_str!("api_keys.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("certificates.rs", include_str!("certificates.rs")),
            ("credentials.rs", include_str!("credentials.rs")),
            ("endpoints.rs", include_str!("endpoints.rs")),
            ("error.rs", include_str!("error.rs")),
            ("events.rs", include_str!("events.rs")),
            ("ip.rs", include_str!("ip.rs")),
            ("mod.rs", include_str!("mod.rs")),
            ("openapi.rs", include_str!("openapi.rs")),
            ("reserved.rs", include_str!("reserved.rs")),
            ("sessions.rs", include_str!("sessions.rs")),
            ("traffic_policy.rs", include_str!("traffic_policy.rs")),
            ("users.rs", include_str!("users.rs")),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        for entry in std::fs::read_dir(&dir).expect("src/api") {
            let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
            assert!(files.iter().any(|(f, _)| *f == name), "api/{name} is not checked by this test; list it");
        }
        let writes = [
            "create_",
            "update_",
            "delete_",
            "set_",
            "insert_",
            "mark_",
            "revoke",
            "detach",
            "attach",
            "put_",
            "assign_",
            "reserve",
            "record_",
            "use_",
            "end_",
            "acting_as",
        ];
        for (name, text) in files {
            if name == "mod.rs" {
                // This test's own text names the patterns it looks for.
                continue;
            }
            let flat: String = text.split_whitespace().collect();
            for store in ["p.store.", "shared.store."] {
                let mut rest = flat.as_str();
                while let Some(i) = rest.find(store) {
                    let call = &rest[i + store.len()..];
                    let method = &call[..call.find('(').unwrap_or(call.len())];
                    // The edge's certificate cache is not an account change; auth.rs makes
                    // each caller's store (acting as the caller).
                    let cache = store == "shared.store." && method == "put_certificate";
                    let caller = name == "auth.rs" && method == "acting_as";
                    assert!(
                        cache || caller || !writes.iter().any(|w| method.starts_with(w)),
                        "{name}: {store}{method} changes the account outside the admin layer; use shared.admin(&p)"
                    );
                    rest = call;
                }
            }
            for handed in ["&p.store", "&shared.store", "p.store.clone()", "shared.store.clone()"] {
                let mut rest = flat.as_str();
                while let Some(i) = rest.find(handed) {
                    let before = &rest[..i];
                    let read = before.ends_with("ip_rules.check(");
                    assert!(
                        read,
                        "{name}: {handed} handed to a helper, which could write outside the admin layer"
                    );
                    rest = &rest[i + handed.len()..];
                }
            }
        }
    }
}
