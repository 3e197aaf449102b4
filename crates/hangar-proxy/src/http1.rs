//! HTTP/1 client connections, served by the proxy's own loop.
//!
//! One task per connection reads a request head, routes it, writes the machine's head
//! (and the body bytes that came with it) in one write, passes the request body through as it
//! arrives, and passes the response back the same way: the client's bytes are parsed once
//! (`httparse`), bodies are never re-encoded (a chunked body is tracked, not decoded, except
//! for an HTTP/1.0 client), and both sockets are driven by the same task, so a request costs
//! about two reads and two writes.
//!
//! **Idle memory.** Between requests a keep-alive connection holds its socket and its
//! [`Watchdog`] timer: the read buffer goes back to the thread's spares (`buffers`) when the
//! last request's bytes are used up, and is taken again when the client sends more.
//! Pipelined requests stay in the buffer and are served in order.
//!
//! **Errors.** A head the proxy cannot parse gets a 400 (431 when too large, 414 when even
//! the request line does not fit), JSON when the head asked for JSON in `Accept`, and the
//! connection closes after it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{Instant as TokioInstant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::buffers::{self, Buf};
use crate::error::ProxyError;
use crate::headers::{ClientInfo, RequestFacts, new_request_id};
use crate::proxy::{AccessEntry, Answered, Proxy, RequestLine, Routed};
use crate::snapshot::ConcurrencyKind;
use crate::stats::InFlightGuard;
use crate::upstream::{HeadError, ResponseHead, Upstream, read_response_head, write_two};
use crate::wire::{self, BodyTracker, Framing, MAX_HEADERS, push_decimal};

/// Room read at a time while a body streams.
const BODY_READ: usize = 64 * 1024;
/// How long a connection closed after an error keeps reading (and discarding) what the client
/// still sends, so that the kernel does not reset it before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// Serves one HTTP/1 connection until the client closes it, it idles for the header read
/// timeout, or `shutdown` is cancelled between two requests.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    client: ClientInfo,
    shutdown: CancellationToken,
) {
    let mut buf = Buf::default();
    let idle_timeout = proxy.opts.header_read_timeout;
    let mut watchdog = Watchdog::new(idle_timeout);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    // Bounded by the client: every iteration serves one request or ends the connection.
    loop {
        if buf.is_empty() {
            buf.release();
            // Readability first: a connection woken by its client's bytes then polls nothing
            // else (the cancellation check takes a lock).
            let readable = tokio::select! {
                biased;
                readable = stream.readable() => readable.is_ok(),
                () = &mut cancelled => return,
                () = watchdog.expired() => false,
            };
            if !readable {
                return;
            }
        }
        if proxy.stopping.load(Ordering::Relaxed) {
            return;
        }
        // Boxed: the request's state is allocated while a request runs, not for the
        // connection's whole life.
        let next = Box::pin(serve_request(
            &proxy,
            &mut stream,
            &mut buf,
            &client,
            &mut watchdog,
        ))
        .await;
        match next {
            Next::KeepAlive => watchdog.start(TokioInstant::now(), idle_timeout),
            Next::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            Next::Linger => {
                linger(&mut stream).await;
                return;
            }
            Next::Gone => return,
        }
    }
}

/// What happens to the connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    /// Close after the response.
    Close,
    /// Close, but the client may still be sending: read and drop it for a while first.
    Linger,
    /// The client is gone, or the socket belongs to nobody any more.
    Gone,
}

/// A request head, parsed and routed.
struct Request {
    head_len: usize,
    minor: u8,
    is_head: bool,
    /// Safe to send again on a fresh connection when a pooled one turns out closed: an
    /// idempotent method without a body.
    retryable: bool,
    keep_alive: bool,
    upgrade: bool,
    framing: Framing,
    wants_json: bool,
    request_id: Vec<u8>,
    access: Option<AccessEntry>,
}

type RouteResult = Result<Routed, (ProxyError, Option<Arc<crate::balance::CompiledApp>>)>;

/// A head that is refused before it can be routed.
struct Rejected {
    error: ProxyError,
    wants_json: bool,
    minor: u8,
}

