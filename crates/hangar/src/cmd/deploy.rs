//! `hangar deploy`, `launch`, `status`, `releases`, `rollback` and `scale`.
//!
//! Deploys run on the server (see `hangar_control::deploy`); these commands send the config
//! and the image, then stream the deploy's progress. Closing the terminal does not stop a
//! deploy: `hangar deploy --wait ID` reattaches.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hangar_client::{Client, ClientError, Deploy, DeployRequest, ScaleRequest};
use hangar_core::config::{self, AppConfig, Format, Severity};
use time::OffsetDateTime;

use super::{Ctx, build, parse_app, parse_org};
use crate::output::age;

/// Where the app's files are and which config to use.
#[derive(Debug, Clone, Args)]
pub struct Source {
    /// The app's directory [default: the current directory].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The config file [default: hangar.toml, else fly.toml (or .json/.yaml) in DIR].
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// An image to deploy instead of building: a name on the server (as `hangar build`
    /// or a push to the built-in registry left it) or a registry reference to pull.
    #[arg(short = 'i', long, value_name = "REF")]
    pub image: Option<String>,
    /// Upload and deploy a `docker save` / OCI archive.
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub image_archive: Option<PathBuf>,
    /// Override `[deploy] strategy`.
    #[arg(long, value_parser = ["rolling", "immediate", "canary", "bluegreen"])]
    pub strategy: Option<String>,
    /// Return as soon as the server accepted the deploy (watch it with `hangar status`).
    #[arg(long)]
    pub detach: bool,
}

/// `hangar deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub source: Source,
    /// The app [default: `app` in the config file].
    #[arg(short = 'a', long = "app", env = "HANGAR_APP", value_name = "APP", value_parser = parse_app)]
    pub app: Option<String>,
    /// Reattach to a running deploy and follow it to its end.
    #[arg(long, value_name = "DEPLOY_ID", conflicts_with_all = ["image", "image_archive", "strategy", "detach"])]
    pub wait: Option<String>,
    /// Machines per process group when a group has none yet [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub count: Option<u32>,
}

/// `hangar launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub source: Source,
    /// The app's name [default: `app` in the config file, else the directory's name].
    #[arg(long, value_parser = parse_app)]
    pub name: Option<String>,
    /// Organization of a new app [default: "default"].
    #[arg(long, value_parser = parse_org)]
    pub org: Option<String>,
    /// Write the config and create the app, but do not deploy.
    #[arg(long)]
    pub no_deploy: bool,
}

/// An app, from `--app`, `$HANGAR_APP` or the config file here.
#[derive(Debug, Args)]
pub struct AppOpt {
    /// The app [default: $HANGAR_APP, else `app` in hangar.toml / fly.toml here].
    #[arg(short = 'a', long = "app", env = "HANGAR_APP", value_name = "APP", value_parser = parse_app)]
    pub app: Option<String>,
}

/// `hangar rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The release to go back to [default: the one before the current].
    #[arg(value_name = "VERSION", value_parser = parse_version)]
    pub release: Option<i64>,
    #[command(flatten)]
    pub app: AppOpt,
    /// Return once the server accepted it.
    #[arg(long)]
    pub detach: bool,
}

/// `hangar scale`.
#[derive(Debug, Subcommand)]
pub enum ScaleCommand {
    /// Set the number of machines of the app's process groups (or one group).
    Count {
        /// Machines per process group.
        #[arg(value_parser = clap::value_parser!(u32).range(0..=100))]
        count: u32,
        /// Only this process group.
        #[arg(long, short = 'g', value_name = "GROUP")]
        process_group: Option<String>,
        #[command(flatten)]
        app: AppOpt,
        /// Return once the server accepted it.
        #[arg(long)]
        detach: bool,
    },
    /// Change the machine size (a Fly preset: shared-cpu-1x, performance-2x, ...); rolled
    /// like a deploy.
    Vm {
        /// The preset.
        size: String,
        #[command(flatten)]
        app: AppOpt,
        /// Return once the server accepted it.
        #[arg(long)]
        detach: bool,
    },
    /// Change the machines' memory in MB; rolled like a deploy.
    Memory {
        /// Megabytes.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        memory_mb: u64,
        #[command(flatten)]
        app: AppOpt,
        /// Return once the server accepted it.
        #[arg(long)]
        detach: bool,
    },
}

