//! Hammer IoT fleet simulator: many simulated devices in one process, each with its own
//! certificate (issued through the operator provisioning API) and its own mTLS MQTT
//! connection, speaking the real protocol (signed desired states and commands, phases,
//! outbox with acks, presence with last will, health).
//!
//! - [`device`]: one simulated device (`hammer-sim-device`'s autonomous device, re-exported).
//! - [`abuse`]: the abuse floods' building blocks (victim ack latency, publish floods,
//!   stalled connections, RSS sampling, limit counters of `/metrics`).
//! - [`api`]: the few HTTP API calls the simulator and the benchmarks need.
//! - [`bench`]: bringing a fleet up on a service, one measured rollout.
//! - [`storm`]: the reconnect storm (the service process stopped and restarted mid-rollout).
//! - [`probe`]: CPU and RSS of the service, the simulator and an external broker.
//! - [`fleet`]: provisioning and connecting N devices, shared counters, timings.
//! - [`procstat`]: RSS and CPU from `/proc`, and raising the open-file limit.
//! - [`mosquitto`]: running Debian's `mosquitto` as the external broker (bench and tests).
//! - [`service_proc`]: `hammer serve` as a child process (start, health, stop, restart).
//! - [`cluster`]: two replicas on a throwaway PostgreSQL ([`pg_server`]) and Mosquitto, the
//!   rollouts and a replica failure mid-rollout (`rollout-bench --cluster`).
//!
//! Binaries: `fleet-sim` (against a running service), `rollout-bench` (starts `hammer
//! serve` as a child process and measures rollouts and a reconnect storm) and `abuse-bench`
//! (starts `hammer serve` and runs the abuse floods of issue 13).

pub mod abuse;
pub mod api;
pub mod bench;
pub mod cluster;
pub mod device;
pub mod fleet;
pub mod mosquitto;
/// The service tests' throwaway PostgreSQL (`initdb` into a temp dir, `postgres` on a free
/// loopback port; as root it runs as the user `hammer-pg`), for `rollout-bench --cluster`.
/// Its helpers panic on failure; [`cluster`] catches that and reports an error.
#[path = "../../../service/tests/integration/pg_server.rs"]
pub mod pg_server;
pub mod probe;
pub mod procstat;
pub mod service_proc;
pub mod storm;

/// Parses `mqtts://host:port` into host and port (port defaults to 8883), by the protocol's
/// one broker URL parser; simulated devices use TLS, so `mqtt://` is refused.
pub fn parse_broker_url(url: &str) -> anyhow::Result<(String, u16)> {
    let u = hammer_protocol::BrokerUrl::parse_mqtts(url)?;
    Ok((u.host, u.port))
}

/// Percentile (0..=100) of sorted durations in milliseconds; 0 when empty.
pub fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_ms.len() as f64 - 1.0)).round() as usize;
    sorted_ms[rank.min(sorted_ms.len() - 1)]
}
