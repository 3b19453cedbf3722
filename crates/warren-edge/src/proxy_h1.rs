//! HTTP/1 on a kept proxy (or relay) stream, written and read by the visitor connection's own
//! task: the path of every request without a body.
//!
//! hyper's client gives each connection a task of its own and hands the response head and
//! every body chunk across to the visitor's task through channels: per request, two more
//! task wake-ups and the work of those channels (its client was 27 % of the edge's
//! instructions per https request). Here the request's future writes the head and reads the
//! response head, and the response body reads the stream itself when the visitor connection
//! asks for more, then gives the stream back to its [`Kept`] pool once the response ended
//! cleanly. A response is framed as hyper's client frames it (RFC 9112 §6.3), within the same
//! limits. Requests with a body, upgrades and CONNECT keep hyper's client (`ingress_http`).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_mux::Stream;

/// The largest response head (status line and headers): hyper's client default.
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most header fields in a response head or its trailers: hyper's client default.
pub(crate) const MAX_HEADERS: usize = 100;
/// The most bytes of chunk extensions in one body (they are skipped): hyper's limit.
pub(crate) const MAX_EXTENSIONS: u64 = 16 * 1024;
/// The most bytes of trailer fields after a chunked body: hyper's limit.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// How much room a read asks for: one TLS record's worth towards the visitor.
const READ_SIZE: usize = 16 * 1024;

/// Sends `req` (its head alone: it has no body) over `io`, and reads the response head; the
/// response's body reads the rest, then gives `io` back to `home` if the response ended
/// cleanly and the upstream keeps its connection.
pub(crate) async fn send<T: Send + 'static>(
    mut io: Stream,
    req: &http::request::Parts,
    home: Home<T>,
) -> io::Result<Response<H1Body<T>>> {
    io.write_all(&encode_head(req)).await?;
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let head = loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_SIZE);
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended before a response"));
        }
        if let Some(head) = parse_head(&mut buf, &req.method)? {
            break head;
        }
    };
    let mut body = H1Body { io: Some(io), buf, framing: head.framing, home: head.keep_alive.then_some(home) };
    if matches!(body.framing, Framing::Done) {
        body.finish();
    }
    Ok(Response::from_parts(head.parts, body))
}

/// Where a stream goes once its response has ended cleanly.
pub(crate) struct Home<T> {
    pub(crate) pool: Arc<Kept<T>>,
    pub(crate) to: T,
}

/// The streams a visitor connection keeps between requests, each with what it leads to
/// (the endpoint, or the relay route); one idle for `idle` is let go (and with it the agent's
/// upstream connection), checked every half `idle` by a task that runs only while the pool
/// holds a stream.
pub(crate) struct Kept<T> {
    idle: Duration,
    max: usize,
    inner: Mutex<KeptInner<T>>,
}

struct KeptInner<T> {
    streams: Vec<(T, Stream, tokio::time::Instant)>,
    /// A task is checking for idle streams.
    reaping: bool,
}

