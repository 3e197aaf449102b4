//! Arbitrary input never panics the parser, and every diagnostic has a position
//! inside the file.

use hangar_core::config::{self, Format};
use proptest::prelude::*;

/// Keys Fly knows, a few near-misses, and nonsense, so generated documents reach
/// deep into the schema walker.
const KEYS: &[&str] = &[
    "app",
    "primary_region",
    "kill_signal",
    "kill_timeout",
    "swap_size_mb",
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
    "mount",
    "statics",
    "files",
    "metrics",
    "restart",
    "experimental",
    "internal_port",
    "internal_prot",
    "ports",
    "port",
    "start_port",
    "end_port",
    "handlers",
    "concurrency",
    "soft_limit",
    "hard_limit",
    "type",
    "tcp_checks",
    "http_checks",
    "interval",
    "timeout",
    "grace_period",
    "headers",
    "memory",
    "memory_mb",
    "cpus",
    "cpu_kind",
    "size",
    "source",
    "destination",
    "initial_size",
    "strategy",
    "release_command",
    "auto_stop_machines",
    "cmd",
    "name",
    "command",
    "policy",
    "retries",
    "guest_path",
    "url_prefix",
    "path",
    "zz",
];

fn value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        (-70_000i64..70_000).prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        "[a-z0-9 ,./'\"-]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("10s"),
            Just("1gb"),
            Just("20,25"),
            Just("shared-cpu-1x"),
            Just("web"),
            Just("-1s"),
            Just("stop"),
            Just("http"),
            Just("/data"),
            Just("SIGTERM"),
        ]
        .prop_map(serde_json::Value::from),
        (-1e6f64..1e6).prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..6).prop_map(|m| {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn document() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::btree_map(prop::sample::select(KEYS), value(), 0..8).prop_map(|m| {
        serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

fn assert_located(src: &str, parsed: &config::Parsed) {
    let lines = u32::try_from(src.lines().count()).unwrap() + 1;
    for d in &parsed.diagnostics {
        assert!(d.line >= 1 && d.line <= lines, "{d:?} in\n{src}");
        assert!(d.column >= 1, "{d:?} in\n{src}");
        assert_eq!(d.file, "f");
    }
    if parsed.config.is_none() {
        assert!(
            parsed.errors().next().is_some(),
            "no model and no error for\n{src}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn structured_documents_never_panic_and_every_diagnostic_is_located(doc in document()) {
        let toml = config::to_toml_string(&doc).unwrap();
        let parsed = config::parse(&toml, Format::Toml, "f");
        assert_located(&toml, &parsed);
        // Whatever parses without errors resolves.
        if let Some(cfg) = parsed.config.as_ref().filter(|_| parsed.errors().next().is_none()) {
            // ... into machine configs the Machines API accepts.
            let resolved = config::resolve(cfg, "img").unwrap();
            for (group, g) in &resolved.groups {
                prop_assert!(g.machine.validate(None).is_ok(), "{group}: {:?}\n{toml}", g.machine.validate(None));
            }
        }
        let json = serde_json::to_string_pretty(&doc).unwrap();
        assert_located(&json, &config::parse(&json, Format::Json, "f"));
        let yaml = serde_yaml::to_string(&doc).unwrap();
        assert_located(&yaml, &config::parse(&yaml, Format::Yaml, "f"));
    }

    #[test]
    fn arbitrary_text_never_panics(src in "(?s).{0,200}") {
        for format in [Format::Toml, Format::Json, Format::Yaml] {
            assert_located(&src, &config::parse(&src, format, "f"));
        }
    }

    #[test]
    fn toml_like_text_never_panics(lines in prop::collection::vec(
        prop_oneof![
            "\\[{1,2}[a-z_.]{1,20}\\]{1,2}",
            "[a-z_]{1,14} = [0-9\"a-z\\[\\], {}=.-]{0,20}",
            "[a-z_]{1,8}\\.[a-z_]{1,8} = [0-9]{1,6}",
        ],
        0..16,
    )) {
        let src = lines.join("\n");
        assert_located(&src, &config::parse(&src, Format::Toml, "f"));
    }
}
