//! `/v1/orgs`: organizations (tenants). Each gets its own bridge and address blocks.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use hangar_core::names::validate_org_name;
use hangar_store::Org;
use serde::Deserialize;
use serde_json::{Value, json};

use super::JsonBody;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOrg {
    slug: String,
}

fn view(org: &Org) -> Value {
    json!({ "slug": org.slug, "name": org.slug, "network_index": org.net_index, "created_at": org.created_at })
}

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let orgs = control.store.list_orgs().await?;
    Ok(Json(Value::Array(
        orgs.iter()
            .filter(|o| caller.sees_org(o.id))
            .map(view)
            .collect(),
    )))
}

pub(super) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateOrg>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin()?;
    validate_org_name(&body.slug).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let max = hangar_net::plan::max_org_index(&control.opts.pool).map_err(ApiError::internal)?;
    if control.store.list_orgs().await?.len() >= max as usize {
        return Err(ApiError::Conflict(format!(
            "this host's address pool has room for {max} organizations, all in use"
        )));
    }
    let org = control.store.create_org(&body.slug).await?;
    Ok((StatusCode::CREATED, Json(view(&org))))
}
