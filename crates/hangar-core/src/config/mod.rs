//! The app config model: `hangar.toml` / `fly.toml` (and their `.json` / `.yaml`
//! variants), with flyctl's legacy forms, precise diagnostics, and resolution
//! into per-process-group machine configs.
//!
//! Pipeline: source text → [`node`] tree with positions → schema walker
//! (`parse`) → [`AppConfig`] plus [`Diagnostic`]s → cross-section checks
//! (`validate`) → [`resolve()`] → [`ResolvedApp`].
//!
//! Invariant: every diagnostic carries a file, line and column. Unknown keys are
//! warnings (flyctl ignores them, so refusing them would break working apps),
//! wrong types and impossible values are errors.

mod diag;
mod model;
mod node;
mod parse;
mod render;
mod resolve;
mod units;
mod validate;

pub use diag::{Diagnostic, DiagnosticKind, Severity, has_fatal};
pub use model::{
    AppConfig, AutoStop, Build, Compute, Concurrency, Deploy, Experimental, FileSpec, HttpService,
    Metrics, Mount, Port, Restart, Service, ServiceCheck, StaticFiles, TopLevelCheck,
};
pub use node::Format;
pub use render::{RenderError, to_toml_string};
pub use resolve::{
    DeployPlan, LocalFile, PRESET_NAMES, ProcessGroup, ResolveError, ResolvedApp, Strategy,
    default_group, guest_of, preset, resolve,
};

/// Config file names looked for in a directory, in order: `hangar.*` wins over `fly.*`.
pub const CONFIG_FILE_NAMES: &[&str] = &[
    "hangar.toml",
    "hangar.json",
    "hangar.yaml",
    "hangar.yml",
    "fly.toml",
    "fly.json",
    "fly.yaml",
    "fly.yml",
];

/// The first of [`CONFIG_FILE_NAMES`] for which `exists` is true.
pub fn find_config_file(exists: impl Fn(&str) -> bool) -> Option<&'static str> {
    CONFIG_FILE_NAMES.iter().copied().find(|name| exists(name))
}

/// The result of parsing one config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The model; `None` only when the file is not valid TOML/JSON/YAML or not a table.
    pub config: Option<AppConfig>,
    /// Findings, ordered by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    /// Whether validation fails: any error, or any warning when `strict`.
    pub fn fails(&self, strict: bool) -> bool {
        self.config.is_none() || has_fatal(&self.diagnostics, strict)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Parses and validates a config. `file` is the name shown in diagnostics.
pub fn parse(src: &str, format: Format, file: &str) -> Parsed {
    let lines = diag::LineIndex::new(src);
    let root = match node::parse(src, format, file, &lines) {
        Ok(root) => root,
        Err(d) => {
            return Parsed {
                config: None,
                diagnostics: vec![d],
            };
        }
    };
    let mut walker = parse::Walker::new(src, file, &lines);
    let config = walker.app(&root);
    if let Some(cfg) = &config {
        validate::validate(&mut walker, cfg);
    }
    let mut diagnostics = walker.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    Parsed {
        config,
        diagnostics,
    }
}
