//! Request and response heads as the proxy rewrites them: hop-by-hop fields removed (RFC 9110
//! §7.6.1), forwarding fields set, and the machine's request written as HTTP/1.1 bytes. Both
//! the HTTP/1 and the h2c paths feed header fields as `(name, value)` byte pairs, so the rules
//! live here once.

use std::net::IpAddr;

use hyper::header::HeaderValue;

use crate::wire::{Framing, LengthFields, has_token, push_decimal, trim};

/// Fields every hop removes, plus those the proxy writes itself (framing, `Host`, the
/// forwarding fields and the request id); lower-case.
const REQUEST_DROPPED: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"host",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-ssl",
    b"x-forwarded-host",
    b"fly-client-ip",
    b"fly-forwarded-port",
    b"fly-region",
];

const RESPONSE_DROPPED: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"x-request-id",
];

fn listed(list: &[&[u8]], name: &[u8]) -> bool {
    list.iter()
        .any(|d| d.len() == name.len() && d.eq_ignore_ascii_case(name))
}

/// Up to this many `Connection` fields are kept per head (clients send one); a request
/// with more is refused (see [`ConnectionOptions::overflowed`]).
const MAX_CONNECTION_FIELDS: usize = 8;

/// The `Connection` fields of a head: their options and the fields they name.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConnectionOptions<'a> {
    values: [&'a [u8]; MAX_CONNECTION_FIELDS],
    count: usize,
    overflowed: bool,
}

impl<'a> ConnectionOptions<'a> {
    fn add(&mut self, value: &'a [u8]) {
        if self.count < MAX_CONNECTION_FIELDS {
            self.values[self.count] = value;
            self.count += 1;
        } else {
            self.overflowed = true;
        }
    }

    /// More `Connection` fields than are kept: their options would be ignored.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn has(&self, token: &[u8]) -> bool {
        self.values[..self.count]
            .iter()
            .any(|v| has_token(v, token))
    }
}

/// What the proxy needs from a request head, gathered in one pass over its fields.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RequestFacts<'a> {
    pub(crate) host: Option<&'a [u8]>,
    pub(crate) request_id: Option<&'a [u8]>,
    pub(crate) upgrade: Option<&'a [u8]>,
    pub(crate) connection: ConnectionOptions<'a>,
    pub(crate) length: LengthFields,
    pub(crate) forwarded_port: bool,
    pub(crate) forwarded_for: bool,
    pub(crate) wants_json: bool,
    /// More than one `Host` field (RFC 9112 §3.2: answered with a 400).
    pub(crate) duplicate_host: bool,
}

impl<'a> RequestFacts<'a> {
    pub(crate) fn scan(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut facts = Self::default();
        for (name, value) in fields {
            if facts.length.note(name, value) {
                continue;
            }
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    facts.duplicate_host |= facts.host.is_some();
                    facts.host = Some(trim(value));
                }
                6 if name.eq_ignore_ascii_case(b"accept") => {
                    facts.wants_json |= value.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"));
                }
                7 if name.eq_ignore_ascii_case(b"upgrade") => facts.upgrade = Some(value),
                10 if name.eq_ignore_ascii_case(b"connection") => facts.connection.add(value),
                12 if name.eq_ignore_ascii_case(b"x-request-id")
                    && !value.is_empty()
                    && HeaderValue::from_bytes(value).is_ok() =>
                {
                    facts.request_id = Some(value);
                }
                15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => facts.forwarded_for = true,
                16 if name.eq_ignore_ascii_case(b"x-forwarded-port") => {
                    facts.forwarded_port = true;
                }
                _ => {}
            }
        }
        facts
    }

    /// The request id: the client's, or a new one.
    pub(crate) fn request_id(&self) -> Vec<u8> {
        match self.request_id {
            Some(id) => id.to_vec(),
            None => new_request_id().to_vec(),
        }
    }

    /// Whether the request asks for a protocol upgrade (WebSocket and others).
    pub(crate) fn is_upgrade(&self) -> bool {
        self.upgrade.is_some() && self.connection.has(b"upgrade")
    }

    /// Whether a field is passed on to the machine as it is.
    fn keeps(&self, name: &[u8]) -> bool {
        !listed(REQUEST_DROPPED, name) && !self.connection.has(name)
    }
}

/// What the proxy knows about the client connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    pub(crate) ip: IpAddr,
    pub(crate) ip_text: String,
    pub(crate) port_text: String,
}

impl ClientInfo {
    pub(crate) fn new(ip: IpAddr, listen_port: u16) -> Self {
        let ip = ip.to_canonical();
        Self {
            ip,
            ip_text: ip.to_string(),
            port_text: listen_port.to_string(),
        }
    }
}

/// The parts of the machine's request that do not come from the client's fields.
pub(crate) struct Forwarding<'a> {
    pub(crate) client: &'a ClientInfo,
    pub(crate) host: &'a [u8],
    pub(crate) region: &'a [u8],
    pub(crate) request_id: &'a [u8],
    /// The request is an upgrade the proxy will tunnel (HTTP/1.1 only): `Upgrade` is kept.
    pub(crate) upgrade: bool,
}

