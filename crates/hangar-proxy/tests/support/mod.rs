//! Test upstreams (tiny hyper servers on 127.0.0.1:0), a running proxy and a client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hangar_proxy::{
    AppRoute, Backend, BackendStatus, Concurrency, ConcurrencyKind, Proxy, ProxyOptions,
    RoutingSnapshot,
};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A test machine: answers with its name, echoes headers, sleeps, streams and echoes WebSockets.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (name_c, req_c, conn_c, stop_c) = (
            name.to_owned(),
            requests.clone(),
            connections.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop_c.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                conn_c.fetch_add(1, Ordering::SeqCst);
                let name = name_c.clone();
                let req_c = req_c.clone();
                let stop_conn = stop_c.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        req_c.fetch_add(1, Ordering::SeqCst);
                        serve(name.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = stop_conn.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Upstream {
            name: name.to_owned(),
            addr,
            requests,
            connections,
            stop,
        }
    }

    pub fn backend(&self, status: BackendStatus) -> Backend {
        Backend {
            machine_id: self.name.clone(),
            addr: self.addr,
            status,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn serve(name: String, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/slow" => {
            let ms = query_param(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(name.clone()))
        }
        "/headers" => {
            let map: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            Response::new(full(serde_json::to_string(&map).unwrap()))
        }
        "/upload" => {
            let mut total: u64 = 0;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(total.to_string()))
        }
        "/download" => {
            let total = query_param(&req, "bytes").unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n as usize))),
                        left - n,
                    ))
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .cloned()
                .unwrap_or_else(|| hyper::header::HeaderValue::from_static(""));
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() {
                        break;
                    }
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        // Answers before reading the body, as a server refusing a large upload does.
        "/early" => Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .body(full("too large"))
            .unwrap(),
        "/missing" => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("no such page"))
            .unwrap(),
        _ => Response::new(full(name.clone())),
    };
    let mut response = response;
    response
        .headers_mut()
        .insert("x-machine", name.parse().unwrap());
    response
        .headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(response)
}

/// A proxy serving on 127.0.0.1:0.
pub struct RunningProxy {
    pub proxy: Arc<Proxy>,
    pub addr: SocketAddr,
    pub registry: Registry,
    stop: CancellationToken,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn test_options() -> ProxyOptions {
    ProxyOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        connect_timeout: Duration::from_secs(2),
        header_read_timeout: Duration::from_secs(5),
        body_read_timeout: Some(Duration::from_secs(5)),
        upstream_timeout: Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
        max_queue_per_app: 100,
        access_log: false,
        region: "test".to_owned(),
    }
}

pub async fn start_proxy(opts: ProxyOptions) -> RunningProxy {
    let mut registry = Registry::default();
    let proxy = Proxy::new(opts, &mut registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(proxy.clone().serve(listener, stop.clone()));
    RunningProxy {
        proxy,
        addr,
        registry,
        stop,
    }
}

pub fn route(app: &str, kind: ConcurrencyKind, backends: Vec<Backend>) -> AppRoute {
    AppRoute {
        app: app.to_owned(),
        concurrency: Concurrency {
            kind,
            soft_limit: Some(20),
            hard_limit: None,
        },
        backends,
        queue_timeout: Duration::from_secs(5),
    }
}

pub fn snapshot(version: u64, routes: Vec<AppRoute>) -> RoutingSnapshot {
    let mut snapshot = RoutingSnapshot::new(version, "localhost", "test");
    for route in routes {
        snapshot.insert_app(route, &[]);
    }
    snapshot
}

/// A keep-alive HTTP/1.1 client.
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

pub async fn get(client: &Client, proxy: SocketAddr, host: &str, path: &str) -> Answer {
    get_with(client, proxy, host, path, &[]).await
}

pub async fn get_with(
    client: &Client,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut builder = Request::get(format!("http://{proxy}{path}")).header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request through the proxy failed at the socket level");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends raw bytes and reads until the server closes or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}
