//! Crash safety of the real `hammer-manager` binary: it is killed with SIGKILL during the
//! fetch, during the checkout, during the install step, during the switch to the new release
//! and during the health window, then started again on the same data dir. After each restart it must converge:
//! `running` on the new commit, `current` pointing at a complete release, exactly one app
//! instance, and the receiving side (a service-side MQTT client that stores status events by
//! (epoch, seq) and acks the highest contiguous seq, as the real service does) holding every
//! seq 1..N of the device's epoch exactly once, with no gap and no seq reused for a
//! different event.
//!
//! The repository is served over HTTP by a small Python server in front of `git http-backend`
//! that can stall a pack response half-way (while a `stall` file exists) and that records
//! every pack it finished sending, so the test knows when the fetch is in flight and when the
//! checkout has begun. The broker is rumqttd on loopback (as in `agent_binary.rs`).

use crate::agent_support::*;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::*;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hammer-manager");
/// Every wait: generous, for a loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(60);
/// Set in the app's environment (through the desired state) to find this test's app.
const MARKER_ENV: &str = "HAMMER_SIGKILL_TEST";

const HTTP_SERVER: &str = r#"
import http.server, os, socketserver, subprocess, sys, time

ROOT = sys.argv[1]
STALL = os.path.join(ROOT, "stall")

def mark(name):
    with open(os.path.join(ROOT, name), "a") as f:
        f.write("x\n")

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), GATEWAY_INTERFACE="CGI/1.1")
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            if not line:
                continue
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            else:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        is_pack = self.command == "POST" and path.endswith("/git-upload-pack") and b"PACK" in payload
        try:
            if is_pack and os.path.exists(STALL):
                half = len(payload) // 2
                self.wfile.write(payload[:half])
                self.wfile.flush()
                mark("stalled")
                while os.path.exists(STALL):
                    time.sleep(0.05)
                self.wfile.write(payload[half:])
            else:
                self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            return
        if is_pack:
            mark("served")

    do_GET = handle_any
    do_POST = handle_any

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a killed manager resets its connection

srv = Server(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn describe(e: &StatusEvent) -> String {
    format!(
        "  epoch {} seq {:>3} gen {:?} {:?} commit {} {}",
        e.epoch,
        e.seq,
        e.generation,
        e.phase,
        e.commit.as_deref().map_or("-", |c| &c[..c.len().min(10)]),
        e.detail.as_deref().unwrap_or("")
    )
}

/// The receiving side: stores status events by (epoch, seq) exactly once and acks the
/// highest contiguous seq after every arrival, like the service's ingest.
struct Ledger {
    svc: Service,
    /// Every status event as it arrived (duplicates included).
    arrivals: Vec<StatusEvent>,
    stored: BTreeMap<(u64, u64), StatusEvent>,
    duplicates: usize,
    /// A seq that arrived again with different content (a reused seq: an event was lost).
    conflicts: Vec<String>,
}

impl Ledger {
    fn contiguous(&self, epoch: u64) -> u64 {
        let mut n = 0;
        while self.stored.contains_key(&(epoch, n + 1)) {
            n += 1;
        }
        n
    }

    async fn receive(&mut self, ev: StatusEvent) {
        self.arrivals.push(ev.clone());
        let key = (ev.epoch, ev.seq);
        match self.stored.get(&key) {
            Some(old) => {
                self.duplicates += 1;
                if *old != ev {
                    self.conflicts.push(format!(
                        "seq {} arrived as two different events:\n{}\n{}",
                        ev.seq,
                        describe(old),
                        describe(&ev)
                    ));
                }
            }
            None => {
                self.stored.insert(key, ev.clone());
            }
        }
        let upto = self.contiguous(ev.epoch);
        if upto > 0 {
            self.svc.ack(ev.epoch, upto).await;
        }
    }

    /// Receives (storing and acking) until `until`; false when nothing more came in time.
    async fn pump(&mut self, until: tokio::time::Instant) -> bool {
        loop {
            match tokio::time::timeout_at(until, self.svc.seen.recv()).await {
                Ok(Some(Seen::Status(ev))) => {
                    self.receive(ev).await;
                    return true;
                }
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the service client stopped"),
                Err(_) => return false,
            }
        }
    }

    /// Waits for an arrival at index `from` or later that matches; returns its index.
    async fn wait(&mut self, what: &str, from: usize, f: impl Fn(&StatusEvent) -> bool) -> usize {
        let until = tokio::time::Instant::now() + DEADLINE;
        let mut i = from;
        loop {
            while i < self.arrivals.len() {
                if f(&self.arrivals[i]) {
                    return i;
                }
                i += 1;
            }
            if !self.pump(until).await {
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}; status events seen:\n{}",
                    self.history()
                );
            }
        }
    }

    async fn wait_phase(&mut self, from: usize, generation: u64, phase: Phase) -> usize {
        self.wait(
            &format!("{phase:?} of generation {generation}"),
            from,
            |e| e.generation == Some(generation) && e.phase == phase,
        )
        .await
    }

    /// Keeps receiving until nothing arrives for `quiet`.
    async fn settle(&mut self, quiet: Duration) {
        while self.pump(tokio::time::Instant::now() + quiet).await {}
    }

    fn history(&self) -> String {
        let mut s = String::new();
        for e in &self.arrivals {
            s.push_str(&describe(e));
            s.push('\n');
        }
        s
    }

    /// One epoch; seqs 1..=N all stored; no seq reused for a different event.
    fn check_exactly_once(&self) {
        let epochs: BTreeSet<u64> = self.stored.keys().map(|k| k.0).collect();
        assert_eq!(
            epochs.len(),
            1,
            "one data dir, one epoch; got {epochs:?}; events:\n{}",
            self.history()
        );
        let epoch = *epochs.iter().next().unwrap();
        let seqs: Vec<u64> = self.stored.keys().map(|k| k.1).collect();
        let max = *seqs.last().unwrap();
        let missing: Vec<u64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
        assert!(
            missing.is_empty(),
            "gaps in the stored seqs of epoch {epoch}: missing {missing:?}; events:\n{}",
            self.history()
        );
        assert_eq!(self.contiguous(epoch), max);
        assert!(
            self.conflicts.is_empty(),
            "{}\nevents:\n{}",
            self.conflicts.join("\n"),
            self.history()
        );
    }
}

