//! A fleet of simulated devices: provisioning through the API, connecting at a ramp rate,
//! waiting for every setup. The shared counters and per-device completion times
//! ([`FleetStats`], [`Finish`]) are `hammer-sim-device`'s, re-exported here.

use crate::api::Api;
use crate::device::{self, Credentials, SimConfig, SimDevice};
use anyhow::Context;
use futures_util::stream::{self, StreamExt, TryStreamExt};
pub use hammer_sim_device::{Finish, FleetStats};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
                anyhow::Ok(Credentials::from_bundle(&b)?)
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
                let d = device::connect(i, &c, (&host, port), cfg, stats, timeout).await?;
                anyhow::Ok((i, d))
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
