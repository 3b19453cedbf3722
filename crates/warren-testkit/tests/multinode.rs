//! Two edge nodes on one PostgreSQL database: a name bound on one is refused on the other,
//! either node's API lists and stops the other's sessions, and a node that shuts down frees
//! its names.

use hyper::StatusCode;
use warren_agent::{Agent, AgentError, EndpointConfig, Status};
use warren_testkit::*;

#[tokio::test]
async fn two_nodes_share_names_sessions_and_commands_through_postgresql() {
    let Some(db) = TestPostgres::create().await else { return };
    let url = db.url.clone();
    let mut a = TestEdge::start_with(|c| c.database_url = Some(warren_edge::config::DatabaseUrl(url))).await;
    let mut b = TestEdge::start_joining(&a).await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://shared.warren.localhost")).unwrap();

    let mut on_a = Agent::start(a.agent_with(ep.clone()));
    within("online on node a", on_a.wait_online()).await.unwrap();
    // Node b does not hold the name in memory, but the database says node a does.
    let err =
        within("refused on node b", Agent::start(b.agent_with(ep.clone())).wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("ERR_NGROK_334"), "{err}");

    // Node b's API sees node a's session and endpoint, and can stop it. (The refused agent's
    // own session on node b ends as it gives up; wait until node b has forgotten it.)
    let key = Some(b.api_key.as_str());
    let list = within("only node a's session is listed", async {
        loop {
            let (s, _, sessions) = b.api("GET", "/tunnel_sessions", key, None).await;
            assert_eq!(s, StatusCode::OK, "{sessions}");
            let list = sessions["tunnel_sessions"].as_array().unwrap().clone();
            if list.len() == 1 {
                return list;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (_, _, endpoints) = b.api("GET", "/endpoints", key, None).await;
    assert_eq!(
        endpoints["endpoints"][0]["url"],
        "https://shared.warren.localhost:".to_owned() + &a.https_addr().port().to_string()
    );
    let ep_id = endpoints["endpoints"][0]["id"].as_str().unwrap().to_owned();
    let (s, _, one) = b.api("GET", &format!("/endpoints/{ep_id}"), key, None).await;
    assert_eq!((s, one["tunnel_session"]["id"].as_str()), (StatusCode::OK, Some(id.as_str())));
    let (s, _, _) = b.api("POST", &format!("/tunnel_sessions/{id}/stop"), key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let stopped = within("node a's agent is told to stop", async {
        loop {
            if let Status::Stopped(e) = on_a.next_status().await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(stopped, Some(AgentError::StoppedByEdge)), "{stopped:?}");

    // The name is free for node b once node a has ended the session (it tells the agent
    // first, then forgets the session and its endpoints in the database).
    within("node a forgot the stopped session", async {
        loop {
            let (_, _, sessions) = b.api("GET", "/tunnel_sessions", key, None).await;
            if sessions["tunnel_sessions"].as_array().is_some_and(|l| l.is_empty()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut on_b = Agent::start(b.agent_with(ep.clone()));
    within("online on node b", on_b.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&b, "shared.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello from upstream"));

    // Node b shuts down: its session and endpoint leave the database with it.
    b.stop().await;
    let (_, _, sessions) = a.api("GET", "/tunnel_sessions", Some(&a.api_key), None).await;
    assert_eq!(sessions["tunnel_sessions"].as_array().unwrap().len(), 0, "{sessions}");
    let mut again = Agent::start(a.agent_with(ep));
    within("the name is free again on node a", again.wait_online()).await.unwrap();
    again.stop().await.unwrap();
    a.stop().await;
    db.drop_db().await;
}

/// A change made through one node's API acts on the sessions of every node at once: an IP
/// policy rule added through node b restarts node a's session that uses the policy, and an
/// authtoken revoked through node b ends node a's session that authenticated with it (its
/// agent's reconnect is then refused).
#[tokio::test]
async fn rules_changed_through_one_node_act_on_the_sessions_of_the_others() {
    let Some(db) = TestPostgres::create().await else { return };
    let url = db.url.clone();
    let mut a = TestEdge::start_with(|c| c.database_url = Some(warren_edge::config::DatabaseUrl(url))).await;
    let mut b = TestEdge::start_joining(&a).await;
    let key = Some(b.api_key.as_str());
    let up = HttpUpstream::start().await;

    // A token held to an IP policy, its agent on node a.
    let (s, _, policy) =
        b.api("POST", "/ip_policies", key, Some(serde_json::json!({"description": "office"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    let policy_id = policy["id"].as_str().unwrap().to_owned();
    let rule = serde_json::json!({"ip_policy_id": policy_id, "cidr": "127.0.0.0/8", "action": "allow"});
    let (s, _, _) = b.api("POST", "/ip_policy_rules", key, Some(rule)).await;
    assert_eq!(s, StatusCode::CREATED);
    let body = serde_json::json!({"description": "laptop", "ip_policy_ids": [policy_id]});
    let (s, _, cred) = b.api("POST", "/credentials", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{cred}");
    let mut cfg =
        a.agent_with(EndpointConfig::http(&up.url(), Some("https://rules.warren.localhost")).unwrap());
    cfg.authtoken = cred["token"].as_str().unwrap().to_owned();
    let mut agent = Agent::start(cfg);
    within("online on node a", agent.wait_online()).await.unwrap();
    let first = a.edge().session_count();
    assert_eq!(first, 1);

    // A rule added through node b: node a restarts the session, the agent comes back.
    let rule = serde_json::json!({"ip_policy_id": policy_id, "cidr": "10.0.0.0/8", "action": "allow"});
    let (s, _, _) = b.api("POST", "/ip_policy_rules", key, Some(rule)).await;
    assert_eq!(s, StatusCode::CREATED);
    within("node a restarts the session", async {
        loop {
            if let Status::Reconnecting { .. } = agent.next_status().await {
                return;
            }
        }
    })
    .await;
    within("back online", agent.wait_online()).await.unwrap();

    // The token revoked through node b: node a ends the session, and the agent is refused.
    let id = cred["id"].as_str().unwrap();
    let (s, _, _) = b.api("DELETE", &format!("/credentials/{id}"), key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let stopped = within("node a ends the revoked token's session", async {
        loop {
            if let Status::Stopped(e) = agent.next_status().await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(stopped, Some(AgentError::Auth(_))), "{stopped:?}");
    a.wait_sessions(0).await;
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

/// Polls `host` on `edge` until the https answer's body is `want`.
async fn until_body(edge: &TestEdge, host: &str, want: &str) {
    within(&format!("{host} answers {want:?}"), async {
        loop {
            let (_, _, body) = https_get(edge, host, "/").await;
            if body == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_cloud_endpoint_made_through_one_node_is_served_changed_and_deleted_on_every_node() {
    let Some(db) = TestPostgres::create().await else { return };
    let url = db.url.clone();
    let a = TestEdge::start_with(|c| c.database_url = Some(warren_edge::config::DatabaseUrl(url))).await;
    let b = TestEdge::start_joining(&a).await;
    let answer = |text: &str| {
        format!(
            "on_http_request:\n  - actions:\n      - type: custom-response\n        config:\n          content: {text}\n"
        )
    };
    let key = Some(a.api_key.as_str());
    let (s, _, ep) = a
        .api("POST", "/endpoints", key, Some(serde_json::json!({"url": "https://everywhere.warren.localhost", "traffic_policy": answer("v1")})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ep}");
    let id = ep["id"].as_str().unwrap().to_owned();
    let (_, _, body) = https_get(&a, "everywhere.warren.localhost", "/").await;
    assert_eq!(body, "v1", "served at once by the node that made it");
    until_body(&b, "everywhere.warren.localhost", "v1").await;

    // The name is the cloud endpoint's on node b too: an agent there is refused.
    let up = HttpUpstream::start().await;
    let ep_cfg = EndpointConfig::http(&up.url(), Some("https://everywhere.warren.localhost")).unwrap();
    let err =
        within("refused on node b", Agent::start(b.agent_with(ep_cfg)).wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("ERR_NGROK_334"), "{err}");

    let (s, _, _) = a
        .api(
            "PATCH",
            &format!("/endpoints/{id}"),
            key,
            Some(serde_json::json!({"traffic_policy": answer("v2")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    until_body(&b, "everywhere.warren.localhost", "v2").await;

    let (s, _, _) = b.api("DELETE", &format!("/endpoints/{id}"), Some(b.api_key.as_str()), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    within("gone on node a", async {
        loop {
            let (s, _, _) = https_get(&a, "everywhere.warren.localhost", "/").await;
            if s == StatusCode::NOT_FOUND {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}
