//! `GET /audit`: the signed-in user's audit log, newest first, a page at a time (the same
//! records as `GET /api/v1/audit`, through [`crate::domain::audit`]).

use super::frame::{error_page, page, PageUser};
use super::html::{esc, time_ago, word};
use super::pages::page_nav;
use crate::domain::audit;
use crate::service::Service;
use crate::views::PageParams;
use axum::extract::{Query, State};
use axum::response::Response;
use hammer_protocol::api::AuditEntry;
use hammer_protocol::now_ms;
use std::sync::Arc;

/// The log as table rows; every text escaped (device names and details come from users and
/// devices).
fn rows(entries: &[AuditEntry], now: u64) -> String {
    if entries.is_empty() {
        return "<tr><td colspan=\"7\" class=\"empty\">Nothing recorded yet.</td></tr>".into();
    }
    let or_dash = |v: &Option<String>| v.as_deref().map_or_else(|| "—".to_owned(), esc);
    entries
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                time_ago(Some(e.time), now),
                esc(&e.actor),
                word(&e.action),
                or_dash(&e.target),
                or_dash(&e.peer),
                esc(&e.result),
                or_dash(&e.detail),
            )
        })
        .collect()
}

/// `GET /audit`.
pub async fn audit_log(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Query(pg): Query<PageParams>,
) -> Response {
    let (entries, older) = match audit::page(&svc, &c, &pg) {
        Ok(p) => p,
        Err(e) => return error_page(Some(&c), e),
    };
    let body = format!(
        r#"<h1>Audit log</h1>
<section class="card"><p class="help">Your changes (refused ones too, with their status) and your devices' rollbacks and refusals, newest first.</p>
<table class="list" id="audit"><caption class="sr-only">Audit records, newest first</caption><thead><tr><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">From</th><th scope="col">Result</th><th scope="col">Detail</th></tr></thead><tbody>{rows}</tbody></table>{nav}</section>"#,
        rows = rows(&entries, now_ms()),
        nav = page_nav("/audit", pg.cursor.is_some(), older.as_deref()),
    );
    page(&c, "Audit log", None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::AuditAction;

    #[test]
    fn rows_escape_what_users_and_devices_wrote() {
        let html = rows(
            &[AuditEntry {
                time: 1,
                actor: "device <b>".into(),
                action: AuditAction::DeviceRolledBack,
                target: Some("pi&".into()),
                peer: None,
                result: "ok".into(),
                detail: Some("<script>x</script>".into()),
            }],
            2,
        );
        assert!(html.contains("device &lt;b&gt;"), "{html}");
        assert!(html.contains("pi&amp;"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("device rolled back"), "{html}");
        assert!(rows(&[], 0).contains("Nothing recorded yet"));
    }
}
