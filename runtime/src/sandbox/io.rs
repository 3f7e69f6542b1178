//! A guest's stdio: the request body in (stdin), the CGI response out (stdout, streamed as it
//! is written), and a capped stderr. These run on a worker thread and wait on the async side
//! only through bounded channels with the request's deadline, never forever.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::cgi::{CgiOutput, HeadError, Progress, ResponseHead};
use crate::error::{Failure, Limit};

/// Output is handed to the client in chunks of about this size...
const FLUSH_BYTES: usize = 16 * 1024;
/// ...or once the oldest unsent byte is this old, so a slow guest still streams.
const FLUSH_AGE: Duration = Duration::from_millis(2);
/// Chunks in flight between a guest and its client before the guest waits.
pub const BODY_CHANNEL_CHUNKS: usize = 16;

/// Why a host call stops the guest.
#[derive(Debug)]
pub enum HostStop {
    /// `proc_exit` with this code.
    Exit(i32),
    /// The request fails.
    Fail(Failure),
}

impl std::fmt::Display for HostStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostStop::Exit(code) => write!(f, "guest exited with code {code}"),
            HostStop::Fail(failure) => failure.fmt(f),
        }
    }
}

impl std::error::Error for HostStop {}

impl From<Failure> for HostStop {
    fn from(f: Failure) -> Self {
        HostStop::Fail(f)
    }
}

/// Wait for `fut` on the async runtime until the deadline, without holding a CPU slot (see
/// `scheduler::blocking`): the guest is idle, other requests of its tenant may run meanwhile.
pub(super) fn wait_for<F: std::future::Future>(
    handle: &Handle,
    deadline: Instant,
    fut: F,
) -> Result<F::Output, Failure> {
    // An inline attempt never waits: it moves to a pool thread instead.
    if super::inline::must_move() {
        return Err(Failure::Limit(Limit::Time));
    }
    let until = tokio::time::Instant::from_std(deadline);
    // The timer must be created inside the runtime's context.
    let waited = super::scheduler::blocking(deadline, || {
        handle.block_on(async { tokio::time::timeout_at(until, fut).await })
    });
    match waited {
        Ok(Ok(out)) => Ok(out),
        _ => Err(Failure::Limit(Limit::Time)),
    }
}

/// A response body chunk, or the reason the body was cut short.
pub type BodyChunk = Result<Bytes, Failure>;

/// The start of a guest's response: its head and what followed it so far.
#[derive(Debug)]
pub struct Started {
    pub head: ResponseHead,
    pub first: Bytes,
    /// The rest of the body; `None` when the guest had already finished (`first` is all).
    pub rest: Option<mpsc::Receiver<BodyChunk>>,
    /// The request body, when the guest finished without reading any of it (a pass-through
    /// forwards it).
    pub unread: Option<GuestInput>,
}

/// The request body as the guest reads it from stdin.
#[derive(Debug)]
pub struct GuestInput {
    current: Bytes,
    source: Option<mpsc::Receiver<BodyChunk>>,
    /// Whether the guest read any of it.
    consumed: bool,
    /// Why the body was cut short, once `ready` has taken it off the channel: the next read
    /// stops the guest with it (never an end of body the guest would take as complete).
    failed: Option<Failure>,
}

impl GuestInput {
    /// A body known in full up front.
    pub fn fixed(body: Bytes) -> Self {
        Self {
            current: body,
            source: None,
            consumed: false,
            failed: None,
        }
    }

    /// The whole body, if it is known in full up front and the guest has read none of it.
    pub fn whole(&self) -> Option<Bytes> {
        (self.source.is_none() && !self.consumed && self.failed.is_none())
            .then(|| self.current.clone())
    }

    /// A body that arrives while the guest runs: `first` (what is in hand), then what `rx`
    /// brings.
    pub fn streaming(first: Bytes, rx: mpsc::Receiver<BodyChunk>) -> Self {
        Self {
            current: first,
            source: Some(rx),
            consumed: false,
            failed: None,
        }
    }

    /// Whether a read would return without waiting.
    pub fn ready(&mut self) -> bool {
        if !self.current.is_empty() || self.source.is_none() {
            return true;
        }
        match self.source.as_mut().map(|rx| rx.try_recv()) {
            Some(Ok(Ok(chunk))) => {
                self.current = chunk;
                true
            }
            Some(Ok(Err(failure))) => {
                self.failed = Some(failure);
                true
            }
            Some(Err(mpsc::error::TryRecvError::Empty)) => false,
            _ => true,
        }
    }

