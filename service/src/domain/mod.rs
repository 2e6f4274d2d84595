//! What a user can do and see, as plain functions over the shared state ([`Service`]) and the
//! [`Caller`]: the API handlers ([`crate::api`]) and the dashboard's pages ([`crate::web`])
//! both call these, so both apply the same ownership rules and give the same refusals. No HTTP
//! here: a refusal is a [`crate::error::ServiceError`].
//!
//! [`devices`] (look up, list, create within the quota), [`deployments`] (strategy, targets,
//! pages), [`activity`] (logs, history, the checks actions share), [`commits`] (the
//! commits a user marked bad: the kill switch), [`audit`] (a user's audit log),
//! [`windows`] (a user's maintenance windows) and [`webhooks`] (a user's webhooks and their
//! delivery logs).

pub mod activity;
pub mod audit;
pub mod commits;
pub mod deployments;
pub mod devices;
pub mod webhooks;
pub mod windows;

use crate::error::ServiceError;
use crate::store::UserRecord;

#[cfg(doc)]
use crate::service::Service;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserRecord,
    pub token_id: String,
}

impl Caller {
    /// Only admins pass.
    pub fn require_admin(&self) -> Result<(), ServiceError> {
        if self.user.admin {
            Ok(())
        } else {
            Err(ServiceError::forbidden(
                "this needs an admin token (managing users and provisioning devices)",
            ))
        }
    }
}
