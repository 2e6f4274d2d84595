//! The web sessions: an API token is exchanged once (by [`crate::web::session`]) for a
//! random session id carried in the `hammer_session` cookie. The store keeps only the id's
//! SHA-256, the user, the hash of the token it was made from (so revoking the token ends the
//! session) and an expiry ([`SessionRecord`]). Sessions live in the store: they survive
//! restarts and are shared by replicas on one database (a browser signed in through one
//! replica is signed in on every other).
//!
//! Each user keeps at most [`MAX_SESSIONS_PER_USER`] sessions: signing in once more ends
//! that user's oldest session, never another user's. All sessions together are capped at
//! [`MAX_SESSIONS`]; when they are all taken the new session replaces the oldest session of
//! the user holding the most, so nobody loses a session to someone holding more. Expired
//! sessions are removed as new ones are stored (at most [`crate::store::PRUNE_BATCH`] per
//! sign-in). [`Store::insert_session`] enforces all of it in one atomic call.

use crate::ids::hash_token;
use crate::store::{SessionCaps, SessionRecord, Store, StoreError};
use hammer_protocol::now_ms;
use std::sync::Arc;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "hammer_session";

/// How long a session lasts.
pub const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;
/// Most sessions one user keeps at once (a browser per sign-in; 32 leaves room for several
/// browsers and machines). Signing in once more ends that user's oldest session only.
pub const MAX_SESSIONS_PER_USER: usize = 32;
/// Most sessions kept at once over all users (bounds the store). When full, a new session
/// replaces the oldest session of the user who holds the most, the signing-in user's own
/// when they hold as many as anyone.
pub const MAX_SESSIONS: usize = 10_000;

/// The web sessions, kept in the store.
pub struct Sessions {
    store: Arc<dyn Store>,
    /// Cookies get `Secure` (the service is served over TLS).
    secure: bool,
    caps: SessionCaps,
}

impl Sessions {
    /// Sessions in `store` with the built-in caps; `secure`: the cookie gets `Secure`.
    pub fn new(store: Arc<dyn Store>, secure: bool) -> Sessions {
        Sessions::with_limits(store, secure, MAX_SESSIONS_PER_USER, MAX_SESSIONS)
    }

    /// Sessions with other caps (tests); both are at least 1.
    pub fn with_limits(
        store: Arc<dyn Store>,
        secure: bool,
        per_user: usize,
        total: usize,
    ) -> Sessions {
        Sessions {
            store,
            secure,
            caps: SessionCaps {
                per_user: per_user.max(1),
                total: total.max(1),
            },
        }
    }

    /// A new session for `user_id`, signed in with the token whose hash is `token_hash`;
    /// returns the session id (for the cookie; only its hash is kept).
    pub fn create(&self, user_id: &str, token_hash: String) -> Result<String, StoreError> {
        let id = format!(
            "hms_{}",
            crate::ids::new_api_token().trim_start_matches("hmr_")
        );
        let now = now_ms();
        let ended = self.store.insert_session(
            &SessionRecord {
                id_hash: hash_token(&id),
                user_id: user_id.to_owned(),
                token_hash,
                created_at: now,
                expires_at: now.saturating_add(SESSION_TTL_MS),
            },
            now,
            self.caps,
        )?;
        if ended.over_user_cap > 0 {
            tracing::info!(
                user_id,
                cap = self.caps.per_user,
                ended = ended.over_user_cap,
                "a new sign-in ended this user's oldest web session (per-user cap)"
            );
        }
        if ended.table_full > 0 {
            tracing::warn!(
                cap = self.caps.total,
                ended = ended.table_full,
                "the web sessions are full; ended the oldest session of the user holding the most"
            );
        }
        Ok(id)
    }

    /// The token hash behind a live session id; `Err` only when the store failed.
    pub fn lookup(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .session(&hash_token(id), now_ms())?
            .map(|s| s.token_hash))
    }

    /// The token hash behind a live session id. A store failure counts as no session (the
    /// request is not signed in; logged): use [`Sessions::lookup`] to tell them apart.
    pub fn token_hash(&self, id: &str) -> Option<String> {
        self.lookup(id).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look the web session up; treating it as signed out");
            None
        })
    }

    /// How many live sessions `user_id` has.
    pub fn count_of(&self, user_id: &str) -> Result<usize, StoreError> {
        let n = self.store.count_sessions_of(user_id, now_ms())?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Ends a session (nothing when there is none).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_session(&hash_token(id))?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;

    /// Sessions on a fresh sled store (kept while the directory lives).
    fn sessions(per_user: usize, total: usize) -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        (dir, Sessions::with_limits(store, true, per_user, total))
    }

    #[test]
    fn sessions_expire_and_end() {
        let (_dir, s) = sessions(MAX_SESSIONS_PER_USER, MAX_SESSIONS);
        let id = s.create("u1", "h".into()).unwrap();
        assert_eq!(s.token_hash(&id).as_deref(), Some("h"));
        assert!(s.token_hash("hms_other").is_none());
        assert!(s.cookie(&id).contains("HttpOnly; SameSite=Strict"));
        assert!(s.cookie(&id).ends_with("; Secure"));
        s.remove(&id).unwrap();
        assert!(s.token_hash(&id).is_none());
        s.remove(&id).unwrap();
        let (_dir2, plain) = sessions(1, 1);
        let plain = Sessions {
            secure: false,
            ..plain
        };
        assert!(!plain.cookie("x").contains("Secure"));
    }

    #[test]
    fn signing_in_past_the_per_user_cap_ends_only_that_users_oldest_sessions() {
        let (_dir, s) = sessions(3, 100);
        let bob = s.create("bob", "hb".into()).unwrap();
        let alice: Vec<String> = (0..5)
            .map(|_| s.create("alice", "ha".into()).unwrap())
            .collect();
        assert_eq!(s.count_of("alice").unwrap(), 3);
        assert!(s.token_hash(&alice[0]).is_none() && s.token_hash(&alice[1]).is_none());
        assert!(alice[2..].iter().all(|id| s.token_hash(id).is_some()));
        assert_eq!(s.token_hash(&bob).as_deref(), Some("hb"));
    }

    #[test]
    fn a_full_table_takes_the_place_from_whoever_holds_the_most() {
        // Room for 4 in all, 3 each: alice fills 3, bob 1.
        let (_dir, s) = sessions(3, 4);
        let alice: Vec<String> = (0..3)
            .map(|_| s.create("alice", "ha".into()).unwrap())
            .collect();
        let bob = s.create("bob", "hb".into()).unwrap();
        // Carol, holding none, takes alice's oldest (alice holds the most), not bob's one.
        let carol = s.create("carol", "hc".into()).unwrap();
        assert!(s.token_hash(&alice[0]).is_none());
        assert!(s.token_hash(&bob).is_some() && s.token_hash(&carol).is_some());
        // Bob signing in again with 1 while alice holds 2: alice's oldest goes.
        let bob2 = s.create("bob", "hb".into()).unwrap();
        assert!(s.token_hash(&alice[1]).is_none());
        // Now alice 1, bob 2, carol 1: bob signing in again ends his own oldest.
        let bob3 = s.create("bob", "hb".into()).unwrap();
        assert!(s.token_hash(&bob).is_none());
        assert!([&alice[2], &bob2, &bob3, &carol]
            .iter()
            .all(|id| s.token_hash(id).is_some()));
    }
}
