//! Two edge nodes on one PostgreSQL database, relaying to each other: a visitor who reaches
//! either node gets the endpoint whichever node its agent is on, over https, http, tcp and
//! tls, with the visitor's own address reaching the endpoint's node; relay links take only
//! cluster certificates, and a relay stream with a stale fencing token is refused.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

/// Two nodes relaying to each other; node b's tcp endpoints listen on 127.0.0.2 so that both
/// can listen on one machine.
async fn two_nodes(db: &TestPostgres) -> (TestEdge, TestEdge) {
    let url = db.url.clone();
    let ports = free_port_range(8);
    let a = TestEdge::start_with(|c| {
        c.database_url = Some(warren_edge::config::DatabaseUrl(url));
        c.cluster_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        c.tcp_ports = ports;
    })
    .await;
    let b = TestEdge::start_joining_with(&a, |c| c.tcp_bind_ip = Ipv4Addr::new(127, 0, 0, 2).into()).await;
    (a, b)
}

/// A TCP connection to `addr` from `from` (a loopback address other than the nodes'), so the
/// endpoint's node can tell the visitor's address from the relaying node's.
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(addr).await.expect("connect")
}

const VISITOR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// GET `path` over https to `addr` with SNI and Host `host`, trusting `ca_pem`, from
/// [`VISITOR`]; `None` if the handshake fails (before the relaying node's view has the
/// endpoint, its own certificate answers, which `ca_pem` does not trust).
async fn https_get_via(
    addr: SocketAddr,
    host: &str,
    ca_pem: &[u8],
    path: &str,
) -> Option<(StatusCode, String)> {
    let tcp = connect_from(VISITOR, addr).await;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(client_tls(ca_pem, &[b"http/1.1"])).connect(name, tcp).await.ok()?;
    let mut send = http1(tls).await;
    let res =
        send.send_request(Request::get(path).header("host", host).body(empty()).unwrap()).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn plain_get_via(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, hyper::HeaderMap, String) {
    let tcp = connect_from(VISITOR, addr).await;
    let mut send = http1(tcp).await;
    let res =
        send.send_request(Request::get(path).header("host", host).body(empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// A TLS echo server with a certificate for `name` from `ca`: what a tls endpoint's agent
/// passes visitors through to.
async fn tls_echo(ca: &TestCa, name: &str) -> SocketAddr {
    let (cert, key, _) = ca.leaf(name);
    tls_echo_upstream(&cert, &key).await
}

/// The certificate every node of a cluster serves, as an operator's files: its CA, the
/// directory holding the files (kept for the test's length), the chain and the key.
fn operator_certificate() -> (TestCa, tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let operator = TestCa::new("operator CA");
    let (chain, key, _) = operator.leaf_for(&["connect.warren.localhost", "*.warren.localhost", "localhost"]);
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("chain.pem"), files.path().join("key.pem"));
    std::fs::write(&cert_file, chain).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (operator, files, cert_file, key_file)
}

/// Retries `f` until it gives `Some` (the other node's view of the routes follows within a
/// second).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    within(what, async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_visitor_on_either_node_reaches_an_agent_on_the_other_over_every_scheme() {
    let Some(db) = TestPostgres::create().await else { return };
    let (mut a, mut b) = two_nodes(&db).await;
    let up = HttpUpstream::start().await;
    let (echo, _) = tcp_echo().await;
    let passthrough_ca = TestCa::new("passthrough upstream CA");
    let tls_up = tls_echo(&passthrough_ca, "pass.warren.localhost").await;

    // One agent on node a with an endpoint of every scheme.
    let mut cfg = a.agent_config();
    cfg.endpoints = vec![
        EndpointConfig::http(&up.url(), Some("https://app.warren.localhost")).unwrap(),
        EndpointConfig::http(&up.url(), Some("http://plain.warren.localhost")).unwrap(),
        EndpointConfig::tcp(&echo.to_string(), None).unwrap(),
        EndpointConfig::tls(&tls_up.to_string(), Some("tls://pass.warren.localhost"), None).unwrap(),
    ];
    let mut on_a = Agent::start(cfg);
    let urls = within("online on node a", on_a.wait_online()).await.unwrap();
    let tcp_url = urls.iter().find(|u| u.starts_with("tcp://")).unwrap().clone();

    // https through node b: the connection goes to node a whole (node a's certificate), and
    // the upstream sees the visitor's address, not node b's.
    let (status, body) = eventually("https through node b", || async {
        https_get_via(b.https_addr(), "app.warren.localhost", &a.ca_pem, "/echo").await
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-for"], VISITOR.to_string(), "{echoed}");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");

    // Plain http through node b, request by request, with the visitor's address.
    let body = eventually("plain http through node b", || async {
        let (status, _, body) = plain_get_via(b.http_addr(), "plain.warren.localhost", "/echo").await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-for"], VISITOR.to_string(), "{echoed}");
    // An https-only endpoint of node a: node b sends plain-http visitors to https.
    let (status, headers, _) = plain_get_via(b.http_addr(), "app.warren.localhost", "/x?y=1").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers["location"],
        format!("https://app.warren.localhost:{}/x?y=1", b.https_addr().port()).as_str()
    );

    // tcp: node b listens on the same port (on its own address) and relays (once its view
    // has the endpoint: the four binds may reach it in more than one reload).
    let port = url_port(&tcp_url);
    let node_b_port = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port));
    let mut tcp_visitor = eventually("node b listens for the tcp endpoint", || async {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((VISITOR, 0))).unwrap();
        s.connect(node_b_port).await.ok()
    })
    .await;
    assert_eq!(echo_roundtrip(&mut tcp_visitor, b"through node b").await, b"through node b");

    // tls passthrough: the upstream's own certificate arrives through node b.
    let pem = passthrough_ca.pem.as_bytes();
    let mut pass = eventually("tls passthrough through node b", || async {
        let tcp = connect_from(VISITOR, b.https_addr()).await;
        let name = rustls::pki_types::ServerName::try_from("pass.warren.localhost").unwrap();
        tokio_rustls::TlsConnector::from(client_tls(pem, &[])).connect(name, tcp).await.ok()
    })
    .await;
    pass.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    pass.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");

    // And the other way: an agent on node b, a visitor on node a.
    let mut on_b = Agent::start(
        b.agent_with(EndpointConfig::http(&up.url(), Some("https://b-app.warren.localhost")).unwrap()),
    );
    within("online on node b", on_b.wait_online()).await.unwrap();
    let (status, body) = eventually("https through node a", || async {
        https_get_via(a.https_addr(), "b-app.warren.localhost", &b.ca_pem, "/").await
    })
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from upstream"));

    // An https request whose Host another node holds, on a connection made for another
    // name, is misdirected (421): that node must make the handshake itself.
    let tcp = connect_from(VISITOR, b.https_addr()).await;
    let name = rustls::pki_types::ServerName::try_from("b-app.warren.localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(&b.ca_pem, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut send = http1(tls).await;
    let res = send
        .send_request(Request::get("/").header("host", "app.warren.localhost").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::MISDIRECTED_REQUEST);
    // Open visitor connections would hold node b's shutdown for its drain time.
    drop((send, pass, tcp_visitor));

    // Node b stops: node a forgets its endpoints, and visitors get node a's 404.
    on_b.stop().await.unwrap();
    b.stop().await;
    eventually("node b's endpoint is gone from node a's view", || async {
        let (s, _, _) = plain_get_via(a.http_addr(), "b-app.warren.localhost", "/").await;
        (s == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    on_a.stop().await.unwrap();
    a.stop().await;
    db.drop_db().await;
}

/// A relay link presenting a certificate from another CA is refused; a node's own
/// certificate gets a link, but a relay stream naming an endpoint by a stale id (the fencing
/// token of an earlier bind) is refused, and so is one for an endpoint the node never held.
#[tokio::test]
async fn relay_links_take_only_cluster_certificates_and_stale_tokens_are_refused() {
    let Some(db) = TestPostgres::create().await else { return };
    let (mut a, mut b) = two_nodes(&db).await;
    let relay = b.edge().cluster_addr.unwrap();
    let b_name = warren_edge::Edge::cluster_server_name(b.edge().node_id());

    // A stranger's certificate: no link.
    let stranger = TestCa::new("not the cluster CA");
    let (cert, key, _) = stranger.leaf("intruder.node.warren.invalid");
    let config = {
        use rustls::pki_types::pem::PemObject;
        let chain =
            rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.unwrap()).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))))
            .with_client_auth_cert(chain, key)
            .unwrap()
    };
    let tcp = TcpStream::connect(relay).await.unwrap();
    let refused = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(b_name.clone(), tcp).await?;
        // TLS 1.3: the client learns of the refused certificate on its first read.
        tls.write_all(&[0u8; 12]).await?;
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await
    };
    assert!(within("a stranger's link is refused", refused).await.is_err());

    // Node a's own certificate: a link, and raw relay streams on it.
    let up = HttpUpstream::start().await;
    let mut on_b = Agent::start(
        b.agent_with(EndpointConfig::http(&up.url(), Some("http://fenced.warren.localhost")).unwrap()),
    );
    within("online on node b", on_b.wait_online()).await.unwrap();
    let (_, _, list) = a.api("GET", "/endpoints", Some(&a.api_key), None).await;
    let current = list["endpoints"][0]["id"].as_str().unwrap().to_owned();
    let tcp = TcpStream::connect(relay).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(a.edge().cluster_client_tls().unwrap())
        .connect(b_name, tcp)
        .await
        .unwrap();
    let mux = warren_mux::start(tls, warren_mux::Role::Client, warren_mux::Config::default());
    let open = |endpoint_id: &str| {
        serde_json::json!({
            "kind": "http", "endpoint_id": endpoint_id, "host": "fenced.warren.localhost",
            "client": "203.0.113.7:4000", "local": "127.0.0.1:80",
        })
    };
    let ack = |header: serde_json::Value| {
        let mux = mux.clone();
        async move {
            let mut s = mux.open().unwrap();
            let json = serde_json::to_vec(&header).unwrap();
            s.write_all(&(json.len() as u32).to_be_bytes()).await.unwrap();
            s.write_all(&json).await.unwrap();
            let b = s.read_u8().await.unwrap();
            (b, s)
        }
    };
    assert_eq!(ack(open("ep_1xZAruLjR6ul1lri54M0swZW7i")).await.0, 1, "a stale fencing token is refused");
    let mut unknown = open(&current);
    unknown["host"] = "nobody.warren.localhost".into();
    assert_eq!(ack(unknown).await.0, 1, "an endpoint the node does not hold is refused");
    let mut extra = open(&current);
    extra["admin"] = true.into();
    let mut s = mux.open().unwrap();
    let json = serde_json::to_vec(&extra).unwrap();
    s.write_all(&(json.len() as u32).to_be_bytes()).await.unwrap();
    s.write_all(&json).await.unwrap();
    assert!(s.read_u8().await.is_err(), "a header with an unknown field gets no answer");
    // A header over the 4 KiB limit (valid, padded with spaces, for the current endpoint):
    // dropped before it is read into memory, never answered.
    let mut padded = serde_json::to_vec(&open(&current)).unwrap();
    padded.resize(4097, b' ');
    let mut s = mux.open().unwrap();
    s.write_all(&(padded.len() as u32).to_be_bytes()).await.unwrap();
    s.write_all(&padded).await.unwrap();
    assert!(s.read_u8().await.is_err(), "an oversized header gets no answer");

    // The current token: accepted, and the request is served with the header's client.
    let (b0, s) = ack(open(&current)).await;
    assert_eq!(b0, 0);
    let mut send = http1(s).await;
    let res = send
        .send_request(Request::get("/echo").header("host", "fenced.warren.localhost").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["headers"]["x-forwarded-for"], "203.0.113.7");

    on_b.stop().await.unwrap();
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

