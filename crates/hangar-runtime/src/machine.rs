//! Running machines on runc: the bundle (`config.json`), the overlay rootfs reset on
//! every start, the per-machine shim that owns the container's stdio and records its
//! exit, and the log files.
//!
//! On disk, per machine, `<root>/<id>/`: `rootfs/` (the overlay mount), `upper/`,
//! `work/`, `shim.json`, `shim.pid`, `init.pid`, `exit.json`, `shim.log`, and `logs/`.
//! The runc bundle's `config.json` (it holds the machine's environment, secrets included)
//! and runc's own state (`runc_root/<id>/`) live on a tmpfs outside the data dir
//! ([`run_dir_for`]), so no clear-text secret is ever written to the data dir's disk.
//!
//! **Invariant:** the bundle's `config.json` exists only while `runc run` reads it: it is
//! removed as soon as the shim has reported the start (or the failure).
//!
//! **Invariant:** the server never holds a container's pipes; the shim does. Killing the
//! server stops no machine and loses no log line, and everything the server needs to
//! adopt a machine again is in the machine directory.
//!
//! The methods are blocking unless `async`; the control plane calls the blocking ones
//! from `spawn_blocking`.

pub mod cgroup;
pub mod logs;
pub mod pidfd;
pub mod rootfs;
pub mod runc;
pub mod shim;
pub mod spec;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use hangar_core::{MachineConfig, MachineId};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use serde::{Deserialize, Serialize};

pub use logs::LogLine;
pub use shim::run_shim;

use cgroup::{CGROUP_MOUNT, Cgroups};
use rootfs::{EtcFiles, RootfsError, RootfsPaths};
use runc::{Runc, RuncError};
use shim::{ShimConfig, files};
use spec::{SpecError, SpecInput};

/// How long `start` waits for the shim's readiness line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for a machine to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong running a machine.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file operation on the host failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// runc is not where the options say.
    #[error("runc not found at {0}: install runc (>= 1.1; >= 1.2.8 in production) or set its path")]
    RuncMissing(PathBuf),
    /// The `config.json` could not be built.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The rootfs could not be mounted or unmounted.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// A runc call failed.
    #[error(transparent)]
    Runc(#[from] RuncError),
    /// The container could not be started; the message is runc's.
    #[error("machine {id} failed to start: {message}")]
    StartFailed {
        /// The machine.
        id: MachineId,
        /// Why, in runc's words (e.g. `exec: "/app": stat /app: no such file or directory`).
        message: String,
    },
    /// The shim died or misbehaved.
    #[error("the shim of machine {id} failed: {message}; see {log}")]
    Shim {
        /// The machine.
        id: MachineId,
        /// What happened.
        message: String,
        /// The shim's debug log.
        log: PathBuf,
    },
    /// The machine is already running.
    #[error("machine {0} is already running: stop it first")]
    AlreadyRunning(MachineId),
    /// The machine is not running.
    #[error("machine {0} is not running")]
    NotRunning(MachineId),
    /// The machine did not die even after SIGKILL.
    #[error("machine {0} did not exit after SIGKILL; check the host for stuck processes (D state)")]
    StopTimeout(MachineId),
    /// The machine's process ended without an exit record.
    #[error(
        "machine {id} exited without recording an exit status (its shim was killed?); see {log}"
    )]
    NoExitRecord {
        /// The machine.
        id: MachineId,
        /// The shim's debug log.
        log: PathBuf,
    },
    /// The machine's directory is still in use and was kept.
    #[error("cannot remove {0}: its rootfs is still mounted")]
    StillMounted(PathBuf),
    /// A blocking task was cancelled.
    #[error("a background task of the runtime failed: {0}")]
    Task(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How the runtime is set up on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Machine directories: `<data>/machines`.
    pub root: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state directory: `<run dir>/runc` on a tmpfs ([`run_dir_for`]).
    pub runc_root: PathBuf,
    /// Where the runc bundles (`<id>/config.json`) are written: `<run dir>/bundles`.
    pub bundle_root: PathBuf,
    /// The executable that runs the shim (the `hangar` binary itself).
    pub shim_exe: PathBuf,
    /// Arguments before the machine directory: `["shim"]` for `hangar shim <dir>`.
    pub shim_args: Vec<String>,
    /// The cgroup parent of all machines, e.g. `hangar`.
    pub cgroup_parent: String,
    /// Maximum number of processes per machine.
    pub pids_limit: i64,
    /// Bytes per log file.
    pub log_max_bytes: u64,
    /// Log files kept per machine (the live one included).
    pub log_files: usize,
}

