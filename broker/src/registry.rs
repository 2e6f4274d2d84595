//! The set of live authenticated sessions, so that revocation and kicks can close them.

use hammer_certs::{Identity, Role};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;

/// Orders the successive sessions of one principal (see `session`): each new connection
/// takes a ticket (superseding every earlier one, live or still waiting) and then waits for
/// its turn, which the previous session releases once it has left the router.
#[derive(Default)]
pub(crate) struct PrincipalSlot {
    pub turn: tokio::sync::Mutex<()>,
    pub newest: watch::Sender<u64>,
}

/// Why a live session is being closed from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Not kicked.
    None,
    /// Its certificate was revoked.
    Revoked,
    /// Closed on request ([`crate::BrokerHandle::kick`]).
    Kicked,
    /// The broker is shutting down.
    Shutdown,
    /// A new connection of the same identity took over.
    Replaced,
}

pub(crate) struct Entry {
    pub identity: Identity,
    pub peer: SocketAddr,
    pub kick: watch::Sender<Kick>,
}

/// Live sessions by session number.
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Sessions>,
}

#[derive(Default)]
pub(crate) struct Sessions {
    by_session: HashMap<u64, Entry>,
    /// Live sessions per principal (is_device, id).
    per_principal: HashMap<(bool, String), usize>,
    /// One slot per principal with a connection in progress.
    slots: HashMap<(bool, String), Weak<PrincipalSlot>>,
}

pub(crate) fn principal(identity: &Identity) -> (bool, String) {
    (matches!(identity.role, Role::Device), identity.id.clone())
}

impl Registry {
    pub fn insert(
        &self,
        session: u64,
        identity: Identity,
        peer: SocketAddr,
    ) -> watch::Receiver<Kick> {
        let (tx, rx) = watch::channel(Kick::None);
        let mut s = self.lock();
        *s.per_principal.entry(principal(&identity)).or_default() += 1;
        s.by_session.insert(
            session,
            Entry {
                identity,
                peer,
                kick: tx,
            },
        );
        rx
    }

    /// Removes a session; returns whether another session of the same principal remains.
    pub fn remove(&self, session: u64) -> bool {
        let mut s = self.lock();
        let Some(e) = s.by_session.remove(&session) else {
            return false;
        };
        let key = principal(&e.identity);
        match s.per_principal.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            _ => {
                s.per_principal.remove(&key);
                false
            }
        }
    }

    /// The slot that orders `identity`'s successive sessions.
    pub fn principal_slot(&self, identity: &Identity) -> Arc<PrincipalSlot> {
        let mut s = self.lock();
        let key = principal(identity);
        if let Some(slot) = s.slots.get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        let slot = Arc::new(PrincipalSlot::default());
        s.slots.insert(key, Arc::downgrade(&slot));
        // Forget the slots nobody holds any more (departed principals).
        if s.slots.len() > 2 * s.per_principal.len() + 64 {
            s.slots.retain(|_, l| l.strong_count() > 0);
        }
        slot
    }

    /// Kicks every session matching `pred`; returns how many.
    pub fn kick_where(&self, why: Kick, pred: impl Fn(&Entry) -> bool) -> usize {
        let s = self.lock();
        let mut n = 0;
        for e in s.by_session.values().filter(|e| pred(e)) {
            e.kick.send_replace(why);
            n += 1;
        }
        n
    }

    /// Identities and addresses of every live session.
    pub fn snapshot(&self) -> Vec<(u64, Identity, SocketAddr)> {
        self.lock()
            .by_session
            .iter()
            .map(|(s, e)| (*s, e.identity.clone(), e.peer))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
