//! Deterministic tests of the sans-IO [`Session`]: two sessions wired back to back by moving
//! `poll_transmit()` output into the other side's `handle_input()`. No sockets, no tokio, no clock.

use bytes::BytesMut;
use proptest::prelude::*;
use warren_mux::frame::{FrameType, HEADER_LEN, Header, flags};
use warren_mux::{
    Config, ErrorCode, Event, Limits, Recv, Role, Session, SessionError, StreamError, StreamId,
};

const WINDOW: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn other(role: Role) -> Role {
    match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

/// Two sessions connected back to back. `a` is the side the tests usually open streams from.
struct Pair {
    a: Session,
    b: Session,
    a_in: BytesMut,
    b_in: BytesMut,
}

impl Pair {
    fn new(a_role: Role) -> Pair {
        Pair::with_configs(a_role, Config::default(), Config::default())
    }

    fn with_configs(a_role: Role, a: Config, b: Config) -> Pair {
        Pair {
            a: Session::new(a_role, a),
            b: Session::new(other(a_role), b),
            a_in: BytesMut::new(),
            b_in: BytesMut::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything left to send.
    fn pump(&mut self) {
        self.pump_chunked(usize::MAX);
    }

    /// Like [`Pair::pump`], but hands the bytes over `chunk` at a time.
    fn pump_chunked(&mut self, chunk: usize) {
        loop {
            let mut moved = false;
            if let Some(out) = self.a.poll_transmit() {
                deliver(&mut self.b, &mut self.b_in, &out, chunk).expect("b rejected a's bytes");
                moved = true;
            }
            if let Some(out) = self.b.poll_transmit() {
                deliver(&mut self.a, &mut self.a_in, &out, chunk).expect("a rejected b's bytes");
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }
}

/// Feeds `bytes` to `s` in pieces of `chunk` bytes, keeping partial frames in `input`.
fn deliver(s: &mut Session, input: &mut BytesMut, bytes: &[u8], chunk: usize) -> Result<(), SessionError> {
    for piece in bytes.chunks(chunk.max(1)) {
        input.extend_from_slice(piece);
        s.handle_input(input)?;
    }
    Ok(())
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn accepts(s: &mut Session) -> Vec<StreamId> {
    std::iter::from_fn(|| s.accept()).collect()
}

/// Reads until `recv` stops returning data; returns the bytes and the result that stopped it.
fn read_available(s: &mut Session, id: StreamId) -> (Vec<u8>, Result<Recv, StreamError>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        match s.recv(id, &mut buf) {
            Ok(Recv::Data(n)) => {
                assert!(n > 0, "recv returned Data(0) with a non-empty buffer");
                out.extend_from_slice(&buf[..n]);
            }
            other => return (out, other),
        }
    }
}

/// Reads at most `limit` bytes.
fn read_up_to(s: &mut Session, id: StreamId, limit: usize) -> Vec<u8> {
    let mut out = vec![0u8; limit];
    let mut got = 0;
    while got < limit {
        match s.recv(id, &mut out[got..]).unwrap() {
            Recv::Data(n) => got += n,
            _ => break,
        }
    }
    out.truncate(got);
    out
}

/// Sends as much of `data` as the session takes right now.
fn send_all_possible(s: &mut Session, id: StreamId, data: &[u8]) -> usize {
    let mut sent = 0;
    while sent < data.len() {
        let n = s.send(id, &data[sent..]).unwrap();
        if n == 0 {
            break;
        }
        sent += n;
    }
    sent
}

fn pattern(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| pattern_byte(seed, i)).collect()
}

fn pattern_byte(seed: u64, i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x >> 29) as u8
}

fn raw(ty: FrameType, fl: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let h = Header { length: body.len() as u32, ty, flags: fl, stream_id: StreamId(id) };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(body);
    v
}

fn raw_data(fl: u8, id: u32, body: &[u8]) -> Vec<u8> {
    raw(FrameType::Data, fl, id, body)
}

fn raw_rst(id: u32, code: ErrorCode) -> Vec<u8> {
    raw(FrameType::Rst, 0, id, &code.to_u32().to_be_bytes())
}

fn raw_wndinc(id: u32, inc: u32) -> Vec<u8> {
    raw(FrameType::WndInc, 0, id, &inc.to_be_bytes())
}

fn raw_goaway(last: u32, code: ErrorCode, msg: &[u8]) -> Vec<u8> {
    let mut body = last.to_be_bytes().to_vec();
    body.extend_from_slice(&code.to_u32().to_be_bytes());
    body.extend_from_slice(msg);
    raw(FrameType::GoAway, 0, 0, &body)
}

/// Splits transmitted bytes into frames, checking that they are well formed.
fn frames(mut b: &[u8]) -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= HEADER_LEN, "truncated header in output");
        let h = Header::decode(b[..HEADER_LEN].try_into().unwrap()).expect("session sent an invalid header");
        let end = HEADER_LEN + h.length as usize;
        assert!(b.len() >= end, "truncated body in output");
        out.push((h, b[HEADER_LEN..end].to_vec()));
        b = &b[end..];
    }
    out
}

fn take_frames(s: &mut Session) -> Vec<(Header, Vec<u8>)> {
    s.poll_transmit().map(|b| frames(&b)).unwrap_or_default()
}

fn feed(s: &mut Session, bytes: &[u8]) -> Result<(), SessionError> {
    let mut input = BytesMut::from(bytes);
    let r = s.handle_input(&mut input);
    if r.is_ok() {
        assert!(input.is_empty(), "complete frames left unconsumed");
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Opening, accepting, data
// ---------------------------------------------------------------------------------------------

/// The driver decides whether to wait for more streams' frames by how much stream data is
/// queued: DATA payloads count, control frames (window updates, resets, GOAWAY) and frame
/// headers do not, and taking the output starts the count again.
#[test]
fn queued_data_counts_stream_payloads_only() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    assert_eq!(p.a.queued_data(), 0);
    assert_eq!(p.a.send(id, b"hello").unwrap(), 5);
    assert_eq!(p.a.queued_data(), 5);
    let other = p.a.open().unwrap();
    assert_eq!(p.a.send(other, &[7u8; 3000]).unwrap(), 3000);
    assert_eq!(p.a.queued_data(), 3005);
    let out = p.a.poll_transmit().unwrap();
    assert_eq!(out.len(), 3005 + 2 * 8, "two frame headers: output, not data");
    assert_eq!(p.a.queued_data(), 0);
    feed(&mut p.b, &out).unwrap();

    // b reads what it got: its window updates are output without data.
    let _ = read_available(&mut p.b, id);
    let _ = read_available(&mut p.b, other);
    p.b.reset(other, ErrorCode::StreamCancelled);
    p.b.go_away(ErrorCode::None, b"bye");
    assert!(p.b.has_output());
    assert_eq!(p.b.queued_data(), 0);
}

#[test]
fn transmit_into_hands_out_the_frames_and_frames_the_next_into_the_buffer_given() {
    let mut p = Pair::new(Role::Client);
    let mut first = BytesMut::with_capacity(4096);
    let mut second = BytesMut::new();
    assert!(!p.a.transmit_into(&mut first), "nothing framed yet");
    let given = first.as_ptr();

    let id = p.a.open().unwrap();
    assert_eq!(p.a.send(id, b"hello").unwrap(), 5);
    assert!(p.a.transmit_into(&mut first));
    assert_eq!(p.a.queued_data(), 0);
    feed(&mut p.b, &first).unwrap();
    assert_eq!(accepts(&mut p.b), vec![id]);
    assert_eq!(read_available(&mut p.b, id).0, b"hello");

    // The next frames went into the allocation handed in first: no new buffer per write.
    assert_eq!(p.a.send(id, b" world").unwrap(), 6);
    assert!(p.a.transmit_into(&mut second));
    assert_eq!(second.as_ptr(), given);
    feed(&mut p.b, &second).unwrap();
    assert_eq!(read_available(&mut p.b, id).0, b" world");
}

#[test]
fn stream_ids_follow_role_parity() {
    let mut c = Session::new(Role::Client, Config::default());
    let mut s = Session::new(Role::Server, Config::default());
    assert_eq!(c.open().unwrap(), StreamId(1));
    assert_eq!(c.open().unwrap(), StreamId(3));
    assert_eq!(s.open().unwrap(), StreamId(2));
    assert_eq!(s.open().unwrap(), StreamId(4));
}

fn open_accept_and_data_both_ways(a_role: Role) {
    let mut p = Pair::new(a_role);
    let id = p.a.open().unwrap();
    // Opening alone sends nothing: the SYN rides on the first write.
    assert!(!p.a.has_output());
    assert_eq!(p.a.poll_transmit(), None);
    p.pump();
    assert_eq!(p.b.accept(), None);

    assert_eq!(p.a.send(id, b"hello").unwrap(), 5);
    let out = p.a.poll_transmit().unwrap();
    let fs = frames(&out);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Data);
    assert_eq!(fs[0].0.flags, flags::SYN);
    assert_eq!(fs[0].0.stream_id, id);
    assert_eq!(fs[0].1, b"hello");
    feed(&mut p.b, &out).unwrap();

    let ev = events(&mut p.b);
    assert!(ev.contains(&Event::Acceptable), "{ev:?}");
    assert!(ev.contains(&Event::Readable(id)), "{ev:?}");
    assert_eq!(accepts(&mut p.b), vec![id]);
    assert_eq!(read_available(&mut p.b, id), (b"hello".to_vec(), Ok(Recv::Pending)));

    // Only the first frame carries SYN.
    assert_eq!(p.a.send(id, b" again").unwrap(), 6);
    let fs = frames(&p.a.poll_transmit().unwrap());
    assert_eq!(fs[0].0.flags, 0);
    feed(&mut p.b, &raw_data(0, id.0, b"")).unwrap();
    feed(&mut p.b, &{
        let mut v = Vec::new();
        for (h, body) in &fs {
            v.extend_from_slice(&h.encode());
            v.extend_from_slice(body);
        }
        v
    })
    .unwrap();
    assert_eq!(read_available(&mut p.b, id).0, b" again");

    // The other way.
    assert_eq!(p.b.send(id, b"world").unwrap(), 5);
    p.pump();
    assert!(events(&mut p.a).contains(&Event::Readable(id)));
    assert_eq!(read_available(&mut p.a, id), (b"world".to_vec(), Ok(Recv::Pending)));

    // b can open streams too, with its own parity.
    let id_b = p.b.open().unwrap();
    assert_ne!(id_b.0 % 2, id.0 % 2);
    p.b.send(id_b, b"from b").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.a), vec![id_b]);
    assert_eq!(read_available(&mut p.a, id_b).0, b"from b");
    assert_eq!(p.a.stream_count(), 2);
    assert_eq!(p.b.stream_count(), 2);
}

