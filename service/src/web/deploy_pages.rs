//! Deployment pages: the list, one deployment with a progress bar, its duration and
//! per-device progress (live, with pause, cancel and retry), and the form to start one with a
//! preview of the devices it reaches. Reads go through [`crate::domain::deployments`] and
//! [`crate::domain::devices`]; starting and canceling are `fetch()` calls to the JSON API
//! from `app.js`.

use super::frame::{error_page, fragment, page, PageUser, PartQuery};
use super::html::{duration, enc, esc, form_field, form_fields, short, time_ago, word};
use crate::domain::{deployments, devices};
use crate::service::Service;
use crate::views::PageParams;
use axum::extract::{Path, Query, RawQuery, State};
use axum::response::Response;
use hammer_protocol::api::{
    DeploymentState, DeploymentView, DeviceView, PhaseGateState, PhasingView, TargetState,
};
use std::sync::Arc;

/// A time as "3 min ago" (the UTC time on hover), relative to the moment the page renders.
fn time(ms: Option<u64>) -> String {
    time_ago(ms, hammer_protocol::now_ms())
}

/// How far a deployment got, by target state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub succeeded: usize,
    /// Failed or timed out.
    pub failed: usize,
    /// Not attempted (aborted or canceled first), or superseded by a newer deployment.
    pub skipped: usize,
    pub in_flight: usize,
}

impl Counts {
    pub fn of(d: &DeploymentView) -> Counts {
        let mut c = Counts {
            total: d.targets.len(),
            ..Counts::default()
        };
        for t in &d.targets {
            match t.state {
                TargetState::Succeeded => c.succeeded += 1,
                TargetState::Failed | TargetState::TimedOut => c.failed += 1,
                TargetState::Skipped | TargetState::Superseded => c.skipped += 1,
                TargetState::InFlight => c.in_flight += 1,
                TargetState::Pending | TargetState::Unknown => {}
            }
        }
        c
    }
    /// Targets whose attempt is over, whatever the outcome.
    pub fn done(&self) -> usize {
        self.succeeded + self.failed + self.skipped
    }
}

fn progress(d: &DeploymentView) -> String {
    let c = Counts::of(d);
    let mut s = format!("{}/{} succeeded", c.succeeded, c.total);
    if c.failed > 0 {
        s.push_str(&format!(", {} failed", c.failed));
    }
    if c.skipped > 0 {
        s.push_str(&format!(", {} skipped", c.skipped));
    }
    s
}

/// A bar of the targets: succeeded, failed, skipped and in flight, with the same in words.
fn progress_bar(d: &DeploymentView) -> String {
    let c = Counts::of(d);
    let pct = |n: usize| {
        if c.total == 0 {
            0.0
        } else {
            (n as f64) * 100.0 / (c.total as f64)
        }
    };
    let seg = |class: &str, n: usize| {
        if n == 0 {
            String::new()
        } else {
            format!(
                "<span class=\"{class}\" style=\"width:{:.2}%\"></span>",
                pct(n)
            )
        }
    };
    let words = format!(
        "{} of {} device{} done: {}",
        c.done(),
        c.total,
        if c.total == 1 { "" } else { "s" },
        progress(d)
    );
    let flight = if c.in_flight > 0 {
        format!(", {} in flight", c.in_flight)
    } else {
        String::new()
    };
    format!(
        r#"<div class="bar" role="progressbar" aria-label="Devices done" aria-valuemin="0" aria-valuemax="{total}" aria-valuenow="{done}" aria-valuetext="{words}">{ok}{bad}{skip}{run}</div><p class="help" id="dep-progress-words">{words}{flight}</p>"#,
        total = c.total,
        done = c.done(),
        ok = seg("ok", c.succeeded),
        bad = seg("bad", c.failed),
        skip = seg("skip", c.skipped),
        run = seg("run", c.in_flight),
    )
}

/// How long it ran: in total once ended, so far while it runs (the words follow the clock
/// in `app.js` through `data-since`).
fn dep_duration(d: &DeploymentView, now: u64) -> String {
    match d.finished_at {
        Some(f) => format!("took {}", duration(f.saturating_sub(d.created_at))),
        None => format!(
            "running for <span data-since=\"{}\">{}</span>",
            d.created_at,
            duration(now.saturating_sub(d.created_at))
        ),
    }
}

