//! HTTP API tests: every endpoint, its 400s and 404s, and the cross-user ownership walk.

use crate::common::{Behavior, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn err(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error body: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_and_tokens() {
    let h = Harness::start().await;
    let (s, v) = h.get("/api/v1/me", &h.admin).await;
    assert_eq!((s, v["admin"].as_bool()), (StatusCode::OK, Some(true)));
    let t = h.user("alice").await;
    let (s, v) = h
        .post("/api/v1/users", &h.admin, json!({"name": "alice"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = h
        .post("/api/v1/users", &h.admin, json!({"name": "bad name"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("invalid"));
    let (s, _) = h
        .post(
            "/api/v1/users",
            &h.admin,
            json!({"name": "x", "admin": true}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown fields are refused");
    let (s, _) = h.post("/api/v1/users", &t, json!({"name": "eve"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.get("/api/v1/users", &t).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = h.get("/api/v1/users", &h.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (s, v) = h.get("/api/v1/me", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(err(&v).contains("Bearer"));
    let (s, _) = h.get("/api/v1/me", "hmr_nope").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let (s, v) = h.post("/api/v1/tokens", &t, json!(null)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (t2, t2_id) = (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(v["user"]["name"], "alice");
    let (_, v) = h.get("/api/v1/tokens", &t).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(
        !v.to_string().contains(&t2),
        "token secrets are never listed"
    );
    let (s, _) = h
        .call(Method::DELETE, &format!("/api/v1/tokens/{t2_id}"), &t, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h.get("/api/v1/me", &t2).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .call(Method::DELETE, &format!("/api/v1/tokens/{t2_id}"), &t, None)
        .await;
    assert_eq!(
        s,
        StatusCode::NO_CONTENT,
        "the same revocation sent again (a retry) is answered as done"
    );
    let (s, _) = h.get("/api/v1/me", &t2).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "and the token stays revoked");
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/tokens/nosuchtoken", &t, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A user holds at most MAX_TOKENS_PER_USER valid tokens; revoking one makes room.
    let mut last = String::new();
    for _ in 1..hammer_service::api::users::MAX_TOKENS_PER_USER {
        let (s, v) = h.call(Method::POST, "/api/v1/tokens", &t, None).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        last = v["id"].as_str().unwrap().to_owned();
    }
    let (s, v) = h.call(Method::POST, "/api/v1/tokens", &t, None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(err(&v).contains("DELETE /api/v1/tokens/ID"), "{v}");
    let (s, _) = h
        .call(Method::DELETE, &format!("/api/v1/tokens/{last}"), &t, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.call(Method::POST, "/api/v1/tokens", &t, None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Another user's token id cannot be revoked.
    let tb = h.user("bob").await;
    let (_, v) = h.get("/api/v1/tokens", &tb).await;
    let bob_tok = v[0]["id"].as_str().unwrap().to_owned();
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{bob_tok}"),
            &t,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.get("/api/v1/me", &tb).await;
    assert_eq!(s, StatusCode::OK);
    // A raw API token is never a session cookie.
    let r = h
        .http
        .get(format!("{}/api/v1/me", h.base))
        .header("cookie", format!("hammer_session={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Cookie sessions (from signing in): fine for GET, need a matching Origin to change state.
    let r = h
        .http
        .post(format!("{}/api/v1/session", h.base))
        .json(&serde_json::json!({ "token": t }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    assert!(!cookie.contains(&t), "the cookie holds no token");
    let r = h
        .http
        .get(format!("{}/api/v1/me", h.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = h
        .http
        .post(format!("{}/api/v1/tokens", h.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_crud_and_validation() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let (s, v) = h
        .post(
            "/api/v1/devices",
            &t,
            json!({"name": "pi1", "tags": {"site": "lab"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["device"]["state"], "registered");
    assert_eq!(v["ca_sha256"].as_str().unwrap().len(), 64);
    assert!(v["enrollment_token"].as_str().unwrap().len() >= 30);
    let (s, _) = h.post("/api/v1/devices", &t, json!({"name": "pi1"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    h.post(
        "/api/v1/devices",
        &t,
        json!({"name": "pi2", "tags": {"site": "home"}}),
    )
    .await;
    for bad in [
        json!({"name": "no/slash"}),
        json!({"name": ""}),
        json!({"name": "x", "tagz": {}}),
        json!({"name": "x", "tags": {"k": "a=b"}}),
        json!({"nam": "x"}),
    ] {
        let (s, v) = h.post("/api/v1/devices", &t, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} → {v}");
        assert!(!err(&v).is_empty());
    }
    let r = h
        .http
        .post(format!("{}/api/v1/devices", h.base))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let big = "x".repeat(2 * 1024 * 1024);
    let r = h
        .http
        .post(format!("{}/api/v1/devices", h.base))
        .bearer_auth(&t)
        .json(&json!({"name": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (_, v) = h.get("/api/v1/devices", &t).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (_, v) = h.get("/api/v1/devices?tag=site=lab", &t).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "pi1");
    let (s, _) = h.get("/api/v1/devices?tag=nonsense", &t).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = h.get("/api/v1/devices/pi1", &t).await;
    assert_eq!((s, v["online"].as_bool()), (StatusCode::OK, Some(false)));
    let (s, v) = h.get("/api/v1/devices/nope", &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(err(&v).contains("nope"));
    // Admins own no devices.
    let (s, _) = h
        .post("/api/v1/devices", &h.admin, json!({"name": "adm"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, v) = h.get("/api/v1/devices", &h.admin).await;
    assert_eq!(v, json!([]));
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/devices/pi2", &t, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h.get("/api/v1/devices/pi2", &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/devices/pi2", &t, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.get("/api/v1/nothing-here", &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollment_once_then_setup_and_rate_limit() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let (_, v) = h.post("/api/v1/devices", &t, json!({"name": "pi"})).await;
    let token = v["enrollment_token"].as_str().unwrap().to_owned();
    // Setup before enrollment: 409 with what to do.
    let setup = json!({"repo_url": "https://example.com/r.git", "start": "./go"});
    let (s, v) = h
        .call(
            Method::PUT,
            "/api/v1/devices/pi/setup",
            &t,
            Some(setup.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(err(&v).contains("enroll"));
    let (_key, csr) = hammer_certs::new_device_key_and_csr().unwrap();
    let sealing = hammer_protocol::sealing::SealingKeyPair::generate().unwrap();
    let body = json!({"token": token, "csr_pem": csr, "sealing_public_key": hex::encode(sealing.public_bytes())});
    // Enrollment is not served on the API port (plain http here): only on the HTTPS
    // enrollment listener, so the token never crosses the network in clear.
    let (s, _) = h.post("/api/v1/enroll", "", body.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = enroll_post(
        &h,
        json!({"token": token, "csr_pem": csr, "sealing_public_key": "abcd"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = enroll_post(&h, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let dev_id = v["device_id"].as_str().unwrap().to_owned();
    let id = hammer_certs::CaCert::from_pem(v["ca_pem"].as_str().unwrap())
        .unwrap()
        .identity_pem(
            v["cert_pem"].as_str().unwrap(),
            std::time::SystemTime::now(),
        )
        .unwrap();
    assert_eq!(id.id, dev_id);
    assert_eq!(id.owner.as_deref(), Some(v["owner"].as_str().unwrap()));
    assert_eq!(
        v["broker_url"],
        format!("mqtts://127.0.0.1:{}", h.svc().mqtt_addr.port())
    );
    let (s, _) = enroll_post(&h, body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a token works once");
    let (_, v) = h.get("/api/v1/devices/pi", &t).await;
    assert_eq!(v["state"], "enrolled");

    for bad in [
        json!({"repo_url": "ftp://x", "start": "a"}),
        json!({"repo_url": "https://tok3n@git.example/r.git", "start": "a"}),
        json!({"repo_url": "https://u:pw@git.example/r.git", "start": "a"}),
        json!({"repo_url": "ssh://git:pw@git.example/r.git", "start": "a"}),
        json!({"repo_url": "https://x", "start": ""}),
        json!({"repo_url": "https://x", "start": "a", "env": {"1x": "y"}}),
        json!({"repo_url": "https://x", "start": "a", "health_window_secs": 99999}),
    ] {
        let (s, v) = h
            .call(
                Method::PUT,
                "/api/v1/devices/pi/setup",
                &t,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} → {v}");
    }
    let mut with_creds = setup.clone();
    with_creds["credentials"] = json!({"type": "https", "username": "git", "token": "sup3rsecret"});
    let (s, v) = h
        .call(
            Method::PUT,
            "/api/v1/devices/pi/setup",
            &t,
            Some(with_creds),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "setup_pending");
    assert_eq!(v["setup"]["credentials"], "https");
    assert!(!v.to_string().contains("sup3rsecret"));
    // Nothing in the data dir holds the credentials.
    let found = walk_contains(h.dir.path(), b"sup3rsecret");
    assert!(!found, "credentials were persisted");

    // Rate limit of failed enrollments.
    let mut last = StatusCode::OK;
    for _ in 0..12 {
        last = enroll_post(&h, body.clone()).await.0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

/// `POST /api/v1/enroll` on the enrollment listener, trusting only the fleet CA's pin.
async fn enroll_post(h: &Harness, body: Value) -> (StatusCode, Value) {
    let ca_pem = std::fs::read_to_string(h.dir.path().join("ca").join("ca.pem")).unwrap();
    let pin = hammer_certs::CaCert::from_pem(&ca_pem)
        .unwrap()
        .fingerprint_sha256();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(hammer_certs::tls::client_config_pinned_ca(&pin).unwrap())
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/api/v1/enroll", h.svc().enroll_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn walk_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if walk_contains(&p, needle) {
                return true;
            }
        } else if let Ok(b) = std::fs::read(&p) {
            if b.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provision_actions_deployments_meta() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let (s, _) = h
        .post(
            "/api/v1/provision",
            &t,
            json!({"owner": "alice", "name": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .post(
            "/api/v1/provision",
            &h.admin,
            json!({"owner": "ghost", "name": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let bundle = h.provision("alice", "p1", json!({})).await;
    assert!(bundle.key_pem.contains("PRIVATE KEY"));
    assert_eq!(bundle.sealing_private_key.len(), 64);
    // Deploying a device without setup: 409; unknown device: 404; bad strategy: 400.
    let (s, _) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["p1"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["zzz"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .post("/api/v1/deployments", &t, json!({"targets": {"names": []}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"tag": "a=b"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["p1"]}, "strategy": {"max_in_flight": 0}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["p1"]}, "strategy": {"bogus": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .get("/api/v1/deployments/0000000000000000000000000a", &t)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .post("/api/v1/deployments/nope/cancel", &t, json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let dev = h
        .ready_device("alice", &t, "r1", json!({}), Behavior::Succeed)
        .await;
    for action in ["stop", "start", "rollback"] {
        let (s, v) = h
            .post(&format!("/api/v1/devices/r1/{action}"), &t, json!({}))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{action}: {v}");
    }
    let (s, v) = h.post("/api/v1/devices/r1/restart", &t, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // Two successful releases, then stop / start / rollback.
    for commit in ["aaaa", "bbbb"] {
        *dev.head.lock().unwrap() = commit.into();
        let (_, v) = h
            .post(
                "/api/v1/deployments",
                &t,
                json!({"targets": {"names": ["r1"]}, "git_ref": "main"}),
            )
            .await;
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(h.wait_deployment(&t, &id, 10).await["state"], "succeeded");
    }
    let (s, v) = h.post("/api/v1/devices/r1/stop", &t, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // The stop reaches the device as a new desired state with run_state stopped.
    let mut stopped = false;
    for _ in 0..200 {
        if dev.wait_desired().await.run_state == hammer_protocol::RunState::Stopped {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(stopped, "no stopped desired state reached the device");
    h.wait_device(&t, "r1", |d| d["run_state"] == "stopped")
        .await;
    let (s, _) = h.post("/api/v1/devices/r1/start", &t, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, v) = h.post("/api/v1/devices/r1/rollback", &t, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let last = dev.last_desired().unwrap();
    assert_eq!(last.commit.as_deref(), Some("aaaa"));
    assert_eq!(last.generation, v["generation"].as_u64().unwrap());
    let restarts = dev
        .cmds
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.kind == hammer_protocol::CommandKind::Restart)
        .count();
    assert_eq!(restarts, 1);
    let (s, v) = h.get("/api/v1/devices/r1/logs", &t).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(dev
        .cmds
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.kind == hammer_protocol::CommandKind::Logs { on: true }));
    let (s, v) = h.get("/api/v1/devices/r1/history", &t).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_array().unwrap().len() >= 8, "{v}");

    let (s, v) = h.get("/healthz", "").await;
    assert_eq!((s, v.as_str()), (StatusCode::OK, Some("ok\n")));
    let (s, v) = h.get("/metrics", "").await;
    assert_eq!(s, StatusCode::OK);
    let m = v.as_str().unwrap();
    assert!(
        m.contains("hammer_deployments{state=\"succeeded\"} 2"),
        "{m}"
    );
    assert!(m.contains("hammer_broker_"), "{m}");
    let (s, v) = h.get("/api/v1/openapi.json", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["openapi"], "3.0.3");
}

/// User B walks every device endpoint against user A's device: all 404, nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_user_walk_finds_nothing() {
    let h = Harness::start().await;
    let ta = h.user("alice").await;
    let tb = h.user("bob").await;
    let _dev = h
        .ready_device(
            "alice",
            &ta,
            "secret-pi",
            json!({"site": "a"}),
            Behavior::Succeed,
        )
        .await;
    let (_, v) = h
        .post(
            "/api/v1/deployments",
            &ta,
            json!({"targets": {"names": ["secret-pi"]}}),
        )
        .await;
    let dep = v["id"].as_str().unwrap().to_owned();
    h.wait_deployment(&ta, &dep, 10).await;
    let (_, before) = h.get("/api/v1/devices/secret-pi", &ta).await;
    let (_, hist_before) = h.get("/api/v1/devices/secret-pi/history", &ta).await;

    let n = "secret-pi";
    let walk: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/devices/{n}"), None),
        (
            Method::PUT,
            format!("/api/v1/devices/{n}/setup"),
            Some(json!({"repo_url": "https://evil/x.git", "start": "x"})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{n}/restart"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{n}/stop"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{n}/start"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{n}/rollback"),
            Some(json!({})),
        ),
        (Method::GET, format!("/api/v1/devices/{n}/logs"), None),
        (Method::GET, format!("/api/v1/devices/{n}/history"), None),
        (Method::GET, format!("/api/v1/events?device={n}"), None),
        (
            Method::GET,
            format!("/api/v1/events?deployment={dep}"),
            None,
        ),
        (
            Method::POST,
            "/api/v1/deployments".into(),
            Some(json!({"targets": {"names": [n]}})),
        ),
        (Method::GET, format!("/api/v1/deployments/{dep}"), None),
        (
            Method::POST,
            format!("/api/v1/deployments/{dep}/cancel"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/api/v1/devices/{n}"), None),
    ];
    for token in [&tb, &h.admin] {
        for (m, path, body) in &walk {
            let (s, v) = h.call(m.clone(), path, token, body.clone()).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path} → {v}");
            // Same answer as for a device that does not exist.
            let missing = path.replace(n, "no-such-pi");
            if missing != *path {
                let (s2, v2) = h.call(m.clone(), &missing, token, body.clone()).await;
                assert_eq!(s2, StatusCode::NOT_FOUND);
                assert_eq!(err(&v).replace(n, "X"), err(&v2).replace("no-such-pi", "X"));
            }
        }
        let (_, v) = h.get("/api/v1/devices", token).await;
        assert_eq!(v, json!([]));
        let (_, v) = h.get("/api/v1/devices?tag=site=a", token).await;
        assert_eq!(v, json!([]));
        let (_, v) = h.get("/api/v1/deployments", token).await;
        assert_eq!(v, json!([]));
        let (s, _) = h
            .post(
                "/api/v1/deployments",
                token,
                json!({"targets": {"tag": "site=a"}}),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "a tag selector matches only your own devices"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, after) = h.get("/api/v1/devices/secret-pi", &ta).await;
    let (_, hist_after) = h.get("/api/v1/devices/secret-pi/history", &ta).await;
    for k in [
        "state",
        "generation",
        "setup",
        "run_state",
        "current_commit",
        "current_deployment",
    ] {
        assert_eq!(before[k], after[k], "{k} changed");
    }
    assert_eq!(hist_before, hist_after);
    assert_eq!(
        h.get(&format!("/api/v1/deployments/{dep}"), &ta).await.1["state"],
        "succeeded"
    );
}
