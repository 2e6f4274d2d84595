//! Upgrading to the app-dir layout (decision 0007): a data dir left by the previous version,
//! with `releases/` and `current` inside it, must not brick the device. The runtime moves the
//! releases into the app dir and starts the current release again from there.

use crate::runtime_support::*;
use hammer_protocol::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_previous_layout_keeps_running_its_release_from_the_app_dir() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let rt = w.spawn();
    send(&rt, w.desired(1, "main")).await;
    w.sink.wait_for(1, Phase::Running, 0).await;
    rt.shutdown(true).await;
    w.no_app().await;

    // What the previous version left: the releases and `current` in the data dir, no app dir.
    let (data, apps) = (w.data_dir(), w.app_dir());
    std::fs::rename(apps.join("releases"), data.join("releases")).unwrap();
    std::os::unix::fs::symlink(
        std::path::Path::new("releases").join(&v1),
        data.join("current"),
    )
    .unwrap();
    std::fs::remove_dir_all(&apps).unwrap();

    let from = w.sink.count();
    let rt = w.spawn();
    w.sink.wait_for(1, Phase::Restarted, from).await;
    let pid = w.one_app(&v1).await;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(
        cwd,
        std::fs::canonicalize(apps.join("releases").join(&v1)).unwrap(),
        "the app runs from the app dir"
    );
    assert_eq!(
        std::fs::read_link(apps.join("current")).unwrap(),
        std::path::Path::new("releases").join(&v1)
    );
    assert!(!data.join("releases").exists(), "moved out of the data dir");
    assert!(std::fs::symlink_metadata(data.join("current")).is_err());
    rt.shutdown(true).await;
    w.no_app().await;
}
