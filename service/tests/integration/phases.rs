//! Phased deployments (soak, promotion on its own and by hand, a hold when a canary crashes)
//! and scheduled starts, against the real embedded broker with simulated devices over mTLS.

use crate::common::{Behavior, Harness};
use crate::pause_retry::{act, deploy, target_state, wait_for};
use hammer_protocol::Phase;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// `POST /api/v1/deployments/{id}/promote`.
async fn promote(h: &Harness, token: &str, id: &str) -> (StatusCode, Value) {
    act(h, token, id, "promote").await
}

/// One canary, a one-second soak, then the rest: nothing reaches the other devices before the
/// canary ran for the whole soak, and the promotion is recorded as the soak's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phase_that_stays_healthy_for_its_soak_promotes_itself() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let canary = h
        .ready_device("alice", &t, "canary", json!({}), Behavior::Silent)
        .await;
    let mut rest = Vec::new();
    for name in ["r1", "r2"] {
        rest.push(
            h.ready_device("alice", &t, name, json!({}), Behavior::Succeed)
                .await,
        );
    }
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["canary", "r1", "r2"]},
               "strategy": {"phases": [{"devices": 1}], "soak_secs": 1, "timeout_secs": 60}}),
    )
    .await;
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["phasing"]["count"], 2, "{v}");
    assert_eq!(v["phasing"]["ends"], json!([1, 3]), "{v}");
    let desired = canary.wait_desired().await;
    canary
        .report(
            canary.next_seq(),
            Some(&desired),
            Phase::Running,
            Some("abc"),
        )
        .await;
    let v = wait_for(&h, &t, &id, |v| v["phasing"]["state"] == "soaking").await;
    assert!(v["phasing"]["soak_until"].as_u64().is_some(), "{v}");
    for d in &rest {
        assert!(d.last_desired().is_none(), "launched during the soak: {v}");
    }
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let promotions = v["phasing"]["promotions"].as_array().unwrap();
    assert_eq!(promotions.len(), 1, "{v}");
    assert_eq!(promotions[0]["phase"], 1);
    assert!(promotions[0].get("by").is_none(), "{v}");
}

/// A canary that crashes after it succeeded holds the rollout past its soak; its owner
/// promotes it by hand (another user cannot), and the last phase cannot be promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_crashes_during_its_soak_holds_the_rollout_until_promoted_by_hand() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bob = h.user("bob").await;
    let canary = h
        .ready_device("alice", &t, "canary", json!({}), Behavior::Silent)
        .await;
    let other = h
        .ready_device("alice", &t, "other", json!({}), Behavior::Silent)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["canary", "other"]},
               "strategy": {"phases": [{"percent": 50}], "soak_secs": 1, "timeout_secs": 60}}),
    )
    .await;
    let desired = canary.wait_desired().await;
    canary
        .report(
            canary.next_seq(),
            Some(&desired),
            Phase::Running,
            Some("abc"),
        )
        .await;
    wait_for(&h, &t, &id, |v| target_state(v, "canary") == "succeeded").await;
    canary
        .report(canary.next_seq(), Some(&desired), Phase::Crashed, None)
        .await;
    let v = wait_for(&h, &t, &id, |v| v["phasing"]["state"] == "held").await;
    let reason = v["phasing"]["held_reason"].as_str().unwrap();
    assert!(
        reason.contains("canary crashed after it succeeded"),
        "{reason}"
    );
    // Well past the soak: still held, nothing launched on the other device.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["phasing"]["state"], "held", "{v}");
    assert_eq!(target_state(&v, "other"), "pending", "{v}");
    assert!(other.last_desired().is_none());

    let (s, v) = promote(&h, &bob, &id).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = promote(&h, &t, &id).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["phasing"]["current"], 2, "{v}");
    assert_eq!(v["phasing"]["promotions"][0]["by"], "alice", "{v}");
    let (s, v) = promote(&h, &t, &id).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("last phase"),
        "{v}"
    );
    let desired = other.wait_desired().await;
    other
        .report(
            other.next_seq(),
            Some(&desired),
            Phase::Running,
            Some("abc"),
        )
        .await;
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
}

/// A deployment scheduled a little ahead touches no device before its time, then runs; a
/// deployment of one phase has nothing to promote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_deployment_touches_no_device_before_its_start() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Succeed)
        .await;
    let start = hammer_protocol::now_ms() + 1500;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["d"]}, "strategy": {"start_at": start}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(target_state(&v, "d"), "pending", "{v}");
    assert!(d.last_desired().is_none(), "launched before its start");
    let (s, v) = promote(&h, &t, &id).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("one phase"),
        "{v}"
    );
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let issued = d.last_desired().unwrap().issued_at;
    assert!(
        issued >= start,
        "issued at {issued}, before the start {start}"
    );
}

/// Strategies the service refuses, each with a message that says what is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phases_soak_and_start_times_out_of_range_are_refused_with_what_is_allowed() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Silent)
        .await;
    let far = hammer_protocol::now_ms() + 100 * 24 * 3600 * 1000;
    for (strategy, says) in [
        (json!({"soak_secs": 60}), "needs strategy.phases"),
        (json!({"phases": [{"percent": 0}]}), "1 to 100"),
        (json!({"phases": [{"devices": 0}]}), "at least 1"),
        (
            json!({"phases": [{"devices": 1}], "soak_secs": 700000}),
            "at most 604800",
        ),
        (json!({"start_at": far}), "90 days"),
        (
            json!({"phases": vec![json!({"devices": 1}); 21]}),
            "at most 20",
        ),
    ] {
        let (s, v) = h
            .post(
                "/api/v1/deployments",
                &t,
                json!({"targets": {"names": ["d"]}, "strategy": strategy}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{strategy}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(says),
            "{strategy}: {v}"
        );
    }
}

/// A device outside its maintenance window waits as pending while the others go, and goes
/// when its window opens (the next full minute here: the window's grain).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_outside_its_maintenance_window_waits_then_goes_when_it_opens() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let night = h
        .ready_device(
            "alice",
            &t,
            "night",
            json!({"site": "night"}),
            Behavior::Succeed,
        )
        .await;
    let day = h
        .ready_device("alice", &t, "day", json!({}), Behavior::Succeed)
        .await;
    // The window opens at the next full minute (UTC) and lasts a minute.
    let now = hammer_protocol::now_ms();
    let opens = (now / 60_000 + 1) * 60_000;
    let hm = |ms: u64| format!("{:02}:{:02}", ms / 3_600_000 % 24, ms / 60_000 % 60);
    let window = format!("daily {}-{}", hm(opens), hm(opens + 60_000));
    let (s, v) = h
        .post(
            "/api/v1/windows",
            &t,
            json!({"applies_to": {"tag": "site=night"}, "window": window}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["night", "day"]}, "strategy": {"timeout_secs": 120}}),
    )
    .await;
    // `day` has no window: it goes at once; `night` waits, and takes no slot meanwhile.
    wait_for(&h, &t, &id, |v| target_state(v, "day") == "succeeded").await;
    if hammer_protocol::now_ms() < opens {
        let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
        assert_eq!(target_state(&v, "night"), "pending", "{v}");
        assert!(
            night.last_desired().is_none(),
            "launched outside its window"
        );
    }
    assert!(day.last_desired().is_some());
    let v = h.wait_deployment(&t, &id, 90).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let issued = night.last_desired().unwrap().issued_at;
    assert!(
        issued >= opens,
        "launched {} ms before its window opened",
        opens - issued
    );
}