fn parse_version(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix('v').unwrap_or(s);
    match digits.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a release version: use a number such as 3 or v3"
        )),
    }
}

/// The app config found in a directory (or given), parsed; diagnostics are printed and
/// errors are fatal.
fn load_config(
    dir: &Path,
    explicit: Option<&Path>,
) -> anyhow::Result<Option<(PathBuf, AppConfig)>> {
    let file = match explicit {
        Some(p) => super::config::locate(Some(p))?,
        None => match config::find_config_file(|name| dir.join(name).is_file()) {
            Some(name) => dir.join(name),
            None => return Ok(None),
        },
    };
    let src = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the config file {}", file.display()))?;
    let shown = file.display().to_string();
    let parsed = config::parse(&src, Format::from_path(&shown), &shown);
    for d in &parsed.diagnostics {
        eprintln!("{d}");
    }
    let errors = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    match parsed.config {
        Some(cfg) if errors == 0 => Ok(Some((file, cfg))),
        _ => bail!(
            "{} has {errors} error(s) (listed above): fix them, then deploy again",
            file.display()
        ),
    }
}

fn deployment_tag(app: &str) -> String {
    let stamp = OffsetDateTime::now_utc().unix_timestamp_nanos();
    format!("{app}:deployment-{stamp:x}")
}

/// Picks the image: `--image`, `--image-archive`, a build of the Dockerfile, or
/// `[build] image`.
async fn image_for(
    ctx: &Ctx,
    client: &Client,
    app: &str,
    dir: &Path,
    source: &Source,
    cfg: Option<&AppConfig>,
) -> anyhow::Result<String> {
    if let Some(image) = &source.image {
        return image_ref(client, image).await;
    }
    if let Some(archive) = &source.image_archive {
        if !ctx.out.json {
            eprintln!("==> Uploading {}", archive.display());
        }
        let built = build::image_from_archive(client, archive, &deployment_tag(app)).await?;
        return Ok(built.image);
    }
    let build_cfg = cfg.and_then(|c| c.build.as_ref());
    if let Some(image) = build_cfg.and_then(|b| b.image.clone()) {
        return image_ref(client, &image).await;
    }
    let dockerfile = build_cfg
        .and_then(|b| b.dockerfile.clone())
        .unwrap_or_else(|| "Dockerfile".to_owned());
    if dir.join(&dockerfile).is_file() {
        let opts = build_cfg
            .map(build::BuildOptions::from_config)
            .unwrap_or_default();
        if !ctx.out.json {
            eprintln!(
                "==> Building {} on the server",
                dir.join(&dockerfile).display()
            );
        }
        let built = build::build_image(client, app, dir, &opts, &ctx.out).await?;
        return Ok(built.image);
    }
    bail!(
        "nothing to deploy in {}: no {dockerfile}, no [build] image in the config; pass --image REF or --image-archive FILE",
        display_dir(dir)
    )
}

/// A registry reference (`ghcr.io/o/i:t`, `localhost:5000/i`) is pulled into the server's
/// store with the credentials of `~/.docker/config.json`; anything else names an image
/// already on the server (a build, a push to the built-in registry, an import).
async fn image_ref(client: &Client, reference: &str) -> anyhow::Result<String> {
    let first = reference.split('/').next().unwrap_or_default();
    let registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if !registry {
        return Ok(reference.to_owned());
    }
    let built = build::image_from_ref(client, reference, &build::RegistryCreds::default()).await?;
    Ok(built.image)
}

