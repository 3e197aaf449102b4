//! `hangar build`: a Dockerfile build on the server, with its output streamed here; and
//! the image sources `hangar deploy` uses: [`build_image`] (a Dockerfile),
//! [`image_from_ref`] (a registry pull, credentials from flags or `~/.docker/config.json`)
//! and [`image_from_archive`] (a `docker save` / OCI archive upload).
//!
//! Also the hidden `hangar build-exec`, which the server runs to put buildah into the
//! build's memory cgroup before exec'ing it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Args;
use hangar_client::build::{
    BuildEvent, BuildParams, DockerIgnore, ignore_file_for, write_context_tar,
};
use hangar_client::{Client, PullRequest};
use hangar_core::config::{self, Format};
use serde::Serialize;

use crate::cmd::{Ctx, parse_app};
use crate::output::Output;

/// `hangar build [DIR]`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context directory [default: the current directory].
    pub dir: Option<PathBuf>,
    /// The app the image is for [default: `app` in the config file in DIR].
    #[arg(short = 'a', long = "app", env = "HANGAR_APP", value_name = "APP", value_parser = parse_app)]
    pub app: Option<String>,
    /// The Dockerfile, relative to DIR [default: `[build] dockerfile`, else Dockerfile].
    #[arg(long, value_name = "PATH")]
    pub dockerfile: Option<String>,
    /// The multi-stage target to build [default: `[build] build-target`].
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// A build argument (repeatable); overrides `[build.args]`.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_arg: Vec<String>,
    /// How long the build may run on the server (e.g. 45m) [default: 30m].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// The build's memory limit in MiB [default: 2048].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// The config file (or its directory) [default: the one in DIR].
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Instead of building, pull this image from a registry into the server's store.
    #[arg(long, value_name = "REF", conflicts_with_all = ["dockerfile", "target", "build_arg", "image_archive"])]
    pub image: Option<String>,
    /// Instead of building, upload this `docker save` / OCI archive as `<app>:deployment-<id>`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dockerfile", "target", "build_arg"])]
    pub image_archive: Option<PathBuf>,
    /// Registry user for --image [default: from ~/.docker/config.json].
    #[arg(
        long,
        value_name = "USER",
        requires = "registry_password",
        requires = "image"
    )]
    pub registry_username: Option<String>,
    /// Registry password for --image; prefer the environment variable.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "HANGAR_REGISTRY_PASSWORD",
        hide_env_values = true,
        requires = "registry_username"
    )]
    pub registry_password: Option<String>,
    /// Pull over plain HTTP.
    #[arg(long, requires = "image")]
    pub insecure_registry: bool,
}

/// How to build: from the config's `[build]` section and the flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// The Dockerfile relative to the context [default: Dockerfile].
    pub dockerfile: Option<String>,
    /// The ignore file relative to the context [default: `<dockerfile>.dockerignore`
    /// when it exists, else `.dockerignore`].
    pub ignorefile: Option<String>,
    /// The multi-stage target.
    pub target: Option<String>,
    /// Build arguments.
    pub args: BTreeMap<String, String>,
    /// The build timeout (`30m`).
    pub timeout: Option<String>,
    /// The memory limit in MiB.
    pub memory_mb: Option<u64>,
}

impl BuildOptions {
    /// The options a config's `[build]` section gives.
    pub fn from_config(build: &config::Build) -> BuildOptions {
        BuildOptions {
            dockerfile: build.dockerfile.clone(),
            ignorefile: build.ignorefile.clone(),
            target: build.build_target.clone(),
            args: build.args.clone(),
            timeout: None,
            memory_mb: None,
        }
    }

    /// Applies `--build-arg KEY=VALUE` flags (a flag overrides the config's value).
    pub fn apply_build_args(&mut self, flags: &[String]) -> anyhow::Result<()> {
        for flag in flags {
            let Some((k, v)) = flag.split_once('=') else {
                bail!("--build-arg {flag:?} is not KEY=VALUE");
            };
            if k.is_empty() {
                bail!("--build-arg {flag:?} has an empty name");
            }
            self.args.insert(k.to_owned(), v.to_owned());
        }
        Ok(())
    }
}

/// An image in the server's store, ready to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuiltImage {
    /// Its name, e.g. `web:deployment-01j...`.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
}

/// Registry credentials for a pull.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryCreds {
    /// `--registry-username`.
    pub username: Option<String>,
    /// `--registry-password`.
    pub password: Option<String>,
    /// Plain HTTP.
    pub insecure: bool,
}

