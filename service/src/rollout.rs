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
//! it is relaunched once with the pinned commit; told the pinned commit, it fails. The
//! decisions are pure functions ([`check_commit`], [`awaiting_pin`]). Every transition is persisted (and flushed) before anything is
//! published. It is driven by messages and one timer for the nearest deadline; after a
//! restart it reloads running deployments, replays stored status events it may have missed
//! and recomputes timers from the persisted deadlines.

use crate::api::errors::ApiError;
use crate::mqtt::publish::{publish_desired, stage_desired};
use crate::service::Service;
use crate::store::{DeploymentRecord, TargetRecord};
use hammer_protocol::api::{DeploymentState, Event, TargetState};
use hammer_protocol::{now_ms, DesiredState, Phase, RunState, StatusEvent, PROTOCOL_VERSION};
use std::collections::{HashMap, HashSet};
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
    /// Device id → generation of its live desired state when that one names its deployment's
    /// pinned commit (a device is in at most one running deployment).
    names_pin: HashMap<String, u64>,
    /// Running deployment → targets to relaunch with the pinned commit at the next step.
    relaunch: HashMap<String, Vec<usize>>,
    /// Running deployments pinned since their last step: republish what awaits the pin.
    pinned_now: HashSet<String>,
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
            names_pin: HashMap::new(),
            relaunch: HashMap::new(),
            pinned_now: HashSet::new(),
        };
        let mut replay = Vec::new();
        for dep in svc.store.deployments()? {
            if dep.state != DeploymentState::Running {
                continue;
            }
            if dep.commit.is_some() {
                // A restart between the pin and its republish must not leave a target behind.
                eng.pinned_now.insert(dep.id.clone());
            }
            for t in dep.targets.iter().filter(|t| is_active(t)) {
                eng.by_device.insert(t.device_id.clone(), dep.id.clone());
                if let (Some(pin), Some(g)) = (&dep.commit, t.generation) {
                    let live = svc.store.device(&t.device_id)?.and_then(|d| d.desired);
                    if live.is_some_and(|d| {
                        d.generation == g
                            && d.commit.as_deref().is_some_and(|c| same_commit(c, pin))
                    }) {
                        eng.names_pin.insert(t.device_id.clone(), g);
                    }
                }
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

    async fn create(&mut self, mut dep: DeploymentRecord) -> Result<DeploymentRecord, ApiError> {
        for t in &dep.targets {
            if let Some(other) = self.by_device.get(&t.device_id) {
                return Err(ApiError::conflict(format!(
                    "device {:?} is already in running deployment {other}; wait for it to end or cancel it",
                    t.device
                )));
            }
        }
        if dep.commit.is_none() {
            // The user named the commit: no device gets to choose it.
            dep.commit = commit_named_by(dep.git_ref.as_deref());
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
        let i = *index.get(device_id)?;
        let t = dep.targets.get_mut(i)?;
        if t.state != TargetState::InFlight
            || (ev.generation.is_some() && ev.generation != t.generation)
        {
            return None;
        }
        t.last_phase = Some(ev.phase);
        t.updated_at = now_ms();
        match ev.phase {
            Phase::Fetched | Phase::Running => {
                let running = ev.phase == Phase::Running;
                let reported = match (&ev.commit, running) {
                    (Some(c), _) => Some(c.clone()),
                    // Running names no commit: the one it fetched (and that was checked).
                    (None, true) => t.commit.clone(),
                    (None, false) => None,
                };
                let names_pin = t.generation.is_some()
                    && self.names_pin.get(device_id) == t.generation.as_ref();
                let verdict = check_commit(
                    dep.commit.as_deref(),
                    reported.as_deref(),
                    names_pin,
                    running,
                );
                if reported.is_some() {
                    t.commit = reported.clone();
                }
                match verdict {
                    CommitCheck::Pin => {
                        tracing::info!(deployment = %dep_id, commit = ?reported, device = %device_id, "pinned commit from the first report naming one");
                        dep.commit = reported;
                        self.pinned_now.insert(dep_id.clone());
                    }
                    CommitCheck::Agrees | CommitCheck::Unknown => {}
                    CommitCheck::Relaunch(detail) => {
                        tracing::info!(deployment = %dep_id, device = %device_id, "{detail}");
                        t.detail =
                            Some(crate::store::cut(&detail, crate::store::MAX_DETAIL).into_owned());
                        self.relaunch.entry(dep_id.clone()).or_default().push(i);
                        return Some(dep_id);
                    }
                    CommitCheck::Fail(detail) => {
                        tracing::warn!(deployment = %dep_id, device = %device_id, "{detail}");
                        t.state = TargetState::Failed;
                        t.deadline = None;
                        t.detail =
                            Some(crate::store::cut(&detail, crate::store::MAX_DETAIL).into_owned());
                        return Some(dep_id);
                    }
                }
                if running {
                    t.state = TargetState::Succeeded;
                    t.detail = None;
                    t.deadline = None;
                }
            }
            Phase::Failed | Phase::RolledBack | Phase::Refused => {
                let what = match ev.phase {
                    Phase::Failed => "failed",
                    Phase::RolledBack => "rolled back",
                    _ => "refused the desired state",
                };
                // Device text, capped as the store caps it.
                let detail = match &ev.detail {
                    Some(d) => {
                        format!("{what}: {}", crate::store::cut(d, crate::store::MAX_DETAIL))
                    }
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
        let mut again = self.relaunch.remove(id).unwrap_or_default();
        if self.pinned_now.remove(id) && dep.commit.is_some() {
            again.extend(awaiting_pin(&dep.targets, |t| {
                t.generation.is_some() && self.names_pin.get(&t.device_id) == t.generation.as_ref()
            }));
        }
        if dep.state == DeploymentState::Running && !again.is_empty() {
            again.sort_unstable();
            again.dedup();
            for i in again {
                if dep.targets[i].state != TargetState::InFlight {
                    continue;
                }
                // The same attempt, now naming the pinned commit: a new generation.
                if let Some(desired) = self.stage(&mut dep, i, false) {
                    staged.push((i, desired));
                }
                launched += 1;
            }
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
                if let Some(desired) = self.stage(&mut dep, i, true) {
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
                    self.names_pin.remove(&t.device_id);
                }
            }
            self.relaunch.remove(id);
            self.pinned_now.remove(id);
            tracing::info!(deployment = %id, state = ?dep.state, reason = ?dep.reason, "deployment ended");
        } else {
            for t in dep.targets.iter().filter(|t| !is_active(t)) {
                if self.by_device.get(&t.device_id).map(String::as_str) == Some(id) {
                    self.by_device.remove(&t.device_id);
                    self.names_pin.remove(&t.device_id);
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

    /// Stages target `i`'s desired state (a new generation, naming the deployment's commit if
    /// it has one) and marks the target in flight; the caller flushes and publishes it.
    /// `new_attempt` is false for a republish with the pinned commit (same attempt).
    fn stage(
        &mut self,
        dep: &mut DeploymentRecord,
        i: usize,
        new_attempt: bool,
    ) -> Option<DesiredState> {
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
        if new_attempt {
            t.attempts += 1;
        }
        match result {
            Ok(Some(rec)) => {
                if dep.commit.is_some() {
                    self.names_pin.insert(device_id.clone(), rec.generation);
                } else {
                    self.names_pin.remove(&device_id);
                }
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

/// Whether two commit ids are the same commit (hex is case-insensitive).
fn same_commit(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The commit a deployment's ref names by itself: a full commit id (40 hex digits for SHA-1,
/// 64 for SHA-256), lowercased. Branches, tags and abbreviated ids name none.
pub fn commit_named_by(git_ref: Option<&str>) -> Option<String> {
    let r = git_ref?.trim();
    (matches!(r.len(), 40 | 64) && r.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| r.to_ascii_lowercase())
}

/// What a target's `fetched` or `running` report means for the deployment's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CommitCheck {
    /// Nothing is pinned and the report names no commit: nothing to check.
    Unknown,
    /// The first report naming a commit: it pins the deployment.
    Pin,
    /// The report names the pinned commit.
    Agrees,
    /// Launched before the pin, the device resolved another commit: relaunch it with the pin.
    Relaunch(String),
    /// Told the pinned commit, the device reports another one: the target fails.
    Fail(String),
}

/// Decides on a report of `reported` (None: the report named no commit) given the
/// deployment's `pinned` commit and whether the desired state the device acted on named it.
fn check_commit(
    pinned: Option<&str>,
    reported: Option<&str>,
    desired_named_pin: bool,
    running: bool,
) -> CommitCheck {
    let Some(pin) = pinned else {
        return match reported {
            Some(_) => CommitCheck::Pin,
            None => CommitCheck::Unknown,
        };
    };
    match reported {
        Some(r) if same_commit(r, pin) => CommitCheck::Agrees,
        _ => {
            let verb = if running { "ran" } else { "fetched" };
            let what = reported.map_or_else(|| "no commit".to_owned(), |r| format!("commit {r}"));
            if desired_named_pin {
                CommitCheck::Fail(format!(
                    "device {verb} {what}, the deployment is pinned to {pin}"
                ))
            } else {
                CommitCheck::Relaunch(format!(
                    "device {verb} {what} before the deployment was pinned to {pin}; relaunched with {pin}"
                ))
            }
        }
    }
}

/// Whether a target's last phase says it already fetched its release.
fn past_fetch(p: Option<Phase>) -> bool {
    matches!(
        p,
        Some(Phase::Fetched | Phase::Starting | Phase::Verifying | Phase::Running)
    )
}

/// The targets to republish naming a commit just pinned: in flight, not yet past `fetched`,
/// and acting on a desired state that does not name the pin. (Those past `fetched` are
/// checked by [`check_commit`] when they report.)
fn awaiting_pin(targets: &[TargetRecord], names_pin: impl Fn(&TargetRecord) -> bool) -> Vec<usize> {
    targets
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.state == TargetState::InFlight && !past_fetch(t.last_phase) && !names_pin(t)
        })
        .map(|(i, _)| i)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn target(n: usize, state: TargetState, last_phase: Option<Phase>) -> TargetRecord {
        TargetRecord {
            device_id: format!("id{n}"),
            device: format!("d{n}"),
            state,
            attempts: 1,
            last_phase,
            commit: None,
            detail: None,
            updated_at: 0,
            generation: Some(1),
            deadline: None,
        }
    }

    #[test]
    fn the_first_report_naming_a_commit_pins_it() {
        assert_eq!(check_commit(None, Some(A), false, false), CommitCheck::Pin);
        assert_eq!(check_commit(None, Some(A), false, true), CommitCheck::Pin);
        assert_eq!(check_commit(None, None, false, false), CommitCheck::Unknown);
    }

    #[test]
    fn a_report_of_the_pinned_commit_agrees_whatever_the_case() {
        let upper = A.to_ascii_uppercase();
        assert_eq!(
            check_commit(Some(A), Some(&upper), true, true),
            CommitCheck::Agrees
        );
        assert_eq!(
            check_commit(Some(A), Some(A), false, false),
            CommitCheck::Agrees
        );
    }

    #[test]
    fn another_commit_before_the_pin_reached_the_device_means_relaunch() {
        match check_commit(Some(A), Some(B), false, false) {
            CommitCheck::Relaunch(d) => {
                assert!(d.contains(B) && d.contains(A), "{d}");
            }
            other => panic!("expected a relaunch, got {other:?}"),
        }
    }

    #[test]
    fn another_commit_after_the_device_was_told_the_pin_fails_the_target() {
        assert_eq!(
            check_commit(Some(A), Some(B), true, true),
            CommitCheck::Fail(format!(
                "device ran commit {B}, the deployment is pinned to {A}"
            ))
        );
        // Naming no commit at all is no way around the check.
        assert!(matches!(
            check_commit(Some(A), None, true, true),
            CommitCheck::Fail(d) if d.contains("no commit")
        ));
        assert!(matches!(
            check_commit(Some(A), None, false, false),
            CommitCheck::Relaunch(_)
        ));
    }

    #[test]
    fn only_a_full_commit_id_as_ref_names_the_commit() {
        assert_eq!(commit_named_by(Some(A)).as_deref(), Some(A));
        assert_eq!(
            commit_named_by(Some(&A.to_ascii_uppercase())).as_deref(),
            Some(A)
        );
        let sha256 = "c".repeat(64);
        assert_eq!(commit_named_by(Some(&sha256)), Some(sha256.clone()));
        for r in ["main", "v1.0", "aaaaaaa", &"g".repeat(40), &"a".repeat(41)] {
            assert_eq!(commit_named_by(Some(r)), None, "{r}");
        }
        assert_eq!(commit_named_by(None), None);
    }

    #[test]
    fn after_a_pin_only_launched_targets_that_have_not_fetched_are_republished() {
        let targets = vec![
            target(0, TargetState::InFlight, Some(Phase::Fetched)), // the pinning one
            target(1, TargetState::InFlight, None),
            target(2, TargetState::InFlight, Some(Phase::Received)),
            target(3, TargetState::InFlight, Some(Phase::Fetching)),
            target(4, TargetState::InFlight, Some(Phase::Running)),
            target(5, TargetState::Pending, None), // its launch will name the pin
            target(6, TargetState::Succeeded, Some(Phase::Running)),
            target(7, TargetState::Failed, Some(Phase::Failed)),
            target(8, TargetState::InFlight, None), // already told the pin
        ];
        let named = |t: &TargetRecord| t.device_id == "id8";
        assert_eq!(awaiting_pin(&targets, named), vec![1, 2, 3]);
        assert!(awaiting_pin(&targets[4..=7], |_| false).is_empty());
    }
}