impl RuntimeOptions {
    /// The defaults for a data directory and the `hangar` executable: runc at
    /// `/usr/sbin/runc`, cgroup parent `hangar`, 4096 pids, 5 log files of 10 MiB, runc
    /// state and bundles under [`run_dir_for`]`(data_dir)`.
    pub fn new(data_dir: &Path, shim_exe: PathBuf) -> RuntimeOptions {
        // The bundle points runc at the rootfs by absolute path, because the bundle lives
        // elsewhere: a relative `--data-dir` must not make it relative to the bundle.
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let run = run_dir_for(&data_dir);
        RuntimeOptions {
            root: data_dir.join("machines"),
            runc: PathBuf::from("/usr/sbin/runc"),
            runc_root: run.join("runc"),
            bundle_root: run.join("bundles"),
            shim_exe,
            shim_args: vec!["shim".to_owned()],
            cgroup_parent: "hangar".to_owned(),
            pids_limit: 4096,
            log_max_bytes: 10 * 1024 * 1024,
            log_files: 5,
        }
    }
}

/// Where a data dir's volatile runtime state lives: `/run/hangar/<16 hex chars of the
/// SHA-256 of the data dir's absolute path>`. `/run` is a tmpfs on systemd hosts, so the
/// bundles' `config.json` (which holds the machines' environment, secrets included)
/// never reaches a disk, and each data dir (test servers included) gets its own.
pub fn run_dir_for(data_dir: &Path) -> PathBuf {
    use sha2::Digest as _;
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    PathBuf::from("/run/hangar").join(&hex::encode(digest)[..16])
}

/// The network a machine joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The network namespace (made by hangar-net, loopback already up).
    pub netns_path: PathBuf,
    /// The machine's IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// The machine's IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Extra `/etc/hosts` entries.
    pub hosts: Vec<(IpAddr, String)>,
    /// `/etc/resolv.conf` nameservers.
    pub nameservers: Vec<IpAddr>,
    /// `/etc/resolv.conf` search domains.
    pub search: Vec<String>,
}

/// One start of a machine.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// The machine.
    pub id: MachineId,
    /// The instance (config version) being started.
    pub instance_id: String,
    /// The app, for logs.
    pub app: String,
    /// The machine config.
    pub config: MachineConfig,
    /// The image, resolved by the image store.
    pub image: crate::ResolvedImage,
    /// Variables set by the platform (`FLY_MACHINE_ID`, ...); they win over
    /// `config.env`, which wins over the image's `ENV`.
    pub env: BTreeMap<String, String>,
    /// The network; `None` gives the machine an empty network namespace (loopback only).
    pub network: Option<NetworkSpec>,
}

/// A started machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// The shim's pid.
    pub shim_pid: i32,
    /// The container's init pid (host pid namespace).
    pub init_pid: i32,
}

/// How a machine's main process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code; 128+signal when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer killed a process of the machine.
    pub oom_killed: bool,
    /// When the shim saw the exit (RFC 3339).
    pub exited_at: String,
}

/// What is on the host for a machine right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    /// The shim and the container are running.
    Running {
        /// The shim's pid.
        shim_pid: i32,
        /// The container's init pid (0 while runc is still creating it).
        init_pid: i32,
    },
    /// The machine ran and exited; this is what its shim recorded.
    Exited(ExitRecord),
    /// The container runs but its shim is gone (killed by hand): its output is no longer
    /// logged and its exit would not be recorded. Stop or destroy it and start again.
    Orphaned {
        /// The container's init pid.
        init_pid: i32,
    },
    /// Nothing runs and no exit was recorded.
    Absent,
}

/// Now, as RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    logs::now_timestamp()
}

