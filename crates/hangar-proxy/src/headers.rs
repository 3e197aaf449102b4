//! Hop-by-hop header removal and the forwarding headers the proxy adds.

use std::fmt::Write as _;
use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{CONNECTION, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");
pub(crate) static FLY_CLIENT_IP: HeaderName = HeaderName::from_static("fly-client-ip");
pub(crate) static FLY_FORWARDED_PORT: HeaderName = HeaderName::from_static("fly-forwarded-port");
pub(crate) static FLY_REGION: HeaderName = HeaderName::from_static("fly-region");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// For an upgrade (`keep_upgrade`), `Connection: upgrade` and `Upgrade` are kept so the machine
/// sees the handshake.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(connection) = headers.get(&CONNECTION) {
        // Collected first because the map cannot be changed while a value is borrowed; this path
        // only runs when a client sends `Connection`, which keep-alive HTTP/1.1 clients rarely do.
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        if keep_upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(CONNECTION);
        }
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(UPGRADE);
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket and others).
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get(CONNECTION).is_some_and(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// What the proxy knows about the client connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    pub(crate) ip: IpAddr,
    pub(crate) ip_header: HeaderValue,
    pub(crate) port_header: HeaderValue,
}

impl ClientInfo {
    pub(crate) fn new(ip: IpAddr, listen_port: u16) -> Self {
        let ip = ip.to_canonical();
        Self {
            ip,
            ip_header: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            port_header: HeaderValue::from(listen_port),
        }
    }
}

/// Sets the forwarding headers. `X-Forwarded-For` is appended to (clients and earlier proxies
/// may have set it); `Fly-*` headers are overwritten because machines may trust them.
pub(crate) fn set_forwarding(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host: &HeaderValue,
    region: &HeaderValue,
) {
    // Room for the nine headers below at once, instead of growing the map step by step.
    headers.reserve(9);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(existing) => {
            let mut value = String::with_capacity(existing.len() + 42);
            value.push_str(existing.to_str().unwrap_or(""));
            if !value.is_empty() {
                value.push_str(", ");
            }
            let _ = write!(value, "{}", client.ip);
            HeaderValue::from_str(&value).unwrap_or_else(|_| client.ip_header.clone())
        }
        None => client.ip_header.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    headers.insert(X_FORWARDED_SSL.clone(), HeaderValue::from_static("off"));
    if !headers.contains_key(&X_FORWARDED_PORT) {
        headers.insert(X_FORWARDED_PORT.clone(), client.port_header.clone());
    }
    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    headers.insert(FLY_CLIENT_IP.clone(), client.ip_header.clone());
    headers.insert(FLY_FORWARDED_PORT.clone(), client.port_header.clone());
    headers.insert(FLY_REGION.clone(), region.clone());
}

/// A new request id: 32 random hex digits.
pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    // Formatted on the stack: one allocation (the header value's) per request.
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
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
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), 32, "{text}");
            assert!(
                text.bytes()
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

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("upgrade", HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn upgrade_headers_survive_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
    }
}