/// The page's heading: the ref and commit and who deployed it; the id small, below.
fn heading(d: &DeploymentView) -> String {
    let r = match d.git_ref.as_deref() {
        Some(r) => esc(r),
        None => "each device's setup ref".into(),
    };
    let commit = match d.commit.as_deref() {
        Some(c) => format!(" <code title=\"{}\">{}</code>", esc(c), short(Some(c))),
        None if d.finished_at.is_some() => {
            " <span class=\"muted small\">(no commit pinned)</span>".into()
        }
        None => " <span class=\"muted small\">(commit pinned by the first device)</span>".into(),
    };
    format!(
        r#"<h1 id="dep-title">Deploy {r}{commit} <span class="muted small">by {by}</span></h1>
<p class="muted small id-line">Deployment <code id="dep-id">{id}</code></p>"#,
        by = esc(&d.deployer),
        id = esc(&d.id),
    )
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
    let now = hammer_protocol::now_ms();
    let with_detail = d.targets.iter().any(|t| t.detail.is_some());
    let targets: String = d
        .targets
        .iter()
        .map(|t| {
            format!(
                r#"<tr data-target="{n}"><td data-label="Device"><a href="/devices/{u}">{n}</a></td>
<td data-label="State" class="target-state" data-state="{st}">{stw}</td>
<td data-label="Phase">{phase}</td><td data-label="Attempts">{att}</td>
<td data-label="Commit"><code>{commit}</code></td>{detail}
<td data-label="Updated">{upd}</td></tr>"#,
                n = esc(&t.device),
                u = enc(&t.device),
                st = esc(&word(&t.state).replace(' ', "_")),
                stw = word(&t.state),
                phase = t.last_phase.map(|p| word(&p)).unwrap_or_else(|| "—".into()),
                att = t.attempts,
                commit = short(t.commit.as_deref()),
                detail = if with_detail {
                    format!(
                        "<td data-label=\"Detail\">{}</td>",
                        esc(t.detail.as_deref().unwrap_or(""))
                    )
                } else {
                    String::new()
                },
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
        let promote = match &d.phasing {
            Some(p) if p.current < p.count => format!(
                " <button type=\"button\" id=\"promote\" data-action=\"/api/v1/deployments/{id}/promote\" data-confirm=\"Start phase {next} of {count} now?\">Promote to phase {next}</button>",
                next = p.current + 1,
                count = p.count
            ),
            _ => String::new(),
        };
        format!(
            "<div class=\"actions\">{hold}{promote} <button type=\"button\" class=\"danger\" id=\"cancel\" data-action=\"/api/v1/deployments/{id}/cancel\" data-confirm=\"Cancel this deployment? Devices not yet started keep their release.\">Cancel deployment</button></div>"
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
        r#"{heading}<section class="card">{bar}<dl class="facts">
<dt>State</dt><dd id="dep-state" data-state="{state}">{badge}</dd>
<dt>Progress</dt><dd id="dep-progress">{progress}</dd>
<dt>Duration</dt><dd id="dep-duration">{took}</dd>
<dt>Ref</dt><dd>{r}</dd><dt>Commit</dt><dd><code title="{full}">{commit}</code>{mark_bad}</dd>
<dt>Started</dt><dd>{created} by {by}</dd><dt>Finished</dt><dd>{fin}</dd>
<dt>Strategy</dt><dd>max in flight {mif}, abort {abort}, timeout {to} s, retries {ret}</dd>
{schedule}{phases}{reason}</dl>{cancel}</section>
<table id="targets" class="list"><caption>Devices</caption><thead><tr><th scope="col">Device</th><th scope="col">State</th><th scope="col">Phase</th><th scope="col">Attempts</th><th scope="col">Commit</th>{detail_th}<th scope="col">Updated</th></tr></thead>
<tbody>{targets}</tbody></table>"#,
        heading = heading(d),
        bar = progress_bar(d),
        took = dep_duration(d, now),
        detail_th = if with_detail {
            "<th scope=\"col\">Detail</th>"
        } else {
            ""
        },
        state = esc(&word(&d.state)),
        badge = dep_badge(d),
        progress = progress(d),
        r = esc(d.git_ref.as_deref().unwrap_or("each device's setup ref")),
        full = esc(d.commit.as_deref().unwrap_or("")),
        commit = short(d.commit.as_deref()),
        mark_bad = d
            .commit
            .as_deref()
            .map(|c| format!(
                " <a class=\"mark-bad\" href=\"/commits?commit={}\">Mark this commit bad…</a>",
                enc(c)
            ))
            .unwrap_or_default(),
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
        schedule = s
            .start_at
            .map(|t| format!("<dt>Starts</dt><dd id=\"dep-start\">{}</dd>", time(Some(t))))
            .unwrap_or_default(),
        phases = d
            .phasing
            .as_ref()
            .map(|p| phasing_facts(p, s.soak_secs))
            .unwrap_or_default(),
    )
}

/// The phases of a phased deployment: where it is, what the open phase waits for, the
/// promotions so far.
fn phasing_facts(p: &PhasingView, soak_secs: Option<u32>) -> String {
    let k = p.current as usize;
    let (from, to) = p.open_targets();
    let gate = match p.state {
        PhaseGateState::Soaking => format!("soaking until {}", time(p.soak_until)),
        PhaseGateState::AwaitingPromotion => "done; promote it to go on".to_owned(),
        PhaseGateState::Held => format!(
            "held: {}",
            esc(p.held_reason.as_deref().unwrap_or("no reason given"))
        ),
        PhaseGateState::Running if k == p.count as usize => "the last phase".to_owned(),
        _ => "devices updating".to_owned(),
    };
    let soak = match soak_secs {
        Some(secs) => format!("promoted after {secs} s healthy"),
        None => "promoted by hand".to_owned(),
    };
    let promotions: String = p
        .promotions
        .iter()
        .map(|x| {
            format!(
                "<li>phase {} promoted {} {}</li>",
                x.phase,
                time(Some(x.at)),
                match &x.by {
                    Some(by) => format!("by {}", esc(by)),
                    None => "after its soak".to_owned(),
                }
            )
        })
        .collect();
    let promotions = if promotions.is_empty() {
        String::new()
    } else {
        format!("<ul class=\"promotions\">{promotions}</ul>")
    };
    format!(
        "<dt>Phases</dt><dd id=\"dep-phase\" data-phase=\"{cur}\" data-gate=\"{gw}\">phase {cur} of {count} (devices {a}–{to}; {soak}): {gate}{promotions}</dd>",
        cur = p.current,
        count = p.count,
        gw = esc(&word(&p.state).replace(' ', "_")),
        a = from,
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
    let body = format!(r#"<div data-live="/deployments/{u}?part=detail">{detail}</div>"#);
    let title = format!(
        "Deploy {}",
        d.git_ref.as_deref().unwrap_or("of the setup ref")
    );
    page(
        &c,
        &title,
        Some(&format!("/api/v1/events?deployment={u}")),
        &body,
    )
}

/// What the phases typed in the form make of `n` devices (the protocol's parser, the
/// rollout's plan), or why they are refused.
fn phase_preview(text: &str, n: usize) -> String {
    if text.is_empty() {
        return String::new();
    }
    match hammer_protocol::schedule::parse_phases(text) {
        Err(e) => format!(
            "<p class=\"preview-phases bad\">{}</p>",
            esc(&e.to_string())
        ),
        Ok(sizes) => match crate::rollout::phasing::plan(&sizes, n) {
            None => {
                "<p class=\"preview-phases\">These sizes leave one phase: every device at once.</p>"
                    .to_owned()
            }
            Some(ends) => {
                let mut from = 0;
                let parts: Vec<String> = ends
                    .iter()
                    .map(|&e| {
                        let size = e - from;
                        from = e;
                        format!("{size}")
                    })
                    .collect();
                format!(
                    "<p class=\"preview-phases\">Phases: {} devices.</p>",
                    parts.join(", then ")
                )
            }
        },
    }
}

/// Most devices the preview lists one by one.
const PREVIEW_ROWS: usize = 50;

/// What the new-deployment form would reach, before it is sent: the devices the tag or the
/// ticked names select, the commit each runs now, and what the ref will resolve to. The
/// service cannot resolve a ref itself (the CLI does, with the user's git access): the first
/// device's report pins the commit for every device.
fn preview(all: &[DeviceView], picked: Result<Vec<DeviceView>, String>, git_ref: &str) -> String {
    let list = match picked {
        Ok(l) => l,
        Err(msg) => return format!("<p class=\"error\">{}</p>", esc(&msg)),
    };
    if list.is_empty() {
        return if all.is_empty() {
            "<p>You have no devices yet.</p>".into()
        } else {
            "<p class=\"help\">No device selected yet: tick devices or enter a tag.</p>".into()
        };
    }
    let mut commits: Vec<&str> = list
        .iter()
        .map(|d| d.current_commit.as_deref().unwrap_or(""))
        .collect();
    commits.sort_unstable();
    commits.dedup();
    let runs = match commits.as_slice() {
        [""] => "None of them runs a release yet.".to_owned(),
        [c] => format!("All run <code>{}</code> now.", short(Some(c))),
        _ => format!("They run {} different commits now.", commits.len()),
    };
    let to = if git_ref.is_empty() {
        "Each device gets its setup ref (column Setup ref below); each resolves it itself.".into()
    } else {
        format!(
            "<code>{}</code> resolves to a commit when the first device fetches it; that commit is pinned for every other device.",
            esc(git_ref)
        )
    };
    let rows: String = list
        .iter()
        .take(PREVIEW_ROWS)
        .map(|d| {
            let online = if d.online { "online" } else { "offline" };
            format!(
                "<tr><td data-label=\"Device\">{n}</td><td data-label=\"Status\"><span class=\"badge {online}\">{online}</span></td><td data-label=\"Runs now\"><code>{c}</code></td><td data-label=\"Setup ref\">{r}</td></tr>",
                n = esc(&d.name),
                c = short(d.current_commit.as_deref()),
                r = d
                    .setup
                    .as_ref()
                    .map(|s| esc(&s.git_ref))
                    .unwrap_or_else(|| "not set up".into()),
            )
        })
        .collect();
    let more = if list.len() > PREVIEW_ROWS {
        format!(
            "<p class=\"help\">…and {} more.</p>",
            list.len() - PREVIEW_ROWS
        )
    } else {
        String::new()
    };
    format!(
        r#"<p><strong id="preview-count">{n} device{s}</strong> selected. {runs}</p><p class="help">{to}</p>
<table class="list" id="preview-devices"><caption class="sr-only">Selected devices</caption><thead><tr><th scope="col">Device</th><th scope="col">Status</th><th scope="col">Runs now</th><th scope="col">Setup ref</th></tr></thead><tbody>{rows}</tbody></table>{more}"#,
        n = list.len(),
        s = if list.len() == 1 { "" } else { "s" },
    )
}

/// `GET /deployments/new`: the form to start a deployment (sent by `app.js` as JSON), with
/// a preview of what it reaches; `?part=preview&names=…&tag=…&ref=…` is the preview alone.
pub async fn new_deployment(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Query(part): Query<PartQuery>,
    RawQuery(q): RawQuery,
) -> Response {
    let list = match devices::devices_of(&svc, &c, None) {
        Ok(l) => l,
        Err(e) => return error_page(Some(&c), e),
    };
    let q = q.unwrap_or_default();
    let names = form_fields(&q, "names");
    let tag = form_field(&q, "tag").unwrap_or_default();
    let tag = tag.trim();
    let git_ref = form_field(&q, "ref").unwrap_or_default();
    let phases_text = form_field(&q, "phases").unwrap_or_default();
    let picked = if !tag.is_empty() && !names.is_empty() {
        Err("Choose devices or a tag, not both.".to_owned())
    } else if !tag.is_empty() {
        devices::devices_of(&svc, &c, Some(tag)).map_err(|e| e.message)
    } else {
        Ok(list
            .iter()
            .filter(|d| names.contains(&d.name))
            .cloned()
            .collect())
    };
    let mut shown = preview(&list, picked.clone(), git_ref.trim());
    shown.push_str(&phase_preview(
        phases_text.trim(),
        picked.map(|p| p.len()).unwrap_or(0),
    ));
    if part.part.as_deref() == Some("preview") {
        return fragment(shown);
    }
    let boxes: String = list
        .iter()
        .map(|d| {
            format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"names\" value=\"{n}\"{on}> {n}</label>",
                n = esc(&d.name),
                on = if names.contains(&d.name) { " checked" } else { "" },
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
<input id="dep-tag" name="tag" placeholder="key=value" aria-describedby="dep-tag-help" value="{tagv}">
<p id="dep-tag-help" class="help">Deploy to every device with this tag instead of the ones ticked above.</p>
<label for="dep-ref">Git ref</label>
<input id="dep-ref" name="ref" placeholder="each device's setup ref" aria-describedby="dep-ref-help" value="{refv}">
<p id="dep-ref-help" class="help">A branch, tag or commit; empty keeps each device's setup ref.</p>
<details id="dep-advanced" class="advanced"><summary>Advanced: rollout strategy</summary>
<label for="dep-max">Max in flight</label>
<input id="dep-max" name="max_in_flight" type="number" min="1" placeholder="all">
<label for="dep-abort">Abort when this % failed</label>
<input id="dep-abort" name="abort_at_percent" type="number" min="0" max="100" placeholder="never">
<label for="dep-abort-min">…after at least this many devices finished</label>
<input id="dep-abort-min" name="abort_min_devices" type="number" min="1" value="1">
<label for="dep-phases">Phases</label>
<input id="dep-phases" name="phases" placeholder="one phase" aria-describedby="dep-phases-help" value="{phv}">
<p id="dep-phases-help" class="help">Sizes separated by commas, e.g. <code>1,10%</code>: one device, then 10% of them, then the rest. Each phase starts once the one before it is promoted.</p>
<label for="dep-soak">Soak (minutes)</label>
<input id="dep-soak" name="soak_minutes" type="number" min="0" placeholder="promote by hand" aria-describedby="dep-soak-help">
<p id="dep-soak-help" class="help">With phases: a finished phase whose devices all stayed healthy this long is promoted on its own.</p>
<label for="dep-start">Start at (your local time)</label>
<input id="dep-start" name="start_at" type="datetime-local" aria-describedby="dep-start-help">
<p id="dep-start-help" class="help">Empty: at once. No device is touched before.</p>
</details>
<section id="preview" class="preview" aria-labelledby="preview-h" data-preview="/deployments/new?part=preview"><h2 id="preview-h">What this reaches</h2>
<div id="preview-body" aria-live="polite">{shown}</div></section>
<button type="submit" id="deploy-submit">Start deployment</button>
</form>"#,
        tagv = esc(tag),
        refv = esc(git_ref.trim()),
        phv = esc(phases_text.trim()),
    );
    page(&c, "New deployment", None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::{DeploymentTargetView, Strategy};

    fn target(name: &str, state: TargetState, detail: Option<&str>) -> DeploymentTargetView {
        DeploymentTargetView {
            device: name.into(),
            state,
            attempts: 1,
            last_phase: None,
            commit: None,
            detail: detail.map(str::to_owned),
            updated_at: 0,
        }
    }

    fn dep(targets: Vec<DeploymentTargetView>) -> DeploymentView {
        DeploymentView {
            phasing: None,
            id: "01hzzzzzzzzzzzzzzzzzzzzzzz".into(),
            deployer: "<b>alice</b>".into(),
            created_at: 1_000,
            finished_at: None,
            git_ref: Some("main<script>".into()),
            commit: None,
            strategy: Strategy::default(),
            state: DeploymentState::Running,
            reason: None,
            targets,
            paused: false,
        }
    }

    #[test]
    fn progress_counts_done_and_failed() {
        let mut d = dep(vec![
            target("a", TargetState::Succeeded, None),
            target("b", TargetState::TimedOut, None),
            target("c", TargetState::InFlight, None),
            target("d", TargetState::Pending, None),
        ]);
        let c = Counts::of(&d);
        assert_eq!((c.total, c.succeeded, c.failed, c.done()), (4, 1, 1, 2));
        assert_eq!(progress(&d), "1/4 succeeded, 1 failed");
        let bar = progress_bar(&d);
        assert!(
            bar.contains("aria-valuenow=\"2\"") && bar.contains("style=\"width:25.00%\""),
            "{bar}"
        );
        assert!(bar.contains("1 in flight"), "{bar}");
        assert!(
            dep_duration(&d, 126_000).contains("running for <span data-since=\"1000\">2 min 5 s")
        );
        d.finished_at = Some(61_000);
        assert_eq!(dep_duration(&d, 999_999), "took 1 min 0 s");
    }

    #[test]
    fn heading_reads_ref_commit_and_deployer_escaped() {
        let mut d = dep(vec![target("a", TargetState::Pending, None)]);
        let h = heading(&d);
        assert!(h.contains("Deploy main&lt;script&gt;"), "{h}");
        assert!(h.contains("by &lt;b&gt;alice&lt;/b&gt;"), "{h}");
        assert!(h.contains("pinned by the first device"), "{h}");
        d.commit = Some("0123456789abcdef".into());
        assert!(heading(&d).contains("<code title=\"0123456789abcdef\">0123456</code>"));
        let page = deployment_detail(&d);
        assert!(!page.contains(">Detail<"), "no detail, no column: {page}");
        d.targets
            .push(target("b", TargetState::Failed, Some("<exit 1>")));
        let page = deployment_detail(&d);
        assert!(
            page.contains(">Detail<") && page.contains("&lt;exit 1&gt;"),
            "{page}"
        );
    }

    fn device(name: &str, commit: Option<&str>) -> DeviceView {
        DeviceView {
            id: format!("id-{name}"),
            name: name.into(),
            tags: Default::default(),
            state: hammer_protocol::api::DeviceState::Enrolled,
            online: true,
            last_seen: None,
            current_commit: commit.map(str::to_owned),
            app_phase: None,
            run_state: hammer_protocol::RunState::Running,
            generation: 1,
            current_deployment: None,
            setup: None,
            last_health: None,
            current_commit_subject: None,
            reported_generation: None,
        }
    }

    #[test]
    fn preview_names_devices_their_commits_and_the_ref() {
        let all = vec![
            device("<k1>", Some("1111111aaaa")),
            device("k2", Some("1111111aaaa")),
        ];
        let p = preview(&all, Ok(all.clone()), "main");
        assert!(p.contains("2 devices</strong> selected"), "{p}");
        assert!(p.contains("All run <code>1111111</code>"), "{p}");
        assert!(p.contains("<code>main</code> resolves"), "{p}");
        assert!(p.contains("&lt;k1&gt;") && !p.contains("<k1>"), "{p}");
        let p = preview(&all, Ok(vec![]), "");
        assert!(p.contains("No device selected"), "{p}");
        let p = preview(&all, Err("tag <x> must look like key=value".into()), "");
        assert!(p.contains("tag &lt;x&gt;"), "{p}");
        let mut two = all.clone();
        two[1].current_commit = None;
        assert!(preview(&all, Ok(two), "").contains("2 different commits"));
    }

    #[test]
    fn a_held_phase_shows_its_escaped_reason_and_a_promote_button() {
        let mut d = dep(vec![
            target("a", TargetState::Succeeded, None),
            target("b", TargetState::Pending, None),
        ]);
        d.phasing = Some(PhasingView {
            current: 1,
            count: 2,
            ends: vec![1, 2],
            state: PhaseGateState::Held,
            soak_until: None,
            held_reason: Some("phase 1: a crashed <script>".into()),
            promotions: Vec::new(),
        });
        let html = deployment_detail(&d);
        assert!(html.contains("data-gate=\"held\""), "{html}");
        assert!(html.contains("held: phase 1: a crashed &lt;script&gt;"));
        assert!(html.contains("phase 1 of 2 (devices 1–1; promoted by hand)"));
        assert!(html.contains("id=\"promote\""));
        assert!(html.contains("Promote to phase 2"));
    }

    #[test]
    fn the_last_phase_has_no_promote_button_and_lists_the_promotions() {
        let mut d = dep(vec![target("a", TargetState::Succeeded, None)]);
        d.strategy.soak_secs = Some(60);
        d.phasing = Some(PhasingView {
            current: 2,
            count: 2,
            ends: vec![1, 2],
            state: PhaseGateState::Running,
            soak_until: None,
            held_reason: None,
            promotions: vec![hammer_protocol::api::PromotionView {
                phase: 1,
                at: 1_000,
                by: Some("<bob>".into()),
            }],
        });
        let html = deployment_detail(&d);
        assert!(!html.contains("id=\"promote\""));
        assert!(html.contains("the last phase"));
        assert!(html.contains("phase 1 promoted"));
        assert!(html.contains("by &lt;bob&gt;"));
        assert!(html.contains("promoted after 60 s healthy"));
    }

    #[test]
    fn the_form_preview_reads_phases_with_the_protocols_parser() {
        assert_eq!(
            phase_preview("1,10%", 20),
            "<p class=\"preview-phases\">Phases: 1, then 2, then 17 devices.</p>"
        );
        assert!(phase_preview("0", 20).contains("at least 1 device"));
        assert!(phase_preview("100%", 20).contains("one phase"));
        assert_eq!(phase_preview("", 20), "");
    }
}
