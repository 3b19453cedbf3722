//! The edge's parsers of bytes from the network, for the fuzz targets `proxy_header` and
//! `client_hello` and the regression test that replays their corpora. Not part of the API.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// A PROXY protocol v1 line or v2 block, as a trusted balancer would send it: parsed and,
/// where it parses, holding a real address. Never panics.
pub fn proxy_header(data: &[u8]) {
    let _ = crate::proxy_protocol::parse_v1(data);
    if let Some(head) = data.get(..16) {
        let head: &[u8; 16] = head.try_into().expect("sixteen bytes");
        if let Ok(n) = crate::proxy_protocol::v2_body_len(head) {
            assert!(n <= crate::proxy_protocol::V2_MAX_BODY);
            let body = &data[16..];
            let _ = crate::proxy_protocol::parse_v2(head, &body[..n.min(body.len())]);
        }
    }
    // Through the reader, which takes exactly the header's bytes off the connection.
    let mut io = data;
    let _ = run(crate::proxy_protocol::read_header(&mut io));
}

/// The shared TLS port's first bytes: a ClientHello is read (at most 64 KiB), and every byte
/// read is kept for replay. Never panics.
pub fn client_hello(data: &[u8]) {
    let mut io = data;
    if let Some(Ok(hello)) = run(crate::tls_front::read_hello(&mut io)) {
        assert!(hello.buffered.len() <= crate::tls_front::MAX_HELLO);
        assert!(data.starts_with(&hello.buffered), "what is replayed is what was read");
    }
}

/// Polls a future that reads from a byte slice: it never waits, so one poll finishes it.
fn run<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
