//! Releases, deploys and deploy progress events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, from_json, is_unique_violation, now_rfc3339, to_json};

/// A release: an image and a config, numbered per app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// App name.
    pub app: String,
    /// 1, 2, ... per app.
    pub version: i64,
    /// The image as named by the deployer.
    pub image: String,
    /// The image's manifest digest: what machines of this release run.
    pub image_digest: String,
    /// The app config as given (the config model as JSON).
    pub config: serde_json::Value,
    /// The resolved per-group machine configs.
    pub resolved: serde_json::Value,
    /// Digest of the app's secrets when the release was made.
    pub secrets_digest: Option<String>,
    /// `rolling`, `immediate`, `canary` or `bluegreen`.
    pub strategy: String,
    /// `running`, `complete`, `failed`, `interrupted` or `rolled_back`.
    pub status: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// Name of the token that made it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A deploy: brings an app's machines to a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Id (a ULID).
    pub id: String,
    /// App name.
    pub app: String,
    /// `deploy`, `rollback`, `scale`, `restart`.
    pub kind: String,
    /// The release machines are brought to.
    pub release: i64,
    /// The release to go back to on failure.
    pub previous: Option<i64>,
    /// Strategy.
    pub strategy: String,
    /// Machines wanted per process group.
    pub counts: BTreeMap<String, u32>,
    /// `running`, `rolling_back`, `complete`, `failed`, `rolled_back`.
    pub status: String,
    /// Where it is: `pending`, `release_command`, `machines`, `rollback`, `done`.
    pub phase: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// Name of the token that started it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl DeployRecord {
    /// Whether the deploy still runs (or rolls back).
    pub fn is_active(&self) -> bool {
        matches!(self.status.as_str(), "running" | "rolling_back")
    }
}

/// One progress line of a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    /// Order across all deploys.
    pub seq: i64,
    /// RFC 3339.
    pub at: String,
    /// `phase`, `machine`, `log`, `error`, `done`.
    pub kind: String,
    /// For people.
    pub message: String,
    /// The machine it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
}

/// What a new release is made of (the version is assigned by the store).
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// Image as named.
    pub image: String,
    /// Image manifest digest.
    pub image_digest: String,
    /// Config model as JSON.
    pub config: serde_json::Value,
    /// Resolved configs as JSON.
    pub resolved: serde_json::Value,
    /// Secrets digest.
    pub secrets_digest: Option<String>,
}

/// What a new deploy is made of.
#[derive(Debug, Clone)]
pub struct NewDeploy {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Strategy.
    pub strategy: String,
    /// Counts per group.
    pub counts: BTreeMap<String, u32>,
    /// Token name.
    pub created_by: String,
}

// Column lists as macros, so that queries stay `&'static str` (sqlx refuses built strings).
macro_rules! release_columns {
    () => {
        "app, version, image, image_digest, config, resolved, secrets_digest, strategy, status, reason, created_by, created_at, updated_at"
    };
}
macro_rules! deploy_columns {
    () => {
        "id, app, kind, release, previous, strategy, counts, status, phase, reason, created_by, created_at, updated_at"
    };
}

