//! Every listener faces the internet. Each bad peer here gets a clear error or a closed
//! connection, and the edge and every other session keep working afterwards.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use warren_testkit::hostile::{Bystander, read_until_closed};
use warren_testkit::*;

#[tokio::test]
async fn garbage_and_plaintext_on_the_agent_port_are_dropped() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "calm1").await;

    let mut tcp = TcpStream::connect(edge.config.connect_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_until_closed(&mut tcp).await;

    let mut tcp = TcpStream::connect(edge.config.connect_addr).await.unwrap();
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let _ = tcp.write_all(&garbage).await;
    read_until_closed(&mut tcp).await;

    b.still_serves(&edge).await;
    assert_eq!(edge.edge().session_count(), 1);
}

#[tokio::test]
async fn non_muxado_bytes_inside_tls_end_only_that_connection() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "calm2").await;
    let mut tls = tls_connect(edge.config.connect_addr, "localhost", &edge.ca_pem, &[]).await;
    // A frame header with an unknown frame type, then noise.
    tls.write_all(&[0x00, 0x00, 0x04, 0xF0, 0x00, 0x00, 0x00, 0x01, 1, 2, 3, 4]).await.unwrap();
    tls.write_all(&[0xAB; 1000]).await.unwrap();
    tls.flush().await.unwrap();
    read_until_closed(&mut tls).await;
    b.still_serves(&edge).await;
}

/// muxado frames by hand, for what no multiplexer would send.
mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub(super) const DATA: u8 = 1;
    pub(super) const RST: u8 = 0;
    pub(super) const SYN: u8 = 0x2;
    pub(super) const FIN: u8 = 0x1;

    pub(super) fn header(len: u32, ty: u8, flags: u8, id: u32) -> [u8; 8] {
        let l = len.to_be_bytes();
        let i = id.to_be_bytes();
        [l[1], l[2], l[3], (ty << 4) | flags, i[0], i[1], i[2], i[3]]
    }

    pub(super) async fn write<W: AsyncWriteExt + Unpin>(
        w: &mut W,
        ty: u8,
        flags: u8,
        id: u32,
        payload: &[u8],
    ) {
        w.write_all(&header(payload.len() as u32, ty, flags, id)).await.unwrap();
        w.write_all(payload).await.unwrap();
        w.flush().await.unwrap();
    }

    /// (type, flags, stream id, payload)
    pub(super) async fn read<R: AsyncReadExt + Unpin>(r: &mut R) -> (u8, u8, u32, Vec<u8>) {
        let mut h = [0u8; 8];
        r.read_exact(&mut h).await.unwrap();
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.unwrap();
        (h[3] >> 4, h[3] & 0xF, u32::from_be_bytes(h[4..8].try_into().unwrap()) & 0x7FFF_FFFF, body)
    }

    /// Reads frames until stream `id` ends with FIN; returns its DATA. Other frames are skipped.
    pub(super) async fn reply<R: AsyncReadExt + Unpin>(r: &mut R, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let (ty, flags, sid, body) = read(r).await;
            if sid == id && ty == DATA {
                out.extend_from_slice(&body);
                if flags & FIN != 0 {
                    return out;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_data_frame_over_the_window_resets_that_stream_only() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "calm3").await;
    let mut tls = tls_connect(edge.config.connect_addr, "localhost", &edge.ca_pem, &[]).await;

    // Auth on stream 1, by hand.
    let auth = serde_json::json!({ "Version": ["3"], "Extra": { "AuthToken": edge.authtoken } });
    let mut payload = 0u32.to_be_bytes().to_vec();
    payload.extend_from_slice(auth.to_string().as_bytes());
    raw::write(&mut tls, raw::DATA, raw::SYN, 1, &payload).await;
    let resp: warren_proto::AuthResp =
        serde_json::from_slice(&within("AuthResp", raw::reply(&mut tls, 1)).await).unwrap();
    assert!(resp.error.is_empty(), "{}", resp.error);

    // Stream 3 opens with a DATA frame of 16 MiB − 1 (the largest a 24-bit length allows),
    // far over the 256 KiB window.
    let len: u32 = 0x00FF_FFFF;
    tls.write_all(&raw::header(len, raw::DATA, raw::SYN, 3)).await.unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0usize;
    while sent < len as usize {
        let n = chunk.len().min(len as usize - sent);
        tls.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    // The edge resets stream 3 with FLOW_CONTROL_ERROR (3) ...
    // (the edge's heartbeat stream 2 may interleave; a GOAWAY would fail the test).
    let body = within("RST", async {
        loop {
            let (ty, _, id, body) = raw::read(&mut tls).await;
            assert_ne!(ty, 3, "the edge must not end the session: GOAWAY {body:?}");
            if ty == raw::RST && id == 3 {
                return body;
            }
        }
    })
    .await;
    assert_eq!(u32::from_be_bytes(body[..4].try_into().unwrap()), 3, "FLOW_CONTROL_ERROR");

    // ... and the session goes on: a Bind on stream 5 succeeds.
    let bind =
        serde_json::json!({ "Id": "ep0", "Proto": "https", "Opts": { "Domain": "raw3.warren.localhost" } });
    let mut payload = 1u32.to_be_bytes().to_vec();
    payload.extend_from_slice(bind.to_string().as_bytes());
    raw::write(&mut tls, raw::DATA, raw::SYN, 5, &payload).await;
    let resp: warren_proto::BindResp =
        serde_json::from_slice(&within("BindResp", raw::reply(&mut tls, 5)).await).unwrap();
    assert!(resp.error.is_empty(), "{}", resp.error);
    assert_eq!(edge.edge().session_count(), 2);
    b.still_serves(&edge).await;
}

#[tokio::test]
async fn an_rpc_over_the_size_limit_is_refused() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "calm4").await;
    // Before Auth, a message beyond the pre-Auth buffer (64 KiB) is either answered with the
    // limit, or, when it arrives faster than the edge reads, its stream is reset
    // (ENHANCE_YOUR_CALM); either way the connection is closed.
    let raw = RawSession::connect(&edge, true).await;
    let mut body = br#"{"Version":["3"],"Extra":{"Metadata":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 300 * 1024));
    match raw.rpc_raw(0, &body).await {
        Ok(reply) => {
            let resp: warren_proto::AuthResp = serde_json::from_slice(&reply).unwrap();
            assert!(resp.error.contains("limit"), "{}", resp.error);
        }
        Err(e) => assert!(e.to_string().contains("enhance your calm"), "{e}"),
    }
    within("session closed", raw.mux.closed()).await;
    // After Auth, an oversized Bind gets the limit in its reply and the session goes on.
    let raw = RawSession::authenticated(&edge, &edge.authtoken).await;
    let mut body = br#"{"Id":"big","Proto":"https","Opts":{},"Extra":{"Metadata":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 300 * 1024));
    let reply = raw.rpc_raw(1, &body).await.unwrap();
    let resp: warren_proto::BindResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.contains("limit"), "{}", resp.error);
    assert!(raw.bind_https("ep0", "raw4.warren.localhost").await.error.is_empty());
    b.still_serves(&edge).await;
}

