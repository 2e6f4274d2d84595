//! `hammer audit`: the caller's audit log, newest first.

use crate::commands::PageArgs;
use crate::config::Conn;
use crate::output::{self, fmt_time, or_dash, wire_name, Table};
use anyhow::Result;
use hammer_client::Client;
use hammer_protocol::api::AuditEntry;

/// `hammer audit [--limit N] [--all]`.
pub async fn list(conn: &Conn, page: &PageArgs, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    let listed = client.audit(page.page()).await?;
    if listed.more {
        eprintln!(
            "showing the newest {} records; pass --all for every kept one, or --limit N",
            listed.items.len()
        );
    }
    if json {
        output::print_json(&listed.raw);
        return Ok(());
    }
    if listed.items.is_empty() {
        println!("nothing recorded yet");
        return Ok(());
    }
    table(&listed.items).print();
    Ok(())
}

/// The log as a table; [`Table::row`] escapes every cell (device names and details come from
/// devices and other users' input).
fn table(entries: &[AuditEntry]) -> Table {
    let mut t = Table::new(&[
        "TIME (UTC)",
        "ACTOR",
        "ACTION",
        "TARGET",
        "FROM",
        "RESULT",
        "DETAIL",
    ]);
    for e in entries {
        t.row(vec![
            fmt_time(e.time),
            e.actor.clone(),
            wire_name(&e.action),
            or_dash(e.target.as_deref()),
            or_dash(e.peer.as_deref()),
            e.result.clone(),
            or_dash(e.detail.as_deref()),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::AuditAction;

    #[test]
    fn the_table_names_the_action_and_escapes_what_devices_wrote() {
        let t = table(&[AuditEntry {
            time: 0,
            actor: "device pi".into(),
            action: AuditAction::DeviceRolledBack,
            target: Some("pi".into()),
            peer: None,
            result: "ok".into(),
            detail: Some("boom\u{1b}[2J".into()),
        }]);
        let out = t.render();
        assert!(out.contains("device_rolled_back"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(out.contains("device pi"), "{out}");
    }
}
