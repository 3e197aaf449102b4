//! Deploys through the real CLI against a real server: strategies under load, failing and
//! crashing releases, the release command, a server killed mid-deploy, scale and rollback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, eventually, testapp_binary};

/// The testapp on busybox without an entrypoint, so commands (release command, cmd
/// overrides) run as written.
fn image() -> hangar_runtime::image::build::OciArchiveBuilder {
    hangar_runtime::image::build::busybox_image()
        .host_file("bin/hangar-testapp", &testapp_binary(), 0o755)
        .cmd(["/bin/hangar-testapp"])
}

/// Writes `hangar.toml` for app `web` serving the testapp with a health check.
fn write_config(dir: &Path, version: &str, strategy: &str, extra: &str) {
    let cfg = format!(
        r#"app = "web"

[env]
  VERSION = "{version}"

[http_service]
  internal_port = 8080
  auto_stop_machines = "off"

  [[http_service.checks]]
    interval = "1s"
    timeout = "1s"
    grace_period = "1s"
    method = "GET"
    path = "/health"

[deploy]
  strategy = "{strategy}"
  wait_timeout = "30s"
{extra}
"#
    );
    std::fs::write(dir.join("hangar.toml"), cfg).unwrap();
}

/// One request through the proxy on a fresh connection: (status, body); status 0 is a
/// socket error.
fn get(proxy: SocketAddr, host: &str) -> (u16, String) {
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let status = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        Ok((status, body))
    };
    attempt().unwrap_or((0, String::new()))
}

/// A bounded load of sequential requests on a few threads, recording every response.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(u16, String)>>>,
}

impl Load {
    pub fn start(proxy: SocketAddr, host: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let host = host.to_owned();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    // Bounded: at most this many requests per thread.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let (code, body) = get(proxy, &host);
                        let version = body
                            .split_whitespace()
                            .last()
                            .unwrap_or_default()
                            .to_owned();
                        seen.push((code, version));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the load; returns each thread's responses in order.
    pub fn finish(self) -> Vec<Vec<(u16, String)>> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// Every response is a 200, and each thread saw `from` until one moment and `to` after it.
fn assert_clean_switch(runs: &[Vec<(u16, String)>], from: &str, to: &str) {
    let total: usize = runs.iter().map(Vec::len).sum();
    assert!(total > 20, "the load made only {total} requests");
    for (t, run) in runs.iter().enumerate() {
        let bad: Vec<_> = run.iter().filter(|(c, _)| *c != 200).collect();
        assert!(
            bad.is_empty(),
            "thread {t}: {} failed responses of {}: {:?}",
            bad.len(),
            run.len(),
            &bad[..bad.len().min(5)]
        );
        let first_new = run.iter().position(|(_, v)| v == to);
        let first_new = first_new.unwrap_or_else(|| panic!("thread {t} never saw {to}"));
        assert!(
            run[..first_new].iter().all(|(_, v)| v == from),
            "thread {t}: before the switch not all responses were {from}"
        );
        assert!(
            run[first_new..].iter().all(|(_, v)| v == to),
            "thread {t}: {from} answered again after {to} did: {:?}",
            run[first_new..]
                .iter()
                .filter(|(_, v)| v != to)
                .take(3)
                .collect::<Vec<_>>()
        );
    }
}

fn status(s: &Server) -> Value {
    s.json(&["status", "--app", "web"])
}

fn releases_of_machines(st: &Value) -> Vec<i64> {
    let mut r: Vec<i64> = st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["release"].as_i64())
        .collect();
    r.sort_unstable();
    r
}

fn deploy(s: &Server, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["deploy", dir.to_str().unwrap(), "--image", "web:base"];
    args.extend_from_slice(extra);
    s.hangar(&args)
}

fn assert_ok(out: &std::process::Output, s: &Server) {
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        s.server_log()
    );
}

