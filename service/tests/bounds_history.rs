//! Issue 13, history and lists: bounded history per device, capped event text, and pages
//! (limit + cursor) that walk every record exactly once. A real service with a small history
//! bound, simulated devices over mTLS, real HTTP.

mod common;

use common::{Behavior, Harness, SimDevice};
use hammer_protocol::api::NEXT_CURSOR_HEADER;
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, now_ms, Channel, Phase, StatusEvent, PROTOCOL_VERSION};
use hammer_service::store::{
    Retention, CUT_MARKER, MAX_DETAIL, MAX_LOG_TAIL_LINE, MAX_LOG_TAIL_LINES,
};
use reqwest::StatusCode;
use rumqttc::QoS;
use serde_json::{json, Value};

/// Every test of this binary runs with this bound on events per device.
const KEEP: u64 = 10;

async fn start() -> Harness {
    Retention::set_process_default(Retention {
        max_events_per_device: KEEP,
        ..Retention::BUILT_IN
    });
    Harness::start().await
}

/// Publishes a status event with `detail`; returns its seq.
async fn event(dev: &SimDevice, detail: String, log_tail: Vec<String>) -> u64 {
    let seq = dev.next_seq();
    let ev = StatusEvent {
        v: PROTOCOL_VERSION,
        epoch: dev.epoch,
        seq,
        generation: None,
        deployment_id: None,
        phase: Phase::Running,
        commit: None,
        time: now_ms(),
        detail: Some(detail),
        log_tail,
        commit_subject: None,
    };
    dev.client
        .publish(
            topic(&dev.id, Channel::Status),
            QoS::AtLeastOnce,
            false,
            encode(&ev).unwrap(),
        )
        .await
        .unwrap();
    seq
}

/// One page: status, body, and the `next-cursor` header.
async fn page(h: &Harness, token: &str, path: &str) -> (StatusCode, Value, Option<String>) {
    let resp = h
        .http
        .get(format!("{}{path}", h.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = resp.status();
    let next = resp
        .headers()
        .get(NEXT_CURSOR_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let v = resp.json().await.unwrap();
    (s, v, next)
}

/// Follows `next-cursor` from the first page; returns the pages.
async fn walk(h: &Harness, token: &str, path: &str, limit: u32) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{path}?limit={limit}&cursor={c}"),
            None => format!("{path}?limit={limit}"),
        };
        let (s, v, next) = page(h, token, &q).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let items = v.as_array().unwrap().clone();
        assert!(items.len() <= limit as usize, "{} > {limit}", items.len());
        pages.push(items);
        match next {
            Some(n) => cursor = Some(n),
            None => return pages,
        }
        assert!(pages.len() < 100, "the cursors never end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_keeps_the_newest_configured_count_and_caps_long_text() {
    let h = start().await;
    let t = h.user("alice").await;
    let dev = h
        .ready_device("alice", &t, "pi", json!({}), Behavior::Succeed)
        .await;
    let other = h
        .ready_device("alice", &t, "other", json!({}), Behavior::Succeed)
        .await;
    let other_seq = event(&other, "other device".into(), vec![]).await;
    assert!(
        other.wait_ack(other_seq).await,
        "the other device's event was never acked"
    );
    let mut last = 0;
    for i in 0..25 {
        last = event(&dev, format!("event {i}"), vec![]).await;
    }
    let long = event(
        &dev,
        "d".repeat(25 * MAX_DETAIL),
        (0..150)
            .map(|i| format!("{i} {}", "l".repeat(900)))
            .collect(),
    )
    .await;
    assert!(long > last);
    assert!(dev.wait_ack(long).await, "the events were never acked");

    let (s, v, next) = page(&h, &t, "/api/v1/devices/pi/history?limit=1000").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(next, None);
    let hist = v.as_array().unwrap();
    assert_eq!(hist.len() as u64, KEEP, "{v}");
    let details: Vec<&str> = hist.iter().map(|e| e["detail"].as_str().unwrap()).collect();
    let expect: Vec<String> = (16..25).map(|i| format!("event {i}")).collect();
    assert_eq!(details[..9], expect, "the oldest went, the rest in order");
    let capped = &hist[9];
    let detail = capped["detail"].as_str().unwrap();
    assert!(detail.len() <= MAX_DETAIL && detail.ends_with(CUT_MARKER));
    let tail = capped["log_tail"].as_array().unwrap();
    assert_eq!(tail.len(), MAX_LOG_TAIL_LINES);
    assert!(
        tail[0].as_str().unwrap().starts_with("100 "),
        "the last lines stay"
    );
    assert!(tail
        .iter()
        .all(|l| l.as_str().unwrap().len() <= MAX_LOG_TAIL_LINE));
    // Another device's history is its own.
    let (_, v, _) = page(&h, &t, "/api/v1/devices/other/history").await;
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["detail"] == "other device"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_pages_walk_every_kept_event_once_in_order() {
    let h = start().await;
    let t = h.user("alice").await;
    let dev = h
        .ready_device("alice", &t, "pi", json!({}), Behavior::Succeed)
        .await;
    let mut last = 0;
    for i in 0..KEEP {
        last = event(&dev, format!("e{i:02}"), vec![]).await;
    }
    assert!(dev.wait_ack(last).await);
    let pages = walk(&h, &t, "/api/v1/devices/pi/history", 3).await;
    assert_eq!(pages.len(), 4, "{pages:?}");
    // Newest page first; each page oldest first: reversed pages read in order.
    let all: Vec<String> = pages
        .into_iter()
        .rev()
        .flatten()
        .map(|e| e["detail"].as_str().unwrap().to_owned())
        .collect();
    let expect: Vec<String> = (0..KEEP).map(|i| format!("e{i:02}")).collect();
    assert_eq!(all, expect);

    // The default page, a bad limit and a foreign cursor.
    let (s, v, next) = page(&h, &t, "/api/v1/devices/pi/history").await;
    assert_eq!(
        (s, v.as_array().unwrap().len(), next),
        (StatusCode::OK, 10, None)
    );
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=zzz",
        "cursor=d0",
    ] {
        let (s, v, _) = page(&h, &t, &format!("/api/v1/devices/pi/history?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
}

async fn deploy(h: &Harness, token: &str, name: &str) -> String {
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            token,
            json!({"targets": {"names": [name]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    h.wait_deployment(token, &id, 10).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_pages_walk_the_callers_deployments_once_newest_first() {
    let h = start().await;
    let ta = h.user("alice").await;
    let tb = h.user("bob").await;
    let _a = h
        .ready_device("alice", &ta, "pa", json!({}), Behavior::Succeed)
        .await;
    let _b = h
        .ready_device("bob", &tb, "pb", json!({}), Behavior::Succeed)
        .await;
    let mut mine = Vec::new();
    let mut bobs = Vec::new();
    for i in 0..7 {
        mine.push(deploy(&h, &ta, "pa").await);
        if i % 3 == 0 {
            bobs.push(deploy(&h, &tb, "pb").await);
        }
    }
    let pages = walk(&h, &ta, "/api/v1/deployments", 2).await;
    assert_eq!(pages.len(), 4);
    let ids: Vec<String> = pages
        .into_iter()
        .flatten()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    mine.reverse();
    assert_eq!(ids, mine, "newest first, each once, only the caller's");
    let bob_ids: Vec<String> = walk(&h, &tb, "/api/v1/deployments", 1000)
        .await
        .into_iter()
        .flatten()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    bobs.reverse();
    assert_eq!(bob_ids, bobs);
    // The bare array without parameters, as before pages.
    let (s, v) = h.get("/api/v1/deployments", &ta).await;
    assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 7));
}
