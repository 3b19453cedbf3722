//! Upstreams that speak HTTP/2 (`upstream.protocol: http2`, `--upstream-protocol http2`, the
//! SDKs' `app_protocol("http2")`): the edge sends requests on the proxy streams as HTTP/2 with
//! prior knowledge, so a real gRPC server (PyPI `grpcio`) answers unary, server-streaming and
//! failing calls of a real gRPC client, trailers included, through an https endpoint of
//! warren's agent, of ngrok's Rust SDK and of ngrok's Python SDK.
//!
//! `.ci/run` installs grpcio; when it is missing this test installs it under the target
//! directory (never system-wide) so that `cargo nextest run` works on a fresh machine too.

use std::path::PathBuf;
use std::process::Stdio;

use ngrok::prelude::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/grpc_peer.py");

/// A `PYTHONPATH` under which `import grpc, ngrok` works (grpcio, and ngrok's Python SDK),
/// installing them there if needed.
fn python_path() -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-grpcio-ngrok");
    python_packages(&dir, "import grpc, ngrok", "grpcio==1.76.0 ngrok==1.4.0")
}

/// The gRPC server, and the port it serves h2c on.
async fn grpc_server(pythonpath: &str) -> (Child, u16) {
    grpc_server_with(pythonpath, &[]).await
}

/// The gRPC server with `env` (TLS_CERT and TLS_KEY for TLS), and its port.
async fn grpc_server_with(pythonpath: &str, env: &[(&str, &std::path::Path)]) -> (Child, u16) {
    let mut child = Command::new("python3")
        .args([PEER, "server"])
        .env("PYTHONPATH", pythonpath)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("gRPC server up", lines.next_line()).await.unwrap().expect("PORT line");
    let port = line.strip_prefix("PORT ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    (child, port)
}

/// Runs the gRPC client against `host` on the edge's https listener; its output lines.
async fn grpc_client(edge: &TestEdge, pythonpath: &str, host: &str) -> Vec<String> {
    let out = within(
        "gRPC client",
        Command::new("python3")
            .args([PEER, "client"])
            .env("PYTHONPATH", pythonpath)
            .env("WARREN_ADDR", edge.https_addr().to_string())
            .env("WARREN_HOST", host)
            .env("WARREN_CA", &edge.ca_path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(str::to_owned).collect()
}

const EXPECTED: [&str; 3] = ["UNARY echo:hello done", "STREAM 50 part-49", "FAIL NOT_FOUND no such thing"];

#[tokio::test]
async fn grpc_calls_go_through_an_https_endpoint_to_an_http2_upstream_with_warrens_agent() {
    let pythonpath = tokio::task::spawn_blocking(python_path).await.unwrap();
    let edge = TestEdge::start().await;
    let (_server, port) = grpc_server(&pythonpath).await;
    let mut ep =
        EndpointConfig::http(&format!("http://127.0.0.1:{port}"), Some("https://grpc.warren.localhost"))
            .unwrap();
    ep.upstream_http2 = true;
    let mut agent = Agent::start(edge.agent_with(ep));
    within("online", agent.wait_online()).await.unwrap();
    assert_eq!(grpc_client(&edge, &pythonpath, "grpc.warren.localhost").await, EXPECTED);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_calls_go_through_an_endpoint_of_ngroks_rust_sdk_with_app_protocol_http2() {
    let pythonpath = tokio::task::spawn_blocking(python_path).await.unwrap();
    let edge = TestEdge::start().await;
    let (_server, port) = grpc_server(&pythonpath).await;
    let sess = ngrok::Session::builder()
        .authtoken(edge.authtoken.clone())
        .server_addr(edge.connect_url())
        .expect("server address")
        .ca_cert(bytes::Bytes::from(edge.ca_pem.clone()))
        .connect()
        .await
        .expect("SDK session");
    let to: url::Url = format!("http://127.0.0.1:{port}").parse().unwrap();
    let _fwd = within(
        "sdk listen",
        sess.http_endpoint().domain("sdkgrpc.warren.localhost").app_protocol("http2").listen_and_forward(to),
    )
    .await
    .expect("https endpoint");
    assert_eq!(grpc_client(&edge, &pythonpath, "sdkgrpc.warren.localhost").await, EXPECTED);
}

#[tokio::test]
async fn grpc_calls_go_through_an_endpoint_of_ngroks_python_sdk_with_app_protocol_http2() {
    let pythonpath = tokio::task::spawn_blocking(python_path).await.unwrap();
    let edge = TestEdge::start().await;
    let (_server, port) = grpc_server(&pythonpath).await;
    let mut sdk = Command::new("python3")
        .args([PEER, "sdk"])
        .env("PYTHONPATH", &pythonpath)
        .env("WARREN_CONNECT", edge.connect_url())
        .env("WARREN_CA", &edge.ca_path)
        .env("WARREN_TOKEN", &edge.authtoken)
        .env("WARREN_HOST", "pygrpc.warren.localhost")
        .env("UPSTREAM", format!("127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(sdk.stdout.take().unwrap()).lines();
    let line = within("Python SDK endpoint", lines.next_line()).await.unwrap().expect("URL line");
    assert!(line.starts_with("URL https://pygrpc.warren.localhost"), "{line}");
    assert_eq!(grpc_client(&edge, &pythonpath, "pygrpc.warren.localhost").await, EXPECTED);
}

#[tokio::test]
async fn grpc_calls_reach_an_http2_upstream_over_tls_with_alpn_h2() {
    let pythonpath = tokio::task::spawn_blocking(python_path).await.unwrap();
    let edge = TestEdge::start().await;
    let ca = TestCa::new("gRPC upstream CA");
    let (chain, key, _) = ca.leaf("localhost");
    let (cert_path, key_path) = (edge.temp_dir().join("grpc-cert.pem"), edge.temp_dir().join("grpc-key.pem"));
    std::fs::write(&cert_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let (_server, port) =
        grpc_server_with(&pythonpath, &[("TLS_CERT", cert_path.as_path()), ("TLS_KEY", key_path.as_path())])
            .await;
    // A loopback upstream's certificate is not verified by default (as ngrok's agent does).
    let mut ep =
        EndpointConfig::http(&format!("https://127.0.0.1:{port}"), Some("https://grpctls.warren.localhost"))
            .unwrap();
    ep.upstream_http2 = true;
    let mut agent = Agent::start(edge.agent_with(ep));
    within("online", agent.wait_online()).await.unwrap();
    assert_eq!(grpc_client(&edge, &pythonpath, "grpctls.warren.localhost").await, EXPECTED);
    agent.stop().await.unwrap();
}

/// An upgrade (WebSocket) cannot ride HTTP/2 to the upstream: it is refused with 501 and a
/// reason, not a confusing 502.
#[tokio::test]
async fn an_upgrade_to_an_http2_upstream_endpoint_is_refused_with_501() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let mut ep = EndpointConfig::http(&up.url(), Some("https://h2ws.warren.localhost")).unwrap();
    ep.upstream_http2 = true;
    let mut agent = Agent::start(edge.agent_with(ep));
    within("online", agent.wait_online()).await.unwrap();
    let tls = tls_connect(edge.https_addr(), "h2ws.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = hyper::Request::get("/ws")
        .header("host", "h2ws.warren.localhost")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), hyper::StatusCode::NOT_IMPLEMENTED);
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing reached the upstream");
    agent.stop().await.unwrap();
}
