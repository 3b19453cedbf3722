//! The policy engine without sockets: documents compile or are refused with the rule and the
//! problem, and each phase gives the verdict and changes ngrok's documentation describes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use warren_policy::{Chain, CompileEnv, Policy, PolicyError, Verdict};

mod common;
use common::{conn, ep, request};

fn chain(yaml: &str) -> Chain {
    Chain(vec![Arc::new(
        Policy::from_text(yaml, "https", &CompileEnv::default()).unwrap_or_else(|e| panic!("{e}")),
    )])
}

fn on_request(c: &Chain, ip: &str, req: &mut http::request::Parts) -> Verdict {
    c.on_http_request(&conn(ip), &ep(), "https", req, SystemTime::now(), Instant::now()).0
}

fn status(v: &Verdict) -> Option<u16> {
    match v {
        Verdict::Respond(r) => Some(r.status().as_u16()),
        _ => None,
    }
}

/// From ngrok's Traffic Policy documentation (restrict-ips, add-headers, remove-headers).
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
            - server
"#;

#[test]
fn ngroks_documentation_example_runs_unchanged() {
    let c = chain(NGROK_EXAMPLE);
    let mut req = request("GET", "/admin/users", &[]);
    assert_eq!(status(&on_request(&c, "8.8.8.8", &mut req)), Some(403));
    let mut req = request("GET", "/admin/users", &[]);
    assert!(matches!(on_request(&c, "110.1.2.3", &mut req), Verdict::Continue));
    assert_eq!(req.headers["x-client-ip"], "110.1.2.3");
    let mut req = request("GET", "/public", &[]);
    assert!(matches!(on_request(&c, "8.8.8.8", &mut req), Verdict::Continue));

    let mut res = http::Response::builder()
        .status(200)
        .header("server", "leaky/1.0")
        .header("x-kept", "1")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let req = request("GET", "/", &[]);
    let (v, _) = c.on_http_response(
        &conn("1.1.1.1"),
        &ep(),
        "https",
        &req,
        &mut res,
        SystemTime::now(),
        Instant::now(),
    );
    assert!(matches!(v, Verdict::Continue));
    assert!(res.headers.get("server").is_none());
    assert_eq!(res.headers["x-kept"], "1");
}

#[test]
fn the_same_document_as_json_compiles() {
    let json = r#"{"on_http_request":[{"name":"no deletes","expressions":["req.method == 'DELETE'"],"actions":[{"type":"deny","config":{"status_code":405}}]}]}"#;
    let c = chain(json);
    assert_eq!(status(&on_request(&c, "1.1.1.1", &mut request("DELETE", "/x", &[]))), Some(405));
    assert!(matches!(on_request(&c, "1.1.1.1", &mut request("GET", "/x", &[])), Verdict::Continue));
}

