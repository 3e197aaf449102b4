//! `index.json`: the store's tags and the set of images it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ImageError, io_err};

/// The contents of `index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    /// Normalised name (`repo:tag` or `repo@sha256:...`) -> manifest digest.
    #[serde(default)]
    pub(crate) tags: BTreeMap<String, String>,
    /// Every image manifest the store holds, tagged or not.
    #[serde(default)]
    pub(crate) images: BTreeSet<String>,
}

pub(crate) fn read(path: &Path) -> Result<IndexFile, ImageError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::BadArchive(format!(
                "the image index {} is corrupt ({e}); restore it from a backup or remove it and re-import the images",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile::default()),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// Applies `f` to the index under an exclusive `flock` and replaces the file atomically.
/// The caller holds the in-process mutex.
pub(crate) fn update(
    root: &Path,
    f: impl FnOnce(&mut IndexFile) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let lock_path = root.join("index.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("opening {}", lock_path.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(format!("locking {}", lock_path.display()))(e.into()))?;
    let path = root.join("index.json");
    let mut index = read(&path)?;
    f(&mut index)?;
    let bytes = serde_json::to_vec_pretty(&index)
        .map_err(|e| ImageError::BadArchive(format!("serialising the image index failed: {e}")))?;
    let tmp = root
        .join("tmp")
        .join(format!("index-{}.json", std::process::id()));
    let mut file = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io_err(format!("replacing {}", path.display())))?;
    // The lock is released when `lock` is dropped.
    drop(lock);
    Ok(())
}
