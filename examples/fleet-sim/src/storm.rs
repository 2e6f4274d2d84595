//! The reconnect storm: a rollout is started, the service process is stopped mid-rollout
//! (SIGKILL by default) and started again on the same data dir and ports. Measured: the time
//! until every device is back online and confirmed on its desired state; checked: every
//! status event a device sent is stored (the sum of the devices' histories) and acked.

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
    /// Every device was back and confirmed on its desired state.
    pub confirmed: Duration,
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
        "reconnect storm, {n} devices, service process stopped with {}{} mid-rollout: gone after {:.2} s, restarted (same data dir and ports) and answering /healthz {:.2} s later; all online after {:.2} s, all confirmed on their desired state after {:.2} s (from the stop)",
        sig.name(),
        if clean { "" } else { " (unclean exit)" },
        stopped.as_secs_f64(),
        (started - stopped).as_secs_f64(),
        online.as_secs_f64(),
        confirmed.as_secs_f64()
    );
    probe.print("resources during the storm");
    let admin = f.admin.with_token(&svc.admin_token).fresh()?;
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
        events_sent: sent,
        events_stored: stored as u64,
    };
    Ok((svc, report))
}
