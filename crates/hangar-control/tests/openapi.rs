//! Drift tests of `openapi.json` against the router and the Rust types (no root, no server).
//!
//! The router's routes are read from the source of `src/api/mod.rs`: listing them from a
//! built `Router` would need a `Control` with real stores, a runtime and a network, and
//! the `.route("...", method(handler))` calls are regular enough to scan.

use std::collections::BTreeSet;

use hangar_control::ApiError;
use hangar_control::api::OPENAPI;
use serde_json::{Value, json};

const ROUTER_SOURCE: &str = include_str!("../src/api/mod.rs");
const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];
/// Routes served without a token.
const PUBLIC: &[(&str, &str)] = &[("GET", "/healthz"), ("GET", "/v1/openapi.json")];

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is not valid JSON")
}

/// The `(METHOD, path)` pairs the router registers, scanned from `.route(...)` calls.
fn router_routes(src: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(at) = rest.find(".route(") {
        let call = &rest[at + ".route(".len()..];
        let args = balanced_args(call);
        let path = first_string_literal(args).expect("a .route( call without a path literal");
        let methods =
            method_calls(&args[args.find(&format!("\"{path}\"")).unwrap() + path.len() + 2..]);
        assert!(!methods.is_empty(), "no method found for route {path}");
        for m in methods {
            out.insert((m.to_ascii_uppercase(), path.clone()));
        }
        rest = &call[args.len()..];
    }
    out
}

