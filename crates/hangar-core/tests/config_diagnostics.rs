//! Diagnostics: one `check` helper, one case per class of finding.

use hangar_core::config::{
    self, AppConfig, AutoStop, Diagnostic, DiagnosticKind, Format, Severity, has_fatal,
};
use hangar_core::machine::GoDuration;

fn parse(src: &str) -> (Option<AppConfig>, Vec<Diagnostic>) {
    let p = config::parse(src, Format::Toml, "fly.toml");
    (p.config, p.diagnostics)
}

/// Expects exactly one diagnostic and checks its severity, kind, position and message.
#[track_caller]
fn check(
    src: &str,
    severity: Severity,
    kind: DiagnosticKind,
    at: (u32, u32),
    fragment: &str,
) -> Diagnostic {
    let (_, diags) = parse(src);
    assert_eq!(
        diags.len(),
        1,
        "expected one diagnostic for\n{src}\ngot {diags:#?}"
    );
    let d = diags.into_iter().next().unwrap();
    assert_eq!((d.severity, d.kind), (severity, kind), "{d:#?}");
    assert_eq!((d.line, d.column), at, "{d:#?}");
    assert!(
        d.message.contains(fragment),
        "{:?} does not contain {fragment:?}",
        d.message
    );
    assert_eq!(d.file, "fly.toml");
    d
}

#[track_caller]
fn error(src: &str, at: (u32, u32), fragment: &str) -> Diagnostic {
    check(
        src,
        Severity::Error,
        DiagnosticKind::InvalidValue,
        at,
        fragment,
    )
}

#[track_caller]
fn clean(src: &str) -> AppConfig {
    let (cfg, diags) = parse(src);
    assert!(diags.is_empty(), "{src}\n{diags:#?}");
    cfg.unwrap()
}

#[test]
fn misspelled_key_is_a_warning_with_position_and_suggestion() {
    let d = check(
        "app = \"a\"\n\n[http_service]\n  internal_prot = 8080\n",
        Severity::Warning,
        DiagnosticKind::UnknownKey,
        (4, 3),
        "unknown key \"internal_prot\" in [http_service]; did you mean \"internal_port\"?",
    );
    assert_eq!(d.suggestion.as_deref(), Some("internal_port"));
    assert_eq!(d.key_path, "http_service.internal_prot");
    assert!(!has_fatal(std::slice::from_ref(&d), false));
    assert!(has_fatal(&[d], true), "--strict turns warnings into errors");
}

#[test]
fn unknown_sections_and_nested_keys_are_found_too() {
    let d = check(
        "[http_servce]\ninternal_port = 8080\n",
        Severity::Warning,
        DiagnosticKind::UnknownKey,
        (1, 2),
        "did you mean \"http_service\"?",
    );
    assert_eq!(d.key_path, "http_servce");
    let d = check(
        "[[services]]\ninternal_port = 1\n[[services.ports]]\nport = 80\nhandler = [\"http\"]\n",
        Severity::Warning,
        DiagnosticKind::UnknownKey,
        (5, 1),
        "in [services.ports]; did you mean \"handlers\"?",
    );
    assert_eq!(d.key_path, "services[0].ports[0].handler");
    check(
        "[[vm]]\nsize = \"shared-cpu-1x\"\nkill_signal = \"SIGTERM\"\n",
        Severity::Warning,
        DiagnosticKind::UnknownKey,
        (3, 1),
        "\"kill_signal\" is a top-level key: move it above the first [section] header",
    );
    check(
        "auto_stop_machines = true\n",
        Severity::Warning,
        DiagnosticKind::UnknownKey,
        (1, 1),
        "belongs in [http_service] or [[services]]",
    );
    check(
        "nothing_like_it = 1\n",
        Severity::Warning,
        DiagnosticKind::UnknownKey,
        (1, 1),
        "unknown key \"nothing_like_it\" in the top level; it is ignored",
    );
}

