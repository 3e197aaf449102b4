//! Body types: the request body streamed upstream (with a read timeout on the client) and the
//! response body streamed back (which carries the machine's in-flight guard and pooled connection).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use tokio::time::Sleep;

use crate::conn::RequestGuard;
use crate::stats::InFlightGuard;

/// Boxed error of the proxy's bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client stopped sending its request body for longer than the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?}; the request was cut")]
pub struct BodyReadTimeout(pub Duration);

/// A request body on its way to a machine: the client's body, streamed frame by frame, with an
/// idle timeout between frames so a client that stalls mid-upload does not hold a machine slot.
pub struct UpstreamBody {
    inner: Option<Incoming>,
    timeout: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Keeps the client connection from going idle while its request body is being read.
    guard: Option<Arc<RequestGuard>>,
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: Incoming,
        timeout: Option<Duration>,
        guard: Option<&Arc<RequestGuard>>,
    ) -> Self {
        // Bodies that are already complete (GET, HEAD) need neither polling nor a timer.
        let (inner, guard) = if inner.is_end_stream() {
            (None, None)
        } else {
            (Some(inner), guard.cloned())
        };
        Self {
            inner,
            timeout,
            sleep: None,
            guard,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // The timer restarts for the next frame; dropping it here keeps a finished body cheap.
                this.sleep = None;
                if frame.is_none() {
                    this.inner = None;
                    this.guard = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let Some(timeout) = this.timeout else {
                    return Poll::Pending;
                };
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(BodyReadTimeout(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A response body on its way to the client.
pub enum ResponseBody {
    /// A machine's response, streamed.
    Upstream(Streamed),
    /// A response the proxy wrote itself (errors).
    Full(Option<Bytes>),
}

/// A machine's response body, holding what must live exactly as long as it.
pub struct Streamed {
    pub(crate) inner: Incoming,
    /// Released on drop: the request counts as in flight until its response has been sent.
    pub(crate) guard: Option<InFlightGuard>,
    /// Returned to the machine's pool on drop when the body was read to its end.
    pub(crate) sender: Option<SendRequest<UpstreamBody>>,
    pub(crate) done: bool,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if let (Some(sender), Some(guard)) = (self.sender.take(), self.guard.as_ref())
            && (self.done || self.inner.is_end_stream())
        {
            guard.stats().return_pooled(sender);
        }
    }
}

/// A response body on an HTTP/1 client connection: keeps its request in progress (so the
/// connection is not released to idle) until hyper has written the body and dropped it.
pub(crate) struct ClientBody {
    pub(crate) inner: ResponseBody,
    pub(crate) _guard: Option<Arc<RequestGuard>>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl ResponseBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    pub(crate) fn empty() -> Self {
        Self::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(streamed) => {
                let frame = ready!(Pin::new(&mut streamed.inner).poll_frame(cx));
                if frame.is_none() {
                    streamed.done = true;
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Upstream(streamed) => streamed.done || streamed.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream(streamed) => streamed.inner.size_hint(),
        }
    }
}
