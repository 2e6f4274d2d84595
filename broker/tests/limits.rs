//! Bounded under abuse: per-identity rate limits and the connection budget. Real TLS on
//! loopback; every flood is bounded in count and time and stays on 127.0.0.1.

mod common;

use common::*;
use hammer_broker::{ConnectionEvent, RateLimit, RefusalReason};
use hammer_protocol::topics::{topic, Channel};
use rumqttc::{Packet, QoS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const A: &str = "deva";
const B: &str = "devb";
const SHORT: Duration = Duration::from_secs(3);

/// A small device limit, so that the tests need few messages: 20 packets/s, burst 40.
const SMALL: RateLimit = RateLimit {
    messages_per_sec: 20,
    message_burst: 40,
    bytes_per_sec: 1 << 20,
    byte_burst: 1 << 20,
};

/// Counts the publishes on `topic` that reach `c` until none came for 500 ms (at most 10 s).
async fn count_publishes(c: &mut Client, topic: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while Instant::now() < deadline
        && c.publish_on(Duration::from_millis(500), topic)
            .await
            .is_ok()
    {
        n += 1;
    }
    n
}

async fn disconnect_event(
    rx: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    id: &str,
) -> ConnectionEvent {
    timeout(Duration::from_secs(5), async {
        loop {
            let ev = rx.recv().await.expect("event");
            if ev.identity.id == id && !ev.connected {
                return ev;
            }
        }
    })
    .await
    .expect("disconnect event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_limit_is_disconnected_and_others_keep_going() {
    let (handle, fleet) = start(|c| c.device_rate_limit = Some(SMALL)).await;
    let mut events = handle.subscribe_events();
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.subscribe(&Channel::Status.all_devices_filter()).await;
    let b_cert = fleet.device(B);
    let mut b = Client::device(&handle, &fleet, &b_cert, B).await;
    b.subscribe(&topic(B, Channel::Cmd)).await;

    // A floods its own status topic: 300 messages as fast as the client sends them.
    let a_cert = fleet.device(A);
    let mut a = Client::device(&handle, &fleet, &a_cert, A).await;
    for i in 0..300u32 {
        let sent = a
            .client
            .publish(
                topic(A, Channel::Status),
                QoS::AtMostOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await;
        if sent.is_err() {
            break;
        }
    }
    assert!(a.disconnected_within(SHORT).await, "flooding device kept");
    let ev = disconnect_event(&mut events, A).await;
    assert_eq!(ev.reason.as_deref(), Some("rate_limit"));
    // The flood was cut near the burst: far from all 300 reached the service.
    let got = count_publishes(&mut svc, &topic(A, Channel::Status)).await;
    assert!(
        (1..150).contains(&got),
        "{got} of A's messages were relayed"
    );
    // Counted once, and it stays once.
    eventually("rate_limit counted", || {
        handle.metrics().refused(RefusalReason::RateLimit) == 1
    })
    .await;

    // B, connected all along, keeps publishing and receiving.
    b.client
        .publish(
            topic(B, Channel::Status),
            QoS::AtLeastOnce,
            false,
            b"fine".to_vec(),
        )
        .await
        .unwrap();
    let status = svc
        .publish_on(SHORT, &topic(B, Channel::Status))
        .await
        .expect("B's status relayed");
    assert_eq!(&status.payload[..], b"fine");
    svc.client
        .publish(
            topic(B, Channel::Cmd),
            QoS::AtLeastOnce,
            false,
            b"restart".to_vec(),
        )
        .await
        .unwrap();
    b.publish_on(SHORT, &topic(B, Channel::Cmd))
        .await
        .expect("B still receives");
    assert!(!b.disconnected_within(Duration::from_millis(300)).await);
    assert!(!svc.disconnected_within(Duration::from_millis(100)).await);

    // A is not banned: after a pause it connects again and may publish at its rate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = Client::device(&handle, &fleet, &a_cert, A).await;
    a.client
        .publish(
            topic(A, Channel::Status),
            QoS::AtLeastOnce,
            false,
            b"calm".to_vec(),
        )
        .await
        .unwrap();
    let calm = svc
        .wait_for(SHORT, |p| match p {
            Packet::Publish(p) if &p.payload[..] == b"calm" => Some(()),
            _ => None,
        })
        .await;
    assert!(calm.is_ok(), "A's message after the pause not relayed");
    assert_eq!(handle.metrics().refused(RefusalReason::RateLimit), 1);
    let text = handle.render_prometheus();
    assert!(
        text.contains("hammer_broker_refusals_total{reason=\"rate_limit\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_under_its_rate_limit_is_never_disconnected() {
    let (handle, fleet) = start(|c| c.device_rate_limit = Some(SMALL)).await;
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.subscribe(&Channel::Status.all_devices_filter()).await;
    let a_cert = fleet.device(A);
    let mut a = Client::device(&handle, &fleet, &a_cert, A).await;
    a.subscribe(&topic(A, Channel::Cmd)).await;

    // A burst within the burst (30 of 40, the CONNECT and SUBSCRIBE took two more), then
    // half the sustained rate for three seconds: 10/s of 20/s.
    let publish = |i: u32| {
        a.client.publish(
            topic(A, Channel::Status),
            QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
    };
    for i in 0..30 {
        publish(i).await.unwrap();
    }
    for i in 30..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish(i).await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 60 {
        let p = svc
            .publish_on(SHORT, &topic(A, Channel::Status))
            .await
            .unwrap_or_else(|e| panic!("only {} of 60 relayed: {e}", seen.len()));
        seen.insert(p.payload.to_vec());
    }
    assert!(!a.disconnected_within(Duration::from_millis(500)).await);
    assert_eq!(handle.metrics().refused(RefusalReason::RateLimit), 0);
    assert!(handle.connected().iter().any(|s| s.identity.id == A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_may_publish_a_burst_far_above_a_device_limit() {
    let (handle, fleet) = start(|c| c.device_rate_limit = Some(SMALL)).await;
    let b_cert = fleet.device(B);
    let mut b = Client::device(&handle, &fleet, &b_cert, B).await;
    b.subscribe(&topic(B, Channel::Ack)).await;
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;

    // A rollout's worth of acks and desired states at once: 2,000 messages, fifty times the
    // device burst, then one for B.
    for i in 0..1000u32 {
        let id = format!("dev{i}");
        for channel in [Channel::Ack, Channel::Desired] {
            svc.client
                .publish(topic(&id, channel), QoS::AtLeastOnce, false, vec![7u8; 64])
                .await
                .unwrap();
        }
    }
    svc.client
        .publish(
            topic(B, Channel::Ack),
            QoS::AtLeastOnce,
            false,
            b"last".to_vec(),
        )
        .await
        .unwrap();
    let last = b
        .publish_on(Duration::from_secs(20), &topic(B, Channel::Ack))
        .await
        .expect("the message after the burst arrives");
    assert_eq!(&last.payload[..], b"last");
    assert!(!svc.disconnected_within(Duration::from_millis(300)).await);
    let m = handle.metrics();
    assert_eq!(m.refused(RefusalReason::RateLimit), 0);
    assert!(m.messages_in >= 2001, "{m:?}");
}

/// Opens `n` idle TCP connections to `addr` (each within 2 s), sampling the broker's open
/// connections meanwhile.
async fn idle_flood(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    assert!(addr.ip().is_loopback());
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        let s = timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        idle.push(s);
    }
    idle
}

/// Waits until the broker has closed every socket in `idle` (EOF or error), within `within`.
async fn all_closed(idle: Vec<TcpStream>, within: Duration) {
    let deadline = Instant::now() + within;
    for (i, mut s) in idle.into_iter().enumerate() {
        let mut byte = [0u8; 1];
        let r = timeout(
            deadline.saturating_duration_since(Instant::now()),
            s.read(&mut byte),
        )
        .await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "idle socket {i} not closed: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_past_the_connection_budget_still_lets_a_device_connect_and_publish() {
    const MAX: usize = 64;
    let handshake_timeout = Duration::from_secs(5);
    let (handle, fleet) = start(|c| {
        c.max_connections = MAX;
        c.handshake_timeout = handshake_timeout;
    })
    .await;
    assert_eq!(handle.connection_limits().max_connections, MAX);
    let addr = handle.local_addr();
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.subscribe(&Channel::Status.all_devices_filter()).await;

    // Watch the open connections for the whole test.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (handle, peak, done) = (handle.clone(), peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(handle.metrics().connections_open, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Past the budget: 150 idle sockets for 63 free slots.
    let first = idle_flood(addr, 150).await;
    eventually("the broker accepted the flood", || {
        let m = handle.metrics();
        m.connections_total >= 151 && m.connections_open == MAX as u64
    })
    .await;

    // A real device still gets in within the handshake timeout, and publishes.
    let a_cert = fleet.device(A);
    let mut a = spawn(tls_options(addr, &fleet.ca_pem, Some(&a_cert), A));
    timeout(handshake_timeout, a.expect_connack())
        .await
        .expect("CONNACK within the handshake timeout")
        .expect("device accepted");
    a.client
        .publish(
            topic(A, Channel::Status),
            QoS::AtLeastOnce,
            false,
            b"through".to_vec(),
        )
        .await
        .unwrap();
    let got = svc
        .publish_on(SHORT, &topic(A, Channel::Status))
        .await
        .expect("the device's status relayed");
    assert_eq!(&got.payload[..], b"through");

    // More idle sockets while it is connected: established sessions are never the ones that
    // make room.
    let second = idle_flood(addr, 100).await;
    all_closed(first, handshake_timeout + SHORT).await;
    all_closed(second, handshake_timeout + SHORT).await;
    assert!(!a.disconnected_within(Duration::from_millis(200)).await);
    assert!(!svc.disconnected_within(Duration::from_millis(100)).await);
    a.client
        .publish(
            topic(A, Channel::Status),
            QoS::AtLeastOnce,
            false,
            b"still".to_vec(),
        )
        .await
        .unwrap();
    svc.wait_for(SHORT, |p| match p {
        Packet::Publish(p) if &p.payload[..] == b"still" => Some(()),
        _ => None,
    })
    .await
    .expect("still relayed after the second flood");

    // Every idle socket ended with exactly one counted reason; most of them made room.
    eventually("every idle socket counted", || {
        let m = handle.metrics();
        m.refused(RefusalReason::Evicted) + m.refused(RefusalReason::Timeout) == 250
    })
    .await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let m = handle.metrics();
    println!(
        "evicted {}, timed out {}, peak open {}",
        m.refused(RefusalReason::Evicted),
        m.refused(RefusalReason::Timeout),
        peak.load(Ordering::Relaxed)
    );
    // 150 + 100 idle, at most 62 of them alive at any time beside the two sessions.
    assert!(m.refused(RefusalReason::Evicted) >= 250 - 62, "{m:?}");
    assert_eq!(m.refused(RefusalReason::Limit), 0, "{m:?}");
    assert!(peak.load(Ordering::Relaxed) <= MAX as u64, "{m:?}");
    assert_eq!(m.sessions_open, 2);
}
