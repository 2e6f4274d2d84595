//! The device tells its own story: the real `hammer-manager` binary (as root here, so the app
//! and its install step run as `hammer-app`) deploys releases with an install step, and its
//! log (stderr) holds one clear line for the failed deployment, the rollback and the refused
//! message, naming the deployment, the commit, the step and the reason. On the way: the
//! install ran as the app user, its output became the manager's (root, 0644) once installed,
//! and a reused dependency folder shares its files with the previous release by hard link.

use crate::agent_support::*;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hammer-manager");

const INSTALL_SH: &str = r#"#!/bin/sh
echo "installing $HAMMER_COMMIT as $(id -un)"
id -u > installed-by
[ -d node_modules ] || { mkdir node_modules && echo "$HAMMER_COMMIT" > node_modules/marker; }
if [ "$1" = fail ]; then echo "npm ERR! code E404"; exit 3; fi
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn commit(repo: &Path, lock: &str, note: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let exec = std::fs::Permissions::from_mode(0o755);
    std::fs::write(repo.join("start.sh"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(repo.join("start.sh"), exec.clone()).unwrap();
    std::fs::write(repo.join("install.sh"), INSTALL_SH).unwrap();
    std::fs::set_permissions(repo.join("install.sh"), exec).unwrap();
    std::fs::write(repo.join("package-lock.json"), lock).unwrap();
    std::fs::write(repo.join("NOTE"), note).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", note]);
    git(repo, &["rev-parse", "HEAD"])
}

/// The log without colour codes.
fn plain_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The one line of `log` containing `marker`, which must also name every one of `facts`.
fn line_with(log: &str, marker: &str, facts: &[&str]) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(marker)).collect();
    assert_eq!(lines.len(), 1, "one {marker:?} line expected; log:\n{log}");
    for fact in facts {
        assert!(lines[0].contains(fact), "{fact:?} missing in: {}", lines[0]);
    }
    lines[0].to_string()
}

async fn outcome(svc: &mut Service, generation: u64) -> StatusEvent {
    svc.wait_for(
        &format!("the end of generation {generation}"),
        |s| match s {
            Seen::Status(e) if e.generation == Some(generation) && e.phase.ends_deployment() => {
                Some(e.clone())
            }
            _ => None,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_log_tells_each_failure_rollback_and_refusal() {
    let root = nix::unistd::geteuid().is_root();
    let app_uid = nix::unistd::User::from_name("hammer-app")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    let Some(app_uid) = app_uid.filter(|_| root) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs this test as root with a hammer-app user"
        );
        eprintln!("skipped: needs root and a hammer-app user");
        return;
    };
    let broker = start_broker();
    let key = SigningKeyPair::generate().unwrap();
    let mut svc = Service::connect(
        broker,
        SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap(),
    )
    .await;
    let dir = TempDir::new();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    make_data_dir(&data, broker, &key);
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);

    let log_path = dir.path().join("manager.log");
    let mut child = Command::new(BIN)
        .args(["run", "--health-interval", "3600", "--stop-grace", "2"])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    svc.wait_for("presence online", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    let releases: PathBuf = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("data-apps/releases");
    let want = |generation: u64, install: Option<&str>| {
        let mut d = desired(generation);
        d.repo_url = format!("file://{}", repo.display());
        d.install = install.map(|command| InstallStep {
            command: command.into(),
            timeout_secs: 60,
            reuse: vec![parse_reuse("node_modules:package-lock.json").unwrap()],
        });
        d
    };

    // 1: installed as the app user, then the manager's.
    let v1 = commit(&repo, "lock 1", "v1");
    svc.desired(&want(1, Some("./install.sh"))).await;
    let end = outcome(&mut svc, 1).await;
    assert_eq!(
        end.phase,
        Phase::Running,
        "{end:?}\n{}",
        plain_log(&log_path)
    );
    let r1 = releases.join(&v1);
    let by = std::fs::read_to_string(r1.join("installed-by")).unwrap();
    assert_eq!(
        by.trim(),
        app_uid.to_string(),
        "the install ran as hammer-app"
    );
    for made in ["installed-by", "node_modules", "node_modules/marker"] {
        let meta = std::fs::symlink_metadata(r1.join(made)).unwrap();
        assert_eq!(meta.uid(), 0, "{made} is the manager's");
        let want = if meta.is_dir() { 0o755 } else { 0o644 };
        assert_eq!(meta.mode() & 0o7777, want, "{made}");
    }

    // 2: code only: node_modules is v1's, shared by hard link, and v1 keeps it.
    let v2 = commit(&repo, "lock 1", "v2");
    svc.desired(&want(2, Some("./install.sh"))).await;
    let end = outcome(&mut svc, 2).await;
    assert_eq!(end.phase, Phase::Running, "{end:?}");
    let marker = releases.join(&v2).join("node_modules/marker");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), v1);
    assert_eq!(std::fs::metadata(&marker).unwrap().nlink(), 2);
    assert!(r1.join("node_modules/marker").is_file());

    // 3: the install fails: the deployment fails, v2 keeps running.
    let v3 = commit(&repo, "lock 3", "v3");
    svc.desired(&want(3, Some("./install.sh fail"))).await;
    let end = outcome(&mut svc, 3).await;
    assert_eq!(end.phase, Phase::Failed, "{end:?}");
    assert!(
        end.log_tail.iter().any(|l| l == "npm ERR! code E404"),
        "{end:?}"
    );

    // 4: a desired state signed by someone else is refused.
    let forger = SigningKeyPair::generate().unwrap();
    let forged = forger.sign_to_vec(&want(4, None)).unwrap();
    svc.publish(Channel::Desired, true, forged).await;
    let refused = svc.wait_phase(Phase::Refused).await;
    assert!(
        refused
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("signed by key"),
        "{refused:?}"
    );

    // 5: an app that exits at once is rolled back from.
    let mut d5 = want(5, None);
    d5.start = "exit 1".into();
    svc.desired(&d5).await;
    let end = outcome(&mut svc, 5).await;
    assert_eq!(end.phase, Phase::RolledBack, "{end:?}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = plain_log(&log_path);
    line_with(
        &log,
        "deployment failed",
        &[
            "dep3",
            &v3[..12],
            "installing",
            "exited with status 3",
            &v2[..12],
        ],
    );
    line_with(
        &log,
        "refused a message from the service",
        &[
            "phase=\"refused\"",
            "desired state refused",
            "signed by key",
        ],
    );
    line_with(
        &log,
        "deployment rolled back",
        &["dep5", "verifying", "exited", &v2[..12]],
    );
    assert!(!log.contains("npm ERR!"), "app output stays in app.log");
    if std::env::var_os("HAMMER_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the manager did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
