//! Server-side image builds: a Dockerfile and its context, built with `buildah bud`.
//!
//! A build gets a work directory `<data-dir>/builds/<id>/` holding the uploaded context
//! (`context/`), buildah's own storage (`storage/`, `run/`: one per build, so a killed build
//! leaves nothing behind in a shared store and concurrent builds never wait on each other's
//! locks) and the pushed OCI layout (`oci/`). The finished image is imported into the image
//! store as `<app>:deployment-<id>`, which is also the built-in registry's storage.
//!
//! buildah runs in its own process group and, when the host allows, in its own memory
//! cgroup (`hangar-builds/<id>`), entered by the `hangar build-exec` helper before it execs
//! buildah (the workspace forbids `unsafe`, so there is no `pre_exec`). A cancelled,
//! timed-out or abandoned build (the client hung up) kills the process group and every
//! process left in the cgroup, then removes the work directory and the cgroup.
//!
//! **Invariant:** when a build's event stream ends, no process of that build is running
//! and its work directory and cgroup are gone.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hangar_runtime::image::ImageStore;
use hangar_runtime::machine::cgroup::{CGROUP_MOUNT, CgroupVersion, Cgroups};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest build context accepted, compressed as uploaded.
pub const MAX_CONTEXT_BYTES: u64 = 2 << 30;
/// Largest total size of the files in a context once unpacked (a gzip bomb stops here).
pub const MAX_UNPACKED_BYTES: u64 = 8 << 30;
/// Most entries in a context.
pub const MAX_CONTEXT_ENTRIES: u64 = 1_000_000;
/// Memory limit of a build unless the request asks for another.
pub const DEFAULT_MEMORY_MAX: u64 = 2 << 30;
/// How long a build may run unless the request asks for another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest timeout a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);
/// Lines of output kept for the error event of a failed step.
pub const TAIL_LINES: usize = 30;
/// Longer output lines are cut, so one runaway line cannot fill memory.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// The cgroup parent of all builds, relative to each hierarchy.
pub const CGROUP_PARENT: &str = "hangar-builds";
/// Environment variable naming the buildah binary (default: `buildah` on `PATH`).
pub const BUILDAH_ENV: &str = "HANGAR_BUILDAH";
/// buildah's storage driver for builds: `vfs` needs no mounts on the host, so a killed
/// build can always be removed with its directory; `overlay` is faster for large images.
pub const STORAGE_DRIVER_ENV: &str = "HANGAR_BUILD_STORAGE_DRIVER";

/// One event of a build's NDJSON stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    /// The build started: its id and the name the image will get.
    Started {
        /// The build id.
        id: String,
        /// `<app>:deployment-<id>`.
        image: String,
    },
    /// One line of buildah's output (stdout and stderr, in arrival order).
    Log {
        /// The line, without its newline.
        line: String,
    },
    /// The image is in the store.
    Done {
        /// `<app>:deployment-<id>`.
        image: String,
        /// The manifest digest, `sha256:...`.
        digest: String,
    },
    /// The build failed; the stream ends here.
    Error {
        /// What failed and what to do.
        message: String,
        /// The Dockerfile step that failed (`STEP 2/3: RUN false`), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        /// The last lines of output of the failing step.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        output: Vec<String>,
    },
}

/// Errors found before a build starts. The API maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// buildah is missing on the server (422).
    #[error("buildah is not installed on the server ({looked}): apt-get install buildah")]
    NoBuildah {
        /// Where it was looked for.
        looked: String,
    },
    /// The request is malformed: a bad Dockerfile path, build argument or target (400).
    #[error("{0}")]
    BadRequest(String),
    /// The uploaded context is not a usable tar (400).
    #[error(
        "invalid build context: {0}; send a tar (optionally gzip-compressed) of the context directory"
    )]
    BadContext(String),
    /// The context is larger than the server accepts (413).
    #[error(
        "the build context is larger than {limit} bytes: add what the build does not need to .dockerignore"
    )]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The host failed (500).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The build id (lower-case ULID).
    pub id: String,
    /// The app the image is for.
    pub app: String,
    /// The Dockerfile, relative to the context root.
    pub dockerfile: PathBuf,
    /// The multi-stage target.
    pub target: Option<String>,
    /// `--build-arg`s, in the order given.
    pub args: Vec<(String, String)>,
    /// The memory limit of the build's cgroup, in bytes.
    pub memory_max: u64,
    /// How long the build may run.
    pub timeout: Duration,
}

