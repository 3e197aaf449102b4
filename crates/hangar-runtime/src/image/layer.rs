//! Unpacking one layer tar into a directory, safely, with whiteouts in overlayfs form.
//!
//! Every entry is checked by [`plan_entry`] before anything is written:
//!
//! - absolute paths and `..` components are rejected;
//! - an entry whose parent passes through a symlink created earlier in the same layer is
//!   rejected (the classic "symlink, then write through it" escape);
//! - hard links must name a file or symlink created earlier in the same layer;
//! - character and block devices are rejected (a layer could otherwise hand a machine
//!   `/dev/sda`); FIFOs are allowed, because they are inert and some base images ship them;
//! - `.wh.<name>` becomes a 0/0 character device `<name>` (an overlayfs whiteout) and
//!   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory; both need root.
//!
//! Modes, ownership, mtimes and xattrs are preserved by the tar crate. Decompression
//! (gzip, zstd or none, detected from the content) streams; the diff_id (SHA-256 of the
//! uncompressed tar) is computed while reading and returned for the caller to verify.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::{ImageError, io_err, sha256_digest};

/// The overlayfs opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The prefix of whiteout entries.
const WHITEOUT_PREFIX: &str = ".wh.";

/// What to do with one tar entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAction {
    /// Nothing (the root directory itself, PAX global headers, aufs metadata).
    Skip,
    /// Let the tar crate create it (file, directory, symlink, FIFO) at this relative path.
    Unpack(PathBuf),
    /// Create a hard link at `path` to the earlier entry `target`.
    HardLink {
        /// Where the link goes.
        path: PathBuf,
        /// The existing entry it points to, relative to the layer root.
        target: PathBuf,
    },
    /// Create an overlayfs whiteout (0/0 character device) at this relative path.
    Whiteout(PathBuf),
    /// Mark this relative directory opaque.
    Opaque(PathBuf),
}

/// What earlier entries of the same layer created; [`plan_entry`] consults and updates it.
#[derive(Debug, Default)]
pub struct LayerState {
    symlinks: HashSet<PathBuf>,
    linkable: HashSet<PathBuf>,
}

fn unsafe_entry(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::UnsafeEntry {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Normalises an entry path to a relative path without `.` components; rejects absolute
/// paths and `..`.
pub fn clean_path(raw: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry(raw, "the path contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(raw, "the path is absolute"));
            }
        }
    }
    Ok(out)
}

