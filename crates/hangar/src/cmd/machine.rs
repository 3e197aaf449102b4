//! `hangar machine run|list|status|start|stop|restart|signal|destroy`.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use hangar_client::{
    ClientError, CreateMachineRequest, ListMachinesOptions, StopRequest, WaitOptions,
};
use hangar_core::MachineId;
use hangar_core::machine::{
    GoDuration, Guest, Init, Machine, MachineConfig, MachineEvent, MachinePort, MachineService,
    MachineState, RESERVED_ENV_PREFIXES, RestartConfig, RestartPolicy, StopConfig, parse_signal,
};
use hangar_core::names::validate_env_name;
use time::OffsetDateTime;

use super::{AppArg, Ctx, parse_machine_id};
use crate::output::{age, millis_to_rfc3339};

/// How long `run` and `start` wait for the machine to be started; the server's maximum.
const START_WAIT_SECS: u64 = 60;
/// Events shown by `status`.
const STATUS_EVENTS: u32 = 10;

/// Machines: one container each, run from an image.
#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Create and start a machine from an image.
    Run(RunArgs),
    /// List the machines of an app.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        /// Include destroyed machines.
        #[arg(long)]
        all: bool,
    },
    /// Show a machine: config, state, addresses, recent events.
    #[command(visible_alias = "show")]
    Status(MachineRef),
    /// Start a stopped machine and wait until it runs.
    Start(MachineRef),
    /// Stop a machine: its stop signal, then SIGKILL after the timeout.
    Stop {
        #[command(flatten)]
        machine: MachineRef,
        #[command(flatten)]
        stop: StopArgs,
    },
    /// Stop and start a machine.
    Restart {
        #[command(flatten)]
        machine: MachineRef,
        #[command(flatten)]
        stop: StopArgs,
    },
    /// Send a signal to a machine's main process.
    Signal {
        #[command(flatten)]
        machine: MachineRef,
        /// The signal: SIGHUP, SIGUSR1, TERM, 10, ...
        #[arg(value_parser = parse_signal_arg)]
        signal: String,
    },
    /// Destroy a machine.
    #[command(visible_alias = "rm")]
    Destroy {
        #[command(flatten)]
        machine: MachineRef,
        /// Kill it if it is running.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

/// A machine of an app.
#[derive(Debug, Clone, Args)]
pub struct MachineRef {
    /// The machine id (14 hex characters).
    #[arg(value_parser = parse_machine_id)]
    pub id: MachineId,
    #[command(flatten)]
    pub app: AppArg,
}

/// How a machine is stopped.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Signal to send first [default: the machine's stop signal, SIGINT].
    #[arg(long, short = 's', value_parser = parse_signal_arg)]
    pub signal: Option<String>,
    /// Time before SIGKILL, e.g. 10s, 1m30s [default: the machine's, 5s].
    #[arg(long, short = 't', value_parser = parse_duration)]
    pub timeout: Option<GoDuration>,
}

impl StopArgs {
    fn request(&self) -> StopRequest {
        StopRequest {
            signal: self.signal.clone(),
            timeout: self.timeout,
        }
    }
}

/// Restart policies, as Fly names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    /// Never restart.
    No,
    /// Restart whatever the exit code.
    Always,
    /// Restart when the exit code is not 0.
    OnFailure,
}

impl From<RestartArg> for RestartPolicy {
    fn from(r: RestartArg) -> Self {
        match r {
            RestartArg::No => RestartPolicy::No,
            RestartArg::Always => RestartPolicy::Always,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
        }
    }
}

