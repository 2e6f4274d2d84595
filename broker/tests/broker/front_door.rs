//! End-to-end tests of the front door: real TLS, real rumqttc clients, loopback only.

use crate::common;

use common::*;
use hammer_broker::{ConnectionEvent, RefusalReason};
use hammer_protocol::topics::{topic, Channel};
use rumqttc::{MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const A: &str = "deva";
const B: &str = "devb";
const SHORT: Duration = Duration::from_secs(3);

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    id: &str,
    connected: bool,
) -> ConnectionEvent {
    timeout(Duration::from_secs(5), async {
        loop {
            let ev = rx.recv().await.expect("event");
            if ev.identity.id == id && ev.connected == connected {
                return ev;
            }
        }
    })
    .await
    .expect("event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_service_end_to_end() {
    let (handle, fleet) = start(|_| {}).await;
    let mut events = handle.subscribe_events();
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.subscribe(&Channel::Status.all_devices_filter()).await;
    svc.subscribe("$share/hammer/hammer/v1/dev/+/health").await;

    // Desired state retained before the device connects.
    svc.client
        .publish(
            topic(A, Channel::Desired),
            QoS::AtLeastOnce,
            true,
            b"gen1".to_vec(),
        )
        .await
        .unwrap();
    svc.wait_for(SHORT, |p| matches!(p, Packet::PubAck(_)).then_some(()))
        .await
        .unwrap();

    let a_cert = fleet.device(A);
    let mut a = Client::device(&handle, &fleet, &a_cert, A).await;
    let ev = next_event(&mut events, A, true).await;
    assert_eq!(ev.identity.role, hammer_certs::Role::Device);
    assert_eq!(ev.identity.owner.as_deref(), Some(OWNER));
    for c in Channel::TO_DEVICE {
        a.subscribe(&topic(A, c)).await;
    }
    let desired = a
        .publish_on(SHORT, &topic(A, Channel::Desired))
        .await
        .unwrap();
    assert_eq!(&desired.payload[..], b"gen1");

    // Device → service.
    a.client
        .publish(
            topic(A, Channel::Status),
            QoS::AtLeastOnce,
            false,
            b"running".to_vec(),
        )
        .await
        .unwrap();
    let status = svc
        .publish_on(SHORT, &topic(A, Channel::Status))
        .await
        .unwrap();
    assert_eq!(&status.payload[..], b"running");
    a.client
        .publish(
            topic(A, Channel::Health),
            QoS::AtMostOnce,
            false,
            b"ok".to_vec(),
        )
        .await
        .unwrap();
    svc.publish_on(SHORT, &topic(A, Channel::Health))
        .await
        .unwrap();

    // Service → device: command and ack.
    svc.client
        .publish(
            topic(A, Channel::Cmd),
            QoS::AtLeastOnce,
            false,
            b"restart".to_vec(),
        )
        .await
        .unwrap();
    let cmd = a.publish_on(SHORT, &topic(A, Channel::Cmd)).await.unwrap();
    assert_eq!(&cmd.payload[..], b"restart");
    svc.client
        .publish(
            topic(A, Channel::Ack),
            QoS::AtLeastOnce,
            false,
            b"7".to_vec(),
        )
        .await
        .unwrap();
    a.publish_on(SHORT, &topic(A, Channel::Ack)).await.unwrap();

    let m = handle.metrics();
    assert!(m.sessions_open >= 2, "{m:?}");
    assert!(m.messages_in >= 5, "{m:?}");
    assert!(m.bytes_in > 0 && m.bytes_out > 0);
    let text = handle.render_prometheus();
    assert!(text.contains("hammer_broker_sessions_open"));
    assert!(handle.connected().iter().any(|s| s.identity.id == A));

    // Clean disconnect is reported.
    a.client.disconnect().await.unwrap();
    let ev = next_event(&mut events, A, false).await;
    assert!(!ev.still_connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cannot_subscribe_outside_its_topics() {
    let (handle, fleet) = start(|_| {}).await;
    let a_cert = fleet.device(A);
    let filters = [
        topic(B, Channel::Cmd),
        topic(B, Channel::Desired),
        topic(B, Channel::Ack),
        topic(A, Channel::Status),
        "hammer/v1/dev/+/cmd".to_owned(),
        "hammer/v1/dev/+/+".to_owned(),
        "hammer/v1/dev/#".to_owned(),
        "hammer/v1/dev/deva/+".to_owned(),
        "hammer/v1/dev/deva/#".to_owned(),
        "#".to_owned(),
        "+/v1/dev/devb/cmd".to_owned(),
        "$share/g/hammer/v1/dev/devb/cmd".to_owned(),
    ];
    for f in &filters {
        let mut a = Client::device(&handle, &fleet, &a_cert, A).await;
        a.client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        assert!(
            a.disconnected_within(SHORT).await,
            "subscribe to {f} did not close the connection"
        );
    }
    eventually("acl_subscribe counted", || {
        handle.metrics().refused(RefusalReason::AclSubscribe) == filters.len() as u64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cannot_publish_as_another_or_on_inbound_channels() {
    let (handle, fleet) = start(|_| {}).await;
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.subscribe("hammer/v1/#").await;
    let b_cert = fleet.device(B);
    let mut b = Client::device(&handle, &fleet, &b_cert, B).await;
    b.subscribe(&topic(B, Channel::Cmd)).await;

    let a_cert = fleet.device(A);
    for t in [
        topic(B, Channel::Status),
        topic(B, Channel::Presence),
        topic(B, Channel::Cmd),
        topic(A, Channel::Cmd),
        topic(A, Channel::Desired),
        "hammer/v1/other".to_owned(),
    ] {
        let mut a = Client::device(&handle, &fleet, &a_cert, A).await;
        a.client
            .publish(&t, QoS::AtLeastOnce, false, b"forged".to_vec())
            .await
            .unwrap();
        assert!(
            a.disconnected_within(SHORT).await,
            "publish to {t} not refused"
        );
    }
    // Nothing forged reached anyone.
    assert!(svc
        .wait_for(Duration::from_millis(500), |p| matches!(
            p,
            Packet::Publish(_)
        )
        .then_some(()))
        .await
        .is_err());
    assert!(b
        .wait_for(Duration::from_millis(200), |p| matches!(
            p,
            Packet::Publish(_)
        )
        .then_some(()))
        .await
        .is_err());
    eventually("acl_publish counted", || {
        handle.metrics().refused(RefusalReason::AclPublish) == 6
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cannot_set_a_will_on_another_topic() {
    let (handle, fleet) = start(|_| {}).await;
    let a_cert = fleet.device(A);
    for t in [
        topic(B, Channel::Presence),
        topic(A, Channel::Cmd),
        topic(A, Channel::Status),
    ] {
        let mut opts = tls_options(handle.local_addr(), &fleet.ca_pem, Some(&a_cert), A);
        opts.set_last_will(will(&t));
        let mut a = spawn(opts);
        let r = a.expect_connack().await;
        assert!(r.is_err(), "will on {t} accepted");
    }
    eventually("acl_will counted", || {
        handle.metrics().refused(RefusalReason::AclWill) == 3
    })
    .await;

    // Its own presence is fine, and the service receives it when the device vanishes.
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.subscribe(&topic(A, Channel::Presence)).await;
    let mut opts = tls_options(handle.local_addr(), &fleet.ca_pem, Some(&a_cert), A);
    opts.set_last_will(will(&topic(A, Channel::Presence)));
    let a = Client::connected(opts).await;
    assert_eq!(handle.kick_device(A), 1);
    drop(a);
    expect_offline(&mut svc, A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cannot_take_another_client_id() {
    let (handle, fleet) = start(|_| {}).await;
    let b_cert = fleet.device(B);
    let mut b = Client::device(&handle, &fleet, &b_cert, B).await;
    b.subscribe(&topic(B, Channel::Cmd)).await;

    // A asks for B's client id: it is forced to its own CN, B stays connected.
    let a_cert = fleet.device(A);
    let mut a = Client::device(&handle, &fleet, &a_cert, B).await;
    a.subscribe(&topic(A, Channel::Cmd)).await;

    let svc_cert = fleet.service();
    let svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.client
        .publish(
            topic(B, Channel::Cmd),
            QoS::AtLeastOnce,
            false,
            b"for b".to_vec(),
        )
        .await
        .unwrap();
    svc.client
        .publish(
            topic(A, Channel::Cmd),
            QoS::AtLeastOnce,
            false,
            b"for a".to_vec(),
        )
        .await
        .unwrap();
    let got = b
        .publish_on(SHORT, &topic(B, Channel::Cmd))
        .await
        .expect("B still served");
    assert_eq!(&got.payload[..], b"for b");
    let got = a
        .publish_on(SHORT, &topic(A, Channel::Cmd))
        .await
        .expect("A served as A");
    assert_eq!(&got.payload[..], b"for a");
    let ids: Vec<String> = handle
        .connected()
        .into_iter()
        .map(|s| s.identity.id)
        .collect();
    assert!(
        ids.contains(&A.to_owned()) && ids.contains(&B.to_owned()),
        "{ids:?}"
    );
    assert!(!b.disconnected_within(Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused() {
    let (handle, fleet) = start(|_| {}).await;
    let addr = handle.local_addr();

    // Another CA (the client trusts our server, but its certificate is foreign).
    let other = Fleet::new();
    let foreign = other.device(A);
    let foreign_cfg = hammer_certs::tls::client_config(
        &fleet.ca_pem,
        &foreign.cert_pem,
        foreign.key_pem.as_deref().unwrap(),
    )
    .unwrap();
    let mut opts = MqttOptions::new(A, "127.0.0.1", addr.port());
    opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        Arc::new(foreign_cfg),
    )));
    assert!(
        spawn(opts).expect_connack().await.is_err(),
        "foreign CA accepted"
    );

    // No client certificate.
    assert!(!accepted(addr, &fleet, None, A).await);

    // Revoked before connecting.
    let revoked = fleet.device(B);
    handle.revoke(&revoked.serial).unwrap();
    assert!(!accepted(addr, &fleet, Some(&revoked), B).await);

    // Expired: issued for one second, used after it ran out.
    let expired = fleet
        .ca
        .issue_device("devc", OWNER, Duration::from_secs(1))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        spawn(tls_options(addr, &fleet.ca_pem, Some(&expired), "devc"))
            .expect_connack()
            .await
            .is_err()
    );

    eventually("tls refusals counted", || {
        let m = handle.metrics();
        m.refused(RefusalReason::Tls) >= 3 && m.refused(RefusalReason::Revoked) == 1
    })
    .await;
    assert_eq!(handle.metrics().sessions_total, 0);

    // A good one still works.
    let good = fleet.device(A);
    Client::device(&handle, &fleet, &good, A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_connected_device_disconnects_it() {
    let (handle, fleet) = start(|_| {}).await;
    let mut events = handle.subscribe_events();

    // Through the handle.
    let a_cert = fleet.device(A);
    let mut a = Client::device(&handle, &fleet, &a_cert, A).await;
    next_event(&mut events, A, true).await;
    let t0 = Instant::now();
    assert!(handle.revoke(&a_cert.serial).unwrap());
    assert!(a.disconnected_within(SHORT).await, "not disconnected");
    let ev = next_event(&mut events, A, false).await;
    assert_eq!(ev.reason.as_deref(), Some("revoked"));
    println!("revoked via handle: disconnected after {:?}", t0.elapsed());

    // Directly in the shared list (as the service does): the sweep closes it.
    let b_cert = fleet.device(B);
    let mut b = Client::device(&handle, &fleet, &b_cert, B).await;
    let t0 = Instant::now();
    fleet.revocations.revoke(&b_cert.serial).unwrap();
    assert!(
        b.disconnected_within(SHORT).await,
        "not disconnected by the sweep"
    );
    println!("revoked in the list: disconnected after {:?}", t0.elapsed());

    // And neither can come back.
    assert!(!accepted(handle.local_addr(), &fleet, Some(&a_cert), A).await);
    eventually("revocations counted", || {
        handle.metrics().refused(RefusalReason::Revoked) >= 3
    })
    .await;

    // Kick without revocation: it may come back.
    let c_cert = fleet.device("devc");
    let mut c = Client::device(&handle, &fleet, &c_cert, "devc").await;
    assert_eq!(handle.kick_device("devc"), 1);
    assert!(c.disconnected_within(SHORT).await);
    Client::device(&handle, &fleet, &c_cert, "devc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_block_new_clients_and_are_dropped() {
    let handshake_timeout = Duration::from_secs(2);
    let (handle, fleet) = start(|c| c.handshake_timeout = handshake_timeout).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(handle.local_addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let a_cert = fleet.device(A);
    let t0 = Instant::now();
    let mut a = Client::device(&handle, &fleet, &a_cert, A).await;
    let took = t0.elapsed();
    println!("device connected in {took:?} beside 50 idle sockets");
    assert!(took < Duration::from_secs(3), "connect took {took:?}");
    a.subscribe(&topic(A, Channel::Cmd)).await;

    // Each idle socket is closed by the broker after the handshake timeout.
    let deadline = Instant::now() + handshake_timeout + Duration::from_secs(3);
    for mut s in idle {
        let mut byte = [0u8; 1];
        let r = timeout(
            deadline.saturating_duration_since(Instant::now()),
            s.read(&mut byte),
        )
        .await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "idle socket not dropped: {r:?}"
        );
    }
    eventually("timeouts counted", || {
        let m = handle.metrics();
        m.refused(RefusalReason::Timeout) == 50 && m.handshakes_pending == 0
    })
    .await;
    // The device is unaffected.
    assert!(!a.disconnected_within(Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_per_address_are_capped() {
    let (handle, fleet) = start(|c| {
        c.max_pending_per_ip = 5;
        c.max_waiting_per_ip = 1;
    })
    .await;
    // Five stalled handshakes (one byte of a TLS record, then nothing) hold the address's
    // five handshake slots; a socket takes a slot only once it has sent a byte.
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(handle.local_addr()).await.unwrap();
        s.write_all(&[0x16]).await.unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A device waits for a slot (the waiting room holds one)...
    let b_cert = fleet.device(B);
    let mut waiting = spawn(tls_options(
        handle.local_addr(),
        &fleet.ca_pem,
        Some(&b_cert),
        B,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so the next one is refused.
    let a_cert = fleet.device(A);
    assert!(!accepted(handle.local_addr(), &fleet, Some(&a_cert), A).await);
    eventually("limit counted", || {
        handle.metrics().refused(RefusalReason::Limit) >= 1
    })
    .await;
    // The waiting device gets the first slot that frees up.
    drop(idle.pop());
    waiting
        .expect_connack()
        .await
        .expect("served once a slot freed up");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Client::device(&handle, &fleet, &a_cert, A).await;
}

fn connect_bytes(id: &str) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(rumqttc::mqttbytes::v4::Connect::new(id))
        .write(&mut buf, usize::MAX)
        .unwrap();
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_close_only_that_connection() {
    let (handle, fleet) = start(|_| {}).await;
    let svc_cert = fleet.service();
    let mut svc = Client::device(&handle, &fleet, &svc_cert, "svc").await;
    svc.subscribe(&Channel::Status.all_devices_filter()).await;
    let b_cert = fleet.device(B);
    let mut b = Client::device(&handle, &fleet, &b_cert, B).await;

    let a_cert = fleet.device(A);
    // Oversized PUBLISH after a good CONNECT: header announces more than MAX_PACKET.
    let mut s = raw_tls(handle.local_addr(), &fleet, &a_cert).await;
    s.write_all(&connect_bytes(A)).await.unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let len = hammer_protocol::MAX_PACKET + 1;
    let mut header = vec![0x30u8];
    let mut x = len;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        header.push(byte);
        if x == 0 {
            break;
        }
    }
    s.write_all(&header).await.unwrap();
    let _ = s.write_all(&[0u8; 1024]).await;
    assert!(
        closed_within(&mut s, SHORT).await,
        "oversized packet not refused"
    );

    // Garbage instead of CONNECT.
    let mut s = raw_tls(handle.local_addr(), &fleet, &a_cert).await;
    s.write_all(&[0xff; 64]).await.unwrap();
    assert!(closed_within(&mut s, SHORT).await, "garbage not refused");

    // Garbage after CONNECT.
    let mut s = raw_tls(handle.local_addr(), &fleet, &a_cert).await;
    s.write_all(&connect_bytes(A)).await.unwrap();
    s.read_exact(&mut connack).await.unwrap();
    s.write_all(b"\x00\x01\x02GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, SHORT).await,
        "garbage after CONNECT not refused"
    );

    // Plain (non-TLS) bytes on the TLS port.
    let mut t = TcpStream::connect(handle.local_addr()).await.unwrap();
    t.write_all(&connect_bytes(A)).await.unwrap();
    let mut buf = [0u8; 64];
    let r = timeout(SHORT, t.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        !matches!(r, Ok(n) if n > 0 && buf[0] == 0x20),
        "plain MQTT got a CONNACK"
    );

    eventually("refusals counted", || {
        let m = handle.metrics();
        m.refused(RefusalReason::PacketTooLarge) == 1 && m.refused(RefusalReason::Malformed) == 2
    })
    .await;

    // The broker keeps serving the others.
    b.client
        .publish(
            topic(B, Channel::Status),
            QoS::AtLeastOnce,
            false,
            b"fine".to_vec(),
        )
        .await
        .unwrap();
    svc.publish_on(SHORT, &topic(B, Channel::Status))
        .await
        .expect("still serving");
    assert!(!b.disconnected_within(Duration::from_millis(200)).await);
}

/// The broker running on its own (`hammer broker`) shares only the revocation file with the
/// service: a serial the service writes there closes the live session and refuses new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_written_by_another_process_reaches_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revoked.json");
    let broker_list = Arc::new(hammer_certs::RevocationList::open(&path).unwrap());
    let (handle, fleet) = start(|c| c.revocations = broker_list.clone()).await;
    let a_cert = fleet.device(A);
    let mut a = Client::device(&handle, &fleet, &a_cert, A).await;

    // The service's own instance of the list, as in another process.
    let service_list = hammer_certs::RevocationList::open(&path).unwrap();
    let t0 = Instant::now();
    service_list.revoke(&a_cert.serial).unwrap();
    assert!(
        a.disconnected_within(SHORT).await,
        "not disconnected after the file changed"
    );
    println!(
        "revoked through the file: disconnected after {:?}",
        t0.elapsed()
    );
    assert!(!accepted(handle.local_addr(), &fleet, Some(&a_cert), A).await);
}

/// The first error of a rumqttc (MQTT 3.1.1) client's event loop.
async fn first_error(opts: MqttOptions) -> rumqttc::ConnectionError {
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 8);
    timeout(SHORT, async {
        loop {
            if let Err(e) = eventloop.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("an error in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_answered_not_authorized_and_others_still_connect() {
    let (handle, fleet) = start(|_| {}).await;
    let addr = handle.local_addr();
    let revoked = fleet.device(B);
    handle.revoke(&revoked.serial).unwrap();

    // MQTT 3.1.1 (what the device manager speaks): CONNACK return code 5.
    let e = first_error(tls_options(addr, &fleet.ca_pem, Some(&revoked), B)).await;
    assert!(
        matches!(
            e,
            rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized)
        ),
        "{e:?}"
    );

    // MQTT 5: reason code 0x87 (rumqttc's own v5 client) ...
    let tls = hammer_certs::tls::client_config(
        &fleet.ca_pem,
        &revoked.cert_pem,
        revoked.key_pem.as_deref().unwrap(),
    )
    .unwrap();
    let mut opts = rumqttc::v5::MqttOptions::new(B, "127.0.0.1", addr.port());
    opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 8);
    let e = timeout(SHORT, async {
        loop {
            if let Err(e) = eventloop.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("an error in time");
    assert!(
        matches!(
            e,
            rumqttc::v5::ConnectionError::ConnectionRefused(
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::NotAuthorized
            )
        ),
        "{e:?}"
    );

    // ... with the reason string, on the wire.
    let mut s = raw_tls(addr, &fleet, &revoked).await;
    let mut connect = bytes::BytesMut::new();
    rumqttc::v5::mqttbytes::v5::Packet::Connect(
        rumqttc::v5::mqttbytes::v5::Connect {
            keep_alive: 30,
            client_id: B.to_owned(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    )
    .write(&mut connect, None)
    .unwrap();
    s.write_all(&connect).await.unwrap();
    let mut answer = Vec::new();
    timeout(SHORT, s.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .ok();
    let mut answer = bytes::BytesMut::from(&answer[..]);
    match rumqttc::v5::mqttbytes::v5::Packet::read(&mut answer, None) {
        Ok(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack)) => {
            assert_eq!(
                ack.code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::NotAuthorized
            );
            let reason = ack.properties.and_then(|p| p.reason_string);
            assert_eq!(reason.as_deref(), Some("certificate revoked"));
        }
        other => panic!("not a CONNACK: {other:?}"),
    }

    // Counted as revocations; no session was opened for them.
    eventually("revocations counted", || {
        handle.metrics().refused(RefusalReason::Revoked) == 3
    })
    .await;
    assert_eq!(handle.metrics().sessions_total, 0);

    // A device that is not revoked still connects.
    let good = fleet.device(A);
    Client::device(&handle, &fleet, &good, A).await;
}
