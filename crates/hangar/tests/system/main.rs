//! Whole-system tests: a real `hangar server` (root, real runc, real namespaces), driven by
//! the real CLI and curl. They run one at a time (see `.config/nextest.toml`).

#![allow(clippy::unwrap_used)]

#[macro_use]
mod support;
mod build;
mod deploy;
mod proxy;
mod registry;
mod secrets;
mod tokens;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, curl, eventually, httpd_image};

fn machine_by_name(s: &Server, app: &str, name: &str) -> Value {
    let (code, list) = s.api("GET", &format!("/v1/apps/{app}/machines"), None);
    assert_eq!(code, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no machine {name} in {list}"))
}

fn machine(s: &Server, app: &str, id: &str) -> Value {
    let (code, m) = s.api("GET", &format!("/v1/apps/{app}/machines/{id}"), None);
    assert_eq!(code, 200, "{m}");
    m
}

fn events(s: &Server, app: &str, id: &str) -> Vec<Value> {
    let (code, ev) = s.api("GET", &format!("/v1/apps/{app}/machines/{id}/events"), None);
    assert_eq!(code, 200, "{ev}");
    ev.as_array().unwrap().clone()
}

fn wait_state(s: &Server, app: &str, id: &str, state: &str) {
    let (code, body) = s.api(
        "GET",
        &format!("/v1/apps/{app}/machines/{id}/wait?state={state}&timeout=60"),
        None,
    );
    assert_eq!(code, 200, "waiting for {state}: {body}\n{}", s.server_log());
}

fn link_master(ifname: &str) -> Option<String> {
    let target = std::fs::read_link(format!("/sys/class/net/{ifname}/master")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

#[test]
fn machines_run_are_reachable_isolated_per_org_and_destroy_leaves_nothing() {
    require_root!();
    let s = Server::start();
    s.import(&httpd_image(), "httpd:latest");
    s.ok(&["apps", "create", "web"]);
    s.ok(&["machine", "run", "httpd", "--app", "web", "--name", "m1"]);
    let m = machine_by_name(&s, "web", "m1");
    assert_eq!(m["state"], "started", "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let v4 = m["private_ipv4"].as_str().unwrap().to_owned();
    let v6 = m["private_ip"].as_str().unwrap().to_owned();
    assert!(
        v6.starts_with("fdab:"),
        "6PN address from the org's /48: {v6}"
    );

    let body = eventually(Duration::from_secs(10), "httpd over IPv4", || {
        curl(&format!("http://{v4}:8080/"))
    });
    assert_eq!(body, "hello from hangar\n");
    let body = eventually(Duration::from_secs(10), "httpd over IPv6", || {
        curl(&format!("http://[{v6}]:8080/"))
    });
    assert_eq!(body, "hello from hangar\n");

    // A second organization gets its own bridge.
    let (code, org) = s.api("POST", "/v1/orgs", Some(r#"{"slug":"acme"}"#));
    assert_eq!(code, 201, "{org}");
    let (code, app) = s.api(
        "POST",
        "/v1/apps",
        Some(r#"{"app_name":"other","org_slug":"acme"}"#),
    );
    assert_eq!(code, 201, "{app}");
    s.ok(&["machine", "run", "httpd", "--app", "other", "--name", "m2"]);
    let m2 = machine_by_name(&s, "other", "m2");
    let id2 = m2["id"].as_str().unwrap().to_owned();
    let b1 = link_master(&hangar_net::plan::host_veth_name(&id)).expect("veth of m1 on a bridge");
    let b2 = link_master(&hangar_net::plan::host_veth_name(&id2)).expect("veth of m2 on a bridge");
    assert_ne!(
        b1, b2,
        "machines of different organizations share bridge {b1}"
    );

    // `wait` for a state that does not come answers 408.
    let (code, body) = s.api(
        "GET",
        &format!("/v1/apps/web/machines/{id}/wait?state=stopped&timeout=1"),
        None,
    );
    assert_eq!(code, 408, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("stopped"),
        "{body}"
    );

    // Destroying a started machine needs force.
    let out = s.hangar(&["machine", "destroy", &id, "--app", "web"]);
    assert!(!out.status.success());
    let (code, body) = s.api("DELETE", &format!("/v1/apps/web/machines/{id}"), None);
    assert_eq!(code, 412, "{body}");

    let mdir = s.data_dir().join("machines").join(&id);
    assert!(mdir.exists());
    s.ok(&["machine", "destroy", &id, "--app", "web", "--force"]);
    assert_eq!(machine(&s, "web", &id)["state"], "destroyed");
    assert!(
        !Path::new(&format!("/run/netns/hangar-{id}")).exists(),
        "netns left behind"
    );
    assert!(
        !Path::new(&format!(
            "/sys/class/net/{}",
            hangar_net::plan::host_veth_name(&id)
        ))
        .exists(),
        "veth left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&id),
        "a mount of the machine is left behind"
    );
    assert!(!mdir.exists(), "bundle dir left behind");
    let state = Command::new("runc")
        .arg("--root")
        .arg(hangar_runtime::machine::run_dir_for(s.data_dir()).join("runc"))
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(!state.status.success(), "runc state left behind");
    for ctrl in ["memory", "pids", "cpu", "unified"] {
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/{ctrl}/hangar/{id}")).exists(),
            "cgroup {ctrl} left behind"
        );
    }
    assert!(curl(&format!("http://{v4}:8080/")).is_none());
}

#[test]
fn stop_is_graceful_then_forceful_and_exit_codes_are_recorded() {
    require_root!();
    let s = Server::start();
    s.import(
        &hangar_runtime::image::build::busybox_image(),
        "busybox:latest",
    );
    s.ok(&["apps", "create", "sig"]);
    s.ok(&[
        "machine",
        "run",
        "busybox",
        "--app",
        "sig",
        "--name",
        "graceful",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' INT; sleep 1000 & wait",
    ]);
    s.ok(&[
        "machine",
        "run",
        "busybox",
        "--app",
        "sig",
        "--name",
        "stubborn",
        "--stop-timeout",
        "1s",
        "--",
        "sh",
        "-c",
        "trap '' INT; while true; do sleep 1; done",
    ]);
    let graceful = machine_by_name(&s, "sig", "graceful")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stubborn = machine_by_name(&s, "sig", "stubborn")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    s.ok(&["machine", "stop", &graceful, "--app", "sig"]);
    assert_eq!(machine(&s, "sig", &graceful)["state"], "stopped");
    let exit = events(&s, "sig", &graceful)
        .into_iter()
        .find(|e| e["type"] == "exit")
        .expect("an exit event");
    assert_eq!(exit["request"]["exit_event"]["exit_code"], 0, "{exit}");
    assert_eq!(
        exit["request"]["exit_event"]["requested_stop"], true,
        "{exit}"
    );

    let started = std::time::Instant::now();
    s.ok(&["machine", "stop", &stubborn, "--app", "sig"]);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "SIGKILL came before the 1s timeout"
    );
    let exit = events(&s, "sig", &stubborn)
        .into_iter()
        .find(|e| e["type"] == "exit")
        .expect("an exit event");
    assert_eq!(exit["request"]["exit_event"]["signal"], 9, "{exit}");
    assert_eq!(exit["request"]["exit_event"]["exit_code"], 137, "{exit}");

    // A machine whose command fails is recorded with its exit code; restart policy "no" leaves it stopped.
    s.ok(&[
        "machine",
        "run",
        "busybox",
        "--app",
        "sig",
        "--name",
        "fails",
        "--restart",
        "no",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    let fails = machine_by_name(&s, "sig", "fails")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_state(&s, "sig", &fails, "stopped");
    let exit = events(&s, "sig", &fails)
        .into_iter()
        .find(|e| e["type"] == "exit")
        .expect("an exit event");
    assert_eq!(exit["request"]["exit_event"]["exit_code"], 3, "{exit}");

    // Start again, and restart through the API.
    s.ok(&["machine", "start", &graceful, "--app", "sig"]);
    assert_eq!(machine(&s, "sig", &graceful)["state"], "started");
    let (code, body) = s.api(
        "POST",
        &format!("/v1/apps/sig/machines/{graceful}/restart"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(machine(&s, "sig", &graceful)["state"], "started");
    // Signals by name.
    let (code, body) = s.api(
        "POST",
        &format!("/v1/apps/sig/machines/{graceful}/signal"),
        Some(r#"{"signal":"SIGINT"}"#),
    );
    assert_eq!(code, 200, "{body}");
    wait_state(&s, "sig", &graceful, "stopped");
}

#[test]
fn oom_kills_are_recorded_and_on_failure_gives_up_after_max_retries() {
    require_root!();
    let s = Server::start();
    s.import(
        &hangar_runtime::image::build::busybox_image(),
        "busybox:latest",
    );
    s.ok(&["apps", "create", "oom"]);
    let out = s.hangar(&[
        "machine",
        "run",
        "busybox",
        "--app",
        "oom",
        "--name",
        "hog",
        "--memory",
        "64",
        "--restart",
        "on-failure",
        "--max-retries",
        "2",
        "--detach",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=200M",
        "count=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = machine_by_name(&s, "oom", "hog")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(60), "the machine to be failed", || {
        (machine(&s, "oom", &id)["state"] == "failed").then_some(())
    });
    let ev = events(&s, "oom", &id);
    let ooms = ev
        .iter()
        .filter(|e| e["type"] == "exit" && e["request"]["exit_event"]["oom_killed"] == true)
        .count();
    assert_eq!(ooms, 3, "one run and two retries, each OOM-killed: {ev:#?}");
    let restarts = ev.iter().filter(|e| e["type"] == "restart").count();
    assert_eq!(restarts, 2, "{ev:#?}");
    assert!(ev.iter().any(|e| e["type"] == "failed"), "{ev:#?}");
    let status = s.ok(&["machine", "status", &id, "--app", "oom"]);
    assert!(
        status.to_lowercase().contains("oom"),
        "machine status shows the OOM kill: {status}"
    );
}

#[test]
fn machines_survive_kill9_of_the_server_and_logs_have_no_gap() {
    require_root!();
    let mut s = Server::start();
    s.import(&httpd_image(), "httpd:latest");
    s.import(
        &hangar_runtime::image::build::busybox_image(),
        "busybox:latest",
    );
    s.ok(&["apps", "create", "durable"]);
    s.ok(&[
        "machine", "run", "httpd", "--app", "durable", "--name", "web",
    ]);
    s.ok(&[
        "machine",
        "run",
        "busybox",
        "--app",
        "durable",
        "--name",
        "ticker",
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.02; done",
    ]);
    let web = machine_by_name(&s, "durable", "web");
    let ticker = machine_by_name(&s, "durable", "ticker")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v4 = web["private_ipv4"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "httpd", || {
        curl(&format!("http://{v4}:8080/"))
    });

    // Tick lines the shim has written to the machine's log file so far.
    let log_file = s
        .data_dir()
        .join("machines")
        .join(&ticker)
        .join("logs/current.log");
    let ticks_on_disk = || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .matches("tick ")
            .count()
    };
    let before = ticks_on_disk();

    s.kill9();
    // While the server is down, machines keep serving and logging.
    for _ in 0..5 {
        assert!(
            curl(&format!("http://{v4}:8080/")).is_some(),
            "the machine stopped serving when the server died"
        );
    }
    eventually(
        Duration::from_secs(20),
        "the machine to keep logging while the server is down",
        || (ticks_on_disk() >= before + 10).then_some(()),
    );
    s.restart();
    let list = s.api("GET", "/v1/apps/durable/machines", None).1;
    for m in list.as_array().unwrap() {
        assert_eq!(m["state"], "started", "{m}");
    }
    assert!(curl(&format!("http://{v4}:8080/")).is_some());

    // Every tick from the first on is in the logs, in order, across the server's death,
    // and the machine keeps logging after the restart.
    let ticks = || -> Vec<u64> {
        let logs = s.ok(&["logs", "--app", "durable", "--machine", &ticker, "--json"]);
        let ticks: Vec<u64> = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                v["message"]
                    .as_str()?
                    .strip_prefix("tick ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        for (i, t) in ticks.iter().enumerate() {
            assert_eq!(*t, i as u64, "gap in the logs at line {i}: {ticks:?}");
        }
        ticks
    };
    let after_restart = ticks().len();
    assert!(
        after_restart >= before + 10,
        "ticks written while the server was down are missing: {after_restart}"
    );
    eventually(
        Duration::from_secs(20),
        "more ticks after the restart",
        || (ticks().len() >= after_restart + 10).then_some(()),
    );
    // The adopted machine can still be stopped: its exit is seen by the new server.
    s.ok(&["machine", "stop", &ticker, "--app", "durable"]);
    assert_eq!(machine(&s, "durable", &ticker)["state"], "stopped");
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    require_root!();
    let s = Server::start();
    s.import(
        &hangar_runtime::image::build::busybox_image(),
        "busybox:latest",
    );
    s.ok(&["apps", "create", "bad"]);

    let check = |method: &str, path: &str, body: Option<&str>, want: u16, needle: &str| {
        let (code, v) = s.api(method, path, body);
        assert_eq!(code, want, "{method} {path} {body:?}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error for {method} {path}: {v}"));
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "{method} {path}: {msg:?} does not mention {needle:?}"
        );
    };
    let run = |config: Value| serde_json::to_string(&json!({ "config": config })).unwrap();

    // Auth.
    let (code, v) = s.api_with("GET", "/v1/apps", None, None, "application/json");
    assert_eq!(code, 401, "{v}");
    let (code, v) = s.api_with(
        "GET",
        "/v1/apps",
        None,
        Some("hgr_wrong"),
        "application/json",
    );
    assert_eq!(code, 401, "{v}");
    // Malformed input.
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some("{not json"),
        400,
        "json",
    );
    check(
        "POST",
        "/v1/apps",
        Some(r#"{"app_name":"Bad_Name"}"#),
        400,
        "invalid app name",
    );
    check(
        "POST",
        "/v1/apps",
        Some(r#"{"app_name":"bad"}"#),
        409,
        "already exists",
    );
    check("GET", "/v1/apps/nope", None, 404, "nope");
    check("GET", "/v1/apps/nope/machines", None, 404, "nope");
    check(
        "GET",
        "/v1/apps/bad/machines/0123456789abcd",
        None,
        404,
        "0123456789abcd",
    );
    check(
        "GET",
        "/v1/apps/bad/machines/..%2F..%2Fetc",
        None,
        404,
        "not found",
    );
    check("GET", "/v1/nothing-here", None, 404, "no route");
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(json!({"image": "UPPER/Case"}))),
        400,
        "invalid image reference",
    );
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(json!({"image": "nothere:latest"}))),
        404,
        "not found",
    );
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(json!({"image": "busybox", "guest": {"memory_mb": 0}}))),
        422,
        "memory_mb",
    );
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(
            json!({"image": "busybox", "guest": {"memory_mb": 100_000_000}}),
        )),
        422,
        "host",
    );
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(json!({"image": "busybox", "env": {"1BAD": "x"}}))),
        422,
        "1BAD",
    );
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(json!({"image": "busybox", "init": {"cmd": [""]}}))),
        422,
        "empty",
    );
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(
            json!({"image": "busybox", "init": {"exec": ["/no/such/binary"]}}),
        )),
        422,
        "no/such/binary",
    );
    check(
        "POST",
        "/v1/apps/bad/machines",
        Some(&run(
            json!({"image": "busybox", "stop_config": {"signal": "SIGNOPE"}}),
        )),
        422,
        "signal",
    );
    // Nothing was created by the refused calls but the one that failed to start (it is kept, failed, to be inspected).
    let (_, list) = s.api("GET", "/v1/apps/bad/machines", None);
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed"], "{list}");

    // The CLI refuses bad input with one line and a non-zero exit.
    for args in [
        vec![
            "machine", "run", "busybox", "--app", "bad", "--env", "1BAD=x",
        ],
        vec![
            "machine", "run", "busybox", "--app", "bad", "--env", "NOEQUALS",
        ],
        vec!["machine", "run", "busybox", "--app", "bad", "--memory", "0"],
        vec!["machine", "run", "busybox", "--app", "bad", "--", ""],
        vec!["machine", "run", "Not A Ref", "--app", "bad"],
        vec!["machine", "status", "0123456789abcd", "--app", "bad"],
        vec!["apps", "create", "bad"],
    ] {
        let out = s.hangar(&args);
        assert!(!out.status.success(), "hangar {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.trim().is_empty() && !err.contains("panicked"),
            "hangar {args:?}: {err}"
        );
    }

    // A layer with a path-escaping entry is rejected and writes nothing outside.
    let escape_name = format!("hangar-escape-{}", std::process::id());
    let outside = s.data_dir().join(&escape_name);
    let tar =
        hangar_runtime::image::build::raw_tar(&[hangar_runtime::image::build::RawEntry::file(
            &format!("../../../{escape_name}"),
            b"pwned",
        )])
        .unwrap();
    let evil = hangar_runtime::image::build::busybox_image()
        .new_layer()
        .raw_layer(tar);
    let path = s.data_dir().join("evil.tar");
    evil.write_oci_archive(&path, Some("evil:latest")).unwrap();
    let out = s.hangar(&["images", "import", path.to_str().unwrap()]);
    assert!(!out.status.success(), "an escaping layer was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsafe"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in [
        s.data_dir().to_path_buf(),
        s.data_dir().join("images"),
        s.data_dir().join("images/layers"),
        "/tmp".into(),
    ] {
        assert!(
            !dir.join(&escape_name).exists(),
            "escaping entry written to {}",
            dir.display()
        );
    }
    assert!(!outside.exists());

    // A blob whose digest does not match is rejected.
    let dir = s.data_dir().join("corrupt-layout");
    let built = hangar_runtime::image::build::busybox_image()
        // A layer the store does not have yet (blobs already stored are not read again).
        .file("unique", dir.to_string_lossy().as_bytes(), 0o644)
        .write_oci_layout_dir(&dir, Some("corrupt:latest"))
        .unwrap();
    let blob = dir
        .join("blobs/sha256")
        .join(built.layer_digests[0].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = s.hangar(&["images", "import", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "a corrupt blob was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("digest mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, images) = s.api("GET", "/v1/images", None);
    assert!(!images.to_string().contains("corrupt"), "{images}");
    assert!(!images.to_string().contains("evil"), "{images}");
}

#[test]
fn sigterm_stops_the_server_promptly_even_with_log_followers_and_machines_keep_running() {
    require_root!();
    let mut s = Server::start();
    s.import(&httpd_image(), "httpd:latest");
    s.ok(&["apps", "create", "term"]);
    s.ok(&["machine", "run", "httpd", "--app", "term", "--name", "web"]);
    let m = machine_by_name(&s, "term", "web");
    let id = m["id"].as_str().unwrap().to_owned();
    let v4 = m["private_ipv4"].as_str().unwrap().to_owned();
    let mut follower = Command::new(support::HANGAR)
        .args(["logs", "--app", "term", "--machine", &id, "-f"])
        .env("HANGAR_API_URL", &s.url)
        .env("HANGAR_API_TOKEN", &s.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // httpd logs each request: once the follower prints that line, it is connected.
    curl(&format!("http://{v4}:8080/")).expect("httpd answers");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(follower.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(!first.is_empty(), "the follower printed nothing");
    let took = s.terminate();
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM took {took:?} with a log follower attached"
    );
    assert!(
        curl(&format!("http://{v4}:8080/")).is_some(),
        "the machine stopped with the server"
    );
    s.restart();
    assert_eq!(machine(&s, "term", &id)["state"], "started");
}
