//! `hangar orgs create|list`: organizations, the tenants apps belong to.

use clap::Subcommand;
use time::OffsetDateTime;

use super::Ctx;
use crate::output::age;

/// Organizations: each has its own private network, isolated from the others.
#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an organization.
    Create {
        /// Slug: 1-63 of a-z, 0-9 and '-', starting with a letter.
        #[arg(value_parser = super::parse_org)]
        slug: String,
    },
    /// List organizations.
    #[command(visible_alias = "ls")]
    List,
}

pub async fn run(ctx: &Ctx, command: OrgsCommand) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match command {
        OrgsCommand::Create { slug } => {
            let org = client.create_org(&slug).await?;
            if ctx.out.json {
                return ctx.out.json(&org);
            }
            ctx.out.line(format_args!(
                "Created organization {}: create apps in it with `hangar apps create NAME --org {}`",
                org.slug, org.slug
            ))?;
        }
        OrgsCommand::List => {
            let orgs = client.list_orgs().await?;
            if ctx.out.json {
                return ctx.out.json(&orgs);
            }
            let now = OffsetDateTime::now_utc();
            let rows = orgs
                .iter()
                .map(|o| {
                    vec![
                        o.slug.clone(),
                        format!("hgbr{}", o.network_index),
                        age(&o.created_at, now),
                    ]
                })
                .collect();
            ctx.out
                .table(&["SLUG", "BRIDGE", "CREATED"], rows, "No organizations")?;
        }
    }
    Ok(())
}
