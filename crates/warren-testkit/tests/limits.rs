//! Every limit of docs/LIMITS.md, set low, and the refusal a peer gets when it crosses it.
//! Limits shown elsewhere are named at the end of this file.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::hostile::read_until_closed;
use warren_testkit::*;

#[tokio::test]
async fn max_sessions_closes_the_next_agent_connection_at_once() {
    let edge = TestEdge::start_with(|c| c.limits.max_sessions = 2).await;
    let _a = RawSession::authenticated(&edge, &edge.authtoken).await;
    let _b = RawSession::authenticated(&edge, &edge.authtoken).await;
    // The third TCP connection is closed before any TLS byte.
    let mut third = TcpStream::connect(edge.config.connect_addr).await.unwrap();
    assert!(read_until_closed(&mut third).await.is_empty());
    edge.wait_sessions(2).await;
}

#[tokio::test]
async fn max_visitor_connections_closes_the_next_visitor_at_once() {
    let edge = TestEdge::start_with(|c| c.limits.max_visitor_connections = 2).await;
    let held = [
        TcpStream::connect(edge.http_addr()).await.unwrap(),
        TcpStream::connect(edge.https_addr()).await.unwrap(),
    ];
    for addr in [edge.http_addr(), edge.https_addr()] {
        let mut next = TcpStream::connect(addr).await.unwrap();
        assert!(read_until_closed(&mut next).await.is_empty(), "{addr}");
    }
    drop(held);
}

#[tokio::test]
async fn max_api_connections_closes_the_next_api_connection_at_once() {
    let edge = TestEdge::start_with(|c| c.limits.max_api_connections = 2).await;
    let held = [
        TcpStream::connect(edge.api_addr()).await.unwrap(),
        TcpStream::connect(edge.api_addr()).await.unwrap(),
    ];
    let mut next = TcpStream::connect(edge.api_addr()).await.unwrap();
    assert!(read_until_closed(&mut next).await.is_empty());
    drop(held);
}

#[tokio::test]
async fn max_endpoints_per_session_refuses_the_next_bind() {
    let edge = TestEdge::start_with(|c| c.limits.max_endpoints_per_session = 2).await;
    let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
    assert!(raw.bind_https("a", "lim-a.warren.localhost").await.error.is_empty());
    assert!(raw.bind_https("b", "lim-b.warren.localhost").await.error.is_empty());
    let r = raw.bind_https("c", "lim-c.warren.localhost").await;
    assert!(r.error.contains("endpoint limit") && r.error.contains("ERR_NGROK_9010"), "{r:?}");
    // Unbinding one makes room.
    let reply = raw.rpc_raw(2, br#"{"Id":"a"}"#).await.unwrap();
    assert!(!String::from_utf8_lossy(&reply).contains("ERR_"), "{}", String::from_utf8_lossy(&reply));
    assert!(raw.bind_https("c", "lim-c.warren.localhost").await.error.is_empty());
}

#[tokio::test]
async fn the_handshake_timeout_closes_a_silent_or_stalled_handshake() {
    let edge = TestEdge::start_with(|c| c.limits.handshake_timeout = Duration::from_secs(1)).await;
    // Silent on the agent port and the https port.
    for addr in [edge.config.connect_addr, edge.https_addr()] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let start = std::time::Instant::now();
        read_until_closed(&mut tcp).await;
        assert!(start.elapsed() < Duration::from_secs(5), "{addr}: {:?}", start.elapsed());
    }
    // Half a ClientHello on the https port.
    let mut tcp = TcpStream::connect(edge.https_addr()).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await.unwrap();
    read_until_closed(&mut tcp).await;
}

/// ClientHellos are read whole before routing, but never more than 64 KiB of one.
#[tokio::test]
async fn a_client_hello_beyond_64_kib_is_refused() {
    let edge = TestEdge::start().await;
    let mut tcp = TcpStream::connect(edge.https_addr()).await.unwrap();
    // A handshake record that keeps going: header of a 16 KiB record, repeated.
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xFF, 0xFF, 0xFF];
    record.resize(5 + 0x4000, 0x41);
    for _ in 0..5 {
        if tcp.write_all(&record).await.is_err() {
            break;
        }
    }
    read_until_closed(&mut tcp).await;
}

