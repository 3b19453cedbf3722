//! Agent sessions: authentication, endpoint ownership, reconnects and dead sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::StatusCode;
use warren_agent::{Agent, AgentError, EndpointConfig, Status};
use warren_testkit::*;

#[tokio::test]
async fn the_agent_reconnects_and_rebinds_after_the_edge_restarts() {
    let mut edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://again.warren.localhost")).unwrap();
    let mut agent = Agent::start(edge.agent_with(ep));
    let urls = within("online", agent.wait_online()).await.unwrap();
    let (status, _, _) = https_get(&edge, "again.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::OK);

    edge.restart().await;
    // The agent notices the session ending, backs off, and comes back online by itself.
    let mut saw_reconnecting = false;
    loop {
        match within("status change", agent.next_status()).await {
            Status::Reconnecting { .. } => saw_reconnecting = true,
            Status::Online { urls: again, .. } => {
                assert_eq!(again, urls, "the same URL is bound again");
                break;
            }
            Status::Stopped(e) => panic!("agent stopped: {e:?}"),
            Status::Connecting => {}
        }
    }
    assert!(saw_reconnecting);
    let (status, _, body) = within("after restart", https_get(&edge, "again.warren.localhost", "/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello from upstream");
    assert_eq!(edge.edge().session_count(), 1);
}

#[tokio::test]
async fn a_wrong_authtoken_stops_the_agent_with_ngroks_error() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    for token in ["cr_00000000000000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not-a-token"]
    {
        let mut cfg = edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap());
        cfg.authtoken = token.into();
        let mut agent = Agent::start(cfg);
        let err = within("auth refused", agent.wait_online()).await.unwrap_err();
        match &err {
            AgentError::Auth(m) => assert!(m.contains("ERR_NGROK_107"), "{m}"),
            other => panic!("expected an auth error, got {other:?}"),
        }
    }
    assert_eq!(edge.edge().session_count(), 0);
}

#[tokio::test]
async fn a_host_held_by_another_session_is_refused_and_freed_when_it_leaves() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://taken.warren.localhost")).unwrap();
    let mut first = Agent::start(edge.agent_with(ep.clone()));
    within("first online", first.wait_online()).await.unwrap();

    let mut second = Agent::start(edge.agent_with(ep.clone()));
    let err = within("second refused", second.wait_online()).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Bind(m) if m.contains("ERR_NGROK_334") && m.contains("taken.warren.localhost")),
        "{err:?}"
    );

    // The first is unaffected.
    let (status, _, _) = https_get(&edge, "taken.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::OK);

    first.stop().await.unwrap();
    edge.wait_sessions(0).await;
    let mut third = Agent::start(edge.agent_with(ep));
    within("third online", third.wait_online()).await.unwrap();
}

#[tokio::test]
async fn a_domain_the_edge_does_not_serve_is_refused() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://www.example.com")).unwrap();
    let mut agent = Agent::start(edge.agent_with(ep));
    let err = within("refused", agent.wait_online()).await.unwrap_err();
    assert!(matches!(&err, AgentError::Bind(m) if m.contains("ERR_NGROK_320")), "{err:?}");
}

#[tokio::test]
async fn a_dead_session_is_dropped_by_heartbeat_and_its_endpoints_released() {
    let edge = TestEdge::start().await;
    // A session that authenticates, binds, then never answers anything (a frozen laptop).
    let frozen = RawSession::connect(&edge, false).await;
    let auth = frozen.auth(&edge.authtoken).await;
    assert!(auth.error.is_empty(), "{}", auth.error);
    let bind = frozen.bind_https("ep0", "frozen.warren.localhost").await;
    assert!(bind.error.is_empty(), "{}", bind.error);
    assert_eq!(edge.edge().session_count(), 1);

    // The edge's heartbeat (1 s interval, 3 s tolerance in tests) finds it dead and drops it.
    within("dead session dropped", async {
        while edge.edge().session_count() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let (status, _, _) = https_get(&edge, "frozen.warren.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://frozen.warren.localhost")).unwrap()),
    );
    within("rebound", agent.wait_online()).await.unwrap();
    drop(frozen);
}

