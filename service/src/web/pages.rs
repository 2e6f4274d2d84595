//! Devices and device pages. Data comes from the domain functions the API handlers call too
//! ([`crate::domain::devices`], [`crate::domain::activity`]), with the page's caller: the same
//! ownership rules, no extractors built here.

use super::frame::{error_page, fragment, no_store, page, PageUser, PartQuery};
use super::html::{duration, enc, esc, short, time_ago, word};
use crate::domain::{activity, devices};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use hammer_protocol::api::{DeviceView, HealthView, HistoryEntry};
use hammer_protocol::{now_ms, Phase, RunState};
use serde::Deserialize;
use std::sync::Arc;

use crate::service::Service;
use crate::views::PageParams;

#[derive(Deserialize)]
pub struct TagQuery {
    tag: Option<String>,
    /// Search: devices whose name contains this (any case).
    q: Option<String>,
    /// `name` (default), `state` or `last_seen`.
    sort: Option<String>,
}

/// The app state a person reads: the latest phase, except that an app started again
/// (`restarted`) is simply `running`; a dash before any report.
pub fn app_state(d: &DeviceView) -> String {
    match d.app_phase {
        Some(Phase::Restarted) => "running".into(),
        Some(p) => word(&p),
        None => "—".into(),
    }
}

/// How the devices list is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By name, A to Z.
    Name,
    /// By app state, then name.
    State,
    /// Most recently seen first; never seen last.
    LastSeen,
}

impl Sort {
    pub fn parse(s: Option<&str>) -> Sort {
        match s {
            Some("state") => Sort::State,
            Some("last_seen") => Sort::LastSeen,
            _ => Sort::Name,
        }
    }
    fn key(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::State => "state",
            Sort::LastSeen => "last_seen",
        }
    }
}

/// The devices whose name contains `q` (ignoring case; all when `q` is blank), sorted.
pub fn search_and_sort(mut list: Vec<DeviceView>, q: &str, sort: Sort) -> Vec<DeviceView> {
    let q = q.trim().to_lowercase();
    if !q.is_empty() {
        list.retain(|d| d.name.to_lowercase().contains(&q));
    }
    match sort {
        Sort::Name => list.sort_by(|a, b| a.name.cmp(&b.name)),
        Sort::State => list.sort_by(|a, b| (app_state(a), &a.name).cmp(&(app_state(b), &b.name))),
        Sort::LastSeen => list.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then_with(|| a.name.cmp(&b.name))
        }),
    }
    list
}

/// Counts over a fleet: by connection, by app state, by commit (most common first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overview {
    pub total: usize,
    pub online: usize,
    pub offline: usize,
    /// (app state as [`app_state`] words it, count), most common first, then by name.
    pub states: Vec<(String, usize)>,
    /// (short commit or `—`, count), most common first, then by commit.
    pub commits: Vec<(String, usize)>,
}

