//! Local deployment runtime: git mirror, releases, the app process, health gate, rollback.
//!
//! [`spawn`] starts one task (the reconciler, [`reconcile`]) that owns all local state and acts
//! on [`Input`]s from the agent one at a time; it reports every step as a [`Report`] through a
//! [`ReportSink`] (durable before it returns; in the binary the sink is the outbox itself).
//! [`Input`], [`Report`] and [`LocalStatus`] are the whole vocabulary between the agent and
//! the runtime: the agent sends the first, the outbox takes the second, and health reports and
//! `status.json` are read from the third. Git work runs on `spawn_blocking`. Idle, the task
//! waits on its inputs and on the app's exit: no polling, no timers.
//!
//! Modules: [`state`] (persisted typed state), [`git`] (mirror, credentials, checkout),
//! [`releases`] (release folders, `current`, pruning), [`install`] (the install step's
//! folder, reused dependency folders, sealing), [`app`] (start/stop a process group),
//! [`procinfo`] (`/proc`), [`applog`] (log file, ring buffer, live lines), [`supervisor`]
//! (crash restarts with backoff), [`health_gate`], [`reconcile`] (the state machine),
//! [`layout`] (the data dir, the app dir, and who may read what).
//!
//! # Who the app runs as
//! The app and its health command run as [`RuntimeOptions::app_user`] (the binary resolves it
//! with [`app::AppUser::for_manager`]: `hammer-app` when the manager is root), in
//! `releases/<commit>/` of the app dir, with `HOME` and `HAMMER_APP_DATA` set to its own
//! writable folder. It cannot read the data dir (0700): keys, credentials, store, git mirror.
//!
//! # Decisions a desired state gets
//! - Its generation was rolled back from: nothing happens, nothing is reported.
//! - The generation already acted on: only its run state is re-applied (no fetch, no event
//!   unless the run state changed).
//! - It names (pinned, or after resolving its ref) the commit that runs with the same start
//!   command, env and install step: `running` is reported at once, nothing restarts.
//! - Otherwise: received, fetching, fetched, installing (when it has an install step),
//!   starting, verifying, then running or rolled_back; failed when the fetch, checkout,
//!   install or start-script check fails (the old app keeps running untouched, same pid), or
//!   when a first release fails with nothing to go back to.
//! - Run state `stopped`: the app stops (`stopped`); `running` again starts it (`starting`,
//!   `running`).
//!
//! # The install step (decision 0009)
//! With [`hammer_protocol::InstallStep`] in the desired state, the new release is installed
//! before the old app is stopped: `/bin/sh -c CMD` in a temporary folder
//! `releases/.tmp-<commit>-*` holding the fresh checkout (a copy of the commit's folder when
//! that is the running or the previous release, which stays as it is), as the app user, at
//! nice 10 and the lowest best-effort I/O priority, in its own process group, within
//! `timeout_secs`; its output goes to the app log (prefixed `[install] `) and its last 20
//! lines to the `failed` event. Declared folders (`node_modules` keyed on
//! `package-lock.json`) are first copied from the running release when the key file is
//! unchanged ([`install::choose_reuse`]); the running release keeps its own. The command
//! runs whether or not folders were reused. When it succeeds the folder is made read-only
//! for the app and renamed to `releases/<commit>`; then the switch goes on as without an
//! install. While it runs the old app stays supervised, restarts are served, and a shutdown
//! of the manager stops it (the deployment is then redone from the fetch on the next
//! start).
//!
//! Every failed deployment and every rollback is also one line in the manager's log (error
//! or warn) naming the deployment id, generation, commit, the step it failed in (`during`),
//! what runs now and the reason; the agent logs each refused message the same way.
//!
//! # Crash safety
//! Each deployment step is persisted (the store's `state.json`, replaced whole and durable,
//! see [`crate::store`]) before it is taken. On
//! [`spawn`] the runtime first stops any app instance left by the previous run — found by its
//! recorded process group and start time, or by the `HAMMER_RUNTIME_TAG` in its environment
//! if it was started but not yet recorded — and then:
//! - idle: starts the app of `current` again (reports `restarted`), unless stopped;
//! - fetching: starts the current app again and redoes the deployment from the fetch (using
//!   [`RuntimeOptions::recovery_credentials`]);
//! - installing: the install command left by the previous run is stopped (it carries the
//!   same tag as the app) and its temporary folder removed; the current app starts again and
//!   the deployment is redone from the fetch, so the install runs again from scratch in a
//!   fresh checkout. A deployment whose install was cut short [`install::MAX_ATTEMPTS`]
//!   (2) times fails instead ("cut short 2 times ... deploy again"): an install that brings
//!   the device down must not do so on every start;
//! - switching or verifying: switches to the new release again and **restarts its health
//!   window** from the beginning (the new release gets a full window);
//! - rolling back: finishes the rollback.
//!
//! Which of these applies is [`reconcile::recovery_plan`], a pure function of the persisted
//! step. Leftover processes are stopped before `releases/.tmp-*` folders are removed.
//!
//! The runtime does not adopt a surviving app (its output pipes are gone): it stops it and
//! starts it again, so exactly one instance runs, with its output captured. The systemd unit
//! can therefore keep the default `KillMode=control-group` (the app dies with the manager and
//! is started again); `KillMode=process` works as well.

