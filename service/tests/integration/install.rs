//! The install step through the API: `PUT /devices/{name}/setup` accepts an `install` object
//! checked by the protocol's rule (400 naming what is allowed otherwise), shows it in the
//! device's setup, and names it in the signed desired state a deployment sends the device.

use crate::common::{Behavior, Harness};
use hammer_protocol::install::{DEFAULT_INSTALL_TIMEOUT_SECS, MAX_REUSE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn put_setup(h: &Harness, token: &str, body: &Value) -> (StatusCode, Value) {
    h.call(
        Method::PUT,
        "/api/v1/devices/pi/setup",
        token,
        Some(body.clone()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setup_accepts_a_valid_install_step_and_the_device_gets_it_signed() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let dev = h
        .ready_device("alice", &t, "pi", json!({}), Behavior::Succeed)
        .await;
    let base = json!({"repo_url": "https://example.com/app.git", "start": "node server.js"});

    let many: Vec<Value> = (0..=MAX_REUSE)
        .map(|i| json!({"dir": format!("d{i}"), "key": format!("k{i}")}))
        .collect();
    for (install, says) in [
        (json!({"command": ""}), "non-empty shell command"),
        (json!({"command": "x".repeat(4097)}), "at most 4096 bytes"),
        (
            json!({"command": "npm ci", "timeout_secs": 0}),
            "1 to 3600 seconds",
        ),
        (
            json!({"command": "npm ci", "timeout_secs": 3601}),
            "1 to 3600 seconds",
        ),
        (
            json!({"command": "npm ci", "reuse": [{"dir": "../up", "key": "k"}]}),
            "relative path inside the release",
        ),
        (
            json!({"command": "npm ci", "reuse": [{"dir": "/abs", "key": "k"}]}),
            "relative path inside the release",
        ),
        (
            json!({"command": "npm ci", "reuse": [{"dir": "d", "key": "d/lock"}]}),
            "outside the folder",
        ),
        (
            json!({"command": "npm ci", "reuse": many}),
            "at most 8 reused folders",
        ),
    ] {
        let mut body = base.clone();
        body["install"] = install.clone();
        let (s, v) = put_setup(&h, &t, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{install} → {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("install: "), "{error}");
        assert!(error.contains(says), "{install}: {error}");
    }
    // A field the request does not know is refused too (requests deny unknown fields).
    let mut body = base.clone();
    body["install_cmd"] = json!("npm ci");
    assert_eq!(put_setup(&h, &t, &body).await.0, StatusCode::BAD_REQUEST);

    let mut body = base.clone();
    body["install"] = json!({
        "command": "npm ci --omit=dev",
        "reuse": [{"dir": "node_modules", "key": "package-lock.json"}],
    });
    let (s, v) = put_setup(&h, &t, &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let install = &v["setup"]["install"];
    assert_eq!(install["command"], "npm ci --omit=dev");
    assert_eq!(install["timeout_secs"], DEFAULT_INSTALL_TIMEOUT_SECS);
    assert_eq!(install["reuse"][0]["dir"], "node_modules");
    assert_eq!(install["reuse"][0]["key"], "package-lock.json");
    h.wait_device(&t, "pi", |d| d["state"] == "ready").await;

    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["pi"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let desired = dev.wait_desired().await;
    let step = desired
        .install
        .expect("the desired state names the install step");
    assert_eq!(step.command, "npm ci --omit=dev");
    assert_eq!(step.timeout_secs, DEFAULT_INSTALL_TIMEOUT_SECS);
    assert_eq!(step.reuse[0].spec(), "node_modules:package-lock.json");

    // A setup without install clears it.
    let (s, v) = put_setup(&h, &t, &base).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["setup"].get("install").is_none(), "{v}");
}
