//! Compatibility with ngrok's Python SDK (PyPI `ngrok`, a separate build of ngrok's client
//! stack): it connects to an in-process edge with `server_addr` + `ca_cert`, binds an https
//! and a tcp endpoint with `listen_and_forward`, and visitors reach our upstreams through it.
//!
//! `.ci/run` installs the package; when it is missing this test installs it under the target
//! directory (never system-wide) so that `cargo nextest run` works on a fresh machine too.

use std::path::PathBuf;
use std::process::Stdio;

use hyper::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use warren_testkit::*;

/// A `PYTHONPATH` under which `import ngrok` works, installing the SDK there if needed.
fn python_path() -> String {
    let ok = |pp: &str| {
        std::process::Command::new("python3")
            .args(["-c", "import ngrok"])
            .env("PYTHONPATH", pp)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok("") {
        return String::new();
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-ngrok");
    let dir_s = dir.to_string_lossy().into_owned();
    if !ok(&dir_s) {
        let status = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target", &dir_s, "ngrok"])
            .status()
            .expect("python3 with pip is needed for the Python SDK test");
        assert!(status.success(), "pip install ngrok failed; run .ci/run or `pip install ngrok`");
        assert!(ok(&dir_s), "ngrok installed but cannot be imported");
    }
    dir_s
}

#[tokio::test]
async fn the_ngrok_python_sdk_binds_https_and_tcp_and_carries_traffic() {
    let pythonpath = tokio::task::spawn_blocking(python_path).await.unwrap();
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (echo, _echo_task) = tcp_echo().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ngrok_python_peer.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", &pythonpath)
        .env("WARREN_CONNECT", edge.connect_url())
        .env("WARREN_CA", &edge.ca_path)
        .env("WARREN_TOKEN", &edge.authtoken)
        .env("HTTP_UPSTREAM", up.addr.to_string())
        .env("TCP_UPSTREAM", echo.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || within("python peer output", lines.next_line()).await.unwrap().expect("a line");

    let auth = next().await;
    assert!(auth.starts_with("AUTHERR ") && auth.contains("ERR_NGROK_107"), "{auth}");

    let https = next().await;
    let url = https.strip_prefix("HTTPS ").unwrap_or_else(|| panic!("{https}"));
    assert_eq!(url, format!("https://py.warren.localhost:{}", edge.https_addr().port()));
    let (status, _, body) =
        within("visitor via Python SDK", https_get(&edge, "py.warren.localhost", "/echo")).await;
    assert_eq!(status, StatusCode::OK);
    let echo_json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo_json["headers"]["x-forwarded-proto"], "https");

    let tcp = next().await;
    let url = tcp.strip_prefix("TCP ").unwrap_or_else(|| panic!("{tcp}"));
    let mut conn = TcpStream::connect(("127.0.0.1", url_port(url))).await.unwrap();
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
    let back = within("tcp via Python SDK", echo_roundtrip(&mut conn, &data)).await;
    assert!(back == data, "bytes intact ({} of {})", back.len(), data.len());

    drop(child.stdin.take());
    let _ = within("python exits", child.wait()).await;
}

/// The outside review's steps with the Python SDK: each of basic_auth, allow_cidr, deny_cidr,
/// oauth, webhook_verification and request_header used to bind, and a visitor from
/// 127.0.0.1 without credentials got the upstream's 200 on every one. Now each is enforced
/// (or, for OAuth, refused at Bind with what to use instead).
#[tokio::test]
async fn the_python_sdks_endpoint_options_are_enforced_or_refused() {
    use base64::Engine as _;
    let pythonpath = tokio::task::spawn_blocking(python_path).await.unwrap();
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ngrok_python_options.py");
    let app = format!("https://py-oidc.warren.localhost:{}", edge.https_addr().port());
    let op =
        warren_testkit::oidc::OidcProvider::start_with_redirects(&[&format!("{app}/warren/oidc/callback")])
            .await;
    let mut child = Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", &pythonpath)
        .env("WARREN_CONNECT", edge.connect_url())
        .env("WARREN_CA", &edge.ca_path)
        .env("WARREN_TOKEN", &edge.authtoken)
        .env("HTTP_UPSTREAM", up.addr.to_string())
        .env("OIDC_ISSUER", &op.issuer)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut results = std::collections::HashMap::new();
    for _ in 0..11 {
        let line = within("python peer output", lines.next_line()).await.unwrap().expect("a line");
        let mut parts = line.splitn(3, ' ');
        let (verdict, name, rest) = (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        results.insert(name, (verdict, rest));
    }
    let bound = |name: &str| {
        let (v, rest) = &results[name];
        assert_eq!(v, "BOUND", "{name}: {rest}");
    };
    for name in ["basic", "allow", "deny", "webhook", "header", "gzip", "breaker", "resp", "ua", "oidc"] {
        bound(name);
    }
    let (v, why) = &results["oauth"];
    assert_eq!(v, "REFUSED", "oauth: {why}");
    assert!(why.contains("OAuth") && why.contains("OIDC"), "{why}");

    let host = |n: &str| format!("py-{n}.warren.localhost");
    let (s, _, _) = https_get(&edge, &host("basic"), "/").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no credentials");
    let tls = tls_connect(edge.https_addr(), &host("basic"), &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:password123"));
    let req = hyper::Request::get("/")
        .header("host", host("basic"))
        .header("authorization", auth)
        .body(empty())
        .unwrap();
    assert_eq!(within("with credentials", send.send_request(req)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        https_get(&edge, &host("allow"), "/").await.0,
        StatusCode::FORBIDDEN,
        "127.0.0.1 is not in 10/8"
    );
    assert_eq!(https_get(&edge, &host("deny"), "/").await.0, StatusCode::FORBIDDEN, "127/8 is denied");
    assert!(https_get(&edge, &host("webhook"), "/").await.0.is_client_error(), "an unsigned webhook");
    let (s, _, body) = https_get(&edge, &host("header"), "/echo").await;
    assert_eq!(s, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-added"], "yes", "{seen}");

    // compression(): brotli for a visitor that prefers it.
    let tls = tls_connect(edge.https_addr(), &host("gzip"), &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = hyper::Request::get("/echo")
        .header("host", host("gzip"))
        .header("accept-encoding", "gzip;q=0.5, br")
        .body(empty())
        .unwrap();
    let res = within("compressed", send.send_request(req)).await.unwrap();
    assert_eq!(res.headers()["content-encoding"], "br");
    let bytes = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut brotli::Decompressor::new(&bytes[..], 4096), &mut text).unwrap();
    let seen: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(seen["headers"]["accept-encoding"], "gzip;q=0.5, br", "{seen}");

    // circuit_breaker(0.5): ten failures from the upstream, then the edge answers itself.
    let before = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(https_get(&edge, &host("breaker"), "/status/502").await.0, StatusCode::BAD_GATEWAY);
    }
    let (s, _, body) = https_get(&edge, &host("breaker"), "/status/200").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("ERR_NGROK_3202"), "{body}");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst) - before, 10);

    // response_header / remove_response_header change the response.
    let (s, h, _) = https_get(&edge, &host("resp"), "/echo").await;
    assert_eq!((s, h.get("x-from-edge").map(|v| v.to_str().unwrap())), (StatusCode::OK, Some("1")));
    assert!(h.get("content-type").is_none(), "the upstream's JSON content-type was removed: {h:?}");
    // deny_user_agent refuses a matching agent only.
    let tls = tls_connect(edge.https_addr(), &host("ua"), &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = hyper::Request::get("/")
        .header("host", host("ua"))
        .header("user-agent", "BadBot/1")
        .body(empty())
        .unwrap();
    assert_eq!(within("bad bot", send.send_request(req)).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(https_get(&edge, &host("ua"), "/").await.0, StatusCode::OK);
    // oidc: a visitor signs in at the provider and comes back as alice.
    let mut browser = warren_testkit::oidc::Browser::new(&edge, ".warren.localhost");
    let first = browser.get(&format!("{app}/echo"), &[]).await;
    assert_eq!(first.status, StatusCode::FOUND, "not signed in: {}", first.body);
    let page = browser.sign_in(&op.issuer, &format!("{app}/echo")).await;
    assert_eq!(page.status, StatusCode::OK, "{}: {}", page.url, page.body);
    let seen: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(seen["headers"]["warren-auth-user-email"], "alice@example.test", "{seen}");
    drop(child.stdin.take());
    let _ = within("python exits", child.wait()).await;
}
