//! Phased deployments, as a pure part of the rollout core: the plan (which targets each phase
//! holds), which targets may launch, what a phase waits for once its targets are done, the
//! soak, and promotion. State in, decisions out, time passed in; [`super::core::Rollout`]
//! calls these at its steps, ticks and status events.
//!
//! The rules:
//! - The targets, in the deployment's order, are split into phases of the sizes the strategy
//!   names ([`plan`]); what the sizes leave over is a last phase. Only the open phase's
//!   targets (and earlier phases') launch; `max_in_flight`, pause and the schedule still apply.
//! - The abort threshold is applied to the open phase's targets alone ([`current_range`]).
//! - When no target of the open phase is pending or in flight ([`after_step`]): if every one
//!   succeeded and none turned unhealthy, it soaks for `soak_secs` (then it is promoted on its
//!   own, [`on_tick`]) or, with no soak time, awaits a promotion by hand; otherwise it is held
//!   with the reason, for a human to promote or cancel.
//! - A target that succeeded and then reports a crash, a restart, a rollback or a failure of
//!   the release it runs ([`on_health`]) makes the open phase unhealthy: a soak under way is
//!   held, and a phase still running is held when it is done.
//! - A promotion by hand ([`promote`]) opens the next phase whatever the gate (the open
//!   phase's remaining targets go on); it is refused in the last phase.

use crate::store::{cut, DeploymentRecord, PhaseGate, PhasingRecord, Promotion, MAX_DETAIL};
use hammer_protocol::api::{PhaseSize, TargetState};
use hammer_protocol::{Phase, StatusEvent};
use std::ops::Range;

/// Most phases a deployment may name (the protocol's rule, which the CLI checks too).
pub use hammer_protocol::schedule::MAX_PHASES;
/// Longest soak time: seven days.
pub const MAX_SOAK_SECS: u32 = 7 * 24 * 3600;

/// Where each phase ends among `n` targets (cumulative, ascending, the last is `n`): each named
/// size takes at least one target while any is left, and a last phase holds the rest. `None`
/// for a one-phase deployment (no sizes, or sizes that leave a single phase).
pub fn plan(sizes: &[PhaseSize], n: usize) -> Option<Vec<usize>> {
    let mut ends = Vec::new();
    let mut end = 0usize;
    for s in sizes {
        if end >= n {
            break;
        }
        let take = match *s {
            PhaseSize::Devices(k) => k as usize,
            PhaseSize::Percent(p) => (n * usize::from(p)).div_ceil(100),
        };
        end = (end + take.max(1)).min(n);
        ends.push(end);
    }
    if end < n {
        ends.push(n);
    }
    (ends.len() > 1).then_some(ends)
}

/// A new deployment's phasing (`None` for one phase).
pub fn start(sizes: &[PhaseSize], n: usize) -> Option<PhasingRecord> {
    plan(sizes, n).map(|ends| PhasingRecord {
        ends,
        current: 0,
        gate: PhaseGate::Running,
        unhealthy: None,
        promotions: Vec::new(),
    })
}

/// The targets of phase `k` (from 0).
pub fn range(p: &PhasingRecord, k: usize) -> Range<usize> {
    let start = if k == 0 {
        0
    } else {
        p.ends.get(k - 1).copied().unwrap_or(0)
    };
    let end = p.ends.get(k).copied().unwrap_or(start);
    start..end.max(start)
}

/// The targets whose failures the abort threshold weighs: the open phase's, or all of them.
pub fn current_range(dep: &DeploymentRecord) -> Range<usize> {
    match &dep.phasing {
        Some(p) => range(p, p.current),
        None => 0..dep.targets.len(),
    }
}

/// Targets before this index may launch (the end of the open phase).
pub fn launch_limit(dep: &DeploymentRecord) -> usize {
    match &dep.phasing {
        Some(p) => p.ends.get(p.current).copied().unwrap_or(dep.targets.len()),
        None => dep.targets.len(),
    }
}

fn is_last(p: &PhasingRecord) -> bool {
    p.current + 1 >= p.ends.len()
}

