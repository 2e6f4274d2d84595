//! One authenticated client connection: reads its MQTT packets, enforces the ACL, and relays
//! them to the rumqttd router over an in-process link opened under the certificate's CN; the
//! router's packets for the client are encoded and written back.
//!
//! Takeover: a new connection of an identity that is already connected closes the earlier
//! session and waits until it has left the router before opening its own link, so the two
//! never overlap in the router (where a late DISCONNECT of the old link could otherwise hit
//! the new one). The will is the front door's to publish: on any end but a client DISCONNECT
//! or a takeover (the device is not offline then), before the link leaves the router.

use crate::acl::Acl;
use crate::admission::{PendingGuard, Shared};
use crate::events::ConnectionEvent;
use crate::limits::{Exceeded, Limiter};
use crate::metrics::RefusalReason;
use crate::mqtt::{self, MqttError};
use crate::registry::{self, Kick};
use crate::router::LinkRequest;
use crate::will;
use bytes::BytesMut;
use futures_util::FutureExt;
use hammer_certs::{Identity, Role};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, LastWill, Packet};
use rumqttd::Notification;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The client said DISCONNECT: no will.
    ClientDisconnect,
    /// The connection ended otherwise (lost, keep-alive); the text says how.
    Closed(&'static str),
    /// The router dropped the link (it can, e.g. on a protocol error it detects).
    RouterGone,
    /// Closed by the front door for a policy or protocol reason.
    Refused(RefusalReason, String),
    /// Closed from outside (revocation, kick, takeover, shutdown).
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

/// The client's side of a session.
pub(crate) struct Client<S> {
    rx: ReadHalf<S>,
    tx: WriteHalf<S>,
    buf: BytesMut,
}

/// What the CONNECT asked for, once checked.
pub(crate) struct Hello {
    clean_session: bool,
    keep_alive: u16,
    will: Option<LastWill>,
}

/// Reads and checks the CONNECT of a connection fresh from its TLS handshake. `None`:
/// refused (counted, logged, answered where the protocol has an answer). Nothing here has an
/// effect beyond the connection, so the front door may drop it at any point.
pub(crate) async fn hello<S>(
    shared: &Shared,
    tls: S,
    identity: &Identity,
    peer: SocketAddr,
) -> Option<(Client<S>, Hello)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (rx, tx) = tokio::io::split(tls);
    let mut client = Client {
        rx,
        tx,
        buf: BytesMut::with_capacity(4096),
    };
    let acl = Acl::for_identity(identity);
    let hello = read_connect(shared, &acl, identity, peer, &mut client).await?;
    Some((client, hello))
}

