//! Root integration tests of the machine runtime: real runc, real overlay mounts, real
//! cgroups, the real shim (through the `hangar-runtime-test-shim` binary).
//!
//! Each test builds a busybox image by hand (no image store), runs in its own temp data
//! dir with unique machine ids, and cleans up through `Harness`'s `Drop` even when an
//! assertion fails. Without root every test prints why it skips and returns.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hangar_core::machine::Init;
use hangar_core::{Guest, MachineConfig, MachineId};
use hangar_runtime::machine::{
    ExitRecord, HostState, LogLine, MachineRuntime, NetworkSpec, RuntimeError, RuntimeOptions,
    StartSpec,
};
use hangar_runtime::{ImageConfig, ResolvedImage};

const CGROUP_PARENT: &str = "hangar-rt-test";
const BUSYBOX: &str = "/bin/busybox";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipping: this test needs root (runc, overlay mounts, cgroups)");
            return;
        }
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} is missing: apt-get install -y busybox-static"
        );
    };
}

/// A temp data dir, a busybox layer, a runtime, and every machine and netns it made,
/// destroyed on drop.
struct Harness {
    /// Kept for its `Drop`: removed after the machines are destroyed.
    _tmp: tempfile::TempDir,
    rt: MachineRuntime,
    layer: PathBuf,
    machines: Vec<MachineId>,
    netns: Vec<String>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_logs(10 * 1024 * 1024, 5)
    }

    fn with_logs(log_max_bytes: u64, log_files: usize) -> Harness {
        let tmp = tempfile::Builder::new()
            .prefix("hangar-rt-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let layer = tmp.path().join("layer");
        make_busybox_layer(&layer);
        let mut opts = RuntimeOptions::new(
            &tmp.path().join("data"),
            PathBuf::from(env!("CARGO_BIN_EXE_hangar-runtime-test-shim")),
        );
        opts.cgroup_parent = CGROUP_PARENT.to_owned();
        opts.log_max_bytes = log_max_bytes;
        opts.log_files = log_files;
        let rt = MachineRuntime::new(opts).unwrap();
        Harness {
            _tmp: tmp,
            rt,
            layer,
            machines: Vec::new(),
            netns: Vec::new(),
        }
    }

    /// A second runtime on the same directories, as a restarted server would have.
    fn reopen(&self) -> MachineRuntime {
        MachineRuntime::new(self.rt.options().clone()).unwrap()
    }

    fn image(&self, config: ImageConfig) -> ResolvedImage {
        ResolvedImage {
            reference: "busybox-test".into(),
            name: Some("busybox-test:latest".into()),
            manifest_digest: "sha256:00".into(),
            config_digest: "sha256:01".into(),
            config,
            layers: vec![self.layer.clone()],
        }
    }

    fn spec(&mut self, exec: &[&str]) -> StartSpec {
        let id = MachineId::generate();
        self.machines.push(id.clone());
        StartSpec {
            id,
            instance_id: "01TESTINSTANCE0000000000AA".into(),
            app: "test".into(),
            config: MachineConfig {
                init: Some(Init {
                    exec: Some(exec.iter().map(|s| (*s).to_owned()).collect()),
                    ..Init::default()
                }),
                ..MachineConfig::default()
            },
            image: self.image(ImageConfig::default()),
            env: BTreeMap::new(),
            network: None,
        }
    }

    fn add_netns(&mut self) -> PathBuf {
        let name = format!("hangar-rt-test-{}", MachineId::generate());
        run("ip", &["netns", "add", &name]);
        self.netns.push(name.clone());
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        PathBuf::from("/run/netns").join(name)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for id in &self.machines {
            if let Err(e) = self.rt.destroy(id) {
                eprintln!("cleanup: destroy {id}: {e}");
            }
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // Never let the temp dir removal walk into a mount that survived a failed destroy.
        let mounts = mountinfo();
        for id in &self.machines {
            let rootfs = self.rt.machine_dir(id).join("rootfs");
            if mounts.contains(rootfs.to_str().unwrap_or("-")) {
                let _ = Command::new("umount").arg("-l").arg(&rootfs).status();
            }
        }
        // runc's state and the bundles of this data dir are on the tmpfs, not in the dir.
        if let Some(run_dir) = self.rt.options().runc_root.parent() {
            let _ = fs::remove_dir_all(run_dir);
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().unwrap();
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// A rootfs layer with busybox and its applets, a passwd/group with an `app` user, and
/// a few directories.
fn make_busybox_layer(layer: &Path) {
    for d in [
        "bin", "etc", "tmp", "work", "home/app", "proc", "sys", "dev",
    ] {
        fs::create_dir_all(layer.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, layer.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet));
    }
    fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        layer.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    fs::write(
        layer.join("etc/hosts"),
        "# image hosts file, replaced at start\n",
    )
    .unwrap();
}

async fn wait_exit(rt: &MachineRuntime, id: &MachineId) -> ExitRecord {
    tokio::time::timeout(Duration::from_secs(30), rt.wait_exit(id))
        .await
        .expect("machine did not exit within 30s")
        .unwrap()
}

fn messages(lines: &[LogLine]) -> Vec<String> {
    lines.iter().map(|l| l.message.clone()).collect()
}

/// Polls the logs until a line equals `want`, with a deadline.
fn wait_for_log(rt: &MachineRuntime, id: &MachineId, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = rt.read_logs(id, None).unwrap();
        if lines.iter().any(|l| l.message == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log line {want:?} did not appear; logs: {:?}",
            messages(&lines)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn exit_codes_are_recorded_and_the_container_is_gone() {
    require_root!();
    let mut h = Harness::new();
    let mut spec = h.spec(&["sh", "-c", "echo hello; exit 0"]);
    let running = h.rt.start(&spec).unwrap();
    assert!(running.init_pid > 0 && running.shim_pid > 0);
    let record = wait_exit(&h.rt, &spec.id).await;
    assert_eq!(
        (record.exit_code, record.signal, record.oom_killed),
        (0, None, false)
    );
    assert_eq!(
        messages(&h.rt.read_logs(&spec.id, None).unwrap()),
        vec!["hello"]
    );
    assert_eq!(h.rt.inspect(&spec.id).unwrap(), HostState::Exited(record));

    // The same machine started again records the new exit.
    spec.config.init.as_mut().unwrap().exec = Some(vec![
        "sh".into(),
        "-c".into(),
        "echo again >&2; exit 3".into(),
    ]);
    h.rt.start(&spec).unwrap();
    let record = wait_exit(&h.rt, &spec.id).await;
    assert_eq!((record.exit_code, record.signal), (3, None));
    let lines = h.rt.read_logs(&spec.id, None).unwrap();
    assert_eq!(messages(&lines), vec!["hello", "again"]);
    assert_eq!(lines[1].stream, "stderr");
    assert_eq!(lines[1].machine_id, spec.id.as_str());
    // The shim deleted the runc container after recording the exit.
    let runc_state = h.rt.options().runc_root.join(spec.id.as_str());
    assert!(
        !runc_state.exists(),
        "runc state left at {}",
        runc_state.display()
    );
}

#[tokio::test]
async fn the_environment_never_reaches_the_data_dir_and_the_bundle_is_removed() {
    require_root!();
    let mut h = Harness::new();
    let mut spec = h.spec(&["sleep", "100000"]);
    let canary = format!("canary-{}", MachineId::generate());
    spec.env.insert("SECRET".into(), canary.clone());
    let running = h.rt.start(&spec).unwrap();
    // `runc start` returns once it has told runc's init to exec the process; until the
    // exec, /proc shows runc init's own environment. Poll with a deadline.
    let needle = format!("SECRET={canary}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let environ = fs::read(format!("/proc/{}/environ", running.init_pid)).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the machine lacks its environment"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let opts = h.rt.options();
    assert!(!opts.runc_root.starts_with(opts.root.parent().unwrap()));
    assert!(!h.rt.bundle_dir(&spec.id).exists(), "the bundle was kept");
    // Nothing under the data dir holds the value: not the machine dir, not runc's state.
    let data = opts.root.parent().unwrap();
    let mut stack = vec![data.to_path_buf()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() && e.file_name() != "rootfs" {
                stack.push(e.path());
            } else if ft.is_file() {
                files += 1;
                let bytes = fs::read(e.path()).unwrap();
                assert!(
                    !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                    "the environment is in {}",
                    e.path().display()
                );
            }
        }
    }
    assert!(files > 3, "the scan found only {files} files");
    // Neither is runc's state on the tmpfs (runc keeps no process environment there).
    let state = fs::read(opts.runc_root.join(spec.id.as_str()).join("state.json")).unwrap();
    assert!(!state.windows(canary.len()).any(|w| w == canary.as_bytes()));
}

#[tokio::test]
async fn environment_user_cwd_hostname_and_etc_files_are_visible() {
    require_root!();
    let mut h = Harness::new();
    let netns = h.add_netns();
    let ns_name = netns.file_name().unwrap().to_str().unwrap().to_owned();
    run(
        "ip",
        &[
            "-n", &ns_name, "link", "add", "hrtv0", "type", "veth", "peer", "name", "hrtv1",
        ],
    );
    let mut spec = h.spec(&[]);
    spec.config.init = Some(Init {
        cmd: Some(vec![
            "-c".into(),
            "env; id; pwd; hostname; cat /etc/hosts /etc/resolv.conf /etc/hostname; cat /proc/net/dev"
                .into(),
        ]),
        ..Init::default()
    });
    spec.image = h.image(ImageConfig {
        entrypoint: vec!["/bin/sh".into()],
        cmd: vec!["-c".into(), "echo image cmd must not run".into()],
        env: vec!["FROM_IMAGE=1".into(), "OVERRIDDEN=image".into()],
        working_dir: "/work".into(),
        user: "app".into(),
        ..ImageConfig::default()
    });
    spec.config.env = [("OVERRIDDEN", "config"), ("FROM_CONFIG", "2")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    spec.env = [
        ("FLY_MACHINE_ID", spec.id.as_str()),
        ("FROM_CONFIG", "platform"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    spec.network = Some(NetworkSpec {
        netns_path: netns,
        ipv4: Some("10.213.0.5".parse().unwrap()),
        ipv6: None,
        hosts: vec![("10.213.0.1".parse().unwrap(), "gateway.test".into())],
        nameservers: vec!["10.213.0.1".parse().unwrap()],
        search: vec!["test.internal".into()],
    });
    h.rt.start(&spec).unwrap();
    let record = wait_exit(&h.rt, &spec.id).await;
    let out = messages(&h.rt.read_logs(&spec.id, None).unwrap());
    assert_eq!(record.exit_code, 0, "{out:?}");
    let has = |want: &str| {
        assert!(
            out.iter().any(|l| l == want),
            "missing {want:?} in {out:#?}"
        )
    };
    let id = spec.id.as_str();
    has("FROM_IMAGE=1");
    has("OVERRIDDEN=config");
    has("FROM_CONFIG=platform");
    has(&format!("FLY_MACHINE_ID={id}"));
    has(&format!("HOSTNAME={id}"));
    has("HOME=/home/app");
    has("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    has("uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)");
    has("/work");
    has(id);
    has(&format!("10.213.0.5\t{id}"));
    has("10.213.0.1\tgateway.test");
    has("nameserver 10.213.0.1");
    has("search test.internal");
    assert!(
        !out.iter().any(|l| l.contains("image cmd must not run")),
        "the image cmd ran: {out:?}"
    );
    assert!(
        !out.iter().any(|l| l.contains("image hosts file")),
        "the image's /etc/hosts was not replaced: {out:?}"
    );
    // The machine joined the given network namespace: it sees the link made there.
    assert!(
        out.iter().any(|l| l.trim_start().starts_with("hrtv0:")),
        "{out:#?}"
    );
}

#[tokio::test]
async fn an_empty_network_namespace_has_loopback_and_names_the_machine() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&["sh", "-c", "cat /etc/hosts; ip -o link show lo"]);
    h.rt.start(&spec).unwrap();
    let record = wait_exit(&h.rt, &spec.id).await;
    let out = messages(&h.rt.read_logs(&spec.id, None).unwrap());
    assert_eq!(record.exit_code, 0, "{out:?}");
    assert!(
        out.contains(&format!("127.0.0.1\tlocalhost {}", spec.id)),
        "{out:#?}"
    );
    assert!(
        out.iter().any(|l| l.contains("lo: <LOOPBACK,UP")),
        "{out:#?}"
    );
}

#[tokio::test]
async fn the_rootfs_is_fresh_on_every_start() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&[
        "sh",
        "-c",
        "if [ -e /marker ]; then echo stale; exit 1; fi; touch /marker; echo fresh",
    ]);
    for _ in 0..2 {
        h.rt.start(&spec).unwrap();
        let record = wait_exit(&h.rt, &spec.id).await;
        assert_eq!(record.exit_code, 0);
    }
    assert_eq!(
        messages(&h.rt.read_logs(&spec.id, None).unwrap()),
        vec!["fresh", "fresh"]
    );
}

#[tokio::test]
async fn graceful_stop_records_exit_0() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&[
        "sh",
        "-c",
        "trap 'echo bye; exit 0' INT; echo ready; while true; do sleep 0.1; done",
    ]);
    h.rt.start(&spec).unwrap();
    wait_for_log(&h.rt, &spec.id, "ready");
    let t = Instant::now();
    let record =
        h.rt.stop(&spec.id, 2, Duration::from_secs(10))
            .await
            .unwrap();
    assert_eq!((record.exit_code, record.signal), (0, None));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    wait_for_log(&h.rt, &spec.id, "bye");
    assert_eq!(h.rt.inspect(&spec.id).unwrap(), HostState::Exited(record));
}

#[tokio::test]
async fn a_process_ignoring_sigint_is_killed_after_the_timeout() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&["sh", "-c", "trap '' INT; echo ready; sleep 100"]);
    h.rt.start(&spec).unwrap();
    wait_for_log(&h.rt, &spec.id, "ready");
    let t = Instant::now();
    let record =
        h.rt.stop(&spec.id, 2, Duration::from_secs(1))
            .await
            .unwrap();
    let took = t.elapsed();
    assert_eq!((record.exit_code, record.signal), (137, Some(9)));
    assert!(!record.oom_killed);
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL came before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
}

