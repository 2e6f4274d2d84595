//! `/healthz`, Prometheus `/metrics` and the OpenAPI document.

use crate::error::ServiceError;
use crate::service::Service;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The OpenAPI 3 document of every route.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// `GET /metrics` on the API listener (404 when `--metrics-listen` moved it elsewhere).
pub async fn metrics(State(svc): State<Arc<Service>>, headers: HeaderMap) -> Response {
    if svc.metrics_elsewhere {
        return ServiceError::not_found(
            "metrics are served on the address given to `hammer serve --metrics-listen`",
        )
        .into_response();
    }
    metrics_text(&svc, &headers)
}

/// `GET /metrics` on the `--metrics-listen` listener.
pub async fn metrics_listener(State(svc): State<Arc<Service>>, headers: HeaderMap) -> Response {
    metrics_text(&svc, &headers)
}

/// The metrics, from counters only (no store read), if the caller may see them.
fn metrics_text(svc: &Service, headers: &HeaderMap) -> Response {
    if let Some(want) = &svc.metrics_token_hash {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| crate::ids::hash_token(t.trim()));
        if given.as_ref() != Some(want) {
            return (
                [(header::WWW_AUTHENTICATE, "Bearer")],
                ServiceError::unauthorized(
                    "/metrics needs `Authorization: Bearer TOKEN` with the token in the file given to `hammer serve --metrics-token-file`",
                ),
            )
                .into_response();
        }
    }
    let listeners: Vec<&crate::http_stats::ListenerStats> =
        svc.listeners.iter().map(|l| l.as_ref()).collect();
    let body = crate::metrics::render(
        &svc.counters,
        &svc.gauges.snapshot(),
        svc.live.online_count(),
        svc.live.dropped_log_lines(),
        svc.broker.as_ref().map(|b| b.render_prometheus()),
        &crate::http_stats::render_listeners(&listeners),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
