//! `hangar config validate` and `hangar config show`: check and print the app config
//! (`hangar.toml`, `fly.toml`, or their `.json` / `.yaml` variants).
//!
//! Everything here is local: no server is contacted. The parsing and the rules live
//! in `hangar_core::config`; this module finds the file, prints and picks the exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hangar_core::config::{self, Diagnostic, Format, Parsed, Severity};

/// `hangar config ...`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
    /// Print JSON. Set by the caller from the global `--json` flag, which every
    /// command shares (a second `--json` here would clash with it).
    #[arg(skip)]
    pub json: bool,
}

/// The config subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check the config: syntax, unknown keys, wrong types, values that cannot work.
    Validate(ValidateArgs),
    /// Print the config after legacy forms are normalized (or, with --machines,
    /// the machine config of each process group).
    Show(ShowArgs),
}

/// Which config file to read.
#[derive(Debug, Clone, Args)]
pub struct ConfigPath {
    /// The config file, or a directory to look in [default: hangar.toml, else fly.toml
    /// (or .json/.yaml/.yml) in the current directory].
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// `hangar config validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub path: ConfigPath,
    /// Treat warnings (unknown keys, unsupported keys) as errors.
    #[arg(long)]
    pub strict: bool,
}

/// `hangar config show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub path: ConfigPath,
    /// Print the resolved machine config of every process group instead.
    #[arg(long)]
    pub machines: bool,
    /// Image to put in the resolved machine configs [default: build.image, else empty].
    #[arg(long, value_name = "IMAGE", requires = "machines")]
    pub image: Option<String>,
}

/// Runs `hangar config ...`; exit status 1 when the config fails validation.
pub fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    run_with(
        args,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// [`run`] with the output streams given, so tests can read what is printed.
pub fn run_with(
    args: &ConfigArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match &args.command {
        ConfigCommand::Validate(v) => validate(v, args.json, out, err),
        ConfigCommand::Show(s) => show(s, args.json, out, err),
    }
}

/// The config file to read: `-c PATH` (a directory is searched like the current
/// one), else the first of `hangar_core::config::CONFIG_FILE_NAMES` here.
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match explicit {
        Some(p) if p.is_dir() => p.to_path_buf(),
        Some(p) => return Ok(p.to_path_buf()),
        None => PathBuf::new(),
    };
    match config::find_config_file(|name| dir.join(name).is_file()) {
        Some(name) => Ok(dir.join(name)),
        None => {
            let place = if dir.as_os_str().is_empty() {
                "the current directory".to_owned()
            } else {
                dir.display().to_string()
            };
            bail!(
                "no hangar.toml or fly.toml (or .json/.yaml variant) in {place}; pass -c PATH or run from the app's directory"
            )
        }
    }
}

/// Reads and parses the config; the name in diagnostics is the path as given.
fn load(path: &ConfigPath) -> anyhow::Result<(PathBuf, Parsed)> {
    let file = locate(path.config.as_deref())?;
    let src = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the config file {}", file.display()))?;
    let shown = file.display().to_string();
    let parsed = config::parse(&src, Format::from_path(&shown), &shown);
    Ok((file, parsed))
}

fn print_diagnostics(err: &mut dyn Write, diagnostics: &[Diagnostic]) -> anyhow::Result<()> {
    for d in diagnostics {
        writeln!(err, "{d}")?;
    }
    Ok(())
}

fn counts(diagnostics: &[Diagnostic]) -> (usize, usize) {
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    (errors, diagnostics.len() - errors)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn validate(
    args: &ValidateArgs,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (file, parsed) = load(&args.path)?;
    let failed = parsed.fails(args.strict);
    let (errors, warnings) = counts(&parsed.diagnostics);
    if json {
        let report = serde_json::json!({
            "file": file.display().to_string(),
            "valid": !failed,
            "strict": args.strict,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": parsed.diagnostics,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_diagnostics(err, &parsed.diagnostics)?;
        let verdict = if failed { "invalid" } else { "valid" };
        let strict = if args.strict && failed && errors == 0 {
            " (--strict turns warnings into errors)"
        } else {
            ""
        };
        writeln!(
            out,
            "{}: {verdict}, {}, {}{strict}",
            file.display(),
            plural(errors, "error"),
            plural(warnings, "warning")
        )?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn show(
    args: &ShowArgs,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (file, parsed) = load(&args.path)?;
    let cfg = match parsed.config {
        Some(cfg)
            if !parsed
                .diagnostics
                .iter()
                .any(|d| d.severity == Severity::Error) =>
        {
            cfg
        }
        _ => {
            let only_errors: Vec<Diagnostic> = parsed
                .diagnostics
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            print_diagnostics(err, &only_errors)?;
            bail!(
                "{} has {}; fix them (see hangar config validate) before showing it",
                file.display(),
                plural(only_errors.len(), "error")
            );
        }
    };
    let text = if args.machines {
        let image = args
            .image
            .clone()
            .or_else(|| cfg.build.as_ref().and_then(|b| b.image.clone()))
            .unwrap_or_default();
        let resolved = config::resolve(&cfg, &image)
            .with_context(|| format!("cannot resolve {}", file.display()))?;
        render(&resolved, json)?
    } else {
        render(&cfg, json)?
    };
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn render<T: serde::Serialize>(value: &T, json: bool) -> anyhow::Result<String> {
    Ok(if json {
        serde_json::to_string_pretty(value)?
    } else {
        config::to_toml_string(value)?
    })
}