fn display_dir(dir: &Path) -> String {
    if dir.as_os_str().is_empty() || dir == Path::new(".") {
        "the current directory".to_owned()
    } else {
        dir.display().to_string()
    }
}

/// Streams a deploy's progress until it ends; fails when the deploy failed.
async fn follow(ctx: &Ctx, client: &Client, deploy: &Deploy) -> anyhow::Result<Deploy> {
    let mut after = 0;
    // The stream ends when the deploy ends; a dropped connection is retried a few times.
    for _attempt in 0..5 {
        let mut events = match client.follow_deploy(&deploy.app, &deploy.id, after).await {
            Ok(s) => s,
            Err(e @ ClientError::Api { .. }) => return Err(e.into()),
            Err(e) => {
                eprintln!("warning: lost the progress stream ({e}); reconnecting");
                continue;
            }
        };
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            after = event.seq;
            if ctx.out.json {
                ctx.out.line(serde_json::to_string(&event)?)?;
                continue;
            }
            let line = match event.kind.as_str() {
                "log" => format!("    | {}", event.message),
                "machine" => format!("  - {}", event.message),
                "error" => format!("!!> {}", event.message),
                _ => format!("==> {}", event.message),
            };
            eprintln!("{line}");
        }
        let now = client.get_deploy(&deploy.app, &deploy.id).await?;
        if !now.is_active() {
            return Ok(now);
        }
    }
    bail!(
        "lost the connection to the server; the deploy goes on there: follow it with `hangar deploy --wait {} --app {}`",
        deploy.id,
        deploy.app
    )
}

/// Follows a deploy (unless detached) and reports how it ended.
async fn finish(ctx: &Ctx, client: &Client, deploy: Deploy, detach: bool) -> anyhow::Result<()> {
    if detach {
        if ctx.out.json {
            return ctx.out.json(&deploy);
        }
        ctx.out.line(format_args!(
            "Deploy {} of {} (release v{}) started; follow it with `hangar deploy --wait {} --app {}`",
            deploy.id, deploy.app, deploy.release, deploy.id, deploy.app
        ))?;
        return Ok(());
    }
    let done = follow(ctx, client, &deploy).await?;
    if done.status != "complete" {
        bail!(
            "{}",
            done.reason
                .unwrap_or_else(|| format!("deploy {} ended as {}", done.id, done.status))
        );
    }
    let status = client.app_status(&done.app).await?;
    if !ctx.out.json {
        ctx.out.line(format_args!(
            "Release v{} of {} is live: {}",
            done.release, done.app, status.url
        ))?;
    }
    Ok(())
}

async fn deploy_dir(
    ctx: &Ctx,
    client: &Client,
    app: &str,
    dir: &Path,
    cfg: Option<AppConfig>,
    source: &Source,
    count: Option<u32>,
) -> anyhow::Result<()> {
    let image = image_for(ctx, client, app, dir, source, cfg.as_ref()).await?;
    let req = DeployRequest {
        image,
        config: cfg.map(serde_json::to_value).transpose()?,
        strategy: source.strategy.clone(),
        count,
    };
    let deploy = client.create_deploy(app, &req).await?;
    if !ctx.out.json && !source.detach {
        eprintln!(
            "==> Deploying {} release v{} ({}), deploy {}",
            deploy.app, deploy.release, deploy.strategy, deploy.id
        );
    }
    finish(ctx, client, deploy, source.detach).await
}

