//! https and http endpoints end to end: a real edge, a real agent, a real upstream, visitors
//! over TLS with HTTP/1.1 and HTTP/2.

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode, Version};
use tokio_tungstenite::tungstenite::Message;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

async fn online(edge: &TestEdge, ep: EndpointConfig) -> (Agent, String) {
    online_inspected(edge, ep, false).await
}

/// With `inspected`, the agent runs its inspector, so HTTP is parsed and captured on the way.
async fn online_inspected(edge: &TestEdge, ep: EndpointConfig, inspected: bool) -> (Agent, String) {
    let mut config = edge.agent_with(ep);
    if inspected {
        config.web_addr = Some("127.0.0.1:0".parse().unwrap());
    }
    let mut agent = Agent::start(config);
    let urls = within("agent online", agent.wait_online()).await.expect("agent online");
    (agent, urls[0].clone())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn https_endpoint_over_http1_reaches_the_upstream_with_forwarded_headers() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (_agent, url) =
        online(&edge, EndpointConfig::http(&up.url(), Some("https://app.warren.localhost")).unwrap()).await;
    assert_eq!(url, format!("https://app.warren.localhost:{}", edge.https_addr().port()));

    let tls = tls_connect(edge.https_addr(), "app.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut send = http1(tls).await;
    let host = format!("app.warren.localhost:{}", edge.https_addr().port());
    // As ngrok does, the edge appends to X-Forwarded-For: the last entry is the one it vouches for.
    let req = Request::get("/echo?x=1")
        .header("host", &host)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-custom", "kept")
        .body(empty())
        .unwrap();
    let res = within("response", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let echo = json(std::str::from_utf8(&body).unwrap());
    assert_eq!(echo["path"], "/echo?x=1");
    assert_eq!(echo["headers"]["host"], host.as_str());
    assert_eq!(echo["headers"]["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["x-forwarded-host"], host.as_str());
    assert_eq!(echo["headers"]["x-custom"], "kept");

    // The connection is kept alive and reused for a second request.
    let req = Request::get("/").header("host", &host).body(empty()).unwrap();
    let res = within("second response", send.send_request(req)).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello from upstream");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn https_endpoint_speaks_http2_by_alpn_with_concurrent_requests() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (_agent, url) = online(&edge, EndpointConfig::http(&up.url(), None).unwrap()).await;
    let host = url_host(&url);
    assert!(host.ends_with(".warren.localhost"), "random name under the base domain: {url}");

    let tls = tls_connect(edge.https_addr(), &host, &edge.ca_pem, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let send = http2(tls).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut send = send.clone();
        let host = host.clone();
        let uri = format!("https://{host}:{}/echo?n={i}", edge.https_addr().port());
        tasks.push(tokio::spawn(async move {
            let res = send.send_request(Request::get(uri).body(empty()).unwrap()).await.unwrap();
            assert_eq!(res.version(), Version::HTTP_2);
            assert_eq!(res.status(), StatusCode::OK);
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(echo["path"], format!("/echo?n={i}"));
            // The upstream gets HTTP/1.1 with a Host header made from the :authority.
            assert_eq!(echo["version"], "HTTP/1.1");
            assert!(echo["headers"]["host"].as_str().unwrap().starts_with(&host));
            assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        }));
    }
    for t in tasks {
        within("h2 request", t).await.unwrap();
    }
}

#[tokio::test]
async fn http_endpoint_only_when_asked_and_https_endpoints_redirect_from_http() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (_a1, plain) =
        online(&edge, EndpointConfig::http(&up.url(), Some("http://plain.warren.localhost")).unwrap()).await;
    assert_eq!(plain, format!("http://plain.warren.localhost:{}", edge.http_addr().port()));
    let (_a2, secure) =
        online(&edge, EndpointConfig::http(&up.url(), Some("https://secure.warren.localhost")).unwrap())
            .await;

    // The http endpoint answers on the plain port, with X-Forwarded-Proto http.
    let (status, _, body) = plain_get(edge.http_addr(), "plain.warren.localhost", "/echo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["headers"]["x-forwarded-proto"], "http");

    // An https-only endpoint is never served in clear: the plain port redirects with 308.
    let (status, headers, _) = plain_get(edge.http_addr(), "secure.warren.localhost", "/a/b?c=d").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], format!("{secure}/a/b?c=d"));

    // The http endpoint is not on the https port.
    let (status, _, body) = https_get(&edge, "plain.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("ERR_NGROK_3200"), "{body}");
}

#[tokio::test]
async fn a_host_nobody_holds_gets_a_clear_404_page_on_both_ports() {
    let edge = TestEdge::start().await;
    let (status, _, body) = within("404 https", https_get(&edge, "nobody.warren.localhost", "/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("nobody.warren.localhost") && body.contains("ERR_NGROK_3200"), "{body}");
    let (status, _, body) =
        within("404 http", plain_get(edge.http_addr(), "nobody.warren.localhost", "/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("ERR_NGROK_3200"), "{body}");
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_gives_a_502_with_a_clear_body() {
    let edge = TestEdge::start().await;
    let dead = refused_addr().await;
    let (_agent, url) = online(
        &edge,
        EndpointConfig::http(&format!("http://{dead}"), Some("https://down.warren.localhost")).unwrap(),
    )
    .await;
    let (status, _, body) = within("502", https_get(&edge, &url_host(&url), "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains(&dead.to_string()), "the body names the upstream: {body}");
    assert!(body.to_lowercase().contains("refused"), "the body says why: {body}");
    // The endpoint stays online: a fixed upstream would be reached by the next request.
    let (status, _, _) = within("502 again", https_get(&edge, &url_host(&url), "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn websocket_upgrade_passes_through_with_and_without_the_inspector() {
    for inspected in [false, true] {
        websocket_round_trips(inspected).await;
    }
}

async fn websocket_round_trips(inspected: bool) {
    let edge = TestEdge::start().await;
    let (ws_addr, _ws) = ws_echo().await;
    let (_agent, url) = online_inspected(
        &edge,
        EndpointConfig::http(&format!("http://{ws_addr}"), Some("https://ws.warren.localhost")).unwrap(),
        inspected,
    )
    .await;
    let tls = tls_connect(edge.https_addr(), "ws.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    let ws_url = url.replace("https://", "wss://") + "/socket";
    let (mut ws, res) = within("ws handshake", tokio_tungstenite::client_async(ws_url.as_str(), tls))
        .await
        .expect("WebSocket handshake through the tunnel");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..10 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let back = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let back = within("ws big echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;

#[tokio::test]
async fn a_100_mb_upload_and_download_stream_through_the_tunnel() {
    big_transfers(false).await;
}

/// The inspector keeps only the first part of each body: 100 MB still stream through.
#[tokio::test]
async fn a_100_mb_upload_and_download_stream_through_an_inspected_endpoint() {
    big_transfers(true).await;
}

async fn big_transfers(inspected: bool) {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (_agent, url) = online_inspected(
        &edge,
        EndpointConfig::http(&up.url(), Some("https://big.warren.localhost")).unwrap(),
        inspected,
    )
    .await;
    let host = url_host(&url);

    // Upload over HTTP/1.1 (chunked, streamed from a generator: never held whole).
    let tls = tls_connect(edge.https_addr(), &host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = Request::post("/upload").header("host", &host).body(pattern_body(HUNDRED_MB)).unwrap();
    let res = tokio::time::timeout(std::time::Duration::from_secs(300), send.send_request(req))
        .await
        .expect("upload finished")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let got = json(std::str::from_utf8(&body).unwrap());
    assert_eq!(got["bytes"], HUNDRED_MB);
    assert_eq!(got["sha256"], pattern_digest(HUNDRED_MB));

    // Download over HTTP/2, digested as it arrives.
    let tls = tls_connect(edge.https_addr(), &host, &edge.ca_pem, &[b"h2"]).await;
    let mut send = http2(tls).await;
    let uri = format!("{url}/download/{HUNDRED_MB}");
    let res = send.send_request(Request::get(uri).body(empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (n, digest) = tokio::time::timeout(std::time::Duration::from_secs(300), digest_body(res.into_body()))
        .await
        .unwrap();
    assert_eq!(n, HUNDRED_MB);
    assert_eq!(digest, pattern_digest(HUNDRED_MB));
}

/// A visitor of `host` over https that asks for 1 GiB and takes only the response's head
/// (its connection stays open while the response is held).
async fn stuck_download(edge: &TestEdge, host: &str) -> hyper::Response<hyper::body::Incoming> {
    let tls = tls_connect(edge.https_addr(), host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut stuck = http1(tls).await;
    let req = Request::get("/slow-download/1073741824").header("host", host).body(empty()).unwrap();
    let res = within("stuck headers", stuck.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res
}

#[tokio::test]
async fn a_visitor_that_stops_reading_does_not_hold_up_others() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (_agent, url) =
        online(&edge, EndpointConfig::http(&up.url(), Some("https://stuck.warren.localhost")).unwrap()).await;
    let host = url_host(&url);

    // The stuck visitor asks for 1 GiB and reads only the headers.
    let stuck_res = stuck_download(&edge, &host).await;

    // Everyone else on the same session is served while it sits there.
    for _ in 0..5 {
        let (status, _, body) = within("other visitor", https_get(&edge, &host, "/")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello from upstream");
    }
    let up2 = HttpUpstream::start().await;
    let (_agent2, url2) = online(&edge, EndpointConfig::http(&up2.url(), None).unwrap()).await;
    let (status, _, _) = within("other session", https_get(&edge, &url_host(&url2), "/")).await;
    assert_eq!(status, StatusCode::OK);
    drop(stuck_res);
}

#[tokio::test]
async fn host_header_rewrite_sends_the_upstream_its_own_name() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let mut ep = EndpointConfig::http(&up.url(), Some("https://rw.warren.localhost")).unwrap();
    ep.host_header = Some("rewrite".into());
    let (_agent, _url) = online(&edge, ep).await;
    let (_, _, body) = within("rewrite", https_get(&edge, "rw.warren.localhost", "/echo")).await;
    assert_eq!(json(&body)["headers"]["host"], up.addr.to_string());
}

#[tokio::test]
async fn a_tls_upstream_on_loopback_is_reached_and_verification_can_be_forced() {
    let edge = TestEdge::start().await;
    let (addr, _task) = https_upstream().await;
    let upstream = format!("https://127.0.0.1:{}", addr.port());
    // Loopback: the self-signed certificate is accepted by default (local dev servers).
    let (_a1, _) =
        online(&edge, EndpointConfig::http(&upstream, Some("https://tlsup.warren.localhost")).unwrap()).await;
    let (status, _, body) = within("tls upstream", https_get(&edge, "tlsup.warren.localhost", "/echo")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["path"], "/echo");

    // --upstream-tls-verify: the same certificate is refused, with a 502 saying why.
    let mut ep = EndpointConfig::http(&upstream, Some("https://tlsverify.warren.localhost")).unwrap();
    ep.upstream_tls_verify = Some(true);
    let (_a2, _) = online(&edge, ep).await;
    let (status, _, body) =
        within("verified tls upstream", https_get(&edge, "tlsverify.warren.localhost", "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.to_lowercase().contains("certificate"), "{body}");
}

/// Sends `raw` to the edge's plain http port and returns everything it answers, up to the
/// end of the first response (the connection is closed after it).
async fn raw_exchange(edge: &TestEdge, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(edge.http_addr()).await.expect("connect");
    tcp.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    within("response", tcp.read_to_end(&mut out)).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn two_host_headers_are_refused_and_an_absolute_target_wins_over_host() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (_agent, url) =
        online(&edge, EndpointConfig::http(&up.url(), Some("http://plain.warren.localhost")).unwrap()).await;
    let authority = url.trim_start_matches("http://");

    // RFC 9112 §3.2: more than one Host line is a 400, whichever comes first.
    for (first, second) in
        [("plain.warren.localhost", "other.example"), ("other.example", "plain.warren.localhost")]
    {
        let answer = raw_exchange(
            &edge,
            &format!("GET /echo HTTP/1.1\r\nHost: {first}\r\nHost: {second}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("more than one Host header"), "{answer}");
    }

    // An absolute-form target is routed by its authority, and the upstream sees that authority
    // as Host, not the Host header sent beside it (RFC 9112 §3.2.2).
    let answer = raw_exchange(
        &edge,
        &format!("GET {url}/echo HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    let echo = json(body.trim());
    assert_eq!(echo["headers"]["host"], authority, "{answer}");
    assert_eq!(echo["headers"]["x-forwarded-host"], authority, "{answer}");
}

#[tokio::test]
async fn a_visitor_that_never_reads_is_closed_at_the_idle_deadline() {
    let idle = std::time::Duration::from_millis(500);
    let edge = TestEdge::start_with(|c| c.limits.idle_timeout = idle).await;
    let up = HttpUpstream::start().await;
    let (_agent, url) =
        online(&edge, EndpointConfig::http(&up.url(), Some("https://never-reads.warren.localhost")).unwrap())
            .await;
    let host = url_host(&url);
    // It asks for 1 GiB, takes the headers and never reads a byte of the body: the edge's
    // writes stall, its proxy stream is busy (never idle, so never released as idle), and
    // only the idle deadline ends it.
    let stuck_res = stuck_download(&edge, &host).await;
    assert_eq!(edge.visitor_connections().await, 1.0);
    let stalled = std::time::Instant::now();
    within("the edge closes the stalled connection", async {
        while edge.visitor_connections().await != 0.0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    // Within two idle periods and the time the socket buffers take to fill, not at the
    // first-byte deadline (10 s).
    let took = stalled.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "closed after {took:?}");
    // The visitor sees its body end short of the 1 GiB it was promised, not a hang.
    let read = within("the body ends", async {
        let mut body = stuck_res.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        n
    })
    .await;
    assert!(read < 1 << 30, "{read} bytes");
    // And the endpoint serves the next visitor as before.
    let (status, _, body) = within("the next visitor", https_get(&edge, &host, "/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello from upstream");
}
