//! Broker configuration: where the front door listens, its TLS material, its limits, and the
//! sizing of the embedded rumqttd.

use crate::limits::RateLimit;
use hammer_certs::RevocationList;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Default TLS port of the front door.
pub const DEFAULT_PORT: u16 = 8883;

/// Everything the broker needs. Build it with [`BrokerConfig::new`] and adjust the public
/// fields; every limit has a sane default.
#[derive(Clone)]
pub struct BrokerConfig {
    /// Address the mTLS front door listens on (default `0.0.0.0:8883`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// PEM of the fleet CA certificate: client certificates must chain to it.
    pub ca_pem: String,
    /// PEM chain of the broker's server certificate.
    pub server_cert_pem: String,
    /// PEM of the server certificate's private key.
    pub server_key_pem: String,
    /// Revoked certificate serials, shared with whoever revokes (the service).
    pub revocations: Arc<RevocationList>,
    /// Time allowed from TCP accept to a complete TLS handshake and then again to the MQTT
    /// CONNECT packet (default 10 s).
    pub handshake_timeout: Duration,
    /// Maximum open client connections of every kind: idle, waiting, in their handshake and
    /// established (default 20,000). [`crate::Broker::start`] cuts it to the descriptor budget
    /// (see [`crate::limits::ConnectionLimits`] and the crate doc's "Connection budget").
    pub max_connections: usize,
    /// Maximum connections from one source IP address in their TLS handshake or CONNECT
    /// (default 256: NATed fleets and the simulator connect from a single address). A
    /// connection takes such a slot only once it has sent its first byte. Cut to
    /// `max_connections` at start.
    pub max_pending_per_ip: usize,
    /// Connections from one source address that may wait for one of those handshake slots
    /// (default 20,000, the whole connection budget; beyond it they are refused, and a wait
    /// ends at `slot_wait`). A fleet reconnecting from behind one address is served as slots
    /// free up, in arrival order, instead of being refused into its backoff; waiting
    /// connections are unauthenticated, so at the connection bound the oldest make room for
    /// new ones (the crate doc's "Connection budget"). Cut to `max_connections` at start.
    /// (Until issue 17 it was 4,096: queueing the whole budget had left the restarted service
    /// with presences and acks that never arrived, which were the service link's own faults,
    /// decisions 0024 and 0025; with those fixed, the storm's 3,300-4,200 refusals went to
    /// none. See BENCHMARKS.md.)
    pub max_waiting_per_ip: usize,
    /// How long a connection may wait for a handshake slot of its address, from its accept
    /// (default 10 s, the handshake timeout). The handshake that follows has its own
    /// `handshake_timeout`.
    pub slot_wait: Duration,
    /// Rate limit of each device identity (OU=device): every packet after CONNECT counts
    /// (default [`RateLimit::DEVICE`]: 50/s burst 1,000, 256 KiB/s burst 4 MiB). Over it the
    /// session is closed (refusal `rate_limit`). `None`: unlimited.
    pub device_rate_limit: Option<RateLimit>,
    /// Rate limit of the service identity (OU=service; default `None`: exempt). The service
    /// republishes a signed desired state and an ack for every device of the fleet after each
    /// start and in rollouts (tens of thousands of messages at once); it is our own process
    /// and bounds its own queues, and cutting it off would stall every device's resync.
    pub service_rate_limit: Option<RateLimit>,
    /// Largest MQTT packet accepted from a client, in bytes of remaining length (default
    /// [`hammer_protocol::MAX_PACKET`]).
    pub max_packet: usize,
    /// How often live connections are checked against the revocation list, for serials added
    /// to the list directly rather than through [`crate::BrokerHandle::revoke`] (default 500 ms).
    pub revocation_sweep: Duration,
    /// Capacity of the connect/disconnect event channel (default 8,192).
    pub event_capacity: usize,
    /// Sizing of the embedded rumqttd.
    pub internal: InternalConfig,
}

/// Sizing of the embedded rumqttd router.
///
/// rumqttd keeps every subscription filter's messages in a commit log of segments and evicts
/// the oldest segment when the log is full, whether or not every subscriber has read it; a
/// subscriber that falls further behind loses messages ("read cursor jumped"). So the
/// fleet-wide filters the service subscribes to (`hammer/v1/dev/+/status` and the like) get
/// room for a whole fleet's burst, while each device's own filters (its desired, cmd and ack:
/// three per device, kept for the life of the process) stay small, which bounds memory per
/// device. Nothing a device needs depends on that history: desired is retained, acks are
/// cumulative and the service re-sends both after every reconnect.
#[derive(Debug, Clone)]
pub struct InternalConfig {
    /// Bytes per segment of a fleet-wide filter (default 4 MiB; rumqttd needs >= 1 KiB).
    pub segment_size: usize,
    /// Segments kept per fleet-wide filter besides the active one (default 7: 32 MiB at most,
    /// about 130,000 status events, a 10,000-device rollout's burst twice over).
    pub segment_count: usize,
    /// Bytes per segment of one device's filter (default 8 KiB).
    pub device_segment_size: usize,
    /// Segments kept per device filter besides the active one (default 1: 16 KiB per filter,
    /// 48 KiB per device at most).
    pub device_segment_count: usize,
    /// Packets a connection gets from the router per scheduling round (default 200).
    pub max_outgoing_packet_count: u64,
    /// Packets of one client handed to the router in one event (default 100).
    pub client_batch: usize,
}

impl Default for InternalConfig {
    fn default() -> Self {
        InternalConfig {
            segment_size: 4 * 1024 * 1024,
            segment_count: 7,
            device_segment_size: 8 * 1024,
            device_segment_count: 1,
            max_outgoing_packet_count: 200,
            client_batch: 100,
        }
    }
}

impl BrokerConfig {
    /// A configuration listening on `0.0.0.0:8883` with default limits.
    pub fn new(
        ca_pem: impl Into<String>,
        server_cert_pem: impl Into<String>,
        server_key_pem: impl Into<String>,
        revocations: Arc<RevocationList>,
    ) -> BrokerConfig {
        BrokerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            ca_pem: ca_pem.into(),
            server_cert_pem: server_cert_pem.into(),
            server_key_pem: server_key_pem.into(),
            revocations,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            max_pending_per_ip: 256,
            max_waiting_per_ip: 20_000,
            slot_wait: Duration::from_secs(10),
            device_rate_limit: Some(RateLimit::DEVICE),
            service_rate_limit: None,
            max_packet: hammer_protocol::MAX_PACKET,
            revocation_sweep: Duration::from_millis(500),
            event_capacity: 8192,
            internal: InternalConfig::default(),
        }
    }

    /// Sets the listen address.
    pub fn with_listen(mut self, listen: SocketAddr) -> BrokerConfig {
        self.listen = listen;
        self
    }

    /// The same config with another per-device rate limit (`None`: unlimited).
    pub fn with_device_rate_limit(
        mut self,
        limit: Option<crate::limits::RateLimit>,
    ) -> BrokerConfig {
        self.device_rate_limit = limit;
        self
    }
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("BrokerConfig")
            .field("listen", &self.listen)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_pending_per_ip", &self.max_pending_per_ip)
            .field("max_waiting_per_ip", &self.max_waiting_per_ip)
            .field("slot_wait", &self.slot_wait)
            .field("device_rate_limit", &self.device_rate_limit)
            .field("service_rate_limit", &self.service_rate_limit)
            .field("max_packet", &self.max_packet)
            .field("revocation_sweep", &self.revocation_sweep)
            .field("event_capacity", &self.event_capacity)
            .field("internal", &self.internal)
            .finish_non_exhaustive()
    }
}
