//! `hangar shim <machine dir>` for the runtime's own tests: the real binary wires the
//! same function, which cannot exist yet while the runtime is built on its own.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (Some(first), Some(dir)) if first == "shim" => {
            hangar_runtime::machine::run_shim(&PathBuf::from(dir))
        }
        (Some(dir), None) => hangar_runtime::machine::run_shim(&PathBuf::from(dir)),
        _ => {
            eprintln!("usage: hangar-runtime-test-shim [shim] <machine dir>");
            ExitCode::from(2)
        }
    }
}
