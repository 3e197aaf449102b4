//! App secrets and the apps' wrapped data keys. The store only ever sees ciphertexts,
//! wrapped keys and keyed digests: encryption is the control plane's (`secrets.rs`).

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, now_rfc3339};

/// An app's data key as stored: wrapped under the master key with id `master_key_id`.
#[derive(Clone, PartialEq, Eq)]
pub struct AppKeyRecord {
    /// App name.
    pub app: String,
    /// The data key encrypted under the master key (nonce and ciphertext).
    pub wrapped_key: Vec<u8>,
    /// Which master key wrapped it.
    pub master_key_id: String,
    /// Bumped by every change to the app's secrets.
    pub secrets_version: i64,
    /// RFC 3339.
    pub created_at: String,
}

impl std::fmt::Debug for AppKeyRecord {
    // The wrapped key is not secret without the master key, but it is noise in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeyRecord")
            .field("app", &self.app)
            .field("master_key_id", &self.master_key_id)
            .field("secrets_version", &self.secrets_version)
            .finish_non_exhaustive()
    }
}

/// A secret as stored: never its value, only its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// App name.
    pub app: String,
    /// The environment variable name.
    pub name: String,
    /// The value encrypted under the app's data key.
    pub ciphertext: Vec<u8>,
    /// The nonce of `ciphertext`.
    pub nonce: Vec<u8>,
    /// A keyed digest of the value, for display.
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// One change of [`Store::change_secrets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretChange {
    /// Sets (creates or replaces) a secret.
    Set {
        /// The name.
        name: String,
        /// The encrypted value.
        ciphertext: Vec<u8>,
        /// Its nonce.
        nonce: Vec<u8>,
        /// Its keyed digest.
        digest: String,
    },
    /// Removes a secret; removing one that does not exist is not an error.
    Unset {
        /// The name.
        name: String,
    },
}

fn key_from_row(r: &SqliteRow) -> Result<AppKeyRecord> {
    Ok(AppKeyRecord {
        app: r.try_get("app")?,
        wrapped_key: r.try_get("wrapped_key")?,
        master_key_id: r.try_get("master_key_id")?,
        secrets_version: r.try_get("secrets_version")?,
        created_at: r.try_get("created_at")?,
    })
}

