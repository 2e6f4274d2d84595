//! Webhooks: a user's HTTP endpoints told about their deployments and devices, signed,
//! durable, retried.
//!
//! - [`rules`]: the pure decisions (which webhooks want an event, the signature, the retry
//!   delay, the URL and address policy, which end a deployment had, crash loops).
//! - Enqueue ([`enqueue`] and the producers' helpers below): one delivery per webhook of the
//!   event's owner that wants it, written to the store's outbox (`Store::insert_delivery`),
//!   whether or not anyone watches the live event hub. Each event is produced once, also
//!   with replicas: deployment events by the rollout engine (one engine runs, on the lease's
//!   holder), device rollbacks and crash loops where a status event is stored new (once, on
//!   the replica the shared subscription picked), presence by the lease holder only
//!   ([`presence`]).
//! - [`worker`]: the delivery task, started with the service on every replica: claims due
//!   deliveries (each webhook's oldest, one at a time, under a claim lease), POSTs them and
//!   records each attempt. At least once: a receiver dedupes on `Hammer-Delivery`.
//!
//! Bounds (docs/limits.md): [`MAX_WEBHOOKS_PER_USER`], [`MAX_PENDING_PER_USER`] (at the bound
//! the oldest pending delivery is dropped, counted), [`MAX_FINISHED_PER_WEBHOOK`] kept in the
//! delivery log, `rules::MAX_URL_LEN`, and the worker's timeouts and concurrency.

pub mod config;
pub mod rules;
pub mod worker;

pub use config::*;

use crate::service::Service;
use crate::store::{DeliveryRecord, DeploymentRecord, StoredStatus, WebhookRecord};
use hammer_protocol::api::{DeliveryState, DeviceEventData, WebhookEvent, WebhookPayload};
use hammer_protocol::{now_ms, Phase};
use serde::Serialize;
use std::sync::atomic::Ordering::Relaxed;

/// Queues `kind` with `data` for each of `owner`'s webhooks that wants it; answers how many
/// deliveries were queued. A store failure is logged (the event is not delivered), never the
/// caller's failure.
pub fn enqueue<T: Serialize>(svc: &Service, owner: &str, kind: WebhookEvent, data: &T) -> usize {
    let hooks = match svc.store.webhooks_of(owner) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, event = ?kind, "cannot read the webhooks; the event is not delivered");
            return 0;
        }
    };
    let now = now_ms();
    let mut queued = 0;
    for w in hooks.iter().filter(|w| rules::wants(&w.events, kind)) {
        match queue_one(svc, w, kind, data, now) {
            Ok(_) => queued += 1,
            Err(e) => {
                tracing::warn!(webhook = %w.id, error = %e, event = ?kind, "cannot queue a webhook delivery")
            }
        }
    }
    queued
}

/// Queues one delivery of `kind` to `w` (also a `ping`); wakes the worker.
pub fn queue_one<T: Serialize>(
    svc: &Service,
    w: &WebhookRecord,
    kind: WebhookEvent,
    data: &T,
    now: u64,
) -> crate::store::Result<DeliveryRecord> {
    let id = crate::ids::new_id();
    let body = serde_json::to_string(&WebhookPayload {
        id: id.clone(),
        kind,
        created_at: now,
        data,
    })
    .map_err(crate::store::StoreError::backend)?;
    let rec = DeliveryRecord {
        id,
        webhook_id: w.id.clone(),
        owner: w.owner.clone(),
        event: kind,
        body,
        created_at: now,
        state: DeliveryState::Pending,
        attempts: Vec::new(),
        attempt_count: 0,
        next_at: now,
        claimed_until: 0,
        seq: 0,
    };
    let dropped = svc.store.insert_delivery(&rec, BOUNDS)?;
    if dropped > 0 {
        svc.counters.webhooks_dropped.fetch_add(dropped, Relaxed);
        tracing::warn!(owner = %w.owner, dropped, "webhook deliveries dropped: the user has {MAX_PENDING_PER_USER} pending");
    }
    svc.webhooks.wake.notify_one();
    Ok(rec)
}

/// A deployment event (`deployment.*`) with the deployment's view as `data`. The rollout
/// engine calls it where the event happens (created, paused, resumed, phase promoted, ended).
pub fn deployment_event(svc: &Service, kind: WebhookEvent, dep: &DeploymentRecord) {
    enqueue(svc, &dep.owner, kind, &crate::views::deployment_view(dep));
}

/// The event of a deployment's end ([`rules::end_event`]), if it ended.
pub fn deployment_ended(svc: &Service, dep: &DeploymentRecord) {
    if let Some(kind) = rules::end_event(dep) {
        deployment_event(svc, kind, dep);
    }
}

/// The device events of a status event stored new (once, wherever it is stored): a rollback,
/// or the crash that makes a crash loop (judged on the device's latest stored events).
pub fn status_stored(svc: &Service, owner: &str, device: &str, stored: &StoredStatus) {
    let ev = &stored.event;
    let kind = match ev.phase {
        Phase::RolledBack => WebhookEvent::DeviceRolledBack,
        Phase::Crashed => {
            let recent = match svc.store.history_page(&stored.device_id, None, 16) {
                Ok(p) => p.items,
                Err(e) => {
                    tracing::warn!(device, error = %e, "cannot read the history to judge a crash loop");
                    return;
                }
            };
            let recent: Vec<(Phase, u64)> = recent
                .iter()
                .rev()
                .map(|s| (s.event.phase, s.received_at))
                .collect();
            if !rules::crash_looping(&recent, stored.received_at) {
                return;
            }
            WebhookEvent::DeviceCrashLooping
        }
        _ => return,
    };
    let data = DeviceEventData {
        device: device.to_owned(),
        deployment_id: ev.deployment_id.clone(),
        commit: ev.commit.clone(),
        detail: ev.detail.clone(),
    };
    enqueue(svc, owner, kind, &data);
}

/// A device came online or went offline. Every replica sees presence; only the one driving
/// deployments (the rollout lease's holder, or the only process) queues it, so it is queued
/// once. During a lease handover a change may be queued by neither or, rarely, both.
pub fn presence(svc: &Service, owner: &str, device: &str, online: bool) {
    if let Some(link) = &svc.cluster {
        if !link.counters.leading.load(Relaxed) {
            return;
        }
    }
    let kind = if online {
        WebhookEvent::DeviceOnline
    } else {
        WebhookEvent::DeviceOffline
    };
    let data = DeviceEventData {
        device: device.to_owned(),
        deployment_id: None,
        commit: None,
        detail: None,
    };
    enqueue(svc, owner, kind, &data);
}
