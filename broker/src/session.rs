//! One authenticated client connection: reads its MQTT packets, enforces the ACL, rewrites
//! CONNECT (client id := certificate CN, internal credentials), and relays to rumqttd over a
//! loopback TCP connection; rumqttd's bytes are copied back unchanged.

use crate::acl::Acl;
use crate::events::ConnectionEvent;
use crate::front_door::{PendingGuard, Shared};
use crate::metrics::RefusalReason;
use crate::mqtt::{self, MqttError};
use crate::registry::Kick;
use bytes::BytesMut;
use hammer_certs::Identity;
use rumqttc::mqttbytes::v4::{Login, Packet};
use rumqttc::mqttbytes::Protocol;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How a session ended.
#[derive(Debug)]
enum End {
    /// Normal end (client or broker closed); the text says which.
    Closed(&'static str),
    /// Closed by the front door for a policy or protocol reason.
    Refused(RefusalReason, String),
    /// Closed from outside (revocation, kick, shutdown).
    Kicked(Kick),
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

fn refuse_log(
    shared: &Shared,
    identity: &Identity,
    peer: SocketAddr,
    reason: RefusalReason,
    detail: &str,
) {
    shared.metrics.refuse(reason);
    tracing::warn!(
        role = ?identity.role,
        id = %identity.id,
        serial = %identity.serial,
        %peer,
        reason = %reason,
        detail,
        "connection refused"
    );
}

fn mqtt_refusal(e: &MqttError) -> RefusalReason {
    match e {
        MqttError::TooLarge(_) => RefusalReason::PacketTooLarge,
        _ => RefusalReason::Malformed,
    }
}

/// Runs the session until either side closes or the front door closes it.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    tls: S,
    identity: Identity,
    peer: SocketAddr,
    pending: PendingGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(tls);
    let mut buf = BytesMut::with_capacity(4096);
    let max_packet = shared.config.max_packet;
    let acl = Acl::for_identity(&identity);

    // 1. CONNECT, within the handshake timeout.
    let first = timeout(
        shared.config.handshake_timeout,
        mqtt::read_packet(&mut client_rx, &mut buf, max_packet),
    )
    .await;
    let (mut connect, len) = match first {
        Err(_) => {
            refuse_log(
                &shared,
                &identity,
                peer,
                RefusalReason::Timeout,
                "no CONNECT in time",
            );
            return;
        }
        Ok(Ok(Some((Packet::Connect(c), len)))) => (c, len),
        Ok(Ok(None)) => return,
        Ok(Ok(Some((other, _)))) => {
            let detail = format!("first packet is not CONNECT: {}", packet_name(&other));
            refuse_log(&shared, &identity, peer, RefusalReason::Malformed, &detail);
            return;
        }
        Ok(Err(e)) => {
            refuse_log(&shared, &identity, peer, mqtt_refusal(&e), &e.to_string());
            return;
        }
    };
    shared.metrics.bytes_in.fetch_add(len as u64, Relaxed);
    if connect.protocol != Protocol::V4 {
        let _ = client_tx.write_all(&mqtt::connack(1)).await;
        refuse_log(
            &shared,
            &identity,
            peer,
            RefusalReason::Malformed,
            "not MQTT 3.1.1",
        );
        return;
    }
    if let Some(will) = &connect.last_will {
        if !acl.may_will(&will.topic) {
            let _ = client_tx.write_all(&mqtt::connack(5)).await;
            let detail = format!("will topic {:?}", short(&will.topic));
            refuse_log(&shared, &identity, peer, RefusalReason::AclWill, &detail);
            return;
        }
    }
    if !connect.client_id.is_empty() && connect.client_id != identity.id {
        tracing::debug!(id = %identity.id, asked = %short(&connect.client_id), "client id forced to the certificate CN");
    }
    connect.client_id = identity.id.clone();
    connect.login = Some(Login::new(
        shared.internal.username.clone(),
        shared.internal.password.clone(),
    ));
    if connect.keep_alive == 0 {
        // rumqttd refuses keep-alive 0; the longest one is the closest equivalent.
        connect.keep_alive = u16::MAX;
    }

    // 2. Upstream connection and its CONNACK.
    let mut upstream = match TcpStream::connect(shared.internal.addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the internal broker");
            let _ = client_tx.write_all(&mqtt::connack(3)).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut out = BytesMut::with_capacity(256);
    if mqtt::encode(&Packet::Connect(connect), &mut out).is_err()
        || upstream.write_all(&out).await.is_err()
    {
        return;
    }
    drop(pending);
    let mut connack = [0u8; 4];
    match timeout(
        shared.config.handshake_timeout,
        upstream.read_exact(&mut connack),
    )
    .await
    {
        Ok(Ok(_)) if connack[0] == 0x20 && connack[1] == 0x02 => {}
        _ => {
            tracing::warn!(id = %identity.id, %peer, "internal broker did not accept the session");
            let _ = client_tx.write_all(&mqtt::connack(3)).await;
            return;
        }
    }
    if connack[3] != 0 {
        let _ = client_tx.write_all(&connack).await;
        return;
    }

    // 3. Live: register and report (before the client sees its CONNACK, so that a kick or a
    // revocation right after the client's connect already finds the session), then relay.
    let session = shared.next_session.fetch_add(1, Relaxed);
    let mut kick = shared.registry.insert(session, identity.clone(), peer);
    shared.metrics.sessions_open.fetch_add(1, Relaxed);
    shared.metrics.sessions_total.fetch_add(1, Relaxed);
    let _ = shared.events.send(ConnectionEvent {
        identity: identity.clone(),
        connected: true,
        session,
        still_connected: true,
        peer,
        at: SystemTime::now(),
        reason: None,
    });
    tracing::info!(role = ?identity.role, id = %identity.id, %peer, session, "connected");

    let (mut up_rx, mut up_tx) = upstream.into_split();
    let connack_sent = client_tx.write_all(&connack).await.is_ok();
    shared.metrics.bytes_out.fetch_add(4, Relaxed);
    let end = if !connack_sent {
        End::Closed("client connection lost")
    } else {
        tokio::select! {
        e = client_to_broker(&shared, &acl, &mut client_rx, &mut buf, &mut up_tx) => e,
        e = broker_to_client(&shared, &mut up_rx, &mut client_tx) => e,
        k = kick.wait_for(|k| *k != Kick::None) => End::Kicked(k.map(|k| *k).unwrap_or(Kick::Shutdown)),
        }
    };
    let reason = match &end {
        End::Closed(why) => why.to_string(),
        End::Refused(r, detail) => {
            refuse_log(&shared, &identity, peer, *r, detail);
            r.as_str().to_owned()
        }
        End::Kicked(k) => {
            shared.metrics.kicked.fetch_add(1, Relaxed);
            if *k == Kick::Revoked {
                shared.metrics.refuse(RefusalReason::Revoked);
            }
            tracing::info!(role = ?identity.role, id = %identity.id, %peer, serial = %identity.serial, why = ?k, "connection closed by the broker");
            format!("{k:?}").to_lowercase()
        }
    };
    // Close both sides before reporting, so that "disconnected" means gone.
    drop(up_tx);
    drop(up_rx);
    let _ = timeout(std::time::Duration::from_millis(200), client_tx.shutdown()).await;
    drop(client_tx);
    drop(client_rx);

    let still_connected = shared.registry.remove(session);
    shared.metrics.sessions_open.fetch_sub(1, Relaxed);
    tracing::info!(role = ?identity.role, id = %identity.id, %peer, session, %reason, "disconnected");
    let _ = shared.events.send(ConnectionEvent {
        identity,
        connected: false,
        session,
        still_connected,
        peer,
        at: SystemTime::now(),
        reason: Some(reason),
    });
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

async fn client_to_broker<R, W>(
    shared: &Shared,
    acl: &Acl,
    client: &mut R,
    buf: &mut BytesMut,
    upstream: &mut W,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(4096);
    loop {
        let (packet, len) = match mqtt::read_packet(client, buf, shared.config.max_packet).await {
            Ok(Some(p)) => p,
            Ok(None) => return End::Closed("closed by client"),
            Err(MqttError::Io(_)) => return End::Closed("client connection lost"),
            Err(e) => return End::Refused(mqtt_refusal(&e), e.to_string()),
        };
        shared.metrics.bytes_in.fetch_add(len as u64, Relaxed);
        match &packet {
            Packet::Publish(p) => {
                if !acl.may_publish(&p.topic) {
                    return End::Refused(
                        RefusalReason::AclPublish,
                        format!("publish to {:?}", short(&p.topic)),
                    );
                }
                shared.metrics.messages_in.fetch_add(1, Relaxed);
            }
            Packet::Subscribe(s) => {
                if let Some(f) = s.filters.iter().find(|f| !acl.may_subscribe(&f.path)) {
                    return End::Refused(
                        RefusalReason::AclSubscribe,
                        format!("subscribe to {:?}", short(&f.path)),
                    );
                }
            }
            Packet::Unsubscribe(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::PingReq
            | Packet::Disconnect => {}
            other => {
                return End::Refused(
                    RefusalReason::Malformed,
                    format!("{} from a client", packet_name(other)),
                )
            }
        }
        out.clear();
        if let Err(e) = mqtt::encode(&packet, &mut out) {
            return End::Refused(RefusalReason::Malformed, e.to_string());
        }
        if upstream.write_all(&out).await.is_err() {
            return End::Closed("internal broker closed");
        }
        if matches!(packet, Packet::Disconnect) {
            return End::Closed("client sent DISCONNECT");
        }
    }
}

async fn broker_to_client<R, W>(shared: &Shared, upstream: &mut R, client: &mut W) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        match upstream.read(&mut buf).await {
            Ok(0) | Err(_) => return End::Closed("closed by the internal broker"),
            Ok(n) => {
                if client.write_all(&buf[..n]).await.is_err() {
                    return End::Closed("client connection lost");
                }
                shared.metrics.bytes_out.fetch_add(n as u64, Relaxed);
            }
        }
    }
}
