//! The reconciler: one task that owns the runtime state and ties git, releases, the app, the
//! supervisor and the health gate together. Every step is persisted before it is taken (see
//! the crash-safety notes in [`super`]); every visible step is reported.

use super::app::{self, AppSpec, AppUser};
use super::applog::{AppLog, TAIL_LINES};
use super::git::{self, FetchRequest};
use super::health_gate::{self, GateSpec};
use super::layout::Layout;
use super::releases::Releases;
use super::state::{Deployment, Release, RuntimeState, StateStore};
use super::supervisor::{Event, Supervisor};
use super::{Control, DesiredSlot, Report, ReportSink, RuntimeOptions, Shared};
use hammer_protocol::{DesiredState, GitCredentials, Phase, RunState};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The task behind a [`super::RuntimeHandle`].
pub struct Reconciler {
    opts: RuntimeOptions,
    store: StateStore,
    state: RuntimeState,
    releases: Releases,
    mirror: PathBuf,
    /// The app's writable folder (`HOME`, `HAMMER_APP_DATA`).
    app_data: PathBuf,
    user: Option<AppUser>,
    tag: String,
    log: AppLog,
    sink: Arc<dyn ReportSink>,
    shared: Arc<Mutex<Shared>>,
    sup: Supervisor,
    desired_rx: watch::Receiver<DesiredSlot>,
    control_rx: mpsc::Receiver<Control>,
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

impl Reconciler {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        opts: RuntimeOptions,
        layout: Layout,
        store: StateStore,
        state: RuntimeState,
        log: AppLog,
        sink: Arc<dyn ReportSink>,
        shared: Arc<Mutex<Shared>>,
        desired_rx: watch::Receiver<DesiredSlot>,
        control_rx: mpsc::Receiver<Control>,
    ) -> Reconciler {
        let dir = std::fs::canonicalize(&opts.data_dir).unwrap_or_else(|_| opts.data_dir.clone());
        let tag = hex::encode(&Sha256::digest(dir.as_os_str().as_encoded_bytes())[..8]);
        Reconciler {
            releases: layout.releases(),
            mirror: layout.mirror(),
            app_data: layout.app_data(),
            sup: Supervisor::new(opts.restart_backoff_cap),
            user: opts.app_user.clone(),
            opts,
            store,
            state,
            tag,
            log,
            sink,
            shared,
            desired_rx,
            control_rx,
        }
    }

