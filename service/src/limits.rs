//! Limits that are not the store's: the open-file (descriptor) budget every listener is sized
//! from, the HTTP body limit, and failed enrollments per source address (counted in the
//! store, so that every replica sees them).
//!
//! `hammer serve` and `hammer broker` raise the soft `RLIMIT_NOFILE` to the hard limit on
//! start (`hammer_broker::limits::raise_nofile`): each HTTP connection, each device's MQTT connection and each
//! file of the store uses a descriptor, and the common default soft limit (1,024) is what a
//! flood of half-sent requests used up before the caps of [`crate::http`] existed.

use crate::store::Store;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Largest HTTP request body accepted (1 MiB).
pub const HTTP_BODY_LIMIT: usize = 1024 * 1024;

/// Descriptors kept aside for the store, the CA files, logs and the runtime itself.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The largest default connection cap of one HTTP listener.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;

/// The smallest default connection cap of one HTTP listener.
pub const MIN_HTTP_CONNECTIONS: usize = 16;

/// The default connection cap of one HTTP listener for a soft open-file limit of `nofile`:
/// a quarter of what is left after [`RESERVED_DESCRIPTORS`] (the broker's device connections
/// need the rest), between [`MIN_HTTP_CONNECTIONS`] and [`MAX_HTTP_CONNECTIONS`].
pub fn http_connection_cap(nofile: u64) -> usize {
    let quarter = nofile.saturating_sub(RESERVED_DESCRIPTORS) / 4;
    usize::try_from(quarter)
        .unwrap_or(usize::MAX)
        .clamp(MIN_HTTP_CONNECTIONS, MAX_HTTP_CONNECTIONS)
}

/// Failed enrollments allowed per source address per window.
pub const MAX_ENROLL_FAILURES: u32 = 10;
/// The rate-limit window.
pub const ENROLL_WINDOW: Duration = Duration::from_secs(60);

/// Counts failed enrollments per source address, in the store ([`Store::note_failure`]):
/// every replica on one database sees every failure, and a restart forgets none. An address
/// is blocked once it has [`MAX_ENROLL_FAILURES`] failures in its window ([`ENROLL_WINDOW`]
/// from its first failure).
///
/// When the store fails, the limiter fails open: [`EnrollLimiter::blocked`] answers `false`
/// and [`EnrollLimiter::fail`] counts nothing (both log a warning). Nothing is lost by it:
/// an enrollment needs the store to take its token, so while the store fails no token can be
/// guessed either, and a 429 would only misname the outage.
pub struct EnrollLimiter {
    store: Arc<dyn Store>,
}

impl EnrollLimiter {
    /// A limiter counting in `store`.
    pub fn new(store: Arc<dyn Store>) -> EnrollLimiter {
        EnrollLimiter { store }
    }

    /// The key of an address's failures in the store.
    fn key(ip: IpAddr) -> String {
        format!("enroll {ip}")
    }

    fn window_ms() -> u64 {
        u64::try_from(ENROLL_WINDOW.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `ip` used up its failed enrollments in the current window (`false` when the
    /// store fails: see the type's documentation).
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let now = hammer_protocol::now_ms();
        match self.store.failures(&Self::key(ip), now, Self::window_ms()) {
            Ok(n) => n >= MAX_ENROLL_FAILURES,
            Err(e) => {
                tracing::warn!(%ip, error = %e, "cannot read failed enrollments; not limiting");
                false
            }
        }
    }

    /// Counts a failed enrollment from `ip`.
    pub fn fail(&self, ip: IpAddr) {
        let now = hammer_protocol::now_ms();
        if let Err(e) = self
            .store
            .note_failure(&Self::key(ip), now, Self::window_ms())
        {
            tracing::warn!(%ip, error = %e, "cannot count a failed enrollment");
        }
    }
}

/// The peer's address, put on each request by the HTTP listener ([`crate::http`]); the
/// per-address limits key on it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;

    #[test]
    fn an_address_is_blocked_after_the_most_failures_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let limiter = EnrollLimiter::new(store.clone());
        let (ip, other): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        for _ in 0..MAX_ENROLL_FAILURES - 1 {
            limiter.fail(ip);
        }
        assert!(!limiter.blocked(ip));
        limiter.fail(ip);
        assert!(limiter.blocked(ip));
        assert!(!limiter.blocked(other));
        // Another limiter on the same store (another replica) sees the same count.
        assert!(EnrollLimiter::new(store).blocked(ip));
    }

    #[test]
    fn http_cap_is_a_quarter_of_the_budget_within_bounds() {
        assert_eq!(http_connection_cap(1024), (1024 - 128) / 4);
        assert_eq!(http_connection_cap(1_048_576), MAX_HTTP_CONNECTIONS);
        assert_eq!(http_connection_cap(100), MIN_HTTP_CONNECTIONS);
        assert_eq!(http_connection_cap(u64::MAX), MAX_HTTP_CONNECTIONS);
    }
}