/// After a step of a running deployment: a phase whose targets are all done starts its soak,
/// awaits a promotion or is held. Returns whether the gate changed.
pub fn after_step(dep: &mut DeploymentRecord, now: u64) -> bool {
    let soak_secs = dep.strategy.soak_secs;
    let Some(p) = dep.phasing.as_mut() else {
        return false;
    };
    if is_last(p) || p.gate != PhaseGate::Running {
        return false;
    }
    let r = range(p, p.current);
    let targets = &dep.targets[r.start.min(dep.targets.len())..r.end.min(dep.targets.len())];
    if targets.iter().any(|t| t.state.is_active()) {
        return false;
    }
    let not_ok: Vec<&str> = targets
        .iter()
        .filter(|t| t.state != TargetState::Succeeded)
        .map(|t| t.device.as_str())
        .collect();
    let phase = p.current + 1;
    p.gate = if !not_ok.is_empty() {
        PhaseGate::Held {
            reason: held_text(&format!(
                "phase {phase}: {} of {} devices did not succeed ({})",
                not_ok.len(),
                targets.len(),
                names(&not_ok)
            )),
        }
    } else if let Some(why) = &p.unhealthy {
        PhaseGate::Held {
            reason: held_text(&format!("phase {phase}: {why}")),
        }
    } else {
        match soak_secs {
            Some(s) => PhaseGate::Soaking {
                until: now.saturating_add(u64::from(s) * 1000),
            },
            None => PhaseGate::AwaitingPromotion,
        }
    };
    true
}

/// A few device names, then how many more.
fn names(list: &[&str]) -> String {
    const SHOWN: usize = 3;
    let mut s = list
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN {
        s.push_str(&format!(" and {} more", list.len() - SHOWN));
    }
    s
}

fn held_text(why: &str) -> String {
    cut(
        &format!("{why}; promote it by hand (`hammer deployment promote`) or cancel"),
        MAX_DETAIL,
    )
    .into_owned()
}

/// A tick: a soak that passed promotes its phase. Returns whether it did.
pub fn on_tick(dep: &mut DeploymentRecord, now: u64) -> bool {
    let Some(p) = dep.phasing.as_mut() else {
        return false;
    };
    match p.gate {
        PhaseGate::Soaking { until } if until <= now => {
            open_next(p, None, now);
            true
        }
        _ => false,
    }
}

/// When the open phase's soak ends, if it soaks.
pub fn soak_deadline(dep: &DeploymentRecord) -> Option<u64> {
    match dep.phasing.as_ref()?.gate {
        PhaseGate::Soaking { until } => Some(until),
        _ => None,
    }
}

fn open_next(p: &mut PhasingRecord, by: Option<&str>, now: u64) {
    p.promotions.push(Promotion {
        phase: p.current,
        at: now,
        by: by.map(str::to_owned),
    });
    p.current += 1;
    p.gate = PhaseGate::Running;
    p.unhealthy = None;
}

/// Why a promotion by hand was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromoteRefused {
    /// The deployment has one phase.
    NotPhased,
    /// The open phase is the last one (from 1).
    LastPhase(usize),
}

/// Promotes the open phase by hand (`by`: a user name): the next phase opens now.
pub fn promote(dep: &mut DeploymentRecord, by: &str, now: u64) -> Result<usize, PromoteRefused> {
    let Some(p) = dep.phasing.as_mut() else {
        return Err(PromoteRefused::NotPhased);
    };
    if is_last(p) {
        return Err(PromoteRefused::LastPhase(p.current + 1));
    }
    open_next(p, Some(by), now);
    Ok(p.current + 1)
}

/// Whether a report about a running release is a sign of trouble.
fn is_trouble(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Crashed | Phase::Restarted | Phase::RolledBack | Phase::Failed
    )
}

