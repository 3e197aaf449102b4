//! Pulling an image from a registry with oci-client.
//!
//! The manifest (and, for an index, the host platform's manifest) is fetched raw so its
//! digest can be verified over the exact bytes; the config and layers are streamed into
//! temporary files while hashed. Only when every blob verified are they moved into the
//! store and the tag recorded, so a failed pull leaves nothing behind.

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::oci::{self, ImageIndex, ImageManifest, OciConfigFile};
use super::{
    ImageError, ImageStore, ImageSummary, ParsedReference, PullAuth, digest_hex, io_err,
    parse_reference, sha256_bytes, sha256_digest,
};

const MANIFEST_TYPES: &[&str] = &[
    oci::OCI_MANIFEST,
    oci::OCI_INDEX,
    oci::DOCKER_MANIFEST,
    oci::DOCKER_LIST,
];

/// Whether a registry host is on loopback, where plain HTTP is the norm.
pub(crate) fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) async fn pull(
    store: &ImageStore,
    reference: &str,
    auth: PullAuth,
    insecure: bool,
) -> Result<ImageSummary, ImageError> {
    let named = match parse_reference(reference)? {
        ParsedReference::Named(named) => named,
        ParsedReference::Digest(_) => {
            return Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: "a pull needs a repository, e.g. registry.example/app@sha256:...".into(),
            });
        }
    };
    let target = named.canonical();
    let oci_ref: Reference = target.parse().map_err(|e| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason: format!("{e}"),
    })?;
    let registry = oci_ref.resolve_registry().to_string();
    let protocol = if insecure {
        ClientProtocol::Http
    } else if is_loopback_registry(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    });
    let auth = match auth {
        PullAuth::Anonymous => RegistryAuth::Anonymous,
        PullAuth::Basic { username, password } => RegistryAuth::Basic(username, password),
    };
    let map = |e| registry_error(&registry, reference, e);

    let (mut bytes, mut digest) = client
        .pull_manifest_raw(&oci_ref, &auth, MANIFEST_TYPES)
        .await
        .map_err(map)?;
    verify_manifest_bytes(&bytes, &digest, oci_ref.digest())?;
    if oci::is_index(None, &bytes) {
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::BadArchive(format!("the registry's image index is malformed: {e}"))
        })?;
        let chosen = oci::choose_platform(&index).ok_or_else(|| {
            ImageError::NotFound(format!("{reference} for linux/{}", oci::host_arch()))
        })?;
        let by_digest = Reference::with_digest(
            oci_ref.registry().to_string(),
            oci_ref.repository().to_string(),
            chosen.digest.clone(),
        );
        (bytes, digest) = client
            .pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES)
            .await
            .map_err(map)?;
        verify_manifest_bytes(&bytes, &digest, Some(&chosen.digest))?;
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
        ImageError::BadArchive(format!(
            "the registry's manifest {digest} is malformed: {e}"
        ))
    })?;
    for layer in &manifest.layers {
        if !oci::is_layer_media_type(&layer.media_type) {
            return Err(ImageError::BadArchive(format!(
                "layer {} has unsupported media type {:?} (not a container image?)",
                layer.digest, layer.media_type
            )));
        }
    }

    let mut downloads = Vec::new();
    let config_file = download(
        store,
        &client,
        &oci_ref,
        &manifest.config.digest,
        &registry,
        reference,
    )
    .await?;
    let config_bytes = match &config_file {
        Some(file) => {
            std::fs::read(file.path()).map_err(io_err("reading the downloaded config"))?
        }
        None => store.read_blob(&manifest.config.digest)?,
    };
    let config: OciConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::BadArchive(format!("the image config is malformed: {e}")))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::BadArchive(format!(
            "the manifest lists {} layers but the config lists {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    downloads.extend(config_file.map(|f| (manifest.config.digest.clone(), f)));
    for layer in &manifest.layers {
        if let Some(file) = download(
            store,
            &client,
            &oci_ref,
            &layer.digest,
            &registry,
            reference,
        )
        .await?
        {
            downloads.push((layer.digest.clone(), file));
        }
    }

    // Everything verified: move the blobs into place and record the tag, under the gc lock
    // so a concurrent gc cannot remove blobs before the tag protects them.
    let store2 = store.clone();
    let name = target.clone();
    let manifest_digest = digest.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
        let _gc = store2.gc_shared();
        for (digest, file) in downloads {
            let hex = digest_hex(&digest).unwrap_or_default();
            let final_path = store2.root().join("blobs/sha256").join(hex);
            if !final_path.is_file() {
                file.persist(&final_path).map_err(|e| {
                    io_err(format!("moving blob to {}", final_path.display()))(e.error)
                })?;
            }
        }
        store2.put_bytes(&bytes, Some(&manifest_digest))?;
        store2.record_image(&name, &manifest_digest)
    })
    .await
    .map_err(|e| ImageError::Io {
        context: "storing the pulled image".into(),
        source: std::io::Error::other(e.to_string()),
    })??;
    tracing::info!(reference, manifest = %digest, "image pulled");
    store.summary(&digest, Some(target))
}