/// Runs machines on this host. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MachineRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: RuntimeOptions,
    runc: Runc,
    cgroups: Cgroups,
    cgroup_namespace: bool,
    nofile: u64,
}

fn mkdir_private(path: &Path) -> Result<(), RuntimeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create directory", path))
}

fn remove_dir_if_present(path: &Path) -> Result<(), RuntimeError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    shim::parse_pid(&fs::read_to_string(path).ok()?)
}

impl MachineRuntime {
    /// Checks runc and creates the state directories.
    pub fn new(opts: RuntimeOptions) -> Result<Self, RuntimeError> {
        if !opts.runc.is_file() {
            return Err(RuntimeError::RuncMissing(opts.runc.clone()));
        }
        mkdir_private(&opts.root)?;
        mkdir_private(&opts.runc_root)?;
        mkdir_private(&opts.bundle_root)?;
        Ok(MachineRuntime {
            inner: Arc::new(Inner {
                runc: Runc::new(&opts.runc, &opts.runc_root),
                cgroups: Cgroups::detect(Path::new(CGROUP_MOUNT)),
                cgroup_namespace: cgroup::cgroup_namespace_supported(),
                nofile: spec::host_nofile_limit(),
                opts,
            }),
        })
    }

    /// The options in use.
    pub fn options(&self) -> &RuntimeOptions {
        &self.inner.opts
    }

    /// The directory of a machine.
    pub fn machine_dir(&self, id: &MachineId) -> PathBuf {
        self.inner.opts.root.join(id.as_str())
    }

    /// The runc bundle directory of a machine (on the tmpfs, only during a start).
    pub fn bundle_dir(&self, id: &MachineId) -> PathBuf {
        self.inner.opts.bundle_root.join(id.as_str())
    }

    fn cgroup_rel(&self, id: &MachineId) -> String {
        format!(
            "{}/{}",
            self.inner.opts.cgroup_parent.trim_matches('/'),
            id.as_str()
        )
    }

    /// The shim's pid if it is alive (and really is this machine's shim).
    fn live_shim(&self, id: &MachineId) -> Option<i32> {
        let dir = self.machine_dir(id);
        let pid = read_pid(&dir.join(files::SHIM_PID))?;
        pidfd::is_live_process_with_arg(pid, &dir).then_some(pid)
    }