/// `url` with its `host:port` replaced by `addr` (to reach the database through a proxy).
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let (_, path) = rest.split_once('/').unwrap();
    format!("{scheme_user}@{addr}/{path}")
}

async fn healthz(edge: &TestEdge) -> StatusCode {
    let tcp = TcpStream::connect(edge.api_addr()).await.unwrap();
    let mut send = http1(tcp).await;
    send.send_request(Request::get("/healthz").header("host", "api").body(empty()).unwrap())
        .await
        .unwrap()
        .status()
}

/// A node cut off from the database (a partition between it and PostgreSQL) fences itself:
/// its `/healthz` turns 503 and it ends its agent sessions before its lease can lapse, so it
/// never serves a name another node has been given. A load balancer that follows `/healthz`
/// sends the agent's reconnect to the other node, where it resumes its endpoint, and
/// visitors are served again; the cut-off node holds nothing.
#[tokio::test]
async fn a_node_cut_off_from_the_database_fences_itself_and_its_agent_resumes_on_another() {
    let Some(db) = TestPostgres::create().await else { return };
    let backend = db.url.split_once('@').unwrap().1.split_once('/').unwrap().0.to_owned();
    let backend = tokio::net::lookup_host(backend).await.unwrap().next().unwrap();
    let path_to_db = TcpProxy::start(vec![backend]).await;
    // Both nodes serve one operator certificate, as a cluster behind one name does.
    let (operator, _files, cert_file, key_file) = operator_certificate();
    let (direct, proxied) = (db.url.clone(), via(&db.url, path_to_db.addr));
    let ports = free_port_range(4);
    let mut a = TestEdge::start_with(|c| {
        c.database_url = Some(warren_edge::config::DatabaseUrl(proxied));
        c.cluster_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        c.tcp_ports = ports;
        c.tls_files = Some((cert_file, key_file));
    })
    .await;
    let mut b = TestEdge::start_joining_with(&a, |c| {
        c.database_url = Some(warren_edge::config::DatabaseUrl(direct));
        c.tcp_bind_ip = Ipv4Addr::new(127, 0, 0, 2).into();
    })
    .await;
    let lb = TcpProxy::start(vec![a.config.connect_addr, b.config.connect_addr]).await;

    let up = HttpUpstream::start().await;
    let mut cfg =
        a.agent_with(EndpointConfig::http(&up.url(), Some("https://fenced.warren.localhost")).unwrap());
    cfg.connect_url = format!("localhost:{}", lb.addr.port());
    cfg.connect_cas = warren_agent::ConnectCas::PemBytes(operator.pem.clone().into_bytes());
    let mut agent = Agent::start(cfg);
    within("online through the load balancer", agent.wait_online()).await.unwrap();
    assert_eq!(a.edge().session_count(), 1, "the load balancer's first choice is node a");
    eventually("served through node b", || async {
        let r = https_get_via(b.https_addr(), "fenced.warren.localhost", operator.pem.as_bytes(), "/").await;
        r.filter(|(s, _)| *s == StatusCode::OK)
    })
    .await;
    assert_eq!(healthz(&a).await, StatusCode::OK);

    let cut = std::time::Instant::now();
    path_to_db.cut();
    // The load balancer's health check takes node a out once it says it cannot serve.
    eventually("node a's /healthz fails once it fences itself", || async {
        (healthz(&a).await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let fenced = cut.elapsed();
    assert_eq!(a.edge().session_count(), 0, "a fenced node holds no sessions");
    lb.set_backends(vec![b.config.connect_addr]);
    eventually("served again, by the agent's new session on node b", || async {
        if b.edge().session_count() != 1 {
            return None;
        }
        let r = https_get_via(b.https_addr(), "fenced.warren.localhost", operator.pem.as_bytes(), "/").await;
        r.filter(|(s, _)| *s == StatusCode::OK)
    })
    .await;
    let back = cut.elapsed();
    eprintln!(
        "partition: node a fenced after {fenced:?}; the endpoint was served from node b after {back:?}"
    );
    // Node a's lease lapses 15 s after its last renewal: it fenced itself well before.
    assert!(fenced < std::time::Duration::from_secs(13), "fenced after {fenced:?}");

    agent.stop().await.unwrap();
    b.stop().await;
    path_to_db.heal();
    a.stop().await;
    db.drop_db().await;
}

/// A node whose master key is not the cluster's cannot open the cluster CA's key: it refuses
/// to start, saying why, instead of joining with links no other node would accept.
#[tokio::test]
async fn a_node_with_another_master_key_is_refused_at_start() {
    let Some(db) = TestPostgres::create().await else { return };
    let (mut a, mut b) = two_nodes(&db).await;
    b.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = a.config.clone();
    config.data_dir = dir.path().join("data");
    // A new data directory: its own master key is made at first use.
    config.master_key_file = None;
    for addr in [&mut config.connect_addr, &mut config.https_addr] {
        *addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    }
    config.http_addr = None;
    config.api_addr = None;
    config.cluster_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let prepared = warren_edge::bootstrap::prepare(&config).await.unwrap();
    let err = warren_edge::Edge::start(config, prepared.store, prepared.tls).await.err().expect("refused");
    assert!(err.to_string().contains("the same master key"), "{err}");
    a.stop().await;
    db.drop_db().await;
}

/// Two nodes with ACME on one database: the node the reservation woke orders the
/// certificate (holding the name's order lease), pebble's validation reaches the other node
/// (it listens where pebble looks), which answers from the store, and that node serves the
/// issued certificate within seconds (announced, not polled every 30 s).
async fn a_certificate_ordered_by_one_node_is_validated_through_and_served_by_the_other(
    challenge: warren_edge::config::AcmeChallenge,
    domain: &str,
) {
    let Some(db) = TestPostgres::create().await else { return };
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https).await;
    let acme = |check_interval| warren_edge::config::AcmeConfig {
        directory: pebble.directory.clone(),
        directory_ca: Some(pebble.server_ca.clone()),
        email: Some("ops@example.com".into()),
        challenge,
        renew_before: std::time::Duration::from_secs(30 * 86_400),
        check_interval,
        orders_per_account_per_hour: 100,
        dns01: None,
    };
    let url = db.url.clone();
    let a_acme = acme(std::time::Duration::from_secs(1));
    let mut a = TestEdge::start_with(|c| {
        c.database_url = Some(warren_edge::config::DatabaseUrl(url));
        c.cluster_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        c.acme = Some(a_acme);
    })
    .await;
    // Node b only checks at start: the reservation below wakes node a alone, so node a orders.
    let b_acme = acme(std::time::Duration::from_secs(3600));
    let mut b = TestEdge::start_joining_with(&a, |c| {
        c.http_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, http)));
        c.https_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, https));
        c.acme = Some(b_acme);
        c.tcp_bind_ip = Ipv4Addr::new(127, 0, 0, 2).into();
    })
    .await;
    let key = Some(a.api_key.as_str());
    let (s, _, rd) =
        a.api("POST", "/reserved_domains", key, Some(serde_json::json!({"domain": domain}))).await;
    assert_eq!(s, StatusCode::CREATED, "{rd}");
    a.verify_custom_domain(&rd).await;

    let root = pebble.issuing_root().await;
    let stored = eventually("node a stores the certificate", || async {
        a.edge().store().get_certificate(domain).await.unwrap()
    })
    .await;
    assert_eq!(stored.source, "acme");
    eventually("node b serves it", || async {
        let tcp = TcpStream::connect(b.https_addr()).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned()).unwrap();
        tokio_rustls::TlsConnector::from(client_tls(root.as_bytes(), &[b"http/1.1"]))
            .connect(name, tcp)
            .await
            .ok()
    })
    .await;
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn an_http_01_challenge_of_one_node_is_answered_by_another() {
    a_certificate_ordered_by_one_node_is_validated_through_and_served_by_the_other(
        warren_edge::config::AcmeChallenge::Http01,
        "shop.example.com",
    )
    .await;
}

