//! The service's persistent state behind a small trait, so that a shared database can replace
//! the embedded sled store ([`sled::SledStore`], the only module that touches sled) when
//! several replicas run side by side.
//!
//! Every record type is plain serde data; every state is a typed enum from
//! `hammer_protocol::api`. Callers [`Store::flush`] before acknowledging anything that
//! changed state (an HTTP 2xx or an MQTT ack).
//!
//! # Bounds ([`Retention`])
//!
//! What a device sends is kept within limits, enforced as it is stored, so that one device
//! (or one user's fleet) cannot fill the disk or make a list request expensive:
//!
//! - Status events (history): at most [`Retention::max_events_per_device`] (20,000) and
//!   [`Retention::max_bytes_per_device`] (16 MiB) per device, none older than
//!   [`Retention::max_age`] (730 days). When an event is stored, the same device's oldest
//!   events beyond a bound are removed (at most [`PRUNE_BATCH`] per insert, so the cost of one
//!   insert stays constant and a backlog is worked off over the following inserts). A normal
//!   device reports a handful of events per deployment (~300 bytes each): 20,000 events are
//!   years of daily deployments, and 16 MiB holds them with room for rollbacks' log tails.
//! - Each stored event is capped by [`cap_status`]: `detail` at [`MAX_DETAIL`] (2 KiB),
//!   `log_tail` at its last [`MAX_LOG_TAIL_LINES`] (50) lines of at most [`MAX_LOG_TAIL_LINE`]
//!   (512) bytes; a cut string ends with [`CUT_MARKER`].
//! - Deployments: a finished deployment older than [`Retention::max_age`] (by its finish
//!   time) is removed when its owner creates a new one (the owner's oldest few are checked).
//!   They are indexed by owner and creation time, so a user's list reads only their records.
//! - Audit log ([`Store::append_audit`]): at most [`Retention::max_audit_per_user`] (10,000)
//!   records per user, none older than [`Retention::max_age`]; each append removes up to
//!   [`PRUNE_BATCH`] of the same user's oldest records beyond a bound. Records are indexed by
//!   user and order of appending, so a user's page reads only their records.
//! - Maintenance windows ([`Store::insert_window`]): at most [`MAX_WINDOWS_PER_USER`] (100)
//!   per user; the insert past it is refused, and nothing is pruned.
//! - Lists are pages: at most [`hammer_protocol::api::MAX_PAGE_LIMIT`] records per request.
//! - Web sessions: within the caps [`Store::insert_session`] is given (per user and in all);
//!   each insert also removes up to [`PRUNE_BATCH`] expired ones.
//! - Failure counts ([`Store::note_failure`]): one row per key that failed within its window;
//!   each note removes up to [`PRUNE_BATCH`] rows of ended windows.
//!
//! # Running as a cluster
//!
//! Everything replicas must agree on is here, not in a process's memory: leases with fencing
//! tokens ([`Lease`], [`Fence`]: which replica drives deployments), web sessions, failure
//! counts and the device counts quotas check. The sled back end serves one process; the
//! PostgreSQL one keeps each of these atomic across processes sharing the database.

pub mod pg;
pub mod sled;

use hammer_protocol::api::{
    AppliesTo, AuditAction, DeliveryAttempt, DeliveryState, DeploymentState, DeviceState,
    SetupView, Strategy, TargetState, WebhookEvent,
};
use hammer_protocol::{DesiredState, Phase, RunState, StatusEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;
use std::time::Duration;

/// Most old records removed by one insert (status events or deployments).
pub const PRUNE_BATCH: usize = 64;
/// Longest stored `detail` of a status event, in bytes.
pub const MAX_DETAIL: usize = 2048;
/// Most `log_tail` lines stored with a status event (the last ones are kept).
pub const MAX_LOG_TAIL_LINES: usize = 50;
/// Longest stored `log_tail` line, in bytes.
pub const MAX_LOG_TAIL_LINE: usize = 512;
/// Appended to a string that was cut.
pub const CUT_MARKER: &str = " [cut]";

/// How much history the store keeps. `hammer serve` sets it from its flags; see the module
/// documentation for the reasons behind the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most status events kept per device; the oldest go first.
    pub max_events_per_device: u64,
    /// Most bytes of status events (as stored) kept per device; the oldest go first.
    pub max_bytes_per_device: u64,
    /// Status events, finished deployments and audit records older than this are removed.
    pub max_age: Duration,
    /// Most audit records kept per user; the oldest go first.
    pub max_audit_per_user: u64,
}

