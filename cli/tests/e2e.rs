//! End-to-end test of the whole system (issue 6): the real `hammer` and `hammer-manager`
//! binaries as separate processes, on loopback only, in a temporary folder.
//!
//! 1. serve; users alice and bob; alice adds d1 and d2 (tag group=lab); two managers enroll
//!    and connect.
//! 2. setup + `deploy --tag group=lab --wait`: both run v1.
//! 3. commit v2, deploy in two phases with a soak: d1 runs v2, then d2 once d1 stayed
//!    healthy for the soak; history shows two deployments by alice.
//! 4. commit a broken v3 (exits at once): the deployment fails, both devices ran v3, rolled
//!    back to v2, and v2 answers again; history shows the rollback.
//! 5. bob sees no devices; every bob command against d1 fails as not found.
//! 6. kill -9 the service during a rollout (v3 reverted, so the app answers v2), start it
//!    again: the rollout completes.
//! 7. kill -9 a manager, start it again: its app is still v2, exactly one app process runs.
//! 8. `hammer device remove d2`: the d2 manager is disconnected within a second and cannot
//!    reconnect.
//!
//! `hammer-manager` is taken from the folder of `hammer`, built with `cargo build -p
//! hammer-manager` when it is missing or older than its sources. On failure the logs' last lines are printed and the
//! folder is kept.

#[path = "e2e/support.rs"]
mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::*;

/// Generous bound for anything that should happen in a few seconds.
const WAIT: Duration = Duration::from_secs(60);
/// Bound for a whole `deploy --wait`.
const DEPLOY_WAIT: Duration = Duration::from_secs(150);
/// Health window given to the devices at setup.
const HEALTH_WINDOW: &str = "2";

struct World {
    root: PathBuf,
    hammer: PathBuf,
    manager: PathBuf,
    http: u16,
    mqtt: u16,
    service: Option<Proc>,
    managers: BTreeMap<String, Proc>,
    app_ports: BTreeMap<String, u16>,
    admin: String,
}

