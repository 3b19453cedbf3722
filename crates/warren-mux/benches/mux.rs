//! Bulk throughput of one stream over loopback TCP (no TLS): raw TCP, the `muxado` crate, and
//! warren-mux, side by side in one run. `cargo bench -p warren-mux`.
//!
//! Then the proxy copy loop: a visitor's socket copied into a stream the way the edge does it,
//! with tokio's `copy_bidirectional` and with warren's `splice`.
//!
//! `WARREN_MUX_BENCH_BYTES` sets the transfer size (default 2 GiB); `WARREN_MUX_BENCH_ONLY`
//! (`raw`, `muxado`, `warren`, `copy`, `splice`) runs one of them, for profiling.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use muxado::{Accept, OpenClose, Session as _, SessionBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_mux::{Config, Role};

const CHUNK: usize = 64 * 1024;

fn main() {
    let total: u64 = std::env::var("WARREN_MUX_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 * 1024 * 1024 * 1024);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "one stream, {:.2} GiB over loopback TCP, {} KiB writes, 2 worker threads",
        total as f64 / (1u64 << 30) as f64,
        CHUNK / 1024
    );
    // WARREN_MUX_BENCH_ONLY=raw|muxado|warren runs one, for profiling.
    let only = std::env::var("WARREN_MUX_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;
    rt.block_on(async {
        if run("raw") {
            report("raw TCP", total, raw_tcp(total).await);
        }
        if run("muxado") {
            report("muxado 0.5 (crate)", total, muxado(total).await);
        }
        if run("warren") {
            report("warren-mux", total, warren(total).await);
        }
        if run("copy") {
            report("proxy: copy_bidir.", total, proxied(total, false).await);
        }
        if run("splice") {
            report("proxy: splice", total, proxied(total, true).await);
        }
    });
}

fn report(name: &str, total: u64, r: io::Result<Duration>) {
    match r {
        Ok(d) => {
            let gbit = total as f64 * 8.0 / d.as_secs_f64() / 1e9;
            println!("{name:<20} {gbit:>7.2} Gbit/s  ({:.2} s)", d.as_secs_f64());
        }
        Err(e) => println!("{name:<20} failed: {e}"),
    }
}

async fn socket_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    Ok((client?, server?.0))
}

async fn send<W: AsyncWrite + Unpin>(mut w: W, total: u64) -> io::Result<W> {
    let buf = vec![0x5Au8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    w.shutdown().await?;
    Ok(w)
}

async fn drain<R: AsyncRead + Unpin>(mut r: R) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        got += n as u64;
    }
}

/// Runs the sender and the receiver concurrently; the clock stops when the receiver saw EOF.
async fn timed<S, R>(total: u64, sender: S, receiver: R) -> io::Result<Duration>
where
    S: Future<Output = io::Result<()>> + Send + 'static,
    R: Future<Output = io::Result<u64>> + Send + 'static,
{
    let start = Instant::now();
    let rx = tokio::spawn(receiver);
    let tx = tokio::spawn(sender);
    let got = rx.await.map_err(io::Error::other)??;
    let elapsed = start.elapsed();
    tx.await.map_err(io::Error::other)??;
    if got != total {
        return Err(io::Error::other(format!("received {got} of {total} bytes")));
    }
    Ok(elapsed)
}

async fn raw_tcp(total: u64) -> io::Result<Duration> {
    let (client, server) = socket_pair().await?;
    timed(total, async move { send(client, total).await.map(drop) }, drain(server)).await
}

async fn muxado(total: u64) -> io::Result<Duration> {
    let (client, server) = socket_pair().await?;
    // The sessions live until the end: dropping every handle stops muxado's tasks.
    let mut client = SessionBuilder::new(client).client().start();
    let (_server_open, mut server_accept) = SessionBuilder::new(server).server().start().split();
    let stream = client.open().await.map_err(io::Error::other)?;
    let sender = async move { send(stream, total).await.map(drop) };
    let receiver = async move {
        let s = server_accept.accept().await.ok_or_else(|| io::Error::other("muxado accept failed"))?;
        drain(s).await
    };
    timed(total, sender, receiver).await
}

async fn warren(total: u64) -> io::Result<Duration> {
    let (client, server) = socket_pair().await?;
    let client = warren_mux::start(client, Role::Client, Config::default());
    let server = warren_mux::start(server, Role::Server, Config::default());
    let stream = client.open()?;
    let sender = async move {
        send(stream, total).await?;
        Ok(())
    };
    let receiver = async move {
        let s = server.accept().await.ok_or_else(|| io::Error::other("warren accept failed"))?;
        drain(s).await
    };
    let r = timed(total, sender, receiver).await;
    client.close(warren_mux::ErrorCode::None, "done");
    r
}

/// visitor socket → (copy loop) → warren-mux stream → peer: the copy loop costs what this adds
/// to `warren` above.
async fn proxied(total: u64, splice: bool) -> io::Result<Duration> {
    let (visitor, mut edge_side) = socket_pair().await?;
    let (a, b) = socket_pair().await?;
    let client = warren_mux::start(a, Role::Client, Config::default());
    let server = warren_mux::start(b, Role::Server, Config::default());
    let mut stream = client.open()?;
    tokio::spawn(async move {
        let _ = if splice {
            warren_mux::splice::splice(&mut edge_side, &mut stream).await
        } else {
            tokio::io::copy_bidirectional_with_sizes(&mut edge_side, &mut stream, CHUNK, CHUNK).await
        };
    });
    let sender = async move { send(visitor, total).await.map(drop) };
    let receiver = async move {
        let s = server.accept().await.ok_or_else(|| io::Error::other("warren accept failed"))?;
        drain(s).await
    };
    let r = timed(total, sender, receiver).await;
    client.close(warren_mux::ErrorCode::None, "done");
    r
}
