//! Signing in and out: the password form, one-time links, the user's own password page.
//!
//! Before there is a session, forms are tied to the browser by a random token in a cookie and
//! the same token in the form (double submit); wrong passwords count against the address
//! (the edge's throttle for wrong secrets) and against the user (the store's lockout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;
use warren_store::{SignIn, User};

use super::html::{self, esc};
use super::{COOKIE, Dash, SIGN_IN_COOKIE, cookie, set_cookie};

type Fields = Form<Vec<(String, String)>>;

/// The return path after sign-in, kept to the dashboard's own pages: anything else (another
/// site, `//host`, a backslash, a query) becomes the overview, so the link cannot redirect
/// elsewhere.
pub(super) fn encode_next(next: &str) -> &str {
    let ok = next.starts_with("/dashboard/")
        && next.len() <= 200
        && !next.contains("//")
        && next.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_".contains(&b));
    if ok { next } else { "/dashboard/" }
}

#[derive(serde::Deserialize)]
pub(super) struct Next {
    next: Option<String>,
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

/// Fields other than `allowed`: the form was not one of ours.
fn unexpected(form: &[(String, String)], allowed: &[&str]) -> Option<String> {
    form.iter().find(|(k, _)| !allowed.contains(&k.as_str())).map(|(k, _)| k.clone())
}

fn pre_session_token() -> String {
    use base64::Engine;
    use rand::Rng;
    let mut raw = [0u8; 24];
    rand::rng().fill(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Whether a pre-session form's `csrf` is the browser's sign-in cookie.
fn pre_session_ok(headers: &HeaderMap, form: &[(String, String)]) -> bool {
    let Some(c) = cookie(headers, SIGN_IN_COOKIE) else { return false };
    let sent = field(form, "csrf");
    !c.is_empty() && bool::from(sent.as_bytes().ct_eq(c.as_bytes()))
}

fn sign_in_page(
    dash: &Dash,
    headers: &HeaderMap,
    peer: SocketAddr,
    status: StatusCode,
    next: &str,
    message: Option<String>,
) -> Response {
    let token = pre_session_token();
    let mut body = message.map(|m| html::notice("error", &m)).unwrap_or_default();
    if let Some(sso) = &dash.sso {
        body.push_str(&format!(
            "<p><a href=\"/dashboard/sso\" id=\"sso\" class=\"button\">Sign in with single sign-on</a></p>{}",
            if sso.config.required {
                "<p class=\"muted\">Password sign-in is turned off, except for break-glass administrators.</p>"
            } else {
                "<p class=\"muted\">Or with a password:</p>"
            }
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/dashboard/sign-in\" class=\"create\" id=\"sign-in\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>E-mail <input type=\"text\" name=\"email\" id=\"email\" autocomplete=\"username\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\" autocomplete=\"current-password\" required></label>\
         <button id=\"submit\">Sign in</button></form>\
         <p class=\"muted\">No password yet? An operator can make a one-time sign-in link with \
         <code>warren admin users sign-in-link --email you@example.com</code>.</p>",
        esc(encode_next(next))
    ));
    let mut resp = html::page(status, "Sign in to warren", None, &body);
    let c = set_cookie(&dash.shared, headers, peer.ip(), SIGN_IN_COOKIE, &token, 1800);
    resp.headers_mut().append(header::SET_COOKIE, c);
    resp
}

/// `GET /dashboard/sign-in`.
pub(super) async fn form(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Next>,
) -> Response {
    let next = q.next.as_deref().unwrap_or("/dashboard/");
    let ip = dash.client_ip(&headers, Some(&ConnectInfo(peer)));
    if dash.session(&headers, ip, next).await.is_ok() {
        return Redirect::to(encode_next(next)).into_response();
    }
    sign_in_page(&dash, &headers, peer, StatusCode::OK, next, None)
}

/// Starts a session for `user` and sends the browser on.
pub(super) async fn start_session(
    dash: &Dash,
    headers: &HeaderMap,
    peer: SocketAddr,
    user: &User,
    via: &str,
    to: &str,
) -> Response {
    let ip = dash.client_ip(headers, Some(&ConnectInfo(peer)));
    if let Err(refused) = dash.check_ip(&user.account_id, &user.id, ip).await {
        return refused;
    }
    let token = match dash.shared.store.create_dashboard_session(user, &ip.to_string(), via).await {
        Ok(t) => t,
        Err(e) => return super::store_failed(&e),
    };
    tracing::info!(user = %user.id, %ip, via, "dashboard sign-in");
    let mut resp = Redirect::to(to).into_response();
    let max_age = warren_store::dashboard::SESSION_SECS;
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&dash.shared, headers, peer.ip(), COOKIE, &token.0, max_age));
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&dash.shared, headers, peer.ip(), SIGN_IN_COOKIE, "", 0));
    resp
}