enum Parse {
    Complete(Box<(Request, RouteResult)>),
    Partial,
    Rejected(Rejected),
}

/// Parses the head at the start of `buf`, and routes it when complete.
fn parse(proxy: &Proxy, buf: &[u8], client: &ClientInfo) -> Parse {
    let max = proxy.opts.max_header_bytes.max(8192);
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut storage);
    let reject = |error, minor| {
        Parse::Rejected(Rejected {
            error,
            wants_json: accepts_json(&buf[..buf.len().min(max)]),
            minor,
        })
    };
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(_) if buf.len() < max => return Parse::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            let line_ends = buf[..buf.len().min(max)].contains(&b'\n');
            let error = if line_ends {
                ProxyError::HeadersTooLarge { limit: max }
            } else {
                ProxyError::TargetTooLong
            };
            return reject(error, 1);
        }
        Err(_) => return reject(ProxyError::MalformedRequest, 1),
    };
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return reject(ProxyError::MalformedRequest, 1);
    };
    let fields = parsed.headers.iter().map(|f| (f.name.as_bytes(), f.value));
    let facts = RequestFacts::scan(fields.clone());
    let Ok(framing) = facts.length.request() else {
        return reject(ProxyError::MalformedRequest, minor);
    };
    if facts.connection.overflowed() || facts.duplicate_host {
        return reject(ProxyError::MalformedRequest, minor);
    }
    let upgrade = minor == 1 && facts.is_upgrade();
    let Some((target, authority)) = origin_form(path.as_bytes()) else {
        return reject(ProxyError::MalformedRequest, minor);
    };
    if method == "CONNECT" {
        return reject(ProxyError::MalformedRequest, minor);
    }
    let request_id = facts.request_id();
    let keep_alive = if minor == 0 {
        facts.connection.has(b"keep-alive")
    } else {
        !facts.connection.has(b"close")
    };
    let line = RequestLine {
        method: method.as_bytes(),
        target,
        authority,
        request_id: &request_id,
        framing,
        upgrade,
    };
    let routed = proxy.route(&line, fields, &facts, client);
    let request = Request {
        head_len,
        minor,
        is_head: method == "HEAD",
        retryable: wire::retryable(method.as_bytes(), framing),
        keep_alive,
        upgrade,
        framing,
        wants_json: facts.wants_json,
        request_id,
        access: AccessEntry::capture(proxy, method.as_bytes(), path.as_bytes()),
    };
    Parse::Complete(Box::new((request, routed)))
}

/// The target in origin form, and the authority of an absolute-form target. `None` for
/// targets the proxy does not serve (authority form, as used by `CONNECT`).
fn origin_form(path: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if path.starts_with(b"/") || path == b"*" {
        return Some((path, None));
    }
    let scheme_end = path.windows(3).position(|w| w == b"://")?;
    let scheme = &path[..scheme_end];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return None;
    }
    let rest = &path[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    let target: &[u8] = if target.is_empty() || target.starts_with(b"?") {
        // `http://host?q` has an empty path: the machine gets `/`, the query is dropped.
        b"/"
    } else {
        target
    };
    Some((target, Some(authority)))
}

/// Whether the bytes of a head have an `Accept` line that mentions JSON (for refused heads,
/// which are not parsed).
fn accepts_json(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        line.len() > 7
            && line[..7].eq_ignore_ascii_case(b"accept:")
            && line[7..]
                .windows(4)
                .any(|w| w.eq_ignore_ascii_case(b"json"))
    })
}

