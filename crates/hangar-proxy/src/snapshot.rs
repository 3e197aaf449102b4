//! The routing snapshot: the only input the proxy takes from the control plane.
//!
//! **API boundary:** the control plane builds a [`RoutingSnapshot`] after every relevant change
//! (machine started, stopped, check status changed, draining began, app created or deleted) and
//! hands it to [`crate::Proxy::publish`]. The proxy never reads the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Immutable routing table, published by the control plane after every relevant change.
#[derive(Debug, Clone, Default)]
pub struct RoutingSnapshot {
    /// Increases with every publish; shown in logs so an operator can tell which table served a request.
    pub version: u64,
    /// The base domain: `<app>.<base_domain>` routes to `<app>`.
    pub base_domain: String,
    /// The region name sent upstream in `Fly-Region`.
    pub region: String,
    /// Lower-case host (`<app>.<domain>` or a custom hostname, without port) to the app it routes to.
    pub apps: HashMap<String, Arc<AppRoute>>,
}

impl RoutingSnapshot {
    /// An empty snapshot for `base_domain`, to which apps are added with [`RoutingSnapshot::insert_app`].
    pub fn new(version: u64, base_domain: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            version,
            base_domain: base_domain.into().to_ascii_lowercase(),
            region: region.into(),
            apps: HashMap::new(),
        }
    }

    /// Routes `<app>.<base_domain>` and every host in `custom_hostnames` to `route`.
    pub fn insert_app(&mut self, route: AppRoute, custom_hostnames: &[String]) {
        let route = Arc::new(route);
        let host = format!("{}.{}", route.app, self.base_domain).to_ascii_lowercase();
        self.apps.insert(host, route.clone());
        for custom in custom_hostnames {
            self.apps.insert(
                custom.trim_end_matches('.').to_ascii_lowercase(),
                route.clone(),
            );
        }
    }
}

/// One app's route: its machines and how to spread load over them.
#[derive(Debug, Clone)]
pub struct AppRoute {
    /// The app name, used in error messages and metric labels.
    pub app: String,
    /// Fly's `[services.concurrency]` of the app's http service.
    pub concurrency: Concurrency,
    /// Every machine exposing an `http` handler for the service's `internal_port`, in any state:
    /// the proxy uses only [`BackendStatus::Eligible`] ones and uses the others to explain a 503.
    pub backends: Vec<Backend>,
    /// How long a request waits for a machine below its hard limit before it gets a 503.
    pub queue_timeout: Duration,
}

/// Fly's service concurrency settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// What counts as load on a machine.
    pub kind: ConcurrencyKind,
    /// Machines at or over this load are used only when every machine is.
    pub soft_limit: Option<u32>,
    /// Machines at this load get no more requests; requests queue instead.
    pub hard_limit: Option<u32>,
}

impl Default for Concurrency {
    /// Fly's defaults: `connections`, soft limit 20, no hard limit.
    fn default() -> Self {
        Self {
            kind: ConcurrencyKind::Connections,
            soft_limit: Some(20),
            hard_limit: None,
        }
    }
}

/// Fly's `concurrency.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConcurrencyKind {
    /// Load is in-flight requests; upstream connections are pooled and reused.
    Requests,
    /// Load is upstream connections; every request gets its own upstream connection, as on Fly.
    #[default]
    Connections,
}

/// One machine that can serve an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The machine id; in-flight counts are kept per machine id across snapshots.
    pub machine_id: String,
    /// The machine's private address and the service's `internal_port`.
    pub addr: SocketAddr,
    /// Whether the machine may get new requests.
    pub status: BackendStatus,
}

/// Why a machine may or may not get new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStatus {
    /// Started, passing its checks and not draining.
    Eligible,
    /// Not in the `started` state.
    NotStarted,
    /// Started but failing a service check.
    Unhealthy,
    /// Being stopped or replaced: no new requests, in-flight ones finish.
    Draining,
}
