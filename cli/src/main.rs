//! The `hammer` binary: `hammer serve` (service, embedded broker and store) and `hammer
//! broker` (the broker alone), both from the `hammer_service` library, and the client
//! commands of the CLI (see [`commands`]), which talk to the service through
//! `hammer_client`.
//!
//! Every failure ends as one line on stderr, `error: …`, saying what to do, and exit code 1.

mod audit;
mod certs;
mod commands;
mod commits;
mod config;
mod deploy;
mod devices;
mod output;
mod stream;
mod users;
mod webhook;
mod window;

use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand};
use commands::{CertsCmd, Command as ClientCommand, CommitCmd, DeploymentCmd, GlobalArgs, UserCmd};
use hammer_client::Action;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Hammer IoT: deploy git repositories to fleets of small Linux devices.
#[derive(Debug, Parser)]
#[command(name = "hammer", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: HTTP API, embedded MQTT broker and store (certificates made on first start)
    Serve(ServeArgs),
    /// Run the MQTT broker alone (mTLS front door with per-device ACLs)
    Broker(BrokerArgs),
    #[command(flatten)]
    Client(ClientCommand),
    /// Print a shell completion script (e.g. `hammer completions bash > /etc/bash_completion.d/hammer`)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Data folder: CA, keys, admin token, store
    #[arg(
        long,
        env = "HAMMER_DATA_DIR",
        default_value = "./hammer-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// HTTP API listen address
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    http: SocketAddr,
    /// Embedded broker listen address (devices connect here with mTLS)
    #[arg(long, default_value = "0.0.0.0:8883", value_name = "ADDR")]
    mqtt: SocketAddr,
    /// Enrollment listen address: HTTPS with a certificate from the fleet CA; devices enroll
    /// here with the line `hammer device add` prints
    #[arg(long, default_value = "0.0.0.0:8443", value_name = "ADDR")]
    enroll_listen: SocketAddr,
    /// Host name devices use to reach the broker and the enrollment listener (put in the
    /// server certificate)
    #[arg(long, value_name = "NAME")]
    public_host: Option<String>,
    /// Use an external broker at mqtts://HOST:PORT instead of the embedded one
    #[arg(long, value_name = "URL")]
    broker_url: Option<String>,
    /// Serve the API over HTTPS with a certificate from the fleet CA
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    https: bool,
    /// Serve the API over HTTPS with this certificate chain (PEM; with --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Open connections per HTTP listener (default: a quarter of the open-file limit left
    /// after a reserve, at most 1024); more are closed at once
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_http_connections: Option<u64>,
    /// Open connections per source IP address per HTTP listener; more are closed at once
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_http_connections_per_address: u64,
    /// Seconds a client has to send a request's head (also ends idle keep-alive connections)
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    http_header_timeout: u64,
    /// Seconds a connection may stay silent (no request in progress, no byte either way)
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    http_idle_timeout: u64,
    /// Devices one user may own
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_devices_per_user: u64,
    /// Event streams (dashboard tabs, `hammer logs -f`, `hammer deploy --wait`) one user may
    /// have open at once
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_streams_per_user: u64,
    /// Require `Authorization: Bearer TOKEN` on /metrics, TOKEN being this file's content
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Serve /metrics (and /healthz) on this address instead of the API's
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Status events kept per device (the oldest go first)
    #[arg(long, default_value_t = 20_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    history_max_events: u64,
    /// MiB of status events kept per device (the oldest go first)
    #[arg(long, default_value_t = 16, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    history_max_mib: u64,
    /// Days status events, finished deployments and audit records are kept
    #[arg(long, default_value_t = 730, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..))]
    history_max_days: u64,
    /// On SIGTERM or Ctrl-C, seconds to keep serving with /healthz answering 503 (so a load
    /// balancer's health check takes this replica out) before new connections are refused
    /// (0: at once; a second signal skips the rest)
    #[arg(long, default_value_t = hammer_service::DEFAULT_DRAIN_GRACE.as_secs(), value_name = "SECS")]
    drain_grace: u64,
    /// Run as replica NAME of several `hammer serve` on one --database and one --broker-url
    /// (behind a load balancer; see examples/cluster/). Each replica has its own MQTT
    /// identity, CN hammer-service-NAME: list each in the broker's ACL
    #[arg(long, value_name = "NAME")]
    replica: Option<String>,
    /// Allow webhook URLs that are or resolve to loopback, private or link-local addresses
    /// (off: refused, so that users cannot reach the service's own network or cloud metadata)
    #[arg(long)]
    webhook_allow_private: bool,
    #[command(flatten)]
    device_rate: DeviceRateArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Where the store lives: sled under the data dir unless `--database` names PostgreSQL.