/// The text up to the parenthesis that closes the call (string literals skipped).
fn balanced_args(s: &str) -> &str {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' => depth += 1,
            ')' if depth == 0 => return &s[..i],
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced .route( call in src/api/mod.rs");
}

fn first_string_literal(s: &str) -> Option<String> {
    let start = s.find('"')? + 1;
    let len = s[start..].find('"')?;
    Some(s[start..start + len].to_owned())
}

/// Method-router constructors in a handler expression: `get(`, `.post(`, `axum::routing::delete(`.
fn method_calls(s: &str) -> Vec<&'static str> {
    // Blank out string literals so that text inside them is not read as a call.
    let mut code = String::with_capacity(s.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in s.chars() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            code.push(' ');
        } else {
            in_str = c == '"';
            code.push(c);
        }
    }
    let s = code.as_str();
    let mut out = Vec::new();
    for (i, _) in s.char_indices() {
        let before = s[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        for m in METHODS {
            if s[i..].starts_with(m) && s[i + m.len()..].starts_with('(') {
                out.push(*m);
            }
        }
    }
    out
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (key, _) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&key.as_str()) {
                out.insert((key.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn scanner_reads_single_and_chained_routes() {
    let src = r#"
        Router::new()
            .route("/a", get(h::a).post(h::b))
            .route(
                "/a/{id}",
                get(h::c)
                    .delete(h::d),
            )
            .route("/b/{x}", axum::routing::delete(h::e))
            .route("/c", post(|| async { Json(json!({"get(": 1})) }))
    "#;
    let routes = router_routes(src);
    let want: BTreeSet<(String, String)> = [
        ("GET", "/a"),
        ("POST", "/a"),
        ("GET", "/a/{id}"),
        ("DELETE", "/a/{id}"),
        ("DELETE", "/b/{x}"),
        ("POST", "/c"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(routes, want);
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let routes = router_routes(ROUTER_SOURCE);
    assert!(
        routes.len() >= 20,
        "the scan of src/api/mod.rs found only {routes:?}: has the router's layout changed?"
    );
    let documented = documented_routes(&doc());
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        phantom.is_empty(),
        "openapi.json documents routes the router does not serve: {phantom:?}"
    );
}

#[test]
fn document_is_canonical_openapi_3_1() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    // Sorted keys and two-space indentation keep diffs of the hand-edited file small.
    let canonical = serde_json::to_string_pretty(&d).unwrap() + "\n";
    assert!(
        canonical == OPENAPI,
        "openapi.json is not pretty-printed with sorted keys: rewrite it with \
         `python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); \
         open(sys.argv[1],\"w\").write(json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False)+\"\\n\")' openapi.json`"
    );
}

/// Every `$ref` in `v`, with the JSON pointer where it appears.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push((
                        at.to_owned(),
                        x.as_str().expect("$ref is a string").to_owned(),
                    ));
                } else {
                    refs(x, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("{reference} is not a local reference"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("{reference} does not resolve"))
}

#[test]
fn every_reference_resolves_and_every_schema_is_used() {
    let d = doc();
    let mut all = Vec::new();
    refs(&d, "", &mut all);
    assert!(!all.is_empty());
    let mut used = BTreeSet::new();
    for (at, r) in &all {
        assert!(
            d.pointer(r.trim_start_matches('#')).is_some(),
            "{at}: $ref {r} does not resolve"
        );
        used.insert(r.clone());
    }
    for kind in ["schemas", "responses"] {
        for name in d["components"][kind].as_object().unwrap().keys() {
            let r = format!("#/components/{kind}/{name}");
            assert!(used.contains(&r), "{r} is defined but never used");
        }
    }
}

#[test]
fn operations_declare_auth_params_and_json_errors() {
    let d = doc();
    let codes: BTreeSet<u16> = [
        ApiError::BadRequest(String::new()),
        ApiError::Unauthorized(String::new()),
        ApiError::Forbidden(String::new()),
        ApiError::NotFound(String::new()),
        ApiError::Timeout(String::new()),
        ApiError::Conflict(String::new()),
        ApiError::Precondition(String::new()),
        ApiError::TooLarge(String::new()),
        ApiError::Unprocessable(String::new()),
        ApiError::Internal(String::new()),
        ApiError::BadGateway(String::new()),
    ]
    .iter()
    .map(|e| e.status().as_u16())
    .collect();
    let mut ids = BTreeSet::new();
    for (path, item) in d["paths"].as_object().unwrap() {
        let shared = item["parameters"].as_array().cloned().unwrap_or_default();
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let name = format!("{} {path}", method.to_ascii_uppercase());
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no operationId"));
            assert!(
                ids.insert(id.to_owned()),
                "{name}: operationId {id} is used twice"
            );

            let public = PUBLIC.contains(&(method.to_ascii_uppercase().as_str(), path.as_str()));
            assert_eq!(
                op.get("security") == Some(&json!([])),
                public,
                "{name}: only {PUBLIC:?} are public (\"security\": [])"
            );
            let responses = op["responses"].as_object().unwrap();
            assert_eq!(
                responses.contains_key("401"),
                !public,
                "{name}: 401 must be documented exactly on authenticated routes"
            );

            // Path templates and path parameters agree.
            let params: Vec<Value> = shared
                .iter()
                .chain(op["parameters"].as_array().into_iter().flatten())
                .map(|p| match p.get("$ref") {
                    Some(r) => resolve(&d, r.as_str().unwrap()).clone(),
                    None => p.clone(),
                })
                .collect();
            let in_template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let declared: BTreeSet<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(p["required"], true, "{name}: path parameters are required");
                    p["name"].as_str().unwrap()
                })
                .collect();
            assert_eq!(in_template, declared, "{name}: path parameters");

            let mut success = 0;
            for (code, resp) in responses {
                let status: u16 = code
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: response {code}"));
                let resp = match resp.get("$ref") {
                    Some(r) => resolve(&d, r.as_str().unwrap()),
                    None => resp,
                };
                assert!(
                    resp["description"].is_string(),
                    "{name} {code}: no description"
                );
                if status < 300 {
                    success += 1;
                    assert!(resp["content"].is_object(), "{name} {code}: no content");
                    continue;
                }
                assert!(
                    codes.contains(&status),
                    "{name}: {code} is not a status ApiError produces"
                );
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorResponse",
                    "{name} {code}: errors are {{\"error\": \"...\"}}"
                );
            }
            assert_eq!(success, 1, "{name}: one success response");
        }
    }
}

