//! `hammer deploy` (with `--wait`: a live progress bar on a terminal, plain lines otherwise)
//! and `hammer deployment show|list|cancel`.
//!
//! `hammer deploy` names the commit itself when it can: if every targeted device uses the
//! same repository (and ref), it runs `git ls-remote` with the user's own git access and
//! deploys the full commit id, so that no device (and no later push) chooses what the fleet
//! runs. If that is not possible it says so in one line and the service pins the commit
//! from the first device that fetched.

use crate::commands::{check_id, check_name, tag_string, DeployArgs, PageArgs};
use crate::config::Conn;
use crate::output::{self, fmt_time, or_dash, safe, short_commit, wire_name, Table};
use anyhow::{bail, Result};
use hammer_client::Client;
use hammer_protocol::api::{
    CreateDeployment, DeploymentState, DeploymentView, DeviceView, PhaseGateState, PhasingView,
    Strategy, TargetState, Targets,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often `--wait` asks for the deployment's state.
const POLL: Duration = Duration::from_millis(500);
/// How long `--wait` keeps trying while the service cannot be reached (it may be restarting).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(300);
/// How long `git ls-remote` may take before the CLI leaves the commit to the service.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

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
    // --ref is checked by clap with protocol's rule (`parse_git_ref`).
    Ok(CreateDeployment {
        targets,
        git_ref: a.git_ref.clone(),
        commit: a.commit.clone(),
        strategy: Strategy {
            max_in_flight: a.max_in_flight,
            abort_at_percent: a.abort_at,
            timeout_secs: a.timeout,
            retries: a.retries,
            phases: a.phases.clone().map(|p| p.0).unwrap_or_default(),
            soak_secs: a.soak,
            start_at: a.start_at,
            ..Strategy::default()
        },
    })
}

/// Whether a ref is a full commit id (SHA-1 or SHA-256): it names the commit by itself.
pub fn is_full_commit(r: &str) -> bool {
    hammer_protocol::full_commit_id(r).is_ok()
}

/// The devices a deployment request targets, among `all` (the caller's devices).
pub fn targeted<'a>(all: &'a [DeviceView], targets: &Targets) -> Vec<&'a DeviceView> {
    match targets {
        Targets::Names(names) => all.iter().filter(|d| names.contains(&d.name)).collect(),
        Targets::Tag(sel) => match sel.split_once('=') {
            Some((k, v)) => all
                .iter()
                .filter(|d| d.tags.get(k).map(String::as_str) == Some(v))
                .collect(),
            None => Vec::new(),
        },
    }
}

/// The repository and ref to resolve for `devices`: one repository for all of them and one
/// ref (`git_ref`, else their common setup ref). `Err` says why the CLI cannot resolve it.
pub fn resolution_plan(
    devices: &[&DeviceView],
    git_ref: Option<&str>,
) -> std::result::Result<(String, String), String> {
    let mut repo: Option<&str> = None;
    let mut setup_ref: Option<&str> = None;
    if devices.is_empty() {
        return Err("no targeted device is visible to this token".into());
    }
    for d in devices {
        let Some(s) = &d.setup else {
            return Err(format!("device {} has no setup", d.name));
        };
        match repo {
            Some(r) if r != s.repo_url => {
                return Err("the devices do not all use the same repository".into())
            }
            _ => repo = Some(&s.repo_url),
        }
        match setup_ref {
            Some(r) if r != s.git_ref && git_ref.is_none() => {
                return Err("the devices do not all use the same ref; pass --ref".into())
            }
            _ => setup_ref = Some(&s.git_ref),
        }
    }
    let (Some(repo), Some(setup_ref)) = (repo, setup_ref) else {
        return Err("no targeted device is visible to this token".into());
    };
    if repo.starts_with('-') {
        return Err(format!("repository {repo:?} is not a URL"));
    }
    let git_ref = git_ref.unwrap_or(setup_ref);
    if git_ref.starts_with('-') {
        return Err(format!("ref {git_ref:?} is not a branch or tag"));
    }
    Ok((repo.to_owned(), git_ref.to_owned()))
}

