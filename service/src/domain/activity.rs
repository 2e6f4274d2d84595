//! What a device does and did: its kept log lines (asking turns its log streaming on for a
//! while) and its history, a page at a time; and the checks device actions share.

use super::devices::owned_device;
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::mqtt::publish::{send_command, set_desired};
use crate::service::Service;
use crate::store::{BadCommitRecord, DeviceRecord};
use crate::views::{encode_history_cursor, history_entry, PageParams};
use hammer_protocol::api::{ActionAccepted, HistoryEntry, LogLines};
use hammer_protocol::{now_ms, CommandKind, DesiredState, RunState};
use std::sync::Arc;
use std::time::Duration;

/// How long one `logs` request keeps the device streaming.
pub const LOG_WATCH: Duration = Duration::from_secs(60);

pub async fn not_in_rollout(svc: &Service, dev: &DeviceRecord) -> ServiceResult<()> {
    if let Some(dep) = crate::rollout::holder(svc, &dev.id).await {
        return Err(ServiceError::conflict(format!(
            "device {:?} is in running deployment {dep}; wait for it or cancel it first",
            dev.name
        )));
    }
    Ok(())
}

pub fn nothing_deployed(name: &str) -> ServiceError {
    ServiceError::conflict(format!(
        "device {name:?} has nothing deployed yet: run `hammer deploy` first"
    ))
}

/// Publishes a new generation of the device's desired state changed by `change` (stop,
/// start, rollback); refused while the device is in a running deployment or has nothing
/// deployed.
pub async fn republish(
    svc: &Service,
    dev: &DeviceRecord,
    action: &str,
    change: impl Fn(&mut DesiredState) + Send + Sync,
) -> ServiceResult<ActionAccepted> {
    not_in_rollout(svc, dev).await?;
    let rec = set_desired(svc, &dev.id, |d, generation| {
        let mut desired = d.desired.clone()?;
        desired.generation = generation;
        desired.issued_at = now_ms();
        change(&mut desired);
        Some(desired)
    })
    .await?
    .ok_or_else(|| nothing_deployed(&dev.name))?;
    Ok(ActionAccepted {
        device: dev.name.clone(),
        action: action.into(),
        generation: Some(rec.generation),
        deployment_id: rec.desired.map(|d| d.deployment_id),
    })
}

/// The previous commit that ran successfully on the device, other than its current one and
/// than the commits its owner marked `bad`.
pub fn previous_good_commit(dev: &DeviceRecord, bad: &[BadCommitRecord]) -> Option<String> {
    dev.good_commits
        .iter()
        .rev()
        .find(|c| {
            Some(*c) != dev.current_commit.as_ref()
                && !bad.iter().any(|b| b.commit.eq_ignore_ascii_case(c))
        })
        .cloned()
}

/// Rolls the device back to its previous successful commit ([`previous_good_commit`], never
/// one of the owner's `bad` commits): a new generation pinned to it. 409 when it has nothing
/// deployed or no earlier release.
pub async fn rollback_device(
    svc: &Service,
    dev: &DeviceRecord,
    bad: &[BadCommitRecord],
) -> ServiceResult<ActionAccepted> {
    if dev.desired.is_none() {
        return Err(nothing_deployed(&dev.name));
    }
    let previous = previous_good_commit(dev, bad).ok_or_else(|| {
        ServiceError::conflict(format!(
            "device {:?} has no earlier successful release to roll back to",
            dev.name
        ))
    })?;
    let rollback_id = crate::ids::new_id();
    republish(svc, dev, "rollback", move |d| {
        d.commit = Some(previous.clone());
        d.deployment_id = rollback_id.clone();
        d.run_state = RunState::Running;
    })
    .await
}

/// The device's kept log lines; asking turns its log streaming on for [`LOG_WATCH`] (the
/// API and the dashboard both call this).
pub async fn watch_logs(
    svc: &Arc<Service>,
    caller: &Caller,
    name: &str,
) -> ServiceResult<LogLines> {
    let dev = owned_device(svc, caller, name)?;
    let now = now_ms();
    let until = now + LOG_WATCH.as_millis() as u64;
    let new_watch = svc.live.watch_logs(&dev.id, now, until);
    // With replicas, another replica's watch may have ended and sent `logs off` while this
    // one's goes on: there every request says `logs on` again.
    if new_watch || svc.cluster.is_some() {
        send_command(svc, &dev.id, CommandKind::Logs { on: true }).await?;
    }
    if new_watch {
        let svc2 = svc.clone();
        let id = dev.id.clone();
        tokio::spawn(async move {
            loop {
                let until = svc2.live.logs_until(&id);
                let now = now_ms();
                if until <= now {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(until - now)).await;
            }
            // A request in between extends the watch: the next one spawns a new waiter.
            if !svc2.live.end_log_watch(&id, now_ms()) {
                return;
            }
            if let Err(e) = send_command(&svc2, &id, CommandKind::Logs { on: false }).await {
                tracing::debug!(device = %id, "could not send logs off: {e:#}");
            }
        });
    }
    Ok(LogLines {
        device: dev.name,
        lines: svc.live.logs(&dev.id),
    })
}

/// One page of a device's history: the newest `limit` events stored before `cursor`, oldest
/// first, and the cursor of the next (older) page.
pub fn history_page(
    svc: &Service,
    caller: &Caller,
    name: &str,
    q: &PageParams,
) -> ServiceResult<(Vec<HistoryEntry>, Option<String>)> {
    let dev = owned_device(svc, caller, name)?;
    let limit = q.limit()?;
    let before = q.history_cursor()?;
    let page = svc.store.history_page(&dev.id, before, limit)?;
    Ok((
        page.items.iter().map(history_entry).collect(),
        page.next.map(encode_history_cursor),
    ))
}
