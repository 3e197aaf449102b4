//! Machines as the Fly Machines API describes them: config, state, events.
//!
//! Field names and JSON shapes follow Fly's `MachineConfig` so that Fly clients
//! and `fly.toml` resolution produce and read the same documents. Fields the
//! runtime does not act on yet are kept (typed where the config resolver needs
//! them, otherwise in `extra`) and returned unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::ids::{InstanceId, MachineId};
use crate::names::{NameError, validate_env_name};

fn is_false(b: &bool) -> bool {
    !*b
}

/// The whole configuration of one machine (Fly: `MachineConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Image reference: a local tag, `name@sha256:...`, or a registry reference.
    #[serde(default)]
    pub image: String,
    /// Environment variables, added to (and overriding) the image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Overrides of the image's entrypoint and command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    /// Ports the edge proxy routes to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<MachineService>,
    /// Machine-level health checks, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, MachineCheck>,
    /// Volumes mounted into the machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MachineMount>,
    /// What happens when the main process exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartConfig>,
    /// Destroy the machine when its main process exits.
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_destroy: bool,
    /// How the machine is asked to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    /// Free-form labels; platform keys are prefixed `fly_`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Prometheus scrape target inside the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MachineMetrics>,
    /// Static files served by the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statics: Vec<Static>,
    /// Files written into the machine at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// `hourly`, `daily`, `weekly` or `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Every other field of Fly's `MachineConfig` (dns, processes, standbys, rootfs, ...):
    /// stored and returned, not acted on yet.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Overrides of the image's `ENTRYPOINT` / `CMD` (Fly: `MachineInit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    /// Replaces both entrypoint and cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Allocate a terminal (stored; machines run without one).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Swap size (stored, not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<u64>,
    /// Kernel arguments (only meaningful for VM drivers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
}

/// CPU and memory of a machine (Fly: `MachineGuest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guest {
    /// `shared` or `performance`.
    #[serde(default = "default_cpu_kind")]
    pub cpu_kind: String,
    /// Number of CPUs; enforced as a CFS quota of `cpus` full cores.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Memory limit in MiB; enforced as the cgroup memory limit.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Stored, not used on runc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Stored, not used on runc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    /// Stored, not used on runc.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// Other fields (host_dedication_id, max_memory_mb, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_cpu_kind() -> String {
    "shared".to_owned()
}
fn default_cpus() -> u32 {
    1
}
fn default_memory_mb() -> u64 {
    256
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            cpu_kind: default_cpu_kind(),
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
            gpus: None,
            gpu_kind: None,
            kernel_args: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

impl Guest {
    /// Fly's preset sizes: `shared-cpu-Nx` (256 MiB per CPU) and `performance-Nx` (2048 MiB per CPU).
    pub fn from_preset(name: &str) -> Option<Guest> {
        let (kind, per_cpu, rest) = if let Some(rest) = name.strip_prefix("shared-cpu-") {
            ("shared", 256, rest)
        } else if let Some(rest) = name.strip_prefix("performance-") {
            ("performance", 2048, rest)
        } else {
            return None;
        };
        let cpus: u32 = rest.strip_suffix('x')?.parse().ok()?;
        let allowed: &[u32] = if kind == "shared" {
            &[1, 2, 4, 6, 8]
        } else {
            &[1, 2, 4, 6, 8, 10, 12, 14, 16]
        };
        if !allowed.contains(&cpus) {
            return None;
        }
        Some(Guest {
            cpu_kind: kind.to_owned(),
            cpus,
            memory_mb: u64::from(cpus) * per_cpu,
            ..Guest::default()
        })
    }
}

/// Restart policy of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart, whatever the exit code.
    Always,
    /// Restart when the exit code is not 0 (Fly's default).
    #[default]
    OnFailure,
}

/// Restart configuration (Fly: `MachineRestart`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartConfig {
    /// The policy; `on-failure` when absent.
    #[serde(default)]
    pub policy: RestartPolicy,
    /// For `on-failure`: how many restarts before the machine is `failed` (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Stored, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_bid_price: Option<Value>,
}

impl Eq for MachineConfig {}

/// How a machine is stopped: a signal, then SIGKILL after `timeout`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopConfig {
    /// Signal name (`SIGINT`, `SIGTERM`, ...); default `SIGINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Grace period before SIGKILL; default 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

/// Default grace period before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest grace period a stop may wait before SIGKILL (Fly's `kill_timeout` limit).
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// Default max restarts for `on-failure`.
pub const DEFAULT_MAX_RETRIES: u32 = 10;

