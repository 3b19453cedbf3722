//! The client's real address behind a load balancer: PROXY protocol v1/v2 headers and
//! X-Forwarded-For are believed only from configured trusted proxies. The "balancer" here is
//! a relay that connects from 127.0.0.2 (trusted) and writes a header first; the tests' own
//! connections come from 127.0.0.1 (not trusted).

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

fn v2_header(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(c) = client else { panic!("IPv4 only here") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(c.ip().octets());
    h.extend([127, 0, 0, 1]);
    h.extend(c.port().to_be_bytes());
    h.extend(443u16.to_be_bytes());
    h
}

fn v1_header(client: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {} 127.0.0.1 {} 443\r\n", client.ip(), client.port()).into_bytes()
}

/// A balancer in front of `target`: accepts on 127.0.0.1, connects from 127.0.0.2 and sends
/// `header` before relaying the bytes both ways.
async fn balancer(target: SocketAddr, header: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut visitor, _)) = listener.accept().await else { return };
            let header = header.clone();
            tokio::spawn(async move {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                let mut edge = sock.connect(target).await.unwrap();
                edge.write_all(&header).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut visitor, &mut edge).await;
            });
        }
    });
    addr
}

async fn trusted_edge(proxy_protocol: bool) -> TestEdge {
    TestEdge::start_with(|c| {
        c.trusted_proxies = vec![warren_edge::Cidr::parse("127.0.0.2/32").unwrap()];
        c.proxy_protocol = proxy_protocol;
    })
    .await
}

/// A policy allowing only 10.0.0.0/8, applied by a restriction of `kind`.
async fn only_ten(edge: &TestEdge, kind: &str) {
    let key = Some(edge.api_key.as_str());
    let (_, _, pol) = edge.api("POST", "/ip_policies", key, Some(json!({}))).await;
    let rule = json!({"ip_policy_id": pol["id"], "cidr": "10.0.0.0/8", "action": "allow"});
    assert_eq!(edge.api("POST", "/ip_policy_rules", key, Some(rule)).await.0, StatusCode::CREATED);
    let x = json!({"type": kind, "ip_policy_ids": [pol["id"]]});
    assert_eq!(edge.api("POST", "/ip_restrictions", key, Some(x)).await.0, StatusCode::CREATED);
}

async fn echo_through(addr: SocketAddr, edge: &TestEdge, host: &str) -> (StatusCode, Value) {
    let tls = tls_connect(addr, host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let res =
        send.send_request(Request::get("/echo").header("host", host).body(empty()).unwrap()).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_agent_behind_a_balancer_is_judged_by_the_address_in_its_proxy_header() {
    let edge = trusted_edge(true).await;
    only_ten(&edge, "agent").await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://lb.warren.localhost")).unwrap();

    // Straight from 127.0.0.1: refused by the restriction.
    let err = within("direct", Agent::start(edge.agent_with(ep.clone())).wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    // Through the balancer, as 10.1.2.3 (v2 header): admitted.
    let lb = balancer(edge.edge().connect_addr, v2_header("10.1.2.3:40000".parse().unwrap())).await;
    let mut cfg = edge.agent_with(ep);
    cfg.connect_url = format!("localhost:{}", lb.port());
    let mut agent = Agent::start(cfg);
    within("through the balancer", agent.wait_online()).await.unwrap();
    let (_, _, sessions) = edge.api("GET", "/tunnel_sessions", Some(&edge.api_key), None).await;
    assert_eq!(sessions["tunnel_sessions"][0]["ip"], "10.1.2.3", "{sessions}");
}

#[tokio::test]
async fn visitors_behind_a_balancer_reach_the_upstream_as_themselves() {
    let edge = trusted_edge(true).await;
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://lb.warren.localhost")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();
    only_ten(&edge, "endpoints").await;

    for header in [v1_header("10.9.8.7:5555".parse().unwrap()), v2_header("10.9.8.7:5555".parse().unwrap())] {
        let lb = balancer(edge.https_addr(), header).await;
        let (s, echo) = echo_through(lb, &edge, "lb.warren.localhost").await;
        assert_eq!(s, StatusCode::OK, "10.9.8.7 passes the endpoints restriction: {echo}");
        assert_eq!(echo["headers"]["x-forwarded-for"], "10.9.8.7", "{echo}");
    }
    // Straight from 127.0.0.1 (not a trusted proxy): refused by the restriction.
    let (s, _, _) = https_get(&edge, "lb.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A trusted balancer that forgets the header is closed: no silent fallback.
    let lb = balancer(edge.https_addr(), Vec::new()).await;
    let tcp = TcpStream::connect(lb).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("lb.warren.localhost").unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(client_tls(&edge.ca_pem, &[b"http/1.1"])).connect(name, tcp).await;
    assert!(tls.is_err(), "no header from a trusted proxy closes the connection");
}

#[tokio::test]
async fn a_tcp_visitor_behind_a_balancer_keeps_its_address_and_garbage_headers_are_closed() {
    let edge = trusted_edge(true).await;
    let (echo, _task) = tcp_echo().await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::tcp(&echo.to_string(), None).unwrap()));
    let port = url_port(&within("online", agent.wait_online()).await.unwrap()[0]);
    only_ten(&edge, "endpoints").await;
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let lb = balancer(target, v2_header("10.0.0.9:1234".parse().unwrap())).await;
    let mut conn = TcpStream::connect(lb).await.unwrap();
    assert_eq!(within("echo", echo_roundtrip(&mut conn, b"hello")).await, b"hello");

    let lb = balancer(target, b"PROXY TCP4 10.0.0.9 nonsense\r\n".to_vec()).await;
    let mut conn = TcpStream::connect(lb).await.unwrap();
    conn.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 8];
    let n = within("closed", conn.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "a malformed header closes the connection");
}

/// An API call from 127.0.0.1 or through `via`, with an X-Forwarded-For header.
async fn api_with_xff(addr: SocketAddr, key: &str, xff: &str) -> StatusCode {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut send = http1(tcp).await;
    let req = Request::get("/credentials")
        .header("host", "api")
        .header("authorization", format!("Bearer {key}"))
        .header("ngrok-version", "2")
        .header("x-forwarded-for", xff)
        .body(empty())
        .unwrap();
    send.send_request(req).await.unwrap().status()
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let edge = trusted_edge(false).await;
    only_ten(&edge, "api").await;
    let api = edge.api_addr();
    // From 127.0.0.1, a spoofed header changes nothing.
    assert_eq!(api_with_xff(api, &edge.api_key, "10.0.0.5").await, StatusCode::FORBIDDEN);
    // Through the trusted balancer (no PROXY header here: proxy_protocol is off), the
    // right-most untrusted entry is the client; what the client wrote to its left is not.
    let lb = balancer(api, Vec::new()).await;
    assert_eq!(api_with_xff(lb, &edge.api_key, "10.0.0.5").await, StatusCode::OK);
    assert_eq!(api_with_xff(lb, &edge.api_key, "10.0.0.5, 192.0.2.1").await, StatusCode::FORBIDDEN);
    assert_eq!(api_with_xff(lb, &edge.api_key, "192.0.2.1, 10.0.0.5, 127.0.0.2").await, StatusCode::OK);
}