#[tokio::test]
async fn an_oom_kill_is_recorded() {
    require_root!();
    let mut h = Harness::new();
    let mut spec = h.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]);
    spec.config.guest = Some(Guest {
        memory_mb: 64,
        ..Guest::default()
    });
    h.rt.start(&spec).unwrap();
    let record = wait_exit(&h.rt, &spec.id).await;
    assert!(record.oom_killed, "not recorded as OOM: {record:?}");
    assert_eq!((record.exit_code, record.signal), (137, Some(9)));
}

#[tokio::test]
async fn a_missing_executable_fails_the_start_with_runc_s_message() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&["/app"]);
    let err = h.rt.start(&spec).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RuntimeError::StartFailed { .. }) && msg.contains("exec: \"/app\""),
        "{msg}"
    );
    let rootfs = h.rt.machine_dir(&spec.id).join("rootfs");
    assert!(!mountinfo().contains(rootfs.to_str().unwrap()));
    assert!(!h.rt.options().runc_root.join(spec.id.as_str()).exists());
    assert_eq!(h.rt.inspect(&spec.id).unwrap(), HostState::Absent);

    let mut spec = h.spec(&[]);
    spec.config.init = None;
    let err = h.rt.start(&spec).unwrap_err();
    assert!(err.to_string().contains("no command to run"), "{err}");
}