impl StopConfig {
    /// The stop signal's number, `SIGINT` when unset.
    pub fn signal_number(&self) -> Result<i32, ConfigError> {
        match &self.signal {
            None => Ok(libc_signal("SIGINT").unwrap_or(2)),
            Some(name) => parse_signal(name),
        }
    }

    /// The grace period before SIGKILL.
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_STOP_TIMEOUT, |d| d.0)
    }
}

/// Signals a machine may be sent, by name, with Linux numbers.
pub const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
];

fn libc_signal(name: &str) -> Option<i32> {
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Parses `SIGTERM`, `TERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, ConfigError> {
    let up = s.trim().to_ascii_uppercase();
    if let Ok(n) = up.parse::<i32>()
        && SIGNALS.iter().any(|(_, v)| *v == n)
    {
        return Ok(n);
    }
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    libc_signal(&full).ok_or_else(|| {
        ConfigError::new(
            "signal",
            format!("unknown signal {s:?}; use e.g. SIGINT, SIGTERM, SIGKILL"),
        )
    })
}

/// A duration as Fly's API writes it: a Go duration string (`"10s"`, `"1m30s"`, `"500ms"`),
/// or a number of nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// From whole seconds.
    pub fn from_secs(s: u64) -> Self {
        GoDuration(Duration::from_secs(s))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let ms = d.as_millis();
        if !d.subsec_nanos().is_multiple_of(1_000_000) {
            return write!(f, "{}ns", d.as_nanos());
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = d.as_secs();
        let h = secs / 3600;
        secs %= 3600;
        let m = secs / 60;
        secs %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if secs > 0 {
            write!(f, "{secs}s")?;
        }
        Ok(())
    }
}

impl FromStr for GoDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("invalid duration {s:?}: use e.g. \"10s\", \"1m30s\", \"500ms\"");
        if s.is_empty() {
            return Err(bad());
        }
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        let mut total: f64 = 0.0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if num_len == 0 {
                return Err(bad());
            }
            let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = match unit {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            total += n * scale;
        }
        if !total.is_finite() || total > 1e12 {
            return Err(bad());
        }
        Ok(GoDuration(Duration::from_secs_f64(total)))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Str(String),
            Nanos(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Str(s) => s.parse().map_err(de::Error::custom),
            Raw::Nanos(n) => Ok(GoDuration(Duration::from_nanos(n))),
        }
    }
}

/// A port a machine exposes through the proxy (Fly: `MachineService`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineService {
    /// `tcp` or `udp`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Port inside the machine.
    pub internal_port: u16,
    /// Stop idle machines: `off`, `stop` or `suspend` (bools accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Autostop>,
    /// Start machines on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// Machines kept running when autostop is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    /// Public ports and their handlers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<MachinePort>,
    /// Health checks of this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<MachineServiceCheck>,
    /// Load-balancing limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Other fields (force_instance_key, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_protocol() -> String {
    "tcp".to_owned()
}

/// Fly's autostop setting: responses write `off`/`stop` as false/true and `suspend` as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autostop {
    /// Never stop idle machines.
    Off,
    /// Stop idle machines.
    Stop,
    /// Suspend idle machines.
    Suspend,
}

impl Serialize for Autostop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Autostop::Off => s.serialize_bool(false),
            Autostop::Stop => s.serialize_bool(true),
            Autostop::Suspend => s.serialize_str("suspend"),
        }
    }
}

impl<'de> Deserialize<'de> for Autostop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(Autostop::Off),
            Raw::Bool(true) => Ok(Autostop::Stop),
            Raw::Str(s) => match s.as_str() {
                "off" => Ok(Autostop::Off),
                "stop" => Ok(Autostop::Stop),
                "suspend" => Ok(Autostop::Suspend),
                other => Err(de::Error::custom(format!(
                    "invalid autostop {other:?}: use \"off\", \"stop\" or \"suspend\""
                ))),
            },
        }
    }
}

/// A public port of a service (Fly: `MachinePort`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachinePort {
    /// The port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// First port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_port: Option<u16>,
    /// Last port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// `http`, `tls`, `proxy_proto`, `pg_tls`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<String>,
    /// Redirect plain HTTP to HTTPS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_https: bool,
    /// TLS options (stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<Value>,
    /// HTTP options (stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_options: Option<Value>,
    /// PROXY protocol options (stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_proto_options: Option<Value>,
}

/// Load-balancing limits of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// `connections` or `requests`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Above this the machine is used only when all others are too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
    /// Never more than this at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
}

/// A header sent by an HTTP check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckHeader {
    /// Header name.
    pub name: String,
    /// Its values.
    #[serde(default)]
    pub values: Vec<String>,
}

/// A health check attached to a service (Fly: `MachineServiceCheck`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineServiceCheck {
    /// `tcp` or `http`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Port to probe; the service's internal port when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Time a probe may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Failures during this time after start do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<GoDuration>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Do not verify the certificate for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    /// SNI for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<CheckHeader>,
}

/// A machine-level check (Fly: `MachineCheck`): a service check plus its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineCheck {
    /// The probe.
    #[serde(flatten)]
    pub check: MachineServiceCheck,
    /// `informational` or `readiness`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A volume mount (Fly: `MachineMount`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMount {
    /// Volume id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Mount point inside the machine.
    pub path: String,
    /// Volume name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size for a volume created with the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb: Option<u64>,
    /// Encryption (stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// Auto-extend threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_threshold_percent: Option<u32>,
    /// Auto-extend increment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_size_gb: Option<u64>,
    /// Auto-extend ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb_limit: Option<u64>,
}

/// Prometheus scrape target (Fly: `MachineMetrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMetrics {
    /// Port.
    pub port: u16,
    /// Path.
    pub path: String,
    /// Scrape over HTTPS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub https: bool,
}

/// A static-files mapping (Fly: `Static`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Static {
    /// Directory inside the image.
    pub guest_path: String,
    /// URL prefix.
    pub url_prefix: String,
    /// Tigris bucket (stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tigris_bucket: Option<String>,
    /// Index document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_document: Option<String>,
}