/// Writes the request head the machine receives: HTTP/1.1, hop-by-hop fields removed, the
/// forwarding fields set (`X-Forwarded-For` appended to, since clients and earlier proxies may
/// set it; `Fly-*` overwritten because machines may trust them) and the body's framing.
pub(crate) fn write_request_head<'h, I>(
    out: &mut Vec<u8>,
    method: &[u8],
    target: &[u8],
    fields: I,
    facts: &RequestFacts<'_>,
    forwarding: &Forwarding<'_>,
    framing: Framing,
) where
    I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    let put = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put(out, b"host", forwarding.host);
    for (name, value) in fields.clone() {
        if facts.keeps(name) {
            put(out, name, value);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if facts.forwarded_for {
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"x-forwarded-for") && !trim(value).is_empty() {
                out.extend_from_slice(trim(value));
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(forwarding.client.ip_text.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nx-forwarded-ssl: off\r\n");
    let port = forwarding.client.port_text.as_bytes();
    if !facts.forwarded_port {
        put(out, b"x-forwarded-port", port);
    }
    put(out, b"x-forwarded-host", forwarding.host);
    put(out, b"fly-client-ip", forwarding.client.ip_text.as_bytes());
    put(out, b"fly-forwarded-port", port);
    put(out, b"fly-region", forwarding.region);
    put(out, b"x-request-id", forwarding.request_id);
    if forwarding.upgrade
        && let Some(upgrade) = facts.upgrade
    {
        out.extend_from_slice(b"connection: upgrade\r\n");
        put(out, b"upgrade", upgrade);
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// What the proxy needs from a machine's response head.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ResponseFacts<'a> {
    pub(crate) connection: ConnectionOptions<'a>,
    pub(crate) length: LengthFields,
    pub(crate) content_length: Option<&'a [u8]>,
    pub(crate) transfer_encoding: Option<&'a [u8]>,
    pub(crate) upgrade: Option<&'a [u8]>,
}

impl<'a> ResponseFacts<'a> {
    pub(crate) fn scan(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut facts = Self::default();
        for (name, value) in fields {
            if facts.length.note(name, value) {
                if name.eq_ignore_ascii_case(b"content-length") {
                    facts.content_length = Some(trim(value));
                } else {
                    facts.transfer_encoding = Some(trim(value));
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                facts.connection.add(value);
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                facts.upgrade = Some(value);
            }
        }
        facts
    }

    /// Whether a field is passed on to the client as it is.
    pub(crate) fn keeps(&self, name: &[u8]) -> bool {
        !listed(RESPONSE_DROPPED, name) && !self.connection.has(name)
    }
}

/// A new request id: 32 random hex digits.
pub(crate) fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    text
}

/// Normalises a Host header value: port and trailing dot stripped, lower-cased (allocating only
/// when the value is not lower-case already).
pub(crate) fn normalise_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // An IPv6 literal: the port follows the closing bracket.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _)| host)
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(
                id.iter()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }

    #[test]
    fn host_normalisation() {
        let check = |raw: &str, want: &str| assert_eq!(normalise_host(raw), want, "{raw}");
        check("app.localhost", "app.localhost");
        check("App.LocalHost:8080", "app.localhost");
        check("app.localhost.", "app.localhost");
        check("app.localhost.:80", "app.localhost");
        check("[::1]:80", "[::1]");
        check("example.com", "example.com");
    }

    fn head(fields: &[(&str, &str)], framing: Framing) -> String {
        let pairs: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let facts = RequestFacts::scan(pairs.iter().copied());
        let client = ClientInfo::new("10.0.0.9".parse().unwrap(), 80);
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            b"GET",
            b"/",
            pairs.iter().copied(),
            &facts,
            &Forwarding {
                client: &client,
                host: b"app.localhost",
                region: b"local",
                request_id: b"id1",
                upgrade: facts.is_upgrade(),
            },
            framing,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_fields_are_removed_and_forwarding_fields_set() {
        let text = head(
            &[
                ("Connection", "keep-alive, x-secret"),
                ("X-Secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("X-Kept", "1"),
                ("X-Forwarded-For", "1.2.3.4"),
                ("Fly-Client-IP", "6.6.6.6"),
                ("X-Request-Id", "theirs"),
            ],
            Framing::Length(3),
        );
        assert_eq!(
            text,
            "GET / HTTP/1.1\r\nhost: app.localhost\r\nX-Kept: 1\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-ssl: off\r\nx-forwarded-port: 80\r\n\
             x-forwarded-host: app.localhost\r\nfly-client-ip: 10.0.0.9\r\n\
             fly-forwarded-port: 80\r\nfly-region: local\r\nx-request-id: id1\r\n\
             content-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn upgrade_fields_survive_an_upgrade() {
        let text = head(
            &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
            Framing::Empty,
        );
        assert!(
            text.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{text}"
        );
    }
}
