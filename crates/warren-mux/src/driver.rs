//! A thin tokio driver for [`Session`]: one task reads the transport, and the session's
//! output is written either by the task whose stream write produced it, when no one else is
//! writing (one task hand-off less per write), or by a writer task that takes over what
//! cannot be written at once and batches bursts; [`Stream`] handles implement
//! `AsyncRead + AsyncWrite` over the shared state machine.
//!
//! The driver is generic over any `AsyncRead + AsyncWrite` transport; it opens no sockets.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use foldhash::fast::RandomState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::frame::{ErrorCode, StreamId};
use crate::session::{Config, Event, Recv, Role, Session, StreamError};

/// Bytes the reader task asks the transport for at a time.
const READ_CHUNK: usize = 256 * 1024;

/// A stream write that comes at least this long after the session's previous one is written
/// to the transport by the writing task itself (it is alone: no burst to batch, and the
/// writer task's wake-up is saved); closer writes are left to the writer task, which batches
/// them into one transport write. Measured (docs/BENCHMARKS.md): writing every frame from its
/// own task took the session's writes from 0.15 to 0.88 per request under load.
const DIRECT_GAP: std::time::Duration = std::time::Duration::from_micros(50);

/// The largest stream write written from its own task. A bulk transfer's larger writes go to
/// the writer task, so that one CPU encrypts and writes the last chunk while the other reads
/// the next (written from the stream's task, one iperf3 stream lost 8 % of its throughput).
const DIRECT_MAX: usize = 16 * 1024;

/// The writer task yields before writing, so that other streams' frames can join the write,
/// only while less stream data than this is queued.
const YIELD_BELOW: usize = DIRECT_MAX;

/// The largest output buffer the writer hands back to the session once written (a session
/// keeps two: one being written, one being framed into); one grown larger by a bulk write is
/// let go, so an idle session holds at most twice this.
const KEEP_OUTPUT: usize = 32 * 1024;

/// How long a closing session may take to hand its last frames (GOAWAY, error replies) to a
/// peer that does not read them; then the transport is dropped regardless.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A handle on a running session; cheap to clone. Dropping every handle does not close the
/// session: call [`Mux::close`].
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

/// One multiplexed stream. Dropping it releases the stream (see [`Session::release`]).
pub struct Stream {
    id: StreamId,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The transport's write half. Locked before `state` when both are held.
    out: Mutex<Out>,
    /// The origin of the time given to the session.
    started: std::time::Instant,
    transmit: Notify,
    closed: Notify,
    input_resume: Notify,
    /// Tells the reader to stop: the session has finished, so the transport's read half must
    /// go even if the peer never sends another byte.
    stop_reading: Notify,
    /// Wakes writes in flight when a close deadline is set.
    closing: Notify,
}

