//! `hangar config validate` / `hangar config show`.
//!
//! The command module is compiled into this test crate too (`#[path]`), so its
//! output and exit codes are tested in-process whether or not `main.rs` wires it
//! yet; the last test runs the real binary.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use hangar_core::config::{self, Format};

// Only `run_with` and the argument types are used here; `run` is for the binary.
#[allow(dead_code)]
#[path = "../src/cmd/config.rs"]
mod config_cmd;

use config_cmd::{ConfigArgs, ConfigCommand};

#[derive(Parser)]
struct TestCli {
    #[command(subcommand)]
    command: ConfigCommand,
}

/// Runs `hangar config <args>` in-process: (exit code, stdout, stderr).
fn run(args: &[&str], json: bool) -> (ExitCode, String, String) {
    let cli = TestCli::try_parse_from(std::iter::once("config").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("bad test arguments {args:?}: {e}"));
    let args = ConfigArgs {
        command: cli.command,
        json,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = config_cmd::run_with(&args, &mut out, &mut err).expect("the command runs");
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const TYPO: &str = r#"app = "typo"

[http_service]
  internal_prot = 8080
  force_https = true
"#;

#[test]
fn validate_prints_a_misspelled_key_like_a_compiler_and_strict_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "fly.toml", TYPO);
    let (code, out, err) = run(&["validate", "-c", &file], false);
    assert_eq!(code, ExitCode::SUCCESS, "warnings alone pass: {err}");
    assert!(
        err.contains(
            "warning: unknown key \"internal_prot\" in [http_service]; did you mean \"internal_port\"?"
        ),
        "{err}"
    );
    assert!(err.contains(&format!("  --> {file}:4:3")), "{err}");
    assert!(out.contains("valid, 0 errors, 1 warning"), "{out}");

    let (code, out, _) = run(&["validate", "-c", &file, "--strict"], false);
    assert_eq!(code, ExitCode::FAILURE);
    assert!(out.contains("invalid"), "{out}");
}

#[test]
fn validate_json_lists_diagnostics_with_positions_and_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "fly.toml", TYPO);
    let (code, out, _) = run(&["validate", "-c", &file], true);
    assert_eq!(code, ExitCode::SUCCESS);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], true);
    let d = &report["diagnostics"][0];
    assert_eq!(d["severity"], "warning");
    assert_eq!(d["kind"], "unknown-key");
    assert_eq!(d["line"], 4);
    assert_eq!(d["column"], 3);
    assert_eq!(d["key_path"], "http_service.internal_prot");
    assert_eq!(d["suggestion"], "internal_port");
}

#[test]
fn validate_fails_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "fly.toml",
        "app = \"x\"\n[[services]]\ninternal_port = 8080\n[[services.ports]]\nport = 70000\n",
    );
    let (code, out, err) = run(&["validate", "-c", &file], false);
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.contains(
            "error: port 70000 in \"services[0].ports[0].port\" is out of range; use 1-65535"
        ),
        "{err}"
    );
    assert!(err.contains(":5:8"), "{err}");
    assert!(out.contains("invalid, 1 error"), "{out}");
}

#[test]
fn show_json_parses_back_to_the_same_model() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/real-world/fly/061-superfly__flyctl__internal__appconfig__testdata__validate-groups.toml"
    );
    let src = std::fs::read_to_string(fixture).unwrap();
    let original = config::parse(&src, Format::Toml, "fly.toml")
        .config
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "fly.toml", &src);

    let (code, json, _) = run(&["show", "-c", &file], true);
    assert_eq!(code, ExitCode::SUCCESS);
    let again = config::parse(&json, Format::Json, "fly.json");
    assert!(again.errors().next().is_none(), "{:?}", again.diagnostics);
    assert_eq!(again.config.unwrap(), original);

    let (code, toml, _) = run(&["show", "-c", &file], false);
    assert_eq!(code, ExitCode::SUCCESS);
    let again = config::parse(&toml, Format::Toml, "shown.toml");
    assert_eq!(again.config.unwrap(), original, "{toml}");
}

