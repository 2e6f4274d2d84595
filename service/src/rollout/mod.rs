//! The rollout engine: the one owner of running deployments.
//!
//! It publishes each target's signed desired state as `max_in_flight` allows, follows the
//! targets' status events (running → succeeded; failed / rolled back / refused → the attempt
//! failed), times out silent devices, retries, aborts at the failure threshold (targets not
//! yet started are skipped and keep their release), and ends each deployment succeeded,
//! failed or canceled with a reason.
//!
//! One deployment, one commit. The commit is the user's when they name one (a full commit id
//! as the ref, which `hammer deploy` resolves with the user's own git access). Otherwise the
//! first report naming a commit pins it, and every target launched without it that has not
//! fetched yet is republished at once (new generation) naming it; later launches name it too.
//! A target that reports another commit never counts as a success: launched before the pin,
//! it is relaunched once with the pinned commit; told the pinned commit, it fails.
//!
//! # A pure core and an I/O shell
//!
//! [`core`] decides; this module does. [`core::Rollout`] holds one running deployment and
//! turns inputs into decisions with the time passed in: no clock, store, MQTT, logging or
//! tokio in it, so every transition and every sum is unit-tested there. [`Engine`] (this
//! module) is the task around it and does every I/O: the inbox, the timer, the store, MQTT,
//! logs and the events the dashboard and `hammer` follow.
//!
//! ```text
//! inbox (create, status, cancel, ───────┐
//!        pause/resume, holder)            │
//! timer (nearest deadline, persistence) ──┴─▶ Engine ──input, now──▶ core::Rollout
//!                                               ▲                          │
//!                                               └──────── decisions ───────┘
//!   Engine carries them out: stage each decided launch (a new generation in the store) and
//!   answer the core with the result, flush once, persist the deployment, publish the staged
//!   desired states, emit the deployment's event, log what happened.
//! ```
//!
//! A step (`Engine::step`) is: [`core::Rollout::begin_step`] (abort check, relaunches the
//! pin calls for), then [`core::Rollout::next_launch`] / [`core::Rollout::launch_done`] for
//! each launch, one flush of the staged device records, [`core::Rollout::end_step`] (the end
//! check), then the deployment record is persisted and only then are the desired states
//! published: a device acts only on what survives a restart. Launches, cancels, pauses, resumes
//! and ends are persisted at once; changes driven by status events alone at most `PERSIST_EVERY_MS`
//! later, once per batch of the inbox (the events themselves are durable before they get
//! here). After a restart [`Engine::load`] reloads running deployments, replays stored status
//! events it may have missed and recomputes timers from the persisted deadlines.
//!
//! What the engine is told is a [`RolloutMsg`] ([`inbox`]); errors for callers are
//! [`RolloutError`], which the domain maps to its refusals.

pub mod core;
pub mod inbox;
pub mod phasing;
pub mod window;

