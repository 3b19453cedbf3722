//! The muxado session as a state machine: bytes in, bytes out, no I/O and no clock.
//!
//! A driver feeds received bytes to [`Session::handle_input`], writes what
//! [`Session::poll_transmit`] returns, and reacts to [`Session::poll_event`]. The application
//! side calls [`Session::open`], [`Session::accept`], [`Session::send`], [`Session::recv`],
//! [`Session::close_write`], [`Session::reset`] and [`Session::release`].
//!
//! Data written by the application is framed straight into one shared output buffer (one copy);
//! received DATA payloads are split off the input buffer without copying and queued per stream.

use std::collections::{HashMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use foldhash::fast::RandomState;

use crate::frame::{
    ErrorCode, FrameType, HEADER_LEN, Header, HeaderError, MAX_STREAM_ID, MAX_WINDOW_INCREMENT, StreamId,
    flags,
};

/// Which end of the session this is; decides stream id parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opens odd stream ids (the agent).
    Client,
    /// Opens even stream ids (the edge).
    Server,
}

/// Limits and windows. Every queue in the session is bounded by one of these.
#[derive(Clone, Debug)]
pub struct Config {
    /// Receive window a new stream starts with; muxado peers assume 256 KiB.
    pub initial_window: u32,
    /// The receive window may grow up to this when the reader keeps up but the window runs dry
    /// (bandwidth × delay larger than the window).
    pub max_window: u32,
    /// What all of a session's grown windows may add up to beyond their initial size: a
    /// grown window lets the peer send that much before the reader reads, so this bounds what
    /// readers that stall after a fast start can make the session hold.
    pub max_grown_windows: u64,
    /// Largest DATA payload this side sends in one frame.
    pub max_frame_payload: usize,
    /// Streams opened by the peer that wait for [`Session::accept`].
    pub accept_backlog: usize,
    /// Open streams at once (both directions).
    pub max_streams: usize,
    /// Stream data framed but not yet taken by the driver; writers wait beyond this.
    pub max_output: usize,
    /// Longest GOAWAY message accepted.
    pub max_goaway_message: usize,
    /// Bytes received on all streams together and not yet read. Each stream's window bounds
    /// what one stream can make the session hold; this bounds the sum over many streams that
    /// are never read. A DATA frame beyond it resets its stream (ENHANCE_YOUR_CALM).
    pub max_buffered: usize,
}

/// The limits a session can change while it runs: an edge starts a session with tight
/// limits and widens them once the peer has authenticated ([`Session::set_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// See [`Config::max_streams`].
    pub max_streams: usize,
    /// See [`Config::accept_backlog`].
    pub accept_backlog: usize,
    /// See [`Config::max_buffered`].
    pub max_buffered: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            initial_window: 256 * 1024,
            // 64 MiB: one stream fills 10 Gbit/s at 50 ms RTT.
            max_window: 64 * 1024 * 1024,
            max_grown_windows: 256 * 1024 * 1024,
            max_frame_payload: 64 * 1024,
            accept_backlog: 4096,
            max_streams: 65_536,
            max_output: 512 * 1024,
            max_goaway_message: 64 * 1024,
            // 1,024 streams with a whole initial window each.
            max_buffered: 256 * 1024 * 1024,
        }
    }
}

impl Config {
    /// The limits part of the configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            max_streams: self.max_streams,
            accept_backlog: self.accept_backlog,
            max_buffered: self.max_buffered,
        }
    }

    /// This configuration with `limits` in place of its own.
    pub fn with_limits(mut self, limits: Limits) -> Config {
        self.max_streams = limits.max_streams;
        self.accept_backlog = limits.accept_backlog;
        self.max_buffered = limits.max_buffered;
        self
    }
}

/// What the driver must react to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A stream has data, EOF or an error to read.
    Readable(StreamId),
    /// A stream that could not write may write again.
    Writable(StreamId),
    /// A new stream waits in [`Session::accept`], or the session closed.
    Acceptable,
    /// The output buffer holds bytes for [`Session::poll_transmit`].
    Transmit,
}

/// Why a stream operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream was reset, locally or by the peer.
    #[error("stream reset: {0}")]
    Reset(ErrorCode),
    /// The write side was already closed with FIN.
    #[error("write after close")]
    WriteClosed,
    /// The session is gone.
    #[error("session closed: {0}")]
    SessionClosed(ErrorCode),
    /// No such stream.
    #[error("unknown stream")]
    Unknown,
}