/// A report of target `i` after it succeeded (the engine hands it over only for targets
/// that are no longer in flight). A crash, restart, rollback or failure of the release it
/// runs, on a target of the open phase or an earlier one, makes the phase unhealthy and holds
/// a soak under way. Returns whether anything changed.
pub fn on_health(dep: &mut DeploymentRecord, i: usize, ev: &StatusEvent) -> bool {
    let limit = launch_limit(dep);
    let Some(p) = dep.phasing.as_mut() else {
        return false;
    };
    let Some(t) = dep.targets.get(i) else {
        return false;
    };
    if i >= limit
        || t.state != TargetState::Succeeded
        || !is_trouble(ev.phase)
        || ev.generation.is_none()
        || ev.generation != t.generation
    {
        return false;
    }
    let what = match ev.phase {
        Phase::Crashed => "crashed",
        Phase::Restarted => "restarted",
        Phase::RolledBack => "rolled back",
        _ => "failed",
    };
    let why = match &ev.detail {
        Some(d) => format!("{} {what} after it succeeded: {}", t.device, cut(d, 200)),
        None => format!("{} {what} after it succeeded", t.device),
    };
    let mut changed = false;
    if p.unhealthy.is_none() {
        p.unhealthy = Some(why.clone());
        changed = true;
    }
    if matches!(p.gate, PhaseGate::Soaking { .. }) {
        p.gate = PhaseGate::Held {
            reason: held_text(&format!("phase {}: {why}", p.current + 1)),
        };
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TargetRecord;
    use hammer_protocol::api::{DeploymentState, Strategy};
    use PhaseSize::{Devices, Percent};

    #[test]
    fn one_device_then_ten_percent_then_the_rest() {
        assert_eq!(
            plan(&[Devices(1), Percent(10)], 100),
            Some(vec![1, 11, 100])
        );
    }

    #[test]
    fn a_percentage_rounds_up_and_every_named_phase_takes_at_least_one_device() {
        assert_eq!(plan(&[Percent(10), Percent(1)], 15), Some(vec![2, 3, 15]));
        assert_eq!(plan(&[Devices(0), Devices(2)], 5), Some(vec![1, 3, 5]));
    }

    #[test]
    fn sizes_beyond_the_targets_stop_at_the_last_target() {
        assert_eq!(
            plan(&[Devices(2), Devices(10), Devices(5)], 4),
            Some(vec![2, 4])
        );
        assert_eq!(plan(&[Percent(50), Percent(100)], 4), Some(vec![2, 4]));
    }

    #[test]
    fn no_sizes_or_sizes_covering_everything_at_once_mean_one_phase() {
        assert_eq!(plan(&[], 10), None);
        assert_eq!(plan(&[Percent(100)], 10), None);
        assert_eq!(plan(&[Devices(5)], 3), None);
        assert_eq!(plan(&[Devices(1)], 1), None);
    }

    fn target(i: usize, state: TargetState) -> TargetRecord {
        TargetRecord {
            device_id: format!("id{i}"),
            device: format!("d{i}"),
            state,
            attempts: 1,
            last_phase: None,
            commit: None,
            detail: None,
            updated_at: 0,
            generation: Some(7),
            deadline: None,
        }
    }

    fn phased(states: &[TargetState], sizes: &[PhaseSize], soak: Option<u32>) -> DeploymentRecord {
        DeploymentRecord {
            id: "dep".into(),
            owner: "u".into(),
            deployer: "alice".into(),
            created_at: 0,
            finished_at: None,
            git_ref: None,
            commit: None,
            strategy: Strategy {
                phases: sizes.to_vec(),
                soak_secs: soak,
                ..Strategy::default()
            },
            state: DeploymentState::Running,
            reason: None,
            targets: states
                .iter()
                .enumerate()
                .map(|(i, s)| target(i, *s))
                .collect(),
            paused: false,
            phasing: start(sizes, states.len()),
        }
    }

    use TargetState::{InFlight, Pending, Succeeded};

    #[test]
    fn only_the_open_phases_targets_may_launch() {
        let d = phased(&[Pending; 5], &[Devices(1), Devices(2)], None);
        assert_eq!(launch_limit(&d), 1);
        assert_eq!(current_range(&d), 0..1);
    }

    #[test]
    fn a_phase_with_targets_in_flight_waits() {
        let mut d = phased(&[InFlight, Pending, Pending], &[Devices(1)], Some(60));
        assert!(!after_step(&mut d, 1000));
        assert_eq!(d.phasing.as_ref().unwrap().gate, PhaseGate::Running);
    }

    #[test]
    fn a_phase_whose_targets_all_succeeded_soaks_then_is_promoted_on_its_own() {
        let mut d = phased(&[Succeeded, Pending, Pending], &[Devices(1)], Some(60));
        assert!(after_step(&mut d, 1000));
        assert_eq!(
            d.phasing.as_ref().unwrap().gate,
            PhaseGate::Soaking { until: 61_000 }
        );
        assert_eq!(soak_deadline(&d), Some(61_000));
        assert!(!on_tick(&mut d, 60_999), "not a millisecond early");
        assert!(on_tick(&mut d, 61_000));
        let p = d.phasing.as_ref().unwrap();
        assert_eq!((p.current, &p.gate), (1, &PhaseGate::Running));
        assert_eq!(
            p.promotions,
            vec![Promotion {
                phase: 0,
                at: 61_000,
                by: None
            }]
        );
        assert_eq!(launch_limit(&d), 3);
    }

    #[test]
    fn without_a_soak_time_a_finished_phase_awaits_a_promotion_by_hand() {
        let mut d = phased(&[Succeeded, Pending], &[Devices(1)], None);
        after_step(&mut d, 1000);
        assert_eq!(
            d.phasing.as_ref().unwrap().gate,
            PhaseGate::AwaitingPromotion
        );
        assert!(!on_tick(&mut d, u64::MAX));
        assert_eq!(promote(&mut d, "alice", 5000), Ok(2));
        let p = d.phasing.as_ref().unwrap();
        assert_eq!(p.promotions[0].by.as_deref(), Some("alice"));
    }

    #[test]
    fn a_phase_with_a_failed_target_is_held_naming_it() {
        let mut d = phased(
            &[Succeeded, TargetState::Failed, Pending],
            &[Devices(2)],
            Some(60),
        );
        after_step(&mut d, 1000);
        match &d.phasing.as_ref().unwrap().gate {
            PhaseGate::Held { reason } => {
                assert!(reason.contains("phase 1: 1 of 2 devices did not succeed (d1)"));
                assert!(reason.contains("hammer deployment promote"));
            }
            g => panic!("expected held, got {g:?}"),
        }
        assert!(
            !on_tick(&mut d, u64::MAX),
            "a held phase never promotes itself"
        );
    }

    fn report(phase: Phase, generation: Option<u64>) -> StatusEvent {
        StatusEvent {
            v: 1,
            epoch: 1,
            seq: 9,
            time: 0,
            generation,
            deployment_id: Some("dep".into()),
            phase,
            commit: None,
            detail: Some("exit status 1".into()),
            log_tail: Vec::new(),
            commit_subject: None,
        }
    }

    #[test]
    fn a_crash_during_the_soak_holds_the_phase() {
        let mut d = phased(&[Succeeded, Pending], &[Devices(1)], Some(60));
        after_step(&mut d, 1000);
        assert!(on_health(&mut d, 0, &report(Phase::Crashed, Some(7))));
        match &d.phasing.as_ref().unwrap().gate {
            PhaseGate::Held { reason } => {
                assert!(reason.contains("d0 crashed after it succeeded: exit status 1"))
            }
            g => panic!("expected held, got {g:?}"),
        }
        assert!(!on_tick(&mut d, u64::MAX));
    }

    #[test]
    fn a_restart_before_the_phase_is_done_holds_it_when_it_is_done() {
        let mut d = phased(&[Succeeded, InFlight, Pending], &[Devices(2)], Some(60));
        assert!(on_health(&mut d, 0, &report(Phase::Restarted, Some(7))));
        assert_eq!(d.phasing.as_ref().unwrap().gate, PhaseGate::Running);
        d.targets[1].state = Succeeded;
        after_step(&mut d, 1000);
        assert!(matches!(
            d.phasing.as_ref().unwrap().gate,
            PhaseGate::Held { .. }
        ));
    }

    #[test]
    fn progress_reports_other_generations_and_later_phases_do_not_count_as_trouble() {
        let mut d = phased(&[Succeeded, Succeeded, Pending], &[Devices(1)], Some(60));
        after_step(&mut d, 1000);
        assert!(!on_health(&mut d, 0, &report(Phase::Running, Some(7))));
        assert!(!on_health(&mut d, 0, &report(Phase::Crashed, Some(6))));
        assert!(!on_health(&mut d, 0, &report(Phase::Crashed, None)));
        assert!(!on_health(&mut d, 1, &report(Phase::Crashed, Some(7))));
        assert!(matches!(
            d.phasing.as_ref().unwrap().gate,
            PhaseGate::Soaking { .. }
        ));
    }

    #[test]
    fn a_promotion_by_hand_opens_the_next_phase_whatever_the_gate_but_not_past_the_last() {
        let mut d = phased(
            &[InFlight, Pending, Pending],
            &[Devices(1), Devices(1)],
            None,
        );
        assert_eq!(promote(&mut d, "alice", 10), Ok(2));
        assert_eq!(launch_limit(&d), 2);
        assert_eq!(promote(&mut d, "alice", 20), Ok(3));
        assert_eq!(
            promote(&mut d, "alice", 30),
            Err(PromoteRefused::LastPhase(3))
        );
        let mut one = phased(&[Pending], &[], None);
        assert_eq!(
            promote(&mut one, "alice", 1),
            Err(PromoteRefused::NotPhased)
        );
    }

    #[test]
    fn the_last_phase_never_soaks() {
        let mut d = phased(&[Succeeded, Succeeded], &[Devices(1)], Some(60));
        promote(&mut d, "alice", 10).unwrap();
        assert!(!after_step(&mut d, 1000));
        assert_eq!(d.phasing.as_ref().unwrap().gate, PhaseGate::Running);
    }
}
