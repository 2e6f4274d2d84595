//! Running as a cluster: two `hammer serve --replica` processes on one PostgreSQL and one
//! Mosquitto, behind HAProxy with `examples/cluster/haproxy.cfg` (unchanged: its addresses
//! come from the environment), three real `hammer-manager` devices, a real git repo.
//!
//! While API clients send reads and writes through HAProxy all the time:
//! 1. a fleet deployment (one device at a time, a health window each) runs while the
//!    replicas are upgraded one after the other (SIGTERM, wait for exit 0, start again,
//!    wait until HAProxy has it back), then
//! 2. a second deployment runs while the replica holding the rollout lease is SIGKILLed
//!    (and started again); another replica takes the lease over.
//!
//! Passes when no API request through HAProxy failed, every event stream a draining
//! replica ended said `event: reconnect` first, both deployments succeeded, every
//! status event a device sent (seen by an MQTT observer) is in the device's stored history
//! exactly once (and the database holds each (epoch, seq) once), no generation of a
//! device's desired state was published with two different payloads, each device started
//! each release exactly once (counted from the app's own launch log), and exactly one
//! replica reports `hammer_rollout_lease_held 1` in /metrics, the one the database names.
//!
//! Skips only when haproxy, mosquitto or PostgreSQL is missing; under `CI=true` a skip
//! fails (`.ci/run` installs them). On failure the logs' last lines are printed and the
//! folder is kept.

#[allow(dead_code)]
#[path = "../../examples/fleet-sim/src/mosquitto.rs"]
mod mosquitto;
#[path = "cluster/observer.rs"]
mod observer;
#[allow(dead_code)]
#[path = "../../service/tests/integration/pg_server.rs"]
mod pg_server;
#[path = "e2e/support.rs"]
mod support;
#[path = "cluster/traffic.rs"]
mod traffic;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};
use support::*;

/// Generous bound for anything that should take a few seconds.
const WAIT: Duration = Duration::from_secs(60);
/// `--drain-grace` of the replicas: /healthz answers 503 this long before they stop.
const DRAIN_GRACE: u64 = 3;
/// Health window of the devices' setup: keeps each device of a rollout in flight this long.
const HEALTH_WINDOW: &str = "6";
const DEVICES: [&str; 3] = ["d1", "d2", "d3"];
const REPLICAS: [&str; 2] = ["a", "b"];
/// The observer's certificate CN (read-only in the ACL).
const OBSERVER: &str = "hammer-observer";

