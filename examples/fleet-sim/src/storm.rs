//! The reconnect storm: a rollout is started, the service process is stopped mid-rollout
//! (SIGKILL by default) and started again on the same data dir and ports. Measured: the time
//! until every device is back online, and until the new service handled every device's
//! presence (`hammer_resyncs_total` reached the fleet size: each device was sent what differs
//! — its desired state, its ack — or found in sync and sent nothing); checked: every status
//! event a device sent is stored (the sum of the devices' histories) and acked.

use crate::bench::Fleet;
use crate::fleet;
use crate::probe::Probe;
use crate::service_proc::{ServeSpec, ServiceProc, StopSignal};
use anyhow::Context;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use hammer_protocol::api::DeploymentState;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Figures of one storm, each from the stop signal.
#[derive(Debug, Clone)]
pub struct StormReport {
    pub devices: u64,
    /// The process was gone.
    pub stopped: Duration,
    /// The restarted service answered `/healthz`.
    pub restarted: Duration,
    /// Every device was back online.
    pub online: Duration,
    /// Every device was back and its presence handled by the new service (resynced).
    pub confirmed: Duration,
    /// Of those resyncs: devices found in sync (sent nothing), and sent their desired state.
    pub in_sync: u64,
    pub desired_sent: u64,
    pub events_sent: u64,
    pub events_stored: u64,
}

/// Runs the storm on `f` and returns the restarted service and the storm's figures.
pub async fn run(
    svc: ServiceProc,
    spec: &ServeSpec,
    f: &Fleet,
    sig: StopSignal,
) -> anyhow::Result<(ServiceProc, StormReport)> {
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
    let mut probe = Probe::new(svc.pid(), None);
    let t0 = Instant::now();
    let (_, clean) = svc.stop(sig).await?;
    let stopped = t0.elapsed();
    s.confirmed.store(0, Relaxed);
    let svc = ServiceProc::start(spec)
        .await
        .context("cannot restart the service on the same data dir and ports")?;
    probe.service_restarted(svc.pid());
    let started = t0.elapsed();
    let admin = f.admin.with_token(&svc.admin_token).fresh()?;
    fleet::wait_for(
        Duration::from_secs(600),
        "every device to be back online",
        || s.online.load(Relaxed) >= n,
    )
    .await
    .with_context(|| s.line())?;
    let online = t0.elapsed();
    let end = Instant::now() + Duration::from_secs(600);
    while admin.metric("hammer_resyncs_total").await? < n {
        if Instant::now() > end {
            anyhow::bail!(
                "the restarted service did not handle every device's presence within 600 s ({})",
                s.line()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let confirmed = t0.elapsed();
    let in_sync = admin.metric("hammer_resyncs_in_sync_total").await?;
    let desired_sent = admin.metric("hammer_resyncs_desired_total").await?;
    println!(
        "reconnect storm, {n} devices, service process stopped with {}{} mid-rollout: gone after {:.2} s, restarted (same data dir and ports) and answering /healthz {:.2} s later; all online after {:.2} s, every device resynced by the new service after {:.2} s (from the stop)",
        sig.name(),
        if clean { "" } else { " (unclean exit)" },
        stopped.as_secs_f64(),
        (started - stopped).as_secs_f64(),
        online.as_secs_f64(),
        confirmed.as_secs_f64()
    );
    let resyncs = admin.metric("hammer_resyncs_total").await?;
    let refused = admin
        .metric("hammer_broker_refusals_total{reason=\"limit\"}")
        .await
        .unwrap_or(0);
    println!(
        "  resyncs {resyncs} (presences handled; more than the fleet when a device reconnected twice): {in_sync} in sync (sent nothing), {desired_sent} sent their desired state; connections refused by the broker's admission (per-address limits) {refused}"
    );
    probe.print("resources during the storm");
    let user = f.user.fresh()?;
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
    let end = Instant::now() + Duration::from_secs(300);
    let d = loop {
        let d = user.deployment(&id).await?;
        if d.state != DeploymentState::Running {
            break d;
        }
        if Instant::now() > end {
            anyhow::bail!("deployment {id} still running 300 s after the storm");
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
    if stored as u64 != sent || unacked > 0 {
        anyhow::bail!(
            "the storm lost status events: sent {sent}, stored {stored}, unacked {unacked}"
        );
    }
    let report = StormReport {
        devices: n,
        stopped,
        restarted: started,
        online,
        confirmed,
        in_sync,
        desired_sent,
        events_sent: sent,
        events_stored: stored as u64,
    };
    Ok((svc, report))
}
