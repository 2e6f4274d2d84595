//! Devices and device pages. Data comes from the domain functions the API handlers call too
//! ([`crate::domain::devices`], [`crate::domain::activity`]), with the page's caller: the same
//! ownership rules, no extractors built here.

use super::frame::{error_page, fragment, no_store, page, PageUser, PartQuery};
use super::html::{enc, esc, short, time, word};
use crate::domain::{activity, devices};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use hammer_protocol::api::{DeviceView, HealthView, HistoryEntry};
use serde::Deserialize;
use std::sync::Arc;

use crate::service::Service;
use crate::views::PageParams;

#[derive(Deserialize)]
pub struct TagQuery {
    tag: Option<String>,
}

fn device_row(d: &DeviceView) -> String {
    let tags: String = d
        .tags
        .iter()
        .map(|(k, v)| {
            let t = format!("{k}={v}");
            format!(
                "<a class=\"tag\" href=\"/devices?tag={}\">{}</a> ",
                enc(&t),
                esc(&t)
            )
        })
        .collect();
    let online = if d.online { "online" } else { "offline" };
    format!(
        r#"<tr data-device="{n}"><td data-label="Name"><a href="/devices/{u}">{n}</a></td>
<td data-label="Tags">{tags}</td>
<td data-label="Status"><span class="badge {online}">{online}</span></td>
<td data-label="App" class="phase">{phase}</td>
<td data-label="Commit" class="commit"><code>{commit}</code></td>
<td data-label="Last seen">{seen}</td></tr>"#,
        n = esc(&d.name),
        u = enc(&d.name),
        phase = d.app_phase.map(|p| word(&p)).unwrap_or_else(|| "—".into()),
        commit = short(d.current_commit.as_deref()),
        seen = time(d.last_seen),
    )
}

fn device_rows(list: &[DeviceView]) -> String {
    if list.is_empty() {
        return "<tr><td colspan=\"6\">No devices. Register one with <code>hammer device add NAME</code>.</td></tr>".into();
    }
    list.iter().map(device_row).collect()
}

/// `GET /devices?tag=key=value`: the caller's devices (live).
pub async fn devices(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Query(part): Query<PartQuery>,
    Query(t): Query<TagQuery>,
) -> Response {
    if t.tag.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return no_store(Redirect::to("/devices").into_response());
    }
    let list = match devices::devices_of(&svc, &c, t.tag.as_deref()) {
        Ok(l) => l,
        Err(e) => return error_page(Some(&c), e),
    };
    let tag = t.tag.unwrap_or_default();
    let rows = device_rows(&list);
    if part.part.is_some() {
        return fragment(rows);
    }
    let live = if tag.is_empty() {
        "/devices?part=rows".to_owned()
    } else {
        format!("/devices?part=rows&tag={}", enc(&tag))
    };
    let clear = if tag.is_empty() {
        String::new()
    } else {
        " <a href=\"/devices\">Clear filter</a>".into()
    };
    let body = format!(
        r#"<h1>Devices</h1>
<form method="get" action="/devices" class="filter" role="search">
<label for="tag">Filter by tag</label>
<input id="tag" name="tag" placeholder="key=value" value="{tagv}">
<button type="submit">Filter</button>{clear}</form>
<table id="devices" class="list"><caption class="sr-only">Your devices</caption>
<thead><tr><th scope="col">Name</th><th scope="col">Tags</th><th scope="col">Status</th><th scope="col">App</th><th scope="col">Commit</th><th scope="col">Last seen</th></tr></thead>
<tbody data-live="{live}">{rows}</tbody></table>"#,
        tagv = esc(&tag),
        live = esc(&live),
    );
    page(&c, "Devices", Some("/api/v1/events"), &body)
}

fn health_html(h: Option<&HealthView>) -> String {
    let Some(h) = h else {
        return "<p>No health report yet.</p>".into();
    };
    format!(
        r#"<dl class="facts">
<dt>App running</dt><dd>{}</dd><dt>PID</dt><dd>{}</dd><dt>Restarts</dt><dd>{}</dd>
<dt>Uptime</dt><dd>{} s</dd><dt>Memory</dt><dd>{} KiB</dd><dt>CPU time</dt><dd>{} ms</dd>
<dt>Manager</dt><dd>{}</dd><dt>Reported</dt><dd>{}</dd></dl>"#,
        if h.app_running { "yes" } else { "no" },
        h.pid.map(|p| p.to_string()).unwrap_or_else(|| "—".into()),
        h.restarts,
        h.uptime_secs,
        h.app_rss_kb,
        h.app_cpu_ms,
        esc(&h.manager_version),
        time(Some(h.time)),
    )
}

fn device_state(d: &DeviceView) -> String {
    let online = if d.online { "online" } else { "offline" };
    let dep = match &d.current_deployment {
        Some(id) => format!(
            "<a href=\"/deployments/{}\"><code>{}</code></a>",
            enc(id),
            esc(id)
        ),
        None => "—".into(),
    };
    let tags: Vec<String> = d
        .tags
        .iter()
        .map(|(k, v)| esc(&format!("{k}={v}")))
        .collect();
    let setup = match &d.setup {
        Some(s) => format!("{} @ {}", esc(&s.repo_url), esc(&s.git_ref)),
        None => "not set up".into(),
    };
    format!(
        r#"<div class="grid"><section class="card"><h2>State</h2><dl class="facts">
<dt>Connection</dt><dd><span class="badge {online}" id="device-online">{online}</span></dd>
<dt>Device</dt><dd>{state}</dd>
<dt>App</dt><dd id="device-phase">{phase}</dd>
<dt>Run state</dt><dd>{run}</dd>
<dt>Commit</dt><dd><code id="device-commit" title="{full}">{commit}</code></dd>
<dt>Deployment</dt><dd>{dep}</dd>
<dt>Last seen</dt><dd>{seen}</dd>
<dt>Tags</dt><dd>{tags}</dd>
<dt>Source</dt><dd>{setup}</dd></dl></section>
<section class="card"><h2>Health</h2>{health}</section></div>"#,
        state = word(&d.state),
        phase = d.app_phase.map(|p| word(&p)).unwrap_or_else(|| "—".into()),
        run = word(&d.run_state),
        full = esc(d.current_commit.as_deref().unwrap_or("")),
        commit = short(d.current_commit.as_deref()),
        seen = time(d.last_seen),
        tags = if tags.is_empty() {
            "—".into()
        } else {
            tags.join(", ")
        },
        health = health_html(d.last_health.as_ref()),
    )
}