#[test]
fn open_accept_and_data_client_opens() {
    open_accept_and_data_both_ways(Role::Client);
}

#[test]
fn open_accept_and_data_server_opens() {
    open_accept_and_data_both_ways(Role::Server);
}

#[test]
fn streams_are_accepted_in_syn_order_not_id_order() {
    // Ids are assigned at open() but the SYN rides on the first write, so two streams opened
    // concurrently can reach the peer in reverse id order. muxado peers (Go and Rust) do this;
    // the receiver must accept it.
    let mut p = Pair::new(Role::Client);
    let s1 = p.a.open().unwrap();
    let s3 = p.a.open().unwrap();
    p.a.send(s3, b"x").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![s3]);
    p.a.send(s1, b"y").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![s1]);
    assert!(p.b.closed().is_none());
    assert_eq!(read_available(&mut p.b, s1).0, b"y");
    assert_eq!(read_available(&mut p.b, s3).0, b"x");
    // GOAWAY names the highest id seen, not the latest.
    p.b.go_away(ErrorCode::None, b"");
    p.pump();
    assert_eq!(p.a.remote_goaway().unwrap().0, s3);
    assert_eq!(p.a.send(s1, b"z"), Ok(1));
    assert_eq!(p.a.send(s3, b"z"), Ok(1));
}

#[test]
fn large_writes_are_split_into_frames_within_limits() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    let data = pattern(1, 0, 200_000);
    assert_eq!(p.a.send(id, &data).unwrap(), data.len());
    let out = p.a.poll_transmit().unwrap();
    let fs = frames(&out);
    assert!(fs.len() >= 4);
    for (i, (h, _)) in fs.iter().enumerate() {
        assert_eq!(h.ty, FrameType::Data);
        assert!(h.length as usize <= p.a.config().max_frame_payload);
        assert_eq!(h.flags, if i == 0 { flags::SYN } else { 0 });
    }
    feed(&mut p.b, &out).unwrap();
    assert_eq!(accepts(&mut p.b), vec![id]);
    assert_eq!(read_available(&mut p.b, id).0, data);
}

#[test]
fn empty_send_sends_nothing() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    assert_eq!(p.a.send(id, b"").unwrap(), 0);
    assert!(!p.a.has_output());
}

#[test]
fn operations_on_unknown_streams_fail() {
    let mut s = Session::new(Role::Client, Config::default());
    let mut buf = [0u8; 4];
    assert_eq!(s.send(StreamId(1), b"x"), Err(StreamError::Unknown));
    assert_eq!(s.recv(StreamId(1), &mut buf), Err(StreamError::Unknown));
    assert_eq!(s.close_write(StreamId(1)), Err(StreamError::Unknown));
    s.reset(StreamId(1), ErrorCode::StreamCancelled);
    s.release(StreamId(1));
    assert!(!s.has_output());
}

// ---------------------------------------------------------------------------------------------
// Half-close
// ---------------------------------------------------------------------------------------------

/// The opener (`a`) half-closes first when `opener_first`, else the acceptor does.
fn half_close(a_role: Role, opener_first: bool) {
    let mut p = Pair::new(a_role);
    let id = p.a.open().unwrap();
    p.a.send(id, b"request").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![id]);
    assert_eq!(read_available(&mut p.b, id).0, b"request");
    events(&mut p.a);
    events(&mut p.b);

    let (first, second) = if opener_first { (&mut p.a, &mut p.b) } else { (&mut p.b, &mut p.a) };
    first.send(id, b" tail").unwrap();
    first.close_write(id).unwrap();
    // Idempotent, and writing after FIN fails.
    first.close_write(id).unwrap();
    assert_eq!(first.send(id, b"more"), Err(StreamError::WriteClosed));
    let out = first.poll_transmit().unwrap();
    let fs = frames(&out);
    assert_eq!(fs.iter().filter(|(h, _)| h.flags & flags::FIN != 0).count(), 1, "exactly one FIN");
    assert!(fs.last().unwrap().0.flags & flags::FIN != 0);
    let mut inbuf = BytesMut::from(&out[..]);
    second.handle_input(&mut inbuf).unwrap();
    assert!(events(second).contains(&Event::Readable(id)));

    let (data, end) = read_available(second, id);
    assert_eq!(data, b" tail");
    assert_eq!(end, Ok(Recv::Eof));
    // EOF is sticky.
    assert_eq!(second.recv(id, &mut [0u8; 8]), Ok(Recv::Eof));

    // The other direction is still open.
    second.send(id, b"reply").unwrap();
    second.close_write(id).unwrap();
    p.pump();
    let (first, second) = if opener_first { (&mut p.a, &mut p.b) } else { (&mut p.b, &mut p.a) };
    let (data, end) = read_available(first, id);
    assert_eq!(data, b"reply");
    assert_eq!(end, Ok(Recv::Eof));

    // Both directions finished: releasing sends nothing and forgets the stream.
    first.release(id);
    second.release(id);
    assert!(!first.has_output());
    assert!(!second.has_output());
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn half_close_opener_first_client() {
    half_close(Role::Client, true);
}

#[test]
fn half_close_opener_first_server() {
    half_close(Role::Server, true);
}

#[test]
fn half_close_acceptor_first_client() {
    half_close(Role::Client, false);
}

#[test]
fn half_close_acceptor_first_server() {
    half_close(Role::Server, false);
}

#[test]
fn close_write_without_data_opens_with_syn_fin() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.close_write(id).unwrap();
    let out = p.a.poll_transmit().unwrap();
    let fs = frames(&out);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.flags, flags::SYN | flags::FIN);
    assert_eq!(fs[0].0.length, 0);
    feed(&mut p.b, &out).unwrap();
    assert_eq!(accepts(&mut p.b), vec![id]);
    assert_eq!(p.b.recv(id, &mut [0u8; 8]), Ok(Recv::Eof));
    p.b.send(id, b"still answering").unwrap();
    p.pump();
    assert_eq!(read_available(&mut p.a, id).0, b"still answering");
}

#[test]
fn release_after_eof_finishes_with_fin() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"q").unwrap();
    p.a.close_write(id).unwrap();
    p.pump();
    accepts(&mut p.b);
    assert_eq!(read_available(&mut p.b, id), (b"q".to_vec(), Ok(Recv::Eof)));
    p.b.send(id, b"answer").unwrap();
    // Dropping the handle after EOF is a graceful close, not a reset.
    p.b.release(id);
    let fs = take_frames(&mut p.b);
    assert_eq!(fs.len(), 2);
    assert_eq!(fs[1].0.flags, flags::FIN);
    assert!(fs.iter().all(|(h, _)| h.ty == FrameType::Data));
    assert_eq!(p.b.stream_count(), 0);
    let mut input = BytesMut::new();
    for (h, body) in fs {
        input.extend_from_slice(&h.encode());
        input.extend_from_slice(&body);
    }
    p.a.handle_input(&mut input).unwrap();
    assert_eq!(read_available(&mut p.a, id), (b"answer".to_vec(), Ok(Recv::Eof)));
}

#[test]
fn release_after_close_write_lets_the_peer_read_everything() {
    // Write, half-close, drop: the peer has not finished its side, but what was sent must still
    // be delivered, not reset away.
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    let data = pattern(11, 0, 200_000);
    assert_eq!(p.a.send(id, &data).unwrap(), data.len());
    p.a.close_write(id).unwrap();
    p.a.release(id);
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![id]);
    assert_eq!(read_available(&mut p.b, id), (data, Ok(Recv::Eof)));
    // The reader finishes its side too: the stream is gone on both ends.
    p.b.release(id);
    p.pump();
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn data_for_a_stream_released_after_close_write_is_reset() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"request").unwrap();
    p.a.close_write(id).unwrap();
    p.a.release(id);
    p.pump();
    accepts(&mut p.b);
    assert_eq!(read_available(&mut p.b, id), (b"request".to_vec(), Ok(Recv::Eof)));
    // Nobody on a's side will read this: a answers with RST.
    p.b.send(id, b"unwanted reply").unwrap();
    let out = p.b.poll_transmit().unwrap();
    feed(&mut p.a, &out).unwrap();
    let fs = take_frames(&mut p.a);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Rst);
    assert_eq!(fs[0].1, ErrorCode::StreamClosed.to_u32().to_be_bytes());
    assert_eq!(p.a.stream_count(), 0);
    let mut input = BytesMut::new();
    input.extend_from_slice(&fs[0].0.encode());
    input.extend_from_slice(&fs[0].1);
    p.b.handle_input(&mut input).unwrap();
    assert_eq!(p.b.send(id, b"x"), Err(StreamError::Reset(ErrorCode::StreamClosed)));
}

