//! The caller's deployments: check a strategy, resolve targets among the caller's devices,
//! look one up, page through them; and what the rollout engine's refusals mean to a caller.

use super::devices::{owned_device, parse_tag};
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::rollout::RolloutError;
use crate::service::Service;
use crate::store::{DeploymentRecord, DeviceRecord, TargetRecord};
use crate::views::{deployment_view, encode_deployment_cursor, PageParams};
use hammer_protocol::api::{DeploymentState, DeploymentView, Strategy, TargetState, Targets};

/// The caller's answer for what the rollout engine refused or could not do.
impl From<RolloutError> for ServiceError {
    fn from(e: RolloutError) -> ServiceError {
        match e {
            RolloutError::DeviceBusy { .. }
            | RolloutError::AlreadyEnded { .. }
            | RolloutError::AlreadyPaused { .. }
            | RolloutError::NotPaused { .. }
            | RolloutError::NotPhased { .. }
            | RolloutError::LastPhase { .. }
            | RolloutError::BadCommit(_) => ServiceError::conflict(e.to_string()),
            RolloutError::NoDeployment { id } => ServiceError::no_deployment(&id),
            RolloutError::Unavailable => ServiceError::unavailable(e.to_string()),
            RolloutError::NotStored { .. }
            | RolloutError::Vanished { .. }
            | RolloutError::Remote(_)
            | RolloutError::Store(_) => ServiceError::internal(e),
        }
    }
}

/// Most targets of one deployment.
pub const MAX_TARGETS: usize = 100_000;

pub fn check_strategy(s: &Strategy) -> ServiceResult<()> {
    if s.max_in_flight == Some(0) {
        return Err(ServiceError::bad_request(
            "strategy.max_in_flight must be at least 1",
        ));
    }
    if s.abort_at_percent.is_some_and(|p| p > 100) {
        return Err(ServiceError::bad_request(
            "strategy.abort_at_percent must be 0 to 100",
        ));
    }
    if s.timeout_secs == 0 || s.timeout_secs > 7 * 24 * 3600 {
        return Err(ServiceError::bad_request(
            "strategy.timeout_secs must be 1 to 604800",
        ));
    }
    if s.retries > 100 {
        return Err(ServiceError::bad_request(
            "strategy.retries must be at most 100",
        ));
    }
    check_phases(s)
}

/// Latest scheduled start accepted: 90 days ahead.
pub const MAX_START_AHEAD_MS: u64 = 90 * 24 * 3600 * 1000;

fn check_phases(s: &Strategy) -> ServiceResult<()> {
    use crate::rollout::phasing::{MAX_PHASES, MAX_SOAK_SECS};
    use hammer_protocol::api::PhaseSize;
    if s.phases.len() > MAX_PHASES {
        return Err(ServiceError::bad_request(format!(
            "strategy.phases names at most {MAX_PHASES} phases"
        )));
    }
    for p in &s.phases {
        match *p {
            PhaseSize::Devices(0) => {
                return Err(ServiceError::bad_request(
                    "strategy.phases: a phase of devices holds at least 1",
                ))
            }
            PhaseSize::Percent(n) if n == 0 || n > 100 => {
                return Err(ServiceError::bad_request(
                    "strategy.phases: a percentage is 1 to 100",
                ))
            }
            _ => {}
        }
    }
    if s.soak_secs.is_some() && s.phases.is_empty() {
        return Err(ServiceError::bad_request(
            "strategy.soak_secs needs strategy.phases (e.g. `--phases 1,10%`)",
        ));
    }
    if s.soak_secs.is_some_and(|t| t > MAX_SOAK_SECS) {
        return Err(ServiceError::bad_request(format!(
            "strategy.soak_secs must be at most {MAX_SOAK_SECS} (seven days)"
        )));
    }
    if s.start_at
        .is_some_and(|t| t > hammer_protocol::now_ms().saturating_add(MAX_START_AHEAD_MS))
    {
        return Err(ServiceError::bad_request(
            "strategy.start_at is more than 90 days ahead",
        ));
    }
    Ok(())
}

pub fn resolve(
    svc: &Service,
    caller: &Caller,
    targets: &Targets,
) -> ServiceResult<Vec<DeviceRecord>> {
    let mut out: Vec<DeviceRecord> = match targets {
        Targets::Names(names) => {
            if names.is_empty() {
                return Err(ServiceError::bad_request(
                    "targets.names is empty: name at least one device",
                ));
            }
            if names.len() > MAX_TARGETS {
                return Err(ServiceError::bad_request(format!(
                    "at most {MAX_TARGETS} targets"
                )));
            }
            let mut v = Vec::with_capacity(names.len());
            for n in names {
                let d = owned_device(svc, caller, n)?;
                if !v.iter().any(|x: &DeviceRecord| x.id == d.id) {
                    v.push(d);
                }
            }
            v
        }
        Targets::Tag(sel) => {
            let (k, val) = parse_tag(sel)?;
            let mut v: Vec<DeviceRecord> = svc
                .store
                .devices_of(&caller.user.id)?
                .into_iter()
                .filter(|d| d.tags.get(&k) == Some(&val))
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            if v.is_empty() {
                return Err(ServiceError::bad_request(format!(
                    "none of your devices has tag {sel}; `hammer device list` shows their tags"
                )));
            }
            v
        }
    };
    if let Some(d) = out.iter().find(|d| d.setup.is_none()) {
        return Err(ServiceError::conflict(format!(
            "device {:?} has no setup yet: run `hammer setup {}` first",
            d.name, d.name
        )));
    }
    out.truncate(MAX_TARGETS);
    Ok(out)
}

