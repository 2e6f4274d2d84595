//! What the rollout engine is told ([`RolloutMsg`], sent to its inbox by the API and by status
//! ingestion) and why it refuses ([`RolloutError`]). A leaf: the shared state
//! ([`crate::service::Service`]) holds the inbox's sender without knowing the engine.

use crate::store::{BadCommitRecord, DeploymentRecord, StoreError};
use hammer_protocol::api::DeploymentState;
use hammer_protocol::{StatusEvent, WireName};
use tokio::sync::oneshot;

/// Why the engine refused or could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A target is already in another running deployment.
    #[error("device {device:?} is already in running deployment {deployment}; wait for it to end or cancel it")]
    DeviceBusy { device: String, deployment: String },
    /// The deployment to cancel has already ended.
    #[error("deployment {id} already ended ({})", .state.wire_name())]
    AlreadyEnded { id: String, state: DeploymentState },
    /// The deployment to pause is already paused.
    #[error("deployment {id} is already paused")]
    AlreadyPaused { id: String },
    /// The deployment to resume is not paused.
    #[error("deployment {id} is not paused")]
    NotPaused { id: String },
    /// The deployment to promote has one phase.
    #[error("deployment {id} has one phase: there is nothing to promote")]
    NotPhased { id: String },
    /// The deployment to promote is in its last phase.
    #[error("deployment {id} is in its last phase ({phase}): there is nothing to promote")]
    LastPhase { id: String, phase: usize },
    /// The new deployment names a commit its owner marked bad.
    #[error("{0}")]
    BadCommit(String),
    /// No such deployment of this owner.
    #[error("no deployment {id}")]
    NoDeployment { id: String },
    /// The change was made but could not be persisted; it may not survive a restart.
    #[error("the {what} could not be stored; it may not survive a restart")]
    NotStored { what: &'static str },
    /// A deployment just stepped is neither running nor stored (a storage failure).
    #[error("deployment {id} vanished")]
    Vanished { id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// With replicas: no replica answered for the rollout engine in time (the rollout lease
    /// is changing hands, or its holder is unreachable).
    #[error("no replica drives deployments right now (the rollout lease is changing hands); retry in a few seconds")]
    Unavailable,
    /// With replicas: the engine's replica failed to do it (its log has the details).
    #[error("the replica driving deployments could not do it: {0}")]
    Remote(String),
}

/// What the engine is told.
pub enum RolloutMsg {
    /// A new deployment (not yet stored): store it and start it.
    Create {
        dep: Box<DeploymentRecord>,
        reply: oneshot::Sender<Result<DeploymentRecord, RolloutError>>,
    },
    /// A stored status event of a device.
    Status {
        device_id: String,
        event: StatusEvent,
    },
    /// Cancel a running deployment of `owner`.
    Cancel {
        id: String,
        owner: String,
        by: String,
        reply: oneshot::Sender<Result<DeploymentRecord, RolloutError>>,
    },
    /// Pause (`paused` true) or resume a running deployment of `owner`.
    Hold {
        id: String,
        owner: String,
        paused: bool,
        reply: oneshot::Sender<Result<DeploymentRecord, RolloutError>>,
    },
    /// Promote the open phase of a running phased deployment of `owner` (`by`: their name).
    Promote {
        id: String,
        owner: String,
        by: String,
        reply: oneshot::Sender<Result<DeploymentRecord, RolloutError>>,
    },
    /// `owner` marked `bad` bad: stop their running deployments pinned to it; answers the
    /// ids of those stopped.
    BadCommit {
        owner: String,
        bad: BadCommitRecord,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Which running deployment holds a device, if any.
    Holder {
        device_id: String,
        reply: oneshot::Sender<Option<String>>,
    },
}
