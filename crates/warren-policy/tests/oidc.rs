//! `openid-connect` without sockets: the whole authorization-code flow driven by hand, with
//! the clock passed in, so session expiry and every way an ID token can be wrong are checked
//! exactly. (The same flow against a real provider runs in warren-testkit.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use warren_policy::oidc::{CookieSecret, Discovery, Provider, TokenRequest};
use warren_policy::{Chain, CompileEnv, Conn, EndpointInfo, Jwks, Policy, Verdict};

const ISSUER: &str = "https://idp.example.com";

struct Idp {
    pkcs8: Vec<u8>,
    provider: Arc<Provider>,
}

impl Idp {
    fn new() -> Idp {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
        }]});
        let discovery = serde_json::json!({
            "issuer": ISSUER,
            "authorization_endpoint": format!("{ISSUER}/authorize"),
            "token_endpoint": format!("{ISSUER}/token"),
            "jwks_uri": format!("{ISSUER}/jwks"),
            "id_token_signing_alg_values_supported": ["ES256", "RS256"],
            "code_challenge_methods_supported": ["S256"],
        });
        let discovery = Discovery::parse(ISSUER, discovery.to_string().as_bytes()).unwrap();
        let keys = Arc::new(Jwks::parse(jwks.to_string().as_bytes()).unwrap());
        Idp { pkcs8: pkcs8.as_ref().to_vec(), provider: Arc::new(Provider::new(discovery, keys)) }
    }

    fn id_token(&self, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8)).unwrap()
    }

    fn chain(&self, extra: &str) -> Chain {
        let doc = format!(
            "on_http_request:\n  - actions:\n      - type: openid-connect\n        config:\n          issuer_url: {ISSUER}\n          client_id: app\n          client_secret: s3cret\n{extra}"
        );
        let env = CompileEnv {
            oidc: HashMap::from([(ISSUER.to_owned(), self.provider.clone())]),
            cookie_secret: Some(CookieSecret([7; 32])),
            ..CompileEnv::default()
        };
        Chain(vec![Arc::new(Policy::from_text(&doc, "https", &env).unwrap_or_else(|e| panic!("{e}")))])
    }
}

fn ep(host: &str) -> EndpointInfo {
    EndpointInfo {
        id: "ep_1".into(),
        url: format!("https://{host}"),
        proto: "https".into(),
        host: host.into(),
        port: 443,
    }
}

fn conn() -> Conn {
    Conn {
        client_ip: "203.0.113.9".parse().unwrap(),
        client_port: 40000,
        server_ip: "127.0.0.1".parse().unwrap(),
        server_port: 443,
        tls: None,
    }
}

/// Runs the request phase at `now` for `app.example.com`.
fn run(c: &Chain, req: &mut http::request::Parts, now: SystemTime) -> Verdict {
    run_at(c, "app.example.com", req, now)
}

fn run_at(c: &Chain, host: &str, req: &mut http::request::Parts, now: SystemTime) -> Verdict {
    c.on_http_request(&conn(), &ep(host), "https", req, now, Instant::now()).0
}