pub mod app;
pub mod applog;
pub mod git;
pub mod groups;
pub mod health_gate;
pub mod install;
pub mod layout;
pub mod procinfo;
pub mod reconcile;
pub mod releases;
pub mod state;
pub mod supervisor;

use hammer_protocol::{DesiredState, GitCredentials, Phase, RunState};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub data_dir: PathBuf,
    /// Where releases and the app's own folder live (`None`: [`layout::default_app_dir`]).
    pub app_dir: Option<PathBuf>,
    /// Run the app (and its health command) as this user (`None`: the manager's own user).
    /// Resolve it with [`app::AppUser::for_manager`] (only root can switch).
    pub app_user: Option<app::AppUser>,
    /// SIGTERM → SIGKILL grace period.
    pub stop_grace: Duration,
    pub restart_backoff_cap: Duration,
    /// Releases kept on disk (current and previous are never deleted).
    pub keep_releases: usize,
    /// `app.log` rotates to `app.log.1` when it would pass this size.
    pub log_file_max_bytes: u64,
    /// Git credentials for a fetch that recovery must redo before the agent hands over a
    /// desired state (the agent passes the stored ones). Never persisted by the runtime.
    pub recovery_credentials: Option<GitCredentials>,
    /// Extra CAs for `https://` git servers (`git_ca_file` in manager.toml).
    pub git_ca_file: Option<PathBuf>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            data_dir: PathBuf::from("/var/lib/hammer-manager"),
            app_dir: None,
            app_user: None,
            stop_grace: Duration::from_secs(10),
            restart_backoff_cap: Duration::from_secs(60),
            keep_releases: 3,
            log_file_max_bytes: 1024 * 1024,
            recovery_credentials: None,
            git_ca_file: None,
        }
    }
}

/// One step worth telling the service: the content of a status event. The device manager's
/// one report type — the runtime's steps and the agent's own events (refusals, `configured`)
/// alike. [`crate::outbox::Outbox::append`] turns it into a `StatusEvent` by adding the epoch,
/// seq and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub generation: Option<u64>,
    pub deployment_id: Option<String>,
    pub phase: Phase,
    pub commit: Option<String>,
    pub detail: Option<String>,
    pub log_tail: Vec<String>,
    /// `commit`'s subject (with `fetched`).
    pub commit_subject: Option<String>,
}

impl Report {
    /// A report with only a phase and a detail line.
    pub fn new(phase: Phase, detail: impl Into<String>) -> Report {
        Report {
            generation: None,
            deployment_id: None,
            phase,
            commit: None,
            detail: Some(detail.into()),
            log_tail: Vec::new(),
            commit_subject: None,
        }
    }
}

