//! JSON bodies of the service's HTTP API (`/api/v1`), shared by the service, the `hammer` CLI
//! and the device manager's enrollment, so the three never drift apart.
//!
//! Requests refuse unknown fields (a typo is a 400, not a silently ignored option); responses
//! tolerate them (an older CLI keeps working against a newer service).

use crate::install::InstallStep;
use crate::messages::{GitCredentials, Phase, RunState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every error response: `{"error": "..."}`, a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

// ---- users and tokens ----

/// `POST /api/v1/users` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub admin: bool,
}

/// A freshly made API token: shown once, stored only hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// The token's id, for revoking it (not secret).
    pub id: String,
    pub token: String,
    pub user: UserView,
}

/// `GET /api/v1/tokens`: the caller's tokens, without their secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub created_at: u64,
}

// ---- devices ----

/// `POST /api/v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    pub name: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Answer to `POST /api/v1/devices`: the device and its one-time enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedDevice {
    pub device: DeviceView,
    pub enrollment_token: String,
    /// Milliseconds since the epoch after which the token no longer works.
    pub enrollment_expires_at: u64,
    /// SHA-256 of the fleet CA certificate (lowercase hex), for `hammer-manager enroll --ca-sha256`.
    pub ca_sha256: String,
    /// `https://host:port` of the service's enrollment listener (TLS with a certificate from
    /// the fleet CA), for `hammer-manager enroll --url`.
    pub enroll_url: String,
}

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Registered, waiting for enrollment.
    Registered,
    /// Enrolled (has a certificate), no setup yet.
    Enrolled,
    /// Setup sent, waiting for the device to confirm it.
    SetupPending,
    /// The device confirmed its setup: ready for deployment.
    Ready,
    #[serde(other)]
    Unknown,
}

/// A device as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub state: DeviceState,
    pub online: bool,
    /// Milliseconds since the epoch of the last message from the device.
    pub last_seen: Option<u64>,
    pub current_commit: Option<String>,
    /// `current_commit`'s subject, where the device reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_commit_subject: Option<String>,
    /// The latest phase the device reported (app state).
    pub app_phase: Option<Phase>,
    pub run_state: RunState,
    pub generation: u64,
    /// The highest generation the device reported on; below `generation`, the device has not
    /// picked up its latest desired state ([`DeviceView::is_behind`]). Absent: not known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_generation: Option<u64>,
    pub current_deployment: Option<String>,
    pub setup: Option<SetupView>,
    pub last_health: Option<HealthView>,
}

impl DeviceView {
    /// The device has not reported on its latest desired state (it was offline, or has not
    /// picked it up yet). Unknown counts as not behind.
    pub fn is_behind(&self) -> bool {
        self.reported_generation
            .is_some_and(|reported| reported < self.generation)
    }
}

/// The device's setup, without credentials (the service never stores them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupView {
    pub repo_url: String,
    pub git_ref: String,
    pub start: String,
    pub env: BTreeMap<String, String>,
    pub health_window_secs: u32,
    pub health_cmd: Option<String>,
    /// "https", "ssh" or "none": which kind of credentials were sent, never what they are.
    pub credentials: String,
    /// The install step run in each new release before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallStep>,
    /// The whole history of the ref is fetched (not only its tip).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_history: bool,
    /// What the service warned about when the setup was stored (a plain `http://` or
    /// `git://` repository URL, [`crate::rules::RemoteUrl::warning`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The last health report of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    pub time: u64,
    pub app_running: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub uptime_secs: u64,
    pub app_rss_kb: u64,
    pub app_cpu_ms: u64,
    pub manager_version: String,
}

