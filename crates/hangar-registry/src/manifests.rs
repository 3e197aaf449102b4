//! Manifests: push (`PUT`) by tag or digest, pull (`GET`/`HEAD`), delete, referrers.
//!
//! A pushed manifest is stored as a blob of the image store. An image manifest (or the
//! host platform's entry of an index) is also recorded as a machine image under
//! `<repo>:<tag>`, `<host>/<repo>:<tag>` and by digest, without unpacking: layers are
//! unpacked at the image's first start.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{RegistryError, RegistryResult};
use crate::names::{Reference, parse_digest, parse_reference};
use crate::{Registry, blocking, empty, query_param};

/// The largest manifest accepted (the distribution registry's limit).
pub(crate) const MAX_MANIFEST: usize = 4 << 20;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

fn is_image_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

fn digest_header() -> header::HeaderName {
    header::HeaderName::from_static("docker-content-digest")
}

/// The media type of a pushed manifest: its `mediaType` field, else the `Content-Type`,
/// else its shape; only the four supported types pass.
fn media_type_of(json: &Value, headers: &HeaderMap) -> RegistryResult<String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|ct| is_image_manifest(ct) || is_index(ct));
    let declared = json.get("mediaType").and_then(Value::as_str);
    let media_type = match (content_type, declared) {
        (Some(ct), Some(d)) if ct != d => {
            return Err(RegistryError::ManifestInvalid(format!(
                "the Content-Type {ct} does not match the manifest's mediaType {d}"
            )));
        }
        (_, Some(d)) => d.to_string(),
        (Some(ct), None) => ct,
        (None, None) if json.get("manifests").is_some() => OCI_INDEX.to_string(),
        (None, None) if json.get("config").is_some() => OCI_MANIFEST.to_string(),
        (None, None) => {
            return Err(RegistryError::ManifestInvalid(
                "the manifest has no mediaType, no manifest Content-Type, and neither `config` nor `manifests`".into(),
            ));
        }
    };
    if !is_image_manifest(&media_type) && !is_index(&media_type) {
        return Err(RegistryError::ManifestInvalid(format!(
            "manifest media type {media_type} is not supported; push an OCI image manifest or index, or a Docker schema 2 manifest or manifest list"
        )));
    }
    Ok(media_type)
}

/// The digest of a descriptor object, checked.
fn descriptor_digest(d: &Value, what: &str) -> RegistryResult<String> {
    let digest = d.get("digest").and_then(Value::as_str).ok_or_else(|| {
        RegistryError::ManifestInvalid(format!("the manifest's {what} has no digest"))
    })?;
    parse_digest(digest).map_err(|_| {
        RegistryError::ManifestInvalid(format!(
            "the manifest's {what} has an invalid digest {digest:?}"
        ))
    })
}

/// Every blob (for an image manifest) or manifest (for an index) the manifest names.
fn references_of(json: &Value, media_type: &str) -> RegistryResult<Vec<String>> {
    if json.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err(RegistryError::ManifestInvalid(
            "the manifest's schemaVersion must be 2".into(),
        ));
    }
    let mut out = Vec::new();
    if is_image_manifest(media_type) {
        let config = json
            .get("config")
            .ok_or_else(|| RegistryError::ManifestInvalid("the manifest has no config".into()))?;
        out.push(descriptor_digest(config, "config")?);
        let layers = json
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                RegistryError::ManifestInvalid("the manifest has no layers array".into())
            })?;
        for layer in layers {
            out.push(descriptor_digest(layer, "layer")?);
        }
    } else {
        let manifests = json
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                RegistryError::ManifestInvalid("the index has no manifests array".into())
            })?;
        for m in manifests {
            out.push(descriptor_digest(m, "entry")?);
        }
    }
    Ok(out)
}

/// The `os/architecture` of this host in OCI terms.
fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

