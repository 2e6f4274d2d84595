//! The web dashboard served at `/`: server-rendered HTML pages (readable without scripts)
//! plus a little vanilla JS (`assets/app.js`) that refreshes live regions on Server-Sent
//! Events from `/api/v1/events` and sends actions to the JSON API with the session cookie.
//!
//! Every page reads through the API's own handlers ([`crate::api`]), so a browser sees and
//! changes exactly what the caller's token could: the same ownership rules, the same errors.
//! Layout: [`session`] (cookie sessions), [`pages`] (sign in, devices, device),
//! [`deploy_pages`] (deployments), [`html`] (helpers).
//!
//! Caching: every page, fragment, redirect and sign-in answer is `Cache-Control: no-store`
//! (they are per user, and the sign-in form held a token); only the static assets may be
//! kept. [`no_store_by_default`] is the middleware that gives the same header to every API
//! answer that sets none itself (tokens, enrollment tokens, provisioning bundles).

pub mod deploy_pages;
pub mod html;
pub mod pages;
pub mod session;

use crate::api::errors::ApiError;
use crate::auth::Caller;
use crate::service::Service;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::sync::Arc;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's routes (merged into [`crate::api::router`]).
pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route(
            "/",
            get(|| async { no_store(Redirect::to("/devices").into_response()) }),
        )
        .route("/login", get(pages::login).post(session::login_form))
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

/// `resp` with `Cache-Control: no-store` (replacing any other caching rule).
pub fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Middleware: every answer that does not set `Cache-Control` itself gets `no-store`, so no
/// browser, proxy or back button keeps an API answer (they carry tokens, enrollment tokens,
/// provisioning bundles with private keys, and per-user data). Static assets set their own
/// rule and keep it. Wired over the whole router in [`crate::api::router`] with
/// `.layer(axum::middleware::from_fn(crate::web::no_store_by_default))`.
pub async fn no_store_by_default(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.headers().contains_key(header::CACHE_CONTROL) {
        resp
    } else {
        no_store(resp)
    }
}

/// A signed-in page visitor; anyone else is sent to the sign-in page (and a stale or
/// foreign `hammer_session` cookie is removed from the browser on the way).
pub struct PageUser(pub Caller);

impl FromRequestParts<Arc<Service>> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        svc: &Arc<Service>,
    ) -> Result<PageUser, Response> {
        match Caller::from_request_parts(parts, svc).await {
            Ok(c) => Ok(PageUser(c)),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                let mut r = no_store(Redirect::to("/login").into_response());
                if session::cookie_value(&parts.headers).is_some() {
                    if let Ok(v) = HeaderValue::from_str(&svc.sessions.clear_cookie()) {
                        r.headers_mut().append(header::SET_COOKIE, v);
                    }
                }
                Err(r)
            }
            Err(e) => Err(error_page(None, e)),
        }
    }
}

/// `?part=NAME`: render only one live region of the page (for the live refresh).
#[derive(Deserialize, Default)]
pub struct PartQuery {
    pub part: Option<String>,
}

/// A whole page, with `no-store` so the back button never shows stale private data.
pub fn page(c: &Caller, title: &str, events: Option<&str>, body: &str) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(html::layout(title, Some(&c.user.name), events, body)),
    )
        .into_response()
}

/// A fragment of a page.
pub fn fragment(body: String) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

/// An API error as a page (the message shown in the alert region).
pub fn error_page(c: Option<&Caller>, e: ApiError) -> Response {
    let body = format!(
        "<h1>Error {}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/devices\">Back to devices</a></p>",
        e.status.as_u16(),
        html::esc(&e.message)
    );
    (
        e.status,
        [(header::CACHE_CONTROL, "no-store")],
        Html(html::layout(
            "Error",
            c.map(|c| c.user.name.as_str()),
            None,
            &body,
        )),
    )
        .into_response()
}