/// A file written into the machine (Fly: `File`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// Destination path.
    pub guest_path: String,
    /// Base64 contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    /// Take the contents from this secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Write the image config here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<String>,
    /// File mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// A config value that cannot work, with the field it is about.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid config.{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `guest.memory_mb`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    /// A new error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<NameError> for ConfigError {
    fn from(e: NameError) -> Self {
        ConfigError::new("env", e.to_string())
    }
}

/// Environment variable names the platform sets itself; users may not.
pub const RESERVED_ENV_PREFIXES: &[&str] = &["FLY_", "HANGAR_"];

impl MachineConfig {
    /// The guest, with Fly's defaults when unset.
    pub fn guest_or_default(&self) -> Guest {
        self.guest.clone().unwrap_or_default()
    }

    /// The restart policy and retry limit, with Fly's defaults.
    pub fn restart_or_default(&self) -> (RestartPolicy, u32) {
        let r = self.restart.clone().unwrap_or_default();
        (r.policy, r.max_retries.unwrap_or(DEFAULT_MAX_RETRIES))
    }

    /// The stop config, with defaults.
    pub fn stop_or_default(&self) -> StopConfig {
        self.stop_config.clone().unwrap_or_default()
    }

    /// Checks what can be checked without the host: names, sizes, commands.
    /// `host_memory_mb` bounds `guest.memory_mb` when given.
    pub fn validate(&self, host_memory_mb: Option<u64>) -> Result<(), ConfigError> {
        if self.image.trim().is_empty() {
            return Err(ConfigError::new("image", "an image is required"));
        }
        for key in self.env.keys() {
            validate_env_name(key)?;
        }
        if let Some(g) = &self.guest {
            if g.cpus == 0 {
                return Err(ConfigError::new("guest.cpus", "must be at least 1"));
            }
            if g.memory_mb == 0 {
                return Err(ConfigError::new(
                    "guest.memory_mb",
                    "must be at least 1 MiB (Fly sizes use multiples of 256)",
                ));
            }
            if let Some(host) = host_memory_mb
                && g.memory_mb > host
            {
                return Err(ConfigError::new(
                    "guest.memory_mb",
                    format!("{} MiB is more than this host's {host} MiB", g.memory_mb),
                ));
            }
            if !matches!(g.cpu_kind.as_str(), "shared" | "performance") {
                return Err(ConfigError::new(
                    "guest.cpu_kind",
                    format!("{:?} is not \"shared\" or \"performance\"", g.cpu_kind),
                ));
            }
        }
        if let Some(init) = &self.init {
            for (name, argv) in [
                ("init.exec", &init.exec),
                ("init.entrypoint", &init.entrypoint),
                ("init.cmd", &init.cmd),
            ] {
                if let Some(argv) = argv {
                    if name == "init.exec" && argv.is_empty() {
                        return Err(ConfigError::new(
                            name,
                            "is empty: give a command, or leave it out to use the image's",
                        ));
                    }
                    if argv.first().is_some_and(|a| a.trim().is_empty()) {
                        return Err(ConfigError::new(name, "the command is empty"));
                    }
                }
            }
        }
        if let Some(stop) = &self.stop_config {
            stop.signal_number()
                .map_err(|e| ConfigError::new("stop_config.signal", e.message))?;
            if stop.timeout() > MAX_STOP_TIMEOUT {
                return Err(ConfigError::new(
                    "stop_config.timeout",
                    format!(
                        "{} is longer than the limit of 5m: a stop may not wait longer than that before SIGKILL",
                        GoDuration(stop.timeout())
                    ),
                ));
            }
        }
        if let Some(schedule) = &self.schedule
            && !matches!(schedule.as_str(), "hourly" | "daily" | "weekly" | "monthly")
        {
            return Err(ConfigError::new(
                "schedule",
                format!("{schedule:?} is not hourly, daily, weekly or monthly"),
            ));
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.internal_port == 0 {
                return Err(ConfigError::new(
                    format!("services[{i}].internal_port"),
                    "must be 1-65535",
                ));
            }
            if !matches!(s.protocol.as_str(), "tcp" | "udp") {
                return Err(ConfigError::new(
                    format!("services[{i}].protocol"),
                    "must be \"tcp\" or \"udp\"",
                ));
            }
        }
        Ok(())
    }
}

