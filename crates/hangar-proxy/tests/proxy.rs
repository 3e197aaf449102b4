//! The proxy against real upstreams on loopback: routing, errors, headers, load balancing,
//! limits, draining, upgrades, h2c, streaming and metrics.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hangar_proxy::{BackendStatus, Concurrency, ConcurrencyKind, RoutingSnapshot};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::StatusCode;
use hyper::body::Frame;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const EVENTUALLY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_case_insensitively_with_port_stripped() {
    let a = Upstream::start("machine-a").await;
    let b = Upstream::start("machine-b").await;
    let proxy = start_proxy(test_options()).await;
    let mut snap = snapshot(
        1,
        vec![
            route(
                "alpha",
                ConcurrencyKind::Requests,
                vec![a.backend(BackendStatus::Eligible)],
            ),
            route(
                "beta",
                ConcurrencyKind::Requests,
                vec![b.backend(BackendStatus::Eligible)],
            ),
        ],
    );
    snap.insert_app(
        route(
            "beta",
            ConcurrencyKind::Requests,
            vec![b.backend(BackendStatus::Eligible)],
        ),
        &["WWW.Example.COM".to_owned()],
    );
    proxy.proxy.publish(snap);
    let client = client();
    let check = |host: &'static str, want: &'static str| {
        let client = client.clone();
        let addr = proxy.addr;
        async move {
            let answer = get(&client, addr, host, "/").await;
            assert_eq!(answer.status, StatusCode::OK, "{host}");
            assert_eq!(answer.body, want, "{host}");
        }
    };
    check("alpha.localhost", "machine-a").await;
    check("ALPHA.LocalHost:8080", "machine-a").await;
    check("alpha.localhost.", "machine-a").await;
    check("beta.localhost:80", "machine-b").await;
    check("www.example.com", "machine-b").await;
    assert_eq!(proxy.proxy.snapshot_version(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_a_404_naming_the_host_in_text_or_json() {
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(snapshot(1, vec![]));
    let client = client();
    let text = get(&client, proxy.addr, "nope.localhost", "/").await;
    assert_eq!(text.status, StatusCode::NOT_FOUND);
    assert!(
        text.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(text.body.contains("\"nope.localhost\""), "{}", text.body);
    assert!(text.body.contains("hangar apps create"), "{}", text.body);
    assert!(text.headers.contains_key("x-request-id"));

    let json = get_with(
        &client,
        proxy.addr,
        "nope.localhost",
        "/",
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(json.status, StatusCode::NOT_FOUND);
    assert_eq!(json.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["code"], "unknown_host");
    assert!(body["error"].as_str().unwrap().contains("nope.localhost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_unavailable_reason_is_a_503_that_says_why() {
    let a = Upstream::start("machine-a").await;
    let b = Upstream::start("machine-b").await;
    let proxy = start_proxy(test_options()).await;
    let client = client();
    let cases: Vec<(Vec<hangar_proxy::Backend>, &str, &str)> = vec![
        (
            vec![],
            "no machine exposing an http service",
            "none_started",
        ),
        (
            vec![a.backend(BackendStatus::NotStarted)],
            "no started machine",
            "none_started",
        ),
        (
            vec![
                a.backend(BackendStatus::Unhealthy),
                b.backend(BackendStatus::NotStarted),
            ],
            "no healthy machine",
            "none_healthy",
        ),
        (
            vec![a.backend(BackendStatus::Draining)],
            "being stopped or replaced",
            "all_draining",
        ),
    ];
    for (version, (backends, phrase, code)) in cases.into_iter().enumerate() {
        proxy.proxy.publish(snapshot(
            version as u64 + 1,
            vec![route("app", ConcurrencyKind::Requests, backends)],
        ));
        let answer = get_with(
            &client,
            proxy.addr,
            "app.localhost",
            "/",
            &[("accept", "application/json")],
        )
        .await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{phrase}");
        assert!(answer.headers.contains_key("retry-after"));
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(phrase),
            "{}",
            answer.body
        );
        assert_eq!(body["code"], code);
    }
    assert_eq!(
        a.requests() + b.requests(),
        0,
        "no request may reach a non-eligible machine"
    );
}

/// A port on which nothing listens.
async fn refused_addr() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_a_502_and_is_retried_on_another_machine() {
    let good = Upstream::start("good").await;
    let refused = hangar_proxy::Backend {
        machine_id: "refusing".to_owned(),
        addr: refused_addr().await,
        status: BackendStatus::Eligible,
    };
    let proxy = start_proxy(test_options()).await;
    let client = client();

    proxy.proxy.publish(snapshot(
        1,
        vec![route(
            "app",
            ConcurrencyKind::Requests,
            vec![refused.clone()],
        )],
    ));
    let answer = get(&client, proxy.addr, "app.localhost", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.body.contains("could not connect"), "{}", answer.body);

    proxy.proxy.publish(snapshot(
        2,
        vec![route(
            "app",
            ConcurrencyKind::Requests,
            vec![refused, good.backend(BackendStatus::Eligible)],
        )],
    ));
    for _ in 0..20 {
        let answer = get(&client, proxy.addr, "app.localhost", "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "good");
    }
    assert_eq!(good.requests(), 20);
    assert_eq!(proxy.proxy.in_flight("refusing"), 0);
    // The refusing machine is ejected after three failures in a row and then skipped.
    let metrics = metrics_text(&proxy);
    assert!(
        metrics.contains("hangar_proxy_upstream_connect_errors_total{app=\"app\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_a_504() {
    let a = Upstream::start("slow").await;
    let mut opts = test_options();
    opts.upstream_timeout = Duration::from_millis(200);
    let proxy = start_proxy(opts).await;
    proxy.proxy.publish(one_app(&a));
    let started = Instant::now();
    let answer = get(&client(), proxy.addr, "app.localhost", "/slow?ms=3000").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        answer.body.contains("did not answer within"),
        "{}",
        answer.body
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("slow") == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400() {
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(snapshot(1, vec![]));
    let (answer, _) = raw_exchange(proxy.addr, b"THIS IS NOT HTTP\r\n\r\n", EVENTUALLY).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("content-type: text/plain"), "{answer}");
    assert!(answer.contains("x-request-id: "), "{answer}");
    assert!(answer.contains("is not valid HTTP/1.1"), "{answer}");
    // A bad header line, from a client that accepts JSON: the answer is JSON.
    let (answer, _) = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: app.localhost\r\nAccept: application/json\r\nBad Header\r\n\r\n",
        EVENTUALLY,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "malformed_request", "{answer}");
    assert_eq!(body["status"], 400, "{answer}");
    // HTTP/1.0 allows a request without Host; the proxy cannot route it.
    let (answer, _) = raw_exchange(proxy.addr, b"GET / HTTP/1.0\r\n\r\n", EVENTUALLY).await;
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains("no Host header"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431() {
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(snapshot(1, vec![]));
    let big = "x".repeat(64 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Big: {big}\r\n\r\n");
    let (answer, _) = raw_exchange(proxy.addr, request.as_bytes(), EVENTUALLY).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains("larger than 16384 bytes"), "{answer}");
    // A client that accepts JSON gets JSON (the head is scanned as it arrives, up to where
    // hyper stops reading it).
    let request = format!(
        "GET / HTTP/1.1\r\nHost: app.localhost\r\nAccept: application/json\r\nX-Big: {big}\r\n\r\n"
    );
    let (answer, _) = raw_exchange(proxy.addr, request.as_bytes(), EVENTUALLY).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "headers_too_large", "{answer}");
    // A request line that does not fit is a 414.
    let long = "a".repeat(20 * 1024);
    let request = format!("GET /{long} HTTP/1.1\r\nHost: app.localhost\r\n\r\n");
    let (answer, closed) = raw_exchange(proxy.addr, request.as_bytes(), EVENTUALLY).await;
    assert!(
        answer.starts_with("HTTP/1.1 414"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains("shorten the URL"), "{answer}");
    assert!(closed);
    // Proxied 4xx answers of the machine are never mistaken for the proxy's own.
    let a = Upstream::start("a").await;
    proxy.proxy.publish(snapshot(
        2,
        vec![route(
            "app",
            ConcurrencyKind::Requests,
            vec![a.backend(BackendStatus::Eligible)],
        )],
    ));
    let (answer, _) = raw_exchange(
        proxy.addr,
        b"GET /missing HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
        EVENTUALLY,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.ends_with("no such page"), "{answer}");
}

/// A raw keep-alive connection that reads responses with a `content-length` one at a time
/// (bytes of the next response, when pipelined, stay for the next call).
struct RawConn {
    stream: tokio::net::TcpStream,
    pending: Vec<u8>,
}

impl RawConn {
    async fn connect(addr: std::net::SocketAddr) -> RawConn {
        RawConn {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    fn complete(&self) -> Option<usize> {
        let head_end = self.pending.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.pending[..head_end]).to_ascii_lowercase();
        let length: usize = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })?;
        (self.pending.len() >= head_end + length).then_some(head_end + length)
    }

    async fn response(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        tokio::time::timeout(EVENTUALLY, async {
            loop {
                if let Some(end) = self.complete() {
                    let rest = self.pending.split_off(end);
                    let text = String::from_utf8_lossy(&self.pending).into_owned();
                    self.pending = rest;
                    return text;
                }
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "the proxy closed the connection: {}",
                    String::from_utf8_lossy(&self.pending)
                );
                self.pending.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("no complete response in time")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pipelining_and_split_heads() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let mut conn = RawConn::connect(proxy.addr).await;
    let request = b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    for _ in 0..3 {
        conn.send(request).await;
        let answer = conn.response().await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Three pipelined requests in one write, the second with a body: answered in order.
    conn.send(
        b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 3\r\n\r\nabc\
          GET /missing HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    )
    .await;
    let first = conn.response().await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let second = conn.response().await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.ends_with("\r\n\r\n3"), "{second}");
    let third = conn.response().await;
    assert!(third.starts_with("HTTP/1.1 404"), "{third}");
    assert_eq!(a.requests(), 6);
    // A head split in two writes, then a body sent after the head.
    conn.send(b"POST /upload HTTP/1.1\r\nHost: app.loc").await;
    conn.send(b"alhost\r\nContent-Length: 5\r\n\r\n").await;
    // The head alone reaches the machine before the body is sent.
    assert!(
        eventually(EVENTUALLY, || a.requests() == 7).await,
        "the head did not reach the machine"
    );
    conn.send(b"hello").await;
    let answer = conn.response().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n5"), "{answer}");
    // And the connection still serves.
    conn.send(request).await;
    let answer = conn.response().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(a.requests(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_by_read_timeouts() {
    let a = Upstream::start("a").await;
    let mut opts = test_options();
    opts.header_read_timeout = Duration::from_millis(300);
    opts.body_read_timeout = Some(Duration::from_millis(300));
    let proxy = start_proxy(opts).await;
    proxy.proxy.publish(one_app(&a));

    // Half the headers, then silence: the proxy closes the connection.
    let started = Instant::now();
    let (_, closed) =
        raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: app.loc", EVENTUALLY).await;
    assert!(
        closed,
        "a client sending half its headers must be disconnected"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Headers and part of the body, then silence: the request is cut with a 408.
    let started = Instant::now();
    let (answer, closed) = raw_exchange(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 100\r\n\r\n0123456789",
        EVENTUALLY,
    )
    .await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("a") == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_removed() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let client = client();
    let answer = get_with(
        &client,
        proxy.addr,
        "App.localhost:8080",
        "/headers",
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "basic x"),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.9"),
            ("fly-client-ip", "spoofed"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen: HashMap<String, String> = serde_json::from_str(&answer.body).unwrap();
    let port = proxy.addr.port().to_string();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-port"], port);
    assert_eq!(seen["x-forwarded-host"], "App.localhost:8080");
    assert_eq!(seen["fly-client-ip"], "127.0.0.1");
    assert_eq!(seen["fly-forwarded-port"], port);
    assert_eq!(seen["fly-region"], "test");
    assert_eq!(seen["host"], "App.localhost:8080");
    for removed in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(!seen.contains_key(removed), "{removed} reached the machine");
    }
    // The machine's `Keep-Alive` response header is hop-by-hop too.
    assert!(!answer.headers.contains_key("keep-alive"));
    // A generated request id is sent upstream and echoed.
    let generated = answer.headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 32);
    assert_eq!(seen["x-request-id"], generated);

    let answer = get_with(
        &client,
        proxy.addr,
        "app.localhost",
        "/headers",
        &[("x-request-id", "abc-123")],
    )
    .await;
    let seen: HashMap<String, String> = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(seen["x-request-id"], "abc-123");
    assert_eq!(answer.headers["x-request-id"], "abc-123");
    let other = get(&client, proxy.addr, "app.localhost", "/").await;
    assert_ne!(
        other.headers["x-request-id"], generated,
        "ids are unique per request"
    );
}

/// Sends `n` concurrent GETs and returns their answers.
async fn concurrent(
    client: &Client,
    proxy: std::net::SocketAddr,
    host: &'static str,
    path: &'static str,
    n: usize,
) -> Vec<Answer> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { get(&client, proxy, host, path).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_requests_spreads_concurrent_requests_evenly() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(snapshot(
        1,
        vec![route(
            "app",
            ConcurrencyKind::Requests,
            vec![
                a.backend(BackendStatus::Eligible),
                b.backend(BackendStatus::Eligible),
            ],
        )],
    ));
    let client = client();
    let answers = concurrent(&client, proxy.addr, "app.localhost", "/slow?ms=1500", 10).await;
    let mut by_machine: HashMap<String, usize> = HashMap::new();
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        *by_machine
            .entry(answer.headers["x-machine"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_machine.get("a"), Some(&5), "{by_machine:?}");
    assert_eq!(by_machine.get("b"), Some(&5), "{by_machine:?}");
    // Sequential requests reach both machines too (random tie-break).
    for _ in 0..40 {
        assert_eq!(
            get(&client, proxy.addr, "app.localhost", "/").await.status,
            StatusCode::OK
        );
    }
    assert!(
        a.requests() > 5 && b.requests() > 5,
        "a={} b={}",
        a.requests(),
        b.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_machine_gets_no_request_and_joins_when_healthy() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let proxy = start_proxy(test_options()).await;
    let backends = |c_status| {
        vec![
            a.backend(BackendStatus::Eligible),
            b.backend(BackendStatus::Eligible),
            c.backend(c_status),
        ]
    };
    proxy.proxy.publish(snapshot(
        1,
        vec![route(
            "app",
            ConcurrencyKind::Requests,
            backends(BackendStatus::Unhealthy),
        )],
    ));
    let client = client();
    for _ in 0..30 {
        assert_eq!(
            get(&client, proxy.addr, "app.localhost", "/").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(c.requests(), 0);
    assert!(a.requests() > 0 && b.requests() > 0);
    proxy.proxy.publish(snapshot(
        2,
        vec![route(
            "app",
            ConcurrencyKind::Requests,
            backends(BackendStatus::Eligible),
        )],
    ));
    for _ in 0..60 {
        assert_eq!(
            get(&client, proxy.addr, "app.localhost", "/").await.status,
            StatusCode::OK
        );
    }
    assert!(
        c.requests() > 0,
        "the healed machine must get requests right after the publish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_limit_queues_then_answers_503_with_retry_after() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    let mut app = route(
        "app",
        ConcurrencyKind::Requests,
        vec![a.backend(BackendStatus::Eligible)],
    );
    app.concurrency = Concurrency {
        kind: ConcurrencyKind::Requests,
        soft_limit: Some(1),
        hard_limit: Some(2),
    };
    app.queue_timeout = Duration::from_millis(500);
    proxy.proxy.publish(snapshot(1, vec![app]));
    let client = client();
    let started = Instant::now();
    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        concurrent(&client, proxy.addr, "app.localhost", "/slow?ms=2000", 10),
    )
    .await
    .expect("requests must not hang");
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let unavailable: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(
        ok, 2,
        "only the hard limit's worth of requests reach the machine"
    );
    assert_eq!(unavailable.len(), 8);
    for answer in &unavailable {
        assert_eq!(answer.headers["retry-after"], "1");
        assert!(
            answer.body.contains("hard concurrency limit"),
            "{}",
            answer.body
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(a.requests(), 2);
    let metrics = metrics_text(&proxy);
    assert!(
        metrics.contains("hangar_proxy_queued_requests_total{app=\"app\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("hangar_proxy_unavailable_total{app=\"app\",reason=\"all_at_hard_limit\"} 8"),
        "{metrics}"
    );

    // Queued requests that get a slot within the queue timeout are served.
    let mut app = route(
        "app",
        ConcurrencyKind::Requests,
        vec![a.backend(BackendStatus::Eligible)],
    );
    app.concurrency = Concurrency {
        kind: ConcurrencyKind::Requests,
        soft_limit: None,
        hard_limit: Some(1),
    };
    app.queue_timeout = Duration::from_secs(5);
    proxy.proxy.publish(snapshot(2, vec![app]));
    let answers = concurrent(&client, proxy.addr, "app.localhost", "/slow?ms=200", 4).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_an_immediate_503() {
    let a = Upstream::start("a").await;
    let mut opts = test_options();
    opts.max_queue_per_app = 1;
    let proxy = start_proxy(opts).await;
    let mut app = route(
        "app",
        ConcurrencyKind::Requests,
        vec![a.backend(BackendStatus::Eligible)],
    );
    app.concurrency = Concurrency {
        kind: ConcurrencyKind::Requests,
        soft_limit: None,
        hard_limit: Some(1),
    };
    app.queue_timeout = Duration::from_secs(3);
    proxy.proxy.publish(snapshot(1, vec![app]));
    let answers = concurrent(&client(), proxy.addr, "app.localhost", "/slow?ms=1000", 4).await;
    let full = answers
        .iter()
        .filter(|a| a.body.contains("queue is full"))
        .count();
    assert_eq!(
        full, 2,
        "one request runs, one waits, two find the queue full"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_type_opens_one_upstream_connection_per_request_and_requests_type_pools() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(snapshot(
        1,
        vec![
            route(
                "pooled",
                ConcurrencyKind::Requests,
                vec![a.backend(BackendStatus::Eligible)],
            ),
            route(
                "fresh",
                ConcurrencyKind::Connections,
                vec![b.backend(BackendStatus::Eligible)],
            ),
        ],
    ));
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            get(&client, proxy.addr, "pooled.localhost", "/")
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            get(&client, proxy.addr, "fresh.localhost", "/")
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
    assert_eq!(b.connections.load(Ordering::SeqCst), 10);
}

/// Keeps `clients` loops of GETs running until `stop`; returns (ok, failures).
fn load(
    client: &Client,
    proxy: std::net::SocketAddr,
    clients: usize,
    path: &'static str,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    (0..clients)
        .map(|_| {
            let client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0, Vec::new());
                // Bounded: the loop ends at `stop` or after 100,000 requests.
                for _ in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let request = hyper::Request::get(format!("http://{proxy}{path}"))
                        .header("host", "app.localhost")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match client.request(request).await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.into_body().collect().await;
                            ok += 1;
                        }
                        Ok(response) => failures.push(format!("status {}", response.status())),
                        Err(err) => failures.push(format!("socket error: {err:?}")),
                    }
                }
                (ok, failures)
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>) -> (usize, Vec<String>) {
    let (mut ok, mut failures) = (0, Vec::new());
    for task in tasks {
        let (o, f) = task.await.unwrap();
        ok += o;
        failures.extend(f);
    }
    (ok, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_machine_under_load_fails_no_request_and_lets_slow_requests_finish() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(test_options()).await;
    let routes = |b_status: Option<BackendStatus>| {
        let mut backends = vec![a.backend(BackendStatus::Eligible)];
        if let Some(status) = b_status {
            backends.push(b.backend(status));
        }
        vec![route("app", ConcurrencyKind::Requests, backends)]
    };
    proxy
        .proxy
        .publish(snapshot(1, routes(Some(BackendStatus::Eligible))));
    let client = client();
    let stop = Arc::new(AtomicBool::new(false));
    let fast = load(&client, proxy.addr, 8, "/", &stop);
    let slow = tokio::spawn({
        let (client, addr) = (client.clone(), proxy.addr);
        async move { concurrent(&client, addr, "app.localhost", "/slow?ms=2000", 6).await }
    });
    assert!(
        eventually(EVENTUALLY, || proxy.proxy.in_flight("b") >= 2).await,
        "slow requests reach b"
    );

    // The stop sequence: drain, wait for in-flight requests, remove, then kill the machine.
    proxy
        .proxy
        .publish(snapshot(2, routes(Some(BackendStatus::Draining))));
    let served_before = b.requests();
    assert!(
        proxy.proxy.wait_idle("b", Duration::from_secs(10)).await,
        "b must become idle"
    );
    assert_eq!(proxy.proxy.in_flight("b"), 0);
    proxy.proxy.publish(snapshot(3, routes(None)));
    drop(b);
    // Keep the load running against the remaining machine for a while.
    let a_before = a.requests();
    assert!(eventually(EVENTUALLY, || a.requests() > a_before + 200).await);
    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = finish(fast).await;
    assert!(
        failures.is_empty(),
        "failures during drain: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 200);
    let slow = slow.await.unwrap();
    assert!(
        slow.iter().all(|a| a.status == StatusCode::OK),
        "slow in-flight requests finish"
    );
    assert!(served_before > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_swaps_during_load_never_fail_a_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(snapshot(
        0,
        vec![route(
            "app",
            ConcurrencyKind::Requests,
            vec![a.backend(BackendStatus::Eligible)],
        )],
    ));
    let client = client();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&client, proxy.addr, 8, "/", &stop);
    let upstreams = [&a, &b, &c];
    for version in 1..=300u64 {
        // Always at least one eligible machine; the others rotate through every status.
        let statuses = [
            BackendStatus::Eligible,
            BackendStatus::Draining,
            BackendStatus::Unhealthy,
            BackendStatus::NotStarted,
        ];
        let backends = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let status = if i == (version as usize % 3) {
                    BackendStatus::Eligible
                } else {
                    statuses[(version as usize + i) % 4]
                };
                u.backend(status)
            })
            .collect();
        proxy.proxy.publish(snapshot(
            version,
            vec![route("app", ConcurrencyKind::Requests, backends)],
        ));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = finish(tasks).await;
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 100, "{ok}");
    assert_eq!(proxy.proxy.snapshot_version(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let mut request = format!("ws://{}/ws", proxy.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", "app.localhost".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        proxy.proxy.in_flight("a"),
        1,
        "an open WebSocket counts as load"
    );
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().len(), 100_000);
    ws.close(None).await.unwrap();
    drop(ws);
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("a") == 0).await);
    assert!(proxy.proxy.wait_idle("a", Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_requests_are_proxied() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..5 {
        let request = hyper::Request::get("http://app.localhost/headers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let seen: HashMap<String, String> = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["host"], "app.localhost");
        assert_eq!(seen["x-forwarded-host"], "app.localhost");
    }
    // HTTP/2 cookie fields reach the HTTP/1.1 machine as one field.
    let request = hyper::Request::get("http://app.localhost/headers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: HashMap<String, String> = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["cookie"], "a=1; b=2");
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let client = client();
    // Warm up allocator arenas and pools so that growth measures buffering, not first use.
    let _ = get(
        &client,
        proxy.addr,
        "app.localhost",
        "/download?bytes=1048576",
    )
    .await;
    let before = rss_bytes();

    let response = get_stream(&client, proxy.addr, "/download?bytes=104857600").await;
    let mut body = response.into_body();
    let mut received: u64 = 0;
    let mut peak = before;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        peak = peak.max(rss_bytes());
    }
    assert_eq!(received, SIZE);

    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let stream = futures_util::stream::iter(
        (0..SIZE / chunk.len() as u64)
            .map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    );
    let upload_client: hyper_util::client::legacy::Client<_, StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = hyper::Request::post(format!("http://{}/upload", proxy.addr))
        .header("host", "app.localhost")
        .body(StreamBody::new(stream))
        .unwrap();
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let peak_upload = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (stop, peak) = (monitor_stop.clone(), peak_upload.clone());
        tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                peak.fetch_max(rss_bytes() as usize, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let response = upload_client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let count = response.into_body().collect().await.unwrap().to_bytes();
    monitor_stop.store(true, Ordering::SeqCst);
    monitor.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&count), SIZE.to_string());
    let peak = peak.max(peak_upload.load(Ordering::SeqCst) as u64);
    let growth = peak.saturating_sub(before);
    println!("RSS before {before} peak {peak} growth {growth} bytes");
    assert!(
        growth < 24 * 1024 * 1024,
        "RSS grew by {growth} bytes while streaming 100 MB each way"
    );
}

async fn get_stream(
    client: &Client,
    proxy: std::net::SocketAddr,
    path: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let request = hyper::Request::get(format!("http://{proxy}{path}"))
        .header("host", "app.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.request(request).await.unwrap()
}

fn metrics_text(proxy: &RunningProxy) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &proxy.registry).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_requests_latency_in_flight_and_errors() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let client = client();
    for _ in 0..3 {
        assert_eq!(
            get(&client, proxy.addr, "app.localhost", "/").await.status,
            StatusCode::OK
        );
    }
    let slow = tokio::spawn({
        let client = client.clone();
        let addr = proxy.addr;
        async move { get(&client, addr, "app.localhost", "/slow?ms=1000").await }
    });
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("a") == 1).await);
    let text = metrics_text(&proxy);
    assert!(
        text.contains("hangar_proxy_requests_total{app=\"app\",status=\"2xx\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("hangar_proxy_request_duration_seconds_count{app=\"app\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("hangar_proxy_in_flight{app=\"app\",machine=\"a\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE hangar_proxy_upstream_connect_errors counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE hangar_proxy_queue_wait_seconds histogram"),
        "{text}"
    );
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert!(metrics_text(&proxy).contains("hangar_proxy_in_flight{app=\"app\",machine=\"a\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_survives_snapshot_swaps_and_wait_idle_times_out_while_busy() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    let publish = |v| {
        proxy.proxy.publish(snapshot(
            v,
            vec![route(
                "app",
                ConcurrencyKind::Requests,
                vec![a.backend(BackendStatus::Eligible)],
            )],
        ))
    };
    publish(1);
    let client = client();
    let slow = tokio::spawn({
        let client = client.clone();
        let addr = proxy.addr;
        async move { get(&client, addr, "app.localhost", "/slow?ms=1500").await }
    });
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("a") == 1).await);
    publish(2);
    publish(3);
    assert_eq!(
        proxy.proxy.in_flight("a"),
        1,
        "a publish must not reset in-flight counts"
    );
    assert!(!proxy.proxy.wait_idle("a", Duration::from_millis(100)).await);
    assert!(proxy.proxy.wait_idle("a", Duration::from_secs(10)).await);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert!(
        proxy
            .proxy
            .wait_idle("unknown-machine", Duration::from_millis(1))
            .await
    );
    let _ = RoutingSnapshot::default();
}

/// Real clients, when installed: curl over HTTP/1.1 and h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_app_over_http1_and_h2c() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP: curl is not installed (apt-get install -y curl)");
        return;
    }
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    for extra in [&[][..], &["--http2-prior-knowledge"][..]] {
        let url = format!("http://{}/", proxy.addr);
        let mut args = vec!["-sS", "-i", "-H", "Host: app.localhost", url.as_str()];
        args.extend_from_slice(extra);
        let output = tokio::process::Command::new("curl")
            .args(&args)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/2 200"),
            "{text}"
        );
        assert!(text.contains("x-machine: a"), "{text}");
        assert!(text.ends_with("\r\n\r\na"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_the_whole_response_and_the_connection_serves_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // 32 MB is more than loopback socket buffers hold: the proxy's writes block whenever the
    // client falls behind, and the client starts reading only once the machine is answering.
    let size = 32 * 1024 * 1024;
    stream
        .write_all(
            format!("GET /download?bytes={size} HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    assert!(eventually(EVENTUALLY, || a.requests() == 1).await);
    let mut received = Vec::with_capacity(size + 64 * 1024);
    let mut buf = vec![0u8; 256 * 1024];
    let complete = tokio::time::timeout(EVENTUALLY, async {
        // Bounded by the timeout; a chunked body ends with the zero-size chunk.
        while !received.ends_with(b"\r\n0\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the proxy closed the connection after {} bytes",
                received.len()
            );
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        complete.is_ok(),
        "the response stopped after {} bytes",
        received.len()
    );
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(received.starts_with(b"HTTP/1.1 200"));
    // Chunk-size lines are hex digits, so every 'x' after the head is payload.
    let payload = received[head_end..].iter().filter(|&&b| b == b'x').count();
    assert_eq!(payload, size, "body bytes");
    // The connection still serves the next request.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut conn = RawConn {
        stream,
        pending: Vec::new(),
    };
    let answer = conn.response().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// App `app` at `app.localhost` with one eligible machine, pooling upstream connections.
fn app_at(machine_id: &str, addr: std::net::SocketAddr) -> RoutingSnapshot {
    let backend = hangar_proxy::Backend {
        machine_id: machine_id.to_owned(),
        addr,
        status: BackendStatus::Eligible,
    };
    snapshot(
        1,
        vec![route("app", ConcurrencyKind::Requests, vec![backend])],
    )
}

fn one_app(a: &Upstream) -> RoutingSnapshot {
    app_at(&a.name, a.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_and_connect_are_400_and_chunked_bodies_pass() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let head = "POST /upload HTTP/1.1\r\nHost: app.localhost\r\n";
    for (case, extra) in [
        (
            "both framings",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ),
        (
            "conflicting lengths",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        ("a coding other than chunked", "Transfer-Encoding: gzip\r\n"),
        (
            "codings besides chunked",
            "Transfer-Encoding: gzip, chunked\r\n",
        ),
        (
            "two Transfer-Encoding fields",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("a negative length", "Content-Length: -1\r\n"),
        ("two Host fields", "Host: other.localhost\r\n"),
    ] {
        let request = format!("{head}{extra}\r\nhello");
        let (answer, closed) = raw_exchange(proxy.addr, request.as_bytes(), EVENTUALLY).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{case}: {answer}");
        assert!(
            answer.contains("malformed_request") || answer.contains("not valid"),
            "{case}: {answer}"
        );
        assert!(closed, "{case}: the connection must close");
    }
    let (answer, _) = raw_exchange(
        proxy.addr,
        b"CONNECT app.localhost:443 HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
        EVENTUALLY,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(a.requests(), 0, "no refused request reached the machine");
    // A chunked request body reaches the machine whole, followed by another request.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(
        format!("{head}Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let answer = conn.response().await;
    assert!(answer.ends_with("\r\n\r\n8"), "{answer}");
    // A broken chunked body is cut.
    let (answer, closed) = raw_exchange(
        proxy.addr,
        format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n").as_bytes(),
        EVENTUALLY,
    )
    .await;
    assert!(closed);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_passed_on_and_early_answers_end_the_upload() {
    use tokio::io::AsyncReadExt;
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nExpect: 100-continue\r\n\
          Content-Length: 5\r\n\r\n",
    )
    .await;
    // The machine's 100 Continue reaches the client before it sends the body.
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(EVENTUALLY, async {
        while !interim.ends_with(b"\r\n\r\n") {
            conn.stream.read_exact(&mut byte).await.unwrap();
            interim.push(byte[0]);
        }
    })
    .await
    .expect("no interim response");
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    conn.send(b"hello").await;
    let answer = conn.response().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n5"), "{answer}");

    // A machine that answers before reading a large body: the answer arrives while the
    // client is still sending, and the connection closes after it.
    let (answer, closed) = raw_exchange(
        proxy.addr,
        b"POST /early HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 100000000\r\n\r\nsome",
        EVENTUALLY,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with("too large"), "{answer}");
    assert!(closed);
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("a") == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_clients_get_1_0_answers_and_plain_bodies() {
    let a = Upstream::start("a").await;
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(one_app(&a));
    // Without keep-alive, the connection closes after the answer.
    let (answer, closed) = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n",
        EVENTUALLY,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\na"), "{answer}");
    assert!(closed);
    // With keep-alive, it stays open.
    let mut conn = RawConn::connect(proxy.addr).await;
    for _ in 0..2 {
        conn.send(b"GET / HTTP/1.0\r\nHost: app.localhost\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let answer = conn.response().await;
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.contains("connection: keep-alive"), "{answer}");
    }
    // An HTTP/1.0 client cannot upgrade: its `Upgrade` does not reach the machine.
    let (answer, _) = raw_exchange(
        proxy.addr,
        b"GET /headers HTTP/1.0\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        EVENTUALLY,
    )
    .await;
    let seen: HashMap<String, String> =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(!seen.contains_key("upgrade"), "{answer}");
    // A streamed (chunked) response reaches an HTTP/1.0 client as plain data, then the close.
    let (answer, closed) = raw_exchange(
        proxy.addr,
        b"GET /download?bytes=200000 HTTP/1.0\r\nHost: app.localhost\r\n\r\n",
        EVENTUALLY,
    )
    .await;
    assert!(closed);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert_eq!(body.len(), 200_000);
    assert!(body.bytes().all(|b| b == b'x'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_machine_closed_are_not_used() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A machine that answers one request per connection, then closes it without saying so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let served_c = served.clone();
    let machine = tokio::spawn(async move {
        // Bounded by the test: the task is aborted at the end.
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            served_c.fetch_add(1, Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    });
    let proxy = start_proxy(test_options()).await;
    proxy.proxy.publish(app_at("oneshot", addr));
    let client = client();
    for i in 0..5 {
        let answer = get(&client, proxy.addr, "app.localhost", "/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.body
        );
        assert_eq!(answer.body, "ok");
    }
    assert_eq!(served.load(Ordering::SeqCst), 5);
    machine.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_that_stops_reading_an_upload_is_a_504_within_twice_the_upstream_timeout() {
    use tokio::io::AsyncWriteExt;
    // A machine that accepts connections and never reads from them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let machine = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded by the test: the task is aborted at the end.
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut opts = test_options();
    opts.upstream_timeout = Duration::from_millis(500);
    let proxy = start_proxy(opts).await;
    proxy.proxy.publish(app_at("deaf", addr));
    let size = 64 * 1024 * 1024;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: {size}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // The client keeps sending until the proxy answers and stops reading.
    let chunk = vec![b'x'; 64 * 1024];
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..size / chunk.len() {
            if write_half.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(EVENTUALLY, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match read_half.read(&mut buf).await {
                Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer: the upload hung");
    let answer = String::from_utf8_lossy(&answer);
    // The write to the machine gives up after the timeout, then the wait for its answer does.
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("deaf") == 0).await);
    writer.abort();
    machine.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connections_are_closed_after_the_idle_timeout() {
    let a = Upstream::start("a").await;
    let mut opts = test_options();
    opts.header_read_timeout = Duration::from_millis(300);
    let proxy = start_proxy(opts).await;
    proxy.proxy.publish(one_app(&a));
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(conn);
    // Requests keep the connection open past the timeout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        let request = hyper::Request::get("http://app.localhost/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    // Then silence: the proxy ends the connection.
    let closed_at = Instant::now();
    tokio::time::timeout(EVENTUALLY, ended)
        .await
        .expect("the idle connection was not closed")
        .unwrap()
        .ok();
    assert!(closed_at.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_response_frees_the_machine_after_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let a = Upstream::start("a").await;
    let mut opts = test_options();
    opts.body_read_timeout = Some(Duration::from_millis(300));
    let proxy = start_proxy(opts).await;
    proxy.proxy.publish(one_app(&a));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // More than the socket buffers hold, and the client never reads: the proxy's write blocks.
    let size = 64 * 1024 * 1024;
    stream
        .write_all(
            format!("GET /download?bytes={size} HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    assert!(eventually(EVENTUALLY, || proxy.proxy.in_flight("a") == 1).await);
    // The response is cut after the client timeout and the machine's slot is freed.
    assert!(
        eventually(EVENTUALLY, || proxy.proxy.in_flight("a") == 0).await,
        "a client that reads nothing holds the machine"
    );
    drop(stream);
}
