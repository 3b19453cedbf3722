//! `openid-connect`: visitors sign in with an OpenID Connect provider before they reach the
//! upstream.
//!
//! The edge runs the authorization-code flow with PKCE (RFC 7636). A request without a valid
//! session is redirected to the provider with a fresh `state`, `nonce` and code challenge,
//! which are kept in a short-lived login cookie scoped to the callback path (one per login,
//! so two tabs signing in at once do not clobber each other). The provider sends the visitor
//! back to [`CALLBACK_PATH`]; the edge checks `state`, exchanges the code for an ID token,
//! checks the token (signature against the provider's JWKS, issuer, audience, expiry, nonce)
//! and sets a session cookie. Both cookies are sealed with AES-256-GCM under a key derived
//! from the edge's secret, the provider and the client, with the cookie's name and host as
//! associated data: a visitor can neither read nor change them, nor move one to another
//! endpoint. [`LOGOUT_PATH`] clears the session.
//!
//! The upstream learns who the visitor is from the [`IDENTITY_HEADERS`]; the same headers
//! sent by a visitor are removed first, so the upstream can trust them. The session cookie
//! itself is not forwarded.
//!
//! Like the rest of the crate this does no I/O: the code exchange is handed to the caller as
//! a [`TokenRequest`], and the provider's answer comes back through [`TokenRequest::finish`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::actions::Changes;
use crate::jwt::Jwks;
use crate::vars::{EndpointInfo, ReqView};

/// Where the provider sends the visitor back with the authorization code.
pub const CALLBACK_PATH: &str = "/warren/oidc/callback";
/// Clears the session.
pub const LOGOUT_PATH: &str = "/warren/logout";
/// Headers carrying the visitor's identity to the upstream: the ID token's `sub`, `email`,
/// `name` and `iss` claims.
pub const IDENTITY_HEADERS: [&str; 4] =
    ["warren-auth-user-id", "warren-auth-user-email", "warren-auth-user-name", "warren-auth-issuer"];

/// The longest path and query a visitor is sent back to after signing in (else `/`).
const MAX_RETURN_TO: usize = 1024;
/// How long a started sign-in may take.
const LOGIN_TTL_SECS: u64 = 600;
/// A session's length unless `max_session_duration` says otherwise (ngrok's default).
const DEFAULT_SESSION: Duration = Duration::from_secs(24 * 3600);
/// The largest token response read (the caller enforces it).
pub const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// The edge's secret that session cookies are sealed under (every node sharing a database
/// has the same one). `Debug` never shows it.
#[derive(Clone)]
pub struct CookieSecret(pub [u8; 32]);

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecret(********)")
    }
}

/// What a provider's discovery document (`/.well-known/openid-configuration`) says.
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    /// Its issuer identifier.
    pub issuer: String,
    /// Where visitors sign in.
    pub authorization_endpoint: String,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// Its signing keys, for the caller to fetch.
    pub jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
}

impl Discovery {
    /// Parses the document fetched from `issuer_url`; its `issuer` must be that URL (OpenID
    /// Connect Discovery 1.0, section 4.3), so one provider cannot speak for another.
    pub fn parse(issuer_url: &str, json: &[u8]) -> Result<Discovery, String> {
        let d: Discovery =
            serde_json::from_slice(json).map_err(|e| format!("not an OpenID discovery document: {e}"))?;
        if d.issuer.trim_end_matches('/') != issuer_url.trim_end_matches('/') {
            return Err(format!(
                "the discovery document names the issuer {:?}, not {issuer_url:?}",
                d.issuer
            ));
        }
        if !d.code_challenge_methods_supported.is_empty()
            && !d.code_challenge_methods_supported.iter().any(|m| m == "S256")
        {
            return Err("the provider does not support PKCE with S256".into());
        }
        Ok(d)
    }

    /// The discovery URL for an issuer.
    pub fn url(issuer_url: &str) -> String {
        format!("{}/.well-known/openid-configuration", issuer_url.trim_end_matches('/'))
    }
}