impl BuildSpec {
    /// A spec with a fresh id and the defaults.
    pub fn new(app: &str) -> BuildSpec {
        BuildSpec {
            id: ulid::Ulid::new().to_string().to_ascii_lowercase(),
            app: app.to_owned(),
            dockerfile: PathBuf::from("Dockerfile"),
            target: None,
            args: Vec::new(),
            memory_max: DEFAULT_MEMORY_MAX,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The name the image gets in the store: `<app>:deployment-<id>`.
    pub fn image_name(&self) -> String {
        format!("{}:deployment-{}", self.app, self.id)
    }

    /// buildah's name of the image while it is built.
    fn temp_tag(&self) -> String {
        format!("localhost/hangar-build-{}", self.id)
    }

    /// Applies one query parameter (`dockerfile`, `target`, `arg`, `timeout`, `memory_mb`).
    pub fn apply_param(&mut self, key: &str, value: &str) -> Result<(), BuildError> {
        match key {
            "dockerfile" => self.dockerfile = validate_dockerfile_path(value)?,
            "target" => self.target = Some(validate_target(value)?),
            "arg" => self.args.push(parse_build_arg(value)?),
            "timeout" => {
                let t = humantime::parse_duration(value).map_err(|e| {
                    BuildError::BadRequest(format!(
                        "timeout {value:?} is not a duration ({e}): use e.g. 30m"
                    ))
                })?;
                if t.is_zero() || t > MAX_TIMEOUT {
                    return Err(BuildError::BadRequest(format!(
                        "timeout {value:?} must be above zero and at most {}",
                        humantime::format_duration(MAX_TIMEOUT)
                    )));
                }
                self.timeout = t;
            }
            "memory_mb" => {
                let mb: u64 = value.parse().map_err(|_| {
                    BuildError::BadRequest(format!(
                        "memory_mb {value:?} is not a whole number of MiB"
                    ))
                })?;
                if !(64..=1 << 20).contains(&mb) {
                    return Err(BuildError::BadRequest(format!(
                        "memory_mb {mb} must be between 64 and 1048576"
                    )));
                }
                self.memory_max = mb << 20;
            }
            other => {
                return Err(BuildError::BadRequest(format!(
                    "unknown query parameter {other:?}: use dockerfile, target, arg, timeout or memory_mb"
                )));
            }
        }
        Ok(())
    }
}

/// A Dockerfile path must stay inside the context: relative, without `..`.
pub fn validate_dockerfile_path(p: &str) -> Result<PathBuf, BuildError> {
    let outside = || {
        BuildError::BadRequest(format!(
            "dockerfile {p:?} is outside the build context: give a path relative to the context directory"
        ))
    };
    if p.is_empty() || p.contains('\0') {
        return Err(BuildError::BadRequest(
            "dockerfile must be a non-empty path relative to the context".into(),
        ));
    }
    let mut clean = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside());
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(outside());
    }
    Ok(clean)
}

/// A multi-stage target is a stage name: letters, digits, `_`, `.`, `-`.
pub fn validate_target(t: &str) -> Result<String, BuildError> {
    if t.is_empty()
        || t.len() > 128
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(BuildError::BadRequest(format!(
            "target {t:?} is not a stage name (letters, digits, _ . -)"
        )));
    }
    Ok(t.to_owned())
}

