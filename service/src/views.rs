//! Conversions from stored records (plus live state) to the API's views.

use crate::live::Live;
use crate::store::{DeploymentRecord, DeviceRecord, StoredStatus};
use hammer_protocol::api::{
    DeploymentTargetView, DeploymentView, DeviceView, HealthView, HistoryEntry, UserView,
};
use hammer_protocol::Health;

pub fn user_view(u: &crate::store::UserRecord) -> UserView {
    UserView {
        id: u.id.clone(),
        name: u.name.clone(),
        admin: u.admin,
    }
}

pub fn device_view(d: &DeviceRecord, live: &Live) -> DeviceView {
    DeviceView {
        id: d.id.clone(),
        name: d.name.clone(),
        tags: d.tags.clone(),
        state: d.state,
        online: live.online(&d.id),
        last_seen: live.last_seen(&d.id),
        current_commit: d.current_commit.clone(),
        app_phase: d.app_phase,
        run_state: d.run_state,
        generation: d.generation,
        current_deployment: d.current_deployment.clone(),
        setup: d.setup.clone(),
        last_health: live.health(&d.id),
    }
}

pub fn deployment_view(d: &DeploymentRecord) -> DeploymentView {
    DeploymentView {
        id: d.id.clone(),
        deployer: d.deployer.clone(),
        created_at: d.created_at,
        finished_at: d.finished_at,
        git_ref: d.git_ref.clone(),
        commit: d.commit.clone(),
        strategy: d.strategy.clone(),
        state: d.state,
        reason: d.reason.clone(),
        targets: d
            .targets
            .iter()
            .map(|t| DeploymentTargetView {
                device: t.device.clone(),
                state: t.state,
                attempts: t.attempts,
                last_phase: t.last_phase,
                commit: t.commit.clone(),
                detail: t.detail.clone(),
                updated_at: t.updated_at,
            })
            .collect(),
    }
}

pub fn history_entry(s: &StoredStatus) -> HistoryEntry {
    let e = &s.event;
    HistoryEntry {
        time: e.time,
        deployment_id: e.deployment_id.clone(),
        deployer: s.deployer.clone(),
        generation: e.generation,
        phase: e.phase,
        commit: e.commit.clone(),
        detail: e.detail.clone(),
        log_tail: e.log_tail.clone(),
    }
}

pub fn health_view(h: &Health) -> HealthView {
    HealthView {
        time: h.time,
        app_running: h.app_running,
        pid: h.pid,
        restarts: h.restarts,
        uptime_secs: h.uptime_secs,
        app_rss_kb: h.app_rss_kb,
        app_cpu_ms: h.app_cpu_ms,
        manager_version: h.manager_version.clone(),
    }
}
