//! The agent's request inspector and local API (`web_addr`): capture through a real tunnel,
//! the API in ngrok's shapes, replay (also with changes), endpoints added and removed at run
//! time, the DNS-rebinding and cross-site guards, the bounded store, and the page itself
//! driven in headless Chromium.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use warren_agent::{Agent, AgentConfig, EndpointConfig};
use warren_testkit::webdriver::Browser;
use warren_testkit::*;

/// An agent with its inspector on a port of its own.
async fn inspected(
    edge: &TestEdge,
    ep: EndpointConfig,
    tweak: impl FnOnce(&mut AgentConfig),
) -> (Agent, String, SocketAddr) {
    let mut config = edge.agent_with(ep);
    config.web_addr = Some("127.0.0.1:0".parse().unwrap());
    tweak(&mut config);
    let mut agent = Agent::start(config);
    let urls = within("agent online", agent.wait_online()).await.expect("agent online");
    let web = agent.web_addr().expect("inspector listening").expect("inspector on");
    (agent, urls[0].clone(), web)
}

/// One request to the local API: `(status, JSON body or Null)`.
async fn web(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, hyper::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the inspector");
    let mut send = http1(tcp).await;
    let mut req =
        Request::builder().method(method).uri(path).header("host", format!("127.0.0.1:{}", addr.port()));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.map_or_else(empty, |b| full(b.to_string()))).unwrap();
    let res = within("inspector answer", send.send_request(req)).await.expect("response");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (parts.status, v, parts.headers)
}

