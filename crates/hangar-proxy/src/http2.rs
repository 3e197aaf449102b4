//! HTTP/2 prior-knowledge (h2c) client connections, served by hyper. Each request goes to its
//! machine over HTTP/1.1 like any other: the head is written by the same rules
//! (`headers::write_request_head`), the body is sent as it arrives (chunked when its length
//! is unknown), then the response head is read and the body streams back as hyper asks for it
//! ([`crate::body::UpstreamResponse`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::server::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use crate::balance::CompiledApp;
use crate::body::{ResponseBody, UpstreamResponse};
use crate::error::ProxyError;
use crate::headers::{ClientInfo, RequestFacts};
use crate::proxy::{AccessEntry, Answered, Proxy, ProxyOptions, RequestLine};
use crate::snapshot::ConcurrencyKind;
use crate::upstream::{HeadError, ResponseHead, read_response_head};
use crate::wire::{self, BodyTracker, Framing, MAX_HEADERS};

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's HTTP/2 settings, made once per listener.
pub(crate) struct Server {
    builder: http2::Builder<TokioExecutor>,
}

impl Server {
    pub(crate) fn new(opts: &ProxyOptions) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX));
        Self { builder }
    }

    /// Serves one h2c connection until the client closes it, `shutdown` is cancelled, or no
    /// request has started for the idle timeout (`header_read_timeout`, as for HTTP/1). The
    /// last two end it gracefully: streams in progress finish.
    pub(crate) async fn serve(
        &self,
        proxy: Arc<Proxy>,
        stream: TcpStream,
        client: ClientInfo,
        shutdown: CancellationToken,
    ) {
        let idle_timeout = proxy.opts.header_read_timeout;
        let client = Arc::new(client);
        let epoch = TokioInstant::now();
        // Milliseconds from `epoch` to the latest request's start.
        let last_request = Arc::new(AtomicU64::new(0));
        let seen = last_request.clone();
        let service = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            let client = client.clone();
            let since_epoch = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            seen.store(since_epoch, Ordering::Relaxed);
            async move { Ok::<_, Infallible>(Box::pin(handle(&proxy, req, &client)).await) }
        });
        // Boxed: inline, the HTTP/2 state would enlarge every connection's task.
        let mut conn = Box::pin(self.builder.serve_connection(TokioIo::new(stream), service));
        let idle_until =
            || epoch + Duration::from_millis(last_request.load(Ordering::Relaxed)) + idle_timeout;
        let idle = tokio::time::sleep_until(idle_until());
        tokio::pin!(idle);
        // Bounded: each wake-up either ends the connection or moves the idle deadline on.
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
                () = &mut idle => {
                    let until = idle_until();
                    if TokioInstant::now() >= until {
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    idle.as_mut().reset(until);
                }
            }
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "client connection ended with an error");
        }
    }
}

/// Waits for the first bytes of a new connection and tells whether they are the HTTP/2
/// preface. Returns `None` when the client closes or sends nothing within `timeout`.
pub(crate) async fn starts_with_preface(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = TokioInstant::now() + timeout;
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
        if TokioInstant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

type Failed = (ProxyError, Option<Arc<CompiledApp>>);

async fn handle(
    proxy: &Proxy,
    req: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // HTTP/2 may split `cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
    let cookies: Vec<&[u8]> = parts
        .headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let cookie = (cookies.len() > 1).then(|| cookies.join(&b"; "[..]));
    let mut fields: Vec<(&[u8], &[u8])> = parts
        .headers
        .iter()
        .filter(|(name, _)| cookie.is_none() || *name != hyper::header::COOKIE)
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .collect();
    if let Some(cookie) = &cookie {
        fields.push((b"cookie", cookie));
    }
    let fields = fields.iter().copied();
    let facts = RequestFacts::scan(fields.clone());
    let request_id = facts.request_id();
    let framing = match facts.length.request() {
        Ok(Framing::Length(n)) => Framing::Length(n),
        _ if body.is_end_stream() => Framing::Empty,
        _ => Framing::Chunked,
    };
    let method = parts.method.as_str().as_bytes();
    let target = parts
        .uri
        .path_and_query()
        .map_or(&b"/"[..], |pq| pq.as_str().as_bytes());
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    let access = AccessEntry::capture(proxy, method, target);
    let is_head = parts.method == hyper::Method::HEAD;
    let retryable = wire::retryable(method, framing);
    let routed = if parts.method == hyper::Method::CONNECT {
        Err((ProxyError::MalformedRequest, None))
    } else {
        let line = RequestLine {
            method,
            target,
            authority,
            request_id: &request_id,
            framing,
            upgrade: false,
        };
        proxy.route(&line, fields, &facts, client)
    };
    let result = match routed {
        Ok(routed) => {
            let request = Forwarded {
                head: &routed.head,
                framing,
                is_head,
                retryable,
            };
            forward(proxy, routed.app, request, body).await
        }
        Err(failed) => Err(failed),
    };
    let (mut response, app, machine, error) = match result {
        Ok((response, app, machine)) => (response, Some(app), Some(machine), None),
        Err((error, app)) => (error.to_response(facts.wants_json), app, None, Some(error)),
    };
    proxy.answered(&Answered {
        app: app.as_deref(),
        machine: machine.as_deref(),
        status: response.status().as_u16(),
        error: error.as_ref(),
        client,
        request_id: &request_id,
        started,
        access: access.as_ref(),
    });
    if let Ok(id) = HeaderValue::from_bytes(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
    }
    response
}

/// A request as its machine receives it.
struct Forwarded<'a> {
    head: &'a [u8],
    framing: Framing,
    is_head: bool,
    /// An idempotent method without a body: may be sent again on a fresh connection.
    retryable: bool,
}

