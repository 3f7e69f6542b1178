//! Bodies: the response handed to hyper or h3 (complete, or the guest's output as it streams),
//! and the request body from any protocol.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::error::Failure;
use crate::sandbox::io::BodyChunk;

pub struct OutBody {
    first: Option<Bytes>,
    rest: Option<mpsc::Receiver<BodyChunk>>,
}

impl OutBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            first: (!bytes.is_empty()).then_some(bytes),
            rest: None,
        }
    }

    pub fn empty() -> Self {
        Self {
            first: None,
            rest: None,
        }
    }

    pub fn streaming(first: Bytes, rest: Option<mpsc::Receiver<BodyChunk>>) -> Self {
        Self {
            first: (!first.is_empty()).then_some(first),
            rest,
        }
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(rx) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Poll::Ready(Some(Err(failure))) => {
                self.rest = None;
                Poll::Ready(Some(Err(failure)))
            }
            Poll::Ready(None) => {
                self.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.first, &self.rest) {
            (Some(b), None) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            (first, Some(_)) => {
                let mut hint = SizeHint::new();
                hint.set_lower(first.as_ref().map_or(0, |b| b.len() as u64));
                hint
            }
        }
    }
}

/// A request body from any listener: hyper's (HTTP/1.1, HTTP/2) or chunks from an HTTP/3
/// stream.
pub enum InBody {
    Hyper(hyper::body::Incoming),
    Chunks(mpsc::Receiver<Result<Bytes, Failure>>),
    Empty,
}

impl Body for InBody {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        match self.get_mut() {
            InBody::Hyper(incoming) => match Pin::new(incoming).poll_frame(cx) {
                Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(Failure::ClientGone))),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            InBody::Chunks(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Poll::Ready(Some(Err(f))) => Poll::Ready(Some(Err(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            InBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InBody::Hyper(incoming) => incoming.is_end_stream(),
            InBody::Chunks(_) => false,
            InBody::Empty => true,
        }
    }
}