#[test]
fn release_after_peer_fin_with_unread_data_forgets_the_stream() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"never read").unwrap();
    p.a.close_write(id).unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![id]);
    // b drops its handle without reading what the peer sent before FIN.
    p.b.release(id);
    p.pump();
    assert_eq!(p.b.stream_count(), 0, "a released stream must not stay tracked");
    assert_eq!(read_available(&mut p.a, id).1, Ok(Recv::Eof));
    p.a.release(id);
    assert_eq!(p.a.stream_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Reset
// ---------------------------------------------------------------------------------------------

/// `resetter_is_opener` picks who resets.
fn reset_by(a_role: Role, resetter_is_opener: bool) {
    let mut p = Pair::new(a_role);
    let id = p.a.open().unwrap();
    p.a.send(id, b"data for b").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![id]);
    p.b.send(id, b"data for a").unwrap();
    p.pump();
    events(&mut p.a);
    events(&mut p.b);

    let (resetter, victim) = if resetter_is_opener { (&mut p.a, &mut p.b) } else { (&mut p.b, &mut p.a) };
    resetter.reset(id, ErrorCode::StreamCancelled);
    // Both directions fail locally at once, unread data is gone.
    assert_eq!(resetter.recv(id, &mut [0u8; 8]), Err(StreamError::Reset(ErrorCode::StreamCancelled)));
    assert_eq!(resetter.send(id, b"x"), Err(StreamError::Reset(ErrorCode::StreamCancelled)));
    assert_eq!(resetter.close_write(id), Err(StreamError::Reset(ErrorCode::StreamCancelled)));
    // Resetting twice sends one RST.
    resetter.reset(id, ErrorCode::Internal);
    let out = resetter.poll_transmit().unwrap();
    let fs = frames(&out);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Rst);
    assert_eq!(fs[0].0.stream_id, id);
    assert_eq!(fs[0].1, ErrorCode::StreamCancelled.to_u32().to_be_bytes());

    let mut input = BytesMut::from(&out[..]);
    victim.handle_input(&mut input).unwrap();
    let ev = events(victim);
    assert!(ev.contains(&Event::Readable(id)), "{ev:?}");
    assert!(ev.contains(&Event::Writable(id)), "{ev:?}");
    // The victim had unread data: a reset discards it.
    assert_eq!(victim.buffered(id), 0);
    assert_eq!(victim.recv(id, &mut [0u8; 8]), Err(StreamError::Reset(ErrorCode::StreamCancelled)));
    assert_eq!(victim.send(id, b"x"), Err(StreamError::Reset(ErrorCode::StreamCancelled)));
    // The victim does not answer a RST with a RST.
    assert!(!victim.has_output());

    resetter.release(id);
    victim.release(id);
    assert!(!resetter.has_output());
    assert!(!victim.has_output());
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn reset_by_opener_client() {
    reset_by(Role::Client, true);
}

#[test]
fn reset_by_opener_server() {
    reset_by(Role::Server, true);
}

#[test]
fn reset_by_acceptor_client() {
    reset_by(Role::Client, false);
}

#[test]
fn reset_by_acceptor_server() {
    reset_by(Role::Server, false);
}

#[test]
fn reset_before_first_write_sends_nothing() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.reset(id, ErrorCode::StreamCancelled);
    assert!(!p.a.has_output(), "the peer never heard of the stream");
    p.a.release(id);
    assert_eq!(p.a.stream_count(), 0);
}

#[test]
fn release_before_eof_resets_with_cancelled() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"hi").unwrap();
    p.pump();
    accepts(&mut p.b);
    p.b.release(id);
    let fs = take_frames(&mut p.b);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Rst);
    assert_eq!(fs[0].1, ErrorCode::StreamCancelled.to_u32().to_be_bytes());
    assert_eq!(p.b.stream_count(), 0);
    let mut input = BytesMut::new();
    input.extend_from_slice(&fs[0].0.encode());
    input.extend_from_slice(&fs[0].1);
    p.a.handle_input(&mut input).unwrap();
    assert_eq!(p.a.send(id, b"x"), Err(StreamError::Reset(ErrorCode::StreamCancelled)));
}

#[test]
fn reset_of_a_stream_waiting_in_the_accept_queue_forgets_it() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"hi").unwrap();
    p.pump();
    // b has not accepted yet when the opener gives up.
    p.a.reset(id, ErrorCode::StreamCancelled);
    p.a.release(id);
    p.pump();
    assert_eq!(p.b.accept(), None);
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.b.stream_count(), 0, "nobody can ever release a stream that was never accepted");
}

#[test]
fn unknown_rst_codes_are_kept() {
    let mut s = Session::new(Role::Server, Config::default());
    feed(&mut s, &raw_data(flags::SYN, 1, b"x")).unwrap();
    feed(&mut s, &raw_rst(1, ErrorCode::Unknown(0xABCD))).unwrap();
    assert_eq!(s.accept(), None);
    assert!(matches!(
        s.recv(StreamId(1), &mut [0; 4]),
        Err(StreamError::Reset(ErrorCode::Unknown(0xABCD))) | Err(StreamError::Unknown)
    ));
}

// ---------------------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------------------

fn window_exhaustion(a_role: Role) {
    let mut p = Pair::new(a_role);
    let id = p.a.open().unwrap();
    let data = pattern(2, 0, 600 * 1024);
    let mut sent = send_all_possible(&mut p.a, id, &data);
    assert_eq!(sent, WINDOW, "the initial window is 256 KiB");
    assert_eq!(p.a.send(id, &data[sent..]).unwrap(), 0);
    p.pump();
    assert_eq!(p.a.send(id, &data[sent..]).unwrap(), 0, "no credit without reads");
    accepts(&mut p.b);
    assert_eq!(p.b.buffered(id), WINDOW);
    events(&mut p.a);

    // Reading less than half the window returns no credit yet.
    let mut got = read_up_to(&mut p.b, id, WINDOW / 2 - 1);
    p.pump();
    assert!(!events(&mut p.a).contains(&Event::Writable(id)));
    assert_eq!(p.a.send(id, &data[sent..]).unwrap(), 0);

    // Half the window read: a WNDINC goes out and the writer is told to retry.
    got.extend(read_up_to(&mut p.b, id, 1));
    let fs = take_frames(&mut p.b);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::WndInc);
    assert_eq!(fs[0].1, ((WINDOW / 2) as u32).to_be_bytes());
    let mut input = BytesMut::new();
    input.extend_from_slice(&fs[0].0.encode());
    input.extend_from_slice(&fs[0].1);
    p.a.handle_input(&mut input).unwrap();
    assert!(events(&mut p.a).contains(&Event::Writable(id)));
    let n = send_all_possible(&mut p.a, id, &data[sent..]);
    assert_eq!(n, WINDOW / 2, "exactly the returned credit");
    sent += n;

    // Drain everything in lock step; every byte arrives once, in order.
    while got.len() < data.len() {
        p.pump();
        got.extend(read_available(&mut p.b, id).0);
        p.pump();
        sent += send_all_possible(&mut p.a, id, &data[sent..]);
    }
    assert_eq!(sent, data.len());
    assert_eq!(got, data);
}

#[test]
fn window_exhaustion_client_sends() {
    window_exhaustion(Role::Client);
}

#[test]
fn window_exhaustion_server_sends() {
    window_exhaustion(Role::Server);
}

#[test]
fn output_buffer_limit_blocks_writer_until_transmitted() {
    let cfg = Config { max_output: 10_000, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, cfg, Config::default());
    let id = p.a.open().unwrap();
    let data = pattern(3, 0, 50_000);
    assert_eq!(p.a.send(id, &data).unwrap(), 10_000);
    assert_eq!(p.a.send(id, &data[10_000..]).unwrap(), 0);
    events(&mut p.a);
    let out = p.a.poll_transmit().unwrap();
    assert!(events(&mut p.a).contains(&Event::Writable(id)), "taking the output frees room");
    assert_eq!(p.a.send(id, &data[10_000..]).unwrap(), 10_000);
    let mut input = BytesMut::from(&out[..]);
    p.b.handle_input(&mut input).unwrap();
    p.pump();
    accepts(&mut p.b);
    assert_eq!(read_available(&mut p.b, id).0, &data[..20_000]);
}

/// Each round the writer sends until its credit is dry (as on a link whose round trip outlasts
/// the window), then the reader drains everything that arrived, `read_size` bytes at a time.
fn run_keeping_up(p: &mut Pair, id: StreamId, rounds: usize, read_size: usize) -> Vec<u32> {
    let mut windows = Vec::new();
    let mut offset = 0;
    let mut received = 0;
    let mut buf = vec![0u8; read_size];
    for _ in 0..rounds {
        // The writer's output is moved to the reader as fast as it is produced, until the
        // writer runs out of credit; nothing flows back until the reader has read.
        let start = offset;
        loop {
            let chunk = pattern(4, offset, 1024 * 1024);
            offset += send_all_possible(&mut p.a, id, &chunk);
            let Some(out) = p.a.poll_transmit() else { break };
            deliver(&mut p.b, &mut p.b_in, &out, usize::MAX).unwrap();
        }
        assert!(offset > start, "writer stalled");
        accepts(&mut p.b);
        let mut got = Vec::new();
        while let Recv::Data(n) = p.b.recv(id, &mut buf).unwrap() {
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, pattern(4, received, got.len()));
        received += got.len();
        p.pump();
        windows.push(p.b.recv_window(id).unwrap());
    }
    assert_eq!(received, offset);
    windows
}

#[test]
fn window_grows_for_a_reader_that_keeps_up() {
    let max = 2 * 1024 * 1024;
    let cfg = Config { max_window: max, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, cfg.clone(), cfg);
    // Whatever buffer size the application reads with.
    for read_size in [4 * 1024 * 1024, 100_000, 16 * 1024, 4096] {
        let id = p.a.open().unwrap();
        let windows = run_keeping_up(&mut p, id, 8, read_size);
        assert!(windows.windows(2).all(|w| w[0] <= w[1]), "never shrinks: {windows:?}");
        assert!(windows.iter().all(|w| *w <= max), "bounded by max_window: {windows:?}");
        assert!(windows[0] > WINDOW as u32, "reads of {read_size}: a dry window grows: {windows:?}");
        assert_eq!(*windows.last().unwrap(), max, "reads of {read_size}: {windows:?}");
    }
}

/// A long link: the reader reads every frame as it arrives, so the credit it returns keeps
/// the peer's credit (as seen from here) well above empty, yet the credit takes a round trip
/// to arrive, so each round trip carries one window. The clock shows it: a whole window read
/// within two round trips grows the window; a window read over more does not.
fn long_link_rounds(rtt_us: u64, round_us: u64, spread: bool, rounds: usize) -> Vec<u32> {
    long_link_rounds_with(
        Config { max_window: 4 * 1024 * 1024, ..Config::default() },
        rtt_us,
        round_us,
        spread,
        rounds,
    )
}

