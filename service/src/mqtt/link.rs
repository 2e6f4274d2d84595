//! The service's MQTT connection (rumqttc over mTLS with the service certificate). After
//! every CONNACK it subscribes again (rumqttc does not resubscribe) and republishes every
//! desired state and ack; it hands incoming messages to [`super::ingest`].

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

/// A client for the broker at `target`, authenticated by the service certificate.
pub fn client(
    target: &BrokerUrl,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let tls = hammer_certs::tls::client_config(ca_pem, cert_pem, key_pem)?;
    let mut opts = MqttOptions::new(crate::init::SERVICE_ID, target.host.clone(), target.port);
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

/// Runs the connection until `stop` turns true. Status payloads go to `status_tx` (the
/// batching ingest worker); everything else is handled here.
pub async fn run(
    svc: Arc<Service>,
    mut eventloop: EventLoop,
    status_tx: mpsc::Sender<(String, Vec<u8>)>,
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
                // QoS 0: what devices send is made reliable end to end (their outbox resends
                // until the service's ack says stored), so broker-side QoS 1 would only add
                // an in-flight window (100 messages) between the broker and the service.
                let filters = Channel::FROM_DEVICE
                    .iter()
                    .map(|c| SubscribeFilter::new(c.all_devices_filter(), QoS::AtMostOnce))
                    .collect::<Vec<_>>();
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
