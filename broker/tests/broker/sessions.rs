//! Session semantics the front door provides on top of rumqttd's router: wills, takeover by a
//! new connection of the same identity, persistent sessions, keep-alive. Real TLS, loopback.

use crate::common;

use common::*;
use hammer_protocol::topics::{topic, Channel};
use rumqttc::mqttbytes::v4::{Connect, LastWill as RawWill, Packet as RawPacket};
use rumqttc::QoS;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const A: &str = "deva";
const SHORT: Duration = Duration::from_secs(3);

/// CONNECT bytes for `id` with keep-alive `keep_alive` and a will on its presence topic.
fn connect_with_will(id: &str, keep_alive: u16) -> Vec<u8> {
    let mut c = Connect::new(id);
    c.keep_alive = keep_alive;
    c.last_will = Some(RawWill::new(
        topic(id, Channel::Presence),
        b"offline".to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    let mut buf = bytes::BytesMut::new();
    RawPacket::Connect(c).write(&mut buf, usize::MAX).unwrap();
    buf.to_vec()
}

async fn read_connack(s: &mut (impl AsyncReadExt + Unpin)) {
    let mut ack = [0u8; 4];
    timeout(SHORT, s.read_exact(&mut ack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
}

/// A watcher (the service) subscribed to `id`'s presence.
async fn presence_watcher(handle: &hammer_broker::BrokerHandle, fleet: &Fleet, id: &str) -> Client {
    let cert = fleet.service();
    let mut svc = Client::device(handle, fleet, &cert, "svc").await;
    svc.subscribe(&topic(id, Channel::Presence)).await;
    svc
}

/// A raw TLS session of device `A` with a will, past its CONNACK.
async fn raw_session(
    handle: &hammer_broker::BrokerHandle,
    fleet: &Fleet,
    cert: &hammer_certs::Issued,
    keep_alive: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = raw_tls(handle.local_addr(), fleet, cert).await;
    s.write_all(&connect_with_will(A, keep_alive))
        .await
        .unwrap();
    read_connack(&mut s).await;
    s
}

/// Live sessions of device `id`.
fn sessions_of(handle: &hammer_broker::BrokerHandle, id: &str) -> usize {
    handle
        .connected()
        .iter()
        .filter(|s| s.identity.id == id)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_connection_drops_and_not_after_disconnect() {
    let (handle, fleet) = start(|_| {}).await;
    let mut svc = presence_watcher(&handle, &fleet, A).await;
    let cert = fleet.device(A);

    // DISCONNECT first: no will.
    let mut s = raw_session(&handle, &fleet, &cert, 30).await;
    s.write_all(&[0xe0, 0x00]).await.unwrap();
    assert!(
        closed_within(&mut s, SHORT).await,
        "closed after DISCONNECT"
    );
    assert!(
        svc.publish_on(Duration::from_millis(500), &topic(A, Channel::Presence))
            .await
            .is_err(),
        "no will after a DISCONNECT"
    );

    // The connection just drops: the will is published (retained).
    let s = raw_session(&handle, &fleet, &cert, 30).await;
    drop(s);
    expect_offline(&mut svc, A).await;
    let mut late = presence_watcher(&handle, &fleet, A).await;
    let p = late
        .publish_on(SHORT, &topic(A, Channel::Presence))
        .await
        .expect("retained will");
    assert!(p.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_past_the_keep_alive_ends_the_session_with_its_will() {
    let (handle, fleet) = start(|_| {}).await;
    let mut svc = presence_watcher(&handle, &fleet, A).await;
    let cert = fleet.device(A);
    let mut s = raw_session(&handle, &fleet, &cert, 1).await;
    // A ping keeps it alive...
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(&[0xc0, 0x00]).await.unwrap();
    let mut resp = [0u8; 2];
    timeout(SHORT, s.read_exact(&mut resp))
        .await
        .expect("PINGRESP in time")
        .unwrap();
    assert_eq!(resp, [0xd0, 0x00]);
    // ...then 1.5 keep-alive periods of silence close it, and the will goes out.
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    expect_offline(&mut svc, A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_takes_over_without_a_will_and_keeps_the_session() {
    let (handle, fleet) = start(|_| {}).await;
    let mut svc = presence_watcher(&handle, &fleet, A).await;
    let cert = fleet.device(A);
    let cmd = topic(A, Channel::Cmd);

    let mut opts = tls_options(handle.local_addr(), &fleet.ca_pem, Some(&cert), A);
    opts.set_clean_session(false);
    opts.set_last_will(will(&topic(A, Channel::Presence)));
    let mut first = Client::connected(opts.clone()).await;
    first.subscribe(&cmd).await;

    // The same device connects again while the first connection is still open.
    let mut second = spawn(opts.clone());
    second
        .expect_connack()
        .await
        .expect("second connection accepted");
    assert!(
        first.disconnected_within(SHORT).await,
        "the earlier connection is closed"
    );
    eventually("one session left", || sessions_of(&handle, A) == 1).await;
    assert!(
        svc.publish_on(Duration::from_millis(500), &topic(A, Channel::Presence))
            .await
            .is_err(),
        "a takeover is not an offline device: no will"
    );

    // The persistent session (its subscription) carried over to the new connection...
    svc.client
        .publish(&cmd, QoS::AtLeastOnce, false, b"one".to_vec())
        .await
        .unwrap();
    let p = second
        .publish_on(SHORT, &cmd)
        .await
        .expect("delivered to the new connection");
    assert_eq!(&p.payload[..], b"one");

    // ...and a QoS 1 message sent while the device is away waits for it.
    second.client.disconnect().await.unwrap();
    assert!(second.disconnected_within(SHORT).await);
    eventually("device gone", || {
        handle.connected().iter().all(|s| s.identity.id != A)
    })
    .await;
    svc.client
        .publish(&cmd, QoS::AtLeastOnce, false, b"two".to_vec())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = Client::connected(opts).await;
    let p = third
        .publish_on(SHORT, &cmd)
        .await
        .expect("queued message delivered");
    assert_eq!(&p.payload[..], b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_takeovers_in_a_row_leave_exactly_one_working_session() {
    let (handle, fleet) = start(|_| {}).await;
    let cert = fleet.device(A);
    let cmd = topic(A, Channel::Cmd);
    let mut opts = tls_options(handle.local_addr(), &fleet.ca_pem, Some(&cert), A);
    opts.set_clean_session(false);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(spawn(opts.clone()));
    }
    // Each gets in (and is replaced later) or is superseded while waiting for its turn.
    let mut accepted = 0;
    for c in &mut clients {
        accepted += usize::from(c.expect_connack().await.is_ok());
    }
    assert!(accepted >= 1, "at least the newest of them got in");
    // One more, after all of them: it is the one that is served.
    let mut last = Client::connected(opts).await;
    last.subscribe(&cmd).await;
    eventually("one session left", || sessions_of(&handle, A) == 1).await;
    let svc_cert = fleet.service();
    let svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.client
        .publish(&cmd, QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    last.publish_on(SHORT, &cmd)
        .await
        .expect("the last connection is served");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_still_revoked() {
    let (handle, fleet) = start(|_| {}).await;
    let cert = fleet.device(A);
    let cmd = topic(A, Channel::Cmd);
    let mut s = raw_session(&handle, &fleet, &cert, 60).await;
    let mut sub = bytes::BytesMut::new();
    RawPacket::Subscribe(rumqttc::mqttbytes::v4::Subscribe::new(
        &cmd,
        QoS::AtMostOnce,
    ))
    .write(&mut sub, usize::MAX)
    .unwrap();
    s.write_all(&sub).await.unwrap();
    let mut suback = [0u8; 5];
    timeout(SHORT, s.read_exact(&mut suback))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(suback[0], 0x90);

    // The device stops reading; far more than the socket buffers hold is sent to it.
    let svc_cert = fleet.service();
    let svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    for _ in 0..300 {
        svc.client
            .publish(&cmd, QoS::AtMostOnce, false, vec![0u8; 100_000])
            .await
            .unwrap();
    }
    eventually("all sent", || handle.metrics().messages_in == 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = handle.metrics();
    assert!(
        m.bytes_out < m.bytes_in / 2,
        "the device's buffers are full: {m:?}"
    );
    assert!(handle.revoke(&cert.serial).unwrap());
    eventually("revoked session closed", || {
        handle.connected().iter().all(|c| c.identity.id != A)
    })
    .await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_wildcard_subscriber_gets_every_retained_message_not_one_rounds_worth() {
    // A service that restarts after its devices reconnected learns of them from their
    // retained presences; rumqttd upstream forwarded one scheduling round's worth (200 at
    // QoS 0) and dropped the rest.
    const N: usize = 1_000;
    let (handle, fleet) = start(|_| {}).await;
    let publisher_cert = fleet.service();
    let mut publisher = Client::device(&handle, &fleet, &publisher_cert, "svc").await;
    for i in 0..N {
        publisher
            .client
            .publish(
                topic(&format!("dev{i:04}"), Channel::Presence),
                QoS::AtLeastOnce,
                true,
                b"online".to_vec(),
            )
            .await
            .expect("queue publish");
    }
    // The last PUBACK: every retained message is stored.
    let mut acked = 0;
    while acked < N {
        publisher
            .wait_for(Duration::from_secs(10), |p| {
                matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
            })
            .await
            .expect("every PUBACK");
        acked += 1;
    }

    let late_cert = fleet
        .ca
        .issue_service("svc-late", common::DAY)
        .expect("issue service");
    let mut late = Client::device(&handle, &fleet, &late_cert, "svc-late").await;
    late.client
        .subscribe("hammer/v1/dev/+/presence", QoS::AtMostOnce)
        .await
        .expect("queue subscribe");
    late.suback().await.expect("suback");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N {
        let p = late
            .wait_for(Duration::from_secs(10), |p| match p {
                rumqttc::Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|e| panic!("{e} after {} of {N} retained presences", seen.len()));
        assert!(seen.insert(p.topic.clone()), "{} forwarded twice", p.topic);
    }
}
