//! `compress-response`: the visitor's `Accept-Encoding` negotiated against the algorithms the
//! policy allows, and a body that compresses each frame as it passes and flushes it, so a
//! streamed response (server-sent events, a long download) reaches the visitor as it is
//! produced. Nothing is buffered beyond the encoder's own window.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warren_policy::Encoding;

/// gzip and deflate level: zlib's default trades well between speed and size for the text a
/// proxy sees.
const DEFLATE_LEVEL: u32 = 6;
/// Brotli quality for on-the-fly compression (11 is for static files; CDNs use about 4 for
/// dynamic responses). Quality 4 keeps the match finder at 512 KiB.
const BROTLI_QUALITY: u32 = 4;
/// Brotli window, 2^18 = 256 KiB: with the match finder, about 1 MiB per response.
const BROTLI_LGWIN: u32 = 18;

/// Compresses `res`'s body when the policy asked for it, the visitor accepts one of the
/// policy's algorithms, the response is one compression applies to, and an encoder slot is
/// free in `slots` (else the response passes uncompressed: a flood of visitors costs the edge
/// bandwidth, not memory). `method` and `accept` are the request's.
pub(crate) fn apply<B>(
    res: http::Response<B>,
    allowed: &[Encoding],
    method: &http::Method,
    accept: &HeaderMap,
    slots: &Arc<Semaphore>,
) -> http::Response<Compressed<B>> {
    let (mut parts, body) = res.into_parts();
    let chosen = negotiate(accept, allowed).filter(|_| compressible(method, &parts));
    let slot = chosen.and_then(|_| slots.clone().try_acquire_owned().ok());
    let (Some(encoding), Some(slot)) = (chosen, slot) else {
        return http::Response::from_parts(parts, Compressed::identity(body));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
    add_vary(&mut parts.headers);
    // The bytes differ from the upstream's: a strong validator would now lie.
    if let Some(etag) = parts.headers.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
        && let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}"))
    {
        parts.headers.insert(header::ETAG, weak);
    }
    http::Response::from_parts(parts, Compressed::new(body, encoding, slot))
}

/// The allowed algorithm the visitor prefers (highest q-value; among equals, the policy's
/// order), or `None` when it accepts none of them.
pub(crate) fn negotiate(accept: &HeaderMap, allowed: &[Encoding]) -> Option<Encoding> {
    let mut explicit: Vec<(String, u32)> = Vec::new();
    let mut any = None;
    for value in accept.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let token = params.next().unwrap_or("").trim().to_ascii_lowercase();
            if token.is_empty() {
                continue;
            }
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .find_map(parse_q)
                .unwrap_or(1000);
            if token == "*" {
                any = Some(q);
            } else {
                explicit.push((token, q));
            }
        }
    }
    let mut best: Option<(Encoding, u32)> = None;
    for &e in allowed {
        let q = explicit.iter().find(|(t, _)| t == e.token()).map(|(_, q)| *q).or(any).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    best.map(|(e, _)| e)
}

/// A q-value in thousandths (`0.5` is 500); `None` when it is not one.
fn parse_q(s: &str) -> Option<u32> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let frac: u32 = format!("{frac:0<3}").parse().ok()?;
    let q = whole + frac;
    (q <= 1000).then_some(q)
}

/// False for responses compression must not touch: no body, already encoded, a byte range,
/// `no-transform`, or media that is compressed already.
fn compressible(method: &http::Method, res: &http::response::Parts) -> bool {
    let status = res.status.as_u16();
    if method == http::Method::HEAD
        || status < 200
        || status == 204
        || status == 206
        || status == 304
        || res.headers.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    if let Some(ce) = res.headers.get(header::CONTENT_ENCODING)
        && !ce.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return false;
    }
    if res.headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0") {
        return false;
    }
    let no_transform = res
        .headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-transform")));
    if no_transform {
        return false;
    }
    let ct = res
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let precompressed = (ct.starts_with("image/") && ct != "image/svg+xml")
        || ct.starts_with("video/")
        || ct.starts_with("audio/")
        || matches!(
            ct.as_str(),
            "application/zip"
                | "application/gzip"
                | "application/x-gzip"
                | "application/zstd"
                | "application/x-7z-compressed"
                | "application/x-rar-compressed"
                | "application/x-bzip2"
                | "application/x-xz"
                | "font/woff"
                | "font/woff2"
        );
    !precompressed
}

