//! The per-machine shim (`hangar shim <machine dir>`): owns the container's stdio, writes
//! the log files, waits for the container's init and records its exit.
//!
//! The shim runs in its own session and is the child subreaper of the container, so
//! the server can die (even `kill -9`) without stopping the machine or losing a line:
//! the server never holds the container's pipes. The server learns the outcome from
//! files in the machine directory (`init.pid`, `exit.json`) and from the shim's pid.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, WaitOptions, getpid, set_child_subreaper, setsid, wait};
use serde::{Deserialize, Serialize};

use super::ExitRecord;
use super::cgroup::Cgroups;
use super::logs::{LogWriter, now_timestamp};
use super::runc::Runc;

/// The shim's instructions, written by the server as `shim.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The machine (also the runc container id).
    pub machine_id: String,
    /// The instance being started.
    pub instance_id: String,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's `--root`.
    pub runc_root: PathBuf,
    /// The runc bundle (its `config.json`), outside the machine directory on a tmpfs.
    pub bundle: PathBuf,
    /// The machine's cgroup relative to the hierarchy root, e.g. `hangar/<id>`.
    pub cgroup: String,
    /// Where cgroup hierarchies are mounted.
    pub cgroup_mount: PathBuf,
    /// Bytes per log file.
    pub log_max_bytes: u64,
    /// Log files kept.
    pub log_files: usize,
}

/// Names of the files in a machine directory.
pub mod files {
    /// The shim's instructions.
    pub const SHIM_CONFIG: &str = "shim.json";
    /// The shim's pid.
    pub const SHIM_PID: &str = "shim.pid";
    /// The container init's pid (written by runc).
    pub const INIT_PID: &str = "init.pid";
    /// The recorded exit.
    pub const EXIT: &str = "exit.json";
    /// What the shim did, for debugging.
    pub const SHIM_LOG: &str = "shim.log";
    /// The log directory.
    pub const LOGS: &str = "logs";
}

/// Longest line kept whole; longer output is split so a process that never writes a
/// newline cannot make the shim buffer without bound.
const MAX_LINE: usize = 16 * 1024;

/// How long the shim waits for the log pipes to drain after the init exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `bytes` to `path` atomically (a temporary file renamed over it). Readers never
/// see a partial file; `durable` also syncs it to disk first, for records that must
/// survive a host crash (the exit record), not for files regenerated at every start.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)
}

/// The shim's debug log.
struct ShimLog(Mutex<Option<File>>);

impl ShimLog {
    fn open(path: &Path) -> ShimLog {
        ShimLog(Mutex::new(
            OpenOptions::new().create(true).append(true).open(path).ok(),
        ))
    }

    fn log(&self, msg: &str) {
        if let Ok(mut guard) = self.0.lock()
            && let Some(f) = guard.as_mut()
        {
            let _ = writeln!(f, "{} {msg}", now_timestamp());
        }
    }
}

/// The entry point of `hangar shim <machine dir>`. Always returns; the exit code is 0
/// when the container ran (whatever its own exit code), 1 when it could not be started.
pub fn run_shim(dir: &Path) -> ExitCode {
    // A new session: the shim must outlive the server and never get its terminal's signals.
    let session = setsid();
    let log = Arc::new(ShimLog::open(&dir.join(files::SHIM_LOG)));
    let panic_log = dir.join(files::SHIM_LOG);
    std::panic::set_hook(Box::new(move |info| {
        ShimLog::open(&panic_log).log(&format!("shim panicked: {info}"));
    }));
    log.log(&format!(
        "shim {} starting in {}",
        getpid().as_raw_nonzero(),
        dir.display()
    ));
    if let Err(e) = session {
        log.log(&format!("setsid failed (continuing): {e}"));
    }
    match run(dir, &log) {
        Ok(record) => {
            log.log(&format!("done: {record:?}"));
            ExitCode::SUCCESS
        }
        Err(message) => {
            log.log(&format!("failed: {message}"));
            report(&format!("error {}", message.replace('\n', " ")));
            ExitCode::FAILURE
        }
    }
}

