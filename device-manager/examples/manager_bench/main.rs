//! Device manager benchmark: deploy latency and idle footprint of the real `hammer-manager`
//! binary against the real broker.
//!
//! ```text
//! cargo run --release -p hammer-manager --example manager_bench
//! cargo run --release -p hammer-manager --example manager_bench -- --profile release-device
//! ```
//!
//! What it does, all on loopback and in one temporary directory:
//! 1. builds the manager with `cargo build --profile PROFILE -p hammer-manager` (a no-op when
//!    it is fresh; `--no-build` skips it, `--manager PATH` measures another binary);
//! 2. starts hammer-broker in-process (mTLS front door + ACLs + rumqttd) with a fresh fleet
//!    CA, a server certificate and a service certificate;
//! 3. writes a manager data dir exactly as enrollment does (`enroll::write_data_dir`: CA,
//!    device certificate signed from the device's CSR, device key, sealing key, manager.toml);
//! 4. makes a git repo whose `start.sh` runs `exec sleep 100000` (a long-lived, silent app);
//! 5. starts the manager (`run`), connects a service-role MQTT client over mTLS, and publishes
//!    signed desired states: one for the first deploy (clone), then one per new commit
//!    (`--deploys N`), each timed from publish to the `running` status event (minus the health
//!    window, `--health-window S`, default 1 s). Status events are acked like the service does;
//! 6. lets the last deploy settle (`--settle-secs N`, default 5: its tail, pruning and the
//!    blocking thread going idle, is deploy work), then waits `--idle-secs N` (default 60)
//!    and measures, at the same two moments (start and end
//!    of the idle window), the manager and three comparisons: Mender's client (`mender
//!    daemon` of Debian's mender-client 3.4, started with the manager, its server an
//!    unreachable loopback port; see `mender.rs`; skipped with an install hint when it is not
//!    installed), this example re-run as `--baseline-idle` (a Rust binary with a Tokio
//!    current-thread runtime doing nothing, same profile as this example), and `/bin/sleep`
//!    (a C program doing nothing). Per process: VmRSS / VmHWM / RssAnon / RssFile / threads at
//!    the end, context switches (voluntary + involuntary, all threads) per minute over the
//!    window, next to the wake-ups the manager's own timers account for;
//! 7. repeats 1-6 `--runs N` times (median and range), then prints the stripped size of the
//!    manager for both profiles and a one-line verdict against issue 17's bound (idle RSS
//!    <= 8 MiB).

mod mender;
mod procfs;

use anyhow::{anyhow, bail, Context, Result};
use hammer_broker::{Broker, BrokerConfig};
use hammer_certs::{Ca, RevocationList};
use hammer_manager::agent::AgentOptions;
use hammer_manager::config::DataDir;
use hammer_protocol::api::ManagerConfigFile;
use hammer_protocol::sealing::SealingKeyPair;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::topics::topic;
use hammer_protocol::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const DEVICE: &str = "bench1";
const OWNER: &str = "bench";
const DAY: Duration = Duration::from_secs(86_400);
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

const USAGE: &str =
    "usage: manager_bench [--runs N] [--idle-secs N] [--settle-secs N] [--deploys N] \
[--health-window S] [--profile NAME] [--manager PATH] [--no-build] [--no-mender] [--keep]
  --runs N           whole runs (fresh broker, manager, baselines); median and range (default 1)
  --idle-secs N      idle window before reading RSS (default 60)
  --settle-secs N    wait after the last deploy's `running` before the idle window starts, so
                     that the deploy's own tail (pruning, the blocking thread's exit) is not
                     counted as idle wake-ups (default 5)
  --deploys N        timed deploys of new commits after the first one (default 5)
  --health-window S  health window of each desired state, seconds (default 1)
  --profile NAME     cargo profile of the manager binary (default release)
  --manager PATH     measure this binary instead (no build)
  --no-build         do not run cargo build; the binary must exist
  --no-mender        leave Mender's client out (it runs when `mender` is installed and we are root)
  --keep             keep the temporary directory (its path is printed)";

