//! The HTTP/1.1 wire format the proxy speaks on both sides: message framing (RFC 9112 §6) and
//! the chunked transfer coding (§7.1). Heads are parsed by `httparse`; this module decides
//! where a body ends, so bodies can be passed through without being re-encoded.

use std::ops::Range;

/// Most header fields accepted in a request or response head.
pub(crate) const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// A body's framing could not be determined or its chunked coding is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("conflicting or invalid Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding and Content-Length together")]
    Both,
    #[error("a Transfer-Encoding other than chunked")]
    UnknownCoding,
    #[error("malformed chunked encoding")]
    Chunked,
}

/// The framing facts gathered from a head's `Content-Length` and `Transfer-Encoding` fields.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LengthFields {
    content_length: Option<u64>,
    content_length_invalid: bool,
    transfer_encoding: bool,
    /// More than one `Transfer-Encoding` field, or codings other than `chunked`.
    other_codings: bool,
    chunked_last: bool,
}

impl LengthFields {
    /// Notes one header field; returns whether it was a framing field.
    pub(crate) fn note(&mut self, name: &[u8], value: &[u8]) -> bool {
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_length(value) {
                Some(n) if self.content_length.is_none_or(|old| old == n) => {
                    self.content_length = Some(n);
                }
                _ => self.content_length_invalid = true,
            }
            true
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.other_codings |=
                self.transfer_encoding || !trim(value).eq_ignore_ascii_case(b"chunked");
            self.transfer_encoding = true;
            // The last coding decides; `chunked` must be last when present (§6.1).
            self.chunked_last = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
            true
        } else {
            false
        }
    }

    /// A request body's framing: without either field, there is no body. Only a lone
    /// `chunked` coding is accepted: the machine gets the body as the client sent it, so a
    /// coding the proxy does not forward (`gzip, chunked`) would be lost.
    pub(crate) fn request(&self) -> Result<Framing, FramingError> {
        if self.transfer_encoding {
            if self.content_length.is_some() || self.content_length_invalid {
                return Err(FramingError::Both);
            }
            if !self.chunked_last || self.other_codings {
                return Err(FramingError::UnknownCoding);
            }
            return Ok(Framing::Chunked);
        }
        self.length()
            .map(|n| n.map_or(Framing::Empty, Framing::Length))
    }

    /// A response body's framing when the response may have one: without either field, the
    /// body runs until the machine closes.
    pub(crate) fn response(&self) -> Result<Framing, FramingError> {
        if self.transfer_encoding {
            return Ok(if self.chunked_last {
                Framing::Chunked
            } else {
                Framing::Close
            });
        }
        self.length()
            .map(|n| n.map_or(Framing::Close, Framing::Length))
    }

    fn length(&self) -> Result<Option<u64>, FramingError> {
        if self.content_length_invalid {
            return Err(FramingError::ContentLength);
        }
        Ok(self.content_length)
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

pub(crate) fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &value[start..end]
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Whether a request may be sent again on a fresh connection when a pooled one turns out
/// closed before any answer: an idempotent method (RFC 9110 §9.2.2) without a body.
pub(crate) fn retryable(method: &[u8], framing: Framing) -> bool {
    framing == Framing::Empty
        && matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
}

/// Where a body ends, for a body passed through as it arrives.
#[derive(Debug, Clone)]
pub(crate) struct BodyTracker {
    state: Tracking,
}

#[derive(Debug, Clone)]
enum Tracking {
    Remaining(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl BodyTracker {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => Tracking::Done,
            Framing::Length(n) => Tracking::Remaining(n),
            Framing::Chunked => Tracking::Chunked(Chunked::default()),
            Framing::Close => Tracking::UntilClose,
        };
        Self { state }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, Tracking::Done)
    }

    /// Bytes still expected, when the framing says (for buffer sizing).
    pub(crate) fn remaining_hint(&self) -> Option<u64> {
        match &self.state {
            Tracking::Remaining(n) => Some(*n),
            Tracking::Done => Some(0),
            _ => None,
        }
    }

    /// Consumes the part of `input` that belongs to the body; returns its length. Data bytes
    /// (without chunk framing) are reported to `on_data` as ranges of `input`.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(Range<usize>),
    ) -> Result<usize, FramingError> {
        match &mut self.state {
            Tracking::Done => Ok(0),
            Tracking::UntilClose => {
                on_data(0..input.len());
                Ok(input.len())
            }
            Tracking::Remaining(n) => {
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(input.len());
                on_data(0..take);
                *n -= take as u64;
                if *n == 0 {
                    self.state = Tracking::Done;
                }
                Ok(take)
            }
            Tracking::Chunked(chunked) => {
                let used = chunked.feed(input, on_data)?;
                if chunked.is_done() {
                    self.state = Tracking::Done;
                }
                Ok(used)
            }
        }
    }

    /// The sender closed: fine for a close-delimited body, truncation otherwise.
    pub(crate) fn close(&mut self) -> bool {
        if matches!(self.state, Tracking::UntilClose) {
            self.state = Tracking::Done;
        }
        self.is_done()
    }
}

