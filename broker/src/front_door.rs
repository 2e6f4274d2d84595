//! The front door: accepts TCP within the connection budget (at the bound the oldest
//! connection not yet authenticated makes room), waits for a connection's first byte, runs TLS
//! handshakes concurrently (each with a timeout), caps handshakes in progress per source
//! address (more wait for a slot, up to a bound), requires a client certificate from the fleet
//! CA, reads its identity, refuses revoked serials, reads the CONNECT and hands the connection
//! to [`crate::session`].

use crate::config::BrokerConfig;
use crate::events::ConnectionEvent;
use crate::limits::{ConnectionLimits, RateStore, LOG_EVERY};
use crate::metrics::{Metrics, RefusalReason};
use crate::registry::{Kick, Registry};
use crate::router::Router;
use crate::session;
use hammer_certs::{CaCert, RevocationList};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
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
    evicted: Arc<Notify>,
}

impl Unauthenticated {
    fn register(shared: &Arc<Shared>, id: u64) -> Unauthenticated {
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
    fn authenticated(&self) -> bool {
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
fn evict_oldest(shared: &Shared) -> bool {
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
const EVICT_WAIT: Duration = Duration::from_secs(1);

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
enum NoSlot {
    /// Too many connections of this address are already waiting.
    Full,
    /// No slot freed up within the handshake timeout.
    Timeout,
}

impl PendingGuard {
    /// A handshake slot for `ip`: at once while fewer than `max_pending_per_ip` of its
    /// connections are in their handshake, else after waiting for one (up to the handshake
    /// timeout; at most `max_waiting_per_ip` wait). A reconnect storm from behind one address
    /// is queued rather than refused into the devices' backoff.
    async fn acquire(
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
struct OpenGuard(Arc<Shared>, #[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// A slot of the connection budget for a connection just accepted: at once while there is
/// one, else after the oldest unauthenticated connection has closed to make room. `None`:
/// every connection is authenticated (the budget is full of sessions) or none let go in time.
async fn connection_slot(shared: &Arc<Shared>) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = shared.slots.clone().try_acquire_owned() {
        return Some(p);
    }
    if !evict_oldest(shared) {
        return None;
    }
    match tokio::time::timeout(EVICT_WAIT, shared.slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => Some(p),
        _ => None,
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.metrics.connections_total.fetch_add(1, Relaxed);
        // The socket just accepted is the one descriptor beyond the budget (the reserve
        // covers it) until it has a slot or is closed here.
        let Some(permit) = connection_slot(&shared).await else {
            drop(stream);
            shared.metrics.refuse(RefusalReason::Limit);
            if let Some(unlogged) = shared.limit_log.check() {
                let max = shared.limits.max_connections;
                tracing::warn!(%peer, max_connections = max, unlogged, "connection refused: every connection slot is held by an authenticated session");
            }
            continue;
        };
        shared.metrics.connections_open.fetch_add(1, Relaxed);
        let open = OpenGuard(shared.clone(), permit);
        let id = shared.next_connection.fetch_add(1, Relaxed);
        let unauthenticated = Unauthenticated::register(&shared, id);
        tokio::spawn(handle(shared.clone(), stream, peer, open, unauthenticated));
    }
    tracing::info!("front door stopped accepting");
}

/// A connection whose CONNECT has been read and checked.
struct Ready {
    tls: session::Client<tokio_rustls::server::TlsStream<TcpStream>>,
    hello: session::Hello,
    identity: hammer_certs::Identity,
    pending: PendingGuard,
}

async fn handle(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _open: OpenGuard,
    unauthenticated: Unauthenticated,
) {
    // On eviction the future, and with it the socket, is dropped here: before the slot.
    let ready = {
        let ready = authenticate(&shared, stream, peer);
        tokio::pin!(ready);
        tokio::select! {
            biased;
            _ = unauthenticated.evicted.notified() => None,
            r = &mut ready => Some(r),
        }
    };
    let ready = match ready {
        Some(None) => return,
        // Evicted at the very moment it authenticated: the accept loop waits for its slot.
        Some(Some(r)) if !unauthenticated.authenticated() => {
            drop(r);
            None
        }
        Some(Some(r)) => Some(r),
        // Evicted while not yet authenticated.
        None => None,
    };
    let Some(r) = ready else {
        shared.metrics.refuse(RefusalReason::Evicted);
        if let Some(unlogged) = shared.evict_log.check() {
            tracing::warn!(%peer, max_connections = shared.limits.max_connections, unlogged, "connection closed before it authenticated: the connection budget is full and it was the oldest unauthenticated one");
        }
        return;
    };
    drop(unauthenticated);
    session::run(shared, r.tls, r.hello, r.identity, peer, r.pending).await;
}

/// From TCP to a checked CONNECT. `None`: refused (counted and logged).
async fn authenticate(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> Option<Ready> {
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    // The first byte before a handshake slot: an idle socket holds a connection slot (and
    // makes room for newer ones at the bound) but never a handshake slot of its address.
    match tokio::time::timeout_at(deadline, stream.readable()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            shared.metrics.refuse(RefusalReason::Tls);
            tracing::debug!(%peer, error = %e, "connection failed before its first byte");
            return None;
        }
        Err(_) => {
            shared.metrics.refuse(RefusalReason::Timeout);
            tracing::debug!(%peer, "no byte within the handshake timeout");
            return None;
        }
    }
    let pending = match PendingGuard::acquire(shared, peer.ip(), deadline).await {
        Ok(p) => p,
        Err(why) => {
            shared.metrics.refuse(RefusalReason::Limit);
            let why = match why {
                NoSlot::Full => "too many connections from this address waiting",
                NoSlot::Timeout => "no handshake slot for this address in time",
            };
            if let Some(unlogged) = shared.limit_log.check() {
                tracing::warn!(%peer, why, unlogged, "connection refused");
            }
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(
        shared.config.handshake_timeout,
        shared.acceptor.accept(stream),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.metrics.refuse(RefusalReason::Tls);
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            shared.metrics.refuse(RefusalReason::Timeout);
            tracing::info!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let Some(leaf) = leaf else {
        shared.metrics.refuse(RefusalReason::Tls);
        tracing::info!(%peer, "no client certificate");
        return None;
    };
    let identity = match shared.ca.identity(&leaf, SystemTime::now()) {
        Ok(i) => i,
        Err(e) => {
            shared.metrics.refuse(RefusalReason::Tls);
            tracing::warn!(%peer, error = %e, "client certificate has no usable identity");
            return None;
        }
    };
    if shared.revocations.is_revoked(&identity.serial) {
        shared.metrics.refuse(RefusalReason::Revoked);
        tracing::warn!(role = ?identity.role, id = %identity.id, serial = %identity.serial, %peer, "connection refused: certificate revoked");
        return None;
    }
    let (tls, hello) = session::hello(shared, tls, &identity, peer).await?;
    Some(Ready {
        tls,
        hello,
        identity,
        pending,
    })
}

/// Periodically closes live sessions whose serial was added to the revocation list directly
/// or, by another process, to its file.
pub(crate) async fn revocation_sweep(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(shared.config.revocation_sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut walked = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let revocations = &shared.revocations;
        // A standalone broker learns of revocations the service wrote to the shared file.
        if let Err(e) = revocations.reload() {
            tracing::warn!(error = %e, "cannot re-read the revocation list; keeping the one in memory");
        }
        // Walk the sessions only when something was revoked since the last walk (the list
        // only grows); a session that registers after the walk checks itself (`session`).
        let revoked = revocations.len();
        if revoked == walked {
            continue;
        }
        walked = revoked;
        shared.registry.kick_where(Kick::Revoked, |e| {
            revocations.is_revoked(&e.identity.serial)
        });
    }
}
