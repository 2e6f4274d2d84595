//! The audit log (`GET /api/v1/audit`): the state-changing requests a user made (failed ones
//! too, with their status), their devices' rollbacks and the removal of a device are in that
//! user's log, with actor, action, target, source address and result; another user sees none
//! of them. (Retention is in the store contract suite.)

use crate::common::{Behavior, Harness};
use hammer_client::Page;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn find<'a>(log: &'a Value, action: &str, target: &str) -> &'a Value {
    log.as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == action && e["target"] == target)
        .unwrap_or_else(|| panic!("no {action} of {target} in {log:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_changes_and_their_devices_rollbacks_are_in_their_audit_log_only() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bob = h.user("bob").await;
    let (s, v) = h
        .post("/api/v1/devices", &t, json!({"name": "spare"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let _d = h
        .ready_device("alice", &t, "d", json!({}), Behavior::Fail)
        .await;
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["d"]}, "commit": A, "strategy": {"timeout_secs": 60}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let v = h.wait_deployment(&t, &id, 10).await;
    assert_eq!(v["state"], "failed", "{v}");
    let (s, v) = h
        .post(&format!("/api/v1/commits/{B}/bad"), &t, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (failed, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["ghost"]}, "commit": A}),
        )
        .await;
    assert!(failed.is_client_error(), "{failed} {v}");
    let (s, v) = h
        .call(Method::DELETE, "/api/v1/devices/spare", &t, None)
        .await;
    assert!(s.is_success(), "{s} {v}");

    // The rollback is recorded as the device's events are ingested.
    let mut log = Value::Null;
    for _ in 0..100 {
        let (s, v) = h.get("/api/v1/audit", &t).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        log = v;
        if log
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "device_rolled_back")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_alice = |action: &str, target: &str, result: &str| {
        let e = find(&log, action, target);
        assert_eq!(e["actor"], "alice", "{e}");
        assert_eq!(e["peer"], "127.0.0.1", "{e}");
        assert_eq!(e["result"], result, "{e}");
        e.clone()
    };
    by_alice("device_added", "spare", "201");
    by_alice("setup_changed", "d", "200");
    by_alice("deployment_created", &id, "201");
    by_alice("commit_marked_bad", B, "200");
    by_alice("device_removed", "spare", "204");
    let refused = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "deployment_created" && e["result"] == failed.as_str())
        .unwrap_or_else(|| panic!("the refused deployment is missing: {log:#}"));
    assert_eq!(refused["actor"], "alice");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("ghost"),
        "{refused}"
    );
    let rb = find(&log, "device_rolled_back", "d");
    assert_eq!(rb["actor"], "device d", "{rb}");
    assert_eq!(rb["result"], "ok", "{rb}");
    assert_eq!(
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "device_rolled_back")
            .count(),
        1,
        "one record per event: {log:#}"
    );
    // Newest first: the removal came after the creation.
    let times: Vec<u64> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "alice")
        .map(|e| e["time"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // Pages: the cursor leads to the older records.
    let client = h.client(&t);
    let first = client.audit(Page::first(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(first.more);
    let all = client.audit(Page::all(Some(2))).await.unwrap();
    assert_eq!(all.raw, log, "two at a time, the pages make the whole log");

    // The admin's own requests are in the admin's log; bob sees nothing of alice's.
    let (_, admin_log) = h.get("/api/v1/audit", &h.admin).await;
    find(&admin_log, "user_created", "alice");
    find(&admin_log, "device_provisioned", "d (of alice)");
    let (s, v) = h.get("/api/v1/audit", &bob).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!([]), "bob sees none of alice's records");
    // Without a token nothing is recorded, and nothing is answered.
    let (s, _) = h.get("/api/v1/audit", "nope").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dashboard_sign_in_is_in_the_users_audit_log_with_where_it_came_from() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bob = h.user("bob").await;
    // The JSON sign-in and the form sign-in.
    let r = h
        .http
        .post(format!("{}/api/v1/session", h.base))
        .json(&json!({ "token": t }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = h
        .http
        .post(format!("{}/login", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={t}"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status().is_redirection(),
        "{}",
        r.status()
    );
    // A refused sign-in belongs to nobody's log.
    let r = h
        .http
        .post(format!("{}/api/v1/session", h.base))
        .json(&json!({ "token": "hmr_not_a_token" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, log) = h.get("/api/v1/audit", &t).await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let signed: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "signed_in")
        .collect();
    assert_eq!(signed.len(), 2, "{log:#}");
    for e in signed {
        assert_eq!(e["actor"], "alice", "{e}");
        assert_eq!(e["peer"], "127.0.0.1", "{e}");
        assert_eq!(e["result"], "ok", "{e}");
    }
    let (_, other) = h.get("/api/v1/audit", &bob).await;
    assert!(
        !other
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "signed_in"),
        "{other:#}"
    );
}
