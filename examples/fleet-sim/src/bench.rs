//! The benchmark's building blocks: [`bring_up`] a fleet on a running service (provision,
//! connect, set up), and [`rollout`]: one measured rollout (create a deployment to the whole
//! fleet, wait until every device published its terminal phase and the service marked the
//! deployment finished).

use crate::api::Api;
use crate::device::{Credentials, SimConfig, SimDevice};
use crate::fleet::{self, FleetStats};
use crate::percentile;
use crate::probe::Probe;
use crate::procstat::rss_kib;
use crate::service_proc::ServiceProc;
use hammer_protocol::api::DeploymentState;
use hammer_protocol::{Phase, WireName};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fleet of simulated devices provisioned, connected and set up on one service.
pub struct Fleet {
    /// Admin client (metrics).
    pub admin: Api,
    /// The fleet owner's client (deployments, history).
    pub user: Api,
    /// The fleet owner's bearer token (for a client of another replica).
    pub token: String,
    /// The run's tag value: every device has `fleet=<run>`.
    pub run: String,
    pub creds: Vec<Credentials>,
    pub devices: Vec<SimDevice>,
    pub stats: Arc<FleetStats>,
}

/// Provisions `n` devices on `svc` (with its admin token), connects them at `ramp` per second
/// (0 = 256 at a time), sends each its setup and waits for every confirmation. The CPU the
/// service, the simulator and the external broker `broker_pid` (if any) spent connecting is
/// printed.
pub async fn bring_up(
    label: &str,
    svc: &ServiceProc,
    n: usize,
    ramp: f64,
    cfg: Arc<SimConfig>,
    broker_pid: Option<u32>,
) -> anyhow::Result<Fleet> {
    let admin = Api::new(&svc.http_url, &svc.admin_token)?;
    let run = format!("{label}{:x}", hammer_protocol::now_ms());
    let t = Instant::now();
    let (token, creds) = fleet::provision(&admin, &run, n, 8).await?;
    println!(
        "[{label}] provisioned {} devices in {:.1} s",
        creds.len(),
        t.elapsed().as_secs_f64()
    );
    let user = admin.with_token(&token);
    let stats = Arc::new(FleetStats::default());
    let probe = Probe::new(svc.pid(), broker_pid);
    let t = Instant::now();
    let devices = fleet::connect_all(
        creds.clone(),
        None,
        ramp,
        cfg,
        stats.clone(),
        Duration::from_secs(300),
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "[{label}] connected {} devices in {secs:.1} s ({:.0}/s); service RSS {} MiB, simulator RSS {} MiB",
        devices.len(),
        devices.len() as f64 / secs,
        rss_kib(&svc.pid().to_string()) / 1024,
        rss_kib("self") / 1024
    );
    probe.print("resources while connecting");
    let t = Instant::now();
    fleet::setup_all(&user, &creds, &stats, Duration::from_secs(600)).await?;
    println!(
        "[{label}] setup confirmed by every device in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(Fleet {
        admin,
        user,
        token,
        run,
        creds,
        devices,
        stats,
    })
}

