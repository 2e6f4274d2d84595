//! `rollout-bench`: the rollout and reconnect-storm benchmarks against the real service,
//! run as a separate process: the `hammer serve` binary next to this one (or `--hammer-bin`),
//! on a temp data dir and free loopback ports.
//!
//! ```text
//! cargo build --release -p hammer-cli -p hammer-fleet-sim
//! nice -n 10 target/release/rollout-bench --devices 1000 --mosquitto
//! ```
//! 1. Embedded broker: start `hammer serve` (stdout/stderr to `service-embedded.log` in the
//!    work dir, `RUST_LOG=warn` unless `--service-log`), provision N devices (operator
//!    bundles), connect them, set them up, roll out to all at once, then a batched rollout
//!    (`--batch` in flight), then a reconnect storm: a rollout is started, the service
//!    process is stopped mid-rollout (`--storm-signal kill`, the default, or `term`) and
//!    started again on the same data dir and ports; it measures the time until every device
//!    is back online and confirmed on its desired state, and checks that every status event
//!    a device sent is stored (sum of the devices' histories) and acked.
//! 2. With `--mosquitto`: the same all-at-once rollout through Debian's mosquitto as the
//!    external broker (`examples/mosquitto/`, `hammer serve --broker-url`), in the same run
//!    so the ratio holds.
//! 3. With `--cluster`: two replicas (`hammer serve --replica a|b --database … --broker-url
//!    …`, child processes on one data dir) on a throwaway PostgreSQL (the service tests'
//!    `pg_server.rs`; skipped with the reason when it cannot start) and Mosquitto; devices
//!    are brought up and deployed to through replica b while a drives deployments: the
//!    all-at-once and the batched rollout, then the storm in cluster form (the replica
//!    holding the rollout lease is SIGKILLed mid-rollout and started again; timed: the
//!    lease's takeover and the rollout over and confirmed; checked: every status event sent
//!    is a row of `status_events` exactly once). A table at the end sets the embedded and the
//!    cluster figures of the same run side by side.
//!
//! Service CPU and RSS are the child process's (`/proc/<pid>`); simulator CPU and RSS are
//! this process's. The simulated devices need about one open file each here (their sockets);
//! the service has its own limit. The work dir (data dirs, logs) is removed at the end unless
//! the run fails or `--keep` is given.