/// Who holds this lock writes the session's output, in order.
struct Out {
    /// `None` once the writer task has finished: the transport goes with it.
    w: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Output taken from the session (`pending[written..]` not accepted by the transport
    /// yet). Once written it is cleared and swapped back into the session for its next
    /// frames ([`Session::transmit_into`]), unless it grew beyond [`KEEP_OUTPUT`].
    pending: BytesMut,
    written: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The transport failed: every later write fails the same way (the writer task ends the
    /// session on it).
    failed: Option<io::ErrorKind>,
}

struct State {
    session: Session,
    read_wakers: HashMap<StreamId, Waker, RandomState>,
    write_wakers: HashMap<StreamId, Waker, RandomState>,
    accept_waker: Option<Waker>,
    transport_error: Option<io::ErrorKind>,
    shutdown_requested: bool,
    /// When [`Mux::close`] was first called: writes end [`CLOSE_GRACE`] later.
    close_deadline: Option<tokio::time::Instant>,
    finished: bool,
    /// When a stream last queued data (see [`DIRECT_GAP`]).
    last_send: std::time::Instant,
}

/// Starts a session over `io`, spawning its reader and writer tasks on the current runtime.
pub fn start<T>(io: T, role: Role, config: Config) -> Mux
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let shared = Arc::new(Shared {
        out: Mutex::new(Out {
            w: Some(Box::pin(w)),
            pending: BytesMut::new(),
            written: 0,
            unflushed: false,
            failed: None,
        }),
        started: std::time::Instant::now(),
        state: Mutex::new(State {
            session: Session::new(role, config),
            read_wakers: HashMap::default(),
            write_wakers: HashMap::default(),
            accept_waker: None,
            transport_error: None,
            shutdown_requested: false,
            close_deadline: None,
            finished: false,
            // The first write is alone.
            last_send: std::time::Instant::now()
                .checked_sub(DIRECT_GAP)
                .unwrap_or_else(std::time::Instant::now),
        }),
        transmit: Notify::new(),
        closed: Notify::new(),
        input_resume: Notify::new(),
        stop_reading: Notify::new(),
        closing: Notify::new(),
    });
    tokio::spawn(reader(r, shared.clone()));
    tokio::spawn(writer(shared.clone()));
    Mux { shared }
}

impl Mux {
    /// Opens a new stream. Nothing reaches the peer until the first write.
    pub fn open(&self) -> io::Result<Stream> {
        let mut st = self.shared.lock();
        let id = st.session.open().map_err(stream_err)?;
        drop(st);
        Ok(Stream { id, shared: self.shared.clone() })
    }

    /// Waits for the next stream the peer opens; `None` once the session is closed or the peer
    /// sent GOAWAY.
    pub async fn accept(&self) -> Option<Stream> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(id) = st.session.accept() {
                return Poll::Ready(Some(Stream { id, shared: self.shared.clone() }));
            }
            if st.session.accept_finished() {
                return Poll::Ready(None);
            }
            st.accept_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Sends GOAWAY, flushes what is queued and closes the transport. Open streams fail.
    /// A peer that does not read gets [`CLOSE_GRACE`] to take the last frames; then the
    /// transport is dropped. Either way both halves of the transport go.
    pub fn close(&self, code: ErrorCode, message: &str) {
        let mut st = self.shared.lock();
        st.session.go_away(code, message.as_bytes());
        st.shutdown_requested = true;
        st.close_deadline.get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_GRACE);
        drop(st);
        self.shared.closing.notify_waiters();
        self.shared.transmit.notify_one();
    }

    /// Replaces the stream and buffer limits (see [`crate::Session::set_limits`]).
    pub fn set_limits(&self, limits: crate::Limits) {
        self.shared.lock().session.set_limits(limits);
    }

    /// Bytes received on all streams and not yet read.
    pub fn buffered(&self) -> usize {
        self.shared.lock().session.buffered_total()
    }

    /// Waits until the transport has closed, for whatever reason.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.closed.notified();
            if self.shared.lock().finished {
                return;
            }
            notified.await;
        }
    }

    /// Records a measured round-trip time (receive windows are tuned with it).
    pub fn set_rtt(&self, rtt: std::time::Duration) {
        self.shared.lock().session.set_rtt(rtt.as_micros() as u64);
    }

    /// True once the transport has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().finished
    }

    /// Streams currently tracked by the session.
    pub fn stream_count(&self) -> usize {
        self.shared.lock().session.stream_count()
    }

    /// The message of the GOAWAY the peer sent, if any.
    pub fn remote_goaway(&self) -> Option<(ErrorCode, String)> {
        let st = self.shared.lock();
        st.session.remote_goaway().map(|(_, code, msg)| (*code, String::from_utf8_lossy(msg).into_owned()))
    }
}

impl Stream {
    /// The stream's id (odd when the client opened it).
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Aborts the stream in both directions.
    pub fn reset(&self, code: ErrorCode) {
        let mut st = self.shared.lock();
        st.session.reset(self.id, code);
        let wakers = st.take_wakers();
        drop(st);
        self.shared.transmit.notify_one();
        wakers.wake();
    }

