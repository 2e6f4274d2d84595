//! Starting and stopping the app: `/bin/sh -c START` in the release folder, in its own process
//! group, optionally as another user, output piped into the [`AppLog`]. Stopping sends SIGTERM
//! to the whole group, SIGKILL after the grace period, and returns only when no member of the
//! group is left.

use super::applog::AppLog;
use super::procinfo;
use super::state::AppRecord;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Env vars of the manager that the app must not inherit.
const PRIVATE_ENV_PREFIXES: &[&str] = &["HAMMER_MANAGER_", "HAMMER_ENROLL_TOKEN"];

/// Removes the manager's own settings and secrets (`HAMMER_MANAGER_*`, the enrollment token)
/// from what a child inherits: the app and its health command see only their own env.
pub(crate) fn strip_private_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str() {
            if PRIVATE_ENV_PREFIXES.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(k);
            }
        }
    }
}
/// How long to wait for a group to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// The env var that marks app instances of one data dir.
pub const TAG_ENV: &str = "HAMMER_RUNTIME_TAG";
const POLL: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("app user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("looking up app user {0:?}: {1}")]
    UserLookup(String, nix::Error),
    #[error("could not start the app: {0}")]
    Spawn(std::io::Error),
    #[error("the app started but its process could not be read from /proc")]
    NoProc,
}

/// The user and group the app runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppUser {
    pub uid: u32,
    pub gid: u32,
}

impl AppUser {
    pub fn lookup(name: &str) -> Result<AppUser, AppError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| AppError::UserLookup(name.to_string(), e))?
            .ok_or_else(|| AppError::NoSuchUser(name.to_string()))?;
        Ok(AppUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// What to run.
pub struct AppSpec<'a> {
    pub dir: &'a Path,
    pub start: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub commit: &'a str,
    pub generation: u64,
    pub user: Option<AppUser>,
    /// Marks the app's environment (`HAMMER_RUNTIME_TAG`) so a later run of the manager can
    /// find an instance it did not get to record.
    pub tag: &'a str,
}

/// A started app instance (our child).
pub struct RunningApp {
    child: Child,
    pub pgid: i32,
    pub start_time: u64,
    pub started: Instant,
    /// First line number of this instance's output in the [`AppLog`].
    pub log_mark: u64,
    pumps: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

/// Starts the app. The caller records [`RunningApp::record`] durably.
pub fn start(spec: &AppSpec<'_>, log: &AppLog) -> Result<RunningApp, AppError> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(spec.start)
        .current_dir(spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    strip_private_env(&mut cmd);
    cmd.envs(spec.env)
        .env("HAMMER_COMMIT", spec.commit)
        .env("HAMMER_GENERATION", spec.generation.to_string())
        .env(TAG_ENV, spec.tag);
    if let Some(user) = spec.user {
        cmd.uid(user.uid).gid(user.gid);
    }
    let log_mark = log.mark();
    let mut child = cmd.spawn().map_err(AppError::Spawn)?;
    let pid = child.id().ok_or(AppError::NoProc)? as i32;
    let start_time = match procinfo::stat(pid) {
        Some(s) => s.start_time,
        None => {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(AppError::NoProc);
        }
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(log.clone().pump(out, "")));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(log.clone().pump(err, "")));
    }
    tracing::info!(pid, commit = spec.commit, "app started");
    Ok(RunningApp {
        child,
        pgid: pid,
        start_time,
        started: Instant::now(),
        log_mark,
        pumps,
        exit: None,
    })
}

impl RunningApp {
    pub fn record(&self) -> AppRecord {
        AppRecord {
            pgid: self.pgid,
            start_time: self.start_time,
        }
    }

    /// Has the leader exited (and been reaped)?
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Waits for the leader to exit (cancel-safe), then for its output to be read.
    pub async fn wait(&mut self) -> ExitStatus {
        let status = match self.exit {
            Some(s) => s,
            None => {
                let s = match self.child.wait().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("waiting for the app: {e}");
                        std::os::unix::process::ExitStatusExt::from_raw(-1)
                    }
                };
                self.exit = Some(s);
                s
            }
        };
        self.drain_output().await;
        status
    }

    async fn drain_output(&mut self) {
        for pump in self.pumps.drain(..) {
            // A daemonized grandchild may hold the pipe open; don't wait for it forever.
            let _ = tokio::time::timeout(Duration::from_millis(300), pump).await;
        }
    }

    /// Stops the whole group: SIGTERM, SIGKILL after `grace`, until no member is left.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        if signal_group(self.pgid, self.start_time, Signal::SIGTERM) && self.exit.is_none() {
            if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
                self.exit = Some(status);
            }
        }
        // Give the rest of the group what is left of the grace period.
        let left = deadline.saturating_duration_since(Instant::now());
        wait_group_gone(self.pgid, self.start_time, left).await;
        signal_group(self.pgid, self.start_time, Signal::SIGKILL);
        if self.exit.is_none() {
            if let Ok(Ok(status)) = tokio::time::timeout(KILL_WAIT, self.child.wait()).await {
                self.exit = Some(status);
            }
        }
        if !wait_group_gone(self.pgid, self.start_time, KILL_WAIT).await {
            tracing::warn!(
                pgid = self.pgid,
                "app process group still present after SIGKILL"
            );
        }
        self.drain_output().await;
        self.exit
    }
}

/// Signals the group if it still has members started by this instance.
fn signal_group(pgid: i32, since: u64, signal: Signal) -> bool {
    if procinfo::group_members(pgid, since).is_empty() {
        return false;
    }
    killpg(Pid::from_raw(pgid), signal).is_ok()
}

/// Polls (only while stopping) until the group has no live member; false on timeout.
async fn wait_group_gone(pgid: i32, since: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if procinfo::group_members(pgid, since).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops an instance started by an earlier run of the manager (not our child), if it is still
/// there: its leader matched by pid and start time, or members of its group started after it.
pub async fn stop_recorded(record: AppRecord, grace: Duration) -> bool {
    let leader = procinfo::same_process(record.pgid, record.start_time).is_some();
    let members = procinfo::group_members(record.pgid, record.start_time);
    if !leader && members.is_empty() {
        return false;
    }
    tracing::info!(
        pgid = record.pgid,
        "stopping the app instance left by the previous run"
    );
    signal_group(record.pgid, record.start_time, Signal::SIGTERM);
    wait_group_gone(record.pgid, record.start_time, grace).await;
    signal_group(record.pgid, record.start_time, Signal::SIGKILL);
    wait_group_gone(record.pgid, record.start_time, KILL_WAIT).await;
    true
}

/// Describes an exit status for people.
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) if (129..=128 + 64).contains(&code) => format!(
                "exited with status {code} (what it ran was killed by signal {})",
                code - 128
            ),
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        None => "exited".to_string(),
    }
}
