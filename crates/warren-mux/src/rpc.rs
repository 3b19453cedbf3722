//! ngrok's RPCs on typed streams: the caller opens a stream, writes its type and a JSON
//! request, and reads one JSON reply; the answering side reads the request and writes the
//! reply, then half-closes. ngrok's clients do not half-close after a request, so a message
//! ends where its JSON value ends (or at end of stream, for peers that do). The edge, the
//! agent and the testkit all speak through these three functions.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warren_proto::{MessageBuf, ProtoError};

use crate::driver::Mux;

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The stream failed while the message was read or written.
    #[error("the {what} could not be {doing}: {source}")]
    Io {
        /// The message.
        what: &'static str,
        /// `read` or `sent`.
        doing: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The bytes were not the message, or too many of them.
    #[error(transparent)]
    Message(#[from] ProtoError),
    /// The whole exchange took longer than allowed.
    #[error("the {0} was not completed in time")]
    Timeout(&'static str),
}

/// Reads one JSON `what` message of at most `limit` bytes; it ends where its JSON value ends,
/// or where the peer half-closes.
pub async fn read_message<T, S>(stream: &mut S, what: &'static str, limit: usize) -> Result<T, RpcError>
where
    T: serde::de::DeserializeOwned,
    S: AsyncRead + Unpin,
{
    let mut msg = MessageBuf::new(what, limit);
    let mut chunk = [0u8; 4096];
    loop {
        let n =
            stream.read(&mut chunk).await.map_err(|source| RpcError::Io { what, doing: "read", source })?;
        if n == 0 {
            return Ok(msg.finish()?);
        }
        if let Some(v) = msg.push(&chunk[..n])? {
            return Ok(v);
        }
    }
}

/// Writes `msg` as the reply and half-closes: the caller reads to the end.
pub async fn reply<T, S>(stream: &mut S, msg: &T) -> io::Result<()>
where
    T: serde::Serialize,
    S: AsyncWrite + Unpin,
{
    stream.write_all(&warren_proto::encode(msg)).await?;
    stream.shutdown().await
}

/// One RPC: a stream of type `ty`, the request, the reply (at most `limit` bytes), all within
/// `timeout`. `what` names the request in errors.
pub async fn call<Req, Resp>(
    mux: &Mux,
    ty: u32,
    what: &'static str,
    req: &Req,
    limit: usize,
    timeout: Duration,
) -> Result<Resp, RpcError>
where
    Req: serde::Serialize,
    Resp: serde::de::DeserializeOwned,
{
    let exchange = async {
        let sent = |source| RpcError::Io { what, doing: "sent", source };
        let mut s = mux.open().map_err(sent)?;
        let mut buf = ty.to_be_bytes().to_vec();
        buf.extend_from_slice(&warren_proto::encode(req));
        s.write_all(&buf).await.map_err(sent)?;
        s.shutdown().await.map_err(sent)?;
        read_message(&mut s, what, limit).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| RpcError::Timeout(what))?
}
