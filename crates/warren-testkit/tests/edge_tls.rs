//! Per-endpoint TLS at the edge, set the ways ngrok users set it: a `terminate-tls` traffic
//! policy action (versions, mutual TLS strategy) and the SDKs' `mutual_tlsca`. Checked with
//! openssl s_client and a rustls client presenting certificates.

use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use ngrok::prelude::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use warren_testkit::*;

async fn sdk(edge: &TestEdge) -> ngrok::Session {
    within("sdk connect", async {
        ngrok::Session::builder()
            .authtoken(edge.authtoken.clone())
            .server_addr(edge.connect_url())
            .expect("server address")
            .ca_cert(Bytes::from(edge.ca_pem.clone()))
            .connect()
            .await
    })
    .await
    .expect("SDK session")
}

/// Serves every request on `tunnel` with a JSON object of the request's headers.
fn serve_headers(mut tunnel: ngrok::tunnel::HttpTunnel) {
    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut seen = serde_json::Map::new();
                    for (k, v) in req.headers() {
                        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        match seen.get_mut(k.as_str()) {
                            Some(Value::Array(a)) => a.push(v.into()),
                            _ => {
                                seen.insert(k.as_str().to_owned(), Value::Array(vec![v.into()]));
                            }
                        }
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(full(
                        Value::Object(seen).to_string(),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
}

fn policy(config: Value) -> String {
    serde_json::json!({"on_tcp_connect": [{"name": "tls", "actions": [{"type": "terminate-tls", "config": config}]}]})
        .to_string()
}

/// `openssl s_client` against the edge's https port for `name` with `flags`; true when the
/// handshake completed. Run off the test's thread: the edge serves on that thread.
async fn openssl_handshake(edge: &TestEdge, name: &str, flags: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &edge.https_addr().to_string(), "-servername", name])
        .args(flags)
        .stdin(std::process::Stdio::null());
    let out = within("openssl", tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .unwrap()
        .expect("openssl is installed (.ci/run installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // OpenSSL prints "New, TLSv1.3, Cipher is ..." after a handshake, "(NONE)" without one.
    (out.status.success() && text.contains("New, TLSv1") && !text.contains("Cipher is (NONE)"), text)
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2_and_old_versions_are_never_accepted() {
    let edge = TestEdge::start().await;
    let sess = sdk(&edge).await;
    let v13 = sess
        .http_endpoint()
        .domain("v13.warren.localhost")
        .traffic_policy(policy(serde_json::json!({"min_version": "1.3"})))
        .listen()
        .await
        .expect("endpoint with min_version 1.3");
    let v12 = sess.http_endpoint().domain("v12.warren.localhost").listen().await.expect("default endpoint");
    serve_headers(v13);
    serve_headers(v12);

    let (ok, out) = openssl_handshake(&edge, "v13.warren.localhost", &["-tls1_2"]).await;
    assert!(!ok, "TLS 1.2 refused by a min_version 1.3 endpoint:\n{out}");
    let (ok, out) = openssl_handshake(&edge, "v13.warren.localhost", &["-tls1_3"]).await;
    assert!(ok && out.contains("New, TLSv1.3"), "TLS 1.3 accepted:\n{out}");
    let (ok, out) = openssl_handshake(&edge, "v12.warren.localhost", &["-tls1_2"]).await;
    assert!(ok && out.contains("New, TLSv1.2"), "TLS 1.2 accepted by default:\n{out}");
    for old in ["-tls1", "-tls1_1"] {
        for name in ["v12.warren.localhost", "v13.warren.localhost"] {
            let (ok, out) = openssl_handshake(&edge, name, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]).await;
            assert!(!ok, "{old} is never accepted ({name}):\n{out}");
        }
    }
}

#[tokio::test]
async fn a_policy_that_cannot_work_refuses_the_bind_and_says_why() {
    let edge = TestEdge::start().await;
    let sess = sdk(&edge).await;
    for (config, why) in [
        (serde_json::json!({"min_version": "1.1"}), "min_version"),
        (serde_json::json!({"min_version": "1.3", "max_version": "1.2"}), "above max_version"),
        (serde_json::json!({"mutual_tls_certificate_authorities": ["not a PEM"]}), "bundle"),
        (serde_json::json!({"server_private_key": "..."}), "private keys"),
        (serde_json::json!({"colour": "blue"}), "unknown config key"),
    ] {
        let err = sess
            .http_endpoint()
            .domain("bad.warren.localhost")
            .traffic_policy(policy(config))
            .listen()
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
}

/// A visitor's GET /, over TLS for `name`, with an optional client certificate and extra
/// headers. `Err` when the handshake or the request fails.
async fn get(
    edge: &TestEdge,
    name: &str,
    client: Option<&(String, String, CertificateDer<'static>)>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), String> {
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates({
                let mut r = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&edge.ca_pem) {
                    r.add(c.unwrap()).unwrap();
                }
                r
            });
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key, _)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(edge.https_addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", name);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = send.send_request(req.body(empty()).unwrap()).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn mutual_tls_from_the_sdk_requires_a_client_certificate_from_its_cas() {
    let edge = TestEdge::start().await;
    let ca = TestCa::new("clients");
    let good = ca.leaf("visitor.example");
    let stranger = TestCa::new("elsewhere").leaf("stranger.example");
    let sess = sdk(&edge).await;
    let tunnel = sess
        .http_endpoint()
        .domain("mtls.warren.localhost")
        .mutual_tlsca(Bytes::from(ca.pem.clone()))
        .listen()
        .await
        .expect("mutual TLS endpoint");
    serve_headers(tunnel);

    assert!(get(&edge, "mtls.warren.localhost", None, &[]).await.is_err(), "no certificate: refused");
    assert!(get(&edge, "mtls.warren.localhost", Some(&stranger), &[]).await.is_err(), "another CA: refused");
    let spoof = [("warren-client-cert-subject", "CN=admin"), ("Warren-Client-Cert-Serial", "00")];
    let (s, seen) = get(&edge, "mtls.warren.localhost", Some(&good), &spoof).await.expect("good certificate");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(seen["warren-client-cert-subject"], serde_json::json!(["CN=visitor.example"]), "{seen}");
    assert_eq!(seen["warren-client-cert-issuer"], serde_json::json!(["CN=clients"]), "{seen}");
    assert!(seen["warren-client-cert-san"][0].as_str().unwrap().contains("visitor.example"), "{seen}");
    assert_ne!(
        seen["warren-client-cert-serial"],
        serde_json::json!(["00"]),
        "the visitor's copy never passes: {seen}"
    );
}

#[tokio::test]
async fn request_and_require_any_strategies_behave_as_named() {
    let edge = TestEdge::start().await;
    let ca = TestCa::new("clients");
    let good = ca.leaf("visitor.example");
    let stranger = TestCa::new("elsewhere").leaf("stranger.example");
    let sess = sdk(&edge).await;
    let request = sess
        .http_endpoint()
        .domain("request.warren.localhost")
        .traffic_policy(policy(serde_json::json!({
            "mutual_tls_certificate_authorities": [ca.pem],
            "mutual_tls_verification_strategy": "request",
        })))
        .listen()
        .await
        .expect("request strategy");
    let any = sess
        .http_endpoint()
        .domain("any.warren.localhost")
        .traffic_policy(policy(serde_json::json!({"mutual_tls_verification_strategy": "require-any"})))
        .listen()
        .await
        .expect("require-any strategy");
    serve_headers(request);
    serve_headers(any);

    // request: without a certificate the visitor is let in, and nothing is claimed for it.
    let (s, seen) =
        get(&edge, "request.warren.localhost", None, &[("warren-client-cert-subject", "CN=admin")])
            .await
            .expect("no certificate is fine");
    assert_eq!(s, StatusCode::OK);
    assert!(seen.get("warren-client-cert-subject").is_none(), "{seen}");
    let (_, seen) = get(&edge, "request.warren.localhost", Some(&good), &[]).await.expect("good certificate");
    assert_eq!(seen["warren-client-cert-subject"], serde_json::json!(["CN=visitor.example"]));
    assert!(
        get(&edge, "request.warren.localhost", Some(&stranger), &[]).await.is_err(),
        "a bad one is refused"
    );

    // require-any: some certificate must come; its issuer is not checked.
    assert!(get(&edge, "any.warren.localhost", None, &[]).await.is_err());
    let (_, seen) = get(&edge, "any.warren.localhost", Some(&stranger), &[]).await.expect("any certificate");
    assert_eq!(seen["warren-client-cert-subject"], serde_json::json!(["CN=stranger.example"]));
}