#[tokio::test]
async fn a_tls_alpn_01_challenge_of_one_node_is_answered_by_another() {
    a_certificate_ordered_by_one_node_is_validated_through_and_served_by_the_other(
        warren_edge::config::AcmeChallenge::TlsAlpn01,
        "pay.example.com",
    )
    .await;
}

/// Three nodes, an agent on each with an endpoint of every scheme: a visitor on every node
/// reaches every agent, over https, http, tcp and tls.
#[tokio::test]
async fn three_nodes_every_visitor_reaches_every_agent_over_every_scheme() {
    let Some(db) = TestPostgres::create().await else { return };
    let (mut a, mut b) = two_nodes(&db).await;
    let mut c =
        TestEdge::start_joining_with(&a, |c| c.tcp_bind_ip = Ipv4Addr::new(127, 0, 0, 4).into()).await;
    let ips = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)];
    let up = HttpUpstream::start().await;
    let (echo, _) = tcp_echo().await;
    let passthrough_ca = TestCa::new("passthrough upstream CA");
    let mut agents = Vec::new();
    let mut tcp_ports = Vec::new();
    for (i, node) in [&a, &b, &c].into_iter().enumerate() {
        let tls_up = tls_echo(&passthrough_ca, &format!("pass{i}.warren.localhost")).await;
        let mut cfg = node.agent_config();
        cfg.endpoints = vec![
            EndpointConfig::http(&up.url(), Some(&format!("https://app{i}.warren.localhost"))).unwrap(),
            EndpointConfig::http(&up.url(), Some(&format!("http://plain{i}.warren.localhost"))).unwrap(),
            EndpointConfig::tcp(&echo.to_string(), None).unwrap(),
            EndpointConfig::tls(&tls_up.to_string(), Some(&format!("tls://pass{i}.warren.localhost")), None)
                .unwrap(),
        ];
        let mut agent = Agent::start(cfg);
        let urls = within("agent online", agent.wait_online()).await.unwrap();
        tcp_ports.push(url_port(urls.iter().find(|u| u.starts_with("tcp://")).unwrap()));
        agents.push(agent);
    }
    let nodes = [&a, &b, &c];
    for (v, visited) in nodes.iter().enumerate() {
        for (i, holder) in nodes.iter().enumerate() {
            let what = format!("node {v} serves node {i}'s endpoints");
            let https_host = format!("app{i}.warren.localhost");
            let (status, body) = eventually(&format!("{what} over https"), || async {
                https_get_via(visited.https_addr(), &https_host, &holder.ca_pem, "/").await
            })
            .await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from upstream"), "{what}");
            // The agent's four binds may reach a node's view in more than one reload.
            let plain_host = format!("plain{i}.warren.localhost");
            let body = eventually(&format!("{what} over http"), || async {
                let (status, _, body) = plain_get_via(visited.http_addr(), &plain_host, "/").await;
                (status == StatusCode::OK).then_some(body)
            })
            .await;
            assert_eq!(body, "hello from upstream", "{what} over http");
            let to = SocketAddr::from((ips[v], tcp_ports[i]));
            let mut tcp = eventually(&format!("{what} over tcp"), || async {
                let s = TcpSocket::new_v4().unwrap();
                s.bind(SocketAddr::from((VISITOR, 0))).unwrap();
                s.connect(to).await.ok()
            })
            .await;
            assert_eq!(echo_roundtrip(&mut tcp, what.as_bytes()).await, what.as_bytes(), "{what} over tcp");
            let pass_host = format!("pass{i}.warren.localhost");
            let mut pass = eventually(&format!("{what} over tls"), || async {
                let tcp = connect_from(VISITOR, visited.https_addr()).await;
                let name = rustls::pki_types::ServerName::try_from(pass_host.clone()).unwrap();
                tokio_rustls::TlsConnector::from(client_tls(passthrough_ca.pem.as_bytes(), &[]))
                    .connect(name, tcp)
                    .await
                    .ok()
            })
            .await;
            pass.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            pass.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping", "{what} over tls");
        }
    }
    for agent in agents {
        agent.stop().await.unwrap();
    }
    for n in [&mut a, &mut b, &mut c] {
        n.stop().await;
    }
    db.drop_db().await;
}

