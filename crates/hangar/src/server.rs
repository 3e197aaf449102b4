//! `hangar server`: runs the platform on this host.
//!
//! Start-up order: preflight (root, runc, overlayfs, cgroups), data dir, store, admin
//! token, image store, runtime, network, reconcile the host with the store, then serve the
//! API. On SIGTERM or SIGINT the server stops serving and exits; machines keep running
//! under their shims and are adopted by the next start.

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use hangar_control::{Control, ControlOptions};
use hangar_net::{LinuxHostNet, NetPool};
use hangar_runtime::image::ImageStore;
use hangar_runtime::machine::{MachineRuntime, RuntimeOptions};
use hangar_store::Store;

/// Options of `hangar server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where Hangar keeps its state: store, images, machines, logs.
    #[arg(long, env = "HANGAR_DATA_DIR", default_value = "/var/lib/hangar")]
    pub data_dir: PathBuf,
    /// Address of the API.
    #[arg(long, env = "HANGAR_API_LISTEN", default_value = "127.0.0.1:4280")]
    pub api_listen: SocketAddr,
    /// The runc binary.
    #[arg(long, env = "HANGAR_RUNC", default_value = "runc")]
    pub runc: PathBuf,
    /// Region name of this host.
    #[arg(long, env = "HANGAR_REGION", default_value = "local")]
    pub region: String,
    /// IPv4 pool for machines (a /24 per organization).
    #[arg(long, env = "HANGAR_IPV4_POOL", default_value = "172.29.0.0/16")]
    pub ipv4_pool: String,
    /// IPv6 pool for machines (a /48 per organization).
    #[arg(long, env = "HANGAR_IPV6_POOL", default_value = "fdaa::/16")]
    pub ipv6_pool: String,
    /// Address of the edge proxy: apps are served at `http://<app>.<domain>`.
    #[arg(long, env = "HANGAR_HTTP_LISTEN", default_value = "0.0.0.0:80")]
    pub http_listen: SocketAddr,
    /// Base domain of apps (`localhost` resolves to loopback with no DNS set-up).
    #[arg(long, env = "HANGAR_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// Log one line per proxied request.
    #[arg(long, env = "HANGAR_ACCESS_LOG")]
    pub access_log: bool,
    /// The master key that encrypts app secrets (32 bytes, 0600), created on first start
    /// [default: <data-dir>/master.key]. Back it up: without it no secret can be decrypted.
    #[arg(long, env = "HANGAR_MASTER_KEY_FILE", value_name = "PATH")]
    pub master_key_file: Option<PathBuf>,
    /// Releases per app whose images image garbage collection keeps (it runs hourly and on
    /// `hangar images gc`).
    #[arg(long, env = "HANGAR_KEEP_RELEASES", default_value_t = hangar_control::retention::DEFAULT_KEEP_RELEASES, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_releases: u32,
    /// Once listening, write the API's bound address (line 1) and the proxy's (line 2) to
    /// this file (for scripts and tests using port 0).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// What the host offers, as found by the preflight.
#[derive(Debug)]
pub struct Preflight {
    /// Absolute path of runc.
    pub runc: PathBuf,
    /// `v1` (or hybrid) or `v2`.
    pub cgroup: &'static str,
    /// Total memory in MiB.
    pub memory_mb: u64,
}