/// `hangar machine run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Image: a local name (busybox, busybox:latest, name@sha256:...), sha256:<digest>,
    /// or a registry reference (registry.example:5000/repo:tag), pulled when missing.
    pub image: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Machine name, unique in the app [default: chosen by the server].
    #[arg(long, short = 'n')]
    pub name: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Number of CPUs [default: 1].
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory limit in MiB, or with a unit: 512, 512mb, 1gb [default: 256].
    #[arg(long, short = 'm', value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// What to do when the main process exits [default: on-failure].
    #[arg(long, value_enum)]
    pub restart: Option<RestartArg>,
    /// Restarts before the machine is marked failed (with --restart on-failure) [default: 10].
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Signal that asks the machine to stop [default: SIGINT].
    #[arg(long, value_parser = parse_signal_arg)]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL, e.g. 10s [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub stop_timeout: Option<GoDuration>,
    /// Replace the image's entrypoint (split like a shell would: "/bin/sh -c").
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Expose a port: PORT[:INTERNAL][/tcp|udp[:HANDLER...]], e.g. 80:8080/tcp:http (repeatable).
    #[arg(long, short = 'p', value_name = "PORT[:INTERNAL][/PROTO[:HANDLERS]]")]
    pub port: Vec<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Destroy the machine when its main process exits.
    #[arg(long)]
    pub rm: bool,
    /// Do not wait for the machine to start.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Command and arguments, replacing the image's CMD (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_signal_arg(s: &str) -> Result<String, String> {
    let n = parse_signal(s).map_err(|e| e.message)?;
    let name = hangar_core::machine::SIGNALS
        .iter()
        .find(|(_, v)| *v == n)
        .map_or_else(|| n.to_string(), |(name, _)| (*name).to_owned());
    Ok(name)
}

fn parse_duration(s: &str) -> Result<GoDuration, String> {
    s.parse()
}

/// Parses a memory size in MiB: `512`, `512mb`, `512MiB`, `1gb`, `2G`.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let bad = || format!("invalid memory size {s:?}: use MiB like 512, or 512mb, 1gb");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// Checks an image reference before it reaches the server, with an example of what works.
pub fn validate_image_reference(image: &str) -> anyhow::Result<()> {
    let examples = "use e.g. busybox, busybox:1.36, registry.example:5000/repo:tag, name@sha256:<64 hex> or sha256:<64 hex>";
    if image.trim().is_empty() {
        bail!("an image is required: {examples}");
    }
    if let Some(hex) = image.strip_prefix("sha256:") {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Ok(());
        }
        bail!("invalid image digest {image:?}: expected sha256: and 64 lowercase hex digits");
    }
    match image.parse::<oci_spec::distribution::Reference>() {
        Ok(_) => Ok(()),
        Err(e) => bail!("invalid image reference {image:?} ({e}): {examples}"),
    }
}

/// Splits `KEY=VALUE`; `what` names the option in the message.
fn parse_pair<'a>(what: &str, s: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!("invalid {what} {s:?}: expected KEY=VALUE"),
    }
}

/// Parses one `--port`: `PORT[:INTERNAL][/PROTO[:HANDLER...]]` (Fly's `-p` format).
fn parse_port(s: &str) -> anyhow::Result<(u16, u16, String, Vec<String>)> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "invalid --port {s:?}: {why}; use PORT[:INTERNAL][/tcp|udp[:HANDLER...]], e.g. 80:8080/tcp:http"
        )
    };
    let (ports, rest) = s.split_once('/').unwrap_or((s, ""));
    let (external, internal) = ports.split_once(':').unwrap_or((ports, ports));
    let parse = |p: &str| -> anyhow::Result<u16> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!("{p:?} is not a port (1-65535)"))),
        }
    };
    let (external, internal) = (parse(external)?, parse(internal)?);
    let mut parts = rest.split(':').filter(|p| !p.is_empty());
    let protocol = parts.next().unwrap_or("tcp").to_ascii_lowercase();
    if !matches!(protocol.as_str(), "tcp" | "udp") {
        return Err(bad(&format!("protocol {protocol:?} is not tcp or udp")));
    }
    let mut handlers = Vec::new();
    for h in parts {
        let h = h.to_ascii_lowercase();
        if !matches!(
            h.as_str(),
            "http" | "tls" | "proxy_proto" | "pg_tls" | "edge_http"
        ) {
            return Err(bad(&format!(
                "unknown handler {h:?} (http, tls, proxy_proto, pg_tls)"
            )));
        }
        handlers.push(h);
    }
    Ok((external, internal, protocol, handlers))
}

