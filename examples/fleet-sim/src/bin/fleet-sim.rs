//! `fleet-sim`: N simulated devices against a running `hammer serve`.
//!
//! ```text
//! cargo run --release -p hammer-fleet-sim --bin fleet-sim -- \
//!     --url http://127.0.0.1:8080 --token "$(cat DATA/admin.token)" --devices 500 --deploy
//! ```
//! Provisions the devices for a new user (operator bundles through `POST /api/v1/provision`
//! with the admin token), connects them at `--ramp` per second, sends each its setup, then
//! (with `--deploy`) rolls out to all of them and prints a summary.

use clap::Parser;
use hammer_fleet_sim::api::Api;
use hammer_fleet_sim::device::SimConfig;
use hammer_fleet_sim::fleet::{self, FleetStats};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Simulated Hammer IoT devices speaking the real protocol")]
struct Args {
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Connections per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Simulated git fetch time (ms).
    #[arg(long, default_value_t = 200)]
    fetch_ms: u64,
    /// Simulated app start and health window (ms).
    #[arg(long, default_value_t = 300)]
    start_ms: u64,
    /// Jitter added to fetch and start (0..=ms each).
    #[arg(long, default_value_t = 100)]
    jitter_ms: u64,
    /// Fraction of rollouts that roll back (0..1).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Health report interval in seconds (0 = only after a rollout).
    #[arg(long, default_value_t = 0)]
    health_secs: u64,
    /// Service base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HAMMER_URL")]
    url: String,
    /// Admin token (DATA/admin.token).
    #[arg(long, env = "HAMMER_ADMIN_TOKEN")]
    token: String,
    /// Broker to connect to instead of the one in the bundles (mqtts://host:port).
    #[arg(long)]
    broker_url: Option<String>,
    /// Roll out to every simulated device once connected.
    #[arg(long)]
    deploy: bool,
    /// max_in_flight of that deployment (default: all at once).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Stay connected this many seconds after the rollout (0 = exit).
    #[arg(long, default_value_t = 0)]
    stay_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    hammer_certs::tls::install_default_provider();
    let limit = hammer_fleet_sim::procstat::raise_nofile(args.devices as u64 * 2 + 1024);
    if limit < args.devices as u64 + 256 {
        eprintln!(
            "warning: open-file limit {limit} is low for {} devices",
            args.devices
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fleet-sim")
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let broker = args
        .broker_url
        .as_deref()
        .map(hammer_fleet_sim::parse_broker_url)
        .transpose()?;
    let cfg = Arc::new(SimConfig {
        fetch: Duration::from_millis(args.fetch_ms),
        start: Duration::from_millis(args.start_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        fail_rate: args.fail_rate,
        health_every: Duration::from_secs(args.health_secs),
        ..SimConfig::default()
    });
    let stats = Arc::new(FleetStats::default());
    let admin = Api::new(&args.url, &args.token)?;
    let run = format!("{:x}", hammer_protocol::now_ms());
    let t = Instant::now();
    let (token, creds) = fleet::provision(&admin, &run, args.devices, 16).await?;
    let user = admin.with_token(&token);
    println!(
        "provisioned {} devices (user sim{run}, tag fleet={run}) in {:.1} s",
        creds.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let devices = fleet::connect_all(
        creds.clone(),
        broker,
        args.ramp,
        cfg,
        stats.clone(),
        Duration::from_secs(120),
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "connected {} devices in {secs:.1} s ({:.0}/s)",
        devices.len(),
        devices.len() as f64 / secs
    );
    fleet::setup_all(&user, &creds, &stats, Duration::from_secs(300)).await?;
    println!("every device confirmed its setup");
    if args.deploy {
        let r = hammer_fleet_sim::bench::rollout(
            &user,
            &admin,
            &run,
            devices.len(),
            args.max_in_flight,
            &stats,
            Duration::from_secs(600),
        )
        .await?;
        r.print("rollout");
    }
    if args.stay_secs > 0 {
        tokio::time::sleep(Duration::from_secs(args.stay_secs)).await;
    }
    println!("summary: {}", stats.line());
    let unacked: usize = devices.iter().map(|d| d.unacked()).sum();
    println!("unacked status events left in device outboxes: {unacked}");
    for d in &devices {
        d.disconnect().await;
    }
    Ok(())
}
