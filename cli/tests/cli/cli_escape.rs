//! The real `hammer` binary against a real service and a simulated device speaking the real
//! protocol: text the device supplies (status detail, commit, log tail, app log lines) with
//! terminal escape sequences and line breaks in it is printed escaped by every human
//! printer (`device history`, `device show`, `device list`, `logs`, `events`), while
//! `--json` keeps it exact.

use crate::common::{Behavior, Harness, SimDevice};
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, now_ms, Channel, LogBatch, Phase, StatusEvent, PROTOCOL_VERSION};
use rumqttc::QoS;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Retitles the terminal window, then clears the screen.
const EVIL: &str = "boom\x1b]0;pwned\x07\x1b[2J";
/// A log line that tries to start a line of its own.
const FAKE: &str = "\nFAKE 00:00:00 kiosk-1 running";
const COMMIT: &str = "\x1b[2J\u{9b}2J0123456789abcdef";

/// The CLI's environment: the service's URL, alice's token, an empty config folder.
fn hammer(h: &Harness, token: &str, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_hammer")));
    cmd.args(args)
        .env("HAMMER_URL", &h.base)
        .env("HAMMER_TOKEN", token)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("HOME", home)
        .env_remove("RUST_LOG")
        .env_remove("HAMMER_CA_CERT");
    cmd
}

async fn run(h: &Harness, token: &str, home: &Path, args: &[&str]) -> String {
    let mut cmd = hammer(h, token, home, args);
    let what = args.join(" ");
    let out: Output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "hammer {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// No raw control character reached the output, the device's text is there as escapes, and
/// its line break did not start a line.
fn assert_escaped(out: &str, what: &str) {
    for bad in ['\x1b', '\x07', '\u{9b}', '\r'] {
        assert!(
            !out.contains(bad),
            "`hammer {what}` printed a raw {bad:?}:\n{out:?}"
        );
    }
    assert!(
        out.contains(r"\x1b]0;pwned\x07") && out.contains(r"\x1b[2J"),
        "`hammer {what}` lost the device's text:\n{out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("FAKE")),
        "`hammer {what}` let the device start a line:\n{out}"
    );
}

async fn publish(dev: &SimDevice, channel: Channel, payload: Vec<u8>) {
    dev.client
        .publish(topic(&dev.id, channel), QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
}

async fn evil_status(dev: &SimDevice, phase: Phase) -> u64 {
    let seq = dev.next_seq();
    let ev = StatusEvent {
        v: PROTOCOL_VERSION,
        epoch: dev.epoch,
        seq,
        generation: None,
        deployment_id: None,
        phase,
        commit: Some(COMMIT.into()),
        time: now_ms(),
        detail: Some(format!("{EVIL}{FAKE}")),
        log_tail: vec![format!("tail {EVIL}"), format!("{FAKE}\r")],
        commit_subject: None,
    };
    publish(dev, Channel::Status, encode(&ev).unwrap()).await;
    seq
}

/// Kills the long-running `hammer events` even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_supplied_escape_sequences_are_printed_escaped_by_the_hammer_cli() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let home = tempfile::tempdir().unwrap();
    let bundle = h.provision("alice", "kiosk-1", serde_json::json!({})).await;
    let dev = SimDevice::connect(h.svc().mqtt_addr, &bundle, Behavior::Silent).await;

    // `hammer events`, started first; its lines arrive on `lines`.
    let mut child = hammer(&h, &alice, home.path(), &["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let events = Killed(child);
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Raw bytes up to each newline: a lossy line would hide a stray control byte.
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                return;
            }
            buf.clear();
        }
    });

    // The device reports until `hammer events` (connecting meanwhile) has printed one.
    let mut printed = String::new();
    for _ in 0..40 {
        let seq = evil_status(&dev, Phase::RolledBack).await;
        assert!(
            dev.wait_ack(seq).await,
            "the service never stored the status"
        );
        // Everything printed within a moment (a line per event).
        tokio::task::block_in_place(|| {
            while let Ok(l) = lines.recv_timeout(Duration::from_millis(500)) {
                printed.push_str(&l);
            }
        });
        if printed.contains("pwned") {
            break;
        }
    }
    drop(events);
    assert_escaped(&printed, "events");

    // History: the detail in the table, the log tail under it.
    let seq = evil_status(&dev, Phase::Running).await;
    assert!(dev.wait_ack(seq).await);
    let out = run(&h, &alice, home.path(), &["device", "history", "kiosk-1"]).await;
    assert_escaped(&out, "device history");
    assert!(
        out.contains(r"  | tail boom\x1b]0;pwned\x07\x1b[2J"),
        "{out}"
    );
    assert!(out.contains(r"\u{9b}"), "{out}");

    // The audit log records the rollbacks, with the device's detail escaped.
    let out = run(&h, &alice, home.path(), &["audit"]).await;
    assert_escaped(&out, "audit");
    assert!(out.contains("device_rolled_back"), "{out}");
    assert!(out.contains("device kiosk-1"), "{out}");

    // The commit the device reported running.
    let out = run(&h, &alice, home.path(), &["device", "show", "kiosk-1"]).await;
    assert!(
        out.contains(r"commit:      \x1b[2J\u{9b}2J0123456789abcdef"),
        "{out}"
    );
    let out = run(&h, &alice, home.path(), &["device", "list"]).await;
    assert!(out.contains(r"\x1b[2J\u{9b}2J012 "), "{out}");
    assert!(!out.contains('\x1b') && !out.contains('\u{9b}'), "{out:?}");

    // App log lines (kept only while someone watches: `hammer logs` starts watching).
    run(&h, &alice, home.path(), &["logs", "kiosk-1"]).await;
    let batch = LogBatch {
        v: PROTOCOL_VERSION,
        time: now_ms(),
        lines: vec![format!("log {EVIL}"), format!("{FAKE}")],
    };
    publish(&dev, Channel::Logs, encode(&batch).unwrap()).await;
    let mut out = String::new();
    for _ in 0..100 {
        out = run(&h, &alice, home.path(), &["logs", "kiosk-1"]).await;
        if out.contains("pwned") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_escaped(&out, "logs");
    assert!(out.contains(r"\nFAKE 00:00:00 kiosk-1 running"), "{out}");

    // `--json` is the exact data (JSON escapes the control characters itself).
    let out = run(
        &h,
        &alice,
        home.path(),
        &["--json", "device", "history", "kiosk-1"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"] == format!("{EVIL}{FAKE}")),
        "{out}"
    );
}
