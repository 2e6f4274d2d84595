//! `hammer deployment pause|resume|retry ID` through the real binary: the human line, the
//! `--json` body, and refusals (another user's deployment is not found; a running one has
//! nothing to retry).

use crate::common::{Behavior, Harness};
use crate::hammer;
use serde_json::{json, Value};
use std::process::Output;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammer_deployment_pause_resume_and_retry() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bob = h.user("bob").await;
    let home = tempfile::tempdir().unwrap();
    let first = h
        .ready_device("alice", &t, "first", json!({}), Behavior::Silent)
        .await;
    let _second = h
        .ready_device("alice", &t, "second", json!({}), Behavior::Succeed)
        .await;
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["first", "second"]}, "strategy": {"max_in_flight": 1}}),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    first.wait_desired().await;

    let out = hammer(&h, &bob, home.path(), &["deployment", "pause", &id]).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );

    let out = hammer(&h, &t, home.path(), &["deployment", "pause", &id, "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["state"].clone(), v["paused"].clone()),
        (json!("running"), json!(true))
    );

    let out = hammer(&h, &t, home.path(), &["deployment", "show", &id]).await;
    assert!(stdout(&out).contains("running (paused)"), "{out:?}");
    let out = hammer(&h, &t, home.path(), &["deployment", "pause", &id]).await;
    assert!(!out.status.success(), "pausing twice: {out:?}");
    let out = hammer(&h, &t, home.path(), &["deployment", "retry", &id]).await;
    assert!(
        !out.status.success(),
        "retrying a running deployment: {out:?}"
    );

    let out = hammer(&h, &t, home.path(), &["deployment", "resume", &id]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), format!("deployment {id}: running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammer_deployment_retry_starts_a_deployment_of_the_failed_devices() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let home = tempfile::tempdir().unwrap();
    let _ok = h
        .ready_device("alice", &t, "ok", json!({}), Behavior::Succeed)
        .await;
    let _bad = h
        .ready_device("alice", &t, "bad", json!({}), Behavior::Fail)
        .await;
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["ok", "bad"]}}),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "failed", "{v}");

    let out = hammer(&h, &t, home.path(), &["deployment", "retry", &id]).await;
    assert!(out.status.success(), "{out:?}");
    let line = stdout(&out);
    assert!(line.contains("retries 1 device(s) of"), "{line}");
    let new_id = line.split_whitespace().nth(1).unwrap().to_owned();
    let v = h.wait_deployment(&t, &new_id, 20).await;
    let names: Vec<&str> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bad"], "{v}");
}
