//! In-process parts for warren's end-to-end tests: an edge on port 0 with its own data
//! directory, agent configurations that trust it, real upstreams (HTTP, TCP echo, WebSocket
//! echo) and visitor clients that speak TLS with a chosen ALPN.
//!
//! Nothing here fakes a component: the edge, the agent, TLS, HTTP and the store are the real
//! ones; only the ports and directories are temporary.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use warren_agent::{AgentConfig, ConnectCas, EndpointConfig};
use warren_edge::{Edge, EdgeConfig};

pub use tempfile::TempDir;

pub mod hostile;
mod named;
pub use named::TestNamed;
pub mod oidc;
pub mod webdriver;

/// How long any single step of a test may take before the test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test with `what` if it takes longer than [`STEP`].
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Installs a tracing subscriber once (set `RUST_LOG` to see edge and agent logs).
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// An edge on loopback with port-0 listeners and a temporary data directory.
pub struct TestEdge {
    edge: Option<Edge>,
    /// The configuration it runs with (ports filled in after the first start).
    pub config: EdgeConfig,
    /// The authtoken the first start created.
    pub authtoken: String,
    /// The admin API key the first start created.
    pub api_key: String,
    /// The local CA certificate (PEM) that agents and visitors trust.
    pub ca_pem: Vec<u8>,
    /// Path of the CA certificate file.
    pub ca_path: std::path::PathBuf,
    /// The DNS server the edge asks for TXT records (started when a test first needs one).
    dns: std::sync::Mutex<Option<Dnsmasq>>,
    dir: TempDir,
}

impl TestEdge {
    /// Starts an edge with the embedded default on port 0.
    pub async fn start() -> TestEdge {
        TestEdge::start_with(|_| {}).await
    }

