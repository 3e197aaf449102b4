//! App secrets: `/v1/apps/{app}/secrets` and `/v1/secrets/rotate-master-key`.
//!
//! Values go to the server and never come back: responses carry names, digests and dates.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// A secret as the server shows it (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The environment variable name.
    pub name: String,
    /// A keyed digest of the value: changes when the value does.
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// `GET /v1/apps/{app}/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    /// The secrets, by name.
    pub secrets: Vec<SecretInfo>,
    /// The app's secrets version (bumped by every change).
    pub version: i64,
}

/// The answer to a change of secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsChanged {
    /// The secrets after the change (absent for a single unset).
    #[serde(default)]
    pub secrets: Vec<SecretInfo>,
    /// The new secrets version.
    pub version: i64,
    /// Whether the change was only stored (machines get it at their next start).
    #[serde(default)]
    pub staged: bool,
    /// The deploy that restarts the app's machines, when one was started.
    #[serde(default)]
    pub deploy_id: Option<String>,
}

/// `POST /v1/secrets/rotate-master-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterKeyRotation {
    /// The id of the replaced key.
    pub old_master_key_id: String,
    /// The id of the new key.
    pub master_key_id: String,
    /// How many apps' data keys were re-wrapped.
    pub apps: usize,
}

/// The body of `POST /v1/apps/{app}/secrets` (deliberately without `Debug`).
#[derive(Serialize)]
struct UpdateBody<'a> {
    values: BTreeMap<&'a str, Option<&'a str>>,
    stage: bool,
}

impl Client {
    /// `GET /v1/apps/{app}/secrets`.
    pub async fn list_secrets(&self, app: &str) -> Result<SecretList, ClientError> {
        let url = self.url(&["v1", "apps", app, "secrets"]);
        self.json(self.request(Method::GET, url)).await
    }

    /// `POST /v1/apps/{app}/secrets`: sets (`Some`) and unsets (`None`) secrets in one
    /// change; `stage` stores them without restarting the app's machines.
    pub async fn update_secrets(
        &self,
        app: &str,
        values: &BTreeMap<String, Option<String>>,
        stage: bool,
    ) -> Result<SecretsChanged, ClientError> {
        let body = UpdateBody {
            values: values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect(),
            stage,
        };
        let url = self.url(&["v1", "apps", app, "secrets"]);
        self.json(self.request(Method::POST, url).json(&body)).await
    }

    /// `POST /v1/secrets/rotate-master-key` (admin token).
    pub async fn rotate_master_key(&self) -> Result<MasterKeyRotation, ClientError> {
        let url = self.url(&["v1", "secrets", "rotate-master-key"]);
        self.json(self.request(Method::POST, url)).await
    }
}