    /// Ready when a read would not wait (data, end of stream or an error), without reading:
    /// lets a copy loop take a buffer only when there is something to put in it.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        if st.session.readable(self.id) {
            return Poll::Ready(Ok(()));
        }
        st.read_wakers.insert(self.id, cx.waker().clone());
        Poll::Pending
    }

    /// Reads the whole stream into a buffer, refusing more than `limit` bytes.
    pub async fn read_to_end_limited(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.read(&mut chunk).await?;
            if n == 0 {
                return Ok(buf);
            }
            if buf.len() + n > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("message larger than {limit} bytes"),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        // Only as much of the caller's buffer as will be filled is initialized: hyper offers
        // large uninitialized buffers, and zeroing them on every read showed in profiles.
        let want = st.session.buffered(self.id).min(buf.remaining());
        if want > 0 {
            // Window tuning times the reads that consume data; hyper also polls idle streams
            // (to notice a close), and those need no clock.
            st.session.set_time(self.shared.started.elapsed().as_micros() as u64);
        }
        let r = st.session.recv(self.id, buf.initialize_unfilled_to(want));
        let wakers = st.take_wakers();
        let out = match r {
            Ok(Recv::Data(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Ok(Recv::Eof) => Poll::Ready(Ok(())),
            Ok(Recv::Pending) => {
                st.read_wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(read_err(e, &st))),
        };
        drop(st);
        if wakers.transmit {
            self.shared.transmit.notify_one();
        }
        wakers.wake();
        out
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let r = st.session.send(self.id, buf);
        let wakers = st.take_wakers();
        // Alone (nothing sent for a while): written from here. In a burst: batched by the
        // writer task.
        let direct = wakers.transmit && {
            let now = std::time::Instant::now();
            // Data waiting in the session for other streams' tasks: they are about to run
            // and, likely, to answer; their frames can share this write.
            let alone = matches!(r, Ok(n) if n <= DIRECT_MAX)
                && now.duration_since(st.last_send) >= DIRECT_GAP
                && st.session.buffered_total() == 0;
            st.last_send = now;
            alone
        };
        let transmit = wakers.transmit;
        let out = match r {
            Ok(0) if !buf.is_empty() => {
                st.write_wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(stream_err(e))),
        };
        drop(st);
        wakers.wake();
        if direct {
            self.shared.transmit_now(cx);
        } else if transmit {
            self.shared.transmit.notify_one();
        }
        out
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Framed data belongs to the session's writer task from here on.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let r = st.session.close_write(self.id);
        let wakers = st.take_wakers();
        drop(st);
        self.shared.transmit.notify_one();
        wakers.wake();
        Poll::Ready(r.map_err(stream_err))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.session.release(self.id);
        st.read_wakers.remove(&self.id);
        st.write_wakers.remove(&self.id);
        let wakers = st.take_wakers();
        drop(st);
        if wakers.transmit {
            self.shared.transmit.notify_one();
        }
        wakers.wake();
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the session unusable; propagate it.
        self.state.lock().expect("mux state poisoned")
    }

    fn lock_out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().expect("mux output poisoned")
    }

    /// Writes the session's output from the calling task when no one else is writing, so
    /// the writer task need not be woken for it; whatever cannot be written now (the
    /// transport would block, failed, or another task is writing) is left to the writer task.
    fn transmit_now(&self, cx: &mut Context<'_>) {
        let done = match self.out.try_lock() {
            // Bytes left over mean the writer task waits on the transport with its own
            // waker; a write from here would put this task's waker in its place.
            Ok(mut out) if out.pending.is_empty() && !out.unflushed => {
                matches!(self.push(&mut out, cx), Poll::Ready(Ok(Idle { closing: false })))
            }
            _ => false,
        };
        if !done {
            self.transmit.notify_one();
        }
    }

    /// Writes and flushes the session's output until there is none. Ready with what the
    /// session said when it had nothing more to send.
    fn push(&self, out: &mut Out, cx: &mut Context<'_>) -> Poll<io::Result<Idle>> {
        if let Some(kind) = out.failed {
            return Poll::Ready(Err(kind.into()));
        }
        let Out { w, pending, written, unflushed, failed } = out;
        let Some(w) = w.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let e: io::Error = loop {
            if pending.is_empty() {
                let mut st = self.lock();
                if !st.session.transmit_into(pending) {
                    let idle = Idle { closing: st.shutdown_requested || st.finished };
                    drop(st);
                    if !*unflushed {
                        return Poll::Ready(Ok(idle));
                    }
                    // Only flushed once nothing more is queued, so a burst of small frames
                    // shares one TLS record and one syscall.
                    match w.as_mut().poll_flush(cx) {
                        Poll::Ready(Ok(())) => {
                            *unflushed = false;
                            return Poll::Ready(Ok(idle));
                        }
                        Poll::Ready(Err(e)) => break e,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                let wakers = st.take_wakers();
                drop(st);
                wakers.wake();
                // The output buffer has room again: a paused reader may go on.
                self.input_resume.notify_one();
            }
            match w.as_mut().poll_write(cx, &pending[*written..]) {
                Poll::Ready(Ok(0)) => break io::ErrorKind::WriteZero.into(),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    if *written == pending.len() {
                        *written = 0;
                        if pending.capacity() > KEEP_OUTPUT {
                            // After a bulk write: an idle session keeps no large buffer.
                            *pending = BytesMut::new();
                        } else {
                            pending.clear();
                        }
                    }
                    *unflushed = true;
                }
                Poll::Ready(Err(e)) => break e,
                Poll::Pending => return Poll::Pending,
            }
        };
        *failed = Some(e.kind());
        Poll::Ready(Err(e))
    }
}

/// The session had nothing more to send.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Idle {
    /// It is closing: the writer task shuts the transport down.
    closing: bool,
}