#[derive(Args)]
struct DatabaseArgs {
    /// Keep the store in PostgreSQL instead of under the data dir:
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslrootcert=CA.pem] (a secret: never
    /// logged whole; another host is reached over TLS unless ?sslmode=disable)
    #[arg(
        long,
        env = "HAMMER_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database: Option<String>,
    /// Connections to the database (each on its own thread)
    #[arg(long, default_value_t = hammer_service::store::pg::PgConfig::DEFAULT_POOL as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    database_pool: u64,
    /// Seconds a database statement may take (a store call waits at most twice as long)
    #[arg(long, default_value_t = hammer_service::store::pg::PgConfig::DEFAULT_STATEMENT_TIMEOUT.as_secs(), value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    database_statement_timeout: u64,
}

impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("DatabaseArgs")
            .field("database", &self.config())
            .finish()
    }
}

impl DatabaseArgs {
    fn config(&self) -> Option<hammer_service::store::pg::PgConfig> {
        let url = self.database.as_ref()?;
        let mut c = hammer_service::store::pg::PgConfig::new(url.clone());
        c.pool = usize::try_from(self.database_pool).unwrap_or(usize::MAX);
        c.statement_timeout = Duration::from_secs(self.database_statement_timeout);
        Some(c)
    }
}

/// The broker's per-device limit: a device over it is disconnected (counted as `rate_limit`).
#[derive(Debug, Args)]
struct DeviceRateArgs {
    /// MQTT packets per second a device may send, sustained (0: no limit)
    #[arg(long, default_value_t = hammer_broker::limits::RateLimit::DEVICE.messages_per_sec, value_name = "N")]
    device_packets_per_sec: u64,
    /// MQTT packets a device may send at once
    #[arg(long, default_value_t = hammer_broker::limits::RateLimit::DEVICE.message_burst, value_name = "N")]
    device_packet_burst: u64,
    /// KiB per second a device may send, sustained
    #[arg(long, default_value_t = hammer_broker::limits::RateLimit::DEVICE.bytes_per_sec / 1024, value_name = "KIB")]
    device_kib_per_sec: u64,
    /// KiB a device may send at once
    #[arg(long, default_value_t = hammer_broker::limits::RateLimit::DEVICE.byte_burst / 1024, value_name = "KIB")]
    device_kib_burst: u64,
}

impl DeviceRateArgs {
    fn limit(&self) -> Option<hammer_broker::limits::RateLimit> {
        (self.device_packets_per_sec > 0).then(|| hammer_broker::limits::RateLimit {
            messages_per_sec: self.device_packets_per_sec,
            message_burst: self.device_packet_burst.max(1),
            bytes_per_sec: self.device_kib_per_sec.saturating_mul(1024).max(1),
            byte_burst: self.device_kib_burst.saturating_mul(1024),
        })
    }
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// Data folder with the fleet CA
    #[arg(
        long,
        env = "HAMMER_DATA_DIR",
        default_value = "./hammer-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Listen address
    #[arg(long, default_value = "0.0.0.0:8883", value_name = "ADDR")]
    listen: SocketAddr,
    #[command(flatten)]
    device_rate: DeviceRateArgs,
}

