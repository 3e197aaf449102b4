//! Deploys, releases, rollback, scaling and app status (Hangar's own resources).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hangar_store::{AppRecord, DeployEvent, DeployRecord, ReleaseRecord};
use serde::Deserialize;

use super::{JsonBody, Q};
use crate::auth::{Access, Caller};
use crate::deploy::{AppStatus, DeployRequest};
use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;

fn who(caller: &Caller) -> String {
    caller.describe()
}

pub(super) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(req): JsonBody<DeployRequest>,
) -> ApiResult<(StatusCode, Json<DeployRecord>)> {
    let app = control.authorize_app(&caller, &app, Access::Write).await?;
    let d = control
        .start_deploy(&app, req, "deploy", &who(&caller))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u32>,
}

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<DeployRecord>>> {
    let app = control.authorize_app(&caller, &app, Access::Read).await?;
    Ok(Json(
        control
            .store
            .list_deploys(&app.name, q.limit.unwrap_or(20).min(1000))
            .await?,
    ))
}

async fn deploy_of(control: &Control, app: &AppRecord, id: &str) -> ApiResult<DeployRecord> {
    match control.store.get_deploy(id).await {
        Ok(d) if d.app == app.name => Ok(d),
        Ok(_) | Err(hangar_store::StoreError::NotFound(_)) => Err(ApiError::NotFound(format!(
            "deploy {id} not found in app {}: list them with GET /v1/apps/{}/deploys",
            app.name, app.name
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<DeployRecord>> {
    let app = control.authorize_app(&caller, &app, Access::Read).await?;
    Ok(Json(deploy_of(&control, &app, &id).await?))
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    after: i64,
}

fn ndjson(e: &DeployEvent) -> bytes::Bytes {
    let mut s = serde_json::to_string(e).unwrap_or_default();
    s.push('\n');
    bytes::Bytes::from(s)
}

/// A deploy's events as NDJSON; with `follow`, until the deploy has ended.
pub(super) async fn events(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    Q(q): Q<EventsQuery>,
) -> ApiResult<Response> {
    let app = control.authorize_app(&caller, &app, Access::Read).await?;
    let d = deploy_of(&control, &app, &id).await?;
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !q.follow {
        let mut body = Vec::new();
        let mut after = q.after;
        loop {
            let batch = control.store.deploy_events(&d.id, after).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                body.extend_from_slice(&ndjson(e));
            }
        }
        return Ok((headers, body).into_response());
    }
    let shutdown = control.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (control, d.id, q.after, false),
        |(control, id, after, ended)| async move {
            if ended {
                return None;
            }
            let mut updates = control.deploy_updates();
            loop {
                // Read the status before the events, so no event recorded before the end
                // is missed.
                let active = match control.store.get_deploy(&id).await {
                    Ok(d) => d.is_active(),
                    Err(e) => {
                        return Some((Err(std::io::Error::other(e)), (control, id, after, true)));
                    }
                };
                match control.store.deploy_events(&id, after).await {
                    Ok(batch) if !batch.is_empty() => {
                        let next = batch.last().map_or(after, |e| e.seq);
                        let mut chunk = Vec::new();
                        for e in &batch {
                            chunk.extend_from_slice(&ndjson(e));
                        }
                        return Some((Ok(bytes::Bytes::from(chunk)), (control, id, next, false)));
                    }
                    Ok(_) if !active => return None,
                    Ok(_) => {}
                    Err(e) => {
                        return Some((Err(std::io::Error::other(e)), (control, id, after, true)));
                    }
                }
                // Events wake the stream at once; the timeout covers a missed wake-up.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), updates.changed())
                    .await;
            }
        },
    )
    .take_until(shutdown.cancelled_owned());
    Ok((headers, Body::from_stream(stream)).into_response())
}

pub(super) async fn releases(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<ReleaseRecord>>> {
    let app = control.authorize_app(&caller, &app, Access::Read).await?;
    Ok(Json(
        control
            .store
            .list_releases(&app.name, q.limit.unwrap_or(20).min(1000))
            .await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackRequest {
    #[serde(default)]
    version: Option<i64>,
}

pub(super) async fn rollback(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> ApiResult<(StatusCode, Json<DeployRecord>)> {
    let app = control.authorize_app(&caller, &app, Access::Write).await?;
    let d = control.rollback(&app, req.version, &who(&caller)).await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScaleRequest {
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    process_group: Option<String>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    memory_mb: Option<u64>,
}

/// Maximum machines per process group a scale may ask for.
const MAX_COUNT: u32 = 100;

pub(super) async fn scale(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> ApiResult<(StatusCode, Json<DeployRecord>)> {
    let app = control.authorize_app(&caller, &app, Access::Write).await?;
    let d = match (req.count, req.size.as_deref(), req.memory_mb) {
        (Some(n), None, None) => {
            if n > MAX_COUNT {
                return Err(ApiError::Unprocessable(format!(
                    "count {n} is above the limit of {MAX_COUNT} machines per process group"
                )));
            }
            control
                .scale_count(&app, req.process_group.as_deref(), n, &who(&caller))
                .await?
        }
        (None, size, memory) if size.is_some() || memory.is_some() => {
            if req.process_group.is_some() {
                return Err(ApiError::BadRequest(
                    "process_group applies to count only: a VM size change applies to every group"
                        .into(),
                ));
            }
            if memory == Some(0) {
                return Err(ApiError::Unprocessable("memory_mb must be above 0".into()));
            }
            control.scale_vm(&app, size, memory, &who(&caller)).await?
        }
        _ => {
            return Err(ApiError::BadRequest(
                "send either {\"count\": N} (with an optional process_group) or {\"size\": \"shared-cpu-1x\"} / {\"memory_mb\": 512}".into(),
            ));
        }
    };
    Ok((StatusCode::ACCEPTED, Json(d)))
}

pub(super) async fn status(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Json<AppStatus>> {
    let app = control.authorize_app(&caller, &app, Access::Read).await?;
    Ok(Json(control.app_status(&app).await?))
}
