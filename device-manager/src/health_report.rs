//! The periodic `Health` message (QoS 0): the runtime's [`LocalStatus`] plus the manager
//! version. The one place local figures become the protocol's [`Health`].

use crate::runtime::LocalStatus;
use hammer_protocol::{Health, PROTOCOL_VERSION};

/// This manager's version, as reported in health and presence.
pub const MANAGER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds a health message from what runs locally.
pub fn health(s: &LocalStatus) -> Health {
    Health {
        v: PROTOCOL_VERSION,
        time: hammer_protocol::now_ms(),
        app_running: s.app_running,
        pid: s.pid,
        restarts: s.restarts,
        uptime_secs: s.uptime_secs,
        app_rss_kb: s.rss_kb,
        app_cpu_ms: s.cpu_ms,
        manager_version: MANAGER_VERSION.to_owned(),
        commit: s.commit.clone(),
        generation: s.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Step;
    use hammer_protocol::RunState;

    #[test]
    fn health_carries_the_local_figures_and_this_manager_version() {
        let status = LocalStatus {
            generation: Some(4),
            deployment_id: Some("dep4".into()),
            commit: Some("abc".into()),
            release_generation: Some(4),
            previous_commit: None,
            step: Step::Idle,
            run_state: RunState::Running,
            app_running: true,
            pid: Some(42),
            restarts: 2,
            uptime_secs: 7,
            rss_kb: 1000,
            cpu_ms: 5,
            rolled_back: Vec::new(),
        };
        let h = health(&status);
        assert_eq!(h.v, PROTOCOL_VERSION);
        assert!(h.app_running);
        assert_eq!(h.pid, Some(42));
        assert_eq!(h.restarts, 2);
        assert_eq!(h.uptime_secs, 7);
        assert_eq!(h.app_rss_kb, 1000);
        assert_eq!(h.app_cpu_ms, 5);
        assert_eq!(h.manager_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(h.commit.as_deref(), Some("abc"));
        assert_eq!(h.generation, Some(4));
    }
}
