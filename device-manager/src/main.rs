//! The `hammer-manager` binary: `enroll`, `run`, `status`.
//!
//! One current-thread Tokio runtime (small footprint: the agent, the MQTT event loop and the
//! runtime's reconciler are tasks on one thread; git work goes to the blocking pool).

use anyhow::{Context, Result};
use clap::Parser;
use hammer_manager::agent::{self, AgentOptions};
use hammer_manager::cli::{Cli, Command, EnrollCmd, RunCmd, StatusCmd};
use hammer_manager::config::{DataDir, Identity, STATUS_SNAPSHOT_FILE};
use hammer_manager::enroll::{enroll, EnrollArgs};
use hammer_manager::outbox::Outbox;
use hammer_manager::runtime::app::AppUser;
use hammer_manager::runtime::{self, layout, RuntimeOptions};
use hammer_manager::store::{open_db, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let cli = Cli::parse();
    hammer_certs::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async {
        match cli.command {
            Command::Enroll(c) => cmd_enroll(c).await,
            Command::Run(c) => cmd_run(c).await,
            Command::Status(c) => cmd_status(c),
        }
    });
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn cmd_enroll(c: EnrollCmd) -> Result<()> {
    let dir = DataDir::new(c.dir.data_dir);
    let id = enroll(EnrollArgs {
        url: c.url,
        token: c.token,
        ca_sha256: c.ca_sha256,
        ca_file: c.ca_file,
        data_dir: dir.clone(),
        force: c.force,
    })
    .await?;
    println!(
        "enrolled as device {id}; data in {}. Start the agent: `hammer-manager run --data-dir {}` (or `systemctl enable --now hammer-manager`)",
        dir.path().display(),
        dir.path().display()
    );
    Ok(())
}

async fn cmd_run(c: RunCmd) -> Result<()> {
    let dir = DataDir::new(c.dir.data_dir);
    // Settings first: a missing or impossible app user stops the manager before it touches
    // anything.
    let app_user = AppUser::for_manager(c.app_user.as_deref())?;
    let identity = Identity::load(&dir, c.broker_url.as_deref())?;
    // The data dir is the manager's alone (0700, keys 0600), whatever someone did to it since
    // the last start.
    layout::secure_data_dir(dir.path())?;
    let db = open_db(dir.path())?;
    let outbox = Outbox::new(Store::open(&db)?);
    let sink = Arc::new(outbox.clone());
    let handle = runtime::spawn(
        RuntimeOptions {
            data_dir: dir.path().to_path_buf(),
            app_dir: c.app_dir.app_dir,
            app_user,
            stop_grace: Duration::from_secs(c.stop_grace),
            restart_backoff_cap: Duration::from_secs(c.restart_backoff_cap),
            keep_releases: c.keep_releases as usize,
            log_file_max_bytes: c.log_file_max_bytes,
            recovery_credentials: hammer_manager::credentials::load(dir.path()),
            git_ca_file: identity.git_ca_file.clone(),
        },
        db.clone(),
        sink,
    )
    .context("cannot start the runtime")?;
    let mut opts = AgentOptions::new(dir.path().to_path_buf());
    opts.health_interval = Duration::from_secs(c.health_interval);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        device = %identity.device_id,
        broker = %format!("{}:{}", identity.broker.host, identity.broker.port),
        "hammer-manager starting"
    );
    let backend = Arc::new(handle.clone());
    // Stopped by SIGTERM/SIGINT: stop the app with its grace period (the systemd unit uses
    // KillMode=process, so the manager, not systemd, stops the app) while the agent still
    // runs, so that the app's `stopped` report leaves with the agent's last publishes.
    let stopping = handle.clone();
    let shutdown = async move {
        shutdown_signal().await;
        stopping.shutdown(true).await;
    };
    agent::run(identity, opts, outbox, backend, shutdown).await?;
    handle.shutdown(true).await;
    // Every write of the store was durable when it returned: nothing to flush.
    drop(db);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
}

fn cmd_status(c: StatusCmd) -> Result<()> {
    let dir = DataDir::new(c.dir.data_dir);
    let cfg = hammer_manager::config::load_config_file(&dir)?;
    match open_db(dir.path()) {
        Ok(db) => {
            let store = Store::open(&db)?;
            let outbox = Outbox::new(store.clone());
            let layout = layout::Layout::new(dir.path(), c.app_dir.app_dir.as_deref());
            let status = runtime::local_status(&layout, &db)?;
            if c.json {
                let mut v = serde_json::to_value(&status)?;
                v["device_id"] = cfg.device_id.into();
                v["manager_running"] = false.into();
                v["unacked_events"] = outbox.len().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("device      {}", cfg.device_id);
                println!("manager     not running");
                print_status(&serde_json::to_value(&status)?);
                println!("unacked     {} status events", outbox.len());
            }
        }
        // The running manager holds the store's lock: show its last snapshot.
        Err(e @ StoreError::Locked { .. }) => {
            let snap = dir.file(STATUS_SNAPSHOT_FILE);
            let text = std::fs::read_to_string(&snap).map_err(|_| {
                anyhow::Error::new(e)
                    .context("and no status snapshot (status.json) from a running manager")
            })?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", snap.display()))?;
            if c.json {
                let mut v = v;
                v["device_id"] = cfg.device_id.into();
                v["manager_running"] = true.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("device      {}", cfg.device_id);
                println!("manager     running (figures from its last status event)");
                print_status(&v);
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn print_status(v: &serde_json::Value) {
    let s = |k: &str| match &v[k] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("generation  {}", s("generation"));
    println!("deployment  {}", s("deployment_id"));
    println!("commit      {}", s("commit"));
    println!("previous    {}", s("previous_commit"));
    println!("step        {}", s("step"));
    println!("run state   {}", s("run_state"));
    println!(
        "app         {} (pid {}, up {} s, restarts {})",
        if v["app_running"] == true {
            "running"
        } else {
            "not running"
        },
        s("pid"),
        s("uptime_secs"),
        s("restarts")
    );
}
