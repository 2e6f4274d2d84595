//! The autonomous device of the fleet simulator: the core session, and a simulated rollout
//! for every newer desired generation, counted into the fleet's shared [`FleetStats`].
//!
//! A newer generation starts a rollout task: received → fetching → (fetch time) → fetched →
//! starting → verifying → (start time) → running, or rolled_back at the configured rate,
//! each wait with its own jitter; a rollout overtaken by a newer generation stops before its
//! end. Every event goes through the outbox. A setup command is answered `configured`.
//! Health is reported after each rollout and every `health_every`.

use crate::decide::DesiredDecision;
use crate::error::SimError;
use crate::identity::Credentials;
use crate::outbox::AckOutcome;
use crate::session::{Device, Driver, Report, Session, SessionConfig};
use crate::verify::Refused;
use hammer_protocol::{
    encode, now_ms, Ack, Channel, Command, CommandKind, DesiredState, Health, Phase,
    PROTOCOL_VERSION,
};
use rand::Rng;
use rumqttc::{AsyncClient, QoS};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How simulated devices behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated git fetch time.
    pub fetch: Duration,
    /// Simulated app start (and health window) time.
    pub start: Duration,
    /// Uniform jitter added to each of fetch and start, `0..=jitter`.
    pub jitter: Duration,
    /// Fraction (0..=1) of rollouts that end `rolled_back`.
    pub fail_rate: f64,
    /// Interval of health reports (0 = only after each rollout).
    pub health_every: Duration,
    /// Resend unacked events older than this.
    pub resend_after: Duration,
    /// MQTT connect timeout (TCP + TLS + CONNECT/CONNACK). rumqttc's default of 5 s is too
    /// short under a connect storm: a device that gives up reconnects with the same client
    /// id while the broker is still setting up its first session.
    pub connect_timeout: Duration,
    /// Reconnect backoff: first delay, doubling up to `reconnect_max`, ±50 % jitter, reset
    /// on CONNACK (the real manager's `link::Backoff`: 0.5 s to 30 s).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            fetch: Duration::from_millis(200),
            start: Duration::from_millis(300),
            jitter: Duration::from_millis(100),
            fail_rate: 0.0,
            health_every: Duration::ZERO,
            resend_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

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
        lock(&self.finishes).push(f);
    }

    /// Finishes recorded so far (and clears them with `take`).
    pub fn finishes(&self, take: bool) -> Vec<Finish> {
        let mut g = lock(&self.finishes);
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected autonomous device; dropping it stops its task (without a clean disconnect,
/// so the broker publishes its last will).
#[derive(Debug)]
pub struct AutonomousDevice {
    pub index: usize,
    pub id: String,
    pub name: String,
    pub client: AsyncClient,
    session: Session,
}

impl AutonomousDevice {
    /// Unacked events in the outbox.
    pub fn unacked(&self) -> usize {
        self.session.device.unacked()
    }

    /// Disconnects cleanly.
    pub async fn disconnect(&self) {
        self.session.disconnect().await
    }
}

#[derive(Debug)]
struct Autonomous {
    index: usize,
    cfg: Arc<SimConfig>,
    stats: Arc<FleetStats>,
    st: Mutex<Local>,
}

/// What the simulated app has: the commit of the last fetch, when health was last sent.
#[derive(Debug, Default)]
struct Local {
    commit: Option<String>,
    last_health: Option<Instant>,
}

/// The random parts of one rollout: extra fetch and start time, and whether it fails.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Draw {
    fetch: Duration,
    start: Duration,
    fail: bool,
}

impl Draw {
    fn new(cfg: &SimConfig, r: &mut impl Rng) -> Draw {
        let j = cfg.jitter.as_millis() as u64;
        let mut jitter = || Duration::from_millis(if j > 0 { r.gen_range(0..=j) } else { 0 });
        let (fetch, start) = (jitter(), jitter());
        Draw {
            fetch,
            start,
            fail: r.gen_bool(cfg.fail_rate.clamp(0.0, 1.0)),
        }
    }
}

impl Autonomous {
    /// Reports a phase of `d` naming the commit fetched last; counts it as sent.
    async fn emit(&self, dev: &Device, d: &DesiredState, phase: Phase, detail: Option<String>) {
        let commit = lock(&self.st).commit.clone();
        match dev
            .report(Report::of(Some(d), phase, commit).with_detail(detail))
            .await
        {
            Ok(()) => {
                self.stats.events_sent.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::warn!(device = %dev.id, error = %e, "cannot report"),
        }
    }

    async fn rollout(self: Arc<Self>, dev: Arc<Device>, d: DesiredState) {
        let received = Instant::now();
        let draw = Draw::new(&self.cfg, &mut rand::thread_rng());
        self.emit(&dev, &d, Phase::Received, None).await;
        self.emit(&dev, &d, Phase::Fetching, None).await;
        tokio::time::sleep(self.cfg.fetch + draw.fetch).await;
        let commit = d
            .commit
            .clone()
            .unwrap_or_else(|| format!("{:040x}", d.generation));
        lock(&self.st).commit = Some(commit);
        self.emit(&dev, &d, Phase::Fetched, None).await;
        self.emit(&dev, &d, Phase::Starting, None).await;
        self.emit(&dev, &d, Phase::Verifying, None).await;
        tokio::time::sleep(self.cfg.start + draw.start).await;
        if dev.generation() != d.generation {
            return; // superseded by a newer desired state
        }
        let end = if draw.fail {
            Phase::RolledBack
        } else {
            Phase::Running
        };
        let detail = draw
            .fail
            .then(|| "simulated health check failure".to_owned());
        self.emit(&dev, &d, end, detail).await;
        self.stats.finish(self.index, d.generation, end, received);
        self.health(&dev);
    }

    fn health(&self, dev: &Device) {
        let generation = dev.generation();
        let commit = {
            let mut st = lock(&self.st);
            st.last_health = Some(Instant::now());
            st.commit.clone()
        };
        let h = Health {
            v: PROTOCOL_VERSION,
            time: now_ms(),
            app_running: generation > 0,
            pid: Some(1000 + self.index as u32),
            restarts: 0,
            uptime_secs: 0,
            app_rss_kb: 1024,
            app_cpu_ms: 0,
            manager_version: "fleet-sim".into(),
            commit,
            generation: (generation > 0).then_some(generation),
        };
        if let Ok(b) = encode(&h) {
            dev.try_publish(Channel::Health, QoS::AtMostOnce, false, b);
        }
    }
}

impl Driver for Autonomous {
    fn desired(self: &Arc<Self>, dev: &Arc<Device>, d: DesiredState, decision: DesiredDecision) {
        match decision {
            DesiredDecision::New => {
                self.stats.confirmed.fetch_add(1, Relaxed);
                self.stats.desired_received.fetch_add(1, Relaxed);
                tokio::spawn(self.clone().rollout(dev.clone(), d));
            }
            DesiredDecision::Confirm => {
                self.stats.confirmed.fetch_add(1, Relaxed);
            }
            DesiredDecision::Repeat | DesiredDecision::Stale => {}
        }
    }

    fn command(self: &Arc<Self>, dev: &Arc<Device>, c: Command) {
        if matches!(c.kind, CommandKind::Setup { .. }) {
            let r = Report {
                commit: lock(&self.st).commit.clone(),
                ..Report::plain(Phase::Configured)
            };
            match dev.report_now(r) {
                Ok(()) => {
                    self.stats.events_sent.fetch_add(1, Relaxed);
                }
                Err(e) => tracing::warn!(device = %dev.id, error = %e, "cannot report"),
            }
            self.stats.configured.fetch_add(1, Relaxed);
        }
    }

    fn ack(&self, _dev: &Arc<Device>, _ack: Ack, outcome: AckOutcome) {
        if let AckOutcome::Trimmed(n) = outcome {
            self.stats.events_acked.fetch_add(n as u64, Relaxed);
        }
    }

    fn refused(&self, dev: &Arc<Device>, r: Refused) {
        self.stats.bad_signatures.fetch_add(1, Relaxed);
        tracing::warn!(device = %dev.id, error = %r, "refused a message");
    }

    fn connected(&self, _dev: &Arc<Device>, came_online: bool) {
        if came_online {
            self.stats.online.fetch_add(1, Relaxed);
        }
        self.stats.connects.fetch_add(1, Relaxed);
    }

    fn disconnected(&self, _dev: &Arc<Device>) {
        self.stats.online.fetch_sub(1, Relaxed);
    }

    fn subscribe_refused(&self, _dev: &Arc<Device>) {
        self.stats.sub_refused.fetch_add(1, Relaxed);
    }

    fn foreign(&self, _dev: &Arc<Device>) {
        self.stats.foreign_messages.fetch_add(1, Relaxed);
    }

    fn resent(&self, _dev: &Arc<Device>, n: usize) {
        self.stats.events_resent.fetch_add(n as u64, Relaxed);
    }

    fn tick(self: &Arc<Self>, dev: &Arc<Device>) {
        let every = self.cfg.health_every;
        let due = !every.is_zero()
            && lock(&self.st)
                .last_health
                .is_none_or(|t| t.elapsed() >= every);
        if due {
            self.health(dev);
        }
    }
}

/// Connects device number `index` to `broker` and waits (up to `timeout`) until it is
/// subscribed and announced; from then on it answers on its own.
pub async fn connect(
    index: usize,
    creds: &Credentials,
    broker: (&str, u16),
    cfg: Arc<SimConfig>,
    stats: Arc<FleetStats>,
    timeout: Duration,
) -> Result<AutonomousDevice, SimError> {
    let session_cfg = SessionConfig {
        connect_timeout: cfg.connect_timeout,
        reconnect_min: cfg.reconnect_min,
        reconnect_max: cfg.reconnect_max,
        resend_after: cfg.resend_after,
        manager_version: "fleet-sim".into(),
        ready_timeout: timeout,
        ..SessionConfig::new((broker.0.to_owned(), broker.1))
    };
    let driver = Arc::new(Autonomous {
        index,
        cfg,
        stats,
        st: Mutex::new(Local::default()),
    });
    let session = Session::connect(creds, session_cfg, driver).await?;
    Ok(AutonomousDevice {
        index,
        id: creds.device_id.clone(),
        name: creds.name.clone(),
        client: session.device.client.clone(),
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_draw_stays_within_the_jitter_and_the_fail_rate_decides() {
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        let cfg = SimConfig {
            jitter: Duration::from_millis(50),
            fail_rate: 1.0,
            ..SimConfig::default()
        };
        for _ in 0..100 {
            let d = Draw::new(&cfg, &mut r);
            assert!(d.fetch <= Duration::from_millis(50) && d.start <= Duration::from_millis(50));
            assert!(d.fail);
        }
        let none = SimConfig {
            jitter: Duration::ZERO,
            fail_rate: 0.0,
            ..SimConfig::default()
        };
        let d = Draw::new(&none, &mut r);
        assert_eq!(
            d,
            Draw {
                fetch: Duration::ZERO,
                start: Duration::ZERO,
                fail: false
            }
        );
    }

    #[test]
    fn stats_keep_finishes_until_taken() {
        let s = FleetStats::default();
        let t = Instant::now();
        s.finish(3, 2, Phase::Running, t);
        assert_eq!(s.finishes(false).len(), 1);
        let f = s.finishes(true);
        assert_eq!(
            (f[0].index, f[0].generation, f[0].phase),
            (3, 2, Phase::Running)
        );
        assert!(s.finishes(false).is_empty());
        assert!(s.line().starts_with("online 0 connects 0"));
    }
}