/// Waits until the inspector holds `n` requests whose responses have ended; returns them
/// newest first.
async fn complete_requests(addr: SocketAddr, n: usize) -> Vec<Value> {
    within(&format!("{n} complete requests in the inspector"), async {
        loop {
            let (_, v, _) = web(addr, "GET", "/api/requests/http?limit=1000", None, &[]).await;
            let list = v["requests"].as_array().cloned().unwrap_or_default();
            if list.len() >= n && list.iter().all(|r| r["response"]["body"]["complete"] == json!(true)) {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Sends a request through the tunnel over https.
async fn visit(edge: &TestEdge, host: &str, req: Request<Body>) -> (StatusCode, String) {
    let tls = tls_connect(edge.https_addr(), host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let res = within("response through the tunnel", send.send_request(req)).await.expect("response");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn host_of(edge: &TestEdge, name: &str) -> String {
    format!("{name}:{}", edge.https_addr().port())
}

#[tokio::test]
async fn requests_through_the_tunnel_are_captured_and_served_by_the_local_api_in_ngroks_shapes() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://inspect.warren.localhost")).unwrap();
    let (_agent, url, api) = inspected(&edge, ep, |_| {}).await;
    let host = host_of(&edge, "inspect.warren.localhost");
    let req = Request::post("/echo?x=1")
        .header("host", &host)
        .header("content-type", "application/json")
        .header("x-probe", "one")
        .body(full(r#"{"hello":"world"}"#))
        .unwrap();
    let (status, _) = visit(&edge, "inspect.warren.localhost", req).await;
    assert_eq!(status, StatusCode::OK);

    let list = complete_requests(api, 1).await;
    let r = &list[0];
    assert!(r["id"].as_str().unwrap().starts_with("airt_"));
    assert_eq!(r["uri"], format!("/api/requests/http/{}", r["id"].as_str().unwrap()));
    assert_eq!(r["tunnel_name"], "command_line");
    assert_eq!(r["remote_addr"], "127.0.0.1");
    assert_eq!(r["request"]["method"], "POST");
    assert_eq!(r["request"]["uri"], "/echo?x=1");
    assert_eq!(r["request"]["headers"]["x-probe"], json!(["one"]));
    assert_eq!(r["request"]["body"]["size"], 17);
    assert_eq!(r["response"]["status_code"], 200);
    assert_eq!(r["response"]["status"], "200 OK");
    assert!(r["duration"].as_u64().unwrap() > 0);
    assert!(r["start"].as_str().unwrap().ends_with('Z'));

    let (status, detail, _) = web(api, "GET", r["uri"].as_str().unwrap(), None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["request"]["body"]["data"], r#"{"hello":"world"}"#);
    assert_eq!(detail["request"]["body"]["encoding"], "utf8");
    let echoed: Value = serde_json::from_str(detail["response"]["body"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["headers"]["x-probe"], "one");
    use base64::Engine as _;
    let raw =
        base64::engine::general_purpose::STANDARD.decode(detail["request"]["raw"].as_str().unwrap()).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("POST /echo?x=1 HTTP/1.1\r\n") && raw.ends_with(r#"{"hello":"world"}"#), "{raw}");

    let (status, s, _) = web(api, "GET", "/api/status", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["status"], "online");
    assert_eq!(s["session"]["account"], "default");
    assert_eq!(s["connect_url"], edge.connect_url());
    assert_eq!(s["endpoints"][0]["url"], url);

    let (_, t, _) = web(api, "GET", "/api/tunnels", None, &[]).await;
    let tunnel = &t["tunnels"][0];
    assert_eq!(tunnel["name"], "command_line");
    assert_eq!(tunnel["public_url"], url);
    assert_eq!(tunnel["proto"], "https");
    assert_eq!(tunnel["config"]["addr"], up.url());
    assert_eq!(tunnel["metrics"]["http"]["count"], 1);
    assert_eq!(tunnel["metrics"]["conns"]["count"], 1);
    assert!(tunnel["metrics"]["http"]["p50"].as_u64().unwrap() > 0);
    let (status, one, _) = web(api, "GET", "/api/tunnels/command_line", None, &[]).await;
    assert_eq!((status, &one["public_url"]), (StatusCode::OK, &json!(url)));
    let (_, e, _) = web(api, "GET", "/api/endpoints/command_line", None, &[]).await;
    assert_eq!(e["url"], url);
    assert_eq!(e["upstream"]["url"], up.url());
    let (status, missing, _) = web(api, "GET", "/api/requests/http/airt_nope", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["status_code"], 404);

    // Replay sends the same request to the upstream again, captured as a new exchange.
    let id = r["id"].as_str().unwrap();
    let (status, _, headers) =
        web(api, "POST", "/api/requests/http", Some(json!({ "id": id, "tunnel_name": "command_line" })), &[])
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(headers.get("warren-replay-id").is_some());
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    {
        let seen = up.seen.lock().unwrap();
        assert_eq!(seen[1].0, "/echo?x=1");
        assert_eq!(seen[1].1["x-probe"], "one");
    }
    // Replay with changes: method, path, headers and body.
    let change = json!({ "id": id, "method": "PUT", "path": "/echo?x=2", "headers": { "x-probe": "two", "host": host }, "body": "changed" });
    let (status, _, headers) = web(api, "POST", "/api/requests/http", Some(change), &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    {
        let seen = up.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].0, "/echo?x=2");
        assert_eq!(seen[2].1["x-probe"], "two");
        assert_eq!(seen[2].1["content-length"], "7");
    }
    let replay_id = headers["warren-replay-id"].to_str().unwrap();
    let (_, replayed, _) = web(api, "GET", &format!("/api/requests/http/{replay_id}"), None, &[]).await;
    assert_eq!(replayed["replay_of"], id);
    assert_eq!(replayed["request"]["method"], "PUT");
    let (status, _, _) =
        web(api, "POST", "/api/requests/http", Some(json!({ "id": id, "method": "NOT A METHOD" })), &[])
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_eq!(complete_requests(api, 3).await.len(), 3);
    let (status, _, _) = web(api, "DELETE", "/api/requests/http", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, v, _) = web(api, "GET", "/api/requests/http", None, &[]).await;
    assert_eq!(v["requests"], json!([]));
}

#[tokio::test]
async fn endpoints_are_added_and_removed_at_run_time_through_the_local_api() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://first.warren.localhost")).unwrap();
    let (mut agent, _, api) = inspected(&edge, ep, |_| {}).await;

    let body = json!({ "name": "second", "url": "https://second.warren.localhost", "upstream": { "url": up.url() } });
    let (status, created, _) = web(api, "POST", "/api/endpoints", Some(body.clone()), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["url"], format!("https://second.warren.localhost:{}", edge.https_addr().port()));
    let (status, text) = visit(
        &edge,
        "second.warren.localhost",
        Request::get("/").header("host", host_of(&edge, "second.warren.localhost")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "hello from upstream"));
    let (_, list, _) = web(api, "GET", "/api/endpoints", None, &[]).await;
    let names: Vec<&str> =
        list["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["command_line", "second"]);
    match agent.next_status().await {
        warren_agent::Status::Online { urls, .. } => assert_eq!(urls.len(), 2),
        other => panic!("expected online with two URLs, got {other:?}"),
    }

    // A name that is running, bad input, and a URL the edge refuses.
    let (status, _, _) = web(api, "POST", "/api/endpoints", Some(body), &[]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, e, _) = web(
        api,
        "POST",
        "/api/endpoints",
        Some(json!({ "name": "x", "upstream": { "url": "80" }, "color": "red" })),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["msg"].as_str().unwrap().contains("color"), "{e}");
    let taken =
        json!({ "name": "third", "url": "https://first.warren.localhost", "upstream": { "url": up.url() } });
    let (status, e, _) = web(api, "POST", "/api/endpoints", Some(taken), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(e["msg"].as_str().unwrap().contains("ERR_NGROK_334"), "{e}");

    let (status, _, _) = web(api, "DELETE", "/api/endpoints/second", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = visit(
        &edge,
        "second.warren.localhost",
        Request::get("/").header("host", host_of(&edge, "second.warren.localhost")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the edge no longer routes the removed endpoint");
    let (status, _, _) = web(api, "GET", "/api/endpoints/second", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = web(api, "DELETE", "/api/endpoints/second", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The first endpoint is untouched.
    let (status, _) = visit(
        &edge,
        "first.warren.localhost",
        Request::get("/").header("host", host_of(&edge, "first.warren.localhost")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_inspector_refuses_foreign_hosts_and_cross_site_writes() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://guard.warren.localhost")).unwrap();
    let (_agent, _, api) =
        inspected(&edge, ep, |c| c.web_allow_hosts = vec!["inspect.corp.example".into()]).await;
    let get_with_host = |host: &'static str| async move {
        let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
        let mut send = http1(tcp).await;
        let req = Request::get("/api/status").header("host", host).body(empty()).unwrap();
        send.send_request(req).await.unwrap().status()
    };
    // DNS rebinding: a page on evil.example whose name now points at 127.0.0.1.
    assert_eq!(get_with_host("evil.example").await, StatusCode::FORBIDDEN);
    assert_eq!(get_with_host("evil.example:4040").await, StatusCode::FORBIDDEN);
    assert_eq!(get_with_host("localhost:4040").await, StatusCode::OK);
    assert_eq!(get_with_host("inspect.corp.example").await, StatusCode::OK);
    let (status, page) = plain_get(api, "evil.example", "/").await.into_status_body();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("web_allow_hosts"), "{page}");

    // Cross-site writes: another origin, or a form post that skips the CORS preflight.
    let (status, _, _) =
        web(api, "DELETE", "/api/requests/http", None, &[("origin", "http://evil.example")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let mut send = http1(tcp).await;
    let req = Request::post("/api/requests/http")
        .header("host", format!("127.0.0.1:{}", api.port()))
        .header("content-type", "text/plain")
        .body(full(r#"{"id":"x"}"#))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let same = format!("http://127.0.0.1:{}", api.port());
    let (status, _, _) = web(api, "DELETE", "/api/requests/http", None, &[("origin", &same)]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

trait StatusBody {
    fn into_status_body(self) -> (StatusCode, String);
}

impl StatusBody for (StatusCode, hyper::HeaderMap, String) {
    fn into_status_body(self) -> (StatusCode, String) {
        (self.0, self.2)
    }
}

#[tokio::test]
async fn captured_traffic_is_bounded_and_large_bodies_are_kept_in_part() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://bounded.warren.localhost")).unwrap();
    let limit = 256 * 1024;
    let (_agent, _, api) = inspected(&edge, ep, |c| c.inspect_db_size = limit).await;
    let host = host_of(&edge, "bounded.warren.localhost");

    // A 200 kB upload: the upstream gets all of it, the inspector keeps the first part.
    let (status, text) = visit(
        &edge,
        "bounded.warren.localhost",
        Request::post("/upload").header("host", &host).body(pattern_body(200_000)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(r#""bytes":200000"#), "{text}");
    let r = complete_requests(api, 1).await.remove(0);
    let body = &r["request"]["body"];
    assert_eq!(body["size"], 200_000);
    assert_eq!(body["truncated"], true);
    assert_eq!(body["captured"], limit / 4);
    // It cannot be replayed as it was, only with a new body.
    let id = r["id"].as_str().unwrap();
    let (status, e, _) = web(api, "POST", "/api/requests/http", Some(json!({ "id": id })), &[]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(e["msg"].as_str().unwrap().contains("not captured in full"), "{e}");

    // Many downloads: the store stays within its limit by forgetting the oldest.
    for _ in 0..12 {
        let (status, _) = visit(
            &edge,
            "bounded.warren.localhost",
            Request::get("/download/60000").header("host", &host).body(empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let list = complete_requests(api, 1).await;
    assert!(list.len() < 13, "old exchanges are dropped ({} kept)", list.len());
    assert!(list.iter().all(|r| r["id"] != json!(id)), "the oldest went first");
    let (_, s, _) = web(api, "GET", "/api/status", None, &[]).await;
    assert!(s["inspect"]["bytes"].as_u64().unwrap() <= limit as u64, "{}", s["inspect"]);
}

#[tokio::test]
async fn with_inspection_off_traffic_flows_and_nothing_is_kept() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://dark.warren.localhost")).unwrap();
    let (_agent, _, api) = inspected(&edge, ep, |c| c.inspect_db_size = -1).await;
    let host = host_of(&edge, "dark.warren.localhost");
    let (status, _) =
        visit(&edge, "dark.warren.localhost", Request::get("/").header("host", &host).body(empty()).unwrap())
            .await;
    assert_eq!(status, StatusCode::OK);
    let (_, v, _) = web(api, "GET", "/api/requests/http", None, &[]).await;
    assert_eq!(v["requests"], json!([]));
    let (_, s, _) = web(api, "GET", "/api/status", None, &[]).await;
    assert_eq!(s["inspect"], Value::Null);
    assert_eq!(s["endpoints"][0]["inspect"], false);
    assert_eq!(s["endpoints"][0]["metrics"]["conns"]["count"], 1);
}

/// The page itself, in a real browser: a request through the tunnel appears in the list,
/// its detail opens, Replay sends it again, and Replay with modifications sends a changed
/// header.
#[tokio::test]
async fn the_inspector_page_in_headless_chromium_lists_shows_and_replays_requests() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://browser.warren.localhost")).unwrap();
    let (_agent, _, api) = inspected(&edge, ep, |_| {}).await;
    let host = host_of(&edge, "browser.warren.localhost");
    let req = Request::get("/echo?from=browser-test")
        .header("host", &host)
        .header("x-probe", "one")
        .body(empty())
        .unwrap();
    assert_eq!(visit(&edge, "browser.warren.localhost", req).await.0, StatusCode::OK);

    let browser = Browser::start().await;
    browser.goto(&format!("http://127.0.0.1:{}/", api.port())).await;
    let row = browser.wait_for_text("#requests tbody tr", "/echo?from=browser-test").await;
    assert!(browser.text(&row).await.contains("200"), "the row shows the status");
    browser.click(&row).await;
    browser.wait_for_text("#detail-summary", "GET /echo?from=browser-test").await;
    browser.wait_for_text("#req-headers", "x-probe").await;
    browser.wait_for_text("#res-body", "\"x-probe\": \"one\"").await; // JSON pretty-printed

    let replay = browser.find("#replay").await.expect("replay button");
    browser.click(&replay).await;
    browser.wait_for_text("#replay-result", "replayed").await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 2, "the upstream saw the request twice");
    assert_eq!(up.seen.lock().unwrap()[1].0, "/echo?from=browser-test");

    let modify = browser.find("#replay-modify").await.expect("modify button");
    browser.click(&modify).await;
    let headers = browser.find("#mod-headers").await.expect("headers field");
    let text = browser.value(&headers).await;
    assert!(text.contains("x-probe: one"), "{text}");
    browser.type_into(&headers, &text.replace("x-probe: one", "x-probe: changed-in-browser")).await;
    let send = browser.find("#mod-send").await.expect("send button");
    browser.click(&send).await;
    within("the modified replay reaches the upstream", async {
        while up.requests.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(up.seen.lock().unwrap()[2].1["x-probe"], "changed-in-browser");
    // Both replays appear in the list.
    within("three rows", async {
        while browser.find_all("#requests tbody tr").await.len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    browser.quit().await;
}

/// A request whose upstream cannot be reached is answered 502 and still shows in the
/// inspector and the local API, with the status and the error.
#[tokio::test]
async fn a_request_the_upstream_cannot_take_is_recorded_with_its_error() {
    let edge = TestEdge::start().await;
    let down = refused_addr().await;
    let ep = EndpointConfig::http(&down.to_string(), Some("https://down.warren.localhost")).unwrap();
    let (_agent, _url, api) = inspected(&edge, ep, |_| {}).await;
    let host = host_of(&edge, "down.warren.localhost");
    let req = Request::get("/broken?x=1").header("host", &host).body(empty()).unwrap();
    let (status, body) = visit(&edge, "down.warren.localhost", req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("could not reach its upstream"), "{body}");
    let list = complete_requests(api, 1).await;
    let r = &list[0];
    assert_eq!(r["request"]["uri"], "/broken?x=1", "{r}");
    assert_eq!(r["response"]["status_code"], 502, "{r}");
    assert!(r.to_string().contains("could not be reached"), "the error is recorded: {r}");
}

/// ngrok's `POST /api/tunnels` and `DELETE /api/tunnels/NAME`, with ngrok's own body shape (a
/// tunnel definition plus its name), as scripts and wrappers call them.
#[tokio::test]
async fn tunnels_are_started_and_stopped_through_the_local_api_in_ngroks_shape() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://base.warren.localhost")).unwrap();
    let (_agent, _, api) = inspected(&edge, ep, |_| {}).await;
    let body = json!({ "name": "scripted", "proto": "http", "addr": up.url(), "domain": "scripted.warren.localhost", "inspect": false });
    let (status, created, _) = web(api, "POST", "/api/tunnels", Some(body), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "scripted");
    assert_eq!(
        created["public_url"],
        format!("https://scripted.warren.localhost:{}", edge.https_addr().port())
    );
    assert_eq!(created["proto"], "https");
    let (status, text) = visit(
        &edge,
        "scripted.warren.localhost",
        Request::get("/").header("host", host_of(&edge, "scripted.warren.localhost")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "hello from upstream"));

    // Keys warren does not act on are refused by name; a name is required.
    let (status, e, _) = web(
        api,
        "POST",
        "/api/tunnels",
        Some(json!({ "name": "x", "proto": "http", "addr": "80", "labels": ["a"] })),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["msg"].as_str().unwrap().contains("labels"), "{e}");
    let (status, _, _) =
        web(api, "POST", "/api/tunnels", Some(json!({ "proto": "tcp", "addr": "22" })), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _, _) = web(api, "DELETE", "/api/tunnels/scripted", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = visit(
        &edge,
        "scripted.warren.localhost",
        Request::get("/").header("host", host_of(&edge, "scripted.warren.localhost")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = web(api, "GET", "/api/tunnels/scripted", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
