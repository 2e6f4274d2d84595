//! The service's MQTT connection (rumqttc over mTLS with the service certificate). After
//! every CONNACK it subscribes again (rumqttc does not resubscribe) and republishes every
//! desired state and ack — except on the first CONNACK of the embedded broker: that broker
//! was started with this process and holds no device session yet, so every device connects
//! after the service and is resynced by its own presence ([`super::resync`]), and a
//! republish would only double the restart's work in a reconnect storm. It hands incoming
//! messages to [`super::ingest`].
//!
//! **Stall watchdog.** Every publish of the service at QoS 1 waits for the broker's PUBACK,
//! and at most `inflight` of them may wait at once; if a broker (embedded or external) ever
//! stopped acknowledging while still answering pings, every task that publishes — acks,
//! resyncs, rollouts — would wait forever. So when publishes have waited [`STALL_AFTER`] with
//! no PUBACK, the link is dropped and made again (a new session in the broker), counted as
//! `hammer_mqtt_link_stalls_total` and logged. The wait is measured by [`StallClock`] from
//! when a publish first waited (or from the last PUBACK, whichever is later), never from an
//! earlier quiet time: a link idle for minutes whose next publish is answered in a
//! millisecond is not stalled. (Measured from the last PUBACK alone, as it first was, the
//! watchdog cut a healthy link whenever the service published after 20 quiet seconds: the
//! "lost PUBACK" of the first storm runs of issue 17.) It is checked at every event of the
//! loop, and a stalled loop still sees its keep-alive pings.
//!
//! **Nothing queued is lost when the link drops.** When the connection fails (or the watchdog
//! drops it), rumqttc moves the publishes in flight and everything still queued in its request
//! channel into its `pending` list — and clears that list on the next CONNACK of a clean
//! session, which the service's always is. So the link takes them out first ([`salvage`]) and,
//! once connected again, publishes them anew through the client, after subscribing and before
//! the republish: through the request queue, so the in-flight bound holds for them too
//! (replaying them through rumqttc's `pending` would bypass it). Counted as
//! `hammer_mqtt_link_replayed_total`. Bounded by construction: at most the in-flight bound plus
//! the request queue's capacity are held at a drop. A publish the broker took before the drop
//! may so go out twice; every receiver already takes repeats (signed, numbered, generations).
//!
//! With replicas (`--replica`), status events come through the shared subscription
//! `hammer_protocol::topics::STATUS_SHARED_SUBSCRIPTION` (each event to one replica), and what other replicas send on
//! `hammer/v1/svc/…` goes to the cluster task (see `crate::cluster`).

use crate::config::BrokerUrl;
use crate::service::Service;
use hammer_protocol::{Channel, Topic, MAX_PACKET};
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Publish, QoS, Request, SubscribeFilter,
    TlsConfiguration, Transport,
};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Publishes waiting this long without any PUBACK mean the broker stopped serving this
/// session: reconnect.
pub const STALL_AFTER: Duration = Duration::from_secs(20);

/// How long the service's publishes have waited for the broker. Pure: the caller passes
/// what it saw at each event of the loop and the time.
#[derive(Debug, Default)]
pub struct StallClock {
    /// Since when publishes wait with no PUBACK (`None`: nothing waits).
    waiting_since: Option<Instant>,
}

impl StallClock {
    /// Records one event: `inflight` publishes wait after it, `acked` says it was a PUBACK or
    /// a CONNACK (progress). Returns how long publishes have waited without progress.
    pub fn observe(&mut self, inflight: u16, acked: bool, now: Instant) -> Duration {
        if inflight == 0 {
            self.waiting_since = None;
            return Duration::ZERO;
        }
        let since = match self.waiting_since {
            Some(since) if !acked => since,
            _ => now,
        };
        self.waiting_since = Some(since);
        now.saturating_duration_since(since)
    }

    /// Starts over (the link was made again).
    pub fn reset(&mut self) {
        self.waiting_since = None;
    }
}

/// Whether publishes waited long enough to call the link stalled.
pub fn stalled(waited: Duration) -> bool {
    waited >= STALL_AFTER
}

