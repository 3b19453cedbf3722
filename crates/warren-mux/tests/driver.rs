//! The tokio driver against itself over an in-memory duplex pipe.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_mux::{Config, ErrorCode, Mux, Role};

/// Guard against hangs; never used to wait for something to happen.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn pair() -> (Mux, Mux) {
    let (a, b) = tokio::io::duplex(128 * 1024);
    (
        warren_mux::start(a, Role::Client, Config::default()),
        warren_mux::start(b, Role::Server, Config::default()),
    )
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_shutdown_drop_delivers_everything() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (client, server) = pair();
        let data = pattern(1, 4 * 1024 * 1024);
        let expect = data.clone();
        let reader = tokio::spawn(async move {
            let mut s = server.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.map(|_| got)
        });
        // The usual forwarding pattern: copy, half-close, drop, without waiting for the peer.
        let mut s = client.open().unwrap();
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        let got = reader.await.unwrap().expect("the reader must not see a reset");
        assert_eq!(got.len(), expect.len());
        assert!(got == expect);
    })
    .await
    .expect("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_echo_over_split_streams() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (client, server) = pair();
        tokio::spawn(async move {
            while let Some(s) = server.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(s);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = client.open().unwrap();
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s);
                let data = pattern(i, 512 * 1024 + i as usize);
                let expect = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                    w
                });
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                let _w = writer.await.unwrap();
                assert!(got == expect, "stream {i}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(client.stream_count(), 0);
    })
    .await
    .expect("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_both_sessions_and_fails_streams() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (client, server) = pair();
        let mut s = client.open().unwrap();
        s.write_all(b"x").await.unwrap();
        let mut peer = server.accept().await.unwrap();
        server.close(ErrorCode::None, "maintenance");
        assert!(client.accept().await.is_none());
        client.closed().await;
        server.closed().await;
        assert_eq!(client.remote_goaway(), Some((ErrorCode::None, "maintenance".to_string())));
        assert!(s.read(&mut [0u8; 4]).await.is_err());
        assert!(peer.write_all(b"late").await.is_err());
        assert!(client.open().is_err());
    })
    .await
    .expect("timed out");
}

/// The edge's auth-failure path: reply, half-close, drop, then GOAWAY and close the transport
/// at once. The reply must still reach a client that half-closed its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_then_close_delivers_the_reply() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        for half_close_request in [true, false] {
            let (client, server) = pair();
            tokio::spawn(async move {
                let mut s = server.accept().await.unwrap();
                let mut req = [0u8; 7];
                s.read_exact(&mut req).await.unwrap();
                s.write_all(b"the reply").await.unwrap();
                s.shutdown().await.unwrap();
                drop(s);
                server.close(ErrorCode::None, "bye");
                server.closed().await;
            });
            let mut s = client.open().unwrap();
            s.write_all(b"request").await.unwrap();
            if half_close_request {
                s.shutdown().await.unwrap();
            }
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("the reply, not an error");
            assert_eq!(got, b"the reply", "half_close_request={half_close_request}");
        }
    })
    .await
    .expect("timed out");
}

/// A TCP socket spliced to a stream, as the edge and the agent forward: bytes both ways, each
/// end's half-close reaching the other, and the byte counts returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_copies_both_ways_and_passes_half_closes_on() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (client, server) = pair();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The "visitor": sends 3 MiB, half-closes, then reads the echo to the end.
        let visitor = tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let data = pattern(11, 3 * 1024 * 1024);
            let (mut r, mut w) = tcp.split();
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            assert!(got == data, "the echo came back whole");
        });
        // The far end of the stream echoes until the half-close, then closes its side.
        let echo = tokio::spawn(async move {
            let mut s = server.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(&all).await.unwrap();
            s.shutdown().await.unwrap();
            all.len()
        });
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut stream = client.open().unwrap();
        let (up, down) = warren_mux::splice::splice(&mut tcp, &mut stream).await.unwrap();
        assert_eq!((up, down), (3 * 1024 * 1024, 3 * 1024 * 1024));
        assert_eq!(echo.await.unwrap(), 3 * 1024 * 1024);
        visitor.await.unwrap();
    })
    .await
    .expect("timed out");
}