/// A provider ready to use: its endpoints and its keys (which the caller keeps fresh).
#[derive(Debug)]
pub struct Provider {
    discovery: Discovery,
    algorithms: Vec<Algorithm>,
    jwks: Arc<Jwks>,
}

impl Provider {
    /// Joins a discovery document with the keys fetched from its `jwks_uri`.
    pub fn new(discovery: Discovery, jwks: Arc<Jwks>) -> Provider {
        let mut algorithms: Vec<Algorithm> = discovery
            .id_token_signing_alg_values_supported
            .iter()
            .filter_map(|a| a.parse().ok())
            // Only asymmetric algorithms: the keys come from the JWKS, never a shared secret.
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect();
        if algorithms.is_empty() {
            algorithms.push(Algorithm::RS256);
        }
        Provider { discovery, algorithms, jwks }
    }
}

/// ngrok's `openid-connect` config. Options warren does not implement are refused by name
/// rather than ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    issuer_url: String,
    client_id: String,
    #[serde(default)]
    client_secret: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    auth_id: Option<String>,
    #[serde(default)]
    max_session_duration: Option<String>,
    #[serde(default)]
    allow_cors_preflight: bool,
    #[serde(default)]
    authz_url_params: BTreeMap<String, String>,
}

impl Config {
    /// The issuer a config names, for the caller to discover before compiling.
    pub(crate) fn issuer(v: &serde_json::Value) -> Option<String> {
        v.get("issuer_url").and_then(|u| u.as_str()).map(str::to_owned)
    }
}

/// A compiled `openid-connect`.
pub(crate) struct Oidc {
    provider: Arc<Provider>,
    client_id: String,
    client_secret: String,
    scope: String,
    session_cookie: String,
    max_session: Duration,
    allow_cors_preflight: bool,
    extra_params: Vec<(String, String)>,
    key: LessSafeKey,
}

/// The sealed contents of the login cookie.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    /// Where the visitor was going (a path, never another site).
    return_to: String,
    exp: u64,
}

/// The sealed contents of the session cookie.
#[derive(Serialize, Deserialize)]
struct Session {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    iss: String,
    exp: u64,
}

/// A code exchange for the caller to perform: POST `body` (form-encoded) to `url`, with
/// `authorization` as the `Authorization` header when set, then pass the answer to
/// [`TokenRequest::finish`].
pub struct TokenRequest {
    /// The provider's token endpoint.
    pub url: String,
    /// `application/x-www-form-urlencoded` body.
    pub body: String,
    /// HTTP Basic client authentication, when the client has a secret.
    pub authorization: Option<String>,
    oidc: Arc<Oidc>,
    pending: Pending,
    cookie_host: String,
    secure: bool,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body holds the code and the verifier, the header the client secret.
        f.debug_struct("TokenRequest").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Oidc {
    pub(crate) fn compile(
        c: Config,
        providers: &std::collections::HashMap<String, Arc<Provider>>,
        secret: Option<&CookieSecret>,
    ) -> Result<Oidc, String> {
        let provider = providers
            .get(&c.issuer_url)
            .cloned()
            .ok_or_else(|| format!("the provider at {} could not be discovered", c.issuer_url))?;
        let secret = secret.ok_or("this edge has no key for session cookies")?;
        if c.client_id.is_empty() {
            return Err("client_id is empty".into());
        }
        let mut scopes = c.scopes;
        if scopes.is_empty() {
            scopes = vec!["openid".into(), "profile".into(), "email".into()];
        } else if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let auth_id = c.auth_id.unwrap_or_default();
        if !auth_id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-') {
            return Err(format!("auth_id {auth_id:?} may hold only letters, digits, _ and -"));
        }
        let session_cookie = if auth_id.is_empty() {
            "warren_oidc_session".to_owned()
        } else {
            format!("warren_oidc_{auth_id}")
        };
        let max_session = match c.max_session_duration {
            Some(d) => crate::actions::parse_duration(&d)?,
            None => DEFAULT_SESSION,
        };
        if max_session < Duration::from_secs(1) {
            return Err("max_session_duration must be at least 1s".into());
        }
        for k in c.authz_url_params.keys() {
            if RESERVED_PARAMS.contains(&k.as_str()) {
                return Err(format!("authz_url_params may not set {k:?}; the edge sets it"));
            }
        }
        Ok(Oidc {
            key: cookie_key(secret, &provider.discovery.issuer, &c.client_id),
            provider,
            client_id: c.client_id,
            client_secret: c.client_secret,
            scope: scopes.join(" "),
            session_cookie,
            max_session,
            allow_cors_preflight: c.allow_cors_preflight,
            extra_params: c.authz_url_params.into_iter().collect(),
        })
    }

