//! Helpers of the end-to-end test: child processes that die with the test, free ports,
//! polling with deadlines, a tiny HTTP GET, the `hammer` CLI runner, git, and /proc probes
//! (app processes by working folder, a process's established TCP connections).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGTERM, then SIGKILL) when dropped; output goes to a log file.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Polls `check` every 200 ms until it returns `Some` or `timeout` passes; on timeout panics
/// with `what` and the last thing `check` reported through `seen`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&mut String) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut seen = String::new();
    loop {
        if let Some(v) = check(&mut seen) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET http://127.0.0.1:{port}/` with a short timeout: the body, or the error as text.
pub fn http_get(port: u16) -> Result<String, String> {
    http_get_path(port, "/")
}

/// `GET http://127.0.0.1:{port}{path}`: the body of a 200 answer, or the error as text.
pub fn http_get_path(port: u16, path: &str) -> Result<String, String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    match buf.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.trim().to_string())
        }
        _ => Err(format!("unexpected answer: {buf:?}")),
    }
}

/// Runs a command with a deadline (killed when it passes); output captured through files
/// in `scratch`, so a chatty command never blocks on a full pipe.
pub fn run_with_timeout(mut cmd: Command, scratch: &Path, timeout: Duration) -> Output {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!("cmd-{n}.out"));
    let err_path = scratch.join(format!("cmd-{n}.err"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stdout: {}; stderr: {}",
                tail(&out_path, 20),
                tail(&err_path, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(err_path);
    out
}

/// The output of a finished command as one readable string.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}; stdout: {}; stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Runs git in `repo` with a fixed identity; panics on failure.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(repo)
        .args([
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@example.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo)
        .output()
        .expect("git must be installed for the e2e test");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Copies a folder tree (files and folders only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Pids of processes whose working folder is under `root` and whose command line contains
/// `needle`.
pub fn procs_under(root: &Path, needle: &str) -> Vec<u32> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(&root) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILLs every process (and its process group) whose working folder is under `root`:
/// the apps the managers started, left over when a manager was killed.
pub fn kill_procs_under(root: &Path) {
    for pid in procs_under(root, "") {
        // SAFETY: signals to processes this test started (their cwd is in our temp folder).
        unsafe {
            let pgid = libc::getpgid(pid as i32);
            if pgid > 1 && pgid != libc::getpgrp() {
                libc::kill(-pgid, libc::SIGKILL);
            }
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// Socket inodes of the established IPv4 TCP connections of `pid` to 127.0.0.1:`port`.
pub fn established_to(pid: u32, port: u16) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return inodes;
    };
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(n) = n.parse() {
                    inodes.insert(n);
                }
            }
        }
    }
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return BTreeSet::new();
    };
    let want = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[2] == want && f[3] == "01" {
                f[9].parse::<u64>().ok()
            } else {
                None
            }
        })
        .filter(|i| inodes.contains(i))
        .collect()
}

/// Last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds `hammer-manager` beside `hammer`, running `cargo build -p hammer-manager` first when
/// it is missing or older than the sources it is built from (`cargo test --workspace` has
/// usually built it already; rebuilding it alone would redo part of the tree for nothing).
pub fn build_manager(hammer: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let manager = hammer.with_file_name("hammer-manager");
    let built = std::fs::metadata(&manager).and_then(|m| m.modified()).ok();
    let newest_source = ["device-manager", "protocol", "certs"]
        .iter()
        .filter_map(|c| newest_mtime(&workspace.join(c)))
        .max();
    let fresh = matches!((built, newest_source), (Some(b), Some(s)) if b >= s);
    if fresh {
        return manager;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "hammer-manager"]);
    // Cargo sets these for the test process; passed on, they change build scripts' inputs
    // (ring reruns on CARGO_PKG_*) and the nested build would redo half the tree each time.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "OUT_DIR"
            || k == "CARGO_TARGET_TMPDIR"
        {
            cmd.env_remove(k);
        }
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build hammer-manager");
    assert!(status.success(), "cargo build -p hammer-manager failed");
    assert!(
        manager.exists(),
        "{} is missing after `cargo build -p hammer-manager`",
        manager.display()
    );
    manager
}

/// The newest modification time of `Cargo.toml` and the files under `src/` of a crate.
fn newest_mtime(krate: &Path) -> Option<std::time::SystemTime> {
    fn walk(p: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), newest);
            }
        } else if let Ok(m) = meta.modified() {
            *newest = (*newest).max(Some(m));
        }
    }
    let mut newest = None;
    walk(&krate.join("Cargo.toml"), &mut newest);
    walk(&krate.join("src"), &mut newest);
    newest
}
