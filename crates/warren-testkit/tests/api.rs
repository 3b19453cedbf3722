//! The REST API through a real HTTP client, as ngrok API clients call it.

use hyper::StatusCode;
use serde_json::{Value, json};
use warren_agent::{Agent, AgentError, EndpointConfig, Status};
use warren_testkit::*;

/// Creates a user with `role` and an API key owned by them; returns the key.
async fn key_for(edge: &TestEdge, email: &str, role: &str) -> (String, String) {
    let admin = edge.api_key.as_str();
    let (s, _, user) =
        edge.api("POST", "/users", Some(admin), Some(json!({"email": email, "role": role}))).await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
    let body = json!({"description": format!("{role} key"), "owner_id": user["id"]});
    let (s, _, key) = edge.api("POST", "/api_keys", Some(admin), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    (user["id"].as_str().unwrap().to_owned(), key["token"].as_str().unwrap().to_owned())
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["status_code"], want.as_u16(), "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    assert!(body["msg"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn credentials_crud_with_pagination() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let body = json!({"description": "ci runner", "metadata": "{\"team\":\"web\"}", "acl": ["bind:*.ci.warren.localhost"]});
    let (s, _, created) = edge.api("POST", "/credentials", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("cr_") && created["uri"] == format!("http://api.warren.localhost/credentials/{id}")
    );
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("{id}_")));
    assert_eq!(created["acl"], json!(["bind:*.ci.warren.localhost"]));
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    // The token works for an agent, inside its ACL.
    let up = HttpUpstream::start().await;
    let mut cfg =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("http://a.ci.warren.localhost")).unwrap());
    cfg.authtoken = token.clone();
    let mut agent = Agent::start(cfg);
    within("agent with API-made token", agent.wait_online()).await.unwrap();

    // get never shows the token again.
    let (s, _, got) = edge.api("GET", &format!("/credentials/{id}"), key, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["token"], Value::Null);
    assert_eq!(got["description"], "ci runner");

    let (s, _, updated) =
        edge.api("PATCH", &format!("/credentials/{id}"), key, Some(json!({"description": "renamed"}))).await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(
        (updated["description"].as_str(), updated["metadata"].as_str()),
        (Some("renamed"), Some("{\"team\":\"web\"}"))
    );

    // Pagination: 5 more, pages of 2, newest first, every id once.
    for i in 0..5 {
        let (s, _, _) =
            edge.api("POST", "/credentials", key, Some(json!({"description": format!("t{i}")}))).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let mut path = "/credentials?limit=2".to_owned();
    let mut ids = Vec::new();
    loop {
        let (s, _, page) = edge.api("GET", &path, key, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert_eq!(page["uri"], "http://api.warren.localhost/credentials", "absolute, as ngrok's");
        let items = page["credentials"].as_array().unwrap();
        assert!(items.len() <= 2);
        ids.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match page["next_page_uri"].as_str() {
            Some(next) => path = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(ids.len(), 7, "initial token + 1 + 5");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(ids, sorted, "newest first");

    // delete revokes: the agent's session ends and it stops with ngrok's auth error.
    let (s, _, _) = edge.api("DELETE", &format!("/credentials/{id}"), key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let stopped = within("agent stops", async {
        loop {
            if let Status::Stopped(e) = agent.next_status().await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(&stopped, Some(AgentError::Auth(m)) if m.contains("ERR_NGROK_107")), "{stopped:?}");
    let (s, _, body) = edge.api("GET", &format!("/credentials/{id}"), key, None).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "ERR_WARREN_404");
}

#[tokio::test]
async fn api_key_rotation_new_key_works_old_key_gets_401() {
    let edge = TestEdge::start().await;
    let old = edge.api_key.clone();
    let (s, _, new) =
        edge.api("POST", "/api_keys", Some(&old), Some(json!({"description": "rotated"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{new}");
    let new_token = new["token"].as_str().unwrap().to_owned();
    let old_id = old.split('_').take(2).collect::<Vec<_>>().join("_");
    let (s, _, list) = edge.api("GET", "/api_keys", Some(&new_token), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
    assert!(list["keys"].as_array().unwrap().iter().all(|k| k["token"].is_null()), "tokens never listed");
    let (s, _, _) = edge.api("DELETE", &format!("/api_keys/{old_id}"), Some(&new_token), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, body) = edge.api("GET", "/api_keys", Some(&old), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "ERR_WARREN_401");
    let (s, _, _) = edge.api("GET", "/api_keys", Some(&new_token), None).await;
    assert_eq!(s, StatusCode::OK);
    // An expired key is refused too.
    let (_, _, exp) = edge
        .api("POST", "/api_keys", Some(&new_token), Some(json!({"expires_at": "2001-01-01T00:00:00Z"})))
        .await;
    let (s, _, body) = edge.api("GET", "/credentials", exp["token"].as_str(), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "ERR_WARREN_401");
}

#[tokio::test]
async fn requests_without_version_key_or_valid_json_get_clear_errors() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let (s, _, body) = edge.api_raw("GET", "/credentials", key, None, None).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "ERR_NGROK_218");
    let (s, _, body) = edge.api("GET", "/credentials", None, None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "ERR_WARREN_401");
    let (s, _, body) = edge.api("GET", "/credentials", Some("ak_garbage"), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "ERR_WARREN_401");
    // An authtoken is not an API key.
    let (s, _, body) = edge.api("GET", "/credentials", Some(&edge.authtoken), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "ERR_WARREN_401");
    let (s, _, body) =
        edge.api_raw("POST", "/credentials", key, Some("2"), Some(b"{not json".to_vec())).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "ERR_WARREN_400");
    assert!(body["msg"].as_str().unwrap().contains("invalid JSON"), "{body}");
    let (s, _, body) = edge.api("POST", "/credentials", key, Some(json!({"acl": ["tunnel:*"]}))).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "ERR_WARREN_400");
    assert!(body["msg"].as_str().unwrap().contains("tunnel:*"), "{body}");
    let (s, _, body) = edge.api("POST", "/credentials", key, Some(json!({"descripton": "typo"}))).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "ERR_WARREN_400");
    assert!(body["msg"].as_str().unwrap().contains("descripton"), "{body}");
    for path in [
        "/credentials/cr_nope",
        "/api_keys/ak_nope",
        "/users/usr_nope",
        "/tunnel_sessions/ts_nope",
        "/nothing",
    ] {
        let (s, _, body) = edge.api("GET", path, key, None).await;
        assert_error(s, &body, StatusCode::NOT_FOUND, "ERR_WARREN_404");
    }
    let (s, _, body) = edge.api("GET", "/credentials?limit=abc", key, None).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "ERR_WARREN_400");
}

#[tokio::test]
async fn roles_are_checked_on_every_route() {
    let edge = TestEdge::start().await;
    let (dev_id, dev) = key_for(&edge, "dev@example.com", "developer").await;
    let (_, ro) = key_for(&edge, "ro@example.com", "read-only").await;

    // Read-only reads everything and changes nothing.
    for path in ["/credentials", "/api_keys", "/users", "/tunnel_sessions", "/endpoints", "/tunnels"] {
        let (s, _, body) = edge.api("GET", path, Some(&ro), None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
    }
    let (s, _, body) = edge.api("POST", "/credentials", Some(&ro), Some(json!({}))).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "ERR_WARREN_403");

    // A developer makes their own authtokens, and cannot touch others' or manage users.
    let (s, _, mine) =
        edge.api("POST", "/credentials", Some(&dev), Some(json!({"description": "mine"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{mine}");
    assert_eq!(mine["owner_id"], dev_id.as_str());
    let (s, _, _) = edge
        .api(
            "PATCH",
            &format!("/credentials/{}", mine["id"].as_str().unwrap()),
            Some(&dev),
            Some(json!({"description": "still mine"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, list) = edge.api("GET", "/credentials", Some(&dev), None).await;
    let admins = list["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["description"] == "initial authtoken")
        .unwrap()
        .clone();
    let (s, _, body) = edge
        .api("DELETE", &format!("/credentials/{}", admins["id"].as_str().unwrap()), Some(&dev), None)
        .await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "ERR_WARREN_403");
    let (s, _, body) = edge
        .api("POST", "/users", Some(&dev), Some(json!({"email": "x@example.com", "role": "admin"})))
        .await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "ERR_WARREN_403");
    let (s, _, body) =
        edge.api("POST", "/credentials", Some(&dev), Some(json!({"owner_id": "usr_someoneelse"}))).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "ERR_WARREN_403");

    // Demoting the developer takes effect on their very next call.
    let admin = Some(edge.api_key.as_str());
    let (s, _, u) =
        edge.api("PATCH", &format!("/users/{dev_id}"), admin, Some(json!({"role": "read-only"}))).await;
    assert_eq!((s, u["role"].as_str()), (StatusCode::OK, Some("read-only")));
    let (s, _, body) = edge.api("POST", "/credentials", Some(&dev), Some(json!({}))).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "ERR_WARREN_403");
}

#[tokio::test]
async fn each_key_is_rate_limited_with_retry_after() {
    let edge = TestEdge::start_with(|c| c.api_rate_limit = (5, std::time::Duration::from_secs(3600))).await;
    let key = Some(edge.api_key.as_str());
    for _ in 0..5 {
        let (s, _, _) = edge.api("GET", "/users", key, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, headers, body) = edge.api("GET", "/users", key, None).await;
    assert_error(s, &body, StatusCode::TOO_MANY_REQUESTS, "ERR_NGROK_226");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 3000 && retry <= 3600, "{retry}");
}

#[tokio::test]
async fn live_sessions_and_endpoints_are_listed_and_can_be_stopped() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://listed.warren.localhost")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();

    let (s, _, list) = edge.api("GET", "/tunnel_sessions", key, None).await;
    assert_eq!(s, StatusCode::OK);
    let sessions = list["tunnel_sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{list}");
    let ts = sessions[0]["id"].as_str().unwrap().to_owned();
    assert!(ts.starts_with("ts_"));
    assert_eq!(sessions[0]["ip"], "127.0.0.1");
    assert!(sessions[0]["credential"]["id"].as_str().unwrap().starts_with("cr_"));
    let (_, _, eps) = edge.api("GET", "/endpoints", key, None).await;
    let url = format!("https://listed.warren.localhost:{}", edge.https_addr().port());
    assert_eq!(eps["endpoints"][0]["url"], url.as_str(), "{eps}");
    assert_eq!(eps["endpoints"][0]["tunnel_session"]["id"], ts.as_str());

    let (s, _, _) = edge.api("POST", &format!("/tunnel_sessions/{ts}/stop"), key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(within("agent stops", agent.join()).await, Err(AgentError::StoppedByEdge));
    let (_, _, list) = edge.api("GET", "/tunnel_sessions", key, None).await;
    assert!(list["tunnel_sessions"].as_array().unwrap().is_empty(), "{list}");
}

#[tokio::test]
async fn the_openapi_document_is_public_and_every_operation_in_it_is_routed() {
    let edge = TestEdge::start().await;
    let (s, _, doc) = edge.api_raw("GET", "/openapi.json", None, None, None).await;
    assert_eq!(s, StatusCode::OK, "no key or version header needed: {doc}");
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for resource in [
        "/credentials",
        "/api_keys",
        "/reserved_domains",
        "/reserved_addrs",
        "/ip_policies",
        "/tunnel_sessions",
        "/traffic_policy",
    ] {
        assert!(paths.contains_key(resource), "{resource} documented");
    }
    let mut checked = 0;
    for (path, ops) in paths {
        if path == "/openapi.json" {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let concrete = path.replace("{id}", "xx_doesnotexist");
            let body = matches!(method.as_str(), "POST" | "PATCH").then(|| json!({}));
            let (s, _, res) = edge.api(&method, &concrete, Some(&edge.api_key), body).await;
            assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented but not routed");
            assert!(
                !(s == StatusCode::NOT_FOUND && res["msg"] == "no such API resource"),
                "{method} {path} is documented but not routed"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} operations documented");
}

/// Every `uri` and `next_page_uri` is absolute, so API clients that follow them as given
/// (PyPI `ngrok-api`) reach page two: built from `api_public_url` when set, else from the
/// request's `Host`.
#[tokio::test]
async fn uris_are_absolute_from_the_public_url_or_the_host() {
    let edge =
        TestEdge::start_with(|c| c.api_public_url = Some("https://api.tunnels.example.com/".into())).await;
    let key = Some(edge.api_key.as_str());
    for _ in 0..3 {
        edge.api("POST", "/ip_policies", key, Some(serde_json::json!({"description": "p"}))).await;
    }
    let (_, _, page) = edge.api("GET", "/ip_policies?limit=2", key, None).await;
    assert_eq!(page["uri"], "https://api.tunnels.example.com/ip_policies");
    let next = page["next_page_uri"].as_str().unwrap();
    assert!(next.starts_with("https://api.tunnels.example.com/ip_policies?limit=2&before_id="), "{next}");
    let item = &page["ip_policies"][0];
    assert!(
        item["uri"].as_str().unwrap().starts_with("https://api.tunnels.example.com/ip_policies/ipp_"),
        "{item}"
    );
    let plain = TestEdge::start().await;
    let (_, _, page) = plain.api("GET", "/credentials", Some(&plain.api_key), None).await;
    assert_eq!(page["uri"], "http://api.warren.localhost/credentials", "from the Host header");
}

/// A `PYTHONPATH` holding ngrok's API client (PyPI `ngrok-api`, whose module is also named
/// `ngrok`, so it lives apart from the SDK).
fn ngrok_api_path() -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-ngrok-api");
    python_packages(&dir, "import ngrok; ngrok.Client", "ngrok-api==0.19.0")
}

/// ngrok's official API client pages through every resource it knows and warren serves,
/// two items a page: each list has more than one page, and the client follows
/// `next_page_uri` to the end. Before, it stopped at page two ("No scheme supplied").
#[tokio::test]
async fn ngroks_api_client_pages_through_every_listable_resource() {
    let pythonpath = tokio::task::spawn_blocking(ngrok_api_path).await.unwrap();
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let post = |path: &'static str, body: serde_json::Value| edge.api("POST", path, key, Some(body));
    let mut expected = std::collections::HashMap::new();
    // Three of everything (the first start made one authtoken and one key already).
    for i in 0..3 {
        post("/credentials", serde_json::json!({"description": format!("c{i}")})).await;
        post("/api_keys", serde_json::json!({"description": format!("k{i}")})).await;
        let (_, _, p) = post("/ip_policies", serde_json::json!({"description": format!("p{i}")})).await;
        post(
            "/ip_policy_rules",
            serde_json::json!({"ip_policy_id": p["id"], "cidr": format!("10.{i}.0.0/16"), "action": "allow"}),
        )
        .await;
        post("/ip_restrictions", serde_json::json!({"type": "dashboard", "ip_policy_ids": [p["id"]]})).await;
        post("/reserved_addrs", serde_json::json!({})).await;
        post("/reserved_domains", serde_json::json!({"domain": format!("r{i}.warren.localhost")})).await;
        let (chain, pem_key, _) = TestCa::new("api client test").leaf(&format!("r{i}.warren.localhost"));
        post("/tls_certificates", serde_json::json!({"certificate_pem": chain, "private_key_pem": pem_key}))
            .await;
    }
    for (res, n) in [
        ("credentials", 4),
        ("api_keys", 4),
        ("ip_policies", 3),
        ("ip_policy_rules", 3),
        ("ip_restrictions", 3),
        ("reserved_addrs", 3),
        ("reserved_domains", 3),
        ("tls_certificates", 3),
        ("tunnel_sessions", 3),
        ("endpoints", 3),
        ("tunnels", 3),
    ] {
        expected.insert(res.to_owned(), n);
    }
    let mut sessions = Vec::new();
    for i in 0..3 {
        let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
        assert!(raw.bind_https("e", &format!("lst{i}.warren.localhost")).await.error.is_empty());
        sessions.push(raw);
    }
    let out = tokio::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ngrok_api_client.py"))
        .env("PYTHONPATH", &pythonpath)
        .env("WARREN_API", format!("http://{}", edge.api_addr()))
        .env("WARREN_API_KEY", &edge.api_key)
        .output();
    let out = within("the API client", out).await.expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let mut seen = 0;
    for line in text.lines() {
        let parts: Vec<&str> = line.splitn(3, ' ').collect();
        assert_eq!(parts[0], "LIST", "{line}");
        let count: usize = parts[2].parse().unwrap();
        assert_eq!(count, expected[parts[1]], "{} listed in full through every page", parts[1]);
        seen += 1;
    }
    assert_eq!(seen, expected.len(), "{text}");
}
