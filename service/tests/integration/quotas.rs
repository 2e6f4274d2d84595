//! Per-user quotas: devices (`--max-devices-per-user`) and live event streams
//! (`--max-streams-per-user`) answer a clear 429 at the limit, naming the limit and the
//! flag, are counted in `/metrics`, and work again below the limit.

use crate::common;

use crate::common::Harness;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

async fn start(tweak: impl FnOnce(&mut hammer_service::ServeConfig)) -> Harness {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    tweak(&mut cfg);
    let svc = hammer_service::start(cfg).await.unwrap();
    Harness {
        base: svc.http_url(),
        admin: svc.admin_token.clone(),
        svc: Some(svc),
        dir,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_device_quota_answers_429_naming_the_flag_and_frees_a_place_on_remove() {
    let h = start(|c| c.quotas.max_devices_per_user = 2).await;
    let ta = h.user("alice").await;
    let tb = h.user("bob").await;
    for n in ["d1", "d2"] {
        let (s, v) = h.post("/api/v1/devices", &ta, json!({"name": n})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = h.post("/api/v1/devices", &ta, json!({"name": "d3"})).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("--max-devices-per-user"), "{msg}");
    assert!(msg.contains("(2)"), "{msg}");
    // Another user has their own quota.
    let (s, v) = h.post("/api/v1/devices", &tb, json!({"name": "d3"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Below the limit again, it works.
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/devices/d1", &ta, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.post("/api/v1/devices", &ta, json!({"name": "d3"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, m) = h.get("/metrics", "").await;
    let m = m.as_str().unwrap();
    assert!(
        m.contains("hammer_quota_refusals_total{quota=\"devices_per_user\"} 1\n"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_quota_answers_429_at_the_limit_and_a_closed_stream_frees_its_place() {
    let h = start(|c| {
        c.quotas.max_streams_per_user = 2;
        // Keep-alives every 250 ms: a closed stream is noticed at the next write.
        c.http_limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let ta = h.user("alice").await;
    let tb = h.user("bob").await;
    let open = |t: String| {
        let (http, url) = (h.http.clone(), format!("{}/api/v1/events", h.base));
        async move { http.get(url).bearer_auth(t).send().await.unwrap() }
    };
    let first = open(ta.clone()).await;
    let second = open(ta.clone()).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = open(ta.clone()).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = third.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("--max-streams-per-user"), "{msg}");
    assert!(msg.contains("2 event streams"), "{msg}");
    // Bob is not affected by Alice's streams.
    assert_eq!(open(tb.clone()).await.status(), StatusCode::OK);

    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let r = open(ta.clone()).await;
        if r.status() == StatusCode::OK {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the closed stream's place never came back");
    let (_, m) = h.get("/metrics", "").await;
    let m = m.as_str().unwrap();
    assert!(
        m.contains("hammer_quota_refusals_total{quota=\"streams_per_user\"}"),
        "{m}"
    );
    assert!(
        !m.contains("hammer_quota_refusals_total{quota=\"streams_per_user\"} 0\n"),
        "{m}"
    );
    drop(second);
}
