//! Deployments: create (device names or a tag selector, optional ref, strategy), list, show,
//! cancel, pause, resume, retry. The rollout engine ([`crate::rollout`]) owns running deployments; these handlers
//! validate, resolve targets among the caller's devices and hand over.

use crate::api::errors::ApiJson;
use crate::domain::deployments::{
    check_strategy, deployment_of, deployments_page, new_deployment, owned_deployment, resolve,
    retry_of,
};
use crate::domain::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::rollout::RolloutMsg;
use crate::service::Service;
use crate::store::DeploymentRecord;
use crate::views::{deployment_view, PageParams};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hammer_protocol::api::{CreateDeployment, DeploymentView};
use hammer_protocol::now_ms;
use std::sync::Arc;
use tokio::sync::oneshot;

/// `POST /api/v1/deployments`.
pub async fn create_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateDeployment>,
) -> ServiceResult<(
    StatusCode,
    axum::Extension<super::audit::AuditTarget>,
    Json<DeploymentView>,
)> {
    check_strategy(&req.strategy)?;
    if let Some(r) = &req.git_ref {
        hammer_protocol::validate_git_ref(r)
            .map_err(|e| ServiceError::bad_request(e.to_string()))?;
    }
    let commit = match &req.commit {
        Some(c) => Some(
            hammer_protocol::full_commit_id(c)
                .map_err(|e| ServiceError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    let devices = resolve(&svc, &caller, &req.targets)?;
    let dep = new_deployment(
        &caller,
        req.git_ref.clone(),
        commit,
        req.strategy.clone(),
        &devices,
        now_ms(),
    );
    let (status, view) = start_deployment(&svc, dep).await?;
    let target = super::audit::AuditTarget(view.0.id.clone());
    Ok((status, axum::Extension(target), view))
}

/// Hands a new deployment to the rollout engine: 201 with it as started.
async fn start_deployment(
    svc: &Service,
    dep: DeploymentRecord,
) -> ServiceResult<(StatusCode, Json<DeploymentView>)> {
    let (tx, rx) = oneshot::channel();
    svc.rollout
        .send(RolloutMsg::Create {
            dep: Box::new(dep),
            reply: tx,
        })
        .await
        .map_err(|_| ServiceError::internal("the rollout engine is not running"))?;
    let dep = rx
        .await
        .map_err(|_| ServiceError::internal("the rollout engine stopped"))??;
    Ok((StatusCode::CREATED, Json(deployment_view(&dep))))
}

/// `GET /api/v1/deployments?limit=&cursor=`: the caller's, newest first, a page at a time;
/// the `next-cursor` header names the next (older) page.
pub async fn list_deployments(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<PageParams>,
) -> ServiceResult<(HeaderMap, Json<Vec<DeploymentView>>)> {
    let (v, next) = deployments_page(&svc, &caller, &q)?;
    Ok((super::actions::next_cursor_headers(next), Json(v)))
}

/// `GET /api/v1/deployments/{id}`.
pub async fn show_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<DeploymentView>> {
    deployment_of(&svc, &caller, &id).map(Json)
}

/// `POST /api/v1/deployments/{id}/cancel`.
pub async fn cancel_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<DeploymentView>> {
    ask_engine(&svc, &caller, id, |id, owner, reply| RolloutMsg::Cancel {
        id,
        owner,
        by: caller.user.name.clone(),
        reply,
    })
    .await
}

/// Asks the rollout engine to act on the caller's deployment `id` (404 when it is not
/// theirs) and answers the deployment as the engine left it.
async fn ask_engine(
    svc: &Service,
    caller: &Caller,
    id: String,
    msg: impl FnOnce(
        String,
        String,
        oneshot::Sender<Result<crate::store::DeploymentRecord, crate::rollout::RolloutError>>,
    ) -> RolloutMsg,
) -> ServiceResult<Json<DeploymentView>> {
    owned_deployment(svc, caller, &id)?;
    let (tx, rx) = oneshot::channel();
    svc.rollout
        .send(msg(id, caller.user.id.clone(), tx))
        .await
        .map_err(|_| ServiceError::internal("the rollout engine is not running"))?;
    let dep = rx
        .await
        .map_err(|_| ServiceError::internal("the rollout engine stopped"))??;
    Ok(Json(deployment_view(&dep)))
}

/// `POST /api/v1/deployments/{id}/pause`: no new launches until resumed; 409 when it ended or
/// is already paused.
pub async fn pause_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<DeploymentView>> {
    hold(&svc, &caller, id, true).await
}

/// `POST /api/v1/deployments/{id}/resume`: launches again; 409 when it ended or is not
/// paused.
pub async fn resume_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<DeploymentView>> {
    hold(&svc, &caller, id, false).await
}

async fn hold(
    svc: &Service,
    caller: &Caller,
    id: String,
    paused: bool,
) -> ServiceResult<Json<DeploymentView>> {
    ask_engine(svc, caller, id, |id, owner, reply| RolloutMsg::Hold {
        id,
        owner,
        paused,
        reply,
    })
    .await
}

/// `POST /api/v1/deployments/{id}/promote`: opens the next phase of a running phased
/// deployment now; 409 when it ended, has one phase or is in its last phase.
pub async fn promote_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<DeploymentView>> {
    ask_engine(&svc, &caller, id, |id, owner, reply| RolloutMsg::Promote {
        id,
        owner,
        by: caller.user.name.clone(),
        reply,
    })
    .await
}

/// `POST /api/v1/deployments/{id}/retry`: 201 with a new deployment of the ended deployment's
/// failed and timed-out targets (same ref, commit and strategy); 409 while it runs or when
/// there are none.
pub async fn retry_deployment(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<(StatusCode, Json<DeploymentView>)> {
    let dep = retry_of(&svc, &caller, &id, now_ms())?;
    start_deployment(&svc, dep).await
}
