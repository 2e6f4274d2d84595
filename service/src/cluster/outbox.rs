//! This replica's side of the talk between replicas: sending [`wire`] messages through the
//! broker, coalescing deployment progress, and matching engine replies to their requests.
//! Held by the shared state ([`crate::service::Service::cluster`]) so that ingestion and the
//! rollout engine can relay what they did.

use super::wire::{self, Body, EngineReply, EngineRequest, Envelope, WireHubEvent};
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Most engine requests of this replica waiting for their reply; more are refused at once.
pub const MAX_PENDING_REQUESTS: usize = 1024;
/// Most deployments whose progress waits to be relayed (one event each, the newest).
pub const MAX_PENDING_PROGRESS: usize = 4096;

/// Counted events of the cluster link, for `/metrics` and the logs.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Messages sent to other replicas.
    pub sent: AtomicU64,
    /// Messages that could not be sent (encoding or the MQTT client's queue).
    pub send_failed: AtomicU64,
    /// Frames refused as malformed, of another version or out of bounds.
    pub bad_frames: AtomicU64,
    /// Messages dropped half-assembled (late, evicted, over the size bound).
    pub dropped: AtomicU64,
    /// Deployment progress events replaced by a newer one before they were relayed.
    pub progress_coalesced: AtomicU64,
    /// Engine requests that got no answer in time.
    pub request_timeouts: AtomicU64,
    /// Frames from other replicas dropped because the cluster task's queue was full.
    pub inbound_shed: AtomicU64,
    /// Times this replica took the rollout lease (and started the engine).
    pub lease_taken: AtomicU64,
    /// Whether this replica holds the rollout lease and drives deployments now.
    pub leading: std::sync::atomic::AtomicBool,
}

impl ClusterCounters {
    /// The replica's lines of `/metrics` (Prometheus text format).
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut line = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        line(
            "hammer_rollout_lease_held",
            "1 while this replica holds the rollout lease and drives deployments (exactly one replica should).",
            "gauge",
            u64::from(self.leading.load(Ordering::Relaxed)),
        );
        line(
            "hammer_rollout_lease_taken_total",
            "Times this replica took the rollout lease.",
            "counter",
            get(&self.lease_taken),
        );
        line(
            "hammer_cluster_messages_sent_total",
            "Messages sent to the other replicas (relays, engine requests and replies).",
            "counter",
            get(&self.sent),
        );
        line(
            "hammer_cluster_send_failures_total",
            "Messages to other replicas that could not be sent.",
            "counter",
            get(&self.send_failed),
        );
        line(
            "hammer_cluster_bad_frames_total",
            "Frames from other replicas refused (malformed, another wire version, out of bounds).",
            "counter",
            get(&self.bad_frames),
        );
        line(
            "hammer_cluster_messages_dropped_total",
            "Messages from other replicas dropped half-assembled (late, evicted, too large).",
            "counter",
            get(&self.dropped),
        );
        line(
            "hammer_cluster_inbound_shed_total",
            "Frames from other replicas dropped because this replica's queue was full.",
            "counter",
            get(&self.inbound_shed),
        );
        line(
            "hammer_cluster_progress_coalesced_total",
            "Deployment progress events replaced by a newer one before they were relayed.",
            "counter",
            get(&self.progress_coalesced),
        );
        line(
            "hammer_cluster_request_timeouts_total",
            "Engine requests to the lease holder not answered in time (then retried).",
            "counter",
            get(&self.request_timeouts),
        );
        s
    }
}

/// Why an engine request to another replica failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("too many engine requests waiting for another replica ({MAX_PENDING_REQUESTS})")]
    TooMany,
    #[error("cannot send to replica {replica}: {reason}")]
    Send { replica: String, reason: String },
}

