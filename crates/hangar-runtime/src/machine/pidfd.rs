//! Waiting for processes that may not be our children (adopted shims) with pidfds.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// Opens a pidfd for `pid`; `None` when no such process exists.
pub fn open(pid: i32) -> io::Result<Option<OwnedFd>> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Ok(None);
    };
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `pid` is a live (not zombie) process whose command line mentions `marker`.
/// Guards against pid reuse: a pid file may outlive its process.
pub fn is_live_process_with_arg(pid: i32, marker: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line; it has exited for our purposes.
    let marker = marker.as_os_str().as_encoded_bytes();
    !cmdline.is_empty() && cmdline.split(|b| *b == 0).any(|arg| arg == marker)
}

/// Blocks until the process behind `fd` exits or `timeout` passes; true when it exited.
pub fn wait_blocking(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits asynchronously until the process behind `fd` exits. Cancel-safe.
pub async fn wait_async(fd: OwnedFd) -> io::Result<()> {
    // `with_interest` is deprecated because an arbitrary `AsRawFd` may close or swap its fd
    // behind tokio's back; an `OwnedFd` moved into the `AsyncFd` cannot, so this use is
    // sound, and it keeps unsafe code out of the crate.
    #[allow(deprecated)]
    let afd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
    // A pidfd stays readable once the process has exited, so one readiness is enough.
    let _guard = afd.readable().await?;
    Ok(())
}
