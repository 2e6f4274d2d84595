//! The scripted device of the service's tests: the core session, a [`Behavior`] for newer
//! desired states, everything received kept for the test to look at, and raw status events
//! the test numbers itself (duplicates, gaps and all).
//!
//! A newer desired state is recorded and answered at once with the behaviour's phases
//! (through the outbox, naming `d.commit` or else the device's `head`); a setup command is
//! answered `configured`. Every verified command and ack is recorded; a message that does not
//! verify is recorded in `refused` and otherwise ignored.

use crate::decide::{detail, Behavior, DesiredDecision};
use crate::error::SimError;
use crate::identity::Credentials;
use crate::outbox::AckOutcome;
use crate::session::{Device, Driver, Report, Session, SessionConfig};
use crate::verify::Refused;
use hammer_protocol::api::ProvisionResponse;
use hammer_protocol::{
    encode, now_ms, Ack, Channel, Command, CommandKind, DesiredState, Phase, StatusEvent,
    PROTOCOL_VERSION,
};
use rumqttc::{AsyncClient, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the `wait_*` methods wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// The commit a scripted device resolves a ref to when the desired state pins none.
pub const DEFAULT_HEAD: &str = "1111111111111111111111111111111111111111";

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A scripted device speaking the real protocol over mTLS. Dropping it drops the connection
/// without a clean disconnect (the broker publishes its last will).
#[derive(Debug)]
pub struct ScriptedDevice {
    pub id: String,
    pub owner: String,
    pub epoch: u64,
    pub client: AsyncClient,
    /// Every newer desired state received, oldest first.
    pub desired: Shared<Vec<DesiredState>>,
    /// Verified desired states of any generation (newer, repeated, stale), counted.
    pub desired_seen: Arc<AtomicU64>,
    /// Every verified command, in order.
    pub cmds: Shared<Vec<Command>>,
    /// Every verified ack (of any epoch), in order.
    pub acks: Shared<Vec<Ack>>,
    /// How the next newer desired state is answered (may be changed at any time).
    pub behavior: Shared<Behavior>,
    /// The commit the device resolves a ref to when the desired state pins none.
    pub head: Shared<String>,
    /// Why messages were refused (signature, address), in order.
    pub refused: Shared<Vec<String>>,
    session: Session,
}

#[derive(Debug)]
struct Scripted {
    desired: Shared<Vec<DesiredState>>,
    desired_seen: Arc<AtomicU64>,
    cmds: Shared<Vec<Command>>,
    acks: Shared<Vec<Ack>>,
    behavior: Shared<Behavior>,
    head: Shared<String>,
    refused: Shared<Vec<String>>,
    /// Rollouts failed so far under `Behavior::FailTimes`.
    failures: Mutex<u32>,
}

impl Driver for Scripted {
    fn desired(self: &Arc<Self>, dev: &Arc<Device>, d: DesiredState, decision: DesiredDecision) {
        self.desired_seen.fetch_add(1, Ordering::Relaxed);
        if decision != DesiredDecision::New {
            return;
        }
        lock(&self.desired).push(d.clone());
        let phases = {
            let b = lock(&self.behavior).clone();
            b.phases(&mut lock(&self.failures))
        };
        let commit = d.commit.clone().unwrap_or_else(|| lock(&self.head).clone());
        for phase in phases {
            let r = Report::of(Some(&d), phase, Some(commit.clone())).with_detail(detail(phase));
            if let Err(e) = dev.report_now(r) {
                tracing::warn!(device = %dev.id, error = %e, "cannot report");
            }
        }
    }

    fn command(self: &Arc<Self>, dev: &Arc<Device>, c: Command) {
        if matches!(c.kind, CommandKind::Setup { .. }) {
            if let Err(e) = dev.report_now(Report::plain(Phase::Configured)) {
                tracing::warn!(device = %dev.id, error = %e, "cannot report");
            }
        }
        lock(&self.cmds).push(c);
    }

    fn ack(&self, _dev: &Arc<Device>, ack: Ack, _outcome: AckOutcome) {
        lock(&self.acks).push(ack);
    }

    fn refused(&self, dev: &Arc<Device>, r: Refused) {
        tracing::warn!(device = %dev.id, error = %r, "refused a message");
        lock(&self.refused).push(r.to_string());
    }
}

impl ScriptedDevice {
    /// Connects the device of a provisioning bundle to the broker at `mqtt` (its IP, or
    /// 127.0.0.1 for an unspecified one, and its port) and waits until it is subscribed and
    /// announced (10 s).
    pub async fn connect(
        mqtt: SocketAddr,
        bundle: &ProvisionResponse,
        behavior: Behavior,
    ) -> Result<ScriptedDevice, SimError> {
        let creds = Credentials::from_bundle(bundle)?;
        let host = if mqtt.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            mqtt.ip().to_string()
        };
        let mut cfg = SessionConfig::new((host, mqtt.port()));
        // Tests restart the service under a connected device: reconnect at once.
        cfg.reconnect_min = Duration::from_millis(100);
        cfg.reconnect_max = Duration::from_millis(100);
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.request_cap = 1000;
        cfg.ready_timeout = WAIT;
        ScriptedDevice::connect_with(&creds, cfg, behavior).await
    }

    /// Connects with explicit credentials and session settings.
    pub async fn connect_with(
        creds: &Credentials,
        cfg: SessionConfig,
        behavior: Behavior,
    ) -> Result<ScriptedDevice, SimError> {
        let driver = Arc::new(Scripted {
            desired: Default::default(),
            desired_seen: Default::default(),
            cmds: Default::default(),
            acks: Default::default(),
            behavior: Arc::new(Mutex::new(behavior)),
            head: Arc::new(Mutex::new(DEFAULT_HEAD.to_owned())),
            refused: Default::default(),
            failures: Mutex::new(0),
        });
        let session = Session::connect(creds, cfg, driver.clone()).await?;
        let dev = &session.device;
        Ok(ScriptedDevice {
            id: dev.id.clone(),
            owner: dev.owner.clone(),
            epoch: dev.epoch,
            client: dev.client.clone(),
            desired: driver.desired.clone(),
            desired_seen: driver.desired_seen.clone(),
            cmds: driver.cmds.clone(),
            acks: driver.acks.clone(),
            behavior: driver.behavior.clone(),
            head: driver.head.clone(),
            refused: driver.refused.clone(),
            session,
        })
    }

    /// The core session's device (outbox, generation).
    pub fn device(&self) -> &Arc<Device> {
        &self.session.device
    }

    /// Publishes a raw status event (no deployment, no commit) with the caller's seq.
    pub async fn status(&self, seq: u64, phase: Phase) -> Result<(), SimError> {
        self.report(seq, None, phase, None).await
    }

    /// Publishes a raw status event with the caller's seq, for the deployment of `desired`
    /// (or none), naming `commit`. Not kept in the outbox: a test sends what it wants.
    pub async fn report(
        &self,
        seq: u64,
        desired: Option<&DesiredState>,
        phase: Phase,
        commit: Option<&str>,
    ) -> Result<(), SimError> {
        self.report_subject(seq, desired, phase, commit, None).await
    }

    /// [`ScriptedDevice::report`] with a commit subject (the manager sends one with
    /// `fetched`).
    pub async fn report_subject(
        &self,
        seq: u64,
        desired: Option<&DesiredState>,
        phase: Phase,
        commit: Option<&str>,
        subject: Option<&str>,
    ) -> Result<(), SimError> {
        let ev = StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: self.epoch,
            seq,
            generation: desired.map(|d| d.generation),
            deployment_id: desired.map(|d| d.deployment_id.clone()),
            phase,
            commit: commit.map(str::to_owned),
            time: now_ms(),
            detail: None,
            log_tail: vec![],
            commit_subject: subject.map(str::to_owned),
        };
        self.device()
            .publish(Channel::Status, QoS::AtLeastOnce, false, encode(&ev)?)
            .await
    }

    /// Waits (10 s) until an ack of at least `seq` of this epoch arrived.
    pub async fn wait_ack(&self, seq: u64) -> bool {
        let epoch = self.epoch;
        poll(WAIT, || {
            lock(&self.acks)
                .iter()
                .any(|a| a.epoch == epoch && a.seq >= seq)
                .then_some(())
        })
        .await
        .is_some()
    }

    /// The next seq this device would use (and reserves it).
    pub fn next_seq(&self) -> u64 {
        self.device().reserve_seq()
    }

    /// The highest seq handed out so far (reserved or used by the device's own events).
    pub fn last_seq(&self) -> u64 {
        self.device().last_seq()
    }

    /// Unacked events of the device's own (behaviour, setup) in its outbox.
    pub fn unacked(&self) -> usize {
        self.device().unacked()
    }

    pub fn last_desired(&self) -> Option<DesiredState> {
        lock(&self.desired).last().cloned()
    }

    /// Waits (10 s) until a desired state arrived; the latest.
    pub async fn wait_desired(&self) -> Result<DesiredState, SimError> {
        poll(WAIT, || self.last_desired())
            .await
            .ok_or_else(|| self.timeout("a desired state"))
    }

    /// Waits (10 s) until the latest desired state names a commit.
    pub async fn wait_desired_commit(&self) -> Result<DesiredState, SimError> {
        poll(WAIT, || self.last_desired().filter(|d| d.commit.is_some()))
            .await
            .ok_or_else(|| self.timeout("a desired state naming a commit"))
    }

    pub fn last_ack(&self) -> Option<Ack> {
        lock(&self.acks).last().copied()
    }

    /// Disconnects cleanly (no last will).
    pub async fn disconnect(&self) {
        self.session.disconnect().await
    }

    fn timeout(&self, what: &'static str) -> SimError {
        SimError::Timeout {
            device_id: self.id.clone(),
            what,
            after: WAIT,
        }
    }
}

/// Calls `f` every 50 ms until it gives something or `timeout` passes.
async fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
