//! Device actions: restart (a command), stop / start (a new generation with the run state),
//! rollback (a new generation pinned to the previous successful commit), logs (recent lines;
//! asking turns the device's log streaming on for a while; lines are kept only while someone
//! asks, see [`crate::live`]) and history (paged, newest page first; see [`history`]).

use crate::domain::activity::{history_page, republish, rollback_device, watch_logs};
use crate::domain::devices::owned_device;
use crate::domain::Caller;
use crate::error::ServiceResult;
use crate::mqtt::publish::send_command;
use crate::service::Service;
use crate::store::DeviceRecord;
use crate::views::PageParams;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use hammer_protocol::api::{ActionAccepted, HistoryEntry, LogLines, NEXT_CURSOR_HEADER};
use hammer_protocol::{CommandKind, DesiredState, RunState};
use std::sync::Arc;

/// `POST /api/v1/devices/{name}/restart`.
pub async fn restart(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<(StatusCode, Json<ActionAccepted>)> {
    let dev = owned_device(&svc, &caller, &name)?;
    send_command(&svc, &dev.id, CommandKind::Restart).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ActionAccepted {
            device: dev.name,
            action: "restart".into(),
            generation: None,
            deployment_id: dev.current_deployment,
        }),
    ))
}

async fn republish_with(
    svc: &Service,
    dev: &DeviceRecord,
    action: &str,
    change: impl Fn(&mut DesiredState) + Send + Sync,
) -> ServiceResult<(StatusCode, Json<ActionAccepted>)> {
    let accepted = republish(svc, dev, action, change).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// `POST /api/v1/devices/{name}/stop`.
pub async fn stop(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<(StatusCode, Json<ActionAccepted>)> {
    let dev = owned_device(&svc, &caller, &name)?;
    republish_with(&svc, &dev, "stop", |d| d.run_state = RunState::Stopped).await
}

/// `POST /api/v1/devices/{name}/start`.
pub async fn start(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<(StatusCode, Json<ActionAccepted>)> {
    let dev = owned_device(&svc, &caller, &name)?;
    republish_with(&svc, &dev, "start", |d| d.run_state = RunState::Running).await
}

/// `POST /api/v1/devices/{name}/rollback`: back to the previous commit that ran.
pub async fn rollback(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<(StatusCode, Json<ActionAccepted>)> {
    let dev = owned_device(&svc, &caller, &name)?;
    let accepted = rollback_device(&svc, &dev, &caller.user.bad_commits).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// `GET /api/v1/devices/{name}/logs`: recent lines; streaming stays on for a minute.
pub async fn logs(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<LogLines>> {
    watch_logs(&svc, &caller, &name).await.map(Json)
}

/// The `next-cursor` header of a paged answer (none on the last page).
pub fn next_cursor_headers(next: Option<String>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = next.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(NEXT_CURSOR_HEADER, v);
    }
    h
}

/// `GET /api/v1/devices/{name}/history?limit=&cursor=`: stored phase changes in the order
/// they were stored, a page at a time (newest page first, each page oldest first); the
/// `next-cursor` header names the next, older, page.
pub async fn history(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<PageParams>,
) -> ServiceResult<(HeaderMap, Json<Vec<HistoryEntry>>)> {
    let (v, next) = history_page(&svc, &caller, &name, &q)?;
    Ok((next_cursor_headers(next), Json(v)))
}
