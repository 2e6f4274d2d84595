//! Devices of the caller: create (with a one-time enrollment token), list (optionally by
//! tag), show, delete (revokes the certificate and kicks the device). Another user's device
//! answers 404 exactly like a missing one; admins own no devices.

use super::errors::{ApiError, ApiJson, ApiResult};
use crate::auth::Caller;
use crate::ids;
use crate::service::Service;
use crate::store::{DeviceRecord, EnrollmentRecord};
use crate::views::device_view;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use hammer_protocol::api::{CreateDevice, CreatedDevice, DeviceState, DeviceView};
use hammer_protocol::{now_ms, validate_name, RunState};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How long an enrollment token works.
pub const ENROLLMENT_TTL_MS: u64 = 24 * 3600 * 1000;

/// The caller's device named `name`, or 404.
pub fn owned_device(svc: &Service, caller: &Caller, name: &str) -> ApiResult<DeviceRecord> {
    if validate_name(name).is_err() {
        return Err(ApiError::no_device(name));
    }
    svc.store
        .device_by_name(&caller.user.id, name)?
        .ok_or_else(|| ApiError::no_device(name))
}

/// Checks tags by the protocol's rule ([`hammer_protocol::validate_tags`]): 400 with what
/// is allowed.
pub fn validate_tags(tags: &BTreeMap<String, String>) -> ApiResult<()> {
    hammer_protocol::validate_tags(tags).map_err(|e| ApiError::bad_request(e.to_string()))
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
    }
}

/// Inserts `dev` unless its owner is at `--max-devices-per-user` (429 with the limit and
/// the flag that raises it); `false` when the owner already has a device of that name. The
/// check and the insert are one step, so concurrent creations cannot pass the quota.
pub fn insert_within_quota(svc: &Service, dev: &DeviceRecord) -> ApiResult<bool> {
    let max = svc.quotas.max_devices_per_user;
    let _one_at_a_time = svc.device_insert.lock().unwrap_or_else(|p| p.into_inner());
    let have = svc.gauges.devices_of(&dev.owner);
    if have >= max {
        crate::metrics::Counters::inc(&svc.counters.quota_devices_refused);
        tracing::info!(owner = %dev.owner, have, max, "device refused: at the per-user quota");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this user already has {have} devices, the most allowed per user ({max}); remove one (`hammer device remove NAME`) or ask the operator to raise `hammer serve --max-devices-per-user`"
            ),
        ));
    }
    Ok(svc.store.insert_device(dev)?)
}

/// `POST /api/v1/devices`.
pub async fn create_device(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateDevice>,
) -> ApiResult<(StatusCode, Json<CreatedDevice>)> {
    if caller.user.admin {
        return Err(ApiError::forbidden(
            "admin tokens do not own devices: use `hammer certs issue-device --owner USER --name NAME --out DIR` to provision for a user, or log in with the user's token",
        ));
    }
    validate_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    validate_tags(&req.tags)?;
    let dev = new_device(
        &caller.user.id,
        &req.name,
        req.tags,
        DeviceState::Registered,
    );
    if !insert_within_quota(&svc, &dev)? {
        return Err(ApiError::conflict(format!(
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
) -> ApiResult<Json<Vec<DeviceView>>> {
    devices_of(&svc, &caller, q.tag.as_deref()).map(Json)
}

/// The caller's devices, by name, optionally only those with the tag `key=value` (the API
/// and the dashboard both call this).
pub fn devices_of(svc: &Service, caller: &Caller, tag: Option<&str>) -> ApiResult<Vec<DeviceView>> {
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
pub fn parse_tag(t: &str) -> ApiResult<(String, String)> {
    hammer_protocol::parse_tag(t).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /api/v1/devices/{name}`.
pub async fn show_device(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    device_of(&svc, &caller, &name).map(Json)
}

/// The caller's device `name` as the API shows it, or 404.
pub fn device_of(svc: &Service, caller: &Caller, name: &str) -> ApiResult<DeviceView> {
    let d = owned_device(svc, caller, name)?;
    Ok(device_view(&d, &svc.live))
}

/// `DELETE /api/v1/devices/{name}`: forget the device, revoke its certificate, kick it.
pub async fn delete_device(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let d = owned_device(&svc, &caller, &name)?;
    if let Some(serial) = &d.cert_serial {
        match &svc.broker {
            Some(b) => {
                b.revoke(serial)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            None => {
                svc.revocations
                    .revoke(serial)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
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
