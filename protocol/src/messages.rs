//! The messages that cross MQTT. Every message carries `v` (the protocol version).
//!
//! Forward compatibility: unknown fields are ignored on decode, and every enum has an
//! `Unknown` variant that absorbs values a newer peer may send, so an older service never
//! stalls on a newer device's event.

pub use crate::credentials::GitCredentials;
use crate::install::InstallStep;
use crate::sealing::SealedSecret;
use crate::PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Messages addressed to one device of one owner (checked by [`crate::signing::verify`]).
pub trait Addressed {
    fn device_id(&self) -> &str;
    fn owner(&self) -> &str;
}

/// Whether the app should run. Part of the desired state so that a stop survives reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    #[default]
    Running,
    Stopped,
    #[serde(other)]
    Unknown,
}

/// service → device (retained): what the device should run. Declarative and idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub v: u16,
    pub device_id: String,
    /// The owner's user id.
    pub owner: String,
    /// Strictly increasing per device; a device never acts on an older one.
    pub generation: u64,
    pub deployment_id: String,
    pub repo_url: String,
    /// Branch, tag or commit to resolve when `commit` is not set.
    pub git_ref: String,
    /// The resolved commit, once known (pinned by the service for a rollout).
    pub commit: Option<String>,
    /// Shell command that starts the app, run as `/bin/sh -c START` in the release folder.
    pub start: String,
    pub env: BTreeMap<String, String>,
    /// Seconds the new release must stay up (and pass `health_cmd`) before it counts as running.
    pub health_window_secs: u32,
    pub health_cmd: Option<String>,
    pub run_state: RunState,
    /// Milliseconds since the Unix epoch.
    pub issued_at: u64,
    /// Run in the new release's folder before it starts (`installing`), while the running
    /// release keeps running. Absent on the wire when not set, so older devices read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallStep>,
    /// Fetch the ref's whole history instead of its tip (the setup's `full_history`). Absent
    /// on the wire when false, so older devices read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_history: bool,
}

impl Addressed for DesiredState {
    fn device_id(&self) -> &str {
        &self.device_id
    }
    fn owner(&self) -> &str {
        &self.owner
    }
}

/// What a [`Command`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandKind {
    /// Store these (sealed) git credentials; `None` clears them.
    Setup { credentials: Option<SealedSecret> },
    /// Restart the app of the current release.
    Restart,
    /// Start (`on`) or stop streaming app output lines on the logs channel.
    Logs { on: bool },
    #[serde(other)]
    Unknown,
}

/// service → device (not retained): a one-off instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub v: u16,
    pub device_id: String,
    pub owner: String,
    /// Strictly increasing per device; replays and reorderings are refused.
    pub cmd_seq: u64,
    pub issued_at: u64,
    /// A command that arrives after this time (ms since the epoch) is refused.
    pub expires_at: u64,
    pub kind: CommandKind,
}

impl Addressed for Command {
    fn device_id(&self) -> &str {
        &self.device_id
    }
    fn owner(&self) -> &str {
        &self.owner
    }
}

/// The phases a device reports for a deployment and for its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A new desired state was accepted.
    Received,
    Fetching,
    /// The ref resolved to `commit` and the release is checked out.
    Fetched,
    /// The install command runs in the new release's folder; the old release still runs.
    Installing,
    Starting,
    /// The new release runs and is inside its health window.
    Verifying,
    /// The release passed its health window (or was confirmed) and runs.
    Running,
    /// The deployment failed before a release was started (fetch, checkout, install, bad
    /// input).
    Failed,
    /// The new release failed its health gate; the previous release runs again.
    RolledBack,
    /// The app was stopped on request.
    Stopped,
    /// The app exited on its own.
    Crashed,
    /// The app was started again after a crash or on request.
    Restarted,
    /// A message was refused (bad signature, wrong address, replay, expired).
    Refused,
    /// Setup (credentials) was stored; the device is ready for deployment.
    Configured,
    #[serde(other)]
    Unknown,
}

impl Phase {
    /// Terminal phases of a deployment on one device: it runs (`Running`), or this attempt is
    /// over (`Failed`, `RolledBack`, or `Refused`: the device refused the desired state and
    /// will not act on it). The one definition; the service's rollout engine uses it.
    pub fn ends_deployment(self) -> bool {
        matches!(
            self,
            Phase::Running | Phase::Failed | Phase::RolledBack | Phase::Refused
        )
    }
}

/// device → service: one step, numbered by (epoch, seq) so the service stores it exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub v: u16,
    /// Random per install of the device's data dir; a wiped device starts a new epoch.
    pub epoch: u64,
    /// Per (device, epoch), starting at 1, no gaps.
    pub seq: u64,
    pub generation: Option<u64>,
    pub deployment_id: Option<String>,
    pub phase: Phase,
    pub commit: Option<String>,
    pub time: u64,
    /// A human-readable reason (never contains secrets).
    pub detail: Option<String>,
    /// The app's last output lines, sent with failures.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// The first line of `commit`'s message (at most [`COMMIT_SUBJECT_MAX`] bytes, no control
    /// characters), sent with `fetched`. Absent from older managers' events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_subject: Option<String>,
}