#[tokio::test]
async fn logs_rotate_and_keep_the_newest_lines() {
    require_root!();
    let mut h = Harness::with_logs(8 * 1024, 3);
    let spec = h.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 1000 ]; do echo line $i; i=$((i+1)); done",
    ]);
    h.rt.start(&spec).unwrap();
    assert_eq!(wait_exit(&h.rt, &spec.id).await.exit_code, 0);
    let logs_dir = h.rt.machine_dir(&spec.id).join("logs");
    let mut files: Vec<String> = fs::read_dir(&logs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, vec!["current.log", "current.log.1", "current.log.2"]);
    for f in &files {
        assert!(fs::metadata(logs_dir.join(f)).unwrap().len() <= 8 * 1024);
    }
    let lines = messages(&h.rt.read_logs(&spec.id, None).unwrap());
    let first: usize = lines[0].strip_prefix("line ").unwrap().parse().unwrap();
    assert!(first > 0);
    let want: Vec<String> = (first..1000).map(|n| format!("line {n}")).collect();
    assert_eq!(
        lines, want,
        "kept lines are not the newest, contiguous ones"
    );
    let tail = messages(&h.rt.read_logs(&spec.id, Some(3)).unwrap());
    assert_eq!(tail, vec!["line 997", "line 998", "line 999"]);
}

