//! A real `hangar server` on an ephemeral port with a temporary data dir, driven through
//! the real CLI and curl. Dropping a `Server` kills it and removes everything its machines
//! left on the host, even when the test failed half way.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const HANGAR: &str = env!("CARGO_BIN_EXE_hangar");
pub const IPV4_POOL: &str = "172.30.0.0/16";
pub const IPV6_POOL: &str = "fdab::/16";

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips (with a message) a test that needs root when not root; CI runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::support::is_root() {
            eprintln!("skipping: this whole-system test needs root (CI runs it as root)");
            return;
        }
    };
}

pub struct Server {
    child: Option<Child>,
    /// Held while the server lives: servers share host-wide names (bridges `hgbr<N>`,
    /// the nft table, the address pools), so only one test server runs on a host at a
    /// time, also across test processes.
    _host_lock: std::fs::File,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub token: String,
    /// The edge proxy's address.
    pub http: std::net::SocketAddr,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("hangar-sys-")
            .tempdir_in("/tmp")
            .unwrap();
        let host_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/hangar-system-tests.lock")
            .unwrap();
        rustix::fs::flock(&host_lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let mut s = Server {
            child: None,
            _host_lock: host_lock,
            dir,
            url: String::new(),
            token: String::new(),
            http: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let ready = self.dir.path().join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(HANGAR)
            .args(["server", "--data-dir"])
            .arg(self.dir.path())
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--ipv4-pool",
                IPV4_POOL,
                "--ipv6-pool",
                IPV6_POOL,
                "--ready-file",
            ])
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let [api, http] = text.lines().collect::<Vec<_>>()[..]
            {
                self.url = format!("http://{api}");
                self.http = http.parse().unwrap();
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hangar server exited with {status}:\n{}", self.server_log());
            }
            assert!(
                Instant::now() < deadline,
                "hangar server did not become ready:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.token = std::fs::read_to_string(self.dir.path().join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kill -9` of the server process only (shims and machines are in their own sessions).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to the server and waits for it to exit; returns how long that took.
    pub fn terminate(&mut self) -> Duration {
        let child = self.child.as_mut().expect("server running");
        let started = Instant::now();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the server did not exit after SIGTERM:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data dir (a new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs the real CLI against this server.
    pub fn hangar(&self, args: &[&str]) -> Output {
        Command::new(HANGAR)
            .args(args)
            .env("HANGAR_API_URL", &self.url)
            .env("HANGAR_API_TOKEN", &self.token)
            .env_remove("HANGAR_APP")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.hangar(args);
        assert!(
            out.status.success(),
            "hangar {args:?} failed: {}\nstdout: {}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.server_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI with `--json` and parses the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("hangar {args:?} printed no JSON ({e}): {out}"))
    }

    /// An HTTP call with curl (a real client). Returns the status and the parsed body
    /// (`Value::String` when the body is not JSON).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.api_with(method, path, body, Some(&self.token), "application/json")
    }

    pub fn api_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
        content_type: &str,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "--max-time",
            "120",
        ]);
        cmd.arg(format!("{}{path}", self.url));
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args([
                "-H",
                &format!("Content-Type: {content_type}"),
                "--data-binary",
                b,
            ]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code: u16 = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl gave no status: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
        (code, value)
    }

    /// Imports an image built by the runtime's builder.
    pub fn import(&self, builder: &hangar_runtime::image::build::OciArchiveBuilder, name: &str) {
        let path = self
            .dir
            .path()
            .join(format!("{}.tar", name.replace([':', '/'], "_")));
        builder.write_oci_archive(&path, Some(name)).unwrap();
        self.ok(&["images", "import", path.to_str().unwrap()]);
    }

    fn machine_ids_on_host(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("machines"))
            .map(|rd| {
                rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let run_dir = hangar_runtime::machine::run_dir_for(self.dir.path());
        let runc_root = run_dir.join("runc");
        for id in self.machine_ids_on_host() {
            let mdir = self.dir.path().join("machines").join(&id);
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["kill", &id, "KILL"])
                .output();
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", &id])
                .output();
            if let Ok(pid) = std::fs::read_to_string(mdir.join("shim.pid")) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).output();
            }
            let _ = Command::new("umount")
                .arg("-l")
                .arg(mdir.join("rootfs"))
                .output();
            let _ = Command::new("ip")
                .args(["netns", "delete", &format!("hangar-{id}")])
                .output();
        }
        // runc's state and the bundles of this data dir live on the tmpfs, not in the dir.
        let _ = std::fs::remove_dir_all(&run_dir);
        // Bridges of this server's organizations (the test pool's addresses only).
        if let Ok(out) = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut parts = line.split_whitespace();
                let (Some(_), Some(dev), Some(_), Some(addr)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if dev.starts_with("hgbr") && addr.starts_with("172.30.") {
                    let _ = Command::new("ip").args(["link", "delete", dev]).output();
                }
            }
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "-f", "-g", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hello-style image: busybox with a page served by httpd on :8080.
pub fn httpd_image() -> hangar_runtime::image::build::OciArchiveBuilder {
    hangar_runtime::image::build::busybox_image()
        .file("www/index.html", b"hello from hangar\n", 0o644)
        .entrypoint(["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"])
        .cmd(Vec::<String>::new())
}

/// The static test app, built by `scripts/build-testapp.sh` (run here if `HANGAR_TESTAPP`
/// does not name it already; the build is cached).
pub fn testapp_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("HANGAR_TESTAPP") {
        return p.into();
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/build-testapp.sh"
    );
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "build-testapp.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
}

/// busybox plus the test app at `/bin/hangar-testapp` as the entrypoint.
pub fn testapp_image() -> hangar_runtime::image::build::OciArchiveBuilder {
    hangar_runtime::image::build::busybox_image()
        .host_file("bin/hangar-testapp", &testapp_binary(), 0o755)
        .entrypoint(["/bin/hangar-testapp"])
        .cmd(Vec::<String>::new())
}

/// One request through the edge proxy with `Host: <host>`: (status, body). Status 0 is a
/// connection-level failure.
pub fn through_proxy(proxy: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Host: {host}"),
        ])
        .arg(format!("http://{proxy}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
