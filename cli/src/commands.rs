//! The `hammer` CLI's client commands: argument definitions (clap) and the checks of their
//! inputs by the protocol's rules. Each command checks its inputs (names, tags, files)
//! before any request is sent. `main.rs` dispatches them to the command modules.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use hammer_client::Page;
use hammer_protocol::api::MAX_PAGE_LIMIT;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Connection and output flags shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// URL of the Hammer service [default: saved by `hammer login`, else http://127.0.0.1:8080]
    #[arg(long, global = true, env = "HAMMER_URL", value_name = "URL")]
    pub url: Option<String>,
    /// API token [default: saved by `hammer login`]
    #[arg(
        long,
        global = true,
        env = "HAMMER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// PEM file of the CA that signed the service's HTTPS certificate
    #[arg(long, global = true, env = "HAMMER_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print the API's JSON instead of human output
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--limit N` and `--all` of a command that lists a paged collection.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Show at most N records (the newest; 1 to 1000, default 100)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_LIMIT as i64))]
    pub limit: Option<u32>,
    /// Show every record, fetching page after page (N at a time)
    #[arg(long)]
    pub all: bool,
}

impl PageArgs {
    /// The client's page request.
    pub fn page(&self) -> Page {
        Page {
            limit: self.limit,
            all: self.all,
        }
    }
}

/// The client commands of `hammer`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a token against the service and save URL and token for later commands
    Login,
    /// Manage users (admin token)
    #[command(subcommand)]
    User(UserCmd),
    /// Register, list, inspect and remove devices
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Tell a device which repository to run and how (credentials are sealed to the device)
    Setup(SetupArgs),
    /// Deploy to devices by name or tag and follow the rollout with --wait
    Deploy(DeployArgs),
    /// Inspect, pause, resume, cancel or retry a deployment
    #[command(subcommand)]
    Deployment(DeploymentCmd),
    /// Mark a commit bad (the kill switch), unmark it, list those marked
    #[command(subcommand)]
    Commit(CommitCmd),
    /// Maintenance windows: when a deployment may launch a device (by name or tag), in UTC
    #[command(subcommand)]
    Window(crate::window::WindowCmd),
    /// Restart a device's app
    Restart(NameArg),
    /// Stop a device's app (it stays stopped until `hammer start`)
    Stop(NameArg),
    /// Start a stopped app again
    Start(NameArg),
    /// Run the device's previous release again
    Rollback(NameArg),
    /// Show a device's recent app output; -f follows it live
    Logs(LogsArgs),
    /// Follow live events (status, presence, deployments), one line each
    Events(EventsArgs),
    /// Operator tools: offline device bundles (admin token)
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Show your audit log: your changes and your devices' rollbacks and refusals (newest
    /// first, 100 unless --limit or --all)
    Audit(PageArgs),
    /// Your webhooks: add, list, remove, test; their delivery logs
    #[command(subcommand)]
    Webhook(crate::webhook::WebhookCmd),
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user and print their API token (shown once)
    Add {
        /// User name: letters, digits, . _ -
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Register a device; prints its enrollment token and the `hammer-manager enroll` command
    Add {
        /// Device name (unique among your devices)
        name: String,
        /// Tag as key=value (repeatable)
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
    },
    /// List your devices
    List {
        /// Only devices with this tag
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv)]
        tag: Option<(String, String)>,
    },
    /// Show one device in detail
    Show(NameArg),
    /// Show a device's deployment history (the newest 100 events unless --limit or --all)
    History(HistoryArgs),
    /// Remove a device: its certificate is revoked and it is disconnected
    Remove(NameArg),
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Device name
    pub name: String,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Device name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Device name
    pub name: String,
    /// Git repository URL the device fetches
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// Start command, run as `/bin/sh -c CMD` in the release folder
    #[arg(long, value_name = "CMD")]
    pub start: String,
    /// Branch, tag or commit to deploy by default
    #[arg(long = "ref", value_name = "REF", default_value = "main", value_parser = parse_git_ref)]
    pub git_ref: String,
    /// Environment variable for the app as KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Seconds a new release must stay up before it counts as healthy
    #[arg(long, value_name = "SECS", default_value_t = hammer_protocol::api::default_health_window())]
    pub health_window: u32,
    /// Command that must succeed (exit 0) at the end of the health window
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Fetch the ref's whole history on the devices and give each release a `.git` with it,
    /// for apps that run `git describe` or `git log` (default: only the tip, a shallow fetch,
    /// and no `.git` in the release)
    #[arg(long)]
    pub full_history: bool,
    /// Command run in each new release's folder before it starts, while the running release
    /// keeps running (e.g. "npm ci --omit=dev"); a failure fails the deployment
    #[arg(long, value_name = "CMD")]
    pub install: Option<String>,
    /// Seconds the install command may take (1 to 3600)
    #[arg(long, value_name = "SECS", requires = "install",
          default_value_t = hammer_protocol::install::DEFAULT_INSTALL_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u32).range(1..=hammer_protocol::install::MAX_INSTALL_TIMEOUT_SECS as i64))]
    pub install_timeout: u32,
    /// A dependency folder to carry over from the running release when its key file is
    /// unchanged, as DIR:KEYFILE (e.g. node_modules:package-lock.json; repeatable, at most 8)
    #[arg(long = "reuse", value_name = "DIR:KEYFILE", requires = "install", value_parser = parse_reuse)]
    pub reuse: Vec<hammer_protocol::ReuseDir>,
    /// HTTPS git user name (with --git-token-env)
    #[arg(
        long,
        value_name = "USER",
        requires = "git_token_env",
        conflicts_with = "ssh_key"
    )]
    pub git_user: Option<String>,
    /// Name of the environment variable that holds the HTTPS git token
    #[arg(long, value_name = "VAR", requires = "git_user")]
    pub git_token_env: Option<String>,
    /// File with the SSH private key for the repository (with --known-hosts)
    #[arg(long, value_name = "FILE", requires = "known_hosts")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file with the git server's host key
    #[arg(long, value_name = "FILE", requires = "ssh_key")]
    pub known_hosts: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Device names
    #[arg(required_unless_present = "tag", conflicts_with = "tag")]
    pub names: Vec<String>,
    /// Deploy to every device with this tag
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub tag: Option<(String, String)>,
    /// Branch, tag or commit (default: each device's setup ref)
    #[arg(long = "ref", value_name = "REF", value_parser = parse_git_ref)]
    pub git_ref: Option<String>,
    /// The full commit id to run (default: the commit the ref names now, resolved here with
    /// your git access)
    #[arg(long, value_name = "SHA", value_parser = parse_commit)]
    pub commit: Option<String>,
    /// At most this many devices updating at once (default: all)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,
    /// Abort when this percentage of devices failed
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub abort_at: Option<u8>,
    /// Seconds a device may take to get its new release running
    #[arg(long, value_name = "SECS", default_value_t = hammer_protocol::api::default_timeout(),
          value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout: u32,
    /// Extra attempts for a device that failed or timed out
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Roll out in phases, e.g. `1,10%`: one device, then 10% of the targets, then the rest;
    /// a phase starts once the one before it is promoted
    #[arg(long, value_name = "SIZES", value_parser = parse_phases)]
    pub phases: Option<PhaseList>,
    /// With --phases: promote a finished phase on its own once its devices stayed healthy this
    /// long (e.g. 10m); without it, `hammer deployment promote` starts each next phase
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs, requires = "phases")]
    pub soak: Option<u32>,
    /// Start at this UTC time (`2026-12-24 22:00`) or after a delay (`+2h`); devices are not
    /// touched before
    #[arg(long, value_name = "TIME", value_parser = parse_start_at)]
    pub start_at: Option<u64>,
    /// Follow the deployment until it ends; exit 0 only if it succeeded
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeploymentCmd {
    /// Show a deployment and each device's state in it
    Show {
        /// Deployment id
        id: String,
    },
    /// List your deployments (the newest 100 unless --limit or --all)
    List(PageArgs),
    /// Cancel a running deployment (devices not yet updated are skipped)
    Cancel {
        /// Deployment id
        id: String,
    },
    /// Pause a running deployment: no device is started until `resume`; devices already
    /// updating finish
    Pause {
        /// Deployment id
        id: String,
    },
    /// Resume a paused deployment
    Resume {
        /// Deployment id
        id: String,
    },
    /// Promote the open phase of a phased deployment: the next phase starts now
    Promote {
        /// Deployment id
        id: String,
    },
    /// Start a new deployment (same ref, commit and strategy) of the devices that failed or
    /// timed out in an ended deployment
    Retry {
        /// Deployment id
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CommitCmd {
    /// Mark a commit bad: your running deployments pinned to it stop and new deployments of it
    /// are refused until `hammer commit good`
    Bad {
        /// Full commit id (40 or 64 hex digits)
        sha: String,
        /// Why, shown in refusals and on the stopped deployments
        #[arg(long, value_name = "R")]
        reason: Option<String>,
        /// Also roll your devices running it back to their previous release
        #[arg(long)]
        rollback: bool,
    },
    /// Unmark a commit marked bad: deployments may name it again
    Good {
        /// Full commit id (40 or 64 hex digits)
        sha: String,
    },
    /// List the commits you marked bad
    ListBad,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Device name
    pub name: String,
    /// Keep following new lines
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this device
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Only events of this deployment
    #[arg(long, value_name = "ID")]
    pub deployment: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Register a device for a user and write a ready `hammer-manager` data dir
    IssueDevice {
        /// The owner's user name
        #[arg(long, value_name = "USER")]
        owner: String,
        /// Device name
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Tag as key=value (repeatable)
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_kv)]
        tags: Vec<(String, String)>,
        /// Folder to write the bundle into (created, must not hold a bundle yet)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Refuses a user or device name that breaks the protocol's rule, before any request.
pub fn check_name(name: &str) -> Result<()> {
    hammer_protocol::validate_name(name).map_err(|e| anyhow!("{e}"))
}

/// Refuses a deployment id that breaks the protocol's rule, before any request.
pub fn check_id(id: &str) -> Result<()> {
    hammer_protocol::validate_deployment_id(id).map_err(|e| anyhow!("{e}"))
}

/// Refuses a device's tags that break the protocol's rule (at most 32, each valid).
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    hammer_protocol::validate_tags(tags).map_err(|e| anyhow!("{e}"))
}

/// Parses a `key=value` tag by the protocol's rule ([`hammer_protocol::parse_tag`]).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    hammer_protocol::parse_tag(s).map_err(|e| e.to_string())
}

/// Parses an app environment variable `KEY=VALUE` (the value may be empty or hold `=`) by
/// the protocol's rule ([`hammer_protocol::parse_env`]).
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    hammer_protocol::parse_env(s).map_err(|e| e.to_string())
}

/// Parses a `--reuse DIR:KEYFILE` folder by the protocol's rule
/// ([`hammer_protocol::parse_reuse`]).
pub fn parse_reuse(s: &str) -> Result<hammer_protocol::ReuseDir, String> {
    hammer_protocol::parse_reuse(s).map_err(|e| e.to_string())
}

/// The install step of `hammer setup` (`--install`, `--install-timeout`, `--reuse`), checked
/// by the protocol's rule ([`hammer_protocol::validate_install`]) before any request.
pub fn install_step(a: &SetupArgs) -> Result<Option<hammer_protocol::InstallStep>> {
    let Some(command) = &a.install else {
        return Ok(None);
    };
    let step = hammer_protocol::InstallStep {
        command: command.clone(),
        timeout_secs: a.install_timeout,
        reuse: a.reuse.clone(),
    };
    hammer_protocol::validate_install(&step).map_err(|e| anyhow!("--install: {e}"))?;
    Ok(Some(step))
}

/// Parses a git ref (`--ref`) by the protocol's rule ([`hammer_protocol::validate_git_ref`]).
pub fn parse_commit(s: &str) -> Result<String, String> {
    hammer_protocol::full_commit_id(s).map_err(|e| e.to_string())
}

pub fn parse_git_ref(s: &str) -> Result<String, String> {
    hammer_protocol::validate_git_ref(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A tag as the API expects it in queries and selectors.
pub fn tag_string((k, v): &(String, String)) -> String {
    hammer_protocol::rules::tag_selector(k, v)
}

/// The sizes `--phases` names (one argument: clap would read a bare `Vec` as many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseList(pub Vec<hammer_protocol::api::PhaseSize>);

/// `--phases`: the protocol's rule.
fn parse_phases(s: &str) -> Result<PhaseList, String> {
    hammer_protocol::schedule::parse_phases(s)
        .map(PhaseList)
        .map_err(|e| e.to_string())
}

/// `--soak`: a duration of at most seven days.
fn parse_duration_secs(s: &str) -> Result<u32, String> {
    let secs = hammer_protocol::schedule::parse_duration_secs(s).map_err(|e| e.to_string())?;
    u32::try_from(secs)
        .ok()
        .filter(|&t| t <= 7 * 24 * 3600)
        .ok_or_else(|| format!("{s:?} is longer than seven days"))
}

/// `--start-at`: a UTC time or `+DURATION` from now.
fn parse_start_at(s: &str) -> Result<u64, String> {
    hammer_protocol::schedule::parse_time(s, hammer_protocol::now_ms()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn tags_and_env_are_parsed_by_the_protocol_rules() {
        assert_eq!(
            parse_kv("group=lab").unwrap(),
            ("group".into(), "lab".into())
        );
        assert!(parse_kv("group").is_err());
        assert!(parse_kv("=lab").is_err());
        assert_eq!(parse_kv("group=").unwrap(), ("group".into(), String::new()));
        assert!(parse_kv("a=b=c").is_err());
        assert!(parse_kv("a b=c").is_err());
        assert_eq!(
            parse_env("PORT=8000").unwrap(),
            ("PORT".into(), "8000".into())
        );
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(
            parse_env("EMPTY=").unwrap(),
            ("EMPTY".into(), String::new())
        );
        assert!(parse_env("1A=x").is_err());
        assert!(parse_env("A-B=x").is_err());
        assert!(parse_env("nope").is_err());
    }

    #[test]
    fn the_cli_counts_a_tag_value_in_bytes_like_the_service() {
        // 65 two-byte characters: 65 characters, 130 bytes. The CLI used to send it and the
        // service refused it; now the CLI refuses it first, saying what is allowed.
        let e = parse_kv(&format!("room={}", "ä".repeat(65))).unwrap_err();
        assert!(e.contains("at most 128 bytes"), "{e}");
        assert!(parse_kv(&format!("room={}", "ä".repeat(64))).is_ok());
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_tags(&many).is_err());
    }

    #[test]
    fn an_env_name_over_128_bytes_is_refused_before_any_request() {
        assert!(parse_env(&format!("{}=x", "A".repeat(128))).is_ok());
        assert!(parse_env(&format!("{}=x", "A".repeat(129))).is_err());
    }

    #[test]
    fn deployment_ids_and_names_follow_the_protocol_rules() {
        assert!(check_id("01jd3k4m5n6p7q8r9s0t1v2w3x").is_ok());
        assert!(check_id("../etc").is_err());
        assert!(check_id("").is_err());
        // The service makes lowercase ids only; the CLI used to pass these on.
        assert!(check_id("Dep_1-x").is_err());
        assert!(check_name("d1").is_ok());
        assert!(check_name("d/1").is_err());
    }

    #[derive(Debug, Parser)]
    struct Deploy {
        #[command(flatten)]
        args: DeployArgs,
    }

    #[derive(Debug, Parser)]
    struct Setup {
        #[command(flatten)]
        args: SetupArgs,
    }

    fn setup(extra: &[&str]) -> Result<Option<hammer_protocol::InstallStep>> {
        let mut argv = vec!["setup", "d1", "--repo", "https://h.example/a.git"];
        argv.extend(["--start", "node server.js"]);
        argv.extend(extra);
        let parsed = Setup::try_parse_from(argv).map_err(|e| anyhow!("{e}"))?;
        install_step(&parsed.args)
    }

    #[test]
    fn the_install_flags_are_checked_by_the_protocol_rule_before_any_request() {
        assert_eq!(setup(&[]).unwrap(), None);
        let step = setup(&[
            "--install",
            "npm ci --omit=dev",
            "--reuse",
            "node_modules:package-lock.json",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(step.command, "npm ci --omit=dev");
        assert_eq!(step.timeout_secs, 600);
        assert_eq!(step.reuse[0].spec(), "node_modules:package-lock.json");
        let t = setup(&["--install", "make", "--install-timeout", "3600"]).unwrap();
        assert_eq!(t.map(|s| s.timeout_secs), Some(3600));
        for bad in [
            // Out of range, or without --install.
            &["--install", "make", "--install-timeout", "0"][..],
            &["--install", "make", "--install-timeout", "3601"],
            &["--install-timeout", "60"],
            &["--reuse", "node_modules:package-lock.json"],
            // Outside the release, or not DIR:KEYFILE.
            &["--install", "make", "--reuse", "../x:k"],
            &["--install", "make", "--reuse", "/abs:k"],
            &["--install", "make", "--reuse", "node_modules"],
            &["--install", "make", "--reuse", "d:d/k"],
            // A blank command; two folders inside each other.
            &["--install", "  "],
            &["--install", "make", "--reuse", "a:k", "--reuse", "a/b:j"],
        ] {
            assert!(setup(bad).is_err(), "{bad:?}");
        }
        let nine: Vec<String> = (0..9).map(|i| format!("d{i}:k{i}")).collect();
        let mut argv = vec!["--install", "make"];
        for r in &nine {
            argv.extend(["--reuse", r.as_str()]);
        }
        let e = setup(&argv).unwrap_err().to_string();
        assert!(e.contains("at most 8"), "{e}");
    }

    #[test]
    fn a_ref_that_git_would_read_as_an_option_is_refused_by_the_argument_parser() {
        let ok = Deploy::try_parse_from(["deploy", "d1", "--ref", "v1.2"]).unwrap();
        assert_eq!(ok.args.git_ref.as_deref(), Some("v1.2"));
        assert!(Deploy::try_parse_from(["deploy", "d1", "--ref=--upload-pack=x"]).is_err());
        assert!(Deploy::try_parse_from(["deploy", "d1", "--ref", "a b"]).is_err());
    }

    #[test]
    fn phases_soak_and_start_are_read_by_the_protocols_rules() {
        use hammer_protocol::api::PhaseSize;
        let ok = Deploy::try_parse_from([
            "deploy",
            "d1",
            "--phases",
            "1,10%",
            "--soak",
            "10m",
            "--start-at",
            "2026-12-24 22:00",
        ])
        .unwrap();
        assert_eq!(
            ok.args.phases,
            Some(PhaseList(vec![
                PhaseSize::Devices(1),
                PhaseSize::Percent(10)
            ]))
        );
        assert_eq!(ok.args.soak, Some(600));
        assert_eq!(ok.args.start_at, Some(1_798_149_600_000));
        let e = Deploy::try_parse_from(["deploy", "d1", "--phases", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1 device"), "{e}");
        // A soak needs phases; a soak beyond seven days is refused.
        assert!(Deploy::try_parse_from(["deploy", "d1", "--soak", "10m"]).is_err());
        let e = Deploy::try_parse_from(["deploy", "d1", "--phases", "1", "--soak", "8d"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("seven days"), "{e}");
        let e = Deploy::try_parse_from(["deploy", "d1", "--start-at", "tomorrow"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("+2h"), "{e}");
    }
}