/// One page of the caller's deployments, newest first, and the cursor of the next page.
/// Reads only the caller's records (the store's owner index).
pub fn deployments_page(
    svc: &Service,
    caller: &Caller,
    q: &PageParams,
) -> ServiceResult<(Vec<DeploymentView>, Option<String>)> {
    let limit = q.limit()?;
    let after = q.deployment_cursor()?;
    let page = svc
        .store
        .deployments_of(&caller.user.id, after.as_ref(), limit)?;
    Ok((
        page.items.iter().map(deployment_view).collect(),
        page.next.as_ref().map(encode_deployment_cursor),
    ))
}

/// The caller's deployment `id`, or 404.
pub fn owned_deployment(
    svc: &Service,
    caller: &Caller,
    id: &str,
) -> ServiceResult<DeploymentRecord> {
    if hammer_protocol::validate_deployment_id(id).is_err() {
        return Err(ServiceError::no_deployment(id));
    }
    svc.store
        .deployment(id)?
        .filter(|d| d.owner == caller.user.id)
        .ok_or_else(|| ServiceError::no_deployment(id))
}

/// The caller's deployment `id` as the API shows it, or 404.
pub fn deployment_of(svc: &Service, caller: &Caller, id: &str) -> ServiceResult<DeploymentView> {
    Ok(deployment_view(&owned_deployment(svc, caller, id)?))
}

/// A new deployment record (not yet stored) of `devices`, every target pending.
pub fn new_deployment(
    caller: &Caller,
    git_ref: Option<String>,
    commit: Option<String>,
    strategy: Strategy,
    devices: &[DeviceRecord],
    now: u64,
) -> DeploymentRecord {
    let strategy_phases = strategy.phases.clone();
    DeploymentRecord {
        id: crate::ids::new_id(),
        owner: caller.user.id.clone(),
        deployer: caller.user.name.clone(),
        created_at: now,
        finished_at: None,
        git_ref,
        commit,
        strategy,
        state: DeploymentState::Running,
        reason: None,
        paused: false,
        phasing: crate::rollout::phasing::start(&strategy_phases, devices.len()),
        targets: devices
            .iter()
            .map(|d| TargetRecord {
                device_id: d.id.clone(),
                device: d.name.clone(),
                state: TargetState::Pending,
                attempts: 0,
                last_phase: None,
                commit: None,
                detail: None,
                updated_at: now,
                generation: None,
                deadline: None,
            })
            .collect(),
    }
}

/// Whether a target of an ended deployment is retried by `POST /deployments/{id}/retry`:
/// it failed or timed out. Succeeded targets need nothing; skipped ones (the deployment was
/// aborted or canceled before or while they ran) never got a verdict, so they are left to a
/// new deployment the user makes on purpose.
pub fn is_retried(t: &TargetRecord) -> bool {
    matches!(t.state, TargetState::Failed | TargetState::TimedOut)
}

/// A new deployment retrying the caller's ended deployment `id`: the same ref, commit (the
/// one it pinned, if any) and strategy, for its targets that failed or timed out
/// ([`is_retried`]) and still exist. 404 when it is not the caller's; 409 while it runs or
/// when no target is left to retry.
pub fn retry_of(
    svc: &Service,
    caller: &Caller,
    id: &str,
    now: u64,
) -> ServiceResult<DeploymentRecord> {
    let old = owned_deployment(svc, caller, id)?;
    if old.state == DeploymentState::Running {
        return Err(ServiceError::conflict(format!(
            "deployment {id} is still running; wait for it to end or cancel it"
        )));
    }
    let mut devices = Vec::new();
    for t in old.targets.iter().filter(|t| is_retried(t)) {
        if let Some(d) = svc
            .store
            .device(&t.device_id)?
            .filter(|d| d.owner == caller.user.id && d.setup.is_some())
        {
            devices.push(d);
        }
    }
    if devices.is_empty() {
        return Err(ServiceError::conflict(format!(
            "deployment {id} has no failed or timed-out device left to retry"
        )));
    }
    Ok(new_deployment(
        caller,
        old.git_ref.clone(),
        old.commit.clone(),
        // A retry starts now, whatever the first attempt's schedule was.
        Strategy {
            start_at: None,
            ..old.strategy.clone()
        },
        &devices,
        now,
    ))
}