fn release_from_row(r: &SqliteRow) -> Result<ReleaseRecord> {
    Ok(ReleaseRecord {
        app: r.try_get("app")?,
        version: r.try_get("version")?,
        image: r.try_get("image")?,
        image_digest: r.try_get("image_digest")?,
        config: from_json(&r.try_get::<String, _>("config")?)?,
        resolved: from_json(&r.try_get::<String, _>("resolved")?)?,
        secrets_digest: r.try_get("secrets_digest")?,
        strategy: r.try_get("strategy")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn deploy_from_row(r: &SqliteRow) -> Result<DeployRecord> {
    Ok(DeployRecord {
        id: r.try_get("id")?,
        app: r.try_get("app")?,
        kind: r.try_get("kind")?,
        release: r.try_get("release")?,
        previous: r.try_get("previous")?,
        strategy: r.try_get("strategy")?,
        counts: from_json(&r.try_get::<String, _>("counts")?)?,
        status: r.try_get("status")?,
        phase: r.try_get("phase")?,
        reason: r.try_get("reason")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn active_conflict(app: &str) -> StoreError {
    StoreError::Conflict(format!(
        "a deploy of app {app:?} is already running: watch it with `hangar status`, or wait for it with `hangar deploy --wait ID`"
    ))
}

impl Store {
    /// Records a deploy and, when `release` is given, a new release (version = last + 1),
    /// in one transaction. `current` is the release the deploy brings machines to when no
    /// new release is made (scale, restart). Fails with a conflict while another deploy of
    /// the app is active.
    pub async fn create_deploy(
        &self,
        app: &str,
        release: Option<NewRelease>,
        current: Option<i64>,
        deploy: NewDeploy,
    ) -> Result<(DeployRecord, Option<ReleaseRecord>)> {
        let mut tx = self.writer.begin().await?;
        let active: Option<String> = sqlx::query_scalar(
            "SELECT id FROM deploys WHERE app = $1 AND status IN ('running', 'rolling_back')",
        )
        .bind(app)
        .fetch_optional(&mut *tx)
        .await?;
        if active.is_some() {
            return Err(active_conflict(app));
        }
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(version) FROM releases WHERE app = $1 AND status = 'complete'",
        )
        .bind(app)
        .fetch_one(&mut *tx)
        .await?;
        let now = now_rfc3339();
        let (version, rel) = match release {
            Some(r) => {
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(version) FROM releases WHERE app = $1")
                        .bind(app)
                        .fetch_one(&mut *tx)
                        .await?;
                let version = last.unwrap_or(0) + 1;
                sqlx::query(concat!(
                    "INSERT INTO releases (",
                    release_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', NULL, $9, $10, $10)"
                ))
                .bind(app)
                .bind(version)
                .bind(&r.image)
                .bind(&r.image_digest)
                .bind(to_json(&r.config)?)
                .bind(to_json(&r.resolved)?)
                .bind(&r.secrets_digest)
                .bind(&deploy.strategy)
                .bind(&deploy.created_by)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
                let rec = ReleaseRecord {
                    app: app.to_owned(),
                    version,
                    image: r.image,
                    image_digest: r.image_digest,
                    config: r.config,
                    resolved: r.resolved,
                    secrets_digest: r.secrets_digest,
                    strategy: deploy.strategy.clone(),
                    status: "running".into(),
                    reason: None,
                    created_by: deploy.created_by.clone(),
                    created_at: now.clone(),
                    updated_at: now.clone(),
                };
                (version, Some(rec))
            }
            None => (
                current.ok_or_else(|| {
                    StoreError::NotFound(format!(
                        "app {app:?} has no release yet: deploy it first with `hangar deploy`"
                    ))
                })?,
                None,
            ),
        };
        let rec = DeployRecord {
            id: deploy.id,
            app: app.to_owned(),
            kind: deploy.kind,
            release: version,
            previous: previous.filter(|p| *p != version),
            strategy: deploy.strategy,
            counts: deploy.counts,
            status: "running".into(),
            phase: "pending".into(),
            reason: None,
            created_by: deploy.created_by,
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query(concat!(
            "INSERT INTO deploys (",
            deploy_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&rec.id)
        .bind(&rec.app)
        .bind(&rec.kind)
        .bind(rec.release)
        .bind(rec.previous)
        .bind(&rec.strategy)
        .bind(to_json(&rec.counts)?)
        .bind(&rec.status)
        .bind(&rec.phase)
        .bind(&rec.reason)
        .bind(&rec.created_by)
        .bind(&rec.created_at)
        .bind(&rec.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                active_conflict(app)
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok((rec, rel))
    }

    /// A release of an app.
    pub async fn get_release(&self, app: &str, version: i64) -> Result<ReleaseRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            release_columns!(),
            " FROM releases WHERE app = $1 AND version = $2"
        ))
        .bind(app)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "app {app:?} has no release v{version}: list them with `hangar releases`"
            ))
        })?;
        release_from_row(&row)
    }

    /// An app's releases, newest first.
    pub async fn list_releases(&self, app: &str, limit: u32) -> Result<Vec<ReleaseRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            release_columns!(),
            " FROM releases WHERE app = $1 ORDER BY version DESC LIMIT $2"
        ))
        .bind(app)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(release_from_row).collect()
    }

    /// The newest complete release of an app: what it runs.
    pub async fn current_release(&self, app: &str) -> Result<Option<ReleaseRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            release_columns!(),
            " FROM releases WHERE app = $1 AND status = 'complete' ORDER BY version DESC LIMIT 1"
        ))
        .bind(app)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(release_from_row).transpose()
    }

    /// Sets a release's status and reason.
    pub async fn set_release_status(
        &self,
        app: &str,
        version: i64,
        status: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE releases SET status = $3, reason = $4, updated_at = $5 WHERE app = $1 AND version = $2",
        )
        .bind(app)
        .bind(version)
        .bind(status)
        .bind(reason)
        .bind(now_rfc3339())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A deploy by id.
    pub async fn get_deploy(&self, id: &str) -> Result<DeployRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            deploy_columns!(),
            " FROM deploys WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deploy {id:?} not found")))?;
        deploy_from_row(&row)
    }

    /// An app's deploys, newest first.
    pub async fn list_deploys(&self, app: &str, limit: u32) -> Result<Vec<DeployRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            deploy_columns!(),
            " FROM deploys WHERE app = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(app)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(deploy_from_row).collect()
    }

    /// Deploys that were running or rolling back (to resume after a restart).
    pub async fn active_deploys(&self) -> Result<Vec<DeployRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            deploy_columns!(),
            " FROM deploys WHERE status IN ('running', 'rolling_back') ORDER BY created_at"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(deploy_from_row).collect()
    }

    /// Moves a deploy on: status, phase and reason.
    pub async fn set_deploy_state(
        &self,
        id: &str,
        status: &str,
        phase: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deploys SET status = $2, phase = $3, reason = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(phase)
        .bind(reason)
        .bind(now_rfc3339())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Appends a progress event to a deploy; returns its sequence number.
    pub async fn add_deploy_event(
        &self,
        deploy_id: &str,
        kind: &str,
        message: &str,
        machine_id: Option<&str>,
    ) -> Result<i64> {
        let r = sqlx::query(
            "INSERT INTO deploy_events (deploy_id, at, kind, message, machine_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(deploy_id)
        .bind(now_rfc3339())
        .bind(kind)
        .bind(message)
        .bind(machine_id)
        .execute(&self.writer)
        .await?;
        Ok(r.last_insert_rowid())
    }

    /// A deploy's events after `after` (a sequence number), oldest first.
    pub async fn deploy_events(&self, deploy_id: &str, after: i64) -> Result<Vec<DeployEvent>> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, message, machine_id FROM deploy_events WHERE deploy_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000",
        )
        .bind(deploy_id)
        .bind(after)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeployEvent {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    message: r.try_get("message")?,
                    machine_id: r.try_get("machine_id")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_deploy(id: &str) -> NewDeploy {
        NewDeploy {
            id: id.into(),
            kind: "deploy".into(),
            strategy: "rolling".into(),
            counts: BTreeMap::from([("app".into(), 2)]),
            created_by: "admin".into(),
        }
    }

    fn new_release() -> NewRelease {
        NewRelease {
            image: "web:v1".into(),
            image_digest: "sha256:00".into(),
            config: serde_json::json!({"app": "web"}),
            resolved: serde_json::json!({}),
            secrets_digest: None,
        }
    }

    #[tokio::test]
    async fn releases_are_numbered_and_one_deploy_runs_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).await.unwrap();
        let (d1, r1) = store
            .create_deploy("web", Some(new_release()), None, new_deploy("d1"))
            .await
            .unwrap();
        assert_eq!(r1.unwrap().version, 1);
        assert_eq!(d1.previous, None);
        let err = store
            .create_deploy("web", Some(new_release()), None, new_deploy("d2"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        // The refused deploy made no release.
        assert_eq!(store.list_releases("web", 10).await.unwrap().len(), 1);

        store
            .set_release_status("web", 1, "complete", None)
            .await
            .unwrap();
        store
            .set_deploy_state("d1", "complete", "done", None)
            .await
            .unwrap();
        let (d2, r2) = store
            .create_deploy("web", Some(new_release()), None, new_deploy("d2"))
            .await
            .unwrap();
        assert_eq!(r2.unwrap().version, 2);
        assert_eq!(d2.previous, Some(1));
        assert_eq!(store.active_deploys().await.unwrap(), vec![d2.clone()]);
        assert_eq!(
            store.current_release("web").await.unwrap().unwrap().version,
            1
        );

        let s1 = store
            .add_deploy_event("d2", "phase", "starting", None)
            .await
            .unwrap();
        store
            .add_deploy_event("d2", "machine", "m1 started", Some("m1"))
            .await
            .unwrap();
        let all = store.deploy_events("d2", 0).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(store.deploy_events("d2", s1).await.unwrap().len(), 1);

        // Scale: no new release, the current one.
        store
            .set_deploy_state("d2", "failed", "done", Some("boom"))
            .await
            .unwrap();
        let (d3, r3) = store
            .create_deploy("web", None, Some(1), new_deploy("d3"))
            .await
            .unwrap();
        assert!(r3.is_none());
        assert_eq!(d3.release, 1);
        assert_eq!(d3.previous, None);
        let none = store
            .create_deploy("other", None, None, new_deploy("d4"))
            .await;
        assert!(matches!(none, Err(StoreError::NotFound(_))));
    }
}
