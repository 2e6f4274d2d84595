//! `hammer serve` drains on SIGTERM (issue 16, point 3): `/healthz` answers 503 at once, the
//! API is served through `--drain-grace`, then the process stops by itself, exiting 0.

use reqwest::StatusCode;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_serve_drains_on_sigterm() {
    crate::common::init();
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let log = dir.path().join("serve.log");
    let grace = Duration::from_secs(2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hammer"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
        .args([
            "--enroll-listen",
            "127.0.0.1:0",
            "--public-host",
            "127.0.0.1",
        ])
        .args(["--drain-grace", &grace.as_secs().to_string()])
        .env("RUST_LOG", "info,rumqttd=warn")
        .env("NO_COLOR", "1")
        .env_remove("HAMMER_DATA_DIR")
        .env_remove("HAMMER_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            assert_eq!(r.status(), StatusCode::OK);
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "hammer serve exited:\n{}",
            show_log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no /healthz:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    let admin = admin.trim();

    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let began = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    let unready = loop {
        let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.text().await.unwrap().starts_with("draining"));
            break began.elapsed();
        }
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "/healthz still ready:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the API during the grace");
    assert!(began.elapsed() < grace);

    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            began.elapsed() < grace + hammer_service::SHUTDOWN_DEADLINE + Duration::from_secs(5),
            "hammer serve did not stop:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stopped = began.elapsed();
    assert!(status.success(), "{status:?}\n{}", show_log());
    assert!(
        stopped >= grace,
        "stopped after {stopped:?}, within the grace"
    );
    let text = show_log();
    assert!(text.contains("draining"), "{text}");
    assert!(text.contains("service stopped"), "{text}");
    eprintln!(
        "SIGTERM → /healthz 503 after {unready:?}; exited after {stopped:?} (grace {grace:?})"
    );
}
