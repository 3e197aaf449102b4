//! Response bodies on HTTP/2 client connections (served by hyper): a machine's body read from
//! its HTTP/1.1 connection as hyper asks for it, or a body the proxy wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use crate::stats::InFlightGuard;
use crate::upstream::Upstream;
use crate::wire::BodyTracker;

/// Boxed error of the proxy's bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Room read at a time from a machine.
const READ_SIZE: usize = 32 * 1024;

/// A response body on its way to an HTTP/2 client.
pub enum ResponseBody {
    /// A machine's response, streamed.
    Upstream(Box<UpstreamResponse>),
    /// A response the proxy wrote itself (errors).
    Full(Option<Bytes>),
}

/// A machine's response body, holding what must live exactly as long as it: the in-flight
/// guard (the request counts as in flight until its body has been sent) and the connection,
/// returned to the machine's pool when the body was read to its end.
pub struct UpstreamResponse {
    pub(crate) upstream: Option<Upstream>,
    /// Bytes read from the machine and not yet passed on.
    pub(crate) pending: BytesMut,
    pub(crate) tracker: BodyTracker,
    pub(crate) guard: Option<InFlightGuard>,
    /// Whether the connection may serve another request once the body has ended.
    pub(crate) reusable: bool,
}

impl UpstreamResponse {
    fn finish(&mut self) {
        if let (Some(upstream), Some(guard)) = (self.upstream.take(), self.guard.take())
            && self.reusable
        {
            guard.stats().return_pooled(upstream.stream);
        }
        self.guard = None;
    }

    /// Passes on what the framing says is body in `pending`.
    fn take_data(&mut self) -> Result<Option<Bytes>, BoxError> {
        let mut ranges = Vec::new();
        let used = self
            .tracker
            .feed(&self.pending, &mut |range| ranges.push(range))?;
        if used < self.pending.len() {
            // The machine sent more than its body: the connection is not reused.
            self.reusable = false;
        }
        let data = match ranges.as_slice() {
            [] => None,
            [only] if only.start == 0 && only.end == used => {
                Some(self.pending.split_to(used).freeze())
            }
            _ => {
                let mut data = BytesMut::with_capacity(used);
                for range in ranges {
                    data.extend_from_slice(&self.pending[range]);
                }
                Some(data.freeze())
            }
        };
        self.pending.clear();
        if self.tracker.is_done() {
            // hyper may drop a body it knows has ended without polling it again.
            self.finish();
        }
        Ok(data)
    }
}

impl Drop for UpstreamResponse {
    fn drop(&mut self) {
        // hyper drops a body that is empty from the start (HEAD, 204, 304) without polling it.
        if self.tracker.is_done() && self.pending.is_empty() {
            self.finish();
        }
    }
}

impl Body for UpstreamResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Bounded: every iteration passes data on, reads, or ends.
        loop {
            if this.tracker.is_done() {
                this.finish();
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                match this.take_data() {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) => continue,
                    Err(err) => return Poll::Ready(Some(Err(err))),
                }
            }
            let Some(upstream) = this.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            this.pending.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(
                Pin::new(&mut upstream.stream),
                cx,
                &mut this.pending,
            ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.upstream = None;
                    if !this.tracker.close() {
                        return Poll::Ready(Some(Err(
                            "the machine closed the connection before the end of its response"
                                .into(),
                        )));
                    }
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    this.upstream = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.tracker.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.tracker.remaining_hint() {
            Some(n) => SizeHint::with_exact(n + self.pending.len() as u64),
            None => SizeHint::default(),
        }
    }
}

impl ResponseBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
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
            Self::Upstream(response) => Pin::new(&mut **response).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Upstream(response) => response.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream(response) => response.size_hint(),
        }
    }
}