/// `PUT /api/v1/devices/{name}/setup`: the seed's "initial setup". Credentials are sealed to
/// the device at once and sent in a signed setup command; they are never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    pub repo_url: String,
    #[serde(default = "default_ref")]
    pub git_ref: String,
    pub start: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_health_window")]
    pub health_window_secs: u32,
    #[serde(default)]
    pub health_cmd: Option<String>,
    #[serde(default)]
    pub credentials: Option<GitCredentials>,
    /// A command run in each new release's folder before it starts (dependencies, a build),
    /// checked by [`crate::install::validate_install`].
    #[serde(default)]
    pub install: Option<InstallStep>,
    /// Fetch the ref's whole history instead of its tip (default: a shallow fetch).
    #[serde(default)]
    pub full_history: bool,
}

pub fn default_ref() -> String {
    "main".into()
}

pub fn default_health_window() -> u32 {
    10
}

// ---- enrollment and provisioning ----

/// `POST /api/v1/enroll` (no bearer token: the one-time enrollment token authenticates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    pub csr_pem: String,
    /// The device's X25519 sealing public key, 32 bytes as lowercase hex.
    pub sealing_public_key: String,
}

/// Answer to a successful enrollment: everything the manager writes into its data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: String,
    /// The owner's user id (the certificate's O field).
    pub owner: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// `mqtts://host:port` of the broker.
    pub broker_url: String,
    /// The service's Ed25519 signing public key, lowercase hex.
    pub service_public_key: String,
    /// The fleet CA's signatures over the fields above that the device trusts later and that
    /// its certificate does not already carry (see [`EnrollSignatures`]).
    pub ca_signatures: EnrollSignatures,
}

/// Field name signed in [`EnrollSignatures::broker_url`].
pub const ENROLL_FIELD_BROKER_URL: &str = "broker_url";
/// Field name signed in [`EnrollSignatures::service_public_key`].
pub const ENROLL_FIELD_SERVICE_KEY: &str = "service_public_key";

/// ECDSA P-256 signatures by the fleet CA key (DER, lowercase hex), each over
/// `hammer_certs::statement::message(field, device_id, value)`: they bind the broker URL and
/// the service key to the CA the device pins, whatever path the answer took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollSignatures {
    pub broker_url: String,
    pub service_public_key: String,
}

/// `POST /api/v1/provision` (admin): register a device for a user and get an offline bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// The owner's user name.
    pub owner: String,
    pub name: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// An offline bundle: a ready `hammer-manager` data dir, file by file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionResponse {
    pub device: DeviceView,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The device's X25519 sealing private key, lowercase hex (made here, for factory use).
    pub sealing_private_key: String,
    /// The manager's config file (`manager.toml`) contents.
    pub config_toml: String,
}

/// The device manager's config file `manager.toml` in its data dir, written by enrollment
/// or by an operator bundle. Key material lives beside it in separate files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfigFile {
    pub device_id: String,
    pub owner: String,
    pub broker_url: String,
    pub service_public_key: String,
    /// Accept a plain `mqtt://` broker URL: no TLS, no certificate, anyone on the path reads
    /// and forges everything. Only for tests against a local plain-TCP broker; never set by
    /// enrollment or bundles.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_plain_mqtt_for_tests: bool,
    /// A PEM file of CA certificates the device trusts for `https://` git servers, besides
    /// the system's trust store (a private git server); relative to the data dir unless
    /// absolute. Set by the operator; never by enrollment or bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ca_file: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---- deployments ----

/// Which devices a deployment targets: names, or a `key=value` tag selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Targets {
    Names(Vec<String>),
    Tag(String),
}

/// How a deployment rolls out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    /// At most this many devices in flight; `None` = all targets at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Abort when failed% ≥ this after at least `abort_min_devices` finished; `None` = never.
    #[serde(default)]
    pub abort_at_percent: Option<u8>,
    #[serde(default = "default_abort_min")]
    pub abort_min_devices: u32,
    /// Seconds a device may take from desired state to running.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
    /// Extra attempts for a device that failed or timed out.
    #[serde(default)]
    pub retries: u32,
    /// Phases, in order: the targets (in the deployment's order) are split into phases of
    /// these sizes and a phase's devices launch only once the phase before it is promoted;
    /// targets the list leaves over form a last phase. Empty: one phase (no promotion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseSize>,
    /// Seconds the devices of a finished phase must stay healthy (every one succeeded, none
    /// crashed, restarted or rolled back) before the next phase starts on its own. `None`:
    /// each phase waits for `POST /deployments/{id}/promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_secs: Option<u32>,
    /// Launch nothing before this time (ms since the epoch). `None` (or a past time): at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<u64>,
}

