//! The web console, served on the API listener under `/dashboard/`: server-rendered pages
//! with no script, signed in with a password (argon2id, throttled per address, locked out per
//! user) or a one-time link, in a cookie session with a CSRF token on every form.
//!
//! Every page and action is a call into the REST API's router in-process, as the signed-in
//! user ([`crate::api::DashboardCaller`]): the role rules, validation and audit records are
//! the API's, so the two cannot drift apart. `dashboard` IP restrictions are checked on every
//! request that has a session, and at sign-in.
//!
//! - `html.rs`: escaping, the frame, forms.
//! - `sign_in.rs`: sign-in, sign-out, one-time links, the user's own password.
//! - `pages.rs`: the overview, one page per API resource, the traffic policy editor.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use subtle::ConstantTimeEq;
use tower::ServiceExt;
use warren_store::{IpDecision, User};

use crate::Shared;

mod html;
mod pages;
mod sign_in;
mod sso;

/// The session cookie's name.
const COOKIE: &str = "warren_session";
/// The sign-in form's CSRF cookie (there is no session yet to hold the token).
const SIGN_IN_COOKIE: &str = "warren_sign_in";
/// The largest API answer the dashboard reads.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// What the dashboard's handlers share.
pub(crate) struct Dash {
    shared: Arc<Shared>,
    /// The REST API's router, called in-process.
    api: Router,
    /// Single sign-on, when the operator set it up.
    sso: Option<sso::Sso>,
    /// Each account's request count at its last overview, for the rate between two.
    rates: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

/// The dashboard's routes, to merge into the API listener's router.
pub(crate) fn app(shared: Arc<Shared>) -> Router {
    let sso = shared.config.dashboard_sso.clone().map(sso::Sso::new);
    let dash =
        Arc::new(Dash { api: crate::api::app(shared.clone()), shared, sso, rates: Default::default() });
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], html::STYLE) }))
        .route("/dashboard/", get(pages::overview))
        .route("/dashboard/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/dashboard/sign-in/link/{token}", get(sign_in::link_form).post(sign_in::link_use))
        .route("/dashboard/sign-out", post(sign_in::sign_out))
        .route("/dashboard/sso", get(sso::sso))
        // The path the `openid-connect` flow names as its redirect URI.
        .route(warren_policy::oidc::CALLBACK_PATH, get(sso::sso))
        .route("/dashboard/account", get(sign_in::account).post(sign_in::set_password))
        .route("/dashboard/traffic-policy", get(pages::policy).post(pages::policy_save))
        .route("/dashboard/traffic", get(pages::traffic))
        .route("/dashboard/{page}", get(pages::list).post(pages::create))
        .route("/dashboard/{page}/{id}/{action}", post(pages::act))
        .layer(axum::middleware::from_fn(headers_and_origin))
        .with_state(dash)
}

/// A signed-in request: who, from where, and their session's CSRF token.
pub(crate) struct Session {
    pub(crate) user: User,
    pub(crate) csrf: String,
    pub(crate) ip: IpAddr,
}

impl Session {
    fn viewer(&self) -> html::Viewer<'_> {
        html::Viewer { user: &self.user, csrf: &self.csrf }
    }
}