/// The fleet overview of `list` (pure).
pub fn fleet_overview(list: &[DeviceView]) -> Overview {
    fn ranked(m: std::collections::BTreeMap<String, usize>) -> Vec<(String, usize)> {
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
    let mut states = std::collections::BTreeMap::new();
    let mut commits = std::collections::BTreeMap::new();
    let online = list.iter().filter(|d| d.online).count();
    for d in list {
        *states.entry(app_state(d)).or_insert(0) += 1;
        let c = match &d.current_commit {
            Some(c) => c.chars().take(7).collect(),
            None => "—".to_owned(),
        };
        *commits.entry(c).or_insert(0) += 1;
    }
    Overview {
        total: list.len(),
        online,
        offline: list.len() - online,
        states: ranked(states),
        commits: ranked(commits),
    }
}

fn overview_html(o: &Overview) -> String {
    let dl = |id: &str, title: &str, rows: &[(String, usize)], code: bool| {
        let items: String = rows
            .iter()
            .map(|(k, n)| {
                let k = if code && k != "—" {
                    format!("<code>{}</code>", esc(k))
                } else {
                    esc(k)
                };
                format!("<div><dt>{k}</dt><dd data-count>{n}</dd></div>")
            })
            .collect();
        format!(
            "<section class=\"stat\" aria-labelledby=\"{id}\"><h3 id=\"{id}\">{title}</h3><dl id=\"{id}-list\" class=\"counts\">{}</dl></section>",
            if items.is_empty() { "<div><dt>none</dt><dd>0</dd></div>".into() } else { items }
        )
    };
    let conn = vec![
        ("online".to_owned(), o.online),
        ("offline".to_owned(), o.offline),
    ];
    format!(
        "<p class=\"help\">{} device{} in all.</p><div class=\"stats\">{}{}{}</div>",
        o.total,
        if o.total == 1 { "" } else { "s" },
        dl("ov-connection", "Connection", &conn, false),
        dl("ov-state", "App state", &o.states, false),
        dl("ov-commit", "Commit", &o.commits, true),
    )
}

fn device_row(d: &DeviceView, now: u64) -> String {
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
<td data-label="Status"><span class="badge {online}">{online}</span>{behind}</td>
<td data-label="App" class="phase">{phase}</td>
<td data-label="Commit" class="commit"><code>{commit}</code>{subject}</td>
<td data-label="Last seen">{seen}</td></tr>"#,
        n = esc(&d.name),
        u = enc(&d.name),
        phase = app_state(d),
        commit = short(d.current_commit.as_deref()),
        subject = subject_html(d.current_commit_subject.as_deref()),
        seen = time_ago(d.last_seen, now),
        behind = behind_html(d),
    )
}

/// A mark on a device that has not reported on its latest desired state.
fn behind_html(d: &DeviceView) -> String {
    match d.reported_generation {
        Some(r) if d.is_behind() => format!(
            " <span class=\"badge behind\" title=\"desired generation {}; the device last reported on generation {r}\">behind</span>",
            d.generation
        ),
        _ => String::new(),
    }
}

/// A commit's subject after its short id, where the device reported it.
fn subject_html(subject: Option<&str>) -> String {
    match subject {
        Some(s) => format!(" <span class=\"subject\">{}</span>", esc(s)),
        None => String::new(),
    }
}

fn device_rows(list: &[DeviceView], searched: bool, now: u64) -> String {
    if list.is_empty() {
        if searched {
            return "<tr><td colspan=\"6\">No device matches.</td></tr>".into();
        }
        return "<tr><td colspan=\"6\">No devices. Register one with <code>hammer device add NAME</code>.</td></tr>".into();
    }
    list.iter().map(|d| device_row(d, now)).collect()
}

/// `/devices` with these filters (each left out when empty) and `extra` query pairs.
fn devices_url(tag: &str, q: &str, sort: Sort, extra: &str) -> String {
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(extra.to_owned());
    }
    if !tag.is_empty() {
        parts.push(format!("tag={}", enc(tag)));
    }
    if !q.is_empty() {
        parts.push(format!("q={}", enc(q)));
    }
    if sort != Sort::Name {
        parts.push(format!("sort={}", sort.key()));
    }
    if parts.is_empty() {
        "/devices".into()
    } else {
        format!("/devices?{}", parts.join("&"))
    }
}

