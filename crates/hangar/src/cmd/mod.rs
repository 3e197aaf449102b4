//! The command tree of the `hangar` CLI (`docs/cli.md` describes every command).

pub mod apps;
pub mod build;
pub mod config;
pub mod deploy;
pub mod domains;
pub mod images;
pub mod logs;
pub mod machine;
pub mod orgs;
pub mod secrets;
pub mod tokens;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use hangar_client::{Client, Overrides, Token};

use crate::output::Output;
use crate::server;

/// Run OCI images as machines on servers you own, the Fly.io way.
#[derive(Debug, Parser)]
#[command(
    name = "hangar",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true, help_heading = "Global Options")]
    pub json: bool,
    /// URL of the Hangar API [default: $HANGAR_API_URL, the config file, or http://127.0.0.1:4280].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Global Options"
    )]
    pub api_url: Option<String>,
    /// API token; visible in `ps`, so prefer HANGAR_API_TOKEN [default: $HANGAR_API_TOKEN,
    /// the config file, or <data-dir>/admin-token].
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        help_heading = "Global Options"
    )]
    pub token: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Hangar server on this host (as root).
    Server(server::ServerArgs),
    /// Create, list and destroy apps.
    #[command(subcommand)]
    Apps(apps::AppsCommand),
    /// Create and list organizations (tenants with their own private network).
    #[command(subcommand, visible_alias = "org")]
    Orgs(orgs::OrgsCommand),
    /// Create, list and revoke API tokens (admin, org, per-app deploy, read-only).
    #[command(subcommand, visible_alias = "token")]
    Tokens(tokens::TokensCommand),
    /// Run and manage machines.
    #[command(subcommand, visible_alias = "machines")]
    Machine(machine::MachineCommand),
    /// Import, pull, list and remove images.
    #[command(subcommand, visible_alias = "image")]
    Images(images::ImagesCommand),
    /// Create an app from a directory (Dockerfile or fly.toml), write hangar.toml, deploy it.
    Launch(deploy::LaunchArgs),
    /// Deploy the app: build or take an image, make a release, replace machines without
    /// dropping requests.
    Deploy(deploy::DeployArgs),
    /// Show an app's release, deploy in progress and machines.
    Status(deploy::AppOpt),
    /// List an app's releases.
    Releases(deploy::AppOpt),
    /// Deploy an earlier release again (as a new release).
    Rollback(deploy::RollbackArgs),
    /// Change the number or size of an app's machines.
    #[command(subcommand)]
    Scale(deploy::ScaleCommand),
    /// Print (and follow) a machine's output.
    Logs(logs::LogsArgs),
    /// Route custom hostnames (www.example.com) to an app; Fly's `certs` without TLS yet.
    #[command(subcommand, visible_alias = "certs")]
    Domains(domains::DomainsCommand),
    /// Set, unset, list and import app secrets (encrypted, write-only).
    #[command(subcommand, visible_alias = "secret")]
    Secrets(secrets::SecretsCommand),
    /// Check and print the app config (hangar.toml or fly.toml); no server needed.
    Config(config::ConfigArgs),
    /// Build an image from a Dockerfile on the server (buildah); prints the image name.
    Build(build::BuildArgs),
    /// Joins a build's cgroup, then runs buildah; the server starts it, not people.
    #[command(hide = true)]
    BuildExec {
        /// The `cgroup.procs` file of the build's cgroup.
        #[arg(long, value_name = "FILE")]
        cgroup_procs: PathBuf,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// The per-machine supervisor the server starts; not for people.
    #[command(hide = true)]
    Shim {
        /// The machine's directory.
        dir: PathBuf,
    },
}

/// What every client command gets: the output form and how to reach the API.
pub struct Ctx {
    pub out: Output,
    overrides: Overrides,
}

impl Ctx {
    /// A client of the API, found as `docs/cli.md` describes.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::from_env(&self.overrides)?)
    }
}

/// Runs the command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx {
        out: Output {
            json: cli.global.json,
        },
        overrides: Overrides {
            api_url: cli.global.api_url,
            token: cli.global.token.map(Token::new),
        },
    };
    match cli.command {
        // The server builds its own runtime: it is not a client command.
        Command::Server(args) => server::run(args).map(|()| ExitCode::SUCCESS),
        Command::Apps(c) => block_on(apps::run(&ctx, c)),
        Command::Orgs(c) => block_on(orgs::run(&ctx, c)),
        Command::Tokens(c) => block_on(tokens::run(&ctx, c)),
        Command::Machine(c) => block_on(machine::run(&ctx, c)),
        Command::Images(c) => block_on(images::run(&ctx, c)),
        Command::Logs(args) => block_on(logs::run(&ctx, args)),
        Command::Launch(args) => block_on(deploy::launch(&ctx, args)),
        Command::Deploy(args) => block_on(deploy::deploy(&ctx, args)),
        Command::Status(app) => block_on(deploy::status(&ctx, app)),
        Command::Releases(app) => block_on(deploy::releases(&ctx, app)),
        Command::Rollback(args) => block_on(deploy::rollback(&ctx, args)),
        Command::Scale(c) => block_on(deploy::scale(&ctx, c)),
        Command::Domains(c) => block_on(domains::run(&ctx, c)),
        Command::Secrets(c) => block_on(secrets::run(&ctx, c)),
        Command::Config(mut args) => {
            args.json = ctx.out.json;
            config::run(&args)
        }
        Command::Build(args) => block_on(build::run(&ctx, args)),
        Command::BuildExec {
            cgroup_procs,
            command,
        } => build::exec_in_cgroup(&cgroup_procs, &command),
        Command::Shim { dir } => Ok(hangar_runtime::machine::run_shim(&dir)),
    }
}

/// Runs a client command on a single-threaded runtime: it makes a few requests in
/// sequence, so more threads would only cost start-up time.
fn block_on<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(f)?;
    Ok(ExitCode::SUCCESS)
}

/// The part of a server message before its advice: the server advises in API terms
/// (`force=true`), which the CLI replaces with its own flags.
pub fn with_cli_hint(message: &str) -> &str {
    message.split_once(": ").map_or(message, |(what, _)| what)
}

/// Parses an organization slug (a DNS label).
pub fn parse_org(s: &str) -> Result<String, String> {
    hangar_core::names::validate_org_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// Parses `--app`: an app name (a DNS label).
pub fn parse_app(s: &str) -> Result<String, String> {
    hangar_core::names::validate_app_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// Parses a machine id.
pub fn parse_machine_id(s: &str) -> Result<hangar_core::MachineId, String> {
    s.parse()
        .map_err(|e: hangar_core::ids::InvalidMachineId| e.to_string())
}

/// The `--app` option of machine and log commands.
#[derive(Debug, Clone, Args)]
pub struct AppArg {
    /// The app.
    #[arg(short = 'a', long = "app", env = "HANGAR_APP", value_name = "APP", value_parser = parse_app)]
    pub app: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
