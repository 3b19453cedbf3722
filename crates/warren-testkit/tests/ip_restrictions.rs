//! IP policies and restrictions through the API, enforced on agent sessions and API calls.
//! Every test client is on 127.0.0.1, so a policy that allows only 10.0.0.0/8 shuts it out.

use hyper::StatusCode;
use serde_json::json;
use warren_agent::{Agent, AgentError, EndpointConfig};
use warren_testkit::*;

/// A policy allowing only 10.0.0.0/8 (so not loopback), and a restriction of `kind` using it.
async fn corp_only(edge: &TestEdge, kind: &str, enforced: bool) -> String {
    let key = Some(edge.api_key.as_str());
    let (s, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({"description": "corp"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{pol}");
    let body = json!({"ip_policy_id": pol["id"], "cidr": "10.0.0.0/8", "action": "allow"});
    let (s, _, rule) = edge.api("POST", "/ip_policy_rules", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");
    let (s, _, bad) = edge
        .api(
            "POST",
            "/ip_policy_rules",
            key,
            Some(json!({"ip_policy_id": pol["id"], "cidr": "10.0.0.1/8", "action": "allow"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "host bits set: {bad}");
    let body = json!({"type": kind, "enforced": enforced, "ip_policy_ids": [pol["id"]]});
    let (s, _, x) = edge.api("POST", "/ip_restrictions", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{x}");
    assert_eq!(x["ip_policies"][0]["id"], pol["id"]);
    x["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_agent_from_a_denied_address_never_gets_to_bind() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let x = corp_only(&edge, "agent", true).await;
    let ep = EndpointConfig::http(&up.url(), Some("https://denied.warren.localhost")).unwrap();
    let mut agent = Agent::start(edge.agent_with(ep.clone()));
    let err = within("refused", agent.wait_online()).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Auth(m) if m.contains("not allowed by IP restriction") && m.contains(&x) && m.contains("127.0.0.1")),
        "{err:?}"
    );
    assert_eq!(edge.edge().session_count(), 0);
    let (status, _, _) = https_get(&edge, "denied.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was bound");

    // Log-only: the same agent is let in (and the edge logs it).
    let (s, _, _) = edge
        .api("PATCH", &format!("/ip_restrictions/{x}"), Some(&edge.api_key), Some(json!({"enforced": false})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut agent = Agent::start(edge.agent_with(ep));
    within("log-only lets it in", agent.wait_online()).await.unwrap();
}

#[tokio::test]
async fn api_calls_from_a_denied_address_get_403_and_log_only_allows() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let x = corp_only(&edge, "api", false).await;
    let (s, _, list) = edge.api("GET", "/ip_restrictions", key, None).await;
    assert_eq!(s, StatusCode::OK, "log-only allows: {list}");
    assert_eq!(list["ip_restrictions"][0]["enforced"], false);
    let (s, _, _) =
        edge.api("PATCH", &format!("/ip_restrictions/{x}"), key, Some(json!({"enforced": true}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = edge.api("GET", "/credentials", key, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body["msg"].as_str().unwrap().contains(&x), "{body}");
    // Agents are not affected by an api restriction.
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap()));
    within("agent unaffected", agent.wait_online()).await.unwrap();
}

#[tokio::test]
async fn ip_resources_page_get_update_delete_and_need_admin() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    for i in 0..3 {
        let (s, _, _) =
            edge.api("POST", "/ip_policies", key, Some(json!({"description": format!("p{i}")}))).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, _, page) = edge.api("GET", "/ip_policies?limit=2", key, None).await;
    assert_eq!(page["ip_policies"].as_array().unwrap().len(), 2);
    let next = page["next_page_uri"].as_str().expect("a second page").to_owned();
    let (_, _, page2) = edge.api("GET", &next, key, None).await;
    assert_eq!(page2["ip_policies"].as_array().unwrap().len(), 1);
    assert!(page2["next_page_uri"].is_null());
    let id = page2["ip_policies"][0]["id"].as_str().unwrap().to_owned();
    let (s, _, p) =
        edge.api("PATCH", &format!("/ip_policies/{id}"), key, Some(json!({"description": "renamed"}))).await;
    assert_eq!((s, p["description"].as_str()), (StatusCode::OK, Some("renamed")));
    let (s, _, p) =
        edge.api("PATCH", &format!("/ip_policies/{id}"), key, Some(json!({"metadata": "m"}))).await;
    assert_eq!(
        (s, p["description"].as_str(), p["metadata"].as_str()),
        (StatusCode::OK, Some("renamed"), Some("m")),
        "fields left out are kept"
    );

    // Rules: get and update in place; a bad network is refused.
    let body = json!({"ip_policy_id": id, "cidr": "192.0.2.0/24", "action": "deny", "metadata": "r"});
    let (s, _, r) = edge.api("POST", "/ip_policy_rules", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let rule = format!("/ip_policy_rules/{}", r["id"].as_str().unwrap());
    let (s, _, got) = edge.api("GET", &rule, key, None).await;
    assert_eq!((s, &got), (StatusCode::OK, &r));
    let (s, _, r2) = edge.api("PATCH", &rule, key, Some(json!({"cidr": "2001:db8::/32"}))).await;
    assert_eq!(
        (s, r2["cidr"].as_str(), r2["action"].as_str()),
        (StatusCode::OK, Some("2001:db8::/32"), Some("deny"))
    );
    let (s, _, e) = edge.api("PATCH", &rule, key, Some(json!({"cidr": "300.0.0.0/8"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, _, _) = edge.api("DELETE", &rule, key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = edge.api("DELETE", &format!("/ip_policies/{id}"), key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = edge.api("GET", &format!("/ip_policies/{id}"), key, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A developer can read but not change them.
    let (s, _, user) =
        edge.api("POST", "/users", key, Some(json!({"email": "d@example.com", "role": "developer"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, _, k) = edge.api("POST", "/api_keys", key, Some(json!({"owner_id": user["id"]}))).await;
    let dev = k["token"].as_str();
    let (s, _, _) = edge.api("GET", "/ip_policies", dev, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = edge.api("POST", "/ip_policies", dev, Some(json!({}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, _, body) =
        edge.api("POST", "/ip_restrictions", key, Some(json!({"type": "ssh", "ip_policy_ids": []}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn an_authtokens_own_ip_policy_refuses_sessions_from_elsewhere() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let (_, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({"description": "corp"}))).await;
    let rule = json!({"ip_policy_id": pol["id"], "cidr": "10.0.0.0/8", "action": "allow"});
    let (s, _, _) = edge.api("POST", "/ip_policy_rules", key, Some(rule)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, e) =
        edge.api("POST", "/credentials", key, Some(json!({"ip_policy_ids": ["ipp_missing"]}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    let (s, _, cred) =
        edge.api("POST", "/credentials", key, Some(json!({"ip_policy_ids": [pol["id"]]}))).await;
    assert_eq!(s, StatusCode::CREATED, "{cred}");
    assert_eq!(cred["ip_policy_ids"], json!([pol["id"]]));

    let up = HttpUpstream::start().await;
    let mut cfg = edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap());
    cfg.authtoken = cred["token"].as_str().unwrap().to_owned();
    let err = within("refused", Agent::start(cfg.clone()).wait_online()).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Auth(m) if m.contains("ERR_WARREN_IP_RESTRICTED") && m.contains("127.0.0.1")),
        "{err:?}"
    );
    assert_eq!(edge.edge().session_count(), 0);
    // The policy is in use, so it cannot be deleted from under the token.
    let (s, _, e) =
        edge.api("DELETE", &format!("/ip_policies/{}", pol["id"].as_str().unwrap()), key, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");

    let path = format!("/credentials/{}", cred["id"].as_str().unwrap());
    let (s, _, _) = edge.api("PATCH", &path, key, Some(json!({"ip_policy_ids": []}))).await;
    assert_eq!(s, StatusCode::OK);
    let mut agent = Agent::start(cfg);
    within("allowed once the policy is removed", agent.wait_online()).await.unwrap();
}

#[tokio::test]
async fn tightening_an_authtoken_restarts_its_live_sessions_under_the_new_rules() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let (s, _, cred) = edge.api("POST", "/credentials", key, Some(json!({"acl": ["bind:*"]}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let up = HttpUpstream::start().await;
    let mut cfg =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://tight.warren.localhost")).unwrap());
    cfg.authtoken = cred["token"].as_str().unwrap().to_owned();
    let mut agent = Agent::start(cfg);
    within("online", agent.wait_online()).await.unwrap();
    let path = format!("/credentials/{}", cred["id"].as_str().unwrap());
    // A description change leaves the session alone.
    let (s, _, _) = edge.api("PATCH", &path, key, Some(json!({"description": "renamed"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(edge.edge().session_count(), 1);
    // An ACL that no longer covers the name ends the session; the agent's rebind is refused.
    let (s, _, _) =
        edge.api("PATCH", &path, key, Some(json!({"acl": ["bind:other.warren.localhost"]}))).await;
    assert_eq!(s, StatusCode::OK);
    loop {
        match within("status change", agent.next_status()).await {
            warren_agent::Status::Reconnecting { error, .. } if error.contains("may not bind") => break,
            _ => {}
        }
    }
    let (status, _, _) = https_get(&edge, "tight.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn visitors_from_outside_an_endpoints_restriction_are_refused_and_log_only_lets_them_through() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (echo, _task) = tcp_echo().await;
    let mut web = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://guarded.warren.localhost")).unwrap()),
    );
    within("web online", web.wait_online()).await.unwrap();
    let mut tcp = Agent::start(edge.agent_with(EndpointConfig::tcp(&echo.to_string(), None).unwrap()));
    let port = url_port(&within("tcp online", tcp.wait_online()).await.unwrap()[0]);
    let (s, _, _) = https_get(&edge, "guarded.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::OK, "no restriction yet");

    let x = corp_only(&edge, "endpoints", true).await;
    let (s, _, body) = https_get(&edge, "guarded.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("ERR_WARREN_IP_RESTRICTED") && body.contains("127.0.0.1"), "{body}");
    let served = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(served, 1, "the refused request never reached the upstream");
    // A tcp visitor is closed without a byte.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 1];
    let n = within("closed", tokio::io::AsyncReadExt::read(&mut conn, &mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);

    // Log-only: through again, at once (the API change drops the edge's cached rules).
    let (s, _, _) = edge
        .api("PATCH", &format!("/ip_restrictions/{x}"), Some(&edge.api_key), Some(json!({"enforced": false})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = https_get(&edge, "guarded.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello from upstream"));
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(echo_roundtrip(&mut conn, b"ping").await, b"ping");
}

/// Changing an IP policy's rules holds at once for what was admitted or bound under it: the
/// sessions of authtokens that use the policy, and endpoints whose `restrict-ips` names it,
/// are restarted and bound again under the new rules. Before, they kept the old rules until
/// they happened to reconnect.
#[tokio::test]
async fn changing_a_policys_rules_rechecks_the_sessions_and_endpoints_that_use_it() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let (_, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({"description": "office"}))).await;
    let body = json!({"ip_policy_id": pol["id"], "cidr": "127.0.0.0/8", "action": "allow"});
    let (s, _, rule) = edge.api("POST", "/ip_policy_rules", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");

    // A visitor-side policy naming it.
    let up = HttpUpstream::start().await;
    let mut ep = EndpointConfig::http(&up.url(), Some("https://office.warren.localhost")).unwrap();
    let policy = json!({"on_http_request": [{"actions": [{"type": "restrict-ips", "config": {"ip_policies": [pol["id"]]}}]}]});
    ep.traffic_policy = Some(serde_json::Value::String(policy.to_string()));
    let mut web = Agent::start(edge.agent_with(ep));
    within("online", web.wait_online()).await.unwrap();
    let (status, _, _) = https_get(&edge, "office.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::OK, "127.0.0.1 is in the policy");

    // An authtoken restricted to it.
    let body = json!({"description": "office only", "ip_policy_ids": [pol["id"]]});
    let (_, _, cred) = edge.api("POST", "/credentials", key, Some(body)).await;
    let raw = RawSession::connect(&edge, true).await;
    assert!(raw.auth(cred["token"].as_str().unwrap()).await.error.is_empty());

    // The office moves: loopback is no longer in the policy.
    let body = json!({"cidr": "203.0.113.0/24"});
    let (s, _, _) = edge
        .api("PATCH", &format!("/ip_policy_rules/{}", rule["id"].as_str().unwrap()), key, Some(body))
        .await;
    assert_eq!(s, StatusCode::OK);
    within("the token's session restarts", raw.mux.closed()).await;
    let again = RawSession::connect(&edge, true).await;
    assert!(again.auth(cred["token"].as_str().unwrap()).await.error.contains("ERR_WARREN_IP_RESTRICTED"));
    within("the endpoint is bound again under the new rules", async {
        loop {
            let (status, _, _) = https_get(&edge, "office.warren.localhost", "/").await;
            if status == StatusCode::FORBIDDEN {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// `Extra.IPPolicyRef` of a Bind, as ngrok-go sends it: visitors outside the policy are
/// refused at the edge (before, it was read and dropped), those inside reach the agent.
#[tokio::test]
async fn a_binds_ip_policy_ref_refuses_visitors_outside_the_policy() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let mut policies = Vec::new();
    for cidr in ["10.0.0.0/8", "127.0.0.0/8"] {
        let (_, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({"description": cidr}))).await;
        let rule = json!({"ip_policy_id": pol["id"], "cidr": cidr, "action": "allow"});
        let (s, _, _) = edge.api("POST", "/ip_policy_rules", key, Some(rule)).await;
        assert_eq!(s, StatusCode::CREATED);
        policies.push(pol["id"].as_str().unwrap().to_owned());
    }
    let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
    for (host, policy) in
        [("ref-corp.warren.localhost", &policies[0]), ("ref-local.warren.localhost", &policies[1])]
    {
        let bind = warren_proto::Bind {
            client_id: host.into(),
            proto: "https".into(),
            opts: json!({ "Domain": host }),
            extra: warren_proto::BindExtra { ip_policy_ref: policy.clone(), ..Default::default() },
            ..Default::default()
        };
        let r: warren_proto::BindResp = raw.call(warren_proto::StreamType::Bind, "Bind", &bind).await;
        assert!(r.error.is_empty(), "{}", r.error);
    }
    let (s, _, body) = https_get(&edge, "ref-corp.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "127.0.0.1 is outside 10/8: {body}");
    // Inside the policy the request goes on to the agent (this raw session does not serve
    // it, so the edge answers 502 instead of 403).
    let (s, _, body) = https_get(&edge, "ref-local.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    let unknown = warren_proto::Bind {
        client_id: "x".into(),
        proto: "https".into(),
        opts: json!({ "Domain": "ref-x.warren.localhost" }),
        extra: warren_proto::BindExtra { ip_policy_ref: "ipp_nope".into(), ..Default::default() },
        ..Default::default()
    };
    let r: warren_proto::BindResp = raw.call(warren_proto::StreamType::Bind, "Bind", &unknown).await;
    assert!(r.error.contains("ipp_nope"), "an unknown policy refuses the Bind: {}", r.error);
}
