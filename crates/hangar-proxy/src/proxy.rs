//! The proxy: the routing table, the accept loop, and what both protocols share on the request
//! path (routing a head to an app, picking and connecting to a machine, metrics and the access
//! log). `http1` and `http2` serve the client connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{CompiledApp, CompiledBackend, CompiledSnapshot, NoPick};
use crate::buffers::Buf;
use crate::error::{ProxyError, Unavailable};
use crate::headers::{self, ClientInfo, Forwarding, RequestFacts};
use crate::metrics::Metrics;
use crate::snapshot::{BackendStatus, RoutingSnapshot};
use crate::stats::{InFlightGuard, StatsRegistry};
use crate::upstream::{self, Upstream};
use crate::wire::Framing;
use crate::{http1, http2};

/// How the proxy listens and how patient it is.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where `hangar server` binds the proxy (`--http-listen`); [`Proxy::serve`] takes a bound
    /// listener, so this is informational for the caller.
    pub listen: SocketAddr,
    /// Time allowed to open a TCP connection to a machine before trying another.
    pub connect_timeout: Duration,
    /// Time allowed for a client to send a request's headers once it has started them, and
    /// for a keep-alive connection to sit idle between requests; slower clients are
    /// disconnected.
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body; `None` waits forever.
    pub body_read_timeout: Option<Duration>,
    /// Time allowed for a machine to send response headers (counted from the end of the
    /// request body) before the client gets a 504.
    pub upstream_timeout: Duration,
    /// Largest request head accepted (at least 8 KiB); larger ones get a 431.
    pub max_header_bytes: usize,
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
            max_queue_per_app: 1024,
            access_log: false,
            region: "local".to_owned(),
        }
    }
}

/// The edge proxy. Cheap to share: [`Proxy::new`] returns an `Arc`.
pub struct Proxy {
    pub(crate) opts: ProxyOptions,
    snapshot: ArcSwap<CompiledSnapshot>,
    stats: StatsRegistry,
    metrics: Metrics,
    /// Set once [`Proxy::serve`] stops accepting: connections then serve no new request.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

/// What [`Proxy::route`] needs of a request besides its header fields.
pub(crate) struct RequestLine<'a> {
    pub(crate) method: &'a [u8],
    /// Origin form (`/path?query`).
    pub(crate) target: &'a [u8],
    /// The authority of an absolute-form target or of an HTTP/2 request, used without `Host`.
    pub(crate) authority: Option<&'a [u8]>,
    pub(crate) request_id: &'a [u8],
    pub(crate) framing: Framing,
    /// An upgrade the proxy will tunnel (HTTP/1.1 only): the client's `Upgrade` is kept.
    pub(crate) upgrade: bool,
}

/// A request routed to an app, with the head its machine will receive.
pub(crate) struct Routed {
    pub(crate) app: Arc<CompiledApp>,
    pub(crate) head: Buf,
}

/// What the access log says of a request, captured only when the log is on.
pub(crate) struct AccessEntry {
    pub(crate) method: String,
    pub(crate) path: String,
}

impl AccessEntry {
    pub(crate) fn capture(proxy: &Proxy, method: &[u8], target: &[u8]) -> Option<AccessEntry> {
        proxy.opts.access_log.then(|| {
            let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
            AccessEntry {
                method: String::from_utf8_lossy(method).into_owned(),
                path: String::from_utf8_lossy(path).into_owned(),
            }
        })
    }
}

/// A request's end, for metrics and the access log.
pub(crate) struct Answered<'a> {
    pub(crate) app: Option<&'a CompiledApp>,
    pub(crate) machine: Option<&'a str>,
    pub(crate) status: u16,
    pub(crate) error: Option<&'a ProxyError>,
    pub(crate) client: &'a ClientInfo,
    pub(crate) request_id: &'a [u8],
    pub(crate) started: Instant,
    pub(crate) access: Option<&'a AccessEntry>,
}