/// `KEY=VALUE`; the key is a shell-style name.
pub fn parse_build_arg(s: &str) -> Result<(String, String), BuildError> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(BuildError::BadRequest(format!(
            "build argument {s:?} is not KEY=VALUE"
        )));
    };
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid || v.contains('\0') {
        return Err(BuildError::BadRequest(format!(
            "build argument {k:?} is not a valid name (letters, digits and _, not starting with a digit)"
        )));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Finds buildah: `$HANGAR_BUILDAH` when set, else `buildah` in one of the `PATH` dirs.
pub fn find_buildah(
    explicit: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, BuildError> {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(BuildError::NoBuildah {
                looked: format!("{BUILDAH_ENV}={}", p.display()),
            })
        };
    }
    let path = path.unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("buildah");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(BuildError::NoBuildah {
        looked: format!("PATH={}", path.to_string_lossy()),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Unpacks an uploaded context (a tar, optionally gzip-compressed) into `dest`, refusing
/// absolute paths, `..`, links that lead out of `dest`, devices and oversized contents.
pub fn extract_context(archive: &Path, dest: &Path) -> Result<(), BuildError> {
    let mut file = fs::File::open(archive).map_err(io_err("opening the uploaded context"))?;
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(io_err("reading the uploaded context"))?;
    if n == 0 {
        return Err(BuildError::BadContext("the body is empty".into()));
    }
    let file = fs::File::open(archive).map_err(io_err("opening the uploaded context"))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
    } else {
        Box::new(io::BufReader::new(file))
    };
    fs::create_dir_all(dest).map_err(io_err(format!("creating {}", dest.display())))?;
    unpack(reader, dest)
}

fn unpack(reader: impl Read, dest: &Path) -> Result<(), BuildError> {
    let bad = |e: io::Error| BuildError::BadContext(e.to_string());
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let mut saw_end = false;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        saw_end = true;
        count += 1;
        if count > MAX_CONTEXT_ENTRIES {
            return Err(BuildError::BadContext(format!(
                "more than {MAX_CONTEXT_ENTRIES} entries"
            )));
        }
        total = total.saturating_add(entry.header().size().map_err(bad)?);
        if total > MAX_UNPACKED_BYTES {
            return Err(BuildError::TooLarge {
                limit: MAX_UNPACKED_BYTES,
            });
        }
        let path = entry.path().map_err(bad)?.into_owned();
        check_entry_path(&path)?;
        let kind = entry.header().entry_type();
        use tar::EntryType as E;
        match kind {
            E::Regular | E::Continuous | E::Directory | E::Symlink | E::Link => {}
            // Extended headers are consumed by the tar crate; others (devices, fifos) have
            // no place in a build context.
            E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink => continue,
            other => {
                return Err(BuildError::BadContext(format!(
                    "entry {} is a {other:?}; a context holds only files, directories and links",
                    path.display()
                )));
            }
        }
        if kind == E::Link
            && let Some(target) = entry.link_name().map_err(bad)?
        {
            check_entry_path(&target)?;
        }
        // `unpack_in` refuses to write through a symlink that leads out of `dest`; it
        // answers `false` for paths it skips, which the checks above already refused.
        let inside = entry.unpack_in(dest).map_err(|e| {
            BuildError::BadContext(format!("cannot unpack {}: {e}", path.display()))
        })?;
        if !inside {
            return Err(BuildError::BadContext(format!(
                "entry {} leads outside the context",
                path.display()
            )));
        }
    }
    if !saw_end {
        return Err(BuildError::BadContext("the tar has no entries".into()));
    }
    Ok(())
}

fn check_entry_path(path: &Path) -> Result<(), BuildError> {
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(BuildError::BadContext(format!(
                    "entry {} leads outside the context (absolute or with ..)",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Checks that the Dockerfile exists in the unpacked context and resolves inside it
/// (a symlinked Dockerfile must not point out of the context).
pub fn check_dockerfile(context: &Path, dockerfile: &Path) -> Result<PathBuf, BuildError> {
    let root = context
        .canonicalize()
        .map_err(io_err(format!("resolving {}", context.display())))?;
    let missing = || {
        BuildError::BadRequest(format!(
            "the context has no Dockerfile at {}: pass --dockerfile, or check .dockerignore",
            dockerfile.display()
        ))
    };
    let resolved = root
        .join(dockerfile)
        .canonicalize()
        .map_err(|_| missing())?;
    if !resolved.starts_with(&root) {
        return Err(BuildError::BadRequest(format!(
            "dockerfile {} is outside the build context (a link out of it)",
            dockerfile.display()
        )));
    }
    if !resolved.is_file() {
        return Err(missing());
    }
    Ok(resolved)
}

/// A build's directory; removed (with anything left in it) when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `<builds_root>/<id>`.
    pub fn create(builds_root: &Path, id: &str) -> Result<WorkDir, BuildError> {
        let path = builds_root.join(id);
        fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(WorkDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the uploaded context tar is spooled.
    pub fn upload(&self) -> PathBuf {
        self.path.join("context.tar")
    }

    /// The unpacked context.
    pub fn context(&self) -> PathBuf {
        self.path.join("context")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        unmount_below(&self.path);
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove a build directory");
        }
    }
}

/// Lazily unmounts whatever buildah left mounted below `dir` (a build killed half way with
/// the overlay driver), deepest first, so the directory can be removed.
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!(mount = %p.display(), error = %e, "could not unmount a build's mount");
        }
    }
}

/// Removes what builds of an earlier server run left behind (the server was killed
/// mid-build): processes in build cgroups are killed, the cgroups and the build
/// directories removed. Run before the first build of a server process.
pub fn remove_stale(builds_root: &Path, cgroups: Option<&Cgroups>) {
    if let Some(cgroups) = cgroups {
        let parent = match cgroups.version() {
            CgroupVersion::V1 => Path::new(CGROUP_MOUNT).join("memory").join(CGROUP_PARENT),
            CgroupVersion::V2 => Path::new(CGROUP_MOUNT).join(CGROUP_PARENT),
        };
        let children: Vec<String> = fs::read_dir(&parent)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for id in children {
            let cg = BuildCgroup {
                cgroups: cgroups.clone(),
                rel: format!("{CGROUP_PARENT}/{id}"),
                dir: parent.join(&id),
            };
            // Bounded: processes killed with SIGKILL leave the cgroup promptly.
            for _ in 0..100 {
                if cg.pids().is_empty() {
                    break;
                }
                cg.signal_all();
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::info!(build = %id, "removing the cgroup of an interrupted build");
            cg.remove();
        }
    }
    if let Ok(entries) = fs::read_dir(builds_root) {
        for e in entries.flatten() {
            tracing::info!(dir = %e.path().display(), "removing the directory of an interrupted build");
            drop(WorkDir { path: e.path() });
        }
    }
}

/// Runs builds with buildah.
#[derive(Debug, Clone)]
pub struct Builder {
    /// The buildah binary.
    pub buildah: PathBuf,
    /// `<data-dir>/builds`.
    pub builds_root: PathBuf,
    /// The `hangar` binary, whose `build-exec` puts buildah into its cgroup; without it
    /// the build runs without a memory limit.
    pub helper: Option<PathBuf>,
    /// The host's cgroups, `None` to run without a memory cgroup.
    pub cgroups: Option<Cgroups>,
    /// buildah's storage driver (`vfs` or `overlay`).
    pub storage_driver: String,
}

/// Why a build stopped before buildah finished.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Interrupt {
    /// The client hung up or the server is shutting down.
    Cancelled,
    /// The build ran past its timeout.
    TimedOut,
}

/// The failure of a build, as the error event says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What failed and what to do.
    pub message: String,
    /// The failing step, when known.
    pub step: Option<String>,
    /// The last lines of the failing step's output.
    pub output: Vec<String>,
}

impl Failure {
    fn plain(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            step: None,
            output: Vec::new(),
        }
    }
}