/// Answers a connection the front door refuses after its TLS handshake and certificate check
/// (the certificate is revoked, or has no usable identity) with CONNACK "not authorized", so
/// the device can tell why: reads its CONNECT within the handshake timeout and the packet
/// bound, as [`hello`] does, answers in the CONNECT's protocol version (MQTT 3.1.1: return
/// code 5; MQTT 5: reason code 0x87 with `why` as the reason string) and closes. No CONNECT in
/// time, another packet, garbage or another protocol: closed without an answer. The caller
/// has counted and logged the refusal; nothing here counts again.
pub(crate) async fn refuse_not_authorized<S>(
    shared: &Shared,
    mut tls: S,
    peer: SocketAddr,
    why: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_packet = shared.config.max_packet;
    let mut buf = BytesMut::with_capacity(1024);
    let framed = timeout(shared.config.handshake_timeout, async {
        loop {
            match rumqttd::protocol::v5::check(buf.iter(), max_packet) {
                Ok(_) => return true,
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                Err(_) => return false,
            }
            buf.reserve(4096);
            match tls.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    })
    .await;
    if !matches!(framed, Ok(true)) {
        tracing::debug!(%peer, "refused connection sent no CONNECT; closed without an answer");
        return;
    }
    shared.metrics.bytes_in.fetch_add(buf.len() as u64, Relaxed);
    let Some(answer) = not_authorized(buf, max_packet, why) else {
        tracing::debug!(%peer, "refused connection's first packet is no MQTT 3.1.1 or 5 CONNECT; closed without an answer");
        return;
    };
    let sent = timeout(shared.config.handshake_timeout, async {
        tls.write_all(&answer).await?;
        tls.flush().await?;
        tls.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        shared
            .metrics
            .bytes_out
            .fetch_add(answer.len() as u64, Relaxed);
        tracing::debug!(%peer, "answered CONNACK not authorized");
    }
}

/// The CONNACK "not authorized" for the CONNECT that is the complete frame at the front of
/// `buf`, in that CONNECT's protocol version. `None`: not an MQTT 3.1.1 or 5 CONNECT.
fn not_authorized(mut buf: BytesMut, max_packet: usize, why: &str) -> Option<Vec<u8>> {
    use rumqttd::protocol::v5::V5;
    use rumqttd::protocol::{ConnAck, ConnAckProperties, ConnectReturnCode, Protocol};
    let mut copy = buf.clone();
    match mqtt::parse(&mut buf, max_packet) {
        Ok(Some((Packet::Connect(..), _))) => return Some(mqtt::connack(5).to_vec()),
        Err(MqttError::UnsupportedProtocol) => {}
        _ => return None,
    }
    let Ok(Packet::Connect(_, properties, ..)) = V5.read_mut(&mut copy, max_packet) else {
        return None;
    };
    let ack = ConnAck {
        session_present: false,
        code: ConnectReturnCode::NotAuthorized,
    };
    let with_reason = ConnAckProperties {
        reason_string: Some(why.to_owned()),
        ..Default::default()
    };
    // The client's Maximum Packet Size bounds the answer; the bare code always fits.
    let limit = properties
        .and_then(|p| p.max_packet_size)
        .map_or(usize::MAX, |m| m as usize);
    let mut out = BytesMut::new();
    let fits = V5
        .write(Packet::ConnAck(ack.clone(), Some(with_reason)), &mut out)
        .is_ok_and(|n| n <= limit);
    if !fits {
        out.clear();
        V5.write(Packet::ConnAck(ack, None), &mut out).ok()?;
    }
    Some(out.to_vec())
}

/// Runs the session until either side closes or the front door closes it.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    mut client: Client<S>,
    hello: Hello,
    identity: Identity,
    peer: SocketAddr,
    pending: PendingGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let acl = Acl::for_identity(&identity);

    // Takeover: supersede the identity's earlier connections and wait until the one in the
    // router has left it.
    let slot = shared.registry.principal_slot(&identity);
    let mut ticket = 0;
    slot.newest.send_modify(|n| {
        *n += 1;
        ticket = *n;
    });
    let mut superseded = slot.newest.subscribe();
    let Ok(turn) = timeout(shared.config.handshake_timeout, slot.turn.lock()).await else {
        tracing::warn!(id = %identity.id, %peer, "the earlier session of this identity did not end in time");
        let _ = client.tx.write_all(&mqtt::connack(3)).await;
        return;
    };
    let newest = *superseded.borrow_and_update();
    if newest != ticket {
        tracing::debug!(id = %identity.id, %peer, "superseded by a newer connection before it started");
        return;
    }
    // The identity's rate buckets, as its previous session left them (taken under the turn,
    // so successive sessions of one identity share them and reconnecting refills nothing).
    let rate_key = registry::principal(&identity);
    let limit = match identity.role {
        Role::Device => shared.config.device_rate_limit,
        Role::Service => shared.config.service_rate_limit,
    };
    let mut limiter = limit.map(|l| shared.rates().take(&rate_key, l, std::time::Instant::now()));

    let router = shared.router.clone();
    let request = LinkRequest {
        client_id: identity.id.clone(),
        clean_session: hello.clean_session,
    };
    let opened = tokio::task::spawn_blocking(move || router.open_blocking(&request)).await;
    let (mut link_tx, mut link_rx, ack) = match opened {
        Ok(Ok(link)) => link,
        Ok(Err(e)) => {
            tracing::warn!(id = %identity.id, %peer, error = %e, "the router refused the session");
            let _ = client.tx.write_all(&mqtt::connack(3)).await;
            return;
        }
        Err(e) => {
            tracing::error!(id = %identity.id, error = %e, "opening a router link failed");
            let _ = client.tx.write_all(&mqtt::connack(3)).await;
            return;
        }
    };
    drop(pending);
    let mut connack = BytesMut::with_capacity(4);
    let encoded = match Option::<Packet>::from(ack) {
        Some(p @ Packet::ConnAck(..)) => mqtt::encode(p, &mut connack).is_ok(),
        _ => false,
    };
    if !encoded {
        tracing::error!(id = %identity.id, "the router answered the link without a CONNACK");
        leave_router(&mut link_tx, None).await;
        let _ = client.tx.write_all(&mqtt::connack(3)).await;
        return;
    }

    // Live: register and report (before the client sees its CONNACK, so that a kick or a
    // revocation right after the client's connect already finds the session), then relay.
    let session = shared.next_session.fetch_add(1, Relaxed);
    let mut kick = shared.registry.insert(session, identity.clone(), peer);
    // Revoked between the front door's check and now: the revocation sweep may already have
    // walked the sessions without this one.
    if shared.revocations.is_revoked(&identity.serial) {
        shared
            .registry
            .kick_where(Kick::Revoked, |e| e.identity.serial == identity.serial);
    }
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

    let connack_sent = client.tx.write_all(&connack).await.is_ok();
    shared
        .metrics
        .bytes_out
        .fetch_add(connack.len() as u64, Relaxed);
    let end = if !connack_sent {
        End::Closed("client connection lost")
    } else {
        let relay = Relay {
            shared: &shared,
            acl: &acl,
            keep_alive: hello.keep_alive,
        };
        let mut stop = Stop {
            kick: &mut kick,
            superseded: &mut superseded,
            ticket,
        };
        relay
            .run(
                &mut client,
                &mut link_tx,
                &mut link_rx,
                &mut stop,
                &mut limiter,
            )
            .await
    };
    if let Some(l) = limiter {
        shared.rates().put(rate_key, l, std::time::Instant::now());
    }

    // Leave the router first (with the will where one is due), then let a waiting successor
    // in, then close the client.
    let will = match &end {
        End::ClientDisconnect | End::RouterGone | End::Kicked(Kick::Replaced) => None,
        _ => hello.will,
    };
    if !matches!(end, End::RouterGone) {
        leave_router(&mut link_tx, will).await;
    }
    drop(link_tx);
    drop(link_rx);
    drop(turn);

    let reason = match &end {
        End::ClientDisconnect => "client sent DISCONNECT".to_owned(),
        End::Closed(why) => why.to_string(),
        End::RouterGone => "closed by the router".to_owned(),
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
    let _ = timeout(Duration::from_millis(200), client.tx.shutdown()).await;
    drop(client);

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

/// Reads and checks the CONNECT, within the handshake timeout. `None`: refused (logged,
/// and answered with a CONNACK refusal where the protocol has one).
async fn read_connect<S>(
    shared: &Shared,
    acl: &Acl,
    identity: &Identity,
    peer: SocketAddr,
    client: &mut Client<S>,
) -> Option<Hello>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = timeout(
        shared.config.handshake_timeout,
        mqtt::read_packet(&mut client.rx, &mut client.buf, shared.config.max_packet),
    )
    .await;
    let (connect, will, len) = match first {
        Err(_) => {
            let reason = RefusalReason::Timeout;
            refuse_log(shared, identity, peer, reason, "no CONNECT in time");
            return None;
        }
        Ok(Ok(Some((Packet::Connect(c, _, will, _, _), len)))) => (c, will, len),
        Ok(Ok(None)) => return None,
        Ok(Ok(Some((other, _)))) => {
            let detail = format!("first packet is not CONNECT: {}", packet_name(&other));
            refuse_log(shared, identity, peer, RefusalReason::Malformed, &detail);
            return None;
        }
        Ok(Err(MqttError::UnsupportedProtocol)) => {
            let _ = client.tx.write_all(&mqtt::connack(1)).await;
            let reason = RefusalReason::Malformed;
            refuse_log(shared, identity, peer, reason, "not MQTT 3.1.1");
            return None;
        }
        Ok(Err(e)) => {
            refuse_log(shared, identity, peer, mqtt_refusal(&e), &e.to_string());
            return None;
        }
    };
    shared.metrics.bytes_in.fetch_add(len as u64, Relaxed);
    if let Some(will) = &will {
        let topic = String::from_utf8_lossy(&will.topic);
        if !acl.may_will(&topic) {
            let _ = client.tx.write_all(&mqtt::connack(5)).await;
            let detail = format!("will topic {:?}", short(&topic));
            refuse_log(shared, identity, peer, RefusalReason::AclWill, &detail);
            return None;
        }
    }
    if !connect.client_id.is_empty() && connect.client_id != identity.id {
        tracing::debug!(id = %identity.id, asked = %short(&connect.client_id), "client id forced to the certificate CN");
    }
    Some(Hello {
        clean_session: connect.clean_session,
        keep_alive: connect.keep_alive,
        will,
    })
}

/// Takes the link out of the router: publishes the will if one is due, then DISCONNECT (which
/// keeps a persistent session for the next connection). The router handles a link's events in
/// order, so both are done before any later link of this client id is opened.
async fn leave_router(link_tx: &mut LinkTx, will: Option<LastWill>) {
    if let Some(will) = will {
        // Into the same router event as the DISCONNECT: a second event would find the
        // connection gone (rumqttd logs that at ERROR).
        link_tx.buffer().push_back(will::publish(will));
    }
    let disconnect = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
    };
    let _ = link_tx.send(Packet::Disconnect(disconnect, None)).await;
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::Publish(..) => "PUBLISH",
        Packet::PubAck(..) => "PUBACK",
        Packet::PubRec(..) => "PUBREC",
        Packet::PubRel(..) => "PUBREL",
        Packet::PubComp(..) => "PUBCOMP",
        Packet::Subscribe(..) => "SUBSCRIBE",
        Packet::SubAck(..) => "SUBACK",
        Packet::Unsubscribe(..) => "UNSUBSCRIBE",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingReq(..) => "PINGREQ",
        Packet::PingResp(..) => "PINGRESP",
        Packet::Disconnect(..) => "DISCONNECT",
    }
}

