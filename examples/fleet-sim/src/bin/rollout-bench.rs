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
//!
//! Service CPU and RSS are the child process's (`/proc/<pid>`); simulator CPU and RSS are
//! this process's. The simulated devices need about one open file each here (their sockets);
//! the service has its own limit. The work dir (data dirs, logs) is removed at the end unless
//! the run fails or `--keep` is given.

use anyhow::Context;
use clap::Parser;
use hammer_fleet_sim::bench::{bring_up, measured};
use hammer_fleet_sim::device::SimConfig;
use hammer_fleet_sim::service_proc::{self, ServeSpec, ServiceProc, StopSignal};
use hammer_fleet_sim::{mosquitto, procstat, storm};
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
    // ---- embedded broker ----
    let spec = ServeSpec::new(
        bin,
        work.join("embedded-data"),
        work.join("service-embedded.log"),
        &args.service_log,
    )?;
    let svc = start_service("embedded", &spec).await?;
    let f = bring_up("embedded", &svc, n, args.ramp, sim_config(args)).await?;
    measured("embedded, all at once", &f, None, svc.pid(), None).await?;
    let batch = args.batch.unwrap_or((n as u32 / 10).max(1));
    measured("embedded, batched", &f, Some(batch), svc.pid(), None).await?;
    let svc = if args.no_storm {
        svc
    } else {
        storm::run(svc, &spec, &f, args.storm_signal).await?
    };
    drop(f);
    stop_service("embedded", svc).await?;

    // ---- mosquitto ----
    if args.mosquitto {
        if mosquitto::binary().is_none() {
            println!("[mosquitto] skipped: the mosquitto binary is not installed");
            return Ok(());
        }
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
        let f = bring_up("mosquitto", &svc, n, args.ramp, sim_config(args)).await?;
        measured("mosquitto, all at once", &f, None, svc.pid(), mq.pid()).await?;
        drop(f);
        stop_service("mosquitto", svc).await?;
        drop(mq);
    }
    Ok(())
}
