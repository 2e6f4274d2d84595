//! The shared state every part of the running service works on: store, keys, broker handle,
//! MQTT client, live device state, the event hub and the rollout engine's inbox.

use crate::config::Quotas;
use crate::live::Live;
use crate::metrics::{Counters, Gauges};
use crate::rollout::inbox::RolloutMsg;
use crate::store::Store;
use hammer_broker::BrokerHandle;
use hammer_certs::{Ca, RevocationList};
use hammer_protocol::api::Event;
use hammer_protocol::signing::SigningKeyPair;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

/// One event for the `/api/v1/events` stream, with what the stream filters on.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// The owner's user id: only they see it.
    pub owner: String,
    /// Device ids the event concerns.
    pub devices: Vec<String>,
    pub deployment: Option<String>,
    pub event: Event,
}

/// Where the running service is in its life, as far as clients see it. The one place the
/// draining state lives (`Service::phase`); stopping itself is `Service::shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// Ready: `/healthz` answers 200.
    Serving,
    /// Stopping soon: `/healthz` answers 503 so load balancers take this replica out, while
    /// everything else is still served until the drain grace ends.
    Draining,
}

/// Everything shared. Held in an `Arc`.
pub struct Service {
    pub store: Arc<dyn Store>,
    pub ca: Ca,
    pub ca_pem: String,
    pub signer: SigningKeyPair,
    pub revocations: Arc<RevocationList>,
    /// The embedded broker, when there is one.
    pub broker: Option<BrokerHandle>,
    /// `mqtts://host:port` handed to devices.
    pub device_broker_url: String,
    /// `https://host:port` of the enrollment listener, printed in enroll lines.
    pub enroll_url: String,
    pub mqtt: rumqttc::AsyncClient,
    pub live: Live,
    pub counters: Counters,
    pub hub: broadcast::Sender<HubEvent>,
    pub rollout: mpsc::Sender<RolloutMsg>,
    pub enroll_limiter: crate::limits::EnrollLimiter,
    /// Turns true when the service shuts down (ends event streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Serving or draining (set by `RunningService::drain`; read by `/healthz`).
    pub phase: tokio::sync::watch::Receiver<RunPhase>,
    /// Browser sessions of the web UI.
    pub sessions: crate::sessions::Sessions,
    /// What the store holds, counted as it changes (for `/metrics` and quotas).
    pub gauges: Arc<Gauges>,
    /// Per-user quotas.
    pub quotas: Quotas,
    /// Event streams open, by user (`--max-streams-per-user`).
    pub streams: StreamSlots,
    /// Held across a device quota check and the insert, so the quota is exact.
    pub device_insert: std::sync::Mutex<()>,
    /// SHA-256 (hex) of the bearer token `/metrics` requires, if any.
    pub metrics_token_hash: Option<String>,
    /// Whether `/metrics` is served on its own address (`--metrics-listen`) instead.
    pub metrics_elsewhere: bool,
    /// How often event streams send a keep-alive comment.
    pub sse_keep_alive: std::time::Duration,
    /// Counters of the HTTP listeners, rendered in `/metrics`.
    pub listeners: Vec<Arc<crate::http_stats::ListenerStats>>,
    /// With `--replica`: the link to the other replicas (relays, engine requests).
    pub cluster: Option<Arc<crate::cluster::outbox::ClusterLink>>,
    /// Webhook delivery: config and the worker's wake-up.
    pub webhooks: crate::webhooks::config::Webhooks,
}

/// Open event streams per user, at most `max` each.
#[derive(Debug)]
pub struct StreamSlots {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; given back when dropped (the client went away or the service stops).
#[derive(Debug)]
pub struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl StreamSlots {
    pub fn new(max: usize) -> StreamSlots {
        StreamSlots {
            max,
            open: Default::default(),
        }
    }

    /// The most streams one user may have open.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more stream of `user`, or `None` at the quota.
    pub fn try_open(&self, user: &str) -> Option<StreamSlot> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = g.entry(user.to_owned()).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                g.remove(user);
            }
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            open: self.open.clone(),
            user: user.to_owned(),
        })
    }

    /// Streams `user` has open.
    pub fn open_of(&self, user: &str) -> usize {
        let g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        g.get(user).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = g.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(&self.user);
            }
        }
    }
}

impl Service {
    /// Whether any event stream is open: building an event (a 10,000-target deployment view,
    /// say) is skipped when no one would see it.
    pub fn listening(&self) -> bool {
        self.hub.receiver_count() > 0
    }

    /// Sends an event to every stream that may see it (no one listening is fine).
    pub fn emit(
        &self,
        owner: &str,
        devices: Vec<String>,
        deployment: Option<String>,
        event: Event,
    ) {
        let _ = self.hub.send(HubEvent {
            owner: owner.to_owned(),
            devices,
            deployment,
            event,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_stop_at_the_quota_and_free_on_drop() {
        let slots = StreamSlots::new(2);
        let a = slots.try_open("alice").unwrap();
        let _b = slots.try_open("alice").unwrap();
        assert!(slots.try_open("alice").is_none());
        // Another user has their own quota.
        let _c = slots.try_open("bob").unwrap();
        drop(a);
        assert_eq!(slots.open_of("alice"), 1);
        assert!(slots.try_open("alice").is_some());
    }

    #[test]
    fn a_zero_stream_quota_refuses_every_stream() {
        let slots = StreamSlots::new(0);
        assert!(slots.try_open("alice").is_none());
        assert_eq!(slots.open_of("alice"), 0);
    }
}
