//! Git benchmark of the device manager: lean mirrors and release files.
//!
//! ```text
//! cargo run --release -p hammer-manager --example git_bench
//! cargo run --release -p hammer-manager --example git_bench -- --runs 3 --big-mib 100
//! ```
//!
//! What it does, in one temporary directory, over plain HTTP on loopback (a small Python
//! server in front of `git http-backend`, as in the runtime tests; `file://` cannot be
//! fetched shallow):
//! 1. makes a 300-commit repository (`--commits N`): 60 text files of 4 KiB, each commit
//!    rewrites 3 of them; then deploys its tip into a fresh mirror, shallow (the default) and
//!    with `full_history`, `--runs` times each: the mirror's size on disk and the time of
//!    fetch + checkout;
//! 2. makes a repository with one file of `--big-mib` MiB (incompressible) and a small
//!    `start.sh`, and three commits that change only `start.sh`; deploys the three in turn
//!    (the served branch moved to each before its deploy, as pushes would),
//!    each in a child process (this example run as `--child ...`) whose peak RSS (VmHWM) is
//!    read at its end, beside the VmHWM of a child that does nothing; then the disk used by
//!    the three kept releases (hard links counted once) and by the mirror; then a fourth
//!    commit that changes 4 KiB in the middle of the big file, which the server sends as a
//!    delta against its previous version (a thin pack): that deploy's peak, the mirror's size
//!    after it, and a check that the mirror passes `git verify-pack` and `git fsck --full` and
//!    that the release's file is the commit's blob.
//!
//! Each figure is printed as the median of the runs with the min and max.

use anyhow::{anyhow, bail, Context, Result};
use hammer_manager::runtime::git::{self, FetchRequest};
use hammer_manager::runtime::releases::Releases;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const USAGE: &str = "usage: git_bench [--runs N] [--commits N] [--big-mib N] [--keep]
  --runs N      runs of each measurement (default 3)
  --commits N   commits of the history repository (default 300)
  --big-mib N   size of the big file, MiB (default 100)
  --keep        keep the temporary directory (its path is printed)";

// The git server the runtime tests use (`git http-backend` behind a small Python server),
// without auth: one script for both.
#[allow(dead_code)]
#[path = "../tests/runtime_support/git_http.rs"]
mod git_http;

