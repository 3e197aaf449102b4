//! Bearer-token authentication and authorization. Only SHA-256 digests of tokens are
//! stored.
//!
//! Four kinds of token exist ([`TokenKind`]): `admin` (the whole host), `org` (one
//! organization), `deploy` (one app) and `readonly` (one organization or one app, reads
//! only). Every request looks its token up in the store (no cache), so a revoked or
//! expired token fails the very next request with 401.
//!
//! The auth middleware resolves the token into a [`Caller`] and puts it into the request's
//! extensions; handlers take `caller: Caller` as an extractor and ask it before acting
//! (`caller.check_app(&app, Access::Write)?`). Objects of an organization the caller
//! cannot see answer 404, as if they did not exist; objects it can see but not change
//! answer 403.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use hangar_store::{AppRecord, StoreError, TokenRecord};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

/// The kinds of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The whole host.
    Admin,
    /// One organization: its apps, machines, tokens; creating apps in it.
    Org,
    /// One app: deploy it, run its machines, read its status and logs, push its image.
    Deploy,
    /// Reads only, in one organization or one app.
    ReadOnly,
}

/// A token kind that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown token kind {0:?}: use admin, org, deploy or readonly")]
pub struct UnknownTokenKind(pub String);

impl TokenKind {
    /// The name stored and shown (`admin`, `org`, `deploy`, `readonly`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Org => "org",
            TokenKind::Deploy => "deploy",
            TokenKind::ReadOnly => "readonly",
        }
    }
}

impl FromStr for TokenKind {
    type Err = UnknownTokenKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(TokenKind::Admin),
            "org" => Ok(TokenKind::Org),
            "deploy" => Ok(TokenKind::Deploy),
            "readonly" | "read-only" => Ok(TokenKind::ReadOnly),
            other => Err(UnknownTokenKind(other.to_owned())),
        }
    }
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a non-admin token lives when no expiry is given: 20 years, as Fly's
/// `fly tokens create deploy` does, so CI set-ups written for Fly keep working.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// The longest expiry accepted (100 years); longer is a typo, and `never` says it.
pub const MAX_EXPIRY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// An expiry that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    /// Not a duration.
    #[error(
        "invalid expiry {value:?} ({source}): use a duration such as 30d, 12h, 90m, 1h30m or 1y, or \"never\""
    )]
    Invalid {
        /// What was given.
        value: String,
        /// Why it does not parse.
        source: humantime::DurationError,
    },
    /// Zero.
    #[error("invalid expiry {0:?}: a token must live at least 1s; use e.g. 30d, or \"never\"")]
    Zero(String),
    /// Longer than [`MAX_EXPIRY`].
    #[error("invalid expiry {0:?}: at most 100y; use \"never\" for a token that does not expire")]
    TooLong(String),
}

/// Parses an expiry: a duration (`30d`, `12h`, `90m`, `1h30m`, `1y`, `45s`) or `never`
/// (`None`).
pub fn parse_expiry(value: &str) -> Result<Option<Duration>, ExpiryError> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let d = humantime::parse_duration(value).map_err(|source| ExpiryError::Invalid {
        value: value.to_owned(),
        source,
    })?;
    if d.is_zero() {
        return Err(ExpiryError::Zero(value.to_owned()));
    }
    if d > MAX_EXPIRY {
        return Err(ExpiryError::TooLong(value.to_owned()));
    }
    Ok(Some(d))
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
    /// The token's name, for records of who did what (`ci`, `admin-token file`).
    pub name: String,
}

impl Caller {
    /// The token's kind.
    pub fn kind(&self) -> TokenKind {
        match (&self.scope, self.read_only) {
            (Scope::Admin, _) => TokenKind::Admin,
            (_, true) => TokenKind::ReadOnly,
            (Scope::Org(_), false) => TokenKind::Org,
            (Scope::App { .. }, false) => TokenKind::Deploy,
        }
    }