impl Retention {
    /// The built-in defaults: 20,000 events, 16 MiB per device, 730 days, 10,000 audit
    /// records per user.
    pub const BUILT_IN: Retention = Retention {
        max_events_per_device: 20_000,
        max_bytes_per_device: 16 * 1024 * 1024,
        max_age: Duration::from_secs(730 * 24 * 3600),
        max_audit_per_user: 10_000,
    };

    /// Replaces what [`Retention::default`] returns in this process (embedding and tests: a
    /// test binary shrinks the bounds before it starts a service). `hammer serve` passes its
    /// flags explicitly instead.
    pub fn set_process_default(r: Retention) {
        *PROCESS_DEFAULT.write().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// `max_age` in milliseconds.
    pub fn max_age_ms(&self) -> u64 {
        u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX)
    }
}

static PROCESS_DEFAULT: RwLock<Retention> = RwLock::new(Retention::BUILT_IN);

impl Default for Retention {
    fn default() -> Self {
        *PROCESS_DEFAULT.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// `s` cut to at most `max` bytes (on a character boundary) with [`CUT_MARKER`] appended
/// when it was longer.
pub fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub(CUT_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{CUT_MARKER}", &s[..end]))
}

/// Applies the per-event caps: `detail` to [`MAX_DETAIL`] bytes, `log_tail` to its last
/// [`MAX_LOG_TAIL_LINES`] lines of at most [`MAX_LOG_TAIL_LINE`] bytes.
pub fn cap_status(e: &mut StatusEvent) {
    // The manager sends it cut and clean; another client may not.
    e.commit_subject = e
        .commit_subject
        .as_deref()
        .and_then(hammer_protocol::commit_subject);
    if let Some(d) = &mut e.detail {
        if d.len() > MAX_DETAIL {
            *d = cut(d, MAX_DETAIL).into_owned();
        }
    }
    if e.log_tail.len() > MAX_LOG_TAIL_LINES {
        e.log_tail.drain(..e.log_tail.len() - MAX_LOG_TAIL_LINES);
    }
    for l in &mut e.log_tail {
        if l.len() > MAX_LOG_TAIL_LINE {
            *l = cut(l, MAX_LOG_TAIL_LINE).into_owned();
        }
    }
}

/// One page of a list, and where the next (older) page starts when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// Position in a device's history: the order in which events were stored (increasing).
pub type HistoryCursor = u64;

/// Position in an owner's deployments: (created_at, id) of the last one returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentCursor {
    pub created_at: u64,
    pub id: String,
}

/// Position in a user's audit log: the order in which records were appended (increasing).
pub type AuditCursor = u64;

/// Longest stored `detail` (and `target`) of an audit record, in bytes.
pub const MAX_AUDIT_TEXT: usize = 512;

/// One record of the audit log ([`Store::append_audit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (ms since the epoch).
    pub time: u64,
    /// The user whose log it is in: whose devices or deployments it concerns (for a user's
    /// own requests, that user).
    pub owner: String,
    /// A user name, `device NAME`, or `service`.
    pub actor: String,
    pub action: AuditAction,
    pub target: Option<String>,
    /// The request's source address (none for device events).
    pub peer: Option<String>,
    /// `ok`, or the HTTP status code of the answer.
    pub result: String,
    pub detail: Option<String>,
}