fn add_vary(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| matches!(t.trim(), "*") || t.trim().eq_ignore_ascii_case("accept-encoding"))
            })
            .unwrap_or(false)
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(e: Encoding) -> Encoder {
        let level = flate2::Compression::new(DEFLATE_LEVEL);
        match e {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            Encoding::Deflate => Encoder::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), level)),
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
        }
    }

    /// Compresses `data` and flushes, so the visitor can decode everything sent so far.
    fn chunk(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        fn run<W: Write>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
            w.write_all(data)?;
            w.flush()
        }
        let out = match self {
            Encoder::Gzip(w) => {
                run(w, data)?;
                std::mem::take(w.get_mut())
            }
            Encoder::Deflate(w) => {
                run(w, data)?;
                std::mem::take(w.get_mut())
            }
            Encoder::Br(w) => {
                run(w.as_mut(), data)?;
                std::mem::take(w.get_mut())
            }
        };
        Ok(Bytes::from(out))
    }

    /// Ends the stream: the encoder's last bytes (and gzip's trailer).
    fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(match self {
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Deflate(w) => w.finish()?,
            Encoder::Br(w) => w.into_inner(),
        }))
    }
}

/// A body passed through as it is, or compressed frame by frame.
pub(crate) struct Compressed<B> {
    inner: B,
    /// Dropped (the slot freed) with the encoder.
    encoder: Option<(Encoder, OwnedSemaphorePermit)>,
    /// Trailers that arrived before the encoder's last bytes went out.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> Compressed<B> {
    fn identity(inner: B) -> Compressed<B> {
        Compressed { inner, encoder: None, trailers: None, done: false }
    }

