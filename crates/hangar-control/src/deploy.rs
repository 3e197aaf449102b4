//! The deploy engine: releases, strategies, the release command, rollback and scaling.
//!
//! A deploy brings an app's machines to one release. It is a durable state machine: the
//! deploy row (status, phase) and the machines in the store are the whole state, and every
//! step is computed from them ("converge"), so a deploy interrupted by a crash of the server
//! resumes from what the store says and never duplicates or orphans a machine.
//!
//! Machines a deploy manages carry the metadata `fly_release_version` and
//! `fly_process_group`; machines created through the Machines API without them are left
//! alone. Routing prefers the newest release that has a healthy machine (see
//! [`Control::routing_snapshot`]): once a new machine passes its checks, new requests go to
//! the new release only, so clients see the old version until one moment and the new one
//! after it. Blue-green deploys hold their new machines out of routing until all of them
//! are healthy, then release them at once.
//!
//! On failure, machines already replaced go back to the previous release (the same
//! converge, towards the previous release) and the release is marked `failed` with the
//! reason; traffic never leaves healthy machines because old machines are drained only
//! after their replacements pass their checks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hangar_core::config::{AppConfig, ResolvedApp, Strategy};
use hangar_core::machine::{
    GoDuration, MachineConfig, MachineServiceCheck, MachineState, RestartConfig, RestartPolicy,
};
use hangar_core::{InstanceId, MachineId};
use hangar_store::{AppRecord, DeployRecord, MachineRecord, NewDeploy, NewRelease, ReleaseRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::checks;
use crate::error::{ApiError, ApiResult};
use crate::supervisor::{Control, LaunchRequest};

/// Metadata key of the release a managed machine belongs to.
pub const RELEASE_KEY: &str = "fly_release_version";
/// Metadata key of a machine's process group.
pub const GROUP_KEY: &str = "fly_process_group";
/// Metadata key marking a release-command machine with its deploy id.
const RELEASE_COMMAND_KEY: &str = "hangar_release_command";
/// Process group name of release-command machines (Fly's).
const RELEASE_COMMAND_GROUP: &str = "fly_app_release_command";

/// Deploy-engine state shared with routing.
pub(crate) struct Deploys {
    /// Machines of a blue-green deploy, kept out of routing until the switch.
    held: Mutex<BTreeSet<MachineId>>,
    /// Bumped after every deploy event, so streams wake at once.
    events: watch::Sender<u64>,
}

impl Deploys {
    pub(crate) fn new() -> Deploys {
        Deploys {
            held: Mutex::new(BTreeSet::new()),
            events: watch::channel(0).0,
        }
    }
}

/// What a deploy request asks for.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct DeployRequest {
    /// The image: a local name (`app:deployment-...`, as `hangar build` and the registry
    /// store them) or a registry reference, pulled when missing.
    pub image: String,
    /// The app config (the `hangar.toml`/`fly.toml` model as JSON). Absent: the current
    /// release's config.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<AppConfig>,
    /// Overrides `[deploy] strategy`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub strategy: Option<Strategy>,
    /// Machines per process group for groups that have none yet (default 1).
    #[serde(default)]
    pub count: Option<u32>,
}

/// One machine in an app's status.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusMachine {
    /// Machine id.
    pub id: String,
    /// Process group.
    pub process_group: String,
    /// State.
    pub state: String,
    /// Release version, when a deploy made it.
    pub release: Option<i64>,
    /// Checks passing / total.
    pub checks: String,
    /// Private IPv6.
    pub private_ip: String,
    /// RFC 3339.
    pub created_at: String,
}

/// An app's status: its current release, an active deploy, its machines.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppStatus {
    /// App name.
    pub app: String,
    /// Organization slug.
    pub org: String,
    /// The app's host name on the edge proxy.
    pub hostname: String,
    /// The app's URL on the edge proxy.
    pub url: String,
    /// The release the app runs.
    #[schema(value_type = Option<Object>)]
    pub release: Option<ReleaseRecord>,
    /// The deploy in progress.
    #[schema(value_type = Option<Object>)]
    pub deploy: Option<DeployRecord>,
    /// Machines.
    pub machines: Vec<StatusMachine>,
}

/// The release a machine belongs to, if a deploy made it.
pub fn machine_release(config: &MachineConfig) -> Option<i64> {
    config.metadata.get(RELEASE_KEY)?.parse().ok()
}

fn machine_group(config: &MachineConfig) -> String {
    config
        .metadata
        .get(GROUP_KEY)
        .cloned()
        .unwrap_or_else(|| "app".to_owned())
}

/// Gives every service without checks a TCP check on its internal port, so that a new
/// machine of a deploy gets traffic only once it listens (otherwise the switch to a new
/// release could route requests to a process that is still starting).
fn add_listen_checks(config: &mut MachineConfig) {
    for service in &mut config.services {
        if service.checks.is_empty() {
            service.checks.push(MachineServiceCheck {
                kind: Some("tcp".into()),
                interval: Some(GoDuration(Duration::from_secs(1))),
                timeout: Some(GoDuration(Duration::from_secs(2))),
                ..MachineServiceCheck::default()
            });
        }
    }
}