/// Builds the create request from the arguments, refusing what cannot work before
/// anything is sent: env names, `KEY=VALUE` form, empty commands, zero sizes, bad images.
pub fn build_request(args: &RunArgs) -> anyhow::Result<CreateMachineRequest> {
    validate_image_reference(&args.image)?;
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let (key, value) = parse_pair("--env", pair)?;
        validate_env_name(key)?;
        if let Some(prefix) = RESERVED_ENV_PREFIXES.iter().find(|p| key.starts_with(*p)) {
            bail!(
                "environment variable {key:?} is reserved: names starting with {prefix} are set by the platform"
            );
        }
        env.insert(key.to_owned(), value.to_owned());
    }
    let mut metadata = BTreeMap::new();
    for pair in &args.metadata {
        let (key, value) = parse_pair("--metadata", pair)?;
        metadata.insert(key.to_owned(), value.to_owned());
    }

    let mut init = Init::default();
    if !args.command.is_empty() {
        if args.command[0].trim().is_empty() {
            bail!(
                "the command after `--` is empty: give a program to run, or leave out `--` to use the image's"
            );
        }
        init.cmd = Some(args.command.clone());
    }
    if let Some(entrypoint) = &args.entrypoint {
        let argv = shell_words::split(entrypoint)
            .with_context(|| format!("invalid --entrypoint {entrypoint:?}"))?;
        if argv.first().is_none_or(|a| a.trim().is_empty()) {
            bail!("--entrypoint is empty: give a program, or leave it out to use the image's");
        }
        init.entrypoint = Some(argv);
    }

    let guest = if args.cpus.is_some() || args.memory.is_some() {
        let mut guest = Guest::default();
        if let Some(cpus) = args.cpus {
            if cpus == 0 {
                bail!("--cpus must be at least 1");
            }
            guest.cpus = cpus;
        }
        if let Some(memory) = args.memory {
            if memory == 0 {
                bail!("--memory must be at least 1 MiB (e.g. 256)");
            }
            guest.memory_mb = memory;
        }
        Some(guest)
    } else {
        None
    };

    if args.max_retries.is_some() && args.restart.is_some_and(|r| r != RestartArg::OnFailure) {
        bail!("--max-retries only applies to --restart on-failure");
    }
    let restart = if args.restart.is_some() || args.max_retries.is_some() {
        Some(RestartConfig {
            policy: args.restart.map_or(RestartPolicy::OnFailure, Into::into),
            max_retries: args.max_retries,
            gpu_bid_price: None,
        })
    } else {
        None
    };
    let stop_config = if args.stop_signal.is_some() || args.stop_timeout.is_some() {
        Some(StopConfig {
            signal: args.stop_signal.clone(),
            timeout: args.stop_timeout,
        })
    } else {
        None
    };

    // Fly groups public ports by internal port and protocol into one service each.
    let mut services: Vec<MachineService> = Vec::new();
    for spec in &args.port {
        let (external, internal, protocol, handlers) = parse_port(spec)?;
        let port = MachinePort {
            port: Some(external),
            handlers,
            ..MachinePort::default()
        };
        match services
            .iter_mut()
            .find(|s| s.internal_port == internal && s.protocol == protocol)
        {
            Some(service) => service.ports.push(port),
            None => services.push(MachineService {
                protocol,
                internal_port: internal,
                ports: vec![port],
                ..MachineService::default()
            }),
        }
    }

    let config = MachineConfig {
        image: args.image.clone(),
        env,
        init: (init != Init::default()).then_some(init),
        guest,
        services,
        restart,
        auto_destroy: args.rm,
        stop_config,
        metadata,
        ..MachineConfig::default()
    };
    // The shared rules catch whatever the checks above do not, with the same messages
    // the server would give.
    config.validate(None)?;
    Ok(CreateMachineRequest {
        config,
        name: args.name.clone(),
        ..CreateMachineRequest::default()
    })
}

