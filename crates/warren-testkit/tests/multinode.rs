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

    // The name is free for node b now.
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