/// `image` pinned to `digest`, so a moved tag never changes what a release runs.
fn pinned(image: &str, digest: &str) -> String {
    if image.contains('@') || image.starts_with("sha256:") {
        image.to_owned()
    } else {
        format!("{image}@{digest}")
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Rolling => "rolling",
        Strategy::Immediate => "immediate",
        Strategy::Canary => "canary",
        Strategy::Bluegreen => "bluegreen",
    }
}

fn parse_strategy(s: &str) -> Strategy {
    match s {
        "immediate" => Strategy::Immediate,
        "canary" => Strategy::Canary,
        "bluegreen" => Strategy::Bluegreen,
        _ => Strategy::Rolling,
    }
}

/// Machines replaced at once in a group of `target`: a count when >= 1, else a fraction;
/// at least 1.
fn batch_size(max_unavailable: f64, target: u32) -> u32 {
    let n = if max_unavailable >= 1.0 {
        max_unavailable.floor()
    } else {
        (f64::from(target) * max_unavailable).ceil()
    };
    // The float is a small non-negative count; the cast cannot truncate meaningfully.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = n.clamp(1.0, f64::from(u32::MAX)) as u32;
    n.max(1)
}

/// A JSON value the store kept (a release's config or resolved configs), read back.
fn stored<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> ApiResult<T> {
    serde_json::from_value(value.clone())
        .map_err(|e| ApiError::Internal(format!("a stored release does not parse: {e}")))
}

/// Why a step of a deploy failed, for people.
type Reason = String;