#[test]
fn keys_not_acted_on_yet_are_named_in_a_warning() {
    let d = check(
        "swap_size_mb = 512\n",
        Severity::Warning,
        DiagnosticKind::NotSupported,
        (1, 1),
        "\"swap_size_mb\" is not supported yet",
    );
    assert_eq!(d.key_path, "swap_size_mb");
    check(
        "[[vm]]\nsize = \"shared-cpu-1x\"\ngpus = 1\n",
        Severity::Warning,
        DiagnosticKind::NotSupported,
        (3, 1),
        "\"vm[0].gpus\" is not supported yet",
    );
    check(
        "[experimental]\nprivate_network = true\n",
        Severity::Warning,
        DiagnosticKind::Legacy,
        (2, 1),
        "\"experimental.private_network\" is ignored",
    );
}

#[test]
fn wrong_types_are_errors_at_the_value() {
    for (src, at, fragment) in [
        (
            "[http_service]\ninternal_port = true\n",
            (2, 17),
            "expected a port number, found a boolean",
        ),
        (
            "[http_service]\nforce_https = \"yes\"\n",
            (2, 15),
            "expected a boolean, found a string",
        ),
        ("env = 5\n", (1, 7), "expected a table"),
        (
            "app = [\"a\"]\n",
            (1, 7),
            "expected a string, found an array",
        ),
        (
            "[[vm]]\ncpus = \"two\"\n",
            (2, 8),
            "expected an integer, found a string",
        ),
        (
            "[[services]]\ninternal_port = \"eighty\"\n",
            (2, 17),
            "\"eighty\" is not a port number",
        ),
        (
            "[[mounts]]\nsource = \"d\"\ndestination = \"/d\"\nprocesses = \"app\"\n",
            (4, 13),
            "expected an array of strings",
        ),
    ] {
        let d = check(
            src,
            Severity::Error,
            DiagnosticKind::WrongType,
            at,
            fragment,
        );
        assert!(!d.key_path.is_empty());
    }
}

#[test]
fn ports_out_of_range_are_errors() {
    error(
        "[[services]]\ninternal_port = 0\n",
        (2, 17),
        "port 0 in \"services[0].internal_port\" is out of range; use 1-65535",
    );
    error(
        "[http_service]\ninternal_port = 65536\n",
        (2, 17),
        "out of range",
    );
    error(
        "[[services]]\ninternal_port = 80\n[[services.ports]]\nport = -1\n",
        (4, 8),
        "port -1",
    );
    error(
        "[[services]]\ninternal_port = 80\n[[services.ports]]\nstart_port = 20\nend_port = 10\n",
        (3, 1),
        "start_port must not exceed end_port",
    );
}

#[test]
fn memory_must_be_a_multiple_of_256_mb() {
    error(
        "[[vm]]\nmemory = 300\n",
        (2, 10),
        "300 MB, which is not a multiple of 256 MB",
    );
    error(
        "[[vm]]\nmemory = \"100mb\"\n",
        (2, 10),
        "not a multiple of 256",
    );
    error("[[vm]]\nmemory = 0\n", (2, 10), "is 0");
    error(
        "[[vm]]\nmemory = \"lots\"\n",
        (2, 10),
        "invalid size \"lots\"",
    );
    let cfg = clean(
        "[[vm]]\nmemory = \"1.5gb\"\n[[vm]]\nprocesses = [\"app\"]\nmemory = \"2GB\"\nmemory_mb = 1024\n",
    );
    assert_eq!(cfg.vm[0].memory, Some(1536));
    assert_eq!(cfg.vm[1].memory, Some(2048));
}

#[test]
fn process_groups_must_be_defined() {
    let d = error(
        "[processes]\nweb = \"serve\"\n[http_service]\ninternal_port = 80\nprocesses = [\"wbe\"]\n",
        (5, 14),
        "process group \"wbe\" in \"http_service.processes\" is not defined in [processes] (defined groups: web)",
    );
    assert_eq!(d.suggestion.as_deref(), Some("web"));
    error(
        "[[mounts]]\nsource = \"d\"\ndestination = \"/d\"\nprocesses = [\"worker\"]\n",
        (4, 14),
        "there is no [processes] section, so the only group is \"app\"",
    );
}