impl std::fmt::Debug for RegistryCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCreds")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Runs `hangar build`.
pub async fn run(ctx: &Ctx, args: BuildArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        bail!(
            "{} is not a directory: give the build context directory",
            dir.display()
        );
    }
    let (config_app, mut opts) = match read_config(args.config.as_deref().unwrap_or(&dir))? {
        Some(cfg) => (
            cfg.app.clone(),
            cfg.build
                .as_ref()
                .map(BuildOptions::from_config)
                .unwrap_or_default(),
        ),
        None => (None, BuildOptions::default()),
    };
    let Some(app) = args.app.clone().or(config_app) else {
        bail!(
            "no app given: pass --app, set HANGAR_APP, or put `app = \"...\"` in a hangar.toml in {}",
            dir.display()
        );
    };
    if args.dockerfile.is_some() {
        opts.dockerfile = args.dockerfile.clone();
    }
    if args.target.is_some() {
        opts.target = args.target.clone();
    }
    opts.apply_build_args(&args.build_arg)?;
    opts.timeout = args.timeout.clone();
    opts.memory_mb = args.memory;
    let client = ctx.client()?;
    let built = if let Some(reference) = &args.image {
        let creds = RegistryCreds {
            username: args.registry_username.clone(),
            password: args.registry_password.clone(),
            insecure: args.insecure_registry,
        };
        image_from_ref(&client, reference, &creds).await?
    } else if let Some(archive) = &args.image_archive {
        let name = format!("{app}:deployment-{}", hangar_core::MachineId::generate());
        image_from_archive(&client, archive, &name).await?
    } else {
        build_image(&client, &app, &dir, &opts, &ctx.out).await?
    };
    if ctx.out.json {
        // After a build the events are already printed, `done` last.
        if args.image.is_some() || args.image_archive.is_some() {
            ctx.out.line(serde_json::to_string(&built)?)?;
        }
    } else {
        ctx.out.line(&built.image)?;
    }
    Ok(())
}

/// The config in `path` (a file, or a directory searched for one), if there is one.
fn read_config(path: &Path) -> anyhow::Result<Option<config::AppConfig>> {
    let file = if path.is_dir() {
        match config::find_config_file(|name| path.join(name).is_file()) {
            Some(name) => path.join(name),
            None => return Ok(None),
        }
    } else {
        path.to_path_buf()
    };
    let src = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the config file {}", file.display()))?;
    let shown = file.display().to_string();
    let parsed = config::parse(&src, Format::from_path(&shown), &shown);
    if let Some(e) = parsed.errors().next() {
        bail!("{e}: fix the config (`hangar config validate` lists every problem)");
    }
    Ok(parsed.config)
}

/// The Dockerfile path relative to `dir` (an absolute path inside `dir` is accepted).
fn dockerfile_in(dir: &Path, dockerfile: Option<&str>) -> anyhow::Result<String> {
    let given = dockerfile.unwrap_or("Dockerfile");
    let path = Path::new(given);
    let rel = if path.is_absolute() {
        let root = dir.canonicalize()?;
        let full = path
            .canonicalize()
            .with_context(|| format!("no Dockerfile at {given}"))?;
        full.strip_prefix(&root)
            .map(Path::to_path_buf)
            .map_err(|_| {
                anyhow::anyhow!(
                    "the Dockerfile {given} is outside the build context {}: move it into the context",
                    dir.display()
                )
            })?
    } else {
        path.to_path_buf()
    };
    if rel.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        bail!(
            "the Dockerfile {given} is outside the build context {}: move it into the context",
            dir.display()
        );
    }
    if !dir.join(&rel).is_file() {
        bail!(
            "no Dockerfile at {}: write one, or pass --dockerfile",
            dir.join(&rel).display()
        );
    }
    Ok(rel.to_string_lossy().into_owned())
}

