//! App secrets end to end: a canary value reaches the machine's environment and nothing
//! else (data dir, server log, API responses, command lines, other processes'
//! environments); master key rotation; bad input.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{HANGAR, Server, eventually};

/// Everything the test saw from the server: API bodies, CLI output.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn api(&mut self, s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, v) = s.api(method, path, body);
        self.0.push(v.to_string());
        (code, v)
    }

    fn cli(&mut self, s: &Server, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(HANGAR)
            .args(args)
            .env("HANGAR_API_URL", &s.url)
            .env("HANGAR_API_TOKEN", &s.token)
            .env_remove("HANGAR_APP")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut pipe = child.stdin.take().unwrap();
            if let Some(input) = stdin {
                pipe.write_all(input).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        self.0
            .push(String::from_utf8_lossy(&out.stdout).into_owned());
        self.0
            .push(String::from_utf8_lossy(&out.stderr).into_owned());
        out
    }

    fn ok(&mut self, s: &Server, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.cli(s, args, stdin);
        assert!(
            out.status.success(),
            "hangar {args:?} failed: {}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.server_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a CLI command that must fail with a message containing `needle`.
    fn refused(&mut self, s: &Server, args: &[&str], needle: &str) -> String {
        let out = self.cli(s, args, None);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "hangar {args:?} succeeded");
        assert!(
            err.contains(needle),
            "hangar {args:?}: {err:?} lacks {needle:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
        err
    }
}

fn random_canary() -> String {
    let bytes: [u8; 16] = rand_bytes();
    format!("canary-{}", hex(&bytes))
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                // The machines' rootfs mounts are the images' files plus what the machine
                // wrote: that is the app's business, and it wrote nothing here.
                stack.push(path);
            } else if ft.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && contains(&bytes, needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Pids whose file `/proc/<pid>/<file>` contains `needle`.
fn procs_containing(file: &str, needle: &[u8]) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(e.path().join(file))
            && contains(&bytes, needle)
        {
            let cmd = std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            found.push((pid, cmd));
        }
    }
    found
}

fn init_pid(s: &Server, id: &str) -> i32 {
    let path = s.data_dir().join("machines").join(id).join("init.pid");
    std::fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The machine's environment, from its init process. Until runc's init has exec'd the
/// machine's command, /proc shows runc init's own environment: wait for the platform
/// variables every machine has.
fn machine_env(s: &Server, id: &str) -> Vec<String> {
    let pid = init_pid(s, id);
    eventually(Duration::from_secs(10), "the machine's environment", || {
        let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env: Vec<String> = bytes
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        env.iter()
            .any(|kv| kv.starts_with("FLY_MACHINE_ID="))
            .then_some(env)
    })
}

fn env_value(s: &Server, id: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    machine_env(s, id)
        .into_iter()
        .find_map(|kv| kv.strip_prefix(&prefix).map(str::to_owned))
}

fn run_sleeper(seen: &mut Seen, s: &Server, app: &str, name: &str) -> String {
    let body = json!({
        "name": name,
        "config": {
            "image": "busybox:latest",
            "env": {"FROM_CONFIG": "config", "SHADOWED": "config"},
            "init": {"exec": ["sleep", "100000"]},
        }
    })
    .to_string();
    let (code, m) = seen.api(s, "POST", &format!("/v1/apps/{app}/machines"), Some(&body));
    assert_eq!(code, 200, "{m}\n{}", s.server_log());
    m["id"].as_str().unwrap().to_owned()
}

fn restart(seen: &mut Seen, s: &Server, app: &str, id: &str) {
    let (code, v) = seen.api(
        s,
        "POST",
        &format!("/v1/apps/{app}/machines/{id}/restart"),
        None,
    );
    assert_eq!(code, 200, "{v}\n{}", s.server_log());
    eventually(Duration::from_secs(30), "the machine to run again", || {
        let (_, m) = s.api("GET", &format!("/v1/apps/{app}/machines/{id}"), None);
        (m["state"] == "started").then_some(())
    });
}

#[test]
fn a_secret_reaches_the_machine_environment_and_nowhere_else() {
    require_root!();
    let mut s = Server::start();
    let mut seen = Seen::default();
    s.import(
        &hangar_runtime::image::build::busybox_image(),
        "busybox:latest",
    );
    seen.ok(&s, &["apps", "create", "vault"], None);
    let canary = random_canary();
    let imported = random_canary();
    let multi = format!("line one {}\nline two", random_canary());

    // Set through the CLI (argument), import a dotenv file on stdin, and override the
    // machine config's env.
    seen.ok(
        &s,
        &[
            "secrets",
            "set",
            &format!("CANARY={canary}"),
            "SHADOWED=secret",
            "-a",
            "vault",
        ],
        None,
    );
    let dotenv = format!(
        "# a comment\nexport IMPORTED='{imported}'\nMULTI=\"{}\"\n",
        multi.replace('\n', "\\n")
    );
    seen.ok(
        &s,
        &["secrets", "import", "-a", "vault", "--stage"],
        Some(dotenv.as_bytes()),
    );
    let list = seen.ok(&s, &["--json", "secrets", "list", "-a", "vault"], None);
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["CANARY", "IMPORTED", "MULTI", "SHADOWED"], "{list}");
    for v in list.as_array().unwrap() {
        assert_eq!(v["digest"].as_str().unwrap().len(), 16, "{v}");
    }
    let table = seen.ok(&s, &["secrets", "list", "-a", "vault"], None);
    assert!(table.starts_with("NAME"), "{table}");

    let id = run_sleeper(&mut seen, &s, "vault", "sleeper");
    assert_eq!(
        env_value(&s, &id, "CANARY").as_deref(),
        Some(canary.as_str())
    );
    assert_eq!(
        env_value(&s, &id, "IMPORTED").as_deref(),
        Some(imported.as_str())
    );
    assert_eq!(env_value(&s, &id, "MULTI").as_deref(), Some(multi.as_str()));
    assert_eq!(env_value(&s, &id, "FROM_CONFIG").as_deref(), Some("config"));
    assert_eq!(
        env_value(&s, &id, "SHADOWED").as_deref(),
        Some("secret"),
        "secrets override the config's env, as on Fly"
    );
    assert_eq!(env_value(&s, &id, "FLY_APP_NAME").as_deref(), Some("vault"));
    // The bundle that carried the environment to runc is gone.
    let bundle = hangar_runtime::machine::run_dir_for(s.data_dir())
        .join("bundles")
        .join(&id);
    assert!(!bundle.join("config.json").exists());

    // Everything the server answered, the machine's events included.
    let paths = [
        "/v1/apps/vault".to_owned(),
        "/v1/apps/vault/secrets".to_owned(),
        "/v1/apps/vault/secrets/CANARY".to_owned(),
        format!("/v1/apps/vault/machines/{id}"),
        format!("/v1/apps/vault/machines/{id}/events"),
        "/v1/apps/vault/machines".to_owned(),
    ];
    for p in &paths {
        let (code, _) = seen.api(&s, "GET", p, None);
        assert_eq!(code, 200, "{p}");
    }
    let (code, v) = seen.api(&s, "GET", "/v1/apps/vault/secrets?show_secrets=true", None);
    assert_eq!(code, 403, "{v}");

    // Changing a value: the machine gets it at its next start.
    let canary2 = random_canary();
    seen.ok(
        &s,
        &["secrets", "set", "-a", "vault", "CANARY=-", "--stage"],
        Some(format!("{canary2}\n").as_bytes()),
    );
    restart(&mut seen, &s, "vault", &id);
    assert_eq!(
        env_value(&s, &id, "CANARY").as_deref(),
        Some(canary2.as_str())
    );
    seen.ok(
        &s,
        &["secrets", "unset", "SHADOWED", "-a", "vault", "--stage"],
        None,
    );
    restart(&mut seen, &s, "vault", &id);
    assert_eq!(env_value(&s, &id, "SHADOWED").as_deref(), Some("config"));

    // A restart of the server reads the same key and still decrypts.
    s.restart();
    restart(&mut seen, &s, "vault", &id);
    assert_eq!(
        env_value(&s, &id, "CANARY").as_deref(),
        Some(canary2.as_str())
    );

    let machine_pid = init_pid(&s, &id);
    // The scans see what is there: the admin token on disk, the machine's command line,
    // and the current value in the machine's environment.
    assert!(!files_containing(s.data_dir(), s.token.as_bytes()).is_empty());
    assert!(
        procs_containing("cmdline", b"sleep\x00100000")
            .iter()
            .any(|(pid, _)| *pid == machine_pid)
    );
    assert!(
        procs_containing("environ", canary2.as_bytes())
            .iter()
            .any(|(pid, _)| *pid == machine_pid)
    );
    for value in [&canary, &canary2, &imported] {
        let needle = value.as_bytes();
        let on_disk = files_containing(s.data_dir(), needle);
        assert!(on_disk.is_empty(), "clear text secret in {on_disk:?}");
        assert!(
            !contains(s.server_log().as_bytes(), needle),
            "in the server log"
        );
        for (i, body) in seen.0.iter().enumerate() {
            assert!(!body.contains(value.as_str()), "in output {i}: {body}");
        }
        let cmdlines = procs_containing("cmdline", needle);
        assert!(cmdlines.is_empty(), "in command lines: {cmdlines:?}");
        // Only the machine's own process has a current value in its environment (the
        // shim, runc and the server do not); an old value is nowhere.
        let environs: Vec<(i32, String)> = procs_containing("environ", needle)
            .into_iter()
            .filter(|(pid, _)| *pid != machine_pid || value == &canary)
            .collect();
        assert!(
            environs.is_empty(),
            "in processes' environments: {environs:?}"
        );
    }
}

#[test]
fn rotating_the_master_key_rewraps_data_keys_and_machines_keep_their_secrets() {
    require_root!();
    let mut s = Server::start();
    let mut seen = Seen::default();
    s.import(
        &hangar_runtime::image::build::busybox_image(),
        "busybox:latest",
    );
    for app in ["rot-a", "rot-b"] {
        seen.ok(&s, &["apps", "create", app], None);
    }
    let a = random_canary();
    let b = random_canary();
    seen.ok(
        &s,
        &["secrets", "set", &format!("A={a}"), "-a", "rot-a"],
        None,
    );
    seen.ok(
        &s,
        &["secrets", "set", &format!("B={b}"), "-a", "rot-b"],
        None,
    );
    let id = run_sleeper(&mut seen, &s, "rot-a", "web");
    assert_eq!(env_value(&s, &id, "A").as_deref(), Some(a.as_str()));
    let init_before = init_pid(&s, &id);

    let key_path = s.data_dir().join("master.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let old_bytes = std::fs::read(&key_path).unwrap();
    let old = hangar_control::secrets::MasterKey::from_bytes(&old_bytes, &key_path).unwrap();

    // Without a token: refused.
    let (code, _) = s.api_with(
        "POST",
        "/v1/secrets/rotate-master-key",
        None,
        None,
        "application/json",
    );
    assert_eq!(code, 401);
    let out = seen.ok(&s, &["--json", "secrets", "rotate-master-key"], None);
    let rotation: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotation["apps"], 2, "{rotation}");
    assert_eq!(rotation["old_master_key_id"], old.id(), "{rotation}");
    let new_bytes = std::fs::read(&key_path).unwrap();
    assert_ne!(new_bytes, old_bytes);
    assert!(!s.data_dir().join("master.key.new").exists());

    // The machine kept running: no restart was needed.
    assert_eq!(init_pid(&s, &id), init_before);
    assert!(Path::new(&format!("/proc/{init_before}")).exists());

    // The old key opens no stored data key; the new one opens all.
    let new = hangar_control::secrets::MasterKey::from_bytes(&new_bytes, &key_path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = rt.block_on(async {
        let store = hangar_store::Store::open(&s.data_dir().join("hangar.db"))
            .await
            .unwrap();
        let keys = store.list_app_keys().await.unwrap();
        store.close().await;
        keys
    });
    assert_eq!(keys.len(), 2);
    for k in &keys {
        assert_eq!(k.master_key_id, new.id());
        assert!(old.unwrap(&k.app, &k.wrapped_key).is_err(), "{}", k.app);
        assert!(new.unwrap(&k.app, &k.wrapped_key).is_ok(), "{}", k.app);
    }

    // Machines start with the right values, before and after a server restart.
    restart(&mut seen, &s, "rot-a", &id);
    assert_eq!(env_value(&s, &id, "A").as_deref(), Some(a.as_str()));
    s.restart();
    let idb = run_sleeper(&mut seen, &s, "rot-b", "web");
    assert_eq!(env_value(&s, &idb, "B").as_deref(), Some(b.as_str()));
    restart(&mut seen, &s, "rot-a", &id);
    assert_eq!(env_value(&s, &id, "A").as_deref(), Some(a.as_str()));

    // The server refuses to start with the old key file: it wraps nothing.
    std::fs::write(&key_path, &old_bytes).unwrap();
    s.kill9();
    let mut server = Command::new(HANGAR)
        .args(["server", "--data-dir"])
        .arg(s.data_dir())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--ipv4-pool",
            crate::support::IPV4_POOL,
            "--ipv6-pool",
            crate::support::IPV6_POOL,
        ])
        .env("HANGAR_MASTER_KEY_FILE", &key_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually(
        Duration::from_secs(30),
        "the server to refuse the old key",
        || server.try_wait().unwrap(),
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("master key"), "{err}");
    // Put the right key back so the server can be restarted for cleanup.
    std::fs::write(&key_path, &new_bytes).unwrap();
    s.restart();
    for v in [&a, &b] {
        assert!(files_containing(s.data_dir(), v.as_bytes()).is_empty());
        for body in &seen.0 {
            assert!(!body.contains(v.as_str()), "{body}");
        }
    }
}

#[test]
fn bad_secrets_are_refused_with_the_name_and_never_the_value() {
    require_root!();
    let s = Server::start();
    let mut seen = Seen::default();
    seen.ok(&s, &["apps", "create", "strict"], None);
    let big = format!("{}{}", random_canary(), "x".repeat(70_000));
    let canary = random_canary();
    let big_message = format!("the value of BIG is {} bytes; at most 65536", big.len());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("1BAD={canary}")], "1BAD"),
        (vec![format!("BAD-NAME={canary}")], "BAD-NAME"),
        (
            vec![format!("FLY_APP_NAME={canary}")],
            "FLY_APP_NAME is reserved",
        ),
        (
            vec![format!("HANGAR_TOKEN={canary}")],
            "HANGAR_TOKEN is reserved",
        ),
        (vec![format!("RELEASE_COMMAND={canary}")], "reserved"),
        (vec![format!("BIG={big}")], &big_message),
        (vec![canary.clone()], "no '='"),
    ];
    for (pairs, needle) in &cases {
        let mut args = vec!["secrets", "set", "-a", "strict"];
        args.extend(pairs.iter().map(String::as_str));
        let err = seen.refused(&s, &args, needle);
        assert!(!err.contains(&canary) && !err.contains(&big[..40]), "{err}");
    }
    seen.refused(
        &s,
        &["secrets", "set", &format!("K={canary}"), "-a", "nope"],
        "nope",
    );
    seen.refused(&s, &["secrets", "list", "-a", "nope"], "nope");
    seen.refused(
        &s,
        &["secrets", "unset", "MISSING", "-a", "strict"],
        "MISSING",
    );
    seen.refused(
        &s,
        &["secrets", "import", "-a", "strict"],
        "no secrets in the input",
    );
    // The API: wrong types and malformed JSON never quote the body.
    for body in [
        format!(r#"{{"values": {{"K": ["{canary}"]}}}}"#),
        format!(r#"{{"values": "{canary}"}}"#),
        format!(r#"{{"values": {{"K": "{canary}"}}, "stage": "{canary}"}}"#),
        format!(r#"{{"values": {{"K": "{canary}""#),
        format!(r#"{{"values": {{"K": "{canary}"}}, "extra": "{canary}"}}"#),
    ] {
        let (code, v) = seen.api(&s, "POST", "/v1/apps/strict/secrets", Some(&body));
        assert_eq!(code, 400, "{body}: {v}");
        assert!(!v.to_string().contains(&canary), "{v}");
    }
    let (code, v) = seen.api(
        &s,
        "POST",
        "/v1/apps/strict/secrets/FLY_REGION",
        Some(&json!({"value": canary}).to_string()),
    );
    assert_eq!(code, 422, "{v}");
    // Nothing was stored by the refused calls.
    let (code, v) = seen.api(&s, "GET", "/v1/apps/strict/secrets", None);
    assert_eq!(code, 200);
    assert_eq!(v["secrets"], json!([]), "{v}");
    assert!(!contains(s.server_log().as_bytes(), canary.as_bytes()));
    assert!(files_containing(s.data_dir(), canary.as_bytes()).is_empty());
}

/// The ids of the app's machines at `release`, from `hangar status`.
fn machines_at(s: &Server, app: &str, release: i64) -> Vec<String> {
    let st = s.json(&["status", "--app", app]);
    st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["release"] == release && m["state"] == "started")
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn setting_secrets_rolls_a_deployed_app_unless_staged() {
    require_root!();
    let s = Server::start();
    let mut seen = Seen::default();
    s.import(
        &hangar_runtime::image::build::busybox_image()
            .host_file(
                "bin/hangar-testapp",
                &crate::support::testapp_binary(),
                0o755,
            )
            .cmd(["/bin/hangar-testapp"]),
        "web:base",
    );
    seen.ok(&s, &["apps", "create", "rolled"], None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hangar.toml"),
        "app = \"rolled\"\n\n[http_service]\n  internal_port = 8080\n\n[deploy]\n  strategy = \"rolling\"\n  wait_timeout = \"30s\"\n",
    )
    .unwrap();
    seen.ok(
        &s,
        &[
            "deploy",
            dir.path().to_str().unwrap(),
            "--image",
            "web:base",
            "--count",
            "2",
        ],
        None,
    );
    assert_eq!(machines_at(&s, "rolled", 1).len(), 2);

    // Staged: stored, nothing restarts.
    let staged = random_canary();
    seen.ok(
        &s,
        &[
            "secrets",
            "set",
            &format!("STAGED={staged}"),
            "-a",
            "rolled",
            "--stage",
        ],
        None,
    );
    let v1 = machines_at(&s, "rolled", 1);
    assert_eq!(v1.len(), 2);
    for id in &v1 {
        assert_eq!(env_value(&s, id, "STAGED"), None);
    }

    // Not staged: a new release, every machine restarted with both values; the command
    // follows the restart to its end.
    let rolled = random_canary();
    let load = crate::deploy::Load::start(s.http, "rolled.localhost", 2);
    let out = seen.ok(
        &s,
        &[
            "secrets",
            "set",
            &format!("ROLLED={rolled}"),
            "-a",
            "rolled",
        ],
        None,
    );
    let runs = load.finish();
    let total: usize = runs.iter().map(Vec::len).sum();
    assert!(total > 10, "the load made only {total} requests");
    for run in &runs {
        assert!(
            run.iter().all(|(code, _)| *code == 200),
            "requests failed while the secrets rolled: {:?}",
            run.iter()
                .filter(|(c, _)| *c != 200)
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    assert!(out.contains("restarting its machines"), "{out}");
    let v2 = machines_at(&s, "rolled", 2);
    assert_eq!(v2.len(), 2, "{out}");
    for id in &v2 {
        assert_eq!(
            env_value(&s, id, "STAGED").as_deref(),
            Some(staged.as_str())
        );
        assert_eq!(
            env_value(&s, id, "ROLLED").as_deref(),
            Some(rolled.as_str())
        );
    }

    // --detach returns at once; the roll still happens.
    seen.ok(
        &s,
        &["secrets", "unset", "STAGED", "-a", "rolled", "--detach"],
        None,
    );
    let v3 = eventually(Duration::from_secs(60), "the roll to release 3", || {
        let ids = machines_at(&s, "rolled", 3);
        let st = s.json(&["status", "--app", "rolled"]);
        (ids.len() == 2 && st["deploy"].is_null()).then_some(ids)
    });
    for id in &v3 {
        assert_eq!(env_value(&s, id, "STAGED"), None);
        assert_eq!(
            env_value(&s, id, "ROLLED").as_deref(),
            Some(rolled.as_str())
        );
    }
    // Release records hold no value.
    let releases = seen.ok(&s, &["--json", "releases", "-a", "rolled"], None);
    for v in [&staged, &rolled] {
        assert!(!releases.contains(v.as_str()));
        assert!(files_containing(s.data_dir(), v.as_bytes()).is_empty());
        assert!(!contains(s.server_log().as_bytes(), v.as_bytes()));
        for body in &seen.0 {
            assert!(!body.contains(v.as_str()), "{body}");
        }
    }
}
