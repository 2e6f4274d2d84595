//! Enrollment (a device trades its one-time token and CSR for a certificate; failed attempts
//! are rate-limited per source address; served only on the HTTPS enrollment listener, and the
//! broker URL and service key in the answer are signed by the fleet CA: decision 0006) and provisioning (an admin registers a device for a
//! user and gets an offline bundle: a ready `hammer-manager` data dir).

use crate::api::errors::ApiJson;
use crate::domain::devices::{insert_within_quota, new_device, validate_tags};
use crate::domain::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::ids::hash_token;
use crate::init::DEVICE_CERT_VALIDITY;
use crate::limits::Peer;
use crate::service::Service;
use crate::views::device_view;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use hammer_protocol::api::{
    DeviceState, EnrollRequest, EnrollResponse, EnrollSignatures, ManagerConfigFile,
    ProvisionRequest, ProvisionResponse, ENROLL_FIELD_BROKER_URL as FIELD_BROKER_URL,
    ENROLL_FIELD_SERVICE_KEY as FIELD_SERVICE_KEY,
};
use hammer_protocol::sealing::SealingKeyPair;
use hammer_protocol::{now_ms, validate_name};

fn parse_sealing_key(hex_key: &str) -> ServiceResult<String> {
    let bytes = hex::decode(hex_key)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            ServiceError::bad_request("sealing_public_key must be 32 bytes as 64 hex characters")
        })?;
    Ok(hex::encode(bytes))
}

/// `POST /api/v1/enroll`.
pub async fn enroll(
    State(svc): State<std::sync::Arc<Service>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ServiceResult<Json<EnrollResponse>> {
    let ip = peer.ip();
    if svc.enroll_limiter.blocked(ip) {
        return Err(ServiceError::too_many(
            "too many failed enrollments from this address; wait a minute",
        ));
    }
    let fail = |e: ServiceError| {
        svc.enroll_limiter.fail(ip);
        e
    };
    let sealing = parse_sealing_key(&req.sealing_public_key).map_err(fail)?;
    if req.csr_pem.len() > hammer_certs::MAX_CSR_PEM {
        return Err(fail(ServiceError::bad_request("the CSR is too large")));
    }
    hammer_certs::csr_public_key(&req.csr_pem)
        .map_err(|e| fail(ServiceError::bad_request(format!("invalid CSR: {e}"))))?;
    let invalid = || {
        ServiceError::unauthorized("the enrollment token is invalid, expired or already used; create the device again or ask for a new token")
    };
    let rec = svc
        .store
        .take_enrollment(&hash_token(req.token.trim()))?
        .ok_or_else(|| fail(invalid()))?;
    if rec.expires_at < now_ms() {
        svc.store.flush().await?;
        return Err(fail(invalid()));
    }
    let Some(dev) = svc.store.device(&rec.device_id)? else {
        return Err(fail(invalid()));
    };
    let issued = svc
        .ca
        .sign_device_csr(&req.csr_pem, &dev.id, &dev.owner, DEVICE_CERT_VALIDITY)
        .map_err(|e| ServiceError::bad_request(format!("cannot sign the CSR: {e}")))?;
    let old_serial = dev.cert_serial.clone();
    svc.store.update_device(&dev.id, &mut |d| {
        d.cert_serial = Some(issued.serial.clone());
        d.sealing_public_key = Some(sealing.clone());
        if d.state == DeviceState::Registered {
            d.state = DeviceState::Enrolled;
        }
    })?;
    svc.store.flush().await?;
    if let (Some(old), Some(b)) = (old_serial, &svc.broker) {
        let _ = b.revoke(&old);
    }
    tracing::info!(device = %dev.id, "device enrolled");
    let service_public_key = svc.signer.public().to_hex();
    let sign = |field: &str, value: &str| {
        svc.ca
            .sign_statement(field, &dev.id, value)
            .map_err(ServiceError::internal)
    };
    let ca_signatures = EnrollSignatures {
        broker_url: sign(FIELD_BROKER_URL, &svc.device_broker_url)?,
        service_public_key: sign(FIELD_SERVICE_KEY, &service_public_key)?,
    };
    Ok(Json(EnrollResponse {
        device_id: dev.id,
        owner: dev.owner,
        cert_pem: issued.cert_pem,
        ca_pem: svc.ca_pem.clone(),
        broker_url: svc.device_broker_url.clone(),
        service_public_key,
        ca_signatures,
    }))
}

/// `POST /api/v1/provision` (admin).
pub async fn provision(
    State(svc): State<std::sync::Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<ProvisionRequest>,
) -> ServiceResult<(
    StatusCode,
    axum::Extension<super::audit::AuditTarget>,
    Json<ProvisionResponse>,
)> {
    caller.require_admin()?;
    validate_name(&req.name).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    validate_tags(&req.tags)?;
    let owner = svc
        .store
        .user_by_name(&req.owner)?
        .filter(|u| !u.admin)
        .ok_or_else(|| ServiceError::not_found(format!("no user named {:?}", req.owner)))?;
    let mut dev = new_device(&owner.id, &req.name, req.tags, DeviceState::Enrolled);
    let issued = svc
        .ca
        .issue_device(&dev.id, &owner.id, DEVICE_CERT_VALIDITY)
        .map_err(ServiceError::internal)?;
    let sealing = SealingKeyPair::generate().map_err(ServiceError::internal)?;
    dev.cert_serial = Some(issued.serial.clone());
    dev.sealing_public_key = Some(hex::encode(sealing.public_bytes()));
    if !insert_within_quota(&svc, &dev)? {
        return Err(ServiceError::conflict(format!(
            "user {:?} already has a device named {:?}",
            req.owner, req.name
        )));
    }
    svc.store.flush().await?;
    let config = ManagerConfigFile {
        device_id: dev.id.clone(),
        owner: owner.id.clone(),
        broker_url: svc.device_broker_url.clone(),
        service_public_key: svc.signer.public().to_hex(),
        insecure_plain_mqtt_for_tests: false,
        git_ca_file: None,
    };
    tracing::info!(device = %dev.id, "device provisioned");
    Ok((
        StatusCode::CREATED,
        axum::Extension(super::audit::AuditTarget(format!(
            "{} (of {})",
            dev.name, owner.name
        ))),
        Json(ProvisionResponse {
            device: device_view(&dev, &svc.live),
            ca_pem: svc.ca_pem.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone().unwrap_or_default(),
            sealing_private_key: hex::encode(sealing.private_bytes().as_ref()),
            config_toml: toml::to_string(&config).map_err(ServiceError::internal)?,
        }),
    ))
}
