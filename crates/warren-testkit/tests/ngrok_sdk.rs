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

/// Serves every request on `tunnel` with `seen <header names>` of the request it got, and a
/// `server: upstream` response header.
fn serve_echo(mut tunnel: ngrok::tunnel::HttpTunnel) {
    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let names: Vec<String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
                            .collect();
                        let mut res = hyper::Response::new(full(format!("seen {}", names.join(" "))));
                        res.headers_mut()
                            .insert("server", hyper::header::HeaderValue::from_static("upstream"));
                        res.headers_mut()
                            .insert("x-secret-internal", hyper::header::HeaderValue::from_static("1"));
                        Ok::<_, std::convert::Infallible>(res)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
}

/// A GET through the https endpoint `host` with extra request headers.
async fn get_with(
    edge: &TestEdge,
    host: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, String) {
    let (status, headers, bytes) = get_bytes(edge, host, headers).await;
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// Each endpoint option of ngrok's Rust SDK does what ngrok's cloud does with it: a visitor
/// without the right credentials or address is refused, one with them gets through, the
/// header options change the request and the response. Before, every one of them bound and
/// the visitor got the upstream's 200 without credentials.
#[tokio::test]
async fn the_sdks_endpoint_options_are_enforced_at_the_edge() {
    use base64::Engine as _;
    let edge = TestEdge::start().await;
    let sess = within("sdk connect", sdk_session(&edge, &edge.authtoken)).await.expect("SDK session");
    let auth = sess
        .http_endpoint()
        .domain("opt-auth.warren.localhost")
        .basic_auth("alice", "password123")
        .listen()
        .await
        .unwrap();
    let allow = sess
        .http_endpoint()
        .domain("opt-allow.warren.localhost")
        .allow_cidr("10.0.0.0/8")
        .listen()
        .await
        .unwrap();
    let deny = sess
        .http_endpoint()
        .domain("opt-deny.warren.localhost")
        .deny_cidr("127.0.0.0/8")
        .listen()
        .await
        .unwrap();
    let ok_net = sess
        .http_endpoint()
        .domain("opt-net.warren.localhost")
        .allow_cidr("127.0.0.0/8")
        .listen()
        .await
        .unwrap();
    let hdrs = sess
        .http_endpoint()
        .domain("opt-hdr.warren.localhost")
        .request_header("X-Added", "yes")
        .remove_request_header("x-drop")
        .response_header("x-from-edge", "1")
        .remove_response_header("x-secret-internal")
        .listen()
        .await
        .unwrap();
    let ua = sess
        .http_endpoint()
        .domain("opt-ua.warren.localhost")
        .deny_user_agent("(?i)badbot")
        .listen()
        .await
        .unwrap();
    let hook = sess
        .http_endpoint()
        .domain("opt-hook.warren.localhost")
        .webhook_verification("github", "s3cret")
        .listen()
        .await
        .unwrap();
    for t in [auth, allow, deny, ok_net, hdrs, ua, hook] {
        serve_echo(t);
    }

    let (s, h, _) = get_with(&edge, "opt-auth.warren.localhost", &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "basic auth without credentials");
    assert!(h.contains_key("www-authenticate"));
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:nope"));
    assert_eq!(
        get_with(&edge, "opt-auth.warren.localhost", &[("authorization", &wrong)]).await.0,
        StatusCode::UNAUTHORIZED
    );
    let right = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:password123"));
    assert_eq!(
        get_with(&edge, "opt-auth.warren.localhost", &[("authorization", &right)]).await.0,
        StatusCode::OK
    );

    assert_eq!(
        get_with(&edge, "opt-allow.warren.localhost", &[]).await.0,
        StatusCode::FORBIDDEN,
        "127.0.0.1 is not in 10/8"
    );
    assert_eq!(
        get_with(&edge, "opt-deny.warren.localhost", &[]).await.0,
        StatusCode::FORBIDDEN,
        "127/8 is denied"
    );
    assert_eq!(get_with(&edge, "opt-net.warren.localhost", &[]).await.0, StatusCode::OK, "127/8 is allowed");

    let (s, h, body) = get_with(&edge, "opt-hdr.warren.localhost", &[("x-drop", "gone")]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("x-added=yes") && !body.contains("x-drop"), "{body}");
    assert_eq!(h["x-from-edge"], "1");
    assert!(!h.contains_key("x-secret-internal"), "removed from the response");

    assert_eq!(
        get_with(&edge, "opt-ua.warren.localhost", &[("user-agent", "BadBot/2")]).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_with(&edge, "opt-ua.warren.localhost", &[("user-agent", "curl/8")]).await.0,
        StatusCode::OK
    );

    let (s, _, _) = get_with(&edge, "opt-hook.warren.localhost", &[]).await;
    assert!(s.is_client_error(), "an unsigned webhook is refused: {s}");
}

/// `compression()` compresses what the visitor accepts (and nothing for a visitor that accepts
/// nothing); `circuit_breaker(0.5)` answers 503 without reaching the upstream once half of
/// the last 10 requests failed.
#[tokio::test]
async fn the_sdks_compression_and_circuit_breaker_act_at_the_edge() {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let edge = TestEdge::start().await;
    let sess = within("sdk connect", sdk_session(&edge, &edge.authtoken)).await.expect("SDK session");
    let gz = sess.http_endpoint().domain("opt-gz.warren.localhost").compression().listen().await.unwrap();
    serve_echo(gz);
    let (s, h, plain) = get_with(&edge, "opt-gz.warren.localhost", &[("x-long", &"a".repeat(2000))]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!h.contains_key("content-encoding"), "no Accept-Encoding, no compression");
    let (s, h, bytes) = get_bytes(
        &edge,
        "opt-gz.warren.localhost",
        &[("x-long", &"a".repeat(2000)), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-encoding"], "gzip");
    assert!(bytes.len() < plain.len() / 4, "{} of {}", bytes.len(), plain.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
    assert!(text.starts_with("seen ") && text.contains(&"a".repeat(2000)), "{text}");
    assert_eq!(text.len(), plain.len() + "accept-encoding=gzip ".len());

    let failing =
        sess.http_endpoint().domain("opt-cb.warren.localhost").circuit_breaker(0.5).listen().await.unwrap();
    let reached = std::sync::Arc::new(AtomicUsize::new(0));
    serve_status(failing, 500, reached.clone());
    for i in 0..10 {
        let (s, _, _) = get_with(&edge, "opt-cb.warren.localhost", &[]).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "request {i} reaches the upstream");
    }
    let (s, h, body) = get_with(&edge, "opt-cb.warren.localhost", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("ERR_NGROK_3202") && h.contains_key("retry-after"), "{body}");
    assert_eq!(reached.load(Ordering::SeqCst), 10, "the open breaker kept the request from the upstream");
}

/// `oidc()` from ngrok's Rust SDK against a real OpenID Connect provider: a visitor is sent to
/// sign in, comes back signed in with the identity the upstream reads, and one whose email the
/// options do not allow is refused.
#[tokio::test]
async fn the_sdks_oidc_option_signs_visitors_in_at_the_edge() {
    let edge = TestEdge::start().await;
    let port = edge.https_addr().port();
    let app = format!("https://opt-oidc.warren.localhost:{port}");
    let narrow = format!("https://opt-oidc2.warren.localhost:{port}");
    let callbacks = [format!("{app}/warren/oidc/callback"), format!("{narrow}/warren/oidc/callback")];
    let op = warren_testkit::oidc::OidcProvider::start_with_redirects(&[&callbacks[0], &callbacks[1]]).await;
    let sess = within("sdk connect", sdk_session(&edge, &edge.authtoken)).await.expect("SDK session");
    let open = ngrok::config::OidcOptions::new(&op.issuer, "warren-web", "web-secret");
    let t = sess.http_endpoint().domain("opt-oidc.warren.localhost").oidc(open).listen().await.unwrap();
    serve_echo(t);
    let mut only_bob = ngrok::config::OidcOptions::new(&op.issuer, "warren-web", "web-secret");
    only_bob.allow_email("bob@example.test");
    let t = sess.http_endpoint().domain("opt-oidc2.warren.localhost").oidc(only_bob).listen().await.unwrap();
    serve_echo(t);

    let mut browser = warren_testkit::oidc::Browser::new(&edge, ".warren.localhost");
    let first = browser.get(&format!("{app}/"), &[]).await;
    assert_eq!(first.status, StatusCode::FOUND, "not signed in: {}", first.body);
    assert!(first.headers["location"].to_str().unwrap().starts_with(&op.issuer));
    let page = browser.sign_in(&op.issuer, &format!("{app}/")).await;
    assert_eq!(page.status, StatusCode::OK, "{}: {}", page.url, page.body);
    assert!(page.body.contains("warren-auth-user-email=alice@example.test"), "{}", page.body);
    let refused = browser.sign_in(&op.issuer, &format!("{narrow}/")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "alice is not on the list: {}", refused.body);
}

/// A GET like [`get_with`] that returns the body's bytes as they came.
async fn get_bytes(
    edge: &TestEdge,
    host: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
    let tls = tls_connect(edge.https_addr(), host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let mut req = hyper::Request::get("/").header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = within("answer", send.send_request(req.body(empty()).unwrap())).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

/// Answers every request on `tunnel` with `status`, counting them.
fn serve_status(
    mut tunnel: ngrok::tunnel::HttpTunnel,
    status: u16,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    tokio::spawn(async move {
        while let Ok(Some(conn)) = tunnel.try_next().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let mut res = hyper::Response::new(full("upstream failed".to_owned()));
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
}

/// Options the edge cannot honour refuse the Bind, naming the option and what to use instead.
#[tokio::test]
async fn sdk_options_the_edge_cannot_honour_are_refused_by_name() {
    let edge = TestEdge::start().await;
    let sess = within("sdk connect", sdk_session(&edge, &edge.authtoken)).await.expect("SDK session");
    let err = sess
        .http_endpoint()
        .domain("opt-oauth.warren.localhost")
        .oauth(ngrok::config::OauthOptions::new("google"))
        .listen()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("OAuth") && err.to_string().contains("OIDC"), "{err}");
    // A ratio out of range is refused with the field named; it never becomes a breaker that
    // trips on every request, nor none at all.
    let err = sess
        .http_endpoint()
        .domain("opt-cb.warren.localhost")
        .circuit_breaker(1.5)
        .listen()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("CircuitBreaker.error_threshold 1.5"), "{err}");
    let err = sess
        .http_endpoint()
        .domain("opt-h3.warren.localhost")
        .app_protocol("http3")
        .listen()
        .await
        .err()
        .expect("refused");
    // (http2 is spoken: tests/upstream_http2.rs.)
    assert!(err.to_string().contains("http3"), "{err}");
    // Nothing was left bound by the refused attempts.
    let (s, _, _) = https_get(&edge, "opt-oauth.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// `proxy_proto` on a tcp endpoint: the upstream reads a PROXY header naming the visitor
/// before the visitor's bytes.
#[tokio::test]
async fn a_tcp_endpoint_with_proxy_proto_tells_the_upstream_who_the_visitor_is() {
    let edge = TestEdge::start().await;
    let sess = within("sdk connect", sdk_session(&edge, &edge.authtoken)).await.expect("SDK session");
    for (version, expect) in [
        (ngrok::config::ProxyProto::V1, &b"PROXY TCP4 127.0.0.1 "[..]),
        (ngrok::config::ProxyProto::V2, &b"\r\n\r\n\0\r\nQUIT\n"[..]),
    ] {
        let mut tunnel = sess.tcp_endpoint().proxy_proto(version).listen().await.expect("tcp endpoint");
        let url = tunnel.url().to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Ok(Some(mut conn)) = tunnel.try_next().await {
                let mut got = [0u8; 64];
                let mut n = 0;
                while n < 20 {
                    match conn.read(&mut got[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                let _ = tx.send(got[..n].to_vec());
            }
        });
        let mut tcp = TcpStream::connect(("127.0.0.1", url_port(&url))).await.unwrap();
        tcp.write_all(b"hello from the visitor, long enough").await.unwrap();
        let got = within("upstream read", rx).await.unwrap();
        assert!(got.starts_with(expect), "{version:?}: {:?}", String::from_utf8_lossy(&got));
    }
}
