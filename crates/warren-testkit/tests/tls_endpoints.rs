//! The shared TLS port routes by SNI before terminating anything: `tls://` endpoints are
//! passed through untouched (the visitor sees the agent's or upstream's certificate, never
//! the edge's), agents reach their session through a connect hostname, and every other name
//! is https terminated at the edge.

use std::sync::Arc;

use hyper::StatusCode;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

use rustls::pki_types::pem::PemObject;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A visitor's TLS connection to the edge's shared port for `name`, trusting `roots` only,
/// optionally presenting a client certificate.
async fn visit(
    edge: &TestEdge,
    name: &str,
    roots: rustls::RootCertStore,
    client: Option<(String, String)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let tcp = TcpStream::connect(edge.https_addr()).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> Vec<u8> {
    s.write_all(data).await.unwrap();
    s.flush().await.unwrap();
    let mut back = vec![0u8; data.len()];
    within("echo", s.read_exact(&mut back)).await.unwrap();
    back
}

#[tokio::test]
async fn a_tls_endpoint_passes_the_session_through_to_the_upstream_unopened() {
    let edge = TestEdge::start().await;
    let ca = TestCa::new("upstream CA");
    let (chain, key, leaf) = ca.leaf("pass.warren.localhost");
    let upstream = tls_echo_upstream(&chain, &key).await;
    let ep = EndpointConfig::tls(&upstream.to_string(), Some("tls://pass.warren.localhost"), None).unwrap();
    let mut agent = Agent::start(edge.agent_with(ep));
    let urls = within("online", agent.wait_online()).await.unwrap();
    assert_eq!(urls[0], format!("tls://pass.warren.localhost:{}", edge.https_addr().port()));

    let mut tls =
        visit(&edge, "pass.warren.localhost", ca.roots(), None).await.expect("handshake with the upstream");
    let seen = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(seen, leaf, "the visitor sees the upstream's certificate, not the edge's");
    assert_eq!(echo(&mut tls, b"end to end").await, b"end to end");

    // Trusting only the edge's CA fails: the edge never answers for this name itself.
    let edge_roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&edge.ca_pem) {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    assert!(visit(&edge, "pass.warren.localhost", edge_roots, None).await.is_err());

    // https endpoints on the same port are still terminated by the edge.
    let up = HttpUpstream::start().await;
    let mut web = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://web.warren.localhost")).unwrap()),
    );
    within("web online", web.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&edge, "web.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello from upstream"));
}

#[tokio::test]
async fn the_agent_terminates_tls_with_its_own_certificate_and_can_require_client_certificates() {
    let edge = TestEdge::start().await;
    let server_ca = TestCa::new("agent CA");
    let (chain, key, leaf) = server_ca.leaf("term.warren.localhost");
    let client_ca = TestCa::new("client CA");
    let (client_chain, client_key, _) = client_ca.leaf("visitor");
    let other_ca = TestCa::new("other CA");
    let (other_chain, other_key, _) = other_ca.leaf("stranger");
    let termination =
        warren_agent::agent_termination(chain.as_bytes(), key.as_bytes(), Some(client_ca.pem.as_bytes()))
            .unwrap();
    let (plain, _task) = tcp_echo().await;
    let ep = EndpointConfig::tls(&plain.to_string(), Some("tls://term.warren.localhost"), Some(termination))
        .unwrap();
    let mut agent = Agent::start(edge.agent_with(ep));
    within("online", agent.wait_online()).await.unwrap();

    let mut tls = visit(&edge, "term.warren.localhost", server_ca.roots(), Some((client_chain, client_key)))
        .await
        .expect("handshake with the agent");
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf);
    assert_eq!(echo(&mut tls, b"decrypted at the agent").await, b"decrypted at the agent");

    // No client certificate, or one from another CA: the agent refuses (TLS 1.3 reports it
    // on the first read).
    for client in [None, Some((other_chain, other_key))] {
        let refused = match visit(&edge, "term.warren.localhost", server_ca.roots(), client).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(b"x").await;
                let mut buf = [0u8; 1];
                !matches!(within("refused", s.read(&mut buf)).await, Ok(1))
            }
        };
        assert!(refused, "a visitor without a good client certificate gets nothing");
    }
}