/// Sends the request to a machine and returns its response with a streaming body.
async fn forward(
    proxy: &Proxy,
    app: Arc<CompiledApp>,
    request: Forwarded<'_>,
    mut body: Incoming,
) -> Result<(Response<ResponseBody>, Arc<CompiledApp>, String), Failed> {
    let Forwarded {
        head,
        framing,
        is_head,
        retryable,
    } = request;
    let pooled = app.kind == ConcurrencyKind::Requests;
    let (mut upstream, guard) = match proxy.open(&app, pooled).await {
        Ok(opened) => opened,
        Err(error) => return Err((error, Some(app))),
    };
    let machine_id = guard.stats().machine_id.clone();
    let failed = |detail: String| ProxyError::UpstreamFailed {
        app: app.app.clone(),
        machine_id: machine_id.clone(),
        detail,
    };
    let mut retried = false;
    // Bounded: a closed pooled connection is replaced once.
    let (raw, head_len) = loop {
        let sent = send(proxy, &mut upstream.stream, head, &mut body, framing).await;
        let mut ubuf = Vec::with_capacity(8192);
        let read = match sent {
            Ok(()) => {
                let timeout = proxy.opts.upstream_timeout;
                match tokio::time::timeout(timeout, final_head(&mut upstream.stream, &mut ubuf))
                    .await
                {
                    Ok(read) => read,
                    Err(_) => {
                        let error = ProxyError::UpstreamTimeout {
                            app: app.app.clone(),
                            machine_id: machine_id.clone(),
                            timeout,
                        };
                        return Err((error, Some(app.clone())));
                    }
                }
            }
            Err(SendError::Client(error)) => return Err((error, Some(app.clone()))),
            Err(SendError::Upstream(detail)) => Err(HeadError::Closed {
                started: false,
                detail,
            }),
        };
        match read {
            Ok(len) => break (ubuf, len),
            Err(HeadError::Closed { started: false, .. })
                if upstream.reused && !retried && retryable =>
            {
                retried = true;
                upstream = proxy
                    .reopen(&upstream)
                    .await
                    .map_err(|detail| (failed(detail), Some(app.clone())))?;
            }
            Err(HeadError::Closed { detail, .. } | HeadError::Invalid(detail)) => {
                return Err((failed(detail), Some(app.clone())));
            }
        }
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = ResponseHead::parse(&raw[..head_len], &mut storage).map_err(|err| match err {
        HeadError::Closed { detail, .. } | HeadError::Invalid(detail) => {
            (failed(detail), Some(app.clone()))
        }
    })?;
    if parsed.status == 101 {
        let detail = "the machine switched protocols on an HTTP/2 request".to_owned();
        return Err((failed(detail), Some(app.clone())));
    }
    let response_framing = parsed
        .framing(is_head)
        .map_err(|err| (failed(format!("the response has {err}")), Some(app.clone())))?;
    let mut response = Response::builder()
        .status(parsed.status)
        .body(ResponseBody::Full(None))
        .map_err(|err| (failed(err.to_string()), Some(app.clone())))?;
    let headers = response.headers_mut();
    for (name, value) in parsed.kept_fields() {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    match response_framing {
        Framing::Length(n) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Framing::Empty => {
            if let Some(length) = parsed.facts.content_length
                && let Ok(value) = HeaderValue::from_bytes(length)
            {
                headers.insert(CONTENT_LENGTH, value);
            }
        }
        Framing::Chunked | Framing::Close => {}
    }
    let reusable = pooled && parsed.keeps_alive() && response_framing != Framing::Close;
    let pending = BytesMut::from(&raw[head_len..]);
    *response.body_mut() = ResponseBody::Upstream(Box::new(UpstreamResponse {
        upstream: Some(upstream),
        pending,
        tracker: BodyTracker::new(response_framing),
        guard: Some(guard),
        reusable,
    }));
    Ok((response, app, machine_id))
}

/// Reads the final response head, dropping interim ones (HTTP/2 clients get none).
async fn final_head(stream: &mut TcpStream, ubuf: &mut Vec<u8>) -> Result<usize, HeadError> {
    // Bounded by the caller's timeout.
    loop {
        let head = read_response_head(stream, ubuf).await?;
        if (100..200).contains(&head.status) && head.status != 101 {
            ubuf.drain(..head.len);
            continue;
        }
        return Ok(head.len);
    }
}

enum SendError {
    Client(ProxyError),
    Upstream(String),
}

/// Writes the head and the body as the client sends it.
async fn send(
    proxy: &Proxy,
    stream: &mut TcpStream,
    head: &[u8],
    body: &mut Incoming,
    framing: Framing,
) -> Result<(), SendError> {
    let upstream = |err: std::io::Error| SendError::Upstream(format!("sending the request: {err}"));
    stream.write_all(head).await.map_err(upstream)?;
    if framing == Framing::Empty {
        return Ok(());
    }
    let mut chunk = Vec::new();
    // Bounded by the client's body.
    loop {
        let frame = match proxy.opts.body_read_timeout {
            Some(timeout) => tokio::time::timeout(timeout, body.frame())
                .await
                .map_err(|_| SendError::Client(ProxyError::ClientBodyTimeout(timeout)))?,
            None => body.frame().await,
        };
        let Some(frame) = frame else { break };
        let frame = frame
            .map_err(|err| SendError::Upstream(format!("reading the client's body: {err}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if framing == Framing::Chunked {
            chunk.clear();
            wire::encode_chunk(&mut chunk, &data);
            stream.write_all(&chunk).await.map_err(upstream)?;
        } else {
            stream.write_all(&data).await.map_err(upstream)?;
        }
    }
    if framing == Framing::Chunked {
        stream.write_all(wire::LAST_CHUNK).await.map_err(upstream)?;
    }
    Ok(())
}
