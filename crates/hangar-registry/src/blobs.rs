//! Blob reads (`GET`/`HEAD`, with `Range`) and blob unlinking (`DELETE`).

use std::io::{Read as _, Seek as _, SeekFrom};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};

use crate::error::{RegistryError, RegistryResult};
use crate::names::parse_digest;
use crate::{Registry, blocking, empty};

/// Read buffer for streaming blobs: large reads keep the syscall count low on
/// multi-hundred-megabyte layers.
const READ_BUFFER: usize = 4 << 20;
/// Chunks read ahead of the socket.
const READ_AHEAD: usize = 2;

/// A parsed `Range: bytes=...` request, resolved against the blob's length.
fn byte_range(headers: &HeaderMap, len: u64) -> RegistryResult<Option<(u64, u64)>> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = |why: &str| RegistryError::RangeInvalid {
        message: format!("range {value:?} {why}; the blob has {len} bytes"),
        current: len,
        read: true,
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|s| s.trim().strip_prefix("bytes="))
        .ok_or_else(|| unsatisfiable("is not `bytes=<start>-<end>`"))?;
    if spec.contains(',') {
        return Err(unsatisfiable(
            "asks for several ranges, which are not supported",
        ));
    }
    let (start, end) = spec
        .split_once('-')
        .ok_or_else(|| unsatisfiable("is not `bytes=<start>-<end>`"))?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix
                .parse()
                .map_err(|_| unsatisfiable("is not a number"))?;
            if n == 0 || len == 0 {
                return Err(unsatisfiable("is empty"));
            }
            (len.saturating_sub(n), len - 1)
        }
        (start, "") => {
            let s: u64 = start
                .parse()
                .map_err(|_| unsatisfiable("is not a number"))?;
            (s, len.saturating_sub(1))
        }
        (start, end) => {
            let s: u64 = start
                .parse()
                .map_err(|_| unsatisfiable("is not a number"))?;
            let e: u64 = end.parse().map_err(|_| unsatisfiable("is not a number"))?;
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len || end < start {
        return Err(unsatisfiable("is outside the blob"));
    }
    Ok(Some((start, end)))
}

/// Streams `count` bytes of `file` from `start`. One blocking thread reads ahead into a
/// small bounded queue, so disk reads overlap with socket writes without a thread hop per
/// read; it stops when the client goes away (the queue's receiver is dropped).
fn read_ahead(
    mut file: std::fs::File,
    start: u64,
    count: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = count;
        while left > 0 {
            let want = left.min(READ_BUFFER as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            let n = match file.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the blob is shorter than its recorded length",
                    )));
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            buf.truncate(n);
            left -= n as u64;
            if tx.blocking_send(Ok(buf.freeze())).is_err() {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`: streams the blob from the store.
pub(crate) async fn get(
    registry: &Registry,
    repo: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> RegistryResult<Response> {
    let digest = parse_digest(digest)?;
    let unknown = || {
        RegistryError::BlobUnknown(format!(
            "blob {digest} is not in repository {repo}; push it first"
        ))
    };
    if !registry.inner.meta.has_blob(repo, &digest) {
        return Err(unknown());
    }
    let path = registry
        .inner
        .images
        .blob_path(&digest)
        .ok_or_else(unknown)?;
    let file = std::fs::File::open(&path)
        .map_err(|e| RegistryError::internal(format!("opening {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .map_err(|e| RegistryError::internal(format!("reading {}: {e}", path.display())))?
        .len();
    let range = byte_range(headers, len)?;
    let mut response_headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.clone(),
        ),
        (header::ACCEPT_RANGES, "bytes".into()),
        (header::ETAG, format!("\"{digest}\"")),
    ];
    let (status, start, count) = match range {
        Some((start, end)) => {
            response_headers.push((header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, len),
    };
    response_headers.push((header::CONTENT_LENGTH, count.to_string()));
    let mut response = empty(status, response_headers);
    if !head {
        *response.body_mut() = Body::from_stream(read_ahead(file, start, count));
    }
    Ok(response)
}

/// `DELETE /v2/<name>/blobs/<digest>`: unlinks the blob from the repository; the image
/// store removes the content at its next gc if nothing else holds it.
pub(crate) async fn delete(
    registry: &Registry,
    repo: &str,
    digest: &str,
) -> RegistryResult<Response> {
    let digest = parse_digest(digest)?;
    let (r, repo_owned, d) = (registry.clone(), repo.to_string(), digest.clone());
    let removed = blocking(move || r.inner.meta.unlink_blob(&repo_owned, &d)).await?;
    if !removed {
        return Err(RegistryError::BlobUnknown(format!(
            "blob {digest} is not in repository {repo}"
        )));
    }
    Ok(empty(
        StatusCode::ACCEPTED,
        vec![(header::CONTENT_LENGTH, "0".into())],
    ))
}
