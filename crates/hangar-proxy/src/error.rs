//! Errors the proxy answers itself, and the one place that maps them to status codes and bodies.

use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::body::ResponseBody;

/// Why no machine could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The app has no machine in the `started` state.
    NoneStarted,
    /// Machines are started but none passes its checks.
    NoneHealthy,
    /// Every machine is being stopped or replaced.
    AllDraining,
    /// Every machine is at its hard limit and the request waited the whole queue timeout.
    AllAtHardLimit,
    /// Every machine is at its hard limit and the app's queue is full.
    QueueFull,
}

impl Unavailable {
    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoneStarted => "none_started",
            Self::NoneHealthy => "none_healthy",
            Self::AllDraining => "all_draining",
            Self::AllAtHardLimit => "all_at_hard_limit",
            Self::QueueFull => "queue_full",
        }
    }
}

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No app is routed for the Host header.
    #[error(
        "no app is served at host {host:?}; create one with `hangar apps create <name>` and reach it as \
         <name>.{base_domain}, or add {host:?} as a custom hostname of an existing app"
    )]
    UnknownHost { host: String, base_domain: String },
    /// The request has no usable Host header or authority.
    #[error("the request has no Host header; send `Host: <app>.{base_domain}`")]
    MissingHost { base_domain: String },
    /// No machine can take the request now.
    #[error("{}", unavailable_message(app, *reason, *machines))]
    Unavailable {
        app: String,
        reason: Unavailable,
        machines: usize,
    },
    /// No connection could be made to any eligible machine.
    #[error(
        "could not connect to any machine of app {app:?} ({tried} tried, last error: {last_error}); \
         check that the app listens on 0.0.0.0 at its internal_port"
    )]
    ConnectFailed {
        app: String,
        tried: usize,
        last_error: String,
    },
    /// The machine failed while the request was being sent or its response read.
    #[error(
        "machine {machine_id} of app {app:?} failed to answer: {detail}; check the app's logs with \
         `hangar logs -a {app}`"
    )]
    UpstreamFailed {
        app: String,
        machine_id: String,
        detail: String,
    },
    /// The machine did not send response headers in time.
    #[error(
        "machine {machine_id} of app {app:?} did not answer within {timeout:?}; check the app's logs \
         with `hangar logs -a {app}`"
    )]
    UpstreamTimeout {
        app: String,
        machine_id: String,
        timeout: Duration,
    },
    /// The client stopped sending its body.
    #[error("the request body stalled for longer than {0:?}; the request was cut")]
    ClientBodyTimeout(Duration),
    /// The request line or a header could not be parsed.
    #[error(
        "the request is not valid HTTP/1.1: check the request line (`GET /path HTTP/1.1`) and that \
         every header is `Name: value`"
    )]
    MalformedRequest,
    /// The request head is larger than the proxy accepts.
    #[error(
        "the request headers are larger than {limit} bytes; send fewer or smaller headers (large \
         cookies are the usual cause)"
    )]
    HeadersTooLarge { limit: usize },
    /// The request target (path and query) is too long to parse.
    #[error("the request target (path and query) is too long; shorten the URL")]
    TargetTooLong,
}

fn unavailable_message(app: &str, reason: Unavailable, machines: usize) -> String {
    match reason {
        Unavailable::NoneStarted if machines == 0 => format!(
            "app {app:?} has no machine exposing an http service; run one with `hangar machine run -a {app}` and a service with the http handler"
        ),
        Unavailable::NoneStarted => format!(
            "app {app:?} has no started machine ({machines} stopped or starting); start one with \
             `hangar machine start -a {app} <id>`"
        ),
        Unavailable::NoneHealthy => format!(
            "app {app:?} has no healthy machine: every started machine fails its service checks; see \
             `hangar machine list -a {app}` and the app's logs"
        ),
        Unavailable::AllDraining => {
            format!("every machine of app {app:?} is being stopped or replaced; retry shortly")
        }
        Unavailable::AllAtHardLimit => format!(
            "every machine of app {app:?} is at its hard concurrency limit and the request waited the \
             whole queue timeout; retry later or add machines"
        ),
        Unavailable::QueueFull => format!(
            "every machine of app {app:?} is at its hard concurrency limit and the request queue is \
             full; retry later or add machines"
        ),
    }
}

impl ProxyError {
    /// The status code answered to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownHost { .. } => StatusCode::NOT_FOUND,
            Self::MissingHost { .. } => StatusCode::BAD_REQUEST,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailed { .. } | Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TargetTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    /// A short machine-readable code, as in Fly's error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownHost { .. } => "unknown_host",
            Self::MissingHost { .. } => "missing_host",
            Self::Unavailable { reason, .. } => reason.label(),
            Self::ConnectFailed { .. } => "connect_failed",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::ClientBodyTimeout(_) => "client_body_timeout",
            Self::MalformedRequest => "malformed_request",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::TargetTooLong => "target_too_long",
        }
    }

    /// The body and its content type: JSON when the client accepts JSON, text otherwise.
    fn body(&self, wants_json: bool) -> (&'static str, String) {
        let message = self.to_string();
        if wants_json {
            let body = serde_json::json!({
                "error": message,
                "code": self.code(),
                "status": self.status().as_u16(),
            });
            ("application/json", format!("{body}\n"))
        } else {
            ("text/plain; charset=utf-8", format!("{message}\n"))
        }
    }

    /// `Retry-After` for answers that say "not now".
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            Self::Unavailable {
                reason: Unavailable::AllAtHardLimit | Unavailable::QueueFull,
                ..
            } => Some("1"),
            Self::Unavailable { .. } => Some("5"),
            _ => None,
        }
    }

    /// The whole HTTP/1.x response, as the client connection writes it: `minor` is the
    /// client's HTTP version, `head` leaves out the body (a `HEAD` request), and without
    /// `keep_alive` the response says the connection closes.
    pub(crate) fn to_raw_response(
        &self,
        wants_json: bool,
        minor: u8,
        request_id: &[u8],
        keep_alive: bool,
        head: bool,
    ) -> Vec<u8> {
        use std::io::Write as _;
        let (content_type, body) = self.body(wants_json);
        let status = self.status();
        let mut out = Vec::with_capacity(256 + body.len());
        let _ = write!(
            out,
            "HTTP/1.{} {} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
            minor.min(1),
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
        );
        if let Some(seconds) = self.retry_after() {
            let _ = write!(out, "retry-after: {seconds}\r\n");
        }
        match (keep_alive, minor) {
            (false, _) => out.extend_from_slice(b"connection: close\r\n"),
            (true, 0) => out.extend_from_slice(b"connection: keep-alive\r\n"),
            (true, _) => {}
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n\r\n");
        if !head {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }

    /// Renders the error as JSON when the client accepts JSON, as text otherwise.
    pub(crate) fn to_response(&self, wants_json: bool) -> Response<ResponseBody> {
        let (content_type, body) = self.body(wants_json);
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}