    fn read_exit(&self, id: &MachineId) -> Option<ExitRecord> {
        let bytes = fs::read(self.machine_dir(id).join(files::EXIT)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Starts the machine: fresh rootfs, `config.json`, the shim; returns once the
    /// container's process runs, or with runc's error.
    pub fn start(&self, spec: &StartSpec) -> Result<Running, RuntimeError> {
        let id = &spec.id;
        let opts = &self.inner.opts;
        tracing::debug!(machine_id = %id, app = %spec.app, instance_id = %spec.instance_id, "starting machine");
        if self.live_shim(id).is_some() {
            return Err(RuntimeError::AlreadyRunning(id.clone()));
        }
        let dir = self.machine_dir(id);
        mkdir_private(&dir)?;
        for name in [files::EXIT, files::INIT_PID, files::SHIM_PID] {
            match fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &dir.join(name))(e));
                }
                _ => {}
            }
        }
        // A container left behind by a shim that died is in the way of `runc create`.
        if opts.runc_root.join(id.as_str()).exists() {
            self.inner.runc.delete_force(id.as_str())?;
        }
        // A fresh cgroup, so the shim can count OOM kills from zero.
        let rel = self.cgroup_rel(id);
        if let Err(e) = self.inner.cgroups.remove(&rel) {
            tracing::warn!(machine_id = %id, error = %e, "cannot remove the machine's leftover cgroup");
        }

        let paths = RootfsPaths::new(&dir);
        let (own, hosts, nameservers, search) = match &spec.network {
            Some(n) => {
                let own: Vec<IpAddr> = n
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(n.ipv6.map(IpAddr::V6))
                    .collect();
                (
                    own,
                    n.hosts.clone(),
                    n.nameservers.clone(),
                    n.search.clone(),
                )
            }
            None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        let etc = EtcFiles::new(id.as_str(), &own, &hosts, &nameservers, &search);
        rootfs::prepare(&paths, &spec.image.layers, &etc)?;
        let result = self.write_bundle_and_spawn(spec, &dir, &paths);
        if result.is_err() {
            // A machine that did not start keeps nothing mounted.
            let _ = rootfs::unmount_all(&paths.rootfs);
        }
        result
    }

    fn write_bundle_and_spawn(
        &self,
        spec: &StartSpec,
        dir: &Path,
        paths: &RootfsPaths,
    ) -> Result<Running, RuntimeError> {
        let id = &spec.id;
        let opts = &self.inner.opts;
        let user = spec::resolve_user(
            &spec.image.config.user,
            &rootfs::read_image_etc_file(&paths.rootfs, "passwd"),
            &rootfs::read_image_etc_file(&paths.rootfs, "group"),
        )?;
        let input = SpecInput {
            id,
            rootfs: &paths.rootfs,
            image: &spec.image.config,
            config: &spec.config,
            platform_env: &spec.env,
            user: &user,
            netns: spec.network.as_ref().map(|n| n.netns_path.as_path()),
            cgroup_parent: &opts.cgroup_parent,
            pids_limit: opts.pids_limit,
            cgroup_namespace: self.inner.cgroup_namespace,
            nofile: self.inner.nofile,
        };
        let config = spec::spec_to_json(&spec::build_spec(&input)?);
        let bundle = self.bundle_dir(id);
        mkdir_private(&bundle)?;
        let config_path = bundle.join("config.json");
        let written = shim::write_atomic(
            &config_path,
            &serde_json::to_vec_pretty(&config).unwrap_or_default(),
            false,
        )
        .map_err(io_err("write", &config_path));
        let result = written.and_then(|()| self.write_shim_config_and_spawn(spec, dir, &bundle));
        // runc has read the bundle by the time the shim reports, and never reads it again:
        // the machine's environment is not kept anywhere but in the machine itself.
        remove_dir_if_present(&bundle)?;
        result
    }

    fn write_shim_config_and_spawn(
        &self,
        spec: &StartSpec,
        dir: &Path,
        bundle: &Path,
    ) -> Result<Running, RuntimeError> {
        let id = &spec.id;
        let opts = &self.inner.opts;
        let shim_cfg = ShimConfig {
            machine_id: id.to_string(),
            instance_id: spec.instance_id.clone(),
            runc: opts.runc.clone(),
            runc_root: opts.runc_root.clone(),
            bundle: bundle.to_path_buf(),
            cgroup: self.cgroup_rel(id),
            cgroup_mount: PathBuf::from(CGROUP_MOUNT),
            log_max_bytes: opts.log_max_bytes,
            log_files: opts.log_files,
        };
        let shim_path = dir.join(files::SHIM_CONFIG);
        shim::write_atomic(
            &shim_path,
            &serde_json::to_vec_pretty(&shim_cfg).unwrap_or_default(),
            false,
        )
        .map_err(io_err("write", &shim_path))?;
        self.spawn_shim(id, dir)
    }

    fn spawn_shim(&self, id: &MachineId, dir: &Path) -> Result<Running, RuntimeError> {
        let opts = &self.inner.opts;
        let shim_log = dir.join(files::SHIM_LOG);
        let shim_err = |message: String| RuntimeError::Shim {
            id: id.clone(),
            message,
            log: shim_log.clone(),
        };
        // No process group here: the shim calls setsid() itself, which a group leader
        // may not do.
        let mut child = Command::new(&opts.shim_exe)
            .args(&opts.shim_args)
            .arg(dir)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| shim_err(format!("cannot run {}: {e}", opts.shim_exe.display())))?;
        let shim_pid = i32::try_from(child.id()).unwrap_or(0);
        let line = child
            .stdout
            .take()
            .ok_or_else(|| shim_err("no stdout pipe".to_owned()))
            .and_then(|out| read_line_with_deadline(out, START_TIMEOUT).map_err(shim_err));
        // The shim stays our child while we live: reap it when it exits so it does not
        // linger as a zombie. After a restart of the server it is nobody's concern of ours.
        let _ = std::thread::Builder::new()
            .name(format!("reap-shim-{id}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = child.wait();
            });
        let line = line?;
        if let Some(pid) = line.strip_prefix("started ") {
            let init_pid = pid
                .trim()
                .parse()
                .map_err(|_| shim_err(format!("unexpected readiness line {line:?}")))?;
            return Ok(Running { shim_pid, init_pid });
        }
        if let Some(message) = line.strip_prefix("error ") {
            return Err(RuntimeError::StartFailed {
                id: id.clone(),
                message: message.trim().to_owned(),
            });
        }
        Err(shim_err(if line.is_empty() {
            "the shim exited before reporting".to_owned()
        } else {
            format!("unexpected readiness line {line:?}")
        }))
    }

    /// Sends a signal to the container's init (`runc kill`).
    pub fn signal(&self, id: &MachineId, signal: i32) -> Result<(), RuntimeError> {
        match self.inner.runc.kill(id.as_str(), signal) {
            Err(e) if e.is_not_running() => Err(RuntimeError::NotRunning(id.clone())),
            other => other.map_err(RuntimeError::from),
        }
    }

    /// What is on the host for this machine right now.
    pub fn inspect(&self, id: &MachineId) -> Result<HostState, RuntimeError> {
        let dir = self.machine_dir(id);
        if let Some(shim_pid) = self.live_shim(id) {
            let init_pid = read_pid(&dir.join(files::INIT_PID)).unwrap_or(0);
            return Ok(HostState::Running { shim_pid, init_pid });
        }
        if let Some(record) = self.read_exit(id) {
            return Ok(HostState::Exited(record));
        }
        if self.inner.opts.runc_root.join(id.as_str()).exists()
            && let Some(status) = self.inner.runc.status(id.as_str())?
            && matches!(status.as_str(), "running" | "created" | "paused")
        {
            let init_pid = read_pid(&dir.join(files::INIT_PID)).unwrap_or(0);
            return Ok(HostState::Orphaned { init_pid });
        }
        Ok(HostState::Absent)
    }

    /// Resolves when the machine's shim exits, with the recorded exit. Works for shims
    /// started by an earlier server process (pidfd, not waitpid). Cancel-safe.
    pub async fn wait_exit(&self, id: &MachineId) -> Result<ExitRecord, RuntimeError> {
        let dir = self.machine_dir(id);
        if let Some(pid) = self.live_shim(id) {
            let fd = pidfd::open(pid).map_err(io_err("open a pidfd for", &dir))?;
            // Check again after opening: the pid may have been reused in between.
            if let Some(fd) = fd
                && pidfd::is_live_process_with_arg(pid, &dir)
            {
                pidfd::wait_async(fd)
                    .await
                    .map_err(io_err("wait for the shim of", &dir))?;
            }
        }
        self.read_exit(id)
            .ok_or_else(|| RuntimeError::NoExitRecord {
                id: id.clone(),
                log: dir.join(files::SHIM_LOG),
            })
    }

    /// Stops the machine: `signal`, up to `timeout` for it to exit, then SIGKILL.
    /// Returns the exit record; a machine already stopped returns its last record.
    pub async fn stop(
        &self,
        id: &MachineId,
        signal: i32,
        timeout: Duration,
    ) -> Result<ExitRecord, RuntimeError> {
        let dir = self.machine_dir(id);
        let Some(pid) = self.live_shim(id) else {
            return self
                .read_exit(id)
                .ok_or_else(|| RuntimeError::NotRunning(id.clone()));
        };
        let Some(fd) = pidfd::open(pid).map_err(io_err("open a pidfd for", &dir))? else {
            return self.wait_exit(id).await;
        };
        let fd2 = fd.try_clone().map_err(io_err("dup a pidfd for", &dir))?;
        self.kill_blocking(id, signal).await?;
        if tokio::time::timeout(timeout, pidfd::wait_async(fd))
            .await
            .is_err()
        {
            tracing::info!(machine_id = %id, "machine ignored its stop signal; sending SIGKILL");
            self.kill_blocking(id, 9).await?;
            if tokio::time::timeout(KILL_TIMEOUT, pidfd::wait_async(fd2))
                .await
                .is_err()
            {
                return Err(RuntimeError::StopTimeout(id.clone()));
            }
        }
        self.wait_exit(id).await
    }

    /// `runc kill` off the async threads; a container that is already gone is fine.
    async fn kill_blocking(&self, id: &MachineId, signal: i32) -> Result<(), RuntimeError> {
        let runc = self.inner.runc.clone();
        let cid = id.to_string();
        let res = tokio::task::spawn_blocking(move || runc.kill(&cid, signal))
            .await
            .map_err(|e| RuntimeError::Task(e.to_string()))?;
        match res {
            Err(e) if e.is_not_running() => Ok(()),
            other => other.map_err(RuntimeError::from),
        }
    }

    /// Removes everything of the machine on the host: its processes, runc state, rootfs
    /// mount, directory (logs included) and cgroup. Idempotent.
    pub fn destroy(&self, id: &MachineId) -> Result<(), RuntimeError> {
        let dir = self.machine_dir(id);
        if let Some(pid) = self.live_shim(id)
            && let Ok(Some(fd)) = pidfd::open(pid)
        {
            let _ = self.inner.runc.kill(id.as_str(), 9);
            let exited = pidfd::wait_blocking(&fd, KILL_TIMEOUT).unwrap_or(false);
            if !exited {
                // The shim is stuck (runc delete hanging?): take it down too.
                let _ =
                    rustix::process::pidfd_send_signal(fd.as_fd(), rustix::process::Signal::KILL);
                let _ = pidfd::wait_blocking(&fd, KILL_TIMEOUT);
            }
        }
        self.inner.runc.delete_force(id.as_str())?;
        let paths = RootfsPaths::new(&dir);
        rootfs::unmount_all(&paths.rootfs)?;
        if rootfs::is_mounted(&paths.rootfs) {
            return Err(RuntimeError::StillMounted(dir));
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &dir)(e));
            }
            _ => {}
        }
        remove_dir_if_present(&self.inner.opts.runc_root.join(id.as_str()))?;
        remove_dir_if_present(&self.bundle_dir(id))?;
        let rel = self.cgroup_rel(id);
        self.inner
            .cgroups
            .remove(&rel)
            .map_err(io_err("remove the cgroup", Path::new(&rel)))?;
        Ok(())
    }

    /// Ids of machines with something on the host (a directory or runc state).
    pub fn list_host_machines(&self) -> Result<Vec<MachineId>, RuntimeError> {
        let mut ids = Vec::new();
        for dir in [&self.inner.opts.root, &self.inner.opts.runc_root] {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", dir)(e)),
            };
            for entry in entries.filter_map(Result::ok) {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<MachineId>().ok())
                {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Log lines, oldest first, across rotated files; only the last `tail` when given.
    pub fn read_logs(
        &self,
        id: &MachineId,
        tail: Option<usize>,
    ) -> Result<Vec<LogLine>, RuntimeError> {
        let dir = self.machine_dir(id).join(files::LOGS);
        logs::read(&dir, tail).map_err(io_err("read logs in", &dir))
    }

    /// The last `tail` lines, then new lines as they are written, across rotations. The
    /// stream ends when the machine is destroyed.
    pub fn follow_logs(
        &self,
        id: &MachineId,
        tail: Option<usize>,
    ) -> impl Stream<Item = Result<LogLine, RuntimeError>> + Send + 'static {
        let dir = self.machine_dir(id).join(files::LOGS);
        let err_dir = dir.clone();
        logs::follow(dir, tail).map(move |r| r.map_err(io_err("follow logs in", &err_dir)))
    }
}

/// Reads one line from the shim's stdout, waiting at most `timeout`; an empty string
/// when the shim closed it without writing.
fn read_line_with_deadline(
    mut out: std::process::ChildStdout,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no readiness line after {}s", timeout.as_secs()));
        }
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&out, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("cannot poll the shim's pipe: {e}")),
        }
        let n = match out.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read the shim's pipe: {e}")),
        };
        if n == 0 {
            return Ok(String::from_utf8_lossy(&buf).trim().to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            return Ok(String::from_utf8_lossy(&buf[..pos]).trim().to_owned());
        }
    }
}
