//! `hangar server`: runs the platform on this host.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `hangar server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where Hangar keeps its state: store, images, machines, logs.
    #[arg(long, env = "HANGAR_DATA_DIR", default_value = "/var/lib/hangar")]
    pub data_dir: PathBuf,
    /// Address of the API.
    #[arg(long, env = "HANGAR_API_LISTEN", default_value = "127.0.0.1:4280")]
    pub api_listen: SocketAddr,
    /// The runc binary.
    #[arg(long, env = "HANGAR_RUNC", default_value = "runc")]
    pub runc: PathBuf,
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("hangar server is not wired yet ({})", args.data_dir.display())
}