/// The refusal detail of a rate limit (the identity is logged beside it, never a payload).
fn over(which: Exceeded, l: &Limiter) -> String {
    match which {
        Exceeded::Messages => format!(
            "more than {} packets/s (burst {})",
            l.limit.messages_per_sec, l.limit.message_burst
        ),
        Exceeded::Bytes => format!(
            "more than {} bytes/s (burst {})",
            l.limit.bytes_per_sec, l.limit.byte_burst
        ),
    }
}

/// What to do with one client packet.
enum Verdict {
    Forward,
    Ping,
    Disconnect,
    Refuse(RefusalReason, String),
}

fn check(acl: &Acl, packet: &Packet) -> Verdict {
    match packet {
        Packet::Publish(p, _) => {
            let topic = String::from_utf8_lossy(&p.topic);
            if !acl.may_publish(&topic) {
                let detail = format!("publish to {:?}", short(&topic));
                return Verdict::Refuse(RefusalReason::AclPublish, detail);
            }
        }
        Packet::Subscribe(s, _) => {
            if let Some(f) = s.filters.iter().find(|f| !acl.may_subscribe(&f.path)) {
                let detail = format!("subscribe to {:?}", short(&f.path));
                return Verdict::Refuse(RefusalReason::AclSubscribe, detail);
            }
        }
        Packet::PingReq(_) => return Verdict::Ping,
        Packet::Disconnect(..) => return Verdict::Disconnect,
        Packet::Unsubscribe(..)
        | Packet::PubAck(..)
        | Packet::PubRec(..)
        | Packet::PubRel(..)
        | Packet::PubComp(..) => {}
        other => {
            let detail = format!("{} from a client", packet_name(other));
            return Verdict::Refuse(RefusalReason::Malformed, detail);
        }
    }
    Verdict::Forward
}

