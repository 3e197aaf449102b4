//! Just enough HTTP/1.1 for a test app: request heads, fixed-length and chunked bodies,
//! keep-alive, and response heads.

use std::io::{self, BufRead, Read, Write};

/// The largest request head (request line and headers) we accept.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header lines we accept.
pub const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path part of the target, without the query.
    pub path: String,
    /// The query string without the `?`, empty if none.
    pub query: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: BodyKind,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// Why a request head was refused; each maps to the status we answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// 400: the head is not valid HTTP/1.x.
    Malformed(&'static str),
    /// 431: the head is larger than [`MAX_HEAD_BYTES`] or has too many headers.
    TooLarge,
    /// 505: not HTTP/1.0 or HTTP/1.1.
    UnsupportedVersion,
    /// 501: a transfer coding other than chunked.
    UnsupportedTransferEncoding,
}

impl ParseError {
    pub fn status(&self) -> u16 {
        match self {
            ParseError::Malformed(_) => 400,
            ParseError::TooLarge => 431,
            ParseError::UnsupportedVersion => 505,
            ParseError::UnsupportedTransferEncoding => 501,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ParseError::Malformed(why) => format!("bad request: {why}\n"),
            ParseError::TooLarge => {
                format!(
                    "request head larger than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers\n"
                )
            }
            ParseError::UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported\n".into(),
            ParseError::UnsupportedTransferEncoding => {
                "only the chunked transfer coding is supported\n".into()
            }
        }
    }
}

impl Request {
    /// The value of the first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a query parameter (no percent-decoding: the app's parameters are
    /// numbers).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn wants_keep_alive(&self) -> bool {
        let tokens = |value: &str, token: &str| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        match self.header("connection") {
            Some(value) if tokens(value, "close") => false,
            Some(value) if tokens(value, "keep-alive") => true,
            _ => self.minor_version >= 1,
        }
    }

    /// Whether the client waits for `100 Continue` before sending the body.
    pub fn expects_continue(&self) -> bool {
        self.minor_version >= 1
            && self
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head: everything up to and including the empty line.
pub fn parse_head(head: &[u8]) -> Result<Request, ParseError> {
    if head.len() > MAX_HEAD_BYTES {
        return Err(ParseError::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| ParseError::Malformed("head is not UTF-8"))?;
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    // RFC 9112 §2.2: a server should ignore at least one empty line before the request line.
    let request_line = lines
        .find(|line| !line.is_empty())
        .ok_or(ParseError::Malformed("missing request line"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed(
            "request line must be METHOD TARGET VERSION",
        ));
    };
    if !is_token(method) {
        return Err(ParseError::Malformed("invalid method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ParseError::Malformed("target must be an absolute path"));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Err(ParseError::UnsupportedVersion),
        _ => return Err(ParseError::Malformed("invalid HTTP version")),
    };

    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(ParseError::TooLarge);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(ParseError::Malformed("header line without a colon"))?;
        if !is_token(name) {
            return Err(ParseError::Malformed("invalid header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }

    fn find<'h>(
        headers: &'h [(String, String)],
        wanted: &'static str,
    ) -> impl Iterator<Item = &'h String> {
        headers
            .iter()
            .filter(move |(n, _)| n == wanted)
            .map(|(_, v)| v)
    }
    let body = if let Some(coding) = find(&headers, "transfer-encoding").last() {
        // RFC 9112 §6.1: with Transfer-Encoding, Content-Length is ignored, and chunked must
        // be the final coding.
        if coding.eq_ignore_ascii_case("chunked") {
            BodyKind::Chunked
        } else {
            return Err(ParseError::UnsupportedTransferEncoding);
        }
    } else {
        let lengths: Vec<&String> = find(&headers, "content-length").collect();
        match lengths.as_slice() {
            [] => BodyKind::None,
            [first, rest @ ..] if rest.iter().all(|v| v == first) => {
                if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::Malformed("invalid content-length"));
                }
                let n: u64 = first
                    .parse()
                    .map_err(|_| ParseError::Malformed("content-length too large"))?;
                if n == 0 {
                    BodyKind::None
                } else {
                    BodyKind::Length(n)
                }
            }
            _ => return Err(ParseError::Malformed("conflicting content-length headers")),
        }
    };

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        minor_version,
        headers,
        body,
    })
}

/// Whether `buf` ends a request head (a line that is empty after the request line).
pub fn head_complete(buf: &[u8]) -> bool {
    let trimmed = trim_leading_empty_lines(buf);
    trimmed.ends_with(b"\n\n") || trimmed.ends_with(b"\n\r\n")
}

fn trim_leading_empty_lines(mut buf: &[u8]) -> &[u8] {
    loop {
        if let Some(rest) = buf.strip_prefix(b"\r\n") {
            buf = rest;
        } else if let Some(rest) = buf.strip_prefix(b"\n") {
            buf = rest;
        } else {
            return buf;
        }
    }
}

/// A request body reader: yields the body's bytes, decoding chunked framing.
pub struct BodyReader<'a, R: BufRead> {
    inner: &'a mut R,
    state: BodyState,
}

