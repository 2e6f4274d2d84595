//! Deployments against the real embedded broker with simulated devices over mTLS.

use crate::common;

use crate::common::{Behavior, Harness};
use hammer_protocol::Phase;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn deploy(h: &Harness, token: &str, body: Value) -> String {
    let (s, v) = h.post("/api/v1/deployments", token, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn targets(v: &Value) -> Vec<Value> {
    v["targets"].as_array().unwrap().clone()
}

fn target(v: &Value, device: &str) -> Value {
    targets(v)
        .into_iter()
        .find(|t| t["device"] == device)
        .unwrap_or_else(|| panic!("no target {device} in {v}"))
}

/// Polls a deployment until `pred` holds (10 s).
async fn wait_for_deployment(
    h: &Harness,
    token: &str,
    id: &str,
    what: &str,
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
    panic!("deployment {id}: {what} never happened: {last}");
}

const C1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const C2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn success_pins_commit_and_records_history() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let mut devs = Vec::new();
    for i in 0..3 {
        devs.push(
            h.ready_device(
                "alice",
                &t,
                &format!("d{i}"),
                json!({"group": "a"}),
                Behavior::Succeed,
            )
            .await,
        );
    }
    // Devices after the first resolve the ref to another commit: the pin must win.
    let id = {
        let id = deploy(
            &h,
            &t,
            json!({"targets": {"tag": "group=a"}, "strategy": {"max_in_flight": 1}}),
        )
        .await;
        *devs[1].head.lock().unwrap() = "2222222222222222222222222222222222222222".into();
        *devs[2].head.lock().unwrap() = "2222222222222222222222222222222222222222".into();
        id
    };
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["commit"], "1111111111111111111111111111111111111111");
    for tg in targets(&v) {
        assert_eq!(tg["state"], "succeeded", "{v}");
        assert_eq!(
            tg["commit"], "1111111111111111111111111111111111111111",
            "{v}"
        );
    }
    assert_eq!(
        devs[2].last_desired().unwrap().commit.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );
    let (_, d) = h.get("/api/v1/devices/d0", &t).await;
    assert_eq!(
        d["current_commit"],
        "1111111111111111111111111111111111111111"
    );
    assert_eq!(d["app_phase"], "running");
    let (_, hist) = h.get("/api/v1/devices/d0/history", &t).await;
    let hist = hist.as_array().unwrap();
    assert!(
        hist.iter().any(|e| e["phase"] == "running"
            && e["deployer"] == "alice"
            && e["deployment_id"] == id.as_str()),
        "{hist:?}"
    );
    let (_, list) = h.get("/api/v1/deployments", &t).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_device_fails_the_deployment() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _a = h
        .ready_device("alice", &t, "a", json!({}), Behavior::Succeed)
        .await;
    let _b = h
        .ready_device("alice", &t, "b", json!({}), Behavior::Fail)
        .await;
    let id = deploy(&h, &t, json!({"targets": {"names": ["a", "b"]}})).await;
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("1 of 2"), "{v}");
    let b = targets(&v)
        .into_iter()
        .find(|t| t["device"] == "b")
        .unwrap();
    assert_eq!(b["state"], "failed");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("health check failed"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_at_threshold_skips_the_rest() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _d0 = h
        .ready_device("alice", &t, "d0", json!({"g": "x"}), Behavior::Fail)
        .await;
    let mut rest = Vec::new();
    for i in 1..4 {
        rest.push(
            h.ready_device(
                "alice",
                &t,
                &format!("d{i}"),
                json!({"g": "x"}),
                Behavior::Succeed,
            )
            .await,
        );
    }
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"tag": "g=x"}, "strategy": {"max_in_flight": 1, "abort_at_percent": 50, "abort_min_devices": 1}}),
    )
    .await;
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["reason"].as_str().unwrap().starts_with("aborted"), "{v}");
    let ts = targets(&v);
    assert_eq!(ts[0]["state"], "failed");
    for tg in &ts[1..] {
        assert_eq!(tg["state"], "skipped", "{v}");
    }
    // Devices not started keep their release: they never got a desired state.
    for d in &rest {
        assert!(d.last_desired().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_device_times_out() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _d = h
        .ready_device("alice", &t, "quiet", json!({}), Behavior::Silent)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["quiet"]}, "strategy": {"timeout_secs": 1}}),
    )
    .await;
    let v = h.wait_deployment(&t, &id, 10).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(targets(&v)[0]["state"], "timed_out", "{v}");
    assert_eq!(
        targets(&v)[0]["detail"],
        "not picked up within 1s: the device is online but did not answer",
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_that_runs_a_timed_out_attempt_later_shows_as_a_late_success() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let d = h
        .ready_device("alice", &t, "slow", json!({}), Behavior::Silent)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["slow"]}, "strategy": {"timeout_secs": 1}}),
    )
    .await;
    let v = h.wait_deployment(&t, &id, 10).await;
    assert_eq!(target(&v, "slow")["state"], "timed_out", "{v}");
    // Until it reports on it, the device is behind its desired state.
    let (_, dev) = h.get("/api/v1/devices/slow", &t).await;
    assert_eq!(
        (&dev["generation"], &dev["reported_generation"]),
        (&json!(1), &json!(0)),
        "{dev}"
    );
    // The device gets to it after all: the attempt it was given runs.
    let desired = d.wait_desired().await;
    d.report(d.next_seq(), Some(&desired), Phase::Running, Some(C1))
        .await;
    let v = wait_for_deployment(&h, &t, &id, "the late success", |v| {
        target(v, "slow")["state"] == "succeeded"
    })
    .await;
    let slow = target(&v, "slow");
    assert_eq!(slow["commit"], C1, "{v}");
    assert!(
        slow["detail"]
            .as_str()
            .is_some_and(|d| d.contains("after its attempt timed out")),
        "{v}"
    );
    // The deployment's own outcome was decided when it ended; it stays.
    assert_eq!(v["state"], "failed", "{v}");
    let (_, dev) = h.get("/api/v1/devices/slow", &t).await;
    assert_eq!(dev["reported_generation"], 1, "{dev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_target_overtaken_by_a_newer_deployment_is_superseded() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _d = h
        .ready_device("alice", &t, "away", json!({}), Behavior::Silent)
        .await;
    let body = json!({"targets": {"names": ["away"]}, "strategy": {"timeout_secs": 1}});
    let first = deploy(&h, &t, body.clone()).await;
    let v = h.wait_deployment(&t, &first, 10).await;
    assert_eq!(target(&v, "away")["state"], "timed_out", "{v}");
    let second = deploy(&h, &t, body).await;
    let v = wait_for_deployment(&h, &t, &first, "the target superseded", |v| {
        target(v, "away")["state"] == "superseded"
    })
    .await;
    assert!(
        target(&v, "away")["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("superseded by deployment {second}"))),
        "{v}"
    );
    assert_eq!(v["state"], "failed", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_get_a_new_generation() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let d = h
        .ready_device("alice", &t, "flaky", json!({}), Behavior::FailTimes(1))
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["flaky"]}, "strategy": {"retries": 1}}),
    )
    .await;
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(targets(&v)[0]["attempts"], 2, "{v}");
    let gens: Vec<u64> = d
        .desired
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.generation)
        .collect();
    assert_eq!(gens, vec![1, 2]);
    // The retry is pinned to the commit fetched first.
    assert!(d.last_desired().unwrap().commit.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_a_running_deployment() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _d = h
        .ready_device("alice", &t, "slow", json!({}), Behavior::Silent)
        .await;
    let _e = h
        .ready_device("alice", &t, "next", json!({}), Behavior::Succeed)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["slow", "next"]}, "strategy": {"max_in_flight": 1}}),
    )
    .await;
    // A device in a running deployment cannot join another one.
    let (s, _) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["slow"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = h
        .post(&format!("/api/v1/deployments/{id}/cancel"), &t, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "canceled");
    assert!(v["reason"].as_str().unwrap().contains("alice"));
    for tg in targets(&v) {
        assert_eq!(tg["state"], "skipped", "{v}");
    }
    let (s, _) = h
        .post(&format!("/api/v1/deployments/{id}/cancel"), &t, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The devices are free again.
    deploy(&h, &t, json!({"targets": {"names": ["next"]}})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_restart_in_the_middle_of_a_rollout() {
    let mut h = Harness::start().await;
    let t = h.user("alice").await;
    let first = h
        .ready_device("alice", &t, "first", json!({}), Behavior::Silent)
        .await;
    let _second = h
        .ready_device("alice", &t, "second", json!({}), Behavior::Succeed)
        .await;
    let id = deploy(&h, &t, json!({"targets": {"names": ["first", "second"]}, "strategy": {"max_in_flight": 1, "timeout_secs": 60}})).await;
    let desired = first.wait_desired().await;
    first
        .report(
            first.next_seq(),
            Some(&desired),
            Phase::Fetched,
            Some("abc"),
        )
        .await;
    assert!(first.wait_ack(first.last_seq()).await);

    h.restart().await;

    // The device reconnects on its own; it finishes what it was doing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first
        .report(
            first.next_seq(),
            Some(&desired),
            Phase::Running,
            Some("abc"),
        )
        .await;
    let v = h.wait_deployment(&t, &id, 30).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["commit"], "abc");
    let ts = targets(&v);
    assert_eq!(ts[0]["state"], "succeeded");
    assert_eq!(ts[1]["state"], "succeeded");
    // History survived the restart.
    let (_, hist) = h.get("/api/v1/devices/first/history", &t).await;
    assert!(hist.as_array().unwrap().len() >= 3, "{hist}");
}

/// Status-driven progress is persisted lazily (at most 250 ms late); a target that finished
/// just before a restart is still finished after it, and the rollout goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_just_before_a_restart_survives_it() {
    let mut h = Harness::start().await;
    let t = h.user("alice").await;
    let _fast = h
        .ready_device("alice", &t, "fast", json!({}), Behavior::Succeed)
        .await;
    let slow = h
        .ready_device("alice", &t, "slow", json!({}), Behavior::Silent)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["fast", "slow"]}, "strategy": {"timeout_secs": 60}}),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
        if targets(&v)
            .iter()
            .any(|x| x["device"] == "fast" && x["state"] == "succeeded")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fast never succeeded: {v}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.restart().await;
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["state"], "running", "{v}");
    let fast = targets(&v)
        .into_iter()
        .find(|x| x["device"] == "fast")
        .unwrap();
    assert_eq!(fast["state"], "succeeded", "{v}");

    // `fast` fetched first and pinned its commit: `slow` was republished naming it.
    let desired = slow.wait_desired_commit().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for phase in [Phase::Fetched, Phase::Running] {
        slow.report(
            slow.next_seq(),
            Some(&desired),
            phase,
            desired.commit.as_deref(),
        )
        .await;
    }
    let v = h.wait_deployment(&t, &id, 30).await;
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_is_stored_once_and_acked_contiguously() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bundle = h.provision("alice", "d", json!({})).await;
    let d = common::SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Silent).await;
    d.status(1, Phase::Stopped).await;
    d.status(2, Phase::Restarted).await;
    assert!(d.wait_ack(2).await);
    d.status(1, Phase::Stopped).await; // duplicate
    d.status(4, Phase::Crashed).await; // gap at 3
    tokio::time::sleep(Duration::from_millis(500)).await;
    let top = d.acks.lock().unwrap().iter().map(|a| a.seq).max().unwrap();
    assert_eq!(top, 2, "must not ack past a gap");
    d.status(3, Phase::Restarted).await;
    assert!(d.wait_ack(4).await);
    let (_, hist) = h.get("/api/v1/devices/d/history", &t).await;
    assert_eq!(hist.as_array().unwrap().len(), 4, "{hist}");
    let (_, m) = h.get("/metrics", "").await;
    let m = m.as_str().unwrap().to_owned();
    assert!(m.contains("hammer_status_events_ingested_total 4"), "{m}");
    assert!(m.contains("hammer_status_events_duplicate_total"), "{m}");
    assert!(m.contains("hammer_devices_online 1"), "{m}");
    // A garbage payload is counted, not fatal.
    d.client
        .publish(
            hammer_protocol::topics::topic(&d.id, hammer_protocol::Channel::Status),
            rumqttc::QoS::AtLeastOnce,
            false,
            vec![0xff, 0x00],
        )
        .await
        .unwrap();
    d.status(5, Phase::Running).await;
    assert!(d.wait_ack(5).await);
    let (_, m) = h.get("/metrics", "").await;
    assert!(
        m.as_str().unwrap().contains("hammer_bad_payloads_total 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_stream_shows_only_own_devices() {
    let h = Harness::start().await;
    let ta = h.user("alice").await;
    let tb = h.user("bob").await;
    let a = common::SimDevice::connect(
        h.svc().mqtt_addr,
        &h.provision("alice", "ad", json!({})).await,
        Behavior::Silent,
    )
    .await;
    let b = common::SimDevice::connect(
        h.svc().mqtt_addr,
        &h.provision("bob", "bd", json!({})).await,
        Behavior::Silent,
    )
    .await;
    let mut resp = h
        .http
        .get(format!("{}/api/v1/events", h.base))
        .bearer_auth(&tb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Bob cannot filter on Alice's device.
    let (s, _) = h.get("/api/v1/events?device=ad", &tb).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.status(1, Phase::Crashed).await;
    b.status(1, Phase::Restarted).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains("restarted") {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            _ => break,
        }
    }
    // Give Alice's event time to (not) arrive.
    if let Ok(Ok(Some(c))) = tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(text.contains("\"device\":\"bd\""), "{text}");
    assert!(!text.contains("\"ad\""), "{text}");
    assert!(!text.contains("crashed"), "{text}");
    let _ = ta;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_reporting_another_commit_than_the_user_named_fails_and_is_not_counted() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let _honest = h
        .ready_device("alice", &t, "honest", json!({}), Behavior::Succeed)
        .await;
    let liar = h
        .ready_device("alice", &t, "liar", json!({}), Behavior::Silent)
        .await;
    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["honest", "liar"]}, "git_ref": C1}),
    )
    .await;
    let d = liar.wait_desired().await;
    assert_eq!(d.commit.as_deref(), Some(C1), "the user's commit is named");
    for phase in [Phase::Fetched, Phase::Running] {
        liar.report(liar.next_seq(), Some(&d), phase, Some(C2))
            .await;
    }
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["commit"], C1, "a device never moves the pin: {v}");
    assert!(v["reason"].as_str().unwrap().contains("1 of 2"), "{v}");
    let l = target(&v, "liar");
    assert_eq!(l["state"], "failed", "{v}");
    assert_eq!(
        l["detail"],
        format!("device fetched commit {C2}, the deployment is pinned to {C1}"),
        "{v}"
    );
    let honest = target(&v, "honest");
    assert_eq!(honest["state"], "succeeded", "{v}");
    assert_eq!(honest["commit"], C1, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_launched_before_the_pin_that_ran_another_commit_is_relaunched_once_then_failed() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let early = h
        .ready_device("alice", &t, "early", json!({}), Behavior::Silent)
        .await;
    let pinner = h
        .ready_device("alice", &t, "pinner", json!({}), Behavior::Silent)
        .await;
    let id = deploy(&h, &t, json!({"targets": {"names": ["early", "pinner"]}})).await;
    let de = early.wait_desired().await;
    let dp = pinner.wait_desired().await;
    assert_eq!((de.commit.clone(), dp.commit.clone()), (None, None));

    // `early` fetched without naming a commit, before anything was pinned.
    early
        .report(early.next_seq(), Some(&de), Phase::Fetched, None)
        .await;
    wait_for_deployment(&h, &t, &id, "early fetched", |v| {
        target(v, "early")["last_phase"] == "fetched"
    })
    .await;
    pinner
        .report(pinner.next_seq(), Some(&dp), Phase::Fetched, Some(C1))
        .await;
    wait_for_deployment(&h, &t, &id, "the pin", |v| v["commit"] == C1).await;

    // `early` then runs another commit: not a success, relaunched with the pin.
    early
        .report(early.next_seq(), Some(&de), Phase::Running, Some(C2))
        .await;
    let again = early.wait_desired_commit().await;
    assert_eq!(again.commit.as_deref(), Some(C1));
    assert!(again.generation > de.generation);
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    let e = target(&v, "early");
    assert_eq!(e["state"], "in_flight", "{v}");
    assert!(e["detail"].as_str().unwrap().contains("relaunched"), "{v}");

    // Told the pin, it runs another commit again: the target fails, once and for all.
    early
        .report(early.next_seq(), Some(&again), Phase::Running, Some(C2))
        .await;
    pinner
        .report(pinner.next_seq(), Some(&dp), Phase::Running, Some(C1))
        .await;
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "failed", "{v}");
    let e = target(&v, "early");
    assert_eq!(e["state"], "failed", "{v}");
    assert_eq!(
        e["detail"],
        format!("device ran commit {C2}, the deployment is pinned to {C1}"),
        "{v}"
    );
    assert_eq!(
        e["attempts"], 1,
        "a relaunch for the pin is not a retry: {v}"
    );
    assert_eq!(target(&v, "pinner")["state"], "succeeded", "{v}");
    assert_eq!(
        early.desired.lock().unwrap().len(),
        2,
        "relaunched exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_at_once_without_a_commit_names_the_first_fetched_commit_to_every_other_target() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let first = h
        .ready_device("alice", &t, "first", json!({}), Behavior::Silent)
        .await;
    let second = h
        .ready_device("alice", &t, "second", json!({}), Behavior::Silent)
        .await;
    // `late` is offline for the deployment's start.
    let bundle = h.provision("alice", "late", json!({})).await;
    let late = common::SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Succeed).await;
    h.setup_device(&t, "late", "https://example.com/app.git")
        .await;
    drop(late);
    h.wait_device(&t, "late", |d| d["online"] == false).await;

    let id = deploy(
        &h,
        &t,
        json!({"targets": {"names": ["first", "second", "late"]}}),
    )
    .await;
    let d1 = first.wait_desired().await;
    let d2 = second.wait_desired().await;
    assert_eq!((d1.commit.clone(), d2.commit.clone()), (None, None));
    first
        .report(first.next_seq(), Some(&d1), Phase::Fetched, Some(C1))
        .await;

    // Every other target is republished at once, naming the commit.
    let again = second.wait_desired_commit().await;
    assert_eq!(again.commit.as_deref(), Some(C1));
    assert!(again.generation > d2.generation);
    // The device that connects later finds the commit in its retained desired state: it
    // never resolves the ref itself (its own head would be 1111…).
    let late = common::SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Succeed).await;
    let dl = late.wait_desired().await;
    assert_eq!(dl.commit.as_deref(), Some(C1));
    assert_eq!(
        late.desired.lock().unwrap()[0].commit.as_deref(),
        Some(C1),
        "the first desired state it saw (the retained one) names the commit"
    );

    first
        .report(first.next_seq(), Some(&d1), Phase::Running, Some(C1))
        .await;
    for phase in [Phase::Fetched, Phase::Running] {
        second
            .report(second.next_seq(), Some(&again), phase, Some(C1))
            .await;
    }
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["commit"], C1);
    for tg in targets(&v) {
        assert_eq!(tg["commit"], C1, "one deployment, one commit: {v}");
    }
}
