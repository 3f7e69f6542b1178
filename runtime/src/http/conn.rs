//! One TCP connection's life under its listener's timeouts, for the plain and TLS listeners:
//! when it is idle (no request in flight: HTTP/2 pings and other frames do not count) and so
//! closed after `idle_timeout`, how long a request head may take (`header_timeout`), and the
//! lingering close that lets a client read the last response. It sees bytes and the start and
//! end of each request only; it must not parse HTTP.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// How long a finished connection keeps reading (and discarding) what the client still sends
/// before its socket is closed, and how much of it at most.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// The timeouts a listener puts on each connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For each HTTP/1.1 request head: the first from the connection's start (after its TLS
    /// handshake), the next ones from their first byte.
    pub header: Duration,
    /// With no request in flight (and, on HTTP/1.1, no byte of the next head yet).
    pub idle: Duration,
}

/// How the connection frames requests: it decides what counts as the start of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Http1,
    Http2,
}

/// The HTTP/2 connection preface starts this way; no HTTP/1.1 request does.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug)]
struct State {
    in_flight: usize,
    served: u64,
    /// When the last request ended (or the connection became ready).
    idle_since: Instant,
    /// The connection's reader, woken when the last request in flight ends so that it arms the
    /// idle deadline.
    reader: Option<Waker>,
    /// A deadline passed: the connection was cut (idle, or a head too slow), with no response
    /// left to deliver.
    timed_out: bool,
}

/// The requests in flight on one connection. The listener's service calls `begin` for each
/// request and keeps the guard with the response body until the body is done.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<State>>);

impl Activity {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request has started: the connection is not idle until the guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.lock().in_flight += 1;
        InFlight(self.clone())
    }

    /// Whether the connection ended at one of its deadlines. Such a connection is closed at once,
    /// not by `linger`: it owes the client no response, and a slow client must not keep its
    /// socket (and its connection slot) by trickling bytes into the lingering close.
    pub fn timed_out(&self) -> bool {
        self.lock().timed_out
    }
}

