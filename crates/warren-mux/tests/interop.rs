//! Interoperability with the reference implementation, the `muxado` crate, over an in-memory
//! duplex pipe. Every scenario runs twice: warren as client with muxado as server, and the
//! reverse.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use muxado::heartbeat::{Heartbeat, HeartbeatConfig};
use muxado::typed::{StreamType, Typed, TypedAccept, TypedOpenClose, TypedSession};
use muxado::{Accept, MuxadoAccept, MuxadoOpen, MuxadoSession, OpenClose, Session as _, SessionBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use warren_mux::typed::{HEARTBEAT_TYPE, HeartbeatError, answer_heartbeats, read_type, run_heartbeats};
use warren_mux::{Config, ErrorCode, Mux, Role};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const WINDOW: usize = 256 * KIB;

/// Guard against hangs; never used to wait for something to happen.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

struct Peers {
    warren: Mux,
    open: MuxadoOpen,
    accept: MuxadoAccept,
}

fn connect_session(warren_role: Role) -> (Mux, MuxadoSession) {
    let (a, b) = tokio::io::duplex(256 * KIB);
    let warren = warren_mux::start(a, warren_role, Config::default());
    let builder = SessionBuilder::new(b);
    let builder = match warren_role {
        Role::Client => builder.server(),
        Role::Server => builder.client(),
    };
    (warren, builder.start())
}

fn connect(warren_role: Role) -> Peers {
    let (warren, session) = connect_session(warren_role);
    let (open, accept) = session.split();
    Peers { warren, open, accept }
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

/// Reads everything and writes it back, then half-closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<usize> {
    let mut buf = vec![0u8; 32 * KIB];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            s.shutdown().await?;
            return Ok(total);
        }
        s.write_all(&buf[..n]).await?;
        total += n;
    }
}

/// Writes `len` pattern bytes and half-closes while reading the echo; checks it byte for byte.
/// Reads and writes run in two tasks on the two halves of the stream.
async fn exchange<S: AsyncRead + AsyncWrite + Send + 'static>(s: S, seed: u64, len: usize) {
    let (mut r, mut w) = tokio::io::split(s);
    let data = pattern(seed, len);
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut got = Vec::with_capacity(len);
    r.read_to_end(&mut got).await.expect("read echo");
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), len, "stream {seed}: length");
    assert!(got == expect, "stream {seed}: bytes differ");
}