#[tokio::test]
async fn an_agent_connects_through_the_shared_tls_port_by_its_connect_hostname() {
    let edge = TestEdge::start_with(|c| c.connect_hostnames.push("localhost".into())).await;
    let up = HttpUpstream::start().await;
    let mut cfg =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://shared.warren.localhost")).unwrap());
    cfg.connect_url = format!("localhost:{}", edge.https_addr().port());
    let mut agent = Agent::start(cfg);
    within("online through the https port", agent.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&edge, "shared.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello from upstream"));
    // A name that is neither a connect hostname nor an endpoint is an https visitor.
    let (s, _, _) = https_get(&edge, "nobody.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn garbage_on_the_shared_tls_port_is_closed_without_harming_others() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let mut web = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://calm.warren.localhost")).unwrap()),
    );
    within("online", web.wait_online()).await.unwrap();
    let mut junk = TcpStream::connect(edge.https_addr()).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: calm.warren.localhost\r\n\r\n").await.unwrap();
    // At most a TLS alert record (content type 21) comes back, then the connection ends.
    let mut got = Vec::new();
    within("closed", junk.read_to_end(&mut got)).await.ok();
    assert!(got.is_empty() || (got[0] == 21 && got.len() <= 7), "{got:?}");
    let (s, _, _) = https_get(&edge, "calm.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn the_edges_own_certificate_comes_from_files_and_is_reloaded_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    let first = TestCa::new("operator CA one");
    let (chain, k, leaf1) = first.leaf_for(&["*.warren.localhost", "localhost"]);
    std::fs::write(&cert, &chain).unwrap();
    std::fs::write(&key, &k).unwrap();
    let files = (cert.clone(), key.clone());
    let edge = TestEdge::start_with(move |c| c.tls_files = Some(files)).await;
    // Agents and visitors alike now get the operator's certificate.
    let up = HttpUpstream::start().await;
    let mut cfg =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://app.warren.localhost")).unwrap());
    cfg.connect_cas = warren_agent::ConnectCas::PemBytes(first.pem.clone().into_bytes());
    let mut agent = Agent::start(cfg);
    within("online", agent.wait_online()).await.unwrap();

    let mut open =
        visit(&edge, "app.warren.localhost", first.roots(), None).await.expect("operator certificate");
    assert_eq!(open.get_ref().1.peer_certificates().unwrap()[0], leaf1);

    // New files: new handshakes get the new certificate; the open connection carries on.
    let second = TestCa::new("operator CA two");
    let (chain, k, leaf2) = second.leaf_for(&["*.warren.localhost", "localhost"]);
    std::fs::write(&key, &k).unwrap();
    std::fs::write(&cert, &chain).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            if let Ok(s) = visit(&edge, "app.warren.localhost", second.roots(), None).await
                && s.get_ref().1.peer_certificates().unwrap()[0] == leaf2
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("reloaded");
    open.write_all(b"GET / HTTP/1.1\r\nHost: app.warren.localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within("old connection still served", open.read_to_string(&mut response)).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hello from upstream"), "{response}");
}

