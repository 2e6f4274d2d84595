//! `rollout-bench`: the rollout and reconnect-storm benchmarks against the real service,
//! started in this process (temp data dir, loopback, ports 0).
//!
//! ```text
//! nice -n 10 cargo run --release -p hammer-fleet-sim --bin rollout-bench -- --devices 1000 --mosquitto
//! ```
//! 1. Embedded broker: provision N devices (operator bundles), connect them, set them up,
//!    roll out to all at once, then a batched rollout (`--batch` in flight), then a
//!    reconnect storm: a rollout is started, the service is stopped mid-rollout and started
//!    again on the same data dir and port; it measures the time until every device is back
//!    online and confirmed on its desired state, and checks that every status event a device
//!    sent is stored (sum of the devices' histories) and acked.
//! 2. With `--mosquitto`: the same all-at-once rollout through Debian's mosquitto as the
//!    external broker (`examples/mosquitto/`), in the same run so the ratio holds.
//!
//! Simulated devices run on their own runtime threads (`fleet-sim*`), so the service's CPU
//! time is the process's CPU time minus theirs. RSS is the whole process (service + devices).

use anyhow::Context;
use clap::Parser;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use hammer_fleet_sim::api::Api;
use hammer_fleet_sim::bench::{rollout, RolloutReport};
use hammer_fleet_sim::device::{Credentials, SimConfig, SimDevice};
use hammer_fleet_sim::fleet::{self, FleetStats};
use hammer_fleet_sim::procstat;
use hammer_service::{RunningService, ServeConfig};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "Rollout and reconnect-storm benchmarks for Hammer IoT")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// max_in_flight of the batched rollout (default: devices / 10).
    #[arg(long)]
    batch: Option<u32>,
    /// Connections per second (0 = as fast as possible, 256 at a time).
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    #[arg(long, default_value_t = 100)]
    fetch_ms: u64,
    #[arg(long, default_value_t = 100)]
    start_ms: u64,
    #[arg(long, default_value_t = 50)]
    jitter_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Also run the all-at-once rollout through mosquitto as the external broker.
    #[arg(long)]
    mosquitto: bool,
    /// Skip the reconnect storm.
    #[arg(long)]
    no_storm: bool,
    /// Worker threads for the simulated devices.
    #[arg(long, default_value_t = 2)]
    sim_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    hammer_certs::tls::install_default_provider();
    let want = args.devices as u64 * 8 + 4096;
    let limit = procstat::raise_nofile(want);
    println!(
        "open-file limit {limit} (wanted {want}); {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let sim = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.sim_threads)
        .thread_name("fleet-sim")
        .enable_all()
        .build()?;
    let svc_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("svc")
        .enable_all()
        .build()?;
    let handle = sim.handle().clone();
    svc_rt.block_on(main_async(args, handle))
}

fn config(dir: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::new(dir);
    cfg.http = ([127, 0, 0, 1], 0).into();
    cfg.mqtt = ([127, 0, 0, 1], 0).into();
    cfg.public_host = Some("127.0.0.1".into());
    cfg
}

/// CPU of the service (every thread but the simulator's) and the process RSS.
struct Probe {
    at: Instant,
    svc_cpu: Duration,
    sim_cpu: Duration,
    ext_cpu: Duration,
    ext_pid: Option<u32>,
}

impl Probe {
    fn new(ext_pid: Option<u32>) -> Probe {
        let (sim_cpu, svc_cpu) = procstat::cpu_split_self("fleet-sim");
        Probe {
            at: Instant::now(),
            svc_cpu,
            sim_cpu,
            ext_cpu: ext_pid.map_or(Duration::ZERO, |p| procstat::cpu_time(&p.to_string())),
            ext_pid,
        }
    }