/// A closed session lets go of its transport even when the peer neither sends nor reads:
/// the socket of a peer that went silent after GOAWAY (or never read the last frames) is
/// not kept.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_loses_the_transport_once_the_session_closes() {
    let (ours, mut peer) = tokio::io::duplex(1024);
    let mux = warren_mux::start(ours, Role::Server, Config::default());
    mux.close(ErrorCode::None, "bye");
    mux.closed().await;
    // Both halves are gone: the peer's writes fail. Before, the reader kept waiting for a
    // byte that never came, and held the transport.
    let mut failed = false;
    for _ in 0..100 {
        if peer.write_all(b"x").await.is_err() {
            failed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(failed, "the transport was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_loses_the_transport_after_the_close_grace() {
    let (ours, mut peer) = tokio::io::duplex(64);
    let mux = warren_mux::start(ours, Role::Server, Config::default());
    let mut s = mux.open().unwrap();
    // More than the pipe holds: the writer blocks on a peer that does not read.
    tokio::spawn(async move {
        let _ = s.write_all(&[0u8; 100_000]).await;
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = tokio::time::Instant::now();
    mux.close(ErrorCode::None, "bye");
    mux.closed().await;
    let waited = start.elapsed();
    assert!(waited >= warren_mux::driver::CLOSE_GRACE, "it waited for the peer: {waited:?}");
    assert!(waited < warren_mux::driver::CLOSE_GRACE + Duration::from_secs(1), "{waited:?}");
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.expect("what was written, then the end");
}

/// A write on a quiet session reaches the transport from the writing task itself: in a
/// current-thread runtime the frame is there before any other task (the writer task
/// included) has had a turn. Before, every frame waited for the writer task to be woken.
#[tokio::test(flavor = "current_thread")]
async fn a_lone_write_reaches_the_transport_from_the_writing_task() {
    use std::task::{Context, Waker};
    use tokio::io::{AsyncRead, AsyncWrite};
    let (ours, mut peer) = tokio::io::duplex(64 * 1024);
    let mux = warren_mux::start(ours, Role::Client, Config::default());
    let mut s = mux.open().unwrap();
    // One poll, no await: the runtime never switches tasks in between.
    let mut cx = Context::from_waker(Waker::noop());
    let written = std::pin::Pin::new(&mut s).poll_write(&mut cx, b"hello");
    assert!(matches!(written, std::task::Poll::Ready(Ok(5))), "{written:?}");
    let mut buf = [0u8; 64];
    let mut read = tokio::io::ReadBuf::new(&mut buf);
    let got = std::pin::Pin::new(&mut peer).poll_read(&mut cx, &mut read);
    assert!(got.is_ready(), "the frame is not on the transport yet");
    // A DATA frame with SYN for stream 1: 5 bytes of payload.
    let frame = read.filled();
    assert_eq!(frame.len(), 8 + 5, "{frame:?}");
    assert_eq!(&frame[..3], &[0, 0, 5], "length");
    assert_eq!(frame[3], 1 << 4 | 0x2, "type DATA, flag SYN");
    assert_eq!(&frame[4..8], &1u32.to_be_bytes(), "stream id");
    assert_eq!(&frame[8..], b"hello");
}

/// A write from a stream's own task that the transport cannot take (the peer does not read)
/// is handed to the writer task, which then waits on the transport; a later write that comes
/// alone must leave it there (written from its own task, it would put that task's waker in
/// place of the writer's, and the writer would never wake again). Everything arrives, in
/// order, once the peer reads.
#[tokio::test(flavor = "current_thread")]
async fn a_write_the_transport_cannot_take_is_finished_by_the_writer_task() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (ours, theirs) = tokio::io::duplex(64);
        let client = warren_mux::start(ours, Role::Client, Config::default());
        let mut s = client.open().unwrap();
        let data = pattern(7, 8 * 1024);
        let (first, second) = data.split_at(1024);
        // Alone: written from this task, and the 64-byte pipe takes only part of it.
        s.write_all(first).await.unwrap();
        // The writer task (woken by the hand-off) takes over and waits on the pipe; a gap
        // longer than the mux's 50 µs makes the next write come alone too.
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.write_all(second).await.unwrap();
        s.shutdown().await.unwrap();
        // Now the peer starts reading: every byte arrives, in order.
        let server = warren_mux::start(theirs, Role::Server, Config::default());
        let mut r = server.accept().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "the stream's bytes arrived whole and in order");
    })
    .await
    .expect("timed out: the writer task was never woken");
}

/// `rpc::call` against `rpc::read_message` + `rpc::reply`: the request arrives whole without a
/// half-close (as ngrok clients send it), the reply comes back typed.
#[tokio::test]
async fn an_rpc_round_trips_a_typed_request_and_reply() {
    use warren_mux::rpc;
    let (client, server) = pair();
    let answer = tokio::spawn(async move {
        let mut s = server.accept().await.unwrap();
        assert_eq!(warren_mux::typed::read_type(&mut s).await.unwrap(), 7);
        let req: warren_proto::Unbind = rpc::read_message(&mut s, "Unbind", 1024).await.unwrap();
        let resp = warren_proto::UnbindResp { error: format!("no endpoint {}", req.client_id) };
        rpc::reply(&mut s, &resp).await.unwrap();
    });
    let req = warren_proto::Unbind { client_id: "ep_1".into() };
    let resp: warren_proto::UnbindResp =
        rpc::call(&client, 7, "Unbind", &req, 1024, TEST_TIMEOUT).await.unwrap();
    assert_eq!(resp.error, "no endpoint ep_1");
    answer.await.unwrap();
}

/// A request over the limit fails at once, naming the limit; a call the peer never answers
/// fails at its timeout.
#[tokio::test]
async fn an_rpc_too_large_or_never_answered_fails_cleanly() {
    use warren_mux::rpc;
    let (client, server) = pair();
    tokio::spawn(async move {
        while let Some(mut s) = server.accept().await {
            tokio::spawn(async move {
                let ty = warren_mux::typed::read_type(&mut s).await.unwrap();
                let r: Result<serde_json::Value, _> = rpc::read_message(&mut s, "Bind", 64).await;
                if ty == 2 {
                    // Read it, never answer.
                    std::future::pending::<()>().await;
                }
                let text = match r {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => e.to_string(),
                };
                let _ = rpc::reply(&mut s, &text).await;
            });
        }
    });
    let big = serde_json::json!({ "Id": "x".repeat(100) });
    let said: String = rpc::call(&client, 1, "Bind", &big, 1024, TEST_TIMEOUT).await.unwrap();
    assert!(said.contains("larger than the 64-byte limit"), "{said}");
    let small = serde_json::json!({ "Id": "x" });
    let r: Result<String, _> = rpc::call(&client, 2, "Bind", &small, 1024, Duration::from_millis(100)).await;
    assert!(matches!(r, Err(rpc::RpcError::Timeout("Bind"))), "{r:?}");
}