fn have(bin: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// `METHOD path` on 127.0.0.1:`port` (HTTP/1.0, one connection): status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, String, String), String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let buf = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {buf:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// A JSON API call that must answer 2xx.
fn api(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (String, Value) {
    let (status, head, text) = http(port, method, path, Some(token), body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (head, v)
}

struct Replica {
    http: u16,
    enroll: u16,
    mqtt: u16,
    proc: Option<Proc>,
    log: PathBuf,
}

struct Cluster {
    root: PathBuf,
    hammer: PathBuf,
    manager: PathBuf,
    data: PathBuf,
    db_url: String,
    broker_url: String,
    replicas: BTreeMap<String, Replica>,
    lb: u16,
    lb_stats: u16,
    haproxy: Option<Proc>,
    managers: BTreeMap<String, Proc>,
    token: String,
}

impl Cluster {
    fn lb_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.lb)
    }

    fn start_replica(&mut self, name: &str) {
        let r = &self.replicas[name];
        let mut cmd = Command::new(&self.hammer);
        cmd.current_dir(&self.root)
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--database", &self.db_url, "--broker-url", &self.broker_url])
            .args(["--http", &format!("127.0.0.1:{}", r.http)])
            .args(["--enroll-listen", &format!("127.0.0.1:{}", r.enroll)])
            .args(["--mqtt", &format!("127.0.0.1:{}", r.mqtt)])
            .args(["--public-host", "127.0.0.1"])
            .args(["--drain-grace", &DRAIN_GRACE.to_string()])
            .args(["--replica", name])
            .env("RUST_LOG", "info,rumqttd=warn")
            .env("NO_COLOR", "1");
        let log = r.log.clone();
        let http = r.http;
        let mut p = Proc::spawn(&format!("hammer serve (replica {name})"), cmd, &log);
        wait_for(
            &format!("replica {name} to answer /healthz 200"),
            WAIT,
            |seen| {
                if !p.alive() {
                    panic!("replica {name} exited; log:\n{}", tail(&log, 40));
                }
                match http_get_path(http, "/healthz") {
                    Ok(_) => Some(()),
                    Err(e) => {
                        *seen = e;
                        None
                    }
                }
            },
        );
        self.replicas.get_mut(name).unwrap().proc = Some(p);
    }

    /// SIGTERM; checks /healthz answers 503 while the replica drains; waits for its exit.
    fn stop_replica(&mut self, name: &str) -> (ExitStatus, bool, Duration) {
        let r = self.replicas.get_mut(name).unwrap();
        let mut p = r.proc.take().expect("replica runs");
        let mut child = p.child.take().unwrap();
        let t = Instant::now();
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let mut saw_503 = false;
        let deadline = t + Duration::from_secs(DRAIN_GRACE + 30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, saw_503, t.elapsed());
            }
            if !saw_503 {
                if let Ok((503, _, _)) = http(r.http, "GET", "/healthz", None, None) {
                    saw_503 = true;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "replica {name} did not exit within {:?} of SIGTERM; log:\n{}",
                    deadline - t,
                    tail(&r.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_replica(&mut self, name: &str) {
        let r = self.replicas.get_mut(name).unwrap();
        r.proc.take().expect("replica runs").kill9();
    }

    fn start_haproxy(&mut self) {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster/haproxy.cfg");
        // The stats page (CSV) tells the test when HAProxy sees a replica up again; it is an
        // extra file so that the example runs as it is.
        let stats = self.root.join("haproxy-stats.cfg");
        std::fs::write(
            &stats,
            format!(
                "frontend test_stats\n    bind 127.0.0.1:{}\n    stats enable\n    stats uri /stats\n",
                self.lb_stats
            ),
        )
        .unwrap();
        let haproxy = have("haproxy").unwrap();
        let mut cmd = Command::new(haproxy);
        cmd.current_dir(&self.root)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .arg("-f")
            .arg(&stats)
            .env("HAMMER_LB_LISTEN", format!("127.0.0.1:{}", self.lb));
        for name in REPLICAS {
            let port = self.replicas[name].http;
            cmd.env(
                format!("HAMMER_REPLICA_{}", name.to_uppercase()),
                format!("127.0.0.1:{port}"),
            );
        }
        let log = self.root.join("haproxy.log");
        self.haproxy = Some(Proc::spawn("haproxy", cmd, &log));
        for name in REPLICAS {
            self.wait_lb_up(name);
        }
    }

    /// HAProxy's view of server `name` (UP, DOWN, ...).
    fn lb_status(&self, name: &str) -> String {
        let Ok(csv) = http_get_path(self.lb_stats, "/stats;csv") else {
            return "no stats".into();
        };
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = header.iter().position(|h| *h == "status").unwrap_or(17);
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"hammer_replicas") && f.get(1) == Some(&name))
            .and_then(|f| f.get(col).map(|s| s.to_string()))
            .unwrap_or_else(|| "missing".into())
    }

    fn wait_lb_up(&self, name: &str) {
        wait_for(&format!("HAProxy to see replica {name} UP"), WAIT, |seen| {
            *seen = self.lb_status(name);
            (seen.as_str() == "UP").then_some(())
        });
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.hammer);
        cmd.current_dir(&self.root)
            .args(args)
            .env("HAMMER_URL", self.lb_url())
            .env("HAMMER_TOKEN", &self.token)
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("HOME", &self.root)
            .env_remove("RUST_LOG");
        run_with_timeout(cmd, &self.root.join("scratch"), WAIT)
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "hammer {}: {}",
            a.join(" "),
            describe(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("hammer {}: no JSON ({e}): {}", a.join(" "), describe(&out)))
    }

    fn get(&self, path: &str) -> Value {
        api(self.lb, "GET", path, &self.token, None).1
    }

    fn deployment(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/deployments/{id}"))
    }

    /// Every entry of a device's history, oldest first (all pages).
    fn history(&self, device: &str) -> Vec<Value> {
        let mut pages = Vec::new();
        let mut path = format!("/api/v1/devices/{device}/history?limit=1000");
        loop {
            let (head, page) = api(self.lb, "GET", &path, &self.token, None);
            pages.push(page.as_array().cloned().expect("history page is an array"));
            let next = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("next-cursor")
                    .then(|| v.trim().to_owned())
            });
            match next {
                Some(c) => path = format!("/api/v1/devices/{device}/history?limit=1000&cursor={c}"),
                None => break,
            }
        }
        pages.into_iter().rev().flatten().collect()
    }

    fn start_manager(&mut self, device: &str) {
        let mut cmd = Command::new(&self.manager);
        cmd.current_dir(&self.root)
            .args(["run", "--data-dir"])
            .arg(self.root.join(format!("device-{device}")))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let log = self.root.join(format!("manager-{device}.log"));
        let p = Proc::spawn(&format!("hammer-manager {device}"), cmd, &log);
        self.managers.insert(device.to_string(), p);
    }

    /// The replica holding the rollout lease, as stored in PostgreSQL (holder, token).
    fn lease(&self, pg: &pg_server::TestPg) -> Option<(String, i64)> {
        let row = pg.sql(
            "hammer",
            "SELECT holder || '|' || token FROM leases WHERE name = 'rollout' AND expires_at > 0",
        );
        let (holder, token) = row.split_once('|')?;
        Some((holder.to_owned(), token.parse().ok()?))
    }

    /// The replica name a lease holder string names.
    fn replica_of(&self, holder: &str) -> Option<String> {
        REPLICAS
            .iter()
            .find(|r| {
                holder == **r
                    || holder == format!("hammer-service-{r}")
                    || holder.starts_with(&format!("{r}@"))
                    || holder.starts_with(&format!("{r}/"))
                    || holder.starts_with(&format!("{r}:"))
            })
            .map(|r| r.to_string())
    }

    fn launches(&self, device: &str) -> Vec<String> {
        let f = self
            .root
            .join(format!("device-{device}-apps"))
            .join("data")
            .join("launches.log");
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Creates a deployment of HEAD to the fleet, one device at a time; waits until it runs.
    fn deploy(&self) -> String {
        let d = self.cli_json(&[
            "deploy",
            "--tag",
            "group=lab",
            "--max-in-flight",
            "1",
            "--timeout",
            "120",
        ]);
        let id = d["id"].as_str().expect("deployment id").to_owned();
        wait_for("a device in flight", WAIT, |seen| {
            let d = self.deployment(&id);
            *seen = d.to_string();
            assert_eq!(d["state"], "running", "the rollout ended early: {d}");
            d["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["state"] == "in_flight"))
                .then_some(())
        });
        id
    }

    fn wait_finished(&self, id: &str) -> Value {
        wait_for(
            &format!("deployment {id} to finish"),
            Duration::from_secs(180),
            |seen| {
                let d = self.deployment(id);
                *seen = d.to_string();
                (d["state"] != "running").then_some(d)
            },
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for (_, mut m) in std::mem::take(&mut self.managers) {
            m.stop(Duration::from_secs(5));
        }
        if let Some(mut h) = self.haproxy.take() {
            h.stop(Duration::from_secs(2));
        }
        for r in self.replicas.values_mut() {
            if let Some(mut p) = r.proc.take() {
                p.stop(Duration::from_secs(DRAIN_GRACE + 5));
            }
        }
        kill_procs_under(&self.root);
        if failed {
            let mut logs: Vec<PathBuf> = self.replicas.values().map(|r| r.log.clone()).collect();
            logs.push(self.root.join("haproxy.log"));
            for d in DEVICES {
                logs.push(self.root.join(format!("manager-{d}.log")));
            }
            for p in logs {
                eprintln!(
                    "----- last lines of {} -----\n{}",
                    p.display(),
                    tail(&p, 30)
                );
            }
            eprintln!(
                "cluster folder kept for inspection: {}",
                self.root.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The app: one line per start in its own data folder (kept across releases), naming the
/// commit and generation the manager gives it; then it just runs.
const START_SH: &str = "#!/bin/sh\n\
echo \"launch $HAMMER_COMMIT $HAMMER_GENERATION $$\" >> \"$HAMMER_APP_DATA/launches.log\"\n\
exec sleep 100000\n";

fn phase_key(e: &Value) -> String {
    format!(
        "time={} phase={} generation={} deployment={}",
        e["time"], e["phase"], e["generation"], e["deployment_id"]
    )
}

#[test]
fn a_rolling_upgrade_and_a_killed_replica_drop_no_request_and_launch_nothing_twice() {
    let started = Instant::now();
    for bin in ["haproxy", "mosquitto"] {
        if have(bin).is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the cluster test cannot run: {bin} is not installed (CI=true: a skipped test fails CI; .ci/run installs it)"
            );
            eprintln!("SKIPPED: {bin} is not installed (apt-get install {bin})");
            return;
        }
    }
    let Some(pg) = pg_server::TestPg::start() else {
        return;
    };
    hammer_certs::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _rt_guard = rt.enter();

    let hammer = PathBuf::from(env!("CARGO_BIN_EXE_hammer"));
    let manager = build_manager(&hammer);
    let root = tempfile::Builder::new()
        .prefix("hammer-cluster-")
        .tempdir()
        .unwrap()
        .keep();
    let root = std::fs::canonicalize(&root).unwrap();
    // As root the apps run as hammer-app from folders in here: it must pass through.
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    for d in ["config", "scratch"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    eprintln!("cluster folder: {}", root.display());

    // The shared data dir (CA, signing key), created before the broker needs its files.
    let data = root.join("service");
    let mqtt_unused = free_port();
    let material = hammer_service::init::load_or_create(
        &data,
        Some("127.0.0.1"),
        format!("127.0.0.1:{mqtt_unused}").parse().unwrap(),
    )
    .expect("data dir");
    let observer_cert = material
        .ca
        .issue_service(OBSERVER, Duration::from_secs(24 * 3600))
        .unwrap();

    let db_url = pg.create_db("hammer");
    let mut users: Vec<(String, &str)> = REPLICAS
        .iter()
        .map(|r| (format!("hammer-service-{r}"), "readwrite"))
        .collect();
    users.push((OBSERVER.into(), "read"));
    let users: Vec<(&str, &str)> = users.iter().map(|(u, a)| (u.as_str(), *a)).collect();
    let acl = mosquitto::acl_with_users(&users);
    let mq = rt
        .block_on(mosquitto::start_with(&data, free_port(), &acl, true))
        .expect("mosquitto starts with examples/mosquitto/mosquitto.conf");
    let observer = rt.block_on(observer::Observer::start(
        &material.ca_pem,
        &observer_cert.cert_pem,
        observer_cert.key_pem.as_deref().unwrap(),
        OBSERVER,
        mq.port,
    ));

    let mut c = Cluster {
        hammer,
        manager,
        data,
        db_url,
        broker_url: mq.url(),
        replicas: REPLICAS
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    Replica {
                        http: free_port(),
                        enroll: free_port(),
                        mqtt: free_port(),
                        proc: None,
                        log: root.join(format!("replica-{r}.log")),
                    },
                )
            })
            .collect(),
        lb: free_port(),
        lb_stats: free_port(),
        haproxy: None,
        managers: BTreeMap::new(),
        token: String::new(),
        root,
    };
    // The first replica alone (it creates the admin user), then the others, then HAProxy.
    c.start_replica("a");
    c.start_replica("b");
    c.start_haproxy();
    let admin = std::fs::read_to_string(c.data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    c.token = admin;
    let user = c.cli_json(&["user", "add", "ops"]);
    c.token = user["token"].as_str().unwrap().to_owned();

    // The app repo.
    let repo = c.root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("start.sh"), START_SH).unwrap();
    std::fs::set_permissions(
        repo.join("start.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(repo.join("VERSION"), "v1\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["checkout", "-q", "-B", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v1"]);
    let v1 = git(&repo, &["rev-parse", "HEAD"]);
    let repo_url = format!("file://{}", repo.display());

    // Three devices: added through HAProxy, enrolled on the enrollment listener it names.
    let mut ids = BTreeMap::new();
    for d in DEVICES {
        let added = c.cli_json(&["device", "add", d, "--tag", "group=lab"]);
        let s = |k: &str| added[k].as_str().unwrap_or_else(|| panic!("{k}: {added}"));
        let mut cmd = Command::new(&c.manager);
        cmd.current_dir(&c.root)
            .args(["enroll", "--url", s("enroll_url"), "--token"])
            .arg(s("enrollment_token"))
            .args(["--ca-sha256", s("ca_sha256"), "--data-dir"])
            .arg(c.root.join(format!("device-{d}")));
        let out = run_with_timeout(cmd, &c.root.join("scratch"), WAIT);
        assert!(out.status.success(), "enroll {d}: {}", describe(&out));
        c.start_manager(d);
    }
    wait_for("every device online", WAIT, |seen| {
        let ds = c.get("/api/v1/devices");
        *seen = ds.to_string();
        let ds = ds.as_array().cloned().unwrap_or_default();
        for d in &ds {
            ids.insert(
                d["name"].as_str().unwrap_or_default().to_owned(),
                d["id"].as_str().unwrap_or_default().to_owned(),
            );
        }
        (ds.len() == DEVICES.len() && ds.iter().all(|d| d["online"] == true)).then_some(())
    });
    for d in DEVICES {
        let out = c.cli(&[
            "setup",
            d,
            "--repo",
            &repo_url,
            "--start",
            "./start.sh",
            "--health-window",
            HEALTH_WINDOW,
        ]);
        assert!(out.status.success(), "setup {d}: {}", describe(&out));
    }
    wait_for("every device ready", WAIT, |seen| {
        let ds = c.get("/api/v1/devices");
        *seen = ds.to_string();
        ds.as_array()
            .is_some_and(|ds| ds.iter().all(|d| d["state"] == "ready"))
            .then_some(())
    });

    // Traffic through HAProxy from here to the end.
    let traffic = traffic::Traffic::start(&c.lb_url(), &c.token, 2);
    let streams = traffic::EventStreams::start(c.lb, &c.token);
    let phase = |p: &str| {
        traffic.phase(p);
        streams.phase(p);
    };
    phase("steady");
    std::thread::sleep(Duration::from_millis(500));

    // ---- 1. a rolling upgrade during a deployment ----
    let dep1 = c.deploy();
    let mut upgrade_notes = Vec::new();
    {
        phase("rolling upgrade");
        let t = Instant::now();
        for name in REPLICAS {
            let (status, saw_503, took) = c.stop_replica(name);
            assert!(
                status.success(),
                "replica {name} exited with {status} after SIGTERM; log:\n{}",
                tail(&c.replicas[name].log, 30)
            );
            assert!(
                saw_503,
                "replica {name} never answered /healthz 503 while draining"
            );
            upgrade_notes.push(format!("{name} stopped in {took:.1?}"));
            c.start_replica(name);
            c.wait_lb_up(name);
        }
        let d = c.deployment(&dep1);
        upgrade_notes.push(format!(
            "upgrade took {:.1?}; deployment 1 then {}",
            t.elapsed(),
            d["state"]
        ));
        assert_eq!(
            d["state"], "running",
            "deployment 1 ended before the upgrade did (make the health window longer): {d}"
        );
        phase("after upgrade");
    }
    let done1 = c.wait_finished(&dep1);
    assert_eq!(done1["state"], "succeeded", "deployment 1: {done1}");
    assert_eq!(done1["commit"], v1.as_str(), "{done1}");

    // ---- 2. kill -9 the replica that drives the rollout ----
    std::fs::write(repo.join("VERSION"), "v2\n").unwrap();
    git(&repo, &["commit", "-qam", "v2"]);
    let v2 = git(&repo, &["rev-parse", "HEAD"]);
    let dep2 = c.deploy();
    let takeover;
    {
        let (holder, token) = wait_for("a rollout lease holder", WAIT, |seen| {
            let l = c.lease(&pg);
            *seen = format!("{l:?}");
            l
        });
        let victim = c.replica_of(&holder).unwrap_or_else(|| {
            eprintln!("lease holder {holder:?} names no replica; killing a");
            "a".into()
        });
        phase("kill -9");
        c.kill_replica(&victim);
        let killed = Instant::now();
        let (new_holder, new_token) = wait_for("another replica to take the lease", WAIT, |seen| {
            let l = c.lease(&pg);
            *seen = format!("{l:?}");
            l.filter(|(h, t)| *h != holder && *t > token)
        });
        takeover = (victim.clone(), new_holder, new_token, killed.elapsed());
        c.start_replica(&victim);
        c.wait_lb_up(&victim);
        phase("after kill");
    }
    let done2 = c.wait_finished(&dep2);
    assert_eq!(done2["state"], "succeeded", "deployment 2: {done2}");
    assert_eq!(done2["commit"], v2.as_str(), "{done2}");

    // Devices resend until acked: wait until every device's stored history holds what it
    // sent (and its presence ack caught up), then stop watching.
    let summary = traffic.summary();
    let upgrade_failures = traffic.failures("rolling upgrade");
    let kill_failures = traffic.failures("kill -9");
    let other_failures: Vec<_> = ["steady", "after upgrade", "after kill"]
        .iter()
        .flat_map(|p| traffic.failures(p))
        .collect();
    rt.block_on(traffic.stop());
    let stream_ends = streams.stop();

    let mut histories = BTreeMap::new();
    wait_for("every sent status event stored", WAIT, |seen| {
        let s = observer.seen.lock().unwrap();
        let mut all = true;
        for d in DEVICES {
            let h = c.history(d);
            let sent = s.status.get(&ids[d]).map(|m| m.len()).unwrap_or(0);
            if h.len() < sent {
                all = false;
                *seen = format!("{d}: {} stored, {sent} sent", h.len());
            }
            histories.insert(d, h);
        }
        all.then_some(())
    });
    let seen = observer.stop();
    let seen = seen.lock().unwrap();
    // The broker's log beside the others (its own folder goes with it).
    let _ = std::fs::copy(
        mq.dir.path().join("mosquitto.log"),
        c.root.join("mosquitto.log"),
    );

    // ---- what happened ----
    eprintln!("---- cluster test summary ({:.1?}) ----", started.elapsed());
    for (phase, (sent, failed)) in &summary {
        eprintln!("requests {phase}: {sent} sent, {failed} failed");
    }
    for n in &upgrade_notes {
        eprintln!("{n}");
    }
    let (victim, new_holder, _, took) = &takeover;
    eprintln!("killed {victim}; the lease taken by {new_holder} after {took:.1?}");
    for e in &stream_ends {
        eprintln!(
            "event stream ended [{}] {} reconnect event: {}",
            e.phase, e.status, e.reconnect
        );
    }
    eprintln!(
        "desired-state publishes {}, status publishes {} ({} distinct events)",
        seen.desired_publishes,
        seen.status_publishes,
        seen.status.values().map(|m| m.len()).sum::<usize>()
    );
    for f in upgrade_failures
        .iter()
        .chain(&kill_failures)
        .chain(&other_failures)
    {
        eprintln!(
            "FAILED {:.2?} [{}] {}: {}",
            f.at, f.phase, f.request, f.error
        );
    }

    // ---- checks ----
    assert!(
        upgrade_failures.is_empty(),
        "{} API requests failed through HAProxy during the rolling upgrade",
        upgrade_failures.len()
    );
    assert!(
        kill_failures.is_empty(),
        "{} API requests failed through HAProxy around the kill -9",
        kill_failures.len()
    );
    assert!(
        other_failures.is_empty(),
        "{} API requests failed while nothing was restarting",
        other_failures.len()
    );
    // Event streams: each one a draining replica ended said `event: reconnect` first.
    let upgrade_ends: Vec<_> = stream_ends
        .iter()
        .filter(|e| e.phase == "rolling upgrade")
        .collect();
    assert!(
        !upgrade_ends.is_empty(),
        "no event stream ended while both replicas were restarted"
    );
    for e in &upgrade_ends {
        assert!(
            e.status.contains(" 200 ") && e.reconnect,
            "an event stream ended during the rolling upgrade without `event: reconnect`: {e:?}"
        );
    }
    let sent_total: u64 = summary.values().map(|(s, _)| s).sum();
    assert!(sent_total > 100, "too little traffic: {summary:?}");
    assert!(seen.problems.is_empty(), "observer: {:?}", seen.problems);
    if seen.reconnects > 0 {
        eprintln!(
            "the observer reconnected {} time(s) and found its session each time",
            seen.reconnects
        );
    }

    // One generation, one payload.
    let two: Vec<_> = seen.desired.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(
        two.is_empty(),
        "generations published with different payloads: {two:?}"
    );
    for d in DEVICES {
        let id = &ids[d];
        // Each sent event in the stored history exactly once, nothing else stored.
        let sent: BTreeMap<(u64, u64), String> = seen
            .status
            .get(id)
            .map(|m| {
                m.iter()
                    .map(|(k, e)| (*k, phase_key(&serde_json::to_value(e).unwrap())))
                    .collect()
            })
            .unwrap_or_default();
        assert!(!sent.is_empty(), "{d} sent no status events");
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for k in sent.values() {
            *want.entry(k.clone()).or_default() += 1;
        }
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for e in &histories[d] {
            *got.entry(phase_key(e)).or_default() += 1;
        }
        assert_eq!(
            got, want,
            "{d}: the stored history is not exactly the events it sent"
        );
        // The database: each (epoch, seq) once, and exactly those sent.
        let rows = pg.sql(
            "hammer",
            &format!(
                "SELECT epoch || ' ' || seq FROM status_events WHERE device_id = '{id}' ORDER BY ord"
            ),
        );
        let stored: Vec<(u64, u64)> = rows
            .lines()
            .map(|l| {
                let (e, s) = l.split_once(' ').unwrap();
                let unshift = |v: &str| (v.parse::<i64>().unwrap() as u64) ^ (1 << 63);
                (unshift(e), unshift(s))
            })
            .collect();
        let distinct: BTreeSet<_> = stored.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            stored.len(),
            "{d}: stored twice: {stored:?}"
        );
        assert_eq!(
            distinct,
            sent.keys().copied().collect::<BTreeSet<_>>(),
            "{d}: stored (epoch, seq) differ from those sent"
        );
        // Each release started once on each device.
        let launches = c.launches(d);
        for (release, commit) in [("v1", &v1), ("v2", &v2)] {
            let n = launches
                .iter()
                .filter(|l| l.starts_with(&format!("launch {commit} ")))
                .count();
            assert_eq!(n, 1, "{d} started {release} {n} times: {launches:?}");
        }
        assert_eq!(launches.len(), 2, "{d} launches: {launches:?}");
    }
    // /metrics: exactly one replica says it holds the lease, the one the database names.
    wait_for(
        "one replica reporting the lease in /metrics",
        WAIT,
        |seen| {
            let held: Vec<&str> = REPLICAS
                .iter()
                .copied()
                .filter(|r| {
                    http_get_path(c.replicas[*r].http, "/metrics")
                        .is_ok_and(|m| m.lines().any(|l| l.trim() == "hammer_rollout_lease_held 1"))
                })
                .collect();
            let db = c.lease(&pg).and_then(|(h, _)| c.replica_of(&h));
            *seen = format!("/metrics: {held:?}, database: {db:?}");
            (held.len() == 1 && db.as_deref() == Some(held[0])).then_some(())
        },
    );
    eprintln!("passed in {:.1?}", started.elapsed());
    drop(c);
    drop(mq);
    drop(pg);
}
