//! `GET /windows`: the signed-in user's maintenance windows (the same records as `GET
//! /api/v1/windows`, through [`crate::domain::windows`]) with a form to add one and a button
//! to remove each. Both send the JSON API with the session cookie (`app.js`), so they pass the
//! same checks, the Origin check (CSRF) and the audit log like every dashboard action. The
//! device page shows the device's windows with [`device_section`].

use super::frame::{error_page, page, PageUser};
use super::html::{enc, esc, time, time_ago};
use crate::domain::{devices, windows};
use crate::service::Service;
use axum::extract::State;
use axum::response::Response;
use hammer_protocol::api::{AppliesTo, DeviceWindows, MaintenanceWindow};
use hammer_protocol::now_ms;
use std::sync::Arc;

/// What a window applies to, escaped, the device linked.
fn applies_to(a: &AppliesTo) -> String {
    match a {
        AppliesTo::Device(d) => format!("device <a href=\"/devices/{}\">{}</a>", enc(d), esc(d)),
        AppliesTo::Tag(t) => format!("tag <code>{}</code>", esc(t)),
    }
}

/// The windows as table rows, each with its remove button; every text escaped.
fn rows(ws: &[MaintenanceWindow], now: u64) -> String {
    if ws.is_empty() {
        return "<tr><td colspan=\"5\" class=\"empty\">No maintenance windows: deployments launch your devices at any time.</td></tr>".into();
    }
    ws.iter()
        .map(|w| {
            let label = w.name.as_deref().unwrap_or(&w.window);
            format!(
                "<tr><td data-label=\"Window (UTC)\"><code>{win}</code></td><td data-label=\"Applies to\">{to}</td><td data-label=\"Name\">{name}</td><td data-label=\"Added\">{added}</td><td><button type=\"button\" class=\"danger\" data-delete=\"/api/v1/windows/{id}\" data-confirm=\"Remove the maintenance window {conf}?\" aria-label=\"Remove window {conf}\">Remove</button></td></tr>",
                win = esc(&w.window),
                to = applies_to(&w.applies_to),
                name = w.name.as_deref().map_or_else(|| "—".to_owned(), esc),
                added = time_ago(Some(w.created_at), now),
                id = enc(&w.id),
                conf = esc(label),
            )
        })
        .collect()
}

/// The page's body: the list and the form to add one (device names offered from the user's
/// devices).
fn body(ws: &[MaintenanceWindow], device_names: &[String], now: u64) -> String {
    let options: String = device_names
        .iter()
        .map(|n| format!("<option value=\"{}\"></option>", esc(n)))
        .collect();
    format!(
        r#"<h1>Maintenance windows</h1>
<section class="card"><p class="help">A deployment launches a device that has maintenance windows (by its name or one of its tags) only while one of them is open. Outside them the device waits as pending and is launched when one opens; its timeout starts at launch. Times are UTC.</p>
<table class="list" id="windows"><caption class="sr-only">Your maintenance windows, oldest first</caption><thead><tr><th scope="col">Window (UTC)</th><th scope="col">Applies to</th><th scope="col">Name</th><th scope="col">Added</th><th scope="col"><span class="sr-only">Remove</span></th></tr></thead><tbody>{rows}</tbody></table></section>
<form id="window-form" class="card" data-window-form>
<h2>Add a window</h2>
<label for="win-device">Device</label>
<input id="win-device" name="device" list="win-devices" autocomplete="off" aria-describedby="win-device-help">
<datalist id="win-devices">{options}</datalist>
<p id="win-device-help" class="help">One of your devices by name, or leave it empty and give a tag below.</p>
<label for="win-tag">Tag selector</label>
<input id="win-tag" name="tag" placeholder="key=value" aria-describedby="win-tag-help">
<p id="win-tag-help" class="help">Every device with this tag, now and later.</p>
<label for="win-text">Window (UTC)</label>
<input id="win-text" name="window" required placeholder="mon-fri 22:00-04:00" aria-describedby="win-text-help">
<p id="win-text-help" class="help">Days and times in UTC: <code>mon-fri 22:00-04:00</code>, <code>daily 02:00-03:30</code> or <code>sat,sun 00:00-24:00</code>. An end at or before the start is on the next day.</p>
<label for="win-name">Name (optional)</label>
<input id="win-name" name="name">
<button type="submit" id="window-submit">Add window</button>
</form>"#,
        rows = rows(ws, now),
    )
}

