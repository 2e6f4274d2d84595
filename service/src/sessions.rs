//! The web sessions table: an API token is exchanged once (by [`crate::web::session`]) for a
//! random session id carried in the `hammer_session` cookie. The table keeps only the id's
//! SHA-256, the user, the hash of the token it was made from (so revoking the token ends the
//! session) and an expiry. Sessions live in memory: a service restart signs browsers out.
//!
//! Each user keeps at most [`MAX_SESSIONS_PER_USER`] sessions: signing in once more ends
//! that user's oldest session, never another user's. The whole table is capped at
//! [`MAX_SESSIONS`] (memory); when it is full the new session replaces the oldest session
//! of the user holding the most, so nobody loses a session to someone holding more.

use crate::ids::hash_token;
use hammer_protocol::now_ms;
use std::collections::HashMap;
use std::sync::Mutex;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "hammer_session";

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
