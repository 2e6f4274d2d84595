//! Deployment pages: the list, one deployment with per-device progress (live, with cancel),
//! and the form to start one. Reads go through [`crate::api::deployments`]; starting and
//! canceling are `fetch()` calls to the JSON API from `app.js`.

use super::frame::{error_page, fragment, page, PageUser, PartQuery};
use super::html::{enc, esc, short, time_ago, word};
use crate::domain::{deployments, devices};
use crate::service::Service;
use crate::views::PageParams;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use hammer_protocol::api::{DeploymentState, DeploymentView, TargetState};
use std::sync::Arc;

/// A time as "3 min ago" (the UTC time on hover), relative to the moment the page renders.
fn time(ms: Option<u64>) -> String {
    time_ago(ms, hammer_protocol::now_ms())
}

fn progress(d: &DeploymentView) -> String {
    let done = d
        .targets
        .iter()
        .filter(|t| t.state == TargetState::Succeeded)
        .count();
    format!("{done}/{} succeeded", d.targets.len())
}

fn state_badge(s: DeploymentState) -> String {
    let w = word(&s);
    format!("<span class=\"badge dep-{w}\">{w}</span>")
}

/// The state's badge, and a `paused` one while its owner paused it.
fn dep_badge(d: &DeploymentView) -> String {
    if d.paused {
        format!(
            "{} <span class=\"badge dep-paused\">paused</span>",
            state_badge(d.state)
        )
    } else {
        state_badge(d.state)
    }
}

fn deployment_rows(list: &[DeploymentView]) -> String {
    if list.is_empty() {
        return "<tr><td colspan=\"6\">No deployments yet. <a href=\"/deployments/new\">Start one</a>.</td></tr>".into();
    }
    list.iter()
        .map(|d| {
            format!(
                r#"<tr data-deployment="{id}"><td data-label="Deployment"><a href="/deployments/{u}"><code>{sid}</code></a></td>
<td data-label="State">{state}</td><td data-label="Progress">{progress}</td>
<td data-label="Ref">{r}</td><td data-label="Commit"><code>{commit}</code></td>
<td data-label="Started">{when} by {by}</td></tr>"#,
                id = esc(&d.id),
                u = enc(&d.id),
                sid = esc(&d.id.chars().take(8).collect::<String>()),
                state = dep_badge(d),
                progress = progress(d),
                r = esc(d.git_ref.as_deref().unwrap_or("setup ref")),
                commit = short(d.commit.as_deref()),
                when = time(Some(d.created_at)),
                by = esc(&d.deployer),
            )
        })
        .collect()
}

/// `GET /deployments`: the caller's deployments, newest first (live).
pub async fn deployments(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Query(part): Query<PartQuery>,
    Query(pg): Query<PageParams>,
) -> Response {
    let (list, older) = match deployments::deployments_page(&svc, &c, &pg) {
        Ok(l) => l,
        Err(e) => return error_page(Some(&c), e),
    };
    let rows = deployment_rows(&list);
    if part.part.is_some() {
        return fragment(rows);
    }
    let body = format!(
        r#"<h1>Deployments</h1><p><a class="button" href="/deployments/new">New deployment</a></p>
<table id="deployments" class="list"><thead><tr><th scope="col">Deployment</th><th scope="col">State</th><th scope="col">Progress</th><th scope="col">Ref</th><th scope="col">Commit</th><th scope="col">Started</th></tr></thead>
<tbody{live}>{rows}</tbody></table>{nav}"#,
        live = if pg.cursor.is_some() {
            ""
        } else {
            " data-live=\"/deployments?part=rows\""
        },
        nav = super::pages::page_nav("/deployments", pg.cursor.is_some(), older.as_deref()),
    );
    page(&c, "Deployments", Some("/api/v1/events"), &body)
}

