//! The real `hammer-manager` binary with the real runtime against a real broker (rumqttd on
//! loopback) and a real git repository: `run` deploys a signed desired state to `running`,
//! reports health, `status` answers while it runs (snapshot) and after it stops (store),
//! and SIGTERM stops the app with the manager (KillMode=process in the unit relies on this)
//! and tells the service (`stopped`) before going offline.

use crate::agent_support::*;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hammer-manager");

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

fn status_json(data_dir: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_deploys_reports_and_stops_the_app_on_sigterm() {
    let broker = start_broker();
    let key = SigningKeyPair::generate().unwrap();
    let mut svc = Service::connect(
        broker,
        SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap(),
    )
    .await;
    let dir = TempDir::new();
    // As root the app runs as `hammer-app` from the app dir beside the data dir
    // (`data-apps`): that user must be able to pass through the test's folder, as it can
    // through /var/lib on a device.
    allow_others_through(&dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    make_data_dir(&data, broker, &key);

    // Not running yet and nothing deployed: status works offline.
    let st = status_json(&data);
    assert_eq!(st["manager_running"], false);
    assert_eq!(st["device_id"], DEVICE);

    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let script = repo.join("start.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho hello from the app\nexec sleep 1000\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .unwrap();
    git(&repo, &["add", "start.sh"]);
    git(&repo, &["commit", "-q", "-m", "first"]);

    let log = std::fs::File::create(dir.path().join("manager.log")).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run",
            // An hour: the health report showing the app running must come right after
            // `running`, not from the timer.
            "--health-interval",
            "3600",
            "--stop-grace",
            "2",
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    svc.wait_for("presence online", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    let mut d = desired(1);
    d.repo_url = format!("file://{}", repo.display());
    d.start = "./start.sh".into();
    d.health_window_secs = 1;
    svc.desired(&d).await;
    let running = svc.wait_phase(Phase::Running).await;
    assert_eq!(running.generation, Some(1));
    let commit = running.commit.clone().expect("running names its commit");

    let h = svc
        .wait_for("health with the app running", |s| match s {
            Seen::Health(h) if h.app_running => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(h.commit.as_deref(), Some(commit.as_str()));
    let pgid = h.pid.expect("pid") as i32;

    // While it runs, the database is locked: status shows the snapshot.
    let st = status_json(&data);
    assert_eq!(st["manager_running"], true);
    assert_eq!(st["commit"], commit.as_str());

    // SIGTERM: the manager stops the app (its whole group) and exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(c) = child.try_wait().unwrap() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "manager did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit {code:?}");
    let left = live_group_members(pgid);
    assert!(
        left.is_empty(),
        "the app's process group is gone, but {left:?} remain; manager log:\n{}",
        std::fs::read_to_string(dir.path().join("manager.log")).unwrap()
    );
    // The service heard that the app stopped with the manager, before the manager said
    // goodbye.
    let stopped = svc.wait_phase(Phase::Stopped).await;
    assert_eq!(stopped.commit.as_deref(), Some(commit.as_str()));
    assert!(
        stopped
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("shutting down")),
        "{stopped:?}"
    );
    svc.wait_for("presence offline", |s| {
        matches!(s, Seen::Presence(p) if !p.online).then_some(())
    })
    .await;

    let st = status_json(&data);
    assert_eq!(st["manager_running"], false);
    assert_eq!(st["commit"], commit.as_str());
    assert_eq!(st["generation"], 1);
}

/// Lets other users (the app user) pass through `dir` without listing it (mode 0711).
/// A data dir of a manager that kept its state in sled (decision 0021): `run` and `status`
/// refuse it, name the next step, and leave it as it was.
#[test]
fn an_older_managers_sled_state_is_refused_with_the_next_step() {
    let dir = TempDir::new();
    let data = dir.path().join("data");
    let legacy = data.join("state.sled");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(legacy.join("db"), b"sled").unwrap();
    let key = SigningKeyPair::generate().unwrap();
    make_data_dir(&data, "127.0.0.1:9".parse().unwrap(), &key);
    // Whoever runs the test may run the app (root or not): the refusal comes after that check.
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    for args in [vec!["run", "--app-user", me.as_str()], vec!["status"]] {
        let out = Command::new(BIN)
            .args(&args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("state.sled") && err.contains("enroll --force"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !data.join("store").exists(),
        "nothing of the new store is written"
    );
    assert_eq!(std::fs::read(legacy.join("db")).unwrap(), b"sled");
}

fn allow_others_through(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
}

/// Pids of live (non-zombie) processes in process group `pgid`.
fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[0] != "Z" && f[2].parse::<i32>() == Ok(pgid) {
            out.push(pid);
        }
    }
    out
}