impl Proxy {
    /// Creates a proxy with an empty routing table; its metrics are registered on `registry`
    /// under the `hangar_proxy_` prefix.
    pub fn new(opts: ProxyOptions, registry: &mut Registry) -> Arc<Proxy> {
        Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(CompiledSnapshot {
                version: 0,
                base_domain: "localhost".to_owned(),
                region: opts.region.clone(),
                hosts: Default::default(),
            }),
            stats: StatsRegistry::default(),
            metrics: Metrics::new(registry),
            stopping: std::sync::atomic::AtomicBool::new(false),
            opts,
        })
    }

    /// Replaces the routing table. Requests already in flight keep the machine they were sent
    /// to; new requests see the new table as soon as this returns.
    pub fn publish(&self, snapshot: RoutingSnapshot) {
        let region = if snapshot.region.is_empty() {
            self.opts.region.clone()
        } else {
            snapshot.region.clone()
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
        let h2 = Arc::new(http2::Server::new(&self.opts));
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
            let client = ClientInfo::new(peer.ip(), listen_port);
            connections.spawn(self.clone().serve_client(
                stream,
                client,
                h2.clone(),
                shutdown.clone(),
            ));
        }
        self.stopping.store(true, Ordering::SeqCst);
        drop(listener);
        connections.close();
        connections.wait().await;
        Ok(())
    }

    /// Serves one client connection: HTTP/2 when it starts with the HTTP/2 preface, HTTP/1
    /// otherwise.
    async fn serve_client(
        self: Arc<Self>,
        stream: TcpStream,
        client: ClientInfo,
        h2: Arc<http2::Server>,
        shutdown: CancellationToken,
    ) {
        let h2_preface = tokio::select! {
            () = shutdown.cancelled() => return,
            h2 = http2::starts_with_preface(&stream, self.opts.header_read_timeout) => h2,
        };
        match h2_preface {
            None => {}
            Some(true) => h2.serve(self, stream, client, shutdown).await,
            Some(false) => http1::serve(self, stream, client, shutdown).await,
        }
    }

    /// Finds the app for a request's host and writes the head its machine will receive.
    pub(crate) fn route<'h, I>(
        &self,
        request: &RequestLine<'_>,
        fields: I,
        facts: &RequestFacts<'_>,
        client: &ClientInfo,
    ) -> Result<Routed, (ProxyError, Option<Arc<CompiledApp>>)>
    where
        I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    {
        let snapshot = self.snapshot.load();
        let host = facts
            .host
            .or(request.authority)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                let base_domain = snapshot.base_domain.clone();
                (ProxyError::MissingHost { base_domain }, None)
            })?;
        let host_text = String::from_utf8_lossy(host);
        let normalised = headers::normalise_host(&host_text);
        let Some(app) = snapshot.hosts.get(normalised.as_ref()) else {
            let err = ProxyError::UnknownHost {
                host: normalised.into_owned(),
                base_domain: snapshot.base_domain.clone(),
            };
            return Err((err, None));
        };
        let mut head = Buf::take();
        headers::write_request_head(
            &mut head,
            request.method,
            request.target,
            fields,
            facts,
            &Forwarding {
                client,
                host,
                region: snapshot.region.as_bytes(),
                request_id: request.request_id,
                upgrade: request.upgrade,
            },
            request.framing,
        );
        Ok(Routed {
            app: app.clone(),
            head,
        })
    }

    /// Picks a machine of the app (waiting in the app's queue when every machine is at its
    /// hard limit) and connects to it, or reuses a pooled connection when `pooled`. A machine
    /// that cannot be connected to is passed over for another one.
    pub(crate) async fn open(
        &self,
        app: &CompiledApp,
        pooled: bool,
    ) -> Result<(Upstream, InFlightGuard), ProxyError> {
        let unavailable = |reason| ProxyError::Unavailable {
            app: app.app.clone(),
            reason,
            machines: app.machines,
        };
        if app.eligible.is_empty() {
            return Err(unavailable(app.unavailable));
        }
        let (mut index, mut guard) = match app.pick(&[]) {
            Ok(picked) => picked,
            Err(_) => self.wait_in_queue(app).await.map_err(unavailable)?,
        };
        let mut tried: Vec<usize> = Vec::new();
        // Bounded: every failed connection adds a machine to `tried`.
        loop {
            let backend: &CompiledBackend = &app.eligible[index];
            if pooled && let Some(stream) = backend.stats.take_pooled() {
                let upstream = Upstream {
                    stream,
                    addr: backend.addr,
                    reused: true,
                };
                return Ok((upstream, guard));
            }
            match upstream::connect(backend.addr, self.opts.connect_timeout).await {
                Ok(stream) => {
                    backend.stats.record_connect_success();
                    let upstream = Upstream {
                        stream,
                        addr: backend.addr,
                        reused: false,
                    };
                    return Ok((upstream, guard));
                }
                Err(err) => {
                    backend.stats.record_connect_failure();
                    app.metrics.connect_errors.inc();
                    tracing::warn!(app = %app.app, machine = %backend.stats.machine_id,
                        addr = %backend.addr, error = %err, "connecting to a machine failed");
                    tried.push(index);
                    drop(guard);
                    match app.pick(&tried) {
                        Ok((next, next_guard)) => (index, guard) = (next, next_guard),
                        Err(_) => {
                            return Err(ProxyError::ConnectFailed {
                                app: app.app.clone(),
                                tried: tried.len(),
                                last_error: err,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Opens a fresh connection to the machine of a pooled connection that turned out closed.
    pub(crate) async fn reopen(&self, upstream: &Upstream) -> Result<Upstream, String> {
        let stream = upstream::connect(upstream.addr, self.opts.connect_timeout).await?;
        Ok(Upstream {
            stream,
            addr: upstream.addr,
            reused: false,
        })
    }

    /// Counts an answered request in the metrics and writes its access log line.
    pub(crate) fn answered(&self, answered: &Answered<'_>) {
        if let Some(app) = answered.app {
            app.metrics.count(answered.status);
            app.metrics
                .duration
                .observe(answered.started.elapsed().as_secs_f64());
            if let Some(ProxyError::Unavailable { reason, .. }) = answered.error {
                self.metrics.unavailable(&app.metrics, reason.label());
            }
        }
        if let Some(access) = answered.access {
            tracing::info!(
                target: "hangar_proxy::access",
                client = %answered.client.ip,
                method = %access.method,
                path = %access.path,
                app = answered.app.map_or("", |a| a.app.as_str()),
                machine = answered.machine.unwrap_or(""),
                status = answered.status,
                duration_us = u64::try_from(answered.started.elapsed().as_micros()).unwrap_or(u64::MAX),
                request_id = %String::from_utf8_lossy(answered.request_id),
                "request"
            );
        }
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
}
