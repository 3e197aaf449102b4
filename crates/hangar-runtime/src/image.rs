//! The image store: a content-addressed blob store, image import and pull, layers
//! unpacked once and shared read-only, tags, and garbage collection.
//!
//! Layout under the store root (see `docs/images.md`):
//!
//! - `blobs/sha256/<hex>`: immutable blobs (manifests, configs, compressed layers). A blob is
//!   hashed while it is written to `tmp/` and renamed into place only when its digest matches.
//! - `layers/sha256/<diff_id hex>/`: unpacked layers with whiteouts in overlayfs form. A layer
//!   is unpacked into `tmp/`, its diff_id verified, then renamed; it is never unpacked twice.
//! - `index.json`: tag -> manifest digest, plus every manifest the store holds. Written
//!   atomically (tmp + rename) under a mutex and an `flock`, so concurrent imports keep all tags.
//! - `tmp/`: work in progress; emptied when the store is opened.
//!
//! **Invariant:** everything under `blobs/` and `layers/` was verified against its digest.
//! Every image stored has a single-platform image manifest (OCI or Docker v2 schema 2) whose
//! blobs are all present; image indexes are resolved to the host platform at import or pull.

mod archive;
pub mod build;
mod index;
pub mod layer;
mod oci;
mod pull;
mod reference;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::types::{ImageConfig, ResolvedImage};

pub use reference::{NamedReference, ParsedReference, parse_reference};

use index::IndexFile;
use oci::{ImageManifest, OciConfigFile};

/// One image as the API and the CLI list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// The tag (`repo:tag`), or `None` for an image reachable only by digest.
    pub name: Option<String>,
    /// Digest of the image manifest, `sha256:...`.
    pub manifest_digest: String,
    /// Digest of the image config, `sha256:...`.
    pub config_digest: String,
    /// Config plus compressed layer sizes, in bytes.
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
    /// The config's `created` time (RFC 3339), if recorded.
    pub created: Option<String>,
}

/// Credentials for a registry pull.
#[derive(Clone, PartialEq, Eq)]
pub enum PullAuth {
    /// No credentials.
    Anonymous,
    /// HTTP basic authentication (also used to obtain a bearer token when the registry asks).
    Basic {
        /// User name.
        username: String,
        /// Password; never printed.
        password: String,
    },
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullAuth::Anonymous => f.write_str("Anonymous"),
            PullAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs removed from `blobs/sha256`.
    pub removed_blobs: usize,
    /// Unpacked layer directories removed from `layers/sha256`.
    pub removed_layers: usize,
    /// Bytes freed (blob sizes plus the file sizes inside removed layer directories).
    pub freed_bytes: u64,
}

/// Errors of the image store. The API maps them to status codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is not a valid image reference (400).
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the user gave.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No such image locally or in the registry (404).
    #[error("image {0:?} not found; import it with `hangar images import` or pull it")]
    NotFound(String),
    /// Content does not match its digest (422).
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the content is corrupt or was tampered with, nothing was stored"
    )]
    DigestMismatch {
        /// What was being verified (a blob, a layer's diff_id).
        what: String,
        /// The digest the content should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// A layer entry would write outside the layer or create a device (422).
    #[error("unsafe layer entry {path:?}: {reason}; the layer was rejected and nothing was kept")]
    UnsafeEntry {
        /// The entry's path as recorded in the tar.
        path: String,
        /// Why it is unsafe.
        reason: String,
    },
    /// The archive, layout or manifest is malformed or unsupported (400).
    #[error("bad image archive: {0}")]
    BadArchive(String),
    /// A filesystem operation failed (500).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The registry refused the credentials (401).
    #[error(
        "registry {registry} refused the credentials: {message}; check the username and password"
    )]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The registry's answer.
        message: String,
    },
    /// The registry could not be reached or answered with an error (502).
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What failed.
        message: String,
    },
}

/// Builds the `map_err` closure for an I/O error with a context string.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// Returns the hex part of a `sha256:<64 lowercase hex>` digest, or `None` when the string
/// is not such a digest. Every digest that becomes a path goes through here first, so a
/// crafted manifest cannot name a file outside the store.
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// The `sha256:` digest of bytes in memory.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    sha256_digest(Sha256::new().chain_update(bytes))
}

