//! Counters of each HTTP listener (connections open, accepted, refused, closed by a timeout),
//! counted by [`crate::http`] and rendered in `/metrics` with `listener="NAME"`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Counters of one listener, rendered in `/metrics` with `listener="NAME"`.
#[derive(Debug)]
pub struct ListenerStats {
    pub name: &'static str,
    pub open: AtomicUsize,
    pub accepted: AtomicU64,
    pub refused_max_connections: AtomicU64,
    pub refused_per_address: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl ListenerStats {
    pub fn new(name: &'static str) -> Arc<ListenerStats> {
        Arc::new(ListenerStats {
            name,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused_max_connections: AtomicU64::new(0),
            refused_per_address: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        })
    }

    /// Prometheus lines of these counters (no HELP/TYPE: see [`render_listeners`]).
    fn render_into(&self, s: &mut String) {
        let l = self.name;
        let _ = writeln!(
            s,
            "hammer_http_connections_open{{listener=\"{l}\"}} {}",
            self.open.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "hammer_http_connections_accepted_total{{listener=\"{l}\"}} {}",
            self.accepted.load(Relaxed)
        );
        for (reason, c) in [
            ("max_connections", &self.refused_max_connections),
            ("max_connections_per_address", &self.refused_per_address),
        ] {
            let _ = writeln!(
                s,
                "hammer_http_connections_refused_total{{listener=\"{l}\",reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        for (reason, c) in [
            ("header_timeout", &self.header_timeouts),
            ("idle_timeout", &self.idle_timeouts),
            ("handshake_failed", &self.handshake_failures),
        ] {
            let _ = writeln!(
                s,
                "hammer_http_connections_closed_total{{listener=\"{l}\",reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "hammer_http_accept_errors_total{{listener=\"{l}\"}} {}",
            self.accept_errors.load(Relaxed)
        );
    }
}

/// Prometheus text of every listener's counters.
pub fn render_listeners(listeners: &[&ListenerStats]) -> String {
    let mut s = String::new();
    let mut body = String::new();
    for l in listeners {
        l.render_into(&mut body);
    }
    let helps = [
        (
            "hammer_http_connections_open",
            "gauge",
            "HTTP connections open now.",
        ),
        (
            "hammer_http_connections_accepted_total",
            "counter",
            "HTTP connections accepted.",
        ),
        (
            "hammer_http_connections_refused_total",
            "counter",
            "HTTP connections closed at once because a connection cap was reached, by reason.",
        ),
        (
            "hammer_http_connections_closed_total",
            "counter",
            "HTTP connections closed by the server, by reason.",
        ),
        (
            "hammer_http_accept_errors_total",
            "counter",
            "Failed accepts (for example: out of file descriptors).",
        ),
    ];
    for (name, kind, help) in helps {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for line in body.lines().filter(|x| {
            x.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        }) {
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}
