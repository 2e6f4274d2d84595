//! `abuse-bench`: the abuse floods of issue 13 against the real service, run as a separate
//! process (the `hammer serve` binary next to this one, or `--hammer-bin`), on a temp data
//! dir and free loopback ports. Everything goes to 127.0.0.1 only.
//!
//! ```text
//! cargo build --release -p hammer-cli -p hammer-fleet-sim && target/release/abuse-bench
//! target/release/abuse-bench --scale 0.1                      # a quick run
//! target/release/abuse-bench --phases presence,http           # a subset (names or 1-6)
//! ```
//!
//! Two users: alice (the attacker, one device that floods) and bob (the victim, one
//! well-behaved device that publishes a status event every 200 ms and measures the time to
//! its ack for the whole run). The phases, one after the other, each bounded by
//! `--phase-secs` (60 s) and, at `--scale 1`, these sizes (every count times `--scale`):
//!
//! 1. `presence`: 300,000 retained presence messages from alice's device, QoS 0, as fast as
//!    the connection takes them.
//! 2. `logs`: 170 MB of log batches (~246 KB each) from alice's device, nobody watching.
//! 3. `status`: 60 MB of status events with a 64 KiB `detail` and a 150 KB `log_tail`
//!    (QoS 1), then `GET /api/v1/devices/NAME/history`: size and latency.
//! 4. `http`: 1,050 connections to the HTTP port that send half a request head and stall
//!    (held `--hold-secs`, 35 s); meanwhile `/healthz` from a fresh connection every 500 ms.
//! 5. `mqtt-idle`: 1,100 TCP connections to the MQTT port that never start TLS (held
//!    `--hold-secs`); meanwhile a new device's connect + subscribe time, one after another.
//! 6. `devices`: 2,000 devices provisioned through the admin API for a third user, set up,
//!    one deployment to all of them; then `/metrics` and `GET /api/v1/deployments` latency.
//!
//! For each phase it prints the service's RSS (`/proc/<pid>/status`, sampled every 100 ms)
//! before, at its peak and 3 s after; the victim's ack latency (p50, p99, max) and missed
//! acks (events sent from the flood's start until 3 s after its end, at least 5 s, and not
//! acked 2 s after that); whether the flooder was cut off and
//! after how many messages (it reconnects after 1 s, as an attacker would); and the limits
//! hit: the `/metrics` samples that changed whose name or labels contain one of
//! [`abuse::LIMIT_WORDS`] (refus, shed, drop, reject, limit, coalesc, evict, timeout, quota).
//! (The idle connections of phase 5 are closed by the bench at the end of the hold; the
//! embedded broker counts those as `reason="tls"` refusals.) A summary table ends the run. The service's behaviour is never an error here: a refused
//! connection, a cut-off or a failed request is a result; only setup failures stop the run.
//!
//! Every wait is bounded: at full scale a run takes a few minutes on a 2-core machine and
//! at most about 8 (each flood 60 s, each settle 3-15 s, each latency sampling 30 s). The work dir (data dir,
//! `service.log`) is removed at the end unless the run fails or `--keep` is given.

use anyhow::Context;
use clap::Parser;
use hammer_fleet_sim::abuse::{
    self, fresh_client, hold_stalled, limit_changes, scrape_metrics, timed_get, AckStats,
    FloodReport, RssSampler, Samples, Victim,
};
use hammer_fleet_sim::api::Api;
use hammer_fleet_sim::device::{self, Credentials, SimConfig};
use hammer_fleet_sim::fleet::FleetStats;
use hammer_fleet_sim::service_proc::{self, ServeSpec, ServiceProc, StopSignal};
use hammer_fleet_sim::{parse_broker_url, procstat};
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, now_ms, Channel, LogBatch, Phase, Presence, StatusEvent};
use hammer_protocol::{MAX_PAYLOAD, PROTOCOL_VERSION};
use rumqttc::QoS;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After a flood: the service settles this long before RSS "after" and the metrics.
const SETTLE: Duration = Duration::from_secs(3);
/// The victim is observed at least this long per phase.
const MIN_WINDOW: Duration = Duration::from_secs(5);
/// An event of the victim's not acked this long after its phase's window is missed.
const ACK_GRACE: Duration = Duration::from_secs(2);

/// Latency sampling after a flood stops after this long.
const SAMPLING: Duration = Duration::from_secs(30);

