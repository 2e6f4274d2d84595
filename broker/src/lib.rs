//! Hammer IoT broker: an embedded rumqttd behind a hardened mTLS front door that enforces
//! per-identity topic ACLs.
//!
//! rumqttd 0.20 alone has no per-topic ACL hook, takes the tenant only from the certificate's
//! O field and performs TLS handshakes serially in its accept loop (one idle socket stalls
//! every new TLS client). So this crate terminates mTLS itself ([`front_door`]), reads every
//! MQTT 3.1.1 packet ([`mqtt`]), forces the client id to the certificate's CN, checks the
//! CONNECT will, every SUBSCRIBE filter and every PUBLISH topic against the identity's
//! [`acl`], and hands the checked packets ([`session`]) to rumqttd's router over an
//! in-process link: no rumqttd listener runs, and a session costs one socket.
//!
//! # Refusal policy
//! Any packet outside the ACL closes the connection; it is never silently dropped and a
//! refused SUBSCRIBE does not get a SUBACK failure code. A well-behaved client never sends
//! one, so a refusal means a bug or an attack, and closing makes it loud on both sides (the
//! client sees the disconnect, the broker counts it by reason in [`MetricsSnapshot`] and logs
//! it with the identity at `warn`). A will outside the ACL and a protocol other than 3.1.1 get
//! a CONNACK refusal (5 "not authorized" / 1 "unacceptable protocol version") before the
//! close. TLS failures (no client certificate, another CA, expired) are refused before any
//! MQTT byte is read. A certificate from the fleet CA whose serial is revoked (or that has no
//! usable identity) passes the handshake and is refused after that check: the front door
//! reads its CONNECT (within the handshake timeout and the packet bound) and answers CONNACK
//! "not authorized" (3.1.1 return code 5; MQTT 5 reason code 0x87 with the reason string
//! "certificate revoked"), then closes; it is counted (`revoked`, resp. `tls`) and logged at
//! `warn` (a revoked one with its serial), and no session or router link is opened. Whatever
//! else it sends first (or nothing within the timeout) is closed without an answer. A session
//! already live when its serial is revoked is closed (no DISCONNECT: 3.1.1 has none from the
//! server). Payloads are never logged.
//!
//! Rate: every identity has token buckets for packets and bytes per second (every packet it
//! sends after CONNECT counts; [`BrokerConfig::device_rate_limit`], default
//! [`RateLimit::DEVICE`]; the service is exempt unless [`BrokerConfig::service_rate_limit`] is
//! set). Over either, the session is closed like an ACL refusal (`rate_limit`, logged once
//! with the identity: the session ends there). The buckets belong to the identity, not the
//! connection: a reconnect starts with the buckets as the last session left them.
//!
//! # Connection budget
//! Every accepted socket costs a file descriptor, so the front door holds at most
//! `max_connections` connections of every kind together (idle, waiting for a handshake slot,
//! in the TLS handshake or CONNECT, established), and [`Broker::start`] cuts
//! `max_connections`, `max_pending_per_ip` and `max_waiting_per_ip` to the budget of the soft
//! `RLIMIT_NOFILE` minus a reserve for the rest of the process (`max(limit / 10, 256)`;
//! [`limits::ConnectionLimits`], logged at start and on [`BrokerHandle::connection_limits`]).
//! Call [`limits::raise_nofile`] before starting the broker to get the hard limit's budget.
//!
//! At the bound a new connection is accepted and then:
//! - if some connection has not authenticated yet (no CONNECT read), the oldest such one is
//!   closed to make room (`evicted`) and the new one takes its slot. An idle flood thus
//!   evicts itself while a real device, which completes its handshake in milliseconds, gets
//!   in: it would be evicted only if a whole budget's worth of newer connections arrived
//!   during its own handshake;
//! - if every connection is an authenticated session, the new one is closed at once (`limit`).
//!
//! A connection takes a handshake slot of its source address only once it has sent its first
//! byte, so idle sockets never hold those slots; a source address that sends bytes and then
//! stalls can still fill its own address's slots and waiting room (`limit`), delaying devices
//! behind the same address (NAT) until the handshake timeout ends the stalled ones. Warnings at
//! the bound are logged at most once a second, with the number left out; every case is
//! counted.
//!
//! # Use
//! In process: [`Broker::start`] (inside a tokio runtime) returns a [`BrokerHandle`] for
//! events, metrics, revocation and kicks. Standalone (`hammer broker`): [`run_standalone`].
//! Call `hammer_certs::tls::install_default_provider()` first in either case.

pub mod acl;
mod admission;
pub mod config;
pub mod error;
pub mod events;
pub mod front_door;
pub mod limits;
pub mod metrics;
pub mod mqtt;
pub mod registry;
mod router;
pub mod session;
mod will;

pub use acl::Acl;
pub use config::{BrokerConfig, InternalConfig, DEFAULT_PORT};
pub use error::BrokerError;
pub use events::ConnectionEvent;
pub use limits::{raise_nofile, ConnectionLimits, RateLimit};
pub use metrics::{MetricsSnapshot, RefusalReason};
pub use registry::Kick;

use admission::Shared;
use hammer_certs::{CaCert, Identity, Role};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Starts brokers.
pub struct Broker;

