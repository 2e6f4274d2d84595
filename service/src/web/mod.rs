//! The web dashboard served at `/`: server-rendered HTML pages (readable without scripts)
//! plus a little vanilla JS (`assets/app.js`) that refreshes live regions on Server-Sent
//! Events from `/api/v1/events` and sends actions to the JSON API with the session cookie.
//!
//! Every page reads through the domain functions the API's handlers call too
//! ([`crate::domain`], never [`crate::api`]), so a browser sees and changes exactly what the
//! caller's token could: the same ownership rules, the same errors. The devices page opens
//! with a fleet overview ([`pages::fleet_overview`]), searches by name (`?q=`) and sorts by
//! column (`?sort=name|state|last_seen`); times read "3 min ago" with the UTC time on hover
//! ([`html::time_ago`]). A device's history reads one line per release ([`pages::attempts`])
//! that opens (`<details>`) into its phases; a deployment's page has a progress bar and its
//! duration; the new-deployment form previews the devices it reaches and what they run
//! (`/deployments/new?part=preview`). The browser test checks every page with axe-core and
//! at phone size.
//! Layout: [`session`] (sign in and out, cookie sessions), [`pages`] (devices, device),
//! [`deploy_pages`] (deployments), [`audit_page`] (the user's audit log), [`commits_page`] (the kill switch: bad commits), [`windows_page`] (maintenance windows), [`webhooks_page`] (webhooks and their delivery logs), [`frame`] (page frame, no-store, the signed-in visitor),
//! [`html`] (escaping and formatting).
//!
//! Caching: every page, fragment, redirect and sign-in answer is `Cache-Control: no-store`
//! (they are per user, and the sign-in form held a token); only the static assets may be
//! kept. [`frame::no_store_by_default`] is the middleware that gives the same header to every API
//! answer that sets none itself (tokens, enrollment tokens, provisioning bundles).

pub mod audit_page;
pub mod commits_page;
pub mod deploy_pages;
pub mod frame;
pub mod html;
pub mod pages;
pub mod session;
pub mod webhooks_page;
pub mod windows_page;

use crate::service::Service;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use frame::no_store;
use std::sync::Arc;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's routes (merged into [`crate::router::app`]).
pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route(
            "/",
            get(|| async { no_store(Redirect::to("/devices").into_response()) }),
        )
        .route("/login", get(session::login).post(session::login_form))
        .route("/logout", post(session::logout_form))
        .route(
            "/api/v1/session",
            post(session::create_session).delete(session::delete_session),
        )
        .route("/devices", get(pages::devices))
        .route("/devices/{name}", get(pages::device))
        .route("/deployments", get(deploy_pages::deployments))
        .route("/deployments/new", get(deploy_pages::new_deployment))
        .route("/deployments/{id}", get(deploy_pages::deployment))
        .route("/audit", get(audit_page::audit_log))
        .route("/commits", get(commits_page::bad_commits))
        .route("/windows", get(windows_page::windows_page))
        .route("/webhooks", get(webhooks_page::webhooks_list))
        .route("/webhooks/{id}", get(webhooks_page::webhook_log))
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