struct Args {
    runs: usize,
    idle_secs: u64,
    settle_secs: u64,
    deploys: usize,
    health_window: u32,
    profile: String,
    manager: Option<PathBuf>,
    build: bool,
    mender: bool,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        runs: 1,
        idle_secs: 60,
        settle_secs: 5,
        deploys: 5,
        health_window: 1,
        profile: "release".into(),
        manager: None,
        build: true,
        mender: true,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => a.runs = val("--runs")?.parse()?,
            "--idle-secs" => a.idle_secs = val("--idle-secs")?.parse()?,
            "--settle-secs" => a.settle_secs = val("--settle-secs")?.parse()?,
            "--deploys" => a.deploys = val("--deploys")?.parse()?,
            "--health-window" => a.health_window = val("--health-window")?.parse()?,
            "--profile" => a.profile = val("--profile")?,
            "--manager" => a.manager = Some(val("--manager")?.into()),
            "--no-build" => a.build = false,
            "--no-mender" => a.mender = false,
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.runs == 0 || a.idle_secs == 0 {
        bail!("--runs and --idle-secs must be at least 1");
    }
    Ok(a)
}

fn main() -> Result<()> {
    // Baseline mode: a Rust binary with an idle Tokio current-thread runtime, nothing else.
    if std::env::args().nth(1).as_deref() == Some("--baseline-idle") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(100_000)).await });
        return Ok(());
    }
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

/// The target dir this example was built in (it lives in target/<profile>/examples/).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot find the target dir from {}", exe.display()))?
        .to_path_buf())
}

/// `target/<profile>/hammer-manager`, built unless told otherwise.
fn manager_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.manager {
        return Ok(p.clone());
    }
    let target_dir = target_dir()?;
    let bin = target_dir.join(&args.profile).join("hammer-manager");
    if args.build {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!(
            "building: nice -n 10 cargo build --profile {} -p hammer-manager --bin hammer-manager",
            args.profile
        );
        let ok = Command::new("nice")
            .args(["-n", "10"])
            .arg(&cargo)
            .args(["build", "--profile", &args.profile, "-p", "hammer-manager"])
            .args(["--bin", "hammer-manager"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(&workspace)
            .status()
            .context("running cargo build")?
            .success();
        if !ok {
            bail!("cargo build of hammer-manager failed");
        }
    }
    if !bin.exists() {
        bail!(
            "{} does not exist; build it with `cargo build --profile {} -p hammer-manager`",
            bin.display(),
            args.profile
        );
    }
    Ok(bin)
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("git {args:?} failed");
    }
    Ok(())
}

/// A status event and when the service client received it.
#[derive(Debug)]
struct Seen {
    at: Instant,
    event: StatusEvent,
}

/// The service side: an mTLS MQTT client with the service role that signs desired states,
/// forwards status events, and acks them (highest contiguous seq) as the service does.
struct Service {
    client: AsyncClient,
    key: SigningKeyPair,
    status: mpsc::UnboundedReceiver<Seen>,
    online: mpsc::UnboundedReceiver<bool>,
}

