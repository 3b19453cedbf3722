//! HTTP/1.1 visitor connections served by the connection's own loop: the requests without a
//! body, the most common kind, from the first byte to the last of their responses.
//!
//! hyper's server keeps two buffers per connection for its whole life (a read buffer of at
//! least 8 KiB, which grows to 16 KiB once a request's head still shares it, and an 8 KiB
//! write buffer) and a place for the service's future: an idle https connection cost 41 KiB
//! (docs/BENCHMARKS.md). Here an idle connection holds a read buffer of [`READ_FIRST`] bytes
//! and no write buffer, its request's future is boxed for the request's life only, and a
//! request costs one parse, one write and no task hand-off.
//!
//! Whatever this loop does not serve goes to hyper's server with every byte read so far
//! ([`Ended::Handoff`]), which then serves the rest of the connection: a request with a body
//! (Content-Length other than 0, Transfer-Encoding), an upgrade, CONNECT, `Expect`, HTTP/2's
//! preface, a head larger than [`MAX_HEAD`], and anything that does not parse (hyper then
//! answers as it always did, 400 or 431). A response is framed as hyper's server frames it
//! (its `Server::encode`): the same Content-Length, chunked and close-delimited choices, the
//! same `Connection` fixes for HTTP/1.0 and for a connection that closes, trailers only when
//! a `Trailer` header names them, a `date` header.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The request bodies the edge's service takes: hyper's, or none (a request this loop read).
pub(crate) enum VisitorBody {
    /// A request hyper's server read (HTTP/2, a request with a body, an upgrade).
    Hyper(Incoming),
    /// A request without a body, read here.
    Empty,
}

impl Body for VisitorBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            VisitorBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            VisitorBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            VisitorBody::Hyper(b) => b.is_end_stream(),
            VisitorBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            VisitorBody::Hyper(b) => b.size_hint(),
            VisitorBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// How a connection left this loop.
pub(crate) enum Ended<IO> {
    /// It is done: closed by either side, timed out, or failed.
    Closed,
    /// Its next request is one hyper's server serves: the connection, and every byte read
    /// from it that no response answered yet.
    Handoff(IO, Vec<u8>),
}

/// The read buffer an idle connection keeps: most request heads fit.
pub(crate) const READ_FIRST: usize = 2048;
/// The largest request head this loop parses; a larger one goes to hyper's server (which
/// allows up to its `max_buf_size`).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// The most header fields this loop parses (hyper's server default).
const MAX_HEADERS: usize = 100;
/// Headers the edge may add to a request before it goes on (Host, X-Forwarded-For, -Proto,
/// -Host, and a few more for policies).
const FORWARDING_HEADERS: usize = 6;
/// Response bytes gathered before they are written: one TLS record.
const WRITE_MAX: usize = 16 * 1024;

/// What the loop needs to know of the edge.
pub(crate) struct Limits {
    /// How long a request head may take to arrive, from the end of the previous response
    /// (or the connection's start): a kept-alive connection idle this long is closed.
    pub(crate) header_read_timeout: Duration,
    /// At shutdown, how long a connection that has not sent its first request (or is in the
    /// middle of a head) may still send it.
    pub(crate) first_request_grace: Duration,
}

