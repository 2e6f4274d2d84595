//! Device actions: restart (a command), stop / start (a new generation with the run state),
//! rollback (a new generation pinned to the previous successful commit), logs (recent lines;
//! asking turns the device's log streaming on for a while; lines are kept only while someone
//! asks, see [`crate::live`]) and history (paged, newest page first; see [`history`]).

use super::devices::owned_device;
use super::errors::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::mqtt::publish::{send_command, set_desired};
use crate::service::Service;
use crate::store::DeviceRecord;
use crate::views::{encode_history_cursor, history_entry, PageParams};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use hammer_protocol::api::{ActionAccepted, HistoryEntry, LogLines, NEXT_CURSOR_HEADER};
use hammer_protocol::{now_ms, CommandKind, DesiredState, RunState};
use std::sync::Arc;
use std::time::Duration;

/// How long one `logs` request keeps the device streaming.
pub const LOG_WATCH: Duration = Duration::from_secs(60);

async fn not_in_rollout(svc: &Service, dev: &DeviceRecord) -> ApiResult<()> {
    if let Some(dep) = crate::rollout::holder(svc, &dev.id).await {
        return Err(ApiError::conflict(format!(
            "device {:?} is in running deployment {dep}; wait for it or cancel it first",
            dev.name
        )));
    }
    Ok(())
}

fn nothing_deployed(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "device {name:?} has nothing deployed yet: run `hammer deploy` first"
    ))
}

/// `POST /api/v1/devices/{name}/restart`.
pub async fn restart(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<ActionAccepted>)> {
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
) -> ApiResult<(StatusCode, Json<ActionAccepted>)> {
    not_in_rollout(svc, dev).await?;
    let rec = set_desired(svc, &dev.id, |d, generation| {
        let mut desired = d.desired.clone()?;
        desired.generation = generation;
        desired.issued_at = now_ms();
        change(&mut desired);
        Some(desired)
    })
    .await?
    .ok_or_else(|| nothing_deployed(&dev.name))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ActionAccepted {
            device: dev.name.clone(),
            action: action.into(),
            generation: Some(rec.generation),
            deployment_id: rec.desired.map(|d| d.deployment_id),
        }),
    ))
}

/// `POST /api/v1/devices/{name}/stop`.
pub async fn stop(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<ActionAccepted>)> {
    let dev = owned_device(&svc, &caller, &name)?;
    republish_with(&svc, &dev, "stop", |d| d.run_state = RunState::Stopped).await
}

/// `POST /api/v1/devices/{name}/start`.
pub async fn start(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<ActionAccepted>)> {
    let dev = owned_device(&svc, &caller, &name)?;
    republish_with(&svc, &dev, "start", |d| d.run_state = RunState::Running).await
}

/// `POST /api/v1/devices/{name}/rollback`: back to the previous commit that ran.
pub async fn rollback(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<ActionAccepted>)> {
    let dev = owned_device(&svc, &caller, &name)?;
    if dev.desired.is_none() {
        return Err(nothing_deployed(&name));
    }
    let previous = dev
        .good_commits
        .iter()
        .rev()
        .find(|c| Some(*c) != dev.current_commit.as_ref())
        .cloned()
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "device {name:?} has no earlier successful release to roll back to"
            ))
        })?;
    let rollback_id = crate::ids::new_id();
    republish_with(&svc, &dev, "rollback", move |d| {
        d.commit = Some(previous.clone());
        d.deployment_id = rollback_id.clone();
        d.run_state = RunState::Running;
    })
    .await
}

/// `GET /api/v1/devices/{name}/logs`: recent lines; streaming stays on for a minute.
pub async fn logs(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<LogLines>> {
    watch_logs(&svc, &caller, &name).await.map(Json)
}

/// The device's kept log lines; asking turns its log streaming on for [`LOG_WATCH`] (the
/// API and the dashboard both call this).
pub async fn watch_logs(svc: &Arc<Service>, caller: &Caller, name: &str) -> ApiResult<LogLines> {
    let dev = owned_device(svc, caller, name)?;
    let now = now_ms();
    let until = now + LOG_WATCH.as_millis() as u64;
    if svc.live.watch_logs(&dev.id, now, until) {
        send_command(svc, &dev.id, CommandKind::Logs { on: true }).await?;
        let svc2 = svc.clone();
        let id = dev.id.clone();
        tokio::spawn(async move {
            loop {
                let until = svc2.live.logs_until(&id);
                let now = now_ms();
                if until <= now {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(until - now)).await;
            }
            // A request in between extends the watch: the next one spawns a new waiter.
            if !svc2.live.end_log_watch(&id, now_ms()) {
                return;
            }
            if let Err(e) = send_command(&svc2, &id, CommandKind::Logs { on: false }).await {
                tracing::debug!(device = %id, "could not send logs off: {e:#}");
            }
        });
    }
    Ok(LogLines {
        device: dev.name,
        lines: svc.live.logs(&dev.id),
    })
}

/// One page of a device's history: the newest `limit` events stored before `cursor`, oldest
/// first, and the cursor of the next (older) page.
pub fn history_page(
    svc: &Service,
    caller: &Caller,
    name: &str,
    q: &PageParams,
) -> ApiResult<(Vec<HistoryEntry>, Option<String>)> {
    let dev = owned_device(svc, caller, name)?;
    let limit = q.limit()?;
    let before = q.history_cursor()?;
    let page = svc.store.history_page(&dev.id, before, limit)?;
    Ok((
        page.items.iter().map(history_entry).collect(),
        page.next.map(encode_history_cursor),
    ))
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
) -> ApiResult<(HeaderMap, Json<Vec<HistoryEntry>>)> {
    let (v, next) = history_page(&svc, &caller, &name, &q)?;
    Ok((next_cursor_headers(next), Json(v)))
}
