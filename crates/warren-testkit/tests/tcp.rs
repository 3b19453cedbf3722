//! tcp endpoints end to end.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

#[tokio::test]
async fn tcp_endpoint_carries_bytes_both_ways_with_half_close() {
    let edge = TestEdge::start().await;
    let (echo, _task) = tcp_echo().await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::tcp(&echo.to_string(), None).unwrap()));
    let urls = within("online", agent.wait_online()).await.unwrap();
    let url = &urls[0];
    assert!(url.starts_with("tcp://localhost:"), "{url}");
    let port = url_port(url);
    assert!(edge.config.tcp_ports.contains(&port));

    // Several visitors at once, each with its own data.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let data: Vec<u8> = (0..3_000_000u32).map(|j| (j as u8).wrapping_mul(i + 1)).collect();
            let back = echo_roundtrip(&mut tcp, &data).await;
            assert_eq!(back.len(), data.len());
            assert!(back == data, "visitor {i} got its own bytes back in order");
        }));
    }
    for t in tasks {
        within("tcp visitor", t).await.unwrap();
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn tcp_endpoint_on_a_requested_port_and_released_after_unbind() {
    let edge = TestEdge::start_with(|c| c.tcp_ports = 41000..=41999).await;
    let (echo, _task) = tcp_echo().await;
    // Find a free port in the range without holding it.
    let port = (41000..=41999)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in the range");
    let ep = EndpointConfig::tcp(&echo.to_string(), Some(&format!("tcp://localhost:{port}"))).unwrap();
    let mut agent = Agent::start(edge.agent_with(ep.clone()));
    let urls = within("online", agent.wait_online()).await.unwrap();
    assert_eq!(urls[0], format!("tcp://localhost:{port}"));

    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    within("echo", tcp.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"hello");

    // A second agent asking for the same port gets ngrok's "already bound" error.
    let mut other = Agent::start(edge.agent_with(ep.clone()));
    let err = within("refused", other.wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("ERR_NGROK_334"), "{err}");

    // Once the first agent stops (and the edge has seen its session end), the port is free
    // for the next one.
    agent.stop().await.unwrap();
    edge.wait_sessions(0).await;
    let mut third = Agent::start(edge.agent_with(ep));
    let urls = within("rebind", third.wait_online()).await.unwrap();
    assert_eq!(urls[0], format!("tcp://localhost:{port}"));
}

#[tokio::test]
async fn a_port_outside_the_range_is_refused_clearly() {
    let edge = TestEdge::start_with(|c| c.tcp_ports = 42000..=42099).await;
    let (echo, _task) = tcp_echo().await;
    let ep = EndpointConfig::tcp(&echo.to_string(), Some("tcp://localhost:1")).unwrap();
    let mut agent = Agent::start(edge.agent_with(ep));
    let err = within("refused", agent.wait_online()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ERR_NGROK_324") && text.contains("42000-42099"), "{text}");
}
