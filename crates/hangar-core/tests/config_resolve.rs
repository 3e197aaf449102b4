//! Resolution snapshots for representative real-world files, and round trips of the
//! normalized model through JSON, TOML and YAML for every fixture.

use std::path::PathBuf;

use hangar_core::config::{self, AppConfig, Format, Severity};
use serde::Serialize;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/real-world/fly"
);

fn fixture(prefix: &str) -> (String, String) {
    let mut found: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    assert_eq!(found.len(), 1, "fixture {prefix}");
    let path = found.pop().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    (name, std::fs::read_to_string(&path).unwrap())
}

#[derive(Serialize)]
struct Snapshot {
    /// Diagnostics as printed, one per line.
    diagnostics: Vec<String>,
    resolved: config::ResolvedApp,
}

fn check(prefix: &str) -> Snapshot {
    let (name, src) = fixture(prefix);
    let parsed = config::parse(&src, Format::Toml, &name);
    assert!(
        parsed.errors().next().is_none(),
        "{name}: {:#?}",
        parsed.diagnostics
    );
    let cfg = parsed.config.unwrap();
    Snapshot {
        diagnostics: parsed
            .diagnostics
            .iter()
            .map(|d| d.to_string().replace('\n', " "))
            .collect(),
        resolved: config::resolve(&cfg, "registry.example/app:v1").unwrap(),
    }
}

/// Old style: `[[services]]` with ports and `tcp_checks`, integer kill_timeout.
#[test]
fn old_style_services_with_tcp_checks() {
    insta::assert_yaml_snapshot!("old_style_indie_stack", check("002-"));
}

/// Fly v1 era: `[mount]`, `[metrics]` tables, millisecond check numbers, script checks.
#[test]
fn legacy_v1_postgres_ha() {
    insta::assert_yaml_snapshot!("legacy_postgres_ha", check("010-"));
}

/// New style: `[http_service]`, `[[vm]]`, `[[mounts]]`, `[processes]`.
#[test]
fn new_style_http_service_vm_processes_mounts() {
    insta::assert_yaml_snapshot!("new_style_ollama_open_webui", check("023-"));
}

/// Process groups scoping services, checks and mounts.
#[test]
fn process_groups_scope_services_checks_and_mounts() {
    insta::assert_yaml_snapshot!("groups_validate_groups", check("061-"));
}

/// flyctl's quirks: `[vm]` table with integer memory, `[mount]` with integer size.
#[test]
fn format_quirks() {
    insta::assert_yaml_snapshot!("format_quirks", check("054-"));
}

/// Old `[experimental]` keys: string cmd/exec/entrypoint, kill_timeout, metrics_port.
#[test]
fn experimental_alt() {
    insta::assert_yaml_snapshot!("experimental_alt", check("055-"));
}

/// GPUs and several `[[vm]]` sections.
#[test]
fn compute_sections() {
    insta::assert_yaml_snapshot!("tomachine_compute", check("059-"));
}

fn all_valid_fixtures() -> Vec<(String, AppConfig)> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(&path).unwrap();
        let parsed = config::parse(&src, Format::Toml, &name);
        if parsed.errors().next().is_none() {
            out.push((name, parsed.config.unwrap()));
        }
    }
    assert!(out.len() >= 50);
    out
}

/// The normalized model written as JSON, TOML or YAML reads back to the same model,
/// with no errors and no warnings (the normalized form uses only canonical keys,
/// except keys that are themselves "not supported yet").
#[test]
fn every_fixture_round_trips_through_json_toml_and_yaml() {
    for (name, cfg) in all_valid_fixtures() {
        let json = serde_json::to_string_pretty(&cfg).unwrap();
        let toml = config::to_toml_string(&cfg).unwrap();
        let yaml = serde_yaml::to_string(&cfg).unwrap();
        for (format, text) in [
            (Format::Json, &json),
            (Format::Toml, &toml),
            (Format::Yaml, &yaml),
        ] {
            let again = config::parse(text, format, "shown");
            let bad: Vec<_> = again
                .diagnostics
                .iter()
                .filter(|d| {
                    d.severity == Severity::Error || d.kind == config::DiagnosticKind::UnknownKey
                })
                .collect();
            assert!(bad.is_empty(), "{name} as {format:?}: {bad:#?}\n{text}");
            assert_eq!(
                again.config.as_ref(),
                Some(&cfg),
                "{name} as {format:?}:\n{text}"
            );
        }
        // Serde alone (what API clients do) gives the same model too.
        let back: AppConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg, "{name} via serde");
    }
}

/// Resolution is a pure function: the same input gives the same output, and every
/// group gets the platform metadata and env.
#[test]
fn every_group_carries_platform_metadata_and_env() {
    for (name, cfg) in all_valid_fixtures() {
        let a = config::resolve(&cfg, "img").unwrap();
        let b = config::resolve(&cfg, "img").unwrap();
        assert_eq!(a, b, "{name}");
        assert!(a.groups.contains_key(&a.default_group), "{name}");
        for (group, g) in &a.groups {
            let m = &g.machine;
            assert_eq!(m.image, "img");
            assert_eq!(m.metadata["fly_process_group"], *group, "{name}");
            assert_eq!(m.metadata["fly_platform_version"], "v2", "{name}");
            assert_eq!(m.env["FLY_PROCESS_GROUP"], *group, "{name}");
            if let Some(region) = &cfg.primary_region {
                assert_eq!(&m.env["PRIMARY_REGION"], region, "{name}");
            }
            assert!(
                m.validate(None).is_ok(),
                "{name}/{group}: {:?}",
                m.validate(None)
            );
        }
    }
}