const PHASES: [&str; 6] = ["presence", "logs", "status", "http", "mqtt-idle", "devices"];

#[derive(Parser, Debug, Clone)]
#[command(about = "Abuse floods against hammer serve: memory, victim latency, limits hit")]
struct Args {
    /// Phases to run, by name or number, comma-separated: presence (1), logs (2),
    /// status (3), http (4), mqtt-idle (5), devices (6).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    phases: Vec<String>,
    /// Multiplies every flood size (0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Upper bound of each phase's flood, in seconds.
    #[arg(long, default_value_t = 60)]
    phase_secs: u64,
    /// How long the stalled connections of phases 4 and 5 are held, in seconds.
    #[arg(long, default_value_t = 35)]
    hold_secs: u64,
    /// The victim's status event interval, in milliseconds.
    #[arg(long, default_value_t = 200)]
    victim_ms: u64,
    /// The `hammer` binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    hammer_bin: Option<PathBuf>,
    /// RUST_LOG of the service process.
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    service_log: String,
    /// Keep the work dir (service data dir and log) after a successful run.
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn scaled(&self, n: f64) -> u64 {
        ((n * self.scale).round() as u64).max(1)
    }

    fn selected(&self) -> anyhow::Result<Vec<&'static str>> {
        let mut out = Vec::new();
        for p in &self.phases {
            let p = p.trim();
            if p == "all" {
                return Ok(PHASES.to_vec());
            }
            let found = PHASES
                .iter()
                .enumerate()
                .find(|(i, n)| **n == p || (i + 1).to_string() == p)
                .map(|(_, n)| *n)
                .with_context(|| format!("unknown phase {p:?}; phases: {}", PHASES.join(", ")))?;
            if !out.contains(&found) {
                out.push(found);
            }
        }
        // Always in the documented order.
        out.sort_by_key(|n| PHASES.iter().position(|p| p == n));
        Ok(out)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    hammer_certs::tls::install_default_provider();
    let phases = args.selected()?;
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        anyhow::bail!("--scale must be a positive number");
    }
    let bin = service_proc::locate(args.hammer_bin.as_deref())?;
    // Stalled connections (up to 1,100 at once) plus clients and files.
    let want = args.scaled(1100.0) + args.scaled(1050.0) + 1024;
    let limit = procstat::raise_nofile(want);
    println!(
        "abuse-bench: phases {}; scale {}; each flood bounded by {} s; open-file limit {limit} (wanted {want}); {} CPUs",
        phases.join(","),
        args.scale,
        args.phase_secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let work = tempfile::Builder::new()
        .prefix("abuse-bench.")
        .tempdir()
        .context("cannot create the work dir")?;
    println!(
        "service binary {}; work dir {}",
        bin.display(),
        work.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("abuse-bench")
        .enable_all()
        .build()?;
    let result = rt.block_on(main_async(&args, &phases, &bin, work.path()));
    drop(rt);
    if result.is_err() || args.keep {
        let kept = work.keep();
        eprintln!("work dir kept (data dir, service log): {}", kept.display());
    }
    result
}

/// The run's shared pieces.
struct Ctx {
    args: Args,
    base: String,
    mqtt: SocketAddr,
    admin: Api,
    admin_token: String,
    alice_token: String,
    attacker: Credentials,
    /// Bob's second device, for the connect time of phase 5.
    probe: Credentials,
    broker: (String, u16),
    http: reqwest::Client,
    rss: RssSampler,
    victim: Victim,
}

impl Ctx {
    fn broker(&self) -> (&str, u16) {
        (&self.broker.0, self.broker.1)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.args.phase_secs)
    }

    fn hold(&self) -> Duration {
        Duration::from_secs(self.args.hold_secs.min(self.args.phase_secs))
    }
}

/// What a phase body reports.
#[derive(Default)]
struct Outcome {
    /// Short flooder result for the summary.
    flooder: String,
    /// Short extra measurement for the summary.
    probe: String,
    lines: Vec<String>,
}

/// One phase's printed figures.
struct PhaseRow {
    name: &'static str,
    rss: (u64, u64, u64),
    victim: AckStats,
    outcome: Outcome,
    limits: Vec<(String, f64, f64)>,
    took: Duration,
}

