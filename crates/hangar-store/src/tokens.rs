//! API tokens. Only SHA-256 digests are stored; the token itself is shown once, when it
//! is created, and never again.
//!
//! **Invariant:** a revoked token stays in the table with `revoked_at` set and is never
//! un-revoked, so a digest that was revoked once can never authenticate again.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, is_unique_violation, now_rfc3339};

/// A token as stored (its digest stays in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Row id.
    pub id: i64,
    /// `admin`, `org`, `deploy` or `readonly`.
    pub kind: String,
    /// A name for people.
    pub name: String,
    /// The organization it is scoped to (none for admin tokens).
    pub org_id: Option<i64>,
    /// That organization's slug.
    pub org_slug: Option<String>,
    /// The app it is scoped to (deploy tokens, app-scoped read-only tokens).
    pub app: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; none: it never expires.
    pub expires_at: Option<String>,
    /// RFC 3339; set once revoked.
    pub revoked_at: Option<String>,
    /// RFC 3339 of the last request made with it (updated at most once a minute).
    pub last_used_at: Option<String>,
    /// Row id of the token that created it (none for the server's own admin token).
    pub created_by: Option<i64>,
}

/// A token to store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewToken {
    /// SHA-256 of the token, hex.
    pub digest: String,
    /// `admin`, `org`, `deploy` or `readonly`.
    pub kind: String,
    /// A name for people.
    pub name: String,
    /// Organization scope.
    pub org_id: Option<i64>,
    /// App scope.
    pub app: Option<String>,
    /// RFC 3339; none: never expires.
    pub expires_at: Option<String>,
    /// Row id of the creating token.
    pub created_by: Option<i64>,
}

/// The columns of a [`TokenRecord`]; a macro so that queries stay `&'static str`.
macro_rules! token_select {
    () => {
        "SELECT t.id, t.kind, t.name, t.org_id, o.slug AS org_slug, t.app, t.created_at, t.expires_at, t.revoked_at, t.last_used_at, t.created_by FROM tokens t LEFT JOIN orgs o ON o.id = t.org_id"
    };
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        org_id: r.try_get("org_id")?,
        org_slug: r.try_get("org_slug")?,
        app: r.try_get("app")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_used_at: r.try_get("last_used_at")?,
        created_by: r.try_get("created_by")?,
    })
}

impl Store {
    /// Stores an unscoped token digest (the server's own admin token).
    pub async fn insert_token(&self, digest: &str, kind: &str, name: &str) -> Result<()> {
        self.create_token(&NewToken {
            digest: digest.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            ..NewToken::default()
        })
        .await
        .map(drop)
    }

