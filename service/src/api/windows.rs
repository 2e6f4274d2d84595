//! Maintenance windows over HTTP: `GET /api/v1/windows` (the caller's), `POST
//! /api/v1/windows` (add one), `DELETE /api/v1/windows/{id}` and `GET
//! /api/v1/devices/{name}/windows` (a device's, and whether it is in one now). The rules are
//! in [`crate::domain::windows`].

use super::audit::AuditTarget;
use crate::api::errors::ApiJson;
use crate::domain::windows;
use crate::domain::Caller;
use crate::error::ServiceResult;
use crate::service::Service;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use hammer_protocol::api::{CreateWindow, DeviceWindows, MaintenanceWindow};
use std::sync::Arc;

/// `GET /api/v1/windows`.
pub async fn list(
    State(svc): State<Arc<Service>>,
    caller: Caller,
) -> ServiceResult<Json<Vec<MaintenanceWindow>>> {
    Ok(Json(windows::list(&svc, &caller)?))
}

/// `POST /api/v1/windows`.
pub async fn add(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWindow>,
) -> ServiceResult<(StatusCode, Extension<AuditTarget>, Json<MaintenanceWindow>)> {
    let w = windows::add(&svc, &caller, req).await?;
    Ok((
        StatusCode::CREATED,
        Extension(AuditTarget(w.id.clone())),
        Json(w),
    ))
}

/// `DELETE /api/v1/windows/{id}`.
pub async fn remove(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<StatusCode> {
    windows::remove(&svc, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/devices/{name}/windows`.
pub async fn of_device(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<DeviceWindows>> {
    Ok(Json(windows::of_device(
        &svc,
        &caller,
        &name,
        hammer_protocol::now_ms(),
    )?))
}