/// Checks `value` against `schema` (the subset of JSON Schema the document uses) and
/// reports every key the schema does not document, so that a new serialized field of a
/// Rust type shows up here.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref") {
        return check(doc, resolve(doc, r.as_str().unwrap()), value, at, errors);
    }
    if let Some(all) = schema.get("allOf") {
        // The members together document an object's keys: check each key against the union.
        let mut merged = json!({"type": "object", "properties": {}, "required": []});
        for s in all.as_array().unwrap() {
            let s = match s.get("$ref") {
                Some(r) => resolve(doc, r.as_str().unwrap()),
                None => s,
            };
            for (k, v) in s["properties"].as_object().into_iter().flatten() {
                merged["properties"][k] = v.clone();
            }
        }
        return check(doc, &merged, value, at, errors);
    }
    if let Some(one) = schema.get("oneOf") {
        let matching = one
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                let mut e = Vec::new();
                check(doc, s, value, at, &mut e);
                e.is_empty()
            })
            .count();
        if matching != 1 {
            errors.push(format!("{at}: {value} matches {matching} members of oneOf"));
        }
        return;
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        errors.push(format!("{at}: {value} is not {c}"));
    }
    if let Some(e) = schema.get("enum")
        && !e.as_array().unwrap().contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {e}"));
    }
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !allowed.is_empty() && !allowed.contains(&actual) {
        errors.push(format!("{at}: {actual} where the schema says {allowed:?}"));
        return;
    }
    if let Some(n) = value.as_f64()
        && (schema["minimum"].as_f64().is_some_and(|m| n < m)
            || schema["maximum"].as_f64().is_some_and(|m| n > m))
    {
        errors.push(format!("{at}: {n} is out of range"));
    }
    match value {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                check(doc, &schema["items"], x, &format!("{at}/{i}"), errors);
            }
        }
        Value::Object(m) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if !m.contains_key(r.as_str().unwrap()) {
                    errors.push(format!("{at}: required {r} is missing"));
                }
            }
            for (k, x) in m {
                let here = format!("{at}/{k}");
                if let Some(s) = schema["properties"].get(k) {
                    check(doc, s, x, &here, errors);
                } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object())
                {
                    check(doc, s, x, &here, errors);
                } else if schema.get("properties").is_some() {
                    errors.push(format!("{here}: not documented"));
                }
            }
        }
        _ => {}
    }
}

fn assert_conforms(schema_name: &str, value: &Value) {
    let d = doc();
    let mut errors = Vec::new();
    check(
        &d,
        &json!({"$ref": format!("#/components/schemas/{schema_name}")}),
        value,
        schema_name,
        &mut errors,
    );
    assert!(
        errors.is_empty(),
        "{schema_name} drifted from the Rust type:\n{}",
        errors.join("\n")
    );
}

/// A machine with every field of its config set, as the API returns it.
fn full_machine() -> hangar_core::Machine {
    let duration = json!("1m30s");
    let check = json!({
        "type": "http", "port": 8080, "interval": "15s", "timeout": duration, "grace_period": "5s",
        "method": "GET", "path": "/healthz", "protocol": "http", "tls_skip_verify": false,
        "tls_server_name": "x.internal", "headers": [{"name": "X-A", "values": ["1"]}]
    });
    let mut named = check.clone();
    named["kind"] = json!("readiness");
    serde_json::from_value(json!({
        "id": "0123456789abcd",
        "name": "web-1",
        "state": "started",
        "region": "local",
        "instance_id": "01HZZZZZZZZZZZZZZZZZZZZZZZ",
        "private_ip": "fdac::2",
        "private_ipv4": "172.31.0.2",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
        "config": {
            "image": "busybox:latest",
            "env": {"A": "1"},
            "init": {"exec": ["/bin/sh"], "entrypoint": ["/e"], "cmd": ["c"], "tty": true,
                     "swap_size_mb": 512, "kernel_args": ["quiet"]},
            "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512, "gpus": 1, "gpu_kind": "a10",
                      "kernel_args": ["quiet"]},
            "services": [{
                "protocol": "tcp", "internal_port": 8080, "autostop": "suspend", "autostart": true,
                "min_machines_running": 1,
                "ports": [{"port": 443, "handlers": ["tls", "http"], "force_https": true,
                           "tls_options": {"alpn": ["h2"]}, "http_options": {"compress": true},
                           "proxy_proto_options": {"version": "v2"}},
                          {"start_port": 9000, "end_port": 9010}],
                "checks": [check],
                "concurrency": {"type": "connections", "soft_limit": 20, "hard_limit": 25}
            }],
            "checks": {"alive": named},
            "mounts": [{"volume": "vol_1", "path": "/data", "name": "data", "size_gb": 1,
                        "encrypted": true, "extend_threshold_percent": 80, "add_size_gb": 1,
                        "size_gb_limit": 10}],
            "restart": {"policy": "on-failure", "max_retries": 3},
            "auto_destroy": true,
            "stop_config": {"signal": "SIGTERM", "timeout": 10_000_000_000u64},
            "metadata": {"role": "web"},
            "metrics": {"port": 9091, "path": "/metrics", "https": false},
            "statics": [{"guest_path": "/app/public", "url_prefix": "/static",
                         "tigris_bucket": "b", "index_document": "index.html"}],
            "files": [{"guest_path": "/etc/x", "raw_value": "eA==", "mode": 420},
                      {"guest_path": "/etc/y", "secret_name": "S"},
                      {"guest_path": "/etc/z", "image_config": "x"}],
            "schedule": "daily"
        },
        "image_ref": {"registry": "", "repository": "busybox", "tag": "latest",
                      "digest": "sha256:00", "labels": {"a": "b"}},
        "events": [{"id": "e1", "type": "exit", "status": "stopped", "source": "hangar",
                    "timestamp": 1_700_000_000_000i64,
                    "request": {"exit_event": {"exit_code": 0}}}],
        "checks": [{"name": "alive", "status": "passing", "output": "ok",
                    "updated_at": "2026-01-01T00:00:00Z"}],
        "host_status": "ok",
        "app_name": "web"
    }))
    .expect("the sample machine is a valid hangar_core::Machine")
}