#[tokio::test]
async fn a_resuming_agent_takes_over_its_own_endpoints_at_once() {
    let edge = TestEdge::start().await;
    let old = RawSession::connect(&edge, true).await;
    let auth = old.auth(&edge.authtoken).await;
    assert!(old.bind_https("ep0", "resume.warren.localhost").await.error.is_empty());

    // The same client comes back on a new connection (network change) with its session id
    // and the cookie the edge gave it.
    let new = RawSession::connect(&edge, true).await;
    let cookie = auth.extra.cookie.expect("a resume cookie").0;
    let body = serde_json::json!({
        "Version": ["3"], "ClientId": auth.client_id, "Extra": { "AuthToken": edge.authtoken, "Cookie": cookie }
    });
    let reply = new.rpc_raw(0, body.to_string().as_bytes()).await.unwrap();
    let resp: warren_proto::AuthResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.is_empty(), "{}", resp.error);
    let bind = new.bind_https("ep0", "resume.warren.localhost").await;
    assert!(bind.error.is_empty(), "no 'already bound' on resume: {}", bind.error);
    within("old session closed", old.mux.closed()).await;
}

#[tokio::test]
async fn protocol_version_2_clients_get_answers_in_version_2() {
    let edge = TestEdge::start().await;
    let raw = RawSession::connect(&edge, true).await;
    // A 2.x agent offers only "2" and binds with Subdomain / RemotePort.
    let auth = serde_json::json!({ "Version": ["2"], "Extra": { "AuthToken": edge.authtoken, "Version": "2.3.41" } });
    let reply = raw.rpc_raw(0, auth.to_string().as_bytes()).await.unwrap();
    let resp: warren_proto::AuthResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.is_empty(), "{}", resp.error);
    assert_eq!(resp.version, "2");
    let bind =
        serde_json::json!({ "Id": "t1", "Proto": "http", "Opts": { "Subdomain": "oldagent", "Auth": "" } });
    let reply = raw.rpc_raw(1, bind.to_string().as_bytes()).await.unwrap();
    let resp: warren_proto::BindResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.is_empty(), "{}", resp.error);
    assert_eq!(resp.url, format!("http://oldagent.warren.localhost:{}", edge.http_addr().port()));
    assert_eq!(resp.client_id, "t1");

    // A version the edge does not speak is refused with ngrok's code.
    let raw = RawSession::connect(&edge, true).await;
    let auth = serde_json::json!({ "Version": ["1"], "Extra": { "AuthToken": edge.authtoken } });
    let reply = raw.rpc_raw(0, auth.to_string().as_bytes()).await.unwrap();
    let resp: warren_proto::AuthResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.contains("ERR_NGROK_121"), "{}", resp.error);
}

