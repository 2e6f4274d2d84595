//! Runtime deployments against real git repos and real processes: first deploy, update,
//! rollback on crash or failing health command, failures that leave the old app running,
//! stop/start, restart, crash supervision.

use crate::runtime_support::*;
use hammer_manager::runtime::Input;
use hammer_protocol::{Phase, RunState};

#[tokio::test]
async fn first_deploy_then_update_replaces_the_app() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    let running = w
        .sink
        .wait_any(1, &[Phase::Running, Phase::Failed, Phase::RolledBack], 0)
        .await;
    assert_eq!(running.phase, Phase::Running);
    assert_eq!(running.commit.as_deref(), Some(v1.as_str()));
    let phases: Vec<Phase> = w.sink.all().iter().map(|r| r.phase).collect();
    assert_eq!(
        phases,
        vec![
            Phase::Received,
            Phase::Fetching,
            Phase::Fetched,
            Phase::Starting,
            Phase::Verifying,
            Phase::Running
        ]
    );
    // `fetched` names the commit and its subject (the first line of its message).
    let fetched = w.sink.all()[2].clone();
    assert_eq!(fetched.commit.as_deref(), Some(v1.as_str()));
    assert_eq!(fetched.commit_subject.as_deref(), Some("v1"));
    let pid1 = w.one_app(&v1).await;
    let link = std::fs::read_link(w.app_dir().join("current")).unwrap();
    assert_eq!(link, std::path::Path::new("releases").join(&v1));
    assert!(w
        .app_dir()
        .join("releases")
        .join(&v1)
        .join("NOTE")
        .is_file());
    let status = rt.status();
    assert_eq!(status.commit.as_deref(), Some(v1.as_str()));
    assert_eq!(status.generation, Some(1));
    assert!(status.app_running);
    assert!(status.rss_kb > 0);
    // The app's output reaches the log file.
    let log = std::fs::read_to_string(w.data_dir().join("app.log")).unwrap();
    assert!(log.contains(&format!("hello from {v1}")), "{log}");

    let v2 = w.repo.commit_app(GOOD_APP, true, "v2");
    let n = w.sink.count();
    send(&rt, w.desired(2, "main")).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Running);
    assert_eq!(r.commit.as_deref(), Some(v2.as_str()));
    let pid2 = w.one_app(&v2).await;
    assert_ne!(pid1, pid2);
    assert!(!std::path::Path::new(&format!("/proc/{pid1}")).exists() || w.apps().len() == 1);
    assert_eq!(rt.status().previous_commit.as_deref(), Some(v1.as_str()));

    // The same generation again only re-confirms: no event, no restart.
    let n = w.sink.count();
    send(&rt, w.desired(2, "main")).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(w.sink.count(), n);
    assert_eq!(w.one_app(&v2).await, pid2);

    // A desired state pinning the running commit is confirmed at once.
    let mut d3 = w.desired(3, "main");
    d3.commit = Some(v2.clone());
    send(&rt, d3).await;
    let r = w
        .sink
        .wait_any(3, &[Phase::Running, Phase::Failed], n)
        .await;
    assert_eq!(r.phase, Phase::Running);
    assert!(!w.sink.all()[n..].iter().any(|r| r.phase == Phase::Fetching));
    assert_eq!(w.one_app(&v2).await, pid2);
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn app_exiting_at_once_is_rolled_back_and_not_retried() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    let pid1 = w.one_app(&v1).await;

    let bad = w.repo.commit_app(
        "#!/bin/sh\necho boom: missing config >&2\nexit 3\n",
        true,
        "bad",
    );
    let n = w.sink.count();
    send(&rt, w.desired(2, "main")).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(r.commit.as_deref(), Some(bad.as_str()));
    let detail = r.detail.unwrap();
    assert!(detail.contains("exited with status 3"), "{detail}");
    assert!(detail.contains(&v1[..12]), "{detail}");
    assert!(
        r.log_tail
            .iter()
            .any(|l| l.contains("boom: missing config")),
        "{:?}",
        r.log_tail
    );
    let pid = w.one_app(&v1).await;
    assert_ne!(pid, pid1, "the previous app was started again");
    assert_eq!(
        std::fs::read_link(w.app_dir().join("current")).unwrap(),
        std::path::Path::new("releases").join(&v1)
    );
    assert_eq!(rt.status().rolled_back, vec![2]);

    // The rolled-back generation arrives again (retained desired state): nothing happens.
    let n = w.sink.count();
    send(&rt, w.desired(2, "main")).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(w.sink.count(), n);
    assert_eq!(w.one_app(&v1).await, pid);

    // Even after a restart of the runtime.
    rt.abandon();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let rt = w.spawn();
    w.sink.wait_phase(Phase::Restarted, n).await;
    let n = w.sink.count();
    send(&rt, w.desired(2, "main")).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(w.sink.count(), n);
    w.one_app(&v1).await;
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn failing_health_command_rolls_back() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    let mut d1 = w.desired(1, "main");
    d1.health_cmd = Some("test -f NOTE".into());
    send(&rt, d1).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    w.one_app(&v1).await;

    w.repo.commit_app(GOOD_APP, true, "v2");
    let n = w.sink.count();
    let mut d2 = w.desired(2, "main");
    d2.health_window_secs = 2;
    d2.health_cmd = Some("echo not ready yet; exit 1".into());
    send(&rt, d2).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::RolledBack);
    let detail = r.detail.unwrap();
    assert!(detail.contains("health command"), "{detail}");
    assert!(detail.contains("not ready yet"), "{detail}");
    assert!(
        r.log_tail.iter().any(|l| l.contains("hello from")),
        "{:?}",
        r.log_tail
    );
    w.one_app(&v1).await;
    rt.shutdown(true).await;
}