/// A decoder of the chunked transfer coding that reads its input in any pieces.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes `input` up to the end of the body; returns how much was used.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(Range<usize>),
    ) -> Result<usize, FramingError> {
        use ChunkState::*;
        let mut i = 0;
        // Bounded: every iteration consumes at least one byte or returns.
        while i < input.len() {
            if self.state == Data {
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                on_data(i..i + take);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let byte = input[i];
            i += 1;
            self.state = match (self.state, byte) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(FramingError::Chunked);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from(hex_value(b));
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                // Visible characters, spaces and tabs only: a bare LF or another control
                // character ends the line early for some servers, so the two sides would
                // disagree on where the chunk starts.
                (Extension, b) if b == b'\t' || (b' '..=b'~').contains(&b) => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(FramingError::Chunked);
                    }
                    Extension
                }
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    self.line = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                // Trailer lines end with CRLF; a bare LF is refused (some servers take it for
                // the end of the body).
                (TrailerStart | Trailer, b) if b != b'\n' => {
                    self.line += 1;
                    if self.line > MAX_TRAILERS {
                        return Err(FramingError::Chunked);
                    }
                    Trailer
                }
                (EndLf, b'\n') => {
                    self.state = Done;
                    return Ok(i);
                }
                _ => return Err(FramingError::Chunked),
            };
        }
        Ok(i)
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Appends one chunk of the chunked coding.
pub(crate) fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (without the formatting machinery, which showed in profiles).
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    // Bounded: a u64 has at most 20 digits.
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The last chunk of the chunked coding, without trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), FramingError> {
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in pieces {
            let n = chunked.feed(piece, &mut |r| data.extend_from_slice(&piece[r]))?;
            used += n;
            if chunked.is_done() {
                break;
            }
        }
        Ok((data, used, chunked.is_done()))
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces_and_stop_at_their_end() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nGET /next";
        let whole = decode(&[body]).unwrap();
        assert_eq!(whole.0, b"hello0123456789");
        assert_eq!(whole.1, body.len() - b"GET /next".len());
        assert!(whole.2);
        // Byte by byte gives the same.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let split = decode(&bytes).unwrap();
        assert_eq!(split.0, whole.0);
        assert_eq!(split.1, whole.1);
        // Unfinished.
        let (data, _, done) = decode(&[b"3\r\nab"]).unwrap();
        assert_eq!(data, b"ab");
        assert!(!done);
    }

    #[test]
    fn broken_chunked_coding_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"fffffffffffffffff\r\n",
            b"0\r\n\rX",
            // Bare LFs in a trailer, an extension or after data.
            b"0\r\n\nGET / HTTP/1.1\r\n",
            b"0\r\nx-t: 1\nGET",
            b"2;\nxx\r\n",
            b"2;a\x01\r\nxx\r\n",
            b"2\r\nxx\n",
        ] {
            assert_eq!(decode(&[bad]), Err(FramingError::Chunked), "{bad:?}");
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let fields = |pairs: &[(&str, &str)]| {
            let mut f = LengthFields::default();
            for (n, v) in pairs {
                f.note(n.as_bytes(), v.as_bytes());
            }
            f
        };
        assert_eq!(fields(&[]).request(), Ok(Framing::Empty));
        assert_eq!(fields(&[]).response(), Ok(Framing::Close));
        assert_eq!(
            fields(&[("Content-Length", " 12 ")]).request(),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            fields(&[("content-length", "3"), ("content-length", "3")]).request(),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            fields(&[("content-length", "3"), ("content-length", "4")]).request(),
            Err(FramingError::ContentLength)
        );
        assert_eq!(
            fields(&[("content-length", "-1")]).request(),
            Err(FramingError::ContentLength)
        );
        assert_eq!(
            fields(&[("transfer-encoding", "Chunked ")]).request(),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            fields(&[("transfer-encoding", "gzip, chunked")]).request(),
            Err(FramingError::UnknownCoding)
        );
        assert_eq!(
            fields(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])
            .request(),
            Err(FramingError::UnknownCoding)
        );
        assert_eq!(
            fields(&[("transfer-encoding", "gzip, chunked")]).response(),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            fields(&[("transfer-encoding", "chunked"), ("content-length", "3")]).request(),
            Err(FramingError::Both)
        );
        assert_eq!(
            fields(&[("transfer-encoding", "gzip")]).request(),
            Err(FramingError::UnknownCoding)
        );
        assert_eq!(
            fields(&[("transfer-encoding", "gzip")]).response(),
            Ok(Framing::Close)
        );
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 404, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn trackers_consume_only_their_body() {
        let mut t = BodyTracker::new(Framing::Length(4));
        let mut seen = 0;
        assert_eq!(t.feed(b"abcdefg", &mut |r| seen += r.len()).unwrap(), 4);
        assert!(t.is_done());
        assert_eq!(seen, 4);
        let mut t = BodyTracker::new(Framing::Close);
        assert_eq!(t.feed(b"abc", &mut |_| {}).unwrap(), 3);
        assert!(t.close());
        let mut t = BodyTracker::new(Framing::Length(4));
        assert!(!t.close());
    }
}