/// `GET /devices?tag=key=value&q=NAME&sort=name|state|last_seen`: the caller's devices
/// (live), under an overview of the whole fleet.
pub async fn devices(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Query(part): Query<PartQuery>,
    Query(t): Query<TagQuery>,
) -> Response {
    if t.tag.as_deref().is_some_and(|t| t.trim().is_empty()) {
        let q = t.q.as_deref().unwrap_or("").trim();
        let to = devices_url("", q, Sort::parse(t.sort.as_deref()), "");
        return no_store(Redirect::to(&to).into_response());
    }
    let list = match devices::devices_of(&svc, &c, t.tag.as_deref()) {
        Ok(l) => l,
        Err(e) => return error_page(Some(&c), e),
    };
    let now = now_ms();
    let tag = t.tag.unwrap_or_default();
    let q = t.q.unwrap_or_default().trim().to_owned();
    let sort = Sort::parse(t.sort.as_deref());
    // The overview is of the whole fleet, whatever the filters.
    let overview = || -> Result<String, crate::error::ServiceError> {
        let all = if tag.is_empty() {
            fleet_overview(&list)
        } else {
            fleet_overview(&devices::devices_of(&svc, &c, None)?)
        };
        Ok(overview_html(&all))
    };
    if part.part.as_deref() == Some("overview") {
        return match overview() {
            Ok(o) => fragment(o),
            Err(e) => error_page(Some(&c), e),
        };
    }
    let shown = search_and_sort(list.clone(), &q, sort);
    let rows = device_rows(&shown, !q.is_empty(), now);
    if part.part.is_some() {
        return fragment(rows);
    }
    let overview = match overview() {
        Ok(o) => o,
        Err(e) => return error_page(Some(&c), e),
    };
    let live = devices_url(&tag, &q, sort, "part=rows");
    let clear = if tag.is_empty() && q.is_empty() {
        String::new()
    } else {
        " <a href=\"/devices\">Clear filter</a>".into()
    };
    let hidden = |name: &str, v: &str| {
        if v.is_empty() {
            String::new()
        } else {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                esc(v)
            )
        }
    };
    let sort_hidden = if sort == Sort::Name { "" } else { sort.key() };
    let th = |label: &str, by: Sort| {
        let aria = if by == sort {
            if by == Sort::LastSeen {
                " aria-sort=\"descending\""
            } else {
                " aria-sort=\"ascending\""
            }
        } else {
            ""
        };
        format!(
            "<th scope=\"col\"{aria}><a href=\"{}\" id=\"sort-{}\">{label}</a></th>",
            esc(&devices_url(&tag, &q, by, "")),
            by.key()
        )
    };
    let body = format!(
        r#"<h1>Devices</h1>
<section class="card" aria-labelledby="overview-h"><h2 id="overview-h">Fleet overview</h2>
<div id="overview" data-live="/devices?part=overview">{overview}</div></section>
<div class="filters">
<form method="get" action="/devices" class="filter" role="search" aria-label="Devices by name">
<label for="q">Search by name</label>
<input id="q" name="q" type="search" value="{qv}">{tag_hidden}{sort_h1}
<button type="submit">Search</button></form>
<form method="get" action="/devices" class="filter" aria-label="Devices by tag">
<label for="tag">Filter by tag</label>
<input id="tag" name="tag" placeholder="key=value" value="{tagv}">{q_hidden}{sort_h2}
<button type="submit">Filter</button>{clear}</form></div>
<table id="devices" class="list sortable"><caption class="sr-only">Your devices</caption>
<thead><tr>{th_name}<th scope="col" class="nosort">Tags</th><th scope="col" class="nosort">Status</th>{th_state}<th scope="col" class="nosort">Commit</th>{th_seen}</tr></thead>
<tbody data-live="{live}">{rows}</tbody></table>"#,
        tagv = esc(&tag),
        qv = esc(&q),
        tag_hidden = hidden("tag", &tag),
        q_hidden = hidden("q", &q),
        sort_h1 = hidden("sort", sort_hidden),
        sort_h2 = hidden("sort", sort_hidden),
        th_name = th("Name", Sort::Name),
        th_state = th("App", Sort::State),
        th_seen = th("Last seen", Sort::LastSeen),
        live = esc(&live),
    );
    page(&c, "Devices", Some("/api/v1/events"), &body)
}

fn health_html(h: Option<&HealthView>, now: u64) -> String {
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
        time_ago(Some(h.time), now),
    )
}

