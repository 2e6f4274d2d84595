//! The cluster part of `rollout-bench --cluster`: two replicas of `hammer serve`
//! (`--replica a`, `--replica b`) as child processes on one shared data dir, one throwaway
//! PostgreSQL ([`crate::pg_server`], the service tests' own) and one Mosquitto whose ACL lists
//! both replicas' identities (`hammer-service-a`, `hammer-service-b`).
//!
//! Devices are provisioned, set up and deployed to through replica **b**, while replica **a**
//! (started first, so it takes the rollout lease) drives deployments: every engine request
//! crosses replicas. Measured: the all-at-once and the batched rollout, and a replica
//! failure mid-rollout (the cluster form of the reconnect storm): the replica holding the
//! rollout lease (as PostgreSQL's `leases` table says) is SIGKILLed and started again; timed
//! from the kill are the lease's takeover, the restart, every device terminal, the deployment
//! done with every target succeeded, and every status event acked. After each phase the
//! number of rows in `status_events` is compared with the events the simulated devices sent
//! (all acked): each is stored exactly once, or the difference is reported.
//!
//! CPU and RSS come from `/proc`: both replicas, Mosquitto, PostgreSQL (the postmaster and its
//! children; their RSS summed, so shared buffers count once per process) and the simulator.

use crate::api::Api;
use crate::bench::{bring_up, rollout, Fleet, RolloutReport};
use crate::device::SimConfig;
use crate::fleet;
use crate::mosquitto::{self, Mosquitto};
use crate::pg_server::TestPg;
use crate::procstat::{cpu_time, rss_kib};
use crate::service_proc::{log_tail, ServeSpec, ServiceProc, StopSignal};
use anyhow::{anyhow, bail, Context};
use hammer_protocol::api::{DeploymentState, TargetState};
use hammer_protocol::WireName;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The database the replicas share.
const DB: &str = "hammer";
/// The two replicas: the first one started takes the rollout lease.
const REPLICAS: [&str; 2] = ["a", "b"];

/// What the cluster part needs from the bench's arguments.
pub struct Opts<'a> {
    pub bin: &'a Path,
    /// The work dir: the shared data dir and the replicas' logs go here.
    pub work: &'a Path,
    pub devices: usize,
    pub ramp: f64,
    pub batch: u32,
    pub sim: Arc<SimConfig>,
    /// `RUST_LOG` of the replicas.
    pub service_log: String,
    /// Run the replica failure mid-rollout.
    pub storm: bool,
    /// The lease holder is killed once this fraction of the devices got the rollout's
    /// desired state (1.0: all of them, as the embedded storm does).
    pub kill_after: f64,
}

/// The cluster's figures.
#[derive(Debug, Clone)]
pub struct Report {
    pub all_at_once: RolloutReport,
    pub batched: RolloutReport,
    pub failover: Option<Failover>,
    /// Phases after which PostgreSQL did not hold exactly the events the devices sent.
    pub mismatches: Vec<String>,
}

