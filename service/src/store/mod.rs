//! The service's persistent state behind a small trait, so that a shared database can replace
//! the embedded sled store ([`sled::SledStore`], the only module that touches sled) when
//! several replicas run side by side.
//!
//! Every record type is plain serde data; every state is a typed enum from
//! `hammer_protocol::api`. Callers [`Store::flush`] before acknowledging anything that
//! changed state (an HTTP 2xx or an MQTT ack).

pub mod sled;

use hammer_protocol::api::{DeploymentState, DeviceState, SetupView, Strategy, TargetState};
use hammer_protocol::{DesiredState, Phase, RunState, StatusEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

/// A failure of the storage backend (disk, corruption). Never a "not found".
#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

pub type Result<T> = std::result::Result<T, StoreError>;

/// A boxed future, so that the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A user of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub created_at: u64,
}

/// An API token, stored by the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub hash: String,
    pub created_at: u64,
}

/// A one-time enrollment token (stored by hash) and the device it enrolls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    pub device_id: String,
    pub owner: String,
    pub expires_at: u64,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    /// The owner's user id.
    pub owner: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub state: DeviceState,
    pub created_at: u64,
    /// Serial of the device's current certificate.
    pub cert_serial: Option<String>,
    /// The device's X25519 sealing public key, lowercase hex.
    pub sealing_public_key: Option<String>,
    pub setup: Option<SetupView>,
    /// Generation of the latest desired state (0 = none yet).
    pub generation: u64,
    /// Sequence number of the latest command.
    pub cmd_seq: u64,
    /// The latest desired state, republished (signed) on every resync.
    pub desired: Option<DesiredState>,
    pub run_state: RunState,
    pub current_commit: Option<String>,
    pub app_phase: Option<Phase>,
    pub current_deployment: Option<String>,
    /// Commits that reached `running`, oldest first (at most a few): rollback targets.
    #[serde(default)]
    pub good_commits: Vec<String>,
}

/// One device within a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub device_id: String,
    /// The device's name (for views).
    pub device: String,
    pub state: TargetState,
    pub attempts: u32,
    pub last_phase: Option<Phase>,
    pub commit: Option<String>,
    pub detail: Option<String>,
    pub updated_at: u64,
    /// Generation published for the current attempt.
    pub generation: Option<u64>,
    /// When the current attempt times out (ms since the epoch).
    pub deadline: Option<u64>,
}

/// A deployment and the progress of each target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    /// The owner's (deployer's) user id.
    pub owner: String,
    /// The deployer's user name.
    pub deployer: String,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    pub git_ref: Option<String>,
    pub commit: Option<String>,
    pub strategy: Strategy,
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub targets: Vec<TargetRecord>,
}

/// A status event as stored, with when it arrived and who deployed its deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredStatus {
    pub device_id: String,
    pub received_at: u64,
    pub deployer: Option<String>,
    pub event: StatusEvent,
}

/// Result of storing a status event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// False when (device, epoch, seq) was already stored.
    pub new: bool,
    /// Highest seq of this epoch stored with no gap before it.
    pub contiguous: u64,
}

/// The service's persistent state.
pub trait Store: Send + Sync + 'static {
    /// Makes every change so far durable.
    fn flush(&self) -> BoxFuture<'_, Result<()>>;

    /// Adds a user; `false` if the name is taken.
    fn insert_user(&self, user: &UserRecord) -> Result<bool>;
    fn user(&self, id: &str) -> Result<Option<UserRecord>>;
    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>>;
    fn users(&self) -> Result<Vec<UserRecord>>;

    fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>>;
    /// Removes a token of `user_id`; `false` if it has no such token.
    fn delete_token(&self, user_id: &str, token_id: &str) -> Result<bool>;

    /// Adds a device; `false` if its owner already has a device of that name.
    fn insert_device(&self, device: &DeviceRecord) -> Result<bool>;
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>>;
    fn device_by_name(&self, owner: &str, name: &str) -> Result<Option<DeviceRecord>>;
    fn devices_of(&self, owner: &str) -> Result<Vec<DeviceRecord>>;
    fn all_devices(&self) -> Result<Vec<DeviceRecord>>;
    /// Atomically applies `f` to a device (it may run more than once on contention).
    fn update_device(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut DeviceRecord) + Send),
    ) -> Result<Option<DeviceRecord>>;
    /// Removes a device with its status events and acks; returns it.
    fn delete_device(&self, id: &str) -> Result<Option<DeviceRecord>>;

    fn insert_enrollment(&self, token_hash: &str, rec: &EnrollmentRecord) -> Result<()>;
    /// Removes and returns an enrollment token: exactly one caller gets it.
    fn take_enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRecord>>;
    /// Drops a device's outstanding enrollment tokens.
    fn delete_enrollments_of(&self, device_id: &str) -> Result<()>;

    fn put_deployment(&self, d: &DeploymentRecord) -> Result<()>;
    fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>>;
    fn deployments(&self) -> Result<Vec<DeploymentRecord>>;

    /// Stores a status event once per (device, epoch, seq).
    fn insert_status(&self, s: &StoredStatus) -> Result<Inserted>;
    /// The device's current epoch and its highest contiguous stored seq.
    fn ack_of(&self, device_id: &str) -> Result<Option<(u64, u64)>>;
    /// Every stored status event of a device, in (epoch, seq) order.
    fn statuses_of(&self, device_id: &str) -> Result<Vec<StoredStatus>>;
}
