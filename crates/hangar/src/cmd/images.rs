//! `hangar images import|pull|list|rm|gc`.

use std::path::PathBuf;

use clap::Subcommand;
use hangar_client::{ImageSummary, PullRequest};
use time::OffsetDateTime;

use super::Ctx;
use super::machine::validate_image_reference;
use crate::output::{age, human_bytes, short_digest};

/// Images in Hangar's own store.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Import an image from an oci-archive or docker-save tarball, or an OCI layout directory.
    Import {
        /// The tarball or directory; it is streamed, never loaded into memory.
        file: PathBuf,
        /// Name the image (a single-image archive only), e.g. myapp:v1.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Pull an image from a registry.
    Pull {
        /// Registry reference, e.g. registry.example:5000/team/app:v1.
        reference: String,
        /// Registry user.
        #[arg(long, requires = "password")]
        username: Option<String>,
        /// Registry password.
        #[arg(
            long,
            env = "HANGAR_REGISTRY_PASSWORD",
            hide_env_values = true,
            requires = "username"
        )]
        password: Option<String>,
        /// Talk plain HTTP to the registry.
        #[arg(long)]
        insecure: bool,
    },
    /// List images.
    #[command(visible_alias = "ls")]
    List,
    /// Remove an image (refused while a machine uses it).
    #[command(visible_alias = "remove")]
    Rm {
        /// Name or digest, e.g. busybox:latest or sha256:...
        name: String,
    },
    /// Delete blobs and unpacked layers no image uses.
    Gc,
}

pub async fn run(ctx: &Ctx, command: ImagesCommand) -> anyhow::Result<()> {
    match command {
        ImagesCommand::Import { file, tag } => {
            if let Some(tag) = &tag {
                validate_image_reference(tag)?;
            }
            let client = ctx.client()?;
            let images = client.import_image(&file, tag.as_deref()).await?;
            if ctx.out.json {
                return ctx.out.json(&images);
            }
            for image in &images {
                ctx.out.line(format_args!("Imported {}", describe(image)))?;
            }
        }
        ImagesCommand::Pull {
            reference,
            username,
            password,
            insecure,
        } => {
            validate_image_reference(&reference)?;
            let client = ctx.client()?;
            let request = PullRequest {
                reference,
                username,
                password,
                insecure,
            };
            let image = client.pull_image(&request).await?;
            if ctx.out.json {
                return ctx.out.json(&image);
            }
            ctx.out.line(format_args!("Pulled {}", describe(&image)))?;
        }
        ImagesCommand::List => {
            let client = ctx.client()?;
            let images = client.list_images().await?;
            if ctx.out.json {
                return ctx.out.json(&images);
            }
            let now = OffsetDateTime::now_utc();
            let rows = images
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone().unwrap_or_else(|| "<none>".to_owned()),
                        short_digest(&i.manifest_digest).to_owned(),
                        i.layers.to_string(),
                        human_bytes(i.size),
                        i.created
                            .as_deref()
                            .map_or_else(String::new, |c| age(c, now)),
                    ]
                })
                .collect();
            ctx.out.table(
                &["NAME", "DIGEST", "LAYERS", "SIZE", "CREATED"],
                rows,
                "No images: import one with `hangar images import FILE` or `hangar images pull REF`",
            )?;
        }
        ImagesCommand::Rm { name } => {
            let client = ctx.client()?;
            client.remove_image(&name).await?;
            if ctx.out.json {
                return ctx.out.json(&serde_json::json!({ "removed": name }));
            }
            ctx.out.line(format_args!("Removed image {name}"))?;
        }
        ImagesCommand::Gc => {
            let client = ctx.client()?;
            let report = client.gc_images().await?;
            if ctx.out.json {
                return ctx.out.json(&report);
            }
            for tag in &report.untagged {
                ctx.out.line(format_args!("Untagged {tag}"))?;
            }
            ctx.out.line(format_args!(
                "Removed {} blobs and {} layers, freed {}",
                report.removed_blobs,
                report.removed_layers,
                human_bytes(report.freed_bytes)
            ))?;
        }
    }
    Ok(())
}

/// `busybox:latest (sha256:0123456789ab, 1 layer, 1.2 MiB)`.
fn describe(image: &ImageSummary) -> String {
    let layers = if image.layers == 1 { "layer" } else { "layers" };
    format!(
        "{} (sha256:{}, {} {layers}, {})",
        image.name.as_deref().unwrap_or("<untagged>"),
        short_digest(&image.manifest_digest),
        image.layers,
        human_bytes(image.size)
    )
}
