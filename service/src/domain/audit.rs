//! The audit log: what a user reads of it (their own records only, a page at a time) and
//! which device events go into it. State-changing requests are recorded by the HTTP layer
//! (`api::audit`), in one place.

use super::Caller;
use crate::error::ServiceResult;
use crate::service::Service;
use crate::store::{AuditRecord, MAX_AUDIT_TEXT};
use crate::views::{self, PageParams};
use hammer_protocol::api::{AuditAction, AuditEntry};
use hammer_protocol::{Phase, StatusEvent};

/// The record of a newly stored device event that matters (a rollback, a refusal), in the
/// device owner's log; `None` for other phases.
pub fn device_event(owner: &str, device: &str, ev: &StatusEvent, now: u64) -> Option<AuditRecord> {
    let action = match ev.phase {
        Phase::RolledBack => AuditAction::DeviceRolledBack,
        Phase::Refused => AuditAction::DeviceRefused,
        _ => return None,
    };
    let mut detail: Vec<String> = Vec::new();
    if let Some(c) = &ev.commit {
        detail.push(format!("commit {c}"));
    }
    if let Some(d) = &ev.deployment_id {
        detail.push(format!("deployment {d}"));
    }
    if let Some(d) = &ev.detail {
        detail.push(crate::store::cut(d, MAX_AUDIT_TEXT / 2).into_owned());
    }
    Some(AuditRecord {
        time: now,
        owner: owner.to_owned(),
        actor: format!("device {device}"),
        action,
        target: Some(device.to_owned()),
        peer: None,
        result: "ok".to_owned(),
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
    })
}

/// A dashboard sign-in of the user `(id, name)`, in their own log, from `peer` (an IP
/// address).
pub fn signed_in((id, name): (&str, &str), peer: Option<String>, now: u64) -> AuditRecord {
    AuditRecord {
        time: now,
        owner: id.to_owned(),
        actor: name.to_owned(),
        action: AuditAction::SignedIn,
        target: None,
        peer,
        result: "ok".to_owned(),
        detail: Some("dashboard session".to_owned()),
    }
}

/// Appends `rec`; a store that refuses is logged, never the request's failure.
pub fn append(svc: &Service, rec: &AuditRecord) {
    if let Err(e) = svc.store.append_audit(rec) {
        tracing::warn!(error = %e, action = ?rec.action, "cannot append to the audit log");
    }
}

/// One page of the caller's audit log, newest first, and the cursor of the next (older) one.
pub fn page(
    svc: &Service,
    caller: &Caller,
    q: &PageParams,
) -> ServiceResult<(Vec<AuditEntry>, Option<String>)> {
    let limit = q.limit()?;
    let before = q.audit_cursor()?;
    let page = svc.store.audit_page(&caller.user.id, before, limit)?;
    Ok((
        page.items.iter().map(views::audit_entry).collect(),
        page.next.map(views::encode_audit_cursor),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::PROTOCOL_VERSION;

    fn event(phase: Phase) -> StatusEvent {
        StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: 1,
            seq: 1,
            generation: None,
            deployment_id: Some("dep1".into()),
            phase,
            commit: Some("abc".into()),
            time: 1,
            detail: Some("health check failed".into()),
            log_tail: Vec::new(),
            commit_subject: None,
        }
    }

    #[test]
    fn rollbacks_and_refusals_are_recorded_for_the_owner_and_nothing_else_is() {
        let r = device_event("u1", "pi", &event(Phase::RolledBack), 7).unwrap();
        assert_eq!(r.owner, "u1");
        assert_eq!(r.actor, "device pi");
        assert_eq!(r.action, AuditAction::DeviceRolledBack);
        assert_eq!(r.target.as_deref(), Some("pi"));
        assert_eq!(
            r.detail.as_deref(),
            Some("commit abc; deployment dep1; health check failed")
        );
        let r = device_event("u1", "pi", &event(Phase::Refused), 7).unwrap();
        assert_eq!(r.action, AuditAction::DeviceRefused);
        for p in [
            Phase::Running,
            Phase::Failed,
            Phase::Fetched,
            Phase::Unknown,
        ] {
            assert!(device_event("u1", "pi", &event(p), 7).is_none(), "{p:?}");
        }
    }
}
