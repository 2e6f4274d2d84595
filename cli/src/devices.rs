//! Device commands: `device add|list|show|history|remove`, `setup`, and the app actions
//! `restart|stop|start|rollback`.

use crate::commands::{
    check_name, check_tags, install_step, tag_string, DeviceCmd, PageArgs, SetupArgs,
};
use crate::config::Conn;
use crate::output::{self, ago, fmt_time, or_dash, safe, short_commit, wire_name, Table};
use anyhow::{anyhow, bail, Context, Result};
use hammer_client::{Action, Client};
use hammer_protocol::api::{CreateDevice, CreatedDevice, SetupRequest};
use hammer_protocol::GitCredentials;
use std::collections::BTreeMap;

/// Dispatches `hammer device …`.
pub async fn run(conn: &Conn, cmd: DeviceCmd, json: bool) -> Result<()> {
    match cmd {
        DeviceCmd::Add { name, tags } => add(conn, &name, tags, json).await,
        DeviceCmd::List { tag } => list(conn, tag.as_ref().map(tag_string), json).await,
        DeviceCmd::Show(a) => show(conn, &a.name, json).await,
        DeviceCmd::History(a) => history_paged(conn, &a.name, &a.page, json).await,
        DeviceCmd::Remove(a) => remove(conn, &a.name, json).await,
    }
}

async fn add(conn: &Conn, name: &str, tags: Vec<(String, String)>, json: bool) -> Result<()> {
    check_name(name)?;
    let tags = tags.into_iter().collect();
    check_tags(&tags)?;
    let client = Client::new(conn)?;
    let body = CreateDevice {
        name: name.to_string(),
        tags,
    };
    let answer = client.add_device(&body).await?;
    let (v, created) = (answer.raw, answer.body);
    if json {
        output::print_json(&v);
        return Ok(());
    }
    println!(
        "registered device {} (id {})",
        safe(&created.device.name),
        safe(&created.device.id)
    );
    println!(
        "enrollment token (one use, valid until {} UTC): {}",
        fmt_time(created.enrollment_expires_at),
        safe(&created.enrollment_token)
    );
    println!("run this on the device:");
    println!("  {}", safe(&enroll_command(&created)));
    println!(
        "then start the manager: hammer-manager run (add --data-dir DIR to both if you chose one)"
    );
    Ok(())
}

/// The exact `hammer-manager enroll` command for a freshly registered device. `--url` is
/// the service's HTTPS enrollment listener as the service reports it (`enroll_url`), not
/// the API URL this CLI talks to; `--ca-sha256` pins the fleet CA that signed its
/// certificate.
pub fn enroll_command(created: &CreatedDevice) -> String {
    format!(
        "hammer-manager enroll --url {} --token {} --ca-sha256 {}",
        created.enroll_url, created.enrollment_token, created.ca_sha256
    )
}

async fn list(conn: &Conn, tag: Option<String>, json: bool) -> Result<()> {
    let client = Client::new(conn)?;
    let answer = client.devices(tag.as_deref()).await?;
    let (v, devices) = (answer.raw, answer.body);
    if json {
        output::print_json(&v);
        return Ok(());
    }
    if devices.is_empty() {
        println!(
            "no devices{}; register one with `hammer device add NAME`",
            tag.map(|t| format!(" with tag {t}")).unwrap_or_default()
        );
        return Ok(());
    }
    let now = hammer_protocol::now_ms();
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "ONLINE",
        "APP",
        "COMMIT",
        "GEN",
        "LAST SEEN",
        "TAGS",
    ]);
    // Table::row escapes every cell.
    for d in devices {
        let generation = match d.reported_generation {
            Some(r) if d.is_behind() => format!("{} (behind: at {r})", d.generation),
            _ => d.generation.to_string(),
        };
        t.row(vec![
            d.name,
            wire_name(&d.state),
            if d.online { "yes" } else { "no" }.into(),
            or_dash(d.app_phase.map(|p| wire_name(&p))),
            short_commit(d.current_commit.as_deref()),
            generation,
            or_dash(d.last_seen.map(|t| ago(t, now))),
            fmt_tags(&d.tags),
        ]);
    }
    t.print();
    Ok(())
}

fn fmt_tags(tags: &BTreeMap<String, String>) -> String {
    if tags.is_empty() {
        return "-".into();
    }
    tags.iter()
        .map(|(k, v)| format!("{}={}", safe(k), safe(v)))
        .collect::<Vec<_>>()
        .join(",")
}