#[test]
fn deploys_switch_versions_without_losing_a_request_and_failures_leave_the_old_release() {
    require_root!();
    let s = Server::start();
    s.ok(&["apps", "create", "web"]);
    s.import(&image(), "web:base");
    let dir = tempfile::tempdir().unwrap();

    // v1: two machines.
    write_config(dir.path(), "v1", "rolling", "");
    let out = deploy(&s, dir.path(), &["--count", "2"]);
    assert_ok(&out, &s);
    let st = status(&s);
    assert_eq!(releases_of_machines(&st), vec![1, 1], "{st}");
    assert_eq!(st["release"]["version"], 1);
    eventually(Duration::from_secs(10), "v1 to serve", || {
        (get(s.http, "web.localhost").0 == 200).then_some(())
    });

    // v2 rolling, v3 canary, v4 blue-green: each under load, with a clean switch.
    for (version, strategy, release) in [
        ("v2", "rolling", 2),
        ("v3", "canary", 3),
        ("v4", "bluegreen", 4),
    ] {
        let previous = format!("v{}", release - 1);
        write_config(dir.path(), version, strategy, "");
        let load = Load::start(s.http, "web.localhost", 3);
        let out = deploy(&s, dir.path(), &[]);
        if !out.status.success() {
            drop(load.finish());
            assert_ok(&out, &s);
            unreachable!();
        }
        // The load goes on until the new version has answered this thread too.
        eventually(Duration::from_secs(10), "the new version to answer", || {
            let (c, body) = get(s.http, "web.localhost");
            (c == 200 && body.trim().ends_with(version)).then_some(())
        });
        let runs = load.finish();
        assert_ok(&out, &s);
        assert_clean_switch(&runs, &previous, version);
        let st = status(&s);
        assert_eq!(
            releases_of_machines(&st),
            vec![release, release],
            "{strategy}: {st}"
        );
    }

    // v5: its health check never passes: fails within wait_timeout, traffic stays on v4,
    // no v5 machine is left.
    write_config(dir.path(), "v5", "rolling", "");
    let cfg = std::fs::read_to_string(dir.path().join("hangar.toml"))
        .unwrap()
        .replace("wait_timeout = \"30s\"", "wait_timeout = \"5s\"")
        .replace("VERSION = \"v5\"", "VERSION = \"v5\"\n  UNHEALTHY = \"1\"");
    std::fs::write(dir.path().join("hangar.toml"), cfg).unwrap();
    let load = Load::start(s.http, "web.localhost", 2);
    let started = Instant::now();
    let out = deploy(&s, dir.path(), &[]);
    let took = started.elapsed();
    let runs = load.finish();
    assert!(
        !out.status.success(),
        "an unhealthy release must fail the deploy"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("health checks"), "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    for run in &runs {
        assert!(
            run.iter().all(|(c, v)| *c == 200 && v == "v4"),
            "traffic left v4: {run:?}"
        );
    }
    let rel: Value = s.json(&["releases", "--app", "web"]);
    let v5 = rel
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == 5)
        .unwrap();
    assert_eq!(v5["status"], "failed", "{v5}");
    assert!(
        v5["reason"].as_str().unwrap().contains("health checks"),
        "{v5}"
    );
    let st = status(&s);
    assert_eq!(releases_of_machines(&st), vec![4, 4], "{st}");
    assert_eq!(st["release"]["version"], 4);

    // v6 crashes on boot: fails in seconds, not at the 30 s timeout.
    write_config(
        dir.path(),
        "v6",
        "rolling",
        "\n[experimental]\n  cmd = [\"/bin/hangar-testapp\", \"--crash-on-boot\"]\n",
    );
    let started = Instant::now();
    let out = deploy(&s, dir.path(), &[]);
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited with code"), "{err}");
    assert!(
        took < Duration::from_secs(20),
        "a crash must fail fast, took {took:?}"
    );
    assert_eq!(releases_of_machines(&status(&s)), vec![4, 4]);

    // A release command that exits 1: aborted before any machine is touched, output shown.
    write_config(
        dir.path(),
        "v7",
        "rolling",
        "  release_command = \"sh -c 'echo migrating the database; exit 1'\"\n",
    );
    let before: Vec<String> = status(&s)["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let out = deploy(&s, dir.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("migrating the database"), "{err}");
    assert!(err.contains("release command exited with code 1"), "{err}");
    let after: Vec<String> = status(&s)["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        before, after,
        "the release command's failure must leave machines alone"
    );

    // Rollback to v2: a new release (v8) with v2's config.
    let out = s.hangar(&["rollback", "2", "--app", "web"]);
    assert_ok(&out, &s);
    let st = status(&s);
    assert_eq!(st["release"]["version"], 8);
    eventually(
        Duration::from_secs(10),
        "v2 to answer after the rollback",
        || {
            let (c, body) = get(s.http, "web.localhost");
            (c == 200 && body.trim().ends_with("v2")).then_some(())
        },
    );

    // Scale: 3 machines, then 1.
    let out = s.hangar(&["scale", "count", "3", "--app", "web"]);
    assert_ok(&out, &s);
    assert_eq!(releases_of_machines(&status(&s)), vec![8, 8, 8]);
    let out = s.hangar(&["scale", "count", "1", "--app", "web"]);
    assert_ok(&out, &s);
    assert_eq!(releases_of_machines(&status(&s)), vec![8]);

    // Scale memory: a new release (v9) rolled like a deploy, with the new guest.
    let out = s.hangar(&["scale", "memory", "192", "--app", "web"]);
    assert_ok(&out, &s);
    let st = status(&s);
    assert_eq!(releases_of_machines(&st), vec![9]);
    let id = st["machines"][0]["id"].as_str().unwrap().to_owned();
    let m = s.json(&["machine", "status", &id, "--app", "web"]);
    assert_eq!(m["config"]["guest"]["memory_mb"], 192, "{m}");
}

