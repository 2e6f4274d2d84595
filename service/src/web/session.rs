//! Browser sessions: an API token is exchanged once for a random session id carried in the
//! `hammer_session` cookie (HttpOnly, SameSite=Strict, Secure over TLS). The cookie holds
//! only that id, never the token or any part of it, and after sign-in the token is never
//! sent to the browser again. The service keeps only the id's SHA-256, the user, the hash
//! of the token it was made from (so revoking the token ends the session) and an expiry.
//! Sessions live in memory: a service restart signs browsers out.
//!
//! Each user keeps at most [`MAX_SESSIONS_PER_USER`] sessions: signing in once more ends
//! that user's oldest session, never another user's. The whole table is capped at
//! [`MAX_SESSIONS`] (memory); when it is full the new session replaces the oldest session
//! of the user holding the most, so nobody loses a session to someone holding more.
//!
//! Endpoints: `POST /api/v1/session` (JSON `{"token": ...}`) and `POST /login` (HTML form)
//! create one; `DELETE /api/v1/session` and `POST /logout` end it. Every answer that takes
//! or sets a credential is `Cache-Control: no-store`.

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
/// Most sessions one user keeps at once (a browser per sign-in; 32 leaves room for several
/// browsers and machines). Signing in once more ends that user's oldest session only.
pub const MAX_SESSIONS_PER_USER: usize = 32;
/// Most sessions kept at once over all users (bounds memory). When full, a new session
/// replaces the oldest session of the user who holds the most, the signing-in user's own
/// when they hold as many as anyone.
pub const MAX_SESSIONS: usize = 10_000;

struct Session {
    user_id: String,
    token_hash: String,
    expires_at: u64,
    /// Creation order (a counter: two sign-ins in the same millisecond stay ordered).
    order: u64,
}

#[derive(Default)]
struct Table {
    /// Keyed by the SHA-256 of the session id.
    map: HashMap<String, Session>,
    next: u64,
}

impl Table {
    /// The key of the oldest session of `user`.
    fn oldest_of(&self, user: &str) -> Option<String> {
        self.map
            .iter()
            .filter(|(_, s)| s.user_id == user)
            .min_by_key(|(_, s)| s.order)
            .map(|(k, _)| k.clone())
    }

    /// Frees one place when the whole table is full: from the user holding the most
    /// sessions (`user` itself on a tie), never from someone holding fewer than `user`.
    fn evict_for(&mut self, user: &str) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for s in self.map.values() {
            *counts.entry(s.user_id.as_str()).or_default() += 1;
        }
        let own = counts.get(user).copied().unwrap_or(0);
        let most = counts.values().copied().max().unwrap_or(0);
        let victim = if own >= most {
            Some(user.to_owned())
        } else {
            counts
                .iter()
                .filter(|(_, n)| **n == most)
                .map(|(u, _)| (*u).to_owned())
                .min()
        };
        if let Some(k) = victim.and_then(|v| self.oldest_of(&v)) {
            self.map.remove(&k);
        }
    }
}

/// The session table.
pub struct Sessions {
    inner: Mutex<Table>,
    /// Cookies get `Secure` (the service is served over TLS).
    secure: bool,
    per_user: usize,
    total: usize,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::new(false)
    }
}

impl Sessions {
    pub fn new(secure: bool) -> Sessions {
        Sessions::with_limits(secure, MAX_SESSIONS_PER_USER, MAX_SESSIONS)
    }