/// The replica failure mid-rollout; durations from the SIGKILL.
#[derive(Debug, Clone)]
pub struct Failover {
    pub devices: usize,
    /// The replica that held the lease and was killed.
    pub killed: String,
    /// Devices that had published their terminal phase when it was killed.
    pub finished_at_kill: usize,
    /// Who holds the lease after the kill, and when the lease row first changed.
    pub taken_by: String,
    pub takeover: Duration,
    /// The killed replica, started again, answered `/healthz`.
    pub restarted: Duration,
    /// The last device published its terminal phase.
    pub all_terminal: Duration,
    /// The service showed the deployment ended (`state`), with `targets_succeeded` of
    /// `devices` targets succeeded.
    pub service_done: Duration,
    pub state: String,
    pub targets_succeeded: usize,
    /// Every status event a device sent was acked.
    pub all_acked: Duration,
    /// max(all terminal, service done, all acked): the rollout is over and confirmed.
    pub recovered: Duration,
    pub events_sent: u64,
    pub events_stored: u64,
    pub events_resent: u64,
    /// (device, generation) pairs with more than one terminal phase: launched twice.
    pub launched_twice: usize,
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The throwaway PostgreSQL, queried with psql on a blocking thread (its helpers panic on
/// failure: caught here and turned into errors).
#[derive(Clone)]
struct Db {
    pg: Arc<TestPg>,
}

/// The `leases` row of the rollout lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    holder: String,
    token: i64,
    expires_at: i64,
}

impl Db {
    async fn sql(&self, q: &str) -> anyhow::Result<String> {
        let pg = self.pg.clone();
        let q = q.to_owned();
        tokio::task::spawn_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| pg.sql(DB, &q)))
                .map_err(|p| anyhow!("PostgreSQL query failed: {}", panic_text(&*p)))
        })
        .await
        .context("the query thread failed")?
    }

    async fn events_stored(&self) -> anyhow::Result<u64> {
        let s = self.sql("SELECT count(*) FROM status_events").await?;
        s.parse()
            .with_context(|| format!("count(*) of status_events answered {s:?}"))
    }

    /// The rollout lease's row (expired or not), if any.
    async fn lease(&self) -> anyhow::Result<Option<Lease>> {
        let s = self
            .sql("SELECT holder || ' ' || token || ' ' || expires_at FROM leases WHERE name = 'rollout'")
            .await?;
        if s.is_empty() {
            return Ok(None);
        }
        let mut it = s.split_whitespace();
        let (Some(holder), Some(token), Some(expires_at)) = (it.next(), it.next(), it.next())
        else {
            bail!("unexpected leases row {s:?}");
        };
        // The holder is `NAME@INCARNATION` (one per process start): the replica's name.
        let holder = holder.split('@').next().unwrap_or(holder);
        Ok(Some(Lease {
            holder: holder.to_owned(),
            token: token.parse().with_context(|| format!("leases row {s:?}"))?,
            expires_at: expires_at
                .parse()
                .with_context(|| format!("leases row {s:?}"))?,
        }))
    }

    /// The holder of a valid (unexpired) rollout lease.
    async fn holder(&self) -> anyhow::Result<Option<String>> {
        let now = hammer_protocol::now_ms() as i64;
        Ok(self
            .lease()
            .await?
            .filter(|l| l.expires_at > now)
            .map(|l| l.holder))
    }

    /// The postmaster's pid: the parent of this connection's backend.
    async fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let s = self.sql("SELECT pg_backend_pid()").await?;
        let backend: u32 = s
            .parse()
            .with_context(|| format!("pg_backend_pid() answered {s:?}"))?;
        ppid(backend).with_context(|| format!("cannot read the parent of backend {backend}"))
    }
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn ppid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and its children (one level: the postmaster's backends and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut v = vec![pid];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if ppid(p) == Some(pid) {
                v.push(p);
            }
        }
    }
    v
}

/// The processes of the cluster, by name.
struct Procs {
    replicas: [Option<u32>; 2],
    mosquitto: Option<u32>,
    postmaster: Option<u32>,
}

impl Procs {
    fn groups(&self) -> Vec<(String, Vec<u32>)> {
        let mut g = Vec::new();
        for (name, pid) in REPLICAS.iter().zip(self.replicas) {
            g.push((format!("replica {name}"), pid.into_iter().collect()));
        }
        g.push(("mosquitto".into(), self.mosquitto.into_iter().collect()));
        if let Some(pm) = self.postmaster {
            g.push(("PostgreSQL".into(), with_children(pm)));
        }
        g
    }
}

/// CPU used by groups of processes over a span, and their RSS at its end. A process that
/// appears during the span (a restarted replica, a new backend) counts from zero; one that
/// is gone at the end (a killed replica) is not counted.
struct Span {
    at: Instant,
    start: HashMap<u32, Duration>,
    sim: Duration,
}

impl Span {
    fn new(procs: &Procs) -> Span {
        let start = procs
            .groups()
            .into_iter()
            .flat_map(|(_, pids)| pids)
            .map(|p| (p, cpu_time(&p.to_string())))
            .collect();
        Span {
            at: Instant::now(),
            start,
            sim: cpu_time("self"),
        }
    }