#[test]
fn machine_schema_documents_every_serialized_field() {
    let m = full_machine();
    let v = serde_json::to_value(&m).unwrap();
    // Durations come back as strings, whatever form they were sent in.
    assert_eq!(v["config"]["stop_config"]["timeout"], "10s");
    assert_conforms("Machine", &v);
    assert_conforms("MachineEvent", &v["events"][0]);

    let mut minimal = v.clone();
    minimal["config"] =
        serde_json::to_value(hangar_core::machine::MachineConfig::default()).unwrap();
    minimal["events"] = json!([]);
    minimal.as_object_mut().unwrap().remove("image_ref");
    minimal["config"]["services"] = json!([{"internal_port": 80, "autostop": false}]);
    let m: hangar_core::Machine = serde_json::from_value(minimal).unwrap();
    assert_conforms("Machine", &serde_json::to_value(&m).unwrap());
}

#[test]
fn request_schemas_accept_what_the_types_accept() {
    // The create body a Fly client sends: nanosecond durations, boolean autostop.
    let body = json!({
        "config": {"image": "busybox", "stop_config": {"timeout": 5_000_000_000u64},
                   "services": [{"internal_port": 80, "autostop": true}]},
        "region": "", "skip_launch": true
    });
    assert_conforms("CreateMachineRequest", &body);
    let _: hangar_core::machine::MachineConfig =
        serde_json::from_value(body["config"].clone()).unwrap();
    assert_conforms("SignalRequest", &json!({"signal": 9}));
    assert_conforms("SignalRequest", &json!({"signal": "SIGTERM"}));
    assert_conforms(
        "StopRequest",
        &json!({"signal": "SIGTERM", "timeout": "10s"}),
    );

    // Durations in both forms the parser accepts, and in the form it writes, have a
    // documented type (the pattern itself is exercised by schemathesis against the server).
    for s in ["0", "10s", "1m30s", "500ms", "1.5h", "250us", "2h45m0.5s"] {
        let d: hangar_core::machine::GoDuration = s.parse().unwrap();
        assert_conforms("fly.Duration", &json!(s));
        assert_conforms("fly.Duration", &serde_json::to_value(d).unwrap());
    }
}

#[test]
fn image_and_log_schemas_match_the_runtime_types() {
    let img = hangar_runtime::image::ImageSummary {
        name: Some("busybox:latest".into()),
        manifest_digest: "sha256:aa".into(),
        config_digest: "sha256:bb".into(),
        size: 1234,
        layers: 1,
        created: None,
    };
    assert_conforms("hangar.ImageSummary", &serde_json::to_value(&img).unwrap());
    let gc = hangar_runtime::image::GcReport::default();
    assert_conforms("hangar.GcReport", &serde_json::to_value(gc).unwrap());
    let line = hangar_runtime::machine::LogLine {
        timestamp: "2026-01-01T00:00:00.000000001Z".into(),
        stream: "stdout".into(),
        message: "hi".into(),
        machine_id: "0123456789abcd".into(),
        instance_id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
    };
    assert_conforms("hangar.LogLine", &serde_json::to_value(&line).unwrap());
}

#[test]
fn checker_reports_undocumented_and_mistyped_fields() {
    let mut errors = Vec::new();
    let d = doc();
    let schema = json!({"$ref": "#/components/schemas/MachineEvent"});
    let bad =
        json!({"id": "e", "type": "t", "status": "s", "source": "u", "timestamp": "x", "extra": 1});
    check(&d, &schema, &bad, "ev", &mut errors);
    assert_eq!(errors.len(), 2, "{errors:?}");
    let mut errors = Vec::new();
    check(
        &d,
        &json!({"$ref": "#/components/schemas/fly.Duration"}),
        &json!("10 s"),
        "d",
        &mut errors,
    );
    // Patterns are not checked here; the type still is.
    assert!(errors.is_empty(), "{errors:?}");
    let mut errors = Vec::new();
    check(
        &d,
        &json!({"$ref": "#/components/schemas/fly.Duration"}),
        &json!(true),
        "d",
        &mut errors,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
}