/// Serves one request whose first bytes are in `buf` or readable on `stream`.
async fn serve_request(
    proxy: &Proxy,
    stream: &mut TcpStream,
    buf: &mut Buf,
    client: &ClientInfo,
    watchdog: &mut Watchdog,
) -> Next {
    let started = Instant::now();
    buf.ensure();
    watchdog.start(
        TokioInstant::from_std(started),
        proxy.opts.header_read_timeout,
    );
    // Bounded: every iteration reads more of a head that may not exceed the limit.
    let (request, routed) = loop {
        if !buf.is_empty() {
            match parse(proxy, buf, client) {
                Parse::Complete(parsed) => break *parsed,
                Parse::Partial => {}
                Parse::Rejected(rejected) => {
                    let id = new_request_id();
                    let answer = rejected.error.to_raw_response(
                        rejected.wants_json,
                        rejected.minor,
                        &id,
                        false,
                        false,
                    );
                    let _ = stream.write_all(&answer).await;
                    return Next::Linger;
                }
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buffers::SIZE);
        }
        let read = tokio::select! {
            read = stream.read_buf(&mut **buf) => read,
            () = watchdog.expired() => return Next::Gone,
        };
        match read {
            Ok(n) if n > 0 => {}
            // Closed or failed; a client too slow to send its head is cut above.
            _ => return Next::Gone,
        }
    };
    buf.drain(..request.head_len);
    let opened = match routed {
        Ok(routed) => {
            let pooled = routed.app.kind == ConcurrencyKind::Requests && !request.upgrade;
            match proxy.open(&routed.app, pooled).await {
                Ok((upstream, guard)) => Ok((routed, upstream, guard, pooled)),
                Err(error) => Err((error, Some(routed.app))),
            }
        }
        Err(failed) => Err(failed),
    };
    let (routed, upstream, guard, pooled) = match opened {
        Ok(opened) => opened,
        Err((error, app)) => {
            let body_done = request.framing == Framing::Empty;
            return answer_error(
                proxy,
                stream,
                client,
                &request,
                &error,
                app.as_deref(),
                started,
                body_done,
            )
            .await;
        }
    };
    let exchange = Exchange {
        proxy,
        request: &request,
        routed: &routed,
        client,
        started,
        pooled,
    };
    exchange.run(stream, buf, upstream, guard, watchdog).await
}

/// Writes an error the proxy answers itself. The connection stays open when the client wants
/// that and the request's body has been read (`body_done`): an unread body would be taken
/// for the next request.
#[allow(clippy::too_many_arguments)]
async fn answer_error(
    proxy: &Proxy,
    stream: &mut TcpStream,
    client: &ClientInfo,
    request: &Request,
    error: &ProxyError,
    app: Option<&crate::balance::CompiledApp>,
    started: Instant,
    body_done: bool,
) -> Next {
    let keep_alive = request.keep_alive && body_done;
    let answer = error.to_raw_response(
        request.wants_json,
        request.minor,
        &request.request_id,
        keep_alive,
        request.is_head,
    );
    proxy.answered(&Answered {
        app,
        machine: None,
        status: error.status().as_u16(),
        error: Some(error),
        client,
        request_id: &request.request_id,
        started,
        access: request.access.as_ref(),
    });
    if stream.write_all(&answer).await.is_err() {
        return Next::Gone;
    }
    match (keep_alive, body_done) {
        (true, _) => Next::KeepAlive,
        (false, true) => Next::Close,
        (false, false) => Next::Linger,
    }
}

/// How sending a request and reading its response head failed.
enum Failure {
    ClientBodyTimeout(Duration),
    ClientMalformed,
    ClientGone,
    Upstream { detail: String, started: bool },
    UpstreamTimeout,
}

/// One request on its way to a machine and back.
struct Exchange<'a> {
    proxy: &'a Proxy,
    request: &'a Request,
    routed: &'a Routed,
    client: &'a ClientInfo,
    started: Instant,
    pooled: bool,
}

