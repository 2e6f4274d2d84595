//! The one way to print an enum of the protocol: its wire name (`rolled_back`, `in_flight`,
//! …), exactly what serde writes. CLI tables, web pages, metrics labels and logs use
//! [`WireName::wire_name`]; a test checks every name against serde.
//!
//! Also where a deployment or a target counts as finished ([`DeploymentState::is_finished`],
//! [`TargetState::is_finished`]); when a device's phase ends a deployment is
//! [`Phase::ends_deployment`].

use crate::api::{
    AuditAction, DeliveryState, DeploymentState, DeviceState, PhaseGateState, TargetState,
    WebhookEvent,
};
use crate::messages::{Phase, RunState};

/// An enum with a fixed wire name per variant.
pub trait WireName: Copy + 'static {
    /// Every variant, `Unknown` last.
    const ALL: &'static [Self];
    /// The variant's name on the wire (JSON and CBOR), in snake_case.
    fn wire_name(self) -> &'static str;
}

macro_rules! wire_names {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl WireName for $t {
            const ALL: &'static [Self] = &[$(<$t>::$v),+];
            fn wire_name(self) -> &'static str {
                match self {
                    $(<$t>::$v => $s),+
                }
            }
        }
    };
}

wire_names!(Phase {
    Received => "received",
    Fetching => "fetching",
    Fetched => "fetched",
    Installing => "installing",
    Starting => "starting",
    Verifying => "verifying",
    Running => "running",
    Failed => "failed",
    RolledBack => "rolled_back",
    Stopped => "stopped",
    Crashed => "crashed",
    Restarted => "restarted",
    Refused => "refused",
    Configured => "configured",
    Unknown => "unknown",
});

wire_names!(AuditAction {
    UserCreated => "user_created",
    TokenCreated => "token_created",
    TokenRevoked => "token_revoked",
    DeviceAdded => "device_added",
    DeviceRemoved => "device_removed",
    DeviceProvisioned => "device_provisioned",
    SetupChanged => "setup_changed",
    DeviceAction => "device_action",
    DeploymentCreated => "deployment_created",
    DeploymentCanceled => "deployment_canceled",
    DeploymentPaused => "deployment_paused",
    DeploymentResumed => "deployment_resumed",
    DeploymentPromoted => "deployment_promoted",
    DeploymentRetried => "deployment_retried",
    CommitMarkedBad => "commit_marked_bad",
    CommitUnmarked => "commit_unmarked",
    DeviceRolledBack => "device_rolled_back",
    DeviceRefused => "device_refused",
    SignedIn => "signed_in",
    WindowAdded => "window_added",
    WindowRemoved => "window_removed",
    WebhookAdded => "webhook_added",
    WebhookRemoved => "webhook_removed",
    WebhookTested => "webhook_tested",
    Unknown => "unknown",
});

wire_names!(WebhookEvent {
    DeploymentCreated => "deployment.created",
    DeploymentPaused => "deployment.paused",
    DeploymentResumed => "deployment.resumed",
    DeploymentPhasePromoted => "deployment.phase_promoted",
    DeploymentSucceeded => "deployment.succeeded",
    DeploymentFailed => "deployment.failed",
    DeploymentAborted => "deployment.aborted",
    DeploymentCanceled => "deployment.canceled",
    DeviceOnline => "device.online",
    DeviceOffline => "device.offline",
    DeviceRolledBack => "device.rolled_back",
    DeviceCrashLooping => "device.crash_looping",
    Ping => "ping",
    Unknown => "unknown",
});

wire_names!(DeliveryState {
    Pending => "pending",
    Delivered => "delivered",
    Failed => "failed",
    Dropped => "dropped",
    Unknown => "unknown",
});

wire_names!(PhaseGateState {
    Running => "running",
    Soaking => "soaking",
    AwaitingPromotion => "awaiting_promotion",
    Held => "held",
    Unknown => "unknown",
});

