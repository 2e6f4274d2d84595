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
//! 6. waits `--idle-secs N` (default 60) and reads the manager's VmRSS / VmHWM / threads from
//!    /proc, next to two baselines measured at the same moment: `/bin/sleep` (a C program
//!    doing nothing) and this example re-run as `--baseline-idle` (a Rust binary with a Tokio
//!    current-thread runtime doing nothing, built with the same profile as this example);
//! 7. prints the binary size as built and after `strip` of a copy.

use anyhow::{anyhow, bail, Context, Result};
use hammer_broker::{Broker, BrokerConfig};
use hammer_certs::{Ca, RevocationList};
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

const USAGE: &str = "usage: manager_bench [--idle-secs N] [--deploys N] [--health-window S] \
[--profile NAME] [--manager PATH] [--no-build] [--keep]
  --idle-secs N      idle time before reading RSS (default 60)
  --deploys N        timed deploys of new commits after the first one (default 5)
  --health-window S  health window of each desired state, seconds (default 1)
  --profile NAME     cargo profile of the manager binary (default release)
  --manager PATH     measure this binary instead (no build)
  --no-build         do not run cargo build; the binary must exist
  --keep             keep the temporary directory (its path is printed)";

struct Args {
    idle_secs: u64,
    deploys: usize,
    health_window: u32,
    profile: String,
    manager: Option<PathBuf>,
    build: bool,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        idle_secs: 60,
        deploys: 5,
        health_window: 1,
        profile: "release".into(),
        manager: None,
        build: true,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--idle-secs" => a.idle_secs = val("--idle-secs")?.parse()?,
            "--deploys" => a.deploys = val("--deploys")?.parse()?,
            "--health-window" => a.health_window = val("--health-window")?.parse()?,
            "--profile" => a.profile = val("--profile")?,
            "--manager" => a.manager = Some(val("--manager")?.into()),
            "--no-build" => a.build = false,
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
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

/// `target/<profile>/hammer-manager`, built unless told otherwise.
fn manager_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.manager {
        return Ok(p.clone());
    }
    // This example lives in target/<its profile>/examples/manager_bench.
    let exe = std::env::current_exe()?;
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot find the target dir from {}", exe.display()))?
        .to_path_buf();
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

/// Figures from /proc/<pid>/status and /proc/<pid>/task.
struct ProcFigures {
    rss_kb: u64,
    hwm_kb: u64,
    rss_anon_kb: u64,
    rss_file_kb: u64,
    threads: u64,
    thread_names: Vec<String>,
}

fn proc_figures(pid: u32) -> Result<ProcFigures> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut thread_names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    thread_names.sort();
    Ok(ProcFigures {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        rss_anon_kb: field("RssAnon:"),
        rss_file_kb: field("RssFile:"),
        threads: field("Threads:"),
        thread_names,
    })
}

/// CPU time (ms, user + system) and voluntary context switches (all threads) so far.
fn cpu_and_wakeups(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15 (in clock ticks).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            switches += st
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (ticks * 1000 / hz, switches)
}

