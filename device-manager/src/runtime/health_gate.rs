//! The health gate of a new release: the app must stay up for the health window and, if a
//! health command is set, that command (`/bin/sh -c CMD` in the release folder, with a
//! timeout) must succeed by the end of the window. It is tried every quarter window (at least
//! 200 ms apart) until it succeeds, with a last try at the end of the window.

use super::app::{describe_exit, AppUser, RunningApp};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tokio::time::{sleep_until, Instant};

const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MIN_CMD_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gate checks.
pub struct GateSpec<'a> {
    pub window: Duration,
    pub health_cmd: Option<&'a str>,
    pub dir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub commit: &'a str,
    pub generation: u64,
    pub user: Option<&'a AppUser>,
    /// The app's writable folder (`HOME`, `HAMMER_APP_DATA`).
    pub app_data: &'a Path,
}

/// Why a release failed its gate (a sentence for the report).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateFailure {
    #[error("the app {0} during its {1} s health window")]
    Exited(String, u64),
    #[error("the health command did not succeed within the {1} s health window: {0}")]
    HealthCmd(String, u64),
}

/// Runs the gate; the app keeps running when it passes.
pub async fn verify(app: &mut RunningApp, spec: &GateSpec<'_>) -> Result<(), GateFailure> {
    let secs = spec.window.as_secs();
    let deadline = Instant::now() + spec.window;
    let Some(cmd) = spec.health_cmd else {
        return tokio::select! {
            status = app.wait() => Err(GateFailure::Exited(describe_exit(Some(status)), secs)),
            _ = sleep_until(deadline) => Ok(()),
        };
    };
    let interval = (spec.window / 4).max(MIN_INTERVAL);
    let mut next_try = (Instant::now() + interval).min(deadline);
    let mut passed = false;
    loop {
        if passed {
            return tokio::select! {
                status = app.wait() => Err(GateFailure::Exited(describe_exit(Some(status)), secs)),
                _ = sleep_until(deadline) => Ok(()),
            };
        }
        tokio::select! {
            status = app.wait() => return Err(GateFailure::Exited(describe_exit(Some(status)), secs)),
            _ = sleep_until(next_try) => {}
        }
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(MIN_CMD_TIMEOUT, MAX_CMD_TIMEOUT);
        let result = tokio::select! {
            status = app.wait() => return Err(GateFailure::Exited(describe_exit(Some(status)), secs)),
            r = run_health_cmd(cmd, spec, timeout) => r,
        };
        match result {
            Ok(()) => passed = true,
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(GateFailure::HealthCmd(e, secs));
                }
                next_try = (Instant::now() + interval).min(deadline);
            }
        }
    }
}

/// Kills the health command's process group if its future is dropped.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

async fn run_health_cmd(cmd: &str, spec: &GateSpec<'_>, timeout: Duration) -> Result<(), String> {
    let mut command = Command::new("/bin/sh");
    super::app::strip_private_env(&mut command);
    super::app::set_user(&mut command, spec.user, spec.app_data);
    command
        .arg("-c")
        .arg(cmd)
        .current_dir(spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .envs(spec.env)
        .env(super::app::APP_DATA_ENV, spec.app_data)
        .env("HAMMER_COMMIT", spec.commit)
        .env("HAMMER_GENERATION", spec.generation.to_string());
    let child = command
        .spawn()
        .map_err(|e| format!("could not run the health command: {e}"))?;
    let mut guard = GroupGuard(child.id().map(|p| p as i32));
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("waiting for the health command: {e}")),
        Err(_) => {
            return Err(format!(
                "the health command timed out after {} s",
                timeout.as_secs()
            ))
        }
    };
    // Kill anything it left behind in its group.
    if let Some(pgid) = guard.0.take() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    let mut message = format!("the health command {}", describe_exit(Some(output.status)));
    if !tail.is_empty() {
        message.push_str(": ");
        message.push_str(&tail);
    }
    Err(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_cmd_does_not_inherit_the_managers_private_env() {
        // SAFETY (edition 2021: set_var is safe): only this test reads this variable.
        std::env::set_var("HAMMER_MANAGER_TEST_SECRET", "s3cret");
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("APP_SETTING".to_owned(), "on".to_owned())]);
        let spec = GateSpec {
            window: Duration::from_secs(1),
            health_cmd: None,
            dir: dir.path(),
            env: &env,
            commit: "0123456789abcdef0123456789abcdef01234567",
            generation: 1,
            user: None,
            app_data: Path::new("/nonexistent/app-data"),
        };
        let seen = run_health_cmd(
            r#"test -z "$HAMMER_MANAGER_TEST_SECRET" && test "$APP_SETTING" = on && test "$HOME" = /nonexistent/app-data && test "$HAMMER_APP_DATA" = "$HOME""#,
            &spec,
            Duration::from_secs(10),
        )
        .await;
        assert!(seen.is_ok(), "{seen:?}");
    }
}
