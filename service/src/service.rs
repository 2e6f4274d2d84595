//! The shared state every part of the running service works on: store, keys, broker handle,
//! MQTT client, live device state, the event hub and the rollout engine's inbox.

use crate::live::Live;
use crate::metrics::Counters;
use crate::rollout::RolloutMsg;
use crate::store::Store;
use hammer_broker::BrokerHandle;
use hammer_certs::{Ca, RevocationList};
use hammer_protocol::api::Event;
use hammer_protocol::signing::SigningKeyPair;
use std::sync::Arc;
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
    pub enroll_limiter: crate::api::enroll::Limiter,
    /// Turns true when the service shuts down (ends event streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Browser sessions of the web UI ([`crate::web::session`]).
    pub sessions: crate::web::session::Sessions,
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