use anyhow::Context;
use clap::Parser;
use hammer_fleet_sim::bench::{bring_up, measured, RolloutReport};
use hammer_fleet_sim::device::SimConfig;
use hammer_fleet_sim::service_proc::{self, ServeSpec, ServiceProc, StopSignal};
use hammer_fleet_sim::storm::StormReport;
use hammer_fleet_sim::{cluster, mosquitto, procstat, storm};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Also run two replicas on a throwaway PostgreSQL and mosquitto: the rollouts and the
    /// storm in cluster form (the lease holder killed mid-rollout).
    #[arg(long)]
    cluster: bool,
    /// In the cluster storm, kill the lease holder once this fraction of the devices got the
    /// rollout's desired state (1.0: all, as the embedded storm).
    #[arg(long, default_value_t = 1.0, value_name = "FRACTION")]
    cluster_kill_after: f64,
    /// Skip the reconnect storm.
    #[arg(long)]
    no_storm: bool,
    /// How the storm stops the service process.
    #[arg(long, value_enum, default_value_t = StopSignal::Kill)]
    storm_signal: StopSignal,
    /// Worker threads for the simulated devices.
    #[arg(long, default_value_t = 2)]
    sim_threads: usize,
    /// MQTT connect timeout of a simulated device, in seconds.
    #[arg(long, default_value_t = 30)]
    connect_timeout: u64,
    /// The `hammer` binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    hammer_bin: Option<PathBuf>,
    /// RUST_LOG of the service process.
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    service_log: String,
    /// Keep the work dir (service data dirs and logs) after a successful run.
    #[arg(long)]
    keep: bool,
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
    let bin = service_proc::locate(args.hammer_bin.as_deref())?;
    // One socket per simulated device, plus HTTP clients, files and the runtime.
    let want = args.devices as u64 + 1024;
    let limit = procstat::raise_nofile(want);
    println!(
        "simulator open-file limit {limit} (wanted {want}); the service process gets the hard limit {}; {} CPUs",
        procstat::nofile_hard(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if limit < want {
        eprintln!("warning: the open-file limit {limit} is below {want}; some devices may fail to connect");
    }
    let work = tempfile::Builder::new()
        .prefix("rollout-bench.")
        .tempdir()
        .context("cannot create the work dir")?;
    println!(
        "service binary {}; work dir {}",
        bin.display(),
        work.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.sim_threads.max(1))
        .thread_name("fleet-sim")
        .enable_all()
        .build()?;
    let result = rt.block_on(main_async(&args, &bin, work.path()));
    drop(rt);
    if result.is_err() || args.keep {
        let kept = work.keep();
        eprintln!(
            "work dir kept (data dirs, service logs): {}",
            kept.display()
        );
    }
    result
}

fn sim_config(args: &Args) -> Arc<SimConfig> {
    Arc::new(SimConfig {
        fetch: Duration::from_millis(args.fetch_ms),
        start: Duration::from_millis(args.start_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        fail_rate: args.fail_rate,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        ..SimConfig::default()
    })
}

/// Starts `hammer serve` for `spec` and says where it runs and logs.
async fn start_service(label: &str, spec: &ServeSpec) -> anyhow::Result<ServiceProc> {
    println!(
        "[{label}] hammer serve: http {}, {}, log {}",
        spec.http,
        spec.broker_url
            .as_ref()
            .map_or(format!("embedded broker {}", spec.mqtt), |u| format!(
                "broker {u}"
            )),
        spec.log.display()
    );
    let svc = ServiceProc::start(spec).await?;
    println!(
        "[{label}] service pid {} answered /healthz after {:.2} s",
        svc.pid(),
        svc.started_in.as_secs_f64()
    );
    Ok(svc)
}

/// Stops the service gracefully (SIGTERM) and says how long it took.
async fn stop_service(label: &str, svc: ServiceProc) -> anyhow::Result<()> {
    let pid = svc.pid();
    let (took, clean) = svc.stop(StopSignal::Term).await?;
    println!(
        "[{label}] service pid {pid} stopped with SIGTERM in {:.2} s{}",
        took.as_secs_f64(),
        if clean {
            ""
        } else {
            " (unclean exit: see its log)"
        }
    );
    Ok(())
}

async fn main_async(args: &Args, bin: &Path, work: &Path) -> anyhow::Result<()> {
    let n = args.devices;
    println!(
        "rollout-bench: {n} devices, fetch {} ms, start {} ms, jitter {} ms, fail rate {}",
        args.fetch_ms, args.start_ms, args.jitter_ms, args.fail_rate
    );
    let batch = args.batch.unwrap_or((n as u32 / 10).max(1));
    // ---- embedded broker ----
    let spec = ServeSpec::new(
        bin,
        work.join("embedded-data"),
        work.join("service-embedded.log"),
        &args.service_log,
    )?;
    let svc = start_service("embedded", &spec).await?;
    let f = bring_up("embedded", &svc, n, args.ramp, sim_config(args), None).await?;
    let all = measured("embedded, all at once", &f, None, svc.pid(), None).await?;
    let batched = measured("embedded, batched", &f, Some(batch), svc.pid(), None).await?;
    let (svc, storm) = if args.no_storm {
        (svc, None)
    } else {
        let (svc, r) = storm::run(svc, &spec, &f, args.storm_signal).await?;
        (svc, Some(r))
    };
    drop(f);
    stop_service("embedded", svc).await?;
    let embedded = Embedded {
        all,
        batched,
        storm,
    };

    // ---- mosquitto ----
    if args.mosquitto {
        if mosquitto::binary().is_none() {
            println!("[mosquitto] skipped: the mosquitto binary is not installed");
        } else {
            run_mosquitto(args, bin, work).await?;
        }
    }

    // ---- cluster ----
    let mut cluster_result = None;
    if args.cluster {
        if mosquitto::binary().is_none() {
            println!(
                "[cluster] skipped: the mosquitto binary is not installed (apt-get install mosquitto)"
            );
        } else {
            // On this (the main) thread: PostgreSQL dies with the thread that started it.
            match cluster::start_postgres() {
                Ok(None) => println!(
                    "[cluster] skipped: PostgreSQL cannot run here (the SKIPPED line above says why)"
                ),
                Err(e) => println!("[cluster] skipped: {e:#}"),
                Ok(Some(pg)) => {
                    let opts = cluster::Opts {
                        bin,
                        work,
                        devices: n,
                        ramp: args.ramp,
                        batch,
                        sim: sim_config(args),
                        service_log: args.service_log.clone(),
                        storm: !args.no_storm,
                        kill_after: args.cluster_kill_after,
                    };
                    cluster_result = Some(cluster::run(&opts, pg).await);
                }
            }
        }
    }
    let cluster = match &cluster_result {
        Some(Ok(r)) => Some(r),
        _ => None,
    };
    print_summary(n, batch, &embedded, cluster);
    match cluster_result {
        Some(Err(e)) => Err(e.context("the cluster part failed (replica logs: see above)")),
        Some(Ok(r)) if !r.mismatches.is_empty() => anyhow::bail!(
            "the cluster run did not hold up: {}",
            r.mismatches.join("; ")
        ),
        _ => Ok(()),
    }
}

/// The all-at-once rollout through mosquitto as the external broker.
async fn run_mosquitto(args: &Args, bin: &Path, work: &Path) -> anyhow::Result<()> {
    let n = args.devices;
    let mut spec = ServeSpec::new(
        bin,
        work.join("mosquitto-data"),
        work.join("service-mosquitto.log"),
        &args.service_log,
    )?;
    // The CA and the broker certificate mosquitto serves; `hammer serve` reuses them
    // (same public host, so the certificate is not reissued).
    hammer_service::init::load_or_create(&spec.data_dir, Some("127.0.0.1"), spec.mqtt)
        .context("cannot initialise the mosquitto run's data dir")?;
    let mq = mosquitto::start(&spec.data_dir, mosquitto::free_port()?).await?;
    spec.broker_url = Some(mq.url());
    let svc = start_service("mosquitto", &spec).await?;
    let f = bring_up("mosquitto", &svc, n, args.ramp, sim_config(args), mq.pid()).await?;
    measured("mosquitto, all at once", &f, None, svc.pid(), mq.pid()).await?;
    drop(f);
    stop_service("mosquitto", svc).await?;
    drop(mq);
    Ok(())
}

/// The embedded run's figures.
struct Embedded {
    all: RolloutReport,
    batched: RolloutReport,
    storm: Option<StormReport>,
}

/// The embedded and the cluster figures of this run side by side.
fn print_summary(n: usize, batch: u32, e: &Embedded, c: Option<&cluster::Report>) {
    fn row(label: &str, emb: Option<f64>, clu: Option<f64>, unit: &str) {
        let cell = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2} {unit}"));
        let ratio = match (emb, clu) {
            (Some(e), Some(c)) if e > 0.0 => format!("{:.2}×", c / e),
            _ => "—".to_owned(),
        };
        println!("| {label} | {} | {} | {ratio} |", cell(emb), cell(clu));
    }
    let s = |d: Duration| Some(d.as_secs_f64());
    println!();
    println!(
        "summary, {n} devices (embedded: one `hammer serve`, sled, embedded broker; cluster: replicas a and b, PostgreSQL, mosquitto):"
    );
    println!("| | embedded | cluster | cluster / embedded |");
    println!("|---|---|---|---|");
    for (name, er, cr) in [
        ("all at once", &e.all, c.map(|c| &c.all_at_once)),
        (
            &*format!("batched ({batch} in flight)"),
            &e.batched,
            c.map(|c| &c.batched),
        ),
    ] {
        row(
            &format!("{name}: devices terminal"),
            s(er.all_done),
            cr.and_then(|r| s(r.all_done)),
            "s",
        );
        row(
            &format!("{name}: deployment done"),
            s(er.service_done),
            cr.and_then(|r| s(r.service_done)),
            "s",
        );
        row(
            &format!("{name}: per device p50"),
            Some(er.p50_ms),
            cr.map(|r| r.p50_ms),
            "ms",
        );
        row(
            &format!("{name}: per device p99"),
            Some(er.p99_ms),
            cr.map(|r| r.p99_ms),
            "ms",
        );
        row(
            &format!("{name}: status events stored per second"),
            Some(er.events_per_sec),
            cr.map(|r| r.events_per_sec),
            "/s",
        );
    }
    let fo = c.and_then(|c| c.failover.as_ref());
    row(
        "storm: recovered after the kill (embedded: every device back online and resynced by the new service; cluster: rollout over, every device terminal, every event acked)",
        e.storm.as_ref().and_then(|r| s(r.confirmed)),
        fo.and_then(|f| s(f.recovered)),
        "s",
    );
    row(
        "storm: killed process back on /healthz",
        e.storm.as_ref().and_then(|r| s(r.restarted)),
        fo.and_then(|f| s(f.restarted)),
        "s",
    );
    row(
        "storm (cluster): rollout lease taken over",
        None,
        fo.and_then(|f| s(f.takeover)),
        "s",
    );
    let stored = |sent: u64, stored: u64| {
        if sent == stored {
            format!("{stored} of {sent}: exactly once")
        } else {
            format!("{stored} of {sent}: MISMATCH")
        }
    };
    println!(
        "| storm: status events stored | {} | {} | |",
        e.storm
            .as_ref()
            .map_or("—".into(), |r| stored(r.events_sent, r.events_stored)),
        fo.map_or("—".into(), |f| stored(f.events_sent, f.events_stored))
    );
    if let Some(f) = fo {
        println!(
            "cluster storm: replica {} (lease holder) killed with {} of {} devices terminal; lease taken by replica {}; deployment {} with {} of {} targets succeeded; {} resent events; {} launched twice",
            f.killed,
            f.finished_at_kill,
            f.devices,
            f.taken_by,
            f.state,
            f.targets_succeeded,
            f.devices,
            f.events_resent,
            f.launched_twice
        );
    }
}
