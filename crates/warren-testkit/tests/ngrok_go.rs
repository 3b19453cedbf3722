//! Compatibility with ngrok's own Go agent, version 2.3.41 (the binary in the npm package
//! `@expo/ngrok-bin-linux-x64@2.3.42`, pinned in tests/peers/ngrok-go and installed by
//! `.ci/run`): a second implementation of the agent protocol, independent of ngrok-rust. It
//! reads keys the Go way (`Authtoken`), speaks protocol version 2, sends its options as
//! `Hostname`/`Subdomain`/`Auth`, and prints the edge's errors as they come.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use warren_testkit::*;

fn binary() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/ngrok-go/node_modules/@expo/ngrok-bin-linux-x64/ngrok");
    assert!(
        p.exists(),
        "ngrok's Go agent is not installed: run `npm ci` in crates/warren-testkit/tests/peers/ngrok-go (.ci/run does)"
    );
    p
}

/// A running agent: its JSON log lines, its local API address.
struct GoAgent {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    web: std::net::SocketAddr,
    _home: TempDir,
}

impl GoAgent {
    /// `ngrok <args>` against `edge` with `token`, heartbeats every second (2 s tolerance).
    fn start(edge: &TestEdge, token: &str, args: &[&str]) -> GoAgent {
        let home = tempfile::tempdir().unwrap();
        let web = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = home.path().join("ngrok.yml");
        std::fs::write(
            &config,
            format!(
                "authtoken: {token}\nserver_addr: localhost:{}\nroot_cas: {}\nweb_addr: {web}\nconsole_ui: false\nupdate_check: false\nupdate: false\nheartbeat_interval: 1s\nheartbeat_tolerance: 2s\n",
                edge.config.connect_addr.port(),
                edge.ca_path.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(binary())
            .args(args)
            .arg(format!("-config={}", config.display()))
            .args(["-log=stdout", "-log-format=json", "-log-level=info"])
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run ngrok's Go agent");
        let (tx, lines) = mpsc::unbounded_channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(out).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    let _ = tx.send(l);
                }
            });
        }
        GoAgent { child, lines, web, _home: home }
    }

    /// The URLs of the first `n` tunnels the agent reports started.
    async fn started(&mut self, n: usize) -> Vec<String> {
        let mut urls = Vec::new();
        let mut seen = Vec::new();
        within("the Go agent starts its tunnels", async {
            while urls.len() < n {
                let line = self
                    .lines
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("the agent ended:\n{}", seen.join("\n")));
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["msg"] == "started tunnel"
                {
                    urls.push(v["url"].as_str().unwrap().to_owned());
                }
                seen.push(line);
            }
        })
        .await;
        urls
    }

    /// Everything the agent prints until it exits, and its exit code.
    async fn exits(mut self) -> (String, i32) {
        let status = within("the Go agent exits", self.child.wait()).await.unwrap();
        let mut out = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            out.push(l);
        }
        // The readers may still hold the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(l) = self.lines.try_recv() {
            out.push(l);
        }
        (out.join("\n"), status.code().unwrap_or(-1))
    }

    /// `GET /api/tunnels` of the agent's local API.
    async fn api_tunnels(&self) -> serde_json::Value {
        let (status, _, body) = plain_get(self.web, "localhost", "/api/tunnels").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

fn basic(user_pass: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
}

/// `ngrok http -subdomain -auth -bind-tls=both`: the agent logs in (protocol 2, `Authtoken`),
/// binds an https and an http endpoint, the edge enforces its basic auth on both, and its
/// local API lists both tunnels with the URLs the edge gave.
#[tokio::test]
async fn the_go_agent_serves_http_with_subdomain_auth_and_both_schemes() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let upstream = up.url();
    let mut agent = GoAgent::start(
        &edge,
        &edge.authtoken,
        &["http", "-subdomain=gosub", "-auth=gouser:gopassword", "-bind-tls=both", &upstream],
    );
    let mut urls = agent.started(2).await;
    urls.sort();
    let (http_port, https_port) = (edge.http_addr().port(), edge.https_addr().port());
    assert_eq!(
        urls,
        [
            format!("http://gosub.warren.localhost:{http_port}"),
            format!("https://gosub.warren.localhost:{https_port}")
        ]
    );

    let (s, _, _) = https_get(&edge, "gosub.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the agent's -auth is enforced at the edge");
    let tls = tls_connect(edge.https_addr(), "gosub.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = hyper::Request::get("/")
        .header("host", "gosub.warren.localhost")
        .header("authorization", basic("gouser:gopassword"))
        .body(empty())
        .unwrap();
    let res = within("authorized", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The http twin too.
    let mut tcp = tokio::net::TcpStream::connect(edge.http_addr()).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: gosub.warren.localhost\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("gouser:gopassword")
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    within("http answer", tcp.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from upstream"), "{answer}");

    let tunnels = agent.api_tunnels().await;
    let listed: Vec<&str> =
        tunnels["tunnels"].as_array().unwrap().iter().map(|t| t["public_url"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 2, "{tunnels}");
    for u in &urls {
        assert!(listed.contains(&u.as_str()), "{u} in {tunnels}");
    }
}

/// `-hostname` (https only), `tcp -remote-addr` of a reserved address, and `tls -crt -key`
/// (TLS passed through the edge, terminated by the agent) all reach their upstreams.
#[tokio::test]
async fn the_go_agent_serves_hostname_tcp_and_tls_tunnels() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let upstream = up.url();
    let mut web = GoAgent::start(
        &edge,
        &edge.authtoken,
        &["http", "-hostname=gohost.warren.localhost", "-bind-tls=true", &upstream],
    );
    let urls = web.started(1).await;
    assert_eq!(urls, [format!("https://gohost.warren.localhost:{}", edge.https_addr().port())]);
    let (s, _, body) = https_get(&edge, "gohost.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello from upstream"));

    let (_, _, ra) =
        edge.api("POST", "/reserved_addrs", Some(&edge.api_key), Some(serde_json::json!({}))).await;
    let addr = ra["addr"].as_str().unwrap().to_owned();
    let (echo, _task) = tcp_echo().await;
    let mut tcp_agent =
        GoAgent::start(&edge, &edge.authtoken, &["tcp", &format!("-remote-addr={addr}"), &echo.to_string()]);
    let urls = tcp_agent.started(1).await;
    assert_eq!(urls, [format!("tcp://{addr}")]);
    // The 2.x agent closes both directions when one ends, so the visitor reads its echo
    // before closing (no half-close).
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", url_port(&urls[0]))).await.unwrap();
    tcp.write_all(b"ping over tcp").await.unwrap();
    let mut got = [0u8; 13];
    within("echo through the Go agent", tcp.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ping over tcp");

    let ca = TestCa::new("go agent's own CA");
    let (chain, key, _) = ca.leaf("gotls.warren.localhost");
    let dir = tempfile::tempdir().unwrap();
    let (crt_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let (echo2, _task2) = tcp_echo().await;
    let mut tls_agent = GoAgent::start(
        &edge,
        &edge.authtoken,
        &[
            "tls",
            "-hostname=gotls.warren.localhost",
            &format!("-crt={}", crt_path.display()),
            &format!("-key={}", key_path.display()),
            &echo2.to_string(),
        ],
    );
    let urls = tls_agent.started(1).await;
    assert!(urls[0].starts_with("tls://gotls.warren.localhost"), "{urls:?}");
    // The visitor's TLS reaches the agent untouched: it sees the agent's certificate.
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(ca.roots())
    .with_no_client_auth();
    cfg.alpn_protocols.clear();
    let tcp = tokio::net::TcpStream::connect(edge.https_addr()).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("gotls.warren.localhost").unwrap(), tcp)
        .await
        .expect("the agent's certificate, verified against its own CA");
    tls.write_all(b"ping over tls").await.unwrap();
    let mut got = [0u8; 13];
    within("echo through tls", tls.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ping over tls");
}

/// The edge's errors reach the user as the Go agent prints them: a wrong authtoken and a
/// name another session holds, each with its ERR_NGROK code, and the agent exits 1.
#[tokio::test]
async fn the_go_agent_prints_the_edges_errors() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let upstream = up.url();
    let agent = GoAgent::start(&edge, "cr_0000000000000000000000000_wrong", &["http", &upstream]);
    let (out, code) = agent.exits().await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ERR_NGROK_107"), "{out}");

    let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
    assert!(raw.bind_https("holder", "taken.warren.localhost").await.error.is_empty());
    let agent =
        GoAgent::start(&edge, &edge.authtoken, &["http", "-subdomain=taken", "-bind-tls=true", &upstream]);
    let (out, code) = agent.exits().await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ERR_NGROK_334") && out.contains("taken.warren.localhost"), "{out}");
}

/// An idle Go agent stays connected for longer than its heartbeat tolerance (2 s here):
/// the edge answers its heartbeats, and the agent answers the edge's.
#[tokio::test]
async fn an_idle_go_agent_keeps_its_session() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let upstream = up.url();
    let mut agent =
        GoAgent::start(&edge, &edge.authtoken, &["http", "-subdomain=idle", "-bind-tls=true", &upstream]);
    agent.started(1).await;
    let (_, _, before) = edge.api("GET", "/tunnel_sessions", Some(&edge.api_key), None).await;
    // Idle for three tolerances: this wait is what is being tested.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, _, after) = edge.api("GET", "/tunnel_sessions", Some(&edge.api_key), None).await;
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["tunnel_sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&before).len(), 1);
    assert_eq!(ids(&before), ids(&after), "the same session, never reconnected");
    while let Ok(l) = agent.lines.try_recv() {
        assert!(!l.contains("heartbeat timeout") && !l.contains("reconnect"), "{l}");
    }
    let (s, _, _) = https_get(&edge, "idle.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::OK);
}