/// Where reports go. Must be durable when `report` returns (in the binary: the
/// [`crate::outbox::Outbox`]).
pub trait ReportSink: Send + Sync + 'static {
    fn report(&self, report: Report);
}

/// What the agent asks the runtime to do, after verifying it: the one vocabulary across the
/// agent ↔ runtime boundary. The agent maps each accepted `CommandKind` or desired state to an
/// input (`crate::commands`), hands it over through [`crate::backend::Backend::deliver`], and
/// [`RuntimeHandle::send`] acts on it. A new device command that needs the runtime is a new
/// variant here, its mapping in `commands`, and its handling in `send`.
#[derive(Debug, Clone)]
pub enum Input {
    /// Converge on this verified desired state (the latest one wins if several queue up; a
    /// repeat of the generation already acted on only re-applies its run state).
    Desired {
        desired: Box<DesiredState>,
        credentials: Option<GitCredentials>,
    },
    /// Restart the app of the current release.
    Restart,
    /// Someone started (true) or stopped (false) watching live output lines.
    Logs { on: bool },
}

/// The deployment step the runtime is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Idle,
    Fetching,
    Installing,
    Switching,
    Verifying,
    RollingBack,
}

/// What is deployed and running, locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalStatus {
    /// The generation of the last desired state acted on.
    pub generation: Option<u64>,
    pub deployment_id: Option<String>,
    /// The commit `current` points at.
    pub commit: Option<String>,
    /// The generation that deployed the current release.
    pub release_generation: Option<u64>,
    pub previous_commit: Option<String>,
    pub step: Step,
    pub run_state: RunState,
    pub app_running: bool,
    pub pid: Option<u32>,
    /// Restarts after crashes or on request since the manager started.
    pub restarts: u32,
    pub uptime_secs: u64,
    pub rss_kb: u64,
    pub cpu_ms: u64,
    /// Generations rolled back from (never retried).
    pub rolled_back: Vec<u64>,
}

impl LocalStatus {
    fn from_state(state: &state::RuntimeState, restarts: u32) -> LocalStatus {
        let live = state
            .app
            .and_then(|rec| procinfo::same_process(rec.pgid, rec.start_time).map(|s| (rec, s)));
        let (rss_kb, cpu_ms) = live
            .map(|(rec, _)| procinfo::group_usage(rec.pgid, rec.start_time))
            .unwrap_or((0, 0));
        LocalStatus {
            generation: state.desired.as_ref().map(|d| d.generation),
            deployment_id: state.desired.as_ref().map(|d| d.deployment_id.clone()),
            commit: state.current.as_ref().map(|r| r.commit.clone()),
            release_generation: state.current.as_ref().map(|r| r.generation),
            previous_commit: state.previous.as_ref().map(|r| r.commit.clone()),
            step: match state.deployment {
                state::Deployment::Idle => Step::Idle,
                state::Deployment::Fetching { .. } => Step::Fetching,
                state::Deployment::Installing { .. } => Step::Installing,
                state::Deployment::Switching { .. } => Step::Switching,
                state::Deployment::Verifying { .. } => Step::Verifying,
                state::Deployment::RollingBack { .. } => Step::RollingBack,
            },
            run_state: if state.stopped {
                RunState::Stopped
            } else {
                RunState::Running
            },
            app_running: live.is_some(),
            pid: live.map(|(rec, _)| rec.pgid as u32),
            restarts,
            uptime_secs: live
                .map(|(_, s)| procinfo::uptime_secs(s.start_time))
                .unwrap_or(0),
            rss_kb,
            cpu_ms,
            rolled_back: state.rolled_back.iter().copied().collect(),
        }
    }
}

/// The state the reconciler publishes for [`RuntimeHandle::status`].
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) state: state::RuntimeState,
    pub(crate) restarts: u32,
}

