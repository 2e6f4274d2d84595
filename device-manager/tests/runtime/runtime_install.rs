//! The install step of a release with real repositories and real processes: it runs in the
//! new release's folder while the old app keeps running (same pid), at nice 10, with its
//! output in the app log; a failure or a timeout fails the deployment with the output's tail
//! and leaves the old app as it was; dependency folders are reused while their key file is
//! unchanged; the same commit installed another way gets a fresh folder; and an install cut
//! short by an abandoned runtime (what SIGKILL does to the manager) is run again once, then
//! fails.
//!
//! The install command is a script of the repository (no network): it records each run in
//! `$OUT/installs`, and makes `node_modules/marker` (naming the commit that made it) unless
//! the folder is already there.

use crate::runtime_support::*;
use hammer_manager::runtime::Step;
use hammer_protocol::{parse_reuse, InstallStep, Phase};
use std::path::{Path, PathBuf};
use std::time::Duration;

const INSTALL_SH: &str = r#"#!/bin/sh
echo "installing $HAMMER_COMMIT"
echo "$HAMMER_COMMIT nice=$(nice)" >> "$OUT/installs"
if [ -d node_modules ]; then
  echo "node_modules is there"
else
  mkdir node_modules && echo "$HAMMER_COMMIT" > node_modules/marker
fi
case "$1" in
  fail) echo "npm ERR! something broke"; exit 3 ;;
  slow) echo "this will take a while"; exec sleep 1000 ;;
  hold) while [ -f "$OUT/hold" ]; do sleep 0.05; done ;;
esac
echo "install done"
"#;

