//! The built-in registry's [`Authorizer`]: Hangar tokens decide who may pull and push
//! which repository. The first path component of a repository is the app; pulling needs
//! read access to it, pushing and deleting write access, exactly as the API's app routes.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use hangar_registry::names::app_of;
use hangar_registry::{Action, Authorizer, Denied};
use hangar_store::{AppRecord, StoreError};

use crate::auth::{Access, Caller, Scope};
use crate::error::ApiError;
use crate::supervisor::Control;

/// Authorizes registry requests with the control plane's tokens.
#[derive(Clone)]
pub struct ControlAuthorizer {
    control: Arc<Control>,
}

impl ControlAuthorizer {
    /// An authorizer backed by `control`'s token store.
    pub fn new(control: Arc<Control>) -> ControlAuthorizer {
        ControlAuthorizer { control }
    }
}

impl std::fmt::Debug for ControlAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlAuthorizer")
    }
}

fn denied(e: ApiError) -> Denied {
    match e {
        ApiError::Unauthorized(m) => Denied::Unauthorized(m),
        ApiError::Forbidden(m) => Denied::Forbidden(m),
        ApiError::NotFound(m) => Denied::NotFound(m),
        other => Denied::Internal(other.to_string()),
    }
}

impl Authorizer for ControlAuthorizer {
    fn authorize(
        &self,
        token: Option<String>,
        repo: Option<&str>,
        action: Action,
    ) -> BoxFuture<'static, Result<(), Denied>> {
        let control = self.control.clone();
        let repo = repo.map(str::to_owned);
        Box::pin(async move {
            let token = token.ok_or_else(|| {
                Denied::Unauthorized(
                    "missing credentials: log in with any user name and a Hangar token as the password (`skopeo login`, `docker login`), or send `Authorization: Bearer <token>`".into(),
                )
            })?;
            let caller = control.authenticate(&token).await.map_err(denied)?;
            // `GET /v2/` and the catalog only prove the token; the catalog then asks per
            // repository.
            let Some(repo) = repo else {
                return Ok(());
            };
            let app_name = app_of(&repo);
            let app = match control.store.get_app(app_name).await {
                Ok(app) => Some(app),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(Denied::Internal(e.to_string())),
            };
            decide(&caller, &repo, app.as_ref(), action)
        })
    }
}

/// The decision for a caller, once the repository's app is looked up (`None`: no such
/// app). Pull needs [`Access::Read`], push and delete [`Access::Write`]. A deploy token
/// reaching for another app of its own organization gets 403 (the organization's apps
/// are no secret to it); apps of other organizations stay 404, as in the API.
pub fn decide(
    caller: &Caller,
    repo: &str,
    app: Option<&AppRecord>,
    action: Action,
) -> Result<(), Denied> {
    let access = match action {
        Action::Pull | Action::Catalog => Access::Read,
        Action::Push | Action::Delete => Access::Write,
    };
    let app_name = app_of(repo);
    let Some(app) = app else {
        return Err(Denied::NotFound(format!(
            "repository {repo}: app {app_name} does not exist; create it with `hangar apps create {app_name}` (a repository's first path component is its app)"
        )));
    };
    match caller.check_app(app, access) {
        Ok(()) => Ok(()),
        Err(ApiError::NotFound(m)) => match &caller.scope {
            Scope::App { app: own, org_id } if *org_id == app.org.id => {
                Err(Denied::Forbidden(format!(
                    "this is a deploy token of app {own}: it can only push to and pull from repositories {own} and {own}/..., not {repo}"
                )))
            }
            _ => Err(Denied::NotFound(m)),
        },
        Err(e) => Err(denied(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_store::Org;

    fn app(name: &str, org_id: i64) -> AppRecord {
        AppRecord {
            name: name.into(),
            org: Org {
                id: org_id,
                slug: format!("org{org_id}"),
                net_index: org_id as u32,
                created_at: "2026-01-01T00:00:00Z".into(),
            },
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn caller(scope: Scope, read_only: bool) -> Caller {
        Caller {
            token_id: 1,
            scope,
            read_only,
            name: "test".into(),
        }
    }

    fn deploy(app: &str, org_id: i64) -> Caller {
        caller(
            Scope::App {
                app: app.into(),
                org_id,
            },
            false,
        )
    }

    /// One row: caller, repository, its app (name, org) if it exists, action, expected.
    fn check(c: &Caller, repo: &str, app_org: Option<i64>, action: Action, expected: &str) {
        let record = app_org.map(|org| app(app_of(repo), org));
        let got = match decide(c, repo, record.as_ref(), action) {
            Ok(()) => "ok",
            Err(Denied::Unauthorized(_)) => "401",
            Err(Denied::Forbidden(_)) => "403",
            Err(Denied::NotFound(_)) => "404",
            Err(Denied::Internal(_)) => "500",
        };
        assert_eq!(got, expected, "{c:?} {action:?} {repo}");
    }

    #[test]
    fn deploy_tokens_push_only_to_their_app() {
        let a = deploy("a", 1);
        check(&a, "a", Some(1), Action::Push, "ok");
        check(&a, "a/web/api", Some(1), Action::Push, "ok");
        check(&a, "a", Some(1), Action::Pull, "ok");
        check(&a, "a", Some(1), Action::Delete, "ok");
        check(&a, "b", Some(1), Action::Push, "403");
        check(&a, "b/x", Some(1), Action::Pull, "403");
        // Another organization's app is not revealed.
        check(&a, "c", Some(2), Action::Push, "404");
        // The same name recreated in another organization is not the token's app.
        check(&a, "a", Some(2), Action::Push, "404");
        check(&a, "ghost", None, Action::Push, "404");
    }

    #[test]
    fn admin_org_and_read_only_tokens() {
        let admin = caller(Scope::Admin, false);
        check(&admin, "a", Some(1), Action::Push, "ok");
        check(&admin, "z/y", Some(7), Action::Delete, "ok");
        check(&admin, "ghost", None, Action::Pull, "404");

        let org = caller(Scope::Org(1), false);
        check(&org, "a", Some(1), Action::Push, "ok");
        check(&org, "b", Some(2), Action::Pull, "404");

        let ro = caller(Scope::Org(1), true);
        check(&ro, "a", Some(1), Action::Pull, "ok");
        check(&ro, "a", Some(1), Action::Catalog, "ok");
        check(&ro, "a", Some(1), Action::Push, "403");
        check(&ro, "a", Some(1), Action::Delete, "403");
    }
}