fn get(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(uri).header("host", "app.example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn respond(v: Verdict) -> http::Response<bytes::Bytes> {
    match v {
        Verdict::Respond(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// `name=value` of each Set-Cookie.
fn set_cookies(r: &http::Response<bytes::Bytes>) -> Vec<(String, String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap();
            let (nv, attrs) = v.split_once(';').unwrap();
            let (n, val) = nv.split_once('=').unwrap();
            (n.to_owned(), val.to_owned(), attrs.to_owned())
        })
        .collect()
}

fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// A sign-in up to the code exchange: the redirect's parameters and the exchange.
fn start(c: &Chain, now: SystemTime) -> (HashMap<String, String>, Box<TokenRequest>) {
    let r = respond(run(c, &mut get("/page?x=1", &[]), now));
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{ISSUER}/authorize?")), "{location}");
    let params = query(&location);
    let (name, value, attrs) = set_cookies(&r).pop().expect("a login cookie");
    // __Host- cookies: this host only, Secure, Path=/.
    assert!(name.starts_with("__Host-warren_oidc_login_"), "{name}");
    assert!(attrs.contains("Path=/;") && attrs.contains("HttpOnly") && attrs.contains("Secure"), "{attrs}");
    let callback = format!("/warren/oidc/callback?code=the-code&state={}", params["state"]);
    let cookie = format!("{name}={value}");
    match run(c, &mut get(&callback, &[("cookie", &cookie)]), now) {
        Verdict::Exchange(t) => (params, t),
        other => panic!("expected the code exchange, got {other:?}"),
    }
}

fn claims(nonce: &str, now: SystemTime) -> serde_json::Value {
    let now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    serde_json::json!({
        "iss": ISSUER, "aud": "app", "sub": "alice", "email": "alice@example.com", "email_verified": true, "name": "Alice",
        "nonce": nonce, "iat": now, "exp": now + 300,
    })
}

fn finish(t: Box<TokenRequest>, token: &str, now: SystemTime) -> http::Response<bytes::Bytes> {
    let body =
        serde_json::json!({"id_token": token, "access_token": "x", "token_type": "Bearer"}).to_string();
    t.finish(Ok((200, body.as_bytes())), now)
}

#[test]
fn the_code_flow_with_pkce_signs_in_and_passes_the_identity_on() {
    let idp = Idp::new();
    let c = idp.chain("");
    let now = SystemTime::now();
    let (params, t) = start(&c, now);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], "app");
    assert_eq!(params["redirect_uri"], "https://app.example.com/warren/oidc/callback");
    assert_eq!(params["scope"], "openid profile email");
    assert_eq!(params["code_challenge_method"], "S256");

    // The exchange: the code, the verifier whose S256 is the challenge, the client's secret.
    assert_eq!(t.url, format!("{ISSUER}/token"));
    let form: HashMap<String, String> = form_urlencoded::parse(t.body.as_bytes()).into_owned().collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the-code");
    assert_eq!(form["redirect_uri"], params["redirect_uri"]);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, form["code_verifier"].as_bytes());
    assert_eq!(B64.encode(digest), params["code_challenge"], "PKCE S256");
    assert_eq!(
        t.authorization.as_deref(),
        Some(&*format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("app:s3cret")))
    );
    assert!(
        !format!("{t:?}").contains("s3cret") && !format!("{t:?}").contains("the-code"),
        "Debug hides secrets"
    );

    let token = idp.id_token(claims(&params["nonce"], now));
    let r = finish(t, &token, now);
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/page?x=1", "back where the visitor was going");
    let cookies = set_cookies(&r);
    let (_, session, attrs) =
        cookies.iter().find(|(n, _, _)| n == "__Host-warren_oidc_session").expect("session");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("Secure") && attrs.contains("SameSite=Lax"),
        "{attrs}"
    );
    assert!(cookies.iter().any(|(n, v, a)| n.starts_with("__Host-warren_oidc_login_")
        && v.is_empty()
        && a.contains("Max-Age=0")));
    assert!(!session.contains("alice"), "sealed");

    // Signed in: the identity goes to the upstream in headers; the visitor's own copies of
    // those headers and the session cookie do not.
    let cookie = format!("theme=dark; __Host-warren_oidc_session={session}");
    let mut req = get(
        "/page",
        &[
            ("cookie", &cookie),
            ("warren-auth-user-id", "mallory"),
            ("warren_auth_user_email", "m@evil.example"),
        ],
    );
    assert!(matches!(run(&c, &mut req, now), Verdict::Continue));
    assert_eq!(req.headers["warren-auth-user-id"], "alice");
    assert!(req.headers.get("warren_auth_user_email").is_none(), "the _ spelling is removed too");
    assert_eq!(req.headers.get_all("warren-auth-user-id").iter().count(), 1);
    assert_eq!(req.headers["warren-auth-user-email"], "alice@example.com");
    assert_eq!(req.headers["warren-auth-user-name"], "Alice");
    assert_eq!(req.headers["warren-auth-issuer"], ISSUER);
    assert_eq!(req.headers["cookie"], "theme=dark");

    // Without a session the spoofed header never reaches anyone: the visitor is redirected.
    let mut req = get("/page", &[("warren-auth-user-id", "mallory")]);
    assert_eq!(respond(run(&c, &mut req, now)).status(), 302);

    // The session ends after 24 h by default.
    let mut req = get("/page", &[("cookie", &cookie)]);
    assert!(matches!(run(&c, &mut req, now + Duration::from_secs(23 * 3600)), Verdict::Continue));
    let mut req = get("/page", &[("cookie", &cookie)]);
    assert_eq!(respond(run(&c, &mut req, now + Duration::from_secs(24 * 3600 + 1))).status(), 302, "expired");

    // The cookie is bound to its host.
    let mut req = get("/page", &[("cookie", &cookie)]);
    assert_eq!(respond(run_at(&c, "other.example.com", &mut req, now)).status(), 302, "another endpoint");

    // Subresources of a page do not start sign-ins (no login cookie each); pages do.
    let r = respond(run(&c, &mut get("/app.js", &[("sec-fetch-mode", "no-cors")]), now));
    assert_eq!(r.status(), 401);
    assert!(set_cookies(&r).is_empty());
    let r = respond(run(&c, &mut get("/next", &[("sec-fetch-mode", "navigate")]), now));
    assert_eq!(r.status(), 302);
    // A path browsers would read as another site is not where the visitor is sent back to.
    let c2 = idp.chain("");
    for evil in ["//evil.example.com/x", "/\\evil.example.com/x"] {
        let r = respond(run(&c2, &mut get(evil, &[]), now));
        let state = query(r.headers()["location"].to_str().unwrap())["state"].clone();
        let (name, value, _) = set_cookies(&r).pop().unwrap();
        let cb = format!("/warren/oidc/callback?code=c&state={state}");
        let Verdict::Exchange(t) = run(&c2, &mut get(&cb, &[("cookie", &format!("{name}={value}"))]), now)
        else {
            panic!("exchange")
        };
        let nonce = query(r.headers()["location"].to_str().unwrap())["nonce"].clone();
        let done = finish(t, &idp.id_token(claims(&nonce, now)), now);
        assert_eq!(done.headers()["location"], "/", "{evil}");
    }

    // Logout clears it.
    let r = respond(run(&c, &mut get("/warren/logout", &[("cookie", &cookie)]), now));
    assert_eq!(r.status(), 200);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|(n, v, a)| n == "__Host-warren_oidc_session" && v.is_empty() && a.contains("Max-Age=0"))
    );
}

