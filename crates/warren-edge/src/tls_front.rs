//! The front of the shared TLS port: reads a connection's ClientHello without terminating
//! it, so the edge can route by SNI: to agent sessions (the connect hostnames), to a `tls://`
//! endpoint (passed through untouched; the agent or upstream holds the key), or to the
//! https ingress (terminated here). The bytes read are kept and replayed ([`Rewind`]), so
//! whichever path takes the connection sees it from its first byte.
//!
//! Parsing is rustls's own sans-IO [`rustls::server::Acceptor`], fed from the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest ClientHello accepted (post-quantum key shares make them ~2 KiB; 16 KiB is the
/// most one TLS record holds, and a hello may span a few).
pub(crate) const MAX_HELLO: usize = 64 * 1024;

/// What a ClientHello asks for, and the bytes it came in.
#[derive(Debug)]
pub(crate) struct Hello {
    /// SNI, lowercased; `None` when the client sent none (bare IP).
    pub(crate) server_name: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub(crate) alpn: Vec<Vec<u8>>,
    /// Every byte read so far, to replay.
    pub(crate) buffered: Vec<u8>,
}

/// Why a connection was not a usable TLS ClientHello.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    /// The socket failed or closed first.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
    /// Not TLS, a malformed hello, or one the edge does not accept (TLS 1.0/1.1 only); the
    /// alert to send the client, if any, says why.
    #[error("not a usable TLS ClientHello: {0}")]
    NotTls(rustls::Error, Vec<u8>),
    /// Longer than [`MAX_HELLO`].
    #[error("ClientHello longer than {MAX_HELLO} bytes")]
    TooLarge,
}

/// Reads until the ClientHello is complete.
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(io: &mut R) -> Result<Hello, HelloError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut buffered = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HelloError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buffered.extend_from_slice(&chunk[..n]);
        if buffered.len() > MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            if acceptor.read_tls(&mut rest)? == 0 {
                return Err(HelloError::TooLarge);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                return Ok(Hello {
                    server_name: hello.server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase()),
                    alpn: hello.alpn().map(|a| a.map(<[u8]>::to_vec).collect()).unwrap_or_default(),
                    buffered,
                });
            }
            Err((e, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write_all(&mut bytes);
                return Err(HelloError::NotTls(e, bytes));
            }
        }
    }
}

/// An I/O object that first yields `prefix`, then reads from `inner`; writes go to `inner`.
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                // Replayed: give the memory back.
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls writes it for `name` with ALPN h2.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let server = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn the_hello_gives_sni_and_every_byte_is_replayed() {
        let mut bytes = client_hello("App.Example.com");
        bytes.extend(b"after");
        // Fed a few bytes at a time, as a slow client would send it.
        let (mut a, mut b) = tokio::io::duplex(64);
        let sent = bytes.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in sent.chunks(7) {
                a.write_all(c).await.unwrap();
            }
        });
        let hello = read_hello(&mut b).await.unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("app.example.com"));
        let mut replay = Rewind::new(hello.buffered, b);
        let mut all = vec![0u8; bytes.len()];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(all, bytes, "the prefix then the rest, unchanged");
    }

    #[tokio::test]
    async fn garbage_and_truncated_hellos_are_refused() {
        let mut http = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..];
        assert!(matches!(read_hello(&mut http).await, Err(HelloError::NotTls(..))));
        let hello = client_hello("a.example.com");
        let mut cut = &hello[..hello.len() / 2];
        assert!(matches!(read_hello(&mut cut).await, Err(HelloError::Io(_))));
    }
}