fn secret_from_row(r: &SqliteRow) -> Result<SecretRecord> {
    Ok(SecretRecord {
        app: r.try_get("app")?,
        name: r.try_get("name")?,
        ciphertext: r.try_get("ciphertext")?,
        nonce: r.try_get("nonce")?,
        digest: r.try_get("digest")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// The app's wrapped data key, if it has one yet.
    pub async fn app_key(&self, app: &str) -> Result<Option<AppKeyRecord>> {
        let row = sqlx::query(
            "SELECT app, wrapped_key, master_key_id, secrets_version, created_at
             FROM app_keys WHERE app = $1",
        )
        .bind(app)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Stores the app's wrapped data key unless it has one already; returns the one stored
    /// (so two racing first writers agree on one key).
    pub async fn insert_app_key(
        &self,
        app: &str,
        wrapped_key: &[u8],
        master_key_id: &str,
    ) -> Result<AppKeyRecord> {
        sqlx::query(
            "INSERT INTO app_keys (app, wrapped_key, master_key_id, secrets_version, created_at)
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (app) DO NOTHING",
        )
        .bind(app)
        .bind(wrapped_key)
        .bind(master_key_id)
        .bind(now_rfc3339())
        .execute(&self.writer)
        .await?;
        let row = sqlx::query(
            "SELECT app, wrapped_key, master_key_id, secrets_version, created_at
             FROM app_keys WHERE app = $1",
        )
        .bind(app)
        .fetch_one(&self.writer)
        .await?;
        key_from_row(&row)
    }

    /// Every app's wrapped data key.
    pub async fn list_app_keys(&self) -> Result<Vec<AppKeyRecord>> {
        let rows = sqlx::query(
            "SELECT app, wrapped_key, master_key_id, secrets_version, created_at
             FROM app_keys ORDER BY app",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// The distinct master key ids that wrap the stored data keys.
    pub async fn master_key_ids(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT master_key_id FROM app_keys ORDER BY 1")
                .fetch_all(&self.reader)
                .await?,
        )
    }

    /// Replaces every app's wrapped data key in one transaction: either all are re-wrapped
    /// under the new master key or none is. `rewrapped` must cover exactly the apps whose
    /// keys are wrapped by `old_master_key_id`; a key added meanwhile fails the whole call.
    pub async fn rewrap_app_keys(
        &self,
        old_master_key_id: &str,
        new_master_key_id: &str,
        rewrapped: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM app_keys WHERE master_key_id != $1")
                .bind(new_master_key_id)
                .fetch_one(&mut *tx)
                .await?;
        if usize::try_from(pending).unwrap_or(usize::MAX) != rewrapped.len() {
            return Err(StoreError::Conflict(format!(
                "{pending} data key(s) to re-wrap but {} given: a key was added during the rotation; run it again",
                rewrapped.len()
            )));
        }
        for (app, wrapped) in rewrapped {
            let res = sqlx::query(
                "UPDATE app_keys SET wrapped_key = $1, master_key_id = $2
                 WHERE app = $3 AND master_key_id = $4",
            )
            .bind(wrapped)
            .bind(new_master_key_id)
            .bind(app)
            .bind(old_master_key_id)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!(
                    "the data key of app {app:?} is not wrapped by master key {old_master_key_id}: run the rotation again"
                )));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The app's secrets, by name.
    pub async fn list_secrets(&self, app: &str) -> Result<Vec<SecretRecord>> {
        let rows = sqlx::query(
            "SELECT app, name, ciphertext, nonce, digest, created_at, updated_at
             FROM secrets WHERE app = $1 ORDER BY name",
        )
        .bind(app)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(secret_from_row).collect()
    }

    /// Applies `changes` to the app's secrets in one transaction and bumps its secrets
    /// version; returns the new version. The app must have a data key.
    pub async fn change_secrets(&self, app: &str, changes: &[SecretChange]) -> Result<i64> {
        let now = now_rfc3339();
        let mut tx = self.writer.begin().await?;
        for change in changes {
            match change {
                SecretChange::Set {
                    name,
                    ciphertext,
                    nonce,
                    digest,
                } => {
                    sqlx::query(
                        "INSERT INTO secrets (app, name, ciphertext, nonce, digest, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $6)
                         ON CONFLICT (app, name) DO UPDATE SET ciphertext = excluded.ciphertext,
                           nonce = excluded.nonce, digest = excluded.digest, updated_at = excluded.updated_at",
                    )
                    .bind(app)
                    .bind(name)
                    .bind(ciphertext)
                    .bind(nonce)
                    .bind(digest)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await?;
                }
                SecretChange::Unset { name } => {
                    sqlx::query("DELETE FROM secrets WHERE app = $1 AND name = $2")
                        .bind(app)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE app_keys SET secrets_version = secrets_version + 1 WHERE app = $1
             RETURNING secrets_version",
        )
        .bind(app)
        .fetch_optional(&mut *tx)
        .await?;
        let version = version
            .ok_or_else(|| StoreError::NotFound(format!("app {app:?} has no data key yet")))?;
        tx.commit().await?;
        Ok(version)
    }

    /// The app's secrets version: 0 before the first change.
    pub async fn secrets_version(&self, app: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT secrets_version FROM app_keys WHERE app = $1")
                .bind(app)
                .fetch_optional(&self.reader)
                .await?
                .unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let org = store.ensure_org("default").await.unwrap();
        store.create_app("web", &org).await.unwrap();
        (dir, store)
    }

    fn set(name: &str, c: u8) -> SecretChange {
        SecretChange::Set {
            name: name.into(),
            ciphertext: vec![c; 20],
            nonce: vec![c; 24],
            digest: format!("d{c}"),
        }
    }

    #[tokio::test]
    async fn secrets_are_set_replaced_and_unset_with_a_version() {
        let (_d, s) = store().await;
        assert!(s.app_key("web").await.unwrap().is_none());
        assert!(s.change_secrets("web", &[set("A", 1)]).await.is_err());
        let k = s.insert_app_key("web", b"wrapped1", "m1").await.unwrap();
        // A second writer gets the first key back.
        let k2 = s.insert_app_key("web", b"wrapped2", "m1").await.unwrap();
        assert_eq!(k.wrapped_key, b"wrapped1");
        assert_eq!(k2.wrapped_key, b"wrapped1");
        assert_eq!(s.secrets_version("web").await.unwrap(), 0);
        assert_eq!(
            s.change_secrets("web", &[set("A", 1), set("B", 2)])
                .await
                .unwrap(),
            1
        );
        let v = s
            .change_secrets(
                "web",
                &[set("A", 3), SecretChange::Unset { name: "B".into() }],
            )
            .await
            .unwrap();
        assert_eq!(v, 2);
        let list = s.list_secrets("web").await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "A");
        assert_eq!(list[0].ciphertext, vec![3; 20]);
        assert_eq!(list[0].digest, "d3");
        assert!(s.list_secrets("other").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rewrapping_is_all_or_nothing() {
        let (_d, s) = store().await;
        let org = s.get_org("default").await.unwrap();
        s.create_app("api", &org).await.unwrap();
        s.insert_app_key("web", b"w-old", "m1").await.unwrap();
        s.insert_app_key("api", b"a-old", "m1").await.unwrap();
        // Missing one app: refused, nothing changed.
        let err = s
            .rewrap_app_keys("m1", "m2", &[("web".into(), b"w-new".to_vec())])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(s.master_key_ids().await.unwrap(), ["m1"]);
        s.rewrap_app_keys(
            "m1",
            "m2",
            &[
                ("web".into(), b"w-new".to_vec()),
                ("api".into(), b"a-new".to_vec()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(s.master_key_ids().await.unwrap(), ["m2"]);
        let keys = s.list_app_keys().await.unwrap();
        assert_eq!(keys[0].wrapped_key, b"a-new");
        assert_eq!(keys[1].wrapped_key, b"w-new");
    }
}
