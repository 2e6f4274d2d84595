//! Deployments: create (device names or a tag selector, optional ref, strategy), list, show,
//! cancel. The rollout engine ([`crate::rollout`]) owns running deployments; these handlers
//! validate, resolve targets among the caller's devices and hand over.

use super::devices::{owned_device, parse_tag};
use super::errors::{ApiError, ApiJson, ApiResult};
use crate::auth::Caller;
use crate::rollout::{RolloutError, RolloutMsg};
use crate::service::Service;
use crate::store::{DeploymentRecord, DeviceRecord, TargetRecord};
use crate::views::{deployment_view, encode_deployment_cursor, PageParams};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hammer_protocol::api::{
    CreateDeployment, DeploymentState, DeploymentView, Strategy, TargetState, Targets,
};
use hammer_protocol::now_ms;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The HTTP answer for what the rollout engine refused or could not do.
impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> ApiError {
        match e {
            RolloutError::DeviceBusy { .. } | RolloutError::AlreadyEnded { .. } => {
                ApiError::conflict(e.to_string())
            }
            RolloutError::NoDeployment { id } => ApiError::no_deployment(&id),
            RolloutError::NotStored { .. }
            | RolloutError::Vanished { .. }
            | RolloutError::Store(_) => ApiError::internal(e),
        }
    }
}

/// Most targets of one deployment.
pub const MAX_TARGETS: usize = 100_000;

fn check_strategy(s: &Strategy) -> ApiResult<()> {
    if s.max_in_flight == Some(0) {
        return Err(ApiError::bad_request(
            "strategy.max_in_flight must be at least 1",
        ));
    }
    if s.abort_at_percent.is_some_and(|p| p > 100) {
        return Err(ApiError::bad_request(
            "strategy.abort_at_percent must be 0 to 100",
        ));
    }
    if s.timeout_secs == 0 || s.timeout_secs > 7 * 24 * 3600 {
        return Err(ApiError::bad_request(
            "strategy.timeout_secs must be 1 to 604800",
        ));
    }
    if s.retries > 100 {
        return Err(ApiError::bad_request(
            "strategy.retries must be at most 100",
        ));
    }
    Ok(())
}

fn resolve(svc: &Service, caller: &Caller, targets: &Targets) -> ApiResult<Vec<DeviceRecord>> {
    let mut out: Vec<DeviceRecord> = match targets {
        Targets::Names(names) => {
            if names.is_empty() {
                return Err(ApiError::bad_request(
                    "targets.names is empty: name at least one device",
                ));
            }
            if names.len() > MAX_TARGETS {
                return Err(ApiError::bad_request(format!(
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
                return Err(ApiError::bad_request(format!(
                    "none of your devices has tag {sel}; `hammer device list` shows their tags"
                )));
            }
            v
        }
    };
    if let Some(d) = out.iter().find(|d| d.setup.is_none()) {
        return Err(ApiError::conflict(format!(
            "device {:?} has no setup yet: run `hammer setup {}` first",
            d.name, d.name
        )));
    }
    out.truncate(MAX_TARGETS);
    Ok(out)
}

/// `POST /api/v1/deployments`.
pub async fn create_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateDeployment>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    check_strategy(&req.strategy)?;
    if let Some(r) = &req.git_ref {
        hammer_protocol::validate_git_ref(r).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let commit = match &req.commit {
        Some(c) => Some(
            hammer_protocol::full_commit_id(c).map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    let devices = resolve(&svc, &caller, &req.targets)?;
    let now = now_ms();
    let dep = DeploymentRecord {
        id: crate::ids::new_id(),
        owner: caller.user.id.clone(),
        deployer: caller.user.name.clone(),
        created_at: now,
        finished_at: None,
        git_ref: req.git_ref.clone(),
        commit,
        strategy: req.strategy.clone(),
        state: DeploymentState::Running,
        reason: None,
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
    };
    let (tx, rx) = oneshot::channel();
    svc.rollout
        .send(RolloutMsg::Create {
            dep: Box::new(dep),
            reply: tx,
        })
        .await
        .map_err(|_| ApiError::internal("the rollout engine is not running"))?;
    let dep = rx
        .await
        .map_err(|_| ApiError::internal("the rollout engine stopped"))??;
    Ok((StatusCode::CREATED, Json(deployment_view(&dep))))
}

/// One page of the caller's deployments, newest first, and the cursor of the next page.
/// Reads only the caller's records (the store's owner index).
pub fn deployments_page(
    svc: &Service,
    caller: &Caller,
    q: &PageParams,
) -> ApiResult<(Vec<DeploymentView>, Option<String>)> {
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

/// `GET /api/v1/deployments?limit=&cursor=`: the caller's, newest first, a page at a time;
/// the `next-cursor` header names the next (older) page.
pub async fn list_deployments(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<PageParams>,
) -> ApiResult<(HeaderMap, Json<Vec<DeploymentView>>)> {
    let (v, next) = deployments_page(&svc, &caller, &q)?;
    Ok((super::actions::next_cursor_headers(next), Json(v)))
}

/// The caller's deployment `id`, or 404.
pub fn owned_deployment(svc: &Service, caller: &Caller, id: &str) -> ApiResult<DeploymentRecord> {
    if hammer_protocol::validate_deployment_id(id).is_err() {
        return Err(ApiError::no_deployment(id));
    }
    svc.store
        .deployment(id)?
        .filter(|d| d.owner == caller.user.id)
        .ok_or_else(|| ApiError::no_deployment(id))
}

/// `GET /api/v1/deployments/{id}`.
pub async fn show_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    deployment_of(&svc, &caller, &id).map(Json)
}

/// The caller's deployment `id` as the API shows it, or 404.
pub fn deployment_of(svc: &Service, caller: &Caller, id: &str) -> ApiResult<DeploymentView> {
    Ok(deployment_view(&owned_deployment(svc, caller, id)?))
}

/// `POST /api/v1/deployments/{id}/cancel`.
pub async fn cancel_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    owned_deployment(&svc, &caller, &id)?;
    let (tx, rx) = oneshot::channel();
    svc.rollout
        .send(RolloutMsg::Cancel {
            id,
            owner: caller.user.id.clone(),
            by: caller.user.name.clone(),
            reply: tx,
        })
        .await
        .map_err(|_| ApiError::internal("the rollout engine is not running"))?;
    let dep = rx
        .await
        .map_err(|_| ApiError::internal("the rollout engine stopped"))??;
    Ok(Json(deployment_view(&dep)))
}
