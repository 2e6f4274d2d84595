//! Starting and stopping the app: `/bin/sh -c START` in the release folder, in its own process
//! group, as the app user (see [`AppUser::for_manager`]), output piped into the [`AppLog`]. Stopping sends SIGTERM
//! to the whole group, SIGKILL after the grace period, and returns only when no member of the
//! group is left.

use super::applog::{AppLog, Tail};
use super::procinfo;
use super::state::AppRecord;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};
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

/// The user the app runs as when the manager runs as root and no `--app-user` is given.
pub const DEFAULT_APP_USER: &str = "hammer-app";

/// The command that creates an app user (printed when the user is missing).
pub fn useradd_command(name: &str) -> String {
    format!("useradd --system --no-create-home --shell /usr/sbin/nologin {name}")
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "the app user {0:?} does not exist; create it with `{cmd}` (the install steps do), or choose another user with --app-user NAME \
         / HAMMER_MANAGER_APP_USER",
        cmd = useradd_command(.0)
    )]
    NoSuchUser(String),
    #[error("looking up app user {0:?}: {1}")]
    UserLookup(String, nix::Error),
    #[error(
        "--app-user {name}: the manager runs as uid {uid}, not as root, so it cannot switch the \
         app to another user; run the manager as root, or leave --app-user \
         (HAMMER_MANAGER_APP_USER) unset to run the app as the manager's own user"
    )]
    CannotSwitch { name: String, uid: u32 },
    #[error(
        "the default app user {0:?} has uid 0; give it its own uid (userdel {0} and create it \
         again with `useradd --system ...`), or pass --app-user root to run the app as root"
    )]
    DefaultIsRoot(String),
    #[error("could not start the app: {0}")]
    Spawn(std::io::Error),
    #[error("the app started but its process could not be read from /proc")]
    NoProc,
}

/// The user, group and supplementary groups the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from the group database, e.g. `dialout` or `gpio` for device
    /// access), set with `setgroups` before the switch.
    pub groups: Vec<u32>,
}

impl AppUser {
    /// Looks a user up by name, with its supplementary groups.
    pub fn lookup(name: &str) -> Result<AppUser, AppError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| AppError::UserLookup(name.to_string(), e))?
            .ok_or_else(|| AppError::NoSuchUser(name.to_string()))?;
        let groups = super::groups::local_groups(Path::new("/etc"), name, user.gid.as_raw())
            .or_else(|| {
                let c = std::ffi::CString::new(name).ok()?;
                let g = nix::unistd::getgrouplist(&c, user.gid).ok()?;
                Some(g.into_iter().map(|g| g.as_raw()).collect())
            })
            .unwrap_or_else(|| vec![user.gid.as_raw()]);
        Ok(AppUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
        })
    }

    /// Who the app runs as, given `--app-user` (`requested`):
    /// - manager is root: `requested`, or [`DEFAULT_APP_USER`]; a user with uid 0 is allowed
    ///   only when named explicitly, and logged as a warning;
    /// - manager is not root: its own user (`None`: nothing to switch); naming any other user
    ///   is an error, since only root can switch.
    ///
    /// A missing user is an error naming the command that creates it.
    pub fn for_manager(requested: Option<&str>) -> Result<Option<AppUser>, AppError> {
        let euid = nix::unistd::geteuid().as_raw();
        let name = match (requested, euid) {
            (Some(name), _) => name,
            (None, 0) => DEFAULT_APP_USER,
            (None, _) => {
                tracing::info!(
                    uid = euid,
                    "the manager is not root: the app runs as its user"
                );
                return Ok(None);
            }
        };
        let user = AppUser::lookup(name)?;
        if euid != 0 {
            if user.uid == euid {
                return Ok(None);
            }
            return Err(AppError::CannotSwitch {
                name: name.to_string(),
                uid: euid,
            });
        }
        if user.uid == 0 {
            if requested.is_none() {
                // The default user must never be root, whatever the user database says.
                return Err(AppError::DefaultIsRoot(name.to_string()));
            }
            tracing::warn!(
                user = name,
                "the app runs as root (--app-user {name}): it can read the device's keys and git \
                 credentials; run it as an unprivileged user unless it really needs root"
            );
        } else {
            tracing::info!(user = name, uid = user.uid, "the app runs as its own user");
        }
        Ok(Some(user))
    }
}

