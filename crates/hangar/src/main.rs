//! The `hangar` binary: the CLI, `hangar server` and the hidden `hangar shim`.
//!
//! Errors end here: each is printed as one line, `Error: <what failed and what to do>`,
//! with exit status 1 (clap exits with 2 on usage errors before that).

mod cmd;
mod output;
mod server;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes as one line. The chain stops after a client error, whose
/// message already says everything a person needs (the transport details below it are
/// for debugging, not for the terminal).
fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        if !text.is_empty() {
            if text.contains(&msg) {
                continue;
            }
            text.push_str(": ");
        }
        text.push_str(&msg);
        if cause.downcast_ref::<hangar_client::ClientError>().is_some() {
            break;
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// True when stdout was closed by the reader, e.g. `hangar logs ... | head`.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
