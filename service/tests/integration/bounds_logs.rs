//! Issue 13, logs: a device's log lines are kept only while someone watches it, and then
//! within the per-line and per-device caps. A real service, a simulated device over mTLS,
//! real HTTP.

use crate::common::{Behavior, Harness, SimDevice};
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, now_ms, Channel, LogBatch, PROTOCOL_VERSION};
use hammer_service::live::{MAX_LOG_BYTES, MAX_LOG_LINE};
use hammer_service::store::CUT_MARKER;
use reqwest::StatusCode;
use rumqttc::QoS;
use serde_json::json;

async fn send_logs(dev: &SimDevice, lines: Vec<String>) {
    let batch = LogBatch {
        v: PROTOCOL_VERSION,
        time: now_ms(),
        lines,
    };
    dev.client
        .publish(
            topic(&dev.id, Channel::Logs),
            QoS::AtLeastOnce,
            false,
            encode(&batch).unwrap(),
        )
        .await
        .unwrap();
}

async fn lines(h: &Harness, token: &str, name: &str) -> Vec<String> {
    let (s, v) = h.get(&format!("/api/v1/devices/{name}/logs"), token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v["lines"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_lines_of_an_unwatched_device_are_dropped_and_watched_ones_are_kept_within_caps() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let dev = h
        .ready_device("alice", &t, "pi", json!({}), Behavior::Succeed)
        .await;
    let base = h.metric("hammer_log_batches_total").await;

    // Nobody watches: 1 MB of output (a device that ignores `logs off`) leaves nothing kept.
    // (Volumes stay inside the broker's per-device burst of 4 MiB: a device sending more is
    // cut off by the broker, which broker/tests/limits.rs covers.)
    for i in 0..20 {
        send_logs(
            &dev,
            vec![format!("unwatched {i} {}", "u".repeat(2500)); 20],
        )
        .await;
    }
    h.wait_metric("hammer_log_batches_total", base + 20).await;
    assert!(
        lines(&h, &t, "pi").await.is_empty(),
        "lines that arrived while nobody watched were kept"
    );

    // That request is a watch: lines are kept now, a long one cut with the marker.
    send_logs(&dev, vec!["x".repeat(10 * MAX_LOG_LINE), "hello".into()]).await;
    h.wait_metric("hammer_log_batches_total", base + 21).await;
    let kept = lines(&h, &t, "pi").await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].len() <= MAX_LOG_LINE && kept[0].ends_with(CUT_MARKER));
    assert_eq!(kept[1], "hello");

    // 1.5 MB (six times the ring) while watched: the kept lines stay within the ring,
    // newest last.
    for i in 0..30 {
        send_logs(&dev, vec![format!("watched {i} {}", "w".repeat(2500)); 20]).await;
    }
    h.wait_metric("hammer_log_batches_total", base + 51).await;
    let kept = lines(&h, &t, "pi").await;
    let bytes: usize = kept.iter().map(String::len).sum();
    assert!(bytes <= MAX_LOG_BYTES, "{bytes} bytes kept");
    assert!(kept.len() > 10, "{} lines kept", kept.len());
    assert!(kept.last().unwrap().starts_with("watched 29 "));
    assert!(!kept.iter().any(|l| l.starts_with("unwatched")));
}
