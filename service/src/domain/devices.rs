//! The caller's devices: look one up (another user's device is "no such device", exactly like
//! a missing one), list them by tag, make a new record, insert it within the per-user quota.

use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::ids;
use crate::service::Service;
use crate::store::DeviceRecord;
use crate::views::device_view;
use hammer_protocol::api::{DeviceState, DeviceView};
use hammer_protocol::{now_ms, validate_name, RunState};
use std::collections::BTreeMap;

/// How long an enrollment token works.
pub const ENROLLMENT_TTL_MS: u64 = 24 * 3600 * 1000;

/// The caller's device named `name`, or 404.
pub fn owned_device(svc: &Service, caller: &Caller, name: &str) -> ServiceResult<DeviceRecord> {
    if validate_name(name).is_err() {
        return Err(ServiceError::no_device(name));
    }
    svc.store
        .device_by_name(&caller.user.id, name)?
        .ok_or_else(|| ServiceError::no_device(name))
}

/// Checks tags by the protocol's rule ([`hammer_protocol::validate_tags`]): 400 with what
/// is allowed.
pub fn validate_tags(tags: &BTreeMap<String, String>) -> ServiceResult<()> {
    hammer_protocol::validate_tags(tags).map_err(|e| ServiceError::bad_request(e.to_string()))
}

/// A new device record for `owner`.
pub fn new_device(
    owner: &str,
    name: &str,
    tags: BTreeMap<String, String>,
    state: DeviceState,
) -> DeviceRecord {
    DeviceRecord {
        id: ids::new_id(),
        owner: owner.to_owned(),
        name: name.to_owned(),
        tags,
        state,
        created_at: now_ms(),
        cert_serial: None,
        sealing_public_key: None,
        setup: None,
        generation: 0,
        cmd_seq: 0,
        desired: None,
        run_state: RunState::Running,
        current_commit: None,
        app_phase: None,
        current_deployment: None,
        good_commits: Vec::new(),
        commit_subjects: BTreeMap::new(),
        reported_generation: Some(0),
    }
}

/// Inserts `dev` unless its owner is at `--max-devices-per-user` (429 with the limit and
/// the flag that raises it); `false` when the owner already has a device of that name.
///
/// The count is the store's ([`crate::store::Store::count_devices_of`]), so devices other
/// replicas added count too. Within one process the check and the insert are one step (a
/// mutex), so concurrent creations cannot pass the quota; across replicas sharing a database
/// they are not one transaction: creations racing on several replicas at once can overshoot
/// the quota by at most one device per replica (each replica inserts one at a time after a
/// count that includes every committed insert).
pub fn insert_within_quota(svc: &Service, dev: &DeviceRecord) -> ServiceResult<bool> {
    let max = svc.quotas.max_devices_per_user;
    let _one_at_a_time = svc.device_insert.lock().unwrap_or_else(|p| p.into_inner());
    let have = svc.store.count_devices_of(&dev.owner)?;
    if have >= max {
        crate::metrics::Counters::inc(&svc.counters.quota_devices_refused);
        tracing::info!(owner = %dev.owner, have, max, "device refused: at the per-user quota");
        return Err(ServiceError::too_many(format!(
                "this user already has {have} devices, the most allowed per user ({max}); remove one (`hammer device remove NAME`) or ask the operator to raise `hammer serve --max-devices-per-user`"
            ),
        ));
    }
    Ok(svc.store.insert_device(dev)?)
}

/// The caller's devices, by name, optionally only those with the tag `key=value` (the API
/// and the dashboard both call this).
pub fn devices_of(
    svc: &Service,
    caller: &Caller,
    tag: Option<&str>,
) -> ServiceResult<Vec<DeviceView>> {
    let filter = match tag {
        Some(t) => Some(parse_tag(t)?),
        None => None,
    };
    let mut v: Vec<DeviceView> = svc
        .store
        .devices_of(&caller.user.id)?
        .iter()
        .filter(|d| match &filter {
            Some((k, val)) => d.tags.get(k) == Some(val),
            None => true,
        })
        .map(|d| device_view(d, &svc.live))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// Parses a `key=value` tag selector by the protocol's rule ([`hammer_protocol::parse_tag`]).
pub fn parse_tag(t: &str) -> ServiceResult<(String, String)> {
    hammer_protocol::parse_tag(t).map_err(|e| ServiceError::bad_request(e.to_string()))
}

/// The caller's device `name` as the API shows it, or 404.
pub fn device_of(svc: &Service, caller: &Caller, name: &str) -> ServiceResult<DeviceView> {
    let d = owned_device(svc, caller, name)?;
    Ok(device_view(&d, &svc.live))
}