/// Formats a finished SHA-256 as a `sha256:` digest.
pub(crate) fn sha256_digest(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// A handle on an image store. Cheap to clone; clones share the locks.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Serialises read-modify-write of `index.json` within this process (an `flock`
    /// covers other processes).
    index_lock: Mutex<()>,
    /// Imports, pulls and resolves hold it shared; gc holds it exclusively, so gc never
    /// deletes a blob or layer that an import is about to reference.
    gc_lock: RwLock<()>,
    /// One lock per diff_id being unpacked, so two machines starting together unpack a
    /// layer once.
    layer_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Extra gc roots (the registry's blobs), asked at every gc.
    gc_roots: Mutex<Vec<GcRoots>>,
}

/// A source of blob digests gc must keep in addition to tagged and in-use images (the
/// registry's pushed blobs and manifests). Called under the gc lock; an error fails the gc.
pub type GcRoots = Arc<dyn Fn() -> Result<HashSet<String>, ImageError> + Send + Sync>;

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, and empties its `tmp/` directory,
    /// which only holds leftovers of interrupted work.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in ["blobs/sha256", "layers/sha256", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(format!(
                "creating image store directory {}",
                path.display()
            )))?;
        }
        let tmp = root.join("tmp");
        let leftovers = fs::read_dir(&tmp).map_err(io_err(format!("listing {}", tmp.display())))?;
        for entry in leftovers.flatten() {
            remove_path(&entry.path())?;
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                index_lock: Mutex::new(()),
                gc_lock: RwLock::new(()),
                layer_locks: Mutex::new(HashMap::new()),
                gc_roots: Mutex::new(Vec::new()),
            }),
        };
        if !store.index_path().exists() {
            store.update_index(|_| Ok(()))?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn index_path(&self) -> PathBuf {
        self.inner.root.join("index.json")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        digest_hex(diff_id).map(|hex| self.inner.root.join("layers/sha256").join(hex))
    }

    fn gc_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.inner
            .gc_lock
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The path of a stored blob, or `None` if the digest is malformed or not stored.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let path = self
            .inner
            .root
            .join("blobs/sha256")
            .join(digest_hex(digest)?);
        path.is_file().then_some(path)
    }

    /// Stores a blob. It is hashed while written to `tmp/` and renamed into place only when
    /// its digest equals `expected` (if given); on a mismatch nothing becomes visible.
    /// Returns the blob's digest.
    pub fn put_blob(&self, mut r: impl Read, expected: Option<&str>) -> Result<String, ImageError> {
        if let Some(expected) = expected
            && digest_hex(expected).is_none()
        {
            return Err(ImageError::BadArchive(format!(
                "unsupported digest {expected:?}: only sha256 digests are supported"
            )));
        }
        let _gc = self.gc_shared();
        self.store_blob(&mut r, expected)
    }

    /// A streaming writer for a new blob in the store's `tmp/` directory (same filesystem,
    /// so the commit is a rename). It hashes what it writes; [`BlobWriter::commit`] makes
    /// the blob visible only when its digest matches.
    pub fn blob_writer(&self) -> Result<BlobWriter, ImageError> {
        BlobWriter::new(self)
    }

    /// Registers extra gc roots: blobs the registry holds must survive [`ImageStore::gc`].
    pub fn add_gc_roots(&self, roots: GcRoots) {
        self.inner
            .gc_roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(roots);
    }

    /// Records an image manifest already stored as a blob (pushed to the registry) under
    /// `names` (`repo:tag`, normalised like tags), and as an image reachable by digest.
    /// The manifest, its config and every layer blob must be present; layers are not
    /// unpacked here but at the image's first start (so a push is not slowed down by
    /// unpacking, and a bad layer fails that start with a clear error).
    pub fn record_pushed_image(
        &self,
        names: &[String],
        manifest_digest: &str,
    ) -> Result<(), ImageError> {
        let names = names
            .iter()
            .map(|n| tag_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let _gc = self.gc_shared();
        let manifest = self.read_manifest(manifest_digest)?;
        let config = self.read_config(&manifest.config.digest)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadArchive(format!(
                "image {manifest_digest} has {} layers but its config lists {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        if let Some(missing) = manifest
            .layers
            .iter()
            .find(|l| self.blob_path(&l.digest).is_none())
        {
            return Err(ImageError::NotFound(format!(
                "layer blob {}",
                missing.digest
            )));
        }
        self.update_index(|idx| {
            idx.images.insert(manifest_digest.to_string());
            for name in &names {
                idx.tags.insert(name.clone(), manifest_digest.to_string());
            }
            Ok(())
        })
    }

    /// Removes `names` that still point at `manifest_digest` (a tag deleted or moved in the
    /// registry); with `forget_image`, the image is no longer listed by digest either
    /// unless another tag names it. Blobs go at the next gc.
    pub fn remove_pushed_names(
        &self,
        names: &[String],
        manifest_digest: &str,
        forget_image: bool,
    ) -> Result<(), ImageError> {
        let names = names
            .iter()
            .map(|n| tag_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        self.update_index(|idx| {
            for name in &names {
                if idx.tags.get(name).is_some_and(|d| d == manifest_digest) {
                    idx.tags.remove(name);
                }
            }
            if forget_image && !idx.tags.values().any(|d| d == manifest_digest) {
                idx.images.remove(manifest_digest);
            }
            Ok(())
        })
    }

    /// [`ImageStore::put_blob`] for callers that already hold the gc lock.
    pub(crate) fn store_blob(
        &self,
        r: &mut dyn Read,
        expected: Option<&str>,
    ) -> Result<String, ImageError> {
        let mut writer = BlobWriter::new(self)?;
        io::copy(r, &mut writer).map_err(io_err("writing blob to the store's tmp directory"))?;
        let (digest, _) = writer.commit(expected)?;
        Ok(digest)
    }

    /// Stores bytes already in memory (manifests, configs); the caller holds the gc lock.
    pub(crate) fn put_bytes(
        &self,
        mut bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, ImageError> {
        self.store_blob(&mut bytes, expected)
    }

    /// Reads a small blob (manifest, config) into memory.
    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| ImageError::NotFound(digest.to_string()))?;
        fs::read(&path).map_err(io_err(format!("reading blob {}", path.display())))
    }

    fn read_manifest(&self, digest: &str) -> Result<ImageManifest, ImageError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::BadArchive(format!("manifest {digest} is not an image manifest: {e}"))
        })
    }

    fn read_config(&self, digest: &str) -> Result<OciConfigFile, ImageError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadArchive(format!("image config {digest} is malformed: {e}")))
    }

    /// Imports an OCI layout directory, an `oci-archive` tar or a `docker save` tar
    /// (optionally gzip- or zstd-compressed), detected by content. With `tag`, the archive
    /// must hold exactly one image, which gets that name instead of the archive's.
    pub fn import_path(
        &self,
        path: &Path,
        tag: Option<&str>,
    ) -> Result<Vec<ImageSummary>, ImageError> {
        let meta = fs::metadata(path).map_err(io_err(format!("reading {}", path.display())))?;
        if meta.is_dir() {
            let _gc = self.gc_shared();
            let found = archive::import_dir(self, path)?;
            self.record_imports(&found, tag)
        } else {
            let file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
            self.import_reader(file, tag)
        }
    }

    /// Imports a tar stream (an `oci-archive` or `docker save` tar, optionally compressed).
    /// The stream is spooled into `tmp/` because both formats need random access.
    pub fn import_reader(
        &self,
        r: impl Read,
        tag: Option<&str>,
    ) -> Result<Vec<ImageSummary>, ImageError> {
        let staging = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.tmp_dir())
            .map_err(io_err("creating an import staging directory"))?;
        archive::extract_outer_archive(r, staging.path())?;
        let _gc = self.gc_shared();
        let found = archive::import_dir(self, staging.path())?;
        self.record_imports(&found, tag)
    }

    /// Records imported images in the index under their names (or `tag`) and summarises them.
    fn record_imports(
        &self,
        found: &[archive::FoundImage],
        tag: Option<&str>,
    ) -> Result<Vec<ImageSummary>, ImageError> {
        let mut named: Vec<(Option<String>, String)> = Vec::new();
        if let Some(tag) = tag {
            let name = tag_name(tag)?;
            let [image] = found else {
                return Err(ImageError::BadArchive(format!(
                    "the archive holds {} images, but a tag can only name one; import without a tag",
                    found.len()
                )));
            };
            named.push((Some(name), image.manifest_digest.clone()));
        } else {
            for image in found {
                if image.names.is_empty() {
                    named.push((None, image.manifest_digest.clone()));
                }
                for name in &image.names {
                    named.push((Some(tag_name(name)?), image.manifest_digest.clone()));
                }
            }
        }
        // Unpack every layer now: an unsafe or corrupt layer fails the import before any
        // name becomes visible, and the first start of the image does not pay for unpacking.
        for image in found {
            self.unpack_image(&image.manifest_digest)?;
        }
        self.update_index(|idx| {
            for (name, digest) in &named {
                idx.images.insert(digest.clone());
                if let Some(name) = name {
                    idx.tags.insert(name.clone(), digest.clone());
                }
            }
            Ok(())
        })?;
        named
            .into_iter()
            .map(|(name, digest)| self.summary(&digest, name))
            .collect()
    }

    /// Records one pulled image under `name`.
    pub(crate) fn record_image(&self, name: &str, manifest_digest: &str) -> Result<(), ImageError> {
        self.unpack_image(manifest_digest)?;
        self.update_index(|idx| {
            idx.images.insert(manifest_digest.to_string());
            idx.tags
                .insert(name.to_string(), manifest_digest.to_string());
            Ok(())
        })
    }

    /// Pulls an image from a registry with oci-client, verifying every digest, and tags it
    /// with the reference as given (normalised). Plain HTTP is used automatically for
    /// loopback registries (`localhost`, `127.0.0.0/8`, `[::1]`) and for every registry
    /// when `insecure` is set.
    pub async fn pull(
        &self,
        reference: &str,
        auth: PullAuth,
        insecure: bool,
    ) -> Result<ImageSummary, ImageError> {
        pull::pull(self, reference, auth, insecure).await
    }

    /// Resolves a local reference (`busybox` = `busybox:latest`, `name:tag`,
    /// `name@sha256:...`, `sha256:<manifest digest>`) to its config and unpacked layers.
    /// Layers not yet unpacked are unpacked (once, shared); for an image whose layers are all
    /// unpacked this reads only `index.json` and two small JSON blobs.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let parsed = parse_reference(reference)?;
        let _gc = self.gc_shared();
        let idx = self.read_index()?;
        let (name, manifest_digest) = match &parsed {
            ParsedReference::Digest(digest) => {
                if !idx.images.contains(digest) {
                    return Err(ImageError::NotFound(reference.to_string()));
                }
                (None, digest.clone())
            }
            ParsedReference::Named(named) => {
                let key = named.canonical();
                // `name@digest` pins the digest: the tag only names it while it still
                // points there (a moved tag must not change what a release runs).
                match (idx.tags.get(&key), &named.digest) {
                    (Some(tagged), Some(digest)) if tagged == digest => (Some(key), digest.clone()),
                    (_, Some(digest)) if idx.images.contains(digest) => (None, digest.clone()),
                    (Some(tagged), None) => (Some(key), tagged.clone()),
                    (_, _) => return Err(ImageError::NotFound(reference.to_string())),
                }
            }
        };
        let (config_digest, config, layers) = self.unpack_image(&manifest_digest)?;
        Ok(ResolvedImage {
            reference: reference.to_string(),
            name,
            manifest_digest,
            config_digest,
            config: image_config(&config),
            layers,
        })
    }

    /// Reads an image's config and makes sure every layer is unpacked (verifying each
    /// diff_id and rejecting unsafe entries); returns the config and the layer dirs.
    fn unpack_image(
        &self,
        manifest_digest: &str,
    ) -> Result<(String, OciConfigFile, Vec<PathBuf>), ImageError> {
        let manifest = self.read_manifest(manifest_digest)?;
        let config_digest = manifest.config.digest.clone();
        let config = self.read_config(&config_digest)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadArchive(format!(
                "image {manifest_digest} has {} layers but its config lists {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let layers = manifest
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(layer, diff_id)| self.ensure_layer(&layer.digest, diff_id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((config_digest, config, layers))
    }

    /// Returns the unpacked directory of a layer, unpacking it first if needed.
    fn ensure_layer(&self, blob_digest: &str, diff_id: &str) -> Result<PathBuf, ImageError> {
        let final_dir = self.layer_dir(diff_id).ok_or_else(|| {
            ImageError::BadArchive(format!(
                "unsupported diff_id {diff_id:?}: only sha256 is supported"
            ))
        })?;
        if final_dir.is_dir() {
            return Ok(final_dir);
        }
        let lock = {
            let mut locks = self
                .inner
                .layer_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            locks.entry(diff_id.to_string()).or_default().clone()
        };
        let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have finished the unpack while this one waited.
        if final_dir.is_dir() {
            return Ok(final_dir);
        }
        let blob = self.blob_path(blob_digest).ok_or_else(|| {
            ImageError::NotFound(format!(
                "layer blob {blob_digest} (the store is incomplete; re-import the image)"
            ))
        })?;
        let work = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp_dir())
            .map_err(io_err("creating a layer staging directory"))?;
        let target = work.path().join("rootfs");
        fs::create_dir(&target).map_err(io_err(format!("creating {}", target.display())))?;
        let file =
            File::open(&blob).map_err(io_err(format!("opening layer blob {}", blob.display())))?;
        let actual = layer::unpack_layer(file, &target)?;
        if actual != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {blob_digest} (diff_id)"),
                expected: diff_id.to_string(),
                actual,
            });
        }
        match fs::rename(&target, &final_dir) {
            Ok(()) => Ok(final_dir),
            // Another process won the race; its copy is identical.
            Err(_) if final_dir.is_dir() => Ok(final_dir),
            Err(e) => Err(io_err(format!(
                "moving unpacked layer to {}",
                final_dir.display()
            ))(e)),
        }
    }

    /// Lists every stored image, one entry per tag (and one with `name: None` for an image
    /// without a tag), sorted by name.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let _gc = self.gc_shared();
        let idx = self.read_index()?;
        let mut by_digest: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for digest in &idx.images {
            by_digest.entry(digest).or_default();
        }
        for (name, digest) in &idx.tags {
            by_digest.entry(digest).or_default().push(name);
        }
        let mut out = Vec::new();
        for (digest, names) in by_digest {
            let names: Vec<Option<String>> = if names.is_empty() {
                vec![None]
            } else {
                names.into_iter().map(|n| Some(n.to_string())).collect()
            };
            for name in names {
                // One damaged image must not hide all the others from the operator.
                match self.summary(digest, name) {
                    Ok(summary) => out.push(summary),
                    Err(e) => {
                        tracing::warn!(manifest = %digest, error = %e, "skipping unreadable image")
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (a.name.is_none(), &a.name, &a.manifest_digest).cmp(&(
                b.name.is_none(),
                &b.name,
                &b.manifest_digest,
            ))
        });
        Ok(out)
    }

    /// Removes a tag (`busybox`, `name:tag`, `name@sha256:...`), or, given
    /// `sha256:<manifest digest>`, the image and every tag pointing at it. Blobs and layers
    /// go at the next [`ImageStore::gc`].
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let parsed = parse_reference(name)?;
        self.update_index(|idx| match &parsed {
            ParsedReference::Digest(digest) => {
                if !idx.images.remove(digest) {
                    return Err(ImageError::NotFound(name.to_string()));
                }
                idx.tags.retain(|_, d| d != digest);
                Ok(())
            }
            ParsedReference::Named(named) => {
                let Some(digest) = idx.tags.remove(&named.canonical()) else {
                    return Err(ImageError::NotFound(name.to_string()));
                };
                // An image that loses its last tag is no longer listed; gc removes it
                // unless a machine uses it.
                if !idx.tags.values().any(|d| *d == digest) {
                    idx.images.remove(&digest);
                }
                Ok(())
            }
        })
    }

    /// Removes every blob and unpacked layer not reachable from a tagged image or from one
    /// of `in_use` (manifest digests machines use). Images in `in_use` stay listed.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport, ImageError> {
        let _gc = self
            .inner
            .gc_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut extra_roots: HashSet<String> = HashSet::new();
        let providers = self
            .inner
            .gc_roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for roots in providers {
            extra_roots.extend(roots()?);
        }
        let mut keep_manifests: BTreeSet<String> = BTreeSet::new();
        self.update_index(|idx| {
            keep_manifests = idx.tags.values().cloned().collect();
            // An image pushed to the registry by digest only stays usable by digest for as
            // long as the registry holds its manifest.
            keep_manifests.extend(
                idx.images
                    .iter()
                    .filter(|d| extra_roots.contains(*d))
                    .cloned(),
            );
            // An image a machine uses is kept even if its tag was removed meanwhile: the
            // machine still needs its layers. It stays listed (untagged) until unused.
            keep_manifests.extend(
                in_use
                    .iter()
                    .filter(|d| idx.images.contains(*d) || self.read_manifest(d).is_ok())
                    .cloned(),
            );
            idx.images = keep_manifests.clone();
            Ok(())
        })?;
        let mut keep_blobs: HashSet<String> = extra_roots;
        let mut keep_layers: HashSet<String> = HashSet::new();
        for digest in &keep_manifests {
            keep_blobs.insert(digest.clone());
            // A kept image whose blobs cannot be read keeps what it still references; gc
            // must not turn one broken image into a failed gc.
            let Ok(manifest) = self.read_manifest(digest) else {
                tracing::warn!(manifest = %digest, "gc: kept image has an unreadable manifest");
                continue;
            };
            keep_blobs.insert(manifest.config.digest.clone());
            keep_blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
            match self.read_config(&manifest.config.digest) {
                Ok(config) => keep_layers.extend(config.rootfs.diff_ids),
                Err(e) => {
                    tracing::warn!(manifest = %digest, error = %e, "gc: kept image has an unreadable config")
                }
            }
        }
        let mut report = GcReport::default();
        for (dir, keep, is_layer) in [
            ("blobs/sha256", &keep_blobs, false),
            ("layers/sha256", &keep_layers, true),
        ] {
            let dir = self.inner.root.join(dir);
            let entries =
                fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))?;
            for entry in entries {
                let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
                let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
                if keep.contains(&digest) {
                    continue;
                }
                let path = entry.path();
                report.freed_bytes += disk_usage(&path);
                remove_path(&path)?;
                if is_layer {
                    report.removed_layers += 1;
                } else {
                    report.removed_blobs += 1;
                }
            }
        }
        tracing::info!(
            removed_blobs = report.removed_blobs,
            removed_layers = report.removed_layers,
            freed_bytes = report.freed_bytes,
            "image gc finished"
        );
        Ok(report)
    }

    /// Summarises one stored image.
    fn summary(
        &self,
        manifest_digest: &str,
        name: Option<String>,
    ) -> Result<ImageSummary, ImageError> {
        let manifest = self.read_manifest(manifest_digest)?;
        let config = self.read_config(&manifest.config.digest)?;
        Ok(ImageSummary {
            name,
            manifest_digest: manifest_digest.to_string(),
            config_digest: manifest.config.digest.clone(),
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            layers: manifest.layers.len(),
            created: config.created,
        })
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        index::read(&self.index_path())
    }

    /// Read-modify-writes `index.json` atomically under the in-process mutex and an
    /// exclusive `flock` on `index.lock` (for other processes sharing the root).
    fn update_index(
        &self,
        f: impl FnOnce(&mut IndexFile) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let _guard = self
            .inner
            .index_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        index::update(&self.inner.root, f)
    }
}