pub async fn run(ctx: &Ctx, command: MachineCommand) -> anyhow::Result<()> {
    match command {
        MachineCommand::Run(args) => run_machine(ctx, &args).await,
        MachineCommand::List { app, all } => {
            let client = ctx.client()?;
            let options = ListMachinesOptions {
                include_deleted: all,
                ..ListMachinesOptions::default()
            };
            let machines = client.list_machines(&app.app, &options).await?;
            if ctx.out.json {
                return ctx.out.json(&machines);
            }
            let now = OffsetDateTime::now_utc();
            let rows = machines
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.name.clone(),
                        m.state.to_string(),
                        m.config.image.clone(),
                        m.private_ipv4.clone().unwrap_or_default(),
                        age(&m.created_at, now),
                    ]
                })
                .collect();
            ctx.out.table(
                &["ID", "NAME", "STATE", "IMAGE", "IPV4", "CREATED"],
                rows,
                &format!(
                    "No machines in app {}: start one with `hangar machine run IMAGE -a {}`",
                    app.app, app.app
                ),
            )?;
            Ok(())
        }
        MachineCommand::Status(m) => {
            let client = ctx.client()?;
            let mut machine = client.get_machine(&m.app.app, &m.id).await?;
            let events = client
                .machine_events(&m.app.app, &m.id, Some(STATUS_EVENTS))
                .await?;
            machine.events = events;
            if ctx.out.json {
                return ctx.out.json(&machine);
            }
            ctx.out.line(describe_machine(&machine))?;
            if !machine.checks.is_empty() {
                ctx.out.line("")?;
                ctx.out.line("Checks:")?;
                ctx.out.line(checks_table(&machine.checks))?;
            }
            if !machine.events.is_empty() {
                ctx.out.line("")?;
                ctx.out.line("Recent events (newest first):")?;
                ctx.out.line(events_table(&machine.events))?;
            }
            Ok(())
        }
        MachineCommand::Start(m) => {
            let client = ctx.client()?;
            let started = client.start_machine(&m.app.app, &m.id).await?;
            let machine = settle(
                ctx,
                &m.app.app,
                client.get_machine(&m.app.app, &m.id).await?,
            )
            .await?;
            if ctx.out.json {
                ctx.out.json(&started)?;
            } else {
                ctx.out.line(format_args!(
                    "Machine {} is {} (was {})",
                    m.id, machine.state, started.previous_state
                ))?;
            }
            fail_if_failed(&machine, &m.app.app)
        }
        MachineCommand::Stop { machine: m, stop } => {
            let client = ctx.client()?;
            let ok = client
                .stop_machine(&m.app.app, &m.id, &stop.request())
                .await?;
            if ctx.out.json {
                return ctx.out.json(&ok);
            }
            ctx.out.line(format_args!("Machine {} stopped", m.id))?;
            Ok(())
        }
        MachineCommand::Restart { machine: m, stop } => {
            let client = ctx.client()?;
            let ok = client
                .restart_machine(&m.app.app, &m.id, &stop.request())
                .await?;
            if ctx.out.json {
                return ctx.out.json(&ok);
            }
            ctx.out.line(format_args!("Machine {} restarted", m.id))?;
            Ok(())
        }
        MachineCommand::Signal { machine: m, signal } => {
            let client = ctx.client()?;
            let ok = client.signal_machine(&m.app.app, &m.id, &signal).await?;
            if ctx.out.json {
                return ctx.out.json(&ok);
            }
            ctx.out
                .line(format_args!("Sent {signal} to machine {}", m.id))?;
            Ok(())
        }
        MachineCommand::Destroy { machine: m, force } => {
            let client = ctx.client()?;
            let result = client.destroy_machine(&m.app.app, &m.id, force).await;
            let ok = match result {
                Err(ClientError::Api {
                    status: 412,
                    message,
                }) => bail!(
                    "{}: stop it first, or pass --force to kill it",
                    super::with_cli_hint(&message)
                ),
                other => other?,
            };
            if ctx.out.json {
                return ctx.out.json(&ok);
            }
            ctx.out.line(format_args!("Machine {} destroyed", m.id))?;
            Ok(())
        }
    }
}

async fn run_machine(ctx: &Ctx, args: &RunArgs) -> anyhow::Result<()> {
    let request = build_request(args)?;
    let client = ctx.client()?;
    let app = &args.app.app;
    let mut machine = client.create_machine(app, &request).await?;
    if !args.detach {
        machine = settle(ctx, app, machine).await?;
    }
    if ctx.out.json {
        ctx.out.json(&machine)?;
    } else {
        ctx.out.line(describe_machine(&machine))?;
    }
    if args.detach {
        return Ok(());
    }
    fail_if_failed(&machine, app)
}