    /// A table with other caps (tests); both are at least 1.
    pub fn with_limits(secure: bool, per_user: usize, total: usize) -> Sessions {
        Sessions {
            inner: Default::default(),
            secure,
            per_user: per_user.max(1),
            total: total.max(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `user_id`, signed in with the token whose hash is `token_hash`;
    /// returns the session id (for the cookie; only its hash is kept).
    pub fn create(&self, user_id: &str, token_hash: String) -> String {
        let id = format!(
            "hms_{}",
            crate::ids::new_api_token().trim_start_matches("hmr_")
        );
        let now = now_ms();
        let mut t = self.table();
        t.map.retain(|_, s| s.expires_at > now);
        while t.map.values().filter(|s| s.user_id == user_id).count() >= self.per_user {
            let Some(k) = t.oldest_of(user_id) else { break };
            t.map.remove(&k);
            tracing::info!(
                user_id,
                cap = self.per_user,
                "a new sign-in ended this user's oldest web session (per-user cap)"
            );
        }
        while t.map.len() >= self.total {
            let before = t.map.len();
            t.evict_for(user_id);
            if t.map.len() == before {
                break;
            }
            tracing::warn!(
                cap = self.total,
                "the web session table is full; ended the oldest session of the user holding the most"
            );
        }
        let order = t.next;
        t.next += 1;
        t.map.insert(
            hash_token(&id),
            Session {
                user_id: user_id.to_owned(),
                token_hash,
                expires_at: now + SESSION_TTL_MS,
                order,
            },
        );
        id
    }

    /// The token hash behind a live session id.
    pub fn token_hash(&self, id: &str) -> Option<String> {
        let t = self.table();
        t.map
            .get(&hash_token(id))
            .filter(|s| s.expires_at > now_ms())
            .map(|s| s.token_hash.clone())
    }

    /// How many live sessions `user_id` has.
    pub fn count_of(&self, user_id: &str) -> usize {
        let now = now_ms();
        self.table()
            .map
            .values()
            .filter(|s| s.user_id == user_id && s.expires_at > now)
            .count()
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.table().map.remove(&hash_token(id));
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

/// Whether the request carries a live session whose token is still valid.
pub fn signed_in(svc: &Service, headers: &HeaderMap) -> bool {
    cookie_value(headers)
        .and_then(|id| svc.sessions.token_hash(&id))
        .and_then(|h| svc.store.token_by_hash(&h).ok().flatten())
        .is_some()
}

fn with_cookie(r: Response, cookie: String) -> Response {
    let mut r = super::no_store(r);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
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
    // A refusal is `no-store` too: the request held a token.
    let (hash, user) = match check_origin(&headers).and_then(|_| sign_in(&svc, &req.token)) {
        Ok(v) => v,
        Err(e) => return Ok(super::no_store(e.into_response())),
    };
    let id = svc.sessions.create(&user.id, hash);
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
        Ok((hash, user)) => {
            let id = svc.sessions.create(&user.id, hash);
            with_cookie(
                Redirect::to("/devices").into_response(),
                svc.sessions.cookie(&id),
            )
        }
        Err(e) => {
            super::no_store((e.status, super::pages::login_html(Some(&e.message))).into_response())
        }
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
        let id = s.create("u1", "h".into());
        assert_eq!(s.token_hash(&id).as_deref(), Some("h"));
        assert!(s.token_hash("hms_other").is_none());
        assert!(s.cookie(&id).contains("HttpOnly; SameSite=Strict"));
        assert!(s.cookie(&id).ends_with("; Secure"));
        s.remove(&id);
        assert!(s.token_hash(&id).is_none());
        assert!(!Sessions::new(false).cookie("x").contains("Secure"));
    }

    #[test]
    fn signing_in_past_the_per_user_cap_ends_only_that_users_oldest_sessions() {
        let s = Sessions::with_limits(false, 3, 100);
        let bob = s.create("bob", "hb".into());
        let alice: Vec<String> = (0..5).map(|_| s.create("alice", "ha".into())).collect();
        assert_eq!(s.count_of("alice"), 3);
        assert!(s.token_hash(&alice[0]).is_none() && s.token_hash(&alice[1]).is_none());
        assert!(alice[2..].iter().all(|id| s.token_hash(id).is_some()));
        assert_eq!(s.token_hash(&bob).as_deref(), Some("hb"));
    }

    #[test]
    fn a_full_table_takes_the_place_from_whoever_holds_the_most() {
        // Room for 4 in all, 3 each: alice fills 3, bob 1.
        let s = Sessions::with_limits(false, 3, 4);
        let alice: Vec<String> = (0..3).map(|_| s.create("alice", "ha".into())).collect();
        let bob = s.create("bob", "hb".into());
        // Carol, holding none, takes alice's oldest (alice holds the most), not bob's one.
        let carol = s.create("carol", "hc".into());
        assert!(s.token_hash(&alice[0]).is_none());
        assert!(s.token_hash(&bob).is_some() && s.token_hash(&carol).is_some());
        // Bob signing in again with 1 while alice holds 2: alice's oldest goes.
        let bob2 = s.create("bob", "hb".into());
        assert!(s.token_hash(&alice[1]).is_none());
        // Now alice 1, bob 2, carol 1: bob signing in again ends his own oldest.
        let bob3 = s.create("bob", "hb".into());
        assert!(s.token_hash(&bob).is_none());
        assert!([&alice[2], &bob2, &bob3, &carol]
            .iter()
            .all(|id| s.token_hash(id).is_some()));
    }
}
