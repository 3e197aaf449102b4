//! Prometheus metrics, registered on the registry the caller passes to [`crate::Proxy::new`].
//!
//! The request path never looks a series up by label: each compiled app carries handles to its
//! series (counters and histograms are `Arc`s inside), fetched once per publish.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~26 s: covers both loopback round trips and slow requests.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// Every series the proxy exports.
pub(crate) struct Metrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Family<Labels, Gauge>,
    connect_errors: Family<Labels, Counter>,
    queued: Family<Labels, Counter>,
    queue_wait: Family<Labels, Histogram, fn() -> Histogram>,
    rejected: Family<Labels, Counter>,
}

/// Handles to one app's series.
#[derive(Clone)]
pub(crate) struct AppMetrics {
    app: String,
    by_class: [Counter; 5],
    pub(crate) duration: Histogram,
    pub(crate) connect_errors: Counter,
    pub(crate) queued: Counter,
    pub(crate) queue_wait: Histogram,
}

impl AppMetrics {
    pub(crate) fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
    }
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            connect_errors: Family::default(),
            queued: Family::default(),
            queue_wait: Family::new_with_constructor(latency_histogram),
            rejected: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("hangar_proxy");
        registry.register(
            "requests",
            "Requests answered by the edge proxy, by app and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to sending the response headers, by app",
            metrics.duration.clone(),
        );
        registry.register(
            "in_flight",
            "Requests (or upgraded connections) in flight per machine",
            metrics.in_flight.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Failed connections to machines, by app",
            metrics.connect_errors.clone(),
        );
        registry.register(
            "queued_requests",
            "Requests that waited because every machine was at its hard limit, by app",
            metrics.queued.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time requests waited for a machine below its hard limit, by app",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "unavailable",
            "Requests answered 503 because no machine could take them, by app and reason",
            metrics.rejected.clone(),
        );
        metrics
    }

    pub(crate) fn app(&self, app: &str) -> AppMetrics {
        let class = |c: &str| {
            self.requests
                .get_or_create_owned(&vec![("app", app.to_owned()), ("status", c.to_owned())])
        };
        let labels = vec![("app", app.to_owned())];
        AppMetrics {
            app: app.to_owned(),
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self.duration.get_or_create_owned(&labels),
            connect_errors: self.connect_errors.get_or_create_owned(&labels),
            queued: self.queued.get_or_create_owned(&labels),
            queue_wait: self.queue_wait.get_or_create_owned(&labels),
        }
    }

    pub(crate) fn in_flight_gauge(&self, app: &str, machine_id: &str) -> Gauge {
        self.in_flight.get_or_create_owned(&vec![
            ("app", app.to_owned()),
            ("machine", machine_id.to_owned()),
        ])
    }

    /// Drops the in-flight series of a machine that left every snapshot and finished its requests.
    pub(crate) fn forget_series(&self, app: &str, machine_id: &str) {
        self.in_flight.remove(&vec![
            ("app", app.to_owned()),
            ("machine", machine_id.to_owned()),
        ]);
    }

    pub(crate) fn unavailable(&self, app: &AppMetrics, reason: &'static str) {
        self.rejected
            .get_or_create(&vec![
                ("app", app.app.clone()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }
}