    fn print(&self, label: &str) {
        let (sim, svc) = procstat::cpu_split_self("fleet-sim");
        let wall = self.at.elapsed().as_secs_f64();
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall;
        print!(
            "  {label}: service CPU {:.2} s ({:.0}% of one core), simulator CPU {:.2} s, process RSS {} MiB",
            (svc - self.svc_cpu).as_secs_f64(),
            pct(svc - self.svc_cpu),
            (sim - self.sim_cpu).as_secs_f64(),
            procstat::rss_kib("self") / 1024
        );
        if let Some(p) = self.ext_pid {
            let c = procstat::cpu_time(&p.to_string()) - self.ext_cpu;
            print!(
                ", mosquitto CPU {:.2} s ({:.0}%), mosquitto RSS {} MiB",
                c.as_secs_f64(),
                pct(c),
                procstat::rss_kib(&p.to_string()) / 1024
            );
        }
        println!();
    }
}

struct Fleet {
    admin: Api,
    user: Api,
    run: String,
    creds: Vec<Credentials>,
    devices: Vec<SimDevice>,
    stats: Arc<FleetStats>,
}

async fn bring_up(
    label: &str,
    svc: &RunningService,
    args: &Args,
    sim: &tokio::runtime::Handle,
) -> anyhow::Result<Fleet> {
    let admin = Api::new(&svc.http_url(), &svc.admin_token)?;
    let run = format!("{label}{:x}", hammer_protocol::now_ms());
    let t = Instant::now();
    let (token, creds) = fleet::provision(&admin, &run, args.devices, 8).await?;
    println!(
        "[{label}] provisioned {} devices in {:.1} s",
        creds.len(),
        t.elapsed().as_secs_f64()
    );
    let user = admin.with_token(&token);
    let cfg = Arc::new(SimConfig {
        fetch: Duration::from_millis(args.fetch_ms),
        start: Duration::from_millis(args.start_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        fail_rate: args.fail_rate,
        ..SimConfig::default()
    });
    let stats = Arc::new(FleetStats::default());
    let t = Instant::now();
    let (c2, s2, ramp) = (creds.clone(), stats.clone(), args.ramp);
    let devices = sim
        .spawn(async move {
            fleet::connect_all(c2, None, ramp, cfg, s2, Duration::from_secs(300)).await
        })
        .await
        .context("connect task panicked")??;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "[{label}] connected {} devices in {secs:.1} s ({:.0}/s), process RSS {} MiB",
        devices.len(),
        devices.len() as f64 / secs,
        procstat::rss_kib("self") / 1024
    );
    let t = Instant::now();
    fleet::setup_all(&user, &creds, &stats, Duration::from_secs(600)).await?;
    println!(
        "[{label}] setup confirmed by every device in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(Fleet {
        admin,
        user,
        run,
        creds,
        devices,
        stats,
    })
}

async fn measured(
    label: &str,
    f: &Fleet,
    max_in_flight: Option<u32>,
    ext_pid: Option<u32>,
) -> anyhow::Result<RolloutReport> {
    let probe = Probe::new(ext_pid);
    let r = rollout(
        &f.user,
        &f.admin,
        &f.run,
        f.devices.len(),
        max_in_flight,
        &f.stats,
        Duration::from_secs(900),
    )
    .await?;
    r.print(label);
    probe.print("resources during the rollout");
    Ok(r)
}