fn verify_manifest_bytes(
    bytes: &[u8],
    registry_digest: &str,
    wanted: Option<&str>,
) -> Result<(), ImageError> {
    let actual = sha256_bytes(bytes);
    for expected in [Some(registry_digest), wanted].into_iter().flatten() {
        if expected.starts_with("sha256:") && expected != actual {
            return Err(ImageError::DigestMismatch {
                what: "manifest from the registry".into(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// Streams one blob into a temporary file while hashing it. Returns `None` when the store
/// already has it.
async fn download(
    store: &ImageStore,
    client: &Client,
    reference: &Reference,
    digest: &str,
    registry: &str,
    user_reference: &str,
) -> Result<Option<tempfile::NamedTempFile>, ImageError> {
    if digest_hex(digest).is_none() {
        return Err(ImageError::BadArchive(format!(
            "unsupported digest {digest:?}: only sha256 digests are supported"
        )));
    }
    if store.blob_path(digest).is_some() {
        return Ok(None);
    }
    let tmp = tempfile::Builder::new()
        .prefix("pull-")
        .tempfile_in(store.tmp_dir())
        .map_err(io_err("creating a temporary blob file"))?;
    let std_file = tmp
        .reopen()
        .map_err(io_err("opening a temporary blob file"))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut stream = client
        .pull_blob_stream(reference, digest)
        .await
        .map_err(|e| registry_error(registry, user_reference, e))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ImageError::Registry {
            registry: registry.to_string(),
            message: format!("downloading blob {digest} failed: {e}"),
        })?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(io_err("writing a downloaded blob"))?;
    }
    file.sync_all()
        .await
        .map_err(io_err("syncing a downloaded blob"))?;
    let actual = sha256_digest(hasher);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: format!("blob from registry {registry}"),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(Some(tmp))
}

/// Maps oci-client's errors to the store's.
fn registry_error(registry: &str, reference: &str, e: OciDistributionError) -> ImageError {
    let registry = registry.to_string();
    match e {
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            registry,
            message: format!("401 Unauthorized for {url}"),
        },
        OciDistributionError::AuthenticationFailure(message) => {
            ImageError::Unauthorized { registry, message }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            ImageError::NotFound(reference.to_string())
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ImageError::NotFound(reference.to_string())
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized {
                    registry,
                    message: format!("access denied for {url}"),
                }
            } else {
                ImageError::Registry {
                    registry,
                    message: format!("{url}: {envelope}"),
                }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            ImageError::NotFound(reference.to_string())
        }
        OciDistributionError::ServerError {
            code: 401 | 403,
            url,
            message,
        } => ImageError::Unauthorized {
            registry,
            message: format!("{url}: {message}"),
        },
        OciDistributionError::DigestError(e) => ImageError::DigestMismatch {
            what: "content from the registry".into(),
            expected: "the digest the registry announced".into(),
            actual: e.to_string(),
        },
        other => ImageError::Registry {
            registry,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_registry;

    #[test]
    fn loopback_registries_get_plain_http() {
        for (registry, loopback) in [
            ("localhost", true),
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.9.8.7", true),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("128.0.0.1:5000", false),
            ("registry.example:5000", false),
            ("localhost.example", false),
            ("[::2]:5000", false),
        ] {
            assert_eq!(is_loopback_registry(registry), loopback, "{registry}");
        }
    }
}
