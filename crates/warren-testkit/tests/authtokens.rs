//! Authtokens: bind ACLs (for warren's agent and the ngrok SDK) and revocation of a token in
//! use.

use bytes::Bytes;
use hyper::StatusCode;
use warren_agent::{Agent, AgentError, EndpointConfig, Status};
use warren_testkit::*;

#[tokio::test]
async fn an_acl_restricted_token_binds_only_inside_its_acl() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (cred, token) =
        edge.new_token(&["bind:*.team.warren.localhost", "bind:exact.warren.localhost"]).await;

    let start = |url: Option<&str>, tcp: bool| {
        let ep = if tcp {
            EndpointConfig::tcp(&up.addr.to_string(), url).unwrap()
        } else {
            EndpointConfig::http(&up.url(), url).unwrap()
        };
        let mut cfg = edge.agent_with(ep);
        cfg.authtoken = token.clone();
        Agent::start(cfg)
    };
    for allowed in ["http://a.team.warren.localhost", "https://exact.warren.localhost"] {
        let mut a = start(Some(allowed), false);
        within("allowed bind", a.wait_online()).await.unwrap_or_else(|e| panic!("{allowed}: {e}"));
        a.stop().await.unwrap();
    }
    for refused in [Some("https://team.warren.localhost"), Some("https://other.warren.localhost"), None] {
        let mut a = start(refused, false);
        let err = within("refused bind", a.wait_online()).await.unwrap_err();
        assert!(
            matches!(&err, AgentError::Bind(m) if m.contains("may not bind") && m.contains(&cred.id)),
            "{refused:?}: {err:?}"
        );
    }
    let mut a = start(None, true);
    let err = within("refused tcp bind", a.wait_online()).await.unwrap_err();
    assert!(matches!(&err, AgentError::Bind(m) if m.contains("may not bind")), "{err:?}");
}

#[tokio::test]
async fn the_ngrok_sdk_gets_a_clear_error_for_a_bind_outside_the_acl() {
    let edge = TestEdge::start().await;
    let (_, token) = edge.new_token(&["bind:sdk-ok.warren.localhost"]).await;
    let sess = ngrok::Session::builder()
        .authtoken(token)
        .server_addr(edge.connect_url())
        .unwrap()
        .ca_cert(Bytes::from(edge.ca_pem.clone()))
        .connect()
        .await
        .expect("the token itself is valid");

    use ngrok::prelude::*;
    let ok = sess.http_endpoint().domain("sdk-ok.warren.localhost").listen().await;
    assert!(ok.is_ok(), "inside the ACL");
    let err =
        sess.http_endpoint().domain("sdk-no.warren.localhost").listen().await.err().expect("outside the ACL");
    assert_eq!(err.error_code(), Some("ERR_NGROK_9010"), "{err:?}");
    assert!(err.msg().contains("may not bind sdk-no.warren.localhost"), "{}", err.msg());
}

#[tokio::test]
async fn revoking_a_token_ends_its_live_sessions_at_once() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (cred, token) = edge.new_token(&[]).await;
    let mut cfg =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://revoked.warren.localhost")).unwrap());
    cfg.authtoken = token;
    let mut agent = Agent::start(cfg);
    within("online", agent.wait_online()).await.unwrap();
    // A bystander on the initial token is unaffected.
    let mut other = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://kept.warren.localhost")).unwrap()),
    );
    within("bystander online", other.wait_online()).await.unwrap();

    let (account, _) = edge.edge().store().ensure_account("default").await.unwrap();
    assert_eq!(edge.edge().revoke_credential(&account.id, &cred.id).await.unwrap(), 1);
    let (status, _, _) = https_get(&edge, "revoked.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the endpoint is gone at once");
    // The agent's reconnect is refused and it stops with ngrok's error.
    let stopped = within("agent stops", async {
        loop {
            if let Status::Stopped(e) = agent.next_status().await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(&stopped, Some(AgentError::Auth(m)) if m.contains("ERR_NGROK_107")), "{stopped:?}");
    let (status, _, _) = https_get(&edge, "kept.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::OK);
}
