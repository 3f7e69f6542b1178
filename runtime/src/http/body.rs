//! Bodies: the response handed to hyper or h3 (complete, the guest's output as it streams, or
//! an origin's response passed through), and the request body from any protocol.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::error::Failure;
use crate::origin::ProxiedBody;
use crate::sandbox::io::BodyChunk;

pub struct OutBody {
    first: Option<Bytes>,
    rest: Option<mpsc::Receiver<BodyChunk>>,
    proxied: Option<ProxiedBody>,
}

impl OutBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            first: (!bytes.is_empty()).then_some(bytes),
            rest: None,
            proxied: None,
        }
    }

    pub fn empty() -> Self {
        Self {
            first: None,
            rest: None,
            proxied: None,
        }
    }

    pub fn streaming(first: Bytes, rest: Option<mpsc::Receiver<BodyChunk>>) -> Self {
        Self {
            first: (!first.is_empty()).then_some(first),
            rest,
            proxied: None,
        }
    }

    /// An origin's response body, streamed as it arrives.
    pub fn proxied(body: ProxiedBody) -> Self {
        Self {
            first: None,
            rest: None,
            proxied: Some(body),
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
        if let Some(proxied) = self.proxied.as_mut() {
            let polled = Pin::new(proxied).poll_frame(cx);
            if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                self.proxied = None;
            }
            return polled;
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
        self.first.is_none()
            && self.rest.is_none()
            && self.proxied.as_ref().is_none_or(|p| p.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(p) = &self.proxied {
            return p.size_hint();
        }
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

/// The receiving half of an HTTP/3 request stream.
pub type H3Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A request body from any listener: hyper's (HTTP/1.1, HTTP/2) or an HTTP/3 stream's data,
/// read where it is consumed (no task in between).
pub enum InBody {
    Hyper(hyper::body::Incoming),
    H3 {
        /// What was read while checking whether the request has a body.
        first: Option<Result<Bytes, Failure>>,
        stream: Box<H3Recv>,
    },
    Empty,
}

impl InBody {
    /// The body of an HTTP/3 request: polls the stream once, so a request whose stream already
    /// ended (a GET, usually) gets an empty body and nobody waits on it.
    pub async fn h3(mut stream: H3Recv) -> InBody {
        let polled = std::future::poll_fn(|cx| Poll::Ready(poll_h3(&mut stream, cx))).await;
        match polled {
            Poll::Ready(None) => InBody::Empty,
            Poll::Ready(first) => InBody::H3 {
                first,
                stream: Box::new(stream),
            },
            Poll::Pending => InBody::H3 {
                first: None,
                stream: Box::new(stream),
            },
        }
    }
}

fn poll_h3(stream: &mut H3Recv, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Failure>>> {
    match stream.poll_recv_data(cx) {
        Poll::Ready(Ok(Some(mut chunk))) => {
            Poll::Ready(Some(Ok(chunk.copy_to_bytes(chunk.remaining()))))
        }
        Poll::Ready(Ok(None)) => Poll::Ready(None),
        Poll::Ready(Err(_)) => Poll::Ready(Some(Err(Failure::ClientGone))),
        Poll::Pending => Poll::Pending,
    }
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
            InBody::H3 { first, stream } => {
                if let Some(read) = first.take() {
                    return Poll::Ready(Some(read.map(Frame::data)));
                }
                poll_h3(stream, cx).map(|polled| polled.map(|chunk| chunk.map(Frame::data)))
            }
            InBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InBody::Hyper(incoming) => incoming.is_end_stream(),
            InBody::H3 { .. } => false,
            InBody::Empty => true,
        }
    }
}