/// Normalises a name given to an image (`busybox` -> `busybox:latest`); a digest alone
/// cannot be a name.
fn tag_name(name: &str) -> Result<String, ImageError> {
    match parse_reference(name)? {
        ParsedReference::Named(named) => Ok(named.canonical()),
        ParsedReference::Digest(_) => Err(ImageError::InvalidReference {
            reference: name.to_string(),
            reason: "an image name needs a repository, not only a digest".into(),
        }),
    }
}

/// Extracts what the runtime needs from an image config.
fn image_config(config: &OciConfigFile) -> ImageConfig {
    let c = config.config.clone().unwrap_or_default();
    ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        stop_signal: c.stop_signal,
        labels: c.labels.unwrap_or_default().into_iter().collect(),
        exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
    }
}

/// Writes a blob to `tmp/` while hashing it; `commit` renames it into `blobs/` only when
/// the digest matches. Dropping it uncommitted deletes the temporary file.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
    blobs_dir: PathBuf,
}

impl BlobWriter {
    pub(crate) fn new(store: &ImageStore) -> Result<BlobWriter, ImageError> {
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(store.tmp_dir())
            .map_err(io_err("creating a temporary blob file"))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            size: 0,
            blobs_dir: store.inner.root.join("blobs/sha256"),
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies the digest and moves the blob into place. Returns its digest and size.
    pub fn commit(mut self, expected: Option<&str>) -> Result<(String, u64), ImageError> {
        let digest = sha256_digest(self.hasher.clone());
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(ImageError::DigestMismatch {
                what: "blob".into(),
                expected: expected.to_string(),
                actual: digest,
            });
        }
        let hex = digest_hex(&digest).unwrap_or_default().to_string();
        let final_path = self.blobs_dir.join(hex);
        if final_path.is_file() {
            // Same digest, same content: the temporary copy is dropped.
            return Ok((digest, self.size));
        }
        self.file
            .as_file_mut()
            .sync_all()
            .map_err(io_err("syncing a blob to disk"))?;
        self.file
            .persist(&final_path)
            .map_err(|e| io_err(format!("moving blob to {}", final_path.display()))(e.error))?;
        Ok((digest, self.size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Removes a file or a directory tree.
fn remove_path(path: &Path) -> Result<(), ImageError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("inspecting {}", path.display()))(e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(io_err(format!("removing {}", path.display())))
}

/// Sums the sizes of the regular files under `path` (without following symlinks).
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
