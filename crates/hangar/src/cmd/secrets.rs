//! `hangar secrets`: set, unset, list and import app secrets; rotate the master key.
//!
//! Values are only ever sent to the server: nothing here prints one, and error messages
//! name the secret, never its value. `NAME=-` and `secrets import` read values from stdin,
//! which keeps them out of the shell history and `ps`.

use std::collections::BTreeMap;
use std::io::Read as _;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hangar_client::SecretsChanged;
use zeroize::Zeroizing;

use super::{AppArg, Ctx};
use crate::output::age;

/// `hangar secrets ...`.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set secrets (NAME=VALUE; NAME=- reads the value from stdin) and restart the
    /// app's machines with them, unless --stage.
    Set {
        #[command(flatten)]
        app: AppArg,
        /// NAME=VALUE pairs; values on the command line are visible in `ps` and the shell
        /// history, so prefer NAME=- or `hangar secrets import`.
        #[arg(required = true, value_name = "NAME=VALUE")]
        pairs: Vec<String>,
        #[command(flatten)]
        apply: ApplyArgs,
    },
    /// Remove secrets and restart the app's machines without them, unless --stage.
    Unset {
        #[command(flatten)]
        app: AppArg,
        /// Secret names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        apply: ApplyArgs,
    },
    /// List an app's secrets: names, digests and dates, never values.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Set secrets from a dotenv file on stdin (`NAME=value`, quotes, `export`, comments,
    /// multi-line double-quoted values).
    Import {
        #[command(flatten)]
        app: AppArg,
        #[command(flatten)]
        apply: ApplyArgs,
    },
    /// Replace the server's master key (admin token): data keys are re-wrapped, machines
    /// keep running.
    RotateMasterKey,
}

/// How a change is applied.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Only store the change: machines get it at their next start or deploy.
    #[arg(long)]
    pub stage: bool,
    /// Return once the server accepted the change, without following the restart.
    #[arg(long)]
    pub detach: bool,
}

/// A `NAME=VALUE` argument; `NAME=-` takes the value from stdin.
fn parse_pair(arg: &str, stdin_used: &mut bool) -> anyhow::Result<(String, Zeroizing<String>)> {
    let Some((name, value)) = arg.split_once('=') else {
        // The argument may be a value typed without its name: do not echo it.
        bail!(
            "an argument to `secrets set` has no '=': write NAME=VALUE (or NAME=- to read the value from stdin)"
        );
    };
    if value == "-" {
        if *stdin_used {
            bail!("only one NAME=- can read from stdin; set {name} in a separate command");
        }
        *stdin_used = true;
        let mut buf = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut buf)
            .with_context(|| format!("cannot read the value of {name} from stdin"))?;
        // A trailing newline from `echo` or a file is not part of the value.
        let trimmed = Zeroizing::new(buf.strip_suffix('\n').unwrap_or(&buf).to_owned());
        return Ok((name.to_owned(), trimmed));
    }
    Ok((name.to_owned(), Zeroizing::new(value.to_owned())))
}

/// Parses a dotenv document: `NAME=value`, `export NAME=value`, single and double quotes,
/// comments, multi-line double-quoted values. As in dotenv, `$VAR` and `${VAR}` in
/// unquoted and double-quoted values are substituted (single quotes keep them).
pub fn parse_dotenv(input: &[u8]) -> anyhow::Result<Vec<(String, Zeroizing<String>)>> {
    let mut out = Vec::new();
    for (i, item) in dotenvy::from_read_iter(input).enumerate() {
        match item {
            Ok((name, value)) => out.push((name, Zeroizing::new(value))),
            // dotenvy's own message quotes the line, which may hold a value.
            Err(dotenvy::Error::LineParse(_, column)) => bail!(
                "cannot parse entry {} of the dotenv input (at character {column}): check its quoting",
                i + 1
            ),
            Err(dotenvy::Error::Io(e)) => return Err(e).context("cannot read the dotenv input"),
            Err(_) => bail!(
                "cannot parse entry {} of the dotenv input: check its quoting and $ substitutions",
                i + 1
            ),
        }
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, cmd: SecretsCommand) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::Set { app, pairs, apply } => {
            let mut stdin_used = false;
            let mut values = BTreeMap::new();
            for p in &pairs {
                let (name, value) = parse_pair(p, &mut stdin_used)?;
                values.insert(name, value);
            }
            change(ctx, &app.app, values_to_changes(values), &apply).await
        }
        SecretsCommand::Import { app, apply } => {
            let mut input = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut input)
                .context("cannot read the dotenv input from stdin")?;
            let pairs = parse_dotenv(&input)?;
            if pairs.is_empty() {
                bail!(
                    "no secrets in the input: pipe a dotenv file, e.g. `hangar secrets import -a APP < .env`"
                );
            }
            change(ctx, &app.app, values_to_changes(pairs), &apply).await
        }
        SecretsCommand::Unset { app, names, apply } => {
            let changes = names.into_iter().map(|n| (n, None)).collect();
            change(ctx, &app.app, changes, &apply).await
        }
        SecretsCommand::List { app } => {
            let list = ctx.client()?.list_secrets(&app.app).await?;
            if ctx.out.json {
                return ctx.out.json(&list.secrets);
            }
            let now = time::OffsetDateTime::now_utc();
            let rows = list
                .secrets
                .iter()
                .map(|s| vec![s.name.clone(), s.digest.clone(), age(&s.created_at, now)])
                .collect();
            ctx.out.table(
                &["NAME", "DIGEST", "CREATED"],
                rows,
                &format!(
                    "No secrets in app {}: set one with `hangar secrets set NAME=VALUE -a {}`",
                    app.app, app.app
                ),
            )?;
            Ok(())
        }
        SecretsCommand::RotateMasterKey => {
            let r = ctx.client()?.rotate_master_key().await?;
            if ctx.out.json {
                return ctx.out.json(&r);
            }
            ctx.out.line(format_args!(
                "Rotated the master key: {} -> {} ({} app data key(s) re-wrapped). Back up the new key file now.",
                r.old_master_key_id, r.master_key_id, r.apps
            ))?;
            Ok(())
        }
    }
}