async fn main_async(args: Args, sim: tokio::runtime::Handle) -> anyhow::Result<()> {
    let n = args.devices;
    println!(
        "rollout-bench: {n} devices, fetch {} ms, start {} ms, jitter {} ms, fail rate {}",
        args.fetch_ms, args.start_ms, args.jitter_ms, args.fail_rate
    );
    // ---- embedded broker ----
    let dir = tempfile::tempdir()?;
    let svc = hammer_service::start(config(dir.path())).await?;
    let f = bring_up("embedded", &svc, &args, &sim).await?;
    measured("embedded, all at once", &f, None, None).await?;
    let batch = args.batch.unwrap_or((n as u32 / 10).max(1));
    measured("embedded, batched", &f, Some(batch), None).await?;

    let svc = if args.no_storm {
        svc
    } else {
        storm(svc, dir.path(), &f).await?
    };
    drop(f);
    svc.shutdown().await;

    // ---- mosquitto ----
    if args.mosquitto {
        if hammer_fleet_sim::mosquitto::binary().is_none() {
            println!("[mosquitto] skipped: the mosquitto binary is not installed");
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let cfg = config(dir.path());
        hammer_service::init::load_or_create(dir.path(), cfg.public_host.as_deref(), cfg.mqtt)?;
        let port = hammer_fleet_sim::mosquitto::free_port()?;
        let mq = hammer_fleet_sim::mosquitto::start(dir.path(), port).await?;
        let mut cfg = cfg;
        cfg.broker_url = Some(mq.url());
        let svc = hammer_service::start(cfg).await?;
        let f = bring_up("mosquitto", &svc, &args, &sim).await?;
        measured("mosquitto, all at once", &f, None, mq.pid()).await?;
        drop(f);
        svc.shutdown().await;
        drop(mq);
    }
    Ok(())
}

/// Restarts the service mid-rollout and measures the way back.
async fn storm(svc: RunningService, dir: &Path, f: &Fleet) -> anyhow::Result<RunningService> {
    let n = f.devices.len() as u64;
    let s = &f.stats;
    s.finishes(true);
    let want_desired = s.desired_received.load(Relaxed) + n;
    let id = f.user.deploy(&format!("fleet={}", f.run), None).await?;
    fleet::wait_for(
        Duration::from_secs(300),
        "every device to receive the storm's desired state",
        || s.desired_received.load(Relaxed) >= want_desired,
    )
    .await?;
    let mut cfg = config(dir);
    cfg.mqtt = svc.mqtt_addr;
    let t0 = Instant::now();
    svc.shutdown().await;
    let stopped = t0.elapsed();
    s.confirmed.store(0, Relaxed);
    let probe = Probe::new(None);
    let svc = hammer_service::start(cfg).await?;
    let started = t0.elapsed();
    fleet::wait_for(
        Duration::from_secs(600),
        "every device to be back online",
        || s.online.load(Relaxed) >= n,
    )
    .await
    .with_context(|| s.line())?;
    let online = t0.elapsed();
    fleet::wait_for(
        Duration::from_secs(600),
        "every device to confirm its desired state",
        || s.confirmed.load(Relaxed) >= n,
    )
    .await
    .with_context(|| s.line())?;
    let confirmed = t0.elapsed();
    println!(
        "reconnect storm, {n} devices: service stopped in {:.2} s, started in {:.2} s; all online after {:.2} s, all confirmed on their desired state after {:.2} s (from the stop)",
        stopped.as_secs_f64(),
        (started - stopped).as_secs_f64(),
        online.as_secs_f64(),
        confirmed.as_secs_f64()
    );
    probe.print("resources during the storm");
    let admin = Api::new(&svc.http_url(), &svc.admin_token)?;
    let user = f.user.with_base(&svc.http_url());
    fleet::wait_for(
        Duration::from_secs(600),
        "every device to finish the interrupted rollout",
        || s.finishes(false).len() as u64 >= n,
    )
    .await
    .with_context(|| s.line())?;
    fleet::wait_for(Duration::from_secs(120), "every event to be acked", || {
        s.events_acked.load(Relaxed) >= s.events_sent.load(Relaxed)
    })
    .await
    .with_context(|| s.line())?;
    let d = loop {
        let d = user.deployment(&id).await?;
        if d.state != hammer_protocol::api::DeploymentState::Running {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stored: usize = stream::iter(f.creds.iter())
        .map(|c| user.history_len(&c.name))
        .buffer_unordered(16)
        .try_fold(0usize, |a, b| async move { Ok(a + b) })
        .await?;
    let sent = s.events_sent.load(Relaxed);
    let unacked: usize = f.devices.iter().map(|d| d.unacked()).sum();
    let dups = admin
        .metric("hammer_status_events_duplicate_total")
        .await
        .unwrap_or(0);
    println!(
        "  after the storm: deployment {:?}; status events sent {sent}, stored {stored} ({}), unacked {unacked}, resent {}, duplicates dropped by the new service {dups}",
        d.state,
        if stored as u64 == sent { "none lost" } else { "MISMATCH" },
        s.events_resent.load(Relaxed),
    );
    Ok(svc)
}
