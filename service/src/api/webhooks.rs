//! `/api/v1/webhooks`: a user's webhooks (register, list, remove, test) and each one's
//! delivery log, through [`crate::domain::webhooks`]. The signing secret is in the creation's
//! answer only (`Cache-Control: no-store`).

use super::users::NO_STORE;
use crate::api::errors::ApiJson;
use crate::domain::{webhooks, Caller};
use crate::error::ServiceResult;
use crate::service::Service;
use crate::views::PageParams;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, StatusCode};
use axum::Json;
use hammer_protocol::api::{CreateWebhook, DeliveryView, NewWebhook, WebhookView};
use std::sync::Arc;

/// `POST /api/v1/webhooks`: 201 with the secret, shown this once.
pub async fn create(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> ServiceResult<(
    StatusCode,
    [(HeaderName, &'static str); 1],
    axum::Extension<super::audit::AuditTarget>,
    Json<NewWebhook>,
)> {
    let made = webhooks::create(&svc, &caller, &req)?;
    svc.store.flush().await?;
    let target = axum::Extension(super::audit::AuditTarget(made.webhook.id.clone()));
    Ok((StatusCode::CREATED, NO_STORE, target, Json(made)))
}

/// `GET /api/v1/webhooks`: the caller's webhooks, oldest first, without secrets.
pub async fn list(
    State(svc): State<Arc<Service>>,
    caller: Caller,
) -> ServiceResult<Json<Vec<WebhookView>>> {
    Ok(Json(webhooks::list(&svc, &caller)?))
}

/// `DELETE /api/v1/webhooks/{id}`: the webhook and its deliveries (pending ones are not sent).
pub async fn remove(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<StatusCode> {
    webhooks::remove(&svc, &caller, &id)?;
    svc.store.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/webhooks/{id}/deliveries?limit=`: the newest deliveries, newest first.
pub async fn deliveries(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PageParams>,
) -> ServiceResult<Json<Vec<DeliveryView>>> {
    let limit = q.limit()?;
    Ok(Json(webhooks::deliveries(&svc, &caller, &id, limit)?))
}

/// `POST /api/v1/webhooks/{id}/test`: queues a `ping`; 202 with the delivery.
pub async fn test(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<(StatusCode, Json<DeliveryView>)> {
    let d = webhooks::test(&svc, &caller, &id)?;
    svc.store.flush().await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}