impl Service {
    async fn connect(o: MqttOptions, key: SigningKeyPair) -> Result<Service> {
        let mut o = o;
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut el) = AsyncClient::new(o, 64);
        let (status_tx, status) = mpsc::unbounded_channel();
        let (online_tx, online) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let c2 = client.clone();
        let ack_key = SigningKeyPair::from_seed(key.to_seed().as_ref())?;
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut acked: Option<(u64, u64)> = None; // (epoch, highest contiguous seq)
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for ch in [Channel::Status, Channel::Presence] {
                            let _ = c2
                                .subscribe(ch.all_devices_filter(), QoS::AtLeastOnce)
                                .await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        let Ok(t) = Topic::parse(&p.topic) else {
                            continue;
                        };
                        match t.channel {
                            Channel::Status => {
                                let Ok(ev) = decode::<StatusEvent>(&p.payload) else {
                                    continue;
                                };
                                let next = match acked {
                                    Some((e, s)) if e == ev.epoch => s + 1,
                                    _ => 1,
                                };
                                if ev.seq == next {
                                    acked = Some((ev.epoch, ev.seq));
                                    let ack = AddressedAck::new(DEVICE, OWNER, ev.epoch, ev.seq);
                                    let Ok(payload) = ack_key.sign_to_vec(&ack) else {
                                        continue;
                                    };
                                    let _ = c2
                                        .publish(
                                            topic(DEVICE, Channel::Ack),
                                            QoS::AtLeastOnce,
                                            false,
                                            payload,
                                        )
                                        .await;
                                }
                                let _ = status_tx.send(Seen { at, event: ev });
                            }
                            Channel::Presence => {
                                if let Ok(pr) = decode::<Presence>(&p.payload) {
                                    let _ = online_tx.send(pr.online);
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("the service client did not subscribe")??;
        Ok(Service {
            client,
            key,
            status,
            online,
        })
    }

    async fn wait_online(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.online.recv()).await {
                Ok(Some(true)) => return Ok(()),
                Ok(Some(false)) => {}
                _ => bail!("the manager did not come online"),
            }
        }
    }

    /// Publishes `d` (signed, retained, QoS 1); returns the publish instant and wall clock.
    async fn publish_desired(&self, d: &DesiredState) -> Result<(Instant, u64)> {
        let payload = self.key.sign_to_vec(d)?;
        let t0 = (Instant::now(), now_ms());
        self.client
            .publish(
                topic(DEVICE, Channel::Desired),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .await?;
        Ok(t0)
    }

    /// Collects the status events of `generation` until a terminal one.
    async fn deployment(&mut self, generation: u64) -> Result<Vec<Seen>> {
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        let mut phases = Vec::new();
        loop {
            let s = match tokio::time::timeout_at(deadline, self.status.recv()).await {
                Ok(Some(s)) => s,
                _ => bail!("no terminal status for generation {generation}; saw {phases:?}"),
            };
            if s.event.generation != Some(generation)
                || phases.iter().any(|p: &Seen| p.event.phase == s.event.phase)
            {
                continue;
            }
            let phase = s.event.phase;
            if let Phase::Failed | Phase::RolledBack | Phase::Refused = phase {
                bail!(
                    "generation {generation} ended {phase:?}: {:?} {:?}",
                    s.event.detail,
                    s.event.log_tail
                );
            }
            phases.push(s);
            if phase == Phase::Running {
                return Ok(phases);
            }
        }
    }
}

/// One timed deploy, in milliseconds from publishing the desired state. The phase times are
/// the events' own timestamps (the device's wall clock: the same machine here, 1 ms
/// resolution); `running_seen` is when the service client received `running`.
struct Timing {
    received: f64,
    fetched: f64,
    verifying: f64,
    running: f64,
    running_seen: f64,
}

fn timing((t0, t0_ms): (Instant, u64), phases: &[Seen]) -> Timing {
    let at = |phase: Phase| {
        phases
            .iter()
            .find(|s| s.event.phase == phase)
            .map(|s| s.event.time as f64 - t0_ms as f64)
            .unwrap_or(f64::NAN)
    };
    let running_seen = phases
        .iter()
        .find(|s| s.event.phase == Phase::Running)
        .map(|s| s.at.duration_since(t0).as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN);
    Timing {
        received: at(Phase::Received),
        fetched: at(Phase::Fetched),
        verifying: at(Phase::Verifying),
        running: at(Phase::Running),
        running_seen,
    }
}

/// Kills a child this benchmark started (by pid) and reaps it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mib(kb: u64) -> String {
    format!("{:.2} MiB", kb as f64 / 1024.0)
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cpus} CPUs, {model}, {:.1} GiB RAM",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}

/// One process of the idle table: its memory at the end of the idle window and its context
/// switches and CPU time during it.
struct Row {
    name: String,
    mem: procfs::Memory,
    switches_per_min: f64,
    cpu_ms: u64,
}

/// Everything one run measured.
struct RunFigures {
    connect_ms: f64,
    first: Timing,
    timings: Vec<Timing>,
    after_deploys: procfs::Memory,
    /// The manager first, then Mender's client (when it ran), then the baselines.
    rows: Vec<Row>,
    mappings: Vec<(String, u64)>,
    notes: Vec<String>,
}

/// The processes measured over the idle window, by pid.
struct Idle {
    name: String,
    pid: u32,
    start: procfs::Activity,
}

async fn run(args: Args) -> Result<()> {
    let bin = manager_binary(&args)?;
    hammer_certs::tls::install_default_provider();
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        eprintln!("== run {n} of {}", args.runs);
        runs.push(one_run(&args, &bin).await?);
    }
    report(&args, &bin, &runs)
}