    /// Up to `max` bytes; empty at end of body.
    pub fn read(
        &mut self,
        max: usize,
        handle: &Handle,
        deadline: Instant,
    ) -> Result<Bytes, HostStop> {
        while self.current.is_empty() {
            if let Some(failure) = self.failed.take() {
                return Err(failure.into());
            }
            let Some(rx) = self.source.as_mut() else {
                return Ok(Bytes::new());
            };
            let next = match rx.try_recv() {
                Ok(chunk) => Some(chunk),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => wait_for(handle, deadline, rx.recv())?,
            };
            match next {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(failure)) => return Err(failure.into()),
                None => {
                    self.source = None;
                    return Ok(Bytes::new());
                }
            }
        }
        let n = max.min(self.current.len());
        self.consumed |= n > 0;
        Ok(self.current.split_to(n))
    }

    pub fn consumed(&self) -> bool {
        self.consumed
    }

    /// The body as an origin request's body, from where the guest left it.
    pub fn into_origin_body(self) -> crate::origin::OriginBody {
        let first = (!self.current.is_empty()).then_some(self.current);
        if let Some(failure) = self.failed {
            // The body was cut short: the origin must see it fail, never a complete body.
            let (tx, rest) = mpsc::channel(1);
            let _ = tx.try_send(Err(failure));
            return crate::origin::OriginBody::Stream { first, rest };
        }
        match self.source {
            Some(rest) => crate::origin::OriginBody::Stream { first, rest },
            None => crate::origin::OriginBody::Full(first),
        }
    }
}

enum OutState {
    /// Collecting the CGI head (in `GuestOutput::cgi`).
    Head,
    /// Head parsed, not yet sent (the guest may still fail and get a clean error status).
    Parsed(ResponseHead),
    /// Head sent; body chunks follow.
    Streaming,
    /// Nothing more will be sent.
    Closed,
}

/// The guest's stdout, parsed as CGI and streamed to the client: the shell around the pure
/// `CgiOutput` state machine that adds the channels, the flush clock and the body cap.
pub struct GuestOutput {
    cgi: CgiOutput,
    state: OutState,
    start_tx: Option<oneshot::Sender<Result<Started, Failure>>>,
    body_tx: Option<mpsc::Sender<BodyChunk>>,
    pending: BytesMut,
    pending_since: Option<Instant>,
    body_bytes: u64,
    body_cap: u64,
    never_wait: bool,
    /// The status the client was sent (the guest's, or a failure's).
    status: Option<http::StatusCode>,
    /// The request body handed back by the host when the guest ended without reading it.
    unread: Option<GuestInput>,
    /// An inline attempt: nothing is sent before the guest ends.
    held: bool,
}

impl GuestOutput {
    pub fn new(body_cap: u64) -> (Self, oneshot::Receiver<Result<Started, Failure>>) {
        let (start_tx, start_rx) = oneshot::channel();
        let out = Self {
            start_tx: Some(start_tx),
            ..Self::detached_with(body_cap)
        };
        (out, start_rx)
    }

    /// An output nobody receives: what a kept store's host state holds between requests.
    pub fn detached() -> Self {
        Self::detached_with(0)
    }

    fn detached_with(body_cap: u64) -> Self {
        Self {
            cgi: CgiOutput::new(),
            state: OutState::Head,
            start_tx: None,
            body_tx: None,
            pending: BytesMut::new(),
            pending_since: None,
            body_bytes: 0,
            body_cap,
            never_wait: false,
            status: None,
            unread: None,
            held: false,
        }
    }

    /// Send nothing before the guest ends (an inline attempt, which may yet be discarded); more
    /// than `inline::HELD_OUTPUT_MAX` bytes held moves the attempt to a pool thread.
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// Bytes the guest wrote to stdout.
    pub fn write(
        &mut self,
        data: &[u8],
        handle: &Handle,
        deadline: Instant,
    ) -> Result<(), HostStop> {
        let progress = match self.state {
            OutState::Head => self
                .cgi
                .write(data)
                .map_err(|e| Failure::BadResponse(e.to_string()))?,
            OutState::Closed => return Ok(()),
            _ => Progress::Body(data),
        };
        match progress {
            Progress::NeedMore => return Ok(()),
            Progress::Head {
                head,
                buffered,
                rest,
            } => {
                self.state = OutState::Parsed(head);
                self.push_body(&buffered)?;
                self.push_body(rest)?;
            }
            Progress::Body(data) => self.push_body(data)?,
        }
        if self.held {
            if self.pending.len() > super::inline::HELD_OUTPUT_MAX && super::inline::must_move() {
                return Err(Failure::Limit(Limit::ResponseBody).into());
            }
            return Ok(());
        }
        let aged = self.pending_since.is_some_and(|t| t.elapsed() >= FLUSH_AGE);
        if self.pending.len() >= FLUSH_BYTES || aged {
            self.flush(handle, deadline)?;
        }
        Ok(())
    }

