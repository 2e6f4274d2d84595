//! Stopping the service under load (issue 13): it stops within its deadline while a device
//! floods it, and every status event the device saw acked is still stored afterwards.

use crate::common;

use crate::common::{Behavior, Harness, SimDevice};
use hammer_protocol::Phase;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_stopped_under_a_flood_stops_in_time_and_loses_nothing_it_acked() {
    let mut h = Harness::start().await;
    h.user("alice").await;
    let t = h.user("bob").await;
    let bundle = h.provision("bob", "busy", json!({})).await;
    let dev = SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Silent).await;
    // Within the broker's per-device burst, paced so that the stop comes in the middle.
    let n = 900u64;
    let dev = std::sync::Arc::new(dev);
    let flood = {
        let dev = dev.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                let seq = dev.next_seq();
                dev.status(seq, Phase::Received).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    assert!(dev.wait_ack(100).await, "the first events are acked");
    let started = Instant::now();
    let svc = h.svc.take().unwrap();
    tokio::time::timeout(
        hammer_service::SHUTDOWN_DEADLINE + Duration::from_secs(5),
        svc.shutdown(),
    )
    .await
    .expect("the service did not stop within its deadline under load");
    let took = started.elapsed();
    flood.abort();
    let acked = dev
        .acks
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.epoch == dev.epoch)
        .map(|a| a.seq)
        .max()
        .unwrap_or(0);
    let sent = dev.last_seq();
    drop(dev);
    assert!(
        acked < sent,
        "the stop came after the flood ({acked} of {sent} acked)"
    );

    // Same data dir, new service: everything acked is there.
    let svc = hammer_service::start(common::config(h.dir.path()))
        .await
        .unwrap();
    h.base = svc.http_url();
    h.svc = Some(svc);
    let (_, hist) = h.get("/api/v1/devices/busy/history?limit=1000", &t).await;
    let stored = hist.as_array().map_or(0, |a| a.len()) as u64;
    assert!(
        stored >= acked,
        "{acked} events were acked but only {stored} are stored after the restart"
    );
    eprintln!("stopped in {took:?}; {acked} of {sent} sent acked before the stop, {stored} stored");
}