async fn one_run(args: &Args, bin: &Path) -> Result<RunFigures> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_path_buf();
    let mut notes = Vec::new();

    // The broker: fleet CA, server certificate, mTLS front door on loopback.
    let ca = Ca::create("bench fleet")?;
    let ca_pem = ca.cert().pem().to_owned();
    let server = ca.issue_server(
        &["localhost".to_owned()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        DAY,
    )?;
    let mut config = BrokerConfig::new(
        ca_pem.clone(),
        server.cert_pem,
        server.key_pem.context("server key")?,
        Arc::new(RevocationList::in_memory()),
    );
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let broker = Broker::start(config).await?;
    let port = broker.local_addr().port();

    // The service client, over mTLS with a service certificate.
    let svc_cert = ca.issue_service("svc", DAY)?;
    let key = SigningKeyPair::generate()?;
    let mut o = MqttOptions::new("svc", "127.0.0.1", port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(hammer_certs::tls::client_config(
            &ca_pem,
            &svc_cert.cert_pem,
            svc_cert.key_pem.as_ref().context("service key")?,
        )?),
    )));
    let public_key = key.public().to_hex();
    let mut svc = Service::connect(o, key).await?;

    // The data dir, written as enrollment writes it.
    let data = root.join("data");
    let (dev_key, csr) = hammer_certs::new_device_key_and_csr()?;
    let cert = ca.sign_device_csr(&csr, DEVICE, OWNER, DAY)?;
    hammer_manager::enroll::write_data_dir(
        &DataDir::new(&data),
        &ManagerConfigFile {
            device_id: DEVICE.into(),
            owner: OWNER.into(),
            broker_url: format!("mqtts://127.0.0.1:{port}"),
            service_public_key: public_key,
            insecure_plain_mqtt_for_tests: false,
            git_ca_file: None,
        },
        &ca_pem,
        &cert.cert_pem,
        &dev_key,
        &SealingKeyPair::generate()?,
        false,
    )?;

    // The app repo.
    let repo = root.join("repo");
    std::fs::create_dir(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    let script = repo.join("start.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 100000\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(repo.join("VERSION"), "0\n")?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "-q", "-m", "v0"])?;

    // Mender's client, started with the manager so that both are as old at the idle window.
    let mender_dir = root.join("mender");
    let mender = if args.mender {
        let started = tokio::task::block_in_place(|| mender::start(&mender_dir));
        match started {
            Ok(m) => Some(m),
            Err(why) => {
                eprintln!("{why}");
                notes.push(why.to_string());
                None
            }
        }
    } else {
        None
    };

    // The manager.
    let log_path = root.join("manager.log");
    let log = std::fs::File::create(&log_path)?;
    // As root the manager runs the app as `hammer-app` unless told otherwise; the bench's app
    // is `sleep`, so root running it changes nothing measured and needs no extra user.
    let mut manager_cmd = Command::new(bin);
    manager_cmd.arg("run");
    if nix::unistd::geteuid().is_root() {
        manager_cmd.args(["--app-user", "root"]);
    }
    let manager = Reaped(
        manager_cmd
            .args(["--stop-grace", "2", "--health-interval"])
            .arg(wakeups().1.as_secs().to_string())
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let pid = manager.0.id();
    let started = Instant::now();
    svc.wait_online().await?;
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!("manager pid {pid} online after {connect_ms:.0} ms");

    let desired = |generation: u64| DesiredState {
        v: PROTOCOL_VERSION,
        device_id: DEVICE.into(),
        owner: OWNER.into(),
        generation,
        deployment_id: format!("bench{generation}"),
        repo_url: format!("file://{}", repo.display()),
        git_ref: "main".into(),
        commit: None,
        start: "./start.sh".into(),
        env: Default::default(),
        health_window_secs: args.health_window,
        health_cmd: None,
        run_state: RunState::Running,
        issued_at: now_ms(),
        install: None,
        full_history: false,
    };

    // First deploy (clone into an empty mirror).
    let t0 = svc.publish_desired(&desired(1)).await?;
    let first = timing(t0, &svc.deployment(1).await?);
    eprintln!("generation 1 running after {:.0} ms", first.running);

    // New commits, one deploy each.
    let mut timings = Vec::new();
    for i in 0..args.deploys {
        let generation = 2 + i as u64;
        std::fs::write(repo.join("VERSION"), format!("{generation}\n"))?;
        git(&repo, &["commit", "-q", "-am", &format!("v{generation}")])?;
        let t0 = svc.publish_desired(&desired(generation)).await?;
        let t = timing(t0, &svc.deployment(generation).await?);
        eprintln!("generation {generation} running after {:.0} ms", t.running);
        timings.push(t);
    }
    let after_deploys = procfs::memory(pid)?;

    // Idle, with the two baselines started now and everything measured at the same moments.
    let sleep_base = Reaped(
        Command::new("sleep")
            .arg("100000")
            .stdin(Stdio::null())
            .spawn()?,
    );
    let rust_base = Reaped(
        Command::new(std::env::current_exe()?)
            .arg("--baseline-idle")
            .stdin(Stdio::null())
            .spawn()?,
    );
    let mut idle: Vec<(String, u32)> =
        vec![(format!("hammer-manager run, profile {}", args.profile), pid)];
    if let Some(m) = &mender {
        idle.push((
            "Mender client 3.4 daemon, server down".to_owned(),
            m.process.0.id(),
        ));
    }
    idle.push((
        "baseline: idle Tokio current-thread (Rust)".to_owned(),
        rust_base.0.id(),
    ));
    idle.push(("baseline: /bin/sleep (C)".to_owned(), sleep_base.0.id()));
    // The last deploy still finishes for about a second after its `running` (pruning the old
    // release, the blocking thread going idle): deploy work, not idle wake-ups.
    eprintln!("settling for {} s …", args.settle_secs);
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    eprintln!("idle for {} s …", args.idle_secs);
    let idle: Vec<Idle> = idle
        .into_iter()
        .map(|(name, pid)| Idle {
            name,
            pid,
            start: procfs::activity(pid),
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let mut rows = Vec::new();
    for p in &idle {
        let end = procfs::activity(p.pid);
        let mem = procfs::memory(p.pid).with_context(|| format!("{} exited", p.name))?;
        rows.push(Row {
            name: p.name.clone(),
            mem,
            switches_per_min: p.start.switches_until(&end) as f64 * 60.0 / args.idle_secs as f64,
            cpu_ms: end.cpu_ms.saturating_sub(p.start.cpu_ms),
        });
    }
    let mappings = procfs::rss_by_mapping(pid);
    if let Ok(ev) = svc.status.try_recv() {
        notes.push(format!(
            "a status event arrived while idle: {:?} {:?}",
            ev.event.phase, ev.event.detail
        ));
    }
    if let Some(m) = &mender {
        let log = std::fs::read_to_string(&m.log).unwrap_or_default();
        let failed_auth = log
            .lines()
            .filter(|l| l.contains("Failed to authorize"))
            .count();
        notes.push(format!(
            "Mender's client polled {} (nothing listens there) and logged {failed_auth} failed \
             authorizations; its log: {}",
            m.server,
            if args.keep {
                m.log.display().to_string()
            } else {
                "--keep keeps it".to_owned()
            }
        ));
    }

    // Stop the manager cleanly (SIGTERM stops the app too), then the rest.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut manager = manager;
    while manager.0.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(manager);
    drop(mender);
    drop(sleep_base);
    drop(rust_base);
    broker.shutdown();
    if args.keep {
        let kept = tmp.keep();
        notes.push(format!("kept {}", kept.display()));
    }
    Ok(RunFigures {
        connect_ms,
        first,
        timings,
        after_deploys,
        rows,
        mappings,
        notes,
    })
}

/// The manager's own periodic work while idle: the MQTT keep-alive and the health report
/// intervals (the agent's defaults; the bench passes the health interval explicitly).
fn wakeups() -> (Duration, Duration) {
    let o = AgentOptions::new(PathBuf::new());
    (o.keep_alive, o.health_interval)
}

/// `median (min-max)` of `v` through `f`, or the one value.
fn agg(v: &[f64], f: impl Fn(f64) -> String) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    let (lo, med, hi) = stats(&mut v);
    if v.len() == 1 {
        f(med)
    } else {
        format!("{} ({}-{})", f(med), f(lo), f(hi))
    }
}

fn mib_num(kb: f64) -> String {
    format!("{:.2}", kb / 1024.0)
}

/// The stripped size of `bin` (a stripped copy; the profiles already strip).
fn stripped_size(bin: &Path, scratch: &Path) -> Option<u64> {
    let out = scratch.join("stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(bin)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let size = if ok {
        std::fs::metadata(&out).ok().map(|m| m.len())
    } else {
        None
    };
    let _ = std::fs::remove_file(&out);
    size
}

fn report(args: &Args, bin: &Path, runs: &[RunFigures]) -> Result<()> {
    let n = runs.len();
    let last = runs.last().ok_or_else(|| anyhow!("no run"))?;
    let window_ms = f64::from(args.health_window) * 1000.0;
    println!();
    println!("== hammer-manager benchmark ==");
    println!("machine        {}", machine());
    println!(
        "binary         {} (profile {})",
        bin.display(),
        args.profile
    );
    println!(
        "setup          hammer-broker in-process on 127.0.0.1 (mTLS), app `exec sleep 100000`, git repo file://, health window {} s",
        args.health_window
    );
    println!(
        "runs           {n}{}",
        if n > 1 {
            "; figures are median (min-max) over the runs; the machine may be shared with builds"
        } else {
            "; the machine may be shared with builds (--runs 3 for median and range)"
        }
    );
    let connect: Vec<f64> = runs.iter().map(|r| r.connect_ms).collect();
    println!(
        "connect        process start → presence online: {} ms",
        agg(&connect, |v| format!("{v:.0}"))
    );
    println!();
    println!("Deploy latency, ms from publishing the signed desired state");
    println!("  (phase times: the status events' timestamps, ms resolution; \"seen\": when the service client received it)");
    println!("  {:<38} {:>9} {:>9} {:>9}", "", "min", "median", "max");
    let timings: Vec<&Timing> = runs.iter().flat_map(|r| &r.timings).collect();
    let row = |name: &str, f: &dyn Fn(&Timing) -> f64| {
        let mut v: Vec<f64> = timings.iter().map(|t| f(t)).collect();
        if v.is_empty() {
            return;
        }
        let (lo, med, hi) = stats(&mut v);
        println!("  {name:<38} {lo:>9.1} {med:>9.1} {hi:>9.1}");
    };
    println!("  new commit, n = {} ({n} run(s)):", timings.len());
    row("desired → received", &|t| t.received);
    row("desired → fetched", &|t| t.fetched);
    row("desired → verifying (app started)", &|t| t.verifying);
    row("desired → running (raw)", &|t| t.running);
    row("desired → running − health window", &|t| {
        t.running - window_ms
    });
    row("desired → running seen by the service", &|t| {
        t.running_seen
    });
    row("  … − health window", &|t| t.running_seen - window_ms);
    let first = |f: &dyn Fn(&Timing) -> f64| {
        let v: Vec<f64> = runs.iter().map(|r| f(&r.first)).collect();
        agg(&v, |x| format!("{x:.0}"))
    };
    println!(
        "  first deploy (clone): received {}, fetched {}, verifying {}, running {}; minus window: {} (seen {})",
        first(&|t| t.received),
        first(&|t| t.fetched),
        first(&|t| t.verifying),
        first(&|t| t.running),
        first(&|t| t.running - window_ms),
        first(&|t| t.running_seen - window_ms),
    );

    println!();
    println!(
        "Idle footprint after {} s idle (connected, app running), all rows measured at the same moments",
        args.idle_secs
    );
    println!("  (/proc/<pid>/status; MiB; ctxt sw/min: voluntary + involuntary context switches of all threads during the idle window, per minute)");
    println!(
        "  {:<44} {:>20} {:>20} {:>20} {:>20} {:>7} {:>16}",
        "process", "VmRSS", "VmHWM", "RssAnon", "RssFile", "threads", "ctxt sw/min"
    );
    let print_row = |name: &str, mems: &[&procfs::Memory], sw: Option<Vec<f64>>| {
        let col = |f: &dyn Fn(&procfs::Memory) -> u64| {
            let v: Vec<f64> = mems.iter().map(|m| f(m) as f64).collect();
            agg(&v, mib_num)
        };
        let threads: Vec<f64> = mems.iter().map(|m| m.threads as f64).collect();
        println!(
            "  {name:<44} {:>20} {:>20} {:>20} {:>20} {:>7} {:>16}",
            col(&|m| m.rss_kb),
            col(&|m| m.hwm_kb),
            col(&|m| m.rss_anon_kb),
            col(&|m| m.rss_file_kb),
            agg(&threads, |v| format!("{v:.0}")),
            sw.map(|v| agg(&v, |x| format!("{x:.0}")))
                .unwrap_or_else(|| "-".into()),
        );
    };
    let after: Vec<&procfs::Memory> = runs.iter().map(|r| &r.after_deploys).collect();
    print_row("hammer-manager run, right after the deploys", &after, None);
    let names: Vec<&str> = last.rows.iter().map(|r| r.name.as_str()).collect();
    let rows_named = |name: &str| -> Vec<&Row> {
        runs.iter()
            .flat_map(|r| r.rows.iter().filter(|row| row.name == name))
            .collect()
    };
    for name in &names {
        let rows = rows_named(name);
        let mems: Vec<&procfs::Memory> = rows.iter().map(|r| &r.mem).collect();
        let sw: Vec<f64> = rows.iter().map(|r| r.switches_per_min).collect();
        print_row(name, &mems, Some(sw));
    }
    let median_of = |name: &str, f: &dyn Fn(&Row) -> f64| -> Option<f64> {
        let mut v: Vec<f64> = rows_named(name).iter().map(|r| f(r)).collect();
        if v.is_empty() {
            return None;
        }
        Some(stats(&mut v).1)
    };
    let manager_name = names[0];
    let manager_rss = median_of(manager_name, &|r| r.mem.rss_kb as f64).unwrap_or(0.0);
    if let Some(rust) = median_of("baseline: idle Tokio current-thread (Rust)", &|r| {
        r.mem.rss_kb as f64
    }) {
        println!(
            "  manager / Rust baseline: {:.1}x ({} MiB above it)",
            manager_rss / rust.max(1.0),
            mib_num(manager_rss - rust)
        );
    }
    if let Some(m) = median_of("Mender client 3.4 daemon, server down", &|r| {
        r.mem.rss_kb as f64
    }) {
        println!(
            "  manager / Mender client: {:.2}x ({} MiB below it)",
            manager_rss / m.max(1.0),
            mib_num(m - manager_rss)
        );
    }
    let cpu: Vec<f64> = rows_named(manager_name)
        .iter()
        .map(|r| r.cpu_ms as f64)
        .collect();
    println!(
        "  manager CPU while idle: {} ms in {} s",
        agg(&cpu, |v| format!("{v:.0}")),
        args.idle_secs
    );
    let (keep_alive, health) = wakeups();
    let pings_per_min = 60.0 / keep_alive.as_secs_f64();
    let timers_per_min = pings_per_min + 60.0 / health.as_secs_f64();
    // Tokio's timer wheel files a 30 s deadline two levels up and wakes the thread at each
    // level it cascades down through before the deadline itself: 3 wake-ups per expiry. Two
    // timers of one period that fall together share them.
    let together = 3.0 * timers_per_min / 2.0 + pings_per_min;
    let apart = 3.0 * timers_per_min + pings_per_min;
    println!(
        "  manager's own wake-ups should be: an MQTT keep-alive ping every {} s (rumqttc pings on that interval whatever the traffic) and a health report every {} s (--health-interval, QoS 0: nothing answers it): {:.0} timer expiries and {:.0} PINGRESPs a minute; Tokio's timer wheel wakes the thread 3 times per expiry of a 30 s timer, so {:.0} context switches a minute when the two timers fall together, {:.0} when they do not; more is something else (the window starts {} s after the last deploy's `running`)",
        keep_alive.as_secs(),
        health.as_secs(),
        timers_per_min,
        pings_per_min,
        together,
        apart,
        args.settle_secs
    );
    if let Some(r) = last.rows.first() {
        println!(
            "  manager threads (last run): {}",
            r.mem.thread_names.join(", ")
        );
    }
    println!(
        "  manager resident by mapping (last run): {}",
        last.mappings
            .iter()
            .take(6)
            .map(|(n, kb)| format!("{n} {}", mib(*kb)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, r) in runs.iter().enumerate() {
        for note in &r.notes {
            println!("  note (run {}): {note}", i + 1);
        }
    }

    // Binary sizes of both profiles (and of --manager's binary).
    println!();
    println!("Binary size, stripped (a stripped copy; both profiles already strip)");
    let scratch = tempfile::tempdir()?;
    let target = target_dir()?;
    let mut sizes = Vec::new();
    for profile in ["release", "release-device"] {
        let p = target.join(profile).join("hammer-manager");
        match p
            .exists()
            .then(|| stripped_size(&p, scratch.path()))
            .flatten()
        {
            Some(s) => {
                println!(
                    "  {:<16} {:>10} bytes ({:.2} MiB)  {}",
                    profile,
                    s,
                    s as f64 / 1048576.0,
                    p.display()
                );
                sizes.push(format!("{profile} {:.2} MiB", s as f64 / 1048576.0));
            }
            None => println!(
                "  {profile:<16} not built: cargo build --profile {profile} -p hammer-manager"
            ),
        }
    }
    if args.manager.is_some() {
        if let Some(s) = stripped_size(bin, scratch.path()) {
            println!(
                "  {:<16} {:>10} bytes ({:.2} MiB)  {}",
                "--manager",
                s,
                s as f64 / 1048576.0,
                bin.display()
            );
        }
    }

    // The verdict against issue 17's bound.
    const BOUND_MIB: f64 = 8.0;
    const AIM_MIB: f64 = 5.0;
    let rss_mib = manager_rss / 1024.0;
    println!();
    println!(
        "verdict: hammer-manager (profile {}) idle VmRSS {:.2} MiB{} is {} issue 17's bound of {BOUND_MIB} MiB (aim {AIM_MIB} MiB){}; stripped binaries: {}",
        args.profile,
        rss_mib,
        if n > 1 { " (median)" } else { "" },
        if rss_mib <= BOUND_MIB { "WITHIN" } else { "OVER" },
        if rss_mib <= BOUND_MIB {
            String::new()
        } else {
            format!(" by {:.2} MiB", rss_mib - BOUND_MIB)
        },
        if sizes.is_empty() {
            "none built".to_owned()
        } else {
            sizes.join(", ")
        }
    );
    Ok(())
}