fn long_link_rounds_with(cfg: Config, rtt_us: u64, round_us: u64, spread: bool, rounds: usize) -> Vec<u32> {
    let mut p = Pair::with_configs(Role::Client, cfg.clone(), cfg);
    p.b.set_rtt(rtt_us);
    let id = p.a.open().unwrap();
    let (mut offset, mut received, mut now) = (0, 0, 0);
    let mut windows = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..rounds {
        // One round trip: the writer spends its credit; every frame is read on arrival; the
        // reader's credit reaches the writer only at the end of the round.
        let mut out = Vec::new();
        loop {
            offset += send_all_possible(&mut p.a, id, &pattern(9, offset, 1024 * 1024));
            let Some(o) = p.a.poll_transmit() else { break };
            out.extend_from_slice(&o);
        }
        let frames = out.len().div_ceil(16 * 1024) as u64;
        // Either the window arrives in a burst and the rest of the round trip is waiting for
        // credit, or it trickles in over the whole round (the link's bandwidth is the limit).
        let step = if spread { round_us / frames } else { 10 };
        for frame in out.chunks(16 * 1024) {
            p.b.set_time(now);
            deliver(&mut p.b, &mut p.b_in, frame, usize::MAX).unwrap();
            accepts(&mut p.b);
            while let Recv::Data(n) = p.b.recv(id, &mut buf).unwrap() {
                received += n;
            }
            now += step;
        }
        if !spread {
            now += round_us;
        }
        let back = p.b.poll_transmit().unwrap();
        deliver(&mut p.a, &mut p.a_in, &back, usize::MAX).unwrap();
        windows.push(p.b.recv_window(id).unwrap());
    }
    assert_eq!(received, offset);
    windows
}

#[test]
fn window_grows_on_a_long_link_by_the_clock() {
    // 50 ms round trips, each carrying one window: the window keeps doubling up to the max.
    let windows = long_link_rounds(50_000, 50_000, false, 12);
    assert_eq!(windows[0], 2 * WINDOW as u32, "{windows:?}");
    assert!(windows.windows(2).all(|w| w[0] <= w[1]), "{windows:?}");
    assert_eq!(*windows.last().unwrap(), 4 * 1024 * 1024, "{windows:?}");
    // Without a measured round trip, the same flow keeps its window (nothing to compare with).
    let cfg = Config { max_window: 4 * 1024 * 1024, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, cfg.clone(), cfg);
    let id = p.a.open().unwrap();
    assert_eq!(send_all_possible(&mut p.a, id, &pattern(9, 0, WINDOW)), WINDOW);
    let out = p.a.poll_transmit().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    for frame in out.chunks(16 * 1024) {
        deliver(&mut p.b, &mut p.b_in, frame, usize::MAX).unwrap();
        accepts(&mut p.b);
        while let Recv::Data(_) = p.b.recv(id, &mut buf).unwrap() {}
    }
    assert_eq!(p.b.recv_window(id), Some(WINDOW as u32));
}

#[test]
fn grown_windows_are_bounded_per_session() {
    // A session may add only 768 KiB to its windows: 256 KiB -> 512 KiB -> 1 MiB, then no more.
    let cfg = Config { max_window: 64 * 1024 * 1024, max_grown_windows: 768 * 1024, ..Config::default() };
    let windows = long_link_rounds_with(cfg, 50_000, 50_000, false, 10);
    assert_eq!(*windows.last().unwrap(), 1024 * 1024, "{windows:?}");
}

#[test]
fn window_does_not_grow_when_a_window_takes_longer_than_two_round_trips() {
    // The link is fast (1 ms round trips) but a window takes 5 ms to arrive: bandwidth, not
    // the window, sets the pace, and a bigger window would only hold more memory.
    let windows = long_link_rounds(1_000, 5_000, true, 6);
    assert!(windows.iter().all(|w| *w == WINDOW as u32), "{windows:?}");
}

#[test]
fn window_growth_is_bounded_by_a_max_window_that_is_not_a_power_of_two() {
    let max = 700 * 1024;
    let cfg = Config { max_window: max, ..Config::default() };
    let mut p = Pair::with_configs(Role::Server, cfg.clone(), cfg);
    let id = p.a.open().unwrap();
    let windows = run_keeping_up(&mut p, id, 6, 16 * 1024);
    assert!(windows.iter().all(|w| *w <= max), "{windows:?}");
    assert_eq!(*windows.last().unwrap(), max, "{windows:?}");
}

#[test]
fn window_does_not_grow_beyond_the_initial_one_when_max_equals_initial() {
    let cfg = Config { max_window: WINDOW as u32, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, cfg.clone(), cfg);
    let id = p.a.open().unwrap();
    let windows = run_keeping_up(&mut p, id, 4, 16 * 1024);
    assert!(windows.iter().all(|w| *w == WINDOW as u32), "{windows:?}");
}

#[test]
fn window_does_not_grow_without_a_dry_peer() {
    // A reader that keeps up with a writer that never exhausts its credit: nothing to fix.
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    for i in 0..200 {
        assert_eq!(p.a.send(id, &pattern(7, i * 60_000, 60_000)).unwrap(), 60_000);
        p.pump();
        accepts(&mut p.b);
        while let Recv::Data(_) = p.b.recv(id, &mut buf).unwrap() {}
        p.pump();
    }
    assert_eq!(p.b.recv_window(id), Some(WINDOW as u32));
}

#[test]
fn window_does_not_grow_for_a_slow_reader() {
    let cfg = Config { max_window: 4 * 1024 * 1024, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, cfg.clone(), cfg);
    let id = p.a.open().unwrap();
    let mut offset = 0;
    let mut received = Vec::new();
    for _ in 0..20 {
        let chunk = pattern(5, offset, 1024 * 1024);
        offset += send_all_possible(&mut p.a, id, &chunk);
        p.pump();
        accepts(&mut p.b);
        // The reader takes half a window per round and always leaves data behind.
        received.extend(read_up_to(&mut p.b, id, WINDOW / 2));
        assert!(p.b.buffered(id) > 0);
        p.pump();
        assert_eq!(p.b.recv_window(id), Some(WINDOW as u32));
    }
    // Flow keeps going at the reader's pace: 20 half windows plus what is buffered.
    assert_eq!(received.len(), 20 * WINDOW / 2);
    assert_eq!(received, pattern(5, 0, received.len()));
    assert_eq!(offset, received.len() + p.b.buffered(id));
}

#[test]
fn data_beyond_the_window_resets_the_stream_with_flow_control() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, &[7u8; 10]).unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![id]);

    // Exactly the remaining credit is fine.
    let fill = vec![1u8; WINDOW - 10];
    feed(&mut p.b, &raw_data(0, id.0, &fill)).unwrap();
    assert!(!p.b.has_output());
    // One byte more than the peer was granted.
    feed(&mut p.b, &raw_data(0, id.0, b"!")).unwrap();
    let fs = take_frames(&mut p.b);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Rst);
    assert_eq!(fs[0].0.stream_id, id);
    assert_eq!(fs[0].1, ErrorCode::FlowControl.to_u32().to_be_bytes());
    assert_eq!(p.b.recv(id, &mut [0; 8]), Err(StreamError::Reset(ErrorCode::FlowControl)));
    assert!(p.b.closed().is_none(), "only the stream fails, not the session");

    let mut input = BytesMut::new();
    input.extend_from_slice(&fs[0].0.encode());
    input.extend_from_slice(&fs[0].1);
    p.a.handle_input(&mut input).unwrap();
    assert_eq!(p.a.send(id, b"x"), Err(StreamError::Reset(ErrorCode::FlowControl)));

    // The session still works.
    let id2 = p.a.open().unwrap();
    p.a.send(id2, b"next").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![id2]);
    assert_eq!(read_available(&mut p.b, id2).0, b"next");
}

#[test]
fn oversized_first_frame_resets_the_new_stream() {
    let mut s = Session::new(Role::Server, Config::default());
    let big = vec![0u8; WINDOW + 1];
    let mut input = BytesMut::from(&raw_data(flags::SYN, 1, &big)[..]);
    // Deliver it in two pieces to exercise the discard path across calls.
    let mut rest = input.split_off(1000);
    s.handle_input(&mut input).unwrap();
    input.unsplit(rest.split());
    s.handle_input(&mut input).unwrap();
    assert!(input.is_empty());
    let fs = take_frames(&mut s);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Rst);
    assert_eq!(fs[0].1, ErrorCode::FlowControl.to_u32().to_be_bytes());
    assert_eq!(s.accept(), None);
    assert_eq!(s.stream_count(), 0);
    // The session decodes what follows normally.
    feed(&mut s, &raw_data(flags::SYN, 3, b"ok")).unwrap();
    assert_eq!(s.accept(), Some(StreamId(3)));
}

#[test]
fn window_increment_overflow_resets_with_flow_control() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"x").unwrap();
    p.pump();
    feed(&mut p.a, &raw_wndinc(id.0, 0x7FFF_FFFF)).unwrap();
    let fs = take_frames(&mut p.a);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Rst);
    assert_eq!(fs[0].1, ErrorCode::FlowControl.to_u32().to_be_bytes());
    assert_eq!(p.a.send(id, b"x"), Err(StreamError::Reset(ErrorCode::FlowControl)));
}

#[test]
fn window_increment_from_peer_extends_send_credit() {
    let mut s = Session::new(Role::Client, Config::default());
    let id = s.open().unwrap();
    let data = pattern(6, 0, 2 * WINDOW);
    assert_eq!(send_all_possible(&mut s, id, &data), WINDOW);
    s.poll_transmit();
    events(&mut s);
    // A peer may grant more than the initial window in one go.
    feed(&mut s, &raw_wndinc(id.0, (WINDOW + 1000) as u32)).unwrap();
    assert!(events(&mut s).contains(&Event::Writable(id)));
    let mut n = 0;
    loop {
        let k = send_all_possible(&mut s, id, &data[WINDOW + n..]);
        n += k;
        if s.poll_transmit().is_none() {
            break;
        }
    }
    assert_eq!(n, WINDOW);
}