/// The size of one phase of a deployment ([`Strategy::phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PhaseSize {
    /// This many devices (at least 1).
    Devices(u32),
    /// This percentage (1 to 100) of the deployment's targets, rounded up: at least one device.
    Percent(u8),
}

impl std::fmt::Display for PhaseSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PhaseSize::Devices(n) => write!(f, "{n}"),
            PhaseSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

pub fn default_abort_min() -> u32 {
    1
}

pub fn default_timeout() -> u32 {
    300
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            max_in_flight: None,
            abort_at_percent: None,
            abort_min_devices: default_abort_min(),
            timeout_secs: default_timeout(),
            retries: 0,
            phases: Vec::new(),
            soak_secs: None,
            start_at: None,
        }
    }
}

/// `POST /api/v1/deployments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    pub targets: Targets,
    /// Overrides each device's setup ref.
    #[serde(default)]
    pub git_ref: Option<String>,
    /// The full commit id every target runs (`hammer deploy` resolves the ref with the
    /// user's own git access and sends it). Without it, the first device report naming a
    /// commit pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default)]
    pub strategy: Strategy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Running,
    Succeeded,
    Failed,
    Canceled,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Not yet sent (waiting for a slot).
    Pending,
    /// Desired state published, waiting for the device.
    InFlight,
    Succeeded,
    /// Failed or rolled back (see `detail`).
    Failed,
    TimedOut,
    /// Not attempted: the deployment was aborted or canceled first.
    Skipped,
    /// Timed out, then overtaken by a newer deployment to the same device before the device
    /// reported on this one (see `detail`): it will never run this attempt.
    Superseded,
    #[serde(other)]
    Unknown,
}

/// One device within a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentTargetView {
    pub device: String,
    pub state: TargetState,
    pub attempts: u32,
    pub last_phase: Option<Phase>,
    pub commit: Option<String>,
    pub detail: Option<String>,
    pub updated_at: u64,
}

/// A deployment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: String,
    pub deployer: String,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    pub git_ref: Option<String>,
    /// The commit pinned from the first `fetched` event.
    pub commit: Option<String>,
    pub strategy: Strategy,
    pub state: DeploymentState,
    /// Why it failed or was canceled.
    pub reason: Option<String>,
    pub targets: Vec<DeploymentTargetView>,
    /// A running deployment its owner paused (`POST /deployments/{id}/pause`): no new
    /// launches until `/resume`; devices in flight finish. A flag, not a state: `state`
    /// stays `running`, so clients that do not know pausing still read it. False once ended.
    #[serde(default)]
    pub paused: bool,
    /// Where a phased deployment is (`strategy.phases`); absent for one-phase deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phasing: Option<PhasingView>,
}

/// Where the open phase of a phased deployment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseGateState {
    /// Its devices launch (or are in flight); the last phase stays here until the end.
    Running,
    /// Every device of it succeeded; the next phase starts at `soak_until` unless one of
    /// them crashes, restarts or rolls back first.
    Soaking,
    /// Every device of it succeeded and there is no soak time: promote by hand.
    AwaitingPromotion,
    /// Not promoted on its own (`held_reason` says why): promote by hand or cancel.
    Held,
    #[serde(other)]
    Unknown,
}

/// A phased deployment's progress ([`DeploymentView::phasing`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasingView {
    /// The open phase, from 1: its devices and every earlier phase's may launch.
    pub current: u32,
    /// How many phases there are.
    pub count: u32,
    /// Where each phase ends in `targets`: phase k holds targets `ends[k-2]..ends[k-1]`.
    pub ends: Vec<u32>,
    pub state: PhaseGateState,
    /// With `soaking`: when the next phase starts on its own (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_until: Option<u64>,
    /// With `held`: why the phase was not promoted on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    /// Promotions so far, oldest first.
    #[serde(default)]
    pub promotions: Vec<PromotionView>,
}

