//! Connect and disconnect events of authenticated sessions, reported by the front door itself.
//!
//! The service marks devices online and offline from these instead of wildcard-subscribing to
//! retained presence messages (rumqttd drops retained messages beyond the free inflight slots
//! on a wildcard subscribe, so 10,000 presence states cannot be rebuilt that way).
//!
//! A device that reconnects can produce `connected` for its new session before
//! `disconnected` for the old one; every event therefore carries a monotonic `session` number
//! and, for disconnects, `still_connected` (whether another session of the same principal is
//! live). Treat a principal as offline only when `still_connected` is false. The channel is a
//! bounded broadcast: a receiver that lags gets `RecvError::Lagged` and should resync from
//! [`crate::BrokerHandle::connected`].

use hammer_certs::Identity;
use std::net::SocketAddr;
use std::time::SystemTime;

/// One session of an authenticated principal starting or ending.
#[derive(Debug, Clone)]
pub struct ConnectionEvent {
    /// Who (from the client certificate).
    pub identity: Identity,
    /// True when the session was accepted by the internal broker, false when it ended.
    pub connected: bool,
    /// Monotonic session number, unique for the broker's lifetime.
    pub session: u64,
    /// For a disconnect: whether another session of the same principal is still live.
    pub still_connected: bool,
    /// The client's address.
    pub peer: SocketAddr,
    /// When it happened.
    pub at: SystemTime,
    /// For a disconnect: why it ended (e.g. "closed by client", "revoked", "acl_publish").
    pub reason: Option<String>,
}
