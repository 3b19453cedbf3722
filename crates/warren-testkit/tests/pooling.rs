//! Endpoint pooling: agents of one account that each ask for it serve one URL together and
//! visitors are spread across them; a member that leaves costs no request; an agent that did
//! not ask, or another account's, cannot join; ngrok's Rust SDK joins a pool too.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use ngrok::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

/// A TCP upstream that writes `name` to every connection and closes it.
async fn named_tcp(name: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let _ = tcp.write_all(name).await;
            });
        }
    });
    addr
}

fn pooled(mut ep: EndpointConfig) -> EndpointConfig {
    ep.pooling = true;
    ep
}

async fn bodies(edge: &TestEdge, host: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, _, body) = https_get(edge, host, "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        out.push(body);
    }
    out
}

#[tokio::test]
async fn pooled_agents_share_a_url_and_one_leaves_without_a_failed_request() {
    let edge = TestEdge::start().await;
    let url = "https://pool.warren.localhost";
    let (one, two) = (named_upstream("one").await, named_upstream("two").await);
    let mut first =
        Agent::start(edge.agent_with(pooled(EndpointConfig::http(&one.to_string(), Some(url)).unwrap())));
    within("first member online", first.wait_online()).await.unwrap();
    let mut second =
        Agent::start(edge.agent_with(pooled(EndpointConfig::http(&two.to_string(), Some(url)).unwrap())));
    within("second member online", second.wait_online()).await.unwrap();
    let seen = bodies(&edge, "pool.warren.localhost", 10).await;
    assert!(
        seen.iter().any(|b| b == "one /") && seen.iter().any(|b| b == "two /"),
        "both members serve: {seen:?}"
    );

    // An agent that did not ask for pooling cannot join (nor take the URL).
    let err = within(
        "an unpooled bind is refused",
        Agent::start(edge.agent_with(EndpointConfig::http(&one.to_string(), Some(url)).unwrap()))
            .wait_online(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ERR_NGROK_334"), "{err}");
    // Nor can another account's agent, pooled or not.
    let other = edge.tenant("other").await;
    let mut cfg = other.agent_config(&edge);
    cfg.endpoints = vec![pooled(EndpointConfig::http(&one.to_string(), Some(url)).unwrap())];
    let err = within("another account is refused", Agent::start(cfg).wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("ERR_NGROK"), "{err}");

    // Visitors keep coming on kept-alive connections while the second member leaves.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (addr, ca) = (edge.https_addr(), edge.ca_pem.clone());
        load.push(tokio::spawn(async move {
            let tls = tls_connect(addr, "pool.warren.localhost", &ca, &[b"http/1.1"]).await;
            let mut send = http1(tls).await;
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get("/").header("host", "pool.warren.localhost").body(empty()).unwrap();
                match send.send_request(req).await {
                    Ok(res) if res.status() == StatusCode::OK => {
                        let _ = res.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    within("the second member leaves", second.stop()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{} requests succeeded", ok.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert!(bodies(&edge, "pool.warren.localhost", 6).await.iter().all(|b| b == "one /"));
    first.stop().await.unwrap();
}

#[tokio::test]
async fn a_pooled_tcp_port_is_shared_by_its_members_and_freed_with_the_last() {
    let port = free_port();
    let edge = TestEdge::start_with(|c| c.tcp_ports = port..=port).await;
    let url = format!("tcp://localhost:{port}");
    let (one, two) = (named_tcp(b"one").await, named_tcp(b"two").await);
    let mut first =
        Agent::start(edge.agent_with(pooled(EndpointConfig::tcp(&one.to_string(), Some(&url)).unwrap())));
    within("first member online", first.wait_online()).await.unwrap();
    let mut second =
        Agent::start(edge.agent_with(pooled(EndpointConfig::tcp(&two.to_string(), Some(&url)).unwrap())));
    within("second member online", second.wait_online()).await.unwrap();
    let read = || async move {
        let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.unwrap();
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        String::from_utf8(got).unwrap()
    };
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(read().await);
    }
    assert!(seen.contains(&"one".to_owned()) && seen.contains(&"two".to_owned()), "{seen:?}");
    // The first member leaves; the port (its listener was made by the first bind) stays open
    // for the second.
    first.stop().await.unwrap();
    edge.wait_sessions(1).await;
    for _ in 0..3 {
        assert_eq!(read().await, "two");
    }
    second.stop().await.unwrap();
    edge.wait_sessions(0).await;
    // With the last member gone the port is free again for anyone of the account.
    let mut again = Agent::start(edge.agent_with(EndpointConfig::tcp(&one.to_string(), Some(&url)).unwrap()));
    within("the port is free again", again.wait_online()).await.unwrap();
    again.stop().await.unwrap();
}

#[tokio::test]
async fn the_ngrok_sdk_joins_a_pool_with_pooling_enabled() {
    let edge = TestEdge::start().await;
    let url = "https://sdk-pool.warren.localhost";
    let one = named_upstream("warren agent").await;
    let mut agent =
        Agent::start(edge.agent_with(pooled(EndpointConfig::http(&one.to_string(), Some(url)).unwrap())));
    within("warren agent online", agent.wait_online()).await.unwrap();
    let sess = ngrok::Session::builder()
        .authtoken(edge.authtoken.clone())
        .server_addr(edge.connect_url())
        .expect("server address")
        .ca_cert(Bytes::from(edge.ca_pem.clone()))
        .connect()
        .await
        .expect("SDK session");
    let mut tunnel = within(
        "sdk joins",
        sess.http_endpoint().domain("sdk-pool.warren.localhost").pooling_enabled(true).listen(),
    )
    .await
    .expect("the SDK's pooled bind");
    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(full("ngrok sdk")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    let seen = bodies(&edge, "sdk-pool.warren.localhost", 10).await;
    assert!(seen.iter().any(|b| b == "warren agent /") && seen.iter().any(|b| b == "ngrok sdk"), "{seen:?}");
    agent.stop().await.unwrap();
}

/// Under `wrk`'s load (16 kept-alive connections), one of two pooled members leaves: no
/// request fails (no socket error, no non-2xx answer) and the other member takes the rest.
#[tokio::test]
async fn a_pooled_member_leaves_under_wrk_load_without_a_failed_request() {
    let edge = TestEdge::start().await;
    let url = "http://wrkpool.warren.localhost";
    let (a, b) = (HttpUpstream::start().await, HttpUpstream::start().await);
    let mut first = Agent::start(edge.agent_with(pooled(EndpointConfig::http(&a.url(), Some(url)).unwrap())));
    within("first member online", first.wait_online()).await.unwrap();
    let mut second =
        Agent::start(edge.agent_with(pooled(EndpointConfig::http(&b.url(), Some(url)).unwrap())));
    within("second member online", second.wait_online()).await.unwrap();
    let target = format!("http://{}/", edge.http_addr());
    let wrk = tokio::process::Command::new("wrk")
        .args(["-t2", "-c16", "-d4s", "-H", "Host: wrkpool.warren.localhost", &target])
        .kill_on_drop(true)
        .output();
    let wrk = tokio::spawn(wrk);
    // Both members are serving wrk's requests before the second one leaves.
    within("both members under load", async {
        while a.requests.load(Ordering::Relaxed) < 200 || b.requests.load(Ordering::Relaxed) < 200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    within("the second member leaves", second.stop()).await.unwrap();
    let (a_at_leave, b_at_leave) = (a.requests.load(Ordering::Relaxed), b.requests.load(Ordering::Relaxed));
    let out = within("wrk done", wrk).await.unwrap().expect("wrk is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Socket errors") && !text.contains("Non-2xx"), "failed requests:\n{text}");
    assert!(a.requests.load(Ordering::Relaxed) > a_at_leave + 100, "the first member took the rest:\n{text}");
    assert_eq!(b.requests.load(Ordering::Relaxed), b_at_leave, "nothing reached the member that left");
    first.stop().await.unwrap();
}