/// Runs `hangar deploy`.
pub async fn deploy(ctx: &Ctx, args: DeployArgs) -> anyhow::Result<()> {
    let dir = args.source.dir.clone().unwrap_or_default();
    let loaded = if args.wait.is_some() && args.app.is_some() {
        None
    } else {
        load_config(&dir, args.source.config.as_deref())?
    };
    let cfg = loaded.map(|(_, c)| c);
    let app = match (&args.app, cfg.as_ref().and_then(|c| c.app.clone())) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => a,
        (None, None) => bail!(
            "which app? pass --app APP, or set `app` in the config (`hangar launch` writes one)"
        ),
    };
    let client = ctx.client()?;
    if let Some(id) = args.wait {
        let d = client.get_deploy(&app, &id).await?;
        return finish(ctx, &client, d, false).await;
    }
    deploy_dir(ctx, &client, &app, &dir, cfg, &args.source, args.count).await
}

/// The name `launch` gives an app from its directory: lower-case, runs of other
/// characters become '-'.
fn name_from_dir(dir: &Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    let base = abs
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::new();
    for c in base.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').chars().take(63).collect::<String>();
    let name = name.trim_end_matches('-').to_owned();
    parse_app(&name).map_err(|e| {
        anyhow::anyhow!(
            "cannot make an app name from the directory name {base:?} ({e}): pass --name NAME"
        )
    })
}

/// The port a Dockerfile exposes first, if any.
fn exposed_port(dockerfile: &str) -> Option<u16> {
    dockerfile.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let first = words.next()?;
        if !first.eq_ignore_ascii_case("EXPOSE") {
            return None;
        }
        words.next()?.split('/').next()?.parse().ok()
    })
}

/// The `hangar.toml` that `launch` writes for a directory without a config.
fn new_config(app: &str, internal_port: u16, region: Option<&str>) -> String {
    let mut s = format!(
        "# Written by `hangar launch`. Reference: docs/config.md (fly.toml's schema).\napp = \"{app}\"\n"
    );
    if let Some(r) = region {
        s.push_str(&format!("primary_region = \"{r}\"\n"));
    }
    s.push_str(&format!(
        "\n[http_service]\n  internal_port = {internal_port}\n  force_https = false\n  auto_stop_machines = \"off\"\n  min_machines_running = 1\n\n[deploy]\n  strategy = \"rolling\"\n"
    ));
    s
}

/// Sets `app = name` in an existing TOML config, keeping its comments and layout.
fn set_app_name(src: &str, name: &str) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = src.parse().context("the config is not valid TOML")?;
    doc["app"] = toml_edit::value(name);
    Ok(doc.to_string())
}

/// Runs `hangar launch`.
pub async fn launch(ctx: &Ctx, args: LaunchArgs) -> anyhow::Result<()> {
    let dir = args.source.dir.clone().unwrap_or_default();
    let existing = match &args.source.config {
        Some(p) => Some(super::config::locate(Some(p))?),
        None => config::find_config_file(|n| dir.join(n).is_file()).map(|n| dir.join(n)),
    };
    let name = match (&args.name, &existing) {
        (Some(n), _) => n.clone(),
        (None, Some(file)) => {
            let (_, cfg) = load_config(&dir, Some(file))?.context("the config file vanished")?;
            match cfg.app {
                Some(a) => a,
                None => name_from_dir(&dir)?,
            }
        }
        (None, None) => name_from_dir(&dir)?,
    };
    match &existing {
        Some(file) => {
            let src = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let is_toml = file.extension().is_some_and(|e| e == "toml");
            let (_, cfg) = load_config(&dir, Some(file))?.context("the config file vanished")?;
            if cfg.app.as_deref() != Some(name.as_str()) {
                if !is_toml {
                    bail!(
                        "{} names app {:?}, not {name:?}: change `app` in it, or pass --name {}",
                        file.display(),
                        cfg.app.clone().unwrap_or_default(),
                        cfg.app.as_deref().unwrap_or(&name)
                    );
                }
                std::fs::write(file, set_app_name(&src, &name)?)
                    .with_context(|| format!("cannot write {}", file.display()))?;
                eprintln!("==> Set app = {name:?} in {}", file.display());
            } else {
                eprintln!("==> Using {}", file.display());
            }
        }
        None => {
            let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).ok();
            if dockerfile.is_none()
                && args.source.image.is_none()
                && args.source.image_archive.is_none()
            {
                bail!(
                    "nothing to launch in {}: no Dockerfile, hangar.toml or fly.toml; add a Dockerfile or pass --image REF",
                    display_dir(&dir)
                );
            }
            let port = dockerfile.as_deref().and_then(exposed_port).unwrap_or(8080);
            let file = dir.join("hangar.toml");
            std::fs::write(&file, new_config(&name, port, None))
                .with_context(|| format!("cannot write {}", file.display()))?;
            eprintln!(
                "==> Wrote {} (app {name:?}, internal port {port})",
                file.display()
            );
        }
    }
    let client = ctx.client()?;
    match client.get_app(&name).await {
        Ok(_) => eprintln!("==> App {name} exists"),
        Err(ClientError::Api { status: 404, .. }) => {
            let app = client.create_app(&name, args.org.as_deref()).await?;
            eprintln!(
                "==> Created app {} in organization {}",
                app.name, app.organization.slug
            );
        }
        Err(e) => return Err(e.into()),
    }
    if args.no_deploy {
        ctx.out.line(format_args!(
            "App {name} is ready: deploy it with `hangar deploy`"
        ))?;
        return Ok(());
    }
    let (_, cfg) =
        load_config(&dir, args.source.config.as_deref())?.context("the config file vanished")?;
    deploy_dir(ctx, &client, &name, &dir, Some(cfg), &args.source, None).await
}