impl PhasingView {
    /// The open phase's targets, as positions from 1 in `targets`: (first, last).
    pub fn open_targets(&self) -> (u32, u32) {
        let k = self.current as usize;
        let from = match k.checked_sub(2) {
            Some(i) => self.ends.get(i).copied().unwrap_or(0),
            None => 0,
        };
        let to = k
            .checked_sub(1)
            .and_then(|i| self.ends.get(i).copied())
            .unwrap_or(from);
        (from + 1, to.max(from))
    }
}

/// One promotion of a phased deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionView {
    /// The phase that was promoted (from 1): the next one opened.
    pub phase: u32,
    pub at: u64,
    /// Who promoted it by hand; absent when its soak passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

// ---- pages ----

/// Response header of a paged list (`GET /api/v1/devices/{name}/history`,
/// `GET /api/v1/deployments`): pass its value as `cursor` to get the next (older) page. It is
/// absent on the last page. The body stays a bare JSON array, as before pages existed.
pub const NEXT_CURSOR_HEADER: &str = "next-cursor";
/// Records in a page when the request names no `limit`.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// Most records in one page (`limit`).
pub const MAX_PAGE_LIMIT: u32 = 1000;

// ---- history and events ----

/// One line of a device's history: a phase change with its deployment and deployer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time: u64,
    pub deployment_id: Option<String>,
    pub deployer: Option<String>,
    pub generation: Option<u64>,
    pub phase: Phase,
    pub commit: Option<String>,
    pub detail: Option<String>,
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// The commit's subject, where the device reported it (with `fetched`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_subject: Option<String>,
}

/// `POST /api/v1/devices/{name}/{restart|stop|start|rollback}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionAccepted {
    pub device: String,
    pub action: String,
    /// The generation published, for stop/start/rollback.
    pub generation: Option<u64>,
    pub deployment_id: Option<String>,
}

// ---- audit log ----

/// What an audit record is about: a state-changing request of a user, or a device event that
/// matters (`GET /api/v1/audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// `POST /users`.
    UserCreated,
    /// `POST /tokens`.
    TokenCreated,
    /// `DELETE /tokens/{id}`.
    TokenRevoked,
    /// `POST /devices`.
    DeviceAdded,
    /// `DELETE /devices/{name}`: the device and its certificate are revoked.
    DeviceRemoved,
    /// `POST /provision`.
    DeviceProvisioned,
    /// `PUT /devices/{name}/setup`.
    SetupChanged,
    /// `POST /devices/{name}/{restart|stop|start|rollback}` (the detail names which).
    DeviceAction,
    /// `POST /deployments`.
    DeploymentCreated,
    /// `POST /deployments/{id}/cancel`.
    DeploymentCanceled,
    /// `POST /deployments/{id}/pause`.
    DeploymentPaused,
    /// `POST /deployments/{id}/resume`.
    DeploymentResumed,
    /// `POST /deployments/{id}/promote`.
    DeploymentPromoted,
    /// `POST /deployments/{id}/retry`.
    DeploymentRetried,
    /// `POST /commits/{sha}/bad`.
    CommitMarkedBad,
    /// `DELETE /commits/{sha}/bad`.
    CommitUnmarked,
    /// A device reported `rolled_back`.
    DeviceRolledBack,
    /// A device reported `refused`.
    DeviceRefused,
    /// A dashboard sign-in (`POST /login` or `POST /api/v1/session`) with the user's token.
    SignedIn,
    /// `POST /windows`: a maintenance window added.
    WindowAdded,
    /// `DELETE /windows/{id}`: a maintenance window removed.
    WindowRemoved,
    /// `POST /webhooks`.
    WebhookAdded,
    /// `DELETE /webhooks/{id}`.
    WebhookRemoved,
    /// `POST /webhooks/{id}/test`.
    WebhookTested,
    #[serde(other)]
    Unknown,
}

