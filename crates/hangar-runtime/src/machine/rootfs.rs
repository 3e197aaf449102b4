//! A machine's root filesystem: an overlay of the image's read-only layers with an
//! upper layer that is emptied before every start (Fly semantics: a fresh rootfs per
//! start), plus the `/etc` files Hangar owns (`hosts`, `resolv.conf`, `hostname`).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, mount, move_mount, unmount,
};

/// The legacy `mount(2)` data string is limited to one page; longer option strings go
/// through the new mount API's `lowerdir+` (Linux >= 6.8).
const LEGACY_MOUNT_DATA_MAX: usize = 4000;

/// How many stacked mounts `unmount_all` removes before giving up.
const MAX_STACKED_MOUNTS: usize = 16;

/// Why the rootfs could not be prepared or removed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The overlay mount failed.
    #[error(
        "cannot mount the overlay rootfs at {path}: {source}; check that the kernel has overlayfs and the image layers exist"
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The rootfs stayed mounted.
    #[error("cannot unmount {path}: {source}; find what keeps it busy (`fuser -m {path}`)")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The files Hangar writes into a machine's `/etc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    /// `/etc/hosts`.
    pub hosts: String,
    /// `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// `/etc/hostname`.
    pub hostname: String,
}

impl EtcFiles {
    /// The files for a machine named `hostname` with the given addresses, extra host
    /// entries, nameservers and search domains.
    pub fn new(
        hostname: &str,
        own_addresses: &[IpAddr],
        hosts: &[(IpAddr, String)],
        nameservers: &[IpAddr],
        search: &[String],
    ) -> EtcFiles {
        let mut h = String::new();
        if own_addresses.is_empty() {
            // Without an address of its own the machine still resolves its hostname.
            let _ = writeln!(h, "127.0.0.1\tlocalhost {hostname}");
            let _ = writeln!(h, "::1\tlocalhost ip6-localhost ip6-loopback {hostname}");
        } else {
            let _ = writeln!(h, "127.0.0.1\tlocalhost");
            let _ = writeln!(h, "::1\tlocalhost ip6-localhost ip6-loopback");
            for addr in own_addresses {
                let _ = writeln!(h, "{addr}\t{hostname}");
            }
        }
        for (addr, name) in hosts {
            let _ = writeln!(h, "{addr}\t{name}");
        }
        let mut r = String::from("# Written by hangar at machine start.\n");
        for ns in nameservers {
            let _ = writeln!(r, "nameserver {ns}");
        }
        if !search.is_empty() {
            let _ = writeln!(r, "search {}", search.join(" "));
        }
        EtcFiles {
            hosts: h,
            resolv_conf: r,
            hostname: format!("{hostname}\n"),
        }
    }
}

/// The paths of one machine's rootfs under its directory.
#[derive(Debug, Clone)]
pub struct RootfsPaths {
    /// The overlay mount point.
    pub rootfs: PathBuf,
    /// The writable upper layer.
    pub upper: PathBuf,
    /// Overlayfs's work directory.
    pub work: PathBuf,
    /// An empty lower layer for images without layers.
    pub empty: PathBuf,
}

impl RootfsPaths {
    /// The rootfs paths inside `machine_dir`.
    pub fn new(machine_dir: &Path) -> RootfsPaths {
        RootfsPaths {
            rootfs: machine_dir.join("rootfs"),
            upper: machine_dir.join("upper"),
            work: machine_dir.join("work"),
            empty: machine_dir.join("empty"),
        }
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), RootfsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err("create directory", path))
}

fn remove_tree(path: &Path) -> Result<(), RootfsError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RootfsError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Escapes a path for an overlayfs option value (`:` separates lower layers, `,` options).
fn escape_overlay_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The overlay mount options: `lowerdir` lists the top layer first, as overlayfs wants.
pub fn overlay_options(layers_lowest_first: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = layers_lowest_first
        .iter()
        .rev()
        .map(|p| escape_overlay_path(p))
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape_overlay_path(upper),
        escape_overlay_path(work)
    )
}

/// Resets and mounts the rootfs: unmounts a previous one, empties the upper and work
/// directories, writes the `/etc` files into the upper layer, mounts the overlay.
pub fn prepare(paths: &RootfsPaths, layers: &[PathBuf], etc: &EtcFiles) -> Result<(), RootfsError> {
    unmount_all(&paths.rootfs)?;
    remove_tree(&paths.upper)?;
    remove_tree(&paths.work)?;
    mkdir(&paths.upper, 0o755)?;
    mkdir(&paths.work, 0o700)?;
    mkdir(&paths.rootfs, 0o755)?;
    write_etc(&paths.upper, etc)?;
    let layers: Vec<PathBuf> = if layers.is_empty() {
        mkdir(&paths.empty, 0o755)?;
        vec![paths.empty.clone()]
    } else {
        layers.to_vec()
    };
    for layer in &layers {
        if !layer.is_dir() {
            return Err(RootfsError::Mount {
                path: paths.rootfs.clone(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("image layer {} is missing", layer.display()),
                ),
            });
        }
    }
    mount_overlay(&paths.rootfs, &layers, &paths.upper, &paths.work)
}