fn app_or_config(app: AppOpt) -> anyhow::Result<String> {
    if let Some(a) = app.app {
        return Ok(a);
    }
    match load_config(Path::new(""), None)? {
        Some((_, cfg)) => cfg
            .app
            .context("the config file here has no `app`: pass --app APP"),
        None => bail!("which app? pass --app APP or run from the app's directory"),
    }
}

/// Runs `hangar status`.
pub async fn status(ctx: &Ctx, app: AppOpt) -> anyhow::Result<()> {
    let app = app_or_config(app)?;
    let client = ctx.client()?;
    let st = client.app_status(&app).await?;
    if ctx.out.json {
        return ctx.out.json(&st);
    }
    ctx.out.line(format_args!(
        "App:       {} (organization {})",
        st.app, st.org
    ))?;
    ctx.out.line(format_args!("URL:       {}", st.url))?;
    match &st.release {
        Some(r) => ctx.out.line(format_args!(
            "Release:   v{} ({}, {})",
            r.version, r.image, r.image_digest
        ))?,
        None => ctx
            .out
            .line("Release:   none yet (deploy with `hangar deploy`)")?,
    }
    if let Some(d) = &st.deploy {
        ctx.out.line(format_args!(
            "Deploying: release v{} ({}, {}), deploy {}",
            d.release, d.strategy, d.phase, d.id
        ))?;
    }
    ctx.out.line("")?;
    let now = OffsetDateTime::now_utc();
    let rows = st
        .machines
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.process_group.clone(),
                m.state.clone(),
                m.checks.clone(),
                m.release
                    .map_or_else(|| "-".to_owned(), |r| format!("v{r}")),
                age(&m.created_at, now),
            ]
        })
        .collect();
    ctx.out.table(
        &["ID", "PROCESS", "STATE", "CHECKS", "RELEASE", "CREATED"],
        rows,
        "No machines.",
    )?;
    Ok(())
}

