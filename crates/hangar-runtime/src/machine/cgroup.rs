//! The few cgroup facts the runtime reads itself: which hierarchy the host has, a
//! machine's OOM-kill counter, and the directories to remove when a machine is destroyed.
//! runc creates the cgroups and applies the limits from `config.json`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted on every supported host.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (including "hybrid" hosts with an extra `unified` mount).
    V1,
    /// The unified hierarchy.
    V2,
}

/// A host's cgroup filesystem.
#[derive(Debug, Clone)]
pub struct Cgroups {
    mount: PathBuf,
    version: CgroupVersion,
}

impl Cgroups {
    /// Detects the layout under `mount`: v2 when `cgroup.controllers` is at the top.
    pub fn detect(mount: &Path) -> Cgroups {
        let version = if mount.join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        Cgroups {
            mount: mount.to_path_buf(),
            version,
        }
    }

    /// The host's layout.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// How many times the kernel's OOM killer has killed a process of the cgroup at
    /// `rel` (e.g. `hangar/<id>`); `None` when the cgroup or the counter is missing.
    pub fn oom_kill_count(&self, rel: &str) -> Option<u64> {
        let (file, path) = match self.version {
            CgroupVersion::V1 => ("memory.oom_control", self.mount.join("memory").join(rel)),
            CgroupVersion::V2 => ("memory.events", self.mount.join(rel)),
        };
        let text = fs::read_to_string(path.join(file)).ok()?;
        parse_flat_keyed(&text, "oom_kill")
    }

    /// The directories of the cgroup at `rel` in every hierarchy where it exists.
    pub fn existing_dirs(&self, rel: &str) -> Vec<PathBuf> {
        match self.version {
            CgroupVersion::V2 => {
                let dir = self.mount.join(rel);
                if dir.is_dir() { vec![dir] } else { Vec::new() }
            }
            CgroupVersion::V1 => {
                let Ok(entries) = fs::read_dir(&self.mount) else {
                    return Vec::new();
                };
                let mut dirs: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    // `cpu` and `cpuacct` are often symlinks to `cpu,cpuacct`: visit each
                    // hierarchy once, through its real directory.
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path().join(rel))
                    .filter(|d| d.is_dir())
                    .collect();
                dirs.sort();
                dirs
            }
        }
    }

    /// Removes the cgroup at `rel` (and any child cgroups) from every hierarchy.
    /// Missing directories are fine; a cgroup that still has processes is an error.
    pub fn remove(&self, rel: &str) -> io::Result<()> {
        for dir in self.existing_dirs(rel) {
            remove_cgroup_tree(&dir)?;
        }
        Ok(())
    }
}

/// Cgroup directories cannot be removed recursively: each child is `rmdir`ed first.
fn remove_cgroup_tree(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Reads `key N` from a flat-keyed cgroup file (`memory.events`, `memory.oom_control`).
pub fn parse_flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Whether the kernel supports cgroup namespaces.
pub fn cgroup_namespace_supported() -> bool {
    Path::new("/proc/self/ns/cgroup").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_from_v1_and_v2_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_flat_keyed(v1, "oom_kill"), Some(3));
        assert_eq!(parse_flat_keyed(v2, "oom_kill"), Some(1));
        assert_eq!(parse_flat_keyed("oom 2\n", "oom_kill"), None);
    }

    #[test]
    fn detects_the_layout_from_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Cgroups::detect(dir.path()).version(), CgroupVersion::V1);
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let cg = Cgroups::detect(dir.path());
        assert_eq!(cg.version(), CgroupVersion::V2);
        fs::create_dir_all(dir.path().join("hangar/m1")).unwrap();
        fs::write(dir.path().join("hangar/m1/memory.events"), "oom_kill 4\n").unwrap();
        assert_eq!(cg.oom_kill_count("hangar/m1"), Some(4));
        assert_eq!(cg.existing_dirs("hangar/m1").len(), 1);
        assert_eq!(cg.oom_kill_count("hangar/m2"), None);
    }
}
