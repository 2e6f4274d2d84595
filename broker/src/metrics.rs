//! Counters of the front door (lock-free atomics), their snapshot, and a Prometheus text
//! rendering with `hammer_broker_*` names for the service's `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection was refused or closed by the front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// TLS handshake failed: no client certificate, unknown CA, expired, bad protocol, or
    /// the certificate's identity could not be read.
    Tls,
    /// The certificate's serial is on the revocation list.
    Revoked,
    /// A SUBSCRIBE filter outside the ACL.
    AclSubscribe,
    /// A PUBLISH topic outside the ACL.
    AclPublish,
    /// A CONNECT will topic outside the ACL.
    AclWill,
    /// A packet larger than the configured maximum.
    PacketTooLarge,
    /// Bytes that are not MQTT 3.1.1, or a packet a client must not send.
    Malformed,
    /// A connection limit (total or pending per address) was reached.
    Limit,
    /// No TLS handshake or CONNECT within the handshake timeout.
    Timeout,
    /// The identity sent more packets or bytes per second than its rate limit allows.
    RateLimit,
    /// The connection budget was full and this connection was the oldest one not yet
    /// authenticated: closed to make room for a new one.
    Evicted,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 11] = [
        RefusalReason::Tls,
        RefusalReason::Revoked,
        RefusalReason::AclSubscribe,
        RefusalReason::AclPublish,
        RefusalReason::AclWill,
        RefusalReason::PacketTooLarge,
        RefusalReason::Malformed,
        RefusalReason::Limit,
        RefusalReason::Timeout,
        RefusalReason::RateLimit,
        RefusalReason::Evicted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Tls => "tls",
            RefusalReason::Revoked => "revoked",
            RefusalReason::AclSubscribe => "acl_subscribe",
            RefusalReason::AclPublish => "acl_publish",
            RefusalReason::AclWill => "acl_will",
            RefusalReason::PacketTooLarge => "packet_too_large",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Limit => "limit",
            RefusalReason::Timeout => "timeout",
            RefusalReason::RateLimit => "rate_limit",
            RefusalReason::Evicted => "evicted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Live counters, shared by every connection task.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) handshakes_pending: AtomicU64,
    pub(crate) sessions_open: AtomicU64,
    pub(crate) sessions_total: AtomicU64,
    pub(crate) refusals: [AtomicU64; RefusalReason::ALL.len()],
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) kicked: AtomicU64,
}

impl Metrics {
    pub(crate) fn refuse(&self, reason: RefusalReason) {
        self.refusals[reason.index()].fetch_add(1, Relaxed);
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            connections_open: self.connections_open.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            handshakes_pending: self.handshakes_pending.load(Relaxed),
            sessions_open: self.sessions_open.load(Relaxed),
            sessions_total: self.sessions_total.load(Relaxed),
            refusals: RefusalReason::ALL
                .iter()
                .map(|r| (*r, self.refusals[r.index()].load(Relaxed)))
                .collect(),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            kicked: self.kicked.load(Relaxed),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// TCP connections open at the front door (pending handshakes included).
    pub connections_open: u64,
    /// TCP connections accepted since start.
    pub connections_total: u64,
    /// Connections not yet past TLS handshake and CONNECT.
    pub handshakes_pending: u64,
    /// Authenticated MQTT sessions relayed to rumqttd right now.
    pub sessions_open: u64,
    /// Authenticated MQTT sessions since start.
    pub sessions_total: u64,
    /// Refused or closed connections, by reason.
    pub refusals: Vec<(RefusalReason, u64)>,
    /// Bytes read from clients (after TLS).
    pub bytes_in: u64,
    /// Bytes written to clients (before TLS).
    pub bytes_out: u64,
    /// PUBLISH packets accepted from clients.
    pub messages_in: u64,
    /// Connections closed by revocation or kick.
    pub kicked: u64,
}

impl MetricsSnapshot {
    /// The count for one refusal reason.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refusals
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    /// Prometheus text exposition format, `hammer_broker_*` names.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP hammer_broker_{name} {help}");
            let _ = writeln!(out, "# TYPE hammer_broker_{name} {kind}");
            let _ = writeln!(out, "hammer_broker_{name} {value}");
        };
        metric(
            "connections_open",
            "gauge",
            "TCP connections open at the front door.",
            self.connections_open,
        );
        metric(
            "connections_total",
            "counter",
            "TCP connections accepted.",
            self.connections_total,
        );
        metric(
            "handshakes_pending",
            "gauge",
            "Connections not yet authenticated.",
            self.handshakes_pending,
        );
        metric(
            "sessions_open",
            "gauge",
            "Authenticated MQTT sessions.",
            self.sessions_open,
        );
        metric(
            "sessions_total",
            "counter",
            "Authenticated MQTT sessions since start.",
            self.sessions_total,
        );
        metric(
            "bytes_in_total",
            "counter",
            "Bytes received from clients.",
            self.bytes_in,
        );
        metric(
            "bytes_out_total",
            "counter",
            "Bytes sent to clients.",
            self.bytes_out,
        );
        metric(
            "messages_in_total",
            "counter",
            "PUBLISH packets accepted from clients.",
            self.messages_in,
        );
        metric(
            "kicked_total",
            "counter",
            "Connections closed by revocation or kick.",
            self.kicked,
        );
        let _ = writeln!(
            out,
            "# HELP hammer_broker_refusals_total Connections refused or closed, by reason."
        );
        let _ = writeln!(out, "# TYPE hammer_broker_refusals_total counter");
        for (reason, n) in &self.refusals {
            let _ = writeln!(
                out,
                "hammer_broker_refusals_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason() {
        let m = Metrics::default();
        m.refuse(RefusalReason::AclPublish);
        m.refuse(RefusalReason::AclPublish);
        m.refuse(RefusalReason::RateLimit);
        let s = m.snapshot();
        assert_eq!(s.refused(RefusalReason::AclPublish), 2);
        let text = s.render_prometheus();
        for r in RefusalReason::ALL {
            assert!(text.contains(&format!("reason=\"{r}\"")), "{r}");
        }
        assert!(text.contains("hammer_broker_refusals_total{reason=\"acl_publish\"} 2"));
        assert!(text.contains("hammer_broker_refusals_total{reason=\"rate_limit\"} 1"));
        assert!(text.contains("hammer_broker_refusals_total{reason=\"evicted\"} 0"));
        assert!(text.contains("hammer_broker_connections_open 0"));
    }
}
