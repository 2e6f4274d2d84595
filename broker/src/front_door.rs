//! The front door: accepts TCP within the connection budget (at the bound the oldest
//! connection not yet authenticated makes room), waits for a connection's first byte, runs TLS
//! handshakes concurrently (each with a timeout), caps handshakes in progress per source
//! address (more wait for a slot, up to a bound), requires a client certificate from the fleet
//! CA, reads its identity, refuses revoked serials, reads the CONNECT and hands the connection
//! to [`crate::session`].
//!
//! A certificate from the fleet CA that is revoked or has no usable identity is refused only
//! after that check: its CONNECT is still read (same timeout and bound as a session's) and
//! answered CONNACK "not authorized" before the close, so the device can tell why
//! ([`session::refuse_not_authorized`]). Nothing is answered before the certificate check.

use crate::admission::{
    evict_oldest, NoSlot, OpenGuard, PendingGuard, Shared, Unauthenticated, EVICT_WAIT,
};
use crate::metrics::RefusalReason;
use crate::registry::Kick;
use crate::session;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

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
    let accepted = tokio::time::Instant::now();
    let deadline = accepted + shared.config.handshake_timeout;
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
    let slot_deadline = accepted + shared.config.slot_wait;
    let pending = match PendingGuard::acquire(shared, peer.ip(), slot_deadline).await {
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
            session::refuse_not_authorized(shared, tls, peer, "certificate has no usable identity")
                .await;
            return None;
        }
    };
    if shared.revocations.is_revoked(&identity.serial) {
        shared.metrics.refuse(RefusalReason::Revoked);
        tracing::warn!(role = ?identity.role, id = %identity.id, serial = %identity.serial, %peer, "connection refused: certificate revoked");
        session::refuse_not_authorized(shared, tls, peer, "certificate revoked").await;
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