// ---------------------------------------------------------------------------------------------
// GOAWAY, accept backlog, stream limits
// ---------------------------------------------------------------------------------------------

fn goaway(a_role: Role) {
    let mut p = Pair::new(a_role);
    let s1 = p.a.open().unwrap();
    p.a.send(s1, b"before").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![s1]);

    // b goes away while a's next SYN is already in flight.
    p.b.go_away(ErrorCode::None, b"bye");
    p.b.go_away(ErrorCode::Internal, b"only once");
    let late = p.a.open().unwrap();
    p.a.send(late, b"too late").unwrap();
    let goaway_frames = frames(&p.b.poll_transmit().unwrap());
    assert_eq!(goaway_frames.len(), 1);
    assert_eq!(goaway_frames[0].0.ty, FrameType::GoAway);
    let mut to_a = BytesMut::new();
    for (h, body) in &goaway_frames {
        to_a.extend_from_slice(&h.encode());
        to_a.extend_from_slice(body);
    }
    events(&mut p.a);
    p.pump(); // a's SYN for `late` reaches b, which refuses it
    assert_eq!(p.b.accept(), None);
    p.a.handle_input(&mut to_a).unwrap();
    p.pump();

    let (last, code, msg) = p.a.remote_goaway().unwrap().clone();
    assert_eq!(last, s1, "last stream b processed");
    assert_eq!(code, ErrorCode::None);
    assert_eq!(&msg[..], b"bye");
    assert!(events(&mut p.a).contains(&Event::Acceptable), "accept() waiters must wake");
    assert!(p.a.accept_finished());
    assert_eq!(p.a.open(), Err(StreamError::SessionClosed(ErrorCode::RemoteGoneAway)));
    assert_eq!(p.a.recv(late, &mut [0; 8]), Err(StreamError::Reset(ErrorCode::RemoteGoneAway)));
    assert_eq!(p.b.accept(), None);
    assert!(!p.b.accept_finished(), "b still accepts nothing new, but a never went away");
    assert_eq!(p.b.open(), Err(StreamError::SessionClosed(ErrorCode::RemoteGoneAway)));

    // Streams opened before GOAWAY keep working both ways.
    p.a.send(s1, b" and after").unwrap();
    p.b.send(s1, b"reply").unwrap();
    p.pump();
    assert_eq!(read_available(&mut p.b, s1).0, b"before and after");
    assert_eq!(read_available(&mut p.a, s1).0, b"reply");
    assert!(p.a.closed().is_none());
    assert!(p.b.closed().is_none());
}

#[test]
fn goaway_from_server() {
    goaway(Role::Client);
}

#[test]
fn goaway_from_client() {
    goaway(Role::Server);
}

#[test]
fn goaway_refuses_syns_with_remote_gone_away() {
    let mut s = Session::new(Role::Server, Config::default());
    s.go_away(ErrorCode::None, b"");
    s.poll_transmit();
    feed(&mut s, &raw_data(flags::SYN, 1, b"hello")).unwrap();
    let fs = take_frames(&mut s);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.ty, FrameType::Rst);
    assert_eq!(fs[0].0.stream_id, StreamId(1));
    assert_eq!(fs[0].1, ErrorCode::RemoteGoneAway.to_u32().to_be_bytes());
    assert_eq!(s.accept(), None);
    assert_eq!(s.stream_count(), 0);
}

#[test]
fn accept_finished_waits_for_queued_streams() {
    let mut p = Pair::new(Role::Client);
    let s1 = p.a.open().unwrap();
    p.a.send(s1, b"queued").unwrap();
    p.a.go_away(ErrorCode::None, b"");
    p.pump();
    assert!(!p.b.accept_finished(), "a stream is still waiting");
    assert_eq!(p.b.accept(), Some(s1));
    assert!(p.b.accept_finished());
    assert_eq!(p.b.accept(), None);
    assert_eq!(read_available(&mut p.b, s1).0, b"queued");
}

#[test]
fn goaway_resets_only_local_streams_the_peer_never_processed() {
    let mut c = Session::new(Role::Client, Config::default());
    let ids: Vec<StreamId> = (0..3).map(|_| c.open().unwrap()).collect();
    for id in &ids {
        c.send(*id, b"x").unwrap();
    }
    c.poll_transmit();
    // The server processed stream 3 only.
    feed(&mut c, &raw_goaway(3, ErrorCode::EnhanceYourCalm, b"slow down")).unwrap();
    assert_eq!(c.send(ids[0], b"y"), Ok(1));
    assert_eq!(c.send(ids[1], b"y"), Ok(1));
    assert_eq!(c.send(ids[2], b"y"), Err(StreamError::Reset(ErrorCode::RemoteGoneAway)));
    let (_, code, msg) = c.remote_goaway().unwrap();
    assert_eq!(*code, ErrorCode::EnhanceYourCalm);
    assert_eq!(&msg[..], b"slow down");
}

#[test]
fn goaway_message_is_truncated_to_the_limit() {
    let cfg = Config { max_goaway_message: 16, ..Config::default() };
    let mut s = Session::new(Role::Server, cfg);
    s.go_away(ErrorCode::Internal, &[b'z'; 100]);
    let fs = take_frames(&mut s);
    assert_eq!(fs[0].0.length, 8 + 16);
}

#[test]
fn accept_backlog_full_resets_with_accept_queue_full() {
    let cfg = Config { accept_backlog: 2, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, Config::default(), cfg);
    let ids: Vec<StreamId> = (0..3).map(|_| p.a.open().unwrap()).collect();
    for id in &ids {
        p.a.send(*id, b"hi").unwrap();
    }
    p.pump();
    assert_eq!(p.a.recv(ids[0], &mut [0; 8]), Ok(Recv::Pending));
    assert_eq!(p.a.recv(ids[1], &mut [0; 8]), Ok(Recv::Pending));
    assert_eq!(p.a.recv(ids[2], &mut [0; 8]), Err(StreamError::Reset(ErrorCode::AcceptQueueFull)));
    // Taking one from the queue makes room for the next.
    assert_eq!(p.b.accept(), Some(ids[0]));
    let id4 = p.a.open().unwrap();
    p.a.send(id4, b"hi").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![ids[1], id4]);
    assert_eq!(p.a.recv(id4, &mut [0; 8]), Ok(Recv::Pending));
    assert_eq!(p.b.stream_count(), 3);
}

#[test]
fn max_streams_refuses_remote_streams() {
    let cfg = Config { max_streams: 2, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, Config::default(), cfg);
    let ids: Vec<StreamId> = (0..3).map(|_| p.a.open().unwrap()).collect();
    for id in &ids {
        p.a.send(*id, b"hi").unwrap();
    }
    p.pump();
    assert_eq!(accepts(&mut p.b), ids[..2].to_vec());
    assert_eq!(p.a.recv(ids[2], &mut [0; 8]), Err(StreamError::Reset(ErrorCode::StreamRefused)));
    assert_eq!(p.b.stream_count(), 2);

    // Finishing a stream on both sides frees its slot.
    p.a.close_write(ids[0]).unwrap();
    p.b.close_write(ids[0]).unwrap();
    p.pump();
    assert_eq!(read_available(&mut p.b, ids[0]).1, Ok(Recv::Eof));
    p.b.release(ids[0]);
    assert_eq!(p.b.stream_count(), 1);
    let id4 = p.a.open().unwrap();
    p.a.send(id4, b"hi").unwrap();
    p.pump();
    assert_eq!(accepts(&mut p.b), vec![id4]);
}

#[test]
fn max_streams_limits_local_opens() {
    let cfg = Config { max_streams: 2, ..Config::default() };
    let mut s = Session::new(Role::Client, cfg);
    let a = s.open().unwrap();
    let _b = s.open().unwrap();
    assert_eq!(s.open(), Err(StreamError::Reset(ErrorCode::StreamsExhausted)));
    s.reset(a, ErrorCode::StreamCancelled);
    s.release(a);
    assert!(s.open().is_ok());
}

#[test]
fn closing_the_session_fails_every_stream() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"x").unwrap();
    p.pump();
    p.a.close(ErrorCode::PeerEof);
    assert_eq!(p.a.closed(), Some(ErrorCode::PeerEof));
    assert!(p.a.accept_finished());
    assert_eq!(p.a.send(id, b"x"), Err(StreamError::Reset(ErrorCode::PeerEof)));
    assert_eq!(p.a.recv(id, &mut [0; 4]), Err(StreamError::Reset(ErrorCode::PeerEof)));
    assert_eq!(p.a.open(), Err(StreamError::SessionClosed(ErrorCode::PeerEof)));
    // Input after close is swallowed.
    let mut input = BytesMut::from(&raw_data(flags::SYN, 2, b"late")[..]);
    p.a.handle_input(&mut input).unwrap();
    assert!(input.is_empty());
    assert_eq!(p.a.accept(), None);
    p.a.release(id);
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.a.send(id, b"x"), Err(StreamError::SessionClosed(ErrorCode::PeerEof)));
}

// ---------------------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------------------

/// Feeds `bad` to a server session that has seen stream 1 open, and checks the session failed
/// with a GOAWAY carrying `code`.
fn assert_fatal(bad: &[u8], code: ErrorCode) -> SessionError {
    let mut s = Session::new(Role::Server, Config::default());
    feed(&mut s, &raw_data(flags::SYN, 1, b"open")).unwrap();
    assert_eq!(s.accept(), Some(StreamId(1)));
    events(&mut s);

    let mut input = BytesMut::from(bad);
    let err = s.handle_input(&mut input).expect_err("bad input must fail the session");
    assert!(input.is_empty());
    assert_eq!(s.closed(), Some(code));
    let fs = take_frames(&mut s);
    let (h, body) = fs.iter().find(|(h, _)| h.ty == FrameType::GoAway).expect("a GOAWAY is queued");
    assert_eq!(h.stream_id, StreamId(0));
    assert_eq!(&body[..4], &1u32.to_be_bytes(), "last processed stream");
    assert_eq!(&body[4..8], &code.to_u32().to_be_bytes());

    // A client session understands the GOAWAY.
    let mut c = Session::new(Role::Client, Config::default());
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&h.encode());
    wire.extend_from_slice(body);
    c.handle_input(&mut wire).unwrap();
    assert_eq!(c.remote_goaway().unwrap().1, code);

    // What arrived before the error can still be read; then the stream fails.
    assert_eq!(read_available(&mut s, StreamId(1)), (b"open".to_vec(), Err(StreamError::Reset(code))));
    // Nothing more is accepted or decoded.
    assert!(s.accept_finished());
    assert!(s.open().is_err());
    feed(&mut s, &raw_data(flags::SYN, 3, b"more")).unwrap();
    assert_eq!(s.accept(), None);
    assert!(!s.has_output());
    err
}