/// `POST /dashboard/sign-in`.
pub(super) async fn submit(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Fields,
) -> Response {
    let next = encode_next(field(&form, "next")).to_owned();
    if !pre_session_ok(&headers, &form) {
        let msg = "The form expired or came from elsewhere; sign in again.".to_owned();
        return sign_in_page(&dash, &headers, peer, StatusCode::FORBIDDEN, &next, Some(msg));
    }
    if let Some(k) = unexpected(&form, &["csrf", "next", "email", "password"]) {
        let msg = format!("Unexpected field {}.", esc(&k));
        return sign_in_page(&dash, &headers, peer, StatusCode::BAD_REQUEST, &next, Some(msg));
    }
    let ip = dash.client_ip(&headers, Some(&ConnectInfo(peer)));
    if let Some(wait) = dash.shared.accounts.auth_failures.blocked(ip, Instant::now()) {
        let msg = format!("Too many failed sign-ins from {}; try again in {wait} s.", esc(&ip.to_string()));
        return sign_in_page(&dash, &headers, peer, StatusCode::TOO_MANY_REQUESTS, &next, Some(msg));
    }
    if let Some(sso) = &dash.sso
        && !sso.password_allowed(field(&form, "email"))
    {
        let msg = "Password sign-in is turned off here: sign in with single sign-on.".to_owned();
        return sign_in_page(&dash, &headers, peer, StatusCode::FORBIDDEN, &next, Some(msg));
    }
    match dash.shared.store.check_password(field(&form, "email"), field(&form, "password")).await {
        Ok(SignIn::Ok(user)) => start_session(&dash, &headers, peer, &user, "password", &next).await,
        Ok(SignIn::Wrong) => {
            dash.shared.accounts.auth_failures.failed(ip, Instant::now());
            tracing::info!(%ip, "dashboard sign-in with a wrong e-mail or password");
            let msg = "Wrong e-mail or password.".to_owned();
            sign_in_page(&dash, &headers, peer, StatusCode::UNAUTHORIZED, &next, Some(msg))
        }
        Ok(SignIn::Locked { until }) => {
            dash.shared.accounts.auth_failures.failed(ip, Instant::now());
            let msg = format!(
                "Too many wrong passwords: this user is locked out until {} (UTC). An administrator can set a new password.",
                esc(&warren_store::rfc3339(u64::try_from(until).unwrap_or(0)))
            );
            sign_in_page(&dash, &headers, peer, StatusCode::LOCKED, &next, Some(msg))
        }
        Err(e) => super::store_failed(&e),
    }
}

/// `GET /dashboard/sign-in/link/{token}`: a button, not a sign-in, so link previews and
/// prefetching do not use the link up.
pub(super) async fn link_form(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let csrf = pre_session_token();
    let token = if token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        token
    } else {
        String::new()
    };
    let body = format!(
        "<form method=\"post\" action=\"/dashboard/sign-in/link/{}\" class=\"create\" id=\"link\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><p>This one-time link signs you in once.</p>\
         <button id=\"submit\">Sign in</button></form>",
        esc(&token)
    );
    let mut resp = html::page(StatusCode::OK, "Sign in with a link", None, &body);
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&dash.shared, &headers, peer.ip(), SIGN_IN_COOKIE, &csrf, 1800),
    );
    resp
}

/// `POST /dashboard/sign-in/link/{token}`: uses the link, then asks for a password.
pub(super) async fn link_use(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Form(form): Fields,
) -> Response {
    if !pre_session_ok(&headers, &form) {
        let msg = "The form expired or came from elsewhere; open the link again.".to_owned();
        return sign_in_page(&dash, &headers, peer, StatusCode::FORBIDDEN, "/dashboard/", Some(msg));
    }
    let ip = dash.client_ip(&headers, Some(&ConnectInfo(peer)));
    if let Some(wait) = dash.shared.accounts.auth_failures.blocked(ip, Instant::now()) {
        let msg = format!("Too many failed sign-ins from {}; try again in {wait} s.", esc(&ip.to_string()));
        return sign_in_page(&dash, &headers, peer, StatusCode::TOO_MANY_REQUESTS, "/dashboard/", Some(msg));
    }
    match dash.shared.store.use_sign_in_link(&token).await {
        Ok(Some(user)) => start_session(&dash, &headers, peer, &user, "link", "/dashboard/account").await,
        Ok(None) => {
            dash.shared.accounts.auth_failures.failed(ip, Instant::now());
            let msg = "That sign-in link was used already, expired, or never existed.".to_owned();
            sign_in_page(&dash, &headers, peer, StatusCode::UNAUTHORIZED, "/dashboard/", Some(msg))
        }
        Err(e) => super::store_failed(&e),
    }
}

