//! The schema walker: turns a document tree into an [`AppConfig`], accepting every
//! legacy form flyctl accepts and reporting every key it does not use.
//!
//! Each section has a function with one `match` arm per key and a list of the keys
//! it knows (used for "did you mean" suggestions). The walker records where each
//! key path was found, so the cross-section checks in `validate` can point at it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::diag::{Diagnostic, DiagnosticKind, LineIndex, Severity, suggest};
use super::model::{
    AppConfig, AutoStop, Build, Compute, Concurrency, Deploy, Experimental, FileSpec, HttpService,
    Metrics, Mount, Port, Restart, Service, ServiceCheck, StaticFiles, TopLevelCheck,
};
use super::node::{Entry, Node, NodeValue};
use super::units::{NumberUnit, parse_size};
use crate::machine::GoDuration;

/// Walks one document, collecting diagnostics and key positions.
pub(crate) struct Walker<'a> {
    src: &'a str,
    file: &'a str,
    lines: &'a LineIndex,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Byte offset of every key path seen, for later checks.
    pub(crate) offsets: HashMap<String, usize>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `services[0].ports[1]` is shown as `[services.ports]`; the top level as "the top level".
fn section_name(path: &str) -> String {
    if path.is_empty() {
        return "the top level".to_owned();
    }
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    format!("[{out}]")
}

const TOP_KEYS: &[&str] = &[
    "app",
    "primary_region",
    "kill_signal",
    "kill_timeout",
    "swap_size_mb",
    "console_command",
    "host_dedication_id",
    "machine_config",
    "container",
    "build",
    "deploy",
    "env",
    "processes",
    "http_service",
    "services",
    "checks",
    "vm",
    "compute",
    "mounts",
    "statics",
    "files",
    "metrics",
    "restart",
    "machine_checks",
    "experimental",
];

/// Keys of a service that people sometimes write at the top level.
const SERVICE_KEYS: &[&str] = &[
    "internal_port",
    "force_https",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "concurrency",
];

impl<'a> Walker<'a> {
    pub(crate) fn new(src: &'a str, file: &'a str, lines: &'a LineIndex) -> Self {
        Walker {
            src,
            file,
            lines,
            diagnostics: Vec::new(),
            offsets: HashMap::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        severity: Severity,
        kind: DiagnosticKind,
        offset: usize,
        path: &str,
        message: String,
        suggestion: Option<String>,
    ) {
        let (line, column) = self.lines.position(self.src, offset);
        self.diagnostics.push(Diagnostic {
            severity,
            kind,
            message,
            file: self.file.to_owned(),
            line,
            column,
            key_path: path.to_owned(),
            suggestion,
        });
    }

    fn error(&mut self, node: &Node, path: &str, message: String) {
        self.push(
            Severity::Error,
            DiagnosticKind::InvalidValue,
            node.offset,
            path,
            message,
            None,
        );
    }

    fn warn(&mut self, offset: usize, path: &str, message: String) {
        self.push(
            Severity::Warning,
            DiagnosticKind::InvalidValue,
            offset,
            path,
            message,
            None,
        );
    }

    fn wrong_type(&mut self, node: &Node, path: &str, expected: &str) {
        self.push(
            Severity::Error,
            DiagnosticKind::WrongType,
            node.offset,
            path,
            format!(
                "wrong type for {path:?}: expected {expected}, found {}",
                node.value.type_name()
            ),
            None,
        );
    }

    fn unknown(&mut self, entry: &Entry, section: &str, known: &[&str]) {
        let path = join(section, &entry.key);
        let suggestion = suggest(&entry.key, known);
        let mut message = format!("unknown key {:?} in {}", entry.key, section_name(section));
        if let Some(s) = &suggestion {
            message.push_str(&format!("; did you mean {s:?}?"));
        } else if !section.is_empty() && TOP_KEYS.contains(&entry.key.as_str()) {
            // In TOML every key after a [section] header belongs to that section,
            // a common slip when appending top-level keys at the end of the file.
            message.push_str(&format!(
                "; {:?} is a top-level key: move it above the first [section] header",
                entry.key
            ));
        } else if section.is_empty() && SERVICE_KEYS.contains(&entry.key.as_str()) {
            message.push_str(&format!(
                "; {:?} belongs in [http_service] or [[services]]",
                entry.key
            ));
        } else {
            message.push_str("; it is ignored");
        }
        self.push(
            Severity::Warning,
            DiagnosticKind::UnknownKey,
            entry.key_offset,
            &path,
            message,
            suggestion,
        );
    }

    fn unsupported(&mut self, entry: &Entry, section: &str, what: &str) {
        let path = join(section, &entry.key);
        self.push(
            Severity::Warning,
            DiagnosticKind::NotSupported,
            entry.key_offset,
            &path,
            format!("{path:?} is not supported yet: Hangar reads it but {what}"),
            None,
        );
    }

    fn legacy(&mut self, entry: &Entry, section: &str, why: &str) {
        let path = join(section, &entry.key);
        self.push(
            Severity::Warning,
            DiagnosticKind::Legacy,
            entry.key_offset,
            &path,
            format!("{path:?} is ignored: {why}"),
            None,
        );
    }

    fn record(&mut self, path: &str, offset: usize) {
        self.offsets.entry(path.to_owned()).or_insert(offset);
    }

    /// The entries of a table, recording each key's position.
    fn table<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Entry]> {
        match &node.value {
            NodeValue::Table(entries) => {
                self.record(path, node.offset);
                for e in entries {
                    self.record(&join(path, &e.key), e.key_offset);
                }
                Some(entries)
            }
            _ => {
                self.wrong_type(node, path, "a table");
                None
            }
        }
    }