#[tokio::test]
async fn the_rpc_timeout_answers_an_unfinished_request() {
    let edge = TestEdge::start_with(|c| c.limits.rpc_timeout = Duration::from_secs(1)).await;
    let mut h = hostile::Hostile::connect(&edge).await;
    assert!(h.auth(1, &edge.authtoken).await.error.is_empty());
    // A Bind that never ends.
    let mut payload = 1u32.to_be_bytes().to_vec();
    payload.extend_from_slice(br#"{"Id":"slow","Proto":"https","Opts":{"Domain":"#);
    h.frame(hostile::ty::DATA, hostile::flag::SYN, 3, &payload).await.unwrap();
    let reply = within("the RPC timeout", h.reply(3)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("not completed in time") && text.contains("ERR_NGROK_9010"), "{text}");
}

#[tokio::test]
async fn the_header_read_timeout_closes_a_visitor_that_never_finishes_its_headers() {
    let edge = TestEdge::start_with(|c| c.limits.header_read_timeout = Duration::from_secs(1)).await;
    let mut tcp = TcpStream::connect(edge.http_addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: slow.warren.localhost\r\nX-Drip: ").await.unwrap();
    let start = std::time::Instant::now();
    read_until_closed(&mut tcp).await;
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}

#[tokio::test]
async fn api_bodies_and_descriptions_have_their_limits() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let long = "x".repeat(4097);
    let (s, _, body) = edge.api("POST", "/credentials", key, Some(json!({"description": long}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("description"), "{body}");
    let (s, _, body) = edge.api("POST", "/credentials", key, Some(json!({"metadata": long}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let fits = "x".repeat(4096);
    let (s, _, body) = edge.api("POST", "/credentials", key, Some(json!({"description": fits}))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    // A request body beyond 2 MiB.
    let huge = json!({"description": "x".repeat(3 * 1024 * 1024)}).to_string().into_bytes();
    let (s, _, _) = edge.api_raw("POST", "/credentials", key, Some("2"), Some(huge)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // The account's traffic policy document beyond 256 KiB.
    let doc = format!("# {}\non_http_request: []\n", "x".repeat(300 * 1024));
    let (s, _, body) = edge.api("PUT", "/traffic_policy", key, Some(json!({"traffic_policy": doc}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn visitor_request_headers_beyond_256_kib_are_refused() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("http://big.warren.localhost")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();
    let mut tcp = TcpStream::connect(edge.http_addr()).await.unwrap();
    let mut req = b"GET / HTTP/1.1\r\nHost: big.warren.localhost\r\n".to_vec();
    for i in 0..300 {
        req.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let _ = tcp.write_all(&req).await;
    let got = read_until_closed(&mut tcp).await;
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&got));
    let (s, _, _) = plain_get(edge.http_addr(), "big.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::OK, "an ordinary request still passes");
}

// Shown in other files:
// - auth_timeout, pre-Auth streams and buffer: hardening.rs (`every_session_end_closes_its_socket`,
//   `before_auth_a_connection_holds_a_few_streams_and_a_few_kib`);
// - first-byte and per-address limits, wrong-secret throttling: hardening.rs;
// - RPC message size: bad_input.rs (`an_rpc_over_the_size_limit_is_refused`);
// - muxado windows, backlog, stream counts, GOAWAY size: warren-mux tests/session.rs;
// - session buffer: warren-mux `unread_streams_together_hold_at_most_max_buffered`;
// - heartbeat tolerance: session.rs and hardening.rs;
// - verify-webhook body: traffic_policy.rs; policy cost: traffic_policy.rs and warren-policy;
// - API rate limit: api.rs; proxy header and PROXY protocol sizes: proxy_protocol.rs;
// - inspector limits: inspector.rs.

/// The drain at shutdown waits for visitors only: an agent session on the shared TLS port
/// (by its connect name) is not a visitor, and is told last, so an edge with one stops at once
/// rather than after `drain_timeout`.
#[tokio::test]
async fn the_shutdown_drain_does_not_wait_for_agent_sessions_on_the_shared_port() {
    let mut edge = TestEdge::start_with(|c| {
        c.limits.drain_timeout = Duration::from_secs(60);
        c.limits.auth_timeout = Duration::from_secs(60);
    })
    .await;
    let session = tls_connect(edge.https_addr(), "connect.warren.localhost", &edge.ca_pem, &[]).await;
    within("the edge stops without waiting for the agent session", edge.stop()).await;
    drop(session);
}

/// Reads one HTTP/1.1 response from `tcp` (a `Content-Length` or chunked body, read to its
/// end) and returns its text.
async fn read_response(tcp: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let body = &text[end + 4..];
            if let Some(n) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                if body.len() >= n.trim().parse::<usize>().unwrap() {
                    return text;
                }
            } else if head.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n") {
                return text;
            }
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the connection closed before the response ended: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// `proxy_stream_idle`: a kept-alive visitor connection lets go of its proxy stream (and the
/// agent of its upstream connection) once idle, never while a response body is still on its
/// way, and its next request is served over a new one.
#[tokio::test]
async fn an_idle_visitor_connection_lets_go_of_its_proxy_stream() {
    use tokio::io::AsyncReadExt;
    let idle = Duration::from_millis(300);
    let edge = TestEdge::start_with(|c| c.limits.proxy_stream_idle = idle).await;
    // A raw upstream: each connection answers its first request (the second one slowly, a
    // chunk, then a pause of several idle periods, then the rest) and reports when the agent
    // closes it.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for i in 0.. {
            let (mut conn, _) = upstream.accept().await.unwrap();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut b).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&b[..n]);
                }
                if i == 1 {
                    conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nslow \r\n")
                        .await
                        .unwrap();
                    tokio::time::sleep(idle * 4).await;
                    conn.write_all(b"4\r\nbody\r\n0\r\n\r\n").await.unwrap();
                } else {
                    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                }
                // Anything more is not expected: the agent may only close the connection.
                while conn.read(&mut b).await.is_ok_and(|n| n > 0) {}
                let _ = closed_tx.send(i);
            });
        }
    });
    let mut agent = Agent::start(edge.agent_with(
        EndpointConfig::http(&format!("http://{addr}"), Some("http://idle.warren.localhost")).unwrap(),
    ));
    within("online", agent.wait_online()).await.unwrap();
    let mut visitor = TcpStream::connect(edge.http_addr()).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: idle.warren.localhost\r\n\r\n";
    visitor.write_all(get).await.unwrap();
    let first = within("the first response", read_response(&mut visitor)).await;
    assert!(first.starts_with("HTTP/1.1 200") && first.ends_with("ok"), "{first}");
    // The visitor keeps its connection open and sends nothing: the stream goes, and with it
    // the agent's upstream connection.
    assert_eq!(within("the idle proxy stream is let go", closed.recv()).await, Some(0));
    // The same visitor connection still works, over a new stream, and a body that pauses for
    // longer than the idle limit is not cut.
    visitor.write_all(get).await.unwrap();
    let second = within("the second response", read_response(&mut visitor)).await;
    assert!(
        second.starts_with("HTTP/1.1 200") && second.contains("slow ") && second.contains("body"),
        "{second}"
    );
    assert_eq!(within("the second stream is let go too", closed.recv()).await, Some(1));
    visitor.write_all(get).await.unwrap();
    let third = within("the third response", read_response(&mut visitor)).await;
    assert!(third.ends_with("ok"), "{third}");
}

/// An upstream's response the edge cannot frame (two Content-Lengths that disagree) is a 502
/// for that request alone: the visitor's connection goes on over a new proxy stream (and
/// upstream connection), which then carries the next requests too. Informational responses
/// before the final one are skipped and chunk extensions dropped, as RFC 9112 allows.
#[tokio::test]
async fn a_response_the_edge_cannot_frame_is_a_502_and_the_connection_goes_on() {
    use tokio::io::AsyncReadExt;
    let edge = TestEdge::start().await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let (conns_tx, mut conns) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for i in 0.. {
            let (mut conn, _) = upstream.accept().await.unwrap();
            conns_tx.send(i).unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut b).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                            _ => return,
                        }
                    }
                    head.clear();
                    let answer: &[u8] = if i == 0 {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
                    } else {
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                          HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n"
                    };
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut agent = Agent::start(edge.agent_with(
        EndpointConfig::http(&format!("http://{addr}"), Some("http://framing.warren.localhost")).unwrap(),
    ));
    within("online", agent.wait_online()).await.unwrap();
    let mut visitor = TcpStream::connect(edge.http_addr()).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: framing.warren.localhost\r\n\r\n";
    visitor.write_all(get).await.unwrap();
    let first = within("the 502", read_response(&mut visitor)).await;
    assert!(first.starts_with("HTTP/1.1 502"), "{first}");
    assert!(first.contains("not valid HTTP/1.1"), "{first}");
    for n in 0..3 {
        visitor.write_all(get).await.unwrap();
        let next = within("the next response", read_response(&mut visitor)).await;
        assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "request {n}: {next}");
        assert!(next.contains("hello") && !next.contains("x=y"), "request {n}: {next}");
        assert!(!next.to_ascii_lowercase().contains("link:"), "request {n}: {next}");
    }
    // Two upstream connections in all: the failed one, and the one kept since.
    assert_eq!(conns.recv().await, Some(0));
    assert_eq!(conns.recv().await, Some(1));
    assert!(conns.try_recv().is_err(), "a third upstream connection was opened");
}

