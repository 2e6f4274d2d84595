//! An MQTT observer on the external broker (a read-only identity of the fleet CA): records
//! every desired state the service publishes (device, generation, payload digest) and every
//! status event the devices send (by device, epoch and seq), to check afterwards that no
//! generation carried two payloads and that the service stored each event exactly once.
//! Its session is persistent: a connection the broker breaks (seen once in CI, cause not
//! known) costs no event, and a reconnect that finds its session gone is a problem.

use hammer_protocol::signing::Signed;
use hammer_protocol::{decode, DesiredState, StatusEvent};
use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, QoS, SubscribeFilter, TlsConfiguration, Transport,
};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the observer saw.
#[derive(Default)]
pub struct Seen {
    /// (device id, generation) → digests of the payloads published for it.
    pub desired: BTreeMap<(String, u64), BTreeSet<u64>>,
    /// Desired-state publishes in all (republishes of the same payload included).
    pub desired_publishes: u64,
    /// device id → (epoch, seq) → the event (the first copy; resends must be equal).
    pub status: BTreeMap<String, BTreeMap<(u64, u64), StatusEvent>>,
    /// Status publishes in all (resends included).
    pub status_publishes: u64,
    /// Things that must not happen: a resend with other content, undecodable payloads.
    pub problems: Vec<String>,
    pub subscribed: bool,
    /// Connections after the first (each must have found its session).
    pub reconnects: u32,
    /// Set by [`Observer::stop`] before it disconnects: the connection closing after that is
    /// the observer's own doing, not a lost connection.
    pub stopping: bool,
}

pub struct Observer {
    pub seen: Arc<Mutex<Seen>>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn record(seen: &Mutex<Seen>, topic: &str, payload: &[u8]) {
    // hammer/v1/dev/{device}/{channel}
    let parts: Vec<&str> = topic.split('/').collect();
    let (Some(device), Some(channel)) = (parts.get(3), parts.get(4)) else {
        return;
    };
    let mut s = seen.lock().unwrap();
    match *channel {
        "desired" => {
            if payload.is_empty() {
                return; // a cleared retained message
            }
            let generation = decode::<Signed>(payload)
                .map_err(|e| e.to_string())
                .and_then(|signed| decode::<DesiredState>(&signed.body).map_err(|e| e.to_string()));
            match generation {
                Ok(d) => {
                    s.desired_publishes += 1;
                    s.desired
                        .entry((device.to_string(), d.generation))
                        .or_default()
                        .insert(digest(payload));
                }
                Err(e) => s
                    .problems
                    .push(format!("undecodable desired state on {topic}: {e}")),
            }
        }
        "status" => match decode::<StatusEvent>(payload) {
            Ok(ev) => {
                s.status_publishes += 1;
                let key = (ev.epoch, ev.seq);
                let first = s
                    .status
                    .entry(device.to_string())
                    .or_default()
                    .entry(key)
                    .or_insert_with(|| ev.clone())
                    .clone();
                if first != ev {
                    s.problems.push(format!(
                        "{device} sent (epoch {}, seq {}) twice with different content: {first:?} / {ev:?}",
                        key.0, key.1
                    ));
                }
            }
            Err(e) => s
                .problems
                .push(format!("undecodable status event on {topic}: {e}")),
        },
        _ => {}
    }
}

impl Observer {
    /// Connects as `cn` (certificate and key from the fleet CA) to `127.0.0.1:port` and
    /// subscribes to every device's desired state and status; returns once subscribed.
    pub async fn start(ca_pem: &str, cert_pem: &str, key_pem: &str, cn: &str, port: u16) -> Self {
        let tls = hammer_certs::tls::client_config(ca_pem, cert_pem, key_pem).unwrap();
        let mut opts = MqttOptions::new(cn, "127.0.0.1", port);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(false);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 64);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = seen.clone();
        let sub = client.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut connects = 0u32;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        // A persistent session: the broker keeps what arrives while the
                        // observer reconnects, so a broken connection loses nothing, unless
                        // the session itself is gone.
                        let first = connects == 0;
                        connects += 1;
                        if !first {
                            let mut s = seen2.lock().unwrap();
                            s.reconnects += 1;
                            if !ack.session_present {
                                s.problems.push(format!(
                                    "the observer's session was gone when it reconnected ({:.1}s after start): events may be missing",
                                    started.elapsed().as_secs_f64()
                                ));
                            }
                        }
                        if !ack.session_present {
                            let filters = ["hammer/v1/dev/+/desired", "hammer/v1/dev/+/status"]
                                .map(|t| SubscribeFilter::new(t.to_owned(), QoS::AtLeastOnce));
                            let _ = sub.subscribe_many(filters).await;
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        seen2.lock().unwrap().subscribed = true;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        record(&seen2, &p.topic, &p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if seen2.lock().unwrap().stopping {
                            return;
                        }
                        eprintln!(
                            "observer: connection lost {:.1}s after start: {e} (reconnecting to its session)",
                            started.elapsed().as_secs_f64()
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.lock().unwrap().subscribed {
            assert!(
                Instant::now() < deadline,
                "the observer did not subscribe within 30 s: {:?}",
                seen.lock().unwrap().problems
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Observer { seen, client, task }
    }

    pub fn stop(self) -> Arc<Mutex<Seen>> {
        self.seen.lock().unwrap().stopping = true;
        let _ = self.client.try_disconnect();
        self.task.abort();
        self.seen
    }
}
