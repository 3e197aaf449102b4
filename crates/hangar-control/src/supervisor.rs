//! The machine supervisor: Fly's machine state machine on top of the local runtime.
//!
//! Each machine has a slot with an operation lock, a `run` counter and a state channel.
//! Every running machine has one exit watcher task that waits for its shim to exit and
//! then decides what the exit means (requested stop, restart by policy, failure).
//! An operation that consumes an exit itself (destroy, update) bumps `run` first, so a
//! stale watcher sees that its run is over and does nothing.
//!
//! **Invariant:** a state change is written to the store before the API call that caused
//! it returns, and before the watch channel announces it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::machine::{
    CheckStatus, ExitEvent, ImageRef, MachineConfig, MachineEvent, MachineState, RestartPolicy,
};
use hangar_core::{InstanceId, Machine, MachineId};
use hangar_net::{HostNet, MachineNetwork, NetPool, OrgNetwork};
use hangar_runtime::ResolvedImage;
use hangar_runtime::image::ImageStore;
use hangar_runtime::machine::{ExitRecord, HostState, MachineRuntime, NetworkSpec, StartSpec};
use hangar_store::{MachineRecord, Store, StoreError, now_rfc3339};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checks;
use crate::error::{ApiError, ApiResult};

/// Events returned inline with a machine.
const INLINE_EVENTS: u32 = 10;

/// Static options of the control plane.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Region name reported for this host.
    pub region: String,
    /// Address pools.
    pub pool: NetPool,
    /// Host memory in MiB; a machine may not ask for more.
    pub host_memory_mb: u64,
    /// Base domain of apps on the edge proxy (`<app>.<domain>`).
    pub domain: String,
    /// Port of the edge proxy, for the URLs the API shows.
    pub http_port: u16,
    /// Releases per app whose images garbage collection keeps.
    pub keep_releases: u32,
}

/// The control plane's shared state.
pub struct Control {
    /// The store.
    pub store: Store,
    /// The image store.
    pub images: ImageStore,
    /// The machine runtime.
    pub runtime: MachineRuntime,
    /// Host networking.
    pub net: Arc<dyn HostNet>,
    /// Options.
    pub opts: ControlOptions,
    slots: Mutex<HashMap<MachineId, Arc<Slot>>>,
    /// Serialises address allocation and machine insertion.
    alloc_lock: tokio::sync::Mutex<()>,
    /// Cancelled at shutdown: watchers stop, machines keep running.
    pub shutdown: CancellationToken,
    /// Background tasks (exit watchers, restarts).
    pub tasks: TaskTracker,
    /// Latest check results per machine.
    checks: Mutex<HashMap<MachineId, BTreeMap<String, CheckStatus>>>,
    /// Machines being drained: out of routing, in-flight requests finishing.
    draining: Mutex<BTreeSet<MachineId>>,
    /// Bumped after every change that can affect routing (state, checks, draining).
    routing: watch::Sender<u64>,
    /// Drains a machine before it is signalled: waits until no request is in flight,
    /// up to the given timeout. Set by the server when the proxy runs.
    drainer: Mutex<Option<Arc<dyn Drainer>>>,
    http: reqwest::Client,
    /// The master key, loaded by the server before it serves (`Control::load_master_key`).
    pub(crate) secrets: std::sync::OnceLock<crate::secrets::Keyring>,
    /// The deploy engine's shared state (blue-green holds, event wake-ups).
    pub(crate) deploys: crate::deploy::Deploys,
}

/// Waits for a machine to have no request in flight (the edge proxy implements it).
pub trait Drainer: Send + Sync {
    /// Resolves `true` once the proxy routes by a snapshot at least as new as
    /// `routing_version` (the one that took the machine out of routing) and the machine is
    /// idle; `false` at the timeout.
    fn wait_idle(
        &self,
        machine_id: &str,
        routing_version: u64,
        timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, bool>;
}

struct Slot {
    op: tokio::sync::Mutex<SlotInner>,
    state: watch::Sender<MachineState>,
    /// Stops the checker of the current run.
    checker: Mutex<Option<CancellationToken>>,
}

struct SlotInner {
    /// Incremented whenever an exit of the current run has been consumed.
    run: u64,
    /// The next exit was asked for (stop, restart).
    requested_stop: bool,
}

/// What a create or update call asks for.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The config.
    pub config: MachineConfig,
    /// Name; generated when absent.
    pub name: Option<String>,
    /// Create without starting.
    pub skip_launch: bool,
}

fn millis_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default(),
    )
    .unwrap_or(i64::MAX)
}

fn event(
    kind: &str,
    status: &str,
    source: &str,
    request: Option<serde_json::Value>,
) -> MachineEvent {
    let ms = millis_now();
    MachineEvent {
        id: InstanceId::generate(u64::try_from(ms).unwrap_or_default()).0,
        kind: kind.to_owned(),
        status: status.to_owned(),
        source: source.to_owned(),
        timestamp: ms,
        request,
    }
}

/// Runs blocking host work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