impl AuditRecord {
    /// `target` and `detail` cut to [`MAX_AUDIT_TEXT`] bytes.
    pub fn capped(&self) -> AuditRecord {
        let c = |v: &Option<String>| v.as_deref().map(|t| cut(t, MAX_AUDIT_TEXT).into_owned());
        AuditRecord {
            target: c(&self.target),
            detail: c(&self.detail),
            ..self.clone()
        }
    }
}

/// Most maintenance windows one user keeps ([`Store::insert_window`]): a user with more than a
/// few dozen windows has one per device where a tag would do, and the rollout reads all of a
/// user's windows for every launch it gates.
pub const MAX_WINDOWS_PER_USER: usize = 100;

/// A maintenance window of a user (`crate::rollout::window` decides with it): the devices it
/// applies to may be launched by a deployment only while it is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub id: String,
    /// The user whose devices it applies to.
    pub owner: String,
    /// A label for people.
    pub name: Option<String>,
    /// One device (by name, so a device removed and added again keeps it) or a tag.
    pub applies_to: AppliesTo,
    pub window: hammer_protocol::Window,
    /// When it was added (ms since the epoch).
    pub created_at: u64,
}

/// A user's webhook ([`Store::insert_webhook`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: String,
    /// The user it belongs to (only their events reach it).
    pub owner: String,
    pub url: String,
    /// The events it gets; empty: all.
    pub events: Vec<WebhookEvent>,
    /// The HMAC-SHA256 key (hex): needed in clear to sign, never shown after creation, never
    /// logged.
    pub secret: String,
    pub created_at: u64,
}

/// One event to deliver to one webhook, and what became of it ([`Store::insert_delivery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook_id: String,
    /// The webhook's owner.
    pub owner: String,
    pub event: WebhookEvent,
    /// The exact JSON body sent (signed as is).
    pub body: String,
    pub created_at: u64,
    pub state: DeliveryState,
    /// The latest attempts, oldest first (at most [`MAX_ATTEMPTS_LOGGED`]).
    pub attempts: Vec<DeliveryAttempt>,
    /// Attempts made in all.
    pub attempt_count: u32,
    /// When the next attempt is due (ms since the epoch; pending only).
    pub next_at: u64,
    /// A worker holds it until then (ms since the epoch; 0: nobody). Set by
    /// [`Store::claim_deliveries`], cleared by [`Store::finish_delivery`].
    #[serde(default)]
    pub claimed_until: u64,
    /// The order the store keeps it in (set by the store; increasing per webhook).
    #[serde(default)]
    pub seq: u64,
}

/// Most attempts a delivery record keeps in its log (the latest).
pub const MAX_ATTEMPTS_LOGGED: usize = 10;

/// The bounds of a webhook's delivery queue and log ([`Store::insert_delivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryBounds {
    /// Most pending deliveries of one user (all their webhooks): at the bound the oldest
    /// pending one is dropped (state `dropped`).
    pub max_pending_per_owner: u64,
    /// Most finished deliveries kept per webhook (the delivery log): the oldest go first.
    pub max_finished_per_webhook: u64,
}

/// A failed store call. Never a "not found".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage back end failed (disk, corruption, the database unreachable or refusing).
    #[error("storage error: {0}")]
    Backend(String),
    /// A write under a lease ([`Fence`]) that its writer no longer holds: another holder took
    /// the lease since (a higher token), so the write was refused and nothing was stored.
    #[error("lease {lease} was taken over (token {current} > {token}, now held by {holder:?}); this replica no longer holds it and must stop what it drives")]
    Fenced {
        /// The lease's name (e.g. `rollout`).
        lease: String,
        /// The token the refused write carried.
        token: u64,
        /// The lease's token as stored (0 when it was never taken).
        current: u64,
        /// Who holds the lease as stored (empty when it was never taken).
        holder: String,
    },
}

impl StoreError {
    /// A back-end failure described by `e`.
    pub fn backend(e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(e.to_string())
    }

