//! Maintenance windows over HTTP (`/api/v1/windows`, `/api/v1/devices/{name}/windows`): a user
//! adds windows for a device and for a tag, lists them, reads which apply to a device; a bad
//! window is refused with what to write instead; another user neither sees nor removes them;
//! adding and removing are in the audit log. (The window rule itself is unit- and
//! property-tested in `rollout::window`, storage in the store contract suite.)

use crate::common::Harness;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_adds_lists_and_removes_windows_and_another_user_cannot_see_or_remove_them() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    for (name, tags) in [("pi", json!({"site": "lab"})), ("other", json!({}))] {
        let (s, v) = h
            .post(
                "/api/v1/devices",
                &alice,
                json!({"name": name, "tags": tags}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    let (s, by_name) = h
        .post(
            "/api/v1/windows",
            &alice,
            json!({"applies_to": {"device": "pi"}, "window": "mon,tue,wed,thu,fri 22:00-04:00", "name": "nightly"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{by_name}");
    assert_eq!(
        by_name["window"], "mon-fri 22:00-04:00",
        "the canonical text"
    );
    assert_eq!(by_name["name"], "nightly");
    assert_eq!(by_name["applies_to"], json!({"device": "pi"}));
    let (s, by_tag) = h
        .post(
            "/api/v1/windows",
            &alice,
            json!({"applies_to": {"tag": "site=lab"}, "window": "sat,sun 00:00-24:00"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{by_tag}");

    // Refusals say what to write instead.
    for (body, status, says) in [
        (
            json!({"applies_to": {"device": "pi"}, "window": "weeknights 22-4"}),
            StatusCode::BAD_REQUEST,
            "e.g. \"mon-fri 22:00-04:00\"",
        ),
        (
            json!({"applies_to": {"device": "pi"}, "window": "mon 25:00-26:00"}),
            StatusCode::BAD_REQUEST,
            "is not a time",
        ),
        (
            json!({"applies_to": {"tag": "lab"}, "window": "daily 01:00-02:00"}),
            StatusCode::BAD_REQUEST,
            "key=value",
        ),
        (
            json!({"applies_to": {"device": "ghost"}, "window": "daily 01:00-02:00"}),
            StatusCode::NOT_FOUND,
            "hammer device list",
        ),
        (
            json!({"applies_to": {"device": "pi", "tag": "a=b"}, "window": "daily 01:00-02:00"}),
            StatusCode::BAD_REQUEST,
            "invalid request body",
        ),
    ] {
        let (s, v) = h.post("/api/v1/windows", &alice, body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(says), "{body}: {e}");
    }

    let (s, list) = h.get("/api/v1/windows", &alice).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            by_name["id"].as_str().unwrap(),
            by_tag["id"].as_str().unwrap()
        ],
        "oldest first, only the two that were accepted"
    );

    // A device's windows: by its name and by its tag; a device without one is always open.
    let (s, pi) = h.get("/api/v1/devices/pi/windows", &alice).await;
    assert_eq!(s, StatusCode::OK, "{pi}");
    assert_eq!(pi["windows"].as_array().unwrap().len(), 2, "{pi}");
    assert_eq!(
        pi["open"] == true,
        pi["opens_at"].is_null(),
        "closed answers when it opens: {pi}"
    );
    let (s, other) = h.get("/api/v1/devices/other/windows", &alice).await;
    assert_eq!(s, StatusCode::OK, "{other}");
    assert_eq!(
        other,
        json!({"device": "other", "windows": [], "open": true, "opens_at": null})
    );

    // Bob sees none of them, reads no device of alice's, and removes nothing.
    let (s, v) = h.get("/api/v1/windows", &bob).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, v) = h.get("/api/v1/devices/pi/windows", &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let id = by_name["id"].as_str().unwrap();
    let (s, v) = h
        .call(Method::DELETE, &format!("/api/v1/windows/{id}"), &bob, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("hammer window list"),
        "{v}"
    );
    let (s, v) = h
        .post(
            "/api/v1/windows",
            &bob,
            json!({"applies_to": {"device": "pi"}, "window": "daily 01:00-02:00"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "bob has no device pi: {v}");

    // Alice removes one; once.
    let (s, v) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/windows/{id}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/windows/{id}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, list) = h.get("/api/v1/windows", &alice).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Both changes are in alice's audit log, with the window's id.
    let (_, log) = h.get("/api/v1/audit", &alice).await;
    let has = |action: &str, target: &str, result: &str| {
        log.as_array().unwrap().iter().any(|e: &Value| {
            e["action"] == action && e["target"] == target && e["result"] == result
        })
    };
    assert!(has("window_added", id, "201"), "{log:#}");
    assert!(has("window_removed", id, "204"), "{log:#}");
    assert!(has("window_removed", id, "404"), "{log:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_has_at_most_a_hundred_windows_and_the_refusal_says_what_to_do() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    for i in 0..100 {
        let (s, v) = h
            .post(
                "/api/v1/windows",
                &alice,
                json!({"applies_to": {"tag": format!("n={i}")}, "window": "daily 01:00-02:00"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{i}: {v}");
    }
    let (s, v) = h
        .post(
            "/api/v1/windows",
            &alice,
            json!({"applies_to": {"tag": "n=100"}, "window": "daily 01:00-02:00"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("100") && e.contains("hammer window rm"), "{e}");
    let (_, list) = h.get("/api/v1/windows", &alice).await;
    assert_eq!(list.as_array().unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_lists_windows_and_adds_them_through_the_api_only_from_its_own_origin() {
    use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/api/v1/session", h.base))
        .json(&json!({ "token": alice }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body = json!({"applies_to": {"tag": "site=<lab>"}, "window": "daily 02:00-03:30", "name": "<b>nightly</b>"});
    // What the page's form sends: refused without the dashboard's own Origin (CSRF).
    let r = http
        .post(format!("{}/api/v1/windows", h.base))
        .header(COOKIE, &cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .post(format!("{}/api/v1/windows", h.base))
        .header(COOKIE, &cookie)
        .header(ORIGIN, "https://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .post(format!("{}/api/v1/windows", h.base))
        .header(COOKIE, &cookie)
        .header(ORIGIN, &h.base)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, list) = h.get("/api/v1/windows", &alice).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only the same-origin request added one"
    );

    let page = http
        .get(format!("{}/windows", h.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("<h1>Maintenance windows</h1>"), "{html}");
    assert!(
        html.contains("<a href=\"/windows\">Maintenance windows</a>"),
        "in the navigation"
    );
    assert!(html.contains("<code>daily 02:00-03:30</code>"), "{html}");
    assert!(
        html.contains("site=&lt;lab&gt;") && html.contains("&lt;b&gt;nightly&lt;/b&gt;"),
        "escaped: {html}"
    );
    assert!(!html.contains("<b>nightly"), "{html}");

    // The device page says whether the device is in its window.
    let (s, v) = h
        .post(
            "/api/v1/devices",
            &alice,
            json!({"name": "pi", "tags": {"site": "<lab>"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let html = http
        .get(format!("{}/devices/pi", h.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<h2>Maintenance window</h2>"), "{html}");
    assert!(
        html.contains("In a maintenance window now")
            || html.contains("Outside its maintenance windows"),
        "{html}"
    );
    assert!(
        html.contains("<code>daily 02:00-03:30</code> (UTC), by tag"),
        "{html}"
    );
}
