//! Crash recovery at the API level: the runtime is abandoned (what SIGKILL does to the
//! manager: the app keeps running, nothing more is persisted) at several points, then spawned
//! again on the same data dir and database. It must converge with exactly one app instance
//! and `current` pointing at a complete release.

use crate::runtime_support::*;
use hammer_manager::runtime::state::{Deployment, StateStore};
use hammer_manager::runtime::{local_status, Step};
use hammer_protocol::Phase;
use std::time::Duration;

fn current_is_complete(w: &World) -> String {
    let link = std::fs::read_link(w.app_dir().join("current")).unwrap();
    let commit = link.file_name().unwrap().to_string_lossy().to_string();
    assert!(w.app_dir().join(&link).join("start.sh").is_file());
    commit
}

#[tokio::test]
async fn restart_when_idle_stops_the_old_instance_and_starts_one() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    let pid1 = w.one_app(&v1).await;
    rt.abandon();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.one_app(&v1).await, pid1, "the app outlives the manager");

    let status = local_status(&w.layout(), &w.db).unwrap();
    assert_eq!(status.commit.as_deref(), Some(v1.as_str()));
    assert!(status.app_running);

    let n = w.sink.count();
    let rt = w.spawn();
    let r = w.sink.wait_phase(Phase::Restarted, n).await;
    assert_eq!(r.generation, Some(1));
    let pid2 = w.one_app(&v1).await;
    assert_ne!(pid1, pid2);
    assert_eq!(current_is_complete(&w), v1);
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn killed_during_verification_restarts_the_health_window() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    w.one_app(&v1).await;

    let v2 = w.repo.commit_app(GOOD_APP, true, "v2");
    let mut d2 = w.desired(2, "main");
    d2.health_window_secs = 2;
    let n = w.sink.count();
    send(&rt, d2).await;
    w.sink.wait_for(2, Phase::Verifying, n).await;
    rt.abandon();
    assert_eq!(rt.status().step, Step::Verifying);
    assert_eq!(current_is_complete(&w), v2);

    let n = w.sink.count();
    let rt = w.spawn();
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Running);
    w.one_app(&v2).await;
    assert_eq!(current_is_complete(&w), v2);
    assert_eq!(rt.status().previous_commit.as_deref(), Some(v1.as_str()));
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn killed_during_fetch_redoes_the_deployment() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    w.one_app(&v1).await;
    rt.abandon();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The state a SIGKILL during the fetch of generation 2 leaves behind, with a half-written
    // checkout lying around.
    let v2 = w.repo.commit_app(GOOD_APP, true, "v2");
    let store = StateStore::open(&w.db).unwrap();
    let mut state = store.load().unwrap();
    let d2 = w.desired(2, "main");
    state.desired = Some(d2.clone());
    state.deployment = Deployment::Fetching {
        desired: Box::new(d2),
    };
    store.save(&state).unwrap();
    let junk = w.app_dir().join("releases").join(format!(".tmp-{v2}-abc"));
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("half"), "x").unwrap();

    let n = w.sink.count();
    let rt = w.spawn();
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Running);
    w.one_app(&v2).await;
    assert_eq!(current_is_complete(&w), v2);
    assert!(!junk.exists());
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn killed_while_switching_or_rolling_back_converges() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    w.one_app(&v1).await;
    let bad = w
        .repo
        .commit_app("#!/bin/sh\necho dying\nexit 1\n", true, "bad");
    let n = w.sink.count();
    send(&rt, w.desired(2, "main")).await;
    // Abandon as soon as the new release starts (old app stopped, current swapped).
    w.sink.wait_for(2, Phase::Starting, n).await;
    rt.abandon();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(current_is_complete(&w), bad);

    let n = w.sink.count();
    let rt = w.spawn();
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::RolledBack);
    w.one_app(&v1).await;
    assert_eq!(current_is_complete(&w), v1);

    // Now a crash in the middle of the rollback itself.
    rt.abandon();
    let store = StateStore::open(&w.db).unwrap();
    let mut state = store.load().unwrap();
    let d3 = w.desired(3, "main");
    let release = hammer_manager::runtime::state::Release::from_desired(&d3, &bad);
    state.desired = Some(d3.clone());
    state.deployment = Deployment::RollingBack {
        desired: Box::new(d3),
        release: release.clone(),
        previous: state.current.clone(),
        reason: "the app exited".into(),
        log_tail: vec!["dying".into()],
    };
    state.current = Some(release);
    store.save(&state).unwrap();

    let n = w.sink.count();
    let rt = w.spawn();
    let r = w.sink.wait_any(3, &[Phase::RolledBack], n).await;
    assert_eq!(r.log_tail, vec!["dying".to_string()]);
    w.one_app(&v1).await;
    assert_eq!(current_is_complete(&w), v1);
    assert_eq!(rt.status().rolled_back, vec![2, 3]);
    rt.shutdown(true).await;
    w.no_app().await;
}