    /// What went wrong, without the "storage error: " prefix of a back-end failure.
    pub fn message(&self) -> String {
        match self {
            StoreError::Backend(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

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
    /// Commits this user marked bad (the kill switch), oldest first. Older records have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_commits: Vec<BadCommitRecord>,
}

/// A commit a user marked bad: their deployments may not name or pin it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadCommitRecord {
    /// A full commit id, lowercase.
    pub commit: String,
    pub reason: Option<String>,
    pub marked_at: u64,
}

/// An API token, stored by the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub hash: String,
    pub created_at: u64,
    /// When it was revoked: a revoked token signs nobody in and is not listed, but its record
    /// stays for [`REVOKED_TOKEN_KEPT_MS`] so that the same `DELETE` again (a load balancer
    /// retrying it on another replica after the first one died answering) is answered "done"
    /// instead of "no such token".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// How long a revoked token's record stays (one day); older ones are pruned by the owner's
/// next revocation.
pub const REVOKED_TOKEN_KEPT_MS: u64 = 24 * 60 * 60 * 1000;

/// What revoking a token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// It was valid and is revoked now.
    Now,
    /// It had already been revoked (within [`REVOKED_TOKEN_KEPT_MS`]).
    Earlier,
    /// The user has no such token.
    NoSuch,
}

impl TokenRecord {
    /// Whether the token still signs its user in.
    pub fn valid(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// Whether a revoked token's record may go, at `now` (ms).
    pub fn prunable(&self, now: u64) -> bool {
        self.revoked_at
            .is_some_and(|at| now.saturating_sub(at) > REVOKED_TOKEN_KEPT_MS)
    }
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
    /// Subjects of the device's recent commits as it reported them (at most
    /// [`MAX_COMMIT_SUBJECTS`]: the current commit, the rollback targets and the latest one
    /// fetched).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub commit_subjects: BTreeMap<String, String>,
    /// The highest generation the device reported a status for (absent in records stored
    /// before it was kept: unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_generation: Option<u64>,
}

/// Most commit subjects a device record keeps.
pub const MAX_COMMIT_SUBJECTS: usize = 8;

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
    /// Paused by its owner: a running deployment launches nothing new until resumed
    /// (`rollout::core`). Absent in records written before pausing existed.
    #[serde(default)]
    pub paused: bool,
    /// A phased deployment's progress (`strategy.phases`; `rollout::phasing`). Absent for
    /// one-phase deployments and in records written before phases existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phasing: Option<PhasingRecord>,
}

/// Where a phased deployment is: which phase is open and what it waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasingRecord {
    /// Where each phase ends in `targets` (cumulative; the last is the number of targets).
    pub ends: Vec<usize>,
    /// The open phase (from 0): its targets and every earlier phase's may launch.
    pub current: usize,
    pub gate: PhaseGate,
    /// The first sign of trouble in the open phase: a device of it (or of an earlier phase)
    /// that crashed, restarted or rolled back after it succeeded.
    pub unhealthy: Option<String>,
    /// Promotions so far, oldest first (at most one per phase).
    pub promotions: Vec<Promotion>,
}

/// What the open phase of a phased deployment waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PhaseGate {
    /// Its targets launch or are in flight.
    Running,
    /// Every target of it succeeded; promoted on its own at `until` unless it turns unhealthy.
    Soaking { until: u64 },
    /// Every target of it succeeded and the deployment has no soak time.
    AwaitingPromotion,
    /// Not promoted on its own, for this reason.
    Held { reason: String },
}

/// One promotion of a phased deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The phase promoted (from 0).
    pub phase: usize,
    pub at: u64,
    /// The user name of who promoted it by hand; `None`: its soak passed.
    pub by: Option<String>,
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