fn values_to_changes(
    values: impl IntoIterator<Item = (String, Zeroizing<String>)>,
) -> BTreeMap<String, Option<String>> {
    values
        .into_iter()
        .map(|(k, v)| (k, Some(v.as_str().to_owned())))
        .collect()
}

async fn change(
    ctx: &Ctx,
    app: &str,
    changes: BTreeMap<String, Option<String>>,
    apply: &ApplyArgs,
) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let changed = client.update_secrets(app, &changes, apply.stage).await?;
    if ctx.out.json {
        // Scripts get the answer once the restart is over (unless --detach), like people.
        if let (Some(deploy), false) = (&changed.deploy_id, apply.detach) {
            let mut events = client.follow_deploy(app, deploy, 0).await?;
            while let Some(event) = events.next().await {
                event?;
            }
            check_deploy(&client, app, deploy).await?;
        }
        return ctx.out.json(&changed);
    }
    report(ctx, app, &changed, apply).await
}

/// Fails unless the deploy that applied the change completed.
async fn check_deploy(
    client: &hangar_client::Client,
    app: &str,
    deploy: &str,
) -> anyhow::Result<()> {
    let done = client.get_deploy(app, deploy).await?;
    if done.status != "complete" {
        bail!(
            "the restart with the new secrets ended {}: {}; see `hangar status -a {app}`",
            done.status,
            done.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    Ok(())
}

async fn report(
    ctx: &Ctx,
    app: &str,
    changed: &SecretsChanged,
    apply: &ApplyArgs,
) -> anyhow::Result<()> {
    let Some(deploy) = &changed.deploy_id else {
        let note = if changed.staged {
            "staged: machines get them at their next deploy or start"
        } else {
            "the app has no release yet: machines get them at their next start"
        };
        ctx.out.line(format_args!(
            "Secrets of {app} updated (version {}); {note}.",
            changed.version
        ))?;
        return Ok(());
    };
    ctx.out.line(format_args!(
        "Secrets of {app} updated (version {}); restarting its machines (deploy {deploy}).",
        changed.version
    ))?;
    if apply.detach {
        return Ok(());
    }
    let client = ctx.client()?;
    let mut events = client.follow_deploy(app, deploy, 0).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        ctx.out.line(format_args!("  {}", event.message))?;
    }
    check_deploy(&client, app, deploy).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &str) -> Vec<(String, String)> {
        parse_dotenv(input.as_bytes())
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().to_owned()))
            .collect()
    }

    #[test]
    fn dotenv_inputs_parse_like_dotenv() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("A=1\nB=\"two words\"\n", &[("A", "1"), ("B", "two words")]),
            ("export A=1\n", &[("A", "1")]),
            ("# comment\n\nA=1 # trailing\n", &[("A", "1")]),
            ("A='single $NOPE'\n", &[("A", "single $NOPE")]),
            ("A=\"double \\\"q\\\"\"\n", &[("A", "double \"q\"")]),
            (
                "KEY=\"-----BEGIN-----\nline\n-----END-----\"\nB=2\n",
                &[("KEY", "-----BEGIN-----\nline\n-----END-----"), ("B", "2")],
            ),
            ("A=1\nB=${A}x\n", &[("A", "1"), ("B", "1x")]),
            ("EMPTY=\n", &[("EMPTY", "")]),
        ];
        for (input, want) in cases {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(parsed(input), want, "{input:?}");
        }
    }

    #[test]
    fn dotenv_errors_do_not_quote_the_input() {
        // An unquoted value with a space is an error in dotenv.
        let err = parse_dotenv(b"A=1\nB=two s3cretvalue\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(!msg.contains("s3cretvalue"), "{msg}");
        let err = parse_dotenv(b"A=\"unterminated s3cretvalue\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(!msg.contains("s3cretvalue"), "{msg}");
        assert!(msg.contains("entry 1"), "{msg}");
    }

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        let mut used = false;
        let (k, v) = parse_pair("URL=postgres://u:p@h/db?a=b", &mut used).unwrap();
        assert_eq!((k.as_str(), v.as_str()), ("URL", "postgres://u:p@h/db?a=b"));
        let err = parse_pair("s3cretvalue", &mut used).unwrap_err();
        assert!(!err.to_string().contains("s3cretvalue"), "{err}");
        assert!(!used);
    }
}