/// The states of Fly's machine state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Created, never started (or `skip_launch`).
    Created,
    /// Being started.
    Starting,
    /// Running.
    Started,
    /// Being stopped.
    Stopping,
    /// Stopped; the rootfs resets on the next start.
    Stopped,
    /// Suspended (not on runc yet).
    Suspended,
    /// Gave up restarting, or could not start.
    Failed,
    /// Being replaced by an update.
    Replacing,
    /// Being destroyed.
    Destroying,
    /// Gone.
    Destroyed,
}

impl MachineState {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspended => "suspended",
            MachineState::Failed => "failed",
            MachineState::Replacing => "replacing",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
        }
    }

    /// All states.
    pub const ALL: [MachineState; 10] = [
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Suspended,
        MachineState::Failed,
        MachineState::Replacing,
        MachineState::Destroying,
        MachineState::Destroyed,
    ];
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown machine state {s:?}"))
    }
}

/// How a machine's main process ended (Fly: `exit_event`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// Exit code, or 128+signal when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed by the kernel's OOM killer.
    pub oom_killed: bool,
    /// The stop was asked for (stop, restart, destroy).
    pub requested_stop: bool,
    /// The restart policy will start it again.
    pub restarting: bool,
    /// RFC 3339 time of exit.
    pub exited_at: String,
}

/// One entry of a machine's history (Fly: `MachineEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineEvent {
    /// Unique, time-ordered.
    pub id: String,
    /// `launch`, `start`, `stop`, `exit`, `restart`, `update`, `destroy`, `failed`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// State reached, or detail.
    pub status: String,
    /// `user` or `hangar`.
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// Details (exit_event, restart_count, error...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
}

/// The status of one health check of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Check name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Last probe output.
    pub output: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// Where the image came from (Fly: `image_ref`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Registry host, empty for local images.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Manifest digest.
    pub digest: String,
    /// Image labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A machine as the API returns it (Fly: `Machine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Id.
    pub id: MachineId,
    /// Name, unique in the app.
    pub name: String,
    /// State.
    pub state: MachineState,
    /// Region of the host.
    pub region: String,
    /// Current config version.
    pub instance_id: InstanceId,
    /// Private IPv6 address (6PN).
    pub private_ip: String,
    /// Private IPv4 address on the host bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ipv4: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The config.
    pub config: MachineConfig,
    /// The resolved image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<ImageRef>,
    /// Recent events, newest first.
    #[serde(default)]
    pub events: Vec<MachineEvent>,
    /// Check statuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
    /// `ok` when the host is reachable.
    pub host_status: String,
    /// App the machine belongs to (Hangar extension).
    #[serde(default)]
    pub app_name: String,
}

