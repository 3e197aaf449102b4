//! Server-side Dockerfile builds with buildah: `hangar build` streams the output, the
//! image runs as a machine behind the proxy, failures name the step, a cancelled build
//! leaves nothing behind, and bad input is refused.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{HANGAR, Server, eventually, testapp_binary, through_proxy};

/// buildah is installed by `scripts/install-deps.sh` (CI runs it); skip with a message
/// when it is missing on a developer's machine.
fn have_buildah() -> bool {
    let found = Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipping: buildah is not installed (apt-get install buildah; CI installs it)");
    }
    found
}

/// A build context directory under the server's temp dir.
fn context(s: &Server, name: &str, dockerfile: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = s.data_dir().join("contexts").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    for (path, data) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        // COPY keeps the context's modes: the programs must be executable there.
        if matches!(*path, "busybox" | "app") {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    }
    dir
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

fn assert_no_build_left(s: &Server) {
    let builds = s.data_dir().join("builds");
    let left: Vec<_> = std::fs::read_dir(&builds)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "build directories left behind: {left:?}");
    for hierarchy in ["memory/hangar-builds", "hangar-builds"] {
        let dir = Path::new("/sys/fs/cgroup").join(hierarchy);
        let children: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            children.is_empty(),
            "build cgroups left behind: {children:?}"
        );
    }
    let data = s.data_dir().to_string_lossy().into_owned();
    let procs: Vec<_> = processes_with(&data)
        .into_iter()
        .filter(|p| p.contains("buildah"))
        .collect();
    assert!(procs.is_empty(), "buildah processes left behind: {procs:?}");
}