/// Which image manifest a manifest stands for when a machine names it: itself (an image
/// manifest with an image config), the host platform's entry of an index, or none (an
/// artifact, or an index without this platform).
fn machine_image_of(
    registry: &Registry,
    repo: &str,
    json: &Value,
    digest: &str,
    media_type: &str,
) -> Option<String> {
    if is_image_manifest(media_type) {
        let config_type = json.pointer("/config/mediaType").and_then(Value::as_str)?;
        return IMAGE_CONFIGS
            .contains(&config_type)
            .then(|| digest.to_string());
    }
    let (os, arch) = host_platform();
    let entry = json.get("manifests")?.as_array()?.iter().find(|m| {
        m.pointer("/platform/os").and_then(Value::as_str) == Some(os)
            && m.pointer("/platform/architecture").and_then(Value::as_str) == Some(arch)
    })?;
    let child = entry.get("digest")?.as_str()?.to_string();
    let child_type = registry
        .inner
        .meta
        .manifest_media_type(repo, &child)
        .ok()??;
    let child_json = read_json(registry, &child).ok()?;
    if is_image_manifest(&child_type) {
        machine_image_of(registry, repo, &child_json, &child, &child_type)
    } else {
        None
    }
}

fn read_bytes(registry: &Registry, digest: &str) -> RegistryResult<Vec<u8>> {
    let path = registry.inner.images.blob_path(digest).ok_or_else(|| {
        RegistryError::ManifestUnknown(format!(
            "manifest {digest} is missing from the image store; push it again"
        ))
    })?;
    std::fs::read(&path)
        .map_err(|e| RegistryError::internal(format!("reading {}: {e}", path.display())))
}

fn read_json(registry: &Registry, digest: &str) -> RegistryResult<Value> {
    serde_json::from_slice(&read_bytes(registry, digest)?)
        .map_err(|e| RegistryError::internal(format!("stored manifest {digest} is not JSON: {e}")))
}

/// The names under which a tag is a machine image: `<repo>:<tag>`, and
/// `<host>/<repo>:<tag>` when the client reached the registry under a host name that
/// reads as a registry (`127.0.0.1:4280`, `registry.example`, `localhost`).
fn machine_names(repo: &str, tag: &str, host: Option<&str>) -> Vec<String> {
    let mut names = vec![format!("{repo}:{tag}")];
    if let Some(host) = host
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'[' | b']'))
    {
        names.push(format!("{}/{repo}:{tag}", host.to_ascii_lowercase()));
    }
    names
}

/// `PUT /v2/<name>/manifests/<reference>`.
pub(crate) async fn put(
    registry: &Registry,
    repo: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> RegistryResult<Response> {
    let reference = parse_reference(reference)?;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > MAX_MANIFEST as u64
    {
        return Err(RegistryError::TooLarge(format!(
            "the manifest has {length} bytes; manifests are limited to {MAX_MANIFEST} bytes"
        )));
    }
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST)
        .await
        .map_err(|e| {
            RegistryError::ManifestInvalid(format!(
                "reading the manifest failed (manifests are limited to {MAX_MANIFEST} bytes): {e}"
            ))
        })?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
        RegistryError::ManifestInvalid(format!("the manifest is not valid JSON: {e}"))
    })?;
    let media_type = media_type_of(&json, headers)?;
    let references = references_of(&json, &media_type)?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if let Reference::Digest(expected) = &reference
        && *expected != digest
    {
        return Err(RegistryError::DigestInvalid {
            message: format!(
                "the manifest's digest is {digest}, not {expected}; push it by its own digest or by tag"
            ),
            expected: Some(expected.clone()),
            actual: Some(digest),
        });
    }
    let subject = json
        .pointer("/subject/digest")
        .and_then(Value::as_str)
        .map(str::to_string);
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (r, repo_owned, digest_owned) = (registry.clone(), repo.to_string(), digest.clone());
    blocking(move || {
        let (repo, digest) = (repo_owned.as_str(), digest_owned.as_str());
        for d in &references {
            let present = if is_index(&media_type) {
                r.inner.meta.manifest_media_type(repo, d)?.is_some()
            } else {
                r.inner.meta.has_blob(repo, d) && r.inner.images.blob_path(d).is_some()
            };
            if !present {
                return Err(RegistryError::ManifestBlobUnknown {
                    message: format!(
                        "the manifest names {d}, which repository {repo} does not hold; push the blobs (or, for an index, the manifests) first"
                    ),
                    digest: d.clone(),
                });
            }
        }
        r.inner
            .images
            .put_blob(&bytes[..], Some(digest))
            .map_err(RegistryError::internal)?;
        r.inner.meta.put_manifest(repo, digest, &media_type)?;
        let image = machine_image_of(&r, repo, &json, digest, &media_type);
        let (names, old) = match &reference {
            Reference::Tag(tag) => {
                let old = r.inner.meta.set_tag(repo, tag, digest)?;
                (machine_names(repo, tag, host.as_deref()), old)
            }
            Reference::Digest(_) => (Vec::new(), None),
        };
        if let Some(old) = old
            && let Ok(old_json) = read_json(&r, &old)
            && let Some(old_type) = r.inner.meta.manifest_media_type(repo, &old)?
            && let Some(old_image) = machine_image_of(&r, repo, &old_json, &old, &old_type)
            && image.as_deref() != Some(old_image.as_str())
        {
            // The tag moved away from an image: its machine image names go with it.
            r.inner
                .images
                .remove_pushed_names(&names, &old_image, false)
                .map_err(RegistryError::internal)?;
        }
        if let Some(image) = image
            && let Err(e) = r.inner.images.record_pushed_image(&names, &image)
        {
            // The registry accepted a valid manifest; it just cannot run as a machine.
            tracing::warn!(repo, manifest = %image, error = %e, "pushed image is not usable as a machine image");
        }
        Ok(())
    })
    .await?;
    let mut response_headers = vec![
        (header::LOCATION, format!("/v2/{repo}/manifests/{digest}")),
        (digest_header(), digest),
        (header::CONTENT_LENGTH, "0".into()),
    ];
    if let Some(subject) = subject {
        response_headers.push((header::HeaderName::from_static("oci-subject"), subject));
    }
    Ok(empty(StatusCode::CREATED, response_headers))
}