#[test]
fn two_mounts_on_one_destination_are_an_error() {
    error(
        "[[mounts]]\nsource = \"a\"\ndestination = \"/data\"\n[[mounts]]\nsource = \"b\"\ndestination = \"/data\"\n",
        (6, 1),
        "mounts[0] and mounts[1] both mount on \"/data\" in process group \"app\"",
    );
    // Different groups may use the same path.
    clean(
        "[processes]\na = \"x\"\nb = \"y\"\n[[mounts]]\nsource = \"a\"\ndestination = \"/data\"\nprocesses = [\"a\"]\n[[mounts]]\nsource = \"b\"\ndestination = \"/data\"\nprocesses = [\"b\"]\n",
    );
}

#[test]
fn negative_limits_and_durations_are_errors() {
    error(
        "[http_service.concurrency]\nsoft_limit = -1\n",
        (2, 14),
        "must not be negative",
    );
    error(
        "[http_service]\nmin_machines_running = -2\n",
        (2, 24),
        "must not be negative",
    );
    error(
        "[[services]]\ninternal_port = 1\nconcurrency = \"-1,5\"\n[[services.ports]]\nport = 80\n",
        (3, 15),
        "two non-negative numbers",
    );
    error("kill_timeout = -5\n", (1, 16), "must not be negative");
    error(
        "[[mounts]]\nsource = \"a\"\ndestination = \"/d\"\nsnapshot_retention = 90\n",
        (4, 22),
        "between 1 and 60",
    );
}

#[test]
fn other_values_that_cannot_work() {
    let d = error(
        "[deploy]\nstrategy = \"rolling-eyes\"\n",
        (2, 12),
        "use one of \"rolling\"",
    );
    assert_eq!(d.suggestion.as_deref(), Some("rolling"));
    error(
        "[processes]\nweb = \"'' --flag\"\n",
        (2, 7),
        "starts with an empty program name",
    );
    error(
        "[experimental]\ncmd = [\"\", \"x\"]\n",
        (2, 7),
        "starts with an empty program name",
    );
    error("kill_signal = \"SIGNOPE\"\n", (1, 15), "unknown signal");
    error(
        "[processes]\nweb = \"echo 'open\"\n",
        (2, 7),
        "cannot be split into arguments",
    );
    error(
        "[checks.alive]\ntype = \"tcp\"\n",
        (1, 9),
        "no port and there is no [http_service]",
    );
    error(
        "[deploy]\nstrategy = \"canary\"\n[[mounts]]\nsource = \"a\"\ndestination = \"/d\"\n",
        (2, 1),
        "canary strategy cannot be used with [[mounts]]",
    );
    error(
        "[[mounts]]\nsource = \"a\"\ndestination = \"/\"\n",
        (3, 15),
        "cannot be mounted on \"/\"",
    );
    error(
        "[[files]]\nguest_path = \"/a\"\nraw_value = \"eA==\"\nsecret_name = \"S\"\n",
        (1, 1),
        "more than one of raw_value",
    );
    error(
        "[checks.x]\nport = 80\ntype = \"grpc\"\n",
        (3, 8),
        "not \"http\" or \"tcp\"",
    );
}

#[test]
fn syntax_errors_carry_a_position() {
    let (cfg, diags) = parse("app = \"a\"\n[http_service\ninternal_port = 1\n");
    assert!(cfg.is_none());
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].kind, DiagnosticKind::Syntax);
    assert_eq!(diags[0].line, 2, "{diags:#?}");
    let (_, diags) = parse("a = 1\na = 2\n");
    assert_eq!((diags[0].line, diags[0].column), (2, 1), "{diags:#?}");
    assert!(diags[0].message.contains("duplicate key a"), "{diags:#?}");

    let p = config::parse("{\n  \"app\": \"x\",\n  oops\n}", Format::Json, "fly.json");
    assert_eq!(
        (p.diagnostics[0].line, p.diagnostics[0].column),
        (3, 3),
        "{:#?}",
        p.diagnostics
    );
    let p = config::parse("app: x\n  bad: [\n", Format::Yaml, "fly.yaml");
    assert!(p.config.is_none());
    assert!(p.diagnostics[0].line >= 2, "{:#?}", p.diagnostics);
}

