//! Hangar's edge proxy: routes HTTP requests by Host to app machines.
//!
//! **API boundary:** the proxy consumes an immutable [`RoutingSnapshot`] published by the control
//! plane ([`Proxy::publish`]) and answers the control plane's draining questions
//! ([`Proxy::in_flight`], [`Proxy::wait_idle`]). It never reads the store, so it could run in its
//! own process fed by a stream of snapshots.
//!
//! **Invariant:** the request path takes no lock shared with the control plane: it loads the
//! snapshot with `ArcSwap::load` and updates per-machine atomics.
//!
//! Module map: [`snapshot`] (the input types), `balance` (compiled table, machine choice),
//! `stats` (per-machine counters and upstream connection pools that survive snapshots),
//! `proxy` (accept loop, routing, picking and connecting to a machine), `http1` (the
//! proxy's own HTTP/1 client connection loop), `http2` (h2c client connections on hyper),
//! `upstream` (connections to machines, response heads), `wire` (HTTP/1.1 framing and
//! chunked coding), `headers` (request and response heads as the proxy rewrites them),
//! `body` (response bodies for HTTP/2 clients), [`error`] (errors answered by the proxy),
//! `metrics`.
#![forbid(unsafe_code)]

mod balance;
mod body;
mod buffers;
pub mod error;
mod headers;
mod http1;
mod http2;
mod metrics;
mod proxy;
pub mod snapshot;
mod stats;
mod upstream;
mod wire;

pub use body::{ResponseBody, UpstreamResponse};
pub use error::{ProxyError, Unavailable};
pub use proxy::{Proxy, ProxyOptions};
pub use snapshot::{
    AppRoute, Backend, BackendStatus, Concurrency, ConcurrencyKind, RoutingSnapshot,
};
