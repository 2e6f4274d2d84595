//! When a replica drives deployments: the rollout lease as a pure state machine (state in,
//! decision out, time passed in). The I/O around it is [`super::leader`].
//!
//! A replica tries to take the lease every [`TICK_MS`]; the lease lasts [`TTL_MS`] from each
//! successful take or renewal. A holder that cannot renew (the database is unreachable, or
//! another replica took the lease) keeps driving only until [`STEP_DOWN_MARGIN_MS`] before
//! its own expiry, so that it has stopped before anyone else may take over; clocks must agree
//! well within that margin (NTP). Every write of a deployment also carries the lease's
//! fencing token, which the store checks, so a holder that stalled past its expiry cannot
//! overwrite its successor's work.

/// How often a replica takes or renews the lease.
pub const TICK_MS: u64 = 1_000;
/// How long a take or renewal lasts.
pub const TTL_MS: u64 = 5_000;
/// A holder that could not renew stops this long before its lease expires.
pub const STEP_DOWN_MARGIN_MS: u64 = 1_500;

/// Where this replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another replica (or none) drives deployments.
    Follower,
    /// This replica drives deployments with `token` until `expires_at` unless renewed.
    Leader { token: u64, expires_at: u64 },
}

/// The outcome of one take/renew attempt, as the store answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Granted (taken or renewed) with this token until this time.
    Granted { token: u64, expires_at: u64 },
    /// Another replica holds a valid lease.
    Held,
    /// The store could not be asked.
    Failed,
}

/// What the replica does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start driving deployments with this fencing token.
    Start { token: u64 },
    /// Keep going as before (leader or follower).
    Stay,
    /// Stop driving deployments now.
    StepDown,
}

/// The lease state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCore {
    pub role: Role,
}

impl Default for LeaseCore {
    fn default() -> Self {
        LeaseCore {
            role: Role::Follower,
        }
    }
}

impl LeaseCore {
    /// Applies an attempt made at `now`.
    pub fn on_attempt(&mut self, attempt: Attempt, now: u64) -> Decision {
        match (self.role, attempt) {
            (Role::Follower, Attempt::Granted { token, expires_at }) => {
                self.role = Role::Leader { token, expires_at };
                Decision::Start { token }
            }
            (Role::Follower, _) => Decision::Stay,
            (
                Role::Leader { token, .. },
                Attempt::Granted {
                    token: t,
                    expires_at,
                },
            ) if t == token => {
                self.role = Role::Leader { token, expires_at };
                Decision::Stay
            }
            // Granted with another token: the lease lapsed and was taken again (by us, after
            // someone else may have held it). Restart from the store with the new token.
            (Role::Leader { .. }, Attempt::Granted { token, expires_at }) => {
                self.role = Role::Leader { token, expires_at };
                Decision::Start { token }
            }
            (Role::Leader { .. }, Attempt::Held) => {
                self.role = Role::Follower;
                Decision::StepDown
            }
            (Role::Leader { expires_at, .. }, Attempt::Failed) => self.check(now, expires_at),
        }
    }

    /// Between attempts: steps down when the lease is about to lapse unrenewed.
    pub fn on_clock(&mut self, now: u64) -> Decision {
        match self.role {
            Role::Leader { expires_at, .. } => self.check(now, expires_at),
            Role::Follower => Decision::Stay,
        }
    }

    /// The engine stopped by itself (its fenced write was refused): follow.
    pub fn on_engine_stopped(&mut self) {
        self.role = Role::Follower;
    }

    fn check(&mut self, now: u64, expires_at: u64) -> Decision {
        if now.saturating_add(STEP_DOWN_MARGIN_MS) >= expires_at {
            self.role = Role::Follower;
            Decision::StepDown
        } else {
            Decision::Stay
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(token: u64, now: u64) -> Attempt {
        Attempt::Granted {
            token,
            expires_at: now + TTL_MS,
        }
    }

    #[test]
    fn a_follower_that_is_granted_the_lease_starts_with_its_token() {
        let mut c = LeaseCore::default();
        assert_eq!(c.on_attempt(Attempt::Held, 0), Decision::Stay);
        assert_eq!(c.on_attempt(Attempt::Failed, 0), Decision::Stay);
        assert_eq!(c.on_attempt(granted(3, 0), 0), Decision::Start { token: 3 });
        assert!(c.is_leader());
    }

    #[test]
    fn a_renewal_with_the_same_token_keeps_the_leader_going() {
        let mut c = LeaseCore::default();
        c.on_attempt(granted(1, 0), 0);
        assert_eq!(c.on_attempt(granted(1, 1000), 1000), Decision::Stay);
        assert_eq!(
            c.on_clock(1000 + TTL_MS - STEP_DOWN_MARGIN_MS - 1),
            Decision::Stay
        );
    }

    #[test]
    fn a_leader_that_finds_the_lease_held_by_another_steps_down_at_once() {
        let mut c = LeaseCore::default();
        c.on_attempt(granted(1, 0), 0);
        assert_eq!(c.on_attempt(Attempt::Held, 1000), Decision::StepDown);
        assert!(!c.is_leader());
    }

    #[test]
    fn a_leader_that_cannot_reach_the_store_stops_before_its_lease_lapses() {
        let mut c = LeaseCore::default();
        c.on_attempt(granted(1, 0), 0);
        assert_eq!(c.on_attempt(Attempt::Failed, 1000), Decision::Stay);
        assert_eq!(c.on_attempt(Attempt::Failed, 2000), Decision::Stay);
        let last_safe = TTL_MS - STEP_DOWN_MARGIN_MS - 1;
        assert_eq!(c.on_clock(last_safe), Decision::Stay);
        assert_eq!(c.on_clock(last_safe + 1), Decision::StepDown);
        assert!(!c.is_leader());
        // Stepping down happens before anyone else may take the lease.
        assert!(last_safe + 1 < TTL_MS);
    }

    #[test]
    fn a_leader_granted_a_new_token_restarts_from_the_store() {
        let mut c = LeaseCore::default();
        c.on_attempt(granted(1, 0), 0);
        assert_eq!(
            c.on_attempt(granted(2, 9000), 9000),
            Decision::Start { token: 2 }
        );
    }

    #[test]
    fn an_engine_that_stopped_by_itself_makes_the_replica_a_follower() {
        let mut c = LeaseCore::default();
        c.on_attempt(granted(1, 0), 0);
        c.on_engine_stopped();
        assert!(!c.is_leader());
        assert_eq!(
            c.on_attempt(granted(1, 100), 100),
            Decision::Start { token: 1 }
        );
    }

    #[test]
    fn the_margin_leaves_time_for_ticks_before_the_ttl() {
        const { assert!(TICK_MS * 2 < TTL_MS - STEP_DOWN_MARGIN_MS) };
    }
}