/// Why the whole session failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The peer sent something no muxado peer sends; a GOAWAY has been queued.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A frame header was invalid.
    #[error("invalid frame: {0}")]
    Header(#[from] HeaderError),
    /// A frame was larger than this side accepts.
    #[error("frame of {0} bytes exceeds the limit")]
    FrameSize(u32),
}

/// Result of [`Session::recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes were copied.
    Data(usize),
    /// The peer half-closed and everything was read.
    Eof,
    /// Nothing to read yet; wait for [`Event::Readable`].
    Pending,
}

/// The muxado session state machine.
pub struct Session {
    role: Role,
    config: Config,
    /// Looked up several times per message: foldhash (seeded per map) costs a fraction of
    /// SipHash, and the seed keeps a peer from choosing colliding stream ids.
    streams: HashMap<StreamId, Stream, RandomState>,
    next_local_id: u32,
    last_remote_id: u32,
    accept_queue: VecDeque<StreamId>,
    decode: Decode,
    out: BytesMut,
    /// Bytes of stream data in `out`; control frames do not count against `max_output`.
    out_data: usize,
    blocked_on_output: Vec<StreamId>,
    events: VecDeque<Event>,
    local_goaway: bool,
    remote_goaway: Option<(StreamId, ErrorCode, Bytes)>,
    closed: Option<ErrorCode>,
    /// The driver's clock, in microseconds from any origin (see [`Session::set_time`]).
    now_us: u64,
    /// The session's round-trip time, when the driver has measured it.
    rtt_us: Option<u64>,
    /// Sum over streams of how far their windows grew (bounded by `max_grown_windows`).
    grown_total: u64,
    /// Sum over streams of `recv_buffered` (bounded by `max_buffered`).
    buffered_total: usize,
}

struct Stream {
    /// Received bytes not yet read: a ring per stream, reused as it drains, so the driver's
    /// read buffer is never pinned by a slow reader and nothing is reallocated or shifted.
    recv_buf: VecDeque<u8>,
    recv_buffered: usize,
    /// Credit the peer still has.
    recv_credit: u32,
    /// Current window size, grows up to `max_window`.
    recv_window: u32,
    /// Bytes read by the application and not yet returned to the peer.
    recv_unacked: u32,
    /// The peer was left with less than a quarter of the window since the window last grew.
    peer_ran_dry: bool,
    /// When the current window's worth of reads began, and how much has been read since:
    /// a whole window read within two round trips means the window limits the flow.
    round_start_us: u64,
    round_bytes: u64,
    recv_fin: bool,
    send_credit: u32,
    send_fin: bool,
    needs_syn: bool,
    reset: Option<ErrorCode>,
    released: bool,
    write_blocked: bool,
}

enum Decode {
    /// Waiting for (the rest of) a header.
    Header,
    /// Inside a DATA frame body: this many bytes of it are still to come.
    Data { id: StreamId, remaining: u32, fin: bool, discard: bool },
    /// Waiting for the whole body of a small control frame.
    Control(Header),
}

impl Session {
    /// A new session for one end of a transport.
    pub fn new(role: Role, config: Config) -> Session {
        Session {
            role,
            next_local_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            config,
            streams: HashMap::default(),
            last_remote_id: 0,
            accept_queue: VecDeque::new(),
            decode: Decode::Header,
            out: BytesMut::new(),
            out_data: 0,
            blocked_on_output: Vec::new(),
            events: VecDeque::new(),
            local_goaway: false,
            remote_goaway: None,
            closed: None,
            now_us: 0,
            rtt_us: None,
            grown_total: 0,
            buffered_total: 0,
        }
    }

    /// Replaces the stream and buffer limits. Lowering them affects only what arrives next:
    /// nothing already accepted or buffered is dropped.
    pub fn set_limits(&mut self, limits: Limits) {
        self.config = self.config.clone().with_limits(limits);
    }

