//! Custom hostnames of apps: `/v1/apps/{app}/hostnames`.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// A custom hostname the edge proxy routes to an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hostname {
    /// Lower-case DNS name.
    pub hostname: String,
    /// The app it routes to.
    pub app: String,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Deserialize)]
struct HostnameList {
    hostnames: Vec<Hostname>,
}

impl Client {
    /// `GET /v1/apps/{app}/hostnames`.
    pub async fn list_hostnames(&self, app: &str) -> Result<Vec<Hostname>, ClientError> {
        let url = self.url(&["v1", "apps", app, "hostnames"]);
        let list: HostnameList = self.json(self.request(Method::GET, url)).await?;
        Ok(list.hostnames)
    }

    /// `POST /v1/apps/{app}/hostnames`.
    pub async fn add_hostname(&self, app: &str, hostname: &str) -> Result<Hostname, ClientError> {
        let url = self.url(&["v1", "apps", app, "hostnames"]);
        let body = serde_json::json!({ "hostname": hostname });
        self.json(self.request(Method::POST, url).json(&body)).await
    }

    /// `DELETE /v1/apps/{app}/hostnames/{hostname}`.
    pub async fn remove_hostname(&self, app: &str, hostname: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "apps", app, "hostnames", hostname]);
        self.send(self.request(Method::DELETE, url)).await.map(drop)
    }
}