impl<T: Send + 'static> Kept<T> {
    pub(crate) fn new(idle: Duration, max: usize) -> Arc<Self> {
        Arc::new(Kept { idle, max, inner: Mutex::new(KeptInner { streams: Vec::new(), reaping: false }) })
    }

    /// A kept stream to something `to` accepts that is still open and quiet: one whose
    /// upstream closed its connection, or sent anything unasked, is dropped here.
    pub(crate) fn take(&self, to: impl Fn(&T) -> bool) -> Option<(T, Stream)> {
        let mut gone = Vec::new();
        let found = {
            let mut inner = self.inner.lock().expect("pool poisoned");
            loop {
                let Some(i) = inner.streams.iter().position(|(t, ..)| to(t)) else { break None };
                let (t, s, _) = inner.streams.swap_remove(i);
                if quiet(&s) {
                    break Some((t, s));
                }
                gone.push(s);
            }
        };
        drop(gone);
        found
    }

    /// How many streams are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().expect("pool poisoned").streams.len()
    }

    fn put(self: &Arc<Self>, to: T, s: Stream) {
        let mut inner = self.inner.lock().expect("pool poisoned");
        if inner.streams.len() >= self.max {
            drop(inner);
            return;
        }
        inner.streams.push((to, s, tokio::time::Instant::now()));
        if !inner.reaping {
            inner.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Nothing to read on a kept stream: no data nobody asked for, no end, no reset.
fn quiet(s: &Stream) -> bool {
    s.poll_read_ready(&mut Context::from_waker(std::task::Waker::noop())).is_pending()
}

/// Lets go of the pool's streams idle for its limit (or no longer quiet), every half limit,
/// until the pool is empty or gone.
async fn reap<T>(pool: Weak<Kept<T>>) {
    loop {
        let Some(idle) = pool.upgrade().map(|p| p.idle) else { return };
        tokio::time::sleep(idle / 2).await;
        let Some(p) = pool.upgrade() else { return };
        let (gone, done) = {
            let mut inner = p.inner.lock().expect("pool poisoned");
            let now = tokio::time::Instant::now();
            let mut gone = Vec::new();
            let mut i = 0;
            while i < inner.streams.len() {
                let (_, s, since) = &inner.streams[i];
                if now.duration_since(*since) >= idle || !quiet(s) {
                    gone.push(inner.streams.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            let done = inner.streams.is_empty();
            if done {
                inner.reaping = false;
            }
            (gone, done)
        };
        drop(gone);
        if done {
            return;
        }
    }
}

/// The body of a response read by [`send`]: it reads the stream as it is polled.
pub(crate) struct H1Body<T> {
    /// `None` once the body has ended (the stream kept or dropped) or failed.
    io: Option<Stream>,
    buf: BytesMut,
    framing: Framing,
    /// `None` when the stream is not to be kept.
    home: Option<Home<T>>,
}

impl<T: Send + 'static> H1Body<T> {
    /// The response has ended: the stream goes back to its pool if nothing follows it.
    fn finish(&mut self) {
        let io = self.io.take();
        if let (Some(io), Some(home)) = (io, self.home.take())
            && self.buf.is_empty()
        {
            home.pool.put(home.to, io);
        }
        self.buf = BytesMut::new();
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.io = None;
        self.home = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<T: Send + Unpin + 'static> http_body::Body for H1Body<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let step = match this.framing.next(&mut this.buf) {
                Ok(s) => s,
                Err(e) => return this.fail(e),
            };
            match step {
                Step::Data(b) => {
                    if matches!(this.framing, Framing::Done) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Step::Trailers(t) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::More => {}
            }
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 1024 {
                this.buf.reserve(READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Ready(Ok(0)) => {
                    return match this.framing.eof() {
                        Ok(()) => {
                            // Read to its end: the stream cannot carry another response.
                            this.home = None;
                            this.finish();
                            Poll::Ready(None)
                        }
                        Err(e) => this.fail(e),
                    };
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A parsed response head.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// The request head as HTTP/1.1 carries it. The request-target is the URI's path and query
/// (`ingress_http` makes every onward URI path-only).
fn encode_head(req: &http::request::Parts) -> Vec<u8> {
    let target = match req.uri.path_and_query() {
        Some(pq) if req.uri.scheme().is_none() => pq.as_str(),
        _ => "/",
    };
    let len = req.method.as_str().len()
        + target.len()
        + 13
        + req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The response head at the start of `buf`, taken from it; `None` while it is incomplete.
/// Informational responses (1xx but 101) are skipped, as hyper's client skips them.
fn parse_head(buf: &mut BytesMut, method: &Method) -> io::Result<Option<Head>> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Uninitialized slots: zeroing 100 of them on every parse cost more than the parse.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(invalid("the response head is larger than the limit"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(invalid("the response has too many headers")),
            Err(_) => return Err(invalid("the response head is not valid HTTP/1")),
        };
        if len > MAX_HEAD {
            return Err(invalid("the response head is larger than the limit"));
        }
        // Where each field lies, so that the values share the head's bytes once it is frozen
        // (a list as long as the head's fields costs less than parsing the frozen head again).
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| s.as_ptr() as usize - base;
        let fields: Vec<(usize, usize, usize, usize)> = res
            .headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), h.name.len(), at(h.value), h.value.len()))
            .collect();
        let reason = res.reason.filter(|r| !r.is_empty()).map(|r| (at(r.as_bytes()), r.len()));
        let (code, version) = (res.code.expect("a complete head has a status"), res.version);
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| invalid("the response status is not valid"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let mut headers = HeaderMap::with_capacity(fields.len());
        // What framing and keep-alive need is noted as the map is built, not looked up in it
        // again (four lookups a response).
        let mut noted = Noted { transfer_encoding: None, length: Ok(None), close: false, keep_alive: false };
        for &(n, nl, v, vl) in &fields {
            let name = HeaderName::from_bytes(&head[n..n + nl])
                .map_err(|_| invalid("a header name is not valid"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| invalid("a header value is not valid"))?;
            noted.note(&name, value.as_bytes());
            headers.append(name, value);
        }
        let version = if version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let framing = framing(status, method, version, &noted)?;
        let keep_alive = !matches!(framing, Framing::UntilClose)
            && match version {
                Version::HTTP_11 => !noted.close,
                _ => noted.keep_alive,
            };
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        if let Some((r, rl)) = reason
            && status.canonical_reason().map(str::as_bytes) != Some(&head[r..r + rl])
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(r..r + rl))
        {
            parts.extensions.insert(reason);
        }
        return Ok(Some(Head { parts, framing, keep_alive }));
    }
}

/// What a response head's fields say of its framing and its connection.
struct Noted {
    /// Whether the last Transfer-Encoding value ends in `chunked`; `None`: no such field.
    transfer_encoding: Option<bool>,
    /// The Content-Length (every value, comma-separated or repeated, must agree), or why it
    /// is not valid (which matters only without a Transfer-Encoding).
    length: Result<Option<u64>, &'static str>,
    /// A `Connection` field lists `close` / `keep-alive`.
    close: bool,
    keep_alive: bool,
}

impl Noted {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == TRANSFER_ENCODING {
            self.transfer_encoding = Some(crate::serve_h1::is_chunked(value));
        } else if *name == CONTENT_LENGTH {
            if let Ok(length) = self.length {
                self.length = content_length(length, value);
            }
        } else if *name == CONNECTION {
            self.close |= crate::serve_h1::has_token(value, b"close");
            self.keep_alive |= crate::serve_h1::has_token(value, b"keep-alive");
        }
    }
}

/// The Content-Length so far (`length`) with one more field's `value`.
fn content_length(mut length: Option<u64>, value: &[u8]) -> Result<Option<u64>, &'static str> {
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err("the response's Content-Length is not valid");
        }
        let n = std::str::from_utf8(part)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("the response's Content-Length is not valid")?;
        if length.is_some_and(|l| l != n) {
            return Err("the response has differing Content-Lengths");
        }
        length = Some(n);
    }
    Ok(length)
}

/// How the response's body is delimited (RFC 9112 §6.3).
fn framing(status: StatusCode, method: &Method, version: Version, noted: &Noted) -> io::Result<Framing> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(invalid("the upstream switched protocols unasked"));
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED || *method == Method::HEAD {
        return Ok(Framing::Done);
    }
    if let Some(chunked) = noted.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(invalid("an HTTP/1.0 response has a Transfer-Encoding"));
        }
        return Ok(if chunked { Framing::Chunked(Chunked::Size(0, false), 0) } else { Framing::UntilClose });
    }
    let length = match noted.length {
        Ok(None) => return Ok(Framing::UntilClose),
        Ok(length) => length,
        Err(why) => return Err(invalid(why)),
    };
    Ok(match length {
        Some(0) | None => Framing::Done,
        Some(n) => Framing::Length(n),
    })
}

