//! The audit log over HTTP: [`record`] (a layer on the API's routes) appends one record per
//! state-changing request a signed-in user made, whatever its result, in one place; [`list`]
//! is `GET /api/v1/audit`. Handlers that create something name it with an [`AuditTarget`] in
//! their answer; an error's message becomes the record's detail ([`ErrorText`]).
//!
//! The record is appended after the handler answered (it knows the status), so it is made
//! durable by the store's next flush, not before that answer leaves.

use super::actions::next_cursor_headers;
use crate::domain::Caller;
use crate::error::ServiceResult;
use crate::limits::Peer;
use crate::service::Service;
use crate::store::{AuditRecord, UserRecord};
use crate::views::PageParams;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use hammer_protocol::api::{AuditAction, AuditEntry};
use std::sync::{Arc, Mutex};

/// Who made the request, filled in by the [`Caller`] extractor once the token checked out.
#[derive(Debug, Clone, Default)]
pub struct Who(Arc<Mutex<Option<(String, String)>>>);

impl Who {
    /// Records the authenticated user.
    pub fn set(&self, user: &UserRecord) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((user.id.clone(), user.name.clone()));
    }

    fn get(&self) -> Option<(String, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a creating request created (a device name, deployment id, token id, user name), put
/// in its answer's extensions by the handler.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// The message of an error answer (put there by `ServiceError`'s `IntoResponse`).
#[derive(Debug, Clone)]
pub struct ErrorText(pub String);

/// The action a state-changing route records, by method and route template; `None` for
/// requests that change nothing (or are not the API's: the web session).
pub fn action_of(method: &Method, route: &str) -> Option<AuditAction> {
    use AuditAction as A;
    let m = method.as_str();
    Some(match (m, route) {
        ("POST", "/api/v1/users") => A::UserCreated,
        ("POST", "/api/v1/tokens") => A::TokenCreated,
        ("DELETE", "/api/v1/tokens/{id}") => A::TokenRevoked,
        ("POST", "/api/v1/devices") => A::DeviceAdded,
        ("DELETE", "/api/v1/devices/{name}") => A::DeviceRemoved,
        ("PUT", "/api/v1/devices/{name}/setup") => A::SetupChanged,
        ("POST", "/api/v1/devices/{name}/restart")
        | ("POST", "/api/v1/devices/{name}/stop")
        | ("POST", "/api/v1/devices/{name}/start")
        | ("POST", "/api/v1/devices/{name}/rollback") => A::DeviceAction,
        ("POST", "/api/v1/provision") => A::DeviceProvisioned,
        ("POST", "/api/v1/deployments") => A::DeploymentCreated,
        ("POST", "/api/v1/deployments/{id}/cancel") => A::DeploymentCanceled,
        ("POST", "/api/v1/deployments/{id}/pause") => A::DeploymentPaused,
        ("POST", "/api/v1/deployments/{id}/resume") => A::DeploymentResumed,
        ("POST", "/api/v1/deployments/{id}/promote") => A::DeploymentPromoted,
        ("POST", "/api/v1/deployments/{id}/retry") => A::DeploymentRetried,
        ("POST", "/api/v1/commits/{sha}/bad") => A::CommitMarkedBad,
        ("DELETE", "/api/v1/commits/{sha}/bad") => A::CommitUnmarked,
        ("POST", "/api/v1/windows") => A::WindowAdded,
        ("DELETE", "/api/v1/windows/{id}") => A::WindowRemoved,
        ("POST", "/api/v1/webhooks") => A::WebhookAdded,
        ("DELETE", "/api/v1/webhooks/{id}") => A::WebhookRemoved,
        ("POST", "/api/v1/webhooks/{id}/test") => A::WebhookTested,
        _ => return None,
    })
}

/// The value of the route's first parameter in `path` (the device name, deployment id, token
/// id or commit), and the device action's name for `/devices/{name}/{action}`.
pub fn target_of(route: &str, path: &str) -> (Option<String>, Option<String>) {
    let mut target = None;
    let mut detail = None;
    let segs: Vec<&str> = path.split('/').collect();
    for (i, t) in route.split('/').enumerate() {
        let Some(v) = segs.get(i) else { break };
        if t.starts_with('{') && target.is_none() {
            target = Some((*v).to_owned());
        } else if target.is_some() && route.starts_with("/api/v1/devices/") && detail.is_none() {
            detail = Some((*v).to_owned());
        }
    }
    (target, detail)
}

/// The layer on the API's routes: after a state-changing request of a signed-in user, one
/// record in that user's log (a failed append is logged; the answer stands).
pub async fn record(State(svc): State<Arc<Service>>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let Some((action, route)) =
        route.and_then(|r| Some((action_of(req.method(), r)?, r.to_owned())))
    else {
        return next.run(req).await;
    };
    let (target, detail) = target_of(&route, req.uri().path());
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(a))| a.ip().to_string());
    let who = Who::default();
    req.extensions_mut().insert(who.clone());
    let resp = next.run(req).await;
    let Some((user_id, user_name)) = who.get() else {
        return resp; // not signed in: nobody's log to put it in
    };
    let status = resp.status();
    let ext = resp.extensions();
    let rec = AuditRecord {
        time: hammer_protocol::now_ms(),
        owner: user_id,
        actor: user_name,
        action,
        target: target.or_else(|| ext.get::<AuditTarget>().map(|t| t.0.clone())),
        peer,
        result: status.as_u16().to_string(),
        detail: ext.get::<ErrorText>().map(|e| e.0.clone()).or(detail),
    };
    if let Err(e) = svc.store.append_audit(&rec) {
        tracing::warn!(error = %e, action = ?rec.action, "cannot append to the audit log");
    }
    resp
}

