//! `hammer webhook add|list|rm|deliveries|test`: the caller's webhooks and their delivery
//! logs. The signing secret is printed once, by `add`.

use crate::config::Conn;
use crate::output::{self, fmt_time, or_dash, wire_name, Table};
use anyhow::{anyhow, Result};
use clap::Subcommand;
use hammer_client::Client;
use hammer_protocol::api::{CreateWebhook, DeliveryView, WebhookEvent, WebhookView};
use hammer_protocol::WireName;

#[derive(Debug, Subcommand)]
pub enum WebhookCmd {
    /// Register a webhook: your deployments' and devices' events are POSTed to URL, signed
    /// (the secret is printed once)
    Add {
        /// http:// or https:// URL (private and loopback addresses only if the service allows them)
        #[arg(value_name = "URL")]
        target: String,
        /// Deliver only this event (repeatable; default: all), e.g. deployment.failed
        #[arg(long = "event", value_name = "KIND", value_parser = parse_event)]
        events: Vec<WebhookEvent>,
    },
    /// List your webhooks
    List,
    /// Remove a webhook (its pending deliveries are not sent)
    Rm {
        /// The webhook's id (`hammer webhook list`)
        id: String,
    },
    /// Show a webhook's delivery log, newest first: each attempt's status code or error
    Deliveries {
        id: String,
        /// Show at most N deliveries (1 to 1000)
        #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Send a test delivery (`ping`) to a webhook
    Test { id: String },
}

/// The events a webhook can ask for (not `ping` or `unknown`).
fn askable() -> impl Iterator<Item = WebhookEvent> {
    WebhookEvent::ALL
        .iter()
        .copied()
        .filter(|e| !matches!(e, WebhookEvent::Ping | WebhookEvent::Unknown))
}

/// An event's wire name as given to `--event`.
pub fn parse_event(s: &str) -> Result<WebhookEvent> {
    askable().find(|e| e.wire_name() == s).ok_or_else(|| {
        anyhow!(
            "{s:?} is not a webhook event; use one of: {}",
            askable()
                .map(|e| e.wire_name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

pub async fn run(conn: &Conn, cmd: WebhookCmd, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    match cmd {
        WebhookCmd::Add { target, events } => {
            let a = client
                .add_webhook(&CreateWebhook {
                    url: target,
                    events,
                })
                .await?;
            if json {
                output::print_json(&a.raw);
            } else {
                println!("webhook {} added", a.body.webhook.id);
                println!("signing secret (shown only now): {}", a.body.secret);
                println!("check each delivery's Hammer-Signature with it (README, \"Webhooks\")");
            }
        }
        WebhookCmd::List => {
            let a = client.webhooks().await?;
            if json {
                output::print_json(&a.raw);
            } else if a.body.is_empty() {
                println!("no webhooks; add one with `hammer webhook add URL`");
            } else {
                hooks_table(&a.body).print();
            }
        }
        WebhookCmd::Rm { id } => {
            client.remove_webhook(&id).await?;
            if json {
                output::print_json(&serde_json::json!({ "id": id, "removed": true }));
            } else {
                println!("webhook {id} removed");
            }
        }
        WebhookCmd::Deliveries { id, limit } => {
            let a = client.webhook_deliveries(&id, limit).await?;
            if json {
                output::print_json(&a.raw);
            } else if a.body.is_empty() {
                println!("no deliveries yet");
            } else {
                deliveries_table(&a.body).print();
            }
        }
        WebhookCmd::Test { id } => {
            let a = client.test_webhook(&id).await?;
            if json {
                output::print_json(&a.raw);
            } else {
                println!(
                    "ping {} queued; `hammer webhook deliveries {id}` shows how it went",
                    a.body.id
                );
            }
        }
    }
    Ok(())
}

fn events_text(events: &[WebhookEvent]) -> String {
    if events.is_empty() {
        "all".into()
    } else {
        events.iter().map(wire_name).collect::<Vec<_>>().join(",")
    }
}

/// The webhooks as a table; [`Table::row`] escapes every cell.
fn hooks_table(hooks: &[WebhookView]) -> Table {
    let mut t = Table::new(&["ID", "URL", "EVENTS", "SECRET", "CREATED (UTC)"]);
    for w in hooks {
        t.row(vec![
            w.id.clone(),
            w.url.clone(),
            events_text(&w.events),
            format!("{}…", w.secret_prefix),
            fmt_time(w.created_at),
        ]);
    }
    t
}

/// A delivery log as a table: the last attempt's status or error.
fn deliveries_table(ds: &[DeliveryView]) -> Table {
    let mut t = Table::new(&[
        "CREATED (UTC)",
        "EVENT",
        "STATE",
        "ATTEMPTS",
        "LAST",
        "NEXT (UTC)",
        "ID",
    ]);
    for d in ds {
        let last = d.attempts.last().map(|a| match (a.status, &a.error) {
            (Some(s), _) => format!("{s} in {} ms", a.duration_ms),
            (None, Some(e)) => e.clone(),
            (None, None) => "-".into(),
        });
        t.row(vec![
            fmt_time(d.created_at),
            wire_name(&d.event),
            wire_name(&d.state),
            d.attempt_count.to_string(),
            or_dash(last),
            or_dash(d.next_attempt_at.map(fmt_time)),
            d.id.clone(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::{DeliveryAttempt, DeliveryState};

    #[test]
    fn event_names_are_the_wire_names_and_ping_cannot_be_asked_for() {
        assert_eq!(
            parse_event("deployment.failed").unwrap(),
            WebhookEvent::DeploymentFailed
        );
        let e = parse_event("ping").unwrap_err().to_string();
        assert!(e.contains("device.crash_looping"), "{e}");
        assert!(parse_event("deployment_failed").is_err());
    }

    #[test]
    fn the_delivery_table_shows_the_last_status_or_error_escaped() {
        let d = |status, error: Option<&str>| DeliveryView {
            id: "d1".into(),
            webhook_id: "w1".into(),
            event: WebhookEvent::DeploymentCreated,
            created_at: 0,
            state: DeliveryState::Pending,
            attempts: vec![DeliveryAttempt {
                time: 0,
                status,
                error: error.map(String::from),
                duration_ms: 7,
            }],
            attempt_count: 3,
            next_attempt_at: Some(1000),
        };
        let out =
            deliveries_table(&[d(Some(500), None), d(None, Some("refused\u{1b}[2J"))]).render();
        assert!(out.contains("500 in 7 ms"), "{out}");
        assert!(out.contains("deployment.created"), "{out}");
        assert!(out.contains("pending"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
    }
}