/// The machine once it is past `created`/`starting`. The server starts machines before
/// it answers, so this usually returns at once; it must not wait for `started` when
/// the machine already ran and exited (`-- sh -c 'exit 0'`), which is not a failure.
async fn settle(ctx: &Ctx, app: &str, machine: Machine) -> anyhow::Result<Machine> {
    if !matches!(
        machine.state,
        MachineState::Created | MachineState::Starting
    ) {
        return Ok(machine);
    }
    wait_started(ctx, app, &machine.id, Some(machine.instance_id.0.clone())).await?;
    Ok(ctx.client()?.get_machine(app, &machine.id).await?)
}

/// A machine the platform gave up on is an error for the command that started it.
fn fail_if_failed(machine: &Machine, app: &str) -> anyhow::Result<()> {
    if machine.state == MachineState::Failed {
        let id = &machine.id;
        bail!(
            "machine {id} failed to start: see `hangar machine status {id} -a {app}` and `hangar logs -a {app} --machine {id}`"
        );
    }
    Ok(())
}

/// Waits on the server until the machine is started; a timeout becomes an error that
/// says where to look.
async fn wait_started(
    ctx: &Ctx,
    app: &str,
    id: &MachineId,
    instance_id: Option<String>,
) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let options = WaitOptions {
        state: Some("started".to_owned()),
        timeout_secs: Some(START_WAIT_SECS),
        instance_id,
    };
    match client.wait_machine(app, id, &options).await {
        Ok(_) => Ok(()),
        Err(ClientError::Api { status: 408, .. }) => {
            let state = client
                .get_machine(app, id)
                .await
                .map_or_else(|_| "unknown".to_owned(), |m| m.state.to_string());
            bail!(
                "machine {id} did not start within {START_WAIT_SECS}s (it is {state}): see `hangar machine status {id} -a {app}` and `hangar logs -a {app} --machine {id}`"
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// The summary `run` and `status` print.
fn describe_machine(m: &Machine) -> String {
    let mut lines = vec![format!("Machine {} ({}) is {}", m.id, m.name, m.state)];
    let mut field = |k: &str, v: String| {
        if !v.is_empty() {
            lines.push(format!("  {k:<10}{v}"));
        }
    };
    field("App", m.app_name.clone());
    field("Image", m.config.image.clone());
    if let Some(r) = &m.image_ref {
        field("Digest", r.digest.clone());
    }
    field("IPv4", m.private_ipv4.clone().unwrap_or_default());
    field("IPv6", m.private_ip.clone());
    let guest = m.config.guest_or_default();
    field(
        "Size",
        format!(
            "{} {} CPU, {} MiB",
            guest.cpus, guest.cpu_kind, guest.memory_mb
        ),
    );
    if let Some(init) = &m.config.init {
        for (k, argv) in [
            ("Exec", &init.exec),
            ("Entrypoint", &init.entrypoint),
            ("Command", &init.cmd),
        ] {
            if let Some(argv) = argv {
                field(k, shell_words::join(argv));
            }
        }
    }
    let (policy, retries) = m.config.restart_or_default();
    let policy = match policy {
        RestartPolicy::No => "no".to_owned(),
        RestartPolicy::Always => "always".to_owned(),
        RestartPolicy::OnFailure => format!("on-failure (max {retries} retries)"),
    };
    field("Restart", policy);
    if !m.config.env.is_empty() {
        field(
            "Env",
            m.config.env.keys().cloned().collect::<Vec<_>>().join(", "),
        );
    }
    for s in &m.config.services {
        let ports: Vec<String> = s
            .ports
            .iter()
            .filter_map(|p| p.port)
            .map(|p| p.to_string())
            .collect();
        field(
            "Service",
            format!("{}/{} <- {}", s.internal_port, s.protocol, ports.join(",")),
        );
    }
    field("Version", m.instance_id.to_string());
    field("Created", m.created_at.clone());
    field("Updated", m.updated_at.clone());
    lines.join("\n")
}

/// What an event says beyond its type: exit code, signal, OOM kill, error.
fn event_detail(e: &MachineEvent) -> String {
    let Some(req) = &e.request else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(exit) = req.get("exit_event") {
        if let Some(code) = exit.get("exit_code").and_then(serde_json::Value::as_i64) {
            parts.push(format!("exit code {code}"));
        }
        if let Some(sig) = exit.get("signal").and_then(serde_json::Value::as_i64) {
            parts.push(format!("signal {sig}"));
        }
        if exit.get("oom_killed").and_then(serde_json::Value::as_bool) == Some(true) {
            parts.push("OOM killed".to_owned());
        }
        if exit
            .get("requested_stop")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
        {
            parts.push("requested".to_owned());
        }
        if exit.get("restarting").and_then(serde_json::Value::as_bool) == Some(true) {
            parts.push("restarting".to_owned());
        }
    }
    if let Some(n) = req.get("restart_count").and_then(serde_json::Value::as_i64) {
        parts.push(format!("restart {n}"));
    }
    if let Some(err) = req.get("error").and_then(serde_json::Value::as_str) {
        parts.push(err.to_owned());
    }
    parts.join(", ")
}

fn checks_table(checks: &[hangar_core::machine::CheckStatus]) -> String {
    let rows = checks
        .iter()
        .map(|c| {
            let output: String = c.output.chars().take(80).collect();
            vec![
                c.name.clone(),
                c.status.clone(),
                c.updated_at.clone(),
                output,
            ]
        })
        .collect();
    crate::output::render_table(&["NAME", "STATUS", "UPDATED", "OUTPUT"], rows)
}

fn events_table(events: &[MachineEvent]) -> String {
    let rows = events
        .iter()
        .map(|e| {
            vec![
                millis_to_rfc3339(e.timestamp),
                e.kind.clone(),
                e.status.clone(),
                e.source.clone(),
                event_detail(e),
            ]
        })
        .collect();
    crate::output::render_table(&["TIME", "TYPE", "STATUS", "SOURCE", "DETAIL"], rows)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cmd::{Cli, Command};

    /// Parses `hangar machine run ARGS...` and returns the run arguments.
    fn parse_run(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["hangar", "machine", "run", "-a", "web"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Machine(MachineCommand::Run(run)) => Ok(run),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Runs local validation and returns the error message (or "ok").
    fn check(args: &[&str]) -> String {
        match parse_run(args) {
            Err(e) => format!("usage: {}", e.to_string().lines().next().unwrap_or("")),
            Ok(run) => match build_request(&run) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            },
        }
    }

    #[test]
    fn bad_run_arguments_are_refused_locally_with_a_clear_message() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["busybox", "--env", "1BAD=x"],
                "invalid environment variable name \"1BAD\"",
            ),
            (
                &["busybox", "--env", "A-B=x"],
                "invalid environment variable name \"A-B\"",
            ),
            (
                &["busybox", "--env", "A B=x"],
                "invalid environment variable name",
            ),
            (
                &["busybox", "--env", "KEY"],
                "invalid --env \"KEY\": expected KEY=VALUE",
            ),
            (
                &["busybox", "--env", "=v"],
                "invalid --env \"=v\": expected KEY=VALUE",
            ),
            (&["busybox", "--env", "FLY_APP=x"], "is reserved"),
            (&["busybox", "--", ""], "the command after `--` is empty"),
            (
                &["busybox", "--", "  ", "x"],
                "the command after `--` is empty",
            ),
            (
                &["busybox", "--memory", "0"],
                "--memory must be at least 1 MiB",
            ),
            (
                &["busybox", "--memory", "lots"],
                "usage: error: invalid value 'lots'",
            ),
            (&["busybox", "--cpus", "0"], "--cpus must be at least 1"),
            (
                &["busybox", "--restart", "sometimes"],
                "usage: error: invalid value 'sometimes'",
            ),
            (
                &["busybox", "--restart", "no", "--max-retries", "3"],
                "--max-retries only applies",
            ),
            (
                &["busybox", "--stop-signal", "SIGFOO"],
                "usage: error: invalid value 'SIGFOO'",
            ),
            (
                &["busybox", "--stop-timeout", "10"],
                "usage: error: invalid value '10'",
            ),
            (&["busybox", "--entrypoint", ""], "--entrypoint is empty"),
            (
                &["busybox", "--entrypoint", "'unclosed"],
                "invalid --entrypoint",
            ),
            (&["busybox", "--port", "0"], "is not a port"),
            (&["busybox", "--port", "80:99999"], "is not a port"),
            (&["busybox", "--port", "80/sctp"], "is not tcp or udp"),
            (&["busybox", "--port", "80/tcp:magic"], "unknown handler"),
            (&["Busybox"], "invalid image reference \"Busybox\""),
            (&["busy box"], "invalid image reference"),
            (&["busybox:"], "invalid image reference"),
            (&["busybox@sha256:abc"], "invalid image reference"),
            (&["sha256:xyz"], "invalid image digest"),
            (&[""], "an image is required"),
        ];
        for (args, want) in cases {
            let got = check(args);
            assert!(got.contains(want), "{args:?}: expected {want:?} in {got:?}");
            assert!(!got.contains('\n'), "{args:?}: not one line: {got:?}");
        }
    }

    #[test]
    fn good_run_arguments_pass() {
        let digest = "a".repeat(64);
        let by_digest = format!("busybox@sha256:{digest}");
        let bare_digest = format!("sha256:{digest}");
        for args in [
            &["busybox"][..],
            &["busybox:1.36", "--env", "A=", "--env", "_B=x=y"],
            &[
                "registry.example:5000/team/app:v1",
                "--memory",
                "1gb",
                "--cpus",
                "2",
            ],
            &[&by_digest],
            &[&bare_digest],
            &["busybox", "--restart", "on-failure", "--max-retries", "3"],
            &[
                "busybox",
                "--port",
                "80:8080/tcp:http",
                "--port",
                "443:8080/tcp:tls:http",
            ],
            &["busybox", "--", "sh", "-c", "echo hi"],
        ] {
            assert_eq!(check(args), "ok", "{args:?}");
        }
    }

    #[test]
    fn run_builds_the_fly_config() {
        let run = parse_run(&[
            "registry.example:5000/app:v1",
            "--name",
            "web-1",
            "-e",
            "PORT=8080",
            "--env",
            "GREETING=a=b",
            "--cpus",
            "2",
            "--memory",
            "512",
            "--restart",
            "always",
            "--stop-signal",
            "term",
            "--stop-timeout",
            "10s",
            "--entrypoint",
            "/bin/sh -c",
            "-p",
            "80:8080/tcp:http",
            "-p",
            "443:8080/tcp:tls:http",
            "--metadata",
            "team=web",
            "--rm",
            "--",
            "echo $PORT",
        ])
        .unwrap();
        let request = build_request(&run).unwrap();
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "web-1",
                "config": {
                    "image": "registry.example:5000/app:v1",
                    "env": {"GREETING": "a=b", "PORT": "8080"},
                    "init": {"entrypoint": ["/bin/sh", "-c"], "cmd": ["echo $PORT"]},
                    "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
                    "services": [{
                        "protocol": "tcp",
                        "internal_port": 8080,
                        "ports": [
                            {"port": 80, "handlers": ["http"]},
                            {"port": 443, "handlers": ["tls", "http"]}
                        ]
                    }],
                    "restart": {"policy": "always"},
                    "auto_destroy": true,
                    "stop_config": {"signal": "SIGTERM", "timeout": "10s"},
                    "metadata": {"team": "web"}
                }
            })
        );
    }

    #[test]
    fn a_bare_run_leaves_everything_to_the_image_and_the_server() {
        let request = build_request(&parse_run(&["busybox"]).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({"config": {"image": "busybox"}})
        );
    }

    #[test]
    fn memory_sizes() {
        for (input, want) in [
            ("512", Some(512)),
            ("512mb", Some(512)),
            ("1GB", Some(1024)),
            ("2g", Some(2048)),
            ("1 GiB", Some(1024)),
            ("", None),
            ("1tb", None),
            ("-1", None),
            ("99999999999999999999g", None),
        ] {
            assert_eq!(parse_memory(input).ok(), want, "{input:?}");
        }
    }

    #[test]
    fn machine_commands_need_an_app_and_a_valid_id() {
        // Only meaningful when the developer's shell does not set HANGAR_APP.
        if std::env::var_os("HANGAR_APP").is_none() {
            let err = Cli::try_parse_from(["hangar", "machine", "stop", "0123456789abcd"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--app <APP>"), "{err}");
        }
        let err = Cli::try_parse_from(["hangar", "machine", "stop", "../../etc", "-a", "web"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid machine id"), "{err}");
        let err = Cli::try_parse_from(["hangar", "machine", "list", "-a", "Web_App"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid app name"), "{err}");
        let cli = Cli::try_parse_from([
            "hangar",
            "machine",
            "stop",
            "0123456789abcd",
            "-a",
            "web",
            "-s",
            "term",
            "-t",
            "30s",
        ])
        .unwrap();
        let Command::Machine(MachineCommand::Stop { stop, .. }) = cli.command else {
            panic!("not a stop");
        };
        assert_eq!(
            serde_json::to_value(stop.request()).unwrap(),
            serde_json::json!({"signal": "SIGTERM", "timeout": "30s"})
        );
    }

    #[test]
    fn status_shows_the_config_summary_and_events() {
        let machine: Machine = serde_json::from_value(serde_json::json!({
            "id": "0123456789abcd", "name": "web-1", "state": "stopped", "region": "local",
            "instance_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "private_ip": "fdaa::2",
            "private_ipv4": "10.0.0.2", "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:01:00Z", "host_status": "ok", "app_name": "web",
            "image_ref": {"registry": "", "repository": "busybox", "tag": "latest",
                          "digest": "sha256:abc", "labels": {}},
            "config": {"image": "busybox", "env": {"B": "2", "A": "1"},
                       "init": {"cmd": ["sh", "-c", "echo hi; exit 3"]},
                       "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
                       "restart": {"policy": "on-failure", "max_retries": 2},
                       "services": [{"protocol": "tcp", "internal_port": 8080,
                                     "ports": [{"port": 80}, {"port": 443}]}]},
            "events": [{"id": "e2", "type": "exit", "status": "stopped", "source": "hangar",
                        "timestamp": 1_767_225_660_000_i64,
                        "request": {"exit_event": {"exit_code": 137, "oom_killed": true}}},
                       {"id": "e1", "type": "launch", "status": "created", "source": "user",
                        "timestamp": 1_767_225_600_000_i64}]
        }))
        .unwrap();
        assert_eq!(
            describe_machine(&machine),
            "Machine 0123456789abcd (web-1) is stopped
  App       web
  Image     busybox
  Digest    sha256:abc
  IPv4      10.0.0.2
  IPv6      fdaa::2
  Size      2 shared CPU, 512 MiB
  Command   sh -c 'echo hi; exit 3'
  Restart   on-failure (max 2 retries)
  Env       A, B
  Service   8080/tcp <- 80,443
  Version   01JABCDEFGHJKMNPQRSTVWXYZ0
  Created   2026-01-01T00:00:00Z
  Updated   2026-01-01T00:01:00Z"
        );
        assert_eq!(
            events_table(&machine.events),
            "TIME                  TYPE    STATUS   SOURCE  DETAIL
2026-01-01T00:01:00Z  exit    stopped  hangar  exit code 137, OOM killed
2026-01-01T00:00:00Z  launch  created  user"
        );
    }

    #[test]
    fn event_details_show_exit_codes_and_oom() {
        let event = MachineEvent {
            id: "1".into(),
            kind: "exit".into(),
            status: "stopped".into(),
            source: "hangar".into(),
            timestamp: 0,
            request: Some(serde_json::json!({
                "exit_event": {"exit_code": 137, "signal": 9, "oom_killed": true,
                               "requested_stop": false, "restarting": true, "exited_at": ""}
            })),
        };
        assert_eq!(
            event_detail(&event),
            "exit code 137, signal 9, OOM killed, restarting"
        );
    }
}