/// Reads the commit `git_ref` names from `git ls-remote` output, the way the device
/// resolves it: a full ref name as is, else the branch `refs/heads/REF`, else the tag
/// `refs/tags/REF` (an annotated tag peeled to its commit).
pub fn parse_ls_remote(out: &str, git_ref: &str) -> std::result::Result<String, String> {
    let refs: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (sha.trim(), name.trim()))
        .filter(|(sha, _)| is_full_commit(sha))
        .collect();
    let find = |name: &str| {
        let peeled = format!("{name}^{{}}");
        refs.iter()
            .find(|(_, n)| *n == peeled)
            .or_else(|| refs.iter().find(|(_, n)| *n == name))
            .map(|(sha, _)| sha.to_ascii_lowercase())
    };
    let found = if git_ref.starts_with("refs/") {
        find(git_ref)
    } else {
        find(&format!("refs/heads/{git_ref}")).or_else(|| find(&format!("refs/tags/{git_ref}")))
    };
    found.ok_or_else(|| format!("the repository has no branch or tag {git_ref:?}"))
}

/// Runs `git ls-remote REPO REF` as the user (their credentials, agent and config), without
/// prompting, and reads the commit from it.
async fn ls_remote(repo: &str, git_ref: &str) -> std::result::Result<String, String> {
    let child = tokio::process::Command::new("git")
        .arg("ls-remote")
        .arg(repo)
        .arg(git_ref)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(LS_REMOTE_TIMEOUT, child).await {
        Err(_) => return Err(format!("git ls-remote took over {LS_REMOTE_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("cannot run git ({e})")),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!(
            "git ls-remote failed ({}){}",
            out.status,
            if line.is_empty() {
                String::new()
            } else {
                format!(": {}", safe(line.trim()))
            }
        ));
    }
    parse_ls_remote(&String::from_utf8_lossy(&out.stdout), git_ref)
}

/// Resolves the request's ref to a commit with the user's git access and puts the full
/// commit id in the request (the service then names it in every desired state). Prints one
/// line either way; never fails the deploy.
async fn name_the_commit(client: &Client, req: &mut CreateDeployment) {
    if req.commit.is_some() || req.git_ref.as_deref().is_some_and(is_full_commit) {
        return;
    }
    let resolved = async {
        let all = client
            .devices(None)
            .await
            .map_err(|e| format!("cannot list the devices ({e})"))?
            .body;
        let (repo, git_ref) =
            resolution_plan(&targeted(&all, &req.targets), req.git_ref.as_deref())?;
        let commit = ls_remote(&repo, &git_ref).await?;
        Ok::<_, String>((git_ref, commit))
    }
    .await;
    match resolved {
        Ok((git_ref, commit)) => {
            eprintln!("{git_ref} is commit {commit} (resolved with your git access); deploying that commit");
            req.commit = Some(commit);
        }
        Err(why) => eprintln!(
            "warning: could not resolve the commit here ({why}); the service will pin the commit from the first device that fetches"
        ),
    }
}

/// `hammer deploy`.
pub async fn deploy(conn: &Conn, a: DeployArgs, json: bool) -> Result<()> {
    let mut req = request(&a)?;
    let client = Client::new(conn)?;
    name_the_commit(&client, &mut req).await;
    let answer = client.create_deployment(&req).await?;
    let (v, dep) = (answer.raw, answer.body);
    if !a.wait {
        if json {
            output::print_json(&v);
        } else {
            println!("{}", dep.id);
            let when = match dep.strategy.start_at {
                Some(t) if t > hammer_protocol::now_ms() => {
                    format!("scheduled for {} UTC", fmt_time(t))
                }
                _ => "started".to_owned(),
            };
            let phases = match &dep.phasing {
                Some(p) => format!(" in {} phases", p.count),
                None => String::new(),
            };
            eprintln!(
                "deployment {} {when} for {} device(s){phases}; follow it with `hammer deployment show {}`",
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
                        safe(&t.device),
                        wire_name(&t.state),
                        t.detail
                            .as_deref()
                            .map(|x| format!(" ({})", safe(x)))
                            .unwrap_or_default()
                    )
                })
                .collect();
            bail!(
                "deployment {} {}: {}{}; see `hammer deployment show {}` and `hammer device history NAME`",
                safe(&d.id),
                wire_name(&state),
                safe(d.reason.as_deref().unwrap_or("no reason given")),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", failed.join("; "))
                },
                safe(&d.id)
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
            Some(p) => format!("{} {}", safe(&t.device), wire_name(&p)),
            None => format!("{} waiting", safe(&t.device)),
        })
        .collect();
    if flying.is_empty() {
        summary(d)
    } else {
        format!("{} | {}", summary(d), flying.join(", "))
    }
}