struct Args {
    runs: usize,
    commits: usize,
    big_mib: usize,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        runs: 3,
        commits: 300,
        big_mib: 100,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("{name} needs a number\n{USAGE}"))
        };
        match arg.as_str() {
            "--runs" => a.runs = num("--runs")?.max(1),
            "--commits" => a.commits = num("--commits")?.max(1),
            "--big-mib" => a.big_mib = num("--big-mib")?.max(1),
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        return child(&argv[2..]);
    }
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_path_buf();
    println!("working in {}", root.display());
    let served = root.join("served");
    std::fs::create_dir_all(&served)?;
    let server = Server::start(&served)?;

    // 1. History: shallow vs full.
    let hist = root.join("hist");
    make_history_repo(&hist, args.commits)?;
    bare_clone(&hist, &served, "hist.git")?;
    let url = format!("http://127.0.0.1:{}/hist.git", server.port);
    let mut figures: Vec<(String, Vec<f64>, &str)> = Vec::new();
    for full in [false, true] {
        let (mut sizes, mut times) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            let place = root.join(format!("h-{full}-{run}"));
            let started = Instant::now();
            deploy(&place, &url, "main", full)?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            sizes.push(du(&place.join("repo.git"), &mut HashSet::new()) as f64 / 1024.0);
            std::fs::remove_dir_all(&place)?;
        }
        let kind = if full {
            "full history"
        } else {
            "shallow (default)"
        };
        figures.push((format!("{kind}: mirror size"), sizes, "KiB"));
        figures.push((format!("{kind}: fetch + checkout"), times, "ms"));
    }
    let src_git = du(&hist.join(".git/objects"), &mut HashSet::new()) as f64 / 1024.0;
    println!(
        "\n{} commits, 60 files of 4 KiB, 3 rewritten per commit (the source's .git/objects: {src_git:.0} KiB, loose)",
        args.commits
    );
    print_figures(&figures, args.runs);

    // 2. A big file: peak RSS and disk for three kept releases.
    let big = root.join("big");
    let commits = make_big_repo(&big, args.big_mib)?;
    bare_clone(&big, &served, "big.git")?;
    std::fs::remove_dir_all(&big)?;
    let url = format!("http://127.0.0.1:{}/big.git", server.port);
    let exe = std::env::current_exe()?;
    let mut figures = Vec::new();
    let (mut rss, mut base, mut disk, mut mirror) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (changed, commits) = commits
        .split_last()
        .ok_or_else(|| anyhow!("no commits made"))?;
    let mut peak_each = vec![Vec::new(); commits.len()];
    let (mut peak_changed, mut mirror_changed) = (Vec::new(), Vec::new());
    let (mut time_first, mut time_changed) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let place = root.join(format!("b-{run}"));
        let mut peak: u64 = 0;
        for (i, c) in commits.iter().enumerate() {
            // The served branch moves on to the next commit, as a push would.
            git(
                &served.join("big.git"),
                &["update-ref", "refs/heads/main", c],
            )?;
            let started = Instant::now();
            let kb = run_child(
                &exe,
                &["deploy", &place.display().to_string(), &url, "main"],
            )?;
            if i == 0 {
                time_first.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            peak_each[i].push(kb as f64 / 1024.0);
            peak = peak.max(kb);
        }
        rss.push(peak as f64 / 1024.0);
        base.push(run_child(&exe, &["idle"])? as f64 / 1024.0);
        disk.push(du(&place.join("apps/releases"), &mut HashSet::new()) as f64 / 1048576.0);
        mirror.push(du(&place.join("repo.git"), &mut HashSet::new()) as f64 / 1048576.0);
        git(
            &served.join("big.git"),
            &["update-ref", "refs/heads/main", changed],
        )?;
        let started = Instant::now();
        let kb = run_child(
            &exe,
            &["deploy", &place.display().to_string(), &url, "main"],
        )?;
        time_changed.push(started.elapsed().as_secs_f64() * 1000.0);
        peak_changed.push(kb as f64 / 1024.0);
        mirror_changed.push(du(&place.join("repo.git"), &mut HashSet::new()) as f64 / 1048576.0);
        verify_changed(&place, changed)?;
        std::fs::remove_dir_all(&place)?;
    }
    println!(
        "\none {} MiB file + start.sh, 3 commits changing start.sh only, deployed in turn; then a 4th changing 4 KiB of the big file",
        args.big_mib
    );
    for (i, p) in peak_each.into_iter().enumerate() {
        figures.push((format!("peak RSS, deploy {} (VmHWM)", i + 1), p, "MiB"));
    }
    figures.push(("peak RSS of the three deploys".into(), rss, "MiB"));
    figures.push(("peak RSS of a child doing nothing".into(), base, "MiB"));
    figures.push(("disk: 3 kept releases".into(), disk, "MiB"));
    figures.push(("disk: mirror".into(), mirror, "MiB"));
    figures.push((
        "peak RSS, deploy 4: big file changed (VmHWM)".into(),
        peak_changed,
        "MiB",
    ));
    figures.push(("disk: mirror after deploy 4".into(), mirror_changed, "MiB"));
    figures.push((
        "time, deploy 1 (child process, fetch + checkout)".into(),
        time_first,
        "ms",
    ));
    figures.push((
        "time, deploy 4 (child process, fetch + checkout)".into(),
        time_changed,
        "ms",
    ));
    print_figures(&figures, args.runs);

    drop(server);
    if args.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}

/// After deploy 4: the mirror passes `git verify-pack` and `git fsck --full`, and the
/// release's `model.bin` is the commit's blob, byte for byte (its id, computed by git).
fn verify_changed(place: &Path, commit: &str) -> Result<()> {
    let mirror = place.join("repo.git");
    for entry in std::fs::read_dir(mirror.join("objects/pack"))? {
        let path = entry?.path();
        if path.extension().and_then(|x| x.to_str()) == Some("idx") {
            git(&mirror, &["verify-pack", &path.display().to_string()])?;
        }
    }
    git(&mirror, &["fsck", "--full", "--no-dangling"])?;
    let releases = Releases::new(&place.join("apps"));
    let current = releases
        .current()
        .ok_or_else(|| anyhow!("no current release after deploy 4"))?;
    let file = releases.path(&current).join("model.bin");
    let want = git(&mirror, &["rev-parse", &format!("{commit}:model.bin")])?;
    let got = git(&mirror, &["hash-object", &file.display().to_string()])?;
    if got != want {
        bail!("deploy 4 wrote model.bin as {got}, the commit has {want}");
    }
    Ok(())
}

