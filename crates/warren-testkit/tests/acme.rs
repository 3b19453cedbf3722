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