/// Decides what to do with one entry, checking it against everything the layer created so
/// far. Pure: it touches no filesystem, so the rules are tested table-driven.
pub fn plan_entry(
    state: &mut LayerState,
    raw_path: &Path,
    kind: EntryType,
    link_name: Option<&Path>,
) -> Result<EntryAction, ImageError> {
    if kind == EntryType::XGlobalHeader {
        return Ok(EntryAction::Skip);
    }
    let path = clean_path(raw_path)?;
    for ancestor in path.ancestors().skip(1) {
        if !ancestor.as_os_str().is_empty() && state.symlinks.contains(ancestor) {
            return Err(unsafe_entry(
                raw_path,
                format!(
                    "its parent {} is a symlink created by this layer",
                    ancestor.display()
                ),
            ));
        }
    }
    if path.as_os_str().is_empty() {
        // The layer root ("./"): the target directory already exists.
        return Ok(EntryAction::Skip);
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if file_name == OPAQUE_MARKER {
        return Ok(EntryAction::Opaque(parent));
    }
    let aufs_meta = format!("{WHITEOUT_PREFIX}{WHITEOUT_PREFIX}");
    if path
        .iter()
        .any(|c| c.to_string_lossy().starts_with(&aufs_meta))
    {
        // Other `.wh..wh.` names are aufs bookkeeping (hard-link directories); overlayfs
        // has no use for them.
        return Ok(EntryAction::Skip);
    }
    if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(unsafe_entry(raw_path, "the whiteout names no file"));
        }
        let target = parent.join(hidden);
        forget(state, &target);
        return Ok(EntryAction::Whiteout(target));
    }
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse | EntryType::Fifo => {
            forget(state, &path);
            if kind != EntryType::Fifo {
                state.linkable.insert(path.clone());
            }
            Ok(EntryAction::Unpack(path))
        }
        EntryType::Directory => {
            state.symlinks.remove(&path);
            state.linkable.remove(&path);
            Ok(EntryAction::Unpack(path))
        }
        EntryType::Symlink => {
            if link_name.is_none_or(|l| l.as_os_str().is_empty()) {
                return Err(ImageError::BadArchive(format!(
                    "symlink {} has no target",
                    raw_path.display()
                )));
            }
            forget(state, &path);
            state.symlinks.insert(path.clone());
            state.linkable.insert(path.clone());
            Ok(EntryAction::Unpack(path))
        }
        EntryType::Link => {
            let Some(link) = link_name else {
                return Err(ImageError::BadArchive(format!(
                    "hard link {} has no target",
                    raw_path.display()
                )));
            };
            let target = clean_path(link).map_err(|_| {
                unsafe_entry(
                    raw_path,
                    format!("the hard link target {} escapes the layer", link.display()),
                )
            })?;
            if !state.linkable.contains(&target) {
                return Err(unsafe_entry(
                    raw_path,
                    format!(
                        "the hard link target {} is not a file created earlier in this layer",
                        link.display()
                    ),
                ));
            }
            for ancestor in target.ancestors().skip(1) {
                if !ancestor.as_os_str().is_empty() && state.symlinks.contains(ancestor) {
                    return Err(unsafe_entry(
                        raw_path,
                        "the hard link target passes through a symlink",
                    ));
                }
            }
            if target == path {
                return Err(unsafe_entry(raw_path, "the hard link points to itself"));
            }
            forget(state, &path);
            state.linkable.insert(path.clone());
            Ok(EntryAction::HardLink { path, target })
        }
        EntryType::Char | EntryType::Block => Err(unsafe_entry(
            raw_path,
            "device nodes are not allowed in layers",
        )),
        other => Err(ImageError::BadArchive(format!(
            "entry {} has an unsupported tar type {other:?}",
            raw_path.display()
        ))),
    }
}

/// Forgets what a path was, because a new entry replaces it. Entries below a replaced
/// directory are not forgotten (that would cost a scan per entry); a stale symlink record
/// can only cause a spurious rejection and a stale link target a failed `link(2)`, both safe.
fn forget(state: &mut LayerState, path: &Path) {
    state.symlinks.remove(path);
    state.linkable.remove(path);
}

/// A reader that hashes everything read through it, and records whether the input ended
/// or failed, so a failed entry write is blamed on a truncated layer rather than the disk.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    failed: Rc<Cell<bool>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if n == 0 && !buf.is_empty() {
                    self.failed.set(true);
                }
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                self.failed.set(true);
                Err(e)
            }
        }
    }
}

/// Wraps a possibly compressed stream in the right decoder (gzip, zstd or none), detected
/// from its first bytes.
pub(crate) fn decompressed<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, r);
    let head = buffered.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
    } else {
        Box::new(buffered)
    })
}

