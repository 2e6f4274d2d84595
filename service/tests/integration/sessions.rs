//! Browser sessions and caching over real HTTP against a running service: the session
//! cookie never carries the API token, each user's sessions are capped without touching
//! anyone else's, and every answer that shows or takes a secret is `Cache-Control: no-store`.

use crate::common::Harness;
use hammer_service::sessions::MAX_SESSIONS_PER_USER;
use reqwest::header::{CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::json;

/// A client that shows redirects instead of following them, and keeps no cookies.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn set_cookie(r: &Response) -> String {
    r.headers()
        .get(SET_COOKIE)
        .unwrap_or_else(|| panic!("no Set-Cookie in {:?}", r.headers()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `name=value` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

fn no_store(r: &Response, what: &str) {
    assert_eq!(
        r.headers().get(CACHE_CONTROL).map(|v| v.to_str().unwrap()),
        Some("no-store"),
        "{what} is not Cache-Control: no-store: {:?}",
        r.headers()
    );
}

/// Signs in through `POST /api/v1/session`; returns the response.
async fn sign_in_json(h: &Harness, token: &str) -> Response {
    client()
        .post(format!("{}/api/v1/session", h.base))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap()
}

/// Signs in through `POST /api/v1/session`; returns the `name=value` cookie.
async fn session(h: &Harness, token: &str) -> String {
    let r = sign_in_json(h, token).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    cookie_pair(&set_cookie(&r))
}

async fn me_status(h: &Harness, cookie: &str) -> StatusCode {
    client()
        .get(format!("{}/api/v1/me", h.base))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signing_in_past_the_cap_keeps_exactly_the_cap_and_others_stay_signed_in() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let bob_cookie = session(&h, &bob).await;
    let extra = 5;
    let mut alice_cookies = Vec::new();
    for _ in 0..MAX_SESSIONS_PER_USER + extra {
        alice_cookies.push(session(&h, &alice).await);
    }
    let mut live = Vec::new();
    for c in &alice_cookies {
        live.push(me_status(&h, c).await == StatusCode::OK);
    }
    assert_eq!(
        live.iter().filter(|l| **l).count(),
        MAX_SESSIONS_PER_USER,
        "alice should keep exactly the cap"
    );
    assert!(
        live[..extra].iter().all(|l| !l) && live[extra..].iter().all(|l| *l),
        "the oldest sessions should be the ones ended: {live:?}"
    );
    assert_eq!(me_status(&h, &bob_cookie).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_not_the_token_and_holds_no_part_of_it() {
    let h = Harness::start().await;
    let token = h.user("alice").await;
    let secret = token.trim_start_matches("hmr_");
    let json = sign_in_json(&h, &token).await;
    let form = client()
        .post(format!("{}/login", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::SEE_OTHER);
    for r in [json, form] {
        let header = set_cookie(&r);
        let pair = cookie_pair(&header);
        let value = pair.strip_prefix("hammer_session=").unwrap();
        assert!(value.starts_with("hms_"), "{pair}");
        assert_ne!(value, token);
        // No 8-character piece of the token's secret anywhere in the header.
        for w in secret.as_bytes().windows(8) {
            let piece = std::str::from_utf8(w).unwrap();
            assert!(
                !header.contains(piece),
                "{header} holds {piece} of the token"
            );
        }
        let body = r.text().await.unwrap();
        assert!(
            !body.contains(secret),
            "the answer echoes the token: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_put_in_the_cookie_is_not_accepted() {
    let h = Harness::start().await;
    let token = h.user("alice").await;
    let cookie = format!("hammer_session={token}");
    assert_eq!(me_status(&h, &cookie).await, StatusCode::UNAUTHORIZED);
    let r = client()
        .get(format!("{}/devices", h.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()[LOCATION], "/login");
    assert!(
        set_cookie(&r).contains("Max-Age=0"),
        "the stale cookie should be removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_page_and_answers_are_no_store_and_the_field_is_not_autocompleted() {
    let h = Harness::start().await;
    let token = h.user("alice").await;
    let c = client();

    let r = c.get(format!("{}/login", h.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    no_store(&r, "GET /login");
    let page = r.text().await.unwrap();
    let field = page
        .split("<input")
        .find(|i| i.contains("name=\"token\""))
        .expect("the token field");
    assert!(field.contains("autocomplete=\"off\""), "{field}");

    let form = |body: String| {
        c.post(format!("{}/login", h.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let bad = form("token=hmr_wrong".into()).await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    no_store(&bad, "a refused POST /login");
    let good = form(format!("token={token}")).await.unwrap();
    no_store(&good, "POST /login");

    let bad = sign_in_json(&h, "hmr_wrong").await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    no_store(&bad, "a refused POST /api/v1/session");
    no_store(&sign_in_json(&h, &token).await, "POST /api/v1/session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_answers_are_no_store() {
    let h = Harness::start().await;
    let c = client();
    let r = c
        .post(format!("{}/api/v1/users", h.base))
        .bearer_auth(&h.admin)
        .json(&json!({"name": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    no_store(&r, "POST /api/v1/users");
    let alice = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = c
        .post(format!("{}/api/v1/tokens", h.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    no_store(&r, "POST /api/v1/tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_page_is_no_store() {
    let h = Harness::start().await;
    let token = h.user("alice").await;
    let (s, _) = h
        .post("/api/v1/devices", &token, json!({"name": "kiosk-1"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let cookie = session(&h, &token).await;
    for path in [
        "/devices",
        "/devices?part=rows",
        "/devices/kiosk-1",
        "/devices/kiosk-1?part=state",
        "/devices/nope",
        "/deployments",
        "/deployments/new",
        "/deployments/nope",
        "/",
    ] {
        let r = client()
            .get(format!("{}{path}", h.base))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        no_store(&r, path);
    }
    // Signed out, a page sends to the sign-in page, and that answer is not kept either.
    let r = client()
        .get(format!("{}/devices", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/login");
    no_store(&r, "the redirect to /login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_opening_the_sign_in_page_is_sent_home() {
    let h = Harness::start().await;
    let token = h.user("alice").await;
    let cookie = session(&h, &token).await;
    let r = client()
        .get(format!("{}/login", h.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()[LOCATION], "/");
    no_store(&r, "the redirect from /login");
    // Signed out again, the form is back.
    let r = client()
        .post(format!("{}/logout", h.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    let r = client()
        .get(format!("{}/login", h.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Device creation (enrollment token) and provisioning (private keys) are answered by
/// handlers in api/devices.rs and api/enroll.rs; their `no-store` comes from
/// `web::frame::no_store_by_default`, which `router::app` must layer over the whole router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_creation_and_provisioning_answers_are_no_store() {
    let h = Harness::start().await;
    let token = h.user("alice").await;
    let c = client();
    let r = c
        .post(format!("{}/api/v1/devices", h.base))
        .bearer_auth(&token)
        .json(&json!({"name": "kiosk-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    no_store(&r, "POST /api/v1/devices");
    let r = c
        .post(format!("{}/api/v1/provision", h.base))
        .bearer_auth(&h.admin)
        .json(&json!({"owner": "alice", "name": "kiosk-2", "tags": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    no_store(&r, "POST /api/v1/provision");
    // The static assets keep their own rule.
    let r = c
        .get(format!("{}/assets/app.js", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[CACHE_CONTROL], "no-cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_service_restart_on_the_same_data_dir() {
    let mut h = Harness::start().await;
    let alice = h.user("alice").await;
    let cookie = session(&h, &alice).await;
    let ended = session(&h, &alice).await;
    let r = client()
        .delete(format!("{}/api/v1/session", h.base))
        .header(COOKIE, &ended)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(me_status(&h, &cookie).await, StatusCode::OK);
    h.restart().await;
    // Kept in the store: still signed in after the restart; the ended one stays ended.
    assert_eq!(me_status(&h, &cookie).await, StatusCode::OK);
    assert_eq!(me_status(&h, &ended).await, StatusCode::UNAUTHORIZED);
}
