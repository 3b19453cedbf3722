//! Compatibility with a real ngrok client: the `ngrok` crate (0.19, ngrok's Rust SDK) pointed
//! at an in-process edge with `server_addr` and `ca_cert`.

use bytes::Bytes;
use futures_util::TryStreamExt;
use hyper::StatusCode;
use ngrok::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_testkit::*;

async fn sdk_session(edge: &TestEdge, token: &str) -> Result<ngrok::Session, ngrok::session::ConnectError> {
    ngrok::Session::builder()
        .authtoken(token)
        .server_addr(edge.connect_url())
        .expect("server address")
        .ca_cert(Bytes::from(edge.ca_pem.clone()))
        .connect()
        .await
}

#[tokio::test]
async fn the_ngrok_sdk_binds_an_https_endpoint_and_serves_visitors() {
    let edge = TestEdge::start().await;
    let sess = within("sdk connect", sdk_session(&edge, &edge.authtoken)).await.expect("SDK session");
    let mut tunnel = within("sdk listen", sess.http_endpoint().domain("sdk.warren.localhost").listen())
        .await
        .expect("https endpoint");
    assert_eq!(tunnel.url(), format!("https://sdk.warren.localhost:{}", edge.https_addr().port()));
    assert_eq!(edge.edge().session_count(), 1);

    // Serve visitors with hyper straight off the SDK's connections.
    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            let remote = conn.remote_addr();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let text = format!(
                        "sdk saw {} {} from {remote} proto={}",
                        req.method(),
                        req.uri(),
                        req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("")
                    );
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(full(text))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });

    for path in ["/one", "/two"] {
        let (status, _, body) =
            within("visitor via SDK", https_get(&edge, "sdk.warren.localhost", path)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with(&format!("sdk saw GET {path} from 127.0.0.1:")), "{body}");
        assert!(body.ends_with("proto=https"), "{body}");
    }
}

#[tokio::test]
async fn the_ngrok_sdk_binds_a_tcp_endpoint_and_carries_bytes() {
    let edge = TestEdge::start().await;
    let sess = within("sdk connect", sdk_session(&edge, &edge.authtoken)).await.expect("SDK session");
    let mut tunnel = within("sdk tcp listen", sess.tcp_endpoint().listen()).await.expect("tcp endpoint");
    let url = tunnel.url().to_owned();
    assert!(url.starts_with("tcp://localhost:"), "{url}");

    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(conn);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });

    let mut tcp = TcpStream::connect(("127.0.0.1", url_port(&url))).await.unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let back = within("echo through SDK", echo_roundtrip(&mut tcp, &data)).await;
    assert!(back == data, "bytes came back intact ({} of {})", back.len(), data.len());

    // A second visitor after the first closed.
    let mut tcp = TcpStream::connect(("127.0.0.1", url_port(&url))).await.unwrap();
    tcp.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    within("second visitor", tcp.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"again");
}

#[tokio::test]
async fn a_wrong_authtoken_gives_the_sdk_an_ngrok_style_error() {
    let edge = TestEdge::start().await;
    let err = within("sdk refused", sdk_session(&edge, "cr_2abcdefghijklmnopqrstuvwxy_wrongwrongwrong"))
        .await
        .err()
        .expect("a wrong token is refused");
    assert_eq!(err.error_code(), Some("ERR_NGROK_107"), "{err:?}");
    assert!(err.msg().contains("authtoken"), "{}", err.msg());
    assert_eq!(edge.edge().session_count(), 0);
}

#[tokio::test]
async fn the_sdk_sees_a_taken_domain_as_err_ngrok_334() {
    let edge = TestEdge::start().await;
    let a = sdk_session(&edge, &edge.authtoken).await.unwrap();
    let _t = a.http_endpoint().domain("dup.warren.localhost").listen().await.unwrap();
    let b = sdk_session(&edge, &edge.authtoken).await.unwrap();
    let err = b.http_endpoint().domain("dup.warren.localhost").listen().await.err().expect("taken");
    assert_eq!(err.error_code(), Some("ERR_NGROK_334"), "{err:?}");
}

#[tokio::test]
async fn the_ngrok_sdk_connects_by_sni_on_the_shared_port_and_terminates_its_own_tls_endpoint() {
    let edge = TestEdge::start_with(|c| c.connect_hostnames.push("localhost".into())).await;
    let sess = within("sdk connect on the https port", async {
        ngrok::Session::builder()
            .authtoken(edge.authtoken.clone())
            .server_addr(format!("localhost:{}", edge.https_addr().port()))
            .expect("server address")
            .ca_cert(Bytes::from(edge.ca_pem.clone()))
            .connect()
            .await
    })
    .await
    .expect("SDK session through the shared port");
    let mut tunnel = within("sdk tls listen", sess.tls_endpoint().domain("sdktls.warren.localhost").listen())
        .await
        .expect("tls endpoint");
    assert_eq!(tunnel.url(), format!("tls://sdktls.warren.localhost:{}", edge.https_addr().port()));

    // The application behind the SDK holds the key: it terminates TLS itself.
    let ca = TestCa::new("app CA");
    let (chain, key, leaf) = ca.leaf("sdktls.warren.localhost");
    let cfg = warren_agent::agent_termination(chain.as_bytes(), key.as_bytes(), None).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(conn).await else { return };
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });

    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(ca.roots())
    .with_no_client_auth();
    let tcp = TcpStream::connect(edge.https_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("sdktls.warren.localhost").unwrap();
    let mut tls = within(
        "visitor handshake",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)).connect(name, tcp),
    )
    .await
    .expect("the visitor reaches the SDK's TLS");
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        leaf,
        "the app's certificate, not the edge's"
    );
    tls.write_all(b"through the SDK").await.unwrap();
    let mut back = [0u8; 15];
    within("echo", tls.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"through the SDK");
}

#[tokio::test]
async fn an_invalid_traffic_policy_refuses_the_sdks_endpoint_with_the_reason() {
    let edge = TestEdge::start().await;
    let s = sdk_session(&edge, &edge.authtoken).await.unwrap();
    let bad = r#"{"on_http_request":[{"name":"oops","expressions":["req.method > 5"],"actions":[{"type":"deny"}]}]}"#;
    let err = s.http_endpoint().traffic_policy(bad).listen().await.err().expect("refused");
    let text = format!("{err:?}");
    assert!(text.contains("oops") && text.contains("cannot be evaluated"), "{text}");
    // A valid one is enforced for the SDK's endpoint too.
    let good = r#"{"on_http_request":[{"actions":[{"type":"custom-response","config":{"status_code":418,"body":"policy says hi"}}]}]}"#;
    let _t =
        s.http_endpoint().domain("sdkpolicy.warren.localhost").traffic_policy(good).listen().await.unwrap();
    let (status, _, body) = https_get(&edge, "sdkpolicy.warren.localhost", "/").await;
    assert_eq!((status.as_u16(), body.as_str()), (418, "policy says hi"));
}
