//! Findings of the outside security review of the listeners, each as the attack that
//! reproduced it: the attacker is another account, a raw agent-protocol client, or a visitor
//! choosing its own SNI and Host.

use hyper::StatusCode;
use warren_agent::{Agent, EndpointConfig};
use warren_proto::error_codes as codes;
use warren_testkit::hostile::Bystander;
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

/// Before Auth a connection is nobody: it may hold a few streams and a few KiB. Each
/// attacker opens stream 1 with half a stream type (so the edge waits on it). The first then
/// opens 40 more small streams: those beyond the pre-Auth limit (8) are refused. The second
/// opens 40 streams of 256 KiB each (within each stream's window): each is reset once its data
/// goes beyond the pre-Auth buffer (64 KiB). At the Auth deadline both connections are dropped
/// with everything they held. Before, the edge queued up to 4,096 such streams (about 1 GiB)
/// and kept them past the deadline.
#[tokio::test]
async fn before_auth_a_connection_holds_a_few_streams_and_a_few_kib() {
    let edge = TestEdge::start_with(|c| c.limits.auth_timeout = std::time::Duration::from_secs(2)).await;
    let b = Bystander::start(&edge, "calm-preauth").await;
    let (mut many, mut big) =
        (hostile::Hostile::connect(&edge).await, hostile::Hostile::connect(&edge).await);
    let ids: Vec<u32> = (3..=81).step_by(2).collect();
    let chunk = vec![0x55u8; 256 * 1024];
    for h in [&mut many, &mut big] {
        h.frame(hostile::ty::DATA, hostile::flag::SYN, 1, &[0, 0]).await.unwrap();
    }
    for id in &ids {
        many.frame(hostile::ty::DATA, hostile::flag::SYN, *id, b"x").await.unwrap();
        big.frame(hostile::ty::DATA, hostile::flag::SYN, *id, &chunk).await.unwrap();
    }
    let rst = |frames: &[hostile::Frame], code: u32| -> Vec<u32> {
        frames
            .iter()
            .filter(|f| f.ty == hostile::ty::RST && f.error_code() == Some(code))
            .map(|f| f.stream)
            .collect()
    };
    let frames = many.until_closed().await;
    let refused = rst(&frames, hostile::code::STREAM_REFUSED);
    assert_eq!(refused, ids[7..], "7 streams beside stream 1 are held; the rest are refused");
    assert!(frames.iter().any(|f| f.ty == hostile::ty::GOAWAY), "a GOAWAY says why it ended");
    let frames = big.until_closed().await;
    let calmed = rst(&frames, hostile::code::ENHANCE_YOUR_CALM);
    assert_eq!(calmed, ids, "every 256 KiB stream went beyond the pre-Auth buffer and was reset");
    many.assert_socket_dropped().await;
    big.assert_socket_dropped().await;
    b.still_serves(&edge).await;
}

/// Every way a session can end lets go of its socket: a client that completes TLS and sends
/// nothing, one whose Auth fails, and one that sends GOAWAY after Auth and then nothing.
/// Before, the edge's reader kept waiting on each for a byte that never came.
#[tokio::test]
async fn every_session_end_closes_its_socket() {
    let edge = TestEdge::start_with(|c| c.limits.auth_timeout = std::time::Duration::from_secs(1)).await;
    let b = Bystander::start(&edge, "calm-ends").await;

    let mut silent = hostile::Hostile::connect(&edge).await;
    silent.until_closed().await;
    silent.assert_socket_dropped().await;

    let mut wrong = hostile::Hostile::connect(&edge).await;
    let r = wrong.auth(1, "cr_nobody_000000000000000000000000").await;
    assert!(r.error.contains(codes::AUTHTOKEN_INVALID), "{r:?}");
    wrong.until_closed().await;
    wrong.assert_socket_dropped().await;

    let mut leaver = hostile::Hostile::connect(&edge).await;
    let r = leaver.auth(1, &edge.authtoken).await;
    assert!(r.error.is_empty(), "{r:?}");
    edge.wait_sessions(2).await;
    let mut goaway = 0u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    leaver.frame(hostile::ty::GOAWAY, 0, 0, &goaway).await.unwrap();
    leaver.until_closed().await;
    leaver.assert_socket_dropped().await;
    edge.wait_sessions(1).await;
    b.still_serves(&edge).await;
}

