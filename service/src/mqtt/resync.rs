//! What a device's online presence asks of the service: only what differs. Pure: the presence,
//! the device's desired generation and the service's stored ack in, the plan out.
//!
//! - The **desired state** is sent when the generation the device reports is not the desired
//!   one (a device that missed a deployment while offline, or lost its state). A device that
//!   runs the desired generation needs it not again: its outcome is known from its status
//!   events, and a retained copy is there for any subscriber that wants it.
//! - The **ack** is sent when the service stored a different seq of the device's epoch than the
//!   device knows (`acked_seq`), or when the device says it has events beyond `acked_seq`
//!   (`last_seq`): the device waits for this ack and then resends only what it does not cover.
//!   A presence without `last_seq` (an older manager) always gets the ack. A device in a new
//!   epoch the service has stored nothing of gets an ack of seq 0: "resend everything".
//! - A device whose generation and acked seq match, with nothing waiting, gets **nothing**.
//!
//! Queued commands are delivered whatever the plan ([`super::publish::resync_on_presence`]).

use hammer_protocol::Presence;

/// What to publish to a device that came online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Publish the device's desired state.
    pub desired: bool,
    /// Publish an ack of (epoch, seq).
    pub ack: Option<(u64, u64)>,
}

impl Plan {
    /// Nothing to send: the device is in sync.
    pub fn in_sync(&self) -> bool {
        !self.desired && self.ack.is_none()
    }
}

/// Plans the resync of a device whose online `presence` arrived, given its desired state's
/// generation (`None`: nothing desired) and the service's stored (epoch, highest contiguous
/// seq) of the device (`None`: nothing stored).
pub fn plan(
    presence: &Presence,
    desired_generation: Option<u64>,
    stored: Option<(u64, u64)>,
) -> Plan {
    let desired = desired_generation.is_some_and(|g| presence.generation != Some(g));
    let stored_seq = match stored {
        Some((epoch, seq)) if epoch == presence.epoch => seq,
        _ => 0,
    };
    let waiting = presence
        .last_seq
        .is_none_or(|last| last > presence.acked_seq);
    let ack = (waiting || stored_seq != presence.acked_seq).then_some((presence.epoch, stored_seq));
    Plan { desired, ack }
}

/// Everything, whatever the device has: the desired state when there is one and the stored
/// ack. After the service's link (re)connects to a broker that may have lost what it held.
pub fn everything(desired_generation: Option<u64>, stored: Option<(u64, u64)>) -> Plan {
    Plan {
        desired: desired_generation.is_some(),
        ack: stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::PROTOCOL_VERSION;

    fn presence(generation: Option<u64>, acked_seq: u64, last_seq: Option<u64>) -> Presence {
        Presence {
            v: PROTOCOL_VERSION,
            online: true,
            epoch: 7,
            generation,
            acked_seq,
            manager_version: "test".into(),
            time: 1,
            last_seq,
        }
    }

    #[test]
    fn a_device_in_sync_gets_nothing() {
        let p = presence(Some(3), 40, Some(40));
        let plan = plan(&p, Some(3), Some((7, 40)));
        assert!(plan.in_sync(), "{plan:?}");
    }

    #[test]
    fn a_device_on_another_generation_gets_the_desired_state_only() {
        let p = presence(Some(2), 40, Some(40));
        assert_eq!(
            plan(&p, Some(3), Some((7, 40))),
            Plan {
                desired: true,
                ack: None
            }
        );
        // A device that never acted on anything, with a desired state waiting.
        let p = presence(None, 40, Some(40));
        assert!(plan(&p, Some(1), Some((7, 40))).desired);
        // Nothing desired: nothing to send, whatever the device runs.
        let p = presence(Some(2), 40, Some(40));
        assert!(plan(&p, None, Some((7, 40))).in_sync());
    }

    #[test]
    fn events_waiting_on_the_device_get_the_stored_ack() {
        // The service stored up to 45 but the ack was lost: the device learns it and resends
        // nothing of 41..=45.
        let p = presence(Some(3), 40, Some(45));
        assert_eq!(plan(&p, Some(3), Some((7, 45))).ack, Some((7, 45)));
        // The service has only what the device knows: the ack says so, the device resends.
        assert_eq!(plan(&p, Some(3), Some((7, 40))).ack, Some((7, 40)));
    }

    #[test]
    fn a_stored_seq_the_device_does_not_know_gets_the_ack() {
        let p = presence(Some(3), 40, Some(40));
        assert_eq!(plan(&p, Some(3), Some((7, 42))).ack, Some((7, 42)));
    }

    #[test]
    fn a_new_epoch_with_events_waiting_gets_an_ack_of_nothing_stored() {
        let p = presence(Some(3), 0, Some(5));
        assert_eq!(plan(&p, Some(3), Some((6, 90))).ack, Some((7, 0)));
        assert_eq!(plan(&p, Some(3), None).ack, Some((7, 0)));
        // A new epoch with nothing waiting and nothing stored of it: in sync.
        let p = presence(Some(3), 0, Some(0));
        assert!(plan(&p, Some(3), Some((6, 90))).in_sync());
    }

    #[test]
    fn a_presence_without_last_seq_always_gets_the_ack() {
        let p = presence(Some(3), 40, None);
        let plan = plan(&p, Some(3), Some((7, 40)));
        assert_eq!(plan.ack, Some((7, 40)));
        assert!(!plan.desired);
    }

    #[test]
    fn everything_is_the_desired_state_and_the_stored_ack_when_they_exist() {
        assert_eq!(
            everything(Some(3), Some((7, 45))),
            Plan {
                desired: true,
                ack: Some((7, 45))
            }
        );
        assert!(everything(None, None).in_sync());
    }
}
