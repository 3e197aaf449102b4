//! The `runc` binary, always called with `--root <runc_root>` so machines' state lives
//! next to Hangar's data and never mixes with other runc users on the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Why a runc call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// The binary could not be run at all.
    #[error("cannot run {path}: {source}; install runc (>= 1.1) or set the runc path")]
    Spawn {
        /// The runc path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// runc ran and failed.
    #[error("runc {command} failed: {message}")]
    Failed {
        /// The subcommand.
        command: &'static str,
        /// runc's stderr, trimmed.
        message: String,
    },
}

impl RuncError {
    /// The container was already gone or not running: harmless for kill/delete.
    pub fn is_not_running(&self) -> bool {
        match self {
            RuncError::Failed { message, .. } => {
                message.contains("not running")
                    || message.contains("does not exist")
                    || message.contains("no such process")
                    || message.contains("process already finished")
                    || message.contains("container not found")
            }
            RuncError::Spawn { .. } => false,
        }
    }
}

/// A runc binary and its state directory.
#[derive(Debug, Clone)]
pub struct Runc {
    bin: PathBuf,
    root: PathBuf,
}

impl Runc {
    /// A runc at `bin` keeping state in `root`.
    pub fn new(bin: &Path, root: &Path) -> Runc {
        Runc {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
        }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A `runc --root <root>` command with null stdio, ready for a subcommand.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn run(&self, command: &'static str, args: &[&str]) -> Result<Output, RuncError> {
        let out = self
            .command()
            .arg(command)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| RuncError::Spawn {
                path: self.bin.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(RuncError::Failed {
                command,
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// `runc kill <id> <signal>` (to the container's init).
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RuncError> {
        self.run("kill", &[id, &signal.to_string()]).map(drop)
    }

    /// `runc delete --force <id>`; a container that does not exist is not an error.
    pub fn delete_force(&self, id: &str) -> Result<(), RuncError> {
        match self.run("delete", &["--force", id]) {
            Err(e) if e.is_not_running() => Ok(()),
            other => other.map(drop),
        }
    }

    /// The container's status (`created`, `running`, `stopped`, ...), `None` when runc
    /// does not know it.
    pub fn status(&self, id: &str) -> Result<Option<String>, RuncError> {
        match self.run("state", &[id]) {
            Ok(out) => {
                let state: serde_json::Value =
                    serde_json::from_slice(&out.stdout).map_err(|e| RuncError::Failed {
                        command: "state",
                        message: format!("unreadable state JSON: {e}"),
                    })?;
                Ok(state["status"].as_str().map(str::to_owned))
            }
            Err(e) if e.is_not_running() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ids of every container in the state directory.
    pub fn list(&self) -> Result<Vec<String>, RuncError> {
        let out = self.run("list", &["--format", "json"])?;
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok(list
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}