#[tokio::test]
async fn a_new_runtime_adopts_a_running_machine_and_follows_its_logs() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&[
        "sh",
        "-c",
        "trap 'exit 0' INT; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
    ]);
    let running = h.rt.start(&spec).unwrap();
    wait_for_log(&h.rt, &spec.id, "tick 2");

    // What a restarted server sees: the same directories, a runtime that never spawned
    // the shim.
    let adopted = h.reopen();
    assert_eq!(
        adopted.inspect(&spec.id).unwrap(),
        HostState::Running {
            shim_pid: running.shim_pid,
            init_pid: running.init_pid
        }
    );
    assert!(adopted.list_host_machines().unwrap().contains(&spec.id));
    let mut follow = Box::pin(adopted.follow_logs(&spec.id, Some(1)));
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let line = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("follow stalled")
            .unwrap()
            .unwrap();
        seen.push(line.message);
    }
    // Consecutive ticks: no gap and no repeat between history and new lines.
    let nums: Vec<usize> = seen
        .iter()
        .map(|m| m.strip_prefix("tick ").unwrap().parse().unwrap())
        .collect();
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap or repeat in {nums:?}");
    }
    let record = adopted
        .stop(&spec.id, 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((record.exit_code, record.signal), (0, None));
}

fn mountinfo() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn cgroup_dirs(id: &MachineId) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = entry.path().join(CGROUP_PARENT).join(id.as_str());
        if dir.exists() {
            found.push(dir);
        }
    }
    let v2 = Path::new("/sys/fs/cgroup")
        .join(CGROUP_PARENT)
        .join(id.as_str());
    if v2.exists() {
        found.push(v2);
    }
    found
}