#[tokio::test]
async fn invalid_json_in_rpcs_gets_a_clear_error() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "calm5").await;

    // Before Auth: the session is refused with a reason.
    let raw = RawSession::connect(&edge, true).await;
    let reply = raw.rpc_raw(0, b"{this is not json}").await.unwrap();
    let resp: warren_proto::AuthResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.contains("invalid Auth message"), "{}", resp.error);

    // After Auth: the bad Bind is refused; the session stays and can still bind.
    let raw = RawSession::connect(&edge, true).await;
    assert!(raw.auth(&edge.authtoken).await.error.is_empty());
    let reply = raw.rpc_raw(1, b"[1,2,3]").await.unwrap();
    let resp: warren_proto::BindResp = serde_json::from_slice(&reply).unwrap();
    assert!(
        resp.error.contains("invalid Bind message") && resp.error.contains("ERR_NGROK_9010"),
        "{}",
        resp.error
    );
    let reply = raw.rpc_raw(1, br#"{"Id":"a","Proto":"https","Opts":{"Domain":42}}"#).await.unwrap();
    let resp: warren_proto::BindResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.contains("invalid https options"), "{}", resp.error);
    assert!(raw.bind_https("ep0", "raw5.warren.localhost").await.error.is_empty());
    b.still_serves(&edge).await;
}

#[tokio::test]
async fn an_unknown_stream_type_is_reset_and_the_session_continues() {
    let edge = TestEdge::start().await;
    let raw = RawSession::connect(&edge, true).await;
    assert!(raw.auth(&edge.authtoken).await.error.is_empty());
    let err = raw.rpc_raw(0x1234_5678, b"{}").await.unwrap_err();
    assert!(err.to_string().contains("reset"), "{err}");
    let bind = raw.bind_https("ep0", "raw6.warren.localhost").await;
    assert!(bind.error.is_empty(), "{}", bind.error);
    assert_eq!(edge.edge().session_count(), 1);
}

#[tokio::test]
async fn rpcs_before_auth_are_refused() {
    let edge = TestEdge::start().await;
    let raw = RawSession::connect(&edge, true).await;
    let reply = raw.rpc_raw(1, br#"{"Id":"x","Proto":"https","Opts":{}}"#).await.unwrap();
    let resp: warren_proto::BindResp = serde_json::from_slice(&reply).unwrap();
    assert!(resp.error.contains("ERR_NGROK_4018"), "{}", resp.error);
    assert_eq!(edge.edge().session_count(), 0);
}

#[tokio::test]
async fn garbage_on_the_visitor_ports_is_answered_or_dropped() {
    let edge = TestEdge::start().await;
    let b = Bystander::start(&edge, "calm7").await;
    // Not HTTP on the plain port: a 400 and a close.
    let mut tcp = TcpStream::connect(edge.http_addr()).await.unwrap();
    tcp.write_all(b"\x16\x03\x01 definitely not http\r\n\r\n").await.unwrap();
    let got = read_until_closed(&mut tcp).await;
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&got));
    // Not TLS on the https port.
    let mut tcp = TcpStream::connect(edge.https_addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: calm7.warren.localhost\r\n\r\n").await.unwrap();
    read_until_closed(&mut tcp).await;
    // Headers over the limit.
    let mut tcp = TcpStream::connect(edge.http_addr()).await.unwrap();
    let mut req = b"GET / HTTP/1.1\r\nHost: calm7.warren.localhost\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 1 << 20));
    let _ = tcp.write_all(&req).await;
    let got = read_until_closed(&mut tcp).await;
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&got));
    b.still_serves(&edge).await;
}