    /// Runs the action on a request: `None` lets it through (identity headers added to
    /// `changes`); a verdict answers it instead.
    pub(crate) fn run(
        self: &Arc<Self>,
        req: &ReqView<'_>,
        ep: &EndpointInfo,
        now: SystemTime,
        changes: &mut Changes,
    ) -> Option<crate::Verdict> {
        let now_s = unix(now);
        let host = request_host(req, ep);
        let secure = req.scheme == "https";
        let cookies = cookies(req.headers);
        match req.uri.path() {
            CALLBACK_PATH => return Some(self.callback(req, ep, &cookies, &host, secure, now_s)),
            LOGOUT_PATH => {
                let mut r = page(200, "You are signed out.");
                append_cookie(&mut r, &clear_cookie(&cookie_name(&self.session_cookie, secure), "/", secure));
                return Some(crate::Verdict::Respond(r));
            }
            _ => {}
        }
        let session_cookie = cookie_name(&self.session_cookie, secure);
        let session = cookies
            .iter()
            .filter(|(n, _)| *n == session_cookie)
            .find_map(|(_, v)| self.open::<Session>(&session_cookie, &host, v))
            .filter(|s| s.exp > now_s);
        // Whatever the visitor sent in these headers is not to be believed (the chain removed
        // them before any rule ran; this covers a request changed by an earlier rule).
        changes.remove.extend(forged_identity(req.headers));
        let Some(session) = session else {
            if self.allow_cors_preflight && is_preflight(req) {
                return None;
            }
            // Only a page the visitor navigates to can finish a sign-in: the images, scripts
            // and fetches it loads get 401, and no login cookie each, which would otherwise
            // pile up in the browser and in every request's Cookie header.
            if req.headers.get("sec-fetch-mode").is_some_and(|m| m.as_bytes() != b"navigate") {
                let mut r = page(401, "Sign-in required: open this site's page to sign in.");
                r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return Some(crate::Verdict::Respond(r));
            }
            return Some(self.login(req, ep, &host, secure, now_s));
        };
        let claims = [Some(&session.sub), session.email.as_ref(), session.name.as_ref(), Some(&session.iss)];
        for (h, v) in IDENTITY_HEADERS.iter().zip(claims) {
            // Raw UTF-8: names and addresses need not be ASCII.
            if let Some(v) = v.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
                changes.add.push((HeaderName::from_static(h), v));
            }
        }
        // The upstream gets the visitor's other cookies, not the session.
        let rest: Vec<String> = cookies
            .iter()
            .filter(|(n, _)| {
                let n = n.strip_prefix(HOST_PREFIX).unwrap_or(n);
                n != self.session_cookie && !n.starts_with(LOGIN_COOKIE)
            })
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if rest.len() != cookies.len() {
            changes.remove.push(http::header::COOKIE);
            if !rest.is_empty()
                && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
            {
                changes.add.push((http::header::COOKIE, v));
            }
        }
        None
    }

    /// Starts a sign-in: a login cookie and a redirect to the provider.
    fn login(
        &self,
        req: &ReqView<'_>,
        ep: &EndpointInfo,
        host: &str,
        secure: bool,
        now: u64,
    ) -> crate::Verdict {
        let pending = Pending {
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            return_to: return_to(req),
            exp: now + LOGIN_TTL_SECS,
        };
        let challenge =
            B64.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pending.verifier.as_bytes()));
        let redirect_uri = redirect_uri(req, ep, host);
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.scope)
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        for (k, v) in &self.extra_params {
            q.append_pair(k, v);
        }
        let endpoint = &self.provider.discovery.authorization_endpoint;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let location = format!("{endpoint}{sep}{}", q.finish());
        let name = cookie_name(&login_cookie(&pending.state), secure);
        let sealed = self.seal(&name, host, &pending);
        let mut r = page(302, "Sign-in required; you are being redirected to the identity provider.");
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        append_cookie(&mut r, &set_cookie(&name, &sealed, login_path(secure), Some(LOGIN_TTL_SECS), secure));
        r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        crate::Verdict::Respond(r)
    }

    /// The provider sent the visitor back: check the sign-in is ours, then ask the caller to
    /// exchange the code.
    fn callback(
        self: &Arc<Self>,
        req: &ReqView<'_>,
        ep: &EndpointInfo,
        cookies: &[(&str, &str)],
        host: &str,
        secure: bool,
        now: u64,
    ) -> crate::Verdict {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        for (k, v) in form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()) {
            match &*k {
                "code" => code = Some(v.into_owned()),
                "state" => state = Some(v.into_owned()),
                "error" => error = Some(v.into_owned()),
                _ => {}
            }
        }
        let Some(state) = state else {
            return crate::Verdict::Respond(refuse(400, "the identity provider's answer has no state"));
        };
        let name = cookie_name(&login_cookie(&state), secure);
        let pending = cookies
            .iter()
            .filter(|(n, _)| *n == name)
            .find_map(|(_, v)| self.open::<Pending>(&name, host, v))
            .filter(|p| p.exp > now && crate::ct_eq(p.state.as_bytes(), state.as_bytes()));
        let Some(pending) = pending else {
            return crate::Verdict::Respond(refuse(
                400,
                "this sign-in was not started in this browser or has expired; open the page again",
            ));
        };
        if let Some(e) = error {
            // Only the error code (RFC 6749 4.1.2.1), never free text from the URL.
            let code: String = e.chars().filter(|c| c.is_ascii_lowercase() || *c == '_').take(64).collect();
            return crate::Verdict::Respond(refuse(
                403,
                &format!("the identity provider refused the sign-in ({code})"),
            ));
        }
        let Some(code) = code else {
            return crate::Verdict::Respond(refuse(400, "the identity provider's answer has no code"));
        };
        let redirect_uri = redirect_uri(req, ep, host);
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", &code)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("code_verifier", &pending.verifier);
        let authorization = if self.client_secret.is_empty() {
            form.append_pair("client_id", &self.client_id);
            None
        } else {
            // RFC 6749 section 2.3.1: both parts form-encoded before Basic encoding.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&self.client_id), enc(&self.client_secret));
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
        };
        crate::Verdict::Exchange(Box::new(TokenRequest {
            url: self.provider.discovery.token_endpoint.clone(),
            body: form.finish(),
            authorization,
            oidc: self.clone(),
            pending,
            cookie_host: host.to_owned(),
            secure,
        }))
    }

    fn seal<T: Serialize>(&self, name: &str, host: &str, value: &T) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("system randomness");
        let mut body = serde_json::to_vec(value).expect("plain structs serialize");
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(name, host), &mut body)
            .expect("AES-GCM seals any cookie-sized value");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        B64.encode(out)
    }

    /// `None` for anything not sealed by this action for this cookie and host.
    fn open<T: for<'de> Deserialize<'de>>(&self, name: &str, host: &str, value: &str) -> Option<T> {
        let raw = B64.decode(value).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self.key.open_in_place(nonce, aad(name, host), &mut body).ok()?;
        serde_json::from_slice(plain).ok()
    }
}