fn device_state(d: &DeviceView, now: u64) -> String {
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
<dt>Commit</dt><dd><code id="device-commit" title="{full}">{commit}</code>{subject}</dd>
<dt>Deployment</dt><dd>{dep}</dd>
<dt>Last seen</dt><dd>{seen}</dd>
<dt>Tags</dt><dd>{tags}</dd>
<dt>Source</dt><dd>{setup}</dd></dl></section>
<section class="card"><h2>Health</h2>{health}</section></div>"#,
        state = word(&d.state),
        phase = app_state(d),
        run = word(&d.run_state),
        full = esc(d.current_commit.as_deref().unwrap_or("")),
        commit = short(d.current_commit.as_deref()),
        subject = subject_html(d.current_commit_subject.as_deref()),
        seen = time_ago(d.last_seen, now),
        tags = if tags.is_empty() {
            "—".into()
        } else {
            tags.join(", ")
        },
        health = health_html(d.last_health.as_ref(), now),
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

/// Whether the app runs (as far as the device said) and whether it is stopped: Start is
/// disabled while it runs, Stop while it is stopped.
fn runs_and_stopped(d: &DeviceView) -> (bool, bool) {
    let stopped = d.run_state == RunState::Stopped || d.app_phase == Some(Phase::Stopped);
    let runs = !stopped
        && matches!(
            d.app_phase,
            Some(Phase::Running | Phase::Restarted | Phase::Verifying | Phase::Starting)
        );
    (runs, stopped)
}

/// The action buttons (a live region: which are enabled follows the device's state).
fn actions_html(d: &DeviceView) -> String {
    let u = enc(&d.name);
    let (runs, stopped) = runs_and_stopped(d);
    let action = |a: &str, label: &str, class: &str, off: bool, q: &str| {
        format!(
            "<button type=\"button\" class=\"{class}\" data-action=\"/api/v1/devices/{u}/{a}\" data-confirm=\"{}\" id=\"action-{a}\"{}>{label}</button>",
            esc(q),
            if off { " disabled" } else { "" }
        )
    };
    [
        action(
            "restart",
            "Restart",
            "neutral",
            false,
            &format!("Restart the app on {}?", d.name),
        ),
        action(
            "stop",
            "Stop",
            "warning",
            stopped,
            &format!("Stop the app on {}?", d.name),
        ),
        action(
            "start",
            "Start",
            "primary",
            runs,
            &format!("Start the app on {}?", d.name),
        ),
        action(
            "rollback",
            "Roll back",
            "warning",
            false,
            &format!("Roll {} back to its previous release?", d.name),
        ),
    ]
    .concat()
}

/// One release or deployment attempt in a device's history: the consecutive entries (oldest
/// first) of one generation and deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt<'a> {
    pub entries: &'a [HistoryEntry],
}

impl Attempt<'_> {
    fn first(&self) -> &HistoryEntry {
        &self.entries[0]
    }
    fn last(&self) -> &HistoryEntry {
        &self.entries[self.entries.len() - 1]
    }
    /// The commit the attempt is about: the last one named.
    pub fn commit(&self) -> Option<&str> {
        self.entries.iter().rev().find_map(|e| e.commit.as_deref())
    }
    /// The commit's subject, where the device reported it (with `fetched`).
    pub fn subject(&self) -> Option<&str> {
        let commit = self.commit()?;
        self.entries
            .iter()
            .rev()
            .filter(|e| e.commit.as_deref() == Some(commit))
            .find_map(|e| e.commit_subject.as_deref())
    }
    /// How long the attempt took: from its first phase to the one that ended it (running,
    /// failed, rolled back, refused), or to its latest phase while none did.
    pub fn took_ms(&self) -> u64 {
        let end = self
            .entries
            .iter()
            .find(|e| e.phase.ends_deployment())
            .unwrap_or(self.last());
        end.time.saturating_sub(self.first().time)
    }
    /// Whether a phase ended it (the duration is final).
    pub fn ended(&self) -> bool {
        self.entries.iter().any(|e| e.phase.ends_deployment())
    }
}

