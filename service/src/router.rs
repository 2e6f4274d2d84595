//! The application of each HTTP listener: the API's routes ([`crate::api`]), the dashboard's
//! ([`crate::web`]), a fallback that names what the listener serves, the body limit and the
//! `no-store` default ([`crate::web::frame::no_store_by_default`]).

use crate::error::ServiceError;
use crate::limits::HTTP_BODY_LIMIT;
use crate::service::Service;
use crate::web::frame::no_store_by_default;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::sync::Arc;

/// The main listener: API and dashboard.
pub fn app(svc: Arc<Service>) -> Router {
    crate::api::routes(svc.clone())
        .merge(crate::web::routes())
        .fallback(|| async {
            ServiceError::not_found("no such endpoint; GET /api/v1/openapi.json lists them")
        })
        .layer(DefaultBodyLimit::max(HTTP_BODY_LIMIT))
        .layer(axum::middleware::from_fn(no_store_by_default))
        .with_state(svc)
}

/// The enrollment listener: `POST /api/v1/enroll` only, served over HTTPS with a certificate
/// from the fleet CA so that the token never crosses the network in clear and the device can
/// check the answer against its `--ca-sha256` pin (decision 0006).
pub fn enroll(svc: Arc<Service>) -> Router {
    crate::api::enroll_routes()
        .fallback(|| async {
            ServiceError::not_found(
                "this is the enrollment listener; it serves only POST /api/v1/enroll",
            )
        })
        .layer(DefaultBodyLimit::max(HTTP_BODY_LIMIT))
        .layer(axum::middleware::from_fn(no_store_by_default))
        .with_state(svc)
}

/// The `--metrics-listen` listener: `/metrics` and `/healthz`.
pub fn metrics(svc: Arc<Service>) -> Router {
    crate::api::metrics_routes()
        .fallback(|| async {
            ServiceError::not_found(
                "this is the metrics listener; it serves GET /metrics and GET /healthz",
            )
        })
        .layer(axum::middleware::from_fn(no_store_by_default))
        .with_state(svc)
}