impl Exchange<'_> {
    async fn run(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        mut upstream: Upstream,
        guard: InFlightGuard,
        watchdog: &mut Watchdog,
    ) -> Next {
        let mut body = BodyTracker::new(self.request.framing);
        let Ok(first) = body.feed(buf, &mut |_| {}) else {
            return self
                .fail(stream, &ProxyError::MalformedRequest, false)
                .await;
        };
        let mut ubuf = Buf::take();
        let mut result = self
            .send(
                stream,
                buf,
                first,
                &mut upstream,
                &mut body,
                &mut ubuf,
                watchdog,
            )
            .await;
        if let Err(Failure::Upstream { started: false, .. }) = &result
            && upstream.reused
            && self.request.retryable
        {
            // A pooled connection the machine had closed: nothing was processed, send again.
            match self.proxy.reopen(&upstream).await {
                Ok(fresh) => {
                    upstream = fresh;
                    ubuf.clear();
                    result = self
                        .send(
                            stream,
                            buf,
                            0,
                            &mut upstream,
                            &mut body,
                            &mut ubuf,
                            watchdog,
                        )
                        .await;
                }
                Err(detail) => {
                    result = Err(Failure::Upstream {
                        detail,
                        started: false,
                    });
                }
            }
        }
        let machine_id = guard.stats().machine_id.as_str();
        let head_len = match result {
            Ok(len) => len,
            Err(failure) => {
                let body_done = body.is_done();
                let error = match failure {
                    Failure::ClientGone => return Next::Gone,
                    Failure::ClientBodyTimeout(timeout) => ProxyError::ClientBodyTimeout(timeout),
                    Failure::ClientMalformed => ProxyError::MalformedRequest,
                    Failure::Upstream { detail, .. } => self.upstream_failed(machine_id, detail),
                    Failure::UpstreamTimeout => ProxyError::UpstreamTimeout {
                        app: self.routed.app.app.clone(),
                        machine_id: machine_id.to_owned(),
                        timeout: self.proxy.opts.upstream_timeout,
                    },
                };
                return self.fail(stream, &error, body_done).await;
            }
        };
        self.respond(
            stream,
            buf,
            upstream,
            guard,
            &mut ubuf,
            head_len,
            body.is_done(),
        )
        .await
    }

    fn upstream_failed(&self, machine_id: &str, detail: String) -> ProxyError {
        ProxyError::UpstreamFailed {
            app: self.routed.app.app.clone(),
            machine_id: machine_id.to_owned(),
            detail,
        }
    }

    async fn fail(&self, stream: &mut TcpStream, error: &ProxyError, body_done: bool) -> Next {
        answer_error(
            self.proxy,
            stream,
            self.client,
            self.request,
            error,
            Some(&self.routed.app),
            self.started,
            body_done,
        )
        .await
    }

    /// Writes the head and the body bytes that came with it (`buf[..first]`), then passes the
    /// rest of the body while waiting for the response head, which is left at the start of
    /// `ubuf`; returns its length. Interim (`1xx`) responses are passed to the client.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        first: usize,
        upstream: &mut Upstream,
        body: &mut BodyTracker,
        ubuf: &mut Vec<u8>,
        watchdog: &mut Watchdog,
    ) -> Result<usize, Failure> {
        let upstream_timeout = self.proxy.opts.upstream_timeout;
        // The timer is only set when the write has to wait (a machine not reading).
        let write = write_two(&mut upstream.stream, &self.routed.head, &buf[..first]);
        let written = tokio::time::timeout(upstream_timeout, write).await;
        buf.drain(..first);
        let failed = match written {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(format!("sending the request: {err}")),
            Err(_) => Some(format!("the machine read nothing for {upstream_timeout:?}")),
        };
        if let Some(detail) = failed {
            return Err(Failure::Upstream {
                detail,
                started: false,
            });
        }
        let minor = self.request.minor;
        let (mut client_read, mut client_write) = stream.split();
        let (mut up_read, mut up_write) = upstream.stream.split();
        let read_head = read_final_head(&mut up_read, ubuf, &mut client_write, minor);
        if body.is_done() {
            watchdog.start(TokioInstant::now(), upstream_timeout);
            return tokio::select! {
                result = read_head => result,
                () = watchdog.expired() => Err(Failure::UpstreamTimeout),
            };
        }
        let send_body = copy_body(
            &mut client_read,
            buf,
            &mut up_write,
            body,
            self.proxy.opts.body_read_timeout,
            upstream_timeout,
        );
        tokio::pin!(read_head, send_body);
        // The machine's time to answer counts from the end of the request body.
        let sleep = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
        tokio::pin!(sleep);
        let mut sending = true;
        // Bounded: the body branch ends once, then the head or the timer ends the loop.
        loop {
            tokio::select! {
                biased;
                head = &mut read_head => return head,
                sent = &mut send_body, if sending => {
                    sending = false;
                    sleep.as_mut().reset(tokio::time::Instant::now() + upstream_timeout);
                    match sent {
                        Ok(()) => {}
                        // The machine stopped reading; it may have answered already.
                        Err(BodyError::Upstream) => {}
                        Err(BodyError::ClientTimeout(timeout)) => {
                            return Err(Failure::ClientBodyTimeout(timeout));
                        }
                        Err(BodyError::ClientMalformed) => return Err(Failure::ClientMalformed),
                        Err(BodyError::ClientGone) => return Err(Failure::ClientGone),
                    }
                }
                () = &mut sleep, if !sending => return Err(Failure::UpstreamTimeout),
            }
        }
    }

    /// Passes the response (head at the start of `ubuf`) to the client.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        mut upstream: Upstream,
        guard: InFlightGuard,
        ubuf: &mut Vec<u8>,
        head_len: usize,
        request_done: bool,
    ) -> Next {
        let machine_id = guard.stats().machine_id.as_str();
        let head = match self.client_head(&ubuf[..head_len], request_done) {
            Ok(head) => head,
            Err(detail) => {
                let error = self.upstream_failed(machine_id, detail);
                return self.fail(stream, &error, request_done).await;
            }
        };
        self.proxy.answered(&Answered {
            app: Some(&self.routed.app),
            machine: Some(machine_id),
            status: head.status,
            error: None,
            client: self.client,
            request_id: &self.request.request_id,
            started: self.started,
            access: self.request.access.as_ref(),
        });
        if head.status == 101 {
            let written = write_two(stream, &head.bytes, &ubuf[head_len..]).await;
            if written.is_ok() && upstream.stream.write_all(buf).await.is_ok() {
                buf.clear();
                if let Err(err) = tokio::io::copy_bidirectional(stream, &mut upstream.stream).await
                {
                    tracing::debug!(error = %err, "upgraded connection ended with an error");
                }
            }
            drop(guard);
            return Next::Gone;
        }

        let upstream_timeout = self.proxy.opts.upstream_timeout;
        let client_timeout = self
            .proxy
            .opts
            .body_read_timeout
            .unwrap_or(upstream_timeout);
        let mut body = BodyTracker::new(head.framing);
        let mut decoded = Vec::new();
        let mut extra = false;
        let mut start = head_len;
        let mut head_bytes = head.bytes;
        // Bounded by the machine's body: every iteration passes at least one byte or ends.
        loop {
            let chunk = &ubuf[start..];
            let fed = body.feed(chunk, &mut |range| {
                if head.decode {
                    decoded.extend_from_slice(&chunk[range]);
                }
            });
            // A broken body while the response is under way: all that can be done is to cut it.
            let Ok(used) = fed else {
                return Next::Gone;
            };
            extra |= used < chunk.len();
            let out: &[u8] = if head.decode {
                &decoded
            } else {
                &chunk[..used]
            };
            // A client that reads nothing for the client timeout loses the response (and frees
            // the machine's slot).
            let written = tokio::time::timeout(client_timeout, write_two(stream, &head_bytes, out));
            if !matches!(written.await, Ok(Ok(()))) {
                return Next::Gone;
            }
            head_bytes.clear();
            decoded.clear();
            if body.is_done() {
                break;
            }
            ubuf.clear();
            start = 0;
            if body
                .remaining_hint()
                .is_none_or(|n| n > buffers::SIZE as u64)
            {
                ubuf.reserve(BODY_READ);
            }
            let read = tokio::time::timeout(upstream_timeout, upstream.stream.read_buf(ubuf));
            let Ok(read) = read.await else {
                // The machine stalled mid-body: all that can be done is to cut the response.
                return Next::Gone;
            };
            match read {
                Ok(0) => {
                    if !body.close() {
                        return Next::Gone;
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => return Next::Gone,
            }
        }
        if self.pooled && head.upstream_keeps_alive && request_done && !extra {
            guard.stats().return_pooled(upstream.stream);
        }
        drop(guard);
        if head.keep_client {
            Next::KeepAlive
        } else if request_done {
            Next::Close
        } else {
            Next::Linger
        }
    }

    /// The response head the client receives.
    fn client_head(&self, raw: &[u8], request_done: bool) -> Result<ClientHead, String> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = ResponseHead::parse(raw, &mut storage).map_err(|err| match err {
            HeadError::Invalid(detail) | HeadError::Closed { detail, .. } => detail,
        })?;
        let request = self.request;
        if head.status == 101 && !request.upgrade {
            return Err("the machine switched protocols without being asked to".to_owned());
        }
        let framing = head
            .framing(request.is_head)
            .map_err(|err| format!("the response has {err}"))?;
        // An HTTP/1.0 client cannot read chunked coding: it gets the data, then the close.
        let decode = framing == Framing::Chunked && request.minor == 0;
        let keep_client = request.keep_alive
            && request_done
            && head.status != 101
            && framing != Framing::Close
            && !decode;
        let mut out = Buf::take();
        let reason: &[u8] = if head.reason.is_empty() {
            b"OK"
        } else {
            head.reason
        };
        out.extend_from_slice(if request.minor == 0 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        push_decimal(&mut out, u64::from(head.status));
        out.push(b' ');
        out.extend_from_slice(reason);
        out.extend_from_slice(b"\r\n");
        for (name, value) in head.kept_fields() {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(&request.request_id);
        out.extend_from_slice(b"\r\n");
        match framing {
            Framing::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                push_decimal(&mut out, n);
                out.extend_from_slice(b"\r\n");
            }
            Framing::Chunked if !decode => {
                // The machine's codings as it sent them (`gzip, chunked` stays that).
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(head.facts.transfer_encoding.unwrap_or(b"chunked"));
                out.extend_from_slice(b"\r\n");
            }
            Framing::Empty if request.is_head || head.status == 304 => {
                if let Some(length) = head.facts.content_length {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(length);
                    out.extend_from_slice(b"\r\n");
                }
            }
            _ => {}
        }
        if head.status == 101 {
            out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
            out.extend_from_slice(head.facts.upgrade.unwrap_or(b""));
            out.extend_from_slice(b"\r\n");
        } else if !keep_client {
            out.extend_from_slice(b"connection: close\r\n");
        } else if request.minor == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(ClientHead {
            bytes: out,
            status: head.status,
            framing,
            decode,
            keep_client,
            upstream_keeps_alive: head.keeps_alive() && framing != Framing::Close,
        })
    }
}

struct ClientHead {
    bytes: Buf,
    status: u16,
    framing: Framing,
    decode: bool,
    keep_client: bool,
    upstream_keeps_alive: bool,
}

/// One timer per connection for all of its timeouts but the body's: idle between requests,
/// reading a head, waiting for the machine's head. A phase starts with a limit; the timer is
/// registered again only when the phase must end before the registered deadline, and a
/// wake-up before the phase's end re-arms it. A busy connection thus touches the runtime's
/// timer about once per limit instead of twice per request (which cost about 6% of the
/// proxy's user time).
pub(crate) struct Watchdog {
    sleep: Pin<Box<Sleep>>,
    phase_end: TokioInstant,
}

impl Watchdog {
    fn new(limit: Duration) -> Self {
        let phase_end = TokioInstant::now() + limit;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(phase_end)),
            phase_end,
        }
    }

    /// Starts a phase that must end within `limit` of `now`.
    fn start(&mut self, now: TokioInstant, limit: Duration) {
        self.phase_end = now + limit;
        if self.sleep.deadline() > self.phase_end {
            self.sleep.as_mut().reset(self.phase_end);
        }
    }

    /// Resolves once the phase in progress has run past its end.
    async fn expired(&mut self) {
        // Bounded: after an early wake-up the timer is set to the phase's end.
        loop {
            self.sleep.as_mut().await;
            if TokioInstant::now() >= self.phase_end {
                return;
            }
            self.sleep.as_mut().reset(self.phase_end);
        }
    }
}

