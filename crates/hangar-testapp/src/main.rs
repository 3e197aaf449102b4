//! hangar-testapp: a tiny HTTP/1.1 server for tests and examples.
//!
//! Routes: `GET /` (hello with machine id and version), `GET /health` (200, or 503 when
//! `$UNHEALTHY` is set or `/tmp/unhealthy` exists), `GET /slow?ms=N`, `GET /crash`
//! (exit 1), `GET /alloc?mb=N` (allocate, touch and hold N MiB), `POST /echo` (stream the
//! body back). Every response has `x-version` and `x-machine-id` headers.
//!
//! Environment: `PORT` (8080), `VERSION` (`dev`), `FLY_MACHINE_ID` (else the hostname),
//! `UNHEALTHY`, `IGNORE_SIGNALS`. Flags: `--ignore-signals`, `--crash-on-boot`.
//!
//! SIGINT/SIGTERM stop accepting, let in-flight requests finish and exit 0, unless
//! signals are ignored.

mod http;
mod routes;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::routes::Config;
use crate::server::Server;

const USAGE: &str = "usage: hangar-testapp [--ignore-signals] [--crash-on-boot]
environment: PORT (8080), VERSION (dev), FLY_MACHINE_ID (else hostname), UNHEALTHY, IGNORE_SIGNALS
routes: GET / | GET /health | GET /slow?ms=N | GET /crash | GET /alloc?mb=N | POST /echo";

/// Reads the configuration from arguments and environment.
fn config_from(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let mut config = Config {
        port: 8080,
        version: env("VERSION")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "dev".into()),
        machine_id: env("FLY_MACHINE_ID")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(hostname),
        unhealthy: env("UNHEALTHY").is_some(),
        unhealthy_file: PathBuf::from("/tmp/unhealthy"),
        ignore_signals: env("IGNORE_SIGNALS").is_some_and(|v| !v.is_empty() && v != "0"),
        crash_on_boot: false,
    };
    if let Some(port) = env("PORT") {
        config.port = port
            .parse()
            .map_err(|_| format!("PORT must be a number from 0 to 65535, got {port:?}"))?;
    }
    for arg in args {
        match arg.as_str() {
            "--ignore-signals" => config.ignore_signals = true,
            "--crash-on-boot" => config.crash_on_boot = true,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(config)
}

/// The hostname, read from procfs so no libc call (and no NSS in a static binary) is needed.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match config_from(args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hangar-testapp: {err}");
            return ExitCode::from(2);
        }
    };
    if config.crash_on_boot {
        println!("hangar-testapp: crashing on boot (--crash-on-boot): exit 1");
        return ExitCode::FAILURE;
    }
    // Signal handlers go in before the socket is bound, so a signal sent as soon as the
    // startup line appears is never lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("hangar-testapp: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::bind_port(config.port, config.clone()) {
        Ok(server) => server,
        Err(err) => {
            eprintln!(
                "hangar-testapp: cannot listen on port {}: {err}",
                config.port
            );
            return ExitCode::FAILURE;
        }
    };
    let handle = match server.shutdown_handle() {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("hangar-testapp: {err}");
            return ExitCode::FAILURE;
        }
    };
    let ignore = config.ignore_signals;
    std::thread::spawn(move || {
        let mut shutting_down = false;
        for signal in signals.forever() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if ignore {
                println!("hangar-testapp: received {name}, ignoring it (--ignore-signals)");
            } else if shutting_down {
                println!("hangar-testapp: received {name}, already shutting down");
            } else {
                shutting_down = true;
                println!(
                    "hangar-testapp: received {name}, stopping: no new connections, finishing {} in-flight requests",
                    handle.in_flight()
                );
                handle.shutdown();
            }
        }
    });
    let addr = server
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    println!(
        "hangar-testapp listening on {addr} (machine {}, version {}{})",
        config.machine_id,
        config.version,
        if ignore {
            ", ignoring SIGINT/SIGTERM"
        } else {
            ""
        }
    );
    match server.run() {
        Ok(_) => {
            println!("hangar-testapp: in-flight requests done, exiting 0");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hangar-testapp: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config_with(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        config_from(args.iter().map(|a| (*a).to_owned()), |name| {
            env.get(name).cloned()
        })
    }

    #[test]
    fn configuration_from_environment_and_flags() {
        let c = config_with(
            &[],
            &[
                ("FLY_MACHINE_ID", "abc"),
                ("VERSION", "v3"),
                ("PORT", "9000"),
            ],
        )
        .unwrap();
        assert_eq!(
            (c.port, c.machine_id.as_str(), c.version.as_str()),
            (9000, "abc", "v3")
        );
        assert!(!c.unhealthy && !c.ignore_signals && !c.crash_on_boot);

        let c = config_with(
            &["--ignore-signals", "--crash-on-boot"],
            &[("UNHEALTHY", "")],
        )
        .unwrap();
        assert!(c.unhealthy && c.ignore_signals && c.crash_on_boot);
        assert_eq!((c.port, c.version.as_str()), (8080, "dev"));
        assert_eq!(c.machine_id, hostname());

        assert!(
            config_with(&[], &[("IGNORE_SIGNALS", "1")])
                .unwrap()
                .ignore_signals
        );
        assert!(
            !config_with(&[], &[("IGNORE_SIGNALS", "0")])
                .unwrap()
                .ignore_signals
        );
        assert_eq!(
            config_with(&[], &[("PORT", "http")]).unwrap_err(),
            "PORT must be a number from 0 to 65535, got \"http\""
        );
        assert!(
            config_with(&["--bogus"], &[])
                .unwrap_err()
                .starts_with("unknown argument \"--bogus\"")
        );
    }
}