#[test]
fn deploy_bad_input_is_refused_with_a_clear_error() {
    require_root!();
    let s = Server::start();
    s.ok(&["apps", "create", "web"]);
    s.import(&image(), "web:base");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "v1", "rolling", "");

    let fails = |args: &[&str], needle: &str| {
        let out = s.hangar(args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    let d = dir.path().to_str().unwrap();
    fails(&["deploy", d, "--image", "nope:missing"], "not found");
    fails(
        &["deploy", d, "--image", "web:base", "--app", "ghost"],
        "ghost",
    );
    fails(
        &["deploy", d, "--image", "web:base", "--strategy", "sideways"],
        "sideways",
    );
    fails(&["rollback", "--app", "web"], "no earlier complete release");
    fails(
        &["rollback", "latest", "--app", "web"],
        "not a release version",
    );
    fails(&["scale", "count", "2", "--app", "web"], "no release yet");
    fails(
        &["scale", "vm", "huge-cpu-9x", "--app", "web"],
        "unknown VM size",
    );
    fails(&["status", "--app", "ghost"], "ghost");
    // A typo in the config is reported with its place and nothing is deployed.
    std::fs::write(
        dir.path().join("hangar.toml"),
        "app = \"web\"\n[http_service]\n  internternal_port = 8080\n",
    )
    .unwrap();
    let out = s.hangar(&["deploy", d, "--image", "web:base"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hangar.toml:3"), "{err}");
    // A config for another app.
    std::fs::write(dir.path().join("hangar.toml"), "app = \"other\"\n").unwrap();
    fails(
        &["deploy", d, "--image", "web:base", "--app", "web"],
        "not \"web\"",
    );
    // Concurrent deploys of one app are refused.
    write_config(dir.path(), "v1", "rolling", "");
    let first = s.json(&["deploy", d, "--image", "web:base", "--detach"]);
    let id = first["id"].as_str().unwrap();
    let second = s.hangar(&["deploy", d, "--image", "web:base"]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // Reattach and follow the detached deploy to its end.
    let out = s.ok(&["deploy", "--wait", id, "--app", "web"]);
    assert!(out.contains("is live"), "{out}");
    fails(&["deploy", "--wait", "01NOPE", "--app", "web"], "not found");
    let (code, body) = s.api("POST", "/v1/apps/web/deploys", Some("{\"image\": \"\"}"));
    assert!(code == 400 || code == 409, "{code} {body}");
    let (code, body) = s.api("POST", "/v1/apps/web/scale", Some("{}"));
    assert_eq!(code, 400, "{body}");
}

#[test]
fn a_deploy_interrupted_by_a_server_crash_finishes_after_restart_without_orphans() {
    require_root!();
    let mut s = Server::start();
    s.ok(&["apps", "create", "web"]);
    s.import(&image(), "web:base");
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "v1", "rolling", "");
    assert_ok(&deploy(&s, dir.path(), &["--count", "4"]), &s);
    assert_eq!(releases_of_machines(&status(&s)), vec![1, 1, 1, 1]);

    // One machine at a time, so the kill lands in the middle of the deploy.
    write_config(dir.path(), "v2", "rolling", "  max_unavailable = 1\n");
    assert_ok(&deploy(&s, dir.path(), &["--detach"]), &s);
    // Kill the server once the deploy has created a v2 machine.
    eventually(Duration::from_secs(30), "a v2 machine", || {
        releases_of_machines(&status(&s)).contains(&2).then_some(())
    });
    s.kill9();
    // Machines outlive the server.
    s.restart();
    let st = eventually(Duration::from_secs(120), "the deploy to end", || {
        let st = status(&s);
        st["deploy"].is_null().then_some(st)
    });
    assert!(
        s.server_log().contains("resuming"),
        "the deploy was not interrupted:\n{}",
        s.server_log()
    );
    let releases = releases_of_machines(&st);
    assert!(
        releases == vec![2, 2, 2, 2] || releases == vec![1, 1, 1, 1],
        "the deploy must finish or roll back: {st}"
    );
    // No orphans: the host runs exactly the machines the store knows.
    let on_host: std::collections::BTreeSet<String> =
        std::fs::read_dir(s.data_dir().join("machines"))
            .unwrap()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
    let live: std::collections::BTreeSet<String> = st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(on_host, live, "machines on the host vs the store");
    eventually(Duration::from_secs(10), "the app to serve", || {
        (get(s.http, "web.localhost").0 == 200).then_some(())
    });
}

#[test]
fn launch_writes_a_config_creates_the_app_builds_and_serves() {
    require_root!();
    let buildah = std::process::Command::new("buildah")
        .arg("--version")
        .output();
    if !buildah.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: buildah is not installed (CI installs it)");
        return;
    }
    let s = Server::start();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("Launch Me");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(testapp_binary(), dir.join("hangar-testapp")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY hangar-testapp /hangar-testapp\nEXPOSE 8080\nCMD [\"/hangar-testapp\"]\n",
    )
    .unwrap();
    let out = s.hangar(&["launch", dir.to_str().unwrap()]);
    assert_ok(&out, &s);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("http://launch-me.localhost"), "{stdout}");
    let written = std::fs::read_to_string(dir.join("hangar.toml")).unwrap();
    assert!(written.contains("app = \"launch-me\""), "{written}");
    assert!(written.contains("internal_port = 8080"), "{written}");
    eventually(
        Duration::from_secs(10),
        "the launched app to answer",
        || (get(s.http, "launch-me.localhost").0 == 200).then_some(()),
    );

    // An existing fly.toml naming another app: launch --name edits it, comments kept.
    std::fs::remove_file(dir.join("hangar.toml")).unwrap();
    std::fs::write(
        dir.join("fly.toml"),
        "# my app\napp = \"old-name\" # set by fly launch\n\n[http_service]\n  internal_port = 8080 # the port\n",
    )
    .unwrap();
    let out = s.hangar(&[
        "launch",
        dir.to_str().unwrap(),
        "--name",
        "renamed",
        "--no-deploy",
    ]);
    assert_ok(&out, &s);
    let edited = std::fs::read_to_string(dir.join("fly.toml")).unwrap();
    assert!(edited.contains("app = \"renamed\""), "{edited}");
    assert!(
        edited.contains("# my app") && edited.contains("# the port"),
        "{edited}"
    );
    assert!(s.ok(&["apps", "list"]).contains("renamed"));

    // Nothing to launch.
    let empty = parent.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = s.hangar(&["launch", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to launch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn image_gc_keeps_the_last_releases_and_running_images() {
    require_root!();
    let s = Server::start();
    s.ok(&["apps", "create", "web"]);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "v1", "immediate", "");
    // Seven deploys of seven different images, each uploaded as an archive (so each gets
    // a `web:deployment-*` tag). The default keeps the last 5 releases' images.
    let mut tags = Vec::new();
    for i in 0..7 {
        let archive = dir.path().join(format!("img{i}.tar"));
        image()
            .file("etc/build-number", format!("{i}\n").as_bytes(), 0o644)
            .write_oci_archive(&archive, None)
            .unwrap();
        let out = s.hangar(&[
            "deploy",
            dir.path().to_str().unwrap(),
            "--image-archive",
            archive.to_str().unwrap(),
        ]);
        assert_ok(&out, &s);
        let rel = s.json(&["releases", "--app", "web"]);
        tags.push(rel[0]["image"].as_str().unwrap().to_owned());
    }
    let report = s.json(&["images", "gc"]);
    let untagged: Vec<String> = report["untagged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(untagged, tags[..2].to_vec(), "{report}");
    let listed = s.ok(&["images", "list"]);
    for kept in &tags[2..] {
        assert!(
            listed.contains(kept.as_str()),
            "{kept} must stay:\n{listed}"
        );
    }
    // The running release still serves, and rolling back to a kept release works.
    assert_ok(&s.hangar(&["rollback", "4", "--app", "web"]), &s);
    eventually(Duration::from_secs(10), "the app to serve", || {
        (get(s.http, "web.localhost").0 == 200).then_some(())
    });
}