    fn push_body(&mut self, data: &[u8]) -> Result<(), HostStop> {
        if data.is_empty() {
            return Ok(());
        }
        self.body_bytes += data.len() as u64;
        if self.body_bytes > self.body_cap {
            return Err(Failure::Limit(Limit::ResponseBody).into());
        }
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    /// Send what is pending, waiting (up to the deadline) if the client is slow.
    pub fn flush(&mut self, handle: &Handle, deadline: Instant) -> Result<(), HostStop> {
        if self.held {
            return Ok(());
        }
        match std::mem::replace(&mut self.state, OutState::Closed) {
            OutState::Parsed(head) => {
                let (tx, rx) = mpsc::channel(BODY_CHANNEL_CHUNKS);
                let first = self.take_pending();
                self.start(Ok(Started {
                    head,
                    first,
                    rest: Some(rx),
                    unread: None,
                }))?;
                self.body_tx = Some(tx);
                self.state = OutState::Streaming;
                Ok(())
            }
            OutState::Streaming => {
                self.state = OutState::Streaming;
                if self.pending.is_empty() {
                    return Ok(());
                }
                if self.never_wait {
                    return self.try_flush();
                }
                let chunk = self.take_pending();
                self.send_chunk(Ok(chunk), handle, deadline)
            }
            other => {
                self.state = other;
                Ok(())
            }
        }
    }

    /// Send pending output only if the channel has room; otherwise keep accumulating it
    /// (bounded by the response cap) for a later write or the guest's end.
    fn try_flush(&mut self) -> Result<(), HostStop> {
        let Some(tx) = self.body_tx.as_ref() else {
            return Ok(());
        };
        match tx.try_reserve() {
            Ok(permit) => {
                permit.send(Ok(self.pending.split().freeze()));
                self.pending_since = None;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(())) => Err(Failure::ClientGone.into()),
        }
    }

    /// Whether bytes written now would be dropped unread (the response is over): a host call
    /// need not copy them out of the guest.
    pub fn discards(&self) -> bool {
        matches!(self.state, OutState::Closed)
    }

    /// The status sent to the client, once the response started or failed.
    pub fn status(&self) -> Option<http::StatusCode> {
        self.status
    }

    /// Never wait for the client inside `write`: for hosts that call in from their own
    /// executor (wasmer-wasix), where blocking on the async runtime is not allowed.
    pub fn set_never_wait(&mut self, never_wait: bool) {
        self.never_wait = never_wait;
    }

    fn take_pending(&mut self) -> Bytes {
        self.pending_since = None;
        self.pending.split().freeze()
    }

    fn start(&mut self, started: Result<Started, Failure>) -> Result<(), HostStop> {
        self.status = Some(match &started {
            Ok(s) => s.head.status,
            Err(f) => f.status(),
        });
        match self.start_tx.take() {
            Some(tx) => tx.send(started).map_err(|_| Failure::ClientGone.into()),
            None => Ok(()),
        }
    }

    fn send_chunk(
        &mut self,
        chunk: BodyChunk,
        handle: &Handle,
        deadline: Instant,
    ) -> Result<(), HostStop> {
        let Some(tx) = self.body_tx.as_ref() else {
            return Ok(());
        };
        match tx.try_send(chunk) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Failure::ClientGone.into()),
            Err(mpsc::error::TrySendError::Full(chunk)) => {
                match wait_for(handle, deadline, tx.send(chunk))? {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Failure::ClientGone.into()),
                }
            }
        }
    }

    /// The guest has ended: give the request body back, if it read none of it, to go with a
    /// response that has not started yet.
    pub fn hand_back(&mut self, input: GuestInput) {
        if !input.consumed {
            self.unread = Some(input);
        }
    }

    /// The guest ended normally: complete the response, or say why it is not one.
    pub fn finish(&mut self, handle: &Handle, deadline: Instant) -> Result<(), Failure> {
        // The guest is gone: the rest may wait for the client, up to the deadline.
        self.never_wait = false;
        match std::mem::replace(&mut self.state, OutState::Closed) {
            OutState::Head => {
                let why = self.cgi.end().err().unwrap_or(HeadError::NoBlankLine);
                Err(Failure::BadResponse(why.to_string()))
            }
            OutState::Parsed(head) => {
                let first = self.take_pending();
                let unread = self.unread.take();
                self.start(Ok(Started {
                    head,
                    first,
                    rest: None,
                    unread,
                }))
                .map_err(|_| Failure::ClientGone)
            }
            OutState::Streaming => {
                self.state = OutState::Streaming;
                let flushed = self.flush(handle, deadline);
                self.state = OutState::Closed;
                self.body_tx = None;
                flushed.map_err(|stop| match stop {
                    HostStop::Fail(f) => f,
                    HostStop::Exit(_) => Failure::ClientGone,
                })
            }
            OutState::Closed => Ok(()),
        }
    }

    /// The request failed: an error status if nothing was sent yet, else cut the body.
    pub fn fail(&mut self, failure: Failure) {
        self.state = OutState::Closed;
        self.pending.clear();
        if self.start_tx.is_some() {
            let _ = self.start(Err(failure));
        } else if let Some(tx) = self.body_tx.take() {
            // Best effort: a full channel means the client is far behind; dropping the
            // sender without a final chunk also ends the body early.
            let _ = tx.try_send(Err(failure));
        }
    }
}

