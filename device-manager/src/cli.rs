//! Command line of `hammer-manager` (clap). Every `run` setting can also come from a
//! `HAMMER_MANAGER_*` environment variable; flags win over the environment, which wins over
//! `manager.toml`.

use crate::config::DEFAULT_DATA_DIR;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "hammer-manager",
    version,
    about = "Hammer IoT device manager: enroll this device, then run the agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct DataDirArg {
    /// Folder with the manager's keys, config and state.
    #[arg(long, env = "HAMMER_MANAGER_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct AppDirArg {
    /// Folder with the releases and the app's own writable folder, readable by the app user
    /// (the data dir is not). Default: beside the data dir, its name plus `-apps`
    /// (/var/lib/hammer-manager-apps).
    #[arg(long, env = "HAMMER_MANAGER_APP_DIR")]
    pub app_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this device with the service: make keys locally, get a certificate.
    Enroll(EnrollCmd),
    /// Run the agent: connect to the broker, deploy what the service asks, report.
    Run(RunCmd),
    /// Show what is deployed locally (no network).
    Status(StatusCmd),
}

#[derive(Debug, Args)]
pub struct EnrollCmd {
    /// The service's enrollment URL as `hammer device add` prints it, e.g.
    /// https://hammer.example:8443 (https only: the token never crosses the network in clear).
    #[arg(long)]
    pub url: String,
    /// The one-time enrollment token from `hammer device add`.
    #[arg(long, env = "HAMMER_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// SHA-256 fingerprint of the fleet CA (printed by `hammer device add`): the only thing
    /// enrollment trusts. The server must present this CA, and the answer must be signed by it.
    #[arg(long)]
    pub ca_sha256: Option<String>,
    /// Trust this CA (PEM) for the TLS connection instead of the pinned fleet CA: for an
    /// enrollment URL behind a TLS front end of your own. The answer is still checked
    /// against --ca-sha256 (or, without it, this file must be the fleet CA itself).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Enroll again even if the data dir is already enrolled (new keys, new epoch).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub dir: DataDirArg,
}

#[derive(Debug, Args)]
pub struct RunCmd {
    #[command(flatten)]
    pub dir: DataDirArg,
    #[command(flatten)]
    pub app_dir: AppDirArg,
    /// Run the app (and its health command) as this user. Default: `hammer-app` when the
    /// manager runs as root (create it with `useradd --system --no-create-home --shell
    /// /usr/sbin/nologin hammer-app`), else the manager's own user. `root` runs the app as
    /// root (not recommended: it can then read the device's keys); a manager that is not root
    /// cannot switch users.
    #[arg(long, env = "HAMMER_MANAGER_APP_USER")]
    pub app_user: Option<String>,
    /// Seconds between health reports.
    #[arg(long, env = "HAMMER_MANAGER_HEALTH_INTERVAL", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub health_interval: u64,
    /// Override the broker URL from manager.toml (mqtts://host:port).
    #[arg(long, env = "HAMMER_MANAGER_BROKER_URL")]
    pub broker_url: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping the app.
    #[arg(long, env = "HAMMER_MANAGER_STOP_GRACE", default_value_t = 10)]
    pub stop_grace: u64,
    /// Upper bound in seconds of the crash-restart backoff.
    #[arg(long, env = "HAMMER_MANAGER_RESTART_BACKOFF_CAP", default_value_t = 60)]
    pub restart_backoff_cap: u64,
    /// Releases kept on disk.
    #[arg(long, env = "HAMMER_MANAGER_KEEP_RELEASES", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_releases: u64,
    /// Size in bytes at which the app log file is rotated.
    #[arg(long, env = "HAMMER_MANAGER_LOG_FILE_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub log_file_max_bytes: u64,
}

#[derive(Debug, Args)]
pub struct StatusCmd {
    #[command(flatten)]
    pub dir: DataDirArg,
    #[command(flatten)]
    pub app_dir: AppDirArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "hammer-manager",
            "enroll",
            "--url",
            "http://127.0.0.1:1",
            "--token",
            "t",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Enroll(_)));
    }
}
