//! Blob uploads: monolithic (`POST ?digest=`, or `POST` then `PUT`), chunked (`PATCH` with
//! `Content-Range`), status, cancel and cross-repository mount.
//!
//! An upload session owns a [`BlobWriter`] in the image store's `tmp/`: every chunk is
//! written and hashed as it arrives, so the session's size and hash always agree, also
//! after a request was cut off half way (the client asks for the status and resumes from
//! the `Range` it gets). The final `PUT` commits only when the digest matches.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt as _;
use hangar_runtime::image::{BlobWriter, ImageError};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::error::{RegistryError, RegistryResult, upload_range};
use crate::names::{parse_digest, validate_repository};
use crate::{Action, Registry, blocking, empty, query_param};

/// At most this many sessions are open at once; a client that opens more gets 429.
const MAX_SESSIONS: usize = 1024;
/// A session untouched for this long is dropped when a new one starts (its temporary
/// file goes with it).
const IDLE_EXPIRY: Duration = Duration::from_secs(3600);

/// The open upload sessions.
#[derive(Default)]
pub(crate) struct Uploads {
    /// Upload id -> (repository, session). The repository is kept outside the session's
    /// lock so it can be checked while a chunk is being written.
    sessions: Mutex<HashMap<String, (String, SharedSession)>>,
}

type SharedSession = Arc<AsyncMutex<Session>>;

/// One upload in progress.
pub(crate) struct Session {
    /// `None` once committed or failed.
    writer: Option<BlobWriter>,
    touched: Instant,
}

impl Uploads {
    fn get(&self, repo: &str, id: &str) -> RegistryResult<Arc<AsyncMutex<Session>>> {
        let unknown = || {
            RegistryError::BlobUploadUnknown(format!(
                "upload {id} of {repo} is unknown (finished, cancelled or expired); start a new upload with POST /v2/{repo}/blobs/uploads/"
            ))
        };
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        // A session belongs to the repository it was started in; another repository's
        // credentials must not reach it.
        match sessions.get(id) {
            Some((owner, session)) if owner == repo => Ok(session.clone()),
            _ => Err(unknown()),
        }
    }

    fn remove(&self, id: &str) -> Option<Arc<AsyncMutex<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .map(|(_, session)| session)
    }

    fn insert(&self, id: String, repo: &str, session: Session) -> RegistryResult<()> {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, (_, s)| match s.try_lock() {
            Ok(s) => s.touched.elapsed() < IDLE_EXPIRY,
            Err(_) => true,
        });
        if sessions.len() >= MAX_SESSIONS {
            return Err(RegistryError::TooManyRequests(format!(
                "{MAX_SESSIONS} uploads are open; finish or cancel some, or retry later"
            )));
        }
        sessions.insert(id, (repo.to_string(), Arc::new(AsyncMutex::new(session))));
        Ok(())
    }
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn upload_location(repo: &str, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// Bytes free for unprivileged use on the filesystem of the image store.
fn free_bytes(registry: &Registry) -> RegistryResult<u64> {
    let root = registry.inner.images.root();
    let stat = rustix::fs::statvfs(root).map_err(|e| {
        RegistryError::internal(format!("reading the free space of {}: {e}", root.display()))
    })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Refuses a declared `Content-Length` larger than the free space before reading the
/// body; returns the most bytes the body may carry.
fn body_limit(registry: &Registry, headers: &HeaderMap) -> RegistryResult<u64> {
    let free = free_bytes(registry)?;
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RegistryError::SizeInvalid("Content-Length is not a number".into()))?;
        if length > free {
            return Err(RegistryError::TooLarge(format!(
                "the upload declares {length} bytes but the data dir's filesystem has only {free} bytes free; free some space (for example `hangar images gc`) or push a smaller blob"
            )));
        }
    }
    Ok(free)
}

