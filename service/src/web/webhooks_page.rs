//! `GET /webhooks`: the signed-in user's webhooks (test, delete, the add form) and
//! `GET /webhooks/{id}`: one webhook's delivery log with each attempt's status code or error.
//! Through [`crate::domain::webhooks`], like `/api/v1/webhooks`. The form and the buttons
//! call the JSON API with the session cookie (`assets/app.js`), so the API's Origin check
//! (CSRF) and the audit log apply to them as to any API request.

use super::frame::{error_page, page, PageUser};
use super::html::{enc, esc, time_ago, word};
use crate::domain::webhooks;
use crate::service::Service;
use crate::views::PageParams;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use hammer_protocol::api::{DeliveryView, WebhookEvent, WebhookView};
use hammer_protocol::{now_ms, WireName};
use std::sync::Arc;

fn events_text(events: &[WebhookEvent]) -> String {
    if events.is_empty() {
        "all events".into()
    } else {
        events
            .iter()
            .map(|e| esc(e.wire_name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The webhooks as table rows; every text escaped (URLs are user input).
fn hook_rows(hooks: &[WebhookView], now: u64) -> String {
    if hooks.is_empty() {
        return "<tr><td colspan=\"5\" class=\"empty\">No webhooks yet: add one below.</td></tr>"
            .into();
    }
    hooks
        .iter()
        .map(|w| {
            let id = enc(&w.id);
            format!(
                "<tr><td><a href=\"/webhooks/{id}\">{url}</a></td><td>{ev}</td><td><code>{p}…</code></td><td>{t}</td>\
<td><button type=\"button\" data-action=\"/api/v1/webhooks/{id}/test\">Send test</button> \
<button type=\"button\" class=\"danger\" data-delete=\"/api/v1/webhooks/{id}\" data-confirm=\"Remove this webhook? Its pending deliveries are not sent.\">Remove</button></td></tr>",
                url = esc(&w.url),
                ev = events_text(&w.events),
                p = esc(&w.secret_prefix),
                t = time_ago(Some(w.created_at), now),
            )
        })
        .collect()
}

/// The event checkboxes of the add form.
fn event_boxes() -> String {
    WebhookEvent::ALL
        .iter()
        .filter(|e| !matches!(e, WebhookEvent::Ping | WebhookEvent::Unknown))
        .map(|e| {
            let n = esc(e.wire_name());
            format!("<label class=\"check\"><input type=\"checkbox\" name=\"events\" value=\"{n}\"> {n}</label>")
        })
        .collect()
}

/// `GET /webhooks`.
pub async fn webhooks_list(State(svc): State<Arc<Service>>, PageUser(c): PageUser) -> Response {
    let hooks = match webhooks::list(&svc, &c) {
        Ok(h) => h,
        Err(e) => return error_page(Some(&c), e),
    };
    let body = format!(
        r#"<h1>Webhooks</h1>
<section class="card"><p class="help">Your deployments' and devices' events are POSTed to each URL as JSON, signed with the webhook's secret (<code>Hammer-Signature</code>), retried with backoff until the receiver answers 2xx.</p>
<table class="list" id="webhooks"><caption class="sr-only">Your webhooks</caption><thead><tr><th scope="col">URL</th><th scope="col">Events</th><th scope="col">Secret</th><th scope="col">Added</th><th scope="col">Actions</th></tr></thead><tbody>{rows}</tbody></table></section>
<form id="webhook-form" class="card" data-webhook>
<h2>Add a webhook</h2>
<label for="wh-url">URL</label>
<input id="wh-url" name="url" type="url" required placeholder="https://example.com/hammer" aria-describedby="wh-url-help">
<p id="wh-url-help" class="help">http:// or https://; the signing secret is shown once, after adding.</p>
<fieldset><legend>Events (none ticked: all)</legend>{boxes}</fieldset>
<button type="submit" id="webhook-submit">Add webhook</button>
<div id="webhook-secret" class="notice" role="status" hidden></div>
</form>"#,
        rows = hook_rows(&hooks, now_ms()),
        boxes = event_boxes(),
    );
    page(&c, "Webhooks", None, &body)
}

/// A delivery log as table rows: each attempt's status code or error, escaped.
fn delivery_rows(ds: &[DeliveryView], now: u64) -> String {
    if ds.is_empty() {
        return "<tr><td colspan=\"5\" class=\"empty\">No deliveries yet.</td></tr>".into();
    }
    ds.iter()
        .map(|d| {
            let attempts: String = if d.attempts.is_empty() {
                "—".into()
            } else {
                d.attempts
                    .iter()
                    .map(|a| {
                        let what = match (a.status, &a.error) {
                            (Some(s), _) => format!("HTTP {s}"),
                            (None, Some(e)) => esc(e),
                            (None, None) => "—".into(),
                        };
                        format!(
                            "<li>{} · {what} · {} ms</li>",
                            time_ago(Some(a.time), now),
                            a.duration_ms
                        )
                    })
                    .collect::<String>()
            };
            let attempts = if d.attempts.is_empty() {
                attempts
            } else {
                format!("<ul class=\"attempts\">{attempts}</ul>")
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{attempts}</td></tr>",
                time_ago(Some(d.created_at), now),
                esc(d.event.wire_name()),
                word(&d.state),
                d.attempt_count,
                d.next_attempt_at
                    .map(|n| format!("(next {})", time_ago(Some(n), now)))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// `GET /webhooks/{id}`.
pub async fn webhook_log(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Path(id): Path<String>,
    Query(pg): Query<PageParams>,
) -> Response {
    let found = webhooks::own(&svc, &c, &id)
        .map(|w| webhooks::view(&w))
        .and_then(|w| {
            let limit = pg.limit()?;
            Ok((webhooks::deliveries(&svc, &c, &id, limit)?, w))
        });
    let (ds, w) = match found {
        Ok(v) => v,
        Err(e) => return error_page(Some(&c), e),
    };
    let body = format!(
        r#"<h1>Webhook deliveries</h1>
<section class="card"><p><a href="/webhooks">All webhooks</a> · <code>{url}</code> · {ev}</p>
<table class="list" id="deliveries"><caption class="sr-only">Deliveries, newest first</caption><thead><tr><th scope="col">Created</th><th scope="col">Event</th><th scope="col">State</th><th scope="col">Attempts</th><th scope="col">Each attempt</th></tr></thead><tbody>{rows}</tbody></table></section>"#,
        url = esc(&w.url),
        ev = events_text(&w.events),
        rows = delivery_rows(&ds, now_ms()),
    );
    page(&c, "Webhook deliveries", None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::{DeliveryAttempt, DeliveryState};

    #[test]
    fn webhook_rows_escape_the_url_and_offer_test_and_remove() {
        let html = hook_rows(
            &[WebhookView {
                id: "w1".into(),
                url: "https://x/<script>\"".into(),
                events: vec![WebhookEvent::DeploymentFailed],
                secret_prefix: "abc123".into(),
                created_at: 1,
            }],
            2,
        );
        assert!(html.contains("https://x/&lt;script&gt;&quot;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("data-action=\"/api/v1/webhooks/w1/test\""),
            "{html}"
        );
        assert!(
            html.contains("data-delete=\"/api/v1/webhooks/w1\""),
            "{html}"
        );
        assert!(html.contains("deployment.failed"), "{html}");
        assert!(html.contains("abc123…"), "{html}");
        assert!(hook_rows(&[], 0).contains("No webhooks yet"));
        assert!(!event_boxes().contains("value=\"ping\""));
        assert!(event_boxes().contains("value=\"device.crash_looping\""));
    }

    #[test]
    fn the_delivery_log_shows_each_attempts_status_code_or_error_escaped() {
        let html = delivery_rows(
            &[DeliveryView {
                id: "d1".into(),
                webhook_id: "w1".into(),
                event: WebhookEvent::DeploymentCreated,
                created_at: 1,
                state: DeliveryState::Pending,
                attempts: vec![
                    DeliveryAttempt {
                        time: 1,
                        status: None,
                        error: Some("cannot connect: <refused>".into()),
                        duration_ms: 3,
                    },
                    DeliveryAttempt {
                        time: 2,
                        status: Some(503),
                        error: None,
                        duration_ms: 4,
                    },
                ],
                attempt_count: 2,
                next_attempt_at: Some(10),
            }],
            5,
        );
        assert!(html.contains("HTTP 503"), "{html}");
        assert!(html.contains("cannot connect: &lt;refused&gt;"), "{html}");
        assert!(html.contains("deployment.created"), "{html}");
        assert!(html.contains("pending"), "{html}");
        assert!(html.contains("(next "), "{html}");
        assert!(delivery_rows(&[], 0).contains("No deliveries yet"));
    }
}