impl TokenRequest {
    /// Finishes the sign-in with the token endpoint's answer (`status` and body; `None`
    /// when it could not be reached): the session cookie and a redirect to where the visitor
    /// was going, or a page saying why not.
    pub fn finish(self, answer: Result<(u16, &[u8]), String>, now: SystemTime) -> http::Response<Bytes> {
        self.check(answer, now).unwrap_or_else(|(status, why)| refuse(status, &why))
    }

    /// The sign-in's answer: `Ok` signs in, `Err` is the status and why not.
    fn check(
        &self,
        answer: Result<(u16, &[u8]), String>,
        now: SystemTime,
    ) -> Result<http::Response<Bytes>, (u16, String)> {
        let (status, body) =
            answer.map_err(|e| (502, format!("the identity provider could not be reached ({e})")))?;
        let json: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| (502, format!("the identity provider answered {status} without JSON")))?;
        if status != 200 {
            let e = json.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given");
            return Err((502, format!("the identity provider did not accept the code ({e})")));
        }
        let token = json
            .get("id_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| (502, String::from("the identity provider returned no ID token")))?;
        let p = &self.oidc.provider;
        let claims = crate::jwt::decode(
            token,
            std::slice::from_ref(&p.jwks),
            &p.algorithms,
            std::slice::from_ref(&self.oidc.client_id),
            std::slice::from_ref(&p.discovery.issuer),
            now,
        )
        .map_err(|e| (401, format!("the ID token is not valid: {e}")))?;
        let nonce = claims.get("nonce").and_then(|n| n.as_str()).unwrap_or("");
        if !crate::ct_eq(nonce.as_bytes(), self.pending.nonce.as_bytes()) {
            return Err((401, String::from("the ID token was not issued for this sign-in (nonce mismatch)")));
        }
        // OpenID Connect Core 3.1.3.7: with several audiences the token must name the party
        // it was issued to, and when it names one, that must be this client.
        let several = claims.get("aud").and_then(|a| a.as_array()).is_some_and(|a| a.len() > 1);
        match claims.get("azp").and_then(|a| a.as_str()) {
            Some(azp) if azp != self.oidc.client_id => {
                return Err((401, format!("the ID token was issued to another client ({azp})")));
            }
            None if several => {
                return Err((401, String::from("the ID token has several audiences and no azp")));
            }
            _ => {}
        }
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        // An address the provider has not verified says nothing about who signed in.
        let verified =
            claims.get("email_verified").is_some_and(|v| v == &serde_json::Value::Bool(true) || v == "true");
        let sub = text("sub").ok_or_else(|| (401, String::from("the ID token has no subject")))?;
        let session = Session {
            sub,
            email: text("email").filter(|_| verified),
            name: text("name"),
            iss: p.discovery.issuer.clone(),
            exp: unix(now) + self.oidc.max_session.as_secs(),
        };
        let o = &self.oidc;
        let session_cookie = cookie_name(&o.session_cookie, self.secure);
        let sealed = o.seal(&session_cookie, &self.cookie_host, &session);
        let mut r = page(302, "Signed in; you are being redirected.");
        if let Ok(v) = HeaderValue::from_str(&self.pending.return_to) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        append_cookie(
            &mut r,
            &set_cookie(&session_cookie, &sealed, "/", Some(o.max_session.as_secs()), self.secure),
        );
        let login = cookie_name(&login_cookie(&self.pending.state), self.secure);
        append_cookie(&mut r, &clear_cookie(&login, login_path(self.secure), self.secure));
        r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(r)
    }
}