pub use self::core::commit_named_by;
use self::core::{
    is_active, same_commit, Applied, HoldRefused, Launch, LaunchResult, Presence, PromoteRefused,
    Rollout, TargetChange,
};
pub use self::inbox::{RolloutError, RolloutMsg};
use crate::mqtt::publish::{publish_desired, stage_desired};
use crate::service::Service;
use crate::store::{BadCommitRecord, DeploymentRecord, Fence, StoreError};
use hammer_protocol::api::{DeploymentState, Event, TargetState, WebhookEvent};
use hammer_protocol::{now_ms, DesiredState, RunState, StatusEvent, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The engine's state.
pub struct Engine {
    svc: Arc<Service>,
    running: HashMap<String, Rollout>,
    /// Device id → running deployment that has it pending or in flight.
    by_device: HashMap<String, String>,
    /// Running deployments with status-driven changes not yet persisted → since when (ms).
    unsaved: HashMap<String, u64>,
    /// With replicas: the rollout lease this engine drives under; every deployment write
    /// carries it and the store refuses it once another replica took the lease over.
    fence: Option<Fence>,
    /// A fenced write was refused: another replica drives deployments now; this engine
    /// publishes nothing more and stops.
    fenced: bool,
}

/// Status-driven target changes of a running deployment are persisted at most this long after
/// they happen, not once per batch: at 10,000 targets one write is a multi-megabyte record.
/// Nothing is lost meanwhile: the status events are durable before they get here and `load`
/// replays them. Launches, cancels and ends are persisted at once.
const PERSIST_EVERY_MS: u64 = 250;

/// Most inbox messages handled under one step per deployment.
const MAX_BATCH: usize = 4096;

impl Engine {
    /// Loads running deployments and replays stored status events of their in-flight targets.
    pub async fn load(svc: Arc<Service>) -> anyhow::Result<Engine> {
        Engine::load_fenced(svc, None).await
    }

    /// [`Engine::load`] for a replica holding the rollout lease: every deployment write
    /// carries `fence` (see [`crate::cluster`]).
    pub async fn load_fenced(svc: Arc<Service>, fence: Option<Fence>) -> anyhow::Result<Engine> {
        let mut eng = Engine {
            svc: svc.clone(),
            running: HashMap::new(),
            by_device: HashMap::new(),
            unsaved: HashMap::new(),
            fence,
            fenced: false,
        };
        let mut replay = Vec::new();
        for dep in svc.store.deployments()? {
            if dep.state != DeploymentState::Running {
                continue;
            }
            let mut told_pin = HashMap::new();
            for t in dep.targets.iter().filter(|t| is_active(t)) {
                eng.by_device.insert(t.device_id.clone(), dep.id.clone());
                if let (Some(pin), Some(g)) = (&dep.commit, t.generation) {
                    let live = svc.store.device(&t.device_id)?.and_then(|d| d.desired);
                    if live.is_some_and(|d| {
                        d.generation == g
                            && d.commit.as_deref().is_some_and(|c| same_commit(c, pin))
                    }) {
                        told_pin.insert(t.device_id.clone(), g);
                    }
                }
                if t.state == hammer_protocol::api::TargetState::InFlight {
                    for s in svc.store.statuses_of(&t.device_id)? {
                        if s.event.deployment_id.as_deref() == Some(dep.id.as_str())
                            && s.event.generation.is_some()
                            && s.event.generation == t.generation
                        {
                            replay.push((dep.id.clone(), t.device_id.clone(), s.event));
                        }
                    }
                }
            }
            eng.running
                .insert(dep.id.clone(), Rollout::resume(dep, told_pin));
        }
        if !eng.running.is_empty() {
            tracing::info!(
                deployments = eng.running.len(),
                "resuming running deployments"
            );
        }
        for (dep_id, device_id, event) in replay {
            eng.on_status(&dep_id, &device_id, event);
        }
        let ids: Vec<String> = eng.running.keys().cloned().collect();
        for id in ids {
            eng.step(&id).await;
        }
        Ok(eng)
    }

    /// Runs until the inbox closes or `stop` turns true.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<RolloutMsg>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let wait = self
                .next_deadline()
                .map(|d| Duration::from_millis(d.saturating_sub(now_ms())));
            let timer = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => {
                        let mut batch = vec![m];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        self.handle_batch(batch).await;
                    }
                    None => break,
                },
                _ = timer => self.on_timer().await,
                _ = stop.changed() => break,
            }
            if self.fenced {
                tracing::warn!("another replica took the rollout lease over; this one stops driving deployments");
                return;
            }
        }
        // A graceful stop leaves nothing for `load` to replay.
        let unsaved: Vec<String> = self.unsaved.keys().cloned().collect();
        for id in unsaved {
            self.step(&id).await;
        }
    }

    /// Handles what queued up at once. Status events only update targets in memory; each
    /// deployment they touched is then stepped (and persisted) once, instead of once per
    /// event: a 1,000-device rollout would otherwise rewrite its record thousands of times.
    /// The events themselves are already durable in the store (ingest stores, flushes and
    /// acks them before they get here, and `load` replays them after a restart), so
    /// persisting the deployment once per batch loses nothing.
    async fn handle_batch(&mut self, batch: Vec<RolloutMsg>) {
        let mut touched: Vec<String> = Vec::new();
        for msg in batch {
            if !matches!(msg, RolloutMsg::Status { .. }) {
                // Keep the order: what came before a create or cancel is applied first.
                for id in touched.drain(..) {
                    self.step_with(&id, false).await;
                }
            }
            if let Some(id) = self.handle(msg).await {
                if !touched.contains(&id) {
                    touched.push(id);
                }
            }
        }
        for id in touched {
            self.step_with(&id, false).await;
        }
    }

    /// Handles one message; a status event only updates its target in memory and returns the
    /// deployment to step (the caller steps each touched deployment once per batch).
    async fn handle(&mut self, msg: RolloutMsg) -> Option<String> {
        match msg {
            RolloutMsg::Create { dep, reply } => {
                let r = self.create(*dep).await;
                let _ = reply.send(r);
            }
            RolloutMsg::Status { device_id, event } => {
                if let Some(dep_id) = self.by_device.get(&device_id).cloned() {
                    return self.on_status(&dep_id, &device_id, event);
                }
                // Not pending or in flight anywhere: a target that succeeded in a running
                // (phased) deployment reporting on its health, or a late report.
                match event.deployment_id.clone() {
                    Some(dep_id) if self.running.contains_key(&dep_id) => {
                        return self.on_status(&dep_id, &device_id, event);
                    }
                    _ => self.late_report(&device_id, &event).await,
                }
                return None;
            }
            RolloutMsg::Promote {
                id,
                owner,
                by,
                reply,
            } => {
                let r = self.promote(&id, &owner, &by).await;
                let _ = reply.send(r);
            }
            RolloutMsg::Cancel {
                id,
                owner,
                by,
                reply,
            } => {
                let r = self.cancel(&id, &owner, &by).await;
                let _ = reply.send(r);
            }
            RolloutMsg::Hold {
                id,
                owner,
                paused,
                reply,
            } => {
                let r = self.hold(&id, &owner, paused).await;
                let _ = reply.send(r);
            }
            RolloutMsg::BadCommit { owner, bad, reply } => {
                let stopped = self.stop_bad(&owner, &bad).await;
                let _ = reply.send(stopped);
            }
            RolloutMsg::Holder { device_id, reply } => {
                let _ = reply.send(self.by_device.get(&device_id).cloned());
            }
        }
        None
    }

    /// The nearest timer: a target's deadline or a pending persistence.
    fn next_deadline(&self) -> Option<u64> {
        let save = self.unsaved.values().min().map(|t| t + PERSIST_EVERY_MS);
        self.running
            .values()
            .filter_map(|r| r.next_deadline(now_ms()))
            .chain(save)
            .min()
    }

    async fn create(&mut self, dep: DeploymentRecord) -> Result<DeploymentRecord, RolloutError> {
        // A request repeated by another replica (its first answer was lost) gets the same
        // deployment, not a second one.
        if let Some(existing) = self.current(&dep.id) {
            if existing.owner == dep.owner {
                return Ok(existing);
            }
        }
        for t in &dep.targets {
            if let Some(other) = self.by_device.get(&t.device_id) {
                return Err(RolloutError::DeviceBusy {
                    device: t.device.clone(),
                    deployment: other.clone(),
                });
            }
        }
        let rollout = Rollout::start(dep);
        // The commit it names (given, or a full commit id as its ref) may not be marked bad.
        let bad = self.bad_commits_of(&rollout.record().owner);
        let named = rollout.record().commit.as_deref();
        if let Some(refusal) = self::core::bad_commit_refusal(named, &bad) {
            return Err(RolloutError::BadCommit(refusal));
        }
        let id = rollout.record().id.clone();
        for t in &rollout.record().targets {
            self.by_device.insert(t.device_id.clone(), id.clone());
        }
        tracing::info!(deployment = %id, targets = rollout.record().targets.len(), "deployment created");
        self.running.insert(id.clone(), rollout);
        if !self.step(&id).await {
            return Err(RolloutError::NotStored { what: "deployment" });
        }
        let created = self.current(&id).ok_or(RolloutError::Vanished { id })?;
        crate::webhooks::deployment_event(
            &self.svc,
            hammer_protocol::api::WebhookEvent::DeploymentCreated,
            &created,
        );
        Ok(created)
    }

    /// The commits `owner` marked bad (none if the user cannot be read: logged).
    fn bad_commits_of(&self, owner: &str) -> Vec<BadCommitRecord> {
        match self.svc.store.user(owner) {
            Ok(u) => u.map(|u| u.bad_commits).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(owner = %owner, "could not read the bad commits: {e}");
                Vec::new()
            }
        }
    }

    /// Stops `owner`'s running deployments pinned to `bad` as the core decides; returns
    /// their ids.
    async fn stop_bad(&mut self, owner: &str, bad: &BadCommitRecord) -> Vec<String> {
        let now = now_ms();
        let mut stopped = Vec::new();
        for (id, rollout) in self.running.iter_mut() {
            if rollout.record().owner == owner && rollout.stop_if_bad(bad, now) {
                tracing::info!(deployment = %id, commit = %bad.commit, "deployment stopped: commit marked bad");
                stopped.push(id.clone());
            }
        }
        for id in &stopped {
            self.step(id).await;
        }
        stopped
    }

    /// The deployment as running or, once ended, as stored.
    fn current(&self, id: &str) -> Option<DeploymentRecord> {
        match self.running.get(id) {
            Some(r) => Some(r.record().clone()),
            None => self.svc.store.deployment(id).ok().flatten(),
        }
    }

    /// The running deployment `id` of `owner`; else why not: ended (as stored) or none of
    /// theirs.
    fn owned_running(&mut self, id: &str, owner: &str) -> Result<&mut Rollout, RolloutError> {
        if self
            .running
            .get(id)
            .is_some_and(|r| r.record().owner == owner)
        {
            if let Some(r) = self.running.get_mut(id) {
                return Ok(r);
            }
        }
        match self.svc.store.deployment(id)? {
            Some(d) if d.owner == owner => Err(RolloutError::AlreadyEnded {
                id: id.to_owned(),
                state: d.state,
            }),
            _ => Err(RolloutError::NoDeployment { id: id.to_owned() }),
        }
    }

    async fn cancel(
        &mut self,
        id: &str,
        owner: &str,
        by: &str,
    ) -> Result<DeploymentRecord, RolloutError> {
        let rollout = self.owned_running(id, owner)?;
        rollout.cancel(by, now_ms());
        tracing::info!(deployment = %id, "deployment canceled");
        if !self.step(id).await {
            return Err(RolloutError::NotStored {
                what: "cancellation",
            });
        }
        self.current(id)
            .ok_or_else(|| RolloutError::NoDeployment { id: id.to_owned() })
    }

    /// Pauses (`paused`) or resumes a running deployment of `owner` as the core decides, then
    /// steps it (a resume launches at once) and persists it before answering.
    async fn hold(
        &mut self,
        id: &str,
        owner: &str,
        paused: bool,
    ) -> Result<DeploymentRecord, RolloutError> {
        let rollout = self.owned_running(id, owner)?;
        let done = if paused {
            rollout.pause()
        } else {
            rollout.unpause()
        };
        match done {
            Ok(()) => {}
            Err(HoldRefused::Ended(state)) => {
                return Err(RolloutError::AlreadyEnded {
                    id: id.to_owned(),
                    state,
                })
            }
            Err(HoldRefused::Already) if paused => {
                return Err(RolloutError::AlreadyPaused { id: id.to_owned() })
            }
            Err(HoldRefused::Already) => return Err(RolloutError::NotPaused { id: id.to_owned() }),
        }
        tracing::info!(deployment = %id, paused, "deployment paused or resumed");
        if !self.step(id).await {
            return Err(RolloutError::NotStored {
                what: if paused { "pause" } else { "resume" },
            });
        }
        let held = self
            .current(id)
            .ok_or_else(|| RolloutError::NoDeployment { id: id.to_owned() })?;
        let kind = crate::webhooks::rules::hold_event(paused);
        crate::webhooks::deployment_event(&self.svc, kind, &held);
        Ok(held)
    }

    /// Promotes the open phase of a running phased deployment of `owner` by hand, then steps
    /// it (the next phase launches at once) and persists it before answering.
    async fn promote(
        &mut self,
        id: &str,
        owner: &str,
        by: &str,
    ) -> Result<DeploymentRecord, RolloutError> {
        let rollout = self.owned_running(id, owner)?;
        let opened = match rollout.promote(by, now_ms()) {
            Ok(k) => k,
            Err(PromoteRefused::Ended(state)) => {
                return Err(RolloutError::AlreadyEnded {
                    id: id.to_owned(),
                    state,
                })
            }
            Err(PromoteRefused::NotPhased) => {
                return Err(RolloutError::NotPhased { id: id.to_owned() })
            }
            Err(PromoteRefused::LastPhase(phase)) => {
                return Err(RolloutError::LastPhase {
                    id: id.to_owned(),
                    phase,
                })
            }
        };
        tracing::info!(deployment = %id, phase = opened, by = %by, "phase promoted by hand");
        if !self.step(id).await {
            return Err(RolloutError::NotStored { what: "promotion" });
        }
        let promoted = self
            .current(id)
            .ok_or_else(|| RolloutError::NoDeployment { id: id.to_owned() })?;
        crate::webhooks::deployment_event(
            &self.svc,
            WebhookEvent::DeploymentPhasePromoted,
            &promoted,
        );
        Ok(promoted)
    }

    /// Applies a status event to the target it belongs to in running deployment `dep_id`;
    /// returns the deployment to step.
    fn on_status(&mut self, dep_id: &str, device_id: &str, ev: StatusEvent) -> Option<String> {
        let dep_id = dep_id.to_owned();
        let rollout = self.running.get_mut(&dep_id)?;
        let Applied { pinned, change } = rollout.on_status(device_id, &ev, now_ms())?;
        if let Some(commit) = pinned {
            tracing::info!(deployment = %dep_id, commit = %commit, device = %device_id, "pinned commit from the first report naming one");
            let owner = rollout.record().owner.clone();
            let bad = self.bad_commits_of(&owner);
            if let Some(b) = self::core::bad_commit(Some(&commit), &bad) {
                if let Some(rollout) = self.running.get_mut(&dep_id) {
                    if rollout.stop_if_bad(b, now_ms()) {
                        tracing::info!(deployment = %dep_id, commit = %commit, "deployment stopped: pinned a commit marked bad");
                    }
                }
            }
        }
        match change {
            TargetChange::RelaunchQueued(detail) => {
                tracing::info!(deployment = %dep_id, device = %device_id, "{detail}");
            }
            TargetChange::WrongCommit(detail) => {
                tracing::warn!(deployment = %dep_id, device = %device_id, "{detail}");
            }
            TargetChange::Health => {
                tracing::info!(deployment = %dep_id, device = %device_id, phase = ?ev.phase, "a device of a phased deployment reported trouble after it succeeded");
            }
            TargetChange::Progress
            | TargetChange::Succeeded
            | TargetChange::Retrying
            | TargetChange::Failed => {}
        }
        Some(dep_id)
    }

    /// Times out what is due and persists what waited long enough.
    async fn on_timer(&mut self) {
        let now = now_ms();
        if self.svc.cluster.is_some() {
            self.catch_up_before_timeouts(now);
        }
        let mut touched = Vec::new();
        let live = &self.svc.live;
        let presence = |device: &str| {
            if live.online(device) {
                Presence::Online
            } else {
                Presence::Offline {
                    last_seen: live.last_seen(device),
                }
            }
        };
        let promotions = |r: &Rollout| {
            r.record()
                .phasing
                .as_ref()
                .map_or(0, |p| p.promotions.len())
        };
        // Deployments whose phase the soak promoted on this tick.
        let mut promoted = Vec::new();
        for (id, rollout) in self.running.iter_mut() {
            let before = promotions(rollout);
            if rollout.on_tick(now, presence) > 0 {
                touched.push(id.clone());
            }
            if promotions(rollout) > before {
                tracing::info!(deployment = %id, "phase promoted after its soak");
                promoted.push(id.clone());
            }
        }
        for (id, since) in &self.unsaved {
            if since + PERSIST_EVERY_MS <= now && !touched.contains(id) {
                touched.push(id.clone());
            }
        }
        for id in touched {
            if self.step(&id).await && promoted.contains(&id) {
                if let Some(dep) = self.current(&id) {
                    crate::webhooks::deployment_event(
                        &self.svc,
                        WebhookEvent::DeploymentPhasePromoted,
                        &dep,
                    );
                }
            }
        }
    }

    /// With replicas, status events reach this engine relayed by the replica that stored
    /// them; a relay lost on the way (that replica died between storing and relaying) must
    /// not time a target out that did report. So before deadlines are applied, the stored
    /// events of the in-flight targets that are due are read back and applied (once more is
    /// harmless: the core ignores what it already knows).
    fn catch_up_before_timeouts(&mut self, now: u64) {
        let mut due: Vec<(String, String, u64)> = Vec::new();
        for (id, rollout) in &self.running {
            for t in &rollout.record().targets {
                if t.state == hammer_protocol::api::TargetState::InFlight
                    && t.deadline.is_some_and(|d| d <= now)
                {
                    if let Some(g) = t.generation {
                        due.push((id.clone(), t.device_id.clone(), g));
                    }
                }
            }
        }
        for (dep, device, generation) in due {
            let stored = match self.svc.store.statuses_of(&device) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(device = %device, error = %e, "cannot read stored status events before a timeout");
                    continue;
                }
            };
            for s in stored {
                if s.event.deployment_id.as_deref() == Some(dep.as_str())
                    && s.event.generation == Some(generation)
                {
                    self.on_status(&dep, &device, s.event);
                }
            }
        }
    }

    /// Advances a deployment: abort check, launches as slots allow, end check; then persists
    /// and announces it. Returns false when the deployment could not be persisted (callers
    /// that answer a request must not acknowledge it then); other callers retry on the next
    /// step.
    async fn step(&mut self, id: &str) -> bool {
        self.step_with(id, true).await
    }

    /// `Engine::step`; with `always_persist` false, a step that only applied status events
    /// is persisted within `PERSIST_EVERY_MS` instead of at once.
    async fn step_with(&mut self, id: &str, always_persist: bool) -> bool {
        let Some(mut rollout) = self.running.remove(id) else {
            self.unsaved.remove(id);
            return true;
        };
        // Launches share one flush of the device records and are published after the
        // deployment record is persisted: a device acts only on what survives a restart.
        let mut staged: Vec<(usize, DesiredState)> = Vec::new();
        // Ended deployments these launches overtake on their devices: (deployment, device).
        let mut overtaken: Vec<(String, String)> = Vec::new();
        rollout.begin_step(now_ms());
        let mut gate = self.window_gate(rollout.record());
        while let Some(launch) = rollout.next_launch_gated(now_ms(), &mut gate) {
            let now = now_ms();
            let previous = std::sync::Mutex::new(None);
            let (result, desired) = self.stage(&launch, now, &previous);
            if let (LaunchResult::Staged { .. }, Ok(Some(prev))) = (&result, previous.into_inner())
            {
                if prev != id && !self.running.contains_key(&prev) {
                    overtaken.push((prev, launch.device_id.clone()));
                }
            }
            rollout.launch_done(&launch, result, now);
            if let Some(desired) = desired {
                staged.push((launch.target, desired));
            }
        }
        if rollout.is_running() && !staged.is_empty() {
            if let Err(e) = self.svc.store.flush().await {
                tracing::warn!(deployment = %id, error = %e, "cannot store desired states");
                let targets: Vec<usize> = staged.drain(..).map(|(i, _)| i).collect();
                rollout.launches_not_stored(&targets, &e.to_string(), now_ms());
            }
        }
        let summary = rollout.end_step(now_ms());
        for t in &rollout.record().targets {
            if (summary.ended || !is_active(t))
                && self.by_device.get(&t.device_id).map(String::as_str) == Some(id)
            {
                self.by_device.remove(&t.device_id);
            }
        }
        if summary.ended {
            let dep = rollout.record();
            tracing::info!(deployment = %id, state = ?dep.state, reason = ?dep.reason, "deployment ended");
        }
        let now = now_ms();
        let since = *self.unsaved.entry(id.to_owned()).or_insert(now);
        let due = always_persist
            || summary.ended
            || summary.launched > 0
            || summary.state_changed
            || since + PERSIST_EVERY_MS <= now;
        let persisted = if due {
            match self.persist(rollout.record()).await {
                Ok(()) => {
                    self.unsaved.remove(id);
                    true
                }
                Err(e) => {
                    tracing::error!(deployment = %id, error = %e, "cannot persist deployment");
                    false
                }
            }
        } else {
            true
        };
        if self.fenced {
            // Another replica drives this deployment now: publish nothing.
            self.running.insert(id.to_owned(), rollout);
            return false;
        }
        if summary.ended {
            crate::webhooks::deployment_ended(&self.svc, rollout.record());
        }
        let mut publish_failed = false;
        for (i, desired) in staged {
            if let Err(e) = publish_desired(&self.svc, &desired).await {
                tracing::warn!(deployment = %id, device = %desired.device_id, error = %e, "cannot publish desired state");
                rollout.publish_failed(i, &e.to_string());
                publish_failed = true;
            }
        }
        if publish_failed {
            // Recorded with the next step (within PERSIST_EVERY_MS, or at the next event).
            self.unsaved.entry(id.to_owned()).or_insert(now);
        }
        if self.svc.listening() || self.svc.cluster.is_some() {
            let dep = rollout.record();
            let devices: Vec<String> = dep.targets.iter().map(|t| t.device_id.clone()).collect();
            let event = Event::Deployment {
                deployment: crate::views::deployment_view(dep),
            };
            if let Some(link) = &self.svc.cluster {
                // The other replicas' event streams see it too (coalesced, see cluster).
                link.offer_progress(crate::cluster::wire::WireHubEvent {
                    owner: dep.owner.clone(),
                    devices: devices.clone(),
                    deployment: Some(dep.id.clone()),
                    event: event.clone(),
                });
            }
            self.svc
                .emit(&dep.owner, devices, Some(dep.id.clone()), event);
        }
        if !summary.ended {
            self.running.insert(id.to_owned(), rollout);
        }
        if persisted {
            self.supersede(id, overtaken).await;
        }
        persisted
    }

    /// The launch gate of a deployment's step: until when a device is outside its owner's
    /// maintenance windows (`rollout::window`). The owner's windows are read once per step;
    /// a device record only when the owner has windows and the core asks about it.
    fn window_gate(&self, dep: &DeploymentRecord) -> impl FnMut(&str) -> Option<u64> {
        let windows = if dep.state == DeploymentState::Running
            && dep.targets.iter().any(|t| t.state == TargetState::Pending)
        {
            self.svc.store.windows_of(&dep.owner).unwrap_or_else(|e| {
                tracing::warn!(deployment = %dep.id, error = %e, "cannot read maintenance windows; launching as if none applied");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let svc = self.svc.clone();
        move |device_id: &str| {
            if windows.is_empty() {
                return None;
            }
            match svc.store.device(device_id) {
                Ok(Some(d)) => self::window::closed_until(&d, &windows, now_ms()),
                // Gone or unreadable: the launch finds out and says so.
                Ok(None) | Err(_) => None,
            }
        }
    }

    /// Marks the timed-out targets of ended deployments that `by`'s launches overtook as
    /// superseded (one read and one write per overtaken deployment).
    async fn supersede(&mut self, by: &str, overtaken: Vec<(String, String)>) {
        let mut per_dep: HashMap<String, Vec<String>> = HashMap::new();
        for (dep, device) in overtaken {
            per_dep.entry(dep).or_default().push(device);
        }
        let now = now_ms();
        for (dep_id, devices) in per_dep {
            let mut dep = match self.svc.store.deployment(&dep_id) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(deployment = %dep_id, error = %e, "cannot read an overtaken deployment");
                    continue;
                }
            };
            let mut changed = false;
            for t in dep.targets.iter_mut() {
                if devices.contains(&t.device_id) {
                    changed |= self::core::supersede(t, by, now);
                }
            }
            if changed {
                tracing::info!(deployment = %dep_id, by = %by, "timed-out targets superseded by a newer deployment");
                if let Err(e) = self.persist(&dep).await {
                    tracing::warn!(deployment = %dep_id, error = %e, "cannot record superseded targets");
                }
            }
        }
    }

    /// A device ran an attempt of an ended deployment after all: its target says so.
    async fn late_report(&mut self, device_id: &str, ev: &StatusEvent) {
        let Some(dep_id) = ev.deployment_id.as_deref() else {
            return;
        };
        if ev.phase != hammer_protocol::Phase::Running || self.running.contains_key(dep_id) {
            return;
        }
        let mut dep = match self.svc.store.deployment(dep_id) {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(deployment = %dep_id, error = %e, "cannot read a deployment for a late report");
                return;
            }
        };
        let now = now_ms();
        let mut changed = false;
        for t in dep.targets.iter_mut().filter(|t| t.device_id == device_id) {
            changed |= self::core::late_report(t, ev, now);
        }
        if !changed {
            return;
        }
        tracing::info!(deployment = %dep_id, device = %device_id, "a device succeeded after its attempt was over");
        if let Err(e) = self.persist(&dep).await {
            tracing::warn!(deployment = %dep_id, error = %e, "cannot record a late success");
            return;
        }
        if self.svc.listening() {
            let devices = dep.targets.iter().map(|t| t.device_id.clone()).collect();
            let event = Event::Deployment {
                deployment: crate::views::deployment_view(&dep),
            };
            self.svc
                .emit(&dep.owner, devices, Some(dep.id.clone()), event);
        }
    }

    async fn persist(&mut self, dep: &DeploymentRecord) -> anyhow::Result<()> {
        match &self.fence {
            None => self.svc.store.put_deployment(dep)?,
            Some(fence) => match self.svc.store.put_deployment_fenced(dep, fence) {
                Ok(()) => {}
                Err(e @ StoreError::Fenced { .. }) => {
                    self.fenced = true;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            },
        }
        self.svc.store.flush().await?;
        Ok(())
    }

    /// Stages a launch's desired state in the store (a new generation, naming the
    /// deployment's commit if it has one); the caller flushes and publishes it.
    /// Notes in `previous` the deployment the device's last desired state came from.
    fn stage(
        &self,
        launch: &Launch,
        now: u64,
        previous: &std::sync::Mutex<Option<String>>,
    ) -> (LaunchResult, Option<DesiredState>) {
        let result = stage_desired(&self.svc, &launch.device_id, |d, generation| {
            if let Ok(mut p) = previous.lock() {
                p.clone_from(&d.current_deployment);
            }
            let setup = d.setup.as_ref()?;
            Some(DesiredState {
                v: PROTOCOL_VERSION,
                device_id: d.id.clone(),
                owner: d.owner.clone(),
                generation,
                deployment_id: launch.deployment_id.clone(),
                repo_url: setup.repo_url.clone(),
                git_ref: launch
                    .git_ref
                    .clone()
                    .unwrap_or_else(|| setup.git_ref.clone()),
                commit: launch.commit.clone(),
                start: setup.start.clone(),
                env: setup.env.clone(),
                health_window_secs: setup.health_window_secs,
                health_cmd: setup.health_cmd.clone(),
                run_state: RunState::Running,
                issued_at: now,
                install: setup.install.clone(),
                full_history: setup.full_history,
            })
        });
        match result {
            Ok(Some(rec)) => {
                tracing::debug!(deployment = %launch.deployment_id, device = %launch.device_id, generation = rec.generation, "staged desired state");
                (
                    LaunchResult::Staged {
                        generation: rec.generation,
                    },
                    rec.desired,
                )
            }
            Ok(None) => (LaunchResult::NoSetup, None),
            Err(e) => {
                tracing::warn!(deployment = %launch.deployment_id, device = %launch.device_id, error = %e, "cannot store desired state");
                (LaunchResult::NotStored(e.to_string()), None)
            }
        }
    }
}

/// Asks the engine which running deployment holds `device_id`.
pub async fn holder(svc: &Service, device_id: &str) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    svc.rollout
        .send(RolloutMsg::Holder {
            device_id: device_id.to_owned(),
            reply: tx,
        })
        .await
        .ok()?;
    rx.await.ok().flatten()
}

/// Tells the engine `owner` marked `bad` bad; answers the ids of the running deployments it
/// stopped (none if the engine is gone).
pub async fn stop_bad_commit(svc: &Service, owner: &str, bad: BadCommitRecord) -> Vec<String> {
    let (tx, rx) = oneshot::channel();
    if svc
        .rollout
        .send(RolloutMsg::BadCommit {
            owner: owner.to_owned(),
            bad,
            reply: tx,
        })
        .await
        .is_err()
    {
        return Vec::new();
    }
    rx.await.unwrap_or_default()
}