#[test]
fn dockerfile_builds_stream_output_and_the_image_serves_through_the_proxy() {
    require_root!();
    if !have_buildah() {
        return;
    }
    let s = Server::start();
    s.ok(&["apps", "create", "built"]);
    let app = std::fs::read(testapp_binary()).unwrap();
    let junk = vec![b'j'; 3 << 20];
    let dir = context(
        &s,
        "ok",
        "FROM scratch\nARG VERSION=unset\nENV VERSION=$VERSION\nCOPY app /bin/hangar-testapp\nENTRYPOINT [\"/bin/hangar-testapp\"]\n",
        &[
            ("app", &app),
            ("junk/big.bin", &junk),
            (".dockerignore", b"junk\n*.md\n"),
            ("README.md", b"not sent"),
        ],
    );
    let out = s.hangar(&[
        "build",
        dir.to_str().unwrap(),
        "--app",
        "built",
        "--build-arg",
        "VERSION=from-build-arg",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        s.server_log()
    );
    assert!(stdout.contains("STEP 1/5: FROM scratch"), "{stdout}");
    assert!(
        stdout.contains("STEP 4/5: COPY app /bin/hangar-testapp"),
        "{stdout}"
    );
    assert!(stderr.contains("2 left out by .dockerignore"), "{stderr}");
    let image = stdout.lines().last().unwrap().trim().to_owned();
    assert!(image.starts_with("built:deployment-"), "{stdout}");

    let images = s.json(&["images", "list"]);
    let listed = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().is_some_and(|n| n.ends_with(&image)))
        .unwrap_or_else(|| panic!("{image} not in {images}"));
    // Only the binary was sent and copied: the ignored 3 MiB are not in the image.
    assert!(
        listed["size"].as_u64().unwrap() < app.len() as u64 + (1 << 20),
        "{listed}"
    );

    let config = json!({
        "image": image,
        "services": [{
            "protocol": "tcp",
            "internal_port": 8080,
            "ports": [{"port": 80, "handlers": ["http"]}],
            "checks": [{"type": "http", "path": "/health", "interval": "1s", "timeout": "1s"}]
        }]
    });
    let body = json!({"name": "web", "config": config}).to_string();
    let (code, m) = s.api("POST", "/v1/apps/built/machines", Some(&body));
    assert_eq!(code, 200, "{m}\n{}", s.server_log());
    let body = eventually(Duration::from_secs(30), "the built image to serve", || {
        let (code, body) = through_proxy(s.http, "built.localhost", "/");
        (code == 200).then_some(body)
    });
    assert!(body.contains("version from-build-arg"), "{body}");
    assert_no_build_left(&s);

    // `--json` prints the NDJSON events, `done` last with the digest.
    let out = s.hangar(&["build", dir.to_str().unwrap(), "--app", "built", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "started", "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "log"), "{events:?}");
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "{events:?}");
    assert!(
        done["digest"].as_str().unwrap().starts_with("sha256:"),
        "{done}"
    );
    assert_ne!(
        done["image"],
        image.as_str(),
        "each build gets its own name"
    );
    assert_no_build_left(&s);
}

#[test]
fn failing_builds_show_the_step_and_its_output() {
    require_root!();
    if !have_buildah() {
        return;
    }
    let s = Server::start();
    s.ok(&["apps", "create", "broken"]);

    // A COPY of a file the context does not have.
    let dir = context(&s, "copy", "FROM scratch\nCOPY missing-file /x\n", &[]);
    let out = s.hangar(&["build", dir.to_str().unwrap(), "--app", "broken"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a broken build succeeded");
    assert!(
        stderr.contains("STEP 2/2: COPY missing-file /x"),
        "{stderr}"
    );
    assert!(stderr.contains("no such file"), "{stderr}");

    // A RUN step (chroot isolation, offline: busybox from the context) that fails.
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let dir = context(
        &s,
        "run",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo preparing the $((1+1))nd widget; exit 3\"]\n",
        &[("busybox", &busybox)],
    );
    let out = s.hangar(&["build", dir.to_str().unwrap(), "--app", "broken"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a failing RUN succeeded");
    assert!(
        stderr.contains("the build failed at STEP 3/3: RUN"),
        "{stderr}"
    );
    assert!(
        stderr.contains("preparing the 2nd widget"),
        "the step's output: {stderr}"
    );
    assert!(
        stdout.contains("preparing the 2nd widget"),
        "streamed live: {stdout}"
    );
    assert!(
        stderr.lines().last().unwrap().starts_with("Error: "),
        "{stderr}"
    );

    // The same through the API: a 200 stream that ends in an error event.
    let tar = s.data_dir().join("run.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "-H",
            "Content-Type: application/x-tar",
        ])
        .args(["-H", &format!("Authorization: Bearer {}", s.token)])
        .arg("--data-binary")
        .arg(format!("@{}", tar.display()))
        .arg(format!("{}/v1/apps/broken/builds", s.url))
        .output()
        .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error", "{events:?}");
    assert!(
        last["step"].as_str().unwrap().starts_with("STEP 3/3: RUN"),
        "{last}"
    );
    assert!(
        last["output"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("preparing the 2nd widget")),
        "{last}"
    );
    // A step that needs more memory than the build's cgroup allows is OOM-killed, and
    // the error says so.
    let dir = context(
        &s,
        "hog",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"dd\", \"if=/dev/zero\", \"of=/dev/null\", \"bs=400M\", \"count=1\"]\n",
        &[("busybox", &busybox)],
    );
    let out = s.hangar(&[
        "build",
        dir.to_str().unwrap(),
        "--app",
        "broken",
        "--memory",
        "128",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the memory hog was not stopped");
    assert!(
        stderr.contains("ran out of memory (limit 128 MiB) at STEP 3/3: RUN"),
        "{stderr}"
    );

    // Nothing was stored under the app's name.
    let images = s.json(&["images", "list"]);
    assert!(
        !images.to_string().contains("broken:deployment"),
        "{images}"
    );
    assert_no_build_left(&s);
}

#[test]
fn a_build_whose_client_goes_away_is_killed_and_cleaned_up() {
    require_root!();
    if !have_buildah() {
        return;
    }
    let s = Server::start();
    s.ok(&["apps", "create", "slow"]);
    let busybox = std::fs::read("/bin/busybox").unwrap();
    // A marker no other process on the host has in its command line.
    let marker = format!("{}", 40_000 + std::process::id() % 20_000);
    let dir = context(
        &s,
        "slow",
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo sleeping $((2*3)); exec /bin/busybox sleep {marker}\"]\n"
        ),
        &[("busybox", &busybox)],
    );
    let mut child = Command::new(HANGAR)
        .args(["build", dir.to_str().unwrap(), "--app", "slow"])
        .env("HANGAR_API_URL", &s.url)
        .env("HANGAR_API_TOKEN", &s.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read until the RUN step's own output shows: the step is running.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("sleeping 6") {
            break;
        }
        assert!(seen.len() < 1000, "no RUN output: {seen:?}");
    }
    assert!(
        seen.iter().any(|l| l.contains("sleeping 6")),
        "{seen:?}\n{}",
        s.server_log()
    );
    let sleep_cmd = format!("/bin/busybox sleep {marker}");
    // The shell execs the sleep right after its echo.
    eventually(
        Duration::from_secs(10),
        "the RUN step's sleep to run",
        || (!processes_with(&sleep_cmd).is_empty()).then_some(()),
    );
    assert!(
        std::fs::read_dir(s.data_dir().join("builds"))
            .unwrap()
            .count()
            == 1,
        "the build's directory exists while it runs"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    eventually(
        Duration::from_secs(30),
        "the abandoned build to be killed and removed",
        || {
            let builds_left = std::fs::read_dir(s.data_dir().join("builds"))
                .map(|d| d.count())
                .unwrap_or(0);
            (processes_with(&sleep_cmd).is_empty() && builds_left == 0).then_some(())
        },
    );
    assert_no_build_left(&s);

    // A build past its timeout is killed the same way, and the error says why.
    let out = s.hangar(&[
        "build",
        dir.to_str().unwrap(),
        "--app",
        "slow",
        "--timeout",
        "3s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a build past its timeout succeeded");
    assert!(stderr.contains("the build took longer than 3s"), "{stderr}");
    assert!(
        processes_with(&sleep_cmd).is_empty(),
        "the timed-out step still runs"
    );
    assert_no_build_left(&s);

    let images = s.json(&["images", "list"]);
    assert!(!images.to_string().contains("slow:deployment"), "{images}");
}

#[test]
fn bad_build_requests_are_refused() {
    require_root!();
    if !have_buildah() {
        return;
    }
    let s = Server::start();
    s.ok(&["apps", "create", "bb"]);
    let post = |path: &str, body: &[u8], content_type: &str| -> (u16, Value) {
        let file = s.data_dir().join("body.bin");
        std::fs::write(&file, body).unwrap();
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--max-time", "60"])
            .args(["-H", &format!("Content-Type: {content_type}")])
            .args(["-H", &format!("Authorization: Bearer {}", s.token)])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("{}{path}", s.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.trim().parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        )
    };
    use hangar_runtime::image::build::{RawEntry, raw_tar};
    let good = raw_tar(&[RawEntry::file("Dockerfile", b"FROM scratch\n")]).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "/v1/apps/nope/builds",
            good.clone(),
            "application/x-tar",
            404,
            "nope",
        ),
        (
            "/v1/apps/bb/builds",
            b"not a tar at all".repeat(64),
            "application/x-tar",
            400,
            "invalid build context",
        ),
        (
            "/v1/apps/bb/builds",
            Vec::new(),
            "application/x-tar",
            400,
            "empty",
        ),
        (
            "/v1/apps/bb/builds?dockerfile=../Dockerfile",
            good.clone(),
            "application/x-tar",
            400,
            "outside the build context",
        ),
        (
            "/v1/apps/bb/builds?dockerfile=/etc/passwd",
            good.clone(),
            "application/x-tar",
            400,
            "outside the build context",
        ),
        (
            "/v1/apps/bb/builds?dockerfile=Other",
            good.clone(),
            "application/x-tar",
            400,
            "no dockerfile at other",
        ),
        (
            "/v1/apps/bb/builds?arg=NOEQUALS",
            good.clone(),
            "application/x-tar",
            400,
            "key=value",
        ),
        (
            "/v1/apps/bb/builds?target=a%20b",
            good.clone(),
            "application/x-tar",
            400,
            "stage name",
        ),
        (
            "/v1/apps/bb/builds?timeout=forever",
            good.clone(),
            "application/x-tar",
            400,
            "timeout",
        ),
        (
            "/v1/apps/bb/builds?bogus=1",
            good.clone(),
            "application/x-tar",
            400,
            "unknown query parameter",
        ),
        (
            "/v1/apps/bb/builds",
            good.clone(),
            "application/json",
            400,
            "not a tar",
        ),
    ];
    for (path, body, ct, want, needle) in cases {
        let (code, v) = post(path, &body, ct);
        assert_eq!(code, want, "{path}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{path}: {v}"));
        assert!(msg.to_lowercase().contains(needle), "{path}: {msg}");
    }
    // A tar entry escaping the context is refused and writes nothing outside.
    let evil = raw_tar(&[RawEntry::file("../../escaped!", b"pwned")]).unwrap();
    let (code, v) = post("/v1/apps/bb/builds", &evil, "application/x-tar");
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("outside the context"),
        "{v}"
    );
    assert!(!s.data_dir().join("escaped!").exists());
    assert_no_build_left(&s);

    // The CLI refuses a Dockerfile outside the context before uploading anything.
    let dir = s.data_dir().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    let out = s.hangar(&[
        "build",
        dir.to_str().unwrap(),
        "--app",
        "bb",
        "--dockerfile",
        "../Dockerfile",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside the build context"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.hangar(&["build", dir.to_str().unwrap(), "--app", "bb"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no Dockerfile"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_hello_example_builds_offline_and_serves_its_page() {
    require_root!();
    if !have_buildah() {
        return;
    }
    let s = Server::start();
    s.ok(&["apps", "create", "hello"]);
    // A copy of examples/hello, prepared as its README says, so the tree stays clean.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let dir = s.data_dir().join("hello");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&example)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir.join("bin"));
    let out = Command::new(dir.join("prepare.sh")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = s.hangar(&["build", dir.to_str().unwrap(), "--app", "hello"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // .dockerignore sends only the Dockerfile, busybox and www/ (and itself).
    assert!(
        stderr.contains("Sending the build context: 4 files"),
        "{stderr}"
    );
    assert!(stdout.contains("STEP 3/8: RUN"), "{stdout}");
    let image = stdout.lines().last().unwrap().trim().to_owned();

    let config = json!({
        "image": image,
        "services": [{
            "protocol": "tcp",
            "internal_port": 8080,
            "ports": [{"port": 80, "handlers": ["http"]}]
        }]
    });
    let body = json!({"name": "web", "config": config}).to_string();
    let (code, m) = s.api("POST", "/v1/apps/hello/machines", Some(&body));
    assert_eq!(code, 200, "{m}\n{}", s.server_log());
    let page = std::fs::read_to_string(example.join("www/index.html")).unwrap();
    let body = eventually(Duration::from_secs(30), "the example's page", || {
        let (code, body) = through_proxy(s.http, "hello.localhost", "/");
        (code == 200).then_some(body)
    });
    assert_eq!(body, page);
    assert_no_build_left(&s);
}
