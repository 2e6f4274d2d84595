//! The frame every dashboard answer shares: a whole page or a fragment of one, an error as a
//! page, `Cache-Control: no-store`, and the signed-in visitor ([`PageUser`]).

use super::html;
use crate::domain::Caller;
use crate::error::ServiceError;
use crate::service::Service;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::sync::Arc;

/// `resp` with `Cache-Control: no-store` (replacing any other caching rule).
pub fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Middleware: every answer that does not set `Cache-Control` itself gets `no-store`, so no
/// browser, proxy or back button keeps an API answer (they carry tokens, enrollment tokens,
/// provisioning bundles with private keys, and per-user data). Static assets set their own
/// rule and keep it. Wired over every listener's router in [`crate::router`].
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
            Err(e) if e.kind == crate::error::ErrorKind::Unauthorized => {
                let mut r = no_store(Redirect::to("/login").into_response());
                if crate::auth::cookie_value(&parts.headers).is_some() {
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
pub fn error_page(c: Option<&Caller>, e: ServiceError) -> Response {
    let status = crate::api::errors::status_of(e.kind);
    let body = format!(
        "<h1>Error {}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/devices\">Back to devices</a></p>",
        status.as_u16(),
        html::esc(&e.message)
    );
    (
        status,
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