/// Where a response body stands: protocol logic only, fed from a buffer (no I/O).
#[derive(Debug)]
enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    /// A chunked body, and the bytes of chunk extensions so far (skipped, but limited).
    Chunked(Chunked, u64),
    /// Everything until the stream ends.
    UntilClose,
    Done,
}

/// Where a chunked body stands.
#[derive(Debug)]
enum Chunked {
    /// Reading a chunk size: its value so far, and whether a digit came.
    Size(u64, bool),
    /// Whitespace after the size.
    SizeLws(u64),
    /// Skipping an extension.
    Extension(u64),
    /// The size line's LF.
    SizeLf(u64),
    /// This many bytes of the chunk are still to come.
    Data(u64),
    /// The CR, then the LF, after a chunk's data.
    DataCr,
    DataLf,
    /// The trailer section (perhaps empty) after the last chunk.
    Trailers,
}

/// What the next bytes of a body make.
#[derive(Debug)]
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

impl Framing {
    /// Takes the next step out of `buf`.
    fn next(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        match self {
            Framing::Done => Ok(Step::End),
            Framing::Length(rem) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*rem).min(buf.len() as u64);
                *rem -= n;
                if *rem == 0 {
                    *self = Framing::Done;
                }
                Ok(Step::Data(buf.split_to(n as usize).freeze()))
            }
            Framing::UntilClose => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                Ok(Step::Data(buf.split().freeze()))
            }
            Framing::Chunked(c, extensions) => {
                let step = c.next(buf, extensions)?;
                if matches!(step, Step::End | Step::Trailers(_)) {
                    *self = Framing::Done;
                }
                Ok(step)
            }
        }
    }

    /// The stream has ended: fine only for a body delimited by its end.
    fn eof(&mut self) -> io::Result<()> {
        match self {
            Framing::UntilClose | Framing::Done => {
                *self = Framing::Done;
                Ok(())
            }
            _ => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended within the response body"))
            }
        }
    }
}