/// A history page (oldest first) grouped per release: consecutive entries of the same
/// generation and deployment make one attempt. Pure; an attempt cut by the page boundary shows
/// its part on each page.
pub fn attempts(h: &[HistoryEntry]) -> Vec<Attempt<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=h.len() {
        let cut = i == h.len()
            || (h[i].generation, &h[i].deployment_id)
                != (h[start].generation, &h[start].deployment_id);
        if cut {
            out.push(Attempt {
                entries: &h[start..i],
            });
            start = i;
        }
    }
    out
}

/// A phase as a person reads it (an app started again is simply running).
fn phase_word(p: Phase) -> String {
    match p {
        Phase::Restarted => "running".into(),
        p => word(&p),
    }
}

fn phase_class(p: Phase) -> &'static str {
    match p {
        Phase::Running | Phase::Restarted => "ok",
        Phase::Failed | Phase::RolledBack | Phase::Refused | Phase::Crashed => "bad",
        _ => "",
    }
}

fn attempt_html(a: &Attempt, now: u64) -> String {
    let first = a.first();
    let last = a.last();
    let what = match (first.generation, &first.deployment_id) {
        (_, Some(id)) => format!(
            "deployment <code>{}</code>",
            esc(&id.chars().take(8).collect::<String>())
        ),
        (Some(g), None) => format!("generation {g}"),
        (None, None) => "device".into(),
    };
    let gen = match (first.generation, &first.deployment_id) {
        (Some(g), Some(_)) => format!(" <span class=\"muted\">gen {g}</span>"),
        _ => String::new(),
    };
    let by = a
        .entries
        .iter()
        .find_map(|e| e.deployer.as_deref())
        .map(|d| format!(" <span class=\"muted\">by {}</span>", esc(d)))
        .unwrap_or_default();
    let took = if a.entries.len() > 1 {
        format!(
            " <span class=\"muted\">{} {}</span>",
            if a.ended() { "took" } else { "so far" },
            duration(a.took_ms())
        )
    } else {
        String::new()
    };
    let dep = match &first.deployment_id {
        Some(id) => format!(
            "<p>Deployment <a href=\"/deployments/{}\"><code>{}</code></a></p>",
            enc(id),
            esc(id)
        ),
        None => String::new(),
    };
    let detail = a.entries.iter().any(|e| e.detail.is_some());
    let phases: String = a
        .entries
        .iter()
        .rev()
        .map(|e| {
            format!(
                "<tr><td data-label=\"Time\">{}</td><td data-label=\"Phase\" class=\"phase\">{}</td><td data-label=\"Commit\"><code>{}</code></td>{}</tr>",
                time_ago(Some(e.time), now),
                word(&e.phase),
                short(e.commit.as_deref()),
                if detail {
                    format!(
                        "<td data-label=\"Detail\">{}</td>",
                        esc(e.detail.as_deref().unwrap_or(""))
                    )
                } else {
                    String::new()
                },
            )
        })
        .collect();
    // The log lines a device sent with a failure (the newest such phase).
    let tail = a
        .entries
        .iter()
        .rev()
        .find(|e| !e.log_tail.is_empty())
        .map(|e| {
            format!(
                "<figure class=\"tail\"><figcaption>Last log lines when it was {}</figcaption><pre class=\"logs\" tabindex=\"0\">{}</pre></figure>",
                word(&e.phase),
                e.log_tail.iter().map(|l| esc(l) + "\n").collect::<String>()
            )
        })
        .unwrap_or_default();
    format!(
        r#"<li><details id="attempt-{key}" data-keep-open><summary><span class="what">{what}</span>{gen} <code>{commit}</code>{subject} <span class="badge phase-{cls}">{phase}</span> {when}{took}{by}</summary>
{dep}<table class="list phases"><caption class="sr-only">Phases, newest first</caption><thead><tr><th scope="col">Time</th><th scope="col">Phase</th><th scope="col">Commit</th>{dh}</tr></thead><tbody>{phases}</tbody></table>{tail}</details></li>"#,
        key = esc(&format!(
            "{}-{}-{}",
            first.generation.unwrap_or(0),
            first.deployment_id.as_deref().map(enc).unwrap_or_default(),
            first.time
        )),
        commit = short(a.commit()),
        subject = subject_html(a.subject()),
        cls = phase_class(last.phase),
        phase = phase_word(last.phase),
        when = time_ago(Some(first.time), now),
        dh = if detail {
            "<th scope=\"col\">Detail</th>"
        } else {
            ""
        },
    )
}

