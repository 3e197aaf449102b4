//! Bearer-token authentication and authorization. Only SHA-256 digests of tokens are
//! stored.
//!
//! The auth middleware resolves the token into a [`Caller`] and puts it into the request's
//! extensions; handlers take `caller: Caller` as an extractor and ask it before acting
//! (`caller.check_app(&app, Access::Write)?`). Objects of an organization the caller
//! cannot see answer 404, as if they did not exist; objects it can see but not change
//! answer 403.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use hangar_store::AppRecord;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;

/// The digest under which a token is stored.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `hgr_` and 64 hex characters (32 random bytes).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("hgr_{}", hex::encode(bytes))
}

/// What a token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything, including creating organizations and tokens.
    Admin,
    /// One organization (by id) and its apps.
    Org(i64),
    /// One app: deploy it, read its status and logs, push its image.
    App {
        /// The app's name.
        app: String,
        /// The app's organization.
        org_id: i64,
    },
}

/// Whether a call reads or changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only.
    Read,
    /// Changes state.
    Write,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's row id in the store.
    pub token_id: i64,
    /// What it may reach.
    pub scope: Scope,
    /// A read-only token may only [`Access::Read`].
    pub read_only: bool,
}

impl Caller {
    /// Whether the caller can see organization `org_id` at all.
    pub fn sees_org(&self, org_id: i64) -> bool {
        match &self.scope {
            Scope::Admin => true,
            Scope::Org(o) | Scope::App { org_id: o, .. } => *o == org_id,
        }
    }

    fn check_access(&self, access: Access) -> ApiResult<()> {
        if self.read_only && access == Access::Write {
            return Err(ApiError::Forbidden(
                "this token is read-only: use a deploy, organization or admin token to change things".into(),
            ));
        }
        Ok(())
    }

    /// Checks access to an app: 404 when the app belongs to an organization the caller
    /// cannot see (or to another app's deploy token), 403 when the access is not allowed.
    pub fn check_app(&self, app: &AppRecord, access: Access) -> ApiResult<()> {
        let visible = match &self.scope {
            Scope::Admin => true,
            Scope::Org(o) => *o == app.org.id,
            Scope::App { app: name, .. } => *name == app.name,
        };
        if !visible {
            return Err(ApiError::NotFound(format!(
                "app {} not found: create it with `hangar apps create {}`",
                app.name, app.name
            )));
        }
        self.check_access(access)
    }

    /// Checks access to an organization's own resources (creating apps in it, listing
    /// it, its tokens): deploy tokens are refused.
    pub fn check_org(&self, org_id: i64, access: Access) -> ApiResult<()> {
        match &self.scope {
            Scope::Admin => {}
            Scope::Org(o) if *o == org_id => {}
            Scope::Org(_) => {
                return Err(ApiError::NotFound(
                    "organization not found: list yours with `hangar orgs list`".into(),
                ));
            }
            Scope::App { app, .. } => {
                return Err(ApiError::Forbidden(format!(
                    "this token is a deploy token of app {app}: it can only deploy and read that app"
                )));
            }
        }
        self.check_access(access)
    }

    /// Only admin tokens pass (host-wide operations: organizations, image GC).
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.scope == Scope::Admin && !self.read_only {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this needs an admin token (the server writes one to <data-dir>/admin-token)"
                    .into(),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("missing token".into()))
    }
}

/// The token in an `Authorization` header value: `Bearer <t>` or Fly's `FlyV1 <t>`.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("FlyV1 "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

impl Control {
    /// Resolves a token into its caller; 401 when it is unknown.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Caller> {
        match self.store.token_by_digest(&token_digest(token)).await? {
            Some(t) if t.kind == "admin" => Ok(Caller {
                token_id: t.id,
                scope: Scope::Admin,
                read_only: false,
            }),
            Some(t) => Err(ApiError::Unauthorized(format!(
                "token kind {} is not supported by this server",
                t.kind
            ))),
            None => Err(ApiError::Unauthorized("invalid token".into())),
        }
    }
}

/// Rejects requests without a known token and puts the [`Caller`] into the request.
pub async fn require_token(
    State(control): State<Arc<Control>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = bearer_token(header)
        .ok_or_else(|| ApiError::Unauthorized("missing token: send `Authorization: Bearer <token>` (the admin token is in <data-dir>/admin-token)".into()))?
        .to_owned();
    let caller = control.authenticate(&token).await?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