/// Resident kB by mapping name from /proc/<pid>/smaps, largest first.
fn rss_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut name = String::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // address perms offset dev inode [path]
            let path = f.nth(4).unwrap_or("[anon]");
            name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.to_owned());
        } else if first == "Rss:" {
            let kb: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *by.entry(name.clone()).or_default() += kb;
        }
    }
    let mut v: Vec<(String, u64)> = by.into_iter().filter(|(_, kb)| *kb > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
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

async fn run(args: Args) -> Result<()> {
    let bin = manager_binary(&args)?;
    hammer_certs::tls::install_default_provider();
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_path_buf();

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

    // The manager.
    let log_path = root.join("manager.log");
    let log = std::fs::File::create(&log_path)?;
    let manager = Reaped(
        Command::new(&bin)
            .args(["run", "--stop-grace", "2", "--data-dir"])
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

    let window_ms = f64::from(args.health_window) * 1000.0;
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
    let after_deploys = proc_figures(pid)?;

    // Idle, with the two baselines started now and measured at the same moment.
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
    eprintln!("idle for {} s …", args.idle_secs);
    let (cpu0, sw0) = cpu_and_wakeups(pid);
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let (cpu1, sw1) = cpu_and_wakeups(pid);
    let idle = proc_figures(pid)?;
    let mappings = rss_by_mapping(pid);
    let base_sleep = proc_figures(sleep_base.0.id())?;
    let base_rust = proc_figures(rust_base.0.id())?;
    let still = svc.status.try_recv().ok();

    // Binary size, as built and stripped.
    let size = std::fs::metadata(&bin)?.len();
    let stripped_path = root.join("hammer-manager.stripped");
    let strip_ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped_path)
        .arg(&bin)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let stripped = if strip_ok {
        Some(std::fs::metadata(&stripped_path)?.len())
    } else {
        None
    };

    // Report.
    println!();
    println!("== hammer-manager benchmark ==");
    println!("machine        {}", machine());
    println!(
        "binary         {} (profile {})",
        bin.display(),
        args.profile
    );
    println!(
        "setup          hammer-broker in-process on 127.0.0.1:{port} (mTLS), app `exec sleep 100000`, git repo file://, health window {} s",
        args.health_window
    );
    println!("connect        process start → presence online: {connect_ms:.0} ms");
    println!();
    println!("Deploy latency, ms from publishing the signed desired state");
    println!("  (phase times: the status events' timestamps, ms resolution; \"seen\": when the service client received it)");
    println!("  {:<38} {:>9} {:>9} {:>9}", "", "min", "median", "max");
    let row = |name: &str, f: &dyn Fn(&Timing) -> f64| {
        let mut v: Vec<f64> = timings.iter().map(f).collect();
        if v.is_empty() {
            return;
        }
        let (lo, med, hi) = stats(&mut v);
        println!("  {name:<38} {lo:>9.1} {med:>9.1} {hi:>9.1}");
    };
    println!("  new commit, n = {}:", timings.len());
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
    println!(
        "  first deploy (clone): received {:.0}, fetched {:.0}, verifying {:.0}, running {:.0} (seen {:.1}); minus window: {:.0} (seen {:.1})",
        first.received,
        first.fetched,
        first.verifying,
        first.running,
        first.running_seen,
        first.running - window_ms,
        first.running_seen - window_ms
    );
    println!();
    println!(
        "Memory after {} s idle (connected, app running; /proc/<pid>/status)",
        args.idle_secs
    );
    println!(
        "  {:<44} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "process", "VmRSS", "VmHWM", "RssAnon", "RssFile", "threads"
    );
    let mem = |name: &str, p: &ProcFigures| {
        println!(
            "  {name:<44} {:>10} {:>10} {:>10} {:>10} {:>7}",
            mib(p.rss_kb),
            mib(p.hwm_kb),
            mib(p.rss_anon_kb),
            mib(p.rss_file_kb),
            p.threads
        );
    };
    mem(
        "hammer-manager run (right after the deploys)",
        &after_deploys,
    );
    mem("hammer-manager run (idle)", &idle);
    mem("baseline: idle Tokio current-thread (Rust)", &base_rust);
    mem("baseline: /bin/sleep (C)", &base_sleep);
    println!(
        "  ratio manager / Rust baseline: {:.1}x   manager − Rust baseline: {}",
        idle.rss_kb as f64 / base_rust.rss_kb.max(1) as f64,
        mib(idle.rss_kb.saturating_sub(base_rust.rss_kb))
    );
    println!("  manager threads: {}", idle.thread_names.join(", "));
    println!(
        "  manager while idle: {} ms CPU, {} voluntary context switches (all threads) in {} s",
        cpu1.saturating_sub(cpu0),
        sw1.saturating_sub(sw0),
        args.idle_secs
    );
    println!(
        "  manager resident by mapping: {}",
        mappings
            .iter()
            .take(6)
            .map(|(n, kb)| format!("{n} {}", mib(*kb)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(s) = still {
        println!(
            "  note: a status event arrived while idle: {:?} {:?}",
            s.event.phase, s.event.detail
        );
    }
    println!();
    println!("Binary size");
    println!(
        "  as built   {:>10} bytes ({:.2} MiB)",
        size,
        size as f64 / 1048576.0
    );
    match stripped {
        Some(s) => println!(
            "  stripped   {:>10} bytes ({:.2} MiB){}",
            s,
            s as f64 / 1048576.0,
            if s == size {
                "  (the profile already strips)"
            } else {
                ""
            }
        ),
        None => println!("  stripped   (strip is not available)"),
    }

    // Stop the manager cleanly (SIGTERM stops the app too), then the broker.
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
    drop(sleep_base);
    drop(rust_base);
    broker.shutdown();
    if args.keep {
        let kept = tmp.keep();
        println!("\nkept {}", kept.display());
    }
    Ok(())
}
