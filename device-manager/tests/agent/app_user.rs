//! Apps never run as root (issue 12, decision 0007), checked on the real `hammer-manager run`
//! binary with a real broker (rumqttd on loopback) and a real git repository:
//! - as root, with no `--app-user`, the app and its health command run as `hammer-app`, which
//!   cannot read the manager's keys, git credentials, store or git mirror, cannot write its
//!   release, and has a writable folder of its own (`HOME`, `HAMMER_APP_DATA`);
//! - a missing app user stops the manager with the command that creates it;
//! - a manager that is not root refuses an `--app-user` it cannot switch to;
//! - the data dir is 0700 (and the keys 0600) after every start, whatever they were before.
//!
//! Tests that need root skip (saying why) when not root, except under `CI=true`, where a
//! skipped test fails: CI runs them as root with the `hammer-app` user (`.ci/run` creates it).

use crate::agent_support::*;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hammer-manager");
const APP_USER: &str = "hammer-app";
const USERADD: &str = "useradd --system --no-create-home --shell /usr/sbin/nologin";

/// True when the test can run as root with the app user. Not root: skips (false) with a
/// message, or fails under CI=true.
fn root_with_app_user(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs root (CI=true: a skipped test fails CI); run the tests as root"
        );
        eprintln!("SKIPPED {test}: it needs root to switch the app to {APP_USER}");
        return false;
    }
    app_user_uid();
    true
}