async fn show(conn: &Conn, name: &str, json: bool) -> Result<()> {
    check_name(name)?;
    let client = Client::new(conn)?;
    let answer = client.device(name).await?;
    let (v, d) = (answer.raw, answer.body);
    if json {
        output::print_json(&v);
        return Ok(());
    }
    let now = hammer_protocol::now_ms();
    println!("name:        {}", safe(&d.name));
    println!("id:          {}", safe(&d.id));
    println!("tags:        {}", fmt_tags(&d.tags));
    println!("state:       {}", wire_name(&d.state));
    println!(
        "online:      {}{}",
        if d.online { "yes" } else { "no" },
        d.last_seen
            .map(|t| format!(" (last seen {})", ago(t, now)))
            .unwrap_or_default()
    );
    println!(
        "app:         {}",
        or_dash(d.app_phase.map(|p| wire_name(&p)))
    );
    println!("run state:   {}", wire_name(&d.run_state));
    match (d.current_commit, d.current_commit_subject) {
        (Some(c), Some(subject)) => println!("commit:      {c} {}", safe(&subject)),
        (c, _) => println!("commit:      {}", or_dash(c)),
    }
    println!("generation:  {}", d.generation);
    println!("deployment:  {}", or_dash(d.current_deployment));
    match d.setup {
        Some(s) => {
            println!("repo:        {}", safe(&s.repo_url));
            println!("ref:         {}", safe(&s.git_ref));
            println!("start:       {}", safe(&s.start));
            if !s.env.is_empty() {
                println!(
                    "env:         {}",
                    s.env.keys().map(|k| safe(k)).collect::<Vec<_>>().join(", ")
                );
            }
            println!(
                "health:      {}s window{}",
                s.health_window_secs,
                s.health_cmd
                    .map(|c| format!(", check `{}`", safe(&c)))
                    .unwrap_or_default()
            );
            if let Some(i) = &s.install {
                let reuse: Vec<String> = i
                    .reuse
                    .iter()
                    .map(|r| safe(&r.spec()).into_owned())
                    .collect();
                println!(
                    "install:     `{}` (timeout {}s){}",
                    safe(&i.command),
                    i.timeout_secs,
                    if reuse.is_empty() {
                        String::new()
                    } else {
                        format!(", reusing {}", reuse.join(", "))
                    }
                );
            }
            println!("credentials: {}", safe(&s.credentials));
        }
        None => println!(
            "setup:       none yet (hammer setup {} --repo URL --start CMD)",
            safe(&d.name)
        ),
    }
    if let Some(h) = d.last_health {
        println!(
            "health rep.: {} app {}{}, {} restarts, up {}s, rss {} KiB, cpu {} ms, manager {}",
            ago(h.time, now),
            if h.app_running {
                "running"
            } else {
                "not running"
            },
            h.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            h.restarts,
            h.uptime_secs,
            h.app_rss_kb,
            h.app_cpu_ms,
            safe(&h.manager_version)
        );
    }
    Ok(())
}

/// `hammer device history NAME [--limit N] [--all]`: the newest events (100 unless
/// `--limit`), or every kept event with `--all`, oldest first.
pub async fn history_paged(conn: &Conn, name: &str, page: &PageArgs, json: bool) -> Result<()> {
    check_name(name)?;
    let client = Client::new(conn)?;
    let listed = client.history(name, page.page()).await?;
    if listed.more {
        eprintln!(
            "showing the newest {} events of {}; pass --all for every kept one, or --limit N",
            listed.items.len(),
            safe(name)
        );
    }
    let entries = listed.items;
    if json {
        output::print_json(&listed.raw);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no history for {} yet", safe(name));
        return Ok(());
    }
    let mut t = Table::new(&[
        "TIME (UTC)",
        "PHASE",
        "COMMIT",
        "GEN",
        "DEPLOYMENT",
        "BY",
        "DETAIL",
    ]);
    let mut tails = Vec::new();
    // Table::row escapes every cell (detail, deployer, commit come from the device).
    for e in &entries {
        t.row(vec![
            fmt_time(e.time),
            wire_name(&e.phase),
            short_commit(e.commit.as_deref()),
            or_dash(e.generation),
            or_dash(e.deployment_id.as_deref()),
            or_dash(e.deployer.as_deref()),
            or_dash(e.detail.as_deref()),
        ]);
        if !e.log_tail.is_empty() {
            tails.push(e);
        }
    }
    t.print();
    for e in tails {
        println!(
            "\nlast app output before {} at {}:",
            wire_name(&e.phase),
            fmt_time(e.time)
        );
        for line in &e.log_tail {
            println!("  | {}", safe(line));
        }
    }
    Ok(())
}

