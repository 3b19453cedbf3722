//! ngrok's macros under ngrok's names (https://ngrok.com/docs/traffic-policy/macros/): each
//! gives the value ngrok's documentation shows, in expressions and in `${...}`; the names
//! warren had before keep working; a function warren does not have is refused at compile time,
//! by name.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use warren_policy::{Chain, CompileEnv, Policy, Verdict};

mod common;

fn conn() -> warren_policy::Conn {
    common::conn("10.1.2.3")
}

fn ep() -> warren_policy::EndpointInfo {
    common::ep()
}

fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    common::request("GET", uri, headers)
}

fn compile(yaml: &str) -> Result<Chain, String> {
    Policy::from_text(yaml, "https", &CompileEnv::default())
        .map(|p| Chain(vec![Arc::new(p)]))
        .map_err(|e| e.to_string())
}

/// The body of a custom-response whose body is `template`, for a request to `uri`.
fn render_for(template: &str, uri: &str, headers: &[(&str, &str)]) -> String {
    let doc = format!(
        "on_http_request:\n  - actions:\n      - type: custom-response\n        config:\n          body: {}\n",
        serde_json::Value::from(template)
    );
    let c = compile(&doc).unwrap_or_else(|e| panic!("{template}: {e}"));
    let mut req = request(uri, headers);
    match c.on_http_request(&conn(), &ep(), "https", &mut req, SystemTime::now(), Instant::now()).0 {
        Verdict::Respond(r) => String::from_utf8(r.body().to_vec()).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn render(expr: &str) -> String {
    render_for(&format!("${{{expr}}}"), "/", &[])
}

/// Whether the expression holds for a request to `uri` (a rule with it answers 200).
fn holds_for(expr: &str, uri: &str, headers: &[(&str, &str)]) -> bool {
    let doc = format!(
        "on_http_request:\n  - expressions: [{}]\n    actions: [{{type: custom-response, config: {{status_code: 200}}}}]\n",
        serde_json::Value::from(expr)
    );
    let c = compile(&doc).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut req = request(uri, headers);
    matches!(
        c.on_http_request(&conn(), &ep(), "https", &mut req, SystemTime::now(), Instant::now()).0,
        Verdict::Respond(_)
    )
}

fn holds(expr: &str) -> bool {
    holds_for(expr, "/", &[])
}

fn refused(expr: &str) -> String {
    let doc = format!(
        "on_http_request:\n  - expressions: [{}]\n    actions: [{{type: deny}}]\n",
        serde_json::Value::from(expr)
    );
    match compile(&doc) {
        Ok(_) => panic!("compiled: {expr}"),
        Err(e) => e,
    }
}

#[test]
fn base64_and_basic_auth_as_ngrok_documents_them() {
    assert_eq!(render("base64.encode(b'hello')"), "aGVsbG8=");
    assert_eq!(render("base64.encode('hello')"), "aGVsbG8=");
    assert!(holds("base64.decode('aGVsbG8=') == b'hello'"));
    // Without its padding it is not base64: an error, so the rule does not match.
    assert!(!holds("base64.decode('aGVsbG8') == b'hello'"));
    assert!(!holds("base64.decode('aGVsbG8') != b'hello'"));
    assert_eq!(render("\"c29tZTp0aGluZw==\".decodeBase64()"), "some:thing");
    assert_eq!(render("\"some:thing\".encodeBase64()"), "c29tZTp0aGluZw==");
    assert!(holds("\"c29tZTp0aGluZw==\".decodeBase64() == 'some:thing'"));
    assert_eq!(render("basic_auth.encode('username', 'password1')"), "Basic dXNlcm5hbWU6cGFzc3dvcmQx");
    assert!(holds("basic_auth.encode('username', 'password1') == 'Basic dXNlcm5hbWU6cGFzc3dvcmQx'"));
}

#[test]
fn hashes_give_ngroks_documented_values() {
    let cases = [
        ("crc32", "3610a686", "NhCmhg=="),
        ("crc64", "3c3eeee2d8100000", "PD7u4tgQAAA="),
        ("md5", "5d41402abc4b2a76b9719d911017c592", "XUFAKrxLKna5cZ2REBfFkg=="),
        ("sha1", "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", "qvTGHdzF6KLavt4PO0gs2a6pQ00="),
        (
            "sha256",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=",
        ),
        (
            "sha512",
            "9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043",
            "m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw==",
        ),
        ("xxhash64", "26c7827d889f6da3", "JseCfYifbaM="),
    ];
    for (f, hex, b64) in cases {
        assert_eq!(render(&format!("hash.{f}('hello')")), hex, "hash.{f}");
        assert_eq!(render(&format!("hash.{f}('hello', 'hex')")), hex, "hash.{f} hex");
        assert_eq!(render(&format!("hash.{f}('hello', 'base64')")), b64, "hash.{f} base64");
        assert_eq!(render(&format!("'hello'.{f}()")), hex, "'hello'.{f}()");
        assert_eq!(render(&format!("'hello'.{f}('base64')")), b64, "'hello'.{f}('base64')");
        assert!(holds(&format!("hash.{f}('hello') == '{hex}'")), "hash.{f} in an expression");
        // Spaces around the dot are CEL's business, not the rewriting's.
        assert_eq!(render(&format!("hash . {f} ('hello')")), hex, "hash . {f} (");
    }
    // A format that is neither is refused when it is written in the policy...
    let e = refused("hash.sha256('hello', 'b64') != ''");
    assert!(e.contains("sha256() with the format \"b64\""), "{e}");
    let e = refused("'hello'.md5('hex', 'again') != ''");
    assert!(e.contains("md5() with 3 operands"), "{e}");
    // ...and an error (no match) when it comes from the message.
    assert!(!holds_for("hash.sha256('hello', req.url.path) != ''", "/b64", &[]));
    // Interpolated, and on what the request holds.
    assert_eq!(
        render_for("${hash.md5(req.url.path)}", "/hello", &[]),
        render_for("${hash.md5('/hello')}", "/", &[])
    );
}

#[test]
fn json_as_ngrok_documents_it() {
    assert!(holds("json.decode('{\"a\":\"b\"}') == {'a': 'b'}"));
    assert!(holds("json.decode('[\"a\",\"b\",\"c\"]') == ['a', 'b', 'c']"));
    assert_eq!(render("json.encode(['a','b','c'])"), "[\"a\",\"b\",\"c\"]");
    assert_eq!(render("json.encode({'a': 'b'})"), "{\"a\":\"b\"}");
    assert_eq!(render("['a','b','c'].encodeJson()"), "[\"a\",\"b\",\"c\"]");
    // Keys sorted, as Go writes a map.
    assert_eq!(render("{'c': 'd', 'a': 'b'}.encodeJson()"), "{\"a\":\"b\",\"c\":\"d\"}");
    assert_eq!(render("{'n': [1, 2.5, true, null]}.encodeJson()"), "{\"n\":[1,2.5,true,null]}");
    assert!(holds("'{\"a\":\"b\"}'.decodeJson() == {'a': 'b'}"));
    assert!(holds("'{\"a\":\"b\",\"c\":\"d\"}'.isJson()"));
    assert!(holds("!'not json'.isJson()"));
    assert!(holds("json.decode('{\"n\": 3}').n + 1 == 4"));
    assert!(!holds("json.decode('{oops') == {}"));
    assert!(holds_for(
        "json.decode(getReqHeader('x-json-array')[0])[0] == \"first entry\"",
        "/",
        &[("x-json-array", "[\"first entry\", \"second\"]")]
    ));
}

#[test]
fn url_escaping_as_ngrok_documents_it() {
    assert_eq!(render("url.escape(\"i;md/r/$y\")"), "i%3Bmd%2Fr%2F%24y");
    assert!(holds("url.escape(\"i;md/r/$y\") == \"i%3Bmd%2Fr%2F%24y\""));
    assert_eq!(render("\"i;md/r/$y\".escapeUrl()"), "i%3Bmd%2Fr%2F%24y");
    assert_eq!(render("url.escape('a b')"), "a%20b");
    assert_eq!(render("url.unescape(\"i%3Bmd%2Fr%2F%24y\")"), "i;md/r/$y");
    assert_eq!(render("\"i%3Bmd%2Fr%2F%24y\".unescapeUrl()"), "i;md/r/$y");
    assert!(holds("url.unescape('%2Ffoo') == '/foo'"));
    assert!(!holds("url.unescape('%zz') != ''"));
    let e = refused("url.parse('https://ngrok.com').host == 'ngrok.com'");
    assert!(e.contains("calls url.parse(), which warren does not support"), "{e}");
    let e = refused("'https://ngrok.com'.parseUrl().host == 'ngrok.com'");
    assert!(e.contains("calls parseUrl(), which warren does not support"), "{e}");
}

#[test]
fn query_strings_as_ngrok_documents_them() {
    assert!(holds("queryString.decode(\"a=b&c=d\") == {'a': 'b', 'c': 'd'}"));
    assert!(holds_for("queryString.decode(req.url.query)[\"q\"] == \"hello\"", "/?q=hello", &[]));
    assert!(holds_for("queryString.encode({\"q\":\"policy\"}) == req.url.query", "/?q=policy", &[]));
    assert_eq!(render("{'a':'b','c':'d'}.encodeQueryString()"), "a=b&c=d");
    assert_eq!(render("queryString.encode({'q': 'a b&c', 'n': [1, 2]})"), "n=1&n=2&q=a+b%26c");
    assert!(holds("\"a=b&c=d\".decodeQueryString() == {'a': 'b', 'c': 'd'}"));
    assert!(holds("'q=a+b%26c&q=second'.decodeQueryString().q == 'a b&c'"));
    assert!(holds("'a=b&c=d'.isQueryString()"));
    assert!(holds("!'not a query string'.isQueryString()"));
}

#[test]
fn request_cookie_and_query_helpers() {
    let cookies = [("cookie", "session=abc; theme=dark; session=second")];
    assert!(holds_for("hasReqCookie('session') && !hasReqCookie('nope')", "/", &cookies));
    assert!(holds_for("getReqCookie('session').value == 'abc'", "/", &cookies));
    assert!(holds_for("getReqCookie('session').name == 'session'", "/", &cookies));
    assert!(holds_for("getReqCookie('nope') == null", "/", &cookies));
    // ngrok's own example reads a field request cookies do not carry: no match, no error.
    assert!(!holds_for("getReqCookie('session').secure", "/", &cookies));
    assert!(holds_for("hasQueryParam('q') && !hasQueryParam('Q')", "/?q=1", &[]));
    assert!(!holds_for("hasQueryParam('q')", "/?x=1", &[]));
    let tcp = Policy::from_text(
        "on_tcp_connect:\n  - expressions: [\"hasReqCookie('a')\"]\n    actions: [{type: deny}]\n",
        "tcp",
        &CompileEnv::default(),
    )
    .unwrap_err();
    assert!(tcp.to_string().contains("not available in on_tcp_connect"), "{tcp}");
}

#[test]
fn warrens_earlier_names_still_work_and_string_methods_too() {
    assert!(holds("b64decode(b64encode('hi')) == 'hi' && urlDecode(urlEncode('a b')) == 'a b'"));
    assert!(holds("sha256('abc').startsWith('ba7816bf')"));
    assert!(holds(
        "lower('AB') == 'ab' && 'AB'.lower() == 'ab' && ' x '.trim() == 'x' && 'a'.upper() == 'A'"
    ));
    // Inside string literals nothing is rewritten.
    assert!(holds("'hash.sha256(\\'x\\')' == \"hash.sha256('x')\""));
    assert_eq!(
        render_for("hash.md5(x) = ${hash.md5('x')}", "/", &[]),
        "hash.md5(x) = 9dd4e461268c8034f5c8564e155c67a6"
    );
}

#[test]
fn unknown_functions_are_refused_by_name_never_silently_false() {
    let e = refused("hash.foo('x') == 'y'");
    assert!(e.contains("unknown function hash.foo()") && e.contains("hash.sha256"), "{e}");
    let e = refused("base64.bar('x') == 'y'");
    assert!(e.contains("unknown function base64.bar()"), "{e}");
    // Even where evaluation would never reach it.
    let e = refused("false && hash.foo('x') == 'y'");
    assert!(e.contains("hash.foo"), "{e}");
    let e = refused("rand.int(0, 10) >= 5");
    assert!(e.contains("unknown function rand.int()"), "{e}");
    let e = refused("'a,b'.splitt(',').size() == 2");
    assert!(e.contains("unknown function splitt()"), "{e}");
    // In a template too.
    let e = compile(
        "on_http_request:\n  - actions: [{type: custom-response, config: {body: \"${json.dump([1])}\"}}]\n",
    )
    .err()
    .unwrap();
    assert!(e.contains("unknown function json.dump()"), "{e}");
    // A comprehension's variable is not a namespace.
    assert!(holds("['a'].exists(hash, hash.startsWith('a'))"));
}

/// A variable built from others cannot outgrow the limit however it nests (each value is
/// measured whole, shared parts counted every time), and rendering stays bounded.
#[test]
fn doubling_variables_are_refused_before_they_grow() {
    let mut vars = String::from("            - v0: \"");
    vars.push_str(&"x".repeat(4096));
    vars.push_str("\"\n");
    for i in 1..40 {
        vars.push_str(&format!("            - v{i}: \"${{[vars.v{p}, vars.v{p}]}}\"\n", p = i - 1));
    }
    let doc = format!(
        "on_http_request:\n  - actions:\n      - type: set-vars\n        config:\n          vars:\n{vars}      - type: custom-response\n        config:\n          body: \"${{vars.v39}}\"\n"
    );
    let c = compile(&doc).expect("compiles");
    let started = Instant::now();
    let mut req = request("/", &[]);
    let status =
        match c.on_http_request(&conn(), &ep(), "https", &mut req, SystemTime::now(), Instant::now()).0 {
            Verdict::Respond(r) => r.status().as_u16(),
            other => panic!("{other:?}"),
        };
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "bounded work");
    assert_eq!(status, 500, "refused: a variable over the limit");
}

#[test]
fn reassigning_one_name_many_times_is_capped_at_compile() {
    let mut vars = String::new();
    for _ in 0..300 {
        vars.push_str("            - a: \"${[vars.a]}\"\n");
    }
    let doc = format!(
        "on_http_request:\n  - actions:\n      - type: set-vars\n        config:\n          vars:\n{vars}"
    );
    let e = compile(&doc).err().expect("refused");
    assert!(e.contains("assignments"), "{e}");
}
