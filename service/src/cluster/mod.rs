//! Replicas: several `hammer serve` processes on one PostgreSQL database and one external
//! broker (`--replica NAME --database … --broker-url …`), behind a load balancer.
//!
//! # What each replica does, and what only one does
//!
//! - **Every replica** serves the whole HTTP API from the shared store, keeps its own MQTT
//!   session (its own certificate, CN `hammer-service-NAME`), and rebuilds what the broker
//!   tells everyone: presence, health and logs arrive at every replica (plain
//!   subscriptions), so each one's live view and event streams have them.
//! - **Status events arrive once**: replicas subscribe to them through the shared
//!   subscription `$share/hammer/hammer/v1/dev/+/status`, so the broker gives each event to
//!   one replica. That replica stores it exactly once (the store deduplicates by device,
//!   epoch and sequence number), acks it, and relays it ([`wire::Body::Stored`]) to the
//!   other replicas for their event streams and for the rollout engine.
//! - **One replica drives deployments**: the holder of the rollout lease ([`lease`], a row
//!   in the database with an expiry and a fencing token; its holder is this process's
//!   incarnation, `NAME@RANDOM`, so a replica started again under the same name waits for
//!   its previous run's lease like anyone else) runs the rollout engine. Requests
//!   that need the engine (create, cancel, pause, resume, mark a commit bad) are sent by the
//!   replica that got them to the holder and answered back ([`wire::Body::Request`]); the
//!   holder relays deployment progress to the others' event streams, coalesced to the
//!   newest event per deployment every [`PROGRESS_EVERY_MS`].
//!
//! # Failures
//!
//! - *A replica dies*: its MQTT session ends; the broker gives status events to the others
//!   (what it received but had not stored is resent by the devices, which resend until
//!   acked). If it held the rollout lease, another replica takes it within the lease's TTL
//!   plus a tick (about 6 s), reloads running deployments from the store and replays stored
//!   status events, as after a restart. A desired state is published only after the
//!   deployment record carrying it is written under the fence, so nothing is launched
//!   twice.
//! - *A replica stalls* (paused, cut off from the database): it stops driving before its
//!   lease can lapse; a write it still attempts carries an old fencing token and is refused.
//! - *The database restarts*: requests fail with 500 while it is away; the lease holder
//!   keeps driving until it could not renew for the TTL minus the margin, then steps down;
//!   when the database is back, a replica takes the lease again and resumes from the store.
//! - *The broker restarts*: every replica reconnects, subscribes again and republishes
//!   desired states and acks; devices resend what was not acked.
//! - *A relay is lost*: a lost status relay is made up for by the engine reading stored
//!   events before it times a target out; a lost engine request is retried (for up to
//!   [`REQUEST_DEADLINE`]) and a repeated create returns the first one's deployment.
//!
//! Module map: [`wire`] (messages and frames), [`lease`] (the lease as a pure state
//! machine), [`outbox`] (sending, coalescing, waiting for replies), [`leader`] (the task:
//! lease, engine, routing of engine requests, relays received).

pub mod leader;
pub mod lease;
pub mod outbox;
pub mod wire;

use std::time::Duration;

/// The database lease whose holder drives deployments.
pub const ROLLOUT_LEASE: &str = "rollout";
/// How often the holder relays deployment progress (the newest event of each deployment).
pub const PROGRESS_EVERY_MS: u64 = 250;
/// One attempt of an engine request to another replica.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an engine request keeps being retried (while the lease changes hands) before
/// the caller gets 503.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// Frames from other replicas waiting to be handled; beyond it they are dropped (counted)
/// and the senders' retries or the store make up for them.
pub const INBOUND_QUEUE: usize = 4096;