/// Builds the Dockerfile in `dir` on the server for `app`, printing the build's output
/// as it comes (NDJSON events with `--json`), and returns the image.
pub async fn build_image(
    client: &Client,
    app: &str,
    dir: &Path,
    opts: &BuildOptions,
    out: &Output,
) -> anyhow::Result<BuiltImage> {
    let dockerfile = dockerfile_in(dir, opts.dockerfile.as_deref())?;
    let ignore_path = match &opts.ignorefile {
        Some(f) => dir.join(f),
        None => ignore_file_for(dir, &dockerfile),
    };
    let ignore = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => DockerIgnore::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ignore_path.display())),
    };
    let ignore_rel = ignore_path
        .strip_prefix(dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();

    let tar = tempfile::Builder::new()
        .prefix("hangar-context-")
        .suffix(".tar")
        .tempfile()
        .context("cannot create a temporary file for the build context")?;
    let (context_dir, tar_file, always) = (
        dir.to_path_buf(),
        tar.reopen()?,
        [dockerfile.clone(), ignore_rel],
    );
    let stats = tokio::task::spawn_blocking(move || {
        let always: Vec<&str> = always
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        write_context_tar(
            &context_dir,
            &ignore,
            &always,
            std::io::BufWriter::new(tar_file),
        )
    })
    .await?
    .with_context(|| format!("cannot pack the build context {}", dir.display()))?;
    let total = std::fs::metadata(tar.path())?.len();
    if !out.json {
        eprintln!(
            "Sending the build context: {} files, {} ({} left out by .dockerignore)",
            stats.files,
            human_bytes(stats.bytes),
            stats.excluded
        );
    }

    let params = BuildParams {
        dockerfile: Some(dockerfile),
        target: opts.target.clone(),
        args: opts
            .args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeout: opts.timeout.clone(),
        memory_mb: opts.memory_mb,
    };
    let sent = Arc::new(AtomicU64::new(0));
    let progress = (!out.json).then(|| tokio::spawn(show_upload(sent.clone(), total)));
    let started = client
        .start_build(app, tar.path(), &params, Some(sent.clone()))
        .await;
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    let mut events = started.with_context(|| format!("cannot build an image for app {app}"))?;
    drop(tar);

    while let Some(event) = events.next().await {
        let event = event.context("the build's output stream broke off")?;
        if out.json {
            out.line(serde_json::to_string(&event)?)?;
        }
        match event {
            BuildEvent::Started { image, .. } => {
                if !out.json {
                    eprintln!("Building {image}");
                }
            }
            BuildEvent::Log { line } => {
                if !out.json {
                    out.line(line)?;
                }
            }
            BuildEvent::Done { image, digest } => return Ok(BuiltImage { image, digest }),
            BuildEvent::Error {
                message, output, ..
            } => {
                if !out.json && !output.is_empty() {
                    eprintln!("Output of the failing step:");
                    for line in &output {
                        eprintln!("  {line}");
                    }
                }
                bail!("{message}");
            }
            BuildEvent::Unknown => {}
        }
    }
    bail!(
        "the build's output ended without a result: the server may have restarted; run the build again"
    )
}

/// Shows the upload's progress on a terminal: one line, rewritten in place.
async fn show_upload(sent: Arc<AtomicU64>, total: u64) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    // Bounded by the caller, which aborts this task when the upload is answered.
    loop {
        let now = sent.load(Ordering::Relaxed).min(total);
        {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\rUploading the context: {} / {}",
                human_bytes(now),
                human_bytes(total)
            );
            let _ = err.flush();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Pulls `reference` into the server's store. Credentials: the flags in `creds`, else
/// the registry's entry in `~/.docker/config.json` (`$DOCKER_CONFIG/config.json`).
pub async fn image_from_ref(
    client: &Client,
    reference: &str,
    creds: &RegistryCreds,
) -> anyhow::Result<BuiltImage> {
    let (username, password) = match (&creds.username, &creds.password) {
        (Some(u), Some(p)) => (Some(u.clone()), Some(p.clone())),
        (None, None) => match docker_config_path() {
            Some(path) => match docker_credentials(&path, &registry_of(reference))? {
                Some((u, p)) => (Some(u), Some(p)),
                None => (None, None),
            },
            None => (None, None),
        },
        _ => bail!("give both --registry-username and --registry-password, or neither"),
    };
    let summary = client
        .pull_image(&PullRequest {
            reference: reference.to_owned(),
            username,
            password,
            insecure: creds.insecure,
        })
        .await
        .with_context(|| format!("cannot pull {reference}"))?;
    Ok(BuiltImage {
        image: summary.name.unwrap_or_else(|| reference.to_owned()),
        digest: summary.manifest_digest,
    })
}

/// Uploads a `docker save` or OCI archive (or OCI layout directory) as `name`.
pub async fn image_from_archive(
    client: &Client,
    path: &Path,
    name: &str,
) -> anyhow::Result<BuiltImage> {
    let images = client
        .import_image(path, Some(name))
        .await
        .with_context(|| format!("cannot import {}", path.display()))?;
    let Some(image) = images.into_iter().next() else {
        bail!("{} holds no image", path.display());
    };
    Ok(BuiltImage {
        image: image.name.unwrap_or_else(|| name.to_owned()),
        digest: image.manifest_digest,
    })
}

/// The registry host of a reference as Docker's config keys it; Docker Hub for a
/// reference without one.
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_owned(),
        _ => "docker.io".to_owned(),
    }
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The credentials for `registry` in a Docker `config.json` (`auths.<host>.auth`, the
/// base64 of `user:password`, or `username`/`password`). A missing file gives none.
pub fn docker_credentials(path: &Path, registry: &str) -> anyhow::Result<Option<(String, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let wanted = |key: &str| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        host == registry || (hub.contains(&registry) && hub.contains(&host))
    };
    for (key, entry) in auths {
        if !wanted(key) {
            continue;
        }
        if let Some(auth) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .with_context(|| {
                    format!("the auth of {key} in {} is not base64", path.display())
                })?;
            let decoded = String::from_utf8(decoded)
                .with_context(|| format!("the auth of {key} in {} is not UTF-8", path.display()))?;
            let Some((user, pass)) = decoded.split_once(':') else {
                bail!(
                    "the auth of {key} in {} is not user:password",
                    path.display()
                );
            };
            return Ok(Some((user.to_owned(), pass.to_owned())));
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|v| v.as_str()),
            entry.get("password").and_then(|v| v.as_str()),
        ) {
            return Ok(Some((u.to_owned(), p.to_owned())));
        }
    }
    Ok(None)
}