fn write_etc(upper: &Path, etc: &EtcFiles) -> Result<(), RootfsError> {
    let dir = upper.join("etc");
    mkdir(&dir, 0o755)?;
    for (name, content) in [
        ("hosts", &etc.hosts),
        ("resolv.conf", &etc.resolv_conf),
        ("hostname", &etc.hostname),
    ] {
        let path = dir.join(name);
        fs::write(&path, content).map_err(io_err("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", &path))?;
    }
    Ok(())
}

fn mount_overlay(
    target: &Path,
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<(), RootfsError> {
    let options = overlay_options(layers, upper, work);
    let err = |source: io::Error| RootfsError::Mount {
        path: target.to_path_buf(),
        source,
    };
    if options.len() <= LEGACY_MOUNT_DATA_MAX {
        let data = std::ffi::CString::new(options)
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        return mount(
            "overlay",
            target,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| err(e.into()));
    }
    // Many layers: one `lowerdir+` per layer, top layer first, through the new mount API.
    let fs_fd = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| err(e.into()))?;
    for layer in layers.iter().rev() {
        fsconfig_set_string(&fs_fd, "lowerdir+", layer.as_path()).map_err(|e| err(e.into()))?;
    }
    fsconfig_set_string(&fs_fd, "upperdir", upper).map_err(|e| err(e.into()))?;
    fsconfig_set_string(&fs_fd, "workdir", work).map_err(|e| err(e.into()))?;
    fsconfig_create(&fs_fd).map_err(|e| err(e.into()))?;
    let mnt = fsmount(
        &fs_fd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(|e| err(e.into()))?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| err(e.into()))
}

/// Whether `path` is a mount point, by `/proc/self/mountinfo`.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(oct) = std::str::from_utf8(&bytes[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything stacked on `path`; a busy mount is detached lazily.
pub fn unmount_all(path: &Path) -> Result<(), RootfsError> {
    for _ in 0..MAX_STACKED_MOUNTS {
        if !is_mounted(path) {
            return Ok(());
        }
        match unmount(path, UnmountFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => {
                unmount(path, UnmountFlags::DETACH).map_err(|e| RootfsError::Unmount {
                    path: path.to_path_buf(),
                    source: e.into(),
                })?;
            }
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => {
                return Err(RootfsError::Unmount {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    if is_mounted(path) {
        return Err(RootfsError::Unmount {
            path: path.to_path_buf(),
            source: io::Error::other("still mounted after repeated unmounts"),
        });
    }
    Ok(())
}

/// Reads a text file of the image's `/etc` from the mounted rootfs without following
/// symlinks on the host (an image could point `/etc/passwd` anywhere).
pub fn read_image_etc_file(rootfs: &Path, name: &str) -> String {
    let etc = rootfs.join("etc");
    let file = etc.join(name);
    let is_plain = |p: &Path, dir: bool| {
        fs::symlink_metadata(p).is_ok_and(|m| {
            if dir {
                m.file_type().is_dir()
            } else {
                m.file_type().is_file()
            }
        })
    };
    if !is_plain(&etc, true) || !is_plain(&file, false) {
        return String::new();
    }
    fs::read_to_string(&file).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_list_the_top_layer_first_and_escape() {
        let layers = vec![
            PathBuf::from("/l/base"),
            PathBuf::from("/l/mid"),
            PathBuf::from("/l/sha256:top,x"),
        ];
        assert_eq!(
            overlay_options(&layers, Path::new("/m/upper"), Path::new("/m/work")),
            "lowerdir=/l/sha256\\:top\\,x:/l/mid:/l/base,upperdir=/m/upper,workdir=/m/work"
        );
    }

    #[test]
    fn etc_files_name_the_machine() {
        let etc = EtcFiles::new(
            "0123456789abcd",
            &["172.19.0.5".parse().unwrap()],
            &[("172.19.0.1".parse().unwrap(), "gateway".into())],
            &["172.19.0.1".parse().unwrap()],
            &["web.internal".into()],
        );
        assert_eq!(
            etc.hosts,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n172.19.0.5\t0123456789abcd\n172.19.0.1\tgateway\n"
        );
        assert!(
            etc.resolv_conf
                .contains("nameserver 172.19.0.1\nsearch web.internal\n")
        );
        assert_eq!(etc.hostname, "0123456789abcd\n");
        let bare = EtcFiles::new("m", &[], &[], &[], &[]);
        assert!(bare.hosts.starts_with("127.0.0.1\tlocalhost m\n"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }
}