wire_names!(RunState {
    Running => "running",
    Stopped => "stopped",
    Unknown => "unknown",
});

wire_names!(DeviceState {
    Registered => "registered",
    Enrolled => "enrolled",
    SetupPending => "setup_pending",
    Ready => "ready",
    Unknown => "unknown",
});

wire_names!(DeploymentState {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Canceled => "canceled",
    Unknown => "unknown",
});

wire_names!(TargetState {
    Pending => "pending",
    InFlight => "in_flight",
    Succeeded => "succeeded",
    Failed => "failed",
    TimedOut => "timed_out",
    Skipped => "skipped",
    Superseded => "superseded",
    Unknown => "unknown",
});

impl DeploymentState {
    /// Whether the deployment is over: anything but `running` (an `unknown` state, from a
    /// newer service, is not followed further either).
    pub fn is_finished(self) -> bool {
        self != DeploymentState::Running
    }
}

impl TargetState {
    /// Whether the rollout engine still works on this target: not yet sent, or in flight.
    pub fn is_active(self) -> bool {
        matches!(self, TargetState::Pending | TargetState::InFlight)
    }

    /// Whether this target is done (succeeded, failed, timed out, skipped, superseded; or a state this
    /// version does not know, which the engine does not work on either).
    pub fn is_finished(self) -> bool {
        !self.is_active()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{de::DeserializeOwned, Serialize};

    /// Every variant's wire name is what serde writes and reads back, and names are distinct.
    fn names_match_serde<
        T: WireName + Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    >() {
        let mut seen = std::collections::BTreeSet::new();
        for &v in T::ALL {
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json.as_str(), Some(v.wire_name()), "{v:?}");
            assert_eq!(
                serde_json::from_value::<T>(json).unwrap(),
                v,
                "{v:?} does not read back"
            );
            assert!(seen.insert(v.wire_name()), "{v:?}: name used twice");
        }
    }

    #[test]
    fn every_wire_name_is_what_serde_writes_for_that_variant() {
        names_match_serde::<Phase>();
        names_match_serde::<RunState>();
        names_match_serde::<DeviceState>();
        names_match_serde::<DeploymentState>();
        names_match_serde::<TargetState>();
        names_match_serde::<AuditAction>();
        names_match_serde::<PhaseGateState>();
        names_match_serde::<WebhookEvent>();
        names_match_serde::<DeliveryState>();
    }

    #[test]
    fn all_lists_every_variant_so_a_new_one_cannot_be_forgotten() {
        // `wire_name` matches exhaustively, so a new variant fails to compile until it is
        // named; these counts make `ALL` keep up as well.
        assert_eq!(Phase::ALL.len(), 15);
        assert_eq!(RunState::ALL.len(), 3);
        assert_eq!(DeviceState::ALL.len(), 5);
        assert_eq!(DeploymentState::ALL.len(), 5);
        assert_eq!(TargetState::ALL.len(), 8);
        assert_eq!(AuditAction::ALL.len(), 25);
        assert_eq!(PhaseGateState::ALL.len(), 5);
        assert_eq!(WebhookEvent::ALL.len(), 14);
        assert_eq!(DeliveryState::ALL.len(), 5);
        assert_eq!(Phase::RolledBack.wire_name(), "rolled_back");
        assert_eq!(TargetState::InFlight.wire_name(), "in_flight");
    }

    #[test]
    fn a_deployment_is_finished_once_it_leaves_running() {
        for &s in DeploymentState::ALL {
            assert_eq!(s.is_finished(), s != DeploymentState::Running, "{s:?}");
        }
    }

    #[test]
    fn only_pending_and_in_flight_targets_are_active() {
        let active: Vec<_> = TargetState::ALL
            .iter()
            .filter(|s| s.is_active())
            .map(|s| s.wire_name())
            .collect();
        assert_eq!(active, ["pending", "in_flight"]);
        for &s in TargetState::ALL {
            assert_eq!(s.is_finished(), !s.is_active(), "{s:?}");
        }
    }
}
