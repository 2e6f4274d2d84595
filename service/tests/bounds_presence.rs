//! A device flooding presence messages (each one a resync request) does not cost another
//! tenant's device its service, and does not grow the service without bound: presence is
//! coalesced per device and handled by a fixed pool (issue 13).

mod common;

use common::{Behavior, Harness, SimDevice};
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, Channel, Phase, Presence};
use rumqttc::QoS;
use serde_json::json;
use std::time::Duration;

/// Resident memory of this process (the service runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_presence_flood_from_one_device_neither_starves_another_tenant_nor_grows_the_service() {
    let h = Harness::start().await;
    h.user("alice").await;
    h.user("bob").await;
    let mqtt = h.svc().mqtt_addr;
    let flooder = SimDevice::connect(
        mqtt,
        &h.provision("alice", "flood", json!({})).await,
        Behavior::Silent,
    )
    .await;
    let victim = SimDevice::connect(
        mqtt,
        &h.provision("bob", "quiet", json!({})).await,
        Behavior::Silent,
    )
    .await;
    // The flooder has a stored event, so every resync it gets answers with a (signed) ack.
    let seq = flooder.next_seq();
    flooder.status(seq, Phase::Received).await;
    assert!(
        flooder.wait_ack(seq).await,
        "the flooder's first event is acked"
    );
    let acks_before = flooder.acks.lock().unwrap().len();
    let rss_before = rss_kib();

    const FLOOD: u32 = 20_000;
    let payload = encode(&Presence {
        online: true,
        acked_seq: seq,
        ..Presence::offline(flooder.epoch)
    })
    .unwrap();
    let t = topic(&flooder.id, Channel::Presence);
    let client = flooder.client.clone();
    let flood = tokio::spawn(async move {
        for _ in 0..FLOOD {
            // The broker may cut the flooder off (its publish rate limit): then stop.
            if tokio::time::timeout(
                Duration::from_secs(5),
                client.publish(t.clone(), QoS::AtMostOnce, false, payload.clone()),
            )
            .await
            .map_or(true, |r| r.is_err())
            {
                break;
            }
        }
    });

    // Meanwhile the other tenant's device is served: its event is stored and acked.
    let vseq = victim.next_seq();
    victim.status(vseq, Phase::Received).await;
    assert!(
        victim.wait_ack(vseq).await,
        "another tenant's device got no ack during the flood"
    );
    let _ = tokio::time::timeout(Duration::from_secs(60), flood).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let resyncs = flooder.acks.lock().unwrap().len() - acks_before;
    assert!(
        resyncs < (FLOOD / 10) as usize,
        "{resyncs} resyncs answered for {FLOOD} presence messages: not coalesced"
    );
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 200,
        "the service grew by {grown_mib} MiB during a {FLOOD}-message presence flood"
    );
    let v2 = victim.next_seq();
    victim.status(v2, Phase::Fetching).await;
    assert!(victim.wait_ack(v2).await, "still served after the flood");
}