/// `GET /api/v1/audit?limit=&cursor=`: the caller's audit log, newest first, a page at a
/// time; the `next-cursor` header names the next, older, page.
pub async fn list(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<PageParams>,
) -> ServiceResult<(HeaderMap, Json<Vec<AuditEntry>>)> {
    let (v, next) = crate::domain::audit::page(&svc, &caller, &q)?;
    Ok((next_cursor_headers(next), Json(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changing_routes_have_an_action_and_reads_have_none() {
        assert_eq!(
            action_of(&Method::POST, "/api/v1/deployments"),
            Some(AuditAction::DeploymentCreated)
        );
        assert_eq!(
            action_of(&Method::DELETE, "/api/v1/devices/{name}"),
            Some(AuditAction::DeviceRemoved)
        );
        assert_eq!(action_of(&Method::GET, "/api/v1/devices/{name}"), None);
        assert_eq!(action_of(&Method::POST, "/api/v1/session"), None);
        assert_eq!(action_of(&Method::GET, "/api/v1/audit"), None);
        assert_eq!(
            action_of(&Method::POST, "/api/v1/windows"),
            Some(AuditAction::WindowAdded)
        );
        assert_eq!(
            action_of(&Method::DELETE, "/api/v1/windows/{id}"),
            Some(AuditAction::WindowRemoved)
        );
        assert_eq!(action_of(&Method::GET, "/api/v1/windows"), None);
        assert_eq!(
            action_of(&Method::POST, "/api/v1/webhooks"),
            Some(AuditAction::WebhookAdded)
        );
        assert_eq!(
            action_of(&Method::DELETE, "/api/v1/webhooks/{id}"),
            Some(AuditAction::WebhookRemoved)
        );
        assert_eq!(
            action_of(&Method::POST, "/api/v1/webhooks/{id}/test"),
            Some(AuditAction::WebhookTested)
        );
        assert_eq!(
            action_of(&Method::GET, "/api/v1/webhooks/{id}/deliveries"),
            None
        );
    }

    #[test]
    fn the_target_is_the_first_route_parameter_and_a_device_action_is_named() {
        assert_eq!(
            target_of(
                "/api/v1/devices/{name}/restart",
                "/api/v1/devices/pi/restart"
            ),
            (Some("pi".into()), Some("restart".into()))
        );
        assert_eq!(
            target_of(
                "/api/v1/deployments/{id}/cancel",
                "/api/v1/deployments/d1/cancel"
            ),
            (Some("d1".into()), None)
        );
        assert_eq!(
            target_of("/api/v1/devices/{name}", "/api/v1/devices/pi"),
            (Some("pi".into()), None)
        );
        assert_eq!(
            target_of("/api/v1/devices", "/api/v1/devices"),
            (None, None)
        );
    }
}
