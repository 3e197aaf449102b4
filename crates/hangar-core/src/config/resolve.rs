//! Resolution: the app config becomes one machine config per process group, plus
//! the app-level facts the deploy engine needs. Pure: no I/O, no clock, no host.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{AppConfig, AutoStop, Build, Compute, ServiceCheck};
use crate::machine::{
    Autostop, CheckHeader, Concurrency, File, GoDuration, Guest, Init, MachineCheck, MachineConfig,
    MachineMetrics, MachineMount, MachinePort, MachineService, MachineServiceCheck, RestartConfig,
    RestartPolicy, Static, StopConfig,
};

/// Why a config could not be resolved. `parse` reports all of these as errors
/// first, so they only happen for models built or edited in code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// A command that cannot be split into arguments.
    #[error("cannot split {what} into arguments: {message}; check the quotes")]
    Command {
        /// Which command.
        what: String,
        /// The splitter's complaint.
        message: String,
    },
    /// A top-level check without a port, and no http_service to take it from.
    #[error(
        "check {name:?} has no port and there is no [http_service] internal_port; add port = ..."
    )]
    CheckPort {
        /// The check's name.
        name: String,
    },
}

/// Deploy strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Replace machines a few at a time (default).
    #[default]
    Rolling,
    /// Replace all machines at once, without waiting for health.
    Immediate,
    /// One new machine first, then rolling.
    Canary,
    /// A full new set, traffic switched when all are healthy.
    Bluegreen,
}

/// How a deploy proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// Strategy.
    pub strategy: Strategy,
    /// Machines replaced at once: a count when >= 1, else a fraction per group.
    pub max_unavailable: f64,
    /// Wait for each machine to be started and healthy.
    pub wait_timeout: GoDuration,
    /// Release command, split into arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_command: Option<Vec<String>>,
    /// Time limit of the release command.
    pub release_command_timeout: GoDuration,
    /// Guest of the release command's machine, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_command_guest: Option<Guest>,
}

/// A file the deploy engine must read from the deploying machine and send base64-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFile {
    /// Destination in the machine.
    pub guest_path: String,
    /// Path relative to the config file's directory.
    pub local_path: String,
}

/// One process group, ready to create machines from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessGroup {
    /// The machine config (image filled by the caller).
    pub machine: MachineConfig,
    /// Whether any service routes to this group.
    pub has_services: bool,
    /// Whether `[http_service]` routes to this group.
    pub has_http_service: bool,
    /// Whether `[[vm]]` set the guest; when false, deploys keep each machine's existing guest.
    pub guest_from_config: bool,
    /// Machines a first deploy creates: 1 with a volume, 2 for a served group without one
    /// (so one can be replaced while the other serves), else 1.
    pub default_count: u32,
    /// `[[files]]` with `local_path`, to be read at deploy time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_files: Vec<LocalFile>,
}

/// Everything the deploy engine needs from the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedApp {
    /// App name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Primary region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_region: Option<String>,
    /// The group that unscoped services, mounts and checks belong to.
    pub default_group: String,
    /// How to deploy.
    pub deploy: DeployPlan,
    /// How to build, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Console command, split into arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_command: Option<Vec<String>>,
    /// The process groups by name.
    pub groups: BTreeMap<String, ProcessGroup>,
}

/// Fly's preset names.
pub const PRESET_NAMES: &[&str] = &[
    "shared-cpu-1x",
    "shared-cpu-2x",
    "shared-cpu-4x",
    "shared-cpu-6x",
    "shared-cpu-8x",
    "performance-1x",
    "performance-2x",
    "performance-4x",
    "performance-6x",
    "performance-8x",
    "performance-10x",
    "performance-12x",
    "performance-14x",
    "performance-16x",
    "a10",
    "l40s",
    "a100-40gb",
    "a100-80gb",
];

/// A preset's guest; GPU presets are 8 performance CPUs, 32 GB and one GPU (GPUs are stored only).
pub fn preset(name: &str) -> Option<Guest> {
    if let Some(g) = Guest::from_preset(name) {
        return Some(g);
    }
    let gpu_kind = match name {
        "a10" => "a10",
        "l40s" => "l40s",
        "a100-40gb" => "a100-pcie-40gb",
        "a100-80gb" => "a100-sxm4-80gb",
        _ => return None,
    };
    Some(Guest {
        cpu_kind: "performance".to_owned(),
        cpus: 8,
        memory_mb: 32768,
        gpus: Some(1),
        gpu_kind: Some(gpu_kind.to_owned()),
        ..Guest::default()
    })
}

