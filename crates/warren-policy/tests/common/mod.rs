//! What the policy tests share: a connection, an endpoint and a request to run rules on.

use warren_policy::{Conn, EndpointInfo};

/// A visitor's connection from `ip` to the edge's port 443.
pub(crate) fn conn(ip: &str) -> Conn {
    Conn {
        client_ip: ip.parse().unwrap(),
        client_port: 40000,
        server_ip: "127.0.0.1".parse().unwrap(),
        server_port: 443,
        tls: None,
    }
}

/// `https://app.example.com`, as expressions see it.
pub(crate) fn ep() -> EndpointInfo {
    EndpointInfo {
        id: "ep_1".into(),
        url: "https://app.example.com".into(),
        proto: "https".into(),
        host: "app.example.com".into(),
        port: 443,
    }
}

/// A request for app.example.com with `headers`.
pub(crate) fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri).header("host", "app.example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}
