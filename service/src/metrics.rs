//! Counters of the service and the Prometheus text of `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters updated by MQTT ingestion.
#[derive(Default)]
pub struct Counters {
    pub status_stored: AtomicU64,
    pub status_duplicates: AtomicU64,
    /// Status events dropped because ingestion was full (the devices resend them).
    pub status_shed: AtomicU64,
    pub bad_payloads: AtomicU64,
    pub unknown_devices: AtomicU64,
    pub health_reports: AtomicU64,
    pub log_batches: AtomicU64,
    pub acks_sent: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

/// Renders the service's metrics; `deployments` is (state name, count), `broker` the
/// embedded broker's own text (if any).
pub fn render(
    c: &Counters,
    devices: usize,
    online: usize,
    deployments: &[(&str, u64)],
    broker: Option<String>,
) -> String {
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    gauge(
        "hammer_devices",
        "Registered devices.",
        "gauge",
        devices as u64,
    );
    gauge(
        "hammer_devices_online",
        "Devices connected now.",
        "gauge",
        online as u64,
    );
    gauge(
        "hammer_status_events_ingested_total",
        "Status events stored (first delivery).",
        "counter",
        c.status_stored.load(Relaxed),
    );
    gauge(
        "hammer_status_events_duplicate_total",
        "Status events received again and deduplicated.",
        "counter",
        c.status_duplicates.load(Relaxed),
    );
    gauge(
        "hammer_status_events_shed_total",
        "Status events dropped while ingestion was full; the devices resend them.",
        "counter",
        c.status_shed.load(Relaxed),
    );
    gauge(
        "hammer_bad_payloads_total",
        "MQTT payloads that failed to decode.",
        "counter",
        c.bad_payloads.load(Relaxed),
    );
    gauge(
        "hammer_unknown_device_messages_total",
        "Messages from device ids that are not registered.",
        "counter",
        c.unknown_devices.load(Relaxed),
    );
    gauge(
        "hammer_health_reports_total",
        "Health reports received.",
        "counter",
        c.health_reports.load(Relaxed),
    );
    gauge(
        "hammer_log_batches_total",
        "Log batches received.",
        "counter",
        c.log_batches.load(Relaxed),
    );
    gauge(
        "hammer_acks_sent_total",
        "Acks published.",
        "counter",
        c.acks_sent.load(Relaxed),
    );
    let _ = writeln!(
        s,
        "# HELP hammer_deployments Deployments by state.\n# TYPE hammer_deployments gauge"
    );
    for (state, n) in deployments {
        let _ = writeln!(s, "hammer_deployments{{state=\"{state}\"}} {n}");
    }
    if let Some(b) = broker {
        s.push_str(&b);
        if !s.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}