    fn print(&self, label: &str, procs: &Procs) {
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        let mut parts = Vec::new();
        for (name, pids) in procs.groups() {
            let mut cpu = Duration::ZERO;
            let mut rss = 0;
            for p in &pids {
                let ps = p.to_string();
                cpu += cpu_time(&ps).saturating_sub(self.start.get(p).copied().unwrap_or_default());
                rss += rss_kib(&ps);
            }
            let procs_note = if pids.len() > 1 {
                format!(" ({} processes, RSS summed)", pids.len())
            } else {
                String::new()
            };
            parts.push(format!(
                "{name} CPU {:.2} s ({:.0}%), RSS {} MiB{procs_note}",
                cpu.as_secs_f64(),
                100.0 * cpu.as_secs_f64() / wall,
                rss / 1024
            ));
        }
        let sim = cpu_time("self").saturating_sub(self.sim);
        parts.push(format!(
            "simulator CPU {:.2} s ({:.0}%), RSS {} MiB",
            sim.as_secs_f64(),
            100.0 * sim.as_secs_f64() / wall,
            rss_kib("self") / 1024
        ));
        println!("  {label}: {} ({wall:.1} s wall)", parts.join("; "));
    }
}

/// Starts the throwaway PostgreSQL. Must run on a thread that lives as long as the cluster
/// (its processes die with the thread that started them): the bench's main thread.
/// `Ok(None)`: PostgreSQL cannot run here (the reason was printed).
pub fn start_postgres() -> anyhow::Result<Option<Arc<TestPg>>> {
    match catch_unwind(TestPg::start) {
        Ok(Some(pg)) => Ok(Some(Arc::new(pg))),
        Ok(None) => Ok(None),
        Err(p) => Err(anyhow!(
            "the throwaway PostgreSQL did not start: {}",
            panic_text(&*p)
        )),
    }
}

/// Everything running for the cluster; the replicas are killed when it is dropped.
struct Cluster {
    db: Db,
    mq: Mosquitto,
    specs: [ServeSpec; 2],
    svcs: [Option<ServiceProc>; 2],
}

impl Cluster {
    fn procs(&self, postmaster: Option<u32>) -> Procs {
        Procs {
            replicas: [
                self.svcs[0].as_ref().map(|s| s.pid()),
                self.svcs[1].as_ref().map(|s| s.pid()),
            ],
            mosquitto: self.mq.pid(),
            postmaster,
        }
    }

    fn svc(&self, i: usize) -> anyhow::Result<&ServiceProc> {
        self.svcs[i]
            .as_ref()
            .with_context(|| format!("replica {} is not running", REPLICAS[i]))
    }

    /// The last lines of both replicas' logs.
    fn log_tails(&self, n: usize) -> String {
        let mut s = String::new();
        for spec in &self.specs {
            s.push_str(&format!(
                "---- last {n} lines of {}:\n{}\n",
                spec.log.display(),
                log_tail(&spec.log, n)
            ));
        }
        let mq_log = self.mq.dir.path().join("mosquitto.log");
        s.push_str(&format!(
            "---- last {n} lines of mosquitto's log:\n{}\n",
            log_tail(&mq_log, n)
        ));
        s
    }
}

/// Runs the cluster part on the PostgreSQL `pg` (see [`start_postgres`]).
pub async fn run(opts: &Opts<'_>, pg: Arc<TestPg>) -> anyhow::Result<Report> {
    let db = Db { pg: pg.clone() };
    let url = {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| pg.create_db(DB)))
                .map_err(|p| anyhow!("cannot create the database: {}", panic_text(&*p)))
        })
        .await??
    };
    println!(
        "[cluster] PostgreSQL on 127.0.0.1:{} (throwaway cluster, fsync off), database {DB}",
        pg.port
    );
    let data = opts.work.join("cluster-data");
    let mut specs = Vec::new();
    for name in REPLICAS {
        let mut spec = ServeSpec::new(
            opts.bin,
            data.clone(),
            opts.work.join(format!("service-replica-{name}.log")),
            &opts.service_log,
        )?;
        spec.database = Some(url.clone());
        spec.replica = Some(name.to_owned());
        specs.push(spec);
    }
    let [spec_a, spec_b]: [ServeSpec; 2] = specs
        .try_into()
        .map_err(|_| anyhow!("two replica specs expected"))?;
    hammer_service::init::load_or_create(&data, Some("127.0.0.1"), spec_a.mqtt)
        .context("cannot initialise the cluster's data dir")?;
    let users: Vec<(String, &str)> = REPLICAS
        .iter()
        .map(|n| (format!("hammer-service-{n}"), "readwrite"))
        .collect();
    let users: Vec<(&str, &str)> = users.iter().map(|(u, a)| (u.as_str(), *a)).collect();
    let acl = mosquitto::acl_with_users(&users);
    let mq = mosquitto::start_with(&data, mosquitto::free_port()?, &acl, true).await?;
    println!(
        "[cluster] mosquitto pid {} on {} (ACL with hammer-service-a and -b), log {}",
        mq.pid().unwrap_or(0),
        mq.url(),
        mq.dir.path().join("mosquitto.log").display()
    );
    let mut c = Cluster {
        db,
        mq,
        specs: [spec_a, spec_b],
        svcs: [None, None],
    };
    for s in &mut c.specs {
        s.broker_url = Some(c.mq.url());
    }
    let r = run_in(opts, &mut c).await;
    if let Err(e) = &r {
        eprintln!("[cluster] failed: {e:#}\n{}", c.log_tails(40));
    }
    for (i, svc) in c.svcs.iter_mut().enumerate() {
        if let Some(svc) = svc.take() {
            let pid = svc.pid();
            match svc.stop(StopSignal::Term).await {
                Ok((took, clean)) => println!(
                    "[cluster] replica {} (pid {pid}) stopped with SIGTERM in {:.2} s{}",
                    REPLICAS[i],
                    took.as_secs_f64(),
                    if clean {
                        ""
                    } else {
                        " (unclean exit: see its log)"
                    }
                ),
                Err(e) => eprintln!("[cluster] replica {}: {e:#}", REPLICAS[i]),
            }
        }
    }
    r
}

