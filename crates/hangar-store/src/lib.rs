//! The Store: Hangar's durable state in SQLite.
//!
//! **Invariant:** this is the only crate that speaks SQL. Every method commits before it
//! returns, so a caller that answers an API request after a store call never acknowledges
//! a change that a crash could lose.
//!
//! SQLite runs in WAL mode with one writer connection (writes are serialised by the pool
//! instead of failing with `SQLITE_BUSY`) and a small pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use hangar_core::machine::{ImageRef, MachineConfig, MachineEvent, MachineState};
use hangar_core::{InstanceId, MachineId};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

mod releases;
pub use releases::{DeployEvent, DeployRecord, NewDeploy, NewRelease, ReleaseRecord};
mod hostnames;
pub use hostnames::HostnameRecord;
mod secrets;
pub use secrets::{AppKeyRecord, SecretChange, SecretRecord};
mod tokens;
pub use tokens::{NewToken, TokenRecord};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (name taken).
    #[error("{0}")]
    Conflict(String),
    /// The row does not exist.
    #[error("{0}")]
    NotFound(String),
    /// SQLite failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored JSON column does not parse.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    /// Row id.
    pub id: i64,
    /// Slug (`default`, ...).
    pub slug: String,
    /// Picks the organization's bridge and address blocks (1..=254).
    pub net_index: u32,
    /// RFC 3339.
    pub created_at: String,
}

/// An app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Name.
    pub name: String,
    /// Its organization.
    pub org: Org,
    /// RFC 3339.
    pub created_at: String,
}