/// A named lease (e.g. "rollout": the replica that drives running deployments).
///
/// Leases are how replicas sharing one database agree on who does a job only one of them may
/// do: [`Store::acquire_lease`] grants it to one holder until `expires_at`, the holder renews
/// it well before then, and every write it makes under the lease carries a [`Fence`] so that a
/// holder that lost it (paused, partitioned, slow) cannot overwrite its successor's work.
///
/// Expiry compares the times the callers pass (`now_ms`), never the database's clock: the
/// replicas' clocks must agree (NTP) to well within the lease's TTL, or a replica whose clock
/// runs ahead takes a lease that is still valid for its holder. Fencing keeps even that case
/// safe for the fenced writes: the previous holder's writes are refused from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease's name.
    pub name: String,
    /// Who holds (or last held) it: a replica's id.
    pub holder: String,
    /// Increases by one each time another holder takes the lease (1 for the first); a
    /// renewal keeps it.
    pub token: u64,
    /// Valid while `now_ms < expires_at` (ms since the epoch); 0 once released.
    pub expires_at: u64,
}

/// Who writes under a lease: a write carrying it is refused once another holder took the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease's name.
    pub name: String,
    /// The holder the lease was granted to.
    pub holder: String,
    /// The token it was granted with ([`Lease::token`]).
    pub token: u64,
}

impl Lease {
    /// The fence of writes made under this lease.
    pub fn fence(&self) -> Fence {
        Fence {
            name: self.name.clone(),
            holder: self.holder.clone(),
            token: self.token,
        }
    }

    /// Whether `fence` still matches this lease as stored (same holder and token).
    pub fn admits(&self, fence: &Fence) -> bool {
        self.name == fence.name && self.holder == fence.holder && self.token == fence.token
    }

    /// The refusal of a write under `fence` when `stored` is the lease as stored.
    pub fn fenced(fence: &Fence, stored: Option<&Lease>) -> StoreError {
        StoreError::Fenced {
            lease: fence.name.clone(),
            token: fence.token,
            current: stored.map_or(0, |l| l.token),
            holder: stored.map(|l| l.holder.clone()).unwrap_or_default(),
        }
    }

    /// What [`Store::acquire_lease`] grants when `old` is stored: `None` while another
    /// holder's lease is valid (the rule every back end applies).
    pub fn grant(
        old: Option<&Lease>,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<Lease> {
        let token = match old {
            None => 1,
            Some(l) if l.holder == holder => l.token,
            Some(l) if l.expires_at <= now_ms => l.token.saturating_add(1),
            Some(_) => return None,
        };
        Some(Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token,
            expires_at: now_ms.saturating_add(ttl_ms),
        })
    }
}

/// A browser session of the web UI ([`crate::sessions`]), stored by the SHA-256 of its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 (hex) of the session id the cookie carries.
    pub id_hash: String,
    /// The signed-in user.
    pub user_id: String,
    /// Hash of the API token the session was made from: revoking the token ends it.
    pub token_hash: String,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// Live while `now < expires_at` (ms since the epoch).
    pub expires_at: u64,
}

/// The caps [`Store::insert_session`] keeps the sessions within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    /// Most sessions (live or expired but not yet removed) one user has.
    pub per_user: usize,
    /// Most sessions stored over all users.
    pub total: usize,
}

/// What [`Store::insert_session`] removed to make room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionsEnded {
    /// Expired sessions removed (at most [`PRUNE_BATCH`] per insert).
    pub expired: usize,
    /// The same user's oldest sessions ended by the per-user cap.
    pub over_user_cap: usize,
    /// Sessions ended because the whole table was full.
    pub table_full: usize,
}