impl Dash {
    /// The browser's address: the socket's, or a trusted proxy's `X-Forwarded-For`.
    fn client_ip(&self, req_headers: &HeaderMap, connect: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
        let ip = connect.map_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), |c| c.0.ip());
        crate::client_addr::forwarded_ip(&self.shared, ip, req_headers)
    }

    /// The session of a request from `peer`, or the answer to send instead (see
    /// [`Dash::session`]).
    async fn signed_in(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<Session, Response> {
        let ip = self.client_ip(headers, Some(&ConnectInfo(peer)));
        self.session(headers, ip, path).await
    }

    /// The session the request's cookie names, after the account's `dashboard` IP
    /// restrictions; otherwise the response to send (the sign-in page, or a refusal).
    async fn session(&self, headers: &HeaderMap, ip: IpAddr, path: &str) -> Result<Session, Response> {
        let to_sign_in = || {
            let next = if path.starts_with("/dashboard/") { path } else { "/dashboard/" };
            Redirect::to(&format!("/dashboard/sign-in?next={}", sign_in::encode_next(next))).into_response()
        };
        let Some(token) = cookie(headers, COOKIE) else { return Err(to_sign_in()) };
        let found = match self.shared.store.dashboard_session(token).await {
            Ok(f) => f,
            Err(e) => return Err(store_failed(&e)),
        };
        let Some(s) = found else { return Err(to_sign_in()) };
        self.check_ip(&s.user.account_id, &s.user.id, ip).await?;
        Ok(Session { user: s.user, csrf: s.csrf, ip })
    }

    /// The account's `dashboard` IP restrictions for `who` (a user id, or what is signing
    /// in) at `ip`.
    async fn check_ip(&self, account_id: &str, who: &str, ip: IpAddr) -> Result<(), Response> {
        match self.shared.accounts.ip_rules.check(&self.shared.store, account_id, "dashboard", ip).await {
            Ok(IpDecision::Allow) => Ok(()),
            Ok(IpDecision::Deny { restriction, enforced: false }) => {
                tracing::warn!(%ip, %restriction, user = %who, "dashboard use from outside an IP restriction (log only; allowed)");
                Ok(())
            }
            Ok(IpDecision::Deny { restriction, .. }) => {
                tracing::info!(%ip, %restriction, user = %who, "dashboard refused by an IP restriction");
                Err(html::page(
                    StatusCode::FORBIDDEN,
                    "Not from this address",
                    None,
                    &html::notice(
                        "error",
                        &format!(
                            "The dashboard is not available from {} (IP restriction {}). Ask an administrator.",
                            html::esc(&ip.to_string()),
                            html::esc(&restriction)
                        ),
                    ),
                ))
            }
            Err(e) => Err(store_failed(&e)),
        }
    }

    /// Calls the REST API as the session's user; the status and the JSON answer (`null`
    /// when there is none).
    async fn call(
        &self,
        s: &Session,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let bytes = body.map(|b| serde_json::to_vec(&b).expect("JSON encodes")).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("ngrok-version", "2")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .expect("a valid request");
        req.extensions_mut().insert(crate::api::DashboardCaller { user: s.user.clone(), ip: s.ip });
        req.extensions_mut().insert(ConnectInfo(SocketAddr::new(s.ip, 0)));
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER);
        let value = match body.collect().await {
            Ok(c) => serde_json::from_slice(&c.to_bytes()).unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        };
        (status, value)
    }

    /// Whether a form's `csrf` field is the session's token.
    fn csrf_ok(s: &Session, form: &[(String, String)]) -> bool {
        form.iter().filter(|(k, _)| k == "csrf").count() == 1
            && form.iter().any(|(k, v)| k == "csrf" && bool::from(v.as_bytes().ct_eq(s.csrf.as_bytes())))
    }
}

/// A cookie's value from the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for the dashboard: HttpOnly, SameSite=Strict, only under /dashboard, Secure
/// when the browser reached the edge over https.
fn set_cookie(
    shared: &Shared,
    headers: &HeaderMap,
    peer: IpAddr,
    name: &str,
    value: &str,
    max_age: i64,
) -> HeaderValue {
    let secure = shared.config.api_public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
        || (shared.config.is_trusted_proxy(peer)
            && headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
    let v = format!(
        "{name}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&v).expect("cookie text is ASCII")
}

/// Whether the browser reached the dashboard over https: `--api-public-url https://…`, or a
/// trusted proxy's `X-Forwarded-Proto: https`.
fn is_https(shared: &Shared, headers: &HeaderMap, peer: IpAddr) -> bool {
    shared.config.api_public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
        || (shared.config.is_trusted_proxy(peer)
            && headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")))
}

fn not_found() -> Response {
    html::page(
        StatusCode::NOT_FOUND,
        "Not found",
        None,
        "<p><a href=\"/dashboard/\">To the dashboard</a></p>",
    )
}

fn store_failed(e: &warren_store::StoreError) -> Response {
    tracing::warn!(error = %e, "store failed while serving the dashboard");
    html::page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        None,
        &html::notice("error", "The edge could not reach its store; try again in a moment."),
    )
}

/// Headers on every dashboard answer (no script, no framing, no caching, no referrer to other sites: `same-origin`, because with `no-referrer` browsers send `Origin: null` on the dashboard's own forms), and
/// a refusal of state-changing requests whose `Origin` is another site.
async fn headers_and_origin(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            let same = host.is_some_and(|h| {
                origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(h)
            });
            if !same {
                return html::page(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    None,
                    &html::notice("error", "This form was sent from another site."),
                );
            }
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A form without the session's CSRF token.
fn forged(s: &Session) -> Response {
    tracing::warn!(user = %s.user.id, ip = %s.ip, "dashboard form without its CSRF token refused");
    html::page(
        StatusCode::FORBIDDEN,
        "Refused",
        Some(&s.viewer()),
        &html::notice(
            "error",
            "This form is not from your session (its CSRF token is missing or wrong). Reload the page and try again.",
        ),
    )
}