    fn new(inner: B, e: Encoding, slot: OwnedSemaphorePermit) -> Compressed<B> {
        Compressed { inner, encoder: Some((Encoder::new(e), slot)), trailers: None, done: false }
    }
}

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.encoder.is_none() {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        loop {
            let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let (encoder, _slot) = this.encoder.take().expect("checked above");
                    this.done = true;
                    return Poll::Ready(match encoder.finish() {
                        Ok(tail) => Some(Ok(Frame::data(tail))),
                        Err(e) => {
                            tracing::debug!(error = %e, "compress-response: finishing the stream failed");
                            None
                        }
                    });
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let (encoder, _) = this.encoder.as_mut().expect("checked above");
                    match encoder.chunk(&data) {
                        // A frame the encoder is still holding (an empty flush) is not sent.
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => {
                            // Writing into memory does not fail; if it ever did, the visitor gets
                            // a truncated body rather than a wrong one.
                            tracing::debug!(error = %e, "compress-response: the encoder failed");
                            this.encoder = None;
                            this.done = true;
                            return Poll::Ready(None);
                        }
                    }
                }
                Err(frame) => {
                    // Trailers end the body: the encoder's last bytes go first.
                    this.trailers = frame.into_trailers().ok();
                    let (encoder, _slot) = this.encoder.take().expect("checked above");
                    this.done = true;
                    return Poll::Ready(encoder.finish().ok().map(|tail| Ok(Frame::data(tail))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.encoder.is_some() {
            false
        } else if self.done {
            self.trailers.is_none()
        } else {
            self.inner.is_end_stream()
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.encoder.is_some() || self.done { SizeHint::default() } else { self.inner.size_hint() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Read;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    const ALL: [Encoding; 3] = [Encoding::Gzip, Encoding::Deflate, Encoding::Br];

    fn slots(n: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(n))
    }

    #[test]
    fn the_visitors_highest_q_value_wins_among_what_the_policy_allows() {
        use Encoding::*;
        assert_eq!(negotiate(&accept("gzip, deflate, br"), &ALL), Some(Gzip), "equal q: the policy's order");
        assert_eq!(negotiate(&accept("gzip;q=1.0, br; q=0.5, *;q=0"), &ALL), Some(Gzip));
        assert_eq!(negotiate(&accept("gzip;q=0.5, br"), &ALL), Some(Br));
        assert_eq!(negotiate(&accept("gzip;q=0, deflate;q=0.001"), &ALL), Some(Deflate));
        assert_eq!(negotiate(&accept("br"), &[Gzip]), None, "not allowed by the policy");
        assert_eq!(negotiate(&accept("*"), &[Br, Gzip]), Some(Br));
        assert_eq!(negotiate(&accept("*;q=0.2, gzip;q=0"), &ALL), Some(Deflate));
        assert_eq!(negotiate(&accept("identity"), &ALL), None);
        assert_eq!(negotiate(&HeaderMap::new(), &ALL), None, "no header: no compression");
        assert_eq!(negotiate(&accept("gzip;q=2, br;q=abc"), &ALL), Some(Gzip), "bad q-values read as 1");
    }

    fn response(headers: &[(&str, &str)], status: u16) -> http::response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn encoded_ranged_empty_and_precompressed_responses_are_left_alone() {
        let get = http::Method::GET;
        assert!(compressible(&get, &response(&[("content-type", "text/html")], 200)));
        assert!(compressible(&get, &response(&[("content-type", "image/svg+xml")], 200)));
        assert!(!compressible(&http::Method::HEAD, &response(&[], 200)));
        assert!(!compressible(&get, &response(&[("content-encoding", "gzip")], 200)));
        assert!(compressible(&get, &response(&[("content-encoding", "identity")], 200)));
        assert!(!compressible(&get, &response(&[], 206)));
        assert!(!compressible(&get, &response(&[], 304)));
        assert!(!compressible(&get, &response(&[], 204)));
        assert!(!compressible(&get, &response(&[("content-length", "0")], 200)));
        assert!(!compressible(&get, &response(&[("cache-control", "public, no-transform")], 200)));
        assert!(!compressible(&get, &response(&[("content-type", "image/png")], 200)));
        assert!(!compressible(&get, &response(&[("content-type", "application/zip")], 200)));
    }

    fn decode(e: Encoding, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match e {
            Encoding::Gzip => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap(),
            Encoding::Deflate => flate2::read::ZlibDecoder::new(bytes).read_to_end(&mut out).unwrap(),
            Encoding::Br => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out).unwrap(),
        };
        out
    }

    #[tokio::test]
    async fn every_frame_is_flushed_so_each_decodes_on_arrival_and_the_whole_round_trips() {
        for e in ALL {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
            let res = http::Response::builder().header("content-length", "999").body(body).unwrap();
            let res = apply(res, &[e], &http::Method::GET, &accept(e.token()), &slots(1));
            assert_eq!(res.headers()[header::CONTENT_ENCODING], e.token());
            assert!(res.headers().get(header::CONTENT_LENGTH).is_none());
            assert_eq!(res.headers()[header::VARY], "accept-encoding");
            let mut body = res.into_body();
            let mut sent = Vec::new();
            let mut received = Vec::new();
            for i in 0..3 {
                let line = format!("data: event {i} {}\n\n", "x".repeat(100 * i)).into_bytes();
                tx.send_data(Bytes::from(line.clone())).await.unwrap();
                sent.extend_from_slice(&line);
                let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
                received.extend_from_slice(&frame);
                // What arrived so far decodes to everything sent so far: nothing waits in the
                // encoder for more input.
                let mut partial = Vec::new();
                let _ = match e {
                    Encoding::Gzip => flate2::read::GzDecoder::new(&received[..]).read_to_end(&mut partial),
                    Encoding::Deflate => {
                        flate2::read::ZlibDecoder::new(&received[..]).read_to_end(&mut partial)
                    }
                    Encoding::Br => brotli::Decompressor::new(&received[..], 4096).read_to_end(&mut partial),
                };
                assert_eq!(partial, sent, "{e:?}: frame {i}");
            }
            drop(tx);
            while let Some(f) = body.frame().await {
                received.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            assert_eq!(decode(e, &received), sent, "{e:?}");
        }
    }

    #[tokio::test]
    async fn a_large_body_shrinks_and_a_strong_etag_becomes_weak() {
        let text = "the quick brown fox jumps over the lazy dog\n".repeat(20_000);
        let res = http::Response::builder()
            .header("etag", "\"abc\"")
            .header("vary", "origin")
            .body(http_body_util::Full::new(Bytes::from(text.clone())))
            .unwrap();
        let res = apply(res, &[Encoding::Br], &http::Method::GET, &accept("br"), &slots(1));
        assert_eq!(res.headers()[header::ETAG], "W/\"abc\"");
        let vary: Vec<_> = res.headers().get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["origin", "accept-encoding"]);
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        assert!(bytes.len() < text.len() / 50, "{} bytes", bytes.len());
        assert_eq!(decode(Encoding::Br, &bytes), text.as_bytes());
    }

    #[tokio::test]
    async fn beyond_the_encoder_slots_responses_pass_uncompressed_until_one_ends() {
        let slots = slots(1);
        let body = || http_body_util::Full::new(Bytes::from_static(b"hello hello hello"));
        let gz = accept("gzip");
        let first = apply(http::Response::new(body()), &ALL, &http::Method::GET, &gz, &slots);
        assert_eq!(first.headers()[header::CONTENT_ENCODING], "gzip");
        let second = apply(http::Response::new(body()), &ALL, &http::Method::GET, &gz, &slots);
        assert!(second.headers().get(header::CONTENT_ENCODING).is_none(), "no slot left");
        assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "hello hello hello");
        // The first response's end frees its slot.
        first.into_body().collect().await.unwrap();
        let third = apply(http::Response::new(body()), &ALL, &http::Method::GET, &gz, &slots);
        assert_eq!(third.headers()[header::CONTENT_ENCODING], "gzip");
    }

    #[tokio::test]
    async fn not_accepted_means_untouched() {
        let res = http::Response::builder()
            .header("content-length", "5")
            .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let res = apply(res, &ALL, &http::Method::GET, &HeaderMap::new(), &slots(1));
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "5");
        assert!(res.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
    }
}
