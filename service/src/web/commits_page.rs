//! `GET /commits`: the kill switch in the dashboard. The commits the signed-in user marked bad
//! (newest first, each with "Mark good"), and a form to mark one bad — with an optional
//! reason and rollback of the devices running it — sent to `POST /api/v1/commits/{sha}/bad`
//! by `assets/app.js`. The same records and rules as `hammer commit bad|good|list-bad`,
//! through [`crate::domain::commits`].

use super::frame::{error_page, page, PageUser};
use super::html::{enc, esc, time_ago};
use crate::domain::commits;
use crate::service::Service;
use axum::extract::{Query, State};
use axum::response::Response;
use hammer_protocol::api::BadCommit;
use hammer_protocol::now_ms;
use serde::Deserialize;
use std::sync::Arc;

/// `?commit=SHA` prefills the form (the deployment page links here with its commit).
#[derive(Debug, Deserialize)]
pub struct CommitQuery {
    #[serde(default)]
    pub commit: Option<String>,
}

/// The marked commits as table rows, newest first; every text escaped.
fn rows(list: &[BadCommit], now: u64) -> String {
    if list.is_empty() {
        return "<tr><td colspan=\"4\" class=\"empty\">No commit is marked bad.</td></tr>".into();
    }
    let mut list: Vec<&BadCommit> = list.iter().collect();
    list.sort_by_key(|c| std::cmp::Reverse(c.marked_at));
    list.iter()
        .map(|c| {
            format!(
                "<tr data-commit=\"{full}\"><td><code title=\"{full}\">{short}</code></td><td>{reason}</td><td>{when}</td><td><button type=\"button\" data-delete=\"/api/v1/commits/{u}/bad\" data-confirm=\"Mark {short} good again? New deployments may name it.\">Mark good</button></td></tr>",
                full = esc(&c.commit),
                short = esc(c.commit.get(..12).unwrap_or(&c.commit)),
                reason = c.reason.as_deref().map_or_else(|| "—".to_owned(), esc),
                when = time_ago(Some(c.marked_at), now),
                u = enc(&c.commit),
            )
        })
        .collect()
}

/// `GET /commits`.
pub async fn bad_commits(
    State(svc): State<Arc<Service>>,
    PageUser(c): PageUser,
    Query(q): Query<CommitQuery>,
) -> Response {
    let list = match commits::bad_commits(&svc, &c) {
        Ok(l) => l.commits,
        Err(e) => return error_page(Some(&c), e),
    };
    let body = format!(
        r#"<h1>Bad commits</h1>
<form id="bad-form" class="card" data-mark-bad>
<p class="help">A commit marked bad stops your running deployments of it, and new deployments naming it are refused until you mark it good again.</p>
<label for="bad-commit">Commit (full id)</label>
<input id="bad-commit" name="commit" required pattern="[0-9a-fA-F]{{40}}|[0-9a-fA-F]{{64}}" autocomplete="off" value="{prefill}" aria-describedby="bad-commit-help">
<p id="bad-commit-help" class="help">The whole commit id, as <code>hammer deployment show</code> prints it.</p>
<label for="bad-reason">Reason (optional)</label>
<input id="bad-reason" name="reason" maxlength="2048">
<label class="check"><input type="checkbox" id="bad-rollback" name="rollback"> Also roll back my devices running it to their previous release</label>
<button type="submit" id="bad-submit" class="danger">Mark bad</button>
</form>
<table class="list" id="bad-commits"><caption>Marked bad</caption><thead><tr><th scope="col">Commit</th><th scope="col">Reason</th><th scope="col">Marked</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>"#,
        prefill = esc(q.commit.as_deref().unwrap_or("")),
        rows = rows(&list, now_ms()),
    );
    page(&c, "Bad commits", None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(commit: &str, reason: Option<&str>, at: u64) -> BadCommit {
        BadCommit {
            commit: commit.into(),
            reason: reason.map(str::to_owned),
            marked_at: at,
        }
    }

    #[test]
    fn marked_commits_list_newest_first_with_escaped_reasons_and_a_mark_good_button() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let html = rows(
            &[bad(&a, Some("<boom>"), 1_000), bad(&b, None, 2_000)],
            3_000,
        );
        let (ia, ib) = (html.find(&a).unwrap(), html.find(&b).unwrap());
        assert!(ib < ia, "newest first: {html}");
        assert!(html.contains("&lt;boom&gt;"), "{html}");
        assert!(!html.contains("<boom>"));
        assert!(html.contains(&format!("data-delete=\"/api/v1/commits/{a}/bad\"")));
    }

    #[test]
    fn no_marked_commit_says_so() {
        assert!(rows(&[], 0).contains("No commit is marked bad."));
    }
}