/// Runs `hangar releases`.
pub async fn releases(ctx: &Ctx, app: AppOpt) -> anyhow::Result<()> {
    let app = app_or_config(app)?;
    let client = ctx.client()?;
    let list = client.list_releases(&app).await?;
    if ctx.out.json {
        return ctx.out.json(&list);
    }
    let now = OffsetDateTime::now_utc();
    let rows = list
        .iter()
        .map(|r| {
            vec![
                format!("v{}", r.version),
                r.status.clone(),
                r.strategy.clone(),
                r.image.clone(),
                age(&r.created_at, now),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    ctx.out.table(
        &[
            "VERSION", "STATUS", "STRATEGY", "IMAGE", "CREATED", "REASON",
        ],
        rows,
        "No releases yet: deploy with `hangar deploy`.",
    )?;
    Ok(())
}

/// Runs `hangar rollback`.
pub async fn rollback(ctx: &Ctx, args: RollbackArgs) -> anyhow::Result<()> {
    let app = app_or_config(args.app)?;
    let client = ctx.client()?;
    let d = client.rollback(&app, args.release).await?;
    if !ctx.out.json && !args.detach {
        eprintln!(
            "==> Rolling {} back: release v{} ({}), deploy {}",
            d.app, d.release, d.strategy, d.id
        );
    }
    finish(ctx, &client, d, args.detach).await
}

/// Runs `hangar scale`.
pub async fn scale(ctx: &Ctx, command: ScaleCommand) -> anyhow::Result<()> {
    let (app, req, detach) = match command {
        ScaleCommand::Count {
            count,
            process_group,
            app,
            detach,
        } => (
            app,
            ScaleRequest {
                count: Some(count),
                process_group,
                ..ScaleRequest::default()
            },
            detach,
        ),
        ScaleCommand::Vm { size, app, detach } => {
            if config::preset(&size).is_none() {
                bail!(
                    "unknown VM size {size:?}: use one of {}",
                    config::PRESET_NAMES.join(", ")
                );
            }
            (
                app,
                ScaleRequest {
                    size: Some(size),
                    ..ScaleRequest::default()
                },
                detach,
            )
        }
        ScaleCommand::Memory {
            memory_mb,
            app,
            detach,
        } => (
            app,
            ScaleRequest {
                memory_mb: Some(memory_mb),
                ..ScaleRequest::default()
            },
            detach,
        ),
    };
    let app = app_or_config(app)?;
    let client = ctx.client()?;
    let d = client.scale(&app, &req).await?;
    if !ctx.out.json && !detach {
        eprintln!("==> Scaling {}: deploy {}", d.app, d.id);
    }
    finish(ctx, &client, d, detach).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_directories() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("My_Cool App!");
        std::fs::create_dir(&p).unwrap();
        assert_eq!(name_from_dir(&p).unwrap(), "my-cool-app");
        let bad = dir.path().join("___");
        std::fs::create_dir(&bad).unwrap();
        assert!(name_from_dir(&bad).is_err());
    }

    #[test]
    fn exposed_ports() {
        assert_eq!(exposed_port("FROM scratch\nexpose 3000/tcp\n"), Some(3000));
        assert_eq!(exposed_port("FROM scratch\nCMD [\"/x\"]\n"), None);
    }

    #[test]
    fn the_written_config_parses_and_serves_http() {
        let src = new_config("hello", 8080, Some("local"));
        let parsed = config::parse(&src, Format::Toml, "hangar.toml");
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let cfg = parsed.config.unwrap();
        assert_eq!(cfg.app.as_deref(), Some("hello"));
        assert_eq!(cfg.http_service.unwrap().internal_port, Some(8080));
    }

    #[test]
    fn setting_the_app_name_keeps_comments() {
        let src = "# my app\napp = \"old\" # the name\n\n[http_service]\n  # port\n  internal_port = 3000\n";
        let out = set_app_name(src, "new").unwrap();
        assert!(out.contains("# my app"), "{out}");
        assert!(out.contains("# port"), "{out}");
        assert!(out.contains("app = \"new\""), "{out}");
        let added = set_app_name("[http_service]\ninternal_port = 1\n", "x").unwrap();
        assert!(added.contains("app = \"x\""), "{added}");
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("v3").unwrap(), 3);
        assert_eq!(parse_version("12").unwrap(), 12);
        assert!(parse_version("0").is_err());
        assert!(parse_version("latest").is_err());
    }
}
