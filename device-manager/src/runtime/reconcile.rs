//! The reconciler: one task that owns the runtime state and ties git, releases, the app, the
//! supervisor and the health gate together. Every step is persisted before it is taken (see
//! the crash-safety notes in [`super`]); every visible step is reported.

use super::app::{self, AppSpec, AppUser, Launch};
use super::applog::{AppLog, Tail, TAIL_LINES};
use super::git::{self, FetchRequest};
use super::health_gate::{self, GateSpec};
use super::install::{self, AfterCrash, Base};
use super::layout::Layout;
use super::releases::Releases;
use super::state::{Deployment, Release, RuntimeState, StateStore};
use super::supervisor::{Event, Supervisor};
use super::{Control, DesiredSlot, Report, ReportSink, RuntimeOptions, Shared};
use hammer_protocol::{DesiredState, GitCredentials, InstallStep, Phase, RunState, WireName};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A shutdown asked for while a step was in progress (the install): done once it is left.
struct PendingStop {
    stop_app: bool,
    done: Option<oneshot::Sender<()>>,
}

/// How an install step ended.
enum Installed {
    /// `releases/<commit>` is the installed folder.
    Done,
    /// The deployment fails; the running release was left as it was.
    Failed {
        reason: String,
        log_tail: Vec<String>,
    },
    /// The runtime is shutting down; the deployment is redone on the next start.
    Interrupted,
}

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
    /// Folders replaced by an installed release while the app still ran from them: removed
    /// once the app stopped (or, after a crash, with the other temporary folders).
    retired: Vec<PathBuf>,
    pending_stop: Option<PendingStop>,
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
            retired: Vec::new(),
            pending_stop: None,
        }
    }

    /// Finishes a shutdown asked for during a step; true when the task must end.
    async fn finish_pending_stop(&mut self) -> bool {
        let Some(stop) = self.pending_stop.take() else {
            return false;
        };
        if stop.stop_app {
            self.stop_app_for_shutdown().await;
        }
        if let Some(done) = stop.done {
            let _ = done.send(());
        }
        true
    }

    /// Recovers, then serves inputs until shut down or every handle is dropped.
    pub async fn run(mut self) {
        self.recover().await;
        if self.finish_pending_stop().await {
            return;
        }
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
                        if self.finish_pending_stop().await {
                            return;
                        }
                    }
                }
                control = self.control_rx.recv() => match control {
                    None => return,
                    Some(Control::Restart) => self.on_restart().await,
                    Some(Control::Shutdown { stop_app, done }) => {
                        if stop_app {
                            self.stop_app_for_shutdown().await;
                        }
                        let _ = done.send(());
                        return;
                    }
                },
                event = self.sup.next_event() => self.on_supervisor(event).await,
            }
        }
    }

    /// The manager is stopping (SIGTERM): the app stops with it, and the service is told
    /// (`stopped`), so that the device does not look as if its app still ran. The next start
    /// of the manager starts it again (`restarted`).
    async fn stop_app_for_shutdown(&mut self) {
        let was_running = self.sup.app.is_some();
        self.stop_app().await;
        if was_running {
            tracing::info!(
                "the app stopped with the manager; it starts again when the manager does"
            );
            self.report_app(
                Phase::Stopped,
                Some("the manager is shutting down; the app starts again with it".into()),
                Vec::new(),
            );
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
            commit_subject: None,
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
            commit_subject: None,
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
        self.deploy(desired, creds, 1).await;
    }

    /// From the fetch to running / rolled back / failed. `Deployment::Fetching` is persisted.
    /// `attempt`: which run of this deployment's install command this would be.
    async fn deploy(&mut self, desired: DesiredState, creds: Option<GitCredentials>, attempt: u32) {
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
            full_history: desired.full_history,
            share_unchanged: install::may_link(self.user.as_ref()),
            ca_file: self.opts.git_ca_file.clone(),
        };
        // Release folders kept from earlier deployments: an install starts from a fresh
        // checkout instead of one of them.
        let kept = install::release_names(&self.releases);
        let (mirror, releases) = (self.mirror.clone(), self.releases.clone());
        let result = tokio::task::spawn_blocking(move || {
            let r = git::fetch_and_checkout(&mirror, &releases, &request);
            r.map(|commit| {
                let subject = git::commit_subject(&mirror, &commit);
                (commit, subject)
            })
            .map_err(|e| git::redact(&e.to_string(), request.credentials.as_ref()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the git task failed: {e}")));
        let (commit, subject) = match result {
            Ok(c) => c,
            Err(message) => return self.fail(&desired, None, message, Vec::new()),
        };
        self.sink.report(Report {
            generation: Some(desired.generation),
            deployment_id: Some(desired.deployment_id.clone()),
            phase: Phase::Fetched,
            commit: Some(commit.clone()),
            detail: None,
            log_tail: Vec::new(),
            commit_subject: subject,
        });
        let release = Release::from_desired(&desired, &commit);
        if self
            .state
            .current
            .as_ref()
            .is_some_and(|c| c.same_run(&release))
        {
            return self.confirm_current(&desired).await;
        }
        if let Some(step) = desired.install.clone() {
            let existed = kept.contains(&commit);
            match self
                .install(&desired, &commit, &step, attempt, existed)
                .await
            {
                Installed::Done => {}
                Installed::Failed { reason, log_tail } => {
                    return self.fail(&desired, Some(&commit), reason, log_tail)
                }
                Installed::Interrupted => return,
            }
        } else if let Err(message) = check_start(&self.releases.path(&commit), &desired.start) {
            return self.fail(&desired, Some(&commit), message, Vec::new());
        }
        let previous = self.state.current.clone();
        self.switch_and_verify(desired, release, previous).await;
    }

    /// A deployment that ends before anything changed: the old app keeps running.
    fn fail(
        &mut self,
        desired: &DesiredState,
        commit: Option<&str>,
        message: String,
        log_tail: Vec<String>,
    ) {
        let during = step_name(&self.state.deployment);
        self.state.deployment = Deployment::Idle;
        self.save();
        let running = self
            .state
            .current
            .as_ref()
            .map(|r| short(&r.commit).to_string());
        tracing::error!(
            deployment = %desired.deployment_id,
            generation = desired.generation,
            commit = commit.map(short).unwrap_or("-"),
            phase = Phase::Failed.wire_name(),
            during,
            running = running.as_deref().unwrap_or("nothing"),
            reason = %message,
            "deployment failed; the release that ran before is left as it was"
        );
        self.report_for(desired, Phase::Failed, commit, Some(message), log_tail);
    }

    // ----- the install step (decision 0009, `install`) -----------------------------------

    /// Runs the install step of `commit` in a temporary folder while the old app keeps
    /// running, and puts the result in place as `releases/<commit>`. Persists
    /// `Deployment::Installing` first. `existed`: `releases/<commit>` was there before this
    /// deployment's checkout (an install starts from a fresh one).
    async fn install(
        &mut self,
        desired: &DesiredState,
        commit: &str,
        step: &InstallStep,
        attempt: u32,
        existed: bool,
    ) -> Installed {
        self.state.deployment = Deployment::Installing {
            desired: Box::new(desired.clone()),
            commit: commit.to_string(),
            attempt,
        };
        self.save();
        let failed = |reason: String| Installed::Failed {
            reason,
            log_tail: Vec::new(),
        };
        if let Err(e) = hammer_protocol::validate_install(step) {
            return failed(format!("the install step was refused by the device: {e}"));
        }
        let current = self.state.current.as_ref().map(|r| r.commit.clone());
        let previous = self.state.previous.as_ref().map(|r| r.commit.clone());
        let base = install::base_for(commit, current.as_deref(), previous.as_deref());
        let prepared = {
            let (releases, mirror, user) = (
                self.releases.clone(),
                self.mirror.clone(),
                self.user.clone(),
            );
            let (commit, step) = (commit.to_string(), step.clone());
            let url = desired.repo_url.clone();
            let running = current.filter(|c| releases.exists(c));
            tokio::task::spawn_blocking(move || {
                prepare_stage(
                    &releases,
                    &mirror,
                    &url,
                    &commit,
                    &step,
                    base,
                    existed,
                    running,
                    user.as_ref(),
                )
            })
            .await
            .unwrap_or_else(|e| Err(format!("the install preparation failed: {e}")))
        };
        let (stage, notes) = match prepared {
            Ok(p) => p,
            Err(reason) => return failed(reason),
        };
        for line in &notes {
            self.log.push(format!("{}{line}", install::LOG_PREFIX));
        }
        let mut detail = format!(
            "running `{}` (at most {} s)",
            cut(&step.command, 200),
            step.timeout_secs
        );
        if !notes.is_empty() {
            detail.push_str("; ");
            detail.push_str(&notes.join("; "));
        }
        if attempt > 1 {
            detail.push_str(&format!(
                "; run {attempt} (the manager restarted during the last one)"
            ));
        }
        self.report_for(
            desired,
            Phase::Installing,
            Some(commit),
            Some(detail),
            Vec::new(),
        );
        tracing::info!(deployment = %desired.deployment_id, commit = short(commit), attempt, "install started");
        let ran = self.run_install(desired, commit, step, &stage).await;
        let outcome = match ran {
            Ok(()) => {
                let (releases, stage2) = (self.releases.clone(), stage.clone());
                let (commit2, start) = (commit.to_string(), desired.start.clone());
                let app_uid = self
                    .user
                    .as_ref()
                    .filter(|_| install::may_link(self.user.as_ref()))
                    .map(|u| u.uid);
                tokio::task::spawn_blocking(move || {
                    install::seal(&stage2, app_uid)?;
                    check_start(&stage2, &start)?;
                    install::put_in_place(&releases, &stage2, &commit2)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the install task failed: {e}")))
                .map_err(|reason| Installed::Failed {
                    reason,
                    log_tail: Vec::new(),
                })
            }
            Err(ended) => Err(ended),
        };
        match outcome {
            Ok(replaced) => {
                if let Some(old) = replaced {
                    if self.sup.app.is_some()
                        && self
                            .state
                            .current
                            .as_ref()
                            .is_some_and(|c| c.commit == commit)
                    {
                        // The app still runs from it: removed once it stopped.
                        self.retired.push(old);
                    } else {
                        remove_dir_in_background(old);
                    }
                }
                self.log.push(format!("{}done", install::LOG_PREFIX));
                Installed::Done
            }
            Err(ended) => {
                let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(stage));
                if let Ok(Err(e)) = removed.await {
                    tracing::warn!("could not remove the folder of a failed install: {e}");
                }
                if let Installed::Interrupted = ended {
                    // Not a crash: the next start redoes the deployment from the fetch.
                    self.state.deployment = Deployment::Fetching {
                        desired: Box::new(desired.clone()),
                    };
                    self.save();
                }
                ended
            }
        }
    }

    /// Runs the install command in `stage` and waits for it, its timeout, or a shutdown;
    /// meanwhile the old app stays supervised and restart requests are served.
    async fn run_install(
        &mut self,
        desired: &DesiredState,
        commit: &str,
        step: &InstallStep,
        stage: &Path,
    ) -> Result<(), Installed> {
        let tail = Tail::default();
        let spec = AppSpec {
            dir: stage,
            start: &step.command,
            env: &desired.env,
            commit,
            generation: desired.generation,
            user: self.user.as_ref(),
            app_data: &self.app_data,
            tag: &self.tag,
        };
        let how = Launch {
            log_prefix: install::LOG_PREFIX,
            low_priority: true,
            tail: Some(tail.clone()),
        };
        let mut child = match app::launch(&spec, &self.log, how) {
            Ok(c) => c,
            Err(e) => {
                return Err(Installed::Failed {
                    reason: format!("the install command could not start: {e}"),
                    log_tail: Vec::new(),
                })
            }
        };
        let limit = Duration::from_secs(u64::from(step.timeout_secs));
        let deadline = Instant::now() + limit;
        let grace = self.opts.stop_grace;
        let ended = loop {
            tokio::select! {
                status = child.wait() => break Ok(status),
                _ = tokio::time::sleep_until(deadline) => break Err(None),
                control = self.control_rx.recv() => match control {
                    Some(Control::Restart) => self.on_restart().await,
                    Some(Control::Shutdown { stop_app, done }) => {
                        break Err(Some(PendingStop { stop_app, done: Some(done) }))
                    }
                    None => break Err(Some(PendingStop { stop_app: false, done: None })),
                },
                event = self.sup.next_event() => self.on_supervisor(event).await,
            }
        };
        // Whatever it left in its group goes too.
        child.stop(grace).await;
        let log_tail = tail.lines();
        match ended {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(Installed::Failed {
                reason: format!(
                    "the install command {}; the running release was left as it was (its \
                     output is in the log tail and app.log)",
                    app::describe_exit(Some(status))
                ),
                log_tail,
            }),
            Err(None) => Err(Installed::Failed {
                reason: format!(
                    "the install command did not finish within {} s and was stopped; the \
                     running release was left as it was (raise it with hammer setup \
                     --install-timeout SECS)",
                    step.timeout_secs
                ),
                log_tail,
            }),
            Err(Some(stop)) => {
                tracing::info!(
                    commit = short(commit),
                    "install stopped: the manager is shutting down"
                );
                self.pending_stop = Some(stop);
                Err(Installed::Interrupted)
            }
        }
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
        for old in std::mem::take(&mut self.retired) {
            remove_dir_in_background(old);
        }
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
        let during = step_name(&self.state.deployment);
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
                tracing::warn!(
                    deployment = %desired.deployment_id,
                    generation = desired.generation,
                    commit = short(&release.commit),
                    phase = Phase::RolledBack.wire_name(),
                    during,
                    rolled_back_to = short(&prev.commit),
                    reason = %detail,
                    "deployment rolled back; generation {} is not retried",
                    desired.generation
                );
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
                tracing::error!(
                    deployment = %desired.deployment_id,
                    generation = desired.generation,
                    commit = short(&release.commit),
                    phase = Phase::Failed.wire_name(),
                    during,
                    running = "nothing",
                    reason = %reason,
                    "deployment failed and there is no previous release to go back to; no app runs"
                );
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

    /// Finishes or rolls back what the previous run left (see the module doc of `runtime` and
    /// [`recovery_plan`]).
    async fn recover(&mut self) {
        let _ = std::fs::remove_dir_all(self.mirror.with_extension("git.tmp"));
        let mut found = false;
        if let Some(record) = self.state.app.take() {
            found |= app::stop_recorded(record, self.opts.stop_grace).await;
        }
        // Also an install command cut short: it carries the same tag.
        for leader in super::procinfo::find_tagged_leaders(app::TAG_ENV, &self.tag) {
            let record = super::state::AppRecord {
                pgid: leader.pid,
                start_time: leader.start_time,
            };
            found |= app::stop_recorded(record, self.opts.stop_grace).await;
        }
        // Only now that nothing writes into them: interrupted checkouts and installs.
        self.releases.remove_temps();
        self.save();
        let deployment = self.state.deployment.clone();
        let present = match &deployment {
            Deployment::Switching { release, .. } | Deployment::Verifying { release, .. } => {
                self.releases.exists(&release.commit)
            }
            _ => false,
        };
        match recovery_plan(deployment, present) {
            RecoveryPlan::StartCurrent => {
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
            RecoveryPlan::Redeploy { desired, attempt } => {
                self.start_current_again();
                let creds = self.opts.recovery_credentials.clone();
                self.deploy(*desired, creds, attempt).await;
            }
            RecoveryPlan::Fail {
                desired,
                commit,
                reason,
            } => {
                self.start_current_again();
                self.fail(&desired, Some(&commit), reason, vec![]);
            }
            RecoveryPlan::Switch {
                desired,
                release,
                previous,
            } => self.switch_and_verify(*desired, release, previous).await,
            RecoveryPlan::RollBack {
                desired,
                release,
                previous,
                reason,
                log_tail,
            } => {
                self.roll_back(*desired, release, previous, reason, log_tail)
                    .await
            }
        }
    }

    /// Starts the app of the current release again while a deployment is redone or failed.
    fn start_current_again(&mut self) {
        self.restore_current_link();
        if !self.state.stopped && self.state.current.is_some() {
            if let Err(e) = self.start_app() {
                self.report_app(Phase::Crashed, Some(e), vec![]);
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

/// What recovery does for a persisted deployment step (the module doc of `runtime`, "Crash
/// safety"). `new_release_present`: for switching and verifying, whether the new release's
/// folder is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryPlan {
    /// Idle: start the app of `current` again.
    StartCurrent,
    /// Fetching, or installing with attempts left: start the current app again and redo the
    /// deployment from the fetch (a fresh checkout; `attempt` is its install's run number).
    Redeploy {
        desired: Box<DesiredState>,
        attempt: u32,
    },
    /// Installing, cut short too often: start the current app again, fail the deployment.
    Fail {
        desired: Box<DesiredState>,
        commit: String,
        reason: String,
    },
    /// Switching or verifying: switch to the new release again, with a full health window.
    Switch {
        desired: Box<DesiredState>,
        release: Release,
        previous: Option<Release>,
    },
    /// Rolling back, or switching/verifying to a release that is gone: roll back.
    RollBack {
        desired: Box<DesiredState>,
        release: Release,
        previous: Option<Release>,
        reason: String,
        log_tail: Vec<String>,
    },
}

/// Decides recovery for each persisted step; see [`RecoveryPlan`].
pub fn recovery_plan(deployment: Deployment, new_release_present: bool) -> RecoveryPlan {
    match deployment {
        Deployment::Idle => RecoveryPlan::StartCurrent,
        Deployment::Fetching { desired } => RecoveryPlan::Redeploy {
            desired,
            attempt: 1,
        },
        Deployment::Installing {
            desired,
            commit,
            attempt,
        } => match install::after_crash(attempt, &commit) {
            AfterCrash::Redo { attempt } => RecoveryPlan::Redeploy { desired, attempt },
            AfterCrash::Fail(reason) => RecoveryPlan::Fail {
                desired,
                commit,
                reason,
            },
        },
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
            if new_release_present {
                RecoveryPlan::Switch {
                    desired,
                    release,
                    previous,
                }
            } else {
                RecoveryPlan::RollBack {
                    desired,
                    release,
                    previous,
                    reason: "the new release is missing after a restart".to_string(),
                    log_tail: Vec::new(),
                }
            }
        }
        Deployment::RollingBack {
            desired,
            release,
            previous,
            reason,
            log_tail,
        } => RecoveryPlan::RollBack {
            desired,
            release,
            previous,
            reason,
            log_tail,
        },
    }
}

/// The step a deployment is in, for log lines.
fn step_name(d: &Deployment) -> &'static str {
    match d {
        Deployment::Idle => "idle",
        Deployment::Fetching { .. } => "fetching",
        Deployment::Installing { .. } => "installing",
        Deployment::Switching { .. } => "switching",
        Deployment::Verifying { .. } => "verifying",
        Deployment::RollingBack { .. } => "rolling back",
    }
}

/// At most `n` bytes of `s` (on a character boundary), with `…` when cut.
fn cut(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Removes a folder that nothing uses any more, off the reconciler's task.
fn remove_dir_in_background(dir: PathBuf) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), "could not remove a temporary release folder: {e}");
            }
        }
    });
}

/// Makes the folder the install runs in (see [`install::Base`]) and applies the reuse
/// decisions; returns it with one line per decision. Blocking.
#[allow(clippy::too_many_arguments)]
fn prepare_stage(
    releases: &Releases,
    mirror: &Path,
    url: &str,
    commit: &str,
    step: &InstallStep,
    base: Base,
    existed: bool,
    running: Option<String>,
    user: Option<&AppUser>,
) -> Result<(PathBuf, Vec<String>), String> {
    let link = install::may_link(user);
    let stage = releases
        .temp_path(commit)
        .map_err(|e| format!("could not prepare the install folder: {e}"))?;
    let mut notes = Vec::new();
    match base {
        Base::FreshCheckout => {
            let dest = releases.path(commit);
            if existed {
                // Kept from an earlier deployment (maybe installed): check it out anew.
                std::fs::remove_dir_all(&dest)
                    .map_err(|e| format!("could not remove the old folder of {commit}: {e}"))?;
                let request = FetchRequest {
                    url: url.to_string(),
                    git_ref: commit.to_string(),
                    commit: Some(commit.to_string()),
                    credentials: None,
                    full_history: false,
                    share_unchanged: link,
                    // The commit is in the mirror: nothing is fetched.
                    ca_file: None,
                };
                git::fetch_and_checkout(mirror, releases, &request)
                    .map_err(|e| git::redact(&e.to_string(), None))?;
            }
            std::fs::rename(&dest, &stage)
                .map_err(|e| format!("could not prepare the install folder: {e}"))?;
            let from = running
                .as_deref()
                .map(|c| (releases.path(c), short(c).to_string()));
            notes = install::reuse(
                &stage,
                from.as_ref().map(|(dir, c)| (dir.as_path(), c.as_str())),
                step,
                link,
            );
        }
        Base::CopyOfInUse => {
            install::copy_tree(&releases.path(commit), &stage, link).map_err(|e| {
                let _ = std::fs::remove_dir_all(&stage);
                format!("could not copy the release folder of {commit} to install into: {e}")
            })?;
            if !step.reuse.is_empty() {
                notes.push(format!(
                    "the install runs on a copy of {} (in use), with its own dependency folders",
                    short(commit)
                ));
            }
        }
    }
    if let Err(e) = install::open_to(&stage, user) {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(format!(
            "could not give the install folder to the app user: {e}"
        ));
    }
    Ok((stage, notes))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn desired(generation: u64) -> Box<DesiredState> {
        Box::new(DesiredState {
            v: 1,
            device_id: "d1".into(),
            owner: "u1".into(),
            generation,
            deployment_id: format!("dep{generation}"),
            repo_url: "file:///r".into(),
            git_ref: "main".into(),
            commit: None,
            start: "./start.sh".into(),
            env: BTreeMap::new(),
            health_window_secs: 1,
            health_cmd: None,
            run_state: RunState::Running,
            issued_at: 0,
            install: None,
            full_history: false,
        })
    }

    fn release(commit: &str) -> Release {
        Release::from_desired(&desired(1), commit)
    }

    #[test]
    fn recovery_redoes_a_fetch_and_an_install_cut_short_once_then_fails() {
        assert_eq!(
            recovery_plan(Deployment::Idle, false),
            RecoveryPlan::StartCurrent
        );
        assert_eq!(
            recovery_plan(
                Deployment::Fetching {
                    desired: desired(2)
                },
                false
            ),
            RecoveryPlan::Redeploy {
                desired: desired(2),
                attempt: 1
            }
        );
        let installing = |attempt| Deployment::Installing {
            desired: desired(2),
            commit: "c".repeat(40),
            attempt,
        };
        assert_eq!(
            recovery_plan(installing(1), false),
            RecoveryPlan::Redeploy {
                desired: desired(2),
                attempt: 2
            }
        );
        let RecoveryPlan::Fail { commit, reason, .. } = recovery_plan(installing(2), false) else {
            panic!("an install cut short twice fails the deployment");
        };
        assert_eq!(commit, "c".repeat(40));
        assert!(reason.contains("cut short 2 times"), "{reason}");
    }

    #[test]
    fn recovery_switches_again_or_rolls_back_when_the_new_release_is_gone() {
        for verifying in [false, true] {
            let d = |_| {
                let (desired, release, previous) = (desired(3), release("n"), Some(release("o")));
                if verifying {
                    Deployment::Verifying {
                        desired,
                        release,
                        previous,
                    }
                } else {
                    Deployment::Switching {
                        desired,
                        release,
                        previous,
                    }
                }
            };
            assert!(matches!(
                recovery_plan(d(()), true),
                RecoveryPlan::Switch { .. }
            ));
            let RecoveryPlan::RollBack { reason, .. } = recovery_plan(d(()), false) else {
                panic!("a missing new release is rolled back from");
            };
            assert!(reason.contains("missing"), "{reason}");
        }
        let rolling = Deployment::RollingBack {
            desired: desired(3),
            release: release("n"),
            previous: None,
            reason: "the app exited".into(),
            log_tail: vec!["boom".into()],
        };
        let RecoveryPlan::RollBack {
            reason, log_tail, ..
        } = recovery_plan(rolling, true)
        else {
            panic!("a rollback is finished");
        };
        assert_eq!((reason.as_str(), log_tail.len()), ("the app exited", 1));
    }

    #[test]
    fn a_detail_is_cut_on_a_character_boundary() {
        assert_eq!(cut("npm ci", 200), "npm ci");
        assert_eq!(cut("ääää", 3), "ä…");
    }
}
