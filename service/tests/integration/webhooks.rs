//! Webhooks against a real HTTP receiver on 127.0.0.1 (a small axum server in the test):
//! every delivery it gets is checked for its signature (HMAC-SHA256 over `"<t>.<body>"`,
//! computed here with ring), a fresh timestamp, and headers that match the body. A deployment
//! to simulated devices arrives as created then succeeded; a receiver whose port is closed,
//! then answers 500, gets the deliveries once it answers 200, and the delivery log shows the
//! failed attempts; a restart loses no pending delivery; another user's webhook never gets
//! them; device events (online, rolled back, crash loop) reach the owner; a private address
//! is refused without `--webhook-allow-private`.

use crate::common::{Behavior, Harness};
use axum::http::{HeaderMap, StatusCode as AxStatus};
use hammer_protocol::Phase;
use hammer_service::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COMMIT: &str = "1111111111111111111111111111111111111111";

/// What the receiver got: the path, the body parsed, whether its signature checked out.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    event: String,
    delivery: String,
    body: Value,
}

/// A webhook receiver on 127.0.0.1: answers `status` (200 unless changed); records each
/// request whose signature, timestamp and headers are right, and counts those that are not.
struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Got>>>,
    bad: Arc<Mutex<Vec<String>>>,
    /// The signing secret of each path's webhook (set once the webhook exists).
    secrets: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

fn hmac_hex(secret: &str, msg: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(ring::hmac::sign(&key, msg).as_ref())
}

