//! The Hangar edge proxy with a static routing snapshot, for benchmarks.
//!
//! `cargo run --release -p hangar-proxy --example edge -- 127.0.0.1:18081 127.0.0.1:18000 [threads]`
//! routes `bench.localhost` to the upstream(s) given as a comma-separated list.

use std::time::Duration;

use hangar_proxy::{
    AppRoute, Backend, BackendStatus, Concurrency, ConcurrencyKind, Proxy, ProxyOptions,
    RoutingSnapshot,
};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let upstreams = args.next().unwrap_or_else(|| "127.0.0.1:18000".to_owned());
    let threads: usize = args.next().map_or(Ok(1), |t| t.parse())?;
    // One core for the proxy: a current-thread runtime avoids cross-thread wakeups.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let mut registry = prometheus_client::registry::Registry::default();
        let opts = ProxyOptions {
            listen: listen.parse()?,
            ..ProxyOptions::default()
        };
        let proxy = Proxy::new(opts, &mut registry);
        let mut snapshot = RoutingSnapshot::new(1, "localhost", "bench");
        let backends = upstreams
            .split(',')
            .enumerate()
            .map(|(i, addr)| {
                Ok(Backend {
                    machine_id: format!("m{i}"),
                    addr: addr.parse()?,
                    status: BackendStatus::Eligible,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        snapshot.insert_app(
            AppRoute {
                app: "bench".to_owned(),
                concurrency: Concurrency {
                    kind: ConcurrencyKind::Requests,
                    soft_limit: None,
                    hard_limit: None,
                },
                backends,
                queue_timeout: Duration::from_secs(5),
            },
            &[],
        );
        proxy.publish(snapshot);
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        eprintln!("edge listening on {listen}");
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        proxy.serve(listener, shutdown).await?;
        Ok(())
    })
}
