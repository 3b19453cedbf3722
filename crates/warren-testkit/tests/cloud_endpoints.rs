//! Cloud endpoints (`POST /endpoints`, type `cloud`): endpoints without an agent, answered by
//! their traffic policy alone, served at once, changed and deleted through the API; refused
//! by name where warren does not do what is asked, and never on another account's name.

use hyper::StatusCode;
use serde_json::{Value, json};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

const FRONT: &str = r#"
on_http_request:
  - expressions: ["req.url.path == '/old'"]
    actions:
      - type: redirect
        config:
          to: https://example.com/new
          status_code: 301
  - expressions: ["req.url.path.startsWith('/api')"]
    actions:
      - type: forward-internal
        config:
          url: https://api.internal
  - expressions: ["req.url.path == '/maintenance'"]
    actions:
      - type: custom-response
        config:
          status_code: 503
          content: "down for maintenance"
          headers:
            retry-after: "120"
  - actions:
      - type: deny
        config:
          status_code: 404
"#;

async fn create(edge: &TestEdge, key: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = edge.api("POST", "/endpoints", Some(key), Some(body)).await;
    (s, b)
}

#[tokio::test]
async fn a_cloud_endpoint_answers_with_no_agent_and_forwards_to_an_internal_one() {
    let edge = TestEdge::start().await;
    let key = edge.api_key.clone();
    let (s, ep) = create(
        &edge,
        &key,
        json!({"url": "https://docs.warren.localhost:443", "type": "cloud", "traffic_policy": FRONT,
               "description": "front door", "metadata": "{\"team\":\"web\"}", "bindings": ["public"]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ep}");
    let id = ep["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ep_"), "{ep}");
    assert_eq!(ep["type"], "cloud");
    assert_eq!(ep["url"], format!("https://docs.warren.localhost:{}", edge.https_addr().port()));
    assert_eq!(ep["tunnel_session"], Value::Null);
    assert_eq!(ep["traffic_policy"], FRONT);
    assert_eq!(ep["bindings"], json!(["public"]));

    // No agent anywhere: the policy answers.
    let (s, h, _) = https_get(&edge, "docs.warren.localhost", "/old").await;
    assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(h["location"], "https://example.com/new");
    let (s, h, body) = https_get(&edge, "docs.warren.localhost", "/maintenance").await;
    assert_eq!((s, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance"));
    assert_eq!(h["retry-after"], "120");
    let (s, _, _) = https_get(&edge, "docs.warren.localhost", "/anything").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // forward-internal with nothing online yet halts with 502, then reaches the agent's
    // internal endpoint once it is up.
    let (s, _, body) = https_get(&edge, "docs.warren.localhost", "/api/orders").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    let api = named_upstream("internal api").await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&api.to_string(), Some("https://api.internal")).unwrap()),
    );
    within("internal endpoint online", agent.wait_online()).await.unwrap();
    let (s, _, body) = https_get(&edge, "docs.warren.localhost", "/api/orders").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "internal api /api/orders"));
    // Plain http visitors are sent to https, as for an agent's https endpoint.
    let (s, h, _) = plain_get(edge.http_addr(), "docs.warren.localhost", "/maintenance").await;
    assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
    assert!(h["location"].to_str().unwrap().starts_with("https://docs.warren.localhost"), "{h:?}");

    // Listed with the agent's endpoint, newest first; read back by id.
    let (s, _, list) = edge.api("GET", "/endpoints", Some(&key), None).await;
    assert_eq!(s, StatusCode::OK);
    let mut types: Vec<&str> =
        list["endpoints"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    assert_eq!(types, ["cloud", "ephemeral"], "{list}");
    let (s, _, got) = edge.api("GET", &format!("/endpoints/{id}"), Some(&key), None).await;
    assert_eq!((s, &got["description"]), (StatusCode::OK, &json!("front door")));

    // A change is served at once.
    let new_policy = "on_http_request:\n  - actions:\n      - type: custom-response\n        config:\n          status_code: 200\n          content: v2\n";
    let (s, _, upd) = edge
        .api(
            "PATCH",
            &format!("/endpoints/{id}"),
            Some(&key),
            Some(json!({"id": id, "traffic_policy": new_policy})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{upd}");
    assert_eq!(upd["description"], "front door", "fields left out stay");
    let (s, _, body) = https_get(&edge, "docs.warren.localhost", "/old").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "v2"));

    // Deleted: gone from the API and from the listeners.
    let (s, _, _) = edge.api("DELETE", &format!("/endpoints/{id}"), Some(&key), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, body) = https_get(&edge, "docs.warren.localhost", "/old").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("ERR_NGROK_3200"), "{body}");
    let (s, _, _) = edge.api("GET", &format!("/endpoints/{id}"), Some(&key), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_policy_that_ends_without_answering_gets_ngroks_error_not_a_silent_pass() {
    let edge = TestEdge::start().await;
    let policy = "on_http_request:\n  - expressions: [\"req.url.path == '/only'\"]\n    actions:\n      - type: custom-response\n        config:\n          status_code: 200\n          content: only\n";
    let (s, b) = create(
        &edge,
        &edge.api_key,
        json!({"url": "https://partial.warren.localhost", "traffic_policy": policy}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _, body) = https_get(&edge, "partial.warren.localhost", "/only").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "only"));
    let (s, _, body) = https_get(&edge, "partial.warren.localhost", "/other").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(body.contains("ERR_NGROK_6029"), "{body}");
}

