//! Deploys, releases, rollback, scaling and app status.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError, NdjsonStream};

/// A release of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// App name.
    pub app: String,
    /// Version.
    pub version: i64,
    /// Image as named.
    pub image: String,
    /// Image manifest digest.
    pub image_digest: String,
    /// App config as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Strategy.
    pub strategy: String,
    /// `running`, `complete`, `failed`, ...
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who made it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    /// Id.
    pub id: String,
    /// App.
    pub app: String,
    /// `deploy`, `rollback`, `scale`, `secrets`.
    pub kind: String,
    /// Target release.
    pub release: i64,
    /// Release to go back to on failure.
    #[serde(default)]
    pub previous: Option<i64>,
    /// Strategy.
    pub strategy: String,
    /// Machines per process group.
    pub counts: BTreeMap<String, u32>,
    /// `running`, `rolling_back`, `complete`, `failed`.
    pub status: String,
    /// Phase.
    pub phase: String,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl Deploy {
    /// Whether it still runs.
    pub fn is_active(&self) -> bool {
        matches!(self.status.as_str(), "running" | "rolling_back")
    }
}

/// One progress event of a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    /// Sequence number (pass as `after` to resume).
    pub seq: i64,
    /// RFC 3339.
    pub at: String,
    /// `phase`, `machine`, `log`, `error`, `done`.
    pub kind: String,
    /// For people.
    pub message: String,
    /// The machine it is about.
    #[serde(default)]
    pub machine_id: Option<String>,
}

/// What `POST /v1/apps/{app}/deploys` takes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeployRequest {
    /// Image reference on the server.
    pub image: String,
    /// The app config model as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Strategy override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Machines per new process group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// What `POST /v1/apps/{app}/scale` takes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleRequest {
    /// Machines per group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Only this group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_group: Option<String>,
    /// VM preset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Memory in MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

/// A machine in an app's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusMachine {
    /// Id.
    pub id: String,
    /// Process group.
    pub process_group: String,
    /// State.
    pub state: String,
    /// Release.
    #[serde(default)]
    pub release: Option<i64>,
    /// Checks passing/total.
    pub checks: String,
    /// Private IPv6.
    pub private_ip: String,
    /// RFC 3339.
    pub created_at: String,
}

/// An app's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// App.
    pub app: String,
    /// Organization.
    pub org: String,
    /// Host name on the edge proxy.
    pub hostname: String,
    /// URL on the edge proxy.
    pub url: String,
    /// Current release.
    #[serde(default)]
    pub release: Option<Release>,
    /// Active deploy.
    #[serde(default)]
    pub deploy: Option<Deploy>,
    /// Machines.
    pub machines: Vec<StatusMachine>,
}

impl Client {
    /// `POST /v1/apps/{app}/deploys`: starts a deploy and returns at once.
    pub async fn create_deploy(
        &self,
        app: &str,
        req: &DeployRequest,
    ) -> Result<Deploy, ClientError> {
        let url = self.url(&["v1", "apps", app, "deploys"]);
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// `GET /v1/apps/{app}/deploys/{id}`.
    pub async fn get_deploy(&self, app: &str, id: &str) -> Result<Deploy, ClientError> {
        let url = self.url(&["v1", "apps", app, "deploys", id]);
        self.json(self.request(Method::GET, url)).await
    }

    /// `GET /v1/apps/{app}/deploys`.
    pub async fn list_deploys(&self, app: &str) -> Result<Vec<Deploy>, ClientError> {
        let url = self.url(&["v1", "apps", app, "deploys"]);
        self.json(self.request(Method::GET, url)).await
    }

    /// `GET /v1/apps/{app}/deploys/{id}/events?follow=true`: progress until the deploy ends.
    pub async fn follow_deploy(
        &self,
        app: &str,
        id: &str,
        after: i64,
    ) -> Result<NdjsonStream<DeployEvent>, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "deploys", id, "events"]);
        url.query_pairs_mut()
            .append_pair("follow", "true")
            .append_pair("after", &after.to_string());
        let response = self.send(self.request(Method::GET, url)).await?;
        Ok(NdjsonStream::new(response, self.base_url().to_owned()))
    }

    /// `GET /v1/apps/{app}/releases`.
    pub async fn list_releases(&self, app: &str) -> Result<Vec<Release>, ClientError> {
        let url = self.url(&["v1", "apps", app, "releases"]);
        self.json(self.request(Method::GET, url)).await
    }

    /// `POST /v1/apps/{app}/rollback`.
    pub async fn rollback(&self, app: &str, version: Option<i64>) -> Result<Deploy, ClientError> {
        let url = self.url(&["v1", "apps", app, "rollback"]);
        let body = serde_json::json!({ "version": version });
        self.json(self.request(Method::POST, url).json(&body)).await
    }

    /// `POST /v1/apps/{app}/scale`.
    pub async fn scale(&self, app: &str, req: &ScaleRequest) -> Result<Deploy, ClientError> {
        let url = self.url(&["v1", "apps", app, "scale"]);
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// `GET /v1/apps/{app}/status`.
    pub async fn app_status(&self, app: &str) -> Result<AppStatus, ClientError> {
        let url = self.url(&["v1", "apps", app, "status"]);
        self.json(self.request(Method::GET, url)).await
    }
}