/// One engine request waiting for its answers: sent once or more (to whoever holds the
/// lease), under one id, so that an answer to an earlier attempt still counts. Dropping it
/// stops waiting.
pub struct PendingRequest<'a> {
    link: &'a ClusterLink,
    pub id: u64,
    pub answers: mpsc::Receiver<EngineReply>,
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        self.link
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The link to the other replicas.
pub struct ClusterLink {
    /// This replica's name (`--replica`).
    pub replica: String,
    /// This process's lease holder name, `NAME@INCARNATION` (random per start): a replica
    /// started again under the same name is another holder, so it cannot renew the lease
    /// of its previous run (which may still be alive, stalled) and the fence tells them apart.
    pub holder: String,
    mqtt: AsyncClient,
    next_msg: AtomicU64,
    next_request: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::Sender<EngineReply>>>,
    progress: Mutex<HashMap<String, WireHubEvent>>,
    pub counters: ClusterCounters,
}

impl ClusterLink {
    pub fn new(replica: String, mqtt: AsyncClient) -> ClusterLink {
        // Message numbers start from the clock so that a restarted replica does not reuse
        // the numbers its previous run had in flight.
        let start = hammer_protocol::now_ms() << 16;
        let mut rnd = [0u8; 4];
        // Without randomness the clock still tells two starts apart.
        let incarnation = match getrandom::getrandom(&mut rnd) {
            Ok(()) => hex::encode(rnd),
            Err(_) => format!("{:x}", start),
        };
        ClusterLink {
            holder: format!("{replica}@{incarnation}"),
            replica,
            mqtt,
            next_msg: AtomicU64::new(start),
            next_request: AtomicU64::new(start),
            pending: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            counters: ClusterCounters::default(),
        }
    }

    /// Sends `body` to `topic` (QoS 1), framed.
    pub async fn send(&self, topic: &str, body: Body) -> Result<(), String> {
        let env = Envelope {
            from: self.replica.clone(),
            body,
        };
        let msg = self.next_msg.fetch_add(1, Ordering::Relaxed);
        let frames = match wire::encode(&env, msg) {
            Ok(f) => f,
            Err(e) => {
                self.counters.send_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e.to_string());
            }
        };
        for f in frames {
            if let Err(e) = self.mqtt.publish(topic, QoS::AtLeastOnce, false, f).await {
                self.counters.send_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e.to_string());
            }
        }
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Relays a deployment's progress event to the other replicas' event streams, coalesced:
    /// only the newest event of each deployment is sent by the next [`Self::flush_progress`].
    pub fn offer_progress(&self, ev: WireHubEvent) {
        let key = ev.deployment.clone().unwrap_or_default();
        let mut g = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_PENDING_PROGRESS && !g.contains_key(&key) {
            // Bounded: the oldest pending events are not known, so one arbitrary one goes.
            // Its next step relays it again.
            if let Some(k) = g.keys().next().cloned() {
                g.remove(&k);
            }
        }
        if g.insert(key, ev).is_some() {
            self.counters
                .progress_coalesced
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the pending progress events.
    pub async fn flush_progress(&self) {
        let pending: Vec<WireHubEvent> = {
            let mut g = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            g.drain().map(|(_, v)| v).collect()
        };
        for ev in pending {
            if let Err(e) = self.send(wire::RELAY_TOPIC, Body::Hub(Box::new(ev))).await {
                tracing::debug!(error = %e, "cannot relay deployment progress");
            }
        }
    }

    /// Registers a request that will wait for its answers.
    pub fn open_request(&self) -> Result<PendingRequest<'_>, RequestError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        // A few answers: one per attempt at most matters, the rest are dropped.
        let (tx, rx) = mpsc::channel(4);
        let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_PENDING_REQUESTS {
            return Err(RequestError::TooMany);
        }
        g.insert(id, tx);
        Ok(PendingRequest {
            link: self,
            id,
            answers: rx,
        })
    }

    /// Sends (again) request `id` to replica `to`.
    pub async fn send_request(
        &self,
        to: &str,
        id: u64,
        request: EngineRequest,
    ) -> Result<(), RequestError> {
        self.send(&wire::rpc_topic(to), Body::Request { id, request })
            .await
            .map_err(|reason| RequestError::Send {
                replica: to.to_owned(),
                reason,
            })
    }

    /// Hands a reply to the request waiting for it (a late or unknown one is dropped).
    pub fn on_reply(&self, id: u64, reply: EngineReply) {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some(tx) = tx {
            let _ = tx.try_send(reply);
        }
    }
}