/// Resolves a reference in a repository to (digest, media type).
fn resolve(registry: &Registry, repo: &str, reference: &str) -> RegistryResult<(String, String)> {
    let digest = match parse_reference(reference)? {
        Reference::Tag(tag) => registry.inner.meta.tag(repo, &tag)?.ok_or_else(|| {
            RegistryError::ManifestUnknown(format!(
                "tag {tag} is not in repository {repo}; list its tags with GET /v2/{repo}/tags/list"
            ))
        })?,
        Reference::Digest(digest) => digest,
    };
    let media_type = registry
        .inner
        .meta
        .manifest_media_type(repo, &digest)?
        .ok_or_else(|| {
            RegistryError::ManifestUnknown(format!("manifest {digest} is not in repository {repo}"))
        })?;
    Ok((digest, media_type))
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`: the exact bytes that were pushed.
pub(crate) async fn get(
    registry: &Registry,
    repo: &str,
    reference: &str,
    head: bool,
) -> RegistryResult<Response> {
    let (r, repo_owned, reference) = (registry.clone(), repo.to_string(), reference.to_string());
    let (digest, media_type, bytes) = blocking(move || {
        let (digest, media_type) = resolve(&r, &repo_owned, &reference)?;
        let bytes = read_bytes(&r, &digest)?;
        Ok((digest, media_type, bytes))
    })
    .await?;
    let mut response = empty(
        StatusCode::OK,
        vec![
            (header::CONTENT_TYPE, media_type),
            (header::CONTENT_LENGTH, bytes.len().to_string()),
            (header::ETAG, format!("\"{digest}\"")),
            (digest_header(), digest),
        ],
    );
    if !head {
        *response.body_mut() = Body::from(bytes);
    }
    Ok(response)
}

/// `DELETE /v2/<name>/manifests/<reference>`: by digest, the manifest and every tag
/// pointing at it; by tag, only the tag.
pub(crate) async fn delete(
    registry: &Registry,
    repo: &str,
    reference: &str,
) -> RegistryResult<Response> {
    let reference = parse_reference(reference)?;
    let (r, repo) = (registry.clone(), repo.to_string());
    blocking(move || {
        let meta = &r.inner.meta;
        let (digest, tags) = match &reference {
            Reference::Tag(tag) => {
                let digest = meta.tag(&repo, tag)?.ok_or_else(|| {
                    RegistryError::ManifestUnknown(format!("tag {tag} is not in repository {repo}"))
                })?;
                (digest, vec![tag.clone()])
            }
            Reference::Digest(digest) => {
                let mut tags = Vec::new();
                for tag in meta.tags(&repo)? {
                    if meta.tag(&repo, &tag)?.as_deref() == Some(digest.as_str()) {
                        tags.push(tag);
                    }
                }
                (digest.clone(), tags)
            }
        };
        let media_type = meta.manifest_media_type(&repo, &digest)?.ok_or_else(|| {
            RegistryError::ManifestUnknown(format!("manifest {digest} is not in repository {repo}"))
        })?;
        let image = read_json(&r, &digest)
            .ok()
            .and_then(|json| machine_image_of(&r, &repo, &json, &digest, &media_type));
        for tag in &tags {
            meta.remove_tag(&repo, tag)?;
        }
        let by_digest = matches!(reference, Reference::Digest(_));
        if by_digest {
            meta.remove_manifest(&repo, &digest)?;
        }
        if let Some(image) = image {
            let names: Vec<String> = tags
                .iter()
                .flat_map(|t| {
                    // Every host alias the tag may have been recorded under is removed
                    // when it still points at this image.
                    let mut names = vec![format!("{repo}:{t}")];
                    names.extend(
                        r.inner
                            .images
                            .list()
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|s| s.name)
                            .filter(|n| {
                                n.strip_suffix(&format!("/{repo}:{t}")).is_some_and(|host| {
                                    !host.contains('/')
                                        && (host.contains('.')
                                            || host.contains(':')
                                            || host == "localhost")
                                })
                            }),
                    );
                    names
                })
                .collect();
            let still_held = by_digest
                && meta.repositories()?.iter().any(|other| {
                    meta.manifest_media_type(other, &digest)
                        .ok()
                        .flatten()
                        .is_some()
                });
            r.inner
                .images
                .remove_pushed_names(&names, &image, by_digest && !still_held)
                .map_err(RegistryError::internal)?;
        }
        Ok(())
    })
    .await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        vec![(header::CONTENT_LENGTH, "0".into())],
    ))
}

/// `GET /v2/<name>/referrers/<digest>`: an index of the repository's manifests whose
/// `subject` is `digest`, optionally filtered by `artifactType`.
pub(crate) async fn referrers(
    registry: &Registry,
    repo: &str,
    digest: &str,
    query: &str,
) -> RegistryResult<Response> {
    let digest = parse_digest(digest)?;
    let filter = query_param(query, "artifactType");
    let (r, repo, f) = (registry.clone(), repo.to_string(), filter.clone());
    let descriptors = blocking(move || {
        let mut out = Vec::new();
        for candidate in r.inner.meta.manifests(&repo)? {
            let Some(media_type) = r.inner.meta.manifest_media_type(&repo, &candidate)? else {
                continue;
            };
            let Ok(bytes) = read_bytes(&r, &candidate) else {
                continue;
            };
            let Ok(json) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if json.pointer("/subject/digest").and_then(Value::as_str) != Some(digest.as_str()) {
                continue;
            }
            let artifact_type = json
                .get("artifactType")
                .or_else(|| json.pointer("/config/mediaType"))
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(f) = &f
                && artifact_type.as_deref() != Some(f.as_str())
            {
                continue;
            }
            let mut d = serde_json::json!({
                "mediaType": media_type,
                "digest": candidate,
                "size": bytes.len(),
            });
            if let Some(t) = artifact_type {
                d["artifactType"] = t.into();
            }
            if let Some(a) = json.get("annotations") {
                d["annotations"] = a.clone();
            }
            out.push(d);
        }
        Ok(out)
    })
    .await?;
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    })
    .to_string();
    let mut headers = vec![
        (header::CONTENT_TYPE, OCI_INDEX.to_string()),
        (header::CONTENT_LENGTH, body.len().to_string()),
    ];
    if filter.is_some() {
        headers.push((
            header::HeaderName::from_static("oci-filters-applied"),
            "artifactType".into(),
        ));
    }
    let mut response = empty(StatusCode::OK, headers);
    *response.body_mut() = Body::from(body);
    Ok(response)
}

#[cfg(test)]
pub(crate) fn host_platform_for_tests() -> (&'static str, &'static str) {
    host_platform()
}