    /// A section that may be written as one table or as an array of tables.
    fn tables<'n>(&mut self, node: &'n Node, path: &str) -> Vec<(String, &'n Node)> {
        match &node.value {
            NodeValue::Table(_) => vec![(index(path, 0), node)],
            NodeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (index(path, i), n))
                .collect(),
            _ => {
                self.wrong_type(node, path, "a table or an array of tables");
                Vec::new()
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            NodeValue::Str(s) => Some(s.clone()),
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    /// A string, or a number or boolean written where flyctl stringifies it.
    fn stringish(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            NodeValue::Str(s) => Some(s.clone()),
            NodeValue::Int(i) => Some(i.to_string()),
            NodeValue::Float(f) => Some(f.to_string()),
            NodeValue::Bool(b) => Some(b.to_string()),
            NodeValue::Datetime(d) => Some(d.clone()),
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            NodeValue::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(node, path, "a boolean");
                None
            }
        }
    }

    fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            NodeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let ip = index(path, i);
                    self.record(&ip, item.offset);
                    out.push(self.string(item, &ip)?);
                }
                Some(out)
            }
            _ => {
                self.wrong_type(node, path, "an array of strings");
                None
            }
        }
    }

    /// A command given as a string (one argument, as flyctl's patch does) or an array.
    /// An empty string or array means "not set", as it does for flyctl.
    fn argv(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let argv = match &node.value {
            NodeValue::Str(s) if s.trim().is_empty() => return None,
            NodeValue::Str(s) => vec![s.clone()],
            NodeValue::Array(_) => self.strings(node, path)?,
            _ => {
                self.wrong_type(node, path, "a string or an array of strings");
                return None;
            }
        };
        match argv.first() {
            None => None,
            Some(first) if first.trim().is_empty() => {
                self.error(
                    node,
                    path,
                    format!("{path:?} starts with an empty program name; name the program to run"),
                );
                None
            }
            Some(_) => Some(argv),
        }
    }

    /// An integer in `min..=max`; negative values and overflows are errors.
    fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        let n = match &node.value {
            NodeValue::Int(n) => *n,
            NodeValue::Float(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 9e15 => {
                // JSON and YAML writers sometimes print integers as `2.0`.
                *f as i64
            }
            _ => {
                self.wrong_type(node, path, "an integer");
                return None;
            }
        };
        if n < 0 && min >= 0 {
            self.error(
                node,
                path,
                format!("{path:?} is {n}; it must not be negative"),
            );
            return None;
        }
        if n < min || n > max {
            self.error(
                node,
                path,
                format!("{path:?} is {n}; it must be between {min} and {max}"),
            );
            return None;
        }
        Some(n)
    }

    fn u32(&mut self, node: &Node, path: &str) -> Option<u32> {
        self.int(node, path, 0, i64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
    }

    fn u64(&mut self, node: &Node, path: &str) -> Option<u64> {
        self.int(node, path, 0, i64::MAX)
            .and_then(|n| u64::try_from(n).ok())
    }

    /// A TCP/UDP port 1-65535; legacy files write it as a string.
    fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        let n = match &node.value {
            NodeValue::Int(n) => *n,
            NodeValue::Str(s) => match s.trim().parse::<i64>() {
                Ok(n) => n,
                Err(_) => {
                    self.push(
                        Severity::Error,
                        DiagnosticKind::WrongType,
                        node.offset,
                        path,
                        format!("wrong type for {path:?}: {s:?} is not a port number"),
                        None,
                    );
                    return None;
                }
            },
            _ => {
                self.wrong_type(node, path, "a port number");
                return None;
            }
        };
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(
                    node,
                    path,
                    format!("port {n} in {path:?} is out of range; use 1-65535"),
                );
                None
            }
        }
    }

    /// A duration: a Go duration string, or a number in the field's unit.
    /// `kill_timeout`: seconds when a number; above Fly's maximum of 300 s it is clamped
    /// with a warning (flyctl accepts such files, and a stop never waits longer).
    fn kill_timeout(&mut self, node: &Node, path: &str) -> Option<GoDuration> {
        let d = self.duration(node, path, NumberUnit::Seconds)?;
        let max = crate::machine::MAX_STOP_TIMEOUT;
        if d.0 > max {
            self.warn(
                node.offset,
                path,
                format!("\"kill_timeout\" of {d} is above the maximum of 5m; 5m is used"),
            );
            return Some(GoDuration(max));
        }
        Some(d)
    }

    fn duration(&mut self, node: &Node, path: &str, unit: NumberUnit) -> Option<GoDuration> {
        match &node.value {
            NodeValue::Str(s) => match s.parse::<GoDuration>() {
                Ok(d) => Some(d),
                Err(e) => match s.trim().parse::<u64>() {
                    // A number in quotes: read it as the field's unit, but say so, since
                    // flyctl refuses it ("missing unit in duration").
                    Ok(n) => {
                        let (d, unit_name) = match unit {
                            NumberUnit::Millis => (Duration::from_millis(n), "milliseconds"),
                            _ => (Duration::from_secs(n), "seconds"),
                        };
                        self.warn(
                            node.offset,
                            path,
                            format!(
                                "{path:?} is {s:?}, a duration without a unit; Hangar reads {unit_name}: write \"{}\"",
                                GoDuration(d)
                            ),
                        );
                        Some(GoDuration(d))
                    }
                    Err(_) => {
                        self.error(node, path, format!("{path:?}: {e}"));
                        None
                    }
                },
            },
            NodeValue::Int(n) => {
                if *n < 0 {
                    self.error(
                        node,
                        path,
                        format!("{path:?} is {n}; a duration must not be negative"),
                    );
                    return None;
                }
                let n = n.unsigned_abs();
                let d = match unit {
                    NumberUnit::Seconds => Duration::from_secs(n),
                    NumberUnit::Millis => Duration::from_millis(n),
                    NumberUnit::SecondsWithWarning => {
                        self.warn(
                            node.offset,
                            path,
                            format!(
                                "{path:?} is a bare number; Hangar reads it as {n} seconds (flyctl would read nanoseconds): write \"{n}s\""
                            ),
                        );
                        Duration::from_secs(n)
                    }
                };
                Some(GoDuration(d))
            }
            NodeValue::Float(f) if *f >= 0.0 && f.is_finite() && *f < 1e12 => {
                let secs = match unit {
                    NumberUnit::Millis => f / 1000.0,
                    _ => *f,
                };
                Some(GoDuration(Duration::from_secs_f64(secs)))
            }
            NodeValue::Float(f) => {
                self.error(
                    node,
                    path,
                    format!("{path:?} is {f}; a duration must be a non-negative number"),
                );
                None
            }
            _ => {
                self.wrong_type(node, path, "a duration such as \"10s\"");
                None
            }
        }
    }

    /// A size: a number in `default_unit_mb` MB units, or a string such as `"512mb"` / `"1gb"`.
    /// Returns the size in units of `default_unit_mb` MB.
    fn size(&mut self, node: &Node, path: &str, unit_mb: u64) -> Option<u64> {
        match &node.value {
            NodeValue::Int(_) => self.u64(node, path),
            NodeValue::Str(s) => match parse_size(s, unit_mb) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(node, path, format!("{path:?}: {e}"));
                    None
                }
            },
            _ => {
                self.wrong_type(node, path, "a size such as \"512mb\" or an integer");
                None
            }
        }
    }

    fn string_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.table(node, path) else {
            return out;
        };
        for e in entries {
            if let Some(v) = self.stringish(&e.node, &join(path, &e.key)) {
                out.insert(e.key.clone(), v);
            }
        }
        out
    }

    /// Validates an enumerated string value; unknown values are errors.
    fn one_of(&mut self, node: &Node, path: &str, allowed: &[&str]) -> Option<String> {
        let s = self.string(node, path)?;
        // Case is not significant (`HTTP`, `Rolling`); the canonical spelling is stored.
        if let Some(canonical) = allowed.iter().find(|a| a.eq_ignore_ascii_case(&s)) {
            Some((*canonical).to_owned())
        } else {
            let list = allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let hint = suggest(&s, allowed);
            self.push(
                Severity::Error,
                DiagnosticKind::InvalidValue,
                node.offset,
                path,
                format!("{path:?} is {s:?}; use one of {list}"),
                hint,
            );
            None
        }
    }

    pub(crate) fn app(&mut self, root: &Node) -> Option<AppConfig> {
        let entries = self.table(root, "")?;
        let mut cfg = AppConfig::default();
        let mut experimental_kill_timeout = None;
        let mut experimental_metrics: (Option<u16>, Option<String>, usize) = (None, None, 0);
        for e in entries {
            let p = e.key.as_str();
            let n = &e.node;
            match p {
                "app" => cfg.app = self.string(n, p),
                "primary_region" => cfg.primary_region = self.string(n, p),
                "kill_signal" => {
                    if let Some(s) = self.string(n, p) {
                        if crate::machine::parse_signal(&s).is_err() {
                            self.error(
                                n,
                                p,
                                format!(
                                    "unknown signal {s:?} in \"kill_signal\"; use SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2, SIGHUP or SIGKILL"
                                ),
                            );
                        } else {
                            cfg.kill_signal = Some(s);
                        }
                    }
                }
                "kill_timeout" => cfg.kill_timeout = self.kill_timeout(n, p),
                "swap_size_mb" => {
                    cfg.swap_size_mb = self.u64(n, p);
                    self.unsupported(e, "", "machines run without swap");
                }
                "console_command" => {
                    cfg.console_command = self.string(n, p);
                    if let Some(c) = &cfg.console_command {
                        self.check_command(n, p, c);
                    }
                }
                "host_dedication_id" => {
                    cfg.host_dedication_id = self.string(n, p);
                    self.unsupported(e, "", "runs every machine on this host");
                }
                "machine_config" => {
                    cfg.machine_config = self.string(n, p);
                    self.unsupported(e, "", "does not merge a base machine config");
                }
                "container" => {
                    cfg.container = self.string(n, p);
                    self.unsupported(e, "", "runs one container per machine");
                }
                "build" => cfg.build = self.build(n, p),
                "deploy" => cfg.deploy = self.deploy(n, p),
                "env" => cfg.env = self.env(n, p),
                "processes" => cfg.processes = self.processes(n, p),
                "http_service" => cfg.http_service = self.http_service(n, p),
                "services" => {
                    for (ip, item) in self.tables(n, p) {
                        if let Some(s) = self.service(item, &ip) {
                            cfg.services.push(s);
                        }
                    }
                }
                "checks" => self.top_checks(n, p, &mut cfg.checks),
                "vm" | "compute" | "computes" => {
                    let base = cfg.vm.len();
                    for (i, (_, item)) in self.tables(n, p).into_iter().enumerate() {
                        if let Some(c) = self.compute(item, &index("vm", base + i)) {
                            cfg.vm.push(c);
                        }
                    }
                }
                "mounts" | "mount" => {
                    let base = cfg.mounts.len();
                    for (i, (_, item)) in self.tables(n, p).into_iter().enumerate() {
                        if let Some(m) = self.mount(item, &index("mounts", base + i)) {
                            cfg.mounts.push(m);
                        }
                    }
                }
                "statics" => {
                    for (ip, item) in self.tables(n, p) {
                        if let Some(s) = self.statics(item, &ip) {
                            cfg.statics.push(s);
                        }
                    }
                }
                "files" => {
                    for (ip, item) in self.tables(n, p) {
                        if let Some(f) = self.file_spec(item, &ip) {
                            cfg.files.push(f);
                        }
                    }
                }
                "metrics" | "metric" => {
                    let base = cfg.metrics.len();
                    for (i, (_, item)) in self.tables(n, p).into_iter().enumerate() {
                        if let Some(m) = self.metrics(item, &index("metrics", base + i)) {
                            cfg.metrics.push(m);
                        }
                    }
                }
                "restart" => {
                    for (ip, item) in self.tables(n, p) {
                        if let Some(r) = self.restart(item, &ip) {
                            cfg.restart.push(r);
                        }
                    }
                }
                "machine_checks" => {
                    cfg.machine_checks = self.opaque_list(n, p);
                    self.unsupported(e, "", "does not run test machines during deploys");
                }
                "experimental" => {
                    cfg.experimental = self.experimental(
                        n,
                        p,
                        &mut experimental_kill_timeout,
                        &mut experimental_metrics,
                    );
                }
                _ => self.unknown(e, "", TOP_KEYS),
            }
        }
        // flyctl hoists these legacy `[experimental]` keys unless the modern ones are set.
        if cfg.kill_timeout.is_none() {
            cfg.kill_timeout = experimental_kill_timeout;
        }
        if let (Some(port), path, offset) = experimental_metrics
            && cfg.metrics.is_empty()
        {
            let i = cfg.metrics.len();
            self.record(&index("metrics", i), offset);
            cfg.metrics.push(Metrics {
                port,
                path: path.unwrap_or_else(|| "/metrics".to_owned()),
                ..Metrics::default()
            });
        }
        Some(cfg)
    }

    fn check_command(&mut self, node: &Node, path: &str, command: &str) {
        match shell_words::split(command) {
            Err(e) => self.error(
                node,
                path,
                format!("{path:?} cannot be split into arguments ({e}); check the quotes"),
            ),
            Ok(argv) if argv.first().is_some_and(|a| a.trim().is_empty()) => self.error(
                node,
                path,
                format!("{path:?} starts with an empty program name; name the program to run"),
            ),
            Ok(_) => {}
        }
    }

    fn build(&mut self, node: &Node, path: &str) -> Option<Build> {
        const KNOWN: &[&str] = &[
            "image",
            "dockerfile",
            "ignorefile",
            "build-target",
            "args",
            "builder",
            "buildpacks",
            "builtin",
            "settings",
            "compose",
            "compression",
            "compression_level",
        ];
        let entries = self.table(node, path)?;
        let mut b = Build::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "image" => b.image = self.string(n, &p),
                "dockerfile" => b.dockerfile = self.string(n, &p),
                "ignorefile" => b.ignorefile = self.string(n, &p),
                "build-target" | "build_target" | "docker_build_target" => {
                    b.build_target = self.string(n, &p);
                }
                "args" => b.args = self.string_map(n, &p),
                "builder" => {
                    b.builder = self.string(n, &p);
                    self.unsupported(e, path, "builds with a Dockerfile only");
                }
                "buildpacks" => {
                    b.buildpacks = self.strings(n, &p).unwrap_or_default();
                    self.unsupported(e, path, "builds with a Dockerfile only");
                }
                "builtin" => {
                    b.builtin = self.string(n, &p);
                    self.unsupported(e, path, "builds with a Dockerfile only");
                }
                "settings" => {
                    if let Some(entries) = self.table(n, &p) {
                        b.settings = entries
                            .iter()
                            .map(|e| (e.key.clone(), opaque(&e.node)))
                            .collect();
                    }
                    self.unsupported(e, path, "builds with a Dockerfile only");
                }
                "compose" => {
                    b.compose = Some(opaque(n));
                    self.unsupported(e, path, "builds one image per app");
                }
                "compression" => b.compression = self.one_of(n, &p, &["gzip", "zstd"]),
                "compression_level" => b.compression_level = self.int(n, &p, 0, 22),
                _ => self.unknown(e, path, KNOWN),
            }
        }
        let sources = [
            b.image.is_some(),
            !b.buildpacks.is_empty(),
            b.dockerfile.is_some(),
            b.builtin.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            self.warn(
                node.offset,
                path,
                "more than one of image, buildpacks, dockerfile and builtin is set in [build]; image wins, then dockerfile".to_owned(),
            );
        }
        Some(b)
    }

    fn deploy(&mut self, node: &Node, path: &str) -> Option<Deploy> {
        const KNOWN: &[&str] = &[
            "strategy",
            "max_unavailable",
            "wait_timeout",
            "release_command",
            "release_command_timeout",
            "release_command_vm",
            "seed_command",
        ];
        let entries = self.table(node, path)?;
        let mut d = Deploy::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "strategy" => {
                    d.strategy =
                        self.one_of(n, &p, &["rolling", "immediate", "canary", "bluegreen"]);
                }
                "max_unavailable" => {
                    let v = match &n.value {
                        NodeValue::Int(i) => Some(*i as f64),
                        NodeValue::Float(f) => Some(*f),
                        _ => {
                            self.wrong_type(n, &p, "a number");
                            None
                        }
                    };
                    match v {
                        Some(v) if v > 0.0 && v.is_finite() => d.max_unavailable = Some(v),
                        Some(v) => self.error(
                            n,
                            &p,
                            format!(
                                "{p:?} is {v}; use a count (1 or more) or a fraction between 0 and 1"
                            ),
                        ),
                        None => {}
                    }
                }
                "wait_timeout" => {
                    d.wait_timeout = self.duration(n, &p, NumberUnit::SecondsWithWarning);
                }
                "release_command" => {
                    d.release_command = self.string(n, &p);
                    if let Some(c) = &d.release_command {
                        self.check_command(n, &p, c);
                    }
                }
                "release_command_timeout" => {
                    d.release_command_timeout =
                        self.duration(n, &p, NumberUnit::SecondsWithWarning);
                }
                "release_command_vm" => d.release_command_vm = self.compute(n, &p),
                "seed_command" => {
                    d.seed_command = self.string(n, &p);
                    self.unsupported(e, path, "does not run a seed command");
                }
                _ => self.unknown(e, path, KNOWN),
            }
        }
        Some(d)
    }

    fn env(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        // Legacy files write `[[env]]`; flyctl merges the tables in order.
        let mut out = BTreeMap::new();
        for (_, item) in self.tables(node, path) {
            let Some(entries) = self.table(item, path) else {
                continue;
            };
            for e in entries {
                let p = join(path, &e.key);
                if let Some(v) = self.stringish(&e.node, &p) {
                    if crate::names::validate_env_name(&e.key).is_err() {
                        self.warn(
                            e.key_offset,
                            &p,
                            format!(
                                "environment variable name {:?} is not portable (use letters, digits and '_'); some shells cannot read it",
                                e.key
                            ),
                        );
                    }
                    out.insert(e.key.clone(), v);
                }
            }
        }
        out
    }

    fn processes(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match &node.value {
            NodeValue::Table(entries) => {
                self.record(path, node.offset);
                for e in entries {
                    let p = join(path, &e.key);
                    self.record(&p, e.key_offset);
                    let cmd = match &e.node.value {
                        NodeValue::Array(_) => {
                            self.strings(&e.node, &p).map(|a| shell_words::join(&a))
                        }
                        _ => self.string(&e.node, &p),
                    };
                    if let Some(cmd) = cmd {
                        self.check_group_name(&e.key, e.key_offset, &p);
                        self.check_command(&e.node, &p, &cmd);
                        out.insert(e.key.clone(), cmd);
                    }
                }
            }
            NodeValue::Array(items) => {
                // Legacy `[[processes]]` with `name` and `command`.
                for (i, item) in items.iter().enumerate() {
                    let ip = index(path, i);
                    let Some(entries) = self.table(item, &ip) else {
                        continue;
                    };
                    let (mut name, mut command) = (None, None);
                    for e in entries {
                        let p = join(&ip, &e.key);
                        match e.key.as_str() {
                            "name" => name = self.string(&e.node, &p).map(|s| (s, e.key_offset)),
                            "command" => command = self.string(&e.node, &p),
                            _ => self.unknown(e, &ip, &["name", "command"]),
                        }
                    }
                    match name {
                        Some((name, offset)) => {
                            let cmd = command.unwrap_or_default();
                            self.check_group_name(&name, offset, &ip);
                            self.check_command(item, &ip, &cmd);
                            self.record(&join(path, &name), offset);
                            out.insert(name, cmd);
                        }
                        None => self.error(
                            item,
                            &ip,
                            "a [[processes]] entry needs a \"name\"".to_owned(),
                        ),
                    }
                }
            }
            _ => self.wrong_type(node, path, "a table of process group commands"),
        }
        out
    }

    fn check_group_name(&mut self, name: &str, offset: usize, path: &str) {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            self.push(
                Severity::Error,
                DiagnosticKind::InvalidValue,
                offset,
                path,
                format!("invalid process group name {name:?}; use letters, digits, '-' and '_'"),
                None,
            );
        } else if name.starts_with("fly_app_") {
            self.push(
                Severity::Error,
                DiagnosticKind::InvalidValue,
                offset,
                path,
                format!(
                    "process group name {name:?} is reserved for the platform (fly_app_*); choose another"
                ),
                None,
            );
        }
    }

    fn autostop(&mut self, node: &Node, path: &str) -> Option<AutoStop> {
        match &node.value {
            NodeValue::Bool(true) => Some(AutoStop::Stop),
            NodeValue::Bool(false) => Some(AutoStop::Off),
            // fly-go's MachineAutostop also reads the strings "true" and "false".
            NodeValue::Str(s) if s == "true" => Some(AutoStop::Stop),
            NodeValue::Str(s) if s == "false" => Some(AutoStop::Off),
            NodeValue::Str(_) => self
                .one_of(node, path, &["off", "stop", "suspend"])
                .map(|s| match s.as_str() {
                    "stop" => AutoStop::Stop,
                    "suspend" => AutoStop::Suspend,
                    _ => AutoStop::Off,
                }),
            _ => {
                self.wrong_type(node, path, "\"off\", \"stop\", \"suspend\" or a boolean");
                None
            }
        }
    }

    fn concurrency(&mut self, node: &Node, path: &str) -> Option<Concurrency> {
        let c = match &node.value {
            NodeValue::Str(s) => {
                // Legacy `"soft,hard"`, which flyctl reads as request limits.
                let parts: Vec<&str> = s.split(',').map(str::trim).collect();
                let parsed: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
                match parsed.as_deref() {
                    Some([soft, hard]) => Concurrency {
                        kind: Some("requests".to_owned()),
                        soft_limit: Some(*soft),
                        hard_limit: Some(*hard),
                    },
                    _ => {
                        self.error(
                            node,
                            path,
                            format!(
                                "{path:?} is {s:?}; write \"soft,hard\" with two non-negative numbers, or a table with soft_limit and hard_limit"
                            ),
                        );
                        return None;
                    }
                }
            }
            NodeValue::Table(_) => {
                let entries = self.table(node, path)?;
                let mut c = Concurrency::default();
                for e in entries {
                    let p = join(path, &e.key);
                    match e.key.as_str() {
                        "type" => {
                            if let Some(kind) = self.string(&e.node, &p) {
                                if !matches!(kind.as_str(), "connections" | "requests") {
                                    self.warn(
                                        e.node.offset,
                                        &p,
                                        format!(
                                            "concurrency type {kind:?} is not \"connections\" or \"requests\"; Hangar counts connections"
                                        ),
                                    );
                                }
                                c.kind = Some(kind);
                            }
                        }
                        "soft_limit" => c.soft_limit = self.u32(&e.node, &p),
                        "hard_limit" => c.hard_limit = self.u32(&e.node, &p),
                        _ => self.unknown(e, path, &["type", "soft_limit", "hard_limit"]),
                    }
                }
                c
            }
            _ => {
                self.wrong_type(node, path, "a table with type, soft_limit and hard_limit");
                return None;
            }
        };
        if let (Some(soft), Some(hard)) = (c.soft_limit, c.hard_limit)
            && soft > hard
        {
            self.warn(
                node.offset,
                path,
                format!(
                    "soft_limit {soft} is above hard_limit {hard} in {path:?}; the soft limit will never be reached"
                ),
            );
        }
        Some(c)
    }

    fn check_headers(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        match &node.value {
            NodeValue::Array(items) => {
                // Legacy `[{name = "...", value = "..."}]`.
                let mut out = BTreeMap::new();
                for (i, item) in items.iter().enumerate() {
                    let ip = index(path, i);
                    let Some(entries) = self.table(item, &ip) else {
                        continue;
                    };
                    let (mut name, mut value) = (None, None);
                    for e in entries {
                        let p = join(&ip, &e.key);
                        match e.key.as_str() {
                            "name" => name = self.string(&e.node, &p),
                            "value" => value = self.stringish(&e.node, &p),
                            _ => self.unknown(e, &ip, &["name", "value"]),
                        }
                    }
                    match name {
                        Some(name) => {
                            out.insert(name, value.unwrap_or_default());
                        }
                        None => self.error(item, &ip, "a header needs a \"name\"".to_owned()),
                    }
                }
                out
            }
            _ => self.string_map(node, path),
        }
    }

    /// The fields shared by every kind of check; returns false for keys it does not know.
    fn check_field(&mut self, e: &Entry, path: &str, c: &mut ServiceCheck) -> bool {
        let p = join(path, &e.key);
        let n = &e.node;
        match e.key.as_str() {
            "interval" => c.interval = self.check_duration(n, &p, true),
            "timeout" => c.timeout = self.check_duration(n, &p, true),
            "grace_period" => {
                c.grace_period = self.check_duration(n, &p, false);
            }
            "method" => c.method = self.string(n, &p),
            "path" => {
                c.path = self.string(n, &p);
                if let Some(path_value) = &c.path
                    && !path_value.starts_with('/')
                {
                    self.warn(
                        n.offset,
                        &p,
                        format!("check path {path_value:?} does not start with '/'"),
                    );
                }
            }
            "protocol" => c.protocol = self.one_of(n, &p, &["http", "https"]),
            "tls_skip_verify" => c.tls_skip_verify = self.boolean(n, &p),
            "tls_server_name" => c.tls_server_name = self.string(n, &p),
            "headers" => c.headers = self.check_headers(n, &p),
            _ => return false,
        }
        true
    }

    /// Check durations: numbers are milliseconds; interval and timeout are clamped to 1-60 s.
    fn check_duration(&mut self, node: &Node, path: &str, clamp: bool) -> Option<GoDuration> {
        let d = self.duration(node, path, NumberUnit::Millis)?;
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        if clamp && (d.0 < min || d.0 > max) {
            let clamped = GoDuration(d.0.clamp(min, max));
            self.warn(
                node.offset,
                path,
                format!("{path:?} is {d}; checks use 1s to 60s, so {clamped} is used"),
            );
            return Some(clamped);
        }
        if !clamp && !d.0.is_zero() && d.0 < min {
            self.warn(
                node.offset,
                path,
                format!("{path:?} is {d}; a grace period is 0 or at least 1s, so 1s is used"),
            );
            return Some(GoDuration(min));
        }
        Some(d)
    }

    fn service_checks(&mut self, node: &Node, path: &str, kind: &str) -> Vec<ServiceCheck> {
        const KNOWN: &[&str] = &[
            "interval",
            "timeout",
            "grace_period",
            "method",
            "path",
            "protocol",
            "tls_skip_verify",
            "tls_server_name",
            "headers",
        ];
        let mut out = Vec::new();
        for (ip, item) in self.tables(node, path) {
            let Some(entries) = self.table(item, &ip) else {
                continue;
            };
            let mut c = ServiceCheck::default();
            for e in entries {
                if e.key == "restart_limit" {
                    self.legacy(e, &ip, "checks no longer restart machines (Fly v1 only)");
                    continue;
                }
                let http_only = matches!(
                    e.key.as_str(),
                    "method"
                        | "path"
                        | "protocol"
                        | "tls_skip_verify"
                        | "tls_server_name"
                        | "headers"
                );
                if kind == "tcp" && http_only {
                    self.unknown(e, &ip, &["interval", "timeout", "grace_period"]);
                    continue;
                }
                if !self.check_field(e, &ip, &mut c) {
                    let known = if kind == "tcp" { &KNOWN[..3] } else { KNOWN };
                    self.unknown(e, &ip, known);
                }
            }
            out.push(c);
        }
        out
    }

    fn top_checks(&mut self, node: &Node, path: &str, out: &mut BTreeMap<String, TopLevelCheck>) {
        let named: Vec<(String, usize, &Node)> = match &node.value {
            NodeValue::Table(entries) => {
                self.record(path, node.offset);
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.key_offset, &e.node))
                    .collect()
            }
            NodeValue::Array(items) => {
                // Legacy `[[checks]]` with a `name` key.
                let mut v = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let name = match &item.value {
                        NodeValue::Table(entries) => entries
                            .iter()
                            .find(|e| e.key == "name")
                            .and_then(|e| match &e.node.value {
                                NodeValue::Str(s) => Some(s.clone()),
                                _ => None,
                            }),
                        _ => None,
                    };
                    v.push((
                        name.unwrap_or_else(|| format!("check_{i}")),
                        item.offset,
                        item,
                    ));
                }
                v
            }
            _ => {
                self.wrong_type(node, path, "a table of named checks");
                return;
            }
        };
        for (name, offset, item) in named {
            let p = join(path, &name);
            self.record(&p, offset);
            if let Some(c) = self.top_check(item, &p, offset) {
                out.insert(name, c);
            }
        }
    }

    fn top_check(&mut self, node: &Node, path: &str, offset: usize) -> Option<TopLevelCheck> {
        const KNOWN: &[&str] = &[
            "type",
            "port",
            "interval",
            "timeout",
            "grace_period",
            "method",
            "path",
            "protocol",
            "tls_skip_verify",
            "tls_server_name",
            "headers",
            "processes",
        ];
        let entries = self.table(node, path)?;
        let mut c = TopLevelCheck::default();
        // A script check is ignored as a whole (one warning), so its own keys are not
        // reported one by one.
        let is_script = entries.iter().any(|e| {
            e.key == "type" && matches!(&e.node.value, NodeValue::Str(s) if s == "script")
        });
        for e in entries {
            let p = join(path, &e.key);
            match e.key.as_str() {
                "type" => {
                    if let Some(t) = self.string(&e.node, &p) {
                        let t = t.to_ascii_lowercase();
                        match t.as_str() {
                            "http" | "tcp" => {}
                            "script" => self.push(
                                Severity::Warning,
                                DiagnosticKind::Legacy,
                                e.node.offset,
                                &p,
                                format!(
                                    "script checks ran only on Fly's v1 platform; check {path:?} is ignored"
                                ),
                                None,
                            ),
                            other => {
                                self.push(
                                    Severity::Error,
                                    DiagnosticKind::InvalidValue,
                                    e.node.offset,
                                    &p,
                                    format!("check type {other:?} is not \"http\" or \"tcp\""),
                                    suggest(other, &["http", "tcp"]),
                                );
                                continue;
                            }
                        }
                        c.kind = Some(t);
                    }
                }
                "port" => c.port = self.port(&e.node, &p),
                "processes" => c.processes = self.strings(&e.node, &p).unwrap_or_default(),
                "name" => {} // The legacy array form's name, already used as the key.
                "command" | "args" | "restart_limit" if is_script => {}
                "command" | "args" | "restart_limit" => {
                    self.legacy(e, path, "script checks and restart limits were Fly v1 only");
                }
                _ => {
                    if !self.check_field(e, path, &mut c.check) {
                        self.unknown(e, path, KNOWN);
                    }
                }
            }
        }
        let type_given = entries.iter().any(|e| e.key == "type");
        if c.kind.is_none() && !type_given {
            self.push(
                Severity::Error,
                DiagnosticKind::InvalidValue,
                offset,
                path,
                format!("check {path:?} has no type; add type = \"http\" or type = \"tcp\""),
                None,
            );
        }
        Some(c)
    }

    fn http_service(&mut self, node: &Node, path: &str) -> Option<HttpService> {
        const KNOWN: &[&str] = &[
            "internal_port",
            "force_https",
            "auto_stop_machines",
            "auto_start_machines",
            "min_machines_running",
            "processes",
            "concurrency",
            "checks",
            "machine_checks",
            "tls_options",
            "http_options",
        ];
        let entries = self.table(node, path)?;
        let mut s = HttpService::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "internal_port" => s.internal_port = self.port(n, &p),
                "force_https" => s.force_https = self.boolean(n, &p),
                "auto_stop_machines" => s.auto_stop_machines = self.autostop(n, &p),
                "auto_start_machines" => s.auto_start_machines = self.boolean(n, &p),
                "min_machines_running" => s.min_machines_running = self.u32(n, &p),
                "processes" => s.processes = self.strings(n, &p).unwrap_or_default(),
                "concurrency" => s.concurrency = self.concurrency(n, &p),
                "checks" => s.checks = self.service_checks(n, &p, "http"),
                "machine_checks" => {
                    s.machine_checks = self.opaque_list(n, &p);
                    self.unsupported(e, path, "does not run test machines during deploys");
                }
                "tls_options" => {
                    s.tls_options = self.table(n, &p).map(|_| opaque(n));
                    self.unsupported(e, path, "terminates TLS with its defaults");
                }
                "http_options" => {
                    s.http_options = self.table(n, &p).map(|_| opaque(n));
                    self.unsupported(e, path, "proxies HTTP with its defaults");
                }
                _ => self.unknown(e, path, KNOWN),
            }
        }
        Some(s)
    }

    fn service(&mut self, node: &Node, path: &str) -> Option<Service> {
        const KNOWN: &[&str] = &[
            "internal_port",
            "protocol",
            "processes",
            "auto_stop_machines",
            "auto_start_machines",
            "min_machines_running",
            "concurrency",
            "ports",
            "tcp_checks",
            "http_checks",
            "machine_checks",
        ];
        let entries = self.table(node, path)?;
        let mut s = Service::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "internal_port" => s.internal_port = self.port(n, &p),
                "protocol" => {
                    if matches!(&n.value, NodeValue::Str(v) if v.is_empty()) {
                        self.warn(n.offset, &p, format!("{p:?} is empty; \"tcp\" is used"));
                    } else {
                        s.protocol = self.one_of(n, &p, &["tcp", "udp"]);
                    }
                }
                "processes" => s.processes = self.strings(n, &p).unwrap_or_default(),
                "auto_stop_machines" => s.auto_stop_machines = self.autostop(n, &p),
                "auto_start_machines" => s.auto_start_machines = self.boolean(n, &p),
                "min_machines_running" => s.min_machines_running = self.u32(n, &p),
                "concurrency" => s.concurrency = self.concurrency(n, &p),
                "ports" => {
                    for (ip, item) in self.tables(n, &p) {
                        if let Some(port) = self.port_spec(item, &ip) {
                            s.ports.push(port);
                        }
                    }
                }
                "tcp_checks" => s.tcp_checks = self.service_checks(n, &p, "tcp"),
                "http_checks" => s.http_checks = self.service_checks(n, &p, "http"),
                "machine_checks" => {
                    s.machine_checks = self.opaque_list(n, &p);
                    self.unsupported(e, path, "does not run test machines during deploys");
                }
                "script_checks" => {
                    self.legacy(e, path, "script checks ran only on Fly's v1 platform");
                }
                _ => self.unknown(e, path, KNOWN),
            }
        }
        if s.internal_port.is_none() && s.ports.is_empty() && !self.has_error_at(path) {
            // Usually a stray `[[services.tcp_checks]]` header that opened a new,
            // empty service; flyctl ignores it too.
            self.warn(
                node.offset,
                path,
                format!("service {path:?} has no internal_port and no ports; it is ignored"),
            );
            return None;
        }
        if s.internal_port.is_none() && !self.has_error_at(path) {
            self.error(
                node,
                path,
                format!("service {path:?} has no internal_port; add the port your app listens on"),
            );
        }
        if s.ports.is_empty() && !self.has_error_at(path) {
            self.warn(
                node.offset,
                path,
                format!("service {path:?} has no ports, so nothing outside the machine reaches it"),
            );
        }
        Some(s)
    }

    fn has_error_at(&self, path: &str) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error && d.key_path.starts_with(path))
    }

    fn port_spec(&mut self, node: &Node, path: &str) -> Option<Port> {
        const KNOWN: &[&str] = &[
            "port",
            "start_port",
            "end_port",
            "handlers",
            "force_https",
            "tls_options",
            "http_options",
            "proxy_proto_options",
        ];
        const HANDLERS: &[&str] = &["http", "tls", "pg_tls", "proxy_proto", "edge_http"];
        let entries = self.table(node, path)?;
        let mut port = Port::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "port" => port.port = self.port(n, &p),
                "start_port" => port.start_port = self.port(n, &p),
                "end_port" => port.end_port = self.port(n, &p),
                "handlers" => {
                    port.handlers = self.strings(n, &p).unwrap_or_default();
                    for h in &port.handlers {
                        if !HANDLERS.contains(&h.as_str()) {
                            let hint = suggest(h, HANDLERS);
                            self.push(
                                Severity::Warning,
                                DiagnosticKind::InvalidValue,
                                n.offset,
                                &p,
                                format!(
                                    "unknown handler {h:?} in {p:?}; known handlers are http, tls, pg_tls and proxy_proto"
                                ),
                                hint,
                            );
                        }
                    }
                }
                "force_https" => port.force_https = self.boolean(n, &p),
                "tls_options" => {
                    port.tls_options = self.table(n, &p).map(|_| opaque(n));
                    self.unsupported(e, path, "terminates TLS with its defaults");
                }
                "http_options" => {
                    port.http_options = self.table(n, &p).map(|_| opaque(n));
                    self.unsupported(e, path, "proxies HTTP with its defaults");
                }
                "proxy_proto_options" => {
                    port.proxy_proto_options = self.table(n, &p).map(|_| opaque(n));
                    self.unsupported(e, path, "sends PROXY protocol v1");
                }
                _ => self.unknown(e, path, KNOWN),
            }
        }
        match (port.start_port, port.end_port) {
            (Some(a), Some(b)) if a > b => self.error(
                node,
                path,
                format!(
                    "port range {a}-{b} in {path:?} is empty; start_port must not exceed end_port"
                ),
            ),
            (Some(_), None) | (None, Some(_)) => self.error(
                node,
                path,
                format!("{path:?} needs both start_port and end_port for a range"),
            ),
            _ => {}
        }
        if port.port.is_none() && port.start_port.is_none() && !self.has_error_at(path) {
            self.error(
                node,
                path,
                format!("{path:?} has no port; add port = 80 (or start_port and end_port)"),
            );
        }
        Some(port)
    }

    fn compute(&mut self, node: &Node, path: &str) -> Option<Compute> {
        const KNOWN: &[&str] = &[
            "size",
            "memory",
            "cpus",
            "cpu_kind",
            "memory_mb",
            "gpus",
            "gpu_kind",
            "kernel_args",
            "host_dedication_id",
            "persist_rootfs",
            "processes",
        ];
        let entries = self.table(node, path)?;
        let mut c = Compute::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "size" => {
                    if let Some(mut size) = self.string(n, &p) {
                        // Fly v1 called performance CPUs "dedicated-cpu-Nx".
                        let renamed = size
                            .strip_prefix("dedicated-cpu-")
                            .map(|rest| format!("performance-{rest}"))
                            .filter(|p| super::resolve::preset(p).is_some());
                        if let Some(renamed) = renamed {
                            self.push(
                                Severity::Warning,
                                DiagnosticKind::Legacy,
                                n.offset,
                                &p,
                                format!(
                                    "size {size:?} is Fly v1's name for {renamed:?}; read as {renamed:?}"
                                ),
                                Some(renamed.clone()),
                            );
                            size = renamed;
                        }
                        if super::resolve::preset(&size).is_none() {
                            self.push(
                                Severity::Error,
                                DiagnosticKind::InvalidValue,
                                n.offset,
                                &p,
                                format!(
                                    "unknown machine size {size:?}; use e.g. shared-cpu-1x, shared-cpu-2x, performance-1x, or set cpus and memory"
                                ),
                                suggest(&size, super::resolve::PRESET_NAMES),
                            );
                        } else {
                            c.size = Some(size);
                        }
                    }
                }
                "memory" => c.memory = self.memory(n, &p),
                "memory_mb" => c.memory_mb = self.memory(n, &p),
                "cpus" => {
                    c.cpus = self.u32(n, &p);
                    if c.cpus == Some(0) {
                        self.error(n, &p, format!("{p:?} is 0; a machine needs at least 1 CPU"));
                        c.cpus = None;
                    }
                }
                "cpu_kind" => c.cpu_kind = self.one_of(n, &p, &["shared", "performance"]),
                "gpus" => {
                    c.gpus = self.u32(n, &p);
                    self.unsupported(e, path, "runs machines without GPUs");
                }
                "gpu_kind" => {
                    c.gpu_kind = self.string(n, &p);
                    self.unsupported(e, path, "runs machines without GPUs");
                }
                "kernel_args" => {
                    c.kernel_args = self.strings(n, &p).unwrap_or_default();
                    self.unsupported(e, path, "runs containers, which share the host kernel");
                }
                "host_dedication_id" => {
                    c.host_dedication_id = self.string(n, &p);
                    self.unsupported(e, path, "runs every machine on this host");
                }
                "persist_rootfs" => {
                    c.persist_rootfs = self.one_of(n, &p, &["never", "restart", "always"]);
                    self.unsupported(e, path, "resets the root filesystem on every start");
                }
                "processes" => c.processes = self.strings(n, &p).unwrap_or_default(),
                _ => self.unknown(e, path, KNOWN),
            }
        }
        Some(c)
    }

    /// Memory in MB: an integer (MB) or a string with a unit; a multiple of 256 as Fly requires.
    fn memory(&mut self, node: &Node, path: &str) -> Option<u64> {
        let mb = self.size(node, path, 1)?;
        if mb == 0 {
            self.error(
                node,
                path,
                format!("{path:?} is 0; give the memory in MB, e.g. 512"),
            );
            return None;
        }
        if mb % 256 != 0 {
            self.error(
                node,
                path,
                format!(
                    "{path:?} is {mb} MB, which is not a multiple of 256 MB; Fly sizes memory in 256 MB steps (e.g. {})",
                    (mb / 256).max(1) * 256
                ),
            );
            return None;
        }
        Some(mb)
    }

    fn mount(&mut self, node: &Node, path: &str) -> Option<Mount> {
        const KNOWN: &[&str] = &[
            "source",
            "destination",
            "processes",
            "initial_size",
            "snapshot_retention",
            "scheduled_snapshots",
            "auto_extend_size_threshold",
            "auto_extend_size_increment",
            "auto_extend_size_limit",
        ];
        let entries = self.table(node, path)?;
        let mut m = Mount::default();
        let (mut source, mut destination) = (None, None);
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "source" => source = self.string(n, &p),
                "destination" => {
                    destination = self.string(n, &p);
                    match destination.as_deref() {
                        Some("/") => self.error(
                            n,
                            &p,
                            "a volume cannot be mounted on \"/\"; pick a directory such as \"/data\"".to_owned(),
                        ),
                        Some(d) if !d.is_empty() && !d.starts_with('/') => self.warn(
                            n.offset,
                            &p,
                            format!("mount destination {d:?} is not an absolute path; it is mounted at \"/{d}\""),
                        ),
                        _ => {}
                    }
                }
                "processes" => m.processes = self.strings(n, &p).unwrap_or_default(),
                "initial_size" => {
                    m.initial_size = self.size(n, &p, 1024);
                    if m.initial_size == Some(0) {
                        self.error(n, &p, format!("{p:?} must be at least 1 GB"));
                    }
                }
                "snapshot_retention" => m.snapshot_retention = self.bounded(n, &p, 1, 60),
                "scheduled_snapshots" => m.scheduled_snapshots = self.boolean(n, &p),
                // flyctl reads 0 in these three as "not set" (Go's zero value), so do we.
                "auto_extend_size_threshold" => {
                    m.auto_extend_size_threshold = if is_zero(n) {
                        None
                    } else {
                        self.bounded(n, &p, 50, 99)
                    };
                }
                "auto_extend_size_increment" => {
                    m.auto_extend_size_increment = if is_zero(n) {
                        None
                    } else {
                        self.size(n, &p, 1024)
                            .and_then(|v| self.range(n, &p, v, 1, 100))
                    };
                }
                "auto_extend_size_limit" => {
                    m.auto_extend_size_limit = if is_zero(n) {
                        None
                    } else {
                        self.size(n, &p, 1024)
                            .and_then(|v| self.range(n, &p, v, 1, 500))
                    };
                }
                _ => self.unknown(e, path, KNOWN),
            }
        }
        let extend = [
            m.auto_extend_size_threshold.is_some(),
            m.auto_extend_size_increment.is_some(),
            m.auto_extend_size_limit.is_some(),
        ];
        if extend.iter().any(|x| *x) && !extend.iter().all(|x| *x) {
            self.error(
                node,
                path,
                format!(
                    "{path:?} sets only some of auto_extend_size_threshold, auto_extend_size_increment and auto_extend_size_limit; set all three or none"
                ),
            );
        }
        match source {
            Some(s) if !s.is_empty() => m.source = s,
            _ => self.error(
                node,
                path,
                format!("mount {path:?} needs a source (the volume name)"),
            ),
        }
        match destination {
            Some(d) if !d.is_empty() => m.destination = d,
            _ => self.error(
                node,
                path,
                format!("mount {path:?} needs a destination path"),
            ),
        }
        Some(m)
    }

    fn bounded(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<u32> {
        self.int(node, path, min, max)
            .and_then(|v| u32::try_from(v).ok())
    }

    fn range(&mut self, node: &Node, path: &str, v: u64, min: u64, max: u64) -> Option<u64> {
        if v < min || v > max {
            self.error(
                node,
                path,
                format!("{path:?} is {v} GB; it must be between {min} and {max} GB"),
            );
            None
        } else {
            Some(v)
        }
    }

    fn statics(&mut self, node: &Node, path: &str) -> Option<StaticFiles> {
        const KNOWN: &[&str] = &[
            "guest_path",
            "url_prefix",
            "tigris_bucket",
            "index_document",
            "processes",
        ];
        let entries = self.table(node, path)?;
        let mut s = StaticFiles::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "guest_path" => s.guest_path = self.string(n, &p).unwrap_or_default(),
                "url_prefix" => s.url_prefix = self.string(n, &p).unwrap_or_default(),
                "tigris_bucket" => {
                    s.tigris_bucket = self.string(n, &p);
                    self.unsupported(e, path, "serves statics from the image only");
                }
                "index_document" => {
                    s.index_document = self.string(n, &p);
                    self.unsupported(e, path, "serves statics from the image only");
                }
                "processes" => s.processes = self.strings(n, &p).unwrap_or_default(),
                _ => self.unknown(e, path, KNOWN),
            }
        }
        if s.url_prefix.is_empty() {
            self.error(node, path, format!("{path:?} needs a url_prefix"));
        }
        if s.guest_path.is_empty() && s.tigris_bucket.is_none() {
            self.error(node, path, format!("{path:?} needs a guest_path"));
        }
        Some(s)
    }

    fn file_spec(&mut self, node: &Node, path: &str) -> Option<FileSpec> {
        const KNOWN: &[&str] = &[
            "guest_path",
            "raw_value",
            "local_path",
            "secret_name",
            "processes",
        ];
        let entries = self.table(node, path)?;
        let mut f = FileSpec::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "guest_path" => f.guest_path = self.string(n, &p).unwrap_or_default(),
                "raw_value" => f.raw_value = self.string(n, &p),
                "local_path" => f.local_path = self.string(n, &p),
                "secret_name" => f.secret_name = self.string(n, &p),
                "processes" => f.processes = self.strings(n, &p).unwrap_or_default(),
                _ => self.unknown(e, path, KNOWN),
            }
        }
        if !f.guest_path.starts_with('/') {
            self.error(
                node,
                path,
                format!("{path:?} needs an absolute guest_path, e.g. \"/etc/app/config.yaml\""),
            );
        }
        let sources = [
            f.raw_value.is_some(),
            f.local_path.is_some(),
            f.secret_name.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            self.error(
                node,
                path,
                format!(
                    "{path:?} sets more than one of raw_value, local_path and secret_name; keep one"
                ),
            );
        }
        Some(f)
    }

    fn metrics(&mut self, node: &Node, path: &str) -> Option<Metrics> {
        const KNOWN: &[&str] = &["port", "path", "https", "processes"];
        let entries = self.table(node, path)?;
        let mut m = Metrics::default();
        let mut port = None;
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "port" => port = self.port(n, &p),
                "path" => m.path = self.string(n, &p).unwrap_or_default(),
                "https" => m.https = self.boolean(n, &p),
                "processes" => m.processes = self.strings(n, &p).unwrap_or_default(),
                _ => self.unknown(e, path, KNOWN),
            }
        }
        if m.path.is_empty() {
            m.path = "/metrics".to_owned();
        }
        match port {
            Some(p) => m.port = p,
            None => {
                if !self.has_error_at(path) {
                    self.error(node, path, format!("{path:?} needs a port"));
                }
                return None;
            }
        }
        Some(m)
    }

    fn restart(&mut self, node: &Node, path: &str) -> Option<Restart> {
        const KNOWN: &[&str] = &["policy", "retries", "processes"];
        let entries = self.table(node, path)?;
        let mut r = Restart::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "policy" => {
                    r.policy = self.one_of(n, &p, &["always", "never", "on-failure", "no"]);
                }
                "retries" | "max_retries" => r.retries = self.u32(n, &p),
                "processes" => r.processes = self.strings(n, &p).unwrap_or_default(),
                _ => self.unknown(e, path, KNOWN),
            }
        }
        Some(r)
    }

    fn experimental(
        &mut self,
        node: &Node,
        path: &str,
        kill_timeout: &mut Option<GoDuration>,
        metrics: &mut (Option<u16>, Option<String>, usize),
    ) -> Option<Experimental> {
        const KNOWN: &[&str] = &[
            "cmd",
            "entrypoint",
            "exec",
            "auto_rollback",
            "enable_consul",
            "enable_etcd",
            "lazy_load_images",
            "attached",
            "machine_config",
            "kill_timeout",
            "metrics_port",
            "metrics_path",
        ];
        let entries = self.table(node, path)?;
        let mut x = Experimental::default();
        for e in entries {
            let p = join(path, &e.key);
            let n = &e.node;
            match e.key.as_str() {
                "cmd" => x.cmd = self.argv(n, &p),
                "entrypoint" => x.entrypoint = self.argv(n, &p),
                "exec" => x.exec = self.argv(n, &p),
                "auto_rollback" => {
                    x.auto_rollback = self.boolean(n, &p);
                    self.unsupported(
                        e,
                        path,
                        "a failed deploy always leaves the previous release serving",
                    );
                }
                "enable_consul" => {
                    x.enable_consul = self.boolean(n, &p);
                    self.unsupported(e, path, "provides no Consul cluster");
                }
                "enable_etcd" => {
                    x.enable_etcd = self.boolean(n, &p);
                    self.unsupported(e, path, "provides no etcd cluster");
                }
                "lazy_load_images" => {
                    x.lazy_load_images = self.boolean(n, &p);
                    self.unsupported(e, path, "unpacks whole images");
                }
                "attached" => {
                    x.attached = Some(opaque(n));
                    self.unsupported(e, path, "does not export attached secrets");
                }
                "machine_config" => {
                    x.machine_config = self.string(n, &p);
                    self.unsupported(e, path, "does not merge a base machine config");
                }
                "kill_timeout" => *kill_timeout = self.kill_timeout(n, &p),
                "metrics_port" => {
                    metrics.0 = self.port(n, &p);
                    metrics.2 = e.key_offset;
                }
                "metrics_path" => metrics.1 = self.string(n, &p),
                "private_network" | "allowed_public_ports" | "auto_stop_machines" => {
                    self.legacy(e, path, "it only applied to Fly's v1 platform");
                }
                _ => self.unknown(e, path, KNOWN),
            }
        }
        Some(x)
    }

    fn opaque_list(&mut self, node: &Node, path: &str) -> Vec<Value> {
        self.tables(node, path)
            .into_iter()
            .map(|(_, n)| opaque(n))
            .collect()
    }
}

fn is_zero(node: &Node) -> bool {
    matches!(node.value, NodeValue::Int(0))
}

/// A subtree kept as written (sections Hangar stores but does not interpret).
pub(crate) fn opaque(node: &Node) -> Value {
    match &node.value {
        NodeValue::Str(s) | NodeValue::Datetime(s) => Value::String(s.clone()),
        NodeValue::Int(i) => Value::from(*i),
        NodeValue::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        NodeValue::Bool(b) => Value::Bool(*b),
        NodeValue::Null => Value::Null,
        NodeValue::Array(items) => Value::Array(items.iter().map(opaque).collect()),
        NodeValue::Table(entries) => Value::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), opaque(&e.node)))
                .collect(),
        ),
    }
}