/// A pool whose members are on two nodes: each of those nodes serves its own member, and a
/// third node, holding none, relays its visitors to the members in turn.
#[tokio::test]
async fn a_pool_spans_nodes_and_a_node_without_a_member_relays_to_each() {
    let Some(db) = TestPostgres::create().await else { return };
    let (mut a, mut b) = two_nodes(&db).await;
    let mut c =
        TestEdge::start_joining_with(&a, |c| c.tcp_bind_ip = Ipv4Addr::new(127, 0, 0, 4).into()).await;
    let url = "http://pooled.warren.localhost";
    let mut agents = Vec::new();
    for (node, body) in [(&a, "on a"), (&b, "on b")] {
        let up = named_upstream(body).await;
        let mut ep = EndpointConfig::http(&up.to_string(), Some(url)).unwrap();
        ep.pooling = true;
        let mut agent = Agent::start(node.agent_with(ep));
        within("member online", agent.wait_online()).await.unwrap();
        agents.push(agent);
    }
    let (_, _, own) = plain_get_via(a.http_addr(), "pooled.warren.localhost", "/").await;
    assert_eq!(own, "on a /", "node a serves its own member");
    let seen = eventually("node c relays to both members", || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let (s, _, body) = plain_get_via(c.http_addr(), "pooled.warren.localhost", "/").await;
            if s == StatusCode::OK {
                seen.insert(body);
            }
        }
        (seen.len() == 2).then_some(seen)
    })
    .await;
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["on a /", "on b /"]);
    for agent in agents {
        agent.stop().await.unwrap();
    }
    for n in [&mut a, &mut b, &mut c] {
        n.stop().await;
    }
    db.drop_db().await;
}