/// Longest commit subject a status event carries, in bytes (longer ones are cut at a
/// character boundary; the service cuts what a device sends the same way).
pub const COMMIT_SUBJECT_MAX: usize = 200;

/// A commit message's subject as a status event carries it: its first line, control
/// characters dropped, cut to [`COMMIT_SUBJECT_MAX`] bytes; `None` when nothing is left.
pub fn commit_subject(message: &str) -> Option<String> {
    let line = message.lines().next().unwrap_or("");
    let mut out = String::new();
    for c in line.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > COMMIT_SUBJECT_MAX {
            break;
        }
        out.push(c);
    }
    let out = out.trim();
    (!out.is_empty()).then(|| out.to_string())
}

/// What an ack says: every status event up to `seq` of `epoch` is stored. On the wire it
/// travels as a signed [`AddressedAck`]; this is what the device has once it verified one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub v: u16,
    pub epoch: u64,
    pub seq: u64,
}

/// service → device (signed, like desired states and commands): an [`Ack`] addressed to one
/// device of one owner, so that an ack can neither be forged nor replayed onto another
/// device's outbox. The names are borrowed on the service side: it acks at high rates and
/// building one costs no allocation (decoding on the device yields owned strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressedAck<'a> {
    pub v: u16,
    pub device_id: Cow<'a, str>,
    /// The owner's user id.
    pub owner: Cow<'a, str>,
    pub epoch: u64,
    pub seq: u64,
}

impl<'a> AddressedAck<'a> {
    /// The ack of `seq` of `epoch`, for `device_id` of `owner`.
    pub fn new(device_id: &'a str, owner: &'a str, epoch: u64, seq: u64) -> AddressedAck<'a> {
        AddressedAck {
            v: PROTOCOL_VERSION,
            device_id: Cow::Borrowed(device_id),
            owner: Cow::Borrowed(owner),
            epoch,
            seq,
        }
    }

    /// What it acknowledges.
    pub fn ack(&self) -> Ack {
        Ack {
            v: self.v,
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

impl Addressed for AddressedAck<'_> {
    fn device_id(&self) -> &str {
        &self.device_id
    }
    fn owner(&self) -> &str {
        &self.owner
    }
}

/// device → service (QoS 0): periodic liveness figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub v: u16,
    pub time: u64,
    pub app_running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub uptime_secs: u64,
    pub app_rss_kb: u64,
    pub app_cpu_ms: u64,
    pub manager_version: String,
    pub commit: Option<String>,
    pub generation: Option<u64>,
}

/// device → service (QoS 0): app output lines while someone watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    pub v: u16,
    pub time: u64,
    pub lines: Vec<String>,
}

/// device → service (retained): online/offline. Online doubles as the resync request: the
/// service answers with only what differs — the desired state when `generation` is not the
/// device's desired one, an ack when the stored seq is not `acked_seq` or the device has events
/// waiting (`last_seq` beyond `acked_seq`) — and nothing for a device already in sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub v: u16,
    pub online: bool,
    pub epoch: u64,
    /// The generation the device runs (or last acted on).
    pub generation: Option<u64>,
    /// The highest seq the device knows the service stored.
    pub acked_seq: u64,
    pub manager_version: String,
    pub time: u64,
    /// The highest seq the device handed out in this epoch (`acked_seq` when nothing waits).
    /// A device with events beyond `acked_seq` resends them only after the service's ack says
    /// which are missing. `None` from a manager that predates the field: the service acks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

impl Presence {
    /// The last will: offline, with nothing else known.
    pub fn offline(epoch: u64) -> Presence {
        Presence {
            v: PROTOCOL_VERSION,
            online: false,
            epoch,
            generation: None,
            acked_seq: 0,
            manager_version: String::new(),
            time: 0,
            last_seq: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_commit_subject_is_the_first_line_without_control_characters() {
        assert_eq!(
            commit_subject("Fix the pump\n\nLonger text").as_deref(),
            Some("Fix the pump")
        );
        assert_eq!(
            commit_subject("  a\u{1b}[31mred\u{7}  ").as_deref(),
            Some("a[31mred")
        );
        assert_eq!(commit_subject(""), None);
        assert_eq!(commit_subject("\n\nbody only"), None);
        assert_eq!(commit_subject(" \t \r\n"), None);
    }

    #[test]
    fn a_long_commit_subject_is_cut_at_a_character_boundary() {
        let s = commit_subject(&"é".repeat(COMMIT_SUBJECT_MAX)).unwrap();
        assert_eq!(s.len(), COMMIT_SUBJECT_MAX);
        let s = commit_subject(&format!("a{}", "é".repeat(COMMIT_SUBJECT_MAX))).unwrap();
        assert_eq!(s.len(), COMMIT_SUBJECT_MAX - 1);
    }

    proptest! {
        #[test]
        fn any_message_gives_a_bounded_single_line_subject(message in any::<String>()) {
            if let Some(s) = commit_subject(&message) {
                prop_assert!(s.len() <= COMMIT_SUBJECT_MAX);
                prop_assert!(!s.is_empty() && !s.chars().any(char::is_control));
                prop_assert_eq!(commit_subject(&s), Some(s.clone()));
            }
        }
    }
}
