//! `/metrics` follows the store through counters (devices by state as they are added,
//! enrolled and removed; counted again from the store on restart), and can require a bearer
//! token (`--metrics-token-file`) or move to its own address (`--metrics-listen`).

use crate::common;

use crate::common::Harness;
use reqwest::{Method, StatusCode};
use serde_json::json;

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

fn value(m: &str, line_start: &str) -> u64 {
    m.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} missing from {m}"))
}

async fn metrics(h: &Harness) -> String {
    let (s, v) = h.get("/metrics", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_counts_follow_creation_enrollment_and_removal_and_survive_a_restart() {
    let mut h = start(|_| {}).await;
    let t = h.user("alice").await;
    let m = metrics(&h).await;
    assert_eq!(value(&m, "hammer_devices "), 0);

    let (s, v) = h.post("/api/v1/devices", &t, json!({"name": "r1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let m = metrics(&h).await;
    assert_eq!(value(&m, "hammer_devices "), 1);
    assert_eq!(
        value(&m, "hammer_devices_by_state{state=\"registered\"} "),
        1
    );

    // Provisioned devices come enrolled; a connected one is online.
    let bundle = h.provision("alice", "p1", json!({})).await;
    let dev =
        common::SimDevice::connect(h.svc().mqtt_addr, &bundle, common::Behavior::Silent).await;
    let mut m = metrics(&h).await;
    for _ in 0..100 {
        if value(&m, "hammer_devices_online ") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        m = metrics(&h).await;
    }
    assert_eq!(value(&m, "hammer_devices "), 2);
    assert_eq!(value(&m, "hammer_devices_by_state{state=\"enrolled\"} "), 1);
    assert_eq!(value(&m, "hammer_devices_online "), 1);

    let (s, _) = h.call(Method::DELETE, "/api/v1/devices/r1", &t, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let m = metrics(&h).await;
    assert_eq!(value(&m, "hammer_devices "), 1);
    assert_eq!(
        value(&m, "hammer_devices_by_state{state=\"registered\"} "),
        0
    );
    drop(dev);

    // Counted again from the store on start: the same numbers.
    h.restart().await;
    let m = metrics(&h).await;
    assert_eq!(value(&m, "hammer_devices "), 1);
    assert_eq!(value(&m, "hammer_devices_by_state{state=\"enrolled\"} "), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_metrics_token_file_an_anonymous_or_wrong_bearer_gets_401() {
    let tokdir = tempfile::tempdir().unwrap();
    let file = tokdir.path().join("metrics.token");
    std::fs::write(&file, "s3cret-metrics\n").unwrap();
    let h = start(|c| c.metrics_token_file = Some(file.clone())).await;
    let (s, v) = h.get("/metrics", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("--metrics-token-file"));
    let (s, _) = h.get("/metrics", "wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // An API token is not the metrics token either.
    let (s, _) = h.get("/metrics", &h.admin).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = h.get("/metrics", "s3cret-metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_str().unwrap().contains("hammer_devices "), "{v}");
    // /healthz stays open.
    let (s, _) = h.get("/healthz", "").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_metrics_listen_metrics_move_to_their_own_address() {
    let h = start(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let (s, v) = h.get("/metrics", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--metrics-listen"));
    let addr = h.svc().metrics_addr.expect("metrics address");
    let r = h
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("hammer_devices "), "{text}");
    assert!(
        text.contains("hammer_http_connections_open{listener=\"metrics\"}"),
        "{text}"
    );
    // Only metrics and health there: the API is not.
    let r = h
        .http
        .get(format!("http://{addr}/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
