//! Users (admin creates them; their first token is shown once) and API tokens (create, list,
//! revoke your own). Tokens are stored only as SHA-256 hashes. Answers that carry a token
//! are `Cache-Control: no-store` ([`NO_STORE`]), so no cache or back button keeps one.

use crate::api::errors::ApiJson;
use crate::domain::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::ids;
use crate::service::Service;
use crate::store::{Revoked, Store, TokenRecord, UserRecord};
use crate::views::user_view;
use axum::extract::{Path, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::Json;
use hammer_protocol::api::{CreateUser, NewToken, TokenView, UserView};
use hammer_protocol::{now_ms, validate_name};
use std::sync::Arc;

/// The header of every answer that shows a secret: nothing may keep a copy of it.
pub const NO_STORE: [(HeaderName, &str); 1] = [(header::CACHE_CONTROL, "no-store")];

/// Makes a new token for `user` (not yet flushed).
pub fn issue_token(store: &dyn Store, user: &UserRecord) -> crate::store::Result<NewToken> {
    let token = ids::new_api_token();
    let rec = TokenRecord {
        id: ids::new_token_id(),
        user_id: user.id.clone(),
        hash: ids::hash_token(&token),
        created_at: now_ms(),
        revoked_at: None,
    };
    store.insert_token(&rec)?;
    Ok(NewToken {
        id: rec.id,
        token,
        user: user_view(user),
    })
}

/// `POST /api/v1/users` (admin).
pub async fn create_user(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> ServiceResult<(
    StatusCode,
    [(HeaderName, &'static str); 1],
    axum::Extension<super::audit::AuditTarget>,
    Json<NewToken>,
)> {
    caller.require_admin()?;
    validate_name(&req.name).map_err(|e| ServiceError::bad_request(e.to_string()))?;
    let user = UserRecord {
        id: ids::new_id(),
        name: req.name.clone(),
        admin: false,
        created_at: now_ms(),
        bad_commits: Vec::new(),
    };
    if !svc.store.insert_user(&user)? {
        return Err(ServiceError::conflict(format!(
            "user {:?} already exists",
            req.name
        )));
    }
    let token = issue_token(svc.store.as_ref(), &user)?;
    svc.store.flush().await?;
    tracing::info!(user = %user.name, "user created");
    let target = axum::Extension(super::audit::AuditTarget(user.name.clone()));
    Ok((StatusCode::CREATED, NO_STORE, target, Json(token)))
}

/// `GET /api/v1/users` (admin).
pub async fn list_users(
    State(svc): State<Arc<Service>>,
    caller: Caller,
) -> ServiceResult<Json<Vec<UserView>>> {
    caller.require_admin()?;
    Ok(Json(svc.store.users()?.iter().map(user_view).collect()))
}

/// `GET /api/v1/me`.
pub async fn me(caller: Caller) -> Json<UserView> {
    Json(user_view(&caller.user))
}

/// Valid API tokens one user may hold (docs/limits.md). Checked before each new one is made,
/// so requests racing past the check can each add one.
pub const MAX_TOKENS_PER_USER: usize = 100;

/// `POST /api/v1/tokens`: another token for the caller; 429 at [`MAX_TOKENS_PER_USER`].
pub async fn create_token(
    State(svc): State<Arc<Service>>,
    caller: Caller,
) -> ServiceResult<(
    StatusCode,
    [(HeaderName, &'static str); 1],
    axum::Extension<super::audit::AuditTarget>,
    Json<NewToken>,
)> {
    if svc.store.tokens_of(&caller.user.id)?.len() >= MAX_TOKENS_PER_USER {
        return Err(ServiceError::too_many(format!(
            "you have {MAX_TOKENS_PER_USER} API tokens, the most one user may hold; revoke one \
             you no longer use (`GET /api/v1/tokens` lists them, `DELETE /api/v1/tokens/ID` \
             revokes one)"
        )));
    }
    let token = issue_token(svc.store.as_ref(), &caller.user)?;
    svc.store.flush().await?;
    let target = axum::Extension(super::audit::AuditTarget(token.id.clone()));
    Ok((StatusCode::CREATED, NO_STORE, target, Json(token)))
}

/// `GET /api/v1/tokens`.
pub async fn list_tokens(
    State(svc): State<Arc<Service>>,
    caller: Caller,
) -> ServiceResult<Json<Vec<TokenView>>> {
    let mut v: Vec<TokenView> = svc
        .store
        .tokens_of(&caller.user.id)?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            created_at: t.created_at,
        })
        .collect();
    v.sort_by_key(|t| t.created_at);
    Ok(Json(v))
}

/// `DELETE /api/v1/tokens/{id}`: 204 also when the token was already revoked (within a day),
/// so that the same request sent again (by a client or a load balancer that did not see the
/// first answer) reports what happened, not "no such token".
pub async fn revoke_token(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServiceResult<StatusCode> {
    match svc.store.revoke_token(&caller.user.id, &id, now_ms())? {
        Revoked::NoSuch => Err(ServiceError::not_found(format!(
            "you have no token {:?}; `GET /api/v1/tokens` lists yours",
            id.chars().take(40).collect::<String>()
        ))),
        Revoked::Now | Revoked::Earlier => {
            svc.store.flush().await?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
