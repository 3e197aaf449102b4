//! The `hangar` binary as a user runs it: bad input refused before any request, one
//! clear error line and exit status 1, and the output of commands against a small
//! recording mock of the API (the real server is exercised by the whole-system tests).

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The binary with a clean environment: no token or URL from the developer's shell,
/// and a HOME and data dir without config or admin token.
fn hangar(home: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("hangar");
    cmd.env_clear()
        .env("HOME", home)
        .env("HANGAR_DATA_DIR", home.join("data"));
    cmd
}

/// A loopback URL nothing listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit status 1 and exactly one `Error: ...` line containing `want`.
fn assert_one_error_line(out: &Output, want: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("Error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains(want), "expected {want:?} in {err}");
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
}

#[test]
fn bad_input_is_refused_before_contacting_the_server() {
    let home = tempfile::tempdir().unwrap();
    // The URL is closed: a command that sent a request would fail with "cannot reach"
    // instead of the validation message.
    let url = closed_url();
    let cases: &[(&[&str], &str)] = &[
        (
            &["machine", "run", "busybox", "-a", "web", "--env", "1BAD=x"],
            "invalid environment variable name \"1BAD\"",
        ),
        (
            &["machine", "run", "busybox", "-a", "web", "-e", "NOEQUALS"],
            "expected KEY=VALUE",
        ),
        (
            &["machine", "run", "busybox", "-a", "web", "--", ""],
            "the command after `--` is empty",
        ),
        (
            &["machine", "run", "busybox", "-a", "web", "--memory", "0"],
            "--memory must be at least 1 MiB",
        ),
        (
            &["machine", "run", "busybox", "-a", "web", "--cpus", "0"],
            "--cpus must be at least 1",
        ),
        (
            &["machine", "run", "Not/An:Image:", "-a", "web"],
            "invalid image reference",
        ),
        (
            &["machine", "run", "sha256:1234", "-a", "web"],
            "invalid image digest",
        ),
        (
            &["images", "pull", "registry.example/Team/app:v1"],
            "invalid image reference",
        ),
        (&["apps", "destroy", "web"], "pass --yes"),
    ];
    for (args, want) in cases {
        let out = hangar(home.path())
            .args(*args)
            .env("HANGAR_API_URL", &url)
            .env("HANGAR_API_TOKEN", "t")
            .write_stdin("")
            .output()
            .unwrap();
        eprintln!("case {args:?}");
        assert_one_error_line(&out, want);
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_argument() {
    let home = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["machine", "run", "busybox"], "--app <APP>"),
        (
            &[
                "machine",
                "run",
                "busybox",
                "-a",
                "web",
                "--restart",
                "sometimes",
            ],
            "invalid value 'sometimes'",
        ),
        (
            &["machine", "run", "busybox", "-a", "Web_App"],
            "invalid app name",
        ),
        (
            &["machine", "stop", "../../etc/passwd", "-a", "web"],
            "invalid machine id",
        ),
        (
            &[
                "machine",
                "run",
                "busybox",
                "-a",
                "web",
                "--stop-signal",
                "SIGNOPE",
            ],
            "unknown signal",
        ),
        (&["logs", "-a", "web"], "--machine <MACHINE>"),
        (&["apps", "create", "bad_name"], "invalid app name"),
    ];
    for (args, want) in cases {
        let out = hangar(home.path()).args(*args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
}

#[test]
fn an_unreachable_server_is_one_clear_line_and_exit_1() {
    let home = tempfile::tempdir().unwrap();
    let url = closed_url();
    let out = hangar(home.path())
        .args(["apps", "list"])
        .env("HANGAR_API_URL", &url)
        .env("HANGAR_API_TOKEN", "t")
        .output()
        .unwrap();
    assert_one_error_line(&out, "cannot reach the Hangar API");
    assert_eq!(
        stderr(&out),
        format!("Error: cannot reach the Hangar API at {url}: is `hangar server` running?\n")
    );
    // The same through the flags instead of the environment.
    let out = hangar(home.path())
        .args([
            "machine",
            "list",
            "-a",
            "web",
            "--api-url",
            &url,
            "--token",
            "t",
        ])
        .output()
        .unwrap();
    assert_one_error_line(&out, &format!("cannot reach the Hangar API at {url}"));
}

#[test]
fn a_missing_token_lists_where_it_looked() {
    let home = tempfile::tempdir().unwrap();
    let out = hangar(home.path()).args(["apps", "list"]).output().unwrap();
    assert_one_error_line(&out, "no API token found");
    let err = stderr(&out);
    for place in ["--token", "HANGAR_API_TOKEN", "config.toml", "admin-token"] {
        assert!(err.contains(place), "{place}: {err}");
    }
}

#[test]
fn the_admin_token_of_the_data_dir_is_found() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("data")).unwrap();
    std::fs::write(home.path().join("data/admin-token"), "admintok\n").unwrap();
    let mock = Mock::start(|r| {
        if r.auth.as_deref() == Some("Bearer admintok") {
            json(200, serde_json::json!({"total_apps": 0, "apps": []}))
        } else {
            json(401, serde_json::json!({"error": "bad token"}))
        }
    });
    let out = hangar(home.path())
        .args(["apps", "list", "--api-url", &mock.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "No apps yet: create one with `hangar apps create NAME`\n"
    );
}

// ---- against a recording mock of the API ----

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    uri: String,
    auth: Option<String>,
    body: Vec<u8>,
}

type Responder = Arc<dyn Fn(&Recorded) -> Response + Send + Sync>;

/// A mock API on its own thread and runtime, since the test itself blocks on the CLI.
struct Mock {
    url: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mock {
    fn start(responder: impl Fn(&Recorded) -> Response + Send + Sync + 'static) -> Mock {
        let recorded: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let responder: Responder = Arc::new(responder);
        let rec = recorded.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let rec = rec.clone();
            let responder = responder.clone();
            async move {
                let mut r = Recorded {
                    method: req.method().to_string(),
                    uri: req.uri().to_string(),
                    auth: req
                        .headers()
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap().to_owned()),
                    body: Vec::new(),
                };
                r.body = axum::body::to_bytes(req.into_body(), usize::MAX)
                    .await
                    .unwrap()
                    .to_vec();
                rec.lock().unwrap().push(r.clone());
                responder(&r)
            }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Mock {
            url,
            recorded,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.recorded.lock().unwrap())
    }

    /// The CLI with this mock as its API and a token.
    fn hangar(&self, home: &Path) -> assert_cmd::Command {
        let mut cmd = hangar(home);
        cmd.env("HANGAR_API_URL", &self.url)
            .env("HANGAR_API_TOKEN", "tok");
        cmd
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json(status: u16, value: serde_json::Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(value)).into_response()
}

const ID: &str = "0123456789abcd";

fn machine_json(state: &str) -> serde_json::Value {
    serde_json::json!({
        "id": ID, "name": "web-1", "state": state, "region": "local",
        "instance_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "private_ip": "fdaa::2",
        "private_ipv4": "10.0.0.2", "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "config": {"image": "busybox", "init": {"cmd": ["sleep", "60"]}},
        "events": [], "host_status": "ok", "app_name": "web"
    })
}

#[test]
fn apps_list_prints_a_table_or_json() {
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(|_| {
        json(
            200,
            serde_json::json!({"total_apps": 2, "apps": [
                {"id": "api", "name": "api", "status": "deployed",
                 "organization": {"name": "default", "slug": "default"}, "machine_count": 3,
                 "network": "default", "created_at": "not-a-time"},
                {"id": "web", "name": "web", "status": "pending",
                 "organization": {"name": "acme", "slug": "acme"}, "machine_count": 0,
                 "network": "default", "created_at": "also-not-a-time"}
            ]}),
        )
    });
    let out = mock
        .hangar(home.path())
        .args(["apps", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "NAME  ORG      STATUS    MACHINES  CREATED\n\
         api   default  deployed  3         not-a-time\n\
         web   acme     pending   0         also-not-a-time\n"
    );
    let out = mock
        .hangar(home.path())
        .args(["apps", "list", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["apps"][1]["organization"]["slug"], "acme");
    let reqs = mock.take();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.auth.as_deref() == Some("Bearer tok")));
}

#[test]
fn machine_run_posts_the_config_and_waits_until_started() {
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(|r| {
        let path = r.uri.split('?').next().unwrap().to_owned();
        match (r.method.as_str(), path.as_str()) {
            ("POST", "/v1/apps/web/machines") => json(200, machine_json("created")),
            ("GET", p) if p.ends_with("/wait") => {
                json(200, serde_json::json!({"ok": true, "state": "started"}))
            }
            ("GET", _) => json(200, machine_json("started")),
            _ => json(404, serde_json::json!({"error": "no such route"})),
        }
    });
    let out = mock
        .hangar(home.path())
        .args([
            "machine", "run", "busybox", "-a", "web", "-e", "A=1", "--memory", "128", "--",
            "sleep", "60",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("Machine {ID} (web-1) is started\n")),
        "{text}"
    );
    assert!(text.contains("IPv4      10.0.0.2"), "{text}");
    assert!(text.contains("Command   sleep 60"), "{text}");

    let reqs = mock.take();
    let shapes: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.uri.as_str()))
        .collect();
    let wait = format!(
        "/v1/apps/web/machines/{ID}/wait?state=started&timeout=60&instance_id=01JABCDEFGHJKMNPQRSTVWXYZ0"
    );
    let get = format!("/v1/apps/web/machines/{ID}");
    assert_eq!(
        shapes,
        [
            ("POST", "/v1/apps/web/machines"),
            ("GET", wait.as_str()),
            ("GET", get.as_str()),
        ]
    );
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"config": {
            "image": "busybox", "env": {"A": "1"}, "init": {"cmd": ["sleep", "60"]},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 128}
        }})
    );
}