#[tokio::test]
async fn destroy_leaves_nothing_on_the_host() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&["sleep", "1000"]);
    let running = h.rt.start(&spec).unwrap();
    let dir = h.rt.machine_dir(&spec.id);
    // Everything exists while it runs.
    assert!(mountinfo().contains(dir.join("rootfs").to_str().unwrap()));
    assert!(!cgroup_dirs(&spec.id).is_empty(), "no cgroup while running");
    let listed = Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(&h.rt.options().runc_root)
        .arg("list")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(spec.id.as_str()));

    h.rt.destroy(&spec.id).unwrap();

    assert!(!dir.exists(), "machine dir left behind");
    assert!(
        !mountinfo().contains(dir.to_str().unwrap()),
        "a mount of the machine is left"
    );
    assert!(!h.rt.options().runc_root.join(spec.id.as_str()).exists());
    let listed = Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(&h.rt.options().runc_root)
        .arg("list")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(spec.id.as_str()),
        "runc still lists the machine"
    );
    assert_eq!(cgroup_dirs(&spec.id), Vec::<PathBuf>::new());
    for pid in [running.shim_pid, running.init_pid] {
        assert!(
            fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| c.is_empty()),
            "process {pid} survived destroy"
        );
    }
    assert!(!h.rt.list_host_machines().unwrap().contains(&spec.id));
    assert_eq!(h.rt.inspect(&spec.id).unwrap(), HostState::Absent);
    // Idempotent.
    h.rt.destroy(&spec.id).unwrap();
}

#[tokio::test]
async fn an_image_with_many_layers_mounts_through_the_new_mount_api() {
    require_root!();
    let mut h = Harness::new();
    // 150 layers with long paths: far more than fits in mount(2)'s one-page option string.
    let layers_root = h
        .layer
        .parent()
        .unwrap()
        .join(format!("layers-{}", "x".repeat(60)));
    let mut layers = vec![h.layer.clone()];
    for n in 0..150 {
        let layer = layers_root.join(format!("layer-with-a-long-name-{n:03}"));
        fs::create_dir_all(layer.join("layers")).unwrap();
        fs::write(layer.join("layers").join(n.to_string()), "").unwrap();
        // Every layer rewrites the same file: the top one must win.
        fs::write(layer.join("top"), format!("{n}\n")).unwrap();
        layers.push(layer);
    }
    let mut spec = h.spec(&["sh", "-c", "ls /layers | wc -l; cat /top"]);
    spec.image.layers = layers;
    h.rt.start(&spec).unwrap();
    let record = wait_exit(&h.rt, &spec.id).await;
    let out = messages(&h.rt.read_logs(&spec.id, None).unwrap());
    assert_eq!(record.exit_code, 0, "{out:?}");
    assert_eq!(
        out.iter().map(|l| l.trim()).collect::<Vec<_>>(),
        vec!["150", "149"]
    );
}

