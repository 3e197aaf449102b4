//! Checks that span sections: process group references, mount destinations,
//! check ports, and strategy constraints. They run on the normalized model and
//! point at the key positions the walker recorded.

use std::collections::BTreeMap;

use super::diag::{DiagnosticKind, Severity, suggest};
use super::model::AppConfig;
use super::parse::Walker;
use super::resolve::default_group;

/// The offset of `path`, or of its nearest recorded parent.
fn locate(w: &Walker<'_>, path: &str) -> usize {
    let mut p = path.to_owned();
    loop {
        if let Some(o) = w.offsets.get(&p) {
            return *o;
        }
        match p.rfind(['.', '[']) {
            Some(i) => p.truncate(i),
            None => return w.offsets.get("").copied().unwrap_or(0),
        }
    }
}

fn error(w: &mut Walker<'_>, path: &str, message: String, suggestion: Option<String>) {
    let offset = locate(w, path);
    w.push(
        Severity::Error,
        DiagnosticKind::InvalidValue,
        offset,
        path,
        message,
        suggestion,
    );
}

fn warn(w: &mut Walker<'_>, path: &str, message: String) {
    let offset = locate(w, path);
    w.push(
        Severity::Warning,
        DiagnosticKind::InvalidValue,
        offset,
        path,
        message,
        None,
    );
}

/// Every `processes = [...]` list in the config, with its key path.
fn group_refs(cfg: &AppConfig) -> Vec<(String, &[String])> {
    let mut refs: Vec<(String, &[String])> = Vec::new();
    if let Some(h) = &cfg.http_service {
        refs.push(("http_service.processes".into(), &h.processes));
    }
    for (i, s) in cfg.services.iter().enumerate() {
        refs.push((format!("services[{i}].processes"), &s.processes));
    }
    for (name, c) in &cfg.checks {
        refs.push((format!("checks.{name}.processes"), &c.processes));
    }
    for (i, v) in cfg.vm.iter().enumerate() {
        refs.push((format!("vm[{i}].processes"), &v.processes));
    }
    for (i, m) in cfg.mounts.iter().enumerate() {
        refs.push((format!("mounts[{i}].processes"), &m.processes));
    }
    for (i, s) in cfg.statics.iter().enumerate() {
        refs.push((format!("statics[{i}].processes"), &s.processes));
    }
    for (i, f) in cfg.files.iter().enumerate() {
        refs.push((format!("files[{i}].processes"), &f.processes));
    }
    for (i, m) in cfg.metrics.iter().enumerate() {
        refs.push((format!("metrics[{i}].processes"), &m.processes));
    }
    for (i, r) in cfg.restart.iter().enumerate() {
        refs.push((format!("restart[{i}].processes"), &r.processes));
    }
    refs
}

pub(crate) fn validate(w: &mut Walker<'_>, cfg: &AppConfig) {
    let groups: Vec<String> = if cfg.processes.is_empty() {
        vec!["app".to_owned()]
    } else {
        cfg.processes.keys().cloned().collect()
    };
    let known: Vec<&str> = groups.iter().map(String::as_str).collect();
    for (path, list) in group_refs(cfg) {
        for (i, g) in list.iter().enumerate() {
            if !groups.contains(g) {
                let defined = if cfg.processes.is_empty() {
                    "there is no [processes] section, so the only group is \"app\"".to_owned()
                } else {
                    format!("defined groups: {}", known.join(", "))
                };
                error(
                    w,
                    &format!("{path}[{i}]"),
                    format!(
                        "process group {g:?} in {path:?} is not defined in [processes] ({defined})"
                    ),
                    suggest(g, &known),
                );
            }
        }
    }
    if cfg.processes.len() > 1 {
        let default = default_group(cfg);
        let mut unscoped = Vec::new();
        if cfg
            .http_service
            .as_ref()
            .is_some_and(|h| h.processes.is_empty())
        {
            unscoped.push("http_service".to_owned());
        }
        for (i, s) in cfg.services.iter().enumerate() {
            if s.processes.is_empty() {
                unscoped.push(format!("services[{i}]"));
            }
        }
        for path in unscoped {
            warn(
                w,
                &path,
                format!(
                    "{path:?} lists no processes, so only the default group {default:?} serves it; add processes = [\"{default}\"] to say so"
                ),
            );
        }
    }

    // Two mounts on one destination in the same group cannot both be mounted.
    let default = default_group(cfg);
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, m) in cfg.mounts.iter().enumerate() {
        let scope: Vec<String> = if m.processes.is_empty() {
            vec![default.clone()]
        } else {
            m.processes.clone()
        };
        for g in scope {
            let key = (g.clone(), m.destination.clone());
            if let Some(first) = seen.get(&key) {
                error(
                    w,
                    &format!("mounts[{i}].destination"),
                    format!(
                        "mounts[{first}] and mounts[{i}] both mount on {:?} in process group {g:?}; use one mount per destination",
                        m.destination
                    ),
                    None,
                );
            } else {
                seen.insert(key, i);
            }
        }
    }

    let fallback_port = cfg.http_service.as_ref().and_then(|h| h.internal_port);
    for (name, c) in &cfg.checks {
        let active = matches!(c.kind.as_deref(), Some("http" | "tcp"));
        if active && c.port.is_none() && fallback_port.is_none() {
            error(
                w,
                &format!("checks.{name}"),
                format!(
                    "check {name:?} has no port and there is no [http_service] internal_port to fall back to; add port = ..."
                ),
                None,
            );
        }
    }

    let strategy = cfg.deploy.as_ref().and_then(|d| d.strategy.as_deref());
    match strategy {
        Some(s @ ("canary" | "bluegreen")) if !cfg.mounts.is_empty() => error(
            w,
            "deploy.strategy",
            format!(
                "the {s} strategy cannot be used with [[mounts]]: a volume is attached to one machine at a time; use \"rolling\" or \"immediate\""
            ),
            None,
        ),
        Some("bluegreen") => {
            let has_checks = !cfg.checks.is_empty()
                || cfg
                    .http_service
                    .as_ref()
                    .is_some_and(|h| !h.checks.is_empty())
                || cfg
                    .services
                    .iter()
                    .any(|s| !s.tcp_checks.is_empty() || !s.http_checks.is_empty());
            if !has_checks {
                warn(
                    w,
                    "deploy.strategy",
                    "the bluegreen strategy has no health check to tell when the green machines are ready, so traffic switches as soon as they start; add [[http_service.checks]] or [checks]".to_owned(),
                );
            }
        }
        _ => {}
    }
}