#[test]
fn legacy_forms_are_normalized() {
    let cfg = clean(
        r#"
kill_timeout = 30
[build]
build_target = "prod"
[env]
PORT = 8080
DEBUG = false
[[services]]
internal_port = "8080"
concurrency = "20,25"
auto_stop_machines = true
[[services.ports]]
port = "80"
[[services.http_checks]]
interval = 10000
timeout = 2000
path = "/health"
headers = [{ name = "Host", value = "example.com" }]
[[processes]]
name = "app"
command = "bin/serve --fast"
[[checks]]
name = "alive"
type = "tcp"
port = 8080
[experimental]
cmd = "start"
"#,
    );
    assert_eq!(cfg.kill_timeout, Some(GoDuration::from_secs(30)));
    assert_eq!(cfg.build.unwrap().build_target.as_deref(), Some("prod"));
    assert_eq!(cfg.env["PORT"], "8080");
    assert_eq!(cfg.env["DEBUG"], "false");
    let s = &cfg.services[0];
    assert_eq!(s.internal_port, Some(8080));
    let c = s.concurrency.as_ref().unwrap();
    assert_eq!(
        (c.kind.as_deref(), c.soft_limit, c.hard_limit),
        (Some("requests"), Some(20), Some(25))
    );
    assert_eq!(s.auto_stop_machines, Some(AutoStop::Stop));
    assert_eq!(s.ports[0].port, Some(80));
    let check = &s.http_checks[0];
    assert_eq!(
        check.interval,
        Some(GoDuration::from_secs(10)),
        "numbers are milliseconds"
    );
    assert_eq!(check.timeout, Some(GoDuration::from_secs(2)));
    assert_eq!(check.headers["Host"], "example.com");
    assert_eq!(cfg.processes["app"], "bin/serve --fast");
    assert_eq!(cfg.checks["alive"].port, Some(8080));
    assert_eq!(
        cfg.experimental.unwrap().cmd,
        Some(vec!["start".to_owned()])
    );

    let cfg = clean(
        "[mount]\nsource = \"d\"\ndestination = \"/d\"\ninitial_size = \"30gb\"\n[metrics]\nport = 9091\n[compute]\nsize = \"shared-cpu-2x\"\n",
    );
    assert_eq!(cfg.mounts[0].initial_size, Some(30));
    assert_eq!(cfg.metrics[0].path, "/metrics");
    assert_eq!(cfg.vm[0].size.as_deref(), Some("shared-cpu-2x"));

    let cfg = clean("[http_service]\ninternal_port = 80\nauto_stop_machines = false\n");
    assert_eq!(
        cfg.http_service.unwrap().auto_stop_machines,
        Some(AutoStop::Off)
    );
}

#[test]
fn quoted_numbers_in_durations_are_read_with_a_warning() {
    let d = check(
        "kill_timeout = \"30\"\n",
        Severity::Warning,
        DiagnosticKind::InvalidValue,
        (1, 16),
        "a duration without a unit; Hangar reads seconds: write \"30s\"",
    );
    assert_eq!(d.key_path, "kill_timeout");
    let (cfg, _) = parse("[checks.a]\ntype = \"TCP\"\nport = 1\ninterval = \"15000\"\n");
    let c = &cfg.unwrap().checks["a"];
    assert_eq!(c.check.interval, Some(GoDuration::from_secs(15)));
    assert_eq!(
        c.kind.as_deref(),
        Some("tcp"),
        "check types are lower-cased"
    );
}

#[test]
fn fly_v1_dedicated_sizes_are_read_as_performance_sizes() {
    let d = check(
        "[[vm]]\nsize = \"dedicated-cpu-2x\"\n",
        Severity::Warning,
        DiagnosticKind::Legacy,
        (2, 8),
        "Fly v1's name for \"performance-2x\"",
    );
    assert_eq!(d.suggestion.as_deref(), Some("performance-2x"));
    let (cfg, _) = parse("[[vm]]\nsize = \"dedicated-cpu-2x\"\n");
    let guest = config::guest_of(&cfg.unwrap().vm[0]);
    assert_eq!(
        (guest.cpu_kind.as_str(), guest.cpus, guest.memory_mb),
        ("performance", 2, 4096)
    );
    error(
        "[[vm]]\nsize = \"dedicated-cpu-3x\"\n",
        (2, 8),
        "unknown machine size",
    );
}