/// Follows buildah's output: the current `STEP` line and the lines since.
#[derive(Debug, Default)]
pub struct StepTracker {
    step: Option<String>,
    tail: VecDeque<String>,
}

impl StepTracker {
    /// Records one line of output.
    pub fn line(&mut self, line: &str) {
        if line.starts_with("STEP ") {
            self.step = Some(line.to_owned());
            self.tail.clear();
            return;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }

    /// The failure of a buildah run that exited with `status`.
    pub fn failure(&self, status: &str) -> Failure {
        // buildah's last word is its `Error: ...` line; it names the step and the cause.
        let cause = self
            .tail
            .iter()
            .rev()
            .find(|l| l.starts_with("Error:") || l.starts_with("error"))
            .map(|l| l.trim_start_matches("Error:").trim().to_owned());
        let message = match (&self.step, cause) {
            (Some(step), Some(cause)) => format!("the build failed at {step}: {cause}"),
            (Some(step), None) => format!("the build failed at {step} (buildah {status})"),
            (None, Some(cause)) => format!("the build failed: {cause}"),
            (None, None) => format!("the build failed (buildah {status})"),
        };
        Failure {
            message,
            step: self.step.clone(),
            output: self.tail.iter().cloned().collect(),
        }
    }
}

impl Builder {
    /// The builder of a server with data dir `data_dir`: buildah from `$HANGAR_BUILDAH` or
    /// `PATH`, `helper` (the hangar binary) for the cgroup.
    pub fn for_server(data_dir: &Path, helper: Option<PathBuf>) -> Result<Builder, BuildError> {
        let buildah = find_buildah(std::env::var_os(BUILDAH_ENV), std::env::var_os("PATH"))?;
        let cgroups = rustix::process::geteuid()
            .is_root()
            .then(|| Cgroups::detect(Path::new(CGROUP_MOUNT)));
        Ok(Builder {
            buildah,
            builds_root: data_dir.join("builds"),
            helper,
            cgroups,
            storage_driver: std::env::var(STORAGE_DRIVER_ENV)
                .ok()
                .filter(|d| matches!(d.as_str(), "vfs" | "overlay"))
                .unwrap_or_else(|| "vfs".to_owned()),
        })
    }

    /// buildah's global options: the build's own storage under its work dir.
    fn global_args(&self, work: &Path) -> Vec<OsString> {
        vec![
            "--root".into(),
            work.join("storage").into(),
            "--runroot".into(),
            work.join("run").into(),
            "--storage-driver".into(),
            self.storage_driver.clone().into(),
        ]
    }

    /// The `buildah bud` command line (without the binary).
    pub fn bud_args(&self, spec: &BuildSpec, work: &Path, context: &Path) -> Vec<OsString> {
        let mut args = self.global_args(work);
        args.extend(
            [
                "bud",
                "--isolation",
                "chroot",
                "--layers=false",
                // Plain step lines, no progress bars.
                "--quiet=false",
                "--format",
                "oci",
            ]
            .map(OsString::from),
        );
        args.push("-f".into());
        args.push(context.join(&spec.dockerfile).into());
        if let Some(t) = &spec.target {
            args.push("--target".into());
            args.push(t.into());
        }
        for (k, v) in &spec.args {
            args.push("--build-arg".into());
            args.push(format!("{k}={v}").into());
        }
        args.push("-t".into());
        args.push(spec.temp_tag().into());
        args.push(context.into());
        args
    }

    /// The `buildah push` command line that writes the image as an OCI layout.
    pub fn push_args(&self, spec: &BuildSpec, work: &Path) -> Vec<OsString> {
        let mut args = self.global_args(work);
        args.push("push".into());
        args.push(spec.temp_tag().into());
        let mut dest = OsString::from("oci:");
        dest.push(work.join("oci"));
        args.push(dest);
        args
    }

    /// Runs the build and sends its events into `tx`. Ends with one `done` or `error`
    /// event (unless the receiver is gone); cleans up in every case.
    pub async fn run(
        &self,
        spec: BuildSpec,
        work: WorkDir,
        images: ImageStore,
        tx: mpsc::Sender<BuildEvent>,
        shutdown: CancellationToken,
    ) {
        let span = tracing::info_span!("build", app = %spec.app, build = %spec.id);
        let _ = tx
            .send(BuildEvent::Started {
                id: spec.id.clone(),
                image: spec.image_name(),
            })
            .await;
        let cgroup = self.cgroup_for(&spec);
        let result = self
            .build(&spec, &work, &images, &tx, &shutdown, cgroup.as_ref())
            .await;
        let event = match result {
            Ok(digest) => {
                tracing::info!(parent: &span, %digest, "build done");
                BuildEvent::Done {
                    image: spec.image_name(),
                    digest,
                }
            }
            Err(f) => {
                tracing::info!(parent: &span, error = %f.message, "build failed");
                BuildEvent::Error {
                    message: f.message,
                    step: f.step,
                    output: f.output,
                }
            }
        };
        // Clean up before the last event, so a client that sees the end of the build
        // finds nothing of it left. Off the async threads: a vfs store can be large.
        let _ = tokio::task::spawn_blocking(move || {
            drop(work);
            if let Some(c) = cgroup {
                c.remove();
            }
        })
        .await;
        let _ = tx.send(event).await;
    }