/// Like [`exchange`], but reads and writes from one task. Streams of the `muxado` crate need
/// this: a muxado stream takes incoming frames from one channel in both `poll_read` and
/// `poll_write` (for WNDINC) and that channel keeps one waker, so with the halves in two tasks the
/// writer can steal the reader's wakeup and the reader sleeps forever with data queued.
async fn exchange_one_task<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, seed: u64, len: usize) {
    let data = pattern(seed, len);
    let (mut sent, mut shut, mut eof) = (0, false, false);
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 32 * KIB];
    while !(shut && eof) {
        poll_fn(|cx| {
            let mut progress = false;
            if sent < len {
                if let Poll::Ready(r) = Pin::new(&mut s).poll_write(cx, &data[sent..]) {
                    sent += r.expect("write");
                    progress = true;
                }
            } else if !shut && let Poll::Ready(r) = Pin::new(&mut s).poll_shutdown(cx) {
                r.expect("shutdown");
                shut = true;
                progress = true;
            }
            if !eof {
                let mut rb = ReadBuf::new(&mut buf);
                if let Poll::Ready(r) = Pin::new(&mut s).poll_read(cx, &mut rb) {
                    r.expect("read echo");
                    eof = rb.filled().is_empty();
                    got.extend_from_slice(rb.filled());
                    progress = true;
                }
            }
            if progress { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
    }
    assert_eq!(got.len(), len, "stream {seed}: length");
    assert!(got == data, "stream {seed}: bytes differ");
}

/// Polls one write without waiting: `None` when the writer would block.
async fn try_write<S: AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> Option<usize> {
    poll_fn(|cx| match Pin::new(&mut *s).poll_write(cx, buf) {
        Poll::Ready(r) => Poll::Ready(Some(r.expect("write failed"))),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Writes until the stream would block; returns how much was taken.
async fn fill_window<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> usize {
    let mut off = 0;
    while off < data.len() {
        match try_write(s, &data[off..(off + 16 * KIB).min(data.len())]).await {
            Some(n) => off += n,
            None => return off,
        }
        // Let the session tasks move what was written (and any credit that comes back).
        tokio::task::yield_now().await;
    }
    off
}

fn muxado_code(e: &io::Error) -> Option<muxado::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<muxado::Error>()).copied()
}

// ---------------------------------------------------------------------------------------------
// Scenarios, each parameterised by warren's role
// ---------------------------------------------------------------------------------------------

const STREAMS: usize = 50;
const STREAM_LEN: usize = MIB;

async fn many_streams_warren_opens(role: Role) {
    let Peers { warren, open: _open, mut accept } = connect(role);
    let server = tokio::spawn(async move {
        let mut echoes = Vec::new();
        for _ in 0..STREAMS {
            let s = accept.accept().await.expect("muxado accept");
            echoes.push(tokio::spawn(echo(s)));
        }
        for e in echoes {
            assert_eq!(e.await.unwrap().expect("muxado echo"), STREAM_LEN);
        }
    });
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        let s = warren.open().unwrap();
        clients.push(tokio::spawn(exchange(s, i as u64, STREAM_LEN)));
    }
    for c in clients {
        c.await.unwrap();
    }
    server.await.unwrap();
    assert_eq!(warren.stream_count(), 0, "finished streams are forgotten");
}

async fn many_streams_muxado_opens(role: Role) {
    let Peers { warren, open, accept: _accept } = connect(role);
    let w = warren.clone();
    let server = tokio::spawn(async move {
        let mut echoes = Vec::new();
        for _ in 0..STREAMS {
            let s = w.accept().await.expect("warren accept");
            echoes.push(tokio::spawn(echo(s)));
        }
        for e in echoes {
            assert_eq!(e.await.unwrap().expect("warren echo"), STREAM_LEN);
        }
    });
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        let mut open = open.clone();
        clients.push(tokio::spawn(async move {
            let s = open.open().await.expect("muxado open");
            exchange_one_task(s, 1000 + i as u64, STREAM_LEN).await;
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    server.await.unwrap();
    assert_eq!(warren.stream_count(), 0, "finished streams are forgotten");
}

async fn half_close(role: Role) {
    let Peers { warren, mut open, mut accept } = connect(role);

    // warren asks, muxado answers after seeing EOF.
    let mut s = warren.open().unwrap();
    s.write_all(b"request from warren").await.unwrap();
    s.shutdown().await.unwrap();
    let mut m = accept.accept().await.unwrap();
    let mut req = Vec::new();
    m.read_to_end(&mut req).await.unwrap();
    assert_eq!(req, b"request from warren");
    m.write_all(b"reply from muxado").await.unwrap();
    m.shutdown().await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"reply from muxado");
    assert!(s.write_all(b"x").await.is_err(), "write after shutdown fails");

    // muxado asks, warren answers after seeing EOF.
    let mut m = open.open().await.unwrap();
    m.write_all(b"request from muxado").await.unwrap();
    m.shutdown().await.unwrap();
    let mut s = warren.accept().await.unwrap();
    let req = s.read_to_end_limited(1024).await.unwrap();
    assert_eq!(req, b"request from muxado");
    s.write_all(b"reply from warren").await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    m.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"reply from warren");

    // A stream half-closed before any data: SYN and FIN together.
    let mut s = warren.open().unwrap();
    s.shutdown().await.unwrap();
    let mut m = accept.accept().await.unwrap();
    let mut req = Vec::new();
    m.read_to_end(&mut req).await.unwrap();
    assert!(req.is_empty());
    m.write_all(b"still open this way").await.unwrap();
    m.shutdown().await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"still open this way");
}

/// warren opens a stream and writes `marker` on it; muxado accepts it and reads the marker.
/// Frames are handled in order, so once muxado has it everything warren sent before arrived.
async fn barrier(warren: &Mux, accept: &mut MuxadoAccept) {
    let mut s = warren.open().unwrap();
    s.write_all(b"barrier").await.unwrap();
    let mut m = accept.accept().await.unwrap();
    let mut buf = [0u8; 7];
    m.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"barrier");
}

async fn warren_resets(role: Role) {
    let Peers { warren, mut open, mut accept } = connect(role);

    // warren resets a stream it opened.
    let mut s = warren.open().unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut m = accept.accept().await.unwrap();
    let mut buf = [0u8; 5];
    m.read_exact(&mut buf).await.unwrap();
    s.reset(ErrorCode::StreamCancelled);
    let e = s.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    barrier(&warren, &mut accept).await;
    let e = m.write_all(b"anyone there?").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(muxado_code(&e), Some(muxado::Error::StreamCancelled));

    // warren drops a stream muxado opened before reading it all: RST, not FIN.
    let mut m = open.open().await.unwrap();
    m.write_all(b"unread").await.unwrap();
    let s = warren.accept().await.unwrap();
    drop(s);
    barrier(&warren, &mut accept).await;
    let e = m.write_all(b"more").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(muxado_code(&e), Some(muxado::Error::StreamCancelled));

    // The session survives.
    let m = open.open().await.unwrap();
    let s = tokio::spawn(async move { echo(warren.accept().await.unwrap()).await });
    exchange_one_task(m, 7, 100 * KIB).await;
    assert_eq!(s.await.unwrap().unwrap(), 100 * KIB);
}

async fn muxado_resets(role: Role) {
    let Peers { warren, mut open, mut accept } = connect(role);

    // muxado has no reset call: a muxado stream dropped (FIN) answers further data with RST.
    for warren_opens in [true, false] {
        let (mut s, m) = if warren_opens {
            let mut s = warren.open().unwrap();
            s.write_all(b"hi").await.unwrap();
            let mut m = accept.accept().await.unwrap();
            // Read what warren sent first: a muxado stream dropped with data still on its way
            // answers that data with RST instead of closing with FIN.
            let mut buf = [0u8; 2];
            m.read_exact(&mut buf).await.unwrap();
            (s, m)
        } else {
            let mut m = open.open().await.unwrap();
            m.write_all(b"hi").await.unwrap();
            (warren.accept().await.unwrap(), m)
        };
        drop(m);
        // The drop arrives as FIN.
        let mut got = Vec::new();
        let n = s.read_to_end(&mut got).await.unwrap();
        assert_eq!(n, if warren_opens { 0 } else { 2 });
        // Writing on: muxado no longer knows the stream and resets it.
        let e = loop {
            if let Err(e) = s.write_all(&[0u8; 16 * KIB]).await {
                break e;
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        let e = s.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        drop(s);
    }

    // The session survives.
    let s = warren.open().unwrap();
    let m = tokio::spawn(async move { echo(accept.accept().await.unwrap()).await });
    exchange(s, 8, 100 * KIB).await;
    assert_eq!(m.await.unwrap().unwrap(), 100 * KIB);
    assert_eq!(warren.stream_count(), 0);
}

const FLOOD: usize = 4 * MIB;

async fn window_exhaustion_warren_sends(role: Role) {
    let Peers { warren, open: _open, mut accept } = connect(role);
    let data = pattern(21, FLOOD);
    let mut s = warren.open().unwrap();
    // muxado does not read yet: warren can send exactly one window.
    let sent = fill_window(&mut s, &data).await;
    assert_eq!(sent, WINDOW);
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut m = accept.accept().await.unwrap();
        go_rx.await.unwrap();
        let mut got = Vec::new();
        m.read_to_end(&mut got).await.unwrap();
        got
    });
    // Still blocked: credit comes back only when muxado reads.
    assert_eq!(try_write(&mut s, &data[sent..]).await, None);
    go_tx.send(()).unwrap();
    s.write_all(&data[sent..]).await.unwrap();
    s.shutdown().await.unwrap();
    let got = reader.await.unwrap();
    assert_eq!(got.len(), FLOOD);
    assert!(got == data, "bytes differ");
}

async fn window_exhaustion_muxado_sends(role: Role) {
    let Peers { warren, mut open, accept: _accept } = connect(role);
    let data = pattern(22, FLOOD);
    let mut m = open.open().await.unwrap();
    let sent = fill_window(&mut m, &data).await;
    assert_eq!(sent, WINDOW);
    let mut s = warren.accept().await.unwrap();
    assert_eq!(try_write(&mut m, &data[sent..]).await, None);
    let writer = tokio::spawn(async move {
        m.write_all(&data[sent..]).await.unwrap();
        m.shutdown().await.unwrap();
        (m, data)
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    let (_m, data) = writer.await.unwrap();
    assert_eq!(got.len(), FLOOD);
    assert!(got == data, "bytes differ");
}

/// muxado numbers a stream at `open()` but sends its SYN with the first write, so SYNs of
/// streams opened together can arrive in reverse id order.
async fn syns_out_of_id_order(role: Role) {
    let Peers { warren, mut open, accept: _accept } = connect(role);
    let mut first = open.open().await.unwrap();
    let mut second = open.open().await.unwrap();
    second.write_all(b"second").await.unwrap();
    let mut s2 = warren.accept().await.unwrap();
    first.write_all(b"first").await.unwrap();
    let mut s1 = warren.accept().await.unwrap();
    assert!(s1.id() < s2.id());
    let mut buf = [0u8; 6];
    s2.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"second");
    s1.read_exact(&mut buf[..5]).await.unwrap();
    assert_eq!(&buf[..5], b"first");
    s1.write_all(b"ok").await.unwrap();
    first.read_exact(&mut buf[..2]).await.unwrap();
    assert_eq!(&buf[..2], b"ok");
    assert!(!warren.is_closed());
}

async fn warren_goes_away(role: Role) {
    let Peers { warren, open: _open, mut accept } = connect(role);
    let mut s = warren.open().unwrap();
    s.write_all(b"x").await.unwrap();
    let _m = accept.accept().await.unwrap();
    warren.close(ErrorCode::None, "bye");
    assert!(accept.accept().await.is_none(), "muxado sees the session end");
    warren.closed().await;
    assert!(warren.open().is_err());
}

async fn muxado_goes_away(role: Role) {
    let Peers { warren, mut open, accept: _accept } = connect(role);
    // muxado 0.5 writes a GOAWAY header whose length leaves out the 8-byte last-id and code
    // fields (and refuses to send one with a message under 8 bytes), so the message arrives cut
    // short and its tail is read as the next frame. The GOAWAY itself must still be honoured.
    open.close(muxado::Error::None, "shutting down".into()).await.unwrap();
    assert!(warren.accept().await.is_none());
    let (code, _msg) = warren.remote_goaway().expect("GOAWAY recorded");
    assert_eq!(code, ErrorCode::None);
    assert!(warren.open().is_err());
}

async fn typed_streams(role: Role) {
    let (warren, session) = connect_session(role);
    let (mut topen, mut taccept) = Typed::new(session).split_typed();

    let mut s = warren.open_typed(7).await.unwrap();
    s.write_all(b"payload").await.unwrap();
    let mut m = taccept.accept_typed().await.unwrap();
    assert_eq!(*m.typ(), 7);
    let mut buf = [0u8; 7];
    m.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"payload");

    let mut m = topen.open_typed(StreamType::clamp(0xDEAD_BEEF)).await.unwrap();
    m.write_all(b"hello").await.unwrap();
    let mut s = warren.accept().await.unwrap();
    assert_eq!(read_type(&mut s).await.unwrap(), 0xDEAD_BEEF);
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
}

/// Accepts every stream warren is offered; answers heartbeat streams.
fn serve_heartbeats(warren: Mux) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(mut s) = warren.accept().await {
            if read_type(&mut s).await.ok() == Some(HEARTBEAT_TYPE) {
                tokio::spawn(answer_heartbeats(s));
            }
        }
    })
}