enum BodyState {
    Length(u64),
    ChunkData(u64),
    ChunkStart,
    Done,
}

impl<'a, R: BufRead> BodyReader<'a, R> {
    pub fn new(inner: &'a mut R, kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::None => BodyState::Done,
            BodyKind::Length(n) => BodyState::Length(n),
            BodyKind::Chunked => BodyState::ChunkStart,
        };
        BodyReader { inner, state }
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        // A chunk-size line or trailer line is short; 4 KiB bounds a hostile one.
        (&mut *self.inner).take(4096).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(invalid("chunk line too long or body truncated"));
        }
        String::from_utf8(line).map_err(|_| invalid("chunk line is not UTF-8"))
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<R: BufRead> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                BodyState::Done => return Ok(0),
                BodyState::Length(0) => self.state = BodyState::Done,
                BodyState::ChunkData(0) => {
                    let line = self.read_line()?;
                    if line.trim_end_matches(['\r', '\n']).is_empty() {
                        self.state = BodyState::ChunkStart;
                    } else {
                        return Err(invalid("missing CRLF after chunk data"));
                    }
                }
                BodyState::Length(left) | BodyState::ChunkData(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "body truncated",
                        ));
                    }
                    let left = left - n as u64;
                    self.state = match self.state {
                        BodyState::Length(_) => BodyState::Length(left),
                        _ => BodyState::ChunkData(left),
                    };
                    return Ok(n);
                }
                BodyState::ChunkStart => {
                    let line = self.read_line()?;
                    let size = line.trim_end_matches(['\r', '\n']);
                    let size = size.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
                    if size == 0 {
                        // Trailers, then the empty line that ends the body.
                        loop {
                            let line = self.read_line()?;
                            if line.trim_end_matches(['\r', '\n']).is_empty() {
                                break;
                            }
                        }
                        self.state = BodyState::Done;
                    } else {
                        self.state = BodyState::ChunkData(size);
                    }
                }
            }
        }
    }
}

/// The reason phrase of the statuses this app uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Tells a client that sent `Expect: 100-continue` to go ahead with the body.
pub fn write_head_continue(out: &mut impl Write) -> io::Result<()> {
    out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
}