/// Commits the app with `install.sh` and a `package-lock.json` of `lock`.
fn commit(w: &World, lock: &str, note: &str) -> String {
    let dir = &w.repo.dir;
    std::fs::write(dir.join("install.sh"), INSTALL_SH).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("install.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.join("package-lock.json"), lock).unwrap();
    w.repo.commit_app(GOOD_APP, true, note)
}

fn with_install(
    w: &World,
    generation: u64,
    args: &str,
    timeout_secs: u32,
) -> hammer_protocol::DesiredState {
    let mut d = w.desired(generation, "main");
    d.install = Some(InstallStep {
        command: format!("./install.sh {args}"),
        timeout_secs,
        reuse: vec![parse_reuse("node_modules:package-lock.json").unwrap()],
    });
    d
}

fn release(w: &World, commit: &str) -> PathBuf {
    w.app_dir().join("releases").join(commit)
}

fn installs(w: &World) -> Vec<String> {
    std::fs::read_to_string(w.out.join("installs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn marker(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node_modules/marker"))
        .unwrap_or_else(|e| panic!("{}: no node_modules/marker: {e}", dir.display()))
        .trim()
        .to_string()
}

/// Folders under `releases/` that are not releases (interrupted installs, replaced folders).
fn temporary_folders(w: &World) -> Vec<String> {
    std::fs::read_dir(w.app_dir().join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Deploys generation 1 (with the install step) and waits for it to run.
async fn first_release(w: &World, rt: &hammer_manager::runtime::RuntimeHandle) -> (String, i32) {
    let v1 = commit(w, "lock v1", "v1");
    send(rt, with_install(w, 1, "", 30)).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    let pid = w.one_app(&v1).await;
    (v1, pid)
}

#[tokio::test]
async fn the_install_runs_in_the_new_release_beside_the_running_app_at_low_priority() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, pid1) = first_release(&w, &rt).await;
    assert_eq!(marker(&release(&w, &v1)), v1);
    assert_eq!(installs(&w), vec![format!("{v1} nice=10")]);

    // Generation 2 holds its install until the test says so: the old app runs meanwhile.
    let v2 = commit(&w, "lock v2", "v2");
    std::fs::write(w.out.join("hold"), "").unwrap();
    let n = w.sink.count();
    send(&rt, with_install(&w, 2, "hold", 30)).await;
    let r = w.sink.wait_for(2, Phase::Installing, n).await;
    assert_eq!(r.commit.as_deref(), Some(v2.as_str()));
    let detail = r.detail.unwrap_or_default();
    assert!(detail.contains("./install.sh hold"), "{detail}");
    assert!(
        detail.contains("node_modules: not reused (package-lock.json changed)"),
        "{detail}"
    );
    assert_eq!(rt.status().step, Step::Installing);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.apps().iter().any(|(pid, c)| *pid == pid1 && *c == v1));
    assert!(
        !release(&w, &v2).exists(),
        "the release appears only when installed"
    );
    std::fs::remove_file(w.out.join("hold")).unwrap();
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    w.one_app(&v2).await;
    assert_eq!(marker(&release(&w, &v2)), v2);
    assert_eq!(
        marker(&release(&w, &v1)),
        v1,
        "the previous release is intact"
    );
    assert!(
        temporary_folders(&w).is_empty(),
        "{:?}",
        temporary_folders(&w)
    );

    // The install's output is in the app log, marked.
    let log = std::fs::read_to_string(w.data_dir().join("app.log")).unwrap();
    assert!(log.contains(&format!("[install] installing {v2}")), "{log}");
    assert!(log.contains("[install] install done"), "{log}");
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn a_failed_install_fails_the_deployment_and_leaves_the_old_app_running() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, pid1) = first_release(&w, &rt).await;
    let v2 = commit(&w, "lock v2", "v2");
    let n = w.sink.count();
    send(&rt, with_install(&w, 2, "fail", 30)).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Failed, "{r:?}");
    assert_eq!(r.commit.as_deref(), Some(v2.as_str()));
    let detail = r.detail.unwrap_or_default();
    assert!(detail.contains("exited with status 3"), "{detail}");
    assert!(detail.contains("left as it was"), "{detail}");
    assert!(
        r.log_tail.iter().any(|l| l == "npm ERR! something broke"),
        "{:?}",
        r.log_tail
    );
    assert_eq!(w.one_app(&v1).await, pid1, "the old app was not touched");
    assert_eq!(rt.status().commit.as_deref(), Some(v1.as_str()));
    assert!(!release(&w, &v2).exists());
    assert!(
        temporary_folders(&w).is_empty(),
        "{:?}",
        temporary_folders(&w)
    );
    let log = std::fs::read_to_string(w.data_dir().join("app.log")).unwrap();
    assert!(log.contains("[install] npm ERR! something broke"), "{log}");
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn an_install_over_its_timeout_is_stopped_and_fails_the_deployment() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, pid1) = first_release(&w, &rt).await;
    let v2 = commit(&w, "lock v1", "v2");
    let n = w.sink.count();
    let started = std::time::Instant::now();
    send(&rt, with_install(&w, 2, "slow", 1)).await;
    w.sink.wait_for(2, Phase::Installing, n).await;
    // The install's own `sleep` runs beside the app (it carries the test's env).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = w.apps();
    assert!(during.contains(&(pid1, v1.clone())), "{during:?}");
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Failed, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let detail = r.detail.unwrap_or_default();
    assert!(detail.contains("did not finish within 1 s"), "{detail}");
    assert!(detail.contains("--install-timeout"), "{detail}");
    assert!(
        r.log_tail.iter().any(|l| l == "this will take a while"),
        "{:?}",
        r.log_tail
    );
    // Its process group is gone; the old app is the one that ran before.
    assert_eq!(w.one_app(&v1).await, pid1);
    assert!(!release(&w, &v2).exists());
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn a_dependency_folder_is_reused_while_its_key_file_is_unchanged() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, _) = first_release(&w, &rt).await;

    // Code only: package-lock.json unchanged, node_modules comes from v1; the install runs.
    let v2 = commit(&w, "lock v1", "v2");
    let n = w.sink.count();
    send(&rt, with_install(&w, 2, "", 30)).await;
    let r = w.sink.wait_for(2, Phase::Installing, n).await;
    let detail = r.detail.unwrap_or_default();
    assert!(
        detail.contains(&format!(
            "node_modules: reused from {} (package-lock.json unchanged)",
            &v1[..12]
        )),
        "{detail}"
    );
    w.sink.wait_for(2, Phase::Running, n).await;
    w.one_app(&v2).await;
    assert_eq!(marker(&release(&w, &v2)), v1, "reused, not made anew");
    assert_eq!(
        marker(&release(&w, &v1)),
        v1,
        "the previous release keeps its own"
    );
    assert_eq!(installs(&w).len(), 2, "the install still runs");

    // The key file changed: node_modules is made anew.
    let v3 = commit(&w, "lock v3", "v3");
    let n = w.sink.count();
    send(&rt, with_install(&w, 3, "", 30)).await;
    let r = w.sink.wait_for(3, Phase::Installing, n).await;
    let detail = r.detail.unwrap_or_default();
    assert!(
        detail.contains("node_modules: not reused (package-lock.json changed)"),
        "{detail}"
    );
    w.sink.wait_for(3, Phase::Running, n).await;
    w.one_app(&v3).await;
    assert_eq!(marker(&release(&w, &v3)), v3);
    assert_eq!(
        marker(&release(&w, &v2)),
        v1,
        "the rollback target is intact"
    );
    assert_eq!(installs(&w).len(), 3);
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn the_running_commit_installed_another_way_gets_a_new_folder() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, pid1) = first_release(&w, &rt).await;
    // Same commit, another install command: installed in a copy while v1 runs, then it
    // replaces the folder and the app restarts from it.
    let n = w.sink.count();
    let mut d2 = with_install(&w, 2, "", 30);
    if let Some(step) = d2.install.as_mut() {
        step.command = "./install.sh && echo again > again".into();
    }
    send(&rt, d2).await;
    w.sink.wait_for(2, Phase::Installing, n).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    let pid2 = w.one_app(&v1).await;
    assert_ne!(pid1, pid2);
    assert!(release(&w, &v1).join("again").is_file());
    assert_eq!(marker(&release(&w, &v1)), v1, "its own node_modules, kept");
    assert!(
        temporary_folders(&w).is_empty(),
        "{:?}",
        temporary_folders(&w)
    );
    rt.shutdown(true).await;
    w.no_app().await;
}