/// `app` if defined, else the first group by name; `app` when there is no `[processes]`.
pub fn default_group(cfg: &AppConfig) -> String {
    if cfg.processes.is_empty() || cfg.processes.contains_key("app") {
        "app".to_owned()
    } else {
        cfg.processes
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| "app".to_owned())
    }
}

/// The guest a `[[vm]]` describes: the preset, then explicit fields.
pub fn guest_of(c: &Compute) -> Guest {
    let has_gpu = c.gpus.is_some() || c.gpu_kind.is_some();
    let mut g = c
        .size
        .as_deref()
        .and_then(preset)
        .or_else(|| has_gpu.then(|| preset("performance-8x")).flatten())
        .unwrap_or_default();
    if let Some(kind) = &c.cpu_kind {
        g.cpu_kind = kind.clone();
    }
    if let Some(cpus) = c.cpus {
        g.cpus = cpus;
    }
    match c.memory.or(c.memory_mb) {
        Some(mb) => g.memory_mb = mb,
        None => {
            // Fly's minimum memory per CPU: 256 MB shared, 2048 MB performance.
            let per_cpu = if g.cpu_kind == "performance" {
                2048
            } else {
                256
            };
            g.memory_mb = g.memory_mb.max(u64::from(g.cpus) * per_cpu);
        }
    }
    if c.gpus.is_some() {
        g.gpus = c.gpus;
    }
    if c.gpu_kind.is_some() {
        g.gpu_kind = c.gpu_kind.clone();
    }
    if !c.kernel_args.is_empty() {
        g.kernel_args = c.kernel_args.clone();
    }
    if let Some(h) = &c.host_dedication_id {
        g.extra
            .insert("host_dedication_id".to_owned(), h.clone().into());
    }
    g
}

fn applies(list: &[String], group: &str, default: &str) -> bool {
    if list.is_empty() {
        group == default
    } else {
        list.iter().any(|g| g == group)
    }
}

