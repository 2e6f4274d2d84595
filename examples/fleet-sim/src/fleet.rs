//! A fleet of simulated devices: provisioning through the API, connecting at a ramp rate,
//! shared counters and per-device completion times.

use crate::api::Api;
use crate::device::{self, Credentials, SimConfig, SimDevice};
use anyhow::Context;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use hammer_protocol::Phase;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One device's end of a rollout.
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    pub index: usize,
    pub generation: u64,
    pub phase: Phase,
    /// When the desired state arrived.
    pub received: Instant,
    /// When the terminal phase was published.
    pub at: Instant,
}

/// Counters shared by every device of a fleet.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub online: AtomicU64,
    pub connects: AtomicU64,
    pub configured: AtomicU64,
    pub desired_received: AtomicU64,
    /// Devices that got their current desired state on their current connection.
    pub confirmed: AtomicU64,
    pub events_sent: AtomicU64,
    pub events_acked: AtomicU64,
    pub events_resent: AtomicU64,
    pub bad_signatures: AtomicU64,
    pub sub_refused: AtomicU64,
    pub foreign_messages: AtomicU64,
    pub finishes: Mutex<Vec<Finish>>,
}

impl FleetStats {
    pub(crate) fn finish(&self, index: usize, generation: u64, phase: Phase, received: Instant) {
        let f = Finish {
            index,
            generation,
            phase,
            received,
            at: Instant::now(),
        };
        self.finishes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// Finishes recorded so far (and clears them with `take`).
    pub fn finishes(&self, take: bool) -> Vec<Finish> {
        let mut g = self.finishes.lock().unwrap_or_else(|p| p.into_inner());
        if take {
            std::mem::take(&mut *g)
        } else {
            g.clone()
        }
    }

    pub fn line(&self) -> String {
        format!(
            "online {} connects {} configured {} desired {} confirmed {} events sent {} acked {} resent {} bad signatures {}",
            self.online.load(Relaxed),
            self.connects.load(Relaxed),
            self.configured.load(Relaxed),
            self.desired_received.load(Relaxed),
            self.confirmed.load(Relaxed),
            self.events_sent.load(Relaxed),
            self.events_acked.load(Relaxed),
            self.events_resent.load(Relaxed),
            self.bad_signatures.load(Relaxed),
        )
    }
}

/// Creates a user and provisions `n` devices for it (tagged `fleet=<run>`), `par` at a time.
/// Returns the user's token and the devices' credentials.
pub async fn provision(
    admin: &Api,
    run: &str,
    n: usize,
    par: usize,
) -> anyhow::Result<(String, Vec<Credentials>)> {
    let user = format!("sim{run}");
    let token = admin
        .create_user(&user)
        .await
        .with_context(|| format!("cannot create the user {user}"))?;
    let creds: Vec<Credentials> = stream::iter(0..n)
        .map(|i| {
            let (admin, user, run) = (admin.clone(), user.clone(), run.to_owned());
            async move {
                let b = admin
                    .provision(&user, &format!("d{i:05}"), ("fleet", &run))
                    .await?;
                Credentials::from_bundle(&b)
            }
        })
        .buffered(par)
        .try_collect()
        .await?;
    Ok((token, creds))
}

/// Connects every device at `ramp` connections per second (0 = as fast as possible, `par`
/// at a time). Fails if any device does not connect within `timeout`.
pub async fn connect_all(
    creds: Vec<Credentials>,
    broker: Option<(String, u16)>,
    ramp: f64,
    cfg: Arc<SimConfig>,
    stats: Arc<FleetStats>,
    timeout: Duration,
) -> anyhow::Result<Vec<SimDevice>> {
    let par = 256;
    let start = Instant::now();
    let devices = stream::iter(creds.into_iter().enumerate())
        .map(|(i, c)| {
            let (cfg, stats, broker) = (cfg.clone(), stats.clone(), broker.clone());
            async move {
                if ramp > 0.0 {
                    let at = start + Duration::from_secs_f64(i as f64 / ramp);
                    tokio::time::sleep_until(at.into()).await;
                }
                let (host, port) = match broker {
                    Some(b) => b,
                    None => crate::parse_broker_url(&c.broker_url)?,
                };
                device::connect(i, &c, (&host, port), cfg, stats, timeout)
                    .await
                    .map(|d| (i, d))
            }
        })
        // Unordered: a device that is refused and backs off must not hold up the window
        // (`buffered` waits for the oldest; connecting 10,000 took 26 s with the service at
        // 20 % of a core).
        .buffer_unordered(par)
        .try_collect::<Vec<(usize, SimDevice)>>()
        .await?;
    let mut devices = devices;
    devices.sort_by_key(|(i, _)| *i);
    Ok(devices.into_iter().map(|(_, d)| d).collect())
}

/// Sends every device its setup and waits until all confirmed it.
pub async fn setup_all(
    user: &Api,
    creds: &[Credentials],
    stats: &FleetStats,
    timeout: Duration,
) -> anyhow::Result<()> {
    let before = stats.configured.load(Relaxed);
    stream::iter(creds.iter())
        .map(|c| user.setup(&c.name))
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let want = before + creds.len() as u64;
    wait_for(timeout, "every device to confirm its setup", || {
        stats.configured.load(Relaxed) >= want
    })
    .await
    .with_context(|| stats.line())
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn wait_for(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > end {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
