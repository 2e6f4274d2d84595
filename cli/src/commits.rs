//! `hammer commit bad|good|list-bad`: the kill switch.

use crate::config::Conn;
use crate::output::{self, fmt_time, safe};
use anyhow::{anyhow, Result};
use hammer_client::Client;
use hammer_protocol::api::MarkBad;

/// The commit id as given, checked by the protocol's one rule before any request.
fn check_commit(sha: &str) -> Result<String> {
    hammer_protocol::full_commit_id(sha)
        .map_err(|e| anyhow!("{e} (give the full commit id, e.g. from `git rev-parse HEAD`)"))
}

/// `hammer commit bad SHA [--reason R] [--rollback]`.
pub async fn bad(
    conn: &Conn,
    sha: &str,
    reason: Option<String>,
    rollback: bool,
    json: bool,
) -> Result<()> {
    let sha = check_commit(sha)?;
    let client = Client::new(conn)?;
    let answer = client
        .mark_commit_bad(&sha, &MarkBad { reason, rollback })
        .await?;
    if json {
        output::print_json(&answer.raw);
        return Ok(());
    }
    let m = answer.body;
    println!("commit {} marked bad", m.commit.commit);
    if m.stopped.is_empty() {
        println!("no running deployment was pinned to it");
    }
    for id in &m.stopped {
        println!("stopped deployment {}", safe(id));
    }
    for a in &m.rolled_back {
        let g = a
            .generation
            .map(|g| format!(" (generation {g})"))
            .unwrap_or_default();
        println!("rollback sent to {}{g}", safe(&a.device));
    }
    for n in &m.not_rolled_back {
        println!("NOT rolled back: {}: {}", safe(&n.device), safe(&n.reason));
    }
    Ok(())
}

/// `hammer commit good SHA`.
pub async fn good(conn: &Conn, sha: &str, json: bool) -> Result<()> {
    let sha = check_commit(sha)?;
    let client = Client::new(conn)?;
    client.unmark_commit_bad(&sha).await?;
    if json {
        output::print_json(&serde_json::json!({ "commit": sha, "bad": false }));
    } else {
        println!("commit {sha} is no longer marked bad");
    }
    Ok(())
}

/// `hammer commit list-bad`.
pub async fn list_bad(conn: &Conn, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    let answer = client.bad_commits().await?;
    if json {
        output::print_json(&answer.raw);
        return Ok(());
    }
    if answer.body.commits.is_empty() {
        println!("no commit is marked bad");
    }
    for b in &answer.body.commits {
        let reason = b.reason.as_deref().map(safe).unwrap_or_default();
        println!("{}  {}  {reason}", b.commit, fmt_time(b.marked_at));
    }
    Ok(())
}