fn deployment_detail(d: &DeploymentView) -> String {
    let s = &d.strategy;
    let targets: String = d
        .targets
        .iter()
        .map(|t| {
            format!(
                r#"<tr data-target="{n}"><td data-label="Device"><a href="/devices/{u}">{n}</a></td>
<td data-label="State" class="target-state" data-state="{st}">{stw}</td>
<td data-label="Phase">{phase}</td><td data-label="Attempts">{att}</td>
<td data-label="Commit"><code>{commit}</code></td><td data-label="Detail">{detail}</td>
<td data-label="Updated">{upd}</td></tr>"#,
                n = esc(&t.device),
                u = enc(&t.device),
                st = esc(&word(&t.state).replace(' ', "_")),
                stw = word(&t.state),
                phase = t.last_phase.map(|p| word(&p)).unwrap_or_else(|| "—".into()),
                att = t.attempts,
                commit = short(t.commit.as_deref()),
                detail = esc(t.detail.as_deref().unwrap_or("")),
                upd = time(Some(t.updated_at)),
            )
        })
        .collect();
    let id = enc(&d.id);
    let cancel = if d.state == DeploymentState::Running {
        let hold = if d.paused {
            format!("<button type=\"button\" id=\"resume\" data-action=\"/api/v1/deployments/{id}/resume\">Resume deployment</button>")
        } else {
            format!("<button type=\"button\" id=\"pause\" data-action=\"/api/v1/deployments/{id}/pause\" data-confirm=\"Pause this deployment? No more devices are started until you resume it; devices already updating finish.\">Pause deployment</button>")
        };
        format!(
            "<div class=\"actions\">{hold} <button type=\"button\" class=\"danger\" id=\"cancel\" data-action=\"/api/v1/deployments/{id}/cancel\" data-confirm=\"Cancel this deployment? Devices not yet started keep their release.\">Cancel deployment</button></div>"
        )
    } else if d
        .targets
        .iter()
        .any(|t| matches!(t.state, TargetState::Failed | TargetState::TimedOut))
    {
        format!(
            "<div class=\"actions\"><button type=\"button\" id=\"retry\" data-follow data-action=\"/api/v1/deployments/{id}/retry\" data-confirm=\"Start a new deployment of the devices that failed or timed out?\">Retry failed devices</button></div>"
        )
    } else {
        String::new()
    };
    format!(
        r#"<section class="card"><dl class="facts">
<dt>State</dt><dd id="dep-state" data-state="{state}">{badge}</dd>
<dt>Progress</dt><dd id="dep-progress">{progress}</dd>
<dt>Ref</dt><dd>{r}</dd><dt>Commit</dt><dd><code title="{full}">{commit}</code></dd>
<dt>Started</dt><dd>{created} by {by}</dd><dt>Finished</dt><dd>{fin}</dd>
<dt>Strategy</dt><dd>max in flight {mif}, abort {abort}, timeout {to} s, retries {ret}</dd>
{reason}</dl>{cancel}</section>
<table id="targets" class="list"><caption>Devices</caption><thead><tr><th scope="col">Device</th><th scope="col">State</th><th scope="col">Phase</th><th scope="col">Attempts</th><th scope="col">Commit</th><th scope="col">Detail</th><th scope="col">Updated</th></tr></thead>
<tbody>{targets}</tbody></table>"#,
        state = esc(&word(&d.state)),
        badge = dep_badge(d),
        progress = progress(d),
        r = esc(d.git_ref.as_deref().unwrap_or("each device's setup ref")),
        full = esc(d.commit.as_deref().unwrap_or("")),
        commit = short(d.commit.as_deref()),
        created = time(Some(d.created_at)),
        by = esc(&d.deployer),
        fin = time(d.finished_at),
        mif = s
            .max_in_flight
            .map(|m| m.to_string())
            .unwrap_or_else(|| "all".into()),
        abort = s
            .abort_at_percent
            .map(|p| format!("at {p}% failed after {} devices", s.abort_min_devices))
            .unwrap_or_else(|| "never".into()),
        to = s.timeout_secs,
        ret = s.retries,
        reason = d
            .reason
            .as_deref()
            .map(|r| format!("<dt>Reason</dt><dd>{}</dd>", esc(r)))
            .unwrap_or_default(),
    )
}

/// `GET /deployments/{id}`: one deployment with per-device progress (live).
pub async fn deployment(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Path(id): Path<String>,
    Query(part): Query<PartQuery>,
) -> Response {
    let d = match deployments::deployment_of(&svc, &c, &id) {
        Ok(d) => d,
        Err(e) => return error_page(Some(&c), e),
    };
    let detail = deployment_detail(&d);
    if part.part.is_some() {
        return fragment(detail);
    }
    let u = enc(&d.id);
    let body = format!(
        r#"<h1>Deployment <code>{}</code></h1><div data-live="/deployments/{u}?part=detail">{detail}</div>"#,
        esc(&d.id)
    );
    page(
        &c,
        "Deployment",
        Some(&format!("/api/v1/events?deployment={u}")),
        &body,
    )
}

/// `GET /deployments/new`: the form to start a deployment (sent by `app.js` as JSON).
pub async fn new_deployment(State(svc): State<Arc<Service>>, PageUser(c): PageUser) -> Response {
    let list = match devices::devices_of(&svc, &c, None) {
        Ok(l) => l,
        Err(e) => return error_page(Some(&c), e),
    };
    let boxes: String = list
        .iter()
        .map(|d| {
            format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"names\" value=\"{n}\"> {n}</label>",
                n = esc(&d.name)
            )
        })
        .collect();
    let boxes = if boxes.is_empty() {
        "<p>You have no devices yet.</p>".to_owned()
    } else {
        boxes
    };
    let body = format!(
        r#"<h1>New deployment</h1>
<form id="deploy-form" class="card" data-deploy>
<fieldset><legend>Devices (or a tag below)</legend>{boxes}</fieldset>
<label for="dep-tag">Tag selector</label>
<input id="dep-tag" name="tag" placeholder="key=value" aria-describedby="dep-tag-help">
<p id="dep-tag-help" class="help">Deploy to every device with this tag instead of the ones ticked above.</p>
<label for="dep-ref">Git ref</label>
<input id="dep-ref" name="ref" placeholder="each device's setup ref" aria-describedby="dep-ref-help">
<p id="dep-ref-help" class="help">A branch, tag or commit; empty keeps each device's setup ref.</p>
<label for="dep-max">Max in flight</label>
<input id="dep-max" name="max_in_flight" type="number" min="1" placeholder="all">
<label for="dep-abort">Abort when this % failed</label>
<input id="dep-abort" name="abort_at_percent" type="number" min="0" max="100" placeholder="never">
<label for="dep-abort-min">…after at least this many devices finished</label>
<input id="dep-abort-min" name="abort_min_devices" type="number" min="1" value="1">
<button type="submit" id="deploy-submit">Start deployment</button>
</form>"#
    );
    page(&c, "New deployment", None, &body)
}