/// The history as one line per release, newest first, each opening into its phases.
fn history_html(h: &[HistoryEntry], now: u64) -> String {
    if h.is_empty() {
        return "<li class=\"empty\">Nothing yet.</li>".into();
    }
    attempts(h)
        .iter()
        .rev()
        .map(|a| attempt_html(a, now))
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
    let now = now_ms();
    match part.part.as_deref() {
        Some("state") => return fragment(device_state(&d, now)),
        Some("actions") => return fragment(actions_html(&d)),
        Some("history") | None => {}
        Some(_) => return fragment(String::new()),
    }
    let (hist, older) = match activity::history_page(&svc, &c, &name, &pg) {
        Ok(h) => h,
        Err(e) => return error_page(Some(&c), e),
    };
    if part.part.is_some() {
        return fragment(history_html(&hist, now));
    }
    // Asking for the logs turns the device's log streaming on for a while.
    let logs = match activity::watch_logs(&svc, &c, &name).await {
        Ok(l) => l.lines,
        Err(e) => vec![format!("(logs unavailable: {})", e.message)],
    };
    let n = esc(&d.name);
    let u = enc(&d.name);
    let body = format!(
        r#"<h1>Device <span id="device-name">{n}</span></h1>
<div data-live="/devices/{u}?part=state">{state}</div>
{windows}
<section class="card"><h2>Actions</h2><div class="actions" data-live="/devices/{u}?part=actions">{actions}</div></section>
<section class="card"><h2>History</h2>
<p class="help">One line per release; open one to see its phases.</p>
<ol id="history" class="attempts"{live}>{hist}</ol>{nav}</section>
<section class="card"><h2>Logs</h2>
<pre id="logs" class="logs" role="log" data-device="{n}" data-logs="/api/v1/devices/{u}/logs" tabindex="0" aria-label="Recent and live log lines">{logs}</pre></section>"#,
        state = device_state(&d, now),
        windows = match crate::domain::windows::of_device(&svc, &c, &name, now) {
            Ok(w) => super::windows_page::device_section(&w),
            Err(e) => format!(
                "<p class=\"help\">(maintenance windows unavailable: {})</p>",
                esc(&e.message)
            ),
        },
        actions = actions_html(&d),
        hist = history_html(&hist, now),
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

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::DeviceState;

    fn dev(
        name: &str,
        online: bool,
        phase: Option<Phase>,
        commit: Option<&str>,
        seen: Option<u64>,
    ) -> DeviceView {
        DeviceView {
            id: format!("id-{name}"),
            name: name.into(),
            tags: Default::default(),
            state: DeviceState::Enrolled,
            online,
            last_seen: seen,
            current_commit: commit.map(str::to_owned),
            app_phase: phase,
            run_state: RunState::Running,
            generation: 1,
            current_deployment: None,
            setup: None,
            last_health: None,
            current_commit_subject: None,
            reported_generation: None,
        }
    }

    fn fleet() -> Vec<DeviceView> {
        vec![
            dev(
                "kiosk-2",
                true,
                Some(Phase::Running),
                Some("1111111aaaa"),
                Some(3_000),
            ),
            dev(
                "Kiosk-1",
                false,
                Some(Phase::Restarted),
                Some("1111111bbbb"),
                Some(5_000),
            ),
            dev("pump", true, Some(Phase::Failed), Some("2222222cccc"), None),
            dev("new", false, None, None, Some(1_000)),
        ]
    }

    fn entry(t: u64, gen: Option<u64>, dep: Option<&str>, phase: Phase) -> HistoryEntry {
        HistoryEntry {
            time: t,
            deployment_id: dep.map(str::to_owned),
            deployer: dep.map(|_| "alice".to_owned()),
            generation: gen,
            phase,
            commit: (phase != Phase::Received).then(|| "abcdef0123".to_owned()),
            detail: None,
            log_tail: vec![],
            commit_subject: None,
        }
    }

    #[test]
    fn history_groups_one_line_per_release() {
        let h = vec![
            entry(1_000, None, None, Phase::Configured),
            entry(2_000, Some(1), Some("dep1"), Phase::Received),
            entry(3_000, Some(1), Some("dep1"), Phase::Fetched),
            entry(9_000, Some(1), Some("dep1"), Phase::Running),
            entry(99_000, Some(1), Some("dep1"), Phase::Crashed),
            entry(100_000, Some(2), None, Phase::Stopped),
        ];
        let a = attempts(&h);
        assert_eq!(
            a.iter().map(|a| a.entries.len()).collect::<Vec<_>>(),
            [1, 4, 1]
        );
        assert_eq!(a[1].took_ms(), 7_000, "to the phase that ended it");
        assert!(a[1].ended());
        assert_eq!(a[1].commit(), Some("abcdef0123"));
        assert!(attempts(&[]).is_empty());
        let html = history_html(&h, 200_000);
        assert_eq!(html.matches("<details").count(), 3, "{html}");
        assert!(
            html.find("generation 2") < html.find("dep1"),
            "newest first: {html}"
        );
        assert!(
            html.contains("took 7 s") && html.contains("by alice"),
            "{html}"
        );
        assert!(html.contains("phase-bad\">crashed"), "{html}");
        let mut evil = h.clone();
        evil[1].detail = Some("<script>".into());
        evil[3].log_tail = vec!["<b>boom</b>".into()];
        let html = history_html(&evil, 200_000);
        assert!(
            html.contains("&lt;script&gt;") && !html.contains("<script>"),
            "{html}"
        );
        assert!(
            html.contains("when it was running</figcaption><pre class=\"logs\" tabindex=\"0\">&lt;b&gt;boom&lt;/b&gt;\n</pre>"),
            "{html}"
        );
    }

    #[test]
    fn commit_subjects_show_escaped_beside_the_commit_in_the_list_the_device_and_its_history() {
        let mut d = dev("pump", true, Some(Phase::Running), Some("abcdef0123"), None);
        d.current_commit_subject = Some("<b>Fix</b> the pump".into());
        let escaped = "&lt;b&gt;Fix&lt;/b&gt; the pump";
        assert!(device_row(&d, 0).contains(escaped));
        assert!(device_state(&d, 0).contains(escaped));
        assert!(!device_row(&d, 0).contains("<b>"));
        let mut fetched = entry(3_000, Some(1), Some("dep1"), Phase::Fetched);
        fetched.commit_subject = Some("<b>Fix</b> the pump".into());
        let h = vec![
            entry(2_000, Some(1), Some("dep1"), Phase::Received),
            fetched,
            entry(9_000, Some(1), Some("dep1"), Phase::Running),
        ];
        let a = attempts(&h);
        assert_eq!(a[0].subject(), Some("<b>Fix</b> the pump"));
        assert!(history_html(&h, 10_000).contains(escaped));
        // No subject reported (an older manager): the commit alone.
        let plain = dev(
            "kiosk",
            true,
            Some(Phase::Running),
            Some("abcdef0123"),
            None,
        );
        assert!(!device_row(&plain, 0).contains("class=\"subject\""));
    }

    #[test]
    fn a_device_that_has_not_reported_on_its_latest_generation_is_marked_behind() {
        let mut d = dev(
            "pump",
            false,
            Some(Phase::Running),
            Some("abcdef0123"),
            None,
        );
        d.generation = 3;
        assert!(
            !device_row(&d, 0).contains("behind"),
            "unknown is not behind"
        );
        d.reported_generation = Some(3);
        assert!(!device_row(&d, 0).contains("behind"));
        d.reported_generation = Some(2);
        let row = device_row(&d, 0);
        assert!(
            row.contains(
                "desired generation 3; the device last reported on generation 2\">behind</span>"
            ),
            "{row}"
        );
    }

    #[test]
    fn a_restarted_app_reads_running() {
        assert_eq!(app_state(&fleet()[1]), "running");
        assert_eq!(app_state(&fleet()[2]), "failed");
        assert_eq!(app_state(&fleet()[3]), "—");
    }

    #[test]
    fn overview_counts_connection_state_and_commit() {
        let o = fleet_overview(&fleet());
        assert_eq!((o.total, o.online, o.offline), (4, 2, 2));
        assert_eq!(
            o.states,
            vec![
                ("running".to_owned(), 2),
                ("failed".to_owned(), 1),
                ("—".to_owned(), 1)
            ]
        );
        assert_eq!(
            o.commits,
            vec![
                ("1111111".to_owned(), 2),
                ("2222222".to_owned(), 1),
                ("—".to_owned(), 1)
            ]
        );
        assert_eq!(fleet_overview(&[]), Overview::default());
        let html = overview_html(&o);
        assert!(
            html.contains("<dt><code>1111111</code></dt><dd data-count>2</dd>"),
            "{html}"
        );
        assert!(
            html.contains("<h3 id=\"ov-state\">App state</h3>"),
            "{html}"
        );
    }

    #[test]
    fn search_ignores_case_and_sorts_by_column() {
        let names = |l: Vec<DeviceView>| l.into_iter().map(|d| d.name).collect::<Vec<_>>();
        assert_eq!(
            names(search_and_sort(fleet(), " KIOSK ", Sort::Name)),
            ["Kiosk-1", "kiosk-2"]
        );
        assert_eq!(
            names(search_and_sort(fleet(), "", Sort::LastSeen)),
            ["Kiosk-1", "kiosk-2", "new", "pump"]
        );
        assert_eq!(
            names(search_and_sort(fleet(), "", Sort::State)),
            ["pump", "Kiosk-1", "kiosk-2", "new"]
        );
        assert_eq!(Sort::parse(Some("last_seen")), Sort::LastSeen);
        assert_eq!(Sort::parse(Some("bogus")), Sort::Name);
        assert_eq!(
            devices_url("a=b", "k 1", Sort::State, "part=rows"),
            "/devices?part=rows&tag=a%3Db&q=k%201&sort=state"
        );
        assert_eq!(devices_url("", "", Sort::Name, ""), "/devices");
    }

    #[test]
    fn start_is_off_while_the_app_runs_and_stop_while_it_is_stopped() {
        let mut d = fleet()[0].clone();
        let html = actions_html(&d);
        assert!(
            html.contains("id=\"action-start\" disabled")
                && !html.contains("id=\"action-stop\" disabled"),
            "{html}"
        );
        d.run_state = RunState::Stopped;
        d.app_phase = Some(Phase::Stopped);
        let html = actions_html(&d);
        assert!(
            !html.contains("id=\"action-start\" disabled")
                && html.contains("id=\"action-stop\" disabled"),
            "{html}"
        );
        assert!(
            html.contains("class=\"warning\" data-action=\"/api/v1/devices/kiosk-2/rollback\""),
            "{html}"
        );
    }
}
