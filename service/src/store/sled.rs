//! The sled implementation of [`Store`]: the only module that touches sled.
//!
//! Trees (records as JSON):
//! - `users` id → user, `user_names` name → id
//! - `tokens` hash → token, `token_index` user\0token_id → hash
//! - `devices` id → device, `device_names` owner\0name → id
//! - `enrollments` hash → enrollment
//! - `deployments` id → deployment
//! - `status` device\0epoch\0seq (big endian) → stored status
//! - `contig` device\0epoch → highest contiguous seq; `epochs` device → current epoch
//! - `status_order` device\0order (big endian, from `generate_id`, so increasing in the
//!   order events were stored) → epoch, seq, stored size, received_at (4 × u64 BE): the
//!   history's page order and the oldest-first pruning order
//! - `status_usage` device → count, bytes (2 × u64 BE) of its stored events
//! - `deployment_owner` owner\0created_at (BE) id → id: a user's deployments, by age
//! - `meta` name → marker: indexes built for records stored before they existed
//! - `leases` name → lease ([`Lease`]); changed, and checked by fenced writes, under one
//!   in-process lock (a sled store is opened by one process)
//! - `sessions` id_hash → web session and its insertion order; `session_user`
//!   user\0order (BE) → id_hash; `session_expiry` expires_at (BE) id_hash → (): changed under
//!   one in-process lock that also holds the number of sessions stored
//! - `audit` owner\0order (BE, from `generate_id`) → audit record: a user's log in the order
//!   of appending; `audit_count` owner → how many it holds (u64 BE)
//! - `windows` owner\0id → maintenance window: a user's windows; inserted under one
//!   in-process lock (the per-user bound)
//! - `failures` key → window start, window end, count (3 × u64 BE); `failure_ends` window
//!   end (BE) key → (): changed under one in-process lock
//! - `webhooks` id → webhook; `webhook_owner` owner\0id → (); `deliveries` webhook\0seq
//!   (BE, from `generate_id`) → delivery; `delivery_queue` webhook\0seq → () for the pending
//!   ones; `delivery_pending` owner → pending count, `delivery_finished` webhook → finished
//!   count (u64 BE): changed under one in-process lock
//!
//! Bounds ([`Retention`]) are enforced as records are stored; see the [`super`] docs.

use super::*;
use serde::de::DeserializeOwned;

/// sled-backed store in one directory.
pub struct SledStore {
    db: ::sled::Db,
    users: ::sled::Tree,
    user_names: ::sled::Tree,
    tokens: ::sled::Tree,
    token_index: ::sled::Tree,
    devices: ::sled::Tree,
    device_names: ::sled::Tree,
    enrollments: ::sled::Tree,
    deployments: ::sled::Tree,
    status: ::sled::Tree,
    contig: ::sled::Tree,
    epochs: ::sled::Tree,
    status_order: ::sled::Tree,
    status_usage: ::sled::Tree,
    deployment_owner: ::sled::Tree,
    meta: ::sled::Tree,
    leases: ::sled::Tree,
    /// Held while a lease is changed or checked for a fenced write, so that no lease changes
    /// between the check and the write.
    lease_lock: std::sync::Mutex<()>,
    sessions: ::sled::Tree,
    session_user: ::sled::Tree,
    session_expiry: ::sled::Tree,
    /// Held while sessions change; holds how many are stored.
    session_lock: std::sync::Mutex<usize>,
    failures: ::sled::Tree,
    failure_ends: ::sled::Tree,
    audit: ::sled::Tree,
    audit_count: ::sled::Tree,
    /// Held while failure counts change.
    failure_lock: std::sync::Mutex<()>,
    windows: ::sled::Tree,
    /// Held while a window is inserted (the count and the insert are one step).
    window_lock: std::sync::Mutex<()>,
    webhooks: ::sled::Tree,
    webhook_owner: ::sled::Tree,
    deliveries: ::sled::Tree,
    delivery_queue: ::sled::Tree,
    delivery_pending: ::sled::Tree,
    delivery_finished: ::sled::Tree,
    /// Held while webhooks or deliveries change.
    webhook_lock: std::sync::Mutex<()>,
    retention: Retention,
}

/// A web session as the `sessions` tree stores it.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    #[serde(flatten)]
    rec: SessionRecord,
    /// Insertion order (`generate_id`).
    order: u64,
}