/// The request's headers that claim to carry an identity: the [`IDENTITY_HEADERS`], also
/// spelled with `_` for `-` (CGI-style servers read both the same way).
pub(crate) fn forged_identity(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let forged = |n: &str| {
        IDENTITY_HEADERS.iter().any(|h| {
            h.len() == n.len() && h.bytes().zip(n.bytes()).all(|(a, b)| a == b || (a == b'-' && b == b'_'))
        })
    };
    headers.keys().filter(|n| forged(n.as_str())).cloned().collect()
}

/// The paths `openid-connect` answers itself.
pub(crate) fn is_reserved_path(path: &str) -> bool {
    path == CALLBACK_PATH || path == LOGOUT_PATH
}

/// Login cookies start with this, followed by part of their state.
const LOGIN_COOKIE: &str = "warren_oidc_login_";

/// On https endpoints cookie names carry this prefix, so browsers accept them only from this
/// exact host, set with `Secure` and `Path=/` and no `Domain`: another endpoint under the same
/// parent domain cannot plant a login or session cookie here (login CSRF, session fixation).
const HOST_PREFIX: &str = "__Host-";

fn cookie_name(base: &str, secure: bool) -> String {
    if secure { format!("{HOST_PREFIX}{base}") } else { base.to_owned() }
}

