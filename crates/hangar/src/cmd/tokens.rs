//! `hangar tokens create|list|revoke`: scoped API tokens.

use clap::{Args, Subcommand, ValueEnum};
use hangar_client::{CreateTokenRequest, TokenInfo};
use time::OffsetDateTime;

use super::{Ctx, parse_app, parse_org};
use crate::output::age;

/// API tokens: admin (the host), org (one organization), deploy (one app), readonly.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; it is printed once, on stdout, and cannot be shown again.
    Create(CreateArgs),
    /// List tokens that are not revoked (never the tokens themselves).
    #[command(visible_alias = "ls")]
    List {
        /// Only this organization's tokens.
        #[arg(long, value_parser = parse_org)]
        org: Option<String>,
    },
    /// Revoke a token: the next request made with it is refused.
    #[command(visible_alias = "rm")]
    Revoke {
        /// The token's id (from `hangar tokens list`).
        id: i64,
    },
}

/// The kinds of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Everything on the host (only admin tokens create these).
    Admin,
    /// One organization: its apps, machines and tokens.
    Org,
    /// One app: deploy it, run its machines, read its status and logs, push its image.
    Deploy,
    /// Reads only, in one organization (--org) or one app (--app).
    Readonly,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Admin => "admin",
            Kind::Org => "org",
            Kind::Deploy => "deploy",
            Kind::Readonly => "readonly",
        }
    }
}

/// `hangar tokens create KIND`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The kind of token.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The app (deploy tokens; read-only tokens of one app).
    #[arg(short = 'a', long, value_parser = parse_app)]
    pub app: Option<String>,
    /// The organization (org tokens; read-only tokens of one organization) [default: your
    /// token's organization, else "default"].
    #[arg(long, value_parser = parse_org, conflicts_with = "app")]
    pub org: Option<String>,
    /// A name to recognise it by in `hangar tokens list` [default: kind and scope].
    #[arg(long)]
    pub name: Option<String>,
    /// How long it lives: 30d, 12h, 90m, 1y, ... or "never" [default: never for admin
    /// tokens, 20 years for others, as Fly's].
    #[arg(long, value_name = "DURATION")]
    pub expiry: Option<String>,
}

fn scope(t: &TokenInfo) -> String {
    match (&t.app, &t.org_slug) {
        (Some(app), _) => format!("app {app}"),
        (None, Some(org)) => format!("org {org}"),
        (None, None) => "host".to_owned(),
    }
}

/// A date for the table: how long ago, or the day it comes.
fn when(rfc3339: Option<&str>, now: OffsetDateTime, none: &str) -> String {
    match rfc3339 {
        None => none.to_owned(),
        Some(at) => match OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        {
            Ok(t) if t > now => at.split('T').next().unwrap_or(at).to_owned(),
            _ => age(at, now),
        },
    }
}

pub async fn run(ctx: &Ctx, command: TokensCommand) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match command {
        TokensCommand::Create(args) => {
            if args.kind == Kind::Deploy && args.app.is_none() {
                anyhow::bail!("a deploy token is for one app: pass --app NAME");
            }
            let created = client
                .create_token(&CreateTokenRequest {
                    kind: args.kind.as_str().to_owned(),
                    app: args.app,
                    org_slug: args.org,
                    name: args.name,
                    expiry: args.expiry,
                })
                .await?;
            if ctx.out.json {
                return ctx.out.json(&created);
            }
            let t = &created.info;
            let expires = t
                .expires_at
                .as_deref()
                .map_or_else(|| "never expires".to_owned(), |e| format!("expires {e}"));
            // The token alone goes to stdout so that `TOKEN=$(hangar tokens create ...)`
            // captures it; the description goes to stderr.
            eprintln!(
                "Created {} token {} ({}) for {}; it {expires}. It is shown only now: store it (e.g. as HANGAR_API_TOKEN in CI).",
                t.kind,
                t.id,
                t.name,
                scope(t)
            );
            ctx.out.line(&created.token)?;
        }
        TokensCommand::List { org } => {
            let tokens = client.list_tokens(org.as_deref()).await?;
            if ctx.out.json {
                return ctx.out.json(&tokens);
            }
            let now = OffsetDateTime::now_utc();
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.kind.clone(),
                        scope(t),
                        t.name.clone(),
                        age(&t.created_at, now),
                        when(t.expires_at.as_deref(), now, "never"),
                        when(t.last_used_at.as_deref(), now, "-"),
                    ]
                })
                .collect();
            ctx.out.table(
                &[
                    "ID",
                    "KIND",
                    "SCOPE",
                    "NAME",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                ],
                rows,
                "No tokens",
            )?;
        }
        TokensCommand::Revoke { id } => {
            let t = client.revoke_token(id).await?;
            if ctx.out.json {
                return ctx.out.json(&t);
            }
            ctx.out.line(format_args!(
                "Revoked {} token {} ({}) for {}",
                t.kind,
                t.id,
                t.name,
                scope(&t)
            ))?;
        }
    }
    Ok(())
}
