//! The delivery worker: one task per process, started with the service (on every replica).
//!
//! Each round it claims due deliveries from the store (`Store::claim_deliveries`: each
//! webhook's oldest pending one, so a webhook's deliveries go out one at a time and in order,
//! held for [`CLAIM_MS`] so that no other replica sends it meanwhile) up to the free slots of
//! [`CONCURRENCY`], and sends each on a task of its own: a slow or dead receiver holds only
//! its own webhook's slot, at most [`REQUEST_TIMEOUT`] per attempt. Each attempt is recorded
//! (`Store::finish_delivery`): delivered on a 2xx, else retried after
//! [`rules::retry_delay`] until [`super::WebhookConfig::max_attempts`], then `failed`.
//!
//! At least once: a process that dies between sending and recording sends again once the
//! claim lapses; receivers dedupe on `Hammer-Delivery`.
//!
//! The target's address is checked at every attempt: an address written in the URL by
//! [`rules::check_url`], a host name by the client's resolver ([`Guarded`]), which connects
//! only to the addresses it allowed (no later lookup can swap them). Redirects are not
//! followed and no proxy is used.

use super::rules;
use crate::service::Service;
use crate::store::{DeliveryRecord, MAX_ATTEMPTS_LOGGED};
use hammer_protocol::api::{DeliveryAttempt, DeliveryState};
use hammer_protocol::{now_ms, WireName};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Deliveries sent at once by one process.
pub const CONCURRENCY: usize = 32;
/// How long a claimed delivery is held before another worker may take it (longer than an
/// attempt can take).
pub const CLAIM_MS: u64 = 60_000;
/// Connecting (TCP and TLS) to a receiver.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole attempt, from connecting to the end of the answer's head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a receiver's answer body read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How often due retries are looked for (new deliveries wake the worker at once).
const TICK: Duration = Duration::from_millis(250);
/// Longest error text kept with an attempt.
const MAX_ERROR_TEXT: usize = 300;