impl World {
    fn new() -> World {
        let hammer = PathBuf::from(env!("CARGO_BIN_EXE_hammer"));
        let manager = build_manager(&hammer);
        let root = tempfile::Builder::new()
            .prefix("hammer-e2e-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let root = std::fs::canonicalize(&root).unwrap();
        // As root the manager runs the app as hammer-app from `device-X-apps` beside the data
        // dir: that user must pass through the test folder (as through /var/lib on a device).
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .unwrap();
        for d in ["config", "scratch"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        eprintln!("e2e folder: {}", root.display());
        World {
            root,
            hammer,
            manager,
            http: free_port(),
            mqtt: free_port(),
            service: None,
            managers: BTreeMap::new(),
            app_ports: BTreeMap::new(),
            admin: String::new(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn start_service(&mut self) {
        let mut cmd = Command::new(&self.hammer);
        cmd.current_dir(&self.root)
            .args(["serve", "--data-dir"])
            .arg(self.root.join("service"))
            .args(["--http", &format!("127.0.0.1:{}", self.http)])
            .args(["--mqtt", &format!("127.0.0.1:{}", self.mqtt)])
            .args(["--enroll-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info,rumqttd=warn")
            .env("NO_COLOR", "1");
        let log = self.root.join("service.log");
        self.service = Some(Proc::spawn("hammer serve", cmd, &log));
        let http = self.http;
        let svc = self.service.as_mut().unwrap();
        wait_for("the service to answer /healthz", WAIT, |seen| {
            if !svc.alive() {
                panic!("hammer serve exited; log:\n{}", tail(&log, 40));
            }
            match http_get_path(http, "/healthz") {
                Ok(_) => Some(()),
                Err(e) => {
                    *seen = e;
                    None
                }
            }
        });
        let token_file = self.root.join("service").join("admin.token");
        self.admin = wait_for("admin.token", WAIT, |seen| {
            let t = std::fs::read_to_string(&token_file).unwrap_or_default();
            *seen = format!("{} bytes", t.len());
            (!t.trim().is_empty()).then(|| t.trim().to_string())
        });
    }

    /// Runs `hammer ARGS` with the given token (none: the saved login is used).
    fn cli(&self, token: Option<&str>, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = Command::new(&self.hammer);
        cmd.current_dir(&self.root)
            .args(args)
            .env("HAMMER_URL", self.url())
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("HOME", &self.root)
            .env_remove("RUST_LOG")
            .env_remove("HAMMER_TOKEN");
        if let Some(t) = token {
            cmd.env("HAMMER_TOKEN", t);
        }
        run_with_timeout(cmd, &self.root.join("scratch"), timeout)
    }

    /// Starts a long-running `hammer ARGS` (events, logs -f) with output to `log`.
    fn spawn_cli(&self, token: &str, args: &[&str], log: &str) -> Proc {
        let mut cmd = Command::new(&self.hammer);
        cmd.current_dir(&self.root)
            .args(args)
            .env("HAMMER_URL", self.url())
            .env("HAMMER_TOKEN", token)
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env_remove("RUST_LOG");
        Proc::spawn(
            &format!("hammer {}", args.join(" ")),
            cmd,
            &self.root.join(log),
        )
    }

    /// `hammer ARGS` that must succeed; returns stdout.
    fn ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli(Some(token), args, WAIT);
        assert!(
            out.status.success(),
            "hammer {} failed: {}",
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `hammer --json ARGS` that must succeed; returns the JSON.
    fn json(&self, token: &str, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(token, &a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("hammer {} printed no JSON ({e}): {out}", a.join(" ")))
    }

    fn data_dir(&self, device: &str) -> PathBuf {
        self.root.join(format!("device-{device}"))
    }

    fn enroll(&self, device: &str, enroll_args: &[String]) {
        let mut cmd = Command::new(&self.manager);
        cmd.current_dir(&self.root)
            .args(enroll_args)
            .arg("--data-dir")
            .arg(self.data_dir(device));
        let out = run_with_timeout(cmd, &self.root.join("scratch"), WAIT);
        assert!(
            out.status.success(),
            "hammer-manager {} failed: {}",
            enroll_args.join(" "),
            describe(&out)
        );
    }

    fn start_manager(&mut self, device: &str) {
        let mut cmd = Command::new(&self.manager);
        cmd.current_dir(&self.root)
            .args(["run", "--data-dir"])
            .arg(self.data_dir(device))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let log = self.root.join(format!("manager-{device}.log"));
        let p = Proc::spawn(&format!("hammer-manager {device}"), cmd, &log);
        self.managers.insert(device.to_string(), p);
    }

    fn manager_pid(&self, device: &str) -> u32 {
        self.managers[device].pid()
    }

    fn devices(&self, token: &str) -> Vec<Value> {
        self.json(token, &["device", "list"])
            .as_array()
            .cloned()
            .expect("device list is an array")
    }

    fn wait_device(&self, token: &str, name: &str, what: &str, pred: impl Fn(&Value) -> bool) {
        wait_for(&format!("{name} to be {what}"), WAIT, |seen| {
            let d = self.json(token, &["device", "show", name]);
            *seen = d.to_string();
            pred(&d).then_some(())
        });
    }

    /// Waits until the app of `device` answers `hello from hammer {version}`.
    fn wait_app(&self, device: &str, version: &str) {
        let port = self.app_ports[device];
        let want = format!("hello from hammer {version}");
        wait_for(
            &format!("{device}'s app to answer {want:?}"),
            WAIT,
            |seen| match http_get(port) {
                Ok(body) if body == want => Some(()),
                Ok(body) => {
                    *seen = body;
                    None
                }
                Err(e) => {
                    *seen = e;
                    None
                }
            },
        );
    }

    /// `hammer --json deploy ARGS --wait`: the exit status and the final deployment.
    fn deploy_wait(&self, token: &str, args: &[&str]) -> (Output, Value) {
        let mut a = vec!["--json", "deploy"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--wait", "--timeout", "60"]);
        let out = self.cli(Some(token), &a, DEPLOY_WAIT);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "hammer {} printed no JSON ({e}): {}",
                a.join(" "),
                describe(&out)
            )
        });
        (out, v)
    }

    fn history(&self, token: &str, device: &str) -> Vec<Value> {
        self.json(token, &["device", "history", device])
            .as_array()
            .cloned()
            .expect("history is an array")
    }

    fn app_procs(&self, device: &str) -> Vec<u32> {
        // The app's working folder is its release in the app dir beside the data dir.
        procs_under(&self.root.join(format!("device-{device}-apps")), "app.py")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for (_, mut m) in std::mem::take(&mut self.managers) {
            m.stop(Duration::from_secs(5));
        }
        if let Some(mut s) = self.service.take() {
            s.stop(Duration::from_secs(5));
        }
        kill_procs_under(&self.root);
        if failed {
            for log in ["service.log", "manager-d1.log", "manager-d2.log"] {
                let p = self.root.join(log);
                eprintln!(
                    "----- last lines of {} -----\n{}",
                    p.display(),
                    tail(&p, 40)
                );
            }
            eprintln!("e2e folder kept for inspection: {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The `hammer-manager enroll …` arguments printed by `hammer device add`.
fn enroll_line(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("hammer-manager enroll "))
        .unwrap_or_else(|| panic!("`hammer device add` printed no enroll command: {stdout}"));
    let args: Vec<String> = line.split_whitespace().skip(1).map(String::from).collect();
    for flag in ["--url", "--token", "--ca-sha256"] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing in {line:?}");
    }
    args
}

#[test]
fn whole_system() {
    let mut w = World::new();

    // ---- 1. serve, users, devices, managers ----
    w.start_service();
    let admin = w.admin.clone();
    let alice = str_of(&w.json(&admin, &["user", "add", "alice"]), "token").to_string();
    let bob = str_of(&w.json(&admin, &["user", "add", "bob"]), "token").to_string();
    // A bad name is refused before any request.
    let out = w.cli(Some(&alice), &["device", "add", "bad/name"], WAIT);
    assert!(
        !out.status.success(),
        "bad name accepted: {}",
        describe(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    // `hammer login` saves the token: the next command needs no HAMMER_TOKEN.
    let out = w.cli(None, &["login", "--token", &alice], WAIT);
    assert!(out.status.success(), "login failed: {}", describe(&out));
    let out = w.cli(None, &["device", "list"], WAIT);
    assert!(
        out.status.success(),
        "saved login not used: {}",
        describe(&out)
    );

    // d1 enrolls with the exact line `device add` prints; d2 from the JSON.
    let d1_out = w.ok(&alice, &["device", "add", "d1", "--tag", "group=lab"]);
    let d1_args = enroll_line(&d1_out);
    let d2 = w.json(&alice, &["device", "add", "d2", "--tag", "group=lab"]);
    let d2_args: Vec<String> = [
        "enroll",
        "--url",
        str_of(&d2, "enroll_url"),
        "--token",
        str_of(&d2, "enrollment_token"),
        "--ca-sha256",
        str_of(&d2, "ca_sha256"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.enroll("d1", &d1_args);
    w.enroll("d2", &d2_args);
    w.start_manager("d1");
    w.start_manager("d2");
    wait_for("d1 and d2 online", WAIT, |seen| {
        let ds = w.devices(&alice);
        *seen = serde_json::to_string(&ds).unwrap();
        (ds.len() == 2 && ds.iter().all(|d| d["online"] == true)).then_some(())
    });

    // ---- 2. setup + deploy v1 to the tag ----
    let repo = w.root.join("repo");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-app");
    copy_dir(&example, &repo);
    std::fs::write(repo.join("VERSION"), "v1\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["checkout", "-q", "-B", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v1"]);
    let repo_url = format!("file://{}", repo.display());
    for d in ["d1", "d2"] {
        let port = free_port();
        w.app_ports.insert(d.to_string(), port);
        w.ok(
            &alice,
            &[
                "setup",
                d,
                "--repo",
                &repo_url,
                "--start",
                "./start.sh",
                "--env",
                &format!("PORT={port}"),
                "--health-window",
                HEALTH_WINDOW,
            ],
        );
    }
    for d in ["d1", "d2"] {
        w.wait_device(&alice, d, "ready", |v| v["state"] == "ready");
    }
    let (out, dep1) = w.deploy_wait(&alice, &["--tag", "group=lab"]);
    assert!(out.status.success(), "deploy v1: {}", describe(&out));
    assert_eq!(dep1["state"], "succeeded", "{dep1}");
    w.wait_app("d1", "v1");
    w.wait_app("d2", "v1");

    // ---- 3. v2 ----
    std::fs::write(repo.join("VERSION"), "v2\n").unwrap();
    git(&repo, &["commit", "-qam", "v2"]);
    let v2 = git(&repo, &["rev-parse", "HEAD"]);
    let events = w.spawn_cli(&alice, &["events", "--device", "d1"], "events-d1.log");
    std::thread::sleep(Duration::from_millis(500));
    // In two phases: d1 (the tag's first device by name), then d2 once d1 ran 2 s healthy.
    let (out, dep2) = w.deploy_wait(
        &alice,
        &["--tag", "group=lab", "--phases", "1", "--soak", "2s"],
    );
    assert!(out.status.success(), "deploy v2: {}", describe(&out));
    assert_eq!(dep2["state"], "succeeded", "{dep2}");
    assert_eq!(dep2["commit"], v2.as_str(), "v2 commit pinned: {dep2}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("phase 1 of 2 (devices 1-1, soak 2s): soaking until"),
        "`deploy --wait` did not show the soak: {stderr}"
    );
    w.wait_app("d1", "v2");
    w.wait_app("d2", "v2");
    let promotions = dep2["phasing"]["promotions"].as_array().cloned();
    let promotions = promotions.unwrap_or_else(|| panic!("no promotions: {dep2}"));
    assert_eq!(promotions.len(), 1, "{dep2}");
    assert!(promotions[0].get("by").is_none(), "not the soak's: {dep2}");
    let promoted_at = promotions[0]["at"].as_u64().unwrap();
    let dep2_events = |d: &str| -> Vec<Value> {
        w.history(&alice, d)
            .into_iter()
            .filter(|e| e["deployment_id"] == dep2["id"])
            .collect()
    };
    let d1_running = dep2_events("d1")
        .iter()
        .find(|e| e["phase"] == "running")
        .and_then(|e| e["time"].as_u64())
        .unwrap_or_else(|| panic!("d1 never ran v2: {dep2}"));
    assert!(
        promoted_at >= d1_running + 2000,
        "phase 2 opened {} ms after d1 ran, before its 2 s soak",
        promoted_at.saturating_sub(d1_running)
    );
    let d2_first = dep2_events("d2")
        .iter()
        .filter_map(|e| e["time"].as_u64())
        .min()
        .unwrap_or_else(|| panic!("d2 never reported on v2: {dep2}"));
    assert!(
        d2_first >= promoted_at,
        "d2 reported on v2 {} ms before phase 2 opened",
        promoted_at - d2_first
    );
    // `hammer events` printed d1's progress, one line per event.
    let events_log = events.log.clone();
    wait_for("`hammer events` to show d1 running", WAIT, |seen| {
        *seen = tail(&events_log, 10);
        seen.lines()
            .any(|l| l.contains(" d1 running ") && l.contains("by alice"))
            .then_some(())
    });
    drop(events);
    // `hammer logs -f` follows the app's output live (a request makes a log line).
    let logs = w.spawn_cli(&alice, &["logs", "d1", "-f"], "logs-d1.log");
    let logs_log = logs.log.clone();
    let d1_port = w.app_ports["d1"];
    wait_for("`hammer logs d1 -f` to show a request", WAIT, |seen| {
        let _ = http_get(d1_port);
        *seen = tail(&logs_log, 5);
        seen.contains("GET /").then_some(())
    });
    drop(logs);
    let recent = w.ok(&alice, &["logs", "d1"]);
    assert!(recent.contains("GET /"), "hammer logs d1: {recent}");
    let (id1, id2) = (str_of(&dep1, "id"), str_of(&dep2, "id"));
    for d in ["d1", "d2"] {
        let h = w.history(&alice, d);
        let deps: BTreeSet<&str> = h
            .iter()
            .filter_map(|e| e["deployment_id"].as_str())
            .collect();
        assert_eq!(deps, BTreeSet::from([id1, id2]), "{d} history: {h:?}");
        for e in h.iter().filter(|e| e["deployment_id"].is_string()) {
            assert_eq!(e["deployer"], "alice", "{d} history entry {e}");
        }
        for id in [id1, id2] {
            assert!(
                h.iter()
                    .any(|e| e["deployment_id"] == id && e["phase"] == "running"),
                "{d} history has no running entry for {id}: {h:?}"
            );
        }
    }
    // The human history prints too.
    let human = w.ok(&alice, &["device", "history", "d1"]);
    assert!(
        human.contains("alice") && human.contains("running"),
        "{human}"
    );

    // ---- 4. broken v3: fails, rolls back to v2 ----
    std::fs::write(repo.join("VERSION"), "v3\n").unwrap();
    std::fs::write(
        repo.join("start.sh"),
        "#!/bin/sh\necho \"v3 starts and exits at once\"\nexit 1\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "v3 (broken)"]);
    let v3 = git(&repo, &["rev-parse", "HEAD"]);
    let (out, dep3) = w.deploy_wait(&alice, &["--tag", "group=lab"]);
    assert!(
        !out.status.success(),
        "broken v3 deploy must fail: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().last().unwrap_or("").starts_with("error: ") && stderr.contains("failed"),
        "deploy v3 must end with a one-line error: {stderr}"
    );
    assert_eq!(dep3["state"], "failed", "{dep3}");
    let id3 = str_of(&dep3, "id").to_string();
    let shown = w.json(&alice, &["deployment", "show", &id3]);
    assert_eq!(shown["state"], "failed", "{shown}");
    assert!(
        shown["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "failed deployment without a reason: {shown}"
    );
    w.wait_app("d1", "v2");
    w.wait_app("d2", "v2");
    for d in ["d1", "d2"] {
        let h = w.history(&alice, d);
        let of3: Vec<&Value> = h
            .iter()
            .filter(|e| e["deployment_id"] == id3.as_str())
            .collect();
        assert!(
            of3.iter().any(|e| e["commit"] == v3.as_str()),
            "{d} never ran v3 ({v3}): {of3:?}"
        );
        assert!(
            of3.iter().any(|e| e["phase"] == "rolled_back"),
            "{d} history shows no rollback: {of3:?}"
        );
        let dev = w.json(&alice, &["device", "show", d]);
        assert_eq!(
            dev["current_commit"],
            v2.as_str(),
            "{d} is not back on v2: {dev}"
        );
        // The subject the manager reported when it fetched v2 (`git commit -m v2`).
        assert_eq!(dev["current_commit_subject"], "v2", "{dev}");
    }
    let human = w.ok(&alice, &["device", "history", "d1"]);
    assert!(human.contains("rolled_back"), "{human}");

    // ---- 5. bob sees nothing of alice's ----
    assert!(w.devices(&bob).is_empty(), "bob sees devices");
    let bob_cmds: Vec<Vec<&str>> = vec![
        vec!["device", "show", "d1"],
        vec!["device", "history", "d1"],
        vec!["device", "remove", "d1"],
        vec!["setup", "d1", "--repo", &repo_url, "--start", "./start.sh"],
        vec!["deploy", "d1"],
        vec!["restart", "d1"],
        vec!["stop", "d1"],
        vec!["start", "d1"],
        vec!["rollback", "d1"],
        vec!["logs", "d1"],
        vec!["deployment", "show", &id3],
        vec!["deployment", "cancel", &id3],
    ];
    for args in &bob_cmds {
        let out = w.cli(Some(&bob), args, WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("404"),
            "bob: hammer {} must fail as not found: {}",
            args.join(" "),
            describe(&out)
        );
    }
    assert_eq!(
        w.devices(&alice).len(),
        2,
        "bob's commands changed alice's devices"
    );

    // ---- 6. kill -9 the service during a rollout; the rollout completes ----
    git(&repo, &["revert", "--no-edit", "HEAD"]);
    let v4 = git(&repo, &["rev-parse", "HEAD"]);
    let dep4 = w.json(
        &alice,
        &[
            "deploy",
            "--tag",
            "group=lab",
            "--max-in-flight",
            "1",
            "--timeout",
            "60",
        ],
    );
    let id4 = str_of(&dep4, "id").to_string();
    wait_for("a device in flight in the v4 rollout", WAIT, |seen| {
        let d = w.json(&alice, &["deployment", "show", &id4]);
        *seen = d.to_string();
        assert_eq!(d["state"], "running", "rollout ended before the kill: {d}");
        d["targets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["state"] == "in_flight"))
            .then_some(())
    });
    w.service.as_mut().unwrap().kill9();
    w.start_service();
    let done = wait_for(
        "the v4 rollout to finish after the restart",
        Duration::from_secs(180),
        |seen| {
            let d = w.json(&alice, &["deployment", "show", &id4]);
            *seen = d.to_string();
            (d["state"] != "running").then_some(d)
        },
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["commit"], v4.as_str(), "{done}");
    w.wait_app("d1", "v2");
    w.wait_app("d2", "v2");
    for d in ["d1", "d2"] {
        w.wait_device(&alice, d, "on the reverted commit", |v| {
            v["current_commit"] == v4.as_str()
        });
    }

    // ---- 7. kill -9 a manager, start it again ----
    assert_eq!(
        w.app_procs("d1").len(),
        1,
        "before: {:?}",
        w.app_procs("d1")
    );
    w.managers.get_mut("d1").unwrap().kill9();
    w.start_manager("d1");
    let pid = w.manager_pid("d1");
    let mqtt = w.mqtt;
    wait_for("the restarted d1 manager to connect", WAIT, |seen| {
        let c = established_to(pid, mqtt);
        *seen = format!("connections {c:?}");
        (!c.is_empty()).then_some(())
    });
    w.wait_device(&alice, "d1", "online", |v| v["online"] == true);
    // Watch for a health window and then some: never zero or two app processes.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let procs = w.app_procs("d1");
        assert_eq!(
            procs.len(),
            1,
            "d1 app processes after the manager restart: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    w.wait_app("d1", "v2");
    assert_eq!(http_get(w.app_ports["d1"]).unwrap(), "hello from hammer v2");

    // ---- 8. remove d2: disconnected within a second, cannot reconnect ----
    let d2_pid = w.manager_pid("d2");
    let d1_pid = w.manager_pid("d1");
    let before = wait_for("the d2 manager's broker connection", WAIT, |seen| {
        let c = established_to(d2_pid, mqtt);
        *seen = format!("{c:?}");
        (!c.is_empty()).then_some(c)
    });
    w.ok(&alice, &["device", "remove", "d2"]);
    let removed_at = Instant::now();
    loop {
        let now = established_to(d2_pid, mqtt);
        if now.is_disjoint(&before) {
            break;
        }
        assert!(
            removed_at.elapsed() < Duration::from_secs(1),
            "d2 still connected 1s after its removal: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Attempts may open a TCP connection for a moment, but none may last.
    let mut first_seen: BTreeMap<u64, Instant> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        for c in established_to(d2_pid, mqtt) {
            let t = *first_seen.entry(c).or_insert_with(Instant::now);
            assert!(
                t.elapsed() < Duration::from_millis(2500),
                "the removed d2 manager holds a broker connection again (socket {c})"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !established_to(d1_pid, mqtt).is_empty(),
        "d1 lost its connection when d2 was removed"
    );
    let out = w.cli(Some(&alice), &["device", "show", "d2"], WAIT);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("404"),
        "removed d2 still shown: {}",
        describe(&out)
    );
    let left: Vec<String> = w
        .devices(&alice)
        .iter()
        .map(|d| d["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(left, vec!["d1".to_string()]);
}