fn app_user_uid() -> u32 {
    nix::unistd::User::from_name(APP_USER)
        .unwrap()
        .unwrap_or_else(|| {
            panic!("the {APP_USER} user is missing: create it with `{USERADD} {APP_USER}`")
        })
        .uid
        .as_raw()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A temp folder the app user can pass through (as it can through /var/lib on a device),
/// with an enrolled-like data dir `data` in it; the default app dir is `data-apps` beside it.
struct Device {
    tmp: TempDir,
    data: PathBuf,
    manager: Option<Child>,
}

impl Device {
    fn new(broker: std::net::SocketAddr, key: &SigningKeyPair) -> Device {
        let tmp = TempDir::new();
        set_mode(&tmp.path(), 0o711);
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        make_data_dir(&data, broker, key);
        Device {
            tmp,
            data,
            manager: None,
        }
    }

    fn app_dir(&self) -> PathBuf {
        std::fs::canonicalize(self.tmp.path())
            .unwrap()
            .join("data-apps")
    }

    fn log_path(&self) -> PathBuf {
        self.tmp.path().join("manager.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--stop-grace", "2", "--data-dir"])
            .arg(&self.data)
            .env_remove("HAMMER_MANAGER_APP_USER")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.manager = Some(child);
    }

    /// SIGTERM (the manager stops the app) and wait.
    fn stop(&mut self) {
        if let Some(mut child) = self.manager.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The start script: records who it runs as and what it can read into its own folder, then
/// stays up. `SECRETS` is the manager's data dir (given through the desired env).
const PROBE_APP: &str = r#"#!/bin/sh
try() { if "$@" >/dev/null 2>&1; then echo 0; else echo 1; fi; }
{
  echo "uid=$(id -u)"
  echo "device.key=$(try cat "$SECRETS/device.key")"
  echo "sealing.key=$(try cat "$SECRETS/sealing.key")"
  echo "credentials=$(try cat "$SECRETS/credentials")"
  echo "store=$(try cat "$SECRETS/store/state.json")"
  echo "mirror=$(try ls "$SECRETS/repo.git")"
  echo "release_read=$(try cat ./start.sh)"
  echo "release_write=$(try touch ./written-by-the-app)"
  echo "home=$HOME"
  echo "app_data=$HAMMER_APP_DATA"
  echo "history=$(git rev-list --count HEAD 2>&1 | head -n 1)"
} > "$HAMMER_APP_DATA/probe.tmp" && mv "$HAMMER_APP_DATA/probe.tmp" "$HAMMER_APP_DATA/probe"
exec sleep 1000
"#;

fn read_probe(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_the_app_runs_as_hammer_app_and_cannot_read_the_managers_secrets() {
    if !root_with_app_user("as_root_the_app_runs_as_hammer_app_...") {
        return;
    }
    let uid = app_user_uid();
    let broker = start_broker();
    let key = SigningKeyPair::generate().unwrap();
    let mut svc = Service::connect(
        broker,
        SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap(),
    )
    .await;
    let mut dev = Device::new(broker, &key);
    std::fs::write(dev.data.join("device.key"), "device private key").unwrap();
    set_mode(&dev.data.join("device.key"), 0o600);
    hammer_manager::credentials::store(
        &dev.data,
        Some(&GitCredentials::Https {
            username: "u".into(),
            token: "secret-token".into(),
        }),
    )
    .unwrap();

    let repo = dev.tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("start.sh"), PROBE_APP).unwrap();
    set_mode(&repo.join("start.sh"), 0o755);
    git(&repo, &["add", "start.sh"]);
    git(&repo, &["commit", "-q", "-m", "probe"]);

    dev.start();
    svc.wait_for("presence online", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    let mut d = desired(1);
    d.repo_url = format!("file://{}", repo.display());
    d.health_window_secs = 1;
    d.health_cmd = Some(r#"id -u > "$HAMMER_APP_DATA/health-uid""#.into());
    d.env
        .insert("SECRETS".into(), dev.data.display().to_string());
    // With the history, which the app's git may read although the manager owns it.
    d.full_history = true;
    svc.desired(&d).await;
    let end = svc
        .wait_for("the deployment to end", |s| match s {
            Seen::Status(e)
                if matches!(e.phase, Phase::Running | Phase::RolledBack | Phase::Failed) =>
            {
                Some(e.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(
        end.phase,
        Phase::Running,
        "{end:?}\nmanager log:\n{}",
        dev.log()
    );

    let app_data = dev.app_dir().join("data");
    let probe = read_probe(&app_data.join("probe"));
    assert_eq!(probe["uid"], uid.to_string(), "the app runs as {APP_USER}");
    assert_ne!(probe["uid"], "0");
    for secret in [
        "device.key",
        "sealing.key",
        "credentials",
        "store",
        "mirror",
    ] {
        assert_eq!(
            probe[secret], "1",
            "the app could read the manager's {secret}"
        );
    }
    assert_eq!(probe["release_read"], "0", "the app reads its release");
    assert_eq!(
        probe["history"], "1",
        "the app's git reads the release's history (--full-history)"
    );
    assert_eq!(
        probe["release_write"], "1",
        "the app cannot write its release"
    );
    assert_eq!(probe["home"], app_data.display().to_string());
    assert_eq!(probe["app_data"], app_data.display().to_string());
    let health_uid = std::fs::read_to_string(app_data.join("health-uid")).unwrap();
    assert_eq!(health_uid.trim(), uid.to_string(), "the health command too");

    assert_eq!(mode(&dev.data), 0o700);
    assert_eq!(mode(&dev.data.join("device.key")), 0o600);
    assert_eq!(mode(&dev.data.join("credentials")), 0o600);
    dev.stop();
}

#[test]
fn a_missing_app_user_stops_the_manager_with_the_command_that_creates_it() {
    let tmp = TempDir::new();
    let data = tmp.path().join("data");
    let out = Command::new(BIN)
        .args(["run", "--data-dir"])
        .arg(&data)
        .env("HAMMER_MANAGER_APP_USER", "hammer-no-such-user")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{USERADD} hammer-no-such-user")),
        "the error names the command that creates the user: {stderr}"
    );
    assert!(
        !data.exists(),
        "nothing is touched before the settings are checked"
    );
}

#[test]
fn a_manager_that_is_not_root_refuses_an_app_user_it_cannot_switch_to() {
    if !root_with_app_user("a_manager_that_is_not_root_refuses_...") {
        return;
    }
    // The manager runs as hammer-app here (this test, as root, drops to it) and is asked to
    // run the app as root.
    let uid = app_user_uid();
    let out = Command::new(BIN)
        .args([
            "run",
            "--app-user",
            "root",
            "--data-dir",
            "/nonexistent/data",
        ])
        .uid(uid)
        .gid(uid_gid(uid))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--app-user root")
            && stderr.contains("not as root")
            && stderr.contains("cannot switch"),
        "{stderr}"
    );
}

fn uid_gid(uid: u32) -> u32 {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .unwrap()
        .unwrap()
        .gid
        .as_raw()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_0700_after_a_start_even_if_it_was_chmodded_0755() {
    if nix::unistd::geteuid().is_root() {
        // As root the default app user must exist for the manager to start.
        app_user_uid();
    }
    let broker = start_broker();
    let key = SigningKeyPair::generate().unwrap();
    let mut svc = Service::connect(
        broker,
        SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap(),
    )
    .await;
    let mut dev = Device::new(broker, &key);
    set_mode(&dev.data, 0o755);
    set_mode(&dev.data.join("sealing.key"), 0o644);
    dev.start();
    svc.wait_for("presence online", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    assert_eq!(mode(&dev.data), 0o700, "manager log:\n{}", dev.log());
    assert_eq!(mode(&dev.data.join("sealing.key")), 0o600);
    dev.stop();
}
