//! Single sign-on with OpenID Connect: the same authorization-code flow (PKCE, state, nonce,
//! ID token checked against the provider's keys) that the `openid-connect` policy action runs
//! for endpoints, compiled once for the dashboard from the operator's settings. A verified
//! e-mail in an allowed domain signs in its user of the configured account, made on the spot
//! with the default role if new; then the flow's own cookie is dropped and a dashboard session
//! begins, exactly as after a password.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use warren_policy::{Chain, CompileEnv, Policy};

use super::Dash;
use super::html::{self, esc};
use super::sign_in::start_session;
use crate::config::DashboardSso;

/// The compiled flow, made at the first sign-in (the provider is discovered then).
pub(super) struct Sso {
    pub(super) config: DashboardSso,
    chain: tokio::sync::OnceCell<Chain>,
}

impl Sso {
    pub(super) fn new(config: DashboardSso) -> Sso {
        Sso { config, chain: tokio::sync::OnceCell::new() }
    }

    /// Whether `email` may still sign in with a password while SSO is required.
    pub(super) fn password_allowed(&self, email: &str) -> bool {
        !self.config.required || self.config.break_glass.iter().any(|b| b.eq_ignore_ascii_case(email.trim()))
    }

    async fn chain(&self, dash: &Dash) -> Result<&Chain, String> {
        self.chain
            .get_or_try_init(|| async {
                let c = &self.config;
                let shared = &dash.shared;
                shared.listeners.idp.check(&c.issuer_url)?;
                let provider = shared.listeners.idp.provider(&c.issuer_url).await.map_err(|e| {
                    tracing::warn!(issuer = %c.issuer_url, error = %e, "dashboard SSO: the provider could not be discovered");
                    format!("the identity provider {} could not be reached", c.issuer_url)
                })?;
                let mut env = CompileEnv {
                    cookie_secret: Some(shared.master_key.cookie_secret()),
                    ..CompileEnv::default()
                };
                env.oidc.insert(c.issuer_url.clone(), provider);
                let doc = serde_json::json!({ "on_http_request": [{ "actions": [{
                    "type": "openid-connect",
                    "config": {
                        "issuer_url": c.issuer_url,
                        "client_id": c.client_id,
                        "client_secret": c.client_secret.0,
                        "scopes": ["openid", "email", "profile"],
                        "auth_id": "dashboard",
                        "max_session_duration": "10m",
                    },
                }]}]});
                let policy = Policy::from_text(&doc.to_string(), "https", &env).map_err(|e| e.to_string())?;
                Ok(Chain(vec![Arc::new(policy)]))
            })
            .await
    }
}

/// The flow's cookie, dropped once the dashboard session begins.
const FLOW_COOKIE: &str = "warren_oidc_dashboard";

fn refused(status: StatusCode, why: &str) -> Response {
    html::page(
        status,
        "Single sign-on",
        None,
        &format!(
            "{}<p><a href=\"/dashboard/sign-in\">Back to sign-in</a></p>",
            html::notice("error", &esc(why))
        ),
    )
}

