//! `hammer window add|list|rm` through the real binary against a real service: a bad window
//! is refused before any request with a valid example, a window is added for a device and a
//! tag, listed (table and exact `--json`), shown for one device, and removed; another user
//! cannot remove it.

use crate::common::Harness;
use crate::hammer;
use serde_json::{json, Value};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammer_window_adds_lists_shows_and_removes_maintenance_windows() {
    let h = Harness::start().await;
    let t = h.user("alice").await;
    let bob = h.user("bob").await;
    let home = tempfile::tempdir().unwrap();
    let (s, v) = h
        .post(
            "/api/v1/devices",
            &t,
            json!({"name": "pi", "tags": {"site": "lab"}}),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{v}");

    // Refused before any request: the message names a valid example.
    let out = hammer(
        &h,
        &t,
        home.path(),
        &["window", "add", "--device", "pi", "weeknights"],
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("e.g. \"mon-fri 22:00-04:00\""), "{err}");
    let out = hammer(&h, &t, home.path(), &["window", "add", "daily 01:00-02:00"]).await;
    assert!(!out.status.success(), "neither --device nor --tag: {out:?}");
    let out = hammer(
        &h,
        &t,
        home.path(),
        &["window", "add", "--device", "ghost", "daily 01:00-02:00"],
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("no device named"), "{out:?}");

    let out = hammer(
        &h,
        &t,
        home.path(),
        &[
            "window",
            "add",
            "--device",
            "pi",
            "mon,tue,wed,thu,fri 22:00-04:00",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["window"], "mon-fri 22:00-04:00", "{added}");
    let id = added["id"].as_str().unwrap().to_owned();
    let out = hammer(
        &h,
        &t,
        home.path(),
        &[
            "window",
            "add",
            "--tag",
            "site=lab",
            "sat,sun 00:00-24:00",
            "--name",
            "weekend",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("for tag site=lab: sat,sun 00:00-24:00 (UTC)"),
        "{out:?}"
    );

    // Listed: the exact JSON, and a table.
    let out = hammer(&h, &t, home.path(), &["window", "list", "--json"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, api) = h.get("/api/v1/windows", &t).await;
    assert_eq!(listed, api);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let out = hammer(&h, &t, home.path(), &["window", "list"]).await;
    let table = text(&out.stdout);
    assert!(
        table.contains(&id) && table.contains("device pi") && table.contains("weekend"),
        "{table}"
    );

    // One device: both windows apply to it (by name and by tag).
    let out = hammer(
        &h,
        &t,
        home.path(),
        &["window", "list", "--device", "pi", "--json"],
    )
    .await;
    let dev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dev["windows"].as_array().unwrap().len(), 2, "{dev}");
    let out = hammer(&h, &t, home.path(), &["window", "list", "--device", "pi"]).await;
    let line = text(&out.stdout);
    assert!(
        line.starts_with("pi: in a maintenance window now")
            || line.starts_with(
                "pi: outside its maintenance windows; a deployment launches it when the next opens"
            ),
        "{line}"
    );

    // Bob cannot remove it; alice can, once.
    let out = hammer(&h, &bob, home.path(), &["window", "rm", &id]).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("hammer window list"), "{out:?}");
    let out = hammer(&h, &t, home.path(), &["window", "rm", &id]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains(&format!("removed maintenance window {id}")));
    let out = hammer(&h, &t, home.path(), &["window", "rm", "NOT-AN-ID"]).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("not a maintenance window id"),
        "{out:?}"
    );
    let (_, api) = h.get("/api/v1/windows", &t).await;
    assert_eq!(api.as_array().unwrap().len(), 1);
}
