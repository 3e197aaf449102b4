//! Plain data shared by the image store and the machine runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The parts of an OCI image config that decide how a machine's process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `ENV`, as `KEY=VALUE` strings in image order.
    pub env: Vec<String>,
    /// `WORKDIR`; `/` when empty.
    pub working_dir: String,
    /// `USER`: `uid`, `uid:gid`, `name` or `name:group` (names resolved from the rootfs).
    pub user: String,
    /// `STOPSIGNAL`, if set.
    pub stop_signal: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `EXPOSE`d ports, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
}

/// An image ready to run: its config and its unpacked layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// The reference the user gave.
    pub reference: String,
    /// The tag it resolved through, if any (`repo:tag`).
    pub name: Option<String>,
    /// Manifest digest, `sha256:...`.
    pub manifest_digest: String,
    /// Config blob digest, `sha256:...`.
    pub config_digest: String,
    /// The image config.
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest (base) layer first. Each is read-only and
    /// shared by every machine of every image that contains it; whiteouts are in
    /// overlayfs form (0/0 character devices, `trusted.overlay.opaque=y`).
    pub layers: Vec<PathBuf>,
}
