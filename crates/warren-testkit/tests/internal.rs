//! Internal endpoints (`https://NAME.internal`): bound like any endpoint, reachable only
//! through the `forward-internal` action of an endpoint of the same account, never from the
//! internet; each account's internal names are its own.

use std::net::SocketAddr;

use hyper::{Request, StatusCode};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

fn front(upstream: SocketAddr, url: &str, policy: &str) -> EndpointConfig {
    let mut ep = EndpointConfig::http(&upstream.to_string(), Some(url)).unwrap();
    ep.traffic_policy = Some(serde_json::Value::String(policy.to_owned()));
    ep
}

const FORWARD_API: &str = r#"
on_http_request:
  - expressions: ["req.url.path.startsWith('/api')"]
    actions:
      - type: forward-internal
        config:
          url: https://api.internal
"#;

#[tokio::test]
async fn an_internal_endpoint_is_reached_only_through_forward_internal_of_its_own_account() {
    let edge = TestEdge::start().await;
    let (api, web) = (named_upstream("internal api").await, named_upstream("front").await);
    let mut internal = Agent::start(
        edge.agent_with(EndpointConfig::http(&api.to_string(), Some("https://api.internal")).unwrap()),
    );
    let urls = within("internal endpoint online", internal.wait_online()).await.unwrap();
    assert_eq!(urls, ["https://api.internal"]);
    let mut front_agent =
        Agent::start(edge.agent_with(front(web, "https://shop.warren.localhost", FORWARD_API)));
    within("front online", front_agent.wait_online()).await.unwrap();

    // Through the front endpoint's policy: /api goes to the internal endpoint, the rest to
    // the front's own upstream.
    let (s, _, body) = https_get(&edge, "shop.warren.localhost", "/api/orders").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "internal api /api/orders"));
    let (s, _, body) = https_get(&edge, "shop.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "front /"));

    // Never from outside: not by Host on either listener, not by SNI, not with the account id.
    let (s, _, _) = plain_get(edge.http_addr(), "api.internal", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let tls = tls_connect(edge.https_addr(), "shop.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    for host in ["api.internal", "api.internal@acc_x"] {
        let res =
            send.send_request(Request::get("/").header("host", host).body(empty()).unwrap()).await.unwrap();
        assert!(
            res.status() == StatusCode::NOT_FOUND || res.status() == StatusCode::BAD_REQUEST,
            "{host}: {}",
            res.status()
        );
    }

    // Another account: its policy cannot reach this account's api.internal (502: none online in
    // its account), and it may have an api.internal of its own.
    let other = edge.tenant("other").await;
    let mut cfg = other.agent_config(&edge);
    cfg.endpoints = vec![front(web, "https://elsewhere.warren.localhost", FORWARD_API)];
    let mut other_front = Agent::start(cfg);
    within("other front online", other_front.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&edge, "elsewhere.warren.localhost", "/api/orders").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    assert!(!body.contains("internal api"), "{body}");
    let theirs = named_upstream("their api").await;
    let mut cfg = other.agent_config(&edge);
    cfg.endpoints = vec![EndpointConfig::http(&theirs.to_string(), Some("https://api.internal")).unwrap()];
    let mut other_internal = Agent::start(cfg);
    within("their own api.internal", other_internal.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&edge, "elsewhere.warren.localhost", "/api/x").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "their api /api/x"));
    let (_, _, body) = https_get(&edge, "shop.warren.localhost", "/api/x").await;
    assert_eq!(body, "internal api /api/x", "each account reaches its own");

    for a in [internal, front_agent, other_front, other_internal] {
        a.stop().await.unwrap();
    }
}