/// Sets up a child's user and environment: `HOME` and `HAMMER_APP_DATA` (the app's writable
/// folder), `USER`/`LOGNAME`, and — when `user` is given — a switch to it right before `exec`
/// (supplementary groups, group, user; in that order). The switch is done in `pre_exec`
/// rather than with `Command::uid`, which would drop the user's supplementary groups.
pub(crate) fn set_user(cmd: &mut Command, user: Option<&AppUser>, app_data: &Path) {
    cmd.env("HOME", app_data).env(APP_DATA_ENV, app_data);
    let Some(user) = user else {
        return;
    };
    cmd.env("USER", &user.name).env("LOGNAME", &user.name);
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe setgroups/setgid/setuid system calls on data prepared before the fork
    // (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
}

/// A release with its history (`--full-history`, a `.git` the manager made) belongs to the
/// manager, not to the app user, and git refuses to work in a repository of another owner
/// ("dubious ownership"). The app's git is told that this one release is safe
/// (`safe.directory`, given as command-line configuration through `GIT_CONFIG_COUNT`, the
/// only kind git accepts for it besides the system and global files). The app's own env,
/// set after this, may override it.
fn trust_release_history(cmd: &mut Command, dir: &Path) {
    if !dir.join(".git").is_dir() {
        return;
    }
    let Ok(real) = std::fs::canonicalize(dir) else {
        return;
    };
    cmd.env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", real);
}

/// The env var naming the app's writable folder (also its `HOME`).
pub const APP_DATA_ENV: &str = "HAMMER_APP_DATA";

/// What to run.
pub struct AppSpec<'a> {
    pub dir: &'a Path,
    pub start: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub commit: &'a str,
    pub generation: u64,
    pub user: Option<&'a AppUser>,
    /// The app's writable folder (`HOME`, `HAMMER_APP_DATA`).
    pub app_data: &'a Path,
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

/// How a process is started besides its [`AppSpec`]: the app itself takes the default; the
/// install step of a release prefixes its lines, keeps its own tail and runs at low priority.
#[derive(Debug, Default)]
pub struct Launch {
    /// Put before each output line in the [`AppLog`].
    pub log_prefix: &'static str,
    /// Nice [`LOW_PRIORITY_NICE`] and the lowest best-effort I/O priority, so the running app
    /// keeps the CPU and the disk it needs.
    pub low_priority: bool,
    /// Also keep the last output lines here.
    pub tail: Option<Tail>,
}

/// The nice value of a low-priority process (the install step).
pub const LOW_PRIORITY_NICE: i32 = 10;

/// Lowers the calling process's CPU and I/O priority (best effort; errors are ignored).
fn lower_priority() {
    // SAFETY: plain system calls without pointers; run in the forked child before exec.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, LOW_PRIORITY_NICE);
        // ioprio_set(IOPRIO_WHO_PROCESS, self, class best-effort (2) << 13 | level 7).
        libc::syscall(libc::SYS_ioprio_set, 1, 0, (2 << 13) | 7);
    }
}

/// Starts the app. The caller records [`RunningApp::record`] durably.
pub fn start(spec: &AppSpec<'_>, log: &AppLog) -> Result<RunningApp, AppError> {
    launch(spec, log, Launch::default())
}

/// Starts `/bin/sh -c spec.start` as [`start`] does, the way `how` says.
pub fn launch(spec: &AppSpec<'_>, log: &AppLog, how: Launch) -> Result<RunningApp, AppError> {
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
    if how.low_priority {
        // SAFETY: the closure only makes async-signal-safe system calls (see lower_priority).
        unsafe {
            cmd.pre_exec(|| {
                lower_priority();
                Ok(())
            });
        }
    }
    set_user(&mut cmd, spec.user, spec.app_data);
    if spec.user.is_some() {
        trust_release_history(&mut cmd, spec.dir);
    }
    cmd.envs(spec.env)
        .env(APP_DATA_ENV, spec.app_data)
        .env("HAMMER_COMMIT", spec.commit)
        .env("HAMMER_GENERATION", spec.generation.to_string())
        .env(TAG_ENV, spec.tag);
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
        let pump = log.clone().pump(out, how.log_prefix, how.tail.clone());
        pumps.push(tokio::spawn(pump));
    }
    if let Some(err) = child.stderr.take() {
        let pump = log.clone().pump(err, how.log_prefix, how.tail.clone());
        pumps.push(tokio::spawn(pump));
    }
    if how.log_prefix.is_empty() {
        tracing::info!(pid, commit = spec.commit, "app started");
    }
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
