//! Import of OCI layout directories, `oci-archive` tars and `docker save` tars.
//!
//! A tar is first extracted into a staging directory under the store's `tmp/` (both
//! formats need random access to their members), then read as a directory. Docker's
//! `manifest.json` images are converted to OCI manifests stored in the blob store, so
//! everything downstream sees one format.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use tar::EntryType;

use super::layer::{clean_path, decompressed};
use super::oci::{self, Descriptor, ImageIndex, ImageManifest, OciConfigFile};
use super::{BlobWriter, ImageError, ImageStore, digest_hex, io_err};

/// One image found in an archive: its stored manifest and the names the archive gives it.
#[derive(Debug)]
pub(crate) struct FoundImage {
    pub(crate) manifest_digest: String,
    pub(crate) names: Vec<String>,
}

/// Extracts the regular files, directories and (contained) symlinks of an archive into
/// `dest`. Other entry types are ignored: neither format uses them.
pub(crate) fn extract_outer_archive(r: impl Read, dest: &Path) -> Result<(), ImageError> {
    let bad =
        |e: std::io::Error| ImageError::BadArchive(format!("reading the archive tar failed: {e}"));
    let mut archive = tar::Archive::new(decompressed(r).map_err(bad)?);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    let mut seen_any = false;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        seen_any = true;
        let raw = entry.path().map_err(bad)?.into_owned();
        let path = clean_path(&raw).map_err(|_| {
            ImageError::BadArchive(format!(
                "archive member {} escapes the archive",
                raw.display()
            ))
        })?;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Directory | EntryType::Continuous => {}
            EntryType::Symlink | EntryType::Link => {
                // Old `docker save` links layers shared by two images; keep only links that
                // stay inside the archive.
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .unwrap_or_default()
                    .into_owned();
                let base = if entry.header().entry_type() == EntryType::Symlink {
                    path.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                if !stays_inside(&base, &link) {
                    return Err(ImageError::BadArchive(format!(
                        "archive member {} links outside the archive",
                        raw.display()
                    )));
                }
            }
            _ => continue,
        }
        if path.as_os_str().is_empty() {
            continue;
        }
        if !entry.unpack_in(dest).map_err(io_err(format!(
            "extracting archive member {}",
            raw.display()
        )))? {
            return Err(ImageError::BadArchive(format!(
                "archive member {} escapes the archive",
                raw.display()
            )));
        }
    }
    if !seen_any {
        return Err(ImageError::BadArchive("the archive is empty".into()));
    }
    Ok(())
}

/// Whether `link`, resolved lexically from directory `base`, stays inside the root.
fn stays_inside(base: &Path, link: &Path) -> bool {
    let mut depth: Vec<&std::ffi::OsStr> = base.iter().collect();
    for component in link.components() {
        match component {
            Component::Normal(part) => depth.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Opens a member of an extracted archive or a layout directory, refusing paths that leave
/// it (symlinks are resolved and checked too).
fn open_member(dir: &Path, member: &str) -> Result<File, ImageError> {
    let rel = clean_path(Path::new(member)).map_err(|_| {
        ImageError::BadArchive(format!("member path {member:?} escapes the archive"))
    })?;
    let root = fs::canonicalize(dir).map_err(io_err(format!("resolving {}", dir.display())))?;
    let full = match fs::canonicalize(root.join(&rel)) {
        Ok(full) => full,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::BadArchive(format!(
                "the archive has no member {member:?}"
            )));
        }
        Err(e) => return Err(io_err(format!("resolving archive member {member}"))(e)),
    };
    if !full.starts_with(&root) {
        return Err(ImageError::BadArchive(format!(
            "member {member:?} links outside the archive"
        )));
    }
    File::open(&full).map_err(io_err(format!("opening {}", full.display())))
}

fn read_member(dir: &Path, member: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    open_member(dir, member)?
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("reading archive member {member}")))?;
    Ok(bytes)
}

/// Imports every image of an extracted archive or OCI layout directory.
pub(crate) fn import_dir(store: &ImageStore, dir: &Path) -> Result<Vec<FoundImage>, ImageError> {
    if dir.join("manifest.json").is_file() {
        import_docker(store, dir)
    } else if dir.join("index.json").is_file() && dir.join("oci-layout").is_file() {
        import_oci_layout(store, dir)
    } else {
        Err(ImageError::BadArchive(
            "neither an OCI layout (oci-layout and index.json) nor a docker save archive (manifest.json)".into(),
        ))
    }
}

/// Copies a blob of a layout into the store, verifying its digest. Blobs already stored are
/// not copied again.
fn ingest_layout_blob(store: &ImageStore, dir: &Path, digest: &str) -> Result<(), ImageError> {
    let hex = digest_hex(digest).ok_or_else(|| {
        ImageError::BadArchive(format!(
            "unsupported digest {digest:?}: only sha256 digests are supported"
        ))
    })?;
    if store.blob_path(digest).is_some() {
        return Ok(());
    }
    let mut file = open_member(dir, &format!("blobs/sha256/{hex}"))?;
    store.store_blob(&mut file, Some(digest)).map(|_| ())
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::BadArchive(format!("{what} is malformed: {e}")))
}

fn import_oci_layout(store: &ImageStore, dir: &Path) -> Result<Vec<FoundImage>, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layout {
        image_layout_version: String,
    }
    let layout: Layout = parse_json(&read_member(dir, "oci-layout")?, "oci-layout")?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(ImageError::BadArchive(format!(
            "unsupported OCI layout version {}",
            layout.image_layout_version
        )));
    }
    let index: ImageIndex = parse_json(&read_member(dir, "index.json")?, "index.json")?;
    if index.manifests.is_empty() {
        return Err(ImageError::BadArchive("index.json lists no images".into()));
    }
    let mut found = Vec::new();
    for descriptor in &index.manifests {
        let annotations = descriptor.annotations.clone().unwrap_or_default();
        let names: Vec<String> = annotations
            .get(oci::CONTAINERD_NAME)
            .or_else(|| annotations.get(oci::REF_NAME))
            .cloned()
            .into_iter()
            .collect();
        let manifest_digest = import_layout_manifest(store, dir, descriptor, 0)?;
        found.push(FoundImage {
            manifest_digest,
            names,
        });
    }
    Ok(found)
}