/// Starts generation 2's install (held) and abandons the runtime during it.
async fn abandon_during_install(
    w: &World,
    rt: hammer_manager::runtime::RuntimeHandle,
    generation: u64,
) {
    let n = w.sink.count();
    let before = installs(w).len();
    if generation > 0 {
        send(&rt, with_install(w, generation, "hold", 30)).await;
        w.sink.wait_for(generation, Phase::Installing, n).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while installs(w).len() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the install did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rt.status().step, Step::Installing);
    rt.abandon();
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn an_install_cut_short_by_a_crash_is_run_again_from_a_fresh_checkout() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, _) = first_release(&w, &rt).await;
    let v2 = commit(&w, "lock v2", "v2");
    std::fs::write(w.out.join("hold"), "").unwrap();
    abandon_during_install(&w, rt, 2).await;
    assert!(
        !temporary_folders(&w).is_empty(),
        "the half-done install is left"
    );

    std::fs::remove_file(w.out.join("hold")).unwrap();
    let n = w.sink.count();
    let rt = w.spawn();
    let r = w.sink.wait_for(2, Phase::Installing, n).await;
    let detail = r.detail.unwrap_or_default();
    assert!(detail.contains("run 2"), "{detail}");
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    w.one_app(&v2).await;
    let runs: Vec<String> = installs(&w)
        .into_iter()
        .filter(|l| l.starts_with(&v2))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(marker(&release(&w, &v2)), v2);
    assert!(
        temporary_folders(&w).is_empty(),
        "{:?}",
        temporary_folders(&w)
    );
    assert_eq!(rt.status().previous_commit.as_deref(), Some(v1.as_str()));
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn an_install_cut_short_twice_fails_and_the_old_app_runs() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, _) = first_release(&w, &rt).await;
    let v2 = commit(&w, "lock v2", "v2");
    std::fs::write(w.out.join("hold"), "").unwrap();
    abandon_during_install(&w, rt, 2).await;
    // The second run is cut short too.
    let rt = w.spawn();
    abandon_during_install(&w, rt, 0).await;

    let n = w.sink.count();
    let rt = w.spawn();
    let r = w
        .sink
        .wait_any(2, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Failed, "{r:?}");
    assert_eq!(r.commit.as_deref(), Some(v2.as_str()));
    let detail = r.detail.unwrap_or_default();
    assert!(detail.contains("cut short 2 times"), "{detail}");
    w.one_app(&v1).await;
    assert_eq!(rt.status().commit.as_deref(), Some(v1.as_str()));
    assert_eq!(rt.status().step, Step::Idle);
    assert!(
        temporary_folders(&w).is_empty(),
        "{:?}",
        temporary_folders(&w)
    );
    std::fs::remove_file(w.out.join("hold")).unwrap();
    rt.shutdown(true).await;
    w.no_app().await;
}

