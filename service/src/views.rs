//! Conversions from stored records (plus live state) to the API's views.

use crate::error::ServiceError;
use crate::live::Live;
use crate::store::{
    cap_status, AuditCursor, DeploymentCursor, DeploymentRecord, DeviceRecord, HistoryCursor,
    StoredStatus,
};
use hammer_protocol::api::{
    DeploymentTargetView, DeploymentView, DeviceView, HealthView, HistoryEntry, UserView,
    DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT,
};
use hammer_protocol::Health;
use serde::Deserialize;

/// `?limit=&cursor=` of a paged list, as given (checked by [`PageParams::limit`] and the
/// cursor parsers, so that a bad value gets the API's error body).
#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl PageParams {
    /// The page size: [`DEFAULT_PAGE_LIMIT`] unless given, 1 to [`MAX_PAGE_LIMIT`].
    pub fn limit(&self) -> Result<usize, ServiceError> {
        let Some(l) = self.limit.as_deref().filter(|l| !l.is_empty()) else {
            return Ok(DEFAULT_PAGE_LIMIT as usize);
        };
        match l.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n as usize),
            _ => Err(ServiceError::bad_request(format!(
                "limit must be a number from 1 to {MAX_PAGE_LIMIT}, not {:?}",
                crate::store::cut(l, 40)
            ))),
        }
    }

    fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref().filter(|c| !c.is_empty())
    }

    pub fn history_cursor(&self) -> Result<Option<HistoryCursor>, ServiceError> {
        self.cursor().map(decode_history_cursor).transpose()
    }

    pub fn deployment_cursor(&self) -> Result<Option<DeploymentCursor>, ServiceError> {
        self.cursor().map(decode_deployment_cursor).transpose()
    }

    pub fn audit_cursor(&self) -> Result<Option<AuditCursor>, ServiceError> {
        self.cursor().map(decode_audit_cursor).transpose()
    }
}

fn bad_cursor(c: &str) -> ServiceError {
    ServiceError::bad_request(format!(
        "cursor {:?} is not one this list gave out; ask again without cursor to start from the newest",
        crate::store::cut(c, 60)
    ))
}