/// What [`RuntimeHandle`] tells the reconciler besides desired states (which go through a
/// watch slot so the latest wins): an agent restart, or the runtime's own shutdown.
pub(crate) enum Control {
    Restart,
    Shutdown {
        stop_app: bool,
        done: oneshot::Sender<()>,
    },
}

pub(crate) type DesiredSlot = Option<Arc<(DesiredState, Option<GitCredentials>)>>;

/// The agent's handle on the runtime. Cheap to clone.
#[derive(Clone)]
pub struct RuntimeHandle {
    desired: Arc<watch::Sender<DesiredSlot>>,
    control: mpsc::Sender<Control>,
    log: applog::AppLog,
    shared: Arc<Mutex<Shared>>,
    task: Arc<tokio::task::AbortHandle>,
}

impl RuntimeHandle {
    /// Hands over an input. Desired states replace any not yet taken up.
    pub async fn send(&self, input: Input) {
        match input {
            Input::Desired {
                desired,
                credentials,
            } => {
                self.desired
                    .send_replace(Some(Arc::new((*desired, credentials))));
            }
            Input::Restart => {
                let _ = self.control.send(Control::Restart).await;
            }
            Input::Logs { on } => self.log.set_live(on),
        }
    }

    /// Current figures (cheap; reads `/proc` for the app).
    pub fn status(&self) -> LocalStatus {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        LocalStatus::from_state(&shared.state, shared.restarts)
    }

    /// Live output lines (sent only while logs are on).
    pub fn subscribe_logs(&self) -> broadcast::Receiver<String> {
        self.log.subscribe()
    }

    /// The last `n` output lines of the app (from the ring buffer).
    pub fn recent_lines(&self, n: usize) -> Vec<String> {
        self.log.tail_since(0, n)
    }

    /// Stops the reconciler (and the app, if `stop_app`), waiting until it has.
    pub async fn shutdown(&self, stop_app: bool) {
        let (done, wait) = oneshot::channel();
        if self
            .control
            .send(Control::Shutdown { stop_app, done })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Ends the reconciler at its next await point and leaves the app running: what a SIGKILL
    /// of the manager does (used by tests of recovery).
    pub fn abandon(&self) {
        self.task.abort();
    }
}

/// Starts the runtime: recovers whatever the last run left (see the module doc), then serves
/// inputs. Must be called inside a Tokio runtime.
pub fn spawn(
    opts: RuntimeOptions,
    db: crate::store::Db,
    sink: Arc<dyn ReportSink>,
) -> anyhow::Result<RuntimeHandle> {
    let layout = layout::Layout::new(&opts.data_dir, opts.app_dir.as_deref());
    layout::prepare(&layout, opts.app_user.as_ref())?;
    let store = state::StateStore::open(&db)?;
    let persisted = store.load()?;
    let log = applog::AppLog::new(opts.data_dir.join("app.log"), opts.log_file_max_bytes);
    let shared = Arc::new(Mutex::new(Shared {
        state: persisted.clone(),
        restarts: 0,
    }));
    let (desired_tx, desired_rx) = watch::channel(None);
    let (control_tx, control_rx) = mpsc::channel(16);
    let reconciler = reconcile::Reconciler::new(
        opts,
        layout,
        store,
        persisted,
        log.clone(),
        sink,
        shared.clone(),
        desired_rx,
        control_rx,
    );
    let task = tokio::spawn(reconciler.run());
    Ok(RuntimeHandle {
        desired: Arc::new(desired_tx),
        control: control_tx,
        log,
        shared,
        task: Arc::new(task.abort_handle()),
    })
}

/// What is deployed, read from the store (and the app dir's `current` link) without
/// starting anything.
pub fn local_status(layout: &layout::Layout, db: &crate::store::Db) -> anyhow::Result<LocalStatus> {
    let state = state::StateStore::open(db)?.load()?;
    let mut status = LocalStatus::from_state(&state, 0);
    if status.commit.is_none() {
        // Nothing recorded (yet): what the `current` link says.
        status.commit = layout.releases().current();
    }
    Ok(status)
}