#[tokio::test]
async fn failures_are_clear_and_leave_the_old_app_running() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    let pid = w.one_app(&v1).await;

    // A repository that does not exist.
    let mut d = w.desired(2, "main");
    d.repo_url = format!("file://{}/nope", w.tmp.path().display());
    send(&rt, d).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.detail.as_deref().unwrap().contains("fetching"), "{r:?}");

    // A malformed URL (with a secret in it that must not show).
    let mut d = w.desired(3, "main");
    d.repo_url = "ftp://user:hunter2@example.com/r.git".into();
    send(&rt, d).await;
    let r = w
        .sink
        .wait_any(3, &[Phase::Failed, Phase::Running], 0)
        .await;
    let detail = r.detail.unwrap();
    assert!(detail.contains("bad repository URL"), "{detail}");
    assert!(!detail.contains("hunter2"), "{detail}");

    // A ref that does not exist.
    send(&rt, w.desired(4, "no-such-branch")).await;
    let r = w
        .sink
        .wait_any(4, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Failed);
    assert!(
        r.detail
            .as_deref()
            .unwrap()
            .contains("\"no-such-branch\" not found"),
        "{r:?}"
    );

    // A start script that is not executable.
    let v2 = w.repo.commit_app(GOOD_APP, false, "v2 not executable");
    send(&rt, w.desired(5, "main")).await;
    let r = w
        .sink
        .wait_any(5, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Failed);
    assert_eq!(r.commit.as_deref(), Some(v2.as_str()));
    assert!(
        r.detail.as_deref().unwrap().contains("not executable"),
        "{r:?}"
    );

    // Nothing half-done: the same app instance still runs from the same release.
    assert_eq!(w.one_app(&v1).await, pid);
    assert_eq!(rt.status().commit.as_deref(), Some(v1.as_str()));
    let releases: Vec<String> = std::fs::read_dir(w.app_dir().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        releases.iter().all(|r| !r.starts_with(".tmp")),
        "{releases:?}"
    );
    rt.shutdown(true).await;
}

#[tokio::test]
async fn stop_start_restart_and_crash_supervision() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    let pid1 = w.one_app(&v1).await;

    let mut d2 = w.desired(2, "main");
    d2.run_state = RunState::Stopped;
    send(&rt, d2).await;
    w.sink.wait_for(2, Phase::Stopped, 0).await;
    w.no_app().await;
    assert!(!rt.status().app_running);

    let n = w.sink.count();
    send(&rt, w.desired(3, "main")).await;
    w.sink.wait_for(3, Phase::Running, n).await;
    let pid2 = w.one_app(&v1).await;
    assert_ne!(pid1, pid2);

    let n = w.sink.count();
    rt.send(Input::Restart).await;
    w.sink.wait_phase(Phase::Restarted, n).await;
    let pid3 = w.one_app(&v1).await;
    assert_ne!(pid2, pid3);

    // A crash is reported and the app restarted after the backoff.
    let n = w.sink.count();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid3),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let crash = w.sink.wait_phase(Phase::Crashed, n).await;
    assert!(crash.detail.unwrap().contains("signal 9"));
    w.sink.wait_phase(Phase::Restarted, n).await;
    let pid4 = w.one_app(&v1).await;
    assert_ne!(pid3, pid4);
    assert_eq!(rt.status().restarts, 2);

    // Live lines flow while logs are on.
    let mut live = rt.subscribe_logs();
    rt.send(Input::Logs { on: true }).await;
    rt.send(Input::Restart).await;
    let line = tokio::time::timeout(std::time::Duration::from_secs(5), live.recv())
        .await
        .expect("a live line")
        .unwrap();
    assert!(line.contains("hello from"), "{line}");
    rt.send(Input::Logs { on: false }).await;
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn old_releases_are_pruned_keeping_current_and_previous() {
    let w = World::new();
    let rt = w.spawn();
    let mut commits = Vec::new();
    for g in 1..=5u64 {
        commits.push(w.repo.commit_app(GOOD_APP, true, &format!("v{g}")));
        let mut d = w.desired(g, "main");
        d.health_window_secs = 0;
        let n = w.sink.count();
        send(&rt, d).await;
        let r = w
            .sink
            .wait_any(g, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
            .await;
        assert_eq!(r.phase, Phase::Running);
    }
    w.one_app(&commits[4]).await;
    let mut kept: Vec<String> = std::fs::read_dir(w.app_dir().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    kept.sort();
    let mut want = commits[2..].to_vec();
    want.sort();
    assert_eq!(kept, want);
    rt.shutdown(true).await;
}
