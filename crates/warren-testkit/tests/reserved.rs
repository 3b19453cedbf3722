//! Reserved domains and TCP addresses through the API, enforced on binds: a reserved name is
//! refused to every other account, a custom domain must be reserved first, and a reserved
//! port is never handed out at random.

use hyper::StatusCode;
use serde_json::{Value, json};
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

/// An authtoken of a second account, made straight in the store.
async fn other_account_token(edge: &TestEdge) -> String {
    let store = edge.edge().store();
    let (other, _) = store.ensure_account("other").await.unwrap();
    let (_, token) = store.create_credential(&other.id, &Default::default()).await.unwrap();
    token.0
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["status_code"], want.as_u16(), "{body}");
    assert!(body["msg"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn reserved_domains_crud_with_pagination_and_clear_errors() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let body = json!({"domain": format!("{name}.warren.localhost"), "description": name, "region": ""});
        let (s, _, d) = edge.api("POST", "/reserved_domains", key, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{d}");
        let id = d["id"].as_str().unwrap().to_owned();
        assert!(
            id.starts_with("rd_") && d["uri"] == format!("http://api.warren.localhost/reserved_domains/{id}"),
            "{d}"
        );
        assert_eq!(d["cname_target"], Value::Null, "names under the base domain need no CNAME");
        ids.push(id);
    }
    // Pages of 2, newest first (ids sort by creation time), every id once.
    let (s, _, page) = edge.api("GET", "/reserved_domains?limit=2", key, None).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["uri"], "http://api.warren.localhost/reserved_domains");
    let ids_of = |p: &Value| -> Vec<String> {
        p["reserved_domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut listed = ids_of(&page);
    assert_eq!(listed.len(), 2);
    let next = page["next_page_uri"].as_str().unwrap().to_owned();
    let (_, _, rest) = edge.api("GET", &next, key, None).await;
    listed.extend(ids_of(&rest));
    assert_eq!(rest["next_page_uri"], Value::Null);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(listed, sorted);

    // A custom domain gets a CNAME target under the base domain.
    let (s, _, custom) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "App.Example.com"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{custom}");
    assert_eq!(custom["domain"], "app.example.com");
    assert!(custom["cname_target"].as_str().unwrap().ends_with(".warren.localhost"), "{custom}");

    let path = format!("/reserved_domains/{}", ids[0]);
    let (s, _, up) = edge.api("PATCH", &path, key, Some(json!({"metadata": "{\"team\":\"web\"}"}))).await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(
        (up["description"].as_str(), up["metadata"].as_str()),
        (Some("a"), Some("{\"team\":\"web\"}"))
    );
    let (s, _, got) = edge.api("GET", &path, key, None).await;
    assert_eq!((s, got), (StatusCode::OK, up));

    let (s, _, e) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "a.warren.localhost"}))).await;
    assert_error(s, &e, StatusCode::CONFLICT);
    let (s, _, e) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "bad_name.example.com"}))).await;
    assert_error(s, &e, StatusCode::BAD_REQUEST);
    let (s, _, e) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "connect.warren.localhost"}))).await;
    assert_error(s, &e, StatusCode::BAD_REQUEST);
    let (s, _, e) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"description": "no domain"}))).await;
    assert_error(s, &e, StatusCode::BAD_REQUEST);
    let (s, _, e) = edge
        .api("POST", "/reserved_domains", key, Some(json!({"domain": "x.example.com", "bogus": 1})))
        .await;
    assert_error(s, &e, StatusCode::BAD_REQUEST);
    assert!(e["msg"].as_str().unwrap().contains("bogus"), "{e}");

    let (s, _, _) = edge.api("DELETE", &path, key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, e) = edge.api("GET", &path, key, None).await;
    assert_error(s, &e, StatusCode::NOT_FOUND);
    let (s, _, e) = edge.api("DELETE", &path, key, None).await;
    assert_error(s, &e, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_reserved_name_is_refused_to_other_accounts_and_a_custom_domain_needs_a_reservation() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let up = HttpUpstream::start().await;
    let (s, _, _) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "*.team.warren.localhost"}))).await;
    assert_eq!(s, StatusCode::CREATED);

    // Another account cannot bind under the wildcard reservation. (Plain http: the edge's
    // wildcard certificate covers one level under the base domain only.)
    let wanted = EndpointConfig::http(&up.url(), Some("http://app.team.warren.localhost")).unwrap();
    let mut cfg = edge.agent_with(wanted.clone());
    cfg.authtoken = other_account_token(&edge).await;
    let err = within("refused", Agent::start(cfg).wait_online()).await.unwrap_err();
    assert!(
        err.to_string().contains("ERR_WARREN_RESERVED") && err.to_string().contains("another account"),
        "{err}"
    );
    // The owning account can.
    let mut agent = Agent::start(edge.agent_with(wanted));
    within("owner binds", agent.wait_online()).await.unwrap();
    let (s, _, body) = plain_get(edge.http_addr(), "app.team.warren.localhost", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello from upstream"));

    // A custom domain is refused until reserved, then served (plain http: the edge has no
    // certificate for it yet).
    let custom = EndpointConfig::http(&up.url(), Some("http://shop.example.com")).unwrap();
    let err =
        within("not served", Agent::start(edge.agent_with(custom.clone())).wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("ERR_NGROK_320") && err.to_string().contains("reserve"), "{err}");
    let (s, _, rd) =
        edge.api("POST", "/reserved_domains", key, Some(json!({"domain": "shop.example.com"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    // Reserved is not enough: the account must show it controls the domain's DNS (a TXT
    // record with the reservation's token), or any account could claim any domain.
    let v = &rd["verification"];
    assert_eq!(
        (v["status"].as_str(), v["txt_record_name"].as_str()),
        (Some("pending"), Some("_warren-challenge.shop.example.com")),
        "{rd}"
    );
    let token = v["txt_record_value"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32, "{rd}");
    let err =
        within("pending", Agent::start(edge.agent_with(custom.clone())).wait_online()).await.unwrap_err();
    assert!(
        err.to_string().contains("_warren-challenge.shop.example.com") && err.to_string().contains(&token),
        "{err}"
    );
    // A TXT record with another value does not do.
    let port = edge.config.dns_resolver.unwrap().port();
    let wrong =
        Dnsmasq::start(port, vec![("_warren-challenge.shop.example.com".into(), "not-the-token".into())]);
    let verify = format!("/reserved_domains/{}/verify", rd["id"].as_str().unwrap());
    let answer = within("wrong record checked", async {
        loop {
            let (s, _, body) = edge.api("POST", &verify, key, None).await;
            assert_ne!(s, StatusCode::OK, "{body}");
            if body["msg"].as_str().is_some_and(|m| m.contains("other values")) {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(answer["status_code"], 409, "{answer}");
    drop(wrong);
    edge.verify_custom_domain(&rd).await;
    let mut shop = Agent::start(edge.agent_with(custom));
    let urls = within("custom domain binds", shop.wait_online()).await.unwrap();
    assert!(urls[0].starts_with("http://shop.example.com"), "{urls:?}");
    let (s, _, body) = plain_get(edge.http_addr(), "shop.example.com", "/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello from upstream"));
}

#[tokio::test]
async fn reserved_addrs_are_chosen_by_the_edge_and_only_their_owner_binds_them() {
    // Two ports: once one is reserved, random binds must take the other.
    let range = free_port_range(2);
    let (low, high) = (*range.start(), *range.end());
    let edge = TestEdge::start_with(|c| c.tcp_ports = range).await;
    let key = Some(edge.api_key.as_str());
    let (s, _, ra) =
        edge.api("POST", "/reserved_addrs", key, Some(json!({"description": "ssh", "region": ""}))).await;
    assert_eq!(s, StatusCode::CREATED, "{ra}");
    let id = ra["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("ra_") && ra["uri"] == format!("http://api.warren.localhost/reserved_addrs/{id}"),
        "{ra}"
    );
    let addr = ra["addr"].as_str().unwrap().to_owned();
    let port: u16 = addr.strip_prefix("localhost:").unwrap().parse().unwrap();
    assert!((low..=high).contains(&port), "{addr}");
    let free = if port == low { high } else { low };

    let (echo, _task) = tcp_echo().await;
    for _ in 0..3 {
        let mut random = Agent::start(edge.agent_with(EndpointConfig::tcp(&echo.to_string(), None).unwrap()));
        let urls = within("random port", random.wait_online()).await.unwrap();
        assert_eq!(url_port(&urls[0]), free, "a random bind never takes a reserved port");
        random.stop().await.unwrap();
        // The next agent may take the port once the edge has seen this session end.
        edge.wait_sessions(0).await;
    }

    let wanted = EndpointConfig::tcp(&echo.to_string(), Some(&format!("tcp://{addr}"))).unwrap();
    let mut cfg = edge.agent_with(wanted.clone());
    cfg.authtoken = other_account_token(&edge).await;
    let err = within("refused", Agent::start(cfg).wait_online()).await.unwrap_err();
    assert!(err.to_string().contains("ERR_WARREN_RESERVED"), "{err}");
    let mut owner = Agent::start(edge.agent_with(wanted));
    let urls = within("owner binds", owner.wait_online()).await.unwrap();
    assert_eq!(urls[0], format!("tcp://{addr}"));

    let (s, _, list) = edge.api("GET", "/reserved_addrs", key, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["reserved_addrs"][0]["addr"], addr.as_str());
    let path = format!("/reserved_addrs/{id}");
    let (s, _, up) = edge.api("PATCH", &path, key, Some(json!({"id": id, "description": "ssh box"}))).await;
    assert_eq!((s, up["description"].as_str()), (StatusCode::OK, Some("ssh box")));
    let (s, _, e) = edge.api("PATCH", &path, key, Some(json!({"id": "ra_other"}))).await;
    assert_error(s, &e, StatusCode::BAD_REQUEST);
    let (s, _, _) = edge.api("DELETE", &path, key, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, e) = edge.api("GET", &path, key, None).await;
    assert_error(s, &e, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn read_only_keys_cannot_reserve() {
    let edge = TestEdge::start().await;
    let admin = Some(edge.api_key.as_str());
    let (s, _, user) = edge
        .api("POST", "/users", admin, Some(json!({"email": "ro@example.com", "role": "read-only"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, _, k) = edge.api("POST", "/api_keys", admin, Some(json!({"owner_id": user["id"]}))).await;
    let ro = k["token"].as_str();
    let (s, _, e) =
        edge.api("POST", "/reserved_domains", ro, Some(json!({"domain": "ro.warren.localhost"}))).await;
    assert_error(s, &e, StatusCode::FORBIDDEN);
    let (s, _, e) = edge.api("POST", "/reserved_addrs", ro, Some(json!({}))).await;
    assert_error(s, &e, StatusCode::FORBIDDEN);
    let (s, _, _) = edge.api("GET", "/reserved_domains", ro, None).await;
    assert_eq!(s, StatusCode::OK);
}