fn find_in_path(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Checks that this host can run machines; every problem found is named with its fix.
pub fn preflight(runc: &Path) -> anyhow::Result<Preflight> {
    let mut problems = Vec::new();
    if !rustix::process::geteuid().is_root() {
        problems.push("not running as root: hangar server needs root to create containers, mounts and network namespaces (run it with sudo)".to_owned());
    }
    let runc_path = find_in_path(runc);
    if runc_path.is_none() {
        problems.push(format!(
            "runc not found ({}): install it with `apt-get install runc`, or pass --runc PATH",
            runc.display()
        ));
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        problems.push("the kernel has no overlayfs: load it with `modprobe overlay`".to_owned());
    }
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else if Path::new("/sys/fs/cgroup/memory").is_dir()
        && Path::new("/sys/fs/cgroup/pids").is_dir()
    {
        "v1"
    } else {
        problems.push("no usable cgroup hierarchy: need cgroup v2 at /sys/fs/cgroup, or v1 with the memory, cpu and pids controllers mounted".to_owned());
        "none"
    };
    if find_in_path(Path::new("ip")).is_none() {
        problems.push(
            "the `ip` command is missing: install it with `apt-get install iproute2`".to_owned(),
        );
    }
    if !problems.is_empty() {
        bail!(
            "this host cannot run Hangar yet:\n  - {}",
            problems.join("\n  - ")
        );
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(1024, |kb| kb / 1024);
    Ok(Preflight {
        runc: runc_path.unwrap_or_default(),
        cgroup,
        memory_mb,
    })
}

/// Creates the admin token on first start: the token goes to `<data-dir>/admin-token` (0600),
/// only its digest into the store.
async fn ensure_admin_token(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("admin-token");
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let digest = hangar_control::auth::token_digest(token.trim());
        if store.token_kind(&digest).await?.is_none() {
            store
                .insert_token(&digest, "admin", "admin-token file")
                .await?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        return Ok(());
    }
    let token = hangar_control::auth::generate_token();
    store
        .insert_token(
            &hangar_control::auth::token_digest(&token),
            "admin",
            "admin-token file",
        )
        .await?;
    let tmp = data_dir.join("admin-token.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    tracing::info!(path = %path.display(), "created the admin token");
    Ok(())
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let pre = preflight(&args.runc)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args, pre))
}

async fn serve(args: ServerArgs, pre: Preflight) -> anyhow::Result<()> {
    tracing::info!(cgroup = pre.cgroup, runc = %pre.runc.display(), "preflight passed");
    let data = &args.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating the data dir {}", data.display()))?;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o711))?;
    let store = Store::open(&data.join("hangar.db"))
        .await
        .context("opening the store")?;
    store.ensure_org("default").await?;
    ensure_admin_token(&store, data).await?;

    let images = ImageStore::open(&data.join("images")).context("opening the image store")?;
    let shim_exe = std::env::current_exe().context("finding the hangar binary for the shim")?;
    let runtime = MachineRuntime::new(RuntimeOptions {
        runc: pre.runc.clone(),
        ..RuntimeOptions::new(data, shim_exe)
    })
    .context("setting up the machine runtime")?;
    let pool = NetPool {
        ipv4: args
            .ipv4_pool
            .parse()
            .with_context(|| format!("--ipv4-pool {:?} is not a CIDR block", args.ipv4_pool))?,
        ipv6: args
            .ipv6_pool
            .parse()
            .with_context(|| format!("--ipv6-pool {:?} is not a CIDR block", args.ipv6_pool))?,
    };
    let host_net = LinuxHostNet::new();
    host_net
        .check_tools()
        .context("checking the networking tools")?;
    // Bound before the control plane exists, so the URLs it shows carry the real port
    // (also with --http-listen ...:0); connections wait in the backlog until the proxy serves.
    let http_listener = tokio::net::TcpListener::bind(args.http_listen).await.with_context(|| {
        format!("cannot listen on {} for the edge proxy (port in use, or not root for port 80? choose another with --http-listen)", args.http_listen)
    })?;
    let http_bound = http_listener.local_addr()?;
    let control = Control::new(
        store.clone(),
        images,
        runtime,
        Arc::new(host_net),
        ControlOptions {
            region: args.region.clone(),
            pool,
            host_memory_mb: pre.memory_mb,
            domain: args.domain.clone(),
            http_port: http_bound.port(),
            keep_releases: args.keep_releases,
        },
    );
    // Before reconcile: machines it restarts need their secrets.
    let master_key = args
        .master_key_file
        .clone()
        .unwrap_or_else(|| data.join("master.key"));
    let master_key_id = control
        .load_master_key(&master_key)
        .await
        .context("loading the master key of app secrets")?;
    tracing::info!(path = %master_key.display(), master_key_id, "master key loaded");
    control
        .reconcile()
        .await
        .context("reconciling the host with the store")?;

    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another hangar server running? choose another with --api-listen)", args.api_listen))?;
    let bound = listener.local_addr()?;

    let mut registry = prometheus_client::registry::Registry::default();
    let proxy = hangar_proxy::Proxy::new(
        hangar_proxy::ProxyOptions {
            listen: http_bound,
            access_log: args.access_log,
            region: args.region.clone(),
            ..Default::default()
        },
        &mut registry,
    );
    control.set_drainer(Arc::new(ProxyDrainer(proxy.clone())));
    // Interrupted deploys resume once old machines can be drained, and before the first
    // routing snapshot, so blue-green holds are in place when the proxy starts serving.
    control
        .resume_deploys()
        .await
        .context("resuming interrupted deploys")?;
    // Subscribe before the first publish, so a change that lands in between is not missed.
    let updates = control.routing_updates();
    publish_routes(&control, &proxy, &args.domain).await;
    control.tasks.spawn(routing_publisher(
        control.clone(),
        proxy.clone(),
        args.domain.clone(),
        updates,
    ));
    control
        .tasks
        .spawn(proxy.clone().serve(http_listener, control.shutdown.clone()));
    control.tasks.spawn(image_gc(control.clone()));

    tracing::info!(api = %bound, http = %http_bound, domain = %args.domain, data_dir = %data.display(), "hangar server ready");
    if let Some(path) = &args.ready_file {
        // Written whole and renamed into place: a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{bound}\n{http_bound}\n"))?;
        std::fs::rename(&tmp, path)?;
    }
    let registry = Arc::new(registry);
    let metrics = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        e.to_string(),
                    ),
                }
            }
        }),
    );
    // The OCI registry shares the API listener under /v2/ and stores into the image
    // store, so a pushed image runs as a machine without a copy (docs/registry.md).
    let oci_registry = hangar_registry::Registry::open(
        control.images.clone(),
        &data.join("registry"),
        Arc::new(hangar_control::registry::ControlAuthorizer::new(
            control.clone(),
        )),
    )
    .context("opening the registry's metadata")?;
    let app = hangar_control::api::router(control.clone())
        .merge(metrics)
        .merge(hangar_registry::router(oci_registry));
    let shutdown = control.shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down; machines keep running");
            shutdown.cancel();
        })
        .await?;
    control.tasks.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), control.tasks.wait()).await;
    store.close().await;
    Ok(())
}

