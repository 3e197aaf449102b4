//! `/v1/apps`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_core::names::{validate_app_name, validate_org_name};
use hangar_store::AppRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonBody, Q};
use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;

#[derive(Deserialize)]
pub(super) struct ListQuery {
    org_slug: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApp {
    app_name: Option<String>,
    name: Option<String>,
    org_slug: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    enable_subdomains: Option<bool>,
    #[serde(default)]
    app_role_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn view(control: &Control, app: &AppRecord) -> ApiResult<Value> {
    let machines = control.store.list_machines(&app.name, false).await?;
    Ok(json!({
        "id": app.name,
        "name": app.name,
        "status": if machines.is_empty() { "pending" } else { "deployed" },
        "organization": { "name": app.org.slug, "slug": app.org.slug },
        "machine_count": machines.len(),
        "volume_count": 0,
        "network": "default",
        "created_at": app.created_at,
    }))
}

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Value>> {
    let apps = control.store.list_apps(q.org_slug.as_deref()).await?;
    let mut out = Vec::with_capacity(apps.len());
    for a in &apps {
        out.push(view(&control, a).await?);
    }
    Ok(Json(json!({ "total_apps": out.len(), "apps": out })))
}

pub(super) async fn create(
    State(control): State<Arc<Control>>,
    JsonBody(body): JsonBody<CreateApp>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let _ = (&body.network, &body.enable_subdomains, &body.app_role_id);
    let name = body.app_name.or(body.name).ok_or_else(|| {
        ApiError::BadRequest("missing app_name: send {\"app_name\": \"my-app\"}".into())
    })?;
    validate_app_name(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let org_slug = body.org_slug.unwrap_or_else(|| "default".to_owned());
    validate_org_name(&org_slug).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let org = if org_slug == "default" {
        control.store.ensure_org("default").await?
    } else {
        control.store.get_org(&org_slug).await?
    };
    let app = control.store.create_app(&name, &org).await?;
    control.routing_changed();
    Ok((StatusCode::CREATED, Json(view(&control, &app).await?)))
}

pub(super) async fn get(
    State(control): State<Arc<Control>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = control.store.get_app(&app).await?;
    Ok(Json(view(&control, &app).await?))
}

pub(super) async fn delete(
    State(control): State<Arc<Control>>,
    Path(app): Path<String>,
    Q(q): Q<DeleteQuery>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    control.store.get_app(&app).await?;
    let machines = control.store.list_machines(&app, false).await?;
    if !machines.is_empty() && !q.force {
        return Err(ApiError::Precondition(format!(
            "app {app:?} has {} machine(s): destroy them first, or delete with force=true",
            machines.len()
        )));
    }
    for m in machines {
        control.destroy_machine(&app, m.id.as_str(), true).await?;
    }
    control.store.delete_app(&app).await?;
    control.routing_changed();
    Ok((StatusCode::ACCEPTED, Json(json!({ "ok": true }))))
}