/// Imports the image a descriptor points to; an index is resolved to the host platform.
fn import_layout_manifest(
    store: &ImageStore,
    dir: &Path,
    descriptor: &Descriptor,
    depth: usize,
) -> Result<String, ImageError> {
    if depth > 4 {
        return Err(ImageError::BadArchive(
            "image indexes are nested more than 4 deep".into(),
        ));
    }
    let hex = digest_hex(&descriptor.digest).ok_or_else(|| {
        ImageError::BadArchive(format!(
            "unsupported digest {:?}: only sha256 is supported",
            descriptor.digest
        ))
    })?;
    let bytes = read_member(dir, &format!("blobs/sha256/{hex}"))?;
    let actual = super::sha256_bytes(&bytes);
    if actual != descriptor.digest {
        return Err(ImageError::DigestMismatch {
            what: "manifest blob".into(),
            expected: descriptor.digest.clone(),
            actual,
        });
    }
    let media_type = (!descriptor.media_type.is_empty()).then_some(descriptor.media_type.as_str());
    if oci::is_index(media_type, &bytes) {
        let index: ImageIndex = parse_json(&bytes, "image index")?;
        let chosen = oci::choose_platform(&index).ok_or_else(|| {
            ImageError::NotFound(format!(
                "an image for linux/{} in index {}",
                oci::host_arch(),
                descriptor.digest
            ))
        })?;
        return import_layout_manifest(store, dir, chosen, depth + 1);
    }
    let manifest: ImageManifest = parse_json(&bytes, "image manifest")?;
    check_manifest(store, &manifest, |store, digest| {
        ingest_layout_blob(store, dir, digest)
    })?;
    store.put_bytes(&bytes, Some(&descriptor.digest))
}

/// Checks a manifest's layers and config, storing each blob with `ingest`.
fn check_manifest(
    store: &ImageStore,
    manifest: &ImageManifest,
    ingest: impl Fn(&ImageStore, &str) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    for layer in &manifest.layers {
        if !oci::is_layer_media_type(&layer.media_type) {
            return Err(ImageError::BadArchive(format!(
                "layer {} has unsupported media type {:?}",
                layer.digest, layer.media_type
            )));
        }
    }
    ingest(store, &manifest.config.digest)?;
    let config: OciConfigFile =
        parse_json(&store.read_blob(&manifest.config.digest)?, "image config")?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::BadArchive(format!(
            "the manifest lists {} layers but the config lists {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    for layer in &manifest.layers {
        ingest(store, &layer.digest)?;
    }
    Ok(())
}

fn import_docker(store: &ImageStore, dir: &Path) -> Result<Vec<FoundImage>, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct DockerEntry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<DockerEntry> =
        parse_json(&read_member(dir, "manifest.json")?, "manifest.json")?;
    if entries.is_empty() {
        return Err(ImageError::BadArchive(
            "manifest.json lists no images".into(),
        ));
    }
    let mut found = Vec::new();
    for entry in entries {
        let (config_digest, config_size) = ingest_docker_member(store, dir, &entry.config)?;
        let config: OciConfigFile = parse_json(&store.read_blob(&config_digest)?, "image config")?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ImageError::BadArchive(format!(
                "manifest.json lists {} layers for {} but its config lists {} diff_ids",
                entry.layers.len(),
                entry.config,
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for member in &entry.layers {
            let media_type = layer_media_type(dir, member)?;
            let (digest, size) = ingest_docker_member(store, dir, member)?;
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest,
                size,
                ..Descriptor::default()
            });
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: oci::OCI_CONFIG.into(),
                digest: config_digest,
                size: config_size,
                ..Descriptor::default()
            },
            layers,
            annotations: None,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| {
            ImageError::BadArchive(format!("serialising the converted manifest failed: {e}"))
        })?;
        let manifest_digest = store.put_bytes(&bytes, None)?;
        found.push(FoundImage {
            manifest_digest,
            names: entry.repo_tags.unwrap_or_default(),
        });
    }
    Ok(found)
}

/// Stores a `docker save` member. Members named after their digest (`<hex>.json`,
/// `blobs/sha256/<hex>`) are verified against it.
fn ingest_docker_member(
    store: &ImageStore,
    dir: &Path,
    member: &str,
) -> Result<(String, u64), ImageError> {
    let stem = Path::new(member)
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string())
        .unwrap_or_default();
    let expected = format!("sha256:{stem}");
    let expected = digest_hex(&expected).is_some().then_some(expected);
    let mut file = open_member(dir, member)?;
    let mut writer = BlobWriter::new(store)?;
    std::io::copy(&mut file, &mut writer)
        .map_err(io_err(format!("storing archive member {member}")))?;
    writer.commit(expected.as_deref())
}

/// The OCI media type for a docker layer member, from its compression.
fn layer_media_type(dir: &Path, member: &str) -> Result<&'static str, ImageError> {
    let mut head = [0u8; 4];
    let mut file = open_member(dir, member)?;
    let n = file
        .read(&mut head)
        .map_err(io_err(format!("reading archive member {member}")))?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => oci::OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => oci::OCI_LAYER_ZSTD,
        _ => oci::OCI_LAYER,
    })
}