/// Bytes of router packets gathered into one write to the client.
const WRITE_BATCH: usize = 64 * 1024;

/// What closes a live session from outside: a kick (revocation, request, shutdown) or a newer
/// connection of the same identity.
struct Stop<'a> {
    kick: &'a mut watch::Receiver<Kick>,
    superseded: &'a mut watch::Receiver<u64>,
    ticket: u64,
}

impl Stop<'_> {
    async fn wait(&mut self) -> End {
        let ticket = self.ticket;
        tokio::select! {
            _ = async { self.superseded.wait_for(|n| *n != ticket).await.is_ok() } => {
                End::Kicked(Kick::Replaced)
            }
            k = async { self.kick.wait_for(|k| *k != Kick::None).await.map(|k| *k) } => {
                End::Kicked(k.unwrap_or(Kick::Shutdown))
            }
        }
    }

    /// Writes `bytes` to the client unless a stop comes first: a client that stops reading
    /// must not delay its revocation or its successor.
    async fn write<W: AsyncWrite + Unpin>(&mut self, tx: &mut W, bytes: &[u8]) -> Result<(), End> {
        if bytes.is_empty() {
            return Ok(());
        }
        tokio::select! {
            r = tx.write_all(bytes) => r.map_err(|_| End::Closed("client connection lost")),
            end = self.wait() => Err(end),
        }
    }
}

/// The live part of a session.
struct Relay<'a> {
    shared: &'a Shared,
    acl: &'a Acl,
    keep_alive: u16,
}

