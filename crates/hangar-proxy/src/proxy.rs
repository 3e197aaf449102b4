//! The proxy: accept loop, request path, upstream connections and upgrades.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, HOST, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{CompiledApp, CompiledBackend, CompiledSnapshot, NoPick};
use crate::body::{BodyReadTimeout, ClientBody, ResponseBody, Streamed, UpstreamBody};
use crate::conn::{self, ClientIo, ConnShared, RequestGuard};
use crate::error::{ProxyError, Unavailable};
use crate::headers::{self, ClientInfo, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::snapshot::{BackendStatus, ConcurrencyKind, RoutingSnapshot};
use crate::stats::{InFlightGuard, StatsRegistry};

/// How the proxy listens and how patient it is.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where `hangar server` binds the proxy (`--http-listen`); [`Proxy::serve`] takes a bound
    /// listener, so this is informational for the caller.
    pub listen: SocketAddr,
    /// Time allowed to open a TCP connection to a machine before trying another.
    pub connect_timeout: Duration,
    /// Time allowed for a client to send a request's headers; slower clients are disconnected.
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body; `None` waits forever.
    pub body_read_timeout: Option<Duration>,
    /// Time allowed for a machine to send response headers before the client gets a 504.
    pub upstream_timeout: Duration,
    /// Largest request head accepted (at least 8 KiB); larger ones get a 431.
    pub max_header_bytes: usize,
    /// How long an HTTP/1.1 keep-alive connection may sit idle before its HTTP state
    /// (hyper's buffers, about 17 KiB) is freed; the socket stays open and the state is made
    /// again when the next request arrives. Zero frees it as soon as the client has nothing
    /// more to send. The default, 10 ms, keeps busy connections (a request every few
    /// milliseconds) from rebuilding hyper's state per request, and is short enough that a
    /// burst of connections does not hold all their buffers at once (the allocator would
    /// keep that peak).
    pub idle_release_after: Duration,
    /// Requests of one app that may wait for a machine below its hard limit; more get a 503.
    pub max_queue_per_app: usize,
    /// Logs one line per request (target `hangar_proxy::access`) when set.
    pub access_log: bool,
    /// The region sent in `Fly-Region` when the snapshot does not name one.
    pub region: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Some(Duration::from_secs(60)),
            upstream_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            idle_release_after: Duration::from_millis(10),
            max_queue_per_app: 1024,
            access_log: false,
            region: "local".to_owned(),
        }
    }
}

/// hyper's connection settings, made once per listener.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// The edge proxy. Cheap to share: [`Proxy::new`] returns an `Arc`.
pub struct Proxy {
    opts: ProxyOptions,
    snapshot: ArcSwap<CompiledSnapshot>,
    stats: StatsRegistry,
    metrics: Metrics,
    /// Keep-alive connections whose HTTP state was freed while idle (see
    /// [`ProxyOptions::idle_release_after`]).
    idle_releases: std::sync::atomic::AtomicU64,
}