/// Streams a request body into the session's writer on a blocking thread. The writer
/// thread owns the session lock, so a request cut off half way (even one whose handler
/// is dropped) leaves the session consistent: size and hash cover exactly the bytes
/// written.
async fn write_body(
    guard: OwnedMutexGuard<Session>,
    body: Body,
    limit: u64,
) -> RegistryResult<OwnedMutexGuard<Session>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let task = tokio::task::spawn_blocking(move || {
        let mut guard = guard;
        let mut result = Ok(());
        if let Some(writer) = guard.writer.as_mut() {
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = writer.write_all(&chunk) {
                    result = Err(e);
                    break;
                }
            }
        }
        guard.touched = Instant::now();
        (guard, result)
    });
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    let mut failure = None;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => {
                received += bytes.len() as u64;
                if received > limit {
                    failure = Some(RegistryError::TooLarge(format!(
                        "the upload is larger than the {limit} bytes free on the data dir's filesystem; free some space or push a smaller blob"
                    )));
                    break;
                }
                if tx.send(bytes).await.is_err() {
                    // The writer failed; its error is reported below.
                    break;
                }
            }
            Err(e) => {
                failure = Some(RegistryError::BlobUploadInvalid(format!(
                    "reading the upload body failed after {received} bytes: {e}; ask for the upload's status (GET) and resume from its Range"
                )));
                break;
            }
        }
    }
    drop(tx);
    let (guard, result) = task.await.map_err(RegistryError::internal)?;
    result.map_err(|e| {
        RegistryError::internal(format!(
            "writing the upload to the image store's tmp directory: {e}"
        ))
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(guard),
    }
}

/// Commits a session's blob under `digest` into `repo`. The link is written first, so a
/// concurrent image gc (which keeps every linked blob) cannot remove the blob between its
/// rename and the link; on a mismatch the link is taken back and nothing is visible.
async fn commit(
    registry: &Registry,
    repo: &str,
    mut guard: OwnedMutexGuard<Session>,
    digest: String,
) -> RegistryResult<Response> {
    let writer = guard.writer.take().ok_or_else(|| {
        RegistryError::BlobUploadUnknown("the upload was already finished".into())
    })?;
    drop(guard);
    let r = registry.clone();
    let (repo_owned, digest_owned) = (repo.to_string(), digest.clone());
    blocking(move || {
        let already = r.inner.meta.has_blob(&repo_owned, &digest_owned);
        r.inner.meta.link_blob(&repo_owned, &digest_owned)?;
        match writer.commit(Some(&digest_owned)) {
            Ok(_) => Ok(()),
            Err(e) => {
                if !already {
                    r.inner.meta.unlink_blob(&repo_owned, &digest_owned)?;
                }
                Err(match e {
                    ImageError::DigestMismatch {
                        expected, actual, ..
                    } => RegistryError::DigestInvalid {
                        message: format!(
                            "the uploaded content has digest {actual}, not {expected}; nothing was stored, upload it again"
                        ),
                        expected: Some(expected),
                        actual: Some(actual),
                    },
                    e => RegistryError::internal(e),
                })
            }
        }
    })
    .await?;
    Ok(empty(
        StatusCode::CREATED,
        vec![
            (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest,
            ),
            (header::CONTENT_LENGTH, "0".into()),
        ],
    ))
}

fn new_session(registry: &Registry) -> RegistryResult<Session> {
    let writer = registry
        .inner
        .images
        .blob_writer()
        .map_err(RegistryError::internal)?;
    Ok(Session {
        writer: Some(writer),
        touched: Instant::now(),
    })
}

fn session_answer(status: StatusCode, repo: &str, id: &str, size: u64) -> Response {
    empty(
        status,
        vec![
            (header::LOCATION, upload_location(repo, id)),
            (header::RANGE, upload_range(size)),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                id.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".into()),
        ],
    )
}