/// A live (non-zombie) process of this test's app.
#[derive(Debug)]
struct AppProc {
    pid: i32,
    pgid: i32,
    commit: Option<String>,
}

fn marked_processes(marker: &str) -> Vec<AppProc> {
    let want = format!("{MARKER_ENV}={marker}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if !vars.contains(&want) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[0] == "Z" {
            continue;
        }
        out.push(AppProc {
            pid,
            pgid: f[2].parse().unwrap(),
            commit: vars
                .iter()
                .find_map(|v| v.strip_prefix("HAMMER_COMMIT=").map(str::to_owned)),
        });
    }
    out
}

/// One test's world: a served repository, a broker, the receiving side, the manager binary.
struct Fleet {
    tmp: TempDir,
    data: PathBuf,
    work: PathBuf,
    served: PathBuf,
    url: String,
    marker: String,
    ledger: Ledger,
    server: Option<Child>,
    manager: Option<Child>,
    starts: usize,
}

impl Fleet {
    async fn new(name: &str) -> Fleet {
        let broker = start_broker();
        let key = SigningKeyPair::generate().unwrap();
        let svc = Service::connect(
            broker,
            SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap(),
        )
        .await;
        let tmp = TempDir::new();
        // As root the app runs as `hammer-app` from the app dir beside the data dir
        // (`data-apps`): that user must be able to pass through the test's folder, as it can
        // through /var/lib on a device.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        make_data_dir(&data, broker, &key);

        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let served = tmp.path().join("served");
        std::fs::create_dir(&served).unwrap();
        git(&served, &["init", "-q", "--bare", "-b", "main", "app.git"]);

        let script = served.join("server.py");
        std::fs::write(&script, HTTP_SERVER).unwrap();
        let mut server = Command::new("python3")
            .arg(&script)
            .arg(&served)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("server prints its port");

        Fleet {
            url: format!("http://127.0.0.1:{port}/app.git"),
            marker: format!("{}-{name}", std::process::id()),
            tmp,
            data,
            work,
            served,
            ledger: Ledger {
                svc,
                arrivals: Vec::new(),
                stored: BTreeMap::new(),
                duplicates: 0,
                conflicts: Vec::new(),
            },
            server: Some(server),
            manager: None,
            starts: 0,
        }
    }