impl Chunked {
    fn next(&mut self, buf: &mut BytesMut, extensions: &mut u64) -> io::Result<Step> {
        loop {
            if let Chunked::Data(rem) = self {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*rem).min(buf.len() as u64);
                *rem -= n;
                if *rem == 0 {
                    *self = Chunked::DataCr;
                }
                return Ok(Step::Data(buf.split_to(n as usize).freeze()));
            }
            if let Chunked::Trailers = self {
                return trailers(buf);
            }
            let Some(&b) = buf.first() else { return Ok(Step::More) };
            buf.advance(1);
            *self = match (&*self, b) {
                (Chunked::Size(n, _), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (b as char).to_digit(16).expect("a hex digit") as u64;
                    let n = n.checked_mul(16).and_then(|n| n.checked_add(digit));
                    Chunked::Size(n.ok_or_else(|| invalid("a chunk size overflows"))?, true)
                }
                (Chunked::Size(_, false), _) => return Err(invalid("a chunk size line has no size")),
                (Chunked::Size(n, true) | Chunked::SizeLws(n), b' ' | b'\t') => Chunked::SizeLws(*n),
                (Chunked::Size(n, true) | Chunked::SizeLws(n), b';') => Chunked::Extension(*n),
                (Chunked::Size(n, true) | Chunked::SizeLws(n), b'\r') => Chunked::SizeLf(*n),
                (Chunked::Size(..) | Chunked::SizeLws(_), _) => {
                    return Err(invalid("a chunk size is not valid"));
                }
                (Chunked::Extension(n), b'\r') => Chunked::SizeLf(*n),
                (Chunked::Extension(_), b'\n') => return Err(invalid("a chunk extension holds a newline")),
                (Chunked::Extension(n), _) => {
                    *extensions += 1;
                    if *extensions >= MAX_EXTENSIONS {
                        return Err(invalid("the chunk extensions are larger than the limit"));
                    }
                    Chunked::Extension(*n)
                }
                (Chunked::SizeLf(0), b'\n') => Chunked::Trailers,
                (Chunked::SizeLf(n), b'\n') => Chunked::Data(*n),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::Size(0, false),
                (Chunked::SizeLf(_) | Chunked::DataCr | Chunked::DataLf, _) => {
                    return Err(invalid("a chunk is not followed by CRLF"));
                }
                (Chunked::Data(_) | Chunked::Trailers, _) => unreachable!("handled above"),
            };
        }
    }
}