/// `POST /v2/<name>/blobs/uploads/`: mount, monolithic upload, or a new session.
pub(crate) async fn start(
    registry: &Registry,
    repo: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> RegistryResult<Response> {
    if let Some(mount) = query_param(query, "mount") {
        let digest = parse_digest(&mount)?;
        if let Some(from) = query_param(query, "from") {
            validate_repository(&from)?;
            // Mounting needs pull rights on the source; without them (or when the source
            // does not hold the blob) the spec falls back to a normal upload session.
            let allowed = registry
                .authorize(headers, Some(&from), Action::Pull)
                .await
                .is_ok();
            if allowed
                && registry.inner.meta.has_blob(&from, &digest)
                && registry.inner.images.blob_path(&digest).is_some()
            {
                let (r, to, d) = (registry.clone(), repo.to_string(), digest.clone());
                blocking(move || r.inner.meta.link_blob(&to, &d)).await?;
                return Ok(empty(
                    StatusCode::CREATED,
                    vec![
                        (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
                        (
                            header::HeaderName::from_static("docker-content-digest"),
                            digest,
                        ),
                        (header::CONTENT_LENGTH, "0".into()),
                    ],
                ));
            }
        }
    }
    if let Some(digest) = query_param(query, "digest") {
        let digest = parse_digest(&digest)?;
        let limit = body_limit(registry, headers)?;
        let session = new_session(registry)?;
        let guard = Arc::new(AsyncMutex::new(session)).lock_owned().await;
        let guard = write_body(guard, body, limit).await?;
        return commit(registry, repo, guard, digest).await;
    }
    let id = new_id();
    registry
        .inner
        .uploads
        .insert(id.clone(), repo, new_session(registry)?)?;
    Ok(session_answer(StatusCode::ACCEPTED, repo, &id, 0))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how much the session holds.
pub(crate) async fn status(registry: &Registry, repo: &str, id: &str) -> RegistryResult<Response> {
    let session = registry.inner.uploads.get(repo, id)?;
    let guard = session.lock().await;
    let size = guard.writer.as_ref().map(BlobWriter::size).ok_or_else(|| {
        RegistryError::BlobUploadUnknown(format!("upload {id} is already finished"))
    })?;
    Ok(session_answer(StatusCode::NO_CONTENT, repo, id, size))
}

/// Parses `Content-Range: <start>-<end>` (also accepting a `bytes ` prefix).
fn content_range(headers: &HeaderMap) -> RegistryResult<Option<(u64, u64)>> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        RegistryError::BlobUploadInvalid(
            "Content-Range must be `<start>-<end>` (inclusive byte offsets)".into(),
        )
    };
    let s = value.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Locks a session and checks that a chunk with `Content-Range` continues it.
async fn lock_for_chunk(
    registry: &Registry,
    repo: &str,
    id: &str,
    headers: &HeaderMap,
) -> RegistryResult<OwnedMutexGuard<Session>> {
    let session = registry.inner.uploads.get(repo, id)?;
    let guard = session.lock_owned().await;
    let size = guard.writer.as_ref().map(BlobWriter::size).ok_or_else(|| {
        RegistryError::BlobUploadUnknown(format!("upload {id} is already finished"))
    })?;
    if let Some((start, end)) = content_range(headers)? {
        if start != size {
            return Err(RegistryError::RangeInvalid {
                message: format!(
                    "the chunk starts at byte {start} but the upload holds {size} bytes; resume at byte {size}"
                ),
                current: size,
                read: false,
            });
        }
        if let Some(length) = declared_length(headers)
            && length != end - start + 1
        {
            return Err(RegistryError::RangeInvalid {
                message: format!(
                    "Content-Range {start}-{end} covers {} bytes but Content-Length is {length}",
                    end - start + 1
                ),
                current: size,
                read: false,
            });
        }
    }
    Ok(guard)
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: appends a chunk.
pub(crate) async fn patch(
    registry: &Registry,
    repo: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> RegistryResult<Response> {
    let limit = body_limit(registry, headers)?;
    let guard = lock_for_chunk(registry, repo, id, headers).await?;
    let guard = write_body(guard, body, limit).await?;
    let size = guard.writer.as_ref().map_or(0, BlobWriter::size);
    Ok(session_answer(StatusCode::ACCEPTED, repo, id, size))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: the last chunk (if any) and the commit.
pub(crate) async fn finish(
    registry: &Registry,
    repo: &str,
    id: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> RegistryResult<Response> {
    let digest = query_param(query, "digest").ok_or_else(|| RegistryError::DigestInvalid {
        message: "the final PUT of an upload needs `?digest=sha256:...`".into(),
        expected: None,
        actual: None,
    })?;
    let digest = parse_digest(&digest)?;
    let limit = body_limit(registry, headers)?;
    let guard = lock_for_chunk(registry, repo, id, headers).await?;
    let guard = write_body(guard, body, limit).await?;
    // Finished either way: a digest mismatch discards the upload, so nothing partial can
    // be committed later.
    registry.inner.uploads.remove(id);
    commit(registry, repo, guard, digest).await
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancels; the temporary file is removed.
pub(crate) async fn cancel(registry: &Registry, repo: &str, id: &str) -> RegistryResult<Response> {
    registry.inner.uploads.get(repo, id)?;
    if let Some(session) = registry.inner.uploads.remove(id) {
        session.lock().await.writer = None;
    }
    Ok(empty(
        StatusCode::NO_CONTENT,
        vec![(header::CONTENT_LENGTH, "0".into())],
    ))
}