impl Relay<'_> {
    async fn run<S>(
        &self,
        client: &mut Client<S>,
        link_tx: &mut LinkTx,
        link_rx: &mut LinkRx,
        stop: &mut Stop<'_>,
        limiter: &mut Option<Limiter>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // MQTT 3.1.1 §3.1.2.10: one and a half keep-alive periods of silence end the session.
        let idle =
            (self.keep_alive > 0).then(|| Duration::from_millis(1500 * self.keep_alive as u64));
        let mut deadline = Instant::now() + idle.unwrap_or(Duration::ZERO);
        let mut out = BytesMut::with_capacity(4096);
        let max_packet = self.shared.config.max_packet;
        loop {
            out.clear();
            tokio::select! {
                r = mqtt::read_packet(&mut client.rx, &mut client.buf, max_packet) => {
                    let first = match r {
                        Ok(Some(p)) => p,
                        Ok(None) => return End::Closed("closed by client"),
                        Err(MqttError::Io(_)) => return End::Closed("client connection lost"),
                        Err(e) => return End::Refused(mqtt_refusal(&e), e.to_string()),
                    };
                    if let Some(idle) = idle {
                        deadline = Instant::now() + idle;
                    }
                    let step = self
                        .client_packets(first, &mut client.buf, link_tx, &mut out, limiter)
                        .await;
                    if let Err(end) = stop.write(&mut client.tx, &out).await {
                        return end;
                    }
                    if let Some(end) = step {
                        return end;
                    }
                }
                n = link_rx.next() => {
                    let mut unscheduled = false;
                    let mut next = Some(n);
                    while let Some(n) = next.take() {
                        match n {
                            Err(_) => return End::RouterGone,
                            Ok(None) => {}
                            Ok(Some(n)) => match self.router_packet(n, &mut out) {
                                ToClient::Written => {}
                                ToClient::Unscheduled => unscheduled = true,
                                ToClient::Disconnect => return End::RouterGone,
                            },
                        }
                        if out.len() < WRITE_BATCH {
                            next = link_rx.next().now_or_never();
                        }
                    }
                    if let Err(end) = stop.write(&mut client.tx, &out).await {
                        return end;
                    }
                    self.shared.metrics.bytes_out.fetch_add(out.len() as u64, Relaxed);
                    if unscheduled && link_rx.wake().await.is_err() {
                        return End::RouterGone;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if idle.is_some() => {
                    return End::Closed("keep-alive expired");
                }
                end = stop.wait() => return end,
            }
        }
    }

    /// Handles `first` and every further complete packet already buffered (up to a batch),
    /// hands the allowed ones to the router in one go, and answers pings into `out`.
    async fn client_packets(
        &self,
        first: (Packet, usize),
        buf: &mut BytesMut,
        link_tx: &mut LinkTx,
        out: &mut BytesMut,
        limiter: &mut Option<Limiter>,
    ) -> Option<End> {
        let batch_max = self.shared.config.internal.client_batch.max(1);
        let max_packet = self.shared.config.max_packet;
        // Packets buffered together arrived together.
        let now = std::time::Instant::now();
        let mut batch = Vec::new();
        let mut end = None;
        let mut next = Some(first);
        while let Some((packet, len)) = next.take() {
            self.shared.metrics.bytes_in.fetch_add(len as u64, Relaxed);
            let mut verdict = check(self.acl, &packet);
            if let (Verdict::Forward | Verdict::Ping, Some(l)) = (&verdict, limiter.as_mut()) {
                if let Err(which) = l.allow(len, now) {
                    verdict = Verdict::Refuse(RefusalReason::RateLimit, over(which, l));
                }
            }
            match verdict {
                Verdict::Forward => {
                    if matches!(packet, Packet::Publish(..)) {
                        self.shared.metrics.messages_in.fetch_add(1, Relaxed);
                    }
                    batch.push(packet);
                }
                Verdict::Ping => out.extend_from_slice(&mqtt::PINGRESP),
                Verdict::Disconnect => {
                    end = Some(End::ClientDisconnect);
                    break;
                }
                Verdict::Refuse(reason, detail) => {
                    end = Some(End::Refused(reason, detail));
                    break;
                }
            }
            if batch.len() >= batch_max {
                break;
            }
            match mqtt::parse(buf, max_packet) {
                Ok(p) => next = p,
                Err(e) => {
                    end = Some(End::Refused(mqtt_refusal(&e), e.to_string()));
                    break;
                }
            }
        }
        // Whatever was allowed before a refusal still reaches the router, in order.
        if let Some(last) = batch.pop() {
            link_tx.buffer().extend(batch);
            if link_tx.send(last).await.is_err() {
                return Some(End::RouterGone);
            }
        }
        end
    }

    fn router_packet(&self, n: Notification, out: &mut BytesMut) -> ToClient {
        match Option::<Packet>::from(n) {
            None => ToClient::Unscheduled,
            Some(Packet::Disconnect(..)) => ToClient::Disconnect,
            Some(p) => {
                if let Err(e) = mqtt::encode(p, out) {
                    tracing::error!(error = %e, "cannot encode a packet from the router; dropped");
                }
                ToClient::Written
            }
        }
    }
}

enum ToClient {
    Written,
    Unscheduled,
    Disconnect,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5 as c5;

    fn v4_connect() -> BytesMut {
        let mut b = BytesMut::new();
        rumqttc::mqttbytes::v4::Packet::Connect(rumqttc::mqttbytes::v4::Connect::new("dev"))
            .write(&mut b, usize::MAX)
            .unwrap();
        b
    }

    fn v5_connect(max_packet_size: Option<u32>) -> BytesMut {
        let properties = max_packet_size.map(|m| {
            let mut p = c5::ConnectProperties::new();
            p.max_packet_size = Some(m);
            p
        });
        let connect = c5::Connect {
            keep_alive: 30,
            client_id: "dev".into(),
            clean_start: true,
            properties,
        };
        let mut b = BytesMut::new();
        c5::Packet::Connect(connect, None, None)
            .write(&mut b, None)
            .unwrap();
        b
    }

    fn read_v5(answer: &[u8]) -> c5::ConnAck {
        match c5::Packet::read(&mut BytesMut::from(answer), None) {
            Ok(c5::Packet::ConnAck(ack)) => ack,
            other => panic!("not a CONNACK: {other:?}"),
        }
    }

    #[test]
    fn not_authorized_answers_in_the_connects_version() {
        let answer = not_authorized(v4_connect(), 1024, "certificate revoked").unwrap();
        assert_eq!(answer, [0x20, 0x02, 0x00, 0x05]);

        let ack = read_v5(&not_authorized(v5_connect(None), 1024, "certificate revoked").unwrap());
        assert_eq!(ack.code, c5::ConnectReturnCode::NotAuthorized);
        let reason = ack.properties.and_then(|p| p.reason_string);
        assert_eq!(reason.as_deref(), Some("certificate revoked"));

        // A client that takes no packet that long gets the bare code.
        let answer = not_authorized(v5_connect(Some(8)), 1024, "certificate revoked").unwrap();
        assert!(answer.len() <= 8, "{answer:?}");
        let ack = read_v5(&answer);
        assert_eq!(ack.code, c5::ConnectReturnCode::NotAuthorized);
        assert!(ack.properties.and_then(|p| p.reason_string).is_none());
    }

    #[test]
    fn not_authorized_answers_nothing_but_a_connect() {
        let mut subscribe = BytesMut::new();
        rumqttc::mqttbytes::v4::Packet::Subscribe(rumqttc::mqttbytes::v4::Subscribe::new(
            "a/b",
            rumqttc::mqttbytes::QoS::AtMostOnce,
        ))
        .write(&mut subscribe, usize::MAX)
        .unwrap();
        assert!(not_authorized(subscribe, 1024, "x").is_none());
        // MQTT 3.1 ("MQIsdp", level 3): neither codec's.
        let mut v3 = v4_connect().to_vec();
        v3.splice(2..8, *b"\x00\x06MQIsdp");
        v3[1] += 2;
        v3[10] = 3;
        assert!(not_authorized(BytesMut::from(&v3[..]), 1024, "x").is_none());
        assert!(not_authorized(BytesMut::from(&[0xffu8; 16][..]), 1024, "x").is_none());
    }

    proptest::proptest! {
        /// Bytes after a CONNECT's protocol level (either version): an answer or none, never
        /// a panic.
        #[test]
        fn not_authorized_never_panics(
            level in 3u8..=5,
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let mut body = b"\x00\x04MQTT".to_vec();
            body.push(level);
            body.extend(rest);
            let mut frame = vec![0x10, body.len() as u8];
            frame.extend(body);
            let _ = not_authorized(BytesMut::from(&frame[..]), 1024, "x");
        }
    }
}
