//! Client connections: protocol choice, idle connections without HTTP state, and readable
//! answers to requests hyper rejects itself.
//!
//! **Idle memory.** hyper keeps an 8 KiB read buffer, an 8 KiB header write buffer and its
//! dispatcher state for as long as an HTTP/1 connection lives, even while a keep-alive client
//! sends nothing. So an idle connection holds no hyper state here: the socket waits for
//! readability on its own, and hyper's connection is created when bytes arrive. Once the
//! connection has served its requests and the client has been quiet for
//! [`crate::ProxyOptions::idle_release_after`], [`ClientIo`] reports end-of-file to hyper
//! (which then ends the connection cleanly, as if the client had closed it while idle), and
//! the loop takes the socket back with [`hyper::server::conn::http1::Connection::into_parts`].
//! The fake end-of-file is reported only when no request is in progress (no response body
//! and no request body alive) and no upgrade was asked for; if hyper held part of a request
//! head at that moment, the part comes back in `read_buf` and is replayed into the next hyper
//! connection, which then may not release again until that request has started (so a client
//! trickling a head cannot restart the header read timeout more than once).
//!
//! **Errors hyper answers itself.** For a malformed request head (400), an oversized one
//! (431) or an over-long target (414), hyper writes a bodiless response and closes. The
//! connection's writes pass through [`ClientIo`], which recognises such a response (a
//! `4xx` head written while no request is in progress and without the `x-request-id` every
//! proxied response carries) and writes the proxy's own answer instead: JSON when the head
//! asked for JSON in `Accept`, text otherwise.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::headers::ClientInfo;

/// The HTTP/2 connection preface a prior-knowledge client starts with.
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// State shared by one client connection, its requests and their bodies.
pub(crate) struct ConnShared {
    pub(crate) client: ClientInfo,
    /// Requests whose response or request body is still alive.
    in_progress: AtomicUsize,
    /// Requests started on this connection; a new one resets the head's `Accept` scan.
    started: AtomicUsize,
    /// Cleared while a replayed partial head has not become a request yet.
    may_release: AtomicBool,
    /// Set for good once a request asks for an upgrade: the socket then belongs to a tunnel.
    pinned: AtomicBool,
}

impl ConnShared {
    pub(crate) fn new(client: ClientInfo) -> Arc<ConnShared> {
        Arc::new(ConnShared {
            client,
            in_progress: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            may_release: AtomicBool::new(true),
            pinned: AtomicBool::new(false),
        })
    }

