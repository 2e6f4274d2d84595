//! The periodic `Health` message (QoS 0): the backend's figures plus the manager version.

use crate::backend::HealthFigures;
use hammer_protocol::{Health, PROTOCOL_VERSION};

/// This manager's version, as reported in health and presence.
pub const MANAGER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds a health message from the backend's figures.
pub fn health(f: HealthFigures) -> Health {
    Health {
        v: PROTOCOL_VERSION,
        time: hammer_protocol::now_ms(),
        app_running: f.app_running,
        pid: f.pid,
        restarts: f.restarts,
        uptime_secs: f.uptime_secs,
        app_rss_kb: f.app_rss_kb,
        app_cpu_ms: f.app_cpu_ms,
        manager_version: MANAGER_VERSION.to_owned(),
        commit: f.commit,
        generation: f.generation,
    }
}