    /// Who made a change, for records: `deploy token "ci" (#7)`.
    pub fn describe(&self) -> String {
        format!("{} token {:?} (#{})", self.kind(), self.name, self.token_id)
    }

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
            // The organization is compared too: an app deleted and created again under
            // the same name in another organization is not the token's app.
            Scope::App { app: name, org_id } => *name == app.name && *org_id == app.org.id,
        };
        if !visible {
            return Err(app_not_found(&app.name));
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
            Scope::App { app, .. } => return Err(self.app_scoped(app)),
        }
        self.check_access(access)
    }

    /// Checks access to the host-wide image store: admin, organization and deploy tokens
    /// may list, import and pull (deploy tokens need their app's image); read-only tokens
    /// may list. Removing images and GC are [`Caller::require_admin`].
    pub fn check_images(&self, access: Access) -> ApiResult<()> {
        self.check_access(access)
    }

    /// Checks that the caller may create a token of `kind` scoped to organization
    /// `org_id`: admin tokens create any; organization tokens create deploy and
    /// read-only tokens of their own organization; others create none.
    pub fn check_create_token(&self, kind: TokenKind, org_id: Option<i64>) -> ApiResult<()> {
        match (kind, org_id) {
            (TokenKind::Admin | TokenKind::Org, _) => self.require_admin(),
            (TokenKind::Deploy | TokenKind::ReadOnly, Some(org)) => {
                self.check_org(org, Access::Write)
            }
            (TokenKind::Deploy | TokenKind::ReadOnly, None) => Err(ApiError::BadRequest(format!(
                "a {kind} token needs an organization or an app"
            ))),
        }
    }

    /// Checks access to a stored token (list, revoke): admin tokens reach all;
    /// organization tokens reach their organization's; other tokens none. A token of
    /// another organization answers 404.
    pub fn check_token(&self, token: &TokenRecord, access: Access) -> ApiResult<()> {
        match (&self.scope, token.org_id) {
            (Scope::Admin, _) => self.check_access(access),
            (Scope::App { app, .. }, _) => Err(self.app_scoped(app)),
            (Scope::Org(o), Some(org)) if *o == org => self.check_access(access),
            // Admin tokens and other organizations' tokens are invisible.
            (Scope::Org(_), _) => Err(token_not_found(token.id)),
        }
    }

    /// The 403 of an app-scoped token asked for something beyond its app.
    fn app_scoped(&self, app: &str) -> ApiError {
        let what = if self.read_only {
            "read that app"
        } else {
            "deploy and read that app"
        };
        ApiError::Forbidden(format!(
            "this token is a {} token of app {app}: it can only {what}; use an organization or admin token",
            self.kind()
        ))
    }

    /// Only admin tokens pass (host-wide operations: organizations, image GC).
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.scope == Scope::Admin && !self.read_only {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs an admin token, and this is a {} token: use the admin token (the server writes one to <data-dir>/admin-token)",
                self.kind()
            )))
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

fn token_not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!(
        "token {id} not found: list yours with `hangar tokens list`"
    ))
}

/// How often a token's `last_used_at` is written: at most once a minute per token, so
/// that busy clients do not turn every request into a write.
const LAST_USED_GRANULARITY: time::Duration = time::Duration::minutes(1);

/// The caller a stored token stands for at `now`: 401 when it is revoked or expired.
pub fn caller_from_token(t: &TokenRecord, now: OffsetDateTime) -> ApiResult<Caller> {
    if let Some(at) = &t.revoked_at {
        return Err(ApiError::Unauthorized(format!(
            "token revoked at {at}: create a new one with `hangar tokens create`"
        )));
    }
    if let Some(at) = &t.expires_at {
        let expires = OffsetDateTime::parse(at, &Rfc3339).map_err(|e| {
            ApiError::Internal(format!("token {} has a corrupt expiry {at:?}: {e}", t.id))
        })?;
        if now >= expires {
            return Err(ApiError::Unauthorized(format!(
                "token expired at {at}: create a new one with `hangar tokens create`"
            )));
        }
    }
    let kind: TokenKind = t.kind.parse().map_err(|_| {
        ApiError::Unauthorized(format!(
            "token kind {:?} is not supported by this server: create a new token",
            t.kind
        ))
    })?;
    let corrupt = || {
        ApiError::Internal(format!(
            "token {} ({kind}) is stored without its scope: revoke it and create a new one",
            t.id
        ))
    };
    let (scope, read_only) = match kind {
        TokenKind::Admin => (Scope::Admin, false),
        TokenKind::Org => (Scope::Org(t.org_id.ok_or_else(corrupt)?), false),
        TokenKind::Deploy => (
            Scope::App {
                app: t.app.clone().ok_or_else(corrupt)?,
                org_id: t.org_id.ok_or_else(corrupt)?,
            },
            false,
        ),
        TokenKind::ReadOnly => {
            let org_id = t.org_id.ok_or_else(corrupt)?;
            let scope = match &t.app {
                Some(app) => Scope::App {
                    app: app.clone(),
                    org_id,
                },
                None => Scope::Org(org_id),
            };
            (scope, true)
        }
    };
    Ok(Caller {
        token_id: t.id,
        scope,
        read_only,
        name: t.name.clone(),
    })
}