fn done(t: TargetState) -> bool {
    t.is_finished()
}

/// Follows `GET /deployments/{id}` until the deployment leaves `running`. Tolerates the
/// service being briefly unreachable (e.g. restarting) for up to five minutes.
async fn wait(
    client: &Client,
    first: DeploymentView,
) -> Result<(serde_json::Value, DeploymentView)> {
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
    let mut was_paused = false;
    let mut phase_line = String::new();
    loop {
        let finished = current.targets.iter().filter(|t| done(t.state)).count();
        if let (Some(p), DeploymentState::Running) = (&current.phasing, current.state) {
            let line = phasing_text(p, current.strategy.soak_secs);
            if line != phase_line {
                let msg = format!("deployment {}: {line}", safe(&current.id));
                match &bar {
                    Some(pb) => pb.println(msg),
                    None => eprintln!("{msg}"),
                }
                phase_line = line;
            }
        }
        if current.paused != was_paused && current.state == DeploymentState::Running {
            was_paused = current.paused;
            let msg = if was_paused {
                format!(
                    "deployment {id} paused: no device is started until `hammer deployment resume {id}`",
                    id = safe(&current.id)
                )
            } else {
                format!("deployment {} resumed", safe(&current.id))
            };
            match &bar {
                Some(pb) => pb.println(msg),
                None => eprintln!("{msg}"),
            }
        }
        for t in &current.targets {
            let line = format!(
                "{}{}{}",
                wire_name(&t.state),
                t.last_phase
                    .map(|p| format!(" ({})", wire_name(&p)))
                    .unwrap_or_default(),
                t.detail
                    .as_deref()
                    .map(|d| format!(": {}", safe(d)))
                    .unwrap_or_default()
            );
            if seen.get(&t.device) != Some(&line) {
                let msg = format!(
                    "{}: {line}{}",
                    safe(&t.device),
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
                safe(&current.id),
                wire_name(&current.state),
                current
                    .reason
                    .as_deref()
                    .map(|r| format!(": {}", safe(r)))
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
        match client.deployment(&current.id).await {
            Ok(answer) => {
                let (v, d) = (answer.raw, answer.body);
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
            Err(e) if e.is_unreachable() => {
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
                    return Err(anyhow::Error::new(e).context(format!(
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
                return Err(e.into());
            }
        }
    }
}

/// `hammer deployment show ID`.
pub async fn show(conn: &Conn, id: &str, json: bool) -> Result<()> {
    check_id(id)?;
    let client = Client::new(conn)?;
    let answer = client.deployment(id).await?;
    let (v, d) = (answer.raw, answer.body);
    if json {
        output::print_json(&v);
        return Ok(());
    }
    println!("deployment: {}", safe(&d.id));
    println!("state:      {}", state_text(&d));
    if let Some(r) = &d.reason {
        println!("reason:     {}", safe(r));
    }
    println!("deployer:   {}", safe(&d.deployer));
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
    if let Some(t) = s.start_at {
        println!("starts:     {} UTC", fmt_time(t));
    }
    if let Some(p) = &d.phasing {
        println!("phases:     {}", phasing_text(p, s.soak_secs));
        for x in &p.promotions {
            println!(
                "            phase {} promoted {} UTC {}",
                x.phase,
                fmt_time(x.at),
                match &x.by {
                    Some(by) => format!("by {}", safe(by)),
                    None => "after its soak".to_owned(),
                }
            );
        }
    }
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
pub async fn list(conn: &Conn, page: &PageArgs, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    let listed = client.deployments(page.page()).await?;
    if listed.more {
        eprintln!(
            "showing the newest {} deployments; pass --all for every one, or --limit N",
            listed.items.len()
        );
    }
    let (v, ds) = (listed.raw, listed.items);
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
            state_text(d),
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
    let answer = client.cancel_deployment(id).await?;
    if json {
        output::print_json(&answer.raw);
    } else {
        println!("deployment {id}: {}", state_text(&answer.body));
    }
    Ok(())
}

/// `hammer deployment pause ID` (`paused`) and `hammer deployment resume ID`.
pub async fn hold(conn: &Conn, id: &str, paused: bool, json: bool) -> Result<()> {
    check_id(id)?;
    let client = Client::new(conn)?;
    let answer = if paused {
        client.pause_deployment(id).await?
    } else {
        client.resume_deployment(id).await?
    };
    if json {
        output::print_json(&answer.raw);
    } else {
        println!("deployment {id}: {}", state_text(&answer.body));
    }
    Ok(())
}

/// `hammer deployment retry ID`.
pub async fn retry(conn: &Conn, id: &str, json: bool) -> Result<()> {
    check_id(id)?;
    let client = Client::new(conn)?;
    let answer = client.retry_deployment(id).await?;
    if json {
        output::print_json(&answer.raw);
    } else {
        let d = &answer.body;
        println!(
            "deployment {} retries {} device(s) of {id}; follow it with `hammer deployment show {}`",
            safe(&d.id),
            d.targets.len(),
            safe(&d.id)
        );
    }
    Ok(())
}

/// A deployment's state as the terminal shows it: `running (paused)` while paused.
/// `phase 1 of 3 (devices 1-1): soaking until …` and what to do next.
fn phasing_text(p: &PhasingView, soak_secs: Option<u32>) -> String {
    let (from, to) = p.open_targets();
    let soak = match soak_secs {
        Some(s) => format!("soak {s}s"),
        None => "promoted by hand".to_owned(),
    };
    let gate = match p.state {
        PhaseGateState::Soaking => format!(
            "soaking until {} UTC",
            p.soak_until.map(fmt_time).unwrap_or_else(|| "-".into())
        ),
        PhaseGateState::AwaitingPromotion => {
            "done; waiting for `hammer deployment promote`".to_owned()
        }
        PhaseGateState::Held => format!(
            "held: {}",
            safe(p.held_reason.as_deref().unwrap_or("no reason given"))
        ),
        other => wire_name(&other),
    };
    format!(
        "phase {} of {} (devices {}-{}, {soak}): {gate}",
        p.current, p.count, from, to
    )
}

/// `hammer deployment promote ID`.
pub async fn promote(conn: &Conn, id: &str, json: bool) -> Result<()> {
    check_id(id)?;
    let client = Client::new(conn)?;
    let answer = client.promote_deployment(id).await?;
    if json {
        output::print_json(&answer.raw);
    } else {
        let d = &answer.body;
        match &d.phasing {
            Some(p) => println!(
                "deployment {id}: phase {} of {} started",
                p.current, p.count
            ),
            None => println!("deployment {id}: {}", state_text(d)),
        }
    }
    Ok(())
}

fn state_text(d: &DeploymentView) -> String {
    if d.paused {
        format!("{} (paused)", wire_name(&d.state))
    } else {
        wire_name(&d.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::api::{DeviceState, SetupView};
    use hammer_protocol::RunState;

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";
    const C3: &str = "3333333333333333333333333333333333333333";

    fn device(name: &str, repo: Option<&str>, git_ref: &str, tag: &str) -> DeviceView {
        DeviceView {
            id: format!("id-{name}"),
            name: name.into(),
            tags: BTreeMap::from([("g".to_owned(), tag.to_owned())]),
            state: DeviceState::Ready,
            online: true,
            last_seen: None,
            current_commit: None,
            app_phase: None,
            run_state: RunState::Running,
            generation: 0,
            current_deployment: None,
            setup: repo.map(|r| SetupView {
                repo_url: r.into(),
                git_ref: git_ref.into(),
                start: "./run".into(),
                env: BTreeMap::new(),
                health_window_secs: 1,
                health_cmd: None,
                credentials: "none".into(),
                full_history: false,
                warnings: Vec::new(),
                install: None,
            }),
            last_health: None,
            current_commit_subject: None,
            reported_generation: None,
        }
    }

    #[test]
    fn a_branch_resolves_before_a_tag_and_an_annotated_tag_to_its_commit() {
        let out = format!(
            "{C1}\trefs/heads/main\n{C2}\trefs/remotes/origin/main\n{C3}\trefs/tags/v1\n{C1}\trefs/tags/v1^{{}}\n"
        );
        assert_eq!(parse_ls_remote(&out, "main").unwrap(), C1);
        assert_eq!(parse_ls_remote(&out, "v1").unwrap(), C1, "peeled");
        assert_eq!(parse_ls_remote(&out, "refs/tags/v1").unwrap(), C1);
        let both = format!("{C2}\trefs/tags/x\n{C3}\trefs/heads/x\n");
        assert_eq!(
            parse_ls_remote(&both, "x").unwrap(),
            C3,
            "the device's order"
        );
        let lightweight = format!("{C2}\trefs/tags/v2\n");
        assert_eq!(parse_ls_remote(&lightweight, "v2").unwrap(), C2);
    }

    #[test]
    fn a_ref_the_repository_lacks_or_garbage_output_resolves_to_nothing() {
        let out = format!("{C1}\trefs/heads/main\n");
        assert!(parse_ls_remote(&out, "dev")
            .unwrap_err()
            .contains("\"dev\""));
        assert!(parse_ls_remote("", "main").is_err());
        assert!(parse_ls_remote("zzzz\trefs/heads/main\n", "main").is_err());
        // `ls-remote main` also lists refs/remotes/x/main: a tail match is not the branch.
        assert!(parse_ls_remote(&format!("{C1}\trefs/remotes/o/main\n"), "main").is_err());
    }

    #[test]
    fn only_devices_sharing_one_repository_and_ref_are_resolved() {
        let a = device("a", Some("file:///r"), "main", "x");
        let b = device("b", Some("file:///r"), "main", "x");
        let other_repo = device("c", Some("file:///other"), "main", "x");
        let other_ref = device("d", Some("file:///r"), "dev", "x");
        let no_setup = device("e", None, "", "x");
        assert_eq!(
            resolution_plan(&[&a, &b], None).unwrap(),
            ("file:///r".into(), "main".into())
        );
        assert!(resolution_plan(&[&a, &other_repo], None).is_err());
        assert!(resolution_plan(&[&a, &other_ref], None)
            .unwrap_err()
            .contains("--ref"));
        // --ref overrides the setup refs.
        assert_eq!(
            resolution_plan(&[&a, &other_ref], Some("v2")).unwrap(),
            ("file:///r".into(), "v2".into())
        );
        assert!(resolution_plan(&[&a, &no_setup], None).is_err());
        assert!(resolution_plan(&[], None).is_err());
        let dash = device("f", Some("--upload-pack=x"), "main", "x");
        assert!(resolution_plan(&[&dash], None).is_err());
    }

    #[test]
    fn targets_are_picked_by_name_or_by_tag() {
        let all = vec![
            device("a", Some("r"), "main", "x"),
            device("b", Some("r"), "main", "y"),
        ];
        let names: Vec<&str> = targeted(&all, &Targets::Names(vec!["b".into()]))
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["b"]);
        let tagged: Vec<&str> = targeted(&all, &Targets::Tag("g=x".into()))
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(tagged, ["a"]);
        assert!(targeted(&all, &Targets::Tag("nonsense".into())).is_empty());
    }

    #[test]
    fn a_full_commit_id_is_recognised_and_a_short_one_is_not() {
        assert!(is_full_commit(C1));
        assert!(is_full_commit(&"a".repeat(64)));
        assert!(!is_full_commit("1111111"));
        assert!(!is_full_commit("main"));
    }
}