/// One visitor connection, served first by the edge's own HTTP/1.1 loop (`serve_h1`), then by
/// hyper's server from its first request with a body: that request, with every byte the loop
/// had read of it, reaches the upstream whole, and hyper serves what follows (two requests
/// sent in one write).
#[tokio::test]
async fn a_visitor_connection_goes_from_the_edges_loop_to_hyper_at_its_first_request_with_a_body() {
    use tokio::io::AsyncReadExt;
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("http://handoff.warren.localhost")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();
    let mut visitor = TcpStream::connect(edge.http_addr()).await.unwrap();
    let get = b"GET /echo HTTP/1.1\r\nHost: handoff.warren.localhost\r\n\r\n";
    visitor.write_all(get).await.unwrap();
    let first = within("the first response", read_response(&mut visitor)).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n") && first.contains("\"method\":\"GET\""), "{first}");
    // The body arrives in the same write as its head: the loop has read it when it hands over.
    visitor
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: handoff.warren.localhost\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await
        .unwrap();
    let upload = within("the upload's response", read_response(&mut visitor)).await;
    assert!(upload.starts_with("HTTP/1.1 200 OK\r\n") && upload.contains("\"bytes\":5"), "{upload}");
    let mut two = get.to_vec();
    two.extend_from_slice(get);
    visitor.write_all(&two).await.unwrap();
    let both = within("two pipelined responses", async {
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while got.matches("\"method\":\"GET\"").count() < 2 {
            let n = visitor.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    })
    .await;
    assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 4);
}
