//! The service's MQTT connection (rumqttc over mTLS with the service certificate). After
//! every CONNACK it subscribes again (rumqttc does not resubscribe) and republishes every
//! desired state and ack; it hands incoming messages to [`super::ingest`].
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
    let presence = super::presence::PresenceQueue::start(svc.clone(), stop.clone());
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop.changed() => break,
        };
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                failures = 0;
                tracing::info!("connected to the broker");
                let filters = subscriptions(svc.cluster.as_ref().map(|c| c.replica.as_str()));
                let svc = svc.clone();
                tokio::spawn(async move {
                    if let Err(e) = svc.mqtt.subscribe_many(filters).await {
                        tracing::warn!(error = %e, "cannot subscribe");
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
