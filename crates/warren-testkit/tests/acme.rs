//! Automatic certificates against a real ACME server (pebble): a reserved custom domain gets
//! a certificate through HTTP-01 or TLS-ALPN-01, a visitor's curl trusting pebble's root gets
//! the endpoint's content, renewal replaces the certificate, and the private key is never in
//! the database in plaintext.

use std::time::Duration;

use hyper::StatusCode;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use warren_agent::{Agent, EndpointConfig};
use warren_edge::config::{AcmeChallenge, AcmeConfig};
use warren_testkit::*;

async fn wait_for_certificate(
    edge: &TestEdge,
    domain: &str,
    not: Option<&str>,
) -> warren_store::StoredCertificate {
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if let Some(c) = edge.edge().store().get_certificate(domain).await.unwrap()
                && Some(c.created_at.as_str()) != not
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no certificate for {domain} from pebble"))
}

/// curl, trusting `root` only, for `https://{host}:{port}/` resolved to loopback.
async fn curl(host: &str, port: u16, root: &std::path::Path) -> (bool, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert", root.to_str().unwrap()]).args([
        "--resolve",
        &format!("{host}:{port}:127.0.0.1"),
        &format!("https://{host}:{port}/"),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("curl is installed");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

async fn issue_and_serve(challenge: AcmeChallenge, domain: &str, renew: bool) {
    // Pebble validates on fixed ports, so the edge listens where pebble will look.
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https).await;
    let (directory, directory_ca) = (pebble.directory.clone(), pebble.server_ca.clone());
    let edge = TestEdge::start_with(move |c| {
        c.connect_hostnames.push("connect.example.net".into());
        c.http_addr = Some(([127, 0, 0, 1], http).into());
        c.https_addr = ([127, 0, 0, 1], https).into();
        c.acme = Some(AcmeConfig {
            directory,
            directory_ca: Some(directory_ca),
            email: Some("ops@example.com".into()),
            challenge,
            // Renewal test: every certificate is always due, so it is renewed at each check.
            renew_before: if renew {
                Duration::from_secs(100 * 365 * 86_400)
            } else {
                Duration::from_secs(30 * 86_400)
            },
            check_interval: Duration::from_secs(1),
            orders_per_account_per_hour: 100,
            dns01: None,
        });
    })
    .await;
    let key = Some(edge.api_key.as_str());
    let (s, _, rd) = edge.api("POST", "/reserved_domains", key, Some(json!({"domain": domain}))).await;
    assert_eq!(s, StatusCode::CREATED, "{rd}");
    // Until the account proves it controls the domain, no certificate is ordered for it
    // (reserving woke the certificate manager, which checks every second here).
    assert_eq!(rd["verification"]["status"], "pending", "{rd}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(edge.edge().store().get_certificate(domain).await.unwrap().is_none(), "no order while pending");
    edge.verify_custom_domain(&rd).await;

    let first = wait_for_certificate(&edge, domain, None).await;
    assert_eq!(first.source, "acme");
    assert!(first.chain_pem.contains("BEGIN CERTIFICATE"));

    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some(&format!("https://{domain}"))).unwrap()),
    );
    within("custom domain online", agent.wait_online()).await.unwrap();
    let root = edge.temp_dir().join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root().await).unwrap();
    let (ok, out) = curl(domain, edge.https_addr().port(), &root).await;
    assert!(ok && out == "hello from upstream", "curl trusting pebble's root: {out}");

    // The key is sealed: no PEM private key in the database files.
    let data = edge.data_dir();
    for file in ["warren.db", "warren.db-wal"] {
        if let Ok(bytes) = std::fs::read(data.join(file)) {
            assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"), "{file} holds a plaintext key");
        }
    }

    // The connect hostname got its certificate too: agents dialing it verify it publicly.
    let connect = wait_for_certificate(&edge, "connect.example.net", None).await;
    assert_eq!(connect.source, "acme");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(std::fs::read(&root).unwrap().as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(edge.edge().connect_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("connect.example.net").unwrap();
    within(
        "connect hostname handshake",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .expect("the connect hostname's certificate chains to pebble's root");

    if renew {
        let renewed = wait_for_certificate(&edge, domain, Some(&first.created_at)).await;
        assert_ne!(renewed.chain_pem, first.chain_pem, "a new certificate");
        let (ok, out) = curl(domain, edge.https_addr().port(), &root).await;
        assert!(ok && out == "hello from upstream", "served after renewal: {out}");
    }
}

#[tokio::test]
async fn pebble_issues_a_certificate_through_http_01_and_curl_gets_the_content() {
    issue_and_serve(AcmeChallenge::Http01, "shop.example.com", false).await;
}

#[tokio::test]
async fn pebble_issues_through_tls_alpn_01_and_the_certificate_is_renewed() {
    issue_and_serve(AcmeChallenge::TlsAlpn01, "store.example.org", true).await;
}

/// The TXT strings of `name` at `server` (UDP).
async fn txt_at(server: std::net::SocketAddr, name: &str) -> Vec<String> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    let q = warren_proto::dns::query(7, name, warren_proto::dns::TYPE_TXT).unwrap();
    socket.send(&q).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = within("DNS answer", socket.recv(&mut buf)).await.unwrap();
    warren_proto::dns::parse_txt(&buf[..n], 7).unwrap()
}

#[tokio::test]
async fn a_wildcard_reservation_gets_its_certificate_through_dns_01_and_one_agent_serves_every_name() {
    // A real DNS server for the zone, taking the edge's RFC 2136 updates; pebble validates
    // DNS-01 against it.
    let named = TestNamed::start("example.com").await;
    let pebble = Pebble::start_resolving_with(free_port(), free_port(), Some(named.addr)).await;
    let (directory, directory_ca) = (pebble.directory.clone(), pebble.server_ca.clone());
    let dns01 = warren_edge::config::Dns01Config {
        server: named.addr,
        zone: None,
        key_name: named.key_name.clone(),
        algorithm: warren_edge::config::TsigAlgorithm::HmacSha256,
        secret: warren_edge::config::SecretBytes(named.secret.clone()),
    };
    let edge = TestEdge::start_with(move |c| {
        c.acme = Some(AcmeConfig {
            directory,
            directory_ca: Some(directory_ca),
            email: None,
            challenge: AcmeChallenge::Http01,
            renew_before: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(1),
            orders_per_account_per_hour: 100,
            dns01: Some(dns01),
        });
    })
    .await;
    let key = Some(edge.api_key.as_str());

    // A wildcard endpoint needs the wildcard reservation first.
    let up = HttpUpstream::start().await;
    let wildcard = || EndpointConfig::http(&up.url(), Some("https://*.example.com")).unwrap();
    let err = within("refused", Agent::start(edge.agent_with(wildcard())).wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("reserve *.example.com first"), "{err}");

    let (s, _, rd) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "*.example.com"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{rd}");
    edge.verify_custom_domain(&rd).await;
    let cert = wait_for_certificate(&edge, "*.example.com", None).await;
    assert_eq!(cert.source, "acme");
    // The challenge's record was taken out of the zone again.
    assert_eq!(txt_at(named.addr, "_acme-challenge.example.com").await, Vec::<String>::new());

    let mut agent = Agent::start(edge.agent_with(wildcard()));
    let urls = within("wildcard online", agent.wait_online()).await.unwrap();
    assert_eq!(urls, [format!("https://*.example.com:{}", edge.https_addr().port())]);
    let root = edge.temp_dir().join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root().await).unwrap();
    for host in ["a.example.com", "b.example.com"] {
        let (ok, out) = curl(host, edge.https_addr().port(), &root).await;
        assert!(ok && out == "hello from upstream", "{host}, trusting only pebble's root: {out}");
    }

    // The most specific endpoint wins: an exact name below the wildcard is its own.
    let exact_up = named_upstream("exact").await;
    let mut exact =
        Agent::start(edge.agent_with(
            EndpointConfig::http(&exact_up.to_string(), Some("https://shop.example.com")).unwrap(),
        ));
    within("exact online", exact.wait_online()).await.unwrap();
    let (ok, out) = curl("shop.example.com", edge.https_addr().port(), &root).await;
    assert!(ok && out == "exact /", "the exact endpoint, under the wildcard certificate: {out}");
    let (ok, out) = curl("a.example.com", edge.https_addr().port(), &root).await;
    assert!(ok && out == "hello from upstream", "{out}");
    exact.stop().await.unwrap();
    // Once the edge has let go of the exact endpoint's session, the wildcard serves the name.
    edge.wait_sessions(1).await;
    let (ok, out) = curl("shop.example.com", edge.https_addr().port(), &root).await;
    assert!(ok && out == "hello from upstream", "back to the wildcard once the exact one left: {out}");

    // No other account binds a name under it, exact or wildcard.
    let other = edge.tenant("other").await;
    for url in ["https://c.example.com", "https://*.c.example.com"] {
        let mut cfg = other.agent_config(&edge);
        cfg.endpoints = vec![EndpointConfig::http(&up.url(), Some(url)).unwrap()];
        let err = within("refused", Agent::start(cfg).wait_online()).await.unwrap_err();
        assert!(err.to_string().contains("ERR_"), "{url}: {err}");
    }
    agent.stop().await.unwrap();
}
