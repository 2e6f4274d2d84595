//! `/healthz`, Prometheus `/metrics` and the OpenAPI document.

use crate::service::Service;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use hammer_protocol::api::DeploymentState;
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

/// `GET /metrics`.
pub async fn metrics(State(svc): State<Arc<Service>>) -> impl IntoResponse {
    let devices = svc.store.all_devices().map(|d| d.len()).unwrap_or(0);
    let mut counts = [0u64; 4];
    for d in svc.store.deployments().unwrap_or_default() {
        let i = match d.state {
            DeploymentState::Running => 0,
            DeploymentState::Succeeded => 1,
            DeploymentState::Failed => 2,
            _ => 3,
        };
        counts[i] += 1;
    }
    let by_state = [
        ("running", counts[0]),
        ("succeeded", counts[1]),
        ("failed", counts[2]),
        ("canceled", counts[3]),
    ];
    let body = crate::metrics::render(
        &svc.counters,
        devices,
        svc.live.online_count(),
        &by_state,
        svc.broker.as_ref().map(|b| b.render_prometheus()),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