fn refused(doc: &str) -> String {
    match Policy::from_text(doc, "https", &CompileEnv::default()) {
        Ok(_) => panic!("compiled: {doc}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_documents_are_refused_naming_the_rule_and_the_problem() {
    let e = refused("on_http_request: [ {actions: ");
    assert!(e.contains("invalid YAML"), "{e}");
    let e = refused("on_http_request:\n  - name: mystery\n    actions:\n      - type: teleport\n");
    assert!(e.contains("\"mystery\"") && e.contains("unknown action type \"teleport\""), "{e}");
    let e = refused(
        "on_http_request:\n  - actions:\n      - type: restrict-ips\n        config:\n          allow: [\"10.0.0.0/99\"]\n",
    );
    assert!(e.contains("on_http_request rule #1") && e.contains("10.0.0.0/99"), "{e}");
    let e = refused(
        "on_http_request:\n  - name: typed\n    expressions: [\"req.method > 5\"]\n    actions: [{type: deny}]\n",
    );
    assert!(e.contains("\"typed\"") && e.contains("cannot be evaluated"), "{e}");
    let e = refused("on_http_request:\n  - expressions: [\"req.method\"]\n    actions: [{type: deny}]\n");
    assert!(e.contains("must be true or false"), "{e}");
    let e = refused(
        "on_http_request:\n  - expressions: [\"req.methd == 'GET' &&\"]\n    actions: [{type: deny}]\n",
    );
    assert!(e.contains("does not parse"), "{e}");
    let e =
        refused("on_tcp_connect:\n  - expressions: [\"req.method == 'GET'\"]\n    actions: [{type: deny}]\n");
    assert!(e.contains("not available in on_tcp_connect"), "{e}");
    let e = refused(
        "on_http_request:\n  - actions: [{type: saml, config: {idp_metadata_url: \"https://idp.example\"}}]\n",
    );
    assert!(e.contains("not supported by warren yet"), "{e}");
    let e = refused(
        "on_http_request:\n  - actions: [{type: openid-connect, config: {issuer_url: \"https://idp.example\", client_id: a}}]\n",
    );
    assert!(e.contains("https://idp.example could not be discovered"), "{e}");
    let e = refused(
        "on_http_request:\n  - actions: [{type: verify-webhook, config: {provider: acme-hooks, secret: x}}]\n",
    );
    assert!(e.contains("provider \"acme-hooks\" is not supported"), "{e}");
    // cel 0.11 panics iterating anything but a list or map; warren guards every macro, so
    // iterating a number is refused at Bind like any other type error...
    let e = refused(
        "on_http_request:\n  - expressions: [\"(1).all(v, v == 'a')\"]\n    actions: [{type: deny}]\n",
    );
    assert!(e.contains("cannot be evaluated"), "{e}");
    // ...a message literal (cel 0.11 cannot evaluate them) is refused by its shape...
    let e = refused("on_http_request:\n  - expressions: [\"Foo{a: 1} == 1\"]\n    actions: [{type: deny}]\n");
    assert!(e.contains("builds a message"), "{e}");
    // ...and iterating a header that is not there is no match, as a missing key is.
    let c = chain(
        "on_http_request:\n  - expressions: [\"req.headers['x-list'].exists(v, v == 'a')\"]\n    actions: [{type: deny}]\n",
    );
    assert_eq!(status(&on_request(&c, "198.51.100.7", &mut request("GET", "/", &[]))), None);
    assert_eq!(
        status(&on_request(
            &c,
            "198.51.100.7",
            &mut request("GET", "/", &[("x-list", "b"), ("x-list", "a")])
        )),
        Some(403)
    );
    let e = refused("on_http_request:\n  - actions: [{type: deny, config: {status: 403}}]\n");
    assert!(e.contains("unknown field"), "{e}");
    assert!(matches!(
        Policy::from_text("on_http_request: []\nbogus: 1\n", "https", &CompileEnv::default()),
        Err(PolicyError::Syntax(_))
    ));
    let tcp =
        Policy::from_text("on_http_request:\n  - actions: [{type: deny}]\n", "tcp", &CompileEnv::default())
            .unwrap_err();
    assert!(tcp.to_string().contains("only on_tcp_connect"), "{tcp}");
}

#[test]
fn variables_and_functions_ngrok_documents_are_available() {
    // Each expression must hold for the request below; a rule per expression adds a header.
    let exprs = [
        "conn.client_ip == '10.1.2.3'",
        "conn.client_port == 40000",
        "conn.server_port == 443",
        "inCidrRange(conn.client_ip, '10.0.0.0/8')",
        "inCidrRanges(conn.client_ip, ['192.168.0.0/16', '10.0.0.0/8'])",
        "isPrivateIp(conn.client_ip)",
        "req.method == 'POST'",
        "req.host == 'app.example.com'",
        "req.url.path == '/api/items'",
        "req.url.query == 'q=shoes&page=2'",
        "req.url.query_params['page'] == ['2']",
        "req.url.scheme == 'https'",
        "req.headers['x-api-key'][0] == 'k1'",
        "req.cookies['session'][0] == 'abc'",
        "req.user_agent.raw.startsWith('curl/')",
        "getReqHeader('X-Api-Key') == ['k1']",
        "hasReqHeader('x-api-key') && !hasReqHeader('x-missing')",
        "getQueryParam('q') == ['shoes']",
        "endpoint.host == 'app.example.com' && endpoint.proto == 'https'",
        "time.now > timestamp('2020-01-01T00:00:00Z')",
        "b64decode(b64encode('hi')) == 'hi' && urlDecode(urlEncode('a b')) == 'a b'",
        "sha256('abc').startsWith('ba7816bf') && lower('AB') == 'ab'",
        "req.url.path.matches('^/api/.*$') && req.url.path.contains('items')",
    ];
    let mut doc = String::from("on_http_request:\n");
    for (i, e) in exprs.iter().enumerate() {
        doc.push_str(&format!(
            "  - expressions: [{e:?}]\n    actions: [{{type: add-headers, config: {{headers: {{x-ok-{i}: \"1\"}}}}}}]\n"
        ));
    }
    let c = chain(&doc);
    let mut req = request(
        "POST",
        "/api/items?q=shoes&page=2",
        &[("x-api-key", "k1"), ("cookie", "session=abc; theme=dark"), ("user-agent", "curl/8.0")],
    );
    assert!(matches!(on_request(&c, "10.1.2.3", &mut req), Verdict::Continue));
    for (i, e) in exprs.iter().enumerate() {
        assert!(req.headers.contains_key(format!("x-ok-{i}").as_str()), "expression {e:?} was not true");
    }
}

#[test]
fn tls_variables_are_seen_in_on_tcp_connect() {
    let p = Policy::from_text(
        "on_tcp_connect:\n  - expressions: [\"conn.tls.version == '1.2' || conn.tls.client.subject != 'CN=ok'\"]\n    actions: [{type: close-connection}]\n",
        "tls",
        &CompileEnv::default(),
    )
    .unwrap();
    let c = Chain(vec![Arc::new(p)]);
    let mut good = conn("1.1.1.1");
    good.tls = Some(warren_policy::TlsInfo {
        version: "1.3".into(),
        sni: "x".into(),
        client: Some(warren_policy::ClientCertInfo { subject: "CN=ok".into(), ..Default::default() }),
        ..Default::default()
    });
    assert!(matches!(c.on_tcp_connect(&good, &ep(), SystemTime::now(), Instant::now()).0, Verdict::Continue));
    let mut bad = good.clone();
    bad.tls.as_mut().unwrap().version = "1.2".into();
    assert!(matches!(c.on_tcp_connect(&bad, &ep(), SystemTime::now(), Instant::now()).0, Verdict::Close));
}

#[test]
fn actions_allow_and_deny() {
    // basic-auth
    let c = chain(
        "on_http_request:\n  - actions: [{type: basic-auth, config: {credentials: [\"alice:correct-horse\"], realm: shop}}]\n",
    );
    let v = on_request(&c, "1.1.1.1", &mut request("GET", "/", &[]));
    match &v {
        Verdict::Respond(r) => {
            assert_eq!(r.status(), 401);
            assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"shop\", charset=\"UTF-8\"");
        }
        other => panic!("{other:?}"),
    }
    let wrong = format!("Basic {}", base64_of("alice:wrong-horse"));
    assert_eq!(
        status(&on_request(&c, "1.1.1.1", &mut request("GET", "/", &[("authorization", &wrong)]))),
        Some(401)
    );
    let right = format!("Basic {}", base64_of("alice:correct-horse"));
    assert!(matches!(
        on_request(&c, "1.1.1.1", &mut request("GET", "/", &[("authorization", &right)])),
        Verdict::Continue
    ));
    assert!(
        refused(
            "on_http_request:\n  - actions: [{type: basic-auth, config: {credentials: [\"bob:short\"]}}]\n"
        )
        .contains("8 to 128")
    );

    // rate-limit by client IP
    let c = chain(
        "on_http_request:\n  - actions: [{type: rate-limit, config: {name: two, algorithm: sliding_window, capacity: 2, rate: 60s, bucket_key: [conn.client_ip]}}]\n",
    );
    let t = Instant::now();
    let hit = |ip: &str, at: Duration| {
        c.on_http_request(&conn(ip), &ep(), "https", &mut request("GET", "/", &[]), SystemTime::now(), t + at)
            .0
    };
    assert!(matches!(hit("1.1.1.1", Duration::ZERO), Verdict::Continue));
    assert!(matches!(hit("1.1.1.1", Duration::ZERO), Verdict::Continue));
    match hit("1.1.1.1", Duration::from_secs(1)) {
        Verdict::Respond(r) => {
            assert_eq!(r.status(), 429);
            assert!(r.headers().contains_key("retry-after"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(hit("2.2.2.2", Duration::from_secs(1)), Verdict::Continue), "another bucket");
    assert!(matches!(hit("1.1.1.1", Duration::from_secs(121)), Verdict::Continue), "the window slid");

    // url-rewrite, redirect, custom-response, remove-headers, deny, close-connection, log
    let c = chain(
        r#"
on_http_request:
  - name: old api
    actions:
      - type: url-rewrite
        config: {from: "/v1/(.*)", to: "/v2/$1"}
  - expressions: ["req.url.path == '/old'"]
    actions:
      - type: redirect
        config: {to: "https://${req.host}/new", status_code: 301}
  - expressions: ["req.url.path == '/teapot'"]
    actions:
      - type: custom-response
        config: {status_code: 418, body: "short and stout from ${conn.client_ip}", headers: {content-type: text/plain}}
  - expressions: ["req.url.path == '/gone'"]
    actions: [{type: close-connection}]
  - expressions: ["req.url.path.startsWith('/v2/')"]
    actions:
      - type: log
        config: {metadata: {path: "${req.url.path}"}}
      - type: remove-headers
        config: {headers: [x-internal]}
"#,
    );
    let mut req = request("GET", "/v1/users?id=3", &[("x-internal", "secret")]);
    let (v, logs) =
        c.on_http_request(&conn("1.1.1.1"), &ep(), "https", &mut req, SystemTime::now(), Instant::now());
    assert!(matches!(v, Verdict::Continue));
    assert_eq!(req.uri, "/v2/users?id=3");
    assert!(req.headers.get("x-internal").is_none());
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].metadata["path"], "/v2/users");
    match on_request(&c, "1.1.1.1", &mut request("GET", "/old", &[])) {
        Verdict::Respond(r) => {
            assert_eq!(r.status(), 301);
            assert_eq!(r.headers()["location"], "https://app.example.com/new");
        }
        other => panic!("{other:?}"),
    }
    match on_request(&c, "9.9.9.9", &mut request("GET", "/teapot", &[])) {
        Verdict::Respond(r) => {
            assert_eq!(r.status(), 418);
            assert_eq!(r.body().as_ref(), b"short and stout from 9.9.9.9");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(on_request(&c, "1.1.1.1", &mut request("GET", "/gone", &[])), Verdict::Close));
}

#[test]
fn the_account_policy_runs_first_and_an_endpoint_cannot_undo_it() {
    let account = Policy::from_text(
        "on_http_request:\n  - actions: [{type: restrict-ips, config: {deny: [\"6.6.6.0/24\"]}}]\n",
        "https",
        &CompileEnv::default(),
    )
    .unwrap();
    let endpoint = Policy::from_text(
        "on_http_request:\n  - actions: [{type: restrict-ips, config: {allow: [\"0.0.0.0/0\"]}}]\n",
        "https",
        &CompileEnv::default(),
    )
    .unwrap();
    let c = Chain(vec![Arc::new(account), Arc::new(endpoint)]);
    assert_eq!(status(&on_request(&c, "6.6.6.6", &mut request("GET", "/", &[]))), Some(403));
    assert!(matches!(on_request(&c, "7.7.7.7", &mut request("GET", "/", &[])), Verdict::Continue));
}

#[test]
fn stored_ip_policies_are_used_by_id() {
    let mut env = CompileEnv::default();
    env.ip_policies.insert("ipp_1".into(), (vec![warren_policy::Cidr::parse("10.0.0.0/8").unwrap()], vec![]));
    let p = Policy::from_text(
        "on_tcp_connect:\n  - actions: [{type: restrict-ips, config: {ip_policies: [ipp_1]}}]\n",
        "tcp",
        &env,
    )
    .unwrap();
    let c = Chain(vec![Arc::new(p)]);
    assert!(matches!(
        c.on_tcp_connect(&conn("10.9.9.9"), &ep(), SystemTime::now(), Instant::now()).0,
        Verdict::Continue
    ));
    assert!(matches!(
        c.on_tcp_connect(&conn("11.9.9.9"), &ep(), SystemTime::now(), Instant::now()).0,
        Verdict::Close
    ));
    let e = Policy::from_text(
        "on_tcp_connect:\n  - actions: [{type: restrict-ips, config: {ip_policies: [ipp_nope]}}]\n",
        "tcp",
        &env,
    )
    .unwrap_err();
    assert!(e.to_string().contains("ipp_nope"), "{e}");
}

fn base64_of(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Each message has a step budget over every expression evaluated for it, on the fast path
/// and in CEL alike. A request that makes an expression run out of steps is refused with a
/// 500, never let through as "no match" (here the rule denies, so "no match" would have
/// passed the request on).
#[test]
fn a_request_that_exhausts_the_step_budget_is_refused_on_either_path() {
    for expr in [
        // Translated for the fast path.
        "getReqHeader('x-v').exists(a, getReqHeader('x-v').exists(b, a == b + 'never'))",
        // Only CEL evaluates map().
        "hasReqHeader('x-v') && req.headers['x-v'].map(a, req.headers['x-v'].map(b, b + a)).size() == 0",
    ] {
        let c = chain(&format!(
            "on_http_request:\n  - expressions: [\"{expr}\"]\n    actions: [{{type: deny, config: {{status_code: 403}}}}]\n"
        ));
        let few: Vec<(&str, &str)> = vec![("x-v", "a"); 3];
        assert_eq!(status(&on_request(&c, "192.0.2.1", &mut request("GET", "/", &few))), None, "{expr}");
        let many: Vec<(&str, &str)> = vec![("x-v", "a"); 150];
        let v = on_request(&c, "192.0.2.1", &mut request("GET", "/", &many));
        assert_eq!(status(&v), Some(500), "{expr}: {v:?}");
    }
}

fn on_response(c: &Chain, req: &http::request::Parts) -> (Verdict, http::response::Parts) {
    let mut res = http::Response::builder().status(200).body(()).unwrap().into_parts().0;
    let (v, _) = c.on_http_response(
        &conn("1.1.1.1"),
        &ep(),
        "https",
        req,
        &mut res,
        SystemTime::now(),
        Instant::now(),
    );
    (v, res)
}

fn body(v: &Verdict) -> String {
    match v {
        Verdict::Respond(r) => String::from_utf8(r.body().to_vec()).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// ngrok's set-vars example (https://ngrok.com/docs/traffic-policy/actions/set-vars), as
/// written there.
#[test]
fn set_vars_runs_ngroks_example_unchanged() {
    let c = chain(
        r#"
on_http_request:
  - actions:
      - type: set-vars
        config:
          vars:
            - variable_a: Hello,
            - variable_b: World!
  - actions:
      - type: custom-response
        config:
          status_code: 200
          headers:
            content-type: text/plain
          body: ${vars.variable_a} ${vars.variable_b}
"#,
    );
    let v = on_request(&c, "1.1.1.1", &mut request("GET", "/", &[]));
    assert_eq!(status(&v), Some(200));
    assert_eq!(body(&v), "Hello, World!");
    // The same as JSON.
    let c = chain(
        r#"{"on_http_request":[{"actions":[{"type":"set-vars","config":{"vars":[{"variable_a":"Hello,"},{"variable_b":"World!"}]}}]},{"actions":[{"type":"custom-response","config":{"status_code":200,"body":"${vars.variable_a} ${vars.variable_b}"}}]}]}"#,
    );
    assert_eq!(body(&on_request(&c, "1.1.1.1", &mut request("GET", "/", &[]))), "Hello, World!");
}

#[test]
fn set_vars_values_keep_their_types() {
    let c = chain(
        r#"
on_http_request:
  - actions:
      - type: set-vars
        config:
          vars:
            - sample_bool: true
            - sample_list: [first, 2, 3.5]
            - sample_map: {key: value}
            - sample_nested_map: {key: [a, b]}
            - sample_null: null
            - sample_int: ${int(50.5)}
            - sample_uint: ${uint(1.5) + 10u}
            - sum: ${1 + 2}
            - computed_bool: ${req.method == 'GET'}
            - message: Your IP is ${conn.client_ip}!
            - mixed: "${1 + 2}"
            - mixed_text: "n=${1 + 2}"
            - nested:
                ip: ${conn.client_ip}
                port: ${conn.client_port}
                tags: [a, "${req.method}", {deep: "${req.url.path}"}]
  - expressions:
      - vars.sample_bool == true
      - vars.computed_bool
      - vars.sample_list[0] == 'first' && vars.sample_list[1] == 2 && vars.sample_list[2] == 3.5
      - vars.sample_map.key == 'value' && vars.sample_nested_map.key[1] == 'b'
      - vars.sample_null == null
      - vars.sample_int == 50 && vars.sample_int + 1 == 51
      - vars.sample_uint == 11u
      - vars.sum + 1 == 4 && vars.mixed == 3
      - vars.mixed_text == 'n=3'
      - vars.message == 'Your IP is 10.1.2.3!'
      - vars.nested.ip == '10.1.2.3' && vars.nested.port == 40000
      - vars.nested.tags[1] == 'GET' && vars.nested.tags[2].deep == '/items'
    actions:
      - type: custom-response
        config:
          body: ${vars.sample_list[0]} ${vars.sample_map.key} ${vars.sample_nested_map.key[1]} ${vars.sum}
"#,
    );
    let v = on_request(&c, "10.1.2.3", &mut request("GET", "/items", &[]));
    assert_eq!(body(&v), "first value b 3");
}

#[test]
fn set_vars_are_set_in_order_and_may_be_reassigned() {
    let c = chain(
        r#"
on_http_request:
  - actions:
      - type: set-vars
        config:
          vars:
            - models: ${[1, 2, 3, 4]}
            - models: ${vars.models.filter(m, m > 1)}
      - type: set-vars
        config:
          vars:
            - models: ${vars.models.map(m, m * 10)}
            - count: ${size(vars.models)}
  - name: a later rule sees them
    actions:
      - type: set-vars
        config:
          vars:
            - models: ${vars.models + [50]}
            - greeting: hello
            - greeting: ${vars.greeting + ' world'}
  - expressions: ["vars.models == [20, 30, 40, 50] && vars.count == 3"]
    actions:
      - type: custom-response
        config: {body: "${vars.greeting}"}
"#,
    );
    assert_eq!(body(&on_request(&c, "1.1.1.1", &mut request("GET", "/", &[]))), "hello world");
}

#[test]
fn set_vars_survive_a_rule_that_changes_the_request() {
    let c = chain(
        r#"
on_http_request:
  - actions:
      - type: set-vars
        config: {vars: [{who: "${req.headers['x-user'][0]}"}]}
      - type: add-headers
        config: {headers: {x-seen: "${vars.who}"}}
      - type: remove-headers
        config: {headers: [x-user]}
  - expressions: ["vars.who == 'ann' && !hasReqHeader('x-user') && req.headers['x-seen'] == ['ann']"]
    actions:
      - type: custom-response
        config: {body: "still ${vars.who}"}
"#,
    );
    let v = on_request(&c, "1.1.1.1", &mut request("GET", "/", &[("x-user", "ann")]));
    assert_eq!(body(&v), "still ann");
}

#[test]
fn set_vars_are_scoped_to_their_phase_and_policy() {
    let c = chain(
        r#"
on_http_request:
  - expressions: ["size(vars) == 0 && !has(vars.x)"]
    actions:
      - type: set-vars
        config: {vars: [{x: request}]}
      - type: add-headers
        config: {headers: {x-request-saw: "${vars.x}"}}
on_http_response:
  - expressions: ["vars.x == 'request'"]
    actions:
      - type: add-headers
        config: {headers: {x-leaked: "1"}}
  - expressions: ["size(vars) == 0"]
    actions:
      - type: set-vars
        config: {vars: [{x: response}]}
      - type: add-headers
        config: {headers: {x-response-saw: "${vars.x}"}}
"#,
    );
    let mut req = request("GET", "/", &[]);
    assert!(matches!(on_request(&c, "1.1.1.1", &mut req), Verdict::Continue));
    assert_eq!(req.headers["x-request-saw"], "request");
    let (v, res) = on_response(&c, &req);
    assert!(matches!(v, Verdict::Continue));
    assert!(res.headers.get("x-leaked").is_none());
    assert_eq!(res.headers["x-response-saw"], "response");
    // A second request starts with nothing set.
    let mut again = request("GET", "/", &[]);
    on_request(&c, "1.1.1.1", &mut again);
    assert_eq!(again.headers["x-request-saw"], "request");

    // Each policy of a chain has its own: the endpoint's does not see the account's.
    let account = Policy::from_text(
        "on_http_request:\n  - actions: [{type: set-vars, config: {vars: [{tier: gold}]}}]\n",
        "https",
        &CompileEnv::default(),
    )
    .unwrap();
    let endpoint = Policy::from_text(
        "on_http_request:\n  - expressions: [\"has(vars.tier)\"]\n    actions: [{type: deny}]\n",
        "https",
        &CompileEnv::default(),
    )
    .unwrap();
    let c = Chain(vec![Arc::new(account), Arc::new(endpoint)]);
    assert!(matches!(on_request(&c, "1.1.1.1", &mut request("GET", "/", &[])), Verdict::Continue));

    // on_tcp_connect has them too.
    let p = Policy::from_text(
        "on_tcp_connect:\n  - actions: [{type: set-vars, config: {vars: [{local: \"${inCidrRange(conn.client_ip, '10.0.0.0/8')}\"}]}}]\n  - expressions: [\"!vars.local\"]\n    actions: [{type: close-connection}]\n",
        "tcp",
        &CompileEnv::default(),
    )
    .unwrap();
    let c = Chain(vec![Arc::new(p)]);
    let tcp = |ip: &str| c.on_tcp_connect(&conn(ip), &ep(), SystemTime::now(), Instant::now()).0;
    assert!(matches!(tcp("10.9.9.9"), Verdict::Continue));
    assert!(matches!(tcp("8.8.8.8"), Verdict::Close));
}

/// Reading a variable that is not set fails as a missing map key does: the rule does not
/// match, and in `${...}` it renders as nothing. A value whose expression fails leaves its
/// variable unset (even one set before).
#[test]
fn unset_variables_behave_as_missing_keys() {
    let c = chain(
        r#"
on_http_request:
  - expressions: ["vars.nope == 'x' || vars.nope != 'x'"]
    actions: [{type: deny}]
  - actions:
      - type: set-vars
        config:
          vars:
            - key: from before
            - key: ${req.headers['x-missing'][0]}
            - text: "[${req.headers['x-missing'][0]}]"
  - expressions: ["has(vars.key)"]
    actions: [{type: deny}]
  - actions:
      - type: custom-response
        config: {body: "<${vars.nope}> ${vars.text}"}
"#,
    );
    assert_eq!(body(&on_request(&c, "1.1.1.1", &mut request("GET", "/", &[]))), "<> []");
}

#[test]
fn malformed_set_vars_configs_are_refused_naming_the_item() {
    let doc = |config: &str| {
        format!("on_http_request:\n  - actions:\n      - type: set-vars\n        config: {config}\n")
    };
    let e = refused(&doc("{vars: [{a: 1}, {b: 2, c: 3}]}"));
    assert!(e.contains("action set-vars") && e.contains("vars[1] must be a map of exactly one key"), "{e}");
    let e = refused(&doc("{vars: [{}]}"));
    assert!(e.contains("vars[0] must be a map of exactly one key"), "{e}");
    let e = refused(&doc("{vars: [plain]}"));
    assert!(e.contains("vars[0] must be a map of exactly one key") && e.contains("\"plain\""), "{e}");
    let e = refused(&doc("{vars: {a: 1}}"));
    assert!(e.contains("vars must be a list of maps of one key each"), "{e}");
    let e = refused(&doc("{vars: [{1abc: 1}]}"));
    assert!(e.contains("vars[0]: \"1abc\" is not a variable name"), "{e}");
    let e = refused(&doc("{vars: [{a-b: 1}]}"));
    assert!(e.contains("\"a-b\" is not a variable name"), "{e}");
    let e = refused(&doc("{}"));
    assert!(e.contains("vars is required"), "{e}");
    let e = refused("on_http_request:\n  - actions: [{type: set-vars}]\n");
    assert!(e.contains("vars is required"), "{e}");
    let e = refused(&doc("{vars: [], extra: 1}"));
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = refused(&doc("{vars: [{a: \"${req.nope}\"}]}"));
    assert!(e.contains("vars[0].a") && e.contains("req has no field \"nope\""), "{e}");
    let e = refused(&doc("{vars: [{a: {b: [\"x ${unknown.thing} y\"]}}]}"));
    assert!(e.contains("vars[0].a.b[0]") && e.contains("unknown variable \"unknown\""), "{e}");
    let e = refused(&doc("{vars: [{a: \"${req.method\"}]}"));
    assert!(e.contains("unclosed"), "{e}");
    // vars.* is open: any name parses, only the run decides.
    chain(
        "on_http_request:\n  - expressions: [\"vars.anything.deeper == 1\"]\n    actions: [{type: deny}]\n",
    );
}

#[test]
fn set_vars_limits() {
    // At most 64 names per phase of a policy, counted over every set-vars action...
    let names =
        |from: usize, to: usize| (from..to).map(|i| format!("{{v{i}: {i}}}")).collect::<Vec<_>>().join(", ");
    let one = |from: usize, to: usize| {
        format!("  - actions: [{{type: set-vars, config: {{vars: [{}]}}}}]\n", names(from, to))
    };
    chain(&format!("on_http_request:\n{}", one(0, 64)));
    let e = refused(&format!("on_http_request:\n{}", one(0, 65)));
    assert!(e.contains("more than 64 variables"), "{e}");
    let e = refused(&format!("on_http_request:\n{}{}", one(0, 40), one(30, 70)));
    assert!(e.contains("on_http_request rule #2") && e.contains("more than 64 variables"), "{e}");
    // ...and reassigning one name does not count again.
    let same = (0..100).map(|i| format!("{{v: {i}}}")).collect::<Vec<_>>().join(", ");
    chain(&format!("on_http_request:\n  - actions: [{{type: set-vars, config: {{vars: [{same}]}}}}]\n"));
    // Each phase has its own 64.
    chain(&format!("on_http_request:\n{}on_http_response:\n{}", one(0, 64), one(64, 128)));

    // A string of more than 16 KiB: a literal is refused...
    let big = "a".repeat(16 * 1024 + 1);
    let e = refused(&format!(
        "on_http_request:\n  - actions: [{{type: set-vars, config: {{vars: [{{big: {big}}}]}}}}]\n"
    ));
    assert!(e.contains("vars[0].big: a string of 16385 bytes") && e.contains("at most 16384"), "{e}");
    let e = refused(&format!(
        "on_http_request:\n  - actions: [{{type: set-vars, config: {{vars: [{{big: \"{big}${{req.method}}\"}}]}}}}]\n"
    ));
    assert!(e.contains("at most 16384"), "{e}");
    // ...and a value that renders longer refuses the request (leaving the variable unset
    // or cut could change what a later rule decides).
    let c = chain(
        "on_http_request:\n  - actions: [{type: set-vars, config: {vars: [{h: \"${req.headers['x-big'][0]}\"}, {t: \"<${req.headers['x-big'][0]}>\"}]}}]\n  - expressions: [\"vars.h.size() > 0\"]\n    actions: [{type: deny, config: {status_code: 403}}]\n",
    );
    let fits = "b".repeat(16 * 1024 - 2);
    assert_eq!(status(&on_request(&c, "1.1.1.1", &mut request("GET", "/", &[("x-big", &fits)]))), Some(403));
    let over = "b".repeat(16 * 1024 + 1);
    let v = on_request(&c, "1.1.1.1", &mut request("GET", "/", &[("x-big", &over)]));
    assert_eq!(status(&v), Some(500));
    assert!(body(&v).contains("ERR_WARREN_POLICY_VARS") && body(&v).contains("variable h"), "{}", body(&v));
    // A template that renders longer (here by 2 bytes).
    let edge = "b".repeat(16 * 1024 - 1);
    let v = on_request(&c, "1.1.1.1", &mut request("GET", "/", &[("x-big", &edge)]));
    assert!(body(&v).contains("variable t"), "{}", body(&v));
    // In on_tcp_connect the connection is closed.
    let chunk = "c".repeat(4000);
    let p = Policy::from_text(
        &format!("on_tcp_connect:\n  - actions: [{{type: set-vars, config: {{vars: [{{s: \"${{'{chunk}' + '{chunk}' + '{chunk}' + '{chunk}' + '{chunk}'}}\"}}]}}}}]\n"),
        "tcp",
        &CompileEnv::default(),
    )
    .unwrap();
    let c = Chain(vec![Arc::new(p)]);
    assert!(matches!(
        c.on_tcp_connect(&conn("1.1.1.1"), &ep(), SystemTime::now(), Instant::now()).0,
        Verdict::Close
    ));
}

/// set-vars expressions draw on the message's step budget like any other.
#[test]
fn set_vars_expressions_count_in_the_step_budget() {
    let c = chain(
        "on_http_request:\n  - actions: [{type: set-vars, config: {vars: [{x: \"${req.headers['x-v'].map(a, req.headers['x-v'].map(b, b + a))}\"}]}}]\n  - actions: [{type: custom-response, config: {body: \"${size(vars.x)}\"}}]\n",
    );
    let few: Vec<(&str, &str)> = vec![("x-v", "a"); 3];
    assert_eq!(body(&on_request(&c, "192.0.2.1", &mut request("GET", "/", &few))), "3");
    let many: Vec<(&str, &str)> = vec![("x-v", "a"); 150];
    let v = on_request(&c, "192.0.2.1", &mut request("GET", "/", &many));
    assert_eq!(status(&v), Some(500));
    assert!(body(&v).contains("ERR_WARREN_POLICY_BUDGET"), "{}", body(&v));
    // Assignments are counted at compile time (a name set again counts again).
    let many_items = (0..12_000).map(|_| "{v: 1}").collect::<Vec<_>>().join(", ");
    let doc =
        format!("on_http_request:\n  - actions: [{{type: set-vars, config: {{vars: [{many_items}]}}}}]\n");
    let e = Policy::from_text(&doc, "https", &CompileEnv::default()).err().expect("refused");
    assert!(e.to_string().contains("256 assignments"), "{e}");
}