/// Where the system's CA certificates are (Debian, Ubuntu; Fedora, RHEL).
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Resolves a receiver's host name and keeps only the addresses [`rules::address_allowed`]
/// allows: the connection goes to one of those or fails naming the rule.
struct Guarded {
    allow_private: bool,
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| rules::address_allowed(a.ip(), allow))
                .collect();
            if ok.is_empty() {
                let msg = match all.first() {
                    Some(a) => format!("{host} resolves to {}, a loopback, private or link-local address; the service refuses those unless it runs with --webhook-allow-private", a.ip()),
                    None => format!("{host} resolves to no address"),
                };
                return Err(msg.into());
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of deliveries: the system's roots for https, ring (the process's
/// provider), no redirects, no proxy, the address guard, the timeouts above.
pub fn client(allow_private: bool) -> Result<reqwest::Client, String> {
    hammer_certs::tls::install_default_provider();
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(1)
        .user_agent(concat!("hammer-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(Guarded { allow_private }));
    match SYSTEM_ROOTS.iter().find_map(|p| std::fs::read(p).ok()) {
        Some(pem) => {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                b = b.add_root_certificate(cert);
            }
        }
        None => tracing::warn!(
            "no system CA certificates found ({}): https webhooks will fail to verify their receivers",
            SYSTEM_ROOTS.join(", ")
        ),
    }
    b.build().map_err(|e| e.to_string())
}

/// Runs until `stop`: claims and sends deliveries.
pub async fn run(svc: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let allow_private = svc.webhooks.config.allow_private;
    let http = match client(allow_private) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; no webhook is delivered");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut last_count = 0u64;
    loop {
        let now = now_ms();
        if now.saturating_sub(last_count) >= 5_000 {
            last_count = now;
            if let Ok(n) = svc.store.count_pending_deliveries() {
                svc.counters.webhooks_pending.store(n, Relaxed);
            }
        }
        let free = slots.available_permits();
        if free > 0 {
            match svc
                .store
                .claim_deliveries(now, now.saturating_add(CLAIM_MS), free)
            {
                Ok(claimed) => {
                    for d in claimed {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break; // cannot happen: at most `free` were claimed
                        };
                        let (svc, http) = (svc.clone(), http.clone());
                        tokio::spawn(async move {
                            attempt(&svc, &http, d).await;
                            drop(permit);
                            svc.webhooks.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim webhook deliveries"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = svc.webhooks.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One attempt of `d`, recorded.
async fn attempt(svc: &Service, http: &reqwest::Client, mut d: DeliveryRecord) {
    let hook = match svc.store.webhook(&d.webhook_id) {
        Ok(Some(w)) => w,
        Ok(None) => return, // removed meanwhile, with its deliveries
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a webhook; its delivery is retried when its claim lapses");
            return;
        }
    };
    let cfg = &svc.webhooks.config;
    let started = now_ms();
    let t0 = Instant::now();
    let outcome = send(http, &hook.url, &hook.secret, &d, cfg.allow_private).await;
    let duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, error) = match &outcome {
        Ok(s) => (Some(*s), None),
        Err(e) => (
            None,
            Some(crate::store::cut(e, MAX_ERROR_TEXT).into_owned()),
        ),
    };
    d.attempts.push(DeliveryAttempt {
        time: started,
        status,
        error,
        duration_ms,
    });
    if d.attempts.len() > MAX_ATTEMPTS_LOGGED {
        d.attempts.drain(..d.attempts.len() - MAX_ATTEMPTS_LOGGED);
    }
    d.attempt_count = d.attempt_count.saturating_add(1);
    let now = now_ms();
    if matches!(outcome, Ok(s) if (200..300).contains(&s)) {
        d.state = DeliveryState::Delivered;
        svc.counters.webhooks_delivered.fetch_add(1, Relaxed);
    } else {
        svc.counters.webhook_attempts_failed.fetch_add(1, Relaxed);
        if rules::retry_after(d.attempt_count, cfg.max_attempts) {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let mut b = [0u8; 8];
            let _ = getrandom::getrandom(&mut b); // without randomness: no jitter, still a delay
            let jitter = u64::from_le_bytes(b);
            d.next_at = now.saturating_add(rules::retry_delay(
                ms(cfg.retry_base),
                ms(cfg.retry_cap),
                d.attempt_count,
                jitter,
            ));
        } else {
            d.state = DeliveryState::Failed;
            svc.counters.webhooks_given_up.fetch_add(1, Relaxed);
            tracing::info!(webhook = %d.webhook_id, delivery = %d.id, attempts = d.attempt_count, "webhook delivery given up");
        }
    }
    if let Err(e) = svc.store.finish_delivery(&d, super::BOUNDS) {
        tracing::warn!(error = %e, delivery = %d.id, "cannot record a webhook attempt; it is made again when its claim lapses");
    }
}

/// POSTs `d` to `url`, signed with `secret`: the receiver's status, or why there is none.
async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    d: &DeliveryRecord,
    allow_private: bool,
) -> Result<u16, String> {
    rules::check_url(url, allow_private).map_err(|e| e.to_string())?;
    let sig = rules::signature_header(secret, now_ms(), d.body.as_bytes());
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("hammer-event", d.event.wire_name())
        .header("hammer-delivery", &d.id)
        .header("hammer-signature", sig)
        .body(d.body.clone())
        .send()
        .await
        .map_err(describe)?;
    let status = resp.status().as_u16();
    // Read a bounded part of the answer (so that the connection can be reused), never more.
    let mut resp = resp;
    let mut read = 0usize;
    while read < MAX_RESPONSE_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => read += c.len(),
            _ => break,
        }
    }
    Ok(status)
}

/// A send error as one line, without the URL (it may hold a secret of the user's).
fn describe(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let connect = e.is_connect();
    let e = e.without_url();
    let mut parts = Vec::new();
    let mut src: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p: &String| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    let text = parts.join(": ");
    if timeout {
        format!(
            "timed out (connect {CONNECT_TIMEOUT:?}, whole attempt {REQUEST_TIMEOUT:?}): {text}"
        )
    } else if connect {
        format!("cannot connect: {text}")
    } else {
        text
    }
}