/// Serves `io`'s HTTP/1.1 requests without a body with `service` until the connection ends
/// or a request comes that hyper's server serves. `service` returning `Err` closes the
/// connection without an answer. At `shutdown` an idle connection closes at once, a request
/// being served is answered with `connection: close`.
pub(crate) async fn serve<IO, F, Fut, E>(
    io: IO,
    limits: &Limits,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    mut service: F,
) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<VisitorBody>) -> Fut,
    Fut: Future<Output = Result<Response<crate::ingress_http::Body>, E>>,
{
    let mut conn = Conn { io, rbuf: BytesMut::with_capacity(READ_FIRST), eof: false };
    let stop = pin!(crate::shutting_down(shutdown.clone()));
    let mut stop = Some(stop);
    // Armed when a head is awaited, reset for each head (once per connection, not per
    // request, is the allocation).
    let mut timer = Box::pin(tokio::time::sleep(limits.header_read_timeout));
    let mut served = 0u64;
    loop {
        let head = match conn.read_head(limits, &mut timer, &mut stop, served).await {
            Next::Head(h) => h,
            Next::Closed => return Ended::Closed,
            Next::Handoff => {
                let Conn { io, rbuf, .. } = conn;
                return Ended::Handoff(io, rbuf.to_vec());
            }
        };
        served += 1;
        let Head { req, keep_alive } = head;
        let asked = Asked { method: req.method().clone(), version: req.version() };
        let resp = {
            // Boxed for the request's life only: the connection's task is sized for its
            // largest state, and an idle connection should not keep the request's (4 KiB).
            let mut fut = Box::pin(service(req));
            // While the service works, the connection is read (pipelined bytes, within the
            // buffer it has): a visitor that goes away cancels its request, as with hyper.
            let r = poll_fn(|cx| {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                match conn.poll_fill(cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match r {
                Some(Ok(resp)) => resp,
                Some(Err(_)) | None => return Ended::Closed,
            }
        };
        let keep_alive = keep_alive && !*shutdown.borrow();
        match conn.respond(resp, &asked, keep_alive).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = conn.io.shutdown().await;
                return Ended::Closed;
            }
        }
        if conn.rbuf.is_empty() && conn.rbuf.capacity() > READ_FIRST {
            // A large head grew it: an idle connection keeps only the first size.
            conn.rbuf = BytesMut::with_capacity(READ_FIRST);
        }
    }
}

/// What the response body gave next.
enum Step {
    Frame(Frame<Bytes>),
    End,
    /// Pending, with bytes gathered to write first.
    Flush,
    Failed(io::Error),
}

/// A request head read, and whether the visitor keeps the connection.
struct Head {
    req: Request<VisitorBody>,
    keep_alive: bool,
}

/// What a response answers.
struct Asked {
    method: Method,
    version: Version,
}

// Built and taken at once, never stored: boxing the head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(Head),
    Closed,
    Handoff,
}

/// Why the head is not this loop's to serve.
struct NotOurs;