async fn run_in(opts: &Opts<'_>, c: &mut Cluster) -> anyhow::Result<Report> {
    let n = opts.devices;
    // The first replica alone (it creates the admin user and takes the lease), then the other.
    let a = start_replica(&c.specs[0]).await?;
    c.svcs[0] = Some(a);
    let t = Instant::now();
    loop {
        if c.db.holder().await?.as_deref() == Some(REPLICAS[0]) {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!(
                "replica a did not take the rollout lease within 30 s (lease row: {:?})",
                c.db.lease().await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "[cluster] replica a holds the rollout lease ({:.2} s after /healthz)",
        t.elapsed().as_secs_f64()
    );
    let b = start_replica(&c.specs[1]).await?;
    c.svcs[1] = Some(b);
    let postmaster = match c.db.postmaster_pid().await {
        Ok(p) => Some(p),
        Err(e) => {
            println!("[cluster] PostgreSQL's CPU and RSS are not reported: {e:#}");
            None
        }
    };

    // Everything is asked of b; a drives deployments.
    let f = bring_up("cluster", c.svc(1)?, n, opts.ramp, opts.sim.clone(), None).await?;
    let mut mismatches = Vec::new();
    let all_at_once = cluster_rollout(
        "cluster, all at once",
        c,
        &f,
        None,
        postmaster,
        &mut mismatches,
    )
    .await?;
    let batched = cluster_rollout(
        "cluster, batched",
        c,
        &f,
        Some(opts.batch),
        postmaster,
        &mut mismatches,
    )
    .await?;
    let failover = if opts.storm {
        Some(failover(opts, c, &f, postmaster, &mut mismatches).await?)
    } else {
        None
    };
    drop(f);
    Ok(Report {
        all_at_once,
        batched,
        failover,
        mismatches,
    })
}

async fn start_replica(spec: &ServeSpec) -> anyhow::Result<ServiceProc> {
    let name = spec.replica.as_deref().unwrap_or("?");
    println!(
        "[cluster] replica {name}: hammer serve --replica {name} --database (PostgreSQL) --broker-url {}: http {}, log {}",
        spec.broker_url.as_deref().unwrap_or("?"),
        spec.http,
        spec.log.display()
    );
    let svc = ServiceProc::start(spec)
        .await
        .with_context(|| format!("replica {name} did not start"))?;
    println!(
        "[cluster] replica {name} pid {} answered /healthz after {:.2} s",
        svc.pid(),
        svc.started_in.as_secs_f64()
    );
    Ok(svc)
}

/// Waits until every event the devices sent is acked (up to `within`), then compares the
/// rows of `status_events` with the events sent. Returns (sent, stored).
async fn check_stored_once(
    label: &str,
    db: &Db,
    f: &Fleet,
    within: Duration,
    mismatches: &mut Vec<String>,
) -> anyhow::Result<(u64, u64)> {
    let s = &f.stats;
    let acked = fleet::wait_for(within, "every status event acked", || {
        s.events_acked.load(Relaxed) >= s.events_sent.load(Relaxed)
    })
    .await;
    let stored = db.events_stored().await?;
    let sent = s.events_sent.load(Relaxed);
    let unacked: usize = f.devices.iter().map(|d| d.unacked()).sum();
    let verdict = if stored == sent && acked.is_ok() {
        "each stored exactly once".to_owned()
    } else {
        let m = format!(
            "{label}: status events sent {sent}, rows in status_events {stored}, unacked {unacked}{}",
            if acked.is_err() { " (not all acked)" } else { "" }
        );
        mismatches.push(m);
        if stored < sent {
            format!("MISMATCH: {} missing", sent - stored)
        } else {
            format!("MISMATCH: {} more rows than events sent", stored - sent)
        }
    };
    println!(
        "  {label}: status events sent {sent} (all rollouts so far), rows in PostgreSQL's status_events {stored}: {verdict}; unacked {unacked}, resent by the devices {}",
        s.events_resent.load(Relaxed)
    );
    Ok((sent, stored))
}

/// One measured rollout through replica b; events stored are counted in PostgreSQL.
async fn cluster_rollout(
    label: &str,
    c: &Cluster,
    f: &Fleet,
    max_in_flight: Option<u32>,
    postmaster: Option<u32>,
    mismatches: &mut Vec<String>,
) -> anyhow::Result<RolloutReport> {
    let before = c.db.events_stored().await?;
    let span = Span::new(&c.procs(postmaster));
    let mut r = rollout(
        &f.user,
        &f.admin,
        &f.run,
        f.devices.len(),
        max_in_flight,
        &f.stats,
        Duration::from_secs(900),
    )
    .await
    .with_context(|| format!("{label} did not finish"))?;
    let after = c.db.events_stored().await?;
    r.events_stored = after.saturating_sub(before);
    r.events_per_sec = r.events_stored as f64 / r.all_done.as_secs_f64().max(1e-3);
    r.print(label);
    span.print("resources during the rollout", &c.procs(postmaster));
    check_stored_once(label, &c.db, f, Duration::from_secs(60), mismatches).await?;
    Ok(r)
}

/// A rollout through b; the lease holder is SIGKILLed mid-rollout and started again.
async fn failover(
    opts: &Opts<'_>,
    c: &mut Cluster,
    f: &Fleet,
    postmaster: Option<u32>,
    mismatches: &mut Vec<String>,
) -> anyhow::Result<Failover> {
    let n = f.devices.len();
    let s = &f.stats;
    s.finishes(true);
    let want = s.desired_received.load(Relaxed)
        + ((n as f64 * opts.kill_after.clamp(0.0, 1.0)).ceil() as u64).max(1);
    let id = f.user.deploy(&format!("fleet={}", f.run), None).await?;
    fleet::wait_for(
        Duration::from_secs(300),
        "the devices to receive the failover rollout's desired state",
        || s.desired_received.load(Relaxed) >= want,
    )
    .await
    .with_context(|| s.line())?;
    let holder =
        c.db.holder()
            .await?
            .context("nobody holds the rollout lease mid-rollout")?;
    let victim = REPLICAS
        .iter()
        .position(|r| *r == holder)
        .with_context(|| format!("the lease holder {holder:?} is not one of our replicas"))?;
    let survivor = 1 - victim;
    let survivor_api = Api::new(&c.svc(survivor)?.http_url, &f.token)?;
    let span = Span::new(&c.procs(postmaster));
    let svc = c.svcs[victim]
        .take()
        .context("the lease holder is not running")?;
    let victim_pid = svc.pid();
    let t0 = Instant::now();
    let finished_at_kill = s.finishes(false).len();
    svc.stop(StopSignal::Kill).await?;
    let gone = t0.elapsed();
    let baseline = c.db.lease().await?;
    println!(
        "[cluster] failover: replica {holder} (pid {victim_pid}, lease holder) SIGKILLed mid-rollout ({finished_at_kill} of {n} devices terminal, {} desired states received), gone after {:.2} s; lease row then {baseline:?}",
        s.desired_received.load(Relaxed),
        gone.as_secs_f64()
    );

    // Concurrently: the killed replica restarts; the lease changes hands; the rollout ends.
    let restart = async {
        let r = ServiceProc::start(&c.specs[victim]).await;
        (r, t0.elapsed())
    };
    let db = c.db.clone();
    let takeover = async {
        loop {
            let now = db.lease().await?;
            if let Some(l) = &now {
                if Some(l) != baseline.as_ref() {
                    return anyhow::Ok((l.holder.clone(), t0.elapsed()));
                }
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("the rollout lease did not change hands within 120 s: {now:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let done = async {
        let mut service_done: Option<(Duration, String, usize)> = None;
        let mut terminal: Option<Duration> = None;
        let end = t0 + Duration::from_secs(600);
        let mut next_poll = Instant::now();
        loop {
            if terminal.is_none() {
                let fin = s.finishes(false);
                let uniq: std::collections::HashSet<usize> = fin.iter().map(|f| f.index).collect();
                if uniq.len() >= n {
                    let last = fin.iter().map(|f| f.at).max().unwrap_or(t0);
                    terminal = Some(last.saturating_duration_since(t0));
                }
            }
            if service_done.is_none() && Instant::now() >= next_poll {
                next_poll = Instant::now() + Duration::from_millis(250);
                // The survivor answers throughout; an error (e.g. a 503 while the lease
                // changes hands) is retried.
                if let Ok(d) = survivor_api.deployment(&id).await {
                    if d.state != DeploymentState::Running {
                        let ok = d
                            .targets
                            .iter()
                            .filter(|t| t.state == TargetState::Succeeded)
                            .count();
                        service_done = Some((t0.elapsed(), d.state.wire_name().to_owned(), ok));
                    }
                }
            }
            if let (Some(t), Some(d)) = (terminal, service_done.clone()) {
                return anyhow::Ok((t, d));
            }
            if Instant::now() > end {
                bail!(
                    "deployment {id}: not over 600 s after the kill (devices terminal: {terminal:?}, service: {service_done:?}; {})",
                    s.line()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((restarted, restarted_in), takeover, done) = tokio::join!(restart, takeover, done);
    let svc = restarted.with_context(|| format!("replica {holder} did not start again"))?;
    println!(
        "[cluster] failover: replica {holder} restarted (pid {}), /healthz {:.2} s after the kill",
        svc.pid(),
        restarted_in.as_secs_f64()
    );
    c.svcs[victim] = Some(svc);
    let (taken_by, took) = takeover?;
    let (all_terminal, (service_done, state, targets_succeeded)) = done?;
    fleet::wait_for(Duration::from_secs(120), "every event to be acked", || {
        s.events_acked.load(Relaxed) >= s.events_sent.load(Relaxed)
    })
    .await
    .with_context(|| s.line())?;
    let all_acked = t0.elapsed();
    let recovered = all_terminal.max(service_done).max(all_acked);
    println!(
        "reconnect storm, cluster form: {n} devices, lease holder replica {holder} SIGKILLed mid-rollout and restarted: lease taken by replica {taken_by} {:.2} s after the kill; replica {holder} answering /healthz again after {:.2} s; all devices terminal after {:.2} s; deployment {state} ({targets_succeeded} of {n} targets succeeded) on replica {} after {:.2} s; every event acked after {:.2} s: over and confirmed {:.2} s after the kill",
        took.as_secs_f64(),
        restarted_in.as_secs_f64(),
        all_terminal.as_secs_f64(),
        REPLICAS[survivor],
        service_done.as_secs_f64(),
        all_acked.as_secs_f64(),
        recovered.as_secs_f64(),
    );
    span.print("resources during the failover", &c.procs(postmaster));
    let mut per_gen = HashMap::new();
    for f in s.finishes(false) {
        *per_gen.entry((f.index, f.generation)).or_insert(0u32) += 1;
    }
    let launched_twice = per_gen.values().filter(|c| **c > 1).count();
    let (sent, stored) = check_stored_once(
        "after the failover",
        &c.db,
        f,
        Duration::from_secs(60),
        mismatches,
    )
    .await?;
    println!(
        "  after the failover: {launched_twice} devices finished the same generation twice (launched twice)"
    );
    if state != DeploymentState::Succeeded.wire_name() || targets_succeeded != n {
        mismatches.push(format!(
            "failover: deployment {id} ended {state} with {targets_succeeded} of {n} targets succeeded"
        ));
    }
    Ok(Failover {
        devices: n,
        killed: holder,
        finished_at_kill,
        taken_by,
        takeover: took,
        restarted: restarted_in,
        all_terminal,
        service_done,
        state,
        targets_succeeded,
        all_acked,
        recovered,
        events_sent: sent,
        events_stored: stored,
        events_resent: s.events_resent.load(Relaxed),
        launched_twice,
    })
}