    /// Recovers, then serves inputs until shut down or every handle is dropped.
    pub async fn run(mut self) {
        self.recover().await;
        loop {
            tokio::select! {
                changed = self.desired_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let slot = self.desired_rx.borrow_and_update().clone();
                    if let Some(input) = slot {
                        let (desired, creds) = (*input).clone();
                        self.on_desired(desired, creds).await;
                    }
                }
                control = self.control_rx.recv() => match control {
                    None => return,
                    Some(Control::Restart) => self.on_restart().await,
                    Some(Control::Shutdown { stop_app, done }) => {
                        if stop_app {
                            self.stop_app().await;
                        }
                        let _ = done.send(());
                        return;
                    }
                },
                event = self.sup.next_event() => self.on_supervisor(event).await,
            }
        }
    }

    // ----- persistence and reports -------------------------------------------------------

    fn save(&mut self) {
        if let Err(e) = self.store.save(&self.state) {
            tracing::error!("persisting runtime state: {e}");
        }
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.state = self.state.clone();
        shared.restarts = self.sup.restarts;
    }

    fn report_for(
        &self,
        desired: &DesiredState,
        phase: Phase,
        commit: Option<&str>,
        detail: Option<String>,
        log_tail: Vec<String>,
    ) {
        self.sink.report(Report {
            generation: Some(desired.generation),
            deployment_id: Some(desired.deployment_id.clone()),
            phase,
            commit: commit.map(str::to_string),
            detail,
            log_tail,
        });
    }

    /// A report about the app of the current release (crash, restart, stop).
    fn report_app(&self, phase: Phase, detail: Option<String>, log_tail: Vec<String>) {
        let current = self.state.current.as_ref();
        self.sink.report(Report {
            generation: current.map(|r| r.generation),
            deployment_id: current.map(|r| r.deployment_id.clone()),
            phase,
            commit: current.map(|r| r.commit.clone()),
            detail,
            log_tail,
        });
    }

    // ----- the app -------------------------------------------------------------------------

    /// Stops the app (if any) and cancels a pending restart.
    async fn stop_app(&mut self) {
        self.sup.restart_at = None;
        if let Some(app) = self.sup.app.take() {
            app.stop(self.opts.stop_grace).await;
        }
        if self.state.app.take().is_some() {
            self.save();
        }
    }

    /// Starts the app of the current release and records it.
    fn start_app(&mut self) -> Result<(), String> {
        let Some(current) = self.state.current.clone() else {
            return Err("there is no current release".to_string());
        };
        let dir = self.releases.path(&current.commit);
        let spec = AppSpec {
            dir: &dir,
            start: &current.start,
            env: &current.env,
            commit: &current.commit,
            generation: current.generation,
            user: self.user.as_ref(),
            app_data: &self.app_data,
            tag: &self.tag,
        };
        let running = app::start(&spec, &self.log).map_err(|e| e.to_string())?;
        self.state.app = Some(running.record());
        self.sup.app = Some(running);
        self.save();
        Ok(())
    }

    fn tail(&self, since: u64) -> Vec<String> {
        self.log.tail_since(since, TAIL_LINES)
    }

    async fn on_supervisor(&mut self, event: Event) {
        match event {
            Event::Exited(status) => {
                let Some(app) = self.sup.app.take() else {
                    return;
                };
                let uptime = app.started.elapsed();
                let mark = app.log_mark;
                // Leftover members of its group go too.
                app.stop(self.opts.stop_grace).await;
                self.state.app = None;
                self.save();
                let tail = self.tail(mark);
                let delay = self.sup.backoff.next_delay(uptime);
                self.report_app(
                    Phase::Crashed,
                    Some(format!(
                        "the app {}; restarting in {} s",
                        app::describe_exit(Some(status)),
                        delay.as_secs()
                    )),
                    tail,
                );
                if !self.state.stopped && self.state.current.is_some() {
                    self.sup.restart_at = Some(Instant::now() + delay);
                }
            }
            Event::RestartDue => {
                if self.state.stopped || self.sup.app.is_some() {
                    return;
                }
                match self.start_app() {
                    Ok(()) => {
                        self.sup.restarts += 1;
                        self.save();
                        self.report_app(
                            Phase::Restarted,
                            Some(format!(
                                "started again after a crash (restart {})",
                                self.sup.restarts
                            )),
                            Vec::new(),
                        );
                    }
                    Err(e) => {
                        let delay = self.sup.backoff.next_delay(Duration::ZERO);
                        self.report_app(
                            Phase::Crashed,
                            Some(format!("{e}; retrying in {} s", delay.as_secs())),
                            Vec::new(),
                        );
                        self.sup.restart_at = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }

    async fn on_restart(&mut self) {
        if self.state.stopped || self.state.current.is_none() {
            tracing::info!("restart ignored: the app is stopped or not deployed");
            return;
        }
        self.stop_app().await;
        match self.start_app() {
            Ok(()) => {
                self.sup.restarts += 1;
                self.sup.backoff.reset();
                self.save();
                self.report_app(
                    Phase::Restarted,
                    Some("restarted on request".to_string()),
                    Vec::new(),
                );
            }
            Err(e) => self.report_app(Phase::Crashed, Some(e), Vec::new()),
        }
    }

    /// Applies a run state to the current release.
    async fn apply_run_state(&mut self, desired: &DesiredState) {
        let commit = self.state.current.as_ref().map(|r| r.commit.clone());
        match desired.run_state {
            RunState::Stopped => {
                self.state.stopped = true;
                self.save();
                self.stop_app().await;
                self.report_for(desired, Phase::Stopped, commit.as_deref(), None, Vec::new());
            }
            RunState::Running | RunState::Unknown => {
                self.state.stopped = false;
                self.save();
                if self.sup.app.is_some() || commit.is_none() {
                    self.report_for(desired, Phase::Running, commit.as_deref(), None, Vec::new());
                    return;
                }
                self.report_for(
                    desired,
                    Phase::Starting,
                    commit.as_deref(),
                    None,
                    Vec::new(),
                );
                self.sup.restart_at = None;
                match self.start_app() {
                    Ok(()) => self.report_for(
                        desired,
                        Phase::Running,
                        commit.as_deref(),
                        None,
                        Vec::new(),
                    ),
                    Err(e) => self.report_for(
                        desired,
                        Phase::Failed,
                        commit.as_deref(),
                        Some(e),
                        Vec::new(),
                    ),
                }
            }
        }
    }

    // ----- desired states ------------------------------------------------------------------

    async fn on_desired(&mut self, desired: DesiredState, creds: Option<GitCredentials>) {
        let generation = desired.generation;
        if self.state.rolled_back.contains(&generation) {
            tracing::info!(generation, "generation was rolled back from; not retried");
            return;
        }
        if let Some(acted) = &self.state.desired {
            if generation < acted.generation {
                tracing::warn!(generation, "older desired state ignored");
                return;
            }
            if generation == acted.generation {
                let want_stopped = desired.run_state == RunState::Stopped;
                if want_stopped != self.state.stopped && self.state.deployment == Deployment::Idle {
                    self.apply_run_state(&desired).await;
                }
                return;
            }
        }
        self.state.desired = Some(desired.clone());
        self.state.deployment = Deployment::Fetching {
            desired: Box::new(desired.clone()),
        };
        self.save();
        self.report_for(&desired, Phase::Received, None, None, Vec::new());
        self.deploy(desired, creds).await;
    }

    /// From the fetch to running / rolled back / failed. `Deployment::Fetching` is persisted.
    async fn deploy(&mut self, desired: DesiredState, creds: Option<GitCredentials>) {
        if let (Some(pin), Some(current)) = (&desired.commit, &self.state.current) {
            if current.same_run(&Release::from_desired(&desired, pin)) {
                return self.confirm_current(&desired).await;
            }
        }
        self.report_for(&desired, Phase::Fetching, None, None, Vec::new());
        let request = FetchRequest {
            url: desired.repo_url.clone(),
            git_ref: desired.git_ref.clone(),
            commit: desired.commit.clone(),
            credentials: creds,
        };
        let (mirror, releases) = (self.mirror.clone(), self.releases.clone());
        let result = tokio::task::spawn_blocking(move || {
            let r = git::fetch_and_checkout(&mirror, &releases, &request);
            r.map_err(|e| git::redact(&e.to_string(), request.credentials.as_ref()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the git task failed: {e}")));
        let commit = match result {
            Ok(c) => c,
            Err(message) => return self.fail(&desired, None, message),
        };
        self.report_for(&desired, Phase::Fetched, Some(&commit), None, Vec::new());
        let release = Release::from_desired(&desired, &commit);
        if self
            .state
            .current
            .as_ref()
            .is_some_and(|c| c.same_run(&release))
        {
            return self.confirm_current(&desired).await;
        }
        if let Err(message) = check_start(&self.releases.path(&commit), &desired.start) {
            return self.fail(&desired, Some(&commit), message);
        }
        let previous = self.state.current.clone();
        self.switch_and_verify(desired, release, previous).await;
    }

    /// A deployment that ends before anything changed: the old app keeps running.
    fn fail(&mut self, desired: &DesiredState, commit: Option<&str>, message: String) {
        self.state.deployment = Deployment::Idle;
        self.save();
        self.report_for(desired, Phase::Failed, commit, Some(message), Vec::new());
    }

    /// The desired state names what already runs: confirm it (and apply its run state).
    async fn confirm_current(&mut self, desired: &DesiredState) {
        if let Some(current) = self.state.current.as_mut() {
            current.generation = desired.generation;
            current.deployment_id = desired.deployment_id.clone();
        }
        self.state.deployment = Deployment::Idle;
        self.save();
        let want_stopped = desired.run_state == RunState::Stopped;
        if want_stopped || self.sup.app.is_none() && self.sup.restart_at.is_none() {
            self.apply_run_state(desired).await;
        } else {
            self.state.stopped = false;
            self.save();
            let commit = self.state.current.as_ref().map(|r| r.commit.clone());
            self.report_for(
                desired,
                Phase::Running,
                commit.as_deref(),
                Some("this commit already runs".to_string()),
                Vec::new(),
            );
        }
    }

    /// Stops the old app, swaps `current`, starts the new release and runs its health gate.
    async fn switch_and_verify(
        &mut self,
        desired: DesiredState,
        release: Release,
        previous: Option<Release>,
    ) {
        self.state.deployment = Deployment::Switching {
            desired: Box::new(desired.clone()),
            release: release.clone(),
            previous: previous.clone(),
        };
        self.save();
        self.stop_app().await;
        if let Err(e) = self.releases.set_current(&release.commit) {
            let reason = format!("could not switch to the new release: {e}");
            return self
                .roll_back(desired, release, previous, reason, Vec::new())
                .await;
        }
        self.state.current = Some(release.clone());
        self.state.previous = previous.clone();
        if desired.run_state == RunState::Stopped {
            self.state.stopped = true;
            self.state.deployment = Deployment::Idle;
            self.save();
            self.report_for(
                &desired,
                Phase::Stopped,
                Some(&release.commit),
                None,
                Vec::new(),
            );
            self.prune();
            return;
        }
        self.state.stopped = false;
        self.state.deployment = Deployment::Verifying {
            desired: Box::new(desired.clone()),
            release: release.clone(),
            previous: previous.clone(),
        };
        self.save();
        self.report_for(
            &desired,
            Phase::Starting,
            Some(&release.commit),
            None,
            Vec::new(),
        );
        if let Err(e) = self.start_app() {
            return self
                .roll_back(desired, release, previous, e, Vec::new())
                .await;
        }
        self.report_for(
            &desired,
            Phase::Verifying,
            Some(&release.commit),
            None,
            Vec::new(),
        );
        let dir = self.releases.path(&release.commit);
        let gate = GateSpec {
            window: Duration::from_secs(u64::from(desired.health_window_secs)),
            health_cmd: desired.health_cmd.as_deref(),
            dir: &dir,
            env: &release.env,
            commit: &release.commit,
            generation: release.generation,
            user: self.user.as_ref(),
            app_data: &self.app_data,
        };
        let Some(running) = self.sup.app.as_mut() else {
            return;
        };
        let mark = running.log_mark;
        match health_gate::verify(running, &gate).await {
            Ok(()) => {
                self.sup.backoff.reset();
                self.state.deployment = Deployment::Idle;
                self.save();
                self.report_for(
                    &desired,
                    Phase::Running,
                    Some(&release.commit),
                    None,
                    Vec::new(),
                );
                self.prune();
            }
            Err(failure) => {
                let tail = self.tail(mark);
                self.roll_back(desired, release, previous, failure.to_string(), tail)
                    .await;
            }
        }
    }

    /// Stops the failed release and goes back to `previous` (or to nothing).
    async fn roll_back(
        &mut self,
        desired: DesiredState,
        release: Release,
        previous: Option<Release>,
        reason: String,
        log_tail: Vec<String>,
    ) {
        self.state.deployment = Deployment::RollingBack {
            desired: Box::new(desired.clone()),
            release: release.clone(),
            previous: previous.clone(),
            reason: reason.clone(),
            log_tail: log_tail.clone(),
        };
        self.save();
        self.stop_app().await;
        self.state.rolled_back.insert(desired.generation);
        let target = previous.filter(|p| self.releases.exists(&p.commit));
        match target {
            Some(prev) => {
                if let Err(e) = self.releases.set_current(&prev.commit) {
                    tracing::error!("swapping back to {}: {e}", prev.commit);
                }
                self.state.current = Some(prev.clone());
                self.state.previous = None;
                self.state.deployment = Deployment::Idle;
                self.save();
                let mut detail = format!("{reason}; rolled back to {}", short(&prev.commit));
                if !self.state.stopped {
                    if let Err(e) = self.start_app() {
                        detail.push_str(&format!(" (but it did not start: {e})"));
                    }
                }
                self.report_for(
                    &desired,
                    Phase::RolledBack,
                    Some(&release.commit),
                    Some(detail),
                    log_tail,
                );
            }
            None => {
                self.releases.clear_current();
                self.state.current = None;
                self.state.previous = None;
                self.state.deployment = Deployment::Idle;
                self.save();
                self.report_for(
                    &desired,
                    Phase::Failed,
                    Some(&release.commit),
                    Some(format!(
                        "{reason}; there is no previous release to go back to"
                    )),
                    log_tail,
                );
            }
        }
    }

    fn prune(&self) {
        let mut protect: Vec<&str> = Vec::new();
        if let Some(c) = &self.state.current {
            protect.push(&c.commit);
        }
        if let Some(p) = &self.state.previous {
            protect.push(&p.commit);
        }
        self.releases.prune(self.opts.keep_releases, &protect);
    }

    // ----- recovery ------------------------------------------------------------------------

    /// Finishes or rolls back what the previous run left (see the module doc of `runtime`).
    async fn recover(&mut self) {
        self.releases.remove_temps();
        let _ = std::fs::remove_dir_all(self.mirror.with_extension("git.tmp"));
        let mut found = false;
        if let Some(record) = self.state.app.take() {
            found |= app::stop_recorded(record, self.opts.stop_grace).await;
        }
        for leader in super::procinfo::find_tagged_leaders(app::TAG_ENV, &self.tag) {
            let record = super::state::AppRecord {
                pgid: leader.pid,
                start_time: leader.start_time,
            };
            found |= app::stop_recorded(record, self.opts.stop_grace).await;
        }
        self.save();
        match self.state.deployment.clone() {
            Deployment::Idle => {
                self.restore_current_link();
                if !self.state.stopped && self.state.current.is_some() {
                    let detail = if found {
                        "the manager restarted; the app was stopped and started again"
                    } else {
                        "the manager started; the app started"
                    };
                    match self.start_app() {
                        Ok(()) => self.report_app(Phase::Restarted, Some(detail.into()), vec![]),
                        Err(e) => self.report_app(Phase::Crashed, Some(e), vec![]),
                    }
                }
            }
            Deployment::Fetching { desired } => {
                self.restore_current_link();
                if !self.state.stopped && self.state.current.is_some() {
                    if let Err(e) = self.start_app() {
                        self.report_app(Phase::Crashed, Some(e), vec![]);
                    }
                }
                let creds = self.opts.recovery_credentials.clone();
                self.deploy(*desired, creds).await;
            }
            Deployment::Switching {
                desired,
                release,
                previous,
            }
            | Deployment::Verifying {
                desired,
                release,
                previous,
            } => {
                if self.releases.exists(&release.commit) {
                    self.switch_and_verify(*desired, release, previous).await;
                } else {
                    let reason = "the new release is missing after a restart".to_string();
                    self.roll_back(*desired, release, previous, reason, vec![])
                        .await;
                }
            }
            Deployment::RollingBack {
                desired,
                release,
                previous,
                reason,
                log_tail,
            } => {
                self.roll_back(*desired, release, previous, reason, log_tail)
                    .await;
            }
        }
    }

    /// Makes `current` agree with the persisted current release.
    fn restore_current_link(&mut self) {
        let Some(current) = self.state.current.clone() else {
            return;
        };
        if self.releases.current().as_deref() == Some(current.commit.as_str()) {
            return;
        }
        if let Err(e) = self.releases.set_current(&current.commit) {
            tracing::error!("restoring the current release link: {e}");
        }
    }
}

/// Refuses a start command whose script (first word, a path) is missing or not executable.
fn check_start(dir: &Path, start: &str) -> Result<(), String> {
    let Some(first) = start.split_whitespace().next() else {
        return Err("the start command is empty".to_string());
    };
    let plain = !first.contains(['$', '`', '"', '\'', '(', ')', ';', '&', '|', '<', '>', '*']);
    if !first.contains('/') || !plain {
        return Ok(());
    }
    let path = dir.join(first);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(_) => {
            return Err(format!(
                "the start script {first} does not exist in the release"
            ))
        }
    };
    if !meta.is_file() {
        return Err(format!("the start script {first} is not a file"));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!(
            "the start script {first} is not executable (mode {:o}); commit it with the executable bit (git update-index --chmod=+x {first})",
            mode & 0o777
        ));
    }
    Ok(())
}