async fn main_async(
    args: &Args,
    phases: &[&'static str],
    bin: &Path,
    work: &Path,
) -> anyhow::Result<()> {
    let spec = ServeSpec::new(
        bin,
        work.join("data"),
        work.join("service.log"),
        &args.service_log,
    )?;
    println!(
        "hammer serve: http {}, embedded broker {}, log {}",
        spec.http,
        spec.mqtt,
        spec.log.display()
    );
    let svc = ServiceProc::start(&spec).await?;
    println!(
        "service pid {} answered /healthz after {:.2} s",
        svc.pid(),
        svc.started_in.as_secs_f64()
    );
    let admin = Api::new(&svc.http_url, &svc.admin_token)?;
    let alice_token = admin
        .create_user("alice")
        .await
        .context("cannot create the user alice")?;
    admin
        .create_user("bob")
        .await
        .context("cannot create the user bob")?;
    let attacker = Credentials::from_bundle(
        &admin
            .provision("alice", "flooder", ("role", "attacker"))
            .await
            .context("cannot provision alice's device")?,
    )?;
    let victim_creds = Credentials::from_bundle(
        &admin
            .provision("bob", "victim", ("role", "victim"))
            .await
            .context("cannot provision bob's device")?,
    )?;
    let probe = Credentials::from_bundle(
        &admin
            .provision("bob", "newcomer", ("role", "probe"))
            .await
            .context("cannot provision bob's second device")?,
    )?;
    let broker = parse_broker_url(&attacker.broker_url)?;
    let victim = Victim::start(
        &victim_creds,
        (&broker.0, broker.1),
        Duration::from_millis(args.victim_ms),
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "users alice (attacker, device {}) and bob (victim, device {}, a status event every {} ms); broker {}:{}",
        attacker.device_id, victim_creds.device_id, args.victim_ms, broker.0, broker.1
    );
    let ctx = Ctx {
        args: args.clone(),
        base: svc.http_url.clone(),
        mqtt: spec.mqtt,
        admin,
        admin_token: svc.admin_token.clone(),
        alice_token,
        attacker,
        probe,
        broker,
        http: fresh_client(Duration::from_secs(30))?,
        rss: RssSampler::start(svc.pid()),
        victim,
    };
    // A baseline of the victim before any flood.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = ctx.victim.window(t, Instant::now());
    println!(
        "baseline: service RSS {} MiB; victim {}",
        ctx.rss.now() / 1024,
        base.line()
    );
    let mut rows = Vec::new();
    for (i, name) in phases.iter().enumerate() {
        if ctx.rss.now() == 0 {
            println!(
                "\nthe service process is gone (see {}); phases from {name} on are skipped",
                spec.log.display()
            );
            break;
        }
        rows.push(run_phase(&ctx, i + 1, name).await);
    }
    summary(&base, &rows);
    drop(ctx);
    let pid = svc.pid();
    match svc.stop(StopSignal::Term).await {
        Ok((took, clean)) => println!(
            "service pid {pid} stopped with SIGTERM in {:.2} s{}",
            took.as_secs_f64(),
            if clean {
                ""
            } else {
                " (unclean exit: see its log)"
            }
        ),
        Err(e) => println!("service pid {pid}: {e:#}"),
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn scrape(ctx: &Ctx, what: &str) -> BTreeMap<String, f64> {
    match scrape_metrics(&ctx.http, &ctx.base, &ctx.admin_token).await {
        Ok(m) => m,
        Err(e) => {
            println!("  (metrics {what}: {e})");
            BTreeMap::new()
        }
    }
}

async fn run_phase(ctx: &Ctx, n: usize, name: &'static str) -> PhaseRow {
    println!("\n== phase {n}: {name} ==");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = scrape(ctx, "before").await;
    let rss_before = ctx.rss.now();
    let t0 = Instant::now();
    let outcome = match name {
        "presence" => presence(ctx).await,
        "logs" => logs(ctx).await,
        "status" => status(ctx).await,
        "http" => http_stall(ctx).await,
        "mqtt-idle" => mqtt_idle(ctx).await,
        _ => devices(ctx).await,
    };
    let outcome = outcome.unwrap_or_else(|e| Outcome {
        flooder: "setup failed".into(),
        probe: String::new(),
        lines: vec![format!("phase setup failed: {e:#}")],
    });
    let t1 = Instant::now();
    // The victim is measured from the start of the flood until 3 s after it (at least 5 s:
    // the service may still be working through what it was sent).
    let observed = (t1 + SETTLE).max(t0 + MIN_WINDOW);
    tokio::time::sleep_until(observed.into()).await;
    let rss_after = ctx.rss.now();
    let rss_peak = ctx.rss.peak(t0, Instant::now()).max(rss_before);
    let after = scrape(ctx, "after").await;
    // Events sent at the end of the window get their time to be acked.
    tokio::time::sleep(ACK_GRACE).await;
    let victim = ctx.victim.window(t0, observed);
    let limits = limit_changes(&before, &after);
    let row = PhaseRow {
        name,
        rss: (rss_before, rss_peak, rss_after),
        victim,
        outcome,
        limits,
        took: t1 - t0,
    };
    print_row(&row);
    row
}

fn print_row(r: &PhaseRow) {
    for l in &r.outcome.lines {
        println!("  {l}");
    }
    println!(
        "  service RSS: before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        mib(r.rss.0),
        mib(r.rss.1),
        mib(r.rss.2)
    );
    println!("  victim: {}", r.victim.line());
    if r.limits.is_empty() {
        println!("  limits hit: none (no refused/shed/dropped/rejected/limit/coalesced/evicted/timeout/quota counter changed)");
    } else {
        println!("  limits hit:");
        for (k, b, a) in &r.limits {
            println!("    {k}: {b} -> {a} (+{})", a - b);
        }
    }
    println!("  phase took {:.1} s", r.took.as_secs_f64());
}

fn summary(base: &AckStats, rows: &[PhaseRow]) {
    println!("\n== summary ==");
    println!(
        "baseline victim ack: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        base.p50_ms, base.p99_ms, base.max_ms
    );
    println!(
        "{:<10} {:>25} {:>26}  {:<30} {:<46} limits hit",
        "phase", "RSS MiB before/peak/after", "victim ack p50/p99/max ms", "flooder", "probe"
    );
    for r in rows {
        let limits: Vec<String> = r
            .limits
            .iter()
            .map(|(k, b, a)| format!("{k} +{}", a - b))
            .collect();
        println!(
            "{:<10} {:>25} {:>26}  {:<30} {:<46} {}",
            r.name,
            format!(
                "{:.0}/{:.0}/{:.0}",
                mib(r.rss.0),
                mib(r.rss.1),
                mib(r.rss.2)
            ),
            format!(
                "{:.0}/{:.0}/{:.0}{}",
                r.victim.p50_ms,
                r.victim.p99_ms,
                r.victim.max_ms,
                if r.victim.missed > 0 {
                    format!(" ({} missed)", r.victim.missed)
                } else {
                    String::new()
                }
            ),
            r.outcome.flooder,
            r.outcome.probe,
            if limits.is_empty() {
                "none".to_owned()
            } else {
                limits.join(", ")
            }
        );
    }
}

/// Waits until the counter `name` of `/metrics` grew by no more than the victim's own
/// events in 1 s (at most 15 s) and returns how much it grew since `from` (None if it
/// cannot be read).
async fn settled_counter(ctx: &Ctx, name: &str, from: Option<f64>) -> Option<f64> {
    let end = Instant::now() + Duration::from_secs(15);
    let quiet = 1000.0 / ctx.args.victim_ms.max(1) as f64 + 2.0;
    let mut last: Option<f64> = None;
    loop {
        let now = scrape(ctx, name).await.get(name).copied();
        if let (Some(n), Some(l)) = (now, last) {
            if n - l <= quiet {
                last = now;
                break;
            }
        }
        last = now;
        if Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Some(last? - from.unwrap_or(0.0))
}

async fn counter(ctx: &Ctx, name: &str) -> Option<f64> {
    scrape(ctx, name).await.get(name).copied()
}

fn flood_outcome(r: &FloodReport, want: u64) -> Outcome {
    Outcome {
        flooder: r.short(),
        probe: String::new(),
        lines: vec![format!("flooder: {}", r.line(want))],
    }
}

// ---- phase 1 ----

async fn presence(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let count = ctx.args.scaled(300_000.0);
    let epoch = hammer_sim_device::new_epoch()?;
    let id = ctx.attacker.device_id.clone();
    println!("  {count} presence messages (QoS 0, retained) from {id}");
    let r = abuse::flood(
        &ctx.attacker,
        ctx.broker(),
        topic(&id, Channel::Presence),
        QoS::AtMostOnce,
        true,
        count,
        ctx.deadline(),
        move |i| {
            encode(&Presence {
                v: PROTOCOL_VERSION,
                online: true,
                epoch,
                generation: None,
                acked_seq: i,
                manager_version: "abuse-bench".into(),
                time: now_ms(),
                // Claims events wait, so every presence asks for a signed ack (the costly case).
                last_seq: Some(i + 1),
            })
            .unwrap_or_default()
        },
    )
    .await?;
    Ok(flood_outcome(&r, count))
}

// ---- phase 2 ----

/// Lines per batch and bytes per line: 240 × 1 KiB, under the 256 KiB payload limit.
const LOG_LINES: usize = 240;
const LOG_COUNTER: &str = "hammer_log_batches_total";
const STATUS_COUNTER: &str = "hammer_status_events_ingested_total";
const LOG_LINE: usize = 1024;

async fn logs(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let line: String = "x".repeat(LOG_LINE);
    let batch = LogBatch {
        v: PROTOCOL_VERSION,
        time: now_ms(),
        lines: vec![line; LOG_LINES],
    };
    let payload = encode(&batch).context("cannot encode a log batch")?;
    anyhow::ensure!(payload.len() <= MAX_PAYLOAD, "log batch too large");
    let total = ctx.args.scale * 170e6;
    let count = ((total / payload.len() as f64).ceil() as u64).max(1);
    println!(
        "  {count} log batches of {} bytes ({:.1} MB, QoS 0), nobody watching",
        payload.len(),
        count as f64 * payload.len() as f64 / 1e6
    );
    let from = counter(ctx, LOG_COUNTER).await;
    let r = abuse::flood(
        &ctx.attacker,
        ctx.broker(),
        topic(&ctx.attacker.device_id, Channel::Logs),
        QoS::AtMostOnce,
        false,
        count,
        ctx.deadline(),
        move |_| payload.clone(),
    )
    .await?;
    let mut o = flood_outcome(&r, count);
    let got = settled_counter(ctx, LOG_COUNTER, from).await;
    o.lines.push(format!(
        "the service received {} of the {} batches written ({LOG_COUNTER})",
        got.map_or("?".into(), |n| n.to_string()),
        r.written
    ));
    // What the service kept (this request starts a watch, after the flood was ingested).
    let url = format!("{}/api/v1/devices/flooder/logs", ctx.base);
    match timed_get(&ctx.http, &url, &ctx.alice_token).await {
        Ok(g) => {
            let lines = serde_json::from_str::<serde_json::Value>(&g.body)
                .ok()
                .and_then(|v| v.get("lines").and_then(|l| l.as_array()).map(|a| a.len()));
            o.lines.push(format!(
                "GET logs afterwards: HTTP {}, {} bytes, {} lines kept, {:.1} ms",
                g.status,
                g.bytes,
                lines.map_or("?".into(), |n| n.to_string()),
                g.took.as_secs_f64() * 1000.0
            ));
            o.probe = format!("logs kept {} B", g.bytes);
        }
        Err(e) => o.lines.push(format!("GET logs afterwards failed: {e}")),
    }
    Ok(o)
}

// ---- phase 3 ----

async fn status(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let epoch = hammer_sim_device::new_epoch()?;
    let detail = "d".repeat(64 * 1024);
    let tail: Vec<String> = (0..100)
        .map(|i| format!("{i:04} {}", "t".repeat(1495)))
        .collect();
    let make = move |i: u64| {
        encode(&StatusEvent {
            v: PROTOCOL_VERSION,
            epoch,
            seq: i + 1,
            generation: None,
            deployment_id: None,
            phase: Phase::Failed,
            commit: None,
            time: now_ms(),
            detail: Some(detail.clone()),
            log_tail: tail.clone(),
            commit_subject: None,
        })
        .unwrap_or_default()
    };
    let size = make(0).len();
    anyhow::ensure!(
        size > 0 && size <= MAX_PAYLOAD,
        "status event of {size} bytes"
    );
    let count = ((ctx.args.scale * 60e6 / size as f64).ceil() as u64).max(1);
    println!(
        "  {count} status events of {size} bytes ({:.1} MB, QoS 1)",
        count as f64 * size as f64 / 1e6
    );
    let from = counter(ctx, STATUS_COUNTER).await;
    let r = abuse::flood(
        &ctx.attacker,
        ctx.broker(),
        topic(&ctx.attacker.device_id, Channel::Status),
        QoS::AtLeastOnce,
        false,
        count,
        ctx.deadline(),
        make,
    )
    .await?;
    let mut o = flood_outcome(&r, count);
    // Let ingestion finish before reading the history.
    let got = settled_counter(ctx, STATUS_COUNTER, from).await;
    o.lines.push(format!(
        "the service stored {} status events during the flood (all tenants, {STATUS_COUNTER})",
        got.map_or("?".into(), |n| n.to_string())
    ));
    let url = format!("{}/api/v1/devices/flooder/history", ctx.base);
    let mut s = Samples::default();
    let mut entries = None;
    let mut paged = false;
    let end = Instant::now() + SAMPLING;
    for _ in 0..5 {
        if Instant::now() > end {
            break;
        }
        let g = timed_get(&ctx.http, &url, &ctx.alice_token).await;
        if let Ok(g) = &g {
            entries = serde_json::from_str::<Vec<serde_json::Value>>(&g.body)
                .ok()
                .map(|v| v.len());
            paged = g.next_cursor;
        }
        s.push(g);
    }
    o.lines.push(format!(
        "GET history: {} entries in the first page{}; {}",
        entries.map_or("?".into(), |n| n.to_string()),
        if paged {
            " (more pages: next-cursor)"
        } else {
            ""
        },
        s.line()
    ));
    o.probe = format!(
        "history {} entries, {:.1} MB, {}",
        entries.map_or("?".into(), |n| n.to_string()),
        s.last_bytes as f64 / 1e6,
        s.short()
    );
    Ok(o)
}

// ---- phase 4 ----

async fn http_stall(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let n = ctx.args.scaled(1050.0) as usize;
    let addr: SocketAddr = ctx
        .base
        .trim_start_matches("http://")
        .parse()
        .context("the service's HTTP address")?;
    let head: &'static [u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stall: ";
    let t0 = Instant::now();
    let stalled = hold_stalled(addr, n, head).await;
    let opened_in = t0.elapsed();
    println!(
        "  {} of {n} half-sent requests open after {:.1} s; /healthz from a fresh connection every 500 ms for {} s",
        stalled.opened,
        opened_in.as_secs_f64(),
        ctx.hold().as_secs()
    );
    let url = format!("{}/healthz", ctx.base);
    let client = fresh_client(Duration::from_secs(10))?;
    let mut s = Samples::default();
    let end = t0 + ctx.hold();
    loop {
        s.push(timed_get(&client, &url, "").await);
        if Instant::now() + Duration::from_millis(500) > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (closed, _) = stalled.closed();
    Ok(Outcome {
        flooder: format!("{} open, {} closed", stalled.opened, closed),
        probe: format!("healthz {}", s.short()),
        lines: vec![
            format!("stalled HTTP connections: {}", stalled.line()),
            format!("/healthz while they are open: {}", s.line()),
        ],
    })
}

// ---- phase 5 ----

async fn mqtt_idle(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let n = ctx.args.scaled(1100.0) as usize;
    let t0 = Instant::now();
    let stalled = hold_stalled(ctx.mqtt, n, b"").await;
    println!(
        "  {} of {n} idle TCP connections open after {:.1} s; a new device connects and subscribes, one after another, for {} s",
        stalled.opened,
        t0.elapsed().as_secs_f64(),
        ctx.hold().as_secs()
    );
    let cfg = Arc::new(SimConfig {
        connect_timeout: Duration::from_secs(30),
        ..SimConfig::default()
    });
    let end = t0 + ctx.hold();
    let mut ms = Vec::new();
    let mut failed = Vec::new();
    loop {
        let t = Instant::now();
        let stats = Arc::new(FleetStats::default());
        let left = end.saturating_duration_since(t).max(Duration::from_secs(5));
        match device::connect(0, &ctx.probe, ctx.broker(), cfg.clone(), stats, left).await {
            Ok(d) => {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                d.disconnect().await;
                drop(d);
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
        if Instant::now() + Duration::from_secs(1) > end {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let (closed, _) = stalled.closed();
    let mut lines = vec![
        format!("idle MQTT connections: {}", stalled.line()),
        format!(
            "new device connect + subscribe: {} ok: p50 {:.1} ms, max {:.1} ms{}",
            ms.len(),
            hammer_fleet_sim::percentile(&sorted, 50.0),
            sorted.last().copied().unwrap_or(0.0),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; {} FAILED ({})", failed.len(), failed[0])
            }
        ),
    ];
    if ms.is_empty() && failed.is_empty() {
        lines.push("no connect attempt finished".into());
    }
    Ok(Outcome {
        flooder: format!("{} open, {} closed", stalled.opened, closed),
        probe: format!(
            "connect p50 {:.0} / max {:.0} ms{}",
            hammer_fleet_sim::percentile(&sorted, 50.0),
            sorted.last().copied().unwrap_or(0.0),
            if failed.is_empty() {
                String::new()
            } else {
                format!(", {} failed", failed.len())
            }
        ),
        lines,
    })
}

// ---- phase 6 ----

async fn devices(ctx: &Ctx) -> anyhow::Result<Outcome> {
    use futures_util::stream::{self, StreamExt};
    let n = ctx.args.scaled(2000.0) as usize;
    let carol_token = ctx
        .admin
        .create_user("carol")
        .await
        .context("cannot create the user carol")?;
    let carol = ctx.admin.with_token(&carol_token);
    let deadline = ctx.deadline();
    let mut lines = Vec::new();
    // Provision (8 at a time), bounded by the phase time.
    let t = Instant::now();
    let results: Vec<Result<String, String>> = stream::iter(0..n)
        .map(|i| {
            let admin = ctx.admin.clone();
            async move {
                if Instant::now() > deadline {
                    return Err("phase time bound".to_owned());
                }
                let name = format!("c{i:05}");
                admin
                    .provision("carol", &name, ("fleet", "carol"))
                    .await
                    .map(|_| name)
                    .map_err(|e| format!("{e:#}"))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let names: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let first_err = results.iter().find_map(|r| r.as_ref().err().cloned());
    lines.push(format!(
        "provisioned {} of {n} devices in {:.1} s{}",
        names.len(),
        t.elapsed().as_secs_f64(),
        first_err.map_or(String::new(), |e| format!(" (first refusal: {e})"))
    ));
    // Set up (a deployment needs it), bounded too.
    let t = Instant::now();
    let setups: Vec<Result<(), String>> = stream::iter(names.iter())
        .map(|name| {
            let carol = carol.clone();
            async move {
                if Instant::now() > deadline {
                    return Err("phase time bound".to_owned());
                }
                carol.setup(name).await.map_err(|e| format!("{e:#}"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let ok = setups.iter().filter(|r| r.is_ok()).count();
    lines.push(format!(
        "set up {ok} of {} in {:.1} s{}",
        names.len(),
        t.elapsed().as_secs_f64(),
        setups
            .iter()
            .find_map(|r| r.as_ref().err())
            .map_or(String::new(), |e| format!(" (first failure: {e})"))
    ));
    if ok == names.len() && !names.is_empty() {
        let t = Instant::now();
        match carol.deploy("fleet=carol", Some(100)).await {
            Ok(id) => lines.push(format!(
                "deployment {id} to {} offline devices created in {:.1} ms",
                names.len(),
                t.elapsed().as_secs_f64() * 1000.0
            )),
            Err(e) => lines.push(format!("deployment not created: {e:#}")),
        }
    }
    let mut metrics = Samples::default();
    let mut deps = Samples::default();
    let murl = format!("{}/metrics", ctx.base);
    let durl = format!("{}/api/v1/deployments", ctx.base);
    let end = Instant::now() + SAMPLING;
    for _ in 0..20 {
        if Instant::now() > end {
            break;
        }
        metrics.push(timed_get(&ctx.http, &murl, &ctx.admin_token).await);
        deps.push(timed_get(&ctx.http, &durl, &carol_token).await);
    }
    lines.push(format!("/metrics: {}", metrics.line()));
    lines.push(format!("GET /api/v1/deployments: {}", deps.line()));
    Ok(Outcome {
        flooder: format!("{} devices", names.len()),
        probe: format!("metrics {}; deployments {}", metrics.short(), deps.short()),
        lines,
    })
}