/// The trailer section after the last chunk: `End` when empty, else its fields (then the
/// body has ended too).
fn trailers(buf: &mut BytesMut) -> io::Result<Step> {
    if buf.len() < 2 {
        return Ok(Step::More);
    }
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Step::End);
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_TRAILERS {
            return Err(invalid("the trailers are larger than the limit"));
        }
        return Ok(Step::More);
    };
    let len = end + 4;
    if len > MAX_TRAILERS {
        return Err(invalid("the trailers are larger than the limit"));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(&buf[..len], &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) | Err(_) => return Err(invalid("the trailers are not valid")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name =
            HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| invalid("a trailer name is not valid"))?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| invalid("a trailer value is not valid"))?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Step::Trailers(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use warren_mux::{Config, Mux, Role};

    /// Guard against hangs; never used to wait for something to happen.
    const TEST_TIMEOUT: Duration = Duration::from_secs(30);

    fn get() -> http::request::Parts {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.uri = http::Uri::from_static("/a?b=c");
        parts.headers.insert(http::header::HOST, HeaderValue::from_static("x.test"));
        parts.headers.append("x-twice", HeaderValue::from_static("1"));
        parts.headers.append("x-twice", HeaderValue::from_static("2"));
        parts
    }

    fn pair() -> (Mux, Mux) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (
            warren_mux::start(a, Role::Client, Config::default()),
            warren_mux::start(b, Role::Server, Config::default()),
        )
    }

    /// Feeds `wire` to a fresh decoder in pieces of `step` bytes; the data, the trailers and
    /// whether it ended.
    fn decode(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> io::Result<(Vec<u8>, Option<HeaderMap>, bool)> {
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match framing.next(&mut buf)? {
                Step::Data(b) => data.extend_from_slice(&b),
                Step::Trailers(t) => trailers = Some(t),
                Step::End => return Ok((data, trailers, true)),
                Step::More if fed == wire.len() => return Ok((data, trailers, false)),
                Step::More => {
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    fn chunked() -> Framing {
        Framing::Chunked(Chunked::Size(0, false), 0)
    }

    #[test]
    fn a_chunked_body_decodes_the_same_whatever_the_reads() {
        let wire = b"5;ext=1\r\nhello\r\nA  \r\n, world!!!\r\n0\r\nx-sum: 1\r\nx-sum: 2\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers, ended) = decode(chunked(), wire, step).unwrap();
            assert_eq!(data, b"hello, world!!!", "step {step}");
            assert!(ended, "step {step}");
            let t = trailers.expect("trailers");
            assert_eq!(t.get_all("x-sum").iter().collect::<Vec<_>>(), ["1", "2"]);
        }
        let (data, trailers, ended) = decode(chunked(), b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers.is_none(), ended), (&b"abc"[..], true, true));
    }

    #[test]
    fn a_length_body_stops_at_its_length_and_an_unended_one_wants_more() {
        let (data, _, ended) = decode(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!((data.as_slice(), ended), (&b"hello"[..], true));
        let mut f = Framing::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert!(matches!(f.next(&mut buf).unwrap(), Step::Data(b) if b == "abc"));
        assert_eq!(&buf[..], b"def", "what follows the body is left for the caller to refuse");
        assert!(matches!(f.next(&mut buf).unwrap(), Step::End));
        let (_, _, ended) = decode(Framing::Length(10), b"short", 5).unwrap();
        assert!(!ended);
        assert!(Framing::Length(10).eof().is_err(), "an end within the body is an error");
        assert!(chunked().eof().is_err());
        assert!(Framing::UntilClose.eof().is_ok());
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5 5\r\n",
            b"5;a\nb\r\n",
            b"11111111111111111\r\n",
            b"0\r\nno colon here\r\n\r\n",
        ] {
            assert!(decode(chunked(), wire, 1).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn chunk_extensions_and_trailers_are_limited() {
        // Extensions are counted over the whole body, not per chunk.
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend_from_slice(
                format!("1;{}\r\nx\r\n", "e".repeat(MAX_EXTENSIONS as usize / 2)).as_bytes(),
            );
        }
        let e = decode(chunked(), &wire, 4096).unwrap_err();
        assert!(e.to_string().contains("extensions"), "{e}");
        let mut wire = b"0\r\n".to_vec();
        wire.extend_from_slice(format!("x-big: {}\r\n\r\n", "t".repeat(MAX_TRAILERS)).as_bytes());
        let e = decode(chunked(), &wire, 1000).unwrap_err();
        assert!(e.to_string().contains("trailers"), "{e}");
    }

    fn head(wire: &[u8], method: Method) -> io::Result<Option<Head>> {
        parse_head(&mut BytesMut::from(wire), &method)
    }

    #[test]
    fn response_heads_are_framed_as_rfc_9112_says() {
        let h =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX-A: b\r\n\r\n", Method::GET).unwrap().unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.keep_alive);
        assert_eq!(h.parts.headers["x-a"], "b");
        assert!(h.parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD).unwrap().unwrap();
        assert!(matches!(h.framing, Framing::Done) && h.keep_alive);
        assert_eq!(h.parts.headers["content-length"], "5", "a HEAD response keeps its length");
        for status in [204, 304] {
            let h = head(format!("HTTP/1.1 {status} X\r\n\r\n").as_bytes(), Method::GET).unwrap().unwrap();
            assert!(matches!(h.framing, Framing::Done) && h.keep_alive);
        }
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(..)), "Transfer-Encoding wins");
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", Method::GET).unwrap().unwrap();
        assert!(matches!(h.framing, Framing::UntilClose) && !h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET).unwrap().unwrap();
        assert!(matches!(h.framing, Framing::UntilClose) && !h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nContent-Length: 0\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::GET).unwrap().unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        assert_eq!(h.parts.version, Version::HTTP_10);
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n", Method::GET).unwrap().unwrap();
        let reason = h.parts.extensions.get::<hyper::ext::ReasonPhrase>().expect("an unusual reason is kept");
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
    }

    #[test]
    fn informational_responses_are_skipped_and_an_unasked_upgrade_is_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let h = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(h.parts.status, StatusCode::OK);
        assert!(h.parts.headers.get("link").is_none());
        assert_eq!(&buf[..], b"ok");
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, &Method::GET).unwrap().is_none());
        assert!(buf.is_empty());
        assert!(head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", Method::GET).is_err());
    }

    #[test]
    fn invalid_response_heads_are_refused() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(head(wire, Method::GET).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        assert!(head(b"HTTP/1.1 200 OK\r\nX: y\r\n", Method::GET).unwrap().is_none(), "incomplete");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(head(&many, Method::GET).is_err(), "too many headers");
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert!(head(&big, Method::GET).is_err(), "an unended head larger than the limit");
    }

    #[test]
    fn the_request_head_is_written_as_http_1_1() {
        let wire = encode_head(&get());
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "GET /a?b=c HTTP/1.1\r\nhost: x.test\r\nx-twice: 1\r\nx-twice: 2\r\n\r\n"
        );
    }

    /// The agent's side of the proxy stream: reads one request head, answers `response`.
    async fn answer(mut s: Stream, response: &'static [u8]) -> (Stream, String) {
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "the request head ended early");
            got.extend_from_slice(&b[..n]);
        }
        s.write_all(response).await.unwrap();
        (s, String::from_utf8(got).unwrap())
    }

    #[tokio::test]
    async fn a_stream_is_kept_after_a_clean_response_and_carries_the_next_request() {
        let (client, server) = pair();
        let pool = Kept::new(Duration::from_secs(60), 4);
        let agent = tokio::spawn(async move {
            let s = server.accept().await.unwrap();
            let (s, first) = answer(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst").await;
            let (s, second) =
                answer(s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n")
                    .await;
            // The stream is kept open: a reset would discard the response not yet read.
            let (s, third) =
                answer(s, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nthird").await;
            (first, second, third, (s, server))
        });
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let stream = match pool.take(|t| *t == 1) {
                Some((_, s)) => s,
                None => {
                    assert!(bodies.is_empty(), "only the first request opens a stream");
                    client.open().unwrap()
                }
            };
            let r =
                tokio::time::timeout(TEST_TIMEOUT, send(stream, &get(), Home { pool: pool.clone(), to: 1 }))
                    .await
                    .unwrap()
                    .unwrap();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            bodies.push(body);
        }
        assert_eq!(bodies, ["first", "second", "third"]);
        assert_eq!(pool.len(), 0, "Connection: close is not kept");
        let (first, second, third, server) =
            tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
        assert!(first.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{first}");
        assert_eq!((first.clone(), first), (second, third));
        drop(server);
    }

    #[tokio::test]
    async fn a_stream_with_bytes_past_the_response_or_a_body_left_unread_is_not_kept() {
        let (client, server) = pair();
        let pool = Kept::new(Duration::from_secs(60), 4);
        let agent = tokio::spawn(async move {
            let s = server.accept().await.unwrap();
            // Kept open: a reset would discard the response not yet read.
            let first = answer(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").await;
            let s = server.accept().await.unwrap();
            let (s, _) = answer(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no").await;
            // The edge drops the body unread: its end of the stream goes.
            let mut rest = Vec::new();
            let _ = s.take(1).read_to_end(&mut rest).await;
            (first, server)
        });
        let r = send(client.open().unwrap(), &get(), Home { pool: pool.clone(), to: 1 }).await.unwrap();
        let body =
            tokio::time::timeout(TEST_TIMEOUT, r.into_body().collect()).await.unwrap().unwrap().to_bytes();
        assert_eq!(body, "ok");
        assert_eq!(pool.len(), 0, "bytes past the response's end: not kept");
        let r = send(client.open().unwrap(), &get(), Home { pool: pool.clone(), to: 1 }).await.unwrap();
        drop(r);
        assert_eq!(pool.len(), 0, "a body dropped unread: not kept");
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stream_ended_early_fails_the_body_and_is_not_kept() {
        let (client, server) = pair();
        let pool = Kept::new(Duration::from_secs(60), 4);
        let agent = tokio::spawn(async move {
            let s = server.accept().await.unwrap();
            let (mut s, _) = answer(s, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
            s.shutdown().await.unwrap();
            let s2 = server.accept().await.unwrap();
            let (mut s2, _) = answer(s2, b"HTTP/1.1 200 OK\r\nContent-Le").await;
            s2.shutdown().await.unwrap();
            (s, s2, server)
        });
        let r = send(client.open().unwrap(), &get(), Home { pool: pool.clone(), to: 1 }).await.unwrap();
        let e = tokio::time::timeout(TEST_TIMEOUT, r.into_body().collect()).await.unwrap();
        assert!(e.is_err(), "a body cut short is an error, not a short body");
        let e = tokio::time::timeout(
            TEST_TIMEOUT,
            send(client.open().unwrap(), &get(), Home { pool: pool.clone(), to: 1 }),
        )
        .await
        .unwrap();
        assert!(e.is_err(), "a head cut short is an error");
        assert_eq!(pool.len(), 0);
        let _ = tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_kept_stream_the_agent_closed_is_not_taken_and_idle_ones_are_let_go() {
        let (client, server) = pair();
        let idle = Duration::from_millis(200);
        let pool = Kept::new(idle, 4);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let agent = tokio::spawn(async move {
            for i in 0..2 {
                let s = server.accept().await.unwrap();
                let (mut s, _) = answer(s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                if i == 0 {
                    // The upstream closed its connection: the agent ends the stream.
                    s.shutdown().await.unwrap();
                    drop(s);
                } else {
                    // Waits for the edge to let go of the idle stream.
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                }
                tx.send(i).unwrap();
            }
            server
        });
        let r = send(client.open().unwrap(), &get(), Home { pool: pool.clone(), to: 1 }).await.unwrap();
        r.into_body().collect().await.unwrap();
        assert_eq!(rx.recv().await, Some(0));
        // The agent's end may still be on its way: taken only once it has arrived.
        let taken = tokio::time::timeout(TEST_TIMEOUT, async {
            loop {
                match pool.take(|t| *t == 1) {
                    None => return,
                    Some((t, s)) => {
                        pool.put(t, s);
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
        .await;
        assert!(taken.is_ok(), "a closed stream stays in the pool");
        let r = send(client.open().unwrap(), &get(), Home { pool: pool.clone(), to: 1 }).await.unwrap();
        r.into_body().collect().await.unwrap();
        assert_eq!(pool.len(), 1);
        // Nobody asks again: the pool's own task lets the stream go, which ends it.
        assert_eq!(tokio::time::timeout(TEST_TIMEOUT, rx.recv()).await.unwrap(), Some(1));
        assert_eq!(pool.len(), 0);
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }
}