async fn muxado_heartbeats_warren_answers(role: Role) {
    let (warren, session) = connect_session(role);
    let _server = serve_heartbeats(warren.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |latency: Option<Duration>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(latency);
            Ok::<(), Box<dyn StdError>>(())
        }
    };
    let cfg = HeartbeatConfig {
        interval: Duration::from_secs(1),
        tolerance: Duration::from_secs(3),
        handler: Some(Arc::new(handler)),
    };
    let (_hb, ctl) = Heartbeat::start(Typed::new(session), cfg).await.unwrap();
    for _ in 0..3 {
        ctl.beat().await.expect("on-demand heartbeat answered");
    }
    // Periodic beats report a latency, never a timeout.
    for _ in 0..5 {
        let latency = rx.recv().await.unwrap();
        assert!(latency.is_some(), "heartbeat timed out");
    }
}

async fn warren_heartbeats_muxado_answers(role: Role) {
    let (warren, session) = connect_session(role);
    let _server = serve_heartbeats(warren.clone());
    let cfg = HeartbeatConfig { interval: Duration::from_secs(5), ..HeartbeatConfig::default() };
    let (mut hb, _ctl) = Heartbeat::start(Typed::new(session), cfg).await.unwrap();
    // Accepting runs muxado's responder for warren's heartbeat stream.
    tokio::spawn(async move { while hb.accept_typed().await.is_ok() {} });
    // The clock is virtual: a minute of heartbeats every second, all answered in time.
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        run_heartbeats(&warren, Duration::from_secs(1), Duration::from_secs(2)),
    )
    .await;
    assert!(r.is_err(), "heartbeats failed: {:?}", r.unwrap());
}

