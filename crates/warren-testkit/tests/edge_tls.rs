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
    sdk_as(edge, &edge.authtoken).await
}

async fn sdk_as(edge: &TestEdge, authtoken: &str) -> ngrok::Session {
    within("sdk connect", async {
        ngrok::Session::builder()
            .authtoken(authtoken.to_owned())
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
            // The client did offer the old version (it can: SECLEVEL=0), and the edge refused
            // it; a client that could not even try would print "no protocols available".
            assert!(!out.contains("no protocols available"), "openssl could not offer {old}:\n{out}");
            let offered = if old == "-tls1" { "Protocol  : TLSv1\n" } else { "Protocol  : TLSv1.1\n" };
            assert!(out.contains(offered), "the client offered {old}:\n{out}");
            assert!(
                out.contains("alert handshake failure") || out.contains("alert protocol version"),
                "the edge refused it with an alert:\n{out}"
            );
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
    get_as(edge, Visit { sni: Some(name), host: name, client, headers, tls12_only: false }).await
}

/// How a visitor connects: the TLS server name (`None` sends none), the `Host` header, the
/// client certificate and the TLS versions offered can all differ, as an attacker's would.
struct Visit<'a> {
    sni: Option<&'a str>,
    host: &'a str,
    client: Option<&'a (String, String, CertificateDer<'static>)>,
    headers: &'a [(&'a str, &'a str)],
    tls12_only: bool,
}