/// Writes a response head. `content_length: None` means a chunked body.
pub fn write_head(
    out: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    content_length: Option<u64>,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match content_length {
        Some(n) => head.push_str(&format!("content-length: {n}\r\n")),
        None => head.push_str("transfer-encoding: chunked\r\n"),
    }
    head.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    out.write_all(head.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    /// Parses `head` and compares a compact rendering with `expected`.
    fn check(head: &str, expected: &str) {
        let actual = match parse_head(head.as_bytes()) {
            Ok(r) => format!(
                "{} {} ?{} 1.{} {:?} keep-alive={} headers={:?}",
                r.method,
                r.path,
                r.query,
                r.minor_version,
                r.body,
                r.wants_keep_alive(),
                r.headers
            ),
            Err(e) => format!("error {} {}", e.status(), e.message().trim_end()),
        };
        assert_eq!(actual, expected, "for head {head:?}");
    }

    #[test]
    fn request_heads() {
        check(
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            r#"GET / ? 1.1 None keep-alive=true headers=[("host", "x")]"#,
        );
        check(
            "GET /slow?ms=20 HTTP/1.0\r\n\r\n",
            "GET /slow ?ms=20 1.0 None keep-alive=false headers=[]",
        );
        check(
            "\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            r#"GET / ? 1.0 None keep-alive=true headers=[("connection", "Keep-Alive")]"#,
        );
        check(
            "GET / HTTP/1.1\nConnection: foo, close\n\n",
            r#"GET / ? 1.1 None keep-alive=false headers=[("connection", "foo, close")]"#,
        );
        check(
            "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            r#"POST /echo ? 1.1 Length(5) keep-alive=true headers=[("content-length", "5")]"#,
        );
        check(
            "POST /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            r#"POST /echo ? 1.1 None keep-alive=true headers=[("content-length", "0")]"#,
        );
        check(
            "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            r#"POST /echo ? 1.1 Chunked keep-alive=true headers=[("transfer-encoding", "chunked"), ("content-length", "3")]"#,
        );
    }

    #[test]
    fn bad_request_heads() {
        check(
            "GET /\r\n\r\n",
            "error 400 bad request: request line must be METHOD TARGET VERSION",
        );
        check(
            "GET  / HTTP/1.1\r\n\r\n",
            "error 400 bad request: request line must be METHOD TARGET VERSION",
        );
        check(
            "GET x HTTP/1.1\r\n\r\n",
            "error 400 bad request: target must be an absolute path",
        );
        check(
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "error 400 bad request: target must be an absolute path",
        );
        check(
            "G(T / HTTP/1.1\r\n\r\n",
            "error 400 bad request: invalid method",
        );
        check(
            "GET / HTTP/2.0\r\n\r\n",
            "error 505 only HTTP/1.0 and HTTP/1.1 are supported",
        );
        check(
            "GET / FTP/1.0\r\n\r\n",
            "error 400 bad request: invalid HTTP version",
        );
        check(
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "error 400 bad request: header line without a colon",
        );
        check(
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "error 400 bad request: invalid header name",
        );
        check(
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "error 400 bad request: invalid content-length",
        );
        check(
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "error 400 bad request: content-length too large",
        );
        check(
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "error 400 bad request: conflicting content-length headers",
        );
        check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "error 501 only the chunked transfer coding is supported",
        );
        check("\r\n\r\n", "error 400 bad request: missing request line");
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        check(
            &many,
            "error 431 request head larger than 16384 bytes or 100 headers",
        );
        let huge = format!(
            "GET / HTTP/1.1\r\nx: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        check(
            &huge,
            "error 431 request head larger than 16384 bytes or 100 headers",
        );
        assert_eq!(
            parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(ParseError::Malformed("head is not UTF-8"))
        );
    }

    #[test]
    fn query_parameters() {
        let r = parse_head(b"GET /alloc?x&mb=12&mb=13 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.query_param("mb"), Some("12"));
        assert_eq!(r.query_param("x"), Some(""));
        assert_eq!(r.query_param("y"), None);
    }

    #[test]
    fn head_completion() {
        assert!(!head_complete(b"GET / HTTP/1.1\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\n\n"));
        assert!(!head_complete(b"\r\n"));
        assert!(!head_complete(b"\r\n\r\n"));
    }

    fn read_body(raw: &[u8], kind: BodyKind) -> io::Result<Vec<u8>> {
        let mut reader = BufReader::new(raw);
        let mut out = Vec::new();
        BodyReader::new(&mut reader, kind).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn bodies() {
        assert_eq!(
            read_body(b"helloEXTRA", BodyKind::Length(5)).unwrap(),
            b"hello"
        );
        assert_eq!(read_body(b"", BodyKind::None).unwrap(), b"");
        assert_eq!(
            read_body(
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT",
                BodyKind::Chunked
            )
            .unwrap(),
            b"hello world"
        );
        assert_eq!(
            read_body(b"he", BodyKind::Length(5)).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            read_body(b"zz\r\n", BodyKind::Chunked)
                .unwrap_err()
                .to_string(),
            "bad chunk size"
        );
        assert_eq!(
            read_body(b"2\r\nabX\r\n0\r\n\r\n", BodyKind::Chunked)
                .unwrap_err()
                .to_string(),
            "missing CRLF after chunk data"
        );
    }

    #[test]
    fn the_chunked_reader_leaves_the_next_request_in_the_buffer() {
        let mut reader = BufReader::new(&b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..]);
        let mut body = Vec::new();
        BodyReader::new(&mut reader, BodyKind::Chunked)
            .read_to_end(&mut body)
            .unwrap();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_str()),
            (&b"a"[..], "GET / HTTP/1.1\r\n\r\n")
        );
    }
}