impl Control {
    /// Resolves a token into its caller; 401 when it is unknown, revoked or expired.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Caller> {
        let Some(t) = self.store.token_by_digest(&token_digest(token)).await? else {
            return Err(ApiError::Unauthorized("invalid token".into()));
        };
        let now = OffsetDateTime::now_utc();
        let caller = caller_from_token(&t, now)?;
        let stale = t.last_used_at.as_deref().is_none_or(|at| {
            OffsetDateTime::parse(at, &Rfc3339).map_or(true, |at| now - at >= LAST_USED_GRANULARITY)
        });
        if stale {
            let when = now.format(&Rfc3339).map_err(ApiError::internal)?;
            // The request is authorized either way: a failed bookkeeping write must not
            // refuse it.
            if let Err(e) = self.store.touch_token(t.id, &when).await {
                tracing::warn!(token_id = t.id, error = %e, "could not record the token's last use");
            }
        }
        Ok(caller)
    }

    /// The app `name` if the caller may reach it with `access`. An app that does not
    /// exist and one of an organization the caller cannot see answer the same 404.
    pub async fn authorize_app(
        &self,
        caller: &Caller,
        name: &str,
        access: Access,
    ) -> ApiResult<AppRecord> {
        let app = match self.store.get_app(name).await {
            Ok(app) => app,
            Err(StoreError::NotFound(_)) => return Err(app_not_found(name)),
            Err(e) => return Err(e.into()),
        };
        caller.check_app(&app, access)?;
        Ok(app)
    }
}

fn app_not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "app {name:?} not found: create it with `hangar apps create {name}`"
    ))
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

#[cfg(test)]
mod tests {
    use hangar_store::Org;

    use super::*;

