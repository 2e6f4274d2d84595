//! Limits that are not the store's: the open-file (descriptor) budget every listener is sized
//! from, the HTTP body limit, and failed enrollments per source address.
//!
//! `hammer serve` and `hammer broker` raise the soft `RLIMIT_NOFILE` to the hard limit on
//! start (`hammer_broker::limits::raise_nofile`): each HTTP connection, each device's MQTT connection and each
//! file of the store uses a descriptor, and the common default soft limit (1,024) is what a
//! flood of half-sent requests used up before the caps of [`crate::http`] existed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Counts failed enrollments per source address.
#[derive(Default)]
pub struct EnrollLimiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl EnrollLimiter {
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(start, n)| start.elapsed() < ENROLL_WINDOW && *n >= MAX_ENROLL_FAILURES)
    }

    pub fn fail(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (start, _)| start.elapsed() < ENROLL_WINDOW);
        }
        let e = map.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= ENROLL_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

/// The peer's address, put on each request by the HTTP listener ([`crate::http`]); the
/// per-address limits key on it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_cap_is_a_quarter_of_the_budget_within_bounds() {
        assert_eq!(http_connection_cap(1024), (1024 - 128) / 4);
        assert_eq!(http_connection_cap(1_048_576), MAX_HTTP_CONNECTIONS);
        assert_eq!(http_connection_cap(100), MIN_HTTP_CONNECTIONS);
        assert_eq!(http_connection_cap(u64::MAX), MAX_HTTP_CONNECTIONS);
    }
}