/// Drains machines through the edge proxy.
struct ProxyDrainer(Arc<hangar_proxy::Proxy>);

impl hangar_control::Drainer for ProxyDrainer {
    fn wait_idle(
        &self,
        machine_id: &str,
        routing_version: u64,
        timeout: std::time::Duration,
    ) -> futures_util::future::BoxFuture<'static, bool> {
        let proxy = self.0.clone();
        let id = machine_id.to_owned();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            // The routing publisher swaps the snapshot within milliseconds of a change.
            while proxy.snapshot_version() < routing_version {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            proxy.wait_idle(&id, left).await
        })
    }
}

async fn publish_routes(control: &Control, proxy: &hangar_proxy::Proxy, domain: &str) {
    let version = *control.routing_updates().borrow();
    match control.routing_snapshot(version, domain).await {
        Ok(snapshot) => proxy.publish(snapshot),
        Err(e) => tracing::error!(error = %e, "could not build the routing snapshot"),
    }
}

/// Rebuilds and publishes the routing snapshot after every routing-relevant change.
/// Changes that arrive while a snapshot is being built are folded into the next one.
async fn routing_publisher(
    control: Arc<Control>,
    proxy: Arc<hangar_proxy::Proxy>,
    domain: String,
    mut updates: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        tokio::select! {
            () = control.shutdown.cancelled() => return,
            changed = updates.changed() => if changed.is_err() { return },
        }
        updates.borrow_and_update();
        publish_routes(&control, &proxy, &domain).await;
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `HANGAR_LOG_FORMAT=json` for JSON lines.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if std::env::var("HANGAR_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Collects unused images every hour (`docs/images.md`, retention).
async fn image_gc(control: Arc<Control>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    // The first tick is immediate: skip it, a fresh start has nothing to collect yet.
    every.tick().await;
    loop {
        tokio::select! {
            () = control.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match control.collect_images(control.opts.keep_releases).await {
            Ok((report, untagged)) => tracing::info!(
                removed_blobs = report.removed_blobs,
                freed_bytes = report.freed_bytes,
                untagged = untagged.len(),
                "image garbage collection"
            ),
            Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
