//! Who is calling: the bearer token (or the `hammer_session` cookie a browser sends on an
//! EventSource) looked up by its SHA-256. Cookie-authenticated state-changing requests must
//! carry an `Origin` that matches the `Host` (CSRF). The cookie holds only a session id made
//! by [`crate::web::session`]; an API token put in the cookie is not accepted (a cookie must
//! never be a place where a token works).

use crate::api::errors::ApiError;
use crate::ids::hash_token;
use crate::service::Service;
use crate::store::UserRecord;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use std::sync::Arc;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "hammer_session";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserRecord,
    pub token_id: String,
}

impl Caller {
    /// Only admins pass.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.user.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this needs an admin token (managing users and provisioning devices)",
            ))
        }
    }
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
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &Arc<Service>) -> Result<Caller, ApiError> {
        let (token, from_cookie) =
            match bearer(parts) {
                Some(t) => (t.to_owned(), false),
                None => match crate::web::session::cookie_value(&parts.headers) {
                    Some(t) => (t, true),
                    None => return Err(ApiError::unauthorized(
                        "missing token: send `Authorization: Bearer <token>` (see `hammer login`)",
                    )),
                },
            };
        if from_cookie
            && !matches!(parts.method, Method::GET | Method::HEAD)
            && !origin_matches_host(parts)
        {
            return Err(ApiError::forbidden(
                "cookie-authenticated requests that change state need an Origin matching the Host",
            ));
        }
        let invalid = || ApiError::unauthorized("invalid or revoked token");
        let hash = match from_cookie {
            true => svc.sessions.token_hash(&token).ok_or_else(|| {
                ApiError::unauthorized(
                    "your session has ended (signed out, expired, or the service restarted); sign in again at /login",
                )
            })?,
            false => hash_token(&token),
        };
        let rec = svc.store.token_by_hash(&hash)?.ok_or_else(invalid)?;
        let user = svc.store.user(&rec.user_id)?.ok_or_else(invalid)?;
        Ok(Caller {
            user,
            token_id: rec.id,
        })
    }
}