/// One record of the audit log: who did what to which target, when, from where, and how it
/// ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub time: u64,
    /// A user name, `device NAME`, or `service`.
    pub actor: String,
    pub action: AuditAction,
    /// A device name, deployment id, commit, token id or user name.
    pub target: Option<String>,
    /// The address the request came from (none for device events).
    pub peer: Option<String>,
    /// `ok`, or the HTTP status code of the answer (`201`, `404`, …).
    pub result: String,
    pub detail: Option<String>,
}

// ---- maintenance windows ----

/// What a maintenance window applies to: `{"device": NAME}` (the caller's device of that
/// name) or `{"tag": "key=value"}` (the caller's devices with that tag).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    Device(String),
    Tag(String),
}

/// `POST /api/v1/windows` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWindow {
    pub applies_to: AppliesTo,
    /// `DAYS HH:MM-HH:MM` in UTC ([`crate::window`]), e.g. `mon-fri 22:00-04:00`.
    pub window: String,
    /// A label for people (at most 128 bytes, one line).
    #[serde(default)]
    pub name: Option<String>,
}

/// A maintenance window (`GET /api/v1/windows`, the `POST` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub id: String,
    pub name: Option<String>,
    pub applies_to: AppliesTo,
    /// The window's canonical text, e.g. `mon-fri 22:00-04:00` (UTC).
    pub window: String,
    /// When it was added (ms since the epoch).
    pub created_at: u64,
}

/// `GET /api/v1/devices/{name}/windows`: the windows that apply to a device, and whether it
/// may be deployed to now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceWindows {
    pub device: String,
    /// The windows applying to it (by its name or one of its tags); none: it may be deployed
    /// to at any time.
    pub windows: Vec<MaintenanceWindow>,
    /// A deployment may launch it now: no window applies, or one is open.
    pub open: bool,
    /// When closed: when the next window opens (ms since the epoch).
    pub opens_at: Option<u64>,
}

// ---- bad commits (the kill switch) ----

/// `POST /api/v1/commits/{sha}/bad` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkBad {
    #[serde(default)]
    pub reason: Option<String>,
    /// Also roll the caller's devices running the commit back to their previous release.
    #[serde(default)]
    pub rollback: bool,
}

/// A commit marked bad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCommit {
    pub commit: String,
    pub reason: Option<String>,
    pub marked_at: u64,
}

/// `GET /api/v1/commits/bad`: the caller's bad commits, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCommits {
    pub commits: Vec<BadCommit>,
}

/// A device that was not rolled back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotRolledBack {
    pub device: String,
    pub reason: String,
}

/// `POST /api/v1/commits/{sha}/bad` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkedBad {
    pub commit: BadCommit,
    /// Running deployments of the caller pinned to the commit, now canceled.
    pub stopped: Vec<String>,
    /// With `rollback`: devices sent back to their previous release.
    #[serde(default)]
    pub rolled_back: Vec<ActionAccepted>,
    /// With `rollback`: devices running the commit that could not be rolled back.
    #[serde(default)]
    pub not_rolled_back: Vec<NotRolledBack>,
}

/// `GET /api/v1/devices/{name}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLines {
    pub device: String,
    pub lines: Vec<String>,
}

/// One Server-Sent Event on `GET /api/v1/events` (the `data:` field, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A stored status event of a device.
    Status {
        device: String,
        entry: HistoryEntry,
    },
    Presence {
        device: String,
        online: bool,
        time: u64,
    },
    Health {
        device: String,
        health: HealthView,
    },
    Logs {
        device: String,
        lines: Vec<String>,
    },
    Deployment {
        deployment: DeploymentView,
    },
    #[serde(other)]
    Unknown,
}

// ---- webhooks ----