#[test]
fn garbage_is_fatal() {
    let e = assert_fatal(&[0xFF; 64], ErrorCode::Protocol);
    assert!(matches!(e, SessionError::Header(_)), "{e:?}");
}

#[test]
fn unknown_frame_type_is_fatal() {
    for ty in 4u8..16 {
        let bad = [0, 0, 4, ty << 4, 0, 0, 0, 1, 0, 0, 0, 0];
        let e = assert_fatal(&bad, ErrorCode::Protocol);
        assert!(matches!(e, SessionError::Header(_)), "{e:?}");
    }
}

#[test]
fn syn_with_wrong_parity_is_fatal() {
    // A server receiving a SYN on an even (server) id.
    let e = assert_fatal(&raw_data(flags::SYN, 2, b"x"), ErrorCode::Protocol);
    assert!(matches!(e, SessionError::Protocol(_)), "{e:?}");
    // And a client receiving one on an odd id.
    let mut c = Session::new(Role::Client, Config::default());
    assert!(matches!(feed(&mut c, &raw_data(flags::SYN, 1, b"x")), Err(SessionError::Protocol(_))));
    assert!(frames(&c.poll_transmit().unwrap()).iter().any(|(h, _)| h.ty == FrameType::GoAway));
}

#[test]
fn duplicate_syn_is_fatal() {
    let e = assert_fatal(&raw_data(flags::SYN, 1, b"again"), ErrorCode::Protocol);
    assert!(matches!(e, SessionError::Protocol(_)), "{e:?}");
}

#[test]
fn syn_for_a_lower_unused_id_is_accepted() {
    let mut s = Session::new(Role::Server, Config::default());
    feed(&mut s, &raw_data(flags::SYN, 5, b"five")).unwrap();
    feed(&mut s, &raw_data(flags::SYN, 3, b"three")).unwrap();
    assert_eq!(accepts(&mut s), vec![StreamId(5), StreamId(3)]);
    assert!(!s.has_output());
    // ... but a SYN for a stream that is still open is a duplicate.
    assert!(matches!(feed(&mut s, &raw_data(flags::SYN, 3, b"x")), Err(SessionError::Protocol(_))));
    let fs = take_frames(&mut s);
    assert_eq!(fs[0].0.ty, FrameType::GoAway);
    assert_eq!(&fs[0].1[..4], &5u32.to_be_bytes(), "highest id seen");
}

#[test]
fn malformed_control_frames_are_fatal() {
    // RST and WNDINC carry exactly 4 bytes.
    assert_fatal(&raw(FrameType::Rst, 0, 1, &[0; 5]), ErrorCode::Protocol);
    assert_fatal(&raw(FrameType::WndInc, 0, 1, &[0; 3]), ErrorCode::Protocol);
    // Stream 0 belongs to GOAWAY only, and GOAWAY only to stream 0.
    assert_fatal(&raw(FrameType::Data, 0, 0, b"x"), ErrorCode::Protocol);
    assert_fatal(&raw(FrameType::Rst, 0, 0, &[0; 4]), ErrorCode::Protocol);
    assert_fatal(&raw(FrameType::GoAway, 0, 1, &[0; 8]), ErrorCode::Protocol);
    // GOAWAY needs last id and code.
    assert_fatal(&raw(FrameType::GoAway, 0, 0, &[0; 7]), ErrorCode::Protocol);
}

#[test]
fn oversized_goaway_is_a_frame_size_error() {
    let e = assert_fatal(&raw_goaway(0, ErrorCode::None, &vec![b'm'; 64 * 1024 + 1]), ErrorCode::FrameSize);
    assert!(matches!(e, SessionError::FrameSize(_)), "{e:?}");
}

#[test]
fn error_after_valid_frames_keeps_what_came_before() {
    let mut s = Session::new(Role::Server, Config::default());
    let mut input = BytesMut::new();
    input.extend_from_slice(&raw_data(flags::SYN, 1, b"good"));
    input.extend_from_slice(&[0xF0; 8]);
    assert!(s.handle_input(&mut input).is_err());
    // The stream arrived before the error, but nobody accepted it and nobody can now: it is
    // gone with its data.
    assert_eq!(s.accept(), None, "the accept queue is cleared");
    assert_eq!(s.stream_count(), 0);
    assert_eq!(s.buffered_total(), 0);
    assert_eq!(
        read_available(&mut s, StreamId(1)),
        (Vec::new(), Err(StreamError::SessionClosed(ErrorCode::Protocol)))
    );
}

#[test]
fn an_accepted_stream_keeps_its_data_after_the_session_fails() {
    let mut s = Session::new(Role::Server, Config::default());
    let mut input = BytesMut::new();
    input.extend_from_slice(&raw_data(flags::SYN, 1, b"good"));
    s.handle_input(&mut input).unwrap();
    assert_eq!(s.accept(), Some(StreamId(1)));
    input.extend_from_slice(&[0xF0; 8]);
    assert!(s.handle_input(&mut input).is_err());
    assert_eq!(
        read_available(&mut s, StreamId(1)),
        (b"good".to_vec(), Err(StreamError::Reset(ErrorCode::Protocol)))
    );
}

/// Many streams, each within its window, that nobody reads: the session holds no more than
/// `max_buffered` in all. The stream that would go beyond is reset; the others keep theirs.
#[test]
fn unread_streams_together_hold_at_most_max_buffered() {
    let cfg = Config { max_buffered: 100_000, ..Config::default() };
    let mut s = Session::new(Role::Server, cfg);
    let chunk = vec![7u8; 30_000];
    for id in [1u32, 3, 5, 7, 9] {
        let mut input = BytesMut::from(&raw_data(flags::SYN, id, &chunk)[..]);
        s.handle_input(&mut input).unwrap();
    }
    assert_eq!(s.buffered_total(), 90_000, "three streams fit, the fourth and fifth do not");
    let fs = take_frames(&mut s);
    let rsts: Vec<(u32, Vec<u8>)> =
        fs.iter().filter(|f| f.0.ty == FrameType::Rst).map(|f| (f.0.stream_id.0, f.1.to_vec())).collect();
    let calm = ErrorCode::EnhanceYourCalm.to_u32().to_be_bytes().to_vec();
    assert_eq!(rsts, vec![(7, calm.clone()), (9, calm)]);
    // Reading frees room for more.
    let id = s.accept().unwrap();
    assert_eq!(read_available(&mut s, id).0.len(), 30_000);
    assert_eq!(s.buffered_total(), 60_000);
    let mut input = BytesMut::from(&raw_data(flags::SYN, 11, &chunk)[..]);
    s.handle_input(&mut input).unwrap();
    assert_eq!(s.buffered_total(), 90_000);
    // Closing the session frees what every stream held.
    s.close(ErrorCode::None);
    assert_eq!(s.buffered_total(), 0);
}

/// A frame's data arrives in pieces; when the application resets the stream between two
/// pieces, the rest of the frame is not kept (found by the `mux_session` fuzzer).
#[test]
fn the_rest_of_a_frame_for_a_stream_reset_meanwhile_is_not_kept() {
    let mut s = Session::new(Role::Server, Config::default());
    let frame = raw_data(flags::SYN, 1, &[9u8; 1000]);
    let mut input = BytesMut::from(&frame[..HEADER_LEN + 100]);
    s.handle_input(&mut input).unwrap();
    let id = s.accept().unwrap();
    assert_eq!(s.buffered_total(), 100);
    s.reset(id, ErrorCode::StreamCancelled);
    assert_eq!(s.buffered_total(), 0);
    input.extend_from_slice(&frame[HEADER_LEN + 100..]);
    s.handle_input(&mut input).unwrap();
    assert_eq!(s.buffered_total(), 0, "900 bytes kept for a stream nobody will read");
}

/// An edge starts with tight limits and widens them after Auth: what arrives next follows the
/// new limits.
#[test]
fn limits_can_be_raised_while_the_session_runs() {
    let tight = Limits { max_streams: 2, accept_backlog: 2, max_buffered: 1024 };
    let mut s = Session::new(Role::Server, Config::default().with_limits(tight));
    for id in [1u32, 3, 5] {
        let mut input = BytesMut::from(&raw_data(flags::SYN, id, b"x")[..]);
        s.handle_input(&mut input).unwrap();
    }
    assert_eq!(s.stream_count(), 2, "the third stream is refused");
    let mut input = BytesMut::from(&raw_data(0, 1, &[0u8; 2000])[..]);
    s.handle_input(&mut input).unwrap();
    assert_eq!(s.buffered_total(), 1, "2,000 bytes beyond a 1 KiB budget reset stream 1");
    s.set_limits(Config::default().limits());
    for id in [7u32, 9, 11] {
        let mut input = BytesMut::from(&raw_data(flags::SYN, id, &[0u8; 2000])[..]);
        s.handle_input(&mut input).unwrap();
    }
    assert_eq!(s.stream_count(), 4);
    assert_eq!(s.buffered_total(), 6001);
}