    /// Bytes received on all streams and not yet read.
    pub fn buffered_total(&self) -> usize {
        self.buffered_total
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of streams the session tracks.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The GOAWAY the peer sent, if any: last stream id it processed, code and message.
    pub fn remote_goaway(&self) -> Option<&(StreamId, ErrorCode, Bytes)> {
        self.remote_goaway.as_ref()
    }

    /// Set once the session has ended; every stream then fails with this code.
    pub fn closed(&self) -> Option<ErrorCode> {
        self.closed
    }

    /// Consumes every complete piece of `input` (which the caller reuses). DATA payloads are
    /// copied into their stream's receive buffer.
    /// On error a GOAWAY is queued and the session is closed.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        if self.closed.is_some() {
            input.clear();
            return Ok(());
        }
        let r = self.decode_all(input);
        if let Err(e) = &r {
            let code = match e {
                SessionError::FrameSize(_) => ErrorCode::FrameSize,
                _ => ErrorCode::Protocol,
            };
            self.go_away(code, e.to_string().as_bytes());
            self.close(code);
            input.clear();
        }
        r
    }

    fn decode_all(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        loop {
            match self.decode {
                Decode::Header => {
                    if input.len() < HEADER_LEN {
                        return Ok(());
                    }
                    let mut h = [0u8; HEADER_LEN];
                    h.copy_from_slice(&input[..HEADER_LEN]);
                    input.advance(HEADER_LEN);
                    let header = Header::decode(&h)?;
                    self.start_frame(header)?;
                }
                Decode::Data { id, remaining, fin, discard } => {
                    if remaining > 0 {
                        if input.is_empty() {
                            return Ok(());
                        }
                        let n = input.len().min(remaining as usize);
                        let mut discard = discard;
                        if !discard && self.buffered_total + n > self.config.max_buffered {
                            // Many streams that are never read: this one goes, the session
                            // and its other streams stay.
                            self.reset_stream(id, ErrorCode::EnhanceYourCalm, true);
                            discard = true;
                        }
                        if !discard {
                            self.on_data(id, &input[..n]);
                        }
                        input.advance(n);
                        let remaining = remaining - n as u32;
                        self.decode = Decode::Data { id, remaining, fin, discard };
                        if remaining > 0 {
                            return Ok(());
                        }
                    }
                    self.decode = Decode::Header;
                    if fin && !discard {
                        self.on_fin(id);
                    }
                }
                Decode::Control(header) => {
                    if input.len() < header.length as usize {
                        return Ok(());
                    }
                    let body = input.split_to(header.length as usize);
                    self.decode = Decode::Header;
                    self.on_control(header, body)?;
                }
            }
        }
    }

    fn start_frame(&mut self, h: Header) -> Result<(), SessionError> {
        match h.ty {
            FrameType::Data => {
                let id = h.stream_id;
                let syn = h.flags & flags::SYN != 0;
                let fin = h.flags & flags::FIN != 0;
                let mut discard = false;
                if syn {
                    if self.is_local(id) {
                        return Err(SessionError::Protocol(format!(
                            "peer opened stream {id} with our parity"
                        )));
                    }
                    // muxado peers number a stream at open() but send its SYN with the first
                    // write, so SYNs of concurrently opened streams can arrive out of id order.
                    // Only a SYN for a stream that is still open is a duplicate.
                    if self.streams.contains_key(&id) {
                        return Err(SessionError::Protocol(format!("stream {id} opened twice")));
                    }
                    self.last_remote_id = self.last_remote_id.max(id.0);
                    let refuse = if self.local_goaway {
                        Some(ErrorCode::RemoteGoneAway)
                    } else if self.streams.len() >= self.config.max_streams {
                        Some(ErrorCode::StreamRefused)
                    } else if self.accept_queue.len() >= self.config.accept_backlog {
                        Some(ErrorCode::AcceptQueueFull)
                    } else {
                        None
                    };
                    match refuse {
                        Some(code) => {
                            self.queue_rst(id, code);
                            discard = true;
                        }
                        None => {
                            let s =
                                Stream::new(self.config.initial_window, self.config.initial_window, false);
                            self.streams.insert(id, s);
                            self.accept_queue.push_back(id);
                            self.events.push_back(Event::Acceptable);
                        }
                    }
                }
                if !discard {
                    match self.streams.get_mut(&id) {
                        // Frames for streams already gone (reset, released) race with the
                        // close; they are dropped, never an error.
                        None => discard = true,
                        Some(s) if s.reset.is_some() || s.recv_fin => discard = true,
                        // Released after our FIN: nobody will read this.
                        Some(s) if s.released && h.length > 0 => {
                            self.reset_stream(id, ErrorCode::StreamClosed, true);
                            discard = true;
                        }
                        Some(s) if h.length > s.recv_credit => {
                            self.reset_stream(id, ErrorCode::FlowControl, true);
                            discard = true;
                        }
                        Some(s) => {
                            s.recv_credit -= h.length;
                            if s.recv_credit < s.recv_window / 4 {
                                s.peer_ran_dry = true;
                            }
                        }
                    }
                }
                self.decode = Decode::Data { id, remaining: h.length, fin, discard };
            }
            FrameType::Rst | FrameType::WndInc => self.decode = Decode::Control(h),
            FrameType::GoAway => {
                if h.length as usize > 8 + self.config.max_goaway_message {
                    return Err(SessionError::FrameSize(h.length));
                }
                self.decode = Decode::Control(h);
            }
        }
        Ok(())
    }

    fn on_control(&mut self, h: Header, mut body: BytesMut) -> Result<(), SessionError> {
        match h.ty {
            FrameType::Rst => {
                let code = ErrorCode::from_u32(body.get_u32());
                if self.streams.contains_key(&h.stream_id) {
                    self.reset_stream(h.stream_id, code, false);
                }
            }
            FrameType::WndInc => {
                let inc = body.get_u32() & MAX_WINDOW_INCREMENT;
                if let Some(s) = self.streams.get_mut(&h.stream_id) {
                    let credit = s.send_credit as u64 + inc as u64;
                    if credit > MAX_WINDOW_INCREMENT as u64 {
                        self.reset_stream(h.stream_id, ErrorCode::FlowControl, true);
                    } else {
                        s.send_credit = credit as u32;
                        if s.write_blocked && inc > 0 {
                            s.write_blocked = false;
                            self.events.push_back(Event::Writable(h.stream_id));
                        }
                    }
                }
            }
            FrameType::GoAway => {
                let last = StreamId(body.get_u32() & MAX_STREAM_ID);
                let code = ErrorCode::from_u32(body.get_u32());
                self.remote_goaway = Some((last, code, body.freeze()));
                // Streams we opened that the peer never processed will never be answered.
                let lost: Vec<StreamId> =
                    self.streams.keys().copied().filter(|id| self.is_local(*id) && id.0 > last.0).collect();
                for id in lost {
                    self.reset_stream(id, ErrorCode::RemoteGoneAway, false);
                }
                self.events.push_back(Event::Acceptable);
            }
            FrameType::Data => unreachable!("DATA is decoded incrementally"),
        }
        Ok(())
    }

    fn on_data(&mut self, id: StreamId, chunk: &[u8]) {
        // A frame's data arrives in pieces; a stream reset or released between them keeps
        // nothing of the rest.
        if let Some(s) = self.streams.get_mut(&id).filter(|s| s.reset.is_none() && !s.released) {
            let was_empty = s.recv_buffered == 0;
            s.recv_buffered += chunk.len();
            self.buffered_total += chunk.len();
            s.recv_buf.extend(chunk);
            if was_empty {
                self.events.push_back(Event::Readable(id));
            }
        }
    }

    fn on_fin(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv_fin = true;
            self.events.push_back(Event::Readable(id));
            self.maybe_remove(id);
        }
    }

    /// Opens a stream. Nothing is sent until the first write or [`Session::close_write`].
    pub fn open(&mut self) -> Result<StreamId, StreamError> {
        if let Some(code) = self.closed {
            return Err(StreamError::SessionClosed(code));
        }
        if self.remote_goaway.is_some() || self.local_goaway {
            return Err(StreamError::SessionClosed(ErrorCode::RemoteGoneAway));
        }
        if self.next_local_id > MAX_STREAM_ID {
            return Err(StreamError::SessionClosed(ErrorCode::StreamsExhausted));
        }
        if self.streams.len() >= self.config.max_streams {
            return Err(StreamError::Reset(ErrorCode::StreamsExhausted));
        }
        let id = StreamId(self.next_local_id);
        self.next_local_id += 2;
        self.streams.insert(id, Stream::new(self.config.initial_window, self.config.initial_window, true));
        Ok(id)
    }

    /// Takes the next stream the peer opened.
    pub fn accept(&mut self) -> Option<StreamId> {
        self.accept_queue.pop_front()
    }

    /// True when no stream will ever be accepted again.
    pub fn accept_finished(&self) -> bool {
        self.accept_queue.is_empty() && (self.closed.is_some() || self.remote_goaway.is_some())
    }

    /// Frames up to `data.len()` bytes into the output. Returns 0 when the stream's send window
    /// or the output buffer is full; [`Event::Writable`] follows when it is worth trying again.
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let closed = self.closed;
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(closed.map_or(StreamError::Unknown, StreamError::SessionClosed));
        };
        if let Some(code) = s.reset {
            return Err(StreamError::Reset(code));
        }
        if s.send_fin {
            return Err(StreamError::WriteClosed);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let Session { config, out, out_data, blocked_on_output, .. } = self;
        let mut sent = 0;
        while sent < data.len() {
            let room = config.max_output.saturating_sub(*out_data);
            let n = (data.len() - sent).min(s.send_credit as usize).min(config.max_frame_payload).min(room);
            if n == 0 {
                if s.send_credit == 0 {
                    s.write_blocked = true;
                } else if !blocked_on_output.contains(&id) {
                    blocked_on_output.push(id);
                }
                break;
            }
            let mut f = 0;
            if s.needs_syn {
                s.needs_syn = false;
                f |= flags::SYN;
            }
            let h = Header { length: n as u32, ty: FrameType::Data, flags: f, stream_id: id };
            out.reserve(HEADER_LEN + n);
            out.put_slice(&h.encode());
            out.put_slice(&data[sent..sent + n]);
            *out_data += n;
            s.send_credit -= n as u32;
            sent += n;
        }
        if sent > 0 {
            self.events.push_back(Event::Transmit);
        }
        Ok(sent)
    }

    /// Half-closes the write side (FIN). Idempotent.
    pub fn close_write(&mut self, id: StreamId) -> Result<(), StreamError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(self.closed.map_or(StreamError::Unknown, StreamError::SessionClosed));
        };
        if let Some(code) = s.reset {
            return Err(StreamError::Reset(code));
        }
        if s.send_fin {
            return Ok(());
        }
        s.send_fin = true;
        let mut f = flags::FIN;
        if s.needs_syn {
            s.needs_syn = false;
            f |= flags::SYN;
        }
        self.queue_frame(Header { length: 0, ty: FrameType::Data, flags: f, stream_id: id }, &[]);
        self.maybe_remove(id);
        Ok(())
    }

    /// Copies received data into `buf`, returning window to the peer as it is consumed.
    pub fn recv(&mut self, id: StreamId, buf: &mut [u8]) -> Result<Recv, StreamError> {
        let closed = self.closed;
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(closed.map_or(StreamError::Unknown, StreamError::SessionClosed));
        };
        if s.recv_buffered == 0 {
            // Everything up to the peer's FIN has been read: the read side ended cleanly even if
            // the session closed afterwards (a reply followed by GOAWAY and EOF). An explicit RST
            // after the FIN is still reported, as TCP does.
            if s.recv_fin && (s.reset.is_none() || closed.is_some()) {
                return Ok(Recv::Eof);
            }
            if let Some(code) = s.reset {
                return Err(StreamError::Reset(code));
            }
            return Ok(Recv::Pending);
        }
        let n = s.recv_buf.len().min(buf.len());
        let (a, b) = s.recv_buf.as_slices();
        let from_a = a.len().min(n);
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        s.recv_buf.drain(..n);
        if s.recv_buf.is_empty() && s.recv_buf.capacity() > 4 * s.recv_window as usize {
            // A burst grew the ring past the window it needs now; give the memory back.
            s.recv_buf.shrink_to(s.recv_window as usize);
        }
        s.recv_buffered -= n;
        self.buffered_total -= n;
        s.recv_unacked += n as u32;
        if s.recv_fin || s.reset.is_some() {
            return Ok(Recv::Data(n));
        }
        // The reader keeps up (it drained everything) yet the peer ran almost out of credit: the
        // window, not the reader, limits throughput. Grow it (bandwidth × delay). Checked when
        // the buffer empties, so it works whatever size the application's reads are.
        let max_window = self.config.max_window;
        // On a long link the peer's credit comes back a round trip late, so from here it never
        // looks dry: then the clock tells. A whole window read within two round trips means
        // the window, not the link's bandwidth, sets the pace (bandwidth × delay > window).
        if s.round_bytes == 0 {
            s.round_start_us = self.now_us;
        }
        s.round_bytes += n as u64;
        let mut fast_round = false;
        if s.round_bytes >= s.recv_window as u64 {
            let elapsed = self.now_us.saturating_sub(s.round_start_us);
            fast_round = self.rtt_us.is_some_and(|rtt| elapsed < 2 * rtt);
            s.round_bytes = 0;
        }
        if (fast_round || (s.recv_buffered == 0 && s.peer_ran_dry)) && s.recv_window < max_window {
            let grown = s.recv_window.saturating_mul(2).min(max_window);
            let extra = (grown - s.recv_window) as u64;
            if self.grown_total + extra <= self.config.max_grown_windows {
                self.grown_total += extra;
                s.recv_unacked += grown - s.recv_window;
                s.recv_window = grown;
            }
            s.peer_ran_dry = false;
        }
        // Credit goes back every half window, but at least every half *initial* window: some
        // muxado peers (the `muxado` crate) never hold more credit than the initial window and
        // drop the excess, so waiting for half of a grown window could wait forever.
        let threshold = (s.recv_window / 2).min(self.config.initial_window / 2).max(1);
        if s.recv_unacked >= threshold {
            let inc = s.recv_unacked;
            s.recv_unacked = 0;
            s.recv_credit += inc;
            self.queue_frame(
                Header { length: 4, ty: FrameType::WndInc, flags: 0, stream_id: id },
                &inc.to_be_bytes(),
            );
        }
        Ok(Recv::Data(n))
    }

    /// True when [`Session::recv`] would not return [`Recv::Pending`]: data, end of stream or
    /// an error is waiting.
    pub fn readable(&self, id: StreamId) -> bool {
        match self.streams.get(&id) {
            None => true,
            Some(s) => s.recv_buffered > 0 || s.recv_fin || s.reset.is_some() || self.closed.is_some(),
        }
    }

    /// Bytes received and not yet read on a stream.
    pub fn buffered(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.recv_buffered)
    }

    /// Tells the session the time, in microseconds from any fixed origin. Window auto-tuning
    /// reads it; the session never reads a clock itself.
    pub fn set_time(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// Tells the session its round-trip time (from heartbeats): receive windows grow while a
    /// whole window is read within two round trips.
    pub fn set_rtt(&mut self, rtt_us: u64) {
        self.rtt_us = Some(rtt_us.max(1));
    }

    /// Current receive window of a stream (grows with auto-tuning).
    pub fn recv_window(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id).map(|s| s.recv_window)
    }

    /// Aborts a stream in both directions and tells the peer.
    pub fn reset(&mut self, id: StreamId, code: ErrorCode) {
        if self.streams.get(&id).is_some_and(|s| s.reset.is_none()) {
            self.reset_stream(id, code, true);
        }
    }

    /// The application dropped its handle. A stream still open for reading is reset (nobody
    /// will read it); one only open for writing is finished with FIN. A stream whose write side
    /// is already finished is not reset, so the peer can still read everything that was sent: it
    /// is forgotten at the peer's FIN, or reset if the peer sends more data.
    pub fn release(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.released = true;
        // Nobody will read what is still buffered (possible after the peer's FIN).
        self.buffered_total -= s.recv_buffered;
        s.recv_buf = VecDeque::new();
        s.recv_buffered = 0;
        if s.reset.is_none() {
            if !s.recv_fin && !s.send_fin {
                self.reset_stream(id, ErrorCode::StreamCancelled, true);
            } else if !s.send_fin {
                let _ = self.close_write(id);
            }
        }
        self.maybe_remove(id);
    }

    /// Sends GOAWAY: no new streams from the peer will be accepted. Existing streams continue.
    pub fn go_away(&mut self, code: ErrorCode, message: &[u8]) {
        if self.local_goaway || self.closed.is_some() {
            return;
        }
        self.local_goaway = true;
        let message = &message[..message.len().min(self.config.max_goaway_message)];
        let mut body = Vec::with_capacity(8 + message.len());
        body.extend_from_slice(&self.last_remote_id.to_be_bytes());
        body.extend_from_slice(&code.to_u32().to_be_bytes());
        body.extend_from_slice(message);
        self.queue_frame(
            Header { length: body.len() as u32, ty: FrameType::GoAway, flags: 0, stream_id: StreamId(0) },
            &body,
        );
    }

    /// Ends the session: every stream fails with `code`. Used when the transport is gone.
    pub fn close(&mut self, code: ErrorCode) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(code);
        // Streams nobody accepted have no handle that would release them: they go now, with
        // whatever they buffered.
        for id in std::mem::take(&mut self.accept_queue) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.released = true;
                self.buffered_total -= s.recv_buffered;
                s.recv_buf = VecDeque::new();
                s.recv_buffered = 0;
            }
        }
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                if s.reset.is_none() {
                    s.reset = Some(code);
                }
                self.events.push_back(Event::Readable(id));
                self.events.push_back(Event::Writable(id));
            }
            self.maybe_remove(id);
        }
        self.accept_queue.clear();
        self.events.push_back(Event::Acceptable);
    }

    /// Takes everything framed so far, to be written to the transport in order.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        let mut out = BytesMut::new();
        self.transmit_into(&mut out).then_some(out)
    }

    /// Like [`Session::poll_transmit`], without allocating: swaps everything framed so far
    /// into `buf`, which must be empty, and frames what comes next into `buf`'s old
    /// allocation. So a driver that hands back its written buffer each time keeps two
    /// buffers for the session's life, where splitting one allocated for every write. False,
    /// leaving `buf` alone, when nothing is framed.
    pub fn transmit_into(&mut self, buf: &mut BytesMut) -> bool {
        debug_assert!(buf.is_empty(), "transmit_into needs an empty buffer");
        if self.out.is_empty() {
            return false;
        }
        buf.clear();
        std::mem::swap(&mut self.out, buf);
        self.out_data = 0;
        for id in self.blocked_on_output.drain(..) {
            self.events.push_back(Event::Writable(id));
        }
        true
    }

    /// True while framed bytes wait for [`Session::poll_transmit`].
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes of stream data (DATA payloads, not control frames) waiting for
    /// [`Session::poll_transmit`].
    pub fn queued_data(&self) -> usize {
        self.out_data
    }

    /// True while the output buffer is small enough to keep reading input. A peer that floods
    /// us with frames needing replies (RSTs for refused streams) but does not read is stalled.
    pub fn wants_input(&self) -> bool {
        self.out.len() < 4 * self.config.max_output
    }

    /// The next thing the driver must react to.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn is_local(&self, id: StreamId) -> bool {
        match self.role {
            Role::Client => id.0 % 2 == 1,
            Role::Server => id.0.is_multiple_of(2),
        }
    }

    fn queue_rst(&mut self, id: StreamId, code: ErrorCode) {
        self.queue_frame(
            Header { length: 4, ty: FrameType::Rst, flags: 0, stream_id: id },
            &code.to_u32().to_be_bytes(),
        );
    }

    fn queue_frame(&mut self, h: Header, body: &[u8]) {
        self.out.reserve(HEADER_LEN + body.len());
        self.out.put_slice(&h.encode());
        self.out.put_slice(body);
        self.events.push_back(Event::Transmit);
    }

    fn reset_stream(&mut self, id: StreamId, code: ErrorCode, tell_peer: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.reset = Some(code);
        // Unread data will never be read; dropping it frees the memory now.
        self.buffered_total -= s.recv_buffered;
        s.recv_buf = VecDeque::new();
        s.recv_buffered = 0;
        let needs_syn = s.needs_syn;
        s.needs_syn = false;
        // A stream still waiting in the accept queue never reaches the application, so nobody
        // would release it: release it here.
        if let Some(pos) = self.accept_queue.iter().position(|a| *a == id) {
            self.accept_queue.remove(pos);
            s.released = true;
        }
        if tell_peer && !needs_syn {
            self.queue_rst(id, code);
        }
        self.events.push_back(Event::Readable(id));
        self.events.push_back(Event::Writable(id));
        self.maybe_remove(id);
    }

    fn maybe_remove(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let done = s.reset.is_some() || (s.recv_fin && s.send_fin && s.recv_buffered == 0);
        if s.released && done {
            if let Some(s) = self.streams.remove(&id) {
                let grown = s.recv_window.saturating_sub(self.config.initial_window) as u64;
                self.grown_total = self.grown_total.saturating_sub(grown);
            }
            self.blocked_on_output.retain(|b| *b != id);
        }
    }
}

impl Stream {
    fn new(window: u32, send_credit: u32, needs_syn: bool) -> Stream {
        Stream {
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            recv_credit: window,
            recv_window: window,
            recv_unacked: 0,
            peer_ran_dry: false,
            round_start_us: 0,
            round_bytes: 0,
            recv_fin: false,
            send_credit,
            send_fin: false,
            needs_syn,
            reset: None,
            released: false,
            write_blocked: false,
        }
    }
}
