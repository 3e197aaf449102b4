//! `/v1/apps/{app}/secrets` (Fly's Machines API shape) and
//! `/v1/secrets/rotate-master-key`.
//!
//! Secrets are write-only: no route returns a value, and no error message quotes one.
//! Bodies are parsed by hand from a JSON value because serde's messages quote the
//! offending value (`invalid type: string "hunter2"`), which must never happen here.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Q;
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult};
use crate::secrets::{SecretInfo, SecretValue, validate_secret_name};
use crate::supervisor::Control;

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    show_secrets: bool,
    #[serde(default)]
    min_version: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct StageQuery {
    #[serde(default)]
    stage: bool,
}

/// Parses a JSON object body; syntax errors name the position, never the content.
fn object(body: &Bytes) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest(
            "the body must be a JSON object, e.g. {\"values\": {\"NAME\": \"value\"}}".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "invalid JSON body at line {} column {}: send {{\"values\": {{\"NAME\": \"value\"}}}}",
            e.line(),
            e.column()
        ))),
    }
}

fn stage_field(body: &Map<String, Value>) -> ApiResult<bool> {
    match body.get("stage") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::BadRequest("stage must be true or false".into())),
    }
}

fn value_of(name: &str, v: Value) -> ApiResult<Option<SecretValue>> {
    match v {
        Value::String(s) => Ok(Some(SecretValue::new(s))),
        Value::Null => Ok(None),
        _ => Err(ApiError::BadRequest(format!(
            "the value of {name} must be a string (or null to unset it)"
        ))),
    }
}

/// After a change: a rolling restart of the app's machines through a new release, unless
/// staged. Returns the deploy's id when one was started.
async fn apply(control: &Arc<Control>, app: &str, stage: bool) -> ApiResult<Option<String>> {
    if stage {
        return Ok(None);
    }
    Ok(control.secrets_changed(app).await?.map(|d| d.id))
}

fn info(s: &SecretInfo) -> Value {
    json!({
        "name": s.name,
        "digest": s.digest,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    })
}

/// `GET /v1/apps/{app}/secrets`.
pub(super) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Value>> {
    let _ = q.min_version;
    control.authorize_app(&caller, &app, Access::Read).await?;
    if q.show_secrets {
        return Err(ApiError::Forbidden(
            "secrets are write-only: their values are never shown, only their digests".into(),
        ));
    }
    let (secrets, version) = control.list_secrets(&app).await?;
    Ok(Json(json!({
        "secrets": secrets.iter().map(info).collect::<Vec<_>>(),
        "version": version,
    })))
}

/// `POST /v1/apps/{app}/secrets`: `{"values": {"NAME": "value" | null}, "stage": false}`.
pub(super) async fn update(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    let mut body = object(&body)?;
    let stage = stage_field(&body)?;
    let Some(Value::Object(values)) = body.remove("values") else {
        return Err(ApiError::BadRequest(
            "missing values: send {\"values\": {\"NAME\": \"value\"}} (null unsets NAME)".into(),
        ));
    };
    if let Some(unknown) = body.keys().find(|k| *k != "stage") {
        return Err(ApiError::BadRequest(format!(
            "unknown field {unknown:?}: the body has values and stage"
        )));
    }
    if values.is_empty() {
        return Err(ApiError::BadRequest(
            "values is empty: name at least one secret".into(),
        ));
    }
    let mut changes = BTreeMap::new();
    for (name, v) in values {
        validate_secret_name(&name)?;
        let value = value_of(&name, v)?;
        changes.insert(name, value);
    }
    let version = control.change_secrets(&app, changes).await?;
    let deploy = apply(&control, &app, stage).await?;
    let (secrets, _) = control.list_secrets(&app).await?;
    Ok(Json(json!({
        "secrets": secrets.iter().map(info).collect::<Vec<_>>(),
        "version": version,
        "staged": stage,
        "deploy_id": deploy,
    })))
}

/// `GET /v1/apps/{app}/secrets/{name}`.
pub(super) async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Read).await?;
    let (secrets, version) = control.list_secrets(&app).await?;
    let found = secrets.iter().find(|s| s.name == name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "secret {name} of app {app} not found: list them with `hangar secrets list -a {app}`"
        ))
    })?;
    let mut v = info(found);
    v["version"] = json!(version);
    Ok(Json(v))
}

/// `POST /v1/apps/{app}/secrets/{name}`: `{"value": "...", "stage": false}`.
pub(super) async fn set_one(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    validate_secret_name(&name)?;
    let mut body = object(&body)?;
    let stage = stage_field(&body)?;
    let Some(Value::String(value)) = body.remove("value") else {
        return Err(ApiError::BadRequest(format!(
            "missing value: send {{\"value\": \"...\"}} to set {name}"
        )));
    };
    let value = SecretValue::new(value);
    let version = control
        .change_secrets(&app, BTreeMap::from([(name.clone(), Some(value))]))
        .await?;
    let deploy = apply(&control, &app, stage).await?;
    let (secrets, _) = control.list_secrets(&app).await?;
    let mut v = secrets
        .iter()
        .find(|s| s.name == name)
        .map(info)
        .unwrap_or_else(|| json!({ "name": name }));
    v["version"] = json!(version);
    v["staged"] = json!(stage);
    v["deploy_id"] = json!(deploy);
    Ok(Json(v))
}

/// `DELETE /v1/apps/{app}/secrets/{name}?stage=false`.
pub(super) async fn unset_one(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, name)): Path<(String, String)>,
    Q(q): Q<StageQuery>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    validate_secret_name(&name)?;
    let version = control
        .change_secrets(&app, BTreeMap::from([(name, None)]))
        .await?;
    let deploy = apply(&control, &app, q.stage).await?;
    Ok(Json(json!({
        "version": version,
        "staged": q.stage,
        "deploy_id": deploy,
    })))
}

/// `POST /v1/secrets/rotate-master-key` (admin).
pub(super) async fn rotate_master_key(
    State(control): State<Arc<Control>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let rotation = control.rotate_master_key().await?;
    Ok(Json(json!(rotation)))
}
