//! The kill switch (`/api/v1/commits/{sha}/bad`): a running deployment pinned to a commit
//! marked bad stops, a new one naming it is refused until it is unmarked, one that pins it
//! from a first report stops, another user's marks change nothing for this user, and
//! `rollback` sends the devices running it back to their previous release. Real embedded
//! broker, simulated devices over mTLS.

use crate::common::{Behavior, Harness};
use hammer_sim_device::scripted::DEFAULT_HEAD;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

async fn deploy(h: &Harness, token: &str, body: Value) -> (StatusCode, Value) {
    h.post("/api/v1/deployments", token, body).await
}

async fn deployed(h: &Harness, token: &str, body: Value) -> String {
    let (s, v) = deploy(h, token, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn mark(h: &Harness, token: &str, sha: &str, body: Value) -> (StatusCode, Value) {
    h.post(&format!("/api/v1/commits/{sha}/bad"), token, body)
        .await
}

async fn unmark(h: &Harness, token: &str, sha: &str) -> StatusCode {
    h.call(
        Method::DELETE,
        &format!("/api/v1/commits/{sha}/bad"),
        token,
        None,
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_deployment_of_a_commit_marked_bad_is_stopped() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Silent)
        .await;
    let id = deployed(
        &h,
        &t,
        json!({"targets": {"names": ["d"]}, "commit": A, "strategy": {"timeout_secs": 60}}),
    )
    .await;
    d.wait_desired().await;
    let (s, v) = mark(&h, &t, A, json!({"reason": "boot loop"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stopped"], json!([id]), "{v}");
    assert_eq!(v["commit"]["commit"], A, "{v}");
    let v = h.wait_deployment(&t, &id, 10).await;
    assert_eq!(v["state"], "canceled", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("commit {A} is marked bad (boot loop)")),
        "{v}"
    );
    // The typed client lists it.
    let list = h.client(&t).bad_commits().await.unwrap().body;
    assert_eq!(list.commits.len(), 1);
    assert_eq!(list.commits[0].reason.as_deref(), Some("boot loop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_deployment_of_a_bad_commit_is_refused_until_it_is_unmarked() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Succeed)
        .await;
    // Only full commit ids.
    let (s, v) = mark(&h, &t, "abc123", json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = mark(&h, &t, &A.to_uppercase(), json!({"reason": "leaks memory"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stopped"], json!([]), "{v}");
    let body = json!({"targets": {"names": ["d"]}, "commit": A});
    let (s, v) = deploy(&h, &t, body.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        v["error"],
        format!("commit {A} is marked bad (leaks memory); unmark it with `hammer commit good {A}`"),
        "{v}"
    );
    // A ref that is the full commit id is the same commit.
    let (s, v) = deploy(&h, &t, json!({"targets": {"names": ["d"]}, "git_ref": A})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    assert_eq!(unmark(&h, &t, A).await, StatusCode::NO_CONTENT);
    assert_eq!(unmark(&h, &t, A).await, StatusCode::NOT_FOUND);
    let (_, v) = h.get("/api/v1/commits/bad", &t).await;
    assert_eq!(v["commits"], json!([]), "{v}");
    let id = deployed(&h, &t, body).await;
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_pinning_a_bad_commit_from_a_first_report_is_stopped() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Succeed)
        .await;
    let (s, v) = mark(&h, &t, DEFAULT_HEAD, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // No commit named: the device's first report pins the one it resolved, the bad one.
    let id = deployed(&h, &t, json!({"targets": {"names": ["d"]}})).await;
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "canceled", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("commit {DEFAULT_HEAD} is marked bad")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_bad_commits_do_not_affect_this_user() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bob = h.user("bob").await;
    let d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Silent)
        .await;
    let id = deployed(
        &h,
        &t,
        json!({"targets": {"names": ["d"]}, "commit": A, "strategy": {"timeout_secs": 60}}),
    )
    .await;
    d.wait_desired().await;
    let (s, v) = mark(&h, &bob, A, json!({"rollback": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stopped"], json!([]), "{v}");
    assert_eq!(v["rolled_back"], json!([]), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["state"], "running", "{v}");
    let (_, v) = h.get("/api/v1/commits/bad", &t).await;
    assert_eq!(v["commits"], json!([]), "{v}");
    // Bob cannot unmark for alice either: alice has nothing marked.
    assert_eq!(unmark(&h, &t, A).await, StatusCode::NOT_FOUND);
    h.client(&t).cancel_deployment(&id).await.unwrap();
    let (s, v) = deploy(&h, &t, json!({"targets": {"names": ["d"]}, "commit": A})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_sends_the_devices_running_a_bad_commit_to_their_previous_release() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let old = h
        .ready_device("alice", &t, "old", json!({}), Behavior::Succeed)
        .await;
    let fresh = h
        .ready_device("alice", &t, "fresh", json!({}), Behavior::Succeed)
        .await;
    let id = deployed(&h, &t, json!({"targets": {"names": ["old"]}, "commit": A})).await;
    assert_eq!(h.wait_deployment(&t, &id, 20).await["state"], "succeeded");
    let id = deployed(
        &h,
        &t,
        json!({"targets": {"names": ["old", "fresh"]}, "commit": B}),
    )
    .await;
    assert_eq!(h.wait_deployment(&t, &id, 20).await["state"], "succeeded");
    for name in ["old", "fresh"] {
        h.wait_device(&t, name, |d| d["current_commit"] == B).await;
    }

    let (s, v) = mark(&h, &t, B, json!({"reason": "crashes", "rollback": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rolled: Vec<&str> = v["rolled_back"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["device"].as_str().unwrap())
        .collect();
    assert_eq!(rolled, ["old"], "{v}");
    let not: Vec<&Value> = v["not_rolled_back"].as_array().unwrap().iter().collect();
    assert_eq!(not.len(), 1, "{v}");
    assert_eq!(not[0]["device"], "fresh", "{v}");
    assert!(
        not[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no earlier successful release"),
        "{v}"
    );
    // The device running it got a desired state naming its previous commit, and runs it.
    let mut got = None;
    for _ in 0..200 {
        if let Some(d) = old
            .last_desired()
            .filter(|d| d.commit.as_deref() == Some(A))
        {
            got = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        got.is_some(),
        "no rollback to {A}: {:?}",
        old.last_desired()
    );
    h.wait_device(&t, "old", |d| d["current_commit"] == A).await;
    assert_eq!(
        fresh.last_desired().and_then(|d| d.commit).as_deref(),
        Some(B)
    );
}
