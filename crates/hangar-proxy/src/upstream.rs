//! Connections to machines: opening them, telling a live pooled one from a closed one, and
//! reading a machine's response head. Machines speak HTTP/1.1; the proxy writes their request
//! heads itself (`headers::write_request_head`) and passes bodies through.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::buffers::Buf;
use crate::headers::ResponseFacts;
use crate::wire::{Framing, FramingError, MAX_HEADERS};

/// Largest response head accepted from a machine.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A connection to a machine.
pub(crate) struct Upstream {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
    /// Taken from the pool: the machine may have closed it while it sat idle.
    pub(crate) reused: bool,
}

/// Opens a TCP connection to a machine.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(err)) => Err(format!("connecting to {addr}: {err}")),
        Err(_) => Err(format!("connecting to {addr} timed out after {timeout:?}")),
    }
}

/// Whether an idle pooled connection can still be used: the machine has neither closed it nor
/// sent anything unasked. Costs no system call unless the socket has become readable.
pub(crate) fn idle_is_usable(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
}

/// Why a machine's response head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The machine closed or reset the connection; `started` when part of a head had arrived.
    Closed { started: bool, detail: String },
    /// The head is not valid HTTP/1.1.
    Invalid(String),
}

/// A response head is complete in the buffer.
pub(crate) struct HeadRead {
    pub(crate) len: usize,
    pub(crate) status: u16,
}

/// Reads from `stream` into `buf` until `buf` starts with a complete response head (interim
/// `1xx` heads included: the caller removes them and calls again).
pub(crate) async fn read_response_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> Result<HeadRead, HeadError> {
    // Bounded: every iteration reads at least one byte or returns.
    loop {
        if !buf.is_empty() {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut fields);
            match response.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    return Ok(HeadRead {
                        len,
                        status: response.code.unwrap_or(0),
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(HeadError::Invalid(format!(
                        "the response head is larger than {MAX_RESPONSE_HEAD} bytes"
                    )));
                }
                Err(err) => {
                    return Err(HeadError::Invalid(format!(
                        "the response is not valid HTTP/1.1 ({err})"
                    )));
                }
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        let started = !buf.is_empty();
        match stream.read_buf(buf).await {
            Ok(0) => {
                return Err(HeadError::Closed {
                    started,
                    detail: "the connection closed before a complete response head".to_owned(),
                });
            }
            Ok(_) => {}
            Err(err) => {
                return Err(HeadError::Closed {
                    started,
                    detail: format!("reading the response: {err}"),
                });
            }
        }
    }
}

/// A final response head, parsed from the buffer it was read into.
pub(crate) struct ResponseHead<'b> {
    pub(crate) status: u16,
    pub(crate) reason: &'b [u8],
    /// The machine's HTTP minor version.
    pub(crate) minor: u8,
    pub(crate) fields: &'b [httparse::Header<'b>],
    pub(crate) facts: ResponseFacts<'b>,
}

impl<'b> ResponseHead<'b> {
    /// Parses a head known to be complete (see [`read_response_head`]).
    pub(crate) fn parse(
        buf: &'b [u8],
        storage: &'b mut [httparse::Header<'b>; MAX_HEADERS],
    ) -> Result<Self, HeadError> {
        let mut response = httparse::Response::new(storage);
        if !matches!(response.parse(buf), Ok(httparse::Status::Complete(_))) {
            return Err(HeadError::Invalid(
                "the response head is incomplete".to_owned(),
            ));
        }
        let status = response.code.unwrap_or(0);
        let reason = response.reason.unwrap_or("").as_bytes();
        let minor = response.version.unwrap_or(1);
        let fields: &'b [httparse::Header<'b>] = response.headers;
        let facts = ResponseFacts::scan(fields.iter().map(|f| (f.name.as_bytes(), f.value)));
        Ok(Self {
            status,
            reason,
            minor,
            fields,
            facts,
        })
    }

    /// The body's framing (RFC 9112 §6.3): none for `HEAD` requests, `1xx`, `204` and `304`.
    pub(crate) fn framing(&self, request_was_head: bool) -> Result<Framing, FramingError> {
        if request_was_head || self.status < 200 || self.status == 204 || self.status == 304 {
            return Ok(Framing::Empty);
        }
        self.facts.length.response()
    }

    /// Whether the machine lets the connection serve another request.
    pub(crate) fn keeps_alive(&self) -> bool {
        if self.minor == 0 {
            self.facts.connection.has(b"keep-alive")
        } else {
            !self.facts.connection.has(b"close")
        }
    }

    /// The kept fields as byte pairs.
    pub(crate) fn kept_fields(&self) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + '_ {
        self.fields
            .iter()
            .map(|f| (f.name.as_bytes(), f.value))
            .filter(|(name, _)| self.facts.keeps(name))
    }
}

/// Writes `first` then `second` in one system call where possible: a plain `send` of the
/// two joined when they are small (cheaper in the kernel than a vectored write), a vectored
/// write otherwise.
pub(crate) async fn write_two<W: AsyncWrite + Unpin>(
    stream: &mut W,
    first: &[u8],
    second: &[u8],
) -> io::Result<()> {
    if second.is_empty() {
        return stream.write_all(first).await;
    }
    if first.is_empty() {
        return stream.write_all(second).await;
    }
    if first.len() + second.len() <= JOIN_LIMIT {
        let mut joined = Buf::take();
        joined.extend_from_slice(first);
        joined.extend_from_slice(second);
        return stream.write_all(&joined).await;
    }
    let mut done = 0;
    let total = first.len() + second.len();
    // Bounded: every iteration writes at least one byte or returns.
    while done < total {
        let n = if done < first.len() {
            let bufs = [io::IoSlice::new(&first[done..]), io::IoSlice::new(second)];
            stream.write_vectored(&bufs).await?
        } else {
            stream.write(&second[done - first.len()..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// Largest pair of writes joined into one buffer by [`write_two`].
const JOIN_LIMIT: usize = 16 * 1024;