/// `hangar build-exec --cgroup-procs FILE -- PROGRAM ARGS...`: joins the cgroup by
/// writing its own pid into FILE, then becomes PROGRAM. Returns only on failure.
pub fn exec_in_cgroup(procs: &Path, command: &[OsString]) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let Some((program, args)) = command.split_first() else {
        bail!("build-exec needs a command after --");
    };
    std::fs::write(procs, std::process::id().to_string())
        .with_context(|| format!("cannot join the build cgroup {}", procs.display()))?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", Path::new(program).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_of_references() {
        for (r, want) in [
            ("alpine", "docker.io"),
            ("library/alpine:3", "docker.io"),
            ("ghcr.io/o/app:v1", "ghcr.io"),
            ("localhost:5000/app", "localhost:5000"),
            ("localhost/app", "localhost"),
            ("registry.example.com/a/b@sha256:00", "registry.example.com"),
        ] {
            assert_eq!(registry_of(r), want, "{r}");
        }
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert_eq!(docker_credentials(&path, "ghcr.io").unwrap(), None);
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3:cret");
        std::fs::write(
            &path,
            serde_json::json!({
                "auths": {
                    "https://index.docker.io/v1/": {"auth": auth},
                    "ghcr.io": {"auth": base64::engine::general_purpose::STANDARD.encode("gh:tok")},
                    "127.0.0.1:5000": {"username": "u", "password": "p"},
                },
                "credsStore": "desktop"
            })
            .to_string(),
        )
        .unwrap();
        let get = |r: &str| docker_credentials(&path, r).unwrap();
        assert_eq!(get("docker.io"), Some(("bob".into(), "s3:cret".into())));
        assert_eq!(get("ghcr.io"), Some(("gh".into(), "tok".into())));
        assert_eq!(get("127.0.0.1:5000"), Some(("u".into(), "p".into())));
        assert_eq!(get("quay.io"), None);
        std::fs::write(&path, r#"{"auths":{"ghcr.io":{"auth":"%%%"}}}"#).unwrap();
        assert!(docker_credentials(&path, "ghcr.io").is_err());
        std::fs::write(&path, "not json").unwrap();
        assert!(docker_credentials(&path, "ghcr.io").is_err());
    }

    #[test]
    fn options_from_config_and_flags() {
        let build = config::Build {
            dockerfile: Some("docker/Dockerfile".into()),
            build_target: Some("final".into()),
            args: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
            ..Default::default()
        };
        let mut o = BuildOptions::from_config(&build);
        o.apply_build_args(&["B=3".into(), "C=x=y".into()]).unwrap();
        assert_eq!(o.dockerfile.as_deref(), Some("docker/Dockerfile"));
        assert_eq!(o.target.as_deref(), Some("final"));
        assert_eq!(
            o.args,
            BTreeMap::from([
                ("A".into(), "1".into()),
                ("B".into(), "3".into()),
                ("C".into(), "x=y".into())
            ])
        );
        assert!(o.apply_build_args(&["NOEQ".into()]).is_err());
        assert!(o.apply_build_args(&["=v".into()]).is_err());
    }

    #[test]
    fn dockerfile_must_exist_inside_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(d.join("sub/Dockerfile.x"), "FROM scratch\n").unwrap();
        assert_eq!(dockerfile_in(d, None).unwrap(), "Dockerfile");
        assert_eq!(
            dockerfile_in(d, Some("sub/Dockerfile.x")).unwrap(),
            "sub/Dockerfile.x"
        );
        let abs = d.join("sub/Dockerfile.x");
        assert_eq!(dockerfile_in(d, abs.to_str()).unwrap(), "sub/Dockerfile.x");
        assert!(
            dockerfile_in(d, Some("nope"))
                .unwrap_err()
                .to_string()
                .contains("no Dockerfile")
        );
        assert!(
            dockerfile_in(&d.join("sub"), Some("../Dockerfile"))
                .unwrap_err()
                .to_string()
                .contains("outside the build context")
        );
        assert!(
            dockerfile_in(
                &d.join("sub"),
                abs.parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .join("Dockerfile")
                    .to_str()
            )
            .is_err()
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
