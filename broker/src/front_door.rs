//! The front door: accepts TCP, runs TLS handshakes concurrently (each with a timeout), caps
//! connections in total and handshakes in progress per source address (more wait for a slot,
//! up to a bound), requires a client certificate from the fleet CA, reads its identity,
//! refuses revoked serials, and hands the connection to [`crate::session`].

use crate::config::BrokerConfig;
use crate::events::ConnectionEvent;
use crate::metrics::{Metrics, RefusalReason};
use crate::registry::{Kick, Registry};
use crate::router::Router;
use crate::session;
use hammer_certs::{CaCert, RevocationList};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
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
    pub pending: Mutex<HashMap<IpAddr, Address>>,
    pub shutdown: watch::Sender<bool>,
}

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
    async fn acquire(shared: &Arc<Shared>, ip: IpAddr) -> Result<PendingGuard, NoSlot> {
        let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
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

/// Counts an open connection until dropped.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.connections_open.fetch_sub(1, Relaxed);
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
        let open = shared.metrics.connections_open.load(Relaxed);
        if open >= shared.config.max_connections as u64 {
            shared.metrics.refuse(RefusalReason::Limit);
            tracing::warn!(%peer, open, "connection refused: connection limit reached");
            continue;
        }
        shared.metrics.connections_open.fetch_add(1, Relaxed);
        let open = OpenGuard(shared.clone());
        tokio::spawn(handle(shared.clone(), stream, peer, open));
    }
    tracing::info!("front door stopped accepting");
}

async fn handle(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, _open: OpenGuard) {
    let pending = match PendingGuard::acquire(&shared, peer.ip()).await {
        Ok(p) => p,
        Err(why) => {
            shared.metrics.refuse(RefusalReason::Limit);
            let why = match why {
                NoSlot::Full => "too many connections from this address waiting",
                NoSlot::Timeout => "no handshake slot for this address in time",
            };
            tracing::warn!(%peer, why, "connection refused");
            return;
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
            return;
        }
        Err(_) => {
            shared.metrics.refuse(RefusalReason::Timeout);
            tracing::info!(%peer, "TLS handshake timed out");
            return;
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
        return;
    };
    let identity = match shared.ca.identity(&leaf, SystemTime::now()) {
        Ok(i) => i,
        Err(e) => {
            shared.metrics.refuse(RefusalReason::Tls);
            tracing::warn!(%peer, error = %e, "client certificate has no usable identity");
            return;
        }
    };
    if shared.revocations.is_revoked(&identity.serial) {
        shared.metrics.refuse(RefusalReason::Revoked);
        tracing::warn!(role = ?identity.role, id = %identity.id, serial = %identity.serial, %peer, "connection refused: certificate revoked");
        return;
    }
    session::run(shared, tls, identity, peer, pending).await;
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