#[tokio::test]
async fn forward_internal_halts_or_continues_when_the_internal_endpoint_is_offline() {
    let edge = TestEdge::start().await;
    let web = named_upstream("front").await;
    let continuing = r#"
on_http_request:
  - actions:
      - type: forward-internal
        config:
          url: https://missing.internal
          on_error: continue
"#;
    let mut a = Agent::start(edge.agent_with(front(web, "https://halt.warren.localhost", FORWARD_API)));
    within("online", a.wait_online()).await.unwrap();
    let mut b = Agent::start(edge.agent_with(front(web, "https://go-on.warren.localhost", continuing)));
    within("online", b.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&edge, "halt.warren.localhost", "/api/x").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(body.contains("No internal endpoint https://api.internal is online"), "{body}");
    let (s, _, body) = https_get(&edge, "go-on.warren.localhost", "/x").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "front /x"));

    // Refused where they make no sense, by name.
    for (url, policy, says) in [
        (
            "https://pub.warren.localhost",
            "on_http_request:\n  - actions:\n      - type: forward-internal\n        config:\n          url: https://api.example.com\n",
            "NAME.internal",
        ),
        (
            "https://pub2.warren.localhost",
            "on_http_request:\n  - actions:\n      - type: forward-internal\n        config:\n          url: https://api.internal\n          on_error: retry\n",
            "on_error",
        ),
        (
            "https://pub3.warren.localhost",
            "on_http_response:\n  - actions:\n      - type: forward-internal\n        config:\n          url: https://api.internal\n",
            "on_http_request",
        ),
    ] {
        let err = within("refused", Agent::start(edge.agent_with(front(web, url, policy))).wait_online())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
    let err = within(
        "a tcp internal endpoint without a port is refused",
        Agent::start(
            edge.agent_with(EndpointConfig::tcp(&web.to_string(), Some("tcp://db.internal")).unwrap()),
        )
        .wait_online(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tcp://NAME.internal:PORT"), "{err}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A TCP upstream that writes `name` to every connection and closes it.
async fn named_tcp(name: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(name).await;
        }
    });
    addr
}

/// Connects to `port`, writes `ping` and reads to the end.
async fn ping(port: u16) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(b"ping").await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let _ = within("answer", s.read_to_end(&mut got)).await;
    got
}

fn forwarding(upstream: SocketAddr, target: &str, on_error: &str) -> EndpointConfig {
    let mut ep = EndpointConfig::tcp(&upstream.to_string(), None).unwrap();
    ep.traffic_policy = Some(serde_json::Value::String(format!(
        "on_tcp_connect:\n  - actions:\n      - type: forward-internal\n        config:\n          url: {target}\n          on_error: {on_error}\n"
    )));
    ep
}

#[tokio::test]
async fn tcp_and_tls_connections_reach_internal_endpoints_only_through_on_tcp_connect() {
    let edge = TestEdge::start().await;
    let (echo, _echo) = tcp_echo().await;
    let mut db = Agent::start(
        edge.agent_with(EndpointConfig::tcp(&echo.to_string(), Some("tcp://db.internal:5432")).unwrap()),
    );
    let urls = within("internal tcp online", db.wait_online()).await.unwrap();
    assert_eq!(urls, ["tcp://db.internal:5432"]);

    // A public tcp endpoint whose policy forwards every connection to it.
    let own = named_tcp(b"front").await;
    let mut front = Agent::start(edge.agent_with(forwarding(own, "tcp://db.internal:5432", "halt")));
    let front_url = within("front online", front.wait_online()).await.unwrap().remove(0);
    assert_eq!(ping(url_port(&front_url)).await, b"ping", "the internal endpoint's echo answers");

    // Another port of the same name is another endpoint: none online, so halt closes and
    // continue goes to the front's own upstream.
    let mut halting = Agent::start(edge.agent_with(forwarding(own, "tcp://db.internal:6543", "halt")));
    let halting_url = within("online", halting.wait_online()).await.unwrap().remove(0);
    assert_eq!(ping(url_port(&halting_url)).await, b"");
    let mut going_on = Agent::start(edge.agent_with(forwarding(own, "tcp://db.internal:6543", "continue")));
    let going_on_url = within("online", going_on.wait_online()).await.unwrap().remove(0);
    assert_eq!(ping(url_port(&going_on_url)).await, b"front");

    // Another account's endpoint with the same policy reaches nothing of this account.
    let other = edge.tenant("other").await;
    let mut cfg = other.agent_config(&edge);
    cfg.endpoints = vec![forwarding(own, "tcp://db.internal:5432", "halt")];
    let mut theirs = Agent::start(cfg);
    let their_url = within("their front online", theirs.wait_online()).await.unwrap().remove(0);
    assert_eq!(ping(url_port(&their_url)).await, b"", "closed: no db.internal in their account");

    // tls: a public passthrough endpoint hands the visitor's TLS to an internal tls endpoint,
    // whose upstream holds the public name's certificate.
    let ca = TestCa::new("internal upstream CA");
    let (chain, key, _) = ca.leaf("front.warren.localhost");
    let secure = tls_echo_upstream(&chain, &key).await;
    let mut internal_tls =
        Agent::start(edge.agent_with(
            EndpointConfig::tls(&secure.to_string(), Some("tls://secure.internal"), None).unwrap(),
        ));
    assert_eq!(
        within("internal tls online", internal_tls.wait_online()).await.unwrap(),
        ["tls://secure.internal"]
    );
    let mut public =
        EndpointConfig::tls(&own.to_string(), Some("tls://front.warren.localhost"), None).unwrap();
    public.traffic_policy = Some(serde_json::Value::String(
        "on_tcp_connect:\n  - actions:\n      - type: forward-internal\n        config:\n          url: tls://secure.internal\n".into(),
    ));
    let mut public_agent = Agent::start(edge.agent_with(public));
    within("public tls online", public_agent.wait_online()).await.unwrap();
    let mut tls = tls_connect(edge.https_addr(), "front.warren.localhost", ca.pem.as_bytes(), &[]).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"over tls").await.unwrap();
        let mut back = [0u8; 8];
        within("tls echo", tls.read_exact(&mut back)).await.unwrap();
        assert_eq!(&back, b"over tls");
    }

    for a in [db, front, halting, going_on, theirs, internal_tls, public_agent] {
        a.stop().await.unwrap();
    }
}