/// Links under a paged list: back to the newest page when on an older one, and to the next
/// older page when there is one.
pub fn page_nav(base: &str, on_older: bool, older: Option<&str>) -> String {
    let mut links = Vec::new();
    if on_older {
        links.push(format!("<a href=\"{base}\" id=\"newest\">Newest</a>"));
    }
    if let Some(c) = older {
        links.push(format!(
            "<a href=\"{base}?cursor={}\" id=\"older\" rel=\"next\">Older</a>",
            enc(c)
        ));
    }
    if links.is_empty() {
        return String::new();
    }
    format!("<p class=\"pager\">{}</p>", links.join(" · "))
}

fn history_rows(h: &[HistoryEntry]) -> String {
    if h.is_empty() {
        return "<tr><td colspan=\"6\">Nothing yet.</td></tr>".into();
    }
    h.iter()
        .rev()
        .map(|e| {
            let dep = match &e.deployment_id {
                Some(id) => format!(
                    "<a href=\"/deployments/{}\"><code>{}</code></a>",
                    enc(id),
                    esc(&id.chars().take(8).collect::<String>())
                ),
                None => "—".into(),
            };
            format!(
                r#"<tr><td data-label="Time">{}</td><td data-label="Phase" class="phase">{}</td><td data-label="Commit"><code>{}</code></td><td data-label="Deployment">{}</td><td data-label="By">{}</td><td data-label="Detail">{}</td></tr>"#,
                time(Some(e.time)),
                word(&e.phase),
                short(e.commit.as_deref()),
                dep,
                esc(e.deployer.as_deref().unwrap_or("—")),
                esc(e.detail.as_deref().unwrap_or("")),
            )
        })
        .collect()
}

/// `GET /devices/{name}`: state, health, actions, history and logs (live).
pub async fn device(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Path(name): Path<String>,
    Query(part): Query<PartQuery>,
    Query(pg): Query<PageParams>,
) -> Response {
    let d = match devices::device_of(&svc, &c, &name) {
        Ok(d) => d,
        Err(e) => return error_page(Some(&c), e),
    };
    match part.part.as_deref() {
        Some("state") => return fragment(device_state(&d)),
        Some("history") | None => {}
        Some(_) => return fragment(String::new()),
    }
    let (hist, older) = match activity::history_page(&svc, &c, &name, &pg) {
        Ok(h) => h,
        Err(e) => return error_page(Some(&c), e),
    };
    if part.part.is_some() {
        return fragment(history_rows(&hist));
    }
    // Asking for the logs turns the device's log streaming on for a while.
    let logs = match activity::watch_logs(&svc, &c, &name).await {
        Ok(l) => l.lines,
        Err(e) => vec![format!("(logs unavailable: {})", e.message)],
    };
    let n = esc(&d.name);
    let u = enc(&d.name);
    let action = |a: &str, label: &str, q: &str| {
        format!(
            "<button type=\"button\" data-action=\"/api/v1/devices/{u}/{a}\" data-confirm=\"{}\" id=\"action-{a}\">{label}</button>",
            esc(q)
        )
    };
    let body = format!(
        r#"<h1>Device <span id="device-name">{n}</span></h1>
<div data-live="/devices/{u}?part=state">{state}</div>
<section class="card"><h2>Actions</h2><div class="actions">
{restart}{stop}{start}{rollback}</div></section>
<section class="card"><h2>History</h2>
<table id="history" class="list"><thead><tr><th scope="col">Time</th><th scope="col">Phase</th><th scope="col">Commit</th><th scope="col">Deployment</th><th scope="col">By</th><th scope="col">Detail</th></tr></thead>
<tbody{live}>{hist}</tbody></table>{nav}</section>
<section class="card"><h2>Logs</h2>
<pre id="logs" class="logs" data-device="{n}" data-logs="/api/v1/devices/{u}/logs" tabindex="0" aria-label="Recent and live log lines">{logs}</pre></section>"#,
        state = device_state(&d),
        restart = action(
            "restart",
            "Restart",
            &format!("Restart the app on {}?", d.name)
        ),
        stop = action("stop", "Stop", &format!("Stop the app on {}?", d.name)),
        start = action("start", "Start", &format!("Start the app on {}?", d.name)),
        rollback = action(
            "rollback",
            "Roll back",
            &format!("Roll {} back to its previous release?", d.name)
        ),
        hist = history_rows(&hist),
        live = if pg.cursor.is_some() {
            String::new()
        } else {
            format!(" data-live=\"/devices/{u}?part=history\"")
        },
        nav = page_nav(
            &format!("/devices/{u}"),
            pg.cursor.is_some(),
            older.as_deref()
        ),
        logs = logs.iter().map(|l| esc(l) + "\n").collect::<String>(),
    );
    let events = format!("/api/v1/events?device={u}");
    page(&c, &d.name, Some(&events), &body)
}