/// `__Host-` cookies must have `Path=/`; on http endpoints the login cookie is kept to the
/// callback path.
fn login_path(secure: bool) -> &'static str {
    if secure { "/" } else { CALLBACK_PATH }
}

/// Parameters of the authorization request the edge sets itself.
const RESERVED_PARAMS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

fn login_cookie(state: &str) -> String {
    let tag: String = state.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
    format!("{LOGIN_COOKIE}{tag}")
}

fn cookie_key(secret: &CookieSecret, issuer: &str, client_id: &str) -> LessSafeKey {
    use aws_lc_rs::hkdf;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"warren openid-connect cookies").extract(&secret.0);
    let info = [issuer.as_bytes(), b"\0", client_id.as_bytes()];
    let okm = prk.expand(&info, &AES_256_GCM).expect("32 bytes is a valid HKDF-SHA256 length");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn aad(name: &str, host: &str) -> Aad<Vec<u8>> {
    Aad::from([name.as_bytes(), b"\0", host.as_bytes()].concat())
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b).expect("system randomness");
    B64.encode(b)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The host the visitor asked for, lower case and without the port: the endpoint's own host
/// unless it is a wildcard.
fn request_host(req: &ReqView<'_>, ep: &EndpointInfo) -> String {
    if !ep.host.starts_with("*.") && !ep.host.is_empty() {
        return ep.host.to_ascii_lowercase();
    }
    let h = req
        .uri
        .host()
        .or_else(|| req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    let h = if h.starts_with('[') {
        h.split_inclusive(']').next().unwrap_or(h)
    } else {
        h.split(':').next().unwrap_or(h)
    };
    h.to_ascii_lowercase()
}

/// The callback URL: the endpoint's origin (not the `Host` header, which a visitor controls)
/// unless the endpoint is a wildcard.
fn redirect_uri(req: &ReqView<'_>, ep: &EndpointInfo, host: &str) -> String {
    let port = match (req.scheme, ep.port) {
        ("https", 443) | ("http", 80) | (_, 0) => String::new(),
        (_, p) => format!(":{p}"),
    };
    format!("{}://{host}{port}{CALLBACK_PATH}", req.scheme)
}

/// Where to send the visitor after signing in: the page they asked for, as a path on this
/// host. A path starting with `//` or `/\` would be read by browsers as another site.
fn return_to(req: &ReqView<'_>) -> String {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    // A long target would make the login cookie larger than browsers keep.
    let safe = target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && target.len() <= MAX_RETURN_TO;
    if matches!(req.method, "GET" | "HEAD") && safe { target.to_owned() } else { "/".to_owned() }
}

fn is_preflight(req: &ReqView<'_>) -> bool {
    req.method == "OPTIONS"
        && req.headers.contains_key(http::header::ORIGIN)
        && req.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Every `name=value` pair of every `Cookie` header.
fn cookies(headers: &http::HeaderMap) -> Vec<(&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .collect()
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: Option<u64>, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

fn clear_cookie(name: &str, path: &str, secure: bool) -> String {
    set_cookie(name, "", path, Some(0), secure)
}

fn append_cookie(r: &mut http::Response<Bytes>, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(http::header::SET_COOKIE, v);
    }
}

fn page(status: u16, text: &str) -> http::Response<Bytes> {
    let mut r = http::Response::new(Bytes::from(format!("{text}\n")));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A failed sign-in. Plain text, so what the provider put in `error` cannot become markup.
fn refuse(status: u16, why: &str) -> http::Response<Bytes> {
    page(status, &format!("Sign-in failed: {why}."))
}
