//! Browser sessions: an API token is exchanged once for a random session id carried in the
//! `hammer_session` cookie (HttpOnly, SameSite=Strict, Secure over TLS). The service keeps
//! only the id's SHA-256, the hash of the token it was made from (so revoking the token ends
//! the session) and an expiry. Sessions live in memory: a service restart signs browsers out.
//!
//! Endpoints: `POST /api/v1/session` (JSON `{"token": ...}`) and `POST /login` (HTML form)
//! create one; `DELETE /api/v1/session` and `POST /logout` end it.

use crate::api::errors::{ApiError, ApiJson, ApiResult};
use crate::auth::SESSION_COOKIE;
use crate::ids::hash_token;
use crate::service::Service;
use crate::views::user_view;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use hammer_protocol::api::UserView;
use hammer_protocol::now_ms;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a session lasts.
pub const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;
/// Most sessions kept at once (oldest dropped first).
const MAX_SESSIONS: usize = 10_000;

struct Session {
    token_hash: String,
    expires_at: u64,
}

/// The session table, keyed by the SHA-256 of the session id.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    /// Cookies get `Secure` (the service is served over TLS).
    secure: bool,
}

impl Sessions {
    pub fn new(secure: bool) -> Sessions {
        Sessions {
            inner: Default::default(),
            secure,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for the token whose hash is `token_hash`; returns the session id.
    pub fn create(&self, token_hash: String) -> String {
        let id = format!(
            "hms_{}",
            crate::ids::new_api_token().trim_start_matches("hmr_")
        );
        let now = now_ms();
        let mut m = self.map();
        m.retain(|_, s| s.expires_at > now);
        if m.len() >= MAX_SESSIONS {
            if let Some(k) = m
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone())
            {
                m.remove(&k);
            }
        }
        m.insert(
            hash_token(&id),
            Session {
                token_hash,
                expires_at: now + SESSION_TTL_MS,
            },
        );
        id
    }

    /// The token hash behind a live session id.
    pub fn token_hash(&self, id: &str) -> Option<String> {
        let m = self.map();
        m.get(&hash_token(id))
            .filter(|s| s.expires_at > now_ms())
            .map(|s| s.token_hash.clone())
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.map().remove(&hash_token(id));
    }

    /// `Set-Cookie` value carrying `id`.
    pub fn cookie(&self, id: &str) -> String {
        format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            SESSION_TTL_MS / 1000,
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The session cookie's value in a request.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
}

/// Refuses a request whose `Origin` is present and names another site (login CSRF);
/// cookie-authenticated requests are checked by [`crate::auth`] already.
pub fn check_origin(headers: &HeaderMap) -> ApiResult<()> {
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
        Err(ApiError::forbidden(
            "this request came from another site (Origin does not match the Host)",
        ))
    }
}

/// Checks an API token; returns its hash and user.
fn sign_in(svc: &Service, token: &str) -> ApiResult<(String, UserView)> {
    let token = token.trim();
    let invalid = || ApiError::unauthorized("invalid or revoked token");
    if token.is_empty() || token.len() > 200 {
        return Err(invalid());
    }
    let hash = hash_token(token);
    let rec = svc.store.token_by_hash(&hash)?.ok_or_else(invalid)?;
    let user = svc.store.user(&rec.user_id)?.ok_or_else(invalid)?;
    Ok((hash, user_view(&user)))
}

fn with_cookie(mut r: Response, cookie: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub token: String,
}

/// `POST /api/v1/session`: `{"token": "hmr_..."}` → the caller (and the session cookie).
pub async fn create_session(
    State(svc): State<std::sync::Arc<Service>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SessionRequest>,
) -> ApiResult<Response> {
    check_origin(&headers)?;
    let (hash, user) = sign_in(&svc, &req.token)?;
    let id = svc.sessions.create(hash);
    Ok(with_cookie(
        (StatusCode::CREATED, Json(user)).into_response(),
        svc.sessions.cookie(&id),
    ))
}

/// `DELETE /api/v1/session`: ends the session (always 204).
pub async fn delete_session(
    State(svc): State<std::sync::Arc<Service>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_origin(&headers)?;
    if let Some(id) = cookie_value(&headers) {
        svc.sessions.remove(&id);
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
    headers: HeaderMap,
    body: String,
) -> Response {
    let token = super::html::form_field(&body, "token").unwrap_or_default();
    let result = check_origin(&headers).and_then(|_| sign_in(&svc, &token));
    match result {
        Ok((hash, _)) => {
            let id = svc.sessions.create(hash);
            with_cookie(
                Redirect::to("/devices").into_response(),
                svc.sessions.cookie(&id),
            )
        }
        Err(e) => (e.status, super::pages::login_html(Some(&e.message))).into_response(),
    }
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
        svc.sessions.remove(&id);
    }
    with_cookie(
        Redirect::to("/login").into_response(),
        svc.sessions.clear_cookie(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::new(true);
        let id = s.create("h".into());
        assert_eq!(s.token_hash(&id).as_deref(), Some("h"));
        assert!(s.token_hash("hms_other").is_none());
        assert!(s.cookie(&id).contains("HttpOnly; SameSite=Strict"));
        assert!(s.cookie(&id).ends_with("; Secure"));
        s.remove(&id);
        assert!(s.token_hash(&id).is_none());
        assert!(!Sessions::new(false).cookie("x").contains("Secure"));
    }
}
