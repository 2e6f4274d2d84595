//! Pausing and resuming a deployment, and retrying an ended deployment's failed devices,
//! against the real embedded broker with simulated devices over mTLS.

use crate::common::{Behavior, Harness};
use hammer_protocol::Phase;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) async fn deploy(h: &Harness, token: &str, body: Value) -> String {
    let (s, v) = h.post("/api/v1/deployments", token, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

pub(crate) fn target_state(v: &Value, device: &str) -> Value {
    v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["device"] == device)
        .unwrap_or_else(|| panic!("no target {device} in {v}"))["state"]
        .clone()
}

pub(crate) async fn act(h: &Harness, token: &str, id: &str, what: &str) -> (StatusCode, Value) {
    h.post(
        &format!("/api/v1/deployments/{id}/{what}"),
        token,
        json!({}),
    )
    .await
}

/// Polls a deployment until `pred` holds (10 s).
pub(crate) async fn wait_for(
    h: &Harness,
    token: &str,
    id: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), token).await;
        if pred(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deployment {id}: never reached the expected state: {last}");
}

/// With `max_in_flight` 1, a pause lets the device in flight finish and count, launches
/// nothing more, and the resume finishes the rollout; pausing twice, resuming what is not
/// paused and either on an ended deployment are 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_deployment_launches_nothing_until_resumed() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let first = h
        .ready_device("alice", &t, "first", json!({}), Behavior::Silent)
        .await;
    let second = h
        .ready_device("alice", &t, "second", json!({}), Behavior::Succeed)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["first", "second"]}, "strategy": {"max_in_flight": 1, "timeout_secs": 60}}),
    )
    .await;
    let desired = first.wait_desired().await;
    let (s, v) = act(&h, &t, &id, "pause").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["state"].clone(), v["paused"].clone()),
        (json!("running"), json!(true))
    );
    let (s, v) = act(&h, &t, &id, "pause").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // The device in flight finishes, and its result counts.
    first
        .report(
            first.next_seq(),
            Some(&desired),
            Phase::Running,
            Some("abc"),
        )
        .await;
    wait_for(&h, &t, &id, |v| target_state(v, "first") == "succeeded").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["paused"], true, "{v}");
    assert_eq!(target_state(&v, "second"), "pending", "{v}");
    assert!(second.last_desired().is_none(), "launched while paused");

    let (s, v) = act(&h, &t, &id, "resume").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["paused"], false, "{v}");
    let (s, _) = act(&h, &t, &id, "resume").await;
    assert_eq!(s, StatusCode::CONFLICT);
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["paused"], false, "{v}");
    for what in ["pause", "resume"] {
        let (s, v) = act(&h, &t, &id, what).await;
        assert_eq!(s, StatusCode::CONFLICT, "{what}: {v}");
    }
}

/// Another user's deployment is "no such deployment" to pause, resume or retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_owner_pauses_resumes_or_retries() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bob = h.user("bob").await;
    let _d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Silent)
        .await;
    let id = deploy(&h, &t, json!({"targets": {"names": ["d"]}})).await;
    for what in ["pause", "resume", "retry"] {
        let (s, v) = act(&h, &bob, &id, what).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{what}: {v}");
    }
    let (s, _) = act(&h, &t, "nosuchdeployment", "pause").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["paused"], false, "{v}");
    // Still running: nothing to retry yet.
    let (s, v) = act(&h, &t, &id, "retry").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}

/// A pause is persisted: after a restart the deployment is still paused and launches nothing
/// until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_while_paused_stays_paused() {
    let mut h = Harness::start().await;
    let t = h.user("alice").await;
    let first = h
        .ready_device("alice", &t, "first", json!({}), Behavior::Silent)
        .await;
    let second = h
        .ready_device("alice", &t, "second", json!({}), Behavior::Succeed)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["first", "second"]}, "strategy": {"max_in_flight": 1, "timeout_secs": 60}}),
    )
    .await;
    let desired = first.wait_desired().await;
    let (s, v) = act(&h, &t, &id, "pause").await;
    assert_eq!(s, StatusCode::OK, "{v}");

    h.restart().await;

    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(
        (v["state"].clone(), v["paused"].clone()),
        (json!("running"), json!(true)),
        "{v}"
    );
    // The device reconnects on its own and finishes; the rest waits for the resume.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first
        .report(
            first.next_seq(),
            Some(&desired),
            Phase::Running,
            Some("abc"),
        )
        .await;
    wait_for(&h, &t, &id, |v| target_state(v, "first") == "succeeded").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["paused"], true, "{v}");
    assert_eq!(target_state(&v, "second"), "pending", "{v}");
    assert!(second.last_desired().is_none(), "launched while paused");

    let (s, v) = act(&h, &t, &id, "resume").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
}

/// A retry targets exactly the devices that failed or timed out, with the same ref, commit
/// and strategy; 409 when there are none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_targets_only_the_failed_and_timed_out_devices() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _ok = h
        .ready_device("alice", &t, "ok", json!({}), Behavior::Succeed)
        .await;
    // `bad` is played by hand: it fails the first deployment, then stays silent (busy) in the
    // retry, so that a second retry meets it there.
    let bad = h
        .ready_device("alice", &t, "bad", json!({}), Behavior::Silent)
        .await;
    let _mute = h
        .ready_device("alice", &t, "mute", json!({}), Behavior::Silent)
        .await;
    let strategy = json!({"timeout_secs": 2, "retries": 0});
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["ok", "bad", "mute"]}, "git_ref": "release", "strategy": strategy}),
    )
    .await;
    // The desired state naming the commit `ok` pinned (the first one is republished).
    let desired = bad.wait_desired_commit().await;
    bad.report(bad.next_seq(), Some(&desired), Phase::Failed, None)
        .await;
    let old = h.wait_deployment(&t, &id, 30).await;
    assert_eq!(old["state"], "failed", "{old}");
    assert_eq!(target_state(&old, "ok"), "succeeded");
    assert_eq!(target_state(&old, "bad"), "failed", "{old}");
    assert_eq!(target_state(&old, "mute"), "timed_out");

    let (s, v) = act(&h, &t, &id, "retry").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_ne!(v["id"], json!(id));
    let mut names: Vec<&str> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["bad", "mute"], "{v}");
    assert_eq!(v["git_ref"], "release", "{v}");
    assert_eq!(v["commit"], old["commit"], "{v}");
    assert_eq!(v["strategy"], old["strategy"], "{v}");
    let new_id = v["id"].as_str().unwrap().to_owned();
    // `bad` is busy in the retry now (and `mute`'s timed-out target was superseded by it).
    let (s, v) = act(&h, &t, &id, "retry").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("\"bad\""), "{v}");
    let v = h.wait_deployment(&t, &new_id, 30).await;
    assert_eq!(v["state"], "failed", "{v}");

    // A deployment that succeeded everywhere has nothing to retry.
    let ok_id = deploy(&h, &t, json!({"targets": {"names": ["ok"]}})).await;
    let v = h.wait_deployment(&t, &ok_id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let (s, v) = act(&h, &t, &ok_id, "retry").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}
