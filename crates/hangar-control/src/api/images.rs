//! `/v1/images`: Hangar's local image store.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures_util::TryStreamExt;
use hangar_runtime::image::{
    ImageError, ImageStore, ImageSummary, ParsedReference, PullAuth, parse_reference,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{JsonBody, Q};
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;
use crate::supervisor::blocking;

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> ApiResult<Json<Vec<ImageSummary>>> {
    caller.check_images(Access::Read)?;
    let images = control.images.clone();
    Ok(Json(blocking(move || images.list()).await??))
}

#[derive(Deserialize)]
pub(super) struct ImportQuery {
    tag: Option<String>,
}

/// Streams the upload to a temporary file (never held in memory), then imports it.
pub(super) async fn import(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Q(q): Q<ImportQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Vec<ImageSummary>>)> {
    caller.check_images(Access::Write)?;
    let tmp_dir = control.images.root().join("tmp");
    let path = tmp_dir.join(format!("upload-{}.tar", hangar_core::MachineId::generate()));
    let result = async {
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(ApiError::internal)?;
        let mut stream = body.into_data_stream();
        let mut total: u64 = 0;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?
        {
            total += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::Internal(format!("could not store the upload: {e}")))?;
        }
        file.flush().await.map_err(ApiError::internal)?;
        if total == 0 {
            return Err(ApiError::BadRequest(
                "empty upload: send an oci-archive or docker save tarball as the body".into(),
            ));
        }
        let images = control.images.clone();
        let p = path.clone();
        let tag = q.tag.clone();
        Ok(blocking(move || images.import_path(&p, tag.as_deref())).await??)
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    Ok((StatusCode::CREATED, Json(result?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PullInput {
    reference: String,
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    insecure: bool,
}

pub(super) async fn pull(
    State(control): State<Arc<Control>>,
    caller: Caller,
    JsonBody(input): JsonBody<PullInput>,
) -> ApiResult<(StatusCode, Json<ImageSummary>)> {
    caller.check_images(Access::Write)?;
    let auth = match (input.username, input.password) {
        (Some(username), Some(password)) => PullAuth::Basic { username, password },
        (None, None) => PullAuth::Anonymous,
        _ => {
            return Err(ApiError::BadRequest(
                "give both username and password, or neither".into(),
            ));
        }
    };
    let summary = control
        .images
        .pull(&input.reference, auth, input.insecure)
        .await?;
    Ok((StatusCode::CREATED, Json(summary)))
}

pub(super) async fn remove(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    // Images are shared by every organization on the host: removing one is the host's
    // administrator's decision.
    caller.require_admin()?;
    let images = control.images.clone();
    let n = name.clone();
    let target = blocking(move || manifest_digest_of(&images, &n)).await??;
    for m in control.store.list_live_machines().await? {
        if m.image_ref.as_ref().is_some_and(|r| r.digest == target) {
            return Err(ApiError::Conflict(format!(
                "image {name} is used by machine {} of app {:?}: destroy it first",
                m.id, m.app
            )));
        }
    }
    let images = control.images.clone();
    blocking(move || images.remove(&name)).await??;
    Ok(Json(json!({ "ok": true })))
}

/// The manifest digest a name or digest stands for.
fn manifest_digest_of(images: &ImageStore, name: &str) -> Result<String, ImageError> {
    match parse_reference(name)? {
        ParsedReference::Digest(d) => Ok(d),
        ParsedReference::Named(n) if n.digest.is_some() => Ok(n.digest.unwrap_or_default()),
        ParsedReference::Named(n) => {
            let canonical = n.canonical();
            images
                .list()?
                .into_iter()
                .find(|s| s.name.as_deref() == Some(canonical.as_str()))
                .map(|s| s.manifest_digest)
                .ok_or_else(|| ImageError::NotFound(name.to_owned()))
        }
    }
}

pub(super) async fn gc(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let (report, untagged) = control.collect_images(control.opts.keep_releases).await?;
    Ok(Json(
        json!({ "removed_blobs": report.removed_blobs, "removed_layers": report.removed_layers, "freed_bytes": report.freed_bytes, "untagged": untagged }),
    ))
}