    fn cgroup_for(&self, spec: &BuildSpec) -> Option<BuildCgroup> {
        let cgroups = self.cgroups.clone()?;
        self.helper.as_ref()?;
        match BuildCgroup::create(cgroups, &spec.id, spec.memory_max) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the build's memory cgroup; building without a memory limit");
                None
            }
        }
    }

    async fn build(
        &self,
        spec: &BuildSpec,
        work: &WorkDir,
        images: &ImageStore,
        tx: &mpsc::Sender<BuildEvent>,
        shutdown: &CancellationToken,
        cgroup: Option<&BuildCgroup>,
    ) -> Result<String, Failure> {
        let deadline = tokio::time::Instant::now() + spec.timeout;
        let mut tracker = StepTracker::default();
        let bud = self.bud_args(spec, work.path(), &work.context());
        let status = self
            .run_buildah(bud, cgroup, tx, shutdown, deadline, &mut tracker)
            .await
            .map_err(|i| interrupted(&i, spec, &tracker))?;
        if !status.success() {
            if let Some(c) = cgroup
                && c.oom_killed()
            {
                let mut f = tracker.failure(&status.to_string());
                f.message = format!(
                    "the build ran out of memory (limit {} MiB){}: ask for more with memory_mb, or make the step use less",
                    spec.memory_max >> 20,
                    f.step
                        .as_deref()
                        .map(|s| format!(" at {s}"))
                        .unwrap_or_default()
                );
                return Err(f);
            }
            return Err(tracker.failure(&status.to_string()));
        }
        let mut push_tracker = StepTracker::default();
        let push = self.push_args(spec, work.path());
        let status = self
            .run_buildah(push, cgroup, tx, shutdown, deadline, &mut push_tracker)
            .await
            .map_err(|i| interrupted(&i, spec, &push_tracker))?;
        if !status.success() {
            let mut f = push_tracker.failure(&status.to_string());
            f.message = format!("storing the built image failed: {}", f.message);
            return Err(f);
        }
        let oci = work.path().join("oci");
        let name = spec.image_name();
        let imported = tokio::task::spawn_blocking({
            let images = images.clone();
            move || images.import_path(&oci, Some(&name))
        })
        .await
        .map_err(|e| Failure::plain(format!("importing the built image failed: {e}")))?
        .map_err(|e| Failure::plain(format!("importing the built image failed: {e}")))?;
        imported
            .into_iter()
            .next()
            .map(|s| s.manifest_digest)
            .ok_or_else(|| Failure::plain("importing the built image found no image"))
    }

    /// Runs one buildah command, streaming its output, until it exits or is interrupted
    /// (then its process group and cgroup are killed and reaped before returning).
    async fn run_buildah(
        &self,
        args: Vec<OsString>,
        cgroup: Option<&BuildCgroup>,
        tx: &mpsc::Sender<BuildEvent>,
        shutdown: &CancellationToken,
        deadline: tokio::time::Instant,
        tracker: &mut StepTracker,
    ) -> Result<ExitStatus, Interrupt> {
        let mut cmd = match (cgroup, &self.helper) {
            (Some(c), Some(helper)) => {
                let mut cmd = tokio::process::Command::new(helper);
                cmd.arg("build-exec")
                    .arg("--cgroup-procs")
                    .arg(c.procs_file())
                    .arg("--")
                    .arg(&self.buildah);
                cmd
            }
            _ => tokio::process::Command::new(&self.buildah),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a cancel reaches buildah's children too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let line = format!("cannot run {}: {e}", self.buildah.display());
                tracker.line(&format!("Error: {line}"));
                let _ = tx.send(BuildEvent::Log { line }).await;
                return Ok(failed_status());
            }
        };
        let pid = child.id();
        let mut out = LineReader::new(child.stdout.take());
        let mut err = LineReader::new(child.stderr.take());
        let interrupt = loop {
            if out.done && err.done {
                break None;
            }
            let line = tokio::select! {
                () = shutdown.cancelled() => break Some(Interrupt::Cancelled),
                () = tx.closed() => break Some(Interrupt::Cancelled),
                () = tokio::time::sleep_until(deadline) => break Some(Interrupt::TimedOut),
                l = out.next(), if !out.done => l,
                l = err.next(), if !err.done => l,
            };
            if let Some(line) = line {
                tracker.line(&line);
                if tx.send(BuildEvent::Log { line }).await.is_err() {
                    break Some(Interrupt::Cancelled);
                }
            }
        };
        if interrupt.is_none() {
            let status = tokio::select! {
                s = child.wait() => Some(s),
                () = shutdown.cancelled() => None,
                () = tx.closed() => None,
                () = tokio::time::sleep_until(deadline) => None,
            };
            match status {
                Some(Ok(s)) => return Ok(s),
                Some(Err(_)) => return Ok(failed_status()),
                None => {}
            }
        }
        kill_build(pid, cgroup);
        let _ = child.wait().await;
        if let Some(c) = cgroup {
            c.kill_all().await;
        }
        Err(
            interrupt.unwrap_or(if tokio::time::Instant::now() >= deadline {
                Interrupt::TimedOut
            } else {
                Interrupt::Cancelled
            }),
        )
    }
}