struct Conn<IO> {
    io: IO,
    rbuf: BytesMut,
    /// The visitor closed its side (or its read failed).
    eof: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// The next request head, reading as needed.
    async fn read_head(
        &mut self,
        limits: &Limits,
        timer: &mut Pin<Box<tokio::time::Sleep>>,
        stop: &mut Option<Pin<&mut impl Future<Output = ()>>>,
        served: u64,
    ) -> Next {
        let mut armed = false;
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if !self.rbuf.is_empty() {
                match parse_head(&mut self.rbuf) {
                    Ok(Some(head)) => return Next::Head(head),
                    Ok(None) if self.rbuf.len() > MAX_HEAD => return Next::Handoff,
                    Ok(None) => {}
                    Err(NotOurs) => return Next::Handoff,
                }
            }
            if self.eof {
                return Next::Closed;
            }
            if self.rbuf.capacity() - self.rbuf.len() < 512 {
                self.rbuf.reserve(READ_FIRST);
            }
            let got = poll_fn(|cx| {
                match read_some(&mut self.io, &mut self.rbuf, cx) {
                    Poll::Ready(r) => return Poll::Ready(Some(r)),
                    Poll::Pending => {}
                }
                if !armed {
                    armed = true;
                    timer.as_mut().reset(tokio::time::Instant::now() + limits.header_read_timeout);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if let Some(s) = stop.as_mut()
                    && s.as_mut().poll(cx).is_ready()
                {
                    *stop = None;
                    // A connection idle after a response closes at once; one that has not
                    // finished its first head, or is in the middle of one, gets the grace.
                    if served > 0 && self.rbuf.is_empty() {
                        return Poll::Ready(None);
                    }
                    grace = Some(Box::pin(tokio::time::sleep(limits.first_request_grace)));
                }
                if let Some(g) = grace.as_mut()
                    && g.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match got {
                Some(Ok(0)) | Some(Err(_)) => self.eof = true,
                Some(Ok(_)) => {}
                None => return Next::Closed,
            }
            if self.eof && self.rbuf.is_empty() {
                return Next::Closed;
            }
            if self.eof {
                // A head cut short: hyper's server answers it as it always did.
                return Next::Handoff;
            }
        }
    }

    /// While a request is served: reads what has arrived into the buffer's free room (never
    /// growing it while a request shares it); `Ready` once the visitor has closed its side or
    /// the read failed. Nothing is read while a pipelined request waits in the buffer (as
    /// hyper's server): a visitor that sent its requests and closed its side gets the answers
    /// to those, and the buffer holds at most its free room of them.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.eof || !self.rbuf.is_empty() {
            return Poll::Pending;
        }
        while self.rbuf.capacity() > self.rbuf.len() {
            match read_some(&mut self.io, &mut self.rbuf, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.eof = true;
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Pending
    }

    /// Writes `resp`; `Ok(true)` if the connection goes on to its next request.
    async fn respond(
        &mut self,
        resp: Response<crate::ingress_http::Body>,
        asked: &Asked,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let (mut parts, body) = resp.into_parts();
        let length = if body.is_end_stream() {
            None
        } else {
            Some(body.size_hint().exact().map_or(Length::Unknown, Length::Known))
        };
        // Room for the head and a small body copied in after it: growing costs a copy.
        let small_body = match length {
            Some(Length::Known(n)) if n < DIRECT as u64 => n as usize,
            _ => 0,
        };
        let mut out = Vec::with_capacity(256 + parts.headers.len() * 48 + small_body);
        let (mut encoder, mut last) = encode_head(&mut out, &mut parts, length, asked, keep_alive)?;
        let mut body = pin!(body);
        if !encoder.has_body() {
            self.io.write_all(&out).await?;
            self.io.flush().await?;
            return Ok(!last);
        }
        loop {
            let step = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                Poll::Ready(None) => Poll::Ready(Step::End),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Step::Frame(f)),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Step::Failed(io::Error::other(e))),
                // Nothing more for now: what is gathered goes out before waiting.
                Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
                // A visitor that goes away while the body waits ends it.
                Poll::Pending => match self.poll_fill(cx) {
                    Poll::Ready(()) => Poll::Ready(Step::Failed(io::ErrorKind::ConnectionAborted.into())),
                    Poll::Pending => Poll::Pending,
                },
            })
            .await;
            match step {
                Step::End => break,
                Step::Failed(e) => {
                    // What came before goes out, but not the end of the body: the visitor
                    // sees the response cut short.
                    let _ = self.io.write_all(&out).await;
                    return Err(e);
                }
                Step::Flush => {
                    self.io.write_all(&out).await?;
                    self.io.flush().await?;
                    out.clear();
                }
                Step::Frame(frame) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(data) = encoder.encode(&mut out, data) {
                            // Large: written as it is, after what is gathered.
                            self.io.write_all(&out).await?;
                            out.clear();
                            self.io.write_all(&data).await?;
                            encoder.after_direct(&mut out);
                        }
                        if out.len() >= WRITE_MAX {
                            self.io.write_all(&out).await?;
                            out.clear();
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            encoder.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
        match encoder.finish(&mut out) {
            Ok(()) => {}
            // The body ended short of its Content-Length: the visitor must not take what
            // follows for the rest of it.
            Err(()) => last = true,
        }
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(!last)
    }
}

/// Reads into `buf`'s free room (the callers see that it has some: a full `BytesMut` would
/// grow).
fn read_some<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The request head at the start of `buf`, taken from it; `None` while it is incomplete;
/// `NotOurs` for anything hyper's server serves (or refuses).
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, NotOurs> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(NotOurs),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let method = Method::from_bytes(req.method.expect("complete").as_bytes()).map_err(|_| NotOurs)?;
    if method == Method::CONNECT {
        return Err(NotOurs);
    }
    let path = req.path.expect("complete");
    let path = (at(path.as_bytes()), path.len());
    let version = if req.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    let mut keep_alive = version == Version::HTTP_11;
    let mut close = false;
    // Where each field lies, so that the values share the head's bytes once it is frozen.
    let mut fields: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || (name.eq_ignore_ascii_case(b"content-length") && h.value != b"0")
        {
            return Err(NotOurs);
        }
        if name.eq_ignore_ascii_case(b"connection") {
            if close || has_token(h.value, b"close") {
                close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(h.value, b"keep-alive");
            }
        }
        fields.push((at(name), name.len(), at(h.value), h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1)).map_err(|_| NotOurs)?;
    // Room for the headers the edge adds on the way (Host, X-Forwarded-*): a full map
    // grows by rehashing every field (about 1,000 instructions each time, twice a request).
    let mut headers = HeaderMap::with_capacity(fields.len() + FORWARDING_HEADERS);
    for &(n, nl, v, vl) in &fields {
        let name = HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| NotOurs)?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl)).map_err(|_| NotOurs)?;
        headers.append(name, value);
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head { req: Request::from_parts(parts, VisitorBody::Empty), keep_alive }))
}

/// Whether a comma-separated header value lists `token` (any case).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a `Connection` field of `headers` lists `token` (any case).
pub(crate) fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), token))
}

/// What the service's body says of its length (hyper's `BodyLength`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Length {
    Known(u64),
    Unknown,
}