    /// Marks a request as started; it stays in progress until every clone of the guard drops.
    pub(crate) fn start_request(self: &Arc<Self>, upgrade: bool) -> Arc<RequestGuard> {
        if upgrade {
            self.pinned.store(true, Ordering::SeqCst);
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        self.may_release.store(true, Ordering::Relaxed);
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        Arc::new(RequestGuard(self.clone()))
    }

    /// A replayed partial head must become a request before the connection may be released
    /// again (see the module docs).
    pub(crate) fn may_release_after_replay(&self, replaying: bool) {
        self.may_release.store(!replaying, Ordering::Relaxed);
    }

    fn idle(&self) -> bool {
        self.in_progress.load(Ordering::SeqCst) == 0 && !self.pinned.load(Ordering::SeqCst)
    }
}

/// Keeps a request in progress; held by its response body and its request body.
pub(crate) struct RequestGuard(Arc<ConnShared>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The socket as hyper sees it on an HTTP/1 connection (see the module docs).
pub(crate) struct ClientIo {
    pub(crate) stream: TcpStream,
    shared: Arc<ConnShared>,
    /// Bytes read by an earlier hyper connection but not used by it.
    prefix: Bytes,
    release_after: Duration,
    idle_timer: Option<Pin<Box<Sleep>>>,
    idle_timer_armed: bool,
    /// End-of-file was reported to hyper without the client closing.
    pub(crate) released: bool,
    /// The client closed its side, or reading failed.
    pub(crate) closed: bool,
    /// The last write could not finish: hyper still holds response bytes to send, so the
    /// connection must not be released (hyper would drop them when it ends).
    write_pending: bool,
    /// Whether the request head being read asked for JSON, and for which request number.
    wants_json: bool,
    wants_json_for: usize,
    max_header_bytes: usize,
    /// The proxy's answer replacing hyper's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    /// After a replacement, the rest of hyper's error response is dropped.
    swallow: bool,
}

impl ClientIo {
    pub(crate) fn new(
        stream: TcpStream,
        shared: Arc<ConnShared>,
        prefix: Bytes,
        release_after: Duration,
        max_header_bytes: usize,
    ) -> ClientIo {
        ClientIo {
            stream,
            shared,
            prefix,
            release_after,
            idle_timer: None,
            idle_timer_armed: false,
            released: false,
            closed: false,
            write_pending: false,
            wants_json: false,
            wants_json_for: usize::MAX,
            max_header_bytes,
            replacement: None,
            swallow: false,
        }
    }

    /// Notes whether a request head asks for JSON; only bytes read between requests are
    /// scanned, so bodies cost nothing.
    fn scan_head(&mut self, read: &[u8]) {
        let started = self.shared.started.load(Ordering::Relaxed);
        if started != self.wants_json_for {
            self.wants_json_for = started;
            self.wants_json = false;
        }
        if !self.wants_json {
            self.wants_json = accepts_json(read);
        }
    }

    /// Whether hyper is about to write its own error response.
    fn is_hyper_error(&self, buf: &[u8]) -> bool {
        if !self.shared.idle() || buf.len() < 12 {
            return false;
        }
        let status_line = buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.0 4");
        status_line && !contains_ignore_case(head_of(buf), b"x-request-id:")
    }

    /// Tracks whether hyper has response bytes it could not send yet. When a blocked write
    /// finishes between requests, the task is woken so that hyper reads again and the
    /// connection can be released (hyper reads before it writes in each round).
    fn note_write(&mut self, cx: &Context<'_>, pending: bool) {
        if pending {
            self.write_pending = true;
        } else if self.write_pending {
            self.write_pending = false;
            if self.shared.idle() {
                cx.waker().wake_by_ref();
            }
        }
    }

    fn replacement_for(&self, buf: &[u8]) -> Vec<u8> {
        let error = match &buf[9..12] {
            b"431" => ProxyError::HeadersTooLarge {
                limit: self.max_header_bytes,
            },
            b"414" => ProxyError::TargetTooLong,
            _ => ProxyError::MalformedRequest,
        };
        error.to_raw_response(self.wants_json)
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.released {
            return Poll::Ready(Ok(()));
        }
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.idle_timer_armed = false;
                if buf.filled().len() == before {
                    this.closed = true;
                } else if this.shared.idle() {
                    this.scan_head(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => {
                this.closed = true;
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                if this.write_pending
                    || !this.shared.idle()
                    || !this.shared.may_release.load(Ordering::Relaxed)
                {
                    return Poll::Pending;
                }
                if this.release_after.is_zero() {
                    this.released = true;
                    return Poll::Ready(Ok(()));
                }
                let deadline = Instant::now() + this.release_after;
                let timer = this
                    .idle_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.idle_timer_armed {
                    // Moving a registered deadline later is cheap in tokio, so doing this
                    // between every two requests of a busy connection costs little.
                    timer.as_mut().reset(deadline);
                    this.idle_timer_armed = true;
                }
                ready!(timer.as_mut().poll(cx));
                this.released = true;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.swallow {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.replacement.is_none() && this.is_hyper_error(buf) {
            this.replacement = Some((this.replacement_for(buf), 0));
        }
        if let Some((bytes, written)) = &mut this.replacement {
            // Bounded: every iteration writes at least one byte or returns.
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut this.stream).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            this.replacement = None;
            this.swallow = true;
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_write(cx, result.is_pending());
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.swallow || this.replacement.is_some() || this.shared.idle() {
            // Between requests hyper writes only its own responses: look at them whole.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note_write(cx, result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.released {
            // The client did not close: the socket goes back to the idle loop.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// The head part of a response buffer (up to the blank line), for header lookups.
fn head_of(buf: &[u8]) -> &[u8] {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    &buf[..end]
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether a chunk of a request head has an `Accept` line that mentions JSON.
fn accepts_json(chunk: &[u8]) -> bool {
    chunk.split(|&b| b == b'\n').any(|line| {
        line.len() > 7
            && line[..7].eq_ignore_ascii_case(b"accept:")
            && contains_ignore_case(&line[7..], b"json")
    })
}

/// Waits for the first bytes of a new connection and tells whether they are the HTTP/2
/// preface. Returns `None` when the client closes or sends nothing within `timeout`.
pub(crate) async fn first_bytes_are_h2(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 24];
    // Bounded by the deadline; a preface split over several packets is rare, so re-peeking
    // after a short pause is simpler than buffering.
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_json_is_found_in_any_line_of_a_head_chunk() {
        assert!(accepts_json(
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n"
        ));
        assert!(accepts_json(
            b"x\r\naccept:text/html, application/problem+JSON\r\n"
        ));
        assert!(!accepts_json(b"GET /json HTTP/1.1\r\nHost: json\r\n\r\n"));
        assert!(!accepts_json(
            b"GET / HTTP/1.1\r\nAccept: text/plain\r\n\r\n"
        ));
    }

    #[test]
    fn hyper_error_heads_are_told_from_proxied_responses() {
        let head =
            head_of(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nbody x-request-id:");
        assert!(!contains_ignore_case(head, b"x-request-id:"));
        let proxied = b"HTTP/1.1 404 Not Found\r\nX-Request-Id: 1\r\n\r\n";
        assert!(contains_ignore_case(head_of(proxied), b"x-request-id:"));
    }
}
