//! Devices of the caller: create (with a one-time enrollment token), list (optionally by
//! tag), show, delete (revokes the certificate and kicks the device). Another user's device
//! answers 404 exactly like a missing one; admins own no devices.

use crate::api::errors::ApiJson;
use crate::domain::devices::{
    device_of, devices_of, insert_within_quota, new_device, owned_device, validate_tags,
    ENROLLMENT_TTL_MS,
};
use crate::domain::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::ids;
use crate::service::Service;
use crate::store::EnrollmentRecord;
use crate::views::device_view;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use hammer_protocol::api::{CreateDevice, CreatedDevice, DeviceState, DeviceView};
use hammer_protocol::{now_ms, validate_name};
use serde::Deserialize;
use std::sync::Arc;

/// `POST /api/v1/devices`.
pub async fn create_device(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateDevice>,
) -> ServiceResult<(
    StatusCode,
    axum::Extension<super::audit::AuditTarget>,
    Json<CreatedDevice>,
)> {
    if caller.user.admin {
        return Err(ServiceError::forbidden(
            "admin tokens do not own devices: use `hammer certs issue-device --owner USER --name NAME --out DIR` to provision for a user, or log in with the user's token",
        ));
    }
    validate_name(&req.name).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    validate_tags(&req.tags)?;
    let dev = new_device(
        &caller.user.id,
        &req.name,
        req.tags,
        DeviceState::Registered,
    );
    if !insert_within_quota(&svc, &dev)? {
        return Err(ServiceError::conflict(format!(
            "you already have a device named {:?}",
            req.name
        )));
    }
    let token = ids::new_enrollment_token();
    let expires = now_ms() + ENROLLMENT_TTL_MS;
    svc.store.insert_enrollment(
        &ids::hash_token(&token),
        &EnrollmentRecord {
            device_id: dev.id.clone(),
            owner: dev.owner.clone(),
            expires_at: expires,
        },
    )?;
    svc.store.flush().await?;
    tracing::info!(device = %dev.id, "device registered");
    Ok((
        StatusCode::CREATED,
        axum::Extension(super::audit::AuditTarget(dev.name.clone())),
        Json(CreatedDevice {
            device: device_view(&dev, &svc.live),
            enrollment_token: token,
            enrollment_expires_at: expires,
            ca_sha256: svc.ca.cert().fingerprint_sha256(),
            enroll_url: svc.enroll_url.clone(),
        }),
    ))
}

#[derive(Deserialize)]
pub struct ListQuery {
    tag: Option<String>,
}

/// `GET /api/v1/devices?tag=key=value`.
pub async fn list_devices(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ServiceResult<Json<Vec<DeviceView>>> {
    devices_of(&svc, &caller, q.tag.as_deref()).map(Json)
}

/// `GET /api/v1/devices/{name}`.
pub async fn show_device(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<DeviceView>> {
    device_of(&svc, &caller, &name).map(Json)
}

/// `DELETE /api/v1/devices/{name}`: forget the device, revoke its certificate, kick it.
pub async fn delete_device(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<StatusCode> {
    let d = owned_device(&svc, &caller, &name)?;
    if let Some(serial) = &d.cert_serial {
        match &svc.broker {
            Some(b) => {
                b.revoke(serial)
                    .map_err(|e| ServiceError::internal(e.to_string()))?;
            }
            None => {
                svc.revocations
                    .revoke(serial)
                    .map_err(|e| ServiceError::internal(e.to_string()))?;
            }
        }
    }
    svc.store.delete_device(&d.id)?;
    svc.store.flush().await?;
    if let Some(b) = &svc.broker {
        b.kick_device(&d.id);
    }
    svc.live.forget(&d.id);
    if let Err(e) = crate::mqtt::publish::clear_desired(&svc, &d.id).await {
        tracing::warn!(device = %d.id, error = %e, "cannot clear the retained desired state");
    }
    tracing::info!(device = %d.id, "device deleted and its certificate revoked");
    Ok(StatusCode::NO_CONTENT)
}
