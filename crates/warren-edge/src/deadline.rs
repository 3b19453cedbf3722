//! Deadlines on a connection that the edge serves over HTTP (visitors and the API): the
//! first byte must come within one limit, and a connection with no byte moving in either
//! direction for another is closed. A peer that connects and sends nothing, or stops reading
//! and writing, then costs a slot for a bounded time only.
//!
//! No clock is read per byte: I/O only sets a flag; the timer re-arms itself when it fires
//! and finds the flag set. So an idle connection closes between `idle` and twice that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` with a first-byte deadline and an idle deadline.
pub(crate) struct Deadline<S> {
    inner: S,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    /// A byte moved since the timer was last armed.
    active: bool,
    /// The first byte has arrived.
    started: bool,
}

impl<S> Deadline<S> {
    /// The first byte must arrive within `first_byte`; after it, `idle` without any byte in
    /// either direction ends the connection.
    pub(crate) fn new(inner: S, first_byte: Duration, idle: Duration) -> Deadline<S> {
        Deadline {
            inner,
            timer: Box::pin(tokio::time::sleep(first_byte)),
            idle,
            active: false,
            started: false,
        }
    }

    /// `Err` once a deadline has passed with nothing moving.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if !self.started || !self.active {
                let what = if self.started { "idle" } else { "no first byte" };
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("connection closed: {what}")));
            }
            self.active = false;
            self.timer.as_mut().reset(Instant::now() + self.idle);
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active = true;
                    if !self.started {
                        // From now on the idle deadline counts (one clock read per
                        // connection): left at the first-byte deadline, a connection that
                        // stalled early was first checked only when that passed.
                        self.started = true;
                        let idle = Instant::now() + self.idle;
                        self.timer.as_mut().reset(idle);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_expired(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                self.active |= n > 0;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // A peer that never reads stalls writes: that is idle too.
            Poll::Pending => match self.poll_expired(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                self.active |= n > 0;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_expired(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // A flush (TLS records the peer does not take) or a close can stall on a peer that never
    // reads as a write can.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => match self.poll_expired(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => match self.poll_expired(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_at_the_first_byte_deadline() {
        let (_peer, ours) = tokio::io::duplex(64);
        let mut d = Deadline::new(ours, Duration::from_secs(10), Duration::from_secs(300));
        let start = Instant::now();
        let e = d.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_a_connection_open_and_silence_closes_it() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut d = Deadline::new(ours, Duration::from_secs(10), Duration::from_secs(60));
        let start = Instant::now();
        // A byte every 50 s for 5 minutes: never idle for a whole minute.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            peer.write_all(b"x").await.unwrap();
            assert_eq!(d.read(&mut [0u8; 8]).await.unwrap(), 1);
        }
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        let silent = Instant::now();
        let e = d.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let waited = silent.elapsed();
        assert!(waited >= Duration::from_secs(60) && waited <= Duration::from_secs(120), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_reads_stalls_writes_until_the_idle_deadline() {
        let (mut peer, ours) = tokio::io::duplex(16);
        let mut d = Deadline::new(ours, Duration::from_secs(10), Duration::from_secs(60));
        peer.write_all(b"GET").await.unwrap();
        assert_eq!(d.read(&mut [0u8; 8]).await.unwrap(), 3);
        let e = d.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_that_a_peer_never_takes_stalls_until_the_idle_deadline() {
        let (mut peer, ours) = tokio::io::duplex(16);
        // A writer that takes everything and only its flush waits on the peer (as TLS does).
        let mut d =
            Deadline::new(tokio::io::BufWriter::new(ours), Duration::from_secs(10), Duration::from_secs(60));
        peer.write_all(b"GET").await.unwrap();
        assert_eq!(d.read(&mut [0u8; 8]).await.unwrap(), 3);
        d.write_all(&[0u8; 1024]).await.unwrap();
        let start = Instant::now();
        let e = d.flush().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() <= Duration::from_secs(120), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_deadline_shorter_than_the_first_byte_one_counts_from_the_first_byte() {
        let (mut peer, ours) = tokio::io::duplex(16);
        let mut d = Deadline::new(ours, Duration::from_secs(10), Duration::from_secs(1));
        peer.write_all(b"GET").await.unwrap();
        assert_eq!(d.read(&mut [0u8; 8]).await.unwrap(), 3);
        let start = Instant::now();
        let e = d.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() <= Duration::from_secs(2), "{:?}", start.elapsed());
    }
}