#[derive(Default)]
struct Wakers {
    list: Vec<Waker>,
    transmit: bool,
}

impl Wakers {
    fn wake(self) {
        for w in self.list {
            w.wake();
        }
    }
}

impl State {
    /// Turns the session's events into wakers, to be woken after the lock is released.
    fn take_wakers(&mut self) -> Wakers {
        let mut w = Wakers::default();
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Readable(id) => w.list.extend(self.read_wakers.remove(&id)),
                Event::Writable(id) => w.list.extend(self.write_wakers.remove(&id)),
                Event::Acceptable => w.list.extend(self.accept_waker.take()),
                Event::Transmit => w.transmit = true,
            }
        }
        w
    }

    fn finish(&mut self, code: ErrorCode, err: Option<io::ErrorKind>) -> Wakers {
        if self.transport_error.is_none() {
            self.transport_error = err;
        }
        self.session.close(code);
        self.finished = true;
        self.close_deadline.get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_GRACE);
        let mut w = self.take_wakers();
        w.list.extend(self.read_wakers.drain().map(|(_, w)| w));
        w.list.extend(self.write_wakers.drain().map(|(_, w)| w));
        w.list.extend(self.accept_waker.take());
        w
    }
}

async fn reader<R: AsyncRead>(r: R, shared: Arc<Shared>) {
    tokio::pin!(r);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let res = tokio::select! {
            res = r.read_buf(&mut buf) => res,
            // The writer finished the session (closed, or the transport failed for writing).
            _ = shared.stop_reading.notified() => return,
        };
        let (wakers, done, resume) = {
            let mut st = shared.lock();
            let (wakers, done) = match res {
                Ok(0) => (st.finish(ErrorCode::PeerEof, Some(io::ErrorKind::UnexpectedEof)), true),
                Err(e) => (st.finish(ErrorCode::SessionClosed, Some(e.kind())), true),
                Ok(_) => match st.session.handle_input(&mut buf) {
                    Ok(()) => (st.take_wakers(), st.finished),
                    Err(e) => {
                        tracing::debug!(error = %e, "mux protocol error");
                        // handle_input queued a GOAWAY; let the writer flush it, then close.
                        st.shutdown_requested = true;
                        st.close_deadline.get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_GRACE);
                        let mut w = st.take_wakers();
                        w.transmit = true;
                        (w, true)
                    }
                },
            };
            let pause = !done && !st.session.wants_input();
            (wakers, done, pause.then(|| shared.input_resume.notified()))
        };
        if wakers.transmit || done {
            shared.transmit.notify_one();
        }
        if done {
            shared.closing.notify_waiters();
        }
        wakers.wake();
        if done {
            shared.closed.notify_waiters();
            return;
        }
        if let Some(resume) = resume {
            tokio::select! {
                _ = resume => {}
                _ = shared.stop_reading.notified() => return,
            }
        }
    }
}