/// One request in flight (see `Activity::begin`).
#[derive(Debug)]
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.served += 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A response body that keeps its request in flight until it is done (or dropped).
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's byte stream with its deadlines: once one passes, reads end (EOF), and the
/// HTTP server closes the connection as a client's close (an idle HTTP/1.1 connection
/// cleanly; a head cut short, or an HTTP/2 connection, at once).
pub struct Watched<T> {
    inner: T,
    activity: Activity,
    timeouts: Timeouts,
    /// `None` until the first bytes tell (when ALPN did not).
    framing: Option<Framing>,
    /// The first byte of the next HTTP/1.1 head, read while no request was in flight.
    head_started: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl<T> Watched<T> {
    /// `framing` from ALPN when the TLS handshake negotiated it.
    pub fn new(inner: T, timeouts: Timeouts, framing: Option<Framing>) -> (Self, Activity) {
        let now = Instant::now();
        let activity = Activity(Arc::new(Mutex::new(State {
            in_flight: 0,
            served: 0,
            idle_since: now,
            reader: None,
            timed_out: false,
        })));
        let watched = Self {
            inner,
            activity: activity.clone(),
            timeouts,
            framing,
            head_started: None,
            sleep: Box::pin(tokio::time::sleep_until(now + timeouts.header)),
            expired: false,
        };
        (watched, activity)
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        if self.framing.is_none() {
            let n = bytes.len().min(H2_PREFACE_START.len());
            self.framing = Some(if bytes[..n] == H2_PREFACE_START[..n] {
                Framing::Http2
            } else {
                Framing::Http1
            });
        }
        let state = self.activity.lock();
        if state.in_flight == 0 && self.head_started.is_none_or(|t| t < state.idle_since) {
            self.head_started = Some(Instant::now());
        }
    }

    /// When reads end if nothing changes: `None` while a request is in flight.
    fn deadline(&mut self, reader: &Waker) -> Option<Instant> {
        let mut state = self.activity.lock();
        if !state.reader.as_ref().is_some_and(|w| w.will_wake(reader)) {
            state.reader = Some(reader.clone());
        }
        if state.in_flight > 0 {
            return None;
        }
        Some(idle_deadline(
            self.timeouts,
            self.framing,
            state.served,
            state.idle_since,
            self.head_started,
        ))
    }
}

/// When a connection with no request in flight is closed, if nothing changes: HTTP/2 after
/// `idle_timeout` from its last request's end (frames that carry no request, pings among them,
/// do not count); HTTP/1.1 after `header_timeout` for its first head, then after
/// `idle_timeout` between requests unless a head has started, which has `header_timeout`
/// from its first byte.
fn idle_deadline(
    timeouts: Timeouts,
    framing: Option<Framing>,
    served: u64,
    idle_since: Instant,
    head_started: Option<Instant>,
) -> Instant {
    let head_started = head_started.filter(|t| *t >= idle_since);
    match (framing, head_started) {
        (Some(Framing::Http2), _) => idle_since + timeouts.idle,
        _ if served == 0 => idle_since + timeouts.header,
        (_, Some(started)) => started + timeouts.header,
        (_, None) => idle_since + timeouts.idle,
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let this = &mut *self;
                    this.on_bytes(&buf.filled()[before..]);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let Some(deadline) = self.deadline(cx.waker()) else {
            return Poll::Pending;
        };
        if Instant::now() >= deadline {
            self.expired = true;
            self.activity.lock().timed_out = true;
            return Poll::Ready(Ok(()));
        }
        // The timer only wakes this task to look again; the deadline decides. Each request
        // moves the deadline later, and a timer reset per request costs more than one early
        // wake-up per idle period, so it is reset only to come earlier or once it has fired.
        if deadline < self.sleep.deadline() || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            // Fired in between: the deadline has passed by now (a timer never fires early).
            if Instant::now() >= deadline {
                self.expired = true;
                self.activity.lock().timed_out = true;
                return Poll::Ready(Ok(()));
            }
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

/// A connection's TCP stream that, when the HTTP server (or the TLS layer) is done with it, is
/// handed back to the connection's task to close by `linger` instead of being closed at once.
pub struct Lingering {
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl Lingering {
    pub fn new(stream: TcpStream) -> (Self, oneshot::Receiver<TcpStream>) {
        let (back, rx) = oneshot::channel();
        let lingering = Self {
            stream: Some(stream),
            back: Some(back),
        };
        (lingering, rx)
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            // The task may be gone already (shutdown): the stream then closes here.
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// One connection counted in `outpost_connections_open` until it is dropped (with the
/// connection's task, after its lingering close).
pub struct Open(prometheus::IntGauge);

impl Open {
    pub fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Close a finished connection so that the client can read all of it: end the sending side
/// (FIN after the data already written), then discard what the client still sends until it
/// closes, for `LINGER` and `LINGER_BYTES` at most. Closing a socket with unread input resets
/// it instead, and the reset can destroy response bytes the client has not read yet: a 431
/// sent while the client was still writing its oversized head, for one.
pub async fn linger(mut socket: TcpStream) {
    let _ = socket.shutdown().await;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match socket.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_head_deadlines() {
        let t = Timeouts {
            header: Duration::from_secs(1),
            idle: Duration::from_secs(5),
        };
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        // The first head: header_timeout from the start, started or not.
        assert_eq!(idle_deadline(t, None, 0, start, None), later(1));
        assert_eq!(
            idle_deadline(t, Some(Framing::Http1), 0, start, Some(later(0))),
            later(1)
        );
        // Between requests: idle_timeout...
        assert_eq!(
            idle_deadline(t, Some(Framing::Http1), 1, later(10), None),
            later(15)
        );
        // ...until the next head starts: header_timeout from its first byte.
        assert_eq!(
            idle_deadline(t, Some(Framing::Http1), 1, later(10), Some(later(12))),
            later(13)
        );
        // A head start from before the last request ended is not the next head's.
        assert_eq!(
            idle_deadline(t, Some(Framing::Http1), 1, later(10), Some(later(9))),
            later(15)
        );
        // HTTP/2: only requests count; frames without one (pings) start no head.
        assert_eq!(
            idle_deadline(t, Some(Framing::Http2), 0, start, Some(later(0))),
            later(5)
        );
        assert_eq!(
            idle_deadline(t, Some(Framing::Http2), 3, later(10), Some(later(12))),
            later(15)
        );
    }
}
