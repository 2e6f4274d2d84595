//! Persisted runtime state: one typed JSON value, `runtime` in the store's `state.json` (see
//! [`crate::store`]).
//!
//! Every change is durable (the file replaced whole: temporary file, `fsync`, `rename`,
//! `fsync` of the folder) before the runtime acts on it, so a SIGKILL at any point leaves
//! the old or the new state, which [`crate::runtime::reconcile`] can finish or roll back on
//! the next start. Phases are enums, never strings.

use crate::store::Db;
use hammer_protocol::{DesiredState, InstallStep};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Errors reading or writing the persisted state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("runtime state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("runtime state is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A release: one commit and the spec it runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub commit: String,
    pub generation: u64,
    pub deployment_id: String,
    pub start: String,
    pub env: BTreeMap<String, String>,
    /// The install step its folder was made with (absent in states written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallStep>,
}

impl Release {
    pub fn from_desired(desired: &DesiredState, commit: &str) -> Release {
        Release {
            commit: commit.to_string(),
            generation: desired.generation,
            deployment_id: desired.deployment_id.clone(),
            start: desired.start.clone(),
            env: desired.env.clone(),
            install: desired.install.clone(),
        }
    }

    /// Same commit, installed the same way, and the same way of starting it.
    pub fn same_run(&self, other: &Release) -> bool {
        self.commit == other.commit
            && self.start == other.start
            && self.env == other.env
            && self.install == other.install
    }
}

/// The app instance last started: enough to find it again after the manager restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Pid of the `/bin/sh` leader; also the process group id.
    pub pgid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
}

/// The step a deployment is in. Persisted before the step is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Deployment {
    /// Nothing in progress.
    #[default]
    Idle,
    /// Fetching and checking out; nothing visible changed yet (redo from the start).
    Fetching { desired: Box<DesiredState> },
    /// `commit` is checked out; its install command runs in a temporary folder beside it
    /// while the old app keeps running. After a restart of the manager the install is run
    /// again from a fresh checkout (`attempt` + 1), or, once [`super::install::MAX_ATTEMPTS`]
    /// attempts were cut short, the deployment fails (see [`super::reconcile::recovery_plan`]).
    Installing {
        desired: Box<DesiredState>,
        commit: String,
        /// 1 for the first run of the install command of this deployment.
        attempt: u32,
    },
    /// The release `commit` is complete under `releases/`; the old app is being stopped and
    /// `current` swapped to it.
    Switching {
        desired: Box<DesiredState>,
        release: Release,
        previous: Option<Release>,
    },
    /// The new release runs inside its health window.
    Verifying {
        desired: Box<DesiredState>,
        release: Release,
        previous: Option<Release>,
    },
    /// The new release failed; going back to `previous` (or to nothing).
    RollingBack {
        desired: Box<DesiredState>,
        release: Release,
        previous: Option<Release>,
        reason: String,
        log_tail: Vec<String>,
    },
}

/// Everything the runtime persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RuntimeState {
    /// The last desired state acted on (its generation is "the one acted on").
    pub desired: Option<DesiredState>,
    /// The release `current` points at.
    pub current: Option<Release>,
    /// The release before it (rollback target).
    pub previous: Option<Release>,
    pub deployment: Deployment,
    /// Generations rolled back from: never retried.
    pub rolled_back: BTreeSet<u64>,
    /// The desired run state is `stopped`.
    pub stopped: bool,
    /// The app instance started last, while it may run.
    pub app: Option<AppRecord>,
}

/// Loads and saves [`RuntimeState`].
#[derive(Clone)]
pub struct StateStore {
    db: Db,
}

impl StateStore {
    pub fn open(db: &Db) -> Result<StateStore, StateError> {
        Ok(StateStore { db: db.clone() })
    }

    pub fn load(&self) -> Result<RuntimeState, StateError> {
        match self.db.runtime_state() {
            Some(value) => Ok(serde_json::from_value(value)?),
            None => Ok(RuntimeState::default()),
        }
    }

    /// Writes the state durably before returning.
    pub fn save(&self, state: &RuntimeState) -> Result<(), StateError> {
        self.db.save_runtime_state(serde_json::to_value(state)?)?;
        Ok(())
    }
}