async fn remove(conn: &Conn, name: &str, json: bool) -> Result<()> {
    check_name(name)?;
    let client = Client::new(conn)?;
    let v = client.remove_device(name).await?;
    if json {
        output::print_json(&v);
    } else {
        println!(
            "removed device {}: its certificate is revoked and it can no longer connect",
            safe(name)
        );
    }
    Ok(())
}

/// Builds the setup request, reading secrets from the environment or files, never argv.
pub fn setup_request(a: &SetupArgs) -> Result<SetupRequest> {
    if a.repo.trim().is_empty() {
        bail!("--repo must not be empty");
    }
    if a.start.trim().is_empty() {
        bail!("--start must not be empty: give the command that starts the app, e.g. --start ./start.sh");
    }
    if a.health_window == 0 {
        bail!("--health-window must be at least 1 second");
    }
    // The one rule for repository URLs (the service's and the device manager's).
    hammer_protocol::rules::parse_remote_url(a.repo.trim()).map_err(|e| anyhow!("--repo: {e}"))?;
    let install = install_step(a)?;
    let credentials = if let (Some(user), Some(var)) = (&a.git_user, &a.git_token_env) {
        let token = std::env::var(var).map_err(|_| {
            anyhow!("environment variable {var} (named by --git-token-env) is not set; export it with the git token first")
        })?;
        if token.trim().is_empty() {
            bail!("environment variable {var} (named by --git-token-env) is empty");
        }
        Some(GitCredentials::Https {
            username: user.clone(),
            token,
        })
    } else if let (Some(key), Some(hosts)) = (&a.ssh_key, &a.known_hosts) {
        let private_key = std::fs::read_to_string(key)
            .with_context(|| format!("cannot read the SSH key {}", key.display()))?;
        if !private_key.contains("PRIVATE KEY-----") {
            bail!(
                "{} does not look like an SSH private key (PEM/OpenSSH format)",
                key.display()
            );
        }
        let known_hosts = std::fs::read_to_string(hosts)
            .with_context(|| format!("cannot read the known_hosts file {}", hosts.display()))?;
        if known_hosts.trim().is_empty() {
            bail!(
                "{} is empty: it must hold the git server's host key (ssh-keyscan HOST)",
                hosts.display()
            );
        }
        Some(GitCredentials::Ssh {
            private_key,
            known_hosts,
        })
    } else {
        None
    };
    Ok(SetupRequest {
        repo_url: a.repo.clone(),
        git_ref: a.git_ref.clone(),
        start: a.start.clone(),
        env: a.env.iter().cloned().collect(),
        health_window_secs: a.health_window,
        health_cmd: a.health_cmd.clone(),
        credentials,
        install,
        full_history: a.full_history,
    })
}

/// `hammer setup NAME …`: `PUT /devices/{name}/setup`.
pub async fn setup(conn: &Conn, a: SetupArgs, json: bool) -> Result<()> {
    check_name(&a.name)?;
    let req = setup_request(&a)?;
    let client = Client::new(conn)?;
    let answer = client.setup(&a.name, &req).await?;
    let v = answer.raw;
    let warnings = answer.body.setup.map(|s| s.warnings).unwrap_or_default();
    if json {
        output::print_json(&v);
    } else {
        for w in &warnings {
            eprintln!("warning: {}", safe(w));
        }
        println!(
            "setup sent to {}: {} ({}), {}start `{}`{}",
            safe(&a.name),
            safe(&req.repo_url),
            safe(&req.git_ref),
            req.install
                .as_ref()
                .map(|i| format!("install `{}`, ", safe(&i.command)))
                .unwrap_or_default(),
            safe(&req.start),
            match &req.credentials {
                Some(GitCredentials::Https { .. }) => ", https credentials sealed to the device",
                Some(GitCredentials::Ssh { .. }) => ", ssh key sealed to the device",
                None => "",
            }
        );
        println!("deploy it with: hammer deploy {} --wait", safe(&a.name));
    }
    Ok(())
}

/// `hammer restart|stop|start|rollback NAME`.
pub async fn action(conn: &Conn, name: &str, action: Action, json: bool) -> Result<()> {
    check_name(name)?;
    let client = Client::new(conn)?;
    let answer = client.action(name, action).await?;
    let (v, acc) = (answer.raw, answer.body);
    let action = action.as_str();
    if json {
        output::print_json(&v);
    } else {
        let mut line = format!("{action} sent to {}", safe(&acc.device));
        if let Some(g) = acc.generation {
            line.push_str(&format!(" (generation {g})"));
        }
        if let Some(d) = acc.deployment_id {
            line.push_str(&format!(", deployment {}", safe(&d)));
        }
        println!("{line}");
    }
    Ok(())
}
