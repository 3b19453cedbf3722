//! Findings of the outside security review of the listeners, each as the attack that
//! reproduced it: the attacker is another account, a raw agent-protocol client, or a visitor
//! choosing its own SNI and Host.

use hyper::StatusCode;
use warren_agent::{Agent, EndpointConfig};
use warren_proto::error_codes as codes;
use warren_testkit::*;

/// Account A's `https://victim` is online. Account B binds the same name as `tls://` and
/// `http://`: both are refused, https visitors keep reaching A and plain-http visitors keep
/// getting A's redirect. A itself may add `http://` but not `tls://` (https and tls share
/// the TLS port).
#[tokio::test]
async fn a_live_name_belongs_to_one_account_in_every_scheme() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let url = "https://victim.warren.localhost";
    let mut a = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), Some(url)).unwrap()));
    within("A online", a.wait_online()).await.unwrap();

    let b = edge.tenant("intruder").await;
    let raw_b = RawSession::authenticated(&edge, &b.developer.authtoken).await;
    for proto in ["tls", "http"] {
        let r = raw_b
            .bind(&format!("b-{proto}"), proto, serde_json::json!({"Domain": "victim.warren.localhost"}))
            .await;
        assert!(r.error.contains(codes::ENDPOINT_IN_USE), "{proto} by another account: {r:?}");
    }
    let (status, _, body) = https_get(&edge, "victim.warren.localhost", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from upstream"));
    let (status, headers, _) = plain_get(edge.http_addr(), "victim.warren.localhost", "/x").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert!(headers["location"].to_str().unwrap().starts_with("https://victim.warren.localhost"));

    let raw_a = RawSession::authenticated(&edge, &edge.authtoken).await;
    let r = raw_a.bind("a-tls", "tls", serde_json::json!({"Domain": "victim.warren.localhost"})).await;
    assert!(r.error.contains(codes::ENDPOINT_IN_USE), "tls beside https: {r:?}");
    let r = raw_a.bind("a-http", "http", serde_json::json!({"Domain": "victim.warren.localhost"})).await;
    assert!(r.error.is_empty(), "A's own http endpoint: {r:?}");

    // The API sees the name as A's too: B cannot reserve it.
    let (status, _, body) = edge
        .api(
            "POST",
            "/reserved_domains",
            Some(&b.admin.api_key),
            Some(serde_json::json!({"domain": "victim.warren.localhost"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Once A is gone, the name is free for B in any scheme.
    drop(raw_a);
    a.stop().await.unwrap();
    edge.wait_sessions(1).await;
    let r = raw_b.bind("b-tls-2", "tls", serde_json::json!({"Domain": "victim.warren.localhost"})).await;
    assert!(r.error.is_empty(), "free again: {r:?}");
}