impl Control {
    fn deploy_ulid() -> String {
        InstanceId::generate(
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default(),
            )
            .unwrap_or_default(),
        )
        .0
    }

    /// Records a progress event of a deploy and wakes its streams.
    pub(crate) async fn deploy_event(
        &self,
        deploy_id: &str,
        kind: &str,
        message: &str,
        machine: Option<&MachineId>,
    ) {
        tracing::info!(deploy = deploy_id, kind, machine = ?machine.map(MachineId::as_str), "{message}");
        if let Err(e) = self
            .store
            .add_deploy_event(deploy_id, kind, message, machine.map(MachineId::as_str))
            .await
        {
            tracing::error!(deploy = deploy_id, error = %e, "could not record a deploy event");
        }
        self.deploys.events.send_modify(|v| *v += 1);
    }

    /// A receiver that changes after every deploy event.
    pub fn deploy_updates(&self) -> watch::Receiver<u64> {
        self.deploys.events.subscribe()
    }

    /// Whether a machine is held out of routing by a blue-green deploy.
    pub fn is_held(&self, id: &MachineId) -> bool {
        lock(&self.deploys.held).contains(id)
    }

    fn hold(&self, id: &MachineId) {
        lock(&self.deploys.held).insert(id.clone());
        self.routing_changed();
    }

    fn release_holds(&self, ids: &[MachineId]) {
        let mut held = lock(&self.deploys.held);
        for id in ids {
            held.remove(id);
        }
        drop(held);
        self.routing_changed();
    }

    /// Live machines a deploy manages, with their release and group.
    async fn managed_machines(&self, app: &str) -> ApiResult<Vec<MachineRecord>> {
        Ok(self
            .store
            .list_machines(app, false)
            .await?
            .into_iter()
            .filter(|m| machine_release(&m.config).is_some())
            .collect())
    }

    /// Starts a deploy of `req` to `app`: a new release, then machines brought to it on a
    /// task of its own. Returns at once; progress is in the deploy's events.
    pub async fn start_deploy(
        self: &Arc<Self>,
        app: &AppRecord,
        req: DeployRequest,
        kind: &str,
        created_by: &str,
    ) -> ApiResult<DeployRecord> {
        if req.image.trim().is_empty() {
            return Err(ApiError::BadRequest(
                "no image: pass --image REF, or deploy from a directory with a Dockerfile".into(),
            ));
        }
        let current = self.store.current_release(&app.name).await?;
        let config = match (req.config, &current) {
            (Some(c), _) => c,
            (None, Some(rel)) => stored(&rel.config)?,
            (None, None) => AppConfig {
                app: Some(app.name.clone()),
                ..AppConfig::default()
            },
        };
        if let Some(name) = &config.app
            && name != &app.name
        {
            return Err(ApiError::Unprocessable(format!(
                "the config is for app {name:?}, not {:?}: fix `app` in the config file or pass --app {name}",
                app.name
            )));
        }
        let image = self.resolve_deploy_image(&req.image).await?;
        let resolved = hangar_core::config::resolve(&config, &req.image)
            .map_err(|e| ApiError::Unprocessable(format!("config: {e}")))?;
        for (group, pg) in &resolved.groups {
            pg.machine
                .validate(Some(self.opts.host_memory_mb))
                .map_err(|e| ApiError::Unprocessable(format!("process group {group}: {e}")))?;
        }
        let strategy = req.strategy.unwrap_or(resolved.deploy.strategy);
        if strategy == Strategy::Bluegreen
            && resolved
                .groups
                .values()
                .any(|g| !g.machine.mounts.is_empty())
        {
            return Err(ApiError::Unprocessable(
                "the bluegreen strategy cannot be used by apps with volumes (a volume is attached to one machine at a time): use rolling".into(),
            ));
        }
        // Counts: groups keep their machines; new groups get `count` (default 1).
        let machines = self.managed_machines(&app.name).await?;
        let mut counts = BTreeMap::new();
        for group in resolved.groups.keys() {
            let have = machines
                .iter()
                .filter(|m| machine_group(&m.config) == *group)
                .count();
            let have = u32::try_from(have).unwrap_or(u32::MAX);
            counts.insert(
                group.clone(),
                if have > 0 {
                    have
                } else {
                    req.count.unwrap_or(1)
                },
            );
        }
        let new_release = NewRelease {
            image: req.image.clone(),
            image_digest: image,
            config: serde_json::to_value(&config).map_err(ApiError::internal)?,
            resolved: serde_json::to_value(&resolved).map_err(ApiError::internal)?,
            secrets_digest: self.secrets_digest(&app.name).await?,
        };
        let (deploy, _) = self
            .store
            .create_deploy(
                &app.name,
                Some(new_release),
                None,
                NewDeploy {
                    id: Self::deploy_ulid(),
                    kind: kind.to_owned(),
                    strategy: strategy_name(strategy).to_owned(),
                    counts,
                    created_by: created_by.to_owned(),
                },
            )
            .await?;
        self.spawn_deploy(deploy.clone());
        Ok(deploy)
    }

    /// Deploys an earlier release's image and config again, as a new release.
    pub async fn rollback(
        self: &Arc<Self>,
        app: &AppRecord,
        version: Option<i64>,
        created_by: &str,
    ) -> ApiResult<DeployRecord> {
        let target = match version {
            Some(v) => self.store.get_release(&app.name, v).await?,
            None => {
                let releases = self.store.list_releases(&app.name, 1000).await?;
                let current = releases.iter().find(|r| r.status == "complete");
                current
                    .and_then(|cur| {
                        releases
                            .iter()
                            .find(|r| r.status == "complete" && r.version < cur.version)
                    })
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::Conflict(format!(
                            "app {} has no earlier complete release to roll back to: list them with `hangar releases`",
                            app.name
                        ))
                    })?
            }
        };
        let config: AppConfig = stored(&target.config)?;
        let req = DeployRequest {
            image: pinned(&target.image, &target.image_digest),
            config: Some(config),
            strategy: None,
            count: None,
        };
        self.start_deploy(app, req, "rollback", created_by).await
    }

    /// The release an app runs; 409 before its first deploy.
    async fn current_release_or_conflict(&self, app: &AppRecord) -> ApiResult<ReleaseRecord> {
        self.store.current_release(&app.name).await?.ok_or_else(|| {
            ApiError::Conflict(format!(
                "app {} has no release yet: deploy it first with `hangar deploy`",
                app.name
            ))
        })
    }

    /// Sets the number of machines of process groups at the current release. `group`
    /// `None` means every group of the release.
    pub async fn scale_count(
        self: &Arc<Self>,
        app: &AppRecord,
        group: Option<&str>,
        count: u32,
        created_by: &str,
    ) -> ApiResult<DeployRecord> {
        let current = self.current_release_or_conflict(app).await?;
        let resolved: ResolvedApp = stored(&current.resolved)?;
        if let Some(g) = group
            && !resolved.groups.contains_key(g)
        {
            return Err(ApiError::Unprocessable(format!(
                "app {} has no process group {g:?}; its groups: {}",
                app.name,
                resolved
                    .groups
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let machines = self.managed_machines(&app.name).await?;
        let mut counts = BTreeMap::new();
        for g in resolved.groups.keys() {
            let have = machines
                .iter()
                .filter(|m| machine_group(&m.config) == *g)
                .count();
            let n = if group.is_none_or(|w| w == g) {
                count
            } else {
                u32::try_from(have).unwrap_or(u32::MAX)
            };
            counts.insert(g.clone(), n);
        }
        let (deploy, _) = self
            .store
            .create_deploy(
                &app.name,
                None,
                Some(current.version),
                NewDeploy {
                    id: Self::deploy_ulid(),
                    kind: "scale".into(),
                    strategy: "rolling".into(),
                    counts,
                    created_by: created_by.to_owned(),
                },
            )
            .await?;
        self.spawn_deploy(deploy.clone());
        Ok(deploy)
    }

    /// Changes the machine size of every group (or one) as a new release, rolled like a
    /// deploy.
    pub async fn scale_vm(
        self: &Arc<Self>,
        app: &AppRecord,
        size: Option<&str>,
        memory_mb: Option<u64>,
        created_by: &str,
    ) -> ApiResult<DeployRecord> {
        let current = self.current_release_or_conflict(app).await?;
        if let Some(s) = size
            && hangar_core::config::preset(s).is_none()
        {
            return Err(ApiError::Unprocessable(format!(
                "unknown VM size {s:?}: use one of {}",
                hangar_core::config::PRESET_NAMES.join(", ")
            )));
        }
        let mut config: AppConfig = stored(&current.config)?;
        if config.vm.is_empty() {
            config.vm.push(hangar_core::config::Compute::default());
        }
        for vm in &mut config.vm {
            if let Some(s) = size {
                vm.size = Some(s.to_owned());
                // A size replaces the preset's memory unless memory is given too.
                vm.memory = None;
                vm.memory_mb = None;
                vm.cpus = None;
                vm.cpu_kind = None;
            }
            if let Some(m) = memory_mb {
                vm.memory = Some(m);
                vm.memory_mb = None;
            }
        }
        let req = DeployRequest {
            image: pinned(&current.image, &current.image_digest),
            config: Some(config),
            strategy: Some(Strategy::Rolling),
            count: None,
        };
        self.start_deploy(app, req, "scale", created_by).await
    }

    /// A new release with the same image and config, rolled: machines restart with the
    /// app's current secrets. `None` when the app has no release yet (its machines get the
    /// secrets at their next start).
    pub async fn secrets_changed(self: &Arc<Self>, app: &str) -> ApiResult<Option<DeployRecord>> {
        let app = self.store.get_app(app).await?;
        let Some(current) = self.store.current_release(&app.name).await? else {
            return Ok(None);
        };
        let config: AppConfig = stored(&current.config)?;
        let req = DeployRequest {
            image: pinned(&current.image, &current.image_digest),
            config: Some(config),
            strategy: Some(Strategy::Rolling),
            count: None,
        };
        self.start_deploy(&app, req, "secrets", "secrets")
            .await
            .map(Some)
    }

    /// The image's manifest digest; registry references are pulled when missing.
    async fn resolve_deploy_image(&self, reference: &str) -> ApiResult<String> {
        let img = self.resolve_image(reference).await.map_err(|e| match e {
            ApiError::NotFound(m) => ApiError::Unprocessable(format!(
                "image {reference} not found on the server ({m}): build it with `hangar deploy` from a directory with a Dockerfile, push it to the built-in registry, or import it with `hangar images import`"
            )),
            other => other,
        })?;
        Ok(img.manifest_digest)
    }

    fn spawn_deploy(self: &Arc<Self>, deploy: DeployRecord) {
        let this = self.clone();
        let cancel = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                // At shutdown the deploy stops where it is; the next start resumes it.
                () = cancel.cancelled() => {}
                () = this.run_deploy(deploy) => {}
            }
        });
    }

    /// Resumes the deploys a previous run of the server left active. Blue-green holds are
    /// restored before this returns, so call it before the proxy serves.
    pub async fn resume_deploys(self: &Arc<Self>) -> anyhow::Result<()> {
        for d in self.store.active_deploys().await? {
            if d.strategy == "bluegreen" && d.status == "running" {
                for m in self.managed_machines(&d.app).await? {
                    if machine_release(&m.config) == Some(d.release) {
                        self.hold(&m.id);
                    }
                }
            }
            self.deploy_event(&d.id, "phase", "the server restarted: resuming", None)
                .await;
            self.spawn_deploy(d);
        }
        Ok(())
    }

    async fn run_deploy(self: Arc<Self>, d: DeployRecord) {
        let result = if d.status == "rolling_back" {
            Err(d.reason.clone().unwrap_or_else(|| "interrupted".to_owned()))
        } else {
            self.deploy_phases(&d).await
        };
        match result {
            Ok(()) => {
                let _ = self
                    .store
                    .set_release_status(&d.app, d.release, "complete", None)
                    .await;
                let _ = self
                    .store
                    .set_deploy_state(&d.id, "complete", "done", None)
                    .await;
                self.deploy_event(
                    &d.id,
                    "done",
                    &format!("release v{} is live", d.release),
                    None,
                )
                .await;
            }
            Err(reason) => self.fail_deploy(&d, &reason).await,
        }
    }

    /// Rolls back after a failure: machines go back to the previous release, and the
    /// failed release's machines are drained and destroyed.
    async fn fail_deploy(self: &Arc<Self>, d: &DeployRecord, reason: &str) {
        tracing::warn!(deploy = %d.id, app = %d.app, reason, "deploy failed");
        let _ = self
            .store
            .set_deploy_state(&d.id, "rolling_back", "rollback", Some(reason))
            .await;
        if d.kind != "scale" {
            let _ = self
                .store
                .set_release_status(&d.app, d.release, "failed", Some(reason))
                .await;
        }
        self.deploy_event(&d.id, "error", &format!("deploy failed: {reason}"), None)
            .await;
        let rollback = match d.previous {
            Some(prev) if d.kind != "scale" => {
                self.deploy_event(
                    &d.id,
                    "phase",
                    &format!("rolling back to release v{prev}"),
                    None,
                )
                .await;
                match self.store.get_release(&d.app, prev).await {
                    Ok(rel) => self.converge(d, &rel, Strategy::Rolling, true).await,
                    Err(e) => Err(e.to_string()),
                }
            }
            _ => {
                // Nothing to go back to: the failed release's machines that are not
                // serving go away; for a scale, the extra machines that did not come up.
                self.remove_unhealthy_of(d).await
            }
        };
        let (status, message) = match rollback {
            Ok(()) => ("failed", format!("deploy failed: {reason}")),
            Err(e) => (
                "failed",
                format!("deploy failed: {reason}; the rollback failed too: {e}"),
            ),
        };
        let _ = self
            .store
            .set_deploy_state(&d.id, status, "done", Some(&message))
            .await;
        self.deploy_event(&d.id, "done", &message, None).await;
    }

    async fn remove_unhealthy_of(self: &Arc<Self>, d: &DeployRecord) -> Result<(), Reason> {
        let machines = self
            .managed_machines(&d.app)
            .await
            .map_err(|e| e.to_string())?;
        let doomed: Vec<MachineRecord> = machines
            .into_iter()
            .filter(|m| {
                machine_release(&m.config) == Some(d.release)
                    && (d.kind != "scale" || !self.machine_healthy(m))
            })
            .collect();
        self.remove_machines(d, doomed).await
    }

    async fn deploy_phases(self: &Arc<Self>, d: &DeployRecord) -> Result<(), Reason> {
        let rel = self
            .store
            .get_release(&d.app, d.release)
            .await
            .map_err(|e| e.to_string())?;
        let resolved: ResolvedApp =
            serde_json::from_value(rel.resolved.clone()).map_err(|e| e.to_string())?;
        if matches!(d.phase.as_str(), "pending" | "release_command")
            && matches!(d.kind.as_str(), "deploy" | "rollback")
            && let Some(cmd) = &resolved.deploy.release_command
        {
            self.set_phase(d, "release_command").await;
            self.release_command(d, &rel, &resolved, cmd).await?;
        }
        self.set_phase(d, "machines").await;
        self.deploy_event(
            &d.id,
            "phase",
            &format!(
                "bringing machines to release v{} ({} strategy)",
                d.release, d.strategy
            ),
            None,
        )
        .await;
        self.converge(d, &rel, parse_strategy(&d.strategy), false)
            .await
    }

    async fn set_phase(&self, d: &DeployRecord, phase: &str) {
        if let Err(e) = self
            .store
            .set_deploy_state(&d.id, "running", phase, None)
            .await
        {
            tracing::error!(deploy = %d.id, error = %e, "could not record the deploy phase");
        }
    }

    /// Runs the release command in a throwaway machine; its output becomes deploy events.
    async fn release_command(
        self: &Arc<Self>,
        d: &DeployRecord,
        rel: &ReleaseRecord,
        resolved: &ResolvedApp,
        cmd: &[String],
    ) -> Result<(), Reason> {
        // A machine left by an interrupted run of this deploy goes first.
        for m in self
            .store
            .list_machines(&d.app, false)
            .await
            .map_err(|e| e.to_string())?
        {
            if m.config.metadata.get(RELEASE_COMMAND_KEY) == Some(&d.id) {
                let _ = self.destroy_machine(&d.app, m.id.as_str(), true).await;
            }
        }
        let group = resolved
            .groups
            .get(&resolved.default_group)
            .or_else(|| resolved.groups.values().next())
            .ok_or("the config has no process group")?;
        let mut config = group.machine.clone();
        config.image = pinned(&rel.image, &rel.image_digest);
        config.services.clear();
        config.checks.clear();
        config.mounts.clear();
        config.init.get_or_insert_with(Default::default).cmd = Some(cmd.to_vec());
        config.restart = Some(RestartConfig {
            policy: RestartPolicy::No,
            ..RestartConfig::default()
        });
        if let Some(g) = &resolved.deploy.release_command_guest {
            config.guest = Some(g.clone());
        }
        config.env.insert("RELEASE_COMMAND".into(), "1".into());
        config
            .metadata
            .insert(GROUP_KEY.into(), RELEASE_COMMAND_GROUP.into());
        config
            .metadata
            .insert(RELEASE_COMMAND_KEY.into(), d.id.clone());
        config.metadata.remove(RELEASE_KEY);
        let timeout = resolved.deploy.release_command_timeout.0;
        self.deploy_event(
            &d.id,
            "phase",
            &format!("running release command: {}", shell_words::join(cmd)),
            None,
        )
        .await;
        let m = self
            .create_machine(
                &d.app,
                LaunchRequest {
                    config,
                    name: Some(format!("release-command-v{}", rel.version)),
                    skip_launch: false,
                },
            )
            .await
            .map_err(|e| format!("the release command could not start: {e}"))?;
        let outcome = self.wait_release_command(d, &m, timeout).await;
        let _ = self.destroy_machine(&d.app, m.id.as_str(), true).await;
        outcome
    }

    async fn wait_release_command(
        self: &Arc<Self>,
        d: &DeployRecord,
        m: &MachineRecord,
        timeout: Duration,
    ) -> Result<(), Reason> {
        // Output is forwarded while the command runs; lines the follower had not reached
        // when the machine exited are read from the log afterwards.
        let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let follower = {
            let this = self.clone();
            let deploy_id = d.id.clone();
            let id = m.id.clone();
            let forwarded = forwarded.clone();
            tokio::spawn(async move {
                let mut lines = std::pin::pin!(this.runtime.follow_logs(&id, Some(0)));
                while let Some(Ok(line)) = lines.next().await {
                    this.deploy_event(&deploy_id, "log", &line.message, Some(&id))
                        .await;
                    forwarded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let mut state = self.watch_state(&m.id).await.map_err(|e| e.to_string())?;
        let finished = tokio::time::timeout(timeout, async {
            loop {
                let s = *state.borrow_and_update();
                if matches!(
                    s,
                    MachineState::Stopped | MachineState::Failed | MachineState::Destroyed
                ) {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        follower.abort();
        let _ = follower.await;
        let runtime = self.runtime.clone();
        let id = m.id.clone();
        if let Ok(Ok(lines)) =
            tokio::task::spawn_blocking(move || runtime.read_logs(&id, None)).await
        {
            let skip = forwarded.load(std::sync::atomic::Ordering::SeqCst);
            for line in lines.into_iter().skip(skip) {
                self.deploy_event(&d.id, "log", &line.message, Some(&m.id))
                    .await;
            }
        }
        if finished.is_err() {
            let _ = self
                .stop_machine(&d.app, m.id.as_str(), Some(9), Some(Duration::from_secs(1)))
                .await;
            return Err(format!(
                "the release command did not finish within {}s (release_command_timeout)",
                timeout.as_secs()
            ));
        }
        match self.last_exit_code(&m.id).await {
            Some(0) => {
                self.deploy_event(&d.id, "phase", "release command succeeded", None)
                    .await;
                Ok(())
            }
            Some(code) => Err(format!(
                "the release command exited with code {code}; its output is above"
            )),
            None => Err("the release command's machine failed to run".to_owned()),
        }
    }

    async fn last_exit_code(&self, id: &MachineId) -> Option<i64> {
        let events = self.store.list_events(id, 20).await.ok()?;
        events
            .iter()
            .filter(|e| e.kind == "exit")
            .max_by_key(|e| e.timestamp)
            .and_then(|e| {
                e.request
                    .as_ref()?
                    .get("exit_event")?
                    .get("exit_code")?
                    .as_i64()
            })
    }

    /// Started, and every check passing (a machine without checks is healthy once started).
    fn machine_healthy(&self, m: &MachineRecord) -> bool {
        if m.state != MachineState::Started {
            return false;
        }
        let statuses = self.check_statuses(&m.id);
        checks::check_specs(&m.config).iter().all(|s| {
            statuses
                .get(&s.name)
                .is_some_and(|st| st.status == "passing")
        })
    }

    /// Waits until a new machine is healthy. Fails at once when it exits (a crash on boot
    /// must not wait out the timeout), and at `timeout` with the checks' last output.
    async fn wait_healthy(
        &self,
        d: &DeployRecord,
        id: &MachineId,
        timeout: Duration,
    ) -> Result<(), Reason> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut updates = self.routing_updates();
        loop {
            let m = self
                .store
                .get_machine(id)
                .await
                .map_err(|e| e.to_string())?;
            if self.machine_healthy(&m) {
                self.deploy_event(
                    &d.id,
                    "machine",
                    &format!("machine {id} is healthy"),
                    Some(id),
                )
                .await;
                return Ok(());
            }
            if let Some(code) = self.last_exit_code(id).await {
                return Err(format!(
                    "machine {id} exited with code {code} while starting: see `hangar logs --machine {id}`"
                ));
            }
            if matches!(
                m.state,
                MachineState::Stopped
                    | MachineState::Failed
                    | MachineState::Destroyed
                    | MachineState::Destroying
            ) {
                return Err(format!("machine {id} is {} instead of started", m.state));
            }
            if tokio::time::Instant::now() >= deadline {
                let checks: Vec<String> = self
                    .check_statuses(id)
                    .values()
                    .filter(|c| c.status != "passing")
                    .map(|c| format!("{} is {}: {}", c.name, c.status, c.output))
                    .collect();
                return Err(format!(
                    "machine {id} did not pass its health checks within {}s (wait_timeout): {}",
                    timeout.as_secs(),
                    if checks.is_empty() {
                        "no check result yet".to_owned()
                    } else {
                        checks.join("; ")
                    }
                ));
            }
            // Routing inputs change with every state and check change; the timeout bounds
            // the wait for exits, which do not always change routing.
            let _ = tokio::time::timeout(Duration::from_millis(200), updates.changed()).await;
        }
    }

    /// Creates one machine of `group` at release `rel` (started, not waited for).
    async fn create_release_machine(
        self: &Arc<Self>,
        d: &DeployRecord,
        rel: &ReleaseRecord,
        resolved: &ResolvedApp,
        group: &str,
        held: bool,
    ) -> Result<MachineId, Reason> {
        let pg = resolved
            .groups
            .get(group)
            .ok_or_else(|| format!("release v{} has no process group {group}", rel.version))?;
        let mut config = pg.machine.clone();
        config.image = pinned(&rel.image, &rel.image_digest);
        add_listen_checks(&mut config);
        config
            .metadata
            .insert(RELEASE_KEY.into(), rel.version.to_string());
        config.metadata.insert(GROUP_KEY.into(), group.to_owned());
        // A blue-green machine must be held before it can pass a check: create it
        // without starting, hold it, then start it.
        let m = self
            .create_machine(
                &d.app,
                LaunchRequest {
                    config,
                    name: None,
                    skip_launch: held,
                },
            )
            .await
            .map_err(|e| format!("a machine of group {group} could not be created: {e}"))?;
        if held {
            self.hold(&m.id);
            self.start_machine(&d.app, m.id.as_str())
                .await
                .map_err(|e| format!("machine {} could not start: {e}", m.id))?;
        }
        self.deploy_event(
            &d.id,
            "machine",
            &format!(
                "machine {} ({group}) created at release v{}",
                m.id, rel.version
            ),
            Some(&m.id),
        )
        .await;
        Ok(m.id)
    }

    /// Drains, stops and destroys machines (in parallel).
    async fn remove_machines(
        self: &Arc<Self>,
        d: &DeployRecord,
        machines: Vec<MachineRecord>,
    ) -> Result<(), Reason> {
        let tasks = machines.into_iter().map(|m| {
            let this = self.clone();
            let d = d.clone();
            async move {
                if matches!(m.state, MachineState::Started | MachineState::Starting) {
                    this.deploy_event(
                        &d.id,
                        "machine",
                        &format!("draining and stopping machine {}", m.id),
                        Some(&m.id),
                    )
                    .await;
                    if let Err(e) = this.stop_machine(&d.app, m.id.as_str(), None, None).await {
                        tracing::warn!(machine_id = %m.id, error = %e, "stop before destroy failed");
                    }
                }
                this.destroy_machine(&d.app, m.id.as_str(), true)
                    .await
                    .map_err(|e| format!("machine {} could not be destroyed: {e}", m.id))?;
                this.deploy_event(
                    &d.id,
                    "machine",
                    &format!("machine {} destroyed", m.id),
                    Some(&m.id),
                )
                .await;
                Ok::<(), Reason>(())
            }
        });
        for r in futures_util::future::join_all(tasks).await {
            r?;
        }
        Ok(())
    }

    /// Creates `n` machines of a group and waits until all are healthy (failing at the
    /// first that cannot be).
    async fn add_healthy(
        self: &Arc<Self>,
        d: &DeployRecord,
        rel: &ReleaseRecord,
        resolved: &ResolvedApp,
        group: &str,
        n: u32,
        wait: bool,
    ) -> Result<Vec<MachineId>, Reason> {
        let timeout = resolved.deploy.wait_timeout.0;
        let tasks = (0..n).map(|_| {
            let this = self.clone();
            async move {
                let id = this
                    .create_release_machine(d, rel, resolved, group, false)
                    .await?;
                if wait {
                    this.wait_healthy(d, &id, timeout).await?;
                }
                Ok::<MachineId, Reason>(id)
            }
        });
        futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .collect()
    }

    /// Brings the app's managed machines to release `rel` with the deploy's counts.
    /// Idempotent: computed from the machines in the store, so it also resumes.
    async fn converge(
        self: &Arc<Self>,
        d: &DeployRecord,
        rel: &ReleaseRecord,
        strategy: Strategy,
        rolling_back: bool,
    ) -> Result<(), Reason> {
        let resolved: ResolvedApp =
            serde_json::from_value(rel.resolved.clone()).map_err(|e| e.to_string())?;
        let timeout = resolved.deploy.wait_timeout.0;
        let machines = self
            .managed_machines(&d.app)
            .await
            .map_err(|e| e.to_string())?;
        // Machines of this release that are not running (left by a crash, or stopped)
        // are replaced rather than waited for.
        let (dead, machines): (Vec<_>, Vec<_>) = machines.into_iter().partition(|m| {
            machine_release(&m.config) == Some(rel.version)
                && !matches!(m.state, MachineState::Started | MachineState::Starting)
        });
        self.remove_machines(d, dead).await?;

        let mut groups: BTreeSet<String> = d.counts.keys().cloned().collect();
        groups.extend(machines.iter().map(|m| machine_group(&m.config)));
        let group_of = |g: &str| -> (Vec<MachineRecord>, Vec<MachineRecord>) {
            machines
                .iter()
                .filter(|m| machine_group(&m.config) == g)
                .cloned()
                .partition(|m| machine_release(&m.config) == Some(rel.version))
        };

        // Existing machines of the release (a resumed deploy) must be healthy first.
        for m in machines
            .iter()
            .filter(|m| machine_release(&m.config) == Some(rel.version))
        {
            if strategy != Strategy::Immediate && !self.machine_healthy(m) {
                self.wait_healthy(d, &m.id, timeout).await?;
            }
        }

        match strategy {
            Strategy::Immediate => {
                for g in &groups {
                    let (new, old) = group_of(g);
                    let target = d.counts.get(g).copied().unwrap_or(0);
                    let missing = target.saturating_sub(u32::try_from(new.len()).unwrap_or(0));
                    self.add_healthy(d, rel, &resolved, g, missing, false)
                        .await?;
                    self.remove_machines(d, old).await?;
                    self.remove_extra(d, new, target).await?;
                }
            }
            Strategy::Bluegreen => {
                let mut green = Vec::new();
                for g in &groups {
                    let (new, _) = group_of(g);
                    let target = d.counts.get(g).copied().unwrap_or(0);
                    for m in &new {
                        self.hold(&m.id);
                        green.push(m.id.clone());
                    }
                    let missing = target.saturating_sub(u32::try_from(new.len()).unwrap_or(0));
                    let created = futures_util::future::join_all(
                        (0..missing)
                            .map(|_| self.create_release_machine(d, rel, &resolved, g, true)),
                    )
                    .await;
                    for c in created {
                        green.push(c?);
                    }
                }
                let waits = green.iter().map(|id| self.wait_healthy(d, id, timeout));
                let results = futures_util::future::join_all(waits).await;
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    // Green machines stay held until the rollback removes them.
                    return Err(e);
                }
                self.deploy_event(
                    &d.id,
                    "phase",
                    &format!(
                        "all {} new machine(s) are healthy: switching traffic",
                        green.len()
                    ),
                    None,
                )
                .await;
                self.release_holds(&green);
                for g in &groups {
                    let (new, old) = group_of(g);
                    self.remove_machines(d, old).await?;
                    let target = d.counts.get(g).copied().unwrap_or(0);
                    self.remove_extra(d, new, target).await?;
                }
            }
            Strategy::Rolling | Strategy::Canary => {
                let mut canary_done = strategy == Strategy::Rolling;
                for g in &groups {
                    let (mut new, mut old) = group_of(g);
                    let target = d.counts.get(g).copied().unwrap_or(0);
                    let batch = batch_size(resolved.deploy.max_unavailable, target);
                    // Bounded: every round creates or removes at least one machine.
                    for _round in 0..=(2 * (target as usize + old.len() + new.len())) {
                        let have = u32::try_from(new.len()).unwrap_or(u32::MAX);
                        let missing = target.saturating_sub(have);
                        if missing == 0 && old.is_empty() {
                            break;
                        }
                        let step = if canary_done { batch } else { 1 };
                        let create = missing.min(step);
                        if create > 0 {
                            let ids = self.add_healthy(d, rel, &resolved, g, create, true).await?;
                            if !canary_done {
                                self.deploy_event(
                                    &d.id,
                                    "phase",
                                    "the canary machine is healthy: continuing rolling",
                                    None,
                                )
                                .await;
                                canary_done = true;
                            }
                            for id in ids {
                                new.push(
                                    self.store
                                        .get_machine(&id)
                                        .await
                                        .map_err(|e| e.to_string())?,
                                );
                            }
                        }
                        // Surge: old machines go only after their replacements are healthy,
                        // one for each new machine; when the group is complete, a batch at a time.
                        let remove = if create > 0 { create } else { step } as usize;
                        let gone: Vec<MachineRecord> = old.drain(..remove.min(old.len())).collect();
                        self.remove_machines(d, gone).await?;
                    }
                    self.remove_extra(d, new, target).await?;
                }
            }
        }
        if rolling_back {
            self.deploy_event(
                &d.id,
                "phase",
                &format!("back on release v{}", rel.version),
                None,
            )
            .await;
        }
        Ok(())
    }

    /// Removes machines beyond `target` (the newest first).
    async fn remove_extra(
        self: &Arc<Self>,
        d: &DeployRecord,
        mut machines: Vec<MachineRecord>,
        target: u32,
    ) -> Result<(), Reason> {
        let target = target as usize;
        if machines.len() <= target {
            return Ok(());
        }
        machines.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        let extra = machines.split_off(target);
        self.remove_machines(d, extra).await
    }

    /// An app's status.
    pub async fn app_status(&self, app: &AppRecord) -> ApiResult<AppStatus> {
        let release = self.store.current_release(&app.name).await?;
        let deploy = self
            .store
            .list_deploys(&app.name, 1)
            .await?
            .into_iter()
            .find(DeployRecord::is_active);
        let machines = self
            .store
            .list_machines(&app.name, false)
            .await?
            .into_iter()
            .map(|m| {
                let statuses = self.check_statuses(&m.id);
                let passing = statuses.values().filter(|c| c.status == "passing").count();
                StatusMachine {
                    id: m.id.to_string(),
                    process_group: machine_group(&m.config),
                    state: m.state.to_string(),
                    release: machine_release(&m.config),
                    checks: format!("{passing}/{}", statuses.len()),
                    private_ip: m.ipv6.clone().unwrap_or_default(),
                    created_at: m.created_at.clone(),
                }
            })
            .collect();
        Ok(AppStatus {
            app: app.name.clone(),
            org: app.org.slug.clone(),
            hostname: format!("{}.{}", app.name, self.opts.domain),
            url: match self.opts.http_port {
                80 => format!("http://{}.{}/", app.name, self.opts.domain),
                port => format!("http://{}.{}:{port}/", app.name, self.opts.domain),
            },
            release,
            deploy,
            machines,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes() {
        assert_eq!(batch_size(0.33, 1), 1);
        assert_eq!(batch_size(0.33, 3), 1);
        assert_eq!(batch_size(0.33, 4), 2);
        assert_eq!(batch_size(0.5, 10), 5);
        assert_eq!(batch_size(2.0, 10), 2);
        assert_eq!(batch_size(0.0, 10), 1);
    }

    #[test]
    fn services_without_checks_get_a_listen_check() {
        let mut config = MachineConfig::default();
        config.services.push(hangar_core::machine::MachineService {
            internal_port: 8080,
            ..Default::default()
        });
        let mut checked = hangar_core::machine::MachineService::default();
        checked.checks.push(MachineServiceCheck {
            kind: Some("http".into()),
            path: Some("/health".into()),
            ..MachineServiceCheck::default()
        });
        config.services.push(checked);
        add_listen_checks(&mut config);
        assert_eq!(config.services[0].checks[0].kind.as_deref(), Some("tcp"));
        assert_eq!(
            config.services[1].checks.len(),
            1,
            "explicit checks are kept as they are"
        );
    }

    #[test]
    fn images_are_pinned_to_their_digest() {
        assert_eq!(pinned("web:v1", "sha256:ab"), "web:v1@sha256:ab");
        assert_eq!(pinned("web@sha256:ab", "sha256:ab"), "web@sha256:ab");
        assert_eq!(pinned("sha256:ab", "sha256:ab"), "sha256:ab");
    }
}