#[tokio::test]
async fn cloud_endpoints_refuse_what_they_do_not_do_by_name() {
    let edge = TestEdge::start().await;
    let key = edge.api_key.clone();
    let ok_policy = "on_http_request:\n  - actions:\n      - type: deny\n";
    for (body, says) in [
        (json!({"url": "tcp://1.tcp.warren.localhost:20000", "traffic_policy": ok_policy}), "tcp and tls"),
        (json!({"url": "https://*.warren.localhost", "traffic_policy": ok_policy}), "wildcard"),
        (json!({"url": "https://x.warren.localhost/path", "traffic_policy": ok_policy}), "without a path"),
        (json!({"url": "https://x.warren.localhost:8443", "traffic_policy": ok_policy}), "port"),
        (json!({"url": "https://api.internal", "traffic_policy": ok_policy}), "internal"),
        (json!({"url": "ftp://x.warren.localhost", "traffic_policy": ok_policy}), "scheme"),
        (json!({"traffic_policy": ok_policy}), "url is required"),
        (json!({"url": "https://x.warren.localhost"}), "traffic_policy is required"),
        (
            json!({"url": "https://x.warren.localhost", "traffic_policy": ok_policy, "type": "ephemeral"}),
            "only cloud",
        ),
        (
            json!({"url": "https://x.warren.localhost", "traffic_policy": ok_policy, "bindings": ["internal"]}),
            "internal cloud endpoints",
        ),
        (
            json!({"url": "https://x.warren.localhost", "traffic_policy": ok_policy, "pooling_enabled": true}),
            "pooling_enabled",
        ),
        (json!({"url": "https://x.warren.localhost", "traffic_policy": ok_policy, "region": "eu"}), "region"),
        (
            json!({"url": "https://x.warren.localhost", "traffic_policy": "on_http_request:\n  - actions:\n      - type: add-headers\n        config:\n          headers:\n            a: b\n"}),
            "terminating action",
        ),
        (
            json!({"url": "https://x.warren.localhost", "traffic_policy": "on_http_request:\n  - expressions: [\"req.nope == 1\"]\n    actions:\n      - type: deny\n"}),
            "invalid traffic policy",
        ),
        (
            json!({"url": "https://x.warren.localhost", "traffic_policy": "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config:\n          min_version: \"1.3\"\non_http_request:\n  - actions:\n      - type: deny\n"}),
            "terminate-tls",
        ),
        (json!({"url": "https://a.b.warren.localhost", "traffic_policy": ok_policy}), "not covered"),
        (json!({"url": "https://shop.example.org", "traffic_policy": ok_policy}), "reserve"),
    ] {
        let (s, b) = create(&edge, &key, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
        let msg = b["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let (_, _, list) = edge.api("GET", "/endpoints", Some(&key), None).await;
    assert_eq!(list["endpoints"], json!([]), "nothing was made");

    // Only admins make, change and delete them; every role reads, secrets masked.
    let team = edge.tenant("team").await;
    let guarded = "on_http_request:\n  - actions:\n      - type: basic-auth\n        config:\n          credentials: [\"user:s3cret-pass\"]\n      - type: custom-response\n        config:\n          content: in\n";
    for who in [&team.developer.api_key, &team.read_only.api_key] {
        let (s, b) =
            create(&edge, who, json!({"url": "https://team.warren.localhost", "traffic_policy": guarded}))
                .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    }
    let (s, made) = create(
        &edge,
        &team.admin.api_key,
        json!({"url": "https://team.warren.localhost", "traffic_policy": guarded}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().unwrap();
    let (_, _, seen) =
        edge.api("GET", &format!("/endpoints/{id}"), Some(&team.read_only.api_key), None).await;
    let shown = seen["traffic_policy"].as_str().unwrap();
    assert!(!shown.contains("s3cret-pass") && shown.contains("********"), "{shown}");
    let (s, _, _) = edge
        .api(
            "PATCH",
            &format!("/endpoints/{id}"),
            Some(&team.developer.api_key),
            Some(json!({"description": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Basic auth in a cloud endpoint's policy is enforced like anywhere else.
    let (s, _, _) = https_get(&edge, "team.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // An agent's endpoint is not changed or deleted here.
    let up = named_upstream("agent").await;
    let mut agent =
        Agent::start(edge.agent_with(
            EndpointConfig::http(&up.to_string(), Some("https://agent.warren.localhost")).unwrap(),
        ));
    within("online", agent.wait_online()).await.unwrap();
    let (_, _, list) = edge.api("GET", "/endpoints", Some(&key), None).await;
    let agent_ep = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "ephemeral")
        .and_then(|e| e["id"].as_str())
        .unwrap()
        .to_owned();
    for method in ["PATCH", "DELETE"] {
        let (s, _, b) =
            edge.api(method, &format!("/endpoints/{agent_ep}"), Some(&key), Some(json!({}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(b["msg"].as_str().unwrap().contains("agent's endpoint"), "{b}");
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_name_is_one_endpoints_across_agents_cloud_endpoints_and_accounts() {
    let edge = TestEdge::start().await;
    let key = edge.api_key.clone();
    let other = edge.tenant("other").await;
    let policy = "on_http_request:\n  - actions:\n      - type: custom-response\n        config:\n          content: cloud\n";

    // Another account's agent holds a name (over tls): no cloud endpoint may take it, in
    // either scheme.
    let up = named_upstream("theirs").await;
    let mut cfg = other.agent_config(&edge);
    cfg.endpoints =
        vec![EndpointConfig::http(&up.to_string(), Some("https://theirs.warren.localhost")).unwrap()];
    let mut theirs = Agent::start(cfg);
    within("online", theirs.wait_online()).await.unwrap();
    for url in ["https://theirs.warren.localhost", "http://theirs.warren.localhost"] {
        let (s, b) = create(&edge, &key, json!({"url": url, "traffic_policy": policy})).await;
        assert_eq!(s, StatusCode::CONFLICT, "{url}: {b}");
    }
    let (_, _, body) = https_get(&edge, "theirs.warren.localhost", "/").await;
    assert_eq!(body, "theirs /", "their endpoint still serves");

    // This account's cloud endpoint holds a name: no agent binds it, of any account or scheme.
    let (s, mine) =
        create(&edge, &key, json!({"url": "https://mine.warren.localhost", "traffic_policy": policy})).await;
    assert_eq!(s, StatusCode::CREATED, "{mine}");
    let (s, b) =
        create(&edge, &key, json!({"url": "https://mine.warren.localhost", "traffic_policy": policy})).await;
    assert_eq!(s, StatusCode::CONFLICT, "a second cloud endpoint on one URL: {b}");
    let (s, b) = create(
        &edge,
        &other.admin.api_key,
        json!({"url": "http://mine.warren.localhost", "traffic_policy": policy}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "another account, another scheme: {b}");
    let attempts = [
        (
            edge.agent_with(
                EndpointConfig::http(&up.to_string(), Some("https://mine.warren.localhost")).unwrap(),
            ),
            "own account",
        ),
        (
            {
                let mut c = other.agent_config(&edge);
                c.endpoints = vec![
                    EndpointConfig::http(&up.to_string(), Some("http://mine.warren.localhost")).unwrap(),
                ];
                c
            },
            "other account, http",
        ),
        (
            edge.agent_with(
                EndpointConfig::tls(&up.to_string(), Some("tls://mine.warren.localhost"), None).unwrap(),
            ),
            "tls on the https host",
        ),
    ];
    for (cfg, who) in attempts {
        let err = within("bind refused", Agent::start(cfg).wait_online()).await.unwrap_err();
        assert!(err.to_string().contains("ERR_NGROK"), "{who}: {err}");
    }
    let (_, _, body) = https_get(&edge, "mine.warren.localhost", "/").await;
    assert_eq!(body, "cloud");

    // Another account cannot see, change or delete it.
    let id = mine["id"].as_str().unwrap();
    for method in ["GET", "PATCH", "DELETE"] {
        let (s, _, _) =
            edge.api(method, &format!("/endpoints/{id}"), Some(&other.admin.api_key), Some(json!({}))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method}");
    }
    // A domain another account reserved is not this account's to serve.
    let (s, _, b) = edge
        .api(
            "POST",
            "/reserved_domains",
            Some(&other.admin.api_key),
            Some(json!({"domain": "held.warren.localhost"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) =
        create(&edge, &key, json!({"url": "https://held.warren.localhost", "traffic_policy": policy})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    theirs.stop().await.unwrap();
}

/// ngrok's set-vars example, as its docs write it, on a cloud endpoint: copied policies run.
#[tokio::test]
async fn ngroks_set_vars_example_runs_on_a_cloud_endpoint() {
    let edge = TestEdge::start().await;
    let policy = r#"
on_http_request:
  - actions:
      - type: set-vars
        config:
          vars:
            - variable_a: Hello,
            - variable_b: World!
            - path_hash: "${hash.sha256(req.url.path)}"
  - expressions: ["vars.variable_a == 'Hello,' && req.url.path == '/hash'"]
    actions:
      - type: custom-response
        config:
          status_code: 200
          body: ${vars.path_hash}
  - actions:
      - type: custom-response
        config:
          status_code: 200
          headers:
            content-type: text/plain
          body: ${vars.variable_a} ${vars.variable_b}
"#;
    let (s, b) = create(
        &edge,
        &edge.api_key,
        json!({"url": "https://vars.warren.localhost", "traffic_policy": policy}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _, body) = https_get(&edge, "vars.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "Hello, World!"));
    let (_, _, body) = https_get(&edge, "vars.warren.localhost", "/hash").await;
    assert_eq!(body, "43768ac6bb873d1e462724604250fd700a9f0d2f264006c24223bedc00496c91", "sha256 of /hash");
}

/// A reservation never covers another account's cloud endpoint, and an account has at most
/// `max_cloud_endpoints_per_account` of them.
#[tokio::test]
async fn reservations_and_the_per_account_limit_hold_for_cloud_endpoints() {
    let edge = TestEdge::start_with(|c| c.limits.max_cloud_endpoints_per_account = 2).await;
    let key = edge.api_key.clone();
    let policy = "on_http_request:\n  - actions:\n      - type: deny\n";
    // (Plain http: the edge's certificate covers one level below its domain.)
    for name in ["one", "x.team"] {
        let url = format!("http://{name}.warren.localhost");
        let (s, b) = create(&edge, &key, json!({"url": url, "traffic_policy": policy})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (s, b) =
        create(&edge, &key, json!({"url": "https://three.warren.localhost", "traffic_policy": policy})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b["msg"].as_str().unwrap().contains("at most 2"), "{b}");

    // Another account can neither reserve the cloud endpoint's name nor a wildcard over it.
    let other = edge.tenant("other").await;
    for domain in ["x.team.warren.localhost", "*.team.warren.localhost"] {
        let (s, _, b) = edge
            .api("POST", "/reserved_domains", Some(&other.admin.api_key), Some(json!({"domain": domain})))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{domain}: {b}");
    }
    // And a name another account reserved takes no cloud endpoint of this one.
    let (s, _, b) = edge
        .api(
            "POST",
            "/reserved_domains",
            Some(&other.admin.api_key),
            Some(json!({"domain": "*.held.warren.localhost"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _, _) = edge.api("DELETE", "/endpoints/x", Some(&key), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