impl Eq for Guest {}
impl Eq for MachineService {}
impl Eq for MachinePort {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_and_print() {
        for (input, secs_f) in [
            ("10s", 10.0),
            ("1m30s", 90.0),
            ("500ms", 0.5),
            ("2h", 7200.0),
            ("0", 0.0),
            ("1.5s", 1.5),
        ] {
            let d: GoDuration = input.parse().unwrap();
            assert_eq!(d.0.as_secs_f64(), secs_f, "{input}");
        }
        for bad in ["", "s", "10", "10x", "-1s", "1s2"] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad}");
        }
        assert_eq!(GoDuration::from_secs(90).to_string(), "1m30s");
        assert_eq!(
            GoDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        let d: GoDuration = serde_json::from_str("5000000000").unwrap();
        assert_eq!(d, GoDuration::from_secs(5));
    }

    #[test]
    fn autostop_reads_strings_and_bools_and_writes_fly_form() {
        for (json, want) in [
            ("false", Autostop::Off),
            ("true", Autostop::Stop),
            ("\"off\"", Autostop::Off),
            ("\"stop\"", Autostop::Stop),
            ("\"suspend\"", Autostop::Suspend),
        ] {
            assert_eq!(serde_json::from_str::<Autostop>(json).unwrap(), want);
        }
        assert!(serde_json::from_str::<Autostop>("\"sometimes\"").is_err());
        assert_eq!(serde_json::to_string(&Autostop::Stop).unwrap(), "true");
        assert_eq!(
            serde_json::to_string(&Autostop::Suspend).unwrap(),
            "\"suspend\""
        );
    }

    #[test]
    fn config_round_trips_and_keeps_unknown_fields() {
        let json = serde_json::json!({
            "image": "busybox",
            "env": {"A": "1"},
            "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512, "host_dedication_id": "x"},
            "restart": {"policy": "on-failure", "max_retries": 3},
            "stop_config": {"signal": "SIGTERM", "timeout": "10s"},
            "services": [{"protocol": "tcp", "internal_port": 8080, "autostop": "suspend",
                          "ports": [{"port": 80, "handlers": ["http"]}],
                          "checks": [{"type": "http", "interval": "15s", "path": "/health"}],
                          "concurrency": {"type": "requests", "soft_limit": 20, "hard_limit": 25}}],
            "checks": {"alive": {"type": "tcp", "port": 8080, "kind": "readiness"}},
            "dns": {"skip_registration": true},
            "processes": [{"cmd": ["a"]}]
        });
        let cfg: MachineConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(cfg.extra.len(), 2);
        assert_eq!(cfg.stop_or_default().timeout(), Duration::from_secs(10));
        assert_eq!(serde_json::to_value(&cfg).unwrap(), json);
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = MachineConfig {
            image: "x".into(),
            ..Default::default()
        };
        assert!(cfg.validate(Some(1024)).is_ok());
        cfg.guest = Some(Guest {
            memory_mb: 0,
            ..Guest::default()
        });
        assert_eq!(cfg.validate(None).unwrap_err().field, "guest.memory_mb");
        cfg.guest = Some(Guest {
            memory_mb: 4096,
            ..Guest::default()
        });
        assert!(
            cfg.validate(Some(1024))
                .unwrap_err()
                .message
                .contains("host")
        );
        cfg.guest = None;
        cfg.env.insert("1BAD".into(), "v".into());
        assert_eq!(cfg.validate(None).unwrap_err().field, "env");
        cfg.env.clear();
        cfg.init = Some(Init {
            exec: Some(vec![]),
            ..Init::default()
        });
        assert_eq!(cfg.validate(None).unwrap_err().field, "init.exec");
        cfg.init = None;
        cfg.stop_config = Some(StopConfig {
            signal: None,
            timeout: Some(GoDuration::from_secs(3600)),
        });
        assert_eq!(cfg.validate(None).unwrap_err().field, "stop_config.timeout");
        cfg.stop_config = Some(StopConfig {
            signal: None,
            timeout: Some(GoDuration::from_secs(300)),
        });
        assert!(cfg.validate(None).is_ok());
        cfg.stop_config = None;
        cfg.init = Some(Init {
            cmd: Some(vec![String::new()]),
            ..Init::default()
        });
        assert_eq!(cfg.validate(None).unwrap_err().field, "init.cmd");
    }

    #[test]
    fn presets() {
        assert_eq!(Guest::from_preset("shared-cpu-2x").unwrap().memory_mb, 512);
        assert_eq!(
            Guest::from_preset("performance-4x").unwrap().memory_mb,
            8192
        );
        assert!(Guest::from_preset("shared-cpu-3x").is_none());
        assert!(Guest::from_preset("huge").is_none());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("term").unwrap(), 15);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGFOO").is_err());
    }
}