/// Tells the server how the start went: one line on the shim's stdout.
fn report(line: &str) {
    let mut out = io::stdout().lock();
    // The server may already be gone; the machine must not care.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(dir: &Path, log: &Arc<ShimLog>) -> Result<ExitRecord, String> {
    // The container's init reparents to us when `runc create` exits, so we can reap it.
    set_child_subreaper(Some(getpid())).map_err(|e| format!("cannot become subreaper: {e}"))?;
    let pid_text = getpid().as_raw_nonzero().to_string();
    write_atomic(&dir.join(files::SHIM_PID), pid_text.as_bytes(), false)
        .map_err(|e| format!("cannot write shim.pid: {e}"))?;
    let cfg_path = dir.join(files::SHIM_CONFIG);
    let cfg: ShimConfig = fs::read(&cfg_path)
        .map_err(|e| format!("cannot read {}: {e}", cfg_path.display()))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| format!("invalid {}: {e}", cfg_path.display()))
        })?;
    let runc = Runc::new(&cfg.runc, &cfg.runc_root);
    let cgroups = Cgroups::detect(&cfg.cgroup_mount);
    let id = cfg.machine_id.as_str();

    let writer = LogWriter::open(
        &dir.join(files::LOGS),
        cfg.log_max_bytes,
        cfg.log_files,
        &cfg.machine_id,
        &cfg.instance_id,
    )
    .map_err(|e| format!("cannot open the log file: {e}"))?;
    let writer = Arc::new(Mutex::new(writer));
    let (out_r, out_w) = io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_r, err_w) = io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // runc's own messages arrive on the container's stderr (pass-through); the stderr pump
    // keeps the last few lines until the container is running, to report a failed start.
    let runc_stderr: Capture = Arc::new(Mutex::new(Some(VecDeque::new())));
    for (reader, stream) in [(out_r, "stdout"), (err_r, "stderr")] {
        let writer = Arc::clone(&writer);
        let log = Arc::clone(log);
        let done = done_tx.clone();
        let capture = (stream == "stderr").then(|| Arc::clone(&runc_stderr));
        std::thread::Builder::new()
            .name(format!("pump-{stream}"))
            .spawn(move || {
                pump(reader, stream, &writer, &log, capture.as_ref());
                drop(done);
            })
            .map_err(|e| format!("cannot start a log thread: {e}"))?;
    }
    drop(done_tx);

    let init_pid_path = dir.join(files::INIT_PID);
    log.log("runc run");
    // `runc run --detach` is `create` + `start` in one runc process, which saves a runc
    // start-up (~10 ms) on every machine start. The cgroup is new (start() removes any
    // leftover), so its OOM-kill counter starts at zero. No `--log` file: runc's error
    // messages are read from stderr instead, and `--log` costs ~10 ms per start here.
    let oom_before = 0;
    let ran = {
        // The container inherits runc's stdout and stderr (runc's pass-through mode), so
        // the write ends go to runc and are dropped with this command.
        let mut cmd = runc.command();
        cmd.arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(&cfg.bundle)
            .arg("--pid-file")
            .arg(&init_pid_path)
            .arg(id)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        cmd.status()
    };
    let ran = ran.map_err(|e| format!("cannot run {}: {e}", cfg.runc.display()))?;
    if !ran.success() {
        // runc and its init are gone, so the pipes reach EOF and the pumps finish.
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(DRAIN_TIMEOUT) {
            log.log("log pipes did not drain in time");
        }
        let lines = runc_stderr
            .lock()
            .ok()
            .and_then(|mut c| c.take())
            .unwrap_or_default();
        let message = runc_error(lines.iter()).unwrap_or_else(|| format!("runc run: {ran}"));
        let _ = runc.delete_force(id);
        return Err(message);
    }
    if let Ok(mut c) = runc_stderr.lock() {
        *c = None;
    }
    let init_pid: i32 = fs::read_to_string(&init_pid_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "runc did not write the init pid".to_owned())?;
    log.log(&format!("started, init pid {init_pid}"));
    report(&format!("started {init_pid}"));

    let (exit_code, signal) = wait_init(init_pid, log);
    let oom_after = cgroups.oom_kill_count(&cfg.cgroup).unwrap_or(oom_before);
    // Every process of the container dies with its init (pid namespace), which closes
    // the pipes; the bound only guards against a leaked writer.
    // Each pump drops its sender at EOF; the channel disconnects once both are done.
    if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(DRAIN_TIMEOUT) {
        log.log("log pipes did not drain in time");
    }
    let record = ExitRecord {
        exit_code,
        signal,
        oom_killed: oom_after > oom_before,
        exited_at: super::now_rfc3339(),
    };
    let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    write_atomic(&dir.join(files::EXIT), &json, true)
        .map_err(|e| format!("cannot write exit.json: {e}"))?;
    if let Err(e) = runc.delete_force(id) {
        log.log(&format!("runc delete failed: {e}"));
    }
    Ok(record)
}

