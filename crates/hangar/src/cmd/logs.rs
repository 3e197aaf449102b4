//! `hangar logs`: a machine's output, optionally followed.

use anyhow::Context as _;
use clap::Args;
use hangar_client::LogOptions;
use hangar_core::MachineId;

use super::{AppArg, Ctx, parse_machine_id};

/// `hangar logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// The machine id.
    #[arg(long, short = 'm', value_parser = parse_machine_id)]
    pub machine: MachineId,
    /// Keep printing new lines until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines of the history.
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<u64>,
}

pub async fn run(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<()> {
    // Registered before anything is printed, so a Ctrl-C right after the first line
    // still ends the command through this handler rather than the default action.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch for Ctrl-C")?;
    let client = ctx.client()?;
    let options = LogOptions {
        follow: args.follow,
        tail: args.tail,
    };
    let mut lines = client
        .machine_logs(&args.app.app, &args.machine, &options)
        .await?;
    let print = async {
        while let Some(line) = lines.next().await {
            let line = line?;
            if ctx.out.json {
                ctx.out.line(serde_json::to_string(&line)?)?;
            } else {
                ctx.out.line(format_args!(
                    "{} {} {}",
                    line.timestamp, line.stream, line.message
                ))?;
            }
        }
        anyhow::Ok(())
    };
    // Ctrl-C is the normal way to end `--follow`, so it ends the command successfully.
    tokio::select! {
        result = print => result,
        _ = interrupt.recv() => Ok(()),
    }
}