/// `GET /windows`.
pub async fn windows_page(State(svc): State<Arc<Service>>, PageUser(c): PageUser) -> Response {
    let ws = match windows::list(&svc, &c) {
        Ok(w) => w,
        Err(e) => return error_page(Some(&c), e),
    };
    let names: Vec<String> = match devices::devices_of(&svc, &c, None) {
        Ok(d) => d.into_iter().map(|d| d.name).collect(),
        Err(e) => return error_page(Some(&c), e),
    };
    page(
        &c,
        "Maintenance windows",
        None,
        &body(&ws, &names, now_ms()),
    )
}

/// The device page's section: whether a deployment may launch the device now, and its
/// windows.
pub fn device_section(d: &DeviceWindows) -> String {
    let status = match (d.windows.is_empty(), d.open, d.opens_at) {
        (true, _, _) => {
            "No maintenance window: deployments launch it at any time.".to_owned()
        }
        (false, true, _) => "<strong>In a maintenance window now</strong>: deployments launch it.".to_owned(),
        (false, false, Some(t)) => format!(
            "<strong>Outside its maintenance windows</strong>: a deployment keeps it pending until the next one opens, {}.",
            time(Some(t))
        ),
        (false, false, None) => "<strong>Outside its maintenance windows.</strong>".to_owned(),
    };
    let list: String = d
        .windows
        .iter()
        .map(|w| {
            format!(
                "<li><code>{}</code> (UTC), by {}</li>",
                esc(&w.window),
                match &w.applies_to {
                    AppliesTo::Device(_) => "name".to_owned(),
                    AppliesTo::Tag(t) => format!("tag <code>{}</code>", esc(t)),
                }
            )
        })
        .collect();
    let list = if list.is_empty() {
        String::new()
    } else {
        format!("<ul id=\"device-windows\">{list}</ul>")
    };
    format!(
        "<section class=\"card\"><h2>Maintenance window</h2><p id=\"window-status\">{status}</p>{list}<p class=\"help\"><a href=\"/windows\">Manage maintenance windows</a></p></section>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(name: Option<&str>, to: AppliesTo) -> MaintenanceWindow {
        MaintenanceWindow {
            id: "w1".into(),
            name: name.map(str::to_owned),
            applies_to: to,
            window: "mon-fri 22:00-04:00".into(),
            created_at: 1,
        }
    }

    #[test]
    fn rows_escape_what_users_wrote_and_each_has_its_remove_button() {
        let html = rows(
            &[
                win(Some("<b>night</b>"), AppliesTo::Device("pi&1".into())),
                win(None, AppliesTo::Tag("site=<lab>".into())),
            ],
            2,
        );
        assert!(html.contains("&lt;b&gt;night&lt;/b&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(
            html.contains("href=\"/devices/pi%261\">pi&amp;1</a>"),
            "{html}"
        );
        assert!(html.contains("tag <code>site=&lt;lab&gt;</code>"), "{html}");
        assert_eq!(
            html.matches("data-delete=\"/api/v1/windows/w1\"").count(),
            2
        );
        assert!(rows(&[], 0).contains("No maintenance windows"));
    }

    #[test]
    fn the_form_offers_the_users_devices_and_names_a_valid_example() {
        let html = body(&[], &["pi\"x".into()], 0);
        assert!(html.contains("<option value=\"pi&quot;x\">"), "{html}");
        assert!(
            html.contains("placeholder=\"mon-fri 22:00-04:00\""),
            "{html}"
        );
        assert!(html.contains("data-window-form"), "{html}");
        assert!(html.contains("<label for=\"win-text\">"), "{html}");
    }

    #[test]
    fn the_device_section_says_whether_the_device_is_in_its_window_now() {
        let w = win(None, AppliesTo::Tag("site=lab".into()));
        let closed = DeviceWindows {
            device: "pi".into(),
            windows: vec![w.clone()],
            open: false,
            opens_at: Some(0),
        };
        let html = device_section(&closed);
        assert!(html.contains("Outside its maintenance windows"), "{html}");
        assert!(html.contains("1970-01-01 00:00:00 UTC"), "{html}");
        assert!(html.contains("by tag <code>site=lab</code>"), "{html}");
        let open = DeviceWindows {
            open: true,
            opens_at: None,
            ..closed.clone()
        };
        assert!(device_section(&open).contains("In a maintenance window now"));
        let none = DeviceWindows {
            windows: vec![],
            open: true,
            opens_at: None,
            ..closed
        };
        let html = device_section(&none);
        assert!(
            html.contains("at any time") && !html.contains("<ul"),
            "{html}"
        );
    }
}