/// How the response body goes on the wire.
#[derive(Debug)]
struct Encoder {
    kind: Kind,
    /// Trailer fields the `Trailer` header named (chunked only).
    allowed_trailers: Option<Vec<HeaderName>>,
    /// Trailers the body sent.
    trailers: Option<HeaderMap>,
}

#[derive(Debug, PartialEq)]
enum Kind {
    /// This many bytes are still owed.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, or a length the body cannot tell).
    Close,
}

/// Data frames at least this large are written as they are rather than copied.
const DIRECT: usize = 8 * 1024;

impl Encoder {
    fn has_body(&self) -> bool {
        self.kind != Kind::Length(0)
    }

    /// Frames `data` into `out`, or gives it back (framed around by `out`) to be written
    /// directly when it is large.
    fn encode(&mut self, out: &mut Vec<u8>, mut data: Bytes) -> Option<Bytes> {
        if data.is_empty() {
            return None;
        }
        match &mut self.kind {
            Kind::Length(remaining) => {
                // More than is owed: only what is owed is written (as hyper does).
                if (data.len() as u64) > *remaining {
                    data.truncate(*remaining as usize);
                }
                *remaining -= data.len() as u64;
            }
            Kind::Chunked => {
                push_hex(out, data.len());
                out.extend_from_slice(b"\r\n");
            }
            Kind::Close => {}
        }
        if data.len() >= DIRECT {
            return Some(data);
        }
        out.extend_from_slice(&data);
        self.after_direct(out);
        None
    }