#[test]
fn frames_for_unknown_streams_are_ignored() {
    let mut s = Session::new(Role::Server, Config::default());
    // Never opened, remote parity and local parity.
    let mut bytes = raw_data(0, 5, b"who?");
    bytes.extend(raw_data(flags::FIN, 7, b"fin"));
    bytes.extend(raw_data(0, 4, b"ours?"));
    bytes.extend(raw_rst(9, ErrorCode::StreamCancelled));
    bytes.extend(raw_wndinc(11, 1000));
    bytes.extend(raw_wndinc(2, 1000));
    feed(&mut s, &bytes).unwrap();
    assert!(!s.has_output(), "no reply to frames for unknown streams");
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(s.stream_count(), 0);
    assert!(s.closed().is_none());
    // Still healthy.
    feed(&mut s, &raw_data(flags::SYN, 13, b"hi")).unwrap();
    assert_eq!(s.accept(), Some(StreamId(13)));
}

#[test]
fn frames_for_closed_streams_are_ignored() {
    let mut p = Pair::new(Role::Client);
    let id = p.a.open().unwrap();
    p.a.send(id, b"x").unwrap();
    p.a.close_write(id).unwrap();
    p.pump();
    accepts(&mut p.b);
    assert_eq!(read_available(&mut p.b, id), (b"x".to_vec(), Ok(Recv::Eof)));

    // After FIN, more DATA on the stream is dropped (the stream is still tracked here).
    feed(&mut p.b, &raw_data(0, id.0, b"after fin")).unwrap();
    assert_eq!(p.b.recv(id, &mut [0; 16]), Ok(Recv::Eof));
    assert!(!p.b.has_output());

    // Fully closed and released on b: everything for it is ignored.
    p.b.close_write(id).unwrap();
    p.b.release(id);
    p.pump();
    assert_eq!(p.b.stream_count(), 0);
    events(&mut p.b);
    let mut late = raw_data(0, id.0, b"late");
    late.extend(raw_rst(id.0, ErrorCode::StreamReset));
    late.extend(raw_wndinc(id.0, 4096));
    late.extend(raw_data(flags::FIN, id.0, b""));
    feed(&mut p.b, &late).unwrap();
    assert!(!p.b.has_output());
    assert_eq!(events(&mut p.b), vec![]);
    assert_eq!(p.b.stream_count(), 0);

    // Reset and released: in-flight data from the peer is dropped silently.
    let id2 = p.a.open().unwrap();
    p.a.send(id2, b"y").unwrap();
    p.pump();
    accepts(&mut p.b);
    p.b.reset(id2, ErrorCode::StreamCancelled);
    p.b.release(id2);
    p.b.poll_transmit(); // the RST is "in flight"
    p.a.send(id2, &[0u8; 1000]).unwrap();
    let out = p.a.poll_transmit().unwrap();
    feed(&mut p.b, &out).unwrap();
    assert!(!p.b.has_output());
    assert_eq!(p.b.stream_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Chunk boundaries
// ---------------------------------------------------------------------------------------------

/// A scripted exchange; returns everything observable so runs with different input chunking can
/// be compared.
fn scripted_exchange(chunk: usize) -> Vec<String> {
    let mut log = Vec::new();
    let cfg = Config { accept_backlog: 3, max_window: 1024 * 1024, ..Config::default() };
    let mut p = Pair::with_configs(Role::Client, cfg.clone(), cfg);
    let mut wire_ab = Vec::new();
    let mut wire_ba = Vec::new();
    let mut step = |p: &mut Pair, log: &mut Vec<String>, label: &str| loop {
        let mut moved = false;
        if let Some(out) = p.a.poll_transmit() {
            wire_ab.extend_from_slice(&out);
            deliver(&mut p.b, &mut p.b_in, &out, chunk).unwrap();
            moved = true;
        }
        if let Some(out) = p.b.poll_transmit() {
            wire_ba.extend_from_slice(&out);
            deliver(&mut p.a, &mut p.a_in, &out, chunk).unwrap();
            moved = true;
        }
        if !moved {
            log.push(format!("{label}: a events {:?}", events(&mut p.a)));
            log.push(format!("{label}: b events {:?}", events(&mut p.b)));
            log.push(format!("{label}: b accepts {:?}", accepts(&mut p.b)));
            log.push(format!("{label}: a accepts {:?}", accepts(&mut p.a)));
            return;
        }
    };
    let read = |s: &mut Session, id: StreamId| {
        let (data, end) = read_available(s, id);
        format!("{id:?}: {} bytes, hash {:x}, then {end:?}", data.len(), fnv(&data))
    };

    let s1 = p.a.open().unwrap();
    let s3 = p.a.open().unwrap();
    let s2 = p.b.open().unwrap();
    let big = pattern(9, 0, 300_000);
    log.push(format!("s1 sent {}", send_all_possible(&mut p.a, s1, &big)));
    p.a.send(s3, b"abc").unwrap();
    p.a.close_write(s3).unwrap();
    log.push(format!("s2 sent {}", send_all_possible(&mut p.b, s2, &big[..70_000])));
    step(&mut p, &mut log, "1");

    log.push(read(&mut p.b, s1));
    log.push(read(&mut p.b, s3));
    log.push(read(&mut p.a, s2));
    step(&mut p, &mut log, "2");
    log.push(format!("s1 sent {}", send_all_possible(&mut p.a, s1, &big[WINDOW..])));
    p.b.send(s1, b"reply").unwrap();
    p.b.close_write(s1).unwrap();
    p.a.reset(s3, ErrorCode::StreamCancelled);
    // More SYNs than the backlog.
    for _ in 0..4 {
        let id = p.a.open().unwrap();
        p.a.send(id, b"syn").unwrap();
    }
    step(&mut p, &mut log, "3");

    log.push(read(&mut p.b, s1));
    log.push(read(&mut p.a, s1));
    log.push(format!("a s3 {:?}", p.a.recv(s3, &mut [0; 4])));
    log.push(format!("b s3 {:?}", p.b.recv(s3, &mut [0; 4])));
    for id in [5, 7, 9, 11] {
        log.push(format!("a s{id} {:?}", p.a.recv(StreamId(id), &mut [0; 4])));
    }
    p.b.go_away(ErrorCode::None, b"draining");
    let late = p.a.open().unwrap();
    p.a.send(late, b"late").unwrap();
    step(&mut p, &mut log, "4");
    log.push(format!("goaway {:?}", p.a.remote_goaway()));
    log.push(format!("late {:?}", p.a.recv(late, &mut [0; 4])));
    log.push(format!("counts {} {}", p.a.stream_count(), p.b.stream_count()));

    // Finally a protocol error in the middle of a chunk of valid frames.
    let mut tail = raw_wndinc(s2.0, 10);
    tail.extend(raw_data(0, s1.0, b"ignored after fin"));
    tail.extend([0, 0, 0, 0x70, 0, 0, 0, 1]);
    tail.extend(raw_data(0, s1.0, b"never decoded"));
    let mut err = None;
    for piece in tail.chunks(chunk.max(1)) {
        p.a_in.extend_from_slice(piece);
        if let Err(e) = p.a.handle_input(&mut p.a_in) {
            err.get_or_insert(e);
        }
    }
    log.push(format!("error {err:?} closed {:?}", p.a.closed()));
    // Closing fails the streams in hash map order: compare as a set.
    let mut ev: Vec<String> = events(&mut p.a).iter().map(|e| format!("{e:?}")).collect();
    ev.sort();
    log.push(format!("a events {ev:?}"));
    log.push(format!("a out {:?}", p.a.poll_transmit().map(|b| frames(&b))));
    log.push(format!("wire a->b {} bytes hash {:x}", wire_ab.len(), fnv(&wire_ab)));
    log.push(format!("wire b->a {} bytes hash {:x}", wire_ba.len(), fnv(&wire_ba)));
    log
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x100_0000_01b3))
}

#[test]
fn input_split_at_every_byte_decodes_identically() {
    let whole = scripted_exchange(usize::MAX);
    // Sanity: the script does what it says.
    let text = whole.join("\n");
    assert!(text.contains("AcceptQueueFull"), "{text}");
    assert!(text.contains("RemoteGoneAway"), "{text}");
    assert!(text.contains("then Ok(Eof)"), "{text}");
    assert!(text.contains("error Some(Header(UnknownType(7)))"), "{text}");
    for chunk in [1, 2, 3, 7, 8, 9, 13, 4096, 65_543] {
        assert_eq!(scripted_exchange(chunk), whole, "chunk size {chunk}");
    }
}