#[test]
fn enumerated_values_ignore_case() {
    let cfg = clean(
        "[deploy]\nstrategy = \"Rolling\"\n[http_service]\ninternal_port = 80\nauto_stop_machines = \"Suspend\"\n",
    );
    assert_eq!(cfg.deploy.unwrap().strategy.as_deref(), Some("rolling"));
    assert_eq!(
        cfg.http_service.unwrap().auto_stop_machines,
        Some(AutoStop::Suspend)
    );
}

#[test]
fn out_of_range_check_durations_are_clamped_with_a_warning() {
    let (cfg, diags) = parse(
        "[[services]]\ninternal_port = 1\n[[services.ports]]\nport = 1\n[[services.tcp_checks]]\ninterval = \"500ms\"\ntimeout = \"2m\"\n",
    );
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert!(diags.iter().all(|d| d.severity == Severity::Warning));
    let c = &cfg.unwrap().services[0].tcp_checks[0];
    assert_eq!(c.interval, Some(GoDuration::from_secs(1)));
    assert_eq!(c.timeout, Some(GoDuration::from_secs(60)));
}

#[test]
fn json_and_yaml_files_use_the_same_schema() {
    let json = r#"{"app": "j", "http_service": {"internal_port": 8080, "auto_stop_machines": "stop"}, "vm": [{"memory": "1gb"}]}"#;
    let yaml = "app: j\nhttp_service:\n  internal_port: 8080\n  auto_stop_machines: stop\nvm:\n  - memory: 1gb\n";
    let a = config::parse(json, Format::Json, "fly.json");
    let b = config::parse(yaml, Format::Yaml, "fly.yaml");
    assert!(
        a.diagnostics.is_empty() && b.diagnostics.is_empty(),
        "{a:#?} {b:#?}"
    );
    assert_eq!(a.config, b.config);
    let cfg = a.config.unwrap();
    assert_eq!(cfg.vm[0].memory, Some(1024));
    assert_eq!(Format::from_path("x/fly.YML"), Format::Yaml);
    assert_eq!(Format::from_path("fly.json"), Format::Json);
    assert_eq!(Format::from_path("hangar.toml"), Format::Toml);
}

#[test]
fn discovery_order_prefers_hangar_over_fly() {
    assert_eq!(
        config::find_config_file(|n| n == "fly.toml" || n == "hangar.toml"),
        Some("hangar.toml")
    );
    assert_eq!(
        config::find_config_file(|n| n == "fly.yml"),
        Some("fly.yml")
    );
    assert_eq!(config::find_config_file(|_| false), None);
}

#[test]
fn diagnostics_serialize_with_every_field() {
    let (_, diags) = parse("[http_service]\ninternal_prot = 1\n");
    let v = serde_json::to_value(&diags[0]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "severity": "warning",
            "kind": "unknown-key",
            "message": "unknown key \"internal_prot\" in [http_service]; did you mean \"internal_port\"?",
            "file": "fly.toml",
            "line": 2,
            "column": 1,
            "key_path": "http_service.internal_prot",
            "suggestion": "internal_port"
        })
    );
    assert_eq!(
        diags[0].to_string(),
        "warning: unknown key \"internal_prot\" in [http_service]; did you mean \"internal_port\"?\n  --> fly.toml:2:1"
    );
}

#[test]
fn kill_timeout_above_five_minutes_is_clamped_with_a_warning() {
    let src = "app = \"a\"\nkill_timeout = 600\n";
    check(
        src,
        Severity::Warning,
        DiagnosticKind::InvalidValue,
        (2, 16),
        "above the maximum of 5m",
    );
    let (cfg, _) = parse(src);
    assert_eq!(cfg.unwrap().kill_timeout, Some(GoDuration::from_secs(300)));
    assert_eq!(
        clean("app = \"a\"\nkill_timeout = 300\n").kill_timeout,
        Some(GoDuration::from_secs(300))
    );
}
