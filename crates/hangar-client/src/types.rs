//! Request and response bodies of the API that are not machine types.
//!
//! Machines, their configs and events are `hangar_core::machine` types; the shapes here
//! follow `docs/api.md`. Unknown fields in responses are ignored so that a newer server
//! still works with this client.

use std::fmt;

use hangar_core::machine::{GoDuration, MachineConfig};
use serde::{Deserialize, Serialize};

/// The organization an app belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Slug used in requests.
    #[serde(default)]
    pub slug: String,
}

/// An app (`GET /v1/apps/{app}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Id (the name).
    #[serde(default)]
    pub id: String,
    /// Name.
    pub name: String,
    /// `deployed` or `pending`.
    #[serde(default)]
    pub status: String,
    /// Organization.
    #[serde(default)]
    pub organization: Organization,
    /// Machines of the app.
    #[serde(default)]
    pub machine_count: u64,
    /// Private network.
    #[serde(default)]
    pub network: String,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
}

/// The answer of `GET /v1/apps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppList {
    /// Number of apps.
    #[serde(default)]
    pub total_apps: u64,
    /// The apps.
    #[serde(default)]
    pub apps: Vec<App>,
}

/// The body of `POST /v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateAppRequest {
    /// Name: a DNS label.
    pub app_name: String,
    /// Organization slug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
}

/// An organization (`GET /v1/orgs`): a tenant with its own bridge and address blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    /// Slug used in requests.
    pub slug: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Index of its network (bridge `hgbr<index>`).
    #[serde(default)]
    pub network_index: u32,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
}

/// The body of `POST /v1/apps/{app}/machines` and `POST /v1/apps/{app}/machines/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreateMachineRequest {
    /// The whole config.
    pub config: MachineConfig,
    /// Name, unique in the app; the server picks one when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Region; the host's when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Create without starting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_launch: Option<bool>,
    /// For updates: the instance id the change is based on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
}

/// Which machines `list_machines` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMachinesOptions {
    /// Include destroyed machines.
    pub include_deleted: bool,
    /// Only machines in these states (empty: all).
    pub states: Vec<String>,
}

/// The body of `POST .../stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StopRequest {
    /// Signal name; the machine's `stop_config` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Grace period before SIGKILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

/// What `wait` waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitOptions {
    /// The state to reach (`started` when unset).
    pub state: Option<String>,
    /// Seconds the server waits at most (server default and maximum: 60).
    pub timeout_secs: Option<u64>,
    /// Wait for this version of the machine.
    pub instance_id: Option<String>,
}

/// The answer of `wait`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitResult {
    /// True when the state was reached.
    #[serde(default)]
    pub ok: bool,
    /// The state reached.
    #[serde(default)]
    pub state: String,
}

/// The answer of `start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartResult {
    /// The state before the start.
    #[serde(default)]
    pub previous_state: String,
}

/// The answer of routes that only confirm (`{"ok": true}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkResult {
    /// True on success.
    #[serde(default)]
    pub ok: bool,
}

/// Which log lines `logs` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep the response open and stream new lines.
    pub follow: bool,
    /// Only the last N lines of the history.
    pub tail: Option<u64>,
}

/// One line of a machine's output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 with nanoseconds.
    pub timestamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub message: String,
    /// The machine.
    #[serde(default)]
    pub machine_id: String,
    /// The machine's config version.
    #[serde(default)]
    pub instance_id: String,
}

/// An image in Hangar's image store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Tag (`busybox:latest`), or none for an untagged image.
    #[serde(default)]
    pub name: Option<String>,
    /// Digest of the manifest.
    pub manifest_digest: String,
    /// Digest of the image config.
    #[serde(default)]
    pub config_digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Number of layers.
    #[serde(default)]
    pub layers: u64,
    /// RFC 3339, when the image says.
    #[serde(default)]
    pub created: Option<String>,
}

/// The body of `POST /v1/images/pull`.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// Registry reference.
    pub reference: String,
    /// Registry user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Registry password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Use plain HTTP.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

impl fmt::Debug for PullRequest {
    // The password must not end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullRequest")
            .field("reference", &self.reference)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// The answer of `POST /v1/images/gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs removed.
    #[serde(default)]
    pub removed_blobs: u64,
    /// Unpacked layers removed.
    #[serde(default)]
    pub removed_layers: u64,
    /// Bytes freed.
    #[serde(default)]
    pub freed_bytes: u64,
    /// Deploy image tags (`<app>:deployment-*`) removed because no recent release or
    /// machine uses them.
    #[serde(default)]
    pub untagged: Vec<String>,
}