#[tokio::test]
async fn a_shutdown_during_the_install_stops_it_and_the_next_start_redoes_the_deployment() {
    let w = World::new();
    let rt = w.spawn();
    let (_, _) = first_release(&w, &rt).await;
    let v2 = commit(&w, "lock v2", "v2");
    std::fs::write(w.out.join("hold"), "").unwrap();
    let n = w.sink.count();
    send(&rt, with_install(&w, 2, "hold", 30)).await;
    w.sink.wait_for(2, Phase::Installing, n).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while installs(&w).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the install did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = std::time::Instant::now();
    rt.shutdown(true).await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    w.no_app().await;
    let status = hammer_manager::runtime::local_status(&w.layout(), &w.db).unwrap();
    assert_eq!(status.step, Step::Fetching, "redone on the next start");
    assert!(
        temporary_folders(&w).is_empty(),
        "{:?}",
        temporary_folders(&w)
    );

    std::fs::remove_file(w.out.join("hold")).unwrap();
    let n = w.sink.count();
    let rt = w.spawn();
    let r = w.sink.wait_for(2, Phase::Installing, n).await;
    let detail = r.detail.unwrap_or_default();
    assert!(
        !detail.contains("run 2"),
        "a shutdown is not a crash: {detail}"
    );
    w.sink.wait_for(2, Phase::Running, n).await;
    w.one_app(&v2).await;
    rt.shutdown(true).await;
    w.no_app().await;
}

/// The example app of `examples/node-app`, with a stand-in for `npm ci` (no network): the
/// install step puts a tiny `ms` into `node_modules`, the app starts with `node server.js`
/// and answers.
#[tokio::test]
async fn the_node_example_app_runs_after_its_install_step() {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI has node for this test"
        );
        eprintln!("skipped: no node on PATH");
        return;
    }
    let w = World::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node-app");
    for file in ["package.json", "package-lock.json", "server.js"] {
        std::fs::copy(example.join(file), w.repo.dir.join(file)).unwrap();
    }
    git(&w.repo.dir, &["add", "-A"]);
    git(&w.repo.dir, &["commit", "-q", "-m", "node app"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut d = w.desired(1, "main");
    d.start = "node server.js".into();
    d.env.insert("PORT".into(), port.to_string());
    d.health_window_secs = 2;
    d.health_cmd = Some(format!(
        "node -e \"require('http').get('http://127.0.0.1:{port}/', r => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1))\""
    ));
    d.install = Some(InstallStep {
        command: "mkdir -p node_modules/ms && echo 'module.exports = (n) => n + \" ms\";' > node_modules/ms/index.js".into(),
        timeout_secs: 60,
        reuse: vec![parse_reuse("node_modules:package-lock.json").unwrap()],
    });
    let rt = w.spawn();
    send(&rt, d).await;
    let r = w
        .sink
        .wait_any(1, &[Phase::Running, Phase::Failed, Phase::RolledBack], 0)
        .await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains("hello from hammer node-app 1.0.0"),
        "{answer}"
    );
    assert!(
        answer.contains(" ms\n"),
        "the dependency answered: {answer}"
    );
    rt.shutdown(true).await;
}

#[tokio::test]
async fn a_kept_release_deployed_again_is_installed_from_a_fresh_checkout() {
    let w = World::new();
    let rt = w.spawn();
    let (v1, _) = first_release(&w, &rt).await;
    // Something the earlier install left, which a fresh checkout does not have.
    std::fs::write(release(&w, &v1).join("left-by-the-old-install"), "x").unwrap();
    for (generation, lock) in [(2, "lock v2"), (3, "lock v3")] {
        commit(&w, lock, &format!("v{generation}"));
        let n = w.sink.count();
        send(&rt, with_install(&w, generation, "", 30)).await;
        let r = w
            .sink
            .wait_any(generation, &[Phase::Running, Phase::Failed], n)
            .await;
        assert_eq!(r.phase, Phase::Running, "{r:?}");
    }
    // v1 is kept (neither current nor previous) and deployed again, pinned.
    assert!(release(&w, &v1).is_dir());
    let mut d4 = with_install(&w, 4, "", 30);
    d4.commit = Some(v1.clone());
    let n = w.sink.count();
    send(&rt, d4).await;
    let r = w
        .sink
        .wait_any(4, &[Phase::Running, Phase::Failed, Phase::RolledBack], n)
        .await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    w.one_app(&v1).await;
    assert!(!release(&w, &v1).join("left-by-the-old-install").exists());
    assert_eq!(
        marker(&release(&w, &v1)),
        v1,
        "made anew (lock v1 is not v3's)"
    );
    assert!(
        temporary_folders(&w).is_empty(),
        "{:?}",
        temporary_folders(&w)
    );
    rt.shutdown(true).await;
    w.no_app().await;
}