/// What a webhook delivery is about (its `Hammer-Event` header and the body's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    /// A deployment was created.
    #[serde(rename = "deployment.created")]
    DeploymentCreated,
    /// Its owner paused it.
    #[serde(rename = "deployment.paused")]
    DeploymentPaused,
    /// Its owner resumed it.
    #[serde(rename = "deployment.resumed")]
    DeploymentResumed,
    /// It moved on to its next phase.
    #[serde(rename = "deployment.phase_promoted")]
    DeploymentPhasePromoted,
    /// It ended with every target done.
    #[serde(rename = "deployment.succeeded")]
    DeploymentSucceeded,
    /// It ended with failed targets.
    #[serde(rename = "deployment.failed")]
    DeploymentFailed,
    /// It was stopped by its abort threshold (a stop because its commit was marked bad is
    /// `deployment.canceled`).
    #[serde(rename = "deployment.aborted")]
    DeploymentAborted,
    /// Its owner canceled it.
    #[serde(rename = "deployment.canceled")]
    DeploymentCanceled,
    /// A device connected.
    #[serde(rename = "device.online")]
    DeviceOnline,
    /// A device disconnected.
    #[serde(rename = "device.offline")]
    DeviceOffline,
    /// A device's new release failed its health gate; the previous one runs again.
    #[serde(rename = "device.rolled_back")]
    DeviceRolledBack,
    /// A device's app keeps crashing (several crashes in a few minutes).
    #[serde(rename = "device.crash_looping")]
    DeviceCrashLooping,
    /// A test delivery (`POST /api/v1/webhooks/{id}/test`).
    #[serde(rename = "ping")]
    Ping,
    #[serde(rename = "unknown", other)]
    Unknown,
}

/// `POST /api/v1/webhooks` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http://` or `https://`; at most 2,048 bytes.
    pub url: String,
    /// The events to deliver; empty (or absent): all of them.
    #[serde(default)]
    pub events: Vec<WebhookEvent>,
}

/// A webhook as the API shows it: never its secret, only the secret's first characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    /// The events delivered; empty: all of them.
    pub events: Vec<WebhookEvent>,
    /// The first characters of the signing secret, to tell secrets apart.
    pub secret_prefix: String,
    pub created_at: u64,
}

/// `POST /api/v1/webhooks` answer: the signing secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewWebhook {
    pub webhook: WebhookView,
    /// The HMAC-SHA256 key of `Hammer-Signature` (64 hex digits, used as given).
    pub secret: String,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its first or next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
    /// Removed from the queue unsent: the user had too many deliveries pending.
    Dropped,
    #[serde(other)]
    Unknown,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// When it started (ms since the epoch).
    pub time: u64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it failed without an answer (connection refused, timeout, address refused, …).
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One delivery of an event to a webhook (`GET /api/v1/webhooks/{id}/deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// Also the `Hammer-Delivery` header and the body's `id`: receivers dedupe on it.
    pub id: String,
    pub webhook_id: String,
    pub event: WebhookEvent,
    pub created_at: u64,
    pub state: DeliveryState,
    /// The latest attempts, oldest first (at most 10 kept).
    pub attempts: Vec<DeliveryAttempt>,
    /// Attempts made in all.
    pub attempt_count: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<u64>,
}

/// The body of a webhook delivery (`POST` to the webhook's URL, JSON). `T` is what `data`
/// holds: a receiver reads it as any JSON value first and then by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookPayload<T> {
    /// The delivery's id (`Hammer-Delivery`).
    pub id: String,
    #[serde(rename = "type")]
    pub kind: WebhookEvent,
    /// When the event happened (ms since the epoch).
    pub created_at: u64,
    /// A [`DeploymentView`] for `deployment.*`, a [`DeviceEventData`] for `device.*`, `{}` for
    /// `ping`.
    pub data: T,
}

/// `data` of a `device.*` delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEventData {
    /// The device's name.
    pub device: String,
    pub deployment_id: Option<String>,
    pub commit: Option<String>,
    pub detail: Option<String>,
}
