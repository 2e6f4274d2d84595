//! A simulated Hammer device: one core, three ways to drive it.
//!
//! The core ([`session`]) is what every simulated device does as the real `hammer-manager`
//! does: an MQTT session under its enrolled identity ([`identity`]: mTLS, client id = device
//! id, the offline presence as last will, a fresh epoch), subscribe after every CONNACK and
//! announce presence after the SUBACK, verify every message from the service ([`verify`]:
//! service key, device id, owner), judge a desired state against the generation acted on
//! ([`decide`]), number status events into an [`outbox`] that is resent until a signed ack
//! covers it, reconnect with a jittered backoff.
//!
//! On top of it, a [`session::Driver`] decides what to do with what was verified:
//!
//! - [`scripted`]: the service tests' device — a [`Behavior`] answers each newer desired
//!   state at once, everything received is kept for the test, and the test publishes raw
//!   status events with its own seqs.
//! - [`autonomous`]: the fleet simulator's device — each newer generation is a simulated
//!   rollout with fetch/start times, jitter and a failure rate, counted into [`FleetStats`].
//! - [`probe`]: the abuse bench's victim — a [`LatencyProbe`] reports `running` every period
//!   and measures each event's time from its first send to the signed ack ([`AckTimes`]).
//!
//! Errors are [`SimError`]; a received payload never panics or fails a device — one that
//! does not verify is handed to the driver as a [`verify::Refused`].

pub mod autonomous;
pub mod decide;
pub mod error;
pub mod identity;
pub mod outbox;
pub mod probe;
pub mod scripted;
pub mod session;
pub mod verify;

pub use autonomous::{AutonomousDevice, Finish, FleetStats, SimConfig};
pub use decide::{Behavior, DesiredDecision, Generations};
pub use error::SimError;
pub use identity::{mqtt_options, new_epoch, Credentials};
pub use outbox::{AckOutcome, Outbox};
pub use probe::{AckTimes, AckWindow, LatencyProbe};
pub use scripted::ScriptedDevice;
pub use session::{Backoff, Device, Driver, Report, Session, SessionConfig};
pub use verify::{Refused, Verifier};

/// A desired state for the unit tests (generation 3 of deployment `dep`, no commit).
#[cfg(test)]
pub(crate) fn test_desired(device: &str, owner: &str) -> hammer_protocol::DesiredState {
    hammer_protocol::DesiredState {
        v: hammer_protocol::PROTOCOL_VERSION,
        device_id: device.into(),
        owner: owner.into(),
        generation: 3,
        deployment_id: "dep".into(),
        repo_url: "file:///x".into(),
        git_ref: "main".into(),
        commit: None,
        start: "true".into(),
        env: Default::default(),
        health_window_secs: 1,
        health_cmd: None,
        run_state: hammer_protocol::RunState::Running,
        issued_at: 1,
        install: None,
        full_history: false,
    }
}