    fn org(id: i64) -> Org {
        Org {
            id,
            slug: format!("org{id}"),
            net_index: u32::try_from(id).unwrap(),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn app(name: &str, org_id: i64) -> AppRecord {
        AppRecord {
            name: name.into(),
            org: org(org_id),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn token(kind: &str, org_id: Option<i64>, app: Option<&str>) -> TokenRecord {
        TokenRecord {
            id: 7,
            kind: kind.into(),
            name: "t".into(),
            org_id,
            org_slug: org_id.map(|o| format!("org{o}")),
            app: app.map(str::to_owned),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            created_by: None,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-06-01T12:00:00Z", &Rfc3339).unwrap()
    }

    fn caller(kind: &str, org_id: Option<i64>, app: Option<&str>) -> Caller {
        caller_from_token(&token(kind, org_id, app), now()).unwrap()
    }

    /// The status a check answers: 200 when it passes.
    fn status(r: ApiResult<()>) -> u16 {
        r.map_or_else(|e| e.status().as_u16(), |()| 200)
    }

    #[test]
    fn expiries_parse_as_durations_or_never() {
        let day = 86_400;
        for (input, want) in [
            ("30d", Some(30 * day)),
            ("12h", Some(12 * 3600)),
            ("1h30m", Some(5400)),
            ("90m", Some(5400)),
            ("1s", Some(1)),
            (" 2w ", Some(14 * day)),
            ("never", None),
            ("NEVER", None),
        ] {
            assert_eq!(
                parse_expiry(input).unwrap().map(|d| d.as_secs()),
                want,
                "{input}"
            );
        }
        assert_eq!(parse_expiry("1y").unwrap().unwrap().as_secs() / day, 365);
        for (input, needle) in [
            ("", "30d"),
            ("thirty days", "30d"),
            ("30", "30d"),
            ("-1d", "30d"),
            ("0s", "at least 1s"),
            ("101y", "at most 100y"),
            ("99999999999999999999d", "30d"),
        ] {
            let err = parse_expiry(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(err.contains("never"), "{input:?}: {err}");
        }
    }

    #[test]
    fn token_kinds_round_trip_and_unknown_ones_are_named() {
        for kind in [
            TokenKind::Admin,
            TokenKind::Org,
            TokenKind::Deploy,
            TokenKind::ReadOnly,
        ] {
            assert_eq!(kind.as_str().parse::<TokenKind>().unwrap(), kind);
        }
        let err = "root".parse::<TokenKind>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown token kind \"root\": use admin, org, deploy or readonly"
        );
    }

    #[test]
    fn stored_tokens_become_callers_unless_revoked_or_expired() {
        let c = caller("deploy", Some(2), Some("web"));
        assert_eq!(
            c.scope,
            Scope::App {
                app: "web".into(),
                org_id: 2
            }
        );
        assert!(!c.read_only);
        assert_eq!(c.kind(), TokenKind::Deploy);
        assert_eq!(c.describe(), "deploy token \"t\" (#7)");
        assert_eq!(caller("org", Some(2), None).scope, Scope::Org(2));
        assert_eq!(caller("admin", None, None).scope, Scope::Admin);
        let ro = caller("readonly", Some(2), None);
        assert_eq!((ro.scope.clone(), ro.read_only), (Scope::Org(2), true));
        assert_eq!(ro.kind(), TokenKind::ReadOnly);
        let ro_app = caller("readonly", Some(2), Some("web"));
        assert!(ro_app.read_only && matches!(ro_app.scope, Scope::App { .. }));

        let mut t = token("org", Some(2), None);
        t.expires_at = Some("2026-06-01T12:00:01Z".into());
        assert!(caller_from_token(&t, now()).is_ok());
        t.expires_at = Some("2026-06-01T12:00:00Z".into());
        let err = caller_from_token(&t, now()).unwrap_err();
        assert_eq!(err.status().as_u16(), 401);
        assert!(
            err.to_string().contains("expired at 2026-06-01T12:00:00Z"),
            "{err}"
        );
        assert!(err.to_string().contains("hangar tokens create"), "{err}");

        let mut t = token("admin", None, None);
        t.revoked_at = Some("2026-05-01T00:00:00Z".into());
        let err = caller_from_token(&t, now()).unwrap_err();
        assert_eq!(err.status().as_u16(), 401);
        assert!(err.to_string().contains("revoked"), "{err}");

        let err = caller_from_token(&token("root", None, None), now()).unwrap_err();
        assert_eq!(err.status().as_u16(), 401);
        let err = caller_from_token(&token("deploy", Some(2), None), now()).unwrap_err();
        assert_eq!(err.status().as_u16(), 500, "a deploy token without its app");
    }

    #[test]
    fn app_access_by_scope() {
        let web = app("web", 1);
        let other = app("other", 1);
        let foreign = app("shop", 2);
        // The app "web" deleted and created again in organization 2.
        let web_elsewhere = app("web", 2);
        let admin = caller("admin", None, None);
        let org1 = caller("org", Some(1), None);
        let deploy = caller("deploy", Some(1), Some("web"));
        let ro_org = caller("readonly", Some(1), None);
        let ro_app = caller("readonly", Some(1), Some("web"));
        use Access::{Read, Write};
        for (who, c, target, access, want) in [
            ("admin", &admin, &foreign, Write, 200),
            ("org", &org1, &web, Write, 200),
            ("org", &org1, &other, Write, 200),
            ("org", &org1, &foreign, Read, 404),
            ("deploy", &deploy, &web, Write, 200),
            ("deploy", &deploy, &web, Read, 200),
            ("deploy", &deploy, &other, Read, 404),
            ("deploy", &deploy, &foreign, Read, 404),
            ("deploy", &deploy, &web_elsewhere, Read, 404),
            ("readonly org", &ro_org, &other, Read, 200),
            ("readonly org", &ro_org, &other, Write, 403),
            ("readonly org", &ro_org, &foreign, Read, 404),
            ("readonly app", &ro_app, &web, Read, 200),
            ("readonly app", &ro_app, &web, Write, 403),
            ("readonly app", &ro_app, &other, Read, 404),
        ] {
            assert_eq!(
                status(c.check_app(target, access)),
                want,
                "{who} {access:?} {}/{}",
                target.org.id,
                target.name
            );
        }
        // The 404 of an invisible app says the same as that of a missing one.
        let err = deploy.check_app(&foreign, Read).unwrap_err().to_string();
        assert_eq!(err, app_not_found("shop").to_string());
    }

    #[test]
    fn org_images_and_admin_checks_by_scope() {
        let admin = caller("admin", None, None);
        let org1 = caller("org", Some(1), None);
        let deploy = caller("deploy", Some(1), Some("web"));
        let ro_org = caller("readonly", Some(1), None);
        use Access::{Read, Write};
        for (who, c, org_id, access, want) in [
            ("admin", &admin, 2, Write, 200),
            ("org", &org1, 1, Write, 200),
            ("org", &org1, 2, Read, 404),
            ("deploy", &deploy, 1, Read, 403),
            ("deploy", &deploy, 1, Write, 403),
            ("readonly", &ro_org, 1, Read, 200),
            ("readonly", &ro_org, 1, Write, 403),
        ] {
            assert_eq!(
                status(c.check_org(org_id, access)),
                want,
                "{who} {access:?} org {org_id}"
            );
        }
        for (who, c, access, want) in [
            ("admin", &admin, Write, 200),
            ("org", &org1, Write, 200),
            ("deploy", &deploy, Write, 200),
            ("readonly", &ro_org, Read, 200),
            ("readonly", &ro_org, Write, 403),
        ] {
            assert_eq!(status(c.check_images(access)), want, "{who} {access:?}");
        }
        assert_eq!(status(admin.require_admin()), 200);
        for c in [&org1, &deploy, &ro_org] {
            assert_eq!(status(c.require_admin()), 403, "{c:?}");
        }
    }

    #[test]
    fn who_may_create_and_revoke_which_tokens() {
        let admin = caller("admin", None, None);
        let org1 = caller("org", Some(1), None);
        let deploy = caller("deploy", Some(1), Some("web"));
        let ro_org = caller("readonly", Some(1), None);
        use TokenKind::{Admin, Deploy, Org, ReadOnly};
        for (who, c, kind, org_id, want) in [
            ("admin", &admin, Admin, None, 200),
            ("admin", &admin, Org, Some(2), 200),
            ("admin", &admin, Deploy, Some(2), 200),
            ("org", &org1, Deploy, Some(1), 200),
            ("org", &org1, ReadOnly, Some(1), 200),
            ("org", &org1, Deploy, Some(2), 404),
            ("org", &org1, Org, Some(1), 403),
            ("org", &org1, Admin, None, 403),
            ("deploy", &deploy, Deploy, Some(1), 403),
            ("deploy", &deploy, ReadOnly, Some(1), 403),
            ("readonly", &ro_org, ReadOnly, Some(1), 403),
            ("admin", &admin, Deploy, None, 400),
        ] {
            assert_eq!(
                status(c.check_create_token(kind, org_id)),
                want,
                "{who} creates {kind} in {org_id:?}"
            );
        }
        let t_admin = token("admin", None, None);
        let t_org1 = token("deploy", Some(1), Some("web"));
        let t_org2 = token("org", Some(2), None);
        use Access::{Read, Write};
        for (who, c, t, access, want) in [
            ("admin", &admin, &t_org2, Write, 200),
            ("admin", &admin, &t_admin, Write, 200),
            ("org", &org1, &t_org1, Write, 200),
            ("org", &org1, &t_org2, Write, 404),
            ("org", &org1, &t_admin, Read, 404),
            ("deploy", &deploy, &t_org1, Write, 403),
            ("deploy", &deploy, &t_org1, Read, 403),
            ("readonly", &ro_org, &t_org1, Read, 200),
            ("readonly", &ro_org, &t_org1, Write, 403),
        ] {
            assert_eq!(
                status(c.check_token(t, access)),
                want,
                "{who} {access:?} token {}",
                t.kind
            );
        }
    }
}