fn generated_name() -> String {
    const ADJ: &[&str] = &[
        "aged", "bold", "calm", "damp", "eager", "fancy", "gentle", "hidden", "icy", "jolly",
        "keen", "lively", "misty", "noble", "odd", "proud", "quiet", "rapid", "shy", "tidy",
    ];
    const NOUN: &[&str] = &[
        "thunder", "river", "forest", "meadow", "stone", "cloud", "harbor", "canyon", "ember",
        "glade", "island", "lake", "moon", "pine", "reef", "sky", "tide", "valley", "wave", "wind",
    ];
    let id = MachineId::generate();
    let b = id.as_str().as_bytes();
    let a = ADJ[usize::from(b[0]) % ADJ.len()];
    let n = NOUN[usize::from(b[1]) % NOUN.len()];
    format!("{a}-{n}-{}", &id.as_str()[..4])
}

impl Control {
    /// Creates the control plane.
    pub fn new(
        store: Store,
        images: ImageStore,
        runtime: MachineRuntime,
        net: Arc<dyn HostNet>,
        opts: ControlOptions,
    ) -> Arc<Self> {
        Arc::new(Control {
            store,
            images,
            runtime,
            net,
            opts,
            slots: Mutex::new(HashMap::new()),
            alloc_lock: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            checks: Mutex::new(HashMap::new()),
            draining: Mutex::new(BTreeSet::new()),
            routing: watch::channel(0).0,
            drainer: Mutex::new(None),
            http: checks::client(false),
            secrets: std::sync::OnceLock::new(),
            deploys: crate::deploy::Deploys::new(),
        })
    }