impl Proxy {
    /// Creates a proxy with an empty routing table; its metrics are registered on `registry`
    /// under the `hangar_proxy_` prefix.
    pub fn new(opts: ProxyOptions, registry: &mut Registry) -> Arc<Proxy> {
        let region = region_header(&opts.region);
        Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(CompiledSnapshot {
                version: 0,
                base_domain: "localhost".to_owned(),
                region,
                hosts: Default::default(),
            }),
            stats: StatsRegistry::default(),
            metrics: Metrics::new(registry),
            idle_releases: std::sync::atomic::AtomicU64::new(0),
            opts,
        })
    }

    /// How many times a keep-alive connection's HTTP state was freed while it sat idle.
    pub fn idle_releases(&self) -> u64 {
        self.idle_releases
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces the routing table. Requests already in flight keep the machine they were sent
    /// to; new requests see the new table as soon as this returns.
    pub fn publish(&self, snapshot: RoutingSnapshot) {
        let region = if snapshot.region.is_empty() {
            region_header(&self.opts.region)
        } else {
            region_header(&snapshot.region)
        };
        let mut compiled_apps: Vec<(String, Arc<CompiledApp>)> = Vec::new();
        let mut hosts = std::collections::HashMap::with_capacity(snapshot.apps.len());
        for (host, route) in &snapshot.apps {
            // One compiled app per route even when several hosts share it, so they share load.
            let existing = compiled_apps
                .iter()
                .find(|(app, _)| *app == route.app)
                .map(|(_, compiled)| compiled.clone());
            let compiled = match existing {
                Some(compiled) => compiled,
                None => {
                    let queue = self.stats.queue(&route.app);
                    let mut eligible = Vec::new();
                    let mut others = Vec::new();
                    for backend in &route.backends {
                        let is_eligible = backend.status == BackendStatus::Eligible;
                        let stats = self.stats.machine(
                            &route.app,
                            &backend.machine_id,
                            backend.addr,
                            is_eligible,
                            &queue,
                            || {
                                self.metrics
                                    .in_flight_gauge(&route.app, &backend.machine_id)
                            },
                        );
                        if is_eligible {
                            eligible.push(CompiledBackend {
                                addr: backend.addr,
                                stats,
                            });
                        } else {
                            others.push(stats);
                        }
                    }
                    let compiled = Arc::new(CompiledApp {
                        app: route.app.clone(),
                        kind: route.concurrency.kind,
                        soft_limit: route.concurrency.soft_limit,
                        hard_limit: route.concurrency.hard_limit,
                        queue_timeout: route.queue_timeout,
                        unavailable: CompiledApp::unavailable_reason(
                            route.backends.iter().map(|b| b.status),
                        ),
                        machines: route.backends.len(),
                        eligible,
                        _others: others,
                        queue,
                        metrics: self.metrics.app(&route.app),
                    });
                    compiled_apps.push((route.app.clone(), compiled.clone()));
                    compiled
                }
            };
            hosts.insert(host.to_ascii_lowercase(), compiled);
        }
        let version = snapshot.version;
        let old = self.snapshot.swap(Arc::new(CompiledSnapshot {
            version,
            base_domain: snapshot.base_domain,
            region,
            hosts,
        }));
        drop(old);
        // Requests queued behind a hard limit re-check: the new table may have more machines.
        for (_, app) in &compiled_apps {
            if app.queue.waiting.load(Ordering::SeqCst) > 0 {
                app.queue.notify.notify_waiters();
            }
        }
        for (app, machine_id) in self.stats.prune() {
            self.metrics.forget_series(&app, &machine_id);
        }
        tracing::debug!(
            version,
            apps = compiled_apps.len(),
            "routing snapshot published"
        );
    }

    /// The version of the snapshot in use.
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot.load().version
    }

    /// Requests (and upgraded connections) in flight to a machine.
    pub fn in_flight(&self, machine_id: &str) -> usize {
        self.stats.get(machine_id).map_or(0, |s| s.in_flight())
    }

    /// Waits until no request or upgraded connection to `machine_id` is in flight, or `timeout`
    /// passes; returns whether the machine is idle. Publish a snapshot that marks the machine
    /// [`BackendStatus::Draining`] (or drops it) first, so that it gets no new requests.
    pub async fn wait_idle(&self, machine_id: &str, timeout: Duration) -> bool {
        match self.stats.get(machine_id) {
            Some(stats) => stats.wait_idle(timeout).await,
            None => true,
        }
    }

    /// Serves HTTP/1.1 and HTTP/2 prior-knowledge connections from `listener` until `shutdown`
    /// is cancelled, then lets open connections finish their requests and returns.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let listen_port = listener.local_addr()?.port();
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(self.opts.header_read_timeout)
            .max_buf_size(self.opts.max_header_bytes.max(8192))
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.opts.max_header_bytes).unwrap_or(u32::MAX));
        let builders = Arc::new(Builders { http1, http2 });
        let connections = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Running out of file descriptors must not end the proxy: back off briefly.
                        tracing::warn!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = ConnShared::new(ClientInfo::new(peer.ip(), listen_port));
            connections.spawn(self.clone().serve_client(
                stream,
                shared,
                builders.clone(),
                shutdown.clone(),
            ));
        }
        drop(listener);
        connections.close();
        connections.wait().await;
        Ok(())
    }

    /// Serves one client connection (see `conn` for why idle HTTP/1 connections hold no
    /// hyper state).
    async fn serve_client(
        self: Arc<Self>,
        stream: TcpStream,
        shared: Arc<ConnShared>,
        builders: Arc<Builders>,
        shutdown: CancellationToken,
    ) {
        let idle_timeout = self.opts.header_read_timeout;
        let h2 = tokio::select! {
            () = shutdown.cancelled() => return,
            h2 = conn::first_bytes_are_h2(&stream, idle_timeout) => h2,
        };
        match h2 {
            None => return,
            Some(true) => {
                let proxy = self.clone();
                let service = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    let shared = shared.clone();
                    async move {
                        Ok::<_, Infallible>(Box::pin(proxy.handle(req, &shared.client, None)).await)
                    }
                });
                // Boxed: inline, the HTTP/2 state would enlarge every connection's task.
                let mut conn = Box::pin(
                    builders
                        .http2
                        .serve_connection(TokioIo::new(stream), service),
                );
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(error = %err, "client connection ended with an error");
                }
                return;
            }
            Some(false) => {}
        }
        let mut stream = stream;
        let mut prefix = Bytes::new();
        // Bounded by the client: every iteration serves at least one readable event, and
        // idle waits end after the idle timeout.
        loop {
            if prefix.is_empty() {
                let readable = tokio::select! {
                    () = shutdown.cancelled() => return,
                    readable = tokio::time::timeout(idle_timeout, stream.readable()) => readable,
                };
                if !matches!(readable, Ok(Ok(()))) {
                    return;
                }
            }
            shared.may_release_after_replay(!prefix.is_empty());
            let io = ClientIo::new(
                stream,
                shared.clone(),
                std::mem::take(&mut prefix),
                self.opts.idle_release_after,
                self.opts.max_header_bytes,
            );
            let proxy = self.clone();
            let service_shared = shared.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                let shared = service_shared.clone();
                // Counted before hyper polls anything else: from here on, a read that finds
                // no data must wait, not report the connection idle.
                let upgrade = headers::is_upgrade_request(req.headers());
                let guard = shared.start_request(upgrade);
                async move {
                    let response = Box::pin(proxy.handle(req, &shared.client, Some(&guard))).await;
                    Ok::<_, Infallible>(response.map(|inner| ClientBody {
                        inner,
                        _guard: Some(guard),
                    }))
                }
            });
            // Boxed, so an idle connection's task is small.
            let mut conn = Box::new(
                builders
                    .http1
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            );
            let result = tokio::select! {
                result = &mut *conn => result,
                () = shutdown.cancelled() => {
                    std::pin::Pin::new(&mut *conn).graceful_shutdown();
                    (&mut *conn).await
                }
            };
            // `None`: the connection was upgraded and the socket belongs to the tunnel.
            let Some(parts) = (*conn).into_parts() else {
                return;
            };
            let io = parts.io.into_inner();
            if !io.released || io.closed || shutdown.is_cancelled() {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "client connection ended with an error");
                }
                return;
            }
            self.idle_releases
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Released while idle: what hyper read but did not use is replayed next time.
            // Copied: an empty or short `read_buf` can still own hyper's whole 8 KiB buffer.
            stream = io.stream;
            prefix = Bytes::copy_from_slice(&parts.read_buf);
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        client: &ClientInfo,
        guard: Option<&Arc<RequestGuard>>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let wants_json = req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) if !id.is_empty() => id.clone(),
            _ => headers::new_request_id(),
        };
        let method = self.opts.access_log.then(|| req.method().clone());
        let path = self.opts.access_log.then(|| req.uri().path().to_owned());
        let (mut response, app_name, machine) =
            match self.route(req, &request_id, client, guard).await {
                Ok((response, app, machine)) => (response, Some(app), Some(machine)),
                Err((err, app)) => {
                    let response = err.to_response(wants_json);
                    if let Some(app) = &app {
                        app.metrics.count(response.status().as_u16());
                        if let ProxyError::Unavailable { reason, .. } = &err {
                            self.metrics.unavailable(&app.metrics, reason.label());
                        }
                    }
                    (response, app, None)
                }
            };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        if let Some(app) = &app_name {
            app.metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
        }
        if self.opts.access_log {
            tracing::info!(
                target: "hangar_proxy::access",
                client = %client.ip,
                method = %method.unwrap_or_default(),
                path = path.as_deref().unwrap_or(""),
                app = app_name.as_ref().map_or("", |a| a.app.as_str()),
                machine = machine.as_deref().unwrap_or(""),
                status = response.status().as_u16(),
                duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                request_id = request_id.to_str().unwrap_or(""),
                "request"
            );
        }
        response
    }

    /// Routes one request; on error also returns the app, when known, for metrics.
    #[allow(clippy::type_complexity)]
    async fn route(
        &self,
        mut req: Request<Incoming>,
        request_id: &HeaderValue,
        client: &ClientInfo,
        guard: Option<&Arc<RequestGuard>>,
    ) -> Result<
        (Response<ResponseBody>, Arc<CompiledApp>, String),
        (ProxyError, Option<Arc<CompiledApp>>),
    > {
        let (app, region) = {
            let snapshot = self.snapshot.load();
            let host_value = req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .filter(|h| !h.is_empty());
            let Some(host_value) = host_value else {
                return Err((
                    ProxyError::MissingHost {
                        base_domain: snapshot.base_domain.clone(),
                    },
                    None,
                ));
            };
            let host = headers::normalise_host(host_value);
            match snapshot.hosts.get(host.as_ref()) {
                Some(app) => (app.clone(), snapshot.region.clone()),
                None => {
                    return Err((
                        ProxyError::UnknownHost {
                            host: host.into_owned(),
                            base_domain: snapshot.base_domain.clone(),
                        },
                        None,
                    ));
                }
            }
        };
        if app.eligible.is_empty() {
            let err = ProxyError::Unavailable {
                app: app.app.clone(),
                reason: app.unavailable,
                machines: app.machines,
            };
            return Err((err, Some(app)));
        }
        let first = match app.pick(&[]) {
            Ok(picked) => picked,
            Err(_) => match self.wait_in_queue(&app).await {
                Ok(picked) => picked,
                Err(reason) => {
                    let err = ProxyError::Unavailable {
                        app: app.app.clone(),
                        reason,
                        machines: app.machines,
                    };
                    return Err((err, Some(app)));
                }
            },
        };

        // The request as the machine sees it: HTTP/1.1, origin-form, forwarding headers set.
        let upgrade =
            req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let host = match parts.headers.get(HOST) {
            Some(host) => host.clone(),
            None => parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .unwrap_or_else(|| HeaderValue::from_static("")),
        };
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        headers::set_forwarding(&mut parts.headers, client, &host, &region);
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        if !parts.headers.contains_key(HOST) {
            parts.headers.insert(HOST, host);
        }
        if parts.uri.authority().is_some() {
            parts.uri = parts.uri.path_and_query().map_or_else(
                || Uri::from_static("/"),
                |pq| Uri::try_from(pq.as_str()).unwrap_or_else(|_| Uri::from_static("/")),
            );
        }
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(
            parts,
            UpstreamBody::new(body, self.opts.body_read_timeout, guard),
        );

        let (mut response, guard, sender) =
            match self.forward(&app, upstream_req, first, upgrade).await {
                Ok(forwarded) => forwarded,
                Err(err) => return Err((err, Some(app))),
            };
        let machine_id = guard.stats().machine_id.clone();
        app.metrics.count(response.status().as_u16());

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, guard));
            let (parts, _) = response.into_parts();
            return Ok((
                Response::from_parts(parts, ResponseBody::empty()),
                app,
                machine_id,
            ));
        }
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        let pool = app.kind == ConcurrencyKind::Requests && !upgrade;
        let body = ResponseBody::Upstream(Streamed {
            inner: body,
            guard: Some(guard),
            sender: if pool { sender } else { None },
            done: false,
        });
        Ok((Response::from_parts(parts, body), app, machine_id))
    }

    /// Waits for a machine below its hard limit, up to the app's queue timeout.
    async fn wait_in_queue(
        &self,
        app: &CompiledApp,
    ) -> Result<(usize, InFlightGuard), Unavailable> {
        let queue = &app.queue;
        if queue.waiting.fetch_add(1, Ordering::SeqCst) >= self.opts.max_queue_per_app {
            queue.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Unavailable::QueueFull);
        }
        app.metrics.queued.inc();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + app.queue_timeout;
        let result = loop {
            let notified = queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match app.pick(&[]) {
                Ok(picked) => break Ok(picked),
                Err(NoPick::Exhausted) => break Err(Unavailable::AllAtHardLimit),
                Err(NoPick::AllAtHardLimit) => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break app.pick(&[]).map_err(|_| Unavailable::AllAtHardLimit);
            }
        };
        queue.waiting.fetch_sub(1, Ordering::SeqCst);
        app.metrics
            .queue_wait
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Sends the request to the picked machine, moving on to another machine when a connection
    /// cannot be made. Never retries once the request may have been sent.
    async fn forward(
        &self,
        app: &CompiledApp,
        mut req: Request<UpstreamBody>,
        first: (usize, InFlightGuard),
        upgrade: bool,
    ) -> Result<
        (
            Response<Incoming>,
            InFlightGuard,
            Option<SendRequest<UpstreamBody>>,
        ),
        ProxyError,
    > {
        let (mut index, mut guard) = first;
        let mut tried: Vec<usize> = Vec::new();
        let pool = app.kind == ConcurrencyKind::Requests && !upgrade;
        // Bounded: every iteration either consumes a pooled connection, opens a fresh one (at most
        // three unsent attempts per machine) or moves to an untried machine.
        let mut fresh_unsent = 0;
        loop {
            let backend = &app.eligible[index];
            let pooled = if pool {
                backend.stats.take_pooled()
            } else {
                None
            };
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                None => match self.connect(backend.addr, upgrade).await {
                    Ok(sender) => {
                        backend.stats.record_connect_success();
                        sender
                    }
                    Err(err) => {
                        backend.stats.record_connect_failure();
                        app.metrics.connect_errors.inc();
                        tracing::warn!(app = %app.app, machine = %backend.stats.machine_id,
                            addr = %backend.addr, error = %err, "connecting to a machine failed");
                        tried.push(index);
                        drop(guard);
                        match app.pick(&tried) {
                            Ok((next, next_guard)) => {
                                index = next;
                                guard = next_guard;
                                continue;
                            }
                            Err(_) => {
                                return Err(ProxyError::ConnectFailed {
                                    app: app.app.clone(),
                                    tried: tried.len(),
                                    last_error: err,
                                });
                            }
                        }
                    }
                },
            };
            if let Err(err) = sender.ready().await {
                // A pooled connection the machine closed while idle: take another one. A fresh
                // connection that dies at once counts against the unsent-attempt budget.
                if !reused {
                    fresh_unsent += 1;
                    if fresh_unsent > 3 {
                        return Err(ProxyError::UpstreamFailed {
                            app: app.app.clone(),
                            machine_id: backend.stats.machine_id.clone(),
                            detail: error_chain(&err),
                        });
                    }
                }
                continue;
            }
            let sent =
                tokio::time::timeout(self.opts.upstream_timeout, sender.try_send_request(req))
                    .await;
            match sent {
                Err(_) => {
                    return Err(ProxyError::UpstreamTimeout {
                        app: app.app.clone(),
                        machine_id: backend.stats.machine_id.clone(),
                        timeout: self.opts.upstream_timeout,
                    });
                }
                Ok(Ok(response)) => return Ok((response, guard, Some(sender))),
                Ok(Err(mut err)) => match err.take_message() {
                    // The connection closed before the request was written: safe to resend.
                    Some(unsent) if reused || fresh_unsent < 3 => {
                        if !reused {
                            fresh_unsent += 1;
                        }
                        req = unsent;
                    }
                    _ => {
                        let err = err.into_error();
                        if let Some(timeout) = find_body_timeout(&err) {
                            return Err(ProxyError::ClientBodyTimeout(timeout));
                        }
                        return Err(ProxyError::UpstreamFailed {
                            app: app.app.clone(),
                            machine_id: backend.stats.machine_id.clone(),
                            detail: error_chain(&err),
                        });
                    }
                },
            }
        }
    }

    /// Opens an HTTP/1.1 connection to a machine.
    async fn connect(
        &self,
        addr: SocketAddr,
        upgrade: bool,
    ) -> Result<SendRequest<UpstreamBody>, String> {
        let stream =
            match tokio::time::timeout(self.opts.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return Err(format!("connecting to {addr}: {err}")),
                Err(_) => {
                    return Err(format!(
                        "connecting to {addr} timed out after {:?}",
                        self.opts.connect_timeout
                    ));
                }
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("starting HTTP/1.1 with {addr}: {err}"))?;
        if upgrade {
            tokio::spawn(async move {
                if let Err(err) = conn.with_upgrades().await {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
            });
        }
        Ok(sender)
    }
}

/// Copies bytes both ways between an upgraded client connection and the machine; the machine
/// counts as busy until both sides close.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: InFlightGuard,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
    drop(guard);
}

fn region_header(region: &str) -> HeaderValue {
    HeaderValue::from_str(region).unwrap_or_else(|_| HeaderValue::from_static("local"))
}

fn find_body_timeout(err: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    for _ in 0..16 {
        let error = current?;
        if let Some(timeout) = error.downcast_ref::<BodyReadTimeout>() {
            return Some(timeout.0);
        }
        current = error.source();
    }
    None
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    for _ in 0..8 {
        let Some(error) = current else { break };
        text.push_str(": ");
        text.push_str(&error.to_string());
        current = error.source();
    }
    text
}