/// Three nodes restarted one after another under steady requests, the way an operator rolls
/// an upgrade (take the node out of the balancer, restart it, put it back), with an agent
/// using `ha` (two sessions, on two nodes, both serving the endpoint as a pool): no request
/// fails.
#[tokio::test]
async fn a_rolling_restart_of_every_node_fails_no_request_of_an_ha_agent() {
    let Some(db) = TestPostgres::create().await else { return };
    let (operator, _files, cert_file, key_file) = operator_certificate();
    let url = db.url.clone();
    let mut a = TestEdge::start_with(|c| {
        c.database_url = Some(warren_edge::config::DatabaseUrl(url));
        c.cluster_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        c.tls_files = Some((cert_file, key_file));
    })
    .await;
    let mut b = TestEdge::start_joining(&a).await;
    let mut c = TestEdge::start_joining(&a).await;
    let connects: Vec<SocketAddr> = [&a, &b, &c].iter().map(|n| n.config.connect_addr).collect();
    let https: Vec<SocketAddr> = [&a, &b, &c].iter().map(|n| n.https_addr()).collect();
    let agent_lb = TcpProxy::round_robin(connects.clone()).await;
    let visitor_lb = TcpProxy::round_robin(https.clone()).await;

    let up = HttpUpstream::start().await;
    let mut cfg = a.agent_with(EndpointConfig::http(&up.url(), Some("https://ha.warren.localhost")).unwrap());
    cfg.connect_url = format!("localhost:{}", agent_lb.addr.port());
    cfg.connect_cas = warren_agent::ConnectCas::PemBytes(operator.pem.clone().into_bytes());
    cfg.ha = true;
    let mut agent = Agent::start(cfg);
    within("online", agent.wait_online()).await.unwrap();
    within("the second session online", agent.companion().unwrap().wait_online()).await.unwrap();
    let sessions = |nodes: [&TestEdge; 3]| nodes.iter().map(|n| n.edge().session_count()).collect::<Vec<_>>();
    assert_eq!(
        sessions([&a, &b, &c]).iter().filter(|n| **n == 1).count(),
        2,
        "two nodes hold a session each"
    );

    let get = {
        let (lb, ca) = (visitor_lb.addr, operator.pem.clone());
        move || {
            let ca = ca.clone();
            async move {
                let Ok(tcp) = TcpStream::connect(lb).await else {
                    eprintln!("failed: connect");
                    return false;
                };
                let name = rustls::pki_types::ServerName::try_from("ha.warren.localhost").unwrap();
                let tls = match tokio_rustls::TlsConnector::from(client_tls(ca.as_bytes(), &[b"http/1.1"]))
                    .connect(name, tcp)
                    .await
                {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("failed: tls: {e}");
                        return false;
                    }
                };
                let mut send = http1(tls).await;
                let req = Request::get("/").header("host", "ha.warren.localhost").body(empty()).unwrap();
                match send.send_request(req).await {
                    Ok(res) => {
                        let status = res.status();
                        let body = res.into_body().collect().await.map(|b| b.to_bytes());
                        if status != StatusCode::OK {
                            eprintln!("failed: {status} {body:?}");
                        }
                        status == StatusCode::OK && body.is_ok()
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        false
                    }
                }
            }
        }
    };
    eventually("served through every node", || async {
        let mut all = true;
        for _ in 0..6 {
            all &= get().await;
        }
        all.then_some(())
    })
    .await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) =
        (Arc::new(std::sync::atomic::AtomicUsize::new(0)), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed, get) = (stop.clone(), ok.clone(), failed.clone(), get.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let counter = if get().await { &ok } else { &failed };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let started = std::time::Instant::now();
    for i in 0..3 {
        let others =
            |v: &[SocketAddr]| v.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a).collect();
        agent_lb.set_backends(others(&connects));
        visitor_lb.set_backends(others(&https));
        // The balancer's deregistration delay: connections it already made reach the node.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let node = [&mut a, &mut b, &mut c].into_iter().nth(i).unwrap();
        node.restart().await;
        agent_lb.set_backends(connects.clone());
        visitor_lb.set_backends(https.clone());
        // The agent has its two sessions again, on two nodes, both serving, before the next
        // node goes.
        within("two sessions again, on two nodes", async {
            loop {
                let placed = sessions([&a, &b, &c]);
                let (_, _, list) = a.api("GET", "/endpoints", Some(&a.api_key), None).await;
                let members = list["endpoints"].as_array().map_or(0, Vec::len);
                if placed.iter().filter(|n| **n == 1).count() == 2 && members == 2 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) =
        (ok.load(std::sync::atomic::Ordering::Relaxed), failed.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!("rolling restart of 3 nodes in {:?}: {ok} requests served, {failed} failed", started.elapsed());
    // 0 in every run on a quiet machine; under a loaded CI run one TLS handshake of thousands
    // has been cut (cause not pinned down; docs/CLUSTER.md says so).
    assert!(failed <= 2, "{failed} failed, {ok} requests served");
    assert!(ok > 30, "{ok}");
    agent.stop().await.unwrap();
    for n in [&mut a, &mut b, &mut c] {
        n.stop().await;
    }
    db.drop_db().await;
}

/// With a shutdown delay, a node told to stop first fails `/healthz` while it still serves
/// visitors (a balancer takes it out meanwhile), then stops accepting.
#[tokio::test]
async fn a_shutdown_delay_fails_health_checks_while_the_node_still_serves() {
    let mut edge =
        TestEdge::start_with(|c| c.limits.shutdown_delay = std::time::Duration::from_millis(1500)).await;
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://leaving.warren.localhost")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();
    assert_eq!(healthz(&edge).await, StatusCode::OK);
    let stopping = edge.begin_stop();
    eventually("/healthz fails first", || async {
        (healthz(&edge).await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let (status, _, body) = https_get(&edge, "leaving.warren.localhost", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "hello from upstream"),
        "still served while leaving"
    );
    within("the edge stops", stopping).await.unwrap();
    assert!(TcpStream::connect(edge.https_addr()).await.is_err(), "no longer accepting");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_visitor_connection_lets_go_of_its_relay_stream() {
    let Some(db) = TestPostgres::create().await else { return };
    let idle = std::time::Duration::from_millis(300);
    let a = TestEdge::start_with(|c| {
        c.database_url = Some(warren_edge::config::DatabaseUrl(db.url.clone()));
        c.cluster_addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        c.tcp_ports = free_port_range(8);
        c.limits.proxy_stream_idle = idle;
    })
    .await;
    let b = TestEdge::start_joining_with(&a, |c| {
        c.tcp_bind_ip = Ipv4Addr::new(127, 0, 0, 2).into();
        c.limits.proxy_stream_idle = idle;
    })
    .await;
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        a.agent_with(EndpointConfig::http(&up.url(), Some("http://relayed-idle.warren.localhost")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();
    eventually("node b routes the name to node a", || async {
        let (s, _, _) = plain_get(b.http_addr(), "relayed-idle.warren.localhost", "/status/200").await;
        (s == StatusCode::OK).then_some(())
    })
    .await;
    // Those requests' connections are closed: node a holds no relayed connection now.
    eventually("node a's earlier relayed connections close", || async {
        (a.visitor_connections().await == 0.0).then_some(())
    })
    .await;
    // A visitor of node b, which relays to node a; it keeps its connection and goes quiet.
    let mut visitor = TcpStream::connect(b.http_addr()).await.unwrap();
    let get = b"GET /status/200 HTTP/1.1\r\nHost: relayed-idle.warren.localhost\r\n\r\n";
    let response = async |visitor: &mut TcpStream| {
        visitor.write_all(get).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = visitor.read(&mut buf).await.unwrap();
            assert!(n > 0, "node b closed the visitor's connection");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let first = within("the relayed response", response(&mut visitor)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Node a holds the relayed connection, then lets it go once node b lets go of its idle
    // relay stream; node b keeps the visitor's own connection.
    eventually("node a lets go of the relayed connection", || async {
        (a.visitor_connections().await == 0.0).then_some(())
    })
    .await;
    assert_eq!(b.visitor_connections().await, 1.0, "the visitor's connection stays open");
    // The same visitor connection still works, over a new relay stream.
    let second = within("the second relayed response", response(&mut visitor)).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    agent.stop().await.unwrap();
}
