//! Custom hostnames of apps: host names the edge proxy routes to an app besides
//! `<app>.<domain>`. Names are stored as given; the API validates and lower-cases them.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store, StoreError, is_unique_violation, now_rfc3339};

/// A custom hostname of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostnameRecord {
    /// The host name, lower-case, without a trailing dot.
    pub hostname: String,
    /// The app it routes to.
    pub app: String,
    /// RFC 3339.
    pub created_at: String,
}

fn hostname_from_row(r: &SqliteRow) -> Result<HostnameRecord> {
    Ok(HostnameRecord {
        hostname: r.try_get("hostname")?,
        app: r.try_get("app")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    /// Adds `hostname` to `app`. A name held by any app is a [`StoreError::Conflict`]; the
    /// caller looks the owner up with [`Store::hostname_owner`] to say which app holds it.
    pub async fn add_hostname(&self, app: &str, hostname: &str) -> Result<HostnameRecord> {
        let record = HostnameRecord {
            hostname: hostname.to_owned(),
            app: app.to_owned(),
            created_at: now_rfc3339(),
        };
        let res = sqlx::query(
            "INSERT INTO app_hostnames (hostname, app, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&record.hostname)
        .bind(&record.app)
        .bind(&record.created_at)
        .execute(&self.writer)
        .await;
        match res {
            Ok(_) => Ok(record),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "hostname {hostname:?} is already in use by an app"
            ))),
            Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => {
                Err(StoreError::NotFound(format!(
                    "app {app:?} not found: create it with `hangar apps create {app}`"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The record of `hostname`, whichever app holds it.
    pub async fn hostname_owner(&self, hostname: &str) -> Result<Option<HostnameRecord>> {
        let row =
            sqlx::query("SELECT hostname, app, created_at FROM app_hostnames WHERE hostname = $1")
                .bind(hostname)
                .fetch_optional(&self.reader)
                .await?;
        row.as_ref().map(hostname_from_row).transpose()
    }

    /// The custom hostnames of `app`, by name.
    pub async fn list_hostnames(&self, app: &str) -> Result<Vec<HostnameRecord>> {
        sqlx::query(
            "SELECT hostname, app, created_at FROM app_hostnames WHERE app = $1 ORDER BY hostname",
        )
        .bind(app)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(hostname_from_row)
        .collect()
    }

    /// Every app's custom hostnames, by app then name (one query for the routing snapshot).
    pub async fn list_all_hostnames(&self) -> Result<Vec<HostnameRecord>> {
        sqlx::query("SELECT hostname, app, created_at FROM app_hostnames ORDER BY app, hostname")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(hostname_from_row)
            .collect()
    }

    /// Removes `hostname` from `app`; [`StoreError::NotFound`] when the app does not have it.
    pub async fn remove_hostname(&self, app: &str, hostname: &str) -> Result<()> {
        let res = sqlx::query("DELETE FROM app_hostnames WHERE app = $1 AND hostname = $2")
            .bind(app)
            .bind(hostname)
            .execute(&self.writer)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "app {app:?} has no hostname {hostname:?}: list its hostnames with `hangar domains list --app {app}`"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hostnames_are_unique_across_apps_and_go_with_their_app() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        let org = store.ensure_org("default").await.unwrap();
        store.create_app("web", &org).await.unwrap();
        store.create_app("api", &org).await.unwrap();

        store.add_hostname("web", "www.example.com").await.unwrap();
        store.add_hostname("web", "example.com").await.unwrap();
        store.add_hostname("api", "api.example.com").await.unwrap();
        let taken = store.add_hostname("api", "www.example.com").await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
        let owner = store.hostname_owner("www.example.com").await.unwrap();
        assert_eq!(owner.unwrap().app, "web");
        let unknown = store.add_hostname("nope", "x.example.com").await;
        assert!(
            matches!(unknown, Err(StoreError::NotFound(_))),
            "{unknown:?}"
        );

        let names = |v: Vec<HostnameRecord>| v.into_iter().map(|h| h.hostname).collect::<Vec<_>>();
        assert_eq!(
            names(store.list_hostnames("web").await.unwrap()),
            ["example.com", "www.example.com"]
        );
        assert_eq!(
            names(store.list_all_hostnames().await.unwrap()),
            ["api.example.com", "example.com", "www.example.com"]
        );

        let wrong_app = store.remove_hostname("api", "www.example.com").await;
        assert!(
            matches!(wrong_app, Err(StoreError::NotFound(_))),
            "{wrong_app:?}"
        );
        store
            .remove_hostname("web", "www.example.com")
            .await
            .unwrap();
        assert!(
            store
                .hostname_owner("www.example.com")
                .await
                .unwrap()
                .is_none()
        );

        // Deleting an app frees its hostnames for other apps.
        store.delete_app("web").await.unwrap();
        assert!(store.hostname_owner("example.com").await.unwrap().is_none());
        store.add_hostname("api", "example.com").await.unwrap();
    }
}