/// The guest's stderr, kept up to a cap for the tenant's log.
#[derive(Debug, Default)]
pub struct StderrBuf {
    pub bytes: Vec<u8>,
    pub truncated: bool,
    cap: usize,
}

impl StderrBuf {
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            truncated: false,
            cap,
        }
    }

    /// Bytes it still keeps.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.bytes.len())
    }

    pub fn write(&mut self, data: &[u8]) {
        let room = self.room();
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_finished_guest_sends_its_whole_response_at_once() {
        let rt = rt();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut out, mut rx) = GuestOutput::new(1 << 20);
        out.write(b"Content-Type: text/plain\n\nhel", rt.handle(), deadline)
            .expect("write");
        out.write(b"lo", rt.handle(), deadline).expect("write");
        out.finish(rt.handle(), deadline).expect("finish");
        let started = rx.try_recv().expect("sent").expect("ok");
        assert_eq!(started.head.status, 200);
        assert_eq!(&started.first[..], b"hello");
        assert!(started.rest.is_none());
    }

    #[test]
    fn a_head_split_across_writes_reaches_the_client_as_a_head() {
        let rt = rt();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut out, mut rx) = GuestOutput::new(1 << 20);
        out.write(b"Content-Type: text/plain\nX-", rt.handle(), deadline)
            .expect("write");
        out.write(b"Foo: bar\n\nhello", rt.handle(), deadline)
            .expect("write");
        out.finish(rt.handle(), deadline).expect("finish");
        let started = rx.try_recv().expect("sent").expect("ok");
        assert_eq!(started.head.headers["x-foo"], "bar");
        assert_eq!(&started.first[..], b"hello");
    }

    #[test]
    fn a_failure_before_the_first_flush_becomes_an_error_status() {
        let rt = rt();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut out, mut rx) = GuestOutput::new(1 << 20);
        out.write(b"Status: 200\n\npartial", rt.handle(), deadline)
            .expect("write");
        out.fail(Failure::Trap("unreachable".into()));
        assert_eq!(
            rx.try_recv().expect("sent").expect_err("failure"),
            Failure::Trap("unreachable".into())
        );
    }

    #[test]
    fn output_without_a_blank_line_is_a_bad_response() {
        let rt = rt();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut out, _rx) = GuestOutput::new(1 << 20);
        out.write(b"just text", rt.handle(), deadline)
            .expect("write");
        assert!(matches!(
            out.finish(rt.handle(), deadline),
            Err(Failure::BadResponse(_))
        ));
        let (mut empty, _rx) = GuestOutput::new(1 << 20);
        assert!(matches!(
            empty.finish(rt.handle(), deadline),
            Err(Failure::BadResponse(_))
        ));
    }

    #[test]
    fn the_response_cap_stops_the_guest() {
        let rt = rt();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut out, _rx) = GuestOutput::new(4);
        let err = out
            .write(b"\nmore than four", rt.handle(), deadline)
            .expect_err("over cap");
        assert!(matches!(
            err,
            HostStop::Fail(Failure::Limit(Limit::ResponseBody))
        ));
    }
}
