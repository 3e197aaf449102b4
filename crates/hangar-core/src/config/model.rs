//! The app config (`hangar.toml` / `fly.toml`) after legacy forms are normalized.
//!
//! Key names and shapes are fly.toml's canonical ones, so serializing this model
//! (to TOML, JSON or YAML) gives a file that Hangar and flyctl both read back to
//! the same model. Units are fixed: memory in MB, volume sizes in GB, durations
//! as Go duration strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::machine::GoDuration;

/// The whole app config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppConfig {
    /// App name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Region of new machines and volumes; also `PRIMARY_REGION` in their env.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_region: Option<String>,
    /// Signal sent to stop a machine (default `SIGINT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_signal: Option<String>,
    /// Grace period before SIGKILL (default 5 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_timeout: Option<GoDuration>,
    /// Swap size (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<u64>,
    /// Command of `hangar ssh console`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_command: Option<String>,
    /// Dedicated-host pool (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_dedication_id: Option<String>,
    /// Base machine config for multi-container machines (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<String>,
    /// Container of `machine_config` that runs the image (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// How the image is built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Deploy strategy and release command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// Environment of every machine.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Process groups: name to command ("" keeps the image's command).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub processes: BTreeMap<String, String>,
    /// The HTTP service shorthand (ports 80 and 443).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_service: Option<HttpService>,
    /// Services.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Machine-level checks, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, TopLevelCheck>,
    /// Machine sizes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vm: Vec<Compute>,
    /// Volumes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Static files served by the proxy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statics: Vec<StaticFiles>,
    /// Files written into machines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    /// Prometheus scrape targets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    /// Restart policies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<Restart>,
    /// Deploy-time test machines (not supported yet), kept as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub machine_checks: Vec<Value>,
    /// Experimental settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental: Option<Experimental>,
}

/// `[build]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Build {
    /// A prebuilt image to deploy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Dockerfile path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// `.dockerignore` path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignorefile: Option<String>,
    /// Multi-stage target.
    #[serde(rename = "build-target", skip_serializing_if = "Option::is_none")]
    pub build_target: Option<String>,
    /// Build arguments.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Buildpacks builder (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// Buildpacks (not supported yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub buildpacks: Vec<String>,
    /// Legacy builtin builder (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// Settings of the builtin builder (not supported yet).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, Value>,
    /// Compose file for multi-container builds (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<Value>,
    /// `gzip` or `zstd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Compression level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i64>,
}

/// `[deploy]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deploy {
    /// `rolling`, `immediate`, `canary` or `bluegreen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Machines replaced at once: a count (>= 1) or a fraction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<f64>,
    /// How long to wait for each machine to be started and healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<GoDuration>,
    /// Run once per deploy before machines are updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command: Option<String>,
    /// Time limit of the release command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command_timeout: Option<GoDuration>,
    /// Size of the release command's machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command_vm: Option<Compute>,
    /// Seeding command of `fly launch` (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_command: Option<String>,
}

/// What to do with idle machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoStop {
    /// Keep them running.
    Off,
    /// Stop them.
    Stop,
    /// Suspend them.
    Suspend,
}

/// Load-balancing limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Concurrency {
    /// `connections` or `requests`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Soft limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
    /// Hard limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
}

/// `[http_service]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpService {
    /// Port the app listens on (default 8080).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_port: Option<u16>,
    /// Redirect port 80 to HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_https: Option<bool>,
    /// Idle machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_machines: Option<AutoStop>,
    /// Start machines on request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_start_machines: Option<bool>,
    /// Machines kept running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    /// Groups serving it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// HTTP checks gating traffic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ServiceCheck>,
    /// Test machines (not supported yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub machine_checks: Vec<Value>,
    /// TLS options of port 443 (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<Value>,
    /// HTTP options (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_options: Option<Value>,
}

/// `[[services]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    /// Port inside the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_port: Option<u16>,
    /// `tcp` or `udp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Groups serving it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Idle machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_machines: Option<AutoStop>,
    /// Start machines on request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_start_machines: Option<bool>,
    /// Machines kept running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    /// Limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Public ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// TCP checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_checks: Vec<ServiceCheck>,
    /// HTTP checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_checks: Vec<ServiceCheck>,
    /// Test machines (not supported yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub machine_checks: Vec<Value>,
}

/// `[[services.ports]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Port {
    /// Public port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// First port of a range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_port: Option<u16>,
    /// Last port of a range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// `http`, `tls`, `pg_tls`, `proxy_proto`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<String>,
    /// Redirect to HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_https: Option<bool>,
    /// TLS options (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<Value>,
    /// HTTP options (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_options: Option<Value>,
    /// PROXY protocol options (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_proto_options: Option<Value>,
}

/// A check under a service (`tcp_checks`, `http_checks`, `http_service.checks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceCheck {
    /// Time between probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Time a probe may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Failures right after start that do not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<GoDuration>,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http` or `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Skip certificate verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    /// SNI name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Request headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// `[checks.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopLevelCheck {
    /// `http` or `tcp` (`script` is Fly v1's and ignored).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Port to probe (default: the http_service's internal port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The probe's settings.
    #[serde(flatten)]
    pub check: ServiceCheck,
    /// Groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[[vm]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Compute {
    /// Preset such as `shared-cpu-1x`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Memory in MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `shared` or `performance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_kind: Option<String>,
    /// Memory in MB (the guest field; `memory` wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// GPUs (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// GPU model (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    /// Kernel arguments (not supported yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// Dedicated-host pool (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_dedication_id: Option<String>,
    /// Rootfs persistence (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_rootfs: Option<String>,
    /// Groups it applies to (all when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[[mounts]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    /// Volume name.
    pub source: String,
    /// Mount point.
    pub destination: String,
    /// Groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Size in GB of volumes created by deploys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_size: Option<u64>,
    /// Days snapshots are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_retention: Option<u32>,
    /// Daily snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_snapshots: Option<bool>,
    /// Usage percent that triggers extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_extend_size_threshold: Option<u32>,
    /// GB added per extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_extend_size_increment: Option<u64>,
    /// Maximum size in GB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_extend_size_limit: Option<u64>,
}

/// `[[statics]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StaticFiles {
    /// Directory in the image.
    pub guest_path: String,
    /// URL prefix.
    pub url_prefix: String,
    /// Tigris bucket (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tigris_bucket: Option<String>,
    /// Index document (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_document: Option<String>,
    /// Groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[[files]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileSpec {
    /// Destination in the machine.
    pub guest_path: String,
    /// Base64 contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    /// Local file read at deploy time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    /// Secret holding base64 contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[[metrics]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Port.
    pub port: u16,
    /// Path.
    pub path: String,
    /// Scrape over HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https: Option<bool>,
    /// Groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[[restart]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Restart {
    /// `always`, `never` or `on-failure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Retries for `on-failure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[experimental]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Experimental {
    /// Replaces the image's cmd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's entrypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Not acted on by machine deploys (as on Fly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// Not supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_consul: Option<bool>,
    /// Not supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_etcd: Option<bool>,
    /// Not supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy_load_images: Option<bool>,
    /// Not supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached: Option<Value>,
    /// Not supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<String>,
}