    /// What follows a data frame's bytes.
    fn after_direct(&self, out: &mut Vec<u8>) {
        if self.kind == Kind::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Ends the body: the last chunk and trailers; `Err` if it ended short of its length.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ()> {
        match self.kind {
            Kind::Chunked => {
                out.extend_from_slice(b"0\r\n");
                if let (Some(allowed), Some(trailers)) = (&self.allowed_trailers, &self.trailers) {
                    for (name, value) in trailers {
                        if allowed.contains(name) && valid_trailer(name) {
                            out.extend_from_slice(name.as_str().as_bytes());
                            out.extend_from_slice(b": ");
                            out.extend_from_slice(value.as_bytes());
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            Kind::Length(0) | Kind::Close => Ok(()),
            Kind::Length(_) => Err(()),
        }
    }
}

/// A chunk size line's number.
fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Fields hyper's server never sends as trailers.
fn valid_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

fn can_chunked(method: &Method, status: StatusCode) -> bool {
    !(*method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

fn can_have_content_length(status: StatusCode) -> bool {
    !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED)
}

fn can_have_body(method: &Method, status: StatusCode) -> bool {
    can_chunked(method, status)
}

/// Writes the response head into `out` as hyper's server does (`Conn::enforce_version`, then
/// `Server::encode` with lower-case names), and says how the body goes and whether the
/// connection ends after it. An `Err` is a head hyper refuses to write (conflicting lengths):
/// the connection closes without an answer.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &mut http::response::Parts,
    length: Option<Length>,
    asked: &Asked,
    keep_alive: bool,
) -> io::Result<(Encoder, bool)> {
    let mut keep_alive = keep_alive;
    let user_err = || io::Error::new(io::ErrorKind::InvalidData, "the response head cannot be written");
    if asked.version == Version::HTTP_10 {
        if !connection_has(&parts.headers, b"keep-alive") {
            match parts.version {
                Version::HTTP_10 => keep_alive = false,
                Version::HTTP_11 if keep_alive => {
                    parts.headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
                }
                _ => {}
            }
        }
        parts.version = Version::HTTP_10;
    } else if !keep_alive && !connection_has(&parts.headers, b"close") {
        parts.headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = parts.status;
    let mut last = !keep_alive;
    let mut length = length;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        last = true;
    } else if status.is_informational() {
        // hyper writes no 1xx from a service: a 500 with nothing else.
        parts.headers.clear();
        parts.extensions = http::Extensions::new();
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        length = None;
        last = true;
    }
    let status = parts.status;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if parts.version == Version::HTTP_11 && status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if parts.version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let http10 = parts.version == Version::HTTP_10;
    let mut kind = Kind::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut allowed_trailers: Option<Vec<HeaderName>> = None;
    let mut prev_len = None;
    // Fields written as one line, values joined (hyper's `is_name_written`).
    let mut open: Option<HeaderName> = None;
    let mut must_write_chunked = false;
    let close_open = |out: &mut Vec<u8>, open: &mut Option<HeaderName>, must_write_chunked: bool| {
        if open.take().is_some() {
            out.extend_from_slice(if must_write_chunked { b", chunked\r\n" } else { b"\r\n" });
        }
    };
    let headers = std::mem::take(&mut parts.headers);
    let mut cur: Option<HeaderName> = None;
    for (name, value) in headers {
        if let Some(n) = name {
            if open.as_ref().is_some_and(|o| *o != n) {
                close_open(out, &mut open, must_write_chunked);
            }
            cur = Some(n);
        }
        let name = cur.as_ref().expect("a first value has its name");
        let continuing = open.as_ref() == Some(name);
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && !continuing {
                    return Err(user_err());
                }
                match length {
                    Some(Length::Known(n)) => {
                        if !continuing {
                            kind = Kind::Length(n);
                            out.extend_from_slice(b"content-length: ");
                            out.extend_from_slice(value.as_bytes());
                            wrote_len = true;
                            open = Some(name.clone());
                        }
                        continue;
                    }
                    Some(Length::Unknown) => {
                        let n = content_length(value.as_bytes()).ok_or_else(user_err)?;
                        if let Some(prev) = prev_len {
                            if prev != n {
                                return Err(user_err());
                            }
                            continue;
                        }
                        kind = Kind::Length(n);
                        out.extend_from_slice(b"content-length: ");
                        out.extend_from_slice(value.as_bytes());
                        wrote_len = true;
                        open = Some(name.clone());
                        prev_len = Some(n);
                        continue;
                    }
                    None => {
                        if asked.method != Method::HEAD {
                            continue;
                        }
                    }
                }
                wrote_len = true;
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && !continuing {
                    return Err(user_err());
                }
                if http10 || !can_chunked(&asked.method, status) {
                    continue;
                }
                wrote_len = true;
                must_write_chunked = !is_chunked(value.as_bytes());
                if continuing {
                    out.extend_from_slice(b", ");
                } else {
                    kind = Kind::Chunked;
                    out.extend_from_slice(b"transfer-encoding: ");
                    open = Some(name.clone());
                }
                out.extend_from_slice(value.as_bytes());
                continue;
            }
            header::CONNECTION => {
                if has_token(value.as_bytes(), b"close") {
                    last = true;
                }
                if continuing {
                    out.extend_from_slice(b", ");
                } else {
                    out.extend_from_slice(b"connection: ");
                    open = Some(name.clone());
                }
                out.extend_from_slice(value.as_bytes());
                continue;
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if http10 || !can_chunked(&asked.method, status) {
                    continue;
                }
                if continuing {
                    out.extend_from_slice(b", ");
                } else {
                    out.extend_from_slice(b"trailer: ");
                    open = Some(name.clone());
                }
                out.extend_from_slice(value.as_bytes());
                if let Ok(v) = value.to_str() {
                    let names = v.split(',').filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok());
                    allowed_trailers.get_or_insert_with(Vec::new).extend(names);
                }
                continue;
            }
            _ => {}
        }
        close_open(out, &mut open, must_write_chunked);
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    close_open(out, &mut open, must_write_chunked);
    if !wrote_len {
        kind = match length {
            Some(Length::Unknown) => {
                if http10 || !can_chunked(&asked.method, status) {
                    Kind::Close
                } else {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Kind::Chunked
                }
            }
            None | Some(Length::Known(0)) => {
                if can_have_content_length(status) && asked.method != Method::HEAD {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Kind::Length(0)
            }
            Some(Length::Known(n)) => {
                if can_have_content_length(status) {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    Kind::Length(n)
                } else {
                    Kind::Length(0)
                }
            }
        };
    }
    if !can_have_body(&asked.method, status) {
        kind = Kind::Length(0);
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if kind == Kind::Close {
        last = true;
    }
    let allowed_trailers = if kind == Kind::Chunked { allowed_trailers } else { None };
    Ok((Encoder { kind, allowed_trailers, trailers: None }, last))
}

/// A Content-Length value (hyper's `content_length_parse`: comma-separated equal values).
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Whether `chunked` is the last coding of a Transfer-Encoding value.
pub(crate) fn is_chunked(value: &[u8]) -> bool {
    value.rsplit(|b| *b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `date` header's value, formatted once a second per thread (as hyper's server does).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub(super) fn extend(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let s = httpdate::fmt_http_date(now);
                if s.len() == 29 {
                    c.1.copy_from_slice(s.as_bytes());
                    c.0 = secs;
                } else {
                    out.extend_from_slice(s.as_bytes());
                    return;
                }
            }
            out.extend_from_slice(&c.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::ingress_http::Body as EdgeBody;

    fn limits() -> Limits {
        Limits { header_read_timeout: Duration::from_secs(30), first_request_grace: Duration::from_secs(1) }
    }

    fn full(s: &'static str) -> EdgeBody {
        Full::new(Bytes::from_static(s.as_bytes())).map_err(|n| match n {}).boxed()
    }

    /// A body of these frames whose length it does not tell, or one that fails after them.
    struct Frames(VecDeque<Frame<Bytes>>, bool);

    impl Body for Frames {
        type Data = Bytes;
        type Error = crate::proxy_h1::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None if self.1 => Poll::Ready(Some(Err("the upstream went away".into()))),
                None => Poll::Ready(None),
            }
        }
    }

    fn frames(data: &[&'static str], trailers: Option<HeaderMap>, fail: bool) -> EdgeBody {
        let mut q: VecDeque<_> = data.iter().map(|d| Frame::data(Bytes::from_static(d.as_bytes()))).collect();
        if let Some(t) = trailers {
            q.push_back(Frame::trailers(t));
        }
        Frames(q, fail).boxed()
    }

    /// Serves one side of a pipe with a service answering each request with its path.
    fn start<F, Fut, E>(
        service: F,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (DuplexStream, tokio::task::JoinHandle<Ended<DuplexStream>>)
    where
        F: FnMut(Request<VisitorBody>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<EdgeBody>, E>> + Send,
        E: Send + 'static,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { serve(server, &limits(), &shutdown, service).await });
        (client, task)
    }

    fn path_echo()
    -> impl FnMut(Request<VisitorBody>) -> std::future::Ready<Result<Response<EdgeBody>, Infallible>> {
        |req| {
            let body = Full::new(Bytes::from(req.uri().path().to_owned())).map_err(|n| match n {}).boxed();
            std::future::ready(Ok(Response::new(body)))
        }
    }

    fn never() -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    /// Reads one response whose body has a Content-Length (or none) from `c`.
    async fn response(c: &mut DuplexStream) -> String {
        let head = head_only(c).await;
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0; len];
        c.read_exact(&mut body).await.unwrap();
        head + &String::from_utf8(body).unwrap()
    }

    /// Reads one response head from `c`.
    async fn head_only(c: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        loop {
            let mut b = [0u8; 1];
            assert_eq!(
                c.read(&mut b).await.unwrap(),
                1,
                "the connection ended early: {}",
                String::from_utf8_lossy(&got)
            );
            got.push(b[0]);
            if got.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8(got).unwrap()
    }

    fn without_date(s: &str) -> String {
        s.split_inclusive('\n').filter(|l| !l.starts_with("date: ")).collect()
    }

    #[tokio::test]
    async fn requests_on_one_connection_are_answered_in_order_as_hyper_frames_them() {
        let (mut c, task) = start(path_echo(), never());
        c.write_all(b"GET /first HTTP/1.1\r\nHost: a.example\r\n\r\n").await.unwrap();
        let r = response(&mut c).await;
        assert!(r.contains("\r\ndate: ") && r.contains(" GMT\r\n"), "{r}");
        assert_eq!(without_date(&r), "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n/first");
        // Two more in one write (pipelined).
        c.write_all(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /three HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(without_date(&response(&mut c).await), "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n/2");
        // HEAD: the length the GET would have, no body.
        assert_eq!(without_date(&head_only(&mut c).await), "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n");
        drop(c);
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn http10_and_connection_close_are_answered_as_hyper_answers_them() {
        // HTTP/1.0 without keep-alive: answered in 1.0, then closed.
        let (mut c, task) = start(path_echo(), never());
        c.write_all(b"GET /a HTTP/1.0\r\n\r\n").await.unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        assert_eq!(without_date(&all), "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n/a");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        // HTTP/1.0 with keep-alive: told so, and the connection goes on.
        let (mut c, _task) = start(path_echo(), never());
        c.write_all(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
        assert_eq!(
            without_date(&response(&mut c).await),
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n/b"
        );
        c.write_all(b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
        assert!(response(&mut c).await.ends_with("/c"));
        // HTTP/1.1 asking to close: `connection: close`, then closed.
        let (mut c, task) = start(path_echo(), never());
        c.write_all(b"GET /d HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        assert_eq!(without_date(&all), "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n/d");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn requests_hyper_serves_are_handed_over_with_every_byte_read() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        let cases: Vec<Vec<u8>> = vec![
            b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec(),
            b"PUT /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".to_vec(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            b"\x16\x03\x01 not http at all\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n".to_vec(),
            big.into_bytes(),
        ];
        for input in cases {
            let (mut c, task) = start(path_echo(), never());
            c.write_all(&input).await.unwrap();
            match task.await.unwrap() {
                Ended::Handoff(_, read) => assert_eq!(read, input, "{}", String::from_utf8_lossy(&input)),
                Ended::Closed => panic!("closed, not handed over: {}", String::from_utf8_lossy(&input)),
            }
        }
        // After requests this loop served, the next one that is not its own goes over with
        // what follows it.
        let (mut c, task) = start(path_echo(), never());
        c.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(response(&mut c).await.ends_with("/a"));
        let post = b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\n";
        c.write_all(post).await.unwrap();
        match task.await.unwrap() {
            Ended::Handoff(_, read) => assert_eq!(read, post),
            Ended::Closed => panic!("closed"),
        }
        // `Content-Length: 0` has no body: served here.
        let (mut c, _task) = start(path_echo(), never());
        c.write_all(b"DELETE /z HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        assert!(response(&mut c).await.ends_with("/z"));
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_are_chunked_or_close_delimited_and_trailers_need_a_trailer_header() {
        let svc = |req: Request<VisitorBody>| {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("set-cookie", HeaderValue::from_static("no=1"));
            let mut resp = Response::new(frames(&["hello ", "world"], Some(trailers), false));
            if req.uri().path() == "/trailers" {
                resp.headers_mut()
                    .insert(header::TRAILER, HeaderValue::from_static("grpc-status, set-cookie"));
            }
            std::future::ready(Ok::<_, Infallible>(resp))
        };
        let (mut c, _task) = start(svc, never());
        c.write_all(b"GET / HTTP/1.1\r\n\r\nGET /trailers HTTP/1.1\r\n\r\n").await.unwrap();
        let want = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n";
        let mut got = vec![0; 2048];
        let mut all = Vec::new();
        while !String::from_utf8_lossy(&all).contains("grpc-status: 0\r\n\r\n") {
            let n = c.read(&mut got).await.unwrap();
            assert!(n > 0);
            all.extend_from_slice(&got[..n]);
        }
        let all = without_date(&String::from_utf8(all).unwrap());
        assert!(all.starts_with(&without_date(want)), "{all}");
        // The first response: its chunks and the last chunk, no trailers (none named).
        assert!(all.contains("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\nHTTP/1.1 200 OK"), "{all}");
        // The second: the named trailer that may be one, not set-cookie.
        assert!(all.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\ngrpc-status: 0\r\n\r\n"), "{all}");
        assert!(!all.contains("set-cookie: no=1"), "{all}");

        // HTTP/1.0: until the connection closes.
        let (mut c, task) = start(svc, never());
        c.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        assert_eq!(without_date(&all), "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\nhello world");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn no_content_and_not_modified_have_no_body_and_a_service_length_is_kept() {
        let svc = |req: Request<VisitorBody>| {
            let resp = match req.uri().path() {
                "/204" => Response::builder().status(204).body(full("ignored")),
                "/304" => Response::builder().status(304).header("content-length", "7").body(full("")),
                _ => Response::builder().status(418).header("content-length", "3").body(frames(
                    &["tea"],
                    None,
                    false,
                )),
            };
            std::future::ready(Ok::<_, Infallible>(resp.unwrap()))
        };
        let (mut c, _task) = start(svc, never());
        c.write_all(b"GET /204 HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(without_date(&response(&mut c).await), "HTTP/1.1 204 No Content\r\n\r\n");
        c.write_all(b"GET /teapot HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            without_date(&response(&mut c).await),
            "HTTP/1.1 418 I'm a teapot\r\ncontent-length: 3\r\n\r\ntea"
        );
        c.write_all(b"GET /204 HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(without_date(&response(&mut c).await), "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_ends_the_connection_without_its_last_chunk() {
        let svc = |_| std::future::ready(Ok::<_, Infallible>(Response::new(frames(&["part"], None, true))));
        let (mut c, task) = start(svc, never());
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        assert!(all.ends_with("\r\n\r\n4\r\npart\r\n"), "{all}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        // A service error: closed without an answer.
        let (mut c, task) = start(|_| std::future::ready(Err::<Response<EdgeBody>, ()>(())), never());
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        // Half a head, then nothing.
        let (mut c, task) = start(path_echo(), never());
        c.write_all(b"GET / HTTP/1.1\r\nHost: a").await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        assert_eq!(started.elapsed().as_secs(), 30);
        // Kept alive after a response, then idle: the same limit.
        let (mut c2, task) = start(path_echo(), never());
        c2.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        response(&mut c2).await;
        let started = tokio::time::Instant::now();
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        assert_eq!(started.elapsed().as_secs(), 30);
        drop(c);
    }

    /// The hostile pipeliner: requests sent without ever reading a response. The loop reads
    /// no further than its buffer while its responses wait on the visitor, so what the edge
    /// takes in is bounded by the pipe, not by what the visitor sends.
    #[tokio::test(start_paused = true)]
    async fn a_visitor_that_pipelines_and_never_reads_is_not_read_without_bound() {
        let (c, task) = start(path_echo(), never());
        let (_read_half, mut write_half) = tokio::io::split(c);
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = taken.clone();
        let writer = tokio::spawn(async move {
            let req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
            for _ in 0..100_000 {
                if write_half.write_all(req).await.is_err() {
                    return;
                }
                t.fetch_add(req.len(), Ordering::SeqCst);
            }
        });
        // Paused time moves on only once every task waits: by then both pipes are full.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let taken = taken.load(Ordering::SeqCst);
        // 64 KiB in each direction of the pipe, the requests whose responses filled the other
        // one (about 34 bytes each for a 103-byte response), and the read buffer.
        assert!(taken < 128 * 1024, "the visitor got {taken} bytes in");
        assert!(!writer.is_finished() && !task.is_finished());
        writer.abort();
        task.abort();
    }

    /// A visitor that pipelines two requests and closes its side at once gets the answer to
    /// the first (a closed side is noticed only while nothing it sent waits), as from hyper.
    #[tokio::test]
    async fn requests_sent_before_the_visitor_closed_its_side_are_answered() {
        let svc = |req: Request<VisitorBody>| async move {
            // The service waits once, so that the loop reads while it works.
            tokio::task::yield_now().await;
            let body = Full::new(Bytes::from(req.uri().path().to_owned())).map_err(|n| match n {}).boxed();
            Ok::<_, Infallible>(Response::new(body))
        };
        let (c, task) = start(svc, never());
        let (mut r, mut w) = tokio::io::split(c);
        w.write_all(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\n").await.unwrap();
        w.shutdown().await.unwrap();
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert!(all.contains("\r\n\r\n/one"), "{all}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn a_visitor_that_goes_away_cancels_its_request() {
        struct Guard(Arc<AtomicBool>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let mut started_tx = Some(started_tx);
        let d = dropped.clone();
        let svc = move |_| {
            let guard = Guard(d.clone());
            let tx = started_tx.take();
            async move {
                let _guard = guard;
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
                std::future::pending::<Result<Response<EdgeBody>, Infallible>>().await
            }
        };
        let (mut c, task) = start(svc, never());
        c.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
        started_rx.await.unwrap();
        assert!(!dropped.load(Ordering::SeqCst));
        drop(c);
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        assert!(dropped.load(Ordering::SeqCst), "the request's future was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_an_idle_connection_closes_and_a_request_in_flight_is_told_close() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let mut waits = Some((started_tx, go_rx));
        let svc = move |_: Request<VisitorBody>| {
            let wait = waits.take();
            async move {
                if let Some((started, go)) = wait {
                    let _ = started.send(());
                    let _ = go.await;
                }
                Ok::<_, Infallible>(Response::new(full("ok")))
            }
        };
        let (mut c, task) = start(svc, rx.clone());
        c.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
        started_rx.await.unwrap();
        tx.send(true).unwrap();
        go_tx.send(()).unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        assert_eq!(without_date(&all), "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok");
        assert!(matches!(task.await.unwrap(), Ended::Closed));

        // Idle after a response: closed at once, without waiting for the header timeout.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (mut c, task) = start(path_echo(), rx);
        c.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        response(&mut c).await;
        let started = tokio::time::Instant::now();
        tx.send(true).unwrap();
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        assert_eq!(started.elapsed(), Duration::ZERO);

        // A new connection that has not sent its first request gets the grace.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (mut c, task) = start(path_echo(), rx);
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.write_all(b"GET /late HTTP/1.1\r\n\r\n").await.unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        assert!(all.contains("connection: close") && all.ends_with("/late"), "{all}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }
}