    /// Starts an edge after `tweak` adjusts the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut EdgeConfig)) -> TestEdge {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut config = EdgeConfig::local_default(dir.path().join("data"));
        config.connect_addr = lo;
        config.https_addr = lo;
        config.http_addr = Some(lo);
        config.api_addr = Some(lo);
        config.heartbeat_interval = Duration::from_secs(1);
        // The tests' identity providers are local.
        config.idp_allow_loopback_http = true;
        config.events.allow_loopback = true;
        config.heartbeat_tolerance = Duration::from_secs(3);
        // Custom domains are proven through TXT records served by a real DNS server on this
        // port (started by `verify_custom_domain`).
        config.dns_resolver = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())));
        tweak(&mut config);
        let prepared = warren_edge::bootstrap::prepare(&config).await.expect("prepare data dir");
        let first = prepared.first_start.expect("a new data dir is a first start");
        let ca_path = prepared.tls.ca_cert_path.clone();
        let ca_pem = std::fs::read(&ca_path).expect("CA file");
        let edge = Edge::start(config.clone(), prepared.store, prepared.tls).await.expect("edge starts");
        // Pin the ports so that a restart comes back where agents expect it.
        config.connect_addr = edge.connect_addr;
        config.https_addr = edge.https_addr;
        config.http_addr = edge.http_addr;
        config.api_addr = edge.api_addr;
        config.cluster_addr = edge.cluster_addr;
        TestEdge {
            edge: Some(edge),
            config,
            authtoken: first.authtoken.0.clone(),
            api_key: first.api_key.0.clone(),
            ca_pem,
            ca_path,
            dns: std::sync::Mutex::new(None),
            dir,
        }
    }

    /// Starts a second edge node on the same PostgreSQL database as `first` (which must use
    /// one): it shares the accounts, tokens and keys and the master key (as the nodes of a
    /// cluster must), and has listeners and a CA of its own.
    pub async fn start_joining(first: &TestEdge) -> TestEdge {
        TestEdge::start_joining_with(first, |_| {}).await
    }

    /// [`TestEdge::start_joining`] after `tweak` adjusts the configuration (which starts as
    /// a copy of `first`'s, with port-0 listeners).
    pub async fn start_joining_with(first: &TestEdge, tweak: impl FnOnce(&mut EdgeConfig)) -> TestEdge {
        let database_url = first.config.database_url.clone().expect("the first edge uses PostgreSQL");
        let dir = tempfile::tempdir().expect("temp dir");
        let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut config = first.config.clone();
        config.data_dir = dir.path().join("data");
        config.database_url = Some(database_url);
        config.master_key_file =
            Some(first.config.master_key_file.clone().unwrap_or_else(|| first.data_dir().join("master.key")));
        config.connect_addr = lo;
        config.https_addr = lo;
        config.http_addr = Some(lo);
        config.api_addr = Some(lo);
        config.cluster_addr = first.config.cluster_addr.map(|_| lo);
        tweak(&mut config);
        let prepared = warren_edge::bootstrap::prepare(&config).await.expect("prepare data dir");
        assert!(prepared.first_start.is_none(), "the shared database already has its admin");
        let ca_path = prepared.tls.ca_cert_path.clone();
        let ca_pem = std::fs::read(&ca_path).expect("CA file");
        let edge = Edge::start(config.clone(), prepared.store, prepared.tls).await.expect("edge starts");
        config.connect_addr = edge.connect_addr;
        config.https_addr = edge.https_addr;
        config.http_addr = edge.http_addr;
        config.api_addr = edge.api_addr;
        config.cluster_addr = edge.cluster_addr;
        TestEdge {
            edge: Some(edge),
            config,
            authtoken: first.authtoken.clone(),
            api_key: first.api_key.clone(),
            ca_pem,
            ca_path,
            dns: std::sync::Mutex::new(None),
            dir,
        }
    }

    /// Waits until the edge holds `n` sessions (an agent's `stop` returns before the edge has
    /// seen the connection close and released its endpoints).
    pub async fn wait_sessions(&self, n: usize) {
        within("session count", async {
            while self.edge().session_count() != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// The running edge.
    pub fn edge(&self) -> &Edge {
        self.edge.as_ref().expect("edge is running")
    }

    /// `host:port` for agents.
    pub fn connect_url(&self) -> String {
        format!("localhost:{}", self.config.connect_addr.port())
    }

    /// The https ingress.
    pub fn https_addr(&self) -> SocketAddr {
        self.config.https_addr
    }

    /// The plain http ingress.
    pub fn http_addr(&self) -> SocketAddr {
        self.config.http_addr.expect("http ingress enabled")
    }

    /// The REST API listener.
    pub fn api_addr(&self) -> SocketAddr {
        self.config.api_addr.expect("API enabled")
    }

    /// The visitor connections the edge holds, from its metrics
    /// (`warren_visitor_connections`, every listener, relayed ones included).
    pub async fn visitor_connections(&self) -> f64 {
        let (status, _, body) = plain_get(self.api_addr(), "api.warren.localhost", "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix("warren_visitor_connections "))
            .and_then(|v| v.trim().parse().ok())
            .expect("warren_visitor_connections in the metrics")
    }

    /// Calls the REST API as an ngrok API client would (`Ngrok-Version: 2`, Bearer key, JSON)
    /// and returns the status, headers and JSON body (Null when empty).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, hyper::HeaderMap, serde_json::Value) {
        self.api_raw(method, path, key, Some("2"), body.map(|b| b.to_string().into_bytes())).await
    }

    /// [`TestEdge::api`] with control over the version header and raw body bytes.
    pub async fn api_raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        version: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, hyper::HeaderMap, serde_json::Value) {
        let tcp = TcpStream::connect(self.api_addr()).await.expect("connect to the API");
        let mut send = http1(tcp).await;
        let mut req = Request::builder().method(method).uri(path).header("host", "api.warren.localhost");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(v) = version {
            req = req.header("ngrok-version", v);
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(full(b)).unwrap(),
            None => req.body(empty()).unwrap(),
        };
        let res = within("API call", send.send_request(req)).await.expect("API response");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("API body").to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("API answered non-JSON ({e}): {bytes:?}"))
        };
        (parts.status, parts.headers, json)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// An agent configuration with this edge's token and CA and quick timings.
    pub fn agent_config(&self) -> AgentConfig {
        let mut c = AgentConfig::new(
            self.authtoken.clone(),
            self.connect_url(),
            ConnectCas::PemBytes(self.ca_pem.clone()),
        );
        c.heartbeat_interval = Duration::from_secs(1);
        c.heartbeat_tolerance = Duration::from_secs(3);
        c.reconnect_initial = Duration::from_millis(50);
        c.reconnect_max = Duration::from_millis(500);
        c
    }

    /// An agent configuration exposing one endpoint.
    pub fn agent_with(&self, endpoint: EndpointConfig) -> AgentConfig {
        let mut c = self.agent_config();
        c.endpoints.push(endpoint);
        c
    }

    /// Creates another authtoken in the default account with the given bind ACL.
    pub async fn new_token(&self, acl: &[&str]) -> (warren_store::Credential, String) {
        let store = self.edge().store();
        let (account, _) = store.ensure_account("default").await.expect("account");
        let new = warren_store::NewCredential {
            description: "test token".into(),
            acl: acl.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (cred, token) = store.create_credential(&account.id, &new).await.expect("credential");
        (cred, token.0)
    }

    /// An account named `name` (created if new) with an admin, a developer and a read-only
    /// user, each holding an API key and an unrestricted authtoken: the fixture isolation
    /// tests ask for in one line. `tenant("default")` adds the three users to the account the
    /// edge created on its first start.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let store = self.edge().store();
        let (account, _) = store.ensure_account(name).await.expect("account");
        let mut members = Vec::new();
        for role in [warren_store::Role::Admin, warren_store::Role::Developer, warren_store::Role::ReadOnly] {
            let email = format!("{}@{name}.example", role.as_str());
            let user = store.create_user(&account.id, &email, role).await.expect("user");
            let key = warren_store::NewApiKey {
                description: format!("{email}'s key"),
                owner_id: Some(user.id.clone()),
                ..Default::default()
            };
            let (key, key_secret) = store.create_api_key(&account.id, &key).await.expect("API key");
            let token = warren_store::NewCredential {
                description: format!("{email}'s authtoken"),
                owner_id: Some(user.id.clone()),
                ..Default::default()
            };
            let (credential, token) = store.create_credential(&account.id, &token).await.expect("authtoken");
            members.push(Member {
                user_id: user.id,
                email,
                api_key_id: key.id,
                api_key: key_secret.0,
                credential_id: credential.id,
                authtoken: token.0,
            });
        }
        let mut m = members.into_iter();
        let (admin, developer, read_only) = (m.next().unwrap(), m.next().unwrap(), m.next().unwrap());
        Tenant { account_id: account.id, name: name.to_owned(), admin, developer, read_only }
    }

    /// Proves control of a reserved custom domain the way an operator would: its TXT record
    /// (from the reservation's `verification`) is published on the DNS server the edge asks,
    /// and the edge is asked to check it. Panics if the edge does not then call it verified.
    pub async fn verify_custom_domain(&self, reservation: &serde_json::Value) {
        let v = &reservation["verification"];
        let (name, value) = (v["txt_record_name"].as_str(), v["txt_record_value"].as_str());
        let (Some(name), Some(value)) = (name, value) else { return };
        let resolver = self.config.dns_resolver.expect("the test edge has a DNS resolver");
        {
            let mut dns = self.dns.lock().unwrap();
            let mut records = dns.take().map(|d| d.records.clone()).unwrap_or_default();
            records.push((name.to_owned(), value.to_owned()));
            *dns = Some(Dnsmasq::start(resolver.port(), records));
        }
        let id = reservation["id"].as_str().expect("reservation id");
        let path = format!("/reserved_domains/{id}/verify");
        let answer = within("domain verified", async {
            loop {
                let (status, _, body) = self.api("POST", &path, Some(&self.api_key), None).await;
                if status == StatusCode::OK {
                    return body;
                }
                // dnsmasq may still be starting.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert_eq!(answer["verification"]["status"], "verified", "{answer}");
    }

    /// Stops the edge (closing every session) and starts it again on the same ports with the
    /// same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let prepared = warren_edge::bootstrap::prepare(&self.config).await.expect("prepare data dir");
        assert!(prepared.first_start.is_none(), "a restart keeps the data directory");
        let edge =
            Edge::start(self.config.clone(), prepared.store, prepared.tls).await.expect("edge restarts");
        self.edge = Some(edge);
    }

    /// Starts stopping the edge (as SIGTERM does) and returns at once; the handle ends when
    /// the edge has stopped.
    pub fn begin_stop(&mut self) -> JoinHandle<()> {
        let edge = self.edge.take().expect("edge is running");
        tokio::spawn(edge.shutdown())
    }

    /// Stops the edge.
    pub async fn stop(&mut self) {
        if let Some(e) = self.edge.take() {
            e.shutdown().await;
        }
    }

    /// Keeps the temporary directory alive for as long as the edge.
    pub fn temp_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// One account of an isolation test: see [`TestEdge::tenant`].
#[derive(Debug)]
pub struct Tenant {
    /// `acc_...`
    pub account_id: String,
    /// The account's name.
    pub name: String,
    /// A user with the admin role.
    pub admin: Member,
    /// A user with the developer role.
    pub developer: Member,
    /// A user with the read-only role.
    pub read_only: Member,
}

/// A user of a [`Tenant`] and the secrets it holds.
#[derive(Debug)]
pub struct Member {
    /// `usr_...`
    pub user_id: String,
    /// Its e-mail address.
    pub email: String,
    /// Its API key's id.
    pub api_key_id: String,
    /// Its API key (`Bearer`).
    pub api_key: String,
    /// Its authtoken's id.
    pub credential_id: String,
    /// Its authtoken (no ACL).
    pub authtoken: String,
}

impl Tenant {
    /// An agent configuration for `edge` that authenticates as this tenant's developer.
    pub fn agent_config(&self, edge: &TestEdge) -> AgentConfig {
        let mut c = edge.agent_config();
        c.authtoken = self.developer.authtoken.clone();
        c
    }
}

/// A fresh PostgreSQL database for one test (`WARREN_TEST_POSTGRES_URL`, default the local
/// server's `test` database; `skip` skips), dropped by [`TestPostgres::drop_db`].
pub struct TestPostgres {
    /// The database's URL.
    pub url: String,
    name: String,
    admin: String,
}

impl TestPostgres {
    /// Creates the database; `None` when the tests are told to skip PostgreSQL.
    pub async fn create() -> Option<TestPostgres> {
        use sqlx::Connection;
        let admin = std::env::var("WARREN_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        if admin == "skip" {
            eprintln!("SKIPPED: no PostgreSQL (WARREN_TEST_POSTGRES_URL=skip)");
            return None;
        }
        let name = warren_store::generate_id("warren_mn").to_lowercase();
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL for a multi-node test");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Some(TestPostgres { url, name, admin })
    }

    /// Drops the database (every node on it must have stopped).
    pub async fn drop_db(self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// A rustls client config trusting `ca_pem`, offering `alpn`.
pub fn client_tls(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let mut c =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// Opens TLS to `addr` with SNI `host` and the given ALPN, as a visitor's browser would.
pub async fn tls_connect(
    addr: SocketAddr,
    host: &str,
    ca_pem: &[u8],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect to the edge");
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from(host.to_owned()).expect("server name");
    tokio_rustls::TlsConnector::from(client_tls(ca_pem, alpn))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// A request body that can be streamed.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// An empty body.
pub fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

/// A body with `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A streamed body of `len` bytes of [`pattern`], made 64 KiB at a time (never held whole).
pub fn pattern_body(len: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let stream = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= len {
            return None;
        }
        let n = CHUNK.min(len - sent);
        Some((Ok::<_, std::io::Error>(Frame::data(pattern(sent, n as usize))), sent + n))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// `n` bytes of a position-dependent pattern starting at `offset`, so that misordered or lost
/// bytes change the digest.
pub fn pattern(offset: u64, n: usize) -> Bytes {
    (0..n as u64).map(|i| ((offset + i) % 251) as u8).collect::<Vec<u8>>().into()
}

/// SHA-256 of `len` bytes of [`pattern`], hex.
pub fn pattern_digest(len: u64) -> String {
    let mut h = Sha256::new();
    let mut off = 0;
    while off < len {
        let n = (64 * 1024).min(len - off);
        h.update(pattern(off, n as usize));
        off += n;
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads a body to the end without holding it, returning its length and SHA-256.
pub async fn digest_body<B>(mut body: B) -> (u64, String)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("body frame").into_data() {
            n += d.len() as u64;
            h.update(&d);
        }
    }
    (n, hex(&h.finalize()))
}

/// An HTTP/1.1 client connection over `io`.
pub async fn http1<I>(io: I) -> hyper::client::conn::http1::SendRequest<Body>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.expect("h1 handshake");
    tokio::spawn(conn.with_upgrades());
    send
}

/// An HTTP/2 client connection over `io`.
pub async fn http2<I>(io: I) -> hyper::client::conn::http2::SendRequest<Body>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// Sends `GET path` with `Host: host` over a new HTTP/1.1 connection to `addr` (plain TCP) and
/// returns the status and body text.
pub async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, hyper::HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut send = http1(tcp).await;
    let req = Request::get(path).header("host", host).body(empty()).unwrap();
    let res = send.send_request(req).await.expect("response");
    let (parts, body) = res.into_parts();
    let text = String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).into_owned();
    (parts.status, parts.headers, text)
}

/// Sends `GET path` over https (HTTP/1.1) to the edge for `host` and returns status and body.
pub async fn https_get(edge: &TestEdge, host: &str, path: &str) -> (StatusCode, hyper::HeaderMap, String) {
    let tls = tls_connect(edge.https_addr(), host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = Request::get(path).header("host", host).body(empty()).unwrap();
    let res = send.send_request(req).await.expect("response");
    let (parts, body) = res.into_parts();
    let text = String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).into_owned();
    (parts.status, parts.headers, text)
}

/// A real HTTP server on loopback (HTTP/1.1, as local dev servers are). Routes:
/// - `GET /echo`: JSON `{method, path, version, headers}` of the request as received,
/// - `POST /upload`: reads the body as it streams and answers `{bytes, sha256}`,
/// - `GET /download/<n>`: streams `n` bytes of [`pattern`],
/// - `GET /slow-download/<n>`: the same, for visitors that stop reading,
/// - anything else: `hello from upstream`.
pub struct HttpUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests served so far.
    pub requests: Arc<AtomicUsize>,
    /// Path and query, and headers, of every request, in arrival order.
    pub seen: Arc<std::sync::Mutex<Vec<(String, http::HeaderMap)>>>,
    task: JoinHandle<()>,
}

impl HttpUpstream {
    /// Starts the server on port 0.
    pub async fn start() -> HttpUpstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, log) = (requests.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (counter, log) = (counter.clone(), log.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let path = req.uri().path_and_query().map_or("/".into(), |p| p.to_string());
                        log.lock().unwrap().push((path, req.headers().clone()));
                        counter.fetch_add(1, Ordering::SeqCst);
                        upstream_handle(req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        HttpUpstream { addr, requests, seen, task }
    }

    /// `http://127.0.0.1:port`, for [`EndpointConfig::http`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/echo" {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let body = serde_json::json!({
            "method": req.method().as_str(),
            "path": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap());
    }
    if path == "/upload" {
        let (n, digest) = digest_body(req.into_body()).await;
        let body = serde_json::json!({ "bytes": n, "sha256": digest });
        return Ok(Response::new(full(body.to_string())));
    }
    if let Some(n) = path.strip_prefix("/download/").or_else(|| path.strip_prefix("/slow-download/")) {
        let n: u64 = n.parse().unwrap_or(0);
        return Ok(Response::builder().header("content-length", n).body(pattern_body(n)).unwrap());
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| StatusCode::from_bytes(c.as_bytes()).ok())
    {
        return Ok(Response::builder().status(code).body(full(format!("upstream answered {code}"))).unwrap());
    }
    Ok(Response::new(full("hello from upstream")))
}

/// An HTTP/1.1 upstream answering every request with `"{name} {path}"`, so that a test sees
/// which of several upstreams served a request, and for what.
pub async fn named_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind named upstream");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(full(format!("{name} {}", req.uri().path()))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

/// A TLS echo server with `chain` and `key` (PEM), as an upstream that terminates TLS itself:
/// it echoes until the client half-closes.
pub async fn tls_echo_upstream(chain: &str, key: &str) -> SocketAddr {
    let certs =
        CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>().expect("chain PEM");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
    let cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("certificate and key");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind TLS echo");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A server-certificate verifier that accepts any certificate (signatures are still checked
/// with `provider`'s algorithms): for clients whose refusal must come from the server.
#[derive(Debug)]
pub struct AnyServerCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The same server as [`HttpUpstream`] behind TLS with a self-signed certificate for
/// `localhost` and 127.0.0.1, as local dev servers often are.
pub async fn https_upstream() -> (SocketAddr, JoinHandle<()>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind https upstream");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(upstream_handle);
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, task)
}

/// A TCP echo server on loopback that echoes until the client half-closes, then closes.
pub async fn tcp_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind echo");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A WebSocket echo server (tungstenite) on loopback: echoes every text and binary message.
pub async fn ws_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind ws");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// An address on loopback where nothing listens (connections are refused).
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    l.local_addr().unwrap()
}

/// Writes `data` to `stream`, half-closes, and reads everything back.
pub async fn echo_roundtrip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = stream.split();
    let write = async {
        w.write_all(data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::with_capacity(data.len());
    let read = r.read_to_end(&mut back);
    let (_, n) = tokio::join!(write, read);
    n.expect("read back");
    back
}

/// The host part of a URL (`https://abc.localhost:8443` → `abc.localhost`).
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.rsplit_once(':') {
        Some((h, _)) => h.to_owned(),
        None => hostport.to_owned(),
    }
}

/// The port of a URL.
pub fn url_port(url: &str) -> u16 {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("URL with a port")
}

/// A hand-driven agent session for protocol-level tests: TLS + muxado, RPCs written byte by
/// byte, so tests can send what no well-behaved agent would.
pub struct RawSession {
    /// The multiplexed session.
    pub mux: warren_mux::Mux,
    accept_task: JoinHandle<()>,
}

impl RawSession {
    /// Dials the edge's agent listener. With `answer_heartbeats`, the edge's heartbeats are
    /// echoed; without, the session looks dead to the edge once its tolerance passes.
    pub async fn connect(edge: &TestEdge, answer_heartbeats: bool) -> RawSession {
        let tls = tls_connect(edge.config.connect_addr, "localhost", &edge.ca_pem, &[]).await;
        let mux = warren_mux::start(tls, warren_mux::Role::Client, warren_mux::Config::default());
        let m = mux.clone();
        let accept_task = tokio::spawn(async move {
            while let Some(mut s) = m.accept().await {
                if !answer_heartbeats {
                    // Hold the stream without reading, like a frozen process.
                    std::mem::forget(s);
                    continue;
                }
                tokio::spawn(async move {
                    if warren_mux::typed::read_type(&mut s).await.ok()
                        == Some(warren_mux::typed::HEARTBEAT_TYPE)
                    {
                        warren_mux::typed::answer_heartbeats(s).await;
                    }
                });
            }
        });
        RawSession { mux, accept_task }
    }

    /// Opens a typed stream, writes `body` without half-closing (as ngrok SDKs do) and reads
    /// the reply to its end.
    pub async fn rpc_raw(&self, ty: u32, body: &[u8]) -> std::io::Result<Vec<u8>> {
        let s = self.mux.open_typed(ty).await?;
        let (mut r, mut w) = tokio::io::split(s);
        let mut reply = Vec::new();
        // Write and read at once: the edge may answer (and stop reading) before the body ends.
        let (written, read) = tokio::join!(w.write_all(body), r.read_to_end(&mut reply));
        read?;
        if reply.is_empty() {
            written?;
        }
        Ok(reply)
    }

    /// Authenticates with `token`, offering protocol version 3.
    pub async fn auth(&self, token: &str) -> warren_proto::AuthResp {
        let auth = warren_proto::Auth {
            version: vec!["3".into()],
            client_id: String::new(),
            extra: warren_proto::AuthExtra {
                os: "linux".into(),
                arch: "x86_64".into(),
                authtoken: warren_proto::Secret(token.into()),
                version: "test".into(),
                client_type: "raw-test".into(),
                ..Default::default()
            },
        };
        self.call(warren_proto::StreamType::Auth, "Auth", &auth).await
    }

    /// Binds an https endpoint for `host`.
    pub async fn bind_https(&self, id: &str, host: &str) -> warren_proto::BindResp {
        let opts = warren_proto::HttpOpts { domain: host.into(), ..Default::default() };
        self.bind(id, "https", serde_json::to_value(opts).expect("options")).await
    }

    /// Binds an endpoint of protocol `proto` (`http`, `https`, `tcp`, `tls`) with `opts`, which
    /// may hold any keys (the options under test).
    pub async fn bind(&self, id: &str, proto: &str, opts: serde_json::Value) -> warren_proto::BindResp {
        let bind = warren_proto::Bind {
            client_id: id.into(),
            proto: proto.into(),
            forwards_to: "test".into(),
            opts,
            ..Default::default()
        };
        self.call(warren_proto::StreamType::Bind, "Bind", &bind).await
    }

    /// One RPC through the same helper the edge and the agent use; panics if it fails.
    pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        ty: warren_proto::StreamType,
        what: &'static str,
        req: &Req,
    ) -> Resp {
        warren_mux::rpc::call(&self.mux, ty.to_u32(), what, req, warren_proto::MAX_RPC_LEN, STEP)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Dials the edge and authenticates with `token`, answering heartbeats; panics if Auth
    /// fails.
    pub async fn authenticated(edge: &TestEdge, token: &str) -> RawSession {
        let s = RawSession::connect(edge, true).await;
        let r = s.auth(token).await;
        assert!(r.error.is_empty(), "Auth failed: {}", r.error);
        s
    }
}

impl Drop for RawSession {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.mux.close(warren_mux::ErrorCode::None, "test done");
    }
}

/// A certificate authority made for a test, and the leaf certificates it signs.
pub struct TestCa {
    /// The CA certificate (PEM).
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A leaf for `name` (DNS name and common name): (certificate PEM, key PEM, certificate DER).
    pub fn leaf(&self, name: &str) -> (String, String, rustls::pki_types::CertificateDer<'static>) {
        self.leaf_for(&[name])
    }

    /// A leaf for several names (the first is the common name).
    pub fn leaf_for(&self, names: &[&str]) -> (String, String, rustls::pki_types::CertificateDer<'static>) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("names");
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// A root store trusting this CA only.
    pub fn roots(&self) -> rustls::RootCertStore {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(c.expect("PEM")).expect("CA");
        }
        roots
    }
}

/// Debian's dnsmasq as an authoritative answer for a few TXT records, on loopback: the DNS
/// server of tests that prove control of a custom domain. Stopped when dropped.
pub struct Dnsmasq {
    child: std::process::Child,
    records: Vec<(String, String)>,
}

impl Dnsmasq {
    /// Serves `records` (name, TXT value) on 127.0.0.1:`port` (UDP).
    pub fn start(port: u16, records: Vec<(String, String)>) -> Dnsmasq {
        let mut cmd = std::process::Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            "--pid-file=",
        ]);
        for (name, value) in &records {
            cmd.arg(format!("--txt-record={name},{value}"));
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (.ci/run installs dnsmasq-base)");
        Dnsmasq { child, records }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `PYTHONPATH` (`dir`) under which `python3 -c "<import>"` works: PyPI's `pip_spec` is
/// installed there first if needed (several specs separated by spaces). Test peers written in Python (ngrok's API client,
/// Prometheus's parser, NATS's client, OpenTelemetry's types) come this way, pinned.
pub fn python_packages(dir: &std::path::Path, import: &str, pip_spec: &str) -> String {
    let dir_s = dir.to_string_lossy().into_owned();
    let ok = || {
        std::process::Command::new("python3")
            .args(["-c", import])
            .env("PYTHONPATH", &dir_s)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok() {
        let status = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", &dir_s])
            .args(pip_spec.split_whitespace())
            .status()
            .unwrap_or_else(|e| panic!("python3 with pip is needed to install {pip_spec}: {e}"));
        assert!(status.success() && ok(), "pip install {pip_spec} failed");
    }
    dir_s
}

/// `n` consecutive ports free now, for an edge's tcp range in a test that needs a small one.
pub fn free_port_range(n: u16) -> std::ops::RangeInclusive<u16> {
    // 30000-32767: below the kernel's ephemeral ports (32768+), which another test's client
    // socket could take at any moment, and above the edges' default tcp range (20000-29999),
    // which other tests' random binds use.
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.subsec_nanos());
    loop {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let start = 30000 + (seed >> 8) as u16 % (2767 - n);
        let all_free = (start..start + n).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok());
        if all_free {
            return start..=start + n - 1;
        }
    }
}

/// A free loopback port for a process that cannot take port 0 (pebble, dnsmasq), free for
/// TCP and UDP alike. Not one of the kernel's ephemeral ports: a port given out as free and
/// used only later (a DNS server started when a test first needs it) could meanwhile be any
/// test's client socket.
pub fn free_port() -> u16 {
    // 10000-19999: below the edges' default tcp range (20000-29999) and the band
    // `free_port_range` gives out (30000-32767), so that neither hands out what the other
    // did; processes bind these ports a while after they are chosen.
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(11, |d| d.subsec_nanos());
    loop {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = 10_000 + (seed >> 8) as u16 % 10_000;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS
/// (every name resolves to 127.0.0.1), validating challenges against the given http and
/// TLS ports. Both processes are killed on drop.
pub struct Pebble {
    /// `https://127.0.0.1:PORT/dir`.
    pub directory: String,
    /// The PEM file of pebble's own server certificate (trust it for the directory).
    pub server_ca: std::path::PathBuf,
    /// pebble-challtestsrv's DNS server: every name has the address 127.0.0.1 there.
    pub dns: SocketAddr,
    management: SocketAddr,
    server_ca_pem: Vec<u8>,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts challtestsrv and pebble; returns once pebble accepts connections.
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_resolving_with(http_port, tls_port, None).await
    }

    /// Starts pebble resolving names with `dns` (a real DNS server, e.g. [`TestNamed`], for
    /// DNS-01), or with a challtestsrv answering 127.0.0.1 for every name when `None`.
    pub async fn start_resolving_with(
        http_port: u16,
        tls_port: u16,
        dns_server: Option<SocketAddr>,
    ) -> Pebble {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = TestCa::new("pebble test server CA");
        let (chain, key, _) = server.leaf("127.0.0.1");
        let (cert_path, key_path, ca_path) =
            (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
        std::fs::write(&cert_path, &chain).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        std::fs::write(&ca_path, &server.pem).unwrap();
        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert_path, "privateKey": key_path,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let spawn = |cmd: &mut std::process::Command| {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("pebble is installed (Debian package pebble; .ci/run installs it)")
        };
        let dns_addr = match dns_server {
            Some(d) => d.to_string(),
            None => format!("127.0.0.1:{dns}"),
        };
        let mut children = Vec::new();
        if dns_server.is_none() {
            children.push(spawn(
                std::process::Command::new("pebble-challtestsrv")
                    .args(["-dns01", &dns_addr, "-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &format!("127.0.0.1:{}", free_port()), "-defaultIPv4", "127.0.0.1"])
                    .args(["-defaultIPv6", ""]),
            ));
        }
        let pebble = spawn(
            std::process::Command::new("pebble")
                .args(["-config", config_path.to_str().unwrap(), "-dnsserver", &dns_addr])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
        );
        children.push(pebble);
        let p = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            server_ca: ca_path,
            dns: dns_addr.parse().expect("address"),
            management: SocketAddr::from((Ipv4Addr::LOCALHOST, management)),
            server_ca_pem: server.pem.into_bytes(),
            children,
            _dir: dir,
        };
        for addr in [SocketAddr::from((Ipv4Addr::LOCALHOST, listen)), p.management] {
            within("pebble listening", async {
                while TcpStream::connect(addr).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
        p
    }

    /// The root that signs the certificates pebble issues (changes every pebble start).
    pub async fn issuing_root(&self) -> String {
        let tls = tls_connect(self.management, "127.0.0.1", &self.server_ca_pem, &[b"http/1.1"]).await;
        let mut send = http1(tls).await;
        let req = Request::get("/roots/0").header("host", "127.0.0.1").body(empty()).unwrap();
        let res = send.send_request(req).await.expect("pebble roots");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(body.to_vec()).expect("PEM")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP load balancer (or a network path) a test controls: each connection goes to the
/// first backend that accepts it ([`TcpProxy::start`]) or to the backends in turn, skipping
/// those that refuse ([`TcpProxy::round_robin`]); [`TcpProxy::cut`] drops every connection
/// and refuses new ones, as a partition would, until [`TcpProxy::heal`].
pub struct TcpProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    backends: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts on a free loopback port; connections go to the first backend that accepts.
    pub async fn start(backends: Vec<SocketAddr>) -> TcpProxy {
        TcpProxy::run(backends, false).await
    }

    /// Starts on a free loopback port; connections go to the backends in turn.
    pub async fn round_robin(backends: Vec<SocketAddr>) -> TcpProxy {
        TcpProxy::run(backends, true).await
    }

    async fn run(backends: Vec<SocketAddr>, rotate: bool) -> TcpProxy {
        let turn = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(std::sync::Mutex::new(backends));
        let cut = Arc::new(tokio::sync::watch::channel(false).0);
        let (b, c) = (backends.clone(), cut.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut visitor, _)) = listener.accept().await else { return };
                if *c.borrow() {
                    continue;
                }
                let (b, mut cut) = (b.clone(), c.subscribe());
                let first = if rotate { turn.fetch_add(1, Ordering::Relaxed) } else { 0 };
                tokio::spawn(async move {
                    let mut list = b.lock().unwrap().clone();
                    if !list.is_empty() {
                        let n = first % list.len();
                        list.rotate_left(n);
                    }
                    for backend in list {
                        let Ok(mut up) = TcpStream::connect(backend).await else { continue };
                        let _ = up.set_nodelay(true);
                        let _ = visitor.set_nodelay(true);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut visitor, &mut up) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                        return;
                    }
                });
            }
        });
        TcpProxy { addr, backends, cut, task }
    }

    /// Where new connections go from now on.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap() = backends;
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    /// Takes connections again.
    pub fn heal(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
