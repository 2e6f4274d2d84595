//! The kill switch: `POST /api/v1/commits/{sha}/bad` (mark a commit bad: stop the caller's
//! running deployments pinned to it, refuse new ones, optionally roll back the devices running
//! it), `DELETE /api/v1/commits/{sha}/bad` (unmark) and `GET /api/v1/commits/bad` (list).
//! The rules are in [`crate::domain::commits`].

use crate::api::errors::ApiJson;
use crate::domain::commits::{bad_commits, mark_bad, unmark_bad};
use crate::domain::Caller;
use crate::error::ServiceResult;
use crate::service::Service;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hammer_protocol::api::{BadCommits, MarkBad, MarkedBad};
use std::sync::Arc;

/// `POST /api/v1/commits/{sha}/bad`.
pub async fn mark(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(sha): Path<String>,
    ApiJson(req): ApiJson<MarkBad>,
) -> ServiceResult<Json<MarkedBad>> {
    Ok(Json(mark_bad(&svc, &caller, &sha, req).await?))
}

/// `DELETE /api/v1/commits/{sha}/bad`.
pub async fn unmark(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(sha): Path<String>,
) -> ServiceResult<StatusCode> {
    unmark_bad(&svc, &caller, &sha).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/commits/bad`.
pub async fn list(
    State(svc): State<Arc<Service>>,
    caller: Caller,
) -> ServiceResult<Json<BadCommits>> {
    Ok(Json(bad_commits(&svc, &caller)?))
}
