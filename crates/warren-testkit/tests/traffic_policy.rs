//! Traffic policies through a real tunnel: the agent sends the document with its Bind, the
//! edge compiles it (or refuses the Bind, saying why) and applies it to every visitor.

use std::sync::atomic::Ordering;

use hyper::{Request, StatusCode};
use warren_agent::{Agent, AgentError, EndpointConfig};
use warren_testkit::oidc::Browser;
use warren_testkit::*;

async fn with_policy(
    edge: &TestEdge,
    up: &HttpUpstream,
    name: &str,
    policy: &str,
) -> Result<Agent, AgentError> {
    let mut ep = EndpointConfig::http(&up.url(), Some(&format!("https://{name}.warren.localhost"))).unwrap();
    // As text, the way ngrok's SDKs send it: the edge parses it.
    ep.traffic_policy = Some(serde_json::Value::String(policy.to_owned()));
    let mut agent = Agent::start(edge.agent_with(ep));
    within("bind", agent.wait_online()).await.map(|_| agent)
}

/// A request through the tunnel: status, headers, body.
async fn get(
    edge: &TestEdge,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, String) {
    let host = format!("{name}.warren.localhost");
    let tls = tls_connect(edge.https_addr(), &host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let mut b = Request::get(path).header("host", format!("{host}:{}", edge.https_addr().port()));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = within("response", send.send_request(b.body(empty()).unwrap())).await.expect("response");
    let (parts, body) = res.into_parts();
    let text = String::from_utf8_lossy(&http_body_util::BodyExt::collect(body).await.unwrap().to_bytes())
        .into_owned();
    (parts.status, parts.headers, text)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// From ngrok's documentation, unchanged.
const NGROK_EXAMPLE: &str = r#"
on_http_request:
  - expressions:
      - "req.url.path.startsWith('/admin')"
    actions:
      - type: restrict-ips
        config:
          enforce: true
          allow:
            - "110.0.0.0/8"
            - "220.12.0.0/16"
  - actions:
      - type: add-headers
        config:
          headers:
            x-client-ip: "${conn.client_ip}"
on_http_response:
  - actions:
      - type: remove-headers
        config:
          headers:
            - content-type
"#;

#[tokio::test]
async fn ngroks_documentation_example_runs_through_the_tunnel() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let _agent = with_policy(&edge, &up, "docs", NGROK_EXAMPLE).await.expect("bound");
    let (status, _, body) = get(&edge, "docs", "/admin/panel", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "127.0.0.1 is not in the allow list: {body}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0, "the upstream never saw it");
    let (status, headers, body) = get(&edge, "docs", "/echo", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["headers"]["x-client-ip"], "127.0.0.1");
    assert!(headers.get("content-type").is_none(), "removed by on_http_response");
}

#[tokio::test]
async fn each_action_allows_and_denies_through_the_tunnel() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let policy = r#"
on_http_request:
  - name: admin needs a password
    expressions: ["req.url.path.startsWith('/echo/admin')"]
    actions:
      - type: basic-auth
        config: {credentials: ["alice:correct-horse-battery"]}
  - name: no deletes
    expressions: ["req.method == 'DELETE'"]
    actions: [{type: deny, config: {status_code: 405}}]
  - name: blocked network
    expressions: ["hasReqHeader('x-pretend-blocked')"]
    actions:
      - type: restrict-ips
        config: {deny: ["127.0.0.0/8"]}
  - name: limit
    expressions: ["req.url.path == '/limited'"]
    actions:
      - type: rate-limit
        config: {name: two per minute, algorithm: sliding_window, capacity: 2, rate: 60s, bucket_key: [conn.client_ip]}
      - type: custom-response
        config: {status_code: 200, body: "within the limit"}
  - name: old paths
    actions:
      - type: url-rewrite
        config: {from: "/v1/([a-z]+)$", to: "/echo?item=$1"}
  - expressions: ["req.url.path == '/moved'"]
    actions:
      - type: redirect
        config: {to: "https://${req.host}/echo/new", status_code: 301}
  - expressions: ["req.url.path == '/hangup'"]
    actions: [{type: close-connection}]
  - actions:
      - type: log
        config: {metadata: {path: "${req.url.path}"}}
      - type: add-headers
        config: {headers: {x-from-policy: "yes ${req.method}"}}
      - type: remove-headers
        config: {headers: [x-secret]}
on_http_response:
  - expressions: ["res.status_code == 200"]
    actions:
      - type: add-headers
        config: {headers: {x-res-policy: "saw ${res.status_code}"}}
"#;
    let _agent = with_policy(&edge, &up, "acts", policy).await.expect("bound");

    // basic-auth: refused without and with wrong credentials, allowed with the right ones.
    let (status, headers, _) = get(&edge, "acts", "/echo/admin", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
    let (status, _, _) =
        get(&edge, "acts", "/echo/admin", &[("authorization", "Basic YWxpY2U6d3Jvbmc=")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // alice:correct-horse-battery
    let (status, _, _) =
        get(&edge, "acts", "/echo/admin", &[("authorization", "Basic YWxpY2U6Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5")])
            .await;
    assert_eq!(status, StatusCode::OK);

    // deny and restrict-ips.
    let tls = tls_connect(edge.https_addr(), "acts.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = Request::delete("/echo")
        .header("host", format!("acts.warren.localhost:{}", edge.https_addr().port()))
        .body(empty())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = get(&edge, "acts", "/echo", &[("x-pretend-blocked", "1")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // rate-limit: two allowed, the third refused with Retry-After.
    for _ in 0..2 {
        let (status, _, body) = get(&edge, "acts", "/limited", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "within the limit"));
    }
    let (status, headers, _) = get(&edge, "acts", "/limited", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));

    // url-rewrite, add-headers, remove-headers on the request; add-headers on the response.
    let before = up.requests.load(Ordering::SeqCst);
    let (status, headers, body) = get(&edge, "acts", "/v1/items", &[("x-secret", "hush")]).await;
    assert_eq!(status, StatusCode::OK);
    let echo = json(&body);
    assert_eq!(echo["path"], "/echo?item=items");
    assert_eq!(echo["headers"]["x-from-policy"], "yes GET");
    assert!(echo["headers"].get("x-secret").is_none(), "{echo}");
    assert_eq!(headers["x-res-policy"], "saw 200");
    assert_eq!(up.requests.load(Ordering::SeqCst), before + 1);

    // redirect and close-connection never reach the upstream.
    let (status, headers, _) = get(&edge, "acts", "/moved", &[]).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], format!("https://acts.warren.localhost/echo/new"));
    let tls = tls_connect(edge.https_addr(), "acts.warren.localhost", &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let req = Request::get("/hangup").header("host", "acts.warren.localhost").body(empty()).unwrap();
    assert!(
        within("closed", send.send_request(req)).await.is_err(),
        "the connection is closed without an answer"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn invalid_documents_refuse_the_bind_with_the_rule_and_the_problem() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let cases = [
        ("on_http_request: [ {actions: ", "invalid YAML"),
        (
            "on_http_request:\n  - name: mystery\n    actions: [{type: teleport}]\n",
            "unknown action type \"teleport\"",
        ),
        (
            "on_http_request:\n  - name: nets\n    actions: [{type: restrict-ips, config: {allow: [\"10.0.0.0/99\"]}}]\n",
            "10.0.0.0/99",
        ),
        (
            "on_http_request:\n  - name: typed\n    expressions: [\"req.method > 5\"]\n    actions: [{type: deny}]\n",
            "cannot be evaluated",
        ),
        (
            "on_http_request:\n  - actions: [{type: restrict-ips, config: {ip_policies: [ipp_missing]}}]\n",
            "ipp_missing",
        ),
    ];
    for (i, (doc, want)) in cases.iter().enumerate() {
        let err = with_policy(&edge, &up, &format!("bad{i}"), doc).await.err().expect("refused");
        let AgentError::Bind(msg) = err else { panic!("{err:?}") };
        assert!(msg.contains("invalid traffic policy") && msg.contains(want), "{doc}\n=> {msg}");
    }
}

#[tokio::test]
async fn on_tcp_connect_closes_refused_visitors_of_a_tcp_endpoint() {
    let edge = TestEdge::start().await;
    let (echo, _task) = tcp_echo().await;
    for (deny, expect_echo) in [("127.0.0.0/8", false), ("10.0.0.0/8", true)] {
        let mut ep = EndpointConfig::tcp(&echo.to_string(), None).unwrap();
        let doc = format!(
            "on_tcp_connect:\n  - actions: [{{type: restrict-ips, config: {{deny: [\"{deny}\"]}}}}]\n"
        );
        ep.traffic_policy = Some(warren_agent::config::policy_from_text(&doc).unwrap());
        let mut agent = Agent::start(edge.agent_with(ep));
        let url = within("tcp bind", agent.wait_online()).await.expect("bound")[0].clone();
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", url_port(&url))).await.unwrap();
        if expect_echo {
            assert_eq!(echo_roundtrip(&mut c, b"through").await, b"through");
        } else {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = c.write_all(b"x").await;
            let mut buf = [0u8; 1];
            let n = within("closed by policy", c.read(&mut buf)).await.unwrap_or(0);
            assert_eq!(n, 0, "the connection is closed");
        }
        agent.stop().await.unwrap();
        edge.wait_sessions(0).await;
    }
}

#[tokio::test]
async fn ngroks_older_flags_become_rules() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let mut ep = EndpointConfig::http(&up.url(), Some("https://flags.warren.localhost")).unwrap();
    let flags = warren_agent::config::LegacyFlags {
        basic_auth: vec!["bob:sponge-cake-42".into()],
        request_header_add: vec!["x-team: blue".into()],
        response_header_remove: vec!["content-type".into()],
        ..Default::default()
    };
    ep.prepend_policy(flags.rules(true).unwrap().unwrap()).unwrap();
    let mut agent = Agent::start(edge.agent_with(ep));
    within("bind", agent.wait_online()).await.expect("bound");
    let (status, _, _) = get(&edge, "flags", "/echo", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // bob:sponge-cake-42
    let (status, headers, body) =
        get(&edge, "flags", "/echo", &[("authorization", "Basic Ym9iOnNwb25nZS1jYWtlLTQy")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["headers"]["x-team"], "blue");
    assert!(headers.get("content-type").is_none());

    // --cidr-deny on a tcp endpoint becomes an on_tcp_connect rule.
    let flags =
        warren_agent::config::LegacyFlags { cidr_deny: vec!["127.0.0.1/32".into()], ..Default::default() };
    let doc = flags.rules(false).unwrap().unwrap();
    assert_eq!(doc["on_tcp_connect"][0]["actions"][0]["type"], "restrict-ips");
    let flags =
        warren_agent::config::LegacyFlags { basic_auth: vec!["a:bcdefghij".into()], ..Default::default() };
    assert!(flags.rules(false).is_err(), "basic auth is for http endpoints");
}

/// Waits for the agent to come back online after the edge restarted its session.
async fn online_again(agent: &mut Agent) {
    loop {
        match within("back online", agent.next_status()).await {
            warren_agent::Status::Online { .. } => return,
            warren_agent::Status::Stopped(e) => panic!("agent stopped: {e:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_account_policy_applies_even_when_the_endpoint_policy_allows_everything() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let key = edge.api_key.clone();
    let allow_all =
        "on_http_request:\n  - actions: [{type: restrict-ips, config: {allow: [\"0.0.0.0/0\", \"::/0\"]}}]\n";
    let mut agent = with_policy(&edge, &up, "guarded", allow_all).await.expect("bound");
    assert_eq!(get(&edge, "guarded", "/", &[]).await.0, StatusCode::OK);

    // Invalid account policies are refused with the problem.
    let (status, _, body) = edge
        .api("PUT", "/traffic_policy", Some(&key), Some(serde_json::json!({ "traffic_policy": "on_http_request:\n  - actions: [{type: teleport}]\n" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["msg"].as_str().unwrap().contains("teleport"), "{body}");

    let deny_loopback = "on_http_request:\n  - name: company networks only\n    actions: [{type: restrict-ips, config: {deny: [\"127.0.0.0/8\"]}}]\non_tcp_connect:\n  - actions: [{type: restrict-ips, config: {deny: [\"127.0.0.0/8\"]}}]\n";
    let (status, _, body) = edge
        .api(
            "PUT",
            "/traffic_policy",
            Some(&key),
            Some(serde_json::json!({ "traffic_policy": deny_loopback })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The edge restarted the session; the agent rebinds under the account's policy.
    online_again(&mut agent).await;
    let (status, _, _) = get(&edge, "guarded", "/", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the account's deny wins over the endpoint's allow");
    let (_, _, body) = edge.api("GET", "/traffic_policy", Some(&key), None).await;
    assert_eq!(body["traffic_policy"], deny_loopback);
    // Other roles read it too, but not the secrets in it.
    let (s, _, user) = edge
        .api(
            "POST",
            "/users",
            Some(&key),
            Some(serde_json::json!({"email": "dev@example.com", "role": "developer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
    let (s, _, dev) = edge
        .api(
            "POST",
            "/api_keys",
            Some(&key),
            Some(serde_json::json!({"description": "dev", "owner_id": user["id"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{dev}");
    let dev = dev["token"].as_str().unwrap().to_owned();
    let (_, _, body) = edge.api("GET", "/traffic_policy", Some(&dev), None).await;
    let seen = body["traffic_policy"].as_str().unwrap();
    assert!(seen.contains("company networks only"), "{seen}");
    let with_secret = deny_loopback.replace(
        "on_tcp_connect:",
        "  - expressions: [\"req.url.path.startsWith('/ops')\"]\n    actions: [{type: basic-auth, config: {credentials: [\"ops:very-secret-pw\"]}}]\non_tcp_connect:",
    );
    let (status, _, body) = edge
        .api("PUT", "/traffic_policy", Some(&key), Some(serde_json::json!({ "traffic_policy": with_secret })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    online_again(&mut agent).await;
    let (_, _, body) = edge.api("GET", "/traffic_policy", Some(&dev), None).await;
    let seen = body["traffic_policy"].as_str().unwrap();
    assert!(!seen.contains("very-secret-pw") && seen.contains("********"), "{seen}");
    let (_, _, body) = edge.api("GET", "/traffic_policy", Some(&key), None).await;
    assert!(body["traffic_policy"].as_str().unwrap().contains("very-secret-pw"), "admins see it as set");

    // It applies to tcp endpoints too (their on_tcp_connect rules).
    let (echo, _task) = tcp_echo().await;
    let mut tcp_agent = Agent::start(edge.agent_with(EndpointConfig::tcp(&echo.to_string(), None).unwrap()));
    let url = within("tcp bind", tcp_agent.wait_online()).await.unwrap()[0].clone();
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", url_port(&url))).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = c.write_all(b"x").await;
        let mut buf = [0u8; 1];
        assert_eq!(within("closed", c.read(&mut buf)).await.unwrap_or(0), 0);
    }
    tcp_agent.stop().await.unwrap();

    let (status, _, _) = edge.api("DELETE", "/traffic_policy", Some(&key), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    online_again(&mut agent).await;
    assert_eq!(get(&edge, "guarded", "/", &[]).await.0, StatusCode::OK);
}

/// A POST through the tunnel with the given headers and body.
async fn post(
    edge: &TestEdge,
    name: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &'static [u8],
) -> (StatusCode, String) {
    let host = format!("{name}.warren.localhost");
    let tls = tls_connect(edge.https_addr(), &host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let mut b = Request::post(path).header("host", format!("{host}:{}", edge.https_addr().port()));
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let res = within("response", send.send_request(b.body(full(body)).unwrap())).await.expect("response");
    let status = res.status();
    let text =
        String::from_utf8_lossy(&http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes())
            .into_owned();
    (status, text)
}

#[tokio::test]
async fn verify_webhook_accepts_each_providers_signature_and_refuses_forgeries() {
    use warren_policy::webhook::sign;
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let svix_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let policy = format!(
        r#"
on_http_request:
  - expressions: ["req.url.path == '/upload' && getQueryParam('from') == ['github']"]
    actions: [{{type: verify-webhook, config: {{provider: github, secret: gh-secret}}}}]
  - expressions: ["getQueryParam('from') == ['stripe']"]
    actions: [{{type: verify-webhook, config: {{provider: stripe, secret: whsec_stripe}}}}]
  - expressions: ["getQueryParam('from') == ['slack']"]
    actions: [{{type: verify-webhook, config: {{provider: slack, secret: slack-secret}}}}]
  - expressions: ["getQueryParam('from') == ['twilio']"]
    actions: [{{type: verify-webhook, config: {{provider: twilio, secret: twilio-token}}}}]
  - expressions: ["getQueryParam('from') == ['svix']"]
    actions: [{{type: verify-webhook, config: {{provider: svix, secret: "{svix_secret}"}}}}]
  - expressions: ["getQueryParam('from') == ['hmac']"]
    actions: [{{type: verify-webhook, config: {{provider: hmac, secret: shared, header: x-body-signature}}}}]
"#
    );
    let _agent = with_policy(&edge, &up, "hooks", &policy).await.expect("bound");
    let body: &'static [u8] = br#"{"event":"deploy","id":42}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let accepted = |(status, text): (StatusCode, String)| {
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(
            text.contains(&format!("\"bytes\":{}", body.len())),
            "the upstream got the whole body: {text}"
        );
    };
    let refused = |(status, text): (StatusCode, String)| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
        assert!(text.contains("Webhook verification failed"), "{text}");
    };

    accepted(
        post(
            &edge,
            "hooks",
            "/upload?from=github",
            &[("x-hub-signature-256", sign::github("gh-secret", body))],
            body,
        )
        .await,
    );
    refused(
        post(
            &edge,
            "hooks",
            "/upload?from=github",
            &[("x-hub-signature-256", sign::github("guess", body))],
            body,
        )
        .await,
    );
    refused(post(&edge, "hooks", "/upload?from=github", &[], body).await);

    accepted(
        post(
            &edge,
            "hooks",
            "/upload?from=stripe",
            &[("stripe-signature", sign::stripe("whsec_stripe", now, body))],
            body,
        )
        .await,
    );
    refused(
        post(
            &edge,
            "hooks",
            "/upload?from=stripe",
            &[("stripe-signature", sign::stripe("whsec_stripe", now - 3600, body))],
            body,
        )
        .await,
    );

    let slack = |ts: u64| {
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", sign::slack("slack-secret", ts, body)),
        ]
    };
    accepted(post(&edge, "hooks", "/upload?from=slack", &slack(now), body).await);
    refused(post(&edge, "hooks", "/upload?from=slack", &slack(now - 3600), body).await);

    let svix = |secret: &str| {
        vec![
            ("svix-id", "msg_1".to_owned()),
            ("svix-timestamp", now.to_string()),
            ("svix-signature", sign::svix(secret, "msg_1", now, body)),
        ]
    };
    accepted(post(&edge, "hooks", "/upload?from=svix", &svix(svix_secret), body).await);
    refused(post(&edge, "hooks", "/upload?from=svix", &svix("whsec_b3RoZXJzZWNyZXQ="), body).await);

    accepted(
        post(
            &edge,
            "hooks",
            "/upload?from=hmac",
            &[("x-body-signature", sign::hmac_sha256("shared", body))],
            body,
        )
        .await,
    );
    refused(
        post(
            &edge,
            "hooks",
            "/upload?from=hmac",
            &[("x-body-signature", sign::hmac_sha256("shared", b"other"))],
            body,
        )
        .await,
    );

    // Twilio signs the URL it called plus the sorted form fields.
    let form: &'static [u8] = b"To=%2B15551234567&Body=hello";
    let url = format!("https://hooks.warren.localhost:{}/upload?from=twilio", edge.https_addr().port());
    let sig = sign::twilio("twilio-token", &url, &[("To", "+15551234567"), ("Body", "hello")]);
    let headers = vec![
        ("content-type", "application/x-www-form-urlencoded".to_owned()),
        ("x-twilio-signature", sig.clone()),
    ];
    let (status, text) = post(&edge, "hooks", "/upload?from=twilio", &headers, form).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _) =
        post(&edge, "hooks", "/upload?from=twilio", &headers, b"To=%2B15550000000&Body=hello").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a changed form field breaks the signature");

    // Bodies over the limit are refused rather than buffered.
    let big: &'static [u8] = Box::leak(vec![b'x'; warren_policy::BODY_LIMIT + 1].into_boxed_slice());
    let (status, _) = post(
        &edge,
        "hooks",
        "/upload?from=github",
        &[("x-hub-signature-256", sign::github("gh-secret", big))],
        big,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A JWKS endpoint on loopback serving one EC P-256 key, and a way to sign with it.
struct Idp {
    jwks_url: String,
    key_pem: String,
    _task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start() -> Idp {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let point = key.public_key_raw().to_vec();
        assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed P-256 point");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }]})
        .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = jwks.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(full(body))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Idp { jwks_url: format!("http://{addr}/jwks.json"), key_pem: key.serialize_pem(), _task: task }
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

#[tokio::test]
async fn jwt_validation_accepts_valid_tokens_and_refuses_wrong_audience_expired_none_and_foreign_keys() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let idp = Idp::start().await;
    let policy = format!(
        r#"
on_http_request:
  - actions:
      - type: jwt-validation
        config:
          issuer:
            allow_list:
              - value: https://idp.test
          audience:
            allow_list:
              - value: api://warren
          http:
            tokens:
              - type: jwt
                method: header
                name: Authorization
                prefix: "Bearer "
          jws:
            allowed_algorithms: [ES256]
            keys:
              sources:
                additional_jkus:
                  - {}
"#,
        idp.jwks_url
    );
    let _agent = with_policy(&edge, &up, "jwt", &policy).await.expect("bound");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = |aud: &str, exp: u64| serde_json::json!({ "iss": "https://idp.test", "aud": aud, "sub": "user-1", "exp": exp });
    let with = |t: &str| format!("Bearer {t}");

    let good = idp.token(claims("api://warren", now + 300));
    let (status, _, body) = get(&edge, "jwt", "/echo", &[("authorization", &with(&good))]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["headers"]["authorization"], with(&good), "the token goes on to the upstream");

    let refused = |(status, headers, body): (StatusCode, hyper::HeaderMap, String), why: &str| {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer error=\"invalid_token\"", "{why}");
    };
    refused(get(&edge, "jwt", "/echo", &[]).await, "no token");
    let wrong_aud = idp.token(claims("api://someone-else", now + 300));
    refused(get(&edge, "jwt", "/echo", &[("authorization", &with(&wrong_aud))]).await, "wrong audience");
    let expired = idp.token(claims("api://warren", now - 3600));
    refused(get(&edge, "jwt", "/echo", &[("authorization", &with(&expired))]).await, "expired");
    // alg: none, with the same claims and no signature.
    use base64::Engine as _;
    let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#.into()),
        b64(claims("api://warren", now + 300).to_string())
    );
    refused(get(&edge, "jwt", "/echo", &[("authorization", &with(&none))]).await, "alg none");
    // Signed by a key the JWKS does not hold.
    let other = Idp::start().await;
    let forged = other.token(claims("api://warren", now + 300));
    refused(get(&edge, "jwt", "/echo", &[("authorization", &with(&forged))]).await, "foreign key");

    // Keys that cannot be fetched refuse the Bind.
    let err = with_policy(&edge, &up, "jwt2", &policy.replace(&idp.jwks_url, "http://127.0.0.1:9/jwks.json"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("could not be fetched"), "{err}");
    let err =
        with_policy(&edge, &up, "jwt3", &policy.replace(&idp.jwks_url, "http://idp.example.com/jwks.json"))
            .await
            .err()
            .expect("refused");
    assert!(err.to_string().contains("must be https"), "{err}");
}

/// The same checks against a real identity provider's JWKS (npm oidc-provider): its access
/// tokens for this API pass; its tokens for another audience, and an unsigned copy, do not.
#[tokio::test]
async fn jwt_validation_against_a_real_identity_providers_keys() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let op = warren_testkit::oidc::OidcProvider::start().await;
    let policy = format!(
        "on_http_request:\n  - actions:\n      - type: jwt-validation\n        config:\n          issuer: {{allow_list: [{{value: \"{}\"}}]}}\n          audience: {{allow_list: [{{value: \"api://warren\"}}]}}\n          jws:\n            allowed_algorithms: [RS256]\n            keys: {{sources: {{additional_jkus: [\"{}\"]}}}}\n",
        op.issuer,
        op.jwks_uri().await
    );
    let _agent = with_policy(&edge, &up, "idp", &policy).await.expect("bound");
    let token = op.access_token("api://warren").await;
    let (status, _, body) =
        get(&edge, "idp", "/echo", &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Minted by the provider an hour ago, so it expired well before it arrives.
    let expired = op.access_token_at("api://warren", -3600).await;
    let (status, _, body) =
        get(&edge, "idp", "/echo", &[("authorization", &format!("Bearer {expired}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired token");
    assert!(body.contains("expired"), "{body}");

    let other = op.access_token("api://other").await;
    let (status, _, _) = get(&edge, "idp", "/echo", &[("authorization", &format!("Bearer {other}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a token for another audience");

    // The provider's own claims, re-sent unsigned with alg none.
    use base64::Engine as _;
    let claims = token.split('.').nth(1).unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
    let (status, _, _) =
        get(&edge, "idp", "/echo", &[("authorization", &format!("Bearer {header}.{claims}."))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "alg none");
    // A tampered payload breaks the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&parts[1]).unwrap())
            .unwrap();
    payload["sub"] = "someone-else".into();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
    let (status, _, _) =
        get(&edge, "idp", "/echo", &[("authorization", &format!("Bearer {}", parts.join(".")))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "tampered claims");
}

fn oidc_policy(issuer: &str, extra: &str) -> String {
    format!(
        "on_http_request:\n  - actions:\n      - type: openid-connect\n        config:\n          issuer_url: \"{issuer}\"\n          client_id: warren-web\n          client_secret: web-secret\n          scopes: [openid, profile, email]\n{extra}"
    )
}

/// openid-connect against a real provider (npm oidc-provider): a visitor is sent to the
/// provider, signs in with its login form, comes back with identity headers for the upstream;
/// spoofed identity headers, a tampered cookie and a signed-out session do not get through.
#[tokio::test]
async fn openid_connect_signs_visitors_in_with_a_real_provider() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    // Endpoint URLs carry the edge's https port, and so do the callbacks.
    let port = edge.https_addr().port();
    let app = &format!("https://oidc.warren.localhost:{port}");
    let app2 = &format!("https://oidc2.warren.localhost:{port}");
    let app3 = &format!("https://oidc3.warren.localhost:{port}");
    let app4 = &format!("https://oidc4.warren.localhost:{port}");
    let callbacks: Vec<String> =
        [app, app2, app3, app4].iter().map(|a| format!("{a}/warren/oidc/callback")).collect();
    let callbacks: Vec<&str> = callbacks.iter().map(String::as_str).collect();
    let op = warren_testkit::oidc::OidcProvider::start_with_redirects(&callbacks).await;
    let _agent = with_policy(&edge, &up, "oidc", &oidc_policy(&op.issuer, "")).await.expect("bound");
    let mut browser = Browser::new(&edge, ".warren.localhost");

    // Not signed in: sent to the provider with PKCE, never to the upstream.
    let first = browser.get(&format!("{app}/echo?x=1"), &[]).await;
    assert_eq!(first.status, StatusCode::FOUND, "{}", first.body);
    let location = first.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{}/auth?", op.issuer)), "{location}");
    for want in ["code_challenge_method=S256", "code_challenge=", "state=", "nonce=", "client_id=warren-web"]
    {
        assert!(location.contains(want), "{want} in {location}");
    }
    let login = browser.follow(first).await;
    assert!(login.url.starts_with(&op.issuer), "at the provider: {}", login.url);
    assert!(login.body.contains("name=\"password\""), "the provider's login form: {}", login.body);

    // The provider's login form, then its consent form, then back through the callback.
    let consent = browser.submit(&login, &[("login", "alice"), ("password", "wonderland")]).await;
    let page =
        if consent.url.starts_with(&op.issuer) { browser.submit(&consent, &[]).await } else { consent };
    assert_eq!(page.status, StatusCode::OK, "{}: {}", page.url, page.body);
    assert_eq!(page.url, format!("{app}/echo?x=1"), "back where the visitor was going");
    let seen = json(&page.body);
    assert_eq!(seen["headers"]["warren-auth-user-id"], "alice", "{seen}");
    assert_eq!(seen["headers"]["warren-auth-user-email"], "alice@example.test");
    assert_eq!(seen["headers"]["warren-auth-user-name"], "Test User alice");
    assert_eq!(seen["headers"]["warren-auth-issuer"], op.issuer.as_str());
    assert!(
        !seen["headers"]["cookie"].as_str().unwrap_or("").contains("warren_oidc"),
        "the session cookie stays at the edge: {seen}"
    );
    let session =
        browser.cookie("oidc.warren.localhost", "__Host-warren_oidc_session").expect("a session cookie");
    assert!(!session.contains("alice"), "the cookie is encrypted");

    // A visitor cannot claim to be someone else.
    let spoofed = browser.get(&format!("{app}/echo"), &[("warren-auth-user-id", "mallory")]).await;
    assert_eq!(spoofed.status, StatusCode::OK);
    assert_eq!(json(&spoofed.body)["headers"]["warren-auth-user-id"], "alice");

    // A tampered cookie is refused: back to the provider.
    let mut bytes = session.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let mut other = Browser::new(&edge, ".warren.localhost");
    other.set_cookie("oidc.warren.localhost", "__Host-warren_oidc_session", &tampered);
    let refused = other.get(&format!("{app}/echo"), &[]).await;
    assert_eq!(refused.status, StatusCode::FOUND, "a tampered cookie: {}", refused.body);
    assert!(refused.headers["location"].to_str().unwrap().starts_with(&op.issuer));
    // The same cookie on another endpoint (with its own policy) is refused too.
    let _agent2 =
        with_policy(&edge, &up, "oidc2", &oidc_policy(&op.issuer, "          max_session_duration: 3s\n"))
            .await
            .expect("bound");
    let session = browser.cookie("oidc.warren.localhost", "__Host-warren_oidc_session").unwrap();
    other.set_cookie("oidc2.warren.localhost", "__Host-warren_oidc_session", &session);
    let moved = other.get(&format!("{app2}/echo"), &[]).await;
    assert_eq!(moved.status, StatusCode::FOUND, "a cookie moved to another endpoint: {}", moved.body);

    // A callback this browser did not start is refused.
    let forged = other.get(&format!("{app}/warren/oidc/callback?code=abc&state=def"), &[]).await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST, "{}", forged.body);

    // Signing out clears the session.
    let out = browser.get(&format!("{app}/warren/logout"), &[]).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(browser.cookie("oidc.warren.localhost", "__Host-warren_oidc_session").is_none(), "cleared");
    let after = browser.get(&format!("{app}/echo"), &[]).await;
    assert_eq!(after.status, StatusCode::FOUND, "signed out: back to the provider");

    // ngrok's older --oidc flags become the same rule, plus an allow list on the email the
    // edge put in the identity header.
    let flags = |domain: &str| warren_agent::config::LegacyFlags {
        oidc: Some(warren_agent::config::OidcFlags {
            issuer: op.issuer.clone(),
            client_id: "warren-web".into(),
            client_secret: "web-secret".into(),
            allow_domains: vec![domain.into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut agents = Vec::new();
    for (name, domain) in [("oidc3", "example.test"), ("oidc4", "example.org")] {
        let mut ep =
            EndpointConfig::http(&up.url(), Some(&format!("https://{name}.warren.localhost"))).unwrap();
        ep.prepend_policy(flags(domain).rules(true).unwrap().unwrap()).unwrap();
        let mut agent = Agent::start(edge.agent_with(ep));
        within("bind", agent.wait_online()).await.expect("--oidc flags bind");
        agents.push(agent);
    }
    let page = browser.sign_in(&op.issuer, &format!("https://oidc3.warren.localhost:{port}/echo")).await;
    assert_eq!(page.status, StatusCode::OK, "alice@example.test is at an allowed domain: {}", page.body);
    assert_eq!(json(&page.body)["headers"]["warren-auth-user-email"], "alice@example.test");
    let page = browser.sign_in(&op.issuer, &format!("https://oidc4.warren.localhost:{port}/echo")).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "only example.org may enter: {}", page.body);

    // A session ends after max_session_duration (3s here): accepted at first, then refused.
    let page = browser.sign_in(&op.issuer, &format!("{app2}/echo")).await;
    assert_eq!(page.status, StatusCode::OK, "{}: {}", page.url, page.body);
    assert_eq!(page.url, format!("{app2}/echo"), "signed in at the second endpoint");
    within("the 3 s session to expire", async {
        loop {
            let r = browser.get(&format!("{app2}/echo"), &[]).await;
            if r.status == StatusCode::FOUND {
                break;
            }
            assert_eq!(r.status, StatusCode::OK);
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
    .await;
}

/// Misconfigured openid-connect refuses the Bind with the reason.
#[tokio::test]
async fn openid_connect_config_errors_refuse_the_bind() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let op = warren_testkit::oidc::OidcProvider::start().await;
    let unknown =
        with_policy(&edge, &up, "o1", &oidc_policy(&op.issuer, "          idle_session_timeout: 5m\n"))
            .await
            .err()
            .expect("refused");
    assert!(unknown.to_string().contains("idle_session_timeout"), "{unknown}");
    let nowhere =
        with_policy(&edge, &up, "o2", &oidc_policy("http://127.0.0.1:9", "")).await.err().expect("refused");
    assert!(nowhere.to_string().contains("could not be fetched"), "{nowhere}");

    // Unless the edge allows it (a development setting), a policy cannot make the edge call
    // plain http services on its own loopback.
    let strict = TestEdge::start_with(|c| c.idp_allow_loopback_http = false).await;
    let refused = with_policy(&strict, &up, "o3", &oidc_policy(&op.issuer, "")).await.err().expect("refused");
    assert!(refused.to_string().contains("must be https"), "{refused}");
}

/// A tenant's expressions run on the edge's threads, next to every other tenant's requests,
/// so their cost is bounded: too costly a shape is refused at Bind with the reason, and an
/// expression that runs out of its step budget on a request refuses that request (500; never
/// "no match", which would skip the rule) while other endpoints keep answering quickly.
/// Before, nested `all()`s at depth 6 took 0.46 s per request and slowed other endpoints to
/// 1.6 s.
#[tokio::test]
async fn costly_expressions_are_refused_at_bind_or_cut_off_per_request() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let calm = HttpUpstream::start().await;
    let mut ep = EndpointConfig::http(&calm.url(), Some("https://calm-cel.warren.localhost")).unwrap();
    ep.traffic_policy = None;
    let mut bystander = Agent::start(edge.agent_with(ep));
    within("bystander", bystander.wait_online()).await.unwrap();

    let l = "[1,2,3,4,5,6,7,8,9,10]";
    let deep = format!("{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, {l}.all(e, {l}.all(f, true))))))");
    let policy =
        serde_json::json!({"on_http_request": [{"expressions": [deep], "actions": [{"type": "deny"}]}]});
    let err = with_policy(&edge, &up, "deep-cel", &policy.to_string()).await.err().expect("refused");
    assert!(err.to_string().contains("nested 6 deep"), "{err}");

    // Every pair of the header's values: quadratic in what the visitor sends.
    let pairs = "hasReqHeader('x-list') && req.headers['x-list'].map(a, req.headers['x-list'].map(b, a + b)).size() > 0";
    let policy = serde_json::json!({"on_http_request": [
        {"expressions": [pairs], "actions": [{"type": "deny", "config": {"status_code": 403}}]}
    ]});
    let _agent = with_policy(&edge, &up, "costly-cel", &policy.to_string()).await.expect("bound");
    let (status, _, _) = get(&edge, "costly-cel", "/echo", &[]).await;
    assert_eq!(status, StatusCode::OK, "no x-list header: the rule does not match");
    let few: Vec<(&str, &str)> = vec![("x-list", "a"); 3];
    let (status, _, _) = get(&edge, "costly-cel", "/echo", &few).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "three values: the rule matches and denies");
    let before = up.requests.load(Ordering::SeqCst);
    let many: Vec<(&str, &str)> = vec![("x-list", "abc"); 90];
    let attacks = (0..8).map(|_| get(&edge, "costly-cel", "/echo", &many));
    let calm_host = "calm-cel.warren.localhost";
    let (results, _) = tokio::join!(futures_util::future::join_all(attacks), async {
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let (status, _, _) = https_get(&edge, calm_host, "/").await;
            assert_eq!(status, StatusCode::OK);
            assert!(start.elapsed() < std::time::Duration::from_secs(1), "{:?}", start.elapsed());
        }
    });
    for (status, _, body) in results {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(body.contains("ERR_WARREN_POLICY_BUDGET"), "{body}");
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), before, "none of them reached the upstream");
}

fn jwks_policy(url: &str) -> String {
    format!(
        "on_http_request:\n  - actions:\n      - type: jwt-validation\n        config:\n          issuer: {{allow_list: [{{value: \"https://issuer.example\"}}]}}\n          audience: {{allow_list: [{{value: \"api://warren\"}}]}}\n          jws:\n            allowed_algorithms: [RS256]\n            keys: {{sources: {{additional_jkus: [\"{url}\"]}}}}\n"
    )
}

/// A tenant's policy names the URLs the edge fetches keys and discovery documents from, from
/// inside the operator's network. Loopback, private and link-local addresses are refused
/// (after resolution: `localhost` counts), and the agent is told only that the fetch failed:
/// before, the Bind error told open, closed and filtered ports apart ("tls handshake eof",
/// "Connection refused", "timed out"), a port scanner for any authtoken holder.
#[tokio::test]
async fn identity_provider_fetches_reach_no_internal_address_and_tell_nothing_about_ports() {
    let up = HttpUpstream::start().await;
    let strict = TestEdge::start_with(|c| c.idp_allow_loopback_http = false).await;
    let open_port = strict.api_addr().port();
    for url in [
        format!("https://127.0.0.1:{open_port}/jwks"),
        format!("https://localhost:{open_port}/jwks"),
        "https://10.255.255.1/jwks".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://[::1]/jwks".to_owned(),
    ] {
        let err =
            with_policy(&strict, &up, "ssrf", &jwks_policy(&url)).await.err().expect("refused").to_string();
        // Exactly this, so nothing about the address or the port can be in it.
        let generic = format!(
            "endpoint refused: invalid traffic policy: jwt-validation: the keys at {url} could not be fetched (the edge's log says why) [ERR_NGROK_9010]"
        );
        assert_eq!(err, generic, "{url}");
    }
    // Where loopback is allowed (a development edge), an open port and a closed one still
    // read the same to the agent.
    let dev = TestEdge::start().await;
    let closed = refused_addr().await;
    let open = dev.api_addr();
    let mut messages = Vec::new();
    for addr in [open, closed] {
        let url = format!("http://{addr}/jwks");
        let err =
            with_policy(&dev, &up, "scan", &jwks_policy(&url)).await.err().expect("refused").to_string();
        messages.push(err.replace(&addr.to_string(), "ADDR"));
    }
    assert_eq!(messages[0], messages[1], "open and closed ports look alike");
}

/// A request through the tunnel, with the body's bytes as they came (compressed ones too).
async fn get_bytes(
    edge: &TestEdge,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
    let host = format!("{name}.warren.localhost");
    let tls = tls_connect(edge.https_addr(), &host, &edge.ca_pem, &[b"http/1.1"]).await;
    let mut send = http1(tls).await;
    let mut b = Request::get(path).header("host", &host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = within("response", send.send_request(b.body(empty()).unwrap())).await.expect("response");
    let (parts, body) = res.into_parts();
    (parts.status, parts.headers, http_body_util::BodyExt::collect(body).await.unwrap().to_bytes().to_vec())
}

fn gunzip(bytes: &[u8]) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(bytes), &mut s).expect("gzip");
    s
}

/// `compress-response` compresses what its rule matches with what the visitor prefers among
/// the listed algorithms; `circuit-breaker` refuses requests without reaching the upstream
/// once enough of them failed; ngrok's `--compression` flag is the same rule. Values the edge
/// cannot act on refuse the Bind with the field named.
#[tokio::test]
async fn compress_response_and_circuit_breaker_act_and_bad_values_are_refused() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let doc = r#"
on_http_response:
  - expressions: ["res.headers['content-type'].exists(t, t.startsWith('application/json'))"]
    actions:
      - type: compress-response
        config: {algorithms: [br, gzip]}
"#;
    let _agent = with_policy(&edge, &up, "squeeze", doc).await.expect("bound");
    let long = "x".repeat(3000);
    let (s, h, bytes) =
        get_bytes(&edge, "squeeze", "/echo", &[("accept-encoding", "gzip"), ("x-long", &long)]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-encoding"], "gzip", "br is preferred but not accepted");
    assert_eq!(h["vary"], "accept-encoding");
    assert!(bytes.len() < 1000, "{} bytes", bytes.len());
    assert_eq!(json(&gunzip(&bytes))["headers"]["x-long"], long.as_str());
    let (_, h, _) = get_bytes(&edge, "squeeze", "/echo", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(h["content-encoding"], "br", "equal q-values: the policy's order");
    let (_, h, body) = get_bytes(&edge, "squeeze", "/", &[("accept-encoding", "gzip")]).await;
    assert!(h.get("content-encoding").is_none(), "the rule matches JSON only");
    assert_eq!(body, b"hello from upstream");

    // Two failures in four requests reach the threshold: the fifth is refused at the edge.
    let doc = r#"
on_http_request:
  - actions:
      - type: circuit-breaker
        config: {error_threshold: 0.5, volume_threshold: 4, tripped_duration: 1m}
"#;
    let _fuse = with_policy(&edge, &up, "fuse", doc).await.expect("bound");
    let before = up.requests.load(Ordering::SeqCst);
    for path in ["/status/500", "/echo", "/status/503", "/echo"] {
        get_bytes(&edge, "fuse", path, &[]).await;
    }
    let (s, h, body) = get_bytes(&edge, "fuse", "/echo", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("ERR_NGROK_3202"));
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&wait), "retry after {wait}s of a 1m trip");
    assert_eq!(
        up.requests.load(Ordering::SeqCst) - before,
        4,
        "the refused request never reached the upstream"
    );

    // ngrok's --compression flag.
    let mut ep = EndpointConfig::http(&up.url(), Some("https://zipflag.warren.localhost")).unwrap();
    let flags = warren_agent::config::LegacyFlags { compression: true, ..Default::default() };
    ep.prepend_policy(flags.rules(true).unwrap().unwrap()).unwrap();
    let mut flagged = Agent::start(edge.agent_with(ep));
    within("bind", flagged.wait_online()).await.expect("bound");
    let (_, h, bytes) = get_bytes(&edge, "zipflag", "/", &[("accept-encoding", "gzip")]).await;
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(gunzip(&bytes), "hello from upstream");

    for (doc, field) in [
        (
            r#"{"on_http_response":[{"actions":[{"type":"compress-response","config":{"algorithms":["compress"]}}]}]}"#,
            "compress",
        ),
        (
            r#"{"on_http_response":[{"actions":[{"type":"compress-response","config":{"algorithms":["zstd"]}}]}]}"#,
            "zstd",
        ),
        (r#"{"on_http_request":[{"actions":[{"type":"compress-response"}]}]}"#, "on_http_response only"),
        (
            r#"{"on_http_request":[{"actions":[{"type":"circuit-breaker","config":{"error_threshold":1.5}}]}]}"#,
            "error_threshold",
        ),
        (
            r#"{"on_http_request":[{"actions":[{"type":"circuit-breaker","config":{"window_duration":"10m"}}]}]}"#,
            "window_duration",
        ),
        (
            r#"{"on_http_request":[{"actions":[{"type":"circuit-breaker","config":{"num_buckets":20}}]}]}"#,
            "num_buckets",
        ),
        (r#"{"on_http_request":[{"actions":[{"type":"circuit-breaker","config":{"ratio":0.5}}]}]}"#, "ratio"),
    ] {
        let err = with_policy(&edge, &up, "refused", doc).await.err().expect("refused");
        assert!(err.to_string().contains(field), "{doc}: {err}");
    }
}