impl Receiver {
    /// Listens on `addr` (port 0: any free one).
    async fn start(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let got = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let secrets: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let (st, g, b, sec) = (status.clone(), got.clone(), bad.clone(), secrets.clone());
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (st, g, b, sec) = (st.clone(), g.clone(), b.clone(), sec.clone());
                async move {
                    let path = uri.path().to_owned();
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let secret = sec
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, s)| s.clone());
                    let sig = h("hammer-signature");
                    let check = (|| -> Result<Value, String> {
                        let secret = secret.ok_or("no webhook for this path")?;
                        let (t, v1) = sig
                            .split_once(",v1=")
                            .and_then(|(t, v)| {
                                Some((t.strip_prefix("t=")?.parse::<u64>().ok()?, v))
                            })
                            .ok_or(format!("malformed signature {sig:?}"))?;
                        let now = hammer_protocol::now_ms() / 1000;
                        if now.abs_diff(t) > 300 {
                            return Err(format!("stale timestamp {t} (now {now})"));
                        }
                        let mut msg = format!("{t}.").into_bytes();
                        msg.extend_from_slice(&body);
                        if hmac_hex(&secret, &msg) != v1 {
                            return Err("signature mismatch".into());
                        }
                        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                        if v["id"] != h("hammer-delivery").as_str()
                            || v["type"] != h("hammer-event").as_str()
                        {
                            return Err(format!("headers do not match the body {v}"));
                        }
                        if h("content-type") != "application/json" {
                            return Err("not JSON".into());
                        }
                        Ok(v)
                    })();
                    let code = st.load(Ordering::SeqCst);
                    match check {
                        Ok(v) if code == 200 => g.lock().unwrap().push(Got {
                            path,
                            event: h("hammer-event"),
                            delivery: h("hammer-delivery"),
                            body: v,
                        }),
                        Ok(_) => {}
                        Err(e) => b.lock().unwrap().push(e),
                    }
                    AxStatus::from_u16(code).unwrap()
                }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            status,
            got,
            bad,
            secrets,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn expect_secret(&self, path: &str, secret: &str) {
        self.secrets
            .lock()
            .unwrap()
            .push((path.to_owned(), secret.to_owned()));
    }

    fn got(&self, path: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    fn assert_no_bad(&self) {
        let bad = self.bad.lock().unwrap();
        assert!(
            bad.is_empty(),
            "deliveries that failed the receiver's checks: {bad:?}"
        );
    }

    /// Waits until `path` got a delivery of each of `events` (20 s); answers what it got.
    async fn wait_for(&self, path: &str, events: &[&str]) -> Vec<Got> {
        for _ in 0..400 {
            let got = self.got(path);
            if events.iter().all(|e| got.iter().any(|g| g.event == *e)) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{path} never got {events:?}; got {:?}; refused {:?}",
            self.got(path).iter().map(|g| &g.event).collect::<Vec<_>>(),
            self.bad.lock().unwrap()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loopback receivers allowed; retries fast (0.2 s doubling, at most 1 s apart).
fn fast(cfg: &mut ServeConfig) {
    cfg.webhooks.allow_private = true;
    cfg.webhooks.retry_base = Duration::from_millis(200);
    cfg.webhooks.retry_cap = Duration::from_secs(1);
    cfg.webhooks.max_attempts = 30;
}

/// Registers a webhook of `token` for `url`; answers (id, secret).
async fn add(h: &Harness, token: &str, url: &str, events: Value) -> (String, String) {
    let (s, v) = h
        .post(
            "/api/v1/webhooks",
            token,
            json!({"url": url, "events": events}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (
        v["webhook"]["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

async fn deliveries(h: &Harness, token: &str, id: &str) -> Value {
    let (s, v) = h
        .get(&format!("/api/v1/webhooks/{id}/deliveries"), token)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn deploy(h: &Harness, token: &str, device: &str) -> String {
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            token,
            json!({"targets": {"names": [device]}, "commit": COMMIT, "strategy": {"timeout_secs": 60}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_arrives_signed_as_created_then_succeeded_and_only_at_its_owners_webhook() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let h = Harness::start_with(fast).await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let _d = h
        .ready_device("alice", &alice, "d", json!({}), Behavior::Succeed)
        .await;
    let (_, secret) = add(&h, &alice, &rx.url("/alice"), json!([])).await;
    rx.expect_secret("/alice", &secret);
    let (_, bob_secret) = add(&h, &bob, &rx.url("/bob"), json!([])).await;
    rx.expect_secret("/bob", &bob_secret);
    // Asked only for successes: created is not sent there.
    let (_, only) = add(
        &h,
        &alice,
        &rx.url("/only"),
        json!(["deployment.succeeded"]),
    )
    .await;
    rx.expect_secret("/only", &only);

    let id = deploy(&h, &alice, "d").await;
    let v = h.wait_deployment(&alice, &id, 10).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let got = rx
        .wait_for("/alice", &["deployment.created", "deployment.succeeded"])
        .await;
    let deps: Vec<&Got> = got
        .iter()
        .filter(|g| g.event.starts_with("deployment."))
        .collect();
    assert_eq!(
        deps.iter().map(|g| g.event.as_str()).collect::<Vec<_>>(),
        ["deployment.created", "deployment.succeeded"],
        "in order, once each"
    );
    for g in &deps {
        assert_eq!(g.body["data"]["id"], id.as_str(), "{}", g.body);
        assert_eq!(g.body["id"], g.delivery.as_str());
    }
    assert_eq!(deps[1].body["data"]["state"], "succeeded");
    assert_eq!(deps[1].body["data"]["targets"][0]["device"], "d");
    let only = rx.wait_for("/only", &["deployment.succeeded"]).await;
    assert_eq!(only.len(), 1, "{only:?}");
    // The delivery log says so too.
    let (s, hooks) = h.get("/api/v1/webhooks", &alice).await;
    assert_eq!(s, StatusCode::OK);
    let hook = hooks.as_array().unwrap()[0].clone();
    assert_eq!(hook["url"], rx.url("/alice").as_str());
    assert!(hook.get("secret").is_none(), "{hook}");
    assert_eq!(hook["secret_prefix"], &secret[..6]);
    let log = deliveries(&h, &alice, hook["id"].as_str().unwrap()).await;
    let delivered: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["event"].as_str().unwrap().starts_with("deployment."))
        .collect();
    assert_eq!(delivered.len(), 2, "{log:#}");
    for d in delivered {
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["attempts"][0]["status"], 200, "{d}");
    }
    // Bob's webhook got none of it; bob cannot read or remove alice's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.got("/bob").is_empty(), "{:?}", rx.got("/bob"));
    let alice_hook = hook["id"].as_str().unwrap();
    let (s, _) = h
        .get(&format!("/api/v1/webhooks/{alice_hook}/deliveries"), &bob)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/webhooks/{alice_hook}"),
            &bob,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, bob_hooks) = h.get("/api/v1/webhooks", &bob).await;
    assert_eq!(bob_hooks.as_array().unwrap().len(), 1);
    rx.assert_no_bad();
    // The dashboard's pages show the same: the webhook, and its log with the status codes.
    let (s, html) = h.get("/webhooks", &alice).await;
    assert_eq!(s, StatusCode::OK);
    let html = html.as_str().unwrap().to_owned();
    assert!(html.contains(&rx.url("/alice")), "{html}");
    assert!(
        html.contains("href=\"/webhooks\""),
        "the nav links the page"
    );
    assert!(!html.contains(&secret), "{html}");
    let (s, html) = h.get(&format!("/webhooks/{alice_hook}"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    let html = html.as_str().unwrap().to_owned();
    assert!(
        html.contains("HTTP 200") && html.contains("deployment.succeeded"),
        "{html}"
    );
    let (s, _) = h.get(&format!("/webhooks/{alice_hook}"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The audit log names the webhook's creation.
    let (_, log) = h.get("/api/v1/audit", &alice).await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "webhook_added" && e["result"] == "201"),
        "{log:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_is_down_gets_the_deliveries_once_it_is_back_and_the_log_shows_the_failures(
) {
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_with(fast).await;
    let alice = h.user("alice").await;
    let _d = h
        .ready_device("alice", &alice, "d", json!({}), Behavior::Succeed)
        .await;
    let url = format!("http://{port}/hook");
    let (id, secret) = add(&h, &alice, &url, json!([])).await;
    let (s, ping) = h
        .post(&format!("/api/v1/webhooks/{id}/test"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{ping}");
    assert_eq!(ping["event"], "ping");
    let dep = deploy(&h, &alice, "d").await;
    h.wait_deployment(&alice, &dep, 10).await;

    // Refused connections are attempts with an error and no status.
    let mut log = Value::Null;
    for _ in 0..200 {
        log = deliveries(&h, &alice, &id).await;
        let ping = log
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event"] == "ping")
            .unwrap();
        if ping["attempts"].as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ping_rec = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event"] == "ping")
        .unwrap()
        .clone();
    assert_eq!(ping_rec["state"], "pending", "{ping_rec}");
    let first = &ping_rec["attempts"][0];
    assert!(first["status"].is_null(), "{first}");
    assert!(
        first["error"].as_str().unwrap().contains("connect"),
        "{first}"
    );
    assert!(ping_rec["next_attempt_at"].as_u64().is_some(), "{ping_rec}");
    // One at a time, in order: the deployment's deliveries wait behind the ping.
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["event"] != "ping")
            .all(|d| d["attempt_count"] == 0),
        "{log:#}"
    );

    // Back, but failing: 500s are logged with their status.
    let rx = Receiver::start(port).await;
    rx.expect_secret("/hook", &secret);
    rx.status.store(500, Ordering::SeqCst);
    for _ in 0..200 {
        log = deliveries(&h, &alice, &id).await;
        let ping = log
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event"] == "ping")
            .unwrap();
        if ping["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["status"] == 500)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ping_rec = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event"] == "ping")
        .unwrap()
        .clone();
    assert!(
        ping_rec["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["status"] == 500),
        "{ping_rec}"
    );
    assert_eq!(ping_rec["state"], "pending");

    // Healthy again: everything arrives, in order, and the log says delivered.
    rx.status.store(200, Ordering::SeqCst);
    let got = rx
        .wait_for(
            "/hook",
            &["ping", "deployment.created", "deployment.succeeded"],
        )
        .await;
    let order: Vec<&str> = got.iter().map(|g| g.event.as_str()).collect();
    let pos = |e: &str| order.iter().position(|x| *x == e).unwrap();
    assert!(
        pos("ping") < pos("deployment.created")
            && pos("deployment.created") < pos("deployment.succeeded"),
        "{order:?}"
    );
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        got.iter().all(|g| seen.insert(g.delivery.clone())),
        "one each: {order:?}"
    );
    rx.assert_no_bad();
    let log = deliveries(&h, &alice, &id).await;
    let ping_rec = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event"] == "ping")
        .unwrap();
    assert_eq!(ping_rec["state"], "delivered", "{ping_rec}");
    let attempts = ping_rec["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 3, "{ping_rec}");
    assert_eq!(attempts.last().unwrap()["status"], 200);
    assert!(attempts.iter().any(|a| a["error"].is_string()));
    assert!(attempts.iter().any(|a| a["status"] == 500));

    // /metrics counts them.
    let (_, m) = h.get("/metrics", "").await;
    let m = m.as_str().unwrap_or_default().to_owned();
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {m}"))
            .parse()
            .unwrap()
    };
    assert!(value("hammer_webhooks_delivered_total") >= 3);
    assert!(value("hammer_webhook_attempts_failed_total") >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_delivery_survives_a_restart_of_the_service() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut h = Harness::start_with(fast).await;
    let alice = h.user("alice").await;
    let (id, secret) = add(&h, &alice, &format!("http://{port}/hook"), json!([])).await;
    let (s, ping) = h
        .post(&format!("/api/v1/webhooks/{id}/test"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // It failed at least once before the restart.
    for _ in 0..200 {
        let log = deliveries(&h, &alice, &id).await;
        if log[0]["attempt_count"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.restart_with(fast).await;
    let rx = Receiver::start(port).await;
    rx.expect_secret("/hook", &secret);
    let got = rx.wait_for("/hook", &["ping"]).await;
    assert_eq!(got[0].delivery, ping["id"].as_str().unwrap());
    rx.assert_no_bad();
    let log = deliveries(&h, &alice, &id).await;
    assert_eq!(log[0]["state"], "delivered", "{log:#}");
    assert!(log[0]["attempt_count"].as_u64().unwrap() >= 2, "{log:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_devices_online_rollback_and_crash_loop_reach_its_owners_webhook() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let h = Harness::start_with(fast).await;
    let alice = h.user("alice").await;
    let (_, secret) = add(
        &h,
        &alice,
        &rx.url("/dev"),
        json!([
            "device.online",
            "device.rolled_back",
            "device.crash_looping"
        ]),
    )
    .await;
    rx.expect_secret("/dev", &secret);
    let d = h
        .ready_device("alice", &alice, "d", json!({}), Behavior::Fail)
        .await;
    let got = rx.wait_for("/dev", &["device.online"]).await;
    assert_eq!(got[0].body["data"]["device"], "d");
    let dep = deploy(&h, &alice, "d").await;
    h.wait_deployment(&alice, &dep, 10).await;
    let got = rx.wait_for("/dev", &["device.rolled_back"]).await;
    let rb = got
        .iter()
        .find(|g| g.event == "device.rolled_back")
        .unwrap();
    assert_eq!(rb.body["data"]["device"], "d");
    assert_eq!(rb.body["data"]["deployment_id"], dep.as_str());
    // Crashed, restarted, crashed, restarted, crashed: a crash loop, reported once.
    let phases = [
        Phase::Crashed,
        Phase::Restarted,
        Phase::Crashed,
        Phase::Restarted,
        Phase::Crashed,
        Phase::Restarted,
        Phase::Crashed,
    ];
    for (i, p) in phases.into_iter().enumerate() {
        d.status(1000 + i as u64, p).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    rx.wait_for("/dev", &["device.crash_looping"]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let loops = rx
        .got("/dev")
        .iter()
        .filter(|g| g.event == "device.crash_looping")
        .count();
    assert_eq!(loops, 1);
    rx.assert_no_bad();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_address_is_refused_without_the_flag_and_the_bounds_hold() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://10.0.0.7/",
    ] {
        let (s, v) = h
            .post("/api/v1/webhooks", &alice, json!({"url": url}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("--webhook-allow-private"),
            "{v}"
        );
    }
    for (url, says) in [
        ("ftp://example.com/", "https://"),
        ("https://user:pw@example.com/", "password"),
    ] {
        let (s, v) = h
            .post("/api/v1/webhooks", &alice, json!({"url": url}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
    let (s, v) = h
        .post(
            "/api/v1/webhooks",
            &alice,
            json!({"url": "https://example.com/", "events": ["ping"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A host name is checked as it resolves, at each attempt: this machine's own name
    // resolves to a loopback or private address (where it does not, there is nothing to show).
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let resolved: Vec<std::net::IpAddr> = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .map(|a| a.map(|a| a.ip()).collect())
        .unwrap_or_default();
    if !name.is_empty()
        && !resolved.is_empty()
        && resolved
            .iter()
            .all(|ip| !hammer_service::webhooks::rules::address_allowed(*ip, false))
    {
        // Listening on every address: only the guard keeps the delivery from arriving.
        let rx = Receiver::start("0.0.0.0:0".parse().unwrap()).await;
        let url = format!("http://{name}:{}/own", rx.addr.port());
        let (id, secret) = add(&h, &alice, &url, json!([])).await;
        rx.expect_secret("/own", &secret);
        let (s, _) = h
            .post(&format!("/api/v1/webhooks/{id}/test"), &alice, json!({}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        let mut log = Value::Null;
        for _ in 0..200 {
            log = deliveries(&h, &alice, &id).await;
            if log[0]["attempt_count"].as_u64() >= Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let err = log[0]["attempts"][0]["error"].as_str().unwrap_or_default();
        assert!(err.contains("--webhook-allow-private"), "{log:#}");
        assert!(rx.got("/own").is_empty() && rx.bad.lock().unwrap().is_empty());
        let (s, _) = h
            .call(
                Method::DELETE,
                &format!("/api/v1/webhooks/{id}"),
                &alice,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    } else {
        println!("{name:?} resolves to {resolved:?}: the resolve-time check is not shown here");
    }
    // At most 10 per user.
    for i in 0..10 {
        add(&h, &alice, &format!("https://example.com/{i}"), json!([])).await;
    }
    let (s, v) = h
        .post(
            "/api/v1/webhooks",
            &alice,
            json!({"url": "https://example.com/x"}),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("hammer webhook rm"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pausing_resuming_and_canceling_a_deployment_are_delivered_in_order() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let h = Harness::start_with(fast).await;
    let alice = h.user("alice").await;
    let _d = h
        .ready_device("alice", &alice, "d", json!({}), Behavior::Silent)
        .await;
    let (_, secret) = add(&h, &alice, &rx.url("/dep"), json!([])).await;
    rx.expect_secret("/dep", &secret);
    let id = deploy(&h, &alice, "d").await;
    for step in ["pause", "resume", "cancel"] {
        let (s, v) = h
            .post(
                &format!("/api/v1/deployments/{id}/{step}"),
                &alice,
                json!({}),
            )
            .await;
        assert!(s.is_success(), "{step}: {s} {v}");
    }
    let got = rx
        .wait_for(
            "/dep",
            &[
                "deployment.created",
                "deployment.paused",
                "deployment.resumed",
                "deployment.canceled",
            ],
        )
        .await;
    let order: Vec<&str> = got
        .iter()
        .map(|g| g.event.as_str())
        .filter(|e| e.starts_with("deployment."))
        .collect();
    assert_eq!(
        order,
        [
            "deployment.created",
            "deployment.paused",
            "deployment.resumed",
            "deployment.canceled"
        ]
    );
    assert_eq!(got.last().unwrap().body["data"]["state"], "canceled");
    rx.assert_no_bad();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_never_answers_does_not_hold_up_another_users_deliveries() {
    // Accepts connections and never answers: each attempt there lasts the whole timeout.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            open.push(s);
        }
    });
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let h = Harness::start_with(fast).await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let mut stuck = Vec::new();
    for i in 0..10 {
        let (id, _) = add(&h, &alice, &format!("http://{hang_addr}/{i}"), json!([])).await;
        for _ in 0..3 {
            let (s, _) = h
                .post(&format!("/api/v1/webhooks/{id}/test"), &alice, json!({}))
                .await;
            assert_eq!(s, StatusCode::ACCEPTED);
        }
        stuck.push(id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (bob_hook, secret) = add(&h, &bob, &rx.url("/bob"), json!([])).await;
    rx.expect_secret("/bob", &secret);
    let started = std::time::Instant::now();
    let (s, _) = h
        .post(
            &format!("/api/v1/webhooks/{bob_hook}/test"),
            &bob,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    rx.wait_for("/bob", &["ping"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bob's ping took {:?} behind alice's hanging receiver",
        started.elapsed()
    );
    // Alice's are all still waiting on her receiver, one at a time per webhook.
    let log = deliveries(&h, &alice, &stuck[0]).await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "pending"),
        "{log:#}"
    );
    rx.assert_no_bad();
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgresql_a_delivery_waits_through_a_restart_and_arrives_once_the_receiver_is_up() {
    let Some(pg) = crate::pg_server::TestPg::start() else {
        return;
    };
    let url = pg.create_db("webhooks");
    let with_db = |cfg: &mut ServeConfig| {
        fast(cfg);
        let mut db = hammer_service::store::pg::PgConfig::new(url.clone());
        db.pool = 4;
        cfg.database = Some(db);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut h = Harness::start_with(with_db).await;
    let alice = h.user("alice").await;
    let _d = h
        .ready_device("alice", &alice, "d", json!({}), Behavior::Succeed)
        .await;
    let (id, secret) = add(&h, &alice, &format!("http://{port}/pg"), json!([])).await;
    let dep = deploy(&h, &alice, "d").await;
    h.wait_deployment(&alice, &dep, 10).await;
    for _ in 0..200 {
        let log = deliveries(&h, &alice, &id).await;
        if log
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["attempt_count"].as_u64() >= Some(1))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.restart_with(with_db).await;
    let rx = Receiver::start(port).await;
    rx.expect_secret("/pg", &secret);
    let got = rx
        .wait_for("/pg", &["deployment.created", "deployment.succeeded"])
        .await;
    // (The new process sees the device's retained presence again: a device.online too.)
    let order: Vec<&str> = got
        .iter()
        .map(|g| g.event.as_str())
        .filter(|e| e.starts_with("deployment."))
        .collect();
    assert_eq!(order, ["deployment.created", "deployment.succeeded"]);
    rx.assert_no_bad();
    let log = deliveries(&h, &alice, &id).await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["event"].as_str().unwrap().starts_with("deployment."))
            .all(|d| d["state"] == "delivered"),
        "{log:#}"
    );
    // The first one failed before the restart; the next waited behind it.
    let created = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event"] == "deployment.created")
        .unwrap();
    assert!(created["attempt_count"].as_u64() >= Some(2), "{created}");
    assert!(created["attempts"][0]["error"].is_string(), "{created}");
}

/// A phased deployment's promotions arrive as `deployment.phase_promoted`: one when the soak
/// promotes the canary's phase, between created and succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phase_promoted_by_its_soak_arrives_between_created_and_succeeded() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let h = Harness::start_with(fast).await;
    let alice = h.user("alice").await;
    let mut devices = Vec::new();
    for name in ["a", "b"] {
        devices.push(
            h.ready_device("alice", &alice, name, json!({}), Behavior::Succeed)
                .await,
        );
    }
    let (_, secret) = add(&h, &alice, &rx.url("/alice"), json!([])).await;
    rx.expect_secret("/alice", &secret);
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &alice,
            json!({"targets": {"names": ["a", "b"]},
                   "strategy": {"phases": [{"devices": 1}], "soak_secs": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let v = h.wait_deployment(&alice, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let want = [
        "deployment.created",
        "deployment.phase_promoted",
        "deployment.succeeded",
    ];
    let got = rx.wait_for("/alice", &want).await;
    let deps: Vec<&Got> = got
        .iter()
        .filter(|g| g.event.starts_with("deployment."))
        .collect();
    assert_eq!(
        deps.iter().map(|g| g.event.as_str()).collect::<Vec<_>>(),
        want,
        "in order, once each"
    );
    let promoted = &deps[1].body["data"];
    assert_eq!(promoted["id"], id.as_str(), "{promoted}");
    assert_eq!(promoted["phasing"]["current"], 2, "{promoted}");
    assert_eq!(
        promoted["phasing"]["promotions"][0]["phase"], 1,
        "{promoted}"
    );
}
