//! `hammer deploy` (with `--wait`: a live progress bar on a terminal, plain lines otherwise)
//! and `hammer deployment show|list|cancel`.

use super::client::{is_unreachable, Client};
use super::config::Conn;
use super::output::{self, fmt_time, or_dash, short_commit, wire_name, Table};
use super::{check_id, check_name, tag_string, DeployArgs};
use anyhow::{bail, Result};
use hammer_protocol::api::{
    CreateDeployment, DeploymentState, DeploymentView, Strategy, TargetState, Targets,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often `--wait` asks for the deployment's state.
const POLL: Duration = Duration::from_millis(500);
/// How long `--wait` keeps trying while the service cannot be reached (it may be restarting).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(300);

/// Builds the `POST /deployments` body from the arguments, checking names first.
pub fn request(a: &DeployArgs) -> Result<CreateDeployment> {
    let targets = match &a.tag {
        Some(tag) => Targets::Tag(tag_string(tag)),
        None => {
            if a.names.is_empty() {
                bail!("name at least one device, or use --tag key=value");
            }
            for n in &a.names {
                check_name(n)?;
            }
            let mut names = a.names.clone();
            names.dedup();
            Targets::Names(names)
        }
    };
    if let Some(r) = &a.git_ref {
        if r.trim().is_empty() || r.starts_with('-') || r.chars().any(char::is_whitespace) {
            bail!("--ref {r:?} is not a valid git branch, tag or commit");
        }
    }
    Ok(CreateDeployment {
        targets,
        git_ref: a.git_ref.clone(),
        strategy: Strategy {
            max_in_flight: a.max_in_flight,
            abort_at_percent: a.abort_at,
            timeout_secs: a.timeout,
            retries: a.retries,
            ..Strategy::default()
        },
    })
}

/// `hammer deploy`.
pub async fn deploy(conn: &Conn, a: DeployArgs, json: bool) -> Result<()> {
    let req = request(&a)?;
    let client = Client::new(conn)?;
    let (v, dep): (_, DeploymentView) = client.post("/deployments", &req).await?;
    if !a.wait {
        if json {
            output::print_json(&v);
        } else {
            println!("{}", dep.id);
            eprintln!(
                "deployment {} started for {} device(s); follow it with `hammer deployment show {}`",
                dep.id,
                dep.targets.len(),
                dep.id
            );
        }
        return Ok(());
    }
    if !json {
        println!("{}", dep.id);
    }
    let (raw, fin) = wait(&client, dep).await?;
    if json {
        output::print_json(&raw);
    }
    finish(&fin)
}

/// Turns a finished deployment into the exit status: only `succeeded` is success.
fn finish(d: &DeploymentView) -> Result<()> {
    match d.state {
        DeploymentState::Succeeded => Ok(()),
        state => {
            let failed: Vec<String> = d
                .targets
                .iter()
                .filter(|t| t.state != TargetState::Succeeded)
                .map(|t| {
                    format!(
                        "{} {}{}",
                        t.device,
                        wire_name(&t.state),
                        t.detail
                            .as_deref()
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            bail!(
                "deployment {} {}: {}{}; see `hammer deployment show {}` and `hammer device history NAME`",
                d.id,
                wire_name(&state),
                d.reason.as_deref().unwrap_or("no reason given"),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", failed.join("; "))
                },
                d.id
            )
        }
    }
}

/// One line summarizing how many targets are in each state.
pub fn summary(d: &DeploymentView) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in &d.targets {
        *counts.entry(wire_name(&t.state)).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The bar's message: counts per state, then the phase of up to three devices in flight.
fn bar_message(d: &DeploymentView) -> String {
    let flying: Vec<String> = d
        .targets
        .iter()
        .filter(|t| t.state == TargetState::InFlight)
        .take(3)
        .map(|t| match t.last_phase {
            Some(p) => format!("{} {}", t.device, wire_name(&p)),
            None => format!("{} waiting", t.device),
        })
        .collect();
    if flying.is_empty() {
        summary(d)
    } else {
        format!("{} | {}", summary(d), flying.join(", "))
    }
}

fn done(t: TargetState) -> bool {
    matches!(
        t,
        TargetState::Succeeded | TargetState::Failed | TargetState::TimedOut | TargetState::Skipped
    )
}

/// Follows `GET /deployments/{id}` until the deployment leaves `running`. Tolerates the
/// service being briefly unreachable (e.g. restarting) for up to five minutes.
async fn wait(
    client: &Client,
    first: DeploymentView,
) -> Result<(serde_json::Value, DeploymentView)> {
    let path = format!("/deployments/{}", first.id);
    let bar = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(first.targets.len() as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} {elapsed:>4} [{bar:30.cyan/blue}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        Some(pb)
    } else {
        None
    };
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut current = first;
    let mut raw = serde_json::Value::Null;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let finished = current.targets.iter().filter(|t| done(t.state)).count();
        for t in &current.targets {
            let line = format!(
                "{}{}{}",
                wire_name(&t.state),
                t.last_phase
                    .map(|p| format!(" ({})", wire_name(&p)))
                    .unwrap_or_default(),
                t.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
            if seen.get(&t.device) != Some(&line) {
                let msg = format!(
                    "{}: {line}{}",
                    t.device,
                    t.commit
                        .as_deref()
                        .map(|c| format!(" @ {}", short_commit(Some(c))))
                        .unwrap_or_default()
                );
                match &bar {
                    Some(pb) => pb.println(msg),
                    None => eprintln!("{msg}"),
                }
                seen.insert(t.device.clone(), line);
            }
        }
        if let Some(pb) = &bar {
            pb.set_length(current.targets.len() as u64);
            pb.set_position(finished as u64);
            pb.set_message(bar_message(&current));
        }
        if current.state != DeploymentState::Running {
            let msg = format!(
                "deployment {} {}{}",
                current.id,
                wire_name(&current.state),
                current
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
            match &bar {
                Some(pb) => {
                    pb.finish_and_clear();
                    eprintln!("{msg}");
                }
                None => eprintln!("{msg}"),
            }
            if raw.is_null() {
                raw = serde_json::to_value(&current)?;
            }
            return Ok((raw, current));
        }
        tokio::time::sleep(POLL).await;
        match client.get::<DeploymentView>(&path, &[]).await {
            Ok((v, d)) => {
                if unreachable_since.take().is_some() {
                    let msg = "service reachable again".to_string();
                    match &bar {
                        Some(pb) => pb.println(msg),
                        None => eprintln!("{msg}"),
                    }
                }
                raw = v;
                current = d;
            }
            Err(e) if is_unreachable(&e) => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    let msg = "service unreachable, retrying (the deployment goes on)";
                    match &bar {
                        Some(pb) => pb.println(msg),
                        None => eprintln!("{msg}"),
                    }
                    Instant::now()
                });
                if since.elapsed() > UNREACHABLE_GRACE {
                    if let Some(pb) = &bar {
                        pb.abandon();
                    }
                    return Err(e.context(format!(
                        "gave up waiting for deployment {}; check it later with `hammer deployment show {}`",
                        current.id, current.id
                    )));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                if let Some(pb) = &bar {
                    pb.abandon();
                }
                return Err(e);
            }
        }
    }
}

/// `hammer deployment show ID`.
pub async fn show(conn: &Conn, id: &str, json: bool) -> Result<()> {
    check_id(id)?;
    let client = Client::new(conn)?;
    let (v, d): (_, DeploymentView) = client.get(&format!("/deployments/{id}"), &[]).await?;
    if json {
        output::print_json(&v);
        return Ok(());
    }
    println!("deployment: {}", d.id);
    println!("state:      {}", wire_name(&d.state));
    if let Some(r) = &d.reason {
        println!("reason:     {r}");
    }
    println!("deployer:   {}", d.deployer);
    println!("created:    {} UTC", fmt_time(d.created_at));
    if let Some(f) = d.finished_at {
        println!("finished:   {} UTC", fmt_time(f));
    }
    println!("ref:        {}", or_dash(d.git_ref.as_deref()));
    println!("commit:     {}", or_dash(d.commit.as_deref()));
    let s = &d.strategy;
    println!(
        "strategy:   max in flight {}, abort at {}, timeout {}s, retries {}",
        or_dash(s.max_in_flight),
        s.abort_at_percent
            .map(|p| format!("{p}% after {} device(s)", s.abort_min_devices))
            .unwrap_or_else(|| "never".into()),
        s.timeout_secs,
        s.retries
    );
    println!("progress:   {}", summary(&d));
    println!();
    let mut t = Table::new(&[
        "DEVICE", "STATE", "PHASE", "COMMIT", "ATTEMPTS", "UPDATED", "DETAIL",
    ]);
    for x in &d.targets {
        t.row(vec![
            x.device.clone(),
            wire_name(&x.state),
            or_dash(x.last_phase.map(|p| wire_name(&p))),
            short_commit(x.commit.as_deref()),
            x.attempts.to_string(),
            fmt_time(x.updated_at),
            or_dash(x.detail.as_deref()),
        ]);
    }
    t.print();
    Ok(())
}

/// `hammer deployment list`.
pub async fn list(conn: &Conn, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    let (v, ds): (_, Vec<DeploymentView>) = client.get("/deployments", &[]).await?;
    if json {
        output::print_json(&v);
        return Ok(());
    }
    if ds.is_empty() {
        println!("no deployments yet; start one with `hammer deploy NAME --wait`");
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "CREATED (UTC)",
        "BY",
        "REF",
        "COMMIT",
        "DEVICES",
    ]);
    for d in &ds {
        t.row(vec![
            d.id.clone(),
            wire_name(&d.state),
            fmt_time(d.created_at),
            d.deployer.clone(),
            or_dash(d.git_ref.as_deref()),
            short_commit(d.commit.as_deref()),
            summary(d),
        ]);
    }
    t.print();
    Ok(())
}

/// `hammer deployment cancel ID`.
pub async fn cancel(conn: &Conn, id: &str, json: bool) -> Result<()> {
    check_id(id)?;
    let client = Client::new(conn)?;
    let v = client
        .send::<()>(
            reqwest::Method::POST,
            &format!("/deployments/{id}/cancel"),
            &[],
            None,
        )
        .await?;
    if json {
        output::print_json(&v);
    } else {
        let state = serde_json::from_value::<DeploymentView>(v)
            .map(|d| wire_name(&d.state))
            .unwrap_or_else(|_| "canceled".into());
        println!("deployment {id}: {state}");
    }
    Ok(())
}
