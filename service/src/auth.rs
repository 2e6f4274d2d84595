//! Who is calling: the bearer token (or the `hammer_session` cookie a browser sends on an
//! EventSource) looked up by its SHA-256. Cookie-authenticated state-changing requests must
//! carry an `Origin` that matches the `Host` (CSRF). The cookie holds only a session id made
//! by [`crate::web::session`]; an API token put in the cookie is not accepted (a cookie must
//! never be a place where a token works).

use crate::domain::Caller;
use crate::error::ServiceError;
use crate::ids::hash_token;
use crate::service::Service;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use std::sync::Arc;

use crate::sessions::SESSION_COOKIE;

/// The session cookie's value in a request.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn origin_matches_host(parts: &Parts) -> bool {
    let (Some(origin), Some(host)) = (
        parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok()),
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
}

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        svc: &Arc<Service>,
    ) -> Result<Caller, ServiceError> {
        let (token, from_cookie) =
            match bearer(parts) {
                Some(t) => (t.to_owned(), false),
                None => match cookie_value(&parts.headers) {
                    Some(t) => (t, true),
                    None => return Err(ServiceError::unauthorized(
                        "missing token: send `Authorization: Bearer <token>` (see `hammer login`)",
                    )),
                },
            };
        if from_cookie
            && !matches!(parts.method, Method::GET | Method::HEAD)
            && !origin_matches_host(parts)
        {
            return Err(ServiceError::forbidden(
                "cookie-authenticated requests that change state need an Origin matching the Host",
            ));
        }
        let invalid = || ServiceError::unauthorized("invalid or revoked token");
        let hash = match from_cookie {
            true => svc.sessions.token_hash(&token).ok_or_else(|| {
                ServiceError::unauthorized(
                    "your session has ended (signed out, expired, or the service restarted); sign in again at /login",
                )
            })?,
            false => hash_token(&token),
        };
        let rec = svc.store.token_by_hash(&hash)?.ok_or_else(invalid)?;
        let user = svc.store.user(&rec.user_id)?.ok_or_else(invalid)?;
        if let Some(who) = parts.extensions.get::<crate::api::audit::Who>() {
            who.set(&user);
        }
        Ok(Caller {
            user,
            token_id: rec.id,
        })
    }
}