/// Reads the machine's final response head into `ubuf`, passing interim ones to an HTTP/1.1
/// client.
async fn read_final_head(
    upstream: &mut ReadHalf<'_>,
    ubuf: &mut Vec<u8>,
    client: &mut WriteHalf<'_>,
    minor: u8,
) -> Result<usize, Failure> {
    // Bounded: a machine sending endless interim heads is cut by the upstream timeout.
    loop {
        let head = read_response_head(upstream, ubuf)
            .await
            .map_err(|err| match err {
                HeadError::Closed { started, detail } => Failure::Upstream { detail, started },
                HeadError::Invalid(detail) => Failure::Upstream {
                    detail,
                    started: true,
                },
            })?;
        if (100..200).contains(&head.status) && head.status != 101 {
            if minor >= 1 && client.write_all(&ubuf[..head.len]).await.is_err() {
                return Err(Failure::ClientGone);
            }
            ubuf.drain(..head.len);
            continue;
        }
        return Ok(head.len);
    }
}

enum BodyError {
    ClientTimeout(Duration),
    ClientMalformed,
    ClientGone,
    Upstream,
}

/// Passes the rest of a request body from the client to the machine. Bytes after the body
/// (a pipelined request) stay in `buf`.
///
/// The tracker moves on only once a piece has been written: when the machine answers early
/// and this future is dropped mid-write, or the write fails, the body counts as unfinished,
/// so neither the client connection (whose unread body would be parsed as a request) nor
/// the machine's (which would read the next request as body) is used again.
async fn copy_body(
    client: &mut ReadHalf<'_>,
    buf: &mut Vec<u8>,
    upstream: &mut WriteHalf<'_>,
    body: &mut BodyTracker,
    read_timeout: Option<Duration>,
    write_timeout: Duration,
) -> Result<(), BodyError> {
    buf.reserve(BODY_READ);
    // Bounded by the client's body: every iteration reads at least one byte or returns.
    while !body.is_done() {
        let read = match read_timeout {
            Some(timeout) => tokio::time::timeout(timeout, client.read_buf(buf))
                .await
                .map_err(|_| BodyError::ClientTimeout(timeout))?,
            None => client.read_buf(buf).await,
        };
        match read {
            Ok(n) if n > 0 => {}
            _ => return Err(BodyError::ClientGone),
        }
        let mut next = body.clone();
        let used = next
            .feed(buf, &mut |_| {})
            .map_err(|_| BodyError::ClientMalformed)?;
        match tokio::time::timeout(write_timeout, upstream.write_all(&buf[..used])).await {
            Ok(Ok(())) => {}
            // Failed, or the machine stopped reading for the whole timeout.
            _ => return Err(BodyError::Upstream),
        }
        *body = next;
        buf.drain(..used);
    }
    Ok(())
}

/// Reads and drops what a client still sends after the answer that closes its connection.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut sink = vec![0u8; 4096];
    let mut total = 0;
    // Bounded by the deadline and the byte limit.
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_origin_form() {
        assert_eq!(origin_form(b"/a?b"), Some((&b"/a?b"[..], None)));
        assert_eq!(origin_form(b"*"), Some((&b"*"[..], None)));
        assert_eq!(
            origin_form(b"http://app.localhost:8080/x?y"),
            Some((&b"/x?y"[..], Some(&b"app.localhost:8080"[..])))
        );
        assert_eq!(
            origin_form(b"HTTP://app.localhost"),
            Some((&b"/"[..], Some(&b"app.localhost"[..])))
        );
        assert_eq!(origin_form(b"app.localhost:443"), None);
        assert_eq!(origin_form(b"ftp://x/"), None);
    }

    #[test]
    fn accept_json_is_found_in_any_line_of_a_head() {
        assert!(accepts_json(
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n"
        ));
        assert!(accepts_json(
            b"x\r\naccept:text/html, application/problem+JSON\r\n"
        ));
        assert!(!accepts_json(b"GET /json HTTP/1.1\r\nHost: json\r\n\r\n"));
    }
}