fn hex16(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// The opaque `cursor` for a device's history: `h` and 16 hex digits.
pub fn encode_history_cursor(c: HistoryCursor) -> String {
    format!("h{c:016x}")
}

pub fn decode_history_cursor(s: &str) -> Result<HistoryCursor, ServiceError> {
    s.strip_prefix('h')
        .and_then(hex16)
        .ok_or_else(|| bad_cursor(s))
}

/// The opaque `cursor` for an audit log: `a` and 16 hex digits.
pub fn encode_audit_cursor(c: AuditCursor) -> String {
    format!("a{c:016x}")
}

pub fn decode_audit_cursor(s: &str) -> Result<AuditCursor, ServiceError> {
    s.strip_prefix('a')
        .and_then(hex16)
        .ok_or_else(|| bad_cursor(s))
}

/// An audit record as the API shows it (without the owner: a user reads only their own).
pub fn audit_entry(r: &crate::store::AuditRecord) -> hammer_protocol::api::AuditEntry {
    hammer_protocol::api::AuditEntry {
        time: r.time,
        actor: r.actor.clone(),
        action: r.action,
        target: r.target.clone(),
        peer: r.peer.clone(),
        result: r.result.clone(),
        detail: r.detail.clone(),
    }
}

/// The opaque `cursor` for a deployment list: `d`, 16 hex digits (created_at) and the id.
pub fn encode_deployment_cursor(c: &DeploymentCursor) -> String {
    format!("d{:016x}{}", c.created_at, c.id)
}

pub fn decode_deployment_cursor(s: &str) -> Result<DeploymentCursor, ServiceError> {
    let rest = s.strip_prefix('d').ok_or_else(|| bad_cursor(s))?;
    let (t, id) = (rest.get(..16), rest.get(16..));
    match (t.and_then(hex16), id) {
        (Some(created_at), Some(id)) if hammer_protocol::validate_deployment_id(id).is_ok() => {
            Ok(DeploymentCursor {
                created_at,
                id: id.to_owned(),
            })
        }
        _ => Err(bad_cursor(s)),
    }
}

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
        current_commit_subject: d
            .current_commit
            .as_ref()
            .and_then(|c| d.commit_subjects.get(c).cloned()),
        reported_generation: d.reported_generation,
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
        paused: d.paused,
        phasing: d.phasing.as_ref().map(phasing_view),
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

/// A phased deployment's progress as the API shows it.
pub fn phasing_view(p: &crate::store::PhasingRecord) -> hammer_protocol::api::PhasingView {
    use crate::store::PhaseGate;
    use hammer_protocol::api::{PhaseGateState, PhasingView, PromotionView};
    let n = |k: usize| u32::try_from(k).unwrap_or(u32::MAX);
    let (state, soak_until, held_reason) = match &p.gate {
        PhaseGate::Running => (PhaseGateState::Running, None, None),
        PhaseGate::Soaking { until } => (PhaseGateState::Soaking, Some(*until), None),
        PhaseGate::AwaitingPromotion => (PhaseGateState::AwaitingPromotion, None, None),
        PhaseGate::Held { reason } => (PhaseGateState::Held, None, Some(reason.clone())),
    };
    PhasingView {
        current: n(p.current + 1),
        count: n(p.ends.len()),
        ends: p.ends.iter().map(|&e| n(e)).collect(),
        state,
        soak_until,
        held_reason,
        promotions: p
            .promotions
            .iter()
            .map(|x| PromotionView {
                phase: n(x.phase + 1),
                at: x.at,
                by: x.by.clone(),
            })
            .collect(),
    }
}

/// A stored status event as a history line, within the store's caps ([`cap_status`]) also
/// when it has not been stored (a live event).
pub fn history_entry(s: &StoredStatus) -> HistoryEntry {
    let mut capped;
    let mut e = &s.event;
    if e.detail
        .as_ref()
        .is_some_and(|d| d.len() > crate::store::MAX_DETAIL)
        || e.log_tail.len() > crate::store::MAX_LOG_TAIL_LINES
        || e.log_tail
            .iter()
            .any(|l| l.len() > crate::store::MAX_LOG_TAIL_LINE)
    {
        capped = e.clone();
        cap_status(&mut capped);
        e = &capped;
    }
    HistoryEntry {
        time: e.time,
        deployment_id: e.deployment_id.clone(),
        deployer: s.deployer.clone(),
        generation: e.generation,
        phase: e.phase,
        commit: e.commit.clone(),
        detail: e.detail.clone(),
        log_tail: e.log_tail.clone(),
        commit_subject: e.commit_subject.clone(),
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

/// `(ISO 8601, "YYYY-MM-DD HH:MM:SS UTC")` of a time in ms since the epoch.
pub fn utc(ms: u64) -> (String, String) {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(
            decode_history_cursor(&encode_history_cursor(42)).unwrap(),
            42
        );
        let c = DeploymentCursor {
            created_at: 1_700_000_000_000,
            id: crate::ids::new_id(),
        };
        assert_eq!(
            decode_deployment_cursor(&encode_deployment_cursor(&c)).unwrap(),
            c
        );
        for bad in [
            "",
            "h12",
            "hzzzzzzzzzzzzzzzz",
            "d0000000000000001",
            "d00000000000000001/../x",
            "x",
        ] {
            assert!(decode_history_cursor(bad).is_err(), "{bad}");
            assert!(decode_deployment_cursor(bad).is_err(), "{bad}");
            assert!(decode_audit_cursor(bad).is_err(), "{bad}");
        }
        assert_eq!(decode_audit_cursor(&encode_audit_cursor(7)).unwrap(), 7);
        assert!(decode_audit_cursor(&encode_history_cursor(7)).is_err());
    }

    #[test]
    fn page_limit_defaults_and_refuses_out_of_range() {
        let p = |l: &str| PageParams {
            limit: Some(l.into()),
            cursor: None,
        };
        assert_eq!(
            PageParams::default().limit().unwrap(),
            DEFAULT_PAGE_LIMIT as usize
        );
        assert_eq!(p("7").limit().unwrap(), 7);
        for bad in ["0", "1001", "-1", "ten"] {
            assert!(p(bad).limit().is_err(), "{bad}");
        }
    }
}
