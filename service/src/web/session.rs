//! Browser sessions: an API token is exchanged once for a random session id carried in the
//! `hammer_session` cookie (HttpOnly, SameSite=Strict, Secure over TLS). The cookie holds
//! only that id, never the token or any part of it, and after sign-in the token is never
//! sent to the browser again. The service keeps only the id's SHA-256, the user, the hash
//! of the token it was made from (so revoking the token ends the session) and an expiry.
//! Sessions live in the store ([`crate::sessions`], with its caps): they survive restarts
//! and are shared by replicas.
//!
//! Endpoints: `GET /login` (the sign-in form), `POST /api/v1/session` (JSON `{"token": ...}`) and `POST /login` (HTML form)
//! create one; `DELETE /api/v1/session` and `POST /logout` end it. Every answer that takes
//! or sets a credential is `Cache-Control: no-store`.

use super::frame::no_store;
use super::html::esc;
use crate::api::errors::ApiJson;
use crate::auth::cookie_value;
use crate::error::{ServiceError, ServiceResult};
use crate::ids::hash_token;
use crate::limits::Peer;
use crate::service::Service;
use crate::views::user_view;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use axum::Json;
use hammer_protocol::api::UserView;
use serde::Deserialize;
use std::sync::Arc;

/// Refuses a request whose `Origin` is present and names another site (login CSRF);
/// cookie-authenticated requests are checked by [`crate::auth`] already.
pub fn check_origin(headers: &HeaderMap) -> ServiceResult<()> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
    {
        Ok(())
    } else {
        Err(ServiceError::forbidden(
            "this request came from another site (Origin does not match the Host)",
        ))
    }
}

/// Checks an API token; returns its hash and user.
fn sign_in(svc: &Service, token: &str) -> ServiceResult<(String, UserView)> {
    let token = token.trim();
    let invalid = || ServiceError::unauthorized("invalid or revoked token");
    if token.is_empty() || token.len() > 200 {
        return Err(invalid());
    }
    let hash = hash_token(token);
    let rec = svc.store.token_by_hash(&hash)?.ok_or_else(invalid)?;
    let user = svc.store.user(&rec.user_id)?.ok_or_else(invalid)?;
    Ok((hash, user_view(&user)))
}

/// Whether the request carries a live session whose token is still valid.
pub fn signed_in(svc: &Service, headers: &HeaderMap) -> bool {
    cookie_value(headers)
        .and_then(|id| svc.sessions.token_hash(&id))
        .and_then(|h| svc.store.token_by_hash(&h).ok().flatten())
        .is_some()
}

fn with_cookie(r: Response, cookie: String) -> Response {
    let mut r = no_store(r);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The sign-in page, with an error message after a failed attempt.
pub fn login_html(error: Option<&str>) -> Html<String> {
    let err = error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
                esc(e)
            )
        })
        .unwrap_or_default();
    Html(super::html::layout(
        "Sign in",
        None,
        None,
        &format!(
            r#"<section class="card narrow"><h1>Sign in</h1>{err}
<form method="post" action="/login" id="login-form">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" required
 aria-describedby="token-help">
<p id="token-help" class="help">Paste your API token: the one <code>hammer user add NAME</code>
printed for you (the admin's is in the service's <code>admin.token</code>). It is exchanged for a
session cookie and not kept in the page.</p>
<button type="submit">Sign in</button>
</form></section>"#
        ),
    ))
}

/// `GET /login`: the sign-in form (`no-store`: the back button must not bring a typed
/// token back); a visitor already signed in goes to `/` instead.
pub async fn login(State(svc): State<Arc<Service>>, headers: HeaderMap) -> Response {
    if signed_in(&svc, &headers) {
        return no_store(Redirect::to("/").into_response());
    }
    no_store(login_html(None).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub token: String,
}

/// `POST /api/v1/session`: `{"token": "hmr_..."}` → the caller (and the session cookie).
pub async fn create_session(
    State(svc): State<std::sync::Arc<Service>>,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SessionRequest>,
) -> ServiceResult<Response> {
    // A refusal is `no-store` too: the request held a token.
    let (hash, user) = match check_origin(&headers).and_then(|_| sign_in(&svc, &req.token)) {
        Ok(v) => v,
        Err(e) => return Ok(no_store(e.into_response())),
    };
    let id = svc.sessions.create(&user.id, hash)?;
    record_sign_in(&svc, &user, peer);
    Ok(with_cookie(
        (StatusCode::CREATED, Json(user)).into_response(),
        svc.sessions.cookie(&id),
    ))
}

/// `DELETE /api/v1/session`: ends the session (always 204).
pub async fn delete_session(
    State(svc): State<std::sync::Arc<Service>>,
    headers: HeaderMap,
) -> ServiceResult<Response> {
    check_origin(&headers)?;
    if let Some(id) = cookie_value(&headers) {
        svc.sessions.remove(&id)?;
    }
    Ok(with_cookie(
        StatusCode::NO_CONTENT.into_response(),
        svc.sessions.clear_cookie(),
    ))
}

/// `POST /login` (form `token=...`): sets the cookie and goes to the devices page; a bad
/// token shows the sign-in page again with the reason.
pub async fn login_form(
    State(svc): State<std::sync::Arc<Service>>,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let token = super::html::form_field(&body, "token").unwrap_or_default();
    let result = check_origin(&headers)
        .and_then(|_| sign_in(&svc, &token))
        .and_then(|(hash, user)| Ok((svc.sessions.create(&user.id, hash)?, user)));
    match result {
        Ok((id, user)) => {
            record_sign_in(&svc, &user, peer);
            with_cookie(
                Redirect::to("/devices").into_response(),
                svc.sessions.cookie(&id),
            )
        }
        Err(e) => no_store(
            (
                crate::api::errors::status_of(e.kind),
                login_html(Some(&e.message)),
            )
                .into_response(),
        ),
    }
}

/// A sign-in goes into the user's audit log, with where it came from.
fn record_sign_in(svc: &Service, user: &UserView, peer: Option<Extension<ConnectInfo<Peer>>>) {
    let peer = peer.map(|Extension(ConnectInfo(Peer(a)))| a.ip().to_string());
    let who = (user.id.as_str(), user.name.as_str());
    let rec = crate::domain::audit::signed_in(who, peer, hammer_protocol::now_ms());
    crate::domain::audit::append(svc, &rec);
}

/// `POST /logout` (form): ends the session and goes back to the sign-in page.
pub async fn logout_form(
    State(svc): State<std::sync::Arc<Service>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = check_origin(&headers) {
        return e.into_response();
    }
    if let Some(id) = cookie_value(&headers) {
        if let Err(e) = svc.sessions.remove(&id) {
            // The cookie is cleared anyway; the session ends at its expiry.
            tracing::warn!(error = %e, "cannot end the web session in the store");
        }
    }
    with_cookie(
        Redirect::to("/login").into_response(),
        svc.sessions.clear_cookie(),
    )
}
