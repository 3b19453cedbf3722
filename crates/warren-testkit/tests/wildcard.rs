//! Wildcard endpoints without certificates in play (plain http): the most specific endpoint
//! of the visitor's own scheme serves a name; an exact name held in another scheme does not
//! hide the wildcard. (Wildcard certificates through DNS-01: acme.rs.)

use hyper::StatusCode;
use serde_json::json;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

#[tokio::test]
async fn the_most_specific_endpoint_of_the_visitors_scheme_serves_a_name() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let (s, _, rd) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "*.team.warren.localhost"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{rd}");
    let wild = named_upstream("wildcard").await;
    let mut w = Agent::start(edge.agent_with(
        EndpointConfig::http(&wild.to_string(), Some("http://*.team.warren.localhost")).unwrap(),
    ));
    within("wildcard online", w.wait_online()).await.unwrap();
    for host in ["a.team.warren.localhost", "x.y.team.warren.localhost"] {
        let (s, _, body) = plain_get(edge.http_addr(), host, "/p").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "wildcard /p"), "{host}");
    }
    // An exact http endpoint takes its name; a tls endpoint of another name in the zone does
    // not hide the wildcard from plain-http visitors of that name.
    let exact = named_upstream("exact").await;
    let mut e = Agent::start(edge.agent_with(
        EndpointConfig::http(&exact.to_string(), Some("http://b.team.warren.localhost")).unwrap(),
    ));
    within("exact online", e.wait_online()).await.unwrap();
    let (echo, _echo) = tcp_echo().await;
    let mut t = Agent::start(edge.agent_with(
        EndpointConfig::tls(&echo.to_string(), Some("tls://c.team.warren.localhost"), None).unwrap(),
    ));
    within("tls online", t.wait_online()).await.unwrap();
    let (_, _, body) = plain_get(edge.http_addr(), "b.team.warren.localhost", "/").await;
    assert_eq!(body, "exact /");
    let (s, _, body) = plain_get(edge.http_addr(), "c.team.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "wildcard /"), "the tls name hides nothing over http");
    // Not under the reservation: nothing.
    let (s, _, _) = plain_get(edge.http_addr(), "team.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a wildcard does not cover its parent");
    for a in [w, e, t] {
        a.stop().await.unwrap();
    }
}