#[test]
fn server_errors_are_printed_as_one_line_with_exit_1() {
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(|r| {
        if r.method == "DELETE" {
            json(
                412,
                serde_json::json!({"error": "machine 0123456789abcd is started: stop it first, or destroy with force=true to kill it"}),
            )
        } else {
            json(
                404,
                serde_json::json!({"error": "image \"nope:latest\" not found locally and not a registry reference"}),
            )
        }
    });
    let out = mock
        .hangar(home.path())
        .args(["machine", "run", "nope", "-a", "web"])
        .output()
        .unwrap();
    assert_one_error_line(
        &out,
        "image \"nope:latest\" not found locally and not a registry reference (HTTP 404)",
    );
    let out = mock
        .hangar(home.path())
        .args(["machine", "destroy", ID, "-a", "web"])
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out),
        "Error: machine 0123456789abcd is started: stop it first, or pass --force to kill it\n"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn logs_print_timestamp_stream_and_message() {
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(|_| {
        let body = format!(
            "{}\n{}\n",
            serde_json::json!({"timestamp": "2026-01-01T00:00:01.000000001Z", "stream": "stdout",
                "message": "hello", "machine_id": ID, "instance_id": "i"}),
            serde_json::json!({"timestamp": "2026-01-01T00:00:02.000000002Z", "stream": "stderr",
                "message": "oops", "machine_id": ID, "instance_id": "i"})
        );
        (StatusCode::OK, body).into_response()
    });
    let out = mock
        .hangar(home.path())
        .args(["logs", "-a", "web", "--machine", ID, "--tail", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "2026-01-01T00:00:01.000000001Z stdout hello\n2026-01-01T00:00:02.000000002Z stderr oops\n"
    );
    let out = mock
        .hangar(home.path())
        .args(["logs", "-a", "web", "-m", ID, "--json"])
        .output()
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(first["message"], "hello");
    let reqs = mock.take();
    assert_eq!(
        reqs[0].uri,
        format!("/v1/apps/web/machines/{ID}/logs?tail=2")
    );
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// Waits for the exit, polling until a deadline.
    fn wait_with_deadline(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hangar did not exit within {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn spawn_hangar(mock: &Mock, home: &Path, args: &[&str]) -> ChildGuard {
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("hangar"))
        .env_clear()
        .env("HOME", home)
        .env("HANGAR_DATA_DIR", home.join("data"))
        .env("HANGAR_API_URL", &mock.url)
        .env("HANGAR_API_TOKEN", "tok")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

fn log_line(message: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({"timestamp": "2026-01-01T00:00:01.000000001Z", "stream": "stdout",
            "message": message, "machine_id": ID, "instance_id": "i"})
    )
}

#[test]
fn logs_follow_prints_lines_as_they_come_and_ends_cleanly_on_ctrl_c() {
    use std::io::BufRead;

    let home = tempfile::tempdir().unwrap();
    // One line, then the response stays open, as a followed log does.
    let mock = Mock::start(|_| {
        let first =
            futures_util::stream::once(async { Ok::<_, std::io::Error>(log_line("hello")) });
        let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        Response::new(Body::from_stream(stream))
    });
    let mut child = spawn_hangar(&mock, home.path(), &["logs", "-a", "web", "-m", ID, "-f"]);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the first line is printed while the response is still open");
    assert_eq!(line, "2026-01-01T00:00:01.000000001Z stdout hello\n");

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child.0),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait_with_deadline(std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(
        mock.take()[0].uri,
        format!("/v1/apps/web/machines/{ID}/logs?follow=true")
    );
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::io::Read;

    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(|_| (StatusCode::OK, log_line("x").repeat(1000)).into_response());
    let mut child = spawn_hangar(&mock, home.path(), &["logs", "-a", "web", "-m", ID]);
    // Closing the reading end first makes the CLI's first write fail with EPIPE,
    // as in `hangar logs ... | head -0`.
    drop(child.0.stdout.take());
    let status = child.wait_with_deadline(std::time::Duration::from_secs(30));
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(err, "");
}

#[test]
fn run_does_not_wait_for_a_machine_that_already_exited_but_fails_on_failed() {
    let home = tempfile::tempdir().unwrap();
    for (state, code) in [("stopped", 0), ("started", 0), ("failed", 1)] {
        let mock = Mock::start(move |r| match r.method.as_str() {
            "POST" => json(200, machine_json(state)),
            _ => json(500, serde_json::json!({"error": "unexpected request"})),
        });
        let out = mock
            .hangar(home.path())
            .args(["machine", "run", "busybox", "-a", "web", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{state}: {}", stderr(&out));
        assert!(
            stdout(&out).starts_with(&format!("Machine {ID} (web-1) is {state}\n")),
            "{}",
            stdout(&out)
        );
        if code == 1 {
            assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
            assert!(stderr(&out).contains("failed to start"), "{}", stderr(&out));
        }
        assert_eq!(mock.take().len(), 1, "{state}: only the create request");
    }
}

#[test]
fn start_reports_the_state_reached() {
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(|r| match (r.method.as_str(), r.uri.ends_with("/start")) {
        ("POST", true) => json(200, serde_json::json!({"previous_state": "stopped"})),
        ("GET", false) => json(200, machine_json("started")),
        _ => json(500, serde_json::json!({"error": "unexpected request"})),
    });
    let out = mock
        .hangar(home.path())
        .args(["machine", "start", ID, "-a", "web"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("Machine {ID} is started (was stopped)\n")
    );
}

#[test]
fn orgs_create_and_list() {
    let home = tempfile::tempdir().unwrap();
    let org = serde_json::json!({"slug": "acme", "name": "acme", "network_index": 2,
        "created_at": "not-a-time"});
    let mock = Mock::start(move |r| match r.method.as_str() {
        "POST" => json(201, org.clone()),
        _ => json(200, serde_json::json!([org.clone()])),
    });
    let out = mock
        .hangar(home.path())
        .args(["orgs", "create", "acme"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Created organization acme"));
    let out = mock
        .hangar(home.path())
        .args(["orgs", "list"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "SLUG  BRIDGE  CREATED\nacme  hgbr2   not-a-time\n"
    );
    let out = hangar(home.path())
        .args(["orgs", "create", "Not_A_Slug"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid organization name"),
        "{}",
        stderr(&out)
    );
}