async fn warren_heartbeats_time_out(role: Role) {
    let Peers { warren, open: _open, mut accept } = connect(role);
    // A muxado peer that takes the heartbeat stream but never answers.
    let _silent = tokio::spawn(async move {
        let s = accept.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(s);
    });
    let e = run_heartbeats(&warren, Duration::from_secs(1), Duration::from_secs(2)).await;
    assert!(matches!(e, HeartbeatError::Timeout(d) if d == Duration::from_secs(2)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Test entry points
// ---------------------------------------------------------------------------------------------

macro_rules! both_roles {
    (flavor = $flavor:tt; $($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test $flavor]
                async fn warren_client_muxado_server() {
                    tokio::time::timeout(TEST_TIMEOUT, super::$name(Role::Client)).await.expect("timed out");
                }

                #[tokio::test $flavor]
                async fn warren_server_muxado_client() {
                    tokio::time::timeout(TEST_TIMEOUT, super::$name(Role::Server)).await.expect("timed out");
                }
            }
        )*
    };
}

both_roles!(
    flavor = (flavor = "multi_thread", worker_threads = 2);
    many_streams_warren_opens,
    many_streams_muxado_opens,
    half_close,
    warren_resets,
    muxado_resets,
    window_exhaustion_warren_sends,
    window_exhaustion_muxado_sends,
    syns_out_of_id_order,
    warren_goes_away,
    muxado_goes_away,
    typed_streams,
);

// Heartbeats run on a paused clock: time advances only when every task is idle, so intervals
// and tolerances elapse instantly and deterministically.
both_roles!(
    flavor = (start_paused = true);
    muxado_heartbeats_warren_answers,
    warren_heartbeats_muxado_answers,
    warren_heartbeats_time_out,
);