/// Reaps children until the init exits; returns its exit code (128+signal when killed).
fn wait_init(init_pid: i32, log: &ShimLog) -> (i32, Option<i32>) {
    loop {
        // `wait` is waitpid(-1): any child. (`waitpid(None)` would be waitpid(0), only our
        // process group, and the container's init has a session of its own.)
        match wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == init_pid => {
                if let Some(sig) = status.terminating_signal() {
                    return (128 + sig, Some(sig));
                }
                return (status.exit_status().unwrap_or(255), None);
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                // Not our child (should not happen with the subreaper set): wait on a pidfd,
                // the exit status is then unknown.
                log.log(&format!("waitpid failed ({e}); waiting on a pidfd instead"));
                if let Ok(Some(fd)) = super::pidfd::open(init_pid) {
                    // The machine may run for as long as it likes; this loop ends with it.
                    while let Ok(false) =
                        super::pidfd::wait_blocking(&fd, Duration::from_secs(3600))
                    {
                    }
                }
                return (255, None);
            }
        }
    }
}

/// Lines of stderr kept while the container starts; `None` once it runs.
type Capture = Arc<Mutex<Option<VecDeque<String>>>>;

/// How many stderr lines are kept to explain a failed start.
const CAPTURE_LINES: usize = 20;

/// runc's error messages (JSON log lines at level error or fatal), joined; otherwise
/// whatever else was printed.
fn runc_error<'a>(lines: impl Iterator<Item = &'a String> + Clone) -> Option<String> {
    let msgs: Vec<String> = lines
        .clone()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect();
    if !msgs.is_empty() {
        return Some(msgs.join("; "));
    }
    let other: Vec<&str> = lines.map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    if other.is_empty() {
        None
    } else {
        Some(other.join("; "))
    }
}

/// Copies one pipe into the log, line by line; flushes a partial last line at EOF.
fn pump(
    mut reader: io::PipeReader,
    stream: &str,
    writer: &Mutex<LogWriter>,
    log: &ShimLog,
    capture: Option<&Capture>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let msg = String::from_utf8_lossy(line);
        if let Some(capture) = capture
            && let Ok(mut guard) = capture.lock()
            && let Some(kept) = guard.as_mut()
        {
            kept.push_back(msg.clone().into_owned());
            if kept.len() > CAPTURE_LINES {
                kept.pop_front();
            }
        }
        if let Ok(mut w) = writer.lock()
            && let Err(e) = w.write_line(stream, &msg)
        {
            log.log(&format!("cannot write a {stream} log line: {e}"));
        }
        line.clear();
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log.log(&format!("reading {stream} failed: {e}"));
                break;
            }
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else {
                line.push(b);
                if line.len() >= MAX_LINE {
                    emit(&mut line);
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// Whether `pid` is a plausible pid (used when reading pid files).
pub fn parse_pid(text: &str) -> Option<i32> {
    let pid: i32 = text.trim().parse().ok()?;
    Pid::from_raw(pid).map(|_| pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_errors_come_from_its_json_log_lines() {
        let lines = [
            r#"{"level":"warning","msg":"something minor","time":"t"}"#.to_owned(),
            r#"{"level":"error","msg":"runc run failed: exec: \"/app\": stat /app: no such file or directory","time":"t"}"#.to_owned(),
        ];
        assert_eq!(
            runc_error(lines.iter()).unwrap(),
            r#"runc run failed: exec: "/app": stat /app: no such file or directory"#
        );
        let plain = ["something broke".to_owned(), String::new()];
        assert_eq!(runc_error(plain.iter()).unwrap(), "something broke");
        assert_eq!(runc_error(Vec::<String>::new().iter()), None);
    }
}
