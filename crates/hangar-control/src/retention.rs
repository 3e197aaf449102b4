//! Image retention: what garbage collection keeps.
//!
//! An image stays while a live machine runs it or one of the app's last `keep_releases`
//! releases names it (so `hangar rollback` to a recent release never needs a rebuild).
//! Deploy images (`<app>:deployment-*`, made by builds and uploads) lose their tag when
//! nothing keeps them; other tags are the operator's and stay until removed.

use std::collections::HashSet;

use hangar_runtime::image::GcReport;

use crate::error::ApiResult;
use crate::supervisor::{Control, blocking};

/// Releases per app whose images are kept by default.
pub const DEFAULT_KEEP_RELEASES: u32 = 5;

/// Whether `name` is a deploy image's tag (`<app>:deployment-...`).
fn is_deployment_tag(name: &str) -> bool {
    name.rsplit_once(':')
        .is_some_and(|(_, tag)| tag.starts_with("deployment-"))
}

impl Control {
    /// The manifest digests that must stay: live machines' images and the images of each
    /// app's last `keep_releases` releases.
    pub async fn images_in_use(&self, keep_releases: u32) -> ApiResult<HashSet<String>> {
        let mut keep: HashSet<String> = self
            .store
            .list_live_machines()
            .await?
            .into_iter()
            .filter_map(|m| m.image_ref.map(|r| r.digest))
            .collect();
        for app in self.store.list_apps(None).await? {
            for r in self.store.list_releases(&app.name, keep_releases).await? {
                keep.insert(r.image_digest);
            }
            if let Some(r) = self.store.current_release(&app.name).await? {
                keep.insert(r.image_digest);
            }
        }
        Ok(keep)
    }

    /// Untags deploy images nothing keeps, then removes every blob and layer no kept image
    /// reaches.
    pub async fn collect_images(&self, keep_releases: u32) -> ApiResult<(GcReport, Vec<String>)> {
        let keep = self.images_in_use(keep_releases).await?;
        let images = self.images.clone();
        blocking(move || -> ApiResult<(GcReport, Vec<String>)> {
            let mut untagged = Vec::new();
            for img in images.list()? {
                if let Some(name) = img.name
                    && is_deployment_tag(&name)
                    && !keep.contains(&img.manifest_digest)
                {
                    images.remove(&name)?;
                    untagged.push(name);
                }
            }
            let report = images.gc(&keep)?;
            Ok((report, untagged))
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_tags() {
        assert!(is_deployment_tag("web:deployment-01jd"));
        assert!(is_deployment_tag("localhost:4280/web:deployment-1"));
        assert!(!is_deployment_tag("web:latest"));
        assert!(!is_deployment_tag("deployment-x"));
    }
}
