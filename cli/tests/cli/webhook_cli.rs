//! `hammer webhook add|list|test|deliveries|rm` through the real binary: the `--json` shapes
//! (the API's bodies: the secret only in `add`'s), the human tables, and refusals made
//! before any request (an event that is not one) and by the service (a URL that is not
//! http(s)).

use crate::common::Harness;
use crate::hammer;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

async fn ok_json(h: &Harness, token: &str, home: &Path, args: &[&str]) -> Value {
    let out = hammer(h, token, home, args).await;
    assert!(
        out.status.success(),
        "hammer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hammer_webhook_add_list_test_deliveries_and_rm() {
    let h = Harness::start_with(|c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_base = Duration::from_millis(200);
    })
    .await;
    let t = h.user("alice").await;
    let home = tempfile::tempdir().unwrap();
    // Nobody listens there: the ping's attempts fail with a connection error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{port}/h");
    let added = ok_json(
        &h,
        &t,
        home.path(),
        &[
            "webhook",
            "add",
            &url,
            "--event",
            "deployment.created",
            "--event",
            "device.offline",
            "--json",
        ],
    )
    .await;
    let id = added["webhook"]["id"].as_str().unwrap().to_owned();
    let secret = added["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 64, "{added}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{added}");
    assert_eq!(added["webhook"]["url"], url.as_str());
    assert_eq!(
        added["webhook"]["events"],
        serde_json::json!(["deployment.created", "device.offline"])
    );
    assert_eq!(added["webhook"]["secret_prefix"], &secret[..6]);

    let list = ok_json(&h, &t, home.path(), &["webhook", "list", "--json"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("secret").is_none(), "{list}");
    let out = hammer(&h, &t, home.path(), &["webhook", "list"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&id) && text.contains("deployment.created,device.offline"),
        "{text}"
    );
    assert!(!text.contains(secret), "{text}");

    let ping = ok_json(&h, &t, home.path(), &["webhook", "test", &id, "--json"]).await;
    assert_eq!(ping["event"], "ping");
    assert_eq!(ping["state"], "pending");
    let mut log = Value::Null;
    for _ in 0..100 {
        log = ok_json(
            &h,
            &t,
            home.path(),
            &["webhook", "deliveries", &id, "--json"],
        )
        .await;
        if log[0]["attempt_count"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log[0]["id"], ping["id"], "{log}");
    assert!(
        log[0]["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{log}"
    );
    let out = hammer(&h, &t, home.path(), &["webhook", "deliveries", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ping") && text.contains("pending"), "{text}");

    // Refusals: an event that is not one (before any request), a URL that is not http(s).
    let out = hammer(
        &h,
        &t,
        home.path(),
        &["webhook", "add", &url, "--event", "ping"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("deployment.failed"));
    let out = hammer(
        &h,
        &t,
        home.path(),
        &["webhook", "add", "ftp://example.com/"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("https://"));

    let rm = ok_json(&h, &t, home.path(), &["webhook", "rm", &id, "--json"]).await;
    assert_eq!(rm["removed"], true);
    let list = ok_json(&h, &t, home.path(), &["webhook", "list", "--json"]).await;
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    let out = hammer(&h, &t, home.path(), &["webhook", "rm", &id]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no webhook"));
}
