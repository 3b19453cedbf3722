//! The dashboard, as a browser without JavaScript sees it (cookies, forms, redirects) and, at
//! the end, in real Chromium: signing in (one-time link, password, lockout), handing out an
//! authtoken that an agent then uses, the role rules, `dashboard` IP restrictions, and the
//! hostile cases: forged CSRF tokens, other sites' forms, replayed sessions, open redirects,
//! HTML in user-controlled fields.

use hyper::StatusCode;
use serde_json::{Value, json};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::oidc::{Browser, Page};
use warren_testkit::*;

const PASSWORD: &str = "correct horse battery staple";

fn url(edge: &TestEdge, path: &str) -> String {
    format!("http://{}{path}", edge.api_addr())
}

fn browser(edge: &TestEdge) -> Browser {
    Browser::new(edge, ".warren.localhost")
}

/// The admin the first start created: its id.
async fn admin_id(edge: &TestEdge) -> String {
    let (_, _, users) = edge.api("GET", "/users", Some(&edge.api_key), None).await;
    users["users"].as_array().unwrap().iter().find(|u| u["email"] == "admin").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Gives a user a password through the API (`password` is warren's extension of `/users`).
async fn set_password(edge: &TestEdge, user_id: &str, password: &str) {
    let body = json!({ "password": password });
    let (s, _, v) = edge.api("PATCH", &format!("/users/{user_id}"), Some(&edge.api_key), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!v.to_string().contains(password) && v.get("password").is_none(), "never answered: {v}");
}

async fn sign_in(b: &mut Browser, edge: &TestEdge, email: &str, password: &str) -> Page {
    let page = b.open(&url(edge, "/dashboard/")).await;
    assert!(page.url.contains("/dashboard/sign-in"), "not signed in yet: {}", page.url);
    b.submit_form(&page, "/dashboard/sign-in", &[("email", email), ("password", password)]).await
}

/// The CSRF token in a page's forms.
fn csrf(page: &Page) -> String {
    let at = page.body.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    page.body[at..at + page.body[at..].find('"').unwrap()].to_owned()
}

/// `cr_<26 characters>` of `cr_<26 characters>_<secret>` (the secret may hold `_` too).
fn token_id(token: &str) -> &str {
    &token[..token.match_indices('_').nth(1).expect("an id and a secret").0]
}

async fn count(edge: &TestEdge, collection: &str, key: &str) -> usize {
    let (_, _, v) = edge.api("GET", collection, Some(&edge.api_key), None).await;
    v[key].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn an_admin_signs_in_with_a_one_time_link_sets_a_password_and_hands_out_an_authtoken_that_works() {
    let edge = TestEdge::start().await;
    let link = warren_edge::bootstrap::sign_in_link(edge.edge().store(), "default", "admin").await.unwrap();
    let link_url = url(&edge, &format!("/dashboard/sign-in/link/{}", link.0));
    let mut b = browser(&edge);

    // Opening the link signs nobody in (previews and prefetchers do that); its button does.
    let page = b.open(&link_url).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(b.cookie("127.0.0.1", "warren_session").is_none());
    let account = b.submit_form(&page, &format!("/dashboard/sign-in/link/{}", link.0), &[]).await;
    assert!(account.url.ends_with("/dashboard/account"), "{}", account.url);
    assert!(account.body.contains("you have none yet"), "{}", account.body);
    // Used once.
    let mut other = browser(&edge);
    let again = other.open(&link_url).await;
    let again = other.submit_form(&again, &format!("/dashboard/sign-in/link/{}", link.0), &[]).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.body);

    let differs = b
        .submit_form(
            &account,
            "/dashboard/account",
            &[("password", PASSWORD), ("password2", "something else")],
        )
        .await;
    assert_eq!(differs.status, StatusCode::BAD_REQUEST);
    let short =
        b.submit_form(&account, "/dashboard/account", &[("password", "short"), ("password2", "short")]).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert!(short.body.contains("12 to 256"), "{}", short.body);
    let overview = b
        .submit_form(&account, "/dashboard/account", &[("password", PASSWORD), ("password2", PASSWORD)])
        .await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("<h1>Overview</h1>"), "{}", overview.body);

    // Out, and in again with the password.
    let signed_out = b.submit_form(&overview, "/dashboard/sign-out", &[]).await;
    assert!(signed_out.url.contains("/dashboard/sign-in"), "{}", signed_out.url);
    let overview = sign_in(&mut b, &edge, "admin", PASSWORD).await;
    assert!(overview.body.contains("<h1>Overview</h1>"), "{}", overview.body);

    // An authtoken, shown once with the command that uses it; HTML in its description is text.
    let tokens = b.open(&url(&edge, "/dashboard/authtokens")).await;
    let created = b
        .submit_form(&tokens, "/dashboard/authtokens", &[("description", "<script>alert(1)</script> laptop")])
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert!(!created.body.contains("<script>alert"), "escaped");
    assert!(created.body.contains("&lt;script&gt;alert(1)&lt;/script&gt; laptop"));
    let secret_at = created.body.find("<pre id=\"secret\">").unwrap() + "<pre id=\"secret\">".len();
    let token = created.body[secret_at..secret_at + created.body[secret_at..].find('<').unwrap()].to_owned();
    assert!(token.starts_with("cr_"), "{token}");
    assert!(created.body.contains(&format!("warren http 3000 --authtoken {token} --connect-url")));
    assert!(created.body.contains(&format!("authtoken: {token}")), "the ngrok config lines");
    // Shown once: the list has its id, never the token again.
    let listed = b.open(&url(&edge, "/dashboard/authtokens")).await;
    assert!(!listed.body.contains(&token));

    // An agent brings an endpoint up with it; the endpoints page shows it.
    let up = HttpUpstream::start().await;
    let mut config =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://dash.warren.localhost")).unwrap());
    config.authtoken = token.clone();
    let mut agent = Agent::start(config);
    within("online", agent.wait_online()).await.unwrap();
    let endpoints = b.open(&url(&edge, "/dashboard/endpoints")).await;
    assert!(endpoints.body.contains("https://dash.warren.localhost"), "{}", endpoints.body);
    let sessions = b.open(&url(&edge, "/dashboard/sessions")).await;
    assert_eq!(sessions.body.matches("<tr data-id=\"ts_").count(), 1, "{}", sessions.body);

    // Revoking it ends the session.
    let id = token_id(&token).to_owned();
    let listed = b.open(&url(&edge, "/dashboard/authtokens")).await;
    let after = b.submit_form(&listed, &format!("/dashboard/authtokens/{id}/delete"), &[]).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(!after.body.contains(&format!("data-id=\"{id}\"")));
    within("the session ends", edge.wait_sessions(0)).await;
    let sessions = b.open(&url(&edge, "/dashboard/sessions")).await;
    assert!(sessions.body.contains("None yet."), "{}", sessions.body);
}

#[tokio::test]
async fn forged_foreign_and_replayed_requests_change_nothing() {
    let edge = TestEdge::start().await;
    set_password(&edge, &admin_id(&edge).await, PASSWORD).await;
    let mut b = browser(&edge);
    let overview = sign_in(&mut b, &edge, "admin", PASSWORD).await;
    assert_eq!(overview.status, StatusCode::OK);
    let csp = overview.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(overview.headers["cache-control"], "no-store");
    let session = b.cookie("127.0.0.1", "warren_session").unwrap();
    let page = b.open(&url(&edge, "/dashboard/authtokens")).await;
    let token = csrf(&page);
    let before = count(&edge, "/credentials", "credentials").await;
    let create = url(&edge, "/dashboard/authtokens");

    // No token, a wrong one, two of them.
    for form in [
        vec![("description", "x")],
        vec![("csrf", "forged"), ("description", "x")],
        vec![("csrf", "forged"), ("csrf", token.as_str()), ("description", "x")],
    ] {
        let p = b.post_form(&create, &form, &[]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{form:?}: {}", p.body);
    }
    // The right token from another site's page.
    let p = b
        .post_form(&create, &[("csrf", &token), ("description", "x")], &[("origin", "http://evil.example")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    // A field no form has is refused by name, not dropped.
    let p = b.post_form(&create, &[("csrf", &token), ("owner_id", "usr_x")], &[]).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("unexpected field &quot;owner_id&quot;"), "{}", p.body);
    assert_eq!(count(&edge, "/credentials", "credentials").await, before, "nothing was created");
    // The token of one session does not work for another.
    let mut other = browser(&edge);
    sign_in(&mut other, &edge, "admin", PASSWORD).await;
    let p = other.post_form(&create, &[("csrf", &token), ("description", "x")], &[]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    // Sign-in forms need their own cookie token too (no login CSRF).
    let mut fresh = browser(&edge);
    let p = fresh
        .post_form(
            &url(&edge, "/dashboard/sign-in"),
            &[("csrf", "x"), ("email", "admin"), ("password", PASSWORD)],
            &[],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(fresh.cookie("127.0.0.1", "warren_session").is_none());

    // The return path after sign-in stays on the dashboard.
    for next in ["//evil.example/x", "https://evil.example/", "/dashboard/../../x", "/dashboard/\\evil"] {
        let mut c = browser(&edge);
        let form = c.get(&url(&edge, &format!("/dashboard/sign-in?next={next}")), &[]).await;
        let p = c
            .post_form(
                &url(&edge, "/dashboard/sign-in"),
                &[
                    ("csrf", &c.cookie("127.0.0.1", "warren_sign_in").unwrap()),
                    ("next", next),
                    ("email", "admin"),
                    ("password", PASSWORD),
                ],
                &[],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{next}: {}", form.body);
        assert_eq!(p.headers["location"], "/dashboard/", "{next}");
        assert!(!form.body.contains("evil.example"), "not echoed: {next}");
    }

    // Signed out, the cookie is dead (a replay gets the sign-in page); a made-up one too.
    let page = b.open(&url(&edge, "/dashboard/")).await;
    b.submit_form(&page, "/dashboard/sign-out", &[]).await;
    for cookie in [session.as_str(), "made-up"] {
        b.set_cookie("127.0.0.1", "warren_session", cookie);
        let p = b.get(&url(&edge, "/dashboard/authtokens"), &[]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert!(p.headers["location"].to_str().unwrap().starts_with("/dashboard/sign-in"));
    }
    // The session cookie is HttpOnly and SameSite=Strict.
    let mut c = browser(&edge);
    let p = c.get(&url(&edge, "/dashboard/sign-in"), &[]).await;
    let set = p.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/dashboard"),
        "{set}"
    );
}

#[tokio::test]
async fn read_only_users_see_no_forms_and_are_refused_when_posting_anyway() {
    let edge = TestEdge::start().await;
    let tenant = edge.tenant("default").await;
    set_password(&edge, &tenant.read_only.user_id, PASSWORD).await;
    set_password(&edge, &tenant.developer.user_id, PASSWORD).await;
    let before = count(&edge, "/credentials", "credentials").await;

    let mut b = browser(&edge);
    sign_in(&mut b, &edge, &tenant.read_only.email, PASSWORD).await;
    let page = b.open(&url(&edge, "/dashboard/authtokens")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("id=\"create\"") && !page.body.contains("act-delete"), "{}", page.body);
    let p = b
        .post_form(&url(&edge, "/dashboard/authtokens"), &[("csrf", &csrf(&page)), ("description", "x")], &[])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(p.body.contains("read-only"), "{}", p.body);
    let victim = &tenant.admin.credential_id;
    let p = b
        .post_form(
            &url(&edge, &format!("/dashboard/authtokens/{victim}/delete")),
            &[("csrf", &csrf(&page))],
            &[],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post_form(
            &url(&edge, "/dashboard/traffic-policy"),
            &[("csrf", &csrf(&page)), ("traffic_policy", "")],
            &[],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(count(&edge, "/credentials", "credentials").await, before);

    // A developer: no user forms; adding one anyway is the API's 403.
    let mut d = browser(&edge);
    sign_in(&mut d, &edge, &tenant.developer.email, PASSWORD).await;
    let page = d.open(&url(&edge, "/dashboard/users")).await;
    assert!(!page.body.contains("id=\"create\""));
    let p = d
        .post_form(
            &url(&edge, "/dashboard/users"),
            &[("csrf", &csrf(&page)), ("email", "new@x"), ("role", "admin")],
            &[],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.body.contains("needs the admin role"), "{}", p.body);
    // Their own authtoken: allowed, like the API.
    let page = d.open(&url(&edge, "/dashboard/authtokens")).await;
    let p = d.submit_form(&page, "/dashboard/authtokens", &[("description", "mine")]).await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
}

#[tokio::test]
async fn repeated_wrong_passwords_lock_the_user_out_and_a_new_password_lets_them_in() {
    let edge = TestEdge::start().await;
    let admin = admin_id(&edge).await;
    set_password(&edge, &admin, PASSWORD).await;
    for _ in 0..warren_store::dashboard::MAX_FAILED_SIGN_INS {
        let mut b = browser(&edge);
        let p = sign_in(&mut b, &edge, "admin", "guess guess guess").await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.body.contains("Wrong e-mail or password."));
    }
    let mut b = browser(&edge);
    let p = sign_in(&mut b, &edge, "admin", PASSWORD).await;
    assert_eq!(p.status, StatusCode::LOCKED, "the right password does not help now");
    assert!(p.body.contains("locked out until"), "{}", p.body);
    assert!(b.cookie("127.0.0.1", "warren_session").is_none());
    // An administrator (here through the API) sets a new one.
    set_password(&edge, &admin, "a brand new passphrase").await;
    let p = sign_in(&mut b, &edge, "admin", "a brand new passphrase").await;
    assert_eq!(p.status, StatusCode::OK);
}

#[tokio::test]
async fn a_dashboard_ip_restriction_refuses_other_addresses_at_every_page_and_at_sign_in() {
    let edge = TestEdge::start().await;
    set_password(&edge, &admin_id(&edge).await, PASSWORD).await;
    let key = Some(edge.api_key.as_str());
    let mut b = browser(&edge);
    sign_in(&mut b, &edge, "admin", PASSWORD).await;

    let (_, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({"description": "office"}))).await;
    let rule = json!({"ip_policy_id": pol["id"], "cidr": "203.0.113.0/24", "action": "allow"});
    assert_eq!(edge.api("POST", "/ip_policy_rules", key, Some(rule)).await.0, StatusCode::CREATED);
    let body = json!({"type": "dashboard", "ip_policy_ids": [pol["id"]], "enforced": true});
    let (s, _, x) = edge.api("POST", "/ip_restrictions", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{x}");

    for path in ["/dashboard/", "/dashboard/authtokens", "/dashboard/traffic-policy", "/dashboard/account"] {
        let p = b.get(&url(&edge, path), &[]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
        assert!(p.body.contains("not available from 127.0.0.1"), "{}", p.body);
    }
    let mut c = browser(&edge);
    let p = sign_in(&mut c, &edge, "admin", PASSWORD).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(c.cookie("127.0.0.1", "warren_session").is_none(), "no session was made");
    // The API has its own restrictions: this one is not about it.
    assert_eq!(edge.api("GET", "/credentials", key, None).await.0, StatusCode::OK);

    // Log only: let through.
    let (s, _, _) = edge
        .api(
            "PATCH",
            &format!("/ip_restrictions/{}", x["id"].as_str().unwrap()),
            key,
            Some(json!({"enforced": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b.get(&url(&edge, "/dashboard/"), &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_traffic_policy_editor_shows_the_apis_refusal_in_place_and_keeps_the_text() {
    let edge = TestEdge::start().await;
    set_password(&edge, &admin_id(&edge).await, PASSWORD).await;
    let mut b = browser(&edge);
    sign_in(&mut b, &edge, "admin", PASSWORD).await;
    let page = b.open(&url(&edge, "/dashboard/traffic-policy")).await;
    let bad = "on_http_request:\n  - actions:\n      - type: denny\n";
    let p = b.submit_form(&page, "/dashboard/traffic-policy", &[("traffic_policy", bad)]).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("invalid traffic policy") && p.body.contains("denny"), "{}", p.body);
    assert!(p.body.contains("type: denny"), "the text is kept as typed");
    let (_, _, v) = edge.api("GET", "/traffic_policy", Some(&edge.api_key), None).await;
    assert_eq!(v["traffic_policy"], Value::Null, "nothing saved");

    let good = "on_http_request:\n  - actions:\n      - type: add-headers\n        config:\n          headers:\n            x-from: dashboard\n";
    let p = b.submit_form(&p, "/dashboard/traffic-policy", &[("traffic_policy", good)]).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains("Saved."));
    let (_, _, v) = edge.api("GET", "/traffic_policy", Some(&edge.api_key), None).await;
    assert_eq!(v["traffic_policy"], good);
}

#[tokio::test]
async fn passwords_through_the_api_are_checked_first_and_never_answered() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let before = count(&edge, "/users", "users").await;
    let (s, _, v) = edge
        .api(
            "POST",
            "/users",
            key,
            Some(json!({"email": "a@x.example", "role": "developer", "password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(count(&edge, "/users", "users").await, before, "a refused password leaves no user behind");
    let (s, _, v) = edge
        .api(
            "POST",
            "/users",
            key,
            Some(json!({"email": "a@x.example", "role": "developer", "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v.get("password").is_none() && !v.to_string().contains(PASSWORD));
    let mut b = browser(&edge);
    assert_eq!(sign_in(&mut b, &edge, "a@x.example", PASSWORD).await.status, StatusCode::OK);
}

/// The same flow in real Chromium (no JavaScript on the pages, but a real cookie jar, real
/// form handling and the real Content-Security-Policy): sign in, create an authtoken, see
/// the endpoint an agent brings up with it, revoke it; a read-only user gets no forms.
#[tokio::test]
async fn in_chromium_an_admin_hands_out_an_authtoken_sees_its_endpoint_and_revokes_it() {
    let edge = TestEdge::start().await;
    set_password(&edge, &admin_id(&edge).await, PASSWORD).await;
    let tenant = edge.tenant("default").await;
    set_password(&edge, &tenant.read_only.user_id, PASSWORD).await;
    let browser = webdriver::Browser::start().await;

    browser.goto(&url(&edge, "/dashboard/")).await;
    browser.wait_for_text("h1", "Sign in").await;
    browser.screenshot_for_docs("sign-in").await;
    let email = browser.find("#email").await.unwrap();
    browser.type_into(&email, "admin").await;
    browser.type_into(&browser.find("#password").await.unwrap(), PASSWORD).await;
    browser.click(&browser.find("#submit").await.unwrap()).await;
    browser.wait_for_text("h1", "Overview").await;

    browser.goto(&url(&edge, "/dashboard/authtokens")).await;
    browser.type_into(&browser.find("#f-description").await.unwrap(), "laptop").await;
    browser.click(&browser.find("#create-submit").await.unwrap()).await;
    let secret = browser.wait_for_text("#secret", "cr_").await;
    let token = browser.text(&secret).await.trim().to_owned();
    browser.screenshot_for_docs("authtoken-created").await;

    let up = HttpUpstream::start().await;
    let mut config =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://chromium.warren.localhost")).unwrap());
    config.authtoken = token.clone();
    let mut agent = Agent::start(config);
    within("online", agent.wait_online()).await.unwrap();
    browser.goto(&url(&edge, "/dashboard/")).await;
    browser.wait_for_text("#endpoints", "https://chromium.warren.localhost").await;
    browser.screenshot_for_docs("overview").await;
    browser.goto(&url(&edge, "/dashboard/endpoints")).await;
    browser.wait_for_text("#items", "https://chromium.warren.localhost").await;

    let id = token_id(&token);
    browser.goto(&url(&edge, "/dashboard/authtokens")).await;
    let revoke = browser.find(&format!("tr[data-id=\"{id}\"] .act-delete")).await.expect("a revoke button");
    browser.click(&revoke).await;
    browser.wait_for_text("h1", "Authtokens").await;
    within("the session ends", edge.wait_sessions(0)).await;
    browser.goto(&url(&edge, "/dashboard/sessions")).await;
    browser.wait_for_text("#items", "None yet.").await;

    // Read-only: no create form.
    browser.click(&browser.find("#sign-out").await.unwrap()).await;
    browser.wait_for_text("h1", "Sign in").await;
    browser.type_into(&browser.find("#email").await.unwrap(), &tenant.read_only.email).await;
    browser.type_into(&browser.find("#password").await.unwrap(), PASSWORD).await;
    browser.click(&browser.find("#submit").await.unwrap()).await;
    browser.wait_for_text("h1", "Overview").await;
    browser.goto(&url(&edge, "/dashboard/authtokens")).await;
    browser.wait_for_text("h1", "Authtokens").await;
    assert!(browser.find("#create").await.is_none(), "no create form for read-only");
    browser.wait_for_text(".role", "read-only").await;
    browser.quit().await;
}

/// Single sign-on against a real provider (npm `oidc-provider`): a verified e-mail in an
/// allowed domain signs in, its user made on the spot with the default role; with SSO
/// required, passwords work only for the break-glass admin; a domain not on the list is
/// refused and no user is made.
#[tokio::test]
async fn single_sign_on_makes_allowed_users_just_in_time_and_refuses_other_domains() {
    use warren_edge::config::{DashboardSso, Role, SecretString};
    let (port, other_port) = (free_port(), free_port());
    let callback = |p: u16| format!("http://127.0.0.1:{p}/warren/oidc/callback");
    let op = oidc::OidcProvider::start_with_redirects(&[&callback(port), &callback(other_port)]).await;
    let sso = |domains: &[&str]| DashboardSso {
        issuer_url: op.issuer.clone(),
        client_id: "warren-web".into(),
        client_secret: SecretString("web-secret".into()),
        account: "default".into(),
        allowed_domains: domains.iter().map(|d| d.to_string()).collect(),
        default_role: Role::ReadOnly,
        required: true,
        break_glass: vec!["admin".into()],
    };
    let edge = TestEdge::start_with(|c| {
        c.api_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        c.dashboard_sso = Some(sso(&["example.test"]));
    })
    .await;

    let mut b = browser(&edge);
    let start = b.open(&url(&edge, "/dashboard/")).await;
    assert!(start.body.contains("href=\"/dashboard/sso\""), "the sign-in page offers SSO");
    // The provider's login and consent as alice (alice@example.test, verified).
    let page = b.sign_in(&op.issuer, &url(&edge, "/dashboard/sso")).await;
    assert_eq!(page.status, StatusCode::OK, "{}: {}", page.url, page.body);
    assert!(page.body.contains("<h1>Overview</h1>"), "{}", page.body);
    assert!(
        page.body.contains("alice@example.test")
            && page.body.contains("<span class=\"role\">read-only</span>")
    );
    assert!(b.cookie("127.0.0.1", "warren_oidc_dashboard").is_none(), "the flow's cookie is dropped");
    let (_, _, users) = edge.api("GET", "/users", Some(&edge.api_key), None).await;
    let alice =
        users["users"].as_array().unwrap().iter().find(|u| u["email"] == "alice@example.test").cloned();
    let alice = alice.expect("made just in time");
    assert_eq!(alice["role"], "read-only");
    // Signing in again finds the same user.
    b.submit_form(&page, "/dashboard/sign-out", &[]).await;
    let again = b.open(&url(&edge, "/dashboard/sso")).await;
    let again = if again.url.starts_with(&op.issuer) {
        b.sign_in(&op.issuer, &url(&edge, "/dashboard/sso")).await
    } else {
        again
    };
    assert!(again.body.contains("<h1>Overview</h1>"), "{}", again.body);
    assert_eq!(count(&edge, "/users", "users").await, users["users"].as_array().unwrap().len());

    // SSO required: a password is refused for alice, accepted for the break-glass admin.
    set_password(&edge, alice["id"].as_str().unwrap(), PASSWORD).await;
    set_password(&edge, &admin_id(&edge).await, PASSWORD).await;
    let mut c = browser(&edge);
    let p = sign_in(&mut c, &edge, "alice@example.test", PASSWORD).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.body.contains("Password sign-in is turned off"), "{}", p.body);
    let mut d = browser(&edge);
    assert_eq!(sign_in(&mut d, &edge, "admin", PASSWORD).await.status, StatusCode::OK, "break glass");

    // A `dashboard` IP restriction holds for the whole flow, the provider's callback included.
    let key = Some(edge.api_key.as_str());
    let (_, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({"description": "office"}))).await;
    let rule = json!({"ip_policy_id": pol["id"], "cidr": "203.0.113.0/24", "action": "allow"});
    assert_eq!(edge.api("POST", "/ip_policy_rules", key, Some(rule)).await.0, StatusCode::CREATED);
    let body = json!({"type": "dashboard", "ip_policy_ids": [pol["id"]], "enforced": true});
    let (s, _, x) = edge.api("POST", "/ip_restrictions", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{x}");
    for path in ["/dashboard/sso", "/warren/oidc/callback?state=s&code=c"] {
        let p = browser(&edge).get(&url(&edge, path), &[]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}: {}", p.body);
    }

    // Another edge allows only corp.example: alice is refused, nobody is made.
    let other = TestEdge::start_with(|c| {
        c.api_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], other_port)));
        c.dashboard_sso = Some(sso(&["corp.example"]));
    })
    .await;
    let before = count(&other, "/users", "users").await;
    let mut e = browser(&other);
    let p = e.sign_in(&op.issuer, &url(&other, "/dashboard/sso")).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(p.body.contains("alice@example.test may not use this dashboard"), "{}", p.body);
    assert!(e.cookie("127.0.0.1", "warren_session").is_none());
    assert_eq!(count(&other, "/users", "users").await, before);
}

/// The live traffic view: requests of the viewer's account only, newest first, with every
/// visitor-controlled field (path, user agent) escaped; nothing is recorded before someone
/// opens it.
#[tokio::test]
async fn the_live_traffic_view_shows_the_accounts_requests_escaped_and_no_other_accounts() {
    use http_body_util::BodyExt;
    let edge = TestEdge::start().await;
    set_password(&edge, &admin_id(&edge).await, PASSWORD).await;
    let up = HttpUpstream::start().await;
    let mut mine = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://live.warren.localhost")).unwrap()),
    );
    within("online", mine.wait_online()).await.unwrap();
    let other = edge.tenant("other").await;
    let mut config = other.agent_config(&edge);
    config
        .endpoints
        .push(EndpointConfig::http(&up.url(), Some("https://elsewhere.warren.localhost")).unwrap());
    let mut theirs = Agent::start(config);
    within("online", theirs.wait_online()).await.unwrap();

    let get = |host: &'static str, path: &'static str| {
        let edge = &edge;
        async move {
            let tls = tls_connect(edge.https_addr(), host, &edge.ca_pem, &[b"http/1.1"]).await;
            let mut send = http1(tls).await;
            let req = hyper::Request::get(path)
                .header("host", host)
                .header("user-agent", "<img src=x onerror=alert(1)>")
                .body(empty())
                .unwrap();
            let res = send.send_request(req).await.expect("response");
            let status = res.status();
            res.into_body().collect().await.expect("body");
            status
        }
    };
    // Before anyone watches: not recorded.
    assert_eq!(get("live.warren.localhost", "/before").await, StatusCode::OK);

    let mut b = browser(&edge);
    sign_in(&mut b, &edge, "admin", PASSWORD).await;
    let page = b.open(&url(&edge, "/dashboard/traffic")).await;
    assert_eq!(page.headers["refresh"], "5");
    assert!(page.body.contains("No requests since this view was opened."), "{}", page.body);

    assert_eq!(get("live.warren.localhost", "/hello?x=%3Cb%3E").await, StatusCode::OK);
    assert_eq!(get("elsewhere.warren.localhost", "/theirs").await, StatusCode::OK);
    let page = within("the request to show", async {
        loop {
            let page = b.open(&url(&edge, "/dashboard/traffic")).await;
            if page.body.contains("/hello?x=%3Cb%3E") {
                return page;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(page.body.contains("https://live.warren.localhost"));
    assert!(page.body.contains("&lt;img src=x onerror=alert(1)&gt;") && !page.body.contains("<img src=x"));
    assert!(!page.body.contains("/before"), "recording starts when the view is opened");
    assert!(!page.body.contains("elsewhere") && !page.body.contains("/theirs"), "another account's traffic");

    // The overview counts the account's requests (2 of ours, not theirs) and reloads itself.
    let overview = b.open(&url(&edge, "/dashboard/")).await;
    assert_eq!(overview.headers["refresh"], "10");
    assert!(overview.body.contains("id=\"requests\"><b>2</b>"), "{}", overview.body);
    assert!(overview.body.contains("id=\"errors\"><b>0</b>"), "{}", overview.body);
}

/// Admins change a user's role and rotate an API key from the dashboard: the role holds at
/// once (the user's next page), the rotated key stops working and its successor works.
#[tokio::test]
async fn admins_change_roles_and_rotate_api_keys() {
    let edge = TestEdge::start().await;
    let tenant = edge.tenant("default").await;
    set_password(&edge, &admin_id(&edge).await, PASSWORD).await;
    set_password(&edge, &tenant.read_only.user_id, PASSWORD).await;
    let mut viewer = browser(&edge);
    sign_in(&mut viewer, &edge, &tenant.read_only.email, PASSWORD).await;
    let page = viewer.open(&url(&edge, "/dashboard/authtokens")).await;
    assert!(!page.body.contains("id=\"create\""));

    let mut b = browser(&edge);
    sign_in(&mut b, &edge, "admin", PASSWORD).await;
    let users = b.open(&url(&edge, "/dashboard/users")).await;
    let me = tenant.read_only.user_id.as_str();
    assert!(
        !users.body.contains(&format!("/dashboard/users/{me}/read-only")),
        "no button for the role they have"
    );
    let after = b.submit_form(&users, &format!("/dashboard/users/{me}/developer"), &[]).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
    let page = viewer.open(&url(&edge, "/dashboard/authtokens")).await;
    assert!(page.body.contains("id=\"create\""), "a developer now: {}", page.body);
    assert!(page.body.contains("<span class=\"role\">developer</span>"));

    // Rotation: the old key stops, the new one (shown once) works.
    let old = tenant.developer.api_key.clone();
    let keys = b.open(&url(&edge, "/dashboard/api-keys")).await;
    let rotated = b
        .submit_form(&keys, &format!("/dashboard/api-keys/{}/rotate", tenant.developer.api_key_id), &[])
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    let at = rotated.body.find("<pre id=\"secret\">").unwrap() + "<pre id=\"secret\">".len();
    let new = rotated.body[at..at + rotated.body[at..].find('<').unwrap()].to_owned();
    assert_eq!(edge.api("GET", "/credentials", Some(&old), None).await.0, StatusCode::UNAUTHORIZED);
    let (s, _, v) = edge.api("GET", "/api_keys", Some(&new), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let successor =
        v["keys"].as_array().unwrap().iter().find(|k| new.starts_with(k["id"].as_str().unwrap())).cloned();
    let successor = successor.expect("the new key is listed");
    assert_eq!(successor["owner_id"], tenant.developer.user_id.as_str(), "same owner: same rights, no more");
    assert_eq!(successor["description"], format!("{}'s key", tenant.developer.email));
}

/// Single sign-on in real Chromium through npm `oidc-provider`'s own login and consent pages;
/// then, in the same browser, a `dashboard` IP restriction that excludes it and repeated
/// wrong passwords that lock a user out.
#[tokio::test]
async fn in_chromium_single_sign_on_works_and_lockout_and_ip_restrictions_refuse() {
    use warren_edge::config::{DashboardSso, Role, SecretString};
    let port = free_port();
    let op =
        oidc::OidcProvider::start_with_redirects(&[&format!("http://127.0.0.1:{port}/warren/oidc/callback")])
            .await;
    let edge = TestEdge::start_with(|c| {
        c.api_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        c.dashboard_sso = Some(DashboardSso {
            issuer_url: op.issuer.clone(),
            client_id: "warren-web".into(),
            client_secret: SecretString("web-secret".into()),
            account: "default".into(),
            allowed_domains: vec!["example.test".into()],
            default_role: Role::Developer,
            required: false,
            break_glass: vec![],
        });
    })
    .await;
    let tenant = edge.tenant("default").await;
    set_password(&edge, &tenant.read_only.user_id, PASSWORD).await;
    let browser = webdriver::Browser::start().await;

    browser.goto(&url(&edge, "/dashboard/")).await;
    browser.wait_for_text("h1", "Sign in").await;
    browser.click(&browser.find("#sso").await.expect("an SSO button")).await;
    // The provider's pages.
    let login = crate::within("the provider's login form", async {
        loop {
            if let Some(e) = browser.find("input[name=login]").await {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    browser.type_into(&login, "carol").await;
    browser.type_into(&browser.find("input[name=password]").await.unwrap(), "any password").await;
    browser.click(&browser.find("button[type=submit]").await.unwrap()).await;
    let consent = browser.wait_for_text("button[type=submit]", "Continue").await;
    browser.click(&consent).await;
    browser.wait_for_text("h1", "Overview").await;
    browser.wait_for_text("#who", "carol@example.test").await;
    browser.wait_for_text(".role", "developer").await;

    // Locked out after repeated wrong passwords, in the browser too.
    browser.click(&browser.find("#sign-out").await.unwrap()).await;
    for _ in 0..warren_store::dashboard::MAX_FAILED_SIGN_INS {
        browser.wait_for_text("h1", "Sign in").await;
        browser.type_into(&browser.find("#email").await.unwrap(), &tenant.read_only.email).await;
        browser.type_into(&browser.find("#password").await.unwrap(), "not the password").await;
        browser.click_and_wait_for_page(&browser.find("#submit").await.unwrap()).await;
        browser.wait_for_text("#notice", "Wrong e-mail or password.").await;
    }
    browser.type_into(&browser.find("#email").await.unwrap(), &tenant.read_only.email).await;
    browser.type_into(&browser.find("#password").await.unwrap(), PASSWORD).await;
    browser.click(&browser.find("#submit").await.unwrap()).await;
    browser.wait_for_text("#notice", "locked out until").await;

    // Outside a dashboard IP restriction: refused, SSO included.
    let key = Some(edge.api_key.as_str());
    let (_, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({"description": "office"}))).await;
    let rule = json!({"ip_policy_id": pol["id"], "cidr": "203.0.113.0/24", "action": "allow"});
    assert_eq!(edge.api("POST", "/ip_policy_rules", key, Some(rule)).await.0, StatusCode::CREATED);
    let body = json!({"type": "dashboard", "ip_policy_ids": [pol["id"]], "enforced": true});
    assert_eq!(edge.api("POST", "/ip_restrictions", key, Some(body)).await.0, StatusCode::CREATED);
    browser.goto(&url(&edge, "/dashboard/sso")).await;
    browser.wait_for_text("#notice", "not available from 127.0.0.1").await;
    browser.quit().await;
}