#[test]
fn every_split_point_of_a_frame_sequence() {
    // Every two-piece split of a short sequence that has every frame type.
    let mut bytes = raw_data(flags::SYN, 1, b"hello");
    bytes.extend(raw_wndinc(1, 5));
    bytes.extend(raw_data(flags::SYN | flags::FIN, 3, b""));
    bytes.extend(raw_data(flags::FIN, 1, b" world"));
    bytes.extend(raw_rst(3, ErrorCode::StreamCancelled));
    bytes.extend(raw_goaway(0, ErrorCode::None, b"msg"));
    let observe = |cut: usize| {
        let mut s = Session::new(Role::Server, Config::default());
        let mut input = BytesMut::from(&bytes[..cut]);
        s.handle_input(&mut input).unwrap();
        input.extend_from_slice(&bytes[cut..]);
        s.handle_input(&mut input).unwrap();
        assert!(input.is_empty());
        let accepted = accepts(&mut s);
        let r1 = read_available(&mut s, StreamId(1));
        let r3 = s.recv(StreamId(3), &mut [0; 4]);
        (events(&mut s), accepted, r1, r3, s.remote_goaway().cloned(), s.poll_transmit())
    };
    let whole = observe(bytes.len());
    assert_eq!(whole.2, (b"hello world".to_vec(), Ok(Recv::Eof)));
    // Stream 3 was reset before anyone accepted it: it is gone without a trace.
    assert_eq!(whole.1, vec![StreamId(1)]);
    assert_eq!(whole.3, Err(StreamError::Unknown));
    for cut in 0..bytes.len() {
        assert_eq!(observe(cut), whole, "cut at {cut}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property: random interleavings deliver exactly the bytes written, in order, per stream.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// `side` 0 = client, 1 = server.
    Send {
        side: usize,
        stream: usize,
        len: usize,
    },
    Recv {
        side: usize,
        stream: usize,
        len: usize,
    },
    /// Deliver up to `max` bytes from `from` to the other side.
    Deliver {
        from: usize,
        max: usize,
    },
    CloseWrite {
        side: usize,
        stream: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..4usize, 0..40_000usize).prop_map(|(side, stream, len)| Op::Send { side, stream, len }),
        4 => (0..2usize, 0..4usize, 1..70_000usize).prop_map(|(side, stream, len)| Op::Recv { side, stream, len }),
        5 => (0..2usize, prop_oneof![1..16usize, 1..100_000usize]).prop_map(|(from, max)| Op::Deliver { from, max }),
        1 => (0..2usize, 0..4usize).prop_map(|(side, stream)| Op::CloseWrite { side, stream }),
    ]
}

struct Model {
    sessions: [Session; 2],
    /// Bytes transmitted by side i and not yet handed to the other side.
    wire: [Vec<u8>; 2],
    /// Partial input held by side i.
    input: [BytesMut; 2],
    ids: [StreamId; 4],
    /// `sent[side][stream]`: bytes side accepted for sending on the stream.
    sent: [[usize; 4]; 2],
    /// `got[side][stream]`: bytes side received on the stream.
    got: [[Vec<u8>; 4]; 2],
    eof: [[bool; 4]; 2],
    closed: [[bool; 4]; 2],
}

impl Model {
    fn new(window: u32) -> Model {
        let cfg = Config {
            initial_window: window,
            max_window: 4 * window,
            max_frame_payload: 9_000,
            max_output: 50_000,
            ..Config::default()
        };
        let mut c = Session::new(Role::Client, cfg.clone());
        let mut s = Session::new(Role::Server, cfg);
        let ids = [c.open().unwrap(), c.open().unwrap(), s.open().unwrap(), s.open().unwrap()];
        Model {
            sessions: [c, s],
            wire: [Vec::new(), Vec::new()],
            input: [BytesMut::new(), BytesMut::new()],
            ids,
            sent: [[0; 4]; 2],
            got: Default::default(),
            eof: [[false; 4]; 2],
            closed: [[false; 4]; 2],
        }
    }

    fn seed(side: usize, stream: usize) -> u64 {
        (side * 4 + stream) as u64 + 100
    }

    /// A side may only name a stream once it opened it or the peer's SYN arrived.
    fn known(&self, side: usize, stream: usize) -> bool {
        let opener = if stream < 2 { 0 } else { 1 };
        side == opener || self.sessions[side].recv_window(self.ids[stream]).is_some()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Send { side, stream, len } => {
                if !self.known(side, stream) || self.closed[side][stream] {
                    return;
                }
                let id = self.ids[stream];
                let off = self.sent[side][stream];
                let data = pattern(Self::seed(side, stream), off, len);
                let n = self.sessions[side].send(id, &data).unwrap();
                assert!(n <= len);
                self.sent[side][stream] += n;
            }
            Op::Recv { side, stream, len } => {
                if !self.known(side, stream) {
                    return;
                }
                let mut buf = vec![0u8; len];
                match self.sessions[side].recv(self.ids[stream], &mut buf).unwrap() {
                    Recv::Data(n) => {
                        assert!(!self.eof[side][stream], "data after EOF");
                        self.got[side][stream].extend_from_slice(&buf[..n]);
                    }
                    Recv::Eof => self.eof[side][stream] = true,
                    Recv::Pending => assert!(!self.eof[side][stream], "pending after EOF"),
                }
            }
            Op::Deliver { from, max } => {
                if let Some(out) = self.sessions[from].poll_transmit() {
                    self.wire[from].extend_from_slice(&out);
                }
                let n = max.min(self.wire[from].len());
                let to = 1 - from;
                self.input[to].extend_from_slice(&self.wire[from][..n]);
                self.wire[from].drain(..n);
                self.sessions[to].handle_input(&mut self.input[to]).unwrap();
                while self.sessions[to].accept().is_some() {}
            }
            Op::CloseWrite { side, stream } => {
                if !self.known(side, stream) {
                    return;
                }
                self.sessions[side].close_write(self.ids[stream]).unwrap();
                self.closed[side][stream] = true;
            }
        }
    }

    /// Closes everything, then delivers and reads until both sides saw EOF everywhere.
    fn finish(&mut self) {
        for side in 0..2 {
            for stream in [0, 2, 1, 3] {
                let opener = if stream < 2 { 0 } else { 1 };
                if side == opener {
                    self.apply(&Op::CloseWrite { side, stream });
                }
            }
        }
        for _ in 0..10_000 {
            for from in 0..2 {
                self.apply(&Op::Deliver { from, max: usize::MAX });
            }
            for side in 0..2 {
                for stream in 0..4 {
                    if !self.closed[side][stream] && self.known(side, stream) {
                        self.apply(&Op::CloseWrite { side, stream });
                    }
                    while self.known(side, stream) && !self.eof[side][stream] {
                        let before = self.got[side][stream].len();
                        self.apply(&Op::Recv { side, stream, len: 65_536 });
                        if self.got[side][stream].len() == before {
                            break;
                        }
                    }
                }
            }
            if self.eof.iter().flatten().all(|e| *e) {
                return;
            }
        }
        panic!("streams never finished: eof {:?}", self.eof);
    }

    fn check(&self) {
        for side in 0..2 {
            for stream in 0..4 {
                let sent = self.sent[1 - side][stream];
                let got = &self.got[side][stream];
                assert_eq!(got.len(), sent, "side {side} stream {stream}: length");
                assert!(
                    *got == pattern(Self::seed(1 - side, stream), 0, sent),
                    "side {side} stream {stream}: bytes differ"
                );
            }
        }
        for s in &self.sessions {
            assert!(s.closed().is_none());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_deliver_every_byte_in_order(
        ops in proptest::collection::vec(op(), 1..80),
        window in prop_oneof![Just(256 * 1024u32), 1_000..40_000u32],
    ) {
        let mut m = Model::new(window);
        for op in &ops {
            m.apply(op);
        }
        m.finish();
        m.check();
    }
}

// ---------------------------------------------------------------------------------------------
// Property: a peer that never holds more credit than the initial window never stalls.
// ---------------------------------------------------------------------------------------------

/// A sender that behaves like the `muxado` crate: increments beyond its initial window are
/// dropped (its credit is capped at 256 KiB), and it sends DATA frames straight to the wire.
struct CappedSender {
    capacity: usize,
    sent: usize,
    wire: Vec<u8>,
    syn: bool,
}

impl CappedSender {
    fn send_all(&mut self, frame: usize) {
        while self.capacity > 0 {
            let n = self.capacity.min(frame);
            let fl = if self.syn { 0 } else { flags::SYN };
            self.syn = true;
            self.wire.extend(raw_data(fl, 1, &pattern(8, self.sent, n)));
            self.sent += n;
            self.capacity -= n;
        }
    }

    fn take_credit(&mut self, from: &mut Session) {
        for (h, body) in take_frames(from) {
            assert_eq!(h.ty, FrameType::WndInc);
            let inc = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
            self.capacity = (self.capacity + inc).min(WINDOW);
        }
    }
}

#[derive(Clone, Debug)]
enum PipeOp {
    Send { frame: usize },
    Deliver { max: usize },
    Read { len: usize },
    Credit,
}

fn capped_peer_run(ops: &[PipeOp]) {
    let mut r = Session::new(Role::Server, Config::default());
    let mut input = BytesMut::new();
    let mut tx = CappedSender { capacity: WINDOW, sent: 0, wire: Vec::new(), syn: false };
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = |r: &mut Session, len: usize, got: &mut usize| -> usize {
        let mut total = 0;
        while total < len {
            let want = (len - total).min(buf.len());
            match r.recv(StreamId(1), &mut buf[..want]) {
                Ok(Recv::Data(n)) => {
                    assert!(buf[..n] == pattern(8, *got, n)[..], "bytes differ");
                    *got += n;
                    total += n;
                }
                _ => break,
            }
        }
        total
    };
    for op in ops {
        match *op {
            PipeOp::Send { frame } => tx.send_all(frame),
            PipeOp::Deliver { max } => {
                let n = max.min(tx.wire.len());
                input.extend_from_slice(&tx.wire[..n]);
                tx.wire.drain(..n);
                r.handle_input(&mut input).unwrap();
                r.accept();
            }
            PipeOp::Read { len } => {
                read(&mut r, len, &mut got);
            }
            PipeOp::Credit => tx.take_credit(&mut r),
        }
    }
    // From here on everything is delivered, read and credited at once: the transfer must keep
    // moving until 3 MiB went through.
    while got < 3 * 1024 * 1024 {
        tx.send_all(16 * 1024);
        input.extend_from_slice(&tx.wire);
        tx.wire.clear();
        r.handle_input(&mut input).unwrap();
        r.accept();
        read(&mut r, usize::MAX, &mut got);
        tx.take_credit(&mut r);
        assert!(
            tx.capacity > 0,
            "stalled after {got} bytes: the sender has no credit and the receiver owes none \
             (window {:?})",
            r.recv_window(StreamId(1))
        );
    }
}

#[test]
fn capped_peer_with_data_in_flight_during_growth_never_stalls() {
    // Found by `capped_peer_never_stalls`: the window grows while part of the peer's data is
    // still on the wire; the peer drops the credit beyond 256 KiB and the receiver, waiting to
    // have read half of a 1 MiB window before returning any, never gets there.
    use PipeOp::*;
    capped_peer_run(&[
        Send { frame: 5 },
        Deliver { max: 101_054 },
        Read { len: 22_175 },
        Deliver { max: 410_127 },
        Read { len: 108_897 },
        Credit,
        Send { frame: 1 },
        Read { len: 65_533 },
    ]);
}

fn pipe_op() -> impl Strategy<Value = PipeOp> {
    prop_oneof![
        (1..70_000usize).prop_map(|frame| PipeOp::Send { frame }),
        (1..600_000usize).prop_map(|max| PipeOp::Deliver { max }),
        (1..600_000usize).prop_map(|len| PipeOp::Read { len }),
        Just(PipeOp::Credit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn capped_peer_never_stalls(ops in proptest::collection::vec(pipe_op(), 1..200)) {
        capped_peer_run(&ops);
    }
}