fn interrupted(i: &Interrupt, spec: &BuildSpec, tracker: &StepTracker) -> Failure {
    let mut f = tracker.failure("was stopped");
    f.message = match i {
        Interrupt::Cancelled => "the build was cancelled".to_owned(),
        Interrupt::TimedOut => format!(
            "the build took longer than {}: ask for a longer timeout, or make it faster",
            humantime::format_duration(spec.timeout)
        ),
    };
    f
}

/// An exit status that reads as a failure, for a command that could not even run.
fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(1 << 8)
}

fn kill_build(pid: Option<u32>, cgroup: Option<&BuildCgroup>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok())
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    if let Some(c) = cgroup {
        c.signal_all();
    }
}

/// Reads lines from a pipe, lossily decoded and cut to [`MAX_LINE_BYTES`].
struct LineReader<R> {
    reader: Option<BufReader<R>>,
    buf: Vec<u8>,
    done: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(r: Option<R>) -> Self {
        LineReader {
            done: r.is_none(),
            reader: r.map(BufReader::new),
            buf: Vec::new(),
        }
    }

    /// The next line, `None` (and `done`) at the end. Cancel-safe: a partial line stays
    /// in `buf` for the next call.
    async fn next(&mut self) -> Option<String> {
        let reader = self.reader.as_mut()?;
        match reader.read_until(b'\n', &mut self.buf).await {
            Ok(0) | Err(_) => {
                self.done = true;
                if self.buf.is_empty() {
                    return None;
                }
            }
            Ok(_) => {}
        }
        let mut bytes = std::mem::take(&mut self.buf);
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        bytes.truncate(MAX_LINE_BYTES);
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The memory cgroup of one build, in every hierarchy that has the memory controller.
#[derive(Debug)]
pub struct BuildCgroup {
    cgroups: Cgroups,
    rel: String,
    dir: PathBuf,
}

impl BuildCgroup {
    /// Creates `hangar-builds/<id>` with `memory_max` as its limit.
    pub fn create(cgroups: Cgroups, id: &str, memory_max: u64) -> io::Result<BuildCgroup> {
        let rel = format!("{CGROUP_PARENT}/{id}");
        let mount = Path::new(CGROUP_MOUNT);
        let (dir, limit_file) = match cgroups.version() {
            CgroupVersion::V1 => (mount.join("memory").join(&rel), "memory.limit_in_bytes"),
            CgroupVersion::V2 => {
                // The memory controller must be enabled on the way down for `memory.max`
                // to exist; it usually is at the root already.
                let parent = mount.join(CGROUP_PARENT);
                fs::create_dir_all(&parent)?;
                let _ = fs::write(mount.join("cgroup.subtree_control"), "+memory");
                fs::write(parent.join("cgroup.subtree_control"), "+memory")?;
                (mount.join(&rel), "memory.max")
            }
        };
        fs::create_dir_all(&dir)?;
        let cg = BuildCgroup { cgroups, rel, dir };
        fs::write(cg.dir.join(limit_file), memory_max.to_string())?;
        Ok(cg)
    }

    /// The `cgroup.procs` file the helper writes its pid into.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether the OOM killer killed a process of the build.
    pub fn oom_killed(&self) -> bool {
        self.cgroups
            .oom_kill_count(&self.rel)
            .is_some_and(|n| n > 0)
    }

    fn signal_all(&self) {
        for pid in self.pids() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Kills every process left in the cgroup (children that left buildah's process
    /// group) and waits, bounded, until it is empty.
    async fn kill_all(&self) {
        for _ in 0..200 {
            if self.pids().is_empty() {
                return;
            }
            self.signal_all();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(cgroup = %self.dir.display(), "processes of a cancelled build did not exit");
    }

    /// Removes the cgroup (all its processes have exited).
    pub fn remove(&self) {
        if let Err(e) = self.cgroups.remove(&self.rel) {
            tracing::warn!(cgroup = %self.rel, error = %e, "could not remove a build cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_paths_stay_inside_the_context() {
        let ok = |p: &str, want: &str| {
            assert_eq!(
                validate_dockerfile_path(p).unwrap(),
                PathBuf::from(want),
                "{p}"
            );
        };
        ok("Dockerfile", "Dockerfile");
        ok("./docker/Dockerfile.prod", "docker/Dockerfile.prod");
        for bad in ["../Dockerfile", "/etc/passwd", "a/../../b", "", ".", "a\0b"] {
            assert!(
                matches!(
                    validate_dockerfile_path(bad),
                    Err(BuildError::BadRequest(_))
                ),
                "{bad:?} accepted"
            );
        }
        assert!(
            validate_dockerfile_path("../x")
                .unwrap_err()
                .to_string()
                .contains("outside the build context")
        );
    }

    #[test]
    fn build_args_and_targets_are_checked() {
        assert_eq!(
            parse_build_arg("VERSION=1.2=3").unwrap(),
            ("VERSION".into(), "1.2=3".into())
        );
        assert_eq!(
            parse_build_arg("EMPTY=").unwrap(),
            ("EMPTY".into(), String::new())
        );
        for bad in ["NOEQUALS", "=x", "1A=x", "A-B=x"] {
            assert!(parse_build_arg(bad).is_err(), "{bad}");
        }
        assert!(validate_target("build-stage_1.x").is_ok());
        assert!(validate_target("a b").is_err());
        assert!(validate_target("").is_err());
    }

    #[test]
    fn query_parameters_fill_the_spec() {
        let mut s = BuildSpec::new("web");
        for (k, v) in [
            ("dockerfile", "sub/Dockerfile"),
            ("target", "final"),
            ("arg", "A=1"),
            ("arg", "B=2"),
            ("timeout", "90s"),
            ("memory_mb", "512"),
        ] {
            s.apply_param(k, v).unwrap();
        }
        assert_eq!(s.dockerfile, PathBuf::from("sub/Dockerfile"));
        assert_eq!(s.target.as_deref(), Some("final"));
        assert_eq!(
            s.args,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(s.timeout, Duration::from_secs(90));
        assert_eq!(s.memory_max, 512 << 20);
        assert!(s.apply_param("timeout", "0s").is_err());
        assert!(s.apply_param("timeout", "100h").is_err());
        assert!(s.apply_param("memory_mb", "1").is_err());
        assert!(s.apply_param("nope", "1").is_err());
        assert!(s.image_name().starts_with("web:deployment-"));
        assert_eq!(s.id.len(), 26);
        assert_eq!(s.id, s.id.to_ascii_lowercase());
    }

    #[test]
    fn buildah_command_lines() {
        let b = Builder {
            buildah: "/usr/bin/buildah".into(),
            builds_root: "/data/builds".into(),
            helper: None,
            cgroups: None,
            storage_driver: "vfs".into(),
        };
        let mut spec = BuildSpec::new("web");
        spec.id = "01abc".into();
        spec.target = Some("final".into());
        spec.args = vec![("A".into(), "x y".into())];
        let work = Path::new("/data/builds/01abc");
        let args: Vec<String> = b
            .bud_args(&spec, work, &work.join("context"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "--root /data/builds/01abc/storage --runroot /data/builds/01abc/run --storage-driver vfs \
             bud --isolation chroot --layers=false --quiet=false --format oci \
             -f /data/builds/01abc/context/Dockerfile --target final --build-arg A=x y \
             -t localhost/hangar-build-01abc /data/builds/01abc/context"
        );
        let push: Vec<String> = b
            .push_args(&spec, work)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            push[6..].join(" "),
            "push localhost/hangar-build-01abc oci:/data/builds/01abc/oci"
        );
    }

    #[test]
    fn missing_buildah_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_buildah(None, Some(dir.path().as_os_str().to_owned())).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("buildah is not installed on the server"),
            "{msg}"
        );
        assert!(msg.contains("apt-get install buildah"), "{msg}");
        let err = find_buildah(Some("/no/such/buildah".into()), None).unwrap_err();
        assert!(err.to_string().contains("/no/such/buildah"), "{err}");

        // An executable named buildah in a PATH dir is found.
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.path().join("buildah");
        fs::write(&fake, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), dir.path()]).unwrap();
        assert_eq!(find_buildah(None, Some(path)).unwrap(), fake);
    }

    fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_old();
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn extract(bytes: &[u8], gzip: bool) -> (tempfile::TempDir, Result<(), BuildError>) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("ctx.tar");
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut enc, bytes).unwrap();
            fs::write(&archive, enc.finish().unwrap()).unwrap();
        } else {
            fs::write(&archive, bytes).unwrap();
        }
        let r = extract_context(&archive, &dir.path().join("ctx"));
        (dir, r)
    }

    #[test]
    fn contexts_unpack_plain_and_gzipped() {
        let tar = raw_tar(&[
            (
                "Dockerfile",
                tar::EntryType::Regular,
                b"FROM scratch\n",
                None,
            ),
            ("app/", tar::EntryType::Directory, b"", None),
            ("app/bin", tar::EntryType::Regular, b"x", None),
            ("link", tar::EntryType::Symlink, b"", Some("app/bin")),
        ]);
        for gzip in [false, true] {
            let (dir, r) = extract(&tar, gzip);
            r.unwrap();
            let ctx = dir.path().join("ctx");
            assert_eq!(fs::read(ctx.join("app/bin")).unwrap(), b"x");
            assert_eq!(
                check_dockerfile(&ctx, Path::new("Dockerfile")).unwrap(),
                ctx.canonicalize().unwrap().join("Dockerfile")
            );
            assert!(check_dockerfile(&ctx, Path::new("Nope")).is_err());
        }
    }

    #[test]
    fn contexts_that_escape_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            raw_tar(&[("../x", tar::EntryType::Regular, b"pwned", None)]),
            raw_tar(&[("a/../../x", tar::EntryType::Regular, b"pwned", None)]),
            raw_tar(&[("/tmp/x", tar::EntryType::Regular, b"pwned", None)]),
            raw_tar(&[("hl", tar::EntryType::Link, b"", Some("../../etc/passwd"))]),
            raw_tar(&[
                ("out", tar::EntryType::Symlink, b"", Some("/")),
                (
                    "out/tmp/hangar-escaped",
                    tar::EntryType::Regular,
                    b"pwned",
                    None,
                ),
            ]),
            raw_tar(&[("dev", tar::EntryType::Char, b"", None)]),
        ];
        for (i, tar) in cases.iter().enumerate() {
            let (dir, r) = extract(tar, false);
            assert!(
                matches!(r, Err(BuildError::BadContext(_))),
                "case {i} accepted: {r:?}"
            );
            assert!(!dir.path().join("x").exists(), "case {i} wrote outside");
        }
        assert!(!Path::new("/tmp/hangar-escaped").exists());
    }

    #[test]
    fn non_tar_and_empty_bodies_are_bad_contexts() {
        let (_d, r) = extract(b"this is not a tar file at all, just some text", false);
        assert!(matches!(r, Err(BuildError::BadContext(_))), "{r:?}");
        let (_d, r) = extract(b"", false);
        assert!(matches!(r, Err(BuildError::BadContext(_))), "{r:?}");
    }

    #[test]
    fn a_dockerfile_linked_out_of_the_context_is_refused() {
        let tar = raw_tar(&[(
            "Dockerfile",
            tar::EntryType::Symlink,
            b"",
            Some("/etc/hostname"),
        )]);
        let (dir, r) = extract(&tar, false);
        r.unwrap();
        let err = check_dockerfile(&dir.path().join("ctx"), Path::new("Dockerfile")).unwrap_err();
        assert!(
            err.to_string().contains("outside the build context"),
            "{err}"
        );
    }

    #[test]
    fn failures_name_the_step_and_its_output() {
        let mut t = StepTracker::default();
        for l in [
            "STEP 1/3: FROM scratch",
            "STEP 2/3: COPY missing /x",
            "Error: building at STEP \"COPY missing /x\": checking on sources: no such file or directory",
        ] {
            t.line(l);
        }
        let f = t.failure("exit status: 125");
        assert_eq!(f.step.as_deref(), Some("STEP 2/3: COPY missing /x"));
        assert!(
            f.message
                .starts_with("the build failed at STEP 2/3: COPY missing /x: building at STEP"),
            "{}",
            f.message
        );
        assert_eq!(f.output.len(), 1);
        let mut t = StepTracker::default();
        for i in 0..100 {
            t.line(&format!("line {i}"));
        }
        let f = t.failure("exit status: 1");
        assert_eq!(f.output.len(), TAIL_LINES);
        assert_eq!(f.output.last().unwrap(), "line 99");
        assert_eq!(f.message, "the build failed (buildah exit status: 1)");
    }

    #[test]
    fn events_are_tagged_ndjson() {
        let cases = [
            (
                BuildEvent::Log {
                    line: "STEP 1/2: FROM scratch".into(),
                },
                r#"{"type":"log","line":"STEP 1/2: FROM scratch"}"#,
            ),
            (
                BuildEvent::Done {
                    image: "web:deployment-1".into(),
                    digest: "sha256:ab".into(),
                },
                r#"{"type":"done","image":"web:deployment-1","digest":"sha256:ab"}"#,
            ),
            (
                BuildEvent::Error {
                    message: "m".into(),
                    step: Some("STEP 2/2: RUN false".into()),
                    output: vec!["o".into()],
                },
                r#"{"type":"error","message":"m","step":"STEP 2/2: RUN false","output":["o"]}"#,
            ),
            (
                BuildEvent::Error {
                    message: "m".into(),
                    step: None,
                    output: vec![],
                },
                r#"{"type":"error","message":"m"}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(serde_json::to_string(&event).unwrap(), json);
            assert_eq!(serde_json::from_str::<BuildEvent>(json).unwrap(), event);
        }
    }

    #[tokio::test]
    async fn line_reader_splits_and_cuts_lines() {
        let data: &[u8] = b"one\r\ntwo\nthree";
        let mut r = LineReader::new(Some(data));
        assert_eq!(r.next().await.as_deref(), Some("one"));
        assert_eq!(r.next().await.as_deref(), Some("two"));
        assert_eq!(r.next().await.as_deref(), Some("three"));
        assert_eq!(r.next().await, None);
        assert!(r.done);
        let long = vec![b'x'; MAX_LINE_BYTES * 2];
        let mut r = LineReader::new(Some(&long[..]));
        assert_eq!(r.next().await.unwrap().len(), MAX_LINE_BYTES);
    }
}