/// `GET /dashboard/sso` (start, and finish once the provider vouched) and the provider's
/// callback, `GET /warren/oidc/callback`.
pub(super) async fn sso(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let Some(sso) = &dash.sso else {
        return refused(StatusCode::NOT_FOUND, "Single sign-on is not set up on this edge.");
    };
    let ip = dash.client_ip(req.headers(), Some(&ConnectInfo(peer)));
    if let Some(wait) = dash.shared.accounts.auth_failures.blocked(ip, std::time::Instant::now()) {
        return refused(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed sign-ins from {ip}; try again in {wait} s."),
        );
    }
    // The account's `dashboard` restrictions hold for the whole flow, callback included.
    match dash.shared.store.list_accounts().await {
        Ok(all) => {
            if let Some(a) = all.iter().find(|a| a.name == sso.config.account)
                && let Err(refused) = dash.check_ip(&a.id, "single sign-on", ip).await
            {
                return refused;
            }
        }
        Err(e) => return super::store_failed(&e),
    }
    let chain = match sso.chain(&dash).await {
        Ok(c) => c,
        Err(e) => return refused(StatusCode::BAD_GATEWAY, &format!("Single sign-on is unavailable: {e}.")),
    };
    let headers = req.headers().clone();
    let secure = super::is_https(&dash.shared, &headers, peer.ip());
    let (mut parts, _) = req.into_parts();
    let host_header = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (host, port) = match dash.shared.config.api_public_url.as_deref().and_then(|u| u.split_once("://")) {
        Some((_, rest)) => split_host_port(rest.split('/').next().unwrap_or(""), secure),
        None => split_host_port(&host_header, secure),
    };
    let scheme = if secure { "https" } else { "http" };
    let ep = warren_policy::EndpointInfo {
        id: "dashboard".into(),
        url: format!("{scheme}://{host}"),
        proto: scheme.into(),
        host: host.clone(),
        port,
    };
    let conn = warren_policy::Conn {
        client_ip: ip,
        client_port: peer.port(),
        server_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        server_port: port,
        tls: None,
    };
    let (now, mono) = crate::policy::now();
    let (verdict, _) = chain.on_http_request(&conn, &ep, scheme, &mut parts, now, mono);
    let respond = |r: axum::http::Response<bytes::Bytes>| r.map(Body::from).into_response();
    match verdict {
        warren_policy::Verdict::Respond(r) => respond(r),
        // The sign-in policy is the openid-connect action alone: it never forwards.
        warren_policy::Verdict::Close | warren_policy::Verdict::ForwardInternal(_) => {
            refused(StatusCode::FORBIDDEN, "The sign-in was refused.")
        }
        warren_policy::Verdict::Exchange(exchange) => {
            let answer = dash.shared.listeners.idp.exchange(&exchange).await;
            if let Err(e) = &answer {
                tracing::warn!(error = %e, "dashboard SSO: the code exchange failed");
            }
            let answer = answer.as_ref().map(|(s, b)| (*s, &b[..])).map_err(Clone::clone);
            respond(exchange.finish(answer, std::time::SystemTime::now()))
        }
        warren_policy::Verdict::Continue => {
            // The provider vouched for this browser: the identity is in the headers the
            // action adds (whatever the browser sent in them was removed first).
            let email =
                parts.headers.get("warren-auth-user-email").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let mut resp = finish(&dash, sso, &headers, peer, ip, email).await;
            let clear = format!(
                "{}{FLOW_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
                if secure { "__Host-" } else { "" },
                if secure { "; Secure" } else { "" }
            );
            if let Ok(v) = HeaderValue::from_str(&clear) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
    }
}

/// A verified e-mail (or none) to a dashboard session, or a refusal.
async fn finish(
    dash: &Dash,
    sso: &Sso,
    headers: &axum::http::HeaderMap,
    peer: SocketAddr,
    ip: std::net::IpAddr,
    email: Option<String>,
) -> Response {
    let c = &sso.config;
    let Some(email) = email else {
        return refused(
            StatusCode::FORBIDDEN,
            "The identity provider did not give a verified e-mail address, which the dashboard signs in by.",
        );
    };
    let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
    if !c.allowed_domains.iter().any(|d| d.eq_ignore_ascii_case(&domain)) {
        dash.shared.accounts.auth_failures.failed(ip, std::time::Instant::now());
        tracing::info!(%ip, %email, "dashboard SSO refused: the e-mail's domain is not allowed");
        return refused(
            StatusCode::FORBIDDEN,
            &format!("{email} may not use this dashboard: its domain is not among those allowed."),
        );
    }
    let store = &dash.shared.store;
    let account = match store.list_accounts().await {
        Ok(all) => all.into_iter().find(|a| a.name == c.account),
        Err(e) => return super::store_failed(&e),
    };
    let Some(account) = account else {
        tracing::error!(account = %c.account, "dashboard SSO: the configured account does not exist");
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Single sign-on is set up for an account this edge does not have.",
        );
    };
    let user = match store.find_user_by_email(&account.id, &email).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            // Just in time: a new user with the default role, recorded as made by SSO.
            let by = store.acting_as(warren_store::Actor {
                id: "sso".into(),
                subject: email.clone(),
                source: "sso".into(),
                role: c.default_role.as_str().into(),
                ip: ip.to_string(),
            });
            match by.create_user(&account.id, &email, c.default_role).await {
                Ok(u) => {
                    dash.shared.accounts.events.wake();
                    tracing::info!(user = %u.id, %email, role = c.default_role.as_str(), "dashboard SSO: user created on first sign-in");
                    u
                }
                Err(e) => return super::store_failed(&e),
            }
        }
        Err(e) => return super::store_failed(&e),
    };
    start_session(dash, headers, peer, &user, "sso", "/dashboard/").await
}

/// `host[:port]` (or `[v6][:port]`) split, with the scheme's port when none is given.
fn split_host_port(authority: &str, secure: bool) -> (String, u16) {
    let default = if secure { 443 } else { 80 };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => (format!("[{h}]"), tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority.to_owned(), None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()),
            None => (authority.to_owned(), None),
        }
    };
    (host.to_ascii_lowercase(), port.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_host_port("127.0.0.1:8088", false), ("127.0.0.1".into(), 8088));
        assert_eq!(split_host_port("Dash.Example.com", true), ("dash.example.com".into(), 443));
        assert_eq!(split_host_port("[::1]:9", false), ("[::1]".into(), 9));
        assert_eq!(split_host_port("[::1]", false), ("[::1]".into(), 80));
    }
}
