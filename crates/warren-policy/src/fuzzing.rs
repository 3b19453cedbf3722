//! A traffic-policy document from arbitrary text, compiled for every kind of endpoint and,
//! when it compiles, run on a connection, a request and a response. For the fuzz target
//! `policy` and the regression test that replays its corpus. Not part of the API.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::{Chain, CompileEnv, Conn, Document, EndpointInfo, Policy};

/// Never panics, and every run of a compiled policy ends within its step budget.
///
/// A panic inside the CEL library is caught by `cost::execute` in the edge, but under the
/// fuzzer it aborts the run: every one found is a type combination to guard against (as
/// macros over a non-list are, by `cost::ITERABLE`).
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(doc) = Document::parse(text) else { return };
    let env = CompileEnv::default();
    let conn = Conn {
        client_ip: "203.0.113.9".parse().expect("literal"),
        client_port: 40000,
        server_ip: "127.0.0.1".parse().expect("literal"),
        server_port: 443,
        tls: None,
    };
    let ep = EndpointInfo {
        id: "ep_fuzz".into(),
        url: "https://fuzz.example.com".into(),
        proto: "https".into(),
        host: "fuzz.example.com".into(),
        port: 443,
    };
    for proto in ["https", "http", "tcp", "tls"] {
        let _ = Policy::compile_for_account(&doc, proto, &env);
        let Ok(policy) = Policy::compile(&doc, proto, &env) else { continue };
        let chain = Chain(vec![Arc::new(policy)]);
        let (now, mono) = (SystemTime::UNIX_EPOCH, Instant::now());
        let _ = chain.on_tcp_connect(&conn, &ep, now, mono);
        if proto == "https" || proto == "http" {
            let mut req = http::Request::builder()
                .uri("/a/b?x=1&x=2")
                .header("host", "fuzz.example.com")
                .header("x-list", "a")
                .header("x-list", "b")
                .body(())
                .expect("request")
                .into_parts()
                .0;
            let _ = chain.on_http_request(&conn, &ep, "https", &mut req, now, mono);
            let mut res = http::Response::builder().status(200).body(()).expect("response").into_parts().0;
            let _ = chain.on_http_response(&conn, &ep, "https", &req, &mut res, now, mono);
            req.headers.clear();
        }
    }
}