/// Unpacks a layer (gzip, zstd or plain tar) into the existing, empty directory `dest` and
/// returns its diff_id (`sha256:` of the uncompressed tar, including trailing padding).
/// On error, `dest` may hold a partial layer: the caller unpacks into a scratch directory
/// and discards it.
pub fn unpack_layer(r: impl Read, dest: &Path) -> Result<String, ImageError> {
    let bad = |e: io::Error| ImageError::BadArchive(format!("reading the layer tar failed: {e}"));
    let reader = decompressed(r).map_err(bad)?;
    let input_failed = Rc::new(Cell::new(false));
    let mut archive = tar::Archive::new(HashingReader {
        inner: reader,
        hasher: Sha256::new(),
        failed: input_failed.clone(),
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut state = LayerState::default();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw_path = entry.path().map_err(bad)?.into_owned();
        let link_name = entry.link_name().map_err(bad)?.map(|l| l.into_owned());
        let kind = entry.header().entry_type();
        let action = plan_entry(&mut state, &raw_path, kind, link_name.as_deref())?;
        apply(&mut entry, &action, dest, &raw_path, &input_failed)?;
    }
    // The tar end marker may be followed by padding; the diff_id covers the whole stream.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(bad)?;
    Ok(sha256_digest(rest.hasher))
}

fn apply<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    action: &EntryAction,
    dest: &Path,
    raw_path: &Path,
    input_failed: &Cell<bool>,
) -> Result<(), ImageError> {
    match action {
        EntryAction::Skip => Ok(()),
        EntryAction::Unpack(path) if entry.header().entry_type() == EntryType::Fifo => {
            // The tar crate writes FIFOs as empty regular files, so they are made here.
            prepare_target(dest, path, false)?;
            let full = dest.join(path);
            let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &full,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(mode),
                0,
            )
            .map_err(|e| io_err(format!("creating FIFO {}", full.display()))(e.into()))?;
            // The umask may have masked the mode; set it exactly.
            rustix::fs::chmod(&full, rustix::fs::Mode::from_raw_mode(mode))
                .map_err(|e| io_err(format!("setting the mode of {}", full.display()))(e.into()))?;
            let uid = entry.header().uid().unwrap_or(0);
            let gid = entry.header().gid().unwrap_or(0);
            std::os::unix::fs::lchown(&full, u32::try_from(uid).ok(), u32::try_from(gid).ok())
                .map_err(io_err(format!("setting the owner of {}", full.display())))
        }
        EntryAction::Unpack(path) => {
            let full = dest.join(path);
            let is_dir = entry.header().entry_type() == EntryType::Directory;
            prepare_target(dest, path, is_dir)?;
            let unpacked = entry.unpack_in(dest).map_err(|e| {
                if input_failed.get() {
                    ImageError::BadArchive(format!(
                        "the layer tar is truncated or unreadable at {}: {e}",
                        raw_path.display()
                    ))
                } else {
                    io_err(format!("unpacking {}", full.display()))(e)
                }
            })?;
            if unpacked {
                Ok(())
            } else {
                Err(unsafe_entry(raw_path, "the tar crate refused the path"))
            }
        }
        EntryAction::HardLink { path, target } => {
            prepare_target(dest, path, false)?;
            let full = dest.join(path);
            fs::hard_link(dest.join(target), &full)
                .map_err(io_err(format!("creating hard link {}", full.display())))
        }
        EntryAction::Whiteout(path) => {
            prepare_target(dest, path, false)?;
            let full = dest.join(path);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &full,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| {
                io_err(format!(
                    "creating whiteout device {} (needs root or CAP_MKNOD)",
                    full.display()
                ))(e.into())
            })
        }
        EntryAction::Opaque(dir) => {
            let full = dest.join(dir);
            fs::create_dir_all(&full).map_err(io_err(format!("creating {}", full.display())))?;
            rustix::fs::setxattr(
                &full,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| {
                io_err(format!(
                    "marking {} opaque with trusted.overlay.opaque (needs root)",
                    full.display()
                ))(e.into())
            })
        }
    }
}

/// Makes room for an entry at `path`: creates its parent directories and removes what an
/// earlier entry left there, unless both are directories (then the tar crate updates the
/// existing directory's metadata).
fn prepare_target(dest: &Path, path: &Path, is_dir: bool) -> Result<(), ImageError> {
    let full = dest.join(path);
    if let Some(parent) = full.parent() {
        fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
    }
    match fs::symlink_metadata(&full) {
        Ok(meta) if meta.is_dir() && is_dir => Ok(()),
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(&full).map_err(io_err(format!("replacing {}", full.display())))
        }
        Ok(_) => fs::remove_file(&full).map_err(io_err(format!("replacing {}", full.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("inspecting {}", full.display()))(e)),
    }
}