#[tokio::test]
async fn a_machine_whose_shim_was_killed_is_reported_and_destroyed() {
    require_root!();
    let mut h = Harness::new();
    let spec = h.spec(&["sleep", "1000"]);
    let running = h.rt.start(&spec).unwrap();
    let shim = rustix::process::Pid::from_raw(running.shim_pid).unwrap();
    rustix::process::kill_process(shim, rustix::process::Signal::KILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = h.rt.inspect(&spec.id).unwrap();
        if state
            == (HostState::Orphaned {
                init_pid: running.init_pid,
            })
        {
            break;
        }
        assert!(Instant::now() < deadline, "still {state:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The container itself kept running without its shim.
    assert!(fs::read(format!("/proc/{}/cmdline", running.init_pid)).is_ok_and(|c| !c.is_empty()));
    let err = h.rt.wait_exit(&spec.id).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NoExitRecord { .. }), "{err}");
    h.rt.destroy(&spec.id).unwrap();
    assert_eq!(h.rt.inspect(&spec.id).unwrap(), HostState::Absent);
    assert!(fs::read(format!("/proc/{}/cmdline", running.init_pid)).map_or(true, |c| c.is_empty()));
}

/// Set in the child process of `killing_the_server_stops_no_machine_and_loses_no_line`.
const SERVER_CHILD_ENV: &str = "HANGAR_RT_TEST_SERVER_CHILD";

#[tokio::test]
async fn killing_the_server_stops_no_machine_and_loses_no_line() {
    require_root!();
    if let Some(args) = std::env::var_os(SERVER_CHILD_ENV) {
        // The "server": starts the machine, then waits to be killed with SIGKILL.
        let args = args.into_string().unwrap();
        let mut parts = args.split('\n');
        let (data, shim, layer, id) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let mut opts = RuntimeOptions::new(Path::new(data), PathBuf::from(shim));
        opts.cgroup_parent = CGROUP_PARENT.to_owned();
        let rt = MachineRuntime::new(opts).unwrap();
        let spec = StartSpec {
            id: id.parse().unwrap(),
            instance_id: "01TESTINSTANCE0000000000AA".into(),
            app: "test".into(),
            config: MachineConfig {
                init: Some(Init {
                    exec: Some(vec![
                        "sh".into(),
                        "-c".into(),
                        "trap 'exit 0' INT; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.02; done"
                            .into(),
                    ]),
                    ..Init::default()
                }),
                ..MachineConfig::default()
            },
            image: ResolvedImage {
                reference: "busybox-test".into(),
                name: None,
                manifest_digest: "sha256:00".into(),
                config_digest: "sha256:01".into(),
                config: ImageConfig::default(),
                layers: vec![PathBuf::from(layer)],
            },
            env: BTreeMap::new(),
            network: None,
        };
        rt.start(&spec).unwrap();
        println!("STARTED");
        std::thread::sleep(Duration::from_secs(120));
        return;
    }

    let mut h = Harness::new();
    let id = MachineId::generate();
    h.machines.push(id.clone());
    let opts = h.rt.options().clone();
    let data = opts.root.parent().unwrap().to_owned();
    let child_args = format!(
        "{}\n{}\n{}\n{}",
        data.display(),
        opts.shim_exe.display(),
        h.layer.display(),
        id
    );
    let mut server = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killing_the_server_stops_no_machine_and_loses_no_line",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SERVER_CHILD_ENV, child_args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shim_pid = loop {
        if let HostState::Running { shim_pid, init_pid } = h.rt.inspect(&id).unwrap()
            && init_pid > 0
        {
            break shim_pid;
        }
        assert!(
            Instant::now() < deadline,
            "the child server did not start the machine"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_for_log(&h.rt, &id, "tick 3");
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let ticks_at_kill = h.rt.read_logs(&id, None).unwrap().len();

    // The machine keeps running and logging without its server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.rt.read_logs(&id, None).unwrap().len() < ticks_at_kill + 20 {
        assert!(
            Instant::now() < deadline,
            "the machine stopped logging after the server died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(
        h.rt.inspect(&id).unwrap(),
        HostState::Running { shim_pid: p, .. } if p == shim_pid
    ));
    // A new server adopts and stops it; every line from the first on is there, in order.
    let adopted = h.reopen();
    let record = adopted.stop(&id, 2, Duration::from_secs(5)).await.unwrap();
    assert_eq!((record.exit_code, record.signal), (0, None));
    let lines = messages(&adopted.read_logs(&id, None).unwrap());
    let want: Vec<String> = (0..lines.len()).map(|n| format!("tick {n}")).collect();
    assert_eq!(lines, want, "log lines lost or reordered");
}
