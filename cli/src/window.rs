//! `hammer window`: maintenance windows. A deployment launches a device that has windows
//! (by its name or one of its tags) only while one is open; outside them it waits as pending.
//! The window's text is checked by the protocol's rule before any request is sent.

use crate::config::Conn;
use crate::output::{self, fmt_time, or_dash, safe, Table};
use anyhow::Result;
use clap::{ArgGroup, Args, Subcommand};
use hammer_client::Client;
use hammer_protocol::api::{AppliesTo, CreateWindow, DeviceWindows, MaintenanceWindow};
use hammer_protocol::Window;

#[derive(Debug, Subcommand)]
pub enum WindowCmd {
    /// Add a maintenance window for a device or a tag: DAYS HH:MM-HH:MM in UTC, e.g.
    /// "mon-fri 22:00-04:00", "daily 02:00-03:30", "sat,sun 00:00-24:00"
    Add(AddArgs),
    /// List your maintenance windows; with --device, those applying to one device and
    /// whether it is in one now
    List {
        /// Only the windows applying to this device (by its name or one of its tags)
        #[arg(long, value_name = "NAME", value_parser = parse_device)]
        device: Option<String>,
    },
    /// Remove a maintenance window by its id (`hammer window list` shows them)
    Rm {
        /// The window's id
        id: String,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("applies_to").required(true).args(["device", "tag"])))]
pub struct AddArgs {
    /// The device it applies to
    #[arg(long, value_name = "NAME", value_parser = parse_device)]
    pub device: Option<String>,
    /// The devices it applies to: those with this tag
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tag: Option<String>,
    /// DAYS HH:MM-HH:MM in UTC: `daily` or days (mon … sun) and ranges (mon-fri), comma-separated;
    /// an end at or before the start is on the next day
    #[arg(value_name = "WINDOW", value_parser = parse_window)]
    pub window: Window,
    /// A label for people
    #[arg(long)]
    pub name: Option<String>,
}

fn parse_device(s: &str) -> Result<String, String> {
    hammer_protocol::validate_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_tag(s: &str) -> Result<String, String> {
    hammer_protocol::parse_tag(s)
        .map(|(k, v)| hammer_protocol::rules::tag_selector(&k, &v))
        .map_err(|e| e.to_string())
}

fn parse_window(s: &str) -> Result<Window, String> {
    Window::parse(s).map_err(|e| e.to_string())
}

pub async fn run(conn: &Conn, cmd: WindowCmd, json: bool) -> Result<()> {
    match cmd {
        WindowCmd::Add(a) => add(conn, a, json).await,
        WindowCmd::List { device: None } => list(conn, json).await,
        WindowCmd::List { device: Some(d) } => of_device(conn, &d, json).await,
        WindowCmd::Rm { id } => rm(conn, &id, json).await,
    }
}

async fn add(conn: &Conn, a: AddArgs, json: bool) -> Result<()> {
    let applies_to = match (a.device, a.tag) {
        (Some(d), _) => AppliesTo::Device(d),
        (None, Some(t)) => AppliesTo::Tag(t),
        (None, None) => anyhow::bail!("give --device NAME or --tag KEY=VALUE"),
    };
    let client = Client::new(conn)?;
    let added = client
        .add_window(&CreateWindow {
            applies_to,
            window: a.window.to_string(),
            name: a.name,
        })
        .await?;
    if json {
        output::print_json(&added.raw);
    } else {
        let w = &added.body;
        println!(
            "added maintenance window {} for {}: {} (UTC); deployments launch these devices only while it is open",
            safe(&w.id),
            applies_to_text(&w.applies_to),
            safe(&w.window)
        );
    }
    Ok(())
}

async fn list(conn: &Conn, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    let listed = client.windows().await?;
    if json {
        output::print_json(&listed.raw);
        return Ok(());
    }
    if listed.body.is_empty() {
        println!("no maintenance windows: deployments launch your devices at any time");
        return Ok(());
    }
    table(&listed.body).print();
    Ok(())
}

async fn of_device(conn: &Conn, device: &str, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    let answer = client.device_windows(device).await?;
    if json {
        output::print_json(&answer.raw);
        return Ok(());
    }
    println!("{}", device_line(&answer.body));
    if !answer.body.windows.is_empty() {
        table(&answer.body.windows).print();
    }
    Ok(())
}

async fn rm(conn: &Conn, id: &str, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    client.remove_window(id).await?;
    if json {
        output::print_json(&serde_json::json!({ "id": id, "removed": true }));
    } else {
        println!("removed maintenance window {}", safe(id));
    }
    Ok(())
}

fn applies_to_text(a: &AppliesTo) -> String {
    match a {
        AppliesTo::Device(d) => format!("device {}", safe(d)),
        AppliesTo::Tag(t) => format!("tag {}", safe(t)),
    }
}

/// Whether the device may be launched now, in one line.
fn device_line(d: &DeviceWindows) -> String {
    let name = safe(&d.device);
    match (d.windows.is_empty(), d.open, d.opens_at) {
        (true, _, _) => format!("{name}: no maintenance window; deployments launch it at any time"),
        (false, true, _) => format!("{name}: in a maintenance window now"),
        (false, false, Some(t)) => format!(
            "{name}: outside its maintenance windows; a deployment launches it when the next opens, {} UTC",
            fmt_time(t)
        ),
        (false, false, None) => format!("{name}: outside its maintenance windows"),
    }
}

/// The windows as a table; [`Table::row`] escapes every cell.
fn table(ws: &[MaintenanceWindow]) -> Table {
    let mut t = Table::new(&["ID", "APPLIES TO", "WINDOW (UTC)", "NAME", "ADDED (UTC)"]);
    for w in ws {
        t.row(vec![
            w.id.clone(),
            applies_to_text(&w.applies_to),
            w.window.clone(),
            or_dash(w.name.as_deref()),
            fmt_time(w.created_at),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_window_is_refused_before_any_request_naming_a_valid_example() {
        let e = parse_window("weeknights").unwrap_err();
        assert!(e.contains("e.g. \"mon-fri 22:00-04:00\""), "{e}");
        assert_eq!(
            parse_window("mon,tue,wed,thu,fri 22:00-04:00")
                .unwrap()
                .to_string(),
            "mon-fri 22:00-04:00"
        );
        assert!(parse_tag("lab").unwrap_err().contains("key=value"));
    }

    #[test]
    fn the_table_escapes_what_users_wrote_and_the_device_line_says_when_it_opens() {
        let w = MaintenanceWindow {
            id: "w1".into(),
            name: Some("night\u{1b}[2J".into()),
            applies_to: AppliesTo::Tag("site=lab".into()),
            window: "mon-fri 22:00-04:00".into(),
            created_at: 0,
        };
        let out = table(std::slice::from_ref(&w)).render();
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(
            out.contains("tag site=lab") && out.contains("mon-fri 22:00-04:00"),
            "{out}"
        );
        let d = DeviceWindows {
            device: "pi".into(),
            windows: vec![w],
            open: false,
            opens_at: Some(0),
        };
        assert!(
            device_line(&d).contains("next opens, 1970-01-01 00:00:00 UTC"),
            "{}",
            device_line(&d)
        );
        let none = DeviceWindows {
            device: "pi".into(),
            windows: vec![],
            open: true,
            opens_at: None,
        };
        assert!(device_line(&none).contains("any time"));
    }
}
