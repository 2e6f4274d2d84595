//! Pure decisions of a simulated device: what a verified desired state means given the
//! generation acted on (and the connection it was confirmed on), and which phases a
//! scripted device reports for it. Which outbox entries an ack trims is
//! [`crate::outbox::Outbox::ack`].

use hammer_protocol::Phase;

/// What to do with a verified desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredDecision {
    /// A newer generation: act on it (walk the phases).
    New,
    /// The generation already acted on, seen for the first time on this connection: the
    /// service's resync after a (re)connect confirms it; nothing to do again.
    Confirm,
    /// The generation already acted on, seen again on the same connection.
    Repeat,
    /// Older than the generation acted on, or generation 0: the manager refuses it
    /// (a replay); ignored.
    Stale,
}

/// The generation a device acted on last, and the connection on which it last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generations {
    acted: u64,
    confirmed_on: u64,
}

impl Generations {
    /// The generation acted on last (0 = none).
    pub fn acted(&self) -> u64 {
        self.acted
    }

    /// Decides about a desired state of `generation` arriving on connection number
    /// `connection` (the count of CONNACKs so far), and records it.
    pub fn on_desired(&mut self, generation: u64, connection: u64) -> DesiredDecision {
        if generation == 0 || generation < self.acted {
            return DesiredDecision::Stale;
        }
        if generation > self.acted {
            self.acted = generation;
            self.confirmed_on = connection;
            return DesiredDecision::New;
        }
        if self.confirmed_on != connection {
            self.confirmed_on = connection;
            return DesiredDecision::Confirm;
        }
        DesiredDecision::Repeat
    }
}

/// How a scripted device answers a newer desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// received → fetched → starting → running.
    Succeed,
    /// received → fetched → rolled_back.
    Fail,
    /// Says nothing.
    Silent,
    /// Fails this many times, then succeeds (received → fetched → running).
    FailTimes(u32),
}

impl Behavior {
    /// The phases to report for one newer desired state. `failures` counts the rollouts
    /// this device failed so far under [`Behavior::FailTimes`] and is advanced here.
    pub fn phases(&self, failures: &mut u32) -> Vec<Phase> {
        const FAIL: [Phase; 3] = [Phase::Received, Phase::Fetched, Phase::RolledBack];
        match self {
            Behavior::Silent => vec![],
            Behavior::Succeed => vec![
                Phase::Received,
                Phase::Fetched,
                Phase::Starting,
                Phase::Running,
            ],
            Behavior::Fail => FAIL.to_vec(),
            Behavior::FailTimes(n) => {
                *failures += 1;
                if *failures <= *n {
                    FAIL.to_vec()
                } else {
                    vec![Phase::Received, Phase::Fetched, Phase::Running]
                }
            }
        }
    }
}

/// The detail a simulated device reports with a phase.
pub fn detail(phase: Phase) -> Option<String> {
    (phase == Phase::RolledBack).then(|| "health check failed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::DesiredDecision::*;
    use super::*;

    #[test]
    fn a_newer_generation_is_acted_on_once() {
        let mut g = Generations::default();
        assert_eq!(g.on_desired(3, 1), New);
        assert_eq!(g.acted(), 3);
        assert_eq!(
            g.on_desired(3, 1),
            Repeat,
            "a republish on the same connection"
        );
        assert_eq!(g.on_desired(5, 1), New, "generations may skip");
        assert_eq!(g.on_desired(4, 1), Stale, "older: a replay");
        assert_eq!(g.acted(), 5, "a stale one changes nothing");
    }

    #[test]
    fn the_same_generation_is_confirmed_once_per_connection() {
        let mut g = Generations::default();
        assert_eq!(g.on_desired(2, 1), New);
        assert_eq!(g.on_desired(2, 2), Confirm, "the resync after a reconnect");
        assert_eq!(g.on_desired(2, 2), Repeat);
        assert_eq!(g.on_desired(2, 3), Confirm);
        assert_eq!(g.on_desired(3, 3), New);
        assert_eq!(g.on_desired(3, 3), Repeat, "confirmed when acted on");
    }

    #[test]
    fn generation_zero_is_refused() {
        let mut g = Generations::default();
        assert_eq!(g.on_desired(0, 1), Stale);
        assert_eq!(g.acted(), 0);
    }

    #[test]
    fn scripted_phases() {
        let mut f = 0;
        assert!(Behavior::Silent.phases(&mut f).is_empty());
        assert_eq!(
            Behavior::Succeed.phases(&mut f).last(),
            Some(&Phase::Running)
        );
        assert_eq!(
            Behavior::Fail.phases(&mut f).last(),
            Some(&Phase::RolledBack)
        );
        assert_eq!(f, 0, "only FailTimes counts");
        let b = Behavior::FailTimes(2);
        let ends: Vec<Phase> = (0..4).map(|_| *b.phases(&mut f).last().unwrap()).collect();
        assert_eq!(
            ends,
            [
                Phase::RolledBack,
                Phase::RolledBack,
                Phase::Running,
                Phase::Running
            ]
        );
        assert_eq!(
            detail(Phase::RolledBack).as_deref(),
            Some("health check failed")
        );
        assert_eq!(detail(Phase::Running), None);
    }
}
