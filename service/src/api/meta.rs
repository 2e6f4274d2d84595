//! `/healthz`, Prometheus `/metrics` and the OpenAPI document.

use crate::error::ServiceError;
use crate::service::{RunPhase, Service};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The OpenAPI 3 document of every route.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What `/healthz` answers in `phase`: ready, or 503 while draining so that a load
/// balancer's health check takes this replica out before it stops accepting connections.
pub fn health_answer(phase: RunPhase) -> (StatusCode, &'static str) {
    match phase {
        RunPhase::Serving => (StatusCode::OK, "ok\n"),
        RunPhase::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: this replica is stopping; send new requests to another one\n",
        ),
    }
}

/// `GET /healthz`.
pub async fn healthz(State(svc): State<Arc<Service>>) -> Response {
    let phase = *svc.phase.borrow();
    health_answer(phase).into_response()
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
    let mut body = crate::metrics::render(
        &svc.counters,
        &svc.gauges.snapshot(),
        svc.live.online_count(),
        svc.live.dropped_log_lines(),
        svc.broker.as_ref().map(|b| b.render_prometheus()),
        &crate::http_stats::render_listeners(&listeners),
    );
    if let Some(c) = &svc.cluster {
        body.push_str(&c.counters.render_prometheus());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_is_ready_while_serving_and_503_while_draining() {
        assert_eq!(health_answer(RunPhase::Serving), (StatusCode::OK, "ok\n"));
        let (status, body) = health_answer(RunPhase::Draining);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("draining"), "{body}");
    }
}
