//! Who gets in, and what the front door shares: the state every connection task and the
//! handle see ([`Shared`]), the connection budget (a permit per connection, eviction of the
//! oldest unauthenticated connection at the bound) and the per-address handshake slots and
//! waiting room ([`PendingGuard`]). Used by [`crate::front_door`] (accepting) and
//! [`crate::session`] (which holds a slot until its CONNECT is read), so neither imports the
//! other.

use crate::config::BrokerConfig;
use crate::events::ConnectionEvent;
use crate::limits::{ConnectionLimits, RateStore, LOG_EVERY};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::Router;
use hammer_certs::{CaCert, RevocationList};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

/// State shared by the accept loop, every connection task and the handle.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub acceptor: TlsAcceptor,
    pub ca: CaCert,
    pub revocations: Arc<RevocationList>,
    pub metrics: Metrics,
    pub registry: Registry,
    pub events: broadcast::Sender<ConnectionEvent>,
    pub router: Router,
    pub next_session: AtomicU64,
    pub next_connection: AtomicU64,
    pub pending: Mutex<HashMap<IpAddr, Address>>,
    pub shutdown: watch::Sender<bool>,
    /// The sizes in force (also written into `config`).
    pub limits: ConnectionLimits,
    /// One permit per connection the front door holds: `limits.max_connections`.
    pub slots: Arc<Semaphore>,
    /// Connections not yet authenticated, oldest first: the ones that make room at the bound.
    pub unauthenticated: Mutex<BTreeMap<u64, Arc<Notify>>>,
    /// Rate buckets of identities between sessions.
    pub rates: Mutex<RateStore<(bool, String)>>,
    /// Warnings of the accept path, at most one a second each.
    pub limit_log: Throttle,
    pub evict_log: Throttle,
}

impl Shared {
    pub fn rates(&self) -> std::sync::MutexGuard<'_, RateStore<(bool, String)>> {
        self.rates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Logs a repeated warning at most once per [`LOG_EVERY`], with the number left out since.
#[derive(Default)]
pub(crate) struct Throttle {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    /// `Some(n)`: log now (`n` occurrences were not logged since the last one); `None`: not now.
    pub fn check(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                s.1 += 1;
                None
            }
            _ => {
                s.0 = Some(now);
                Some(std::mem::take(&mut s.1))
            }
        }
    }
}

/// A connection that has not authenticated yet (from accept until its CONNECT is read); at
/// the connection bound the oldest one is closed to make room for a new connection.
pub(crate) struct Unauthenticated {
    shared: Arc<Shared>,
    id: u64,
    pub(crate) evicted: Arc<Notify>,
}

impl Unauthenticated {
    pub(crate) fn register(shared: &Arc<Shared>, id: u64) -> Unauthenticated {
        let evicted = Arc::new(Notify::new());
        shared
            .unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, evicted.clone());
        Unauthenticated {
            shared: shared.clone(),
            id,
            evicted,
        }
    }

    /// Leaves the queue; false when the connection was evicted meanwhile.
    pub(crate) fn authenticated(&self) -> bool {
        self.shared
            .unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id)
            .is_some()
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.authenticated();
    }
}

/// Tells the oldest unauthenticated connection to close; false when there is none.
pub(crate) fn evict_oldest(shared: &Shared) -> bool {
    let oldest = shared
        .unauthenticated
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_first();
    match oldest {
        Some((_, evicted)) => {
            // Stored if the connection is not waiting on it right now.
            evicted.notify_one();
            true
        }
        None => false,
    }
}

/// How long the accept loop waits for an evicted connection to let go of its slot.
pub(crate) const EVICT_WAIT: Duration = Duration::from_secs(1);

/// Connections of one source address in their handshake (`active`) and waiting for a turn.
#[derive(Default)]
pub(crate) struct Address {
    active: usize,
    waiting: usize,
    turn: Arc<tokio::sync::Notify>,
}

/// Counts a connection as pending (not yet authenticated) for its source address until dropped.
pub(crate) struct PendingGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

/// Why a connection got no handshake slot.
pub(crate) enum NoSlot {
    /// Too many connections of this address are already waiting.
    Full,
    /// No slot freed up within the handshake timeout.
    Timeout,
}

impl PendingGuard {
    /// A handshake slot for `ip`: at once while fewer than `max_pending_per_ip` of its
    /// connections are in their handshake, else after waiting for one, woken in
    /// turn (until `deadline`, the accept plus `slot_wait`; at most `max_waiting_per_ip`
    /// wait). A reconnect storm from behind one address is queued rather than refused into the
    /// devices' backoff.
    pub(crate) async fn acquire(
        shared: &Arc<Shared>,
        ip: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Result<PendingGuard, NoSlot> {
        let mut queued = false;
        loop {
            let turn = {
                let mut map = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                let a = map.entry(ip).or_default();
                if a.active < shared.config.max_pending_per_ip {
                    a.active += 1;
                    if queued {
                        a.waiting -= 1;
                    }
                    // Several slots may have freed up for one stored wake-up: pass it on.
                    if a.waiting > 0 && a.active < shared.config.max_pending_per_ip {
                        a.turn.notify_one();
                    }
                    shared.metrics.handshakes_pending.fetch_add(1, Relaxed);
                    return Ok(PendingGuard {
                        shared: shared.clone(),
                        ip,
                    });
                }
                if !queued {
                    if a.waiting >= shared.config.max_waiting_per_ip {
                        return Err(NoSlot::Full);
                    }
                    a.waiting += 1;
                    queued = true;
                }
                a.turn.clone()
            };
            if tokio::time::timeout_at(deadline, turn.notified())
                .await
                .is_err()
            {
                let mut map = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(a) = map.get_mut(&ip) {
                    a.waiting -= 1;
                    if a.active == 0 && a.waiting == 0 {
                        map.remove(&ip);
                    }
                }
                return Err(NoSlot::Timeout);
            }
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(a) = map.get_mut(&self.ip) {
            a.active -= 1;
            if a.waiting > 0 {
                a.turn.notify_one();
            } else if a.active == 0 {
                map.remove(&self.ip);
            }
        }
        self.shared.metrics.handshakes_pending.fetch_sub(1, Relaxed);
    }
}

/// Holds one of the connection budget's slots and counts the connection as open until
/// dropped (after its socket is closed).
pub(crate) struct OpenGuard(
    pub(crate) Arc<Shared>,
    #[allow(dead_code)] pub(crate) OwnedSemaphorePermit,
);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}