    /// Stores a token digest with its scope and expiry.
    pub async fn create_token(&self, t: &NewToken) -> Result<TokenRecord> {
        let res = sqlx::query(
            "INSERT INTO tokens (digest, kind, name, created_at, org_id, app, expires_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.digest)
        .bind(&t.kind)
        .bind(&t.name)
        .bind(now_rfc3339())
        .bind(t.org_id)
        .bind(&t.app)
        .bind(&t.expires_at)
        .bind(t.created_by)
        .execute(&self.writer)
        .await;
        let id = match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(
                    "a token with this digest already exists: generate a new token".into(),
                ));
            }
            r => r?.last_insert_rowid(),
        };
        self.get_token(id).await
    }

    /// The kind of the token with this digest, if any (revoked or expired ones included).
    pub async fn token_kind(&self, digest: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT kind FROM tokens WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    /// The token with this digest, if any (revoked or expired ones included: the caller
    /// decides, so that it can say why a token is refused).
    pub async fn token_by_digest(&self, digest: &str) -> Result<Option<TokenRecord>> {
        // Every write commits before it returns, and in WAL mode a read sees everything
        // committed before it began: a revocation is seen by the very next request.
        sqlx::query(concat!(token_select!(), " WHERE t.digest = $1"))
            .bind(digest)
            .fetch_optional(&self.reader)
            .await?
            .map(|r| token_from_row(&r))
            .transpose()
    }

    /// A token by row id.
    pub async fn get_token(&self, id: i64) -> Result<TokenRecord> {
        sqlx::query(concat!(token_select!(), " WHERE t.id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .map(|r| token_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("token {id} not found")))
    }

    /// Tokens that are not revoked, oldest first; with `org_id`, only that
    /// organization's (admin tokens belong to none).
    pub async fn list_tokens(&self, org_id: Option<i64>) -> Result<Vec<TokenRecord>> {
        sqlx::query(concat!(
            token_select!(),
            " WHERE t.revoked_at IS NULL AND ($1 IS NULL OR t.org_id = $1) ORDER BY t.id"
        ))
        .bind(org_id)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(token_from_row)
        .collect()
    }

    /// Revokes a token. Refuses to revoke the last admin token that is not revoked, so
    /// the host can always be administered.
    pub async fn revoke_token(&self, id: i64) -> Result<TokenRecord> {
        let mut tx = self.writer.begin().await?;
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT kind, revoked_at FROM tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        match row {
            None => return Err(StoreError::NotFound(format!("token {id} not found"))),
            Some((_, Some(_))) => {
                return Err(StoreError::Conflict(format!(
                    "token {id} is already revoked"
                )));
            }
            Some((kind, None)) if kind == "admin" => {
                let others: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM tokens WHERE kind = 'admin' AND revoked_at IS NULL AND id != $1",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                if others == 0 {
                    return Err(StoreError::Conflict(format!(
                        "token {id} is the last admin token: create another with `hangar tokens create admin` before revoking it"
                    )));
                }
            }
            Some(_) => {}
        }
        sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now_rfc3339())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_token(id).await
    }

    /// Revokes every token scoped to an app (when the app is deleted, so that a new app
    /// of the same name does not inherit them). Returns how many were revoked.
    pub async fn revoke_app_tokens(&self, app: &str) -> Result<u64> {
        let res =
            sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE app = $1 AND revoked_at IS NULL")
                .bind(app)
                .bind(now_rfc3339())
                .execute(&self.writer)
                .await?;
        Ok(res.rows_affected())
    }

    /// Records that a token was used at `when` (RFC 3339).
    pub async fn touch_token(&self, id: i64, when: &str) -> Result<()> {
        sqlx::query("UPDATE tokens SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(when)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hangar.db")).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn scoped_tokens_round_trip_and_list_by_org() {
        let (_dir, store) = store().await;
        let default = store.ensure_org("default").await.unwrap();
        let acme = store.create_org("acme").await.unwrap();
        store
            .insert_token("d-admin", "admin", "file")
            .await
            .unwrap();
        let deploy = store
            .create_token(&NewToken {
                digest: "d-deploy".into(),
                kind: "deploy".into(),
                name: "ci".into(),
                org_id: Some(acme.id),
                app: Some("web".into()),
                expires_at: Some("2030-01-01T00:00:00Z".into()),
                created_by: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(deploy.org_slug.as_deref(), Some("acme"));
        assert_eq!(deploy.app.as_deref(), Some("web"));
        assert_eq!(deploy.expires_at.as_deref(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(deploy.revoked_at, None);
        store
            .create_token(&NewToken {
                digest: "d-org".into(),
                kind: "org".into(),
                name: "ops".into(),
                org_id: Some(default.id),
                ..NewToken::default()
            })
            .await
            .unwrap();
        assert_eq!(
            store.token_by_digest("d-deploy").await.unwrap(),
            Some(deploy.clone())
        );
        assert_eq!(store.token_by_digest("nope").await.unwrap(), None);
        assert_eq!(store.list_tokens(None).await.unwrap().len(), 3);
        let acme_tokens = store.list_tokens(Some(acme.id)).await.unwrap();
        assert_eq!(acme_tokens, vec![deploy.clone()]);
        // A digest is unique.
        assert!(matches!(
            store
                .create_token(&NewToken {
                    digest: "d-org".into(),
                    kind: "org".into(),
                    ..NewToken::default()
                })
                .await,
            Err(StoreError::Conflict(_))
        ));
        store
            .touch_token(deploy.id, "2026-01-01T00:00:00Z")
            .await
            .unwrap();
        assert_eq!(
            store
                .get_token(deploy.id)
                .await
                .unwrap()
                .last_used_at
                .as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    #[tokio::test]
    async fn revocation_is_final_seen_at_once_and_spares_the_last_admin_token() {
        let (_dir, store) = store().await;
        let org = store.ensure_org("default").await.unwrap();
        store.insert_token("a1", "admin", "file").await.unwrap();
        let a1 = store.token_by_digest("a1").await.unwrap().unwrap();
        assert!(matches!(
            store.revoke_token(a1.id).await,
            Err(StoreError::Conflict(m)) if m.contains("last admin token")
        ));
        store.insert_token("a2", "admin", "second").await.unwrap();
        let revoked = store.revoke_token(a1.id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        // The next lookup sees the revocation.
        assert!(
            store
                .token_by_digest("a1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        assert!(matches!(
            store.revoke_token(a1.id).await,
            Err(StoreError::Conflict(m)) if m.contains("already revoked")
        ));
        assert!(matches!(
            store.revoke_token(999).await,
            Err(StoreError::NotFound(_))
        ));
        // Revoked tokens drop out of the list.
        assert!(
            store
                .list_tokens(None)
                .await
                .unwrap()
                .iter()
                .all(|t| t.id != a1.id)
        );

        for (digest, app) in [("w1", "web"), ("w2", "web"), ("o1", "other")] {
            store
                .create_token(&NewToken {
                    digest: digest.into(),
                    kind: "deploy".into(),
                    name: digest.into(),
                    org_id: Some(org.id),
                    app: Some(app.into()),
                    ..NewToken::default()
                })
                .await
                .unwrap();
        }
        assert_eq!(store.revoke_app_tokens("web").await.unwrap(), 2);
        assert_eq!(store.revoke_app_tokens("web").await.unwrap(), 0);
        assert!(
            store
                .token_by_digest("o1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none()
        );
    }
}