fn main() -> ExitCode {
    hammer_certs::tls::install_default_provider();
    let parsed = Cli::parse();
    if let Command::Client(_) | Command::Completions { .. } = parsed.command {
        // Client commands behave like other Unix tools when their output pipe closes
        // (`hammer device list | head`). The servers keep ignoring SIGPIPE.
        // SAFETY: no other thread exists yet; resetting a signal disposition is harmless.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(match parsed.command {
                    // rumqttd logs every subscription at info: too chatty for a console.
                    Command::Serve(_) | Command::Broker(_) => "info,rumqttd=warn",
                    _ => "warn",
                })
            }),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(parsed)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors can carry device or server text: never raw to the terminal.
            let msg = output::safe(&format!("{e:#}").replace('\n', " ")).into_owned();
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-file limit to the hard one (each device and HTTP connection is a
/// descriptor; the broker and the HTTP caps are sized from it); returns the limit in force.
fn raise_nofile() -> u64 {
    hammer_broker::limits::raise_nofile()
}

async fn run(parsed: Cli) -> Result<()> {
    match parsed.command {
        Command::Serve(a) => {
            let nofile = raise_nofile();
            tracing::info!(open_files = nofile, "open-file limit");
            let mut cfg = hammer_service::ServeConfig::new(a.data_dir);
            cfg.http = a.http;
            cfg.mqtt = a.mqtt;
            cfg.enroll = a.enroll_listen;
            cfg.public_host = a.public_host;
            cfg.broker_url = a.broker_url;
            cfg.http_tls = match (a.https, a.tls_cert, a.tls_key) {
                (_, Some(cert), Some(key)) => Some(hammer_service::HttpTls::Files { cert, key }),
                (true, _, _) => Some(hammer_service::HttpTls::FleetCa),
                _ => None,
            };
            let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            cfg.http_limits = hammer_service::HttpLimits {
                header_read_timeout: Duration::from_secs(a.http_header_timeout),
                idle_timeout: Duration::from_secs(a.http_idle_timeout),
                max_connections: a.max_http_connections.map(to_usize),
                max_connections_per_address: to_usize(a.max_http_connections_per_address),
                ..Default::default()
            };
            cfg.quotas = hammer_service::Quotas {
                max_devices_per_user: a.max_devices_per_user,
                max_streams_per_user: to_usize(a.max_streams_per_user),
            };
            cfg.metrics_token_file = a.metrics_token_file;
            cfg.metrics_listen = a.metrics_listen;
            cfg.retention = hammer_service::store::Retention {
                max_events_per_device: a.history_max_events,
                max_bytes_per_device: a.history_max_mib.saturating_mul(1024 * 1024),
                max_age: Duration::from_secs(a.history_max_days.saturating_mul(24 * 3600)),
                max_audit_per_user: hammer_service::store::Retention::BUILT_IN.max_audit_per_user,
            };
            cfg.drain_grace = Duration::from_secs(a.drain_grace);
            cfg.device_rate_limit = a.device_rate.limit();
            cfg.database = a.database.config();
            cfg.replica = a.replica;
            cfg.webhooks.allow_private = a.webhook_allow_private;
            hammer_service::run(cfg).await
        }
        Command::Broker(a) => {
            let nofile = raise_nofile();
            tracing::info!(open_files = nofile, "open-file limit");
            hammer_service::run_broker(a.data_dir, a.listen, a.device_rate.limit()).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hammer", &mut std::io::stdout());
            Ok(())
        }
        Command::Client(cmd) => run_client(&parsed.global, cmd).await,
    }
}

/// Runs one client command.
async fn run_client(global: &GlobalArgs, cmd: ClientCommand) -> Result<()> {
    let saved = config::load()?;
    let conn = config::resolve(
        global.url.as_deref(),
        global.token.as_deref(),
        global.ca_cert.as_deref(),
        &saved,
    );
    let json = global.json;
    match cmd {
        ClientCommand::Login => users::login(&conn, json).await,
        ClientCommand::Audit(page) => audit::list(&conn, &page, json).await,
        ClientCommand::Window(c) => window::run(&conn, c, json).await,
        ClientCommand::User(UserCmd::Add { name }) => users::add_user(&conn, &name, json).await,
        ClientCommand::Device(c) => devices::run(&conn, c, json).await,
        ClientCommand::Setup(a) => devices::setup(&conn, a, json).await,
        ClientCommand::Deploy(a) => deploy::deploy(&conn, a, json).await,
        ClientCommand::Deployment(DeploymentCmd::Show { id }) => {
            deploy::show(&conn, &id, json).await
        }
        ClientCommand::Deployment(DeploymentCmd::List(page)) => {
            deploy::list(&conn, &page, json).await
        }
        ClientCommand::Deployment(DeploymentCmd::Cancel { id }) => {
            deploy::cancel(&conn, &id, json).await
        }
        ClientCommand::Deployment(DeploymentCmd::Pause { id }) => {
            deploy::hold(&conn, &id, true, json).await
        }
        ClientCommand::Deployment(DeploymentCmd::Resume { id }) => {
            deploy::hold(&conn, &id, false, json).await
        }
        ClientCommand::Deployment(DeploymentCmd::Promote { id }) => {
            deploy::promote(&conn, &id, json).await
        }
        ClientCommand::Deployment(DeploymentCmd::Retry { id }) => {
            deploy::retry(&conn, &id, json).await
        }
        ClientCommand::Commit(CommitCmd::Bad {
            sha,
            reason,
            rollback,
        }) => commits::bad(&conn, &sha, reason, rollback, json).await,
        ClientCommand::Commit(CommitCmd::Good { sha }) => commits::good(&conn, &sha, json).await,
        ClientCommand::Commit(CommitCmd::ListBad) => commits::list_bad(&conn, json).await,
        ClientCommand::Restart(a) => devices::action(&conn, &a.name, Action::Restart, json).await,
        ClientCommand::Stop(a) => devices::action(&conn, &a.name, Action::Stop, json).await,
        ClientCommand::Start(a) => devices::action(&conn, &a.name, Action::Start, json).await,
        ClientCommand::Rollback(a) => devices::action(&conn, &a.name, Action::Rollback, json).await,
        ClientCommand::Logs(a) => stream::logs(&conn, &a.name, a.follow, json).await,
        ClientCommand::Events(a) => {
            stream::events(&conn, a.device.as_deref(), a.deployment.as_deref(), json).await
        }
        ClientCommand::Certs(CertsCmd::IssueDevice {
            owner,
            name,
            tags,
            out,
        }) => certs::issue_device(&conn, &owner, &name, tags, &out, json).await,
        ClientCommand::Webhook(c) => webhook::run(&conn, c, json).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `hammer …` command the dashboard tells a user to run exists (the pages once
    /// named `hammer token create` and `hammer devices add`).
    #[test]
    fn commands_named_by_the_dashboard_exist() {
        let web = concat!(env!("CARGO_MANIFEST_DIR"), "/../service/src/web");
        let mut named = Vec::new();
        for e in std::fs::read_dir(web).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for (i, _) in text.match_indices("<code>hammer ") {
                let rest = &text[i + "<code>hammer ".len()..];
                let end = rest.find("</code>").unwrap();
                named.push(rest[..end].to_owned());
            }
        }
        assert!(named.len() >= 2, "{named:?}");
        let cli = Cli::command();
        for cmd in &named {
            let words: Vec<&str> = cmd
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .collect();
            let mut c = &cli;
            for w in &words {
                match c.find_subcommand(w) {
                    Some(sub) => c = sub,
                    None => break,
                }
            }
            assert!(
                !words.is_empty() && cli.find_subcommand(words[0]).is_some(),
                "the dashboard names `hammer {cmd}`, which does not exist"
            );
            if c.has_subcommands() {
                panic!("the dashboard names `hammer {cmd}`, which is incomplete");
            }
        }
    }

    #[test]
    fn parses_the_kill_switch_commands() {
        let sha = "a".repeat(40);
        let c = Cli::try_parse_from([
            "hammer",
            "commit",
            "bad",
            &sha,
            "--reason",
            "boot loop",
            "--rollback",
        ])
        .unwrap();
        match c.command {
            Command::Client(commands::Command::Commit(CommitCmd::Bad {
                sha: s,
                reason,
                rollback,
            })) => {
                assert_eq!(s, sha);
                assert_eq!(reason.as_deref(), Some("boot loop"));
                assert!(rollback);
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["hammer", "commit", "good", &sha]).unwrap();
        assert!(matches!(
            c.command,
            Command::Client(commands::Command::Commit(CommitCmd::Good { .. }))
        ));
        // The webhook's URL is not the service's (`--url`).
        let c = Cli::try_parse_from([
            "hammer",
            "webhook",
            "add",
            "https://example.com/h",
            "--url",
            "http://svc:8080",
            "--event",
            "deployment.failed",
        ])
        .unwrap();
        assert_eq!(c.global.url.as_deref(), Some("http://svc:8080"));
        match c.command {
            Command::Client(commands::Command::Webhook(webhook::WebhookCmd::Add {
                target,
                events,
            })) => {
                assert_eq!(target, "https://example.com/h");
                assert_eq!(
                    events,
                    [hammer_protocol::api::WebhookEvent::DeploymentFailed]
                );
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["hammer", "audit", "--limit", "5", "--json"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Client(commands::Command::Audit(commands::PageArgs {
                limit: Some(5),
                all: false
            }))
        ));
        let c = Cli::try_parse_from(["hammer", "commit", "list-bad", "--json"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Client(commands::Command::Commit(CommitCmd::ListBad))
        ));
        assert!(Cli::try_parse_from(["hammer", "commit", "bad"]).is_err());
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let c = Cli::try_parse_from(["hammer", "deploy", "--tag", "group=lab", "--wait"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Client(commands::Command::Deploy(_))
        ));
        assert!(Cli::try_parse_from(["hammer", "deploy"]).is_err());
        assert!(Cli::try_parse_from(["hammer", "deploy", "d1", "--tag", "a=b"]).is_err());
        assert!(Cli::try_parse_from([
            "hammer",
            "setup",
            "d1",
            "--repo",
            "r",
            "--start",
            "s",
            "--git-user",
            "u"
        ])
        .is_err());
        let c = Cli::try_parse_from(["hammer", "--json", "device", "list", "--tag", "group=lab"])
            .unwrap();
        assert!(c.global.json);
        let c = Cli::try_parse_from(["hammer", "device", "list", "--json"]).unwrap();
        assert!(c.global.json);
        assert!(Cli::try_parse_from(["hammer", "device", "add", "d1", "--tag", "nope"]).is_err());
        assert!(Cli::try_parse_from(["hammer", "logs", "d1", "-f"]).is_ok());
        assert!(Cli::try_parse_from(["hammer", "completions", "bash"]).is_ok());
    }

    #[test]
    fn serve_limits_have_defaults_and_flags() {
        let c = Cli::try_parse_from(["hammer", "serve"]).unwrap();
        let Command::Serve(a) = c.command else {
            panic!("not serve");
        };
        assert_eq!(
            (a.max_devices_per_user, a.max_streams_per_user),
            (10_000, 16)
        );
        assert_eq!((a.http_header_timeout, a.http_idle_timeout), (10, 60));
        assert_eq!(a.drain_grace, 5);
        assert_eq!(
            (a.max_http_connections, a.max_http_connections_per_address),
            (None, 64)
        );
        let c = Cli::try_parse_from([
            "hammer",
            "serve",
            "--max-devices-per-user",
            "5",
            "--max-streams-per-user",
            "2",
            "--max-http-connections",
            "100",
            "--metrics-token-file",
            "/tmp/t",
            "--metrics-listen",
            "127.0.0.1:9100",
        ])
        .unwrap();
        let Command::Serve(a) = c.command else {
            panic!("not serve");
        };
        assert_eq!((a.max_devices_per_user, a.max_streams_per_user), (5, 2));
        assert_eq!(a.max_http_connections, Some(100));
        assert!(a.metrics_listen.is_some() && a.metrics_token_file.is_some());
        assert!(Cli::try_parse_from(["hammer", "serve", "--max-http-connections", "0"]).is_err());
    }

    #[test]
    fn serve_keeps_sled_unless_a_database_is_named() {
        let c = Cli::try_parse_from(["hammer", "serve"]).unwrap();
        let Command::Serve(a) = c.command else {
            panic!("not serve");
        };
        if std::env::var_os("HAMMER_DATABASE_URL").is_none() {
            assert!(a.database.config().is_none());
        }
        let c = Cli::try_parse_from([
            "hammer",
            "serve",
            "--database",
            "postgres://hammer:pw@127.0.0.1:5432/hammer",
            "--database-pool",
            "3",
        ])
        .unwrap();
        let Command::Serve(a) = c.command else {
            panic!("not serve");
        };
        let pg = a.database.config().unwrap();
        assert_eq!((pg.pool, pg.statement_timeout.as_secs()), (3, 10));
        assert!(!format!("{pg:?}").contains("pw@"));
        assert!(!format!("{:?}", a.database).contains("pw@"));
        assert!(Cli::try_parse_from(["hammer", "serve", "--database-pool", "0"]).is_err());
    }
}
