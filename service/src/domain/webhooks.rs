//! A user's webhooks: register (the URL checked by [`rules::check_url`], within
//! [`MAX_WEBHOOKS_PER_USER`]; the secret shown once), list, remove, read a webhook's delivery
//! log, send a test (`ping`). Another user's webhook is "no such webhook", like a missing one.

use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::Service;
use crate::store::{DeliveryRecord, WebhookRecord};
use crate::webhooks::{rules, MAX_WEBHOOKS_PER_USER};
use hammer_protocol::api::{CreateWebhook, DeliveryView, NewWebhook, WebhookEvent, WebhookView};
use hammer_protocol::{now_ms, WireName};

/// Characters of the secret a listing shows.
pub const SECRET_PREFIX_LEN: usize = 6;

/// A webhook as the API shows it (the secret's first characters only).
pub fn view(w: &WebhookRecord) -> WebhookView {
    WebhookView {
        id: w.id.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        secret_prefix: w.secret.chars().take(SECRET_PREFIX_LEN).collect(),
        created_at: w.created_at,
    }
}

/// A delivery as the API shows it (not its body).
pub fn delivery_view(d: &DeliveryRecord) -> DeliveryView {
    DeliveryView {
        id: d.id.clone(),
        webhook_id: d.webhook_id.clone(),
        event: d.event,
        created_at: d.created_at,
        state: d.state,
        attempts: d.attempts.clone(),
        attempt_count: d.attempt_count,
        next_attempt_at: (d.state == hammer_protocol::api::DeliveryState::Pending)
            .then_some(d.next_at),
    }
}

fn no_webhook(id: &str) -> ServiceError {
    ServiceError::not_found(format!(
        "no webhook {:?} of yours: `hammer webhook list` shows their ids",
        crate::store::cut(id, 64)
    ))
}

/// The events a request names, checked: no `ping` or unknown kind, each once, sorted.
pub fn events_of(req: &[WebhookEvent]) -> ServiceResult<Vec<WebhookEvent>> {
    let mut v = Vec::new();
    for &e in req {
        if matches!(e, WebhookEvent::Ping | WebhookEvent::Unknown) {
            let known: Vec<&str> = WebhookEvent::ALL
                .iter()
                .filter(|k| !matches!(k, WebhookEvent::Ping | WebhookEvent::Unknown))
                .map(|k| k.wire_name())
                .collect();
            return Err(ServiceError::bad_request(format!(
                "{} is not an event a webhook can ask for; the events are: {}",
                e.wire_name(),
                known.join(", ")
            )));
        }
        if !v.contains(&e) {
            v.push(e);
        }
    }
    v.sort();
    Ok(v)
}

/// Registers a webhook of the caller.
pub fn create(svc: &Service, caller: &Caller, req: &CreateWebhook) -> ServiceResult<NewWebhook> {
    rules::check_url(&req.url, svc.webhooks.config.allow_private)
        .map_err(|e| ServiceError::bad_request(e.to_string()))?;
    let events = events_of(&req.events)?;
    let rec = WebhookRecord {
        id: crate::ids::new_id(),
        owner: caller.user.id.clone(),
        url: req.url.clone(),
        events,
        secret: crate::ids::new_webhook_secret(),
        created_at: now_ms(),
    };
    if !svc.store.insert_webhook(&rec, MAX_WEBHOOKS_PER_USER)? {
        return Err(ServiceError::too_many(format!(
            "you have {MAX_WEBHOOKS_PER_USER} webhooks, the most one user may have: remove one first (`hammer webhook rm ID`)"
        )));
    }
    tracing::info!(webhook = %rec.id, user = %caller.user.name, "webhook added");
    Ok(NewWebhook {
        webhook: view(&rec),
        secret: rec.secret,
    })
}

/// The caller's webhooks, oldest first.
pub fn list(svc: &Service, caller: &Caller) -> ServiceResult<Vec<WebhookView>> {
    Ok(svc
        .store
        .webhooks_of(&caller.user.id)?
        .iter()
        .map(view)
        .collect())
}

/// The caller's webhook `id`.
pub fn own(svc: &Service, caller: &Caller, id: &str) -> ServiceResult<WebhookRecord> {
    match svc.store.webhook(id)? {
        Some(w) if w.owner == caller.user.id => Ok(w),
        _ => Err(no_webhook(id)),
    }
}

/// Removes the caller's webhook `id` and its deliveries.
pub fn remove(svc: &Service, caller: &Caller, id: &str) -> ServiceResult<()> {
    if !svc.store.delete_webhook(&caller.user.id, id)? {
        return Err(no_webhook(id));
    }
    tracing::info!(webhook = %id, user = %caller.user.name, "webhook removed");
    Ok(())
}

/// The newest `limit` deliveries of the caller's webhook `id`, newest first.
pub fn deliveries(
    svc: &Service,
    caller: &Caller,
    id: &str,
    limit: usize,
) -> ServiceResult<Vec<DeliveryView>> {
    let w = own(svc, caller, id)?;
    Ok(svc
        .store
        .deliveries_of(&w.id, limit)?
        .iter()
        .map(delivery_view)
        .collect())
}

/// Queues a `ping` to the caller's webhook `id`; answers the delivery.
pub fn test(svc: &Service, caller: &Caller, id: &str) -> ServiceResult<DeliveryView> {
    let w = own(svc, caller, id)?;
    let d = crate::webhooks::queue_one(
        svc,
        &w,
        WebhookEvent::Ping,
        &serde_json::json!({}),
        now_ms(),
    )?;
    Ok(delivery_view(&d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_may_ask_for_real_events_only_and_each_once() {
        use WebhookEvent as E;
        assert_eq!(
            events_of(&[E::DeviceOffline, E::DeploymentCreated, E::DeviceOffline]).unwrap(),
            vec![E::DeploymentCreated, E::DeviceOffline]
        );
        assert!(events_of(&[]).unwrap().is_empty());
        let e = events_of(&[E::Ping]).unwrap_err().message;
        assert!(e.contains("deployment.created"), "{e}");
        assert!(events_of(&[E::Unknown]).is_err());
    }

    #[test]
    fn a_listing_shows_only_the_secrets_first_characters() {
        let w = WebhookRecord {
            id: "w1".into(),
            owner: "u1".into(),
            url: "https://example.com/h".into(),
            events: vec![],
            secret: "abcdef0123456789".into(),
            created_at: 1,
        };
        let v = view(&w);
        assert_eq!(v.secret_prefix, "abcdef");
        assert!(!serde_json::to_string(&v).unwrap().contains("0123456789"));
    }
}
