//! `/v1/apps`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_core::names::{validate_app_name, validate_org_name};
use hangar_store::{AppRecord, Org, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonBody, Q};
use crate::auth::{Access, Caller, Scope};
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

fn org_not_found(slug: &str) -> ApiError {
    ApiError::NotFound(format!(
        "organization {slug:?} not found: list yours with `hangar orgs list`"
    ))
}

async fn find_org(control: &Control, slug: &str) -> ApiResult<Org> {
    control.store.get_org(slug).await.map_err(|e| match e {
        StoreError::NotFound(_) => org_not_found(slug),
        e => e.into(),
    })
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
    caller: Caller,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Value>> {
    if let Some(slug) = &q.org_slug {
        // Another organization's slug answers as a missing one does.
        let org = find_org(&control, slug).await?;
        if !caller.sees_org(org.id) {
            return Err(org_not_found(slug));
        }
    }
    let apps = control.store.list_apps(q.org_slug.as_deref()).await?;
    let mut out = Vec::with_capacity(apps.len());
    for a in apps
        .iter()
        .filter(|a| caller.check_app(a, Access::Read).is_ok())
    {
        out.push(view(&control, a).await?);
    }
    Ok(Json(json!({ "total_apps": out.len(), "apps": out })))
}

pub(super) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateApp>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let _ = (&body.network, &body.enable_subdomains, &body.app_role_id);
    let name = body.app_name.or(body.name).ok_or_else(|| {
        ApiError::BadRequest("missing app_name: send {\"app_name\": \"my-app\"}".into())
    })?;
    validate_app_name(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // App-scoped tokens never create apps: refuse before anything is looked up or made.
    if let Scope::App { org_id, .. } = &caller.scope {
        caller.check_org(*org_id, Access::Write)?;
    }
    let org = match body.org_slug {
        Some(slug) => {
            validate_org_name(&slug).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if slug == "default" && caller.scope == Scope::Admin {
                control.store.ensure_org("default").await?
            } else {
                find_org(&control, &slug).await?
            }
        }
        // An organization token creates in its own organization by default.
        None => match &caller.scope {
            Scope::Org(id) => control.store.get_org_by_id(*id).await?,
            _ => control.store.ensure_org("default").await?,
        },
    };
    caller.check_org(org.id, Access::Write)?;
    let app = control.store.create_app(&name, &org).await?;
    control.routing_changed();
    Ok((StatusCode::CREATED, Json(view(&control, &app).await?)))
}

pub(super) async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = control.authorize_app(&caller, &app, Access::Read).await?;
    Ok(Json(view(&control, &app).await?))
}

pub(super) async fn delete(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    Q(q): Q<DeleteQuery>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let record = control.authorize_app(&caller, &app, Access::Read).await?;
    // Deleting an app is the organization's decision, not its deploy token's.
    caller.check_org(record.org.id, Access::Write)?;
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
    // A new app of the same name must not inherit the old one's tokens.
    let revoked = control.store.revoke_app_tokens(&app).await?;
    if revoked > 0 {
        tracing::info!(app = %app, revoked, "revoked the tokens of the deleted app");
    }
    control.routing_changed();
    Ok((StatusCode::ACCEPTED, Json(json!({ "ok": true }))))
}
