//! Live output: `hammer events` and `hammer logs [-f]`, read from the service's Server-Sent
//! Events stream, one readable line per event. The stream is reopened when it drops.

use crate::commands::{check_id, check_name};
use crate::config::Conn;
use crate::output::{self, fmt_clock, safe, short_commit, wire_name};
use anyhow::Result;
use hammer_client::{Client, EventFilter};
use hammer_protocol::api::Event;
use std::time::Duration;

/// How often `logs -f` renews the service's one-minute log watch.
const LOG_KEEPALIVE: Duration = Duration::from_secs(30);

/// One readable line for an event (`None` for kinds this CLI does not know); a logs event
/// is one line per log line. Everything the event carries is passed through [`safe`], so a
/// device cannot put an escape sequence or a line break of its own on the terminal.
pub fn describe(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::Status { device, entry } => {
            let mut s = format!(
                "{} {} {}",
                fmt_clock(entry.time),
                safe(device),
                wire_name(&entry.phase)
            );
            if entry.commit.is_some() {
                s.push_str(&format!(" {}", short_commit(entry.commit.as_deref())));
            }
            if let Some(g) = entry.generation {
                s.push_str(&format!(" gen {g}"));
            }
            if let Some(d) = &entry.deployment_id {
                s.push_str(&format!(" deployment {}", safe(d)));
                if let Some(by) = &entry.deployer {
                    s.push_str(&format!(" by {}", safe(by)));
                }
            }
            if let Some(d) = &entry.detail {
                s.push_str(&format!(": {}", safe(d)));
            }
            s
        }
        Event::Presence {
            device,
            online,
            time,
        } => format!(
            "{} {} {}",
            fmt_clock(*time),
            safe(device),
            if *online { "online" } else { "offline" }
        ),
        Event::Health { device, health: h } => format!(
            "{} {} health: app {}, {} restarts, up {}s, rss {} KiB",
            fmt_clock(h.time),
            safe(device),
            if h.app_running {
                "running"
            } else {
                "not running"
            },
            h.restarts,
            h.uptime_secs,
            h.app_rss_kb
        ),
        Event::Logs { device, lines } => lines
            .iter()
            .map(|l| format!("{} | {}", safe(device), safe(l)))
            .collect::<Vec<_>>()
            .join("\n"),
        Event::Deployment { deployment: d } => format!(
            "{} deployment {} {}: {}{}",
            fmt_clock(hammer_protocol::now_ms()),
            safe(&d.id),
            wire_name(&d.state),
            safe(&crate::deploy::summary(d)),
            d.reason
                .as_deref()
                .map(|r| format!(" ({})", safe(r)))
                .unwrap_or_default()
        ),
        Event::Unknown => return None,
    })
}

/// Follows the event stream forever, reopening it when it drops or the service restarts.
async fn follow(
    client: &Client,
    filter: EventFilter<'_>,
    mut on_event: impl FnMut(&str, Event),
) -> Result<()> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match client
            .events(filter, |raw, ev| {
                on_event(raw, ev);
                true
            })
            .await
        {
            Ok(()) => {
                // The service ended the stream (a restart: its last event says to
                // reconnect, which a load balancer sends to another replica).
                eprintln!("(event stream closed by the service; reconnecting)");
                backoff = Duration::from_millis(500);
            }
            Err(e) if e.is_unreachable() => {
                eprintln!(
                    "({}; retrying in {}s)",
                    safe(&e.to_string()),
                    backoff.as_secs_f32()
                );
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// `hammer events [--device NAME] [--deployment ID]`.
pub async fn events(
    conn: &Conn,
    device: Option<&str>,
    deployment: Option<&str>,
    json: bool,
) -> Result<()> {
    if let Some(d) = device {
        check_name(d)?;
    }
    if let Some(d) = deployment {
        check_id(d)?;
    }
    let client = Client::new(conn)?;
    let filter = EventFilter { device, deployment };
    follow(&client, filter, |raw, ev| {
        if json {
            println!("{raw}");
        } else if let Some(line) = describe(&ev) {
            println!("{line}");
        }
    })
    .await
}

/// `hammer logs NAME [-f]`: the recent lines, then (with -f) live lines as they come.
pub async fn logs(conn: &Conn, name: &str, follow_on: bool, json: bool) -> Result<()> {
    check_name(name)?;
    let client = Client::new(conn)?;
    let answer = client.logs(name).await?;
    let (v, lines) = (answer.raw, answer.body);
    if json {
        if follow_on {
            println!("{v}");
        } else {
            output::print_json(&v);
        }
    } else {
        for l in &lines.lines {
            println!("{}", safe(l));
        }
    }
    if !follow_on {
        return Ok(());
    }
    // The device streams its output for a minute after each `GET /logs`: keep asking.
    let keepalive = {
        let client = client.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOG_KEEPALIVE).await;
                if let Err(e) = client.logs(&name).await {
                    tracing::debug!("log keep-alive failed: {e:#}");
                }
            }
        })
    };
    let filter = EventFilter {
        device: Some(name),
        deployment: None,
    };
    let res = follow(&client, filter, |raw, ev| {
        if let Event::Logs { lines, .. } = ev {
            if json {
                println!("{raw}");
            } else {
                for l in lines {
                    println!("{}", safe(&l));
                }
            }
        }
    })
    .await;
    keepalive.abort();
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::HistoryEntry;
    use hammer_protocol::Phase;

    #[test]
    fn describes_status() {
        let ev = Event::Status {
            device: "d1".into(),
            entry: HistoryEntry {
                time: 3_600_000,
                deployment_id: Some("dep1".into()),
                deployer: Some("alice".into()),
                generation: Some(2),
                phase: Phase::RolledBack,
                commit: Some("0123456789abcdef".into()),
                detail: Some("app exited".into()),
                log_tail: vec![],
                commit_subject: None,
            },
        };
        assert_eq!(
            describe(&ev).unwrap(),
            "01:00:00 d1 rolled_back 0123456789 gen 2 deployment dep1 by alice: app exited"
        );
        assert!(describe(&Event::Unknown).is_none());
    }

    #[test]
    fn describe_escapes_what_the_device_sent() {
        let ev = Event::Status {
            device: "d1".into(),
            entry: HistoryEntry {
                time: 0,
                deployment_id: None,
                deployer: None,
                generation: None,
                phase: Phase::RolledBack,
                commit: Some("\x1b[2J".into()),
                detail: Some("bad\x1b]0;pwned\x07\n00:00:00 d1 running".into()),
                log_tail: vec![],
                commit_subject: None,
            },
        };
        assert_eq!(
            describe(&ev).unwrap(),
            "00:00:00 d1 rolled_back \\x1b[2J: bad\\x1b]0;pwned\\x07\\n00:00:00 d1 running"
        );
        let logs = Event::Logs {
            device: "d1".into(),
            lines: vec!["one\rtwo".into(), "\u{9b}2J".into()],
        };
        assert_eq!(describe(&logs).unwrap(), "d1 | one\\rtwo\nd1 | \\u{9b}2J");
    }
}
