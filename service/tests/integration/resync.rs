//! A device that comes online is sent only what differs (issue 17): nothing when its
//! generation and acked seq match the service's and nothing waits on it, its desired state
//! when it runs another generation, and the stored ack when events wait on it (it resends
//! only what that ack does not cover).

use crate::common::{Behavior, Harness};
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, Channel, Presence};
use reqwest::StatusCode;
use rumqttc::QoS;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_in_sync_is_sent_nothing_and_one_that_differs_only_what_differs() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let dev = h
        .ready_device("alice", &t, "d1", json!({}), Behavior::Succeed)
        .await;
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["d1"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let generation = dev.last_desired().unwrap().generation;
    // Every event the device sent is acked.
    for _ in 0..200 {
        if dev.unacked() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dev.unacked(), 0);
    let acked = dev.device().acked_seq();

    let presence = |generation: Option<u64>, acked_seq: u64, last_seq: u64| {
        encode(&Presence {
            online: true,
            generation,
            acked_seq,
            last_seq: Some(last_seq),
            ..Presence::offline(dev.epoch)
        })
        .unwrap()
    };
    let send = |payload: Vec<u8>| {
        let client = dev.client.clone();
        let t = topic(&dev.id, Channel::Presence);
        async move {
            client
                .publish(t, QoS::AtLeastOnce, true, payload)
                .await
                .unwrap()
        }
    };
    let counts = || {
        (
            dev.desired_seen.load(std::sync::atomic::Ordering::Relaxed),
            dev.acks.lock().unwrap().len(),
        )
    };

    // In sync: handled, and nothing is sent.
    let resyncs = h.metric("hammer_resyncs_total").await;
    let in_sync = h.metric("hammer_resyncs_in_sync_total").await;
    let before = counts();
    send(presence(Some(generation), acked, acked)).await;
    h.wait_metric("hammer_resyncs_total", resyncs + 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counts(), before, "a device in sync got a message");
    assert_eq!(h.metric("hammer_resyncs_in_sync_total").await, in_sync + 1);

    // Another generation: the desired state, and no ack.
    let desired = h.metric("hammer_resyncs_desired_total").await;
    send(presence(Some(generation - 1), acked, acked)).await;
    h.wait_metric("hammer_resyncs_desired_total", desired + 1)
        .await;
    for _ in 0..100 {
        if counts().0 > before.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = counts();
    assert_eq!(after.0, before.0 + 1, "the desired state was not re-sent");
    assert_eq!(
        after.1, before.1,
        "an ack was sent to a device that needs none"
    );
    assert_eq!(dev.last_desired().unwrap().generation, generation);

    // Events waiting on the device: the stored ack, so it resends only what is missing.
    send(presence(Some(generation), acked, acked + 2)).await;
    for _ in 0..100 {
        if counts().1 > after.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts().1, after.1 + 1, "no ack answered events waiting");
    let ack = dev.last_ack().unwrap();
    assert_eq!((ack.epoch, ack.seq), (dev.epoch, acked));
    assert_eq!(counts().0, after.0, "the desired state was sent again");
}
