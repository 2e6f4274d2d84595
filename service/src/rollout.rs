//! The rollout engine: the one owner of running deployments.
//!
//! It publishes each target's signed desired state as `max_in_flight` allows, follows the
//! targets' status events (running → succeeded; failed / rolled back / refused → the attempt
//! failed), times out silent devices, retries, pins the first `fetched` commit for the
//! remaining targets and retries, aborts at the failure threshold (targets not yet started
//! are skipped and keep their release), and ends each deployment succeeded, failed or
//! canceled with a reason. Every transition is persisted (and flushed) before anything is
//! published. It is driven by messages and one timer for the nearest deadline; after a
//! restart it reloads running deployments, replays stored status events it may have missed
//! and recomputes timers from the persisted deadlines.

use crate::api::errors::ApiError;
use crate::mqtt::publish::{publish_desired, stage_desired};
use crate::service::Service;
use crate::store::{DeploymentRecord, TargetRecord};
use hammer_protocol::api::{DeploymentState, Event, TargetState};
use hammer_protocol::{now_ms, DesiredState, Phase, RunState, StatusEvent, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// What the engine is told.
pub enum RolloutMsg {
    /// A new deployment (not yet stored): store it and start it.
    Create {
        dep: Box<DeploymentRecord>,
        reply: oneshot::Sender<Result<DeploymentRecord, ApiError>>,
    },
    /// A stored status event of a device.
    Status {
        device_id: String,
        event: StatusEvent,
    },
    /// Cancel a running deployment of `owner`.
    Cancel {
        id: String,
        owner: String,
        by: String,
        reply: oneshot::Sender<Result<DeploymentRecord, ApiError>>,
    },
    /// Which running deployment holds a device, if any.
    Holder {
        device_id: String,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// The engine's state.
pub struct Engine {
    svc: Arc<Service>,
    running: HashMap<String, DeploymentRecord>,
    /// Device id → running deployment that has it pending or in flight.
    by_device: HashMap<String, String>,
    /// Running deployments with status-driven changes not yet persisted → since when (ms).
    unsaved: HashMap<String, u64>,
    /// Running deployment → device id → index of its target (targets never move).
    target_index: HashMap<String, HashMap<String, usize>>,
}

/// Status-driven target changes of a running deployment are persisted at most this long after
/// they happen, not once per batch: at 10,000 targets one write is a multi-megabyte record.
/// Nothing is lost meanwhile: the status events are durable before they get here and `load`
/// replays them. Launches, cancels and ends are persisted at once.
const PERSIST_EVERY_MS: u64 = 250;

/// Most inbox messages handled under one step per deployment.
const MAX_BATCH: usize = 4096;

fn is_active(t: &TargetRecord) -> bool {
    matches!(t.state, TargetState::Pending | TargetState::InFlight)
}

impl Engine {
    /// Loads running deployments and replays stored status events of their in-flight targets.
    pub async fn load(svc: Arc<Service>) -> anyhow::Result<Engine> {
        let mut eng = Engine {
            svc: svc.clone(),
            running: HashMap::new(),
            by_device: HashMap::new(),
            unsaved: HashMap::new(),
            target_index: HashMap::new(),
        };
        let mut replay = Vec::new();
        for dep in svc.store.deployments()? {
            if dep.state != DeploymentState::Running {
                continue;
            }
            for t in dep.targets.iter().filter(|t| is_active(t)) {
                eng.by_device.insert(t.device_id.clone(), dep.id.clone());
                if t.state == TargetState::InFlight {
                    for s in svc.store.statuses_of(&t.device_id)? {
                        if s.event.deployment_id.as_deref() == Some(dep.id.as_str())
                            && s.event.generation.is_some()
                            && s.event.generation == t.generation
                        {
                            replay.push((t.device_id.clone(), s.event));
                        }
                    }
                }
            }
            eng.running.insert(dep.id.clone(), dep);
        }
        if !eng.running.is_empty() {
            tracing::info!(
                deployments = eng.running.len(),
                "resuming running deployments"
            );
        }
        for (device_id, event) in replay {
            eng.on_status(&device_id, event).await;
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
                return self.on_status(&device_id, event).await;
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
            RolloutMsg::Holder { device_id, reply } => {
                let _ = reply.send(self.by_device.get(&device_id).cloned());
            }
        }
        None
    }

    fn next_deadline(&self) -> Option<u64> {
        let save = self.unsaved.values().min().map(|t| t + PERSIST_EVERY_MS);
        self.running
            .values()
            .flat_map(|d| d.targets.iter())
            .filter(|t| t.state == TargetState::InFlight)
            .filter_map(|t| t.deadline)
            .chain(save)
            .min()
    }

    async fn create(&mut self, dep: DeploymentRecord) -> Result<DeploymentRecord, ApiError> {
        for t in &dep.targets {
            if let Some(other) = self.by_device.get(&t.device_id) {
                return Err(ApiError::conflict(format!(
                    "device {:?} is already in running deployment {other}; wait for it to end or cancel it",
                    t.device
                )));
            }
        }
        for t in &dep.targets {
            self.by_device.insert(t.device_id.clone(), dep.id.clone());
        }
        let id = dep.id.clone();
        tracing::info!(deployment = %id, targets = dep.targets.len(), "deployment created");
        self.running.insert(id.clone(), dep);
        if !self.step(&id).await {
            return Err(ApiError::internal(
                "the deployment could not be stored; it may not survive a restart",
            ));
        }
        match self.current(&id) {
            Some(d) => Ok(d),
            None => Err(ApiError::internal("deployment vanished")),
        }
    }

    /// The deployment as running or, once ended, as stored.
    fn current(&self, id: &str) -> Option<DeploymentRecord> {
        self.running
            .get(id)
            .cloned()
            .or_else(|| self.svc.store.deployment(id).ok().flatten())
    }

    async fn cancel(
        &mut self,
        id: &str,
        owner: &str,
        by: &str,
    ) -> Result<DeploymentRecord, ApiError> {
        let Some(dep) = self.running.get_mut(id).filter(|d| d.owner == owner) else {
            return match self.svc.store.deployment(id)? {
                Some(d) if d.owner == owner => Err(ApiError::conflict(format!(
                    "deployment {id} already ended ({})",
                    serde_json::to_string(&d.state)
                        .unwrap_or_default()
                        .trim_matches('"')
                ))),
                _ => Err(ApiError::no_deployment(id)),
            };
        };
        let now = now_ms();
        for t in dep.targets.iter_mut() {
            match t.state {
                TargetState::Pending => {
                    t.state = TargetState::Skipped;
                    t.detail = Some("not attempted: the deployment was canceled".into());
                }
                TargetState::InFlight => {
                    t.state = TargetState::Skipped;
                    t.detail = Some(
                        "canceled while in flight; the device may still apply this release".into(),
                    );
                }
                _ => continue,
            }
            t.deadline = None;
            t.updated_at = now;
        }
        dep.state = DeploymentState::Canceled;
        dep.reason = Some(format!("canceled by {by}"));
        tracing::info!(deployment = %id, "deployment canceled");
        if !self.step(id).await {
            return Err(ApiError::internal(
                "the cancellation could not be stored; it may not survive a restart",
            ));
        }
        self.current(id).ok_or_else(|| ApiError::no_deployment(id))
    }

    /// Applies a status event to the target it belongs to; returns the deployment to step.
    async fn on_status(&mut self, device_id: &str, ev: StatusEvent) -> Option<String> {
        let dep_id = self.by_device.get(device_id)?.clone();
        if ev.deployment_id.as_deref() != Some(dep_id.as_str()) {
            return None;
        }
        let dep = self.running.get_mut(&dep_id)?;
        let retries = dep.strategy.retries;
        let index = self.target_index.entry(dep_id.clone()).or_insert_with(|| {
            dep.targets
                .iter()
                .enumerate()
                .map(|(i, t)| (t.device_id.clone(), i))
                .collect()
        });
        let t = dep.targets.get_mut(*index.get(device_id)?)?;
        if t.state != TargetState::InFlight
            || (ev.generation.is_some() && ev.generation != t.generation)
        {
            return None;
        }
        t.last_phase = Some(ev.phase);
        t.updated_at = now_ms();
        match ev.phase {
            Phase::Fetched => {
                if let Some(c) = &ev.commit {
                    t.commit = Some(c.clone());
                    if dep.commit.is_none() {
                        tracing::info!(deployment = %dep_id, commit = %c, "pinned commit");
                        dep.commit = Some(c.clone());
                    }
                }
            }
            Phase::Running => {
                t.state = TargetState::Succeeded;
                t.commit = ev.commit.clone().or(t.commit.take());
                t.detail = None;
                t.deadline = None;
            }
            Phase::Failed | Phase::RolledBack | Phase::Refused => {
                let what = match ev.phase {
                    Phase::Failed => "failed",
                    Phase::RolledBack => "rolled back",
                    _ => "refused the desired state",
                };
                let detail = match &ev.detail {
                    Some(d) => format!("{what}: {d}"),
                    None => what.to_owned(),
                };
                attempt_over(t, retries, TargetState::Failed, detail);
            }
            _ => {}
        }
        Some(dep_id)
    }

    async fn on_timer(&mut self) {
        let now = now_ms();
        let mut touched = Vec::new();
        for dep in self.running.values_mut() {
            let (retries, timeout) = (dep.strategy.retries, dep.strategy.timeout_secs);
            for t in dep.targets.iter_mut() {
                if t.state == TargetState::InFlight && t.deadline.is_some_and(|d| d <= now) {
                    let detail = format!(
                        "no terminal status within {timeout}s (last phase: {})",
                        t.last_phase
                            .map(|p| serde_json::to_string(&p).unwrap_or_default())
                            .unwrap_or_else(|| "none".into())
                            .trim_matches('"')
                    );
                    attempt_over(t, retries, TargetState::TimedOut, detail);
                    t.updated_at = now;
                    touched.push(dep.id.clone());
                }
            }
        }
        touched.dedup();
        for (id, since) in &self.unsaved {
            if since + PERSIST_EVERY_MS <= now && !touched.contains(id) {
                touched.push(id.clone());
            }
        }
        for id in touched {
            self.step(&id).await;
        }
    }

    /// Advances a deployment: abort check, launches as slots allow, end check; then persists
    /// and announces it. Returns false when the deployment could not be persisted (callers
    /// that answer a request must not acknowledge it then); other callers retry on the next
    /// step.
    async fn step(&mut self, id: &str) -> bool {
        self.step_with(id, true).await
    }

    /// [`Engine::step`]; with `always_persist` false, a step that only applied status events
    /// is persisted within [`PERSIST_EVERY_MS`] instead of at once.
    async fn step_with(&mut self, id: &str, always_persist: bool) -> bool {
        let Some(mut dep) = self.running.remove(id) else {
            self.unsaved.remove(id);
            self.target_index.remove(id);
            return true;
        };
        let state_before = dep.state;
        let mut launched = 0usize;
        // Launches share one flush of the device records and are published after the
        // deployment record is persisted: a device acts only on what survives a restart.
        let mut staged: Vec<(usize, DesiredState)> = Vec::new();
        if dep.state == DeploymentState::Running {
            check_abort(&mut dep);
        }
        if dep.state == DeploymentState::Running {
            let max = dep
                .strategy
                .max_in_flight
                .map(|m| m.max(1) as usize)
                .unwrap_or(usize::MAX);
            let mut in_flight = dep
                .targets
                .iter()
                .filter(|t| t.state == TargetState::InFlight)
                .count();
            let mut next_pending = 0;
            while in_flight < max {
                let Some(i) = dep.targets[next_pending..]
                    .iter()
                    .position(|t| t.state == TargetState::Pending)
                    .map(|i| i + next_pending)
                else {
                    break;
                };
                next_pending = i + 1;
                if let Some(desired) = self.stage(&mut dep, i) {
                    staged.push((i, desired));
                }
                launched += 1;
                if dep.targets[i].state == TargetState::InFlight {
                    in_flight += 1;
                }
                // A launch that failed at once may trip the threshold.
                check_abort(&mut dep);
                if dep.state != DeploymentState::Running {
                    break;
                }
            }
            if !staged.is_empty() {
                if let Err(e) = self.svc.store.flush().await {
                    tracing::warn!(deployment = %dep.id, error = %e, "cannot store desired states");
                    for (i, _) in staged.drain(..) {
                        let t = &mut dep.targets[i];
                        t.state = TargetState::Failed;
                        t.deadline = None;
                        t.detail = Some(format!("could not store the desired state: {e}"));
                    }
                    check_abort(&mut dep);
                }
            }
            if !dep.targets.iter().any(is_active) && dep.state == DeploymentState::Running {
                let n = dep.targets.len();
                let bad = dep
                    .targets
                    .iter()
                    .filter(|t| t.state != TargetState::Succeeded)
                    .count();
                if bad == 0 {
                    dep.state = DeploymentState::Succeeded;
                } else {
                    dep.state = DeploymentState::Failed;
                    dep.reason = Some(format!("{bad} of {n} devices did not succeed"));
                }
            }
        }
        let ended = dep.state != DeploymentState::Running;
        if ended {
            dep.finished_at.get_or_insert_with(now_ms);
            for t in &dep.targets {
                if self.by_device.get(&t.device_id).map(String::as_str) == Some(id) {
                    self.by_device.remove(&t.device_id);
                }
            }
            tracing::info!(deployment = %id, state = ?dep.state, reason = ?dep.reason, "deployment ended");
        } else {
            for t in dep.targets.iter().filter(|t| !is_active(t)) {
                if self.by_device.get(&t.device_id).map(String::as_str) == Some(id) {
                    self.by_device.remove(&t.device_id);
                }
            }
        }
        let now = now_ms();
        let since = *self.unsaved.entry(id.to_owned()).or_insert(now);
        let due = always_persist
            || ended
            || launched > 0
            || dep.state != state_before
            || since + PERSIST_EVERY_MS <= now;
        let persisted = if due {
            match self.persist(&dep).await {
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
        let mut publish_failed = false;
        for (i, desired) in staged {
            if let Err(e) = publish_desired(&self.svc, &desired).await {
                tracing::warn!(deployment = %dep.id, device = %desired.device_id, error = %e, "cannot publish desired state");
                let t = &mut dep.targets[i];
                t.state = TargetState::Failed;
                t.deadline = None;
                t.detail = Some(format!("could not publish the desired state: {e}"));
                publish_failed = true;
            }
        }
        if publish_failed {
            // Recorded with the next step (within PERSIST_EVERY_MS, or at the next event).
            self.unsaved.entry(id.to_owned()).or_insert(now);
        }
        if self.svc.listening() {
            self.svc.emit(
                &dep.owner,
                dep.targets.iter().map(|t| t.device_id.clone()).collect(),
                Some(dep.id.clone()),
                Event::Deployment {
                    deployment: crate::views::deployment_view(&dep),
                },
            );
        }
        if ended {
            self.target_index.remove(id);
        } else {
            self.running.insert(id.to_owned(), dep);
        }
        persisted
    }

    async fn persist(&self, dep: &DeploymentRecord) -> anyhow::Result<()> {
        self.svc.store.put_deployment(dep)?;
        self.svc.store.flush().await?;
        Ok(())
    }

    /// Stages target `i`'s desired state (a new generation) and marks the target in flight;
    /// the caller flushes and publishes it.
    fn stage(&mut self, dep: &mut DeploymentRecord, i: usize) -> Option<DesiredState> {
        let now = now_ms();
        let device_id = dep.targets[i].device_id.clone();
        let (dep_id, git_ref, commit) = (dep.id.clone(), dep.git_ref.clone(), dep.commit.clone());
        let result = stage_desired(&self.svc, &device_id, |d, generation| {
            let setup = d.setup.as_ref()?;
            Some(DesiredState {
                v: PROTOCOL_VERSION,
                device_id: d.id.clone(),
                owner: d.owner.clone(),
                generation,
                deployment_id: dep_id.clone(),
                repo_url: setup.repo_url.clone(),
                git_ref: git_ref.clone().unwrap_or_else(|| setup.git_ref.clone()),
                commit: commit.clone(),
                start: setup.start.clone(),
                env: setup.env.clone(),
                health_window_secs: setup.health_window_secs,
                health_cmd: setup.health_cmd.clone(),
                run_state: RunState::Running,
                issued_at: now,
            })
        });
        let t = &mut dep.targets[i];
        t.updated_at = now;
        t.attempts += 1;
        match result {
            Ok(Some(rec)) => {
                t.state = TargetState::InFlight;
                t.generation = Some(rec.generation);
                t.last_phase = None;
                t.deadline = Some(now + u64::from(dep.strategy.timeout_secs) * 1000);
                tracing::debug!(deployment = %dep.id, device = %device_id, generation = rec.generation, "staged desired state");
                rec.desired
            }
            Ok(None) => {
                t.state = TargetState::Failed;
                t.detail =
                    Some("the device was deleted or has no setup; run `hammer setup` first".into());
                None
            }
            Err(e) => {
                tracing::warn!(deployment = %dep.id, device = %device_id, error = %e, "cannot store desired state");
                t.state = TargetState::Failed;
                t.detail = Some(format!("could not store the desired state: {e}"));
                None
            }
        }
    }
}

/// Ends the current attempt of a target: back to pending for a retry while retries remain,
/// else `final_state`.
fn attempt_over(t: &mut TargetRecord, retries: u32, final_state: TargetState, detail: String) {
    t.deadline = None;
    if t.attempts <= retries {
        t.state = TargetState::Pending;
        t.detail = Some(format!("attempt {} {detail}; retrying", t.attempts));
    } else {
        t.state = final_state;
        t.detail = Some(detail);
    }
}

/// Aborts when failed% ≥ P after at least M finished targets.
fn check_abort(dep: &mut DeploymentRecord) {
    let Some(p) = dep.strategy.abort_at_percent else {
        return;
    };
    let finished = dep
        .targets
        .iter()
        .filter(|t| {
            matches!(
                t.state,
                TargetState::Succeeded | TargetState::Failed | TargetState::TimedOut
            )
        })
        .count() as u64;
    let failed = dep
        .targets
        .iter()
        .filter(|t| matches!(t.state, TargetState::Failed | TargetState::TimedOut))
        .count() as u64;
    if finished == 0 || finished < u64::from(dep.strategy.abort_min_devices) {
        return;
    }
    if failed * 100 < u64::from(p) * finished {
        return;
    }
    let now = now_ms();
    for t in dep.targets.iter_mut() {
        match t.state {
            TargetState::Pending => {
                t.state = TargetState::Skipped;
                t.detail = Some(
                    "not attempted: the deployment was aborted; the device keeps its release"
                        .into(),
                );
            }
            TargetState::InFlight => {
                t.state = TargetState::Skipped;
                t.detail =
                    Some("aborted while in flight; the device may still apply this release".into());
            }
            _ => continue,
        }
        t.deadline = None;
        t.updated_at = now;
    }
    dep.state = DeploymentState::Failed;
    dep.reason = Some(format!(
        "aborted: {failed} of {finished} finished devices failed (threshold {p}%)"
    ));
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