impl Broker {
    /// Starts the rumqttd router and the front door. Must run inside a tokio runtime.
    pub async fn start(mut config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        let ca = CaCert::from_pem(&config.ca_pem)
            .map_err(|e| BrokerError::Tls(format!("fleet CA: {e}")))?;
        let server = hammer_certs::tls::server_config_mtls(
            &ca,
            &config.server_cert_pem,
            &config.server_key_pem,
        )
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

        let limits = apply_budget(&mut config, limits::soft_nofile());
        let max_connections = config.max_connections;
        let sizing = config.internal.clone();
        let router = router::start(max_connections, &sizing)?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| BrokerError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| BrokerError::Listen {
                addr: config.listen,
                source,
            })?;
        let (events, _) = broadcast::channel(config.event_capacity.max(16));
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            revocations: config.revocations.clone(),
            config,
            acceptor,
            ca,
            metrics: Default::default(),
            registry: Default::default(),
            events,
            router,
            next_session: AtomicU64::new(1),
            next_connection: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            shutdown,
            limits,
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            unauthenticated: Mutex::new(Default::default()),
            rates: Mutex::new(Default::default()),
            limit_log: Default::default(),
            evict_log: Default::default(),
        });
        tokio::spawn(front_door::accept_loop(shared.clone(), listener));
        tokio::spawn(front_door::revocation_sweep(shared.clone()));
        tracing::info!(
            listen = %local_addr,
            nofile = limits.nofile,
            reserve = limits.reserve,
            max_connections = limits.max_connections,
            max_pending_per_ip = limits.max_pending_per_ip,
            max_waiting_per_ip = limits.max_waiting_per_ip,
            "broker front door listening"
        );
        Ok(BrokerHandle { shared, local_addr })
    }
}

/// Cuts the configuration's connection limits to the descriptor budget of `nofile` and
/// makes every rate limit able to pass a maximal packet.
fn apply_budget(config: &mut BrokerConfig, nofile: u64) -> ConnectionLimits {
    let limits = ConnectionLimits::size(
        nofile,
        config.max_connections,
        config.max_pending_per_ip,
        config.max_waiting_per_ip,
    );
    if limits.max_connections < config.max_connections {
        tracing::warn!(
            nofile,
            reserve = limits.reserve,
            wanted = config.max_connections,
            max_connections = limits.max_connections,
            "connection limit cut to the file descriptor budget; raise LimitNOFILE= (systemd) or `ulimit -n` for more"
        );
    }
    config.max_connections = limits.max_connections;
    config.max_pending_per_ip = limits.max_pending_per_ip;
    config.max_waiting_per_ip = limits.max_waiting_per_ip;
    let max_packet = config.max_packet as u64;
    for (role, limit) in [
        ("device", &mut config.device_rate_limit),
        ("service", &mut config.service_rate_limit),
    ] {
        if let Some(l) = limit {
            if l.byte_burst < max_packet || l.message_burst == 0 {
                tracing::warn!(
                    role,
                    byte_burst = l.byte_burst,
                    max_packet,
                    "rate limit burst raised so that one maximal packet can pass"
                );
                l.byte_burst = l.byte_burst.max(max_packet);
                l.message_burst = l.message_burst.max(1);
            }
        }
    }
    limits
}

/// One live authenticated session.
#[derive(Debug, Clone)]
pub struct ConnectedSession {
    pub session: u64,
    pub identity: Identity,
    pub peer: SocketAddr,
}

/// Handle on a running broker. Cheap to clone.
#[derive(Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl BrokerHandle {
    /// The address the front door listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connect and disconnect events of authenticated sessions, from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.shared.events.subscribe()
    }

    /// Every live authenticated session (for resync after a lagged event receiver).
    pub fn connected(&self) -> Vec<ConnectedSession> {
        self.shared
            .registry
            .snapshot()
            .into_iter()
            .map(|(session, identity, peer)| ConnectedSession {
                session,
                identity,
                peer,
            })
            .collect()
    }

    /// The connection limits in force, cut to the file descriptor budget at start.
    pub fn connection_limits(&self) -> ConnectionLimits {
        self.shared.limits
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The counters in Prometheus text format (`hammer_broker_*`).
    pub fn render_prometheus(&self) -> String {
        self.metrics().render_prometheus()
    }

    /// Adds `serial` to the revocation list and closes every live session using it. Returns
    /// whether the serial was newly added.
    pub fn revoke(&self, serial: &str) -> Result<bool, BrokerError> {
        let added = self
            .shared
            .revocations
            .revoke(serial)
            .map_err(|e| BrokerError::Revocation(e.to_string()))?;
        let revocations = &self.shared.revocations;
        self.shared.registry.kick_where(Kick::Revoked, |e| {
            revocations.is_revoked(&e.identity.serial)
        });
        Ok(added)
    }

    /// Closes every live session of device `device_id`; returns how many.
    pub fn kick_device(&self, device_id: &str) -> usize {
        self.shared.registry.kick_where(Kick::Kicked, |e| {
            matches!(e.identity.role, Role::Device) && e.identity.id == device_id
        })
    }

    /// Stops accepting connections and closes every live session. The rumqttd router
    /// cannot be stopped and lives on until the process exits.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.registry.kick_where(Kick::Shutdown, |_| true);
    }
}

/// Runs the broker until Ctrl-C / SIGTERM: the `hammer broker` subcommand.
pub async fn run_standalone(config: BrokerConfig) -> anyhow::Result<()> {
    hammer_certs::tls::install_default_provider();
    let handle = Broker::start(config).await?;
    tracing::info!(listen = %handle.local_addr(), "hammer broker running");
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    handle.shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok(())
}
