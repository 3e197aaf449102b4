//! `hangar domains add|list|remove`: custom hostnames the edge proxy routes to an app.
//! Fly calls these certificates (`fly certs`); Hangar issues no TLS certificates yet.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use hangar_core::config::{self, Format};
use time::OffsetDateTime;

use super::{Ctx, parse_app};
use crate::output::age;

/// Custom hostnames: requests whose Host is one of them reach the app.
#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// Route a hostname (such as www.example.com) to the app; point its DNS at this server.
    Add {
        /// The hostname.
        hostname: String,
        #[command(flatten)]
        app: OptionalApp,
    },
    /// List the app's custom hostnames.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: OptionalApp,
    },
    /// Stop routing a hostname to the app.
    #[command(visible_alias = "rm")]
    Remove {
        /// The hostname.
        hostname: String,
        #[command(flatten)]
        app: OptionalApp,
    },
}

/// `--app`, else `$HANGAR_APP`, else the `app` of the config file in the current directory.
#[derive(Debug, Clone, Args)]
pub struct OptionalApp {
    /// The app [default: $HANGAR_APP, else `app` in hangar.toml / fly.toml here].
    #[arg(short = 'a', long = "app", env = "HANGAR_APP", value_name = "APP", value_parser = parse_app)]
    pub app: Option<String>,
}

impl OptionalApp {
    fn resolve(self) -> anyhow::Result<String> {
        if let Some(app) = self.app {
            return Ok(app);
        }
        let file = super::config::locate(None)
            .context("which app? pass --app APP or run from the app's directory")?;
        let src = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the config file {}", file.display()))?;
        let shown = file.display().to_string();
        let parsed = config::parse(&src, Format::from_path(&shown), &shown);
        parsed
            .config
            .and_then(|c| c.app)
            .filter(|a| !a.is_empty())
            .with_context(|| format!("{shown} names no app: pass --app APP"))
    }
}

pub async fn run(ctx: &Ctx, command: DomainsCommand) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match command {
        DomainsCommand::Add { hostname, app } => {
            let app = app.resolve()?;
            let added = client.add_hostname(&app, &hostname).await?;
            if ctx.out.json {
                return ctx.out.json(&added);
            }
            ctx.out.line(format_args!(
                "Added {} to app {}: point its DNS (A/AAAA record) at this server; requests with Host {} now reach the app over HTTP (TLS certificates are not issued yet)",
                added.hostname, added.app, added.hostname
            ))?;
        }
        DomainsCommand::List { app } => {
            let app = app.resolve()?;
            let hostnames = client.list_hostnames(&app).await?;
            if ctx.out.json {
                return ctx.out.json(&hostnames);
            }
            let now = OffsetDateTime::now_utc();
            let rows = hostnames
                .iter()
                .map(|h| vec![h.hostname.clone(), age(&h.created_at, now)])
                .collect();
            ctx.out.table(
                &["HOSTNAME", "ADDED"],
                rows,
                &format!("App {app} has no custom hostnames: add one with `hangar domains add HOST --app {app}`"),
            )?;
        }
        DomainsCommand::Remove { hostname, app } => {
            let app = app.resolve()?;
            client.remove_hostname(&app, &hostname).await?;
            if ctx.out.json {
                return ctx
                    .out
                    .json(&serde_json::json!({ "ok": true, "hostname": hostname, "app": app }));
            }
            ctx.out
                .line(format_args!("Removed {hostname} from app {app}"))?;
        }
    }
    Ok(())
}