#[tokio::test]
async fn forward_internal_is_refused_where_it_cannot_work() {
    let edge = TestEdge::start().await;
    let web = named_upstream("web").await;
    for (ep, says) in [
        // Requests are forwarded from on_http_request; a connection to an http endpoint is the edge's.
        (
            front(
                web,
                "https://a.warren.localhost",
                "on_tcp_connect:\n  - actions:\n      - type: forward-internal\n        config:\n          url: tcp://db.internal:5432\n",
            ),
            "tcp or tls endpoint",
        ),
        (forwarding(web, "https://api.internal", "halt"), "on_http_request"),
        (forwarding(web, "tcp://db.internal", "halt"), "PORT"),
    ] {
        let err = within("refused", Agent::start(edge.agent_with(ep)).wait_online()).await.unwrap_err();
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
}

/// ngrok's Rust SDK binds an internal endpoint with `binding("internal")`, as ngrok's docs
/// show; a public endpoint of warren's agent reaches it with forward-internal, and a binding
/// that does not match its name is refused.
#[tokio::test]
async fn the_ngrok_sdk_binds_an_internal_endpoint_with_binding_internal() {
    use futures_util::TryStreamExt;
    use ngrok::prelude::*;
    let edge = TestEdge::start().await;
    let sess = ngrok::Session::builder()
        .authtoken(edge.authtoken.clone())
        .server_addr(edge.connect_url())
        .expect("server address")
        .ca_cert(bytes::Bytes::from(edge.ca_pem.clone()))
        .connect()
        .await
        .expect("SDK session");
    let mut tunnel =
        within("sdk internal", sess.http_endpoint().domain("sdkapi.internal").binding("internal").listen())
            .await
            .expect("internal endpoint");
    assert_eq!(tunnel.url(), "https://sdkapi.internal");
    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = format!("sdk internal {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    let web = named_upstream("front").await;
    let policy = "on_http_request:\n  - actions:\n      - type: forward-internal\n        config:\n          url: https://sdkapi.internal\n";
    let mut front_agent =
        Agent::start(edge.agent_with(front(web, "https://viasdk.warren.localhost", policy)));
    within("front online", front_agent.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&edge, "viasdk.warren.localhost", "/orders").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "sdk internal /orders"));
    // Never from outside, and a public name with binding internal is refused.
    let (s, _, _) = plain_get(edge.http_addr(), "sdkapi.internal", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let err = sess
        .http_endpoint()
        .domain("pub.warren.localhost")
        .binding("internal")
        .listen()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains(".internal"), "{err}");
    front_agent.stop().await.unwrap();
}