#[tokio::test]
async fn the_edge_runs_on_postgresql() {
    use sqlx::Connection;
    let url = std::env::var("WARREN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if url == "skip" {
        eprintln!("SKIPPED: no PostgreSQL (WARREN_TEST_POSTGRES_URL=skip)");
        return;
    }
    // A database of its own, dropped at the end.
    let db = warren_store::generate_id("warren_e2e").to_lowercase();
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("PostgreSQL for the store tests");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut admin).await.unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    let db_url = format!("{base}/{db}");
    {
        let edge =
            TestEdge::start_with(|c| c.database_url = Some(warren_edge::config::DatabaseUrl(db_url.clone())))
                .await;
        assert!(!edge.data_dir().join("warren.db").exists(), "no SQLite file when PostgreSQL is configured");
        let up = HttpUpstream::start().await;
        let mut agent = Agent::start(
            edge.agent_with(EndpointConfig::http(&up.url(), Some("https://pg.warren.localhost")).unwrap()),
        );
        within("online on PostgreSQL", agent.wait_online()).await.unwrap();
        let (status, _, body) = https_get(&edge, "pg.warren.localhost", "/").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from upstream"));
        let (s, _, list) = edge.api("GET", "/credentials", Some(&edge.api_key), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["credentials"].as_array().unwrap().len(), 1);
        agent.stop().await.unwrap();
        let mut edge = edge;
        edge.stop().await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// A TCP relay whose current connections can be silently cut: bytes stop flowing both ways
/// but no FIN or RST is sent, as when a laptop sleeps or changes networks. Connections made
/// after the cut pass again.
struct Relay {
    addr: std::net::SocketAddr,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let g = generation.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((a, _)) = listener.accept().await else { return };
                let Ok(b) = tokio::net::TcpStream::connect(to).await else { continue };
                let born = g.load(Ordering::SeqCst);
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                tokio::spawn(pipe(ar, bw, g.clone(), born));
                tokio::spawn(pipe(br, aw, g.clone(), born));
            }
        });
        Relay { addr, generation, task }
    }

    fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation.load(Ordering::SeqCst) != born {
            // Cut: keep both sockets open and carry nothing more.
            let _hold = (r, w);
            std::future::pending::<()>().await;
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn after_a_silently_dropped_network_the_agent_resumes_with_the_same_urls_at_the_first_try() {
    let edge = TestEdge::start().await;
    let relay = Relay::start(edge.edge().connect_addr).await;
    let up = HttpUpstream::start().await;
    let ep = EndpointConfig::http(&up.url(), Some("https://roam.warren.localhost")).unwrap();
    let mut config = edge.agent_with(ep);
    config.connect_url = format!("localhost:{}", relay.addr.port());
    let mut agent = Agent::start(config);
    let urls = within("online", agent.wait_online()).await.unwrap();
    assert_eq!(https_get(&edge, "roam.warren.localhost", "/").await.0, StatusCode::OK);

    // The network goes away without a word; the edge still believes in the old session.
    relay.cut();
    let mut failed_attempts = 0;
    loop {
        match within("status change", agent.next_status()).await {
            Status::Reconnecting { error, .. } => {
                failed_attempts += 1;
                assert!(!error.contains("ERR_NGROK_334"), "no 'already bound' on resume: {error}");
            }
            Status::Online { urls: again, .. } => {
                assert_eq!(again, urls, "the same URL is bound again");
                break;
            }
            Status::Stopped(e) => panic!("agent stopped: {e:?}"),
            Status::Connecting => {}
        }
    }
    // One status for the lost session itself; the first new attempt succeeded.
    assert_eq!(failed_attempts, 1, "the resumed session took over its endpoints at once");
    let (status, _, body) = within("after resume", https_get(&edge, "roam.warren.localhost", "/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from upstream"));
    edge.wait_sessions(1).await;
}

/// A random name is kept for the authtoken's endpoint (protocol, name, upstream): after an
/// edge restart the agent gets its URL back, and so does the agent started again; another
/// upstream, or another authtoken, gets a name of its own.
#[tokio::test]
async fn random_names_survive_an_edge_restart_and_an_agent_restart() {
    let mut edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let random = || EndpointConfig::http(&up.url(), None).unwrap();
    let mut agent = Agent::start(edge.agent_with(random()));
    let first = within("online", agent.wait_online()).await.unwrap();
    assert!(first[0].starts_with("https://") && first[0].contains(".warren.localhost"), "{first:?}");

    edge.restart().await;
    loop {
        match within("status change", agent.next_status()).await {
            Status::Online { urls, .. } => {
                assert_eq!(urls, first, "the same random URL after the edge restarted");
                break;
            }
            Status::Stopped(e) => panic!("agent stopped: {e:?}"),
            _ => {}
        }
    }
    within("stop", agent.stop()).await.unwrap();
    edge.wait_sessions(0).await;
    let mut again = Agent::start(edge.agent_with(random()));
    assert_eq!(within("online", again.wait_online()).await.unwrap(), first, "and after the agent restarted");

    let up2 = HttpUpstream::start().await;
    let mut other = Agent::start(edge.agent_with(EndpointConfig::http(&up2.url(), None).unwrap()));
    assert_ne!(within("online", other.wait_online()).await.unwrap(), first, "another upstream");
    let (_, token) = edge.new_token(&[]).await;
    let mut config = edge.agent_with(random());
    config.authtoken = token;
    let mut theirs = Agent::start(config);
    assert_ne!(within("online", theirs.wait_online()).await.unwrap(), first, "another authtoken");
}

/// A hundred agents of one authtoken forwarding to one upstream, started at once, all come
/// online: the name kept for that endpoint goes to one of them and the others get random
/// names of their own, where a Bind used to fail with ERR_NGROK_334 when another took the
/// kept name first (the test failed so without the fix).
#[tokio::test]
async fn agents_starting_at_once_with_one_kept_name_all_come_online() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let mut agents: Vec<Agent> = (0..100)
        .map(|_| Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap())))
        .collect();
    let mut urls = std::collections::HashSet::new();
    for a in &mut agents {
        let got = within("online", a.wait_online()).await.expect("every agent binds");
        assert!(urls.insert(got[0].clone()), "{} twice", got[0]);
    }
    assert_eq!(urls.len(), 100);
    for url in &urls {
        let host = url.trim_start_matches("https://").split(':').next().unwrap().to_owned();
        let (status, _, body) = within("visit", https_get(&edge, &host, "/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from upstream"), "{url}");
    }
}
