//! `/v1/tokens`: create, list and revoke API tokens. A token is shown once, in the answer
//! that creates it; the store keeps only its SHA-256 digest.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_store::{NewToken, Org, StoreError, TokenRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{JsonBody, Q};
use crate::auth::{
    Access, Caller, DEFAULT_EXPIRY, Scope, TokenKind, generate_token, parse_expiry, token_digest,
};
use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;

/// The longest token name.
const MAX_NAME: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateToken {
    kind: String,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    org_slug: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// A duration (`30d`, `12h`) or `never`.
    #[serde(default)]
    expiry: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    org_slug: Option<String>,
}

fn view(t: &TokenRecord) -> Value {
    json!({
        "id": t.id,
        "kind": t.kind,
        "name": t.name,
        "org_slug": t.org_slug,
        "app": t.app,
        "read_only": t.kind == TokenKind::ReadOnly.as_str(),
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "last_used_at": t.last_used_at,
        "revoked_at": t.revoked_at,
        "created_by": t.created_by,
    })
}

fn org_not_found(slug: &str) -> ApiError {
    ApiError::NotFound(format!(
        "organization {slug:?} not found: list yours with `hangar orgs list`"
    ))
}

/// The organization `slug` if the caller can see it; a missing and an invisible one
/// answer the same 404.
async fn visible_org(control: &Control, caller: &Caller, slug: &str) -> ApiResult<Org> {
    hangar_core::names::validate_org_name(slug).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let org = match control.store.get_org(slug).await {
        Ok(org) => org,
        Err(StoreError::NotFound(_)) => return Err(org_not_found(slug)),
        Err(e) => return Err(e.into()),
    };
    if !caller.sees_org(org.id) {
        return Err(org_not_found(slug));
    }
    Ok(org)
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_NAME
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(format!(
            "invalid token name {name:?}: use 1-{MAX_NAME} printable characters"
        )));
    }
    Ok(())
}

pub(super) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let kind: TokenKind = body
        .kind
        .parse()
        .map_err(|e: crate::auth::UnknownTokenKind| ApiError::BadRequest(e.to_string()))?;
    // Tokens scoped to one app create no tokens: refuse before looking anything up.
    if let Scope::App { org_id, .. } = &caller.scope {
        caller.check_create_token(kind, Some(*org_id))?;
    }
    let expiry = match &body.expiry {
        Some(e) => parse_expiry(e).map_err(|e| ApiError::BadRequest(e.to_string()))?,
        None if kind == TokenKind::Admin => None,
        None => Some(DEFAULT_EXPIRY),
    };
    if let Some(name) = &body.name {
        check_name(name)?;
    }
    let (org, app) = match kind {
        TokenKind::Admin => {
            if body.app.is_some() || body.org_slug.is_some() {
                return Err(ApiError::BadRequest(
                    "an admin token reaches the whole host: give no app or organization".into(),
                ));
            }
            (None, None)
        }
        TokenKind::Deploy | TokenKind::ReadOnly if body.app.is_some() => {
            let name = body.app.as_deref().unwrap_or_default();
            let app = control.authorize_app(&caller, name, Access::Read).await?;
            if let Some(slug) = &body.org_slug
                && *slug != app.org.slug
            {
                return Err(ApiError::BadRequest(format!(
                    "app {} belongs to organization {}, not {slug}: leave out the organization",
                    app.name, app.org.slug
                )));
            }
            (Some(app.org), Some(app.name))
        }
        TokenKind::Deploy => {
            return Err(ApiError::BadRequest(
                "a deploy token is for one app: give the app (`--app NAME`)".into(),
            ));
        }
        TokenKind::Org | TokenKind::ReadOnly => {
            let org = match (&body.org_slug, &caller.scope) {
                (Some(slug), _) => visible_org(&control, &caller, slug).await?,
                (None, Scope::Org(id)) => control.store.get_org_by_id(*id).await?,
                (None, _) => control.store.ensure_org("default").await?,
            };
            if body.app.is_some() {
                return Err(ApiError::BadRequest(
                    "an organization token reaches all its apps: give no app".into(),
                ));
            }
            (Some(org), None)
        }
    };
    caller.check_create_token(kind, org.as_ref().map(|o| o.id))?;

    let now = OffsetDateTime::now_utc();
    let expires_at = expiry
        .map(|d| {
            let d = time::Duration::try_from(d).map_err(ApiError::internal)?;
            (now + d).format(&Rfc3339).map_err(ApiError::internal)
        })
        .transpose()?;
    let name = body.name.unwrap_or_else(|| match (&app, &org) {
        (Some(app), _) => format!("{kind} {app}"),
        (None, Some(org)) => format!("{kind} {}", org.slug),
        (None, None) => kind.to_string(),
    });
    let token = generate_token();
    let record = control
        .store
        .create_token(&NewToken {
            digest: token_digest(&token),
            kind: kind.as_str().to_owned(),
            name,
            org_id: org.as_ref().map(|o| o.id),
            app,
            expires_at,
            created_by: Some(caller.token_id),
        })
        .await?;
    tracing::info!(token_id = record.id, kind = %kind, by = %caller.describe(), "created a token");
    let mut out = view(&record);
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)))
}

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Value>> {
    let org_id = match (&q.org_slug, &caller.scope) {
        (Some(slug), _) => {
            let org = visible_org(&control, &caller, slug).await?;
            caller.check_org(org.id, Access::Read)?;
            Some(org.id)
        }
        (None, Scope::Admin) => None,
        (None, Scope::Org(id)) => {
            caller.check_org(*id, Access::Read)?;
            Some(*id)
        }
        (None, Scope::App { org_id, .. }) => {
            caller.check_org(*org_id, Access::Read)?;
            Some(*org_id)
        }
    };
    let tokens = control.store.list_tokens(org_id).await?;
    Ok(Json(Value::Array(tokens.iter().map(view).collect())))
}

pub(super) async fn revoke(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let not_found = || {
        ApiError::NotFound(format!(
            "token {id} not found: list yours with `hangar tokens list`"
        ))
    };
    let id_num: i64 = id.parse().map_err(|_| not_found())?;
    let record = match control.store.get_token(id_num).await {
        Ok(t) => t,
        Err(StoreError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    caller.check_token(&record, Access::Write)?;
    let revoked = control.store.revoke_token(id_num).await?;
    tracing::info!(token_id = id_num, by = %caller.describe(), "revoked a token");
    Ok(Json(view(&revoked)))
}
