//! Copying both ways between two byte streams (a visitor's or upstream's socket and a proxy
//! stream) without holding buffers while the connection is idle.
//!
//! `tokio::io::copy_bidirectional` keeps a buffer per direction for the life of the
//! connection (2 × 64 KiB here, most of it touched once traffic has flowed): with thousands of
//! idle connections that is most of the memory. Here a direction takes a buffer only once its
//! reader is ready, and gives it back as soon as a read would wait, so an idle connection holds
//! none.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffer size while data flows.
const BUF: usize = 64 * 1024;
/// Idle buffers kept per thread for the next burst, so a small request costs neither an
/// allocation nor zeroing 64 KiB (at most 16 × 64 KiB per runtime thread).
const POOL: usize = 16;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice())
}

fn give_back(buf: Box<[u8]>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < POOL {
            f.push(buf);
        }
    });
}

/// A reader that can say when a read would not wait, before it is given a buffer.
pub trait ReadReady: AsyncRead + Unpin {
    /// Ready when a read would return data, end of stream or an error.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for crate::Stream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        crate::Stream::poll_read_ready(self, cx)
    }
}

impl<T: ReadReady + ?Sized> ReadReady for Box<T> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions have ended (each end is shut down for
/// writing when the other reaches end of stream), like `copy_bidirectional`. Returns the bytes
/// copied each way.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: ReadReady + AsyncWrite + Unpin + ?Sized,
    B: ReadReady + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Direction::default();
    let mut ba = Direction::default();
    poll_fn(|cx| {
        let r1 = ab.poll(cx, &mut *a, &mut *b)?;
        let r2 = ba.poll(cx, &mut *b, &mut *a)?;
        match (r1, r2) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    read_done: bool,
    done: bool,
    copied: u64,
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: ReadReady + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.copied));
            }
            if self.pos == self.end && !self.read_done {
                if self.buf.is_none() {
                    ready!(r.poll_read_ready(cx))?;
                    self.buf = Some(take_buf());
                }
                let buf = self.buf.as_mut().expect("taken above");
                let mut rb = ReadBuf::new(buf);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        // Idle: give the buffer back until the reader is ready again, and push
                        // out whatever the writer holds (a TLS writer buffers records).
                        if let Some(b) = self.buf.take() {
                            give_back(b);
                        }
                        let _ = Pin::new(&mut *w).poll_flush(cx)?;
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            if let Some(b) = self.buf.take() {
                                give_back(b);
                            }
                        } else {
                            self.pos = 0;
                            self.end = n;
                        }
                    }
                }
            }
            while self.pos < self.end {
                let buf = self.buf.as_ref().expect("holds unwritten data");
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give_back(b);
        }
    }
}
