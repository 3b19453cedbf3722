//! Isolation between accounts and between roles: what one tenant or one user may never do to
//! another. Each test is an attack from the outside review, by another account or by a user
//! of a lesser role, through the REST API and the agent protocol.

use hyper::StatusCode;
use serde_json::{Value, json};
use warren_agent::{Agent, EndpointConfig};
use warren_proto::error_codes as codes;
use warren_testkit::*;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// An admin creates a read-only user with a key and an agent of theirs is online; the admin
/// removes the user: the key stops working at once (it does not become an admin key, as it
/// did when removal left it without an owner), the user's authtoken is revoked and the
/// agent's session ends.
#[tokio::test]
async fn removing_a_user_revokes_their_keys_authtokens_and_sessions() {
    let edge = TestEdge::start().await;
    let t = edge.tenant("acme").await;
    let reader = Some(t.read_only.api_key.as_str());
    let (status, _, body) =
        edge.api("POST", "/users", reader, Some(json!({"email": "x@acme.example", "role": "admin"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let up = HttpUpstream::start().await;
    let mut config =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://reader.warren.localhost")).unwrap());
    config.authtoken = t.read_only.authtoken.clone();
    let mut agent = Agent::start(config);
    within("the read-only user's agent is online", agent.wait_online()).await.unwrap();

    let admin = Some(t.admin.api_key.as_str());
    let (status, _, body) = edge.api("DELETE", &format!("/users/{}", t.read_only.user_id), admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for (method, path, body) in [
        ("POST", "/users", Some(json!({"email": "y@acme.example", "role": "admin"}))),
        ("POST", "/api_keys", Some(json!({"description": "forever"}))),
        ("GET", "/credentials", None),
    ] {
        let (status, _, answer) = edge.api(method, path, reader, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with the removed user's key: {answer}");
    }
    let (status, _, body) =
        edge.api("GET", &format!("/credentials/{}", t.read_only.credential_id), admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the authtoken went with its owner: {body}");
    within("the session ends", async {
        loop {
            let (status, _, _) = https_get(&edge, "reader.warren.localhost", "/").await;
            if status == StatusCode::NOT_FOUND {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let raw = RawSession::connect(&edge, true).await;
    let r = raw.auth(&t.read_only.authtoken).await;
    assert!(r.error.contains(codes::AUTHTOKEN_INVALID), "{r:?}");
    drop(agent);
}

/// Account A reserves `*.team.<base>` and `*.shop.example.com`. Account B can reserve no
/// name under them (at any depth), cannot bind one, and A's own binds work. A wildcard of A's
/// over B's live `tls://` name is refused too. Before, B's reservations were all 201 and B's
/// content was served under A's domain.
#[tokio::test]
async fn no_account_gets_a_name_inside_another_accounts_wildcard() {
    let edge = TestEdge::start().await;
    let (a, b) = (edge.tenant("a").await, edge.tenant("b").await);
    let (ka, kb) = (Some(a.admin.api_key.as_str()), Some(b.admin.api_key.as_str()));
    for d in ["*.team.warren.localhost", "*.shop.example.com"] {
        let (status, _, body) = edge.api("POST", "/reserved_domains", ka, Some(json!({"domain": d}))).await;
        assert_eq!(status, StatusCode::CREATED, "{d}: {body}");
    }
    for d in [
        "app.team.warren.localhost",
        "*.sub.team.warren.localhost",
        "pay.shop.example.com",
        "a.b.team.warren.localhost",
    ] {
        let (status, _, body) = edge.api("POST", "/reserved_domains", kb, Some(json!({"domain": d}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{d}: {body}");
        assert!(s(&body["msg"]).contains("another account"), "{body}");
    }
    let raw_b = RawSession::authenticated(&edge, &b.developer.authtoken).await;
    for (proto, host) in [("https", "app.team.warren.localhost"), ("tls", "deep.x.team.warren.localhost")] {
        let r = raw_b.bind(&format!("b-{proto}"), proto, json!({"Domain": host})).await;
        assert!(r.error.contains(codes::RESERVED_ELSEWHERE), "{proto}://{host}: {r:?}");
    }
    let raw_a = RawSession::authenticated(&edge, &a.developer.authtoken).await;
    // (Plain http: the edge's *.warren.localhost certificate covers one level only.)
    let r = raw_a.bind("a-app", "http", json!({"Domain": "app.team.warren.localhost"})).await;
    assert!(r.error.is_empty(), "A's own name: {r:?}");

    let r = raw_b.bind("b-live", "tls", json!({"Domain": "live.b-side.warren.localhost"})).await;
    assert!(r.error.is_empty(), "{r:?}");
    let (status, _, body) =
        edge.api("POST", "/reserved_domains", ka, Some(json!({"domain": "*.b-side.warren.localhost"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "a wildcard over B's live tls name: {body}");
}

/// Developers may reserve and upload; they may change or release only what they made.
/// An admin's reserved domain and uploaded certificate cannot be deleted, re-pointed or
/// detached by a developer (before, a developer key could delete them, and re-point the
/// domain to a certificate of its own). Another account sees none of them.
#[tokio::test]
async fn developers_change_only_their_own_reservations_and_certificates() {
    let edge = TestEdge::start().await;
    let (t, other) = (edge.tenant("corp").await, edge.tenant("elsewhere").await);
    let (admin, dev) = (Some(t.admin.api_key.as_str()), Some(t.developer.api_key.as_str()));
    let ca = TestCa::new("corp CA");
    let upload = |name: &str| {
        let (chain, key, _) = ca.leaf(name);
        json!({"certificate_pem": chain, "private_key_pem": key})
    };
    let (status, _, cert) =
        edge.api("POST", "/tls_certificates", admin, Some(upload("pay.corp.example"))).await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let body = json!({"domain": "pay.corp.example", "certificate_id": cert["id"]});
    let (status, _, rd) = edge.api("POST", "/reserved_domains", admin, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{rd}");
    let (status, _, addr) = edge.api("POST", "/reserved_addrs", admin, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{addr}");

    let (status, _, dev_cert) =
        edge.api("POST", "/tls_certificates", dev, Some(upload("pay.corp.example"))).await;
    assert_eq!(status, StatusCode::CREATED, "developers may upload: {dev_cert}");
    let (rd_id, cert_id, addr_id) = (s(&rd["id"]), s(&cert["id"]), s(&addr["id"]));
    for (method, path, body) in [
        ("DELETE", format!("/reserved_domains/{rd_id}"), None),
        ("PATCH", format!("/reserved_domains/{rd_id}"), Some(json!({"certificate_id": dev_cert["id"]}))),
        ("PATCH", format!("/reserved_domains/{rd_id}"), Some(json!({"description": "mine now"}))),
        ("DELETE", format!("/reserved_domains/{rd_id}/certificate"), None),
        ("DELETE", format!("/tls_certificates/{cert_id}"), None),
        ("PATCH", format!("/tls_certificates/{cert_id}"), Some(json!({"description": "mine now"}))),
        ("DELETE", format!("/reserved_addrs/{addr_id}"), None),
        ("PATCH", format!("/reserved_addrs/{addr_id}"), Some(json!({"description": "mine now"}))),
    ] {
        let (status, _, answer) = edge.api(method, &path, dev, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "developer {method} {path}: {answer}");
        let (status, _, answer) = edge.api(method, &path, Some(&other.admin.api_key), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another account's admin {method} {path}: {answer}");
    }
    let (_, _, still) = edge.api("GET", &format!("/reserved_domains/{rd_id}"), admin, None).await;
    assert_eq!(still["certificate"]["id"], cert["id"], "unchanged: {still}");

    // What the developer made is theirs to change and release.
    let (status, _, own) =
        edge.api("POST", "/reserved_domains", dev, Some(json!({"domain": "dev.corp.example"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    let (status, _, _) = edge.api("DELETE", &format!("/reserved_domains/{}", s(&own["id"])), dev, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) =
        edge.api("DELETE", &format!("/tls_certificates/{}", s(&dev_cert["id"])), dev, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // And the admin may change anything.
    let (status, _, _) = edge.api("DELETE", &format!("/reserved_addrs/{addr_id}"), admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Resuming a session (which closes it and hands its names over) needs the same authtoken
/// and the cookie the edge gave that session, not just its id, which any API reader of the
/// account sees. Before, a developer could take over another user's live endpoint this way.
#[tokio::test]
async fn only_the_holder_of_a_sessions_cookie_can_resume_it() {
    let edge = TestEdge::start().await;
    let t = edge.tenant("resume").await;
    let mut victim = hostile::Hostile::connect(&edge).await;
    let auth = victim.auth(1, &t.admin.authtoken).await;
    assert!(auth.error.is_empty(), "{auth:?}");
    let cookie = auth.extra.cookie.clone().expect("the edge gives a resume cookie").0;
    let bind = json!({"Id": "v", "Proto": "https", "Opts": {"Domain": "victim-app.warren.localhost"}});
    victim.open_rpc(3, 1, &bind).await.unwrap();
    let r: warren_proto::BindResp = warren_proto::decode("BindResp", &victim.reply(3).await).unwrap();
    assert!(r.error.is_empty(), "{r:?}");
    let (_, _, sessions) = edge.api("GET", "/tunnel_sessions", Some(&t.developer.api_key), None).await;
    assert!(
        sessions.to_string().contains(&auth.client_id),
        "the developer can see the session id: {sessions}"
    );

    // Another user's token with the id, with no cookie and with a made-up one.
    for (token, cookie) in [
        (&t.developer.authtoken, String::new()),
        (&t.developer.authtoken, "made-up".to_owned()),
        // The right cookie with another authtoken is not enough either.
        (&t.developer.authtoken, cookie.clone()),
    ] {
        let raw = RawSession::connect(&edge, true).await;
        let body = json!({"Version": ["3"], "ClientId": auth.client_id, "Extra": {"AuthToken": token, "Cookie": cookie}});
        let reply = raw.rpc_raw(0, body.to_string().as_bytes()).await.unwrap();
        let resp: warren_proto::AuthResp = warren_proto::decode("AuthResp", &reply).unwrap();
        assert!(resp.error.is_empty(), "{resp:?}");
        let r = raw.bind_https("steal", "victim-app.warren.localhost").await;
        assert!(r.error.contains(codes::ENDPOINT_IN_USE), "the name stays the victim's: {r:?}");
    }
    // The attempts' sessions end; the victim's stays.
    edge.wait_sessions(1).await;
    // The victim's own reconnect, with its cookie, does take it over.
    let raw = RawSession::connect(&edge, true).await;
    let body = json!({"Version": ["3"], "ClientId": auth.client_id, "Extra": {"AuthToken": t.admin.authtoken, "Cookie": cookie}});
    let reply = raw.rpc_raw(0, body.to_string().as_bytes()).await.unwrap();
    let resp: warren_proto::AuthResp = warren_proto::decode("AuthResp", &reply).unwrap();
    assert!(resp.error.is_empty(), "{resp:?}");
    let r = raw.bind_https("back", "victim-app.warren.localhost").await;
    assert!(r.error.is_empty(), "resumed: {r:?}");
    victim.until_closed().await;
}

/// An admin limits what a developer's authtokens may do: bind rules they stay within and IP
/// policies they must pass. The developer cannot create or change a token beyond that (before,
/// `PATCH {"acl":[],"ip_policy_ids":[]}` lifted everything), and tokens made before the limit
/// are held to it at Bind and at Auth. Only an admin widens it.
#[tokio::test]
async fn developers_cannot_lift_the_limits_an_admin_set_on_their_authtokens() {
    let edge = TestEdge::start().await;
    let t = edge.tenant("limits").await;
    let (admin, dev) = (Some(t.admin.api_key.as_str()), Some(t.developer.api_key.as_str()));
    let (_, _, policy) =
        edge.api("POST", "/ip_policies", admin, Some(json!({"description": "office"}))).await;
    let rule = json!({"ip_policy_id": policy["id"], "cidr": "127.0.0.0/8", "action": "allow"});
    let (status, _, _) = edge.api("POST", "/ip_policy_rules", admin, Some(rule)).await;
    assert_eq!(status, StatusCode::CREATED);
    let limits =
        json!({"authtoken_acl": ["bind:*.team.warren.localhost"], "authtoken_ip_policy_ids": [policy["id"]]});
    let (status, _, user) =
        edge.api("PATCH", &format!("/users/{}", t.developer.user_id), admin, Some(limits.clone())).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["authtoken_acl"], json!(["bind:*.team.warren.localhost"]));
    let (status, _, body) = edge
        .api("PATCH", &format!("/users/{}", t.developer.user_id), dev, Some(json!({"authtoken_acl": null})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins change limits: {body}");

    for (acl, policies) in [
        (json!([]), json!([policy["id"]])),
        (json!(["bind:*"]), json!([policy["id"]])),
        (json!(["bind:other.warren.localhost"]), json!([policy["id"]])),
        (json!(["bind:app.team.warren.localhost"]), json!([])),
    ] {
        let body = json!({"description": "wider", "acl": acl, "ip_policy_ids": policies});
        let (status, _, answer) = edge.api("POST", "/credentials", dev, Some(body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "create {acl} {policies}: {answer}");
        let body = json!({"acl": acl, "ip_policy_ids": policies});
        let (status, _, answer) =
            edge.api("PATCH", &format!("/credentials/{}", t.developer.credential_id), dev, Some(body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "update to {acl} {policies}: {answer}");
    }
    let body = json!({"acl": ["bind:app.team.warren.localhost"], "ip_policy_ids": [policy["id"]]});
    let (status, _, made) = edge.api("POST", "/credentials", dev, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "within the limits: {made}");

    // The developer's older token, which has no ACL, is held to the limit at Bind.
    let raw = RawSession::authenticated(&edge, &t.developer.authtoken).await;
    let r = raw.bind_https("out", "elsewhere.warren.localhost").await;
    assert!(r.error.contains("its owner's authtokens may bind only"), "{r:?}");
    let inside = raw.bind("in", "http", json!({"Domain": "api.team.warren.localhost"})).await;
    assert!(inside.error.is_empty(), "{inside:?}");
    // And at Auth: a policy that does not allow loopback refuses the user's sessions.
    let (_, _, strict) =
        edge.api("POST", "/ip_policies", admin, Some(json!({"description": "nowhere"}))).await;
    let rule = json!({"ip_policy_id": strict["id"], "cidr": "203.0.113.0/24", "action": "allow"});
    edge.api("POST", "/ip_policy_rules", admin, Some(rule)).await;
    let limits = json!({"authtoken_ip_policy_ids": [strict["id"]]});
    let (status, _, _) =
        edge.api("PATCH", &format!("/users/{}", t.developer.user_id), admin, Some(limits)).await;
    assert_eq!(status, StatusCode::OK);
    within("the session under the old limits ends", raw.mux.closed()).await;
    let again = RawSession::connect(&edge, true).await;
    let r = again.auth(&t.developer.authtoken).await;
    assert!(r.error.contains(codes::IP_RESTRICTED), "{r:?}");
}