/// An agent that binds a name and then stops reading its connection: the edge's heartbeat
/// cannot even be written once visitors' requests fill the session. The heartbeat tolerance
/// still ends the session and frees the name. Before, the heartbeat write waited forever and
/// the agent kept its name.
#[tokio::test]
async fn an_agent_that_stops_reading_loses_its_names_at_the_heartbeat_tolerance() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "calm-reader").await;
    let mut h = hostile::Hostile::connect(&edge).await;
    assert!(h.auth(1, &edge.authtoken).await.error.is_empty());
    let bind = serde_json::json!({ "Id": "frozen", "Proto": "https", "Opts": { "Domain": "frozen.warren.localhost" } });
    h.open_rpc(3, 1, &bind).await.unwrap();
    let reply: warren_proto::BindResp = warren_proto::decode("BindResp", &h.reply(3).await).unwrap();
    assert!(reply.error.is_empty(), "{reply:?}");
    // From now on the agent reads nothing. Visitors upload to it until the session's
    // output and the socket buffers are full.
    for _ in 0..64 {
        let edge_addr = edge.https_addr();
        let ca = edge.ca_pem.clone();
        tokio::spawn(async move {
            let tls = tls_connect(edge_addr, "frozen.warren.localhost", &ca, &[b"http/1.1"]).await;
            let mut send = http1(tls).await;
            let req = hyper::Request::post("/")
                .header("host", "frozen.warren.localhost")
                .body(pattern_body(1 << 20))
                .unwrap();
            let _ = send.send_request(req).await;
        });
    }
    within("the frozen agent's name is freed", async {
        loop {
            let (status, _, _) = https_get(&edge, "frozen.warren.localhost", "/").await;
            if status == StatusCode::NOT_FOUND {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    b.still_serves(&edge).await;
    drop(h);
}

/// A connection to the http, https or API listener that sends nothing is closed at the
/// first-byte deadline (here 1 s). Before, such connections stayed open indefinitely.
#[tokio::test]
async fn connections_that_send_nothing_are_closed_at_the_first_byte_deadline() {
    use tokio::io::AsyncReadExt;
    let edge =
        TestEdge::start_with(|c| c.limits.first_byte_timeout = std::time::Duration::from_secs(1)).await;
    for addr in [edge.http_addr(), edge.api_addr()] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = within("closed for silence", tcp.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "{addr}: closed without an answer");
    }
    let mut tls =
        tls_connect(edge.https_addr(), "nobody.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    let mut buf = [0u8; 64];
    let n = within("https closed for silence", tls.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "https: closed without an answer");
}

/// One address cannot take every API slot: idle connections from 127.0.0.2 fill that
/// address's share, and an API call from 127.0.0.1 is still served. Before, 1,030 idle
/// connections locked every caller out.
#[tokio::test]
async fn one_address_cannot_take_every_api_or_visitor_slot() {
    use tokio::io::AsyncReadExt;
    let edge = TestEdge::start_with(|c| {
        c.limits.max_api_connections_per_ip = 4;
        c.limits.max_visitor_connections_per_ip = 4;
    })
    .await;
    let from = |ip: [u8; 4]| async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
        s
    };
    for addr in [edge.api_addr(), edge.http_addr()] {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(from([127, 0, 0, 2]).await.connect(addr).await.unwrap());
        }
        let mut fifth = from([127, 0, 0, 2]).await.connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = within("the fifth is closed at once", fifth.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "{addr}: over the address's share");
        if addr == edge.api_addr() {
            let (status, _, body) = edge.api("GET", "/credentials", Some(&edge.api_key), None).await;
            assert_eq!(status, StatusCode::OK, "another address is served: {body}");
        } else {
            let (status, _, _) = plain_get(addr, "anything.warren.localhost", "/").await;
            assert_eq!(status, StatusCode::NOT_FOUND, "another address is served");
        }
        drop(held);
    }
}

/// Wrong secrets are throttled per address: after 20 wrong API keys or authtokens in a
/// minute, an address is refused even with a right one until the minute is over; other
/// addresses are not affected. An authtoken with non-ASCII characters is one more wrong
/// token (it used to panic the Auth task), and an Auth dripped one byte per frame works.
#[tokio::test]
async fn wrong_secrets_are_throttled_per_address_and_odd_tokens_are_just_wrong() {
    let edge = TestEdge::start_with(|c| c.limits.max_auth_failures_per_ip = 5).await;
    let mut odd = hostile::Hostile::connect(&edge).await;
    let r = odd.auth(1, "cr_ééééééééééééééééééééééééééé_secret").await;
    assert!(r.error.contains(codes::AUTHTOKEN_INVALID), "{r:?}");

    // An Auth sent one byte per DATA frame is read once it is whole.
    let mut drip = hostile::Hostile::connect(&edge).await;
    let auth = serde_json::json!({ "Version": ["3"], "Extra": { "AuthToken": edge.authtoken } }).to_string();
    drip.frame(hostile::ty::DATA, hostile::flag::SYN, 1, &0u32.to_be_bytes()).await.unwrap();
    for b in auth.as_bytes() {
        drip.frame(hostile::ty::DATA, 0, 1, std::slice::from_ref(b)).await.unwrap();
    }
    let reply: warren_proto::AuthResp =
        warren_proto::decode("AuthResp", &within("dripped Auth", drip.reply(1)).await).unwrap();
    assert!(reply.error.is_empty(), "{reply:?}");

    // Four more wrong authtokens from 127.0.0.1 (five in all): the next attempt is refused
    // even with the right token.
    for _ in 0..4 {
        let raw = RawSession::connect(&edge, true).await;
        assert!(
            raw.auth("cr_0000000000000000000000000_wrong").await.error.contains(codes::AUTHTOKEN_INVALID)
        );
    }
    let raw = RawSession::connect(&edge, true).await;
    let r = raw.auth(&edge.authtoken).await;
    assert!(r.error.contains("too many wrong"), "{r:?}");
    // The API shares the count: the right key from the same address gets 429.
    let (status, _, body) = edge.api("GET", "/credentials", Some(&edge.api_key), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // Another address is served.
    let api_addr = edge.api_addr();
    let api_from = |key: String| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(std::net::SocketAddr::from(([127, 0, 0, 3], 0))).unwrap();
        let mut tcp = s.connect(api_addr).await.unwrap();
        let req = format!(
            "GET /credentials HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\nNgrok-Version: 2\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    };
    let answer = within("API from 127.0.0.3", api_from(edge.api_key.clone())).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A Host with user information is refused: `victim@secure` was routed by its host part
/// and forwarded to the upstream as it was.
#[tokio::test]
async fn a_host_with_user_information_is_refused() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "secure").await;
    for host in ["victim@secure.warren.localhost", "secure.warren.localhost@evil.example"] {
        let (status, _, body) = plain_get(edge.http_addr(), host, "/").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{host}: {body}");
        let tls =
            tls_connect(edge.https_addr(), "secure.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
        let mut send = http1(tls).await;
        let req = hyper::Request::get("/").header("host", host).body(empty()).unwrap();
        let res = within("https answer", send.send_request(req)).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{host} over https");
    }
    b.still_serves(&edge).await;
}

/// Configured names compare like every other name: a connect hostname given in capitals is
/// still the edge's own, so no account can bind or reserve it.
#[tokio::test]
async fn a_connect_hostname_in_capitals_is_still_the_edges_own() {
    let edge = TestEdge::start_with(|c| c.connect_hostnames.push("Connect.Corp.Example".into())).await;
    let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
    let r = raw.bind_https("steal", "connect.corp.example").await;
    assert!(r.error.contains("connect hostname"), "{r:?}");
    let body = serde_json::json!({"domain": "connect.corp.example"});
    let (status, _, answer) = edge.api("POST", "/reserved_domains", Some(&edge.api_key), Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}