async fn writer(shared: Arc<Shared>) {
    let error = loop {
        let notified = shared.transmit.notified();
        match before(&shared, poll_fn(|cx| shared.push(&mut shared.lock_out(), cx))).await {
            Err(e) => break Some(e.kind()),
            Ok(Idle { closing: true }) => {
                let shutdown = poll_fn(|cx| {
                    let mut out = shared.lock_out();
                    let Some(w) = out.w.as_mut() else { return Poll::Ready(Ok(())) };
                    let done = std::task::ready!(w.as_mut().poll_shutdown(cx));
                    // Gone under the same lock: no stream's own write can follow the close.
                    out.w = None;
                    Poll::Ready(done)
                });
                let _ = before(&shared, shutdown).await;
                break None;
            }
            Ok(Idle { closing: false }) => {}
        }
        // A close requested while this waits must not wait for the transmit notification
        // alone: `close` sends one, so this wakes.
        notified.await;
        // Let the tasks that are ready now frame their data first: a burst from many streams
        // then leaves in one write (one TLS record, one syscall) instead of one each. Only for
        // small writes of data: a bulk write fills its TLS records on its own, and control
        // frames alone (window updates while a stream downloads) are not what a burst of
        // requests is made of. A yield puts this task in the run queue, where tokio wakes the
        // other worker thread to steal it: one iperf3 stream was 14 % slower when every
        // wake-up yielded (docs/BENCHMARKS.md).
        let batch = {
            let data = shared.lock().session.queued_data();
            data > 0 && data < YIELD_BELOW
        };
        if batch {
            tokio::task::yield_now().await;
        }
    };
    // The write half goes with this task, whoever still holds a stream.
    drop(shared.lock_out().w.take());
    let wakers = { shared.lock().finish(ErrorCode::SessionClosed, error) };
    wakers.wake();
    shared.closed.notify_waiters();
    // The read half goes too, so the transport (and its socket) is dropped now, not when a
    // silent peer finally sends something.
    shared.stop_reading.notify_one();
}

/// Runs `io` to completion, or fails it with `TimedOut` once the session is closing and its
/// grace period is over (a peer that stopped reading).
async fn before<T>(shared: &Shared, io: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::select! {
        r = io => r,
        _ = close_deadline(shared) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "the peer did not read in time"))
        }
    }
}

/// Resolves at the close deadline, once one is set.
async fn close_deadline(shared: &Shared) {
    loop {
        let notified = shared.closing.notified();
        let deadline = shared.lock().close_deadline;
        if let Some(d) = deadline {
            return tokio::time::sleep_until(d).await;
        }
        notified.await;
    }
}

fn stream_err(e: StreamError) -> io::Error {
    let kind = match e {
        StreamError::Reset(_) => io::ErrorKind::ConnectionReset,
        StreamError::WriteClosed => io::ErrorKind::BrokenPipe,
        StreamError::SessionClosed(_) => io::ErrorKind::NotConnected,
        StreamError::Unknown => io::ErrorKind::NotFound,
    };
    io::Error::new(kind, e)
}

fn read_err(e: StreamError, st: &State) -> io::Error {
    match (e, st.transport_error) {
        (StreamError::Reset(ErrorCode::PeerEof | ErrorCode::SessionClosed), Some(kind)) => {
            io::Error::new(kind, "session transport closed")
        }
        _ => stream_err(e),
    }
}
