//! Per-repository metadata on disk: which blobs and manifests a repository holds, and its
//! tags. The content itself lives once in the image store's `blobs/`.
//!
//! Layout under the registry root (components of repository names never start with `_`,
//! so these directories cannot collide with nested repositories):
//!
//! - `repos/<name>/_blobs/<hex>`: an empty file linking a blob into the repository;
//! - `repos/<name>/_manifests/<hex>`: a manifest of the repository; its content is the
//!   manifest's media type;
//! - `repos/<name>/_tags/<tag>`: the tag's manifest digest.
//!
//! Every file is written to `tmp/` and renamed into place, so a reader never sees half a
//! file and a crash leaves either the old or the new state.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::RegistryError;
use crate::names::hex_of;

/// The registry's metadata directory.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    root: PathBuf,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> RegistryError {
    move |e| RegistryError::internal(format!("{what}: {e}"))
}

/// Reads a small file, `None` when it does not exist.
fn read_opt(path: &Path) -> Result<Option<String>, RegistryError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

fn remove_opt(path: &Path) -> Result<bool, RegistryError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
    }
}

/// Sorted file names in a directory (empty when it does not exist).
fn list_dir(dir: &Path) -> Result<Vec<String>, RegistryError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

impl Meta {
    /// Opens (creating) the metadata directory and empties its `tmp/`.
    pub(crate) fn open(root: &Path) -> Result<Meta, RegistryError> {
        for dir in ["repos", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        }
        for leftover in list_dir(&root.join("tmp"))? {
            remove_opt(&root.join("tmp").join(leftover))?;
        }
        Ok(Meta {
            root: root.to_path_buf(),
        })
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join("repos").join(repo)
    }

    /// Writes `content` to `path` atomically (tmp file + rename).
    fn write_atomic(&self, path: &Path, content: &[u8]) -> Result<(), RegistryError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(io_err("creating a temporary metadata file"))?;
        tmp.write_all(content)
            .map_err(io_err("writing a temporary metadata file"))?;
        tmp.persist(path)
            .map_err(|e| io_err(format!("replacing {}", path.display()))(e.error))?;
        Ok(())
    }

    /// Links a blob into a repository.
    pub(crate) fn link_blob(&self, repo: &str, digest: &str) -> Result<(), RegistryError> {
        let path = self.repo_dir(repo).join("_blobs").join(hex_of(digest));
        if path.exists() {
            return Ok(());
        }
        self.write_atomic(&path, b"")
    }

    /// Whether a repository holds a blob.
    pub(crate) fn has_blob(&self, repo: &str, digest: &str) -> bool {
        self.repo_dir(repo)
            .join("_blobs")
            .join(hex_of(digest))
            .is_file()
    }

    /// Unlinks a blob from a repository; `false` when it was not linked.
    pub(crate) fn unlink_blob(&self, repo: &str, digest: &str) -> Result<bool, RegistryError> {
        remove_opt(&self.repo_dir(repo).join("_blobs").join(hex_of(digest)))
    }

    /// Records a manifest (and links it as a blob).
    pub(crate) fn put_manifest(
        &self,
        repo: &str,
        digest: &str,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        self.link_blob(repo, digest)?;
        let path = self.repo_dir(repo).join("_manifests").join(hex_of(digest));
        self.write_atomic(&path, media_type.as_bytes())
    }

    /// The media type of a repository's manifest, `None` if it does not hold it.
    pub(crate) fn manifest_media_type(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<Option<String>, RegistryError> {
        read_opt(&self.repo_dir(repo).join("_manifests").join(hex_of(digest)))
    }

    /// Every manifest digest of a repository.
    pub(crate) fn manifests(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        Ok(list_dir(&self.repo_dir(repo).join("_manifests"))?
            .into_iter()
            .map(|hex| format!("sha256:{hex}"))
            .collect())
    }

    /// Removes a manifest from a repository (and its blob link); `false` when absent.
    pub(crate) fn remove_manifest(&self, repo: &str, digest: &str) -> Result<bool, RegistryError> {
        let removed = remove_opt(&self.repo_dir(repo).join("_manifests").join(hex_of(digest)))?;
        self.unlink_blob(repo, digest)?;
        Ok(removed)
    }

    /// Points a tag at a manifest; returns the digest it pointed at before.
    pub(crate) fn set_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &str,
    ) -> Result<Option<String>, RegistryError> {
        let path = self.repo_dir(repo).join("_tags").join(tag);
        let old = read_opt(&path)?;
        self.write_atomic(&path, digest.as_bytes())?;
        Ok(old.filter(|o| o != digest))
    }

    /// The manifest digest a tag points at.
    pub(crate) fn tag(&self, repo: &str, tag: &str) -> Result<Option<String>, RegistryError> {
        read_opt(&self.repo_dir(repo).join("_tags").join(tag))
    }

    /// Removes a tag; returns the digest it pointed at.
    pub(crate) fn remove_tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> Result<Option<String>, RegistryError> {
        let path = self.repo_dir(repo).join("_tags").join(tag);
        let old = read_opt(&path)?;
        remove_opt(&path)?;
        Ok(old)
    }

    /// A repository's tags, sorted.
    pub(crate) fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        list_dir(&self.repo_dir(repo).join("_tags"))
    }

    /// Whether a repository exists (holds any blob or manifest).
    pub(crate) fn repo_exists(&self, repo: &str) -> bool {
        self.repo_dir(repo).join("_blobs").is_dir()
    }

    /// Every repository, sorted.
    pub(crate) fn repositories(&self) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        // Repository names have at most 128 components (255 characters), so the walk is
        // bounded by the directory tree the registry itself created.
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            let dir = if prefix.is_empty() {
                self.root.join("repos")
            } else {
                self.repo_dir(&prefix)
            };
            for name in list_dir(&dir)? {
                if name.starts_with('_') {
                    continue;
                }
                let repo = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if self.repo_exists(&repo) {
                    out.push(repo.clone());
                }
                if self.repo_dir(&repo).is_dir() {
                    stack.push(repo);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every blob linked into any repository: the image store's gc must keep them.
    pub(crate) fn all_blobs(&self) -> Result<HashSet<String>, RegistryError> {
        let mut out = HashSet::new();
        for repo in self.repositories()? {
            for hex in list_dir(&self.repo_dir(&repo).join("_blobs"))? {
                out.insert(format!("sha256:{hex}"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_manifests_and_nested_repositories() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        meta.put_manifest("app", &d1, "application/x").unwrap();
        meta.link_blob("app/web", &d2).unwrap();
        assert_eq!(meta.set_tag("app", "v1", &d1).unwrap(), None);
        assert_eq!(meta.set_tag("app", "v1", &d1).unwrap(), None);
        assert_eq!(meta.set_tag("app", "v1", &d2).unwrap(), Some(d1.clone()));
        assert_eq!(meta.tag("app", "v1").unwrap(), Some(d2.clone()));
        assert_eq!(meta.repositories().unwrap(), ["app", "app/web"]);
        assert_eq!(
            meta.manifest_media_type("app", &d1).unwrap().as_deref(),
            Some("application/x")
        );
        assert_eq!(
            meta.all_blobs().unwrap(),
            HashSet::from([d1.clone(), d2.clone()])
        );
        assert!(meta.remove_manifest("app", &d1).unwrap());
        assert!(!meta.has_blob("app", &d1));
        assert_eq!(meta.remove_tag("app", "v1").unwrap(), Some(d2));
        assert!(meta.tags("app").unwrap().is_empty());
    }
}