async fn get_as(edge: &TestEdge, v: Visit<'_>) -> Result<(StatusCode, Value), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        if v.tls12_only { &[&rustls::version::TLS12] } else { rustls::DEFAULT_VERSIONS };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = if v.sni.is_some() {
        builder.with_root_certificates({
            let mut r = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&edge.ca_pem) {
                r.add(c.unwrap()).unwrap();
            }
            r
        })
    } else {
        // Visits without SNI: the certificate cannot name an IP address, and these tests are
        // about routing, not trust.
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
    };
    let mut cfg = match v.client {
        None => builder.with_no_client_auth(),
        Some((chain, key, _)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // An IP address as the server name: rustls sends no SNI for it.
    let server = match v.sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::IpAddress(edge.https_addr().ip().into()),
    };
    let tcp = TcpStream::connect(edge.https_addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(server, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", v.host);
    for (k, val) in v.headers {
        req = req.header(*k, *val);
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

/// The TLS settings of an endpoint bind to its name: a visitor who makes the handshake for
/// another name (another endpoint's SNI, or none) and then asks for this endpoint by `Host`
/// gets 421, never the upstream. Before, such a visitor got past mutual TLS and
/// `min_version: 1.3`, and a `require-any` endpoint's SNI let a self-made certificate
/// reach a mutual TLS endpoint's upstream as its client-certificate headers.
#[tokio::test]
async fn another_sni_never_skips_an_endpoints_tls_settings() {
    let edge = TestEdge::start().await;
    let ca = TestCa::new("victim clients");
    let good = ca.leaf("employee.victim.example");
    let forged = TestCa::new("self made").leaf("admin@victim-corp");
    let sess = sdk(&edge).await;
    let victim = sess
        .http_endpoint()
        .domain("victim.warren.localhost")
        .mutual_tlsca(Bytes::from(ca.pem.clone()))
        .listen()
        .await
        .expect("mutual TLS endpoint");
    let v13 = sess
        .http_endpoint()
        .domain("modern.warren.localhost")
        .traffic_policy(policy(serde_json::json!({"min_version": "1.3"})))
        .listen()
        .await
        .expect("min_version 1.3 endpoint");
    let plain = sess.http_endpoint().domain("plain.warren.localhost").listen().await.expect("plain endpoint");
    let any = sess
        .http_endpoint()
        .domain("any.warren.localhost")
        .traffic_policy(policy(serde_json::json!({"mutual_tls_verification_strategy": "require-any"})))
        .listen()
        .await
        .expect("require-any endpoint");
    for t in [victim, v13, plain, any] {
        serve_headers(t);
    }
    let misdirected = |r: Result<(StatusCode, Value), String>, what: &str| {
        let (status, body) = r.unwrap_or_else(|e| panic!("{what}: the handshake itself succeeds ({e})"));
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{what}: {body}");
        assert_eq!(body, Value::Null, "{what}: the upstream never answered");
    };
    let visit = |sni, host, client, tls12_only| Visit { sni, host, client, headers: &[], tls12_only };

    // The mutual TLS endpoint through a plain endpoint's name, and through no name at all.
    let r =
        get_as(&edge, visit(Some("plain.warren.localhost"), "victim.warren.localhost", None, false)).await;
    misdirected(r, "plain SNI, victim Host, no certificate");
    let r = get_as(&edge, visit(None, "victim.warren.localhost", None, false)).await;
    misdirected(r, "no SNI, victim Host");
    // TLS 1.2 to a 1.3-only endpoint through another name.
    let r = get_as(&edge, visit(Some("plain.warren.localhost"), "modern.warren.localhost", None, true)).await;
    misdirected(r, "TLS 1.2 through a plain SNI to a min_version 1.3 endpoint");
    // A self-made certificate accepted by the require-any endpoint, offered to the victim.
    let r =
        get_as(&edge, visit(Some("any.warren.localhost"), "victim.warren.localhost", Some(&forged), false))
            .await;
    misdirected(r, "require-any SNI with a forged certificate, victim Host");
    // A certificate verified for the victim does not vouch for another endpoint either.
    let r =
        get_as(&edge, visit(Some("victim.warren.localhost"), "plain.warren.localhost", Some(&good), false))
            .await;
    misdirected(r, "victim SNI, plain Host");

    // The ordinary ways still work: matching names, and names sharing the default settings.
    let (s, seen) = get(&edge, "victim.warren.localhost", Some(&good), &[]).await.expect("own name");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(seen["warren-client-cert-subject"], serde_json::json!(["CN=employee.victim.example"]));
    let r = get_as(&edge, visit(Some("plain.warren.localhost"), "plain.warren.localhost", None, true)).await;
    assert_eq!(r.expect("TLS 1.2 to a default endpoint").0, StatusCode::OK);
    let r = get_as(&edge, visit(None, "plain.warren.localhost", None, false)).await;
    assert_eq!(r.expect("no SNI to a default endpoint").0, StatusCode::OK);
}

/// Two accounts, each with its own mutual TLS endpoint and CA. Tenant A issues itself a
/// certificate claiming to be B's administrator, makes the handshake for its own endpoint and
/// asks for B's by `Host`: 421, and B's upstream never sees A's certificate.
#[tokio::test]
async fn one_tenant_cannot_forge_another_tenants_client_certificate_identity() {
    let edge = TestEdge::start().await;
    let (a, b) = (edge.tenant("tenant-a").await, edge.tenant("tenant-b").await);
    let (ca_a, ca_b) = (TestCa::new("A's clients"), TestCa::new("B's clients"));
    let forged = ca_a.leaf("admin.tenant-b.example");
    let b_employee = ca_b.leaf("employee.b.example");
    let (sess_a, sess_b) =
        (sdk_as(&edge, &a.developer.authtoken).await, sdk_as(&edge, &b.developer.authtoken).await);
    let ta = sess_a
        .http_endpoint()
        .domain("tenant-a.warren.localhost")
        .mutual_tlsca(Bytes::from(ca_a.pem.clone()))
        .listen()
        .await
        .expect("A's endpoint");
    let tb = sess_b
        .http_endpoint()
        .domain("tenant-b.warren.localhost")
        .mutual_tlsca(Bytes::from(ca_b.pem.clone()))
        .listen()
        .await
        .expect("B's endpoint");
    serve_headers(ta);
    serve_headers(tb);

    let (s, seen) =
        get(&edge, "tenant-a.warren.localhost", Some(&forged), &[]).await.expect("A's own endpoint");
    assert_eq!(s, StatusCode::OK, "A's certificate is good for A's endpoint: {seen}");
    let attack = Visit {
        sni: Some("tenant-a.warren.localhost"),
        host: "tenant-b.warren.localhost",
        client: Some(&forged),
        headers: &[("warren-client-cert-subject", "CN=admin.tenant-b.example")],
        tls12_only: false,
    };
    let (s, seen) = get_as(&edge, attack).await.expect("the handshake with A's endpoint succeeds");
    assert_eq!(s, StatusCode::MISDIRECTED_REQUEST, "{seen}");
    assert_eq!(seen, Value::Null, "B's upstream never answered");
    let (s, seen) =
        get(&edge, "tenant-b.warren.localhost", Some(&b_employee), &[]).await.expect("B's visitor");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(seen["warren-client-cert-subject"], serde_json::json!(["CN=employee.b.example"]));
}

/// The edge chooses the cipher suite by its own order: a client that lists a weaker suite
/// first still gets the strongest both support.
#[tokio::test]
async fn the_edges_cipher_order_wins_over_the_clients() {
    let edge = TestEdge::start().await;
    let sess = sdk(&edge).await;
    let t = sess.http_endpoint().domain("order.warren.localhost").listen().await.expect("endpoint");
    serve_headers(t);
    let weak_first = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384";
    let (ok, out) =
        openssl_handshake(&edge, "order.warren.localhost", &["-tls1_2", "-cipher", weak_first]).await;
    assert!(ok, "{out}");
    assert!(out.contains("Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"), "the edge's first choice:\n{out}");
}

/// An account-wide `terminate-tls` holds on every https endpoint of the account, together
/// with the endpoint's own settings (the most restrictive wins), and endpoints that could
/// not honour it (plain http, tcp, tls passthrough) are refused. `terminate-tls` in a tcp or
/// tls endpoint's own policy is refused too. Before, all of these were accepted and ignored.
#[tokio::test]
async fn an_account_wide_terminate_tls_holds_on_every_endpoint_or_refuses_it() {
    let edge = TestEdge::start().await;
    let ca = TestCa::new("account clients");
    let good = ca.leaf("employee.example");
    let policy = serde_json::json!({"on_tcp_connect": [{"actions": [{"type": "terminate-tls", "config": {
        "min_version": "1.3", "mutual_tls_certificate_authorities": [ca.pem]}}]}]});
    let (status, _, body) = edge
        .api(
            "PUT",
            "/traffic_policy",
            Some(&edge.api_key),
            Some(serde_json::json!({"traffic_policy": policy.to_string()})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let sess = sdk(&edge).await;
    let t = sess.http_endpoint().domain("acct-tls.warren.localhost").listen().await.expect("https endpoint");
    serve_headers(t);
    let name = "acct-tls.warren.localhost";
    assert!(get(&edge, name, None, &[]).await.is_err(), "no client certificate: refused");
    let tls12 = Visit { sni: Some(name), host: name, client: Some(&good), headers: &[], tls12_only: true };
    assert!(get_as(&edge, tls12).await.is_err(), "TLS 1.2: refused");
    let (s, seen) = get(&edge, name, Some(&good), &[]).await.expect("TLS 1.3 with the account's CA");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(seen["warren-client-cert-subject"], serde_json::json!(["CN=employee.example"]));

    // The endpoint may add a CA of its own: a certificate must then satisfy both.
    let other = TestCa::new("endpoint clients");
    let t = sess
        .http_endpoint()
        .domain("both.warren.localhost")
        .mutual_tlsca(Bytes::from(other.pem.clone()))
        .listen()
        .await
        .expect("https endpoint with its own CA");
    serve_headers(t);
    assert!(get(&edge, "both.warren.localhost", Some(&good), &[]).await.is_err(), "the account's CA alone");
    let theirs = other.leaf("visitor.example");
    assert!(
        get(&edge, "both.warren.localhost", Some(&theirs), &[]).await.is_err(),
        "the endpoint's CA alone"
    );

    for (proto, why) in [("http", "http"), ("tcp", "tcp"), ("tls", "tls")] {
        let opts = match proto {
            "tcp" => serde_json::json!({}),
            _ => serde_json::json!({"Domain": format!("{proto}-escape.warren.localhost")}),
        };
        let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
        let r = raw.bind(&format!("escape-{proto}"), proto, opts).await;
        assert!(r.error.contains("terminate-tls") && r.error.contains(why), "{proto}: {r:?}");
    }
    let (status, _, _) = edge.api("DELETE", "/traffic_policy", Some(&edge.api_key), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let own = serde_json::json!({"on_tcp_connect": [{"actions": [{"type": "terminate-tls", "config": {"min_version": "1.3"}}]}]});
    let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
    let r = raw
        .bind(
            "tls-own",
            "tls",
            serde_json::json!({"Domain": "tls-own.warren.localhost", "TrafficPolicy": own.to_string()}),
        )
        .await;
    assert!(r.error.contains("terminate-tls needs an https endpoint"), "{r:?}");
}

/// An https endpoint gets only a name the edge can serve a valid certificate for: the base
/// domain's wildcard covers one level, so `a.b.<base>` is refused naming the name to use
/// instead, until a certificate of its own is attached. tls endpoints (the agent or upstream
/// brings the certificate) and plain http endpoints may use such names.
#[tokio::test]
async fn an_https_name_no_certificate_covers_is_refused_until_one_does() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
    let r = raw.bind_https("deep", "a.b.warren.localhost").await;
    assert!(r.error.contains("not covered") && r.error.contains("use a-b.warren.localhost"), "{r:?}");
    assert!(raw.bind_https("flat", "a-b.warren.localhost").await.error.is_empty());
    let http = raw.bind("deep-http", "http", serde_json::json!({"Domain": "a.b.warren.localhost"})).await;
    assert!(http.error.is_empty(), "{http:?}");
    let tls = raw.bind("deep-tls", "tls", serde_json::json!({"Domain": "c.d.warren.localhost"})).await;
    assert!(tls.error.is_empty(), "{tls:?}");

    let ca = TestCa::new("deep CA");
    let (chain, private_key, _) = ca.leaf("e.f.warren.localhost");
    let upload = serde_json::json!({"certificate_pem": chain, "private_key_pem": private_key});
    let (status, _, cert) = edge.api("POST", "/tls_certificates", key, Some(upload)).await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let body = serde_json::json!({"domain": "e.f.warren.localhost", "certificate_id": cert["id"]});
    let (status, _, rd) = edge.api("POST", "/reserved_domains", key, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{rd}");
    let r = raw.bind_https("own", "e.f.warren.localhost").await;
    assert!(r.error.is_empty(), "a name with its own certificate: {r:?}");
}
