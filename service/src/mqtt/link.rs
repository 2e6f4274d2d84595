//! The service's MQTT connection (rumqttc over mTLS with the service certificate). After
//! every CONNACK it subscribes again (rumqttc does not resubscribe) and republishes every
//! desired state and ack — except on the first CONNACK of the embedded broker: that broker
//! was started with this process and holds no device session yet, so every device connects
//! after the service and is resynced by its own presence ([`super::resync`]), and a
//! republish would only double the restart's work in a reconnect storm. It hands incoming
//! messages to [`super::ingest`].
//!
//! **Stall watchdog.** Every publish of the service at QoS 1 waits for the broker's PUBACK,
//! and at most `inflight` of them may wait at once; if the broker stops acknowledging (a
//! storm run on an overloaded 2-core machine once left the service's session unscheduled in
//! the router for good, while pings were still answered), every task that publishes — acks,
//! resyncs, rollouts — would wait forever. So when publishes wait and no PUBACK came for
//! [`STALL_AFTER`], the link is dropped and made again (a new session in the broker), counted
//! as `hammer_mqtt_link_stalls_total` and logged. It is checked at every event of the loop,
//! and a stalled loop still sees its keep-alive pings.
//!
//! With replicas (`--replica`), status events come through the shared subscription
//! `hammer_protocol::topics::STATUS_SHARED_SUBSCRIPTION` (each event to one replica), and what other replicas send on
//! `hammer/v1/svc/…` goes to the cluster task (see `crate::cluster`).

use crate::config::BrokerUrl;
use crate::service::Service;
use hammer_protocol::{Channel, Topic, MAX_PACKET};
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, SubscribeFilter, TlsConfiguration,
    Transport,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Publishes waiting this long without any PUBACK mean the broker stopped serving this
/// session: reconnect.
pub const STALL_AFTER: Duration = Duration::from_secs(20);

/// Whether the link stalled: publishes wait for the broker (`inflight` > 0) and the last
/// PUBACK (or the connection) was at least [`STALL_AFTER`] ago. Pure.
pub fn stalled(inflight: u16, since_ack: Duration) -> bool {
    inflight > 0 && since_ack >= STALL_AFTER
}

/// Capacity of the client's request queue.
const REQUEST_CAPACITY: usize = 16 * 1024;