/// The service's persistent state.
pub trait Store: Send + Sync + 'static {
    /// The bounds this store keeps history within (a wrapper delegates it).
    fn retention(&self) -> Retention {
        Retention::default()
    }

    /// Makes every change so far durable.
    fn flush(&self) -> BoxFuture<'_, Result<()>>;

    /// Adds a user; `false` if the name is taken.
    fn insert_user(&self, user: &UserRecord) -> Result<bool>;
    fn user(&self, id: &str) -> Result<Option<UserRecord>>;
    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>>;
    fn users(&self) -> Result<Vec<UserRecord>>;
    /// Atomically applies `f` to a user (it may run more than once on contention).
    fn update_user(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut UserRecord) + Send),
    ) -> Result<Option<UserRecord>>;

    fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    /// The valid (not revoked) token with this hash.
    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    /// The user's valid (not revoked) tokens.
    fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>>;
    /// Revokes a token of `user_id` at `now` (ms), and prunes the user's revoked tokens that
    /// [`TokenRecord::prunable`] lets go.
    fn revoke_token(&self, user_id: &str, token_id: &str, now: u64) -> Result<Revoked>;

    /// Adds a device; `false` if its owner already has a device of that name.
    fn insert_device(&self, device: &DeviceRecord) -> Result<bool>;
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>>;
    fn device_by_name(&self, owner: &str, name: &str) -> Result<Option<DeviceRecord>>;
    fn devices_of(&self, owner: &str) -> Result<Vec<DeviceRecord>>;
    /// How many devices `owner` has, as stored now (every process's inserts counted),
    /// without reading the records.
    fn count_devices_of(&self, owner: &str) -> Result<u64>;
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
    /// Writes a deployment only while `fence` still matches the stored lease (same holder
    /// and token): [`StoreError::Fenced`] otherwise, and nothing is stored. The check and the
    /// write are atomic with respect to [`Store::acquire_lease`] (in PostgreSQL one
    /// transaction holding a row lock on the lease), so once another holder took the lease
    /// no write under the old fence lands.
    fn put_deployment_fenced(&self, d: &DeploymentRecord, fence: &Fence) -> Result<()>;
    fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>>;
    /// Every deployment of every owner (the rollout engine's start). Request handlers use
    /// [`Store::deployments_of`].
    fn deployments(&self) -> Result<Vec<DeploymentRecord>>;
    /// One page of `owner`'s deployments, newest first, starting after `after`; reads only
    /// that owner's records. (The default reads every record: a backend overrides it, and a
    /// wrapper delegates it.)
    fn deployments_of(
        &self,
        owner: &str,
        after: Option<&DeploymentCursor>,
        limit: usize,
    ) -> Result<Page<DeploymentRecord, DeploymentCursor>> {
        let mut v: Vec<DeploymentRecord> = self
            .deployments()?
            .into_iter()
            .filter(|d| d.owner == owner)
            .filter(|d| {
                after.is_none_or(|c| (d.created_at, d.id.as_str()) < (c.created_at, c.id.as_str()))
            })
            .collect();
        v.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let more = v.len() > limit;
        v.truncate(limit);
        let next = more.then(|| v.last()).flatten().map(|d| DeploymentCursor {
            created_at: d.created_at,
            id: d.id.clone(),
        });
        Ok(Page { items: v, next })
    }

    /// Takes or renews lease `name` for `holder` until `now_ms + ttl_ms`. Granted when nobody
    /// holds it, when it expired (`expires_at <= now_ms`), or when `holder` already holds it
    /// (a renewal keeps the token); a new holder gets the previous token + 1 (1 for the
    /// first). `None`: another holder's lease is still valid. Atomic across processes sharing
    /// the database. Times are the caller's clock (see [`Lease`]: replicas need synchronized
    /// clocks, well within the TTL).
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>>;
    /// Ends `holder`'s lease at once (expires_at = 0) if it still holds it with `token`;
    /// otherwise nothing.
    fn release_lease(&self, name: &str, holder: &str, token: u64) -> Result<()>;
    /// The lease as stored (expired or not), if it was ever taken.
    fn lease(&self, name: &str) -> Result<Option<Lease>>;

    /// Stores a new web session within `caps`, atomically (across processes sharing the
    /// database, inserts run one at a time). First up to [`PRUNE_BATCH`] expired sessions are
    /// removed (oldest expiry first: bounded work per insert, and a backlog is worked off by
    /// the following ones); then, while `s.user_id` has `caps.per_user` sessions or more, its
    /// oldest ends; then, while the table holds `caps.total` or more, the oldest session of
    /// the user holding the most ends (the new session's own user when they hold as many as
    /// anyone; among others, the smallest user id): nobody loses a session to someone holding
    /// more. Oldest is the order of insertion. At most [`PRUNE_BATCH`] sessions end for the
    /// table cap per insert (more only after a cap was lowered).
    fn insert_session(
        &self,
        s: &SessionRecord,
        now_ms: u64,
        caps: SessionCaps,
    ) -> Result<SessionsEnded>;
    /// The live session (`now_ms < expires_at`) whose id hashes to `id_hash`.
    fn session(&self, id_hash: &str, now_ms: u64) -> Result<Option<SessionRecord>>;
    /// Ends a session; `false` if there was none.
    fn delete_session(&self, id_hash: &str) -> Result<bool>;
    /// How many live sessions (`now_ms < expires_at`) `user_id` has.
    fn count_sessions_of(&self, user_id: &str, now_ms: u64) -> Result<u64>;

    /// Counts one failure (e.g. a failed enrollment from one address) under `key`; returns
    /// the failures counted in its current window, this one included. A key's window starts
    /// at its first failure and lasts `window_ms`: a failure at or after its end starts a new
    /// window counting 1. Atomic across processes sharing the database. Rows of ended windows
    /// are removed as failures are noted (at most [`PRUNE_BATCH`] per call, oldest end first),
    /// so the rows stored are about the keys that failed within the last window or so.
    fn note_failure(&self, key: &str, now_ms: u64, window_ms: u64) -> Result<u32>;
    /// The failures counted under `key` in its window that holds `now_ms` (0 when it has
    /// none, or its window ended). `window_ms` must be the one passed to
    /// [`Store::note_failure`].
    fn failures(&self, key: &str, now_ms: u64, window_ms: u64) -> Result<u32>;

    /// Appends a record to `r.owner`'s audit log (its `target` and `detail` capped by
    /// [`AuditRecord::capped`]) and removes that user's oldest records beyond the
    /// [`Retention`] bounds (count and age, at most [`PRUNE_BATCH`] per append; the newest
    /// record always stays).
    fn append_audit(&self, r: &AuditRecord) -> Result<()>;
    /// One page of `owner`'s audit log, newest first: the newest `limit` records appended
    /// before `before` (all when `None`); `next` continues with older ones. Reads only that
    /// user's records.
    fn audit_page(
        &self,
        owner: &str,
        before: Option<AuditCursor>,
        limit: usize,
    ) -> Result<Page<AuditRecord, AuditCursor>>;

    /// Adds a maintenance window unless its owner already has `max` of them (`false` then,
    /// and nothing is stored). The count and the insert are atomic (across processes sharing
    /// the database, one user's inserts run one at a time).
    fn insert_window(&self, w: &WindowRecord, max: usize) -> Result<bool>;
    /// `owner`'s maintenance windows, oldest first (by `created_at`, then id). Reads only that
    /// user's records.
    fn windows_of(&self, owner: &str) -> Result<Vec<WindowRecord>>;
    /// Removes `owner`'s window `id`; `false` if that user has no such window.
    fn delete_window(&self, owner: &str, id: &str) -> Result<bool>;
    /// Adds a webhook unless its owner has `max_per_owner` already (`false` then). Atomic
    /// per owner across processes sharing the database.
    fn insert_webhook(&self, w: &WebhookRecord, max_per_owner: u64) -> Result<bool>;
    /// `owner`'s webhooks, oldest first.
    fn webhooks_of(&self, owner: &str) -> Result<Vec<WebhookRecord>>;
    fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>>;
    /// Removes `owner`'s webhook `id` with all its deliveries; `false` if it has none such.
    fn delete_webhook(&self, owner: &str, id: &str) -> Result<bool>;
    /// Queues a pending delivery (its `seq` is set by the store). When `d.owner` already has
    /// `bounds.max_pending_per_owner` pending deliveries, their oldest are marked `dropped`
    /// first; answers how many. Finished deliveries of the webhook beyond
    /// `bounds.max_finished_per_webhook` are removed (at most [`PRUNE_BATCH`] per call).
    fn insert_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<u64>;
    /// Claims up to `limit` due deliveries until `until`: of each webhook only its oldest
    /// pending delivery (one at a time per webhook, in order), when its `next_at <= now` and
    /// nobody holds it (`claimed_until <= now`). Earliest due first. Across processes sharing
    /// the database a delivery is claimed by one caller at a time.
    fn claim_deliveries(&self, now: u64, until: u64, limit: usize) -> Result<Vec<DeliveryRecord>>;
    /// Writes a claimed delivery's outcome (state, attempts, `next_at`) and releases it; a
    /// delivery no longer pending as stored (dropped meanwhile) or removed is left alone.
    fn finish_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<()>;
    /// The newest `limit` deliveries of webhook `id`, newest first.
    fn deliveries_of(&self, webhook_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>>;
    /// Pending deliveries of every user.
    fn count_pending_deliveries(&self) -> Result<u64>;

    /// Stores a status event once per (device, epoch, seq), capped by [`cap_status`], and
    /// removes the device's oldest events beyond the [`Retention`] bounds.
    fn insert_status(&self, s: &StoredStatus) -> Result<Inserted>;
    /// The device's current epoch and its highest contiguous stored seq.
    fn ack_of(&self, device_id: &str) -> Result<Option<(u64, u64)>>;
    /// Every stored status event of a device (at most the retention bound), in (epoch, seq)
    /// order.
    fn statuses_of(&self, device_id: &str) -> Result<Vec<StoredStatus>>;
    /// One page of a device's history: the newest `limit` events stored before `before`
    /// (all when `None`), oldest first; `next` continues with older ones.
    /// (The default pages over [`Store::statuses_of`] by position: a backend overrides it, and
    /// a wrapper delegates it.)
    fn history_page(
        &self,
        device_id: &str,
        before: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<Page<StoredStatus, HistoryCursor>> {
        let all = self.statuses_of(device_id)?;
        let end = before.map_or(all.len(), |b| (b as usize).min(all.len()));
        let start = end.saturating_sub(limit);
        Ok(Page {
            items: all[start..end].to_vec(),
            next: (start > 0).then_some(start as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::PROTOCOL_VERSION;

    #[test]
    fn cut_keeps_short_strings_and_marks_long_ones_within_the_bound() {
        assert_eq!(cut("abc", 10), "abc");
        let long = "é".repeat(100);
        let c = cut(&long, 21);
        assert!(c.len() <= 21, "{}", c.len());
        assert!(c.ends_with(CUT_MARKER));
        assert!(c.starts_with("éé"));
    }

    #[test]
    fn cap_status_cuts_detail_and_keeps_the_last_log_tail_lines() {
        let mut e = StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: 1,
            seq: 1,
            generation: None,
            deployment_id: None,
            phase: Phase::RolledBack,
            commit: None,
            time: 1,
            detail: Some("x".repeat(10_000)),
            log_tail: (0..80)
                .map(|i| format!("{i}:{}", "y".repeat(1000)))
                .collect(),
            commit_subject: None,
        };
        cap_status(&mut e);
        let d = e.detail.unwrap();
        assert!(d.len() <= MAX_DETAIL && d.ends_with(CUT_MARKER));
        assert_eq!(e.log_tail.len(), MAX_LOG_TAIL_LINES);
        assert!(e.log_tail[0].starts_with("30:"), "the last lines are kept");
        assert!(e
            .log_tail
            .iter()
            .all(|l| l.len() <= MAX_LOG_TAIL_LINE && l.ends_with(CUT_MARKER)));
    }
}
