//! `hammer deploy` names the commit itself: it resolves the ref with the user's own git
//! access (`git ls-remote`, here against a real local repository) and the service puts that
//! commit in every desired state. When it cannot, it says so in one line and deploys anyway.

use crate::common::{Behavior, Harness, SimDevice};
use crate::hammer;
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository whose `main` has two commits; returns its `main` commit.
fn repo_with_main(dir: &Path) -> String {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", "one"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", "two"]);
    git(dir, &["rev-parse", "HEAD"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammer_deploy_without_a_commit_deploys_the_commit_the_ref_names_in_the_users_repository() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("app");
    std::fs::create_dir(&repo).unwrap();
    let main = repo_with_main(&repo);
    let bundle = h.provision("alice", "d1", json!({})).await;
    let dev = SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Silent).await;
    h.setup_device(&t, "d1", &format!("file://{}", repo.display()))
        .await;

    let out = hammer(&h, &t, work.path(), &["deploy", "d1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(stderr.contains(&main), "says which commit: {stderr}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let d = dev.wait_desired().await;
    assert_eq!(d.commit.as_deref(), Some(main.as_str()), "{d:?}");
    assert_eq!(d.git_ref, "main", "the ref stays the branch the user named");
    let (_, v) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(v["commit"], main.as_str(), "{v}");
    assert!(
        v["git_ref"].is_null(),
        "the deployment keeps the devices' own ref: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammer_deploy_with_an_explicit_commit_names_it_even_when_the_ref_moved_on() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("app");
    std::fs::create_dir(&repo).unwrap();
    let main = repo_with_main(&repo);
    let first = git(&repo, &["rev-parse", "HEAD~1"]);
    assert_ne!(first, main);
    let bundle = h.provision("alice", "d1", json!({})).await;
    let dev = SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Silent).await;
    h.setup_device(&t, "d1", &format!("file://{}", repo.display()))
        .await;

    let out = hammer(&h, &t, work.path(), &["deploy", "d1", "--commit", &first]).await;
    assert!(out.status.success(), "{out:?}");
    let d = dev.wait_desired().await;
    assert_eq!(d.commit.as_deref(), Some(first.as_str()), "{d:?}");

    // Anything but a full commit id is refused before a request is made.
    let out = hammer(
        &h,
        &t,
        work.path(),
        &["deploy", "d1", "--commit", "abc1234"],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a full commit id"), "{stderr}");
    // And by the API.
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["d1"]}, "commit": "main"}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammer_deploy_that_cannot_resolve_the_ref_warns_once_and_leaves_the_pin_to_the_service() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no-such-repo");
    let bundle = h.provision("alice", "d1", json!({})).await;
    let dev = SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Silent).await;
    h.setup_device(&t, "d1", &format!("file://{}", missing.display()))
        .await;

    let out = hammer(&h, &t, work.path(), &["deploy", "d1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("the service will pin the commit"),
        "{stderr}"
    );
    let d = dev.wait_desired().await;
    assert_eq!(d.commit, None);
    assert_eq!(d.git_ref, "main");
}