/// A client for the broker at `target`, authenticated by the service certificate whose CN is
/// `client_id` (`hammer-service`, or a replica's `hammer-service-NAME`).
pub fn client(
    target: &BrokerUrl,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    client_id: &str,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let tls = hammer_certs::tls::client_config(ca_pem, cert_pem, key_pem)?;
    let mut opts = MqttOptions::new(client_id, target.host.clone(), target.port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    // Unacknowledged QoS 1 publishes (desired states, acks) in flight: a 10,000-device
    // rollout publishes 10,000 desired states at once, and 100 capped it at 100 per round trip.
    opts.set_inflight(1000);
    Ok(AsyncClient::new(opts, REQUEST_CAPACITY))
}

/// What the service subscribes to: every device channel it reads; with replicas
/// (`replica` is this one's name), status through the shared subscription and the replicas'
/// own topics.
pub fn subscriptions(replica: Option<&str>) -> Vec<SubscribeFilter> {
    // QoS 0: what devices send is made reliable end to end (their outbox resends until the
    // service's ack says stored), so broker-side QoS 1 would only add an in-flight window
    // (100 messages) between the broker and the service.
    let mut filters: Vec<SubscribeFilter> = Channel::FROM_DEVICE
        .iter()
        .map(|c| {
            let f = match (replica, c) {
                (Some(_), Channel::Status) => {
                    hammer_protocol::topics::STATUS_SHARED_SUBSCRIPTION.to_owned()
                }
                _ => c.all_devices_filter(),
            };
            SubscribeFilter::new(f, QoS::AtMostOnce)
        })
        .collect();
    if let Some(me) = replica {
        // QoS 1: relays and engine requests are not resent by anyone else.
        filters.push(SubscribeFilter::new(
            crate::cluster::wire::RELAY_TOPIC.to_owned(),
            QoS::AtLeastOnce,
        ));
        filters.push(SubscribeFilter::new(
            crate::cluster::wire::rpc_topic(me),
            QoS::AtLeastOnce,
        ));
    }
    filters
}

/// Runs the connection until `stop` turns true. Status payloads go to `status_tx` (the
/// batching ingest worker); everything else is handled here.
pub async fn run(
    svc: Arc<Service>,
    mut eventloop: EventLoop,
    status_tx: mpsc::Sender<(String, Vec<u8>)>,
    cluster_tx: Option<mpsc::Sender<Vec<u8>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    // The embedded broker started with this process: no device can be connected before us.
    let mut fresh_broker = svc.broker.is_some();
    let presence = super::presence::PresenceQueue::start(svc.clone(), stop.clone());
    let mut last_ack = std::time::Instant::now();
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop.changed() => break,
        };
        if matches!(
            ev,
            Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::ConnAck(_)))
        ) {
            last_ack = std::time::Instant::now();
        }
        let inflight = eventloop.state.inflight();
        if stalled(inflight, last_ack.elapsed()) {
            svc.counters
                .mqtt_link_stalls
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                inflight,
                waited_secs = last_ack.elapsed().as_secs(),
                "the broker acknowledged none of the service's waiting publishes; reconnecting the MQTT link"
            );
            eventloop.clean();
            last_ack = std::time::Instant::now();
            continue;
        }
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                failures = 0;
                tracing::info!("connected to the broker");
                let filters = subscriptions(svc.cluster.as_ref().map(|c| c.replica.as_str()));
                let svc = svc.clone();
                let republish = !std::mem::take(&mut fresh_broker);
                tokio::spawn(async move {
                    if let Err(e) = svc.mqtt.subscribe_many(filters).await {
                        tracing::warn!(error = %e, "cannot subscribe");
                    }
                    if !republish {
                        return;
                    }
                    if let Err(e) = crate::mqtt::publish::republish_all(&svc).await {
                        tracing::warn!(error = %e, "republish after connect failed");
                    }
                });
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if p.topic.starts_with(crate::cluster::wire::TOPIC_PREFIX) {
                    if let Some(tx) = &cluster_tx {
                        if tx.try_send(p.payload.to_vec()).is_err() {
                            if let Some(c) = &svc.cluster {
                                c.counters.inbound_shed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    continue;
                }
                let Ok(t) = Topic::parse(&p.topic) else {
                    crate::metrics::Counters::inc(&svc.counters.bad_payloads);
                    tracing::debug!(topic = %p.topic.chars().take(100).collect::<String>(), "ignoring unexpected topic");
                    continue;
                };
                match t.channel {
                    // Never wait here: ingestion publishes its acks through this same event
                    // loop, so a full queue would deadlock the two. Shedding is safe: the
                    // device resends every event until it is acked.
                    Channel::Status => {
                        match status_tx.try_send((t.device_id, p.payload.to_vec())) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                let shed = svc.counters.status_shed.fetch_add(1, Ordering::Relaxed);
                                if shed.is_multiple_of(10_000) {
                                    tracing::warn!(
                                        shed = shed + 1,
                                        "status ingestion is full; shedding (devices resend)"
                                    );
                                }
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => break,
                        }
                    }
                    // Coalesced per device, handled by a fixed pool: never a task per message.
                    Channel::Presence => presence.offer(&t.device_id, &p.payload),
                    Channel::Health => super::ingest::on_health(&svc, &t.device_id, &p.payload),
                    Channel::Logs => super::ingest::on_logs(&svc, &t.device_id, &p.payload),
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if matches!(failures, 1 | 10 | 100 | 1000) {
                    tracing::warn!(error = %e, "broker connection failed; retrying");
                }
                let wait = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    let _ = svc.mqtt.try_disconnect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_stalls_only_when_publishes_wait_past_the_bound() {
        assert!(!stalled(0, Duration::from_secs(3600)), "nothing waits");
        assert!(!stalled(5, STALL_AFTER - Duration::from_millis(1)));
        assert!(stalled(5, STALL_AFTER));
    }
}