/// A machine as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRecord {
    /// Id.
    pub id: MachineId,
    /// App name.
    pub app: String,
    /// Name, unique among the app's live machines.
    pub name: String,
    /// State.
    pub state: MachineState,
    /// Config version.
    pub instance_id: InstanceId,
    /// Config.
    pub config: MachineConfig,
    /// Resolved image.
    pub image_ref: Option<ImageRef>,
    /// Private IPv4 address.
    pub ipv4: Option<String>,
    /// Private IPv6 address.
    pub ipv6: Option<String>,
    /// Organization row id.
    pub org_id: i64,
    /// Restarts by the restart policy since the last start by a user.
    pub restart_count: u32,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// The current time as RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    reader: SqlitePool,
    writer: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Store { reader, writer })
    }

    // ----- organizations -----

    /// Creates an organization with the lowest free network index.
    pub async fn create_org(&self, slug: &str) -> Result<Org> {
        let mut tx = self.writer.begin().await?;
        let used: Vec<i64> = sqlx::query_scalar("SELECT net_index FROM orgs ORDER BY net_index")
            .fetch_all(&mut *tx)
            .await?;
        let index = (1..=254i64).find(|i| !used.contains(i)).ok_or_else(|| {
            StoreError::Conflict("no free organization network (254 in use on this host)".into())
        })?;
        let now = now_rfc3339();
        let res = sqlx::query("INSERT INTO orgs (slug, net_index, created_at) VALUES ($1, $2, $3)")
            .bind(slug)
            .bind(index)
            .bind(&now)
            .execute(&mut *tx)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "organization {slug:?} already exists"
                )));
            }
            r => r?,
        };
        tx.commit().await?;
        self.get_org(slug).await
    }

    /// The organization `slug`, created if missing.
    pub async fn ensure_org(&self, slug: &str) -> Result<Org> {
        match self.get_org(slug).await {
            Ok(o) => Ok(o),
            Err(StoreError::NotFound(_)) => match self.create_org(slug).await {
                Err(StoreError::Conflict(_)) => self.get_org(slug).await,
                r => r,
            },
            Err(e) => Err(e),
        }
    }

    /// An organization by slug.
    pub async fn get_org(&self, slug: &str) -> Result<Org> {
        sqlx::query("SELECT id, slug, net_index, created_at FROM orgs WHERE slug = $1")
            .bind(slug)
            .fetch_optional(&self.reader)
            .await?
            .map(|r| org_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("organization {slug:?} not found")))
    }

    /// An organization by row id.
    pub async fn get_org_by_id(&self, id: i64) -> Result<Org> {
        sqlx::query("SELECT id, slug, net_index, created_at FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .map(|r| org_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("organization #{id} not found")))
    }

    /// All organizations.
    pub async fn list_orgs(&self) -> Result<Vec<Org>> {
        sqlx::query("SELECT id, slug, net_index, created_at FROM orgs ORDER BY id")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(org_from_row)
            .collect()
    }

    // ----- apps -----

    /// Creates an app in an existing organization.
    pub async fn create_app(&self, name: &str, org: &Org) -> Result<AppRecord> {
        let now = now_rfc3339();
        let res = sqlx::query("INSERT INTO apps (name, org_id, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(org.id)
            .bind(&now)
            .execute(&self.writer)
            .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "app {name:?} already exists: pick another name"
            ))),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(AppRecord {
                name: name.to_owned(),
                org: org.clone(),
                created_at: now,
            }),
        }
    }

    /// An app by name.
    pub async fn get_app(&self, name: &str) -> Result<AppRecord> {
        let row = sqlx::query(
            "SELECT a.name, a.created_at, o.id, o.slug, o.net_index, o.created_at AS org_created_at
             FROM apps a JOIN orgs o ON o.id = a.org_id WHERE a.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.reader)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "app {name:?} not found: create it with `hangar apps create {name}`"
            ))
        })?;
        app_from_row(&row)
    }

    /// Apps, optionally of one organization.
    pub async fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>> {
        let rows = sqlx::query(
            "SELECT a.name, a.created_at, o.id, o.slug, o.net_index, o.created_at AS org_created_at
             FROM apps a JOIN orgs o ON o.id = a.org_id WHERE ($1 IS NULL OR o.slug = $1) ORDER BY a.name",
        )
        .bind(org_slug)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(app_from_row).collect()
    }

    /// Deletes an app and the records of its destroyed machines. Fails if live machines remain.
    pub async fn delete_app(&self, name: &str) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM machines WHERE app = $1 AND state != 'destroyed'",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if live > 0 {
            return Err(StoreError::Conflict(format!(
                "app {name:?} still has {live} machine(s)"
            )));
        }
        sqlx::query("DELETE FROM machine_events WHERE machine_id IN (SELECT id FROM machines WHERE app = $1)")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM machines WHERE app = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        for sql in [
            "DELETE FROM deploy_events WHERE deploy_id IN (SELECT id FROM deploys WHERE app = $1)",
            "DELETE FROM deploys WHERE app = $1",
            "DELETE FROM releases WHERE app = $1",
            "DELETE FROM secrets WHERE app = $1",
            "DELETE FROM app_keys WHERE app = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        }
        let res = sqlx::query("DELETE FROM apps WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("app {name:?} not found")));
        }
        tx.commit().await?;
        Ok(())
    }

    // ----- machines -----

    /// Inserts a new machine.
    pub async fn insert_machine(&self, m: &MachineRecord) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO machines (id, app, name, state, instance_id, config, image_ref, ipv4, ipv6, org_id, restart_count, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(m.id.as_str())
        .bind(&m.app)
        .bind(&m.name)
        .bind(m.state.as_str())
        .bind(&m.instance_id.0)
        .bind(to_json(&m.config)?)
        .bind(m.image_ref.as_ref().map(to_json).transpose()?)
        .bind(&m.ipv4)
        .bind(&m.ipv6)
        .bind(m.org_id)
        .bind(i64::from(m.restart_count))
        .bind(&m.created_at)
        .bind(&m.updated_at)
        .execute(&self.writer)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "a machine named {:?} (or with the same address) already exists in app {:?}",
                m.name, m.app
            ))),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    /// Replaces every mutable field of a machine (state, config, instance, image, restart count).
    pub async fn update_machine(&self, m: &MachineRecord) -> Result<()> {
        let res = sqlx::query(
            "UPDATE machines SET state = $2, instance_id = $3, config = $4, image_ref = $5, restart_count = $6, updated_at = $7 WHERE id = $1",
        )
        .bind(m.id.as_str())
        .bind(m.state.as_str())
        .bind(&m.instance_id.0)
        .bind(to_json(&m.config)?)
        .bind(m.image_ref.as_ref().map(to_json).transpose()?)
        .bind(i64::from(m.restart_count))
        .bind(&m.updated_at)
        .execute(&self.writer)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("machine {} not found", m.id)));
        }
        Ok(())
    }

    /// A machine by id (destroyed ones included).
    pub async fn get_machine(&self, id: &MachineId) -> Result<MachineRecord> {
        sqlx::query(MACHINE_SELECT_BY_ID)
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?
            .map(|r| machine_from_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("machine {id} not found")))
    }

    /// The machines of an app, oldest first.
    pub async fn list_machines(
        &self,
        app: &str,
        include_destroyed: bool,
    ) -> Result<Vec<MachineRecord>> {
        sqlx::query(MACHINE_SELECT_BY_APP)
            .bind(app)
            .bind(include_destroyed)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(machine_from_row)
            .collect()
    }

    /// Every machine that is not destroyed, on any app.
    pub async fn list_live_machines(&self) -> Result<Vec<MachineRecord>> {
        sqlx::query(MACHINE_SELECT_LIVE)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(machine_from_row)
            .collect()
    }

    /// Addresses held by the live machines of an organization.
    pub async fn org_addresses(
        &self,
        org_id: i64,
    ) -> Result<Vec<(Option<String>, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT ipv4, ipv6 FROM machines WHERE org_id = $1 AND state != 'destroyed'",
        )
        .bind(org_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("ipv4")?, r.try_get("ipv6")?)))
            .collect()
    }

    // ----- events -----

    /// Appends an event to a machine's history.
    pub async fn add_event(&self, machine: &MachineId, e: &MachineEvent) -> Result<()> {
        sqlx::query(
            "INSERT INTO machine_events (id, machine_id, kind, status, source, timestamp, request) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.id)
        .bind(machine.as_str())
        .bind(&e.kind)
        .bind(&e.status)
        .bind(&e.source)
        .bind(e.timestamp)
        .bind(e.request.as_ref().map(to_json).transpose()?)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A machine's events, newest first.
    pub async fn list_events(&self, machine: &MachineId, limit: u32) -> Result<Vec<MachineEvent>> {
        let rows = sqlx::query(
            "SELECT id, kind, status, source, timestamp, request FROM machine_events WHERE machine_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(machine.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let request: Option<String> = r.try_get("request")?;
                Ok(MachineEvent {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    source: r.try_get("source")?,
                    timestamp: r.try_get("timestamp")?,
                    request: request.map(|s| from_json(&s)).transpose()?,
                })
            })
            .collect()
    }

    /// Closes the pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

const MACHINE_SELECT_BY_ID: &str = "SELECT id, app, name, state, instance_id, config, image_ref, ipv4, ipv6, org_id, restart_count, created_at, updated_at FROM machines WHERE id = $1";
const MACHINE_SELECT_BY_APP: &str = "SELECT id, app, name, state, instance_id, config, image_ref, ipv4, ipv6, org_id, restart_count, created_at, updated_at FROM machines WHERE app = $1 AND ($2 OR state != 'destroyed') ORDER BY created_at, id";
const MACHINE_SELECT_LIVE: &str = "SELECT id, app, name, state, instance_id, config, image_ref, ipv4, ipv6, org_id, restart_count, created_at, updated_at FROM machines WHERE state != 'destroyed' ORDER BY created_at, id";

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn org_from_row(r: &SqliteRow) -> Result<Org> {
    let net_index: i64 = r.try_get("net_index")?;
    Ok(Org {
        id: r.try_get("id")?,
        slug: r.try_get("slug")?,
        net_index: u32::try_from(net_index).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: r.try_get("created_at")?,
    })
}

fn app_from_row(r: &SqliteRow) -> Result<AppRecord> {
    let net_index: i64 = r.try_get("net_index")?;
    Ok(AppRecord {
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        org: Org {
            id: r.try_get("id")?,
            slug: r.try_get("slug")?,
            net_index: u32::try_from(net_index).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            created_at: r.try_get("org_created_at")?,
        },
    })
}

fn machine_from_row(r: &SqliteRow) -> Result<MachineRecord> {
    let id: String = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    let config: String = r.try_get("config")?;
    let image_ref: Option<String> = r.try_get("image_ref")?;
    let restart_count: i64 = r.try_get("restart_count")?;
    Ok(MachineRecord {
        id: MachineId::from_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        app: r.try_get("app")?,
        name: r.try_get("name")?,
        state: MachineState::from_str(&state).map_err(StoreError::Corrupt)?,
        instance_id: InstanceId(r.try_get("instance_id")?),
        config: from_json(&config)?,
        image_ref: image_ref.map(|s| from_json(&s)).transpose()?,
        ipv4: r.try_get("ipv4")?,
        ipv6: r.try_get("ipv6")?,
        org_id: r.try_get("org_id")?,
        restart_count: u32::try_from(restart_count).unwrap_or(0),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(app: &str, org: &Org, name: &str, ipv4: &str) -> MachineRecord {
        let now = now_rfc3339();
        MachineRecord {
            id: MachineId::generate(),
            app: app.into(),
            name: name.into(),
            state: MachineState::Created,
            instance_id: InstanceId::generate(1),
            config: MachineConfig {
                image: "busybox".into(),
                ..Default::default()
            },
            image_ref: None,
            ipv4: Some(ipv4.into()),
            ipv6: Some(format!("fdaa::{}", name.len())),
            org_id: org.id,
            restart_count: 0,
            created_at: now.clone(),
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn apps_machines_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hangar.db")).await.unwrap();
        let org = store.ensure_org("default").await.unwrap();
        assert_eq!(org.net_index, 1);
        assert_eq!(store.ensure_org("default").await.unwrap(), org);
        let other = store.create_org("acme").await.unwrap();
        assert_eq!(other.net_index, 2);

        store.create_app("web", &org).await.unwrap();
        assert!(matches!(
            store.create_app("web", &org).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.get_app("nope").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.list_apps(Some("acme")).await.unwrap().len(), 0);

        let mut m = machine("web", &org, "m1", "172.29.1.2");
        store.insert_machine(&m).await.unwrap();
        let dup = machine("web", &org, "m1", "172.29.1.3");
        assert!(matches!(
            store.insert_machine(&dup).await,
            Err(StoreError::Conflict(_))
        ));

        m.state = MachineState::Started;
        m.restart_count = 2;
        store.update_machine(&m).await.unwrap();
        assert_eq!(store.get_machine(&m.id).await.unwrap(), m);
        assert_eq!(store.org_addresses(org.id).await.unwrap().len(), 1);

        let ev = MachineEvent {
            id: "e1".into(),
            kind: "exit".into(),
            status: "stopped".into(),
            source: "hangar".into(),
            timestamp: 5,
            request: Some(serde_json::json!({"exit_event": {"exit_code": 1}})),
        };
        store.add_event(&m.id, &ev).await.unwrap();
        assert_eq!(store.list_events(&m.id, 10).await.unwrap(), vec![ev]);

        assert!(matches!(
            store.delete_app("web").await,
            Err(StoreError::Conflict(_))
        ));
        m.state = MachineState::Destroyed;
        store.update_machine(&m).await.unwrap();
        assert!(store.list_machines("web", false).await.unwrap().is_empty());
        assert_eq!(store.list_machines("web", true).await.unwrap().len(), 1);
        // A destroyed machine's name and address can be reused.
        store
            .insert_machine(&machine("web", &org, "m1", "172.29.1.2"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hangar.db");
        {
            let store = Store::open(&path).await.unwrap();
            let org = store.ensure_org("default").await.unwrap();
            store.create_app("a", &org).await.unwrap();
            store.insert_token("d1", "admin", "first").await.unwrap();
            store.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.get_app("a").await.unwrap().org.slug, "default");
        assert_eq!(
            store.token_kind("d1").await.unwrap().as_deref(),
            Some("admin")
        );
        assert_eq!(store.token_kind("d2").await.unwrap(), None);
    }
}