fn split(what: &str, command: &str) -> Result<Vec<String>, ResolveError> {
    shell_words::split(command).map_err(|e| ResolveError::Command {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

fn autostop(a: Option<AutoStop>) -> Option<Autostop> {
    a.map(|a| match a {
        AutoStop::Off => Autostop::Off,
        AutoStop::Stop => Autostop::Stop,
        AutoStop::Suspend => Autostop::Suspend,
    })
}

fn concurrency(c: Option<&super::model::Concurrency>) -> Option<Concurrency> {
    c.map(|c| Concurrency {
        kind: c.kind.clone(),
        soft_limit: c.soft_limit,
        hard_limit: c.hard_limit,
    })
}

fn service_check(kind: &str, c: &ServiceCheck) -> MachineServiceCheck {
    MachineServiceCheck {
        kind: Some(kind.to_owned()),
        port: None,
        interval: c.interval,
        timeout: c.timeout,
        grace_period: c.grace_period,
        method: c.method.clone(),
        path: c.path.clone(),
        protocol: c.protocol.clone(),
        tls_skip_verify: c.tls_skip_verify,
        tls_server_name: c.tls_server_name.clone(),
        headers: c
            .headers
            .iter()
            .map(|(name, value)| CheckHeader {
                name: name.clone(),
                values: vec![value.clone()],
            })
            .collect(),
    }
}

/// Resolves `cfg` into per-group machine configs; `image` fills each machine's image.
pub fn resolve(cfg: &AppConfig, image: &str) -> Result<ResolvedApp, ResolveError> {
    let default = default_group(cfg);
    let group_names: Vec<String> = if cfg.processes.is_empty() {
        vec!["app".to_owned()]
    } else {
        cfg.processes.keys().cloned().collect()
    };
    let mut groups = BTreeMap::new();
    for group in &group_names {
        groups.insert(group.clone(), resolve_group(cfg, image, group, &default)?);
    }
    let deploy = cfg.deploy.clone().unwrap_or_default();
    let five_minutes = GoDuration(Duration::from_secs(300));
    let strategy = match deploy.strategy.as_deref() {
        Some("immediate") => Strategy::Immediate,
        Some("canary") => Strategy::Canary,
        Some("bluegreen") => Strategy::Bluegreen,
        _ => Strategy::Rolling,
    };
    let release_command = match deploy.release_command.as_deref() {
        Some(c) if !c.trim().is_empty() => Some(split("deploy.release_command", c)?),
        _ => None,
    };
    let console_command = match cfg.console_command.as_deref() {
        Some(c) if !c.trim().is_empty() => Some(split("console_command", c)?),
        _ => None,
    };
    Ok(ResolvedApp {
        app: cfg.app.clone(),
        primary_region: cfg.primary_region.clone(),
        default_group: default,
        deploy: DeployPlan {
            strategy,
            max_unavailable: deploy.max_unavailable.unwrap_or(0.33),
            wait_timeout: deploy.wait_timeout.unwrap_or(five_minutes),
            release_command,
            release_command_timeout: deploy.release_command_timeout.unwrap_or(five_minutes),
            release_command_guest: deploy.release_command_vm.as_ref().map(guest_of),
        },
        build: cfg.build.clone(),
        console_command,
        groups,
    })
}

fn resolve_group(
    cfg: &AppConfig,
    image: &str,
    group: &str,
    default: &str,
) -> Result<ProcessGroup, ResolveError> {
    let mut m = MachineConfig {
        image: image.to_owned(),
        ..MachineConfig::default()
    };

    // Command: the group's command replaces the image's CMD; ENTRYPOINT is kept.
    let experimental = cfg.experimental.clone().unwrap_or_default();
    let cmd = match cfg.processes.get(group).map(String::as_str) {
        Some(c) if !c.trim().is_empty() => Some(split(&format!("processes.{group}"), c)?),
        _ => experimental.cmd.clone(),
    };
    let init = Init {
        cmd,
        entrypoint: experimental.entrypoint.clone(),
        exec: experimental.exec.clone(),
        swap_size_mb: cfg.swap_size_mb,
        ..Init::default()
    };
    if init != Init::default() {
        m.init = Some(init);
    }

    m.env = cfg.env.clone();
    m.env
        .insert("FLY_PROCESS_GROUP".to_owned(), group.to_owned());
    if let Some(r) = &cfg.primary_region {
        m.env.insert("PRIMARY_REGION".to_owned(), r.clone());
    }
    m.metadata
        .insert("fly_platform_version".to_owned(), "v2".to_owned());
    m.metadata
        .insert("fly_process_group".to_owned(), group.to_owned());

    // A `[[vm]]` naming the group wins over one that names no group.
    let vm = cfg
        .vm
        .iter()
        .find(|v| v.processes.iter().any(|g| g == group))
        .or_else(|| cfg.vm.iter().find(|v| v.processes.is_empty()));
    m.guest = vm.map(guest_of);

    let mut has_http_service = false;
    if let Some(h) = &cfg.http_service
        && applies(&h.processes, group, default)
    {
        has_http_service = true;
        let force_https = h.force_https.unwrap_or(false);
        m.services.push(MachineService {
            protocol: "tcp".to_owned(),
            internal_port: h.internal_port.unwrap_or(8080),
            autostop: autostop(h.auto_stop_machines),
            autostart: h.auto_start_machines,
            min_machines_running: h.min_machines_running,
            ports: vec![
                MachinePort {
                    port: Some(80),
                    handlers: vec!["http".to_owned()],
                    force_https,
                    http_options: h.http_options.clone(),
                    ..MachinePort::default()
                },
                MachinePort {
                    port: Some(443),
                    handlers: vec!["http".to_owned(), "tls".to_owned()],
                    tls_options: h.tls_options.clone(),
                    http_options: h.http_options.clone(),
                    ..MachinePort::default()
                },
            ],
            checks: h.checks.iter().map(|c| service_check("http", c)).collect(),
            concurrency: concurrency(h.concurrency.as_ref()),
            extra: BTreeMap::new(),
        });
    }
    for s in &cfg.services {
        if !applies(&s.processes, group, default) {
            continue;
        }
        let mut checks: Vec<MachineServiceCheck> = s
            .tcp_checks
            .iter()
            .map(|c| service_check("tcp", c))
            .collect();
        checks.extend(s.http_checks.iter().map(|c| service_check("http", c)));
        m.services.push(MachineService {
            protocol: s.protocol.clone().unwrap_or_else(|| "tcp".to_owned()),
            internal_port: s.internal_port.unwrap_or(8080),
            autostop: autostop(s.auto_stop_machines),
            autostart: s.auto_start_machines,
            min_machines_running: s.min_machines_running,
            ports: s
                .ports
                .iter()
                .map(|p| MachinePort {
                    port: p.port,
                    start_port: p.start_port,
                    end_port: p.end_port,
                    handlers: p.handlers.clone(),
                    force_https: p.force_https.unwrap_or(false),
                    tls_options: p.tls_options.clone(),
                    http_options: p.http_options.clone(),
                    proxy_proto_options: p.proxy_proto_options.clone(),
                })
                .collect(),
            checks,
            concurrency: concurrency(s.concurrency.as_ref()),
            extra: BTreeMap::new(),
        });
    }

    let fallback_port = cfg
        .http_service
        .as_ref()
        .map(|h| h.internal_port.unwrap_or(8080));
    for (name, c) in &cfg.checks {
        // Script checks were Fly v1's; the parser already warned that they are ignored.
        let Some(kind @ ("http" | "tcp")) = c.kind.as_deref() else {
            continue;
        };
        if !applies(&c.processes, group, default) {
            continue;
        }
        let port = c
            .port
            .or(fallback_port)
            .ok_or_else(|| ResolveError::CheckPort { name: name.clone() })?;
        let mut check = service_check(kind, &c.check);
        check.port = Some(port);
        m.checks
            .insert(name.clone(), MachineCheck { check, kind: None });
    }

    m.mounts = cfg
        .mounts
        .iter()
        .filter(|v| applies(&v.processes, group, default))
        .map(|v| MachineMount {
            // The parser warned about relative destinations; containers need absolute ones.
            path: if v.destination.starts_with('/') {
                v.destination.clone()
            } else {
                format!("/{}", v.destination)
            },
            name: Some(v.source.clone()),
            size_gb: v.initial_size,
            extend_threshold_percent: v.auto_extend_size_threshold,
            add_size_gb: v.auto_extend_size_increment,
            size_gb_limit: v.auto_extend_size_limit,
            ..MachineMount::default()
        })
        .collect();

    m.restart = cfg
        .restart
        .iter()
        .find(|r| applies(&r.processes, group, default))
        .map(|r| RestartConfig {
            policy: match r.policy.as_deref() {
                Some("always") => RestartPolicy::Always,
                Some("never" | "no") => RestartPolicy::No,
                _ => RestartPolicy::OnFailure,
            },
            max_retries: r.retries,
            gpu_bid_price: None,
        });

    if cfg.kill_signal.is_some() || cfg.kill_timeout.is_some() {
        m.stop_config = Some(StopConfig {
            signal: cfg.kill_signal.clone(),
            timeout: cfg.kill_timeout,
        });
    }

    m.metrics = cfg
        .metrics
        .iter()
        .find(|x| applies(&x.processes, group, default))
        .map(|x| MachineMetrics {
            port: x.port,
            path: x.path.clone(),
            https: x.https.unwrap_or(false),
        });

    m.statics = cfg
        .statics
        .iter()
        .filter(|s| applies(&s.processes, group, default))
        .map(|s| Static {
            guest_path: s.guest_path.clone(),
            url_prefix: s.url_prefix.clone(),
            tigris_bucket: s.tigris_bucket.clone(),
            index_document: s.index_document.clone(),
        })
        .collect();

    let mut local_files = Vec::new();
    for f in cfg
        .files
        .iter()
        .filter(|f| applies(&f.processes, group, default))
    {
        match &f.local_path {
            Some(local) => local_files.push(LocalFile {
                guest_path: f.guest_path.clone(),
                local_path: local.clone(),
            }),
            None => m.files.push(File {
                guest_path: f.guest_path.clone(),
                raw_value: f.raw_value.clone(),
                secret_name: f.secret_name.clone(),
                ..File::default()
            }),
        }
    }

    let has_services = !m.services.is_empty();
    let default_count = if !m.mounts.is_empty() {
        1
    } else if has_services {
        2
    } else {
        1
    };
    Ok(ProcessGroup {
        guest_from_config: m.guest.is_some(),
        machine: m,
        has_services,
        has_http_service,
        default_count,
        local_files,
    })
}