/// One rollout to the whole fleet, printed with the CPU and RSS of the service (`svc_pid`),
/// the simulator and an external broker (`ext_pid`) during it.
pub async fn measured(
    label: &str,
    f: &Fleet,
    max_in_flight: Option<u32>,
    svc_pid: u32,
    ext_pid: Option<u32>,
) -> anyhow::Result<RolloutReport> {
    let probe = Probe::new(svc_pid, ext_pid);
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

/// Figures of one rollout.
#[derive(Debug, Clone)]
pub struct RolloutReport {
    pub devices: usize,
    pub max_in_flight: Option<u32>,
    /// Deployment requested (POST sent) → last device published its terminal phase.
    pub all_done: Duration,
    /// Deployment created → the service shows the deployment finished.
    pub service_done: Duration,
    pub running: usize,
    pub rolled_back: usize,
    /// Per device, deployment created → terminal phase published (ms): p50, p99.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Per device, desired state received → terminal phase (ms): p50, p99.
    pub device_p50_ms: f64,
    pub device_p99_ms: f64,
    /// Status events stored by the service during the rollout, and per second.
    pub events_stored: u64,
    pub events_per_sec: f64,
    pub state: String,
}

impl RolloutReport {
    pub fn print(&self, label: &str) {
        println!(
            "{label}: {} devices, max_in_flight {}: all terminal in {:.2} s (service: deployment {} after {:.2} s); running {}, rolled_back {}; per device from create p50 {:.0} ms p99 {:.0} ms; on device p50 {:.0} ms p99 {:.0} ms; {} status events stored, {:.0}/s",
            self.devices,
            self.max_in_flight.map_or("all".into(), |m| m.to_string()),
            self.all_done.as_secs_f64(),
            self.state,
            self.service_done.as_secs_f64(),
            self.running,
            self.rolled_back,
            self.p50_ms,
            self.p99_ms,
            self.device_p50_ms,
            self.device_p99_ms,
            self.events_stored,
            self.events_per_sec,
        );
    }
}

/// Deploys to `fleet=<run>` and measures until every one of `n` devices finished.
pub async fn rollout(
    user: &Api,
    admin: &Api,
    run: &str,
    n: usize,
    max_in_flight: Option<u32>,
    stats: &FleetStats,
    timeout: Duration,
) -> anyhow::Result<RolloutReport> {
    stats.finishes(true);
    let stored_before = admin
        .metric("hammer_status_events_ingested_total")
        .await
        .unwrap_or(0);
    let t0 = Instant::now();
    let id = user.deploy(&format!("fleet={run}"), max_in_flight).await?;
    let created = t0;
    let end = t0 + timeout;
    loop {
        let done = stats
            .finishes
            .lock()
            .map(|f| {
                f.iter()
                    .map(|f| f.index)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .unwrap_or(0);
        if done >= n {
            break;
        }
        if Instant::now() > end {
            anyhow::bail!(
                "rollout {id}: only {done} of {n} devices finished within {timeout:?} ({})",
                stats.line()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_done = created.elapsed();
    let state = loop {
        let d = user.deployment(&id).await?;
        if d.state != DeploymentState::Running {
            break d.state;
        }
        if Instant::now() > end {
            anyhow::bail!("deployment {id} still running after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let service_done = created.elapsed();
    // Let the last events be stored and acked.
    let stored_after = {
        let mut last = 0;
        for _ in 0..100 {
            last = admin
                .metric("hammer_status_events_ingested_total")
                .await
                .unwrap_or(0);
            if stats.events_acked.load(Relaxed) >= stats.events_sent.load(Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    };
    // A device may finish more than once (a republished desired state); its last finish counts.
    let fin = {
        let mut last = std::collections::BTreeMap::new();
        for f in stats.finishes(false) {
            last.insert(f.index, f);
        }
        last.into_values().collect::<Vec<_>>()
    };
    let mut from_create: Vec<f64> = fin
        .iter()
        .map(|f| f.at.saturating_duration_since(created).as_secs_f64() * 1000.0)
        .collect();
    let mut on_device: Vec<f64> = fin
        .iter()
        .map(|f| (f.at - f.received).as_secs_f64() * 1000.0)
        .collect();
    from_create.sort_by(f64::total_cmp);
    on_device.sort_by(f64::total_cmp);
    let events_stored = stored_after.saturating_sub(stored_before);
    Ok(RolloutReport {
        devices: n,
        max_in_flight,
        all_done,
        service_done,
        running: fin.iter().filter(|f| f.phase == Phase::Running).count(),
        rolled_back: fin.iter().filter(|f| f.phase == Phase::RolledBack).count(),
        p50_ms: percentile(&from_create, 50.0),
        p99_ms: percentile(&from_create, 99.0),
        device_p50_ms: percentile(&on_device, 50.0),
        device_p99_ms: percentile(&on_device, 99.0),
        events_stored,
        events_per_sec: events_stored as f64 / all_done.as_secs_f64().max(1e-3),
        state: state.wire_name().to_owned(),
    })
}