    fn slot(&self, id: &MachineId, state: MachineState) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        slots
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    op: tokio::sync::Mutex::new(SlotInner {
                        run: next_run_base(),
                        requested_stop: false,
                    }),
                    state: watch::channel(state).0,
                    checker: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Runs a state-changing operation on its own task, so it runs to completion even when
    /// the caller (an HTTP request whose client hung up) is dropped half way.
    async fn to_completion<T, F>(self: &Arc<Self>, f: impl FnOnce(Arc<Self>) -> F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = ApiResult<T>> + Send + 'static,
    {
        tokio::spawn(f(self.clone()))
            .await
            .map_err(ApiError::internal)?
    }

    /// Creates a machine and, unless `skip_launch`, starts it and waits until it runs.
    pub async fn create_machine(
        self: &Arc<Self>,
        app: &str,
        req: LaunchRequest,
    ) -> ApiResult<MachineRecord> {
        let app = app.to_owned();
        self.to_completion(move |c| async move { c.create_machine_now(&app, req).await })
            .await
    }

    /// Starts a stopped, created or failed machine; returns the state it was in.
    pub async fn start_machine(self: &Arc<Self>, app: &str, id: &str) -> ApiResult<MachineState> {
        let (app, id) = (app.to_owned(), id.to_owned());
        self.to_completion(move |c| async move { c.start_machine_now(&app, &id).await })
            .await
    }

    /// Stops a machine: out of routing, its stop signal, then SIGKILL after the timeout.
    pub async fn stop_machine(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        signal: Option<i32>,
        timeout: Option<Duration>,
    ) -> ApiResult<()> {
        let (app, id) = (app.to_owned(), id.to_owned());
        self.to_completion(
            move |c| async move { c.stop_machine_now(&app, &id, signal, timeout).await },
        )
        .await
    }

    /// Destroys a machine and everything it had on the host.
    pub async fn destroy_machine(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        force: bool,
    ) -> ApiResult<()> {
        let (app, id) = (app.to_owned(), id.to_owned());
        self.to_completion(move |c| async move { c.destroy_machine_now(&app, &id, force).await })
            .await
    }

    /// Replaces a machine's config (new instance id); a running machine is restarted with it.
    pub async fn update_machine(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        req: LaunchRequest,
        current_version: Option<String>,
    ) -> ApiResult<MachineRecord> {
        let (app, id) = (app.to_owned(), id.to_owned());
        self.to_completion(move |c| async move {
            c.update_machine_now(&app, &id, req, current_version).await
        })
        .await
    }

    /// Subscribes to a machine's state.
    pub async fn watch_state(&self, id: &MachineId) -> ApiResult<watch::Receiver<MachineState>> {
        let rec = self.store.get_machine(id).await?;
        Ok(self.slot(id, rec.state).state.subscribe())
    }

    /// A machine of an app, 404 when it belongs to another app.
    pub async fn machine_record(&self, app: &str, id: &str) -> ApiResult<MachineRecord> {
        let parsed: MachineId = id
            .parse()
            .map_err(|_| ApiError::NotFound(format!("machine {id:?} not found in app {app:?}")))?;
        match self.store.get_machine(&parsed).await {
            Ok(rec) if rec.app == app => Ok(rec),
            Ok(_) | Err(StoreError::NotFound(_)) => Err(ApiError::NotFound(format!(
                "machine {id} not found in app {app:?}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The API view of a machine.
    pub async fn machine_view(&self, rec: &MachineRecord) -> ApiResult<Machine> {
        let events = self.store.list_events(&rec.id, INLINE_EVENTS).await?;
        Ok(Machine {
            id: rec.id.clone(),
            name: rec.name.clone(),
            state: rec.state,
            region: self.opts.region.clone(),
            instance_id: rec.instance_id.clone(),
            private_ip: rec.ipv6.clone().unwrap_or_default(),
            private_ipv4: rec.ipv4.clone(),
            created_at: rec.created_at.clone(),
            updated_at: rec.updated_at.clone(),
            config: rec.config.clone(),
            image_ref: rec.image_ref.clone(),
            events,
            checks: self.check_statuses(&rec.id).into_values().collect(),
            host_status: "ok".to_owned(),
            app_name: rec.app.clone(),
        })
    }

    async fn set_state(&self, rec: &mut MachineRecord, state: MachineState) -> ApiResult<()> {
        rec.state = state;
        rec.updated_at = now_rfc3339();
        self.store.update_machine(rec).await?;
        let slot = self.slot(&rec.id, state);
        if state != MachineState::Started {
            stop_checker(&slot);
            lock(&self.checks).remove(&rec.id);
        }
        slot.state.send_replace(state);
        self.routing_changed();
        Ok(())
    }
    /// Signals that routing inputs changed (machine states, checks, draining, apps).
    pub fn routing_changed(&self) {
        self.routing.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever routing inputs change.
    pub fn routing_updates(&self) -> watch::Receiver<u64> {
        self.routing.subscribe()
    }

    /// Latest check results of a machine, by check name.
    pub fn check_statuses(&self, id: &MachineId) -> BTreeMap<String, CheckStatus> {
        lock(&self.checks).get(id).cloned().unwrap_or_default()
    }

    /// Whether a machine is being drained.
    pub fn is_draining(&self, id: &MachineId) -> bool {
        lock(&self.draining).contains(id)
    }

    /// Installs the drainer (the edge proxy).
    pub fn set_drainer(&self, drainer: Arc<dyn Drainer>) {
        *lock(&self.drainer) = Some(drainer);
    }

    /// Takes a machine out of routing and waits (up to `timeout`) for its in-flight requests.
    async fn drain(&self, id: &MachineId, timeout: Duration) {
        lock(&self.draining).insert(id.clone());
        self.routing_changed();
        // Idle only counts once the proxy no longer routes to the machine: a request that an
        // older snapshot sends it after the check would otherwise meet the stop signal.
        let version = *self.routing.borrow();
        let drainer = lock(&self.drainer).clone();
        if let Some(d) = drainer {
            let idle = d.wait_idle(id.as_str(), version, timeout).await;
            if !idle {
                tracing::warn!(machine_id = %id, ?timeout, "requests still in flight after the drain timeout");
            }
        }
    }

    fn undrain(&self, id: &MachineId) {
        if lock(&self.draining).remove(id) {
            self.routing_changed();
        }
    }

    /// Starts the checker of a machine's current run (if it has checks).
    fn spawn_checker(self: &Arc<Self>, rec: &MachineRecord) {
        let specs = checks::check_specs(&rec.config);
        let slot = self.slot(&rec.id, rec.state);
        stop_checker(&slot);
        if specs.is_empty() {
            return;
        }
        let Some(ip) = rec.ipv4.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) else {
            return;
        };
        let token = self.shutdown.child_token();
        *lock(&slot.checker) = Some(token.clone());
        let now = now_rfc3339();
        lock(&self.checks).insert(
            rec.id.clone(),
            specs
                .iter()
                .map(|s| {
                    let st = CheckStatus {
                        name: s.name.clone(),
                        status: "critical".into(),
                        output: "waiting for the first check".into(),
                        updated_at: now.clone(),
                    };
                    (s.name.clone(), st)
                })
                .collect(),
        );
        let started = tokio::time::Instant::now();
        for spec in specs {
            let this = self.clone();
            let id = rec.id.clone();
            let token = token.clone();
            self.tasks.spawn(async move {
                let mut ever_passed = false;
                loop {
                    let result = checks::probe(&spec, ip, &this.http).await;
                    if token.is_cancelled() {
                        return;
                    }
                    let (status, output) = match result {
                        Ok(out) => ("passing", out),
                        Err(out) if started.elapsed() < spec.grace_period => ("warning", out),
                        Err(out) => ("critical", out),
                    };
                    ever_passed |= status == "passing";
                    this.record_check(&id, &spec.name, status, output).await;
                    // Until the first pass, probe quickly: a new machine of a deploy waits
                    // for it. Very quickly during the first seconds (most apps start
                    // listening then), then less, so a machine that never passes costs little.
                    let wait = if ever_passed {
                        spec.interval
                    } else if started.elapsed() < checks::STARTUP_WINDOW {
                        spec.interval.min(checks::STARTUP_INTERVAL)
                    } else {
                        spec.interval.min(checks::FAST_INTERVAL)
                    };
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            });
        }
    }

    async fn record_check(&self, id: &MachineId, name: &str, status: &str, output: String) {
        let changed = {
            let mut all = lock(&self.checks);
            let Some(statuses) = all.get_mut(id) else {
                return;
            };
            let entry = statuses
                .entry(name.to_owned())
                .or_insert_with(|| CheckStatus {
                    name: name.to_owned(),
                    status: String::new(),
                    output: String::new(),
                    updated_at: String::new(),
                });
            let changed = entry.status != status;
            entry.status = status.to_owned();
            entry.output = output.clone();
            entry.updated_at = now_rfc3339();
            changed
        };
        if changed {
            self.record(
                id,
                event(
                    "check",
                    &format!("{name} {status}"),
                    "hangar",
                    Some(json!({ "check": name, "status": status, "output": output })),
                ),
            )
            .await;
            self.routing_changed();
        }
    }

    async fn record(&self, id: &MachineId, ev: MachineEvent) {
        if let Err(e) = self.store.add_event(id, &ev).await {
            tracing::error!(machine_id = %id, error = %e, "could not record machine event");
        }
    }

    /// Finds the image locally, pulling registry references that are missing.
    pub(crate) async fn resolve_image(&self, reference: &str) -> ApiResult<ResolvedImage> {
        let images = self.images.clone();
        let r = reference.to_owned();
        match blocking(move || images.resolve(&r)).await? {
            Ok(img) => Ok(img),
            Err(hangar_runtime::image::ImageError::NotFound(_))
                if is_registry_reference(reference) =>
            {
                self.images
                    .pull(reference, hangar_runtime::image::PullAuth::Anonymous, false)
                    .await?;
                let images = self.images.clone();
                let r = reference.to_owned();
                Ok(blocking(move || images.resolve(&r)).await??)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn org_network(&self, net_index: u32) -> ApiResult<OrgNetwork> {
        hangar_net::org_network(&self.opts.pool, net_index).map_err(ApiError::internal)
    }

    fn machine_network(&self, org: &OrgNetwork, rec: &MachineRecord) -> ApiResult<MachineNetwork> {
        let v4: Ipv4Addr = rec
            .ipv4
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(ApiError::internal)?;
        let v6: Ipv6Addr = rec
            .ipv6
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(ApiError::internal)?;
        Ok(hangar_net::machine_network(org, rec.id.as_str(), v4, v6))
    }

    /// Creates a machine and, unless `skip_launch`, starts it and waits until it runs.
    async fn create_machine_now(
        self: &Arc<Self>,
        app: &str,
        req: LaunchRequest,
    ) -> ApiResult<MachineRecord> {
        let app_rec = self.store.get_app(app).await?;
        req.config.validate(Some(self.opts.host_memory_mb))?;
        let image = self.resolve_image(&req.config.image).await?;
        let name = match req.name {
            Some(n) if n.trim().is_empty() => {
                return Err(ApiError::BadRequest("machine name is empty".into()));
            }
            Some(n) => n,
            None => generated_name(),
        };
        let org_net = self.org_network(app_rec.org.net_index)?;
        let id = MachineId::generate();
        let now = now_rfc3339();
        let mut rec = {
            let _guard = self.alloc_lock.lock().await;
            let used = self.store.org_addresses(app_rec.org.id).await?;
            let used4: BTreeSet<Ipv4Addr> = used
                .iter()
                .filter_map(|(a, _)| a.as_deref()?.parse().ok())
                .collect();
            let used6: BTreeSet<Ipv6Addr> = used
                .iter()
                .filter_map(|(_, b)| b.as_deref()?.parse().ok())
                .collect();
            let v4 = hangar_net::allocate_ipv4(&org_net, &used4)
                .map_err(|e| ApiError::Conflict(e.to_string()))?;
            let v6 = hangar_net::allocate_ipv6(&org_net, &used6)
                .map_err(|e| ApiError::Conflict(e.to_string()))?;
            let rec = MachineRecord {
                id: id.clone(),
                app: app.to_owned(),
                name,
                state: MachineState::Created,
                instance_id: InstanceId::generate(u64::try_from(millis_now()).unwrap_or_default()),
                config: req.config,
                image_ref: Some(image_ref(&image)),
                ipv4: Some(v4.to_string()),
                ipv6: Some(v6.to_string()),
                org_id: app_rec.org.id,
                restart_count: 0,
                created_at: now.clone(),
                updated_at: now,
            };
            self.store.insert_machine(&rec).await?;
            rec
        };
        self.record(&id, event("launch", "created", "user", None))
            .await;
        if req.skip_launch {
            return Ok(rec);
        }
        let slot = self.slot(&id, rec.state);
        let mut inner = slot.op.lock().await;
        self.start_locked(&mut rec, &mut inner, Some(image), "user")
            .await?;
        Ok(rec)
    }

    /// Starts a machine under its slot lock; on failure the machine is `failed` and the error says why.
    async fn start_locked(
        self: &Arc<Self>,
        rec: &mut MachineRecord,
        inner: &mut SlotInner,
        image: Option<ResolvedImage>,
        source: &str,
    ) -> ApiResult<()> {
        self.set_state(rec, MachineState::Starting).await?;
        inner.requested_stop = false;
        match self.launch(rec, image).await {
            Ok(()) => {
                self.undrain(&rec.id);
                self.set_state(rec, MachineState::Started).await?;
                self.record(&rec.id, event("start", "started", source, None))
                    .await;
                self.spawn_watcher(rec.id.clone(), inner.run);
                self.spawn_checker(rec);
                Ok(())
            }
            Err(e) => {
                let msg = format!("machine {} failed to start: {e}", rec.id);
                self.set_state(rec, MachineState::Failed).await?;
                self.record(
                    &rec.id,
                    event("start", "failed", source, Some(json!({ "error": msg }))),
                )
                .await;
                Err(ApiError::Unprocessable(msg))
            }
        }
    }

    /// Host work of a start: network, rootfs, container.
    async fn launch(&self, rec: &MachineRecord, image: Option<ResolvedImage>) -> ApiResult<()> {
        let image = match image {
            Some(i) => i,
            None => {
                let digest = rec
                    .image_ref
                    .as_ref()
                    .map(|r| r.digest.clone())
                    .unwrap_or_else(|| rec.config.image.clone());
                self.resolve_image(&digest).await?
            }
        };
        let org = self.store.get_org_by_id(rec.org_id).await?;
        let org_net = self.org_network(org.net_index)?;
        let mnet = self.machine_network(&org_net, rec)?;
        let spec = StartSpec {
            id: rec.id.clone(),
            instance_id: rec.instance_id.0.clone(),
            app: rec.app.clone(),
            config: rec.config.clone(),
            env: self
                .machine_env(&rec.app, self.platform_env(rec, &image))
                .await?,
            network: Some(NetworkSpec {
                netns_path: mnet.netns_path.clone(),
                ipv4: Some(mnet.ipv4),
                ipv6: Some(mnet.ipv6),
                hosts: vec![
                    (
                        IpAddr::V6(mnet.ipv6),
                        format!("{} {}.vm.{}.internal", rec.id, rec.id, rec.app),
                    ),
                    (IpAddr::V4(mnet.ipv4), rec.id.to_string()),
                ],
                nameservers: vec![IpAddr::V6(org_net.ipv6_gateway)],
                search: Vec::new(),
            }),
            image,
        };
        let net = self.net.clone();
        let runtime = self.runtime.clone();
        blocking(move || -> ApiResult<()> {
            net.ensure_org(&org_net).map_err(ApiError::internal)?;
            net.create_machine(&mnet).map_err(ApiError::internal)?;
            runtime.start(&spec).map_err(ApiError::internal)?;
            Ok(())
        })
        .await?
    }

    fn platform_env(&self, rec: &MachineRecord, image: &ResolvedImage) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let group = rec
            .config
            .metadata
            .get("fly_process_group")
            .cloned()
            .unwrap_or_else(|| "app".to_owned());
        let pairs = [
            ("APP_NAME", rec.app.clone()),
            ("MACHINE_ID", rec.id.to_string()),
            ("ALLOC_ID", rec.id.to_string()),
            ("REGION", self.opts.region.clone()),
            ("PUBLIC_IP", String::new()),
            ("PRIVATE_IP", rec.ipv6.clone().unwrap_or_default()),
            (
                "IMAGE_REF",
                image
                    .name
                    .clone()
                    .unwrap_or_else(|| image.reference.clone()),
            ),
            ("MACHINE_VERSION", rec.instance_id.0.clone()),
            ("PROCESS_GROUP", group),
            (
                "VM_MEMORY_MB",
                rec.config.guest_or_default().memory_mb.to_string(),
            ),
        ];
        for (k, v) in pairs {
            if k == "PUBLIC_IP" {
                continue;
            }
            env.insert(format!("FLY_{k}"), v.clone());
            env.insert(format!("HANGAR_{k}"), v);
        }
        env.entry("PRIMARY_REGION".to_owned())
            .or_insert_with(|| self.opts.region.clone());
        env
    }

    fn spawn_watcher(self: &Arc<Self>, id: MachineId, run: u64) {
        let this = self.clone();
        let cancel = self.shutdown.clone();
        self.tasks.spawn(async move {
            let exit = tokio::select! {
                () = cancel.cancelled() => return,
                r = this.runtime.wait_exit(&id) => r,
            };
            this.handle_exit(&id, run, exit).await;
        });
    }

    /// Decides what an exit means: stopped, restarted by policy, failed or destroyed.
    async fn handle_exit(
        self: &Arc<Self>,
        id: &MachineId,
        run: u64,
        exit: Result<ExitRecord, hangar_runtime::machine::RuntimeError>,
    ) {
        let Ok(mut rec) = self.store.get_machine(id).await else {
            return;
        };
        let slot = self.slot(id, rec.state);
        let mut inner = slot.op.lock().await;
        if inner.run != run {
            return;
        }
        // Re-read under the lock: an operation that held it may have changed the machine.
        let Ok(fresh) = self.store.get_machine(id).await else {
            return;
        };
        rec = fresh;
        if matches!(
            rec.state,
            MachineState::Destroying | MachineState::Destroyed
        ) {
            return;
        }
        inner.run += 1;
        let exit = match exit {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(machine_id = %id, error = %e, "machine exited without an exit record");
                ExitRecord {
                    exit_code: -1,
                    signal: None,
                    oom_killed: false,
                    exited_at: now_rfc3339(),
                }
            }
        };
        let requested = inner.requested_stop;
        let (policy, max_retries) = rec.config.restart_or_default();
        let failed = exit.exit_code != 0 || exit.oom_killed;
        let restart = !requested
            && match policy {
                RestartPolicy::No => false,
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => failed && rec.restart_count < max_retries,
            };
        let give_up = !requested && !restart && policy == RestartPolicy::OnFailure && failed;
        let exit_event = ExitEvent {
            exit_code: exit.exit_code,
            signal: exit.signal,
            oom_killed: exit.oom_killed,
            requested_stop: requested,
            restarting: restart,
            exited_at: exit.exited_at.clone(),
        };
        let status = if exit.oom_killed {
            "oom_killed"
        } else if failed {
            "failed"
        } else {
            "exited"
        };
        self.record(
            id,
            event(
                "exit",
                status,
                "hangar",
                Some(json!({ "exit_event": exit_event, "restart_count": rec.restart_count })),
            ),
        )
        .await;
        tracing::info!(machine_id = %id, app = %rec.app, exit_code = exit.exit_code, oom = exit.oom_killed, restart, "machine exited");

        if restart {
            rec.restart_count += 1;
            let attempt = rec.restart_count;
            let _ = self.set_state(&mut rec, MachineState::Starting).await;
            drop(inner);
            let backoff = Duration::from_millis(250u64.saturating_mul(1 << attempt.min(6)))
                .min(Duration::from_secs(10));
            let this = self.clone();
            let id = id.clone();
            let cancel = self.shutdown.clone();
            let my_run = run + 1;
            self.tasks.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                let Ok(mut rec) = this.store.get_machine(&id).await else {
                    return;
                };
                let slot = this.slot(&id, rec.state);
                let mut inner = slot.op.lock().await;
                // Re-read under the lock: a user action during the backoff (stop, destroy,
                // start, update) takes precedence, and an update's new config must be used.
                let Ok(fresh) = this.store.get_machine(&id).await else {
                    return;
                };
                rec = fresh;
                if inner.run != my_run || rec.state != MachineState::Starting {
                    return;
                }
                this.record(
                    &id,
                    event(
                        "restart",
                        "starting",
                        "hangar",
                        Some(json!({ "restart_count": attempt })),
                    ),
                )
                .await;
                if let Err(e) = this
                    .start_locked(&mut rec, &mut inner, None, "hangar")
                    .await
                {
                    tracing::warn!(machine_id = %id, error = %e, "restart failed");
                }
            });
            return;
        }
        let final_state = if give_up {
            MachineState::Failed
        } else {
            MachineState::Stopped
        };
        let _ = self.set_state(&mut rec, final_state).await;
        if give_up {
            self.record(id, event("failed", "failed", "hangar", Some(json!({ "reason": format!("exited {} time(s); restart policy on-failure gave up after {max_retries} retries", rec.restart_count + 1) })))).await;
        }
        if rec.config.auto_destroy && !requested {
            drop(inner);
            if let Err(e) = self
                .destroy_machine_now(&rec.app, rec.id.as_str(), true)
                .await
            {
                tracing::warn!(machine_id = %id, error = %e, "auto_destroy failed");
            }
        }
    }

    /// Starts a stopped, created or failed machine.
    async fn start_machine_now(self: &Arc<Self>, app: &str, id: &str) -> ApiResult<MachineState> {
        let mut rec = self.machine_record(app, id).await?;
        let slot = self.slot(&rec.id, rec.state);
        let mut inner = slot.op.lock().await;
        rec = self.store.get_machine(&rec.id).await?;
        let previous = rec.state;
        match previous {
            MachineState::Created | MachineState::Stopped | MachineState::Failed => {}
            MachineState::Started | MachineState::Starting => {
                return Err(ApiError::Conflict(format!(
                    "machine {} is already {previous}",
                    rec.id
                )));
            }
            other => {
                return Err(ApiError::Conflict(format!(
                    "machine {} is {other} and cannot be started",
                    rec.id
                )));
            }
        }
        rec.restart_count = 0;
        self.start_locked(&mut rec, &mut inner, None, "user")
            .await?;
        Ok(previous)
    }

    /// Stops a machine: its stop signal, then SIGKILL after the timeout. Returns once stopped.
    async fn stop_machine_now(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        signal: Option<i32>,
        timeout: Option<Duration>,
    ) -> ApiResult<()> {
        let mut rec = self.machine_record(app, id).await?;
        let slot = self.slot(&rec.id, rec.state);
        let mut rx = slot.state.subscribe();
        {
            let mut inner = slot.op.lock().await;
            rec = self.store.get_machine(&rec.id).await?;
            let running_on_host = {
                let runtime = self.runtime.clone();
                let id = rec.id.clone();
                matches!(
                    blocking(move || runtime.inspect(&id)).await?,
                    Ok(HostState::Running { .. })
                )
            };
            match rec.state {
                // Stopping: an earlier stop did not finish (it failed, or the server died): signal again.
                MachineState::Started | MachineState::Stopping => {}
                MachineState::Stopped | MachineState::Created | MachineState::Failed => {
                    return Ok(());
                }
                MachineState::Starting if running_on_host => {}
                MachineState::Starting => {
                    // Waiting out a restart backoff: cancel the restart.
                    inner.run += 1;
                    self.set_state(&mut rec, MachineState::Stopped).await?;
                    self.record(&rec.id, event("stop", "stopped", "user", None))
                        .await;
                    return Ok(());
                }
                other => {
                    return Err(ApiError::Conflict(format!(
                        "machine {} is {other} and cannot be stopped",
                        rec.id
                    )));
                }
            }
            inner.requested_stop = true;
            if rec.state != MachineState::Stopping {
                self.set_state(&mut rec, MachineState::Stopping).await?;
                self.record(&rec.id, event("stop", "stopping", "user", None))
                    .await;
            }
        }
        let stop = rec.config.stop_or_default();
        let signal = match signal {
            Some(s) => s,
            None => stop.signal_number()?,
        };
        let timeout = timeout.unwrap_or_else(|| stop.timeout());
        // Out of routing first; in-flight requests get up to the stop timeout to finish.
        self.drain(&rec.id, timeout).await;
        let stopped = self.runtime.stop(&rec.id, signal, timeout).await;
        self.undrain(&rec.id);
        stopped.map_err(ApiError::internal)?;
        // The exit watcher records the exit and the final state.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let st = *rx.borrow_and_update();
            if matches!(
                st,
                MachineState::Stopped | MachineState::Failed | MachineState::Destroyed
            ) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(ApiError::Internal(format!(
                    "machine {} did not report its exit after stop",
                    rec.id
                )));
            }
        }
    }

    /// Sends a signal to a running machine.
    pub async fn signal_machine(&self, app: &str, id: &str, signal: i32) -> ApiResult<()> {
        let rec = self.machine_record(app, id).await?;
        if rec.state != MachineState::Started {
            return Err(ApiError::Conflict(format!(
                "machine {} is {}, not started",
                rec.id, rec.state
            )));
        }
        let runtime = self.runtime.clone();
        let mid = rec.id.clone();
        blocking(move || runtime.signal(&mid, signal))
            .await?
            .map_err(ApiError::internal)?;
        self.record(&rec.id, event("signal", &signal.to_string(), "user", None))
            .await;
        Ok(())
    }

    /// Destroys a machine and everything it had on the host.
    async fn destroy_machine_now(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        force: bool,
    ) -> ApiResult<()> {
        let mut rec = self.machine_record(app, id).await?;
        let slot = self.slot(&rec.id, rec.state);
        let mut inner = slot.op.lock().await;
        rec = self.store.get_machine(&rec.id).await?;
        if rec.state == MachineState::Destroyed {
            return Err(ApiError::NotFound(format!(
                "machine {} is already destroyed",
                rec.id
            )));
        }
        if matches!(rec.state, MachineState::Started | MachineState::Stopping) && !force {
            return Err(ApiError::Precondition(format!(
                "machine {} is {}: stop it first, or destroy with force=true to kill it",
                rec.id, rec.state
            )));
        }
        inner.run += 1;
        inner.requested_stop = true;
        self.set_state(&mut rec, MachineState::Destroying).await?;
        self.record(&rec.id, event("destroy", "destroying", "user", None))
            .await;
        self.remove_from_host(&rec).await?;
        self.set_state(&mut rec, MachineState::Destroyed).await?;
        self.record(&rec.id, event("destroy", "destroyed", "user", None))
            .await;
        self.undrain(&rec.id);
        lock(&self.slots).remove(&rec.id);
        Ok(())
    }

    async fn remove_from_host(&self, rec: &MachineRecord) -> ApiResult<()> {
        let org = self.store.get_org_by_id(rec.org_id).await?;
        let org_net = self.org_network(org.net_index)?;
        let mnet = self.machine_network(&org_net, rec).ok();
        let runtime = self.runtime.clone();
        let net = self.net.clone();
        let id = rec.id.clone();
        blocking(move || -> ApiResult<()> {
            runtime.destroy(&id).map_err(ApiError::internal)?;
            if let Some(m) = mnet {
                net.destroy_machine(&m).map_err(ApiError::internal)?;
            }
            Ok(())
        })
        .await?
    }

    /// Replaces a machine's config (new instance id); a running machine is restarted with it.
    async fn update_machine_now(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        req: LaunchRequest,
        current_version: Option<String>,
    ) -> ApiResult<MachineRecord> {
        req.config.validate(Some(self.opts.host_memory_mb))?;
        let image = self.resolve_image(&req.config.image).await?;
        let rec = self.machine_record(app, id).await?;
        if let Some(v) = current_version
            && v != rec.instance_id.0
        {
            return Err(ApiError::Precondition(format!(
                "machine {} is at version {}, not {v}",
                rec.id, rec.instance_id
            )));
        }
        let was_running = rec.state == MachineState::Started;
        if was_running {
            self.stop_machine_now(app, id, None, None).await?;
        }
        let slot = self.slot(&rec.id, rec.state);
        let mut inner = slot.op.lock().await;
        let mut rec = self.store.get_machine(&rec.id).await?;
        if rec.state == MachineState::Destroyed {
            return Err(ApiError::NotFound(format!(
                "machine {} was destroyed",
                rec.id
            )));
        }
        rec.config = req.config;
        rec.image_ref = Some(image_ref(&image));
        rec.instance_id = InstanceId::generate(u64::try_from(millis_now()).unwrap_or_default());
        rec.restart_count = 0;
        self.store.update_machine(&rec).await?;
        self.record(
            &rec.id,
            event(
                "update",
                "updated",
                "user",
                Some(json!({ "instance_id": rec.instance_id })),
            ),
        )
        .await;
        if (was_running || rec.state == MachineState::Created) && !req.skip_launch {
            self.start_locked(&mut rec, &mut inner, Some(image), "user")
                .await?;
        }
        Ok(rec)
    }

    /// Reconciles one machine of the store with what the host has for it.
    async fn reconcile_machine(self: &Arc<Self>, mut rec: MachineRecord) -> anyhow::Result<()> {
        let runtime = self.runtime.clone();
        let id = rec.id.clone();
        let host = blocking(move || runtime.inspect(&id))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))??;
        let slot = self.slot(&rec.id, rec.state);
        let run = slot.op.lock().await.run;
        match (rec.state, host) {
            (
                MachineState::Started | MachineState::Starting | MachineState::Stopping,
                HostState::Running { .. },
            ) => {
                if rec.state == MachineState::Starting {
                    self.set_state(&mut rec, MachineState::Started)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                if rec.state == MachineState::Stopping {
                    slot.op.lock().await.requested_stop = true;
                }
                tracing::info!(machine_id = %rec.id, app = %rec.app, "adopted running machine");
                self.spawn_watcher(rec.id.clone(), run);
                if rec.state == MachineState::Stopping {
                    // The server died during a stop: finish it.
                    let this = self.clone();
                    let (app, id) = (rec.app.clone(), rec.id.to_string());
                    self.tasks.spawn(async move {
                        if let Err(e) = this.stop_machine_now(&app, &id, None, None).await {
                            tracing::warn!(machine_id = %id, error = %e, "could not finish an interrupted stop");
                        }
                    });
                } else {
                    self.spawn_checker(&rec);
                }
            }
            (MachineState::Started | MachineState::Stopping, HostState::Exited(exit)) => {
                if rec.state == MachineState::Stopping {
                    slot.op.lock().await.requested_stop = true;
                }
                self.handle_exit(&rec.id, run, Ok(exit)).await;
            }
            (MachineState::Starting, HostState::Absent | HostState::Exited(_)) => {
                // The server died while starting it (or during a restart backoff): finish the start.
                let mut inner = slot.op.lock().await;
                if let Err(e) = self
                    .start_locked(&mut rec, &mut inner, None, "hangar")
                    .await
                {
                    tracing::warn!(machine_id = %rec.id, error = %e, "could not finish an interrupted start");
                }
            }
            (MachineState::Started | MachineState::Stopping, HostState::Absent) => {
                self.record(&rec.id, event("vanished", "stopped", "hangar", Some(json!({ "reason": "the machine was not running on the host when the server started" })))).await;
                self.set_state(&mut rec, MachineState::Stopped)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            (
                MachineState::Started | MachineState::Starting | MachineState::Stopping,
                HostState::Orphaned { init_pid },
            ) => {
                // Its shim is gone, so its output is no longer logged and its exit would
                // not be seen: kill it and let the user (or the restart policy) start it again.
                tracing::warn!(machine_id = %rec.id, init_pid, "machine lost its shim: stopping it");
                let runtime = self.runtime.clone();
                let id = rec.id.clone();
                blocking(move || runtime.destroy(&id))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))??;
                self.record(&rec.id, event("vanished", "stopped", "hangar", Some(json!({ "reason": "the machine's shim was gone when the server started; the machine was stopped" })))).await;
                self.set_state(&mut rec, MachineState::Stopped)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            (MachineState::Destroying, _) => {
                self.remove_from_host(&rec)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                self.set_state(&mut rec, MachineState::Destroyed)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            (_, HostState::Running { .. } | HostState::Orphaned { .. }) => {
                tracing::warn!(machine_id = %rec.id, state = %rec.state, "machine running on the host but not in the store as started: stopping it");
                let runtime = self.runtime.clone();
                let id = rec.id.clone();
                let _ = blocking(move || runtime.destroy(&id)).await;
            }
            _ => {}
        }
        Ok(())
    }

    /// Brings the store and the host into agreement after a (re)start of the server:
    /// adopts machines that kept running, records exits that happened while it was away,
    /// marks machines that vanished, and removes what the store does not know.
    pub async fn reconcile(self: &Arc<Self>) -> anyhow::Result<()> {
        let live = self.store.list_live_machines().await?;
        let known: BTreeSet<String> = live.iter().map(|m| m.id.to_string()).collect();
        for rec in live {
            let id = rec.id.clone();
            if let Err(e) = self.reconcile_machine(rec).await {
                tracing::error!(machine_id = %id, error = %e, "could not reconcile this machine; continuing with the others");
            }
        }
        // Orphans: host state of machines the store does not know (or knows as destroyed).
        let runtime = self.runtime.clone();
        let on_host = blocking(move || runtime.list_host_machines())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))??;
        for id in on_host {
            if !known.contains(id.as_str()) {
                tracing::warn!(machine_id = %id, "removing orphan machine from the host");
                let runtime = self.runtime.clone();
                blocking(move || runtime.destroy(&id))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))??;
            }
        }
        let net = self.net.clone();
        let netns = blocking(move || net.list_machine_netns())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))??;
        for id in netns {
            if known.contains(&id) {
                continue;
            }
            // Only namespaces of machines this server's store has seen are its own orphans;
            // another Hangar (a test server, a second data dir) may own the rest.
            let ours = match id.parse::<MachineId>() {
                Ok(mid) => self.store.get_machine(&mid).await.is_ok(),
                Err(_) => false,
            };
            if !ours {
                tracing::debug!(netns = %id, "leaving a network namespace this server does not know");
                continue;
            }
            tracing::warn!(machine_id = %id, "removing orphan network namespace");
            // Only the names matter for removal; addresses are placeholders.
            let org = self.org_network(1).map_err(|e| anyhow::anyhow!("{e}"))?;
            let m = hangar_net::machine_network(
                &org,
                &id,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED,
            );
            let net = self.net.clone();
            blocking(move || net.destroy_machine(&m))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))??;
        }
        Ok(())
    }
}

/// A run number no earlier slot used: a slot recreated after destroy must not match the run
/// of a watcher that belonged to the old one.
fn next_run_base() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1 << 32, std::sync::atomic::Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn stop_checker(slot: &Slot) {
    if let Some(t) = lock(&slot.checker).take() {
        t.cancel();
    }
}

fn is_registry_reference(reference: &str) -> bool {
    matches!(hangar_runtime::image::parse_reference(reference), Ok(hangar_runtime::image::ParsedReference::Named(n)) if n.is_registry())
}

fn image_ref(image: &ResolvedImage) -> ImageRef {
    let name = image.name.clone().unwrap_or_default();
    let (repository, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
        _ => (name.clone(), String::new()),
    };
    ImageRef {
        registry: String::new(),
        repository,
        tag,
        digest: image.manifest_digest.clone(),
        labels: image.config.labels.clone(),
    }
}
