//! Helpers for the runtime tests: a collecting report sink, git repos made with the `git`
//! CLI, desired states, and finding the test's app processes in /proc.
#![allow(dead_code)]

pub mod git_http;

use hammer_manager::runtime::layout::Layout;
use hammer_manager::runtime::{self, Input, Report, ReportSink, RuntimeHandle, RuntimeOptions};
use hammer_manager::store::{open_db, Db};
use hammer_protocol::{DesiredState, GitCredentials, Phase, RunState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Collects reports and wakes waiters.
#[derive(Default)]
pub struct Collector {
    pub reports: Mutex<Vec<Report>>,
    notify: Notify,
}

impl ReportSink for Collector {
    fn report(&self, report: Report) {
        eprintln!(
            "report: gen={:?} {:?} commit={:?} detail={:?} tail={:?}",
            report.generation,
            report.phase,
            report.commit.as_deref().map(|c| &c[..8.min(c.len())]),
            report.detail,
            report.log_tail
        );
        self.reports.lock().unwrap().push(report);
        self.notify.notify_waiters();
    }
}

impl Collector {
    pub fn all(&self) -> Vec<Report> {
        self.reports.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.reports.lock().unwrap().len()
    }

    /// Waits for a report (at index >= `from`) for `generation` in `phase`.
    pub async fn wait_for(&self, generation: u64, phase: Phase, from: usize) -> Report {
        self.wait_any(generation, &[phase], from).await
    }

    /// Waits for the first report (at index >= `from`) for `generation` in one of `phases`.
    pub async fn wait_any(&self, generation: u64, phases: &[Phase], from: usize) -> Report {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self
                .all()
                .into_iter()
                .skip(from)
                .find(|r| r.generation == Some(generation) && phases.contains(&r.phase))
            {
                return r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no {phases:?} report for generation {generation}; got {:#?}",
                    self.all()
                );
            }
        }
    }

    /// Waits for any report with `phase` at index >= `from`.
    pub async fn wait_phase(&self, phase: Phase, from: usize) -> Report {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.all().into_iter().skip(from).find(|r| r.phase == phase) {
                return r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no {phase:?} report; got {:#?}", self.all());
            }
        }
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Makes `root` and a bare clone of the repository at `repo` in it named `name` (e.g.
/// `app.git`), as a git server serves it.
pub fn serve_bare(repo: &Path, root: &Path, name: &str) {
    std::fs::create_dir_all(root).unwrap();
    git(
        root,
        &["clone", "-q", "--bare", &repo.display().to_string(), name],
    );
}

/// The start script of the test apps: records its pid and commit, prints, then sleeps.
pub const GOOD_APP: &str = "#!/bin/sh\necho \"$$ $HAMMER_COMMIT\" >> \"$OUT/pids\"\necho \"hello from $HAMMER_COMMIT\"\nexec sleep 1000\n";

/// A git work tree in a temp dir, on branch `main`.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(dir: PathBuf) -> Repo {
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        Repo { dir }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// Writes `start.sh` (mode 755 unless `exec` is false) and commits; returns the commit.
    pub fn commit_app(&self, script: &str, exec: bool, note: &str) -> String {
        let path = self.dir.join("start.sh");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::write(self.dir.join("NOTE"), note).unwrap();
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "-m", note]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

/// One test's world: temp dir, repo, db, sink, runtime.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub repo: Repo,
    pub db: Db,
    pub sink: Arc<Collector>,
    pub id: String,
    pub out: PathBuf,
}

impl World {
    pub fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::new(tmp.path().join("src"));
        let db = open_db(&tmp.path().join("db")).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let mut rnd = [0u8; 8];
        getrandom::getrandom(&mut rnd).unwrap();
        World {
            tmp,
            repo,
            db,
            sink: Arc::new(Collector::default()),
            id: hex::encode(rnd),
            out,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The app dir (releases, `current`), beside the data dir.
    pub fn app_dir(&self) -> PathBuf {
        self.tmp.path().join("data-apps")
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.data_dir(), Some(&self.app_dir()))
    }

    pub fn options(&self) -> RuntimeOptions {
        RuntimeOptions {
            data_dir: self.data_dir(),
            app_dir: Some(self.app_dir()),
            stop_grace: Duration::from_secs(2),
            restart_backoff_cap: Duration::from_secs(4),
            log_file_max_bytes: 64 * 1024,
            ..RuntimeOptions::default()
        }
    }

    pub fn spawn(&self) -> RuntimeHandle {
        runtime::spawn(self.options(), self.db.clone(), self.sink.clone()).unwrap()
    }

    pub fn desired(&self, generation: u64, git_ref: &str) -> DesiredState {
        let mut env = BTreeMap::new();
        env.insert("HAMMER_TEST_ID".to_string(), self.id.clone());
        env.insert("OUT".to_string(), self.out.display().to_string());
        DesiredState {
            v: 1,
            device_id: "d1".into(),
            owner: "u1".into(),
            generation,
            deployment_id: format!("dep{generation}"),
            repo_url: self.repo.url(),
            git_ref: git_ref.to_string(),
            commit: None,
            start: "./start.sh".into(),
            env,
            health_window_secs: 1,
            health_cmd: None,
            run_state: RunState::Running,
            issued_at: 0,
            install: None,
            full_history: false,
        }
    }

    /// Live app processes of this test: (pid, commit).
    pub fn apps(&self) -> Vec<(i32, String)> {
        app_processes(&self.id)
    }

    /// Waits until exactly one app process runs, of `commit`; returns its pid.
    pub async fn one_app(&self, commit: &str) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let apps = self.apps();
            if apps.len() == 1 && apps[0].1 == commit {
                return apps[0].0;
            }
            if std::time::Instant::now() > deadline {
                panic!("expected one app of {commit}, found {apps:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts no app process of this test runs (after a short settle).
    pub async fn no_app(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.apps().is_empty() {
            if std::time::Instant::now() > deadline {
                panic!("app still running: {:?}", self.apps());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn send(handle: &RuntimeHandle, desired: DesiredState) {
    send_with(handle, desired, None).await
}

pub async fn send_with(
    handle: &RuntimeHandle,
    desired: DesiredState,
    credentials: Option<GitCredentials>,
) {
    handle
        .send(Input::Desired {
            desired: Box::new(desired),
            credentials,
        })
        .await;
}

/// Live (non-zombie) `sleep` processes whose env has HAMMER_TEST_ID=`id`.
pub fn app_processes(id: &str) -> Vec<(i32, String)> {
    let needle = format!("HAMMER_TEST_ID={id}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim().chars().next());
        if matches!(state, Some('Z') | Some('X') | None) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmdline.starts_with(b"sleep") {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if !vars.contains(&needle.as_bytes()) {
            continue;
        }
        let commit = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"HAMMER_COMMIT="))
            .map(|c| String::from_utf8_lossy(c).to_string())
            .unwrap_or_default();
        found.push((pid, commit));
    }
    found
}
