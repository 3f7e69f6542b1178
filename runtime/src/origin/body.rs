//! Bodies on the way to an origin and back: the request body (none, bytes from a guest, or the
//! client's body as it streams in, already under the tenant's cap) and the origin's response
//! body streamed to the client under the tenant's response cap and an idle timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::{OriginErrorKind, OriginFailure};
use crate::error::{Failure, Limit};
use crate::sandbox::io::BodyChunk;

/// A request body sent to an origin.
pub enum OriginBody {
    Empty,
    Full(Option<Bytes>),
    /// The client's body as it arrives (what was already taken off the channel first).
    Stream {
        first: Option<Bytes>,
        rest: mpsc::Receiver<BodyChunk>,
    },
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        match self.get_mut() {
            OriginBody::Empty => Poll::Ready(None),
            OriginBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            OriginBody::Stream { first, rest } => {
                if let Some(b) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                rest.poll_recv(cx)
                    .map(|chunk| chunk.map(|c| c.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OriginBody::Empty => true,
            OriginBody::Full(b) => b.is_none(),
            OriginBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OriginBody::Empty => SizeHint::with_exact(0),
            OriginBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            OriginBody::Stream { .. } => SizeHint::default(),
        }
    }
}

/// An origin's response body on its way to the client.
pub struct ProxiedBody {
    inner: Incoming,
    /// Dropped when the body ends: the backend may reuse the connection.
    in_flight: Option<super::InFlight>,
    seen: u64,
    cap: u64,
    idle: Duration,
    pause: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl ProxiedBody {
    pub fn new(inner: Incoming, in_flight: super::InFlight, cap: u64, idle: Duration) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
            seen: 0,
            cap,
            idle,
            pause: None,
            done: false,
        }
    }
}

impl Body for ProxiedBody {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.pause = None;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.cap {
                        this.done = true;
                        return Poll::Ready(Some(Err(Failure::Limit(Limit::ResponseBody))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(Failure::Origin(OriginFailure::new(
                    OriginErrorKind::Reset,
                    format!("response body: {e}"),
                )))))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.in_flight = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match pause.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        Poll::Ready(Some(Err(Failure::Origin(OriginFailure::new(
                            OriginErrorKind::BodyTimeout,
                            format!("the response body paused longer than {idle:?}"),
                        )))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