/// A `failure_ends` key: the window's end, then the failure key.
fn end_key(end: u64, key: &str) -> Vec<u8> {
    let mut k = end.to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn expiry_key(expires_at: u64, id_hash: &str) -> Vec<u8> {
    let mut k = expires_at.to_be_bytes().to_vec();
    k.extend_from_slice(id_hash.as_bytes());
    k
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// What a sled transaction that aborts with a [`StoreError`] came to, as a store result.
fn tx_result<T>(r: ::sled::transaction::TransactionResult<T, StoreError>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(::sled::transaction::TransactionError::Abort(e)) => Err(e),
        Err(::sled::transaction::TransactionError::Storage(e)) => Err(err(e)),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(err)
}

fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(err)
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn prefix(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k
}

fn epoch_key(device: &str, epoch: u64) -> Vec<u8> {
    let mut k = prefix(device);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn status_key(device: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let mut k = epoch_key(device, epoch);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if b.len() == 8 {
        a.copy_from_slice(b);
    }
    u64::from_be_bytes(a)
}

/// The `i`th big-endian u64 of `b` (0 when `b` is too short).
fn be_at(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8).map_or(0, be_u64)
}

fn be_concat(vals: &[u64]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// The first key after every key that starts with `prefix(a)`.
fn prefix_end(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(1);
    k
}

fn order_key(device: &str, order: u64) -> Vec<u8> {
    let mut k = prefix(device);
    k.extend_from_slice(&order.to_be_bytes());
    k
}

fn owner_key(owner: &str, created_at: u64, id: &str) -> Vec<u8> {
    let mut k = prefix(owner);
    k.extend_from_slice(&created_at.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// One entry of `status_order`.
#[derive(Debug, Clone, Copy)]
struct OrderEntry {
    epoch: u64,
    seq: u64,
    size: u64,
    received_at: u64,
}

impl OrderEntry {
    fn encode(&self) -> Vec<u8> {
        be_concat(&[self.epoch, self.seq, self.size, self.received_at])
    }

    fn decode(b: &[u8]) -> OrderEntry {
        OrderEntry {
            epoch: be_at(b, 0),
            seq: be_at(b, 1),
            size: be_at(b, 2),
            received_at: be_at(b, 3),
        }
    }
}

const STATUS_ORDER_BUILT: &str = "status_order_v1";
const DEPLOYMENT_OWNER_BUILT: &str = "deployment_owner_v1";

impl SledStore {
    /// Opens (or creates) the store in `dir` with [`Retention::default`].
    pub fn open(dir: &std::path::Path) -> Result<SledStore> {
        Self::open_with(dir, Retention::default())
    }

    /// Opens (or creates) the store in `dir`, keeping history within `retention`.
    pub fn open_with(dir: &std::path::Path, retention: Retention) -> Result<SledStore> {
        let db = ::sled::Config::new().path(dir).open().map_err(|e| {
            StoreError::Backend(format!("cannot open the store in {}: {e}", dir.display()))
        })?;
        let t = |n: &str| db.open_tree(n).map_err(err);
        let store = SledStore {
            users: t("users")?,
            user_names: t("user_names")?,
            tokens: t("tokens")?,
            token_index: t("token_index")?,
            devices: t("devices")?,
            device_names: t("device_names")?,
            enrollments: t("enrollments")?,
            deployments: t("deployments")?,
            status: t("status")?,
            contig: t("contig")?,
            epochs: t("epochs")?,
            status_order: t("status_order")?,
            status_usage: t("status_usage")?,
            deployment_owner: t("deployment_owner")?,
            meta: t("meta")?,
            leases: t("leases")?,
            lease_lock: std::sync::Mutex::new(()),
            session_lock: std::sync::Mutex::new(0),
            sessions: t("sessions")?,
            session_user: t("session_user")?,
            session_expiry: t("session_expiry")?,
            failures: t("failures")?,
            failure_ends: t("failure_ends")?,
            audit: t("audit")?,
            audit_count: t("audit_count")?,
            failure_lock: std::sync::Mutex::new(()),
            windows: t("windows")?,
            window_lock: std::sync::Mutex::new(()),
            webhooks: t("webhooks")?,
            webhook_owner: t("webhook_owner")?,
            deliveries: t("deliveries")?,
            delivery_queue: t("delivery_queue")?,
            delivery_pending: t("delivery_pending")?,
            delivery_finished: t("delivery_finished")?,
            webhook_lock: std::sync::Mutex::new(()),
            retention,
            db,
        };
        store.build_indexes()?;
        *store.lock_sessions() = store.sessions.len();
        Ok(store)
    }

    /// Builds the history order and the owner index for records stored by an older version
    /// (once; a marker in `meta` says it is done).
    fn build_indexes(&self) -> Result<()> {
        if !self.meta.contains_key(STATUS_ORDER_BUILT).map_err(err)? {
            let mut built = 0u64;
            let mut device: Option<String> = None;
            let mut entries: Vec<(u64, OrderEntry)> = Vec::new();
            let mut flush = |dev: &str, entries: &mut Vec<(u64, OrderEntry)>| -> Result<()> {
                entries.sort_by_key(|(t, e)| (*t, e.epoch, e.seq));
                let (mut count, mut bytes) = (0u64, 0u64);
                for (_, e) in entries.drain(..) {
                    let order = self.db.generate_id().map_err(err)?;
                    self.status_order
                        .insert(order_key(dev, order), e.encode())
                        .map_err(err)?;
                    count += 1;
                    bytes += e.size;
                }
                self.status_usage
                    .insert(dev.as_bytes(), be_concat(&[count, bytes]))
                    .map_err(err)?;
                built += count;
                Ok(())
            };
            for r in self.status.iter() {
                let (k, v) = r.map_err(err)?;
                let Some(split) = k.iter().position(|b| *b == 0) else {
                    continue;
                };
                let dev = String::from_utf8_lossy(&k[..split]).into_owned();
                let rec: StoredStatus = from_json(&v)?;
                if device.as_deref() != Some(dev.as_str()) {
                    if let Some(prev) = device.take() {
                        flush(&prev, &mut entries)?;
                    }
                    device = Some(dev);
                }
                entries.push((
                    rec.received_at,
                    OrderEntry {
                        epoch: rec.event.epoch,
                        seq: rec.event.seq,
                        size: v.len() as u64,
                        received_at: rec.received_at,
                    },
                ));
            }
            if let Some(prev) = device.take() {
                flush(&prev, &mut entries)?;
            }
            self.meta.insert(STATUS_ORDER_BUILT, &[1u8]).map_err(err)?;
            if built > 0 {
                tracing::info!(events = built, "indexed stored status events by arrival");
            }
        }
        if !self
            .meta
            .contains_key(DEPLOYMENT_OWNER_BUILT)
            .map_err(err)?
        {
            let mut built = 0u64;
            for r in self.deployments.iter() {
                let (_, v) = r.map_err(err)?;
                let d: DeploymentRecord = from_json(&v)?;
                self.deployment_owner
                    .insert(owner_key(&d.owner, d.created_at, &d.id), d.id.as_bytes())
                    .map_err(err)?;
                built += 1;
            }
            self.meta
                .insert(DEPLOYMENT_OWNER_BUILT, &[1u8])
                .map_err(err)?;
            if built > 0 {
                tracing::info!(deployments = built, "indexed stored deployments by owner");
            }
        }
        Ok(())
    }

    /// Adds `(count, bytes)` (each possibly negative) to a device's history usage; returns
    /// the new usage.
    fn add_usage(&self, device: &str, count: i64, bytes: i64) -> Result<(u64, u64)> {
        let new = self
            .status_usage
            .update_and_fetch(device.as_bytes(), |old| {
                let old = old.unwrap_or(&[]);
                let c = be_at(old, 0).saturating_add_signed(count);
                let b = be_at(old, 1).saturating_add_signed(bytes);
                Some(be_concat(&[c, b]))
            })
            .map_err(err)?
            .unwrap_or_default();
        Ok((be_at(&new, 0), be_at(&new, 1)))
    }

    /// Removes a device's oldest events while it is over a bound (at most [`PRUNE_BATCH`];
    /// the newest event always stays).
    fn prune_history(&self, device: &str, now: u64) -> Result<usize> {
        let r = &self.retention;
        let oldest_kept = now.saturating_sub(r.max_age_ms());
        let mut removed = 0;
        while removed < PRUNE_BATCH {
            let (count, bytes) = match self.status_usage.get(device.as_bytes()).map_err(err)? {
                Some(u) => (be_at(&u, 0), be_at(&u, 1)),
                None => break,
            };
            if count <= 1 {
                break;
            }
            let Some(first) = self.status_order.scan_prefix(prefix(device)).next() else {
                break;
            };
            let (k, v) = first.map_err(err)?;
            let e = OrderEntry::decode(&v);
            let over = count > r.max_events_per_device
                || bytes > r.max_bytes_per_device
                || e.received_at < oldest_kept;
            if !over {
                break;
            }
            // Whoever removes the order entry accounts for it (concurrent inserts).
            if self.status_order.remove(&k).map_err(err)?.is_some() {
                self.status
                    .remove(status_key(device, e.epoch, e.seq))
                    .map_err(err)?;
                self.add_usage(device, -1, -(e.size as i64))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::debug!(device, removed, "pruned old status events");
        }
        Ok(removed)
    }

    /// Adds `delta` to `owner`'s audit record count; answers the new count.
    fn add_audit_count(&self, owner: &str, delta: i64) -> Result<u64> {
        let new = self
            .audit_count
            .update_and_fetch(owner.as_bytes(), |old| {
                let n = old.map_or(0, be_u64).saturating_add_signed(delta);
                Some(n.to_be_bytes().to_vec())
            })
            .map_err(err)?;
        Ok(new.map_or(0, |v| be_u64(&v)))
    }

    /// Removes `owner`'s oldest audit records while over a bound (at most [`PRUNE_BATCH`];
    /// the newest record always stays).
    fn prune_audit(&self, owner: &str, now: u64) -> Result<usize> {
        let oldest_kept = now.saturating_sub(self.retention.max_age_ms());
        let mut removed = 0;
        while removed < PRUNE_BATCH {
            let count = self
                .audit_count
                .get(owner.as_bytes())
                .map_err(err)?
                .map_or(0, |v| be_u64(&v));
            if count <= 1 {
                break;
            }
            let Some(first) = self.audit.scan_prefix(prefix(owner)).next() else {
                break;
            };
            let (k, v) = first.map_err(err)?;
            let time = from_json::<AuditRecord>(&v).map_or(0, |r| r.time);
            if count <= self.retention.max_audit_per_user && time >= oldest_kept {
                break;
            }
            // Whoever removes the record accounts for it (concurrent appends).
            if self.audit.remove(&k).map_err(err)?.is_some() {
                self.add_audit_count(owner, -1)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes `owner`'s oldest finished deployments whose finish is older than the
    /// retention age (checks at most [`PRUNE_BATCH`] of the oldest).
    fn prune_deployments(&self, owner: &str, now: u64) -> Result<usize> {
        let oldest_kept = now.saturating_sub(self.retention.max_age_ms());
        let mut removed = 0;
        let mut doomed = Vec::new();
        for r in self
            .deployment_owner
            .scan_prefix(prefix(owner))
            .take(PRUNE_BATCH)
        {
            let (k, id) = r.map_err(err)?;
            let Some(d) = Self::get::<DeploymentRecord>(&self.deployments, &id)? else {
                doomed.push((k, None));
                continue;
            };
            if d.created_at >= oldest_kept {
                break; // every later one was created (so finished) later still
            }
            if d.finished_at.is_some_and(|f| f < oldest_kept) && d.state != DeploymentState::Running
            {
                doomed.push((k, Some(id)));
            }
        }
        for (k, id) in doomed {
            self.deployment_owner.remove(k).map_err(err)?;
            if let Some(id) = id {
                self.deployments.remove(id).map_err(err)?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(owner, removed, "pruned old finished deployments");
        }
        Ok(removed)
    }

    /// Adds `delta` to the u64 counter `key` of `tree`; answers the new value.
    fn add_count(tree: &::sled::Tree, key: &[u8], delta: i64) -> Result<u64> {
        let new = tree
            .update_and_fetch(key, |old| {
                let n = old.map_or(0, be_u64).saturating_add_signed(delta);
                Some(n.to_be_bytes().to_vec())
            })
            .map_err(err)?;
        Ok(new.map_or(0, |v| be_u64(&v)))
    }

    fn lock_webhooks(&self) -> std::sync::MutexGuard<'_, ()> {
        self.webhook_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the pending delivery at `key` as no longer pending (its record already written
    /// with its new state): out of the queue, counted as finished.
    fn leave_queue(&self, key: &[u8], owner: &str, webhook: &str) -> Result<()> {
        if self.delivery_queue.remove(key).map_err(err)?.is_some() {
            Self::add_count(&self.delivery_pending, owner.as_bytes(), -1)?;
            Self::add_count(&self.delivery_finished, webhook.as_bytes(), 1)?;
        }
        Ok(())
    }

    /// Removes `webhook`'s oldest finished deliveries beyond `max` (at most [`PRUNE_BATCH`]
    /// looked at).
    fn prune_deliveries(&self, webhook: &str, max: u64) -> Result<()> {
        let mut finished = self
            .delivery_finished
            .get(webhook.as_bytes())
            .map_err(err)?
            .map_or(0, |v| be_u64(&v));
        if finished <= max {
            return Ok(());
        }
        let mut doomed = Vec::new();
        for r in self
            .deliveries
            .scan_prefix(prefix(webhook))
            .keys()
            .take(PRUNE_BATCH)
        {
            let k = r.map_err(err)?;
            if finished <= max {
                break;
            }
            if !self.delivery_queue.contains_key(&k).map_err(err)? {
                doomed.push(k);
                finished -= 1;
            }
        }
        for k in doomed {
            if self.deliveries.remove(k).map_err(err)?.is_some() {
                Self::add_count(&self.delivery_finished, webhook.as_bytes(), -1)?;
            }
        }
        Ok(())
    }

    fn get<T: DeserializeOwned>(tree: &::sled::Tree, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        match tree.get(key).map_err(err)? {
            Some(v) => Ok(Some(from_json(&v)?)),
            None => Ok(None),
        }
    }

    /// A user's tokens, revoked ones included.
    fn all_tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for r in self.token_index.scan_prefix(prefix(user_id)) {
            let (_, hash) = r.map_err(err)?;
            if let Some(t) = Self::get(&self.tokens, &hash)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn all<T: DeserializeOwned>(iter: ::sled::Iter) -> Result<Vec<T>> {
        iter.map(|r| r.map_err(err).and_then(|(_, v)| from_json(&v)))
            .collect()
    }

    /// The lock of lease changes and fenced writes (a panic while it was held left no lease
    /// half written: each change is one insert).
    fn lock_leases(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lease_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock of session changes, with the number of sessions stored.
    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, usize> {
        self.session_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes a session and its index entries (the session lock held); `false` if absent.
    fn remove_session(&self, count: &mut usize, id_hash: &[u8]) -> Result<bool> {
        let Some(v) = self.sessions.remove(id_hash).map_err(err)? else {
            return Ok(false);
        };
        *count = count.saturating_sub(1);
        let st: StoredSession = from_json(&v)?;
        self.session_user
            .remove(order_key(&st.rec.user_id, st.order))
            .map_err(err)?;
        self.session_expiry
            .remove(expiry_key(st.rec.expires_at, &st.rec.id_hash))
            .map_err(err)?;
        Ok(true)
    }

    /// Ends `user`'s oldest session (the session lock held); `false` if it has none.
    fn remove_oldest_session_of(&self, count: &mut usize, user: &str) -> Result<bool> {
        let Some(first) = self.session_user.scan_prefix(prefix(user)).next() else {
            return Ok(false);
        };
        let (k, id) = first.map_err(err)?;
        if !self.remove_session(count, &id)? {
            self.session_user.remove(k).map_err(err)?; // a dangling index entry
        }
        Ok(true)
    }

    /// Claims `key` in a unique index: `true` when it was free.
    /// Stores a status event with everything that refers to it (its history entry, the
    /// device's usage and current epoch) in one sled transaction; false when it was stored
    /// before. One transaction, because a resend of an event whose record survived a crash
    /// without its history entry would find the record and never add the entry: the event
    /// would be acked and stored, yet missing from the history (seen once in 190,000 events
    /// under a SIGKILL storm).
    fn store_new_status(
        &self,
        dev: &str,
        epoch: u64,
        seq: u64,
        received_at: u64,
        bytes: &[u8],
    ) -> Result<bool> {
        use ::sled::transaction::ConflictableTransactionError;
        use ::sled::Transactional;
        let key = status_key(dev, epoch, seq);
        let order = self.db.generate_id().map_err(err)?;
        let entry = OrderEntry {
            epoch,
            seq,
            size: bytes.len() as u64,
            received_at,
        }
        .encode();
        let r = (
            &self.status,
            &self.status_order,
            &self.status_usage,
            &self.epochs,
        )
            .transaction(|(status, status_order, usage, epochs)| {
                if status.get(&key)?.is_some() {
                    return Ok(false);
                }
                status.insert(key.as_slice(), bytes)?;
                status_order.insert(order_key(dev, order), entry.as_slice())?;
                let old = usage.get(dev.as_bytes())?;
                let old = old.as_deref().unwrap_or(&[]);
                let count = be_at(old, 0).saturating_add(1);
                let size = be_at(old, 1).saturating_add(bytes.len() as u64);
                usage.insert(dev.as_bytes(), be_concat(&[count, size]))?;
                epochs.insert(dev.as_bytes(), &epoch.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            });
        tx_result(r)
    }

    /// Claims a unique name for a record and stores the record, in one transaction (false
    /// when the name is taken): a crash between the two would leave a name taken by nothing,
    /// which no request could free.
    fn claim_name(
        (names, name): (&::sled::Tree, &[u8]),
        (records, id): (&::sled::Tree, &[u8]),
        record: &[u8],
    ) -> Result<bool> {
        use ::sled::transaction::ConflictableTransactionError;
        use ::sled::Transactional;
        let r = (names, records).transaction(|(names, records)| {
            if names.get(name)?.is_some() {
                return Ok(false);
            }
            names.insert(name, id)?;
            records.insert(id, record)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(true)
        });
        tx_result(r)
    }
}

impl Store for SledStore {
    fn retention(&self) -> Retention {
        self.retention
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        // sled 0.34's `flush_async` can stay pending forever when several callers flush at
        // once (seen with 32 concurrent setup requests); the blocking flush does not.
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(err)?
                .map_err(err)?;
            Ok(())
        })
    }

    fn insert_user(&self, user: &UserRecord) -> Result<bool> {
        Self::claim_name(
            (&self.user_names, user.name.as_bytes()),
            (&self.users, user.id.as_bytes()),
            &to_json(user)?,
        )
    }

    fn user(&self, id: &str) -> Result<Option<UserRecord>> {
        Self::get(&self.users, id)
    }

    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        match self.user_names.get(name).map_err(err)? {
            Some(id) => Self::get(&self.users, id),
            None => Ok(None),
        }
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        Self::all(self.users.iter())
    }

    fn update_user(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut UserRecord) + Send),
    ) -> Result<Option<UserRecord>> {
        loop {
            let Some(old) = self.users.get(id).map_err(err)? else {
                return Ok(None);
            };
            let mut rec: UserRecord = from_json(&old)?;
            f(&mut rec);
            let new = to_json(&rec)?;
            if self
                .users
                .compare_and_swap(id, Some(old), Some(new))
                .map_err(err)?
                .is_ok()
            {
                return Ok(Some(rec));
            }
        }
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        self.tokens
            .insert(&token.hash, to_json(token)?)
            .map_err(err)?;
        self.token_index
            .insert(key2(&token.user_id, &token.id), token.hash.as_bytes())
            .map_err(err)?;
        Ok(())
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        Ok(Self::get::<TokenRecord>(&self.tokens, hash)?.filter(TokenRecord::valid))
    }

    fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
        Ok(self
            .all_tokens_of(user_id)?
            .into_iter()
            .filter(TokenRecord::valid)
            .collect())
    }

    fn revoke_token(&self, user_id: &str, token_id: &str, now: u64) -> Result<Revoked> {
        let mut found = Revoked::NoSuch;
        for t in self.all_tokens_of(user_id)? {
            if t.id == token_id {
                found = if t.valid() {
                    let revoked = TokenRecord {
                        revoked_at: Some(now),
                        ..t
                    };
                    self.tokens
                        .insert(revoked.hash.as_bytes(), to_json(&revoked)?)
                        .map_err(err)?;
                    Revoked::Now
                } else {
                    Revoked::Earlier
                };
            } else if t.prunable(now) {
                self.token_index.remove(key2(user_id, &t.id)).map_err(err)?;
                self.tokens.remove(t.hash.as_bytes()).map_err(err)?;
            }
        }
        Ok(found)
    }

    fn insert_device(&self, device: &DeviceRecord) -> Result<bool> {
        Self::claim_name(
            (&self.device_names, &key2(&device.owner, &device.name)),
            (&self.devices, device.id.as_bytes()),
            &to_json(device)?,
        )
    }

    fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        Self::get(&self.devices, id)
    }

    fn device_by_name(&self, owner: &str, name: &str) -> Result<Option<DeviceRecord>> {
        match self.device_names.get(key2(owner, name)).map_err(err)? {
            Some(id) => Self::get(&self.devices, id),
            None => Ok(None),
        }
    }

    fn devices_of(&self, owner: &str) -> Result<Vec<DeviceRecord>> {
        let mut out = Vec::new();
        for r in self.device_names.scan_prefix(prefix(owner)) {
            let (_, id) = r.map_err(err)?;
            if let Some(d) = Self::get(&self.devices, id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn count_devices_of(&self, owner: &str) -> Result<u64> {
        // The owner's entries of the name index: no record is read or decoded.
        let mut n = 0;
        for r in self.device_names.scan_prefix(prefix(owner)).keys() {
            r.map_err(err)?;
            n += 1;
        }
        Ok(n)
    }

    fn all_devices(&self) -> Result<Vec<DeviceRecord>> {
        Self::all(self.devices.iter())
    }

    fn update_device(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut DeviceRecord) + Send),
    ) -> Result<Option<DeviceRecord>> {
        loop {
            let Some(old) = self.devices.get(id).map_err(err)? else {
                return Ok(None);
            };
            let mut rec: DeviceRecord = from_json(&old)?;
            f(&mut rec);
            let new = to_json(&rec)?;
            if self
                .devices
                .compare_and_swap(id, Some(old), Some(new))
                .map_err(err)?
                .is_ok()
            {
                return Ok(Some(rec));
            }
        }
    }

    fn delete_device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let Some(old) = self.devices.remove(id).map_err(err)? else {
            return Ok(None);
        };
        let rec: DeviceRecord = from_json(&old)?;
        self.device_names
            .remove(key2(&rec.owner, &rec.name))
            .map_err(err)?;
        for tree in [&self.status, &self.contig, &self.status_order] {
            for r in tree.scan_prefix(prefix(id)).keys() {
                tree.remove(r.map_err(err)?).map_err(err)?;
            }
        }
        self.epochs.remove(id).map_err(err)?;
        self.status_usage.remove(id).map_err(err)?;
        self.delete_enrollments_of(id)?;
        Ok(Some(rec))
    }

    fn insert_enrollment(&self, token_hash: &str, rec: &EnrollmentRecord) -> Result<()> {
        self.enrollments
            .insert(token_hash, to_json(rec)?)
            .map_err(err)?;
        Ok(())
    }

    fn take_enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRecord>> {
        match self.enrollments.remove(token_hash).map_err(err)? {
            Some(v) => Ok(Some(from_json(&v)?)),
            None => Ok(None),
        }
    }

    fn delete_enrollments_of(&self, device_id: &str) -> Result<()> {
        for r in self.enrollments.iter() {
            let (k, v) = r.map_err(err)?;
            let rec: EnrollmentRecord = from_json(&v)?;
            if rec.device_id == device_id {
                self.enrollments.remove(k).map_err(err)?;
            }
        }
        Ok(())
    }

    fn insert_session(
        &self,
        s: &SessionRecord,
        now_ms: u64,
        caps: SessionCaps,
    ) -> Result<SessionsEnded> {
        let mut count = self.lock_sessions();
        let mut ended = SessionsEnded::default();
        let expired: Vec<::sled::IVec> = self
            .session_expiry
            .range(..expiry_key(now_ms.saturating_add(1), ""))
            .take(PRUNE_BATCH)
            .map(|r| r.map(|(k, _)| k).map_err(err))
            .collect::<Result<_>>()?;
        for k in expired {
            let id = &k[8..];
            if self.remove_session(&mut count, id)? {
                ended.expired += 1;
            } else {
                self.session_expiry.remove(&k).map_err(err)?; // a dangling index entry
            }
        }
        let per_user = caps.per_user.max(1);
        while self.session_user.scan_prefix(prefix(&s.user_id)).count() >= per_user {
            if !self.remove_oldest_session_of(&mut count, &s.user_id)? {
                break;
            }
            ended.over_user_cap += 1;
        }
        while *count >= caps.total.max(1) && ended.table_full < PRUNE_BATCH {
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for r in self.session_user.iter().keys() {
                let k = r.map_err(err)?;
                let user = k.split(|b| *b == 0).next().unwrap_or_default();
                *counts
                    .entry(String::from_utf8_lossy(user).into_owned())
                    .or_default() += 1;
            }
            let own = counts.get(&s.user_id).copied().unwrap_or(0);
            let most = counts.values().copied().max().unwrap_or(0);
            let victim = if own >= most {
                s.user_id.clone()
            } else {
                match counts.iter().find(|(_, n)| **n == most) {
                    Some((u, _)) => u.clone(),
                    None => break,
                }
            };
            if !self.remove_oldest_session_of(&mut count, &victim)? {
                break;
            }
            ended.table_full += 1;
        }
        // The same id again (never, with random ids) replaces the session whole.
        self.remove_session(&mut count, s.id_hash.as_bytes())?;
        let order = self.db.generate_id().map_err(err)?;
        let stored = StoredSession {
            rec: s.clone(),
            order,
        };
        self.sessions
            .insert(&s.id_hash, to_json(&stored)?)
            .map_err(err)?;
        *count += 1;
        self.session_user
            .insert(order_key(&s.user_id, order), s.id_hash.as_bytes())
            .map_err(err)?;
        self.session_expiry
            .insert(expiry_key(s.expires_at, &s.id_hash), &[])
            .map_err(err)?;
        Ok(ended)
    }

    fn session(&self, id_hash: &str, now_ms: u64) -> Result<Option<SessionRecord>> {
        Ok(Self::get::<StoredSession>(&self.sessions, id_hash)?
            .map(|s| s.rec)
            .filter(|s| now_ms < s.expires_at))
    }

    fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let mut count = self.lock_sessions();
        self.remove_session(&mut count, id_hash.as_bytes())
    }

    fn count_sessions_of(&self, user_id: &str, now_ms: u64) -> Result<u64> {
        let mut n = 0;
        for r in self.session_user.scan_prefix(prefix(user_id)) {
            let (_, id) = r.map_err(err)?;
            if Self::get::<StoredSession>(&self.sessions, &id)?
                .is_some_and(|s| now_ms < s.rec.expires_at)
            {
                n += 1;
            }
        }
        Ok(n)
    }

    fn note_failure(&self, key: &str, now_ms: u64, window_ms: u64) -> Result<u32> {
        let _held = self.failure_lock.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<::sled::IVec> = self
            .failure_ends
            .range(..now_ms.saturating_add(1).to_be_bytes().to_vec())
            .take(PRUNE_BATCH)
            .map(|r| r.map(|(k, _)| k).map_err(err))
            .collect::<Result<_>>()?;
        for k in ended {
            self.failure_ends.remove(&k).map_err(err)?;
            let name = &k[8..];
            // Only if that row still ends then (not renewed since).
            if let Some(v) = self.failures.get(name).map_err(err)? {
                if be_at(&v, 1) == be_u64(&k[..8]) {
                    self.failures.remove(name).map_err(err)?;
                }
            }
        }
        let old = self.failures.get(key).map_err(err)?;
        let (start, end, count) = match old {
            Some(v) if now_ms < be_at(&v, 1) => (be_at(&v, 0), be_at(&v, 1), be_at(&v, 2) + 1),
            other => {
                if let Some(v) = other {
                    self.failure_ends
                        .remove(end_key(be_at(&v, 1), key))
                        .map_err(err)?;
                }
                let end = now_ms.saturating_add(window_ms.max(1));
                self.failure_ends
                    .insert(end_key(end, key), &[])
                    .map_err(err)?;
                (now_ms, end, 1)
            }
        };
        self.failures
            .insert(key, be_concat(&[start, end, count]))
            .map_err(err)?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn failures(&self, key: &str, now_ms: u64, _window_ms: u64) -> Result<u32> {
        Ok(match self.failures.get(key).map_err(err)? {
            Some(v) if now_ms < be_at(&v, 1) => u32::try_from(be_at(&v, 2)).unwrap_or(u32::MAX),
            _ => 0,
        })
    }

    fn put_deployment_fenced(&self, d: &DeploymentRecord, fence: &Fence) -> Result<()> {
        let _held = self.lock_leases();
        let stored: Option<Lease> = Self::get(&self.leases, &fence.name)?;
        if !stored.as_ref().is_some_and(|l| l.admits(fence)) {
            return Err(Lease::fenced(fence, stored.as_ref()));
        }
        self.put_deployment(d)
    }

    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>> {
        let _held = self.lock_leases();
        let old: Option<Lease> = Self::get(&self.leases, name)?;
        let Some(new) = Lease::grant(old.as_ref(), name, holder, now_ms, ttl_ms) else {
            return Ok(None);
        };
        self.leases.insert(name, to_json(&new)?).map_err(err)?;
        Ok(Some(new))
    }

    fn release_lease(&self, name: &str, holder: &str, token: u64) -> Result<()> {
        let _held = self.lock_leases();
        let Some(mut l) = Self::get::<Lease>(&self.leases, name)? else {
            return Ok(());
        };
        if l.holder == holder && l.token == token {
            l.expires_at = 0;
            self.leases.insert(name, to_json(&l)?).map_err(err)?;
        }
        Ok(())
    }

    fn lease(&self, name: &str) -> Result<Option<Lease>> {
        Self::get(&self.leases, name)
    }

    fn put_deployment(&self, d: &DeploymentRecord) -> Result<()> {
        self.deployments.insert(&d.id, to_json(d)?).map_err(err)?;
        let first = self
            .deployment_owner
            .insert(owner_key(&d.owner, d.created_at, &d.id), d.id.as_bytes())
            .map_err(err)?
            .is_none();
        if first {
            self.prune_deployments(&d.owner, hammer_protocol::now_ms())?;
        }
        Ok(())
    }

    fn deployments_of(
        &self,
        owner: &str,
        after: Option<&DeploymentCursor>,
        limit: usize,
    ) -> Result<Page<DeploymentRecord, DeploymentCursor>> {
        let end = match after {
            Some(c) => owner_key(owner, c.created_at, &c.id),
            None => prefix_end(owner),
        };
        let mut items = Vec::new();
        let mut more = false;
        for r in self.deployment_owner.range(prefix(owner)..end).rev() {
            let (_, id) = r.map_err(err)?;
            let Some(d) = Self::get::<DeploymentRecord>(&self.deployments, &id)? else {
                continue;
            };
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(d);
        }
        let next = more
            .then(|| items.last())
            .flatten()
            .map(|d: &DeploymentRecord| DeploymentCursor {
                created_at: d.created_at,
                id: d.id.clone(),
            });
        Ok(Page { items, next })
    }

    fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        Self::get(&self.deployments, id)
    }

    fn deployments(&self) -> Result<Vec<DeploymentRecord>> {
        Self::all(self.deployments.iter())
    }

    fn insert_status(&self, s: &StoredStatus) -> Result<Inserted> {
        let dev = &s.device_id;
        let (epoch, seq) = (s.event.epoch, s.event.seq);
        let ekey = epoch_key(dev, epoch);
        let mut contiguous = self
            .contig
            .get(&ekey)
            .map_err(err)?
            .map_or(0, |v| be_u64(&v));
        if seq <= contiguous {
            // Stored before (and maybe pruned since): a resend, not a new event.
            return Ok(Inserted {
                new: false,
                contiguous,
            });
        }
        let mut rec = s.clone();
        cap_status(&mut rec.event);
        let bytes = to_json(&rec)?;
        let new = self.store_new_status(dev, epoch, seq, s.received_at, &bytes)?;
        if new {
            self.prune_history(dev, s.received_at)?;
        }
        let start = contiguous;
        while self
            .status
            .contains_key(status_key(dev, epoch, contiguous + 1))
            .map_err(err)?
        {
            contiguous += 1;
        }
        if contiguous != start {
            self.contig
                .insert(&ekey, &contiguous.to_be_bytes())
                .map_err(err)?;
        }
        Ok(Inserted { new, contiguous })
    }

    fn ack_of(&self, device_id: &str) -> Result<Option<(u64, u64)>> {
        let Some(epoch) = self.epochs.get(device_id).map_err(err)? else {
            return Ok(None);
        };
        let epoch = be_u64(&epoch);
        let seq = self
            .contig
            .get(epoch_key(device_id, epoch))
            .map_err(err)?
            .map_or(0, |v| be_u64(&v));
        Ok(Some((epoch, seq)))
    }

    fn statuses_of(&self, device_id: &str) -> Result<Vec<StoredStatus>> {
        Self::all(self.status.scan_prefix(prefix(device_id)))
    }

    fn insert_webhook(&self, w: &WebhookRecord, max_per_owner: u64) -> Result<bool> {
        let _g = self.lock_webhooks();
        let have = self.webhook_owner.scan_prefix(prefix(&w.owner)).count() as u64;
        if have >= max_per_owner {
            return Ok(false);
        }
        self.webhooks.insert(&w.id, to_json(w)?).map_err(err)?;
        self.webhook_owner
            .insert(key2(&w.owner, &w.id), &[])
            .map_err(err)?;
        Ok(true)
    }

    fn webhooks_of(&self, owner: &str) -> Result<Vec<WebhookRecord>> {
        let mut v = Vec::new();
        for r in self.webhook_owner.scan_prefix(prefix(owner)).keys() {
            let k = r.map_err(err)?;
            let id = String::from_utf8_lossy(&k[owner.len() + 1..]).into_owned();
            if let Some(w) = Self::get::<WebhookRecord>(&self.webhooks, &id)? {
                v.push(w);
            }
        }
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(v)
    }

    fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        Self::get(&self.webhooks, id)
    }

    fn delete_webhook(&self, owner: &str, id: &str) -> Result<bool> {
        let _g = self.lock_webhooks();
        match Self::get::<WebhookRecord>(&self.webhooks, id)? {
            Some(w) if w.owner == owner => {}
            _ => return Ok(false),
        }
        self.webhook_owner.remove(key2(owner, id)).map_err(err)?;
        self.webhooks.remove(id).map_err(err)?;
        let mut pending = 0i64;
        for r in self.delivery_queue.scan_prefix(prefix(id)).keys() {
            self.delivery_queue.remove(r.map_err(err)?).map_err(err)?;
            pending += 1;
        }
        Self::add_count(&self.delivery_pending, owner.as_bytes(), -pending)?;
        for r in self.deliveries.scan_prefix(prefix(id)).keys() {
            self.deliveries.remove(r.map_err(err)?).map_err(err)?;
        }
        self.delivery_finished.remove(id.as_bytes()).map_err(err)?;
        Ok(true)
    }

    fn insert_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<u64> {
        let _g = self.lock_webhooks();
        let mut dropped = 0u64;
        let mut pending = self
            .delivery_pending
            .get(d.owner.as_bytes())
            .map_err(err)?
            .map_or(0, |v| be_u64(&v));
        while pending >= bounds.max_pending_per_owner.max(1) {
            // The owner's oldest pending delivery, over all their webhooks.
            let mut oldest: Option<Vec<u8>> = None;
            for r in self.webhook_owner.scan_prefix(prefix(&d.owner)).keys() {
                let k = r.map_err(err)?;
                let hook = String::from_utf8_lossy(&k[d.owner.len() + 1..]).into_owned();
                if let Some(r) = self.delivery_queue.scan_prefix(prefix(&hook)).keys().next() {
                    let q = r.map_err(err)?;
                    let seq = be_u64(&q[hook.len() + 1..]);
                    if oldest
                        .as_ref()
                        .is_none_or(|o| seq < be_u64(&o[o.len() - 8..]))
                    {
                        oldest = Some(q.to_vec());
                    }
                }
            }
            let Some(k) = oldest else {
                // The count is off (no queue entry left): start it over.
                self.delivery_pending
                    .insert(d.owner.as_bytes(), &0u64.to_be_bytes())
                    .map_err(err)?;
                break;
            };
            let hook = String::from_utf8_lossy(&k[..k.len() - 9]).into_owned();
            if let Some(mut old) = Self::get::<DeliveryRecord>(&self.deliveries, &k)? {
                old.state = DeliveryState::Dropped;
                old.claimed_until = 0;
                self.deliveries.insert(&k, to_json(&old)?).map_err(err)?;
            }
            self.leave_queue(&k, &d.owner, &hook)?;
            dropped += 1;
            pending = pending.saturating_sub(1);
        }
        let seq = self.db.generate_id().map_err(err)?;
        let mut rec = d.clone();
        rec.seq = seq;
        let k = order_key(&d.webhook_id, seq);
        self.deliveries.insert(&k, to_json(&rec)?).map_err(err)?;
        if rec.state == DeliveryState::Pending {
            self.delivery_queue.insert(&k, &[]).map_err(err)?;
            Self::add_count(&self.delivery_pending, d.owner.as_bytes(), 1)?;
        } else {
            Self::add_count(&self.delivery_finished, d.webhook_id.as_bytes(), 1)?;
        }
        self.prune_deliveries(&d.webhook_id, bounds.max_finished_per_webhook)?;
        Ok(dropped)
    }

    fn claim_deliveries(&self, now: u64, until: u64, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let _g = self.lock_webhooks();
        let mut due: Vec<(Vec<u8>, DeliveryRecord)> = Vec::new();
        // Each webhook's first queue entry, jumping past the rest of its entries: reads only
        // the webhooks with something pending.
        let mut from: Vec<u8> = Vec::new();
        while let Some(q) = self.delivery_queue.range(from.clone()..).keys().next() {
            let k = q.map_err(err)?.to_vec();
            if k.len() < 9 {
                from = k;
                from.push(0);
                continue;
            }
            let hook = String::from_utf8_lossy(&k[..k.len() - 9]).into_owned();
            from = prefix_end(&hook);
            let Some(d) = Self::get::<DeliveryRecord>(&self.deliveries, &k)? else {
                continue;
            };
            if d.next_at <= now && d.claimed_until <= now {
                due.push((k, d));
            }
        }
        due.sort_by_key(|(_, d)| (d.next_at, d.seq));
        due.truncate(limit);
        let mut out = Vec::with_capacity(due.len());
        for (k, mut d) in due {
            d.claimed_until = until;
            self.deliveries.insert(&k, to_json(&d)?).map_err(err)?;
            out.push(d);
        }
        Ok(out)
    }

    fn finish_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<()> {
        let _g = self.lock_webhooks();
        let k = order_key(&d.webhook_id, d.seq);
        match Self::get::<DeliveryRecord>(&self.deliveries, &k)? {
            Some(stored) if stored.state == DeliveryState::Pending && stored.id == d.id => {}
            _ => return Ok(()),
        }
        let mut rec = d.clone();
        rec.claimed_until = 0;
        self.deliveries.insert(&k, to_json(&rec)?).map_err(err)?;
        if rec.state != DeliveryState::Pending {
            self.leave_queue(&k, &d.owner, &d.webhook_id)?;
            self.prune_deliveries(&d.webhook_id, bounds.max_finished_per_webhook)?;
        }
        Ok(())
    }

    fn deliveries_of(&self, webhook_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let mut v = Vec::new();
        for r in self
            .deliveries
            .scan_prefix(prefix(webhook_id))
            .values()
            .rev()
        {
            if v.len() == limit {
                break;
            }
            v.push(from_json(&r.map_err(err)?)?);
        }
        Ok(v)
    }

    fn count_pending_deliveries(&self) -> Result<u64> {
        Ok(self.delivery_queue.len() as u64)
    }

    fn append_audit(&self, r: &AuditRecord) -> Result<()> {
        let order = self.db.generate_id().map_err(err)?;
        self.audit
            .insert(order_key(&r.owner, order), to_json(&r.capped())?)
            .map_err(err)?;
        self.add_audit_count(&r.owner, 1)?;
        self.prune_audit(&r.owner, r.time)?;
        Ok(())
    }

    fn audit_page(
        &self,
        owner: &str,
        before: Option<AuditCursor>,
        limit: usize,
    ) -> Result<Page<AuditRecord, AuditCursor>> {
        let end = match before {
            Some(o) => order_key(owner, o),
            None => prefix_end(owner),
        };
        let start = prefix(owner);
        let mut items = Vec::new();
        let mut next = None;
        let mut more = false;
        for r in self.audit.range(start.clone()..end).rev() {
            let (k, v) = r.map_err(err)?;
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(from_json(&v)?);
            next = Some(be_u64(&k[start.len()..]));
        }
        Ok(Page {
            items,
            next: if more { next } else { None },
        })
    }

    fn insert_window(&self, w: &WindowRecord, max: usize) -> Result<bool> {
        let _one_at_a_time = self.window_lock.lock().unwrap_or_else(|p| p.into_inner());
        let have = self.windows.scan_prefix(prefix(&w.owner)).keys().count();
        if have >= max {
            return Ok(false);
        }
        self.windows
            .insert(key2(&w.owner, &w.id), to_json(w)?)
            .map_err(err)?;
        Ok(true)
    }

    fn windows_of(&self, owner: &str) -> Result<Vec<WindowRecord>> {
        let mut v: Vec<WindowRecord> = Self::all(self.windows.scan_prefix(prefix(owner)))?;
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(v)
    }

    fn delete_window(&self, owner: &str, id: &str) -> Result<bool> {
        Ok(self.windows.remove(key2(owner, id)).map_err(err)?.is_some())
    }

    fn history_page(
        &self,
        device_id: &str,
        before: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<Page<StoredStatus, HistoryCursor>> {
        let end = match before {
            Some(o) => order_key(device_id, o),
            None => prefix_end(device_id),
        };
        let start = prefix(device_id);
        let mut items: Vec<(u64, StoredStatus)> = Vec::new();
        let mut more = false;
        for r in self.status_order.range(start.clone()..end).rev() {
            let (k, v) = r.map_err(err)?;
            let e = OrderEntry::decode(&v);
            let Some(s) = Self::get(&self.status, status_key(device_id, e.epoch, e.seq))? else {
                continue; // pruned meanwhile
            };
            if items.len() == limit {
                more = true;
                break;
            }
            items.push((be_u64(&k[start.len()..]), s));
        }
        let next = if more {
            items.last().map(|(o, _)| *o)
        } else {
            None
        };
        items.reverse();
        Ok(Page {
            items: items.into_iter().map(|(_, s)| s).collect(),
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    //! What only sled can show: a list reads only the owner's index, and indexes are built
    //! for records an older version stored. The behaviour every back end shares is the store
    //! contract suite, run on sled and PostgreSQL (`service/tests/integration/store_contract.rs`).
    use super::*;
    use hammer_protocol::{now_ms, PROTOCOL_VERSION};
    use std::collections::BTreeMap;

    fn status(dev: &str, epoch: u64, seq: u64) -> StoredStatus {
        StoredStatus {
            device_id: dev.into(),
            received_at: 1,
            deployer: None,
            event: StatusEvent {
                v: PROTOCOL_VERSION,
                epoch,
                seq,
                generation: None,
                deployment_id: None,
                phase: Phase::Running,
                commit: None,
                time: 1,
                detail: None,
                log_tail: vec![],
                commit_subject: None,
            },
        }
    }

    fn deployment(id: &str, owner: &str, created_at: u64) -> DeploymentRecord {
        DeploymentRecord {
            phasing: None,
            id: id.into(),
            owner: owner.into(),
            deployer: owner.into(),
            created_at,
            finished_at: None,
            git_ref: None,
            commit: None,
            strategy: Strategy::default(),
            state: DeploymentState::Running,
            reason: None,
            paused: false,
            targets: vec![],
        }
    }

    /// The child of the crash test: stores status events until it is killed (the folder in
    /// `HAMMER_SLED_CRASH_DIR`; one device per epoch, so every run adds new records).
    #[test]
    #[ignore = "run by status_records_survive_a_sigkill_with_their_history_entries"]
    fn child_stores_status_events_until_killed() {
        let Ok(dir) = std::env::var("HAMMER_SLED_CRASH_DIR") else {
            return;
        };
        let s = SledStore::open(std::path::Path::new(&dir)).unwrap();
        let epoch = now_ms();
        for seq in 1.. {
            s.insert_status(&status(&format!("d{}", seq % 7), epoch, seq))
                .unwrap();
        }
    }

    /// Each stored record has its history entry and is counted, whatever moment a SIGKILL
    /// hit (sled persists a prefix of the writes; a record written without its entry was
    /// found once after a storm of kills, and resends never repaired it).
    #[test]
    fn status_records_survive_a_sigkill_with_their_history_entries() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        for round in 0..8u64 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "store::sled::tests::child_stores_status_events_until_killed",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env("HAMMER_SLED_CRASH_DIR", dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Past sled's open and a few of its background flushes, at a varying moment.
            std::thread::sleep(std::time::Duration::from_millis(500 + round * 83));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(
                status.signal(),
                Some(9),
                "the child ended by itself: {status}"
            );
            // Reopening waits for the killed process's file lock to be released.
            let s = (0..100)
                .find_map(|_| {
                    SledStore::open(dir.path()).ok().or_else(|| {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        None
                    })
                })
                .expect("the store reopens after the kill");
            let mut records: BTreeMap<String, u64> = BTreeMap::new();
            for r in s.status.iter() {
                let (k, _) = r.unwrap();
                let split = k.iter().position(|b| *b == 0).unwrap();
                *records
                    .entry(String::from_utf8_lossy(&k[..split]).into_owned())
                    .or_default() += 1;
            }
            for (dev, n) in &records {
                let entries = s.status_order.scan_prefix(prefix(dev)).count() as u64;
                let usage = s.status_usage.get(dev.as_bytes()).unwrap().unwrap();
                assert_eq!(
                    (entries, be_at(&usage, 0)),
                    (*n, *n),
                    "round {round}: {dev} has {n} records, {entries} history entries, \
                     usage {}",
                    be_at(&usage, 0)
                );
            }
        }
    }

    #[test]
    fn deployments_of_reads_only_the_owners_index_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for i in 0..7u64 {
            s.put_deployment(&deployment(&format!("a{i}"), "alice", 100 + i))
                .unwrap();
            s.put_deployment(&deployment(&format!("b{i}"), "bob", 100 + i))
                .unwrap();
        }
        // Bob's records are corrupt: a list of Alice's would fail if it read them.
        for i in 0..7u64 {
            s.deployments
                .insert(format!("b{i}"), b"not json".to_vec())
                .unwrap();
        }
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let p = s.deployments_of("alice", after.as_ref(), 3).unwrap();
            assert!(p.items.len() <= 3);
            ids.extend(p.items.iter().map(|d| d.id.clone()));
            match p.next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        assert_eq!(ids, ["a6", "a5", "a4", "a3", "a2", "a1", "a0"]);
        assert!(s.deployments_of("bob", None, 3).is_err());
        assert!(s.deployments_of("carol", None, 3).unwrap().items.is_empty());
    }

    #[test]
    fn indexes_are_built_for_records_stored_before_they_existed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.insert_status(&status("d", 1, 1)).unwrap();
            s.insert_status(&status("d", 1, 2)).unwrap();
            s.put_deployment(&deployment("a0", "alice", 5)).unwrap();
            // As an older version left it: no indexes, no markers.
            for t in [
                &s.status_order,
                &s.status_usage,
                &s.deployment_owner,
                &s.meta,
            ] {
                t.clear().unwrap();
            }
            s.db.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let p = s.history_page("d", None, 10).unwrap();
        assert_eq!(
            p.items.iter().map(|x| x.event.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(s.deployments_of("alice", None, 10).unwrap().items.len(), 1);
    }
}
