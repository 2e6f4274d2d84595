//! `GET /api/v1/events?device=NAME&deployment=ID`: Server-Sent Events of the caller's devices
//! only (status, presence, health, logs, deployment progress), each `data:` an api `Event`.
//! Browsers authenticate with the session cookie (see [`crate::auth`]). When the service
//! stops, every stream ends with [`reconnect_event`].

use crate::domain::deployments::owned_deployment;
use crate::domain::devices::owned_device;
use crate::domain::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::metrics::Counters;
use crate::service::{Service, StreamSlot};
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
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
) -> ServiceResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let device = match &q.device {
        Some(name) => Some(owned_device(&svc, &caller, name)?.id),
        None => None,
    };
    let deployment = match &q.deployment {
        Some(id) => Some(owned_deployment(&svc, &caller, id)?.id),
        None => None,
    };
    let Some(slot) = svc.streams.try_open(&caller.user.id) else {
        Counters::inc(&svc.counters.quota_streams_refused);
        tracing::info!(user = %caller.user.name, max = svc.streams.max(), "event stream refused: at the per-user quota");
        return Err(ServiceError::too_many(format!(
                "you already have {} event streams open, the most allowed per user; close one (a dashboard tab, `hammer logs -f`, `hammer deploy --wait`) and retry, or ask the operator to raise `hammer serve --max-streams-per-user`",
                svc.streams.max()
            ),
        ));
    };
    let open = OpenStream::new(slot, svc.clone());
    let owner = caller.user.id.clone();
    let rx = svc.hub.subscribe();
    let mut stop = svc.shutdown.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let stream = BroadcastStream::new(rx).filter_map(move |item| {
        // Held as long as the stream lives: the quota slot and the open-streams gauge.
        let _open = &open;
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
    // The service is stopping (its drain grace is over): a last event tells the client to
    // reconnect, which a load balancer sends to another replica, then the stream ends.
    let stream = stream
        .take_until(stopped)
        .chain(futures_util::stream::once(std::future::ready(Ok(
            reconnect_event(),
        ))));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(svc.sse_keep_alive)))
}

/// How long a client waits before it reconnects after [`reconnect_event`] (the SSE `retry:`).
pub const RECONNECT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The last event of every stream when the service stops: `event: reconnect`, a `retry:`
/// and a data line saying why. Browsers' `EventSource` reconnects by itself after `retry`
/// (and calls no `onmessage` for a named event); `hammer events`/`logs -f` skip data that is
/// not an API event and reopen a stream that ended.
pub fn reconnect_event() -> SseEvent {
    SseEvent::default()
        .event("reconnect")
        .retry(RECONNECT_RETRY)
        .data("the service is restarting; reconnect")
}

/// An open event stream: its quota slot and its place in `hammer_event_streams_open`.
struct OpenStream {
    _slot: StreamSlot,
    svc: Arc<Service>,
}

impl OpenStream {
    fn new(slot: StreamSlot, svc: Arc<Service>) -> OpenStream {
        Counters::inc(&svc.counters.streams_open);
        OpenStream { _slot: slot, svc }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.svc
            .counters
            .streams_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
