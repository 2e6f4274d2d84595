//! The HTTP API (`/api/v1`, JSON, bearer tokens), `/healthz`, `/metrics` and the OpenAPI
//! document. [`routes`] lists every route and records its path, so a test can check that
//! the OpenAPI document lists them all; [`crate::router`] puts them on the listeners.

pub mod actions;
pub mod audit;
pub mod commits;
pub mod deployments;
pub mod devices;
pub mod enroll;
pub mod errors;
pub mod events;
pub mod meta;
pub mod setup;
pub mod users;
pub mod webhooks;
pub mod windows;

use crate::service::Service;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use std::sync::Arc;

struct Routes {
    router: Router<Arc<Service>>,
    paths: Vec<&'static str>,
}

impl Routes {
    fn route(mut self, path: &'static str, m: MethodRouter<Arc<Service>>) -> Routes {
        self.router = self.router.route(path, m);
        self.paths.push(path);
        self
    }
}

fn build() -> Routes {
    use actions as a;
    use deployments as dp;
    use devices as dv;
    Routes {
        router: Router::new(),
        paths: Vec::new(),
    }
    .route("/healthz", get(meta::healthz))
    .route("/metrics", get(meta::metrics))
    .route("/api/v1/openapi.json", get(meta::openapi))
    .route("/api/v1/me", get(users::me))
    .route(
        "/api/v1/users",
        post(users::create_user).get(users::list_users),
    )
    .route(
        "/api/v1/tokens",
        post(users::create_token).get(users::list_tokens),
    )
    .route(
        "/api/v1/tokens/{id}",
        axum::routing::delete(users::revoke_token),
    )
    .route(
        "/api/v1/devices",
        post(dv::create_device).get(dv::list_devices),
    )
    .route(
        "/api/v1/devices/{name}",
        get(dv::show_device).delete(dv::delete_device),
    )
    .route("/api/v1/devices/{name}/setup", put(setup::put_setup))
    .route("/api/v1/devices/{name}/restart", post(a::restart))
    .route("/api/v1/devices/{name}/stop", post(a::stop))
    .route("/api/v1/devices/{name}/start", post(a::start))
    .route("/api/v1/devices/{name}/rollback", post(a::rollback))
    .route("/api/v1/devices/{name}/logs", get(a::logs))
    .route("/api/v1/devices/{name}/history", get(a::history))
    .route("/api/v1/provision", post(enroll::provision))
    .route(
        "/api/v1/deployments",
        post(dp::create_deployment).get(dp::list_deployments),
    )
    .route("/api/v1/deployments/{id}", get(dp::show_deployment))
    .route(
        "/api/v1/deployments/{id}/cancel",
        post(dp::cancel_deployment),
    )
    .route("/api/v1/deployments/{id}/pause", post(dp::pause_deployment))
    .route(
        "/api/v1/deployments/{id}/promote",
        post(dp::promote_deployment),
    )
    .route(
        "/api/v1/deployments/{id}/resume",
        post(dp::resume_deployment),
    )
    .route("/api/v1/deployments/{id}/retry", post(dp::retry_deployment))
    .route("/api/v1/events", get(events::events))
    .route("/api/v1/commits/bad", get(commits::list))
    .route("/api/v1/audit", get(audit::list))
    .route(
        "/api/v1/commits/{sha}/bad",
        post(commits::mark).delete(commits::unmark),
    )
    .route("/api/v1/windows", get(windows::list).post(windows::add))
    .route(
        "/api/v1/windows/{id}",
        axum::routing::delete(windows::remove),
    )
    .route("/api/v1/devices/{name}/windows", get(windows::of_device))
    .route(
        "/api/v1/webhooks",
        get(webhooks::list).post(webhooks::create),
    )
    .route("/api/v1/webhooks/{id}", delete(webhooks::remove))
    .route(
        "/api/v1/webhooks/{id}/deliveries",
        get(webhooks::deliveries),
    )
    .route("/api/v1/webhooks/{id}/test", post(webhooks::test))
}

/// The enrollment listener's only route: `POST /api/v1/enroll`, served over HTTPS with a
/// certificate from the fleet CA so that the token never crosses the network in clear and
/// the device can check the answer against its `--ca-sha256` pin (decision 0006).
const ENROLL_PATH: &str = "/api/v1/enroll";

/// Every routed path on either listener (for the OpenAPI check).
pub fn paths() -> Vec<&'static str> {
    let mut p = build().paths;
    p.push(ENROLL_PATH);
    p
}

/// The API's routes on the main listener, each state-changing one recorded in the audit log
/// ([`audit::record`]); the router of [`crate::router::app`] adds the dashboard, the fallback
/// and the layers.
pub fn routes(svc: Arc<Service>) -> Router<Arc<Service>> {
    build()
        .router
        .route_layer(axum::middleware::from_fn_with_state(svc, audit::record))
}

/// The enrollment listener's only route.
pub fn enroll_routes() -> Router<Arc<Service>> {
    Router::new().route(ENROLL_PATH, post(enroll::enroll))
}

/// The `--metrics-listen` listener's routes: `/metrics` and `/healthz` only.
pub fn metrics_routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/metrics", get(meta::metrics_listener))
        .route("/healthz", get(meta::healthz))
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::meta::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in super::paths() {
            assert!(paths.contains_key(p), "{p} is missing from openapi.json");
        }
        assert_eq!(
            paths.len(),
            super::paths().len(),
            "openapi.json lists routes that do not exist"
        );
    }
}