#[test]
fn show_machines_prints_one_config_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "fly.toml",
        "app = \"x\"\nprimary_region = \"home\"\n[processes]\nweb = \"serve --port 8080\"\nworker = \"work\"\n[http_service]\ninternal_port = 8080\nprocesses = [\"web\"]\n",
    );
    let (code, out, _) = run(
        &["show", "-c", &file, "--machines", "--image", "demo:1"],
        true,
    );
    assert_eq!(code, ExitCode::SUCCESS);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["groups"]["web"]["machine"]["image"], "demo:1");
    assert_eq!(
        v["groups"]["web"]["machine"]["init"]["cmd"],
        serde_json::json!(["serve", "--port", "8080"])
    );
    assert_eq!(v["groups"]["web"]["has_services"], true);
    assert_eq!(v["groups"]["worker"]["has_services"], false);
    assert_eq!(
        v["groups"]["worker"]["machine"]["env"]["FLY_PROCESS_GROUP"],
        "worker"
    );
}

#[test]
fn show_refuses_a_config_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "fly.toml", "kill_timeout = \"soon\"\n");
    let args = TestCli::try_parse_from(["config", "show", "-c", &file]).unwrap();
    let args = ConfigArgs {
        command: args.command,
        json: false,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let e = config_cmd::run_with(&args, &mut out, &mut err).unwrap_err();
    assert!(e.to_string().contains("has 1 error"), "{e}");
    assert!(String::from_utf8(err).unwrap().contains("kill_timeout"));
}

#[test]
fn discovery_prefers_hangar_toml_and_explains_when_nothing_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let err = config_cmd::locate(Some(dir.path())).unwrap_err();
    assert!(
        err.to_string().contains("no hangar.toml or fly.toml"),
        "{err}"
    );
    write(dir.path(), "fly.yaml", "app: y\n");
    assert!(
        config_cmd::locate(Some(dir.path()))
            .unwrap()
            .ends_with("fly.yaml")
    );
    write(dir.path(), "fly.toml", "app = \"f\"\n");
    assert!(
        config_cmd::locate(Some(dir.path()))
            .unwrap()
            .ends_with("fly.toml")
    );
    write(dir.path(), "hangar.toml", "app = \"h\"\n");
    assert!(
        config_cmd::locate(Some(dir.path()))
            .unwrap()
            .ends_with("hangar.toml")
    );
    // A directory given with -c is searched the same way.
    let dir_arg = dir.path().display().to_string();
    let (code, out, _) = run(&["validate", "-c", &dir_arg], false);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.contains("hangar.toml: valid"), "{out}");
}

#[test]
fn json_and_yaml_variants_validate_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "fly.json",
        "{\n  \"app\": \"j\",\n  \"http_service\": {\n    \"internal_prot\": 8080\n  }\n}\n",
    );
    let (_, out, _) = run(&["validate", "-c", &file], true);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["diagnostics"][0]["line"], 4, "{out}");
    assert_eq!(report["diagnostics"][0]["suggestion"], "internal_port");

    let file = write(
        dir.path(),
        "fly.yaml",
        "app: y\nhttp_service:\n  internal_prot: 8080\n",
    );
    let (_, out, _) = run(&["validate", "-c", &file], true);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["diagnostics"][0]["line"], 3, "{out}");
    assert_eq!(report["diagnostics"][0]["column"], 3, "{out}");
}

/// The real binary. `hangar config` is wired into `main.rs` by the integrator; until
/// then this test says so and checks nothing else.
#[test]
fn the_binary_validates_a_file() {
    let help = assert_cmd::Command::cargo_bin("hangar")
        .unwrap()
        .args(["config", "--help"])
        .output()
        .unwrap();
    let wired = help.status.success() && String::from_utf8_lossy(&help.stdout).contains("validate");
    if !wired {
        eprintln!(
            "SKIPPED: `hangar config` is not wired into crates/hangar/src/main.rs yet (the in-process tests above cover the command)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "fly.toml", TYPO);
    let output = assert_cmd::Command::cargo_bin("hangar")
        .unwrap()
        .args(["config", "validate", "-c", &file])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("did you mean \"internal_port\"?"),
        "{stderr}"
    );
    assert!(stderr.contains(":4:3"), "{stderr}");
    let output = assert_cmd::Command::cargo_bin("hangar")
        .unwrap()
        .args(["config", "validate", "--strict", "-c", &file])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}