    /// Commits an app (start script plus `files` files) and pushes it to the served repo.
    fn commit(&self, label: &str, files: usize) -> String {
        let script = self.work.join("start.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho app {label} starting\nexec sleep 1000\n"),
        )
        .unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&script)
            .status()
            .unwrap();
        if files > 0 {
            let dir = self.work.join("assets");
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..files {
                let body: String = (0..24)
                    .map(|j| format!("{label} file {i} line {j} {}\n", i * 7919 + j * 31))
                    .collect();
                std::fs::write(dir.join(format!("f{i:05}.txt")), body).unwrap();
            }
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", label]);
        let bare = self.served.join("app.git");
        git(
            &self.work,
            &["push", "-q", &bare.display().to_string(), "main"],
        );
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    fn desired(&self, generation: u64, window: u32) -> DesiredState {
        let mut d = desired(generation);
        d.repo_url = self.url.clone();
        d.start = "./start.sh".into();
        d.health_window_secs = window;
        d.env.insert(MARKER_ENV.into(), self.marker.clone());
        d
    }

    async fn send(&self, d: &DesiredState) {
        self.ledger.svc.desired(d).await;
    }

    fn start_manager(&mut self) {
        assert!(self.manager.is_none());
        self.starts += 1;
        let log =
            std::fs::File::create(self.tmp.path().join(format!("manager-{}.log", self.starts)))
                .unwrap();
        let child = Command::new(BIN)
            .args([
                "run",
                "--health-interval",
                "3600",
                "--stop-grace",
                "2",
                "--data-dir",
            ])
            .arg(&self.data)
            .env("RUST_LOG", "info,hammer_manager=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.manager = Some(child);
    }

    fn kill_manager(&mut self) {
        let mut child = self.manager.take().expect("the manager runs");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.starts {
            let p = self.tmp.path().join(format!("manager-{i}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            s.push_str(&format!("--- manager run {i} (last lines) ---\n"));
            s.push_str(&tail.join("\n"));
            s.push('\n');
        }
        s
    }

    fn count_file(&self, name: &str) -> usize {
        std::fs::read_to_string(self.served.join(name))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// The app dir: the default one, beside the (canonical) data dir.
    fn app_dir(&self) -> PathBuf {
        std::fs::canonicalize(self.tmp.path())
            .unwrap()
            .join("data-apps")
    }

    fn releases_dir(&self) -> PathBuf {
        self.app_dir().join("releases")
    }

    /// `current` points at a release that is complete (every file of its commit, with its
    /// size, and an executable start script); returns its commit.
    fn current_complete(&self) -> String {
        let link = std::fs::read_link(self.app_dir().join("current")).unwrap_or_else(|e| {
            panic!("no current link: {e}\n{}", self.logs());
        });
        let commit = link.file_name().unwrap().to_string_lossy().into_owned();
        let dir = self.app_dir().join(&link);
        assert!(
            !commit.starts_with('.'),
            "current points at a temporary folder {link:?}"
        );
        let tree = git(&self.work, &["ls-tree", "-r", "-l", &commit]);
        let mut n = 0;
        for line in tree.lines() {
            let (meta, path) = line.split_once('\t').unwrap();
            let size: u64 = meta.split_whitespace().nth(3).unwrap().parse().unwrap();
            let file = dir.join(path);
            let got = std::fs::metadata(&file)
                .unwrap_or_else(|e| panic!("release {commit} lacks {path}: {e}"))
                .len();
            assert_eq!(got, size, "release {commit}: {path} is incomplete");
            n += 1;
        }
        assert!(n > 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("start.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o100 != 0, "start.sh is executable");
        commit
    }

    /// Waits (briefly: stopped instances may still be exiting) until exactly one app
    /// instance (one process group: the start command and what it runs) runs, on `commit`;
    /// returns its process group id.
    async fn one_app(&self, commit: &str) -> i32 {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = marked_processes(&self.marker);
            let groups: BTreeSet<i32> = procs.iter().map(|p| p.pgid).collect();
            if groups.len() == 1 && procs.iter().all(|p| p.commit.as_deref() == Some(commit)) {
                return procs[0].pgid;
            }
            if Instant::now() > until {
                panic!(
                    "expected exactly one app instance on {commit}, found {procs:?}\nevents:\n{}\n{}",
                    self.ledger.history(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deploys generation 1 (`v1`) and waits for it to run.
    async fn first_deploy(&mut self, v1: &str) {
        self.start_manager();
        let d = self.desired(1, 1);
        self.send(&d).await;
        let i = self.ledger.wait_phase(0, 1, Phase::Running).await;
        assert_eq!(self.ledger.arrivals[i].commit.as_deref(), Some(v1));
        self.one_app(v1).await;
    }

    /// After a restart (arrivals from index `from`): `running` of `generation` on `commit`,
    /// a complete `current`, one app instance, every status event stored exactly once.
    async fn converged(&mut self, from: usize, generation: u64, commit: &str) -> StatusEvent {
        let i = self
            .ledger
            .wait(
                &format!("running (or rolled_back) of generation {generation}"),
                from,
                |e| {
                    e.generation == Some(generation)
                        && matches!(e.phase, Phase::Running | Phase::RolledBack | Phase::Failed)
                },
            )
            .await;
        let end = self.ledger.arrivals[i].clone();
        assert!(
            end.phase == Phase::Running && end.commit.as_deref() == Some(commit),
            "expected running on {commit}, got {}\nevents:\n{}\n{}",
            describe(&end),
            self.ledger.history(),
            self.logs()
        );
        self.ledger.settle(Duration::from_millis(1500)).await;
        self.ledger.check_exactly_once();
        assert_eq!(self.current_complete(), commit);
        self.one_app(commit).await;
        let temps: Vec<String> = std::fs::read_dir(self.releases_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(temps.is_empty(), "leftover temporary releases: {temps:?}");
        eprintln!(
            "converged; {} status events stored, {} duplicates on the wire:\n{}",
            self.ledger.stored.len(),
            self.ledger.duplicates,
            self.ledger.history()
        );
        end
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut m) = self.manager.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        for p in marked_processes(&self.marker) {
            let _ = killpg(Pid::from_raw(p.pgid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(self.served.join("stall"));
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

async fn wait_file(what: &str, f: impl Fn() -> bool, fleet: &Fleet) {
    let until = Instant::now() + DEADLINE;
    while !f() {
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}\nevents:\n{}\n{}",
            fleet.ledger.history(),
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fetch_converges() {
    let mut f = Fleet::new("fetch").await;
    let v1 = f.commit("v1", 20);
    f.first_deploy(&v1).await;

    let v2 = f.commit("v2", 20);
    std::fs::write(f.served.join("stall"), "").unwrap();
    let from = f.ledger.arrivals.len();
    let d2 = f.desired(2, 1);
    f.send(&d2).await;
    f.ledger.wait_phase(from, 2, Phase::Fetching).await;
    // The pack response is half-sent and stalls: the manager is inside the fetch.
    wait_file(
        "the pack response to stall",
        || f.count_file("stalled") > 0,
        &f,
    )
    .await;
    f.kill_manager();
    assert_eq!(f.current_complete(), v1, "the old release stays current");
    f.one_app(&v1).await;

    std::fs::remove_file(f.served.join("stall")).unwrap();
    let from = f.ledger.arrivals.len();
    f.start_manager();
    f.converged(from, 2, &v2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_checkout_converges() {
    let mut f = Fleet::new("checkout").await;
    let v1 = f.commit("v1", 3000);
    f.first_deploy(&v1).await;

    let v2 = f.commit("v2", 3000);
    let served = f.count_file("served");
    let from = f.ledger.arrivals.len();
    let d2 = f.desired(2, 1);
    f.send(&d2).await;
    f.ledger.wait_phase(from, 2, Phase::Fetching).await;
    // The whole pack has been sent: the manager indexes it, then checks out 3000 files into
    // `releases/.tmp-<commit>-*` and renames that into place. Kill as soon as the temporary
    // checkout shows up (or, if it was missed, as soon as the release is in place).
    wait_file(
        "the pack to be served",
        || f.count_file("served") > served,
        &f,
    )
    .await;
    let temp_prefix = format!(".tmp-{v2}");
    let until = Instant::now() + DEADLINE;
    let hit = loop {
        let temp = std::fs::read_dir(f.releases_dir())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&temp_prefix));
        if temp {
            break "during the checkout (temporary checkout present)";
        }
        if f.releases_dir().join(&v2).exists() {
            break "after the checkout (release already in place)";
        }
        assert!(
            Instant::now() < until,
            "the checkout of v2 never started\nevents:\n{}\n{}",
            f.ledger.history(),
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    f.kill_manager();
    eprintln!("SIGKILL landed {hit}");
    assert_eq!(f.current_complete(), v1, "the old release stays current");
    f.one_app(&v1).await;

    let from = f.ledger.arrivals.len();
    f.start_manager();
    f.converged(from, 2, &v2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_switch_converges() {
    let mut f = Fleet::new("switch").await;
    let v1 = f.commit("v1", 20);
    f.first_deploy(&v1).await;

    let v2 = f.commit("v2", 20);
    let from = f.ledger.arrivals.len();
    let d2 = f.desired(2, 1);
    f.send(&d2).await;
    f.ledger.wait_phase(from, 2, Phase::Fetched).await;
    f.kill_manager();
    // Whichever side of the swap the kill hit, `current` is a complete release.
    let current = f.current_complete();
    assert!(current == v1 || current == v2, "current is {current}");
    let live = marked_processes(&f.marker);
    let groups: BTreeSet<i32> = live.iter().map(|p| p.pgid).collect();
    assert!(groups.len() <= 1, "at most one app instance: {live:?}");
    eprintln!(
        "SIGKILL landed with current on {} and {} app instance(s)",
        if current == v1 { "v1" } else { "v2" },
        groups.len()
    );

    let from = f.ledger.arrivals.len();
    f.start_manager();
    f.converged(from, 2, &v2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_verification_restarts_the_window_and_converges() {
    const WINDOW: u32 = 6;
    let mut f = Fleet::new("verify").await;
    let v1 = f.commit("v1", 20);
    f.first_deploy(&v1).await;

    let v2 = f.commit("v2", 20);
    let from = f.ledger.arrivals.len();
    let d2 = f.desired(2, WINDOW);
    f.send(&d2).await;
    f.ledger.wait_phase(from, 2, Phase::Verifying).await;
    f.kill_manager();
    assert_eq!(f.current_complete(), v2, "verifying runs the new release");
    let survivor = f.one_app(&v2).await;

    let from = f.ledger.arrivals.len();
    let restarted = now_ms();
    f.start_manager();
    let running = f.converged(from, 2, &v2).await;
    let took = running.time.saturating_sub(restarted);
    assert!(
        took >= (u64::from(WINDOW) - 1) * 1000,
        "the health window restarts in full after a restart, but running came {took} ms after it"
    );
    let pid = f.one_app(&v2).await;
    assert_ne!(
        pid, survivor,
        "the surviving instance is replaced, not adopted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_install_runs_it_again_and_converges() {
    let mut f = Fleet::new("install").await;
    // The install command (run as the app user) holds while `hold` exists; the test folder
    // is 0711, so the app user can test for the file without listing the folder.
    let hold = f.tmp.path().join("hold");
    let script = format!(
        "#!/bin/sh\necho install of $HAMMER_COMMIT\nwhile [ -f {} ]; do sleep 0.05; done\nmkdir -p node_modules && echo ok > node_modules/marker\n",
        hold.display()
    );
    std::fs::write(f.work.join("install.sh"), script).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(f.work.join("install.sh"))
        .status()
        .unwrap();
    let v1 = f.commit("v1", 0);
    f.first_deploy(&v1).await;

    let v2 = f.commit("v2", 0);
    std::fs::write(&hold, "").unwrap();
    let from = f.ledger.arrivals.len();
    let mut d2 = f.desired(2, 1);
    d2.install = Some(InstallStep {
        command: "./install.sh".into(),
        timeout_secs: 120,
        reuse: Vec::new(),
    });
    f.send(&d2).await;
    f.ledger.wait_phase(from, 2, Phase::Installing).await;
    // The install runs (its own process group, marked like the app) beside the old app.
    let until = Instant::now() + DEADLINE;
    let install: Vec<i32> = loop {
        let procs = marked_processes(&f.marker);
        let of_v2: Vec<i32> = procs
            .iter()
            .filter(|p| p.commit.as_deref() == Some(v2.as_str()))
            .map(|p| p.pid)
            .collect();
        if !of_v2.is_empty() {
            assert!(
                procs
                    .iter()
                    .any(|p| p.commit.as_deref() == Some(v1.as_str())),
                "the old app runs during the install: {procs:?}"
            );
            break of_v2;
        }
        assert!(Instant::now() < until, "the install never ran: {procs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    f.kill_manager();
    assert_eq!(f.current_complete(), v1, "the old release stays current");
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim().starts_with('Z'))
        })
    };
    assert!(
        install.iter().any(|p| alive(*p)),
        "the install outlives the killed manager"
    );

    // The next start stops the orphaned install and runs it again from a fresh checkout.
    let from = f.ledger.arrivals.len();
    f.start_manager();
    // (The first run's `installing` may arrive again: it was maybe not acked yet.)
    f.ledger
        .wait("the second run of the install", from, |e| {
            e.generation == Some(2)
                && e.phase == Phase::Installing
                && e.detail.as_deref().is_some_and(|d| d.contains("run 2"))
        })
        .await;
    assert!(
        !install.iter().any(|p| alive(*p)),
        "the orphaned install was stopped"
    );
    std::fs::remove_file(&hold).unwrap();
    f.converged(from, 2, &v2).await;
    let marker = f.releases_dir().join(&v2).join("node_modules/marker");
    assert!(marker.is_file(), "the release is the installed folder");
}