/// `--child deploy PLACE URL COMMIT` or `--child idle`: prints VmHWM (KiB) at the end.
fn child(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("deploy") if args.len() == 4 => {
            deploy(Path::new(&args[1]), &args[2], &args[3], false)?;
        }
        Some("idle") => {}
        _ => bail!("bad child arguments {args:?}"),
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/self/status"))?;
    println!("{hwm}");
    Ok(())
}

fn run_child(exe: &Path, args: &[&str]) -> Result<u64> {
    let out = Command::new(exe).arg("--child").args(args).output()?;
    if !out.status.success() {
        bail!("child {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("child output")
}

/// Fetches and checks out `git_ref` into `place/apps` (mirror `place/repo.git`), sharing
/// unchanged files with the current release, and makes it current.
fn deploy(place: &Path, url: &str, git_ref: &str, full_history: bool) -> Result<()> {
    std::fs::create_dir_all(place)?;
    let releases = Releases::new(&place.join("apps"));
    let req = FetchRequest {
        url: url.into(),
        git_ref: git_ref.into(),
        full_history,
        share_unchanged: true,
        ..FetchRequest::default()
    };
    let commit = git::fetch_and_checkout(&place.join("repo.git"), &releases, &req)
        .map_err(|e| anyhow!("{e}"))?;
    releases.set_current(&commit)?;
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.com")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.com")
        .output()
        .context("git runs")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Incompressible bytes (xorshift), different for each seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn make_history_repo(dir: &Path, commits: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    for c in 0..commits {
        let files: Vec<usize> = if c == 0 {
            (0..60).collect()
        } else {
            (0..3).map(|k| (c * 7 + k * 13) % 60).collect()
        };
        for f in files {
            let text = hex::encode(noise((c * 100 + f) as u64, 2048));
            std::fs::write(dir.join(format!("f{f:02}.txt")), text)?;
        }
        git(dir, &["add", "-A"])?;
        git(dir, &["commit", "-q", "-m", &format!("c{c}")])?;
    }
    Ok(())
}

/// A repository with one big file and three commits changing only `start.sh`, then a fourth
/// that changes 4 KiB in the middle of the big file.
fn make_big_repo(dir: &Path, mib: usize) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    let mut model = noise(7, mib * 1024 * 1024);
    std::fs::write(dir.join("model.bin"), &model)?;
    let mut commits = Vec::new();
    for i in 0..3 {
        std::fs::write(dir.join("start.sh"), format!("#!/bin/sh\necho {i}\n"))?;
        git(dir, &["add", "-A"])?;
        git(dir, &["commit", "-q", "-m", &format!("v{i}")])?;
        commits.push(git(dir, &["rev-parse", "HEAD"])?);
    }
    let mid = model.len() / 2;
    let end = (mid + 4096).min(model.len());
    model[mid..end].copy_from_slice(&noise(8, end - mid));
    std::fs::write(dir.join("model.bin"), &model)?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "model changed"])?;
    commits.push(git(dir, &["rev-parse", "HEAD"])?);
    Ok(commits)
}

fn bare_clone(src: &Path, served: &Path, name: &str) -> Result<()> {
    git(
        served,
        &["clone", "-q", "--bare", &src.display().to_string(), name],
    )?;
    Ok(())
}

/// Bytes on disk under `path`, each inode counted once.
fn du(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !seen.insert((meta.dev(), meta.ino())) {
        return 0;
    }
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return own;
    };
    own + entries.flatten().map(|e| du(&e.path(), seen)).sum::<u64>()
}

fn print_figures(figures: &[(String, Vec<f64>, &str)], runs: usize) {
    println!(
        "{:<44} {:>12} {:>22}",
        "",
        format!("median of {runs}"),
        "min - max"
    );
    for (name, values, unit) in figures {
        let mut v = values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = v[v.len() / 2];
        println!(
            "{name:<44} {:>12} {:>22}",
            format!("{median:.1} {unit}"),
            format!("{:.1} - {:.1} {unit}", v[0], v[v.len() - 1])
        );
    }
}

/// The HTTP git server; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(root: &Path) -> Result<Server> {
        let script: PathBuf = root.join("server.py");
        std::fs::write(&script, git_http::HTTP_SERVER)?;
        // No user and no token: the script then asks for no authorization.
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(root)
            .arg("")
            .arg("")
            .stdout(Stdio::piped())
            .spawn()
            .context("python3 runs")?;
        let mut line = String::new();
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        BufReader::new(out).read_line(&mut line)?;
        let port = line.trim().parse().context("the server prints its port")?;
        Ok(Server { child, port })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
