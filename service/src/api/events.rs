//! `GET /api/v1/events?device=NAME&deployment=ID`: Server-Sent Events of the caller's devices
//! only (status, presence, health, logs, deployment progress), each `data:` an api `Event`.
//! Browsers authenticate with the session cookie (see [`crate::auth`]).

use super::deployments::owned_deployment;
use super::devices::owned_device;
use super::errors::ApiResult;
use crate::auth::Caller;
use crate::service::Service;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::BroadcastStream;

#[derive(Deserialize)]
pub struct EventsQuery {
    device: Option<String>,
    deployment: Option<String>,
}

/// `GET /api/v1/events`.
pub async fn events(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let device = match &q.device {
        Some(name) => Some(owned_device(&svc, &caller, name)?.id),
        None => None,
    };
    let deployment = match &q.deployment {
        Some(id) => Some(owned_deployment(&svc, &caller, id)?.id),
        None => None,
    };
    let owner = caller.user.id.clone();
    let rx = svc.hub.subscribe();
    let mut stop = svc.shutdown.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let stream = BroadcastStream::new(rx).filter_map(move |item| {
        let out = match item {
            Ok(ev)
                if ev.owner == owner
                    && device.as_ref().is_none_or(|d| ev.devices.contains(d))
                    && deployment
                        .as_ref()
                        .is_none_or(|d| ev.deployment.as_ref() == Some(d)) =>
            {
                serde_json::to_string(&ev.event)
                    .ok()
                    .map(|json| Ok(SseEvent::default().data(json)))
            }
            Ok(_) => None,
            // A slow reader missed events; it keeps receiving the newer ones.
            Err(_) => None,
        };
        std::future::ready(out)
    });
    let stream = stream.take_until(stopped);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