/// Takes the publishes out of what rumqttc kept from a dropped connection (`pending`: in flight,
/// then queued), oldest first, with their packet ids cleared so the client numbers them anew.
/// Everything else there (acks of incoming publishes, pings, subscribes) belongs to the
/// dropped session and is left out: subscribing is done again at every CONNACK.
pub fn salvage(pending: &mut VecDeque<Request>) -> Vec<Publish> {
    pending
        .drain(..)
        .filter_map(|r| match r {
            Request::Publish(mut p) => {
                p.pkid = 0;
                p.dup = false;
                Some(p)
            }
            _ => None,
        })
        .collect()
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
    let mut clock = StallClock::default();
    // Publishes taken from a dropped connection, sent again after the next CONNACK.
    let mut salvaged: Vec<Publish> = Vec::new();
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop.changed() => break,
        };
        let acked = matches!(
            ev,
            Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::ConnAck(_)))
        );
        let inflight = eventloop.state.inflight();
        let waited = clock.observe(inflight, acked, Instant::now());
        if stalled(waited) {
            svc.counters
                .mqtt_link_stalls
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                inflight,
                waited_secs = waited.as_secs(),
                "the broker acknowledged none of the service's waiting publishes; reconnecting the MQTT link"
            );
            eventloop.clean();
            salvaged.extend(salvage(&mut eventloop.pending));
            clock.reset();
            continue;
        }
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                failures = 0;
                tracing::info!("connected to the broker");
                let filters = subscriptions(svc.cluster.as_ref().map(|c| c.replica.as_str()));
                let svc = svc.clone();
                let republish = !std::mem::take(&mut fresh_broker);
                let replay = std::mem::take(&mut salvaged);
                tokio::spawn(async move {
                    if let Err(e) = svc.mqtt.subscribe_many(filters).await {
                        tracing::warn!(error = %e, "cannot subscribe");
                    }
                    if !replay.is_empty() {
                        tracing::info!(
                            publishes = replay.len(),
                            "sending again what the dropped connection held"
                        );
                    }
                    for p in replay {
                        if svc
                            .mqtt
                            .publish_bytes(p.topic, p.qos, p.retain, p.payload)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        svc.counters
                            .mqtt_link_replayed
                            .fetch_add(1, Ordering::Relaxed);
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
                // rumqttc moved what was in flight and queued into `pending`; keep it.
                salvaged.extend(salvage(&mut eventloop.pending));
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

    fn publish(topic: &str, pkid: u16) -> Request {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, vec![1]);
        p.pkid = pkid;
        p.dup = pkid != 0;
        Request::Publish(p)
    }

    #[test]
    fn salvage_keeps_every_publish_in_order_renumbered_and_nothing_else() {
        let mut pending: VecDeque<Request> = [
            publish("a", 7),
            Request::PingReq(rumqttc::PingReq),
            publish("b", 8),
            Request::PubAck(rumqttc::PubAck::new(3)),
            publish("c", 0),
        ]
        .into();
        let kept = salvage(&mut pending);
        assert!(
            pending.is_empty(),
            "rumqttc must find nothing left to clear"
        );
        let topics: Vec<&str> = kept.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, ["a", "b", "c"]);
        assert!(kept.iter().all(|p| p.pkid == 0 && !p.dup));
        assert!(kept.iter().all(|p| p.qos == QoS::AtLeastOnce));
    }

    #[test]
    fn a_link_stalls_only_when_publishes_wait_past_the_bound() {
        let t0 = Instant::now();
        let mut c = StallClock::default();
        assert_eq!(c.observe(3, false, t0), Duration::ZERO);
        let almost = t0 + STALL_AFTER - Duration::from_millis(1);
        assert!(!stalled(c.observe(3, false, almost)));
        assert!(stalled(c.observe(3, false, t0 + STALL_AFTER)));
    }

    #[test]
    fn a_publish_after_a_quiet_hour_is_not_a_stall() {
        let t0 = Instant::now();
        let mut c = StallClock::default();
        // Connected, then nothing waits for an hour.
        c.observe(0, true, t0);
        c.observe(0, false, t0 + Duration::from_secs(3600));
        // One publish goes out: it has waited nothing yet.
        let out = t0 + Duration::from_secs(3600);
        assert_eq!(c.observe(1, false, out), Duration::ZERO);
        assert!(!stalled(c.observe(1, false, out + Duration::from_secs(1))));
    }

    #[test]
    fn each_puback_restarts_the_wait_while_others_still_wait() {
        let t0 = Instant::now();
        let mut c = StallClock::default();
        c.observe(100, false, t0);
        let later = t0 + STALL_AFTER - Duration::from_secs(1);
        assert_eq!(c.observe(99, true, later), Duration::ZERO);
        assert!(!stalled(c.observe(99, false, t0 + STALL_AFTER)));
        assert!(stalled(c.observe(99, false, later + STALL_AFTER)));
        // Nothing waits: the clock stops; the next wait starts from zero.
        c.observe(0, true, later + STALL_AFTER);
        assert_eq!(c.observe(1, false, later + STALL_AFTER * 3), Duration::ZERO);
    }
}