#[tokio::test]
async fn an_uploaded_certificate_is_served_for_its_reserved_domain_and_its_key_never_returned() {
    let mut edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let ca = TestCa::new("operator CA");
    let (chain, pem_key, leaf) = ca.leaf("shop.example.com");
    let (_, other_key, _) = ca.leaf("other.example.com");

    let bad = serde_json::json!({"certificate_pem": chain, "private_key_pem": other_key});
    let (s, _, e) = edge.api("POST", "/tls_certificates", key, Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a key of another certificate: {e}");
    let body =
        serde_json::json!({"certificate_pem": chain, "private_key_pem": pem_key, "description": "shop"});
    let (s, _, cert) = edge.api("POST", "/tls_certificates", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{cert}");
    let id = cert["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("cert_"), "{cert}");
    assert_eq!(cert["subject_common_name"], "shop.example.com");
    assert_eq!(cert["subject_alternative_names"]["dns_names"], serde_json::json!(["shop.example.com"]));
    assert!(!cert.to_string().contains("PRIVATE KEY"), "the key is never returned: {cert}");

    let (s, _, e) = edge
        .api(
            "POST",
            "/reserved_domains",
            key,
            Some(serde_json::json!({"domain": "nope.example.com", "certificate_id": id})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a certificate that does not cover the name: {e}");
    let (s, _, rd) = edge
        .api(
            "POST",
            "/reserved_domains",
            key,
            Some(serde_json::json!({"domain": "shop.example.com", "certificate_id": id})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rd}");
    assert_eq!(rd["certificate"]["id"], id.as_str());
    edge.verify_custom_domain(&rd).await;

    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://shop.example.com")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();
    let tls = visit(&edge, "shop.example.com", ca.roots(), None).await.expect("the uploaded certificate");
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf);
    // After a restart it is served again (loaded from the store, key unsealed).
    drop(tls);
    agent.stop().await.ok();
    edge.restart().await;
    let key = Some(edge.api_key.as_str());
    let tls = visit(&edge, "shop.example.com", ca.roots(), None).await.expect("served after a restart");
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf);

    let (s, _, e) = edge.api("DELETE", &format!("/tls_certificates/{id}"), key, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "attached: {e}");
    let rd_id = rd["id"].as_str().unwrap();
    let (s, _, _) = edge.api("DELETE", &format!("/reserved_domains/{rd_id}/certificate"), key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        visit(&edge, "shop.example.com", ca.roots(), None).await.is_err(),
        "detached: the default is served"
    );
    let (s, _, _) = edge.api("DELETE", &format!("/tls_certificates/{id}"), key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    for file in ["warren.db", "warren.db-wal"] {
        if let Ok(bytes) = std::fs::read(edge.data_dir().join(file)) {
            assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"), "{file} holds a plaintext key");
        }
    }
}

/// `Strict-Transport-Security` by default on names with a certificate of their own (here an
/// uploaded one, as ACME's are), not on names served with the edge's default certificate
/// (a local CA's on a laptop); `Always` and `Off` do as named.
#[tokio::test]
async fn hsts_is_sent_for_names_with_their_own_certificate() {
    for (hsts, default_name_gets_it) in [
        (warren_edge::Hsts::Auto { max_age: 600 }, false),
        (warren_edge::Hsts::Always { max_age: 600 }, true),
    ] {
        let edge = TestEdge::start_with(|c| c.hsts = hsts).await;
        let key = Some(edge.api_key.as_str());
        let ca = TestCa::new("operator CA");
        let (chain, pem_key, _) = ca.leaf("hsts.example.com");
        let body = serde_json::json!({"certificate_pem": chain, "private_key_pem": pem_key});
        let (_, _, cert) = edge.api("POST", "/tls_certificates", key, Some(body)).await;
        let body = serde_json::json!({"domain": "hsts.example.com", "certificate_id": cert["id"]});
        let (s, _, rd) = edge.api("POST", "/reserved_domains", key, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{rd}");
        edge.verify_custom_domain(&rd).await;
        let up = HttpUpstream::start().await;
        let mut a = Agent::start(
            edge.agent_with(EndpointConfig::http(&up.url(), Some("https://hsts.example.com")).unwrap()),
        );
        within("custom domain online", a.wait_online()).await.unwrap();
        let mut b = Agent::start(
            edge.agent_with(EndpointConfig::http(&up.url(), Some("https://plain.warren.localhost")).unwrap()),
        );
        within("default-certificate name online", b.wait_online()).await.unwrap();

        let tls = visit(&edge, "hsts.example.com", ca.roots(), None).await.expect("uploaded certificate");
        let mut send = http1(tls).await;
        let req = hyper::Request::get("/").header("host", "hsts.example.com").body(empty()).unwrap();
        let res = within("custom domain answer", send.send_request(req)).await.unwrap();
        assert_eq!(res.headers()["strict-transport-security"], "max-age=600", "{hsts:?}");
        let (_, headers, _) = https_get(&edge, "plain.warren.localhost", "/").await;
        assert_eq!(headers.contains_key("strict-transport-security"), default_name_gets_it, "{hsts:?}");
    }
    let edge = TestEdge::start_with(|c| c.hsts = warren_edge::Hsts::Off).await;
    let up = HttpUpstream::start().await;
    let mut a = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://off.warren.localhost")).unwrap()),
    );
    within("online", a.wait_online()).await.unwrap();
    let (_, headers, _) = https_get(&edge, "off.warren.localhost", "/").await;
    assert!(!headers.contains_key("strict-transport-security"));
}
