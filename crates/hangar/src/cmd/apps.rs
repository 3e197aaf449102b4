//! `hangar apps create|list|destroy`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use clap::Subcommand;
use hangar_client::ClientError;
use time::OffsetDateTime;

use super::{Ctx, parse_app, parse_org};
use crate::output::age;

/// Apps group machines under one name.
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app.
    Create {
        /// Name: 1-63 of a-z, 0-9 and '-', starting with a letter.
        #[arg(value_parser = parse_app)]
        name: String,
        /// Organization slug [default: the server's, "default"].
        #[arg(long, value_parser = parse_org)]
        org: Option<String>,
    },
    /// List apps.
    #[command(visible_alias = "ls")]
    List {
        /// Only apps of this organization.
        #[arg(long, value_parser = parse_org)]
        org: Option<String>,
    },
    /// Destroy an app.
    #[command(visible_alias = "rm")]
    Destroy {
        /// The app.
        #[arg(value_parser = parse_app)]
        name: String,
        /// Destroy its machines too (running ones are killed).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

pub async fn run(ctx: &Ctx, command: AppsCommand) -> anyhow::Result<()> {
    match command {
        AppsCommand::Create { name, org } => {
            let client = ctx.client()?;
            let app = client.create_app(&name, org.as_deref()).await?;
            if ctx.out.json {
                return ctx.out.json(&app);
            }
            ctx.out.line(format_args!(
                "Created app {} in organization {}",
                app.name, app.organization.slug
            ))?;
        }
        AppsCommand::List { org } => {
            let client = ctx.client()?;
            let list = client.list_apps(org.as_deref()).await?;
            if ctx.out.json {
                return ctx.out.json(&list);
            }
            let now = OffsetDateTime::now_utc();
            let rows = list
                .apps
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.organization.slug.clone(),
                        a.status.clone(),
                        a.machine_count.to_string(),
                        age(&a.created_at, now),
                    ]
                })
                .collect();
            ctx.out.table(
                &["NAME", "ORG", "STATUS", "MACHINES", "CREATED"],
                rows,
                "No apps yet: create one with `hangar apps create NAME`",
            )?;
        }
        AppsCommand::Destroy { name, force, yes } => {
            if !yes {
                confirm(&name, force)?;
            }
            let client = ctx.client()?;
            match client.destroy_app(&name, force).await {
                Err(ClientError::Api {
                    status: 412,
                    message,
                }) => bail!(
                    "{}: destroy them first, or pass --force to destroy them with the app",
                    super::with_cli_hint(&message)
                ),
                other => other?,
            }
            if ctx.out.json {
                return ctx.out.json(&serde_json::json!({ "destroyed": name }));
            }
            ctx.out.line(format_args!("Destroyed app {name}"))?;
        }
    }
    Ok(())
}

/// Asks on the terminal; without one, refuses rather than destroying unasked.
fn confirm(name: &str, force: bool) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("refusing to destroy app {name} without confirmation: pass --yes");
    }
    let what = if force { " and all its machines" } else { "" };
    eprint!("Destroy app {name}{what}? Type the app name to confirm: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != name {
        bail!("not confirmed: app {name} was not destroyed");
    }
    Ok(())
}