#[test]
fn max_session_duration_ends_sessions() {
    let idp = Idp::new();
    let c = idp.chain("          max_session_duration: 1h\n");
    let now = SystemTime::now();
    let (params, t) = start(&c, now);
    let r = finish(t, &idp.id_token(claims(&params["nonce"], now)), now);
    let (_, session, attrs) =
        set_cookies(&r).into_iter().find(|(n, _, _)| n == "__Host-warren_oidc_session").unwrap();
    assert!(attrs.contains("Max-Age=3600"), "{attrs}");
    let cookie = format!("__Host-warren_oidc_session={session}");
    assert!(matches!(
        run(&c, &mut get("/", &[("cookie", &cookie)]), now + Duration::from_secs(3599)),
        Verdict::Continue
    ));
    assert_eq!(
        respond(run(&c, &mut get("/", &[("cookie", &cookie)]), now + Duration::from_secs(3601))).status(),
        302
    );
}

#[test]
fn bad_id_tokens_and_forged_callbacks_do_not_sign_in() {
    let idp = Idp::new();
    let c = idp.chain("");
    let now = SystemTime::now();
    let refused = |r: http::Response<bytes::Bytes>, status: u16, why: &str| {
        assert_eq!(r.status(), status, "{why}: {:?}", r.body());
        assert!(
            set_cookies(&r).iter().all(|(n, _, _)| n != "__Host-warren_oidc_session"),
            "{why}: no session"
        );
    };
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change)> = vec![
        ("another nonce", Box::new(|c| c["nonce"] = "replayed".into())),
        ("another audience", Box::new(|c| c["aud"] = "someone-else".into())),
        ("another issuer", Box::new(|c| c["iss"] = "https://evil.example.com".into())),
        ("expired", Box::new(|c| c["exp"] = (c["iat"].as_u64().unwrap() - 3600).into())),
        ("no audience", Box::new(|c| drop(c.as_object_mut().unwrap().remove("aud")))),
        ("no issuer", Box::new(|c| drop(c.as_object_mut().unwrap().remove("iss")))),
        ("issued to another client", Box::new(|c| c["azp"] = "other-app".into())),
        ("several audiences, no azp", Box::new(|c| c["aud"] = serde_json::json!(["app", "other-app"]))),
    ];
    for (why, change) in cases {
        let (params, t) = start(&c, now);
        let mut cl = claims(&params["nonce"], now);
        change(&mut cl);
        refused(finish(t, &idp.id_token(cl), now), 401, why);
    }
    // Signed by another key.
    let (params, t) = start(&c, now);
    refused(finish(t, &Idp::new().id_token(claims(&params["nonce"], now)), now), 401, "foreign key");
    // alg none.
    let (params, t) = start(&c, now);
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none"}"#),
        B64.encode(claims(&params["nonce"], now).to_string())
    );
    refused(finish(t, &none, now), 401, "alg none");
    // The provider refuses the code, or cannot be reached.
    let (_, t) = start(&c, now);
    refused(t.finish(Ok((400, br#"{"error":"invalid_grant"}"#)), now), 502, "invalid_grant");
    let (_, t) = start(&c, now);
    refused(t.finish(Err("connection refused".into()), now), 502, "unreachable");

    // A callback whose state has no login cookie, or another sign-in's cookie.
    let r = respond(run(&c, &mut get("/warren/oidc/callback?code=x&state=forged", &[]), now));
    refused(r, 400, "no login cookie");
    let first = respond(run(&c, &mut get("/", &[]), now));
    let (name, value, _) = set_cookies(&first).pop().unwrap();
    let second = respond(run(&c, &mut get("/", &[]), now));
    let state2 = query(second.headers()["location"].to_str().unwrap())["state"].clone();
    let cb = format!("/warren/oidc/callback?code=x&state={state2}");
    let r = respond(run(&c, &mut get(&cb, &[("cookie", &format!("{name}={value}"))]), now));
    refused(r, 400, "another sign-in's cookie");
    // A login cookie older than 10 minutes.
    let state1 = query(first.headers()["location"].to_str().unwrap())["state"].clone();
    let cb = format!("/warren/oidc/callback?code=x&state={state1}");
    let late = now + Duration::from_secs(601);
    let r = respond(run(&c, &mut get(&cb, &[("cookie", &format!("{name}={value}"))]), late));
    refused(r, 400, "an expired sign-in");
    // An error from the provider is shown only for a sign-in this browser started, and only
    // as an error code.
    let r = respond(run(&c, &mut get("/warren/oidc/callback?error=Your+account+is+suspended", &[]), now));
    assert_eq!(r.status(), 400);
    let cb = format!("/warren/oidc/callback?error=access_denied%3Cscript%3E+call+us&state={state1}");
    let r = respond(run(&c, &mut get(&cb, &[("cookie", &format!("{name}={value}"))]), now));
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    let text = String::from_utf8_lossy(r.body()).into_owned();
    assert!(text.contains("(access_deniedscriptcallus)") && !text.contains('<'), "{text}");
}

#[test]
fn config_errors_are_clear() {
    let idp = Idp::new();
    let env = CompileEnv {
        oidc: HashMap::from([(ISSUER.to_owned(), idp.provider.clone())]),
        cookie_secret: Some(CookieSecret([7; 32])),
        ..CompileEnv::default()
    };
    let compile = |extra: &str| {
        let doc = format!(
            "on_http_request:\n  - actions:\n      - type: openid-connect\n        config:\n          issuer_url: {ISSUER}\n          client_id: app\n{extra}"
        );
        Policy::from_text(&doc, "https", &env).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(compile("          idle_session_timeout: 5m\n").contains("idle_session_timeout"));
    assert!(compile("          authz_url_params: {state: x}\n").contains("may not set \"state\""));
    assert!(compile("          max_session_duration: soon\n").contains("duration"));
    assert!(compile("          auth_id: \"a;b\"\n").contains("auth_id"));
    // A discovery document for another issuer is refused.
    let other = serde_json::json!({"issuer": "https://evil.example.com", "authorization_endpoint": "x", "token_endpoint": "y", "jwks_uri": "z"});
    let err = Discovery::parse(ISSUER, other.to_string().as_bytes()).unwrap_err();
    assert!(err.contains("evil.example.com"), "{err}");
}

#[test]
fn unverified_addresses_and_forged_headers_never_reach_the_upstream() {
    let idp = Idp::new();
    // Only /private signs in; the rest of the site is public, but identity headers sent by a
    // visitor are removed there too.
    let c = idp.chain("    expressions: [\"req.url.path.startsWith('/private')\"]\n");
    let now = SystemTime::now();
    let mut req = get("/public", &[("warren-auth-user-id", "mallory"), ("Warren_Auth_User_Email", "m@x")]);
    assert!(matches!(run(&c, &mut req, now), Verdict::Continue));
    assert!(
        req.headers.get("warren-auth-user-id").is_none()
            && req.headers.get("warren_auth_user_email").is_none()
    );

    let r = respond(run(&c, &mut get("/private", &[]), now));
    let params = query(r.headers()["location"].to_str().unwrap());
    let (name, value, _) = set_cookies(&r).pop().unwrap();
    let cb = format!("/warren/oidc/callback?code=c&state={}", params["state"]);
    let Verdict::Exchange(t) = run(&c, &mut get(&cb, &[("cookie", &format!("{name}={value}"))]), now) else {
        panic!("exchange")
    };
    let mut cl = claims(&params["nonce"], now);
    cl["email_verified"] = false.into();
    let done = finish(t, &idp.id_token(cl), now);
    let (_, session, _) =
        set_cookies(&done).into_iter().find(|(n, _, _)| n == "__Host-warren_oidc_session").unwrap();
    let mut req = get("/private", &[("cookie", &format!("__Host-warren_oidc_session={session}"))]);
    assert!(matches!(run(&c, &mut req, now), Verdict::Continue));
    assert_eq!(req.headers["warren-auth-user-id"], "alice");
    assert!(req.headers.get("warren-auth-user-email").is_none(), "an unverified address is not passed on");
}