/// `POST /dashboard/sign-out`.
pub(super) async fn sign_out(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Fields,
) -> Response {
    let s = match dash.signed_in(peer, &headers, "/dashboard/").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !Dash::csrf_ok(&s, &form) {
        return super::forged(&s);
    }
    if let Some(token) = cookie(&headers, COOKIE)
        && let Err(e) = dash.shared.store.end_dashboard_session(token).await
    {
        return super::store_failed(&e);
    }
    let mut resp = Redirect::to("/dashboard/sign-in").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&dash.shared, &headers, peer.ip(), COOKIE, "", 0));
    resp
}

fn account_page(
    s: &super::Session,
    status: StatusCode,
    message: Option<String>,
    has_password: bool,
) -> Response {
    let mut body = message.unwrap_or_default();
    body.push_str(&format!(
        "<p>Signed in as <b>{}</b>, role <b>{}</b>, account <code>{}</code>.</p>\
         <h2>{}</h2><form method=\"post\" action=\"/dashboard/account\" class=\"create\" id=\"password-form\">{}\
         <label>New password (at least 12 characters) <input type=\"password\" name=\"password\" id=\"new-password\" autocomplete=\"new-password\" required></label>\
         <label>Again <input type=\"password\" name=\"password2\" id=\"new-password2\" autocomplete=\"new-password\" required></label>\
         <button id=\"set-password\">Set password</button></form>\
         <p class=\"muted\">Setting a password signs you out everywhere else.</p>",
        esc(&s.user.email),
        s.user.role.as_str(),
        esc(&s.user.account_id),
        if has_password { "Change your password" } else { "Set a password (you have none yet)" },
        html::csrf_field(&s.csrf),
    ));
    html::page(status, "Your account", Some(&s.viewer()), &body)
}

/// `GET /dashboard/account`.
pub(super) async fn account(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = match dash.signed_in(peer, &headers, "/dashboard/account").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let has = dash.shared.store.user_has_password(&s.user.account_id, &s.user.id).await.unwrap_or(true);
    account_page(&s, StatusCode::OK, None, has)
}

/// `POST /dashboard/account`: the user sets their own password (an audited change, made as
/// them); their other sessions end, this browser gets a new one.
pub(super) async fn set_password(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Fields,
) -> Response {
    let s = match dash.signed_in(peer, &headers, "/dashboard/account").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !Dash::csrf_ok(&s, &form) {
        return super::forged(&s);
    }
    let (pw, pw2) = (field(&form, "password"), field(&form, "password2"));
    let error = |status, m: &str| account_page(&s, status, Some(html::notice("error", &esc(m))), true);
    if let Some(k) = unexpected(&form, &["csrf", "password", "password2"]) {
        return error(StatusCode::BAD_REQUEST, &format!("Unexpected field {k}."));
    }
    if pw != pw2 {
        return error(StatusCode::BAD_REQUEST, "The two passwords differ.");
    }
    let by = dash.shared.store.acting_as(crate::api::dashboard_actor(&s.user, s.ip));
    match by.set_user_password(&s.user.account_id, &s.user.id, pw).await {
        Ok(user) => {
            dash.shared.accounts.events.wake();
            start_session(&dash, &headers, peer, &user, "password", "/dashboard/").await
        }
        Err(warren_store::StoreError::Invalid(m)) => error(StatusCode::BAD_REQUEST, &m),
        Err(e) => super::store_failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::encode_next;

    #[test]
    fn the_return_path_stays_on_the_dashboard() {
        assert_eq!(encode_next("/dashboard/authtokens"), "/dashboard/authtokens");
        for bad in [
            "//evil.example",
            "https://evil.example/dashboard/",
            "/dashboard//evil.example",
            "/dashboard/\\evil",
            "/dashboard/../x",
            "/dashboard/x?y=1",
            "/other",
            "",
        ] {
            assert_eq!(encode_next(bad), "/dashboard/", "{bad}");
        }
    }
}
